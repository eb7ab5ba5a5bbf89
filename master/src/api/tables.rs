//! Server-side `meta.k8s.io/v1` Table rendering, so `kubectl get` prints the columns
//! kube-apiserver gives.
//!
//! kubectl asks for a Table through its Accept header
//! (`application/json;as=Table;v=v1;g=meta.k8s.io`); the server then renders every object as a
//! row of cells under column definitions, and kubectl only lays the cells out. The columns and the
//! way each cell is computed follow kube-apiserver's printers
//! (`pkg/printers/internalversion/printers.go`), which the server always runs in "wide" mode:
//! every row carries every column, and kubectl hides the priority-1 columns unless `-o wide`.
//! Kinds without a printer get kube's default table: Name and "Created At".
//!
//! Everything here reads stored JSON defensively: a missing field or one of the wrong type
//! renders as kube renders an unset field (`<none>`, `<unknown>`, 0), never as a panic.

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// What `includeObject` asks rows to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object: `"object": null`.
    None,
    /// A `PartialObjectMetadata` holding the object's metadata (the default).
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter; absent or empty means `Metadata`.
    pub fn parse(query_value: Option<&str>) -> Result<Self, String> {
        match query_value {
            None | Some("") | Some("Metadata") => Ok(IncludeObject::Metadata),
            Some("None") => Ok(IncludeObject::None),
            Some("Object") => Ok(IncludeObject::Object),
            Some(other) => Err(format!("unrecognized includeObject value: {other:?}")),
        }
    }
}

/// Whether an Accept header asks for a Table (`application/json;as=Table;v=v1;g=meta.k8s.io`,
/// also `v1beta1`). The header may list several media types; like kube's negotiation, the
/// preferred one wins: highest `q`, then the one with more parameters (more specific), then the
/// first listed. A missing header, `*/*` or plain JSON is not a Table request.
pub fn wants_table(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut clauses: Vec<(f64, usize, bool)> = Vec::new();
    for clause in accept.split(',') {
        let mut parts = clause.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if media.is_empty() {
            continue;
        }
        let mut q = 1.0_f64;
        let (mut as_, mut g, mut v) = (None, None, None);
        let mut params = 0;
        for param in parts {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim().trim_matches('"');
            match key.as_str() {
                "q" => q = value.parse().unwrap_or(0.0),
                "as" => as_ = Some(value.to_string()),
                "g" => g = Some(value.to_string()),
                "v" => v = Some(value.to_string()),
                _ => {}
            }
            if key != "q" {
                params += 1;
            }
        }
        if q <= 0.0 || q.is_nan() {
            continue;
        }
        let table = media == "application/json"
            && as_.as_deref() == Some("Table")
            && g.as_deref() == Some("meta.k8s.io")
            && matches!(v.as_deref(), Some("v1") | Some("v1beta1"));
        clauses.push((q, params, table));
    }
    // A stable sort keeps the listed order among equals.
    clauses.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    clauses.first().is_some_and(|c| c.2)
}

/// The Table for `objects` (stored JSON of one kind), rendered at time `now`.
/// `list_meta` is the list's metadata (resourceVersion, continue, remainingItemCount) copied into
/// the Table's metadata.
pub fn table(
    kind: &str,
    objects: &[Value],
    include: IncludeObject,
    list_meta: Value,
    now: SystemTime,
) -> Value {
    let mut metadata = Map::new();
    if let Value::Object(meta) = list_meta {
        for key in [
            "selfLink",
            "resourceVersion",
            "continue",
            "remainingItemCount",
        ] {
            if let Some(v) = meta.get(key).filter(|v| !v.is_null()) {
                metadata.insert(key.to_string(), v.clone());
            }
        }
    }
    let columns: Vec<Value> = columns(kind).iter().copied().map(Column::to_json).collect();
    render(kind, objects, include, metadata, columns, now)
}

/// Only the rows (no columnDefinitions), for watch events: kube sends a Table with empty
/// columnDefinitions in watch events after the first. Its metadata carries the resourceVersion of
/// the (last) object, as kube's does for a single object.
pub fn rows_table(kind: &str, objects: &[Value], include: IncludeObject, now: SystemTime) -> Value {
    let mut metadata = Map::new();
    if let Some(rv) = objects
        .last()
        .and_then(|o| get(o, &["metadata", "resourceVersion"]))
    {
        metadata.insert("resourceVersion".to_string(), rv.clone());
    }
    render(kind, objects, include, metadata, Vec::new(), now)
}

fn render(
    kind: &str,
    objects: &[Value],
    include: IncludeObject,
    metadata: Map<String, Value>,
    columns: Vec<Value>,
    now: SystemTime,
) -> Value {
    let now = OffsetDateTime::from(now);
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = Map::new();
            row.insert("cells".to_string(), Value::Array(cells(kind, obj, now)));
            if let Some(conditions) = row_conditions(kind, obj) {
                row.insert("conditions".to_string(), conditions);
            }
            row.insert("object".to_string(), row_object(obj, include));
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn row_object(obj: &Value, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": get(obj, &["metadata"])
                .filter(|m| m.is_object())
                .cloned()
                .unwrap_or_else(|| json!({})),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Columns
// ---------------------------------------------------------------------------------------------

/// One `TableColumnDefinition`.
#[derive(Debug, Clone, Copy)]
struct Column {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    description: &'static str,
    priority: u8,
}

impl Column {
    fn to_json(self) -> Value {
        json!({
            "name": self.name,
            "type": self.ty,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

/// A column every view shows.
const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 0,
    }
}

/// A column only `-o wide` shows.
const fn wide(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 1,
    }
}

const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating \
resources, although some resources may allow a client to request the generation of an \
appropriate name automatically. Name is primarily intended for creation idempotence and \
configuration definition. Cannot be updated. More info: \
https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

const CREATED_DOC: &str = "CreationTimestamp is a timestamp representing the server time when \
this object was created. It is not guaranteed to be set in happens-before order across separate \
operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\n\
Populated by the system. Read-only. Null for lists. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    description: NAME_DOC,
    priority: 0,
};
const AGE: Column = col("Age", "string", CREATED_DOC);
const CONTAINERS: Column = wide(
    "Containers",
    "string",
    "Names of each container in the template.",
);
const IMAGES: Column = wide(
    "Images",
    "string",
    "Images referenced by each container in the template.",
);
const SELECTOR: Column = wide(
    "Selector",
    "string",
    "A label query over pods that should match the replica count.",
);

const POD: &[Column] = &[
    NAME,
    col(
        "Ready",
        "string",
        "The aggregate readiness state of this pod for accepting traffic.",
    ),
    col(
        "Status",
        "string",
        "The aggregate status of the containers in this pod.",
    ),
    col(
        "Restarts",
        "string",
        "The number of times the containers in this pod have been restarted and when the last \
         container in this pod has restarted.",
    ),
    AGE,
    wide(
        "IP",
        "string",
        "podIP address allocated to the pod. Routable at least within the cluster. Empty if \
         not yet allocated.",
    ),
    wide(
        "Node",
        "string",
        "NodeName indicates in which node this pod is scheduled.",
    ),
    wide(
        "Nominated Node",
        "string",
        "nominatedNodeName is set only when this pod preempts other pods on the node, but it \
         cannot be scheduled right away as preemption victims receive their graceful \
         termination periods.",
    ),
    wide(
        "Readiness Gates",
        "string",
        "If specified, all readiness gates will be evaluated for pod readiness.",
    ),
];

const DEPLOYMENT: &[Column] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    col(
        "Up-to-date",
        "string",
        "Total number of non-terminated pods targeted by this deployment that have the desired \
         template spec.",
    ),
    col(
        "Available",
        "string",
        "Total number of available pods (ready for at least minReadySeconds) targeted by this \
         deployment.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const REPLICA_SET: &[Column] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "Replicas is the number of desired replicas.",
    ),
    col(
        "Current",
        "integer",
        "Replicas is the most recently observed number of replicas.",
    ),
    col(
        "Ready",
        "integer",
        "The number of ready replicas for this replica set.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const DAEMON_SET: &[Column] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "The total number of nodes that should be running the daemon pod.",
    ),
    col(
        "Current",
        "integer",
        "The number of nodes that are running at least 1 daemon pod and are supposed to run \
         the daemon pod.",
    ),
    col(
        "Ready",
        "integer",
        "The number of nodes that should be running the daemon pod and have one or more of the \
         daemon pod running and ready.",
    ),
    col(
        "Up-to-date",
        "integer",
        "The total number of nodes that are running updated daemon pod",
    ),
    col(
        "Available",
        "integer",
        "The number of nodes that should be running the daemon pod and have one or more of the \
         daemon pod running and available.",
    ),
    col(
        "Node Selector",
        "string",
        "NodeSelector is a selector which must be true for the pod to fit on a node.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const STATEFUL_SET: &[Column] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    AGE,
    CONTAINERS,
    IMAGES,
];

const JOB: &[Column] = &[
    NAME,
    col("Status", "string", "Status of the job."),
    col(
        "Completions",
        "string",
        "The number of pods which reached phase Succeeded.",
    ),
    col("Duration", "string", "Time required to complete the job."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const CRON_JOB: &[Column] = &[
    NAME,
    col(
        "Schedule",
        "string",
        "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
    ),
    col(
        "Timezone",
        "string",
        "The time zone name for the given schedule.",
    ),
    col(
        "Suspend",
        "boolean",
        "This flag tells the controller to suspend subsequent executions.",
    ),
    col(
        "Active",
        "integer",
        "A list of pointers to currently running jobs.",
    ),
    col(
        "Last Schedule",
        "string",
        "Information when was the last time the job was successfully scheduled.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const SERVICE: &[Column] = &[
    NAME,
    col(
        "Type",
        "string",
        "type determines how the Service is exposed.",
    ),
    col(
        "Cluster-IP",
        "string",
        "clusterIP is the IP address of the service and is usually assigned randomly.",
    ),
    col(
        "External-IP",
        "string",
        "externalIPs is a list of IP addresses for which nodes in the cluster will also accept \
         traffic for this service.",
    ),
    col(
        "Port(s)",
        "string",
        "The list of ports that are exposed by this service.",
    ),
    AGE,
    wide(
        "Selector",
        "string",
        "Route service traffic to pods with label keys and values matching this selector.",
    ),
];

const ENDPOINTS: &[Column] = &[
    NAME,
    col(
        "Endpoints",
        "string",
        "The set of all endpoints is the union of all subsets.",
    ),
    AGE,
];

const ENDPOINT_SLICE: &[Column] = &[
    NAME,
    col(
        "AddressType",
        "string",
        "addressType specifies the type of address carried by this EndpointSlice.",
    ),
    col(
        "Ports",
        "string",
        "ports specifies the list of network ports exposed by each endpoint in this slice.",
    ),
    col(
        "Endpoints",
        "string",
        "endpoints is a list of unique endpoints in this slice.",
    ),
    AGE,
];

const NODE: &[Column] = &[
    NAME,
    col("Status", "string", "The status of the node"),
    col("Roles", "string", "The roles of the node"),
    AGE,
    col("Version", "string", "Kubelet Version reported by the node."),
    wide(
        "Internal-IP",
        "string",
        "List of addresses reachable to the node.",
    ),
    wide(
        "External-IP",
        "string",
        "List of addresses reachable to the node.",
    ),
    wide(
        "OS-Image",
        "string",
        "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
    ),
    wide(
        "Kernel-Version",
        "string",
        "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
    ),
    wide(
        "Container-Runtime",
        "string",
        "ContainerRuntime Version reported by the node through runtime remote API (e.g. \
         containerd://1.4.2).",
    ),
];

const NAMESPACE: &[Column] = &[
    NAME,
    col("Status", "string", "The status of the namespace"),
    AGE,
];

const CONFIG_MAP: &[Column] = &[
    NAME,
    col("Data", "string", "Data contains the configuration data."),
    AGE,
];

const SECRET: &[Column] = &[
    NAME,
    col(
        "Type",
        "string",
        "Used to facilitate programmatic handling of secret data.",
    ),
    col("Data", "string", "Data contains the secret data."),
    AGE,
];

const SERVICE_ACCOUNT: &[Column] = &[
    NAME,
    col(
        "Secrets",
        "string",
        "Secrets is a list of the secrets in the same namespace that pods running using this \
         ServiceAccount are allowed to use.",
    ),
    AGE,
];

const EVENT: &[Column] = &[
    col(
        "Last Seen",
        "string",
        "The time at which the most recent occurrence of this event was recorded.",
    ),
    col(
        "Type",
        "string",
        "Type of this event (Normal, Warning), new types could be added in the future",
    ),
    col(
        "Reason",
        "string",
        "This should be a short, machine understandable string that gives the reason for the \
         transition into the object's current status.",
    ),
    col("Object", "string", "The object that this event is about."),
    wide(
        "Subobject",
        "string",
        "If referring to a piece of an object instead of an entire object, this string should \
         contain a valid JSON/Go field access statement.",
    ),
    wide("Source", "string", "The component reporting this event."),
    col(
        "Message",
        "string",
        "A human-readable description of the status of this operation.",
    ),
    wide(
        "First Seen",
        "string",
        "The time at which the event was first recorded.",
    ),
    wide(
        "Count",
        "string",
        "The number of times this event has occurred.",
    ),
    Column {
        name: "Name",
        ty: "string",
        format: "name",
        description: NAME_DOC,
        priority: 1,
    },
];

const LEASE: &[Column] = &[
    NAME,
    col(
        "Holder",
        "string",
        "holderIdentity contains the identity of the holder of a current lease.",
    ),
    AGE,
];

const CONTROLLER_REVISION: &[Column] = &[
    NAME,
    col("Controller", "string", "Controller of the object"),
    col(
        "Revision",
        "string",
        "Revision indicates the revision of the state represented by Data.",
    ),
    AGE,
];

const DEFAULT: &[Column] = &[NAME, col("Created At", "date", CREATED_DOC)];

fn columns(kind: &str) -> &'static [Column] {
    match kind {
        "Pod" => POD,
        "Deployment" => DEPLOYMENT,
        "ReplicaSet" => REPLICA_SET,
        "DaemonSet" => DAEMON_SET,
        "StatefulSet" => STATEFUL_SET,
        "Job" => JOB,
        "CronJob" => CRON_JOB,
        "Service" => SERVICE,
        "Endpoints" => ENDPOINTS,
        "EndpointSlice" => ENDPOINT_SLICE,
        "Node" => NODE,
        "Namespace" => NAMESPACE,
        "ConfigMap" => CONFIG_MAP,
        "Secret" => SECRET,
        "ServiceAccount" => SERVICE_ACCOUNT,
        "Event" => EVENT,
        "Lease" => LEASE,
        "ControllerRevision" => CONTROLLER_REVISION,
        _ => DEFAULT,
    }
}

// ---------------------------------------------------------------------------------------------
// Cells
// ---------------------------------------------------------------------------------------------

fn cells(kind: &str, obj: &Value, now: OffsetDateTime) -> Vec<Value> {
    let name = json!(str_at(obj, &["metadata", "name"]));
    let age = || json!(since(str_at(obj, &["metadata", "creationTimestamp"]), now));
    match kind {
        "Pod" => pod_cells(obj, now),
        "Deployment" => {
            let desired = int_at(obj, &["spec", "replicas"]).unwrap_or(1);
            let ready = int_at(obj, &["status", "readyReplicas"]).unwrap_or(0);
            let (names, images) = containers(obj, &["spec", "template", "spec", "containers"]);
            let selector = selector_string(get(obj, &["spec", "selector"]))
                .unwrap_or_else(|()| "<invalid>".into());
            vec![
                name,
                json!(format!("{ready}/{desired}")),
                json!(int_at(obj, &["status", "updatedReplicas"]).unwrap_or(0)),
                json!(int_at(obj, &["status", "availableReplicas"]).unwrap_or(0)),
                age(),
                json!(names),
                json!(images),
                json!(selector),
            ]
        }
        "ReplicaSet" => {
            let (names, images) = containers(obj, &["spec", "template", "spec", "containers"]);
            vec![
                name,
                json!(int_at(obj, &["spec", "replicas"]).unwrap_or(1)),
                json!(int_at(obj, &["status", "replicas"]).unwrap_or(0)),
                json!(int_at(obj, &["status", "readyReplicas"]).unwrap_or(0)),
                age(),
                json!(names),
                json!(images),
                json!(format_selector(get(obj, &["spec", "selector"]))),
            ]
        }
        "DaemonSet" => {
            let status = |field: &str| json!(int_at(obj, &["status", field]).unwrap_or(0));
            let (names, images) = containers(obj, &["spec", "template", "spec", "containers"]);
            vec![
                name,
                status("desiredNumberScheduled"),
                status("currentNumberScheduled"),
                status("numberReady"),
                status("updatedNumberScheduled"),
                status("numberAvailable"),
                json!(format_labels(get(
                    obj,
                    &["spec", "template", "spec", "nodeSelector"]
                ))),
                age(),
                json!(names),
                json!(images),
                json!(format_selector(get(obj, &["spec", "selector"]))),
            ]
        }
        "StatefulSet" => {
            let desired = int_at(obj, &["spec", "replicas"]).unwrap_or(1);
            let ready = int_at(obj, &["status", "readyReplicas"]).unwrap_or(0);
            let (names, images) = containers(obj, &["spec", "template", "spec", "containers"]);
            vec![
                name,
                json!(format!("{ready}/{desired}")),
                age(),
                json!(names),
                json!(images),
            ]
        }
        "Job" => job_cells(obj, now),
        "CronJob" => {
            let last = match get(obj, &["status", "lastScheduleTime"]) {
                Some(t) => since(t.as_str().unwrap_or(""), now),
                None => "<none>".to_string(),
            };
            let tz = get(obj, &["spec", "timeZone"])
                .and_then(Value::as_str)
                .unwrap_or("<none>");
            let suspend = match bool_at(obj, &["spec", "suspend"]) {
                Some(true) => "True",
                Some(false) => "False",
                None => "<unset>",
            };
            let template = [
                "spec",
                "jobTemplate",
                "spec",
                "template",
                "spec",
                "containers",
            ];
            let (names, images) = containers(obj, &template);
            vec![
                name,
                json!(str_at(obj, &["spec", "schedule"])),
                json!(tz),
                json!(suspend),
                json!(list_at(obj, &["status", "active"]).len()),
                json!(last),
                age(),
                json!(names),
                json!(images),
                json!(format_selector(get(
                    obj,
                    &["spec", "jobTemplate", "spec", "selector"]
                ))),
            ]
        }
        "Service" => service_cells(obj, now),
        "Endpoints" => vec![name, json!(format_endpoints(obj)), age()],
        "EndpointSlice" => {
            let ports: Vec<String> = list_at(obj, &["ports"])
                .iter()
                .map(
                    |p| match (get(p, &["port"]).and_then(as_int), get(p, &["name"])) {
                        (Some(port), _) => port.to_string(),
                        (None, Some(Value::String(name))) => name.clone(),
                        _ => "*".to_string(),
                    },
                )
                .collect();
            let addresses: Vec<String> = list_at(obj, &["endpoints"])
                .iter()
                .flat_map(|e| list_at(e, &["addresses"]))
                .map(|a| a.as_str().unwrap_or("").to_string())
                .collect();
            vec![
                name,
                json!(str_at(obj, &["addressType"])),
                json!(list_with_more(&ports)),
                json!(list_with_more(&addresses)),
                age(),
            ]
        }
        "Node" => node_cells(obj, now),
        "Namespace" => {
            let phase = match str_at(obj, &["status", "phase"]) {
                "" => "Active",
                phase => phase,
            };
            vec![name, json!(phase), age()]
        }
        "ConfigMap" => {
            let count = map_len(obj, &["data"]) + map_len(obj, &["binaryData"]);
            vec![name, json!(count), age()]
        }
        "Secret" => vec![
            name,
            json!(str_at(obj, &["type"])),
            json!(map_len(obj, &["data"])),
            age(),
        ],
        "ServiceAccount" => vec![name, json!(list_at(obj, &["secrets"]).len()), age()],
        "Event" => event_cells(obj, now),
        "Lease" => vec![name, json!(str_at(obj, &["spec", "holderIdentity"])), age()],
        "ControllerRevision" => vec![
            name,
            json!(controller_of(obj)),
            json!(int_at(obj, &["revision"]).unwrap_or(0)),
            age(),
        ],
        _ => vec![
            name,
            json!(created_at(str_at(obj, &["metadata", "creationTimestamp"]))),
        ],
    }
}

fn row_conditions(kind: &str, obj: &Value) -> Option<Value> {
    if kind != "Pod" {
        return None;
    }
    let (reason, message) = match str_at(obj, &["status", "phase"]) {
        "Succeeded" => ("Succeeded", "The pod has completed successfully."),
        "Failed" => ("Failed", "The pod failed."),
        _ => return None,
    };
    Some(json!([{
        "type": "Completed",
        "status": "True",
        "reason": reason,
        "message": message,
    }]))
}

/// Ready, Status and Restarts of a pod, the way `kubectl get pods` shows them.
#[derive(Debug, PartialEq, Eq)]
struct PodSummary {
    ready: String,
    status: String,
    restarts: String,
}

fn pod_cells(pod: &Value, now: OffsetDateTime) -> Vec<Value> {
    let summary = pod_summary(pod, now);
    let ip = match str_at(pod, &["status", "podIPs", "0", "ip"]) {
        "" => str_at(pod, &["status", "podIP"]),
        ip => ip,
    };
    let gates = list_at(pod, &["spec", "readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conditions = list_at(pod, &["status", "conditions"]);
        let ready = gates
            .iter()
            .filter(|gate| {
                let ty = str_at(gate, &["conditionType"]);
                conditions
                    .iter()
                    .find(|c| str_at(c, &["type"]) == ty)
                    .is_some_and(|c| str_at(c, &["status"]) == "True")
            })
            .count();
        format!("{ready}/{}", gates.len())
    };
    vec![
        json!(str_at(pod, &["metadata", "name"])),
        json!(summary.ready),
        json!(summary.status),
        json!(summary.restarts),
        json!(since(str_at(pod, &["metadata", "creationTimestamp"]), now)),
        json!(or_none(ip)),
        json!(or_none(str_at(pod, &["spec", "nodeName"]))),
        json!(or_none(str_at(pod, &["status", "nominatedNodeName"]))),
        json!(readiness_gates),
    ]
}

fn pod_summary(pod: &Value, now: OffsetDateTime) -> PodSummary {
    let phase = str_at(pod, &["status", "phase"]);
    let mut reason = match str_at(pod, &["status", "reason"]) {
        "" => phase.to_string(),
        r => r.to_string(),
    };
    let conditions = list_at(pod, &["status", "conditions"]);
    if conditions.iter().any(|c| {
        str_at(c, &["type"]) == "PodScheduled" && str_at(c, &["reason"]) == "SchedulingGated"
    }) {
        reason = "SchedulingGated".to_string();
    }

    let init_specs = list_at(pod, &["spec", "initContainers"]);
    let restartable = |name: &str| {
        init_specs
            .iter()
            .any(|c| str_at(c, &["name"]) == name && str_at(c, &["restartPolicy"]) == "Always")
    };
    let mut total = list_at(pod, &["spec", "containers"]).len();
    total += init_specs
        .iter()
        .filter(|c| str_at(c, &["restartPolicy"]) == "Always")
        .count();

    let mut ready = 0;
    let mut restarts = 0_i64;
    let mut last_restart: Option<OffsetDateTime> = None;
    let mut sidecar_restarts = 0_i64;
    let mut sidecar_last_restart: Option<OffsetDateTime> = None;

    let mut initializing = false;
    for (i, status) in list_at(pod, &["status", "initContainerStatuses"])
        .iter()
        .enumerate()
    {
        let count = int_at(status, &["restartCount"]).unwrap_or(0);
        let finished = last_finished(status);
        restarts += count;
        last_restart = later(last_restart, finished);
        let is_sidecar = restartable(str_at(status, &["name"]));
        if is_sidecar {
            sidecar_restarts += count;
            sidecar_last_restart = later(sidecar_last_restart, finished);
        }
        let terminated = get(status, &["state", "terminated"]);
        let waiting_reason = str_at(status, &["state", "waiting", "reason"]);
        if terminated.is_some_and(|t| exit_code(t) == 0) {
            continue;
        }
        if is_sidecar && bool_at(status, &["started"]) == Some(true) {
            if bool_at(status, &["ready"]) == Some(true) {
                ready += 1;
            }
            continue;
        }
        reason = if let Some(t) = terminated {
            match str_at(t, &["reason"]) {
                "" => format!("Init:{}", exit_description(t)),
                r => format!("Init:{r}"),
            }
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            format!("Init:{waiting_reason}")
        } else {
            format!("Init:{i}/{}", init_specs.len())
        };
        initializing = true;
        break;
    }

    let initialized = conditions
        .iter()
        .find(|c| str_at(c, &["type"]) == "Initialized")
        .is_some_and(|c| str_at(c, &["status"]) == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        last_restart = sidecar_last_restart;
        let mut has_running = false;
        for status in list_at(pod, &["status", "containerStatuses"]).iter().rev() {
            restarts += int_at(status, &["restartCount"]).unwrap_or(0);
            last_restart = later(last_restart, last_finished(status));
            let waiting_reason = str_at(status, &["state", "waiting", "reason"]);
            let terminated = get(status, &["state", "terminated"]);
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                reason = match str_at(t, &["reason"]) {
                    "" => exit_description(t),
                    r => r.to_string(),
                };
            } else if bool_at(status, &["ready"]) == Some(true)
                && get(status, &["state", "running"]).is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = conditions
                .iter()
                .any(|c| str_at(c, &["type"]) == "Ready" && str_at(c, &["status"]) == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.to_string();
        }
    }

    if get(pod, &["metadata", "deletionTimestamp"]).is_some() {
        if str_at(pod, &["status", "reason"]) == "NodeLost" {
            reason = "Unknown".to_string();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".to_string();
        }
    }

    let restarts = match last_restart {
        Some(at) if restarts != 0 => {
            format!(
                "{restarts} ({} ago)",
                human_duration(nanos_between(at, now))
            )
        }
        _ => restarts.to_string(),
    };
    PodSummary {
        ready: format!("{ready}/{total}"),
        status: reason,
        restarts,
    }
}

/// When a container last terminated (`lastState.terminated.finishedAt`), if it did.
fn last_finished(status: &Value) -> Option<OffsetDateTime> {
    parse_time(str_at(status, &["lastState", "terminated", "finishedAt"]))
}

fn later(a: Option<OffsetDateTime>, b: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn exit_code(terminated: &Value) -> i64 {
    int_at(terminated, &["exitCode"]).unwrap_or(0)
}

/// `Signal:N` or `ExitCode:N` for a termination without a reason.
fn exit_description(terminated: &Value) -> String {
    match int_at(terminated, &["signal"]).unwrap_or(0) {
        0 => format!("ExitCode:{}", exit_code(terminated)),
        signal => format!("Signal:{signal}"),
    }
}

fn job_cells(job: &Value, now: OffsetDateTime) -> Vec<Value> {
    let succeeded = int_at(job, &["status", "succeeded"]).unwrap_or(0);
    let completions = match int_at(job, &["spec", "completions"]) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match int_at(job, &["spec", "parallelism"]).unwrap_or(0) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let start = parse_time(str_at(job, &["status", "startTime"]));
    let end = parse_time(str_at(job, &["status", "completionTime"]));
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(nanos_between(start, now)),
        (Some(start), Some(end)) => human_duration(nanos_between(start, end)),
    };
    let conditions = list_at(job, &["status", "conditions"]);
    // The first condition of a type decides, as in kube.
    let has = |ty: &str| {
        conditions
            .iter()
            .find(|c| str_at(c, &["type"]) == ty)
            .is_some_and(|c| str_at(c, &["status"]) == "True")
    };
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if get(job, &["metadata", "deletionTimestamp"]).is_some() {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (names, images) = containers(job, &["spec", "template", "spec", "containers"]);
    vec![
        json!(str_at(job, &["metadata", "name"])),
        json!(status),
        json!(completions),
        json!(duration),
        json!(since(str_at(job, &["metadata", "creationTimestamp"]), now)),
        json!(names),
        json!(images),
        json!(format_selector(get(job, &["spec", "selector"]))),
    ]
}

fn service_cells(svc: &Value, now: OffsetDateTime) -> Vec<Value> {
    let ty = match str_at(svc, &["spec", "type"]) {
        "" => "ClusterIP",
        ty => ty,
    };
    let cluster_ip = list_at(svc, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| str_at(svc, &["spec", "clusterIP"]));
    let ports: Vec<String> = list_at(svc, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int_at(p, &["port"]).unwrap_or(0);
            let protocol = match str_at(p, &["protocol"]) {
                "" => "TCP",
                proto => proto,
            };
            match int_at(p, &["nodePort"]).unwrap_or(0) {
                node_port if node_port > 0 => format!("{port}:{node_port}/{protocol}"),
                _ => format!("{port}/{protocol}"),
            }
        })
        .collect();
    vec![
        json!(str_at(svc, &["metadata", "name"])),
        json!(ty),
        json!(or_none(cluster_ip)),
        json!(service_external_ip(svc, ty)),
        json!(or_none(&ports.join(","))),
        json!(since(str_at(svc, &["metadata", "creationTimestamp"]), now)),
        json!(format_labels(get(svc, &["spec", "selector"]))),
    ]
}

fn service_external_ip(svc: &Value, ty: &str) -> String {
    let external: Vec<&str> = list_at(svc, &["spec", "externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match ty {
        "ClusterIP" | "NodePort" if external.is_empty() => "<none>".to_string(),
        "ClusterIP" | "NodePort" => external.join(","),
        "LoadBalancer" => {
            let ingress: BTreeSet<&str> = list_at(svc, &["status", "loadBalancer", "ingress"])
                .iter()
                .map(|i| match str_at(i, &["ip"]) {
                    "" => str_at(i, &["hostname"]),
                    ip => ip,
                })
                .filter(|s| !s.is_empty())
                .collect();
            let all: Vec<&str> = ingress.into_iter().chain(external).collect();
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => str_at(svc, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    }
}

/// `10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 2 more...`, or `<none>` without subsets.
fn format_endpoints(ep: &Value) -> String {
    const MAX: usize = 3;
    let subsets = list_at(ep, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let mut list: Vec<String> = Vec::new();
    let mut count = 0;
    for subset in subsets {
        let addresses = list_at(subset, &["addresses"]);
        let ips = addresses.iter().map(|a| str_at(a, &["ip"]));
        let ports = list_at(subset, &["ports"]);
        if ports.is_empty() {
            // A headless service without ports lists bare addresses.
            count += addresses.len();
            list.extend(ips.take(MAX - list.len()).map(str::to_string));
            continue;
        }
        for port in ports {
            let port = int_at(port, &["port"]).unwrap_or(0);
            count += addresses.len();
            let room = MAX - list.len();
            list.extend(ips.clone().take(room).map(|ip| join_host_port(ip, port)));
        }
    }
    let joined = list.join(",");
    if count > MAX {
        format!("{joined} + {} more...", count - MAX)
    } else {
        joined
    }
}

/// Go's `net.JoinHostPort`: IPv6 addresses go in brackets.
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The first three items, then `+ N more...`; `<unset>` when there are none.
fn list_with_more(items: &[String]) -> String {
    const MAX: usize = 3;
    if items.is_empty() {
        return "<unset>".to_string();
    }
    let joined = items[..items.len().min(MAX)].join(",");
    if items.len() > MAX {
        format!("{joined} + {} more...", items.len() - MAX)
    } else {
        joined
    }
}

fn node_cells(node: &Value, now: OffsetDateTime) -> Vec<Value> {
    // The last Ready condition wins, as kube builds a map by type.
    let ready = list_at(node, &["status", "conditions"])
        .iter()
        .rev()
        .find(|c| str_at(c, &["type"]) == "Ready");
    let mut status = match ready {
        Some(c) if str_at(c, &["status"]) == "True" => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if bool_at(node, &["spec", "unschedulable"]) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles = BTreeSet::new();
    if let Some(labels) = get(node, &["metadata", "labels"]).and_then(Value::as_object) {
        for (key, value) in labels {
            if let Some(role) = key.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role.to_string());
                }
            } else if key == "kubernetes.io/role" {
                if let Some(role) = value.as_str().filter(|r| !r.is_empty()) {
                    roles.insert(role.to_string());
                }
            }
        }
    }
    let roles = roles.into_iter().collect::<Vec<_>>().join(",");
    let address = |ty: &str| {
        list_at(node, &["status", "addresses"])
            .iter()
            .find(|a| str_at(a, &["type"]) == ty)
            .map_or("<none>", |a| str_at(a, &["address"]))
    };
    let info = |field: &str| match str_at(node, &["status", "nodeInfo", field]) {
        "" => "<unknown>",
        value => value,
    };
    vec![
        json!(str_at(node, &["metadata", "name"])),
        json!(status),
        json!(or_none(&roles)),
        json!(since(str_at(node, &["metadata", "creationTimestamp"]), now)),
        json!(str_at(node, &["status", "nodeInfo", "kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

fn event_cells(ev: &Value, now: OffsetDateTime) -> Vec<Value> {
    let first_seen = match parse_time(str_at(ev, &["firstTimestamp"])) {
        Some(t) => human_duration(nanos_between(t, now)),
        None => since(str_at(ev, &["eventTime"]), now),
    };
    let mut last_seen = match parse_time(str_at(ev, &["lastTimestamp"])) {
        Some(t) => human_duration(nanos_between(t, now)),
        None => first_seen.clone(),
    };
    let mut count = int_at(ev, &["count"]).unwrap_or(0);
    if let Some(series) = get(ev, &["series"]).filter(|s| s.is_object()) {
        last_seen = since(str_at(series, &["lastObservedTime"]), now);
        count = int_at(series, &["count"]).unwrap_or(0);
    } else if count == 0 {
        // Singleton events carry no count in the events.k8s.io API.
        count = 1;
    }
    let kind = str_at(ev, &["involvedObject", "kind"]).to_lowercase();
    let target = match str_at(ev, &["involvedObject", "name"]) {
        "" => kind,
        name => format!("{kind}/{name}"),
    };
    let component = first_non_empty(
        str_at(ev, &["source", "component"]),
        str_at(ev, &["reportingComponent"]),
    );
    let instance = first_non_empty(
        str_at(ev, &["source", "host"]),
        str_at(ev, &["reportingInstance"]),
    );
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };
    vec![
        json!(last_seen),
        json!(str_at(ev, &["type"])),
        json!(str_at(ev, &["reason"])),
        json!(target),
        json!(str_at(ev, &["involvedObject", "fieldPath"])),
        json!(source),
        json!(str_at(ev, &["message"]).trim()),
        json!(first_seen),
        json!(count),
        json!(str_at(ev, &["metadata", "name"])),
    ]
}

fn first_non_empty<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() {
        b
    } else {
        a
    }
}

/// The controlling owner as `kind.group/name` in lower case (`statefulset.apps/web`), or
/// `<none>`.
fn controller_of(obj: &Value) -> String {
    let Some(owner) = list_at(obj, &["metadata", "ownerReferences"])
        .iter()
        .find(|o| bool_at(o, &["controller"]) == Some(true))
    else {
        return "<none>".to_string();
    };
    let name = str_at(owner, &["name"]);
    let kind = str_at(owner, &["kind"]);
    let group = str_at(owner, &["apiVersion"])
        .split_once('/')
        .map_or("", |(group, _)| group);
    match (kind, group) {
        ("", "") => name.to_string(),
        (kind, "") => format!("{}/{name}", kind.to_lowercase()),
        (kind, group) => format!("{}.{}/{name}", kind.to_lowercase(), group.to_lowercase()),
    }
}

/// The comma-joined names and images of the containers at `path`.
fn containers(obj: &Value, path: &[&str]) -> (String, String) {
    let list = list_at(obj, path);
    let names: Vec<&str> = list.iter().map(|c| str_at(c, &["name"])).collect();
    let images: Vec<&str> = list.iter().map(|c| str_at(c, &["image"])).collect();
    (names.join(","), images.join(","))
}

/// A label map as `a=b,c=d` (sorted by key), or `<none>`: kube's `labels.FormatLabels`.
fn format_labels(labels: Option<&Value>) -> String {
    let Some(labels) = labels.and_then(Value::as_object).filter(|m| !m.is_empty()) else {
        return "<none>".to_string();
    };
    let mut pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// A `LabelSelector` as a selector string, `<none>` when it selects everything or nothing and
/// `<error>` when it is malformed: kube's `metav1.FormatLabelSelector`.
fn format_selector(selector: Option<&Value>) -> String {
    match selector_string(selector) {
        Ok(s) if s.is_empty() => "<none>".to_string(),
        Ok(s) => s,
        Err(()) => "<error>".to_string(),
    }
}

/// A `LabelSelector` rendered the way kube's `labels.Selector.String()` does:
/// requirements sorted by key, `k=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`.
fn selector_string(selector: Option<&Value>) -> Result<String, ()> {
    let Some(selector) = selector else {
        return Ok(String::new());
    };
    let selector = selector.as_object().ok_or(())?;
    let mut requirements: Vec<(String, String)> = Vec::new();
    match selector.get("matchLabels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (key, value) in labels {
                let value = value.as_str().ok_or(())?;
                requirements.push((key.clone(), format!("{key}={value}")));
            }
        }
        Some(_) => return Err(()),
    }
    match selector.get("matchExpressions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(expressions)) => {
            for expr in expressions {
                let key = get(expr, &["key"]).and_then(Value::as_str).ok_or(())?;
                let values: BTreeSet<&str> = match get(expr, &["values"]) {
                    None => BTreeSet::new(),
                    Some(Value::Array(values)) => values
                        .iter()
                        .map(|v| v.as_str().ok_or(()))
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(()),
                };
                let joined = values.iter().copied().collect::<Vec<_>>().join(",");
                let rendered = match str_at(expr, &["operator"]) {
                    "In" if !values.is_empty() => format!("{key} in ({joined})"),
                    "NotIn" if !values.is_empty() => format!("{key} notin ({joined})"),
                    "Exists" if values.is_empty() => key.to_string(),
                    "DoesNotExist" if values.is_empty() => format!("!{key}"),
                    _ => return Err(()),
                };
                requirements.push((key.to_string(), rendered));
            }
        }
        Some(_) => return Err(()),
    }
    requirements.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(requirements
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(","))
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// An RFC 3339 timestamp; `None` for an empty, unparseable or zero (`0001-01-01T00:00:00Z`) one.
fn parse_time(s: &str) -> Option<OffsetDateTime> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    (t.year() > 1 || t.ordinal() > 1 || t.time() != time::Time::MIDNIGHT).then_some(t)
}

fn nanos_between(from: OffsetDateTime, to: OffsetDateTime) -> i128 {
    (to - from).whole_nanoseconds()
}

/// How long ago `timestamp` was, as kube's AGE column shows it; `<unknown>` when it is missing
/// or unparseable.
fn since(timestamp: &str, now: OffsetDateTime) -> String {
    match parse_time(timestamp) {
        Some(t) => human_duration(nanos_between(t, now)),
        None => "<unknown>".to_string(),
    }
}

/// The default table's "Created At": the creation time in UTC, RFC 3339, whole seconds.
fn created_at(timestamp: &str) -> String {
    let Some(t) = parse_time(timestamp) else {
        return "0001-01-01T00:00:00Z".to_string();
    };
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// kube's `duration.HumanDuration`: a succinct duration with about two significant figures
/// (`45s`, `5m3s`, `3h`, `2d5h`, `8d`, `2y120d`). A small negative skew (above -2s) reads as `0s`.
fn human_duration(nanos: i128) -> String {
    const SECOND: i128 = 1_000_000_000;
    const MINUTE: i128 = 60 * SECOND;
    const HOUR: i128 = 60 * MINUTE;
    // Go converts toward zero.
    let seconds = nanos / SECOND;
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = nanos / MINUTE;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = nanos / HOUR;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

// ---------------------------------------------------------------------------------------------
// JSON access
// ---------------------------------------------------------------------------------------------

/// The value at `path` (object keys; a numeric segment also indexes an array), unless missing
/// or null.
fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for key in path {
        cur = match cur {
            Value::Object(map) => map.get(*key)?,
            Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!cur.is_null()).then_some(cur)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or("")
}

fn as_int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e18)
            .map(|f| f as i64)
    })
}

fn int_at(v: &Value, path: &[&str]) -> Option<i64> {
    get(v, path).and_then(as_int)
}

fn bool_at(v: &Value, path: &[&str]) -> Option<bool> {
    get(v, path).and_then(Value::as_bool)
}

fn list_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn map_len(v: &Value, path: &[&str]) -> usize {
    get(v, path).and_then(Value::as_object).map_or(0, Map::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed "now" every test renders at.
    const NOW: &str = "2024-06-01T12:00:00Z";

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse(NOW, &Rfc3339).unwrap()
    }

    fn now_system() -> SystemTime {
        SystemTime::from(now())
    }

    /// The RFC 3339 timestamp `secs` seconds before `NOW`.
    fn ago(secs: i64) -> String {
        (now() - time::Duration::seconds(secs))
            .format(&Rfc3339)
            .unwrap()
    }

    /// The cells of one object of `kind`.
    fn row(kind: &str, obj: Value) -> Vec<Value> {
        let t = table(kind, &[obj], IncludeObject::None, json!({}), now_system());
        t["rows"][0]["cells"].as_array().unwrap().clone()
    }

    /// The cells of one object of `kind`, keyed by column name.
    fn cell(kind: &str, obj: &Value, column: &str) -> Value {
        let i = columns(kind)
            .iter()
            .position(|c| c.name == column)
            .unwrap_or_else(|| panic!("{kind} has no column {column}"));
        row(kind, obj.clone())[i].clone()
    }

    #[test]
    fn wants_table_negotiation() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,\
                       application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        let cases: &[(Option<&str>, bool)] = &[
            (Some(kubectl), true),
            (Some("application/json"), false),
            (Some("*/*"), false),
            (None, false),
            (Some(""), false),
            (Some("application/json;as=Table;v=v1;g=meta.k8s.io"), true),
            (
                Some("application/json;as=Table;v=v1beta1;g=meta.k8s.io"),
                true,
            ),
            (
                Some("application/json; as=Table; v=v1; g=meta.k8s.io"),
                true,
            ),
            (Some("APPLICATION/JSON;as=Table;v=v1;g=meta.k8s.io"), true),
            // More parameters make the Table clause the preferred one.
            (
                Some("application/json, application/json;as=Table;v=v1;g=meta.k8s.io"),
                true,
            ),
            (Some("application/json;as=Table;v=v2;g=meta.k8s.io"), false),
            (Some("application/json;as=Table;v=v1;g=example.com"), false),
            (Some("application/json;as=Table;g=meta.k8s.io"), false),
            (Some("application/yaml;as=Table;v=v1;g=meta.k8s.io"), false),
            (
                Some("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"),
                false,
            ),
            (
                Some("application/json;as=Table;v=v1;g=meta.k8s.io;q=0, */*"),
                false,
            ),
            (
                Some("application/json;q=1, application/json;as=Table;v=v1;g=meta.k8s.io;q=0.5"),
                false,
            ),
            (
                Some("application/vnd.kubernetes.protobuf, */*;q=0.1"),
                false,
            ),
        ];
        for (accept, want) in cases {
            assert_eq!(wants_table(*accept), *want, "accept {accept:?}");
        }
    }

    #[test]
    fn human_durations() {
        const M: i64 = 60;
        const H: i64 = 60 * M;
        const D: i64 = 24 * H;
        const Y: i64 = 365 * D;
        let cases: &[(i64, &str)] = &[
            (0, "0s"),
            (-1, "0s"),
            (-2, "<invalid>"),
            (1, "1s"),
            (45, "45s"),
            (119, "119s"),
            (2 * M, "2m"),
            (2 * M + 1, "2m1s"),
            (5 * M + 3, "5m3s"),
            (9 * M + 59, "9m59s"),
            (10 * M + 30, "10m"),
            (179 * M, "179m"),
            (3 * H, "3h"),
            (3 * H + 30 * M, "3h30m"),
            (7 * H + 59 * M + 59, "7h59m"),
            (8 * H + 30 * M, "8h"),
            (47 * H, "47h"),
            (2 * D, "2d"),
            (2 * D + 5 * H, "2d5h"),
            (7 * D + 23 * H, "7d23h"),
            (8 * D, "8d"),
            (8 * D + 5 * H, "8d"),
            (729 * D, "729d"),
            (2 * Y, "2y"),
            (2 * Y + 120 * D, "2y120d"),
            (7 * Y + 364 * D, "7y364d"),
            (8 * Y + 100 * D, "8y"),
            (30 * Y, "30y"),
        ];
        for (secs, want) in cases {
            let nanos = i128::from(*secs) * 1_000_000_000;
            assert_eq!(human_duration(nanos), *want, "{secs}s");
        }
        // Sub-second skew truncates toward zero, as Go's int conversion does.
        assert_eq!(human_duration(-1_999_999_999), "0s");
        assert_eq!(human_duration(119_999_999_999), "119s");
    }

    #[test]
    fn ages_from_timestamps() {
        let cases: &[(&str, &str)] = &[
            ("2024-06-01T11:59:15Z", "45s"),
            ("2024-06-01T11:54:57Z", "5m3s"),
            ("2024-06-01T12:00:00.5Z", "0s"),
            ("2024-06-01T14:00:00+02:00", "0s"),
            ("2024-05-30T07:00:00Z", "2d5h"),
            ("", "<unknown>"),
            ("yesterday", "<unknown>"),
            ("0001-01-01T00:00:00Z", "<unknown>"),
            ("2030-01-01T00:00:00Z", "<invalid>"),
        ];
        for (ts, want) in cases {
            assert_eq!(since(ts, now()), *want, "timestamp {ts:?}");
        }
    }

    #[test]
    fn include_object_parse() {
        let cases: &[(Option<&str>, Result<IncludeObject, ()>)] = &[
            (None, Ok(IncludeObject::Metadata)),
            (Some(""), Ok(IncludeObject::Metadata)),
            (Some("Metadata"), Ok(IncludeObject::Metadata)),
            (Some("None"), Ok(IncludeObject::None)),
            (Some("Object"), Ok(IncludeObject::Object)),
            (Some("object"), Err(())),
            (Some("bogus"), Err(())),
        ];
        for (value, want) in cases {
            assert_eq!(
                IncludeObject::parse(*value).map_err(|_| ()),
                *want,
                "{value:?}"
            );
        }
        let err = IncludeObject::parse(Some("bogus")).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn include_object_variants() {
        let cm = json!({
            "kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "c", "namespace": "default", "resourceVersion": "7"},
            "data": {"a": "1"},
        });
        let render = |include| {
            table(
                "ConfigMap",
                std::slice::from_ref(&cm),
                include,
                json!({}),
                now_system(),
            )["rows"][0]["object"]
                .clone()
        };
        assert_eq!(render(IncludeObject::None), Value::Null);
        assert_eq!(render(IncludeObject::Object), cm);
        assert_eq!(
            render(IncludeObject::Metadata),
            json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": {"name": "c", "namespace": "default", "resourceVersion": "7"},
            })
        );
    }

    #[test]
    fn table_shape_and_list_metadata() {
        let pods = [
            json!({"metadata": {"name": "a"}}),
            json!({"metadata": {"name": "b"}}),
        ];
        let list_meta = json!({
            "resourceVersion": "42", "continue": "tok", "remainingItemCount": 3, "other": "x",
        });
        let t = table(
            "Pod",
            &pods,
            IncludeObject::Metadata,
            list_meta,
            now_system(),
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(
            t["metadata"],
            json!({"resourceVersion": "42", "continue": "tok", "remainingItemCount": 3})
        );
        let cols = t["columnDefinitions"].as_array().unwrap();
        let names: Vec<&str> = cols.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        assert_eq!(cols[0]["format"], "name");
        assert_eq!(cols[0]["type"], "string");
        assert_eq!(cols[4]["priority"], 0);
        assert_eq!(cols[5]["priority"], 1);
        assert!(cols.iter().all(|c| c["description"].as_str().is_some()));
        let rows = t["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["cells"][0], "b");
        assert_eq!(rows[1]["object"]["metadata"]["name"], "b");
    }

    #[test]
    fn rows_table_for_watch_events() {
        let pod = json!({"metadata": {"name": "a", "resourceVersion": "9"}});
        let t = rows_table("Pod", &[pod], IncludeObject::None, now_system());
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["columnDefinitions"], json!([]));
        assert_eq!(t["metadata"], json!({"resourceVersion": "9"}));
        assert_eq!(t["rows"][0]["cells"].as_array().unwrap().len(), POD.len());
        assert_eq!(t["rows"][0]["object"], Value::Null);
    }

    /// A pod from its spec and status; the fixture's name is "p".
    fn pod(spec: Value, status: Value) -> Value {
        json!({"metadata": {"name": "p", "creationTimestamp": ago(3600)}, "spec": spec, "status": status})
    }

    fn one_container() -> Value {
        json!({"containers": [{"name": "app", "image": "nginx"}]})
    }

    fn running(ready: bool) -> Value {
        json!({"name": "app", "ready": ready, "restartCount": 0,
               "state": {"running": {"startedAt": ago(60)}}})
    }

    #[test]
    fn pod_summaries() {
        let two = json!({"containers": [{"name": "a"}, {"name": "b"}]});
        let init1 = json!({"initContainers": [{"name": "init"}], "containers": [{"name": "app"}]});
        let init2 = json!({"initContainers": [{"name": "i1"}, {"name": "i2"}],
                           "containers": [{"name": "app"}]});
        let waiting =
            |reason: &str| json!({"name": "app", "state": {"waiting": {"reason": reason}}});
        let terminated = |t: Value| json!({"name": "app", "state": {"terminated": t}});
        let cases: Vec<(&str, Value, (&str, &str, &str))> = vec![
            (
                "running and ready",
                pod(
                    one_container(),
                    json!({"phase": "Running", "containerStatuses": [running(true)]}),
                ),
                ("1/1", "Running", "0"),
            ),
            (
                "one of two ready",
                pod(
                    two.clone(),
                    json!({"phase": "Running",
                    "containerStatuses": [running(true), running(false)]}),
                ),
                ("1/2", "Running", "0"),
            ),
            (
                "pending without statuses",
                pod(one_container(), json!({"phase": "Pending"})),
                ("0/1", "Pending", "0"),
            ),
            (
                "container creating",
                pod(
                    one_container(),
                    json!({"phase": "Pending",
                    "containerStatuses": [waiting("ContainerCreating")]}),
                ),
                ("0/1", "ContainerCreating", "0"),
            ),
            (
                "crash loop with restarts",
                pod(
                    one_container(),
                    json!({"phase": "Running", "containerStatuses": [{
                        "name": "app", "ready": false, "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                                     "finishedAt": ago(5 * 60)}},
                    }]}),
                ),
                ("0/1", "CrashLoopBackOff", "3 (5m ago)"),
            ),
            (
                "restarts without a last termination",
                pod(
                    one_container(),
                    json!({"phase": "Running", "containerStatuses": [{
                    "name": "app", "ready": true, "restartCount": 2,
                    "state": {"running": {}}}]}),
                ),
                ("1/1", "Running", "2"),
            ),
            (
                "completed",
                pod(
                    one_container(),
                    json!({"phase": "Succeeded", "containerStatuses": [
                    terminated(json!({"exitCode": 0, "reason": "Completed"}))]}),
                ),
                ("0/1", "Completed", "0"),
            ),
            (
                "oom killed",
                pod(
                    one_container(),
                    json!({"phase": "Running", "containerStatuses": [
                    terminated(json!({"exitCode": 137, "reason": "OOMKilled"}))]}),
                ),
                ("0/1", "OOMKilled", "0"),
            ),
            (
                "killed by a signal",
                pod(
                    one_container(),
                    json!({"phase": "Failed", "containerStatuses": [
                    terminated(json!({"exitCode": 137, "signal": 9}))]}),
                ),
                ("0/1", "Signal:9", "0"),
            ),
            (
                "exit code without reason",
                pod(
                    one_container(),
                    json!({"phase": "Failed", "containerStatuses": [
                    terminated(json!({"exitCode": 2}))]}),
                ),
                ("0/1", "ExitCode:2", "0"),
            ),
            (
                "evicted",
                pod(
                    one_container(),
                    json!({"phase": "Failed", "reason": "Evicted"}),
                ),
                ("0/1", "Evicted", "0"),
            ),
            (
                "init container running",
                pod(
                    init1.clone(),
                    json!({"phase": "Pending",
                    "initContainerStatuses": [{"name": "init", "state": {"running": {}}}],
                    "containerStatuses": [waiting("PodInitializing")]}),
                ),
                ("0/1", "Init:0/1", "0"),
            ),
            (
                "init container waiting PodInitializing counts as progress",
                pod(
                    init1.clone(),
                    json!({"phase": "Pending",
                    "initContainerStatuses": [{"name": "init",
                        "state": {"waiting": {"reason": "PodInitializing"}}}]}),
                ),
                ("0/1", "Init:0/1", "0"),
            ),
            (
                "second init container running",
                pod(
                    init2,
                    json!({"phase": "Pending", "initContainerStatuses": [
                    {"name": "i1", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                    {"name": "i2", "state": {"running": {}}}]}),
                ),
                ("0/1", "Init:1/2", "0"),
            ),
            (
                "init crash loop",
                pod(
                    init1.clone(),
                    json!({"phase": "Pending", "initContainerStatuses": [{
                    "name": "init", "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(90)}}}]}),
                ),
                ("0/1", "Init:CrashLoopBackOff", "4 (90s ago)"),
            ),
            (
                "init error",
                pod(
                    init1.clone(),
                    json!({"phase": "Pending", "initContainerStatuses": [{
                    "name": "init", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}),
                ),
                ("0/1", "Init:Error", "0"),
            ),
            (
                "init exit code",
                pod(
                    init1.clone(),
                    json!({"phase": "Pending", "initContainerStatuses": [{
                    "name": "init", "state": {"terminated": {"exitCode": 3}}}]}),
                ),
                ("0/1", "Init:ExitCode:3", "0"),
            ),
            (
                "init signal",
                pod(
                    init1,
                    json!({"phase": "Pending", "initContainerStatuses": [{
                    "name": "init", "state": {"terminated": {"exitCode": 143, "signal": 15}}}]}),
                ),
                ("0/1", "Init:Signal:15", "0"),
            ),
            (
                "sidecar counts towards ready and total",
                pod(
                    json!({"initContainers": [{"name": "proxy", "restartPolicy": "Always"}],
                           "containers": [{"name": "app"}]}),
                    json!({"phase": "Running",
                        "initContainerStatuses": [{"name": "proxy", "started": true, "ready": true,
                            "restartCount": 1, "state": {"running": {}},
                            "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(600)}}}],
                        "containerStatuses": [running(true)]}),
                ),
                ("2/2", "Running", "1 (10m ago)"),
            ),
            (
                "completed container beside a running one, pod ready",
                pod(
                    two.clone(),
                    json!({"phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [
                        terminated(json!({"exitCode": 0, "reason": "Completed"})),
                        running(true)]}),
                ),
                ("1/2", "Running", "0"),
            ),
            (
                "completed container beside a running one, pod not ready",
                pod(
                    two,
                    json!({"phase": "Running",
                    "conditions": [{"type": "Ready", "status": "False"}],
                    "containerStatuses": [
                        terminated(json!({"exitCode": 0, "reason": "Completed"})),
                        running(true)]}),
                ),
                ("1/2", "NotReady", "0"),
            ),
            (
                "scheduling gated",
                pod(
                    one_container(),
                    json!({"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}),
                ),
                ("0/1", "SchedulingGated", "0"),
            ),
        ];
        for (name, obj, (ready, status, restarts)) in cases {
            let got = pod_summary(&obj, now());
            let want = PodSummary {
                ready: ready.into(),
                status: status.into(),
                restarts: restarts.into(),
            };
            assert_eq!(got, want, "case {name}");
        }
    }

    #[test]
    fn pod_terminating() {
        let cases: &[(&str, &str, &str)] = &[
            ("Running", "", "Terminating"),
            ("Pending", "", "Terminating"),
            ("Succeeded", "", "Succeeded"),
            ("Failed", "", "Failed"),
            ("Running", "NodeLost", "Unknown"),
        ];
        for (phase, reason, want) in cases {
            let mut p = pod(one_container(), json!({"phase": phase, "reason": reason}));
            p["metadata"]["deletionTimestamp"] = json!(ago(5));
            assert_eq!(
                pod_summary(&p, now()).status,
                *want,
                "phase {phase} reason {reason}"
            );
        }
    }

    #[test]
    fn pod_wide_cells_and_conditions() {
        let bare = pod(one_container(), json!({"phase": "Pending"}));
        let cells = row("Pod", bare);
        assert_eq!(cells[0], "p");
        assert_eq!(cells[4], "60m");
        assert_eq!(
            &cells[5..],
            &[
                json!("<none>"),
                json!("<none>"),
                json!("<none>"),
                json!("<none>")
            ]
        );

        let mut full = pod(
            json!({"nodeName": "n1", "containers": [{"name": "app"}],
                   "readinessGates": [{"conditionType": "a/x"}, {"conditionType": "b/y"}]}),
            json!({"phase": "Running", "podIP": "10.0.0.9",
                   "podIPs": [{"ip": "10.0.0.9"}, {"ip": "fd00::9"}],
                   "nominatedNodeName": "n2",
                   "conditions": [{"type": "a/x", "status": "True"}, {"type": "b/y", "status": "False"}]}),
        );
        let cells = row("Pod", full.clone());
        assert_eq!(
            &cells[5..],
            &[json!("10.0.0.9"), json!("n1"), json!("n2"), json!("1/2")]
        );
        // Only podIP (no podIPs) still shows.
        full["status"].as_object_mut().unwrap().remove("podIPs");
        assert_eq!(row("Pod", full)[5], "10.0.0.9");

        let done = pod(one_container(), json!({"phase": "Succeeded"}));
        let t = table("Pod", &[done], IncludeObject::None, json!({}), now_system());
        assert_eq!(t["rows"][0]["conditions"][0]["type"], "Completed");
        assert_eq!(t["rows"][0]["conditions"][0]["reason"], "Succeeded");
        let live = pod(one_container(), json!({"phase": "Running"}));
        let t = table("Pod", &[live], IncludeObject::None, json!({}), now_system());
        assert!(t["rows"][0].get("conditions").is_none());
    }

    #[test]
    fn service_rows() {
        let svc = |spec: Value, status: Value| {
            json!({"metadata": {"name": "s", "creationTimestamp": ago(120)},
                   "spec": spec, "status": status})
        };
        let cases: Vec<(&str, Value, [&str; 4])> = vec![
            (
                "cluster ip",
                svc(
                    json!({"type": "ClusterIP", "clusterIP": "10.96.0.10",
                           "clusterIPs": ["10.96.0.10"], "selector": {"app": "web", "tier": "fe"},
                           "ports": [{"port": 80, "protocol": "TCP"},
                                     {"port": 53, "protocol": "UDP"}]}),
                    json!({}),
                ),
                ["ClusterIP", "10.96.0.10", "<none>", "80/TCP,53/UDP"],
            ),
            (
                "node port",
                svc(
                    json!({"type": "NodePort", "clusterIP": "10.96.0.11",
                           "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}),
                    json!({}),
                ),
                ["NodePort", "10.96.0.11", "<none>", "80:30080/TCP"],
            ),
            (
                "external ips",
                svc(
                    json!({"type": "ClusterIP", "clusterIP": "10.96.0.12",
                           "externalIPs": ["1.2.3.4", "5.6.7.8"], "ports": [{"port": 443}]}),
                    json!({}),
                ),
                ["ClusterIP", "10.96.0.12", "1.2.3.4,5.6.7.8", "443/TCP"],
            ),
            (
                "load balancer pending",
                svc(
                    json!({"type": "LoadBalancer", "clusterIP": "10.96.0.13",
                           "ports": [{"port": 80, "nodePort": 31000, "protocol": "TCP"}]}),
                    json!({"loadBalancer": {}}),
                ),
                ["LoadBalancer", "10.96.0.13", "<pending>", "80:31000/TCP"],
            ),
            (
                "load balancer ingress",
                svc(
                    json!({"type": "LoadBalancer", "clusterIP": "10.96.0.14",
                           "externalIPs": ["9.9.9.9"], "ports": []}),
                    json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"},
                                                         {"hostname": "lb.example.com"},
                                                         {"ip": "203.0.113.7"}]}}),
                ),
                [
                    "LoadBalancer",
                    "10.96.0.14",
                    "203.0.113.7,lb.example.com,9.9.9.9",
                    "<none>",
                ],
            ),
            (
                "external name",
                svc(
                    json!({"type": "ExternalName", "externalName": "db.example.com"}),
                    json!({}),
                ),
                ["ExternalName", "<none>", "db.example.com", "<none>"],
            ),
            (
                "headless",
                svc(
                    json!({"clusterIP": "None", "ports": [{"port": 5432, "protocol": "TCP"}]}),
                    json!({}),
                ),
                ["ClusterIP", "None", "<none>", "5432/TCP"],
            ),
        ];
        for (name, obj, want) in cases {
            let cells = row("Service", obj);
            assert_eq!(cells[0], "s", "{name}");
            assert_eq!(&cells[1..5], &want.map(Value::from), "{name}");
            assert_eq!(cells[5], "2m", "{name}");
        }
        let sel = svc(json!({"selector": {"tier": "fe", "app": "web"}}), json!({}));
        assert_eq!(cell("Service", &sel, "Selector"), "app=web,tier=fe");
        let no_sel = svc(json!({}), json!({}));
        assert_eq!(cell("Service", &no_sel, "Selector"), "<none>");
    }

    #[test]
    fn deployment_row() {
        let d = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(3 * 86400)},
            "spec": {"replicas": 3,
                     "selector": {"matchLabels": {"app": "web"},
                                  "matchExpressions": [
                                      {"key": "env", "operator": "In", "values": ["prod", "dev"]},
                                      {"key": "canary", "operator": "DoesNotExist"}]},
                     "template": {"spec": {"containers": [
                         {"name": "nginx", "image": "nginx:1.27"},
                         {"name": "sidecar", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
        });
        assert_eq!(
            row("Deployment", d),
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("3d"),
                json!("nginx,sidecar"),
                json!("nginx:1.27,busybox"),
                json!("app=web,!canary,env in (dev,prod)"),
            ]
        );
        // kube sorts requirements by key.
        let sorted = json!({"spec": {"selector": {"matchLabels": {"b": "1", "a": "2"}}}});
        assert_eq!(cell("Deployment", &sorted, "Selector"), "a=2,b=1");
        let bad =
            json!({"spec": {"selector": {"matchExpressions": [{"key": "k", "operator": "Near"}]}}});
        assert_eq!(cell("Deployment", &bad, "Selector"), "<invalid>");
        let empty = json!({"metadata": {"name": "x"}});
        assert_eq!(cell("Deployment", &empty, "Ready"), "0/1");
        assert_eq!(cell("Deployment", &empty, "Selector"), "");
    }

    #[test]
    fn replica_set_daemon_set_stateful_set_rows() {
        let rs = json!({
            "metadata": {"name": "web-abc", "creationTimestamp": ago(30)},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"replicas": 2, "readyReplicas": 1},
        });
        assert_eq!(
            row("ReplicaSet", rs),
            vec![
                json!("web-abc"),
                json!(2),
                json!(2),
                json!(1),
                json!("30s"),
                json!("c"),
                json!("i"),
                json!("app=web")
            ]
        );
        let no_selector = json!({"metadata": {"name": "x"}});
        assert_eq!(cell("ReplicaSet", &no_selector, "Selector"), "<none>");
        assert_eq!(cell("ReplicaSet", &no_selector, "Desired"), 1);

        let ds = json!({
            "metadata": {"name": "agent", "creationTimestamp": ago(600)},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"},
                                           "containers": [{"name": "a", "image": "agent:1"}]}}},
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2,
                       "updatedNumberScheduled": 3, "numberAvailable": 2},
        });
        assert_eq!(
            row("DaemonSet", ds),
            vec![
                json!("agent"),
                json!(3),
                json!(3),
                json!(2),
                json!(3),
                json!(2),
                json!("kubernetes.io/os=linux"),
                json!("10m"),
                json!("a"),
                json!("agent:1"),
                json!("app=agent"),
            ]
        );
        let bare = json!({});
        assert_eq!(cell("DaemonSet", &bare, "Node Selector"), "<none>");

        let sts = json!({
            "metadata": {"name": "db", "creationTimestamp": ago(7200)},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "pg", "image": "postgres:16"}]}}},
            "status": {"readyReplicas": 3},
        });
        assert_eq!(
            row("StatefulSet", sts),
            vec![
                json!("db"),
                json!("3/3"),
                json!("120m"),
                json!("pg"),
                json!("postgres:16")
            ]
        );
    }

    #[test]
    fn node_rows() {
        let node = |labels: Value, conditions: Value, unschedulable: bool| {
            json!({
                "metadata": {"name": "n1", "labels": labels, "creationTimestamp": ago(10 * 86400)},
                "spec": {"unschedulable": unschedulable},
                "status": {"conditions": conditions,
                           "addresses": [{"type": "Hostname", "address": "n1"},
                                         {"type": "InternalIP", "address": "192.168.1.10"}],
                           "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Debian GNU/Linux 12",
                                        "kernelVersion": "6.1.0", "containerRuntimeVersion": "containerd://2.0.0"}},
            })
        };
        let ready = json!([{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}]);
        let cells = row(
            "Node",
            node(
                json!({"node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/control-plane": "",
                       "kubernetes.io/role": "infra", "node-role.kubernetes.io/": "x"}),
                ready.clone(),
                false,
            ),
        );
        assert_eq!(
            cells,
            vec![
                json!("n1"),
                json!("Ready"),
                json!("control-plane,infra,worker"),
                json!("10d"),
                json!("v1.33.0"),
                json!("192.168.1.10"),
                json!("<none>"),
                json!("Debian GNU/Linux 12"),
                json!("6.1.0"),
                json!("containerd://2.0.0"),
            ]
        );
        let cases: &[(Value, bool, &str)] = &[
            (ready.clone(), true, "Ready,SchedulingDisabled"),
            (
                json!([{"type": "Ready", "status": "False"}]),
                false,
                "NotReady",
            ),
            (
                json!([{"type": "Ready", "status": "Unknown"}]),
                true,
                "NotReady,SchedulingDisabled",
            ),
            (json!([]), false, "Unknown"),
        ];
        for (conditions, unschedulable, want) in cases {
            let n = node(json!({}), conditions.clone(), *unschedulable);
            assert_eq!(cell("Node", &n, "Status"), *want);
            assert_eq!(cell("Node", &n, "Roles"), "<none>");
        }
        let bare = json!({"metadata": {"name": "n"}});
        assert_eq!(cell("Node", &bare, "OS-Image"), "<unknown>");
        assert_eq!(cell("Node", &bare, "Version"), "");
    }

    #[test]
    fn job_rows() {
        let job = |spec: Value, status: Value| {
            let mut spec = spec;
            spec["template"] = json!({"spec": {"containers": [{"name": "pi", "image": "perl"}]}});
            spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}});
            json!({"metadata": {"name": "pi", "creationTimestamp": ago(3600)}, "spec": spec, "status": status})
        };
        let cases: Vec<(&str, Value, [&str; 3])> = vec![
            (
                "complete",
                job(
                    json!({"completions": 1}),
                    json!({"succeeded": 1, "startTime": ago(3600), "completionTime": ago(3600 - 45),
                           "conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                                          {"type": "Complete", "status": "True"}]}),
                ),
                ["Complete", "1/1", "45s"],
            ),
            (
                "running",
                job(
                    json!({"completions": 5, "parallelism": 2}),
                    json!({"succeeded": 2, "startTime": ago(303)}),
                ),
                ["Running", "2/5", "5m3s"],
            ),
            (
                "failed",
                job(
                    json!({"completions": 1}),
                    json!({"failed": 6, "startTime": ago(600), "conditions": [
                        {"type": "FailureTarget", "status": "True"}, {"type": "Failed", "status": "True"}]}),
                ),
                ["Failed", "0/1", "10m"],
            ),
            (
                "suspended, not started",
                job(
                    json!({"completions": 1, "suspend": true}),
                    json!({"conditions": [{"type": "Suspended", "status": "True"}]}),
                ),
                ["Suspended", "0/1", ""],
            ),
            (
                "work queue with parallelism",
                job(
                    json!({"parallelism": 3}),
                    json!({"succeeded": 0, "startTime": ago(10)}),
                ),
                ["Running", "0/1 of 3", "10s"],
            ),
            (
                "failure target only",
                job(
                    json!({"completions": 1}),
                    json!({"conditions": [{"type": "FailureTarget", "status": "True"}]}),
                ),
                ["FailureTarget", "0/1", ""],
            ),
        ];
        for (name, obj, want) in cases {
            let cells = row("Job", obj);
            assert_eq!(cells[0], "pi", "{name}");
            assert_eq!(&cells[1..4], &want.map(Value::from), "{name}");
            assert_eq!(
                &cells[4..],
                &[
                    json!("60m"),
                    json!("pi"),
                    json!("perl"),
                    json!("batch.kubernetes.io/controller-uid=u1")
                ],
                "{name}"
            );
        }
        let mut deleting = job(json!({"completions": 1}), json!({}));
        deleting["metadata"]["deletionTimestamp"] = json!(ago(1));
        assert_eq!(cell("Job", &deleting, "Status"), "Terminating");
    }

    #[test]
    fn cron_job_row() {
        let cj = json!({
            "metadata": {"name": "backup", "creationTimestamp": ago(86400)},
            "spec": {"schedule": "*/5 * * * *", "suspend": false,
                     "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "backup:2"}]}}}}},
            "status": {"active": [{"name": "backup-1"}], "lastScheduleTime": ago(120)},
        });
        assert_eq!(
            row("CronJob", cj),
            vec![
                json!("backup"),
                json!("*/5 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(1),
                json!("2m"),
                json!("24h"),
                json!("b"),
                json!("backup:2"),
                json!("<none>"),
            ]
        );
        let tz = json!({"spec": {"timeZone": "Europe/Paris", "suspend": true}});
        assert_eq!(cell("CronJob", &tz, "Timezone"), "Europe/Paris");
        assert_eq!(cell("CronJob", &tz, "Suspend"), "True");
        assert_eq!(cell("CronJob", &tz, "Last Schedule"), "<none>");
        assert_eq!(cell("CronJob", &json!({}), "Suspend"), "<unset>");
    }

    #[test]
    fn endpoints_rows() {
        let ep = |subsets: Value| json!({"metadata": {"name": "e"}, "subsets": subsets});
        let addrs =
            |ips: &[&str]| Value::from(ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>());
        let cases: Vec<(Value, &str)> = vec![
            (json!(null), "<none>"),
            (json!([]), "<none>"),
            (
                json!([{"addresses": addrs(&["10.0.0.1", "10.0.0.2"]), "ports": [{"port": 80}]}]),
                "10.0.0.1:80,10.0.0.2:80",
            ),
            (
                json!([{"addresses": addrs(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]),
                        "ports": [{"port": 80}, {"port": 443}]}]),
                "10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 7 more...",
            ),
            (json!([{"addresses": addrs(&["10.0.0.7"])}]), "10.0.0.7"),
            (
                json!([{"addresses": addrs(&["fd00::1"]), "ports": [{"port": 53}]}]),
                "[fd00::1]:53",
            ),
            (
                json!([{"addresses": addrs(&["10.0.0.1", "10.0.0.2"]), "ports": [{"port": 80}]},
                       {"addresses": addrs(&["10.0.1.1", "10.0.1.2"]), "ports": [{"port": 8080}]}]),
                "10.0.0.1:80,10.0.0.2:80,10.0.1.1:8080 + 1 more...",
            ),
        ];
        for (subsets, want) in cases {
            assert_eq!(
                cell("Endpoints", &ep(subsets.clone()), "Endpoints"),
                want,
                "{subsets}"
            );
        }
    }

    #[test]
    fn endpoint_slice_row() {
        let slice = json!({
            "metadata": {"name": "web-x1", "creationTimestamp": ago(5)},
            "addressType": "IPv4",
            "ports": [{"port": 80, "name": "http"}, {"name": "metrics"}, {}, {"port": 9090}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2", "10.0.0.3"]}],
        });
        assert_eq!(
            row("EndpointSlice", slice),
            vec![
                json!("web-x1"),
                json!("IPv4"),
                json!("80,metrics,* + 1 more..."),
                json!("10.0.0.1,10.0.0.2,10.0.0.3"),
                json!("5s"),
            ]
        );
        let empty = json!({"addressType": "IPv6"});
        assert_eq!(cell("EndpointSlice", &empty, "Ports"), "<unset>");
        assert_eq!(cell("EndpointSlice", &empty, "Endpoints"), "<unset>");
    }

    #[test]
    fn small_kinds() {
        let created = ago(45);
        let meta = json!({"name": "x", "creationTimestamp": created});
        let cases: Vec<(&str, Value, Vec<Value>)> = vec![
            (
                "Namespace",
                json!({"metadata": meta}),
                vec![json!("x"), json!("Active"), json!("45s")],
            ),
            (
                "Namespace",
                json!({"metadata": meta, "status": {"phase": "Terminating"}}),
                vec![json!("x"), json!("Terminating"), json!("45s")],
            ),
            (
                "ConfigMap",
                json!({"metadata": meta, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}}),
                vec![json!("x"), json!(3), json!("45s")],
            ),
            (
                "Secret",
                json!({"metadata": meta, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}}),
                vec![
                    json!("x"),
                    json!("kubernetes.io/tls"),
                    json!(2),
                    json!("45s"),
                ],
            ),
            (
                "ServiceAccount",
                json!({"metadata": meta, "secrets": [{"name": "t"}]}),
                vec![json!("x"), json!(1), json!("45s")],
            ),
            (
                "ServiceAccount",
                json!({"metadata": meta}),
                vec![json!("x"), json!(0), json!("45s")],
            ),
            (
                "Lease",
                json!({"metadata": meta, "spec": {"holderIdentity": "master-1_abc"}}),
                vec![json!("x"), json!("master-1_abc"), json!("45s")],
            ),
            (
                "Lease",
                json!({"metadata": meta, "spec": {}}),
                vec![json!("x"), json!(""), json!("45s")],
            ),
            (
                "ControllerRevision",
                json!({"metadata": {"name": "x", "creationTimestamp": created, "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": "other", "controller": false},
                    {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "controller": true}]},
                       "revision": 4}),
                vec![
                    json!("x"),
                    json!("statefulset.apps/web"),
                    json!(4),
                    json!("45s"),
                ],
            ),
            (
                "ControllerRevision",
                json!({"metadata": meta, "revision": 1}),
                vec![json!("x"), json!("<none>"), json!(1), json!("45s")],
            ),
            (
                "Widget",
                json!({"metadata": {"name": "x", "creationTimestamp": "2024-06-01T13:30:00+01:00"}}),
                vec![json!("x"), json!("2024-06-01T12:30:00Z")],
            ),
            (
                "Widget",
                json!({}),
                vec![json!(""), json!("0001-01-01T00:00:00Z")],
            ),
        ];
        for (kind, obj, want) in cases {
            assert_eq!(row(kind, obj.clone()), want, "{kind} {obj}");
        }
        let widget = table("Widget", &[], IncludeObject::None, json!({}), now_system());
        assert_eq!(widget["columnDefinitions"][1]["name"], "Created At");
        assert_eq!(widget["columnDefinitions"][1]["type"], "date");
        assert_eq!(widget["rows"], json!([]));
    }

    #[test]
    fn event_rows() {
        let ev = json!({
            "metadata": {"name": "web.17d", "creationTimestamp": ago(300)},
            "involvedObject": {"kind": "Pod", "name": "web-1", "fieldPath": "spec.containers{app}"},
            "reason": "BackOff", "type": "Warning", "message": "  Back-off restarting failed container\n",
            "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": ago(300), "lastTimestamp": ago(20), "count": 7,
        });
        assert_eq!(
            row("Event", ev),
            vec![
                json!("20s"),
                json!("Warning"),
                json!("BackOff"),
                json!("pod/web-1"),
                json!("spec.containers{app}"),
                json!("kubelet, n1"),
                json!("Back-off restarting failed container"),
                json!("5m"),
                json!(7),
                json!("web.17d"),
            ]
        );
        // events.k8s.io style: eventTime, series, reporting controller, no count.
        let new_style = json!({
            "metadata": {"name": "e2"},
            "involvedObject": {"kind": "Node"},
            "eventTime": "2024-06-01T11:59:00.123456Z",
            "reportingComponent": "skiff-scheduler", "reason": "Scheduled", "type": "Normal",
        });
        let cells = row("Event", new_style);
        // 59.876544s: truncated, as kube does.
        assert_eq!(cells[0], "59s");
        assert_eq!(cells[3], "node");
        assert_eq!(cells[5], "skiff-scheduler");
        assert_eq!(cells[7], "59s");
        assert_eq!(cells[8], 1);
        let series =
            json!({"eventTime": ago(600), "series": {"count": 4, "lastObservedTime": ago(30)}});
        let cells = row("Event", series);
        assert_eq!(
            (cells[0].clone(), cells[8].clone()),
            (json!("30s"), json!(4))
        );
        let cols = columns("Event");
        assert_eq!(cols[0].name, "Last Seen");
        assert_eq!(
            (cols[9].name, cols[9].format, cols[9].priority),
            ("Name", "name", 1)
        );
    }

    /// Objects with fields of the wrong type, or not objects at all.
    fn garbage() -> Vec<Value> {
        vec![
            json!(null),
            json!(42),
            json!("pod"),
            json!([1, 2, 3]),
            json!({}),
            json!({"metadata": 5, "spec": "x", "status": [1]}),
            json!({"metadata": {"name": 7, "creationTimestamp": 12, "labels": [], "deletionTimestamp": false,
                                "ownerReferences": {"a": 1}},
                   "spec": {"replicas": "three", "containers": "nginx", "initContainers": [null, 4],
                            "ports": [{"port": "http", "nodePort": -5}, "x"], "selector": [1],
                            "template": {"spec": {"containers": [{"name": ["a"], "image": {}}],
                                                  "nodeSelector": "x"}},
                            "jobTemplate": 1, "readinessGates": [{}], "type": 3, "schedule": null,
                            "completions": 1.5e300, "parallelism": -1, "suspend": "yes",
                            "unschedulable": "no", "timeZone": 4, "holderIdentity": {}},
                   "status": {"containerStatuses": [{"state": {"terminated": "x"}}, 7,
                                                     {"state": {"waiting": {"reason": 5}}, "restartCount": "x",
                                                      "lastState": {"terminated": {"finishedAt": "never"}}}],
                              "initContainerStatuses": [{"state": {"terminated": {"exitCode": "1"}}}],
                              "conditions": "all good", "podIPs": [7], "phase": ["Running"],
                              "loadBalancer": {"ingress": [1, {"ip": null}]}, "active": 3,
                              "addresses": [{"type": "InternalIP"}], "startTime": "then",
                              "completionTime": ago(10), "lastScheduleTime": 5, "nodeInfo": []},
                   "subsets": [{"addresses": [1, {"ip": 2}], "ports": [{"port": 1.0}, "x"]}, 3],
                   "endpoints": [{"addresses": [1]}, 2], "ports": [3, {"port": null}],
                   "data": [1, 2], "binaryData": "x", "secrets": {}, "revision": "1",
                   "involvedObject": "pod", "series": 3, "count": -1, "source": [],
                   "firstTimestamp": "soon", "eventTime": 0, "message": 1}),
            json!({"metadata": {"deletionTimestamp": ago(1)},
                   "status": {"initContainerStatuses": [{"name": "i", "state": {"terminated": {}}},
                                                        {"state": {}}],
                              "conditions": [{"type": "Initialized", "status": "True"}, 1]},
                   "spec": {"selector": {"matchLabels": {"a": 1}}}}),
            json!({"spec": {"selector": {"matchExpressions": [{"key": "k", "operator": "In"}, 5]}}}),
            json!({"spec": {"selector": {"matchExpressions": {"key": "k"}}}}),
        ]
    }

    #[test]
    fn garbage_never_panics_and_rows_match_columns() {
        let kinds = [
            "Pod",
            "Service",
            "Endpoints",
            "Node",
            "Namespace",
            "ConfigMap",
            "Secret",
            "Event",
            "ServiceAccount",
            "Deployment",
            "ReplicaSet",
            "DaemonSet",
            "StatefulSet",
            "ControllerRevision",
            "Job",
            "CronJob",
            "EndpointSlice",
            "Lease",
            "Widget",
        ];
        let objects = garbage();
        for kind in kinds {
            for include in [
                IncludeObject::None,
                IncludeObject::Metadata,
                IncludeObject::Object,
            ] {
                let t = table(
                    kind,
                    &objects,
                    include,
                    json!("not an object"),
                    now_system(),
                );
                let width = t["columnDefinitions"].as_array().unwrap().len();
                assert_eq!(width, columns(kind).len());
                assert_eq!(t["metadata"], json!({}));
                for (i, r) in t["rows"].as_array().unwrap().iter().enumerate() {
                    let cells = r["cells"].as_array().unwrap();
                    assert_eq!(cells.len(), width, "{kind} garbage #{i}");
                    assert!(
                        cells
                            .iter()
                            .all(|c| c.is_string() || c.is_i64() || c.is_u64()),
                        "{kind} garbage #{i}: {cells:?}"
                    );
                }
                let rows = rows_table(kind, &objects, include, now_system());
                assert_eq!(rows["rows"].as_array().unwrap().len(), objects.len());
            }
        }
        // Metadata of a non-object still yields a PartialObjectMetadata.
        let t = table(
            "Pod",
            &[json!(3)],
            IncludeObject::Metadata,
            json!({}),
            now_system(),
        );
        assert_eq!(t["rows"][0]["object"]["metadata"], json!({}));
        // The garbage pod reads as unknown rather than failing.
        let cells = row("Pod", garbage()[6].clone());
        assert_eq!(cells[0], "");
        assert_eq!(cells[4], "<unknown>");
    }

    #[test]
    fn selectors() {
        let cases: Vec<(Value, &str)> = vec![
            (json!(null), "<none>"),
            (json!({}), "<none>"),
            (json!({"matchLabels": {"app": "web"}}), "app=web"),
            (
                json!({"matchExpressions": [
                    {"key": "tier", "operator": "NotIn", "values": ["cache", "db"]},
                    {"key": "env", "operator": "Exists"}]}),
                "env,tier notin (cache,db)",
            ),
            (
                json!({"matchExpressions": [{"key": "env", "operator": "Exists", "values": ["x"]}]}),
                "<error>",
            ),
            (
                json!({"matchExpressions": [{"key": "env", "operator": "In", "values": []}]}),
                "<error>",
            ),
            (json!("app=web"), "<error>"),
        ];
        for (selector, want) in cases {
            let sel = if selector.is_null() {
                None
            } else {
                Some(&selector)
            };
            assert_eq!(format_selector(sel), want, "{selector}");
        }
    }
}
