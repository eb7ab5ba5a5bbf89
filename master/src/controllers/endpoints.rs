//! The Endpoints controller (kube-controller-manager's `endpoint`): the legacy core/v1
//! `Endpoints` object named as each selector Service, its pods' addresses in subsets grouped by
//! port set, ready ones in `addresses` and the others in `notReadyAddresses`.
//!
//! Terminating pods are left out unless the Service publishes not-ready addresses (then every
//! address counts as ready). At most [`MAX_CAPACITY`] addresses are kept, ready ones first, and
//! the object is annotated `endpoints.kubernetes.io/over-capacity: truncated`. The object is
//! deleted here when its Service is gone (upstream does not leave that to the garbage collector).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::task::JoinSet;

use super::client::{delete_options, delete_uid};
use super::endpointslice::{
    find_port, is_pod_ready, namespace_terminating, now_rfc3339, pod_in_endpoints, pod_ipv4,
    pod_reference, protocol_of, selected_pods, service_ip_set, service_selector,
    should_set_hostname, HEADLESS_LABEL, TRIGGER_TIME_ANNOTATION,
};
use super::runtime::{self, key_of, split_key, Change};
use super::{Action, Context, Error, Reconciler, WorkQueue};

/// The most addresses one Endpoints object holds.
pub const MAX_CAPACITY: usize = 1000;
pub const OVER_CAPACITY_ANNOTATION: &str = "endpoints.kubernetes.io/over-capacity";
/// Endpoints used as a leader-election lock are not the Service's; never deleted here.
const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";
/// How long to wait when the cache has not shown an Endpoints this controller created.
const STALE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// A set of ports, independent of order: (name, port, protocol, appProtocol).
type PortKey = Vec<(String, i32, String, Option<String>)>;

fn port_key(ports: &[EndpointPort]) -> PortKey {
    let mut key: PortKey = ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                protocol_of(p.protocol.as_deref()).to_string(),
                p.app_protocol.clone(),
            )
        })
        .collect();
    key.sort();
    key
}

/// The Service's ports as resolved against one pod; `None` if the pod resolves none of them
/// (a headless Service without ports takes every pod, with no ports).
fn pod_ports(svc: &Service, pod: &Pod) -> Option<Vec<EndpointPort>> {
    let service_ports = svc.spec.as_ref().and_then(|s| s.ports.as_deref());
    let service_ports = service_ports.unwrap_or_default();
    if service_ports.is_empty() {
        return (!service_ip_set(svc)).then(Vec::new);
    }
    let ports: Vec<EndpointPort> = service_ports
        .iter()
        .filter_map(|port| {
            Some(EndpointPort {
                name: Some(port.name.clone().unwrap_or_default()),
                port: find_port(pod, port)?,
                protocol: Some(protocol_of(port.protocol.as_deref()).to_string()),
                app_protocol: port.app_protocol.clone(),
            })
        })
        .collect();
    (!ports.is_empty()).then_some(ports)
}

/// Upstream's subsets after `RepackSubsets`: one subset per port set, addresses sorted by IP
/// and pod UID, port sets in a stable order.
fn desired_subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut groups: BTreeMap<PortKey, EndpointSubset> = BTreeMap::new();
    for pod in pods {
        if !pod_in_endpoints(pod, publish) {
            continue;
        }
        let (Some(ip), Some(ports)) = (pod_ipv4(pod), pod_ports(svc, pod)) else {
            continue;
        };
        let spec = pod.spec.as_ref();
        let address = EndpointAddress {
            ip,
            node_name: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            hostname: should_set_hostname(pod, svc)
                .then(|| spec.and_then(|s| s.hostname.clone()))
                .flatten(),
            target_ref: Some(pod_reference(pod)),
        };
        let subset = groups
            .entry(port_key(&ports))
            .or_insert_with(|| EndpointSubset {
                ports: (!ports.is_empty()).then(|| ports.clone()),
                ..Default::default()
            });
        let list = if publish || is_pod_ready(pod) {
            &mut subset.addresses
        } else {
            &mut subset.not_ready_addresses
        };
        list.get_or_insert_with(Vec::new).push(address);
    }
    let mut subsets: Vec<EndpointSubset> = groups.into_values().collect();
    for subset in &mut subsets {
        for list in [&mut subset.addresses, &mut subset.not_ready_addresses] {
            if let Some(list) = list.as_mut() {
                list.sort_by(|a, b| address_order(a).cmp(&address_order(b)));
            }
        }
    }
    subsets
}

fn address_order(a: &EndpointAddress) -> (&str, &str) {
    let uid = a.target_ref.as_ref().and_then(|t| t.uid.as_deref());
    (a.ip.as_str(), uid.unwrap_or(""))
}

fn count(list: &Option<Vec<EndpointAddress>>) -> usize {
    list.as_ref().map_or(0, Vec::len)
}

/// Upstream's `truncateEndpoints`: keeps at most [`MAX_CAPACITY`] addresses, spread over the
/// subsets in proportion, ready ones first. Answers whether anything was cut.
fn truncate(subsets: &mut [EndpointSubset], capacity: usize) -> bool {
    let ready: usize = subsets.iter().map(|s| count(&s.addresses)).sum();
    let not_ready: usize = subsets.iter().map(|s| count(&s.not_ready_addresses)).sum();
    if ready + not_ready <= capacity {
        return false;
    }
    let truncate_ready = ready > capacity;
    let (max, total) = if truncate_ready {
        (capacity, ready)
    } else {
        (capacity - ready, not_ready)
    };
    let mut room = max;
    for subset in subsets.iter_mut() {
        let list = if truncate_ready {
            subset.not_ready_addresses = None;
            &mut subset.addresses
        } else {
            &mut subset.not_ready_addresses
        };
        let here = count(list);
        // This subset's share, rounded up; the last ones get what is left.
        let share = (here * max).div_ceil(total).min(room);
        if let Some(addresses) = list.as_mut() {
            addresses.truncate(share);
            if addresses.is_empty() {
                *list = None;
            }
        }
        room -= count(list);
    }
    true
}

/// Empty lists and absent ones are the same (the API may answer either).
fn normalized(subsets: Option<&[EndpointSubset]>) -> Vec<EndpointSubset> {
    let some = |v: &Option<Vec<EndpointAddress>>| v.clone().filter(|v| !v.is_empty());
    subsets
        .unwrap_or_default()
        .iter()
        .map(|s| EndpointSubset {
            addresses: some(&s.addresses),
            not_ready_addresses: some(&s.not_ready_addresses),
            ports: s.ports.clone().filter(|p| !p.is_empty()),
        })
        .collect()
}

/// The Endpoints' labels: the Service's, plus the headless label for headless Services.
fn endpoints_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if service_ip_set(svc) {
        labels.remove(HEADLESS_LABEL);
    } else {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels
}

/// The Endpoints object the Service calls for, built over `current` (if any) so that its
/// other metadata is kept; `None` when `current` is already right.
fn desired_endpoints(
    svc: &Service,
    pods: &[Arc<Pod>],
    current: Option<&Endpoints>,
    now: &str,
) -> Option<Endpoints> {
    let mut subsets = desired_subsets(svc, pods);
    let truncated = truncate(&mut subsets, MAX_CAPACITY);
    let labels = endpoints_labels(svc);
    if let Some(current) = current {
        let annotations = current.metadata.annotations.as_ref();
        let marked = annotations.is_some_and(|a| a.contains_key(OVER_CAPACITY_ANNOTATION));
        if normalized(current.subsets.as_deref()) == subsets
            && current.metadata.labels.clone().unwrap_or_default() == labels
            && marked == truncated
        {
            return None;
        }
    }
    let mut endpoints = current.cloned().unwrap_or_else(|| Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            ..Default::default()
        },
        ..Default::default()
    });
    endpoints.subsets = Some(subsets);
    endpoints.metadata.labels = Some(labels);
    let annotations = endpoints
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    annotations.insert(TRIGGER_TIME_ANNOTATION.into(), now.to_string());
    if truncated {
        annotations.insert(OVER_CAPACITY_ANNOTATION.into(), "truncated".into());
    } else {
        annotations.remove(OVER_CAPACITY_ANNOTATION);
    }
    Some(endpoints)
}

/// Keeps each selector Service's Endpoints object in step with its pods.
pub struct EndpointsController {
    ctx: Context,
}

impl EndpointsController {
    pub fn new(ctx: Context) -> Self {
        EndpointsController { ctx }
    }

    /// The Service is gone: its Endpoints go too (unless it is a leader-election lock).
    async fn delete_leftover(&self, ns: &str, name: &str) -> Result<Action, Error> {
        let Some(current) = self.ctx.informers.endpoints.get_in(Some(ns), name) else {
            return Ok(Action::Done);
        };
        let annotations = current.metadata.annotations.as_ref();
        if annotations.is_some_and(|a| a.contains_key(LEADER_ANNOTATION)) {
            return Ok(Action::Done);
        }
        let options = match current.metadata.uid.as_deref() {
            Some(uid) => delete_uid(uid, None),
            None => delete_options(None),
        };
        match self
            .ctx
            .api
            .delete::<Endpoints>(Some(ns), name, &options)
            .await
        {
            Ok(()) => Ok(Action::Done),
            // A 409 on the UID precondition: a new object holds the name; it is looked at anew.
            Err(e) if e.code() == Some(409) => Ok(Action::Done),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoint"
    }

    async fn reconcile(&self, key: &str) -> Result<Action, Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(Action::Done);
        };
        let Some(svc) = self.ctx.informers.services.get(key) else {
            return self.delete_leftover(ns, name).await;
        };
        if service_selector(&svc).is_none() {
            return Ok(Action::Done);
        }
        let pods = selected_pods(&self.ctx.informers.pods, &svc);
        let current = self.ctx.informers.endpoints.get_in(Some(ns), name);
        let Some(endpoints) = desired_endpoints(&svc, &pods, current.as_deref(), &now_rfc3339())
        else {
            return Ok(Action::Done);
        };
        let api = &self.ctx.api;
        if current.is_some() {
            api.replace(&endpoints).await?;
            return Ok(Action::Done);
        }
        if namespace_terminating(&self.ctx, ns) {
            return Ok(Action::Done);
        }
        match api.create(&endpoints).await {
            Ok(_) => Ok(Action::Done),
            // The cache has not shown it yet; look again when it has.
            Err(e) if e.is_already_exists() => Ok(Action::RequeueAfter(STALE_RETRY)),
            Err(e) => Err(e.into()),
        }
    }
}

/// Registers the callbacks and starts the loop once the caches are loaded.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) {
    let queue = WorkQueue::new();
    let informers = &ctx.informers;
    super::endpointslice::queue_services_on_change(informers, &queue);
    {
        // Endpoints seen at start (leftovers of deleted Services are deleted) and deleted ones
        // (recreated): their Service is looked at.
        let queue = queue.clone();
        informers.endpoints.on_change(move |change| match change {
            Change::Applied { old: None, new } => queue.add(key_of(&new.metadata)),
            Change::Deleted(old) => queue.add(key_of(&old.metadata)),
            Change::Applied { .. } => {}
        });
    }
    let informers = informers.clone();
    let controller = Arc::new(EndpointsController::new(ctx.clone()));
    let workers = ctx.config.concurrent_syncs;
    tasks.spawn(async move {
        // A Service missing from an unloaded cache would look deleted.
        informers.services.wait_synced().await;
        informers.pods.wait_synced().await;
        informers.namespaces.wait_synced().await;
        informers.endpoints.wait_synced().await;
        runtime::run(controller, queue, workers).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use crate::controllers::endpointslice::tests::{labels, pod, service, terminating};
    use crate::controllers::Config;
    use serde_json::json;

    fn setup() -> (RecordingClient, Context, EndpointsController) {
        let fake = RecordingClient::new();
        let (ctx, _rx) = Context::new(Arc::new(fake.clone()), Config::default());
        let controller = EndpointsController::new(ctx.clone());
        (fake, ctx, controller)
    }

    fn ips(list: &serde_json::Value) -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|a| a["ip"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    #[tokio::test]
    async fn ready_not_ready_and_terminating_pods() {
        let (fake, ctx, c) = setup();
        ctx.informers.services.apply(service());
        ctx.informers.pods.apply(pod("a", 1, true));
        ctx.informers.pods.apply(pod("b", 2, false));
        ctx.informers.pods.apply(terminating(pod("c", 3, true)));
        assert_eq!(c.reconcile("ns/web").await.unwrap(), Action::Done);
        assert_eq!(
            fake.short_calls(),
            vec!["create /api/v1/namespaces/ns/endpoints"]
        );
        let body = &fake.calls()[0].body;
        assert_eq!(body["metadata"]["name"], "web");
        assert_eq!(body["metadata"]["labels"], json!({"team": "a"}));
        assert!(body["metadata"]["annotations"][TRIGGER_TIME_ANNOTATION].is_string());
        assert!(body["metadata"].get("ownerReferences").is_none());
        let subsets = body["subsets"].as_array().unwrap();
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0]["addresses"]), vec!["10.244.0.2"]);
        assert_eq!(ips(&subsets[0]["notReadyAddresses"]), vec!["10.244.0.3"]);
        assert_eq!(
            subsets[0]["ports"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
        );
        let a = &subsets[0]["addresses"][0];
        assert_eq!(a["nodeName"], "n1");
        assert_eq!(
            a["targetRef"],
            json!({"kind": "Pod", "namespace": "ns", "name": "a", "uid": "uid-a"})
        );

        // In the cache as written: nothing more to do.
        fake.clear();
        let written: Endpoints = serde_json::from_value(body.clone()).unwrap();
        ctx.informers.endpoints.apply(written);
        assert_eq!(c.reconcile("ns/web").await.unwrap(), Action::Done);
        assert!(fake.calls().is_empty(), "{:?}", fake.short_calls());

        // A readiness change is an update of the same object.
        ctx.informers.pods.apply(pod("b", 2, true));
        c.reconcile("ns/web").await.unwrap();
        assert_eq!(
            fake.short_calls(),
            vec!["update /api/v1/namespaces/ns/endpoints/web"]
        );
        let subset = &fake.calls()[0].body["subsets"][0];
        assert_eq!(ips(&subset["addresses"]), vec!["10.244.0.2", "10.244.0.3"]);
        assert!(subset.get("notReadyAddresses").is_none());
    }

    #[tokio::test]
    async fn publish_not_ready_takes_every_pod_as_ready() {
        let (fake, ctx, c) = setup();
        let mut svc = service();
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        ctx.informers.services.apply(svc);
        ctx.informers.pods.apply(pod("b", 2, false));
        ctx.informers.pods.apply(terminating(pod("c", 3, true)));
        c.reconcile("ns/web").await.unwrap();
        let subset = &fake.calls()[0].body["subsets"][0];
        assert_eq!(ips(&subset["addresses"]), vec!["10.244.0.3", "10.244.0.4"]);
    }

    #[tokio::test]
    async fn subsets_group_pods_by_port_set() {
        let (fake, ctx, c) = setup();
        let mut svc = service();
        svc.spec.as_mut().unwrap().ports.as_mut().unwrap().push(
            k8s_openapi::api::core::v1::ServicePort {
                name: Some("metrics".into()),
                port: 9090,
                ..Default::default()
            },
        );
        ctx.informers.services.apply(svc);
        ctx.informers.pods.apply(pod("a", 1, true));
        let mut bare = pod("b", 2, true);
        bare.spec.as_mut().unwrap().containers[0].ports = None;
        ctx.informers.pods.apply(bare);
        c.reconcile("ns/web").await.unwrap();
        let subsets = fake.calls()[0].body["subsets"].clone();
        let mut got: Vec<(usize, Vec<String>)> = subsets
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["ports"].as_array().unwrap().len(), ips(&s["addresses"])))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (1, vec!["10.244.0.3".into()]),
                (2, vec!["10.244.0.2".into()])
            ]
        );
    }

    #[test]
    fn truncation_keeps_ready_first_in_proportion() {
        fn subset(ready: usize, not_ready: usize, port: i32) -> EndpointSubset {
            let addresses = |n: usize, base: usize| {
                (n > 0).then(|| {
                    (0..n)
                        .map(|i| EndpointAddress {
                            ip: format!("10.{}.{}.{}", port, (base + i) / 250, (base + i) % 250),
                            ..Default::default()
                        })
                        .collect()
                })
            };
            EndpointSubset {
                addresses: addresses(ready, 0),
                not_ready_addresses: addresses(not_ready, 100_000),
                ports: Some(vec![EndpointPort {
                    port,
                    ..Default::default()
                }]),
            }
        }
        // (subsets as (ready, notReady), truncated?, expected (ready, notReady) per subset)
        type Case = (&'static [(usize, usize)], bool, &'static [(usize, usize)]);
        let cases: &[Case] = &[
            (&[(600, 400)], false, &[(600, 400)]),
            (&[(600, 401)], true, &[(600, 400)]),
            (&[(1200, 5)], true, &[(1000, 0)]),
            (&[(700, 0), (700, 0)], true, &[(500, 0), (500, 0)]),
            (&[(300, 600), (300, 200)], true, &[(300, 300), (300, 100)]),
            (&[(0, 1001), (0, 2)], true, &[(0, 999), (0, 1)]),
        ];
        for (input, want_cut, expected) in cases {
            let mut subsets: Vec<EndpointSubset> = input
                .iter()
                .enumerate()
                .map(|(i, (r, n))| subset(*r, *n, i as i32 + 1))
                .collect();
            let cut = truncate(&mut subsets, MAX_CAPACITY);
            let got: Vec<(usize, usize)> = subsets
                .iter()
                .map(|s| (count(&s.addresses), count(&s.not_ready_addresses)))
                .collect();
            assert_eq!((cut, got.as_slice()), (*want_cut, *expected), "{input:?}");
        }
    }

    #[tokio::test]
    async fn over_capacity_is_annotated_and_not_rewritten() {
        let (fake, ctx, c) = setup();
        ctx.informers.services.apply(service());
        for i in 0..1005 {
            ctx.informers.pods.apply(pod(&format!("p{i:04}"), i, true));
        }
        c.reconcile("ns/web").await.unwrap();
        let body = fake.calls()[0].body.clone();
        assert_eq!(
            body["metadata"]["annotations"][OVER_CAPACITY_ANNOTATION],
            "truncated"
        );
        assert_eq!(
            body["subsets"][0]["addresses"].as_array().unwrap().len(),
            1000
        );
        fake.clear();
        ctx.informers
            .endpoints
            .apply(serde_json::from_value(body).unwrap());
        c.reconcile("ns/web").await.unwrap();
        assert!(fake.calls().is_empty(), "{:?}", fake.short_calls());
    }

    #[tokio::test]
    async fn service_gone_deletes_its_endpoints_but_not_others() {
        // (Endpoints annotations, Service present, expected calls)
        type Case = (Option<BTreeMap<String, String>>, bool, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (
                None,
                false,
                vec!["delete /api/v1/namespaces/ns/endpoints/web"],
            ),
            (labels(&[(LEADER_ANNOTATION, "{}")]), false, vec![]),
            (None, true, vec![]),
        ];
        for (annotations, with_service, expected) in cases {
            let (fake, ctx, c) = setup();
            let mut svc = service();
            svc.spec.as_mut().unwrap().selector = None;
            if with_service {
                ctx.informers.services.apply(svc);
            }
            ctx.informers.endpoints.apply(Endpoints {
                metadata: ObjectMeta {
                    namespace: Some("ns".into()),
                    name: Some("web".into()),
                    uid: Some("ep-uid".into()),
                    annotations,
                    ..Default::default()
                },
                ..Default::default()
            });
            assert_eq!(c.reconcile("ns/web").await.unwrap(), Action::Done);
            assert_eq!(fake.short_calls(), expected);
        }
    }

    #[tokio::test]
    async fn headless_label_and_no_creates_in_terminating_namespaces() {
        let (fake, ctx, c) = setup();
        let mut svc = service();
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        svc.spec.as_mut().unwrap().ports = None;
        ctx.informers.services.apply(svc);
        ctx.informers.pods.apply(pod("a", 1, true));
        c.reconcile("ns/web").await.unwrap();
        let body = &fake.calls()[0].body;
        assert_eq!(body["metadata"]["labels"][HEADLESS_LABEL], "");
        assert_eq!(ips(&body["subsets"][0]["addresses"]), vec!["10.244.0.2"]);
        assert!(body["subsets"][0].get("ports").is_none());

        fake.clear();
        ctx.informers
            .namespaces
            .apply(k8s_openapi::api::core::v1::Namespace {
                metadata: ObjectMeta {
                    name: Some("ns".into()),
                    ..Default::default()
                },
                status: Some(k8s_openapi::api::core::v1::NamespaceStatus {
                    phase: Some("Terminating".into()),
                    ..Default::default()
                }),
                ..Default::default()
            });
        assert_eq!(c.reconcile("ns/web").await.unwrap(), Action::Done);
        assert!(fake.calls().is_empty());
    }
}
