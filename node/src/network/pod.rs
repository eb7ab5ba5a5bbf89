//! The seam the pod worker uses: set up and tear down one pod sandbox's network.
//!
//! [`PodNetworking`] is the narrow trait; [`CniNetworking`] is the real one (a persistent
//! netns per sandbox, then the CNI chain), and [`RecordingNetworking`] the fake for unit tests
//! of the pod worker (no kernel, addresses from a counter, every call recorded).
//! [`prepare_node`] is what the agent runs once at start: the default conflist when the conf
//! dir has none, the blackhole routes, and the loaded [`Cni`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::IpNet;

use super::cni::{Cni, CniArgs, CniError};
use super::netns;
use super::plugin::PluginConf;
use super::Error;

/// The interface name pods get.
pub const POD_IFNAME: &str = "eth0";

/// Which sandbox, and whose: the key for every call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sandbox {
    /// The sandbox (pause container) ID; also the CNI container ID.
    pub id: String,
    /// The pod's namespace.
    pub pod_namespace: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's UID.
    pub pod_uid: String,
}

impl Sandbox {
    /// The netns name for this sandbox (`skiff-<id>`).
    pub fn netns_name(&self) -> String {
        format!("skiff-{}", self.id)
    }

    fn args(&self) -> CniArgs {
        CniArgs {
            pod_namespace: self.pod_namespace.clone(),
            pod_name: self.pod_name.clone(),
            pod_uid: self.pod_uid.clone(),
        }
    }
}

/// A sandbox's network once set up.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxNetwork {
    /// The namespace to give the sandbox's containers (`/run/netns/skiff-<id>`).
    pub netns: PathBuf,
    /// The pod IPs (`status.podIPs`), first one primary.
    pub ips: Vec<IpAddr>,
}

/// What went wrong setting up or tearing down a sandbox's network.
#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    /// The namespace could not be made or removed.
    #[error("failed to {action} network namespace {name}: {source}")]
    Netns {
        /// create or remove.
        action: &'static str,
        /// The namespace's name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The CNI chain failed.
    #[error("pod network for sandbox {sandbox}: {source}")]
    Cni {
        /// The sandbox ID.
        sandbox: String,
        /// The cause.
        #[source]
        source: CniError,
    },
}

/// Sets pods' networks up and down. Both calls are idempotent.
#[async_trait::async_trait]
pub trait PodNetworking: Send + Sync {
    /// Creates the sandbox's namespace (or reuses it) and runs CNI ADD in it.
    async fn setup(&self, sandbox: &Sandbox) -> Result<SandboxNetwork, PodNetworkError>;
    /// Runs CNI DEL and removes the namespace; succeeds when nothing is left.
    async fn teardown(&self, sandbox: &Sandbox) -> Result<(), PodNetworkError>;
    /// Runs CNI CHECK on a set-up sandbox.
    async fn check(&self, sandbox: &Sandbox) -> Result<(), PodNetworkError>;
}

/// The real [`PodNetworking`]: a netns under `/run/netns` and the CNI chain.
#[derive(Debug)]
pub struct CniNetworking {
    cni: Cni,
}

impl CniNetworking {
    /// Wraps a loaded network.
    pub fn new(cni: Cni) -> CniNetworking {
        CniNetworking { cni }
    }

    /// The network it runs.
    pub fn cni(&self) -> &Cni {
        &self.cni
    }
}

#[async_trait::async_trait]
impl PodNetworking for CniNetworking {
    async fn setup(&self, sandbox: &Sandbox) -> Result<SandboxNetwork, PodNetworkError> {
        let name = sandbox.netns_name();
        let path = Path::new(netns::NETNS_DIR).join(&name);
        let created = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || netns::create_netns(&name))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
        };
        match created {
            Ok(_) => {}
            // A retried setup: the namespace from the first try is reused.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(PodNetworkError::Netns {
                    action: "create",
                    name,
                    source,
                })
            }
        }
        let args = sandbox.args();
        match self.cni.add(&sandbox.id, &path, POD_IFNAME, &args).await {
            Ok(net) => Ok(SandboxNetwork {
                netns: path,
                ips: net.ips,
            }),
            Err(source) => {
                // Undo what the chain may have half done; the ADD's error is the one to report.
                if let Err(e) = self
                    .cni
                    .del(&sandbox.id, Some(&path), POD_IFNAME, &args)
                    .await
                {
                    tracing::warn!(sandbox = %sandbox.id, error = %e, "CNI DEL after a failed ADD failed");
                }
                let _ = netns::remove_netns(&name);
                Err(PodNetworkError::Cni {
                    sandbox: sandbox.id.clone(),
                    source,
                })
            }
        }
    }

    async fn teardown(&self, sandbox: &Sandbox) -> Result<(), PodNetworkError> {
        let name = sandbox.netns_name();
        let path = Path::new(netns::NETNS_DIR).join(&name);
        let ns = path.exists().then_some(path.as_path());
        self.cni
            .del(&sandbox.id, ns, POD_IFNAME, &sandbox.args())
            .await
            .map_err(|source| PodNetworkError::Cni {
                sandbox: sandbox.id.clone(),
                source,
            })?;
        netns::remove_netns(&name).map_err(|source| PodNetworkError::Netns {
            action: "remove",
            name,
            source,
        })
    }

    async fn check(&self, sandbox: &Sandbox) -> Result<(), PodNetworkError> {
        let path = Path::new(netns::NETNS_DIR).join(sandbox.netns_name());
        self.cni
            .check(&sandbox.id, &path, POD_IFNAME, &sandbox.args())
            .await
            .map_err(|source| PodNetworkError::Cni {
                sandbox: sandbox.id.clone(),
                source,
            })
    }
}

/// One call seen by [`RecordingNetworking`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkCall {
    /// `setup(sandbox id)`.
    Setup(String),
    /// `teardown(sandbox id)`.
    Teardown(String),
    /// `check(sandbox id)`.
    Check(String),
}

/// A fake [`PodNetworking`] for unit tests: hands out `10.244.0.2`, `.3`, … (the same one again
/// for a sandbox already set up), records every call, and fails setups of sandbox IDs listed
/// in `fail_setup`.
#[derive(Debug, Default)]
pub struct RecordingNetworking {
    state: Mutex<Recorded>,
    /// Sandbox IDs whose setup fails.
    pub fail_setup: Mutex<Vec<String>>,
}

#[derive(Debug, Default)]
struct Recorded {
    calls: Vec<NetworkCall>,
    live: Vec<(String, IpAddr)>,
    next: u32,
}

impl RecordingNetworking {
    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<NetworkCall> {
        self.lock().calls.clone()
    }

    /// The sandboxes set up and not torn down, with their addresses.
    pub fn live(&self) -> Vec<(String, IpAddr)> {
        self.lock().live.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl PodNetworking for RecordingNetworking {
    async fn setup(&self, sandbox: &Sandbox) -> Result<SandboxNetwork, PodNetworkError> {
        let fail = self
            .fail_setup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&sandbox.id);
        let mut s = self.lock();
        s.calls.push(NetworkCall::Setup(sandbox.id.clone()));
        if fail {
            return Err(PodNetworkError::Cni {
                sandbox: sandbox.id.clone(),
                source: CniError::BadResult {
                    plugin: "recording".into(),
                    reason: "setup failure requested by the test".into(),
                },
            });
        }
        let ip = match s.live.iter().find(|(id, _)| *id == sandbox.id) {
            Some((_, ip)) => *ip,
            None => {
                s.next += 1;
                let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0af4_0001 + s.next));
                s.live.push((sandbox.id.clone(), ip));
                ip
            }
        };
        Ok(SandboxNetwork {
            netns: Path::new(netns::NETNS_DIR).join(sandbox.netns_name()),
            ips: vec![ip],
        })
    }

    async fn teardown(&self, sandbox: &Sandbox) -> Result<(), PodNetworkError> {
        let mut s = self.lock();
        s.calls.push(NetworkCall::Teardown(sandbox.id.clone()));
        s.live.retain(|(id, _)| *id != sandbox.id);
        Ok(())
    }

    async fn check(&self, sandbox: &Sandbox) -> Result<(), PodNetworkError> {
        self.lock()
            .calls
            .push(NetworkCall::Check(sandbox.id.clone()));
        Ok(())
    }
}

/// What the agent needs to prepare the node's networking.
#[derive(Debug, Clone)]
pub struct NodeNetworkConfig {
    /// The CNI conf dir (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// Where plugins are looked for (`/opt/cni/bin`, `/usr/lib/cni`, and skiff-cni's own
    /// directory).
    pub bin_dirs: Vec<PathBuf>,
    /// Skiff's plugin configuration, written when the conf dir has no network; `None` when
    /// the node has no podCIDR yet (then the conf dir must already hold a network).
    pub default_conf: Option<PluginConf>,
    /// CIDRs to blackhole: the cluster CIDR and the Service CIDR.
    pub blackhole: Vec<IpNet>,
    /// Where ADD results are kept for CHECK and DEL across agent restarts
    /// (`/var/lib/skiff/cni/results`); `None` keeps them in memory only.
    pub result_cache_dir: Option<PathBuf>,
}

/// Prepares the node: writes Skiff's conflist if the conf dir holds no network, installs the
/// blackhole routes, and loads the network. Idempotent; run at every agent start.
pub async fn prepare_node(config: &NodeNetworkConfig) -> Result<Cni, Error> {
    let cni = match Cni::load(&config.conf_dir, &config.bin_dirs) {
        Ok(cni) => cni,
        Err(CniError::NoConfig { .. }) => {
            let Some(conf) = &config.default_conf else {
                return Err(Error::Config(format!(
                    "no CNI network in {} and no podCIDR to write Skiff's: wait for the node's \
                     spec.podCIDR or put a conflist there",
                    config.conf_dir.display()
                )));
            };
            super::write_skiff_conflist(&config.conf_dir, conf)?;
            Cni::load(&config.conf_dir, &config.bin_dirs)
                .map_err(|e| Error::Config(e.to_string()))?
        }
        Err(e) => return Err(Error::Config(e.to_string())),
    };
    super::routes::install_blackhole_routes(&config.blackhole).await?;
    Ok(match &config.result_cache_dir {
        Some(dir) => cni.with_result_cache(dir.clone()),
        None => cni,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str) -> Sandbox {
        Sandbox {
            id: id.into(),
            pod_namespace: "default".into(),
            pod_name: id.into(),
            pod_uid: format!("uid-{id}"),
        }
    }

    #[tokio::test]
    async fn recording_fake_is_idempotent_and_records() {
        let fake = RecordingNetworking::default();
        fake.fail_setup.lock().unwrap().push("bad".into());
        let a = fake.setup(&sandbox("a")).await.unwrap();
        let again = fake.setup(&sandbox("a")).await.unwrap();
        assert_eq!(a, again);
        assert_eq!(a.netns, Path::new("/run/netns/skiff-a"));
        let b = fake.setup(&sandbox("b")).await.unwrap();
        assert_ne!(a.ips, b.ips);
        assert!(fake.setup(&sandbox("bad")).await.is_err());
        fake.teardown(&sandbox("a")).await.unwrap();
        fake.teardown(&sandbox("a")).await.unwrap();
        assert_eq!(fake.live(), vec![("b".to_string(), b.ips[0])]);
        assert_eq!(fake.calls().len(), 6);
    }

    #[tokio::test]
    async fn prepare_without_network_or_pod_cidr_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = prepare_node(&NodeNetworkConfig {
            conf_dir: dir.path().to_path_buf(),
            bin_dirs: vec![],
            default_conf: None,
            blackhole: vec![],
            result_cache_dir: None,
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("podCIDR"), "{err}");
    }
}
