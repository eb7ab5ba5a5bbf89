//! `POST /images/import`: an OCI image-layout tar in the request body, imported into the
//! node's containerd (namespace `skiff`) by [`crate::runtime::images::import_archive`], as
//! `skiff-node image import` and the preload directory do. kubelet has no such path; this one
//! follows its style (a verb under a resource-like prefix).
//!
//! The body streams to a temporary file under the agent's root directory
//! (`<root-dir>/image-imports/`, emptied at start), never into memory, and is refused past
//! [`ImageImport::max_bytes`] (`--max-image-import-bytes`): up front when `Content-Length`
//! says so, else as soon as the stream passes the limit. One upload is taken at a time; the
//! next waits without reading its body. The answer is `{"images": ["<name>", …]}`.
//!
//! Errors are a `metav1.Status` (unlike kubelet's plain text), so kubectl and client-go show
//! their message through `nodes/proxy`: 400 not an importable archive (the reason from the
//! importer); 408 the upload stalled; 413 too large; 507 the node's disk filled up; 500
//! containerd failed. Chunked bodies (no `Content-Length`) are fine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use super::{Body, Node};
use crate::runtime::images::{self, ImageError};

/// The default of `--max-image-import-bytes`: 8 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;

/// How long an upload may send nothing before it is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how much the node takes in.
pub struct ImageImport {
    /// The spool directory (`<root-dir>/image-imports`).
    pub dir: PathBuf,
    /// The largest archive accepted, in bytes.
    pub max_bytes: u64,
    /// One upload at a time (the import itself is serialised with pulls anyway).
    slot: tokio::sync::Semaphore,
}

impl ImageImport {
    /// Imports spooled under `dir`, archives of at most `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> ImageImport {
        ImageImport {
            dir,
            max_bytes,
            slot: tokio::sync::Semaphore::new(1),
        }
    }

    /// Creates the spool directory (root only) and removes what an earlier agent left in it.
    pub fn prepare(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(
            &self.dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
    }
}

/// Why an upload was not imported. [`status`](ImportError::status) is the HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// `Content-Length` is not a number.
    #[error("invalid Content-Length {value:?}")]
    BadLength {
        /// The header as sent.
        value: String,
    },
    /// The archive is over the limit (`declared` when `Content-Length` said so).
    #[error(
        "the image archive{} is larger than this node accepts ({max} bytes; skiff-node \
         --max-image-import-bytes raises it)",
        declared.map(|n| format!(" ({n} bytes)")).unwrap_or_default()
    )]
    TooLarge {
        /// What `Content-Length` declared.
        declared: Option<u64>,
        /// The limit.
        max: u64,
    },
    /// No body at all.
    #[error("the request has no body: send an OCI image archive (a tar with index.json)")]
    Empty,
    /// The client sent nothing for [`IDLE_TIMEOUT`].
    #[error("the upload stalled: nothing arrived for {} s", seconds)]
    Stalled {
        /// How long it waited.
        seconds: u64,
    },
    /// The body broke off.
    #[error("the upload broke off: {reason}")]
    Body {
        /// The transport's error.
        reason: String,
    },
    /// The temporary file could not be written.
    #[error("cannot store the upload under {}: {source}", dir.display())]
    Spool {
        /// The spool directory.
        dir: PathBuf,
        /// The file system's error.
        #[source]
        source: std::io::Error,
    },
    /// The importer refused the archive or containerd failed.
    #[error("{}", describe(.0))]
    Image(#[from] ImageError),
}

impl ImportError {
    /// The `Status` reason for [`status`](ImportError::status).
    pub fn reason(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
            StatusCode::REQUEST_TIMEOUT => "Timeout",
            _ => "InternalError",
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ImportError::BadLength { .. } | ImportError::Empty => StatusCode::BAD_REQUEST,
            ImportError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ImportError::Stalled { .. } => StatusCode::REQUEST_TIMEOUT,
            ImportError::Body { .. } => StatusCode::BAD_REQUEST,
            ImportError::Spool { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            ImportError::Spool { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ImportError::Image(e) => match e {
                ImageError::Archive { .. }
                | ImageError::Invalid { .. }
                | ImageError::InvalidName { .. }
                | ImageError::Transfer { .. } => StatusCode::BAD_REQUEST,
                // containerd checks each blob's size and digest on commit.
                ImageError::Containerd { source, .. }
                    if matches!(
                        source.code(),
                        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                    ) =>
                {
                    StatusCode::BAD_REQUEST
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

/// An importer error without the spool file's name, which means nothing to the client.
fn describe(e: &ImageError) -> String {
    match e {
        ImageError::Archive { reason, .. } => {
            format!("not an importable image archive: {reason}")
        }
        other => other.to_string(),
    }
}

/// The body's declared length, refused when over `max`.
pub fn declared_length(headers: &HeaderMap, max: u64) -> Result<Option<u64>, ImportError> {
    let Some(value) = headers.get(http::header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    let length: u64 = text.trim().parse().map_err(|_| ImportError::BadLength {
        value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
    })?;
    if length > max {
        return Err(ImportError::TooLarge {
            declared: Some(length),
            max,
        });
    }
    if length == 0 {
        return Err(ImportError::Empty);
    }
    Ok(Some(length))
}

/// Copies `body` into `out`, at most `max` bytes, each frame within `idle`; returns the length.
pub async fn receive<B, W>(
    body: B,
    out: &mut W,
    dir: &Path,
    max: u64,
    idle: Duration,
) -> Result<u64, ImportError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
    W: AsyncWrite + Unpin,
{
    let spool = |source| ImportError::Spool {
        dir: dir.to_path_buf(),
        source,
    };
    let mut body = std::pin::pin!(body);
    let mut written = 0u64;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(ImportError::Stalled {
                    seconds: idle.as_secs(),
                })
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ImportError::Body {
                    reason: e.to_string(),
                })
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        written += data.len() as u64;
        if written > max {
            return Err(ImportError::TooLarge {
                declared: None,
                max,
            });
        }
        out.write_all(&data).await.map_err(spool)?;
    }
    out.flush().await.map_err(spool)?;
    if written == 0 {
        return Err(ImportError::Empty);
    }
    Ok(written)
}

/// Answers `POST /images/import`.
pub async fn handle(node: &Node, request: Request<Incoming>) -> Response<Body> {
    match import(node, request).await {
        Ok(names) => {
            tracing::info!(images = ?names, "imported an uploaded image archive");
            json(StatusCode::OK, serde_json::json!({ "images": names }))
        }
        Err(e) => {
            tracing::warn!(error = %e, "node api: image import failed");
            json(e.status(), failure(&e))
        }
    }
}

/// The `metav1.Status` for a failed import.
pub fn failure(e: &ImportError) -> serde_json::Value {
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": e.to_string(),
        "reason": e.reason(),
        "code": e.status().as_u16(),
    })
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(value.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn import(node: &Node, request: Request<Incoming>) -> Result<Vec<String>, ImportError> {
    let config = &node.image_import;
    declared_length(request.headers(), config.max_bytes)?;
    let _slot = config.slot.acquire().await.map_err(|_| ImportError::Body {
        reason: "the node is shutting down".into(),
    })?;
    let spool = |source| ImportError::Spool {
        dir: config.dir.clone(),
        source,
    };
    let file = tempfile::Builder::new()
        .prefix("upload-")
        .suffix(".tar")
        .tempfile_in(&config.dir)
        .map_err(spool)?;
    let mut out = tokio::fs::File::from_std(file.as_file().try_clone().map_err(spool)?);
    let length = receive(
        request.into_body(),
        &mut out,
        &config.dir,
        config.max_bytes,
        IDLE_TIMEOUT,
    )
    .await?;
    drop(out);
    tracing::debug!(bytes = length, path = %file.path().display(), "received an image archive");
    let names = images::import_archive(&node.containerd, file.path()).await?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    #[test]
    fn declared_lengths() {
        let check = |value: Option<&str>, want: Result<Option<u64>, StatusCode>| {
            let mut headers = HeaderMap::new();
            if let Some(v) = value {
                headers.insert(http::header::CONTENT_LENGTH, v.parse().unwrap());
            }
            let got = declared_length(&headers, 1000).map_err(|e| e.status());
            assert_eq!(got, want, "{value:?}");
        };
        check(None, Ok(None));
        check(Some("1000"), Ok(Some(1000)));
        check(Some("1001"), Err(StatusCode::PAYLOAD_TOO_LARGE));
        check(Some("0"), Err(StatusCode::BAD_REQUEST));
        check(Some("ten"), Err(StatusCode::BAD_REQUEST));
        check(Some("-1"), Err(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = ImportError::TooLarge {
            declared: Some(20),
            max: 10,
        };
        assert_eq!(
            e.to_string(),
            "the image archive (20 bytes) is larger than this node accepts (10 bytes; \
             skiff-node --max-image-import-bytes raises it)"
        );
        let e = ImportError::Image(ImageError::Archive {
            path: "/var/lib/skiff-node/image-imports/upload-x.tar".into(),
            reason: "not a tar archive".into(),
        });
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.to_string(),
            "not an importable image archive: not a tar archive"
        );
        let status = failure(&e);
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "BadRequest");
        assert_eq!(status["code"], 400);
        let full = ImportError::Spool {
            dir: "/d".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(full.status(), StatusCode::INSUFFICIENT_STORAGE);
    }

    fn chunks(parts: Vec<&'static [u8]>) -> impl hyper::body::Body<Data = Bytes, Error = String> {
        StreamBody::new(futures::stream::iter(
            parts
                .into_iter()
                .map(|p| Ok::<_, String>(Frame::data(Bytes::from_static(p)))),
        ))
    }

    #[tokio::test]
    async fn receiving_caps_the_stream() {
        let dir = Path::new("/spool");
        let mut out = Vec::new();
        let n = receive(
            chunks(vec![b"abc", b"defg"]),
            &mut out,
            dir,
            7,
            IDLE_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!((n, out.as_slice()), (7, b"abcdefg".as_slice()));

        // Over the cap without a Content-Length: refused as soon as it passes, not after.
        let mut out = Vec::new();
        let e = receive(
            chunks(vec![b"abc", b"defgh", b"ij"]),
            &mut out,
            dir,
            7,
            IDLE_TIMEOUT,
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(out, b"abc");

        let e = receive(chunks(vec![]), &mut Vec::new(), dir, 7, IDLE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(e, ImportError::Empty), "{e}");

        let broken = StreamBody::new(futures::stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Err("connection reset".to_string()),
        ]));
        let e = receive(broken, &mut Vec::new(), dir, 7, IDLE_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "the upload broke off: connection reset");
    }

    #[tokio::test]
    async fn a_stalled_upload_is_dropped() {
        let stalled = StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, String>>());
        let e = receive(
            stalled,
            &mut Vec::new(),
            Path::new("/spool"),
            7,
            Duration::from_millis(20),
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), StatusCode::REQUEST_TIMEOUT);
    }
}
