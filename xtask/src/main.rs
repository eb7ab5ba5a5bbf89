//! `cargo xtask`: what cargo cannot do alone. Every command that needs system packages runs
//! `cluster/install-deps.sh` first (quick when all is there), so each works on a fresh machine.
//!
//!   cargo xtask up            install, build, start a single-node cluster (containerd, skiff-master,
//!                             skiff-node) in the foreground
//!   cargo xtask test          install, then the whole test suite on one release build
//!   cargo xtask bench         list the benchmarks
//!   cargo xtask bench store   the store benchmark (both backends; starts its own etcd)
//!   cargo xtask bench api     the API server benchmark (a real skiff-master, both backends)
//!   cargo xtask bench scheduler  scheduler and controllers with 1,000 hollow nodes
//!   cargo xtask bench node    the node agent: pod start latency, RSS and CPU at 100 pods
//!   cargo xtask install-deps  only the install step
//!   cargo xtask image         the busybox test image: target/images/busybox.tar

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum as _};

// The image builder lives in skiff-node (tests call it there); xtask compiles the same file
// rather than depending on skiff-node, which would pull containerd, kube and k8s-openapi into
// every `cargo xtask` build. The file uses only std, tar, flate2, sha2 and serde_json.
#[allow(dead_code)]
#[path = "../../node/src/runtime/images/busybox.rs"]
mod busybox;

mod up;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the system packages and tools Skiff needs (Debian 12, as root).
    InstallDeps,
    /// Install, build and start a single-node cluster in the foreground: containerd (the
    /// system's, or one of Skiff's own), skiff-master on the embedded store, and skiff-node with
    /// the busybox test image imported. Ctrl-C stops what it started.
    Up {
        /// The master's data directory.
        #[arg(long, default_value = "/var/lib/skiff")]
        data_dir: PathBuf,
        /// Extra flags for skiff-master, after `--`.
        #[arg(last = true)]
        master_args: Vec<String>,
    },
    /// Install, then run every test (unit, conformance, end-to-end) on one release build.
    Test {
        /// Extra arguments for the test runner, after `--` (a filter, for example).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the busybox test image (an OCI image-layout tar, from Debian's busybox-static) for
    /// `skiff image import` or a node's preload directory.
    Image {
        /// The directory to write busybox.tar into (default: target/images).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The image's name.
        #[arg(long, default_value = busybox::TEST_IMAGE)]
        reference: String,
    },
    /// Run a benchmark and print its figures (record them in BENCHMARKS.md); without a name,
    /// list the benchmarks.
    Bench {
        #[arg(value_enum)]
        which: Option<Bench>,
        /// Extra arguments for the benchmark, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// The state store: writes/s, write latency, watch lag and list latency, both backends.
    Store,
    /// The API server, a real skiff-master driven by 32 kube clients: pod creates/s, create,
    /// get and list latency, 100-watcher fan-out lag, the master's RSS and CPU; both backends.
    Api,
    /// The scheduler and controllers with 1,000 hollow nodes: pods/s scheduled, creation to
    /// Running p99 at 100 pods/s, the master's RSS and CPU with 30,000 pods.
    Scheduler,
    /// The node agent on a private containerd: creation to Running for 1 pod and for 50 at
    /// once, the agent's RSS and idle CPU with 100 pods.
    Node,
}

impl Bench {
    /// The name it goes by on the command line.
    fn name(self) -> &'static str {
        match self {
            Bench::Store => "store",
            Bench::Api => "api",
            Bench::Scheduler => "scheduler",
            Bench::Node => "node",
        }
    }

    /// The bench target's name (unique in the workspace).
    fn target(self) -> &'static str {
        match self {
            Bench::Store => "store",
            Bench::Api => "api",
            Bench::Scheduler => "scheduler",
            Bench::Node => "pod_start",
        }
    }
}

/// Prints each benchmark with its one-line description.
fn list_benches() {
    println!("benchmarks: cargo xtask bench <name> [-- <args>]");
    for bench in Bench::value_variants() {
        let help = bench
            .to_possible_value()
            .and_then(|v| v.get_help().map(ToString::to_string))
            .unwrap_or_default();
        println!("  {:<9} {help}", bench.name());
    }
    println!("arguments: store and api: --backend embedded|etcd|all (default all), --quick; api also --pods N, --with-controllers");
    println!("           scheduler: --quick, --nodes N, --no-token-volume");
    println!("           node: --quick");
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::InstallDeps => install_deps(&root),
        Cmd::Up {
            data_dir,
            master_args,
        } => {
            install_deps(&root)?;
            cargo(&[
                "build",
                "--release",
                "--package",
                "skiff-master",
                "--package",
                "skiff-node",
                "--package",
                "skiff",
            ])?;
            up::run(&root, &data_dir, &master_args)
        }
        Cmd::Test { args } => {
            install_deps(&root)?;
            // One release build serves the tests and the benchmarks.
            if has_nextest() {
                let mut cmd = vec![
                    "nextest",
                    "run",
                    "--release",
                    "--workspace",
                    "--no-fail-fast",
                ];
                cmd.extend(args.iter().map(String::as_str));
                cargo(&cmd)
            } else {
                let mut cmd = vec!["test", "--release", "--workspace", "--no-fail-fast"];
                if !args.is_empty() {
                    cmd.push("--");
                    cmd.extend(args.iter().map(String::as_str));
                }
                cargo(&cmd)
            }
        }
        Cmd::Image { out, reference } => {
            let dir = out.unwrap_or_else(|| {
                std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| root.join("target"))
                    .join("images")
            });
            let archive = dir.join("busybox.tar");
            let built = busybox::build_busybox_archive(&archive, &reference)
                .with_context(|| format!("cannot build {}", archive.display()))?;
            println!("{}", archive.display());
            println!("  image    {}", built.reference);
            println!("  manifest {}", built.manifest_digest);
            println!("  config   {}", built.config_digest);
            println!("  chain ID {}", built.chain_id);
            Ok(())
        }
        Cmd::Bench { which: None, .. } => {
            list_benches();
            Ok(())
        }
        Cmd::Bench {
            which: Some(which),
            args,
        } => {
            install_deps(&root)?;
            // The benchmarks start both binaries from target/release: the master ones run
            // hollow nodes (skiff-node beside skiff-master), the node one a real master. `cargo
            // bench` builds only its own package's binaries, so all are built here first, with
            // the same package set and targets as `cargo xtask test`: features unify the same
            // way, so tests and benchmarks share one build of the dependencies.
            cargo(&["build", "--release", "--workspace", "--all-targets"])?;
            let mut cmd = vec!["bench", "--workspace", "--bench", which.target(), "--"];
            cmd.extend(args.iter().map(String::as_str));
            cargo(&cmd)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn install_deps(root: &Path) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "this step installs system packages and needs root: run it as root (sudo -E cargo xtask ...)"
        );
    }
    run(&mut Command::new(root.join("cluster/install-deps.sh")))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn has_nextest() -> bool {
    Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}
