//! End-to-end: the real `kubectl` against a real `skiff-master`, on both store backends.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Master {
    child: Child,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_master(etcd_servers: Option<&str>) -> Master {
    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = dir.path().join("admin.kubeconfig");
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff-master"));
    cmd.arg("--data-dir")
        .arg(dir.path())
        .args([
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &port.to_string(),
        ])
        .arg("--admin-kubeconfig")
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("master.log")).expect("log file"));
    if let Some(servers) = etcd_servers {
        cmd.args(["--etcd-servers", servers]);
    }
    let child = cmd.spawn().expect("start skiff-master");
    let master = Master {
        child,
        kubeconfig,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if master.kubeconfig.exists()
            && kubectl(&master, &["get", "--raw", "/readyz"])
                .status
                .success()
        {
            return master;
        }
        assert!(
            Instant::now() < deadline,
            "skiff-master did not become ready: {}",
            std::fs::read_to_string(master._dir.path().join("master.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kubectl(master: &Master, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&master.kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl (install it with cluster/install-deps.sh)")
}

/// Runs kubectl and returns stdout, failing the test with stderr if it fails.
fn ok(master: &Master, args: &[&str]) -> String {
    let out = kubectl(master, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs kubectl expecting failure; returns stderr.
fn fails(master: &Master, args: &[&str]) -> String {
    let out = kubectl(master, args);
    assert!(!out.status.success(), "kubectl {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: demo
  labels: {app: web}
data:
  mode: fast
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: busybox}]
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write manifest");
    path
}

fn basic_verbs(master: &Master) {
    let namespaces = ok(master, &["get", "namespaces", "-o", "name"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            namespaces.contains(&format!("namespace/{ns}")),
            "{namespaces}"
        );
    }
    let resources = ok(master, &["api-resources", "-o", "name"]);
    for r in [
        "pods",
        "deployments.apps",
        "endpointslices.discovery.k8s.io",
        "leases.coordination.k8s.io",
    ] {
        assert!(
            resources.lines().any(|l| l == r),
            "api-resources lacks {r}: {resources}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let manifest = write(dir.path(), "m.yaml", MANIFEST);
    let manifest = manifest.to_str().unwrap();
    let applied = ok(master, &["apply", "--validate=false", "-f", manifest]);
    assert!(applied.contains("configmap/settings created"), "{applied}");
    assert!(applied.contains("deployment.apps/web created"), "{applied}");
    let again = ok(master, &["apply", "--validate=false", "-f", manifest]);
    assert!(again.contains("deployment.apps/web unchanged"), "{again}");

    let cm: serde_json::Value = serde_json::from_str(&ok(
        master,
        &["-n", "demo", "get", "cm", "settings", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(cm["data"]["mode"], "fast");
    assert!(cm["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| u.len() == 36));
    let rv1: i64 = cm["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    ok(
        master,
        &["-n", "demo", "label", "cm", "settings", "tier=front"],
    );
    ok(
        master,
        &[
            "-n",
            "demo",
            "patch",
            "cm",
            "settings",
            "--type=merge",
            "-p",
            r#"{"data":{"mode":"slow"}}"#,
        ],
    );
    ok(
        master,
        &[
            "-n",
            "demo",
            "patch",
            "cm",
            "settings",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/data/x","value":"1"}]"#,
        ],
    );
    let selected = ok(
        master,
        &[
            "-n",
            "demo",
            "get",
            "cm",
            "-l",
            "tier=front,app in (web)",
            "-o",
            "jsonpath={.items[*].data}",
        ],
    );
    assert_eq!(selected, r#"{"mode":"slow","x":"1"}"#);
    let none = ok(
        master,
        &["-n", "demo", "get", "cm", "-l", "tier=back", "-o", "name"],
    );
    assert_eq!(none.trim(), "");
    let rv2: i64 = ok(
        master,
        &[
            "-n",
            "demo",
            "get",
            "cm",
            "settings",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    )
    .parse()
    .unwrap();
    assert!(rv2 > rv1, "resourceVersion moves forward: {rv1} -> {rv2}");

    // Spec changes bump generation; metadata changes do not.
    let generation = |m: &Master| {
        ok(
            m,
            &[
                "-n",
                "demo",
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.metadata.generation}",
            ],
        )
    };
    assert_eq!(generation(master), "1");
    ok(master, &["-n", "demo", "label", "deploy", "web", "x=y"]);
    assert_eq!(generation(master), "1");
    ok(
        master,
        &[
            "-n",
            "demo",
            "patch",
            "deploy",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":3}}"#,
        ],
    );
    assert_eq!(generation(master), "2");

    // (kubectl's imperative `create configmap` sends protobuf, which Skiff does not speak yet:
    // these go through manifests, which kubectl sends as JSON.)
    let cm = |name: &str, ns: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}})
            .to_string()
    };
    let exists = write(dir.path(), "exists.json", &cm("settings", "demo"));
    let exists = fails(
        master,
        &["create", "--validate=false", "-f", exists.to_str().unwrap()],
    );
    assert!(exists.contains("AlreadyExists"), "{exists}");
    let invalid = write(dir.path(), "invalid.json", &cm("Bad_Name", "demo"));
    let invalid = fails(
        master,
        &[
            "create",
            "--validate=false",
            "-f",
            invalid.to_str().unwrap(),
        ],
    );
    assert!(
        invalid.contains("is invalid") && invalid.contains("RFC 1123"),
        "{invalid}"
    );
    let protobuf = fails(master, &["-n", "demo", "create", "configmap", "imperative"]);
    assert!(protobuf.contains("unknown format"), "{protobuf}");
    let elsewhere = write(dir.path(), "elsewhere.json", &cm("c", "nowhere"));
    let no_ns = fails(
        master,
        &[
            "create",
            "--validate=false",
            "-f",
            elsewhere.to_str().unwrap(),
        ],
    );
    assert!(no_ns.contains("not found"), "{no_ns}");

    let deleted = ok(
        master,
        &["-n", "demo", "delete", "cm", "settings", "--wait"],
    );
    assert!(deleted.contains("deleted"), "{deleted}");
    let gone = fails(master, &["-n", "demo", "get", "cm", "settings"]);
    assert!(gone.contains("NotFound"), "{gone}");

    let unauthorized = fails(master, &["--token", "not-the-token", "get", "namespaces"]);
    assert!(
        unauthorized.contains("Unauthorized") || unauthorized.contains("credentials"),
        "{unauthorized}"
    );

    let big = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "big", "namespace": "demo"},
        "data": {"blob": "x".repeat(3 * 1024 * 1024 + 10)},
    });
    let big = write(dir.path(), "big.json", &big.to_string());
    let too_large = fails(
        master,
        &["create", "--validate=false", "-f", big.to_str().unwrap()],
    );
    assert!(too_large.contains("RequestEntityTooLarge"), "{too_large}");
}

fn watch_sees_changes(master: &Master) {
    let dir = tempfile::tempdir().unwrap();
    let object = |kind: &str, name: &str, ns: Option<&str>| {
        let mut meta = serde_json::json!({"name": name});
        if let Some(ns) = ns {
            meta["namespace"] = ns.into();
        }
        let path = write(
            dir.path(),
            &format!("{name}.json"),
            &serde_json::json!({"apiVersion": "v1", "kind": kind, "metadata": meta}).to_string(),
        );
        path.to_str().unwrap().to_string()
    };
    ok(
        master,
        &[
            "create",
            "--validate=false",
            "-f",
            &object("Namespace", "watched", None),
        ],
    );
    let mut watcher = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&master.kubeconfig)
        .args([
            "-n",
            "watched",
            "get",
            "configmaps",
            "--watch",
            "-o",
            "name",
            "--request-timeout=20s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get --watch");
    std::thread::sleep(Duration::from_millis(500));
    ok(
        master,
        &[
            "create",
            "--validate=false",
            "-f",
            &object("ConfigMap", "one", Some("watched")),
        ],
    );
    ok(
        master,
        &[
            "create",
            "--validate=false",
            "-f",
            &object("ConfigMap", "two", Some("watched")),
        ],
    );
    std::thread::sleep(Duration::from_millis(700));
    let _ = watcher.kill();
    let out = watcher.wait_with_output().expect("watch output");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains("configmap/one") && seen.contains("configmap/two"),
        "watch saw: {seen}"
    );
}

#[test]
fn kubectl_on_the_embedded_store() {
    let master = start_master(None);
    basic_verbs(&master);
    watch_sees_changes(&master);
}

#[test]
fn kubectl_on_etcd() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let etcd = rt
        .block_on(skiff_master::testing::Etcd::start())
        .expect("start etcd");
    let master = start_master(Some(&etcd.endpoint));
    basic_verbs(&master);
    watch_sees_changes(&master);
    drop(master);
    drop(etcd);
}
