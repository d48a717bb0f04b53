//! Types shared by the agent (userspace) and the eBPF programs.
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]` with explicit padding and no
//! `bool`, so that both sides agree byte for byte; the layout tests at the bottom pin the
//! sizes and alignments.
#![no_std]

/// Per-program packet counters, indexed by [`StatIndex`].
///
/// The value of the per-CPU `STATS` array: every CPU increments its own copy without atomics
/// (the BPF target has no atomic compare-and-swap), and the agent sums the copies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Slots of the `STATS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatIndex {
    /// Every packet the XDP program saw.
    XdpSeen = 0,
    /// Every packet the TC ingress program saw.
    TcIngressSeen = 1,
    /// Every packet the TC egress program saw.
    TcEgressSeen = 2,
}

impl StatIndex {
    /// Number of slots the `STATS` array must hold.
    pub const COUNT: u32 = 3;

    pub const ALL: [StatIndex; 3] = [Self::XdpSeen, Self::TcIngressSeen, Self::TcEgressSeen];
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]` plain data made of integers only, with no padding bytes.
    unsafe impl aya::Pod for super::Counter {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::*;

    #[test]
    fn counter_layout() {
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(align_of::<Counter>(), 8);
    }

    #[test]
    fn stat_slots_are_dense() {
        for (i, slot) in StatIndex::ALL.iter().enumerate() {
            assert_eq!(*slot as u32 as usize, i);
        }
        assert_eq!(StatIndex::ALL.len(), StatIndex::COUNT as usize);
    }
}
