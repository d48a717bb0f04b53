//! Health, as kube-proxy reports it: `/healthz` and `/livez` for the agent, and one server per
//! health-check node port of eTP-Local LoadBalancer Services for the load balancers.
//!
//! Neither exposes any control: they answer GET with status only.

pub mod service;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

/// When the agent last queued and last finished a sync.
#[derive(Debug)]
pub struct HealthState {
    inner: Mutex<Times>,
    /// A queued update older than this without a sync makes the agent unhealthy
    /// (kube-proxy: twice the sync period).
    timeout: Duration,
}

#[derive(Debug, Default)]
struct Times {
    last_updated: Option<SystemTime>,
    last_queued: Option<SystemTime>,
    node_eligible: bool,
    /// Replaces `HealthState::timeout` once a reload changed the sync period.
    timeout: Option<Duration>,
}

impl HealthState {
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Mutex::new(Times {
                last_updated: Some(SystemTime::now()),
                last_queued: None,
                node_eligible: true,
                timeout: None,
            }),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Times> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A change is waiting for a sync.
    pub fn queued(&self) {
        let mut t = self.lock();
        if t.last_queued
            .is_none_or(|q| t.last_updated.is_some_and(|u| u >= q))
        {
            t.last_queued = Some(SystemTime::now());
        }
    }

    /// A sync finished successfully.
    pub fn updated(&self) {
        let mut t = self.lock();
        t.last_updated = Some(SystemTime::now());
        t.last_queued = None;
    }

    /// Whether this node should receive load-balancer traffic (false while the node is being
    /// deleted, as kube-proxy reports it on `/healthz` only).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.lock().node_eligible = eligible;
    }

    /// A new timeout (twice a reloaded sync period), from now on.
    pub fn set_timeout(&self, timeout: Duration) {
        self.lock().timeout = Some(timeout);
    }

    /// The timeout in force.
    pub fn timeout(&self) -> Duration {
        self.lock().timeout.unwrap_or(self.timeout)
    }

    /// kube-proxy's rule: healthy unless an update has been waiting longer than the timeout.
    pub fn is_live(&self, now: SystemTime) -> bool {
        let t = self.lock();
        let timeout = t.timeout.unwrap_or(self.timeout);
        match t.last_queued {
            None => true,
            Some(q) => now.duration_since(q).unwrap_or_default() < timeout,
        }
    }

    fn body(&self, now: SystemTime) -> String {
        let t = self.lock();
        let stamp = |s: Option<SystemTime>| {
            s.and_then(|s| jiff::Timestamp::try_from(s).ok())
                .map_or_else(|| "null".to_owned(), |t| format!("\"{t}\""))
        };
        format!(
            "{{\"lastUpdated\": {}, \"currentTime\": {}, \"nodeEligible\": {}}}",
            stamp(t.last_updated),
            stamp(Some(now)),
            t.node_eligible
        )
    }
}

async fn healthz(State(state): State<Arc<HealthState>>) -> impl IntoResponse {
    let now = SystemTime::now();
    let eligible = state.lock().node_eligible;
    let status = if state.is_live(now) && eligible {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [("content-type", "application/json")],
        state.body(now),
    )
}

async fn livez(State(state): State<Arc<HealthState>>) -> impl IntoResponse {
    let now = SystemTime::now();
    let status = if state.is_live(now) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [("content-type", "application/json")],
        state.body(now),
    )
}

/// Serves `/healthz` and `/livez` on a bound listener until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HealthState>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(state);
    axum::serve(listener, app).await
}

/// Serves `/metrics` on a bound listener until the task is dropped.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<crate::metrics::Metrics>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<crate::metrics::Metrics>>| async move {
                ([("content-type", "text/plain; version=0.0.4")], m.encode())
            }),
        )
        .with_state(metrics);
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_until_a_queued_update_waits_too_long() {
        let state = HealthState::new(Duration::from_mins(1));
        let now = SystemTime::now();
        assert!(state.is_live(now));
        state.queued();
        assert!(state.is_live(now + Duration::from_secs(59)));
        assert!(!state.is_live(now + Duration::from_secs(61)));
        state.updated();
        assert!(state.is_live(now + Duration::from_secs(61)));
        assert!(state.body(now).contains("\"nodeEligible\": true"));
    }
}
