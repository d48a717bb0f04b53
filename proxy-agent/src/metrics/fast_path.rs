//! `hybrid_proxy_fastpath_*`: the eBPF fast path's state, from [`FastPathGauges`] the sync
//! loop reads after each apply, observation and garbage collection.

use std::sync::{
    Mutex,
    atomic::{AtomicI64, Ordering},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::bpf::{AccelerationMode, FastPathGauges};

/// `event` label: a [`proxy_common::StatIndex`] name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

/// `mode` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: String,
}

/// `forwarding` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardingLabel {
    pub forwarding: String,
}

/// The fast path's metrics.
#[derive(Debug, Default)]
pub struct FastPathMetrics {
    up: Gauge,
    mode: Family<ModeLabel, Gauge>,
    generation: Gauge,
    accelerated: Gauge,
    counted: Gauge,
    held_for_capacity: Gauge,
    forwarding: Family<ForwardingLabel, Gauge>,
    forwarding_fallback: Gauge,
    connections: Gauge,
    connection_capacity: Gauge,
    table_full: Gauge,
    events: Family<EventLabel, Counter>,
    attachments: Gauge,
    interface_errors: Gauge,
    /// The programs' counters at the last record, to turn them into counter increments.
    last: Mutex<Vec<(String, u64)>>,
    /// `table_full` events at the last record (-1: none yet).
    last_table_full: AtomicI64,
}

impl FastPathMetrics {
    pub fn new() -> Self {
        Self {
            last_table_full: AtomicI64::new(-1),
            ..Self::default()
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hybrid_proxy_fastpath_up",
            "Whether the eBPF fast path is loaded and attached (0: nftables serves every Service; the log says why)",
            self.up.clone(),
        );
        registry.register(
            "hybrid_proxy_fastpath_mode",
            "The acceleration mode in force (1 for the current mode)",
            self.mode.clone(),
        );
        registry.register(
            "hybrid_proxy_fastpath_generation",
            "Generation of the last plan applied to the fast path's maps",
            self.generation.clone(),
        );
        registry.register(
            "hybrid_proxy_fastpath_accelerated_service_ports",
            "Service ports the fast path serves (on at least one path)",
            self.accelerated.clone(),
        );
        registry.register(
            "hybrid_proxy_fastpath_counted_service_ports",
            "Service ports whose packets the programs count (every IPv4 TCP/UDP one while acceleration is on)",
            self.counted.clone(),
        );
        registry.register(
            "hybrid_proxy_fastpath_held_for_capacity",
            "auto mode: hot service ports left on nftables because the fast path is full",
            self.held_for_capacity.clone(),
        );
        registry.register(
            "hybrid_proxy_fastpath_forwarding",
            "How new accelerated pod flows are forwarded (1 for redirect or stack, whichever is in force)",
            self.forwarding.clone(),
        );
        registry.register(
            "hybrid_proxy_fastpath_forwarding_auto_fallback",
            "1 when forwarding auto keeps pod flows on the node's stack because something there needs to see them (the log and status say what)",
            self.forwarding_fallback.clone(),
        );
        registry.register(
            "hybrid_proxy_fastpath_connection_table_entries",
            "Entries of the connection table at the last garbage collection (two per fast-path flow)",
            self.connections.clone(),
        );
        registry.register(
            "hybrid_proxy_fastpath_connection_table_capacity",
            "Capacity of the connection table",
            self.connection_capacity.clone(),
        );
        registry.register(
            "hybrid_proxy_fastpath_connection_table_full",
            "1 when new flows were sent to nftables since the last update because the connection table was full (nothing is dropped)",
            self.table_full.clone(),
        );
        registry.register(
            "hybrid_proxy_fastpath_events",
            "Packets the programs saw, by what they did (table_full: new flows sent to nftables because the connection table was full)",
            self.events.clone(),
        );
        registry.register(
            "hybrid_proxy_fastpath_attachments",
            "Programs attached (XDP and TC, per interface)",
            self.attachments.clone(),
        );
        registry.register(
            "hybrid_proxy_fastpath_interface_errors",
            "Pod interfaces the programs could not be attached to",
            self.interface_errors.clone(),
        );
    }

    /// Records the fast path's state: call it after every apply, observation and garbage
    /// collection.
    pub fn record(&self, g: &FastPathGauges) {
        let int = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.up.set(1);
        self.set_mode(g.mode);
        self.generation
            .set(i64::try_from(g.generation).unwrap_or(i64::MAX));
        self.accelerated.set(int(g.accelerated_ports));
        self.counted.set(int(g.counted_ports));
        self.held_for_capacity.set(int(g.held_for_capacity));
        for (name, on) in [
            ("redirect", g.forwarding.redirect),
            ("stack", !g.forwarding.redirect),
        ] {
            self.forwarding
                .get_or_create(&ForwardingLabel {
                    forwarding: name.to_owned(),
                })
                .set(i64::from(on));
        }
        self.forwarding_fallback
            .set(i64::from(g.forwarding.reason.is_some()));
        if let Some(flows) = g.flows {
            self.connections.set(int(flows));
        }
        self.connection_capacity.set(i64::from(g.flow_capacity));
        self.attachments.set(int(g.attachments));
        self.interface_errors.set(int(g.interface_errors));
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (index, value) in &g.stats {
            let name = index.name();
            let before = last.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
            // A counter that went down belongs to rebuilt maps: it counts from zero.
            let delta = before.map_or(*value, |b| value.checked_sub(b).unwrap_or(*value));
            self.events
                .get_or_create(&EventLabel {
                    event: name.to_owned(),
                })
                .inc_by(delta);
            last.retain(|(n, _)| n != name);
            last.push((name.to_owned(), *value));
            if *index == proxy_common::StatIndex::TableFull {
                let value = i64::try_from(*value).unwrap_or(i64::MAX);
                let before = self.last_table_full.swap(value, Ordering::Relaxed);
                self.table_full
                    .set(i64::from(before >= 0 && value > before));
            }
        }
    }

    /// The fast path could not be loaded or attached (or is not running).
    pub fn record_unavailable(&self, mode: AccelerationMode) {
        self.up.set(0);
        self.set_mode(mode);
    }

    fn set_mode(&self, mode: AccelerationMode) {
        for m in [
            AccelerationMode::Off,
            AccelerationMode::Annotated,
            AccelerationMode::Auto,
            AccelerationMode::All,
        ] {
            self.mode
                .get_or_create(&ModeLabel {
                    mode: m.to_string(),
                })
                .set(i64::from(m == mode));
        }
    }
}

#[cfg(test)]
mod tests {
    use proxy_common::StatIndex;

    use super::*;

    fn gauges(table_full: u64, new_flows: u64) -> FastPathGauges {
        FastPathGauges {
            mode: AccelerationMode::Auto,
            generation: 7,
            accelerated_ports: 2,
            counted_ports: 5,
            flows: Some(10),
            flow_capacity: 16,
            stats: vec![
                (StatIndex::NewFlow, new_flows),
                (StatIndex::TableFull, table_full),
            ],
            attachments: 3,
            interface_errors: 0,
            held_for_capacity: 1,
            forwarding: crate::bpf::forwarding::Forwarding::stack(),
        }
    }

    #[test]
    fn a_full_table_shows_until_it_stops_refusing_flows() {
        let mut registry = Registry::default();
        let m = FastPathMetrics::new();
        m.register(&mut registry);
        let text = |r: &Registry| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, r).unwrap();
            out
        };
        m.record(&gauges(0, 4));
        let t = text(&registry);
        for line in [
            "hybrid_proxy_fastpath_up 1",
            "hybrid_proxy_fastpath_mode{mode=\"auto\"} 1",
            "hybrid_proxy_fastpath_mode{mode=\"all\"} 0",
            "hybrid_proxy_fastpath_connection_table_full 0",
            "hybrid_proxy_fastpath_connection_table_entries 10",
            "hybrid_proxy_fastpath_events_total{event=\"new_flow\"} 4",
            "hybrid_proxy_fastpath_held_for_capacity 1",
        ] {
            assert!(t.contains(line), "{line} missing from\n{t}");
        }
        m.record(&gauges(3, 6));
        let t = text(&registry);
        assert!(
            t.contains("hybrid_proxy_fastpath_connection_table_full 1"),
            "{t}"
        );
        assert!(t.contains("hybrid_proxy_fastpath_events_total{event=\"table_full\"} 3"));
        assert!(t.contains("hybrid_proxy_fastpath_events_total{event=\"new_flow\"} 6"));
        m.record(&gauges(3, 9));
        assert!(text(&registry).contains("hybrid_proxy_fastpath_connection_table_full 0"));
        // Rebuilt maps count from zero again.
        m.record(&gauges(0, 2));
        assert!(
            text(&registry).contains("hybrid_proxy_fastpath_events_total{event=\"new_flow\"} 11")
        );
        m.record_unavailable(AccelerationMode::All);
        assert!(text(&registry).contains("hybrid_proxy_fastpath_up 0"));
    }
}
