//! Containers on a real containerd and runc: create, start, wait, signal, list, remove.

use std::collections::HashMap;
use std::time::Duration;

use skiff_node::runtime::containers::{TaskState, CONTAINER_NAME_LABEL, POD_UID_LABEL};
use skiff_node::runtime::spec::{runtime_spec, ContainerSpec, Limits};
use skiff_node::runtime::Containerd;
use skiff_node::testing;

fn spec(id: &str, args: &[&str], netns: &str) -> serde_json::Value {
    runtime_spec(&ContainerSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        hostname: "t".into(),
        netns: netns.into(),
        cgroups_path: format!("/skiff-test/{}-{id}", std::process::id()),
        limits: Limits::from_resources(None, None, None),
        ..ContainerSpec::default()
    })
}

/// A network namespace for one test, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("skiff-rt-{tag}-{}", std::process::id());
        let status = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(status.success(), "ip netns add {name}");
        Netns(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

#[tokio::test]
async fn a_container_runs_exits_and_is_removed() {
    let daemon = testing::Containerd::start().expect("containerd");
    let rt = Containerd::connect(daemon.address())
        .await
        .expect("connect");
    testing::busybox_snapshot(&rt, "busybox")
        .await
        .expect("snapshot");
    let netns = Netns::new("run");
    let labels = HashMap::from([
        (POD_UID_LABEL.to_string(), "u1".to_string()),
        (CONTAINER_NAME_LABEL.to_string(), "c".to_string()),
    ]);
    let out = daemon.dir().join("out.log");
    rt.create_container(
        "c1",
        "busybox",
        "busybox",
        labels,
        &spec(
            "c1",
            &["sh", "-c", "echo hello from $(hostname); exit 3"],
            &netns.path(),
        ),
    )
    .await
    .expect("create");
    let pid = rt
        .start_task("c1", &format!("file://{}", out.display()))
        .await
        .expect("start");
    assert!(pid > 0);
    let exit = tokio::time::timeout(Duration::from_secs(20), rt.wait("c1"))
        .await
        .expect("exits in time")
        .expect("wait");
    assert_eq!(exit.code, 3);
    assert!(exit.at_nanos > 0);
    let output = std::fs::read_to_string(&out).expect("output file");
    assert_eq!(output.trim(), "hello from t");
    let listed = rt.list_containers(&[]).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].label(CONTAINER_NAME_LABEL), "c");
    assert!(
        matches!(listed[0].state, TaskState::Exited { code: 3, .. }),
        "{listed:?}"
    );
    rt.remove_container("c1").await.expect("remove");
    assert!(rt.list_containers(&[]).await.unwrap().is_empty());
    // Removing again is not an error.
    rt.remove_container("c1").await.expect("remove twice");
}

#[tokio::test]
async fn sigterm_stops_a_sleeping_container() {
    let daemon = testing::Containerd::start().expect("containerd");
    let rt = Containerd::connect(daemon.address())
        .await
        .expect("connect");
    testing::busybox_snapshot(&rt, "busybox")
        .await
        .expect("snapshot");
    let netns = Netns::new("term");
    rt.create_container(
        "s1",
        "busybox",
        "busybox",
        HashMap::new(),
        &spec("s1", &["sleep", "600"], &netns.path()),
    )
    .await
    .expect("create");
    rt.start_task("s1", "/dev/null").await.expect("start");
    assert!(matches!(
        rt.task_state("s1").await.unwrap(),
        TaskState::Running { .. }
    ));
    // sleep as PID 1 ignores SIGTERM (no handler), so it takes SIGKILL: 128 + 9.
    rt.signal("s1", libc::SIGKILL as u32, false)
        .await
        .expect("kill");
    let exit = tokio::time::timeout(Duration::from_secs(20), rt.wait("s1"))
        .await
        .expect("exits in time")
        .expect("wait");
    assert_eq!(exit.code, 137);
    rt.remove_container("s1").await.expect("remove");
}
