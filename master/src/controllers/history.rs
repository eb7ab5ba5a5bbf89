//! ControllerRevisions as the DaemonSet and StatefulSet controllers keep them (upstream
//! `pkg/controller/history`): each revision's `data` is the patch that sets the owner's pod
//! template (`{"spec":{"template":{…,"$patch":"replace"}}}`), its name is `<owner>-<hash>`, its
//! `controller-revision-hash` label holds the hash, and `revision` numbers increase.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::{json, Value};

use super::client::{delete_uid, Api, ClientError};
use super::workloads::is_controlled_by;
use super::Informer;

/// The label naming a pod's (and a revision's) revision.
pub const REVISION_HASH: &str = "controller-revision-hash";
/// `revisionHistoryLimit` when unset.
pub const DEFAULT_HISTORY_LIMIT: i32 = 10;
/// How many hash collisions a create resolves before giving up.
const MAX_COLLISIONS: usize = 100;

/// The revision data for `template`: a patch replacing the owner's `spec.template`.
pub fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(map) = template.as_object_mut() {
        map.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The pod template a revision records, if its data holds one.
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision
        .data
        .as_ref()?
        .0
        .get("spec")?
        .get("template")?
        .clone();
    template.as_object_mut()?.remove("$patch");
    serde_json::from_value(template).ok()
}

/// Whether the revision records exactly `data`.
pub fn has_data(revision: &ControllerRevision, data: &Value) -> bool {
    revision.data.as_ref().is_some_and(|d| d.0 == *data)
}

/// The revision's hash label, or `None`.
pub fn hash_label(revision: &ControllerRevision) -> Option<&str> {
    revision
        .metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

/// 32-bit FNV-1 (Go's `fnv.New32`).
pub fn fnv32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h: u32, b| {
        h.wrapping_mul(0x0100_0193) ^ u32::from(*b)
    })
}

/// 32-bit FNV-1a (Go's `fnv.New32a`).
pub fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h: u32, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// `rand.SafeEncodeString`: each byte mapped to a character that cannot spell a word.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// `history.ControllerRevisionName`: `<prefix>-<hash>`, the prefix cut to 223 bytes.
pub fn revision_name(prefix: &str, hash: &str) -> String {
    let mut end = prefix.len().min(223);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{hash}", &prefix[..end])
}

/// `history.HashControllerRevision`: FNV-1 of the data's JSON, then of the collision count.
pub fn hash_revision(data: &Value, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(data).unwrap_or_default();
    if let Some(n) = collision_count {
        bytes.extend_from_slice(n.to_string().as_bytes());
    }
    safe_encode(&fnv32(&bytes).to_string())
}

/// The revisions controlled by the owner with this UID, oldest first
/// (`history.SortControllerRevisions`: by revision, then creation time, then name).
pub fn owned(
    informer: &Informer<ControllerRevision>,
    owner_uid: &str,
) -> Vec<Arc<ControllerRevision>> {
    let mut revisions: Vec<_> = informer
        .owned_by(owner_uid)
        .into_iter()
        .filter(|r| is_controlled_by(&r.metadata, owner_uid))
        .collect();
    revisions.sort_by(|a, b| {
        let created = |r: &ControllerRevision| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (a.revision, created(a), &a.metadata.name).cmp(&(b.revision, created(b), &b.metadata.name))
    });
    revisions
}

/// The revision number after the newest of `revisions` (sorted oldest first).
pub fn next_revision(revisions: &[Arc<ControllerRevision>]) -> i64 {
    revisions.last().map_or(1, |r| r.revision.saturating_add(1))
}

/// Creates `revision` named `<owner>-<hash of its data and the collision count>`. A name taken
/// by a revision with the same data is that revision; taken by other data, the collision count
/// goes up and the next name is tried (`realHistory.CreateControllerRevision`).
pub async fn create(
    api: &Api,
    owner_name: &str,
    mut revision: ControllerRevision,
    collision_count: &mut i32,
) -> Result<ControllerRevision, ClientError> {
    let data = revision.data.clone().unwrap_or(RawExtension(Value::Null)).0;
    let namespace = revision.metadata.namespace.clone();
    let mut last = None;
    for _ in 0..MAX_COLLISIONS {
        let hash = hash_revision(&data, Some(*collision_count));
        let name = revision_name(owner_name, &hash);
        revision.metadata.name = Some(name.clone());
        revision
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(REVISION_HASH.into(), hash);
        match api.create(&revision).await {
            Err(e) if e.is_already_exists() => {
                let existing: ControllerRevision = api.get(namespace.as_deref(), &name).await?;
                if has_data(&existing, &data) {
                    return Ok(existing);
                }
                *collision_count = collision_count.saturating_add(1);
                last = Some(e);
            }
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Status {
        verb: "create",
        path: owner_name.into(),
        code: 409,
        reason: "AlreadyExists".into(),
        message: "too many controller revision hash collisions".into(),
    }))
}

/// Sets a revision's number (`UpdateControllerRevision`).
pub async fn renumber(
    api: &Api,
    revision: &ControllerRevision,
    number: i64,
) -> Result<ControllerRevision, ClientError> {
    let mut updated = revision.clone();
    updated.revision = number;
    api.replace(&updated).await
}

/// Deletes one revision (only the one with its UID).
pub async fn delete(api: &Api, revision: &ControllerRevision) -> Result<(), ClientError> {
    let uid = revision.metadata.uid.as_deref().unwrap_or_default();
    api.delete::<ControllerRevision>(
        revision.metadata.namespace.as_deref(),
        revision.metadata.name.as_deref().unwrap_or_default(),
        &delete_uid(uid, None),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::RecordingClient;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn hashes_match_go() {
        // Go: fnv.New32 / fnv.New32a over "hello".
        assert_eq!(fnv32(b"hello"), 0xb6fa_7167);
        assert_eq!(fnv32a(b"hello"), 0x4f9f_2cab);
        // rand.SafeEncodeString: byte % 27 into "bcdfghjklmnpqrstvwxz2456789".
        assert_eq!(safe_encode("01"), "45");
        assert_eq!(revision_name(&"a".repeat(300), "h").len(), 225);
    }

    #[test]
    fn template_round_trips_through_the_patch() {
        let template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}
        }))
        .unwrap();
        let data = template_patch(&template);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let revision = ControllerRevision {
            data: Some(RawExtension(data.clone())),
            ..Default::default()
        };
        assert_eq!(template_of(&revision), Some(template));
        assert!(has_data(&revision, &data));
        assert_ne!(hash_revision(&data, Some(0)), hash_revision(&data, Some(1)));
    }

    #[tokio::test]
    async fn create_steps_past_hash_collisions() {
        let fake = RecordingClient::new();
        let api = Api::new(Arc::new(fake.clone()));
        let data = json!({"spec": {"template": {"$patch": "replace"}}});
        let first = revision_name("web", &hash_revision(&data, Some(0)));
        let path = format!("/apis/apps/v1/namespaces/ns/controllerrevisions/{first}");
        // The name is taken by another template.
        fake.fail_next(
            "/apis/apps/v1/namespaces/ns/controllerrevisions",
            409,
            "AlreadyExists",
        );
        fake.set_object(
            &path,
            json!({"metadata": {"name": first}, "revision": 1, "data": {"other": 1}}),
        );
        let revision = ControllerRevision {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                ..Default::default()
            },
            data: Some(RawExtension(data.clone())),
            revision: 2,
        };
        let mut collisions = 0;
        let created = create(&api, "web", revision, &mut collisions)
            .await
            .unwrap();
        assert_eq!(collisions, 1);
        let second = revision_name("web", &hash_revision(&data, Some(1)));
        assert_eq!(created.metadata.name.as_deref(), Some(second.as_str()));
        assert_eq!(
            fake.short_calls(),
            vec![
                "create /apis/apps/v1/namespaces/ns/controllerrevisions".to_string(),
                format!("get {path}"),
                "create /apis/apps/v1/namespaces/ns/controllerrevisions".to_string(),
            ]
        );
    }
}
