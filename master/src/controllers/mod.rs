//! The control loops: each drives observed state toward desired state, reading shared informer
//! caches and writing only through the API ([`client::Api`]), like any other client.
//!
//! Shape (kube-rs): watch → cache ([`runtime::Informer`]) → idempotent `reconcile(key)` →
//! requeue with backoff ([`runtime::WorkQueue`], [`runtime::run`]). Only the holder of the
//! leader Lease runs them ([`leader`]); every master serves the API.

pub mod client;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod events;
pub mod garbagecollector;
pub mod history;
pub mod job;
pub mod leader;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod replicaset;
pub mod rootcacert;
pub mod runtime;
pub mod serviceaccount;
pub mod statefulset;
pub mod ttl;
pub mod workloads;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, Pod, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use tokio::task::JoinSet;

pub use client::{Api, ClientError};
pub use events::{EventRecorder, EventType};
pub use runtime::{Action, Informer, Key, Reconciler, WorkQueue};

/// Why a reconcile failed; the loop logs it once and retries the key with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The object cannot be acted on as it is (a bad selector, a bad schedule …).
    #[error("{object}: {message}")]
    Invalid { object: String, message: String },
}

impl Error {
    /// A stale `resourceVersion`: worth a quick retry, not a warning.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Client(e) if e.is_conflict())
    }
}

/// The controllers' flags, after kube-controller-manager's where one exists.
#[derive(clap::Args, Debug, Clone)]
#[group(id = "controller-flags")]
#[command(next_help_heading = "Scheduler and controllers")]
pub struct Config {
    /// Controllers to run: `*` for all, a name to enable one, `-name` to disable one
    /// (for example `*,-cronjob`; empty runs none). Names: replicaset, deployment, daemonset, statefulset, job,
    /// cronjob, ttl-after-finished, endpoint, endpointslice, nodelifecycle, nodeipam, namespace,
    /// garbagecollector, podgc, serviceaccount, root-ca-cert-publisher, scheduler.
    #[arg(
        long,
        env = "SKIFF_CONTROLLERS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub controllers: Vec<String>,
    /// Run the scheduler and controllers only while holding the `kube-system/skiff-master`
    /// Lease, so several masters can share one etcd.
    #[arg(long, env = "SKIFF_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// How long a leader's Lease lasts without renewal before another master takes over.
    #[arg(long, env = "SKIFF_LEADER_ELECT_LEASE_DURATION", default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// How long a leader keeps leading while its renewals fail.
    #[arg(long, env = "SKIFF_LEADER_ELECT_RENEW_DEADLINE", default_value = "8s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// How often candidates try to acquire, and the leader renews, the Lease.
    #[arg(long, env = "SKIFF_LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// How often the node lifecycle controller checks node Leases.
    #[arg(long, env = "SKIFF_NODE_MONITOR_PERIOD", default_value = "5s", value_parser = parse_duration)]
    pub node_monitor_period: Duration,
    /// How long a node's Lease may go unrenewed before the node is marked `Ready=Unknown`.
    #[arg(long, env = "SKIFF_NODE_MONITOR_GRACE_PERIOD", default_value = "50s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// How long a new node may take to report before it is marked `Ready=Unknown`.
    #[arg(long, env = "SKIFF_NODE_STARTUP_GRACE_PERIOD", default_value = "60s", value_parser = parse_duration)]
    pub node_startup_grace_period: Duration,
    /// Reconcile workers per controller.
    #[arg(long, env = "SKIFF_CONCURRENT_SYNCS", default_value_t = 5)]
    pub concurrent_syncs: usize,
    /// The pods' address range, from which each node gets its `podCIDR`.
    #[arg(long, env = "SKIFF_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// The prefix length of each node's `podCIDR`.
    #[arg(long, env = "SKIFF_NODE_CIDR_MASK_SIZE", default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// The CA bundle published as `kube-root-ca.crt` in every namespace; `skiff-master`
    /// defaults it to its own `<data-dir>/pki/ca.crt`.
    #[arg(long, env = "SKIFF_ROOT_CA_FILE")]
    pub root_ca_file: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        Wrapper::parse_from(["skiff-master"]).config
    }
}

impl Config {
    /// Whether the controller `name` is enabled by `--controllers`.
    pub fn enabled(&self, name: &str) -> bool {
        let mut on = false;
        for item in &self.controllers {
            let item = item.trim();
            if item == "*" || item == name {
                on = true;
            } else if item.strip_prefix('-') == Some(name) {
                return false;
            }
        }
        on
    }
}

/// Parses a Go-style duration: `500ms`, `10s`, `5m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration: use a number with ms, s, m or h (like 10s)")
    })?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?}: use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?} is out of range: {e}"))
}

/// The shared caches, one per kind, each fed by one watch.
#[derive(Clone)]
pub struct Informers {
    /// Compact ([`Informer::compact`]): pods are the one kind counted in tens of thousands.
    pub pods: Informer<Pod>,
    pub nodes: Informer<Node>,
    pub namespaces: Informer<Namespace>,
    pub services: Informer<Service>,
    pub endpoints: Informer<Endpoints>,
    pub endpoint_slices: Informer<EndpointSlice>,
    pub service_accounts: Informer<ServiceAccount>,
    /// Only the `kube-root-ca.crt` ConfigMaps (a field selector on the watch).
    pub root_ca_config_maps: Informer<ConfigMap>,
    pub replica_sets: Informer<ReplicaSet>,
    pub deployments: Informer<Deployment>,
    pub daemon_sets: Informer<DaemonSet>,
    pub stateful_sets: Informer<StatefulSet>,
    pub controller_revisions: Informer<ControllerRevision>,
    pub jobs: Informer<Job>,
    pub cron_jobs: Informer<CronJob>,
    /// Node heartbeats: Leases in `kube-node-lease`.
    pub node_leases: Informer<Lease>,
}

impl Default for Informers {
    fn default() -> Self {
        Informers {
            pods: Informer::compact(),
            nodes: Informer::new(),
            namespaces: Informer::new(),
            services: Informer::new(),
            endpoints: Informer::new(),
            endpoint_slices: Informer::new(),
            service_accounts: Informer::new(),
            root_ca_config_maps: Informer::new(),
            replica_sets: Informer::new(),
            deployments: Informer::new(),
            daemon_sets: Informer::new(),
            stateful_sets: Informer::new(),
            controller_revisions: Informer::new(),
            jobs: Informer::new(),
            cron_jobs: Informer::new(),
            node_leases: Informer::new(),
        }
    }
}

impl Informers {
    /// Starts one watch per kind; each informer reports synced after its first list.
    pub fn spawn(&self, client: &kube::Client, tasks: &mut JoinSet<()>) {
        fn go<K>(tasks: &mut JoinSet<()>, informer: &Informer<K>, api: kube::Api<K>)
        where
            K: kube::Resource<DynamicType = ()>
                + Clone
                + serde::de::DeserializeOwned
                + serde::Serialize
                + std::fmt::Debug
                + Send
                + Sync
                + 'static,
        {
            go_with(tasks, informer, api, None);
        }
        fn go_with<K>(
            tasks: &mut JoinSet<()>,
            informer: &Informer<K>,
            api: kube::Api<K>,
            fields: Option<&str>,
        ) where
            K: kube::Resource<DynamicType = ()>
                + Clone
                + serde::de::DeserializeOwned
                + serde::Serialize
                + std::fmt::Debug
                + Send
                + Sync
                + 'static,
        {
            let informer = informer.clone();
            // Bookmarks keep resumption cheap; pages of 500 keep the first list's memory low.
            let mut config = watcher::Config::default().page_size(500).any_semantic();
            if let Some(fields) = fields {
                config = config.fields(fields);
            }
            tasks.spawn(informer.run(api, config));
        }
        let c = client.clone();
        go(tasks, &self.pods, kube::Api::all(c.clone()));
        go(tasks, &self.nodes, kube::Api::all(c.clone()));
        go(tasks, &self.namespaces, kube::Api::all(c.clone()));
        go(tasks, &self.services, kube::Api::all(c.clone()));
        go(tasks, &self.endpoints, kube::Api::all(c.clone()));
        go(tasks, &self.endpoint_slices, kube::Api::all(c.clone()));
        go(tasks, &self.service_accounts, kube::Api::all(c.clone()));
        go_with(
            tasks,
            &self.root_ca_config_maps,
            kube::Api::all(c.clone()),
            Some(&format!("metadata.name={}", rootcacert::CONFIG_MAP)),
        );
        go(tasks, &self.replica_sets, kube::Api::all(c.clone()));
        go(tasks, &self.deployments, kube::Api::all(c.clone()));
        go(tasks, &self.daemon_sets, kube::Api::all(c.clone()));
        go(tasks, &self.stateful_sets, kube::Api::all(c.clone()));
        go(tasks, &self.controller_revisions, kube::Api::all(c.clone()));
        go(tasks, &self.jobs, kube::Api::all(c.clone()));
        go(tasks, &self.cron_jobs, kube::Api::all(c.clone()));
        go(
            tasks,
            &self.node_leases,
            kube::Api::namespaced(c, "kube-node-lease"),
        );
    }

    /// Waits until every informer has loaded its first list.
    pub async fn wait_synced(&self) {
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        self.namespaces.wait_synced().await;
        self.services.wait_synced().await;
        self.endpoints.wait_synced().await;
        self.endpoint_slices.wait_synced().await;
        self.service_accounts.wait_synced().await;
        self.root_ca_config_maps.wait_synced().await;
        self.replica_sets.wait_synced().await;
        self.deployments.wait_synced().await;
        self.daemon_sets.wait_synced().await;
        self.stateful_sets.wait_synced().await;
        self.controller_revisions.wait_synced().await;
        self.jobs.wait_synced().await;
        self.cron_jobs.wait_synced().await;
        self.node_leases.wait_synced().await;
    }
}

/// What every control loop gets: the API, the caches, the event recorder and the flags.
#[derive(Clone)]
pub struct Context {
    pub api: Api,
    pub informers: Informers,
    pub events: EventRecorder,
    pub config: Arc<Config>,
}

impl Context {
    /// A context over `client` with empty caches (tests fill them by hand) and the receiving end
    /// of its event recorder.
    pub fn new(
        client: Arc<dyn client::Client>,
        config: Config,
    ) -> (Context, tokio::sync::mpsc::Receiver<events::Record>) {
        let (events, rx) = EventRecorder::new();
        let ctx = Context {
            api: Api::new(client),
            informers: Informers::default(),
            events,
            config: Arc::new(config),
        };
        (ctx, rx)
    }
}

/// How a control loop starts: registers its informer callbacks and spawns its workers.
type StartFn = fn(&Context, &mut JoinSet<()>);

/// Starts every enabled control loop over `client` (a kube client to this master's own API) and
/// returns their tasks; dropping or aborting the set stops them all.
pub fn start(client: kube::Client, config: Arc<Config>, instance: String) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let (events, rx) = EventRecorder::new();
    let api = Api::new(Arc::new(client::KubeClient::new(client.clone())));
    let ctx = Context {
        api: api.clone(),
        informers: Informers::default(),
        events,
        config,
    };
    tasks.spawn(events::run_writer(api, "skiff-master", instance, rx));

    // Loops register their informer callbacks before the informers start, so none misses the
    // first list.
    let loops: &[(&str, StartFn)] = &[
        ("endpoint", endpoints::start),
        ("endpointslice", endpointslice::start),
        ("serviceaccount", serviceaccount::start),
        ("root-ca-cert-publisher", rootcacert::start),
        ("nodeipam", nodeipam::start),
        ("daemonset", daemonset::start),
        ("statefulset", statefulset::start),
        ("replicaset", replicaset::start),
        ("deployment", deployment::start),
        ("scheduler", crate::scheduler::start),
        ("job", job::start),
        ("cronjob", cronjob::start),
        ("ttl-after-finished", ttl::start),
        ("nodelifecycle", nodelifecycle::start),
        ("namespace", namespace::start),
        ("garbagecollector", garbagecollector::start),
        ("podgc", podgc::start),
    ];
    let mut started = 0;
    for (name, start) in loops {
        if ctx.config.enabled(name) {
            start(&ctx, &mut tasks);
            tracing::info!(controller = name, "started");
            started += 1;
        }
    }
    // With no loop (`--controllers=`, the API server alone) nothing reads the caches: keeping
    // them would hold every pod a second time.
    if started > 0 {
        ctx.informers.spawn(&client, &mut tasks);
    }
    tasks
}

/// The scheduler and controllers of one master, running (or standing by for the leader Lease).
pub struct ControlPlane {
    task: tokio::task::JoinHandle<()>,
    election: Option<(Api, leader::Settings)>,
}

impl ControlPlane {
    /// Runs the loops over `client`: under the leader Lease with `--leader-elect`, else at once.
    pub fn spawn(client: kube::Client, config: Config) -> ControlPlane {
        let config = Arc::new(config);
        let identity = leader::identity();
        if !config.leader_elect {
            let task = tokio::spawn(async move {
                let mut tasks = start(client, config, identity);
                while tasks.join_next().await.is_some() {}
            });
            return ControlPlane {
                task,
                election: None,
            };
        }
        let settings = leader::Settings {
            namespace: "kube-system".into(),
            name: "skiff-master".into(),
            identity: identity.clone(),
            lease_duration: config.leader_elect_lease_duration,
            renew_deadline: config.leader_elect_renew_deadline,
            retry_period: config.leader_elect_retry_period,
        };
        let api = Api::new(Arc::new(client::KubeClient::new(client.clone())));
        let task = tokio::spawn(leader::run(api.clone(), settings.clone(), move || {
            start(client.clone(), config.clone(), identity.clone())
        }));
        ControlPlane {
            task,
            election: Some((api, settings)),
        }
    }

    /// Stops every loop and hands the leader Lease over, so another master takes over at once.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        if let Some((api, settings)) = self.election {
            if let Err(e) = leader::release(&api, &settings).await {
                tracing::warn!(error = %e, "could not release the leader Lease; another master takes over when it expires");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        let cases: &[(&str, Result<Duration, ()>)] = &[
            ("10s", Ok(Duration::from_secs(10))),
            ("500ms", Ok(Duration::from_millis(500))),
            ("2m", Ok(Duration::from_secs(120))),
            ("1.5s", Ok(Duration::from_millis(1500))),
            ("7", Ok(Duration::from_secs(7))),
            ("10x", Err(())),
            ("s", Err(())),
            ("-1s", Err(())),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text).map_err(|_| ()), *expected, "{text}");
        }
    }

    #[test]
    fn controllers_flag_enables_and_disables() {
        let mut config = Config::default();
        assert!(config.enabled("deployment"));
        config.controllers = vec!["*".into(), "-cronjob".into()];
        assert!(config.enabled("deployment") && !config.enabled("cronjob"));
        config.controllers = vec!["job".into()];
        assert!(config.enabled("job") && !config.enabled("deployment"));
    }
}
