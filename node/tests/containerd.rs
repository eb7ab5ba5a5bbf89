//! The node's own containerd harness against the real containerd (root; installed by
//! cluster/install-deps.sh).

use skiff_node::runtime::Containerd;
use skiff_node::testing;

#[tokio::test]
async fn a_private_containerd_answers_in_its_own_namespace() {
    let daemon = testing::Containerd::start().expect("start containerd");
    let runtime = Containerd::connect(daemon.address())
        .await
        .expect("connect");
    let version = runtime
        .client()
        .version()
        .version(())
        .await
        .expect("version")
        .into_inner();
    assert!(
        version.version.starts_with("1.") || version.version.starts_with('v'),
        "unexpected containerd version {version:?}"
    );
    // Nothing exists in Skiff's namespace of a fresh containerd.
    let containers = runtime
        .client()
        .containers()
        .list(runtime.request(containerd_client::services::v1::ListContainersRequest::default()))
        .await
        .expect("list containers")
        .into_inner();
    assert!(containers.containers.is_empty());

    // A missing socket is a clear error, not a hang.
    let err = Containerd::connect(&daemon.dir().join("nope.sock"))
        .await
        .err()
        .expect("no containerd there");
    assert!(
        format!("{err:#}").contains("cannot reach containerd"),
        "{err:#}"
    );
}
