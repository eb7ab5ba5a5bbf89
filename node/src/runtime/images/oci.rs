//! The parts of the OCI image format (and Docker's v2 schema 2, its twin) the agent reads:
//! index, manifest, config; platform choice; chain IDs.

use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// OCI image index.
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list (an index).
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker v2 schema 2 manifest.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The manifest media types a pull accepts.
pub const MANIFEST_TYPES: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
];

/// Whether `media_type` is an index (a list of per-platform manifests).
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

/// A content descriptor.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its size in bytes.
    pub size: i64,
    /// For index entries: which platform the manifest is for.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations (an index entry's `org.opencontainers.image.ref.name`).
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

impl Descriptor {
    /// The containerd form of this descriptor.
    pub fn to_containerd(&self) -> containerd_client::types::Descriptor {
        containerd_client::types::Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: HashMap::new(),
        }
    }
}

/// An index entry's platform.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// `amd64`, `arm64`, …
    #[serde(default)]
    pub architecture: String,
    /// `linux`, …
    #[serde(default)]
    pub os: String,
    /// `v8`, … (ignored when choosing)
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image index or manifest list.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Its own media type, when it states one.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The manifests it lists.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Its own media type, when it states one.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// The media type of a manifest or index whose descriptor did not say: its own `mediaType`,
/// else an index when it lists manifests.
pub fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(media_type) = value.get("mediaType").and_then(|m| m.as_str()) {
        return Some(media_type.to_string());
    }
    if value.get("manifests").is_some() {
        Some(MEDIA_OCI_INDEX.to_string())
    } else if value.get("config").is_some() {
        Some(MEDIA_OCI_MANIFEST.to_string())
    } else {
        None
    }
}

/// The image config (the parts that matter for running it).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ImageConfigFile {
    /// The process defaults.
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

/// The `config` object of an image config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `Env` (`KEY=value`).
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `User`.
    #[serde(default)]
    pub user: Option<String>,
}

/// The `rootfs` object of an image config.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RootFs {
    /// The uncompressed layer digests, base first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The chain IDs of `diff_ids`: the first is its diff ID, each next one is
/// `sha256(previous + " " + diff_id)`. Snapshots are named by them.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => format!(
                "sha256:{:x}",
                Sha256::digest(format!("{parent} {diff_id}").as_bytes())
            ),
        };
        chain.push(next);
    }
    chain
}

/// This machine's architecture in OCI's spelling.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The entry of `index` for linux on this machine's architecture (an entry without a platform
/// when there is only one).
pub fn choose_platform(index: &Index) -> Option<&Descriptor> {
    let arch = host_arch();
    index
        .manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or_else(|| match index.manifests.as_slice() {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        })
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], sha256(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn the_platform_of_this_machine_is_chosen() {
        let index: Index = serde_json::from_value(serde_json::json!({
            "manifests": [
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": "sha256:1", "size": 1,
                 "platform": {"architecture": "s390x", "os": "linux"}},
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": "sha256:2", "size": 1,
                 "platform": {"architecture": host_arch(), "os": "linux"}},
            ]
        }))
        .unwrap();
        assert_eq!(choose_platform(&index).unwrap().digest, "sha256:2");
        let other: Index = serde_json::from_value(serde_json::json!({
            "manifests": [{"digest": "sha256:1", "size": 1,
                           "platform": {"architecture": "s390x", "os": "linux"}}]
        }))
        .unwrap();
        assert!(choose_platform(&other).is_none());
    }

    #[test]
    fn media_types_are_sniffed_when_unstated() {
        assert_eq!(
            sniff_media_type(br#"{"manifests": []}"#).as_deref(),
            Some(MEDIA_OCI_INDEX)
        );
        assert_eq!(
            sniff_media_type(br#"{"config": {}}"#).as_deref(),
            Some(MEDIA_OCI_MANIFEST)
        );
        assert_eq!(
            sniff_media_type(br#"{"mediaType": "x"}"#).as_deref(),
            Some("x")
        );
        assert_eq!(sniff_media_type(b"nope"), None);
    }
}
