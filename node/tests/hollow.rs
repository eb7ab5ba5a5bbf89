//! End-to-end: `skiff-node hollow` against a real `skiff-master` process.
//!
//! The master binary is `$SKIFF_MASTER_BIN`, else `skiff-master` in this test's profile
//! directory (`target/debug` or `target/release`), else in the other one; build it first with
//! `cargo build -p skiff-master` (`cargo test --workspace` does).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_master::testing::Master;

const NODES: usize = 20;
/// How long anything may take on a busy machine.
const WAIT: Duration = Duration::from_secs(60);

fn master_binary() -> PathBuf {
    skiff_node::testing::master_binary().unwrap_or_else(|e| panic!("{e:#}"))
}

/// A `skiff-node hollow` process, killed on drop.
struct Hollow {
    child: Option<Child>,
    log: PathBuf,
}

impl Hollow {
    fn start(master: &Master, args: &[&str]) -> Hollow {
        let log = master.dir().join("hollow.log");
        let child = Command::new(env!("CARGO_BIN_EXE_skiff-node"))
            .arg("hollow")
            .arg("--kubeconfig")
            .arg(&master.kubeconfig)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create hollow.log"))
            .spawn()
            .expect("start skiff-node hollow");
        Hollow {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("still running");
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait for skiff-node") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("skiff-node did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Hollow {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` until it returns `Some`, or fails the test naming `what`.
async fn eventually<T, F, Fut>(hollow: &Hollow, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; hollow log:\n{}",
                hollow.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn client(master: &Master) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(&master.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("client config");
    kube::Client::try_from(config).expect("client")
}

fn pod(name: &str, node: &str, extra: serde_json::Value) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
    });
    merge(&mut pod, extra);
    serde_json::from_value(pod).expect("a pod")
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(into), serde_json::Value::Object(from)) => {
            for (k, v) in from {
                merge(into.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (into, from) => *into = from,
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn renew_times(leases: &[Lease]) -> BTreeMap<String, Timestamp> {
    leases
        .iter()
        .filter(|l| {
            l.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("hollow-"))
        })
        .map(|l| {
            let renewed = l.spec.as_ref().and_then(|s| s.renew_time.as_ref());
            (
                l.metadata.name.clone().unwrap_or_default(),
                renewed.map_or(Timestamp::UNIX_EPOCH, |t| t.0),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hollow_nodes_register_renew_and_run_pods() {
    // No garbage collector or Job controller: the test's Job-owned pod has no real Job.
    let master = Master::start(
        &master_binary(),
        None,
        &["--controllers", "*,-garbagecollector,-job"],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let mut hollow = Hollow::start(
        &master,
        &[
            "--count",
            &NODES.to_string(),
            "--renew-interval",
            "1",
            "--lease-duration-seconds",
            "10",
            "--job-duration",
            "1500",
            "--zones",
            "3",
        ],
    );
    let client = client(&master).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    // 20 nodes, all Ready, with their labels and fake addresses.
    let registered = eventually(&hollow, "20 Ready hollow nodes", || async {
        let list = nodes
            .list(&ListParams::default().labels("node.skiff.io/hollow=true"))
            .await
            .ok()?;
        (list.items.len() == NODES && list.items.iter().all(ready)).then_some(list.items)
    })
    .await;
    let node3 = registered
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some("hollow-3"))
        .expect("hollow-3");
    let labels = node3.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["kubernetes.io/hostname"], "hollow-3");
    assert_eq!(labels["topology.kubernetes.io/zone"], "zone-0");
    let status = node3.status.clone().unwrap_or_default();
    assert_eq!(status.capacity.unwrap_or_default()["pods"].0, "110");
    assert_eq!(
        status.node_info.map(|i| i.kubelet_version).as_deref(),
        Some("v1.33.0-skiff-hollow")
    );
    eventually(&hollow, "the start-up summary in the log", || async {
        hollow
            .log()
            .contains("hollow: registered 20 nodes")
            .then_some(())
    })
    .await;

    // Every lease is renewed: its renewTime moves on.
    let first = eventually(&hollow, "20 node leases", || async {
        let times = renew_times(&leases.list(&ListParams::default()).await.ok()?.items);
        (times.len() == NODES).then_some(times)
    })
    .await;
    eventually(&hollow, "every lease renewed", || async {
        let now = renew_times(&leases.list(&ListParams::default()).await.ok()?.items);
        first
            .iter()
            .all(|(name, t)| now.get(name) > Some(t))
            .then_some(())
    })
    .await;

    // A node set NotReady (as the node lifecycle controller does) is Ready again at once.
    let unknown = json!({"status": {"conditions": [{
        "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
        "lastHeartbeatTime": "2020-01-01T00:00:00Z", "lastTransitionTime": "2020-01-01T00:00:00Z",
    }]}});
    nodes
        .patch_status("hollow-7", &PatchParams::default(), &Patch::Merge(&unknown))
        .await
        .expect("mark hollow-7 Unknown");
    eventually(&hollow, "hollow-7 Ready again", || async {
        ready(&nodes.get("hollow-7").await.ok()?).then_some(())
    })
    .await;

    // A bound pod becomes Running with a pod IP; a Job's pod Succeeds; a pod exiting with 3
    // and restartPolicy Never Fails; a pod bound elsewhere is left alone.
    let post = PostParams::default();
    let job_owner = json!({"metadata": {"ownerReferences": [{
        "apiVersion": "batch/v1", "kind": "Job", "name": "batch",
        "uid": "0b5a6c1e-0000-4000-8000-000000000001", "controller": true,
    }]}, "spec": {"restartPolicy": "Never"}});
    let failing = json!({
        "metadata": {"annotations": {"hollow.skiff.io/exit-code": "3"}},
        "spec": {"restartPolicy": "Never"},
    });
    for pod in [
        pod("web", "hollow-3", json!({})),
        pod("batch-1", "hollow-4", job_owner),
        pod("crash", "hollow-5", failing),
        pod("elsewhere", "not-a-hollow-node", json!({})),
    ] {
        pods.create(&post, &pod).await.expect("create a pod");
    }

    let web = eventually(&hollow, "pod web Running", || async {
        let pod = pods.get("web").await.ok()?;
        (phase(&pod) == "Running").then_some(pod)
    })
    .await;
    let status = web.status.unwrap_or_default();
    let pod_ip: std::net::Ipv4Addr = status
        .pod_ip
        .as_deref()
        .expect("a pod IP")
        .parse()
        .expect("an IPv4 pod IP");
    let node3 = nodes.get("hollow-3").await.expect("hollow-3");
    match node3.spec.and_then(|s| s.pod_cidr) {
        Some(cidr) => {
            let (base, _) = cidr.split_once('/').expect("a CIDR");
            let base: std::net::Ipv4Addr = base.parse().expect("an IPv4 podCIDR");
            assert_eq!(
                pod_ip.octets()[..3],
                base.octets()[..3],
                "{pod_ip} in {cidr}"
            );
        }
        None => assert_eq!(pod_ip.octets()[..3], [10, 200, 3], "{pod_ip}"),
    }
    assert_eq!(status.host_ip.as_deref(), Some("10.250.0.4"));
    let main = &status.container_statuses.expect("container statuses")[0];
    assert!(main.ready && main.state.as_ref().is_some_and(|s| s.running.is_some()));

    let batch = eventually(&hollow, "pod batch-1 Succeeded", || async {
        let pod = pods.get("batch-1").await.ok()?;
        (phase(&pod) == "Succeeded").then_some(pod)
    })
    .await;
    let done = batch
        .status
        .unwrap_or_default()
        .container_statuses
        .unwrap_or_default();
    let terminated = done[0].state.as_ref().and_then(|s| s.terminated.as_ref());
    assert_eq!(terminated.map(|t| t.exit_code), Some(0));

    let crash = eventually(&hollow, "pod crash Failed", || async {
        let pod = pods.get("crash").await.ok()?;
        (phase(&pod) == "Failed").then_some(pod)
    })
    .await;
    let done = crash
        .status
        .unwrap_or_default()
        .container_statuses
        .unwrap_or_default();
    let terminated = done[0].state.as_ref().and_then(|s| s.terminated.as_ref());
    assert_eq!(
        terminated.map(|t| (t.exit_code, t.reason.clone())),
        Some((3, Some("Error".to_string())))
    );

    let elsewhere = pods.get("elsewhere").await.expect("pod elsewhere");
    assert_ne!(phase(&elsewhere), "Running", "not on a hollow node");

    // Deleting a pod on a hollow node: the API server marks it (graceful deletion) and the
    // hollow kubelet finishes with a grace-0 delete, so it goes.
    pods.delete("web", &DeleteParams::default())
        .await
        .expect("delete pod web");
    eventually(&hollow, "pod web gone", || async {
        match pods.get("web").await {
            Err(kube::Error::Api(s)) if s.code == 404 => Some(()),
            _ => None,
        }
    })
    .await;

    // SIGTERM: a clean stop; the nodes stay registered.
    let status = hollow.terminate();
    assert!(status.success(), "{status}: {}", hollow.log());
    let left = nodes
        .list(&ListParams::default().labels("node.skiff.io/hollow=true"))
        .await
        .expect("list nodes");
    assert_eq!(left.items.len(), NODES);
}
