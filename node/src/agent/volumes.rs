//! A pod's volumes as directories on the node, bind-mounted into its containers.
//!
//! Each pod has a directory `<root>/pods/<uid>/`; its volumes live under `volumes/<name>`.
//! `emptyDir` is a directory (a tmpfs with `medium: Memory`), `hostPath` is the host's path,
//! `configMap`, `secret`, `downwardAPI` and `projected` are files written from the API's data
//! (secrets and service-account tokens on a tmpfs, never on disk). The pod's `/etc/hosts` and `/etc/resolv.conf` are files
//! in the pod directory too.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, KeyToPath, Pod, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume,
};

use super::env::{field_value, ConfigError, Sources};
use crate::runtime::spec::BindMount;

/// Why a volume cannot be set up (the pod waits with `CreateContainerConfigError` or
/// `FailedMount`, and the message says which).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume}: {source}")]
    Config {
        volume: String,
        #[source]
        source: ConfigError,
    },
    #[error("volume {volume}: {message}")]
    Invalid { volume: String, message: String },
    #[error("volume {volume}: {source}")]
    Io {
        volume: String,
        #[source]
        source: io::Error,
    },
    #[error("container {container} mounts volume {volume}, which the pod does not define")]
    Unknown { container: String, volume: String },
}

/// The pod's directory under the agent's root.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

/// A relative path that stays inside its directory (no `..`, not absolute).
fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

fn io_err(volume: &str) -> impl Fn(io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        volume: volume.to_string(),
        source,
    }
}

/// Mounts a tmpfs at `dir` unless one is already there.
fn mount_tmpfs(dir: &Path, size: Option<i64>) -> io::Result<()> {
    if is_mount_point(dir) {
        return Ok(());
    }
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    let mut options = "mode=0755".to_string();
    if let Some(size) = size {
        options.push_str(&format!(",size={size}"));
    }
    let options = std::ffi::CString::new(options).unwrap_or_default();
    // SAFETY: mount(2) with valid C strings; "tmpfs" needs no source.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `dir` is a mount point (listed in our mount table).
fn is_mount_point(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|p| Path::new(p) == dir)
    })
}

/// Lazily unmounts every mount point under `dir` (deepest first; MNT_DETACH never blocks).
pub fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: umount2 with a valid C string.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Unmounts everything under `dir` and removes it.
pub fn remove_pod_dir(dir: &Path) -> io::Result<()> {
    unmount_under(dir);
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `files` (relative path → bytes, mode) into `dir`, replacing what was there.
fn write_files(
    dir: &Path,
    files: &[(String, Vec<u8>, u32)],
    volume: &str,
) -> Result<(), VolumeError> {
    for (path, data, mode) in files {
        if !safe_relative(path) {
            return Err(VolumeError::Invalid {
                volume: volume.to_string(),
                message: format!("path {path:?} must be relative and must not contain '..'"),
            });
        }
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(volume))?;
        }
        std::fs::write(&target, data).map_err(io_err(volume))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode & 0o777))
            .map_err(io_err(volume))?;
    }
    Ok(())
}

/// The files of a ConfigMap or Secret: every key, or the `items` given.
fn key_files(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    kind: &'static str,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<Vec<(String, Vec<u8>, u32)>, ConfigError> {
    match items {
        None => Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), default_mode))
            .collect()),
        Some(items) => {
            let mut out = Vec::new();
            for item in items {
                match data.get(&item.key) {
                    Some(v) => out.push((
                        item.path.clone(),
                        v.clone(),
                        item.mode.map_or(default_mode, |m| m as u32),
                    )),
                    None if optional => {}
                    None => {
                        return Err(ConfigError::KeyNotFound {
                            kind,
                            namespace: namespace.to_string(),
                            name: name.to_string(),
                            key: item.key.clone(),
                        })
                    }
                }
            }
            Ok(out)
        }
    }
}

/// The files of ConfigMap or Secret `name` (`kind`), `data` being what the API has of it:
/// nothing when it is missing and `optional`.
#[allow(clippy::too_many_arguments)]
fn object_files(
    kind: &'static str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    namespace: &str,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    mode: u32,
) -> Result<Vec<(String, Vec<u8>, u32)>, ConfigError> {
    match data {
        Some(data) => key_files(&data, items, mode, kind, namespace, name, optional),
        None if optional => Ok(Vec::new()),
        None if kind == "Secret" => Err(ConfigError::SecretNotFound(name.to_string())),
        None => Err(ConfigError::ConfigMapNotFound(name.to_string())),
    }
}

/// The files of a downward API volume (or projection).
fn downward_files(
    pod: &Pod,
    items: Option<&Vec<k8s_openapi::api::core::v1::DownwardAPIVolumeFile>>,
    mode: u32,
) -> Result<Vec<(String, Vec<u8>, u32)>, ConfigError> {
    let mut files = Vec::new();
    for item in items.into_iter().flatten() {
        if let Some(field) = &item.field_ref {
            let value = field_value(pod, &field.field_path)?;
            files.push((
                item.path.clone(),
                value.into_bytes(),
                item.mode.map_or(mode, |m| m as u32),
            ));
        }
    }
    Ok(files)
}

/// A file to write: relative path, contents, mode.
type File = (String, Vec<u8>, u32);

/// The files of a projected volume, and whether one is a service-account token.
fn projected_files(
    pod: &Pod,
    projected: &ProjectedVolumeSource,
    namespace: &str,
    sources: &dyn Sources,
) -> Result<(Vec<File>, bool), ConfigError> {
    let mode = projected.default_mode.map_or(0o644, |m| m as u32);
    let mut files = Vec::new();
    let mut has_token = false;
    for source in projected.sources.iter().flatten() {
        if let Some(cm) = &source.config_map {
            files.extend(object_files(
                "ConfigMap",
                sources.config_map(&cm.name),
                namespace,
                &cm.name,
                cm.items.as_ref(),
                cm.optional.unwrap_or(false),
                mode,
            )?);
        }
        if let Some(secret) = &source.secret {
            files.extend(object_files(
                "Secret",
                sources.secret(&secret.name),
                namespace,
                &secret.name,
                secret.items.as_ref(),
                secret.optional.unwrap_or(false),
                mode,
            )?);
        }
        if let Some(downward) = &source.downward_api {
            files.extend(downward_files(pod, downward.items.as_ref(), mode)?);
        }
        if let Some(token) = &source.service_account_token {
            has_token = true;
            files.push(token_file(token, sources, mode)?);
        }
    }
    Ok((files, has_token))
}

/// The file of one `serviceAccountToken` projection (kubelet writes it with the projection's
/// mode, 0644 by default).
fn token_file(
    token: &ServiceAccountTokenProjection,
    sources: &dyn Sources,
    mode: u32,
) -> Result<(String, Vec<u8>, u32), ConfigError> {
    let (audience, seconds) = token_request_of(token);
    let value = sources
        .service_account_token(&audience, seconds)
        .ok_or(ConfigError::TokenMissing { audience })?;
    Ok((token.path.clone(), value.into_bytes(), mode))
}

/// What a projection asks the TokenRequest API for: its audience (empty: the API's own) and
/// `expirationSeconds` (default 3600).
fn token_request_of(token: &ServiceAccountTokenProjection) -> (String, i64) {
    (
        token.audience.clone().unwrap_or_default(),
        token.expiration_seconds.unwrap_or(3600),
    )
}

/// Every distinct (audience, expirationSeconds) the pod's projected volumes ask tokens for.
pub fn token_requests(pod: &Pod) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
        .map(token_request_of)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Rewrites the token files of the pod's projected volumes from `sources` (fresh tokens), each
/// atomically (a temporary file renamed over it), so a container never reads half a token.
/// Volumes not set up yet are skipped: [`prepare`] writes them.
pub fn write_tokens(pod: &Pod, pod_dir: &Path, sources: &dyn Sources) -> Result<(), VolumeError> {
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(projected) = &v.projected else {
            continue;
        };
        let dir = pod_dir.join("volumes").join(&v.name);
        if !dir.is_dir() {
            continue;
        }
        let mode = projected.default_mode.map_or(0o644, |m| m as u32);
        for token in projected
            .sources
            .iter()
            .flatten()
            .filter_map(|s| s.service_account_token.as_ref())
        {
            let (path, data, mode) =
                token_file(token, sources, mode).map_err(|source| VolumeError::Config {
                    volume: v.name.clone(),
                    source,
                })?;
            if !safe_relative(&path) {
                continue;
            }
            let target = dir.join(&path);
            let tmp = dir.join(format!(".{path}.tmp").replace('/', "_"));
            std::fs::write(&tmp, &data).map_err(io_err(&v.name))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777))
                .map_err(io_err(&v.name))?;
            std::fs::rename(&tmp, &target).map_err(io_err(&v.name))?;
        }
    }
    Ok(())
}

/// Sets up every volume of the pod under `pod_dir/volumes`; returns each volume's host path.
pub fn prepare(
    pod: &Pod,
    pod_dir: &Path,
    sources: &dyn Sources,
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    let volumes: &[Volume] = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or(&[]);
    for v in volumes {
        let name = v.name.as_str();
        let config = |source| VolumeError::Config {
            volume: name.to_string(),
            source,
        };
        let dir = pod_dir.join("volumes").join(name);
        if let Some(host) = &v.host_path {
            let path = PathBuf::from(&host.path);
            match host.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(io_err(name))?,
                "FileOrCreate" if !path.exists() => {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(io_err(name))?;
                    }
                    std::fs::write(&path, b"").map_err(io_err(name))?;
                }
                "Directory" if !path.is_dir() => {
                    return Err(VolumeError::Invalid {
                        volume: name.into(),
                        message: format!(
                            "hostPath type check failed: {} is not a directory",
                            host.path
                        ),
                    })
                }
                "File" if !path.is_file() => {
                    return Err(VolumeError::Invalid {
                        volume: name.into(),
                        message: format!("hostPath type check failed: {} is not a file", host.path),
                    })
                }
                _ => {}
            }
            out.insert(name.to_string(), path);
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(io_err(name))?;
        if let Some(empty) = &v.empty_dir {
            if empty.medium.as_deref() == Some("Memory") {
                let size = empty
                    .size_limit
                    .as_ref()
                    .and_then(|q| super::quantity::bytes(&q.0));
                mount_tmpfs(&dir, size).map_err(io_err(name))?;
            }
        } else if let Some(cm) = &v.config_map {
            let mode = cm.default_mode.map_or(0o644, |m| m as u32);
            let files = object_files(
                "ConfigMap",
                sources.config_map(&cm.name),
                &namespace,
                &cm.name,
                cm.items.as_ref(),
                cm.optional.unwrap_or(false),
                mode,
            )
            .map_err(config)?;
            write_files(&dir, &files, name)?;
        } else if let Some(secret) = &v.secret {
            let secret_name = secret.secret_name.clone().unwrap_or_default();
            let mode = secret.default_mode.map_or(0o644, |m| m as u32);
            mount_tmpfs(&dir, None).map_err(io_err(name))?;
            let files = object_files(
                "Secret",
                sources.secret(&secret_name),
                &namespace,
                &secret_name,
                secret.items.as_ref(),
                secret.optional.unwrap_or(false),
                mode,
            )
            .map_err(config)?;
            write_files(&dir, &files, name)?;
        } else if let Some(downward) = &v.downward_api {
            let mode = downward.default_mode.map_or(0o644, |m| m as u32);
            let files = downward_files(pod, downward.items.as_ref(), mode).map_err(config)?;
            write_files(&dir, &files, name)?;
        } else if let Some(projected) = &v.projected {
            let (files, has_token) =
                projected_files(pod, projected, &namespace, sources).map_err(config)?;
            // Like secrets, tokens never touch the disk.
            if has_token {
                mount_tmpfs(&dir, None).map_err(io_err(name))?;
            }
            write_files(&dir, &files, name)?;
        } else {
            return Err(VolumeError::Invalid {
                volume: name.into(),
                message: "this volume type is not supported by skiff-node (emptyDir, hostPath, configMap, secret, downwardAPI and projected are)".into(),
            });
        }
        out.insert(name.to_string(), dir);
    }
    Ok(out)
}

/// The container's bind mounts for its `volumeMounts` (with `subPath`).
pub fn container_mounts(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<BindMount>, VolumeError> {
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some(source) = volumes.get(&m.name) else {
            return Err(VolumeError::Unknown {
                container: container.name.clone(),
                volume: m.name.clone(),
            });
        };
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if safe_relative(sub) => {
                let p = source.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(io_err(&m.name))?;
                }
                p
            }
            Some(sub) => {
                return Err(VolumeError::Invalid {
                    volume: m.name.clone(),
                    message: format!("subPath {sub:?} must be relative and must not contain '..'"),
                })
            }
            None => source.clone(),
        };
        mounts.push(BindMount {
            source,
            destination: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    Ok(mounts)
}

/// Writes the pod's `/etc/hosts` and `/etc/resolv.conf` into its directory and returns their
/// mounts (kubelet's managed hosts file: localhost, then the pod's IP and hostname).
pub fn etc_files(pod: &Pod, pod_dir: &Path, pod_ip: Option<&str>) -> io::Result<Vec<BindMount>> {
    std::fs::create_dir_all(pod_dir)?;
    let hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file (skiff-node).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    if let Some(ip) = pod_ip {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    for alias in pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.as_ref())
        .into_iter()
        .flatten()
    {
        let names = alias.hostnames.clone().unwrap_or_default().join("\t");
        hosts.push_str(&format!("{}\t{names}\n", alias.ip));
    }
    let hosts_path = pod_dir.join("etc-hosts");
    std::fs::write(&hosts_path, hosts)?;
    let resolv_path = pod_dir.join("resolv.conf");
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(&resolv_path, host_resolv)?;
    let hostname_path = pod_dir.join("hostname");
    std::fs::write(&hostname_path, format!("{hostname}\n"))?;
    Ok(vec![
        BindMount {
            source: hosts_path,
            destination: "/etc/hosts".into(),
            read_only: false,
        },
        BindMount {
            source: resolv_path,
            destination: "/etc/resolv.conf".into(),
            read_only: false,
        },
        BindMount {
            source: hostname_path,
            destination: "/etc/hostname".into(),
            read_only: false,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, EmptyDirVolumeSource, PodSpec, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    struct Fake;
    impl Sources for Fake {
        fn config_map(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            (name == "cm").then(|| BTreeMap::from([("app.conf".to_string(), b"x=1".to_vec())]))
        }
        fn secret(&self, _: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            None
        }
        fn service_account_token(&self, audience: &str, seconds: i64) -> Option<String> {
            (audience.is_empty() && seconds == 3607).then(|| "header.claims.signature".into())
        }
    }

    fn pod(volumes: Vec<Volume>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                volumes: Some(volumes),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn config_maps_and_empty_dirs_become_directories() {
        let dir = tempfile::tempdir().unwrap();
        let p = pod(vec![
            Volume {
                name: "conf".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "cm".into(),
                    items: Some(vec![KeyToPath {
                        key: "app.conf".into(),
                        path: "sub/app.conf".into(),
                        mode: Some(0o600),
                    }]),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ]);
        let volumes = prepare(&p, dir.path(), &Fake).unwrap();
        let file = volumes["conf"].join("sub/app.conf");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x=1");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(volumes["scratch"].is_dir());
        let container = Container {
            name: "c".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: "conf".into(),
                mount_path: "/etc/app".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        };
        let mounts = container_mounts(&container, &volumes).unwrap();
        assert_eq!(mounts[0].destination, "/etc/app");
        assert!(mounts[0].read_only);
    }

    #[test]
    fn bad_references_and_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = pod(vec![Volume {
            name: "conf".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "nope".into(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }]);
        let err = prepare(&missing, dir.path(), &Fake).unwrap_err();
        assert_eq!(err.to_string(), "volume conf: configmap \"nope\" not found");
        let escape = pod(vec![Volume {
            name: "conf".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "cm".into(),
                items: Some(vec![KeyToPath {
                    key: "app.conf".into(),
                    path: "../../etc/passwd".into(),
                    mode: None,
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }]);
        assert!(prepare(&escape, dir.path(), &Fake)
            .unwrap_err()
            .to_string()
            .contains("must not contain '..'"));
        let container = Container {
            name: "c".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: "ghost".into(),
                mount_path: "/x".into(),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        };
        assert!(container_mounts(&container, &BTreeMap::new()).is_err());
    }

    /// The admission's `kube-api-access-*` volume, as the master writes it.
    fn api_access() -> ProjectedVolumeSource {
        serde_json::from_value(serde_json::json!({
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "cm", "items": [{"key": "app.conf", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        }))
        .unwrap()
    }

    #[test]
    fn projected_service_account_tokens() {
        let p = pod(vec![Volume {
            name: "kube-api-access-abcde".into(),
            projected: Some(api_access()),
            ..Volume::default()
        }]);
        assert_eq!(token_requests(&p), [(String::new(), 3607)]);
        let (files, has_token) = projected_files(&p, &api_access(), "default", &Fake).unwrap();
        assert!(has_token);
        assert_eq!(
            files,
            [
                (
                    "token".to_string(),
                    b"header.claims.signature".to_vec(),
                    0o644
                ),
                ("ca.crt".to_string(), b"x=1".to_vec(), 0o644),
                ("namespace".to_string(), b"default".to_vec(), 0o644),
            ]
        );
        // A projection whose token was not fetched is an error naming the audience.
        let mut vault = api_access();
        vault.sources.as_mut().unwrap()[0]
            .service_account_token
            .as_mut()
            .unwrap()
            .audience = Some("vault".into());
        assert_eq!(
            projected_files(&p, &vault, "default", &Fake)
                .unwrap_err()
                .to_string(),
            "failed to fetch token: no token for audience \"vault\" was requested"
        );
        // Refreshing rewrites only the token, in volumes that exist.
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volumes/kube-api-access-abcde");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join("token"), "old").unwrap();
        write_tokens(&p, dir.path(), &Fake).unwrap();
        assert_eq!(
            std::fs::read_to_string(volume.join("token")).unwrap(),
            "header.claims.signature"
        );
        assert_eq!(
            std::fs::metadata(volume.join("token"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
        assert_eq!(std::fs::read_dir(&volume).unwrap().count(), 1);
        let other = tempfile::tempdir().unwrap();
        write_tokens(&p, other.path(), &Fake).unwrap();
        assert!(!other.path().join("volumes").exists());
    }
}
