//! `proxy-agent status`: which plan generation nftables and the fast path serve, where each
//! service port's traffic goes and why, packet rates, connection-table occupancy and how the
//! programs are attached. Everything is read from the kernel (our nftables table, the pinned
//! maps and links) without loading or attaching anything, so it works whether the agent runs
//! or not.

use std::{collections::BTreeMap, fmt::Write as _, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use super::CommonOptions;
use crate::{
    bpf::inspect::{self, PinnedView},
    nft::{NftBackend as _, NftCli},
};

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusOptions {
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Seconds between the two counter reads that give packet rates; 0 for no rates.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    #[command(flatten)]
    pub common: CommonOptions,
}

/// The whole report (also the JSON document).
#[derive(Debug, Serialize)]
pub struct Status {
    /// `acceleration.mode` in the configuration this command read.
    pub configured_mode: String,
    /// Generation in our nftables table (`None`: no table, or an agent too old to write one).
    pub nftables_generation: Option<u32>,
    pub fast_path: Option<FastPathStatus>,
}

#[derive(Debug, Serialize)]
pub struct FastPathStatus {
    pub pin_path: String,
    pub layout_version: u32,
    /// Whether this build can read the pinned maps (same layout version).
    pub readable: bool,
    pub generation: u64,
    /// Whether it applied the generation nftables holds.
    pub in_step: Option<bool>,
    pub forwarding: ForwardingStatus,
    pub connections: Connections,
    pub attachments: Vec<AttachmentStatus>,
    pub ports: Vec<PortStatus>,
    pub events: BTreeMap<String, u64>,
}

/// How accelerated pod flows are forwarded.
#[derive(Debug, Serialize)]
pub struct ForwardingStatus {
    /// `acceleration.forwarding` in the configuration this command read.
    pub configured: String,
    /// What the agent last applied for Services without an annotation: `redirect` or
    /// `stack`.
    pub in_force: String,
    /// With `auto`: why the node needs the stack, judged now from what it has (`None`:
    /// nothing does).
    pub auto_reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Connections {
    /// Fast-path flows (each has two entries).
    pub fast_flows: usize,
    /// Of those, redirect flows: the node's conntrack does not hold them (`conntrack -L`
    /// does not list them).
    pub redirect_flows: usize,
    /// Flows nftables started, marked so that the fast path leaves them alone.
    pub nftables_owned: usize,
    pub entries: usize,
    pub capacity: u32,
}

#[derive(Debug, Serialize)]
pub struct AttachmentStatus {
    pub interface: String,
    pub hook: String,
    pub mode: String,
    /// The interface still exists (with the index the program was attached to).
    pub live: bool,
}

#[derive(Debug, Serialize)]
pub struct PortStatus {
    pub port: String,
    pub id: String,
    /// Traffic from pods: `fast path` or `nftables (<reason>)`.
    pub pods: String,
    /// Traffic from outside the node (node port, LB IPs, external IPs).
    pub external: String,
    pub accelerated: bool,
    /// Packets from clients (both paths) and packets the fast path translated, since the
    /// port was first counted.
    pub seen_packets: u64,
    pub fast_packets: u64,
    /// Per second, over `--interval`.
    pub seen_pps: Option<f64>,
    pub fast_pps: Option<f64>,
    /// `redirect` when new pod flows bypass the node's stack, `stack` when they are
    /// accelerated through it, `-` when pod traffic is not accelerated.
    pub forwarding: String,
    /// Packets the programs delivered themselves (redirect), both directions.
    pub redirected_packets: u64,
}

pub fn status(opts: &StatusOptions) -> anyhow::Result<ExitCode> {
    let config = opts.common.config()?;
    let pin = config.acceleration.pin_path.clone();
    let nftables_generation = NftCli::default().read_generation().ok().flatten();
    let view = inspect::read(&pin).context("reading the pinned fast path")?;
    let rates = match &view {
        Some(v) if v.layout_ok() && opts.interval > 0.0 => {
            let interval = Duration::from_secs_f64(opts.interval);
            std::thread::sleep(interval);
            let again = inspect::read_counters(&pin, v.ports.iter().map(|p| p.slot))
                .context("reading the counters again")?;
            Some((again, interval))
        }
        _ => None,
    };
    let status = Status {
        configured_mode: config.acceleration.mode.name().to_owned(),
        nftables_generation,
        fast_path: view.map(|v| {
            let forwarding = forwarding_status(&config, &v);
            fast_path_status(&v, nftables_generation, rates.as_ref(), forwarding)
        }),
    };
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).context("writing JSON")?
        );
    } else {
        print!("{}", render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// The forwarding in force (from the maps) and, under `auto`, the node's judgement now.
fn forwarding_status(config: &crate::config::Config, v: &PinnedView) -> ForwardingStatus {
    let fp = config.fast_path();
    let in_force = crate::bpf::forwarding::Forwarding::recorded(v.forwarding);
    let auto_reason = (fp.forwarding == crate::bpf::forwarding::ForwardingMode::Auto)
        .then(|| {
            let pods: Vec<String> = v
                .attachments
                .iter()
                .filter(|a| a.attachment.hook == crate::bpf::kernel::Hook::TcIngress)
                .map(|a| a.attachment.interface.clone())
                .collect();
            crate::bpf::forwarding::judge(&crate::bpf::forwarding::Facts::read(&pods))
        })
        .flatten();
    ForwardingStatus {
        configured: fp.forwarding.name().to_owned(),
        in_force: in_force.effective().to_owned(),
        auto_reason,
    }
}

fn fast_path_status(
    v: &PinnedView,
    nftables_generation: Option<u32>,
    rates: Option<&(BTreeMap<u32, proxy_common::ServiceCounter>, Duration)>,
    forwarding: ForwardingStatus,
) -> FastPathStatus {
    let per_second = |before: u64, after: Option<u64>| {
        rates.and_then(|(_, interval)| {
            #[expect(
                clippy::cast_precision_loss,
                reason = "a packet rate needs no more than f64's 52 bits"
            )]
            after.map(|a| a.saturating_sub(before) as f64 / interval.as_secs_f64())
        })
    };
    let ports = v
        .ports
        .iter()
        .map(|p| {
            let later = rates.and_then(|(r, _)| r.get(&p.slot));
            PortStatus {
                port: p.label.clone(),
                id: format!("{:016x}", p.id),
                pods: p.pods.to_string(),
                external: p.external.to_string(),
                accelerated: p.pods.is_fast() || p.external.is_fast(),
                seen_packets: p.counter.seen_packets,
                fast_packets: p.counter.fast_packets,
                seen_pps: per_second(p.counter.seen_packets, later.map(|c| c.seen_packets)),
                fast_pps: per_second(p.counter.fast_packets, later.map(|c| c.fast_packets)),
                forwarding: if !p.pods.is_fast() {
                    "-"
                } else if p.redirect_entries > 0 {
                    "redirect"
                } else {
                    "stack"
                }
                .to_owned(),
                redirected_packets: p.counter.redirected_packets,
            }
        })
        .collect();
    FastPathStatus {
        pin_path: v.pin_path.display().to_string(),
        layout_version: v.layout_version,
        readable: v.layout_ok(),
        generation: v.generation,
        in_step: nftables_generation.map(|g| u64::from(g) == v.generation),
        forwarding,
        connections: Connections {
            fast_flows: v.flows.fast / 2,
            redirect_flows: v.flows.redirect / 2,
            nftables_owned: v.flows.nftables_owned,
            entries: v.flows.fast + v.flows.nftables_owned,
            capacity: v.flows.capacity,
        },
        attachments: v
            .attachments
            .iter()
            .map(|a| AttachmentStatus {
                interface: a.attachment.interface.clone(),
                hook: match a.attachment.hook {
                    crate::bpf::kernel::Hook::Xdp => "xdp",
                    crate::bpf::kernel::Hook::TcIngress => "tc ingress",
                    crate::bpf::kernel::Hook::TcEgress => "tc egress",
                    crate::bpf::kernel::Hook::TcReply => "tc ingress (replies)",
                }
                .to_owned(),
                mode: a.attachment.mode.to_string(),
                live: a.live,
            })
            .collect(),
        ports,
        events: v
            .stats
            .iter()
            .map(|(i, n)| (i.name().to_owned(), *n))
            .collect(),
    }
}

fn pps(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.0}"))
}

/// The readable form: a summary, the attachments, one line per service port.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "nftables:  {}",
        s.nftables_generation.map_or_else(
            || "no generation recorded (no table, or not written by this agent)".to_owned(),
            |g| format!("generation {g}")
        )
    );
    let Some(fp) = &s.fast_path else {
        let _ = writeln!(
            out,
            "fast path: not running (nothing pinned); nftables serves every Service \
             (configured mode {})",
            s.configured_mode
        );
        return out;
    };
    let step = match fp.in_step {
        Some(true) => ", in step with nftables",
        Some(false) => ", NOT the generation nftables holds",
        None => "",
    };
    let _ = writeln!(
        out,
        "fast path: generation {}{step}; layout v{}, pinned at {} (configured mode {})",
        fp.generation, fp.layout_version, fp.pin_path, s.configured_mode
    );
    if !fp.readable {
        let _ = writeln!(
            out,
            "  written by another version (layout v{}, this build reads v{}): the agent \
             rebuilds it at its next start",
            fp.layout_version,
            proxy_common::LAYOUT_VERSION
        );
        return out;
    }
    let f = &fp.forwarding;
    let _ = write!(
        out,
        "forwarding: {} for Services without an annotation (configured {})",
        f.in_force, f.configured
    );
    match &f.auto_reason {
        Some(r) => {
            let _ = writeln!(out, "; the node needs the stack: {r}");
        }
        None => {
            let _ = writeln!(out);
        }
    }
    connections(&mut out, fp);
    let _ = writeln!(out, "\nINTERFACE          HOOK         MODE");
    for a in &fp.attachments {
        let _ = writeln!(
            out,
            "{:<18} {:<12} {}{}",
            a.interface,
            a.hook,
            a.mode,
            if a.live { "" } else { " (interface gone)" }
        );
    }
    let width = fp
        .ports
        .iter()
        .map(|p| p.port.len())
        .max()
        .unwrap_or(0)
        .max(12);
    let _ = writeln!(
        out,
        "\n{:<width$}  {:<32}  {:<8}  {:<36}  {:>9}  {:>9}",
        "SERVICE PORT", "FROM PODS", "FORWARD", "FROM OUTSIDE", "PPS", "FAST PPS"
    );
    for p in &fp.ports {
        let _ = writeln!(
            out,
            "{:<width$}  {:<32}  {:<8}  {:<36}  {:>9}  {:>9}",
            p.port,
            p.pods,
            p.forwarding,
            p.external,
            pps(p.seen_pps),
            pps(p.fast_pps)
        );
    }
    let events: Vec<String> = fp
        .events
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(e, n)| format!("{e} {n}"))
        .collect();
    let _ = writeln!(out, "\npackets: {}", events.join(", "));
    out
}

fn connections(out: &mut String, fp: &FastPathStatus) {
    let c = &fp.connections;
    #[expect(
        clippy::cast_precision_loss,
        reason = "a percentage of a table of at most 2^32 entries"
    )]
    let used = if c.capacity == 0 {
        0.0
    } else {
        c.entries as f64 * 100.0 / f64::from(c.capacity)
    };
    let _ = writeln!(
        out,
        "connections: {} fast-path flow(s) ({} redirected: not in conntrack -L), {} nftables flow(s) marked; {} of {} entries ({used:.1}%)",
        c.fast_flows, c.redirect_flows, c.nftables_owned, c.entries, c.capacity
    );
    let table_full = fp.events.get("table_full").copied().unwrap_or(0);
    if table_full > 0 {
        let _ = writeln!(
            out,
            "  {table_full} new flow(s) went to nftables because the table was full"
        );
    }
}
