//! Pod start latency and the node agent's footprint: `cargo xtask bench node [-- --quick]`.
//!
//! It starts a private containerd, a real `skiff-master` (release build, embedded store, its
//! default controllers and scheduler) and one `skiff-node run` on loopback, with the busybox
//! test image imported beforehand, then:
//!
//! - **one pod**: a warm-up pod (reported apart, the node's first), then 10 pods one after the
//!   other, each deleted (grace 0, and its containers gone from containerd) before the next;
//!   for each, the time from sending its create to a watch seeing it `Running`.
//! - **burst**: 50 pods created at once; the same latency for each.
//! - **idle**: 100 pods (`sleep 3600`) Running; after a settling pause, the agent's RSS and
//!   its CPU (utime + stime from `/proc`) over a 30 s window, as a share of one core.
//!
//! Pods reach the node through the scheduler, as in a cluster. Every phase has a count and a
//! deadline; pods are deleted (grace 0) after each phase. `--quick` runs 3 sequential pods,
//! a burst of 10 and 20 idle pods with a shorter window, for a smoke run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod, PodSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt as _};
use skiff_master::testing::Master;
use skiff_node::runtime::{images, Containerd};
use skiff_node::testing::{self, Agent, Containerd as TestContainerd, NodeLab};

// The histogram and `/proc` helpers are the master benchmarks' own.
#[path = "../../master/benches/common/mod.rs"]
mod common;
use common::{cpu_seconds, histogram, lock, max_ms, mib, ms, record, rss_bytes, Shared};

const NS: &str = "bench-node";
const NODE: &str = "bench-node-1";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The targets (ISSUE: node agent benchmark).
const TARGET_P50_MS: f64 = 400.0;
const TARGET_P99_MS: f64 = 1000.0;
const TARGET_RSS_MIB: f64 = 50.0;
const TARGET_IDLE_CPU_PCT: f64 = 1.0;

struct Args {
    sequential: usize,
    burst: usize,
    idle: usize,
    settle: Duration,
    window: Duration,
}

fn parse_args() -> Args {
    let mut args = Args {
        sequential: 10,
        burst: 50,
        idle: 100,
        settle: Duration::from_secs(10),
        window: Duration::from_secs(30),
    };
    for arg in std::env::args().skip(1) {
        if arg == "--quick" {
            args.sequential = 3;
            args.burst = 10;
            args.idle = 20;
            args.settle = Duration::from_secs(3);
            args.window = Duration::from_secs(10);
        }
        // cargo bench passes --bench; ignore what is not ours.
    }
    args
}

fn pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "sleep".into(),
                image: Some(images::TEST_IMAGE.into()),
                image_pull_policy: Some("IfNotPresent".into()),
                command: Some(vec!["sleep".into(), "3600".into()]),
                ..Default::default()
            }],
            // The bench measures starts, not admission: a nearly full disk on the machine (the
            // node's root filesystem under 10% free) must not keep the pods off the node.
            tolerations: Some(vec![Toleration {
                key: Some("node.kubernetes.io/disk-pressure".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Watches the namespace's pods and stamps the first time each is seen bound and Running.
fn spawn_watch(client: kube::Client, timeline: Shared) -> tokio::task::JoinHandle<()> {
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

/// Creates `names` all at once (one request each, concurrently); returns the errors.
async fn create_all(api: &Api<Pod>, names: &[String], timeline: &Shared) -> Vec<String> {
    let creates = names.iter().map(|name| async move {
        lock(timeline).sent.insert(name.clone(), Instant::now());
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            api.create(&PostParams::default(), &pod(name)),
        )
        .await
        {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("create {name}: {e}")),
            Err(_) => Some(format!("create {name}: no answer in {REQUEST_TIMEOUT:?}")),
        }
    });
    futures::future::join_all(creates)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Waits until all of `names` are seen Running, or `deadline` passes; returns how many were.
async fn wait_running(timeline: &Shared, names: &[String], deadline: Duration) -> usize {
    let stop = Instant::now() + deadline;
    loop {
        let done = {
            let t = lock(timeline);
            names.iter().filter(|n| t.running.contains_key(*n)).count()
        };
        if done == names.len() || Instant::now() > stop {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Creation → Running, creation → bound and bound → Running of the pods of `names` that ran.
struct Latencies {
    running: Histogram<u64>,
    bound: Histogram<u64>,
    after_bound: Histogram<u64>,
}

fn latencies(timeline: &Shared, names: &[String]) -> Latencies {
    let mut l = Latencies {
        running: histogram(),
        bound: histogram(),
        after_bound: histogram(),
    };
    let t = lock(timeline);
    for name in names {
        let (Some(sent), Some(ran)) = (t.sent.get(name), t.running.get(name)) else {
            continue;
        };
        record(&mut l.running, ran.saturating_duration_since(*sent));
        if let Some(bound) = t.bound.get(name) {
            record(&mut l.bound, bound.saturating_duration_since(*sent));
            record(&mut l.after_bound, ran.saturating_duration_since(*bound));
        }
    }
    l
}

/// Deletes every pod of the namespace (grace 0) and waits until the API has none and
/// containerd no containers, within `deadline`; says what is left when it runs out.
async fn delete_all(
    api: &Api<Pod>,
    runtime: &Containerd,
    deadline: Duration,
) -> Result<(), String> {
    let stop = Instant::now() + deadline;
    let mut deleted = false;
    loop {
        let pods = api
            .list_metadata(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let names: Vec<String> = pods.into_iter().filter_map(|p| p.metadata.name).collect();
        if !deleted || !names.is_empty() {
            let deletes = names.iter().map(|name| async move {
                let _ = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    api.delete(name, &DeleteParams::default().grace_period(0)),
                )
                .await;
            });
            futures::future::join_all(deletes).await;
            deleted = true;
        }
        let containers = runtime.list_containers(&[]).await.map(|l| l.len());
        if names.is_empty() && matches!(containers, Ok(0)) {
            return Ok(());
        }
        if Instant::now() > stop {
            return Err(format!(
                "after {deadline:?}: {} pods left in the API, containers in containerd: {containers:?}",
                names.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:03}")).collect()
}

fn yes_no(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}

/// VmHWM (peak RSS) of a process, in bytes.
fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Threads of a process.
fn threads(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds of a process and of its reaped children (utime, stime, cutime, cstime).
fn cpu_with_children(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    Some(ticks as f64 / common::clock_ticks())
}

/// The CPU seconds, children included, of the containerd serving `address` and of its shims
/// (the processes whose command line names its directory, but for the agent's, `except`); runc
/// runs as the shims' children.
fn containerd_cpu(dir: &Path, except: u32) -> f64 {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            *pid != except
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .filter_map(cpu_with_children)
        .sum()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The node's conditions that are True (`Ready`, and any pressure).
async fn node_conditions(nodes: &Api<Node>) -> Vec<String> {
    nodes
        .get_opt(NODE)
        .await
        .ok()
        .flatten()
        .and_then(|n| n.status)
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.status == "True")
        .map(|c| c.type_)
        .collect()
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!(
        "node agent benchmark: 1 warm-up + {} sequential pods, a burst of {}, {} idle pods ({} s window)",
        args.sequential,
        args.burst,
        args.idle,
        args.window.as_secs()
    );

    // Dropped in reverse order: the agent, the master, containerd (which kills what is left),
    // then the lab's routes and bridge.
    let lab = NodeLab::new();
    let containerd = TestContainerd::start().unwrap_or_else(|e| panic!("{e:#}"));
    let runtime = Containerd::connect(containerd.address())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let archive = containerd.dir().join("busybox.tar");
    images::build_busybox_archive(&archive, images::TEST_IMAGE).expect("build the test image");
    images::import_archive(&runtime, &archive)
        .await
        .expect("import the test image");
    let master_binary = testing::master_binary().unwrap_or_else(|e| panic!("{e:#}"));
    let master_args = lab.master_args();
    let master_args: Vec<&str> = master_args.iter().map(String::as_str).collect();
    let master =
        Master::start(&master_binary, None, &master_args).unwrap_or_else(|e| panic!("{e:#}"));
    let agent = Agent::start(
        env!("CARGO_BIN_EXE_skiff-node").as_ref(),
        &master.kubeconfig,
        &containerd,
        &lab,
        NODE,
        &[],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let agent_pid = agent.pid().expect("agent pid");
    let master_pid = master.pid().expect("master pid");
    let agent_log = containerd.dir().join(NODE).join("agent.log");
    let client = master.client().await.unwrap_or_else(|e| panic!("{e:#}"));

    let nodes: Api<Node> = Api::all(client.clone());
    let registering = Instant::now();
    let mut conditions = Vec::new();
    while !conditions.iter().any(|c| c == "Ready") {
        conditions = node_conditions(&nodes).await;
        if registering.elapsed() > Duration::from_secs(90) {
            panic!(
                "node {NODE} not Ready in 90 s\n--- agent log ---\n{}\n--- master log ---\n{}",
                agent.log_tail(),
                master.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready_in = registering.elapsed();
    // Let the scheduler's node cache see it Ready.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "node {NODE} Ready in {:.1} s (conditions True 2 s later: {})",
        ready_in.as_secs_f64(),
        node_conditions(&nodes).await.join(", ")
    );
    let agent_rss_empty = rss_bytes(agent_pid).map(mib).unwrap_or(f64::NAN);

    let ns: Api<Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &Namespace {
            metadata: ObjectMeta {
                name: Some(NS.into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .expect("create namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let timeline: Shared = Arc::default();
    let watch = spawn_watch(client.clone(), timeline.clone());
    let mut rows: Vec<(String, String, String, &str)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();

    // One pod at a time; the first one on the node is a warm-up, reported apart.
    let warmup = names("warmup", 1);
    let sequential = names("one", args.sequential);
    for name in warmup.iter().chain(&sequential) {
        let one = std::slice::from_ref(name);
        problems.extend(create_all(&pods, one, &timeline).await);
        if wait_running(&timeline, one, Duration::from_secs(60)).await == 0 {
            problems.push(format!("{name} not Running in 60 s"));
        }
        if let Err(e) = delete_all(&pods, &runtime, Duration::from_secs(60)).await {
            problems.push(format!("cleaning up after {name}: {e}"));
        }
    }
    let first = latencies(&timeline, &warmup);
    let seq = latencies(&timeline, &sequential);
    let seq_running = seq.running.len() as usize;
    println!(
        "one pod: first on the node {:.0} ms; {seq_running}/{} Running, creation → Running p50 {:.0} ms, max {:.0} ms \
         (creation → bound p50 {:.0} ms, bound → Running p50 {:.0} ms)",
        max_ms(&first.running),
        sequential.len(),
        ms(&seq.running, 0.5),
        max_ms(&seq.running),
        ms(&seq.bound, 0.5),
        ms(&seq.after_bound, 0.5),
    );
    rows.push((
        format!("creation → Running, 1 pod ({} in turn)", sequential.len()),
        format!(
            "p50 {:.0} ms, max {:.0} ms (first pod on the node {:.0} ms)",
            ms(&seq.running, 0.5),
            max_ms(&seq.running),
            max_ms(&first.running)
        ),
        "—".into(),
        "",
    ));

    // A burst, all created at once.
    let burst = names("burst", args.burst);
    let cpu_before = cpu_seconds(Some(agent_pid)).unwrap_or(0.0);
    let all_before = cpu_with_children(agent_pid).unwrap_or(0.0);
    let runtime_before = containerd_cpu(containerd.dir(), agent_pid);
    let errors = create_all(&pods, &burst, &timeline).await;
    let burst_running = wait_running(&timeline, &burst, Duration::from_secs(120)).await;
    let burst_cpu = cpu_seconds(Some(agent_pid)).unwrap_or(0.0) - cpu_before;
    let cni_cpu = cpu_with_children(agent_pid).unwrap_or(0.0) - all_before - burst_cpu;
    let runtime_cpu = containerd_cpu(containerd.dir(), agent_pid) - runtime_before;
    let b = latencies(&timeline, &burst);
    println!(
        "burst: {burst_running}/{} Running; creation → Running p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms \
         (creation → bound p50 {:.0} / max {:.0} ms, bound → Running p50 {:.0} / max {:.0} ms); \
         agent CPU {burst_cpu:.2} s ({:.0} ms per pod), its CNI plugin runs {cni_cpu:.2} s, \
         containerd and shims {runtime_cpu:.2} s; {} create errors",
        burst.len(),
        ms(&b.running, 0.5),
        ms(&b.running, 0.99),
        max_ms(&b.running),
        ms(&b.bound, 0.5),
        max_ms(&b.bound),
        ms(&b.after_bound, 0.5),
        max_ms(&b.after_bound),
        burst_cpu * 1000.0 / burst.len().max(1) as f64,
        errors.len(),
    );
    problems.extend(errors);
    let all_ran = burst_running == burst.len();
    if !all_ran {
        problems.push(format!(
            "{} of {} burst pods not Running in 120 s",
            burst.len() - burst_running,
            burst.len()
        ));
    }
    rows.push((
        format!("creation → Running p50, {} pods at once", burst.len()),
        format!("{:.0} ms", ms(&b.running, 0.5)),
        format!("≤ {TARGET_P50_MS:.0} ms"),
        yes_no(all_ran && ms(&b.running, 0.5) <= TARGET_P50_MS),
    ));
    rows.push((
        format!("creation → Running p99, {} pods at once", burst.len()),
        format!(
            "{:.0} ms (max {:.0} ms)",
            ms(&b.running, 0.99),
            max_ms(&b.running)
        ),
        format!("≤ {TARGET_P99_MS:.0} ms"),
        yes_no(all_ran && ms(&b.running, 0.99) <= TARGET_P99_MS),
    ));
    rows.push((
        format!("CPU time to start {} pods", burst.len()),
        format!(
            "agent {burst_cpu:.2} s ({:.0} ms per pod), CNI plugin {cni_cpu:.2} s, containerd + shims {runtime_cpu:.2} s",
            burst_cpu * 1000.0 / burst.len().max(1) as f64
        ),
        "—".into(),
        "",
    ));
    if let Err(e) = delete_all(&pods, &runtime, Duration::from_secs(120)).await {
        problems.push(format!("cleaning up after the burst: {e}"));
    }

    // Idle pods.
    let idle = names("idle", args.idle);
    problems.extend(create_all(&pods, &idle, &timeline).await);
    let idle_running = wait_running(&timeline, &idle, Duration::from_secs(180)).await;
    let i = latencies(&timeline, &idle);
    println!(
        "idle: {idle_running}/{} Running (creation → Running p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms); \
         settling {} s",
        idle.len(),
        ms(&i.running, 0.5),
        ms(&i.running, 0.99),
        max_ms(&i.running),
        args.settle.as_secs()
    );
    if idle_running < idle.len() {
        problems.push(format!(
            "{} of {} idle pods not Running in 180 s",
            idle.len() - idle_running,
            idle.len()
        ));
    }
    tokio::time::sleep(args.settle).await;
    let (cpu0, master_cpu0, log0) = (
        cpu_seconds(Some(agent_pid)).unwrap_or(0.0),
        cpu_seconds(Some(master_pid)).unwrap_or(0.0),
        file_len(&agent_log),
    );
    let window_start = Instant::now();
    tokio::time::sleep(args.window).await;
    let window = window_start.elapsed().as_secs_f64();
    let cpu_pct = (cpu_seconds(Some(agent_pid)).unwrap_or(f64::NAN) - cpu0) / window * 100.0;
    let master_cpu_pct =
        (cpu_seconds(Some(master_pid)).unwrap_or(f64::NAN) - master_cpu0) / window * 100.0;
    let log_rate = (file_len(&agent_log).saturating_sub(log0)) as f64 / window;
    let rss = rss_bytes(agent_pid).map(mib).unwrap_or(f64::NAN);
    let peak = peak_rss_bytes(agent_pid).map(mib).unwrap_or(f64::NAN);
    let agent_threads = threads(agent_pid).unwrap_or(0);
    let master_rss = rss_bytes(master_pid).map(mib).unwrap_or(f64::NAN);
    println!(
        "footprint with {idle_running} idle pods: agent RSS {rss:.1} MiB (peak {peak:.1}, {agent_rss_empty:.1} with no pods, \
         {agent_threads} threads), agent CPU {cpu_pct:.2}% of a core over {window:.0} s, agent log {log_rate:.0} B/s; \
         master RSS {master_rss:.0} MiB, master CPU {master_cpu_pct:.2}%"
    );
    let idle_ok = idle_running == idle.len();
    rows.push((
        format!("agent RSS, {} idle pods", idle.len()),
        format!("{rss:.1} MiB (peak {peak:.1}; {agent_rss_empty:.1} with no pods)"),
        format!("≤ {TARGET_RSS_MIB:.0} MiB"),
        yes_no(idle_ok && rss <= TARGET_RSS_MIB),
    ));
    rows.push((
        format!("agent CPU, {} idle pods, {window:.0} s window", idle.len()),
        format!("{cpu_pct:.2}% of a core"),
        format!("≤ {TARGET_IDLE_CPU_PCT:.0}%"),
        yes_no(idle_ok && cpu_pct <= TARGET_IDLE_CPU_PCT),
    ));
    rows.push((
        "master RSS / CPU, same window".into(),
        format!("{master_rss:.0} MiB / {master_cpu_pct:.2}% of a core"),
        "—".into(),
        "",
    ));

    let cleaning = Instant::now();
    match delete_all(&pods, &runtime, Duration::from_secs(180)).await {
        Ok(()) => println!(
            "cleanup: {} pods deleted and their containers gone in {:.1} s",
            idle.len(),
            cleaning.elapsed().as_secs_f64()
        ),
        Err(e) => problems.push(format!("final cleanup: {e}")),
    }
    watch.abort();

    if !problems.is_empty() {
        println!("\n{} problems:", problems.len());
        for p in problems.iter().take(20) {
            println!("  {p}");
        }
        println!("--- agent log (tail) ---\n{}", agent.log_tail());
    }
    println!("\nFor BENCHMARKS.md:\n");
    println!("| measure | figure | target | met |");
    println!("|---|---|---|---|");
    for (measure, figure, target, met) in rows {
        println!("| {measure} | {figure} | {target} | {met} |");
    }
}
