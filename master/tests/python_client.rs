//! End-to-end: the official Kubernetes Python client (`kubernetes` on PyPI, typed API) against a
//! real `skiff-master`, on both store backends.
//!
//! The checks live in `tests/python/e2e.py`; this runs it with the venv that
//! `cluster/install-deps.sh` creates (CI runs that through `cargo xtask test`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_master::testing::{Etcd, Master};

/// The venv's interpreter, with the pinned client installed.
const PYTHON: &str = "/opt/skiff/pyenv/bin/python3";
/// A backstop over the script's own watchdog (180 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/e2e.py")
}

/// A master without control loops: the script checks exact event sequences of its own
/// objects, which a scheduler writing `PodScheduled` would add to.
fn start_master(etcd_servers: Option<&str>) -> Master {
    Master::start(
        Path::new(env!("CARGO_BIN_EXE_skiff-master")),
        etcd_servers,
        &["--controllers="],
    )
    .expect("start skiff-master")
}

/// Runs e2e.py against the master; fails with its output and the master's log if it fails.
fn run_script(master: &Master) {
    assert!(
        Path::new(PYTHON).is_file(),
        "{PYTHON} is missing: run cluster/install-deps.sh (as root) to create the venv with the \
         Kubernetes Python client (`cargo xtask test` runs it first)"
    );
    let started = Instant::now();
    let out_path = master.dir().join("python-e2e.out");
    let out = std::fs::File::create(&out_path).expect("create the script's output file");
    let mut child = Command::new(PYTHON)
        .arg(script())
        .arg(&master.kubeconfig)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("reopen the output file"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON}: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for e2e.py") {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Some(status) if status.success() => {
            println!("{output}e2e.py passed in {:.1?}", started.elapsed());
        }
        _ => panic!(
            "e2e.py {} after {:.1?}; its output:\n{output}\n--- skiff-master log tail ---\n{}",
            status.map_or_else(
                || format!("was killed after {SCRIPT_TIMEOUT:?}"),
                |s| format!("failed ({s})")
            ),
            started.elapsed(),
            master.log_tail()
        ),
    }
}

#[test]
fn python_client_embedded() {
    let master = start_master(None);
    run_script(&master);
}

#[test]
fn python_client_etcd() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let etcd = rt.block_on(Etcd::start()).expect("start etcd");
    let master = start_master(Some(&etcd.endpoint));
    run_script(&master);
    drop(master);
    drop(etcd);
}
