//! The EndpointSlice controller (kube-controller-manager's `endpointslice`): for every Service
//! with a selector, `discovery.k8s.io/v1` EndpointSlices listing the selected pods' addresses,
//! at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints each, grouped by the set of ports the pod
//! resolves the Service's ports to.
//!
//! Churn is kept low as upstream's reconciler does: endpoints are matched with the existing
//! slices by identity (addresses, hostname, pod), changed slices are updated in place, new
//! endpoints fill slices that are being updated anyway, and a slice is created or deleted only
//! when the endpoints do not fit otherwise. A slice about to be deleted is reused for a slice
//! about to be created. Nothing is written when nothing changed.
//!
//! The helpers shared with the Endpoints controller (pod readiness, port resolution, selecting
//! pods, mapping pod changes to Services) live here too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::task::JoinSet;

use super::client::{delete_options, delete_uid};
use super::runtime::{self, key, key_of, split_key, Change, Informer};
use super::{Action, Context, Error, Key, Reconciler, WorkQueue};

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's `managed-by` value.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Set (empty) on the slices and Endpoints of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// When the change the object reflects happened (RFC 3339).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const ADDRESS_TYPE: &str = "IPv4";
/// How long to wait for a pod's Node to appear in the cache before looking again.
const MISSING_NODE_RETRY: Duration = Duration::from_secs(5);
/// How long to wait for the slice cache to show this controller's own writes.
const STALE_RETRY: Duration = Duration::from_secs(1);
/// After this long an unmet expectation is dropped (a missed event must not block a Service).
const EXPECTATION_TTL: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Shared with the Endpoints controller
// ---------------------------------------------------------------------------------------------

/// The Service's selector, if this controller manages its endpoints: not for ExternalName
/// Services, nor for Services without a selector (their endpoints are the user's).
pub fn service_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    // An empty selector is dropped by the API's encoding upstream, so it counts as none.
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

/// Whether every `selector` pair is among `labels`.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The pods in the Service's namespace that its selector picks.
pub fn selected_pods(pods: &Informer<Pod>, svc: &Service) -> Vec<Arc<Pod>> {
    let (Some(selector), Some(ns)) = (service_selector(svc), svc.metadata.namespace.as_deref())
    else {
        return Vec::new();
    };
    pods.list_in_labelled(ns, |labels| selector_matches(selector, labels))
}

/// Whether the pod's `Ready` condition is `True`.
pub fn is_pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The pod's IPv4 address, from `podIPs` (or `podIP`).
pub fn pod_ipv4(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let ips = status.pod_ips.iter().flatten().map(|ip| ip.ip.as_str());
    ips.chain(status.pod_ip.as_deref())
        .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
}

/// Upstream's `ShouldPodBeInEndpoints`: not finished, has an IP, and not terminating unless
/// `include_terminating`.
pub fn pod_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    if pod_ipv4(pod).is_none() {
        return false;
    }
    include_terminating || !is_terminating(pod)
}

/// Whether the pod's endpoint carries its hostname: it has one and its subdomain is the Service.
pub fn should_set_hostname(pod: &Pod, svc: &Service) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.hostname.as_deref().is_some_and(|h| !h.is_empty())
        && spec.subdomain.is_some()
        && spec.subdomain == svc.metadata.name
        && pod.metadata.namespace == svc.metadata.namespace
}

/// Whether the Service has a cluster IP (is not headless).
pub fn service_ip_set(svc: &Service) -> bool {
    let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
    !matches!(ip, None | Some("") | Some("None"))
}

pub fn protocol_of(protocol: Option<&str>) -> &str {
    protocol.filter(|p| !p.is_empty()).unwrap_or("TCP")
}

/// Upstream's `FindPort`: the pod's port for a Service port. A named `targetPort` is looked up
/// among the containers' (and sidecar init containers') ports of the same protocol.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            let protocol = protocol_of(port.protocol.as_deref());
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && protocol_of(p.protocol.as_deref()) == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// The reference an endpoint makes to its pod.
pub fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Now, as Go's RFC 3339 with nanoseconds.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// What of a pod the endpoints depend on; a pod update that changes none of it is ignored.
#[derive(PartialEq)]
struct PodView<'a> {
    labels: Option<&'a BTreeMap<String, String>>,
    ip: Option<String>,
    ready: bool,
    terminating: bool,
    phase: Option<&'a str>,
    node: Option<&'a str>,
    hostname: Option<&'a str>,
    subdomain: Option<&'a str>,
    ports: Vec<&'a k8s_openapi::api::core::v1::ContainerPort>,
    uid: Option<&'a str>,
}

fn pod_view(pod: &Pod) -> PodView<'_> {
    let spec = pod.spec.as_ref();
    PodView {
        labels: pod.metadata.labels.as_ref(),
        ip: pod_ipv4(pod),
        ready: is_pod_ready(pod),
        terminating: is_terminating(pod),
        phase: pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        node: spec.and_then(|s| s.node_name.as_deref()),
        hostname: spec.and_then(|s| s.hostname.as_deref()),
        subdomain: spec.and_then(|s| s.subdomain.as_deref()),
        ports: spec
            .into_iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .flat_map(|c| c.ports.iter().flatten())
            .collect(),
        uid: pod.metadata.uid.as_deref(),
    }
}

/// The keys of the Services in the pod's namespace whose selector picks the pod before or after
/// the change; none when the change does not touch what endpoints are made of.
pub fn services_for_pod_change(services: &Informer<Service>, change: &Change<'_, Pod>) -> Vec<Key> {
    let (old, new) = match change {
        Change::Applied { old, new } => (*old, Some(*new)),
        Change::Deleted(old) => (Some(*old), None),
    };
    if let (Some(old), Some(new)) = (old, new) {
        if pod_view(old) == pod_view(new) {
            return Vec::new();
        }
    }
    let Some(ns) = change.object().metadata.namespace.as_deref() else {
        return Vec::new();
    };
    let picks = |svc: &Service, pod: Option<&Pod>| match (service_selector(svc), pod) {
        (Some(selector), Some(pod)) => selector_matches(selector, pod.metadata.labels.as_ref()),
        _ => false,
    };
    services
        .list_in(ns)
        .iter()
        .filter(|svc| picks(svc, old) || picks(svc, new))
        .map(|svc| key_of(&svc.metadata))
        .collect()
}

/// Whether the namespace is going away (creates in it are refused).
pub fn namespace_terminating(ctx: &Context, ns: &str) -> bool {
    ctx.informers.namespaces.get(ns).is_some_and(|n| {
        n.metadata.deletion_timestamp.is_some()
            || n.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
    })
}

// ---------------------------------------------------------------------------------------------
// Desired state
// ---------------------------------------------------------------------------------------------

/// A set of ports, independent of order: (name, protocol, port, appProtocol).
type PortKey = Vec<(String, String, i32, Option<String>)>;

/// An endpoint's identity, as upstream hashes it: its addresses, hostname and pod.
type EndpointId = (Vec<String>, String, String, String);

fn port_key(ports: &[EndpointPort]) -> PortKey {
    let mut key: PortKey = ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                protocol_of(p.protocol.as_deref()).to_string(),
                p.port.unwrap_or(0),
                p.app_protocol.clone(),
            )
        })
        .collect();
    key.sort();
    key
}

fn endpoint_id(ep: &Endpoint) -> EndpointId {
    let mut addresses = ep.addresses.clone();
    addresses.sort();
    let target = ep.target_ref.as_ref();
    (
        addresses,
        ep.hostname.clone().unwrap_or_default(),
        target.and_then(|t| t.namespace.clone()).unwrap_or_default(),
        target.and_then(|t| t.name.clone()).unwrap_or_default(),
    )
}

/// The endpoints wanted for one set of ports.
#[derive(Debug, Clone, Default)]
struct PortGroup {
    ports: Vec<EndpointPort>,
    endpoints: BTreeMap<EndpointId, Endpoint>,
}

#[derive(Debug, Default)]
struct Desired {
    groups: BTreeMap<PortKey, PortGroup>,
    /// Some pod was left out because its Node is not (yet) in the cache.
    missing_node: bool,
}

/// The Service ports as resolved against one pod (headless Services may have none).
fn endpoint_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_deref());
    ports
        .unwrap_or_default()
        .iter()
        .filter_map(|port| {
            let number = find_port(pod, port)?;
            Some(EndpointPort {
                name: Some(port.name.clone().unwrap_or_default()),
                protocol: Some(protocol_of(port.protocol.as_deref()).to_string()),
                port: Some(number),
                app_protocol: port.app_protocol.clone(),
            })
        })
        .collect()
}

/// Upstream's `podToEndpoint`.
fn pod_endpoint(svc: &Service, pod: &Pod, ip: String, node: Option<&Node>) -> Endpoint {
    let serving = is_pod_ready(pod);
    let terminating = is_terminating(pod);
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let spec = pod.spec.as_ref();
    Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(publish || (serving && !terminating)),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        node_name: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        zone: node
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(ZONE_LABEL))
            .filter(|z| !z.is_empty())
            .cloned(),
        hostname: should_set_hostname(pod, svc)
            .then(|| spec.and_then(|s| s.hostname.clone()))
            .flatten(),
        target_ref: Some(pod_reference(pod)),
        ..Default::default()
    }
}

/// The endpoints the selected pods call for, grouped by port set.
fn desired_endpoints(
    svc: &Service,
    pods: &[Arc<Pod>],
    node: impl Fn(&str) -> Option<Arc<Node>>,
) -> Desired {
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut desired = Desired::default();
    for pod in pods {
        if !pod_in_endpoints(pod, true) {
            continue;
        }
        let Some(ip) = pod_ipv4(pod) else {
            continue;
        };
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let node = node_name.and_then(&node);
        // As upstream: a pod on an unknown Node is left out (unless the Service publishes
        // not-ready addresses) and the Service is looked at again later.
        if node.is_none() && !publish {
            desired.missing_node = true;
            continue;
        }
        let ports = endpoint_ports(svc, pod);
        let endpoint = pod_endpoint(svc, pod, ip, node.as_deref());
        let group = desired.groups.entry(port_key(&ports)).or_default();
        if group.ports.is_empty() {
            group.ports = ports;
        }
        group.endpoints.insert(endpoint_id(&endpoint), endpoint);
    }
    desired
}

/// The labels of the Service's slices: its own (except the reserved ones), the Service name, the
/// manager and, for headless Services, the headless label.
fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let reserved = [SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL];
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| !reserved.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !service_ip_set(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels.insert(
        SERVICE_NAME_LABEL.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.into(), CONTROLLER_NAME.into());
    labels
}

fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    slice.metadata.owner_references.iter().flatten().any(|o| {
        Some(&o.uid) == svc.metadata.uid.as_ref() && o.kind == "Service" && o.api_version == "v1"
    })
}

fn new_slice(
    svc: &Service,
    labels: &BTreeMap<String, String>,
    ports: Vec<EndpointPort>,
) -> EndpointSlice {
    let name = svc.metadata.name.clone().unwrap_or_default();
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name,
                uid: svc.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: ADDRESS_TYPE.into(),
        endpoints: Vec::new(),
        ports: Some(ports),
    }
}

// ---------------------------------------------------------------------------------------------
// The plan: upstream's reconciler, deterministic
// ---------------------------------------------------------------------------------------------

/// The writes that bring a Service's slices to the desired state.
#[derive(Debug, Default)]
struct Plan {
    create: Vec<EndpointSlice>,
    update: Vec<EndpointSlice>,
    delete: Vec<Arc<EndpointSlice>>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// Compares the existing slices with the desired endpoints and plans the fewest writes.
fn plan(
    svc: &Service,
    existing: &[Arc<EndpointSlice>],
    desired: BTreeMap<PortKey, PortGroup>,
    max: usize,
) -> Plan {
    let labels = slice_labels(svc);
    let mut plan = Plan::default();
    let mut existing_by_ports: BTreeMap<PortKey, Vec<&Arc<EndpointSlice>>> = BTreeMap::new();
    for slice in existing {
        if owned_by(slice, svc) && slice.address_type == ADDRESS_TYPE {
            let key = port_key(slice.ports.as_deref().unwrap_or_default());
            existing_by_ports.entry(key).or_default().push(slice);
        } else {
            plan.delete.push(slice.clone());
        }
    }
    for (key, group) in desired {
        let slices = existing_by_ports.remove(&key).unwrap_or_default();
        plan_port_group(svc, &labels, slices, group, max, &mut plan);
    }
    // Port sets no longer wanted.
    plan.delete
        .extend(existing_by_ports.into_values().flatten().cloned());

    // A Service without endpoints keeps one empty placeholder slice.
    if existing.len() == plan.delete.len() && plan.create.is_empty() {
        let placeholder = new_slice(svc, &labels, Vec::new());
        if plan.delete.len() == 1 && is_placeholder(&plan.delete[0], &placeholder) {
            plan.delete.clear();
        } else {
            plan.create.push(placeholder);
        }
    }

    // Turn a delete and a create into one update of the slice to delete.
    let mut i = 0;
    while i < plan.delete.len() && !plan.create.is_empty() {
        let old = &plan.delete[i];
        if old.address_type == ADDRESS_TYPE && owned_by(old, svc) {
            if let Some(mut slice) = plan.create.pop() {
                slice.metadata.name = old.metadata.name.clone();
                slice.metadata.generate_name = None;
                slice.metadata.resource_version = old.metadata.resource_version.clone();
                plan.update.push(slice);
            }
            plan.delete.remove(i);
        } else {
            i += 1;
        }
    }
    plan
}

/// Whether `slice` is already the placeholder the Service would get.
fn is_placeholder(slice: &EndpointSlice, placeholder: &EndpointSlice) -> bool {
    slice.endpoints.is_empty()
        && slice.ports.as_deref().unwrap_or_default().is_empty()
        && slice.address_type == placeholder.address_type
        && slice.metadata.namespace == placeholder.metadata.namespace
        && slice.metadata.labels.clone().unwrap_or_default()
            == placeholder.metadata.labels.clone().unwrap_or_default()
}

/// Upstream's `reconcileByPortMapping` for the slices of one port set.
fn plan_port_group(
    svc: &Service,
    labels: &BTreeMap<String, String>,
    existing: Vec<&Arc<EndpointSlice>>,
    mut group: PortGroup,
    max: usize,
    plan: &mut Plan,
) {
    let mut unchanged: Vec<EndpointSlice> = Vec::new();
    let mut to_update: Vec<EndpointSlice> = Vec::new();
    // 1. Keep the desired endpoints where they are, refreshed; drop the others.
    for slice in existing {
        let mut kept = Vec::new();
        let mut changed = false;
        for endpoint in &slice.endpoints {
            if let Some(wanted) = group.endpoints.remove(&endpoint_id(endpoint)) {
                changed |= wanted != *endpoint;
                kept.push(wanted);
            }
        }
        let labels_changed = slice.metadata.labels.as_ref() != Some(labels);
        if changed || kept.len() != slice.endpoints.len() {
            if kept.is_empty() {
                plan.delete.push(slice.clone());
            } else {
                let mut slice = (**slice).clone();
                slice.endpoints = kept;
                slice.metadata.labels = Some(labels.clone());
                to_update.push(slice);
            }
        } else if labels_changed {
            let mut slice = (**slice).clone();
            slice.metadata.labels = Some(labels.clone());
            to_update.push(slice);
        } else {
            unchanged.push((**slice).clone());
        }
    }
    // 2. Fill the slices being updated anyway, fullest first.
    if !group.endpoints.is_empty() && !to_update.is_empty() {
        to_update.sort_by(|a, b| {
            b.endpoints
                .len()
                .cmp(&a.endpoints.len())
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        for slice in &mut to_update {
            fill(slice, &mut group.endpoints, max);
        }
    }
    // 3. Fit what is left into one unchanged slice if one has room, else into new slices.
    while !group.endpoints.is_empty() {
        let remaining = group.endpoints.len();
        let reuse = if remaining < max {
            slice_to_fill(&unchanged, remaining, max)
        } else {
            None
        };
        let mut slice = match reuse {
            Some(i) => unchanged.remove(i),
            None => new_slice(svc, labels, group.ports.clone()),
        };
        fill(&mut slice, &mut group.endpoints, max);
        if slice.metadata.name.is_some() {
            to_update.push(slice);
        } else {
            plan.create.push(slice);
        }
    }
    plan.update.extend(to_update);
}

fn fill(slice: &mut EndpointSlice, endpoints: &mut BTreeMap<EndpointId, Endpoint>, max: usize) {
    while slice.endpoints.len() < max {
        let Some((_, endpoint)) = endpoints.pop_first() else {
            break;
        };
        slice.endpoints.push(endpoint);
    }
}

/// The slice that `count` more endpoints bring closest to full, if any has room.
fn slice_to_fill(slices: &[EndpointSlice], count: usize, max: usize) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (i, slice) in slices.iter().enumerate() {
        let Some(room) = max.checked_sub(count + slice.endpoints.len()) else {
            continue;
        };
        if best.is_none_or(|(_, r)| room < r) {
            best = Some((i, room));
            if room == 0 {
                break;
            }
        }
    }
    best.map(|(i, _)| i)
}

// ---------------------------------------------------------------------------------------------
// Expectations: the cache must show our own writes before we plan again
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The slice at this resourceVersion or later.
    AtLeast(u64),
    Gone,
}

/// What this controller wrote and the slice cache has not shown yet, per Service (upstream's
/// `EndpointSliceTracker`): planning on a stale cache would create duplicate slices.
/// Per Service key: slice name → what is expected of it, since when.
type ExpectationMap = HashMap<Key, HashMap<String, (Expect, Instant)>>;

#[derive(Default)]
struct Expectations {
    by_service: Mutex<ExpectationMap>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, ExpectationMap> {
        self.by_service.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expect(&self, service: &str, slice: &EndpointSlice, expect: Expect) {
        let Some(name) = slice.metadata.name.clone() else {
            return;
        };
        self.lock()
            .entry(service.to_string())
            .or_default()
            .insert(name, (expect, Instant::now()));
    }

    fn forget(&self, service: &str) {
        self.lock().remove(service);
    }

    /// Whether the cache still lags a write for `service`; met and expired expectations are
    /// dropped.
    fn stale(&self, service: &str, cached: impl Fn(&str) -> Option<Arc<EndpointSlice>>) -> bool {
        let mut all = self.lock();
        let Some(slices) = all.get_mut(service) else {
            return false;
        };
        slices.retain(|name, (expect, at)| {
            if at.elapsed() > EXPECTATION_TTL {
                return false;
            }
            let slice = cached(name);
            match expect {
                Expect::Gone => slice.is_some(),
                Expect::AtLeast(rv) => {
                    let seen = slice.map(|s| s.metadata.resource_version.clone());
                    match seen {
                        None => true,
                        Some(seen) => seen
                            .as_deref()
                            .and_then(|s| s.parse::<u64>().ok())
                            .is_some_and(|seen| seen < *rv),
                    }
                }
            }
        });
        let stale = !slices.is_empty();
        if !stale {
            all.remove(service);
        }
        stale
    }
}

fn version_of(slice: &EndpointSlice) -> Expect {
    let rv = slice.metadata.resource_version.as_deref();
    Expect::AtLeast(rv.and_then(|v| v.parse().ok()).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// The controller
// ---------------------------------------------------------------------------------------------

/// Keeps each selector Service's EndpointSlices in step with its pods.
pub struct EndpointSliceController {
    ctx: Context,
    expectations: Expectations,
    max_endpoints: usize,
}

impl EndpointSliceController {
    pub fn new(ctx: Context) -> Self {
        EndpointSliceController {
            ctx,
            expectations: Expectations::default(),
            max_endpoints: MAX_ENDPOINTS_PER_SLICE,
        }
    }

    /// The slices this controller manages for the Service `name` in `ns`.
    fn managed_slices(&self, ns: &str, name: &str) -> Vec<Arc<EndpointSlice>> {
        self.ctx
            .informers
            .endpoint_slices
            .list_in(ns)
            .into_iter()
            .filter(|s| {
                let labels = s.metadata.labels.as_ref();
                let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
                label(SERVICE_NAME_LABEL) == Some(name)
                    && label(MANAGED_BY_LABEL) == Some(CONTROLLER_NAME)
            })
            .collect()
    }

    async fn write(&self, service: &str, svc: &Service, plan: Plan) -> Result<(), Error> {
        let api = &self.ctx.api;
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        // No new slices for a Service on its way out (the garbage collector is deleting them),
        // nor in a namespace that refuses creates.
        let may_create =
            svc.metadata.deletion_timestamp.is_none() && !namespace_terminating(&self.ctx, ns);
        let now = now_rfc3339();
        if may_create {
            for mut slice in plan.create {
                annotate(&mut slice, &now);
                let created = api.create(&slice).await?;
                self.expectations
                    .expect(service, &created, version_of(&created));
            }
        }
        for mut slice in plan.update {
            annotate(&mut slice, &now);
            let updated = api.replace(&slice).await?;
            self.expectations
                .expect(service, &updated, version_of(&updated));
        }
        for slice in plan.delete {
            let name = slice.metadata.name.as_deref().unwrap_or_default();
            let options = match slice.metadata.uid.as_deref() {
                Some(uid) => delete_uid(uid, None),
                None => delete_options(None),
            };
            api.delete::<EndpointSlice>(Some(ns), name, &options)
                .await?;
            self.expectations.expect(service, &slice, Expect::Gone);
        }
        Ok(())
    }
}

fn annotate(slice: &mut EndpointSlice, now: &str) {
    slice
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(TRIGGER_TIME_ANNOTATION.into(), now.to_string());
}

#[async_trait::async_trait]
impl Reconciler for EndpointSliceController {
    fn name(&self) -> &'static str {
        "endpointslice"
    }

    async fn reconcile(&self, service: &str) -> Result<Action, Error> {
        let Some(svc) = self.ctx.informers.services.get(service) else {
            // The slices' owner references hand them to the garbage collector.
            self.expectations.forget(service);
            return Ok(Action::Done);
        };
        if service_selector(&svc).is_none() {
            return Ok(Action::Done);
        }
        let (ns, name) = match split_key(service) {
            (Some(ns), name) => (ns, name),
            (None, _) => return Ok(Action::Done),
        };
        let slices = &self.ctx.informers.endpoint_slices;
        if self
            .expectations
            .stale(service, |slice| slices.get_in(Some(ns), slice))
        {
            tracing::debug!(
                service,
                "slice cache behind this controller's writes; waiting"
            );
            return Ok(Action::RequeueAfter(STALE_RETRY));
        }
        let pods = selected_pods(&self.ctx.informers.pods, &svc);
        let nodes = &self.ctx.informers.nodes;
        let desired = desired_endpoints(&svc, &pods, |n| nodes.get(n));
        let existing = self.managed_slices(ns, name);
        let plan = plan(&svc, &existing, desired.groups, self.max_endpoints);
        if !plan.is_empty() {
            tracing::debug!(
                service,
                create = plan.create.len(),
                update = plan.update.len(),
                delete = plan.delete.len(),
                "syncing endpoint slices"
            );
            self.write(service, &svc, plan).await?;
        }
        Ok(if desired.missing_node {
            Action::RequeueAfter(MISSING_NODE_RETRY)
        } else {
            Action::Done
        })
    }
}

/// The Service keys to look at when a slice changes: its Service, if this controller manages it.
fn service_of_slice(slice: &EndpointSlice) -> Option<Key> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(CONTROLLER_NAME) {
        return None;
    }
    let name = labels.get(SERVICE_NAME_LABEL)?;
    Some(key(slice.metadata.namespace.as_deref(), name))
}

/// Queues a Service's key when it changes and when a pod its selector matches (before or
/// after the change) changes: what both the EndpointSlice and the Endpoints loop watch.
pub fn queue_services_on_change(informers: &super::Informers, queue: &WorkQueue) {
    {
        let queue = queue.clone();
        informers
            .services
            .on_change(move |change| queue.add(key_of(&change.object().metadata)));
    }
    let queue = queue.clone();
    let services = informers.services.clone();
    informers.pods.on_change(move |change| {
        for key in services_for_pod_change(&services, change) {
            queue.add(key);
        }
    });
}

/// Registers the callbacks and starts the loop once the caches are loaded.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    let informers = &ctx.informers;
    queue_services_on_change(informers, &queue);
    {
        let queue = queue.clone();
        informers.endpoint_slices.on_change(move |change| {
            if let Some(key) = service_of_slice(change.object()) {
                queue.add(key);
            }
        });
    }
    {
        // A Node's zone feeds its pods' endpoints; zones change rarely, so look at every
        // Service then.
        let queue = queue.clone();
        let services = informers.services.clone();
        informers.nodes.on_change(move |change| {
            let Change::Applied {
                old: Some(old),
                new,
            } = change
            else {
                return;
            };
            let zone = |n: &Node| {
                n.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(ZONE_LABEL))
                    .cloned()
            };
            if zone(old) != zone(new) {
                for svc in services.list() {
                    if service_selector(&svc).is_some() {
                        queue.add(key_of(&svc.metadata));
                    }
                }
            }
        });
    }
    let informers = informers.clone();
    let controller = Arc::new(EndpointSliceController::new(ctx.clone()));
    let workers = ctx.config.concurrent_syncs;
    tasks.spawn(async move {
        informers.services.wait_synced().await;
        informers.pods.wait_synced().await;
        informers.nodes.wait_synced().await;
        informers.namespaces.wait_synced().await;
        informers.endpoint_slices.wait_synced().await;
        runtime::run(controller, queue, workers).await;
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::controllers::client::{Call, RecordingClient};
    use crate::controllers::Config;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodIP, PodSpec, PodStatus, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::{json, Value};

    pub fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// A Service `web` in `ns` selecting `app=web`, port 80 → the pods' port named `http`.
    pub fn service() -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("web".into()),
                uid: Some("svc-uid".into()),
                labels: labels(&[("team", "a")]),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: labels(&[("app", "web")]),
                cluster_ip: Some("10.96.0.10".into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::String("http".into())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A pod `name` with IP 10.244.0.<n> on node `n1`, port `http` = 8080, labelled `app=web`.
    pub fn pod(name: &str, n: u32, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                labels: labels(&[("app", "web")]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(format!("10.244.{}.{}", n / 250, n % 250 + 1)),
                pod_ips: Some(vec![PodIP {
                    ip: format!("10.244.{}.{}", n / 250, n % 250 + 1),
                }]),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    pub fn terminating(mut pod: Pod) -> Pod {
        pod.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        pod
    }

    pub fn node(name: &str, zone: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: labels(&[(ZONE_LABEL, zone)]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn setup() -> (RecordingClient, Context, EndpointSliceController) {
        let fake = RecordingClient::new();
        let (ctx, _rx) = Context::new(Arc::new(fake.clone()), Config::default());
        ctx.informers.nodes.apply(node("n1", "zone-a"));
        let controller = EndpointSliceController::new(ctx.clone());
        (fake, ctx, controller)
    }

    /// Runs one reconcile of `ns/web`, feeds the writes back into the cache as the informer
    /// would (names, UIDs and versions as the fake client gives them) and returns its calls.
    async fn sync(
        fake: &RecordingClient,
        ctx: &Context,
        c: &EndpointSliceController,
    ) -> (Action, Vec<Call>) {
        let start = fake.calls().len();
        let action = c.reconcile("ns/web").await.unwrap();
        let calls: Vec<Call> = fake.calls().split_off(start);
        for (i, call) in calls.iter().enumerate() {
            let n = start + i + 1;
            let mut body = call.body.clone();
            let slices = &ctx.informers.endpoint_slices;
            match call.verb {
                "create" => {
                    body["metadata"]["name"] = Value::from(format!("web-{n:05}"));
                    body["metadata"]["uid"] = Value::from(format!("uid-{n}"));
                    body["metadata"]["resourceVersion"] = Value::from(n.to_string());
                    slices.apply(serde_json::from_value(body).unwrap());
                }
                "update" => {
                    body["metadata"]["resourceVersion"] = Value::from(n.to_string());
                    slices.apply(serde_json::from_value(body).unwrap());
                }
                "delete" => {
                    let name = call.path.rsplit('/').next().unwrap();
                    slices.delete(&slices.get_in(Some("ns"), name).unwrap());
                }
                _ => {}
            }
        }
        (action, calls)
    }

    fn verbs(calls: &[Call]) -> Vec<&'static str> {
        calls.iter().map(|c| c.verb).collect()
    }

    fn shorts(calls: &[Call]) -> Vec<String> {
        calls.iter().map(Call::short).collect()
    }

    fn endpoint<'a>(slice: &'a Value, pod: &str) -> &'a Value {
        slice["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["targetRef"]["name"] == pod)
            .unwrap_or_else(|| panic!("no endpoint for {pod} in {slice}"))
    }

    #[tokio::test]
    async fn three_pods_make_one_slice_with_conditions_ports_and_zone() {
        let (fake, ctx, c) = setup();
        ctx.informers.services.apply(service());
        ctx.informers.pods.apply(pod("a", 1, true));
        ctx.informers.pods.apply(pod("b", 2, true));
        ctx.informers.pods.apply(terminating(pod("c", 3, true)));
        let mut no_ip = pod("d", 4, true);
        no_ip.status.as_mut().unwrap().pod_ip = None;
        no_ip.status.as_mut().unwrap().pod_ips = None;
        ctx.informers.pods.apply(no_ip);
        let mut other = pod("other", 5, true);
        other.metadata.labels = labels(&[("app", "db")]);
        ctx.informers.pods.apply(other);

        let (action, calls) = sync(&fake, &ctx, &c).await;
        assert_eq!(action, Action::Done);
        assert_eq!(
            shorts(&calls),
            vec!["create /apis/discovery.k8s.io/v1/namespaces/ns/endpointslices"]
        );
        let body = &calls[0].body;
        let meta = &body["metadata"];
        assert_eq!(meta["generateName"], "web-");
        assert_eq!(meta["labels"][SERVICE_NAME_LABEL], "web");
        assert_eq!(meta["labels"][MANAGED_BY_LABEL], CONTROLLER_NAME);
        assert_eq!(meta["labels"]["team"], "a");
        assert!(meta["labels"].get(HEADLESS_LABEL).is_none());
        assert!(meta["annotations"][TRIGGER_TIME_ANNOTATION].is_string());
        let owner = &meta["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["uid"], &owner["controller"]),
            (&json!("Service"), &json!("svc-uid"), &json!(true))
        );
        assert_eq!(body["addressType"], "IPv4");
        assert_eq!(
            body["ports"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
        );
        assert_eq!(body["endpoints"].as_array().unwrap().len(), 3);
        let a = endpoint(body, "a");
        assert_eq!(a["addresses"], json!(["10.244.0.2"]));
        assert_eq!(
            a["conditions"],
            json!({"ready": true, "serving": true, "terminating": false})
        );
        assert_eq!(a["nodeName"], "n1");
        assert_eq!(a["zone"], "zone-a");
        assert_eq!(
            a["targetRef"],
            json!({"kind": "Pod", "namespace": "ns", "name": "a", "uid": "uid-a"})
        );
        assert_eq!(
            endpoint(body, "c")["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );

        // Nothing changed: nothing written.
        let (action, calls) = sync(&fake, &ctx, &c).await;
        assert_eq!(action, Action::Done);
        assert!(calls.is_empty(), "{:?}", shorts(&calls));
    }

    #[tokio::test]
    async fn many_pods_fill_slices_of_at_most_100() {
        let (fake, ctx, c) = setup();
        ctx.informers.services.apply(service());
        for i in 0..250 {
            ctx.informers.pods.apply(pod(&format!("p{i:03}"), i, true));
        }
        let (_, calls) = sync(&fake, &ctx, &c).await;
        let mut sizes: Vec<usize> = calls
            .iter()
            .map(|c| c.body["endpoints"].as_array().unwrap().len())
            .collect();
        sizes.sort();
        assert_eq!(verbs(&calls), vec!["create"; 3]);
        assert_eq!(sizes, vec![50, 100, 100]);

        // Ten more pods go into the slice with room, in place.
        for i in 250..260 {
            ctx.informers.pods.apply(pod(&format!("p{i:03}"), i, true));
        }
        let (_, calls) = sync(&fake, &ctx, &c).await;
        assert_eq!(verbs(&calls), vec!["update"]);
        assert_eq!(calls[0].body["endpoints"].as_array().unwrap().len(), 60);
    }

    #[tokio::test]
    async fn readiness_change_updates_the_slice_in_place() {
        let (fake, ctx, c) = setup();
        ctx.informers.services.apply(service());
        ctx.informers.pods.apply(pod("a", 1, true));
        ctx.informers.pods.apply(pod("b", 2, true));
        let (_, calls) = sync(&fake, &ctx, &c).await;
        assert_eq!(verbs(&calls), vec!["create"]);

        ctx.informers.pods.apply(pod("b", 2, false));
        let (_, calls) = sync(&fake, &ctx, &c).await;
        assert_eq!(
            shorts(&calls),
            vec!["update /apis/discovery.k8s.io/v1/namespaces/ns/endpointslices/web-00001"]
        );
        let body = &calls[0].body;
        assert_eq!(
            body["metadata"]["resourceVersion"], "1",
            "conditional on the cached version"
        );
        assert_eq!(endpoint(body, "b")["conditions"]["ready"], false);
        assert_eq!(endpoint(body, "a")["conditions"]["ready"], true);

        // The pods go away: the slice loses the endpoints; the last one leaves a placeholder.
        ctx.informers.pods.delete(&pod("b", 2, false));
        let (_, calls) = sync(&fake, &ctx, &c).await;
        assert_eq!(verbs(&calls), vec!["update"]);
        ctx.informers.pods.delete(&pod("a", 1, true));
        let (_, calls) = sync(&fake, &ctx, &c).await;
        assert_eq!(
            verbs(&calls),
            vec!["update"],
            "the emptied slice becomes the placeholder"
        );
        assert_eq!(calls[0].body["endpoints"], json!([]));
        assert_eq!(calls[0].body["ports"], json!([]));
        let (_, calls) = sync(&fake, &ctx, &c).await;
        assert!(
            calls.is_empty(),
            "the placeholder stays: {:?}",
            shorts(&calls)
        );
    }

    #[tokio::test]
    async fn pods_without_the_named_port_get_their_own_slice() {
        let (fake, ctx, c) = setup();
        let mut svc = service();
        let spec = svc.spec.as_mut().unwrap();
        spec.ports.as_mut().unwrap().push(ServicePort {
            name: Some("metrics".into()),
            port: 9090,
            target_port: Some(IntOrString::Int(9091)),
            ..Default::default()
        });
        ctx.informers.services.apply(svc);
        ctx.informers.pods.apply(pod("a", 1, true));
        let mut bare = pod("b", 2, true);
        bare.spec.as_mut().unwrap().containers[0].ports = None;
        ctx.informers.pods.apply(bare);
        let (_, calls) = sync(&fake, &ctx, &c).await;
        let mut slices: Vec<(Value, Value)> = calls
            .iter()
            .map(|c| {
                let pod = c.body["endpoints"][0]["targetRef"]["name"].clone();
                (c.body["ports"].clone(), pod)
            })
            .collect();
        slices.sort_by_key(|(p, _)| p.as_array().unwrap().len());
        assert_eq!(
            slices,
            vec![
                (
                    json!([{"name": "metrics", "port": 9091, "protocol": "TCP"}]),
                    json!("b")
                ),
                (
                    json!([
                        {"name": "http", "port": 8080, "protocol": "TCP"},
                        {"name": "metrics", "port": 9091, "protocol": "TCP"}
                    ]),
                    json!("a")
                ),
            ]
        );
    }

    #[tokio::test]
    async fn services_without_selector_or_external_name_get_nothing() {
        type Edit = Box<dyn Fn(&mut ServiceSpec)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("no selector", Box::new(|s| s.selector = None)),
            ("empty selector", Box::new(|s| s.selector = labels(&[]))),
            (
                "ExternalName",
                Box::new(|s| s.type_ = Some("ExternalName".into())),
            ),
        ];
        for (case, edit) in cases {
            let (fake, ctx, c) = setup();
            let mut svc = service();
            edit(svc.spec.as_mut().unwrap());
            ctx.informers.services.apply(svc);
            ctx.informers.pods.apply(pod("a", 1, true));
            let (action, calls) = sync(&fake, &ctx, &c).await;
            assert_eq!(action, Action::Done, "{case}");
            assert!(calls.is_empty(), "{case}: {:?}", shorts(&calls));
        }
    }

    #[tokio::test]
    async fn headless_publish_not_ready_and_hostname() {
        let (fake, ctx, c) = setup();
        let mut svc = service();
        let spec = svc.spec.as_mut().unwrap();
        spec.cluster_ip = Some("None".into());
        spec.publish_not_ready_addresses = Some(true);
        ctx.informers.services.apply(svc);
        let mut named = pod("a", 1, false);
        let spec = named.spec.as_mut().unwrap();
        spec.hostname = Some("a-host".into());
        spec.subdomain = Some("web".into());
        ctx.informers.pods.apply(named);
        let (_, calls) = sync(&fake, &ctx, &c).await;
        let body = &calls[0].body;
        assert_eq!(body["metadata"]["labels"][HEADLESS_LABEL], "");
        let a = endpoint(body, "a");
        assert_eq!(a["hostname"], "a-host");
        assert_eq!(
            a["conditions"],
            json!({"ready": true, "serving": false, "terminating": false})
        );
    }

    #[tokio::test]
    async fn foreign_owner_slices_are_replaced_and_stale_cache_waits() {
        let (fake, ctx, c) = setup();
        ctx.informers.services.apply(service());
        ctx.informers.pods.apply(pod("a", 1, true));
        // A slice with endpoints left by an earlier Service of the same name.
        let mut old = new_slice(&service(), &slice_labels(&service()), Vec::new());
        old.metadata.name = Some("web-old".into());
        old.metadata.uid = Some("old-slice".into());
        old.metadata.owner_references.as_mut().unwrap()[0].uid = "earlier-svc".into();
        old.endpoints = vec![pod_endpoint(
            &service(),
            &pod("z", 9, true),
            "10.0.0.9".into(),
            None,
        )];
        ctx.informers.endpoint_slices.apply(old);
        let (action, calls) = sync(&fake, &ctx, &c).await;
        assert_eq!(action, Action::Done);
        assert_eq!(
            shorts(&calls),
            vec![
                "create /apis/discovery.k8s.io/v1/namespaces/ns/endpointslices",
                "delete /apis/discovery.k8s.io/v1/namespaces/ns/endpointslices/web-old",
            ]
        );
        assert_eq!(calls[1].body["preconditions"]["uid"], "old-slice");
        let (_, calls) = sync(&fake, &ctx, &c).await;
        assert!(calls.is_empty(), "{:?}", shorts(&calls));

        // Writes the cache has not shown yet: no second create.
        ctx.informers.pods.apply(pod("b", 2, true));
        ctx.informers
            .endpoint_slices
            .delete(&ctx.informers.endpoint_slices.list()[0]);
        c.reconcile("ns/web").await.unwrap();
        let before = fake.calls().len();
        assert_eq!(
            c.reconcile("ns/web").await.unwrap(),
            Action::RequeueAfter(STALE_RETRY)
        );
        assert_eq!(fake.calls().len(), before);
    }

    #[tokio::test]
    async fn pods_on_unknown_nodes_wait() {
        let (fake, ctx, c) = setup();
        ctx.informers.services.apply(service());
        ctx.informers.pods.apply(pod("a", 1, true));
        let mut lost = pod("b", 2, true);
        lost.spec.as_mut().unwrap().node_name = Some("gone".into());
        ctx.informers.pods.apply(lost);
        let (action, calls) = sync(&fake, &ctx, &c).await;
        assert_eq!(action, Action::RequeueAfter(MISSING_NODE_RETRY));
        assert_eq!(calls[0].body["endpoints"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn pod_changes_map_to_selecting_services() {
        let services = Informer::<Service>::new();
        services.apply(service());
        let mut db = service();
        db.metadata.name = Some("db".into());
        db.spec.as_mut().unwrap().selector = labels(&[("app", "db")]);
        services.apply(db);
        let a = pod("a", 1, true);
        let mut relabelled = a.clone();
        relabelled.metadata.labels = labels(&[("app", "db")]);
        let mut annotated = a.clone();
        annotated.metadata.annotations = labels(&[("note", "x")]);
        let cases: Vec<(&str, Change<'_, Pod>, Vec<&str>)> = vec![
            (
                "added",
                Change::Applied { old: None, new: &a },
                vec!["ns/web"],
            ),
            (
                "relabelled",
                Change::Applied {
                    old: Some(&a),
                    new: &relabelled,
                },
                vec!["ns/db", "ns/web"],
            ),
            (
                "irrelevant",
                Change::Applied {
                    old: Some(&a),
                    new: &annotated,
                },
                vec![],
            ),
            ("deleted", Change::Deleted(&a), vec!["ns/web"]),
        ];
        for (case, change, expected) in cases {
            let mut got = services_for_pod_change(&services, &change);
            got.sort();
            assert_eq!(got, expected, "{case}");
        }
    }

    #[test]
    fn slice_to_fill_picks_the_closest_fit() {
        let slice = |n: usize| EndpointSlice {
            endpoints: vec![Endpoint::default(); n],
            ..Default::default()
        };
        let cases: &[(&[usize], usize, Option<usize>)] = &[
            (&[10, 50, 95], 5, Some(2)),
            (&[10, 50, 96], 5, Some(1)),
            (&[99], 5, None),
            (&[], 5, None),
        ];
        for (sizes, count, expected) in cases {
            let slices: Vec<EndpointSlice> = sizes.iter().map(|n| slice(*n)).collect();
            assert_eq!(slice_to_fill(&slices, *count, 100), *expected, "{sizes:?}");
        }
    }
}
