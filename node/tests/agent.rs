//! End to end on a real single-node cluster: skiff-master, skiff-node and containerd (all
//! started by the test), real kubectl, the busybox test image, real netns and CNI.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use skiff_master::testing::Master;
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
    let agent = Agent::start(
        env!("CARGO_BIN_EXE_skiff-node").as_ref(),
        &master.kubeconfig,
        &containerd,
        &lab,
        "n1",
        &[],
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
    async fn until<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "timed out waiting until {what}\n--- agent log ---\n{}\n--- master log ---\n{}",
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
