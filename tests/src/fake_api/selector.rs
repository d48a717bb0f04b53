//! `labelSelector` and `fieldSelector` query parameters, parsed the way the API server does.
//!
//! Only what a proxy's watchers send is supported: label selectors in full (equality, set and
//! existence requirements) and the two field selectors every kind has, `metadata.name` and
//! `metadata.namespace`. Any other field is rejected, as the API server rejects fields a kind
//! does not index, so that a test never passes against a filter the real server would refuse.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SelectorError {
    #[error("unable to parse requirement {requirement:?} in labelSelector: {why}")]
    Label {
        requirement: String,
        why: &'static str,
    },
    #[error(
        "invalid fieldSelector requirement {requirement:?}: expected field=value or field!=value"
    )]
    FieldSyntax { requirement: String },
    #[error("field label not supported: {field}")]
    UnsupportedField { field: String },
}

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<LabelRequirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl LabelSelector {
    pub(crate) fn parse(selector: &str) -> Result<Self, SelectorError> {
        split_top_level(selector)
            .into_iter()
            .filter(|r| !r.trim().is_empty())
            .map(|r| LabelRequirement::parse(r.trim()))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
            // As in the API server, `!=` and `notin` also select objects without the label.
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::NotExists(k) => label(k).is_none(),
        })
    }
}

impl LabelRequirement {
    fn parse(requirement: &str) -> Result<Self, SelectorError> {
        let fail = |why| SelectorError::Label {
            requirement: requirement.to_owned(),
            why,
        };
        let key = |k: &str| {
            let k = k.trim();
            if k.is_empty() || k.contains(char::is_whitespace) {
                Err(fail("invalid label key"))
            } else {
                Ok(k.to_owned())
            }
        };
        if let Some(rest) = requirement.strip_prefix('!') {
            return Ok(Self::NotExists(key(rest)?));
        }
        if let Some(open) = requirement.find('(') {
            let values = requirement[open + 1..]
                .strip_suffix(')')
                .ok_or_else(|| fail("missing closing parenthesis"))?;
            let values: Vec<String> = values.split(',').map(|v| v.trim().to_owned()).collect();
            let mut words = requirement[..open].split_whitespace();
            let (Some(k), Some(op), None) = (words.next(), words.next(), words.next()) else {
                return Err(fail("expected `key in (...)` or `key notin (...)`"));
            };
            return match op {
                "in" => Ok(Self::In(key(k)?, values)),
                "notin" => Ok(Self::NotIn(key(k)?, values)),
                _ => Err(fail("unknown set operator")),
            };
        }
        if let Some((k, v)) = requirement.split_once("!=") {
            return Ok(Self::NotEquals(key(k)?, v.trim().to_owned()));
        }
        if let Some((k, v)) = requirement
            .split_once("==")
            .or_else(|| requirement.split_once('='))
        {
            return Ok(Self::Equals(key(k)?, v.trim().to_owned()));
        }
        Ok(Self::Exists(key(requirement)?))
    }
}

/// Splits on commas that are not inside `in (...)` value lists.
fn split_top_level(selector: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0_usize, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts
}

/// A parsed `fieldSelector` over `metadata.name` and `metadata.namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<FieldRequirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    pointer: &'static str,
    value: String,
    equal: bool,
}

impl FieldSelector {
    pub(crate) fn parse(selector: &str) -> Result<Self, SelectorError> {
        selector
            .split(',')
            .filter(|r| !r.trim().is_empty())
            .map(|requirement| {
                let (field, value, equal) = if let Some((f, v)) = requirement.split_once("!=") {
                    (f, v, false)
                } else if let Some((f, v)) = requirement
                    .split_once("==")
                    .or_else(|| requirement.split_once('='))
                {
                    (f, v, true)
                } else {
                    return Err(SelectorError::FieldSyntax {
                        requirement: requirement.to_owned(),
                    });
                };
                let pointer = match field.trim() {
                    "metadata.name" => "/metadata/name",
                    "metadata.namespace" => "/metadata/namespace",
                    other => {
                        return Err(SelectorError::UnsupportedField {
                            field: other.to_owned(),
                        });
                    }
                };
                Ok(FieldRequirement {
                    pointer,
                    value: value.trim().to_owned(),
                    equal,
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|r| {
            // A cluster-scoped object has no namespace; the API server compares it as "".
            let actual = object
                .pointer(r.pointer)
                .and_then(Value::as_str)
                .unwrap_or("");
            (actual == r.value) == r.equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(name: &str, labels: &Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_requirements_select_like_the_api_server() {
        let web = object("a", &json!({"app": "web", "tier": "front"}));
        let db = object("b", &json!({"app": "db"}));
        let bare = object("c", &json!({}));
        let cases: &[(&str, [bool; 3])] = &[
            ("", [true, true, true]),
            ("app=web", [true, false, false]),
            ("app==web", [true, false, false]),
            ("app!=web", [false, true, true]),
            ("app in (web, db)", [true, true, false]),
            ("app notin (web)", [false, true, true]),
            ("tier", [true, false, false]),
            ("!tier", [false, true, true]),
            ("app in (web,db),!tier", [false, true, false]),
        ];
        for (selector, expected) in cases {
            let parsed = LabelSelector::parse(selector).unwrap();
            let got = [&web, &db, &bare].map(|o| parsed.matches(o));
            assert_eq!(&got, expected, "selector {selector:?}");
        }
    }

    #[test]
    fn malformed_label_selectors_are_rejected() {
        for selector in ["app in (web", "app within (web)", "a b=c", "=web"] {
            assert!(LabelSelector::parse(selector).is_err(), "{selector:?}");
        }
    }

    #[test]
    fn field_selectors_cover_name_and_namespace_only() {
        let o = object("node-a", &json!({}));
        assert!(
            FieldSelector::parse("metadata.name=node-a")
                .unwrap()
                .matches(&o)
        );
        assert!(
            !FieldSelector::parse("metadata.name=node-b")
                .unwrap()
                .matches(&o)
        );
        assert!(
            FieldSelector::parse("metadata.name!=node-b,metadata.namespace==ns")
                .unwrap()
                .matches(&o)
        );
        assert_eq!(
            FieldSelector::parse("spec.unschedulable=true"),
            Err(SelectorError::UnsupportedField {
                field: "spec.unschedulable".into()
            })
        );
    }
}
