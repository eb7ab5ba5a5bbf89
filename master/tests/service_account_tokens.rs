//! End-to-end: service-account tokens with the real `kubectl` against a real `skiff-master`:
//! `kubectl create token`, the token authenticating `kubectl --token`, 401 once the account or
//! the bound pod is gone, the ServiceAccount admission's volume, and `kube-root-ca.crt`.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use skiff_master::testing::Master;

fn kubectl(master: &Master, args: &[&str]) -> Output {
    master.kubectl(args).unwrap_or_else(|e| panic!("{e:#}"))
}

fn ok(master: &Master, args: &[&str]) -> String {
    let out = kubectl(master, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}\nmaster log: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        master.log_tail()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(master: &Master, args: &[&str]) -> String {
    let out = kubectl(master, args);
    assert!(
        !out.status.success(),
        "kubectl {args:?} should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn apply(master: &Master, manifest: &str) {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&master.kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `kubectl args` until it succeeds (controllers start after leader election).
fn eventually(master: &Master, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = kubectl(master, args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "kubectl {args:?} kept failing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kubectl get pods` as the token's user; the error text when refused.
fn as_token(master: &Master, token: &str) -> Result<String, String> {
    let out = kubectl(master, &["--token", token, "get", "pods", "-n", "default"]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn service_account_tokens_with_kubectl() {
    let binary = Path::new(env!("CARGO_BIN_EXE_skiff-master"));
    let master = Master::start(binary, None, &[]).unwrap_or_else(|e| panic!("{e:#}"));

    // The controllers make the default account and publish the CA.
    eventually(
        &master,
        &["get", "serviceaccount", "default", "-n", "default"],
    );
    let ca = eventually(
        &master,
        &[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "default",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ],
    );
    let pki_ca = std::fs::read_to_string(master.dir().join("pki/ca.crt")).unwrap();
    assert_eq!(ca.trim(), pki_ca.trim());
    apply(
        &master,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: fresh}\n",
    );
    eventually(
        &master,
        &["get", "configmap", "kube-root-ca.crt", "-n", "fresh"],
    );

    // kubectl create token finds the subresource through discovery.
    let token = ok(&master, &["create", "token", "default"])
        .trim()
        .to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let listed = as_token(&master, &token).unwrap_or_else(|e| panic!("token refused: {e}"));
    assert!(listed.is_empty() || listed.contains("NAME"), "{listed}");

    let too_short = fails(&master, &["create", "token", "default", "--duration", "5m"]);
    assert!(
        too_short.contains("may not specify a duration less than 10 minutes"),
        "{too_short}"
    );
    let missing = fails(&master, &["create", "token", "nobody"]);
    assert!(
        missing.contains(r#"serviceaccounts "nobody" not found"#),
        "{missing}"
    );
    let tampered = format!("{}x", &token[..token.len() - 1]);
    let refused = as_token(&master, &tampered).unwrap_err();
    assert!(refused.contains("Unauthorized"), "{refused}");

    // The ServiceAccount admission: default account, the kube-api-access volume, mounts.
    apply(
        &master,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: default}
spec:
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: quiet, namespace: default}
spec:
  automountServiceAccountToken: false
  containers: [{name: c, image: busybox}]
"#,
    );
    let get = |pod: &str, path: &str| {
        ok(
            &master,
            &[
                "get",
                "pod",
                pod,
                "-n",
                "default",
                "-o",
                &format!("jsonpath={path}"),
            ],
        )
    };
    assert_eq!(get("api", "{.spec.serviceAccountName}"), "default");
    let volume = get("api", "{.spec.volumes[0].name}");
    assert!(
        volume.starts_with("kube-api-access-") && volume.len() == 21,
        "{volume}"
    );
    assert_eq!(
        get("api", "{.spec.containers[0].volumeMounts[0].mountPath}"),
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    assert_eq!(
        get(
            "api",
            "{.spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds}"
        ),
        "3607"
    );
    assert_eq!(get("quiet", "{.spec.volumes}"), "");
    let forbidden = fails(
        &master,
        &[
            "run",
            "ghost",
            "--image",
            "busybox",
            "--overrides",
            r#"{"spec":{"serviceAccountName":"ghost"}}"#,
        ],
    );
    assert!(
        forbidden.contains("error looking up service account default/ghost"),
        "{forbidden}"
    );

    // A token bound to a pod dies with the pod.
    let bound = ok(
        &master,
        &[
            "create",
            "token",
            "default",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "api",
        ],
    )
    .trim()
    .to_string();
    as_token(&master, &bound).unwrap_or_else(|e| panic!("bound token refused: {e}"));
    ok(
        &master,
        &["delete", "pod", "api", "-n", "default", "--wait=false"],
    );
    let refused = as_token(&master, &bound).unwrap_err();
    assert!(refused.contains("Unauthorized"), "{refused}");
    as_token(&master, &token).unwrap_or_else(|e| panic!("unbound token refused: {e}"));

    // Deleting the account revokes its tokens, also once the controller recreates it (a new
    // UID).
    ok(
        &master,
        &["delete", "serviceaccount", "default", "-n", "default"],
    );
    let refused = as_token(&master, &token).unwrap_err();
    assert!(refused.contains("Unauthorized"), "{refused}");
    eventually(
        &master,
        &["get", "serviceaccount", "default", "-n", "default"],
    );
    let refused = as_token(&master, &token).unwrap_err();
    assert!(refused.contains("Unauthorized"), "{refused}");
    let fresh = ok(&master, &["create", "token", "default"])
        .trim()
        .to_string();
    as_token(&master, &fresh).unwrap_or_else(|e| panic!("new token refused: {e}"));
}
