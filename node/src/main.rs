//! `skiff-node`: the node agent (`skiff-node run`) and `skiff-node hollow`, which fakes many
//! nodes over the Kubernetes API.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skiff_node::{agent, hollow};

/// Skiff's node agent (runs pods on containerd; eBPF Service load balancing and telemetry).
#[derive(Parser)]
#[command(name = "skiff-node", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: register this machine as a Node and run the pods bound to it on
    /// containerd.
    Run(Box<agent::Args>),
    /// Fake N nodes purely over the Kubernetes API (no containers), like kubemark or KWOK:
    /// register them, renew their leases, and take their pods through Running to completion.
    Hollow(hollow::Args),
    /// Import, pull or build container images in the node's containerd by hand.
    Image(skiff_node::runtime::images::cli::Args),
}

fn main() -> anyhow::Result<()> {
    // containerd's shim starts `skiff-node` as a container's log driver with its arguments in
    // no fixed order (see logs::driver), so that mode is recognised before clap parses.
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if skiff_node::logs::driver::is_invoked(&args) {
        std::process::exit(skiff_node::logs::driver::run(&args));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        None => anyhow::bail!(
            "say what to run: `skiff-node run` (the node agent; --help lists its flags) or \
             `skiff-node hollow` (fake nodes for scale tests)"
        ),
        Some(Command::Run(args)) => {
            init_tracing(hollow::LogFormat::Text);
            let _ = rustls::crypto::ring::default_provider().install_default();
            agent::run(*args, shutdown_signal())
                .await
                .context("skiff-node failed")
        }
        Some(Command::Image(args)) => skiff_node::runtime::images::cli::run(args).await,
        Some(Command::Hollow(args)) => {
            init_tracing(args.log_format);
            // Every flag is checked before anything is contacted.
            let settings = hollow::Settings::from_args(&args)?;
            // kube's rustls client needs a process-wide provider; keep to ring like the master.
            let _ = rustls::crypto::ring::default_provider().install_default();
            hollow::run(settings, shutdown_signal())
                .await
                .context("skiff-node hollow failed")
        }
    }
}

fn init_tracing(format: hollow::LogFormat) {
    // kube-client logs every failed request at ERROR; hollow logs the failures it handles
    // (and holds back repeats), so that layer is off unless RUST_LOG asks for it.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        hollow::LogFormat::Json => builder.json().init(),
        hollow::LogFormat::Text => builder.init(),
    }
}

/// Listens for SIGTERM and SIGINT from now on (so a signal during start-up is not lost) and
/// returns a future that completes on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM/SIGINT; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
