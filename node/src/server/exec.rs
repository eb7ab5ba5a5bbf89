//! `exec` over WebSocket, the channel protocol of kubectl 1.30+ and the client libraries
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`): every binary message starts with a channel
//! byte — 0 stdin, 1 stdout, 2 stderr, 3 error (a `metav1.Status` once the command ends), 4
//! resize (`{"Width":…,"Height":…}`), and in v5, 255 close (`[255, 0]` ends stdin).
//!
//! The command runs through containerd's Tasks `Exec` with the container's own process spec
//! (environment, user, working directory), its arguments replaced; stdio goes through FIFOs
//! this module creates, and a TTY when asked.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest,
    ResizePtyRequest, StartRequest, WaitRequest,
};
use futures::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::protocol::{Message, Role};
use tokio_tungstenite::WebSocketStream;

use super::{containers, first, flag, text, Body, Node, Query};
use crate::runtime::Containerd;

/// The subprotocols served, preferred first.
pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// Channel numbers.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5 only: `[CLOSE, channel]` closes that channel (stdin).
pub const CLOSE: u8 = 255;

/// How long the shim may take to open the FIFOs, and output may take to drain after the
/// process exits.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Reads an exec query (kubelet's rules: a command, and at least one stream).
pub fn exec_request(query: &Query) -> Result<ExecRequest, String> {
    let command = query.get("command").cloned().unwrap_or_default();
    if command.is_empty() {
        return Err("you must specify at least one command for the container".into());
    }
    let mut request = ExecRequest {
        command,
        stdin: flag(query, "stdin")?,
        stdout: flag(query, "stdout")?,
        stderr: flag(query, "stderr")?,
        tty: flag(query, "tty")?,
    };
    if first(query, "input").is_some() {
        request.stdin = flag(query, "input")?;
    }
    if first(query, "output").is_some() {
        request.stdout = flag(query, "output")?;
    }
    if request.tty {
        // A TTY merges stderr into stdout.
        request.stderr = false;
    }
    if !(request.stdin || request.stdout || request.stderr) {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    Ok(request)
}

/// Answers an exec request: checks it, upgrades to WebSocket and runs the session.
pub async fn handle(
    node: Arc<Node>,
    ns: &str,
    pod: &str,
    container: &str,
    query: &Query,
    req: Request<Incoming>,
) -> Response<Body> {
    let exec = match exec_request(query) {
        Ok(e) => e,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e),
    };
    let headers = req.headers();
    let is_websocket = headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers.get(http::header::SEC_WEBSOCKET_KEY).cloned() else {
        return text(
            StatusCode::BAD_REQUEST,
            "exec needs a websocket upgrade (subprotocol v5.channel.k8s.io or v4.channel.k8s.io)",
        );
    };
    if !is_websocket {
        return text(
            StatusCode::BAD_REQUEST,
            "exec needs an Upgrade: websocket request",
        );
    }
    let offered: Vec<String> = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    let Some(protocol) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        return text(
            StatusCode::BAD_REQUEST,
            &format!(
                "none of the offered websocket subprotocols {offered:?} is supported; use one of {PROTOCOLS:?}"
            ),
        );
    };
    let found = match containers::find(&node.containerd, ns, pod, container).await {
        Ok(f) if f.running => f,
        Ok(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("container {container:?} of pod {ns}/{pod} is not running"),
            )
        }
        Err(e @ containers::LookupError::NotFound { .. }) => {
            return text(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let v5 = *protocol == PROTOCOLS[0];
    let span = tracing::info_span!("exec", namespace = %ns, pod = %pod, container = %container);
    let upgrade = hyper::upgrade::on(req);
    let session = async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "exec: upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        run(&node, &found.id, exec, v5, ws).await;
    };
    tokio::spawn(tracing::Instrument::instrument(session, span));
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(protocol),
    );
    response
}

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(u32),
    Failed(String),
}

/// The channel-3 `Status` for an outcome, as kubelet writes it.
pub fn status_json(command: &[String], outcome: &Outcome) -> String {
    let status = match outcome {
        Outcome::Exited(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(message) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
            "code": 500,
        }),
    };
    status.to_string()
}

/// The session: starts the process, pumps the channels, sends the status, closes.
async fn run<S>(node: &Node, id: &str, exec: ExecRequest, v5: bool, ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(32);
    // One writer owns the socket.
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let exec_id = format!("exec-{}", uuid_like());
    let fifo_dir = node.fifo_dir.join(&exec_id);
    let outcome = match Session::start(&node.containerd, id, &exec_id, &exec, &fifo_dir).await {
        Err(e) => Outcome::Failed(e),
        Ok(mut session) => {
            let mut pumps = Vec::new();
            let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
            for (reader, channel, wanted) in [
                (session.stdout.take(), STDOUT, exec.stdout),
                (session.stderr.take(), STDERR, exec.stderr),
            ] {
                let Some(reader) = reader else { continue };
                let tx = wanted.then(|| out_tx.clone());
                pumps.push(tokio::spawn(pump(reader, channel, tx, drain_rx.clone())));
            }
            let containerd = node.containerd.clone();
            let mut wait = {
                let (id, exec_id) = (id.to_string(), exec_id.clone());
                let containerd = containerd.clone();
                tokio::spawn(async move {
                    containerd
                        .client()
                        .tasks()
                        .wait(containerd.request(WaitRequest {
                            container_id: id,
                            exec_id,
                        }))
                        .await
                        .map(|r| r.into_inner().exit_status)
                })
            };
            let mut stdin = session.stdin.take();
            let mut client_gone = false;
            let result = loop {
                tokio::select! {
                    done = &mut wait => break done,
                    message = stream.next(), if !client_gone => match message {
                        Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                            match (data[0], &data[1..]) {
                                (STDIN, bytes) => {
                                    if let Some(w) = stdin.as_mut() {
                                        if w.write_all(bytes).await.is_err() {
                                            stdin = None;
                                        }
                                    }
                                }
                                (RESIZE, json) => session.resize(&containerd, json).await,
                                (CLOSE, [STDIN, ..]) if v5 => {
                                    stdin = None;
                                    session.close_stdin(&containerd).await;
                                }
                                _ => {}
                            }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            // The client left: stop the process rather than leave it running.
                            client_gone = true;
                            session.kill(&containerd).await;
                        }
                        Some(Ok(_)) => {}
                    },
                }
            };
            drop(stdin);
            // DeleteProcess returns once the shim has copied all output into the FIFOs; then
            // the pumps take what is left and stop.
            session.delete(&containerd).await;
            let _ = drain_tx.send(true);
            for pump in pumps {
                let _ = tokio::time::timeout(IO_TIMEOUT, pump).await;
            }
            match result {
                Ok(Ok(code)) => Outcome::Exited(code),
                Ok(Err(e)) => {
                    Outcome::Failed(format!("waiting for the command failed: {}", e.message()))
                }
                Err(e) => Outcome::Failed(format!("waiting for the command failed: {e}")),
            }
        }
    };
    let _ = std::fs::remove_dir_all(&fifo_dir);
    let mut message = vec![ERROR];
    message.extend_from_slice(status_json(&exec.command, &outcome).as_bytes());
    let _ = out_tx.send(Message::binary(message)).await;
    // A normal closure (1000): clients such as client-go take anything else as an error.
    let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    };
    let _ = out_tx.send(Message::Close(Some(close))).await;
    drop(out_tx);
    let _ = tokio::time::timeout(IO_TIMEOUT, writer).await;
}

/// Copies one output FIFO to its channel (or nowhere, when the client did not ask for it) until
/// told to drain: then reads what is left and ends.
async fn pump(
    mut reader: tokio::net::unix::pipe::Receiver,
    channel: u8,
    tx: Option<tokio::sync::mpsc::Sender<Message>>,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    buf[0] = channel;
    let mut draining = false;
    loop {
        let n = if draining {
            match reader.try_read(&mut buf[1..]) {
                Ok(n) => n,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                read = reader.read(&mut buf[1..]) => match read {
                    Ok(n) => n,
                    Err(_) => return,
                },
                _ = drain.wait_for(|d| *d) => {
                    draining = true;
                    continue;
                }
            }
        };
        if n == 0 {
            return;
        }
        let Some(tx) = &tx else { continue };
        if tx
            .send(Message::binary(buf[..n + 1].to_vec()))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A started exec process and its stdio.
struct Session {
    id: String,
    exec_id: String,
    stdin: Option<tokio::net::unix::pipe::Sender>,
    stdout: Option<tokio::net::unix::pipe::Receiver>,
    stderr: Option<tokio::net::unix::pipe::Receiver>,
}

impl Session {
    async fn start(
        containerd: &Containerd,
        id: &str,
        exec_id: &str,
        exec: &ExecRequest,
        fifo_dir: &Path,
    ) -> Result<Session, String> {
        let container = containerd
            .client()
            .containers()
            .get(containerd.request(GetContainerRequest { id: id.to_string() }))
            .await
            .map_err(|e| format!("cannot read container {id}: {}", e.message()))?
            .into_inner()
            .container
            .ok_or_else(|| format!("container {id} is gone"))?;
        let spec: serde_json::Value = container
            .spec
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .ok_or_else(|| format!("container {id} has no readable oci spec"))?;
        let mut process = spec
            .get("process")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"cwd": "/"}));
        process["args"] = serde_json::json!(exec.command);
        process["terminal"] = serde_json::json!(exec.tty);
        if exec.tty {
            let env = process["env"].as_array().cloned().unwrap_or_default();
            if !env
                .iter()
                .any(|e| e.as_str().is_some_and(|e| e.starts_with("TERM=")))
            {
                let mut env = env;
                env.push(serde_json::json!("TERM=xterm"));
                process["env"] = serde_json::Value::Array(env);
            }
        }

        std::fs::create_dir_all(fifo_dir)
            .map_err(|e| format!("cannot create {}: {e}", fifo_dir.display()))?;
        // The FIFOs carry the session's input and output: only root may open them.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(fifo_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot restrict {}: {e}", fifo_dir.display()))?;
        }
        let path = |name: &str| fifo_dir.join(name);
        // Read ends open (read-write, so neither side waits) before the shim opens its write
        // ends: output written before we read is never dropped with the last opener. Such a
        // FIFO never reports end of file; the session drains it once the shim has finished
        // copying (DeleteProcess waits for that).
        let mut readers = Vec::new();
        // The shim needs every output it may write to (stderr unless there is a TTY), even
        // those the client did not ask for; their pumps discard them.
        for (wanted, name) in [(true, "stdout"), (!exec.tty, "stderr")] {
            if !wanted {
                readers.push(None);
                continue;
            }
            let p = path(name);
            mkfifo(&p)?;
            readers.push(Some(
                tokio::net::unix::pipe::OpenOptions::new()
                    .read_write(true)
                    .open_receiver(&p)
                    .map_err(|e| format!("cannot open {}: {e}", p.display()))?,
            ));
        }
        let stdin = if exec.stdin {
            let p = path("stdin");
            mkfifo(&p)?;
            // Read-write, so the open does not wait for the shim; CloseIO ends its input.
            Some(
                tokio::net::unix::pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(&p)
                    .map_err(|e| format!("cannot open {}: {e}", p.display()))?,
            )
        } else {
            None
        };
        let fifo = |wanted: bool, name: &str| {
            if wanted {
                path(name).to_string_lossy().into_owned()
            } else {
                String::new()
            }
        };
        let request = ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: fifo(exec.stdin, "stdin"),
            stdout: fifo(true, "stdout"),
            stderr: fifo(!exec.tty, "stderr"),
            terminal: exec.tty,
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(&process).unwrap_or_default(),
            }),
        };
        if let Err(e) = containerd
            .client()
            .tasks()
            .exec(containerd.request(request))
            .await
        {
            return Err(format!("cannot exec in container {id}: {}", e.message()));
        }
        let mut session = Session {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin,
            stdout: None,
            stderr: None,
        };
        // The shim opens the FIFOs when it starts the process.
        let start = StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        if let Err(e) = containerd
            .client()
            .tasks()
            .start(containerd.request(start))
            .await
        {
            session.delete(containerd).await;
            return Err(e.message().to_string());
        }
        let mut readers = readers.into_iter();
        session.stdout = readers.next().flatten();
        session.stderr = readers.next().flatten();
        Ok(session)
    }

    async fn resize(&self, containerd: &Containerd, json: &[u8]) {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Size {
            width: u32,
            height: u32,
        }
        let Ok(size) = serde_json::from_slice::<Size>(json) else {
            return;
        };
        let request = ResizePtyRequest {
            container_id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            width: size.width,
            height: size.height,
        };
        let _ = containerd
            .client()
            .tasks()
            .resize_pty(containerd.request(request))
            .await;
    }

    async fn close_stdin(&self, containerd: &Containerd) {
        let request = CloseIoRequest {
            container_id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            stdin: true,
        };
        let _ = containerd
            .client()
            .tasks()
            .close_io(containerd.request(request))
            .await;
    }

    async fn kill(&self, containerd: &Containerd) {
        let request = KillRequest {
            container_id: self.id.clone(),
            exec_id: self.exec_id.clone(),
            signal: libc::SIGKILL as u32,
            all: false,
        };
        let _ = containerd
            .client()
            .tasks()
            .kill(containerd.request(request))
            .await;
    }

    async fn delete(&self, containerd: &Containerd) {
        let request = DeleteProcessRequest {
            container_id: self.id.clone(),
            exec_id: self.exec_id.clone(),
        };
        let _ = containerd
            .client()
            .tasks()
            .delete_process(containerd.request(request))
            .await;
    }
}

fn mkfifo(path: &Path) -> Result<(), String> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("fifo path {} has a nul byte", path.display()))?;
    // SAFETY: mkfifo with a valid C string.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(format!(
            "cannot create fifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A random hex ID for an exec process.
fn uuid_like() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom fills the buffer we own.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = (nanos as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::parse_query;

    #[test]
    fn exec_query() {
        let r = exec_request(&parse_query(
            "command=sh&command=-c&command=ls&stdout=true&tty=true&stderr=true",
        ))
        .unwrap();
        assert_eq!(r.command, ["sh", "-c", "ls"]);
        assert!(r.stdout && r.tty && !r.stderr && !r.stdin);
        assert!(exec_request(&parse_query("stdout=true")).is_err());
        assert!(exec_request(&parse_query("command=ls")).is_err());
        assert!(exec_request(&parse_query("command=ls&stdin=maybe")).is_err());
    }

    #[test]
    fn status_like_kubelet() {
        let cmd = vec!["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        assert_eq!(
            status_json(&cmd, &Outcome::Exited(0)),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&status_json(&cmd, &Outcome::Exited(3))).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
    }
}
