//! The resources the API serves: one static table that drives routing, discovery and storage.

use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, coordination::v1 as coordination};
use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};
use k8s_openapi::schemars::{JsonSchema, Schema, SchemaGenerator};

/// One resource, as discovery describes it.
#[derive(Debug)]
pub struct Resource {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The plural name in URLs and store keys (`pods`).
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources served besides the object itself (`status`, `scale`, …).
    pub subresources: &'static [&'static str],
    /// Adds the kind's OpenAPI schema (and everything it refers to) to a generator; returns
    /// the `$ref` to it.
    pub schema: fn(&mut SchemaGenerator) -> Schema,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn group_version(&self) -> (&'static str, &'static str) {
        (self.group, self.version)
    }

    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }
}

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

macro_rules! resource {
    ($group:expr, $version:expr, $ty:ty, $kind:expr, $plural:expr, $singular:expr, $namespaced:expr,
     short: $short:expr, categories: $cat:expr, sub: $sub:expr) => {
        Resource {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $namespaced,
            short_names: $short,
            categories: $cat,
            subresources: $sub,
            schema: schema_of::<$ty>,
        }
    };
}

/// Every resource Skiff serves.
pub static RESOURCES: &[Resource] = &[
    resource!("", "v1", core::Namespace, "Namespace", "namespaces", "namespace", false,
        short: &["ns"], categories: NONE, sub: &["status", "finalize"]),
    resource!("", "v1", core::Pod, "Pod", "pods", "pod", true,
        short: &["po"], categories: ALL, sub: &["status", "binding", "eviction", "log", "exec"]),
    resource!("", "v1", core::Service, "Service", "services", "service", true,
        short: &["svc"], categories: ALL, sub: &["status"]),
    resource!("", "v1", core::Endpoints, "Endpoints", "endpoints", "endpoints", true,
        short: &["ep"], categories: NONE, sub: NONE),
    resource!("", "v1", core::Node, "Node", "nodes", "node", false,
        short: &["no"], categories: NONE, sub: &["status", "proxy"]),
    resource!("", "v1", core::ConfigMap, "ConfigMap", "configmaps", "configmap", true,
        short: &["cm"], categories: NONE, sub: NONE),
    resource!("", "v1", core::Secret, "Secret", "secrets", "secret", true,
        short: NONE, categories: NONE, sub: NONE),
    resource!("", "v1", core::Event, "Event", "events", "event", true,
        short: &["ev"], categories: NONE, sub: NONE),
    resource!("", "v1", core::ServiceAccount, "ServiceAccount", "serviceaccounts", "serviceaccount", true,
        short: &["sa"], categories: NONE, sub: &["token"]),
    resource!("apps", "v1", apps::Deployment, "Deployment", "deployments", "deployment", true,
        short: &["deploy"], categories: ALL, sub: &["status", "scale"]),
    resource!("apps", "v1", apps::ReplicaSet, "ReplicaSet", "replicasets", "replicaset", true,
        short: &["rs"], categories: ALL, sub: &["status", "scale"]),
    resource!("apps", "v1", apps::DaemonSet, "DaemonSet", "daemonsets", "daemonset", true,
        short: &["ds"], categories: ALL, sub: &["status"]),
    resource!("apps", "v1", apps::StatefulSet, "StatefulSet", "statefulsets", "statefulset", true,
        short: &["sts"], categories: ALL, sub: &["status", "scale"]),
    resource!("apps", "v1", apps::ControllerRevision, "ControllerRevision", "controllerrevisions", "controllerrevision", true,
        short: NONE, categories: NONE, sub: NONE),
    resource!("batch", "v1", batch::Job, "Job", "jobs", "job", true,
        short: NONE, categories: ALL, sub: &["status"]),
    resource!("batch", "v1", batch::CronJob, "CronJob", "cronjobs", "cronjob", true,
        short: &["cj"], categories: ALL, sub: &["status"]),
    resource!("discovery.k8s.io", "v1", discovery::EndpointSlice, "EndpointSlice", "endpointslices", "endpointslice", true,
        short: NONE, categories: NONE, sub: NONE),
    resource!("coordination.k8s.io", "v1", coordination::Lease, "Lease", "leases", "lease", true,
        short: NONE, categories: NONE, sub: NONE),
];

/// The resource at `group/version/plural`, if served.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The API groups other than core, in the order they were first listed.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&r.group_version()) {
            out.push(r.group_version());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(
            find("apps", "v1", "deployments").unwrap().kind,
            "Deployment"
        );
        assert!(find("", "v1", "deployments").is_none());
        assert_eq!(
            groups(),
            [
                ("apps", "v1"),
                ("batch", "v1"),
                ("discovery.k8s.io", "v1"),
                ("coordination.k8s.io", "v1")
            ]
        );
    }
}
