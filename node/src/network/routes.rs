//! Host routes the agent owns: blackholes for the cluster and Service CIDRs, and routes to
//! other nodes' podCIDRs via their InternalIP.
//!
//! Every route made here carries the route protocol [`ROUTE_PROTOCOL`] (`ip route` shows it as
//! `proto 113`), so a resync removes only routes Skiff made and never an operator's or
//! another daemon's. Blackholes catch traffic to a Service or pod address that nothing
//! translated or routed more specifically (the node's own podCIDR on the bridge, a peer
//! node's podCIDR), so it is dropped on this machine instead of leaving by the default route.

use std::collections::HashSet;
use std::net::IpAddr;

use futures::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::netlink::{connect, errno};
use super::plugin::route_addr;
use super::Error;

/// The route protocol number that marks Skiff's routes.
pub const ROUTE_PROTOCOL: u8 = 113;

/// A route that Skiff made, as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnedRoute {
    /// The destination.
    pub dst: IpNet,
    /// The gateway (`None` for blackholes).
    pub via: Option<IpAddr>,
    /// Whether this is a blackhole route.
    pub blackhole: bool,
}

/// Installs (or keeps) a `blackhole` route in the main table for each CIDR. Idempotent. A
/// route for the same prefix that Skiff did not make is left alone and reported.
pub async fn install_blackhole_routes(cidrs: &[IpNet]) -> Result<(), Error> {
    let handle = connect()?;
    for cidr in cidrs {
        let cidr = cidr.trunc();
        let msg = base(cidr).kind(RouteType::BlackHole).build();
        let owned = owned(&handle).await?;
        let ours = owned.iter().find(|(_, r)| r.dst == cidr);
        let add = handle.route().add(msg);
        let result = match ours {
            Some((_, r)) if r.blackhole => continue,
            // Ours but not a blackhole (a node route): replace it.
            Some(_) => add.replace().execute().await,
            None => add.execute().await,
        };
        match result {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                return Err(Error::Config(format!(
                    "a route for {cidr} that Skiff did not make exists; remove it or choose \
                     another CIDR (`ip route show {cidr}`)"
                )))
            }
            Err(source) => {
                return Err(Error::Netlink {
                    what: format!("install blackhole route {cidr}"),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Removes the blackhole routes Skiff made for these CIDRs (missing ones are fine).
pub async fn remove_blackhole_routes(cidrs: &[IpNet]) -> Result<(), Error> {
    let handle = connect()?;
    let wanted: HashSet<IpNet> = cidrs.iter().map(|c| c.trunc()).collect();
    for (msg, route) in owned(&handle).await? {
        if route.blackhole && wanted.contains(&route.dst) {
            delete(&handle, msg, &route).await?;
        }
    }
    Ok(())
}

/// Makes the routes to other nodes' podCIDRs exactly `routes` (`(pod_cidr, node_ip)` pairs):
/// adds or replaces the ones given and removes other unicast routes Skiff made earlier.
/// Idempotent; never touches routes with another protocol, nor Skiff's blackholes. The
/// caller leaves out the node's own podCIDR (it is on the bridge). Forwarding between the
/// node's uplink and the bridge needs `net.ipv4.ip_forward=1`, which this does not set.
pub async fn sync_node_routes(routes: &[(IpNet, IpAddr)]) -> Result<(), Error> {
    let handle = connect()?;
    let desired: HashSet<(IpNet, IpAddr)> = routes.iter().map(|(c, ip)| (c.trunc(), *ip)).collect();
    let before = owned(&handle).await?;
    for (cidr, via) in &desired {
        let msg = match (cidr, via) {
            (IpNet::V4(_), IpAddr::V4(gw)) => base(*cidr).gateway_v4(*gw),
            (IpNet::V6(_), IpAddr::V6(gw)) => base(*cidr).gateway_v6(*gw),
            _ => {
                return Err(Error::Config(format!(
                    "node route {cidr} via {via} mixes address families"
                )))
            }
        };
        let ours = before.iter().find(|(_, r)| r.dst == *cidr);
        if ours.is_some_and(|(_, r)| r.via == Some(*via) && !r.blackhole) {
            continue;
        }
        let add = handle.route().add(msg);
        // Replace only a route of ours; never someone else's for the same prefix.
        let result = if ours.is_some() {
            add.replace().execute().await
        } else {
            add.execute().await
        };
        match result {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                return Err(Error::Config(format!(
                    "a route for {cidr} that Skiff did not make exists; remove it so pods on \
                     the node at {via} are reachable (`ip route show {cidr}`)"
                )))
            }
            Err(source) => {
                return Err(Error::Netlink {
                    what: format!("install route {cidr} via {via}"),
                    source,
                })
            }
        }
    }
    for (msg, route) in owned(&handle).await? {
        if route.blackhole {
            continue;
        }
        let keep = route
            .via
            .is_some_and(|via| desired.contains(&(route.dst, via)));
        if !keep {
            delete(&handle, msg, &route).await?;
        }
    }
    Ok(())
}

/// Turns on IP forwarding in the calling thread's network namespace (IPv4, and IPv6 when
/// `ipv6`), which routing between the node's uplink, the bridge and other nodes' podCIDRs
/// needs. Idempotent. This is a node-wide setting: the agent calls it once at start, tests
/// only inside a namespace of their own.
pub fn enable_ip_forwarding(ipv6: bool) -> Result<(), Error> {
    let mut files = vec!["/proc/sys/net/ipv4/ip_forward"];
    if ipv6 {
        files.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for file in files {
        std::fs::write(file, b"1").map_err(|source| Error::Io {
            what: format!("enable forwarding in {file}"),
            source,
        })?;
    }
    Ok(())
}

/// Every route in the main table that carries Skiff's protocol.
pub async fn list_owned_routes() -> Result<Vec<OwnedRoute>, Error> {
    let handle = connect()?;
    Ok(owned(&handle).await?.into_iter().map(|(_, r)| r).collect())
}

/// A route builder for `dst` in the main table with Skiff's protocol.
enum Builder {
    V4(RouteMessageBuilder<std::net::Ipv4Addr>),
    V6(RouteMessageBuilder<std::net::Ipv6Addr>),
}

impl Builder {
    fn kind(self, kind: RouteType) -> Builder {
        match self {
            Builder::V4(b) => Builder::V4(b.kind(kind)),
            Builder::V6(b) => Builder::V6(b.kind(kind)),
        }
    }
    fn build(self) -> RouteMessage {
        match self {
            Builder::V4(b) => b.build(),
            Builder::V6(b) => b.build(),
        }
    }
    fn gateway_v4(self, gw: std::net::Ipv4Addr) -> RouteMessage {
        match self {
            Builder::V4(b) => b.gateway(gw).build(),
            Builder::V6(b) => b.build(),
        }
    }
    fn gateway_v6(self, gw: std::net::Ipv6Addr) -> RouteMessage {
        match self {
            Builder::V6(b) => b.gateway(gw).build(),
            Builder::V4(b) => b.build(),
        }
    }
}

fn base(dst: IpNet) -> Builder {
    let proto = RouteProtocol::from(ROUTE_PROTOCOL);
    match dst {
        IpNet::V4(n) => Builder::V4(
            RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(n.network(), n.prefix_len())
                .protocol(proto),
        ),
        IpNet::V6(n) => Builder::V6(
            RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(n.network(), n.prefix_len())
                .protocol(proto),
        ),
    }
}

async fn owned(handle: &Handle) -> Result<Vec<(RouteMessage, OwnedRoute)>, Error> {
    let mut out = Vec::new();
    let queries = [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ];
    for query in queries {
        let msgs: Vec<RouteMessage> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|source| Error::Netlink {
                what: "list routes".into(),
                source,
            })?;
        for m in msgs {
            if m.header.protocol != RouteProtocol::from(ROUTE_PROTOCOL) {
                continue;
            }
            let table = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(m.header.table));
            if table != u32::from(rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let dst_ip = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(d) => route_addr(d),
                _ => None,
            });
            let Some(dst_ip) = dst_ip else { continue };
            let Ok(dst) = IpNet::new(dst_ip, m.header.destination_prefix_length) else {
                continue;
            };
            let via = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(g) => route_addr(g),
                _ => None,
            });
            let blackhole = m.header.kind == RouteType::BlackHole;
            out.push((
                m,
                OwnedRoute {
                    dst,
                    via,
                    blackhole,
                },
            ));
        }
    }
    Ok(out)
}

async fn delete(handle: &Handle, msg: RouteMessage, route: &OwnedRoute) -> Result<(), Error> {
    match handle.route().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
        Err(source) => Err(Error::Netlink {
            what: format!("remove route {route:?}"),
            source,
        }),
    }
}
