//! Address allocation from a node's podCIDR, kept on disk.
//!
//! Every `skiff-cni` call is a new process, so the allocator's state lives in files, laid out
//! like the standard `host-local` plugin's so an operator who knows that one is at home:
//! `<dataDir>/<network>/<ip>` holds the container ID and interface name that own the address,
//! `last_reserved_ip.0` remembers where the previous allocation stopped (addresses are handed
//! out round-robin, so a released one is not reused at once), and `lock` is held with `flock`
//! around every allocate and release. The lock serialises concurrent plugin processes and
//! threads alike (a `flock` belongs to an open file description, and each call opens its own),
//! and every address file is created with `O_EXCL`, so no address is ever handed out twice.
//!
//! As with host-local, nothing is fsynced (it was three syncs per allocation, under the lock):
//! an allocation must outlive the plugin process and the agent, which the page cache gives, not
//! the machine — after a crash no pod's network survives either, and the agent's start-up
//! [`Ipam::retain`] releases whatever a lost or torn write left behind.
//!
//! The network address, the gateway (the first address) and, for IPv4, the broadcast address
//! are never handed out.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// The file that remembers the last address handed out (host-local's name for range set 0).
const LAST_RESERVED: &str = "last_reserved_ip.0";
/// The lock file taken around every change.
const LOCK: &str = "lock";
/// At most this many candidate addresses are tried per allocation (an IPv6 /64 is too large to
/// scan; an IPv4 /16 is not).
const MAX_PROBES: u128 = 1 << 20;

/// What can go wrong while allocating or releasing.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The subnet leaves no address for pods.
    #[error("subnet {subnet} is too small for pods: it needs room for a gateway and at least one pod (use a prefix of /30 or shorter for IPv4)")]
    SubnetTooSmall {
        /// The subnet.
        subnet: IpNet,
    },
    /// Every address is taken.
    #[error("no free address left in {subnet} ({used} in use); delete pods or give the node a larger podCIDR")]
    Exhausted {
        /// The subnet.
        subnet: IpNet,
        /// How many addresses are allocated.
        used: usize,
    },
    /// A file under the data directory could not be read or written.
    #[error("ipam: failed to {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// One owner of an address: the container and its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address.
    pub ip: IpAddr,
    /// The container (sandbox) ID given to the plugin.
    pub container_id: String,
    /// The interface name inside the pod.
    pub ifname: String,
}

/// The allocator of one network's subnet, stored under `<data_dir>/<network>/`.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    subnet: IpNet,
}

impl Ipam {
    /// Opens (creating its directory if needed) the allocator for `subnet` of `network` under
    /// `data_dir`. The subnet is normalised to its network address.
    pub fn open(data_dir: &Path, network: &str, subnet: IpNet) -> Result<Ipam, IpamError> {
        let subnet = subnet.trunc();
        if host_count(&subnet) < 2 {
            return Err(IpamError::SubnetTooSmall { subnet });
        }
        let dir = data_dir.join(sanitize(network));
        fs::create_dir_all(&dir).map_err(|source| IpamError::Io {
            action: "create directory",
            path: dir.clone(),
            source,
        })?;
        Ok(Ipam { dir, subnet })
    }

    /// The subnet this allocator hands addresses out of.
    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    /// The gateway address: the first address after the network address (`10.244.0.1`).
    pub fn gateway(&self) -> IpAddr {
        nth(&self.subnet, 1)
    }

    /// The directory holding the allocation files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Allocates an address for `container_id`/`ifname`, or returns the one it already holds
    /// (so a repeated ADD gets the same address).
    pub fn allocate(&self, container_id: &str, ifname: &str) -> Result<IpAddr, IpamError> {
        let _lock = self.lock()?;
        let current = self.allocations_locked()?;
        if let Some(a) = current
            .iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
        {
            return Ok(a.ip);
        }
        let size = host_count(&self.subnet);
        // Candidates are offsets 2..size (1 is the gateway; size is the broadcast for IPv4,
        // excluded by host_count's definition below).
        let first = 2u128;
        let last = size; // inclusive
        let span = last - first + 1;
        let start = match self.last_reserved()? {
            Some(ip) if self.subnet.contains(&ip) => {
                let off = offset(&self.subnet, ip);
                if off >= first && off <= last {
                    // The one after the last reserved, wrapping round.
                    first + (off - first + 1) % span
                } else {
                    first
                }
            }
            _ => first,
        };
        let probes = span.min(MAX_PROBES);
        for i in 0..probes {
            let off = first + (start - first + i) % span;
            let ip = nth(&self.subnet, off);
            let path = self.dir.join(ip.to_string());
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(mut f) => {
                    let written = f.write_all(format!("{container_id}\n{ifname}").as_bytes());
                    if let Err(source) = written {
                        let _ = fs::remove_file(&path);
                        return Err(IpamError::Io {
                            action: "write",
                            path,
                            source,
                        });
                    }
                    self.write_atomic(LAST_RESERVED, ip.to_string().as_bytes())?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(IpamError::Io {
                        action: "create",
                        path,
                        source,
                    })
                }
            }
        }
        Err(IpamError::Exhausted {
            subnet: self.subnet,
            used: current.len(),
        })
    }

    /// Releases every address held by `container_id`/`ifname` and returns them. Releasing
    /// something unknown is not an error (CNI DEL must be idempotent).
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let _lock = self.lock()?;
        let mut released = Vec::new();
        for a in self.allocations_locked()? {
            if a.container_id == container_id && a.ifname == ifname {
                let path = self.dir.join(a.ip.to_string());
                match fs::remove_file(&path) {
                    Ok(()) => released.push(a.ip),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(IpamError::Io {
                            action: "remove",
                            path,
                            source,
                        })
                    }
                }
            }
        }
        Ok(released)
    }

    /// Releases every allocation whose container `keep` rejects, and returns them: the garbage
    /// collection the agent runs at start with the sandboxes it knows, so addresses of pods
    /// that vanished while it was down (a crash between ADD and DEL) come back.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.lock()?;
        let mut released = Vec::new();
        for a in self.allocations_locked()? {
            if keep(&a.container_id) {
                continue;
            }
            let path = self.dir.join(a.ip.to_string());
            match fs::remove_file(&path) {
                Ok(()) => released.push(a),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(IpamError::Io {
                        action: "remove",
                        path,
                        source,
                    })
                }
            }
        }
        Ok(released)
    }

    /// The address held by `container_id`/`ifname`, if any.
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Result<Option<IpAddr>, IpamError> {
        let _lock = self.lock()?;
        Ok(self
            .allocations_locked()?
            .into_iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
            .map(|a| a.ip))
    }

    /// Every current allocation, in no particular order.
    pub fn allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.lock()?;
        self.allocations_locked()
    }

    fn allocations_locked(&self) -> Result<Vec<Allocation>, IpamError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| IpamError::Io {
            action: "list",
            path: self.dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| IpamError::Io {
                action: "list",
                path: self.dir.clone(),
                source,
            })?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue; // the lock, last_reserved_ip.0, temporary files
            };
            let path = entry.path();
            let mut text = String::new();
            match File::open(&path).and_then(|mut f| f.read_to_string(&mut text)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(IpamError::Io {
                        action: "read",
                        path,
                        source,
                    })
                }
            }
            let mut lines = text.lines().map(str::trim);
            let container_id = lines.next().unwrap_or_default().to_string();
            let ifname = lines.next().unwrap_or_default().to_string();
            out.push(Allocation {
                ip,
                container_id,
                ifname,
            });
        }
        Ok(out)
    }

    fn last_reserved(&self) -> Result<Option<IpAddr>, IpamError> {
        let path = self.dir.join(LAST_RESERVED);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IpamError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    fn write_atomic(&self, name: &str, data: &[u8]) -> Result<(), IpamError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let res = File::create(&tmp)
            .and_then(|mut f| f.write_all(data))
            .and_then(|()| fs::rename(&tmp, &path));
        res.map_err(|source| IpamError::Io {
            action: "write",
            path,
            source,
        })
    }

    fn lock(&self) -> Result<LockGuard, IpamError> {
        let path = self.dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| IpamError::Io {
                action: "open lock file",
                path: path.clone(),
                source,
            })?;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(LockGuard { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(IpamError::Io {
                    action: "lock",
                    path,
                    source: err,
                });
            }
        }
    }
}

/// Holds the allocator's `flock`; closing the file releases it.
struct LockGuard {
    _file: File,
}

/// How many addresses after the network address may be used (gateway included): for IPv4
/// the broadcast address is left out.
fn host_count(subnet: &IpNet) -> u128 {
    let bits = subnet.max_prefix_len() - subnet.prefix_len();
    let total: u128 = if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    };
    match subnet {
        IpNet::V4(_) => total.saturating_sub(2),
        IpNet::V6(_) => total.saturating_sub(1),
    }
}

fn offset(subnet: &IpNet, ip: IpAddr) -> u128 {
    match (subnet, ip) {
        (IpNet::V4(n), IpAddr::V4(a)) => u128::from(u32::from(a) - u32::from(n.network())),
        (IpNet::V6(n), IpAddr::V6(a)) => u128::from(a) - u128::from(n.network()),
        _ => 0,
    }
}

fn nth(subnet: &IpNet, off: u128) -> IpAddr {
    match subnet {
        // An offset inside an IPv4 subnet fits in 32 bits.
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()).wrapping_add(off as u32)).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()).wrapping_add(off)).into()),
    }
}

/// Network names become directory names; keep them to one safe path component.
fn sanitize(network: &str) -> String {
    let s: String = network
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s == "." || s == ".." {
        "_".to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn ipam(dir: &Path, cidr: &str) -> Ipam {
        Ipam::open(dir, "net", cidr.parse().unwrap()).unwrap()
    }

    #[test]
    fn skips_network_gateway_and_broadcast_then_exhausts() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.1.0.0/29");
        assert_eq!(ipam.gateway(), "10.1.0.1".parse::<IpAddr>().unwrap());
        let got: Vec<IpAddr> = (0..5)
            .map(|i| ipam.allocate(&format!("c{i}"), "eth0").unwrap())
            .collect();
        let want: Vec<IpAddr> = (2..=6)
            .map(|i| format!("10.1.0.{i}").parse().unwrap())
            .collect();
        assert_eq!(got, want);
        match ipam.allocate("c-extra", "eth0") {
            Err(IpamError::Exhausted { used: 5, .. }) => {}
            other => panic!("expected exhaustion, got {other:?}"),
        }
    }

    #[test]
    fn release_then_reuse_round_robin() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.1.0.0/29");
        let a = ipam.allocate("a", "eth0").unwrap();
        let b = ipam.allocate("b", "eth0").unwrap();
        assert_ne!(a, b);
        assert_eq!(ipam.release("a", "eth0").unwrap(), vec![a]);
        // Unknown and repeated releases succeed and release nothing.
        assert!(ipam.release("a", "eth0").unwrap().is_empty());
        assert!(ipam.release("nobody", "eth0").unwrap().is_empty());
        // Round-robin: the next one is after b, not a again.
        let c = ipam.allocate("c", "eth0").unwrap();
        assert_ne!(c, a);
        // Fill the rest; a's address comes back once the others are taken.
        let mut rest = HashSet::new();
        for i in 0..3 {
            rest.insert(ipam.allocate(&format!("r{i}"), "eth0").unwrap());
        }
        assert!(rest.contains(&a), "{a} should be reused, got {rest:?}");
    }

    #[test]
    fn repeated_allocate_returns_same_address_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let first = ipam(dir.path(), "10.1.0.0/24");
        let a = first.allocate("a", "eth0").unwrap();
        assert_eq!(first.allocate("a", "eth0").unwrap(), a);
        let other_if = first.allocate("a", "net1").unwrap();
        assert_ne!(other_if, a);
        drop(first);
        let again = ipam(dir.path(), "10.1.0.0/24");
        assert_eq!(again.lookup("a", "eth0").unwrap(), Some(a));
        let b = again.allocate("b", "eth0").unwrap();
        assert!(b != a && b != other_if);
        assert_eq!(again.allocations().unwrap().len(), 3);
    }

    #[test]
    fn retain_releases_only_unknown_containers() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.1.0.0/24");
        let live = ipam.allocate("live", "eth0").unwrap();
        let gone = ipam.allocate("gone", "eth0").unwrap();
        let released = ipam.retain(|id| id == "live").unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].ip, gone);
        assert_eq!(released[0].container_id, "gone");
        assert_eq!(ipam.lookup("live", "eth0").unwrap(), Some(live));
        assert_eq!(ipam.lookup("gone", "eth0").unwrap(), None);
        assert!(ipam.retain(|id| id == "live").unwrap().is_empty());
    }

    #[test]
    fn too_small_subnets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for cidr in ["10.0.0.0/31", "10.0.0.1/32"] {
            let err = Ipam::open(dir.path(), "n", cidr.parse().unwrap()).unwrap_err();
            assert!(
                matches!(err, IpamError::SubnetTooSmall { .. }),
                "{cidr}: {err}"
            );
        }
        assert!(Ipam::open(dir.path(), "n", "10.0.0.0/30".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv6_allocates_after_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "fd00:10::/120");
        assert_eq!(ipam.gateway(), "fd00:10::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            ipam.allocate("a", "eth0").unwrap(),
            "fd00:10::2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn concurrent_threads_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        // 61 usable addresses, 8 threads asking for 10 each: 61 succeed, 19 see exhaustion.
        let path = dir.path().to_path_buf();
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // Each thread opens its own allocator, as separate plugin processes do.
                    let ipam = ipam(&path, "10.2.0.0/26");
                    (0..10)
                        .map(|i| ipam.allocate(&format!("t{t}-{i}"), "eth0"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ips = Vec::new();
        let mut exhausted = 0;
        for h in handles {
            for r in h.join().unwrap() {
                match r {
                    Ok(ip) => ips.push(ip),
                    Err(IpamError::Exhausted { .. }) => exhausted += 1,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        let unique: HashSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), ips.len(), "duplicate addresses: {ips:?}");
        assert_eq!(ips.len(), 61);
        assert_eq!(exhausted, 19);
    }
}
