//! API defaulting, as kube-apiserver applies it before validation and storage.
//!
//! [`apply`] fills what kube's defaulters fill (`pkg/apis/{core,apps,batch,discovery}/v1`
//! `SetDefaults_*` and the generated per-field defaults), plus the few values kube-apiserver's
//! create strategies and built-in admission write into every object: a Pod's initial status
//! (`phase: Pending`, `qosClass`) and `priority`, a Job's generated selector and labels, a
//! Namespace's `kubernetes` finalizer and name label.
//!
//! Objects are JSON. A field counts as unset when it is absent or null, and, where kube's Go field
//! is a plain string or number rather than a pointer, also when it is `""` or `0`. Set values are
//! kept, apart from the two places kube itself rewrites (a `None` session affinity drops its
//! config; a Namespace's `kubernetes.io/metadata.name` label always equals its name). A field of
//! the wrong type is left alone for validation to report; nothing here panics.
//!
//! Pod templates get the PodSpec defaults only: like kube, `enableServiceLinks`, requests copied
//! from limits and host ports under `hostNetwork` are filled on Pods, not templates. A Job
//! template's missing `restartPolicy` becomes `Always`, as in kube, which validation then
//! rejects with kube's message (`Unsupported value: "Always"`).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

type Obj = Map<String, Value>;

/// Fills the defaults kube-apiserver fills for `kind` (the object is about to be created or updated).
pub fn apply(kind: &str, object: &mut serde_json::Value) {
    let Some(object) = object.as_object_mut() else {
        return;
    };
    match kind {
        "Pod" => pod(object),
        "Service" => service(object),
        "Deployment" => deployment(object),
        "ReplicaSet" => replica_set(object),
        "DaemonSet" => daemon_set(object),
        "StatefulSet" => stateful_set(object),
        "Job" => job(object),
        "CronJob" => cron_job(object),
        "Namespace" => namespace(object),
        "Secret" => default_str(object, "type", "Opaque"),
        "Node" => node(object),
        "Endpoints" => endpoints(object),
        "EndpointSlice" => endpoint_slice(object),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------------------------

/// The object under `key`, created empty when absent or null; None when it has another type.
fn field<'a>(parent: &'a mut Obj, key: &str) -> Option<&'a mut Obj> {
    let slot = parent.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Obj::new());
    }
    slot.as_object_mut()
}

/// The object under `key` when there is one.
fn existing<'a>(parent: &'a mut Obj, key: &str) -> Option<&'a mut Obj> {
    parent.get_mut(key).and_then(Value::as_object_mut)
}

/// The objects in the array under `key`; other entries are skipped.
fn each<'a>(parent: &'a mut Obj, key: &str) -> impl Iterator<Item = &'a mut Obj> {
    parent
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

fn unset(map: &Obj, key: &str) -> bool {
    matches!(map.get(key), None | Some(Value::Null))
}

fn str_of<'a>(map: &'a Obj, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

/// Sets a pointer field: when absent or null.
fn default(map: &mut Obj, key: &str, value: Value) {
    if unset(map, key) {
        map.insert(key.to_string(), value);
    }
}

/// Sets a plain Go string: when absent, null or "".
fn default_str(map: &mut Obj, key: &str, value: &str) {
    if unset(map, key) || str_of(map, key) == Some("") {
        map.insert(key.to_string(), json!(value));
    }
}

/// Sets a plain Go number: when absent, null or 0.
fn default_nonzero(map: &mut Obj, key: &str, value: i64) {
    if unset(map, key) || map.get(key).and_then(Value::as_f64) == Some(0.0) {
        map.insert(key.to_string(), json!(value));
    }
}

/// A non-empty JSON object or array.
fn non_empty(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Pods and pod templates
// ---------------------------------------------------------------------------------------------

fn pod(pod: &mut Obj) {
    let qos = {
        let Some(spec) = field(pod, "spec") else {
            return;
        };
        for key in ["containers", "initContainers"] {
            for c in each(spec, key) {
                requests_from_limits(c);
            }
        }
        default(spec, "enableServiceLinks", json!(true));
        if spec.get("hostNetwork") == Some(&Value::Bool(true)) {
            for key in ["containers", "initContainers"] {
                for c in each(spec, key) {
                    for port in each(c, "ports") {
                        let container_port = port.get("containerPort").cloned();
                        let host_port_unset = match port.get("hostPort") {
                            None | Some(Value::Null) => true,
                            Some(v) => v.as_f64() == Some(0.0),
                        };
                        if let Some(p) = container_port.filter(|p| p.is_number() && host_port_unset)
                        {
                            port.insert("hostPort".into(), p);
                        }
                    }
                }
            }
        }
        pod_spec(spec);
        priority(spec);
        qos_class(spec)
    };
    // The create strategy's initial status.
    if let Some(status) = field(pod, "status") {
        default_str(status, "phase", "Pending");
        default_str(status, "qosClass", qos);
    }
}

/// Without a priority class (or with a built-in one) the Priority admission plugin resolves
/// `priority` and `preemptionPolicy`; other classes are left for the store's lookup.
fn priority(spec: &mut Obj) {
    if !unset(spec, "priority") {
        return;
    }
    let value = match spec.get("priorityClassName") {
        None | Some(Value::Null) => 0,
        Some(Value::String(s)) if s.is_empty() => 0,
        Some(Value::String(s)) if s == "system-cluster-critical" => 2_000_000_000,
        Some(Value::String(s)) if s == "system-node-critical" => 2_000_001_000,
        _ => return,
    };
    spec.insert("priority".into(), json!(value));
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
}

/// On Pods, requests missing from a container default to its limits.
fn requests_from_limits(container: &mut Obj) {
    let Some(resources) = existing(container, "resources") else {
        return;
    };
    let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    if limits.is_empty() {
        return;
    }
    if let Some(requests) = field(resources, "requests") {
        for (name, quantity) in limits {
            requests.entry(name).or_insert(quantity);
        }
    }
}

/// The defaults of every PodSpec, in Pods and in templates alike.
fn pod_spec(spec: &mut Obj) {
    default_str(spec, "dnsPolicy", "ClusterFirst");
    default_str(spec, "restartPolicy", "Always");
    default(spec, "securityContext", json!({}));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default_str(spec, "schedulerName", "default-scheduler");
    // v1 conversion keeps the deprecated serviceAccount and serviceAccountName in step.
    for (from, to) in [
        ("serviceAccount", "serviceAccountName"),
        ("serviceAccountName", "serviceAccount"),
    ] {
        if let Some(name) = str_of(spec, from).filter(|s| !s.is_empty()) {
            let name = name.to_string();
            default_str(spec, to, &name);
        }
    }
    for v in each(spec, "volumes") {
        volume(v);
    }
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        for c in each(spec, key) {
            container(c);
        }
    }
}

fn container(c: &mut Obj) {
    if unset(c, "imagePullPolicy") || str_of(c, "imagePullPolicy") == Some("") {
        let policy = pull_policy(str_of(c, "image").unwrap_or(""));
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    default_str(c, "terminationMessagePath", "/dev/termination-log");
    default_str(c, "terminationMessagePolicy", "File");
    for port in each(c, "ports") {
        default_str(port, "protocol", "TCP");
    }
    default(c, "resources", json!({}));
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = existing(c, key) {
            handler(probe);
            default_nonzero(probe, "timeoutSeconds", 1);
            default_nonzero(probe, "periodSeconds", 10);
            default_nonzero(probe, "successThreshold", 1);
            default_nonzero(probe, "failureThreshold", 3);
        }
    }
    if let Some(lifecycle) = existing(c, "lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = existing(lifecycle, hook) {
                handler(h);
            }
        }
    }
    for env in each(c, "env") {
        if let Some(field_ref) = existing(env, "valueFrom").and_then(|v| existing(v, "fieldRef")) {
            default_str(field_ref, "apiVersion", "v1");
        }
    }
}

/// A probe's or lifecycle hook's action.
fn handler(h: &mut Obj) {
    if let Some(http) = existing(h, "httpGet") {
        default_str(http, "path", "/");
        default_str(http, "scheme", "HTTP");
    }
    if let Some(grpc) = existing(h, "grpc") {
        default(grpc, "service", json!(""));
    }
}

/// `Always` when the image's tag is `latest` (an image with neither tag nor digest has tag
/// `latest`), else `IfNotPresent`, also for a reference that does not parse.
fn pull_policy(image: &str) -> &'static str {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let (repository, tag) = match last.split_once(':') {
        Some((_, tag)) => (&name[..name.len() - tag.len() - 1], Some(tag)),
        None => (name, None),
    };
    let parses = !repository.is_empty()
        && !repository
            .chars()
            .any(|c| c.is_whitespace() || c.is_ascii_uppercase())
        && tag.is_none_or(|t| !t.is_empty())
        && digest.is_none_or(|d| !d.is_empty());
    match tag {
        _ if !parses => "IfNotPresent",
        Some("latest") => "Always",
        None if digest.is_none() => "Always",
        _ => "IfNotPresent",
    }
}

fn volume(v: &mut Obj) {
    if v.iter().all(|(k, value)| k == "name" || value.is_null()) {
        v.insert("emptyDir".into(), json!({}));
    }
    if let Some(host_path) = existing(v, "hostPath") {
        default(host_path, "type", json!(""));
    }
    for key in ["secret", "configMap"] {
        if let Some(source) = existing(v, key) {
            default(source, "defaultMode", json!(420));
        }
    }
    if let Some(downward) = existing(v, "downwardAPI") {
        default(downward, "defaultMode", json!(420));
        downward_items(downward);
    }
    if let Some(projected) = existing(v, "projected") {
        default(projected, "defaultMode", json!(420));
        for source in each(projected, "sources") {
            if let Some(token) = existing(source, "serviceAccountToken") {
                default(token, "expirationSeconds", json!(3600));
            }
            if let Some(downward) = existing(source, "downwardAPI") {
                downward_items(downward);
            }
        }
    }
    if let Some(iscsi) = existing(v, "iscsi") {
        default_str(iscsi, "iscsiInterface", "default");
    }
    if let Some(claim) = existing(v, "ephemeral").and_then(|e| existing(e, "volumeClaimTemplate")) {
        if let Some(spec) = field(claim, "spec") {
            default(spec, "volumeMode", json!("Filesystem"));
        }
    }
}

fn downward_items(downward: &mut Obj) {
    for item in each(downward, "items") {
        if let Some(field_ref) = existing(item, "fieldRef") {
            default_str(field_ref, "apiVersion", "v1");
        }
    }
}

/// The PodSpec defaults of `spec.template.spec`.
fn template(spec: &mut Obj) {
    if let Some(pod) = field(spec, "template").and_then(|t| field(t, "spec")) {
        pod_spec(pod);
    }
}

// ---------------------------------------------------------------------------------------------
// QoS class
// ---------------------------------------------------------------------------------------------

/// kube's `ComputePodQOS`: pod-level resources when the spec has them, else the sums over
/// containers and init containers; only positive cpu and memory quantities count.
fn qos_class(spec: &Obj) -> &'static str {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    let mut guaranteed = true;
    match spec.get("resources").filter(|v| !v.is_null()) {
        Some(resources) => {
            let (both_limits, any_limits) = account(resources, &mut requests, &mut limits);
            if any_limits && !both_limits {
                guaranteed = false;
            }
        }
        None => {
            for key in ["containers", "initContainers"] {
                let containers = spec.get(key).and_then(Value::as_array);
                for c in containers.into_iter().flatten() {
                    let resources = c.get("resources").unwrap_or(&Value::Null);
                    if !account(resources, &mut requests, &mut limits).0 {
                        guaranteed = false;
                    }
                }
            }
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed
        && requests.len() == limits.len()
        && requests.iter().all(|(name, r)| limits.get(name) == Some(r))
    {
        return "Guaranteed";
    }
    "Burstable"
}

/// Adds one `resources` block's positive cpu and memory quantities to the sums; returns whether
/// its limits had both, and whether it had any limits at all.
fn account(
    resources: &Value,
    requests: &mut BTreeMap<&'static str, i128>,
    limits: &mut BTreeMap<&'static str, i128>,
) -> (bool, bool) {
    let add = |list: &str, sums: &mut BTreeMap<&'static str, i128>| {
        let map = resources.get(list).and_then(Value::as_object);
        let mut found = 0;
        for name in ["cpu", "memory"] {
            let quantity = map.and_then(|m| m.get(name)).and_then(quantity_nanos);
            if let Some(q) = quantity.filter(|q| *q > 0) {
                let sum = sums.entry(name).or_insert(0);
                *sum = sum.saturating_add(q);
                found += 1;
            }
        }
        (found == 2, map.is_some_and(|m| !m.is_empty()))
    };
    add("requests", requests);
    add("limits", limits)
}

/// A quantity (`250m`, `1.5Gi`, `2e3`, or a bare JSON number) in nano-units, rounded up; None
/// when it does not parse. Very large values saturate.
fn quantity_nanos(value: &Value) -> Option<i128> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(&text)),
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let (exp10, exp2): (i64, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (exponent.parse::<i64>().unwrap_or(0).clamp(-100, 100), 0)
        }
    };
    let mut mantissa: i128 = 0;
    for digit in whole.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .saturating_mul(10)
            .saturating_add(i128::from(digit - b'0'));
    }
    let frac_len = i64::try_from(frac.len()).unwrap_or(i64::MAX).min(1000);
    let scale = (exp10 + 9 - frac_len).clamp(-1000, 100);
    let value = mantissa.saturating_mul(1i128 << exp2);
    let value = if scale >= 0 {
        value.saturating_mul(10i128.saturating_pow(scale.unsigned_abs() as u32))
    } else {
        match 10i128.checked_pow(scale.unsigned_abs() as u32) {
            Some(divisor) => (value + divisor - 1) / divisor,
            None => i128::from(value > 0),
        }
    };
    Some(if negative { -value } else { value })
}

// ---------------------------------------------------------------------------------------------
// Services and endpoints
// ---------------------------------------------------------------------------------------------

fn service(svc: &mut Obj) {
    let Some(spec) = field(svc, "spec") else {
        return;
    };
    default_str(spec, "sessionAffinity", "None");
    match str_of(spec, "sessionAffinity") {
        Some("None") => {
            spec.remove("sessionAffinityConfig");
        }
        Some("ClientIP") => {
            let client_ip = field(spec, "sessionAffinityConfig").and_then(|c| field(c, "clientIP"));
            if let Some(client_ip) = client_ip {
                default(client_ip, "timeoutSeconds", json!(10800));
            }
        }
        _ => {}
    }
    default_str(spec, "type", "ClusterIP");
    for port in each(spec, "ports") {
        default_str(port, "protocol", "TCP");
        let target_unset = match port.get("targetPort") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(v) => v.as_f64() == Some(0.0),
        };
        if let Some(p) = port.get("port").filter(|p| p.is_number()).cloned() {
            if target_unset {
                port.insert("targetPort".into(), p);
            }
        }
    }
    let ty = str_of(spec, "type").unwrap_or("").to_string();
    let external_ips = non_empty(spec.get("externalIPs"));
    if ty == "LoadBalancer" || ty == "NodePort" || (ty == "ClusterIP" && external_ips) {
        default_str(spec, "externalTrafficPolicy", "Cluster");
    }
    if matches!(ty.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
        default(spec, "ipFamilyPolicy", json!("SingleStack"));
    }
    if ty == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", json!(true));
        let ingress = existing(svc, "status").and_then(|s| existing(s, "loadBalancer"));
        for entry in ingress.into_iter().flat_map(|lb| each(lb, "ingress")) {
            if str_of(entry, "ip").is_some_and(|ip| !ip.is_empty()) {
                default(entry, "ipMode", json!("VIP"));
            }
        }
    }
}

fn endpoints(object: &mut Obj) {
    for subset in each(object, "subsets") {
        for port in each(subset, "ports") {
            default_str(port, "protocol", "TCP");
        }
    }
}

fn endpoint_slice(object: &mut Obj) {
    for port in each(object, "ports") {
        default(port, "name", json!(""));
        default(port, "protocol", json!("TCP"));
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------------

fn deployment(object: &mut Obj) {
    let Some(spec) = field(object, "spec") else {
        return;
    };
    default(spec, "replicas", json!(1));
    if let Some(strategy) = field(spec, "strategy") {
        default_str(strategy, "type", "RollingUpdate");
        if str_of(strategy, "type") == Some("RollingUpdate") {
            if let Some(rolling) = field(strategy, "rollingUpdate") {
                default(rolling, "maxUnavailable", json!("25%"));
                default(rolling, "maxSurge", json!("25%"));
            }
        }
    }
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    template(spec);
}

fn replica_set(object: &mut Obj) {
    if let Some(spec) = field(object, "spec") {
        default(spec, "replicas", json!(1));
        template(spec);
    }
}

fn daemon_set(object: &mut Obj) {
    let Some(spec) = field(object, "spec") else {
        return;
    };
    if let Some(strategy) = field(spec, "updateStrategy") {
        default_str(strategy, "type", "RollingUpdate");
        if str_of(strategy, "type") == Some("RollingUpdate") {
            if let Some(rolling) = field(strategy, "rollingUpdate") {
                default(rolling, "maxUnavailable", json!(1));
                default(rolling, "maxSurge", json!(0));
            }
        }
    }
    default(spec, "revisionHistoryLimit", json!(10));
    template(spec);
}

fn stateful_set(object: &mut Obj) {
    let Some(spec) = field(object, "spec") else {
        return;
    };
    default_str(spec, "podManagementPolicy", "OrderedReady");
    if let Some(strategy) = field(spec, "updateStrategy") {
        // An explicit RollingUpdate without a rollingUpdate block keeps it absent, as in kube.
        if unset(strategy, "type") || str_of(strategy, "type") == Some("") {
            strategy.insert("type".into(), json!("RollingUpdate"));
            default(strategy, "rollingUpdate", json!({}));
        }
        if str_of(strategy, "type") == Some("RollingUpdate") {
            if let Some(rolling) = existing(strategy, "rollingUpdate") {
                default(rolling, "partition", json!(0));
            }
        }
    }
    if let Some(retention) = field(spec, "persistentVolumeClaimRetentionPolicy") {
        default_str(retention, "whenDeleted", "Retain");
        default_str(retention, "whenScaled", "Retain");
    }
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    for claim in each(spec, "volumeClaimTemplates") {
        if let Some(claim_spec) = field(claim, "spec") {
            default(claim_spec, "volumeMode", json!("Filesystem"));
        }
        if let Some(status) = field(claim, "status") {
            default_str(status, "phase", "Pending");
        }
    }
    template(spec);
}

const JOB_NAME: &str = "batch.kubernetes.io/job-name";
const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
const LEGACY_JOB_NAME: &str = "job-name";
const LEGACY_CONTROLLER_UID: &str = "controller-uid";

fn job(object: &mut Obj) {
    let meta = object.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let name = name.filter(|n| !n.is_empty()).map(str::to_string);
    let uid = meta.and_then(|m| m.get("uid")).and_then(Value::as_str);
    let uid = uid.filter(|u| !u.is_empty()).map(str::to_string);

    let (template_labels, manual) = {
        let Some(spec) = field(object, "spec") else {
            return;
        };
        if unset(spec, "completions") && unset(spec, "parallelism") {
            spec.insert("completions".into(), json!(1));
        }
        default(spec, "parallelism", json!(1));
        let backoff = if unset(spec, "backoffLimitPerIndex") {
            6
        } else {
            i32::MAX
        };
        default(spec, "backoffLimit", json!(backoff));
        default(spec, "completionMode", json!("NonIndexed"));
        default(spec, "suspend", json!(false));
        let failure_policy = existing(spec, "podFailurePolicy");
        for rule in failure_policy.into_iter().flat_map(|p| each(p, "rules")) {
            for pattern in each(rule, "onPodConditions") {
                default_str(pattern, "status", "True");
            }
        }
        let replacement = if !unset(spec, "podFailurePolicy") {
            "Failed"
        } else {
            "TerminatingOrFailed"
        };
        default(spec, "podReplacementPolicy", json!(replacement));
        template(spec);
        let labels = spec
            .get("template")
            .and_then(|t| t.get("metadata"))
            .and_then(|m| m.get("labels"))
            .filter(|l| non_empty(Some(l)))
            .cloned();
        (
            labels,
            spec.get("manualSelector") == Some(&Value::Bool(true)),
        )
    };

    // The Job takes its template's labels when it has none of its own.
    if let Some(labels) = template_labels {
        if let Some(meta) = field(object, "metadata") {
            let own = match meta.get("labels") {
                None | Some(Value::Null) => false,
                Some(Value::Object(own)) => !own.is_empty(),
                Some(_) => true,
            };
            if !own {
                meta.insert("labels".into(), labels);
            }
        }
    }
    if manual {
        return;
    }
    // The create strategy's generated selector: the pods carry the Job's name and uid, and the
    // selector matches the uid.
    let Some(spec) = existing(object, "spec") else {
        return;
    };
    let labels = field(spec, "template")
        .and_then(|t| field(t, "metadata"))
        .and_then(|m| field(m, "labels"));
    if let Some(labels) = labels {
        for (key, value) in [
            (LEGACY_JOB_NAME, &name),
            (JOB_NAME, &name),
            (LEGACY_CONTROLLER_UID, &uid),
            (CONTROLLER_UID, &uid),
        ] {
            if let Some(value) = value {
                labels.entry(key).or_insert_with(|| json!(value));
            }
        }
    }
    if let Some(uid) = uid {
        let match_labels = field(spec, "selector").and_then(|s| field(s, "matchLabels"));
        if let Some(match_labels) = match_labels {
            match_labels
                .entry(CONTROLLER_UID)
                .or_insert_with(|| json!(uid));
        }
    }
}

fn cron_job(object: &mut Obj) {
    let Some(spec) = field(object, "spec") else {
        return;
    };
    default_str(spec, "concurrencyPolicy", "Allow");
    default(spec, "suspend", json!(false));
    default(spec, "successfulJobsHistoryLimit", json!(3));
    default(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(job_spec) = field(spec, "jobTemplate").and_then(|t| field(t, "spec")) {
        template(job_spec);
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster objects
// ---------------------------------------------------------------------------------------------

fn namespace(object: &mut Obj) {
    let meta = object.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let name = name.filter(|n| !n.is_empty()).map(str::to_string);
    let deleting =
        meta.is_some_and(|m| !m.get("deletionTimestamp").unwrap_or(&Value::Null).is_null());
    if let Some(name) = name {
        let labels = field(object, "metadata").and_then(|m| field(m, "labels"));
        if let Some(labels) = labels {
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
    }
    // The create strategy's finalizer. Finalizing a terminating namespace removes it, so it is
    // never put back once deletion has started.
    if !deleting {
        if let Some(spec) = field(object, "spec") {
            default(spec, "finalizers", json!(["kubernetes"]));
        }
    }
    if let Some(status) = field(object, "status") {
        default_str(status, "phase", "Active");
    }
}

fn node(object: &mut Obj) {
    let Some(status) = existing(object, "status") else {
        return;
    };
    if unset(status, "allocatable") {
        if let Some(capacity) = status.get("capacity").filter(|c| c.is_object()).cloned() {
            status.insert("allocatable".into(), capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies the defaults for `kind` to `input` and checks each JSON pointer; `Value::Null`
    /// expects the field absent (or null).
    fn check(name: &str, kind: &str, input: Value, expected: &[(&str, Value)]) {
        let mut object = input;
        apply(kind, &mut object);
        for (pointer, want) in expected {
            let got = object.pointer(pointer).cloned().unwrap_or(Value::Null);
            assert_eq!(&got, want, "{name}: {pointer} in {object:#}");
        }
    }

    fn container(image: &str) -> Value {
        json!({"name": "c", "image": image})
    }

    fn pod_with(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    fn template_defaults(prefix: &str) -> Vec<(String, Value)> {
        vec![
            (format!("{prefix}/restartPolicy"), json!("Always")),
            (format!("{prefix}/dnsPolicy"), json!("ClusterFirst")),
            (
                format!("{prefix}/schedulerName"),
                json!("default-scheduler"),
            ),
            (format!("{prefix}/terminationGracePeriodSeconds"), json!(30)),
            (format!("{prefix}/securityContext"), json!({})),
            (format!("{prefix}/enableServiceLinks"), Value::Null),
            (
                format!("{prefix}/containers/0/imagePullPolicy"),
                json!("IfNotPresent"),
            ),
            (format!("{prefix}/containers/0/resources"), json!({})),
        ]
    }

    /// (case name, kind, input, expected pointers).
    type Case = (
        &'static str,
        &'static str,
        Value,
        Vec<(&'static str, Value)>,
    );

    #[test]
    fn minimal_objects_get_their_defaults() {
        let cases: Vec<Case> = vec![
            (
                "pod",
                "Pod",
                pod_with(json!([container("nginx:1.25")])),
                vec![
                    ("/spec/restartPolicy", json!("Always")),
                    ("/spec/dnsPolicy", json!("ClusterFirst")),
                    ("/spec/schedulerName", json!("default-scheduler")),
                    ("/spec/terminationGracePeriodSeconds", json!(30)),
                    ("/spec/securityContext", json!({})),
                    ("/spec/enableServiceLinks", json!(true)),
                    ("/spec/priority", json!(0)),
                    ("/spec/preemptionPolicy", json!("PreemptLowerPriority")),
                    ("/spec/tolerations", Value::Null),
                    ("/spec/containers/0/imagePullPolicy", json!("IfNotPresent")),
                    (
                        "/spec/containers/0/terminationMessagePath",
                        json!("/dev/termination-log"),
                    ),
                    ("/spec/containers/0/terminationMessagePolicy", json!("File")),
                    ("/spec/containers/0/resources", json!({})),
                    ("/status/phase", json!("Pending")),
                    ("/status/qosClass", json!("BestEffort")),
                ],
            ),
            (
                "pod containers in detail",
                "Pod",
                pod_with(json!([{
                    "name": "c", "image": "nginx:1.25",
                    "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
                    "livenessProbe": {"httpGet": {"port": 80}},
                    "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 5},
                    "startupProbe": {"grpc": {"port": 9000}},
                    "lifecycle": {"preStop": {"httpGet": {"port": 80, "path": "/quit"}}},
                    "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                            {"name": "PLAIN", "value": "x"}],
                }])),
                vec![
                    ("/spec/containers/0/ports/0/protocol", json!("TCP")),
                    ("/spec/containers/0/ports/1/protocol", json!("UDP")),
                    ("/spec/containers/0/ports/0/hostPort", Value::Null),
                    ("/spec/containers/0/livenessProbe/timeoutSeconds", json!(1)),
                    ("/spec/containers/0/livenessProbe/periodSeconds", json!(10)),
                    (
                        "/spec/containers/0/livenessProbe/successThreshold",
                        json!(1),
                    ),
                    (
                        "/spec/containers/0/livenessProbe/failureThreshold",
                        json!(3),
                    ),
                    (
                        "/spec/containers/0/livenessProbe/httpGet/scheme",
                        json!("HTTP"),
                    ),
                    ("/spec/containers/0/livenessProbe/httpGet/path", json!("/")),
                    ("/spec/containers/0/readinessProbe/periodSeconds", json!(5)),
                    ("/spec/containers/0/startupProbe/grpc/service", json!("")),
                    (
                        "/spec/containers/0/lifecycle/preStop/httpGet/path",
                        json!("/quit"),
                    ),
                    (
                        "/spec/containers/0/lifecycle/preStop/httpGet/scheme",
                        json!("HTTP"),
                    ),
                    (
                        "/spec/containers/0/env/0/valueFrom/fieldRef/apiVersion",
                        json!("v1"),
                    ),
                    ("/spec/containers/0/env/1/valueFrom", Value::Null),
                ],
            ),
            (
                "pod init and ephemeral containers",
                "Pod",
                json!({"spec": {"containers": [container("a:1")],
                    "initContainers": [container("init")],
                    "ephemeralContainers": [{"name": "debug", "image": "busybox:1.36"}]}}),
                vec![
                    ("/spec/initContainers/0/imagePullPolicy", json!("Always")),
                    (
                        "/spec/initContainers/0/terminationMessagePolicy",
                        json!("File"),
                    ),
                    (
                        "/spec/ephemeralContainers/0/imagePullPolicy",
                        json!("IfNotPresent"),
                    ),
                    (
                        "/spec/ephemeralContainers/0/terminationMessagePath",
                        json!("/dev/termination-log"),
                    ),
                ],
            ),
            (
                "pod volumes",
                "Pod",
                json!({"spec": {"containers": [container("a:1")], "volumes": [
                    {"name": "cm", "configMap": {"name": "x"}},
                    {"name": "s", "secret": {"secretName": "x"}},
                    {"name": "tmp"},
                    {"name": "e", "emptyDir": {"medium": "Memory"}},
                    {"name": "h", "hostPath": {"path": "/var"}},
                    {"name": "d", "downwardAPI": {"items": [{"path": "l", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                    {"name": "pr", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}},
                    {"name": "cm2", "configMap": {"name": "x", "defaultMode": 256}},
                ]}}),
                vec![
                    ("/spec/volumes/0/configMap/defaultMode", json!(420)),
                    ("/spec/volumes/1/secret/defaultMode", json!(420)),
                    ("/spec/volumes/2/emptyDir", json!({})),
                    ("/spec/volumes/3/emptyDir", json!({"medium": "Memory"})),
                    ("/spec/volumes/4/hostPath/type", json!("")),
                    ("/spec/volumes/4/emptyDir", Value::Null),
                    ("/spec/volumes/5/downwardAPI/defaultMode", json!(420)),
                    (
                        "/spec/volumes/5/downwardAPI/items/0/fieldRef/apiVersion",
                        json!("v1"),
                    ),
                    ("/spec/volumes/6/projected/defaultMode", json!(420)),
                    (
                        "/spec/volumes/6/projected/sources/0/serviceAccountToken/expirationSeconds",
                        json!(3600),
                    ),
                    ("/spec/volumes/7/configMap/defaultMode", json!(256)),
                ],
            ),
            (
                "pod requests default to limits",
                "Pod",
                pod_with(json!([{"name": "c", "image": "a:1", "resources": {
                    "limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m"}}}])),
                vec![
                    ("/spec/containers/0/resources/requests/cpu", json!("100m")),
                    (
                        "/spec/containers/0/resources/requests/memory",
                        json!("128Mi"),
                    ),
                    ("/status/qosClass", json!("Burstable")),
                ],
            ),
            (
                "pod host network ports",
                "Pod",
                json!({"spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "a:1",
                    "ports": [{"containerPort": 8080}, {"containerPort": 9090, "hostPort": 9091}]}]}}),
                vec![
                    ("/spec/containers/0/ports/0/hostPort", json!(8080)),
                    ("/spec/containers/0/ports/1/hostPort", json!(9091)),
                ],
            ),
            (
                "pod priority from a built-in class",
                "Pod",
                json!({"spec": {"priorityClassName": "system-node-critical", "containers": []}}),
                vec![("/spec/priority", json!(2_000_001_000))],
            ),
            (
                "pod priority of an unknown class is left to admission",
                "Pod",
                json!({"spec": {"priorityClassName": "high", "containers": []}}),
                vec![
                    ("/spec/priority", Value::Null),
                    ("/spec/preemptionPolicy", Value::Null),
                ],
            ),
            (
                "pod service account fields mirror each other",
                "Pod",
                json!({"spec": {"serviceAccountName": "robot", "containers": []}}),
                vec![("/spec/serviceAccount", json!("robot"))],
            ),
            (
                "pod without spec",
                "Pod",
                json!({"metadata": {"name": "p"}}),
                vec![
                    ("/spec/restartPolicy", json!("Always")),
                    ("/status/qosClass", json!("BestEffort")),
                ],
            ),
            (
                "service",
                "Service",
                json!({"spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
                vec![
                    ("/spec/type", json!("ClusterIP")),
                    ("/spec/sessionAffinity", json!("None")),
                    ("/spec/ports/0/protocol", json!("TCP")),
                    ("/spec/ports/0/targetPort", json!(80)),
                    ("/spec/internalTrafficPolicy", json!("Cluster")),
                    ("/spec/ipFamilyPolicy", json!("SingleStack")),
                    ("/spec/externalTrafficPolicy", Value::Null),
                    ("/spec/allocateLoadBalancerNodePorts", Value::Null),
                ],
            ),
            (
                "service nodeport",
                "Service",
                json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": "http"}]}}),
                vec![
                    ("/spec/externalTrafficPolicy", json!("Cluster")),
                    ("/spec/internalTrafficPolicy", json!("Cluster")),
                    ("/spec/ports/0/targetPort", json!("http")),
                ],
            ),
            (
                "service load balancer",
                "Service",
                json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 443, "targetPort": 0}]},
                       "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.9"}, {"hostname": "lb"}]}}}),
                vec![
                    ("/spec/externalTrafficPolicy", json!("Cluster")),
                    ("/spec/allocateLoadBalancerNodePorts", json!(true)),
                    ("/spec/ports/0/targetPort", json!(443)),
                    ("/status/loadBalancer/ingress/0/ipMode", json!("VIP")),
                    ("/status/loadBalancer/ingress/1/ipMode", Value::Null),
                ],
            ),
            (
                "service external name",
                "Service",
                json!({"spec": {"type": "ExternalName", "externalName": "example.com"}}),
                vec![
                    ("/spec/internalTrafficPolicy", Value::Null),
                    ("/spec/ipFamilyPolicy", Value::Null),
                    ("/spec/externalTrafficPolicy", Value::Null),
                ],
            ),
            (
                "service cluster IP with external IPs",
                "Service",
                json!({"spec": {"externalIPs": ["1.2.3.4"], "ports": [{"port": 80}]}}),
                vec![("/spec/externalTrafficPolicy", json!("Cluster"))],
            ),
            (
                "service client IP affinity",
                "Service",
                json!({"spec": {"sessionAffinity": "ClientIP"}}),
                vec![(
                    "/spec/sessionAffinityConfig/clientIP/timeoutSeconds",
                    json!(10800),
                )],
            ),
            (
                "service no affinity drops its config",
                "Service",
                json!({"spec": {"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}}}),
                vec![("/spec/sessionAffinityConfig", Value::Null)],
            ),
            (
                "deployment",
                "Deployment",
                json!({"spec": {"selector": {"matchLabels": {"app": "web"}},
                    "template": {"spec": {"containers": [container("web:2")]}}}}),
                vec![
                    ("/spec/replicas", json!(1)),
                    ("/spec/strategy/type", json!("RollingUpdate")),
                    ("/spec/strategy/rollingUpdate/maxUnavailable", json!("25%")),
                    ("/spec/strategy/rollingUpdate/maxSurge", json!("25%")),
                    ("/spec/revisionHistoryLimit", json!(10)),
                    ("/spec/progressDeadlineSeconds", json!(600)),
                ],
            ),
            (
                "deployment recreate",
                "Deployment",
                json!({"spec": {"strategy": {"type": "Recreate"}}}),
                vec![("/spec/strategy/rollingUpdate", Value::Null)],
            ),
            (
                "replicaset",
                "ReplicaSet",
                json!({"spec": {"template": {"spec": {"containers": [container("web:2")]}}}}),
                vec![("/spec/replicas", json!(1))],
            ),
            (
                "daemonset",
                "DaemonSet",
                json!({"spec": {"template": {"spec": {"containers": [container("agent:1")]}}}}),
                vec![
                    ("/spec/updateStrategy/type", json!("RollingUpdate")),
                    (
                        "/spec/updateStrategy/rollingUpdate/maxUnavailable",
                        json!(1),
                    ),
                    ("/spec/updateStrategy/rollingUpdate/maxSurge", json!(0)),
                    ("/spec/revisionHistoryLimit", json!(10)),
                ],
            ),
            (
                "statefulset",
                "StatefulSet",
                json!({"spec": {"serviceName": "db",
                    "template": {"spec": {"containers": [container("db:1")]}},
                    "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}]}}),
                vec![
                    ("/spec/replicas", json!(1)),
                    ("/spec/podManagementPolicy", json!("OrderedReady")),
                    ("/spec/updateStrategy/type", json!("RollingUpdate")),
                    ("/spec/updateStrategy/rollingUpdate/partition", json!(0)),
                    ("/spec/revisionHistoryLimit", json!(10)),
                    (
                        "/spec/persistentVolumeClaimRetentionPolicy/whenDeleted",
                        json!("Retain"),
                    ),
                    (
                        "/spec/persistentVolumeClaimRetentionPolicy/whenScaled",
                        json!("Retain"),
                    ),
                    (
                        "/spec/volumeClaimTemplates/0/spec/volumeMode",
                        json!("Filesystem"),
                    ),
                    (
                        "/spec/volumeClaimTemplates/0/status/phase",
                        json!("Pending"),
                    ),
                ],
            ),
            (
                "statefulset on delete",
                "StatefulSet",
                json!({"spec": {"updateStrategy": {"type": "OnDelete"}}}),
                vec![("/spec/updateStrategy/rollingUpdate", Value::Null)],
            ),
            (
                "job",
                "Job",
                json!({"metadata": {"name": "pi", "uid": "u-1"},
                    "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container("perl:5")]}}}}),
                vec![
                    ("/spec/parallelism", json!(1)),
                    ("/spec/completions", json!(1)),
                    ("/spec/backoffLimit", json!(6)),
                    ("/spec/completionMode", json!("NonIndexed")),
                    ("/spec/suspend", json!(false)),
                    ("/spec/podReplacementPolicy", json!("TerminatingOrFailed")),
                    ("/spec/manualSelector", Value::Null),
                    ("/spec/template/spec/restartPolicy", json!("Never")),
                    ("/spec/template/spec/dnsPolicy", json!("ClusterFirst")),
                ],
            ),
            (
                "job with parallelism only keeps completions unset",
                "Job",
                json!({"spec": {"parallelism": 3}}),
                vec![
                    ("/spec/parallelism", json!(3)),
                    ("/spec/completions", Value::Null),
                ],
            ),
            (
                "job with completions only",
                "Job",
                json!({"spec": {"completions": 5}}),
                vec![
                    ("/spec/parallelism", json!(1)),
                    ("/spec/completions", json!(5)),
                ],
            ),
            (
                "job with a pod failure policy",
                "Job",
                json!({"spec": {"backoffLimitPerIndex": 1, "completionMode": "Indexed", "completions": 3,
                    "podFailurePolicy": {"rules": [{"action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget"}]}]}}}),
                vec![
                    ("/spec/podReplacementPolicy", json!("Failed")),
                    ("/spec/backoffLimit", json!(i32::MAX)),
                    (
                        "/spec/podFailurePolicy/rules/0/onPodConditions/0/status",
                        json!("True"),
                    ),
                ],
            ),
            (
                "cronjob",
                "CronJob",
                json!({"spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {
                    "template": {"spec": {"restartPolicy": "OnFailure", "containers": [container("c:1")]}}}}}}),
                vec![
                    ("/spec/concurrencyPolicy", json!("Allow")),
                    ("/spec/suspend", json!(false)),
                    ("/spec/successfulJobsHistoryLimit", json!(3)),
                    ("/spec/failedJobsHistoryLimit", json!(1)),
                    (
                        "/spec/jobTemplate/spec/template/spec/restartPolicy",
                        json!("OnFailure"),
                    ),
                    (
                        "/spec/jobTemplate/spec/template/spec/schedulerName",
                        json!("default-scheduler"),
                    ),
                    (
                        "/spec/jobTemplate/spec/template/spec/containers/0/imagePullPolicy",
                        json!("IfNotPresent"),
                    ),
                    ("/spec/jobTemplate/spec/backoffLimit", Value::Null),
                ],
            ),
            (
                "namespace",
                "Namespace",
                json!({"metadata": {"name": "team-a"}}),
                vec![
                    ("/spec/finalizers", json!(["kubernetes"])),
                    ("/status/phase", json!("Active")),
                    (
                        "/metadata/labels/kubernetes.io~1metadata.name",
                        json!("team-a"),
                    ),
                ],
            ),
            (
                "namespace being deleted keeps its finalizers removed",
                "Namespace",
                json!({"metadata": {"name": "old", "deletionTimestamp": "2024-01-01T00:00:00Z"},
                       "status": {"phase": "Terminating"}}),
                vec![
                    ("/spec/finalizers", Value::Null),
                    ("/status/phase", json!("Terminating")),
                ],
            ),
            (
                "secret",
                "Secret",
                json!({"metadata": {"name": "s"}, "data": {}}),
                vec![("/type", json!("Opaque"))],
            ),
            (
                "secret with empty type",
                "Secret",
                json!({"type": ""}),
                vec![("/type", json!("Opaque"))],
            ),
            (
                "endpoints",
                "Endpoints",
                json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}),
                vec![("/subsets/0/ports/0/protocol", json!("TCP"))],
            ),
            (
                "endpointslice",
                "EndpointSlice",
                json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}], "ports": [{"port": 80}]}),
                vec![
                    ("/ports/0/protocol", json!("TCP")),
                    ("/ports/0/name", json!("")),
                    ("/endpoints/0/conditions", Value::Null),
                ],
            ),
            (
                "node allocatable from capacity",
                "Node",
                json!({"status": {"capacity": {"cpu": "4", "pods": "110"}}}),
                vec![("/status/allocatable", json!({"cpu": "4", "pods": "110"}))],
            ),
            (
                "lease is left alone",
                "Lease",
                json!({"spec": {"holderIdentity": "a"}}),
                vec![("", json!({"spec": {"holderIdentity": "a"}}))],
            ),
            (
                "event is left alone",
                "Event",
                json!({"reason": "Started"}),
                vec![("", json!({"reason": "Started"}))],
            ),
        ];
        let count = cases.len();
        for (name, kind, input, expected) in cases {
            check(name, kind, input, &expected);
        }
        assert!(count >= 30, "{count} cases");
    }

    #[test]
    fn templates_get_pod_spec_defaults_only() {
        let template = json!({"spec": {"containers": [container("app:1")]}});
        for (kind, object, prefix) in [
            (
                "Deployment",
                json!({"spec": {"template": template}}),
                "/spec/template/spec",
            ),
            (
                "ReplicaSet",
                json!({"spec": {"template": template}}),
                "/spec/template/spec",
            ),
            (
                "DaemonSet",
                json!({"spec": {"template": template}}),
                "/spec/template/spec",
            ),
            (
                "StatefulSet",
                json!({"spec": {"template": template}}),
                "/spec/template/spec",
            ),
            (
                "Job",
                json!({"spec": {"template": template}}),
                "/spec/template/spec",
            ),
            (
                "CronJob",
                json!({"spec": {"jobTemplate": {"spec": {"template": template}}}}),
                "/spec/jobTemplate/spec/template/spec",
            ),
        ] {
            let expected = template_defaults(prefix);
            let expected: Vec<(&str, Value)> = expected
                .iter()
                .map(|(p, v)| (p.as_str(), v.clone()))
                .collect();
            check(kind, kind, object, &expected);
        }
    }

    #[test]
    fn set_values_are_kept() {
        let cases: Vec<(&str, Value)> = vec![
            (
                "Pod",
                json!({"spec": {"restartPolicy": "Never", "dnsPolicy": "Default", "schedulerName": "mine",
                    "terminationGracePeriodSeconds": 0, "securityContext": {"runAsUser": 1000},
                    "enableServiceLinks": false, "priority": 7, "preemptionPolicy": "Never",
                    "containers": [{"name": "c", "image": "nginx", "imagePullPolicy": "Never",
                        "terminationMessagePath": "/tmp/log", "terminationMessagePolicy": "FallbackToLogsOnError",
                        "resources": {"requests": {"cpu": "1"}},
                        "livenessProbe": {"exec": {"command": ["true"]}, "timeoutSeconds": 4,
                            "periodSeconds": 20, "successThreshold": 1, "failureThreshold": 9}}],
                    "volumes": [{"name": "s", "secret": {"secretName": "x", "defaultMode": 384}},
                        {"name": "h", "hostPath": {"path": "/", "type": "Directory"}}]},
                    "status": {"phase": "Running", "qosClass": "Guaranteed"}}),
            ),
            (
                "Service",
                json!({"spec": {"type": "NodePort", "sessionAffinity": "ClientIP",
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                    "ports": [{"port": 80, "targetPort": 8080, "protocol": "UDP"}],
                    "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
                    "ipFamilyPolicy": "PreferDualStack"}}),
            ),
            (
                "Deployment",
                json!({"spec": {"replicas": 0, "revisionHistoryLimit": 2, "progressDeadlineSeconds": 60,
                    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                    "template": {"spec": {"containers": []}}}}),
            ),
            (
                "DaemonSet",
                json!({"spec": {"revisionHistoryLimit": 1, "updateStrategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": "10%", "maxSurge": 2}},
                    "template": {"spec": {"containers": []}}}}),
            ),
            (
                "StatefulSet",
                json!({"spec": {"replicas": 3, "revisionHistoryLimit": 1, "podManagementPolicy": "Parallel",
                    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
                    "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"},
                    "template": {"spec": {"containers": []}}}}),
            ),
            (
                "Job",
                json!({"metadata": {"name": "j", "uid": "u", "labels": {"team": "a"}},
                    "spec": {"parallelism": 2, "completions": 4, "backoffLimit": 0, "suspend": true,
                    "completionMode": "Indexed", "podReplacementPolicy": "Failed",
                    "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
                    "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "u",
                        "batch.kubernetes.io/job-name": "j", "controller-uid": "u", "job-name": "j"}},
                        "spec": {"restartPolicy": "Never", "containers": []}}}}),
            ),
            (
                "CronJob",
                json!({"spec": {"concurrencyPolicy": "Forbid", "suspend": true,
                    "successfulJobsHistoryLimit": 0, "failedJobsHistoryLimit": 0,
                    "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": []}}}}}}),
            ),
            (
                "Namespace",
                json!({"metadata": {"name": "n", "labels": {"kubernetes.io/metadata.name": "n"}},
                    "spec": {"finalizers": ["example.com/keep"]}, "status": {"phase": "Terminating"}}),
            ),
            ("Secret", json!({"type": "kubernetes.io/tls"})),
            (
                "EndpointSlice",
                json!({"ports": [{"name": "http", "protocol": "UDP", "port": 53}]}),
            ),
            (
                "Endpoints",
                json!({"subsets": [{"ports": [{"port": 53, "protocol": "SCTP"}]}]}),
            ),
        ];
        for (kind, input) in cases {
            let mut object = input.clone();
            apply(kind, &mut object);
            assert_keeps(kind, "", &input, &object);
            // Applying twice changes nothing more.
            let once = object.clone();
            apply(kind, &mut object);
            assert_eq!(object, once, "{kind}: defaults are idempotent");
        }
    }

    /// Every value in `input` is unchanged in `output`.
    fn assert_keeps(kind: &str, path: &str, input: &Value, output: &Value) {
        match input {
            Value::Object(map) => {
                for (key, value) in map {
                    let child = output.get(key).unwrap_or(&Value::Null);
                    assert_keeps(kind, &format!("{path}/{key}"), value, child);
                }
            }
            Value::Array(items) => {
                for (i, value) in items.iter().enumerate() {
                    let child = output.get(i).unwrap_or(&Value::Null);
                    assert_keeps(kind, &format!("{path}/{i}"), value, child);
                }
            }
            _ => assert_eq!(input, output, "{kind}: {path} was overwritten"),
        }
    }

    #[test]
    fn wrong_types_do_not_panic_and_stay() {
        let odd = [
            json!(null),
            json!(5),
            json!("text"),
            json!([1, 2]),
            json!({"spec": 5}),
            json!({"spec": []}),
            json!({"metadata": "x", "spec": {"template": 1, "jobTemplate": "x"}}),
            json!({"spec": {"template": {"spec": "x", "metadata": {"labels": 3}}}}),
            json!({"spec": {"containers": "x", "initContainers": [1, null, "y"],
                "volumes": [{"name": 1, "secret": "s"}, 3], "hostNetwork": "yes"}}),
            json!({"spec": {"containers": [{"image": 5, "ports": {"a": 1},
                "resources": {"limits": "many", "requests": 1}, "livenessProbe": 7,
                "env": [{"valueFrom": {"fieldRef": "x"}}]}]}}),
            json!({"spec": {"containers": [{"resources": {"limits": {"cpu": "1"}, "requests": "x"}}]}}),
            json!({"spec": {"ports": [{"port": "eighty"}], "type": 3, "sessionAffinity": 1,
                "sessionAffinityConfig": "x", "externalIPs": "1.2.3.4"},
                "status": {"loadBalancer": {"ingress": "x"}}}),
            json!({"spec": {"strategy": "x", "updateStrategy": 1, "selector": "x",
                "persistentVolumeClaimRetentionPolicy": [], "volumeClaimTemplates": {}}}),
            json!({"metadata": {"name": 3, "uid": [], "labels": "x"}, "spec": {"podFailurePolicy": "x",
                "selector": {"matchLabels": []}, "template": {"metadata": {"labels": {"a": "b"}}}}}),
            json!({"status": "x", "subsets": "x", "ports": [1, {"port": 1}]}),
            json!({"metadata": {"name": "n", "labels": [1]}, "spec": {"finalizers": "x"}, "status": 1}),
        ];
        let kinds = [
            "Pod",
            "Service",
            "Deployment",
            "ReplicaSet",
            "DaemonSet",
            "StatefulSet",
            "Job",
            "CronJob",
            "Namespace",
            "Secret",
            "Node",
            "Endpoints",
            "EndpointSlice",
            "Lease",
            "Event",
        ];
        for kind in kinds {
            for input in &odd {
                let mut object = input.clone();
                apply(kind, &mut object);
                assert_keeps(kind, "", input, &object);
            }
        }
    }

    #[test]
    fn image_pull_policy() {
        for (image, want) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.2", "IfNotPresent"),
            ("registry:5000/nginx", "Always"),
            ("registry:5000/nginx:1.2", "IfNotPresent"),
            ("registry:5000/team/nginx:latest", "Always"),
            (
                "nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "IfNotPresent",
            ),
            ("nginx:latest@sha256:0123456789abcdef", "Always"),
            ("nginx:1.2@sha256:0123456789abcdef", "IfNotPresent"),
            ("docker.io/library/nginx", "Always"),
            ("", "IfNotPresent"),
            ("Nginx", "IfNotPresent"),
        ] {
            check(
                image,
                "Pod",
                pod_with(json!([container(image)])),
                &[("/spec/containers/0/imagePullPolicy", json!(want))],
            );
        }
    }

    #[test]
    fn qos_class() {
        let guaranteed = json!({"limits": {"cpu": "500m", "memory": "128Mi"}});
        for (name, containers, init, want) in [
            ("no resources", json!([{}]), json!([]), "BestEffort"),
            (
                "zero requests",
                json!([{"resources": {"requests": {"cpu": "0"}}}]),
                json!([]),
                "BestEffort",
            ),
            (
                "other resources only",
                json!([{"resources": {"requests": {"ephemeral-storage": "1Gi"}}}]),
                json!([]),
                "BestEffort",
            ),
            (
                "limits only, both",
                json!([{"resources": guaranteed}]),
                json!([]),
                "Guaranteed",
            ),
            (
                "equal requests and limits in other units",
                json!([{"resources": {"limits": {"cpu": "0.5", "memory": "134217728"},
                    "requests": {"cpu": "500m", "memory": "131072Ki"}}}]),
                json!([]),
                "Guaranteed",
            ),
            (
                "requests below limits",
                json!([{"resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                    "requests": {"cpu": "500m", "memory": "1Gi"}}}]),
                json!([]),
                "Burstable",
            ),
            (
                "cpu limit only",
                json!([{"resources": {"limits": {"cpu": "1"}}}]),
                json!([]),
                "Burstable",
            ),
            (
                "requests only",
                json!([{"resources": {"requests": {"memory": "64Mi"}}}]),
                json!([]),
                "Burstable",
            ),
            (
                "one guaranteed container and one without resources",
                json!([{"resources": guaranteed}, {}]),
                json!([]),
                "Burstable",
            ),
            (
                "init container without limits",
                json!([{"resources": guaranteed}]),
                json!([{"resources": {"requests": {"cpu": "100m"}}}]),
                "Burstable",
            ),
            (
                "init container guaranteed too",
                json!([{"resources": guaranteed}]),
                json!([{"resources": guaranteed}]),
                "Guaranteed",
            ),
        ] {
            let mut pod = json!({"spec": {"containers": containers, "initContainers": init}});
            for c in pod["spec"]["containers"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                c["name"] = json!("c");
                c["image"] = json!("a:1");
            }
            check(name, "Pod", pod, &[("/status/qosClass", json!(want))]);
        }
        // Pod-level resources take precedence over the containers'.
        check(
            "pod-level resources",
            "Pod",
            json!({"spec": {"resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                "requests": {"cpu": "1", "memory": "1Gi"}}, "containers": [{}]}}),
            &[("/status/qosClass", json!("Guaranteed"))],
        );
    }

    #[test]
    fn quantities() {
        for (text, want) in [
            ("1", Some(1_000_000_000)),
            ("500m", Some(500_000_000)),
            ("0.5", Some(500_000_000)),
            ("1Ki", Some(1024 * 1_000_000_000)),
            ("1e3", Some(1000 * 1_000_000_000)),
            ("1n", Some(1)),
            ("0.1n", Some(1)),
            ("-1", Some(-1_000_000_000)),
            ("", None),
            ("abc", None),
            ("1..2", None),
            ("1Zi", None),
        ] {
            assert_eq!(quantity_nanos(&json!(text)), want, "{text}");
        }
        assert_eq!(quantity_nanos(&json!(2)), Some(2_000_000_000));
        assert!(quantity_nanos(&json!("1e100")).is_some());
    }

    #[test]
    fn job_selector_and_labels() {
        let job = |spec: Value| {
            json!({"metadata": {"name": "pi", "uid": "0000-1111"},
                "spec": spec})
        };
        check(
            "generated selector and labels",
            "Job",
            job(json!({"template": {"metadata": {"labels": {"app": "pi"}},
                "spec": {"restartPolicy": "Never", "containers": []}}})),
            &[
                (
                    "/spec/selector",
                    json!({"matchLabels": {CONTROLLER_UID: "0000-1111"}}),
                ),
                (
                    "/spec/template/metadata/labels",
                    json!({"app": "pi", CONTROLLER_UID: "0000-1111", JOB_NAME: "pi",
                        LEGACY_CONTROLLER_UID: "0000-1111", LEGACY_JOB_NAME: "pi"}),
                ),
                // The Job takes the user's template labels, not the generated ones.
                ("/metadata/labels", json!({"app": "pi"})),
            ],
        );
        check(
            "no template labels",
            "Job",
            job(json!({})),
            &[
                ("/spec/template/metadata/labels/job-name", json!("pi")),
                ("/metadata/labels", Value::Null),
            ],
        );
        check(
            "own labels are kept",
            "Job",
            json!({"metadata": {"name": "pi", "uid": "u", "labels": {"team": "a"}},
                "spec": {"template": {"metadata": {"labels": {"app": "pi"}}}}}),
            &[("/metadata/labels", json!({"team": "a"}))],
        );
        check(
            "manual selector",
            "Job",
            job(
                json!({"manualSelector": true, "selector": {"matchLabels": {"app": "pi"}},
                "template": {"metadata": {"labels": {"app": "pi"}}}}),
            ),
            &[
                ("/spec/selector", json!({"matchLabels": {"app": "pi"}})),
                ("/spec/template/metadata/labels", json!({"app": "pi"})),
            ],
        );
        check(
            "user selector keeps its labels and gains the uid",
            "Job",
            job(json!({"selector": {"matchLabels": {"app": "pi"}},
                "template": {"metadata": {"labels": {"app": "pi", "job-name": "custom"}}}})),
            &[
                ("/spec/selector/matchLabels/app", json!("pi")),
                (
                    "/spec/selector/matchLabels/batch.kubernetes.io~1controller-uid",
                    json!("0000-1111"),
                ),
                ("/spec/template/metadata/labels/job-name", json!("custom")),
                (
                    "/spec/template/metadata/labels/batch.kubernetes.io~1job-name",
                    json!("pi"),
                ),
            ],
        );
        check(
            "without a uid nothing is generated from it",
            "Job",
            json!({"metadata": {"name": "pi"}, "spec": {}}),
            &[
                ("/spec/selector", Value::Null),
                ("/spec/template/metadata/labels/controller-uid", Value::Null),
                ("/spec/template/metadata/labels/job-name", json!("pi")),
            ],
        );
    }
}
