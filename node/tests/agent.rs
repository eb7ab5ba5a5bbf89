//! End to end on a real single-node cluster: skiff-master, skiff-node and containerd (all
//! started by the test), real kubectl, the busybox test image, real netns and CNI.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use skiff_master::testing::Master;
use skiff_node::runtime::containers::POD_NAME_LABEL;
use skiff_node::runtime::images;
use skiff_node::testing::{self, Agent, Containerd as TestContainerd, NodeLab};

/// How long anything may take on a busy two-core machine.
const WAIT: Duration = Duration::from_secs(90);

struct Cluster {
    // Dropped in this order: the agent, the master, then containerd (which kills what is left),
    // then the lab's routes and bridge.
    agent: Agent,
    master: Master,
    containerd: TestContainerd,
    _lab: NodeLab,
    client: kube::Client,
}

async fn cluster() -> Cluster {
    cluster_joined(false).await
}

/// A cluster whose node joins with `--server`, `--token` and `--certificate-authority` (the
/// master's `pki/admin.token` and `pki/ca.crt`) when `by_token`, else with the kubeconfig.
async fn cluster_joined(by_token: bool) -> Cluster {
    cluster_with(by_token, &[]).await
}

/// [`cluster_joined`], with more flags for the agent.
async fn cluster_with(by_token: bool, agent_flags: &[&str]) -> Cluster {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let lab = NodeLab::new();
    let containerd = TestContainerd::start().expect("containerd");
    let runtime = skiff_node::runtime::Containerd::connect(containerd.address())
        .await
        .expect("connect");
    let archive = containerd.dir().join("busybox.tar");
    images::build_busybox_archive(&archive, images::TEST_IMAGE).expect("build the test image");
    images::import_archive(&runtime, &archive)
        .await
        .expect("import the test image");
    let master_args = lab.master_args();
    let master_args: Vec<&str> = master_args.iter().map(String::as_str).collect();
    let master = Master::start(
        &testing::master_binary().expect("master binary"),
        None,
        &master_args,
    )
    .expect("master");
    let pki = master.dir().join("pki");
    let token = std::fs::read_to_string(pki.join("admin.token")).unwrap_or_default();
    let ca = pki.join("ca.crt").display().to_string();
    let mut join: Vec<&str> = if by_token {
        vec![
            "--server",
            &master.url,
            "--token",
            token.trim(),
            "--certificate-authority",
            &ca,
        ]
    } else {
        Vec::new()
    };
    join.extend_from_slice(agent_flags);
    let agent = Agent::start(
        env!("CARGO_BIN_EXE_skiff-node").as_ref(),
        // With --server, the agent writes its own kubeconfig and ignores this one.
        &master.kubeconfig,
        &containerd,
        &lab,
        "n1",
        &join,
    )
    .expect("agent");
    let client = master.client().await.expect("client");
    let cluster = Cluster {
        agent,
        master,
        containerd,
        _lab: lab,
        client,
    };
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    cluster
        .until("node n1 is Ready", || async {
            nodes.get_opt("n1").await.ok().flatten().is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .await;
    cluster
}

impl Cluster {
    async fn until<F, Fut>(&self, what: &str, check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        if testing::poll_until(WAIT, check).await {
            return;
        }
        let pods = self
            .master
            .kubectl(&["get", "pods", "-o", "wide"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let events = self
            .master
            .kubectl(&["get", "events"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "timed out waiting until {what}\n--- pods ---\n{pods}\n--- events ---\n{events}\n--- agent log ---\n{}\n--- master log ---\n{}",
            self.agent.log_tail(),
            self.master.log_tail()
        );
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.master.kubectl(args).expect("kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, manifest: &str) {
        let path = self.containerd.dir().join(format!(
            "m-{}.yaml",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        std::fs::write(&path, manifest).expect("write manifest");
        self.kubectl(&["apply", "--validate=false", "-f", path.to_str().unwrap()]);
    }

    async fn pods(&self, selector: &str) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        api.list(&ListParams::default().labels(selector))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A plain HTTP GET from the host to a pod (on the node's bridge).
async fn http_get(ip: &str, port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((ip, port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

const WEB: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: site
data:
  index.html: "hello from skiff"
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
stringData:
  password: hunter2
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      # httpd as PID 1 ignores SIGTERM: a short grace keeps the test quick.
      terminationGracePeriodSeconds: 2
      containers:
      - name: httpd
        image: skiff.test/busybox:1
        command: ["sh", "-c", "cp /site/index.html /tmp/index.html; echo $PASSWORD > /tmp/secret.txt; echo $MY_POD > /tmp/name.txt; exec httpd -f -p 8080 -h /tmp"]
        env:
        - name: PASSWORD
          valueFrom: {secretKeyRef: {name: creds, key: password}}
        - name: MY_POD
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports:
        - {containerPort: 8080, name: http}
        readinessProbe:
          httpGet: {path: /index.html, port: http}
          periodSeconds: 1
        volumeMounts:
        - {name: site, mountPath: /site}
      volumes:
      - name: site
        configMap: {name: site}
"#;

#[tokio::test]
async fn a_deployment_serves_http_from_its_pod_ips() {
    let c = cluster().await;
    c.apply(WEB);
    c.until("2 web pods are Running and Ready", || async {
        let pods = c.pods("app=web").await;
        pods.len() == 2 && pods.iter().all(ready)
    })
    .await;
    let pods = c.pods("app=web").await;
    let mut ips = Vec::new();
    for pod in &pods {
        let status = pod.status.as_ref().expect("status");
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
        let ip = status.pod_ip.clone().expect("a pod IP");
        assert!(
            ip.starts_with(&c._lab.cluster_cidr[..c._lab.cluster_cidr.len() - 6]),
            "{ip} not in {}",
            c._lab.cluster_cidr
        );
        let name = pod.metadata.name.clone().unwrap_or_default();
        // The ConfigMap's file, the Secret's env and the downward API reached the container.
        let body = http_get(&ip, 8080, "/index.html")
            .await
            .expect("the pod answers");
        assert!(
            body.starts_with("HTTP/1.") && body.contains("hello from skiff"),
            "{body}"
        );
        let secret = http_get(&ip, 8080, "/secret.txt").await.unwrap_or_default();
        assert!(secret.contains("hunter2"), "{secret}");
        let own = http_get(&ip, 8080, "/name.txt").await.unwrap_or_default();
        assert!(own.contains(&name), "{own}");
        let cs = &status
            .container_statuses
            .as_ref()
            .expect("container statuses")[0];
        assert!(cs.ready);
        assert!(cs
            .container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("containerd://")));
        assert!(cs.image_id.contains("sha256:"), "{:?}", cs.image_id);
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1], "two pods, two addresses");
    let uids: Vec<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    for uid in &uids {
        assert!(std::path::Path::new(&format!("/run/netns/skiff-{uid}")).exists());
    }

    // Deleting the Deployment removes the pods from the API and their containers from
    // containerd.
    c.kubectl(&["delete", "deployment", "web", "--wait=false"]);
    c.until("the web pods are gone", || async {
        c.pods("app=web").await.is_empty()
    })
    .await;
    let runtime = skiff_node::runtime::Containerd::connect(c.containerd.address())
        .await
        .expect("connect");
    c.until("their containers are removed", || async {
        runtime
            .list_containers(&[])
            .await
            .map(|l| l.is_empty())
            .unwrap_or(false)
    })
    .await;
}

const SLEEPER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  containers:
  - name: app
    image: skiff.test/busybox:1
    command: ["sleep", "3600"]
"#;

/// `--oci-runtime auto` (the default) runs containers with crun where this host allows it
/// (what `oci::choose` decides here: crun once `cluster/install-deps.sh` has run), and
/// `--oci-runtime runc` with runc; either way the pod runs and its container records the
/// runtime in its options.
#[tokio::test]
async fn containers_run_with_the_chosen_oci_runtime() {
    use skiff_node::runtime::oci::{self, OciRuntime};
    let (auto, why) = oci::choose("auto").expect("auto always chooses");
    eprintln!("auto chooses {} here: {why}", auto.name());
    for (flags, expected) in [
        (&["--oci-runtime", "runc"][..], OciRuntime::Runc),
        (&["--oci-runtime", "auto"][..], auto.clone()),
    ] {
        let c = cluster_with(false, flags).await;
        c.apply(SLEEPER);
        c.until("the sleeper is Running", || async {
            pod(&c, "sleeper")
                .await
                .is_some_and(|p| p.status.and_then(|s| s.phase).as_deref() == Some("Running"))
        })
        .await;
        let runtime = skiff_node::runtime::Containerd::connect(c.containerd.address())
            .await
            .expect("connect");
        let records = runtime.list_containers(&[]).await.expect("list");
        assert_eq!(records.len(), 1, "{records:?}");
        let container = runtime
            .client()
            .containers()
            .get(
                runtime.request(containerd_client::services::v1::GetContainerRequest {
                    id: records[0].id.clone(),
                }),
            )
            .await
            .expect("get the container")
            .into_inner()
            .container
            .expect("a container");
        assert_eq!(
            container.runtime.and_then(|r| r.options),
            expected.options(),
            "{flags:?}: the container's runtime options"
        );
        // The runtime really ran it: the task is up, with a process.
        let state = runtime.task_state(&records[0].id).await.expect("state");
        assert!(
            matches!(state, skiff_node::runtime::containers::TaskState::Running { pid } if pid > 0),
            "{flags:?}: {state:?}"
        );
        // On a v1 host the container's cpuset was cloned from the QoS parents the agent made,
        // not written by the runtime (see runtime::cgroups).
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        if let (Some(root), skiff_node::runtime::containers::TaskState::Running { pid }) = (
            skiff_node::runtime::cgroups::v1_mount(&mounts, "cpuset"),
            state,
        ) {
            let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
            let path = own
                .lines()
                .find_map(|l| l.split_once(":cpuset:").map(|(_, p)| p.to_owned()))
                .expect("the container is in a cpuset");
            assert!(path.starts_with("/kubepods/besteffort/pod"), "{path}");
            let dir = root.join(path.trim_start_matches('/'));
            let read = |p: std::path::PathBuf| {
                std::fs::read_to_string(&p).expect("read").trim().to_owned()
            };
            for level in [dir.parent().expect("pod level"), &dir] {
                assert_eq!(
                    read(level.join("cgroup.clone_children")),
                    "1",
                    "{}",
                    level.display()
                );
                assert_eq!(
                    read(level.join("cpuset.cpus")),
                    read(root.join("cpuset.cpus"))
                );
            }
        }
    }
}

/// The pod's first container status.
fn first_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

async fn pod(c: &Cluster, name: &str) -> Option<Pod> {
    let api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    api.get_opt(name).await.ok().flatten()
}

const LIFECYCLE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: liveness}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: skiff.test/busybox:1
    command: ["sh", "-c", "touch /tmp/alive; sleep 3; rm /tmp/alive; sleep 3600"]
    livenessProbe:
      exec: {command: ["cat", "/tmp/alive"]}
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: app
    image: skiff.test/busybox:1
    command: ["sh", "-c", "exit 3"]
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: skiff.test/busybox:1
    command: ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}"]
    resources:
      limits: {memory: 32Mi}
"#;

#[tokio::test]
async fn liveness_restarts_crashes_back_off_and_oom_is_reported() {
    let c = cluster().await;
    c.apply(LIFECYCLE);

    // A failing liveness probe restarts the container; the restart is counted.
    c.until("the liveness pod restarted", || async {
        pod(&c, "liveness")
            .await
            .and_then(|p| first_status(&p))
            .is_some_and(|s| s.restart_count >= 1)
    })
    .await;

    // A crashing container backs off: CrashLoopBackOff, its last exit code, and restarts
    // spaced by the backoff (10 s, then 20 s) rather than immediate.
    c.until("the crasher is in CrashLoopBackOff", || async {
        pod(&c, "crasher")
            .await
            .and_then(|p| first_status(&p))
            .is_some_and(|s| {
                let waiting = s
                    .state
                    .as_ref()
                    .and_then(|st| st.waiting.as_ref())
                    .and_then(|w| w.reason.clone());
                let last = s
                    .last_state
                    .as_ref()
                    .and_then(|st| st.terminated.as_ref())
                    .map(|t| t.exit_code);
                waiting.as_deref() == Some("CrashLoopBackOff") && last == Some(3)
            })
    })
    .await;
    let crasher = pod(&c, "crasher").await.expect("crasher");
    assert_eq!(
        crasher.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running"),
        "a crash-looping pod with restartPolicy Always is Running"
    );
    let restarts_then = first_status(&crasher).map_or(0, |s| s.restart_count);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restarts_now = pod(&c, "crasher")
        .await
        .and_then(|p| first_status(&p))
        .map_or(0, |s| s.restart_count);
    assert!(
        restarts_now <= restarts_then + 1,
        "restarts went from {restarts_then} to {restarts_now} in 5 s: no backoff"
    );

    // Over its memory limit: OOMKilled, and the pod (restartPolicy Never) Failed.
    c.until("the hog is OOMKilled", || async {
        pod(&c, "hog").await.is_some_and(|p| {
            let reason = first_status(&p)
                .and_then(|s| s.state)
                .and_then(|s| s.terminated)
                .and_then(|t| t.reason);
            reason.as_deref() == Some("OOMKilled")
                && p.status.and_then(|s| s.phase).as_deref() == Some("Failed")
        })
    })
    .await;
    let hog = first_status(&pod(&c, "hog").await.expect("hog")).expect("status");
    assert_eq!(
        hog.state.and_then(|s| s.terminated).map(|t| t.exit_code),
        Some(137)
    );
}

const GRACEFUL: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: graceful}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: app
    image: skiff.test/busybox:1
    command: ["sleep", "3600"]
    lifecycle:
      preStop:
        exec: {command: ["sleep", "30"]}
"#;

#[tokio::test]
async fn a_prestop_hook_and_a_5s_grace_end_the_pod_in_5_to_7s() {
    let c = cluster().await;
    c.apply(GRACEFUL);
    c.until("the pod is Running", || async {
        pod(&c, "graceful")
            .await
            .and_then(|p| p.status?.phase)
            .as_deref()
            == Some("Running")
    })
    .await;
    let started = Instant::now();
    c.kubectl(&["delete", "pod", "graceful", "--wait=false"]);
    c.until("the pod is gone", || async {
        pod(&c, "graceful").await.is_none()
    })
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took <= Duration::from_secs(7),
        "the pod took {took:?} to end (want 5-7 s: preStop, then SIGKILL at the grace)\n{}",
        c.agent.log_tail()
    );
}

const SLEEPERS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: keeper}
spec:
  containers:
  - name: app
    image: skiff.test/busybox:1
    command: ["sleep", "3600"]
  - name: side
    image: skiff.test/busybox:1
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: goner}
spec:
  containers:
  - name: app
    image: skiff.test/busybox:1
    command: ["sleep", "3600"]
"#;

#[tokio::test]
async fn a_killed_agent_comes_back_to_the_same_containers() {
    let mut c = cluster().await;
    c.apply(SLEEPERS);
    c.until("both pods are Running", || async {
        let mut running = 0;
        for name in ["keeper", "goner"] {
            if pod(&c, name).await.and_then(|p| p.status?.phase).as_deref() == Some("Running") {
                running += 1;
            }
        }
        running == 2
    })
    .await;
    let runtime = skiff_node::runtime::Containerd::connect(c.containerd.address())
        .await
        .expect("connect");
    let pids = |records: &[skiff_node::runtime::containers::ContainerRecord]| {
        let mut v: Vec<(String, u32)> = records
            .iter()
            .filter_map(|r| match r.state {
                skiff_node::runtime::containers::TaskState::Running { pid } => {
                    Some((r.id.clone(), pid))
                }
                _ => None,
            })
            .collect();
        v.sort();
        v
    };
    let before = pids(&runtime.list_containers(&[]).await.expect("list"));
    assert_eq!(before.len(), 3, "{before:?}");
    // A pod's containers share one shim (the parent of their init processes), as under CRI;
    // another pod has its own.
    let shim_of = |pid: u32| parent_pid(pid).unwrap_or_else(|| panic!("no parent for {pid}"));
    let records = runtime.list_containers(&[]).await.expect("list");
    let shims_of = |pod_name: &str| -> Vec<u32> {
        records
            .iter()
            .filter(|r| r.label(POD_NAME_LABEL) == pod_name)
            .filter_map(|r| match r.state {
                skiff_node::runtime::containers::TaskState::Running { pid } => Some(shim_of(pid)),
                _ => None,
            })
            .collect()
    };
    let (keeper_shims, goner_shims) = (shims_of("keeper"), shims_of("goner"));
    assert_eq!(keeper_shims.len(), 2, "{records:?}");
    assert_eq!(
        keeper_shims[0], keeper_shims[1],
        "keeper's containers have two shims"
    );
    assert_eq!(goner_shims.len(), 1, "{records:?}");
    assert_ne!(goner_shims[0], keeper_shims[0], "two pods share a shim");
    let keeper_before = first_status(&pod(&c, "keeper").await.expect("keeper")).expect("status");

    // kill -9 the agent; while it is away, force-delete one pod (as `kubectl delete --force`).
    c.agent.kill9_and_restart().expect("restart the agent");
    c.kubectl(&[
        "delete",
        "pod",
        "goner",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);

    // The restarted agent keeps the survivor's container (same ID, PID, restart count) and
    // removes the orphan's.
    c.until("only the keeper's containers are left", || async {
        runtime
            .list_containers(&[])
            .await
            .map(|l| l.len() == 2)
            .unwrap_or(false)
    })
    .await;
    let after = pids(&runtime.list_containers(&[]).await.expect("list"));
    assert_eq!(after.len(), 2);
    for container in &after {
        assert!(
            before.contains(container),
            "{container:?} was not running before: {before:?}"
        );
    }
    // The agent is back at work: the node's Lease and the pod's status stay right.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let keeper = pod(&c, "keeper").await.expect("keeper");
    let status = first_status(&keeper).expect("status");
    assert_eq!(status.container_id, keeper_before.container_id);
    assert_eq!(status.restart_count, keeper_before.restart_count);
    assert!(status.ready);
    assert_eq!(
        keeper.status.and_then(|s| s.phase).as_deref(),
        Some("Running")
    );
}

/// The parent of process `pid`, from `/proc/<pid>/status`.
fn parent_pid(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

const TALKER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: skiff.test/busybox:1
    command: ["sh", "-c", "echo one; echo two >&2; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_and_exec_reach_the_container() {
    // This node joins with --server and --token rather than a kubeconfig.
    let c = cluster_joined(true).await;
    let joined = c.containerd.dir().join("n1/root/kubeconfig");
    assert!(
        joined.exists(),
        "the agent did not write {}",
        joined.display()
    );
    c.apply(TALKER);
    c.until("the talker is Running", || async {
        pod(&c, "talker")
            .await
            .and_then(|p| p.status?.phase)
            .as_deref()
            == Some("Running")
    })
    .await;
    // By "tick 2" (a second after the start), stderr's early line has long been written.
    c.until("its first lines are logged", || async {
        let out = c.master.kubectl(&["logs", "talker"]).expect("kubectl logs");
        String::from_utf8_lossy(&out.stdout).contains("tick 2")
    })
    .await;
    let logs = c.kubectl(&["logs", "talker"]);
    let lines: Vec<&str> = logs.lines().collect();
    // stdout and stderr are separate pipes, interleaved in arrival order: stdout's lines are in
    // order, and stderr's line is there.
    let stdout: Vec<&str> = lines.iter().copied().filter(|l| *l != "two").collect();
    assert_eq!(stdout.first(), Some(&"one"), "{logs}");
    assert!(lines.contains(&"two"), "{logs}");
    let tail = c.kubectl(&["logs", "talker", "--tail=1"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(tail.starts_with("tick "), "{tail}");

    // -f keeps streaming new lines.
    let mut follow = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.master.kubeconfig)
        .args(["logs", "-f", "talker"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    let stdout = follow.stdout.take().expect("stdout");
    let seen = tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        let mut ticks = Vec::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("tick ") {
                ticks.push(line);
            }
            if ticks.len() >= 4 {
                break;
            }
        }
        ticks
    });
    let ticks = tokio::time::timeout(Duration::from_secs(30), seen)
        .await
        .expect("four ticks within 30 s")
        .expect("reader");
    let _ = follow.kill();
    let _ = follow.wait();
    let numbers: Vec<u32> = ticks
        .iter()
        .filter_map(|t| t.trim_start_matches("tick ").parse().ok())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");

    // exec runs in the pod: its hostname, its exit code.
    let hostname = c.kubectl(&["exec", "talker", "--", "hostname"]);
    assert_eq!(hostname.trim(), "talker");
    let out = c
        .master
        .kubectl(&["exec", "talker", "--", "sh", "-c", "exit 3"])
        .expect("kubectl exec");
    assert_eq!(out.status.code(), Some(3));
}

const API_READER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: reader, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: skiff.test/busybox:1
    command: ["sh", "-c", "while true; do sleep 1; done"]
"#;

/// The ServiceAccount admission's volume on a real node: the pod reads its token, namespace
/// and CA at the in-cluster paths, and the token authenticates against the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reads_its_service_account_token_and_it_authenticates() {
    let c = cluster().await;
    c.apply(API_READER);
    c.until("the reader is Running", || async {
        pod(&c, "reader")
            .await
            .and_then(|p| p.status?.phase)
            .as_deref()
            == Some("Running")
    })
    .await;
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let read = |file: &str| c.kubectl(&["exec", "reader", "--", "cat", &format!("{dir}/{file}")]);
    assert_eq!(read("namespace"), "default");
    let ca = std::fs::read_to_string(c.master.dir().join("pki/ca.crt")).expect("ca.crt");
    assert_eq!(read("ca.crt"), ca);
    let token = read("token");
    assert_eq!(token.split('.').count(), 3, "{token}");
    let listing = c.kubectl(&["exec", "reader", "--", "ls", "-lL", dir]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rw-r--r--") && l.ends_with(" token")),
        "{listing}"
    );
    // Bound to this pod: its claims name the pod's UID.
    use base64::Engine as _;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap_or_default())
            .expect("base64url claims"),
    )
    .expect("json claims");
    let uid = pod(&c, "reader").await.and_then(|p| p.metadata.uid);
    assert_eq!(
        claims["kubernetes.io"]["pod"]["uid"].as_str(),
        uid.as_deref(),
        "{claims}"
    );
    assert_eq!(claims["sub"], "system:serviceaccount:default:default");
    let out = c
        .master
        .kubectl(&["--token", &token, "get", "pods", "-o", "name"])
        .expect("kubectl --token");
    assert!(
        out.status.success(),
        "the pod's token was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pod/reader"));
}
