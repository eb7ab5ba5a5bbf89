//! End to end: a real containerd runs a busybox container whose output goes through the
//! `binary://` log driver (this crate's `skiff-node log-driver`) into a CRI log file; the node
//! API serves that log (tail, follow) and runs `exec` over the WebSocket channel protocol,
//! behind mutual TLS.
//!
//! Needs root, containerd and runc (cluster/install-deps.sh), and `/bin/busybox` (busybox-static).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, KillRequest, StartRequest, WaitRequest,
};
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use skiff_node::logs::{self, LogLimits};
use skiff_node::runtime::Containerd;
use skiff_node::server::{self, tls, Node};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

const NS: &str = "default";
const POD: &str = "web";
const UID: &str = "0b8f1c3e-uid";
const CONTAINER: &str = "main";

/// A cluster CA and a client certificate it signed (what the master holds).
struct Pki {
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

fn make_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(ca_cert.der(), &ca_key).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::default();
    client
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver-kubelet-client");
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

/// A TLS client config trusting the node's serving certificate, with or without a client cert.
fn client_config(serving_pem: &str, client: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(serving_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    Ok(connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?)
}

/// GET `path`; returns (status, a receiver of body chunks).
async fn get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> anyhow::Result<(u16, tokio::sync::mpsc::Receiver<Vec<u8>>)> {
    let tls = connect(addr, config).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
    let response = sender.send_request(req).await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let _keep = sender;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                if tx.send(data.to_vec()).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok((status, rx))
}

async fn get_all(addr: SocketAddr, config: Arc<rustls::ClientConfig>, path: &str) -> (u16, String) {
    let (status, mut rx) = get(addr, config, path).await.unwrap();
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        all.extend(chunk);
    }
    (status, String::from_utf8_lossy(&all).into_owned())
}

/// Runs a command over WebSocket exec; returns (stdout, stderr, status JSON).
async fn exec(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    query: &str,
    stdin: Option<&[u8]>,
) -> anyhow::Result<(String, String, serde_json::Value)> {
    let tls = connect(addr, config).await?;
    let mut request =
        format!("wss://localhost/exec/{NS}/{POD}/{CONTAINER}?{query}").into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io, v4.channel.k8s.io".parse()?,
    );
    let (mut ws, response) = tokio_tungstenite::client_async(request, tls).await?;
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "v5.channel.k8s.io"
    );
    if let Some(input) = stdin {
        let mut m = vec![0u8];
        m.extend_from_slice(input);
        ws.send(Message::binary(m)).await?;
        ws.send(Message::binary(vec![255u8, 0])).await?;
    }
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, ws.next()).await {
        match message? {
            Message::Binary(data) if !data.is_empty() => match data[0] {
                1 => out.extend_from_slice(&data[1..]),
                2 => err.extend_from_slice(&data[1..]),
                3 => status = Some(serde_json::from_slice(&data[1..])?),
                _ => {}
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok((
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        status.context("no status on channel 3")?,
    ))
}

/// If the test ends early: kills the container's init process and the shims serving this
/// test's containerd (found by its socket path in their command line), all by PID.
struct KillOnDrop {
    pid: u32,
    socket: PathBuf,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let mut pids = vec![self.pid];
        let needle = self.socket.to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.starts_with("/usr/bin/containerd-shim") && cmdline.contains(&needle) {
                pids.push(pid);
            }
        }
        for pid in pids.into_iter().filter(|p| *p > 0) {
            // SAFETY: kill(2) on the PID of a process this test started (directly or through
            // its own containerd).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

fn rootfs(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copy /bin/busybox (install busybox-static)")?;
    for tool in ["sh", "echo", "sleep", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool))?;
    }
    Ok(root)
}

fn spec(root: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "GREETING=from-spec"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": root, "readonly": false},
        "hostname": "web",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "cgroupsPath": format!("/skiff-test-{}", std::process::id())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_and_exec_through_the_node_api() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let daemon = skiff_node::testing::Containerd::start()?;
    let containerd = Containerd::connect(daemon.address()).await?;
    let dir = daemon.dir().to_path_buf();
    let root = rootfs(&dir)?;
    let pod_logs = dir.join("pods");
    let restart_count = 1;
    let log_path = logs::container_log_path(&pod_logs, NS, POD, UID, CONTAINER, restart_count);
    // A previous run's log, as the pod worker would have left it.
    let previous = logs::container_log_path(&pod_logs, NS, POD, UID, CONTAINER, 0);
    std::fs::create_dir_all(previous.parent().unwrap())?;
    std::fs::write(
        &previous,
        "2026-01-01T00:00:00Z stdout F from the last run\n",
    )?;

    let id = format!("web-main-{}", std::process::id());
    let labels = [
        ("io.kubernetes.pod.namespace", NS),
        ("io.kubernetes.pod.name", POD),
        ("io.kubernetes.pod.uid", UID),
        ("io.kubernetes.container.name", CONTAINER),
        ("skiff.io/restart-count", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let spec = spec(
        &root,
        &[
            "sh",
            "-c",
            "echo hello; echo oops >&2; sleep 2; echo world; sleep 30",
        ],
    );
    containerd
        .client()
        .containers()
        .create(containerd.request(CreateContainerRequest {
            container: Some(Container {
                id: id.clone(),
                labels,
                runtime: Some(Runtime {
                    name: "io.containerd.runc.v2".into(),
                    options: None,
                }),
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                    value: serde_json::to_vec(&spec)?,
                }),
                ..Default::default()
            }),
        }))
        .await
        .context("create container")?;
    // A copy: the shared target directory's binary may be rebuilt while the test runs.
    let exe = dir.join("skiff-node");
    std::fs::copy(env!("CARGO_BIN_EXE_skiff-node"), &exe)?;
    let uri = logs::log_uri(&exe, &log_path, &LogLimits::default());
    let created = containerd
        .client()
        .tasks()
        .create(containerd.request(CreateTaskRequest {
            container_id: id.clone(),
            stdout: uri.clone(),
            stderr: uri,
            ..Default::default()
        }))
        .await
        .with_context(|| format!("create task; containerd log:\n{}", daemon.log()))?
        .into_inner();
    let mut guard = KillOnDrop {
        pid: created.pid,
        socket: daemon.address().to_path_buf(),
    };
    containerd
        .client()
        .tasks()
        .start(containerd.request(StartRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        }))
        .await
        .context("start task")?;

    // The log driver writes CRI records.
    let deadline = Instant::now() + Duration::from_secs(20);
    let content = loop {
        let content = std::fs::read_to_string(&log_path).unwrap_or_default();
        if content.contains(" stdout F hello\n") && content.contains(" stderr F oops\n") {
            break content;
        }
        assert!(
            Instant::now() < deadline,
            "no CRI lines in {}: {content:?}",
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for line in content.lines() {
        let record = logs::cri::parse(line.as_bytes());
        assert!(record.is_some(), "not a CRI record: {line:?}");
    }

    // The node API with mutual TLS.
    let pki = make_pki();
    let serving =
        tls::load_or_create_serving_cert(&dir.join("pki"), "localhost", &["127.0.0.1".parse()?])?;
    let config = tls::server_config(&serving, pki.ca_pem.as_bytes())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let node = Arc::new(Node {
        containerd: containerd.clone(),
        pod_logs_dir: pod_logs.clone(),
        fifo_dir: dir.join("exec"),
        image_import: server::images::ImageImport::new(dir.join("imports"), 1 << 20),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, config, node, async {
        let _ = stop_rx.await;
    }));
    let trusted = client_config(
        &serving.cert_pem,
        Some((&pki.client_cert_pem, &pki.client_key_pem)),
    );

    let (status, body) = get_all(addr, trusted.clone(), "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let logs_path = format!("/containerLogs/{NS}/{POD}/{CONTAINER}");
    let (status, body) = get_all(addr, trusted.clone(), &format!("{logs_path}?tailLines=2")).await;
    assert_eq!(status, 200, "{body}");
    // stdout and stderr race each other into the file; both lines, in either order.
    let mut lines: Vec<&str> = body.lines().collect();
    lines.sort();
    assert_eq!(lines, ["hello", "oops"], "{body:?}");
    let (_, body) = get_all(
        addr,
        trusted.clone(),
        &format!("{logs_path}?tailLines=1&timestamps=true"),
    )
    .await;
    assert!(
        (body.ends_with("Z oops\n") || body.ends_with("Z hello\n")) && body.starts_with("20"),
        "{body:?}"
    );
    let (status, body) =
        get_all(addr, trusted.clone(), &format!("{logs_path}?previous=true")).await;
    assert_eq!((status, body.as_str()), (200, "from the last run\n"));
    let (status, _) = get_all(
        addr,
        trusted.clone(),
        &format!("/containerLogs/{NS}/{POD}/nope"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = get_all(addr, trusted.clone(), &format!("{logs_path}?tailLines=x")).await;
    assert_eq!(status, 400);

    // Follow: "world" arrives two seconds after "hello", on the same response.
    let (status, mut rx) = get(addr, trusted.clone(), &format!("{logs_path}?follow=true")).await?;
    assert_eq!(status, 200);
    let mut followed = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !followed.contains("world\n") {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(chunk)) => followed.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("follow ended early ({other:?}) after {followed:?}"),
        }
    }
    assert!(followed.contains("hello\n"), "{followed:?}");
    drop(rx);

    // Exec.
    let (out, err, status) = exec(
        addr,
        trusted.clone(),
        "command=echo&command=hi&stdout=true&stderr=true",
        None,
    )
    .await?;
    assert_eq!((out.as_str(), err.as_str()), ("hi\n", ""), "{status}");
    assert_eq!(status["status"], "Success", "{status}");
    let (out, _, status) = exec(
        addr,
        trusted.clone(),
        "command=sh&command=-c&command=echo+%24GREETING&stdout=true",
        None,
    )
    .await?;
    assert_eq!(
        out, "from-spec\n",
        "exec runs with the container's environment: {status}"
    );
    let (_, err, status) = exec(
        addr,
        trusted.clone(),
        "command=sh&command=-c&command=echo+bad+%3E%262%3B+exit+3&stdout=true&stderr=true",
        None,
    )
    .await?;
    assert_eq!(err, "bad\n");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    let (out, _, status) = exec(
        addr,
        trusted.clone(),
        "command=cat&stdin=true&stdout=true",
        Some(b"piped in\n"),
    )
    .await?;
    assert_eq!(out, "piped in\n");
    assert_eq!(status["status"], "Success", "{status}");
    let (out, _, status) = exec(
        addr,
        trusted.clone(),
        "command=sh&command=-c&command=tty&stdout=true&tty=true",
        None,
    )
    .await?;
    assert!(out.starts_with("/dev/pts/"), "tty exec: {out:?} {status}");
    let (_, _, status) = exec(
        addr,
        trusted.clone(),
        "command=no-such-binary&stdout=true",
        None,
    )
    .await?;
    assert_eq!(status["status"], "Failure", "{status}");

    // Nothing without a client certificate from the cluster CA.
    let anonymous = client_config(&serving.cert_pem, None);
    let refused = match get(addr, anonymous, "/healthz").await {
        Err(_) => true,
        Ok((status, _)) => status == 401 || status == 403,
    };
    assert!(refused, "a client without a certificate was served");
    let stranger = make_pki();
    let other_ca = client_config(
        &serving.cert_pem,
        Some((&stranger.client_cert_pem, &stranger.client_key_pem)),
    );
    assert!(
        get(addr, other_ca, "/healthz").await.is_err(),
        "a certificate of another CA was accepted"
    );

    // The whole path: a real skiff-master proxies kubectl's logs and exec to a node server that
    // trusts the master's cluster CA.
    through_the_master(&containerd, &dir, &pod_logs).await?;

    // Stop the container; a follower then ends on its own.
    let tasks = containerd.client().tasks();
    let (status, mut rx) = get(addr, trusted.clone(), &format!("{logs_path}?follow=true")).await?;
    assert_eq!(status, 200);
    let mut tasks2 = tasks.clone();
    tasks2
        .kill(containerd.request(KillRequest {
            container_id: id.clone(),
            exec_id: String::new(),
            signal: libc::SIGKILL as u32,
            all: true,
        }))
        .await?;
    let mut tasks3 = tasks.clone();
    tokio::time::timeout(
        Duration::from_secs(20),
        tasks3.wait(containerd.request(WaitRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        })),
    )
    .await??;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while rx.recv().await.is_some() {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "follow did not end when the container stopped"
    );

    let mut tasks4 = tasks.clone();
    tasks4
        .delete(containerd.request(DeleteTaskRequest {
            container_id: id.clone(),
        }))
        .await?;
    containerd
        .client()
        .containers()
        .delete(containerd.request(DeleteContainerRequest { id }))
        .await?;
    // Deleted: its PID is no longer ours to signal.
    guard.pid = 0;
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(())
}

/// The skiff-master binary of this workspace's build (beside this test's directory).
fn master_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target directory")?;
    let master = debug.join("skiff-master");
    anyhow::ensure!(
        master.exists(),
        "{} is missing: build it first (cargo build -p skiff-master)",
        master.display()
    );
    // A copy: the shared target directory's binary may be rebuilt while the test runs.
    let copy = std::env::temp_dir().join(format!("skiff-master-{}", std::process::id()));
    std::fs::copy(&master, &copy)?;
    Ok(copy)
}

async fn through_the_master(
    containerd: &Containerd,
    dir: &Path,
    pod_logs: &Path,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{Node as NodeObject, Pod};
    use kube::api::{Api, Patch, PatchParams, PostParams};

    let binary = master_binary()?;
    let master = skiff_master::testing::Master::start(&binary, None, &[]);
    let _ = std::fs::remove_file(&binary);
    let master = master?;
    let client = master.client().await?;

    // The node server, trusting the cluster CA from the kubeconfig, as the agent does.
    let ca = tls::cluster_ca_from_kubeconfig(&master.kubeconfig)?;
    let serving =
        tls::load_or_create_serving_cert(&dir.join("pki2"), "localhost", &["127.0.0.1".parse()?])?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let node = Arc::new(Node {
        containerd: containerd.clone(),
        pod_logs_dir: pod_logs.to_path_buf(),
        fifo_dir: dir.join("exec2"),
        image_import: server::images::ImageImport::new(dir.join("imports2"), 1 << 20),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(
        listener,
        tls::server_config(&serving, &ca)?,
        node,
        async {
            let _ = stop_rx.await;
        },
    ));

    let nodes: Api<NodeObject> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}
            }))?,
        )
        .await?;
    nodes
        .patch_status(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                "conditions": [{"type": "Ready", "status": "True"}]
            }})),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": POD},
            "spec": {"nodeName": "node-a", "containers": [{"name": CONTAINER, "image": "busybox"}]}
        }))?,
    )
    .await?;

    let run = |args: &[&str]| -> anyhow::Result<(i32, String, String)> {
        let out = master.kubectl(args)?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (code, out, err) = run(&["logs", POD, "--tail=5"])?;
    assert_eq!(code, 0, "kubectl logs: {err}");
    assert!(
        out.contains("hello\n") && out.contains("world\n"),
        "kubectl logs: {out:?}"
    );
    follow_with_kubectl(&master.kubeconfig)?;
    let (code, _, err) = run(&["logs", "no-such-pod"])?;
    assert_ne!(code, 0);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "unbound"},
            "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "busybox"}]}
        }))?,
    )
    .await?;
    let (code, _, err) = run(&["logs", "unbound"])?;
    assert_ne!(code, 0);
    assert!(err.contains("does not have a host assigned"), "{err}");
    let (code, out, err) = run(&["logs", POD, "-c", "nope"])?;
    assert_ne!(code, 0);
    assert!(err.contains("container nope is not valid"), "{out} {err}");
    let (code, out, err) = run(&["exec", POD, "--", "echo", "hi"])?;
    assert_eq!((code, out.as_str()), (0, "hi\n"), "kubectl exec: {err}");
    let (code, _, err) = run(&["exec", POD, "--", "sh", "-c", "exit 3"])?;
    assert_eq!(code, 3, "kubectl exec exit code: {err}");
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&master.kubeconfig)
        .args(["exec", "-i", POD, "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"through the master\n")?;
            child.wait_with_output()
        })?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through the master\n",
        "kubectl exec -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(())
}

/// `kubectl logs -f` streams through the master: the records already written arrive while the
/// container still runs (it sleeps), then kubectl is stopped (by its PID).
fn follow_with_kubectl(kubeconfig: &Path) -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut child = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["logs", "-f", POD])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut stdout = child.stdout.take().context("kubectl stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("world\n") {
                let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
                return;
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
    });
    let seen = rx.recv_timeout(Duration::from_secs(20));
    // Still following (the container runs): kubectl has not exited on its own.
    let still_running = child.try_wait()?.is_none();
    let _ = child.kill();
    let _ = child.wait();
    let seen = seen.context("kubectl logs -f printed nothing in 20 s")?;
    assert!(
        seen.contains("hello\n") && seen.contains("world\n"),
        "{seen:?}"
    );
    assert!(
        still_running,
        "kubectl logs -f ended while the container runs"
    );
    Ok(())
}
