//! The strategic-merge-patch metadata of the built-in types Skiff serves: for each struct field
//! that Kubernetes tags with `patchStrategy` (and `patchMergeKey`), how a strategic merge patch
//! treats it.
//!
//! The facts come from the Go struct tags of Kubernetes 1.33 (`k8s.io/api` `core/v1`, `apps/v1`,
//! `batch/v1`; `k8s.io/apimachinery` `meta/v1`), the version whose schemas k8s-openapi gives us.
//! `discovery/v1` and `coordination/v1` tag no field. Definitions are named as in the OpenAPI
//! documents (`io.k8s.api.core.v1.PodSpec`). Fields of `EphemeralContainerCommon`, which Go
//! embeds inline, appear under `io.k8s.api.core.v1.EphemeralContainer`.
//!
//! Strategies, as in the tags: `merge` (lists: merge by `merge_key`, or as a set of primitives
//! when there is no key), `retainKeys` (a `$retainKeys` directive clears the fields it does not
//! list), `merge,retainKeys` (both), `replace`. A field that is not in the table is replaced
//! when it is a list and merged key by key when it is a map or struct.

/// The patch strategy of one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPatchMeta {
    /// The OpenAPI definition name of the struct holding the field.
    pub definition: &'static str,
    /// The field's JSON name.
    pub field: &'static str,
    /// `merge`, `retainKeys`, `merge,retainKeys` or `replace`.
    pub strategy: &'static str,
    /// The key that identifies an item of a merged list of objects; `None` for lists of
    /// primitives and for fields that are not merged lists.
    pub merge_key: Option<&'static str>,
}

impl FieldPatchMeta {
    /// Whether the strategy includes `name` (`merge`, `retainKeys`, `replace`).
    pub fn has(&self, name: &str) -> bool {
        self.strategy.split(',').any(|s| s.trim() == name)
    }
}

macro_rules! meta {
    ($definition:expr, $field:literal, $strategy:literal) => {
        FieldPatchMeta {
            definition: $definition,
            field: $field,
            strategy: $strategy,
            merge_key: None,
        }
    };
    ($definition:expr, $field:literal, $strategy:literal, $key:literal) => {
        FieldPatchMeta {
            definition: $definition,
            field: $field,
            strategy: $strategy,
            merge_key: Some($key),
        }
    };
}

/// Every (definition, field) with a patch strategy.
pub static PATCH_META: &[FieldPatchMeta] = &[
    // io.k8s.apimachinery.pkg.apis.meta.v1
    meta!(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "merge",
        "uid"
    ),
    meta!(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        "merge"
    ),
    // io.k8s.api.core.v1: pods and containers
    meta!(
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        "merge,retainKeys",
        "name"
    ),
    meta!(
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        "merge",
        "name"
    ),
    meta!("io.k8s.api.core.v1.PodSpec", "containers", "merge", "name"),
    meta!(
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        "merge",
        "name"
    ),
    meta!(
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        "merge",
        "name"
    ),
    meta!("io.k8s.api.core.v1.PodSpec", "hostAliases", "merge", "ip"),
    meta!(
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        "merge",
        "topologyKey"
    ),
    meta!(
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        "merge",
        "name"
    ),
    meta!(
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        "merge,retainKeys",
        "name"
    ),
    meta!(
        "io.k8s.api.core.v1.Container",
        "ports",
        "merge",
        "containerPort"
    ),
    meta!("io.k8s.api.core.v1.Container", "env", "merge", "name"),
    meta!(
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        "merge",
        "mountPath"
    ),
    meta!(
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        "merge",
        "devicePath"
    ),
    meta!(
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        "merge",
        "containerPort"
    ),
    meta!(
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        "merge",
        "name"
    ),
    meta!(
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        "merge",
        "mountPath"
    ),
    meta!(
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        "merge",
        "devicePath"
    ),
    meta!(
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        "merge",
        "type"
    ),
    meta!("io.k8s.api.core.v1.PodStatus", "hostIPs", "merge", "ip"),
    meta!("io.k8s.api.core.v1.PodStatus", "podIPs", "merge", "ip"),
    meta!(
        "io.k8s.api.core.v1.PodStatus",
        "resourceClaimStatuses",
        "merge,retainKeys",
        "name"
    ),
    meta!(
        "io.k8s.api.core.v1.ContainerStatus",
        "volumeMounts",
        "merge",
        "mountPath"
    ),
    meta!(
        "io.k8s.api.core.v1.ContainerStatus",
        "allocatedResourcesStatus",
        "merge",
        "name"
    ),
    // io.k8s.api.core.v1: everything else
    meta!(
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        "merge",
        "type"
    ),
    meta!(
        "io.k8s.api.core.v1.ReplicationControllerStatus",
        "conditions",
        "merge",
        "type"
    ),
    meta!("io.k8s.api.core.v1.ServiceSpec", "ports", "merge", "port"),
    meta!(
        "io.k8s.api.core.v1.ServiceStatus",
        "conditions",
        "merge",
        "type"
    ),
    meta!(
        "io.k8s.api.core.v1.ServiceAccount",
        "secrets",
        "merge",
        "name"
    ),
    meta!("io.k8s.api.core.v1.NodeSpec", "podCIDRs", "merge"),
    meta!(
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        "merge",
        "type"
    ),
    meta!(
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        "merge",
        "type"
    ),
    meta!(
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        "merge",
        "type"
    ),
    meta!(
        "io.k8s.api.core.v1.ComponentStatus",
        "conditions",
        "merge",
        "type"
    ),
    // io.k8s.api.apps.v1
    meta!(
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        "retainKeys"
    ),
    meta!(
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        "merge",
        "type"
    ),
    meta!(
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        "merge",
        "type"
    ),
    meta!(
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        "merge",
        "type"
    ),
    meta!(
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        "merge",
        "type"
    ),
    // io.k8s.api.batch.v1
    meta!(
        "io.k8s.api.batch.v1.JobStatus",
        "conditions",
        "merge",
        "type"
    ),
];

/// The patch strategy of `definition.field`, if Kubernetes tags it with one.
pub fn lookup(definition: &str, field: &str) -> Option<&'static FieldPatchMeta> {
    PATCH_META
        .iter()
        .find(|m| m.field == field && m.definition == definition)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field's strategy and merge key, or `None` for a field without one.
    type Expected = Option<(&'static str, Option<&'static str>)>;

    fn check(definition: &str, field: &str, expected: Expected) {
        let got = lookup(definition, field).map(|m| (m.strategy, m.merge_key));
        assert_eq!(got, expected, "{definition}.{field}");
    }

    #[test]
    fn lookups() {
        let pod_spec = "io.k8s.api.core.v1.PodSpec";
        let container = "io.k8s.api.core.v1.Container";
        let meta = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
        let cases: &[(&str, &str, Expected)] = &[
            (pod_spec, "containers", Some(("merge", Some("name")))),
            (pod_spec, "initContainers", Some(("merge", Some("name")))),
            (
                pod_spec,
                "volumes",
                Some(("merge,retainKeys", Some("name"))),
            ),
            (pod_spec, "hostAliases", Some(("merge", Some("ip")))),
            (pod_spec, "tolerations", None),
            (pod_spec, "nodeSelector", None),
            (container, "ports", Some(("merge", Some("containerPort")))),
            (
                container,
                "volumeMounts",
                Some(("merge", Some("mountPath"))),
            ),
            (container, "args", None),
            (
                "io.k8s.api.core.v1.EphemeralContainer",
                "env",
                Some(("merge", Some("name"))),
            ),
            (
                "io.k8s.api.core.v1.ServiceSpec",
                "ports",
                Some(("merge", Some("port"))),
            ),
            (
                "io.k8s.api.core.v1.NodeStatus",
                "addresses",
                Some(("merge", Some("type"))),
            ),
            (
                "io.k8s.api.core.v1.NodeSpec",
                "podCIDRs",
                Some(("merge", None)),
            ),
            ("io.k8s.api.core.v1.NodeSpec", "taints", None),
            (meta, "finalizers", Some(("merge", None))),
            (meta, "ownerReferences", Some(("merge", Some("uid")))),
            (meta, "labels", None),
            (
                "io.k8s.api.apps.v1.DeploymentSpec",
                "strategy",
                Some(("retainKeys", None)),
            ),
            ("io.k8s.api.apps.v1.DaemonSetSpec", "updateStrategy", None),
            (
                "io.k8s.api.batch.v1.JobStatus",
                "conditions",
                Some(("merge", Some("type"))),
            ),
            ("io.k8s.api.discovery.v1.EndpointSlice", "endpoints", None),
            ("io.k8s.api.core.v1.Nope", "containers", None),
        ];
        for (definition, field, expected) in cases {
            check(definition, field, *expected);
        }
    }

    #[test]
    fn strategies_are_well_formed_and_unique() {
        for (i, m) in PATCH_META.iter().enumerate() {
            assert!(
                m.strategy
                    .split(',')
                    .all(|s| matches!(s, "merge" | "retainKeys" | "replace")),
                "{m:?}"
            );
            // A merged list of objects needs a key; retainKeys alone never has one.
            if m.strategy == "retainKeys" {
                assert!(m.merge_key.is_none(), "{m:?}");
            }
            assert!(
                !PATCH_META[..i]
                    .iter()
                    .any(|o| o.definition == m.definition && o.field == m.field),
                "duplicate {m:?}"
            );
        }
        assert!(lookup("io.k8s.api.core.v1.PodSpec", "volumes")
            .is_some_and(|m| m.has("merge") && m.has("retainKeys") && !m.has("replace")));
    }

    /// Every entry names a definition and a field that exist in the served schemas, with the
    /// shape the strategy needs (lists for merge, objects for retainKeys alone), and every merge
    /// key is a property of the list's items.
    #[test]
    fn entries_match_the_schemas() {
        let defs = crate::api::smp::test_definitions();
        // Tagged in Kubernetes but not reachable from the kinds Skiff serves (yet).
        let unserved = [
            "io.k8s.api.core.v1.ReplicationControllerStatus",
            "io.k8s.api.core.v1.ComponentStatus",
        ];
        for m in PATCH_META {
            if unserved.contains(&m.definition) {
                assert!(
                    !defs.contains_key(m.definition),
                    "{} is served now",
                    m.definition
                );
                continue;
            }
            let def = defs
                .get(m.definition)
                .unwrap_or_else(|| panic!("no definition {}", m.definition));
            let prop = def
                .pointer(&format!("/properties/{}", m.field))
                .unwrap_or_else(|| panic!("no field {}.{}", m.definition, m.field));
            if m.has("merge") {
                assert_eq!(
                    prop.get("type").and_then(|t| t.as_str()),
                    Some("array"),
                    "{m:?}"
                );
            }
            if let Some(key) = m.merge_key {
                let items = crate::api::smp::resolve_for_tests(&defs, &prop["items"]);
                assert!(
                    items.pointer(&format!("/properties/{key}")).is_some(),
                    "{m:?}: items have no {key}"
                );
            }
        }
    }
}
