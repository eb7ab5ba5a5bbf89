//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`) and field selectors
//! (`=`, `==`, `!=` on `metadata.name`, `metadata.namespace` and per-kind fields).

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

/// A parsed field selector: `path=value` and `path!=value` terms, all of which must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn parse(selector: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        if selector.trim().is_empty() {
            return Ok(Self(terms));
        }
        for part in selector.split(',') {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid field selector {part:?}: expected field=value or field!=value"
                ));
            };
            let field = field.trim();
            if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
                return Err(format!(
                    "invalid field selector: field label {field:?} is not valid"
                ));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
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

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let cases = [
            ("metadata.name=p", true),
            ("metadata.name==p", true),
            ("metadata.name!=p", false),
            ("metadata.namespace=default,spec.nodeName=n1", true),
            ("spec.nodeName=", false),
            ("status.phase!=Pending", true),
        ];
        for (selector, want) in cases {
            assert_eq!(
                FieldSelector::parse(selector).unwrap().matches(&pod),
                want,
                "{selector}"
            );
        }
        let unscheduled = json!({"metadata": {"name": "q"}, "spec": {}});
        assert!(FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches(&unscheduled));
        assert!(FieldSelector::parse("nonsense").is_err());
        assert!(FieldSelector::parse("a b=c").is_err());
    }
}
