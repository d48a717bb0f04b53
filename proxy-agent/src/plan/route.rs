//! Where a packet goes, read off the plan.
//!
//! This is kube-proxy's service semantics stated once, in terms of the plan: the nftables
//! ruleset and the eBPF maps are two implementations of it, the behaviour tests assert
//! against it, and `proxy-agent` uses it to explain a path. It looks at the first packet of a
//! connection (what NAT decides on).

use std::net::IpAddr;

use super::{
    FamilyPlan, LocalTraffic, Masquerade, NoEndpoints, NodePortIps, PlanEndpoint, Policy, ProxyPlan,
};
use crate::model::{IpFamily, Protocol};

/// Where a packet comes from, as far as the proxy can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub ip: IpAddr,
    /// The interface it arrived on (`None` when the node itself sent it).
    pub in_interface: Option<String>,
    /// Sent by the node itself (a host-network process).
    pub from_host: bool,
}

impl Source {
    /// A packet from a host-network process on this node.
    pub fn host(ip: IpAddr) -> Self {
        Self {
            ip,
            in_interface: None,
            from_host: true,
        }
    }

    /// A packet that arrived on an interface.
    pub fn arriving(ip: IpAddr, interface: &str) -> Self {
        Self {
            ip,
            in_interface: Some(interface.to_owned()),
            from_host: false,
        }
    }
}

/// The first packet of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub source: Source,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint the packet may be sent to, and whether its source is masqueraded on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub endpoint: PlanEndpoint,
    pub masquerade: bool,
}

/// What the node does with the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// DNAT to one of these (chosen at random, or by ClientIP affinity).
    Dnat(Vec<Target>),
    /// Rejected with ICMP: no endpoints, or an unknown port on a cluster IP.
    Reject,
    /// Dropped: Local policy without local endpoints, a source outside
    /// `loadBalancerSourceRanges`, or an unallocated cluster IP.
    Drop,
    /// Not addressed to a Service: the proxy leaves it alone.
    NotService,
}

fn is_local_pod(local: &LocalTraffic, source: &Source) -> bool {
    match local {
        LocalTraffic::Unknown => false,
        LocalTraffic::SourceCidrs(nets) => nets.iter().any(|n| n.contains(&source.ip)),
        LocalTraffic::InInterface(name) => source.in_interface.as_deref() == Some(name),
        LocalTraffic::InInterfacePrefix(prefix) => source
            .in_interface
            .as_deref()
            .is_some_and(|i| i.starts_with(prefix.as_str())),
    }
}

fn targets(endpoints: &[PlanEndpoint], source: &Source, masquerade: bool) -> Route {
    Route::Dnat(
        endpoints
            .iter()
            .map(|e| Target {
                endpoint: *e,
                // Hairpin: a pod reaching itself through the Service must see the reply come
                // from elsewhere, or it would drop it.
                masquerade: masquerade || e.ip == source.ip,
            })
            .collect(),
    )
}

fn empty(when: NoEndpoints) -> Route {
    match when {
        NoEndpoints::Reject => Route::Reject,
        NoEndpoints::Drop => Route::Drop,
    }
}

impl ProxyPlan {
    /// Where the first packet of a connection goes.
    pub fn route(&self, packet: &Packet) -> Route {
        let family = IpFamily::of(packet.dst);
        let node = self.node.family(family);
        let local_pod = is_local_pod(&node.local_traffic, &packet.source);
        let to_node_port = match &node.node_port_ips {
            NodePortIps::Addresses(ips) => ips.contains(&packet.dst),
            NodePortIps::AllLocal => {
                !packet.dst.is_loopback() && node.node_ips.contains(&packet.dst)
            }
        };

        let mut cluster_ip_other_port = false;
        for (_, port) in self.ports() {
            let Some(fam) = port.family(family) else {
                continue;
            };
            let same_port = port.protocol == packet.protocol && port.port == packet.port;
            if fam.cluster_ip == packet.dst {
                if !same_port {
                    cluster_ip_other_port = true;
                    continue;
                }
                let endpoints = fam.internal_endpoints();
                if endpoints.is_empty() {
                    return empty(fam.internal.when_empty);
                }
                let masquerade = match fam.internal.masquerade {
                    Masquerade::Never => false,
                    Masquerade::OffCluster => !local_pod,
                    Masquerade::Always => true,
                };
                return targets(endpoints, &packet.source, masquerade);
            }
            let lb = same_port && fam.load_balancer_ips.contains(&packet.dst);
            let external = lb
                || (same_port && fam.external_ips.contains(&packet.dst))
                || (port.protocol == packet.protocol
                    && port.node_port == Some(packet.port)
                    && to_node_port);
            if !external {
                continue;
            }
            if lb
                && let Some(ranges) = &fam.source_ranges
                && !ranges.iter().any(|r| r.contains(&packet.source.ip))
            {
                return Route::Drop;
            }
            return route_external(fam, &packet.source, local_pod);
        }
        if cluster_ip_other_port {
            Route::Reject
        } else if node.service_cidrs.iter().any(|c| c.contains(&packet.dst)) {
            Route::Drop
        } else {
            Route::NotService
        }
    }
}

fn route_external(fam: &FamilyPlan, source: &Source, local_pod: bool) -> Route {
    if !fam.has_endpoints {
        return Route::Reject;
    }
    if fam.external.short_circuit {
        if local_pod {
            return targets(&fam.cluster_endpoints, source, false);
        }
        if source.from_host {
            return targets(&fam.cluster_endpoints, source, true);
        }
    }
    let endpoints = fam.external_endpoints();
    if endpoints.is_empty() {
        return empty(fam.external.when_empty);
    }
    let masquerade =
        fam.external.policy == Policy::Cluster || fam.external.masquerade == Masquerade::Always;
    targets(endpoints, source, masquerade)
}
