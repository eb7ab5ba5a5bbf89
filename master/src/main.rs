//! `skiff-master`: the API server, scheduler and controllers in one process.
//!
//! This step opens the state store (embedded by default, etcd with `--etcd-servers`), keeps its
//! history bounded, and runs until SIGTERM/SIGINT. The API server arrives in the next step.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use skiff_master::config::Config;
use skiff_master::store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing(&config.log_format);
    config.validate()?;

    let backend = config.backend();
    let store = store::open(&backend)
        .await
        .with_context(|| format!("cannot open the state store ({backend:?})"))?;
    let revision = store.current_revision().await?;
    tracing::info!(?backend, revision, "state store ready");
    let compactor = store::spawn_compactor(
        store.clone(),
        Duration::from_secs(config.compaction_interval_seconds),
    );

    match &backend {
        store::Backend::Embedded { path } => println!(
            "skiff-master: state store {} at revision {revision}; inspect it with `skiff-master --help`",
            path.display()
        ),
        store::Backend::Etcd { endpoints } => println!(
            "skiff-master: state store etcd {} at revision {revision}; inspect it with \
             `ETCDCTL_API=3 etcdctl --endpoints {} get --prefix /registry/ --keys-only`",
            endpoints.join(","),
            endpoints.join(",")
        ),
    }
    println!("skiff-master: running until SIGTERM or Ctrl-C");

    shutdown_signal().await;
    tracing::info!("shutting down");
    compactor.abort();
    drop(store);
    Ok(())
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = ctrl_c.await;
        }
    }
}
