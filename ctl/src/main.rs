//! `skiff`, the Skiff command line: kubectl-like verbs plus `bpf`, `top` and `bench`.
//!
//! Verbs so far: `skiff image import FILE [--node NAME …]` ([`image`]). It talks to the master
//! with a kubeconfig found as kubectl finds one ([`kubeconfig`]).

mod image;
mod kubeconfig;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The Skiff command line: kubectl-like verbs plus `bpf`, `top` and `bench`.
#[derive(Parser)]
#[command(name = "skiff", version)]
struct Cli {
    /// The kubeconfig to use (default: $KUBECONFIG, else ~/.kube/config, else
    /// /etc/skiff/admin.kubeconfig, which skiff-master writes).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Images on the nodes.
    Image {
        #[command(subcommand)]
        command: image::Command,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One crypto provider for every TLS connection (kube's included): ring, as the rest of
    // Skiff uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Image { command } => image::run(cli.kubeconfig.as_deref(), command).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
