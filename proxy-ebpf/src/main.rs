//! hybrid-proxy's datapath programs.
//!
//! Built for `bpfel-unknown-none` by `cargo xtask build-ebpf`. On the host the crate still
//! compiles (so that `cargo build --workspace` and clippy check the program code on stable)
//! into a binary that only says where the real build comes from.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![expect(
    clippy::inline_always,
    reason = "every helper on the packet path is inlined on purpose: BPF-to-BPF calls cost \
              instructions and complicate the verifier's bounds tracking"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros take the context by value"
)]

use aya_ebpf::{
    bindings::{TC_ACT_PIPE, xdp_action},
    macros::{classifier, map, xdp},
    maps::PerCpuArray,
    programs::{TcContext, XdpContext},
};
use proxy_common::{Counter, StatIndex};

/// Per-CPU packet counters of every program, indexed by [`StatIndex`].
#[map(name = "STATS")]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(StatIndex::COUNT, 0);

#[inline(always)]
fn count(slot: StatIndex, bytes: usize) {
    if let Some(c) = STATS.get_ptr_mut(slot as u32) {
        // SAFETY: the pointer is this CPU's own slot of a per-CPU array, valid for the
        // duration of the program and touched by no other CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}

#[xdp]
pub fn hp_xdp(ctx: XdpContext) -> u32 {
    count(StatIndex::XdpSeen, ctx.data_end() - ctx.data());
    xdp_action::XDP_PASS
}

#[classifier]
pub fn hp_tc_ingress(ctx: TcContext) -> i32 {
    count(StatIndex::TcIngressSeen, ctx.len() as usize);
    TC_ACT_PIPE
}

#[classifier]
pub fn hp_tc_egress(ctx: TcContext) -> i32 {
    count(StatIndex::TcEgressSeen, ctx.len() as usize);
    TC_ACT_PIPE
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("proxy-ebpf holds eBPF programs; build them with `cargo xtask build-ebpf`");
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
