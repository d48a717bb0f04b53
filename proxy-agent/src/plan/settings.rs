//! The node-level settings the plan depends on (a typed subset of the agent's config).

use std::net::IpAddr;

use ipnet::IpNet;

/// How the agent tells traffic from local pods apart from everything else (kube-proxy's
/// `detectLocalMode`). Off-cluster traffic to a ClusterIP is masqueraded; pod traffic to an
/// eTP-Local external address short-circuits to all endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DetectLocal {
    /// No detector: nothing is masqueraded for being off-cluster, nothing short-circuits.
    #[default]
    None,
    /// Sources inside `clusterCIDR`.
    ClusterCidr,
    /// Sources inside this node's `podCIDRs` (from the Node object).
    NodeCidr,
    /// Packets arriving on this bridge.
    BridgeInterface(String),
    /// Packets arriving on interfaces whose name starts with this prefix.
    InterfaceNamePrefix(String),
}

/// Which node addresses accept NodePort traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// The node's primary IP of each family (kube-proxy's nftables-mode default).
    #[default]
    Primary,
    /// Local addresses inside these CIDRs; a `/0` means every local address.
    Cidrs(Vec<IpNet>),
}

/// Everything besides the cluster objects that decides the plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanSettings {
    pub node_name: String,
    pub detect_local: DetectLocal,
    pub cluster_cidrs: Vec<IpNet>,
    /// Service CIDRs: traffic to an unallocated ClusterIP in them is dropped.
    pub service_cidrs: Vec<IpNet>,
    pub node_port_addresses: NodePortAddresses,
    /// Addresses configured on this host's interfaces, read by the agent (the plan does no
    /// I/O); used with CIDR `nodePortAddresses`.
    pub local_addresses: Vec<IpAddr>,
    /// Masquerade every packet sent to a ClusterIP.
    pub masquerade_all: bool,
}
