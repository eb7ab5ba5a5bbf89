//! Watch: `?watch=1` on a collection streams `{"type", "object"}` lines.
//!
//! Every watcher of a resource is fed from one store watch through the
//! [`WatchHub`](super::watchcache::WatchHub). A watch starts with the current objects as `ADDED`
//! when it gives no `resourceVersion` (or with `sendInitialEvents=true`, ended by a bookmark
//! annotated `k8s.io/initial-events-end`), else it resumes after the version it gives; a
//! compacted version ends in an `ERROR` event carrying a 410 `Expired` Status. Bookmarks
//! (`allowWatchBookmarks=true`) carry the newest revision the watcher has passed, so a resumed
//! watch skips what it has seen even when nothing it selects changed. The server closes every
//! watch after `timeoutSeconds`, or a random 30–60 minutes, as kube-apiserver does.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::{json, Value};

use super::handlers::{with_version, Filter, Query, Target};
use super::resources::Resource;
use super::status::ApiError;
use super::tables::{self, IncludeObject};
use super::validation::FieldError;
use super::AppState;
use crate::store::{self, RangeRequest, Revision};

/// kube-apiserver's `--min-request-timeout`: watches last between one and two of these.
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often a watcher that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(15);

/// How events are rendered: as objects, or as Table rows for `kubectl get -w`.
#[derive(Clone, Copy)]
enum Format {
    Objects,
    Table(IncludeObject),
}

struct Encoder {
    resource: &'static Resource,
    format: Format,
    /// Tables carry their column definitions in the first event only.
    first: bool,
}

impl Encoder {
    fn line(&mut self, kind: &str, object: &Value) -> Bytes {
        let object = match self.format {
            Format::Objects => object.clone(),
            Format::Table(include) => {
                let objects = std::slice::from_ref(object);
                let now = SystemTime::now();
                if std::mem::take(&mut self.first) {
                    let meta =
                        json!({"resourceVersion": object.pointer("/metadata/resourceVersion")});
                    tables::table(self.resource.kind, objects, include, meta, now)
                } else {
                    tables::rows_table(self.resource.kind, objects, include, now)
                }
            }
        };
        line(kind, &object)
    }

    fn bookmark(&self, revision: Revision, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "kind": self.resource.kind,
            "apiVersion": self.resource.api_version(),
            "metadata": meta,
        });
        line("BOOKMARK", &object)
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    line.into()
}

fn flag(query: &Query, name: &str) -> bool {
    query.get(name).is_some_and(|v| v == "true" || v == "1")
}

fn watch_timeout(query: &Query) -> Result<Duration, ApiError> {
    match query.get("timeoutSeconds") {
        Some(t) => t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| ApiError::bad_request(format!("timeoutSeconds {t:?} is not a number"))),
        None => {
            let mut byte = [0u8; 1];
            getrandom::fill(&mut byte).unwrap_or_default();
            Ok(MIN_REQUEST_TIMEOUT + MIN_REQUEST_TIMEOUT.mul_f64(f64::from(byte[0]) / 256.0))
        }
    }
}

/// What a watcher is told: nothing, or events and bookmarks, in order.
enum Item {
    Event(Result<store::Event, store::Error>),
    Tick,
}

pub(super) async fn watch(
    state: Arc<AppState>,
    target: Target,
    query: Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let r = target.resource;
    let filter = Filter::from_query(r, &query)?;
    let timeout = watch_timeout(&query)?;
    let bookmarks = flag(&query, "allowWatchBookmarks");
    let send_initial = flag(&query, "sendInitialEvents");
    if send_initial
        && (query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")
            || !bookmarks)
    {
        return Err(ApiError::invalid(
            r.kind,
            r.group,
            "",
            &[FieldError {
                field: "sendInitialEvents".into(),
                reason: "FieldValueForbidden",
                message: "Forbidden: sendInitialEvents requires setting resourceVersionMatch to \
                          NotOlderThan and allowWatchBookmarks to true"
                    .into(),
            }],
        ));
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = if tables::wants_table(accept) {
        let include = IncludeObject::parse(query.get("includeObject").map(String::as_str))
            .map_err(ApiError::bad_request)?;
        Format::Table(include)
    } else {
        Format::Objects
    };
    let mut encoder = Encoder {
        resource: r,
        format,
        first: true,
    };
    let prefix = target.prefix();
    let version = query.get("resourceVersion").map(String::as_str);
    let mut initial = Vec::new();
    let after = match version {
        None | Some("") | Some("0") => {
            let all = state
                .store
                .range(RangeRequest {
                    prefix: prefix.clone(),
                    ..Default::default()
                })
                .await?;
            for kv in &all.kvs {
                let object = with_version(&kv.value, kv.mod_revision)?;
                if filter.matches(&object) {
                    initial.push(encoder.line("ADDED", &object));
                }
            }
            if send_initial {
                initial.push(encoder.bookmark(all.revision, true));
            }
            all.revision
        }
        Some(rv) => rv
            .parse::<Revision>()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
    };
    let events = match state.watches.watch(&prefix, after).await {
        Ok(stream) => stream,
        Err(store::Error::Expired { .. }) => {
            // As kube-apiserver does: a 200 stream with one ERROR event carrying 410.
            let gone = ApiError::new(
                StatusCode::GONE,
                "Expired",
                format!("too old resource version: {after}"),
            );
            let body =
                futures::stream::iter([Ok::<_, std::io::Error>(line("ERROR", &gone.body()))]);
            return Ok(stream_response(body));
        }
        Err(e) => return Err(e.into()),
    };
    let ticks: futures::stream::BoxStream<'static, Item> = if bookmarks {
        let interval = tokio::time::interval_at(
            tokio::time::Instant::now() + BOOKMARK_INTERVAL,
            BOOKMARK_INTERVAL,
        );
        tokio_stream::wrappers::IntervalStream::new(interval)
            .map(|_| Item::Tick)
            .boxed()
    } else {
        futures::stream::pending().boxed()
    };
    let merged = futures::stream::select(events.map(Item::Event), ticks)
        .take_until(tokio::time::sleep(timeout));
    // The newest revision this watcher has passed, and the newest it was told of.
    let mut passed = after;
    let mut told = after;
    let lines = merged
        .filter_map(move |item| {
            // (line, whether it ends the watch)
            let out = match item {
                Item::Event(Ok(event)) => {
                    passed = passed.max(event.revision());
                    event_line(&event, &filter, &mut encoder).map(|l| (l, false))
                }
                // A watcher that fell behind the shared feed: close quietly, so the client
                // resumes from the last version it saw (and is told 410 only if that is gone).
                Item::Event(Err(store::Error::Expired { .. })) => Some((Bytes::new(), true)),
                Item::Event(Err(e)) => {
                    let error: ApiError = e.into();
                    Some((line("ERROR", &error.body()), true))
                }
                Item::Tick if passed > told => {
                    told = passed;
                    Some((encoder.bookmark(passed, false), false))
                }
                Item::Tick => None,
            };
            futures::future::ready(out)
        })
        // An ERROR ends the watch: the client resumes or re-lists.
        .scan(false, |ended, (line, last)| {
            let out = (!*ended).then_some(Ok::<_, std::io::Error>(line));
            // (An empty line ends the watch without writing anything.)
            *ended |= last;
            futures::future::ready(out)
        });
    let body = futures::stream::iter(initial.into_iter().map(Ok)).chain(lines);
    Ok(stream_response(body))
}

/// A store event as a watch line, or nothing if the object (before and after) is filtered out.
fn event_line(event: &store::Event, filter: &Filter, encoder: &mut Encoder) -> Option<Bytes> {
    let now = (event.kind == store::EventKind::Put)
        .then(|| with_version(&event.kv.value, event.kv.mod_revision).ok())
        .flatten();
    let before = event
        .prev
        .as_ref()
        .and_then(|p| with_version(&p.value, p.mod_revision).ok());
    let now_matches = now.as_ref().is_some_and(|o| filter.matches(o));
    let before_matches = before.as_ref().is_some_and(|o| filter.matches(o));
    match (now, now_matches, before_matches) {
        (Some(object), true, true) => Some(encoder.line("MODIFIED", &object)),
        (Some(object), true, false) => Some(encoder.line("ADDED", &object)),
        // It left the filter (or was deleted): DELETED with its last state, at this revision.
        (_, false, true) => {
            let mut last = before?;
            if let Some(meta) = last.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert(
                    "resourceVersion".into(),
                    Value::String(event.revision().to_string()),
                );
            }
            Some(encoder.line("DELETED", &last))
        }
        _ => None,
    }
}

fn stream_response<S>(body: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
