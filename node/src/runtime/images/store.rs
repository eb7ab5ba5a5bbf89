//! containerd's side of images: content store writes and reads, garbage-collection labels,
//! image records, and unpacking layers into snapshots (Prepare → Diff Apply → Commit).
//!
//! Everything written here runs under a [`Lease`], so containerd's garbage collector cannot
//! take a blob or snapshot between its write and the label or image record that keeps it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, CreateRequest as CreateLeaseRequest,
    DeleteRequest as DeleteLeaseRequest, GetImageRequest, Image, Info, InfoRequest,
    ReadContentRequest, UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use futures::{Stream, StreamExt as _};
use tonic::Code;

use super::oci::{self, Descriptor};
use super::ImageError;
use crate::runtime::Containerd;

/// The snapshotter images are unpacked into (containerd 1.6's default).
pub const SNAPSHOTTER: &str = "overlayfs";

/// The largest manifest, index or config the agent reads into memory.
const MAX_METADATA_BYTES: usize = 8 << 20;

/// How much blob data one content Write message carries.
const WRITE_CHUNK: usize = 1 << 20;

/// How long a lease outlives an agent that died mid-pull before containerd drops it.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

fn containerd_error(action: impl Into<String>) -> impl FnOnce(tonic::Status) -> ImageError {
    let action = action.into();
    move |source| ImageError::Containerd { action, source }
}

/// A containerd lease: what is created under it survives garbage collection until it ends.
pub struct Lease {
    id: String,
}

impl Lease {
    /// Creates a lease that containerd drops by itself after an hour if never ended.
    pub async fn create(containerd: &Containerd) -> Result<Lease, ImageError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!("skiff-image-{}-{}", std::process::id(), now.as_nanos());
        let labels = HashMap::from([(
            "containerd.io/gc.expire".to_string(),
            rfc3339(now + LEASE_EXPIRY),
        )]);
        containerd
            .client()
            .leases()
            .create(containerd.request(CreateLeaseRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(containerd_error(format!("create lease {id}")))?;
        Ok(Lease { id })
    }

    /// Ends the lease; what it held is now kept only by labels and image records.
    pub async fn end(self, containerd: &Containerd) -> Result<(), ImageError> {
        containerd
            .client()
            .leases()
            .delete(containerd.request(DeleteLeaseRequest {
                id: self.id.clone(),
                sync: false,
            }))
            .await
            .map_err(containerd_error(format!("delete lease {}", self.id)))?;
        Ok(())
    }

    /// A request in `containerd`'s namespace under this lease.
    pub fn request<T>(&self, containerd: &Containerd, message: T) -> tonic::Request<T> {
        let mut request = containerd.request(message);
        if let Ok(value) = self.id.parse() {
            request.metadata_mut().insert("containerd-lease", value);
        }
        request
    }
}

/// The content store's record of `digest`, if it holds that blob.
pub async fn content_info(
    containerd: &Containerd,
    digest: &str,
) -> Result<Option<Info>, ImageError> {
    match containerd
        .client()
        .content()
        .info(containerd.request(InfoRequest {
            digest: digest.to_string(),
        }))
        .await
    {
        Ok(response) => Ok(response.into_inner().info),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(containerd_error(format!("look up content {digest}"))(
            status,
        )),
    }
}

/// Writes `data` as the blob `descriptor` unless the store already holds it.
pub async fn write_bytes(
    containerd: &Containerd,
    lease: &Lease,
    descriptor: &Descriptor,
    data: Vec<u8>,
) -> Result<(), ImageError> {
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(data))]);
    write_stream(containerd, lease, descriptor, stream).await
}

/// Writes the blob `descriptor` from `chunks` unless the store already holds it. containerd
/// checks the size and digest before it commits.
pub async fn write_stream<S>(
    containerd: &Containerd,
    lease: &Lease,
    descriptor: &Descriptor,
    chunks: S,
) -> Result<(), ImageError>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send,
{
    let digest = &descriptor.digest;
    if content_info(containerd, digest).await?.is_some() {
        return Ok(());
    }
    let action_name = format!("write content {digest}");
    let reference = format!("skiff-{digest}");
    let message = |action: WriteAction, offset: i64, data: Vec<u8>| WriteContentRequest {
        action: action as i32,
        r#ref: reference.clone(),
        total: descriptor.size,
        expected: digest.clone(),
        offset,
        data,
        labels: HashMap::new(),
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
    let mut receiver = Some(receiver);
    let mut responses = None;
    let mut chunks = std::pin::pin!(chunks);
    let mut pending: Vec<u8> = Vec::new();
    let mut offset: i64 = 0;
    // One message in flight at a time: send it, then wait for containerd's answer.
    loop {
        let action = match chunks.next().await {
            Some(Ok(bytes)) => {
                pending.extend_from_slice(&bytes);
                if pending.len() < WRITE_CHUNK {
                    continue;
                }
                WriteAction::Write
            }
            Some(Err(source)) => {
                return Err(ImageError::Transfer {
                    digest: digest.clone(),
                    source,
                })
            }
            None => WriteAction::Commit,
        };
        let data = std::mem::take(&mut pending);
        let length = data.len() as i64;
        // The channel has room: containerd answers each message before the next is sent.
        if sender.send(message(action, offset, data)).await.is_err() {
            return Err(ImageError::Containerd {
                action: action_name,
                source: tonic::Status::aborted("containerd closed the write stream"),
            });
        }
        offset += length;
        // containerd sends the stream's headers with its first answer, so the call is made
        // once the first message is queued.
        if let Some(receiver) = receiver.take() {
            let request = lease.request(
                containerd,
                tokio_stream::wrappers::ReceiverStream::new(receiver),
            );
            match containerd.client().content().write(request).await {
                Ok(stream) => responses = Some(stream.into_inner()),
                // Written meanwhile by someone else: the store has it, which is all we want.
                Err(status) if status.code() == Code::AlreadyExists => return Ok(()),
                Err(status) => return Err(containerd_error(action_name)(status)),
            }
        }
        let Some(stream) = responses.as_mut() else {
            continue;
        };
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(ImageError::Containerd {
                    action: action_name,
                    source: tonic::Status::aborted("containerd ended the write stream early"),
                })
            }
            Err(status) if status.code() == Code::AlreadyExists => return Ok(()),
            Err(status) => return Err(containerd_error(action_name)(status)),
        }
        if action == WriteAction::Commit {
            return Ok(());
        }
    }
}

/// Reads the whole blob `digest` (a manifest, index or config: at most 8 MiB).
pub async fn read_blob(containerd: &Containerd, digest: &str) -> Result<Vec<u8>, ImageError> {
    let action = format!("read content {digest}");
    let mut stream = containerd
        .client()
        .content()
        .read(containerd.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        }))
        .await
        .map_err(containerd_error(action.clone()))?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(containerd_error(action.clone()))?
    {
        data.extend_from_slice(&chunk.data);
        if data.len() > MAX_METADATA_BYTES {
            return Err(ImageError::Containerd {
                action,
                source: tonic::Status::out_of_range(format!(
                    "blob is larger than {MAX_METADATA_BYTES} bytes, too large for metadata"
                )),
            });
        }
    }
    Ok(data)
}

/// Sets `labels` on the blob `digest` (leaving its other labels), unless it has them already.
pub async fn set_labels(
    containerd: &Containerd,
    digest: &str,
    labels: HashMap<String, String>,
) -> Result<(), ImageError> {
    let Some(info) = content_info(containerd, digest).await? else {
        return Err(ImageError::Containerd {
            action: format!("label content {digest}"),
            source: tonic::Status::not_found("the blob is not in the content store"),
        });
    };
    if labels.iter().all(|(k, v)| info.labels.get(k) == Some(v)) {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    containerd
        .client()
        .content()
        .update(containerd.request(UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        }))
        .await
        .map_err(containerd_error(format!("label content {digest}")))?;
    Ok(())
}

/// Whether the snapshot `key` exists.
pub async fn snapshot_exists(containerd: &Containerd, key: &str) -> Result<bool, ImageError> {
    match containerd
        .client()
        .snapshots()
        .stat(containerd.request(StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: key.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::NotFound => Ok(false),
        Err(status) => Err(containerd_error(format!("look up snapshot {key}"))(status)),
    }
}

/// Unpacks `layers` (whose uncompressed digests are `diff_ids`) into committed snapshots named
/// by their chain IDs, skipping those already there; returns the top chain ID.
pub async fn unpack(
    image: &str,
    containerd: &Containerd,
    lease: &Lease,
    layers: &[Descriptor],
    diff_ids: &[String],
) -> Result<String, ImageError> {
    let chain = oci::chain_ids(diff_ids);
    for (i, (layer, chain_id)) in layers.iter().zip(&chain).enumerate() {
        if snapshot_exists(containerd, chain_id).await? {
            continue;
        }
        let parent = if i == 0 { "" } else { chain[i - 1].as_str() };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let key = format!("skiff-extract-{nanos}-{chain_id}");
        let result = apply_layer(
            image,
            containerd,
            lease,
            &key,
            parent,
            layer,
            &diff_ids[i],
            chain_id,
        )
        .await;
        if result.is_err() {
            // The active snapshot is useless now, and the lease would keep it.
            remove_snapshot(containerd, lease, &key).await;
        }
        result?;
    }
    chain.last().cloned().ok_or_else(|| ImageError::Invalid {
        image: image.to_string(),
        reason: "the image has no layers".into(),
    })
}

/// Removes the snapshot `key`, best effort (it is cleanup after another failure).
async fn remove_snapshot(containerd: &Containerd, lease: &Lease, key: &str) {
    let _ = containerd
        .client()
        .snapshots()
        .remove(lease.request(
            containerd,
            RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: key.to_string(),
            },
        ))
        .await;
}

#[allow(clippy::too_many_arguments)]
async fn apply_layer(
    image: &str,
    containerd: &Containerd,
    lease: &Lease,
    key: &str,
    parent: &str,
    layer: &Descriptor,
    diff_id: &str,
    chain_id: &str,
) -> Result<(), ImageError> {
    let mounts = containerd
        .client()
        .snapshots()
        .prepare(lease.request(
            containerd,
            PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels: HashMap::new(),
            },
        ))
        .await
        .map_err(containerd_error(format!("prepare snapshot {key}")))?
        .into_inner()
        .mounts;
    let applied = containerd
        .client()
        .diff()
        .apply(lease.request(
            containerd,
            ApplyRequest {
                diff: Some(layer.to_containerd()),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            },
        ))
        .await
        .map_err(containerd_error(format!("apply layer {}", layer.digest)))?
        .into_inner()
        .applied
        .unwrap_or_default();
    if applied.digest != diff_id {
        return Err(ImageError::Invalid {
            image: image.to_string(),
            reason: format!(
                "layer {} unpacks to {} but the config says {diff_id}",
                layer.digest, applied.digest
            ),
        });
    }
    match containerd
        .client()
        .snapshots()
        .commit(lease.request(
            containerd,
            CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                name: chain_id.to_string(),
                key: key.to_string(),
                labels: HashMap::new(),
            },
        ))
        .await
    {
        Ok(_) => Ok(()),
        // Unpacked meanwhile by someone else: theirs is the same content, ours can go.
        Err(status) if status.code() == Code::AlreadyExists => {
            remove_snapshot(containerd, lease, key).await;
            Ok(())
        }
        Err(status) => Err(containerd_error(format!("commit snapshot {chain_id}"))(
            status,
        )),
    }
}

/// The image record `name`, if containerd has one.
pub async fn get_image(containerd: &Containerd, name: &str) -> Result<Option<Image>, ImageError> {
    match containerd
        .client()
        .images()
        .get(containerd.request(GetImageRequest {
            name: name.to_string(),
        }))
        .await
    {
        Ok(response) => Ok(response.into_inner().image),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(containerd_error(format!("look up image {name}"))(status)),
    }
}

/// Points the image record `name` at `target`, creating it if needed; leaves it alone when it
/// already does.
pub async fn put_image(
    containerd: &Containerd,
    lease: &Lease,
    name: &str,
    target: &Descriptor,
) -> Result<(), ImageError> {
    let target = target.to_containerd();
    let existing = get_image(containerd, name).await?;
    if let Some(image) = &existing {
        if image
            .target
            .as_ref()
            .is_some_and(|t| t.digest == target.digest)
        {
            return Ok(());
        }
    }
    let image = Image {
        name: name.to_string(),
        target: Some(target),
        ..Default::default()
    };
    if existing.is_some() {
        containerd
            .client()
            .images()
            .update(lease.request(
                containerd,
                UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                },
            ))
            .await
            .map_err(containerd_error(format!("update image {name}")))?;
    } else {
        containerd
            .client()
            .images()
            .create(lease.request(
                containerd,
                CreateImageRequest {
                    image: Some(image),
                    source_date_epoch: None,
                },
            ))
            .await
            .map_err(containerd_error(format!("create image {name}")))?;
    }
    Ok(())
}

/// `time` (since the epoch) as RFC 3339 in UTC, to the second.
fn rfc3339(time: Duration) -> String {
    let secs = time.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(Duration::from_secs(1_704_067_200 + 86_399)),
            "2024-01-01T23:59:59Z"
        );
        assert_eq!(
            rfc3339(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
