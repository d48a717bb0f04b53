//! Building the plan, in full or for the Services that changed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use super::{
    FamilyNodePlan, FamilyPlan, LocalTraffic, Masquerade, NoEndpoints, NodePlan, NodePortIps,
    Policy, ProxyPlan, ServicePlan, ServicePortPlan, TrafficPlan,
    endpoints::categorize,
    id::ServicePortId,
    settings::{DetectLocal, NodePortAddresses, PlanSettings},
};
use crate::model::{
    ClusterState, IpFamily, NodeInfo, ObjectError, ObjectKind, Protocol, Service, ServiceName,
    endpoints::{EndpointsByPort, PortKey, merge_slices},
    error::InvalidReason,
    node::normalise_node,
    service::{Normalised, normalise_service},
};

/// What became of one Service: its plan before conflicts with other Services are settled,
/// and the problems found in it and its EndpointSlices.
#[derive(Debug, Default)]
struct Outcome {
    plan: Option<Arc<ServicePlan>>,
    errors: Vec<ObjectError>,
}

/// Keeps the per-Service results of the last computation so that a partial sync plans only
/// the Services that changed.
#[derive(Debug)]
pub struct Planner {
    settings: PlanSettings,
    node: NodeInfo,
    node_plan: NodePlan,
    node_errors: Vec<ObjectError>,
    outcomes: BTreeMap<ServiceName, Arc<Outcome>>,
    claims: Claims,
    /// Every Service's plan after conflicts, as the last plan had them.
    settled: BTreeMap<ServiceName, Arc<ServicePlan>>,
    /// Problems from conflicts, per Service.
    conflicts: BTreeMap<ServiceName, Vec<ObjectError>>,
}

impl Planner {
    pub fn new(settings: PlanSettings) -> Self {
        let node = NodeInfo::named(&settings.node_name);
        let node_plan = node_plan(&settings, &node);
        Self {
            settings,
            node,
            node_plan,
            node_errors: Vec::new(),
            outcomes: BTreeMap::new(),
            claims: Claims::default(),
            settled: BTreeMap::new(),
            conflicts: BTreeMap::new(),
        }
    }

    pub fn settings(&self) -> &PlanSettings {
        &self.settings
    }

    /// Plans everything again: the node and every Service.
    pub fn full(&mut self, state: &ClusterState) -> ProxyPlan {
        self.node_errors.clear();
        self.node = match state.node() {
            Some(node) => normalise_node(node, &mut self.node_errors),
            None => NodeInfo::named(&self.settings.node_name),
        };
        self.node_plan = node_plan(&self.settings, &self.node);
        self.outcomes = state
            .services()
            .map(|(name, _)| (name.clone(), Arc::new(self.plan_service(state, name))))
            .collect();
        self.claims = Claims::default();
        for (name, outcome) in &self.outcomes {
            if let Some(plan) = &outcome.plan {
                self.claims.add(name, &claim_keys(plan));
            }
        }
        self.settled.clear();
        self.conflicts.clear();
        let names: Vec<ServiceName> = self.outcomes.keys().cloned().collect();
        for name in &names {
            self.settle(name);
        }
        self.finish()
    }

    /// Plans only the named Services again (the node must be unchanged since the last
    /// [`Planner::full`]); Services no longer in `state` are dropped. Only the changed
    /// Services, and those sharing an address with them, are settled again.
    pub fn update<'a>(
        &mut self,
        state: &ClusterState,
        changed: impl IntoIterator<Item = &'a ServiceName>,
    ) -> ProxyPlan {
        let mut affected: BTreeSet<ServiceName> = BTreeSet::new();
        for name in changed {
            if let Some(plan) = self.outcomes.get(name).and_then(|o| o.plan.clone()) {
                let keys = claim_keys(&plan);
                affected.extend(self.claims.sharing(&keys).cloned());
                self.claims.remove(name, &keys);
            }
            if state.service(name).is_some() {
                let outcome = Arc::new(self.plan_service(state, name));
                if let Some(plan) = &outcome.plan {
                    let keys = claim_keys(plan);
                    self.claims.add(name, &keys);
                    affected.extend(self.claims.sharing(&keys).cloned());
                }
                self.outcomes.insert(name.clone(), outcome);
            } else {
                self.outcomes.remove(name);
            }
            affected.insert(name.clone());
        }
        for name in &affected {
            self.settle(name);
        }
        self.finish()
    }

    /// Settles one Service against the claims.
    fn settle(&mut self, name: &ServiceName) {
        self.settled.remove(name);
        self.conflicts.remove(name);
        let Some(plan) = self.outcomes.get(name).and_then(|o| o.plan.clone()) else {
            return;
        };
        let (settled, errors) = self.claims.settle(&plan);
        if !settled.ports.is_empty() {
            self.settled.insert(name.clone(), settled);
        }
        if !errors.is_empty() {
            self.conflicts.insert(name.clone(), errors);
        }
    }

    fn plan_service(&self, state: &ClusterState, name: &ServiceName) -> Outcome {
        let mut outcome = Outcome::default();
        let Some(raw) = state.service(name) else {
            return outcome;
        };
        let svc = match normalise_service(raw, &mut outcome.errors) {
            Normalised::Service(svc) => svc,
            Normalised::Ignored | Normalised::Rejected => return outcome,
        };
        let endpoints = merge_slices(
            state.slices_of(name),
            &self.settings.node_name,
            &mut outcome.errors,
        );
        outcome.plan = Some(Arc::new(plan_service(
            &svc,
            &endpoints,
            &self.node_plan,
            &self.node,
        )));
        outcome
    }

    /// Assembles the plan.
    fn finish(&self) -> ProxyPlan {
        let mut errors = self.node_errors.clone();
        for outcome in self.outcomes.values() {
            errors.extend(outcome.errors.iter().cloned());
        }
        for conflict in self.conflicts.values() {
            errors.extend(conflict.iter().cloned());
        }
        errors.sort();
        ProxyPlan {
            node: self.node_plan.clone(),
            services: self.settled.clone(),
            errors,
        }
    }
}

fn node_plan(settings: &PlanSettings, node: &NodeInfo) -> NodePlan {
    let family_plan = |family: IpFamily| {
        let in_family = |net: &&ipnet::IpNet| IpFamily::of_net(**net) == family;
        let node_ips: Vec<IpAddr> = node
            .addresses
            .iter()
            .copied()
            .filter(|ip| IpFamily::of(*ip) == family)
            .collect();
        let node_port_ips = match &settings.node_port_addresses {
            NodePortAddresses::Primary => {
                NodePortIps::Addresses(node.primary_ip(family).into_iter().collect())
            }
            NodePortAddresses::Cidrs(cidrs) => {
                let cidrs: Vec<_> = cidrs.iter().filter(in_family).collect();
                if cidrs.iter().any(|c| c.prefix_len() == 0) {
                    NodePortIps::AllLocal
                } else {
                    let mut ips: Vec<IpAddr> = settings
                        .local_addresses
                        .iter()
                        .chain(&node_ips)
                        .copied()
                        .filter(|ip| !ip.is_loopback() && cidrs.iter().any(|c| c.contains(ip)))
                        .collect();
                    ips.sort();
                    ips.dedup();
                    NodePortIps::Addresses(ips)
                }
            }
        };
        let cidrs_of = |nets: &[ipnet::IpNet]| -> LocalTraffic {
            let nets: Vec<_> = nets.iter().filter(in_family).copied().collect();
            if nets.is_empty() {
                LocalTraffic::Unknown
            } else {
                LocalTraffic::SourceCidrs(nets)
            }
        };
        let local_traffic = match &settings.detect_local {
            DetectLocal::None => LocalTraffic::Unknown,
            DetectLocal::ClusterCidr => cidrs_of(&settings.cluster_cidrs),
            DetectLocal::NodeCidr => cidrs_of(&node.pod_cidrs),
            DetectLocal::BridgeInterface(name) => LocalTraffic::InInterface(name.clone()),
            DetectLocal::InterfaceNamePrefix(prefix) => {
                LocalTraffic::InInterfacePrefix(prefix.clone())
            }
        };
        FamilyNodePlan {
            node_ips,
            node_port_ips,
            local_traffic,
            service_cidrs: settings
                .service_cidrs
                .iter()
                .filter(in_family)
                .copied()
                .collect(),
        }
    };
    NodePlan {
        name: settings.node_name.clone(),
        zone: node.zone.clone(),
        masquerade_all: settings.masquerade_all,
        v4: family_plan(IpFamily::V4),
        v6: family_plan(IpFamily::V6),
    }
}

fn plan_service(
    svc: &Service,
    endpoints: &EndpointsByPort,
    node_plan: &NodePlan,
    node: &NodeInfo,
) -> ServicePlan {
    let ports = svc
        .ports
        .iter()
        .map(|port| {
            let key = PortKey {
                name: port.name.clone(),
                protocol: port.protocol,
            };
            let port_endpoints = endpoints.get(&key).map_or(&[][..], Vec::as_slice);
            let families = svc
                .cluster_ips
                .iter()
                .map(|cluster_ip| {
                    family_plan(
                        svc,
                        port.node_port,
                        *cluster_ip,
                        port_endpoints,
                        node_plan,
                        node,
                    )
                })
                .collect();
            ServicePortPlan {
                id: ServicePortId::new(&svc.name, &port.name, port.protocol),
                port_name: port.name.clone(),
                protocol: port.protocol,
                port: port.port,
                node_port: port.node_port,
                health_check_node_port: svc.health_check_node_port,
                affinity_timeout: svc.affinity_timeout,
                families,
            }
        })
        .collect();
    ServicePlan {
        name: svc.name.clone(),
        acceleration: svc.acceleration,
        forwarding: svc.forwarding,
        ports,
    }
}

fn family_plan(
    svc: &Service,
    node_port: Option<u16>,
    cluster_ip: IpAddr,
    endpoints: &[crate::model::Endpoint],
    node_plan: &NodePlan,
    node: &NodeInfo,
) -> FamilyPlan {
    let family = IpFamily::of(cluster_ip);
    let of_family = |ips: &[IpAddr]| -> Vec<IpAddr> {
        ips.iter()
            .copied()
            .filter(|ip| IpFamily::of(*ip) == family)
            .collect()
    };
    let external_ips = of_family(&svc.external_ips);
    let load_balancer_ips = of_family(&svc.load_balancer_ips);
    let source_ranges = svc.source_ranges.as_ref().map(|ranges| {
        ranges
            .iter()
            .copied()
            .filter(|r| IpFamily::of_net(*r) == family)
            .collect()
    });
    let endpoints: Vec<_> = endpoints
        .iter()
        .filter(|e| IpFamily::of(e.ip) == family)
        .cloned()
        .collect();

    // kube-proxy's UsesClusterEndpoints / UsesLocalEndpoints, per port and family.
    let externally_accessible =
        node_port.is_some() || !external_ips.is_empty() || !load_balancer_ips.is_empty();
    let external_local = svc.external_policy_local;
    let uses_cluster = !svc.internal_policy_local || externally_accessible;
    let uses_local = svc.internal_policy_local || (external_local && externally_accessible);
    let categorized = categorize(
        &endpoints,
        uses_cluster,
        uses_local,
        &node.name,
        node.zone.as_deref(),
    );
    let when_empty = if categorized.has_any {
        NoEndpoints::Drop
    } else {
        NoEndpoints::Reject
    };

    let internal_masquerade = if node_plan.masquerade_all {
        Masquerade::Always
    } else if node_plan.family(family).local_traffic.is_known() {
        Masquerade::OffCluster
    } else {
        Masquerade::Never
    };
    FamilyPlan {
        family,
        cluster_ip,
        external_ips,
        load_balancer_ips,
        source_ranges,
        has_endpoints: categorized.has_any,
        cluster_endpoints: categorized.cluster,
        local_endpoints: categorized.local,
        internal: TrafficPlan {
            policy: if svc.internal_policy_local {
                Policy::Local
            } else {
                Policy::Cluster
            },
            masquerade: internal_masquerade,
            when_empty,
            short_circuit: false,
        },
        external: if external_local {
            TrafficPlan {
                policy: Policy::Local,
                masquerade: Masquerade::Never,
                when_empty,
                short_circuit: true,
            }
        } else {
            TrafficPlan {
                policy: Policy::Cluster,
                masquerade: Masquerade::Always,
                when_empty,
                short_circuit: false,
            }
        },
    }
}

/// What a Service port can be captured by; two Services cannot share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum ClaimKey {
    Address(IpAddr, Protocol, u16),
    NodePort(Protocol, u16),
    HealthPort(u16),
}

/// Who asks for each address a packet can be captured by. Two Services cannot both own
/// `10.96.0.10:80/TCP` (the API prevents it for cluster IPs, but not for external IPs, and
/// manifests are not checked at all); the first Service in name order that asks keeps it,
/// and the others are reported and programmed without it. Every claimant is remembered, so
/// that when a Service changes only the Services sharing one of its keys are settled again.
#[derive(Debug, Default)]
struct Claims {
    claimants: HashMap<ClaimKey, BTreeSet<ServiceName>>,
}

/// Every key a plan asks for.
fn claim_keys(plan: &ServicePlan) -> Vec<ClaimKey> {
    let mut keys = Vec::new();
    for port in &plan.ports {
        if let Some(np) = port.node_port {
            keys.push(ClaimKey::NodePort(port.protocol, np));
        }
        if let Some(hc) = port.health_check_node_port {
            keys.push(ClaimKey::HealthPort(hc));
        }
        for fam in &port.families {
            for ip in std::iter::once(&fam.cluster_ip)
                .chain(&fam.external_ips)
                .chain(&fam.load_balancer_ips)
            {
                keys.push(ClaimKey::Address(*ip, port.protocol, port.port));
            }
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

impl Claims {
    fn add(&mut self, name: &ServiceName, keys: &[ClaimKey]) {
        for key in keys {
            self.claimants.entry(*key).or_default().insert(name.clone());
        }
    }

    fn remove(&mut self, name: &ServiceName, keys: &[ClaimKey]) {
        for key in keys {
            if let Some(set) = self.claimants.get_mut(key) {
                set.remove(name);
                if set.is_empty() {
                    self.claimants.remove(key);
                }
            }
        }
    }

    /// Everyone asking for any of `keys`.
    fn sharing(&self, keys: &[ClaimKey]) -> impl Iterator<Item = &ServiceName> {
        keys.iter().filter_map(|k| self.claimants.get(k)).flatten()
    }

    /// Who owns a key, if not `name`.
    fn other_owner(&self, key: ClaimKey, name: &ServiceName) -> Option<&ServiceName> {
        self.claimants
            .get(&key)
            .and_then(|set| set.first())
            .filter(|owner| *owner != name)
    }

    /// `plan` as it is when it owns everything it asks for (the common case, without
    /// copying), or a copy without what others own, with the problems that causes.
    fn settle(&self, plan: &Arc<ServicePlan>) -> (Arc<ServicePlan>, Vec<ObjectError>) {
        let name = &plan.name;
        if claim_keys(plan)
            .into_iter()
            .all(|k| self.other_owner(k, name).is_none())
        {
            return (Arc::clone(plan), Vec::new());
        }
        let mut errors = Vec::new();
        let mut conflict = |field: String, value: String, owner: &ServiceName| {
            errors.push(ObjectError {
                kind: ObjectKind::Service,
                namespace: name.namespace.clone(),
                name: name.name.clone(),
                field,
                reason: InvalidReason::Conflict {
                    value,
                    owner: format!("Service {owner}"),
                },
            });
        };
        let mut settled = ServicePlan::clone(plan);
        for port in &mut settled.ports {
            // Port names are unique within a Service; an unnamed port is a one-port Service's
            // only port.
            let port_field = if port.port_name.is_empty() {
                "spec.ports[0]".to_owned()
            } else {
                format!("spec.ports[{:?}]", port.port_name)
            };
            if let Some(np) = port.node_port
                && let Some(owner) = self.other_owner(ClaimKey::NodePort(port.protocol, np), name)
            {
                conflict(
                    format!("{port_field}.nodePort"),
                    format!("{np}/{}", port.protocol),
                    owner,
                );
                port.node_port = None;
            }
            if let Some(hc) = port.health_check_node_port
                && let Some(owner) = self.other_owner(ClaimKey::HealthPort(hc), name)
            {
                conflict("spec.healthCheckNodePort".into(), hc.to_string(), owner);
                port.health_check_node_port = None;
            }
            let (proto, number) = (port.protocol, port.port);
            port.families.retain_mut(|fam| {
                if let Some(owner) =
                    self.other_owner(ClaimKey::Address(fam.cluster_ip, proto, number), name)
                {
                    conflict(
                        "spec.clusterIPs".into(),
                        format!("{}:{number}/{proto}", fam.cluster_ip),
                        owner,
                    );
                    return false;
                }
                for (list, field) in [
                    (&mut fam.external_ips, "spec.externalIPs"),
                    (&mut fam.load_balancer_ips, "status.loadBalancer.ingress"),
                ] {
                    list.retain(|ip| {
                        match self.other_owner(ClaimKey::Address(*ip, proto, number), name) {
                            Some(owner) => {
                                conflict(field.into(), format!("{ip}:{number}/{proto}"), owner);
                                false
                            }
                            None => true,
                        }
                    });
                }
                true
            });
        }
        settled.ports.retain(|p| !p.families.is_empty());
        (Arc::new(settled), errors)
    }
}
