//! What `skiff-cni` does, as a library so it can be tested and reused: a bridge per node,
//! a veth pair per pod, an address from [`Ipam`], a default route via the bridge.
//!
//! ADD: the bridge (gateway = the podCIDR's first address) is created if missing; a veth pair
//! is created with its pod end already inside the pod's namespace under the requested name
//! (so no temporary name can clash on the host); the host end joins the bridge with hairpin
//! mode on (a pod reaching itself through a Service address comes back through its own port);
//! inside the pod, the address, `lo`, and the default route are set up. Anything that fails
//! after the address was taken gives the address back and removes the veth.
//!
//! DEL releases the address and removes the host end (which takes the pod end with it); it
//! succeeds for anything unknown. CHECK compares the pod's interface, address and route and
//! the host end with what ADD made.

use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use futures::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec};
use serde::{Deserialize, Serialize};

use super::ipam::Ipam;
use super::netlink::{self, connect, errno, link_by_name};
use super::{netns, Error};

/// The plugin-specific fields of a `skiff-cni` entry in a conflist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginConf {
    /// The node's bridge (`skiff0`).
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// The node's pod CIDR (`10.244.0.0/24`); the bridge gets its first address.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: IpNet,
    /// Where allocations are kept (`/var/lib/skiff/cni`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The MTU of the pod interfaces and the bridge.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Hairpin mode on the bridge ports (default on).
    #[serde(default = "default_true")]
    pub hairpin_mode: bool,
}

fn default_bridge() -> String {
    "skiff0".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/skiff/cni")
}
fn default_mtu() -> u32 {
    1500
}
fn default_true() -> bool {
    true
}

impl PluginConf {
    /// Reads the plugin's fields out of the other fields of its conflist entry, and checks them.
    pub fn from_fields(
        fields: &std::collections::HashMap<String, serde_json::Value>,
    ) -> Result<PluginConf, Error> {
        let mut map = serde_json::Map::new();
        for (k, v) in fields {
            // Fields every plugin may get from the runtime.
            if matches!(k.as_str(), "runtimeConfig" | "capabilities" | "args") {
                continue;
            }
            map.insert(k.clone(), v.clone());
        }
        let conf: PluginConf = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| Error::Config(format!("skiff-cni: {e}")))?;
        conf.validate()?;
        Ok(conf)
    }

    /// Checks the values (bridge name length, MTU range, a usable pod CIDR).
    pub fn validate(&self) -> Result<(), Error> {
        if self.bridge.is_empty() || self.bridge.len() > 15 || self.bridge.contains('/') {
            return Err(Error::Config(format!(
                "bridge name {:?} must be 1 to 15 characters without '/'",
                self.bridge
            )));
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(Error::Config(format!(
                "mtu {} is out of range (68..=65535)",
                self.mtu
            )));
        }
        if self.pod_cidr.trunc() != self.pod_cidr {
            return Err(Error::Config(format!(
                "podCIDR {} has host bits set; use {}",
                self.pod_cidr,
                self.pod_cidr.trunc()
            )));
        }
        Ok(())
    }

    /// The gateway with the podCIDR's prefix: the bridge's address (`10.244.0.1/24`).
    pub fn gateway(&self) -> IpNet {
        let gw = super::first_host(&self.pod_cidr);
        IpNet::new(gw, self.pod_cidr.prefix_len()).expect("the prefix comes from an IpNet")
    }
}

/// One interface ADD made, for the CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address (`aa:bb:…`).
    pub mac: Option<String>,
    /// The namespace path for the pod's end; `None` for the host end.
    pub sandbox: Option<PathBuf>,
}

/// What ADD made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The host end of the veth, then the pod end.
    pub interfaces: Vec<Interface>,
    /// The pod's address with the podCIDR's prefix.
    pub address: IpNet,
    /// The gateway (the bridge's address).
    pub gateway: IpAddr,
}

/// The host end's name for a container's interface: `sk` and 12 hex digits of a hash of the
/// container ID and interface name, so DEL finds it without the pod's namespace.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bits: stable across builds and versions (std's hashers are not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .as_bytes()
        .iter()
        .chain(b"/")
        .chain(ifname.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("sk{:012x}", h >> 16)
}

/// The MAC address for an interface holding `ip`: `0a:58` and the address's last four bytes,
/// as Kubernetes' network plugins do. A pod that gets an address again gets the same MAC, so
/// its neighbours' ARP caches stay right; the bridge has a fixed one too (derived from the
/// gateway), so it does not change as ports come and go (a bridge otherwise takes its lowest
/// port's MAC, and every pod's gateway entry would go stale).
pub fn mac_for(ip: IpAddr) -> [u8; 6] {
    let tail: [u8; 4] = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x0a, 0x58, tail[0], tail[1], tail[2], tail[3]]
}

/// CNI ADD.
pub async fn add(
    network: &str,
    conf: &PluginConf,
    container_id: &str,
    ifname: &str,
    netns_path: &Path,
) -> Result<Added, Error> {
    let ipam = Ipam::open(&conf.data_dir, network, conf.pod_cidr)?;
    let ip = ipam.allocate(container_id, ifname)?;
    match add_links(conf, container_id, ifname, netns_path, ip).await {
        Ok(added) => Ok(added),
        Err(e) => {
            // Give back what was taken; the original error is the one to report.
            let _ = delete_host_veth(&host_veth_name(container_id, ifname)).await;
            let _ = ipam.release(container_id, ifname);
            Err(e)
        }
    }
}

async fn add_links(
    conf: &PluginConf,
    container_id: &str,
    ifname: &str,
    netns_path: &Path,
    ip: IpAddr,
) -> Result<Added, Error> {
    let handle = connect()?;
    let gateway = conf.gateway();
    let bridge = ensure_bridge(&handle, conf).await?;
    let host = host_veth_name(container_id, ifname);
    // A leftover from an ADD that died half-way would make the create fail.
    delete_host_veth(&host).await?;
    let ns = std::fs::File::open(netns_path).map_err(|source| Error::Io {
        what: format!("open network namespace {}", netns_path.display()),
        source,
    })?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(ifname.to_string())
        .address(mac_for(ip).to_vec())
        .mtu(conf.mtu)
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(host.clone())
        .mtu(conf.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    handle
        .link()
        .add(veth)
        .execute()
        .await
        .map_err(|source| Error::Netlink {
            what: format!(
                "create veth {host} with peer {ifname} in {}",
                netns_path.display()
            ),
            source,
        })?;
    let host_link = link_by_name(&handle, &host)
        .await?
        .ok_or_else(|| Error::Check(format!("veth {host} vanished right after it was made")))?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(host_link.index)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|source| Error::Netlink {
            what: format!("attach veth {host} to bridge {} and set it up", conf.bridge),
            source,
        })?;
    if conf.hairpin_mode {
        handle
            .link()
            .set_port(LinkBridgePort::new(host_link.index).hairpin(true).build())
            .execute()
            .await
            .map_err(|source| Error::Netlink {
                what: format!("turn hairpin mode on for bridge port {host}"),
                source,
            })?;
    }

    let address = IpNet::new(ip, conf.pod_cidr.prefix_len()).expect("prefix from an IpNet");
    let gw = gateway.addr();
    let ifname_owned = ifname.to_string();
    let pod_mac = in_netns(netns_path, move |h| async move {
        configure_pod_side(&h, &ifname_owned, address, gw).await
    })
    .await?;

    Ok(Added {
        interfaces: vec![
            Interface {
                name: host,
                mac: host_link.mac.as_ref().map(netlink::format_mac),
                sandbox: None,
            },
            Interface {
                name: ifname.to_string(),
                mac: pod_mac,
                sandbox: Some(netns_path.to_path_buf()),
            },
        ],
        address,
        gateway: gw,
    })
}

/// Creates the bridge if it is missing, gives it the gateway address, sets it up; returns its
/// index. Safe to run from many plugin processes at once.
async fn ensure_bridge(handle: &Handle, conf: &PluginConf) -> Result<u32, Error> {
    let name = &conf.bridge;
    let link = match link_by_name(handle, name).await? {
        Some(l) => l,
        None => {
            match handle
                .link()
                .add(
                    LinkBridge::new(name)
                        .mtu(conf.mtu)
                        .address(mac_for(conf.gateway().addr()).to_vec())
                        .build(),
                )
                .execute()
                .await
            {
                Ok(()) => {}
                // Another ADD made it meanwhile.
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(Error::Netlink {
                        what: format!("create bridge {name}"),
                        source,
                    })
                }
            }
            link_by_name(handle, name)
                .await?
                .ok_or_else(|| Error::Check(format!("bridge {name} vanished after creation")))?
        }
    };
    let gw = conf.gateway();
    let have = netlink::addresses(handle, link.index).await?;
    if !have.contains(&(gw.addr(), gw.prefix_len())) {
        match handle
            .address()
            .add(link.index, gw.addr(), gw.prefix_len())
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(Error::Netlink {
                    what: format!("add gateway address {gw} to bridge {name}"),
                    source,
                })
            }
        }
    }
    if !link.up {
        handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).up().build())
            .execute()
            .await
            .map_err(|source| Error::Netlink {
                what: format!("set bridge {name} up"),
                source,
            })?;
    }
    Ok(link.index)
}

/// Inside the pod: the address on the interface, the interface and `lo` up, the default route
/// via the gateway. Returns the interface's MAC.
async fn configure_pod_side(
    handle: &Handle,
    ifname: &str,
    address: IpNet,
    gateway: IpAddr,
) -> Result<Option<String>, Error> {
    let link = link_by_name(handle, ifname)
        .await?
        .ok_or_else(|| Error::Check(format!("{ifname} is missing in the pod after creation")))?;
    handle
        .address()
        .add(link.index, address.addr(), address.prefix_len())
        .execute()
        .await
        .or_else(|e| {
            if errno(&e) == Some(libc::EEXIST) {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(|source| Error::Netlink {
            what: format!("add address {address} to {ifname} in the pod"),
            source,
        })?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(link.index).up().build())
        .execute()
        .await
        .map_err(|source| Error::Netlink {
            what: format!("set {ifname} up in the pod"),
            source,
        })?;
    if let Some(lo) = link_by_name(handle, "lo").await? {
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo.index).up().build())
            .execute()
            .await
            .map_err(|source| Error::Netlink {
                what: "set lo up in the pod".into(),
                source,
            })?;
    }
    let route = default_route(gateway, link.index);
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|source| Error::Netlink {
            what: format!("add the default route via {gateway} in the pod"),
            source,
        })?;
    Ok(link.mac.as_ref().map(netlink::format_mac))
}

fn default_route(gateway: IpAddr, oif: u32) -> rtnetlink::packet_route::route::RouteMessage {
    match gateway {
        IpAddr::V4(gw) => rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(oif)
            .build(),
        IpAddr::V6(gw) => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .gateway(gw)
            .output_interface(oif)
            .build(),
    }
}

/// Removes the host end of a veth if it exists (the pod end goes with it).
async fn delete_host_veth(name: &str) -> Result<(), Error> {
    let handle = connect()?;
    if let Some(link) = link_by_name(&handle, name).await? {
        match handle.link().del(link.index).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::ENODEV) => {}
            Err(source) => {
                return Err(Error::Netlink {
                    what: format!("delete veth {name}"),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// CNI DEL: releases the address and removes the veth. Succeeds for anything unknown.
pub async fn del(
    network: &str,
    conf: &PluginConf,
    container_id: &str,
    ifname: &str,
) -> Result<(), Error> {
    delete_host_veth(&host_veth_name(container_id, ifname)).await?;
    let ipam = Ipam::open(&conf.data_dir, network, conf.pod_cidr)?;
    ipam.release(container_id, ifname)?;
    Ok(())
}

/// CNI CHECK: the allocation, the host end on the bridge and up, and inside the pod the
/// interface up with its address and the default route.
pub async fn check(
    network: &str,
    conf: &PluginConf,
    container_id: &str,
    ifname: &str,
    netns_path: &Path,
) -> Result<(), Error> {
    let ipam = Ipam::open(&conf.data_dir, network, conf.pod_cidr)?;
    let ip = ipam.lookup(container_id, ifname)?.ok_or_else(|| {
        Error::Check(format!(
            "no address is allocated to container {container_id} interface {ifname}"
        ))
    })?;
    let handle = connect()?;
    let bridge = link_by_name(&handle, &conf.bridge)
        .await?
        .ok_or_else(|| Error::Check(format!("bridge {} is missing", conf.bridge)))?;
    let host = host_veth_name(container_id, ifname);
    let host_link = link_by_name(&handle, &host)
        .await?
        .ok_or_else(|| Error::Check(format!("host veth {host} is missing")))?;
    if host_link.controller != Some(bridge.index) {
        return Err(Error::Check(format!(
            "host veth {host} is not attached to bridge {}",
            conf.bridge
        )));
    }
    if !host_link.up {
        return Err(Error::Check(format!("host veth {host} is down")));
    }
    let address = IpNet::new(ip, conf.pod_cidr.prefix_len()).expect("prefix from an IpNet");
    let gw = conf.gateway().addr();
    let ifname_owned = ifname.to_string();
    in_netns(netns_path, move |h| async move {
        let link = link_by_name(&h, &ifname_owned)
            .await?
            .ok_or_else(|| Error::Check(format!("{ifname_owned} is missing in the pod")))?;
        if !link.up {
            return Err(Error::Check(format!("{ifname_owned} is down in the pod")));
        }
        let addrs = netlink::addresses(&h, link.index).await?;
        if !addrs.contains(&(address.addr(), address.prefix_len())) {
            return Err(Error::Check(format!(
                "{ifname_owned} in the pod lacks address {address} (has {addrs:?})"
            )));
        }
        let family = match gw {
            IpAddr::V4(_) => rtnetlink::IpVersion::V4,
            IpAddr::V6(_) => rtnetlink::IpVersion::V6,
        };
        let query = match family {
            rtnetlink::IpVersion::V4 => {
                rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
            }
            rtnetlink::IpVersion::V6 => {
                rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
            }
        };
        let routes: Vec<_> =
            h.route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|source| Error::Netlink {
                    what: "list routes in the pod".into(),
                    source,
                })?;
        let has_default = routes.iter().any(|r| {
            r.header.destination_prefix_length == 0
                && r.attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Gateway(g) if route_addr(g) == Some(gw)))
        });
        if !has_default {
            return Err(Error::Check(format!(
                "the pod has no default route via {gw}"
            )));
        }
        Ok(())
    })
    .await
}

pub(crate) fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Runs an async netlink job inside the namespace at `path`, on a helper thread with its own
/// single-threaded runtime and a netlink socket opened in that namespace.
pub(crate) async fn in_netns<F, Fut, R>(path: &Path, job: F) -> Result<R, Error>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<R, Error>>,
    R: Send + 'static,
{
    let path = path.to_path_buf();
    let what = format!("run in network namespace {}", path.display());
    tokio::task::spawn_blocking(move || {
        netns::run_in_netns(&path, move || -> Result<R, Error> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| Error::Io {
                    what: "start a runtime inside the pod's namespace".into(),
                    source,
                })?;
            rt.block_on(async move {
                let handle = connect()?;
                job(handle).await
            })
        })
        .map_err(|source| Error::Io {
            what: format!("enter network namespace {}", path.display()),
            source,
        })?
    })
    .await
    .map_err(|e| Error::Io {
        what,
        source: std::io::Error::other(e),
    })?
}
