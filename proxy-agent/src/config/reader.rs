//! Reads keys out of a YAML mapping, collecting every problem instead of stopping at the
//! first.

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::{ConfigError, ConfigProblem};

pub(super) struct Reader<'e> {
    map: Mapping,
    prefix: String,
    errors: &'e mut Vec<ConfigError>,
}

impl<'e> Reader<'e> {
    pub fn new(map: Mapping, prefix: String, errors: &'e mut Vec<ConfigError>) -> Self {
        Self {
            map,
            prefix,
            errors,
        }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub fn error(&mut self, key: &str, problem: ConfigProblem) {
        let key = self.path(key);
        self.errors.push(ConfigError { key, problem });
    }

    /// Takes a key; `None` when absent, null, or of the wrong type (then reported).
    pub fn take<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let value = self.map.remove(key)?;
        if value.is_null() {
            return None;
        }
        match serde_yaml::from_value(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(key, ConfigProblem::WrongType(e.to_string()));
                None
            }
        }
    }

    /// A list of strings, written either as a YAML list or as one comma-separated string.
    pub fn take_string_list(&mut self, key: &str) -> Option<Vec<String>> {
        match self.map.get(key)? {
            Value::String(s) => {
                let s = s.clone();
                self.map.remove(key);
                Some(
                    s.split(',')
                        .map(|p| p.trim().to_owned())
                        .filter(|p| !p.is_empty())
                        .collect(),
                )
            }
            _ => self.take(key),
        }
    }

    /// A nested mapping, read with its own reader.
    pub fn section(&mut self, key: &str) -> Option<Reader<'_>> {
        match self.map.remove(key)? {
            Value::Mapping(map) => {
                let prefix = self.path(key);
                Some(Reader::new(map, prefix, self.errors))
            }
            Value::Null => None,
            other => {
                self.error(
                    key,
                    ConfigProblem::WrongType(format!("expected a mapping, found {}", kind(&other))),
                );
                None
            }
        }
    }

    /// Reports every key nobody asked for.
    pub fn finish(self) {
        for key in self.map.keys() {
            let name = match key {
                Value::String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            let key = self.path(&name);
            self.errors.push(ConfigError {
                key,
                problem: ConfigProblem::UnknownKey,
            });
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}
