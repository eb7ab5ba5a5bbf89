//! A container's command line and environment, resolved the way kubelet does: `command`/`args`
//! over the image's entrypoint/cmd, `$(VAR)` references expanded, values from ConfigMaps,
//! Secrets, the downward API and the `kubernetes` Service.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Service};

/// Where referenced ConfigMap and Secret data comes from (the API, or a fake in tests).
pub trait Sources {
    /// The data of ConfigMap `name` in the pod's namespace (binaryData included as bytes).
    fn config_map(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    /// The data of Secret `name` in the pod's namespace.
    fn secret(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    /// A token of the pod's service account bound to the pod, for `audience` (empty: the API's
    /// own) and `expiration_seconds`, as a `serviceAccountToken` projection asks.
    fn service_account_token(&self, _audience: &str, _expiration_seconds: i64) -> Option<String> {
        None
    }
    /// The Services whose environment variables every container gets (kubelet's: the
    /// `kubernetes` Service of `default`).
    fn services(&self) -> Vec<Service> {
        Vec::new()
    }
}

/// kubelet's environment variables for a Service with a cluster IP (`envvars.FromServices`):
/// `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT` (the first port), `<NAME>_SERVICE_PORT_<PORT>`
/// per named port, and the Docker-link style `<NAME>_PORT*`. Headless Services have none.
pub fn service_env(service: &Service) -> Vec<(String, String)> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let ip = spec.cluster_ip.clone().unwrap_or_default();
    if ip.is_empty() || ip == "None" {
        return Vec::new();
    }
    let name = service
        .metadata
        .name
        .as_deref()
        .unwrap_or_default()
        .to_uppercase()
        .replace('-', "_");
    let ports = spec.ports.as_deref().unwrap_or_default();
    let Some(first) = ports.first() else {
        return Vec::new();
    };
    let mut out = vec![
        (format!("{name}_SERVICE_HOST"), ip.clone()),
        (format!("{name}_SERVICE_PORT"), first.port.to_string()),
    ];
    for port in ports {
        if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!(
                    "{name}_SERVICE_PORT_{}",
                    port_name.to_uppercase().replace('-', "_")
                ),
                port.port.to_string(),
            ));
        }
    }
    let protocol = |p: &k8s_openapi::api::core::v1::ServicePort| {
        p.protocol.clone().unwrap_or_else(|| "TCP".into())
    };
    out.push((
        format!("{name}_PORT"),
        format!("{}://{ip}:{}", protocol(first).to_lowercase(), first.port),
    ));
    for port in ports {
        let proto = protocol(port);
        let prefix = format!("{name}_PORT_{}_{}", port.port, proto.to_uppercase());
        out.push((
            prefix.clone(),
            format!("{}://{ip}:{}", proto.to_lowercase(), port.port),
        ));
        out.push((format!("{prefix}_PROTO"), proto.to_lowercase()));
        out.push((format!("{prefix}_PORT"), port.port.to_string()));
        out.push((format!("{prefix}_ADDR"), ip.clone()));
    }
    out
}

/// Why a container cannot be configured (kubelet shows `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyNotFound {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("unsupported fieldRef {0}")]
    UnsupportedField(String),
    #[error("failed to fetch token: no token for audience {audience:?} was requested")]
    TokenMissing { audience: String },
}

/// Expands `$(NAME)` from `vars`; `$$` escapes a `$`; unknown references stay as written.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    if let Some(v) = vars.get(name) {
                        out.push_str(v);
                    } else {
                        out.push_str(&s[i..i + 3 + end]);
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or_default();
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// The value of a downward-API `fieldRef` path.
pub fn field_value(pod: &Pod, path: &str) -> Result<String, ConfigError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let label_or_annotation = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("['").and_then(|r| r.strip_suffix("']")))
            .map(|key| map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        "status.podIPs" => status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| {
                ips.iter()
                    .map(|i| i.ip.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        _ => {
            if let Some(v) = label_or_annotation("metadata.labels", meta.labels.as_ref()) {
                v
            } else if let Some(v) =
                label_or_annotation("metadata.annotations", meta.annotations.as_ref())
            {
                v
            } else {
                return Err(ConfigError::UnsupportedField(path.to_string()));
            }
        }
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The container's environment, in order: the image's, then `envFrom`, then `env` (later
/// entries win, as in kubelet), each `$(VAR)` in `env` values expanded against what precedes it.
pub fn environment(
    pod: &Pod,
    container: &Container,
    image_env: &[String],
    sources: &dyn Sources,
) -> Result<Vec<(String, String)>, ConfigError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut vars: Vec<(String, String)> = image_env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(slot) = vars.iter_mut().find(|(name, _)| *name == k) {
            slot.1 = v;
        } else {
            vars.push((k, v));
        }
    };
    // Service variables override the image's; the container's own override them.
    for service in sources.services() {
        for (k, v) in service_env(&service) {
            set(&mut vars, k, v);
        }
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional) = if let Some(cm) = &from.config_map_ref {
            (
                sources
                    .config_map(&cm.name)
                    .ok_or_else(|| ConfigError::ConfigMapNotFound(cm.name.clone())),
                cm.optional.unwrap_or(false),
            )
        } else if let Some(s) = &from.secret_ref {
            (
                sources
                    .secret(&s.name)
                    .ok_or_else(|| ConfigError::SecretNotFound(s.name.clone())),
                s.optional.unwrap_or(false),
            )
        } else {
            continue;
        };
        match data {
            Ok(data) => {
                for (k, v) in data {
                    set(&mut vars, format!("{prefix}{k}"), text(&v));
                }
            }
            Err(_) if optional => {}
            Err(e) => return Err(e),
        }
    }
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let resolved = if let Some(from) = value_from {
            if let Some(field) = &from.field_ref {
                Some(field_value(pod, &field.field_path)?)
            } else if let Some(key) = &from.config_map_key_ref {
                let optional = key.optional.unwrap_or(false);
                match sources.config_map(&key.name) {
                    Some(data) => match data.get(&key.key) {
                        Some(v) => Some(text(v)),
                        None if optional => None,
                        None => {
                            return Err(ConfigError::KeyNotFound {
                                kind: "ConfigMap",
                                namespace: namespace.clone(),
                                name: key.name.clone(),
                                key: key.key.clone(),
                            })
                        }
                    },
                    None if optional => None,
                    None => return Err(ConfigError::ConfigMapNotFound(key.name.clone())),
                }
            } else if let Some(key) = &from.secret_key_ref {
                let optional = key.optional.unwrap_or(false);
                match sources.secret(&key.name) {
                    Some(data) => match data.get(&key.key) {
                        Some(v) => Some(text(v)),
                        None if optional => None,
                        None => {
                            return Err(ConfigError::KeyNotFound {
                                kind: "Secret",
                                namespace: namespace.clone(),
                                name: key.name.clone(),
                                key: key.key.clone(),
                            })
                        }
                    },
                    None if optional => None,
                    None => return Err(ConfigError::SecretNotFound(key.name.clone())),
                }
            } else {
                from.resource_field_ref
                    .as_ref()
                    .map(|r| resource_value(container, &r.resource))
            }
        } else {
            let known: BTreeMap<String, String> = vars.iter().cloned().collect();
            Some(expand(value.as_deref().unwrap_or(""), &known))
        };
        if let Some(v) = resolved {
            set(&mut vars, name.clone(), v);
        }
    }
    Ok(vars)
}

/// `limits.cpu` (whole cores, rounded up), `limits.memory`/`requests.memory` (bytes), … for
/// `resourceFieldRef`; "0" when unset (kubelet uses the node's allocatable there).
fn resource_value(container: &Container, resource: &str) -> String {
    let resources = container.resources.as_ref();
    let (map, name) = match resource.split_once('.') {
        Some(("limits", name)) => (resources.and_then(|r| r.limits.as_ref()), name),
        Some(("requests", name)) => (resources.and_then(|r| r.requests.as_ref()), name),
        _ => return "0".into(),
    };
    let Some(q) = map.and_then(|m| m.get(name)) else {
        return "0".into();
    };
    match name {
        "cpu" => super::quantity::millis(&q.0)
            .map(|m| ((m + 999) / 1000).to_string())
            .unwrap_or_else(|| "0".into()),
        _ => super::quantity::bytes(&q.0)
            .map(|b| b.to_string())
            .unwrap_or_else(|| "0".into()),
    }
}

/// The process's argv: `command` replaces the image's entrypoint, `args` its cmd (and a
/// `command` without `args` drops the image's cmd), with `$(VAR)` expanded from `env`.
pub fn command_line(
    container: &Container,
    entrypoint: &[String],
    cmd: &[String],
    env: &[(String, String)],
) -> Vec<String> {
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let expand_all = |v: &Vec<String>| v.iter().map(|s| expand(s, &vars)).collect::<Vec<_>>();
    match (&container.command, &container.args) {
        (Some(command), Some(args)) => [expand_all(command), expand_all(args)].concat(),
        (Some(command), None) => expand_all(command),
        (None, Some(args)) => [entrypoint.to_vec(), expand_all(args)].concat(),
        (None, None) => [entrypoint.to_vec(), cmd.to_vec()].concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapKeySelector, EnvFromSource, EnvVarSource, ObjectFieldSelector, PodSpec,
        SecretEnvSource,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    struct Fake;
    impl Sources for Fake {
        fn config_map(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            (name == "cm").then(|| {
                BTreeMap::from([
                    ("color".to_string(), b"blue".to_vec()),
                    ("size".to_string(), b"9".to_vec()),
                ])
            })
        }
        fn secret(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            (name == "s").then(|| BTreeMap::from([("password".to_string(), b"hunter2".to_vec())]))
        }
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("cost $5 é", &vars), "cost $5 é");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn environment_layers_image_env_from_and_env() {
        let container = Container {
            name: "c".into(),
            env_from: Some(vec![EnvFromSource {
                prefix: Some("S_".into()),
                secret_ref: Some(SecretEnvSource {
                    name: "s".into(),
                    optional: None,
                }),
                config_map_ref: None,
            }]),
            env: Some(vec![
                var("PATH", "/custom"),
                var("GREETING", "hi $(POD)"),
                EnvVar {
                    name: "POD".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            api_version: None,
                        }),
                        ..EnvVarSource::default()
                    }),
                },
                var("LATE", "$(POD)/$(PATH)"),
                EnvVar {
                    name: "COLOR".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cm".into(),
                            key: "color".into(),
                            optional: None,
                        }),
                        ..EnvVarSource::default()
                    }),
                },
            ]),
            ..Container::default()
        };
        let env = environment(&pod(), &container, &["PATH=/bin".into()], &Fake).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/custom"));
        assert_eq!(get("S_password"), Some("hunter2"));
        // POD was not yet defined when GREETING was: left as written, like kubelet.
        assert_eq!(get("GREETING"), Some("hi $(POD)"));
        assert_eq!(get("POD"), Some("web-1"));
        assert_eq!(get("LATE"), Some("web-1//custom"));
        assert_eq!(get("COLOR"), Some("blue"));
        // The image's PATH keeps its place; the order is stable.
        assert_eq!(env[0].0, "PATH");
    }

    #[test]
    fn missing_references_are_errors_unless_optional() {
        let mut container = Container {
            name: "c".into(),
            env: Some(vec![EnvVar {
                name: "X".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "cm".into(),
                        key: "nope".into(),
                        optional: None,
                    }),
                    ..EnvVarSource::default()
                }),
            }]),
            ..Container::default()
        };
        let err = environment(&pod(), &container, &[], &Fake).unwrap_err();
        assert_eq!(
            err.to_string(),
            "couldn't find key nope in ConfigMap shop/cm"
        );
        if let Some(env) = container.env.as_mut() {
            if let Some(r) = env[0]
                .value_from
                .as_mut()
                .and_then(|f| f.config_map_key_ref.as_mut())
            {
                r.optional = Some(true);
            }
        }
        let env = environment(&pod(), &container, &[], &Fake).unwrap();
        assert!(env.is_empty());
        assert_eq!(
            field_value(&pod(), "metadata.labels['app']").unwrap(),
            "web"
        );
        assert!(field_value(&pod(), "spec.bogus").is_err());
    }

    #[test]
    fn command_and_args_override_the_image() {
        let ep = vec!["/entry".to_string()];
        let cmd = vec!["serve".to_string()];
        let env = vec![("PORT".to_string(), "80".to_string())];
        let c = |command: Option<Vec<&str>>, args: Option<Vec<&str>>| Container {
            command: command.map(|v| v.into_iter().map(String::from).collect()),
            args: args.map(|v| v.into_iter().map(String::from).collect()),
            ..Container::default()
        };
        assert_eq!(
            command_line(&c(None, None), &ep, &cmd, &env),
            ["/entry", "serve"]
        );
        assert_eq!(
            command_line(&c(None, Some(vec!["-p", "$(PORT)"])), &ep, &cmd, &env),
            ["/entry", "-p", "80"]
        );
        assert_eq!(
            command_line(&c(Some(vec!["sh"]), None), &ep, &cmd, &env),
            ["sh"]
        );
        assert_eq!(
            command_line(&c(Some(vec!["sh"]), Some(vec!["-c", "x"])), &ep, &cmd, &env),
            ["sh", "-c", "x"]
        );
    }

    #[test]
    fn the_kubernetes_service_becomes_kubelets_variables() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
        }))
        .unwrap();
        let expected: Vec<(String, String)> = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(service_env(&service), expected);
        let mut headless = service.clone();
        headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        assert!(service_env(&headless).is_empty());
    }
}
