//! Service ClusterIP and NodePort allocation.
//!
//! Every allocated item is one store key, written with `create`, which fails if the key exists:
//!
//! - `/registry/skiff/ipallocations/<ipv4>` for a ClusterIP (`.../10.96.0.10`),
//! - `/registry/skiff/nodeportallocations/<port>` for a NodePort (`.../30080`),
//!
//! each holding a small JSON record naming the owner service and when the key was written:
//! `{"namespace":"default","name":"web","uid":"…","allocatedAt":1700000000}` (unix seconds).
//! Because `create` is atomic on both backends, two allocators (in one master or in several
//! masters sharing an etcd) can never both get an item, and an allocation survives restarts.
//! No real resource is called `skiff`, so these keys never appear in a resource's list.
//!
//! Allocation picks a random item first (so concurrent allocators rarely race for the same key);
//! after a few collisions it reads which keys exist and walks the range from a random offset,
//! trying each free item, and reports the range full once every item has been tried.
//!
//! In the service range, the network and broadcast addresses are never handed out, and the first
//! address after the network (`10.96.0.1` in `10.96.0.0/12`) belongs to the `kubernetes` Service:
//! it is allocated only when a service asks for it by name.
//!
//! The caller writes the service after allocating and must release what it took if that write
//! fails, and release what a deleted service held. A crash in between leaks keys; [`Allocator::repair`]
//! (at start-up and periodically) frees keys whose owner no longer holds the item, once they are
//! older than a grace period (so an allocation whose service is still being written is not
//! freed), and writes keys for items that services hold without one.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::store::{self, KeyValue, RangeRequest, Store};

/// Where ClusterIP allocations live: one key per address.
pub const IP_ALLOCATIONS_PREFIX: &str = "/registry/skiff/ipallocations/";
/// Where NodePort allocations live: one key per port.
pub const NODE_PORT_ALLOCATIONS_PREFIX: &str = "/registry/skiff/nodeportallocations/";
/// How long [`Allocator::repair`] leaves an unowned key alone: the window in which a service
/// may have allocated but not yet been written.
pub const DEFAULT_REPAIR_GRACE: Duration = Duration::from_secs(5 * 60);
/// The shortest and longest service ranges accepted. /12 is kube-apiserver's limit (2^20
/// addresses); a /29 leaves five addresses to hand out.
pub const MIN_PREFIX: u8 = 12;
pub const MAX_PREFIX: u8 = 29;

/// Random picks tried before reading which items are taken.
const BLIND_PROBES: u64 = 3;
/// Page size when reading allocation keys and services.
const PAGE: usize = 1000;

/// Why an allocation failed. `Invalid` and `AlreadyAllocated` are the API's 422 causes (with
/// `field`), `Full` is a 500 as in kube-apiserver, `Store` maps as store errors do.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },

    #[error("{field}: {message}")]
    AlreadyAllocated { field: String, message: String },

    #[error("{0}")]
    Full(String),

    #[error(transparent)]
    Store(#[from] store::Error),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> AllocError {
    AllocError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A bad `--service-cluster-ip-range` or `--service-node-port-range`.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    #[error("{value:?} is not an IPv4 CIDR like 10.96.0.0/12")]
    NotCidr { value: String },

    #[error("{value:?} has host bits set; the network is {network}")]
    HostBits { value: String, network: String },

    #[error("{value:?} has prefix /{prefix}; the service range must be between /{MIN_PREFIX} and /{MAX_PREFIX}")]
    PrefixLength { value: String, prefix: u8 },

    #[error(
        "{value:?} is not a port range like 30000-32767 (first-last, 1 to 65535, first <= last)"
    )]
    NotPortRange { value: String },
}

/// An IPv4 service range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceCidr {
    network: u32,
    prefix: u8,
}

impl ServiceCidr {
    pub fn parse(value: &str) -> Result<ServiceCidr, RangeError> {
        let not_cidr = || RangeError::NotCidr {
            value: value.to_string(),
        };
        let (address, prefix) = value.trim().split_once('/').ok_or_else(not_cidr)?;
        let address: Ipv4Addr = address.parse().map_err(|_| not_cidr())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not_cidr());
        }
        let prefix: u8 = prefix.parse().map_err(|_| not_cidr())?;
        if prefix > 32 {
            return Err(not_cidr());
        }
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(RangeError::PrefixLength {
                value: value.to_string(),
                prefix,
            });
        }
        let mask = u32::MAX << (32 - prefix);
        let bits = u32::from(address);
        let cidr = ServiceCidr {
            network: bits & mask,
            prefix,
        };
        if bits & !mask != 0 {
            return Err(RangeError::HostBits {
                value: value.to_string(),
                network: cidr.to_string(),
            });
        }
        Ok(cidr)
    }

    fn broadcast(&self) -> u32 {
        self.network | (u32::MAX >> self.prefix)
    }

    /// The address reserved for the `kubernetes` Service (the first after the network).
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// True for addresses a service may hold: in the range, not the network or broadcast.
    pub fn allocatable(&self, ip: Ipv4Addr) -> bool {
        let bits = u32::from(ip);
        bits > self.network && bits < self.broadcast()
    }
}

impl fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

/// An inclusive NodePort range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn parse(value: &str) -> Result<PortRange, RangeError> {
        let not_range = || RangeError::NotPortRange {
            value: value.to_string(),
        };
        let (first, last) = value.trim().split_once('-').ok_or_else(not_range)?;
        let first: u16 = first.trim().parse().map_err(|_| not_range())?;
        let last: u16 = last.trim().parse().map_err(|_| not_range())?;
        if first == 0 || first > last {
            return Err(not_range());
        }
        Ok(PortRange { first, last })
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// What a service holds (or an allocation call took).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Allocation {
    pub ips: Vec<IpAddr>,
    pub node_ports: Vec<u16>,
}

impl Allocation {
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.node_ports.is_empty()
    }

    /// What `self` holds and `other` does not.
    fn minus(&self, other: &Allocation) -> Allocation {
        Allocation {
            ips: self
                .ips
                .iter()
                .filter(|ip| !other.ips.contains(ip))
                .copied()
                .collect(),
            node_ports: self
                .node_ports
                .iter()
                .filter(|p| !other.node_ports.contains(p))
                .copied()
                .collect(),
        }
    }
}

/// What [`Allocator::repair`] did for one kind of item.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairCounts {
    /// Keys deleted because no service holds the item any more.
    pub freed: usize,
    /// Keys written for items a service held without one.
    pub adopted: usize,
    /// Unowned keys left alone because they are younger than the grace period.
    pub pending: usize,
    /// Items held by a service while their key names another owner, or held by several
    /// services: a double allocation that repair cannot undo (logged as an error).
    pub conflicts: usize,
    /// Items services hold outside the configured range (the range changed); left alone.
    pub out_of_range: usize,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairReport {
    pub ips: RepairCounts,
    pub node_ports: RepairCounts,
}

/// The service an allocation key belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Owner {
    namespace: String,
    name: String,
    #[serde(default)]
    uid: String,
}

impl Owner {
    /// The owner named by a service's metadata (namespace defaults to `default`).
    fn of(service: &Value) -> Result<Owner, AllocError> {
        let meta = &service["metadata"];
        let name = meta["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            return Err(invalid("metadata.name", "Required value: name is required"));
        }
        Ok(Owner {
            namespace: meta["namespace"]
                .as_str()
                .filter(|ns| !ns.is_empty())
                .unwrap_or("default")
                .to_string(),
            name: name.to_string(),
            uid: meta["uid"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// Same service: same namespace and name, and the same uid when both know one.
    fn same_as(&self, other: &Owner) -> bool {
        self.namespace == other.namespace
            && self.name == other.name
            && (self.uid.is_empty() || other.uid.is_empty() || self.uid == other.uid)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service {}/{}", self.namespace, self.name)?;
        if !self.uid.is_empty() {
            write!(f, " (uid {})", self.uid)?;
        }
        Ok(())
    }
}

/// The value of an allocation key.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    owner: Owner,
    /// Unix seconds when the key was written.
    #[serde(rename = "allocatedAt", default)]
    allocated_at: Option<u64>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // Only spreads allocators apart; correctness never depends on it.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ip,
    Port,
}

/// One kind of item as store keys: items are numbers (IPv4 bits or ports), the dynamic ones
/// `first..=last`.
#[derive(Clone, Copy, Debug)]
struct Pool {
    kind: Kind,
    prefix: &'static str,
    first: u32,
    last: u32,
}

impl Pool {
    fn key(&self, item: u32) -> String {
        match self.kind {
            Kind::Ip => format!("{}{}", self.prefix, Ipv4Addr::from(item)),
            Kind::Port => format!("{}{}", self.prefix, item),
        }
    }

    /// The item a key stands for; `None` for keys this pool does not write.
    fn item(&self, key: &str) -> Option<u32> {
        let suffix = key.strip_prefix(self.prefix)?;
        let item = match self.kind {
            Kind::Ip => u32::from(suffix.parse::<Ipv4Addr>().ok()?),
            Kind::Port => u32::from(suffix.parse::<u16>().ok()?),
        };
        (self.key(item) == key).then_some(item)
    }

    fn show(&self, item: u32) -> String {
        match self.kind {
            Kind::Ip => Ipv4Addr::from(item).to_string(),
            Kind::Port => item.to_string(),
        }
    }

    fn what(&self) -> &'static str {
        match self.kind {
            Kind::Ip => "service IP",
            Kind::Port => "node port",
        }
    }
}

/// Hands out ClusterIPs and NodePorts, one store key per item.
pub struct Allocator {
    store: Arc<dyn Store>,
    cidr: ServiceCidr,
    node_ports: PortRange,
    ip_pool: Pool,
    port_pool: Pool,
    repair_grace: Duration,
}

impl Allocator {
    /// An allocator over `store` for the service range `cidr` (IPv4, like `10.96.0.0/12`) and
    /// the node port range `node_ports` (like `30000-32767`).
    pub fn new(store: Arc<dyn Store>, cidr: &str, node_ports: &str) -> anyhow::Result<Allocator> {
        let cidr = ServiceCidr::parse(cidr)
            .map_err(|e| anyhow::anyhow!("invalid service cluster IP range: {e}"))?;
        let node_ports = PortRange::parse(node_ports)
            .map_err(|e| anyhow::anyhow!("invalid service node port range: {e}"))?;
        Ok(Allocator {
            store,
            cidr,
            node_ports,
            ip_pool: Pool {
                kind: Kind::Ip,
                prefix: IP_ALLOCATIONS_PREFIX,
                // Not the network, not the kubernetes Service's address, not the broadcast.
                first: cidr.network + 2,
                last: cidr.broadcast() - 1,
            },
            port_pool: Pool {
                kind: Kind::Port,
                prefix: NODE_PORT_ALLOCATIONS_PREFIX,
                first: u32::from(node_ports.first),
                last: u32::from(node_ports.last),
            },
            repair_grace: DEFAULT_REPAIR_GRACE,
        })
    }

    /// Changes how old an unowned key must be before [`Allocator::repair`] frees it.
    pub fn with_repair_grace(mut self, grace: Duration) -> Allocator {
        self.repair_grace = grace;
        self
    }

    pub fn service_cidr(&self) -> ServiceCidr {
        self.cidr
    }

    pub fn node_port_range(&self) -> PortRange {
        self.node_ports
    }

    /// Fills `spec.clusterIP` (and `clusterIPs`) and `spec.ports[*].nodePort` (and
    /// `healthCheckNodePort`) of a Service about to be created. Values the user gave are
    /// allocated exactly or the call fails; headless (`clusterIP: None`) and ExternalName
    /// services get no IP. Returns what it took so the caller can release it if the write
    /// fails. On error nothing stays taken.
    pub async fn allocate(&self, service: &mut Value) -> Result<Allocation, AllocError> {
        let owner = Owner::of(service)?;
        let mut taken = Allocation::default();
        let result = self
            .allocate_into(service, &owner, &Value::Null, &mut taken)
            .await;
        self.settle(result, taken, &owner).await
    }

    /// For an update from `old` to `new` (`new` is changed in place): keeps old's cluster IP and
    /// node ports where `new` leaves them empty, allocates what `new` adds (node ports for new
    /// ports or a type change, an IP when leaving ExternalName), and drops type-dependent
    /// values `new` copied from `old` but no longer uses. Returns `(taken, to_release)`: release
    /// `taken` if the write fails, `to_release` once it succeeded. On error nothing stays taken.
    pub async fn reallocate(
        &self,
        old: &Value,
        new: &mut Value,
    ) -> Result<(Allocation, Allocation), AllocError> {
        let owner = Owner::of(new)?;
        let mut taken = Allocation::default();
        let result = self.allocate_into(new, &owner, old, &mut taken).await;
        let taken = self.settle(result, taken, &owner).await?;
        let to_release = allocation_of(old).minus(&allocation_of(new));
        Ok((taken, to_release))
    }

    /// Frees what a deleted service held (or what a failed write took). Idempotent: missing
    /// keys are fine. It does not check owners, so release an allocation once.
    pub async fn release(&self, allocation: &Allocation) -> Result<(), store::Error> {
        let ips = allocation.ips.iter().filter_map(|ip| match ip {
            IpAddr::V4(ip) => Some(self.ip_pool.key(u32::from(*ip))),
            IpAddr::V6(_) => None,
        });
        let ports = allocation
            .node_ports
            .iter()
            .map(|p| self.port_pool.key(u32::from(*p)));
        for key in ips.chain(ports) {
            match self.store.delete(&key, None).await {
                Ok(_) | Err(store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Repairs allocation keys against the stored services: frees keys whose owner (namespace,
    /// name, uid) is gone or no longer holds the item, once older than the grace period, and
    /// writes keys for items services hold without one. Run it at start-up and periodically.
    pub async fn repair(&self) -> Result<RepairReport, store::Error> {
        // Keys first, services second: a service written after the keys were read had its keys
        // before, so it is seen as an adoption that finds its own key, never as a free item.
        let ip_keys = self.range_all(IP_ALLOCATIONS_PREFIX).await?;
        let port_keys = self.range_all(NODE_PORT_ALLOCATIONS_PREFIX).await?;
        let services = self
            .range_all(&store::resource_prefix("services", None))
            .await?;

        let mut ip_holders: HashMap<u32, Vec<Owner>> = HashMap::new();
        let mut port_holders: HashMap<u32, Vec<Owner>> = HashMap::new();
        for kv in &services {
            let service: Value = match serde_json::from_slice(&kv.value) {
                Ok(service) => service,
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "cannot read a stored service; skipping it in allocation repair");
                    continue;
                }
            };
            let owner = match Owner::of(&service) {
                Ok(owner) => owner,
                Err(_) => continue,
            };
            let held = allocation_of(&service);
            for ip in held.ips {
                if let IpAddr::V4(ip) = ip {
                    ip_holders
                        .entry(u32::from(ip))
                        .or_default()
                        .push(owner.clone());
                }
            }
            for port in held.node_ports {
                port_holders
                    .entry(u32::from(port))
                    .or_default()
                    .push(owner.clone());
            }
        }

        let report = RepairReport {
            ips: self
                .repair_pool(&self.ip_pool, &ip_keys, &ip_holders)
                .await?,
            node_ports: self
                .repair_pool(&self.port_pool, &port_keys, &port_holders)
                .await?,
        };
        tracing::info!(?report, "repaired service IP and node port allocations");
        Ok(report)
    }

    async fn repair_pool(
        &self,
        pool: &Pool,
        keys: &[KeyValue],
        holders: &HashMap<u32, Vec<Owner>>,
    ) -> Result<RepairCounts, store::Error> {
        let mut counts = RepairCounts::default();
        let mut recorded = HashSet::new();
        let now = now_secs();
        for kv in keys {
            let Some(item) = pool.item(&kv.key) else {
                continue;
            };
            let record = serde_json::from_slice::<Record>(&kv.value).ok();
            let holding = holders.get(&item).map(Vec::as_slice).unwrap_or_default();
            match (&record, holding.first()) {
                (Some(record), _) if holding.iter().any(|h| h.same_as(&record.owner)) => {
                    recorded.insert(item);
                }
                (None, Some(holder)) => {
                    // An unreadable record for an item a service holds: rewrite it.
                    recorded.insert(item);
                    let value = record_bytes(holder);
                    match self
                        .store
                        .update(&kv.key, value, Some(kv.mod_revision))
                        .await
                    {
                        Ok(_) => counts.adopted += 1,
                        Err(store::Error::Conflict { .. } | store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                (Some(record), Some(holder)) => {
                    recorded.insert(item);
                    counts.conflicts += 1;
                    tracing::error!(
                        item = %pool.show(item), holder = %holder, key_owner = %record.owner,
                        "{} is held by a service but allocated to another", pool.what()
                    );
                }
                (_, None) => {
                    let age = record
                        .as_ref()
                        .and_then(|r| r.allocated_at)
                        .map(|at| now.saturating_sub(at));
                    if age.is_some_and(|age| age < self.repair_grace.as_secs()) {
                        counts.pending += 1;
                        continue;
                    }
                    match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                        Ok(_) => {
                            counts.freed += 1;
                            tracing::info!(
                                item = %pool.show(item),
                                owner = %record.as_ref().map(|r| r.owner.to_string()).unwrap_or_default(),
                                "freed a leaked {} allocation", pool.what()
                            );
                        }
                        Err(store::Error::Conflict { .. } | store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }

        for (&item, holding) in holders {
            if holding.len() > 1 {
                counts.conflicts += 1;
                let names: Vec<String> = holding.iter().map(Owner::to_string).collect();
                tracing::error!(item = %pool.show(item), holders = ?names, "{} is held by several services", pool.what());
            }
            if recorded.contains(&item) {
                continue;
            }
            let in_range = match pool.kind {
                Kind::Ip => self.cidr.allocatable(Ipv4Addr::from(item)),
                Kind::Port => u16::try_from(item).is_ok_and(|p| self.node_ports.contains(p)),
            };
            if !in_range {
                counts.out_of_range += 1;
                tracing::warn!(item = %pool.show(item), holder = %holding[0], "a service holds a {} outside the configured range", pool.what());
                continue;
            }
            let key = pool.key(item);
            match self.store.create(&key, record_bytes(&holding[0])).await {
                Ok(_) => counts.adopted += 1,
                Err(store::Error::AlreadyExists { .. }) => {
                    // Written since we read the keys: fine if it names this holder.
                    let current = self.store.get(&key).await?;
                    let owner = current
                        .and_then(|kv| serde_json::from_slice::<Record>(&kv.value).ok())
                        .map(|r| r.owner);
                    if !owner.is_some_and(|o| holding.iter().any(|h| h.same_as(&o))) {
                        counts.conflicts += 1;
                        tracing::error!(item = %pool.show(item), holder = %holding[0], "{} is held by a service but allocated to another", pool.what());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(counts)
    }

    /// Releases `taken` if `result` failed (logging a failed release), else returns it.
    async fn settle(
        &self,
        result: Result<(), AllocError>,
        taken: Allocation,
        owner: &Owner,
    ) -> Result<Allocation, AllocError> {
        match result {
            Ok(()) => Ok(taken),
            Err(e) => {
                if let Err(release) = self.release(&taken).await {
                    tracing::warn!(%owner, ?taken, error = %release, "cannot release allocations after a failed allocation; repair will free them");
                }
                Err(e)
            }
        }
    }

    /// Allocates for `service`, given what `old` held (`Value::Null` on create).
    async fn allocate_into(
        &self,
        service: &mut Value,
        owner: &Owner,
        old: &Value,
        taken: &mut Allocation,
    ) -> Result<(), AllocError> {
        let Some(object) = service.as_object_mut() else {
            return Err(invalid("", "a Service must be a JSON object"));
        };
        let spec = object
            .entry("spec")
            .or_insert_with(|| Value::Object(Map::new()));
        if spec.is_null() {
            *spec = Value::Object(Map::new());
        }
        let Some(spec) = spec.as_object_mut() else {
            return Err(invalid("spec", "must be an object"));
        };
        let old_spec = old["spec"].as_object();
        self.allocate_ip(spec, old_spec, owner, taken).await?;
        self.allocate_node_ports(spec, old_spec, owner, taken).await
    }

    async fn allocate_ip(
        &self,
        spec: &mut Map<String, Value>,
        old: Option<&Map<String, Value>>,
        owner: &Owner,
        taken: &mut Allocation,
    ) -> Result<(), AllocError> {
        let service_type = service_type(spec)?;
        let wanted = self.wanted_ip(spec)?;
        let previous = old.map(held_ip).unwrap_or(Wanted::Any);
        if service_type == "ExternalName" {
            return match wanted {
                // Left from the old type, or nothing: ExternalName services have no IP.
                Wanted::Ip(ip) if previous == Wanted::Ip(ip) => {
                    clear_ip(spec);
                    Ok(())
                }
                Wanted::Headless if previous == Wanted::Headless => {
                    clear_ip(spec);
                    Ok(())
                }
                Wanted::Any => {
                    clear_ip(spec);
                    Ok(())
                }
                _ => Err(invalid(
                    "spec.clusterIP",
                    "may not be set for ExternalName services",
                )),
            };
        }
        if wanted == Wanted::Headless && matches!(service_type, "NodePort" | "LoadBalancer") {
            return Err(invalid(
                "spec.clusterIP",
                format!("may not be set to 'None' for {service_type} services"),
            ));
        }
        let immutable = || {
            invalid(
                "spec.clusterIPs[0]",
                "may not change once set (field is immutable)",
            )
        };
        match (wanted, previous) {
            (Wanted::Any, Wanted::Ip(ip)) => set_ip(spec, &ip.to_string()),
            (Wanted::Any | Wanted::Headless, Wanted::Headless) => set_ip(spec, "None"),
            (Wanted::Headless, Wanted::Any) => set_ip(spec, "None"),
            (Wanted::Any, Wanted::Any) => {
                let item = self.next(&self.ip_pool, owner).await?;
                let ip = Ipv4Addr::from(item);
                taken.ips.push(IpAddr::V4(ip));
                set_ip(spec, &ip.to_string());
            }
            (Wanted::Ip(ip), Wanted::Ip(held)) if ip == held => set_ip(spec, &ip.to_string()),
            (Wanted::Ip(ip), Wanted::Any) => {
                let message = |why: &str| format!("failed to allocate IP {ip}: {why}");
                if !self.cidr.allocatable(ip) {
                    return Err(invalid(
                        "spec.clusterIPs",
                        message(&format!(
                            "the provided IP ({ip}) is not in the valid range. \
                             The range of valid IPs is {}",
                            self.cidr
                        )),
                    ));
                }
                if !self.take(&self.ip_pool, u32::from(ip), owner, true).await? {
                    return Err(AllocError::AlreadyAllocated {
                        field: "spec.clusterIPs".into(),
                        message: message("provided IP is already allocated"),
                    });
                }
                taken.ips.push(IpAddr::V4(ip));
                set_ip(spec, &ip.to_string());
            }
            _ => return Err(immutable()),
        }
        Ok(())
    }

    /// The cluster IP a spec asks for; checks the IP family fields (IPv4 single-stack only).
    fn wanted_ip(&self, spec: &Map<String, Value>) -> Result<Wanted, AllocError> {
        if let Some(families) = spec.get("ipFamilies").filter(|v| !v.is_null()) {
            let ok = families
                .as_array()
                .is_some_and(|f| f.len() <= 1 && f.iter().all(|f| f == "IPv4"));
            if !ok {
                return Err(invalid(
                    "spec.ipFamilies",
                    format!(
                        "only [\"IPv4\"] is supported: the service range is {}",
                        self.cidr
                    ),
                ));
            }
        }
        if spec.get("ipFamilyPolicy").and_then(Value::as_str) == Some("RequireDualStack") {
            return Err(invalid(
                "spec.ipFamilyPolicy",
                format!(
                    "dual-stack services are not supported: the service range is {}",
                    self.cidr
                ),
            ));
        }
        let single = match spec.get("clusterIP") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(invalid("spec.clusterIP", "must be a string")),
        };
        let listed = match spec.get("clusterIPs") {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) => {
                if list.len() > 1 {
                    return Err(invalid(
                        "spec.clusterIPs",
                        format!(
                            "dual-stack services are not supported: give at most one IP \
                             (the service range is {})",
                            self.cidr
                        ),
                    ));
                }
                match list.first() {
                    None => None,
                    Some(Value::String(s)) if s.is_empty() => None,
                    Some(Value::String(s)) => Some(s.as_str()),
                    Some(_) => return Err(invalid("spec.clusterIPs[0]", "must be a string")),
                }
            }
            Some(_) => return Err(invalid("spec.clusterIPs", "must be a list of strings")),
        };
        let chosen = match (single, listed) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(
                    "spec.clusterIPs[0]",
                    format!("must be the same as spec.clusterIP ({a:?})"),
                ))
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => return Ok(Wanted::Any),
        };
        if chosen == "None" {
            return Ok(Wanted::Headless);
        }
        match chosen.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Ok(Wanted::Ip(ip)),
            Ok(IpAddr::V6(_)) => Err(invalid(
                "spec.clusterIP",
                format!(
                    "Invalid value: {chosen:?}: IPv6 is not supported: the service range is {}",
                    self.cidr
                ),
            )),
            Err(_) => Err(invalid(
                "spec.clusterIP",
                format!("Invalid value: {chosen:?}: must be a valid IP address (e.g. 10.9.8.7)"),
            )),
        }
    }

    async fn allocate_node_ports(
        &self,
        spec: &mut Map<String, Value>,
        old: Option<&Map<String, Value>>,
        owner: &Owner,
        taken: &mut Allocation,
    ) -> Result<(), AllocError> {
        let service_type = service_type(spec)?;
        let held: HashSet<u16> = match old {
            Some(old) => allocation_of(&json!({ "spec": old })).node_ports,
            None => Vec::new(),
        }
        .into_iter()
        .collect();
        let may_have = matches!(service_type, "NodePort" | "LoadBalancer");
        let needs = needs_node_ports(spec, service_type);
        let wants_health_check = wants_health_check(spec, service_type);

        if let Some(old) = old {
            // Drop values copied from the old object that the new type no longer uses (kube's
            // dropTypeDependentFields), and keep old values the new object leaves empty where
            // both need node ports (kube's patchAllocatedValues, matching ports by name).
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for port in ports.iter_mut() {
                    let copied =
                        node_port_value(&port["nodePort"]).is_some_and(|p| held.contains(&p));
                    if !may_have && copied {
                        if let Some(port) = port.as_object_mut() {
                            port.remove("nodePort");
                        }
                    }
                }
            }
            let old_type = old
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            if needs && needs_node_ports(old, old_type) {
                let by_name: HashMap<&str, u16> = old
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        let node_port = node_port_value(&p["nodePort"])?;
                        Some((p["name"].as_str().unwrap_or_default(), node_port))
                    })
                    .collect();
                let ports = spec.get_mut("ports").and_then(Value::as_array_mut);
                if let Some(ports) = ports {
                    let in_use: HashSet<u16> = ports
                        .iter()
                        .filter_map(|p| node_port_value(&p["nodePort"]))
                        .collect();
                    for port in ports.iter_mut() {
                        let empty = port["nodePort"].is_null() || port["nodePort"] == 0;
                        let name = port["name"].as_str().unwrap_or_default();
                        if let (true, Some(&old_port)) = (empty, by_name.get(name)) {
                            if !in_use.contains(&old_port) {
                                if let Some(port) = port.as_object_mut() {
                                    port.insert("nodePort".into(), json!(old_port));
                                }
                            }
                        }
                    }
                }
            }
            let health_check = spec.get("healthCheckNodePort").and_then(node_port_value);
            let old_health_check = old.get("healthCheckNodePort").and_then(node_port_value);
            match (wants_health_check, health_check, old_health_check) {
                (false, Some(port), _) if held.contains(&port) => {
                    spec.remove("healthCheckNodePort");
                }
                (true, None, Some(port)) => {
                    spec.insert("healthCheckNodePort".into(), json!(port));
                }
                _ => {}
            }
        }

        let ports = ports_of(spec)?;
        // Node port → the protocols using it in this service; port number → its node port.
        let mut used: HashMap<u16, Vec<String>> = HashMap::new();
        let mut by_port: HashMap<i64, u16> = HashMap::new();
        for port in &ports {
            let Some(node_port) = port.node_port else {
                continue;
            };
            let field = format!("spec.ports[{}].nodePort", port.index);
            if !may_have {
                return Err(invalid(
                    field,
                    format!("may not be used when `type` is '{service_type}'"),
                ));
            }
            let protocols = used.entry(node_port).or_default();
            if protocols.contains(&port.protocol) {
                return Err(invalid(field, format!("Duplicate value: {node_port}")));
            }
            let first_use = protocols.is_empty();
            protocols.push(port.protocol.clone());
            by_port.entry(port.port).or_insert(node_port);
            if first_use && !held.contains(&node_port) {
                self.take_node_port(node_port, &field, owner, taken).await?;
            }
        }
        if needs {
            let mut assigned = Vec::new();
            for port in ports.iter().filter(|p| p.node_port.is_none()) {
                let shared = by_port.get(&port.port).copied().filter(|np| {
                    !used
                        .get(np)
                        .is_some_and(|protocols| protocols.contains(&port.protocol))
                });
                let node_port = match shared {
                    Some(node_port) => node_port,
                    None => {
                        let node_port = self.next_node_port(owner, taken).await?;
                        by_port.insert(port.port, node_port);
                        node_port
                    }
                };
                used.entry(node_port)
                    .or_default()
                    .push(port.protocol.clone());
                assigned.push((port.index, node_port));
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for (index, node_port) in assigned {
                    if let Some(port) = ports.get_mut(index).and_then(Value::as_object_mut) {
                        port.insert("nodePort".into(), json!(node_port));
                    }
                }
            }
        }

        let field = "spec.healthCheckNodePort";
        let health_check = match spec.get("healthCheckNodePort") {
            None | Some(Value::Null) => None,
            Some(value) if *value == 0 => None,
            Some(value) => Some(
                node_port_value(value).ok_or_else(|| invalid(field, self.port_out_of_range()))?,
            ),
        };
        match (wants_health_check, health_check) {
            (false, Some(_)) => {
                return Err(invalid(
                    field,
                    "may only be set when `type` is 'LoadBalancer' and \
                     `externalTrafficPolicy` is 'Local'",
                ))
            }
            (true, Some(port)) => {
                if used.contains_key(&port) {
                    return Err(invalid(
                        field,
                        format!("{port} is also a node port of this service"),
                    ));
                }
                if !held.contains(&port) {
                    self.take_node_port(port, field, owner, taken).await?;
                }
            }
            (true, None) => {
                let port = self.next_node_port(owner, taken).await?;
                spec.insert("healthCheckNodePort".into(), json!(port));
            }
            (false, None) => {}
        }
        Ok(())
    }

    fn port_out_of_range(&self) -> String {
        format!(
            "provided port is not in the valid range. The range of valid ports is {}",
            self.node_ports
        )
    }

    async fn take_node_port(
        &self,
        port: u16,
        field: &str,
        owner: &Owner,
        taken: &mut Allocation,
    ) -> Result<(), AllocError> {
        if !self.node_ports.contains(port) {
            return Err(invalid(field, self.port_out_of_range()));
        }
        if !self
            .take(&self.port_pool, u32::from(port), owner, true)
            .await?
        {
            return Err(AllocError::AlreadyAllocated {
                field: field.into(),
                message: "provided port is already allocated".into(),
            });
        }
        taken.node_ports.push(port);
        Ok(())
    }

    async fn next_node_port(
        &self,
        owner: &Owner,
        taken: &mut Allocation,
    ) -> Result<u16, AllocError> {
        let item = self.next(&self.port_pool, owner).await?;
        let port = u16::try_from(item).map_err(|_| {
            AllocError::Store(store::Error::Internal(format!(
                "node port {item} out of range"
            )))
        })?;
        taken.node_ports.push(port);
        Ok(port)
    }

    /// Takes a free dynamic item: a few random picks, then a walk over the items not taken
    /// from a random offset. `Full` once every item was tried.
    async fn next(&self, pool: &Pool, owner: &Owner) -> Result<u32, AllocError> {
        let full = || {
            let range = match pool.kind {
                Kind::Ip => self.cidr.to_string(),
                Kind::Port => self.node_ports.to_string(),
            };
            AllocError::Full(format!(
                "failed to allocate a {}: range {range} is full",
                pool.what()
            ))
        };
        if pool.last < pool.first {
            return Err(full());
        }
        let count = u64::from(pool.last - pool.first) + 1;
        for _ in 0..BLIND_PROBES.min(count) {
            let item = pool.first + (random_u64() % count) as u32;
            if self.take(pool, item, owner, false).await? {
                return Ok(item);
            }
        }
        let existing: HashSet<u32> = self
            .range_all(pool.prefix)
            .await?
            .iter()
            .filter_map(|kv| pool.item(&kv.key))
            .collect();
        let start = random_u64() % count;
        for step in 0..count {
            let item = pool.first + ((start + step) % count) as u32;
            if existing.contains(&item) {
                continue;
            }
            if self.take(pool, item, owner, false).await? {
                return Ok(item);
            }
        }
        Err(full())
    }

    /// Writes the key for `item`. False if it is taken — unless `own_ok` and the key already
    /// names this very service (same uid): a leftover of an earlier attempt, taken again.
    async fn take(
        &self,
        pool: &Pool,
        item: u32,
        owner: &Owner,
        own_ok: bool,
    ) -> Result<bool, store::Error> {
        let key = pool.key(item);
        match self.store.create(&key, record_bytes(owner)).await {
            Ok(_) => Ok(true),
            Err(store::Error::AlreadyExists { .. }) if own_ok && !owner.uid.is_empty() => {
                let current = self.store.get(&key).await?;
                Ok(current
                    .and_then(|kv| serde_json::from_slice::<Record>(&kv.value).ok())
                    .is_some_and(|r| r.owner == *owner))
            }
            Err(store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every key under `prefix`, read in pages at one revision.
    async fn range_all(&self, prefix: &str) -> Result<Vec<KeyValue>, store::Error> {
        let mut kvs = Vec::new();
        let mut continue_token = None;
        loop {
            let page = self
                .store
                .range(RangeRequest {
                    prefix: prefix.to_string(),
                    limit: Some(PAGE),
                    continue_token: continue_token.take(),
                    revision: None,
                    skip_count: true,
                })
                .await?;
            kvs.extend(page.kvs);
            match page.continue_token {
                Some(token) => continue_token = Some(token),
                None => return Ok(kvs),
            }
        }
    }
}

fn record_bytes(owner: &Owner) -> Bytes {
    let record = Record {
        owner: owner.clone(),
        allocated_at: Some(now_secs()),
    };
    Bytes::from(serde_json::to_vec(&record).unwrap_or_default())
}

/// What a spec asks for (or an old spec held) as its cluster IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    /// Nothing given: allocate one (or, on update, keep the old one).
    Any,
    /// `None`: a headless service.
    Headless,
    Ip(Ipv4Addr),
}

/// The cluster IP an already stored spec holds.
fn held_ip(spec: &Map<String, Value>) -> Wanted {
    let ip = spec.get("clusterIP").and_then(Value::as_str).or_else(|| {
        spec.get("clusterIPs")
            .and_then(|l| l.get(0))
            .and_then(Value::as_str)
    });
    match ip {
        Some("None") => Wanted::Headless,
        Some(ip) => match ip.parse() {
            Ok(ip) => Wanted::Ip(ip),
            Err(_) => Wanted::Any,
        },
        None => Wanted::Any,
    }
}

fn set_ip(spec: &mut Map<String, Value>, ip: &str) {
    spec.insert("clusterIP".into(), json!(ip));
    spec.insert("clusterIPs".into(), json!([ip]));
    spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
    spec.entry("ipFamilyPolicy")
        .or_insert_with(|| json!("SingleStack"));
}

fn clear_ip(spec: &mut Map<String, Value>) {
    for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        spec.remove(field);
    }
}

fn service_type(spec: &Map<String, Value>) -> Result<&'static str, AllocError> {
    match spec.get("type") {
        None | Some(Value::Null) => Ok("ClusterIP"),
        Some(Value::String(s)) => match s.as_str() {
            "" | "ClusterIP" => Ok("ClusterIP"),
            "NodePort" => Ok("NodePort"),
            "LoadBalancer" => Ok("LoadBalancer"),
            "ExternalName" => Ok("ExternalName"),
            other => Err(invalid(
                "spec.type",
                format!(
                    "Unsupported value: {other:?}: supported values: \"ClusterIP\", \
                     \"ExternalName\", \"LoadBalancer\", \"NodePort\""
                ),
            )),
        },
        Some(_) => Err(invalid("spec.type", "must be a string")),
    }
}

/// NodePort services, and LoadBalancer ones unless `allocateLoadBalancerNodePorts: false`.
fn needs_node_ports(spec: &Map<String, Value>, service_type: &str) -> bool {
    match service_type {
        "NodePort" => true,
        "LoadBalancer" => spec.get("allocateLoadBalancerNodePorts") != Some(&Value::Bool(false)),
        _ => false,
    }
}

fn wants_health_check(spec: &Map<String, Value>, service_type: &str) -> bool {
    service_type == "LoadBalancer"
        && spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
}

fn node_port_value(value: &Value) -> Option<u16> {
    value
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

struct PortSpec {
    index: usize,
    port: i64,
    protocol: String,
    node_port: Option<u16>,
}

fn ports_of(spec: &Map<String, Value>) -> Result<Vec<PortSpec>, AllocError> {
    let Some(ports) = spec.get("ports").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(ports) = ports.as_array() else {
        return Err(invalid("spec.ports", "must be a list"));
    };
    ports
        .iter()
        .enumerate()
        .map(|(index, port)| {
            let node_port = match &port["nodePort"] {
                Value::Null => None,
                value if *value == 0 => None,
                value => Some(node_port_value(value).ok_or_else(|| {
                    invalid(
                        format!("spec.ports[{index}].nodePort"),
                        format!("Invalid value: {value}: must be between 1 and 65535, inclusive"),
                    )
                })?),
            };
            Ok(PortSpec {
                index,
                port: port["port"].as_i64().unwrap_or_default(),
                protocol: port["protocol"].as_str().unwrap_or("TCP").to_string(),
                node_port,
            })
        })
        .collect()
}

/// What a stored service holds: its cluster IPs and its node ports (including the
/// health-check node port).
pub fn allocation_of(service: &Value) -> Allocation {
    let spec = &service["spec"];
    let mut held = Allocation::default();
    let listed = spec["clusterIPs"].as_array().into_iter().flatten();
    for ip in listed.chain(std::iter::once(&spec["clusterIP"])) {
        if let Some(Ok(ip)) = ip.as_str().map(str::parse::<IpAddr>) {
            if !held.ips.contains(&ip) {
                held.ips.push(ip);
            }
        }
    }
    let ports = spec["ports"].as_array().into_iter().flatten();
    for value in ports
        .map(|p| &p["nodePort"])
        .chain(std::iter::once(&spec["healthCheckNodePort"]))
    {
        if let Some(port) = node_port_value(value) {
            if !held.node_ports.contains(&port) {
                held.node_ports.push(port);
            }
        }
    }
    held
}

#[cfg(test)]
mod tests {
    //! Each case runs on the embedded store and on a real etcd (`allocator::tests::embedded::*`,
    //! `allocator::tests::etcd::*`). `second` is another handle on the same data: the same
    //! store for the embedded backend, a second client connection (another master) for etcd.

    use std::collections::BTreeSet;

    use super::*;

    struct Harness {
        store: Arc<dyn Store>,
        second: Arc<dyn Store>,
        _keep: Box<dyn std::any::Any + Send>,
    }

    impl Harness {
        async fn embedded() -> Harness {
            let dir = tempfile::tempdir().expect("temporary directory");
            let store: Arc<dyn Store> = Arc::new(
                store::embedded::EmbeddedStore::open(&dir.path().join("state.redb"))
                    .expect("open embedded store"),
            );
            Harness {
                second: store.clone(),
                store,
                _keep: Box::new(dir),
            }
        }

        async fn etcd() -> Harness {
            let etcd = crate::testing::Etcd::start()
                .await
                .expect("start etcd (is it installed? run cluster/install-deps.sh)");
            let connect = || async {
                let store = store::etcd::EtcdStore::connect(&etcd.endpoints(), Default::default())
                    .await
                    .expect("connect to etcd");
                Arc::new(store) as Arc<dyn Store>
            };
            Harness {
                store: connect().await,
                second: connect().await,
                _keep: Box::new(etcd),
            }
        }
    }

    macro_rules! on_both_backends {
        ($($case:ident),* $(,)?) => {
            mod embedded {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $case() {
                        let h = super::Harness::embedded().await;
                        super::$case(h.store.clone(), h.second.clone()).await;
                    }
                )*
            }
            mod etcd {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $case() {
                        let h = super::Harness::etcd().await;
                        super::$case(h.store.clone(), h.second.clone()).await;
                    }
                )*
            }
        };
    }

    on_both_backends!(
        many_allocations_are_distinct_and_avoid_reserved_addresses,
        concurrent_allocators_never_hand_out_an_item_twice,
        explicit_cluster_ips,
        headless_and_external_name_services_get_no_ip,
        node_ports,
        release_then_reuse,
        a_second_master_sees_every_allocation,
        repair_frees_orphans_and_adopts_unrecorded_services,
        updates_keep_add_and_release,
    );

    const PORTS: &str = "30000-32767";

    fn allocator(store: &Arc<dyn Store>, cidr: &str, ports: &str) -> Allocator {
        Allocator::new(store.clone(), cidr, ports).expect("valid ranges")
    }

    fn service(name: &str, service_type: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"namespace": "default", "name": name, "uid": format!("uid-{name}")},
            "spec": {"type": service_type, "ports": [{"port": 80, "protocol": "TCP"}]},
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cluster_ip(service: &Value) -> &str {
        service["spec"]["clusterIP"].as_str().unwrap_or_default()
    }

    fn node_port(service: &Value, index: usize) -> Option<u64> {
        service["spec"]["ports"][index]["nodePort"].as_u64()
    }

    /// Stores a service as the API would after a successful create.
    async fn put(store: &Arc<dyn Store>, service: &Value) {
        let key = store::object_key(
            "services",
            service["metadata"]["namespace"].as_str(),
            service["metadata"]["name"].as_str().unwrap(),
        );
        let value = Bytes::from(serde_json::to_vec(service).unwrap());
        match store.get(&key).await.unwrap() {
            Some(kv) => store.update(&key, value, Some(kv.mod_revision)).await,
            None => store.create(&key, value).await,
        }
        .unwrap();
    }

    async fn keys(store: &Arc<dyn Store>, prefix: &str) -> BTreeSet<String> {
        let response = store
            .range(RangeRequest {
                prefix: prefix.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        response.kvs.into_iter().map(|kv| kv.key).collect()
    }

    /// Asserts the error's variant (`Invalid`, `AlreadyAllocated`, `Full`), field and message.
    #[track_caller]
    fn check_err<T: fmt::Debug>(
        result: Result<T, AllocError>,
        variant: &str,
        field: &str,
        fragment: &str,
    ) {
        let error = result.expect_err("allocation should fail");
        let (got_variant, got_field) = match &error {
            AllocError::Invalid { field, .. } => ("Invalid", field.as_str()),
            AllocError::AlreadyAllocated { field, .. } => ("AlreadyAllocated", field.as_str()),
            AllocError::Full(_) => ("Full", ""),
            AllocError::Store(_) => ("Store", ""),
        };
        assert_eq!((got_variant, got_field), (variant, field), "{error}");
        assert!(error.to_string().contains(fragment), "{error}");
    }

    async fn many_allocations_are_distinct_and_avoid_reserved_addresses(
        store: Arc<dyn Store>,
        _: Arc<dyn Store>,
    ) {
        let a = allocator(&store, "10.96.0.0/24", "30000-30299");
        let mut ips = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for i in 0..200 {
            let mut svc = service(&format!("s{i}"), "NodePort");
            let taken = a.allocate(&mut svc).await.unwrap();
            let got = ip(cluster_ip(&svc));
            assert_eq!(taken.ips, vec![got]);
            assert_eq!(svc["spec"]["clusterIPs"], json!([got.to_string()]));
            assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4"]));
            assert_eq!(taken, allocation_of(&svc));
            assert!(ips.insert(got), "{got} handed out twice");
            let port = node_port(&svc, 0).unwrap();
            assert!((30000..=30299).contains(&port));
            assert!(ports.insert(port), "{port} handed out twice");
        }
        for reserved in ["10.96.0.0", "10.96.0.1", "10.96.0.255"] {
            assert!(!ips.contains(&ip(reserved)), "{reserved} handed out");
        }
        assert_eq!(keys(&store, IP_ALLOCATIONS_PREFIX).await.len(), 200);
        let kv = store
            .get(&format!("{IP_ALLOCATIONS_PREFIX}{}", ips.first().unwrap()))
            .await
            .unwrap()
            .unwrap();
        let record: Value = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(record["namespace"], "default");
        assert!(record["uid"].as_str().unwrap().starts_with("uid-s"));
        // Allocation keys never show up in a resource's list.
        assert!(keys(&store, &store::resource_prefix("services", None))
            .await
            .is_empty());
    }

    async fn concurrent_allocators_never_hand_out_an_item_twice(
        store: Arc<dyn Store>,
        second: Arc<dyn Store>,
    ) {
        // A /28 has 13 dynamic addresses (.2 to .14); 13 node ports: every allocator collides.
        let allocators = [
            Arc::new(allocator(&store, "10.96.0.0/28", "30000-30012")),
            Arc::new(allocator(&second, "10.96.0.0/28", "30000-30012")),
        ];
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let a = allocators[i % 2].clone();
                tokio::spawn(async move {
                    let mut svc = service(&format!("s{i}"), "NodePort");
                    a.allocate(&mut svc).await.map(|taken| (taken, svc))
                })
            })
            .collect();
        let mut ips = BTreeSet::new();
        let mut ports = BTreeSet::new();
        let mut full = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok((taken, svc)) => {
                    let got = ip(cluster_ip(&svc));
                    assert_eq!(taken.ips, vec![got]);
                    assert!(ips.insert(got), "{got} handed out twice");
                    let port = node_port(&svc, 0).unwrap();
                    assert!(ports.insert(port), "{port} handed out twice");
                }
                Err(AllocError::Full(message)) => {
                    assert!(message.contains("range 10.96.0.0/28 is full"), "{message}");
                    full += 1;
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        let expected: BTreeSet<IpAddr> = (2..=14).map(|i| ip(&format!("10.96.0.{i}"))).collect();
        assert_eq!(ips, expected);
        assert_eq!(ports.len(), 13);
        assert_eq!(full, 64 - 13);
        // Failed allocations left nothing behind.
        assert_eq!(keys(&store, IP_ALLOCATIONS_PREFIX).await.len(), 13);
        assert_eq!(keys(&store, NODE_PORT_ALLOCATIONS_PREFIX).await.len(), 13);
        // The kubernetes Service's address is still there for whoever asks for it.
        let mut kubernetes = service("kubernetes", "ClusterIP");
        kubernetes["spec"]["clusterIP"] = json!("10.96.0.1");
        allocators[1].allocate(&mut kubernetes).await.unwrap();
        let mut one_more = service("late", "ClusterIP");
        check_err(
            allocators[0].allocate(&mut one_more).await,
            "Full",
            "",
            "failed to allocate a service IP: range 10.96.0.0/28 is full",
        );
    }

    async fn explicit_cluster_ips(store: Arc<dyn Store>, _: Arc<dyn Store>) {
        let a = allocator(&store, "10.96.0.0/16", PORTS);
        let with_ip = |name: &str, ip: &str| {
            let mut svc = service(name, "ClusterIP");
            svc["spec"]["clusterIP"] = json!(ip);
            svc
        };
        let mut svc = with_ip("a", "10.96.3.4");
        let taken = a.allocate(&mut svc).await.unwrap();
        assert_eq!(taken.ips, vec![ip("10.96.3.4")]);
        assert_eq!(svc["spec"]["clusterIPs"], json!(["10.96.3.4"]));

        // Given only in clusterIPs.
        let mut svc = service("b", "ClusterIP");
        svc["spec"]["clusterIPs"] = json!(["10.96.3.5"]);
        a.allocate(&mut svc).await.unwrap();
        assert_eq!(cluster_ip(&svc), "10.96.3.5");

        check_err(
            a.allocate(&mut with_ip("c", "10.96.3.4")).await,
            "AlreadyAllocated",
            "spec.clusterIPs",
            "failed to allocate IP 10.96.3.4: provided IP is already allocated",
        );
        for outside in ["10.97.0.1", "10.96.0.0", "10.96.255.255"] {
            check_err(
                a.allocate(&mut with_ip("c", outside)).await,
                "Invalid",
                "spec.clusterIPs",
                "is not in the valid range. The range of valid IPs is 10.96.0.0/16",
            );
        }
        check_err(
            a.allocate(&mut with_ip("c", "10.96.0.300")).await,
            "Invalid",
            "spec.clusterIP",
            "must be a valid IP address",
        );
        check_err(
            a.allocate(&mut with_ip("c", "fd00::1")).await,
            "Invalid",
            "spec.clusterIP",
            "IPv6 is not supported",
        );
        let mut mismatch = with_ip("c", "10.96.9.9");
        mismatch["spec"]["clusterIPs"] = json!(["10.96.9.8"]);
        check_err(
            a.allocate(&mut mismatch).await,
            "Invalid",
            "spec.clusterIPs[0]",
            "must be the same as spec.clusterIP",
        );
        let mut dual = service("c", "ClusterIP");
        dual["spec"]["clusterIPs"] = json!(["10.96.9.9", "fd00::9"]);
        check_err(
            a.allocate(&mut dual).await,
            "Invalid",
            "spec.clusterIPs",
            "dual-stack",
        );
        let mut v6 = service("c", "ClusterIP");
        v6["spec"]["ipFamilies"] = json!(["IPv6"]);
        check_err(
            a.allocate(&mut v6).await,
            "Invalid",
            "spec.ipFamilies",
            "IPv4",
        );

        // The kubernetes Service's address only when asked for, and only once.
        a.allocate(&mut with_ip("kubernetes", "10.96.0.1"))
            .await
            .unwrap();
        check_err(
            a.allocate(&mut with_ip("c", "10.96.0.1")).await,
            "AlreadyAllocated",
            "spec.clusterIPs",
            "already allocated",
        );
        // A retry for the same service (same uid) may take its own leftover key again.
        a.allocate(&mut with_ip("a", "10.96.3.4")).await.unwrap();
        assert_eq!(keys(&store, IP_ALLOCATIONS_PREFIX).await.len(), 3);
    }

    async fn headless_and_external_name_services_get_no_ip(
        store: Arc<dyn Store>,
        _: Arc<dyn Store>,
    ) {
        let a = allocator(&store, "10.96.0.0/16", PORTS);
        let mut headless = service("h", "ClusterIP");
        headless["spec"]["clusterIP"] = json!("None");
        let taken = a.allocate(&mut headless).await.unwrap();
        assert!(taken.is_empty());
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));

        let mut external = service("e", "ExternalName");
        external["spec"]["externalName"] = json!("example.com");
        let taken = a.allocate(&mut external).await.unwrap();
        assert!(taken.is_empty());
        assert!(external["spec"].get("clusterIP").is_none());
        assert!(allocation_of(&external).is_empty());

        let mut external = service("e2", "ExternalName");
        external["spec"]["clusterIP"] = json!("10.96.0.9");
        check_err(
            a.allocate(&mut external).await,
            "Invalid",
            "spec.clusterIP",
            "may not be set for ExternalName services",
        );
        let mut headless_node_port = service("h2", "NodePort");
        headless_node_port["spec"]["clusterIP"] = json!("None");
        check_err(
            a.allocate(&mut headless_node_port).await,
            "Invalid",
            "spec.clusterIP",
            "may not be set to 'None' for NodePort services",
        );
        check_err(
            a.allocate(&mut service("t", "Bogus")).await,
            "Invalid",
            "spec.type",
            "Unsupported value",
        );
        assert!(keys(&store, IP_ALLOCATIONS_PREFIX).await.is_empty());
        assert!(keys(&store, NODE_PORT_ALLOCATIONS_PREFIX).await.is_empty());
    }

    async fn node_ports(store: Arc<dyn Store>, _: Arc<dyn Store>) {
        let a = allocator(&store, "10.96.0.0/16", PORTS);
        let mut svc = service("a", "NodePort");
        svc["spec"]["ports"][0]["nodePort"] = json!(30080);
        let taken = a.allocate(&mut svc).await.unwrap();
        assert_eq!(taken.node_ports, vec![30080]);

        let mut other = service("b", "NodePort");
        other["spec"]["ports"][0]["nodePort"] = json!(30080);
        check_err(
            a.allocate(&mut other).await,
            "AlreadyAllocated",
            "spec.ports[0].nodePort",
            "provided port is already allocated",
        );
        other["spec"]["ports"][0]["nodePort"] = json!(8080);
        check_err(
            a.allocate(&mut other).await,
            "Invalid",
            "spec.ports[0].nodePort",
            "provided port is not in the valid range. The range of valid ports is 30000-32767",
        );
        let mut cluster_ip_with_port = service("c", "ClusterIP");
        cluster_ip_with_port["spec"]["ports"][0]["nodePort"] = json!(30081);
        check_err(
            a.allocate(&mut cluster_ip_with_port).await,
            "Invalid",
            "spec.ports[0].nodePort",
            "may not be used when `type` is 'ClusterIP'",
        );
        // Failures took the cluster IP first and gave it back.
        assert_eq!(keys(&store, IP_ALLOCATIONS_PREFIX).await.len(), 1);
        assert_eq!(keys(&store, NODE_PORT_ALLOCATIONS_PREFIX).await.len(), 1);

        // TCP and UDP on one port number share a node port; another port gets its own.
        let mut dns = service("dns", "NodePort");
        dns["spec"]["ports"] = json!([
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "dns-udp", "port": 53, "protocol": "UDP"},
            {"name": "metrics", "port": 9153, "protocol": "TCP"},
        ]);
        let taken = a.allocate(&mut dns).await.unwrap();
        assert_eq!(node_port(&dns, 0), node_port(&dns, 1));
        assert_ne!(node_port(&dns, 0), node_port(&dns, 2));
        assert_eq!(taken.node_ports.len(), 2);

        // LoadBalancer: node ports unless turned off; a health-check port with Local traffic.
        let mut lb = service("lb", "LoadBalancer");
        lb["spec"]["externalTrafficPolicy"] = json!("Local");
        let taken = a.allocate(&mut lb).await.unwrap();
        assert_eq!(taken.node_ports.len(), 2);
        let health = lb["spec"]["healthCheckNodePort"].as_u64().unwrap();
        assert_ne!(Some(health), node_port(&lb, 0));
        assert_eq!(taken, allocation_of(&lb));
        let mut bare = service("lb2", "LoadBalancer");
        bare["spec"]["allocateLoadBalancerNodePorts"] = json!(false);
        let taken = a.allocate(&mut bare).await.unwrap();
        assert!(taken.node_ports.is_empty());
        assert_eq!(node_port(&bare, 0), None);
        let mut stray = service("s", "NodePort");
        stray["spec"]["healthCheckNodePort"] = json!(31000);
        check_err(
            a.allocate(&mut stray).await,
            "Invalid",
            "spec.healthCheckNodePort",
            "may only be set",
        );
    }

    async fn release_then_reuse(store: Arc<dyn Store>, _: Arc<dyn Store>) {
        // A /29 has five dynamic addresses; five node ports.
        let a = allocator(&store, "10.96.0.0/29", "30000-30004");
        let mut held = Vec::new();
        for i in 0..5 {
            let mut svc = service(&format!("s{i}"), "NodePort");
            held.push(a.allocate(&mut svc).await.unwrap());
        }
        check_err(
            a.allocate(&mut service("x", "ClusterIP")).await,
            "Full",
            "",
            "range 10.96.0.0/29 is full",
        );
        let mut ip_only = service("x", "ClusterIP");
        ip_only["spec"]["clusterIP"] = json!("10.96.0.1");
        a.allocate(&mut ip_only).await.unwrap();
        check_err(
            a.allocate(&mut service("y", "NodePort")).await,
            "Full",
            "",
            "failed to allocate a service IP",
        );

        let freed = held.remove(2);
        a.release(&freed).await.unwrap();
        a.release(&freed).await.unwrap(); // idempotent
        let mut again = service("again", "NodePort");
        let taken = a.allocate(&mut again).await.unwrap();
        assert_eq!(taken, freed, "the only free items are the released ones");
        a.release(&Allocation::default()).await.unwrap();
    }

    async fn a_second_master_sees_every_allocation(store: Arc<dyn Store>, second: Arc<dyn Store>) {
        let first = allocator(&store, "10.96.0.0/16", PORTS);
        let mut svc = service("a", "NodePort");
        first.allocate(&mut svc).await.unwrap();
        drop(first);
        let other = allocator(&second, "10.96.0.0/16", PORTS);
        let mut copy = service("b", "NodePort");
        copy["spec"]["clusterIP"] = svc["spec"]["clusterIP"].clone();
        check_err(
            other.allocate(&mut copy).await,
            "AlreadyAllocated",
            "spec.clusterIPs",
            "already allocated",
        );
        let mut copy = service("b", "NodePort");
        copy["spec"]["ports"][0]["nodePort"] = svc["spec"]["ports"][0]["nodePort"].clone();
        check_err(
            other.allocate(&mut copy).await,
            "AlreadyAllocated",
            "spec.ports[0].nodePort",
            "already allocated",
        );
    }

    async fn repair_frees_orphans_and_adopts_unrecorded_services(
        store: Arc<dyn Store>,
        _: Arc<dyn Store>,
    ) {
        let a = allocator(&store, "10.96.0.0/16", PORTS).with_repair_grace(Duration::ZERO);
        // Written and still there: untouched.
        let mut kept = service("kept", "NodePort");
        a.allocate(&mut kept).await.unwrap();
        put(&store, &kept).await;
        // Allocated but never written (a crash between allocation and write): orphans.
        let mut lost = service("lost", "NodePort");
        let lost_taken = a.allocate(&mut lost).await.unwrap();
        // Deleted and re-created under the same name without its old keys being released: the
        // old keys name the old uid and are orphans; the new object's items have no keys.
        let mut old = service("again", "ClusterIP");
        old["spec"]["clusterIP"] = json!("10.96.7.7");
        a.allocate(&mut old).await.unwrap();
        let mut new = service("again", "ClusterIP");
        new["metadata"]["uid"] = json!("uid-again-2");
        new["spec"]["clusterIP"] = json!("10.96.8.8");
        new["spec"]["clusterIPs"] = json!(["10.96.8.8"]);
        put(&store, &new).await;
        // Written before the allocator existed: no keys at all.
        let mut legacy = service("legacy", "NodePort");
        legacy["spec"]["clusterIP"] = json!("10.96.9.9");
        legacy["spec"]["ports"][0]["nodePort"] = json!(31999);
        put(&store, &legacy).await;
        // Holds an address outside the range (the flag changed).
        let mut outside = service("outside", "ClusterIP");
        outside["spec"]["clusterIP"] = json!("10.200.0.5");
        put(&store, &outside).await;

        // With the default grace, fresh orphans are left alone.
        let patient = allocator(&store, "10.96.0.0/16", PORTS);
        let report = patient.repair().await.unwrap();
        assert_eq!(report.ips.pending, 2);
        assert_eq!(report.ips.freed, 0);

        // `patient` already adopted the unrecorded items; this pass frees the orphans.
        let report = a.repair().await.unwrap();
        assert_eq!(
            report.ips,
            RepairCounts {
                freed: 2,
                out_of_range: 1,
                ..Default::default()
            }
        );
        assert_eq!(
            report.node_ports,
            RepairCounts {
                freed: 1,
                ..Default::default()
            }
        );
        let ips = keys(&store, IP_ALLOCATIONS_PREFIX).await;
        let expected: BTreeSet<String> = [cluster_ip(&kept), "10.96.8.8", "10.96.9.9"]
            .iter()
            .map(|ip| format!("{IP_ALLOCATIONS_PREFIX}{ip}"))
            .collect();
        assert_eq!(ips, expected);
        let ports = keys(&store, NODE_PORT_ALLOCATIONS_PREFIX).await;
        let expected: BTreeSet<String> = [node_port(&kept, 0).unwrap(), 31999]
            .iter()
            .map(|port| format!("{NODE_PORT_ALLOCATIONS_PREFIX}{port}"))
            .collect();
        assert_eq!(ports, expected);
        assert!(!ips.contains(&format!("{IP_ALLOCATIONS_PREFIX}{}", lost_taken.ips[0])));

        // Adopted items are protected now; repair has nothing more to do.
        let mut copy = service("copy", "ClusterIP");
        copy["spec"]["clusterIP"] = json!("10.96.9.9");
        check_err(
            a.allocate(&mut copy).await,
            "AlreadyAllocated",
            "spec.clusterIPs",
            "already allocated",
        );
        let report = a.repair().await.unwrap();
        assert_eq!(report.ips.freed + report.ips.adopted, 0);
        assert_eq!(report.node_ports, RepairCounts::default());
        assert_eq!(report.ips.conflicts, 0);

        // A service holding an item whose key names another live service: reported.
        let mut thief = service("thief", "ClusterIP");
        thief["spec"]["clusterIP"] = json!("10.96.8.8");
        put(&store, &thief).await;
        let report = a.repair().await.unwrap();
        assert_eq!(report.ips.conflicts, 1, "{report:?}");
    }

    async fn updates_keep_add_and_release(store: Arc<dyn Store>, _: Arc<dyn Store>) {
        let a = allocator(&store, "10.96.0.0/16", PORTS);
        let mut old = service("web", "ClusterIP");
        a.allocate(&mut old).await.unwrap();
        let ip_of_old = cluster_ip(&old).to_string();

        // A PUT without the IP keeps it.
        let mut new = service("web", "ClusterIP");
        let (taken, release) = a.reallocate(&old, &mut new).await.unwrap();
        assert!(taken.is_empty() && release.is_empty());
        assert_eq!(cluster_ip(&new), ip_of_old);
        assert_eq!(new["spec"]["clusterIPs"], json!([ip_of_old]));

        // Changing it is refused.
        let mut moved = service("web", "ClusterIP");
        moved["spec"]["clusterIP"] = json!("10.96.5.5");
        check_err(
            a.reallocate(&old, &mut moved).await,
            "Invalid",
            "spec.clusterIPs[0]",
            "may not change",
        );

        // ClusterIP → NodePort allocates node ports.
        let mut node_port_svc = old.clone();
        node_port_svc["spec"]["type"] = json!("NodePort");
        let (taken, release) = a.reallocate(&old, &mut node_port_svc).await.unwrap();
        assert_eq!(taken.node_ports.len(), 1);
        assert!(taken.ips.is_empty() && release.is_empty());
        assert_eq!(cluster_ip(&node_port_svc), ip_of_old);
        let port = node_port(&node_port_svc, 0).unwrap() as u16;
        assert_eq!(taken.node_ports, vec![port]);

        // Adding a port: the old one keeps its node port (matched by name), the new gets one.
        let mut old = node_port_svc.clone();
        old["spec"]["ports"][0]["name"] = json!("http");
        let mut two = service("web", "NodePort");
        two["spec"]["ports"] = json!([
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "https", "port": 443, "protocol": "TCP"},
        ]);
        let (taken, release) = a.reallocate(&old, &mut two).await.unwrap();
        assert_eq!(node_port(&two, 0), Some(u64::from(port)));
        let https = node_port(&two, 1).unwrap() as u16;
        assert_eq!(
            (taken.node_ports, release.node_ports),
            (vec![https], vec![])
        );

        // NodePort → ClusterIP with the node ports still in the body: they are dropped and
        // released after the write.
        let old = two;
        let mut back = old.clone();
        back["spec"]["type"] = json!("ClusterIP");
        let (taken, release) = a.reallocate(&old, &mut back).await.unwrap();
        assert!(taken.is_empty());
        assert_eq!(release.node_ports, vec![port, https]);
        assert_eq!(node_port(&back, 0), None);
        assert_eq!(
            keys(&store, NODE_PORT_ALLOCATIONS_PREFIX).await.len(),
            2,
            "released only after the write"
        );
        a.release(&release).await.unwrap();
        assert!(keys(&store, NODE_PORT_ALLOCATIONS_PREFIX).await.is_empty());

        // A failed update releases what it took: a second new port collides.
        let mut blocker = service("blocker", "NodePort");
        blocker["spec"]["ports"][0]["nodePort"] = json!(30500);
        a.allocate(&mut blocker).await.unwrap();
        let old = back;
        let mut bad = old.clone();
        bad["spec"]["type"] = json!("NodePort");
        bad["spec"]["ports"] = json!([
            {"name": "a", "port": 80, "protocol": "TCP", "nodePort": 30501},
            {"name": "b", "port": 81, "protocol": "TCP", "nodePort": 30500},
        ]);
        check_err(
            a.reallocate(&old, &mut bad).await,
            "AlreadyAllocated",
            "spec.ports[1].nodePort",
            "already allocated",
        );
        assert_eq!(keys(&store, NODE_PORT_ALLOCATIONS_PREFIX).await.len(), 1);

        // ClusterIP → ExternalName gives the IP back; ExternalName → ClusterIP takes one.
        let mut external = old.clone();
        external["spec"]["type"] = json!("ExternalName");
        external["spec"]["externalName"] = json!("example.com");
        let (taken, release) = a.reallocate(&old, &mut external).await.unwrap();
        assert!(taken.is_empty());
        assert_eq!(release.ips, vec![ip(&ip_of_old)]);
        assert!(external["spec"].get("clusterIP").is_none());
        a.release(&release).await.unwrap();
        let mut internal = external.clone();
        internal["spec"]["type"] = json!("ClusterIP");
        let (taken, release) = a.reallocate(&external, &mut internal).await.unwrap();
        assert_eq!(taken.ips.len(), 1);
        assert!(release.is_empty());
    }

    /// Allocations live in the store file: a restarted master sees them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_allocations_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let open = || -> Arc<dyn Store> {
            Arc::new(store::embedded::EmbeddedStore::open(&path).expect("open store"))
        };
        let mut svc = service("a", "NodePort");
        {
            let store = open();
            allocator(&store, "10.96.0.0/16", PORTS)
                .allocate(&mut svc)
                .await
                .unwrap();
        }
        let store = open();
        let a = allocator(&store, "10.96.0.0/16", PORTS);
        let mut copy = service("b", "NodePort");
        copy["spec"]["clusterIP"] = svc["spec"]["clusterIP"].clone();
        copy["spec"]["ports"][0]["nodePort"] = svc["spec"]["ports"][0]["nodePort"].clone();
        check_err(
            a.allocate(&mut copy).await,
            "AlreadyAllocated",
            "spec.clusterIPs",
            "already allocated",
        );
    }

    #[test]
    fn ranges_parse_or_say_what_is_wrong() {
        let cidr = ServiceCidr::parse("10.96.0.0/12").unwrap();
        assert_eq!(cidr.to_string(), "10.96.0.0/12");
        assert_eq!(cidr.kubernetes_service_ip(), Ipv4Addr::new(10, 96, 0, 1));
        assert!(cidr.allocatable(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!cidr.allocatable(Ipv4Addr::new(10, 111, 255, 255)));
        assert!(!cidr.allocatable(Ipv4Addr::new(10, 96, 0, 0)));
        assert!(!cidr.allocatable(Ipv4Addr::new(10, 112, 0, 1)));
        assert_eq!(
            PortRange::parse("30000-32767").unwrap(),
            PortRange {
                first: 30000,
                last: 32767
            }
        );
        let bad = |result: Result<Allocator, anyhow::Error>, fragment: &str| {
            let message = result.err().expect("should fail").to_string();
            assert!(message.contains(fragment), "{message}");
        };
        let store: Arc<dyn Store> = Arc::new(NoStore);
        bad(
            Allocator::new(store.clone(), "10.96.0.0/31", PORTS),
            "invalid service cluster IP range",
        );
        bad(
            Allocator::new(store, "10.96.0.0/12", "1-0"),
            "invalid service node port range",
        );
    }

    #[test]
    fn allocation_keys_stay_out_of_every_resource_list() {
        for resource in crate::api::resources::RESOURCES {
            let prefix = store::resource_prefix(resource.plural, None);
            assert!(!IP_ALLOCATIONS_PREFIX.starts_with(&prefix), "{prefix}");
            assert!(
                !NODE_PORT_ALLOCATIONS_PREFIX.starts_with(&prefix),
                "{prefix}"
            );
        }
        let pool = Pool {
            kind: Kind::Port,
            prefix: NODE_PORT_ALLOCATIONS_PREFIX,
            first: 30000,
            last: 32767,
        };
        assert_eq!(pool.item(&pool.key(30080)), Some(30080));
        assert_eq!(
            pool.item("/registry/skiff/nodeportallocations/030080"),
            None
        );
    }

    /// A store that is never called (for tests of argument checks).
    struct NoStore;

    #[async_trait::async_trait]
    impl Store for NoStore {
        async fn current_revision(&self) -> store::Result<store::Revision> {
            unreachable!()
        }
        async fn get(&self, _: &str) -> store::Result<Option<KeyValue>> {
            unreachable!()
        }
        async fn create(&self, _: &str, _: Bytes) -> store::Result<KeyValue> {
            unreachable!()
        }
        async fn update(
            &self,
            _: &str,
            _: Bytes,
            _: Option<store::Revision>,
        ) -> store::Result<KeyValue> {
            unreachable!()
        }
        async fn delete(&self, _: &str, _: Option<store::Revision>) -> store::Result<KeyValue> {
            unreachable!()
        }
        async fn range(&self, _: RangeRequest) -> store::Result<store::RangeResponse> {
            unreachable!()
        }
        async fn watch(
            &self,
            _: &str,
            _: Option<store::Revision>,
        ) -> store::Result<store::WatchStream> {
            unreachable!()
        }
        async fn compact(&self, _: store::Revision) -> store::Result<()> {
            unreachable!()
        }
        async fn compacted_revision(&self) -> store::Result<store::Revision> {
            unreachable!()
        }
    }
}
