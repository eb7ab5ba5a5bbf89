//! Strategic merge patch (`application/strategic-merge-patch+json`) over JSON, as kube-apiserver
//! applies it to built-in types (apimachinery `pkg/util/strategicpatch`).
//!
//! The schema says what each field is (a struct, a map, a list of what); [`patch_meta`] says how
//! a field merges (list strategies and merge keys, from the Go struct tags). Rules:
//!
//! - Objects merge key by key; `null` deletes a key. `{"$patch": "replace"}` in an object
//!   replaces the object with the rest of the patch object, `{"$patch": "delete"}` removes it.
//! - Lists whose field has strategy `merge` and a merge key merge item by item: a patch item
//!   updates the item with the same key or is added; `{"<key>": …, "$patch": "delete"}` removes
//!   the items with that key; an item `{"$patch": "replace"}` makes the list exactly the patch's
//!   other items. Lists of primitives with strategy `merge` take the union;
//!   `$deleteFromPrimitiveList/<field>` removes values. Every other list is replaced.
//! - Order, as kube orders: patch items keep the patch's relative order, the original's other
//!   items keep theirs, and the two are interleaved by the original's order (a new item goes
//!   right after the patch item before it). `$setElementOrder/<field>` (kubectl apply sends one
//!   per merged list) sets the order of the listed items instead; it must agree with the
//!   patch's own order.
//! - `$retainKeys: [..]` clears the fields of the original object that it does not list; every
//!   field the patch sets must be listed.
//!
//! The result never holds a `$` directive: values the original lacks are built by applying
//! their patch to nothing, so nested directives are honoured there too. Where kube keeps a
//! directive or a `null` in such new values (Go's decoding then drops them), Skiff drops them.
//! Other deliberate differences: `$patch: delete` on a nested object removes the field (kube
//! leaves `{}`), `$patch: delete` on the whole object is refused, `$setElementOrder` on a list
//! that is not merged is accepted and ignored, and original list items that lack their merge key
//! are kept in place instead of failing the patch. Unknown `$` keys are errors.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::patch_meta;

/// Where the schema of each definition lives: OpenAPI v2 style definitions by name
/// (`io.k8s.api.core.v1.Pod`), each `{"properties": {field: {"$ref": "#/definitions/<name>"} |
/// {"type": "array", "items": …} | {"type": "object", "additionalProperties": …}}}`.
pub type Definitions = BTreeMap<String, Value>;

/// A patch that cannot be applied; the message says why and where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PatchError(pub String);

/// How deeply a patch may nest objects and lists.
pub const MAX_DEPTH: usize = 100;

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Applies `patch` to `original` as kube does for the definition `root`
/// (`io.k8s.api.core.v1.Pod`). A root missing from `defs` gets plain JSON merge semantics for
/// objects and replacement for lists, as does every field without a schema.
pub fn apply(
    original: &Value,
    patch: &Value,
    root: &str,
    defs: &Definitions,
) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    if patch.get(PATCH).and_then(Value::as_str) == Some("delete") {
        return Err(PatchError(
            "$patch: delete cannot delete the whole object; use DELETE".into(),
        ));
    }
    let base = match original {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    let merger = Merger {
        schemas: Schemas { defs },
    };
    let node = merger.schemas.definition(root);
    match merger.object(base, patch, node, 0) {
        Ok(merged) => Ok(Value::Object(merged.unwrap_or_default())),
        Err(fail) => Err(fail.into_error()),
    }
}

/// An error on its way up, collecting the path to where it happened (innermost first).
struct Fail {
    message: String,
    path: Vec<String>,
}

type Res<T> = Result<T, Fail>;

fn fail<T>(message: impl Into<String>) -> Res<T> {
    Err(Fail {
        message: message.into(),
        path: Vec::new(),
    })
}

trait At {
    /// Records that the error happened inside `segment` (a field, or `[i]` / `[key=value]`).
    fn at(self, segment: impl FnOnce() -> String) -> Self;
}

impl<T> At for Res<T> {
    fn at(self, segment: impl FnOnce() -> String) -> Self {
        self.map_err(|mut fail| {
            fail.path.push(segment());
            fail
        })
    }
}

impl Fail {
    fn into_error(self) -> PatchError {
        if self.path.is_empty() {
            return PatchError(self.message);
        }
        let segments: Vec<&String> = self.path.iter().rev().collect();
        let render = |segments: &[&String]| {
            let mut out = String::new();
            for s in segments {
                if !out.is_empty() && !s.starts_with('[') {
                    out.push('.');
                }
                out.push_str(s);
            }
            out
        };
        let path = if segments.len() > 12 {
            let head = render(&segments[..6]);
            let tail = render(&segments[segments.len() - 4..]);
            format!("{head}…{tail}")
        } else {
            render(&segments)
        };
        PatchError(format!("{} (at {path})", self.message))
    }
}

/// A position in the schema: the definition it is (when it is a named one) and its schema.
#[derive(Clone, Copy, Default)]
struct Node<'a> {
    name: Option<&'a str>,
    schema: Option<&'a Value>,
}

/// How a field merges.
#[derive(Clone, Copy, Default)]
struct Strategy<'a> {
    merge: bool,
    replace: bool,
    key: Option<&'a str>,
}

/// A field: its type and its strategy.
#[derive(Clone, Copy, Default)]
struct Field<'a> {
    node: Node<'a>,
    strategy: Strategy<'a>,
}

impl<'a> Field<'a> {
    fn plain(node: Node<'a>) -> Self {
        Field {
            node,
            strategy: Strategy::default(),
        }
    }
}

struct Schemas<'a> {
    defs: &'a Definitions,
}

/// The definition name a `$ref` points at.
fn ref_target(reference: &str) -> Option<&str> {
    ["#/definitions/", "#/components/schemas/", "#/$defs/"]
        .iter()
        .find_map(|prefix| reference.strip_prefix(prefix))
}

fn strategy_of(strategy: &str) -> (bool, bool) {
    let has = |name: &str| strategy.split(',').any(|s| s.trim() == name);
    (has("merge"), has("replace"))
}

impl<'a> Schemas<'a> {
    fn definition(&self, name: &str) -> Node<'a> {
        match self.defs.get_key_value(name) {
            Some((name, schema)) => Node {
                name: Some(name.as_str()),
                schema: Some(schema),
            },
            None => Node::default(),
        }
    }

    /// Follows `$ref`s (also one wrapped in a single-schema `allOf`/`anyOf`/`oneOf`).
    fn resolve(&self, schema: Option<&'a Value>) -> Node<'a> {
        let mut node = Node { name: None, schema };
        for _ in 0..16 {
            let Some(current) = node.schema else { break };
            if let Some(reference) = current.get("$ref").and_then(Value::as_str) {
                node = ref_target(reference)
                    .map(|name| self.definition(name))
                    .unwrap_or_default();
                continue;
            }
            let structural = ["properties", "items", "additionalProperties"]
                .iter()
                .any(|k| current.get(k).is_some());
            let wrapped = ["allOf", "anyOf", "oneOf"].iter().find_map(|k| {
                current
                    .get(k)?
                    .as_array()?
                    .iter()
                    .find(|s| s.get("$ref").is_some())
            });
            match wrapped {
                Some(inner) if !structural => node.schema = Some(inner),
                _ => break,
            }
        }
        node
    }

    fn property(&self, parent: Node<'a>, field: &str) -> Option<&'a Value> {
        parent.schema?.get("properties")?.get(field)
    }

    /// The type and strategy of `parent.field` (or of a map's values).
    fn field(&self, parent: Node<'a>, field: &str) -> Field<'a> {
        if let Some(property) = self.property(parent, field) {
            let strategy = parent
                .name
                .and_then(|name| patch_meta::lookup(name, field))
                .map(|meta| {
                    let (merge, replace) = strategy_of(meta.strategy);
                    Strategy {
                        merge,
                        replace,
                        key: meta.merge_key,
                    }
                })
                .or_else(|| {
                    let strategy = property.get("x-kubernetes-patch-strategy")?.as_str()?;
                    let (merge, replace) = strategy_of(strategy);
                    let key = property
                        .get("x-kubernetes-patch-merge-key")
                        .and_then(Value::as_str);
                    Some(Strategy {
                        merge,
                        replace,
                        key,
                    })
                })
                .unwrap_or_default();
            return Field {
                node: self.resolve(Some(property)),
                strategy,
            };
        }
        let values = parent
            .schema
            .and_then(|s| s.get("additionalProperties"))
            .filter(|v| v.is_object());
        Field::plain(self.resolve(values))
    }

    /// The type of a list's items.
    fn items(&self, list: Node<'a>) -> Node<'a> {
        self.resolve(list.schema.and_then(|s| s.get("items")))
    }
}

/// Compares merge keys and primitives as Go compares decoded JSON: numbers by value.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn position(list: &[Option<&Value>], value: Option<&Value>) -> Option<usize> {
    let value = value?;
    list.iter().position(|v| v.is_some_and(|v| same(v, value)))
}

/// The value that identifies a list item: its merge key, or the item itself for primitives.
fn identity<'v>(item: &'v Value, key: Option<&str>) -> Option<&'v Value> {
    match key {
        Some(key) => item.as_object()?.get(key),
        None => Some(item),
    }
}

/// Names a list item in error paths: `[name=web]`, or `[3]` when it has no key.
fn describe(key: &str, item: &Value, index: usize) -> String {
    match item.get(key) {
        Some(Value::String(s)) => format!("[{key}={s}]"),
        Some(v) => format!("[{key}={v}]"),
        None => format!("[{index}]"),
    }
}

/// Orders a merged list as kube does: the items named in `patch_order` in that order, the
/// others in `server_order`, interleaved by `server_order` (an item the original lacks goes
/// before the next original item).
fn order_list(
    merged: Vec<Value>,
    key: Option<&str>,
    patch_order: &[Option<&Value>],
    server_order: &[Option<&Value>],
) -> Vec<Value> {
    let (mut ours, mut theirs): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|item| position(patch_order, identity(item, key)).is_some());
    ours.sort_by_key(|item| position(patch_order, identity(item, key)).unwrap_or(usize::MAX));
    theirs.sort_by_key(|item| position(server_order, identity(item, key)).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(ours.len() + theirs.len());
    let mut ours = ours.into_iter().peekable();
    let mut theirs = theirs.into_iter().peekable();
    loop {
        let take_theirs = match (theirs.peek(), ours.peek()) {
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
            (Some(t), Some(o)) => {
                let t = position(server_order, identity(t, key));
                let o = position(server_order, identity(o, key));
                matches!((t, o), (Some(t), Some(o)) if t < o)
            }
        };
        let next = if take_theirs {
            theirs.next()
        } else {
            ours.next()
        };
        out.extend(next);
    }
    out
}

fn is_directive_key(key: &str) -> bool {
    key == PATCH
        || key == RETAIN_KEYS
        || key.starts_with(SET_ELEMENT_ORDER)
        || key.starts_with(DELETE_FROM_PRIMITIVE_LIST)
}

/// The field a prefixed directive (`$setElementOrder/containers`) names.
fn directive_field<'k>(key: &'k str, prefix: &str) -> Res<Option<&'k str>> {
    match key.strip_prefix(prefix) {
        Some("") => fail(format!("{key} does not name a field")),
        other => Ok(other),
    }
}

struct Merger<'a> {
    schemas: Schemas<'a>,
}

impl<'a> Merger<'a> {
    fn check_depth(depth: usize) -> Res<()> {
        if depth > MAX_DEPTH {
            return fail(format!(
                "the patch nests objects and lists more than {MAX_DEPTH} levels deep"
            ));
        }
        Ok(())
    }

    /// Applies a patch value to a field's original value (`None` when absent); `None` back
    /// means the field goes away.
    fn value(
        &self,
        original: Option<Value>,
        patch: &Value,
        field: Field<'a>,
        depth: usize,
    ) -> Res<Option<Value>> {
        Self::check_depth(depth)?;
        match patch {
            Value::Null => Ok(None),
            Value::Object(patch) => {
                let base = match original {
                    Some(Value::Object(map)) if !field.strategy.replace => map,
                    _ => Map::new(),
                };
                Ok(self
                    .object(base, patch, field.node, depth)?
                    .map(Value::Object))
            }
            Value::Array(patch) => {
                let list = if field.strategy.merge {
                    let base = match original {
                        Some(Value::Array(list)) => list,
                        _ => Vec::new(),
                    };
                    self.merge_list(base, patch, field, depth)?
                } else {
                    self.replace_list(patch, field.node, depth)?
                };
                Ok(Some(Value::Array(list)))
            }
            scalar => Ok(Some(scalar.clone())),
        }
    }

    /// Applies a patch object, honouring its `$patch` directive.
    fn object(
        &self,
        original: Map<String, Value>,
        patch: &Map<String, Value>,
        node: Node<'a>,
        depth: usize,
    ) -> Res<Option<Map<String, Value>>> {
        let Some(directive) = patch.get(PATCH) else {
            return self.object_body(original, patch, node, depth).map(Some);
        };
        match directive.as_str() {
            Some("replace") => self.object_body(Map::new(), patch, node, depth).map(Some),
            Some("delete") => Ok(None),
            _ => fail(format!(
                "invalid $patch directive {directive} in an object: expected \"replace\" or \
                 \"delete\""
            )),
        }
    }

    /// Applies a patch object's fields and directives other than `$patch`.
    fn object_body(
        &self,
        mut original: Map<String, Value>,
        patch: &Map<String, Value>,
        node: Node<'a>,
        depth: usize,
    ) -> Res<Map<String, Value>> {
        Self::check_depth(depth)?;
        if let Some(retain) = patch.get(RETAIN_KEYS) {
            Self::retain_keys(&mut original, retain, patch)?;
        }

        let mut ordered: Vec<&str> = Vec::new();
        for (key, order) in patch {
            let Some(name) = directive_field(key, SET_ELEMENT_ORDER)? else {
                continue;
            };
            let Value::Array(order) = order else {
                return fail(format!("{key} must be a list"));
            };
            let field = self.schemas.field(node, name);
            if self
                .set_element_order(&mut original, name, order, patch.get(name), field, depth)
                .at(|| name.to_string())?
            {
                ordered.push(name);
            }
        }

        for (key, value) in patch {
            if is_directive_key(key) || ordered.contains(&key.as_str()) {
                continue;
            }
            if key.starts_with('$') && self.schemas.property(node, key).is_none() {
                return fail(format!("unknown patch directive {key}"));
            }
            let field = self.schemas.field(node, key);
            let current = original.get_mut(key).map(Value::take);
            let merged = self
                .value(current, value, field, depth + 1)
                .at(|| key.clone())?;
            match (merged, original.get_mut(key)) {
                (Some(merged), Some(slot)) => *slot = merged,
                (Some(merged), None) => {
                    original.insert(key.clone(), merged);
                }
                (None, _) => {
                    original.remove(key);
                }
            }
        }

        for (key, values) in patch {
            let Some(name) = directive_field(key, DELETE_FROM_PRIMITIVE_LIST)? else {
                continue;
            };
            let values = match values {
                Value::Array(values) if values.iter().all(|v| !v.is_object() && !v.is_array()) => {
                    values
                }
                _ => return fail(format!("{key} must be a list of primitive values")),
            };
            if let Some(Value::Array(list)) = original.get_mut(name) {
                list.retain(|item| !values.iter().any(|v| same(v, item)));
            }
        }
        Ok(original)
    }

    /// `$retainKeys`: clears the original's fields the list does not name.
    fn retain_keys(
        original: &mut Map<String, Value>,
        retain: &Value,
        patch: &Map<String, Value>,
    ) -> Res<()> {
        let keys: Option<Vec<&str>> = match retain {
            Value::Array(keys) => keys.iter().map(Value::as_str).collect(),
            _ => None,
        };
        let Some(keys) = keys else {
            return fail("$retainKeys must be a list of field names");
        };
        for (key, value) in patch {
            if value.is_null() || is_directive_key(key) || keys.contains(&key.as_str()) {
                continue;
            }
            return fail(format!(
                "the patch sets {key}, which $retainKeys {retain} does not list"
            ));
        }
        original.retain(|key, _| keys.contains(&key.as_str()));
        Ok(())
    }

    /// `$setElementOrder/<name>`: merges the patch's list (if any) and orders the result.
    /// Returns whether it handled the field (only merged lists are ordered).
    fn set_element_order(
        &self,
        original: &mut Map<String, Value>,
        name: &str,
        order: &[Value],
        patch_list: Option<&Value>,
        field: Field<'a>,
        depth: usize,
    ) -> Res<bool> {
        if !field.strategy.merge {
            return Ok(false);
        }
        let key = field.strategy.key;
        for (i, item) in order.iter().enumerate() {
            let ok = match key {
                Some(key) => item.as_object().is_some_and(|m| m.contains_key(key)),
                None => !item.is_object() && !item.is_array(),
            };
            if !ok {
                let what = match key {
                    Some(key) => format!("an object with the merge key {key}"),
                    None => "a primitive value".to_string(),
                };
                return fail(format!(
                    "item {i} of {SET_ELEMENT_ORDER}{name} must be {what}, not {item}"
                ));
            }
        }
        let patch_list = match patch_list {
            None => None,
            Some(Value::Null) => return Ok(false),
            Some(Value::Array(list)) => Some(list),
            Some(other) => {
                return fail(format!(
                    "{name} must be a list to go with {SET_ELEMENT_ORDER}{name}, not {other}"
                ))
            }
        };
        if let Some(list) = patch_list {
            Self::check_order(name, list, order, key)?;
        }
        let current = match original.get_mut(name) {
            Some(Value::Array(list)) => Some(std::mem::take(list)),
            _ => None,
        };
        let server_keys: Vec<Option<Value>> = current
            .iter()
            .flatten()
            .map(|item| identity(item, key).cloned())
            .collect();
        let merged = match (current, patch_list) {
            (Some(current), None) => current,
            (current, Some(list)) => {
                self.merge_list(current.unwrap_or_default(), list, field, depth + 1)?
            }
            (None, None) => return Ok(true),
        };
        let patch_order: Vec<Option<&Value>> =
            order.iter().map(|item| identity(item, key)).collect();
        let server_order: Vec<Option<&Value>> = server_keys.iter().map(Option::as_ref).collect();
        let merged = order_list(merged, key, &patch_order, &server_order);
        original.insert(name.to_string(), Value::Array(merged));
        Ok(true)
    }

    /// The patch's items (other than deletions and directives) must appear in `$setElementOrder`
    /// and in the same relative order.
    fn check_order(name: &str, list: &[Value], order: &[Value], key: Option<&str>) -> Res<()> {
        if list.is_empty() || order.is_empty() {
            return Ok(());
        }
        let items: Vec<&Value> = list
            .iter()
            .filter(|item| item.get(PATCH).is_none())
            .collect();
        let (mut i, mut j) = (0, 0);
        while i < items.len() && j < order.len() {
            let Some(id) = identity(items[i], key) else {
                return fail(format!(
                    "item {} of {name} lacks its merge key {}",
                    items[i],
                    key.unwrap_or_default()
                ));
            };
            if identity(&order[j], key).is_some_and(|o| same(o, id)) {
                i += 1;
            }
            j += 1;
        }
        if i < items.len() {
            return fail(format!(
                "the items of {name} are not in the order {SET_ELEMENT_ORDER}{name} gives, or \
                 it does not list {}",
                items[i]
            ));
        }
        Ok(())
    }

    /// A list that replaces the original: the patch's items, built from nothing.
    fn replace_list(&self, patch: &[Value], list: Node<'a>, depth: usize) -> Res<Vec<Value>> {
        let items = self.schemas.items(list);
        let mut out = Vec::with_capacity(patch.len());
        for (i, item) in patch.iter().enumerate() {
            if item.is_null() {
                out.push(Value::Null);
                continue;
            }
            let built = self
                .value(None, item, Field::plain(items), depth + 1)
                .at(|| format!("[{i}]"))?;
            out.extend(built);
        }
        Ok(out)
    }

    /// A list with strategy `merge`: by merge key for objects, as a set for primitives.
    fn merge_list(
        &self,
        original: Vec<Value>,
        patch: &[Value],
        field: Field<'a>,
        depth: usize,
    ) -> Res<Vec<Value>> {
        Self::check_depth(depth)?;
        match field.strategy.key {
            None => Self::merge_primitives(original, patch),
            Some(key) => self.merge_by_key(original, patch, key, field, depth),
        }
    }

    fn merge_primitives(original: Vec<Value>, patch: &[Value]) -> Res<Vec<Value>> {
        for (i, item) in patch.iter().enumerate() {
            if item.is_object() || item.is_array() {
                return fail(format!(
                    "a list merged as a set takes primitive values only, not {item}"
                ))
                .at(|| format!("[{i}]"));
            }
        }
        let server_order: Vec<Option<&Value>> = original.iter().map(Some).collect();
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for item in original.iter().chain(patch) {
            if !merged.iter().any(|m| same(m, item)) {
                merged.push(item.clone());
            }
        }
        let patch_order: Vec<Option<&Value>> = patch.iter().map(Some).collect();
        Ok(order_list(merged, None, &patch_order, &server_order))
    }

    fn merge_by_key(
        &self,
        mut original: Vec<Value>,
        patch: &[Value],
        key: &str,
        field: Field<'a>,
        depth: usize,
    ) -> Res<Vec<Value>> {
        let items = self.schemas.items(field.node);
        let mut replace = false;
        let mut plain: Vec<(usize, &Map<String, Value>)> = Vec::with_capacity(patch.len());
        for (i, item) in patch.iter().enumerate() {
            let Value::Object(map) = item else {
                return fail(format!(
                    "items of a list merged by {key} must be objects, not {item}"
                ))
                .at(|| format!("[{i}]"));
            };
            let Some(directive) = map.get(PATCH) else {
                plain.push((i, map));
                continue;
            };
            match directive.as_str() {
                Some("delete") => {
                    let Some(id) = map.get(key) else {
                        return fail(format!(
                            "an item with $patch: delete must have the merge key {key}"
                        ))
                        .at(|| format!("[{i}]"));
                    };
                    original.retain(|o| identity(o, Some(key)).is_none_or(|v| !same(v, id)));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return fail("$patch: merge is not supported in a list").at(|| format!("[{i}]"))
                }
                _ => {
                    return fail(format!(
                        "invalid $patch directive {directive} in a list: expected \"replace\" \
                         or \"delete\""
                    ))
                    .at(|| format!("[{i}]"))
                }
            }
        }

        if replace {
            let mut out = Vec::with_capacity(plain.len());
            for (i, item) in plain {
                let built = self
                    .object_body(Map::new(), item, items, depth + 1)
                    .at(|| describe(key, &patch[i], i))?;
                out.push(Value::Object(built));
            }
            return Ok(out);
        }

        let server_keys: Vec<Option<Value>> = original
            .iter()
            .map(|o| identity(o, Some(key)).cloned())
            .collect();
        let mut merged = original;
        let mut patch_order: Vec<Option<&Value>> = Vec::with_capacity(plain.len());
        for (i, item) in plain {
            let Some(id) = item.get(key) else {
                return fail(format!("the item lacks its merge key {key}")).at(|| format!("[{i}]"));
            };
            patch_order.push(Some(id));
            let found = merged
                .iter()
                .position(|o| identity(o, Some(key)).is_some_and(|v| same(v, id)));
            let at = || describe(key, &patch[i], i);
            match found {
                Some(pos) => {
                    let base = match merged[pos].take() {
                        Value::Object(map) => map,
                        _ => Map::new(),
                    };
                    merged[pos] =
                        Value::Object(self.object_body(base, item, items, depth + 1).at(at)?);
                }
                None => {
                    let built = self
                        .object_body(Map::new(), item, items, depth + 1)
                        .at(at)?;
                    merged.push(Value::Object(built));
                }
            }
        }
        let server_order: Vec<Option<&Value>> = server_keys.iter().map(Option::as_ref).collect();
        Ok(order_list(merged, Some(key), &patch_order, &server_order))
    }
}

#[cfg(test)]
/// The definitions of every served kind, from k8s-openapi's schemas, in `#/definitions/` form.
pub(crate) fn test_definitions() -> Definitions {
    use k8s_openapi::api::discovery::v1 as discovery;
    use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch};
    use k8s_openapi::api::{coordination::v1 as coordination, core::v1 as core};
    use k8s_openapi::schemars::generate::SchemaSettings;

    fn rewrite(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get_mut("$ref") {
                    if let Some(name) = ref_target(reference) {
                        *reference = format!("#/definitions/{name}");
                    }
                }
                map.values_mut().for_each(rewrite);
            }
            Value::Array(items) => items.iter_mut().for_each(rewrite),
            _ => {}
        }
    }

    let mut generator = SchemaSettings::openapi3().into_generator();
    generator.subschema_for::<core::Namespace>();
    generator.subschema_for::<core::Pod>();
    generator.subschema_for::<core::Service>();
    generator.subschema_for::<core::Endpoints>();
    generator.subschema_for::<core::Node>();
    generator.subschema_for::<core::ConfigMap>();
    generator.subschema_for::<core::Secret>();
    generator.subschema_for::<core::Event>();
    generator.subschema_for::<core::ServiceAccount>();
    generator.subschema_for::<apps::Deployment>();
    generator.subschema_for::<apps::ReplicaSet>();
    generator.subschema_for::<apps::DaemonSet>();
    generator.subschema_for::<apps::StatefulSet>();
    generator.subschema_for::<apps::ControllerRevision>();
    generator.subschema_for::<batch::Job>();
    generator.subschema_for::<batch::CronJob>();
    generator.subschema_for::<discovery::EndpointSlice>();
    generator.subschema_for::<coordination::Lease>();
    generator
        .take_definitions(true)
        .into_iter()
        .map(|(name, mut schema)| {
            rewrite(&mut schema);
            (name, schema)
        })
        .collect()
}

#[cfg(test)]
/// The schema `schema` refers to, for tests of the patch table.
pub(crate) fn resolve_for_tests<'a>(defs: &'a Definitions, schema: &'a Value) -> &'a Value {
    static NULL: Value = Value::Null;
    Schemas { defs }
        .resolve(Some(schema))
        .schema
        .unwrap_or(&NULL)
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use serde_json::json;

    use super::*;

    const POD: &str = "io.k8s.api.core.v1.Pod";
    const SERVICE: &str = "io.k8s.api.core.v1.Service";
    const NODE: &str = "io.k8s.api.core.v1.Node";
    const CONFIG_MAP: &str = "io.k8s.api.core.v1.ConfigMap";
    const DEPLOYMENT: &str = "io.k8s.api.apps.v1.Deployment";
    const JOB: &str = "io.k8s.api.batch.v1.Job";
    const ENDPOINT_SLICE: &str = "io.k8s.api.discovery.v1.EndpointSlice";

    fn defs() -> &'static Definitions {
        static DEFS: OnceLock<Definitions> = OnceLock::new();
        DEFS.get_or_init(test_definitions)
    }

    /// One case: `want` is the result, or `Err(part of the message)`.
    struct Case {
        name: &'static str,
        root: &'static str,
        original: Value,
        patch: Value,
        want: Result<Value, &'static str>,
    }

    fn case(
        name: &'static str,
        root: &'static str,
        original: Value,
        patch: Value,
        want: Value,
    ) -> Case {
        Case {
            name,
            root,
            original,
            patch,
            want: Ok(want),
        }
    }

    fn error(
        name: &'static str,
        root: &'static str,
        original: Value,
        patch: Value,
        message: &'static str,
    ) -> Case {
        Case {
            name,
            root,
            original,
            patch,
            want: Err(message),
        }
    }

    fn directive_in(value: &Value) -> Option<String> {
        match value {
            Value::Object(map) => map.iter().find_map(|(k, v)| {
                if k.starts_with('$') {
                    Some(k.clone())
                } else {
                    directive_in(v)
                }
            }),
            Value::Array(items) => items.iter().find_map(directive_in),
            _ => None,
        }
    }

    fn check(cases: Vec<Case>, defs: &Definitions) {
        let mut failures = Vec::new();
        for c in &cases {
            let got = apply(&c.original, &c.patch, c.root, defs);
            match (&got, &c.want) {
                (Ok(got), Ok(want)) if got == want => {
                    if let Some(key) = directive_in(got) {
                        failures.push(format!("{}: directive {key} left in {got}", c.name));
                    }
                }
                (Err(e), Err(part)) if e.to_string().contains(part) => {}
                _ => failures.push(format!(
                    "{}:\n  got  {}\n  want {}",
                    c.name,
                    match &got {
                        Ok(v) => v.to_string(),
                        Err(e) => format!("error: {e}"),
                    },
                    match &c.want {
                        Ok(v) => v.to_string(),
                        Err(part) => format!("error containing {part:?}"),
                    }
                )),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }

    fn containers(items: Value) -> Value {
        json!({"spec": {"containers": items}})
    }

    fn web_and_side() -> Value {
        containers(json!([
            {"name": "web", "image": "nginx:1"},
            {"name": "side", "image": "busybox"}
        ]))
    }

    #[test]
    fn merge_lists_by_key() {
        let cases = vec![
            case(
                "container image change by name keeps other containers",
                POD,
                web_and_side(),
                containers(json!([{"name": "side", "image": "busybox:2"}])),
                containers(json!([
                    {"name": "web", "image": "nginx:1"},
                    {"name": "side", "image": "busybox:2"}
                ])),
            ),
            case(
                "a new container goes before the original ones, as kube orders it",
                POD,
                web_and_side(),
                containers(json!([{"name": "log", "image": "fluent"}])),
                containers(json!([
                    {"name": "log", "image": "fluent"},
                    {"name": "web", "image": "nginx:1"},
                    {"name": "side", "image": "busybox"}
                ])),
            ),
            case(
                "a new container goes where $setElementOrder puts it",
                POD,
                web_and_side(),
                json!({"spec": {
                    "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}, {"name": "log"}],
                    "containers": [{"name": "log", "image": "fluent"}]
                }}),
                containers(json!([
                    {"name": "web", "image": "nginx:1"},
                    {"name": "side", "image": "busybox"},
                    {"name": "log", "image": "fluent"}
                ])),
            ),
            case(
                "$patch: delete removes a container by name",
                POD,
                web_and_side(),
                containers(json!([{"name": "web", "$patch": "delete"}])),
                containers(json!([{"name": "side", "image": "busybox"}])),
            ),
            case(
                "deleting a missing container changes nothing",
                POD,
                web_and_side(),
                containers(json!([{"name": "gone", "$patch": "delete"}])),
                web_and_side(),
            ),
            case(
                "env merges by name",
                POD,
                containers(json!([{"name": "web", "env": [
                    {"name": "A", "value": "1"}, {"name": "B", "value": "2"}
                ]}])),
                containers(json!([{"name": "web", "env": [
                    {"name": "B", "value": "3"}, {"name": "C", "value": "4"}
                ]}])),
                containers(json!([{"name": "web", "env": [
                    {"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}
                ]}])),
            ),
            case(
                "env var source replaced by value through null",
                POD,
                containers(json!([{"name": "web", "env": [
                    {"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ]}])),
                containers(
                    json!([{"name": "web", "env": [{"name": "A", "value": "x", "valueFrom": null}]}]),
                ),
                containers(json!([{"name": "web", "env": [{"name": "A", "value": "x"}]}])),
            ),
            case(
                "ports merge by containerPort, numbers compared by value",
                POD,
                containers(json!([{"name": "web", "ports": [
                    {"containerPort": 80, "name": "http"}, {"containerPort": 443}
                ]}])),
                containers(
                    json!([{"name": "web", "ports": [{"containerPort": 80.0, "protocol": "TCP"}]}]),
                ),
                containers(json!([{"name": "web", "ports": [
                    {"containerPort": 80.0, "name": "http", "protocol": "TCP"}, {"containerPort": 443}
                ]}])),
            ),
            case(
                "volumeMounts merge by mountPath",
                POD,
                containers(json!([{"name": "web", "volumeMounts": [
                    {"name": "a", "mountPath": "/a"}, {"name": "b", "mountPath": "/b"}
                ]}])),
                containers(
                    json!([{"name": "web", "volumeMounts": [{"name": "c", "mountPath": "/b", "readOnly": true}]}]),
                ),
                containers(json!([{"name": "web", "volumeMounts": [
                    {"name": "a", "mountPath": "/a"}, {"name": "c", "mountPath": "/b", "readOnly": true}
                ]}])),
            ),
            case(
                "initContainers merge by name",
                POD,
                json!({"spec": {"initContainers": [{"name": "init", "image": "a"}]}}),
                json!({"spec": {"initContainers": [{"name": "init", "image": "b"}]}}),
                json!({"spec": {"initContainers": [{"name": "init", "image": "b"}]}}),
            ),
            case(
                "ephemeral container env merges by name (EphemeralContainerCommon fields)",
                POD,
                json!({"spec": {"ephemeralContainers": [{"name": "dbg", "env": [{"name": "A", "value": "1"}]}]}}),
                json!({"spec": {"ephemeralContainers": [{"name": "dbg", "env": [{"name": "B", "value": "2"}]}]}}),
                json!({"spec": {"ephemeralContainers": [{"name": "dbg", "env": [
                    {"name": "B", "value": "2"}, {"name": "A", "value": "1"}
                ]}]}}),
            ),
            case(
                "imagePullSecrets merge by name",
                POD,
                json!({"spec": {"imagePullSecrets": [{"name": "a"}]}}),
                json!({"spec": {"imagePullSecrets": [{"name": "a"}, {"name": "b"}]}}),
                json!({"spec": {"imagePullSecrets": [{"name": "a"}, {"name": "b"}]}}),
            ),
            case(
                "topologySpreadConstraints merge by topologyKey",
                POD,
                json!({"spec": {"topologySpreadConstraints": [
                    {"topologyKey": "zone", "maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}
                ]}}),
                json!({"spec": {"topologySpreadConstraints": [{"topologyKey": "zone", "maxSkew": 2}]}}),
                json!({"spec": {"topologySpreadConstraints": [
                    {"topologyKey": "zone", "maxSkew": 2, "whenUnsatisfiable": "DoNotSchedule"}
                ]}}),
            ),
            case(
                "Service ports merge by port",
                SERVICE,
                json!({"spec": {"ports": [
                    {"port": 80, "targetPort": 8080, "name": "http"}, {"port": 443, "name": "https"}
                ]}}),
                json!({"spec": {"ports": [{"port": 443, "targetPort": 8443}]}}),
                json!({"spec": {"ports": [
                    {"port": 80, "targetPort": 8080, "name": "http"},
                    {"port": 443, "name": "https", "targetPort": 8443}
                ]}}),
            ),
            case(
                "pod conditions merge by type",
                POD,
                json!({"status": {"conditions": [
                    {"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}
                ]}}),
                json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
                json!({"status": {"conditions": [
                    {"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}
                ]}}),
            ),
            case(
                "job conditions merge by type",
                JOB,
                json!({"status": {"conditions": [{"type": "Complete", "status": "False"}]}}),
                json!({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}),
                json!({"status": {"conditions": [
                    {"type": "Failed", "status": "True"}, {"type": "Complete", "status": "False"}
                ]}}),
            ),
            case(
                "node addresses merge by type",
                NODE,
                json!({"status": {"addresses": [
                    {"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "n1"}
                ]}}),
                json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}}),
                json!({"status": {"addresses": [
                    {"type": "InternalIP", "address": "10.0.0.2"}, {"type": "Hostname", "address": "n1"}
                ]}}),
            ),
            case(
                "ownerReferences merge by uid",
                CONFIG_MAP,
                json!({"metadata": {"ownerReferences": [
                    {"uid": "u1", "name": "a", "kind": "ReplicaSet", "apiVersion": "apps/v1"}
                ]}}),
                json!({"metadata": {"ownerReferences": [{"uid": "u1", "controller": true}]}}),
                json!({"metadata": {"ownerReferences": [
                    {"uid": "u1", "name": "a", "kind": "ReplicaSet", "apiVersion": "apps/v1", "controller": true}
                ]}}),
            ),
            case(
                "a new container is built from nothing: nested directives applied, nulls dropped",
                POD,
                containers(json!([{"name": "web"}])),
                containers(json!([{
                    "name": "new", "resources": null,
                    "$setElementOrder/env": [{"name": "X"}, {"name": "Y"}],
                    "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}, {"name": "Z", "$patch": "delete"}],
                    "securityContext": {"$patch": "replace", "privileged": false}
                }])),
                containers(json!([
                    {"name": "new", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
                     "securityContext": {"privileged": false}},
                    {"name": "web"}
                ])),
            ),
        ];
        check(cases, defs());
    }

    #[test]
    fn ordering_and_replacement() {
        let abc = containers(json!([{"name": "a"}, {"name": "b"}, {"name": "c"}]));
        let cases = vec![
            case(
                "$setElementOrder/containers alone reorders",
                POD,
                abc.clone(),
                json!({"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}]}}),
                containers(json!([{"name": "c"}, {"name": "a"}, {"name": "b"}])),
            ),
            case(
                "$setElementOrder keeps server-only items after the ordered ones they follow",
                POD,
                abc.clone(),
                json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}),
                containers(json!([{"name": "b"}, {"name": "a"}, {"name": "c"}])),
            ),
            case(
                "$setElementOrder with a deletion in the list",
                POD,
                abc.clone(),
                json!({"spec": {
                    "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                    "containers": [{"name": "b", "$patch": "delete"}, {"name": "a", "image": "x"}]
                }}),
                containers(json!([{"name": "c"}, {"name": "a", "image": "x"}])),
            ),
            case(
                "$setElementOrder/finalizers orders primitives",
                CONFIG_MAP,
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"metadata": {"$setElementOrder/finalizers": ["b", "c", "a"], "finalizers": ["c"]}}),
                json!({"metadata": {"finalizers": ["b", "c", "a"]}}),
            ),
            case(
                "$patch: replace in a list replaces it",
                POD,
                web_and_side(),
                containers(json!([{"$patch": "replace"}, {"name": "only", "image": "i"}])),
                containers(json!([{"name": "only", "image": "i"}])),
            ),
            case(
                "$patch: replace alone empties the list",
                POD,
                web_and_side(),
                containers(json!([{"$patch": "replace"}])),
                containers(json!([])),
            ),
            case(
                "$patch: replace in a map replaces it",
                POD,
                json!({"spec": {"nodeSelector": {"a": "1", "b": "2"}}}),
                json!({"spec": {"nodeSelector": {"$patch": "replace", "c": "3"}}}),
                json!({"spec": {"nodeSelector": {"c": "3"}}}),
            ),
            case(
                "$patch: replace on the whole object",
                CONFIG_MAP,
                json!({"metadata": {"name": "c"}, "data": {"a": "1"}}),
                json!({"$patch": "replace", "metadata": {"name": "c"}, "data": {"b": "2"}}),
                json!({"metadata": {"name": "c"}, "data": {"b": "2"}}),
            ),
            case(
                "$patch: delete in a map removes it",
                POD,
                json!({"spec": {"securityContext": {"runAsUser": 1}, "hostname": "h"}}),
                json!({"spec": {"securityContext": {"$patch": "delete"}}}),
                json!({"spec": {"hostname": "h"}}),
            ),
            case(
                "tolerations (no strategy) are replaced",
                POD,
                json!({"spec": {"tolerations": [{"key": "a", "operator": "Exists"}]}}),
                json!({"spec": {"tolerations": [{"key": "b", "operator": "Exists"}]}}),
                json!({"spec": {"tolerations": [{"key": "b", "operator": "Exists"}]}}),
            ),
            case(
                "args (primitives, no strategy) are replaced",
                POD,
                containers(json!([{"name": "web", "args": ["a", "b"]}])),
                containers(json!([{"name": "web", "args": ["c"]}])),
                containers(json!([{"name": "web", "args": ["c"]}])),
            ),
            case(
                "EndpointSlice endpoints (no strategy) are replaced",
                ENDPOINT_SLICE,
                json!({"endpoints": [{"addresses": ["10.0.0.1"]}]}),
                json!({"endpoints": [{"addresses": ["10.0.0.2"]}]}),
                json!({"endpoints": [{"addresses": ["10.0.0.2"]}]}),
            ),
        ];
        check(cases, defs());
    }

    #[test]
    fn maps_sets_and_retain_keys() {
        let cases = vec![
            case(
                "labels set and deleted through null",
                CONFIG_MAP,
                json!({"metadata": {"name": "c", "labels": {"app": "web", "tier": "fe"}}}),
                json!({"metadata": {"labels": {"tier": null, "env": "prod"}}}),
                json!({"metadata": {"name": "c", "labels": {"app": "web", "env": "prod"}}}),
            ),
            case(
                "ConfigMap data merges; null of a missing key is ignored",
                CONFIG_MAP,
                json!({"data": {"a": "1", "b": "2"}}),
                json!({"data": {"a": null, "c": "3", "zz": null}}),
                json!({"data": {"b": "2", "c": "3"}}),
            ),
            case(
                "resource limits merge by resource name",
                POD,
                containers(
                    json!([{"name": "web", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]),
                ),
                containers(json!([{"name": "web", "resources": {"limits": {"cpu": "2"}}}])),
                containers(
                    json!([{"name": "web", "resources": {"limits": {"cpu": "2", "memory": "1Gi"}}}]),
                ),
            ),
            case(
                "finalizers take the union, new ones first",
                CONFIG_MAP,
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"metadata": {"finalizers": ["b", "c"]}}),
                json!({"metadata": {"finalizers": ["a", "b", "c"]}}),
            ),
            case(
                "finalizers: a new value goes before the original ones",
                CONFIG_MAP,
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"metadata": {"finalizers": ["c"]}}),
                json!({"metadata": {"finalizers": ["c", "a", "b"]}}),
            ),
            case(
                "$deleteFromPrimitiveList/finalizers removes values",
                CONFIG_MAP,
                json!({"metadata": {"finalizers": ["a", "b", "a", "c"]}}),
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a", "zz"]}}),
                json!({"metadata": {"finalizers": ["b", "c"]}}),
            ),
            case(
                "$deleteFromPrimitiveList with an addition in the same patch",
                CONFIG_MAP,
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["d"]}}),
                json!({"metadata": {"finalizers": ["d", "b"]}}),
            ),
            case(
                "$deleteFromPrimitiveList of a missing list adds nothing",
                CONFIG_MAP,
                json!({"metadata": {"name": "c"}}),
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
                json!({"metadata": {"name": "c"}}),
            ),
            case(
                "node podCIDRs merge as a set",
                NODE,
                json!({"spec": {"podCIDRs": ["10.0.0.0/24"]}}),
                json!({"spec": {"podCIDRs": ["10.0.0.0/24", "fd00::/64"]}}),
                json!({"spec": {"podCIDRs": ["10.0.0.0/24", "fd00::/64"]}}),
            ),
            case(
                "volumes $retainKeys: emptyDir to hostPath drops emptyDir",
                POD,
                json!({"spec": {"volumes": [
                    {"name": "data", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}
                ]}}),
                json!({"spec": {"volumes": [
                    {"$retainKeys": ["hostPath", "name"], "name": "data", "hostPath": {"path": "/d"}}
                ]}}),
                json!({"spec": {"volumes": [
                    {"name": "data", "hostPath": {"path": "/d"}}, {"name": "cfg", "configMap": {"name": "c"}}
                ]}}),
            ),
            case(
                "volumes without $retainKeys merge fields, as kube does",
                POD,
                json!({"spec": {"volumes": [{"name": "data", "emptyDir": {}}]}}),
                json!({"spec": {"volumes": [{"name": "data", "hostPath": {"path": "/d"}}]}}),
                json!({"spec": {"volumes": [{"name": "data", "emptyDir": {}, "hostPath": {"path": "/d"}}]}}),
            ),
            case(
                "deployment strategy $retainKeys: RollingUpdate to Recreate drops rollingUpdate",
                DEPLOYMENT,
                json!({"spec": {"replicas": 2, "strategy": {
                    "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}
                }}}),
                json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}}),
                json!({"spec": {"replicas": 2, "strategy": {"type": "Recreate"}}}),
            ),
            case(
                "deployment strategy $retainKeys without the explicit null",
                DEPLOYMENT,
                json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}),
                json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
                json!({"spec": {"strategy": {"type": "Recreate"}}}),
            ),
            case(
                "kubectl apply's image change patch",
                DEPLOYMENT,
                json!({"metadata": {"name": "d"}, "spec": {"replicas": 1, "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [
                        {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}]}
                    ]}
                }}}),
                json!({"spec": {"template": {"spec": {
                    "$setElementOrder/containers": [{"name": "web"}],
                    "containers": [{"image": "nginx:2", "name": "web"}]
                }}}}),
                json!({"metadata": {"name": "d"}, "spec": {"replicas": 1, "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [
                        {"name": "web", "image": "nginx:2", "ports": [{"containerPort": 80}]}
                    ]}
                }}}),
            ),
            case(
                "a scalar replaces an object of another type",
                POD,
                json!({"spec": {"hostname": {"odd": true}}}),
                json!({"spec": {"hostname": "h"}}),
                json!({"spec": {"hostname": "h"}}),
            ),
            case(
                "without a schema: objects merge, lists are replaced",
                "io.k8s.example.v1.Unknown",
                json!({"a": {"b": 1, "c": 2}, "l": [{"name": "x"}], "s": [1, 2]}),
                json!({"a": {"b": null, "d": 3}, "l": [{"name": "y"}], "s": [3]}),
                json!({"a": {"c": 2, "d": 3}, "l": [{"name": "y"}], "s": [3]}),
            ),
        ];
        check(cases, defs());
    }

    #[test]
    fn malformed_directives() {
        let cases = vec![
            error(
                "patch is not an object",
                POD,
                json!({}),
                json!([1]),
                "must be a JSON object",
            ),
            error(
                "$patch: delete on the whole object",
                POD,
                json!({}),
                json!({"$patch": "delete"}),
                "whole object",
            ),
            error(
                "unknown $patch value in a map",
                POD,
                json!({}),
                json!({"spec": {"nodeSelector": {"$patch": "merge"}}}),
                "expected \"replace\" or \"delete\" (at spec.nodeSelector)",
            ),
            error(
                "$patch: merge in a list",
                POD,
                web_and_side(),
                containers(json!([{"$patch": "merge"}])),
                "$patch: merge is not supported in a list (at spec.containers[0])",
            ),
            error(
                "unknown $patch value in a list",
                POD,
                web_and_side(),
                containers(json!([{"name": "web", "$patch": 3}])),
                "invalid $patch directive 3 in a list",
            ),
            error(
                "$patch: delete without the merge key",
                POD,
                web_and_side(),
                containers(json!([{"$patch": "delete", "image": "x"}])),
                "must have the merge key name",
            ),
            error(
                "a merged item without its merge key",
                POD,
                web_and_side(),
                containers(json!([{"image": "x"}])),
                "lacks its merge key name (at spec.containers[0])",
            ),
            error(
                "a merged list item that is not an object",
                POD,
                web_and_side(),
                containers(json!(["web"])),
                "must be objects",
            ),
            error(
                "$retainKeys not a list",
                DEPLOYMENT,
                json!({}),
                json!({"spec": {"strategy": {"$retainKeys": "type", "type": "Recreate"}}}),
                "$retainKeys must be a list of field names (at spec.strategy)",
            ),
            error(
                "$retainKeys missing a field the patch sets",
                DEPLOYMENT,
                json!({}),
                json!({"spec": {"strategy": {"$retainKeys": ["rollingUpdate"], "type": "Recreate"}}}),
                "the patch sets type, which $retainKeys",
            ),
            error(
                "$setElementOrder not a list",
                POD,
                web_and_side(),
                json!({"spec": {"$setElementOrder/containers": {"name": "web"}}}),
                "$setElementOrder/containers must be a list (at spec)",
            ),
            error(
                "$setElementOrder without a field name",
                POD,
                web_and_side(),
                json!({"spec": {"$setElementOrder/": []}}),
                "does not name a field",
            ),
            error(
                "$setElementOrder items without the merge key",
                POD,
                web_and_side(),
                json!({"spec": {"$setElementOrder/containers": ["web"]}}),
                "must be an object with the merge key name",
            ),
            error(
                "$setElementOrder disagreeing with the patch's order",
                POD,
                web_and_side(),
                json!({"spec": {
                    "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
                    "containers": [{"name": "side", "image": "x"}, {"name": "web", "image": "y"}]
                }}),
                "not in the order $setElementOrder/containers gives",
            ),
            error(
                "$setElementOrder not listing a patched item",
                POD,
                web_and_side(),
                json!({"spec": {
                    "$setElementOrder/containers": [{"name": "web"}],
                    "containers": [{"name": "new", "image": "x"}]
                }}),
                "does not list",
            ),
            error(
                "$deleteFromPrimitiveList with objects",
                CONFIG_MAP,
                json!({}),
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [{"a": 1}]}}),
                "must be a list of primitive values",
            ),
            error(
                "objects in a list merged as a set",
                CONFIG_MAP,
                json!({"metadata": {"finalizers": ["a"]}}),
                json!({"metadata": {"finalizers": [{"a": 1}]}}),
                "primitive values only",
            ),
            error(
                "an unknown directive",
                POD,
                json!({}),
                json!({"spec": {"$replaceAll": true}}),
                "unknown patch directive $replaceAll (at spec)",
            ),
        ];
        check(cases, defs());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        fn nested(depth: usize, wrap: fn(Value) -> Value) -> Value {
            let mut v = json!("leaf");
            for _ in 0..depth {
                v = wrap(v);
            }
            v
        }
        let objects = |depth| json!({"spec": nested(depth, |v| json!({"a": v}))});
        let lists = |depth| json!({"spec": {"x": nested(depth, |v| json!([v]))}});
        let mut_lists = |depth| {
            containers(
                json!([{"name": "web", "env": [{"name": "A", "x": nested(depth, |v| json!({"a": v}))}]}]),
            )
        };
        for patch in [objects(200), lists(200), mut_lists(200)] {
            let err = apply(&json!({}), &patch, POD, defs()).unwrap_err();
            assert!(err.to_string().contains("more than 100 levels"), "{err}");
        }
        let deep_original = objects(200);
        for patch in [objects(50), lists(50), mut_lists(50)] {
            assert!(apply(&deep_original, &patch, POD, defs()).is_ok());
        }
    }

    #[test]
    fn schema_extensions_and_ref_forms() {
        let defs: Definitions = [
            (
                "T".to_string(),
                json!({"properties": {"items": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/I"},
                    "x-kubernetes-patch-strategy": "merge",
                    "x-kubernetes-patch-merge-key": "id"
                }}}),
            ),
            (
                "I".to_string(),
                json!({"properties": {
                    "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-patch-strategy": "merge"},
                    "sub": {"allOf": [{"$ref": "#/$defs/S"}], "description": "wrapped"}
                }}),
            ),
            (
                "S".to_string(),
                json!({"properties": {"m": {"type": "object", "additionalProperties": {"$ref": "#/definitions/I"}}}}),
            ),
        ]
        .into_iter()
        .collect();
        let cases = vec![
            case(
                "x-kubernetes-patch-* on properties, $ref in components form",
                "T",
                json!({"items": [{"id": 1, "tags": ["a"]}, {"id": 2}]}),
                json!({"items": [{"id": 1, "tags": ["b"]}]}),
                json!({"items": [{"id": 1, "tags": ["b", "a"]}, {"id": 2}]}),
            ),
            case(
                "allOf-wrapped $ref, additionalProperties map values with their own strategies",
                "T",
                json!({"items": [{"id": 1, "sub": {"m": {"k": {"tags": ["a"]}}}}]}),
                json!({"items": [{"id": 1, "sub": {"m": {"k": {"tags": ["a", "z"]}}}}]}),
                json!({"items": [{"id": 1, "sub": {"m": {"k": {"tags": ["a", "z"]}}}}]}),
            ),
        ];
        check(cases, &defs);
    }

    #[test]
    fn test_definitions_have_the_served_kinds() {
        let defs = defs();
        for name in [
            POD,
            SERVICE,
            NODE,
            CONFIG_MAP,
            DEPLOYMENT,
            JOB,
            ENDPOINT_SLICE,
            "io.k8s.api.coordination.v1.Lease",
        ] {
            assert!(defs.contains_key(name), "{name}");
        }
        let merger = Merger {
            schemas: Schemas { defs },
        };
        let spec = merger.schemas.field(merger.schemas.definition(POD), "spec");
        assert_eq!(spec.node.name, Some("io.k8s.api.core.v1.PodSpec"));
        let containers = merger.schemas.field(spec.node, "containers");
        assert!(containers.strategy.merge);
        assert_eq!(containers.strategy.key, Some("name"));
        assert_eq!(
            merger.schemas.items(containers.node).name,
            Some("io.k8s.api.core.v1.Container")
        );
    }
}
