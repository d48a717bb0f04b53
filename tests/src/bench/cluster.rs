//! The synthetic cluster the control-plane benchmark programs: `services` ClusterIP Services
//! of one TCP port each, every one with `endpoints` ready endpoints of its own, as the same
//! objects for the agent (a directory of JSON manifests), for the in-process syncer (a
//! [`ClusterState`]) and for kube-proxy's layout.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use proxy_agent::{
    config::Config,
    model::{
        ClusterState, ServiceName,
        fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder},
    },
    plan::PlanSettings,
};

pub const NAMESPACE: &str = "bench";
pub const NODE: &str = "node-0";
pub const NODE_IP: &str = "192.168.1.10";
/// Pod addresses: a /10, because 30,000 Services of 10 endpoints need 300,000 of them.
pub const CLUSTER_CIDR: &str = "100.64.0.0/10";
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
/// Offset of the addresses handed to endpoints added during the run.
const SPARE_BASE: usize = 2_000_000;
/// Endpoints are spread over this many nodes (only eTP/iTP Local would care).
const NODES: usize = 8;

/// The agent's configuration for the synthetic cluster, for `--config` and in-process.
pub fn config_yaml() -> String {
    format!("nodeName: {NODE}\nclusterCIDR: {CLUSTER_CIDR}\nserviceCIDRs: {SERVICE_CIDR}\n")
}

/// The configuration the agent reads, parsed the same way.
///
/// # Panics
/// Never: the text above is valid.
pub fn config() -> Config {
    Config::from_yaml(&config_yaml(), "bench").expect("the benchmark's configuration is valid")
}

/// The plan settings `proxy-agent apply` derives from [`config`] in an empty namespace.
pub fn settings() -> PlanSettings {
    config().plan_settings(Vec::new())
}

/// One Service of the synthetic cluster, in the terms kube-proxy's layout needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthService {
    pub index: usize,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

fn offset(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + u32::try_from(n).expect("addresses fit in 32 bits"))
}

/// The `index`th Service's address.
pub fn vip(index: usize) -> Ipv4Addr {
    offset(Ipv4Addr::new(10, 96, 0, 0), index + 1)
}

/// The address of endpoint `k` of Service `index` when Services have `per_service` endpoints.
/// Addresses past `services * per_service` are free for endpoints the benchmark adds later.
pub fn endpoint_ip(index: usize, k: usize, per_service: usize) -> Ipv4Addr {
    offset(Ipv4Addr::new(100, 64, 0, 0), index * per_service + k + 1)
}

pub fn service_name(index: usize) -> String {
    format!("svc-{index}")
}

pub fn service_key(index: usize) -> ServiceName {
    ServiceName::new(NAMESPACE, service_name(index))
}

/// The synthetic cluster's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub services: usize,
    pub endpoints: usize,
}

impl Shape {
    pub fn synth(self, index: usize) -> SynthService {
        SynthService {
            index,
            vip: vip(index),
            port: SERVICE_PORT,
            endpoints: (0..self.endpoints)
                .map(|k| (endpoint_ip(index, k, self.endpoints), TARGET_PORT))
                .collect(),
        }
    }

    pub fn all(self) -> Vec<SynthService> {
        (0..self.services).map(|i| self.synth(i)).collect()
    }

    /// A free address for an endpoint added later (the `n`th such), far above every
    /// Service's own.
    pub fn spare_ip(self, n: usize) -> Ipv4Addr {
        offset(Ipv4Addr::new(100, 64, 0, 0), SPARE_BASE + n)
    }
}

/// The Service object of a synthetic Service.
pub fn service(s: &SynthService) -> Service {
    ServiceBuilder::cluster_ip(NAMESPACE, &service_name(s.index), &s.vip.to_string())
        .port("http", i32::from(s.port))
        .build()
}

/// Its EndpointSlice.
pub fn slice(s: &SynthService) -> EndpointSlice {
    let port = s.endpoints.first().map_or(TARGET_PORT, |e| e.1);
    let mut b = SliceBuilder::new(NAMESPACE, &service_name(s.index)).port("http", i32::from(port));
    for (k, (ip, _)) in s.endpoints.iter().enumerate() {
        b = b.endpoint(&ip.to_string(), &format!("node-{}", (s.index + k) % NODES));
    }
    b.build()
}

fn node() -> k8s_openapi::api::core::v1::Node {
    NodeBuilder::new(NODE)
        .internal_ip(NODE_IP)
        .pod_cidr("100.64.0.0/24")
        .build()
}

/// The whole cluster as a state.
///
/// # Panics
/// Never for the objects built here (each has a namespace and a name).
pub fn state(services: &[SynthService]) -> ClusterState {
    let mut state = ClusterState::new();
    for s in services {
        state.upsert_service(service(s)).expect("named");
        state.upsert_slice(slice(s)).expect("named");
    }
    state.set_node(Some(node()));
    state
}

fn write_list<T: serde::Serialize>(
    path: &Path,
    items: impl Iterator<Item = T>,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    out.write_all(b"{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[")?;
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut out, &item)?;
    }
    out.write_all(b"]}\n")?;
    out.flush()?;
    Ok(())
}

/// Writes the cluster as manifests (JSON lists, which the agent reads as YAML: Services and
/// EndpointSlices in two files, read in parallel) and the agent's configuration; returns the
/// manifest directory and the configuration file.
pub fn write_manifests(
    dir: &Path,
    services: &[SynthService],
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)
        .with_context(|| format!("creating {}", manifests.display()))?;
    write_list(&manifests.join("node.json"), std::iter::once(node()))?;
    write_list(
        &manifests.join("services.json"),
        services.iter().map(service),
    )?;
    write_list(&manifests.join("slices.json"), services.iter().map(slice))?;
    let config = dir.join("config.yaml");
    std::fs::write(&config, config_yaml())
        .with_context(|| format!("writing {}", config.display()))?;
    Ok((manifests, config))
}
