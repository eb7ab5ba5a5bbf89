//! `skiff-master`: the API server, scheduler and controllers in one process.
//!
//! It opens the state store (embedded by default, etcd with `--etcd-servers`), keeps its history
//! bounded, creates or loads the cluster's PKI, writes the admin kubeconfig and serves the
//! Kubernetes API over HTTPS until SIGTERM/SIGINT.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use skiff_master::config::Config;
use skiff_master::controllers::ControlPlane;
use skiff_master::store;

/// How often leaked Service allocations are looked for.
const ALLOCATION_REPAIR_INTERVAL: Duration = Duration::from_secs(300);

/// The master allocates and frees small JSON values at a high rate: glibc's allocator took a
/// third of its CPU time and its RSS varied by a third from run to run with fragmentation.
/// jemalloc does neither (BENCHMARKS.md, scheduler).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: a background thread returns freed pages to the kernel within about a
/// second, instead of only when the allocator is next busy. `_RJEM_MALLOC_CONF` in the
/// environment overrides them.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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

    // Bind before writing anything a running master may own (its kubeconfig).
    let addr = std::net::SocketAddr::new(config.bind_address, config.secure_port);
    let listener = skiff_master::api::bind(addr).await?;

    skiff_master::api::pki::install_crypto_provider();
    let pki_dir = config.data_dir.join("pki");
    let pki = skiff_master::api::pki::load_or_create(&pki_dir, &config.tls_san)
        .with_context(|| format!("cannot set up the cluster PKI in {}", pki_dir.display()))?;
    let host = match config.bind_address {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let server_url = format!("https://{host}:{}", config.secure_port);
    pki.write_kubeconfig(&config.admin_kubeconfig, &server_url, "admin")
        .with_context(|| format!("cannot write {}", config.admin_kubeconfig.display()))?;
    let allocator = skiff_master::api::allocator::Allocator::new(
        store.clone(),
        &config.service_cluster_ip_range,
        &config.service_node_port_range,
    )?;
    match allocator.repair().await {
        Ok(report) => tracing::info!(?report, "service allocations checked"),
        Err(e) => tracing::warn!(error = %e, "cannot check service allocations now"),
    }
    let allocator = std::sync::Arc::new(allocator);
    // Allocations a crash left behind are freed once they are older than the repair grace.
    let repairer = {
        let allocator = allocator.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(ALLOCATION_REPAIR_INTERVAL);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(e) = allocator.repair().await {
                    tracing::warn!(error = %e, "cannot check service allocations now");
                }
            }
        })
    };
    let state = std::sync::Arc::new(
        skiff_master::api::AppState::new(store.clone(), pki, allocator)
            .with_default_tolerations(config.default_tolerations())
            .with_token_config(config.token_config()),
    );
    skiff_master::api::ensure_default_namespaces(&state)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the default namespaces: {}", e.message))?;
    println!(
        "skiff-master: serving the Kubernetes API at {server_url} (store at revision {revision})"
    );
    println!(
        "skiff-master: try  kubectl --kubeconfig {} get namespaces",
        config.admin_kubeconfig.display()
    );
    let server = tokio::spawn(skiff_master::api::serve(listener, state, shutdown_signal()));
    let control_plane = match control_plane_client(&config.admin_kubeconfig).await {
        Ok(client) => {
            let mut controllers = config.controllers.clone();
            controllers
                .root_ca_file
                .get_or_insert_with(|| pki_dir.join(skiff_master::api::pki::CA_CERT_FILE));
            Some(ControlPlane::spawn(client, controllers))
        }
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "cannot start the scheduler and controllers"
            );
            None
        }
    };
    let served = server.await;
    tracing::info!("shutting down");
    if let Some(control_plane) = control_plane {
        control_plane.stop().await;
    }
    served.context("the API server task failed")??;
    compactor.abort();
    repairer.abort();
    drop(store);
    Ok(())
}

/// A client to this master's own API, as the admin: the scheduler and controllers write through
/// the same path as any client.
async fn control_plane_client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .context("cannot use the admin kubeconfig")?;
    kube::Client::try_from(config).context("cannot build the API client")
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
