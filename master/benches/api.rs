//! The API server benchmark: `cargo xtask bench api [-- --backend embedded|etcd|all] [--quick]
//! [--pods N] [--with-controllers]`.
//!
//! For each backend it starts a real `skiff-master` (the release binary cargo builds for this
//! benchmark, or `$SKIFF_MASTER_BIN`) on loopback, on its embedded store or on a private etcd,
//! and drives it over HTTPS with the `kube` client library, as a controller or kubectl would:
//!
//! - **creates**: 32 clients (each its own `kube::Client`, so its own TLS connection) create
//!   30,000 minimal pods (3,000 with `--quick`) over five namespaces, one of which gets exactly
//!   1,000; creates/s and latency. The master's CPU time (utime + stime from `/proc/<pid>/stat`)
//!   over this phase, and its RSS (`VmRSS`) once the pods are stored.
//! - **gets**: 32 clients get random existing pods.
//! - **lists**: the 1,000-pod namespace and all pods (no limit), a few rounds each, timed twice:
//!   until the whole body is received (the server's cost plus transfer), and until it is decoded
//!   into `Vec<Pod>` (what a typed client pays on top).
//! - **watch fan-out**: 100 watchers (half on all namespaces, half on one namespace), each
//!   started at the current resourceVersion, then 1,000 creates paced at 500/s. Every watcher
//!   must see every create (misses are counted); lag is the time a watcher decoded the event
//!   minus the time the create call returned (and, second line, was sent). Watchers decode only
//!   each event's name, so the client's own decoding (it shares the two cores with the server)
//!   distorts the lag as little as possible.
//!
//! Every phase has a count and a deadline, and every request a timeout. The client runs in this
//! process, on the same machine: its CPU time is printed next to the master's, since on a small
//! machine the two compete for the same cores. On the etcd backend the master's CPU time does not
//! include etcd's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PostParams, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::WatchEvent;
use kube::{Client, Config, Resource as _};
use serde::Deserialize;
use skiff_master::testing;

mod common;
use common::{cpu_seconds, histogram, max_ms, mib, ms, record, rss_bytes};

/// Concurrent clients for creates and gets.
const CLIENTS: usize = 32;
/// The namespace holding exactly [`LIST_NS_PODS`] pods, for the namespace list.
const LIST_NS: &str = "bench-list";
const LIST_NS_PODS: usize = 1000;
/// The namespaces the other pods are spread over.
const SPREAD_NS: [&str; 4] = ["bench-0", "bench-1", "bench-2", "bench-3"];
/// The namespace of the watch burst's pods.
const WATCH_NS: &str = "bench-watch";
const WATCHERS: usize = 100;
const BURST: usize = 1000;
const BURST_RATE: f64 = 500.0;
/// Any single request (a create, a get, a list, opening a watch) gives up after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long watchers wait for stragglers once the burst's creates have all returned.
const WATCH_GRACE: Duration = Duration::from_secs(10);

/// The targets for the embedded store (ISSUE: API server performance).
const TARGET_CREATES_PER_S: f64 = 3000.0;
const TARGET_CREATE_P99_MS: f64 = 50.0;
const TARGET_WATCH_LAG_P99_MS: f64 = 50.0;
const TARGET_RSS_MIB: f64 = 150.0;

struct Args {
    backends: Vec<String>,
    quick: bool,
    pods: Option<usize>,
    /// `--with-controllers`: run the master's scheduler and controllers too. By default the
    /// master serves the API alone (`--controllers=`), as kube-apiserver is measured without
    /// kube-scheduler and kube-controller-manager: with no nodes, the scheduler would write an
    /// Unschedulable condition and an Event for every pod created.
    with_controllers: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        backends: vec!["embedded".into(), "etcd".into()],
        quick: false,
        pods: None,
        with_controllers: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--backend" => match it.next().as_deref() {
                Some("all") => {}
                Some(b @ ("embedded" | "etcd")) => args.backends = vec![b.to_string()],
                other => {
                    eprintln!("--backend takes embedded, etcd or all, not {other:?}");
                    std::process::exit(2);
                }
            },
            "--quick" => args.quick = true,
            "--with-controllers" => args.with_controllers = true,
            "--pods" => match it.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n >= LIST_NS_PODS => args.pods = Some(n),
                _ => {
                    eprintln!("--pods takes a number of at least {LIST_NS_PODS}");
                    std::process::exit(2);
                }
            },
            // cargo bench passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    args
}

/// Counts and deadlines of one run.
struct Scale {
    pods: usize,
    gets: usize,
    ns_list_rounds: usize,
    all_list_rounds: usize,
    create_deadline: Duration,
    get_deadline: Duration,
    list_deadline: Duration,
}

impl Scale {
    fn new(args: &Args) -> Scale {
        if args.quick {
            Scale {
                pods: args.pods.unwrap_or(3_000),
                gets: 3_000,
                ns_list_rounds: 10,
                all_list_rounds: 5,
                create_deadline: Duration::from_secs(30),
                get_deadline: Duration::from_secs(15),
                list_deadline: Duration::from_secs(30),
            }
        } else {
            Scale {
                pods: args.pods.unwrap_or(30_000),
                gets: 20_000,
                ns_list_rounds: 20,
                all_list_rounds: 5,
                create_deadline: Duration::from_secs(150),
                get_deadline: Duration::from_secs(45),
                list_deadline: Duration::from_secs(90),
            }
        }
    }
}

/// Where pod `i` of `n` goes: every `n / 1000`-th of the first thousand strides into
/// [`LIST_NS`], the others round-robin over [`SPREAD_NS`].
fn place(i: usize, n: usize) -> (&'static str, String) {
    let stride = (n / LIST_NS_PODS).max(1);
    let ns = if i.is_multiple_of(stride) && i / stride < LIST_NS_PODS {
        LIST_NS
    } else {
        SPREAD_NS[i % SPREAD_NS.len()]
    };
    (ns, format!("p-{i:06}"))
}

/// A minimal valid pod: one container `c` running busybox.
fn pod(name: String) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some("busybox".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A small xorshift generator: the gets need random indexes, not good randomness.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readings

/// CPU time of the master and of this process over one phase.
struct CpuMeter {
    pid: Option<u32>,
    master: Option<f64>,
    client: Option<f64>,
    started: Instant,
}

impl CpuMeter {
    fn start(pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            pid,
            master: pid.and_then(|p| cpu_seconds(Some(p))),
            client: cpu_seconds(None),
            started: Instant::now(),
        }
    }

    /// (master CPU s, client CPU s, wall s).
    fn stop(&self) -> (Option<f64>, Option<f64>, f64) {
        let master = self
            .pid
            .and_then(|p| cpu_seconds(Some(p)))
            .zip(self.master)
            .map(|(b, a)| b - a);
        let client = cpu_seconds(None).zip(self.client).map(|(b, a)| b - a);
        (master, client, self.started.elapsed().as_secs_f64())
    }
}

fn cpu_line(what: &str, (master, client, wall): (Option<f64>, Option<f64>, f64), ops: usize) {
    let show = |s: Option<f64>| s.map_or("?".to_string(), |s| format!("{s:.2} s"));
    let per_op = master.filter(|_| ops > 0).map_or("?".to_string(), |s| {
        format!("{:.0} µs", s * 1e6 / ops as f64)
    });
    let cores = master.map_or("?".to_string(), |s| format!("{:.2}", s / wall));
    println!(
        "  CPU over {what}: master {} ({cores} cores, {per_op} per request), bench client {}",
        show(master),
        show(client)
    );
}

// ---------------------------------------------------------------------------------------------
// Phases

/// What a create phase did.
struct Creates {
    /// Indexes created, with the time each create call was sent and returned.
    done: Vec<(usize, Instant, Instant)>,
    errors: usize,
    first_errors: Vec<String>,
    latency: Histogram<u64>,
    elapsed: Duration,
    /// The deadline stopped it before `total`.
    cut_short: bool,
}

impl Creates {
    fn report_errors(&self) {
        if self.errors > 0 {
            println!("  {} create(s) FAILED; first errors:", self.errors);
            for e in &self.first_errors {
                println!("    {e}");
            }
        }
        if self.cut_short {
            println!(
                "  the phase's deadline stopped it after {} creates",
                self.done.len()
            );
        }
    }
}

/// Creates `total` pods, `place(i)` naming each, from one task per client; paced at `rate`
/// creates/s if given (create `i` is not sent before `i / rate` seconds from the start).
async fn create_pods(
    clients: &[Client],
    total: usize,
    rate: Option<f64>,
    deadline: Duration,
    place: impl Fn(usize) -> (&'static str, String) + Send + Sync + 'static,
) -> Creates {
    let next = Arc::new(AtomicUsize::new(0));
    let place = Arc::new(place);
    let started = Instant::now();
    let stop_at = started + deadline;
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|client| {
            let next = next.clone();
            let place = place.clone();
            tokio::spawn(async move {
                let mut apis: HashMap<&'static str, Api<Pod>> = HashMap::new();
                let mut latency = histogram();
                let mut done = Vec::new();
                let mut errors = Vec::new();
                let mut cut_short = false;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    if let Some(rate) = rate {
                        let at = started + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(at.into()).await;
                    }
                    if Instant::now() >= stop_at {
                        cut_short = true;
                        break;
                    }
                    let (ns, name) = place(i);
                    let api = apis
                        .entry(ns)
                        .or_insert_with(|| Api::namespaced(client.clone(), ns));
                    let body = pod(name);
                    let sent = Instant::now();
                    let result = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        api.create(&PostParams::default(), &body),
                    )
                    .await;
                    let returned = Instant::now();
                    match result {
                        Ok(Ok(_)) => {
                            record(&mut latency, returned - sent);
                            done.push((i, sent, returned));
                        }
                        Ok(Err(e)) => errors.push(format!("create {ns}/p-{i:06}: {e}")),
                        Err(_) => errors.push(format!(
                            "create {ns}/p-{i:06}: no answer in {REQUEST_TIMEOUT:?}"
                        )),
                    }
                }
                (latency, done, errors, cut_short)
            })
        })
        .collect();
    let mut out = Creates {
        done: Vec::with_capacity(total),
        errors: 0,
        first_errors: Vec::new(),
        latency: histogram(),
        elapsed: Duration::ZERO,
        cut_short: false,
    };
    for task in tasks {
        let (latency, done, errors, cut_short) = task.await.expect("create task");
        out.latency.add(latency).ok();
        out.done.extend(done);
        out.errors += errors.len();
        out.first_errors
            .extend(errors.into_iter().take(5 - out.first_errors.len().min(5)));
        out.cut_short |= cut_short;
    }
    out.elapsed = started.elapsed();
    out
}

/// Gets `total` random pods among `existing` from one task per client.
async fn get_pods(
    clients: &[Client],
    existing: Arc<Vec<usize>>,
    pods: usize,
    total: usize,
    deadline: Duration,
) -> (Histogram<u64>, usize, Vec<String>, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let stop_at = started + deadline;
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .enumerate()
        .map(|(t, client)| {
            let next = next.clone();
            let existing = existing.clone();
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) << 32));
                let mut apis: HashMap<&'static str, Api<Pod>> = HashMap::new();
                let mut latency = histogram();
                let mut errors = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < stop_at {
                    let i = existing[rng.below(existing.len())];
                    let (ns, name) = place(i, pods);
                    let api = apis
                        .entry(ns)
                        .or_insert_with(|| Api::namespaced(client.clone(), ns));
                    let sent = Instant::now();
                    match tokio::time::timeout(REQUEST_TIMEOUT, api.get(&name)).await {
                        Ok(Ok(_)) => record(&mut latency, sent.elapsed()),
                        Ok(Err(e)) => errors.push(format!("get {ns}/{name}: {e}")),
                        Err(_) => errors.push(format!("get {ns}/{name}: no answer")),
                    }
                }
                (latency, errors)
            })
        })
        .collect();
    let mut latency = histogram();
    let mut errors = 0;
    let mut first_errors = Vec::new();
    for task in tasks {
        let (h, e) = task.await.expect("get task");
        latency.add(h).ok();
        errors += e.len();
        first_errors.extend(e.into_iter().take(5 - first_errors.len().min(5)));
    }
    (latency, errors, first_errors, started.elapsed())
}

/// What listing one scope measured.
struct Lists {
    body: Histogram<u64>,
    decoded: Histogram<u64>,
    bytes: usize,
    items: usize,
    errors: Vec<String>,
}

/// Lists pods (`ns` None: all namespaces), `rounds` times as text (until the body is in) and
/// `rounds` times as `ObjectList<Pod>` (until decoded).
async fn list_pods(client: &Client, ns: Option<&str>, rounds: usize, stop_at: Instant) -> Lists {
    let api: Api<Pod> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let path = Pod::url_path(&(), ns);
    let mut out = Lists {
        body: histogram(),
        decoded: histogram(),
        bytes: 0,
        items: 0,
        errors: Vec::new(),
    };
    for _ in 0..rounds {
        if Instant::now() >= stop_at {
            break;
        }
        let request = kube::core::Request::new(path.clone())
            .list(&ListParams::default())
            .expect("list request");
        let sent = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, client.request_text(request)).await {
            Ok(Ok(text)) => {
                record(&mut out.body, sent.elapsed());
                out.bytes = text.len();
            }
            Ok(Err(e)) => out.errors.push(format!("list {path}: {e}")),
            Err(_) => out.errors.push(format!("list {path}: no answer")),
        }
    }
    for _ in 0..rounds {
        if Instant::now() >= stop_at {
            break;
        }
        let sent = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, api.list(&ListParams::default())).await {
            Ok(Ok(list)) => {
                record(&mut out.decoded, sent.elapsed());
                out.items = list.items.len();
            }
            Ok(Err(e)) => out.errors.push(format!("list {path} (typed): {e}")),
            Err(_) => out.errors.push(format!("list {path} (typed): no answer")),
        }
    }
    out
}

/// The only part of a watched pod the watchers decode.
#[derive(Clone, Deserialize)]
struct NameOnly {
    metadata: NameMeta,
}

#[derive(Clone, Deserialize)]
struct NameMeta {
    name: String,
}

/// What one watcher saw: (burst index, when decoded) per ADDED event of a burst pod.
struct Watched {
    all_namespaces: bool,
    events: Vec<(usize, Instant)>,
    duplicates: usize,
    other_events: usize,
    error: Option<String>,
}

/// Opens [`WATCHERS`] watches at the current resourceVersion, then creates [`BURST`] pods at
/// [`BURST_RATE`]/s and collects what each watcher saw.
async fn watch_fanout(
    config: &Config,
    clients: &[Client],
    pid: Option<u32>,
    rows: &mut Vec<Row>,
    embedded: bool,
) -> anyhow::Result<()> {
    let rv = tokio::time::timeout(
        REQUEST_TIMEOUT,
        Api::<Pod>::namespaced(clients[0].clone(), WATCH_NS).list(&ListParams::default().limit(1)),
    )
    .await??
    .metadata
    .resource_version
    .unwrap_or_default();

    let burst_deadline = Duration::from_secs_f64(BURST as f64 / BURST_RATE * 2.0 + 30.0);
    let (done_tx, done_rx) = tokio::sync::watch::channel(
        Instant::now() + burst_deadline + REQUEST_TIMEOUT + WATCH_GRACE,
    );
    let opened = Instant::now();
    let mut watchers = Vec::with_capacity(WATCHERS);
    for w in 0..WATCHERS {
        let all_namespaces = w % 2 == 0;
        let client = Client::try_from(config.clone())?;
        let path = Pod::url_path(&(), (!all_namespaces).then_some(WATCH_NS));
        let request =
            kube::core::Request::new(path).watch(&WatchParams::default().timeout(120), &rv)?;
        let stream =
            tokio::time::timeout(REQUEST_TIMEOUT, client.request_events::<NameOnly>(request))
                .await??;
        let mut stream = Box::pin(stream);
        let mut done_rx = done_rx.clone();
        watchers.push(tokio::spawn(async move {
            let mut seen = vec![false; BURST];
            let mut out = Watched {
                all_namespaces,
                events: Vec::with_capacity(BURST),
                duplicates: 0,
                other_events: 0,
                error: None,
            };
            let mut deadline = *done_rx.borrow();
            let mut sender_gone = false;
            while out.events.len() < BURST {
                tokio::select! {
                    item = stream.try_next() => match item {
                        Ok(Some(WatchEvent::Added(pod))) => {
                            let at = Instant::now();
                            match pod.metadata.name.strip_prefix("w-").and_then(|i| i.parse::<usize>().ok()) {
                                Some(i) if i < BURST && !seen[i] => {
                                    seen[i] = true;
                                    out.events.push((i, at));
                                }
                                Some(i) if i < BURST => out.duplicates += 1,
                                _ => out.other_events += 1,
                            }
                        }
                        Ok(Some(WatchEvent::Bookmark(_))) => {}
                        Ok(Some(WatchEvent::Error(status))) => {
                            out.error = Some(format!("ERROR event: {}", status.message));
                            break;
                        }
                        Ok(Some(_)) => out.other_events += 1,
                        Ok(None) => {
                            out.error = Some("the watch ended".into());
                            break;
                        }
                        Err(e) => {
                            out.error = Some(e.to_string());
                            break;
                        }
                    },
                    _ = tokio::time::sleep_until(deadline.into()) => break,
                    changed = done_rx.changed(), if !sender_gone => match changed {
                        Ok(()) => deadline = *done_rx.borrow(),
                        Err(_) => sender_gone = true,
                    },
                }
            }
            out
        }));
    }
    let opened = opened.elapsed();

    let burst_clients: Vec<Client> = clients.to_vec();
    let cpu = CpuMeter::start(pid);
    let burst = create_pods(
        &burst_clients,
        BURST,
        Some(BURST_RATE),
        burst_deadline,
        |i| (WATCH_NS, format!("w-{i:05}")),
    )
    .await;
    done_tx.send_replace(Instant::now() + WATCH_GRACE);
    let mut seen = Vec::with_capacity(WATCHERS);
    for w in watchers {
        seen.push(w.await.expect("watcher task"));
    }
    let cpu = cpu.stop();
    drop(done_tx);

    // Lag per watcher × event, from the create's return and from its sending.
    let mut times: Vec<Option<(Instant, Instant)>> = vec![None; BURST];
    for &(i, sent, returned) in &burst.done {
        times[i] = Some((sent, returned));
    }
    let mut lag = histogram();
    let mut lag_sent = histogram();
    let mut lag_scope = [histogram(), histogram()];
    let (mut early, mut received, mut duplicates, mut other) = (0usize, 0usize, 0usize, 0usize);
    let mut errors = Vec::new();
    for watched in &seen {
        duplicates += watched.duplicates;
        other += watched.other_events;
        if let Some(e) = &watched.error {
            errors.push(e.clone());
        }
        for &(i, at) in &watched.events {
            let Some((sent, returned)) = times[i] else {
                continue;
            };
            received += 1;
            if at < returned {
                early += 1;
            }
            record(&mut lag, at.saturating_duration_since(returned));
            record(&mut lag_sent, at.saturating_duration_since(sent));
            record(
                &mut lag_scope[usize::from(watched.all_namespaces)],
                at.saturating_duration_since(returned),
            );
        }
    }
    let expected = burst.done.len() * WATCHERS;
    let missed = expected - received;

    println!(
        "watch fan-out: {WATCHERS} watchers ({} on all namespaces, {} on namespace {WATCH_NS}) opened in {:.2} s; \
         {} creates paced at {BURST_RATE:.0}/s took {:.2} s (create p99 {:.2} ms)",
        WATCHERS.div_ceil(2),
        WATCHERS / 2,
        opened.as_secs_f64(),
        burst.done.len(),
        burst.elapsed.as_secs_f64(),
        ms(&burst.latency, 0.99),
    );
    burst.report_errors();
    println!(
        "  events: {received} of {expected} received, {missed} missed, {duplicates} duplicated, {other} unexpected{}",
        if missed > 0 { "   <-- MISSED EVENTS" } else { "" }
    );
    for e in errors.iter().take(5) {
        println!("  watcher error: {e}");
    }
    let lag_met = ms(&lag, 0.99) <= TARGET_WATCH_LAG_P99_MS && missed == 0;
    println!(
        "  lag from create returned: p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms   [target p99 ≤ {TARGET_WATCH_LAG_P99_MS} ms, no misses: {}]",
        ms(&lag, 0.5),
        ms(&lag, 0.99),
        max_ms(&lag),
        yes_no(lag_met),
    );
    println!(
        "  lag from create sent:     p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms   ({:.1}% of events arrived before their create returned; counted as 0 above)",
        ms(&lag_sent, 0.5),
        ms(&lag_sent, 0.99),
        max_ms(&lag_sent),
        if received > 0 { early as f64 * 100.0 / received as f64 } else { 0.0 },
    );
    println!(
        "  lag p99 by scope: all namespaces {:.2} ms, one namespace {:.2} ms",
        ms(&lag_scope[1], 0.99),
        ms(&lag_scope[0], 0.99),
    );
    cpu_line("the burst and its delivery", cpu, burst.done.len());

    rows.push(Row::new(
        &format!(
            "watch: {WATCHERS} watchers, {BURST} creates at {BURST_RATE:.0}/s — events missed"
        ),
        format!("{missed} of {expected}"),
        Some(("0".into(), missed == 0)),
    ));
    rows.push(Row::new(
        "watch lag p50 / p99 / max (from create returned)",
        format!(
            "{:.2} / **{:.2}** / {:.2} ms",
            ms(&lag, 0.5),
            ms(&lag, 0.99),
            max_ms(&lag)
        ),
        embedded.then(|| {
            (
                format!("p99 ≤ {TARGET_WATCH_LAG_P99_MS} ms"),
                ms(&lag, 0.99) <= TARGET_WATCH_LAG_P99_MS,
            )
        }),
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report

/// One row of the markdown table.
struct Row {
    measure: String,
    figure: String,
    /// The target and whether it was met.
    target: Option<(String, bool)>,
}

impl Row {
    fn new(measure: &str, figure: String, target: Option<(String, bool)>) -> Row {
        Row {
            measure: measure.to_string(),
            figure,
            target,
        }
    }
}

fn yes_no(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "NO"
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, kernel {}", kernel.trim())
}

fn master_binary() -> std::path::PathBuf {
    std::env::var_os("SKIFF_MASTER_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_skiff-master").into())
}

async fn bench_backend(
    backend: &str,
    scale: &Scale,
    with_controllers: bool,
) -> anyhow::Result<Vec<Row>> {
    let embedded = backend == "embedded";
    let etcd = if embedded {
        None
    } else {
        Some(
            testing::Etcd::start()
                .await
                .map_err(|e| e.context("start etcd (run cluster/install-deps.sh)"))?,
        )
    };
    let binary = master_binary();
    let flags: &[&str] = if with_controllers {
        &[]
    } else {
        &["--controllers="]
    };
    let master =
        testing::Master::start(&binary, etcd.as_ref().map(|e| e.endpoint.as_str()), flags)?;
    let pid = master.pid();
    println!(
        "\n== backend: {}",
        if embedded { "embedded (redb)" } else { "etcd" }
    );
    println!(
        "master: {} (pid {}), {}",
        binary.display(),
        pid.map_or("?".into(), |p| p.to_string()),
        master.url
    );
    let result = run_phases(&master, pid, scale, embedded).await;
    if let Err(e) = &result {
        println!(
            "FAILED: {e:#}\nmaster log ends with:\n{}",
            master.log_tail()
        );
    } else {
        let tail = master.log_tail();
        let noisy: Vec<&str> = tail
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("panicked"))
            .collect();
        if !noisy.is_empty() {
            println!("master log warnings/errors (last lines):");
            for line in noisy.iter().rev().take(5).rev() {
                println!("  {line}");
            }
        }
    }
    drop(master);
    drop(etcd);
    result
}

async fn run_phases(
    master: &testing::Master,
    pid: Option<u32>,
    scale: &Scale,
    embedded: bool,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let kubeconfig = Kubeconfig::read_from(&master.kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|_| Client::try_from(config.clone()))
        .collect::<Result<_, _>>()?;

    let namespaces: Api<Namespace> = Api::all(clients[0].clone());
    for name in SPREAD_NS.iter().chain([&LIST_NS, &WATCH_NS]) {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            namespaces.create(&PostParams::default(), &ns),
        )
        .await??;
    }
    // One request per client first, so every TLS handshake happens before the clock starts.
    for client in &clients {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        tokio::time::timeout(REQUEST_TIMEOUT, namespaces.get("default")).await??;
    }
    let rss_start = pid.and_then(rss_bytes);

    // Creates.
    let pods = scale.pods;
    let cpu = CpuMeter::start(pid);
    let creates = create_pods(&clients, pods, None, scale.create_deadline, move |i| {
        place(i, pods)
    })
    .await;
    let cpu = cpu.stop();
    let rate = creates.done.len() as f64 / creates.elapsed.as_secs_f64();
    let p99 = ms(&creates.latency, 0.99);
    println!(
        "creates, {CLIENTS} clients: {} pods in {:.1} s: {rate:>6.0} creates/s   p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>7.2} ms   \
         [target ≥ {TARGET_CREATES_PER_S:.0}/s: {}; p99 ≤ {TARGET_CREATE_P99_MS} ms: {}]",
        creates.done.len(),
        creates.elapsed.as_secs_f64(),
        ms(&creates.latency, 0.5),
        p99,
        max_ms(&creates.latency),
        yes_no(rate >= TARGET_CREATES_PER_S),
        yes_no(p99 <= TARGET_CREATE_P99_MS),
    );
    creates.report_errors();
    cpu_line("the creates", cpu, creates.done.len());
    let target = |text: String, met: bool| embedded.then_some((text, met));
    rows.push(Row::new(
        &format!(
            "pod creates/s, {CLIENTS} clients ({} pods)",
            creates.done.len()
        ),
        format!("**{rate:.0}**"),
        target(
            format!("≥ {TARGET_CREATES_PER_S:.0}"),
            rate >= TARGET_CREATES_PER_S,
        ),
    ));
    rows.push(Row::new(
        "create latency p50 / p99",
        format!("{:.2} / **{p99:.2}** ms", ms(&creates.latency, 0.5)),
        target(
            format!("p99 ≤ {TARGET_CREATE_P99_MS} ms"),
            p99 <= TARGET_CREATE_P99_MS,
        ),
    ));
    if let (Some(master_cpu), _, _) = cpu {
        rows.push(Row::new(
            "master CPU per create",
            format!(
                "{:.0} µs ({:.2} cores at that rate)",
                master_cpu * 1e6 / creates.done.len().max(1) as f64,
                master_cpu / creates.elapsed.as_secs_f64()
            ),
            None,
        ));
    }

    let rss = pid.and_then(rss_bytes);
    let stored = creates.done.len();
    match rss {
        Some(rss) => {
            let met = mib(rss) <= TARGET_RSS_MIB;
            println!(
                "master RSS with {stored} pods stored: {:.1} MiB (at start {:.1} MiB)   [target ≤ {TARGET_RSS_MIB} MiB with 30k pods: {}]",
                mib(rss),
                rss_start.map_or(0.0, mib),
                yes_no(met)
            );
            rows.push(Row::new(
                &format!("master RSS with {stored} pods stored"),
                format!("**{:.0} MiB**", mib(rss)),
                target(format!("≤ {TARGET_RSS_MIB} MiB (30k pods)"), met),
            ));
        }
        None => println!("master RSS: cannot read /proc/<pid>/status"),
    }
    if stored == 0 {
        anyhow::bail!("no pod was created");
    }

    // Gets.
    let mut existing: Vec<usize> = creates.done.iter().map(|&(i, _, _)| i).collect();
    existing.sort_unstable();
    let (latency, errors, first_errors, elapsed) = get_pods(
        &clients,
        Arc::new(existing),
        pods,
        scale.gets,
        scale.get_deadline,
    )
    .await;
    let got = latency.len();
    println!(
        "gets, {CLIENTS} clients: {got} random pods in {:.1} s: {:>6.0} gets/s   p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>7.2} ms",
        elapsed.as_secs_f64(),
        got as f64 / elapsed.as_secs_f64(),
        ms(&latency, 0.5),
        ms(&latency, 0.99),
        max_ms(&latency),
    );
    if errors > 0 {
        println!("  {errors} get(s) FAILED; first errors:");
        for e in first_errors {
            println!("    {e}");
        }
    }
    rows.push(Row::new(
        "get latency p50 / p99 (random pod)",
        format!(
            "{:.2} / {:.2} ms ({:.0} gets/s)",
            ms(&latency, 0.5),
            ms(&latency, 0.99),
            got as f64 / elapsed.as_secs_f64()
        ),
        None,
    ));

    // Lists.
    let stop_at = Instant::now() + scale.list_deadline;
    let in_list_ns = creates
        .done
        .iter()
        .filter(|&&(i, _, _)| place(i, pods).0 == LIST_NS)
        .count();
    for (ns, rounds, expected) in [
        (Some(LIST_NS), scale.ns_list_rounds, in_list_ns),
        (None, scale.all_list_rounds, stored),
    ] {
        let lists = list_pods(&clients[0], ns, rounds, stop_at).await;
        let scope = match ns {
            Some(ns) => format!("namespace {ns}"),
            None => "all namespaces".to_string(),
        };
        println!(
            "list {scope} ({} pods, {:.1} MiB): body in p50 {:>7.2} ms   p99 {:>7.2} ms;   decoded into Vec<Pod> p50 {:>7.2} ms   p99 {:>7.2} ms   ({} + {} rounds)",
            lists.items,
            mib(lists.bytes as u64),
            ms(&lists.body, 0.5),
            ms(&lists.body, 0.99),
            ms(&lists.decoded, 0.5),
            ms(&lists.decoded, 0.99),
            lists.body.len(),
            lists.decoded.len(),
        );
        if lists.items != expected {
            println!(
                "  WRONG: the list held {} pods, {expected} were created",
                lists.items
            );
        }
        for e in lists.errors.iter().take(5) {
            println!("  list FAILED: {e}");
        }
        rows.push(Row::new(
            &format!(
                "list {scope}, {expected} pods ({:.1} MiB), p50 / p99",
                mib(lists.bytes as u64)
            ),
            format!(
                "{:.1} / {:.1} ms (decoded: {:.1} / {:.1} ms)",
                ms(&lists.body, 0.5),
                ms(&lists.body, 0.99),
                ms(&lists.decoded, 0.5),
                ms(&lists.decoded, 0.99)
            ),
            None,
        ));
    }

    // Listing every pod makes the master hold the whole list at once (and the allocator may
    // keep that memory), so its RSS after the lists is shown too.
    if let Some(rss) = pid.and_then(rss_bytes) {
        println!("master RSS after the lists: {:.1} MiB", mib(rss));
        rows.push(Row::new(
            &format!("master RSS after listing all {stored} pods"),
            format!("{:.0} MiB", mib(rss)),
            None,
        ));
    }

    // Watch fan-out.
    watch_fanout(&config, &clients, pid, &mut rows, embedded).await?;

    if let Some(rss) = pid.and_then(rss_bytes) {
        println!("master RSS at the end: {:.1} MiB", mib(rss));
    }
    Ok(rows)
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let scale = Scale::new(&args);
    println!("API server benchmark: {}", machine());
    println!(
        "client: the kube crate (v5; HTTP/1.1 over TLS, one connection per client); {} pods, {CLIENTS} clients{}; {}",
        scale.pods,
        if args.quick { " (--quick)" } else { "" },
        if args.with_controllers {
            "master with its scheduler and controllers"
        } else {
            "master serving the API alone (--controllers=)"
        }
    );
    let mut tables = Vec::new();
    let mut failed = false;
    for backend in &args.backends {
        let started = Instant::now();
        match bench_backend(backend, &scale, args.with_controllers).await {
            Ok(rows) => tables.push((backend.clone(), rows)),
            Err(e) => {
                println!("backend {backend} FAILED: {e:#}");
                failed = true;
            }
        }
        println!("({backend}: {:.0} s)", started.elapsed().as_secs_f64());
    }

    println!("\nFor BENCHMARKS.md:\n");
    println!("| backend | measure | figure | target | met |");
    println!("|---|---|---|---|---|");
    for (backend, rows) in &tables {
        let backend = if backend == "embedded" {
            "embedded (redb)"
        } else {
            "etcd backend"
        };
        for row in rows {
            let (target, met) = match &row.target {
                Some((t, met)) => (t.as_str(), yes_no(*met)),
                None => ("—", ""),
            };
            println!(
                "| {backend} | {} | {} | {target} | {met} |",
                row.measure, row.figure
            );
        }
    }
    if failed {
        std::process::exit(1);
    }
}
