//! Which service ports the fast path serves, and why not the others. Pure: plan in, decisions
//! out.
//!
//! A port has two independent paths:
//! - **pods** (TC ingress on pod-facing interfaces): traffic from this node's pods to the
//!   cluster IP and, where the plan short-circuits it without SNAT, to the external addresses;
//! - **external** (XDP on node interfaces): traffic from outside to the node port, load-balancer
//!   IPs and external IPs, only when it needs no SNAT (`externalTrafficPolicy: Local`, local
//!   endpoints).
//!
//! A path is accelerated only when every first packet it would capture gets exactly the
//! translation `plan::route` prescribes: DNAT to one of the same endpoints, no SNAT. Anything
//! else stays on nftables, with the reason reported.
//!
//! In `auto` mode the choice among eligible ports is the hot-service policy's
//! ([`super::policy`]), handed in as an [`AutoChoice`]; an annotation still wins both ways.
//! Whatever the mode (but `off`), every TCP/UDP port, IPv4 or IPv6, is also *counted*: its
//! addresses get counting entries wherever they are not accelerated (see
//! [`PortEligibility::counted`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use super::config::AccelerationMode;
use crate::{
    model::{AccelerationAnnotation, IpFamily, Protocol, ServiceName},
    plan::{
        FamilyNodePlan, FamilyPlan, Masquerade, NodePortIps, PlanEndpoint, Policy, ProxyPlan,
        ServicePlan, ServicePortId, ServicePortPlan,
    },
};

/// Why a path of a service port is not on the fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    ModeOff,
    NotAnnotated,
    AnnotationOff,
    Sctp,
    /// The service has no usable endpoint (nftables rejects).
    NoEndpoints,
    /// No endpoint this path may use here (Local policy without local endpoints: nftables
    /// drops).
    NoLocalEndpoints,
    /// The plan masquerades this traffic (`masqueradeAll`, `externalTrafficPolicy: Cluster`).
    NeedsSnat,
    /// More endpoints than a backend set holds.
    TooManyEndpoints,
    /// `loadBalancerSourceRanges` restricts the load-balancer IPs (checked by nftables only).
    SourceRanges,
    /// The port has no node port, load-balancer IP or external IP.
    NoExternalAddress,
    /// `auto`: the packet rate is not above `promoteAbovePps` (or was not measured yet).
    Cold,
    /// `auto`: hot, but it moved less than `minDwell` ago.
    Dwell,
    /// `auto`: hot, but the fast path holds as many services as it may (`maxServices`, or
    /// the maps' capacity).
    Capacity,
}

impl Reason {
    /// Every reason, in code order.
    pub const ALL: [Reason; 13] = [
        Self::ModeOff,
        Self::NotAnnotated,
        Self::AnnotationOff,
        Self::Sctp,
        Self::NoEndpoints,
        Self::NoLocalEndpoints,
        Self::NeedsSnat,
        Self::TooManyEndpoints,
        Self::SourceRanges,
        Self::NoExternalAddress,
        Self::Cold,
        Self::Dwell,
        Self::Capacity,
    ];

    /// The code recorded in the pinned `HP_PORTS` map (0 means "on the fast path").
    pub fn code(self) -> u8 {
        let index = Self::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every reason is listed");
        u8::try_from(index + 1).expect("few reasons")
    }

    /// The reason of a recorded code; `None` for 0 (accelerated) and unknown codes.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

/// A decision as recorded in `HP_PORTS`: 0 for accelerated, else the reason's code.
pub fn decision_code(d: &Decision) -> u8 {
    match d {
        Ok(_) => 0,
        Err(r) => r.code(),
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ModeOff => "mode off",
            Self::NotAnnotated => "not annotated",
            Self::AnnotationOff => "annotation off",
            Self::Sctp => "SCTP",
            Self::NoEndpoints => "no endpoints",
            Self::NoLocalEndpoints => "no local endpoints",
            Self::NeedsSnat => "needs SNAT",
            Self::TooManyEndpoints => "too many endpoints",
            Self::SourceRanges => "source ranges",
            Self::NoExternalAddress => "no external address",
            Self::Cold => "auto: not hot",
            Self::Dwell => "auto: hot, waiting minDwell",
            Self::Capacity => "auto: hot, fast path full",
        })
    }
}

/// Which endpoint list a path sends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointSet {
    Cluster,
    Local,
}

impl EndpointSet {
    /// The value stored in the maps (`proxy_common::set`).
    pub fn raw(self) -> u8 {
        match self {
            Self::Cluster => proxy_common::set::CLUSTER,
            Self::Local => proxy_common::set::LOCAL,
        }
    }

    fn of(policy: Policy) -> Self {
        match policy {
            Policy::Cluster => Self::Cluster,
            Policy::Local => Self::Local,
        }
    }
}

/// The addresses one path captures, and where it sends them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accelerated {
    /// `(address, port)` pairs a first packet may be sent to.
    pub addresses: Vec<(IpAddr, u16)>,
    pub set: EndpointSet,
    pub endpoints: Vec<PlanEndpoint>,
}

/// One path's decision.
pub type Decision = Result<Accelerated, Reason>;

/// The service addresses of a port that the programs count, by scope: those of every
/// TCP/UDP port (either family) while the mode is not `off`, accelerated or not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// Addresses pods reach (TC ingress): the cluster IP and the external addresses.
    pub pods: Vec<(IpAddr, u16)>,
    /// Addresses clients outside reach (XDP): node ports, load-balancer IPs, external IPs.
    pub external: Vec<(IpAddr, u16)>,
}

impl Counted {
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.external.is_empty()
    }
}

/// What the `auto` policy chose: the promoted service ports, and why each other one it
/// knows of is not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoChoice {
    pub promoted: BTreeSet<ServicePortId>,
    pub held: BTreeMap<ServicePortId, Reason>,
}

impl AutoChoice {
    fn gate(&self, id: ServicePortId) -> Option<Reason> {
        if self.promoted.contains(&id) {
            None
        } else {
            Some(self.held.get(&id).copied().unwrap_or(Reason::Cold))
        }
    }
}

/// The decisions for one service port in one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEligibility {
    pub service: ServiceName,
    pub id: ServicePortId,
    pub port_name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub family: IpFamily,
    pub affinity_timeout: Option<u32>,
    /// Annotated `hybrid-proxy.io/acceleration`.
    pub annotation: AccelerationAnnotation,
    /// Annotated `hybrid-proxy.io/forwarding`.
    pub forwarding: crate::model::ForwardingAnnotation,
    pub pods: Decision,
    pub external: Decision,
    pub counted: Counted,
}

impl PortEligibility {
    pub fn any_accelerated(&self) -> bool {
        self.pods.is_ok() || self.external.is_ok()
    }

    /// `namespace/name port/PROTOCOL`, as `HP_PORTS` records it.
    pub fn label(&self) -> String {
        let port = if self.port_name.is_empty() {
            self.port.to_string()
        } else {
            format!("{}({})", self.port_name, self.port)
        };
        format!("{} {port}/{}", self.service, self.protocol)
    }

    /// Backend entries the accelerated paths need (one per endpoint per set).
    pub fn backend_entries(&self) -> usize {
        let mut sets: Vec<(EndpointSet, usize)> = Vec::new();
        for a in [&self.pods, &self.external].into_iter().flatten() {
            if !sets.iter().any(|(s, _)| *s == a.set) {
                sets.push((a.set, a.endpoints.len()));
            }
        }
        sets.iter().map(|(_, n)| n).sum()
    }

    /// Backend sets the accelerated paths need.
    pub fn sets(&self) -> usize {
        match (&self.pods, &self.external) {
            (Ok(a), Ok(b)) if a.set != b.set => 2,
            (Err(_), Err(_)) => 0,
            _ => 1,
        }
    }
}

fn describe(d: &Decision) -> String {
    match d {
        Ok(a) => format!(
            "on ({} address(es), {} {} endpoint(s))",
            a.addresses.len(),
            a.endpoints.len(),
            match a.set {
                EndpointSet::Cluster => "cluster",
                EndpointSet::Local => "local",
            }
        ),
        Err(r) => format!("off: {r}"),
    }
}

impl fmt::Display for PortEligibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = if self.port_name.is_empty() {
            self.port.to_string()
        } else {
            format!("{}({})", self.port_name, self.port)
        };
        write!(
            f,
            "{} {port}/{} {}: pods {}; external {}",
            self.service,
            self.protocol,
            self.family.api_name(),
            describe(&self.pods),
            describe(&self.external)
        )
    }
}

/// Decides every service port of the plan, in plan order. In `auto` mode no port is
/// promoted (see [`decide_auto`]).
pub fn decide(plan: &ProxyPlan, mode: AccelerationMode) -> Vec<PortEligibility> {
    decide_auto(plan, mode, &AutoChoice::default())
}

/// Decides every service port of the plan, in plan order; in `auto` mode the ports `choice`
/// promotes (and those annotated `"on"`) are accelerated where they are eligible.
pub fn decide_auto(
    plan: &ProxyPlan,
    mode: AccelerationMode,
    choice: &AutoChoice,
) -> Vec<PortEligibility> {
    let mut out = Vec::new();
    for (svc, port) in plan.ports() {
        for fam in &port.families {
            out.push(decide_port(
                svc,
                port,
                fam,
                plan.node.family(fam.family),
                mode,
                choice,
            ));
        }
    }
    out
}

fn service_gate(
    svc: &ServicePlan,
    port: &ServicePortPlan,
    mode: AccelerationMode,
    choice: &AutoChoice,
) -> Option<Reason> {
    if svc.acceleration == AccelerationAnnotation::Off {
        return Some(Reason::AnnotationOff);
    }
    match mode {
        AccelerationMode::Off => return Some(Reason::ModeOff),
        AccelerationMode::Annotated if svc.acceleration != AccelerationAnnotation::On => {
            return Some(Reason::NotAnnotated);
        }
        AccelerationMode::Auto if svc.acceleration != AccelerationAnnotation::On => {
            if let Some(reason) = choice.gate(port.id) {
                // The protocol comes first: it is the more lasting reason.
                return Some(unsupported(port).unwrap_or(reason));
            }
        }
        _ => {}
    }
    unsupported(port)
}

/// What the programs cannot serve at all, whatever the mode. Both families are served
/// (IPv6 packets with extension headers pass to nftables packet by packet).
fn unsupported(port: &ServicePortPlan) -> Option<Reason> {
    if port.protocol == Protocol::Sctp {
        return Some(Reason::Sctp);
    }
    None
}

fn endpoints_ok(endpoints: &[PlanEndpoint], has_any: bool, local: bool) -> Result<(), Reason> {
    if endpoints.is_empty() {
        return Err(if has_any && local {
            Reason::NoLocalEndpoints
        } else {
            Reason::NoEndpoints
        });
    }
    if endpoints.len() > proxy_common::MAX_BACKENDS {
        return Err(Reason::TooManyEndpoints);
    }
    Ok(())
}

/// The node-port addresses of this family the plan accepts node ports on.
fn node_port_addresses(node: &FamilyNodePlan) -> Vec<IpAddr> {
    match &node.node_port_ips {
        NodePortIps::Addresses(ips) => ips.clone(),
        // Every local address: the plan knows the node's addresses from its Node object, which
        // is what the fast path can capture reliably; others go to nftables.
        NodePortIps::AllLocal => node
            .node_ips
            .iter()
            .copied()
            .filter(|ip| !ip.is_loopback())
            .collect(),
    }
}

/// The external addresses of a port: `(address, port)` for node ports, LB IPs (unless
/// restricted by source ranges) and external IPs.
fn external_addresses(
    port: &ServicePortPlan,
    fam: &FamilyPlan,
    node: &FamilyNodePlan,
) -> (Vec<(IpAddr, u16)>, bool) {
    let mut out = Vec::new();
    let restricted = fam.source_ranges.is_some() && !fam.load_balancer_ips.is_empty();
    if let Some(np) = port.node_port {
        out.extend(node_port_addresses(node).into_iter().map(|ip| (ip, np)));
    }
    if !restricted {
        out.extend(fam.load_balancer_ips.iter().map(|ip| (*ip, port.port)));
    }
    out.extend(fam.external_ips.iter().map(|ip| (*ip, port.port)));
    (out, restricted)
}

fn decide_port(
    svc: &ServicePlan,
    port: &ServicePortPlan,
    fam: &FamilyPlan,
    node: &FamilyNodePlan,
    mode: AccelerationMode,
    choice: &AutoChoice,
) -> PortEligibility {
    let mut result = PortEligibility {
        service: svc.name.clone(),
        id: port.id,
        port_name: port.port_name.clone(),
        protocol: port.protocol,
        port: port.port,
        family: fam.family,
        affinity_timeout: port.affinity_timeout,
        annotation: svc.acceleration,
        forwarding: svc.forwarding,
        pods: Err(Reason::ModeOff),
        external: Err(Reason::ModeOff),
        counted: Counted::default(),
    };
    if mode != AccelerationMode::Off && unsupported(port).is_none() {
        result.counted = counted_addresses(port, fam, node);
    }
    if let Some(reason) = service_gate(svc, port, mode, choice) {
        result.pods = Err(reason);
        result.external = Err(reason);
        return result;
    }
    let (external, restricted) = external_addresses(port, fam, node);
    result.pods = decide_pods(fam, node, port.port, &external);
    result.external = decide_external(fam, external, restricted);
    result
}

/// Traffic from this node's pods. The programs sit on pod-facing interfaces, so the source is
/// a local pod; the node's local-traffic detector recognises it as one when it is configured
/// (pod CIDR, cluster CIDR, pod interface names): the plan's `OffCluster` masquerade then
/// does not apply, and eTP-Local external addresses short-circuit to the cluster endpoints.
fn decide_pods(
    fam: &FamilyPlan,
    node: &FamilyNodePlan,
    port: u16,
    external: &[(IpAddr, u16)],
) -> Decision {
    let local_pod = node.local_traffic.is_known();
    let masquerade = match fam.internal.masquerade {
        Masquerade::Never => false,
        Masquerade::OffCluster => !local_pod,
        Masquerade::Always => true,
    };
    if masquerade {
        return Err(Reason::NeedsSnat);
    }
    let endpoints = fam.internal_endpoints();
    endpoints_ok(
        endpoints,
        fam.has_endpoints,
        fam.internal.policy == Policy::Local,
    )?;
    let set = EndpointSet::of(fam.internal.policy);
    let mut addresses = vec![(fam.cluster_ip, port)];
    // The external addresses go the same way only when the plan sends pods to the same
    // endpoint set without SNAT: the eTP-Local short-circuit sends pods to the cluster
    // endpoints, which is this set when the internal policy is Cluster.
    if fam.has_endpoints && fam.external.short_circuit && local_pod && set == EndpointSet::Cluster {
        addresses.extend_from_slice(external);
    }
    Ok(Accelerated {
        addresses,
        set,
        endpoints: endpoints.to_vec(),
    })
}

/// Every address of a port, source ranges or not: counting changes nothing for a packet.
fn counted_addresses(port: &ServicePortPlan, fam: &FamilyPlan, node: &FamilyNodePlan) -> Counted {
    let mut external = Vec::new();
    if let Some(np) = port.node_port {
        external.extend(node_port_addresses(node).into_iter().map(|ip| (ip, np)));
    }
    external.extend(fam.load_balancer_ips.iter().map(|ip| (*ip, port.port)));
    external.extend(fam.external_ips.iter().map(|ip| (*ip, port.port)));
    let mut pods = vec![(fam.cluster_ip, port.port)];
    pods.extend_from_slice(&external);
    Counted { pods, external }
}

fn decide_external(fam: &FamilyPlan, addresses: Vec<(IpAddr, u16)>, restricted: bool) -> Decision {
    if addresses.is_empty() {
        return Err(if restricted {
            Reason::SourceRanges
        } else {
            Reason::NoExternalAddress
        });
    }
    if !fam.has_endpoints {
        return Err(Reason::NoEndpoints);
    }
    if fam.external.policy != Policy::Local || fam.external.masquerade != Masquerade::Never {
        return Err(Reason::NeedsSnat);
    }
    let endpoints = fam.external_endpoints();
    endpoints_ok(endpoints, fam.has_endpoints, true)?;
    Ok(Accelerated {
        addresses,
        set: EndpointSet::Local,
        endpoints: endpoints.to_vec(),
    })
}
