//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`) and field selectors
//! (`=`, `==`, `!=`, values escaped with `\`) on the fields kube-apiserver lets each kind be
//! selected by; any other field is refused, as kube-apiserver refuses it.

use std::collections::BTreeSet;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn check_key(key: &str, whole: &str) -> Result<String, String> {
    let valid = !key.is_empty()
        && key.len() <= 316
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_string())
    } else {
        Err(format!(
            "unable to parse requirement: invalid label key {key:?} in selector {whole:?}"
        ))
    }
}

fn check_value(value: &str, whole: &str) -> Result<String, String> {
    let valid = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(value.to_string())
    } else {
        Err(format!(
            "unable to parse requirement: invalid label value {value:?} in selector {whole:?}"
        ))
    }
}

impl LabelSelector {
    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn parse(selector: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if selector.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top_level(selector) {
            let part = part.trim();
            let set = |rest: &str| -> Result<BTreeSet<String>, String> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| {
                        format!("unable to parse requirement {part:?}: expected a (list)")
                    })?;
                inner
                    .split(',')
                    .map(|v| check_value(v.trim(), selector))
                    .collect()
            };
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(check_key(key.trim(), selector)?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(
                    check_key(k.trim(), selector)?,
                    check_value(v.trim(), selector)?,
                )
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(
                    check_key(k.trim(), selector)?,
                    check_value(v.trim(), selector)?,
                )
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(check_key(k.trim(), selector)?, set(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(check_key(k.trim(), selector)?, set(rest)?)
            } else {
                Requirement::Exists(check_key(part, selector)?)
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether `labels` (an object's `metadata.labels`, if any) satisfy every requirement.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => get(k).is_none_or(|v| !set.contains(v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// How a selectable field is read from an object (kube-apiserver's `*ToSelectableFields`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    /// A string at this JSON pointer; "" when absent.
    Text(&'static str),
    /// A boolean at this pointer as `true`/`false`; false when absent.
    Flag(&'static str),
    /// An integer at this pointer in decimal; 0 when absent.
    Number(&'static str),
    /// A pod's first IP: `status.podIPs[0].ip`, else `status.podIP`.
    PodIp,
    /// An event's `source.component`, else its `reportingComponent`.
    EventSource,
    /// A label kube-apiserver accepts but never sets (a pod's `status.podIPs`): always "".
    Unset,
}

const NAME: (&str, Field) = ("metadata.name", Field::Text("/metadata/name"));
const NAMESPACE: (&str, Field) = ("metadata.namespace", Field::Text("/metadata/namespace"));

/// The fields of the kinds with their own field label conversion in kube-apiserver; other kinds
/// have only `metadata.name` and `metadata.namespace`.
fn kind_fields(kind: &str) -> Option<&'static [(&'static str, Field)]> {
    use Field::{EventSource, Flag, Number, PodIp, Text, Unset};
    Some(match kind {
        "Pod" => &[
            NAME,
            NAMESPACE,
            ("spec.nodeName", Text("/spec/nodeName")),
            // Old clients' name for spec.nodeName.
            ("spec.host", Text("/spec/nodeName")),
            ("spec.restartPolicy", Text("/spec/restartPolicy")),
            ("spec.schedulerName", Text("/spec/schedulerName")),
            ("spec.serviceAccountName", Text("/spec/serviceAccountName")),
            ("spec.hostNetwork", Flag("/spec/hostNetwork")),
            ("status.phase", Text("/status/phase")),
            ("status.podIP", PodIp),
            ("status.podIPs", Unset),
            (
                "status.nominatedNodeName",
                Text("/status/nominatedNodeName"),
            ),
        ],
        "Node" => &[NAME, ("spec.unschedulable", Flag("/spec/unschedulable"))],
        "Namespace" => &[NAME, ("status.phase", Text("/status/phase"))],
        "Secret" => &[NAME, NAMESPACE, ("type", Text("/type"))],
        "Service" => &[
            NAME,
            NAMESPACE,
            ("spec.clusterIP", Text("/spec/clusterIP")),
            ("spec.type", Text("/spec/type")),
        ],
        "Event" => &[
            NAME,
            NAMESPACE,
            ("involvedObject.kind", Text("/involvedObject/kind")),
            (
                "involvedObject.namespace",
                Text("/involvedObject/namespace"),
            ),
            ("involvedObject.name", Text("/involvedObject/name")),
            ("involvedObject.uid", Text("/involvedObject/uid")),
            (
                "involvedObject.apiVersion",
                Text("/involvedObject/apiVersion"),
            ),
            (
                "involvedObject.resourceVersion",
                Text("/involvedObject/resourceVersion"),
            ),
            (
                "involvedObject.fieldPath",
                Text("/involvedObject/fieldPath"),
            ),
            ("reason", Text("/reason")),
            ("reportingComponent", Text("/reportingComponent")),
            ("source", EventSource),
            ("type", Text("/type")),
        ],
        "ReplicaSet" => &[
            NAME,
            NAMESPACE,
            ("status.replicas", Number("/status/replicas")),
        ],
        "Job" => &[
            NAME,
            NAMESPACE,
            ("status.successful", Number("/status/succeeded")),
        ],
        _ => return None,
    })
}

/// The field `label` of `kind`, or the 400 message kube-apiserver gives for it.
fn field_of(kind: &str, label: &str) -> Result<Field, String> {
    match kind_fields(kind) {
        Some(fields) => fields
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, f)| *f)
            .ok_or_else(|| format!("field label not supported: {label}")),
        None => [NAME, NAMESPACE]
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                format!(
                    "{label:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                )
            }),
    }
}

impl Field {
    fn read(self, object: &Value) -> String {
        let text = |pointer: &str| {
            object
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match self {
            Field::Text(pointer) => text(pointer),
            Field::Flag(pointer) => object
                .pointer(pointer)
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
            Field::Number(pointer) => object
                .pointer(pointer)
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .to_string(),
            Field::PodIp => object
                .pointer("/status/podIPs/0/ip")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| text("/status/podIP")),
            Field::EventSource => Some(text("/source/component"))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| text("/reportingComponent")),
            Field::Unset => String::new(),
        }
    }
}

/// One `field=value` (`==`) or `field!=value` term.
#[derive(Debug, Clone, PartialEq)]
struct Term {
    field: Field,
    equal: bool,
    value: String,
}

/// A parsed field selector for one kind: terms that must all hold. Fields the kind cannot be
/// selected by are refused when parsing, as kube-apiserver refuses them (400).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<Term>);

/// Splits on the commas that are not escaped with a backslash.
fn split_unescaped(s: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == separator => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// The first unescaped operator of a term: (field, equal, raw value).
fn split_term(term: &str) -> Option<(&str, bool, &str)> {
    let mut escaped = false;
    for (i, c) in term.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            continue;
        }
        let rest = &term[i..];
        for (op, equal) in [("!=", false), ("==", true), ("=", true)] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], equal, value));
            }
        }
    }
    None
}

/// A value with `\\`, `\,` and `\=` unescaped; other escapes and bare `,` `=` are errors.
fn unescape(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(e) => {
                    return Err(format!(
                        "invalid field selector: invalid escape sequence: \\{e}"
                    ))
                }
                None => return Err("invalid field selector: invalid escape sequence: \\".into()),
            },
            ',' | '=' => {
                return Err(format!(
                    "invalid field selector: unescaped character in value: {c}"
                ))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

impl FieldSelector {
    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses `selector` for objects of `kind`, as kube-apiserver's `fields.ParseSelector` and
    /// the kind's field label conversion do.
    pub fn parse(kind: &str, selector: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in split_unescaped(selector, ',') {
            if part.is_empty() {
                continue;
            }
            let Some((label, equal, value)) = split_term(part) else {
                return Err(format!(
                    "invalid selector: '{selector}'; can't understand '{part}'"
                ));
            };
            let value = unescape(value)?;
            terms.push(Term {
                field: field_of(kind, label)?,
                equal,
                value,
            });
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0
            .iter()
            .all(|term| (term.field.read(object) == term.value) == term.equal)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(selector: &str, labels: Value, expected: Result<bool, &str>) {
        match (LabelSelector::parse(selector), expected) {
            (Ok(s), Ok(want)) => {
                assert_eq!(s.matches(Some(&labels)), want, "{selector} on {labels}")
            }
            (Err(e), Err(fragment)) => assert!(e.contains(fragment), "{selector}: {e}"),
            (got, want) => panic!("{selector}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn label_selectors() {
        let l = json!({"app": "web", "tier": "front"});
        check("", l.clone(), Ok(true));
        check("app=web", l.clone(), Ok(true));
        check("app==web", l.clone(), Ok(true));
        check("app=db", l.clone(), Ok(false));
        check("app!=db", l.clone(), Ok(true));
        check("missing!=x", l.clone(), Ok(true));
        check("app in (web, db)", l.clone(), Ok(true));
        check("app notin (web,db)", l.clone(), Ok(false));
        check("missing notin (a)", l.clone(), Ok(true));
        check("tier", l.clone(), Ok(true));
        check("!tier", l.clone(), Ok(false));
        check("!gone,app=web", l.clone(), Ok(true));
        check("app=web,tier in (back)", l.clone(), Ok(false));
        check("app in web", l.clone(), Err("expected a (list)"));
        check("a b=c", l.clone(), Err("invalid label key"));
        check("app=we b", l, Err("invalid label value"));
    }

    fn check_fields(kind: &str, selector: &str, object: &Value, expected: Result<bool, &str>) {
        match (FieldSelector::parse(kind, selector), expected) {
            (Ok(s), Ok(want)) => assert_eq!(s.matches(object), want, "{kind} {selector}"),
            (Err(e), Err(fragment)) => {
                assert!(e.contains(fragment), "{kind} {selector}: {e}")
            }
            (got, want) => panic!("{kind} {selector}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn pod_field_selectors() {
        let pod = json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "n1", "schedulerName": "default-scheduler",
                "serviceAccountName": "default", "restartPolicy": "Always"},
            "status": {"phase": "Running", "podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.9"}]},
        });
        let unscheduled = json!({"metadata": {"name": "q", "namespace": "default"}, "spec": {}});
        let cases: &[(&str, &Value, Result<bool, &str>)] = &[
            ("", &pod, Ok(true)),
            ("metadata.name=p", &pod, Ok(true)),
            ("metadata.name==p", &pod, Ok(true)),
            ("metadata.name!=p", &pod, Ok(false)),
            (
                "metadata.namespace=default,spec.nodeName=n1",
                &pod,
                Ok(true),
            ),
            ("metadata.namespace=other", &pod, Ok(false)),
            ("spec.nodeName=", &pod, Ok(false)),
            ("spec.nodeName=", &unscheduled, Ok(true)),
            ("spec.nodeName!=", &pod, Ok(true)),
            ("spec.nodeName!=", &unscheduled, Ok(false)),
            ("spec.nodeName!=n1", &pod, Ok(false)),
            ("spec.host=n1", &pod, Ok(true)),
            ("status.phase!=Pending", &pod, Ok(true)),
            ("status.phase=Running,spec.nodeName=n2", &pod, Ok(false)),
            ("status.phase=", &unscheduled, Ok(true)),
            ("spec.schedulerName=default-scheduler", &pod, Ok(true)),
            ("spec.serviceAccountName=default", &pod, Ok(true)),
            ("spec.restartPolicy=Always", &pod, Ok(true)),
            ("spec.hostNetwork=false", &pod, Ok(true)),
            ("spec.hostNetwork=true", &pod, Ok(false)),
            ("status.podIP=10.0.0.9", &pod, Ok(true)),
            ("status.podIP=", &unscheduled, Ok(true)),
            ("status.podIPs=", &pod, Ok(true)),
            ("status.nominatedNodeName=", &pod, Ok(true)),
            (
                "spec.containers=x",
                &pod,
                Err("field label not supported: spec.containers"),
            ),
            (
                "metadata.labels=x",
                &pod,
                Err("field label not supported: metadata.labels"),
            ),
            ("nonsense", &pod, Err("can't understand 'nonsense'")),
            ("a b=c", &pod, Err("field label not supported: a b")),
            (
                "metadata.name=a=b",
                &pod,
                Err("unescaped character in value: ="),
            ),
            (
                "metadata.name=a\\x",
                &pod,
                Err("invalid escape sequence: \\x"),
            ),
        ];
        for (selector, object, expected) in cases {
            check_fields("Pod", selector, object, *expected);
        }
        let odd = json!({"metadata": {"name": "a,b=c\\"}});
        check_fields("Pod", "metadata.name=a\\,b\\=c\\\\", &odd, Ok(true));
        let ip_only_in_list = json!({"status": {"podIPs": [{"ip": "fd00::1"}]}});
        check_fields("Pod", "status.podIP=fd00::1", &ip_only_in_list, Ok(true));
    }

    #[test]
    fn other_kinds_field_selectors() {
        let event = json!({
            "metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default", "uid": "u1",
                "apiVersion": "v1", "resourceVersion": "7", "fieldPath": "spec.containers{c}"},
            "reason": "Scheduled", "type": "Normal", "source": {"component": "default-scheduler"},
        });
        let reported = json!({"reportingComponent": "kubelet", "source": {}});
        let node = json!({"metadata": {"name": "n1"}, "spec": {"unschedulable": true}});
        let plain_node = json!({"metadata": {"name": "n2"}, "spec": {}});
        let secret =
            json!({"metadata": {"name": "s", "namespace": "a"}, "type": "kubernetes.io/tls"});
        let job = json!({"metadata": {"name": "j", "namespace": "a"}, "status": {"succeeded": 3}});
        let rs = json!({"metadata": {"name": "r", "namespace": "a"}, "status": {"replicas": 2}});
        let ns = json!({"metadata": {"name": "a"}, "status": {"phase": "Active"}});
        let svc = json!({"metadata": {"name": "v", "namespace": "a"}, "spec": {"clusterIP": "None", "type": "ClusterIP"}});
        let cm = json!({"metadata": {"name": "c", "namespace": "a"}});
        let cases: &[(&str, &str, &Value, Result<bool, &str>)] = &[
            ("Event", "involvedObject.kind=Pod,involvedObject.name=p", &event, Ok(true)),
            ("Event", "involvedObject.namespace=default,involvedObject.uid=u1", &event, Ok(true)),
            ("Event", "involvedObject.apiVersion=v1,involvedObject.resourceVersion=7", &event, Ok(true)),
            ("Event", "involvedObject.fieldPath=spec.containers{c}", &event, Ok(true)),
            ("Event", "reason=Scheduled,type=Normal", &event, Ok(true)),
            ("Event", "type!=Normal", &event, Ok(false)),
            ("Event", "source=default-scheduler", &event, Ok(true)),
            ("Event", "source=kubelet", &reported, Ok(true)),
            ("Event", "reportingComponent=kubelet", &reported, Ok(true)),
            ("Event", "involvedObject.labels=x", &event, Err("field label not supported: involvedObject.labels")),
            ("Node", "spec.unschedulable=true", &node, Ok(true)),
            ("Node", "spec.unschedulable=false", &plain_node, Ok(true)),
            ("Node", "spec.unschedulable!=true", &node, Ok(false)),
            ("Node", "metadata.name=n1", &node, Ok(true)),
            ("Node", "metadata.namespace=", &node, Err("field label not supported: metadata.namespace")),
            ("Secret", "type=kubernetes.io/tls", &secret, Ok(true)),
            ("Secret", "type=Opaque", &secret, Ok(false)),
            ("Job", "status.successful=3", &job, Ok(true)),
            ("Job", "status.successful=0", &cm, Ok(true)),
            ("ReplicaSet", "status.replicas=2", &rs, Ok(true)),
            ("ReplicaSet", "status.replicas!=0", &rs, Ok(true)),
            ("Namespace", "status.phase=Active", &ns, Ok(true)),
            ("Namespace", "metadata.name=a", &ns, Ok(true)),
            ("Service", "spec.clusterIP!=None", &svc, Ok(false)),
            ("Service", "spec.type=ClusterIP", &svc, Ok(true)),
            ("ConfigMap", "metadata.name=c,metadata.namespace=a", &cm, Ok(true)),
            ("ConfigMap", "data.x=1", &cm, Err("\"data.x\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"")),
            ("Deployment", "status.replicas=1", &cm, Err("is not a known field selector")),
        ];
        for (kind, selector, object, expected) in cases {
            check_fields(kind, selector, object, *expected);
        }
    }
}
