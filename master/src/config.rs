//! The master's configuration: flags after kube-apiserver where one exists, each with a
//! `SKIFF_` environment fallback. Validated before anything is opened or bound.

use std::path::PathBuf;

use clap::Parser;

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

    /// How often the store's history is compacted to the revision seen one interval earlier
    /// (as kube-apiserver does every 5 minutes). Watches older than that get 410 Gone.
    #[arg(long, env = "SKIFF_COMPACTION_INTERVAL_SECONDS", default_value_t = 300)]
    pub compaction_interval_seconds: u64,

    /// Log format: `text` or `json`. The level comes from RUST_LOG (default `info`).
    #[arg(long, env = "SKIFF_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
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
        if self.compaction_interval_seconds == 0 {
            anyhow::bail!("--compaction-interval-seconds must be at least 1");
        }
        Ok(())
    }

    /// The store backend the flags select.
    pub fn backend(&self) -> Backend {
        if self.etcd_servers.is_empty() {
            Backend::Embedded {
                path: self.data_dir.join("state.redb"),
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
            }),
        );
        check(
            &["--data-dir", "/tmp/x"],
            Ok(Backend::Embedded {
                path: "/tmp/x/state.redb".into(),
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
    }
}
