//! The `skiff` binary's own answers, with no cluster: what a user sees for a missing file, a
//! file that is no image archive, and an API server that does not answer.

use std::path::Path;
use std::process::{Command, Output};

fn skiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run skiff")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tar with an (empty) OCI index.json: enough for the command's own checks.
fn oci_archive(path: &Path) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    let index = br#"{"schemaVersion":2,"manifests":[]}"#;
    let mut header = tar::Header::new_gnu();
    header.set_size(index.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "index.json", &index[..])
        .unwrap();
    builder.finish().unwrap();
}

#[test]
fn help_names_the_image_verb() {
    let out = skiff(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("kubectl-like verbs plus `bpf`, `top` and `bench`"),
        "{help}"
    );
    assert!(help.contains("image"), "{help}");
    let out = skiff(&["image", "import", "--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--node <NAME>"));
}

#[test]
fn a_missing_file_is_named() {
    let out = skiff(&["image", "import", "/nonexistent/app.tar"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error: /nonexistent/app.tar: no such file\n");
}

#[test]
fn a_file_that_is_no_archive_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.json");
    std::fs::write(&file, "{}".repeat(600)).unwrap();
    let out = skiff(&["image", "import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a tar archive"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_api_server_that_does_not_answer_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("app.tar");
    oci_archive(&archive);
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
             https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  \
             user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: \
             u\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let out = skiff(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "image",
        "import",
        archive.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot reach the API server at https://127.0.0.1:{port}"
        )),
        "{err}"
    );
}
