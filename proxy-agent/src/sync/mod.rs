//! The sync loop: events from a source go into the cluster state; changes are coalesced and
//! turned into one plan, written to nftables (authoritative) and then to the fast path.
//!
//! - Nothing is synced before every kind has been listed once (kube-proxy's
//!   `isInitialized`), so a starting agent never programs a half-known cluster.
//! - Changes are coalesced: a sync happens at most every `min_sync_period`; a `Replace` (a
//!   re-list) and any node change trigger a full sync; otherwise only the changed Services
//!   are planned and written (a partial sync).
//! - Every `sync_period` a sync runs even without changes, and every `full_sync_period` it
//!   is a full one.
//! - A failed sync is retried with exponential backoff, as a full sync.
//! - One tracing span per sync carries `full|partial`, the counts and the duration.

pub mod events;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::core::v1 as core;
use tokio::sync::mpsc;

pub use self::events::{EventSink, LogEvents};
use crate::{
    bpf::{FastPath, FastPathConfig},
    conntrack::{self, NetlinkConntrack},
    health::{HealthState, service::ServiceHealth},
    metrics::{Metrics, RejectedLabels, SyncKindLabel, TrafficPolicyLabel},
    model::{ClusterState, ObjectError, ObjectKind, ServiceName},
    nft::{NftBackend, NftSyncer, SyncKind},
    plan::{Planner, Policy, ProxyPlan},
    source::{Kind, Object, SourceEvent},
};

/// Annotation on EndpointSlices with the time the change behind them was triggered.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Timing of the loop.
#[derive(Clone, Debug)]
pub struct Timing {
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    pub full_sync_period: Duration,
    /// First retry delay after a failed sync; doubles up to `sync_period`.
    pub retry_initial: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            full_sync_period: Duration::from_hours(1),
            retry_initial: Duration::from_secs(1),
        }
    }
}

/// What the loop needs besides the nftables backend.
pub struct Parts {
    pub planner: Planner,
    pub metrics: Arc<Metrics>,
    pub health: Arc<HealthState>,
    pub events: Arc<dyn EventSink>,
    /// The fast path's settings, when it should run: opened at the first sync, once the
    /// Node object has said which pod CIDRs find the pod interfaces.
    pub fast_path: Option<FastPathConfig>,
    pub udp_stale_entry_cleanup: bool,
    pub timing: Timing,
    /// Drop every capability but those proxying needs after the first sync (which mounts
    /// bpffs and opens the fast path).
    pub drop_capabilities: bool,
}

/// Requests to the loop from other tasks.
#[derive(Debug)]
pub enum Control {
    /// Interfaces or routes changed: attach to new pod interfaces.
    InterfacesChanged,
    /// Time to remove ended flows from the fast path's connection table.
    CollectGarbage,
    /// Time for `auto` mode to read the per-service counters and move hot services (every
    /// [`crate::bpf::OBSERVE_PERIOD`]); outside `auto` mode only the metrics are refreshed.
    Observe,
    /// The configuration file changed (or SIGHUP): apply what can change without a restart.
    Reload(Box<Reload>),
}

/// The parts of a new configuration the loop applies live.
#[derive(Debug)]
pub struct Reload {
    pub settings: crate::plan::PlanSettings,
    pub mark: u32,
    pub fast_path: Option<FastPathConfig>,
    pub udp_stale_entry_cleanup: bool,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
}

/// The loop's state between syncs.
pub struct SyncLoop<B: NftBackend> {
    nft: NftSyncer<B>,
    parts: Parts,
    state: ClusterState,
    listed: BTreeSet<Kind>,
    dirty: BTreeSet<ServiceName>,
    need_full: bool,
    plan: Option<ProxyPlan>,
    /// Generation of the last sync; 0 until the first one reads what the kernel holds.
    generation: u32,
    /// Problems last reported per Service, so each change is reported once.
    reported: BTreeMap<ServiceName, Vec<ObjectError>>,
    /// Trigger times of EndpointSlice changes waiting to be programmed.
    pending_triggers: Vec<SystemTime>,
    service_health: ServiceHealth,
    last_full: Option<Instant>,
    failures: u32,
    fast_path: Option<FastPath>,
    fast_path_tried: bool,
    /// Sync even without changes (after a configuration reload).
    force_sync: bool,
}

impl<B: NftBackend> SyncLoop<B> {
    pub fn new(nft: NftSyncer<B>, parts: Parts) -> Self {
        let service_health = ServiceHealth::new(parts.health.clone());
        Self {
            nft,
            parts,
            state: ClusterState::new(),
            listed: BTreeSet::new(),
            dirty: BTreeSet::new(),
            need_full: true,
            plan: None,
            reported: BTreeMap::new(),
            pending_triggers: Vec::new(),
            service_health,
            last_full: None,
            failures: 0,
            fast_path: None,
            fast_path_tried: false,
            force_sync: false,
            generation: 0,
        }
    }

    /// Whether every kind has been listed once.
    pub fn ready(&self) -> bool {
        Kind::ALL.iter().all(|k| self.listed.contains(k))
    }

    pub fn plan(&self) -> Option<&ProxyPlan> {
        self.plan.as_ref()
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn nft(&self) -> &NftSyncer<B> {
        &self.nft
    }

    pub fn fast_path_mut(&mut self) -> Option<&mut FastPath> {
        self.fast_path.as_mut()
    }

    /// Handles a control request. Blocking (netlink, bpf syscalls).
    pub fn control(&mut self, request: Control) {
        if let Control::Reload(reload) = request {
            self.reload(*reload);
            return;
        }
        let Some(fp) = self.fast_path.as_mut() else {
            return;
        };
        match request {
            Control::Reload(_) => {}
            Control::InterfacesChanged => match fp.sync_interfaces() {
                Ok(changes) => tracing::debug!(?changes, "pod interfaces synced"),
                Err(e) => tracing::warn!(error = %e, "attaching to pod interfaces failed"),
            },
            Control::CollectGarbage => {
                match fp.collect_garbage() {
                    Ok(report) => tracing::debug!(?report, "fast-path flows collected"),
                    Err(e) => tracing::warn!(error = %e, "collecting fast-path flows failed"),
                }
                // New flows follow a changed forwarding decision; started ones keep theirs.
                if fp.recheck_forwarding()
                    && let Some(plan) = &self.plan
                    && let Err(e) = fp.apply(plan, u64::from(self.generation))
                {
                    tracing::warn!(error = %e, "applying the new forwarding failed");
                }
            }
            Control::Observe => {
                // Before the first sync there is no plan to move services within.
                if let Some(plan) = &self.plan {
                    match fp.observe(plan, u64::from(self.generation)) {
                        Ok(report) if !report.changes.is_empty() => {
                            tracing::info!(%report, "auto acceleration moved services");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(
                            error = %e,
                            "auto acceleration failed; the services stay where they are"
                        ),
                    }
                }
            }
        }
        self.record_fast_path();
    }

    /// Refreshes the `hybrid_proxy_fastpath_*` metrics from the fast path's maps.
    fn record_fast_path(&self) {
        let Some(fp) = &self.fast_path else {
            return;
        };
        match fp.gauges() {
            Ok(gauges) => self.parts.metrics.fast_path.record(&gauges),
            Err(e) => tracing::debug!(error = %e, "reading the fast path's figures failed"),
        }
    }

    /// Applies a new configuration: plan settings and the masquerade mark take a full sync;
    /// the fast path changes mode in place, or is re-opened (adopting its pinned maps, so no
    /// flow moves) when its interfaces or pin path change; timing applies from the next sync.
    fn reload(&mut self, new: Reload) {
        if *self.parts.planner.settings() != new.settings {
            tracing::info!("configuration: plan settings changed; a full sync follows");
            self.parts.planner = Planner::new(new.settings);
            self.need_full = true;
        }
        if self.nft.mark() != new.mark {
            tracing::info!("configuration: masquerade mark changed; a full sync follows");
            self.nft.set_mark(new.mark);
            self.need_full = true;
        }
        self.parts.udp_stale_entry_cleanup = new.udp_stale_entry_cleanup;
        if self.parts.timing.min_sync_period != new.min_sync_period
            || self.parts.timing.sync_period != new.sync_period
        {
            tracing::info!(
                min_sync_period = ?new.min_sync_period,
                sync_period = ?new.sync_period,
                "configuration: sync timing changed"
            );
        }
        self.parts.timing.min_sync_period = new.min_sync_period;
        self.parts.timing.sync_period = new.sync_period;
        // kube-proxy's /healthz threshold is twice the sync period.
        self.parts.health.set_timeout(new.sync_period * 2);
        if self.parts.fast_path == new.fast_path {
            return;
        }
        let same_attachments = match (&self.parts.fast_path, &new.fast_path) {
            (Some(old), Some(new)) => {
                old.node_interfaces == new.node_interfaces
                    && old.pod_interfaces == new.pod_interfaces
                    && old.pin_path == new.pin_path
                    && old.xdp_mode == new.xdp_mode
            }
            _ => false,
        };
        match (&mut self.fast_path, &new.fast_path) {
            (Some(fp), Some(cfg)) if same_attachments => {
                tracing::info!(
                    mode = %cfg.mode,
                    forwarding = %cfg.forwarding,
                    "configuration: acceleration settings changed"
                );
                fp.set_mode(cfg.mode);
                fp.set_auto_thresholds(cfg.auto.clone());
                fp.set_forwarding(cfg.forwarding);
            }
            (Some(fp), None) => {
                // Off, and nothing pinned to keep: leave what is attached serving the flows it
                // has (new flows go to nftables).
                tracing::info!("configuration: acceleration off");
                fp.set_mode(crate::bpf::AccelerationMode::Off);
            }
            _ => {
                // New interfaces or pin path (or the fast path was not running): open again at
                // the next sync; pinned maps are adopted, so no established flow moves.
                tracing::info!("configuration: fast path settings changed; re-opening it");
                self.fast_path = None;
                self.fast_path_tried = false;
            }
        }
        self.parts.fast_path = new.fast_path;
        // Write the hot services for the new mode even if nothing else changed.
        self.force_sync = true;
    }

    /// Opens the fast path once, at the first sync (it needs the node's pod CIDRs). A
    /// failure is logged and nftables serves everything.
    fn open_fast_path(&mut self) {
        if self.fast_path_tried {
            return;
        }
        self.fast_path_tried = true;
        let Some(config) = &self.parts.fast_path else {
            return;
        };
        let pod_cidrs: Vec<ipnet::IpNet> = self
            .state
            .node()
            .map(|n| crate::model::node::normalise_node(n, &mut Vec::new()).pod_cidrs)
            .unwrap_or_default();
        match FastPath::open(config, &pod_cidrs) {
            Ok(fp) => {
                tracing::info!(mode = %config.mode, pin_path = %config.pin_path.display(), "fast path ready");
                self.fast_path = Some(fp);
            }
            Err(e) => {
                tracing::error!(error = %e, "the eBPF fast path is unavailable; nftables serves every Service");
            }
        }
    }

    /// Whether there is anything to sync.
    pub fn has_changes(&self) -> bool {
        self.need_full || self.force_sync || !self.dirty.is_empty()
    }

    /// Takes one event into the state.
    pub fn handle(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Replace { kind, objects } => {
                self.listed.insert(kind);
                // A re-list means the watch could not resume: rebuild everything.
                self.need_full = true;
                match kind {
                    Kind::Services => {
                        let services = objects.into_iter().filter_map(|o| match o {
                            Object::Service(s) => Some(s),
                            _ => None,
                        });
                        let (_, problems) = self.state.replace_services(services.collect());
                        log_unidentified(&problems);
                    }
                    Kind::EndpointSlices => {
                        let slices: Vec<_> = objects
                            .into_iter()
                            .filter_map(|o| match o {
                                Object::Slice(s) => Some(s),
                                _ => None,
                            })
                            .collect();
                        self.note_triggers(slices.iter());
                        let (_, problems) = self.state.replace_slices(slices);
                        log_unidentified(&problems);
                    }
                    Kind::Node => {
                        let node = objects.into_iter().find_map(|o| match o {
                            Object::Node(n) => Some(n),
                            _ => None,
                        });
                        self.set_node(node);
                    }
                }
            }
            SourceEvent::Applied(object) => match object {
                Object::Service(svc) => match self.state.upsert_service(svc) {
                    Ok(name) => {
                        self.dirty.insert(name);
                    }
                    Err(e) => log_unidentified(&[*e]),
                },
                Object::Slice(slice) => {
                    self.note_triggers(std::iter::once(&slice));
                    match self.state.upsert_slice(slice) {
                        Ok(affected) => self.dirty.extend(affected),
                        Err(e) => log_unidentified(&[*e]),
                    }
                }
                Object::Node(node) => self.set_node(Some(node)),
            },
            SourceEvent::Deleted(object) => match object {
                Object::Service(svc) => {
                    let name = ServiceName::new(
                        svc.metadata.namespace.clone().unwrap_or_default(),
                        svc.metadata.name.clone().unwrap_or_default(),
                    );
                    if self.state.remove_service(&name) {
                        self.dirty.insert(name);
                    }
                }
                Object::Slice(slice) => {
                    let affected = self.state.remove_slice(
                        slice.metadata.namespace.as_deref().unwrap_or_default(),
                        slice.metadata.name.as_deref().unwrap_or_default(),
                    );
                    self.dirty.extend(affected);
                }
                Object::Node(_) => self.set_node(None),
            },
            SourceEvent::Problems(lines) => {
                for line in lines {
                    tracing::warn!(problem = %line, "skipped a manifest document");
                }
            }
        }
        if self.has_changes() {
            self.parts.health.queued();
            self.parts
                .metrics
                .last_queued_timestamp
                .set(unix_seconds(SystemTime::now()));
        }
    }

    fn set_node(&mut self, node: Option<core::Node>) {
        let eligible = node
            .as_ref()
            .is_none_or(|n| n.metadata.deletion_timestamp.is_none());
        self.parts.health.set_node_eligible(eligible);
        if self.state.set_node(node) {
            self.need_full = true;
        }
    }

    fn note_triggers<'a>(
        &mut self,
        slices: impl Iterator<Item = &'a k8s_openapi::api::discovery::v1::EndpointSlice>,
    ) {
        for slice in slices {
            let trigger = slice
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            if let Some(t) = trigger {
                self.pending_triggers.push(SystemTime::from(t));
            }
        }
    }

    /// Plans and writes whatever changed. Blocking (nft, netlink, bpf syscalls): call it
    /// from a thread that may block.
    pub fn sync(&mut self) -> Result<SyncKind, crate::nft::NftError> {
        let started = Instant::now();
        let full_due = self
            .last_full
            .is_none_or(|t| t.elapsed() >= self.parts.timing.full_sync_period);
        let full = self.need_full || full_due;
        let plan = if full {
            self.parts.planner.full(&self.state)
        } else {
            self.parts.planner.update(&self.state, &self.dirty)
        };
        let dirty = self.dirty.len();
        if self.generation == 0 {
            // Generations keep growing across restarts: continue from what the kernel holds.
            self.generation = self
                .nft
                .backend_mut()
                .read_generation()
                .ok()
                .flatten()
                .unwrap_or(0);
        }
        self.generation = self.generation.wrapping_add(1).max(1);
        self.nft.set_generation(self.generation);
        let span = tracing::info_span!(
            "sync",
            kind = tracing::field::Empty,
            generation = self.generation,
            services = plan.services.len(),
            changed = dirty,
            problems = plan.errors.len(),
            duration_ms = tracing::field::Empty,
        );
        let _entered = span.enter();
        if full {
            self.nft.force_full();
        }
        let result = self.nft.sync(&plan);
        let elapsed = started.elapsed();
        span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                self.failures += 1;
                self.need_full = true;
                self.parts.metrics.sync_failures.inc();
                tracing::error!(error = %e, "sync failed; the previous rules stay in force, retrying as a full sync");
                return Err(e);
            }
        };
        span.record("kind", report.kind.name());
        self.failures = 0;
        self.need_full = false;
        self.force_sync = false;
        self.dirty.clear();
        if report.kind == SyncKind::Full {
            self.last_full = Some(Instant::now());
        }
        self.after_nft(&plan, report.kind, elapsed);
        tracing::info!(
            elements_added = report.elements_added,
            elements_deleted = report.elements_deleted,
            "synced"
        );
        self.plan = Some(plan);
        Ok(report.kind)
    }

    /// Everything that follows a successful nftables write.
    fn after_nft(&mut self, plan: &ProxyPlan, kind: SyncKind, elapsed: Duration) {
        let m = &self.parts.metrics;
        let seconds = elapsed.as_secs_f64();
        m.sync_duration.observe(seconds);
        match kind {
            SyncKind::Full => m.full_sync_duration.observe(seconds),
            SyncKind::Partial => m.partial_sync_duration.observe(seconds),
        }
        m.syncs
            .get_or_create(&SyncKindLabel {
                kind: kind.name().into(),
            })
            .inc();
        let now = SystemTime::now();
        m.last_sync_timestamp.set(unix_seconds(now));
        for t in self.pending_triggers.drain(..) {
            if let Ok(latency) = now.duration_since(t) {
                m.network_programming.observe(latency.as_secs_f64());
            }
        }
        m.generation.set(i64::from(self.generation));
        m.services
            .set(i64::try_from(plan.services.len()).unwrap_or(i64::MAX));
        m.service_ports
            .set(i64::try_from(plan.ports().count()).unwrap_or(i64::MAX));
        let (mut internal, mut external) = (0i64, 0i64);
        for (_, port) in plan.ports() {
            for fam in &port.families {
                if fam.has_endpoints
                    && fam.internal.policy == Policy::Local
                    && fam.local_endpoints.is_empty()
                {
                    internal += 1;
                }
                let external_reachable = port.node_port.is_some()
                    || !fam.external_ips.is_empty()
                    || !fam.load_balancer_ips.is_empty();
                if external_reachable
                    && fam.has_endpoints
                    && fam.external.policy == Policy::Local
                    && fam.local_endpoints.is_empty()
                {
                    external += 1;
                }
            }
        }
        m.no_local_endpoints
            .get_or_create(&TrafficPolicyLabel {
                traffic_policy: "internal".into(),
            })
            .set(internal);
        m.no_local_endpoints
            .get_or_create(&TrafficPolicyLabel {
                traffic_policy: "external".into(),
            })
            .set(external);
        m.rejected.clear();
        for e in &plan.errors {
            m.rejected
                .get_or_create(&RejectedLabels {
                    kind: e.kind.to_string(),
                    reason: e.reason.code().into(),
                })
                .inc();
        }
        self.parts.health.updated();

        if self.parts.udp_stale_entry_cleanup {
            match conntrack::clean_stale_flows(&mut NetlinkConntrack::new(), plan, &self.state) {
                Ok(r) => {
                    m.conntrack_deleted
                        .inc_by(u64::try_from(r.deleted).unwrap_or(u64::MAX));
                }
                Err(e) => {
                    m.conntrack_failures.inc();
                    tracing::warn!(error = %e, "stale conntrack cleanup failed; retried next sync");
                }
            }
        }
        self.open_fast_path();
        if let Some(fp) = self.fast_path.as_mut() {
            match fp.apply(plan, u64::from(self.generation)) {
                Ok(report) => tracing::debug!(
                    accelerated = report.accelerated_ports(),
                    "fast path updated"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "fast path update failed; nftables serves every Service");
                }
            }
        }
        self.record_fast_path();
        self.report_problems(plan);
        self.service_health.update(plan);
        if std::mem::take(&mut self.parts.drop_capabilities) {
            match crate::host::drop_capabilities() {
                Ok(()) => tracing::info!("dropped every capability but NET_ADMIN, BPF and PERFMON"),
                Err(e) => tracing::warn!(error = %e, "could not drop capabilities"),
            }
        }
    }

    /// Sends an Event for every Service whose problems changed since the last report.
    fn report_problems(&mut self, plan: &ProxyPlan) {
        let mut current: BTreeMap<ServiceName, Vec<ObjectError>> = BTreeMap::new();
        for e in plan.errors.iter().filter(|e| e.kind == ObjectKind::Service) {
            current
                .entry(ServiceName::new(&e.namespace, &e.name))
                .or_default()
                .push(e.clone());
        }
        for (name, errors) in &current {
            if self.reported.get(name) != Some(errors)
                && let Some(svc) = self.state.service(name)
            {
                self.parts.events.service_invalid(svc, errors);
            }
        }
        self.reported = current;
    }

    /// The timing in force (a reload changes it).
    pub fn timing(&self) -> &Timing {
        &self.parts.timing
    }

    /// When the loop syncs next, given when it last synced and when a retry is due: `None`
    /// until every kind was listed. Read from the timing in force, so that a reload of
    /// `minSyncPeriod` or `syncPeriod` applies from the next decision.
    pub fn next_due(
        &self,
        now: tokio::time::Instant,
        last_sync: Option<tokio::time::Instant>,
        retry_at: Option<tokio::time::Instant>,
    ) -> Option<tokio::time::Instant> {
        let timing = &self.parts.timing;
        if !self.ready() {
            None
        } else if let Some(r) = retry_at {
            Some(r)
        } else if self.has_changes() {
            Some(last_sync.map_or(now, |t| t + timing.min_sync_period))
        } else {
            Some(last_sync.unwrap_or(now) + timing.sync_period)
        }
    }

    /// Runs until the event channel closes or `shutdown` resolves.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<SourceEvent>,
        mut control: mpsc::Receiver<Control>,
        shutdown: impl Future<Output = ()>,
    ) -> Self {
        tokio::pin!(shutdown);
        let started = tokio::time::Instant::now();
        let mut last_sync: Option<tokio::time::Instant> = None;
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            // Decided afresh every time round: a reload may have changed the timing.
            let due = self
                .next_due(
                    tokio::time::Instant::now(),
                    Some(last_sync.unwrap_or(started)),
                    retry_at,
                )
                .map(|at| {
                    // Changes before the first sync wait for nothing.
                    if last_sync.is_none() && self.has_changes() {
                        tokio::time::Instant::now()
                    } else {
                        at
                    }
                });
            let sleep = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return self,
                event = events.recv() => {
                    let Some(e) = event else {
                        tracing::warn!("the source stopped; keeping the rules in place");
                        return self;
                    };
                    self.handle(e);
                    // Take everything already queued before deciding to sync.
                    while let Ok(e) = events.try_recv() {
                        self.handle(e);
                    }
                }
                Some(request) = control.recv() => {
                    tokio::task::block_in_place(|| self.control(request));
                }
                () = sleep => {
                    retry_at = None;
                    let result = tokio::task::block_in_place(|| self.sync());
                    last_sync = Some(tokio::time::Instant::now());
                    if result.is_err() {
                        let timing = &self.parts.timing;
                        let backoff = timing.retry_initial.saturating_mul(1 << self.failures.min(10)).min(timing.sync_period);
                        retry_at = Some(tokio::time::Instant::now() + backoff);
                    }
                }
            }
        }
    }
}

fn log_unidentified(problems: &[ObjectError]) {
    for p in problems {
        tracing::warn!(problem = %p, "skipped an object that cannot be identified");
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests;
