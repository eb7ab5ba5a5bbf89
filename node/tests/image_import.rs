//! End to end: `skiff image import` (the real command line) sends the busybox test image
//! through a real skiff-master's `nodes/proxy` to a real skiff-node's `POST /images/import`,
//! which imports it into a private containerd; a pod with `imagePullPolicy: Never` then runs
//! it. Also `kubectl get --raw` through `nodes/proxy`, and the errors a user meets: a bad
//! archive, an archive over the node's limit, an unknown node, an unreachable node.
//!
//! Needs root, containerd, runc, the CNI plugins, kubectl and `/bin/busybox`
//! (cluster/install-deps.sh), and the `skiff-master` and `skiff` binaries built beside this
//! test (`cargo build -p skiff-master -p skiff`).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use skiff_master::testing::Master;
use skiff_node::runtime::images;
use skiff_node::testing::{self, Agent, Containerd as TestContainerd, NodeLab};

/// How long anything may take on a busy two-core machine.
const WAIT: Duration = Duration::from_secs(90);

/// The node's upload limit in this test: above the test image, below the oversized upload.
const MAX_IMPORT: u64 = 16 << 20;

fn skiff(kubeconfig: &Path, args: &[&str]) -> Output {
    let binary = testing::ctl_binary().expect("the skiff binary");
    std::process::Command::new(&binary)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", binary.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn until<F, Fut>(what: &str, agent: &Agent, master: &Master, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if testing::poll_until(WAIT, check).await {
        return;
    }
    panic!(
        "timed out waiting until {what}\n--- agent log ---\n{}\n--- master log ---\n{}",
        agent.log_tail(),
        master.log_tail()
    );
}

#[tokio::test]
async fn skiff_image_import_reaches_the_node_through_nodes_proxy() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let lab = NodeLab::new();
    let containerd = TestContainerd::start().expect("containerd");
    let runtime = skiff_node::runtime::Containerd::connect(containerd.address())
        .await
        .expect("connect");
    let archive = containerd.dir().join("busybox.tar");
    images::build_busybox_archive(&archive, images::TEST_IMAGE).expect("build the test image");
    assert!(std::fs::metadata(&archive).unwrap().len() < MAX_IMPORT);

    let master_args = lab.master_args();
    let master_args: Vec<&str> = master_args.iter().map(String::as_str).collect();
    let master = Master::start(
        &testing::master_binary().expect("master binary"),
        None,
        &master_args,
    )
    .expect("master");
    let max = MAX_IMPORT.to_string();
    let mut agent = Some(
        Agent::start(
            env!("CARGO_BIN_EXE_skiff-node").as_ref(),
            &master.kubeconfig,
            &containerd,
            &lab,
            "n1",
            &["--max-image-import-bytes", &max],
        )
        .expect("agent"),
    );
    let client = master.client().await.expect("client");
    let nodes: Api<Node> = Api::all(client.clone());
    let running = agent.as_ref().unwrap();
    until("node n1 is Ready", running, &master, || async {
        nodes.get_opt("n1").await.ok().flatten().is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    })
    .await;
    let listed =
        |names: Vec<images::ImageSummary>| names.iter().any(|i| i.name == images::TEST_IMAGE);
    assert!(
        !listed(images::list_images(&runtime).await.expect("list images")),
        "the test image is in containerd before the import"
    );

    // nodes/proxy: any node path, as kubectl reaches it.
    let out = master
        .kubectl(&["get", "--raw", "/api/v1/nodes/n1/proxy/healthz"])
        .expect("kubectl");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok");
    let out = master
        .kubectl(&["get", "--raw", "/api/v1/nodes/nope/proxy/healthz"])
        .expect("kubectl");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nodes \"nope\" not found"),
        "{}",
        text(&out.stderr)
    );
    let out = master
        .kubectl(&["api-resources", "--api-group="])
        .expect("kubectl");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The import, with no --node: every Ready node.
    let out = skiff(
        &master.kubeconfig,
        &["image", "import", archive.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "skiff image import: {}\n--- agent log ---\n{}\n--- master log ---\n{}",
        text(&out.stderr),
        running.log_tail(),
        master.log_tail()
    );
    assert_eq!(
        text(&out.stdout),
        format!("n1: imported {}\n", images::TEST_IMAGE)
    );
    assert!(listed(
        images::list_images(&runtime).await.expect("list images")
    ));

    // Again, by name: importing the same archive changes nothing and says the same.
    let out = skiff(
        &master.kubeconfig,
        &["image", "import", archive.to_str().unwrap(), "--node", "n1"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("n1: imported {}\n", images::TEST_IMAGE)
    );

    // A pod that may not pull runs the imported image.
    let manifest = containerd.dir().join("pod.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: imported\nspec:\n  \
             terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    \
             imagePullPolicy: Never\n    command: [\"sleep\", \"3600\"]\n",
            images::TEST_IMAGE
        ),
    )
    .unwrap();
    let out = master
        .kubectl(&[
            "apply",
            "--validate=false",
            "-f",
            manifest.to_str().unwrap(),
        ])
        .expect("kubectl");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    until(
        "the pod on the imported image runs",
        running,
        &master,
        || async {
            pods.get_opt("imported")
                .await
                .ok()
                .flatten()
                .and_then(|p| p.status)
                .and_then(|s| s.phase)
                .is_some_and(|phase| phase == "Running")
        },
    )
    .await;

    // Errors say what went wrong. Caught before sending: a file that is no archive.
    let notes = containerd.dir().join("notes.txt");
    std::fs::write(&notes, "not an image ".repeat(100)).unwrap();
    let out = skiff(
        &master.kubeconfig,
        &["image", "import", notes.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not a tar archive"),
        "{}",
        text(&out.stderr)
    );
    // Caught by the node: an OCI-looking tar whose index.json is not JSON.
    let broken = containerd.dir().join("broken.tar");
    {
        let mut builder = tar::Builder::new(std::fs::File::create(&broken).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(8);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "index.json", &b"not json"[..])
            .unwrap();
        builder.finish().unwrap();
    }
    let out = skiff(
        &master.kubeconfig,
        &["image", "import", broken.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("node n1 cannot import") && stderr.contains("unreadable index.json"),
        "{stderr}"
    );
    // Sent raw by kubectl: the node's answer passes through nodes/proxy.
    let out = master
        .kubectl(&[
            "create",
            "--raw",
            "/api/v1/nodes/n1/proxy/images/import",
            "-f",
            notes.to_str().unwrap(),
        ])
        .expect("kubectl");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not an importable image archive"),
        "{}",
        text(&out.stderr)
    );
    // Over the node's limit.
    let big = containerd.dir().join("big.tar");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(MAX_IMPORT + 1)
        .unwrap();
    let out = master
        .kubectl(&[
            "create",
            "--raw",
            "/api/v1/nodes/n1/proxy/images/import",
            "-f",
            big.to_str().unwrap(),
        ])
        .expect("kubectl");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--max-image-import-bytes"),
        "{}",
        text(&out.stderr)
    );
    // No such node.
    let out = skiff(
        &master.kubeconfig,
        &[
            "image",
            "import",
            archive.to_str().unwrap(),
            "--node",
            "ghost",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("node ghost not found"),
        "{}",
        text(&out.stderr)
    );
    // The node's agent is gone.
    drop(agent.take());
    let out = skiff(
        &master.kubeconfig,
        &["image", "import", archive.to_str().unwrap(), "--node", "n1"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("node n1 is unreachable"),
        "{}",
        text(&out.stderr)
    );
}
