//! The fast path as the agent drives it: open (load or adopt, attach, pin), apply a plan,
//! collect ended flows, follow pod interfaces, report status.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::Path,
    time::Duration,
};

use ipnet::{IpNet, Ipv4Net};
use proxy_common::{LAYOUT_VERSION, Meta, StatIndex, iface, service_flags};

use super::{
    config::{AccelerationMode, AutoThresholds, FastPathConfig, PodInterfaces},
    eligibility::PortEligibility,
    forwarding::{self, Facts, Forwarding},
    kernel::{self, Attachment, Datapath, Hook},
    netlink,
    object::{BpfError, embedded_object},
    policy::{AutoPolicy, Capacity, Changes},
    reconcile::{self, ApplyReport, Counters, GcReport, KernelConntrack, Syncer},
    store::{self, MapStore as _},
    table,
};
use crate::plan::{ProxyPlan, ServicePortId};

/// How often the daemon should call [`FastPath::observe`] in `auto` mode: the window over
/// which packet rates are averaged.
pub const OBSERVE_PERIOD: Duration = Duration::from_secs(2);

/// The attached, pinned fast path.
pub struct FastPath {
    config: FastPathConfig,
    datapath: Datapath,
    syncer: Syncer,
    pod_cidrs: Vec<Ipv4Net>,
    attachments: Vec<Attachment>,
    /// Pod interfaces that could not be attached, with why (retried on the next
    /// [`FastPath::sync_interfaces`]).
    interface_errors: Vec<(String, String)>,
    /// Why the pinned state was thrown away at open, if it was.
    rebuilt: Option<String>,
    adopted: bool,
    policy: AutoPolicy,
    /// Entries of the connection table at the last garbage collection.
    flows_at_gc: Option<usize>,
    /// Pods of this node the programs deliver to (`HP_LOCAL_EPS`), at the last refresh.
    local_endpoints: usize,
}

/// What one [`FastPath::observe`] did.
#[derive(Clone, Debug, Default)]
pub struct ObserveReport {
    /// Ports the policy moved (empty outside `auto` mode).
    pub changes: Changes,
    /// The re-apply that moved them, if anything moved.
    pub applied: Option<ApplyReport>,
}

impl fmt::Display for ObserveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |v: &[ServicePortId]| {
            v.iter()
                .map(|i| format!("{:016x}", i.0))
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "auto: promoted [{}], demoted [{}]",
            ids(&self.changes.promoted),
            ids(&self.changes.demoted)
        )
    }
}

/// The figures the daemon exports as `hybrid_proxy_fastpath_*` metrics (cheap to read:
/// no walk of the connection table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastPathGauges {
    pub mode: AccelerationMode,
    pub generation: u64,
    /// Service ports accelerated on at least one path.
    pub accelerated_ports: usize,
    /// Service ports counted (every TCP/UDP one, either family, while the mode is not `off`).
    pub counted_ports: usize,
    /// Entries of the connection table at the last garbage collection.
    pub flows: Option<usize>,
    pub flow_capacity: u32,
    /// The programs' counters (cumulative).
    pub stats: Vec<(StatIndex, u64)>,
    pub attachments: usize,
    pub interface_errors: usize,
    /// `auto`: hot ports held back because the fast path is full.
    pub held_for_capacity: usize,
    pub forwarding: Forwarding,
}

/// What [`FastPath::sync_interfaces`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceChanges {
    pub attached: Vec<String>,
    pub forgotten: Vec<String>,
    pub failed: Vec<(String, String)>,
}

/// Everything `proxy-agent status` shows about the fast path.
#[derive(Clone, Debug)]
pub struct FastPathStatus {
    pub generation: u64,
    pub layout_version: u32,
    pub adopted: bool,
    pub rebuilt: Option<String>,
    pub attachments: Vec<Attachment>,
    pub interface_errors: Vec<(String, String)>,
    pub ports: Vec<PortEligibility>,
    pub counters: Counters,
    /// `auto`: the rate the policy last measured of each port it considers.
    pub rates: BTreeMap<ServicePortId, f64>,
    /// Connection-table entries, both families.
    pub flows: usize,
    /// Capacity of each family's connection table.
    pub flow_capacity: u32,
    /// How new pod flows of unannotated Services are forwarded, and why.
    pub forwarding: Forwarding,
    /// Pods of this node the programs can deliver to.
    pub local_endpoints: usize,
}

impl fmt::Display for FastPathStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fast path: generation {}, layout v{}{}, connection table {}/{}",
            self.generation,
            self.layout_version,
            if self.adopted { ", adopted" } else { "" },
            self.flows,
            self.flow_capacity
        )?;
        if let Some(r) = &self.rebuilt {
            writeln!(f, "  rebuilt at start: {r}")?;
        }
        writeln!(
            f,
            "  forwarding: {} ({} local pods known)",
            self.forwarding, self.local_endpoints
        )?;
        for a in &self.attachments {
            writeln!(f, "  attached: {a}")?;
        }
        for (i, e) in &self.interface_errors {
            writeln!(f, "  not attached: {i}: {e}")?;
        }
        for p in &self.ports {
            let c = self.counters.service(p.id);
            write!(
                f,
                "  {p} [{} packets seen, {} on the fast path, {} redirected",
                c.seen_packets, c.fast_packets, c.redirected_packets
            )?;
            if let Some(r) = self.rates.get(&p.id) {
                write!(f, ", {r:.0} pps")?;
            }
            writeln!(f, "]")?;
        }
        for (i, c) in &self.counters.stats {
            writeln!(f, "  {}: {} packets", i.name(), c.packets)?;
        }
        Ok(())
    }
}

fn v4_nets(nets: &[IpNet]) -> Vec<Ipv4Net> {
    nets.iter()
        .filter_map(|n| match n {
            IpNet::V4(v4) => Some(*v4),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// The pod-facing interfaces of this namespace, by the configured rule.
pub fn pod_interfaces(
    rule: &PodInterfaces,
    pod_cidrs: &[Ipv4Net],
    exclude: &[String],
) -> Result<Vec<String>, BpfError> {
    let io = |source| BpfError::Io {
        what: "listing interfaces and routes",
        source,
    };
    let links = netlink::links().map_err(io)?;
    let all: Vec<(String, u32)> = links.iter().map(|l| (l.name.clone(), l.index)).collect();
    let mut out: BTreeSet<String> = BTreeSet::new();
    match rule {
        PodInterfaces::PodCidrRoutes => {
            for r in netlink::ipv4_routes().map_err(io)? {
                let Ok(net) = Ipv4Net::new(r.dst, r.prefix_len) else {
                    continue;
                };
                if pod_cidrs.iter().any(|c| c.contains(&net))
                    && let Some((name, _)) = all.iter().find(|(_, i)| *i == r.oif)
                {
                    out.insert(name.clone());
                }
            }
        }
        PodInterfaces::Names(names) => {
            out.extend(
                all.iter()
                    .filter(|(n, _)| names.contains(n))
                    .map(|(n, _)| n.clone()),
            );
        }
        PodInterfaces::Prefixes(prefixes) => {
            out.extend(
                all.iter()
                    .filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p.as_str())))
                    .map(|(n, _)| n.clone()),
            );
        }
    }
    // A bridge holding the pod route (Flannel's cni0) stands for its ports: the programs
    // must see each pod's packets before the bridge switches them between pods.
    let masters: Vec<(u32, u32)> = links
        .iter()
        .filter_map(|l| Some((l.index, l.master?)))
        .collect();
    let bridges: Vec<(String, u32)> = all
        .iter()
        .filter(|(n, i)| out.contains(n) && masters.iter().any(|(_, m)| m == i))
        .cloned()
        .collect();
    for (bridge, index) in bridges {
        out.remove(&bridge);
        for (port, _) in masters.iter().filter(|(_, m)| *m == index) {
            if let Some((name, _)) = all.iter().find(|(_, i)| i == port) {
                out.insert(name.clone());
            }
        }
    }
    out.remove("lo");
    for e in exclude {
        out.remove(e);
    }
    Ok(out.into_iter().collect())
}

impl FastPath {
    /// Loads the programs (or adopts the pinned maps of a previous agent, flows included),
    /// attaches them to the node and pod-facing interfaces and pins everything under
    /// `config.pin_path`. `node_pod_cidrs`: this node's pod CIDRs (to find pod interfaces).
    ///
    /// Pinned maps of another layout version are not adopted: everything pinned is removed
    /// and rebuilt (fast-path flows then restart on nftables; see the status's `rebuilt`).
    pub fn open(config: &FastPathConfig, node_pod_cidrs: &[IpNet]) -> Result<Self, BpfError> {
        let object = embedded_object()?;
        let pin = config.pin_path.as_path();
        kernel::prepare_pin_dir(pin)?;
        let mut rebuilt = None;
        let mut adopted = false;
        if let Some(meta) = kernel::pinned_layout(pin) {
            if kernel::layout_matches(&meta) {
                adopted = true;
            } else {
                rebuilt = Some(format!(
                    "pinned maps have layout v{}, this agent writes v{LAYOUT_VERSION}",
                    meta.layout_version
                ));
                kernel::cleanup(pin)?;
                kernel::prepare_pin_dir(pin)?;
            }
        }
        let mut datapath = Datapath::load(object, Some(pin), config.flow_entries)?;
        let mut policy = AutoPolicy::new(
            config.auto.clone(),
            Capacity::of_maps(config.auto.max_services),
        );
        if adopted && config.mode == AccelerationMode::Auto {
            // What the previous agent accelerated stays (for `min_dwell`) until measured.
            let maps = store::read_service_maps(&mut datapath.maps)?;
            policy.adopt(
                maps.services
                    .values()
                    .filter(|v| v.flags & service_flags::COUNT_ONLY == 0)
                    .map(|v| ServicePortId(v.id)),
                now(),
            );
        }
        let old = datapath.maps.meta()?;
        datapath.maps.set_meta(Meta {
            layout_version: LAYOUT_VERSION,
            forwarding: old.forwarding,
            generation: old.generation,
            object_hash: kernel::object_hash(object),
        })?;
        let mut fp = Self {
            config: config.clone(),
            datapath,
            syncer: Syncer::new(config.mode),
            pod_cidrs: v4_nets(node_pod_cidrs),
            attachments: Vec::new(),
            interface_errors: Vec::new(),
            rebuilt,
            adopted,
            policy,
            flows_at_gc: None,
            local_endpoints: 0,
        };
        // Egress before ingress everywhere: an interface must never translate a client's
        // packets without being able to translate the replies (the reply hook goes first on
        // node interfaces: it serves the replies of redirect flows).
        for iface in &config.node_interfaces {
            for hook in [Hook::TcReply, Hook::TcEgress, Hook::Xdp] {
                let a = fp
                    .datapath
                    .attach(iface, hook, config.xdp_mode, Some(pin))?;
                fp.attachments.push(a);
            }
        }
        fp.sync_interfaces()?;
        // Judged once the pod interfaces are known: another owner's program there counts.
        fp.recheck_forwarding();
        Ok(fp)
    }

    /// Attaches to pod interfaces that appeared and forgets those that vanished (or no longer
    /// match). Run it when netlink reports a link or route change (see
    /// [`InterfaceWatcher`]).
    pub fn sync_interfaces(&mut self) -> Result<InterfaceChanges, BpfError> {
        let pin = self.config.pin_path.clone();
        let wanted = pod_interfaces(
            &self.config.pod_interfaces,
            &self.pod_cidrs,
            &self.config.node_interfaces,
        )?;
        let current: Vec<(String, u32)> = netlink::interfaces().map_err(|source| BpfError::Io {
            what: "listing interfaces",
            source,
        })?;
        let mut changes = InterfaceChanges::default();
        // Forget attachments whose interface is gone (or was replaced: another index) or is
        // no longer wanted.
        let node: BTreeSet<&String> = self.config.node_interfaces.iter().collect();
        for (a, path) in kernel::pinned_links(&pin) {
            let alive = current
                .iter()
                .any(|(n, i)| *n == a.interface && *i == a.if_index);
            let keep = alive && (wanted.contains(&a.interface) || node.contains(&a.interface));
            if !keep {
                kernel::detach_pinned(&path);
                self.attachments.retain(|x| x != &a);
                if !changes.forgotten.contains(&a.interface) {
                    changes.forgotten.push(a.interface.clone());
                }
            }
        }
        self.interface_errors.clear();
        for iface in wanted {
            let have = |hook| {
                self.attachments
                    .iter()
                    .any(|a| a.interface == iface && a.hook == hook)
            };
            if have(Hook::TcEgress) && have(Hook::TcIngress) {
                continue;
            }
            let mut attached = Vec::new();
            let mut failure = None;
            for hook in [Hook::TcEgress, Hook::TcIngress] {
                match self
                    .datapath
                    .attach(&iface, hook, self.config.xdp_mode, Some(&pin))
                {
                    Ok(a) => attached.push(a),
                    Err(e) => {
                        failure = Some(error_chain(&e));
                        break;
                    }
                }
            }
            if let Some(e) = failure {
                changes.failed.push((iface.clone(), e.clone()));
                self.interface_errors.push((iface, e));
            } else {
                changes.attached.push(iface);
            }
            for a in attached {
                if !self.attachments.contains(&a) {
                    self.attachments.push(a);
                }
            }
        }
        self.attachments.sort();
        self.refresh_local_endpoints()?;
        Ok(changes)
    }

    /// Rewrites `HP_LOCAL_EPS` from the node's host routes through the attached pod
    /// interfaces, their MACs and the pods' (from the neighbour table).
    pub fn refresh_local_endpoints(&mut self) -> Result<usize, BpfError> {
        let io = |source| BpfError::Io {
            what: "reading routes, links and neighbours",
            source,
        };
        let pod_ifs: BTreeSet<u32> = self
            .attachments
            .iter()
            .filter(|a| a.hook == Hook::TcIngress)
            .map(|a| a.if_index)
            .collect();
        let want = forwarding::local_endpoints(
            &netlink::ipv4_routes().map_err(io)?,
            &netlink::links()
                .map_err(io)?
                .iter()
                .filter_map(|l| Some((l.index, l.mac?)))
                .collect::<Vec<_>>(),
            &netlink::ipv4_neighbours().map_err(io)?,
            &netlink::bridge_fdb().map_err(io)?,
            &pod_ifs,
        );
        table::converge(self.datapath.maps.local_endpoints(), &want).map_err(BpfError::Store)?;
        let mut interfaces: BTreeMap<u32, u32> = BTreeMap::new();
        for a in &self.attachments {
            match a.hook {
                Hook::TcIngress => *interfaces.entry(a.if_index).or_default() |= iface::POD,
                Hook::TcReply => *interfaces.entry(a.if_index).or_default() |= iface::NODE,
                Hook::Xdp | Hook::TcEgress => {}
            }
        }
        table::converge(self.datapath.maps.interfaces(), &interfaces).map_err(BpfError::Store)?;
        self.local_endpoints = want.len();
        Ok(want.len())
    }

    /// Decides the node's forwarding again (in `auto`, from what the node has now). Returns
    /// whether it changed; the caller then re-applies the plan so that new flows follow it
    /// (flows already started keep theirs). A change is logged once, with its reason.
    pub fn recheck_forwarding(&mut self) -> bool {
        let pod_ifs: Vec<String> = self
            .attachments
            .iter()
            .filter(|a| a.hook == Hook::TcIngress)
            .map(|a| a.interface.clone())
            .collect();
        let next = Forwarding::decide(self.config.forwarding, || Facts::read(&pod_ifs));
        if next == self.syncer.forwarding {
            return false;
        }
        if let Some(reason) = &next.reason {
            tracing::warn!(
                forwarding = next.effective(),
                configured = %next.configured,
                %reason,
                "accelerated pod flows go through the node's stack"
            );
        } else {
            tracing::info!(
                forwarding = next.effective(),
                configured = %next.configured,
                "accelerated pod flows {}",
                if next.redirect {
                    "bypass the node's stack (redirect)"
                } else {
                    "go through the node's stack"
                }
            );
        }
        self.syncer.forwarding = next;
        true
    }

    /// A new `acceleration.forwarding` (a configuration reload): judged at once; new flows
    /// follow it from the next apply, started ones keep theirs.
    pub fn set_forwarding(&mut self, forwarding: forwarding::ForwardingMode) {
        self.config.forwarding = forwarding;
        self.recheck_forwarding();
    }

    /// How new pod flows of unannotated Services are forwarded.
    pub fn forwarding(&self) -> &Forwarding {
        &self.syncer.forwarding
    }

    /// Programs the maps for `plan` (after nftables applied the same plan), tagged with
    /// `generation`. On failure the maps may hold part of the writes (never a half-written
    /// backend set, see `writes`); the next call re-reads them and converges.
    pub fn apply(&mut self, plan: &ProxyPlan, generation: u64) -> Result<ApplyReport, BpfError> {
        self.syncer.auto.clone_from(self.policy.choice());
        self.syncer.sync(
            &mut self.datapath.maps,
            &mut KernelConntrack,
            plan,
            generation,
        )
    }

    /// Changes the acceleration mode; the next [`FastPath::apply`] promotes and demotes
    /// accordingly (demoted flows finish on the fast path). Switching to `auto` keeps what
    /// is accelerated for `min_dwell`, then the measured rates decide.
    pub fn set_mode(&mut self, mode: AccelerationMode) {
        if mode == AccelerationMode::Auto && self.config.mode != AccelerationMode::Auto {
            self.policy.adopt(self.syncer.accelerated(), now());
        }
        self.config.mode = mode;
        self.syncer.mode = mode;
    }

    /// The acceleration mode in force.
    pub fn mode(&self) -> AccelerationMode {
        self.config.mode
    }

    /// New `auto` settings (a configuration reload); they apply from the next
    /// [`FastPath::observe`].
    pub fn set_auto_thresholds(&mut self, auto: AutoThresholds) {
        let capacity = Capacity::of_maps(auto.max_services);
        self.policy.set_thresholds(auto.clone(), capacity);
        self.config.auto = auto;
    }

    /// In `auto` mode: reads the per-service counters, lets the policy decide, and when it
    /// moved anything re-applies `plan` (the last plan applied, at its `generation`). Call it
    /// every [`OBSERVE_PERIOD`]; outside `auto` mode it does nothing.
    pub fn observe(
        &mut self,
        plan: &ProxyPlan,
        generation: u64,
    ) -> Result<ObserveReport, BpfError> {
        self.observe_at(now(), plan, generation)
    }

    /// [`FastPath::observe`] at a given monotonic time (for tests driving the clock).
    pub fn observe_at(
        &mut self,
        now: Duration,
        plan: &ProxyPlan,
        generation: u64,
    ) -> Result<ObserveReport, BpfError> {
        if self.config.mode != AccelerationMode::Auto {
            return Ok(ObserveReport::default());
        }
        let slots = self.syncer.counter_slots();
        let mut seen = BTreeMap::new();
        for c in self.syncer.candidates() {
            if let Some(slot) = slots.get(&c.id.0).filter(|s| **s != 0) {
                seen.insert(c.id, self.datapath.maps.counter(*slot)?.seen_packets);
            }
        }
        let candidates = self.syncer.candidates().to_vec();
        let changes = self.policy.observe(now, &candidates, &seen);
        let applied = if changes.is_empty() {
            None
        } else {
            Some(self.apply(plan, generation)?)
        };
        Ok(ObserveReport { changes, applied })
    }

    /// The figures for the `hybrid_proxy_fastpath_*` metrics.
    pub fn gauges(&self) -> Result<FastPathGauges, BpfError> {
        let maps = &self.datapath.maps;
        let stats = maps.stats()?;
        Ok(FastPathGauges {
            mode: self.config.mode,
            generation: maps.meta()?.generation,
            accelerated_ports: self
                .syncer
                .ports()
                .iter()
                .filter(|p| p.any_accelerated())
                .map(|p| p.id)
                .collect::<BTreeSet<_>>()
                .len(),
            counted_ports: self.syncer.counter_slots().len(),
            flows: self.flows_at_gc,
            flow_capacity: maps.flow_capacity(),
            stats: StatIndex::ALL
                .iter()
                .zip(stats)
                .map(|(i, c)| (*i, c.packets))
                .collect(),
            attachments: self.attachments.len(),
            interface_errors: self.interface_errors.len(),
            held_for_capacity: self
                .policy
                .choice()
                .held
                .values()
                .filter(|r| **r == super::Reason::Capacity)
                .count(),
            forwarding: self.syncer.forwarding.clone(),
        })
    }

    /// Removes flows idle longer than the configured timeouts. Run it periodically (the
    /// connection table is not an LRU: nothing else removes ended flows; a full table sends
    /// new flows to nftables). Also refreshes the local endpoints (pods' MACs resolve after
    /// the fact); [`FastPath::recheck_forwarding`] is the caller's to run alongside.
    pub fn collect_garbage(&mut self) -> Result<GcReport, BpfError> {
        if let Err(e) = self.refresh_local_endpoints() {
            tracing::debug!(error = %e, "refreshing local endpoints failed");
        }
        let report = reconcile::collect_garbage(
            &mut self.datapath.maps,
            &self.config.flow_timeouts,
            store::monotonic_ns(),
        )?;
        self.syncer.release_counters(&report);
        self.flows_at_gc = Some(report.entries - report.removed);
        Ok(report)
    }

    /// Counters, decisions, attachments and table occupancy.
    pub fn status(&mut self) -> Result<FastPathStatus, BpfError> {
        let flows = self.datapath.maps.v4().flows.entries()?.len()
            + self.datapath.maps.v6().flows.entries()?.len();
        let maps = &self.datapath.maps;
        Ok(FastPathStatus {
            generation: maps.meta()?.generation,
            layout_version: LAYOUT_VERSION,
            adopted: self.adopted,
            rebuilt: self.rebuilt.clone(),
            attachments: self.attachments.clone(),
            interface_errors: self.interface_errors.clone(),
            ports: self.syncer.ports().to_vec(),
            counters: Counters::read(maps, self.syncer.counter_slots())?,
            rates: self
                .syncer
                .candidates()
                .iter()
                .filter_map(|c| self.policy.rate(c.id).map(|r| (c.id, r)))
                .collect(),
            flows,
            flow_capacity: maps.flow_capacity(),
            forwarding: self.syncer.forwarding.clone(),
            local_endpoints: self.local_endpoints,
        })
    }

    /// The maps, for tests and tools that read them directly.
    pub fn maps(&mut self) -> &mut kernel::KernelMaps {
        &mut self.datapath.maps
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }
}

/// The monotonic clock the policy runs on.
fn now() -> Duration {
    Duration::from_nanos(store::monotonic_ns())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Whether a fast path is pinned under `pin_path` (an agent in mode `off` still opens it, so
/// that the flows on it finish; with nothing pinned it need not).
pub fn is_pinned(pin_path: &Path) -> bool {
    kernel::pinned_layout(pin_path).is_some()
}

/// Removes everything the fast path pinned under `pin_path` and every attachment it made in
/// this network namespace. Fast-path flows then restart through nftables.
pub fn cleanup(pin_path: &Path) -> Result<(), BpfError> {
    kernel::cleanup(pin_path)
}

/// Link and route change notifications, for the daemon's interface task:
///
/// ```no_run
/// # fn run(fast_path: &mut proxy_agent::bpf::FastPath) -> Result<(), Box<dyn std::error::Error>> {
/// let watcher = proxy_agent::bpf::InterfaceWatcher::open()?;
/// loop {
///     if watcher.wait(std::time::Duration::from_secs(30))? {
///         let changes = fast_path.sync_interfaces()?;
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct InterfaceWatcher {
    events: netlink::ChangeEvents,
}

impl InterfaceWatcher {
    pub fn open() -> Result<Self, BpfError> {
        Ok(Self {
            events: netlink::ChangeEvents::open().map_err(|source| BpfError::Io {
                what: "subscribing to link and route changes",
                source,
            })?,
        })
    }

    /// Waits up to `timeout`; whether a link or route changed meanwhile.
    pub fn wait(&self, timeout: Duration) -> Result<bool, BpfError> {
        self.events.wait(timeout).map_err(|source| BpfError::Io {
            what: "waiting for link and route changes",
            source,
        })
    }
}
