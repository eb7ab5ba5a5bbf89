//! The controllers' only way to change the cluster: the API, through a narrow [`Client`] trait.
//!
//! [`KubeClient`] sends each call over HTTPS to the API server (in the master, its own loopback
//! listener with the admin token), so validation, defaulting and admission apply to controllers
//! as to any client. [`RecordingClient`] records calls for reconcile tests. [`Api`] adds typed
//! calls over either.

use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, Preconditions};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a `Status` error.
    #[error("{verb} {path}: {code} {reason}: {message}")]
    Status {
        verb: &'static str,
        path: String,
        code: u16,
        reason: String,
        message: String,
    },
    /// The request did not get an answer.
    #[error("{verb} {path}: {source}")]
    Transport {
        verb: &'static str,
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The answer or the request body was not the JSON expected.
    #[error("{verb} {path}: bad JSON: {source}")]
    Json {
        verb: &'static str,
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status code, if the server answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }
    /// A 409 because of a stale `resourceVersion` (`Conflict`) — read again and retry.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClientError::Status { code: 409, reason, .. } if reason == "Conflict")
    }
    pub fn is_already_exists(&self) -> bool {
        matches!(self, ClientError::Status { code: 409, reason, .. } if reason == "AlreadyExists")
    }
}

/// How a PATCH body is to be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Strategic,
    Json,
}

impl PatchType {
    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Merge => "application/merge-patch+json",
            PatchType::Strategic => "application/strategic-merge-patch+json",
            PatchType::Json => "application/json-patch+json",
        }
    }
}

/// The verbs controllers use, on full API paths (`/apis/apps/v1/namespaces/ns/replicasets/x`).
#[async_trait::async_trait]
pub trait Client: Send + Sync + 'static {
    async fn get(&self, path: &str) -> Result<Value, ClientError>;
    /// POST to a collection (or a subresource such as `binding`).
    async fn create(&self, path: &str, body: Value) -> Result<Value, ClientError>;
    /// PUT.
    async fn replace(&self, path: &str, body: Value) -> Result<Value, ClientError>;
    async fn patch(&self, path: &str, kind: PatchType, body: Value) -> Result<Value, ClientError>;
    /// DELETE with a `DeleteOptions` body; answers what the server returned (the object while a
    /// graceful deletion or finalizers hold it, else a `Status`).
    async fn delete(&self, path: &str, options: Value) -> Result<Value, ClientError>;
}

/// [`Client`] over kube-rs: HTTPS to an API server.
pub struct KubeClient {
    client: kube::Client,
}

impl KubeClient {
    pub fn new(client: kube::Client) -> Self {
        KubeClient { client }
    }

    async fn send(
        &self,
        verb: &'static str,
        method: http::Method,
        path: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let bytes = match body {
            Some(body) => serde_json::to_vec(&body).map_err(|source| ClientError::Json {
                verb,
                path: path.into(),
                source,
            })?,
            None => Vec::new(),
        };
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::ACCEPT, "application/json")
            .body(bytes)
            .map_err(|e| ClientError::Transport {
                verb,
                path: path.into(),
                source: Box::new(e),
            })?;
        let text = self
            .client
            .request_text(request)
            .await
            .map_err(|e| match e {
                kube::Error::Api(status) => ClientError::Status {
                    verb,
                    path: path.into(),
                    code: status.code,
                    reason: status.reason.clone(),
                    message: status.message.clone(),
                },
                other => ClientError::Transport {
                    verb,
                    path: path.into(),
                    source: Box::new(other),
                },
            })?;
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|source| ClientError::Json {
            verb,
            path: path.into(),
            source,
        })
    }
}

#[async_trait::async_trait]
impl Client for KubeClient {
    async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send("get", http::Method::GET, path, "application/json", None)
            .await
    }
    async fn create(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.send(
            "create",
            http::Method::POST,
            path,
            "application/json",
            Some(body),
        )
        .await
    }
    async fn replace(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.send(
            "update",
            http::Method::PUT,
            path,
            "application/json",
            Some(body),
        )
        .await
    }
    async fn patch(&self, path: &str, kind: PatchType, body: Value) -> Result<Value, ClientError> {
        self.send(
            "patch",
            http::Method::PATCH,
            path,
            kind.content_type(),
            Some(body),
        )
        .await
    }
    async fn delete(&self, path: &str, options: Value) -> Result<Value, ClientError> {
        self.send(
            "delete",
            http::Method::DELETE,
            path,
            "application/json",
            Some(options),
        )
        .await
    }
}

/// One call a [`RecordingClient`] saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `get`, `create`, `update`, `patch` or `delete`.
    pub verb: &'static str,
    pub path: String,
    pub body: Value,
}

impl Call {
    /// `"verb path"`, handy for asserting on a sequence of calls.
    pub fn short(&self) -> String {
        format!("{} {}", self.verb, self.path)
    }
}

/// A fake [`Client`] for reconcile tests: records every call and answers with the body sent
/// (create fills in `uid`, `resourceVersion` and a `generateName` name). Errors can be queued
/// for paths that should fail.
#[derive(Default, Clone)]
pub struct RecordingClient {
    calls: Arc<Mutex<Vec<Call>>>,
    failures: Arc<Mutex<Vec<(String, ClientError)>>>,
    objects: Arc<Mutex<std::collections::HashMap<String, Value>>>,
}

impl RecordingClient {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `"verb path"` of every call so far.
    pub fn short_calls(&self) -> Vec<String> {
        self.calls().iter().map(Call::short).collect()
    }

    /// Forgets the calls so far.
    pub fn clear(&self) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The next call whose path starts with `path_prefix` fails with a `Status` of this code
    /// and reason.
    pub fn fail_next(&self, path_prefix: &str, code: u16, reason: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((
                path_prefix.to_string(),
                ClientError::Status {
                    verb: "any",
                    path: path_prefix.into(),
                    code,
                    reason: reason.into(),
                    message: "injected by the test".into(),
                },
            ));
    }

    /// What `get` answers for `path`.
    pub fn set_object(&self, path: &str, object: Value) {
        self.objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.into(), object);
    }

    fn record(&self, verb: &'static str, path: &str, body: &Value) -> Result<(), ClientError> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Call {
                verb,
                path: path.into(),
                body: body.clone(),
            });
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = failures
            .iter()
            .position(|(prefix, _)| path.starts_with(prefix.as_str()))
        {
            return Err(failures.remove(i).1);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Client for RecordingClient {
    async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.record("get", path, &Value::Null)?;
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        objects
            .get(path)
            .cloned()
            .ok_or_else(|| ClientError::Status {
                verb: "get",
                path: path.into(),
                code: 404,
                reason: "NotFound".into(),
                message: "not found".into(),
            })
    }
    async fn create(&self, path: &str, mut body: Value) -> Result<Value, ClientError> {
        self.record("create", path, &body)?;
        let n = self.calls.lock().unwrap_or_else(|p| p.into_inner()).len();
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            if meta.get("name").is_none() {
                let prefix = meta
                    .get("generateName")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                meta.insert("name".into(), json!(format!("{prefix}{n:05}")));
            }
            meta.entry("uid")
                .or_insert_with(|| json!(format!("uid-{n}")));
            meta.insert("resourceVersion".into(), json!(n.to_string()));
        }
        Ok(body)
    }
    async fn replace(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.record("update", path, &body)?;
        Ok(body)
    }
    async fn patch(&self, path: &str, _kind: PatchType, body: Value) -> Result<Value, ClientError> {
        self.record("patch", path, &body)?;
        Ok(body)
    }
    async fn delete(&self, path: &str, options: Value) -> Result<Value, ClientError> {
        self.record("delete", path, &options)?;
        Ok(json!({"kind": "Status", "status": "Success"}))
    }
}

/// Typed calls over a [`Client`].
#[derive(Clone)]
pub struct Api {
    client: Arc<dyn Client>,
}

/// The path of `name` (or of the collection, for `None`) of kind `K` in `namespace`.
pub fn path_of<K: Resource<DynamicType = ()>>(
    namespace: Option<&str>,
    name: Option<&str>,
) -> String {
    // Cluster-scoped kinds have no namespace segment, whatever the caller passed.
    let namespace = namespace.filter(|_| is_namespaced::<K>());
    let collection = K::url_path(&(), namespace);
    match name {
        Some(name) => format!("{collection}/{name}"),
        None => collection,
    }
}

/// Whether kind `K` lives in namespaces (kube's `url_path` does not look at the scope).
pub fn is_namespaced<K: Resource<DynamicType = ()>>() -> bool {
    // The scope is a marker type (`NamespaceResourceScope` or `ClusterResourceScope`); its name
    // is all there is to read without a `'static` bound on every caller.
    std::any::type_name::<K::Scope>().ends_with("::NamespaceResourceScope")
}

fn decode<K: DeserializeOwned>(
    verb: &'static str,
    path: &str,
    value: Value,
) -> Result<K, ClientError> {
    serde_json::from_value(value).map_err(|source| ClientError::Json {
        verb,
        path: path.into(),
        source,
    })
}

fn encode<K: Serialize>(verb: &'static str, path: &str, obj: &K) -> Result<Value, ClientError> {
    serde_json::to_value(obj).map_err(|source| ClientError::Json {
        verb,
        path: path.into(),
        source,
    })
}

impl Api {
    pub fn new(client: Arc<dyn Client>) -> Self {
        Api { client }
    }

    /// The untyped client underneath.
    pub fn raw(&self) -> &dyn Client {
        self.client.as_ref()
    }

    pub async fn get<K>(&self, namespace: Option<&str>, name: &str) -> Result<K, ClientError>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let path = path_of::<K>(namespace, Some(name));
        let value = self.client.get(&path).await?;
        decode("get", &path, value)
    }

    /// Creates `obj` in its `metadata.namespace` (ignored for cluster-scoped kinds).
    pub async fn create<K>(&self, obj: &K) -> Result<K, ClientError>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let path = path_of::<K>(namespaced::<K>(obj), None);
        let mut body = encode("create", &path, obj)?;
        set_type_meta::<K>(&mut body);
        let value = self.client.create(&path, body).await?;
        decode("create", &path, value)
    }

    /// Replaces `obj` (PUT); its `resourceVersion` makes the write conditional.
    pub async fn replace<K>(&self, obj: &K) -> Result<K, ClientError>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        self.put(obj, "").await
    }

    /// Replaces `obj`'s status (PUT on the `status` subresource).
    pub async fn replace_status<K>(&self, obj: &K) -> Result<K, ClientError>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        self.put(obj, "/status").await
    }

    async fn put<K>(&self, obj: &K, suffix: &str) -> Result<K, ClientError>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let name = obj.meta().name.as_deref().unwrap_or_default();
        let path = format!("{}{suffix}", path_of::<K>(namespaced::<K>(obj), Some(name)));
        let mut body = encode("update", &path, obj)?;
        set_type_meta::<K>(&mut body);
        let value = self.client.replace(&path, body).await?;
        decode("update", &path, value)
    }

    pub async fn patch<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        kind: PatchType,
        patch: &Value,
    ) -> Result<K, ClientError>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let path = path_of::<K>(namespace, Some(name));
        let value = self.client.patch(&path, kind, patch.clone()).await?;
        decode("patch", &path, value)
    }

    /// A merge patch of the `status` subresource.
    pub async fn patch_status<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<K, ClientError>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let path = format!("{}/status", path_of::<K>(namespace, Some(name)));
        let value = self
            .client
            .patch(&path, PatchType::Merge, patch.clone())
            .await?;
        decode("patch", &path, value)
    }

    /// Deletes `name`; `NotFound` counts as done.
    pub async fn delete<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<(), ClientError>
    where
        K: Resource<DynamicType = ()>,
    {
        let path = path_of::<K>(namespace, Some(name));
        let body = encode("delete", &path, options)?;
        match self.client.delete(&path, body).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Binds a pod to a node through `pods/binding`, as a scheduler does.
    pub async fn bind(&self, namespace: &str, pod: &str, node: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}/binding");
        let body = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod, "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        self.client.create(&path, body).await.map(|_| ())
    }
}

/// `DeleteOptions` with a propagation policy (`Background`, `Foreground`, `Orphan`).
pub fn delete_options(propagation: Option<&str>) -> DeleteOptions {
    DeleteOptions {
        propagation_policy: propagation.map(str::to_string),
        ..Default::default()
    }
}

/// `DeleteOptions` that delete only the object with this UID (not a successor with the name).
pub fn delete_uid(uid: &str, propagation: Option<&str>) -> DeleteOptions {
    DeleteOptions {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        propagation_policy: propagation.map(str::to_string),
        ..Default::default()
    }
}

fn namespaced<K: Resource<DynamicType = ()>>(obj: &K) -> Option<&str> {
    obj.meta().namespace.as_deref().filter(|ns| !ns.is_empty())
}

fn set_type_meta<K: Resource<DynamicType = ()>>(body: &mut Value) {
    if let Some(map) = body.as_object_mut() {
        map.insert("apiVersion".into(), json!(K::api_version(&())));
        map.insert("kind".into(), json!(K::kind(&())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn scope_is_read_from_the_type() {
        assert!(is_namespaced::<Pod>());
        assert!(!is_namespaced::<Node>());
    }

    #[test]
    fn paths_follow_the_api_layout() {
        assert_eq!(
            path_of::<Pod>(Some("ns"), Some("p")),
            "/api/v1/namespaces/ns/pods/p"
        );
        assert_eq!(
            path_of::<ReplicaSet>(Some("ns"), None),
            "/apis/apps/v1/namespaces/ns/replicasets"
        );
        assert_eq!(path_of::<Node>(None, Some("n1")), "/api/v1/nodes/n1");
    }

    #[tokio::test]
    async fn recording_client_records_and_fails_on_demand() {
        let fake = RecordingClient::new();
        let api = Api::new(Arc::new(fake.clone()));
        let pod = Pod {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                generate_name: Some("web-".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = api.create(&pod).await.unwrap();
        assert!(created.metadata.name.unwrap().starts_with("web-"));
        fake.fail_next("/api/v1/namespaces/ns/pods/web", 409, "Conflict");
        let err = api
            .patch_status::<Pod>(Some("ns"), "web", &json!({}))
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err}");
        api.delete::<Pod>(Some("ns"), "web", &delete_options(None))
            .await
            .unwrap();
        assert_eq!(
            fake.short_calls(),
            vec![
                "create /api/v1/namespaces/ns/pods",
                "patch /api/v1/namespaces/ns/pods/web/status",
                "delete /api/v1/namespaces/ns/pods/web"
            ]
        );
        assert_eq!(fake.calls()[0].body["kind"], "Pod");
    }
}
