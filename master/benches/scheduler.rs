//! The scheduler and controllers at scale: `cargo xtask bench scheduler [-- --quick]
//! [--nodes N]`.
//!
//! It starts a real `skiff-master` (release build, embedded store) and `skiff-node hollow`
//! with 1,000 nodes (`--nodes`), all on loopback, then:
//!
//! - **throughput**: 32 clients create 10,000 bare pods as fast as the API takes them; a watch
//!   records when each pod is seen bound. Scheduling throughput is the pods bound divided by the
//!   time from the first create to the last binding seen (creates run at several thousand per
//!   second, so the scheduler, not the creates, sets the pace; both rates are printed).
//! - **latency**: 1,000 pods created at 100/s; for each, the time from sending its create to a
//!   watch seeing it `Running` (bound by the scheduler, started by its hollow node).
//! - **footprint**: pods are added until 30,000 exist and are Running; then the master's RSS,
//!   and its CPU time over the whole run.
//!
//! Every phase has a count and a deadline. `--quick` runs 100 nodes and a tenth of the pods.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::Client;
use skiff_master::testing::{Hollow, Master};

mod common;
use common::{cpu_seconds, histogram, lock, max_ms, mib, ms, record, rss_bytes, Shared, Timeline};

const NS: &str = "bench-sched";
const CLIENTS: usize = 32;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The targets (ISSUE: scheduler and controllers).
const TARGET_PODS_PER_S: f64 = 1000.0;
const TARGET_RUNNING_P99_MS: f64 = 2000.0;
const TARGET_RSS_MIB: f64 = 300.0;

struct Args {
    nodes: usize,
    throughput_pods: usize,
    latency_pods: usize,
    total_pods: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        nodes: 1000,
        throughput_pods: 10_000,
        latency_pods: 1000,
        total_pods: 30_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => {
                args.nodes = 100;
                args.throughput_pods = 1000;
                args.latency_pods = 200;
                args.total_pods = 3000;
            }
            "--nodes" => match it.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n > 0 => args.nodes = n,
                _ => {
                    eprintln!("--nodes takes a positive number");
                    std::process::exit(2);
                }
            },
            // Pods without the service-account token volume, as in kube-scheduler's
            // scheduler_perf (its API server runs no ServiceAccount admission).
            "--no-token-volume" => NO_TOKEN_VOLUME.store(true, Ordering::Relaxed),
            // cargo bench passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    args
}

/// `--no-token-volume`: bench pods opt out of the `kube-api-access-*` volume.
static NO_TOKEN_VOLUME: AtomicBool = AtomicBool::new(false);

fn pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some("registry.local/pause:1".into()),
                ..Default::default()
            }],
            automount_service_account_token: NO_TOKEN_VOLUME
                .load(Ordering::Relaxed)
                .then_some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn client(master: &Master) -> Client {
    master.client().await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Watches the namespace's pods and stamps the first time each is seen bound and Running.
fn spawn_watch(client: Client, timeline: Shared) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Pod> = Api::namespaced(client, NS);
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            let pod = match event {
                Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod)) => pod,
                _ => continue,
            };
            let now = Instant::now();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let bound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some();
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let mut t = lock(&timeline);
            if bound {
                t.bound.entry(name.clone()).or_insert(now);
            }
            if running {
                t.running.entry(name).or_insert(now);
            }
        }
    })
}

/// Creates pods `names` with 32 clients, at `rate` per second if given; returns the errors.
async fn create(
    clients: &[Client],
    names: Vec<String>,
    rate: Option<f64>,
    timeline: &Shared,
    deadline: Duration,
) -> Vec<String> {
    let names = Arc::new(names);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|client| {
            let (names, next, timeline) = (names.clone(), next.clone(), timeline.clone());
            tokio::spawn(async move {
                let api: Api<Pod> = Api::namespaced(client, NS);
                let mut errors = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(name) = names.get(i) else { break };
                    if let Some(rate) = rate {
                        tokio::time::sleep_until(
                            (started + Duration::from_secs_f64(i as f64 / rate)).into(),
                        )
                        .await;
                    }
                    if started.elapsed() > deadline {
                        errors.push("cut short by the phase deadline".to_string());
                        break;
                    }
                    lock(&timeline).sent.insert(name.clone(), Instant::now());
                    match tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        api.create(&PostParams::default(), &pod(name)),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => errors.push(format!("create {name}: {e}")),
                        Err(_) => {
                            errors.push(format!("create {name}: no answer in {REQUEST_TIMEOUT:?}"))
                        }
                    }
                }
                errors
            })
        })
        .collect();
    let mut errors = Vec::new();
    for task in tasks {
        errors.extend(
            task.await
                .unwrap_or_else(|e| vec![format!("client task failed: {e}")]),
        );
    }
    errors
}

/// Waits until `count` of `names` satisfy `seen` in the timeline, or the deadline passes.
async fn wait_for(
    timeline: &Shared,
    names: &[String],
    deadline: Duration,
    seen: fn(&Timeline, &str) -> bool,
) -> usize {
    let stop = Instant::now() + deadline;
    loop {
        let done = {
            let t = lock(timeline);
            names.iter().filter(|n| seen(&t, n)).count()
        };
        if done == names.len() || Instant::now() > stop {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(prefix: &str, from: usize, count: usize) -> Vec<String> {
    (from..from + count)
        .map(|i| format!("{prefix}-{i:06}"))
        .collect()
}

fn yes_no(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let binary = std::env::var("SKIFF_MASTER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_skiff-master").to_string());
    let binary = std::path::PathBuf::from(binary);
    let node_binary = Hollow::binary_beside(&binary).unwrap_or_else(|e| panic!("{e:#}"));
    println!(
        "scheduler benchmark: {} hollow nodes, {} + {} pods, {} in all",
        args.nodes, args.throughput_pods, args.latency_pods, args.total_pods
    );
    // A /9 of pod addresses gives 1,000+ nodes a /24 each (the default /16 covers 256 nodes),
    // clear of the Service range 10.96.0.0/12.
    let master_flags = ["--cluster-cidr", "10.128.0.0/9"];
    let master = Master::start(&binary, None, &master_flags).unwrap_or_else(|e| panic!("{e:#}"));
    let master_pid = master.pid().expect("master pid");
    let cpu_at_start = cpu_seconds(Some(master_pid)).unwrap_or(0.0);
    let client = client(&master).await;

    let registering = Instant::now();
    let nodes_flags = ["--concurrency", "64"];
    let hollow = Hollow::start(
        &node_binary,
        &master,
        "hollow-",
        0,
        args.nodes,
        &nodes_flags,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let node_api: Api<Node> = Api::all(client.clone());
    loop {
        let count = node_api
            .list_metadata(&ListParams::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        if count >= args.nodes {
            break;
        }
        if registering.elapsed() > Duration::from_secs(120) {
            panic!(
                "only {count} of {} nodes registered in 120 s: {}",
                args.nodes,
                hollow.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "nodes: {} registered in {:.1} s",
        args.nodes,
        registering.elapsed().as_secs_f64()
    );
    // Let the scheduler's node cache see them all.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let ns: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(NS.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    ns.create(&PostParams::default(), &namespace)
        .await
        .expect("create namespace");
    let timeline: Shared = Arc::default();
    let watch = spawn_watch(client.clone(), timeline.clone());
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(self::client(&master).await);
    }
    let mut rows: Vec<(String, String, String, &str)> = Vec::new();

    // Throughput.
    let batch = names("tp", 0, args.throughput_pods);
    let started = Instant::now();
    let errors = create(
        &clients,
        batch.clone(),
        None,
        &timeline,
        Duration::from_secs(120),
    )
    .await;
    let created_in = started.elapsed();
    let bound = wait_for(&timeline, &batch, Duration::from_secs(180), |t, n| {
        t.bound.contains_key(n)
    })
    .await;
    let last_bound = {
        let t = lock(&timeline);
        batch
            .iter()
            .filter_map(|n| t.bound.get(n))
            .max()
            .copied()
            .unwrap_or(started)
    };
    let bind_secs = (last_bound - started).as_secs_f64();
    let per_s = bound as f64 / bind_secs.max(1e-9);
    println!(
        "throughput: {bound}/{} pods bound in {bind_secs:.2} s = {per_s:.0} pods/s (creates took {:.2} s = {:.0}/s; {} errors{})",
        batch.len(),
        created_in.as_secs_f64(),
        batch.len() as f64 / created_in.as_secs_f64(),
        errors.len(),
        errors.first().map(|e| format!(", first: {e}")).unwrap_or_default()
    );
    rows.push((
        format!(
            "scheduling throughput, {} pods on {} nodes",
            batch.len(),
            args.nodes
        ),
        format!("{per_s:.0} pods/s"),
        format!("≥ {TARGET_PODS_PER_S:.0} pods/s"),
        yes_no(per_s >= TARGET_PODS_PER_S && bound == batch.len()),
    ));
    wait_for(&timeline, &batch, Duration::from_secs(180), |t, n| {
        t.running.contains_key(n)
    })
    .await;

    // Latency at 100/s.
    let paced = names("lat", 0, args.latency_pods);
    let errors = create(
        &clients,
        paced.clone(),
        Some(100.0),
        &timeline,
        Duration::from_secs(60),
    )
    .await;
    let running = wait_for(&timeline, &paced, Duration::from_secs(60), |t, n| {
        t.running.contains_key(n)
    })
    .await;
    let mut latency = histogram();
    {
        let t = lock(&timeline);
        for name in &paced {
            if let (Some(sent), Some(ran)) = (t.sent.get(name), t.running.get(name)) {
                record(&mut latency, ran.saturating_duration_since(*sent));
            }
        }
    }
    println!(
        "creation to Running at 100/s: {running}/{} running; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} errors)",
        paced.len(),
        ms(&latency, 0.5),
        ms(&latency, 0.99),
        max_ms(&latency),
        errors.len()
    );
    rows.push((
        format!("creation → Running p99, {} pods at 100/s", paced.len()),
        format!(
            "{:.0} ms (p50 {:.0} ms)",
            ms(&latency, 0.99),
            ms(&latency, 0.5)
        ),
        format!("≤ {TARGET_RUNNING_P99_MS:.0} ms"),
        yes_no(ms(&latency, 0.99) <= TARGET_RUNNING_P99_MS && running == paced.len()),
    ));

    // Footprint with the full pod count.
    let have = batch.len() + paced.len();
    let fill = names("fill", 0, args.total_pods.saturating_sub(have));
    let errors = create(
        &clients,
        fill.clone(),
        None,
        &timeline,
        Duration::from_secs(300),
    )
    .await;
    let fill_running = wait_for(&timeline, &fill, Duration::from_secs(300), |t, n| {
        t.running.contains_key(n)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = rss_bytes(master_pid).map(mib).unwrap_or(f64::NAN);
    let hollow_rss = hollow
        .pid()
        .and_then(rss_bytes)
        .map(mib)
        .unwrap_or(f64::NAN);
    let cpu = cpu_seconds(Some(master_pid)).unwrap_or(0.0) - cpu_at_start;
    println!(
        "footprint: {} pods ({fill_running}/{} of the last batch running, {} errors); master RSS {rss:.0} MiB, \
         master CPU {cpu:.1} s over the run; hollow nodes RSS {hollow_rss:.0} MiB",
        have + fill.len(),
        fill.len(),
        errors.len()
    );
    rows.push((
        format!(
            "master RSS, {} nodes and {} pods",
            args.nodes,
            have + fill.len()
        ),
        format!("{rss:.0} MiB"),
        format!("≤ {TARGET_RSS_MIB:.0} MiB"),
        yes_no(rss <= TARGET_RSS_MIB),
    ));
    rows.push((
        "master CPU time, whole run".into(),
        format!("{cpu:.1} s"),
        "—".into(),
        "",
    ));
    watch.abort();

    println!("\nFor BENCHMARKS.md:\n");
    println!("| measure | figure | target | met |");
    println!("|---|---|---|---|");
    for (measure, figure, target, met) in rows {
        println!("| {measure} | {figure} | {target} | {met} |");
    }
}
