//! Prometheus metrics: kube-proxy's names where one exists, `hybrid_proxy_*` for ours.

pub mod fast_path;

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// `traffic_policy` label of the no-local-endpoints gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficPolicyLabel {
    pub traffic_policy: String,
}

/// Labels of the rejected-objects gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectedLabels {
    pub kind: String,
    pub reason: String,
}

/// `kind` label (`full`/`partial`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncKindLabel {
    pub kind: String,
}

fn latency_buckets() -> Histogram {
    // kube-proxy's buckets: 1 ms to about 16 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histogram,
    pub full_sync_duration: Histogram,
    pub partial_sync_duration: Histogram,
    pub network_programming: Histogram,
    pub last_sync_timestamp: Gauge<f64, AtomicU64>,
    pub last_queued_timestamp: Gauge<f64, AtomicU64>,
    pub sync_failures: Counter,
    pub no_local_endpoints: Family<TrafficPolicyLabel, Gauge>,
    pub syncs: Family<SyncKindLabel, Counter>,
    pub rejected: Family<RejectedLabels, Gauge>,
    pub services: Gauge,
    pub service_ports: Gauge,
    pub conntrack_deleted: Counter,
    pub conntrack_failures: Counter,
    pub generation: Gauge,
    /// `hybrid_proxy_fastpath_*` ([`fast_path::FastPathMetrics::record`]).
    pub fast_path: fast_path::FastPathMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            sync_duration: latency_buckets(),
            full_sync_duration: latency_buckets(),
            partial_sync_duration: latency_buckets(),
            network_programming: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 16),
            ),
            last_sync_timestamp: Gauge::default(),
            last_queued_timestamp: Gauge::default(),
            sync_failures: Counter::default(),
            no_local_endpoints: Family::default(),
            syncs: Family::default(),
            rejected: Family::default(),
            services: Gauge::default(),
            service_ports: Gauge::default(),
            conntrack_deleted: Counter::default(),
            conntrack_failures: Counter::default(),
            generation: Gauge::default(),
            fast_path: fast_path::FastPathMetrics::new(),
            registry: Registry::default(),
        };
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.full_sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.partial_sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In-cluster network programming latency in seconds (from the EndpointSlice trigger time)",
            m.network_programming.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync_timestamp.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued_timestamp.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures",
            "Cumulative proxy nftables sync failures",
            m.sync_failures.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of Services with a Local traffic policy and no local endpoints",
            m.no_local_endpoints.clone(),
        );
        registry.register(
            "hybrid_proxy_syncs",
            "Successful syncs by kind",
            m.syncs.clone(),
        );
        registry.register(
            "hybrid_proxy_rejected_objects",
            "Problems in the current objects that kept a Service (or part of it) from being programmed",
            m.rejected.clone(),
        );
        registry.register(
            "hybrid_proxy_services",
            "Services programmed",
            m.services.clone(),
        );
        registry.register(
            "hybrid_proxy_service_ports",
            "Service ports programmed",
            m.service_ports.clone(),
        );
        registry.register(
            "hybrid_proxy_conntrack_stale_entries_deleted",
            "Stale UDP/SCTP conntrack entries deleted after endpoint changes",
            m.conntrack_deleted.clone(),
        );
        registry.register(
            "hybrid_proxy_conntrack_cleanup_failures",
            "Failed stale conntrack cleanups",
            m.conntrack_failures.clone(),
        );
        registry.register(
            "hybrid_proxy_generation",
            "Generation of the last plan applied to nftables",
            m.generation.clone(),
        );
        m.fast_path.register(&mut registry);
        Self { registry, ..m }
    }

    /// Registers more metrics (the fast path's).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_names_are_exported() {
        let m = Metrics::new();
        m.sync_failures.inc();
        m.no_local_endpoints
            .get_or_create(&TrafficPolicyLabel {
                traffic_policy: "external".into(),
            })
            .set(2);
        let text = m.encode();
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
            "kubeproxy_network_programming_duration_seconds_count",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total 1",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\"} 2",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
