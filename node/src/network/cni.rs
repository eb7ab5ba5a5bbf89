//! The agent's CNI side: load a network configuration from a conf dir and run its plugin
//! chain per the CNI spec (1.0.0, and 0.4.0/0.3.x configurations and results).
//!
//! Like kubelet and containerd, the first file by name ending in `.conflist`, `.conf` or
//! `.json` is the network; a `.conf` holding one plugin is treated as a list of one. Each
//! plugin is found in the binary directories and run with `CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` and `CNI_PATH`, its configuration on stdin with the
//! list's `name` and `cniVersion` and, after the first, the previous plugin's result as
//! `prevResult`. DEL runs the chain backwards; CHECK and DEL get the ADD's cached result.
//! Each call has a timeout; a failure carries the plugin's error JSON and its stderr.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt as _;

/// How long one plugin call may take unless [`Cni::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What can go wrong loading a network or running its plugins.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No usable configuration file.
    #[error("no CNI network configuration (*.conflist, *.conf, *.json) in {dir}; write one (skiff-node writes its default with write_skiff_conflist)")]
    NoConfig {
        /// The conf dir.
        dir: PathBuf,
    },
    /// A configuration file could not be read or parsed.
    #[error("invalid CNI configuration {path}: {reason}")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A plugin binary is not in any binary directory.
    #[error("CNI plugin {plugin:?} not found in {dirs:?}; install it there (Debian: containernetworking-plugins in /usr/lib/cni)")]
    PluginNotFound {
        /// The plugin type.
        plugin: String,
        /// Where it was looked for.
        dirs: Vec<PathBuf>,
    },
    /// A plugin could not be started or talked to.
    #[error("failed to run CNI plugin {plugin} ({command}): {source}")]
    Exec {
        /// The plugin type.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A plugin did not answer in time (it was killed).
    #[error("CNI plugin {plugin} ({command}) did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The plugin type.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// A plugin reported an error.
    #[error("CNI plugin {plugin} ({command}) failed with code {code}: {msg}{}{}", if details.is_empty() { String::new() } else { format!(" ({details})") }, if stderr.is_empty() { String::new() } else { format!("; stderr: {stderr}") })]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// The CNI error code (0 when the plugin gave no error JSON).
        code: i64,
        /// The error message.
        msg: String,
        /// The error details.
        details: String,
        /// What the plugin wrote to stderr.
        stderr: String,
    },
    /// A plugin answered ADD with something that is not a CNI result.
    #[error("CNI plugin {plugin} returned an invalid result: {reason}")]
    BadResult {
        /// The plugin type.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
}

/// Kubernetes' identity of the pod, passed to plugins in `CNI_ARGS` as kubelet does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: String,
    /// `K8S_POD_NAME`.
    pub pod_name: String,
    /// `K8S_POD_UID`.
    pub pod_uid: String,
}

/// What ADD gave the pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodNetwork {
    /// The pod's addresses, in the result's order (the pod IPs).
    pub ips: Vec<IpAddr>,
    /// The interface names in the result.
    pub interfaces: Vec<String>,
    /// The final result as the last plugin returned it.
    pub result: Value,
}

/// A loaded network: its configuration and where its plugins live.
#[derive(Debug)]
pub struct Cni {
    path: PathBuf,
    name: String,
    cni_version: String,
    plugins: Vec<serde_json::Map<String, Value>>,
    disable_check: bool,
    bin_dirs: Vec<PathBuf>,
    timeout: Duration,
    cache_dir: Option<PathBuf>,
    results: Mutex<HashMap<(String, String), Value>>,
}

impl Cni {
    /// Loads the first network configuration in `conf_dir` (by file name) and remembers the
    /// binary directories to find its plugins in.
    pub fn load(conf_dir: &Path, bin_dirs: &[PathBuf]) -> Result<Cni, CniError> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(conf_dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("conflist" | "conf" | "json")
                        )
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(CniError::BadConfig {
                    path: conf_dir.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        };
        files.sort();
        let path = files.into_iter().next().ok_or_else(|| CniError::NoConfig {
            dir: conf_dir.to_path_buf(),
        })?;
        Cni::from_file(&path, bin_dirs)
    }

    /// Loads one configuration file (a `.conflist`, or a `.conf` with one plugin).
    pub fn from_file(path: &Path, bin_dirs: &[PathBuf]) -> Result<Cni, CniError> {
        let bad = |reason: String| CniError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(bad("not a JSON object".into()));
        };
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("missing \"name\"".into()))?
            .to_string();
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.4.0")
            .to_string();
        let plugins: Vec<serde_json::Map<String, Value>> = match obj.get("plugins") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|p| match p {
                    Value::Object(m) if m.get("type").and_then(Value::as_str).is_some() => {
                        Ok(m.clone())
                    }
                    _ => Err(bad("every plugin needs a \"type\"".into())),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad("\"plugins\" must be a list".into())),
            None if obj.get("type").and_then(Value::as_str).is_some() => vec![obj.clone()],
            None => return Err(bad("neither \"plugins\" nor \"type\"".into())),
        };
        if plugins.is_empty() {
            return Err(bad("\"plugins\" is empty".into()));
        }
        Ok(Cni {
            path: path.to_path_buf(),
            name,
            cni_version,
            plugins,
            disable_check: obj.get("disableCheck").and_then(Value::as_bool) == Some(true),
            bin_dirs: bin_dirs.to_vec(),
            timeout: DEFAULT_TIMEOUT,
            cache_dir: None,
            results: Mutex::new(HashMap::new()),
        })
    }

    /// Limits each plugin call to `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Cni {
        self.timeout = timeout;
        self
    }

    /// Keeps ADD results in `dir` (one file per container and interface) so CHECK and DEL get
    /// them as `prevResult` after an agent restart too.
    pub fn with_result_cache(mut self, dir: PathBuf) -> Cni {
        self.cache_dir = Some(dir);
        self
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plugin types in chain order.
    pub fn plugin_types(&self) -> Vec<&str> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
            .collect()
    }

    /// Runs ADD through the chain and returns the pod's network.
    pub async fn add(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        args: &CniArgs,
    ) -> Result<PodNetwork, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &self.plugins {
            let out = self
                .exec(
                    "ADD",
                    plugin,
                    container_id,
                    Some(netns),
                    ifname,
                    args,
                    prev.as_ref(),
                )
                .await?;
            let ty = plugin_type(plugin);
            let result: Value = serde_json::from_slice(&out).map_err(|e| CniError::BadResult {
                plugin: ty.to_string(),
                reason: format!("{e}: {}", String::from_utf8_lossy(&out)),
            })?;
            if !result.is_object() {
                return Err(CniError::BadResult {
                    plugin: ty.to_string(),
                    reason: "not a JSON object".into(),
                });
            }
            prev = Some(result);
        }
        let result = prev.unwrap_or_else(|| json!({}));
        let network = parse_result(&result).map_err(|reason| CniError::BadResult {
            plugin: plugin_type(self.plugins.last().expect("at least one plugin")).to_string(),
            reason,
        })?;
        self.store_result(container_id, ifname, &result);
        Ok(network)
    }

    /// Runs DEL through the chain backwards. Plugins treat unknown containers as done, so
    /// this is idempotent; `netns` may be `None` when the namespace is already gone.
    pub async fn del(
        &self,
        container_id: &str,
        netns: Option<&Path>,
        ifname: &str,
        args: &CniArgs,
    ) -> Result<(), CniError> {
        let prev = self.cached_result(container_id, ifname);
        for plugin in self.plugins.iter().rev() {
            self.exec(
                "DEL",
                plugin,
                container_id,
                netns,
                ifname,
                args,
                prev.as_ref(),
            )
            .await?;
        }
        self.forget_result(container_id, ifname);
        Ok(())
    }

    /// Runs CHECK through the chain with the ADD's result (CNI 0.4.0 and later; older
    /// networks have no CHECK and pass, as do lists with `"disableCheck": true`).
    pub async fn check(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        args: &CniArgs,
    ) -> Result<(), CniError> {
        if self.disable_check || version_below_0_4(&self.cni_version) {
            return Ok(());
        }
        let prev = self.cached_result(container_id, ifname);
        for plugin in &self.plugins {
            self.exec(
                "CHECK",
                plugin,
                container_id,
                Some(netns),
                ifname,
                args,
                prev.as_ref(),
            )
            .await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn exec(
        &self,
        command: &'static str,
        plugin: &serde_json::Map<String, Value>,
        container_id: &str,
        netns: Option<&Path>,
        ifname: &str,
        args: &CniArgs,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>, CniError> {
        let ty = plugin_type(plugin);
        let binary = self.find(ty)?;
        let mut conf = plugin.clone();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        let stdin = serde_json::to_vec(&Value::Object(conf)).expect("JSON values serialise");
        let cni_args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            args.pod_namespace, args.pod_name, container_id, args.pod_uid
        );
        let path = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        let exec_err = |source| CniError::Exec {
            plugin: ty.to_string(),
            command,
            source,
        };
        let mut cmd = tokio::process::Command::new(&binary);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", cni_args)
            .env("CNI_PATH", path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(ns) = netns {
            cmd.env("CNI_NETNS", ns);
        }
        let mut child = cmd.spawn().map_err(exec_err)?;
        let mut input = child.stdin.take().expect("stdin is piped");
        let run = async {
            // A plugin may exit without reading all of stdin; that is its answer, not ours.
            let _ = input.write_all(&stdin).await;
            drop(input);
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(self.timeout, run).await {
            Ok(out) => out.map_err(exec_err)?,
            // Dropping the future drops the child, which kill_on_drop kills.
            Err(_) => {
                return Err(CniError::Timeout {
                    plugin: ty.to_string(),
                    command,
                    timeout: self.timeout,
                })
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if !output.status.success() {
            let err: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
            let text = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let mut msg = text("msg");
            if msg.is_empty() {
                msg = format!(
                    "exited with {} and no error JSON{}",
                    output.status,
                    if output.stdout.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", String::from_utf8_lossy(&output.stdout).trim())
                    }
                );
            }
            return Err(CniError::Plugin {
                plugin: ty.to_string(),
                command,
                code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
                msg,
                details: text("details"),
                stderr,
            });
        }
        if !stderr.is_empty() {
            tracing::debug!(plugin = ty, command, %stderr, "CNI plugin wrote to stderr");
        }
        Ok(output.stdout)
    }

    fn find(&self, ty: &str) -> Result<PathBuf, CniError> {
        if !ty.contains('/') && !ty.is_empty() {
            for dir in &self.bin_dirs {
                let p = dir.join(ty);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(CniError::PluginNotFound {
            plugin: ty.to_string(),
            dirs: self.bin_dirs.clone(),
        })
    }

    fn cache_file(&self, container_id: &str, ifname: &str) -> Option<PathBuf> {
        // Container IDs are plugin-checked to [a-z0-9_.-]; keep the name to one component.
        let safe = |s: &str| s.replace(['/', '\0'], "_");
        self.cache_dir.as_ref().map(|d| {
            d.join(format!(
                "{}-{}-{}",
                safe(&self.name),
                safe(container_id),
                safe(ifname)
            ))
        })
    }

    fn store_result(&self, container_id: &str, ifname: &str, result: &Value) {
        if let Some(file) = self.cache_file(container_id, ifname) {
            let written = file
                .parent()
                .map(std::fs::create_dir_all)
                .unwrap_or(Ok(()))
                .and_then(|()| std::fs::write(&file, result.to_string()));
            if let Err(e) = written {
                tracing::warn!(file = %file.display(), error = %e, "cannot cache the CNI result; CHECK and DEL after a restart will run without prevResult");
            }
        }
        self.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((container_id.into(), ifname.into()), result.clone());
    }

    fn cached_result(&self, container_id: &str, ifname: &str) -> Option<Value> {
        if let Some(v) = self
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(container_id.to_string(), ifname.to_string()))
        {
            return Some(v.clone());
        }
        let file = self.cache_file(container_id, ifname)?;
        let text = std::fs::read_to_string(file).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn forget_result(&self, container_id: &str, ifname: &str) {
        self.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(container_id.to_string(), ifname.to_string()));
        if let Some(file) = self.cache_file(container_id, ifname) {
            let _ = std::fs::remove_file(file);
        }
    }
}

fn plugin_type(plugin: &serde_json::Map<String, Value>) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

fn version_below_0_4(v: &str) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    major == 0 && minor < 4
}

/// Reads the pod's addresses and interface names out of a CNI result (1.0.0, 0.4.0 and 0.3.x
/// put them in `ips`; 0.2.0 and older in `ip4`/`ip6`).
pub fn parse_result(result: &Value) -> Result<PodNetwork, String> {
    let mut ips = Vec::new();
    let parse = |s: &str| -> Result<IpAddr, String> {
        let addr = s.split('/').next().unwrap_or(s);
        addr.parse::<IpAddr>()
            .map_err(|e| format!("bad address {s:?}: {e}"))
    };
    if let Some(list) = result.get("ips").and_then(Value::as_array) {
        for ip in list {
            let s = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or("an entry of \"ips\" has no \"address\"")?;
            ips.push(parse(s)?);
        }
    } else {
        for key in ["ip4", "ip6"] {
            if let Some(s) = result
                .get(key)
                .and_then(|v| v.get("ip"))
                .and_then(Value::as_str)
            {
                ips.push(parse(s)?);
            }
        }
    }
    let interfaces = result
        .get("interfaces")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|i| i.get("name").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(PodNetwork {
        ips,
        interfaces,
        result: result.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_results_of_each_version() {
        let check = |result: Value, want: &[&str]| {
            let got = parse_result(&result).unwrap().ips;
            let want: Vec<IpAddr> = want.iter().map(|s| s.parse().unwrap()).collect();
            assert_eq!(got, want, "{result}");
        };
        check(
            json!({"cniVersion":"1.0.0","ips":[{"address":"10.1.0.2/24","gateway":"10.1.0.1","interface":1}]}),
            &["10.1.0.2"],
        );
        check(
            json!({"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.3/24"},{"version":"6","address":"fd00::3/64"}]}),
            &["10.1.0.3", "fd00::3"],
        );
        check(
            json!({"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.4/24"}}),
            &["10.1.0.4"],
        );
        check(json!({"cniVersion":"1.0.0"}), &[]);
        assert!(parse_result(&json!({"ips":[{"address":"nonsense"}]})).is_err());
        assert!(parse_result(&json!({"ips":[{}]})).is_err());
    }

    #[test]
    fn loads_first_file_by_name_and_wraps_single_plugin_confs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("20-other.conflist"),
            r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-single.conf"),
            r#"{"cniVersion":"0.4.0","name":"single","type":"bridge","bridge":"b0"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("00-ignored.txt"), "not a conf").unwrap();
        let cni = Cni::load(dir.path(), &[]).unwrap();
        assert_eq!(cni.name(), "single");
        assert_eq!(cni.plugin_types(), vec!["bridge"]);
    }

    #[test]
    fn config_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Cni::load(dir.path(), &[]),
            Err(CniError::NoConfig { .. })
        ));
        assert!(matches!(
            Cni::load(&dir.path().join("missing"), &[]),
            Err(CniError::NoConfig { .. })
        ));
        for (text, want) in [
            ("{", "EOF"),
            (r#"{"plugins":[{"type":"x"}]}"#, "name"),
            (r#"{"name":"n","plugins":[{}]}"#, "type"),
            (r#"{"name":"n","plugins":[]}"#, "empty"),
            (r#"{"name":"n"}"#, "neither"),
        ] {
            std::fs::write(dir.path().join("a.conflist"), text).unwrap();
            let err = Cni::load(dir.path(), &[]).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[tokio::test]
    async fn chain_passes_prev_result_and_cached_result_reaches_check_and_del() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let write_plugin = |name: &str, script: &str| {
            let p = bin.join(name);
            std::fs::write(&p, script).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        // The first plugin makes a result; the second records its stdin per command and answers
        // ADD with a result of its own.
        write_plugin(
            "first",
            "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && echo '{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.9.0.5/24\"}]}'\nexit 0\n",
        );
        let log = dir.path().join("log");
        write_plugin(
            "second",
            &format!(
                "#!/bin/sh\nin=$(cat)\necho \"$CNI_COMMAND $CNI_ARGS $in\" >> {log}\n[ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.9.0.5/24\"}}],\"interfaces\":[{{\"name\":\"from-second\"}}]}}'\nexit 0\n",
                log = log.display()
            ),
        );
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(
            conf.join("a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"chain","plugins":[{"type":"first"},{"type":"second","x":1}]}"#,
        )
        .unwrap();
        let cache = dir.path().join("cache");
        let load = || {
            Cni::load(&conf, std::slice::from_ref(&bin))
                .unwrap()
                .with_result_cache(cache.clone())
        };
        let args = CniArgs {
            pod_namespace: "ns1".into(),
            pod_name: "p1".into(),
            pod_uid: "u1".into(),
        };
        let net = load()
            .add("c1", Path::new("/x"), "eth0", &args)
            .await
            .unwrap();
        assert_eq!(net.ips, vec!["10.9.0.5".parse::<IpAddr>().unwrap()]);
        // The chain's result is the last plugin's.
        assert_eq!(net.interfaces, vec!["from-second".to_string()]);
        // A new invoker (an agent restart) still has the result for CHECK and DEL.
        let again = load();
        again
            .check("c1", Path::new("/x"), "eth0", &args)
            .await
            .unwrap();
        again.del("c1", None, "eth0", &args).await.unwrap();
        let log = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 3, "{log}");
        for (line, cmd) in lines.iter().zip(["ADD", "CHECK", "DEL"]) {
            assert!(line.starts_with(cmd), "{line}");
            assert!(line.contains("K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=p1;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u1"), "{line}");
            assert!(line.contains(r#""name":"chain""#), "{line}");
            assert!(line.contains(r#""x":1"#), "{line}");
            assert!(line.contains(r#""prevResult":{"#), "{line}");
            assert!(line.contains("10.9.0.5/24"), "{line}");
        }
        assert_eq!(
            std::fs::read_dir(&cache).unwrap().count(),
            0,
            "DEL drops the cached result"
        );
    }

    #[tokio::test]
    async fn missing_plugin_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"no-such-plugin"}]}"#,
        )
        .unwrap();
        let cni = Cni::load(dir.path(), &[dir.path().to_path_buf()]).unwrap();
        let err = cni
            .add("c1", Path::new("/nonexistent"), "eth0", &CniArgs::default())
            .await
            .unwrap_err();
        assert!(matches!(err, CniError::PluginNotFound { .. }), "{err}");
    }

    #[tokio::test]
    async fn plugin_errors_and_timeouts_are_reported() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let write_plugin = |name: &str, script: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, script).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        write_plugin(
            "failing",
            "#!/bin/sh\ncat >/dev/null\necho 'oops on stderr' >&2\necho '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"try later\",\"details\":\"busy\"}'\nexit 1\n",
        );
        write_plugin("slow", "#!/bin/sh\nexec sleep 30\n");
        write_plugin(
            "echo-env",
            "#!/bin/sh\ncat >/dev/null\necho \"{\\\"cniVersion\\\":\\\"1.0.0\\\",\\\"ips\\\":[{\\\"address\\\":\\\"10.9.0.2/24\\\"}],\\\"interfaces\\\":[{\\\"name\\\":\\\"$CNI_IFNAME\\\"}]}\"\n",
        );
        let conf = |ty: &str| {
            let c = dir.path().join("conf").join(ty);
            std::fs::create_dir_all(&c).unwrap();
            std::fs::write(
                c.join("a.conflist"),
                format!(r#"{{"cniVersion":"1.0.0","name":"n","plugins":[{{"type":"{ty}"}}]}}"#),
            )
            .unwrap();
            Cni::load(&c, &[dir.path().to_path_buf()])
                .unwrap()
                .with_timeout(Duration::from_millis(500))
        };
        let args = CniArgs::default();
        let err = conf("failing")
            .add("c1", Path::new("/x"), "eth0", &args)
            .await
            .unwrap_err();
        match &err {
            CniError::Plugin {
                code, msg, stderr, ..
            } => {
                assert_eq!(*code, 11);
                assert_eq!(msg, "try later");
                assert_eq!(stderr, "oops on stderr");
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("busy"), "{err}");
        let started = std::time::Instant::now();
        let err = conf("slow")
            .add("c1", Path::new("/x"), "eth0", &args)
            .await
            .unwrap_err();
        assert!(matches!(err, CniError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // disableCheck: CHECK never runs the (failing) plugin.
        let c = dir.path().join("conf").join("nocheck");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(
            c.join("a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n","disableCheck":true,"plugins":[{"type":"failing"}]}"#,
        )
        .unwrap();
        Cni::load(&c, &[dir.path().to_path_buf()])
            .unwrap()
            .check("c1", Path::new("/x"), "eth0", &args)
            .await
            .unwrap();
        let err = conf("failing")
            .check("c1", Path::new("/x"), "eth0", &args)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CniError::Plugin {
                    command: "CHECK",
                    ..
                }
            ),
            "{err}"
        );
        let net = conf("echo-env")
            .add("c1", Path::new("/x"), "net7", &args)
            .await
            .unwrap();
        assert_eq!(net.ips, vec!["10.9.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(net.interfaces, vec!["net7".to_string()]);
    }
}
