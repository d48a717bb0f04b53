//! The ruleset a plan asks for, per IP family.
//!
//! # Layout
//!
//! kube-proxy gives every Service port a chain with an anonymous `numgen ... vmap` and every
//! endpoint a chain of its own. Each anonymous verdict map makes the kernel's loop check
//! walk more sets on every jump, so loading grows faster than linearly (about 39 s for
//! 10,000 Services on a 2-core machine). Here the number of chains does not grow with the
//! number of Services: per-Service and per-endpoint data live in named maps, and a few
//! shared chains, one per endpoint count, pick an endpoint:
//!
//! ```text
//! services:  ip daddr . meta l4proto . th dport vmap @service-ips
//!            ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
//! cluster-2: ip saddr != <cluster CIDR> jump mark-for-masquerade
//!            dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @endpoints
//! ```
//!
//! Only Services with ClientIP affinity get chains of their own (the affinity sets are per
//! endpoint, as in kube-proxy); that cost is linear too, because none of those chains uses an
//! anonymous verdict map. Hairpin traffic is masqueraded in postrouting through
//! `ct status dnat ip saddr . ip daddr @hairpin`, and source ranges are one concatenated
//! interval set, so neither needs a chain per Service either.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{Family, transaction::BaseChain};
use crate::{
    model::Protocol,
    plan::{
        FamilyNodePlan, LocalTraffic, NoEndpoints, NodePlan, NodePortIps, PlanEndpoint, Policy,
        ServicePlan, ServicePortId,
    },
};

/// The named sets and maps of the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetName {
    ClusterIps,
    NodeportIps,
    ServiceIps,
    ServiceNodeports,
    NoEndpointServices,
    NoEndpointNodeports,
    FirewallIps,
    FirewallAllow,
    /// Endpoint maps are per protocol: nft derives the DNAT port mapping's protocol from the
    /// map's declared data, so one map cannot serve TCP, UDP and SCTP.
    Endpoints(Protocol),
    LocalEndpoints(Protocol),
    NodeportEndpoints(Protocol),
    NodeportLocalEndpoints(Protocol),
    ShortCircuit,
    LocalPolicy,
    NodeportShortCircuit,
    NodeportLocalPolicy,
    Hairpin,
    /// One element: the generation of the plan last written, read by `status`.
    Generation,
}

impl SetName {
    /// Every set and map of a table.
    pub fn all() -> Vec<SetName> {
        let mut all = vec![
            Self::ClusterIps,
            Self::NodeportIps,
            Self::ServiceIps,
            Self::ServiceNodeports,
            Self::NoEndpointServices,
            Self::NoEndpointNodeports,
            Self::FirewallIps,
            Self::FirewallAllow,
            Self::ShortCircuit,
            Self::LocalPolicy,
            Self::NodeportShortCircuit,
            Self::NodeportLocalPolicy,
            Self::Hairpin,
            Self::Generation,
        ];
        for p in PROTOCOLS {
            all.extend([
                Self::Endpoints(p),
                Self::LocalEndpoints(p),
                Self::NodeportEndpoints(p),
                Self::NodeportLocalEndpoints(p),
            ]);
        }
        all
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::ClusterIps => "cluster-ips",
            Self::NodeportIps => "nodeport-ips",
            Self::ServiceIps => "service-ips",
            Self::ServiceNodeports => "service-nodeports",
            Self::NoEndpointServices => "no-endpoint-services",
            Self::NoEndpointNodeports => "no-endpoint-nodeports",
            Self::FirewallIps => "firewall-ips",
            Self::FirewallAllow => "firewall-allow",
            Self::Endpoints(Protocol::Tcp) => "endpoints-tcp",
            Self::Endpoints(Protocol::Udp) => "endpoints-udp",
            Self::Endpoints(Protocol::Sctp) => "endpoints-sctp",
            Self::LocalEndpoints(Protocol::Tcp) => "local-endpoints-tcp",
            Self::LocalEndpoints(Protocol::Udp) => "local-endpoints-udp",
            Self::LocalEndpoints(Protocol::Sctp) => "local-endpoints-sctp",
            Self::NodeportEndpoints(Protocol::Tcp) => "nodeport-endpoints-tcp",
            Self::NodeportEndpoints(Protocol::Udp) => "nodeport-endpoints-udp",
            Self::NodeportEndpoints(Protocol::Sctp) => "nodeport-endpoints-sctp",
            Self::NodeportLocalEndpoints(Protocol::Tcp) => "nodeport-local-endpoints-tcp",
            Self::NodeportLocalEndpoints(Protocol::Udp) => "nodeport-local-endpoints-udp",
            Self::NodeportLocalEndpoints(Protocol::Sctp) => "nodeport-local-endpoints-sctp",
            Self::ShortCircuit => "short-circuit",
            Self::LocalPolicy => "local-policy",
            Self::NodeportShortCircuit => "nodeport-short-circuit",
            Self::NodeportLocalPolicy => "nodeport-local-policy",
            Self::Hairpin => "hairpin",
            Self::Generation => "generation",
        }
    }

    pub fn is_map(self) -> bool {
        !matches!(
            self,
            Self::ClusterIps
                | Self::NodeportIps
                | Self::FirewallIps
                | Self::FirewallAllow
                | Self::Hairpin
                | Self::Generation
        )
    }

    /// Elements more than one Service port may add (the same cluster IP on several ports,
    /// the same endpoint behind several Services): the syncer reference-counts them.
    pub fn is_shared(self) -> bool {
        matches!(self, Self::ClusterIps | Self::Hairpin)
    }

    /// The declaration between the braces.
    pub fn spec(self, family: Family) -> String {
        let addr = family.addr_type();
        let ip = family.ip();
        // The endpoint maps are declared with `typeof` because `numgen` has no type name. The
        // data half names the protocol's own port field: from it nft derives the protocol of
        // the DNAT port mapping (and adds the matching `meta l4proto` check), and nft 1.0.6
        // cannot add rules using a map whose typeof data says `th dport` once the map exists
        // in the kernel.
        let endpoint_data = |p: Protocol| format!("{ip} daddr . {} dport", p.name());
        match self {
            Self::ClusterIps | Self::NodeportIps => format!("type {addr} ;"),
            Self::ServiceIps
            | Self::NoEndpointServices
            | Self::ShortCircuit
            | Self::LocalPolicy => {
                format!("type {addr} . inet_proto . inet_service : verdict ;")
            }
            Self::ServiceNodeports
            | Self::NoEndpointNodeports
            | Self::NodeportShortCircuit
            | Self::NodeportLocalPolicy => "type inet_proto . inet_service : verdict ;".into(),
            Self::FirewallIps => format!("type {addr} . inet_proto . inet_service ;"),
            Self::FirewallAllow => {
                format!("type {addr} . inet_proto . inet_service . {addr} ; flags interval ;")
            }
            Self::Endpoints(p) | Self::LocalEndpoints(p) => format!(
                "typeof {ip} daddr . meta l4proto . th dport . numgen random mod 1 : {} ;",
                endpoint_data(p)
            ),
            Self::NodeportEndpoints(p) | Self::NodeportLocalEndpoints(p) => format!(
                "typeof meta l4proto . th dport . numgen random mod 1 : {} ;",
                endpoint_data(p)
            ),
            Self::Hairpin => format!("type {addr} . {addr} ;"),
            // A 32-bit number; `mark` is the 32-bit integer type nft can declare.
            Self::Generation => "type mark ;".into(),
        }
    }
}

/// The protocols a Service port can carry, in the order their maps are declared.
const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// Chains shared by every Service port with the same number of endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SharedChain {
    /// ClusterIP traffic: masquerade off-cluster sources, pick from `@endpoints`.
    Cluster(usize),
    /// External IP / LB IP traffic with the Cluster policy: masquerade, pick from `@endpoints`.
    External(usize),
    /// Pick from `@endpoints` (short-circuited traffic).
    Pick(usize),
    /// Pick from `@local-endpoints`.
    LocalPick(usize),
    /// NodePort traffic with the Cluster policy.
    Nodeport(usize),
    NodeportPick(usize),
    NodeportLocalPick(usize),
}

impl SharedChain {
    pub fn name(self) -> String {
        match self {
            Self::Cluster(n) => format!("cluster-{n}"),
            Self::External(n) => format!("external-{n}"),
            Self::Pick(n) => format!("pick-{n}"),
            Self::LocalPick(n) => format!("local-pick-{n}"),
            Self::Nodeport(n) => format!("nodeport-{n}"),
            Self::NodeportPick(n) => format!("nodeport-pick-{n}"),
            Self::NodeportLocalPick(n) => format!("nodeport-local-pick-{n}"),
        }
    }

    pub fn rules(self, ctx: &FamilyContext) -> Vec<String> {
        let ip = ctx.family.ip();
        // One DNAT rule per protocol map; each applies only to its protocol (see
        // `SetName::spec`), so exactly one of them acts on a packet.
        let by_address = |n: usize, map: fn(Protocol) -> SetName| -> Vec<String> {
            PROTOCOLS
                .iter()
                .map(|p| {
                    format!(
                        "dnat {ip} to {ip} daddr . meta l4proto . th dport . numgen random mod {n} map @{}",
                        map(*p).name()
                    )
                })
                .collect()
        };
        let by_port = |n: usize, map: fn(Protocol) -> SetName| -> Vec<String> {
            PROTOCOLS
                .iter()
                .map(|p| {
                    format!(
                        "dnat {ip} to meta l4proto . th dport . numgen random mod {n} map @{}",
                        map(*p).name()
                    )
                })
                .collect()
        };
        let masquerade = vec!["jump mark-for-masquerade".to_owned()];
        match self {
            Self::Cluster(n) => [
                ctx.internal_masquerade.iter().cloned().collect(),
                by_address(n, SetName::Endpoints),
            ]
            .concat(),
            Self::External(n) => [masquerade, by_address(n, SetName::Endpoints)].concat(),
            Self::Pick(n) => by_address(n, SetName::Endpoints),
            Self::LocalPick(n) => by_address(n, SetName::LocalEndpoints),
            Self::Nodeport(n) => [masquerade, by_port(n, SetName::NodeportEndpoints)].concat(),
            Self::NodeportPick(n) => by_port(n, SetName::NodeportEndpoints),
            Self::NodeportLocalPick(n) => by_port(n, SetName::NodeportLocalEndpoints),
        }
    }
}

/// Node facts of one family, turned into rule fragments once per sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyContext {
    pub family: Family,
    pub node_ips: Vec<IpAddr>,
    /// `ip saddr { 10.244.0.0/16 }` or `iifname "cali*"`; `None` without a detector.
    pub local_match: Option<String>,
    /// The masquerade rule of ClusterIP traffic, if any.
    pub internal_masquerade: Option<String>,
    pub mark: u32,
}

impl FamilyContext {
    pub fn new(family: Family, node: &NodePlan, mark: u32) -> Self {
        let plan = node.family(family.ip_family());
        let ip = family.ip();
        let cidrs = |nets: &[IpNet]| {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (local_match, not_local_match) = match &plan.local_traffic {
            LocalTraffic::Unknown => (None, None),
            LocalTraffic::SourceCidrs(nets) => (
                Some(format!("{ip} saddr {{ {} }}", cidrs(nets))),
                Some(format!("{ip} saddr != {{ {} }}", cidrs(nets))),
            ),
            LocalTraffic::InInterface(name) => (
                Some(format!("iifname \"{name}\"")),
                Some(format!("iifname != \"{name}\"")),
            ),
            LocalTraffic::InInterfacePrefix(prefix) => (
                Some(format!("iifname \"{prefix}*\"")),
                Some(format!("iifname != \"{prefix}*\"")),
            ),
        };
        let internal_masquerade = if node.masquerade_all {
            Some("jump mark-for-masquerade".to_owned())
        } else {
            not_local_match.map(|m| format!("{m} jump mark-for-masquerade"))
        };
        Self {
            family,
            node_ips: plan.node_ips.clone(),
            local_match,
            internal_masquerade,
            mark,
        }
    }
}

/// One set or map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub set: SetName,
    pub key: String,
    pub value: Option<String>,
}

impl Element {
    /// As nft writes it in `add element`.
    pub fn text(&self) -> String {
        match &self.value {
            Some(v) => format!("{} : {v}", self.key),
            None => self.key.clone(),
        }
    }
}

/// A chain owned by one Service port (ClientIP affinity).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnedChain {
    pub name: String,
    pub rules: Vec<String>,
}

/// A dynamic set owned by one Service port (an endpoint's affinity set). Never flushed by a
/// sync: its elements are the clients' affinity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnedSet {
    pub name: String,
    pub spec: String,
}

/// Everything one Service adds to one family's table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contribution {
    pub elements: Vec<Element>,
    pub shared_chains: Vec<SharedChain>,
    pub chains: Vec<OwnedChain>,
    pub sets: Vec<OwnedSet>,
}

fn no_endpoints_verdict(when: NoEndpoints) -> &'static str {
    match when {
        NoEndpoints::Reject => "goto reject-chain",
        NoEndpoints::Drop => "drop",
    }
}

fn addr(ip: IpAddr) -> String {
    ip.to_string()
}

fn endpoint_value(ep: &PlanEndpoint) -> String {
    format!("{} . {}", ep.ip, ep.port)
}

/// `aff-<port id>-<endpoint hash>`: stable for a (port, endpoint) pair, so an endpoint keeps
/// its clients across syncs.
fn affinity_set_name(id: ServicePortId, ep: &PlanEndpoint) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for b in ep.ip.to_string().bytes().chain(ep.port.to_be_bytes()) {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("aff-{id}-{hash:08x}")
}

fn dnat_to(family: Family, proto: &str, ep: &PlanEndpoint) -> String {
    match family {
        Family::Ip => format!("meta l4proto {proto} dnat ip to {}:{}", ep.ip, ep.port),
        Family::Ip6 => format!("meta l4proto {proto} dnat ip6 to [{}]:{}", ep.ip, ep.port),
    }
}

/// Rules choosing an endpoint with ClientIP affinity: a client seen within the timeout goes
/// back to its endpoint; otherwise one is picked uniformly (rule k matches with probability
/// 1/(n-k) given the earlier ones did not) and the client is recorded.
fn affinity_rules(
    family: Family,
    proto: &str,
    id: ServicePortId,
    endpoints: &[PlanEndpoint],
) -> Vec<String> {
    let ip = family.ip();
    let mut rules = Vec::with_capacity(endpoints.len() * 2);
    for ep in endpoints {
        let set = affinity_set_name(id, ep);
        rules.push(format!(
            "{ip} saddr @{set} update @{set} {{ {ip} saddr }} {}",
            dnat_to(family, proto, ep)
        ));
    }
    let n = endpoints.len();
    for (k, ep) in endpoints.iter().enumerate() {
        let set = affinity_set_name(id, ep);
        let chance = if k + 1 < n {
            format!("numgen random mod {} == 0 ", n - k)
        } else {
            String::new()
        };
        rules.push(format!(
            "{chance}update @{set} {{ {ip} saddr }} {}",
            dnat_to(family, proto, ep)
        ));
    }
    rules
}

/// What one Service adds to the table of `ctx.family`.
#[expect(
    clippy::too_many_lines,
    reason = "one pass over a Service port's entry points, in the order kube-proxy handles them"
)]
pub fn contribution(svc: &ServicePlan, ctx: &FamilyContext) -> Contribution {
    let mut out = Contribution::default();
    let family = ctx.family;
    for port in &svc.ports {
        let Some(fam) = port.family(family.ip_family()) else {
            continue;
        };
        let proto = port.protocol.name();
        let id = port.id;
        let key = |ip: IpAddr| format!("{} . {proto} . {}", addr(ip), port.port);
        let np_key = |np: u16| format!("{proto} . {np}");
        let mut push = |set: SetName, key: String, value: Option<String>| {
            out.elements.push(Element { set, key, value });
        };
        let affinity = port.affinity_timeout;
        let cluster = &fam.cluster_endpoints;
        let local = &fam.local_endpoints;
        let external_local = fam.external.policy == Policy::Local;

        push(SetName::ClusterIps, addr(fam.cluster_ip), None);

        // Traffic to the cluster IP.
        let internal = fam.internal_endpoints();
        let cip_key = key(fam.cluster_ip);
        if internal.is_empty() {
            push(
                SetName::NoEndpointServices,
                cip_key,
                Some(no_endpoints_verdict(fam.internal.when_empty).into()),
            );
        } else if affinity.is_some() {
            push(
                SetName::ServiceIps,
                cip_key,
                Some(format!("goto svc-{id}-int")),
            );
        } else {
            let n = internal.len();
            out.shared_chains.push(SharedChain::Cluster(n));
            for (i, ep) in internal.iter().enumerate() {
                push(
                    SetName::Endpoints(port.protocol),
                    format!("{cip_key} . {i}"),
                    Some(endpoint_value(ep)),
                );
            }
            push(
                SetName::ServiceIps,
                cip_key,
                Some(format!("goto cluster-{n}")),
            );
        }

        // Traffic to external IPs and load-balancer IPs.
        let external_empty = fam.external_endpoints().is_empty();
        for ip in fam.external_ips.iter().chain(&fam.load_balancer_ips) {
            let k = key(*ip);
            if fam.has_endpoints {
                if affinity.is_some() {
                    push(
                        SetName::ServiceIps,
                        k.clone(),
                        Some(format!("goto svc-{id}-ext")),
                    );
                } else {
                    for (i, ep) in cluster.iter().enumerate() {
                        push(
                            SetName::Endpoints(port.protocol),
                            format!("{k} . {i}"),
                            Some(endpoint_value(ep)),
                        );
                    }
                    if external_local {
                        push(
                            SetName::ServiceIps,
                            k.clone(),
                            Some("goto external-local".into()),
                        );
                        out.shared_chains.push(SharedChain::Pick(cluster.len()));
                        push(
                            SetName::ShortCircuit,
                            k.clone(),
                            Some(format!("goto pick-{}", cluster.len())),
                        );
                        if !local.is_empty() {
                            out.shared_chains.push(SharedChain::LocalPick(local.len()));
                            for (i, ep) in local.iter().enumerate() {
                                push(
                                    SetName::LocalEndpoints(port.protocol),
                                    format!("{k} . {i}"),
                                    Some(endpoint_value(ep)),
                                );
                            }
                            push(
                                SetName::LocalPolicy,
                                k.clone(),
                                Some(format!("goto local-pick-{}", local.len())),
                            );
                        }
                    } else {
                        out.shared_chains.push(SharedChain::External(cluster.len()));
                        push(
                            SetName::ServiceIps,
                            k.clone(),
                            Some(format!("goto external-{}", cluster.len())),
                        );
                    }
                }
            }
            if external_empty {
                push(
                    SetName::NoEndpointServices,
                    k,
                    Some(no_endpoints_verdict(fam.external.when_empty).into()),
                );
            }
        }

        // loadBalancerSourceRanges: only the load-balancer IPs are filtered.
        if let Some(ranges) = &fam.source_ranges
            && !fam.load_balancer_ips.is_empty()
        {
            let mut allowed = IpNet::aggregate(ranges);
            // A load balancer that assigns its IP to the node makes the node's own requests
            // arrive from that IP; kube-proxy lets them in when a range covers the node.
            if ranges
                .iter()
                .any(|r| ctx.node_ips.iter().any(|n| r.contains(n)))
            {
                allowed.extend(fam.load_balancer_ips.iter().map(|ip| IpNet::from(*ip)));
                allowed = IpNet::aggregate(&allowed);
            }
            for lb in &fam.load_balancer_ips {
                let k = key(*lb);
                for net in &allowed {
                    push(SetName::FirewallAllow, format!("{k} . {net}"), None);
                }
                push(SetName::FirewallIps, k, None);
            }
        }

        // Traffic to the node port.
        if let Some(np) = port.node_port {
            let k = np_key(np);
            if fam.has_endpoints {
                if affinity.is_some() {
                    push(
                        SetName::ServiceNodeports,
                        k.clone(),
                        Some(format!("goto svc-{id}-ext")),
                    );
                } else {
                    for (i, ep) in cluster.iter().enumerate() {
                        push(
                            SetName::NodeportEndpoints(port.protocol),
                            format!("{k} . {i}"),
                            Some(endpoint_value(ep)),
                        );
                    }
                    if external_local {
                        push(
                            SetName::ServiceNodeports,
                            k.clone(),
                            Some("goto nodeport-local".into()),
                        );
                        out.shared_chains
                            .push(SharedChain::NodeportPick(cluster.len()));
                        push(
                            SetName::NodeportShortCircuit,
                            k.clone(),
                            Some(format!("goto nodeport-pick-{}", cluster.len())),
                        );
                        if !local.is_empty() {
                            out.shared_chains
                                .push(SharedChain::NodeportLocalPick(local.len()));
                            for (i, ep) in local.iter().enumerate() {
                                push(
                                    SetName::NodeportLocalEndpoints(port.protocol),
                                    format!("{k} . {i}"),
                                    Some(endpoint_value(ep)),
                                );
                            }
                            push(
                                SetName::NodeportLocalPolicy,
                                k.clone(),
                                Some(format!("goto nodeport-local-pick-{}", local.len())),
                            );
                        }
                    } else {
                        out.shared_chains.push(SharedChain::Nodeport(cluster.len()));
                        push(
                            SetName::ServiceNodeports,
                            k.clone(),
                            Some(format!("goto nodeport-{}", cluster.len())),
                        );
                    }
                }
            }
            if external_empty {
                push(
                    SetName::NoEndpointNodeports,
                    k,
                    Some(no_endpoints_verdict(fam.external.when_empty).into()),
                );
            }
        }

        // A local pod reaching itself through the Service is masqueraded in postrouting.
        for ep in fam.reachable_endpoints().iter().filter(|e| e.local) {
            push(SetName::Hairpin, format!("{} . {}", ep.ip, ep.ip), None);
        }

        if let Some(timeout) = affinity {
            affinity_chains(&mut out, ctx, port, fam, timeout);
        }
    }
    out.shared_chains.sort_unstable();
    out.shared_chains.dedup();
    out
}

/// The chains and affinity sets of a Service port with ClientIP affinity.
fn affinity_chains(
    out: &mut Contribution,
    ctx: &FamilyContext,
    port: &crate::plan::ServicePortPlan,
    fam: &crate::plan::FamilyPlan,
    timeout: u32,
) {
    let family = ctx.family;
    let proto = port.protocol.name();
    let id = port.id;
    let addr_type = family.addr_type();
    for ep in fam.reachable_endpoints() {
        out.sets.push(OwnedSet {
            name: affinity_set_name(id, &ep),
            spec: format!("type {addr_type} ; flags dynamic,timeout ; timeout {timeout}s ;"),
        });
    }
    let cluster_chain = format!("svc-{id}-cluster");
    let local_chain = format!("svc-{id}-local");
    if !fam.cluster_endpoints.is_empty() {
        out.chains.push(OwnedChain {
            name: cluster_chain.clone(),
            rules: affinity_rules(family, proto, id, &fam.cluster_endpoints),
        });
    }
    if !fam.local_endpoints.is_empty() {
        out.chains.push(OwnedChain {
            name: local_chain.clone(),
            rules: affinity_rules(family, proto, id, &fam.local_endpoints),
        });
    }
    if !fam.internal_endpoints().is_empty() {
        let target = if fam.internal.policy == Policy::Local {
            &local_chain
        } else {
            &cluster_chain
        };
        let mut rules: Vec<String> = ctx.internal_masquerade.iter().cloned().collect();
        rules.push(format!("goto {target}"));
        out.chains.push(OwnedChain {
            name: format!("svc-{id}-int"),
            rules,
        });
    }
    let externally_reachable = port.node_port.is_some()
        || !fam.external_ips.is_empty()
        || !fam.load_balancer_ips.is_empty();
    if fam.has_endpoints && externally_reachable {
        let mut rules = Vec::new();
        if fam.external.policy == Policy::Cluster {
            rules.push("jump mark-for-masquerade".to_owned());
            rules.push(format!("goto {cluster_chain}"));
        } else {
            if let Some(m) = &ctx.local_match {
                rules.push(format!("{m} goto {cluster_chain}"));
            }
            rules.push("fib saddr type local jump mark-for-masquerade".to_owned());
            rules.push(format!("fib saddr type local goto {cluster_chain}"));
            if !fam.local_endpoints.is_empty() {
                rules.push(format!("goto {local_chain}"));
            }
        }
        out.chains.push(OwnedChain {
            name: format!("svc-{id}-ext"),
            rules,
        });
    }
}

/// The part of a family's table that does not depend on Services: base chains, dispatch
/// chains, set declarations and the node-port addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPart {
    pub chains: Vec<(String, Option<BaseChain>, Vec<String>)>,
    pub sets: Vec<SetName>,
    pub elements: Vec<Element>,
}

/// Renders the static part of a family's table.
#[expect(
    clippy::too_many_lines,
    reason = "the table's fixed skeleton, chain by chain"
)]
pub fn static_part(ctx: &FamilyContext, node: &FamilyNodePlan) -> StaticPart {
    let family = ctx.family;
    let ip = family.ip();
    let mark = format!("{:#010x}", ctx.mark);
    let no_localhost = match family {
        Family::Ip => "ip daddr != 127.0.0.0/8",
        Family::Ip6 => "ip6 daddr != ::1",
    };
    let node_port_match = match &node.node_port_ips {
        NodePortIps::AllLocal => format!("fib daddr type local {no_localhost}"),
        NodePortIps::Addresses(_) => format!("{ip} daddr @nodeport-ips"),
    };
    let base = |kind, hook, priority| {
        Some(BaseChain {
            kind,
            hook,
            priority,
        })
    };
    let new = "ct state new";
    let mut chains: Vec<(String, Option<BaseChain>, Vec<String>)> = vec![
        // Filtering sees destinations before DNAT (priority dstnat - 10), as kube-proxy does.
        (
            "filter-prerouting".into(),
            base("filter", "prerouting", -110),
            vec![format!("{new} jump firewall-check")],
        ),
        (
            "filter-input".into(),
            base("filter", "input", -110),
            vec![format!("{new} jump endpoints-check")],
        ),
        (
            "filter-forward".into(),
            base("filter", "forward", -110),
            vec![
                format!("{new} jump endpoints-check"),
                format!("{new} jump cluster-ips-check"),
            ],
        ),
        (
            "filter-output".into(),
            base("filter", "output", -110),
            vec![
                format!("{new} jump endpoints-check"),
                format!("{new} jump firewall-check"),
            ],
        ),
        // Locally generated packets are DNATed in output, after filter-output: checking for
        // unknown cluster-IP ports must wait until after that DNAT.
        (
            "filter-output-post-dnat".into(),
            base("filter", "output", -90),
            vec![format!("{new} jump cluster-ips-check")],
        ),
        (
            "nat-prerouting".into(),
            base("nat", "prerouting", -100),
            vec!["jump services".into()],
        ),
        (
            "nat-output".into(),
            base("nat", "output", -100),
            vec!["jump services".into()],
        ),
        (
            "nat-postrouting".into(),
            base("nat", "postrouting", 100),
            vec!["jump masquerading".into()],
        ),
        (
            "services".into(),
            None,
            vec![
                format!("{ip} daddr . meta l4proto . th dport vmap @service-ips"),
                format!("{node_port_match} meta l4proto . th dport vmap @service-nodeports"),
            ],
        ),
        (
            "endpoints-check".into(),
            None,
            vec![
                format!("{ip} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
                format!("{node_port_match} meta l4proto . th dport vmap @no-endpoint-nodeports"),
            ],
        ),
        (
            "firewall-check".into(),
            None,
            vec![
                format!("{ip} daddr . meta l4proto . th dport . {ip} saddr @firewall-allow return"),
                format!("{ip} daddr . meta l4proto . th dport @firewall-ips drop"),
            ],
        ),
        ("cluster-ips-check".into(), None, {
            let mut rules = vec![format!("{ip} daddr @cluster-ips reject")];
            if !node.service_cidrs.is_empty() {
                let cidrs: Vec<String> =
                    node.service_cidrs.iter().map(ToString::to_string).collect();
                rules.push(format!("{ip} daddr {{ {} }} drop", cidrs.join(", ")));
            }
            rules
        }),
        ("reject-chain".into(), None, vec!["reject".into()]),
        (
            "mark-for-masquerade".into(),
            None,
            vec![format!("meta mark set meta mark | {mark}")],
        ),
        (
            "masquerading".into(),
            None,
            vec![
                format!("ct status dnat {ip} saddr . {ip} daddr @hairpin jump mark-for-masquerade"),
                format!("meta mark & {mark} == 0 return"),
                format!("meta mark set meta mark ^ {mark}"),
                "masquerade fully-random".into(),
            ],
        ),
    ];
    // eTP Local external addresses and node ports: pods and the node itself short-circuit to
    // every endpoint; everyone else gets the local ones or, with none, is dropped by
    // endpoints-check.
    for (name, dispatch, short, local) in [
        (
            "external-local",
            format!("{ip} daddr . meta l4proto . th dport"),
            "short-circuit",
            "local-policy",
        ),
        (
            "nodeport-local",
            "meta l4proto . th dport".to_owned(),
            "nodeport-short-circuit",
            "nodeport-local-policy",
        ),
    ] {
        let mut rules = Vec::new();
        if let Some(m) = &ctx.local_match {
            rules.push(format!("{m} {dispatch} vmap @{short}"));
        }
        rules.push("fib saddr type local jump mark-for-masquerade".into());
        rules.push(format!("fib saddr type local {dispatch} vmap @{short}"));
        rules.push(format!("{dispatch} vmap @{local}"));
        chains.push((name.into(), None, rules));
    }

    let mut elements = Vec::new();
    let sets: Vec<SetName> = SetName::all()
        .into_iter()
        .filter(|s| {
            *s != SetName::NodeportIps || matches!(node.node_port_ips, NodePortIps::Addresses(_))
        })
        .collect();
    if let NodePortIps::Addresses(ips) = &node.node_port_ips {
        for ip in ips {
            elements.push(Element {
                set: SetName::NodeportIps,
                key: addr(*ip),
                value: None,
            });
        }
    }
    StaticPart {
        chains,
        sets,
        elements,
    }
}
