//! Building the plan, in full or for the Services that changed.

use std::{
    collections::{BTreeMap, HashMap},
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
        self.finish()
    }

    /// Plans only the named Services again (the node must be unchanged since the last
    /// [`Planner::full`]); Services no longer in `state` are dropped.
    pub fn update<'a>(
        &mut self,
        state: &ClusterState,
        changed: impl IntoIterator<Item = &'a ServiceName>,
    ) -> ProxyPlan {
        for name in changed {
            if state.service(name).is_some() {
                let outcome = Arc::new(self.plan_service(state, name));
                self.outcomes.insert(name.clone(), outcome);
            } else {
                self.outcomes.remove(name);
            }
        }
        self.finish()
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

    /// Settles conflicts between Services and assembles the plan.
    fn finish(&self) -> ProxyPlan {
        let mut claims = Claims::default();
        let mut services = BTreeMap::new();
        let mut errors = self.node_errors.clone();
        for (name, outcome) in &self.outcomes {
            errors.extend(outcome.errors.iter().cloned());
            let Some(plan) = &outcome.plan else { continue };
            let plan = claims.settle(plan, &mut errors);
            if !plan.ports.is_empty() {
                services.insert(name.clone(), plan);
            }
        }
        errors.sort();
        ProxyPlan {
            node: self.node_plan.clone(),
            services,
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

/// Who owns each address a packet can be captured by. Two Services cannot both own
/// `10.96.0.10:80/TCP` (the API prevents it for cluster IPs, but not for external IPs, and
/// manifests are not checked at all); the first Service in name order keeps it and the other
/// is reported and programmed without it.
#[derive(Default)]
struct Claims {
    addresses: HashMap<(IpAddr, Protocol, u16), ServiceName>,
    node_ports: HashMap<(Protocol, u16), ServiceName>,
    health_ports: HashMap<u16, ServiceName>,
}

impl Claims {
    /// Whether any address, node port or health-check port of `plan` belongs to another
    /// Service.
    fn conflicts(&self, plan: &ServicePlan) -> bool {
        let foreign = |owner: Option<&ServiceName>| owner.is_some_and(|o| *o != plan.name);
        plan.ports.iter().any(|port| {
            port.node_port
                .is_some_and(|np| foreign(self.node_ports.get(&(port.protocol, np))))
                || port
                    .health_check_node_port
                    .is_some_and(|hc| foreign(self.health_ports.get(&hc)))
                || port.families.iter().any(|fam| {
                    std::iter::once(&fam.cluster_ip)
                        .chain(&fam.external_ips)
                        .chain(&fam.load_balancer_ips)
                        .any(|ip| foreign(self.addresses.get(&(*ip, port.protocol, port.port))))
                })
        })
    }

    /// Claims everything `plan` uses; returns it as is when nothing conflicts (the common
    /// case, without copying), or a copy without the conflicting parts.
    fn settle(
        &mut self,
        plan: &Arc<ServicePlan>,
        errors: &mut Vec<ObjectError>,
    ) -> Arc<ServicePlan> {
        if !self.conflicts(plan) {
            for port in &plan.ports {
                if let Some(np) = port.node_port {
                    self.node_ports
                        .insert((port.protocol, np), plan.name.clone());
                }
                if let Some(hc) = port.health_check_node_port {
                    self.health_ports.insert(hc, plan.name.clone());
                }
                for fam in &port.families {
                    for ip in std::iter::once(&fam.cluster_ip)
                        .chain(&fam.external_ips)
                        .chain(&fam.load_balancer_ips)
                    {
                        self.addresses
                            .insert((*ip, port.protocol, port.port), plan.name.clone());
                    }
                }
            }
            return Arc::clone(plan);
        }
        Arc::new(self.settle_conflicts(plan, errors))
    }

    /// The slow path of [`Claims::settle`]: a copy of `plan` without what others own.
    fn settle_conflicts(
        &mut self,
        plan: &ServicePlan,
        errors: &mut Vec<ObjectError>,
    ) -> ServicePlan {
        let name = &plan.name;
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
        let claim_address = |claims: &mut HashMap<_, ServiceName>, ip, proto, port| match claims
            .get(&(ip, proto, port))
        {
            Some(owner) if owner != name => Some(owner.clone()),
            _ => {
                claims.insert((ip, proto, port), name.clone());
                None
            }
        };

        let mut settled = ServicePlan::clone(plan);
        for port in &mut settled.ports {
            let port_field = format!("spec.ports[{:?}]", port.port_name);
            if let Some(np) = port.node_port {
                match self.node_ports.get(&(port.protocol, np)) {
                    Some(owner) if owner != name => {
                        conflict(
                            format!("{port_field}.nodePort"),
                            format!("{np}/{}", port.protocol),
                            owner,
                        );
                        port.node_port = None;
                    }
                    _ => {
                        self.node_ports.insert((port.protocol, np), name.clone());
                    }
                }
            }
            if let Some(hc) = port.health_check_node_port {
                match self.health_ports.get(&hc) {
                    Some(owner) if owner != name => {
                        conflict("spec.healthCheckNodePort".into(), hc.to_string(), owner);
                        port.health_check_node_port = None;
                    }
                    _ => {
                        self.health_ports.insert(hc, name.clone());
                    }
                }
            }
            let (proto, number) = (port.protocol, port.port);
            port.families.retain_mut(|fam| {
                if let Some(owner) =
                    claim_address(&mut self.addresses, fam.cluster_ip, proto, number)
                {
                    conflict(
                        "spec.clusterIPs".into(),
                        format!("{}:{number}/{proto}", fam.cluster_ip),
                        &owner,
                    );
                    return false;
                }
                for (list, field) in [
                    (&mut fam.external_ips, "spec.externalIPs"),
                    (&mut fam.load_balancer_ips, "status.loadBalancer.ingress"),
                ] {
                    list.retain(|ip| {
                        match claim_address(&mut self.addresses, *ip, proto, number) {
                            Some(owner) => {
                                conflict(field.into(), format!("{ip}:{number}/{proto}"), &owner);
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
        settled
    }
}
