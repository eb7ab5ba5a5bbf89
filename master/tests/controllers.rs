//! End-to-end: the scheduler and controllers of a real `skiff-master`, with hollow nodes
//! (`skiff-node hollow`) standing in for machines and the real `kubectl` as the user.
//!
//! Each test starts its own master and hollow nodes; node timings are compressed with the
//! master's flags so that unreachable nodes are noticed in seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use skiff_master::testing::{Etcd, Hollow, Master};

/// Flags that make node failures visible in seconds rather than minutes.
const FAST_NODES: &[&str] = &[
    "--node-monitor-period",
    "1s",
    "--node-monitor-grace-period",
    "5s",
    "--default-unreachable-toleration-seconds",
    "2",
    "--default-not-ready-toleration-seconds",
    "2",
];

fn master_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_skiff-master"))
}

fn start_master(etcd: Option<&str>, args: &[&str]) -> Master {
    Master::start(master_binary(), etcd, args).unwrap_or_else(|e| panic!("{e:#}"))
}

fn hollow(master: &Master, prefix: &str, start: usize, count: usize, args: &[&str]) -> Hollow {
    let binary = Hollow::binary_beside(master_binary()).unwrap_or_else(|e| panic!("{e:#}"));
    Hollow::start(&binary, master, prefix, start, count, args).unwrap_or_else(|e| panic!("{e:#}"))
}

async fn client(master: &Master) -> kube::Client {
    master.client().await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs kubectl and returns stdout, failing the test with its output if it fails.
fn ok(master: &Master, args: &[&str]) -> String {
    let out = master.kubectl(args).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}\nmaster log: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        master.log_tail()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(master: &Master, manifest: &str) {
    let path = write_temp(master, manifest);
    ok(master, &["apply", "-f", path.to_str().unwrap_or_default()]);
}

fn write_temp(master: &Master, text: &str) -> PathBuf {
    let path = master.dir().join(format!(
        "manifest-{}.yaml",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::write(&path, text).expect("write manifest");
    path
}

/// Polls `check` every 200 ms until it returns `Some`, or fails with `what` after `timeout`.
async fn eventually<T, F, Fut>(master: &Master, timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\nmaster log: {}",
                master.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pods(client: &kube::Client, ns: &str, selector: &str) -> Vec<Pod> {
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn is_running_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn image_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

async fn running(client: &kube::Client, ns: &str, selector: &str) -> Vec<Pod> {
    pods(client, ns, selector)
        .await
        .into_iter()
        .filter(is_running_ready)
        .collect()
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 50
  selector: {matchLabels: {app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 5, maxUnavailable: 5}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: registry.local/web:1
        ports: [{name: http, containerPort: 8080}]
        resources: {requests: {cpu: 100m, memory: 64Mi}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// A Deployment of 50 becomes 50 Running pods spread over the nodes, with an EndpointSlice;
/// `set image` rolls out without dropping below `replicas - maxUnavailable` available pods;
/// `rollout undo` returns to the first template; deleting the Deployment removes its
/// ReplicaSets and pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_out_and_back_and_is_collected() {
    let master = start_master(None, &[]);
    let _nodes = hollow(&master, "node-", 0, 5, &[]);
    let client = client(&master).await;
    apply(&master, WEB);

    let placed = eventually(
        &master,
        Duration::from_secs(60),
        "50 running web pods",
        || async {
            let pods = running(&client, "default", "app=web").await;
            (pods.len() == 50).then_some(pods)
        },
    )
    .await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for pod in &placed {
        *per_node.entry(node_of(pod)).or_default() += 1;
    }
    assert_eq!(per_node.len(), 5, "pods on every node: {per_node:?}");
    assert!(
        per_node.values().all(|&n| (5..=15).contains(&n)),
        "spread evenly: {per_node:?}"
    );

    // The Service's EndpointSlice lists all 50, resolved to the named port.
    let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(client.clone(), "default");
    eventually(
        &master,
        Duration::from_secs(30),
        "an EndpointSlice with 50 ready endpoints",
        || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .ok()?;
            let ready: usize = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .count();
            let port = list.items.first()?.ports.as_ref()?.first()?.port;
            (ready == 50 && port == Some(8080)).then_some(())
        },
    )
    .await;

    // Roll out a new image while sampling availability.
    ok(
        &master,
        &["set", "image", "deployment/web", "web=registry.local/web:2"],
    );
    let sampler = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut lowest = usize::MAX;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(120) {
                let available = running(&client, "default", "app=web").await.len();
                lowest = lowest.min(available);
                let done = pods(&client, "default", "app=web")
                    .await
                    .iter()
                    .filter(|p| is_running_ready(p) && image_of(p).ends_with(":2"))
                    .count();
                if done == 50 && available == 50 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            lowest
        })
    };
    ok(
        &master,
        &["rollout", "status", "deployment/web", "--timeout=120s"],
    );
    let lowest = sampler.await.expect("sampler");
    assert!(
        lowest >= 45,
        "availability fell to {lowest} during the rollout (maxUnavailable 5)"
    );
    let after = running(&client, "default", "app=web").await;
    assert!(
        after.iter().all(|p| image_of(p) == "registry.local/web:2"),
        "all pods on the new image"
    );

    // Undo returns to the first template, as a third revision.
    ok(&master, &["rollout", "undo", "deployment/web"]);
    ok(
        &master,
        &["rollout", "status", "deployment/web", "--timeout=120s"],
    );
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), "default");
    let web = deployments.get("web").await.expect("get deployment");
    let template_image = web
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone());
    assert_eq!(template_image.as_deref(), Some("registry.local/web:1"));
    assert_eq!(
        web.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision"))
            .map(String::as_str),
        Some("3")
    );
    eventually(
        &master,
        Duration::from_secs(60),
        "50 pods back on the first image",
        || async {
            let pods = running(&client, "default", "app=web").await;
            (pods.len() == 50 && pods.iter().all(|p| image_of(p).ends_with(":1"))).then_some(())
        },
    )
    .await;

    // Deleting the Deployment takes its ReplicaSets and pods with it.
    ok(&master, &["delete", "deployment", "web"]);
    let sets: kube::Api<ReplicaSet> = kube::Api::namespaced(client.clone(), "default");
    eventually(
        &master,
        Duration::from_secs(60),
        "the ReplicaSets and pods to be collected",
        || async {
            let rs = sets
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            let left = pods(&client, "default", "app=web").await;
            (rs.items.is_empty() && left.is_empty()).then_some(())
        },
    )
    .await;
}

/// A DaemonSet has one pod on each node, follows nodes that join and leave, and its pods are
/// placed on their own node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_follows_nodes() {
    let master = start_master(None, &[]);
    let _first = hollow(&master, "node-", 0, 3, &[]);
    let client = client(&master).await;
    apply(
        &master,
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: kube-system}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: agent, image: registry.local/agent:1}]
"#,
    );
    let on_nodes = |want: usize| {
        let client = client.clone();
        async move {
            let pods = running(&client, "kube-system", "app=agent").await;
            let nodes: BTreeSet<String> = pods.iter().map(node_of).collect();
            (pods.len() == want && nodes.len() == want).then_some(nodes)
        }
    };
    eventually(
        &master,
        Duration::from_secs(60),
        "3 agent pods on 3 nodes",
        || on_nodes(3),
    )
    .await;

    let _second = hollow(&master, "node-", 3, 2, &[]);
    let nodes = eventually(
        &master,
        Duration::from_secs(60),
        "5 agent pods after 2 nodes joined",
        || on_nodes(5),
    )
    .await;
    assert!(nodes.contains("node-4"), "{nodes:?}");

    ok(&master, &["delete", "node", "node-4"]);
    let nodes = eventually(
        &master,
        Duration::from_secs(60),
        "4 agent pods after a node left",
        || on_nodes(4),
    )
    .await;
    assert!(!nodes.contains("node-4"), "{nodes:?}");
    ok(
        &master,
        &[
            "rollout",
            "status",
            "daemonset/agent",
            "-n",
            "kube-system",
            "--timeout=60s",
        ],
    );
    let daemonsets: kube::Api<DaemonSet> = kube::Api::namespaced(client.clone(), "kube-system");
    let status = daemonsets
        .get("agent")
        .await
        .expect("get")
        .status
        .expect("status");
    assert_eq!(status.desired_number_scheduled, 4);
    assert_eq!(status.number_ready, 4);
}

/// A Job runs its completions; a CronJob fires at the next minute and its Job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_completes_and_cronjob_fires() {
    let master = start_master(None, &[]);
    let _nodes = hollow(&master, "node-", 0, 3, &["--job-duration", "1000"]);
    let client = client(&master).await;
    apply(
        &master,
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: batch, namespace: default}
spec:
  completions: 4
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: work, image: registry.local/work:1}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick, namespace: default}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: tick, image: registry.local/tick:1}]
"#,
    );
    ok(
        &master,
        &[
            "wait",
            "--for=condition=complete",
            "job/batch",
            "--timeout=90s",
        ],
    );
    let jobs: kube::Api<Job> = kube::Api::namespaced(client.clone(), "default");
    let status = jobs
        .get("batch")
        .await
        .expect("get job")
        .status
        .expect("status");
    assert_eq!(status.succeeded, Some(4));
    let job_pods = pods(&client, "default", "batch.kubernetes.io/job-name=batch").await;
    assert_eq!(job_pods.len(), 4, "exactly the completions, no extra pods");

    // The schedule fires at the top of the next minute: at most ~60 s away.
    let fired = eventually(
        &master,
        Duration::from_secs(100),
        "the CronJob's Job to complete",
        || async {
            let list = jobs.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|j| {
                j.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "CronJob" && o.name == "tick")
                    && j.status.as_ref().and_then(|s| s.succeeded) == Some(1)
            })
        },
    )
    .await;
    let name = fired.metadata.name.unwrap_or_default();
    assert!(name.starts_with("tick-"), "{name}");
}

/// A node whose Lease stops being renewed becomes `Ready=Unknown`, gets the unreachable taint,
/// and its pods are evicted and replaced on the nodes that are alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_node_is_tainted_and_its_pods_move() {
    let master = start_master(None, FAST_NODES);
    let _alive = hollow(&master, "alive-", 0, 2, &["--renew-interval", "1"]);
    let mut doomed = hollow(&master, "doomed-", 0, 1, &["--renew-interval", "1"]);
    let client = client(&master).await;
    apply(
        &master,
        r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: spread, namespace: default}
spec:
  replicas: 6
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      containers: [{name: c, image: registry.local/c:1}]
"#,
    );
    let first = eventually(
        &master,
        Duration::from_secs(60),
        "6 running pods on 3 nodes",
        || async {
            let pods = running(&client, "default", "app=spread").await;
            let nodes: BTreeSet<String> = pods.iter().map(node_of).collect();
            (pods.len() == 6 && nodes.len() == 3).then_some(pods)
        },
    )
    .await;
    assert!(first.iter().any(|p| node_of(p) == "doomed-0"));

    doomed.kill();
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    eventually(
        &master,
        Duration::from_secs(30),
        "doomed-0 Ready=Unknown and tainted unreachable",
        || async {
            let node = nodes.get("doomed-0").await.ok()?;
            let unknown = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Ready" && c.status == "Unknown")
                });
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|ts| {
                    ts.iter().any(|t| {
                        t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"
                    })
                });
            (unknown && tainted).then_some(())
        },
    )
    .await;
    let moved = eventually(
        &master,
        Duration::from_secs(60),
        "6 running pods on the live nodes",
        || async {
            let pods = running(&client, "default", "app=spread").await;
            (pods.len() == 6 && pods.iter().all(|p| node_of(p).starts_with("alive-")))
                .then_some(pods)
        },
    )
    .await;
    assert_eq!(moved.len(), 6);
    // The live nodes were not touched.
    let alive = nodes.get("alive-0").await.expect("get alive-0");
    assert!(alive
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .is_empty());
}

/// A StatefulSet starts its pods in order with stable names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_starts_in_order() {
    let master = start_master(None, &[]);
    // Each pod takes 1.5 s to start, so ordered starts are seconds apart.
    let _nodes = hollow(&master, "node-", 0, 2, &["--pod-start-delay", "1500"]);
    let client = client(&master).await;
    apply(
        &master,
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: default}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: registry.local/db:1}]
"#,
    );
    ok(
        &master,
        &["rollout", "status", "statefulset/db", "--timeout=90s"],
    );
    let pods = running(&client, "default", "app=db").await;
    let mut names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["db-0", "db-1", "db-2"]);
    // Ordered start: each pod was created only after the previous one was running, so db-2
    // came at least two start delays after db-0 (timestamps have whole seconds).
    let created = |name: &str| {
        pods.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .and_then(|p| p.metadata.creation_timestamp.clone())
            .expect("created")
            .0
    };
    let apart = created("db-2").duration_since(created("db-0"));
    assert!(
        apart.as_secs() >= 2,
        "db-0 and db-2 created {apart:?} apart"
    );
    let sets: kube::Api<StatefulSet> = kube::Api::namespaced(client.clone(), "default");
    let status = sets.get("db").await.expect("get").status.expect("status");
    assert_eq!(status.ready_replicas, Some(3));
}

/// A pod that fits nowhere says why, in its condition and an Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pod_says_why() {
    let master = start_master(None, &[]);
    let _nodes = hollow(&master, "node-", 0, 3, &["--cpu", "2"]);
    let client = client(&master).await;
    apply(
        &master,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: huge, namespace: default}
spec:
  containers: [{name: c, image: registry.local/c:1, resources: {requests: {cpu: "3"}}}]
"#,
    );
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "default");
    let message = eventually(
        &master,
        Duration::from_secs(30),
        "PodScheduled=False",
        || async {
            let pod = api.get("huge").await.ok()?;
            let cond = pod
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")?;
            (cond.status == "False").then_some(cond.message.unwrap_or_default())
        },
    )
    .await;
    assert!(
        message.starts_with("0/3 nodes are available: 3 Insufficient cpu"),
        "{message}"
    );
    let events = ok(
        &master,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=huge",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
    );
    assert!(events.contains("FailedScheduling"), "{events}");
}

/// Two masters share one etcd: one leads; when it is killed, the other takes over within 15 s
/// and runs the controllers; both serve the API meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_master_takes_over_within_15_seconds() {
    let etcd = Etcd::start().await.unwrap_or_else(|e| panic!("{e:#}"));
    let servers = etcd.endpoint.clone();
    let mut first = start_master(Some(&servers), &[]);
    let first_client = client(&first).await;
    let leases: kube::Api<Lease> = kube::Api::namespaced(first_client.clone(), "kube-system");
    let leader = eventually(&first, Duration::from_secs(20), "a leader", || async {
        leases.get("skiff-master").await.ok()?.spec?.holder_identity
    })
    .await;

    let second = start_master(Some(&servers), &[]);
    let second_client = client(&second).await;
    let _nodes = hollow(&second, "node-", 0, 2, &[]);
    // The standby serves the API but does not take the Lease.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leases: kube::Api<Lease> = kube::Api::namespaced(second_client.clone(), "kube-system");
    let holder = leases
        .get("skiff-master")
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(
        holder.as_ref(),
        Some(&leader),
        "the first master keeps leading"
    );

    first.stop();
    let killed = Instant::now();
    let new_leader = eventually(&second, Duration::from_secs(20), "a new leader", || async {
        let holder = leases
            .get("skiff-master")
            .await
            .ok()?
            .spec?
            .holder_identity?;
        (holder != leader).then_some(holder)
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(15),
        "takeover took {took:?} ({new_leader})"
    );

    // The new leader's controllers and scheduler work.
    apply(
        &second,
        r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: after, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: after}}
  template:
    metadata: {labels: {app: after}}
    spec:
      containers: [{name: c, image: registry.local/c:1}]
"#,
    );
    eventually(
        &second,
        Duration::from_secs(60),
        "3 running pods under the new leader",
        || async {
            (running(&second_client, "default", "app=after").await.len() == 3).then_some(())
        },
    )
    .await;
}
