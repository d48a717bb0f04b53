//! Control plane: how long programming nftables takes, for our layout and kube-proxy's, at
//! each size, every measurement in a fresh network namespace.
//!
//! - `proxy-agent apply` (the whole process: reading manifests, planning, the full sync), for
//!   its peak memory and end-to-end time;
//! - in-process, what the sync loop does: [`Planner`] and [`NftSyncer`] over the `nft`
//!   command: the first full sync, one-endpoint partial syncs, one-Service additions, and a
//!   full resync of the loaded table (what `syncPeriod` triggers), each split into planning,
//!   building the transaction and running `nft`;
//! - the floor: `nft -f` of the ruleset `proxy-agent render` prints, with no agent at all;
//! - kube-proxy's layout for the same Services, through the same `nft`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use proxy_agent::{
    model::{ClusterState, ServiceName},
    nft::{
        Family, NftBackend, NftCli, NftError, NftSyncer, SyncKind, TableObjects, Transaction,
        verify::TableState,
    },
    plan::{Planner, ProxyPlan},
};
use serde::Serialize;

use super::{
    Options,
    cluster::{self, Shape, SynthService},
    kube_layout, ms,
    process::{self, Measure},
};
use crate::netns::Netns;

/// `proxy-agent apply` of the whole cluster.
#[derive(Clone, Debug, Serialize)]
pub struct AgentApply {
    pub wall_ms: f64,
    /// The phases the agent prints (10 ms resolution).
    pub read_ms: f64,
    pub plan_ms: f64,
    pub nftables_ms: f64,
    /// The agent's own peak resident memory (`VmHWM`), MiB.
    pub agent_peak_mib: f64,
    /// The largest of the agent and its `nft` child, MiB.
    pub largest_process_mib: f64,
}

/// One in-process sync, split up.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncTiming {
    /// Planning (the whole plan for a full sync; the changed Service plus settling every
    /// Service's claims again for a partial one).
    pub plan_ms: f64,
    /// Building the transaction: rendering and diffing (the sync minus `nft`).
    pub build_ms: f64,
    /// Running `nft`: listing the table (full syncs) and `nft -f` of the transaction, from
    /// starting the process to its exit.
    pub nft_ms: f64,
    /// Of which `nft` was on a CPU (its user and system time); the rest it waited (see the
    /// report's profile).
    pub nft_cpu_ms: f64,
    pub total_ms: f64,
    /// Size of the `nft -f` input.
    pub bytes: usize,
}

/// `nft -f` of a ruleset text.
#[derive(Clone, Debug, Serialize)]
pub struct NftLoad {
    pub wall_ms: f64,
    pub nft_peak_mib: f64,
    pub bytes: usize,
}

/// kube-proxy's layout at one size.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum KubeLayout {
    Measured {
        full: NftLoad,
        /// Median `nft -f` of kube-proxy's transaction for one replaced endpoint.
        partial_endpoint_ms: f64,
        /// Median `nft -f` of one more Service.
        add_service_ms: f64,
    },
    TimedOut {
        after_s: f64,
    },
    Skipped {
        reason: String,
    },
}

impl KubeLayout {
    pub fn full_ms(&self) -> Option<f64> {
        match self {
            Self::Measured { full, .. } => Some(full.wall_ms),
            _ => None,
        }
    }
}

/// `nft` costs that do not depend on the transaction, at this size.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NftFixed {
    /// `nft --version`: starting the process.
    pub process_ms: f64,
    /// `nft -f` of `add table ip hybrid-proxy` on the loaded table: process, netlink and the
    /// cache nft loads before it can check a command.
    pub noop_transaction_ms: f64,
}

/// Everything measured at one size.
#[derive(Clone, Debug, Serialize)]
pub struct ControlResult {
    pub services: usize,
    pub endpoints: usize,
    pub agent_apply: AgentApply,
    pub full_sync: SyncTiming,
    /// Medians.
    pub partial_endpoint: SyncTiming,
    pub add_service: SyncTiming,
    pub full_resync: SyncTiming,
    pub nft_fixed: NftFixed,
    /// The transaction of the last one-endpoint partial sync, as an example.
    pub partial_example: String,
    pub floor: NftLoad,
    pub kube_proxy: KubeLayout,
}

/// The agent's nftables backend (libnftables in-process, as `run` uses it), timed: wall
/// time, and CPU time of nftables' work (this thread's, and any `nft` process').
#[derive(Debug)]
struct TimedNft {
    inner: NftCli,
    spent: Duration,
    cpu: Duration,
    last_text: String,
}

impl Default for TimedNft {
    fn default() -> Self {
        Self {
            inner: NftCli::in_process(),
            spent: Duration::ZERO,
            cpu: Duration::ZERO,
            last_text: String::new(),
        }
    }
}

impl TimedNft {
    /// Wall and CPU time since the last call.
    fn take(&mut self) -> (Duration, Duration) {
        (
            std::mem::take(&mut self.spent),
            std::mem::take(&mut self.cpu),
        )
    }

    fn timed<T>(&mut self, f: impl FnOnce(&mut NftCli) -> T) -> T {
        let cpu = nft_cpu();
        let started = Instant::now();
        let result = f(&mut self.inner);
        self.spent += started.elapsed();
        self.cpu += nft_cpu().saturating_sub(cpu);
        result
    }
}

/// User and system time of this thread (libnftables runs in it) and of every child process
/// this process has waited for (only `nft` runs while the syncer is measured).
fn nft_cpu() -> Duration {
    let used = |who: libc::c_int| {
        // SAFETY: an all-zero rusage is a valid value for the kernel to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is valid for writes.
        unsafe { libc::getrusage(who, &raw mut usage) };
        let tv = |t: libc::timeval| {
            Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
                + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
        };
        tv(usage.ru_utime) + tv(usage.ru_stime)
    };
    used(libc::RUSAGE_CHILDREN) + used(libc::RUSAGE_THREAD)
}

impl NftBackend for TimedNft {
    fn apply(&mut self, tx: &Transaction) -> Result<(), NftError> {
        let result = self.timed(|nft| nft.apply(tx));
        // Kept for the report, outside the timed part.
        self.last_text = tx.to_nft();
        result
    }

    fn check(&mut self, tx: &Transaction) -> Result<(), NftError> {
        self.inner.check(tx)
    }

    fn list_table(&mut self, family: Family) -> Result<Option<TableObjects>, NftError> {
        self.timed(|nft| nft.list_table(family))
    }

    fn table_state(&mut self, family: Family) -> Result<Option<TableState>, NftError> {
        self.timed(|nft| nft.table_state(family))
    }

    fn read_generation(&mut self) -> Result<Option<u32>, NftError> {
        self.timed(NftCli::read_generation)
    }
}

fn median(mut v: Vec<SyncTiming>) -> SyncTiming {
    if v.is_empty() {
        return SyncTiming::default();
    }
    v.sort_by(|a, b| a.total_ms.total_cmp(&b.total_ms));
    v.swap_remove(v.len() / 2)
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Which kube-proxy layouts are loaded and which are skipped, and why.
fn kube_plan(shape: Shape, opts: &Options) -> Result<(), String> {
    let rules = shape.services * shape.endpoints;
    if rules > opts.kube_max_endpoints {
        return Err(format!(
            "not loaded: kube-proxy's layout grows faster than linearly (the proof measured \
             0.32 s at 1k, 5 s at 4k and 39 s at 10k Services x 2, \
             reference/aya-nft-proof/RECIPE.md); {} x {} would take many minutes, beyond this \
             run's budget (it loads kube-proxy's layout up to {} Service endpoints)",
            shape.services, shape.endpoints, opts.kube_max_endpoints
        ));
    }
    Ok(())
}

fn agent_apply(
    shape: Shape,
    manifests: &Path,
    config: &Path,
    opts: &Options,
) -> anyhow::Result<AgentApply> {
    let ns = Netns::new("bench-apply");
    let mut cmd = Command::new(&opts.agent);
    cmd.arg("apply")
        .arg("--manifests")
        .arg(manifests)
        .arg("--config")
        .arg(config);
    let done = process::run(
        &ns,
        cmd,
        None,
        Measure {
            timeout: None,
            poll_peak: true,
        },
    )?
    .ok("proxy-agent apply")?;
    let phase = |name: &str| -> f64 {
        done.stderr
            .split(&format!("{name} "))
            .nth(1)
            .and_then(|rest| rest.split('s').next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(f64::NAN, |s| s * 1000.0)
    };
    if !done
        .stderr
        .contains(&format!("applied {} services", shape.services))
    {
        bail!(
            "proxy-agent apply did not program every Service:\n{}",
            done.stderr
        );
    }
    #[expect(clippy::cast_precision_loss, reason = "memory sizes in MiB")]
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(AgentApply {
        wall_ms: ms(done.wall),
        read_ms: phase("(read"),
        plan_ms: phase("plan"),
        nftables_ms: phase("nftables"),
        agent_peak_mib: done.own_peak_kib.map_or(f64::NAN, mib),
        largest_process_mib: mib(done.max_rss_kib),
    })
}

fn nft_load(
    text_file: &Path,
    bytes: usize,
    timeout: Option<Duration>,
) -> anyhow::Result<(Netns, process::Finished, NftLoad)> {
    let ns = Netns::new("bench-nft");
    let done = process::nft_file(&ns, text_file, timeout)?;
    #[expect(clippy::cast_precision_loss, reason = "memory sizes in MiB")]
    let load = NftLoad {
        wall_ms: ms(done.wall),
        nft_peak_mib: done.max_rss_kib as f64 / 1024.0,
        bytes,
    };
    Ok((ns, done, load))
}

/// What the in-process syncer measured.
struct InProcess {
    full: SyncTiming,
    partial: Vec<SyncTiming>,
    add: Vec<SyncTiming>,
    resync: SyncTiming,
    fixed: NftFixed,
    example: String,
}

fn timed_nft(args: &[&str], stdin: Option<&str>) -> anyhow::Result<Duration> {
    use std::io::Write as _;
    let started = Instant::now();
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting nft")?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let spent = started.elapsed();
    if !out.status.success() {
        bail!("nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(spent)
}

/// Plans the Services named `changed` again and syncs: a partial sync of one Service.
fn partial_sync(
    planner: &mut Planner,
    syncer: &mut NftSyncer<TimedNft>,
    state: &ClusterState,
    changed: &ServiceName,
) -> anyhow::Result<(ProxyPlan, SyncTiming)> {
    let started = Instant::now();
    let plan = planner.update(state, [changed]);
    let plan_time = started.elapsed();
    let report = syncer.sync(&plan).context("a partial sync")?;
    let total = started.elapsed();
    if report.kind != SyncKind::Partial || report.services != 1 {
        bail!("expected a partial sync of one Service, got {report:?}");
    }
    let (nft, nft_cpu) = syncer.backend_mut().take();
    let timing = SyncTiming {
        plan_ms: ms(plan_time),
        build_ms: ms(total.saturating_sub(plan_time).saturating_sub(nft)),
        nft_ms: ms(nft),
        nft_cpu_ms: ms(nft_cpu),
        total_ms: ms(total),
        bytes: report.bytes,
    };
    Ok((plan, timing))
}

/// A full sync of `plan`, whatever the syncer wrote before.
fn full_sync(
    syncer: &mut NftSyncer<TimedNft>,
    plan: &ProxyPlan,
    plan_time: Duration,
) -> anyhow::Result<SyncTiming> {
    syncer.force_full();
    let started = Instant::now();
    let report = syncer.sync(plan).context("a full sync")?;
    let total = started.elapsed();
    let (nft, nft_cpu) = syncer.backend_mut().take();
    Ok(SyncTiming {
        plan_ms: ms(plan_time),
        build_ms: ms(total.saturating_sub(nft)),
        nft_ms: ms(nft),
        nft_cpu_ms: ms(nft_cpu),
        total_ms: ms(plan_time + total),
        bytes: report.bytes,
    })
}

/// The `nft` costs of a transaction that does nothing, at the current size.
fn nft_fixed(rounds: usize) -> anyhow::Result<NftFixed> {
    let mut process_ms = Vec::new();
    let mut noop_ms = Vec::new();
    for _ in 0..rounds {
        process_ms.push(ms(timed_nft(&["--version"], None)?));
        noop_ms.push(ms(timed_nft(
            &["-f", "-"],
            Some("add table ip hybrid-proxy\n"),
        )?));
    }
    Ok(NftFixed {
        process_ms: median_ms(process_ms),
        noop_transaction_ms: median_ms(noop_ms),
    })
}

/// The sync loop's work, on the calling thread (which is inside a fresh namespace): the
/// first full sync, `rounds` one-endpoint changes and `rounds` new Services (each a partial
/// sync of its own), and a full resync of the loaded table.
fn in_process(shape: Shape, services: &[SynthService], rounds: usize) -> anyhow::Result<InProcess> {
    let config = cluster::config();
    let mut state = cluster::state(services);
    let mut planner = Planner::new(config.plan_settings(Vec::new()));
    let mut syncer = NftSyncer::new(TimedNft::default(), config.masquerade_mark());

    let started = Instant::now();
    let mut plan = planner.full(&state);
    let plan_time = started.elapsed();
    if plan.services.len() != shape.services {
        bail!(
            "planned {} of {} Services: {:?}",
            plan.services.len(),
            shape.services,
            plan.errors.first()
        );
    }
    let full = full_sync(&mut syncer, &plan, plan_time).context("the first full sync")?;

    // Services spread over the table, each changed once.
    let mut partial = Vec::new();
    for r in 0..rounds {
        let mut svc = shape.synth(spread(shape, r));
        svc.endpoints[0].0 = shape.spare_ip(r);
        state.upsert_slice(cluster::slice(&svc)).expect("named");
        let (p, timing) = partial_sync(
            &mut planner,
            &mut syncer,
            &state,
            &cluster::service_key(svc.index),
        )
        .context("replacing one endpoint")?;
        plan = p;
        partial.push(timing);
    }
    let example = syncer.backend().last_text.clone();

    let mut add = Vec::new();
    for r in 0..rounds {
        let svc = new_service(shape, rounds, r);
        state.upsert_service(cluster::service(&svc)).expect("named");
        state.upsert_slice(cluster::slice(&svc)).expect("named");
        let (p, timing) = partial_sync(
            &mut planner,
            &mut syncer,
            &state,
            &cluster::service_key(svc.index),
        )
        .context("adding one Service")?;
        plan = p;
        add.push(timing);
    }
    let fixed = nft_fixed(rounds)?;
    let resync = full_sync(&mut syncer, &plan, Duration::ZERO).context("a full resync")?;
    Ok(InProcess {
        full,
        partial,
        add,
        resync,
        fixed,
        example,
    })
}

/// The `r`th of the Services changed during a run: spread over the table.
fn spread(shape: Shape, r: usize) -> usize {
    (r * 7919 + shape.services / 2) % shape.services
}

/// The `r`th Service added during a run, with endpoints of its own (after the `rounds`
/// replacement endpoints).
fn new_service(shape: Shape, rounds: usize, r: usize) -> SynthService {
    let mut svc = shape.synth(shape.services + r);
    for (k, e) in svc.endpoints.iter_mut().enumerate() {
        e.0 = shape.spare_ip(rounds + r * shape.endpoints + k);
    }
    svc
}

fn kube_proxy(
    shape: Shape,
    services: &[SynthService],
    dir: &Path,
    opts: &Options,
) -> anyhow::Result<KubeLayout> {
    if let Err(reason) = kube_plan(shape, opts) {
        return Ok(KubeLayout::Skipped { reason });
    }
    let text = kube_layout::full(services);
    let file = dir.join("kube-proxy.nft");
    std::fs::write(&file, &text)?;
    let (ns, done, full) = nft_load(&file, text.len(), Some(opts.kube_timeout))?;
    if done.timed_out() {
        return Ok(KubeLayout::TimedOut {
            after_s: done.wall.as_secs_f64(),
        });
    }
    done.ok("nft -f (kube-proxy's layout)")?;
    let rounds = opts.rounds;
    let mut partial = Vec::new();
    for r in 0..rounds {
        let before = &services[spread(shape, r)];
        let tx = kube_layout::replace_endpoint(before, 0, shape.spare_ip(r));
        let f = dir.join("kube-proxy-partial.nft");
        std::fs::write(&f, tx)?;
        partial.push(ms(process::nft_file(&ns, &f, None)?
            .ok("kube-proxy partial")?
            .wall));
    }
    let mut add = Vec::new();
    for r in 0..rounds {
        let svc = new_service(shape, rounds, r);
        let f = dir.join("kube-proxy-add.nft");
        std::fs::write(&f, kube_layout::one_more(&svc))?;
        add.push(ms(process::nft_file(&ns, &f, None)?
            .ok("kube-proxy add")?
            .wall));
    }
    Ok(KubeLayout::Measured {
        full,
        partial_endpoint_ms: median_ms(partial),
        add_service_ms: median_ms(add),
    })
}

/// Measures one size.
pub fn measure(shape: Shape, opts: &Options) -> anyhow::Result<ControlResult> {
    let dir: PathBuf = opts
        .work
        .join(format!("control-{}x{}", shape.services, shape.endpoints));
    std::fs::create_dir_all(&dir)?;
    let services = shape.all();
    let (manifests, config) = cluster::write_manifests(&dir, &services)?;

    let agent = agent_apply(shape, &manifests, &config, opts).context("proxy-agent apply")?;

    // The floor: the text `proxy-agent render` prints for the same objects.
    let floor = {
        let cfg = cluster::config();
        let plan =
            proxy_agent::plan::compute(&cluster::state(&services), &cfg.plan_settings(Vec::new()));
        let text = NftSyncer::new(NftCli::default(), cfg.masquerade_mark())
            .render_full(&plan)
            .to_nft();
        let file = dir.join("ours.nft");
        std::fs::write(&file, &text)?;
        let (_ns, done, load) = nft_load(&file, text.len(), None)?;
        done.ok("nft -f (our ruleset)")?;
        load
    };

    let ns = Netns::new("bench-sync");
    let rounds = opts.rounds;
    let measured = ns.run(|| in_process(shape, &services, rounds))?;
    drop(ns);

    let kube_proxy = kube_proxy(shape, &services, &dir, opts).context("kube-proxy's layout")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ControlResult {
        services: shape.services,
        endpoints: shape.endpoints,
        agent_apply: agent,
        full_sync: measured.full,
        partial_endpoint: median(measured.partial),
        add_service: median(measured.add),
        full_resync: measured.resync,
        nft_fixed: measured.fixed,
        partial_example: measured.example,
        floor,
        kube_proxy,
    })
}
