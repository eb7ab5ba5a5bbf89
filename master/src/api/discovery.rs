//! Discovery: `/version`, `/api`, `/apis` and each group version's resource list, built from
//! the resource table. kubectl builds its REST mapping from these.

use axum::Json;
use serde_json::{json, Value};

use super::resources::{self, Resource, RESOURCES};

/// The Kubernetes version whose API Skiff serves (the k8s-openapi feature it builds with).
pub const KUBE_MINOR: &str = "33";

/// `v1.33.0-skiff.<crate version>`: the Kubernetes version served, and Skiff's own.
pub fn git_version() -> String {
    format!("v1.{KUBE_MINOR}.0-skiff.{}", env!("CARGO_PKG_VERSION"))
}

pub async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": git_version(),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    }))
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub async fn api_versions() -> Json<Value> {
    Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    }))
}

pub async fn api_groups() -> Json<Value> {
    let groups: Vec<Value> = resources::groups()
        .into_iter()
        .map(|(group, version)| {
            let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
            json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

fn verbs(r: &Resource) -> Vec<&'static str> {
    let _ = r;
    vec![
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ]
}

/// The `APIResourceList` for one group version, or `None` if it is not served.
pub fn resource_list(group: &str, version: &str) -> Option<Json<Value>> {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in served {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs(r),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        list.push(entry);
        for sub in r.subresources {
            let (kind, sub_verbs, group_version) = match *sub {
                "status" => (r.kind, vec!["get", "patch", "update"], None),
                "scale" => (
                    "Scale",
                    vec!["get", "patch", "update"],
                    Some(("autoscaling", "v1")),
                ),
                "binding" => ("Binding", vec!["create"], None),
                "eviction" => ("Eviction", vec!["create"], Some(("policy", "v1"))),
                "log" => ("Pod", vec!["get"], None),
                "exec" => ("PodExecOptions", vec!["create", "get"], None),
                "proxy" => (
                    "NodeProxyOptions",
                    vec!["create", "delete", "get", "patch", "update"],
                    None,
                ),
                "finalize" => (r.kind, vec!["update"], None),
                "token" => (
                    "TokenRequest",
                    vec!["create"],
                    Some(("authentication.k8s.io", "v1")),
                ),
                _ => (r.kind, vec!["get"], None),
            };
            let mut entry = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": sub_verbs,
            });
            if let Some((g, v)) = group_version {
                entry["group"] = json!(g);
                entry["version"] = json!(v);
            }
            list.push(entry);
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subresources_are_listed_as_kube_apiserver_lists_them() {
        let Json(list) = resource_list("", "v1").expect("core/v1");
        let entry = |name: &str| {
            list["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} is not listed"))
        };
        let proxy = entry("nodes/proxy");
        assert_eq!(proxy["kind"], "NodeProxyOptions");
        assert_eq!(proxy["namespaced"], false);
        assert_eq!(
            proxy["verbs"],
            json!(["create", "delete", "get", "patch", "update"])
        );
        assert_eq!(entry("pods/exec")["kind"], "PodExecOptions");
    }
}
