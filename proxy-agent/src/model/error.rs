//! Why an object (or a part of it) cannot be programmed.
//!
//! A bad object is an error for that object only: it names the object and the field, and the
//! plan covers everything else.

use std::fmt;

use thiserror::Error;

/// The kinds of object the agent reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    Node,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
        })
    }
}

/// One problem with one field of one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Error)]
#[error("{kind} {namespace}/{name}: {field}: {reason}")]
pub struct ObjectError {
    pub kind: ObjectKind,
    /// Empty for cluster-scoped objects (Nodes).
    pub namespace: String,
    pub name: String,
    /// The field path, as `kubectl explain` spells it: `spec.ports[1].port`.
    pub field: String,
    pub reason: InvalidReason,
}

/// What is wrong with a field.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Error)]
pub enum InvalidReason {
    #[error("{value:?} is not an IP address")]
    BadIp { value: String },
    #[error("{value:?} is not a CIDR")]
    BadCidr { value: String },
    #[error("{value} is out of range 1-65535")]
    PortOutOfRange { value: i64 },
    #[error("unknown protocol {value:?} (want TCP, UDP or SCTP)")]
    UnknownProtocol { value: String },
    #[error("{value:?} is not one of {allowed}")]
    UnknownValue {
        value: String,
        allowed: &'static str,
    },
    #[error("duplicate {what} {value}")]
    Duplicate { what: &'static str, value: String },
    #[error("required but missing")]
    Missing,
    #[error("{value} is not an {family} address, as the field requires")]
    WrongFamily { value: String, family: &'static str },
    #[error("{value} is already used by {owner}")]
    Conflict { value: String, owner: String },
    #[error("{len} bytes long, more than the {limit} allowed")]
    TooLong { len: usize, limit: usize },
    #[error("{count} endpoints, more than the {limit} this agent programs per service port")]
    TooManyEndpoints { count: usize, limit: usize },
    #[error("timeout {value} seconds is outside 1-86400")]
    TimeoutOutOfRange { value: i64 },
}

impl InvalidReason {
    /// A short stable code, used as the `reason` label of the rejected-objects metric.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadIp { .. } => "bad_ip",
            Self::BadCidr { .. } => "bad_cidr",
            Self::PortOutOfRange { .. } => "port_out_of_range",
            Self::UnknownProtocol { .. } => "unknown_protocol",
            Self::UnknownValue { .. } => "unknown_value",
            Self::Duplicate { .. } => "duplicate",
            Self::Missing => "missing",
            Self::WrongFamily { .. } => "wrong_family",
            Self::Conflict { .. } => "conflict",
            Self::TooLong { .. } => "too_long",
            Self::TooManyEndpoints { .. } => "too_many_endpoints",
            Self::TimeoutOutOfRange { .. } => "timeout_out_of_range",
        }
    }
}

/// Collects the errors of one object while it is being normalised.
#[derive(Debug)]
pub(crate) struct ErrorSink<'a> {
    pub kind: ObjectKind,
    pub namespace: &'a str,
    pub name: &'a str,
    pub errors: Vec<ObjectError>,
}

impl<'a> ErrorSink<'a> {
    pub fn new(kind: ObjectKind, namespace: &'a str, name: &'a str) -> Self {
        Self {
            kind,
            namespace,
            name,
            errors: Vec::new(),
        }
    }

    pub fn push(&mut self, field: impl Into<String>, reason: InvalidReason) {
        self.errors.push(ObjectError {
            kind: self.kind,
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            field: field.into(),
            reason,
        });
    }
}
