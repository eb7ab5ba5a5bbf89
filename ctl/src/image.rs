//! `skiff image import FILE [--node NAME …]`: sends an OCI image archive to each node's
//! containerd, through the API server's `nodes/proxy` subresource
//! (`POST /api/v1/nodes/<node>/proxy/images/import`, the node API's `POST /images/import`).
//!
//! The archive is checked here first (a file, a tar, with the OCI `index.json`), so the common
//! mistakes are reported before anything is sent; the node checks it again as it imports.
//! The file streams from disk to each node in turn; nothing holds it in memory. Without
//! `--node`, every Ready node gets it. Each node's result is printed as it arrives; the
//! command fails if any node failed.

use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::client::ConfigExt as _;
use tokio::io::AsyncReadExt as _;
use tower::ServiceExt as _;

use crate::kubeconfig;

/// The `skiff image` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Import an OCI image archive into the containerd of the cluster's nodes (through the
    /// API server's nodes/proxy); prints what each node imported.
    Import {
        /// The archive: an OCI image-layout tar (`docker save` of Docker 25 or later,
        /// `ctr images export`, `skiff-node image build-test-image`, `cargo xtask image`).
        file: PathBuf,
        /// A node to import into (repeat for more); default: every Ready node.
        #[arg(long = "node", value_name = "NAME")]
        nodes: Vec<String>,
    },
}

/// Runs `skiff image …`.
pub async fn run(kubeconfig: Option<&Path>, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Import { file, nodes } => import(kubeconfig, &file, &nodes).await,
    }
}

/// How large a piece of the archive one request body frame carries.
const PIECE: usize = 256 * 1024;

/// The request body: the archive, read as it is sent.
type UploadBody = BoxBody<Bytes, std::io::Error>;

/// An authenticated HTTP client for the API server that can stream request bodies (kube's
/// own client takes whole bodies only).
type Upload =
    tower::util::BoxCloneService<Request<UploadBody>, Response<Incoming>, tower::BoxError>;

async fn import(kubeconfig: Option<&Path>, file: &Path, named: &[String]) -> anyhow::Result<()> {
    let size = check_archive(file)?;
    let source = kubeconfig::choose(
        kubeconfig,
        std::env::var_os("KUBECONFIG"),
        std::env::var_os("HOME").map(PathBuf::from),
        Path::is_file,
    )?;
    let config = kubeconfig::load(&source).await?;
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = kube::Client::try_from(config.clone())
        .with_context(|| format!("cannot build a client from {source}"))?;
    let upload: Upload = {
        let https = config
            .rustls_https_connector()
            .with_context(|| format!("cannot set up TLS from {source}"))?;
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, UploadBody>(https);
        let service = tower::ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(
                config
                    .auth_layer()
                    .with_context(|| format!("cannot use the credentials in {source}"))?,
            )
            // Both kinds of auth layer (static and refreshed) must fail alike.
            .map_err(tower::BoxError::from)
            .service(http);
        tower::util::BoxCloneService::new(service)
    };

    let nodes = targets(&client, named, &server, &source).await?;
    let mut failed = Vec::new();
    for node in &nodes {
        match send(upload.clone(), node, file, size).await {
            Ok(images) => {
                for image in images {
                    println!("{node}: imported {image}");
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed.push(node.as_str());
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "the import failed on {} of {} node(s): {}",
            failed.len(),
            nodes.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Checks that `path` is a plain tar with an OCI `index.json`; returns its size.
pub fn check_archive(path: &Path) -> anyhow::Result<u64> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("{shown}: no such file"),
        _ => anyhow::anyhow!("cannot read {shown}: {e}"),
    })?;
    if meta.is_dir() {
        anyhow::bail!("{shown} is a directory: give the image archive (a .tar file)");
    }
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {shown}"))?;
    let mut magic = [0u8; 2];
    let read = file
        .read(&mut magic)
        .with_context(|| format!("cannot read {shown}"))?;
    if read == 2 && magic == [0x1f, 0x8b] {
        anyhow::bail!(
            "{shown} is gzip-compressed: decompress it first (gunzip); nodes import plain tar archives"
        );
    }
    file.rewind()
        .with_context(|| format!("cannot read {shown}"))?;
    let not_tar = |e: std::io::Error| anyhow::anyhow!("{shown} is not a tar archive ({e})");
    let mut archive = tar::Archive::new(file);
    let (mut any, mut index, mut docker) = (false, false, false);
    for entry in archive.entries_with_seek().map_err(not_tar)? {
        let entry = entry.map_err(not_tar)?;
        any = true;
        let name = entry.path().map_err(not_tar)?;
        match name.to_string_lossy().trim_start_matches("./") {
            "index.json" => index = true,
            "manifest.json" => docker = true,
            _ => {}
        }
    }
    if !any {
        anyhow::bail!("{shown} is not a tar archive (it has no entries)");
    }
    if !index {
        let what = if docker {
            "a Docker archive without an OCI index.json (from `docker save` before Docker 25)"
        } else {
            "a tar without index.json"
        };
        anyhow::bail!(
            "{shown} is {what}, not an OCI image archive: export the image as one (`docker \
             save` of Docker 25 or later, `ctr images export`, or `skopeo copy \
             docker-archive:IN oci-archive:OUT:NAME`)"
        );
    }
    Ok(meta.len())
}

/// The nodes to import into: the named ones (each must exist), else every Ready node.
async fn targets(
    client: &kube::Client,
    named: &[String],
    server: &str,
    source: &kubeconfig::Source,
) -> anyhow::Result<Vec<String>> {
    let api: Api<Node> = Api::all(client.clone());
    let api_error = |e: kube::Error| api_failure(e, server, source);
    if !named.is_empty() {
        let mut out: Vec<String> = Vec::new();
        let mut missing = Vec::new();
        for name in named {
            if out.contains(name) {
                continue;
            }
            match api.get_opt(name).await.map_err(api_error)? {
                Some(_) => out.push(name.clone()),
                None => missing.push(name.as_str()),
            }
        }
        if !missing.is_empty() {
            anyhow::bail!(
                "node {} not found (`kubectl get nodes` lists the cluster's nodes)",
                missing.join(", ")
            );
        }
        return Ok(out);
    }
    let list = api.list(&ListParams::default()).await.map_err(api_error)?;
    let mut ready = Vec::new();
    for node in list.items {
        let name = node.metadata.name.clone().unwrap_or_default();
        if is_ready(&node) {
            ready.push(name);
        } else {
            eprintln!("skipping node {name}: not Ready (name it with --node to try anyway)");
        }
    }
    if ready.is_empty() {
        anyhow::bail!(
            "the cluster has no Ready node to import into (`kubectl get nodes` shows them; \
             --node NAME tries one anyway)"
        );
    }
    Ok(ready)
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What to tell the user when an API call failed.
fn api_failure(e: kube::Error, server: &str, source: &kubeconfig::Source) -> anyhow::Error {
    match e {
        kube::Error::Api(status) if status.code == 401 => anyhow::anyhow!(
            "the API server at {server} refused the credentials in {source} (Unauthorized)"
        ),
        kube::Error::Api(status) => {
            anyhow::anyhow!("the API server at {server} refused: {}", status.message)
        }
        other => anyhow::anyhow!(
            "cannot reach the API server at {server} ({}): is skiff-master running, and is \
             {source} the kubeconfig for it?",
            chain(&other)
        ),
    }
}

/// An error and its causes, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Streams the archive to `node`; returns the image names it imported.
///
/// The node's `/healthz` is asked first: the API server answers for an unknown or unreachable
/// node before reading the request's body, so an upload to one would break off mid-body with
/// a broken pipe instead of that answer.
async fn send(upload: Upload, node: &str, file: &Path, size: u64) -> anyhow::Result<Vec<String>> {
    let probe = Request::get(format!("/api/v1/nodes/{node}/proxy/healthz"))
        .header(http::header::ACCEPT, "application/json")
        .body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .context("cannot build the request")?;
    let (status, body) = exchange(upload.clone(), probe, node, file).await?;
    if !status.is_success() {
        let message = interpret(node, file, status, &body)
            .err()
            .unwrap_or_else(|| format!("node {node} answered its health check with {status}"));
        anyhow::bail!(message);
    }
    let opened = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let request = Request::post(format!("/api/v1/nodes/{node}/proxy/images/import"))
        .header(http::header::CONTENT_TYPE, "application/x-tar")
        .header(http::header::CONTENT_LENGTH, size)
        .header(http::header::ACCEPT, "application/json")
        .body(file_body(opened))
        .context("cannot build the request")?;
    let (status, body) = exchange(upload, request, node, file).await?;
    interpret(node, file, status, &body).map_err(|message| anyhow::anyhow!(message))
}

/// Sends `request` and reads the answer's status and (small) body.
async fn exchange(
    upload: Upload,
    request: Request<UploadBody>,
    node: &str,
    file: &Path,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let response = upload.oneshot(request).await.map_err(|e| {
        anyhow::anyhow!(
            "node {node}: cannot send {} to the API server ({})",
            file.display(),
            chain(e.as_ref())
        )
    })?;
    let status = response.status();
    // Answers are small (names, or an error); a huge one is cut rather than held.
    let body = http_body_util::Limited::new(response.into_body(), 1 << 20)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| anyhow::anyhow!("node {node}: the answer broke off ({e})"))?;
    Ok((status, body))
}

/// The archive as a body of [`PIECE`]-sized frames read on demand.
fn file_body(file: tokio::fs::File) -> UploadBody {
    let frames = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut piece = vec![0u8; PIECE];
        match file.read(&mut piece).await {
            Ok(0) => None,
            Ok(n) => {
                piece.truncate(n);
                Some((Ok(Frame::data(Bytes::from(piece))), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    StreamBody::new(frames).boxed()
}

/// Reads the answer to an import: the names imported, or what went wrong and what to do.
pub fn interpret(
    node: &str,
    file: &Path,
    status: StatusCode,
    body: &[u8],
) -> Result<Vec<String>, String> {
    let file = file.display();
    if status.is_success() {
        let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let names = value["images"].as_array().map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect::<Vec<_>>()
        });
        return names.ok_or_else(|| {
            format!(
                "node {node} answered without the imported images: {}",
                String::from_utf8_lossy(body).trim()
            )
        });
    }
    // The API server's own failures (unknown or unreachable node) and the node's import
    // errors come as a `Status`; other node errors (an agent without this path) as text.
    let api_status: Option<serde_json::Value> = serde_json::from_slice(body)
        .ok()
        .filter(|v: &serde_json::Value| v["kind"] == "Status");
    let is_status = api_status.is_some();
    let message = match &api_status {
        Some(s) => s["message"].as_str().unwrap_or_default().to_string(),
        None => String::from_utf8_lossy(body).trim().to_string(),
    };
    Err(match status {
        StatusCode::NOT_FOUND if is_status => {
            format!("node {node} not found (`kubectl get nodes` lists the cluster's nodes)")
        }
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => format!(
            "node {node} cannot import images through its API ({message}): upgrade its skiff-node"
        ),
        StatusCode::SERVICE_UNAVAILABLE => format!(
            "node {node} is unreachable: {message} (is skiff-node running there, with its port \
             open to the master?)"
        ),
        StatusCode::UNAUTHORIZED => {
            "the API server refused the kubeconfig's credentials (Unauthorized)".to_string()
        }
        StatusCode::BAD_REQUEST => format!("node {node} cannot import {file}: {message}"),
        StatusCode::PAYLOAD_TOO_LARGE => format!("node {node} refused {file}: {message}"),
        StatusCode::INSUFFICIENT_STORAGE => {
            format!("node {node} is out of disk space for {file}: {message}")
        }
        _ => format!("node {node} failed to import {file} ({status}): {message}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_results_or_advice() {
        let check = |status: u16, body: &str, want: Result<Vec<&str>, &str>| {
            let got = interpret(
                "n1",
                Path::new("app.tar"),
                StatusCode::from_u16(status).unwrap(),
                body.as_bytes(),
            );
            match (&got, &want) {
                (Ok(names), Ok(w)) => assert_eq!(names, w, "{status} {body}"),
                (Err(message), Err(w)) => assert!(message.contains(w), "{message:?} lacks {w:?}"),
                _ => panic!("{status} {body}: got {got:?}, want {want:?}"),
            }
        };
        check(
            200,
            r#"{"images":["skiff.test/busybox:1"]}"#,
            Ok(vec!["skiff.test/busybox:1"]),
        );
        check(200, "ok", Err("without the imported images"));
        check(
            404,
            r#"{"kind":"Status","code":404,"reason":"NotFound","message":"nodes \"n1\" not found"}"#,
            Err("node n1 not found (`kubectl get nodes`"),
        );
        check(
            503,
            r#"{"kind":"Status","code":503,"message":"cannot reach the agent of node n1 at 10.0.0.1:10250: connection refused"}"#,
            Err("node n1 is unreachable: cannot reach the agent"),
        );
        check(
            400,
            r#"{"kind":"Status","code":400,"reason":"BadRequest","message":"not an importable image archive: not a tar archive"}"#,
            Err("node n1 cannot import app.tar: not an importable image archive"),
        );
        check(
            404,
            "no such path: /images/import\n",
            Err("upgrade its skiff-node"),
        );
        check(
            413,
            "the image archive is larger",
            Err("node n1 refused app.tar: the image"),
        );
        check(
            500,
            "containerd failed",
            Err("(500 Internal Server Error): containerd failed"),
        );
    }

    #[test]
    fn archives_are_checked_before_sending() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, entries: &[&str]| {
            let path = dir.path().join(name);
            let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
            for entry in entries {
                let mut header = tar::Header::new_gnu();
                header.set_size(2);
                header.set_mode(0o644);
                header.set_cksum();
                builder.append_data(&mut header, entry, &b"{}"[..]).unwrap();
            }
            builder.finish().unwrap();
            path
        };
        let check = |path: &Path, want: Result<(), &str>| match (check_archive(path), want) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{e} lacks {w:?}"),
            (got, want) => panic!("{}: got {got:?}, want {want:?}", path.display()),
        };
        check(
            &write("oci.tar", &["oci-layout", "index.json", "blobs/sha256/aa"]),
            Ok(()),
        );
        check(&write("dot.tar", &["./index.json"]), Ok(()));
        check(
            &write("docker.tar", &["manifest.json", "abc/layer.tar"]),
            Err("a Docker archive"),
        );
        check(
            &write("other.tar", &["readme"]),
            Err("a tar without index.json"),
        );
        check(
            &dir.path().join("missing.tar"),
            Err("missing.tar: no such file"),
        );
        check(dir.path(), Err("is a directory"));
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello, this is not a tar file at all ".repeat(40)).unwrap();
        check(&text, Err("is not a tar archive"));
        let gz = dir.path().join("app.tar.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0]).unwrap();
        check(&gz, Err("gzip-compressed"));
        let empty = dir.path().join("empty.tar");
        std::fs::write(&empty, "").unwrap();
        check(&empty, Err("no entries"));
    }
}
