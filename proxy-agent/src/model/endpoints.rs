//! EndpointSlices merged into one endpoint list per Service port.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{
    error::{ErrorSink, InvalidReason, ObjectError, ObjectKind},
    ip::{IpFamily, parse_ip},
    service::{Protocol, object_name},
};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Identifies a Service port in EndpointSlices: by name and protocol, never by number (the
/// slice carries the resolved target port, which is how named target ports work).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub name: String,
    pub protocol: Protocol,
}

/// One backend of one Service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub node_name: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
}

impl Endpoint {
    pub fn is_local(&self, node_name: &str) -> bool {
        self.node_name.as_deref() == Some(node_name)
    }
}

/// Every endpoint of a Service, per port, deduplicated and sorted by address.
pub type EndpointsByPort = BTreeMap<PortKey, Vec<Endpoint>>;

/// The Service an EndpointSlice belongs to, from its label.
pub fn slice_service(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)
        .map(String::as_str)
}

/// Merges the slices of one Service. Slices are visited in the order given (the caller passes
/// them sorted by name, so the result does not depend on arrival order); an address that
/// appears twice is kept once, preferring the copy on this node, as kube-proxy does.
pub fn merge_slices<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_name: &str,
    errors: &mut Vec<ObjectError>,
) -> EndpointsByPort {
    let mut merged: BTreeMap<PortKey, BTreeMap<(IpAddr, u16), Endpoint>> = BTreeMap::new();
    for slice in slices {
        let (namespace, name) = match object_name(ObjectKind::EndpointSlice, &slice.metadata, true)
        {
            Ok(n) => n,
            Err(e) => {
                errors.push(*e);
                continue;
            }
        };
        let mut sink = ErrorSink::new(ObjectKind::EndpointSlice, &namespace, &name);
        let family = match slice.address_type.as_str() {
            "IPv4" => IpFamily::V4,
            "IPv6" => IpFamily::V6,
            // FQDN slices are for other consumers; kube-proxy ignores them too.
            "FQDN" => continue,
            other => {
                sink.push(
                    "addressType",
                    InvalidReason::UnknownValue {
                        value: other.to_owned(),
                        allowed: "IPv4, IPv6, FQDN",
                    },
                );
                errors.append(&mut sink.errors);
                continue;
            }
        };

        let ports = parse_ports(slice, &mut sink);

        for (i, ep) in slice.endpoints.iter().enumerate() {
            let Some(endpoint) = parse_endpoint(ep, i, family, &mut sink) else {
                continue;
            };
            for (key, port) in &ports {
                let endpoint = Endpoint {
                    port: *port,
                    ..endpoint.clone()
                };
                let set = merged.entry(key.clone()).or_default();
                match set.get(&(endpoint.ip, *port)) {
                    Some(existing)
                        if existing.is_local(node_name) || !endpoint.is_local(node_name) => {}
                    _ => {
                        set.insert((endpoint.ip, *port), endpoint);
                    }
                }
            }
        }
        errors.append(&mut sink.errors);
    }
    merged
        .into_iter()
        .map(|(k, set)| (k, set.into_values().collect()))
        .collect()
}

/// The slice's ports that a proxy can program, by Service port key.
fn parse_ports(slice: &EndpointSlice, sink: &mut ErrorSink<'_>) -> Vec<(PortKey, u16)> {
    let mut ports: Vec<(PortKey, u16)> = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let protocol = match Protocol::from_api(p.protocol.as_deref()) {
            Ok(proto) => proto,
            Err(reason) => {
                sink.push(format!("ports[{i}].protocol"), reason);
                continue;
            }
        };
        // A port without a number means "all ports" to some consumers; a proxy cannot
        // program that, and kube-proxy skips it too.
        let Some(number) = p.port else { continue };
        let Some(number) = u16::try_from(number).ok().filter(|n| *n != 0) else {
            sink.push(
                format!("ports[{i}].port"),
                InvalidReason::PortOutOfRange {
                    value: i64::from(number),
                },
            );
            continue;
        };
        let key = PortKey {
            name: p.name.clone().unwrap_or_default(),
            protocol,
        };
        if ports.iter().any(|(k, _)| *k == key) {
            sink.push(
                format!("ports[{i}].name"),
                InvalidReason::Duplicate {
                    what: "port",
                    value: format!("{:?}/{protocol}", key.name),
                },
            );
            continue;
        }
        ports.push((key, number));
    }
    ports
}

/// One endpoint of a slice; the port is filled in per slice port by the caller.
fn parse_endpoint(
    ep: &k8s_openapi::api::discovery::v1::Endpoint,
    i: usize,
    family: IpFamily,
    sink: &mut ErrorSink<'_>,
) -> Option<Endpoint> {
    // Only the first address counts (the API allows exactly one today).
    let Some(raw) = ep.addresses.first() else {
        sink.push(format!("endpoints[{i}].addresses"), InvalidReason::Missing);
        return None;
    };
    let Some(ip) = parse_ip(raw) else {
        sink.push(
            format!("endpoints[{i}].addresses[0]"),
            InvalidReason::BadIp { value: raw.clone() },
        );
        return None;
    };
    if IpFamily::of(ip) != family {
        sink.push(
            format!("endpoints[{i}].addresses[0]"),
            InvalidReason::WrongFamily {
                value: raw.clone(),
                family: family.api_name(),
            },
        );
        return None;
    }
    let conditions = ep.conditions.as_ref();
    // Absent conditions read as kube-proxy reads them: ready and serving unless said
    // otherwise, terminating only when said.
    let hint_names = |names: Option<Vec<String>>| {
        let mut names = names.unwrap_or_default();
        names.sort();
        names.dedup();
        names
    };
    let hints = ep.hints.as_ref();
    Some(Endpoint {
        ip,
        port: 0,
        node_name: ep.node_name.clone(),
        ready: conditions.and_then(|c| c.ready).unwrap_or(true),
        serving: conditions.and_then(|c| c.serving).unwrap_or(true),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        zone_hints: hint_names(
            hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect()),
        ),
        node_hints: hint_names(
            hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|n| n.iter().map(|n| n.name.clone()).collect()),
        ),
    })
}
