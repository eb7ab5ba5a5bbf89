//! The store benchmark: `cargo xtask bench store [-- --backend embedded|etcd|all] [--quick]`.
//!
//! For each backend it reports writes/s and p50/p99 write latency with 1 and 32 concurrent
//! writers, the p99 lag of a watcher during the 32-writer burst (from the write's
//! acknowledgement to the event's delivery), and the latency of listing 10k and 100k keys.
//! Against etcd it also drives the same etcd with plain `Put` RPCs (what `etcdctl put` sends),
//! so the backend's own cost shows, and with `--etcdctl-check-perf` it runs
//! `etcdctl check perf --load=l` as an outside reference.
//!
//! Values are 1 KiB, about the size of a Pod. The embedded store lives in a temporary directory
//! on the same disk as the working directory (set TMPDIR to move it); etcd is started on
//! loopback with its data in a temporary directory as well.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use skiff_master::store::{self, RangeRequest, Store};
use tokio::sync::Mutex;

struct Args {
    backends: Vec<String>,
    quick: bool,
    etcdctl_check_perf: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        backends: vec!["embedded".into(), "etcd".into()],
        quick: false,
        etcdctl_check_perf: false,
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
            "--etcdctl-check-perf" => args.etcdctl_check_perf = true,
            // cargo bench passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    args
}

const VALUE_SIZE: usize = 1024;

fn value(tag: &str) -> Bytes {
    let mut v = tag.as_bytes().to_vec();
    v.resize(VALUE_SIZE, b'x');
    Bytes::from(v)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Runs `total` writes from `writers` tasks; returns (writes/s, latency histogram in µs, and
/// each write's acknowledgement time by revision).
async fn write_burst(
    store: Arc<dyn Store>,
    prefix: &str,
    writers: usize,
    total: usize,
) -> (f64, Histogram<u64>, HashMap<i64, Instant>) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let store = store.clone();
            let next = next.clone();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut hist = histogram();
                let mut acks = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let t = Instant::now();
                    let kv = store
                        .create(&format!("{prefix}{i:08}"), value(&i.to_string()))
                        .await
                        .expect("write");
                    let done = Instant::now();
                    hist.record((done - t).as_micros().max(1) as u64).ok();
                    acks.push((kv.mod_revision, done));
                }
                (hist, acks)
            })
        })
        .collect();
    let mut hist = histogram();
    let mut acks = HashMap::with_capacity(total);
    for task in tasks {
        let (h, a) = task.await.expect("writer task");
        hist.add(h).ok();
        acks.extend(a);
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    (rate, hist, acks)
}

async fn fill(store: &Arc<dyn Store>, prefix: &str, n: usize) {
    let _ = write_burst(store.clone(), prefix, 64, n).await;
}

async fn list_latency(store: &Arc<dyn Store>, prefix: &str, rounds: usize) -> Histogram<u64> {
    let mut hist = histogram();
    for _ in 0..rounds {
        let t = Instant::now();
        let listed = store
            .range(RangeRequest {
                prefix: prefix.to_string(),
                ..Default::default()
            })
            .await
            .expect("list");
        hist.record(t.elapsed().as_micros().max(1) as u64).ok();
        std::hint::black_box(listed.kvs.len());
    }
    hist
}

async fn bench_backend(name: &str, store: Arc<dyn Store>, quick: bool) {
    let scale = if quick { 10 } else { 1 };
    println!("\n== backend: {name}");

    let (rate, hist, _) = write_burst(store.clone(), "/registry/bench/w1/", 1, 2000 / scale).await;
    println!(
        "writes, 1 writer:    {rate:>9.0} writes/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
        ms(&hist, 0.5),
        ms(&hist, 0.99)
    );

    // 32 writers, with a watcher measuring delivery lag.
    let mut watch = store
        .watch("/registry/bench/w32/", None)
        .await
        .expect("watch");
    let total = 40_000 / scale;
    let received = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let watcher = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut got = 0;
            while got < total {
                match tokio::time::timeout(Duration::from_secs(60), watch.next()).await {
                    Ok(Some(Ok(event))) => {
                        received
                            .lock()
                            .await
                            .push((event.revision(), Instant::now()));
                        got += 1;
                    }
                    other => panic!("watch ended early after {got} events: {other:?}"),
                }
            }
        })
    };
    let (rate, hist, acks) = write_burst(store.clone(), "/registry/bench/w32/", 32, total).await;
    println!(
        "writes, 32 writers:  {rate:>9.0} writes/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
        ms(&hist, 0.5),
        ms(&hist, 0.99)
    );
    watcher.await.expect("watcher");
    let mut lag = histogram();
    for (revision, at) in received.lock().await.iter() {
        let acked = acks.get(revision).expect("an event per write");
        lag.record(at.saturating_duration_since(*acked).as_micros().max(1) as u64)
            .ok();
    }
    println!(
        "watch lag (32 writers, {total} events): p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        ms(&lag, 0.5),
        ms(&lag, 0.99),
        lag.max() as f64 / 1000.0
    );

    for keys in [10_000usize, 100_000] {
        let keys = keys / scale;
        let prefix = format!("/registry/bench/list{keys}/");
        fill(&store, &prefix, keys).await;
        let rounds = if keys >= 100_000 { 10 } else { 30 };
        let hist = list_latency(&store, &prefix, rounds).await;
        println!(
            "list {keys:>6} keys:    p50 {:>8.2} ms   p99 {:>8.2} ms   ({rounds} lists of {} MiB)",
            ms(&hist, 0.5),
            ms(&hist, 0.99),
            keys * VALUE_SIZE / (1 << 20)
        );
    }
}

/// Plain etcd `Put`s (what `etcdctl put` sends), or the put-if-absent `Txn` that the backend's
/// create sends, straight from `etcd-client` at the same concurrency: the floor the backend adds to.
async fn etcd_raw_writes(
    endpoint: &str,
    writers: usize,
    total: usize,
    txn: bool,
) -> (f64, Histogram<u64>) {
    let client = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connect");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let mut kv = client.kv_client();
            let next = next.clone();
            tokio::spawn(async move {
                let mut hist = histogram();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let key = format!("/raw/{txn}/{writers}/{i:08}");
                    let t = Instant::now();
                    if txn {
                        let absent = etcd_client::Compare::create_revision(
                            key.clone(),
                            etcd_client::CompareOp::Equal,
                            0,
                        );
                        let put = etcd_client::TxnOp::put(key, value("raw").to_vec(), None);
                        kv.txn(etcd_client::Txn::new().when([absent]).and_then([put]))
                            .await
                            .expect("txn");
                    } else {
                        kv.put(key, value("raw").to_vec(), None).await.expect("put");
                    }
                    hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                }
                hist
            })
        })
        .collect();
    let mut hist = histogram();
    for task in tasks {
        hist.add(task.await.expect("write task")).ok();
    }
    (total as f64 / started.elapsed().as_secs_f64(), hist)
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

#[tokio::main]
async fn main() {
    let args = parse_args();
    println!("store benchmark: {}", machine());
    println!("values {VALUE_SIZE} B; latencies are per acknowledged write, fsync included");
    for backend in &args.backends {
        match backend.as_str() {
            "embedded" => {
                let dir = tempfile::tempdir_in(std::env::var("TMPDIR").unwrap_or(".".into()))
                    .expect("temporary directory");
                let store: Arc<dyn Store> = Arc::new(
                    store::embedded::EmbeddedStore::open(&dir.path().join("bench.redb"))
                        .expect("open"),
                );
                bench_backend("embedded (redb)", store, args.quick).await;
            }
            "etcd" => {
                let etcd = skiff_master::testing::Etcd::start()
                    .await
                    .expect("start etcd (run cluster/install-deps.sh)");
                let store: Arc<dyn Store> = Arc::new(
                    store::etcd::EtcdStore::connect(
                        &etcd.endpoints(),
                        store::etcd::Options::default(),
                    )
                    .await
                    .expect("connect"),
                );
                let version = std::process::Command::new("etcd")
                    .arg("--version")
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_string()
                    })
                    .unwrap_or_default();
                bench_backend(&format!("etcd ({version})"), store, args.quick).await;
                let scale = if args.quick { 10 } else { 1 };
                for (txn, writers, total) in [
                    (false, 1, 2000 / scale),
                    (false, 32, 40_000 / scale),
                    (true, 1, 2000 / scale),
                    (true, 32, 40_000 / scale),
                ] {
                    // A fresh etcd per baseline, as the backend's run had.
                    let fresh = skiff_master::testing::Etcd::start()
                        .await
                        .expect("start etcd");
                    let (rate, hist) = etcd_raw_writes(&fresh.endpoint, writers, total, txn).await;
                    let what = if txn { "raw etcd Txn" } else { "raw etcd Put" };
                    println!(
                        "{what}, {writers:>2} writer(s): {rate:>9.0} writes/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
                        ms(&hist, 0.5),
                        ms(&hist, 0.99)
                    );
                }
                if args.etcdctl_check_perf {
                    let out = std::process::Command::new("etcdctl")
                        .env("ETCDCTL_API", "3")
                        .args(["--endpoints", &etcd.endpoint, "check", "perf", "--load=l"])
                        .output()
                        .expect("run etcdctl");
                    println!("etcdctl check perf --load=l:");
                    // Keep its verdict lines, not its progress bar.
                    let text = String::from_utf8_lossy(&out.stdout).into_owned()
                        + &String::from_utf8_lossy(&out.stderr);
                    for line in text.lines().filter(|l| !l.contains('%')) {
                        println!("  {line}");
                    }
                }
            }
            _ => unreachable!("checked in parse_args"),
        }
    }
}
