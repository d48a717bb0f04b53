//! This node, as the plan needs it.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

use super::{
    error::{ErrorSink, InvalidReason, ObjectError, ObjectKind},
    ip::{IpFamily, parse_cidr, parse_ip},
};

/// Label carrying the node's zone, used by topology-aware routing.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The parts of this node's Node object the plan uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// InternalIP addresses first, then ExternalIP, each in the object's order.
    pub addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    pub zone: Option<String>,
}

impl NodeInfo {
    /// The node's primary IP of a family: its first InternalIP, else its first ExternalIP
    /// (how kube-proxy picks the node IP).
    pub fn primary_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.addresses
            .iter()
            .copied()
            .find(|ip| IpFamily::of(*ip) == family)
    }

    /// A node known only by name (no Node object seen yet).
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }
}

/// Reads the Node object; invalid addresses or CIDRs are reported and skipped.
pub fn normalise_node(node: &Node, errors: &mut Vec<ObjectError>) -> NodeInfo {
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut sink = ErrorSink::new(ObjectKind::Node, "", &name);
    let mut addresses = Vec::new();
    let all = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for wanted in ["InternalIP", "ExternalIP"] {
        for (i, a) in all.into_iter().flatten().enumerate() {
            if a.type_ != wanted {
                continue;
            }
            match parse_ip(&a.address) {
                Some(ip) if !addresses.contains(&ip) => addresses.push(ip),
                Some(_) => {}
                None => sink.push(
                    format!("status.addresses[{i}].address"),
                    InvalidReason::BadIp {
                        value: a.address.clone(),
                    },
                ),
            }
        }
    }
    let spec = node.spec.as_ref();
    let raw_cidrs: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(cidrs) if !cidrs.is_empty() => cidrs.iter().collect(),
        _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
    };
    let mut pod_cidrs = Vec::new();
    for (i, raw) in raw_cidrs.into_iter().enumerate() {
        match parse_cidr(raw) {
            Some(net) => pod_cidrs.push(net),
            None => sink.push(
                format!("spec.podCIDRs[{i}]"),
                InvalidReason::BadCidr { value: raw.clone() },
            ),
        }
    }
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .cloned();
    errors.append(&mut sink.errors);
    NodeInfo {
        name,
        addresses,
        pod_cidrs,
        zone,
    }
}
