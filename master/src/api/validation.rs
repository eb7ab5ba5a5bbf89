//! Per-kind validation of API objects, as kube-apiserver does it.
//!
//! [`validate`] decodes a body as its kind's k8s-openapi type and checks it field by field: the
//! metadata every kind shares, then the kind's own rules (pod specs and every pod template,
//! workload selectors and strategies, Service ports and IPs, ConfigMap/Secret keys and sizes,
//! cron schedules, …), and on updates the fields kube-apiserver holds immutable. Each problem is
//! one [`FieldError`] whose field path and message follow kube-apiserver's (`spec.containers[0]
//! .ports[1].containerPort`, `Invalid value: 0: must be between 1 and 65535, inclusive`); the
//! handlers turn a non-empty list into a 422 `Invalid` Status with `details.causes[]`.
//!
//! Defaults are not applied first, so an absent field is read as its kube default (a missing
//! `restartPolicy` is `Always`, a missing protocol `TCP`, a volume without a source an
//! `emptyDir`). Nothing here panics on any input.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::coordination::v1 as coordination;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// One field error, as a Status cause: reason is "FieldValueRequired" | "FieldValueInvalid" |
/// "FieldValueDuplicate" | "FieldValueNotSupported" | "FieldValueTooLong" |
/// "FieldValueForbidden" | "FieldValueNotFound" (a volume mount naming no volume).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

/// Decodes `object` as the kind's typed form and validates it (create when `old` is None,
/// update otherwise: immutable fields).
/// Err(String) = the body does not decode (the caller answers 400); Ok(vec![]) = valid.
pub fn validate(
    kind: &str,
    object: &serde_json::Value,
    old: Option<&serde_json::Value>,
) -> Result<Vec<FieldError>, String> {
    let mut errs = Errors::new();
    match kind {
        "Namespace" => run(object, old, &mut errs, namespace)?,
        "Pod" => run(object, old, &mut errs, pod)?,
        "Service" => run(object, old, &mut errs, service)?,
        "Endpoints" => run(object, old, &mut errs, endpoints)?,
        "Node" => run(object, old, &mut errs, node)?,
        "ConfigMap" => run(object, old, &mut errs, config_map)?,
        "Secret" => run(object, old, &mut errs, secret)?,
        "Event" => {
            run(object, old, &mut errs, event)?;
            if object.get("involvedObject").is_none_or(Value::is_null) {
                errs.push(FieldError::required(&Path::new("involvedObject"), ""));
            }
        }
        "ServiceAccount" => run(object, old, &mut errs, service_account)?,
        "Deployment" => run(object, old, &mut errs, deployment)?,
        "ReplicaSet" => run(object, old, &mut errs, replica_set)?,
        "DaemonSet" => run(object, old, &mut errs, daemon_set)?,
        "StatefulSet" => run(object, old, &mut errs, stateful_set)?,
        "ControllerRevision" => run(object, old, &mut errs, controller_revision)?,
        "Job" => run(object, old, &mut errs, job)?,
        "CronJob" => run(object, old, &mut errs, cron_job)?,
        "EndpointSlice" => run(object, old, &mut errs, endpoint_slice)?,
        "Lease" => run(object, old, &mut errs, lease)?,
        _ => {}
    }
    Ok(errs)
}

type Errors = Vec<FieldError>;

/// Decodes the new object (an error is the caller's 400) and the old one, then validates. An
/// old object that no longer decodes is validated as a create: its update rules cannot apply.
fn run<T: DeserializeOwned>(
    object: &Value,
    old: Option<&Value>,
    errs: &mut Errors,
    check: fn(&T, Option<&T>, &mut Errors),
) -> Result<(), String> {
    let new = T::deserialize(object).map_err(|e| e.to_string())?;
    let old = old.and_then(|o| T::deserialize(o).ok());
    check(&new, old.as_ref(), errs);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Field errors and paths
// ---------------------------------------------------------------------------------------------

/// A value as kube-apiserver prints it in `Invalid value: …`: strings quoted, numbers bare.
trait Render {
    fn render(&self) -> String;
}

impl Render for &str {
    fn render(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Render for String {
    fn render(&self) -> String {
        self.as_str().render()
    }
}

impl Render for &String {
    fn render(&self) -> String {
        self.as_str().render()
    }
}

impl Render for i32 {
    fn render(&self) -> String {
        self.to_string()
    }
}

impl Render for i64 {
    fn render(&self) -> String {
        self.to_string()
    }
}

impl Render for usize {
    fn render(&self) -> String {
        self.to_string()
    }
}

impl Render for &IntOrString {
    fn render(&self) -> String {
        match self {
            IntOrString::Int(i) => i.to_string(),
            IntOrString::String(s) => s.render(),
        }
    }
}

/// A structured value (a selector, a map), printed as JSON.
struct Json<'a, T: Serialize>(&'a T);

impl<T: Serialize> Render for Json<'_, T> {
    fn render(&self) -> String {
        serde_json::to_string(self.0).unwrap_or_default()
    }
}

impl FieldError {
    /// A `FieldValueInvalid` error with a message of the caller's own.
    pub fn invalid_with(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            reason: "FieldValueInvalid",
            message: message.into(),
        }
    }

    fn new(path: &Path, reason: &'static str, message: String) -> Self {
        FieldError {
            field: path.to_string(),
            reason,
            message,
        }
    }

    fn required(path: &Path, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self::new(path, "FieldValueRequired", message)
    }

    fn invalid(path: &Path, value: impl Render, detail: &str) -> Self {
        Self::new(
            path,
            "FieldValueInvalid",
            format!("Invalid value: {}: {detail}", value.render()),
        )
    }

    fn duplicate(path: &Path, value: impl Render) -> Self {
        Self::new(
            path,
            "FieldValueDuplicate",
            format!("Duplicate value: {}", value.render()),
        )
    }

    fn not_supported(path: &Path, value: impl Render, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| s.render()).collect();
        let message = format!(
            "Unsupported value: {}: supported values: {}",
            value.render(),
            supported.join(", ")
        );
        Self::new(path, "FieldValueNotSupported", message)
    }

    fn too_long(path: &Path, max_bytes: usize) -> Self {
        Self::new(
            path,
            "FieldValueTooLong",
            format!("Too long: must have at most {max_bytes} bytes"),
        )
    }

    fn forbidden(path: &Path, detail: &str) -> Self {
        Self::new(path, "FieldValueForbidden", format!("Forbidden: {detail}"))
    }

    fn not_found(path: &Path, value: impl Render) -> Self {
        Self::new(
            path,
            "FieldValueNotFound",
            format!("Not found: {}", value.render()),
        )
    }
}

/// A field path in kube-apiserver's form: `spec.containers[0].ports[1].name`, `data[key]`.
#[derive(Debug, Clone)]
struct Path(String);

impl Path {
    fn new(root: &str) -> Path {
        Path(root.to_string())
    }

    fn child(&self, name: &str) -> Path {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{name}", self.0))
        }
    }

    fn index(&self, i: usize) -> Path {
        Path(format!("{}[{i}]", self.0))
    }

    fn key(&self, key: &str) -> Path {
        Path(format!("{}[{key}]", self.0))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One Invalid error per message of a format check.
fn push_each(errs: &mut Errors, path: &Path, value: &str, messages: Vec<String>) {
    errs.extend(
        messages
            .into_iter()
            .map(|m| FieldError::invalid(path, value, &m)),
    );
}

fn nonnegative(errs: &mut Errors, path: &Path, value: Option<i64>) {
    if let Some(v) = value.filter(|v| *v < 0) {
        errs.push(FieldError::invalid(
            path,
            v,
            "must be greater than or equal to 0",
        ));
    }
}

fn positive(errs: &mut Errors, path: &Path, value: Option<i64>) {
    if let Some(v) = value.filter(|v| *v <= 0) {
        errs.push(FieldError::invalid(path, v, "must be greater than 0"));
    }
}

fn supported(errs: &mut Errors, path: &Path, value: Option<&str>, default: &str, allowed: &[&str]) {
    let value = value.unwrap_or(default);
    if !allowed.contains(&value) {
        errs.push(FieldError::not_supported(path, value, allowed));
    }
}

fn immutable<T: PartialEq + Serialize>(errs: &mut Errors, path: &Path, new: &T, old: &T) {
    if new != old {
        errs.push(FieldError::invalid(path, Json(new), "field is immutable"));
    }
}

fn port_range(errs: &mut Errors, path: &Path, port: i32) {
    if !(1..=65535).contains(&port) {
        errs.push(FieldError::invalid(
            path,
            port,
            "must be between 1 and 65535, inclusive",
        ));
    }
}

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

fn protocol(errs: &mut Errors, path: &Path, value: Option<&str>) {
    supported(errs, path, value, "TCP", PROTOCOLS);
}

// ---------------------------------------------------------------------------------------------
// Name formats (kube's IsDNS1123Label, IsQualifiedName, …): each returns its messages
// ---------------------------------------------------------------------------------------------

const LABEL_MAX: usize = 63;
const SUBDOMAIN_MAX: usize = 253;

fn regex_error(what: &str, regex: &str, examples: &[&str]) -> String {
    let examples: Vec<String> = examples.iter().map(|e| format!("'{e}'")).collect();
    format!(
        "{what} (e.g. {}, regex used for validation is '{regex}')",
        examples.join(",  or ")
    )
}

fn max_len(max: usize) -> String {
    format!("must be no more than {max} characters")
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn matches_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) => {
            is_lower_alnum(first)
                && is_lower_alnum(last)
                && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
        }
        _ => false,
    }
}

fn dns1123_label(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    if value.len() > LABEL_MAX {
        msgs.push(max_len(LABEL_MAX));
    }
    if !matches_dns_label(value) {
        msgs.push(regex_error(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            "[a-z0-9]([-a-z0-9]*[a-z0-9])?",
            &["my-name", "123-abc"],
        ));
    }
    msgs
}

fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    if value.len() > SUBDOMAIN_MAX {
        msgs.push(max_len(SUBDOMAIN_MAX));
    }
    if !value.split('.').all(matches_dns_label) {
        msgs.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
            &["example.com"],
        ));
    }
    msgs
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, non-empty.
fn matches_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

const QUALIFIED_NAME_ERROR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_REGEX: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";

/// An optional DNS subdomain prefix and '/', then a name of at most 63 characters.
fn qualified_name(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                msgs.push("prefix part must be non-empty".to_string());
            } else {
                msgs.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            msgs.push(regex_error(
                &format!("a qualified name {QUALIFIED_NAME_ERROR} with an optional DNS subdomain prefix and '/'"),
                QUALIFIED_NAME_REGEX,
                &["MyName", "my.name", "123-abc"],
            ));
            return msgs;
        }
    };
    if name.is_empty() {
        msgs.push("name part must be non-empty".to_string());
    } else if name.len() > LABEL_MAX {
        msgs.push(format!("name part {}", max_len(LABEL_MAX)));
    }
    if !name.is_empty() && !matches_qualified_part(name) {
        msgs.push(regex_error(
            &format!("name part {QUALIFIED_NAME_ERROR}"),
            QUALIFIED_NAME_REGEX,
            &["MyName", "my.name", "123-abc"],
        ));
    }
    msgs
}

fn label_value(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    if value.len() > LABEL_MAX {
        msgs.push(max_len(LABEL_MAX));
    }
    if !value.is_empty() && !matches_qualified_part(value) {
        msgs.push(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?",
            &["MyValue", "my_value", "12345"],
        ));
    }
    msgs
}

/// IANA_SVC_NAME: at most 15 lowercase alphanumerics and '-', with a letter, no '--', no '-' at
/// either end.
fn iana_svc_name(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    if value.len() > 15 {
        msgs.push(max_len(15));
    }
    if !value.bytes().all(|c| is_lower_alnum(c) || c == b'-') {
        msgs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if value.contains("--") {
        msgs.push("must not contain consecutive hyphens".to_string());
    }
    if !value.bytes().any(|c| c.is_ascii_lowercase()) {
        msgs.push("must contain at least one letter (a-z)".to_string());
    }
    if value.starts_with('-') || value.ends_with('-') {
        msgs.push("must not begin or end with a hyphen".to_string());
    }
    msgs
}

/// `[-._a-zA-Z][-._a-zA-Z0-9]*`
fn env_var_name(value: &str) -> Vec<String> {
    let ok_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_');
    let b = value.as_bytes();
    let ok = b.first().is_some_and(|c| !c.is_ascii_digit()) && b.iter().all(|&c| ok_char(c));
    if ok {
        return Vec::new();
    }
    vec![regex_error(
        "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit",
        "[-._a-zA-Z][-._a-zA-Z0-9]*",
        &["my.env-name", "MY_ENV.NAME", "MyEnvName1"],
    )]
}

/// ConfigMap and Secret keys: `[-._a-zA-Z0-9]+`, at most 253, not `.`/`..`/`..*`.
fn config_key(value: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    if value.len() > SUBDOMAIN_MAX {
        msgs.push(max_len(SUBDOMAIN_MAX));
    }
    let ok_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_');
    if value.is_empty() || !value.bytes().all(ok_char) {
        msgs.push(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            "[-._a-zA-Z0-9]+",
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if value == "." {
        msgs.push("must not be '.'".to_string());
    } else if value == ".." {
        msgs.push("must not be '..'".to_string());
    } else if value.starts_with("..") {
        msgs.push("must not start with '..'".to_string());
    }
    msgs
}

fn parse_cidr(value: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = value.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    if bits.is_empty()
        || !bits.bytes().all(|b| b.is_ascii_digit())
        || (bits.len() > 1 && bits.starts_with('0'))
    {
        return None;
    }
    let bits: u8 = bits.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

// ---------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Scope {
    Namespaced,
    Cluster,
}

type NameFormat = fn(&str) -> Vec<String>;

const TOTAL_ANNOTATION_SIZE: usize = 256 * 1024;

fn object_meta(
    errs: &mut Errors,
    meta: &ObjectMeta,
    old: Option<&ObjectMeta>,
    scope: Scope,
    name_format: NameFormat,
) {
    let path = Path::new("metadata");
    let name = meta.name.as_deref().unwrap_or("");
    let generate_name = meta.generate_name.as_deref().unwrap_or("");
    if name.is_empty() && generate_name.is_empty() {
        errs.push(FieldError::required(
            &path.child("name"),
            "name or generateName is required",
        ));
    }
    if !name.is_empty() {
        push_each(errs, &path.child("name"), name, name_format(name));
    }
    if !generate_name.is_empty() {
        // A prefix: a trailing '-' is fine, the generated suffix follows it.
        let masked = generate_name.strip_suffix('-').map(|p| format!("{p}-a"));
        let checked = masked.as_deref().unwrap_or(generate_name);
        push_each(
            errs,
            &path.child("generateName"),
            generate_name,
            name_format(checked),
        );
    }
    let namespace = meta.namespace.as_deref().unwrap_or("");
    match scope {
        Scope::Namespaced if namespace.is_empty() => {
            errs.push(FieldError::required(&path.child("namespace"), ""));
        }
        Scope::Namespaced => push_each(
            errs,
            &path.child("namespace"),
            namespace,
            dns1123_label(namespace),
        ),
        Scope::Cluster if !namespace.is_empty() => {
            errs.push(FieldError::forbidden(
                &path.child("namespace"),
                "not allowed on this type",
            ));
        }
        Scope::Cluster => {}
    }
    labels(errs, &path.child("labels"), meta.labels.as_ref());
    annotations(errs, &path.child("annotations"), meta.annotations.as_ref());
    owner_references(errs, &path.child("ownerReferences"), meta);
    finalizers(
        errs,
        &path.child("finalizers"),
        meta.finalizers.as_deref().unwrap_or_default(),
    );
    if let Some(old) = old {
        immutable(errs, &path.child("name"), &meta.name, &old.name);
        immutable(
            errs,
            &path.child("namespace"),
            &meta.namespace,
            &old.namespace,
        );
        if let (Some(new_uid), Some(old_uid)) = (&meta.uid, &old.uid) {
            if !new_uid.is_empty() && !old_uid.is_empty() {
                immutable(errs, &path.child("uid"), new_uid, old_uid);
            }
        }
    }
}

/// Label maps (metadata.labels, nodeSelector, Service selector): keys qualified names, values
/// label values.
fn labels(errs: &mut Errors, path: &Path, labels: Option<&BTreeMap<String, String>>) {
    for (key, value) in labels.into_iter().flatten() {
        push_each(errs, path, key, qualified_name(key));
        push_each(errs, path, value, label_value(value));
    }
}

fn annotations(errs: &mut Errors, path: &Path, annotations: Option<&BTreeMap<String, String>>) {
    let mut total = 0usize;
    for (key, value) in annotations.into_iter().flatten() {
        push_each(errs, path, key, qualified_name(&key.to_lowercase()));
        total = total.saturating_add(key.len()).saturating_add(value.len());
    }
    if total > TOTAL_ANNOTATION_SIZE {
        errs.push(FieldError::too_long(path, TOTAL_ANNOTATION_SIZE));
    }
}

fn owner_references(errs: &mut Errors, path: &Path, meta: &ObjectMeta) {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    for (i, r) in refs.iter().enumerate() {
        let p = path.index(i);
        for (field, value, what) in [
            ("apiVersion", &r.api_version, "version"),
            ("kind", &r.kind, "kind"),
            ("name", &r.name, "name"),
            ("uid", &r.uid, "uid"),
        ] {
            if value.is_empty() {
                errs.push(FieldError::invalid(
                    &p.child(field),
                    value,
                    &format!("{what} must not be empty"),
                ));
            }
        }
        if r.api_version == "v1" && r.kind == "List" {
            errs.push(FieldError::invalid(
                &p.child("kind"),
                &*r.kind,
                "List is not a valid kind for owner references",
            ));
        }
    }
    let controllers = refs.iter().filter(|r| r.controller == Some(true)).count();
    if controllers > 1 {
        errs.push(FieldError::invalid(
            path,
            controllers,
            "only one reference can have Controller set to true",
        ));
    }
}

fn finalizers(errs: &mut Errors, path: &Path, finalizers: &[String]) {
    let mut seen = HashSet::new();
    for (i, f) in finalizers.iter().enumerate() {
        push_each(errs, path, f, qualified_name(f));
        if !seen.insert(f.as_str()) {
            errs.push(FieldError::duplicate(&path.index(i), f));
        }
    }
    if seen.contains("orphan") && seen.contains("foregroundDeletion") {
        errs.push(FieldError::invalid(
            path,
            Json(&finalizers),
            "finalizer orphan and foregroundDeletion cannot be both set",
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------------

fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

fn label_selector(errs: &mut Errors, path: &Path, selector: &LabelSelector) {
    labels(
        errs,
        &path.child("matchLabels"),
        selector.match_labels.as_ref(),
    );
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let p = path.child("matchExpressions").index(i);
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errs.push(FieldError::required(
                &p.child("values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errs.push(FieldError::forbidden(
                &p.child("values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(FieldError::invalid(
                &p.child("operator"),
                other,
                "not a valid selector operator",
            )),
        }
        push_each(errs, &p.child("key"), &req.key, qualified_name(&req.key));
        for (j, v) in values.iter().enumerate() {
            push_each(errs, &p.child("values").index(j), v, label_value(v));
        }
    }
}

fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|req| {
        let values = req.values.as_deref().unwrap_or_default();
        let value = labels.get(&req.key);
        match req.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// A workload's selector: required, non-empty, well-formed, and matching its template's labels.
fn selector_for_template(
    errs: &mut Errors,
    spec: &Path,
    selector: &LabelSelector,
    template: Option<&core::PodTemplateSpec>,
    kind: &str,
) {
    let path = spec.child("selector");
    if selector_is_empty(selector) {
        errs.push(FieldError::invalid(
            &path,
            Json(selector),
            &format!("empty selector is invalid for {kind}"),
        ));
        return;
    }
    let before = errs.len();
    label_selector(errs, &path, selector);
    if errs.len() != before {
        return;
    }
    if let Some(template) = template {
        let empty = BTreeMap::new();
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .unwrap_or(&empty);
        if !selector_matches(selector, labels) {
            errs.push(FieldError::invalid(
                &spec.child("template").child("metadata").child("labels"),
                Json(labels),
                "`selector` does not match template `labels`",
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pods and pod templates
// ---------------------------------------------------------------------------------------------

const POD_RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const WORKLOAD_RESTART_POLICIES: &[&str] = &["Always"];
const JOB_RESTART_POLICIES: &[&str] = &["OnFailure", "Never"];

fn pod(new: &core::Pod, old: Option<&core::Pod>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    let empty = core::PodSpec::default();
    let spec = new.spec.as_ref().unwrap_or(&empty);
    pod_spec(errs, &Path::new("spec"), spec, POD_RESTART_POLICIES);
    if let Some(old) = old {
        pod_update(errs, spec, old.spec.as_ref().unwrap_or(&empty));
    }
}

fn pod_template(
    errs: &mut Errors,
    path: &Path,
    template: &core::PodTemplateSpec,
    restart_policies: &[&str],
) {
    if let Some(meta) = &template.metadata {
        let m = path.child("metadata");
        labels(errs, &m.child("labels"), meta.labels.as_ref());
        annotations(errs, &m.child("annotations"), meta.annotations.as_ref());
    }
    let empty = core::PodSpec::default();
    pod_spec(
        errs,
        &path.child("spec"),
        template.spec.as_ref().unwrap_or(&empty),
        restart_policies,
    );
}

fn pod_spec(errs: &mut Errors, path: &Path, spec: &core::PodSpec, restart_policies: &[&str]) {
    let volumes = volumes(
        errs,
        &path.child("volumes"),
        spec.volumes.as_deref().unwrap_or_default(),
    );
    if spec.containers.is_empty() {
        errs.push(FieldError::required(&path.child("containers"), ""));
    }
    let init = spec.init_containers.as_deref().unwrap_or_default();
    for (i, c) in spec.containers.iter().enumerate() {
        container(errs, &path.child("containers").index(i), c, &volumes, false);
    }
    for (i, c) in init.iter().enumerate() {
        container(
            errs,
            &path.child("initContainers").index(i),
            c,
            &volumes,
            true,
        );
    }
    container_names_unique(errs, path, &spec.containers, init);
    host_ports(errs, path, spec);
    supported(
        errs,
        &path.child("restartPolicy"),
        spec.restart_policy.as_deref(),
        "Always",
        restart_policies,
    );
    dns(errs, path, spec);
    labels(
        errs,
        &path.child("nodeSelector"),
        spec.node_selector.as_ref(),
    );
    for (field, value, format) in [
        ("nodeName", &spec.node_name, dns1123_subdomain as NameFormat),
        (
            "serviceAccountName",
            &spec.service_account_name,
            dns1123_subdomain,
        ),
        (
            "priorityClassName",
            &spec.priority_class_name,
            dns1123_subdomain,
        ),
        ("hostname", &spec.hostname, dns1123_label),
        ("subdomain", &spec.subdomain, dns1123_label),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            push_each(errs, &path.child(field), v, format(v));
        }
    }
    if let Some(v) = spec
        .active_deadline_seconds
        .filter(|v| !(1..=i64::from(i32::MAX)).contains(v))
    {
        errs.push(FieldError::invalid(
            &path.child("activeDeadlineSeconds"),
            v,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    nonnegative(
        errs,
        &path.child("terminationGracePeriodSeconds"),
        spec.termination_grace_period_seconds,
    );
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        toleration(errs, &path.child("tolerations").index(i), t);
    }
}

fn container_names_unique(
    errs: &mut Errors,
    path: &Path,
    containers: &[core::Container],
    init: &[core::Container],
) {
    let mut seen = HashSet::new();
    let all = containers
        .iter()
        .enumerate()
        .map(|(i, c)| (path.child("containers").index(i), c));
    let all = all.chain(
        init.iter()
            .enumerate()
            .map(|(i, c)| (path.child("initContainers").index(i), c)),
    );
    for (p, c) in all {
        if !c.name.is_empty() && !seen.insert(c.name.as_str()) {
            errs.push(FieldError::duplicate(&p.child("name"), &*c.name));
        }
    }
}

/// With host networking a host port must equal its container port; and no two ports of the pod
/// may claim the same host port, protocol and host IP.
fn host_ports(errs: &mut Errors, path: &Path, spec: &core::PodSpec) {
    let host_network = spec.host_network == Some(true);
    let mut claimed = HashSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        for (j, port) in c.ports.iter().flatten().enumerate() {
            let p = path.child("containers").index(i).child("ports").index(j);
            let host_port = port.host_port.unwrap_or(0);
            if host_network && host_port != 0 && host_port != port.container_port {
                errs.push(FieldError::invalid(
                    &p.child("containerPort"),
                    port.container_port,
                    "must match `hostPort` when `hostNetwork` is true",
                ));
            }
            if host_port == 0 {
                continue;
            }
            let key = (
                host_port,
                port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port.host_ip.clone(),
            );
            if !claimed.insert(key) {
                errs.push(FieldError::duplicate(
                    &p.child("hostPort"),
                    format!("{host_port}"),
                ));
            }
        }
    }
}

fn dns(errs: &mut Errors, path: &Path, spec: &core::PodSpec) {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    supported(
        errs,
        &path.child("dnsPolicy"),
        Some(policy),
        "",
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
    );
    let config_path = path.child("dnsConfig");
    let nameservers = spec
        .dns_config
        .as_ref()
        .and_then(|c| c.nameservers.as_deref())
        .unwrap_or_default();
    if policy == "None" {
        if spec.dns_config.is_none() {
            errs.push(FieldError::required(
                &config_path,
                "must provide `dnsConfig` when `dnsPolicy` is None",
            ));
        } else if nameservers.is_empty() {
            errs.push(FieldError::required(
                &config_path.child("nameservers"),
                "must provide at least one DNS nameserver when `dnsPolicy` is None",
            ));
        }
    }
    if nameservers.len() > 3 {
        errs.push(FieldError::invalid(
            &config_path.child("nameservers"),
            Json(&nameservers),
            "must not have more than 3 nameservers",
        ));
    }
    for (i, ns) in nameservers.iter().enumerate() {
        if ns.parse::<IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                &config_path.child("nameservers").index(i),
                ns,
                "must be a valid IP address",
            ));
        }
    }
}

fn toleration(errs: &mut Errors, path: &Path, t: &core::Toleration) {
    let key = t.key.as_deref().unwrap_or("");
    let value = t.value.as_deref().unwrap_or("");
    if !key.is_empty() {
        push_each(errs, &path.child("key"), key, qualified_name(key));
    }
    match t.operator.as_deref().unwrap_or("") {
        "" | "Equal" => {
            if key.is_empty() {
                errs.push(FieldError::invalid(
                    &path.child("operator"),
                    t.operator.as_deref().unwrap_or(""),
                    "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
                ));
            }
            push_each(errs, &path.child("value"), value, label_value(value));
        }
        "Exists" => {
            if !value.is_empty() {
                errs.push(FieldError::invalid(
                    &path.child("operator"),
                    value,
                    "value must be empty when `operator` is 'Exists'",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            &path.child("operator"),
            other,
            &["Equal", "Exists"],
        )),
    }
    let effect = t.effect.as_deref().unwrap_or("");
    if t.toleration_seconds.is_some() && effect != "NoExecute" {
        errs.push(FieldError::invalid(
            &path.child("effect"),
            effect,
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
        ));
    }
    if !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        errs.push(FieldError::not_supported(
            &path.child("effect"),
            effect,
            &["NoExecute", "NoSchedule", "PreferNoSchedule"],
        ));
    }
}

/// Validates the pod's volumes; returns their names for the mounts to refer to.
fn volumes<'a>(errs: &mut Errors, path: &Path, volumes: &'a [core::Volume]) -> BTreeSet<&'a str> {
    let mut names = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let p = path.index(i);
        if v.name.is_empty() {
            errs.push(FieldError::required(&p.child("name"), ""));
        } else {
            push_each(errs, &p.child("name"), &v.name, dns1123_label(&v.name));
            if !names.insert(v.name.as_str()) {
                errs.push(FieldError::duplicate(&p.child("name"), &*v.name));
            }
        }
        volume_source(errs, &p, v);
    }
    names
}

/// At most one source (none is kube's default, an `emptyDir`), and the common sources' own
/// required fields.
fn volume_source(errs: &mut Errors, path: &Path, v: &core::Volume) {
    let sources: Vec<String> = match serde_json::to_value(v) {
        Ok(Value::Object(map)) => map
            .into_iter()
            .filter(|(k, val)| k != "name" && !val.is_null())
            .map(|(k, _)| k)
            .collect(),
        _ => Vec::new(),
    };
    for extra in sources.iter().skip(1) {
        errs.push(FieldError::forbidden(
            &path.child(extra),
            "may not specify more than 1 volume type",
        ));
    }
    if let Some(cm) = &v.config_map {
        if cm.name.is_empty() {
            errs.push(FieldError::required(
                &path.child("configMap").child("name"),
                "",
            ));
        }
    }
    if let Some(s) = &v.secret {
        if s.secret_name.as_deref().unwrap_or("").is_empty() {
            errs.push(FieldError::required(
                &path.child("secret").child("secretName"),
                "",
            ));
        }
    }
    if let Some(h) = &v.host_path {
        if h.path.is_empty() {
            errs.push(FieldError::required(
                &path.child("hostPath").child("path"),
                "",
            ));
        }
    }
    if let Some(pvc) = &v.persistent_volume_claim {
        if pvc.claim_name.is_empty() {
            errs.push(FieldError::required(
                &path.child("persistentVolumeClaim").child("claimName"),
                "",
            ));
        }
    }
    if let Some(limit) = v.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref()) {
        quantity_nonnegative(errs, &path.child("emptyDir").child("sizeLimit"), limit);
    }
    if let Some(projected) = &v.projected {
        let projected_path = path.child("projected");
        for (i, source) in projected.sources.iter().flatten().enumerate() {
            let Some(token) = &source.service_account_token else {
                continue;
            };
            let token_path = projected_path
                .child("sources")
                .index(i)
                .child("serviceAccountToken");
            let seconds = token.expiration_seconds.unwrap_or(3600);
            if seconds < 600 {
                errs.push(FieldError::invalid(
                    &token_path.child("expirationSeconds"),
                    seconds,
                    "may not specify a duration less than 10 minutes",
                ));
            }
            if seconds > 1 << 32 {
                errs.push(FieldError::invalid(
                    &token_path.child("expirationSeconds"),
                    seconds,
                    "may not specify a duration larger than 2^32 seconds",
                ));
            }
            if token.path.is_empty() {
                // kube reports this on the projection's path, not the source's.
                errs.push(FieldError::required(&projected_path.child("path"), ""));
            }
        }
    }
}

fn container(
    errs: &mut Errors,
    path: &Path,
    c: &core::Container,
    volumes: &BTreeSet<&str>,
    init: bool,
) {
    if c.name.is_empty() {
        errs.push(FieldError::required(&path.child("name"), ""));
    } else {
        push_each(errs, &path.child("name"), &c.name, dns1123_label(&c.name));
    }
    let image = c.image.as_deref().unwrap_or("");
    if image.is_empty() {
        errs.push(FieldError::required(&path.child("image"), ""));
    } else if image.trim() != image {
        errs.push(FieldError::invalid(
            &path.child("image"),
            image,
            "must not have leading or trailing whitespace",
        ));
    }
    container_ports(
        errs,
        &path.child("ports"),
        c.ports.as_deref().unwrap_or_default(),
    );
    for (i, e) in c.env.iter().flatten().enumerate() {
        env_var(errs, &path.child("env").index(i), e);
    }
    for (i, e) in c.env_from.iter().flatten().enumerate() {
        env_from(errs, &path.child("envFrom").index(i), e);
    }
    volume_mounts(
        errs,
        &path.child("volumeMounts"),
        c.volume_mounts.as_deref().unwrap_or_default(),
        volumes,
    );
    if let Some(r) = &c.resources {
        resources(errs, &path.child("resources"), r);
    }
    let sidecar = init && c.restart_policy.as_deref() == Some("Always");
    let probes = [
        ("livenessProbe", &c.liveness_probe, ProbeKind::Liveness),
        ("readinessProbe", &c.readiness_probe, ProbeKind::Readiness),
        ("startupProbe", &c.startup_probe, ProbeKind::Startup),
    ];
    for (field, p, kind) in probes {
        let Some(p) = p else { continue };
        if init && !sidecar {
            errs.push(FieldError::forbidden(
                &path.child(field),
                "may not be set for init containers without restartPolicy=Always",
            ));
        } else {
            probe(errs, &path.child(field), p, kind);
        }
    }
    if let Some(l) = &c.lifecycle {
        if init && !sidecar {
            errs.push(FieldError::forbidden(
                &path.child("lifecycle"),
                "may not be set for init containers without restartPolicy=Always",
            ));
        }
        for (field, h) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
            if let Some(h) = h {
                lifecycle_handler(errs, &path.child("lifecycle").child(field), h);
            }
        }
    }
    if let Some(policy) = c.restart_policy.as_deref() {
        if !init {
            errs.push(FieldError::forbidden(
                &path.child("restartPolicy"),
                "may not be set for non-init containers",
            ));
        } else if policy != "Always" {
            errs.push(FieldError::not_supported(
                &path.child("restartPolicy"),
                policy,
                &["Always"],
            ));
        }
    }
    if let Some(p) = c.image_pull_policy.as_deref() {
        supported(
            errs,
            &path.child("imagePullPolicy"),
            Some(p),
            "",
            &["Always", "IfNotPresent", "Never"],
        );
    }
    if let Some(p) = c.termination_message_policy.as_deref() {
        supported(
            errs,
            &path.child("terminationMessagePolicy"),
            Some(p),
            "",
            &["File", "FallbackToLogsOnError"],
        );
    }
}

fn container_ports(errs: &mut Errors, path: &Path, ports: &[core::ContainerPort]) {
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = path.index(i);
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            push_each(errs, &p.child("name"), name, iana_svc_name(name));
            if !names.insert(name) {
                errs.push(FieldError::duplicate(&p.child("name"), name));
            }
        }
        port_range(errs, &p.child("containerPort"), port.container_port);
        if let Some(host) = port.host_port.filter(|h| *h != 0) {
            port_range(errs, &p.child("hostPort"), host);
        }
        protocol(errs, &p.child("protocol"), port.protocol.as_deref());
    }
}

const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

const ENV_RESOURCES: &[&str] = &[
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
];

fn env_var(errs: &mut Errors, path: &Path, e: &core::EnvVar) {
    if e.name.is_empty() {
        errs.push(FieldError::required(&path.child("name"), ""));
    } else {
        push_each(errs, &path.child("name"), &e.name, env_var_name(&e.name));
    }
    let Some(from) = &e.value_from else { return };
    let p = path.child("valueFrom");
    if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
        errs.push(FieldError::invalid(
            &p,
            "",
            "may not be specified when `value` is not empty",
        ));
    }
    let sources = [
        from.field_ref.is_some(),
        from.resource_field_ref.is_some(),
        from.config_map_key_ref.is_some(),
        from.secret_key_ref.is_some(),
    ];
    match sources.iter().filter(|s| **s).count() {
        0 => errs.push(FieldError::invalid(
            &p,
            "",
            "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
        )),
        1 => {}
        _ => errs.push(FieldError::invalid(&p, "", "may not have more than one field specified at a time")),
    }
    if let Some(f) = &from.field_ref {
        let fp = p.child("fieldRef").child("fieldPath");
        let labelled = f.field_path.starts_with("metadata.labels['")
            || f.field_path.starts_with("metadata.annotations['");
        if f.field_path.is_empty() {
            errs.push(FieldError::required(&fp, ""));
        } else if !labelled && !ENV_FIELD_PATHS.contains(&f.field_path.as_str()) {
            errs.push(FieldError::not_supported(
                &fp,
                &*f.field_path,
                ENV_FIELD_PATHS,
            ));
        }
    }
    if let Some(r) = &from.resource_field_ref {
        let rp = p.child("resourceFieldRef").child("resource");
        if r.resource.is_empty() {
            errs.push(FieldError::required(&rp, ""));
        } else if !ENV_RESOURCES.contains(&r.resource.as_str())
            && !r.resource.starts_with("limits.hugepages-")
            && !r.resource.starts_with("requests.hugepages-")
        {
            errs.push(FieldError::not_supported(&rp, &*r.resource, ENV_RESOURCES));
        }
    }
    let key_refs = [
        (
            "configMapKeyRef",
            from.config_map_key_ref.as_ref().map(|r| (&r.name, &r.key)),
        ),
        (
            "secretKeyRef",
            from.secret_key_ref.as_ref().map(|r| (&r.name, &r.key)),
        ),
    ];
    for (field, r) in key_refs {
        let Some((name, key)) = r else { continue };
        let kp = p.child(field);
        if name.is_empty() {
            errs.push(FieldError::required(&kp.child("name"), ""));
        }
        if key.is_empty() {
            errs.push(FieldError::required(&kp.child("key"), ""));
        } else {
            push_each(errs, &kp.child("key"), key, config_key(key));
        }
    }
}

fn env_from(errs: &mut Errors, path: &Path, e: &core::EnvFromSource) {
    if let Some(prefix) = e.prefix.as_deref().filter(|p| !p.is_empty()) {
        push_each(errs, &path.child("prefix"), prefix, env_var_name(prefix));
    }
    let refs = [
        ("configMapRef", e.config_map_ref.as_ref().map(|r| &r.name)),
        ("secretRef", e.secret_ref.as_ref().map(|r| &r.name)),
    ];
    match refs.iter().filter(|(_, r)| r.is_some()).count() {
        0 => errs.push(FieldError::invalid(
            path,
            "",
            "must specify one of: `configMapRef` or `secretRef`",
        )),
        1 => {}
        _ => errs.push(FieldError::invalid(
            path,
            "",
            "may not have more than one field specified at a time",
        )),
    }
    for (field, name) in refs {
        if name.is_some_and(|n| n.is_empty()) {
            errs.push(FieldError::required(&path.child(field).child("name"), ""));
        }
    }
}

fn volume_mounts(
    errs: &mut Errors,
    path: &Path,
    mounts: &[core::VolumeMount],
    volumes: &BTreeSet<&str>,
) {
    let mut paths = HashSet::new();
    for (i, m) in mounts.iter().enumerate() {
        let p = path.index(i);
        if m.name.is_empty() {
            errs.push(FieldError::required(&p.child("name"), ""));
        } else if !volumes.contains(m.name.as_str()) {
            errs.push(FieldError::not_found(&p.child("name"), &*m.name));
        }
        if m.mount_path.is_empty() {
            errs.push(FieldError::required(&p.child("mountPath"), ""));
        } else if !paths.insert(m.mount_path.as_str()) {
            errs.push(FieldError::invalid(
                &p.child("mountPath"),
                &*m.mount_path,
                "must be unique",
            ));
        }
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub.starts_with('/') {
                errs.push(FieldError::invalid(
                    &p.child("subPath"),
                    sub,
                    "must be a relative path",
                ));
            } else if sub.split('/').any(|part| part == "..") {
                errs.push(FieldError::invalid(
                    &p.child("subPath"),
                    sub,
                    "must not contain '..'",
                ));
            }
        }
        if let Some(prop) = m.mount_propagation.as_deref() {
            supported(
                errs,
                &p.child("mountPropagation"),
                Some(prop),
                "",
                &["Bidirectional", "HostToContainer", "None"],
            );
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

fn probe(errs: &mut Errors, path: &Path, p: &core::Probe, kind: ProbeKind) {
    let handlers = [
        ("exec", p.exec.is_some()),
        ("httpGet", p.http_get.is_some()),
        ("tcpSocket", p.tcp_socket.is_some()),
        ("grpc", p.grpc.is_some()),
    ];
    handler_count(errs, path, &handlers);
    if let Some(h) = &p.http_get {
        http_get(errs, &path.child("httpGet"), h);
    }
    if let Some(t) = &p.tcp_socket {
        port_num_or_name(errs, &path.child("tcpSocket").child("port"), &t.port);
    }
    if let Some(g) = &p.grpc {
        port_range(errs, &path.child("grpc").child("port"), g.port);
    }
    for (field, value) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        nonnegative(errs, &path.child(field), value.map(i64::from));
    }
    if kind != ProbeKind::Readiness {
        if let Some(v) = p.success_threshold.filter(|v| *v != 1) {
            errs.push(FieldError::invalid(
                &path.child("successThreshold"),
                v,
                "must be 1",
            ));
        }
    }
    if let Some(v) = p.termination_grace_period_seconds {
        let tp = path.child("terminationGracePeriodSeconds");
        if kind == ProbeKind::Readiness {
            errs.push(FieldError::invalid(
                &tp,
                v,
                "must not be set for readinessProbes",
            ));
        } else {
            positive(errs, &tp, Some(v));
        }
    }
}

fn lifecycle_handler(errs: &mut Errors, path: &Path, h: &core::LifecycleHandler) {
    let handlers = [
        ("exec", h.exec.is_some()),
        ("httpGet", h.http_get.is_some()),
        ("tcpSocket", h.tcp_socket.is_some()),
        ("sleep", h.sleep.is_some()),
    ];
    handler_count(errs, path, &handlers);
    if let Some(g) = &h.http_get {
        http_get(errs, &path.child("httpGet"), g);
    }
    if let Some(t) = &h.tcp_socket {
        port_num_or_name(errs, &path.child("tcpSocket").child("port"), &t.port);
    }
    if let Some(s) = &h.sleep {
        nonnegative(errs, &path.child("sleep").child("seconds"), Some(s.seconds));
    }
}

fn handler_count(errs: &mut Errors, path: &Path, handlers: &[(&str, bool)]) {
    let mut set = handlers.iter().filter(|(_, present)| *present);
    if set.next().is_none() {
        errs.push(FieldError::required(path, "must specify a handler type"));
    }
    for (field, _) in set {
        errs.push(FieldError::forbidden(
            &path.child(field),
            "may not specify more than 1 handler type",
        ));
    }
}

fn http_get(errs: &mut Errors, path: &Path, h: &core::HTTPGetAction) {
    port_num_or_name(errs, &path.child("port"), &h.port);
    if let Some(scheme) = h.scheme.as_deref() {
        supported(
            errs,
            &path.child("scheme"),
            Some(scheme),
            "",
            &["HTTP", "HTTPS"],
        );
    }
}

/// A port given as a number (1–65535) or a container port's name (IANA_SVC_NAME).
fn port_num_or_name(errs: &mut Errors, path: &Path, port: &IntOrString) {
    match port {
        IntOrString::Int(n) => port_range(errs, path, *n),
        IntOrString::String(name) if name.is_empty() => errs.push(FieldError::required(path, "")),
        IntOrString::String(name) => push_each(errs, path, name, iana_svc_name(name)),
    }
}

// ---------------------------------------------------------------------------------------------
// Resources and quantities
// ---------------------------------------------------------------------------------------------

const STANDARD_CONTAINER_RESOURCES: &[&str] = &["cpu", "memory", "ephemeral-storage"];

/// Extended resources (`example.com/gpu`) cannot be overcommitted: request = limit, integers.
fn is_extended_resource(name: &str) -> bool {
    name.contains('/') && !name.starts_with("kubernetes.io/") && !name.starts_with("requests.")
}

fn resource_name(errs: &mut Errors, path: &Path, name: &str) {
    if STANDARD_CONTAINER_RESOURCES.contains(&name) || name.starts_with("hugepages-") {
        return;
    }
    if name.contains('/') {
        let msgs = qualified_name(name);
        if !msgs.is_empty() {
            push_each(errs, path, name, msgs);
            return;
        }
        if is_extended_resource(name) && !name.contains(".kubernetes.io/") {
            return;
        }
    }
    errs.push(FieldError::invalid(
        path,
        name,
        "must be a standard resource for containers",
    ));
}

fn quantity_nonnegative(errs: &mut Errors, path: &Path, q: &Quantity) -> Option<ParsedQuantity> {
    match parse_quantity(&q.0) {
        None => {
            errs.push(FieldError::invalid(path, &*q.0, QUANTITY_ERROR));
            None
        }
        Some(v) if v.0 < 0 => {
            errs.push(FieldError::invalid(
                path,
                &*q.0,
                "must be greater than or equal to 0",
            ));
            None
        }
        Some(v) => Some(v),
    }
}

fn resources(errs: &mut Errors, path: &Path, r: &core::ResourceRequirements) {
    let empty = BTreeMap::new();
    let limits_map = r.limits.as_ref().unwrap_or(&empty);
    let requests_map = r.requests.as_ref().unwrap_or(&empty);
    let mut limits = BTreeMap::new();
    for (name, q) in limits_map {
        let p = path.child("limits").key(name);
        resource_name(errs, &p, name);
        if let Some(v) = quantity_nonnegative(errs, &p, q) {
            limits.insert(name.as_str(), (v, q));
        }
    }
    for (name, q) in requests_map {
        let p = path.child("requests").key(name);
        resource_name(errs, &p, name);
        let Some(request) = quantity_nonnegative(errs, &p, q) else {
            continue;
        };
        let limit = limits.get(name.as_str());
        if is_extended_resource(name) {
            if request.0 % NANO != 0 {
                errs.push(FieldError::invalid(&p, &*q.0, "must be an integer"));
            }
            match limit {
                None if !limits_map.contains_key(name) => errs.push(FieldError::required(
                    &path.child("limits").key(name),
                    "Limit must be set for non overcommitable resources",
                )),
                Some((lim, lq)) if *lim != request => {
                    errs.push(FieldError::invalid(
                        &p,
                        &*q.0,
                        &format!("must be equal to {name} limit of {}", lq.0),
                    ));
                }
                _ => {}
            }
        } else if let Some((lim, lq)) = limit {
            if request > *lim {
                errs.push(FieldError::invalid(
                    &p,
                    &*q.0,
                    &format!("must be less than or equal to {name} limit of {}", lq.0),
                ));
            }
        }
    }
}

const QUANTITY_ERROR: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// Nano-units per unit: quantities are compared at kube's smallest scale, 10^-9.
const NANO: i128 = 1_000_000_000;

/// A quantity in nano-units (10^-9), rounded up like kube's; values beyond i128 saturate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ParsedQuantity(i128);

/// Parses kube's quantity grammar: `[+-]<digits>[.<digits>]` then a binary suffix (Ki…Ei), a
/// decimal suffix (n, u, m, "", k, M, G, T, P, E) or a decimal exponent (`e3`, `E-2`).
fn parse_quantity(s: &str) -> Option<ParsedQuantity> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, suffix) = rest.split_at(number_len);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    let (exp10, exp2) = quantity_suffix(suffix)?;
    // value = digits * 10^(exp10 - frac.len()) * 2^exp2, expressed in nano-units.
    let digits = format!("{whole}{frac}");
    let digits = digits.trim_start_matches('0');
    let frac_len = i64::try_from(frac.len()).ok()?;
    let scale = exp10.checked_sub(frac_len)?.checked_add(9)?;
    let magnitude = if digits.is_empty() {
        0
    } else {
        scale_digits(digits, scale, exp2)
    };
    Some(ParsedQuantity(if negative {
        -magnitude
    } else {
        magnitude
    }))
}

/// (power of ten, power of two) of a quantity suffix, None when it is not one.
fn quantity_suffix(suffix: &str) -> Option<(i64, u32)> {
    let decimal = |e: i64| Some((e, 0));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => Some((0, 10)),
        "Mi" => Some((0, 20)),
        "Gi" => Some((0, 30)),
        "Ti" => Some((0, 40)),
        "Pi" => Some((0, 50)),
        "Ei" => Some((0, 60)),
        _ => {
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            let unsigned = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Huge exponents only saturate; keep the arithmetic bounded.
            let e: i64 = exponent.parse().unwrap_or(if exponent.starts_with('-') {
                -1000
            } else {
                1000
            });
            Some((e.clamp(-1000, 1000), 0))
        }
    }
}

/// digits * 10^scale * 2^exp2, rounded up, saturating at i128::MAX.
fn scale_digits(digits: &str, scale: i64, exp2: u32) -> i128 {
    let mut n: i128 = 0;
    for b in digits.bytes() {
        match n
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(b - b'0')))
        {
            Some(v) => n = v,
            None => return i128::MAX,
        }
    }
    let Some(n) = n.checked_mul(1i128 << exp2) else {
        return i128::MAX;
    };
    if scale >= 0 {
        let factor = u32::try_from(scale)
            .ok()
            .and_then(|s| 10i128.checked_pow(s));
        return factor.and_then(|f| n.checked_mul(f)).unwrap_or(i128::MAX);
    }
    match u32::try_from(-scale)
        .ok()
        .and_then(|s| 10i128.checked_pow(s))
    {
        Some(divisor) => n / divisor + i128::from(n % divisor != 0),
        // Smaller than any representable step: a positive value rounds up to one nano-unit.
        None => i128::from(n > 0),
    }
}

// ---------------------------------------------------------------------------------------------
// Pod updates
// ---------------------------------------------------------------------------------------------

const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations)";

/// A pod's spec is immutable but for images, a shorter active deadline and added tolerations.
/// Binding (`spec.nodeName`) goes through its own subresource, not through an update.
fn pod_update(errs: &mut Errors, new: &core::PodSpec, old: &core::PodSpec) {
    let path = Path::new("spec");
    match (new.active_deadline_seconds, old.active_deadline_seconds) {
        (None, Some(_)) => errs.push(FieldError::invalid(
            &path.child("activeDeadlineSeconds"),
            "",
            "must not update from a positive integer to nil value",
        )),
        (Some(n), Some(o)) if n > o => errs.push(FieldError::invalid(
            &path.child("activeDeadlineSeconds"),
            n,
            "must be less than or equal to previous value",
        )),
        _ => {}
    }
    let new_tolerations = new.tolerations.as_deref().unwrap_or_default();
    for old_t in old.tolerations.iter().flatten() {
        let kept = new_tolerations.iter().any(|t| {
            t.key == old_t.key
                && t.operator == old_t.operator
                && t.value == old_t.value
                && t.effect == old_t.effect
        });
        if !kept {
            errs.push(FieldError::forbidden(
                &path.child("tolerations"),
                "existing toleration can not be modified except its tolerationSeconds",
            ));
            break;
        }
    }
    let mut masked = new.clone();
    copy_images(&mut masked.containers, &old.containers);
    if let (Some(m), Some(o)) = (
        masked.init_containers.as_mut(),
        old.init_containers.as_ref(),
    ) {
        copy_images(m, o);
    }
    masked.active_deadline_seconds = old.active_deadline_seconds;
    masked.tolerations = old.tolerations.clone();
    if masked != *old {
        let changed = changed_fields(&masked, old);
        let detail = if changed.is_empty() {
            POD_UPDATE_FORBIDDEN.to_string()
        } else {
            format!("{POD_UPDATE_FORBIDDEN}; changed: {}", changed.join(", "))
        };
        errs.push(FieldError::forbidden(&path, &detail));
    }
}

fn copy_images(new: &mut [core::Container], old: &[core::Container]) {
    if new.len() != old.len() {
        return;
    }
    for (n, o) in new.iter_mut().zip(old) {
        n.image.clone_from(&o.image);
    }
}

/// The top-level fields in which two serialized structs differ (for messages).
fn changed_fields<T: Serialize>(new: &T, old: &T) -> Vec<String> {
    let (Ok(Value::Object(new)), Ok(Value::Object(old))) =
        (serde_json::to_value(new), serde_json::to_value(old))
    else {
        return Vec::new();
    };
    let keys: BTreeSet<&String> = new.keys().chain(old.keys()).collect();
    keys.into_iter()
        .filter(|k| new.get(*k) != old.get(*k))
        .map(|k| format!("spec.{k}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Workloads: Deployment, ReplicaSet, DaemonSet, StatefulSet
// ---------------------------------------------------------------------------------------------

fn deployment(new: &apps::Deployment, old: Option<&apps::Deployment>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    let empty = apps::DeploymentSpec::default();
    let spec = new.spec.as_ref().unwrap_or(&empty);
    let path = Path::new("spec");
    nonnegative(errs, &path.child("replicas"), spec.replicas.map(i64::from));
    selector_for_template(
        errs,
        &path,
        &spec.selector,
        Some(&spec.template),
        "deployment",
    );
    pod_template(
        errs,
        &path.child("template"),
        &spec.template,
        WORKLOAD_RESTART_POLICIES,
    );
    nonnegative(
        errs,
        &path.child("minReadySeconds"),
        spec.min_ready_seconds.map(i64::from),
    );
    nonnegative(
        errs,
        &path.child("revisionHistoryLimit"),
        spec.revision_history_limit.map(i64::from),
    );
    if let Some(deadline) = spec.progress_deadline_seconds {
        let p = path.child("progressDeadlineSeconds");
        nonnegative(errs, &p, Some(i64::from(deadline)));
        if deadline <= spec.min_ready_seconds.unwrap_or(0) {
            errs.push(FieldError::invalid(
                &p,
                deadline,
                "must be greater than minReadySeconds",
            ));
        }
    }
    deployment_strategy(errs, &path.child("strategy"), spec.strategy.as_ref());
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        immutable(
            errs,
            &path.child("selector"),
            &spec.selector,
            &old_spec.selector,
        );
    }
}

fn deployment_strategy(
    errs: &mut Errors,
    path: &Path,
    strategy: Option<&apps::DeploymentStrategy>,
) {
    let kind = strategy
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate");
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    match kind {
        "Recreate" if rolling.is_some() => errs.push(FieldError::forbidden(
            &path.child("rollingUpdate"),
            "may not be specified when strategy `type` is 'Recreate'",
        )),
        "Recreate" => {}
        "RollingUpdate" => {
            let p = path.child("rollingUpdate");
            let default = IntOrString::String("25%".into());
            let surge = rolling
                .and_then(|r| r.max_surge.as_ref())
                .unwrap_or(&default);
            let unavailable = rolling
                .and_then(|r| r.max_unavailable.as_ref())
                .unwrap_or(&default);
            rolling_parameters(errs, &p, surge, unavailable);
        }
        other => errs.push(FieldError::not_supported(
            &path.child("type"),
            other,
            &["Recreate", "RollingUpdate"],
        )),
    }
}

/// maxSurge and maxUnavailable: non-negative integers or percentages, maxUnavailable at most
/// 100%, and not both zero.
fn rolling_parameters(
    errs: &mut Errors,
    path: &Path,
    surge: &IntOrString,
    unavailable: &IntOrString,
) {
    let surge_path = path.child("maxSurge");
    let unavailable_path = path.child("maxUnavailable");
    let surge_value = int_or_percent(errs, &surge_path, surge);
    let unavailable_value = int_or_percent(errs, &unavailable_path, unavailable);
    if let Some(Percent(p)) = unavailable_value.filter(|v| matches!(v, Percent(_))) {
        if p > 100 {
            errs.push(FieldError::invalid(
                &unavailable_path,
                unavailable,
                "must not be greater than 100%",
            ));
        }
    }
    if surge_value.is_some_and(IntOrPercent::is_zero)
        && unavailable_value.is_some_and(IntOrPercent::is_zero)
    {
        errs.push(FieldError::invalid(
            &unavailable_path,
            unavailable,
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

#[derive(Clone, Copy, PartialEq)]
enum IntOrPercent {
    Int(i64),
    Percent(i64),
}
use IntOrPercent::Percent;

impl IntOrPercent {
    fn is_zero(self) -> bool {
        matches!(self, IntOrPercent::Int(0) | IntOrPercent::Percent(0))
    }
}

/// A non-negative integer or a `[0-9]+%` percentage; None (with an error) otherwise.
fn int_or_percent(errs: &mut Errors, path: &Path, value: &IntOrString) -> Option<IntOrPercent> {
    match value {
        IntOrString::Int(i) if *i < 0 => {
            errs.push(FieldError::invalid(
                path,
                *i,
                "must be greater than or equal to 0",
            ));
            None
        }
        IntOrString::Int(i) => Some(IntOrPercent::Int(i64::from(*i))),
        IntOrString::String(s) => {
            let digits = s
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            match digits {
                Some(d) => Some(Percent(d.parse().unwrap_or(i64::MAX))),
                None => {
                    errs.push(FieldError::invalid(
                        path,
                        s,
                        &regex_error(
                            "a valid percent string must be a numeric string followed by an ending '%'",
                            "[0-9]+%",
                            &["1%", "93%"],
                        ),
                    ));
                    None
                }
            }
        }
    }
}

fn replica_set(new: &apps::ReplicaSet, old: Option<&apps::ReplicaSet>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    let empty = apps::ReplicaSetSpec::default();
    let spec = new.spec.as_ref().unwrap_or(&empty);
    let path = Path::new("spec");
    nonnegative(errs, &path.child("replicas"), spec.replicas.map(i64::from));
    nonnegative(
        errs,
        &path.child("minReadySeconds"),
        spec.min_ready_seconds.map(i64::from),
    );
    selector_for_template(
        errs,
        &path,
        &spec.selector,
        spec.template.as_ref(),
        "replicaset",
    );
    match &spec.template {
        Some(t) => pod_template(errs, &path.child("template"), t, WORKLOAD_RESTART_POLICIES),
        None => errs.push(FieldError::required(&path.child("template"), "")),
    }
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        immutable(
            errs,
            &path.child("selector"),
            &spec.selector,
            &old_spec.selector,
        );
    }
}

fn daemon_set(new: &apps::DaemonSet, old: Option<&apps::DaemonSet>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    let empty = apps::DaemonSetSpec::default();
    let spec = new.spec.as_ref().unwrap_or(&empty);
    let path = Path::new("spec");
    selector_for_template(
        errs,
        &path,
        &spec.selector,
        Some(&spec.template),
        "daemonset",
    );
    pod_template(
        errs,
        &path.child("template"),
        &spec.template,
        WORKLOAD_RESTART_POLICIES,
    );
    nonnegative(
        errs,
        &path.child("minReadySeconds"),
        spec.min_ready_seconds.map(i64::from),
    );
    nonnegative(
        errs,
        &path.child("revisionHistoryLimit"),
        spec.revision_history_limit.map(i64::from),
    );
    let strategy = spec.update_strategy.as_ref();
    let sp = path.child("updateStrategy");
    match strategy
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
    {
        "RollingUpdate" => {
            let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
            let one = IntOrString::Int(1);
            let zero = IntOrString::Int(0);
            let unavailable = rolling
                .and_then(|r| r.max_unavailable.as_ref())
                .unwrap_or(&one);
            let surge = rolling.and_then(|r| r.max_surge.as_ref()).unwrap_or(&zero);
            rolling_parameters(errs, &sp.child("rollingUpdate"), surge, unavailable);
        }
        "OnDelete" => {}
        other => errs.push(FieldError::not_supported(
            &sp.child("type"),
            other,
            &["OnDelete", "RollingUpdate"],
        )),
    }
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        immutable(
            errs,
            &path.child("selector"),
            &spec.selector,
            &old_spec.selector,
        );
    }
}

const STATEFUL_SET_UPDATE_FORBIDDEN: &str = "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden";

fn stateful_set(new: &apps::StatefulSet, old: Option<&apps::StatefulSet>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    let empty = apps::StatefulSetSpec::default();
    let spec = new.spec.as_ref().unwrap_or(&empty);
    let path = Path::new("spec");
    nonnegative(errs, &path.child("replicas"), spec.replicas.map(i64::from));
    nonnegative(
        errs,
        &path.child("minReadySeconds"),
        spec.min_ready_seconds.map(i64::from),
    );
    nonnegative(
        errs,
        &path.child("revisionHistoryLimit"),
        spec.revision_history_limit.map(i64::from),
    );
    if let Some(start) = spec.ordinals.as_ref().and_then(|o| o.start) {
        nonnegative(
            errs,
            &path.child("ordinals").child("start"),
            Some(i64::from(start)),
        );
    }
    selector_for_template(
        errs,
        &path,
        &spec.selector,
        Some(&spec.template),
        "statefulset",
    );
    pod_template(
        errs,
        &path.child("template"),
        &spec.template,
        WORKLOAD_RESTART_POLICIES,
    );
    supported(
        errs,
        &path.child("podManagementPolicy"),
        spec.pod_management_policy.as_deref(),
        "OrderedReady",
        &["OrderedReady", "Parallel"],
    );
    stateful_set_strategy(
        errs,
        &path.child("updateStrategy"),
        spec.update_strategy.as_ref(),
    );
    if let Some(policy) = &spec.persistent_volume_claim_retention_policy {
        let pp = path.child("persistentVolumeClaimRetentionPolicy");
        for (field, value) in [
            ("whenDeleted", &policy.when_deleted),
            ("whenScaled", &policy.when_scaled),
        ] {
            supported(
                errs,
                &pp.child(field),
                value.as_deref(),
                "Retain",
                &["Retain", "Delete"],
            );
        }
    }
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        immutable(
            errs,
            &path.child("selector"),
            &spec.selector,
            &old_spec.selector,
        );
        let mask = |s: &apps::StatefulSetSpec| apps::StatefulSetSpec {
            replicas: None,
            ordinals: None,
            template: Default::default(),
            update_strategy: None,
            revision_history_limit: None,
            persistent_volume_claim_retention_policy: None,
            min_ready_seconds: None,
            selector: Default::default(),
            ..s.clone()
        };
        if mask(spec) != mask(old_spec) {
            errs.push(FieldError::forbidden(&path, STATEFUL_SET_UPDATE_FORBIDDEN));
        }
    }
}

fn stateful_set_strategy(
    errs: &mut Errors,
    path: &Path,
    strategy: Option<&apps::StatefulSetUpdateStrategy>,
) {
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    match strategy
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
    {
        "RollingUpdate" => {
            let Some(rolling) = rolling else { return };
            let rp = path.child("rollingUpdate");
            nonnegative(
                errs,
                &rp.child("partition"),
                rolling.partition.map(i64::from),
            );
            if let Some(mu) = &rolling.max_unavailable {
                let mp = rp.child("maxUnavailable");
                if int_or_percent(errs, &mp, mu).is_some_and(IntOrPercent::is_zero) {
                    errs.push(FieldError::invalid(&mp, mu, "must be greater than 0"));
                }
            }
        }
        "OnDelete" if rolling.is_some() => errs.push(FieldError::invalid(
            &path.child("rollingUpdate"),
            "",
            "only allowed for updateStrategy 'RollingUpdate'",
        )),
        "OnDelete" => {}
        other => errs.push(FieldError::not_supported(
            &path.child("type"),
            other,
            &["OnDelete", "RollingUpdate"],
        )),
    }
}

fn controller_revision(
    new: &apps::ControllerRevision,
    old: Option<&apps::ControllerRevision>,
    errs: &mut Errors,
) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    nonnegative(errs, &Path::new("revision"), Some(new.revision));
    if let Some(old) = old {
        immutable(errs, &Path::new("data"), &new.data, &old.data);
    }
}

// ---------------------------------------------------------------------------------------------
// Job and CronJob
// ---------------------------------------------------------------------------------------------

fn job(new: &batch::Job, old: Option<&batch::Job>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    let empty = batch::JobSpec::default();
    let spec = new.spec.as_ref().unwrap_or(&empty);
    let path = Path::new("spec");
    job_spec(errs, &path, spec);
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        job_update(errs, &path, spec, old_spec);
    }
}

fn job_spec(errs: &mut Errors, path: &Path, spec: &batch::JobSpec) {
    for (field, value) in [
        ("parallelism", spec.parallelism),
        ("completions", spec.completions),
        ("backoffLimit", spec.backoff_limit),
        ("ttlSecondsAfterFinished", spec.ttl_seconds_after_finished),
        ("backoffLimitPerIndex", spec.backoff_limit_per_index),
        ("maxFailedIndexes", spec.max_failed_indexes),
    ] {
        nonnegative(errs, &path.child(field), value.map(i64::from));
    }
    positive(
        errs,
        &path.child("activeDeadlineSeconds"),
        spec.active_deadline_seconds,
    );
    let mode = spec.completion_mode.as_deref().unwrap_or("NonIndexed");
    supported(
        errs,
        &path.child("completionMode"),
        Some(mode),
        "",
        &["NonIndexed", "Indexed"],
    );
    if mode == "Indexed" && spec.completions.is_none() {
        errs.push(FieldError::required(
            &path.child("completions"),
            "when completion mode is Indexed",
        ));
    }
    if spec.backoff_limit_per_index.is_some() && mode != "Indexed" {
        errs.push(FieldError::invalid(
            &path.child("backoffLimitPerIndex"),
            spec.backoff_limit_per_index.unwrap_or_default(),
            "requires indexed completion mode",
        ));
    }
    if spec.max_failed_indexes.is_some() && spec.backoff_limit_per_index.is_none() {
        errs.push(FieldError::required(
            &path.child("backoffLimitPerIndex"),
            "when maxFailedIndexes is specified",
        ));
    }
    if let Some(p) = spec.pod_replacement_policy.as_deref() {
        supported(
            errs,
            &path.child("podReplacementPolicy"),
            Some(p),
            "",
            &["TerminatingOrFailed", "Failed"],
        );
    }
    // The selector is generated from the Job's uid unless the user manages it.
    match &spec.selector {
        Some(selector) => selector_for_template(errs, path, selector, Some(&spec.template), "job"),
        None if spec.manual_selector == Some(true) => {
            errs.push(FieldError::required(&path.child("selector"), ""))
        }
        None => {}
    }
    pod_template(
        errs,
        &path.child("template"),
        &spec.template,
        JOB_RESTART_POLICIES,
    );
}

fn job_update(errs: &mut Errors, path: &Path, spec: &batch::JobSpec, old: &batch::JobSpec) {
    if old.selector.is_some() {
        immutable(errs, &path.child("selector"), &spec.selector, &old.selector);
    }
    let mode = |s: &batch::JobSpec| {
        s.completion_mode
            .clone()
            .unwrap_or_else(|| "NonIndexed".into())
    };
    immutable(errs, &path.child("completionMode"), &mode(spec), &mode(old));
    // Indexed Jobs are elastic: completions may change together with parallelism.
    let elastic = mode(spec) == "Indexed" && spec.completions == spec.parallelism;
    if !elastic {
        immutable(
            errs,
            &path.child("completions"),
            &spec.completions,
            &old.completions,
        );
    }
    // A suspended Job's template may still be adjusted before it starts.
    if old.suspend != Some(true) {
        immutable(errs, &path.child("template"), &spec.template, &old.template);
    }
}

fn cron_job(new: &batch::CronJob, old: Option<&batch::CronJob>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    // Job names are the CronJob's name plus an 11-character suffix, and must stay labels.
    if let Some(name) = new.metadata.name.as_deref().filter(|n| n.len() > 52) {
        errs.push(FieldError::invalid(
            &Path::new("metadata").child("name"),
            name,
            &max_len(52),
        ));
    }
    let empty = batch::CronJobSpec::default();
    let spec = new.spec.as_ref().unwrap_or(&empty);
    let path = Path::new("spec");
    let old_schedule = old
        .and_then(|o| o.spec.as_ref())
        .map(|s| s.schedule.as_str());
    schedule(errs, &path.child("schedule"), &spec.schedule, old_schedule);
    if let Some(tz) = spec.time_zone.as_deref() {
        time_zone(errs, &path.child("timeZone"), tz);
    }
    supported(
        errs,
        &path.child("concurrencyPolicy"),
        spec.concurrency_policy.as_deref(),
        "Allow",
        &["Allow", "Forbid", "Replace"],
    );
    nonnegative(
        errs,
        &path.child("startingDeadlineSeconds"),
        spec.starting_deadline_seconds,
    );
    nonnegative(
        errs,
        &path.child("successfulJobsHistoryLimit"),
        spec.successful_jobs_history_limit.map(i64::from),
    );
    nonnegative(
        errs,
        &path.child("failedJobsHistoryLimit"),
        spec.failed_jobs_history_limit.map(i64::from),
    );
    let jt = path.child("jobTemplate");
    if let Some(meta) = &spec.job_template.metadata {
        labels(
            errs,
            &jt.child("metadata").child("labels"),
            meta.labels.as_ref(),
        );
        annotations(
            errs,
            &jt.child("metadata").child("annotations"),
            meta.annotations.as_ref(),
        );
    }
    let empty_job = batch::JobSpec::default();
    job_spec(
        errs,
        &jt.child("spec"),
        spec.job_template.spec.as_ref().unwrap_or(&empty_job),
    );
}

fn schedule(errs: &mut Errors, path: &Path, schedule: &str, old: Option<&str>) {
    if schedule.is_empty() {
        errs.push(FieldError::required(path, ""));
        return;
    }
    let has_tz = |s: &str| s.contains("TZ=");
    if has_tz(schedule) && !old.is_some_and(has_tz) {
        errs.push(FieldError::invalid(
            path,
            schedule,
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        ));
        return;
    }
    // An old schedule's TZ prefix is still tolerated; parse what follows it.
    let expr = match schedule.split_once(' ') {
        Some((tz, rest)) if has_tz(tz) => rest,
        _ => schedule,
    };
    if let Err(e) = parse_cron(expr) {
        errs.push(FieldError::invalid(path, schedule, &e));
    }
}

/// An IANA zone name's shape (`Europe/Berlin`, `Etc/GMT+2`); the zone database itself is not
/// consulted.
fn time_zone(errs: &mut Errors, path: &Path, tz: &str) {
    let ok_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'+' | b'/');
    let well_formed = !tz.is_empty()
        && tz.bytes().all(ok_char)
        && tz
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if tz.eq_ignore_ascii_case("Local") || !well_formed {
        errs.push(FieldError::invalid(
            path,
            tz,
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
        ));
    }
}

/// One field of a cron expression: its bounds and, for months and weekdays, its names.
struct CronField {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const CRON_FIELDS: [CronField; 5] = [
    CronField {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    CronField {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    CronField {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    CronField {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    CronField {
        name: "day of week",
        min: 0,
        max: 6,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    },
];

/// Parses a standard cron expression as the CronJob controller does: five fields (minute, hour,
/// day of month, month, day of week) of lists, ranges and steps, or a descriptor (`@daily`,
/// `@every 1h30m`).
fn parse_cron(expr: &str) -> Result<(), String> {
    let expr = expr.trim();
    if let Some(descriptor) = expr.strip_prefix('@') {
        return match descriptor {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => {
                Ok(())
            }
            _ => match descriptor.strip_prefix("every ") {
                Some(d) if go_duration(d.trim()) => Ok(()),
                Some(d) => Err(format!("failed to parse duration @every {d}")),
                None => Err(format!("unrecognized descriptor: {expr}")),
            },
        };
    }
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: {expr:?}",
            fields.len()
        ));
    }
    for (text, field) in fields.iter().zip(&CRON_FIELDS) {
        for part in text.split(',') {
            cron_range(part, field).map_err(|e| format!("failed to parse {}: {e}", field.name))?;
        }
    }
    Ok(())
}

/// `*`, `?`, `n`, `a-b`, each optionally `/step` (`n/step` runs from n to the field's maximum).
fn cron_range(part: &str, field: &CronField) -> Result<(), String> {
    let (range, step) = match part.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (part, None),
    };
    let (low, high) = if range == "*" || range == "?" {
        (field.min, field.max)
    } else {
        match range.split_once('-') {
            Some((a, b)) => (cron_value(a, field)?, cron_value(b, field)?),
            None => {
                let v = cron_value(range, field)?;
                (v, if step.is_some() { field.max } else { v })
            }
        }
    };
    if let Some(step) = step {
        match step.parse::<u32>() {
            Ok(s) if s > 0 => {}
            _ => return Err(format!("step of range should be a positive number: {part}")),
        }
    }
    if low < field.min {
        return Err(format!(
            "beginning of range ({low}) below minimum ({}): {part}",
            field.min
        ));
    }
    if high > field.max {
        return Err(format!(
            "end of range ({high}) above maximum ({}): {part}",
            field.max
        ));
    }
    if low > high {
        return Err(format!(
            "beginning of range ({low}) beyond end of range ({high}): {part}"
        ));
    }
    Ok(())
}

fn cron_value(text: &str, field: &CronField) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = field.names.iter().position(|n| *n == lower) {
        return Ok(field.min + i as u32);
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("failed to parse int from {text}"));
    }
    text.parse()
        .map_err(|_| format!("failed to parse int from {text}"))
}

/// A Go duration: `1h30m`, `90s`, `1.5h` (units ns, us, µs, ms, s, m, h).
fn go_duration(text: &str) -> bool {
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let n = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if n == 0 {
            return false;
        }
        rest = &rest[n..];
        let Some(unit) = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Service
// ---------------------------------------------------------------------------------------------

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

fn service(new: &core::Service, old: Option<&core::Service>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_label,
    );
    let empty = core::ServiceSpec::default();
    let spec = new.spec.as_ref().unwrap_or(&empty);
    let path = Path::new("spec");
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    supported(errs, &path.child("type"), Some(kind), "", SERVICE_TYPES);
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    let headless = cluster_ip == "None";
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && kind != "ExternalName" && !headless {
        errs.push(FieldError::required(&path.child("ports"), ""));
    }
    service_ports(errs, &path.child("ports"), ports, kind);
    if kind == "ExternalName" {
        external_name(errs, &path, spec);
    } else {
        cluster_ips(errs, &path, spec, kind);
    }
    supported(
        errs,
        &path.child("sessionAffinity"),
        spec.session_affinity.as_deref(),
        "None",
        &["ClientIP", "None"],
    );
    if let Some(timeout) = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
    {
        if !(1..=86400).contains(&timeout) {
            errs.push(FieldError::invalid(
                &path
                    .child("sessionAffinityConfig")
                    .child("clientIP")
                    .child("timeoutSeconds"),
                timeout,
                "must be greater than 0 and less than 86400",
            ));
        }
    }
    labels(errs, &path.child("selector"), spec.selector.as_ref());
    if let Some(policy) = spec.external_traffic_policy.as_deref() {
        let p = path.child("externalTrafficPolicy");
        if kind != "NodePort" && kind != "LoadBalancer" {
            errs.push(FieldError::invalid(
                &p,
                policy,
                "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
            ));
        } else {
            supported(errs, &p, Some(policy), "", &["Cluster", "Local"]);
        }
    }
    if let Some(policy) = spec.internal_traffic_policy.as_deref() {
        supported(
            errs,
            &path.child("internalTrafficPolicy"),
            Some(policy),
            "",
            &["Cluster", "Local"],
        );
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if ip.parse::<IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                &path.child("externalIPs").index(i),
                ip,
                "must be a valid IP address",
            ));
        }
    }
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        service_update(errs, &path, spec, old_spec);
    }
}

fn service_ports(errs: &mut Errors, path: &Path, ports: &[core::ServicePort], kind: &str) {
    let mut names = HashSet::new();
    let mut port_protocols = HashSet::new();
    let mut node_ports = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = path.index(i);
        let name = port.name.as_deref().unwrap_or("");
        if name.is_empty() {
            if ports.len() > 1 {
                errs.push(FieldError::required(&p.child("name"), ""));
            }
        } else {
            push_each(errs, &p.child("name"), name, dns1123_label(name));
            if !names.insert(name) {
                errs.push(FieldError::duplicate(&p.child("name"), name));
            }
        }
        port_range(errs, &p.child("port"), port.port);
        protocol(errs, &p.child("protocol"), port.protocol.as_deref());
        let proto = port.protocol.as_deref().unwrap_or("TCP");
        if !port_protocols.insert((port.port, proto)) {
            errs.push(FieldError::duplicate(&p, format!("{}/{proto}", port.port)));
        }
        match &port.target_port {
            // 0 is unset: the target port defaults to the port.
            Some(IntOrString::Int(0)) | None => {}
            Some(target) => port_num_or_name(errs, &p.child("targetPort"), target),
        }
        let node_port = port.node_port.unwrap_or(0);
        if node_port != 0 {
            let np = p.child("nodePort");
            if !(0..=65535).contains(&node_port) {
                errs.push(FieldError::invalid(
                    &np,
                    node_port,
                    "must be between 0 and 65535, inclusive",
                ));
            }
            if kind == "ClusterIP" || kind == "ExternalName" {
                errs.push(FieldError::forbidden(
                    &np,
                    &format!("may not be used when `type` is '{kind}'"),
                ));
            }
            if !node_ports.insert((node_port, proto)) {
                errs.push(FieldError::duplicate(&np, node_port));
            }
        }
    }
}

fn external_name(errs: &mut Errors, path: &Path, spec: &core::ServiceSpec) {
    let name = spec.external_name.as_deref().unwrap_or("");
    let p = path.child("externalName");
    if name.is_empty() {
        errs.push(FieldError::required(&p, ""));
    } else {
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        push_each(errs, &p, name, dns1123_subdomain(trimmed));
    }
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    if !cluster_ip.is_empty() {
        errs.push(FieldError::forbidden(
            &path.child("clusterIP"),
            "may not be set for ExternalName services",
        ));
    }
}

fn cluster_ips(errs: &mut Errors, path: &Path, spec: &core::ServiceSpec, kind: &str) {
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    let p = path.child("clusterIP");
    if cluster_ip == "None" {
        if kind == "NodePort" || kind == "LoadBalancer" {
            errs.push(FieldError::invalid(
                &p,
                cluster_ip,
                &format!("may not be set to 'None' for {kind} services"),
            ));
        }
    } else if !cluster_ip.is_empty() && cluster_ip.parse::<IpAddr>().is_err() {
        errs.push(FieldError::invalid(
            &p,
            cluster_ip,
            "must be empty, 'None', or a valid IP address",
        ));
    }
    let ips = spec.cluster_ips.as_deref().unwrap_or_default();
    if ips.len() > 2 {
        errs.push(FieldError::invalid(
            &path.child("clusterIPs"),
            Json(&ips),
            "may specify no more than one IP for each IP family",
        ));
    }
    for (i, ip) in ips.iter().enumerate() {
        let ok = ip.parse::<IpAddr>().is_ok() || (i == 0 && ip == "None" && ips.len() == 1);
        if !ok {
            errs.push(FieldError::invalid(
                &path.child("clusterIPs").index(i),
                ip,
                "must be empty, 'None', or a valid IP address",
            ));
        }
    }
    if let Some(first) = ips.first() {
        if !cluster_ip.is_empty() && first != cluster_ip {
            errs.push(FieldError::invalid(
                &path.child("clusterIPs").index(0),
                first,
                "must match `clusterIP` if specified",
            ));
        }
    }
}

/// The cluster IP, once allocated, stays (an empty one in a PUT is refilled from the stored
/// object by the handler); only a change to or from ExternalName releases it.
fn service_update(
    errs: &mut Errors,
    path: &Path,
    spec: &core::ServiceSpec,
    old: &core::ServiceSpec,
) {
    let external = |s: &core::ServiceSpec| s.type_.as_deref() == Some("ExternalName");
    if external(spec) || external(old) {
        return;
    }
    let new_ip = spec.cluster_ip.as_deref().unwrap_or("");
    let old_ip = old.cluster_ip.as_deref().unwrap_or("");
    if !new_ip.is_empty() && !old_ip.is_empty() && new_ip != old_ip {
        errs.push(FieldError::invalid(
            &path.child("clusterIP"),
            new_ip,
            "field is immutable",
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// ConfigMap and Secret
// ---------------------------------------------------------------------------------------------

const MAX_DATA_SIZE: usize = 1024 * 1024;
const IMMUTABLE_SET: &str = "field is immutable when `immutable` is set";

fn config_map(new: &core::ConfigMap, old: Option<&core::ConfigMap>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    let data = new.data.clone().unwrap_or_default();
    let binary = new.binary_data.clone().unwrap_or_default();
    let mut total = 0usize;
    for (key, value) in &data {
        push_each(errs, &Path::new("data").key(key), key, config_key(key));
        total = total.saturating_add(value.len());
    }
    for (key, value) in &binary {
        push_each(
            errs,
            &Path::new("binaryData").key(key),
            key,
            config_key(key),
        );
        if data.contains_key(key) {
            errs.push(FieldError::invalid(
                &Path::new("data").key(key),
                key,
                "duplicate of key present in binaryData",
            ));
        }
        total = total.saturating_add(value.0.len());
    }
    if total > MAX_DATA_SIZE {
        errs.push(FieldError::too_long(&Path::new("data"), MAX_DATA_SIZE));
    }
    if let Some(old) = old.filter(|o| o.immutable == Some(true)) {
        if new.immutable != Some(true) {
            errs.push(FieldError::forbidden(
                &Path::new("immutable"),
                IMMUTABLE_SET,
            ));
        }
        if new.data != old.data {
            errs.push(FieldError::forbidden(&Path::new("data"), IMMUTABLE_SET));
        }
        if new.binary_data != old.binary_data {
            errs.push(FieldError::forbidden(
                &Path::new("binaryData"),
                IMMUTABLE_SET,
            ));
        }
    }
}

fn secret(new: &core::Secret, old: Option<&core::Secret>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    let data = new.data.clone().unwrap_or_default();
    let string_data = new.string_data.clone().unwrap_or_default();
    let mut total = 0usize;
    for (key, value) in &data {
        push_each(errs, &Path::new("data").key(key), key, config_key(key));
        total = total.saturating_add(value.0.len());
    }
    for (key, value) in &string_data {
        push_each(
            errs,
            &Path::new("stringData").key(key),
            key,
            config_key(key),
        );
        if !data.contains_key(key) {
            total = total.saturating_add(value.len());
        }
    }
    if total > MAX_DATA_SIZE {
        errs.push(FieldError::too_long(&Path::new("data"), MAX_DATA_SIZE));
    }
    let has = |key: &str| data.contains_key(key) || string_data.contains_key(key);
    secret_type(errs, new, &has);
    if let Some(old) = old {
        let kind = |s: &core::Secret| {
            s.type_
                .clone()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "Opaque".into())
        };
        immutable(errs, &Path::new("type"), &kind(new), &kind(old));
        if old.immutable == Some(true) {
            if new.immutable != Some(true) {
                errs.push(FieldError::forbidden(
                    &Path::new("immutable"),
                    IMMUTABLE_SET,
                ));
            }
            if new.data != old.data || !string_data.is_empty() {
                errs.push(FieldError::forbidden(&Path::new("data"), IMMUTABLE_SET));
            }
        }
    }
}

/// The keys each built-in Secret type requires.
fn secret_type(errs: &mut Errors, secret: &core::Secret, has: &dyn Fn(&str) -> bool) {
    let data = Path::new("data");
    let require = |errs: &mut Errors, key: &str| {
        if !has(key) {
            errs.push(FieldError::required(&data.key(key), ""));
        }
    };
    match secret.type_.as_deref().unwrap_or("Opaque") {
        "kubernetes.io/service-account-token" => {
            let key = "kubernetes.io/service-account.name";
            let named = secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .is_some_and(|v| !v.is_empty());
            if !named {
                errs.push(FieldError::required(
                    &Path::new("metadata").child("annotations").key(key),
                    "",
                ));
            }
        }
        "kubernetes.io/dockercfg" => require(errs, ".dockercfg"),
        "kubernetes.io/dockerconfigjson" => {
            require(errs, ".dockerconfigjson");
            let raw = secret
                .data
                .as_ref()
                .and_then(|d| d.get(".dockerconfigjson"))
                .map(|b| b.0.clone());
            if let Some(raw) = raw {
                if serde_json::from_slice::<Value>(&raw).is_err() {
                    errs.push(FieldError::invalid(
                        &data.key(".dockerconfigjson"),
                        "<secret contents redacted>",
                        "must be valid JSON",
                    ));
                }
            }
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            errs.push(FieldError::required(&data.key("username"), ""));
            errs.push(FieldError::required(&data.key("password"), ""));
        }
        "kubernetes.io/ssh-auth" => require(errs, "ssh-privatekey"),
        "kubernetes.io/tls" => {
            require(errs, "tls.crt");
            require(errs, "tls.key");
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Namespace, Node, ServiceAccount, Event, Lease
// ---------------------------------------------------------------------------------------------

const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];

fn namespace(new: &core::Namespace, old: Option<&core::Namespace>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Cluster,
        dns1123_label,
    );
    let finalizers = new
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_deref())
        .unwrap_or_default();
    let path = Path::new("spec").child("finalizers");
    for f in finalizers {
        let msgs = qualified_name(f);
        if !msgs.is_empty() {
            push_each(errs, &path, f, msgs);
        } else if !f.contains('/') && !STANDARD_FINALIZERS.contains(&f.as_str()) {
            errs.push(FieldError::invalid(
                &path,
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
}

fn node(new: &core::Node, old: Option<&core::Node>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Cluster,
        dns1123_subdomain,
    );
    let empty = core::NodeSpec::default();
    let spec = new.spec.as_ref().unwrap_or(&empty);
    let path = Path::new("spec");
    if let Some(cidr) = spec.pod_cidr.as_deref().filter(|c| !c.is_empty()) {
        if parse_cidr(cidr).is_none() {
            errs.push(FieldError::invalid(
                &path.child("podCIDR"),
                cidr,
                "must be a valid CIDR",
            ));
        }
    }
    let cidrs = spec.pod_cidrs.as_deref().unwrap_or_default();
    let mut families = HashSet::new();
    for (i, cidr) in cidrs.iter().enumerate() {
        match parse_cidr(cidr) {
            None => errs.push(FieldError::invalid(
                &path.child("podCIDRs").index(i),
                cidr,
                "must be a valid CIDR",
            )),
            Some((ip, _)) if !families.insert(ip.is_ipv4()) => errs.push(FieldError::invalid(
                &path.child("podCIDRs"),
                Json(&cidrs),
                "may specify no more than one CIDR for each IP family",
            )),
            Some(_) => {}
        }
    }
    if let (Some(first), Some(single)) = (
        cidrs.first(),
        spec.pod_cidr.as_deref().filter(|c| !c.is_empty()),
    ) {
        if first != single {
            errs.push(FieldError::invalid(
                &path.child("podCIDRs").index(0),
                first,
                "must match `podCIDR`",
            ));
        }
    }
    taints(
        errs,
        &path.child("taints"),
        spec.taints.as_deref().unwrap_or_default(),
    );
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        // The pod CIDR is assigned once.
        let old_cidr = old_spec.pod_cidr.as_deref().unwrap_or("");
        if !old_cidr.is_empty() && spec.pod_cidr.as_deref().unwrap_or("") != old_cidr {
            errs.push(FieldError::forbidden(
                &path.child("podCIDR"),
                "node updates may not change podCIDR except from \"\" to valid",
            ));
        }
        let old_provider = old_spec.provider_id.as_deref().unwrap_or("");
        if !old_provider.is_empty() && spec.provider_id.as_deref().unwrap_or("") != old_provider {
            errs.push(FieldError::forbidden(
                &path.child("providerID"),
                "node updates may not change providerID except from \"\" to valid",
            ));
        }
    }
}

fn taints(errs: &mut Errors, path: &Path, taints: &[core::Taint]) {
    let mut seen = HashSet::new();
    for (i, t) in taints.iter().enumerate() {
        let p = path.index(i);
        if t.key.is_empty() {
            errs.push(FieldError::required(&p.child("key"), ""));
        } else {
            push_each(errs, &p.child("key"), &t.key, qualified_name(&t.key));
        }
        let value = t.value.as_deref().unwrap_or("");
        push_each(errs, &p.child("value"), value, label_value(value));
        if t.effect.is_empty() {
            errs.push(FieldError::required(&p.child("effect"), ""));
        } else {
            supported(
                errs,
                &p.child("effect"),
                Some(&t.effect),
                "",
                &["NoExecute", "NoSchedule", "PreferNoSchedule"],
            );
        }
        if !seen.insert((t.key.as_str(), t.effect.as_str())) {
            errs.push(FieldError::duplicate(&p, format!("{}:{}", t.key, t.effect)));
        }
    }
}

fn service_account(
    new: &core::ServiceAccount,
    old: Option<&core::ServiceAccount>,
    errs: &mut Errors,
) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
}

fn event(new: &core::Event, old: Option<&core::Event>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    let involved = new.involved_object.namespace.as_deref().unwrap_or("");
    let own = new.metadata.namespace.as_deref().unwrap_or("");
    if !involved.is_empty() && involved != own {
        errs.push(FieldError::invalid(
            &Path::new("involvedObject").child("namespace"),
            involved,
            "does not match event.namespace",
        ));
    }
}

fn lease(new: &coordination::Lease, old: Option<&coordination::Lease>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    let Some(spec) = &new.spec else { return };
    let path = Path::new("spec");
    positive(
        errs,
        &path.child("leaseDurationSeconds"),
        spec.lease_duration_seconds.map(i64::from),
    );
    nonnegative(
        errs,
        &path.child("leaseTransitions"),
        spec.lease_transitions.map(i64::from),
    );
}

// ---------------------------------------------------------------------------------------------
// Endpoints and EndpointSlice
// ---------------------------------------------------------------------------------------------

/// An endpoint IP: valid, and not one that cannot be routed to a pod.
fn endpoint_ip(errs: &mut Errors, path: &Path, ip: &str) {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        errs.push(FieldError::invalid(path, ip, "must be a valid IP address"));
        return;
    };
    let (unspecified, loopback, link_local) = match addr {
        IpAddr::V4(v4) => (v4.is_unspecified(), v4.is_loopback(), v4.is_link_local()),
        IpAddr::V6(v6) => (
            v6.is_unspecified(),
            v6.is_loopback(),
            (v6.segments()[0] & 0xffc0) == 0xfe80,
        ),
    };
    if unspecified {
        errs.push(FieldError::invalid(
            path,
            ip,
            "may not be unspecified (0.0.0.0, ::)",
        ));
    }
    if loopback {
        errs.push(FieldError::invalid(
            path,
            ip,
            "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        ));
    }
    if link_local {
        errs.push(FieldError::invalid(
            path,
            ip,
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        ));
    }
}

fn endpoints(new: &core::Endpoints, old: Option<&core::Endpoints>, errs: &mut Errors) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    for (i, subset) in new.subsets.iter().flatten().enumerate() {
        let sp = Path::new("subsets").index(i);
        let lists = [
            ("addresses", &subset.addresses),
            ("notReadyAddresses", &subset.not_ready_addresses),
        ];
        for (field, addresses) in lists {
            for (j, a) in addresses.iter().flatten().enumerate() {
                endpoint_address(errs, &sp.child(field).index(j), a);
            }
        }
        let ports = subset.ports.as_deref().unwrap_or_default();
        let mut names = HashSet::new();
        for (j, port) in ports.iter().enumerate() {
            let pp = sp.child("ports").index(j);
            let name = port.name.as_deref().unwrap_or("");
            if name.is_empty() {
                if ports.len() > 1 {
                    errs.push(FieldError::required(&pp.child("name"), ""));
                }
            } else {
                push_each(errs, &pp.child("name"), name, dns1123_label(name));
                if !names.insert(name) {
                    errs.push(FieldError::duplicate(&pp.child("name"), name));
                }
            }
            port_range(errs, &pp.child("port"), port.port);
            protocol(errs, &pp.child("protocol"), port.protocol.as_deref());
        }
    }
}

fn endpoint_address(errs: &mut Errors, path: &Path, a: &core::EndpointAddress) {
    endpoint_ip(errs, &path.child("ip"), &a.ip);
    if let Some(h) = a.hostname.as_deref().filter(|h| !h.is_empty()) {
        push_each(errs, &path.child("hostname"), h, dns1123_label(h));
    }
    if let Some(n) = a.node_name.as_deref().filter(|n| !n.is_empty()) {
        push_each(errs, &path.child("nodeName"), n, dns1123_subdomain(n));
    }
}

const MAX_SLICE_ENDPOINTS: usize = 1000;
const MAX_ENDPOINT_ADDRESSES: usize = 100;

fn endpoint_slice(
    new: &discovery::EndpointSlice,
    old: Option<&discovery::EndpointSlice>,
    errs: &mut Errors,
) {
    object_meta(
        errs,
        &new.metadata,
        old.map(|o| &o.metadata),
        Scope::Namespaced,
        dns1123_subdomain,
    );
    let tp = Path::new("addressType");
    let address_type = new.address_type.as_str();
    if address_type.is_empty() {
        errs.push(FieldError::required(&tp, ""));
    } else {
        supported(errs, &tp, Some(address_type), "", &["FQDN", "IPv4", "IPv6"]);
    }
    let ep = Path::new("endpoints");
    if new.endpoints.len() > MAX_SLICE_ENDPOINTS {
        errs.push(FieldError::invalid(
            &ep,
            new.endpoints.len(),
            &format!("must have at most {MAX_SLICE_ENDPOINTS} items"),
        ));
    }
    for (i, endpoint) in new.endpoints.iter().enumerate() {
        let p = ep.index(i);
        let ap = p.child("addresses");
        match endpoint.addresses.len() {
            0 => errs.push(FieldError::required(&ap, "must contain at least 1 address")),
            n if n > MAX_ENDPOINT_ADDRESSES => errs.push(FieldError::invalid(
                &ap,
                n,
                &format!("must have at most {MAX_ENDPOINT_ADDRESSES} items"),
            )),
            _ => {}
        }
        for (j, address) in endpoint.addresses.iter().enumerate() {
            slice_address(errs, &ap.index(j), address_type, address);
        }
        if let Some(h) = endpoint.hostname.as_deref().filter(|h| !h.is_empty()) {
            push_each(errs, &p.child("hostname"), h, dns1123_label(h));
        }
        if let Some(n) = endpoint.node_name.as_deref().filter(|n| !n.is_empty()) {
            push_each(errs, &p.child("nodeName"), n, dns1123_subdomain(n));
        }
    }
    let mut names = HashSet::new();
    for (i, port) in new.ports.iter().flatten().enumerate() {
        let p = Path::new("ports").index(i);
        let name = port.name.as_deref().unwrap_or("");
        if !name.is_empty() {
            push_each(errs, &p.child("name"), name, dns1123_label(name));
        }
        if !names.insert(name) {
            errs.push(FieldError::duplicate(&p.child("name"), name));
        }
        if let Some(n) = port.port {
            port_range(errs, &p.child("port"), n);
        }
        protocol(errs, &p.child("protocol"), port.protocol.as_deref());
    }
    if let Some(old) = old {
        immutable(errs, &tp, &new.address_type, &old.address_type);
    }
}

fn slice_address(errs: &mut Errors, path: &Path, address_type: &str, address: &str) {
    match address_type {
        "IPv4" if address.parse::<Ipv4Addr>().is_err() => {
            errs.push(FieldError::invalid(
                path,
                address,
                "must be a valid IPv4 address",
            ));
        }
        "IPv6" if address.parse::<Ipv6Addr>().is_err() => {
            errs.push(FieldError::invalid(
                path,
                address,
                "must be a valid IPv6 address",
            ));
        }
        "IPv4" | "IPv6" => endpoint_ip(errs, path, address),
        "FQDN" => push_each(errs, path, address, dns1123_subdomain(address)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KINDS: &[&str] = &[
        "Namespace",
        "Pod",
        "Service",
        "Endpoints",
        "Node",
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
    ];

    fn container() -> Value {
        json!({"name": "app", "image": "nginx:1.27", "ports": [{"name": "http", "containerPort": 80}]})
    }

    /// The base container with `extra` merged in.
    fn ctr(extra: Value) -> Value {
        let mut c = container();
        json_patch::merge(&mut c, &extra);
        c
    }

    fn template(restart_policy: &str) -> Value {
        json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"restartPolicy": restart_policy, "containers": [container()]}
        })
    }

    fn meta(name: &str) -> Value {
        json!({"name": name, "namespace": "default"})
    }

    fn base(kind: &str) -> Value {
        let selector = json!({"matchLabels": {"app": "web"}});
        match kind {
            "Namespace" => json!({"metadata": {"name": "team-a"}}),
            "Pod" => json!({"metadata": meta("web"), "spec": {"containers": [container()]}}),
            "Service" => json!({"metadata": meta("web"), "spec": {
                "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
            "Endpoints" => json!({"metadata": meta("web"), "subsets": [
                {"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}),
            "Node" => json!({"metadata": {"name": "node-1"}, "spec": {"podCIDR": "10.244.0.0/24"}}),
            "ConfigMap" => {
                json!({"metadata": meta("cfg"), "data": {"a": "1"}, "binaryData": {"b": "MQ=="}})
            }
            "Secret" => json!({"metadata": meta("creds"), "data": {"a": "MQ=="}}),
            "Event" => json!({"metadata": meta("web.17a"), "involvedObject": {
                "kind": "Pod", "name": "web", "namespace": "default"}}),
            "ServiceAccount" => json!({"metadata": meta("builder")}),
            "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" => {
                json!({"metadata": meta("web"),
                "spec": {"replicas": 2, "selector": selector, "template": template("Always")}})
            }
            "ControllerRevision" => {
                json!({"metadata": meta("web-1"), "revision": 1, "data": {"x": 1}})
            }
            "Job" => json!({"metadata": meta("pi"), "spec": {"template": template("Never")}}),
            "CronJob" => json!({"metadata": meta("pi"), "spec": {"schedule": "*/5 * * * *",
                "jobTemplate": {"spec": {"template": template("OnFailure")}}}}),
            "EndpointSlice" => json!({"metadata": meta("web-abc"), "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.1"]}], "ports": [{"name": "http", "port": 80}]}),
            "Lease" => {
                json!({"metadata": meta("leader"), "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})
            }
            other => panic!("no base object for {other}"),
        }
    }

    fn patched(kind: &str, patch: &Value) -> Value {
        let mut object = base(kind);
        json_patch::merge(&mut object, patch);
        object
    }

    /// Validates the kind's base object with `patch` merged in; as an update of the base object
    /// with `old_patch` merged in when one is given.
    fn errors(kind: &str, patch: &Value, old_patch: Option<&Value>) -> Vec<FieldError> {
        let new = patched(kind, patch);
        let old = old_patch.map(|p| patched(kind, p));
        validate(kind, &new, old.as_ref()).unwrap_or_else(|e| panic!("{kind} does not decode: {e}"))
    }

    fn check(kind: &str, patch: &Value, old_patch: Option<&Value>, field: &str) {
        let errs = errors(kind, patch, old_patch);
        assert!(
            errs.iter().any(|e| e.field == field),
            "{kind} {patch}: expected an error at {field}, got {errs:#?}"
        );
    }

    #[test]
    fn minimal_objects_are_valid_on_create_and_update() {
        for kind in KINDS {
            let errs = errors(kind, &json!({}), None);
            assert!(errs.is_empty(), "{kind}: {errs:#?}");
            let errs = errors(kind, &json!({}), Some(&json!({})));
            assert!(errs.is_empty(), "{kind} update: {errs:#?}");
        }
    }

    #[test]
    fn unknown_kinds_pass_and_bad_bodies_do_not_decode() {
        assert_eq!(
            validate("Widget", &json!({"anything": 1}), None),
            Ok(vec![])
        );
        assert!(validate("Pod", &json!({"spec": {"containers": "nope"}}), None).is_err());
        assert!(validate(
            "Service",
            &json!({"spec": {"ports": [{"port": "x"}]}}),
            None
        )
        .is_err());
        assert!(validate("ConfigMap", &json!([1, 2]), None).is_err());
    }

    #[test]
    fn invalid_objects_name_the_field() {
        let t = |c: Value| json!({"spec": {"template": {"spec": {"containers": [c]}}}});
        let pod = |spec: Value| json!({"spec": spec});
        let pod_ctr = |c: Value| json!({"spec": {"containers": [c]}});
        let cases: Vec<(&str, Value, &str)> = vec![
            // Metadata, every kind.
            ("Pod", json!({"metadata": {"name": null}}), "metadata.name"),
            ("Pod", json!({"metadata": {"name": "Web"}}), "metadata.name"),
            (
                "Pod",
                json!({"metadata": {"name": null, "generateName": "Web-"}}),
                "metadata.generateName",
            ),
            (
                "Pod",
                json!({"metadata": {"namespace": null}}),
                "metadata.namespace",
            ),
            (
                "Pod",
                json!({"metadata": {"namespace": "a.b"}}),
                "metadata.namespace",
            ),
            (
                "Pod",
                json!({"metadata": {"labels": {"-bad": "x"}}}),
                "metadata.labels",
            ),
            (
                "Pod",
                json!({"metadata": {"labels": {"a": "-x"}}}),
                "metadata.labels",
            ),
            (
                "Pod",
                json!({"metadata": {"labels": {"a": "x".repeat(64)}}}),
                "metadata.labels",
            ),
            (
                "Pod",
                json!({"metadata": {"labels": {"exa mple.com/a": "x"}}}),
                "metadata.labels",
            ),
            (
                "Pod",
                json!({"metadata": {"labels": {format!("{}/a", "a".repeat(254)): "x"}}}),
                "metadata.labels",
            ),
            (
                "Pod",
                json!({"metadata": {"annotations": {"a/b/c": "x"}}}),
                "metadata.annotations",
            ),
            (
                "Pod",
                json!({"metadata": {"annotations": {"big": "x".repeat(300 * 1024)}}}),
                "metadata.annotations",
            ),
            (
                "Pod",
                json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": ""}]}}),
                "metadata.ownerReferences[0].uid",
            ),
            (
                "Pod",
                json!({"metadata": {"finalizers": ["bad finalizer"]}}),
                "metadata.finalizers",
            ),
            (
                "Pod",
                json!({"metadata": {"finalizers": ["orphan", "foregroundDeletion"]}}),
                "metadata.finalizers",
            ),
            (
                "Namespace",
                json!({"metadata": {"name": "a.b"}}),
                "metadata.name",
            ),
            (
                "Namespace",
                json!({"metadata": {"name": "a".repeat(64)}}),
                "metadata.name",
            ),
            (
                "Namespace",
                json!({"metadata": {"namespace": "default"}}),
                "metadata.namespace",
            ),
            (
                "Namespace",
                json!({"spec": {"finalizers": ["custom"]}}),
                "spec.finalizers",
            ),
            (
                "Service",
                json!({"metadata": {"name": "web.v2"}}),
                "metadata.name",
            ),
            (
                "Node",
                json!({"metadata": {"name": "node_1"}}),
                "metadata.name",
            ),
            (
                "ServiceAccount",
                json!({"metadata": {"name": "Builder"}}),
                "metadata.name",
            ),
            // Pods.
            ("Pod", pod(json!({"containers": []})), "spec.containers"),
            (
                "Pod",
                pod_ctr(ctr(json!({"name": "App"}))),
                "spec.containers[0].name",
            ),
            (
                "Pod",
                pod_ctr(ctr(json!({"image": null}))),
                "spec.containers[0].image",
            ),
            (
                "Pod",
                pod_ctr(ctr(json!({"image": " nginx"}))),
                "spec.containers[0].image",
            ),
            (
                "Pod",
                pod(json!({"containers": [container(), container()]})),
                "spec.containers[1].name",
            ),
            (
                "Pod",
                pod(json!({"initContainers": [container()]})),
                "spec.initContainers[0].name",
            ),
            (
                "Pod",
                pod_ctr(ctr(json!({"ports": [{"containerPort": 0}]}))),
                "spec.containers[0].ports[0].containerPort",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"ports": [{"containerPort": 80}, {"containerPort": 70000}]}),
                )),
                "spec.containers[0].ports[1].containerPort",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"ports": [{"containerPort": 80, "hostPort": 70000}]}),
                )),
                "spec.containers[0].ports[0].hostPort",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"ports": [{"containerPort": 80, "protocol": "ICMP"}]}),
                )),
                "spec.containers[0].ports[0].protocol",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"ports": [{"containerPort": 80, "name": "Http"}]}),
                )),
                "spec.containers[0].ports[0].name",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"ports": [{"containerPort": 80, "name": "a-very-long-port-name"}]}),
                )),
                "spec.containers[0].ports[0].name",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"ports": [{"containerPort": 80, "name": "web"}, {"containerPort": 81, "name": "web"}]}),
                )),
                "spec.containers[0].ports[1].name",
            ),
            (
                "Pod",
                pod_ctr(ctr(json!({"env": [{"name": "1BAD"}]}))),
                "spec.containers[0].env[0].name",
            ),
            (
                "Pod",
                pod_ctr(ctr(json!({"env": [{"name": "A", "valueFrom": {}}]}))),
                "spec.containers[0].env[0].valueFrom",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}, "secretKeyRef": {"name": "s", "key": "k"}}}]}),
                )),
                "spec.containers[0].env[0].valueFrom",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]}),
                )),
                "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "c", "key": ""}}}]}),
                )),
                "spec.containers[0].env[0].valueFrom.configMapKeyRef.key",
            ),
            (
                "Pod",
                pod_ctr(ctr(json!({"envFrom": [{}]}))),
                "spec.containers[0].envFrom[0]",
            ),
            (
                "Pod",
                pod(json!({"volumes": [{"name": "Data", "emptyDir": {}}]})),
                "spec.volumes[0].name",
            ),
            (
                "Pod",
                pod(
                    json!({"volumes": [{"name": "t", "projected": {"sources": [{"configMap": {"name": "c"}},
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 599}}]}}]}),
                ),
                "spec.volumes[0].projected.sources[1].serviceAccountToken.expirationSeconds",
            ),
            (
                "Pod",
                pod(json!({"volumes": [{"name": "t", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 4294967297_i64}}]}}]})),
                "spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds",
            ),
            (
                "Pod",
                pod(json!({"volumes": [{"name": "t", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "", "expirationSeconds": 3600}}]}}]})),
                "spec.volumes[0].projected.path",
            ),
            (
                "Pod",
                pod(
                    json!({"volumes": [{"name": "d", "emptyDir": {}}, {"name": "d", "emptyDir": {}}]}),
                ),
                "spec.volumes[1].name",
            ),
            (
                "Pod",
                pod(
                    json!({"volumes": [{"name": "d", "emptyDir": {}, "hostPath": {"path": "/x"}}]}),
                ),
                "spec.volumes[0].hostPath",
            ),
            (
                "Pod",
                pod(json!({"volumes": [{"name": "d", "secret": {}}]})),
                "spec.volumes[0].secret.secretName",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"volumeMounts": [{"name": "missing", "mountPath": "/data"}]}),
                )),
                "spec.containers[0].volumeMounts[0].name",
            ),
            (
                "Pod",
                json!({"spec": {"volumes": [{"name": "d"}], "containers": [ctr(json!({"volumeMounts": [{"name": "d", "mountPath": ""}]}))]}}),
                "spec.containers[0].volumeMounts[0].mountPath",
            ),
            (
                "Pod",
                json!({"spec": {"volumes": [{"name": "d"}], "containers": [ctr(json!({"volumeMounts": [{"name": "d", "mountPath": "/d", "subPath": "../x"}]}))]}}),
                "spec.containers[0].volumeMounts[0].subPath",
            ),
            (
                "Pod",
                pod(json!({"restartPolicy": "Sometimes"})),
                "spec.restartPolicy",
            ),
            ("Pod", pod(json!({"dnsPolicy": "Google"})), "spec.dnsPolicy"),
            ("Pod", pod(json!({"dnsPolicy": "None"})), "spec.dnsConfig"),
            (
                "Pod",
                pod(json!({"terminationGracePeriodSeconds": -1})),
                "spec.terminationGracePeriodSeconds",
            ),
            (
                "Pod",
                pod(json!({"activeDeadlineSeconds": 0})),
                "spec.activeDeadlineSeconds",
            ),
            (
                "Pod",
                pod(json!({"nodeSelector": {"disk": "ssd!"}})),
                "spec.nodeSelector",
            ),
            ("Pod", pod(json!({"nodeName": "Node_1"})), "spec.nodeName"),
            (
                "Pod",
                pod(json!({"tolerations": [{"key": "k", "operator": "Like"}]})),
                "spec.tolerations[0].operator",
            ),
            (
                "Pod",
                pod(json!({"tolerations": [{"operator": "Equal", "value": "v"}]})),
                "spec.tolerations[0].operator",
            ),
            (
                "Pod",
                pod(json!({"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]})),
                "spec.tolerations[0].operator",
            ),
            (
                "Pod",
                pod(json!({"tolerations": [{"key": "k", "effect": "NoWay"}]})),
                "spec.tolerations[0].effect",
            ),
            (
                "Pod",
                pod(
                    json!({"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]}),
                ),
                "spec.tolerations[0].effect",
            ),
            (
                "Pod",
                pod(
                    json!({"hostNetwork": true, "containers": [ctr(json!({"ports": [{"containerPort": 80, "hostPort": 8080}]}))]}),
                ),
                "spec.containers[0].ports[0].containerPort",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "500m"}}}),
                )),
                "spec.containers[0].resources.requests[cpu]",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1500Mi"}}}),
                )),
                "spec.containers[0].resources.requests[memory]",
            ),
            (
                "Pod",
                pod_ctr(ctr(json!({"resources": {"limits": {"cpu": "-1"}}}))),
                "spec.containers[0].resources.limits[cpu]",
            ),
            (
                "Pod",
                pod_ctr(ctr(json!({"resources": {"limits": {"memory": "12XB"}}}))),
                "spec.containers[0].resources.limits[memory]",
            ),
            (
                "Pod",
                pod_ctr(ctr(json!({"resources": {"limits": {"gpu": "1"}}}))),
                "spec.containers[0].resources.limits[gpu]",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"resources": {"requests": {"example.com/gpu": "1"}}}),
                )),
                "spec.containers[0].resources.limits[example.com/gpu]",
            ),
            (
                "Pod",
                pod_ctr(ctr(json!({"livenessProbe": {"periodSeconds": 10}}))),
                "spec.containers[0].livenessProbe",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"livenessProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}}}),
                )),
                "spec.containers[0].livenessProbe.tcpSocket",
            ),
            (
                "Pod",
                pod_ctr(ctr(json!({"readinessProbe": {"httpGet": {"port": 70000}}}))),
                "spec.containers[0].readinessProbe.httpGet.port",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"readinessProbe": {"tcpSocket": {"port": "--x"}}}),
                )),
                "spec.containers[0].readinessProbe.tcpSocket.port",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": -1}}),
                )),
                "spec.containers[0].livenessProbe.periodSeconds",
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"livenessProbe": {"exec": {"command": ["true"]}, "successThreshold": 2}}),
                )),
                "spec.containers[0].livenessProbe.successThreshold",
            ),
            (
                "Pod",
                pod_ctr(ctr(json!({"lifecycle": {"preStop": {}}}))),
                "spec.containers[0].lifecycle.preStop",
            ),
            (
                "Pod",
                pod(
                    json!({"initContainers": [{"name": "init", "image": "busybox", "readinessProbe": {"exec": {"command": ["true"]}}}]}),
                ),
                "spec.initContainers[0].readinessProbe",
            ),
            // Workloads and their templates.
            (
                "Deployment",
                json!({"spec": {"selector": {"matchLabels": null}}}),
                "spec.selector",
            ),
            (
                "Deployment",
                json!({"spec": {"selector": {"matchLabels": {"app": "api"}}}}),
                "spec.template.metadata.labels",
            ),
            (
                "Deployment",
                json!({"spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}}),
                "spec.selector.matchExpressions[0].values",
            ),
            (
                "Deployment",
                json!({"spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "Near", "values": ["x"]}]}}}),
                "spec.selector.matchExpressions[0].operator",
            ),
            (
                "Deployment",
                json!({"spec": {"replicas": -1}}),
                "spec.replicas",
            ),
            (
                "Deployment",
                json!({"spec": {"revisionHistoryLimit": -1}}),
                "spec.revisionHistoryLimit",
            ),
            (
                "Deployment",
                json!({"spec": {"strategy": {"type": "BlueGreen"}}}),
                "spec.strategy.type",
            ),
            (
                "Deployment",
                json!({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}}}),
                "spec.strategy.rollingUpdate",
            ),
            (
                "Deployment",
                json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}}}),
                "spec.strategy.rollingUpdate.maxUnavailable",
            ),
            (
                "Deployment",
                json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": "ten%"}}}}),
                "spec.strategy.rollingUpdate.maxSurge",
            ),
            (
                "Deployment",
                json!({"spec": {"strategy": {"rollingUpdate": {"maxUnavailable": "150%"}}}}),
                "spec.strategy.rollingUpdate.maxUnavailable",
            ),
            (
                "Deployment",
                json!({"spec": {"progressDeadlineSeconds": 5, "minReadySeconds": 10}}),
                "spec.progressDeadlineSeconds",
            ),
            (
                "Deployment",
                json!({"spec": {"template": {"spec": {"restartPolicy": "OnFailure"}}}}),
                "spec.template.spec.restartPolicy",
            ),
            (
                "Deployment",
                t(ctr(json!({"image": ""}))),
                "spec.template.spec.containers[0].image",
            ),
            (
                "Deployment",
                json!({"spec": {"template": {"metadata": {"labels": {"app": "web", "x": "-"}}}}}),
                "spec.template.metadata.labels",
            ),
            (
                "ReplicaSet",
                json!({"spec": {"template": null}}),
                "spec.template",
            ),
            (
                "ReplicaSet",
                t(ctr(json!({"ports": [{"containerPort": -1}]}))),
                "spec.template.spec.containers[0].ports[0].containerPort",
            ),
            (
                "DaemonSet",
                json!({"spec": {"updateStrategy": {"type": "Surge"}}}),
                "spec.updateStrategy.type",
            ),
            (
                "DaemonSet",
                json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0}}}}),
                "spec.updateStrategy.rollingUpdate.maxUnavailable",
            ),
            (
                "StatefulSet",
                json!({"spec": {"podManagementPolicy": "Random"}}),
                "spec.podManagementPolicy",
            ),
            (
                "StatefulSet",
                json!({"spec": {"updateStrategy": {"type": "Rolling"}}}),
                "spec.updateStrategy.type",
            ),
            (
                "StatefulSet",
                json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": -1}}}}),
                "spec.updateStrategy.rollingUpdate.partition",
            ),
            (
                "StatefulSet",
                json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": {"partition": 1}}}}),
                "spec.updateStrategy.rollingUpdate",
            ),
            (
                "StatefulSet",
                json!({"spec": {"selector": {"matchLabels": {"app": "db"}}}}),
                "spec.template.metadata.labels",
            ),
            ("ControllerRevision", json!({"revision": -1}), "revision"),
            // Jobs and CronJobs.
            (
                "Job",
                json!({"spec": {"template": {"spec": {"restartPolicy": "Always"}}}}),
                "spec.template.spec.restartPolicy",
            ),
            (
                "Job",
                json!({"spec": {"template": {"spec": {"restartPolicy": null}}}}),
                "spec.template.spec.restartPolicy",
            ),
            (
                "Job",
                json!({"spec": {"parallelism": -1}}),
                "spec.parallelism",
            ),
            (
                "Job",
                json!({"spec": {"completions": -2}}),
                "spec.completions",
            ),
            (
                "Job",
                json!({"spec": {"backoffLimit": -1}}),
                "spec.backoffLimit",
            ),
            (
                "Job",
                json!({"spec": {"activeDeadlineSeconds": 0}}),
                "spec.activeDeadlineSeconds",
            ),
            (
                "Job",
                json!({"spec": {"completionMode": "Sometimes"}}),
                "spec.completionMode",
            ),
            (
                "Job",
                json!({"spec": {"completionMode": "Indexed"}}),
                "spec.completions",
            ),
            (
                "Job",
                json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}}),
                "spec.template.metadata.labels",
            ),
            (
                "Job",
                json!({"spec": {"manualSelector": true}}),
                "spec.selector",
            ),
            (
                "CronJob",
                json!({"spec": {"schedule": ""}}),
                "spec.schedule",
            ),
            (
                "CronJob",
                json!({"spec": {"schedule": "* * * *"}}),
                "spec.schedule",
            ),
            (
                "CronJob",
                json!({"spec": {"schedule": "61 * * * *"}}),
                "spec.schedule",
            ),
            (
                "CronJob",
                json!({"spec": {"schedule": "TZ=UTC 0 * * * *"}}),
                "spec.schedule",
            ),
            (
                "CronJob",
                json!({"spec": {"timeZone": "Local"}}),
                "spec.timeZone",
            ),
            (
                "CronJob",
                json!({"spec": {"timeZone": "Europe/../Berlin"}}),
                "spec.timeZone",
            ),
            (
                "CronJob",
                json!({"spec": {"concurrencyPolicy": "Sometimes"}}),
                "spec.concurrencyPolicy",
            ),
            (
                "CronJob",
                json!({"spec": {"successfulJobsHistoryLimit": -1}}),
                "spec.successfulJobsHistoryLimit",
            ),
            (
                "CronJob",
                json!({"spec": {"startingDeadlineSeconds": -5}}),
                "spec.startingDeadlineSeconds",
            ),
            (
                "CronJob",
                json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Always"}}}}}}),
                "spec.jobTemplate.spec.template.spec.restartPolicy",
            ),
            (
                "CronJob",
                json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}}),
                "spec.jobTemplate.spec.template.spec.containers",
            ),
            (
                "CronJob",
                json!({"metadata": {"name": "a".repeat(53)}}),
                "metadata.name",
            ),
            // Services.
            ("Service", json!({"spec": {"ports": null}}), "spec.ports"),
            (
                "Service",
                json!({"spec": {"ports": [{"port": 0}]}}),
                "spec.ports[0].port",
            ),
            (
                "Service",
                json!({"spec": {"ports": [{"port": 80, "name": "a"}, {"port": 81}]}}),
                "spec.ports[1].name",
            ),
            (
                "Service",
                json!({"spec": {"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "a"}]}}),
                "spec.ports[1].name",
            ),
            (
                "Service",
                json!({"spec": {"ports": [{"port": 80, "name": "A_B"}]}}),
                "spec.ports[0].name",
            ),
            (
                "Service",
                json!({"spec": {"ports": [{"port": 80, "protocol": "HTTP"}]}}),
                "spec.ports[0].protocol",
            ),
            (
                "Service",
                json!({"spec": {"ports": [{"port": 80, "targetPort": 70000}]}}),
                "spec.ports[0].targetPort",
            ),
            (
                "Service",
                json!({"spec": {"ports": [{"port": 80, "targetPort": "Web"}]}}),
                "spec.ports[0].targetPort",
            ),
            (
                "Service",
                json!({"spec": {"ports": [{"port": 80, "nodePort": 30080}]}}),
                "spec.ports[0].nodePort",
            ),
            (
                "Service",
                json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 70000}]}}),
                "spec.ports[0].nodePort",
            ),
            (
                "Service",
                json!({"spec": {"type": "Internal"}}),
                "spec.type",
            ),
            (
                "Service",
                json!({"spec": {"type": "ExternalName", "ports": null}}),
                "spec.externalName",
            ),
            (
                "Service",
                json!({"spec": {"type": "ExternalName", "externalName": "Bad_Name"}}),
                "spec.externalName",
            ),
            (
                "Service",
                json!({"spec": {"sessionAffinity": "Cookie"}}),
                "spec.sessionAffinity",
            ),
            (
                "Service",
                json!({"spec": {"selector": {"app": "we b"}}}),
                "spec.selector",
            ),
            (
                "Service",
                json!({"spec": {"clusterIP": "10.0.0.300"}}),
                "spec.clusterIP",
            ),
            (
                "Service",
                json!({"spec": {"type": "NodePort", "clusterIP": "None"}}),
                "spec.clusterIP",
            ),
            (
                "Service",
                json!({"spec": {"externalTrafficPolicy": "Local"}}),
                "spec.externalTrafficPolicy",
            ),
            (
                "Service",
                json!({"spec": {"internalTrafficPolicy": "Nearest"}}),
                "spec.internalTrafficPolicy",
            ),
            // ConfigMaps and Secrets.
            (
                "ConfigMap",
                json!({"data": {"bad key": "x"}}),
                "data[bad key]",
            ),
            ("ConfigMap", json!({"data": {"..": "x"}}), "data[..]"),
            ("ConfigMap", json!({"binaryData": {"a": "MQ=="}}), "data[a]"),
            (
                "ConfigMap",
                json!({"data": {"big": "x".repeat(1024 * 1024 + 1)}}),
                "data",
            ),
            ("Secret", json!({"data": {"a/b": "MQ=="}}), "data[a/b]"),
            ("Secret", json!({"stringData": {"": "x"}}), "stringData[]"),
            (
                "Secret",
                json!({"type": "kubernetes.io/tls"}),
                "data[tls.crt]",
            ),
            (
                "Secret",
                json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "bm90IGpzb24="}}),
                "data[.dockerconfigjson]",
            ),
            (
                "Secret",
                json!({"type": "kubernetes.io/service-account-token"}),
                "metadata.annotations[kubernetes.io/service-account.name]",
            ),
            // Nodes.
            (
                "Node",
                json!({"spec": {"podCIDR": "10.244.0.0/33"}}),
                "spec.podCIDR",
            ),
            (
                "Node",
                json!({"spec": {"podCIDR": "not-a-cidr"}}),
                "spec.podCIDR",
            ),
            (
                "Node",
                json!({"spec": {"taints": [{"key": "k", "effect": "NoRun"}]}}),
                "spec.taints[0].effect",
            ),
            (
                "Node",
                json!({"spec": {"taints": [{"key": "bad key", "effect": "NoSchedule"}]}}),
                "spec.taints[0].key",
            ),
            (
                "Node",
                json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}, {"key": "k", "effect": "NoSchedule"}]}}),
                "spec.taints[1]",
            ),
            // Endpoints, EndpointSlices, Leases, Events.
            (
                "Endpoints",
                json!({"subsets": [{"addresses": [{"ip": "10.0.0.999"}]}]}),
                "subsets[0].addresses[0].ip",
            ),
            (
                "Endpoints",
                json!({"subsets": [{"addresses": [{"ip": "127.0.0.1"}]}]}),
                "subsets[0].addresses[0].ip",
            ),
            (
                "Endpoints",
                json!({"subsets": [{"ports": [{"port": 0}]}]}),
                "subsets[0].ports[0].port",
            ),
            (
                "Endpoints",
                json!({"subsets": [{"ports": [{"port": 80, "name": "a"}, {"port": 81}]}]}),
                "subsets[0].ports[1].name",
            ),
            (
                "EndpointSlice",
                json!({"addressType": "IPv5"}),
                "addressType",
            ),
            (
                "EndpointSlice",
                json!({"endpoints": [{"addresses": ["fd00::1"]}]}),
                "endpoints[0].addresses[0]",
            ),
            (
                "EndpointSlice",
                json!({"endpoints": [{"addresses": []}]}),
                "endpoints[0].addresses",
            ),
            (
                "EndpointSlice",
                json!({"addressType": "FQDN", "endpoints": [{"addresses": ["Not_A_Name"]}]}),
                "endpoints[0].addresses[0]",
            ),
            (
                "EndpointSlice",
                json!({"ports": [{"name": "http", "port": 70000}]}),
                "ports[0].port",
            ),
            (
                "EndpointSlice",
                json!({"ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}]}),
                "ports[1].name",
            ),
            (
                "Lease",
                json!({"spec": {"leaseDurationSeconds": 0}}),
                "spec.leaseDurationSeconds",
            ),
            (
                "Lease",
                json!({"spec": {"leaseTransitions": -1}}),
                "spec.leaseTransitions",
            ),
            (
                "Event",
                json!({"involvedObject": {"namespace": "other"}}),
                "involvedObject.namespace",
            ),
            ("Event", json!({"involvedObject": null}), "involvedObject"),
        ];
        assert!(cases.len() >= 60, "{} cases", cases.len());
        for (kind, patch, field) in &cases {
            check(kind, patch, None, field);
        }
    }

    #[test]
    fn updates_keep_immutable_fields() {
        let sel = |app: &str| {
            json!({"spec": {"selector": {"matchLabels": {"app": app}},
                "template": {"metadata": {"labels": {"app": app}}}}})
        };
        let cases: Vec<(&str, Value, Value, &str)> = vec![
            (
                "Pod",
                json!({}),
                json!({"spec": {"nodeName": "node-1"}}),
                "spec",
            ),
            (
                "Pod",
                json!({}),
                json!({"spec": {"containers": [ctr(json!({"ports": null}))]}}),
                "spec",
            ),
            (
                "Pod",
                json!({"spec": {"activeDeadlineSeconds": 10}}),
                json!({"spec": {"activeDeadlineSeconds": 20}}),
                "spec.activeDeadlineSeconds",
            ),
            (
                "Pod",
                json!({"spec": {"tolerations": [{"key": "k", "operator": "Exists"}]}}),
                json!({"spec": {"tolerations": []}}),
                "spec.tolerations",
            ),
            (
                "Pod",
                json!({}),
                json!({"metadata": {"name": "other"}}),
                "metadata.name",
            ),
            (
                "Pod",
                json!({"metadata": {"uid": "a"}}),
                json!({"metadata": {"uid": "b"}}),
                "metadata.uid",
            ),
            ("Deployment", json!({}), sel("api"), "spec.selector"),
            ("ReplicaSet", json!({}), sel("api"), "spec.selector"),
            ("DaemonSet", json!({}), sel("api"), "spec.selector"),
            ("StatefulSet", json!({}), sel("api"), "spec.selector"),
            (
                "StatefulSet",
                json!({}),
                json!({"spec": {"serviceName": "other"}}),
                "spec",
            ),
            (
                "Job",
                json!({}),
                json!({"spec": {"completionMode": "Indexed", "completions": 3}}),
                "spec.completionMode",
            ),
            (
                "Job",
                json!({}),
                json!({"spec": {"template": {"spec": {"restartPolicy": "OnFailure"}}}}),
                "spec.template",
            ),
            (
                "Job",
                json!({"spec": {"selector": {"matchLabels": {"app": "web"}}}}),
                json!({"spec": {"selector": {"matchLabels": {"app": "web", "x": "y"}}, "template": {"metadata": {"labels": {"x": "y"}}}}}),
                "spec.selector",
            ),
            (
                "Service",
                json!({"spec": {"clusterIP": "10.96.0.10"}}),
                json!({"spec": {"clusterIP": "10.96.0.11"}}),
                "spec.clusterIP",
            ),
            (
                "Secret",
                json!({}),
                json!({"type": "kubernetes.io/basic-auth", "data": {"username": "YQ=="}}),
                "type",
            ),
            (
                "Secret",
                json!({"immutable": true}),
                json!({"immutable": true, "data": {"a": "Mg=="}}),
                "data",
            ),
            (
                "ConfigMap",
                json!({"immutable": true}),
                json!({"immutable": true, "data": {"a": "2"}}),
                "data",
            ),
            (
                "ConfigMap",
                json!({"immutable": true}),
                json!({"immutable": false}),
                "immutable",
            ),
            (
                "ControllerRevision",
                json!({}),
                json!({"data": {"x": 2}}),
                "data",
            ),
            (
                "EndpointSlice",
                json!({}),
                json!({"addressType": "IPv6", "endpoints": [{"addresses": ["fd00::1"]}]}),
                "addressType",
            ),
            (
                "Node",
                json!({}),
                json!({"spec": {"podCIDR": "10.245.0.0/24"}}),
                "spec.podCIDR",
            ),
        ];
        for (kind, old, new, field) in &cases {
            check(kind, new, Some(old), field);
        }
    }

    #[test]
    fn allowed_updates_pass() {
        let cases: Vec<(&str, Value, Value)> = vec![
            (
                "Pod",
                json!({}),
                json!({"spec": {"containers": [ctr(json!({"image": "nginx:1.28"}))]}}),
            ),
            (
                "Pod",
                json!({"spec": {"activeDeadlineSeconds": 30}}),
                json!({"spec": {"activeDeadlineSeconds": 10}}),
            ),
            (
                "Pod",
                json!({}),
                json!({"spec": {"tolerations": [{"key": "k", "operator": "Exists"}]}}),
            ),
            (
                "Pod",
                json!({}),
                json!({"metadata": {"labels": {"tier": "web"}}}),
            ),
            (
                "Deployment",
                json!({}),
                json!({"spec": {"replicas": 5, "template": {"spec": {"containers": [ctr(json!({"image": "x"}))]}}}}),
            ),
            (
                "StatefulSet",
                json!({}),
                json!({"spec": {"replicas": 5, "minReadySeconds": 3}}),
            ),
            (
                "Service",
                json!({"spec": {"clusterIP": "10.96.0.10"}}),
                json!({"spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 81}]}}),
            ),
            (
                "Service",
                json!({"spec": {"clusterIP": "10.96.0.10"}}),
                json!({"spec": {"type": "ExternalName", "externalName": "db.example.com", "clusterIP": null, "ports": null}}),
            ),
            ("ConfigMap", json!({}), json!({"data": {"a": "2"}})),
            (
                "Job",
                json!({"spec": {"suspend": true}}),
                json!({"spec": {"suspend": false, "template": {"spec": {"nodeSelector": {"zone": "a"}}}}}),
            ),
            (
                "Node",
                json!({"spec": {"podCIDR": null}}),
                json!({"spec": {"podCIDR": "10.244.1.0/24"}}),
            ),
        ];
        for (kind, old, new) in &cases {
            let errs = errors(kind, new, Some(old));
            assert!(errs.is_empty(), "{kind} {new}: {errs:#?}");
        }
    }

    #[test]
    fn valid_variants_pass() {
        let pod = |spec: Value| json!({"spec": spec});
        let pod_ctr = |c: Value| json!({"spec": {"containers": [c]}});
        let cases: Vec<(&str, Value)> = vec![
            (
                "Pod",
                json!({"metadata": {"name": null, "generateName": "web-"}}),
            ),
            (
                "Pod",
                json!({"metadata": {"labels": {"app.kubernetes.io/name": "web", "empty": ""}}}),
            ),
            (
                "Pod",
                json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "123", "controller": true}]}}),
            ),
            (
                "Pod",
                pod(
                    json!({"volumes": [{"name": "d"}, {"name": "c", "configMap": {"name": "cfg"}}],
                "containers": [ctr(json!({"volumeMounts": [{"name": "d", "mountPath": "/d"}, {"name": "c", "mountPath": "/c"}]}))]}),
                ),
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"resources": {"requests": {"cpu": "250m", "memory": "1Gi", "example.com/gpu": "1"},
                "limits": {"cpu": "0.5", "memory": "1073741824", "example.com/gpu": "1"}}}),
                )),
            ),
            (
                "Pod",
                pod_ctr(ctr(json!({"env": [{"name": "MY.VAR-1", "value": "x"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}]}))),
            ),
            (
                "Pod",
                pod_ctr(ctr(
                    json!({"livenessProbe": {"httpGet": {"port": "http", "path": "/healthz"}, "periodSeconds": 5},
                "readinessProbe": {"grpc": {"port": 9000}}}),
                )),
            ),
            (
                "Pod",
                pod(
                    json!({"restartPolicy": "Never", "dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"]},
                "tolerations": [{"operator": "Exists"}, {"key": "k", "value": "v", "effect": "NoExecute", "tolerationSeconds": 30}]}),
                ),
            ),
            (
                "Pod",
                pod(
                    json!({"initContainers": [{"name": "sidecar", "image": "envoy", "restartPolicy": "Always",
                "readinessProbe": {"tcpSocket": {"port": 15000}}}]}),
                ),
            ),
            (
                "Service",
                json!({"spec": {"clusterIP": "None", "ports": null}}),
            ),
            (
                "Service",
                json!({"spec": {"type": "NodePort", "externalTrafficPolicy": "Local",
                "ports": [{"name": "http", "port": 80, "nodePort": 30080, "targetPort": "http"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
            ),
            (
                "Service",
                json!({"spec": {"clusterIP": "fd00::10", "clusterIPs": ["fd00::10"]}}),
            ),
            (
                "Deployment",
                json!({"spec": {"selector": {"matchLabels": null, "matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]},
                "strategy": {"type": "Recreate"}}}),
            ),
            (
                "StatefulSet",
                json!({"spec": {"serviceName": "web", "podManagementPolicy": "Parallel",
                "updateStrategy": {"rollingUpdate": {"partition": 1, "maxUnavailable": "50%"}}}}),
            ),
            (
                "Job",
                json!({"spec": {"completionMode": "Indexed", "completions": 3, "parallelism": 3, "backoffLimitPerIndex": 1}}),
            ),
            (
                "CronJob",
                json!({"spec": {"schedule": "@hourly", "timeZone": "America/New_York", "concurrencyPolicy": "Forbid"}}),
            ),
            (
                "Secret",
                json!({"type": "kubernetes.io/tls", "stringData": {"tls.crt": "c", "tls.key": "k"}}),
            ),
            (
                "Node",
                json!({"spec": {"podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"],
                "taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
            ),
            (
                "EndpointSlice",
                json!({"addressType": "FQDN", "endpoints": [{"addresses": ["db.example.com"]}], "ports": [{"port": null}]}),
            ),
            (
                "Namespace",
                json!({"spec": {"finalizers": ["kubernetes", "example.com/cleanup"]}}),
            ),
        ];
        for (kind, patch) in &cases {
            let errs = errors(kind, patch, None);
            assert!(errs.is_empty(), "{kind} {patch}: {errs:#?}");
        }
    }

    #[test]
    fn messages_follow_kube_apiserver() {
        let errs = errors(
            "Pod",
            &json!({"spec": {"containers": [ctr(json!({"ports": [{"containerPort": 0}]}))]}}),
            None,
        );
        assert_eq!(
            errs,
            vec![FieldError {
                field: "spec.containers[0].ports[0].containerPort".into(),
                reason: "FieldValueInvalid",
                message: "Invalid value: 0: must be between 1 and 65535, inclusive".into(),
            }]
        );
        let errs = errors(
            "Deployment",
            &json!({"spec": {"selector": {"matchLabels": {"app": "api"}}}}),
            None,
        );
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0]
                .message
                .ends_with("`selector` does not match template `labels`"),
            "{}",
            errs[0].message
        );
        let errs = errors(
            "ConfigMap",
            &json!({"data": {"big": "x".repeat(1024 * 1024 + 1)}}),
            None,
        );
        assert_eq!(errs[0].reason, "FieldValueTooLong");
        assert_eq!(errs[0].message, "Too long: must have at most 1048576 bytes");
        let errs = errors(
            "Service",
            &json!({"spec": {"clusterIP": "10.96.0.11"}}),
            Some(&json!({"spec": {"clusterIP": "10.96.0.10"}})),
        );
        assert_eq!(
            errs[0].message,
            "Invalid value: \"10.96.0.11\": field is immutable"
        );
        let errs = errors(
            "Pod",
            &json!({"spec": {"restartPolicy": "Sometimes"}}),
            None,
        );
        assert_eq!(errs[0].reason, "FieldValueNotSupported");
        assert_eq!(
            errs[0].message,
            "Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
        );
        let errs = errors(
            "Pod",
            &json!({"spec": {"containers": [container(), container()]}}),
            None,
        );
        assert_eq!(errs[0].reason, "FieldValueDuplicate");
        let errs = errors(
            "Pod",
            &json!({"spec": {"nodeName": "node-1"}}),
            Some(&json!({})),
        );
        assert_eq!(errs[0].reason, "FieldValueForbidden");
        assert!(
            errs[0].message.contains("spec.nodeName"),
            "{}",
            errs[0].message
        );
        let errs = errors("Namespace", &json!({"metadata": {"name": "Team"}}), None);
        assert!(
            errs[0]
                .message
                .starts_with("Invalid value: \"Team\": a lowercase RFC 1123 label"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn quantities_parse_like_kube() {
        let nano = |units: i128| Some(ParsedQuantity(units));
        let cases: &[(&str, Option<ParsedQuantity>)] = &[
            ("1", nano(NANO)),
            ("0", nano(0)),
            ("500m", nano(NANO / 2)),
            ("0.5", nano(NANO / 2)),
            (".5", nano(NANO / 2)),
            ("5.", nano(5 * NANO)),
            ("+1", nano(NANO)),
            ("-1", nano(-NANO)),
            ("1k", nano(1000 * NANO)),
            ("1M", nano(1_000_000 * NANO)),
            ("1G", nano(1_000_000_000 * NANO)),
            ("1E", nano(1_000_000_000_000_000_000 * NANO)),
            ("1Ki", nano(1024 * NANO)),
            ("1.5Mi", nano(1_572_864 * NANO)),
            ("1Gi", nano((1 << 30) * NANO)),
            ("2Ei", nano((2 << 60) * NANO)),
            ("1e3", nano(1000 * NANO)),
            ("1E3", nano(1000 * NANO)),
            ("12e-3", nano(12 * NANO / 1000)),
            ("1n", nano(1)),
            ("1u", nano(1000)),
            ("0.1n", nano(1)),
            ("1.000000000000000000000000000000000000000000", nano(NANO)),
            ("1e400", nano(i128::MAX)),
            ("", None),
            (".", None),
            ("-", None),
            ("1.2.3", None),
            ("1KB", None),
            ("1ki", None),
            ("1e", None),
            ("1e+", None),
            ("abc", None),
            (" 1", None),
            ("1 ", None),
            ("1Mi1", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_quantity(text), *expected, "{text:?}");
        }
        assert!(parse_quantity("1500Mi") < parse_quantity("2Gi"));
        assert!(parse_quantity("1000m") == parse_quantity("1"));
        assert!(parse_quantity("1001m") > parse_quantity("1"));
    }

    #[test]
    fn cron_schedules_parse_like_the_controller() {
        let valid = [
            "* * * * *",
            "*/5 * * * *",
            "0 0 * * *",
            "0 0 1 1 *",
            "0-59/15 0-23 1-31 1-12 0-6",
            "5,10,15 */2 ? * MON-FRI",
            "0 9 * jan,Jul sun",
            "30 4 1/3 * *",
            "0 0 29 feb *",
            "@hourly",
            "@daily",
            "@midnight",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@every 1h30m",
            "  0 0 * * *  ",
        ];
        for s in valid {
            assert_eq!(parse_cron(s), Ok(()), "{s:?}");
        }
        let invalid = [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 7",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "1,,2 * * * *",
            "* * * foo *",
            "-1 * * * *",
            "1/x * * * *",
            "@fortnightly",
            "@every",
            "@every soon",
        ];
        for s in invalid {
            assert!(parse_cron(s).is_err(), "{s:?} should not parse");
        }
    }

    #[test]
    fn name_formats() {
        assert!(dns1123_label("my-name").is_empty());
        assert!(dns1123_label("123-abc").is_empty());
        assert_eq!(dns1123_label("-a").len(), 1);
        assert_eq!(dns1123_label("").len(), 1);
        assert!(dns1123_subdomain("example.com").is_empty());
        assert!(!dns1123_subdomain("example..com").is_empty());
        assert!(qualified_name("example.com/MyName").is_empty());
        assert!(!qualified_name("/name").is_empty());
        assert!(!qualified_name("example.com/").is_empty());
        assert!(!qualified_name("a/b/c").is_empty());
        assert!(iana_svc_name("http").is_empty());
        assert!(!iana_svc_name("80").is_empty());
        assert!(!iana_svc_name("a--b").is_empty());
        assert!(!iana_svc_name("-ab").is_empty());
        assert!(env_var_name("_X.y-1").is_empty());
        assert!(!env_var_name("1X").is_empty());
        assert!(!env_var_name("A B").is_empty());
        assert!(config_key("tls.crt").is_empty());
        assert!(!config_key(".").is_empty());
        assert!(!config_key("..data").is_empty());
        assert!(parse_cidr("10.0.0.0/8").is_some());
        assert!(parse_cidr("fd00::/64").is_some());
        assert!(parse_cidr("10.0.0.0/").is_none());
        assert!(parse_cidr("10.0.0.0").is_none());
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let bodies = [
            json!({}),
            json!({"metadata": {}}),
            json!({"metadata": {"name": "é", "labels": {"é/ü": "ß"}, "annotations": {"": ""}}}),
            json!({"spec": {}}),
            json!({"spec": {"containers": [{}], "initContainers": [{}], "volumes": [{}]}}),
            json!({"spec": {"selector": {}, "template": {}}}),
            json!({"spec": {"jobTemplate": {}}}),
            json!({"spec": {"schedule": "@every 1µs", "ports": [{"port": -1, "targetPort": ""}]}}),
            json!({"spec": {"containers": [{"name": "a", "image": "b", "resources": {"limits": {"cpu": "99999999999999999999999999999999999999999999"}, "requests": {"cpu": "-.e5"}}}]}}),
        ];
        for kind in KINDS {
            for body in &bodies {
                let _ = validate(kind, body, Some(body));
                let _ = validate(kind, body, None);
            }
        }
    }
}
