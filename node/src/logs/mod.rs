//! Container logs: the CRI log format, the log driver that writes it, and the reader that
//! serves it.
//!
//! A container's stdout and stderr never pass through the agent. The pod worker gives
//! containerd a `binary://` log URI ([`log_uri`]) that names the `skiff-node` executable and its
//! `log-driver` subcommand; the runc shim starts that process per container with the output
//! pipes as fds 3 and 4 ([`driver`]). So output keeps flowing to disk while the agent is down
//! (`kill -9` of the agent leaves running containers and their logs untouched).
//!
//! Files follow kubelet's layout and format, so tools that read `/var/log/pods` keep working:
//! `<pod-logs-dir>/<namespace>_<pod>_<uid>/<container>/<restartCount>.log`, one CRI record per
//! line (`2016-10-06T00:17:09.669794202Z stdout F text`, `P` for a piece of a line longer than
//! [`cri::MAX_LINE`]), rotated by size into `<restartCount>.log.<timestamp>` ([`writer`]).
//! [`reader`] reads them back for `kubectl logs` (tail, follow, timestamps, since, limitBytes).

pub mod cri;
pub mod driver;
pub mod reader;
pub mod writer;

use std::path::{Path, PathBuf};

/// kubelet's default pod logs directory (`--pod-logs-dir`).
pub const DEFAULT_POD_LOGS_DIR: &str = "/var/log/pods";

/// How large log files grow and how many are kept (kubelet's `--container-log-max-size` and
/// `--container-log-max-files`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// A file is rotated once a write would take it past this many bytes.
    pub max_size: u64,
    /// How many files a container keeps, the current one included (at least 2).
    pub max_files: usize,
}

impl Default for LogLimits {
    /// kubelet's defaults: 10 MiB, 5 files.
    fn default() -> Self {
        LogLimits {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// The directory of one pod's logs: `<dir>/<namespace>_<pod>_<uid>`.
pub fn pod_log_dir(pod_logs_dir: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
    pod_logs_dir.join(format!("{namespace}_{pod}_{uid}"))
}

/// The log file of one run of a container: `<dir>/<namespace>_<pod>_<uid>/<container>/<restart>.log`.
pub fn container_log_path(
    pod_logs_dir: &Path,
    namespace: &str,
    pod: &str,
    uid: &str,
    container: &str,
    restart_count: u32,
) -> PathBuf {
    pod_log_dir(pod_logs_dir, namespace, pod, uid)
        .join(container)
        .join(format!("{restart_count}.log"))
}

/// The containerd log URI for a task's `stdout` and `stderr` (`CreateTaskRequest.stdout`/`stderr`,
/// both set to the same URI): the shim runs `skiff_node_exe log-driver --path <log_path>
/// --max-size <n> --max-files <n>` with the container's output as fds 3 and 4.
///
/// containerd turns each query pair into two arguments in no fixed order (Go map order), so
/// the driver finds `log-driver` anywhere among them ([`driver::is_invoked`]) and reads its
/// flags as pairs in any order.
pub fn log_uri(skiff_node_exe: &Path, log_path: &Path, limits: &LogLimits) -> String {
    format!(
        "binary://{}?log-driver&--path={}&--max-size={}&--max-files={}",
        escape(&skiff_node_exe.to_string_lossy(), false),
        escape(&log_path.to_string_lossy(), true),
        limits.max_size,
        limits.max_files
    )
}

/// Percent-encodes what a URL path (or, with `query`, a query value) cannot carry as it is.
fn escape(s: &str, query: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let plain = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/')
            || (!query && matches!(b, b':' | b'@' | b'+' | b','));
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_uri_names_the_binary_and_escapes_the_path() {
        let uri = log_uri(
            Path::new("/usr/bin/skiff-node"),
            Path::new("/var/log/pods/ns_p q_u/c/0.log"),
            &LogLimits::default(),
        );
        assert_eq!(
            uri,
            "binary:///usr/bin/skiff-node?log-driver&--path=/var/log/pods/ns_p%20q_u/c/0.log\
             &--max-size=10485760&--max-files=5"
        );
    }

    #[test]
    fn container_log_path_is_kubelets_layout() {
        assert_eq!(
            container_log_path(
                Path::new("/var/log/pods"),
                "default",
                "web",
                "u1",
                "nginx",
                3
            ),
            Path::new("/var/log/pods/default_web_u1/nginx/3.log")
        );
    }
}
