//! `apply`, `render` and `cleanup`: one sync (or none) and exit.

use std::{process::ExitCode, time::Instant};

use anyhow::Context as _;

use super::{CommonOptions, ManifestOptions};
use crate::{
    config::Config,
    host,
    model::ClusterState,
    nft::{NftCli, NftSyncer},
    plan::{self, ProxyPlan},
    source::files,
};

/// Reads the manifests and plans them, reporting every skipped object on stderr.
fn plan_manifests(opts: &ManifestOptions) -> anyhow::Result<(Config, ClusterState, ProxyPlan)> {
    let config = opts.common.config()?;
    let node = config.resolved_node_name();
    let (state, problems) = files::load_dir(&opts.manifests, &node)?;
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
    let plan = plan::compute(&state, &config.plan_settings(addresses));
    for e in &plan.errors {
        eprintln!("skipped: {e}");
    }
    Ok((config, state, plan))
}

pub fn apply(opts: &ManifestOptions) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (config, state, plan) = plan_manifests(opts)?;
    let mut syncer = NftSyncer::new(NftCli::default(), config.masquerade_mark());
    let report = syncer.sync(&plan).context("programming nftables")?;
    eprintln!(
        "applied {} services ({} ports) of {} read: {} sync, {} elements, in {:.0?}",
        plan.services.len(),
        plan.ports().count(),
        state.service_count(),
        report.kind.name(),
        report.elements_added,
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn render(opts: &ManifestOptions) -> anyhow::Result<ExitCode> {
    let (config, _, plan) = plan_manifests(opts)?;
    let syncer = NftSyncer::new(NftCli::default(), config.masquerade_mark());
    print!("{}", syncer.render_full(&plan));
    Ok(ExitCode::SUCCESS)
}

pub fn cleanup(opts: &CommonOptions) -> anyhow::Result<ExitCode> {
    let config = opts.config()?;
    let mut syncer = NftSyncer::new(NftCli::default(), config.masquerade_mark());
    syncer.cleanup().context("removing the nftables tables")?;
    eprintln!("removed tables ip {0} and ip6 {0}", crate::nft::TABLE);
    Ok(ExitCode::SUCCESS)
}
