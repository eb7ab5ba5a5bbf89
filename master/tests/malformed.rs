//! Broken input never gets a 5xx and never loses anything: a corpus of malformed bodies,
//! patches and query parameters against a real `skiff-master`, through the kube-rs client.

use std::path::Path;

use kube::client::Body;
use serde_json::{json, Value};
use skiff_master::testing::Master;

struct Probe {
    client: kube::Client,
}

impl Probe {
    /// Sends one request; returns the status code and the body.
    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Vec<u8>) {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            .body(Body::from(body))
            .expect("request");
        let response = self.client.send(request).await.expect("the server answers");
        let code = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        (code, bytes.to_vec())
    }

    /// The request must be refused with a 4xx Status whose code matches.
    async fn refused(
        &self,
        what: &str,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) {
        let (code, bytes) = self.send(method, path, content_type, body).await;
        assert!(
            (400..500).contains(&code),
            "{what}: got {code}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let status: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{what}: the {code} body is not a Status ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert_eq!(status["kind"], "Status", "{what}");
        assert_eq!(status["code"], code, "{what}");
        assert!(
            status["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{what}: {status}"
        );
    }
}

const PODS: &str = "/api/v1/namespaces/default/pods";

fn pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "keep", "labels": {"a": "b"}},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

/// Bodies that are not a valid Pod, each with a name for the failure message.
fn broken_pods() -> Vec<(String, Vec<u8>)> {
    let good = serde_json::to_vec(&pod()).unwrap();
    let mut corpus: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in (1..good.len()).step_by(9) {
        corpus.push((format!("JSON truncated at {cut}"), good[..cut].to_vec()));
    }
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: y\nspec:\n  containers:\n  - name: c\n    image: busybox\n";
    for cut in (1..yaml.len()).step_by(11) {
        corpus.push((
            format!("YAML truncated at {cut}"),
            yaml.as_bytes()[..cut].to_vec(),
        ));
    }
    let wrong_types = [
        json!({"metadata": {"name": 5}}),
        json!({"metadata": {"name": "w1", "labels": ["a"]}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        json!({"metadata": {"name": "w2"}, "spec": {"containers": {"name": "c"}}}),
        json!({"metadata": {"name": "w3"}, "spec": {"containers": [{"name": "c", "image": 7}]}}),
        json!({"metadata": {"name": "w4"}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": "80"}]}]}}),
        json!({"metadata": {"name": "w5"}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 1e100}]}]}}),
        json!({"metadata": {"name": "w6"}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": -1}]}]}}),
        json!({"metadata": {"name": "w7"}, "spec": {"containers": []}}),
        json!({"metadata": {"name": "w8"}, "spec": null}),
        json!({"metadata": "x"}),
        json!({"apiVersion": "v2", "kind": "Pod", "metadata": {"name": "w9"}}),
        json!({"apiVersion": "v1", "kind": "Frobnicator", "metadata": {"name": "w10"}}),
        json!({"kind": {"nested": true}, "metadata": {"name": "w11"}}),
        json!({"metadata": {"name": "UPPER"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        json!({"metadata": {"name": "x".repeat(300)}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        json!({"metadata": {"name": "w12", "namespace": "elsewhere"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        json!(null),
        json!([1, 2, 3]),
        json!("a string"),
        json!(42),
    ];
    for (i, body) in wrong_types.iter().enumerate() {
        corpus.push((
            format!("wrong types #{i}: {body}"),
            serde_json::to_vec(body).unwrap(),
        ));
    }
    corpus.push(("empty body".into(), Vec::new()));
    corpus.push(("deep arrays".into(), "[".repeat(100_000).into_bytes()));
    corpus.push(("deep objects".into(), "{\"a\":".repeat(50_000).into_bytes()));
    let mut deep_metadata = String::from(r#"{"metadata":{"name":"deep","annotations":"#);
    deep_metadata.push_str(&"{\"a\":".repeat(1000));
    corpus.push(("deep annotations".into(), deep_metadata.into_bytes()));
    let mut invalid_utf8 =
        br#"{"metadata":{"name":"u"},"spec":{"containers":[{"name":"c","image":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    invalid_utf8.extend_from_slice(br#""}]}}"#);
    corpus.push(("invalid UTF-8".into(), invalid_utf8));
    corpus.push(("NUL bytes".into(), vec![0; 64]));
    corpus.push((
        "a number too large".into(),
        br#"{"metadata":{"name":"n"},"spec":{"priority":99999999999999999999999999}}"#.to_vec(),
    ));
    corpus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_4xx_and_loses_nothing() {
    let binary = Path::new(env!("CARGO_BIN_EXE_skiff-master"));
    // No control loops: the test checks that bad input changes nothing, and a scheduler writing
    // `PodScheduled` to the pod would be a change.
    let master =
        Master::start(binary, None, &["--controllers="]).unwrap_or_else(|e| panic!("{e:#}"));
    let probe = Probe {
        client: master.client().await.unwrap_or_else(|e| panic!("{e:#}")),
    };

    let (code, _) = probe
        .send(
            "POST",
            PODS,
            "application/json",
            serde_json::to_vec(&pod()).unwrap(),
        )
        .await;
    assert_eq!(code, 201, "a valid pod is created");
    let (_, before) = probe
        .send(
            "GET",
            &format!("{PODS}/keep"),
            "application/json",
            Vec::new(),
        )
        .await;

    for (what, body) in broken_pods() {
        probe
            .refused(&what, "POST", PODS, "application/json", body.clone())
            .await;
        probe
            .refused(
                &format!("PUT {what}"),
                "PUT",
                &format!("{PODS}/keep"),
                "application/json",
                body.clone(),
            )
            .await;
    }
    probe
        .refused(
            "YAML body",
            "POST",
            PODS,
            "application/yaml",
            b"kind: Pod\n".to_vec(),
        )
        .await;
    probe
        .refused(
            "protobuf body",
            "POST",
            PODS,
            "application/vnd.kubernetes.protobuf",
            b"k8s\0junk".to_vec(),
        )
        .await;
    // Over HTTP/1.1 the server answers 413 before reading the body and closes the connection, so
    // a client still writing may see the close instead (kubectl, on HTTP/2, gets the 413: see
    // tests/kubectl.rs). Either is fine; a 5xx is not.
    let request = http::Request::builder()
        .method("POST")
        .uri(PODS)
        .header("content-type", "application/json")
        .body(Body::from(vec![b' '; 4 << 20]))
        .expect("request");
    if let Ok(response) = probe.client.send(request).await {
        assert_eq!(response.status().as_u16(), 413, "4 MiB body");
    }

    let patches: &[(&str, &[u8])] = &[
        ("application/json-patch+json", br#"{"op":"add"}"#),
        (
            "application/json-patch+json",
            br#"[{"op":"explode","path":"/x"}]"#,
        ),
        (
            "application/json-patch+json",
            br#"[{"op":"remove","path":"/nowhere/at/all"}]"#,
        ),
        (
            "application/json-patch+json",
            br#"[{"op":"replace","path":"/spec/containers","value":7}]"#,
        ),
        (
            "application/merge-patch+json",
            br#"{"spec":{"containers":"none"}}"#,
        ),
        (
            "application/merge-patch+json",
            br#"{"metadata":{"name":"renamed"}}"#,
        ),
        ("application/merge-patch+json", b"[1,2"),
        (
            "application/strategic-merge-patch+json",
            br#"{"spec":{"containers":[{"$patch":"explode","name":"c"}]}}"#,
        ),
        (
            "application/strategic-merge-patch+json",
            br#"{"spec":{"$setElementOrder/containers":"x"}}"#,
        ),
        (
            "application/strategic-merge-patch+json",
            br#"{"$patch":"delete"}"#,
        ),
        (
            "application/strategic-merge-patch+json",
            br#"{"spec":{"containers":[{"image":"no-name"}]}}"#,
        ),
        (
            "application/strategic-merge-patch+json",
            b"\"just a string\"",
        ),
        ("application/apply-patch+yaml", b"kind: Pod"),
        ("text/plain", b"hello"),
    ];
    for (content_type, body) in patches {
        let what = format!("PATCH {content_type} {}", String::from_utf8_lossy(body));
        probe
            .refused(
                &what,
                "PATCH",
                &format!("{PODS}/keep"),
                content_type,
                body.to_vec(),
            )
            .await;
    }

    for query in [
        "limit=abc",
        "labelSelector=a%20in%20(",
        "labelSelector===",
        "fieldSelector=%3Dvalue",
        "resourceVersion=abc&resourceVersionMatch=Exact",
        "continue=not-a-token",
        "watch=1&resourceVersion=abc",
        "watch=1&timeoutSeconds=soon",
        "watch=1&sendInitialEvents=true",
    ] {
        probe
            .refused(
                query,
                "GET",
                &format!("{PODS}?{query}"),
                "application/json",
                Vec::new(),
            )
            .await;
    }
    for (what, body) in [
        (
            "a bad propagation policy",
            br#"{"propagationPolicy":"Sometimes"}"#.to_vec(),
        ),
        (
            "a negative grace period",
            br#"{"gracePeriodSeconds":-5}"#.to_vec(),
        ),
        (
            "DeleteOptions of the wrong shape",
            br#"{"preconditions":"x"}"#.to_vec(),
        ),
        ("DeleteOptions that are not JSON", b"{".to_vec()),
    ] {
        let path = format!("{PODS}/keep");
        probe
            .refused(what, "DELETE", &path, "application/json", body)
            .await;
    }
    probe
        .refused(
            "dryRun=Some",
            "POST",
            &format!("{PODS}?dryRun=Some"),
            "application/json",
            serde_json::to_vec(&pod()).unwrap(),
        )
        .await;
    for path in [
        "/apis/frobs.example.com/v1/frobs",
        "/api/v2/pods",
        "/api/v1/namespaces/default/frobs",
        "/api/v1/namespaces/default/pods/keep/nonsense",
    ] {
        probe
            .refused(path, "GET", path, "application/json", Vec::new())
            .await;
    }

    let (code, after) = probe
        .send(
            "GET",
            &format!("{PODS}/keep"),
            "application/json",
            Vec::new(),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&before).unwrap(),
        serde_json::from_slice::<Value>(&after).unwrap(),
        "the stored pod is unchanged"
    );
    let (code, list) = probe
        .send("GET", PODS, "application/json", Vec::new())
        .await;
    assert_eq!(code, 200);
    let list: Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(1),
        "nothing else was created: {list}"
    );
    let log = master.log_tail();
    assert!(!log.contains("panicked"), "the master panicked: {log}");
}
