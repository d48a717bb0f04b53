//! Health-check node ports: for every eTP-Local LoadBalancer Service, an HTTP server that
//! tells the load balancer whether this node has local endpoints (200) or not (503).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::task::JoinHandle;

use super::HealthState;
use crate::{
    model::ServiceName,
    plan::{NodePortIps, ProxyPlan},
};

/// What one health-check port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Report {
    service: ServiceName,
    local_endpoints: usize,
}

struct Server {
    report: Arc<Mutex<Report>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The running health-check servers, kept in step with the plan.
pub struct ServiceHealth {
    servers: BTreeMap<u16, Server>,
    proxy: Arc<HealthState>,
}

impl std::fmt::Debug for ServiceHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHealth")
            .field("ports", &self.servers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The health-check ports a plan asks for, with each one's Service and local endpoint count.
fn desired(plan: &ProxyPlan) -> BTreeMap<u16, Report> {
    let mut out = BTreeMap::new();
    for (svc, port) in plan.ports() {
        let Some(hc) = port.health_check_node_port else {
            continue;
        };
        let local = port
            .families
            .iter()
            .map(|f| f.local_endpoints.len())
            .max()
            .unwrap_or(0);
        let entry = out.entry(hc).or_insert_with(|| Report {
            service: svc.name.clone(),
            local_endpoints: 0,
        });
        entry.local_endpoints = entry.local_endpoints.max(local);
    }
    out
}

/// Where health-check servers listen: the node-port addresses, like the node ports.
fn bind_addresses(plan: &ProxyPlan, port: u16) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for fam in [&plan.node.v4, &plan.node.v6] {
        match &fam.node_port_ips {
            NodePortIps::Addresses(ips) => {
                out.extend(ips.iter().map(|ip| SocketAddr::new(*ip, port)));
            }
            NodePortIps::AllLocal => {}
        }
    }
    if matches!(plan.node.v4.node_port_ips, NodePortIps::AllLocal) {
        out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if matches!(plan.node.v6.node_port_ips, NodePortIps::AllLocal) {
        out.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    }
    out
}

async fn answer(
    State((report, proxy)): State<(Arc<Mutex<Report>>, Arc<HealthState>)>,
) -> impl IntoResponse {
    let r = report
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let healthy = proxy.is_live(std::time::SystemTime::now());
    let status = if r.local_endpoints > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = format!(
        "{{\"service\": {{\"namespace\": \"{}\", \"name\": \"{}\"}}, \"localEndpoints\": {}, \"serviceProxyHealthy\": {healthy}}}",
        r.service.namespace, r.service.name, r.local_endpoints
    );
    (
        status,
        [
            ("content-type", "application/json".to_owned()),
            ("x-content-type-options", "nosniff".to_owned()),
            (
                "x-load-balancing-endpoint-weight",
                r.local_endpoints.to_string(),
            ),
        ],
        body,
    )
}

impl ServiceHealth {
    pub fn new(proxy: Arc<HealthState>) -> Self {
        Self {
            servers: BTreeMap::new(),
            proxy,
        }
    }

    /// The ports served now.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }

    /// Starts, updates and stops servers to match the plan. Must run inside a tokio runtime.
    pub fn update(&mut self, plan: &ProxyPlan) {
        let want = desired(plan);
        self.servers.retain(|port, _| want.contains_key(port));
        for (port, report) in want {
            if let Some(server) = self.servers.get(&port) {
                *server
                    .report
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = report;
                continue;
            }
            let shared = Arc::new(Mutex::new(report));
            let app = Router::new()
                .fallback(get(answer))
                .with_state((shared.clone(), self.proxy.clone()));
            let mut tasks = Vec::new();
            for addr in bind_addresses(plan, port) {
                let app = app.clone();
                tasks.push(tokio::spawn(async move {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(listener) => {
                            if let Err(e) = axum::serve(listener, app).await {
                                tracing::error!(%addr, error = %e, "health-check server stopped");
                            }
                        }
                        Err(e) => tracing::error!(%addr, error = %e, "cannot listen on a health-check node port"),
                    }
                }));
            }
            self.servers.insert(
                port,
                Server {
                    report: shared,
                    tasks,
                },
            );
        }
    }
}
