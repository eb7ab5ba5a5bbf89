//! Event recording: a core/v1 `Event` per (object, type, reason, message), with a `count` that
//! grows on repeats instead of a new Event each time (as client-go's recorder does).
//!
//! Recording never blocks a reconcile: events go through a bounded channel to one writer task,
//! and are dropped (with a debug log) when the writer falls behind, as client-go drops them.

use std::collections::{HashMap, VecDeque};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Resource;
use serde_json::json;
use tokio::sync::mpsc;

use super::client::Api;

/// How many events may wait for the writer before new ones are dropped.
const QUEUE: usize = 4096;
/// How many distinct events the writer remembers for counting repeats.
const REMEMBERED: usize = 4096;

/// `Normal` or `Warning`, as `Event.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub regarding: ObjectReference,
    pub kind: EventType,
    pub reason: String,
    pub message: String,
}

/// Hands events to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct EventRecorder {
    tx: mpsc::Sender<Record>,
}

impl EventRecorder {
    /// A recorder whose events `run_writer` will write (or a test will read from `rx`).
    pub fn new() -> (EventRecorder, mpsc::Receiver<Record>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (EventRecorder { tx }, rx)
    }

    /// Records an event about `obj`.
    pub fn record<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        kind: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.record_ref(object_reference(obj), kind, reason, message);
    }

    /// Records an event about the object `regarding` points to.
    pub fn record_ref(
        &self,
        regarding: ObjectReference,
        kind: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let record = Record {
            regarding,
            kind,
            reason: reason.to_string(),
            message: message.into(),
        };
        if let Err(e) = self.tx.try_send(record) {
            tracing::debug!(error = %e, "event dropped: the event writer is behind");
        }
    }
}

/// A reference to `obj` for `involvedObject`.
pub fn object_reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).to_string()),
        kind: Some(K::kind(&()).to_string()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct Identity {
    uid: String,
    name: String,
    kind: EventType,
    reason: String,
    message: String,
}

/// Writes recorded events as `component` until the recorder is dropped.
pub async fn run_writer(
    api: Api,
    component: &'static str,
    instance: String,
    mut rx: mpsc::Receiver<Record>,
) {
    // Identity → (namespace, event name, count); `order` evicts the oldest beyond REMEMBERED.
    let mut seen: HashMap<Identity, (String, String, i32)> = HashMap::new();
    let mut order: VecDeque<Identity> = VecDeque::new();
    while let Some(record) = rx.recv().await {
        let now = k8s_openapi::jiff::Timestamp::now();
        let identity = Identity {
            uid: record.regarding.uid.clone().unwrap_or_default(),
            name: record.regarding.name.clone().unwrap_or_default(),
            kind: record.kind,
            reason: record.reason.clone(),
            message: record.message.clone(),
        };
        if let Some((namespace, name, count)) = seen.get_mut(&identity) {
            *count += 1;
            let patch = json!({"count": *count, "lastTimestamp": Time(now)});
            let result = api
                .patch::<Event>(
                    Some(namespace.as_str()),
                    name,
                    super::client::PatchType::Merge,
                    &patch,
                )
                .await;
            match result {
                Ok(_) => continue,
                Err(e) if e.is_not_found() => {} // expired or deleted: write a new one
                Err(e) => {
                    tracing::debug!(error = %e, "event count update failed");
                    continue;
                }
            }
        }
        // Cluster-scoped objects' events live in `default`, as upstream.
        let namespace = record
            .regarding
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".into());
        let name = format!(
            "{}.{:x}",
            record.regarding.name.as_deref().unwrap_or("unknown"),
            now.as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: record.regarding.clone(),
            reason: Some(record.reason.clone()),
            message: Some(record.message.clone()),
            type_: Some(record.kind.as_str().into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            source: Some(EventSource {
                component: Some(component.into()),
                host: None,
            }),
            reporting_component: Some(component.into()),
            reporting_instance: Some(instance.clone()),
            action: Some(record.reason.clone()),
            ..Default::default()
        };
        match api.create(&event).await {
            Ok(_) => {
                if seen.len() >= REMEMBERED {
                    if let Some(oldest) = order.pop_front() {
                        seen.remove(&oldest);
                    }
                }
                order.push_back(identity.clone());
                seen.insert(identity, (namespace, name, 1));
            }
            Err(e) => tracing::debug!(error = %e, reason = record.reason, "event not written"),
        }
    }
}

/// Events a test collected from a recorder's receiver.
pub fn drain(rx: &mut mpsc::Receiver<Record>) -> Vec<Record> {
    let mut out = Vec::new();
    while let Ok(record) = rx.try_recv() {
        out.push(record);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use k8s_openapi::api::core::v1::Pod;
    use std::sync::Arc;

    #[tokio::test]
    async fn repeats_count_instead_of_duplicating() {
        let fake = RecordingClient::new();
        let api = Api::new(Arc::new(fake.clone()));
        let (recorder, rx) = EventRecorder::new();
        let pod = Pod {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("web".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        for _ in 0..3 {
            recorder.record(
                &pod,
                EventType::Warning,
                "FailedScheduling",
                "0/3 nodes are available",
            );
        }
        recorder.record(
            &pod,
            EventType::Normal,
            "Scheduled",
            "assigned ns/web to n1",
        );
        drop(recorder);
        run_writer(api, "test", "i".into(), rx).await;
        let calls = fake.short_calls();
        assert_eq!(calls.len(), 4, "{calls:?}");
        assert!(calls[0].starts_with("create /api/v1/namespaces/ns/events"));
        assert!(calls[1].starts_with("patch /api/v1/namespaces/ns/events/web."));
        assert_eq!(fake.calls()[2].body["count"], 3);
        assert!(calls[3].starts_with("create "));
        assert_eq!(fake.calls()[0].body["involvedObject"]["uid"], "u1");
        assert_eq!(fake.calls()[0].body["type"], "Warning");
    }
}
