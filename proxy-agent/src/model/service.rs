//! A Service, normalised: every IP parsed, every port validated, policies resolved.

use std::{fmt, net::IpAddr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;

use super::{
    error::{ErrorSink, InvalidReason, ObjectError, ObjectKind},
    ip::{IpFamily, parse_cidr, parse_ip},
};

/// Annotation that puts a service on the eBPF fast path (`"on"`) or keeps it off (`"off"`).
pub const ACCELERATION_ANNOTATION: &str = "hybrid-proxy.io/acceleration";
/// Overrides `acceleration.forwarding` for one Service: `redirect` or `stack`.
pub const FORWARDING_ANNOTATION: &str = "hybrid-proxy.io/forwarding";

/// Longest object name accepted (the API's limit for DNS subdomains).
pub const MAX_NAME_LEN: usize = 253;

/// Default ClientIP affinity timeout (three hours, as the API defaults it).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
const MAX_AFFINITY_TIMEOUT: i64 = 86_400;

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Transport protocols a Service port can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the API's spelling; `None` (field absent) means TCP.
    pub fn from_api(value: Option<&str>) -> Result<Self, InvalidReason> {
        match value {
            None | Some("TCP") => Ok(Self::Tcp),
            Some("UDP") => Ok(Self::Udp),
            Some("SCTP") => Ok(Self::Sctp),
            Some(other) => Err(InvalidReason::UnknownProtocol {
                value: other.to_owned(),
            }),
        }
    }

    /// IANA protocol number, as in the IP header.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// Lower-case name, as `nft` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    /// The API's spelling.
    pub fn api_name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

/// The acceleration annotation's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AccelerationAnnotation {
    #[default]
    Unset,
    On,
    Off,
}

/// The forwarding annotation's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ForwardingAnnotation {
    /// The node's `acceleration.forwarding` decides.
    #[default]
    Unset,
    Redirect,
    Stack,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// Empty for the single unnamed port of a one-port Service.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// A Service as the plan needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: ServiceName,
    /// At most one per family, in the Service's order (primary family first).
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` except `ipMode: Proxy`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `None`: no restriction. `Some`: only these sources may use the load-balancer IPs
    /// (an empty list, when every range given was invalid, admits nobody: fail closed).
    pub source_ranges: Option<Vec<IpNet>>,
    pub ports: Vec<ServicePort>,
    /// `type` is NodePort or LoadBalancer, or the Service has external IPs.
    pub externally_accessible: bool,
    /// `externalTrafficPolicy: Local` on an externally accessible Service.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// ClientIP session affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// The health-check node port of an eTP-Local LoadBalancer Service.
    pub health_check_node_port: Option<u16>,
    pub acceleration: AccelerationAnnotation,
    pub forwarding: ForwardingAnnotation,
}

impl Service {
    /// The cluster IP of one family, if the Service has one.
    pub fn cluster_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.cluster_ips
            .iter()
            .copied()
            .find(|ip| IpFamily::of(*ip) == family)
    }
}

/// What became of a Service object.
#[derive(Debug)]
pub enum Normalised {
    /// Programmed (possibly without some invalid parts, each reported).
    Service(Service),
    /// Headless or ExternalName: nothing to program, nothing wrong.
    Ignored,
    /// Cannot be programmed at all; the errors say why.
    Rejected,
}

fn port_number(value: i64, field: &str, sink: &mut ErrorSink<'_>) -> Option<u16> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            sink.push(field, InvalidReason::PortOutOfRange { value });
            None
        }
    }
}

/// Checks an object's namespace and name; `None` when they cannot identify it.
pub(crate) fn object_name(
    kind: ObjectKind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    namespaced: bool,
) -> Result<(String, String), Box<ObjectError>> {
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let mut sink = ErrorSink::new(kind, &namespace, &name);
    if name.is_empty() {
        sink.push("metadata.name", InvalidReason::Missing);
    } else if name.len() > MAX_NAME_LEN {
        sink.push(
            "metadata.name",
            InvalidReason::TooLong {
                len: name.len(),
                limit: MAX_NAME_LEN,
            },
        );
    }
    if namespaced && namespace.is_empty() {
        sink.push("metadata.namespace", InvalidReason::Missing);
    } else if namespace.len() > MAX_NAME_LEN {
        sink.push(
            "metadata.namespace",
            InvalidReason::TooLong {
                len: namespace.len(),
                limit: MAX_NAME_LEN,
            },
        );
    }
    match sink.errors.pop() {
        None => Ok((namespace, name)),
        Some(mut err) => {
            // Keep the report readable when the name itself is the problem.
            for text in [&mut err.name, &mut err.namespace] {
                if text.len() > 64 {
                    *text = format!("{}...", &text[..text.floor_char_boundary(64)]);
                }
            }
            Err(Box::new(err))
        }
    }
}

/// Normalises a Service, pushing every problem into `errors`.
pub fn normalise_service(svc: &core::Service, errors: &mut Vec<ObjectError>) -> Normalised {
    let (namespace, name) = match object_name(ObjectKind::Service, &svc.metadata, true) {
        Ok(n) => n,
        Err(e) => {
            errors.push(*e);
            return Normalised::Rejected;
        }
    };
    let mut sink = ErrorSink::new(ObjectKind::Service, &namespace, &name);
    let result = normalise_spec(svc, ServiceName::new(&namespace, &name), &mut sink);
    errors.append(&mut sink.errors);
    result
}

#[expect(
    clippy::too_many_lines,
    reason = "one pass over the Service's fields, in spec order"
)]
fn normalise_spec(svc: &core::Service, name: ServiceName, sink: &mut ErrorSink<'_>) -> Normalised {
    let Some(spec) = &svc.spec else {
        sink.push("spec", InvalidReason::Missing);
        return Normalised::Rejected;
    };
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    match service_type {
        "ExternalName" => return Normalised::Ignored,
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        other => {
            sink.push(
                "spec.type",
                InvalidReason::UnknownValue {
                    value: other.to_owned(),
                    allowed: "ClusterIP, NodePort, LoadBalancer, ExternalName",
                },
            );
            return Normalised::Rejected;
        }
    }

    // Cluster IPs: `clusterIPs` when set (dual stack), else `clusterIP`.
    let (raw_ips, field): (Vec<&str>, &str) = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => {
            (ips.iter().map(String::as_str).collect(), "spec.clusterIPs")
        }
        (_, Some(ip)) => (vec![ip.as_str()], "spec.clusterIP"),
        _ => (Vec::new(), "spec.clusterIP"),
    };
    if raw_ips.first().is_some_and(|ip| *ip == "None") {
        return Normalised::Ignored;
    }
    if raw_ips.is_empty() || raw_ips.iter().all(|ip| ip.is_empty()) {
        sink.push(field, InvalidReason::Missing);
        return Normalised::Rejected;
    }
    let mut cluster_ips: Vec<IpAddr> = Vec::with_capacity(2);
    for (i, raw) in raw_ips.iter().enumerate() {
        let f = if field == "spec.clusterIPs" {
            format!("{field}[{i}]")
        } else {
            field.to_owned()
        };
        let Some(ip) = parse_ip(raw) else {
            sink.push(
                f,
                InvalidReason::BadIp {
                    value: (*raw).to_owned(),
                },
            );
            return Normalised::Rejected;
        };
        if cluster_ips
            .iter()
            .any(|c| IpFamily::of(*c) == IpFamily::of(ip))
        {
            sink.push(
                f,
                InvalidReason::Duplicate {
                    what: "cluster IP family",
                    value: ip.to_string(),
                },
            );
            continue;
        }
        cluster_ips.push(ip);
    }

    if spec.ports.as_ref().is_none_or(Vec::is_empty) {
        // The API server requires ports on every Service that is not headless.
        sink.push("spec.ports", InvalidReason::Missing);
        return Normalised::Rejected;
    }
    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let protocol = match Protocol::from_api(p.protocol.as_deref()) {
            Ok(proto) => proto,
            Err(reason) => {
                sink.push(format!("{field}.protocol"), reason);
                continue;
            }
        };
        let Some(port) = port_number(i64::from(p.port), &format!("{field}.port"), sink) else {
            continue;
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(np) => port_number(i64::from(np), &format!("{field}.nodePort"), sink),
        };
        let port_name = p.name.clone().unwrap_or_default();
        if let Some(dup) = ports
            .iter()
            .find(|q| q.port == port && q.protocol == protocol)
        {
            sink.push(
                format!("{field}.port"),
                InvalidReason::Duplicate {
                    what: "port",
                    value: format!("{port}/{protocol} (also port {:?})", dup.name),
                },
            );
            continue;
        }
        if ports.iter().any(|q| q.name == port_name) {
            sink.push(
                format!("{field}.name"),
                InvalidReason::Duplicate {
                    what: "port name",
                    value: format!("{port_name:?}"),
                },
            );
            continue;
        }
        if let Some(np) = node_port
            && ports
                .iter()
                .any(|q| q.node_port == Some(np) && q.protocol == protocol)
        {
            sink.push(
                format!("{field}.nodePort"),
                InvalidReason::Duplicate {
                    what: "node port",
                    value: format!("{np}/{protocol}"),
                },
            );
            continue;
        }
        ports.push(ServicePort {
            name: port_name,
            protocol,
            port,
            node_port,
        });
    }

    let mut external_ips: Vec<IpAddr> = Vec::new();
    for (i, raw) in spec.external_ips.iter().flatten().enumerate() {
        match parse_ip(raw) {
            Some(ip) if !external_ips.contains(&ip) => external_ips.push(ip),
            Some(_) => {}
            None => sink.push(
                format!("spec.externalIPs[{i}]"),
                InvalidReason::BadIp { value: raw.clone() },
            ),
        }
    }

    let mut load_balancer_ips: Vec<IpAddr> = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        let Some(raw) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        // A proxy-mode load balancer terminates traffic itself: the node must not capture
        // its IP.
        if ing.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        match parse_ip(raw) {
            Some(ip) if !load_balancer_ips.contains(&ip) => load_balancer_ips.push(ip),
            Some(_) => {}
            None => sink.push(
                format!("status.loadBalancer.ingress[{i}].ip"),
                InvalidReason::BadIp {
                    value: raw.to_owned(),
                },
            ),
        }
    }

    let source_ranges = spec
        .load_balancer_source_ranges
        .as_ref()
        .filter(|r| !r.is_empty())
        .map(|ranges| {
            let mut nets: Vec<IpNet> = Vec::new();
            for (i, raw) in ranges.iter().enumerate() {
                match parse_cidr(raw.trim()) {
                    Some(net) if !nets.contains(&net) => nets.push(net),
                    Some(_) => {}
                    None => sink.push(
                        format!("spec.loadBalancerSourceRanges[{i}]"),
                        InvalidReason::BadCidr { value: raw.clone() },
                    ),
                }
            }
            nets
        });

    let externally_accessible =
        matches!(service_type, "NodePort" | "LoadBalancer") || !external_ips.is_empty();
    let policy = |value: Option<&str>, field: &str, sink: &mut ErrorSink<'_>| match value {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            sink.push(
                field,
                InvalidReason::UnknownValue {
                    value: other.to_owned(),
                    allowed: "Cluster, Local",
                },
            );
            false
        }
    };
    let external_policy_local = policy(
        spec.external_traffic_policy.as_deref(),
        "spec.externalTrafficPolicy",
        sink,
    ) && externally_accessible;
    let internal_policy_local = policy(
        spec.internal_traffic_policy.as_deref(),
        "spec.internalTrafficPolicy",
        sink,
    );

    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&i64::from(t)) => {
                    Some(t.unsigned_abs())
                }
                Some(t) => {
                    sink.push(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        InvalidReason::TimeoutOutOfRange {
                            value: i64::from(t),
                        },
                    );
                    Some(DEFAULT_AFFINITY_TIMEOUT)
                }
            }
        }
        Some(other) => {
            sink.push(
                "spec.sessionAffinity",
                InvalidReason::UnknownValue {
                    value: other.to_owned(),
                    allowed: "None, ClientIP",
                },
            );
            None
        }
    };

    let health_check_node_port = match spec.health_check_node_port {
        Some(p) if p != 0 && service_type == "LoadBalancer" && external_policy_local => {
            port_number(i64::from(p), "spec.healthCheckNodePort", sink)
        }
        _ => None,
    };

    let acceleration = match svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ACCELERATION_ANNOTATION))
        .map(String::as_str)
    {
        None => AccelerationAnnotation::Unset,
        Some("on") => AccelerationAnnotation::On,
        Some("off") => AccelerationAnnotation::Off,
        Some(other) => {
            sink.push(
                format!("metadata.annotations[{ACCELERATION_ANNOTATION}]"),
                InvalidReason::UnknownValue {
                    value: other.to_owned(),
                    allowed: "on, off",
                },
            );
            AccelerationAnnotation::Unset
        }
    };

    let forwarding = match svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FORWARDING_ANNOTATION))
        .map(String::as_str)
    {
        None => ForwardingAnnotation::Unset,
        Some("redirect") => ForwardingAnnotation::Redirect,
        Some("stack") => ForwardingAnnotation::Stack,
        Some(other) => {
            sink.push(
                format!("metadata.annotations[{FORWARDING_ANNOTATION}]"),
                InvalidReason::UnknownValue {
                    value: other.to_owned(),
                    allowed: "redirect, stack",
                },
            );
            ForwardingAnnotation::Unset
        }
    };

    Normalised::Service(Service {
        name,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        source_ranges,
        ports,
        externally_accessible,
        external_policy_local,
        internal_policy_local,
        affinity_timeout,
        health_check_node_port,
        acceleration,
        forwarding,
    })
}
