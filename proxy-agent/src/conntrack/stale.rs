//! Which conntrack flows a sync has left pointing at a backend that no longer serves: the
//! rules of kube-proxy's `CleanStaleEntries` (pkg/proxy/conntrack/cleanup.go), with the
//! differences listed below.
//!
//! # The rule: reconcile, not diff
//!
//! After every sync, list the flows of each protocol we clean and delete a flow when
//! - it was sent to one of a Service port's addresses (a cluster IP, external IP or
//!   load-balancer IP with the port's number), or to its node port on an address that accepts
//!   node ports, and
//! - that Service port has at least one serving endpoint in the flow's family, and
//! - its reply does not come from one of those serving endpoints (address and port).
//!
//! This one rule covers both cases kube-proxy used to handle from a diff of the previous and
//! the new state (until 1.31): a flow to an endpoint that went away is answered by it and not
//! by a serving endpoint; and a flow created while the Service had no endpoint (or before its
//! rules existed) never went through DNAT, so its reply comes from the Service address itself, and
//! it goes as soon as an endpoint appears. Unlike a diff it needs no memory of the previous
//! plan, so it also repairs what a failed sync, an agent restart or a flow created between
//! two syncs left behind. It costs one dump per family and protocol that has such Service
//! ports (none at all on a node without UDP or SCTP Services), plus one more dump and the
//! deletes only when something is stale.
//!
//! "Serving" deliberately ignores traffic policies, topology and the ready-before-terminating
//! preference that choose where *new* flows go: a flow keeps running on any endpoint that
//! still serves, as a TCP connection would (a terminating pod finishes its work; a topology
//! change does not cut existing flows). That is why the serving endpoints come from the
//! EndpointSlices in [`ClusterState`] and not from the plan, which holds only the endpoints
//! this node picks. A Service port with no serving endpoint is left alone: deleting its flows
//! would gain nothing until an endpoint appears, and then the rule catches them.
//!
//! # Where we differ from kube-proxy
//! - **SCTP too.** kube-proxy cleans UDP only (kubernetes#115299 kept it so for lack of
//!   certainty, not for a reason against it). An SCTP client that re-establishes its
//!   association from the same port (telecom stacks do) is stuck on a dead backend just like a
//!   UDP client (kubernetes#70020, #106651), and since only flows whose backend no longer
//!   serves are deleted, no live association is ever cut.
//! - **The backend's port counts**, not only its address: after a target port change the
//!   same pod answers on a new port and flows to the old one are dead. A flow's reply after DNAT
//!   source is exactly the endpoint's address and port, so this adds no false positives.
//! - **A Service address wins over a node port**, as in the nftables dispatch (service IPs
//!   are looked up before node ports). kube-proxy checks a flow against both, so a flow to
//!   `clusterIP:30053` of one Service is deleted every sync when 30053 is another Service's
//!   node port.
//! - **Node port flows only on node-port addresses** when the plan names them (the default:
//!   the node's primary IP): kube-proxy matches any destination, which also deletes a pod's
//!   flow to an outside server whose port happens to equal a node port. With "all local
//!   addresses" we match any address except loopback, as kube-proxy does.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    iter,
    net::IpAddr,
};

use super::{Conntrack, ConntrackError, Flow, FlowFilter};
use crate::{
    model::{
        ClusterState, IpFamily, Protocol,
        endpoints::{PortKey, merge_slices},
    },
    plan::{NodePlan, NodePortIps, ProxyPlan},
};

/// The protocols whose stale flows are deleted. TCP is not among them: a TCP flow to a dead
/// backend ends by itself (reset or timeout) and the client reconnects from a new port.
pub const CLEANED_PROTOCOLS: [Protocol; 2] = [Protocol::Udp, Protocol::Sctp];

/// What one cleanup did, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Flows listed (of the families and protocols that have cleaned Service ports).
    pub listed: usize,
    /// Distinct (Service address, stale backend) pairs found.
    pub stale: usize,
    /// Flows the kernel deleted.
    pub deleted: usize,
}

/// The filters deleting every stale flow among `flows` (any families and protocols), one per
/// Service address and stale backend, sorted. Pure; see the module documentation for the rule.
pub fn stale_flows(plan: &ProxyPlan, state: &ClusterState, flows: &[Flow]) -> Vec<FlowFilter> {
    Frontends::new(plan, state)
        .stale(flows)
        .into_iter()
        .collect()
}

/// Lists the flows of every family and protocol that has a cleaned Service port, and deletes
/// the stale ones: what a sync runs after applying `plan`, computed from `state`.
pub fn clean_stale_flows<C: Conntrack + ?Sized>(
    conntrack: &mut C,
    plan: &ProxyPlan,
    state: &ClusterState,
) -> Result<CleanupReport, ConntrackError> {
    let frontends = Frontends::new(plan, state);
    let mut report = CleanupReport::default();
    let mut filters = BTreeSet::new();
    for (family, protocol) in frontends.scopes() {
        let flows = conntrack.flows(family, protocol)?;
        report.listed += flows.len();
        filters.extend(frontends.stale(&flows));
    }
    report.stale = filters.len();
    if !filters.is_empty() {
        for filter in &filters {
            tracing::trace!(%filter, "deleting stale conntrack flows");
        }
        let filters: Vec<FlowFilter> = filters.into_iter().collect();
        report.deleted = conntrack.delete(&filters)?;
    }
    tracing::debug!(
        listed = report.listed,
        stale = report.stale,
        deleted = report.deleted,
        "conntrack cleanup"
    );
    Ok(report)
}

/// The serving endpoints (address, port) of one Service port in one family.
type Backends = HashSet<(IpAddr, u16)>;

/// Every address a cleaned Service port receives traffic on, with its serving endpoints.
struct Frontends<'a> {
    node: &'a NodePlan,
    /// (protocol number, address, port) -> index into `backends`.
    addresses: HashMap<(u8, IpAddr, u16), usize>,
    /// (protocol number, family, node port) -> index into `backends`.
    node_ports: HashMap<(u8, IpFamily, u16), usize>,
    backends: Vec<Backends>,
}

impl<'a> Frontends<'a> {
    fn new(plan: &'a ProxyPlan, state: &ClusterState) -> Self {
        let mut frontends = Self {
            node: &plan.node,
            addresses: HashMap::new(),
            node_ports: HashMap::new(),
            backends: Vec::new(),
        };
        for service in plan.services.values() {
            let mut ports = service
                .ports
                .iter()
                .filter(|p| CLEANED_PROTOCOLS.contains(&p.protocol))
                .peekable();
            if ports.peek().is_none() {
                continue;
            }
            // The plan's errors already report anything wrong in these slices.
            let endpoints = merge_slices(
                state.slices_of(&service.name),
                &plan.node.name,
                &mut Vec::new(),
            );
            for port in ports {
                let key = PortKey {
                    name: port.port_name.clone(),
                    protocol: port.protocol,
                };
                let all = endpoints.get(&key).map_or(&[][..], Vec::as_slice);
                let protocol = port.protocol.number();
                for family in &port.families {
                    let index = frontends.backends.len();
                    frontends.backends.push(
                        all.iter()
                            // kube-proxy's IsServing; ready implies serving, also when a
                            // slice says otherwise, since the plan sends new flows there.
                            .filter(|e| IpFamily::of(e.ip) == family.family)
                            .filter(|e| e.ready || e.serving)
                            .map(|e| (e.ip, e.port))
                            .collect(),
                    );
                    for ip in iter::once(&family.cluster_ip)
                        .chain(&family.external_ips)
                        .chain(&family.load_balancer_ips)
                    {
                        frontends
                            .addresses
                            .insert((protocol, *ip, port.port), index);
                    }
                    if let Some(node_port) = port.node_port {
                        frontends
                            .node_ports
                            .insert((protocol, family.family, node_port), index);
                    }
                }
            }
        }
        frontends
    }

    /// The families and protocols that have a frontend with serving endpoints: the only flows
    /// worth listing.
    fn scopes(&self) -> BTreeSet<(IpFamily, u8)> {
        let live = |i: &usize| !self.backends[*i].is_empty();
        let addresses = self
            .addresses
            .iter()
            .filter(|(_, i)| live(i))
            .map(|((protocol, ip, _), _)| (IpFamily::of(*ip), *protocol));
        let node_ports = self
            .node_ports
            .iter()
            .filter(|(_, i)| live(i))
            .map(|((protocol, family, _), _)| (*family, *protocol));
        addresses.chain(node_ports).collect()
    }

    /// The serving endpoints of the Service port that received `flow`, if any did.
    fn backends_of(&self, flow: &Flow) -> Option<&Backends> {
        let o = &flow.original;
        if let Some(i) = self.addresses.get(&(o.protocol, o.dst, o.dst_port)) {
            return Some(&self.backends[*i]);
        }
        let i = self.node_ports.get(&(o.protocol, o.family(), o.dst_port))?;
        let accepted = match &self.node.family(o.family()).node_port_ips {
            NodePortIps::Addresses(ips) => ips.contains(&o.dst),
            NodePortIps::AllLocal => !o.dst.is_loopback(),
        };
        accepted.then(|| &self.backends[*i])
    }

    fn is_stale(&self, flow: &Flow) -> bool {
        self.backends_of(flow).is_some_and(|backends| {
            !backends.is_empty() && !backends.contains(&(flow.reply.src, flow.reply.src_port))
        })
    }

    /// One filter per (Service address, stale backend) among `flows`.
    fn stale(&self, flows: &[Flow]) -> BTreeSet<FlowFilter> {
        flows
            .iter()
            .filter(|f| self.is_stale(f))
            .map(|f| {
                FlowFilter::service_backend(
                    f.protocol(),
                    (f.original.dst, f.original.dst_port),
                    (f.reply.src, f.reply.src_port),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
