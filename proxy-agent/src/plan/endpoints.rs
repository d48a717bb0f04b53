//! Which endpoints a Service port uses on this node: kube-proxy's `CategorizeEndpoints`.

use std::net::IpAddr;

use crate::model::Endpoint;

/// An endpoint the node may send traffic to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlanEndpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// Runs on this node.
    pub local: bool,
}

/// The endpoints of one Service port and family, sorted by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    /// Used by the Cluster traffic policy: ready endpoints allowed by topology, or, when no
    /// endpoint is ready anywhere, the serving-terminating ones.
    pub cluster: Vec<PlanEndpoint>,
    /// Used by the Local traffic policy: ready local endpoints, or, when there are none, the
    /// serving-terminating local ones.
    pub local: Vec<PlanEndpoint>,
    /// Whether the Service has a usable endpoint anywhere in the cluster. Without one, its
    /// traffic is rejected; with one but none for a Local policy, dropped.
    pub has_any: bool,
}

/// The topology mode the endpoints' hints select for this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// No hints in use: every endpoint.
    Any,
    PreferSameNode,
    PreferSameZone,
}

/// kube-proxy's `topologyModeFromHints`: hints are used only when every ready endpoint has
/// them and at least one names this node (or zone); otherwise they are ignored so that a
/// node never ends up with no endpoints because of hints.
fn topology_mode(endpoints: &[Endpoint], node_name: &str, zone: Option<&str>) -> Topology {
    let mut all_node_hints = true;
    let mut for_node = false;
    let mut all_zone_hints = true;
    let mut for_zone = false;
    for ep in endpoints.iter().filter(|e| e.ready) {
        if ep.node_hints.is_empty() {
            all_node_hints = false;
        } else if ep.node_hints.iter().any(|n| n == node_name) {
            for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if zone.is_some_and(|z| ep.zone_hints.iter().any(|h| h == z)) {
            for_zone = true;
        }
    }
    if all_node_hints && for_node {
        Topology::PreferSameNode
    } else if all_zone_hints && for_zone {
        Topology::PreferSameZone
    } else {
        Topology::Any
    }
}

fn allowed(ep: &Endpoint, mode: Topology, node_name: &str, zone: Option<&str>) -> bool {
    match mode {
        Topology::Any => true,
        Topology::PreferSameNode => ep.node_hints.iter().any(|n| n == node_name),
        Topology::PreferSameZone => zone.is_some_and(|z| ep.zone_hints.iter().any(|h| h == z)),
    }
}

/// Sorts endpoints into the Cluster and Local sets.
///
/// `uses_cluster`: some traffic class uses the Cluster policy (internal traffic policy
/// Cluster, or any external address: eTP Local still short-circuits pod traffic to all
/// endpoints). `uses_local`: some class uses the Local policy.
pub fn categorize(
    endpoints: &[Endpoint],
    uses_cluster: bool,
    uses_local: bool,
    node_name: &str,
    zone: Option<&str>,
) -> Categorized {
    let plan = |ep: &Endpoint| PlanEndpoint {
        ip: ep.ip,
        port: ep.port,
        local: ep.is_local(node_name),
    };
    let mut out = Categorized::default();

    if uses_cluster {
        let mode = topology_mode(endpoints, node_name, zone);
        out.cluster = endpoints
            .iter()
            .filter(|e| e.ready && allowed(e, mode, node_name, zone))
            .map(plan)
            .collect();
        // Topology never empties the set (the mode falls back above), so an empty set
        // means nothing is ready anywhere: fall back to endpoints still finishing requests.
        if out.cluster.is_empty() {
            out.cluster = endpoints
                .iter()
                .filter(|e| e.serving && e.terminating)
                .map(plan)
                .collect();
        }
        out.has_any = !out.cluster.is_empty();
    }

    if uses_local {
        let mut local_ready = false;
        let mut local_terminating = false;
        for ep in endpoints {
            if ep.ready {
                out.has_any = true;
                local_ready |= ep.is_local(node_name);
            } else if ep.serving && ep.terminating {
                out.has_any = true;
                local_terminating |= ep.is_local(node_name);
            }
        }
        if local_ready {
            out.local = endpoints
                .iter()
                .filter(|e| e.is_local(node_name) && e.ready)
                .map(plan)
                .collect();
        } else if local_terminating {
            out.local = endpoints
                .iter()
                .filter(|e| e.is_local(node_name) && e.serving && e.terminating)
                .map(plan)
                .collect();
        }
    }
    out
}
