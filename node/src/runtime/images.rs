//! Images: make sure the image a container needs is in containerd and unpacked, and say how
//! to run it.
//!
//! - [`ensure_image`] is what the pod worker calls: it normalises the reference like Kubernetes
//!   (`busybox` → `docker.io/library/busybox:latest`), honours `imagePullPolicy`, pulls from the
//!   registry when it must ([`registry`]: client-side, since containerd 1.6 has no Transfer
//!   service), unpacks the layers into snapshots, and returns an [`ImageInfo`] with the chain ID
//!   to put a container's rootfs on and the config's process defaults.
//! - [`import_archive`] and [`import_dir`] load OCI image-layout tars (`skiff image import`, the
//!   preload directory) the same way, with no registry.
//! - [`build_busybox_archive`] makes the test image from Debian's `busybox-static`.
//!
//! How an image is stored, as containerd's own unpacker does it: blobs in the content store;
//! garbage-collection labels from index to manifest (`containerd.io/gc.ref.content.m.N`), from
//! manifest to config and layers (`…content.config`, `…content.l.N`) and from config to the top
//! snapshot (`containerd.io/gc.ref.snapshot.overlayfs`); each layer labelled with its
//! uncompressed digest; one committed snapshot per layer named by its chain ID; and an image
//! record whose target is the index or manifest. All of it is written under a lease so nothing
//! is collected halfway. Pulls on a node are serialised, as kubelet's are by default.
//!
//! A pod worker's use:
//!
//! ```no_run
//! # async fn start(
//! #     containerd: &skiff_node::runtime::Containerd,
//! #     container: &k8s_openapi::api::core::v1::Container,
//! #     pull_secrets: &[k8s_openapi::api::core::v1::Secret],
//! # ) -> Result<(), skiff_node::runtime::images::ImageError> {
//! use skiff_node::runtime::images::{ensure_image, PullPolicy, RegistryAuth};
//! let image = container.image.as_deref().unwrap_or_default();
//! let policy = PullPolicy::from_spec(container.image_pull_policy.as_deref(), image);
//! let auths = RegistryAuth::from_secrets(pull_secrets, image);
//! // On error, the container waits with reason `err.reason()` (ErrImagePull, …).
//! let info = ensure_image(containerd, image, policy, &auths).await?;
//! // The rootfs: Snapshots.Prepare(key, parent = info.chain_id) on `store::SNAPSHOTTER`,
//! // under a lease until the container record references the snapshot.
//! # let _ = info;
//! # Ok(())
//! # }
//! ```

pub mod busybox;
pub mod cli;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use busybox::{
    build_archive, build_busybox_archive, build_busybox_archive_from, BuiltImage, ImageSpec,
    TEST_IMAGE,
};
pub use reference::Reference;
pub use registry::RegistryAuth;

use oci::{Descriptor, ImageConfigFile, Index, Manifest};
use store::Lease;

use crate::runtime::Containerd;

/// Why an image could not be had. [`reason`](ImageError::reason) gives the pod status reason.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The policy is `Never` and the image is not on the node (kubelet's wording, verbatim).
    #[error("Container image \"{image}\" is not present with pull policy of Never")]
    NeverPull {
        /// The image as the pod spec named it.
        image: String,
    },
    /// The reference cannot be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidName {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry has no such repository, tag or digest.
    #[error("image {image} not found in registry {registry}: {detail}")]
    NotFound {
        /// The normalised reference.
        image: String,
        /// The registry asked.
        registry: String,
        /// The registry's answer.
        detail: String,
    },
    /// The registry wants credentials it did not get, or refused the ones it got.
    #[error(
        "registry {registry} refused to serve {image} ({detail}); give the pod an \
         imagePullSecret (kubernetes.io/dockerconfigjson) with credentials for {registry}"
    )]
    Unauthorized {
        /// The normalised reference.
        image: String,
        /// The registry asked.
        registry: String,
        /// The registry's answer.
        detail: String,
    },
    /// Any other registry failure (unreachable, bad answer, …).
    #[error("failed to pull {image} from {registry}: {source}")]
    Pull {
        /// The normalised reference.
        image: String,
        /// The registry asked.
        registry: String,
        /// What the registry client reported.
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    /// Reading a blob from the registry or the archive broke off.
    #[error("failed to read blob {digest} from its source: {source}")]
    Transfer {
        /// The blob.
        digest: String,
        /// The transport's error.
        #[source]
        source: std::io::Error,
    },
    /// containerd refused or failed an operation.
    #[error("containerd failed to {action}: {}", source.message())]
    Containerd {
        /// What was asked of it ("write content sha256:…").
        action: String,
        /// Its answer.
        #[source]
        source: tonic::Status,
    },
    /// The image's manifest or config cannot be used.
    #[error("image {image} is unusable: {reason}")]
    Invalid {
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
    /// An archive cannot be imported.
    #[error("cannot import image archive {}: {reason}", path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl ImageError {
    /// The reason a pod's container status shows while waiting (`ErrImageNeverPull`,
    /// `InvalidImageName`, else `ErrImagePull`; the caller turns repeated pull failures into
    /// `ImagePullBackOff`).
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::NeverPull { .. } => "ErrImageNeverPull",
            ImageError::InvalidName { .. } => "InvalidImageName",
            _ => "ErrImagePull",
        }
    }
}

/// `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Ask the registry every time (the image may have moved).
    Always,
    /// Use the node's copy when there is one.
    IfNotPresent,
    /// Only the node's copy; never pull.
    Never,
}

impl PullPolicy {
    /// The policy for a container spec's `imagePullPolicy` and `image`, with Kubernetes'
    /// default when unset: `Always` for `:latest` or no tag, else `IfNotPresent`.
    pub fn from_spec(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => {
                let reference = Reference::parse(image).ok();
                let pinned = reference.as_ref().is_some_and(|r| r.digest.is_some());
                let latest = reference
                    .as_ref()
                    .is_none_or(|r| r.tag.as_deref() == Some("latest"));
                if latest && !pinned {
                    PullPolicy::Always
                } else {
                    PullPolicy::IfNotPresent
                }
            }
        }
    }
}

/// The process defaults in an image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir` (empty: `/`).
    pub working_dir: String,
    /// `User` (empty: root).
    pub user: String,
}

/// An image ready to run: stored, unpacked, and described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The containerd image name (the normalised reference).
    pub name: String,
    /// The digest of the image's target (its index or manifest): the image's repo digest.
    pub digest: String,
    /// The digest of its config (the image ID).
    pub config_digest: String,
    /// The chain ID of its top layer: the parent snapshot of a container's rootfs.
    pub chain_id: String,
    /// How to run it.
    pub config: ImageConfig,
}

/// An image on the node, as the node's status lists it (`status.images`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    /// The containerd image name (the normalised reference).
    pub name: String,
    /// The digest of its target (index or manifest).
    pub digest: String,
    /// The compressed size of this platform's config and layers, in bytes.
    pub size_bytes: i64,
}

/// Every image in containerd's namespace with its size, by name. An image whose manifest is
/// missing from the content store is listed with size 0.
pub async fn list_images(containerd: &Containerd) -> Result<Vec<ImageSummary>, ImageError> {
    let images = containerd
        .client()
        .images()
        .list(containerd.request(containerd_client::services::v1::ListImagesRequest::default()))
        .await
        .map_err(|source| ImageError::Containerd {
            action: "list images".into(),
            source,
        })?
        .into_inner()
        .images;
    let mut summaries = Vec::with_capacity(images.len());
    for image in images {
        let Some(target) = image.target else {
            continue;
        };
        let size_bytes = image_size(containerd, &target).await.unwrap_or(0);
        summaries.push(ImageSummary {
            name: image.name,
            digest: target.digest,
            size_bytes,
        });
    }
    summaries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(summaries)
}

/// The size of the config and layers of `target`'s manifest for this platform.
async fn image_size(
    containerd: &Containerd,
    target: &containerd_client::types::Descriptor,
) -> Option<i64> {
    let mut bytes = store::read_blob(containerd, &target.digest).await.ok()?;
    let media_type = if target.media_type.is_empty() {
        oci::sniff_media_type(&bytes)?
    } else {
        target.media_type.clone()
    };
    if oci::is_index(&media_type) {
        let index: Index = serde_json::from_slice(&bytes).ok()?;
        let chosen = oci::choose_platform(&index)?;
        bytes = store::read_blob(containerd, &chosen.digest).await.ok()?;
    }
    let manifest: Manifest = serde_json::from_slice(&bytes).ok()?;
    Some(manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<i64>())
}

/// Pulls and imports are one at a time per process, as kubelet's pulls are by default: this also
/// keeps two of them from writing the same blob at once (containerd would refuse the second).
static PULL_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Makes sure `reference` is in containerd and unpacked, pulling it if `policy` says so, with
/// `auths` (from the pod's `imagePullSecrets`) for the registry.
pub async fn ensure_image(
    containerd: &Containerd,
    reference: &str,
    policy: PullPolicy,
    auths: &[RegistryAuth],
) -> Result<ImageInfo, ImageError> {
    let parsed = Reference::parse(reference).map_err(|reason| ImageError::InvalidName {
        reference: reference.to_string(),
        reason,
    })?;
    let name = parsed.to_string();
    let present = store::get_image(containerd, &name)
        .await?
        .and_then(|i| i.target);
    let target = match (policy, present) {
        (PullPolicy::Never, None) => {
            return Err(ImageError::NeverPull {
                image: reference.to_string(),
            })
        }
        (PullPolicy::Never | PullPolicy::IfNotPresent, Some(target)) => target,
        (PullPolicy::IfNotPresent, None) | (PullPolicy::Always, _) => {
            return pull(containerd, &parsed, policy, auths).await;
        }
    };
    // An image resolved before is ready as long as its target is the same: completing it again
    // costs a dozen containerd calls, half of them metadata writes.
    if let Some(info) = containerd.resolved_image(&name, &target.digest) {
        return Ok(info);
    }
    // Resolving what is already here needs no lock: labels and snapshots converge when two
    // workers do it at once.
    complete_present(containerd, &name, target).await
}

/// [`complete`] for an image containerd has, under a lease of its own.
async fn complete_present(
    containerd: &Containerd,
    name: &str,
    target: containerd_client::types::Descriptor,
) -> Result<ImageInfo, ImageError> {
    let target = Descriptor {
        media_type: target.media_type,
        digest: target.digest,
        size: target.size,
        ..Default::default()
    };
    let lease = Lease::create(containerd).await?;
    let result = complete(containerd, &lease, name, &target).await;
    lease.end(containerd).await?;
    if let Ok(info) = &result {
        containerd.remember_image(name, Some(info));
    }
    result
}

/// Pulls `reference` under the node's pull lock.
async fn pull(
    containerd: &Containerd,
    reference: &Reference,
    policy: PullPolicy,
    auths: &[RegistryAuth],
) -> Result<ImageInfo, ImageError> {
    let name = reference.to_string();
    let _pulls = PULL_LOCK.lock().await;
    if policy == PullPolicy::IfNotPresent {
        // Another worker may have pulled it while this one waited for the lock.
        if let Some(target) = store::get_image(containerd, &name)
            .await?
            .and_then(|i| i.target)
        {
            return complete_present(containerd, &name, target).await;
        }
    }
    tracing::info!(image = %name, ?policy, "pulling image");
    let lease = Lease::create(containerd).await?;
    // Like kubelet: each matching credential in turn while the registry refuses; anonymous
    // when none matches.
    let mut matching = auths.iter().filter(|a| a.matches(&reference.registry));
    let mut pulled = registry::pull(containerd, &lease, reference, matching.next()).await;
    for auth in matching {
        if !matches!(pulled, Err(ImageError::Unauthorized { .. })) {
            break;
        }
        pulled = registry::pull(containerd, &lease, reference, Some(auth)).await;
    }
    let result = match pulled {
        Ok(target) => complete(containerd, &lease, &name, &target).await,
        Err(e) => Err(e),
    };
    lease.end(containerd).await?;
    if let Ok(info) = &result {
        containerd.remember_image(&name, Some(info));
    }
    result
}

/// Imports every image in the OCI image-layout tar at `path`, named by the
/// `io.containerd.image.name` or `org.opencontainers.image.ref.name` annotation of its
/// `index.json` entries; returns their names. Importing the same archive again changes nothing.
pub async fn import_archive(
    containerd: &Containerd,
    path: &Path,
) -> Result<Vec<String>, ImageError> {
    let archive_error = |reason: String| ImageError::Archive {
        path: path.to_path_buf(),
        reason,
    };
    let _pulls = PULL_LOCK.lock().await;
    let lease = Lease::create(containerd).await?;
    let result = import_under(containerd, &lease, path, &archive_error).await;
    lease.end(containerd).await?;
    result
}

async fn import_under(
    containerd: &Containerd,
    lease: &Lease,
    path: &Path,
    archive_error: &(dyn Fn(String) -> ImageError + Sync),
) -> Result<Vec<String>, ImageError> {
    // The tar is read on a blocking thread and its blobs stream into the content store in
    // pieces of at most a MiB, so a large archive never sits in memory; index.json is kept
    // for last.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Piece>(4);
    let file = path.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || read_archive(&file, &sender));
    let mut pieces = Pieces {
        receiver,
        in_blob: false,
    };
    let mut index_json = None;
    while let Some(piece) = pieces.receiver.recv().await {
        match piece {
            Piece::Index(data) => index_json = Some(data),
            Piece::Failed(reason) => return Err(archive_error(reason)),
            Piece::Blob { hex, size } => {
                let descriptor = Descriptor {
                    digest: format!("sha256:{hex}"),
                    size: i64::try_from(size).unwrap_or(i64::MAX),
                    ..Default::default()
                };
                pieces.in_blob = true;
                // containerd checks the size and the digest before it commits.
                store::write_stream(containerd, lease, &descriptor, pieces.blob()).await?;
                // What was not read (the store had the blob already) is skipped.
                while pieces.in_blob {
                    match pieces.receiver.recv().await {
                        Some(Piece::End) | None => pieces.in_blob = false,
                        Some(Piece::Failed(reason)) => return Err(archive_error(reason)),
                        Some(_) => {}
                    }
                }
            }
            Piece::Data(_) | Piece::End => {}
        }
    }
    let _ = reader.await;
    let index_json = index_json.ok_or_else(|| {
        archive_error("it has no index.json: only OCI image layouts can be imported".into())
    })?;
    let index: Index = serde_json::from_slice(&index_json)
        .map_err(|e| archive_error(format!("unreadable index.json: {e}")))?;
    let mut names = Vec::new();
    for entry in &index.manifests {
        let annotated = entry
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| entry.annotations.get("org.opencontainers.image.ref.name"));
        let Some(annotated) = annotated else {
            continue;
        };
        let reference = Reference::parse(annotated).map_err(|reason| {
            archive_error(format!(
                "index.json names an image {annotated:?} that is not a full reference: {reason}"
            ))
        })?;
        let name = reference.to_string();
        let mut target = entry.clone();
        target.annotations = HashMap::new();
        target.platform = None;
        complete(containerd, lease, &name, &target).await?;
        names.push(name);
    }
    if names.is_empty() {
        return Err(archive_error(
            "no entry of its index.json names an image (annotation \
             org.opencontainers.image.ref.name)"
                .into(),
        ));
    }
    Ok(names)
}

/// What the archive reader sends: index.json whole; each blob as `Blob`, its `Data`, `End`.
enum Piece {
    Index(Vec<u8>),
    Blob { hex: String, size: u64 },
    Data(Vec<u8>),
    End,
    Failed(String),
}

/// The receiving end of the archive reader, and whether it is inside a blob.
struct Pieces {
    receiver: tokio::sync::mpsc::Receiver<Piece>,
    in_blob: bool,
}

impl Pieces {
    /// The current blob's data, up to its `End`.
    fn blob(
        &mut self,
    ) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + '_ {
        futures::stream::unfold(self, |pieces| async move {
            if !pieces.in_blob {
                return None;
            }
            match pieces.receiver.recv().await {
                Some(Piece::Data(data)) => Some((Ok(bytes::Bytes::from(data)), pieces)),
                Some(Piece::Failed(reason)) => {
                    pieces.in_blob = false;
                    Some((Err(std::io::Error::other(reason)), pieces))
                }
                _ => {
                    pieces.in_blob = false;
                    None
                }
            }
        })
    }
}

/// How much of a blob one [`Piece::Data`] carries.
const ARCHIVE_PIECE: usize = 1 << 20;

/// Sends `index.json` and each `blobs/sha256/<hex>` entry of the tar at `path`, in pieces.
fn read_archive(path: &Path, sender: &tokio::sync::mpsc::Sender<Piece>) {
    if let Err(reason) = send_archive(path, sender) {
        let _ = sender.blocking_send(Piece::Failed(reason));
    }
}

fn send_archive(path: &Path, sender: &tokio::sync::mpsc::Sender<Piece>) -> Result<(), String> {
    // A closed channel means the importer gave up (it reports why); stop quietly.
    let send = |piece| sender.blocking_send(piece).map_err(|_| String::new());
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    let unreadable = |e: std::io::Error| format!("not a readable tar archive: {e}");
    for entry in entries {
        let mut entry = entry.map_err(unreadable)?;
        let name = entry
            .path()
            .map_err(unreadable)?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if name == "index.json" {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).map_err(unreadable)?;
            send(Piece::Index(data))?;
            continue;
        }
        let Some(hex) = name.strip_prefix("blobs/sha256/") else {
            continue;
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!("{name} is not named by a sha256 digest"));
        }
        send(Piece::Blob {
            hex: hex.to_string(),
            size: entry.size(),
        })?;
        loop {
            let mut data = Vec::with_capacity(ARCHIVE_PIECE);
            let read = std::io::Read::read_to_end(
                &mut std::io::Read::take(&mut entry, ARCHIVE_PIECE as u64),
                &mut data,
            )
            .map_err(unreadable)?;
            if read == 0 {
                break;
            }
            send(Piece::Data(data))?;
        }
        send(Piece::End)?;
    }
    Ok(())
}

/// Imports every `*.tar` in `dir` (the node's preload directory), in name order; returns the
/// image names. A missing directory imports nothing.
pub async fn import_dir(containerd: &Containerd, dir: &Path) -> Result<Vec<String>, ImageError> {
    let mut archives: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tar"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ImageError::Archive {
                path: dir.to_path_buf(),
                reason: format!("cannot list the directory: {e}"),
            })
        }
    };
    archives.sort();
    let mut names = Vec::new();
    for archive in archives {
        names.extend(import_archive(containerd, &archive).await?);
    }
    Ok(names)
}

/// With the blobs of `target` in the content store: labels them for the garbage collector,
/// unpacks the layers, points the image record `name` at `target`, and describes the image.
async fn complete(
    containerd: &Containerd,
    lease: &Lease,
    name: &str,
    target: &Descriptor,
) -> Result<ImageInfo, ImageError> {
    let invalid = |reason: String| ImageError::Invalid {
        image: name.to_string(),
        reason,
    };
    let root = store::read_blob(containerd, &target.digest).await?;
    let media_type = if target.media_type.is_empty() {
        oci::sniff_media_type(&root).unwrap_or_default()
    } else {
        target.media_type.clone()
    };
    let target = Descriptor {
        media_type: media_type.clone(),
        ..target.clone()
    };
    let (manifest_digest, manifest_bytes) = if oci::is_index(&media_type) {
        let index: Index = serde_json::from_slice(&root)
            .map_err(|e| invalid(format!("unreadable index {}: {e}", target.digest)))?;
        let chosen = oci::choose_platform(&index)
            .ok_or_else(|| invalid(format!("it has no manifest for linux/{}", oci::host_arch())))?;
        store::set_labels(
            containerd,
            &target.digest,
            HashMap::from([(
                "containerd.io/gc.ref.content.m.0".to_string(),
                chosen.digest.clone(),
            )]),
        )
        .await?;
        let bytes = store::read_blob(containerd, &chosen.digest).await?;
        (chosen.digest.clone(), bytes)
    } else {
        (target.digest.clone(), root)
    };
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| invalid(format!("unreadable manifest {manifest_digest}: {e}")))?;
    let config_bytes = store::read_blob(containerd, &manifest.config.digest).await?;
    let config: ImageConfigFile = serde_json::from_slice(&config_bytes)
        .map_err(|e| invalid(format!("unreadable config {}: {e}", manifest.config.digest)))?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() || diff_ids.is_empty() {
        return Err(invalid(format!(
            "its manifest has {} layers but its config {} diff IDs",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }

    let mut manifest_labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        manifest.config.digest.clone(),
    )]);
    for (i, (layer, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest.clone(),
        );
        store::set_labels(
            containerd,
            &layer.digest,
            HashMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())]),
        )
        .await?;
    }
    store::set_labels(containerd, &manifest_digest, manifest_labels).await?;

    let chain_id = store::unpack(name, containerd, lease, &manifest.layers, diff_ids).await?;
    store::set_labels(
        containerd,
        &manifest.config.digest,
        HashMap::from([(
            format!("containerd.io/gc.ref.snapshot.{}", store::SNAPSHOTTER),
            chain_id.clone(),
        )]),
    )
    .await?;
    store::put_image(containerd, lease, name, &target).await?;

    let process = config.config.unwrap_or_default();
    Ok(ImageInfo {
        name: name.to_string(),
        digest: target.digest.clone(),
        config_digest: manifest.config.digest.clone(),
        chain_id,
        config: ImageConfig {
            entrypoint: process.entrypoint.unwrap_or_default(),
            cmd: process.cmd.unwrap_or_default(),
            env: process.env.unwrap_or_default(),
            working_dir: process.working_dir.unwrap_or_default(),
            user: process.user.unwrap_or_default(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_like_kubernetes() {
        let check = |policy: Option<&str>, image: &str, expected: PullPolicy| {
            assert_eq!(
                PullPolicy::from_spec(policy, image),
                expected,
                "{policy:?} {image}"
            );
        };
        check(None, "busybox", PullPolicy::Always);
        check(None, "busybox:latest", PullPolicy::Always);
        check(None, "busybox:1.36", PullPolicy::IfNotPresent);
        check(
            None,
            "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            PullPolicy::IfNotPresent,
        );
        check(Some("Never"), "busybox", PullPolicy::Never);
        check(Some("IfNotPresent"), "busybox", PullPolicy::IfNotPresent);
        check(Some("Always"), "busybox:1", PullPolicy::Always);
    }

    #[test]
    fn errors_carry_kubelet_reasons() {
        let never = ImageError::NeverPull {
            image: "busybox".into(),
        };
        assert_eq!(never.reason(), "ErrImageNeverPull");
        assert_eq!(
            never.to_string(),
            "Container image \"busybox\" is not present with pull policy of Never"
        );
        let invalid = ImageError::InvalidName {
            reference: "A".into(),
            reason: "bad".into(),
        };
        assert_eq!(invalid.reason(), "InvalidImageName");
        let missing = ImageError::NotFound {
            image: "x".into(),
            registry: "r".into(),
            detail: "d".into(),
        };
        assert_eq!(missing.reason(), "ErrImagePull");
    }
}
