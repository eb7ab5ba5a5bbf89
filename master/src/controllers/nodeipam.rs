//! Node IPAM (kube-controller-manager's `nodeipam` with the range allocator): each Node without
//! a `spec.podCIDR` gets a free subnet of `--cluster-cidr` of prefix `--node-cidr-mask-size`
//! (IPv4), patched into `spec.podCIDR` and `spec.podCIDRs`.
//!
//! The subnets in use are rebuilt from the node cache before the first allocation, so a
//! restarted (or newly elected) master never hands out a subnet twice. A deleted Node frees its
//! subnet. When the range is exhausted the Node gets a `CIDRNotAvailable` Warning and is looked
//! at again later (or as soon as a subnet is freed).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use serde_json::json;
use tokio::task::JoinSet;

use super::client::PatchType;
use super::runtime;
use super::{Action, Context, Error, EventType, Reconciler, WorkQueue};

/// How long a Node waits for a subnet when none is free.
const EXHAUSTED_RETRY: Duration = Duration::from_secs(15);
/// Upstream's limit on how many bits the node subnets may add to the cluster prefix.
const MAX_SUBNET_BITS: u8 = 16;

/// `a.b.c.d/n` as (address, prefix).
fn parse_cidr(text: &str) -> Result<(u32, u8), String> {
    let (addr, prefix) = text
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a CIDR (like 10.244.0.0/16)"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{text:?} is not an IPv4 CIDR"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("{text:?} has a bad prefix length"))?;
    Ok((u32::from(addr), prefix))
}

/// The first and last address of a prefix, as u64 so /0 does not overflow.
fn bounds(addr: u32, prefix: u8) -> (u64, u64) {
    let size = 1u64 << (32 - u32::from(prefix));
    let start = u64::from(addr) & !(size - 1);
    (start, start + size - 1)
}

/// The node subnets of the cluster range and which of them are taken (upstream's `CidrSet`).
#[derive(Debug, Clone)]
pub struct CidrSet {
    start: u64,
    end: u64,
    mask: u8,
    used: Vec<bool>,
    /// Where the next search starts, so freed subnets are not handed out again at once.
    next: usize,
}

impl CidrSet {
    /// The subnets of prefix `mask` in `cluster_cidr`; errors name what is wrong with the flags.
    pub fn new(cluster_cidr: &str, mask: u8) -> Result<CidrSet, String> {
        if cluster_cidr.contains(',') {
            return Err(format!(
                "--cluster-cidr {cluster_cidr:?}: only one IPv4 range is supported"
            ));
        }
        let (addr, prefix) = parse_cidr(cluster_cidr).map_err(|e| format!("--cluster-cidr {e}"))?;
        if mask < prefix || mask > 32 {
            return Err(format!(
                "--node-cidr-mask-size {mask} must be between the cluster prefix /{prefix} and 32"
            ));
        }
        if mask - prefix > MAX_SUBNET_BITS {
            return Err(format!(
                "--node-cidr-mask-size {mask} makes too many subnets of /{prefix}: at most {MAX_SUBNET_BITS} bits more than the cluster prefix"
            ));
        }
        let (start, end) = bounds(addr, prefix);
        Ok(CidrSet {
            start,
            end,
            mask,
            used: vec![false; 1usize << (mask - prefix)],
            next: 0,
        })
    }

    fn host_bits(&self) -> u32 {
        32 - u32::from(self.mask)
    }

    /// Subnet `i` as text.
    pub fn subnet(&self, i: usize) -> String {
        let addr = self.start + ((i as u64) << self.host_bits());
        let addr = Ipv4Addr::from(u32::try_from(addr).unwrap_or(u32::MAX));
        format!("{addr}/{}", self.mask)
    }

    /// Takes the next free subnet, if any.
    pub fn allocate(&mut self) -> Option<usize> {
        let n = self.used.len();
        let i = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| !self.used[i])?;
        self.used[i] = true;
        self.next = (i + 1) % n;
        Some(i)
    }

    /// The subnets that `cidr` overlaps; `None` if it is not an IPv4 CIDR in the range.
    pub fn covered(&self, cidr: &str) -> Option<Range<usize>> {
        let (addr, prefix) = parse_cidr(cidr).ok()?;
        let (start, end) = bounds(addr, prefix);
        let (lo, hi) = (start.max(self.start), end.min(self.end));
        if lo > hi {
            return None;
        }
        let first = ((lo - self.start) >> self.host_bits()) as usize;
        let last = ((hi - self.start) >> self.host_bits()) as usize;
        Some(first..last + 1)
    }

    pub fn occupy(&mut self, range: Range<usize>) {
        for i in range {
            if let Some(used) = self.used.get_mut(i) {
                *used = true;
            }
        }
    }

    pub fn release(&mut self, range: Range<usize>) {
        for i in range {
            if let Some(used) = self.used.get_mut(i) {
                *used = false;
            }
        }
    }
}

/// The Node's IPv4 pod CIDR, from `podCIDRs` or `podCIDR`.
fn node_cidr(node: &Node) -> Option<String> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.as_ref())
        .find(|c| parse_cidr(c).is_ok())
        .cloned()
}

struct State {
    set: CidrSet,
    /// The subnets each Node holds (ours, or what it had when seen).
    by_node: HashMap<String, Range<usize>>,
}

/// Hands out pod subnets to Nodes.
pub struct NodeIpamController {
    ctx: Context,
    queue: WorkQueue,
    state: Mutex<State>,
}

impl NodeIpamController {
    /// A controller over `set`, with the subnets the cached Nodes hold marked as taken.
    pub fn new(ctx: Context, queue: WorkQueue, set: CidrSet) -> Self {
        let controller = NodeIpamController {
            ctx,
            queue,
            state: Mutex::new(State {
                set,
                by_node: HashMap::new(),
            }),
        };
        for node in controller.ctx.informers.nodes.list() {
            let name = node.metadata.name.as_deref().unwrap_or_default();
            if let Some(cidr) = node_cidr(&node) {
                controller.record(name, &cidr);
            }
        }
        controller
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that `name` holds `cidr` (set by us earlier, or by someone else).
    fn record(&self, name: &str, cidr: &str) {
        let mut state = self.lock();
        let range = state.set.covered(cidr);
        if state.by_node.get(name) == range.as_ref() {
            return;
        }
        if let Some(old) = state.by_node.remove(name) {
            state.set.release(old);
        }
        match range {
            Some(range) => {
                state.set.occupy(range.clone());
                state.by_node.insert(name.to_string(), range);
            }
            None => tracing::debug!(node = name, cidr, "pod CIDR outside the cluster range"),
        }
    }

    /// Frees what `name` held; Nodes waiting for a subnet are looked at again.
    fn release(&self, name: &str) {
        let released = {
            let mut state = self.lock();
            match state.by_node.remove(name) {
                Some(range) => {
                    state.set.release(range);
                    true
                }
                None => false,
            }
        };
        if released {
            for node in self.ctx.informers.nodes.list() {
                if node_cidr(&node).is_none() {
                    self.queue
                        .add(node.metadata.name.clone().unwrap_or_default());
                }
            }
        }
    }

    /// The subnet for `name`: the one already allocated to it (our patch may not be in the cache
    /// yet), else a fresh one (`true`). `None` when the range is exhausted.
    fn claim(&self, name: &str) -> Option<(String, bool)> {
        let mut state = self.lock();
        match state.by_node.get(name).cloned() {
            Some(range) if range.len() == 1 => return Some((state.set.subnet(range.start), false)),
            Some(range) => {
                state.set.release(range);
                state.by_node.remove(name);
            }
            None => {}
        }
        let i = state.set.allocate()?;
        state.by_node.insert(name.to_string(), i..i + 1);
        Some((state.set.subnet(i), true))
    }
}

#[async_trait::async_trait]
impl Reconciler for NodeIpamController {
    fn name(&self) -> &'static str {
        "nodeipam"
    }

    async fn reconcile(&self, name: &str) -> Result<Action, Error> {
        let Some(node) = self.ctx.informers.nodes.get(name) else {
            self.release(name);
            return Ok(Action::Done);
        };
        if let Some(cidr) = node_cidr(&node) {
            self.record(name, &cidr);
            return Ok(Action::Done);
        }
        let Some((cidr, fresh)) = self.claim(name) else {
            self.ctx.events.record(
                &*node,
                EventType::Warning,
                "CIDRNotAvailable",
                format!("Node {name} status is now: CIDRNotAvailable"),
            );
            return Ok(Action::RequeueAfter(EXHAUSTED_RETRY));
        };
        let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        let result = self
            .ctx
            .api
            .patch::<Node>(None, name, PatchType::Strategic, &patch)
            .await;
        match result {
            Ok(_) => {
                tracing::info!(node = name, cidr, "assigned pod CIDR");
                Ok(Action::Done)
            }
            Err(e) if e.is_not_found() => {
                self.release(name);
                Ok(Action::Done)
            }
            Err(e) => {
                if fresh {
                    self.release(name);
                }
                Err(e.into())
            }
        }
    }
}

/// Validates the flags, registers the callbacks and, once the node cache is loaded, rebuilds
/// the subnets in use and starts the loop. Bad flags: an error log and no loop.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let config = &ctx.config;
    let set = match CidrSet::new(&config.cluster_cidr, config.node_cidr_mask_size) {
        Ok(set) => set,
        Err(e) => {
            tracing::error!(error = %e, "node IPAM not started: bad pod range flags");
            return;
        }
    };
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        ctx.informers.nodes.on_change(move |change| {
            queue.add(change.object().metadata.name.clone().unwrap_or_default());
        });
    }
    let ctx = ctx.clone();
    tasks.spawn(async move {
        ctx.informers.nodes.wait_synced().await;
        let workers = ctx.config.concurrent_syncs;
        let controller = Arc::new(NodeIpamController::new(ctx, queue.clone(), set));
        runtime::run(controller, queue, workers).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use crate::controllers::events::drain;
    use crate::controllers::Config;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, cidr: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(str::to_string),
                pod_cidrs: cidr.map(|c| vec![c.to_string()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn setup(
        cluster: &str,
        mask: u8,
        nodes: &[Node],
    ) -> (
        RecordingClient,
        Context,
        NodeIpamController,
        tokio::sync::mpsc::Receiver<crate::controllers::events::Record>,
    ) {
        let fake = RecordingClient::new();
        let (ctx, rx) = Context::new(Arc::new(fake.clone()), Config::default());
        for n in nodes {
            ctx.informers.nodes.apply(n.clone());
        }
        let set = CidrSet::new(cluster, mask).unwrap();
        let controller = NodeIpamController::new(ctx.clone(), WorkQueue::new(), set);
        (fake, ctx, controller, rx)
    }

    /// The pod CIDR each call patched, in order.
    fn patched(fake: &RecordingClient) -> Vec<(String, String)> {
        fake.calls()
            .iter()
            .filter(|c| c.verb == "patch")
            .map(|c| {
                let cidr = c.body["spec"]["podCIDR"].as_str().unwrap_or_default();
                assert_eq!(c.body["spec"]["podCIDRs"], json!([cidr]));
                (c.path.clone(), cidr.to_string())
            })
            .collect()
    }

    #[test]
    fn flags_are_validated() {
        let cases: &[(&str, u8, Result<usize, ()>)] = &[
            ("10.244.0.0/16", 24, Ok(256)),
            ("10.244.0.0/16", 16, Ok(1)),
            ("10.244.7.9/16", 24, Ok(256)),
            ("10.0.0.0/8", 24, Ok(65536)),
            ("10.0.0.0/8", 25, Err(())),
            ("10.244.0.0/16", 15, Err(())),
            ("10.244.0.0/16", 33, Err(())),
            ("10.244.0.0", 24, Err(())),
            ("10.244.0.0/40", 24, Err(())),
            ("fd00::/48", 64, Err(())),
            ("10.244.0.0/16,fd00::/48", 24, Err(())),
            ("banana", 24, Err(())),
        ];
        for (cidr, mask, expected) in cases {
            let got = CidrSet::new(cidr, *mask)
                .map(|s| s.used.len())
                .map_err(|_| ());
            assert_eq!(got, *expected, "{cidr} /{mask}");
        }
        let set = CidrSet::new("10.244.7.9/16", 24).unwrap();
        assert_eq!(set.subnet(0), "10.244.0.0/24");
        assert_eq!(set.subnet(255), "10.244.255.0/24");
        assert_eq!(set.covered("10.244.3.0/24"), Some(3..4));
        assert_eq!(set.covered("10.244.4.0/23"), Some(4..6));
        assert_eq!(set.covered("10.244.4.128/25"), Some(4..5));
        assert_eq!(set.covered("10.0.0.0/8"), Some(0..256));
        assert_eq!(set.covered("10.245.0.0/24"), None);
    }

    #[tokio::test]
    async fn nodes_get_distinct_subnets_and_repeats_do_not_reallocate() {
        let nodes = [node("n1", None), node("n2", None), node("n3", None)];
        let (fake, _ctx, c, _rx) = setup("10.244.0.0/16", 24, &nodes);
        for n in ["n1", "n2", "n3", "n1"] {
            assert_eq!(c.reconcile(n).await.unwrap(), Action::Done);
        }
        let cidr = |n: &str, c: &str| (format!("/api/v1/nodes/{n}"), c.to_string());
        assert_eq!(
            patched(&fake),
            vec![
                cidr("n1", "10.244.0.0/24"),
                cidr("n2", "10.244.1.0/24"),
                cidr("n3", "10.244.2.0/24"),
                // The cache has not shown the first patch yet: the same subnet again.
                cidr("n1", "10.244.0.0/24"),
            ]
        );
    }

    #[tokio::test]
    async fn subnets_in_use_survive_a_restart() {
        let nodes = [
            node("old1", Some("10.244.0.0/24")),
            node("old2", Some("10.244.2.0/24")),
            node("wide", Some("10.244.4.0/23")),
            node("elsewhere", Some("192.168.0.0/24")),
            node("new1", None),
            node("new2", None),
            node("new3", None),
        ];
        let (fake, _ctx, c, _rx) = setup("10.244.0.0/16", 24, &nodes);
        for n in ["old1", "new1", "new2", "new3"] {
            c.reconcile(n).await.unwrap();
        }
        let got: Vec<String> = patched(&fake).into_iter().map(|(_, c)| c).collect();
        assert_eq!(got, vec!["10.244.1.0/24", "10.244.3.0/24", "10.244.6.0/24"]);
    }

    #[tokio::test]
    async fn exhaustion_warns_and_a_deleted_node_frees_its_subnet() {
        let nodes = [node("n1", None), node("n2", None), node("n3", None)];
        let (fake, ctx, c, mut rx) = setup("10.0.0.0/24", 25, &nodes);
        c.reconcile("n1").await.unwrap();
        c.reconcile("n2").await.unwrap();
        assert_eq!(
            c.reconcile("n3").await.unwrap(),
            Action::RequeueAfter(EXHAUSTED_RETRY)
        );
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].kind, events[0].reason.as_str()),
            (EventType::Warning, "CIDRNotAvailable")
        );
        assert_eq!(events[0].regarding.name.as_deref(), Some("n3"));

        // n1 took its subnet, then went away: n3 is woken and gets it.
        ctx.informers.nodes.apply(node("n1", Some("10.0.0.0/25")));
        ctx.informers.nodes.apply(node("n2", Some("10.0.0.128/25")));
        c.reconcile("n1").await.unwrap();
        ctx.informers.nodes.delete(&node("n1", None));
        c.reconcile("n1").await.unwrap();
        assert_eq!(c.queue.try_next().as_deref(), Some("n3"));
        fake.clear();
        assert_eq!(c.reconcile("n3").await.unwrap(), Action::Done);
        assert_eq!(
            patched(&fake),
            vec![("/api/v1/nodes/n3".to_string(), "10.0.0.0/25".to_string())]
        );
    }

    #[tokio::test]
    async fn a_failed_patch_frees_the_fresh_subnet() {
        let nodes = [node("n1", None), node("n2", None)];
        let (fake, _ctx, c, _rx) = setup("10.0.0.0/24", 25, &nodes);
        fake.fail_next("/api/v1/nodes/n1", 422, "Invalid");
        assert!(c.reconcile("n1").await.is_err());
        c.reconcile("n2").await.unwrap();
        c.reconcile("n1").await.unwrap();
        let got: Vec<String> = patched(&fake).into_iter().map(|(_, c)| c).collect();
        // n1's first subnet went back to the pool; the search goes on from where it was.
        assert_eq!(got, vec!["10.0.0.0/25", "10.0.0.128/25", "10.0.0.0/25"]);
    }
}
