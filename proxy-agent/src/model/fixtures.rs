//! Builders for Kubernetes objects, for tests, benchmarks and fuzzing.
//!
//! ```
//! use proxy_agent::model::fixtures::{ServiceBuilder, SliceBuilder};
//! let svc = ServiceBuilder::cluster_ip("default", "web", "10.96.0.10").port("http", 80).build();
//! let slice = SliceBuilder::new("default", "web").port("http", 8080).endpoint("10.244.1.5", "node-a").build();
//! assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 80);
//! assert_eq!(slice.endpoints.len(), 1);
//! ```

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{
            ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeSpec,
            NodeStatus, Service, ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
        },
        discovery::v1::{
            Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode,
            ForZone,
        },
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::{endpoints::SERVICE_NAME_LABEL, node::ZONE_LABEL};

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

/// Builds a `Service`.
#[derive(Clone, Debug)]
#[must_use]
pub struct ServiceBuilder {
    svc: Service,
}

impl ServiceBuilder {
    /// A ClusterIP Service; `cluster_ip` may list two addresses separated by a comma for dual
    /// stack.
    pub fn cluster_ip(namespace: &str, name: &str, cluster_ip: &str) -> Self {
        let ips: Vec<String> = cluster_ip.split(',').map(str::to_owned).collect();
        Self {
            svc: Service {
                metadata: meta(namespace, name),
                spec: Some(ServiceSpec {
                    type_: Some("ClusterIP".into()),
                    cluster_ip: ips.first().cloned(),
                    cluster_ips: Some(ips),
                    ..ServiceSpec::default()
                }),
                status: None,
            },
        }
    }

    /// A headless Service (`clusterIP: None`).
    pub fn headless(namespace: &str, name: &str) -> Self {
        Self::cluster_ip(namespace, name, "None")
    }

    /// An ExternalName Service.
    pub fn external_name(namespace: &str, name: &str, target: &str) -> Self {
        let mut b = Self::cluster_ip(namespace, name, "");
        let spec = b.spec();
        spec.type_ = Some("ExternalName".into());
        spec.cluster_ip = None;
        spec.cluster_ips = None;
        spec.external_name = Some(target.to_owned());
        b
    }

    fn spec(&mut self) -> &mut ServiceSpec {
        self.svc.spec.get_or_insert_with(ServiceSpec::default)
    }

    fn last_port(&mut self) -> &mut ServicePort {
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .last_mut()
            .expect("add a port first")
    }

    /// Adds a TCP port whose target port is the port name (resolved through the slices).
    pub fn port(mut self, name: &str, port: i32) -> Self {
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(ServicePort {
                name: (!name.is_empty()).then(|| name.to_owned()),
                port,
                protocol: Some("TCP".into()),
                target_port: (!name.is_empty()).then(|| IntOrString::String(name.to_owned())),
                ..ServicePort::default()
            });
        self
    }

    /// Sets the protocol of the last port (`TCP`, `UDP`, `SCTP`, or anything, to test errors).
    pub fn protocol(mut self, protocol: &str) -> Self {
        self.last_port().protocol = Some(protocol.to_owned());
        self
    }

    /// Sets the node port of the last port and makes the Service a NodePort Service (unless
    /// it is a LoadBalancer already).
    pub fn node_port(mut self, node_port: i32) -> Self {
        self.last_port().node_port = Some(node_port);
        let spec = self.spec();
        if spec.type_.as_deref() != Some("LoadBalancer") {
            spec.type_ = Some("NodePort".into());
        }
        self
    }

    /// Makes it a LoadBalancer Service with these ingress IPs.
    pub fn load_balancer(mut self, ips: &[&str]) -> Self {
        self.spec().type_ = Some("LoadBalancer".into());
        self.svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ips.iter()
                        .map(|ip| LoadBalancerIngress {
                            ip: Some((*ip).to_owned()),
                            ..LoadBalancerIngress::default()
                        })
                        .collect(),
                ),
            }),
            ..ServiceStatus::default()
        });
        self
    }

    /// Marks every load-balancer ingress as `ipMode: Proxy`.
    pub fn ip_mode_proxy(mut self) -> Self {
        if let Some(ingress) = self
            .svc
            .status
            .as_mut()
            .and_then(|s| s.load_balancer.as_mut())
            .and_then(|l| l.ingress.as_mut())
        {
            for i in ingress {
                i.ip_mode = Some("Proxy".into());
            }
        }
        self
    }

    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges =
            Some(ranges.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    pub fn external_policy_local(mut self) -> Self {
        self.spec().external_traffic_policy = Some("Local".into());
        self
    }

    pub fn internal_policy_local(mut self) -> Self {
        self.spec().internal_traffic_policy = Some("Local".into());
        self
    }

    pub fn health_check_node_port(mut self, port: i32) -> Self {
        self.spec().health_check_node_port = Some(port);
        self
    }

    /// ClientIP session affinity, with a timeout when given.
    pub fn affinity(mut self, timeout_seconds: Option<i32>) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = timeout_seconds.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(t),
            }),
        });
        self
    }

    pub fn traffic_distribution(mut self, value: &str) -> Self {
        self.spec().traffic_distribution = Some(value.to_owned());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.svc
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Edits the spec directly, for cases the builder has no method for.
    pub fn with_spec(mut self, edit: impl FnOnce(&mut ServiceSpec)) -> Self {
        edit(self.spec());
        self
    }

    pub fn build(self) -> Service {
        self.svc
    }
}

/// Builds an `EndpointSlice` for a Service.
#[derive(Clone, Debug)]
#[must_use]
pub struct SliceBuilder {
    slice: EndpointSlice,
}

impl SliceBuilder {
    /// An IPv4 slice named `<service>-<n>` where n defaults to `1`.
    pub fn new(namespace: &str, service: &str) -> Self {
        let mut metadata = meta(namespace, &format!("{service}-1"));
        metadata.labels = Some(BTreeMap::from([(
            SERVICE_NAME_LABEL.to_owned(),
            service.to_owned(),
        )]));
        Self {
            slice: EndpointSlice {
                address_type: "IPv4".into(),
                endpoints: Vec::new(),
                metadata,
                ports: Some(Vec::new()),
            },
        }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.slice.metadata.name = Some(name.to_owned());
        self
    }

    pub fn ipv6(mut self) -> Self {
        self.slice.address_type = "IPv6".into();
        self
    }

    pub fn address_type(mut self, address_type: &str) -> Self {
        address_type.clone_into(&mut self.slice.address_type);
        self
    }

    /// Adds a TCP port named like the Service port it serves.
    pub fn port(self, name: &str, port: i32) -> Self {
        self.port_with_protocol(name, port, "TCP")
    }

    pub fn port_with_protocol(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.slice
            .ports
            .get_or_insert_with(Vec::new)
            .push(EndpointPort {
                name: Some(name.to_owned()),
                port: Some(port),
                protocol: Some(protocol.to_owned()),
                app_protocol: None,
            });
        self
    }

    /// Adds a ready endpoint on a node (an empty node name leaves `nodeName` unset).
    pub fn endpoint(mut self, ip: &str, node: &str) -> Self {
        self.slice.endpoints.push(Endpoint {
            addresses: vec![ip.to_owned()],
            node_name: (!node.is_empty()).then(|| node.to_owned()),
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            ..Endpoint::default()
        });
        self
    }

    fn last(&mut self) -> &mut Endpoint {
        self.slice
            .endpoints
            .last_mut()
            .expect("add an endpoint first")
    }

    /// Sets the last endpoint's conditions.
    pub fn conditions(mut self, ready: bool, serving: bool, terminating: bool) -> Self {
        self.last().conditions = Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        });
        self
    }

    /// The last endpoint is terminating but still serving (a pod shutting down gracefully).
    pub fn terminating_serving(self) -> Self {
        self.conditions(false, true, true)
    }

    /// The last endpoint is not ready (and not serving).
    pub fn not_ready(self) -> Self {
        self.conditions(false, false, false)
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.last().zone = Some(zone.to_owned());
        self
    }

    /// Topology hints of the last endpoint: zones it should serve.
    pub fn hint_zones(mut self, zones: &[&str]) -> Self {
        let hints = self.last().hints.get_or_insert_with(EndpointHints::default);
        hints.for_zones = Some(
            zones
                .iter()
                .map(|z| ForZone {
                    name: (*z).to_owned(),
                })
                .collect(),
        );
        self
    }

    /// Topology hints of the last endpoint: nodes it should serve.
    pub fn hint_nodes(mut self, nodes: &[&str]) -> Self {
        let hints = self.last().hints.get_or_insert_with(EndpointHints::default);
        hints.for_nodes = Some(
            nodes
                .iter()
                .map(|n| ForNode {
                    name: (*n).to_owned(),
                })
                .collect(),
        );
        self
    }

    pub fn build(self) -> EndpointSlice {
        self.slice
    }
}

/// Builds a `Node`.
#[derive(Clone, Debug)]
#[must_use]
pub struct NodeBuilder {
    node: Node,
}

impl NodeBuilder {
    pub fn new(name: &str) -> Self {
        Self {
            node: Node {
                metadata: meta("", name),
                spec: Some(NodeSpec::default()),
                status: Some(NodeStatus::default()),
            },
        }
    }

    fn address(mut self, kind: &str, ip: &str) -> Self {
        let status = self.node.status.get_or_insert_with(NodeStatus::default);
        status
            .addresses
            .get_or_insert_with(Vec::new)
            .push(NodeAddress {
                address: ip.to_owned(),
                type_: kind.to_owned(),
            });
        self
    }

    pub fn internal_ip(self, ip: &str) -> Self {
        self.address("InternalIP", ip)
    }

    pub fn external_ip(self, ip: &str) -> Self {
        self.address("ExternalIP", ip)
    }

    pub fn pod_cidr(mut self, cidr: &str) -> Self {
        let spec = self.node.spec.get_or_insert_with(NodeSpec::default);
        spec.pod_cidr.get_or_insert_with(|| cidr.to_owned());
        spec.pod_cidrs
            .get_or_insert_with(Vec::new)
            .push(cidr.to_owned());
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.node
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(ZONE_LABEL.to_owned(), zone.to_owned());
        self
    }

    pub fn build(self) -> Node {
        self.node
    }
}
