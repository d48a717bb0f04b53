//! The proxy plan: everything this node must do for every Service port, decided once, from
//! which both the nftables path and the eBPF path are programmed.
//!
//! Pure: `compute` and [`Planner`] take a [`ClusterState`] and [`PlanSettings`] and return a
//! [`ProxyPlan`]; no tokio, kube client, aya or nftables here.

pub mod endpoints;
pub mod id;
mod planner;
pub mod route;
pub mod settings;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

pub use endpoints::PlanEndpoint;
pub use id::ServicePortId;
use ipnet::IpNet;
pub use planner::Planner;
pub use settings::{DetectLocal, NodePortAddresses, PlanSettings};

use crate::model::{
    AccelerationAnnotation, ClusterState, IpFamily, ObjectError, Protocol, ServiceName,
};

/// Computes the whole plan (what `apply` and every full sync use).
pub fn compute(state: &ClusterState, settings: &PlanSettings) -> ProxyPlan {
    Planner::new(settings.clone()).full(state)
}

/// The node's desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyPlan {
    pub node: NodePlan,
    /// Every Service that is programmed, by name. Values are shared between successive plans
    /// when a Service did not change, so comparing plans is cheap.
    pub services: BTreeMap<ServiceName, Arc<ServicePlan>>,
    /// Every problem found in the input, sorted; each object with one is skipped in part or
    /// in whole, and the rest is planned.
    pub errors: Vec<ObjectError>,
}

impl ProxyPlan {
    /// Every Service port with its Service, in name order.
    pub fn ports(&self) -> impl Iterator<Item = (&ServicePlan, &ServicePortPlan)> {
        self.services
            .values()
            .flat_map(|s| s.ports.iter().map(move |p| (s.as_ref(), p)))
    }

    /// Names of the Services that differ between two plans (added, removed or changed).
    pub fn changed_services(&self, newer: &ProxyPlan) -> Vec<ServiceName> {
        let mut changed = Vec::new();
        for (name, old) in &self.services {
            match newer.services.get(name) {
                Some(new) if Arc::ptr_eq(old, new) || old == new => {}
                _ => changed.push(name.clone()),
            }
        }
        for name in newer.services.keys() {
            if !self.services.contains_key(name) {
                changed.push(name.clone());
            }
        }
        changed.sort();
        changed
    }
}

/// Node-wide facts, per family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    pub name: String,
    pub zone: Option<String>,
    pub masquerade_all: bool,
    pub v4: FamilyNodePlan,
    pub v6: FamilyNodePlan,
}

impl NodePlan {
    pub fn family(&self, family: IpFamily) -> &FamilyNodePlan {
        match family {
            IpFamily::V4 => &self.v4,
            IpFamily::V6 => &self.v6,
        }
    }
}

/// Node facts of one IP family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyNodePlan {
    /// The node's IPs of this family from its Node object, primary first.
    pub node_ips: Vec<IpAddr>,
    pub node_port_ips: NodePortIps,
    pub local_traffic: LocalTraffic,
    pub service_cidrs: Vec<IpNet>,
}

/// Where NodePort traffic is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortIps {
    /// Only these addresses (possibly none).
    Addresses(Vec<IpAddr>),
    /// Every local address except loopback.
    AllLocal,
}

impl Default for NodePortIps {
    fn default() -> Self {
        Self::Addresses(Vec::new())
    }
}

/// How traffic from local pods is recognised, for one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LocalTraffic {
    /// Not known: no masquerade for off-cluster sources, no pod short-circuit.
    #[default]
    Unknown,
    /// Source address inside these prefixes.
    SourceCidrs(Vec<IpNet>),
    /// Arrived on this interface.
    InInterface(String),
    /// Arrived on an interface whose name starts with this prefix.
    InInterfacePrefix(String),
}

impl LocalTraffic {
    pub fn is_known(&self) -> bool {
        !matches!(self, Self::Unknown)
    }
}

/// One Service's plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    pub name: ServiceName,
    pub acceleration: AccelerationAnnotation,
    /// `hybrid-proxy.io/forwarding`.
    pub forwarding: crate::model::ForwardingAnnotation,
    pub ports: Vec<ServicePortPlan>,
}

/// One Service port's plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortPlan {
    pub id: ServicePortId,
    /// Empty for the single unnamed port of a one-port Service.
    pub port_name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    pub health_check_node_port: Option<u16>,
    /// ClientIP affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// One per family in which the Service has a cluster IP.
    pub families: Vec<FamilyPlan>,
}

impl ServicePortPlan {
    pub fn family(&self, family: IpFamily) -> Option<&FamilyPlan> {
        self.families.iter().find(|f| f.family == family)
    }
}

/// A traffic policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Any endpoint in the cluster.
    Cluster,
    /// Only endpoints on this node.
    Local,
}

/// What happens to a new connection of a traffic class that has no endpoint to go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoEndpoints {
    /// The Service has no usable endpoint anywhere: ICMP reject (the client fails fast).
    Reject,
    /// The Service has endpoints, but none this class may use here (Local policy): drop,
    /// so that a load balancer's health check takes the node out.
    Drop,
}

/// Source NAT of a traffic class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Masquerade {
    /// Client address kept.
    Never,
    /// Masquerade sources that are not local pods (per the node's local-traffic detector).
    OffCluster,
    Always,
}

/// How one class of traffic (to the cluster IP, or to the external addresses) is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficPlan {
    pub policy: Policy,
    pub masquerade: Masquerade,
    /// When this class has no endpoint.
    pub when_empty: NoEndpoints,
    /// External traffic with the Local policy only: traffic from local pods and from the node
    /// itself goes to the Cluster endpoints (the node's own traffic masqueraded), as if it had
    /// left through the load balancer and come back.
    pub short_circuit: bool,
}

/// One Service port in one IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyPlan {
    pub family: IpFamily,
    pub cluster_ip: IpAddr,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    /// `None`: unrestricted. `Some`: only these sources may use the load-balancer IPs; an
    /// empty list admits nobody (the Service restricts sources, none in this family).
    pub source_ranges: Option<Vec<IpNet>>,
    /// A usable endpoint exists somewhere in the cluster.
    pub has_endpoints: bool,
    pub cluster_endpoints: Vec<PlanEndpoint>,
    pub local_endpoints: Vec<PlanEndpoint>,
    /// Traffic to the cluster IP.
    pub internal: TrafficPlan,
    /// Traffic to the node port, the load-balancer IPs and the external IPs.
    pub external: TrafficPlan,
}

impl FamilyPlan {
    /// The endpoints a traffic class sends to.
    pub fn endpoints(&self, traffic: &TrafficPlan) -> &[PlanEndpoint] {
        match traffic.policy {
            Policy::Cluster => &self.cluster_endpoints,
            Policy::Local => &self.local_endpoints,
        }
    }

    pub fn internal_endpoints(&self) -> &[PlanEndpoint] {
        self.endpoints(&self.internal)
    }

    pub fn external_endpoints(&self) -> &[PlanEndpoint] {
        self.endpoints(&self.external)
    }

    /// Every endpoint this node may send to, each once, sorted.
    pub fn reachable_endpoints(&self) -> Vec<PlanEndpoint> {
        let mut all: Vec<PlanEndpoint> = self
            .cluster_endpoints
            .iter()
            .chain(&self.local_endpoints)
            .copied()
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
