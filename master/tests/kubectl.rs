//! End-to-end: the real `kubectl` against a real `skiff-master`, on both store backends.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use skiff_master::testing::Master;

fn start_master(etcd_servers: Option<&str>) -> Master {
    let binary = Path::new(env!("CARGO_BIN_EXE_skiff-master"));
    Master::start(binary, etcd_servers, &[]).unwrap_or_else(|e| panic!("{e:#}"))
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
    let applied = ok(master, &["apply", "-f", manifest]);
    assert!(applied.contains("configmap/settings created"), "{applied}");
    assert!(applied.contains("deployment.apps/web created"), "{applied}");
    let again = ok(master, &["apply", "-f", manifest]);
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
    // these go through manifests, which kubectl sends as JSON.) kubectl validates them through
    // the server: /openapi/v3 says the server checks fields.
    let cm = |name: &str, ns: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}})
            .to_string()
    };
    let exists = write(dir.path(), "exists.json", &cm("settings", "demo"));
    let exists = fails(master, &["create", "-f", exists.to_str().unwrap()]);
    assert!(exists.contains("AlreadyExists"), "{exists}");
    let invalid = write(dir.path(), "invalid.json", &cm("Bad_Name", "demo"));
    let invalid = fails(master, &["create", "-f", invalid.to_str().unwrap()]);
    assert!(
        invalid.contains("is invalid") && invalid.contains("RFC 1123"),
        "{invalid}"
    );
    let protobuf = fails(master, &["-n", "demo", "create", "configmap", "imperative"]);
    assert!(protobuf.contains("unknown format"), "{protobuf}");
    let elsewhere = write(dir.path(), "elsewhere.json", &cm("c", "nowhere"));
    let no_ns = fails(master, &["create", "-f", elsewhere.to_str().unwrap()]);
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
    let too_large = fails(master, &["create", "-f", big.to_str().unwrap()]);
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
        &["create", "-f", &object("Namespace", "watched", None)],
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
        &["create", "-f", &object("ConfigMap", "one", Some("watched"))],
    );
    ok(
        master,
        &["create", "-f", &object("ConfigMap", "two", Some("watched"))],
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
    what_kubectl_shows(&master);
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
    what_kubectl_shows(&master);
    drop(master);
    drop(etcd);
}

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: "busybox:1", ports: [{containerPort: 80}]}
      - {name: side, image: "busybox:1"}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {app: db}
  ports: [{port: 5432}]
"#;

fn jsonpath(master: &Master, args: &[&str], path: &str) -> String {
    let mut full = args.to_vec();
    let expr = format!("jsonpath={path}");
    full.extend(["-o", &expr]);
    ok(master, &full)
}

/// Tables, explain, describe, scale, the three patch types, strict validation and Service
/// allocation, as kubectl users see them.
fn what_kubectl_shows(master: &Master) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write(dir.path(), "shop.yaml", WORKLOADS);
    let manifest = manifest.to_str().unwrap();
    ok(master, &["apply", "-f", manifest]);

    // Server-side Tables: the familiar columns.
    let deployments = ok(master, &["-n", "shop", "get", "deployments"]);
    let header: Vec<&str> = deployments
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{deployments}"
    );
    assert!(deployments.contains("0/2"), "{deployments}");
    let services = ok(master, &["-n", "shop", "get", "services"]);
    assert!(
        services.starts_with("NAME")
            && services.contains("CLUSTER-IP")
            && services.contains("PORT(S)"),
        "{services}"
    );
    assert!(
        services.contains("NodePort") && services.contains("80:3"),
        "{services}"
    );
    let wide = ok(master, &["-n", "shop", "get", "deployments", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINERS") && wide.contains("web,side"),
        "{wide}"
    );

    // Service allocation: distinct IPs in 10.96.0.0/12, a node port in 30000-32767.
    let ip_of = |name: &str| {
        jsonpath(
            master,
            &["-n", "shop", "get", "svc", name],
            "{.spec.clusterIP}",
        )
    };
    let (web_ip, db_ip) = (ip_of("web"), ip_of("db"));
    for ip in [&web_ip, &db_ip] {
        let octets: Vec<u8> = ip.split('.').filter_map(|o| o.parse().ok()).collect();
        assert!(
            octets.len() == 4 && octets[0] == 10 && (96..112).contains(&octets[1]),
            "{ip}"
        );
    }
    assert_ne!(web_ip, db_ip);
    let node_port: u16 = jsonpath(
        master,
        &["-n", "shop", "get", "svc", "web"],
        "{.spec.ports[0].nodePort}",
    )
    .parse()
    .unwrap();
    assert!((30000..=32767).contains(&node_port), "{node_port}");
    let taken = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "thief", "namespace": "shop"},
        "spec": {"clusterIP": web_ip, "ports": [{"port": 1}]}});
    let taken = write(dir.path(), "thief.json", &taken.to_string());
    let refused = fails(master, &["create", "-f", taken.to_str().unwrap()]);
    assert!(refused.contains("already allocated"), "{refused}");

    // -o yaml, describe, explain.
    let yaml = ok(
        master,
        &["-n", "shop", "get", "deploy", "web", "-o", "yaml"],
    );
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("name: side"),
        "{yaml}"
    );
    let described = ok(master, &["-n", "shop", "describe", "deployment", "web"]);
    assert!(
        described.contains("Replicas:") && described.contains("busybox:1"),
        "{described}"
    );
    let explained = ok(master, &["explain", "deployment.spec.strategy"]);
    assert!(
        explained.contains("rollingUpdate") && explained.contains("DeploymentStrategy"),
        "{explained}"
    );

    // Strategic merge by container name keeps the other container; apply updates one image.
    ok(
        master,
        &[
            "-n",
            "shop",
            "set",
            "image",
            "deployment/web",
            "side=busybox:2",
        ],
    );
    let images = || {
        jsonpath(
            master,
            &["-n", "shop", "get", "deploy", "web"],
            "{.spec.template.spec.containers[*].image}",
        )
    };
    assert_eq!(images(), "busybox:1 busybox:2");
    ok(
        master,
        &[
            "-n",
            "shop",
            "patch",
            "deploy",
            "web",
            "--type=strategic",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"A","value":"1"}]}]}}}}"#,
        ],
    );
    assert_eq!(images(), "busybox:1 busybox:2");
    let env = jsonpath(
        master,
        &["-n", "shop", "get", "deploy", "web"],
        "{.spec.template.spec.containers[0].env[0].value}",
    );
    assert_eq!(env, "1");
    let reapplied = write(
        dir.path(),
        "shop2.yaml",
        &WORKLOADS.replace(
            "{name: web, image: \"busybox:1\"",
            "{name: web, image: \"busybox:3\"",
        ),
    );
    ok(master, &["apply", "-f", reapplied.to_str().unwrap()]);
    // (Apply sets every field its manifest names, so `side` goes back to busybox:1.)
    assert_eq!(images(), "busybox:3 busybox:1");

    // Scale through the scale subresource.
    let scaled = ok(
        master,
        &["-n", "shop", "scale", "deployment", "web", "--replicas=5"],
    );
    assert!(scaled.contains("scaled"), "{scaled}");
    assert_eq!(
        jsonpath(
            master,
            &["-n", "shop", "get", "deploy", "web"],
            "{.spec.replicas}"
        ),
        "5"
    );

    // The server checks fields: an unknown one is refused, a wrong selector is Invalid.
    let typo = write(
        dir.path(),
        "typo.yaml",
        &WORKLOADS.replace("replicas: 2", "replicas: 2\n  replicaz: 3"),
    );
    let refused = fails(master, &["apply", "-f", typo.to_str().unwrap()]);
    assert!(
        refused.contains("unknown field \"spec.replicaz\""),
        "{refused}"
    );
    let mismatch = write(
        dir.path(),
        "mismatch.yaml",
        &WORKLOADS.replace("labels: {app: web}", "labels: {app: other}"),
    );
    let refused = fails(master, &["apply", "-f", mismatch.to_str().unwrap()]);
    assert!(
        refused.contains("selector") && refused.contains("does not match"),
        "{refused}"
    );

    // Deleting a Service frees its IP for the next one.
    ok(master, &["-n", "shop", "delete", "svc", "web", "--wait"]);
    ok(master, &["create", "-f", taken.to_str().unwrap()]);
    assert_eq!(ip_of("thief"), web_ip);
}
