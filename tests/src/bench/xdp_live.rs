//! Packets per second through a node, injected by `BPF_PROG_TEST_RUN` in live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`): the kernel runs our XDP program on each frame and acts on
//! its verdict, so an `XDP_PASS` frame enters the node's stack as if it had arrived on the
//! node interface. No sender process competes with the node for the CPU.
//!
//! For the nftables path the program is a private copy with empty maps (it passes every
//! frame unchanged and nftables translates it); for the fast path it shares the agent's
//! pinned maps and translates the frame itself. Either way the frame then crosses the node
//! to a pod, whose receive counter says how many arrived.
//!
//! Live mode recycles pages without copying the frame in again, and the stack rewrites them
//! (TTL, MAC addresses, NAT), so each call carries one batch: every call starts with fresh
//! copies of the frame. The program is also attached to a spare interface meanwhile, which
//! keeps it in the kernel's XDP dispatcher (see [`run`]).

use std::{
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    TestRun as _, TestRunAttrs, TestRunOptions,
    programs::{Xdp, XdpMode},
};
use proxy_agent::bpf::{bench::udp_frame, kernel::Datapath, object::embedded_object};
use proxy_common::{capacity, program_names};
use serde::Serialize;

use super::load::Windows;
use crate::netns::Netns;

/// Frames per call (the kernel's maximum batch).
const BATCH: u32 = 256;
/// A veth pair in the node's namespace that only anchors the program (see [`run`]).
const ANCHOR: &str = "hpb-xdp0";

/// What the best window achieved.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LiveRate {
    /// Frames the program ran on.
    pub sent: u64,
    /// Frames the destination pod's interface received.
    pub delivered: u64,
    pub seconds: f64,
    /// `delivered / seconds`.
    pub per_second: f64,
}

/// An interface's index, MAC address and received-packet count, from `ip -j -s link`.
pub fn link(ns: &Netns, ifname: &str) -> anyhow::Result<(u32, [u8; 6], u64)> {
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-j", "-s", "link", "show", ifname])
        .output()
        .context("running ip link")?;
    if !out.status.success() {
        bail!(
            "ip link show {ifname}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip's JSON")?;
    let l = &v[0];
    let index = l["ifindex"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .context("ifindex")?;
    let mut mac = [0u8; 6];
    let text = l["address"].as_str().context("address")?;
    for (i, part) in text.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).context("a MAC address")?;
    }
    let rx = l["stats64"]["rx"]["packets"]
        .as_u64()
        .context("rx packets")?;
    Ok((index, mac, rx))
}

/// A UDP frame from `src` to `dst` addressed to the node interface's MAC.
pub fn frame(dst_mac: [u8; 6], src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut f = udp_frame(src, dst, 18);
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&[0x02, 0x42, 0, 0, 0, 1]);
    f
}

/// Creates the veth pair that anchors the program in the XDP dispatcher.
fn anchor(node: &Netns) -> anyhow::Result<()> {
    if link(node, ANCHOR).is_ok() {
        return Ok(());
    }
    let out = Command::new("ip")
        .args([
            "-n",
            node.name(),
            "link",
            "add",
            ANCHOR,
            "type",
            "veth",
            "peer",
            "name",
            "hpb-xdp1",
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "creating {ANCHOR}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for l in [ANCHOR, "hpb-xdp1"] {
        let _ = Command::new("ip")
            .args(["-n", node.name(), "link", "set", l, "up"])
            .output();
    }
    Ok(())
}

/// Injects `frame` on `ifname` inside `node` in `windows` windows of `window` each, with our
/// XDP program (sharing the maps pinned under `pin`, or with empty maps of its own), and
/// counts what reached `sink`'s `eth0`; the best window counts.
pub fn run(
    node: &Netns,
    ifname: &str,
    pin: Option<&Path>,
    frame: &[u8],
    sink: &Netns,
    w: Windows,
) -> anyhow::Result<LiveRate> {
    let (ifindex, _, _) = link(node, ifname)?;
    anchor(node)?;
    let len = u32::try_from(frame.len()).context("frame size")?;
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    let ctx: Vec<u8> = [0, len, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v: &u32| v.to_ne_bytes())
        .collect();
    node.run(|| -> anyhow::Result<LiveRate> {
        let flows = if pin.is_some() {
            capacity::CONNECTIONS
        } else {
            1024
        };
        let mut dp =
            Datapath::load(embedded_object()?, pin, flows).context("loading the programs")?;
        let prog: &mut Xdp = dp
            .ebpf
            .program_mut(program_names::XDP)
            .context("the XDP program")?
            .try_into()
            .context("the XDP program")?;
        // Attached to a spare interface, the program stays in the kernel's XDP dispatcher;
        // otherwise every test run with `repeat > 1` adds it and removes it again, which
        // waits for RCU (tens of milliseconds a call).
        let _anchor = prog
            .attach(ANCHOR, XdpMode::Default)
            .context("attaching to the spare interface")?;
        let inject = |duration: Duration| -> anyhow::Result<(u64, f64)> {
            let mut sent = 0u64;
            let started = Instant::now();
            while started.elapsed() < duration {
                let mut opts = TestRunOptions::new();
                opts.data_in = Some(frame);
                opts.ctx_in = Some(&ctx);
                opts.repeat = BATCH;
                opts.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
                prog.test_run(opts)
                    .context("BPF_PROG_TEST_RUN (live frames)")?;
                sent += u64::from(BATCH);
            }
            Ok((sent, started.elapsed().as_secs_f64()))
        };
        inject(w.warmup)?;
        let mut best = LiveRate::default();
        for _ in 0..w.windows.max(1) {
            let (_, _, rx_before) = link(sink, "eth0")?;
            let (sent, seconds) = inject(w.window)?;
            // Let the last batch drain.
            std::thread::sleep(Duration::from_millis(20));
            let (_, _, rx_after) = link(sink, "eth0")?;
            let delivered = rx_after.saturating_sub(rx_before);
            #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
            let per_second = delivered as f64 / seconds;
            if per_second > best.per_second {
                best = LiveRate {
                    sent,
                    delivered,
                    seconds,
                    per_second,
                };
            }
        }
        Ok(best)
    })
}
