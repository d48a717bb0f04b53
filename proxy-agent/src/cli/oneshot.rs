//! `apply`, `render` and `cleanup`: one sync (or none) and exit.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{CleanupOptions, ManifestOptions};
use crate::{
    config::Config,
    conntrack::{self, NetlinkConntrack},
    host,
    model::ClusterState,
    nft::{NftBackend as _, NftCli, NftSyncer},
    plan::{self, ProxyPlan},
    source::files,
};

/// Time spent in each phase of a one-shot command.
struct Phases {
    read: Duration,
    plan: Duration,
}

/// Reads the manifests and plans them, reporting every skipped object on stderr.
fn plan_manifests(
    opts: &ManifestOptions,
) -> anyhow::Result<(Config, ClusterState, ProxyPlan, Phases)> {
    let config = opts.common.config()?;
    let node = config.resolved_node_name();
    let started = Instant::now();
    let (state, problems) = files::load_dir(&opts.manifests, &node)?;
    let read = started.elapsed();
    for line in problems.lines() {
        eprintln!("skipped: {line}");
    }
    if state.node().is_none() {
        eprintln!(
            "note: no Node named {node:?} in {}: node ports listen on no address unless \
             nodePortAddresses lists CIDRs",
            opts.manifests.display()
        );
    }
    let addresses = host::local_addresses().context("reading this host's addresses")?;
    let started = Instant::now();
    let plan = plan::compute(&state, &config.plan_settings(addresses));
    let phases = Phases {
        read,
        plan: started.elapsed(),
    };
    for e in &plan.errors {
        eprintln!("skipped: {e}");
    }
    Ok((config, state, plan, phases))
}

pub fn apply(opts: &ManifestOptions) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (config, state, plan, phases) = plan_manifests(opts)?;
    let mut syncer = NftSyncer::new(NftCli::default(), config.masquerade_mark());
    let nft_started = Instant::now();
    // Continue the generation the kernel holds, so status can tell this plan from the last.
    let generation = syncer
        .backend_mut()
        .read_generation()
        .ok()
        .flatten()
        .unwrap_or(0)
        .wrapping_add(1)
        .max(1);
    syncer.set_generation(generation);
    let report = syncer.sync(&plan).context("programming nftables")?;
    let nft_time = nft_started.elapsed();
    if config.udp_stale_entry_cleanup {
        // Not fatal: the rules are in place, and the next apply tries again.
        match conntrack::clean_stale_flows(&mut NetlinkConntrack::new(), &plan, &state) {
            Ok(r) if r.deleted > 0 => {
                eprintln!("deleted {} stale UDP/SCTP conntrack entries", r.deleted);
            }
            Ok(_) => {}
            Err(e) => eprintln!("warning: stale conntrack cleanup failed: {e}"),
        }
    }
    apply_fast_path(&config, &state, &plan, generation);
    eprintln!(
        "applied {} services ({} ports) of {} read: {} sync, {} elements, in {:.2}s \
         (read {:.2}s, plan {:.2}s, nftables {:.2}s)",
        plan.services.len(),
        plan.ports().count(),
        state.service_count(),
        report.kind.name(),
        report.elements_added,
        started.elapsed().as_secs_f64(),
        phases.read.as_secs_f64(),
        phases.plan.as_secs_f64(),
        nft_time.as_secs_f64(),
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the hot Services to the fast path after nftables, when acceleration is on, or
/// demotes them all when it is off and a fast path is pinned (its flows finish there). The
/// programs and maps stay pinned after the command exits. A failure leaves nftables serving.
fn apply_fast_path(config: &Config, state: &ClusterState, plan: &ProxyPlan, generation: u32) {
    let fp_config = config.fast_path();
    if fp_config.mode == crate::bpf::AccelerationMode::Off
        && !crate::bpf::is_pinned(&fp_config.pin_path)
    {
        return;
    }
    let pod_cidrs = state
        .node()
        .map(|n| crate::model::node::normalise_node(n, &mut Vec::new()).pod_cidrs)
        .unwrap_or_default();
    match crate::bpf::FastPath::open(&fp_config, &pod_cidrs).and_then(|mut fp| {
        let report = fp.apply(plan, u64::from(generation))?;
        Ok((report, fp.forwarding().clone()))
    }) {
        Ok((report, forwarding)) => eprintln!(
            "fast path ({}): {} of {} service ports accelerated; forwarding {forwarding}",
            fp_config.mode,
            report.accelerated_ports(),
            report.ports.len()
        ),
        Err(e) => eprintln!(
            "warning: the eBPF fast path is unavailable, nftables serves every Service: {e}"
        ),
    }
}

pub fn render(opts: &ManifestOptions) -> anyhow::Result<ExitCode> {
    let (config, _, plan, _) = plan_manifests(opts)?;
    let syncer = NftSyncer::new(NftCli::default(), config.masquerade_mark());
    print!("{}", syncer.render_full(&plan));
    Ok(ExitCode::SUCCESS)
}

pub fn cleanup(opts: &CleanupOptions) -> anyhow::Result<ExitCode> {
    let config = opts.common.config()?;
    if opts.kube_proxy {
        // kube-proxy's objects only: the agent's own rules keep serving.
        let removed = crate::preflight::leftovers::remove(&NftCli::default().program)
            .context("removing kube-proxy's leftovers")?;
        if removed.lines.is_empty() {
            eprintln!("no kube-proxy leftovers found");
        }
        for line in &removed.lines {
            eprintln!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut syncer = NftSyncer::new(NftCli::default(), config.masquerade_mark());
    syncer.cleanup().context("removing the nftables tables")?;
    eprintln!("removed tables ip {0} and ip6 {0}", crate::nft::TABLE);
    // Always: besides the pins (maps and links) it detaches clsact filters of our programs
    // that kernels before 6.6 leave without pins, even when the pin directory is gone.
    let pin_path = &config.acceleration.pin_path;
    let was_there = pin_path.exists();
    crate::bpf::cleanup(pin_path).context("removing the fast path")?;
    if was_there {
        eprintln!("removed the fast path pinned at {}", pin_path.display());
    }
    Ok(ExitCode::SUCCESS)
}
