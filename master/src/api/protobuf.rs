//! The little of Kubernetes' protobuf encoding the API reads: kubectl's typed client sends a
//! TokenRequest (`kubectl create token`) as `application/vnd.kubernetes.protobuf`. The body is
//! the `k8s\0` magic and a `runtime.Unknown` (`typeMeta` = 1, `raw` = 2) whose `raw` is the
//! `authentication.k8s.io/v1` TokenRequest message; [`token_request_json`] turns it into the
//! JSON the handler reads. Other kinds' protobuf bodies stay 415.

use serde_json::{json, Map, Value};

/// The envelope's magic prefix.
const MAGIC: &[u8] = b"k8s\0";

/// One field of a protobuf message: its number and, for the wire types used here, its value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// Iterates over the fields of one message; stops with an error on malformed input.
struct Fields<'a> {
    rest: &'a [u8],
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf
            .split_first()
            .ok_or_else(|| "truncated varint".to_string())?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Field<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let mut step = || -> Result<(u64, Field<'a>), String> {
            let key = varint(&mut self.rest)?;
            let (number, wire) = (key >> 3, key & 7);
            let take = |rest: &mut &'a [u8], n: usize| -> Result<&'a [u8], String> {
                if rest.len() < n {
                    return Err("truncated field".into());
                }
                let (head, tail) = rest.split_at(n);
                *rest = tail;
                Ok(head)
            };
            let field = match wire {
                0 => Field::Varint(varint(&mut self.rest)?),
                1 => {
                    take(&mut self.rest, 8)?;
                    Field::Other
                }
                2 => {
                    let len = usize::try_from(varint(&mut self.rest)?)
                        .map_err(|_| "length out of range".to_string())?;
                    Field::Bytes(take(&mut self.rest, len)?)
                }
                5 => {
                    take(&mut self.rest, 4)?;
                    Field::Other
                }
                other => return Err(format!("unsupported wire type {other}")),
            };
            Ok((number, field))
        };
        let item = step();
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

fn fields(message: &[u8]) -> Fields<'_> {
    Fields { rest: message }
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string field is not utf-8".to_string())
}

/// The string fields of a message by number (the last one wins, as in protobuf).
fn strings(message: &[u8], wanted: &[(u64, &str)]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for field in fields(message) {
        if let (number, Field::Bytes(bytes)) = field? {
            if let Some((_, name)) = wanted.iter().find(|(n, _)| *n == number) {
                out.insert((*name).to_string(), json!(text(bytes)?));
            }
        }
    }
    Ok(out)
}

/// A protobuf TokenRequest body (envelope included) as its JSON form.
pub fn token_request_json(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| "the body does not start with the k8s protobuf magic".to_string())?;
    let mut type_meta = Map::new();
    let mut raw: &[u8] = &[];
    for field in fields(envelope) {
        match field? {
            (1, Field::Bytes(bytes)) => {
                type_meta = strings(bytes, &[(1, "apiVersion"), (2, "kind")])?;
            }
            (2, Field::Bytes(bytes)) => raw = bytes,
            _ => {}
        }
    }
    if let Some(kind) = type_meta.get("kind").and_then(Value::as_str) {
        if kind != "TokenRequest" {
            return Err(format!("not a TokenRequest object: kind {kind:?}"));
        }
    }
    let mut object = Map::new();
    object.insert("kind".into(), json!("TokenRequest"));
    object.insert("apiVersion".into(), json!("authentication.k8s.io/v1"));
    let mut spec = Map::new();
    for field in fields(raw) {
        match field? {
            (1, Field::Bytes(meta)) => {
                let meta = strings(meta, &[(1, "name"), (2, "generateName"), (3, "namespace")])?;
                object.insert("metadata".into(), Value::Object(meta));
            }
            (2, Field::Bytes(spec_bytes)) => {
                let mut audiences = Vec::new();
                for field in fields(spec_bytes) {
                    match field? {
                        (1, Field::Bytes(audience)) => audiences.push(json!(text(audience)?)),
                        (3, Field::Bytes(reference)) => {
                            let reference = strings(
                                reference,
                                &[(1, "kind"), (2, "apiVersion"), (3, "name"), (4, "uid")],
                            )?;
                            spec.insert("boundObjectRef".into(), Value::Object(reference));
                        }
                        // int64 is two's complement in a varint.
                        (4, Field::Varint(seconds)) => {
                            spec.insert("expirationSeconds".into(), json!(seconds as i64));
                        }
                        _ => {}
                    }
                }
                spec.insert("audiences".into(), Value::Array(audiences));
            }
            _ => {}
        }
    }
    object.insert("spec".into(), Value::Object(spec));
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(number: u64, wire: u64) -> Vec<u8> {
        encode_varint((number << 3) | wire)
    }

    fn encode_varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes(number: u64, value: &[u8]) -> Vec<u8> {
        [
            tag(number, 2),
            encode_varint(value.len() as u64),
            value.to_vec(),
        ]
        .concat()
    }

    fn envelope(kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [
            bytes(1, b"authentication.k8s.io/v1"),
            bytes(2, kind.as_bytes()),
        ]
        .concat();
        [
            MAGIC.to_vec(),
            bytes(1, &type_meta),
            bytes(2, raw),
            bytes(4, b"application/vnd.kubernetes.protobuf"),
        ]
        .concat()
    }

    #[test]
    fn token_requests_decode_like_their_json() {
        let reference = [
            bytes(1, b"Pod"),
            bytes(2, b"v1"),
            bytes(3, b"web"),
            bytes(4, b"u-1"),
        ]
        .concat();
        let spec = [
            bytes(1, b"api"),
            bytes(1, b"vault"),
            bytes(3, &reference),
            tag(4, 0),
            encode_varint(3607),
        ]
        .concat();
        let meta = [bytes(1, b"robot"), bytes(3, b"ns")].concat();
        let raw = [bytes(1, &meta), bytes(2, &spec), bytes(3, b"")].concat();
        assert_eq!(
            token_request_json(&envelope("TokenRequest", &raw)).unwrap(),
            json!({
                "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": "robot", "namespace": "ns"},
                "spec": {"audiences": ["api", "vault"], "expirationSeconds": 3607,
                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web", "uid": "u-1"}},
            })
        );
        // kubectl create token with no flags: an empty spec.
        let empty = [bytes(1, &[]), bytes(2, &[])].concat();
        assert_eq!(
            token_request_json(&envelope("TokenRequest", &empty)).unwrap()["spec"],
            json!({"audiences": []})
        );
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        for body in [
            b"".to_vec(),
            b"{}".to_vec(),
            MAGIC.to_vec(),
            [MAGIC, &[0x12, 0x05, 0x01]].concat(),
            [MAGIC, &[0xff; 12]].concat(),
            [MAGIC, &[0x0b]].concat(),
            envelope("Pod", &[]),
            envelope("TokenRequest", &[0x12, 0x02, 0x0a, 0x09]),
            envelope("TokenRequest", &bytes(1, &bytes(1, &[0xff, 0xfe]))),
        ] {
            let got = token_request_json(&body);
            if body == MAGIC {
                assert!(got.is_ok(), "{body:?}");
            } else {
                assert!(got.is_err(), "{body:?}: {got:?}");
            }
        }
    }
}
