//! The master's configuration: flags after kube-apiserver where one exists, each with a
//! `SKIFF_` environment fallback. Validated before anything is opened or bound.

use std::path::PathBuf;

use clap::Parser;

use crate::api::admission::DefaultTolerations;
use crate::api::allocator::{PortRange, ServiceCidr};
use crate::api::tokens::TokenConfig;
use crate::store::Backend;

/// Skiff's master: the Kubernetes API server, scheduler and controllers in one process.
#[derive(Clone, Debug, Parser)]
#[command(name = "skiff-master", version)]
pub struct Config {
    /// Where the master keeps its state (the embedded store file, certificates).
    #[arg(long, env = "SKIFF_DATA_DIR", default_value = "/var/lib/skiff")]
    pub data_dir: PathBuf,

    /// The HTTPS port of the Kubernetes API.
    #[arg(long, env = "SKIFF_SECURE_PORT", default_value_t = 6443)]
    pub secure_port: u16,

    /// The address the API listens on.
    #[arg(long, env = "SKIFF_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: std::net::IpAddr,

    /// Where to write the admin kubeconfig (mode 0600) on start.
    #[arg(
        long,
        env = "SKIFF_ADMIN_KUBECONFIG",
        default_value = "/etc/skiff/admin.kubeconfig"
    )]
    pub admin_kubeconfig: PathBuf,

    /// Extra names and addresses for the serving certificate (comma-separated).
    #[arg(long, env = "SKIFF_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,

    /// Use etcd instead of the embedded store: comma-separated client URLs, like
    /// `http://127.0.0.1:2379,http://127.0.0.1:22379`.
    #[arg(long, env = "SKIFF_ETCD_SERVERS", value_delimiter = ',')]
    pub etcd_servers: Vec<String>,

    /// The embedded store's page cache, in MiB: an upper bound on the store's resident pages
    /// (ignored with `--etcd-servers`).
    #[arg(long, env = "SKIFF_STORE_CACHE_MIB", default_value_t = (crate::store::embedded::DEFAULT_CACHE_BYTES >> 20) as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub store_cache_mib: u32,

    /// How often the store's history is compacted to the revision seen one interval earlier
    /// (as kube-apiserver does every 5 minutes). Watches older than that get 410 Gone.
    #[arg(long, env = "SKIFF_COMPACTION_INTERVAL_SECONDS", default_value_t = 300)]
    pub compaction_interval_seconds: u64,

    /// The IPv4 range Service ClusterIPs come from (a CIDR between /12 and /29). Its first
    /// address after the network one is reserved for the `kubernetes` Service.
    #[arg(
        long,
        env = "SKIFF_SERVICE_CLUSTER_IP_RANGE",
        default_value = "10.96.0.0/12"
    )]
    pub service_cluster_ip_range: String,

    /// The ports NodePort and LoadBalancer Services get node ports from, `first-last`.
    #[arg(
        long,
        env = "SKIFF_SERVICE_NODE_PORT_RANGE",
        default_value = "30000-32767"
    )]
    pub service_node_port_range: String,

    /// How long pods tolerate a `node.kubernetes.io/not-ready:NoExecute` taint: the
    /// `tolerationSeconds` of the toleration added to every pod without one of its own.
    #[arg(
        long,
        env = "SKIFF_DEFAULT_NOT_READY_TOLERATION_SECONDS",
        default_value_t = 300
    )]
    pub default_not_ready_toleration_seconds: i64,

    /// How long pods tolerate a `node.kubernetes.io/unreachable:NoExecute` taint, likewise.
    #[arg(
        long,
        env = "SKIFF_DEFAULT_UNREACHABLE_TOLERATION_SECONDS",
        default_value_t = 300
    )]
    pub default_unreachable_toleration_seconds: i64,

    /// The `iss` of the service-account tokens the API issues, and the only issuer it accepts.
    #[arg(
        long,
        env = "SKIFF_SERVICE_ACCOUNT_ISSUER",
        default_value = crate::api::tokens::DEFAULT_ISSUER
    )]
    pub service_account_issuer: String,

    /// The audiences the API accepts service-account tokens for (comma-separated); also what a
    /// TokenRequest without audiences gets. Defaults to the issuer, as kube-apiserver's.
    #[arg(long, env = "SKIFF_API_AUDIENCES", value_delimiter = ',')]
    pub api_audiences: Vec<String>,

    /// Log format: `text` or `json`. The level comes from RUST_LOG (default `info`).
    #[arg(long, env = "SKIFF_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    #[command(flatten)]
    pub controllers: crate::controllers::Config,
}

impl Config {
    /// Checks the configuration before any side effect.
    pub fn validate(&self) -> anyhow::Result<()> {
        for url in &self.etcd_servers {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() > "https://".len();
            if !ok {
                anyhow::bail!(
                    "--etcd-servers: {url:?} is not an etcd client URL; \
                     give URLs like http://127.0.0.1:2379, separated by commas"
                );
            }
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            anyhow::bail!(
                "--log-format: {:?} is not a log format; use text or json",
                self.log_format
            );
        }
        for (flag, seconds) in [
            (
                "--default-not-ready-toleration-seconds",
                self.default_not_ready_toleration_seconds,
            ),
            (
                "--default-unreachable-toleration-seconds",
                self.default_unreachable_toleration_seconds,
            ),
        ] {
            if seconds < 0 {
                anyhow::bail!("{flag} must be 0 or more, not {seconds}");
            }
        }
        if self.compaction_interval_seconds == 0 {
            anyhow::bail!("--compaction-interval-seconds must be at least 1");
        }
        if self.service_account_issuer.trim().is_empty() {
            anyhow::bail!("--service-account-issuer must not be empty");
        }
        if self.api_audiences.iter().any(|a| a.trim().is_empty()) {
            anyhow::bail!("--api-audiences: an audience must not be empty");
        }
        if let Err(e) = ServiceCidr::parse(&self.service_cluster_ip_range) {
            anyhow::bail!("--service-cluster-ip-range: {e}");
        }
        let node_ports = match PortRange::parse(&self.service_node_port_range) {
            Ok(range) => range,
            Err(e) => anyhow::bail!("--service-node-port-range: {e}"),
        };
        if node_ports.contains(self.secure_port) {
            anyhow::bail!(
                "--service-node-port-range {node_ports} contains --secure-port {}; \
                 move one of them",
                self.secure_port
            );
        }
        Ok(())
    }

    /// The tolerations the DefaultTolerationSeconds admission adds to pods.
    pub fn default_tolerations(&self) -> DefaultTolerations {
        DefaultTolerations {
            not_ready_seconds: self.default_not_ready_toleration_seconds,
            unreachable_seconds: self.default_unreachable_toleration_seconds,
        }
    }

    /// The service-account token issuer and API audiences from the flags.
    pub fn token_config(&self) -> TokenConfig {
        let api_audiences = if self.api_audiences.is_empty() {
            vec![self.service_account_issuer.clone()]
        } else {
            self.api_audiences.clone()
        };
        TokenConfig {
            issuer: self.service_account_issuer.clone(),
            api_audiences,
        }
    }

    /// The store backend the flags select.
    pub fn backend(&self) -> Backend {
        if self.etcd_servers.is_empty() {
            Backend::Embedded {
                path: self.data_dir.join("state.redb"),
                cache_bytes: (self.store_cache_mib as usize) << 20,
            }
        } else {
            Backend::Etcd {
                endpoints: self.etcd_servers.clone(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str], expected: Result<Backend, &str>) {
        let parsed =
            Config::try_parse_from(std::iter::once("skiff-master").chain(args.iter().copied()))
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map(|_| c).map_err(|e| e.to_string()));
        match (parsed, expected) {
            (Ok(config), Ok(backend)) => {
                assert_eq!(
                    format!("{:?}", config.backend()),
                    format!("{backend:?}"),
                    "{args:?}"
                )
            }
            (Err(message), Err(fragment)) => {
                assert!(message.contains(fragment), "{args:?}: {message}")
            }
            (got, want) => panic!("{args:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn flags_select_the_backend_or_say_what_is_wrong() {
        check(
            &[],
            Ok(Backend::Embedded {
                path: "/var/lib/skiff/state.redb".into(),
                cache_bytes: 16 << 20,
            }),
        );
        check(
            &["--data-dir", "/tmp/x"],
            Ok(Backend::Embedded {
                path: "/tmp/x/state.redb".into(),
                cache_bytes: 16 << 20,
            }),
        );
        check(
            &["--store-cache-mib", "48"],
            Ok(Backend::Embedded {
                path: "/var/lib/skiff/state.redb".into(),
                cache_bytes: 48 << 20,
            }),
        );
        check(
            &[
                "--etcd-servers",
                "http://127.0.0.1:2379,http://127.0.0.1:22379",
            ],
            Ok(Backend::Etcd {
                endpoints: vec![
                    "http://127.0.0.1:2379".into(),
                    "http://127.0.0.1:22379".into(),
                ],
            }),
        );
        check(
            &["--etcd-servers", "127.0.0.1:2379"],
            Err("is not an etcd client URL"),
        );
        check(&["--log-format", "xml"], Err("is not a log format"));
        check(&["--compaction-interval-seconds", "0"], Err("at least 1"));
        check(
            &["--default-unreachable-toleration-seconds=-1"],
            Err("--default-unreachable-toleration-seconds must be 0 or more"),
        );
    }

    #[test]
    fn default_tolerations_come_from_the_flags() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(std::iter::once("skiff-master").chain(args.iter().copied()))
                .unwrap()
                .default_tolerations()
        };
        assert_eq!(parse(&[]), DefaultTolerations::default());
        assert_eq!(
            parse(&[
                "--default-not-ready-toleration-seconds",
                "30",
                "--default-unreachable-toleration-seconds=0"
            ]),
            DefaultTolerations {
                not_ready_seconds: 30,
                unreachable_seconds: 0
            }
        );
    }

    #[test]
    fn service_ranges_default_like_kubernetes_and_are_validated() {
        let config = Config::try_parse_from(["skiff-master"]).unwrap();
        assert_eq!(config.service_cluster_ip_range, "10.96.0.0/12");
        assert_eq!(config.service_node_port_range, "30000-32767");
        let embedded = || {
            Ok(Backend::Embedded {
                path: "/var/lib/skiff/state.redb".into(),
                cache_bytes: 16 << 20,
            })
        };
        check(&["--service-cluster-ip-range", "10.0.0.0/16"], embedded());
        check(&["--service-cluster-ip-range", "172.20.0.0/29"], embedded());
        check(&["--service-node-port-range", "20000-20099"], embedded());
        check(&["--service-node-port-range", "30080-30080"], embedded());
        let ip_range = |value: &str, fragment: &'static str| {
            check(&["--service-cluster-ip-range", value], Err(fragment));
        };
        ip_range(
            "10.96.0.0",
            "--service-cluster-ip-range: \"10.96.0.0\" is not an IPv4 CIDR",
        );
        ip_range("10.96.0.0/33", "is not an IPv4 CIDR");
        ip_range("10.96.0.0/x", "is not an IPv4 CIDR");
        ip_range("fd00::/108", "is not an IPv4 CIDR");
        ip_range("10.0.0.0/8", "must be between /12 and /29");
        ip_range("10.96.0.0/30", "must be between /12 and /29");
        ip_range("10.96.0.1/12", "host bits set; the network is 10.96.0.0/12");
        let port_range = |value: &str, fragment: &'static str| {
            check(&["--service-node-port-range", value], Err(fragment));
        };
        port_range(
            "30000",
            "--service-node-port-range: \"30000\" is not a port range",
        );
        port_range("32767-30000", "is not a port range");
        port_range("0-100", "is not a port range");
        port_range("30000-70000", "is not a port range");
        port_range("6000-7000", "contains --secure-port 6443");
    }
}
