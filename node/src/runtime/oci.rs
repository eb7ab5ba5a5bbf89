//! Which OCI runtime binary the runc shim runs containers with: runc, or crun.
//!
//! containerd's `io.containerd.runc.v2` shim drives any runtime with runc's command line; the
//! container's runtime options (`containerd.runc.v1.Options`, `BinaryName`) name the binary,
//! as containerd's CRI does for a `runtimes.crun` handler. crun is a C program: it starts a
//! container with a fraction of runc's CPU (runc is three Go process starts per container:
//! `create`, `init`, `start`), which is most of a burst of pod starts on a small node.
//!
//! `--oci-runtime auto` (the default) takes crun when it is installed and the host's cgroup
//! layout is one crun accepts, and runc otherwise. crun refuses a hybrid layout (v1
//! controllers plus a cgroup2 hierarchy) in which some controller is left on the cgroup2 side;
//! systemd mounts every controller as v1 in hybrid mode, and `cluster/install-deps.sh` does the
//! same for hosts whose init did not.

use std::path::{Path, PathBuf};

use anyhow::bail;
use prost_types::Any;

/// The type URL of the runc shim's options.
pub const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

/// Where a hybrid host mounts its cgroup2 hierarchy.
const HYBRID_UNIFIED: &str = "/sys/fs/cgroup/unified";

/// The runtime binary containers run with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OciRuntime {
    /// The shim's default, runc.
    Runc,
    /// Another runc-compatible binary (crun), by path or by name on containerd's `PATH`.
    Binary(String),
}

impl OciRuntime {
    /// The container's runtime options: `None` leaves the shim's defaults (runc).
    pub fn options(&self) -> Option<Any> {
        match self {
            OciRuntime::Runc => None,
            OciRuntime::Binary(binary) => Some(Any {
                type_url: RUNC_OPTIONS_TYPE_URL.into(),
                value: prost::Message::encode_to_vec(&RuncOptions {
                    binary_name: binary.clone(),
                }),
            }),
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &str {
        match self {
            OciRuntime::Runc => "runc",
            OciRuntime::Binary(b) => b,
        }
    }
}

/// The one field of containerd's `containerd.runc.v1.Options` the agent sets.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    /// `binary_name = 6` in containerd's `runtime/v2/runc/options/oci.proto`.
    #[prost(string, tag = "6")]
    binary_name: String,
}

/// Resolves `--oci-runtime` (`auto`, `runc`, `crun`, or a path) on this host. Returns the
/// runtime and, for `auto`, why it chose so.
pub fn choose(flag: &str) -> anyhow::Result<(OciRuntime, String)> {
    choose_with(flag, find_on_path("crun"), cgroup_controllers_left_on_v2())
}

/// [`choose`] with the host's facts given: where crun is, and the controllers a hybrid host
/// left on cgroup2.
fn choose_with(
    flag: &str,
    crun: Option<PathBuf>,
    left_on_v2: Vec<String>,
) -> anyhow::Result<(OciRuntime, String)> {
    let refused = |what: &str| {
        format!(
            "{what} refuses this host's hybrid cgroup layout: the controllers {} are on cgroup2 \
             ({HYBRID_UNIFIED}); mount them as cgroup v1 hierarchies (cluster/install-deps.sh \
             does) or pass --oci-runtime runc",
            left_on_v2.join(",")
        )
    };
    match flag {
        "auto" => match crun {
            None => Ok((OciRuntime::Runc, "crun is not installed".into())),
            Some(_) if !left_on_v2.is_empty() => Ok((OciRuntime::Runc, refused("crun"))),
            Some(path) => Ok((
                OciRuntime::Binary(path.display().to_string()),
                "crun is installed".into(),
            )),
        },
        "runc" => Ok((OciRuntime::Runc, "--oci-runtime runc".into())),
        "" => bail!("--oci-runtime needs a value: auto, runc, crun or a path"),
        other => {
            let is_crun = Path::new(other).file_name().is_some_and(|n| n == "crun");
            if is_crun && !left_on_v2.is_empty() {
                bail!("{}", refused(other));
            }
            let binary = if other == "crun" {
                match crun {
                    Some(path) => path.display().to_string(),
                    None => {
                        bail!("--oci-runtime crun: crun is not on the PATH (apt-get install crun)")
                    }
                }
            } else {
                other.to_string()
            };
            Ok((OciRuntime::Binary(binary), format!("--oci-runtime {other}")))
        }
    }
}

/// The controllers listed in a hybrid host's cgroup2 `cgroup.controllers` (empty on a pure v1
/// or pure v2 host, where crun has no objection).
fn cgroup_controllers_left_on_v2() -> Vec<String> {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return Vec::new(); // pure cgroup2
    }
    std::fs::read_to_string(Path::new(HYBRID_UNIFIED).join("cgroup.controllers"))
        .map(|s| parse_controllers(&s))
        .unwrap_or_default()
}

fn parse_controllers(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// The first executable `name` on the `PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crun() -> Option<PathBuf> {
        Some(PathBuf::from("/usr/bin/crun"))
    }

    #[test]
    fn auto_takes_crun_when_installed_and_the_layout_allows() {
        let (rt, _) = choose_with("auto", crun(), vec![]).unwrap();
        assert_eq!(rt, OciRuntime::Binary("/usr/bin/crun".into()));
        let (rt, why) = choose_with("auto", None, vec![]).unwrap();
        assert_eq!(rt, OciRuntime::Runc);
        assert!(why.contains("not installed"), "{why}");
    }

    #[test]
    fn auto_falls_back_to_runc_on_a_hybrid_layout_crun_refuses() {
        let (rt, why) = choose_with("auto", crun(), vec!["hugetlb".into()]).unwrap();
        assert_eq!(rt, OciRuntime::Runc);
        assert!(
            why.contains("hugetlb") && why.contains("install-deps"),
            "{why}"
        );
    }

    #[test]
    fn explicit_choices() {
        assert_eq!(
            choose_with("runc", crun(), vec!["hugetlb".into()])
                .unwrap()
                .0,
            OciRuntime::Runc
        );
        assert_eq!(
            choose_with("crun", crun(), vec![]).unwrap().0,
            OciRuntime::Binary("/usr/bin/crun".into())
        );
        let err = choose_with("crun", crun(), vec!["hugetlb".into()]).unwrap_err();
        assert!(err.to_string().contains("--oci-runtime runc"), "{err}");
        let err = choose_with("crun", None, vec![]).unwrap_err();
        assert!(err.to_string().contains("apt-get install crun"), "{err}");
        assert_eq!(
            choose_with("/opt/bin/youki", None, vec!["hugetlb".into()])
                .unwrap()
                .0,
            OciRuntime::Binary("/opt/bin/youki".into())
        );
        assert!(choose_with("", crun(), vec![]).is_err());
    }

    #[test]
    fn options_carry_the_binary_name_as_containerd_encodes_it() {
        assert_eq!(OciRuntime::Runc.options(), None);
        let any = OciRuntime::Binary("crun".into()).options().unwrap();
        assert_eq!(any.type_url, "containerd.runc.v1.Options");
        // Field 6, length-delimited (6 << 3 | 2 = 0x32), then the length and the bytes.
        assert_eq!(any.value, b"\x32\x04crun");
    }

    #[test]
    fn controllers_are_split_on_whitespace() {
        assert_eq!(parse_controllers("hugetlb\n"), vec!["hugetlb"]);
        assert!(parse_controllers("\n").is_empty());
        assert_eq!(
            parse_controllers("cpu io memory"),
            vec!["cpu", "io", "memory"]
        );
    }
}
