//! Reading a pinned fast path without loading or attaching anything: what `proxy-agent
//! status` shows, whether the agent runs or not.
//!
//! Everything comes from the kernel: the pinned maps (generation, the service entries, each
//! counted port's record in `HP_PORTS` with its name and decisions, the per-service counters,
//! the connection table) and the pinned links (attach mode per interface). Filters attached
//! through netlink on kernels before 6.6 are not pinned and are not listed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use proxy_common::{LAYOUT_VERSION, ServiceCounter, StatIndex, owner, service_flags};

use super::{
    eligibility::Reason,
    kernel::{self, Attachment, KernelMaps},
    netlink,
    object::BpfError,
    store::{self, MapStore as _},
    writes,
};

/// Where one path of a port goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathState {
    FastPath,
    Nftables(Reason),
    /// A code this build does not know (written by another version).
    Unknown(u8),
}

impl PathState {
    pub fn of_code(code: u8) -> Self {
        if code == 0 {
            Self::FastPath
        } else {
            Reason::from_code(code).map_or(Self::Unknown(code), Self::Nftables)
        }
    }

    pub fn is_fast(self) -> bool {
        self == Self::FastPath
    }
}

impl std::fmt::Display for PathState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FastPath => f.write_str("fast path"),
            Self::Nftables(r) => write!(f, "nftables ({r})"),
            Self::Unknown(c) => write!(f, "nftables (reason {c})"),
        }
    }
}

/// One counted service port as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortView {
    /// Its `ServicePortId`.
    pub id: u64,
    /// `namespace/name port/PROTOCOL`.
    pub label: String,
    pub slot: u32,
    /// Traffic from pods (TC).
    pub pods: PathState,
    /// Traffic from outside the node (XDP).
    pub external: PathState,
    /// Service-map entries translating its traffic, and entries only counting it.
    pub accelerated_entries: usize,
    pub counted_entries: usize,
    /// Of the accelerated entries, those whose new pod flows are redirected.
    pub redirect_entries: usize,
    pub counter: ServiceCounter,
}

/// One pinned attachment, and whether its interface is still there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentView {
    pub attachment: Attachment,
    pub live: bool,
}

/// Connection-table occupancy, both families' tables together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounts {
    /// Entries of fast-path flows (two per flow).
    pub fast: usize,
    /// Entries marking flows nftables started (one per flow).
    pub nftables_owned: usize,
    /// Of the fast-path entries, those of redirect flows (the node's conntrack never sees
    /// them).
    pub redirect: usize,
    /// Capacity of each family's table (`HP_FLOWS` and `HP_FLOWS6` have the same).
    pub capacity: u32,
}

/// A pinned fast path, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedView {
    pub pin_path: PathBuf,
    /// The layout version of the pinned maps; nothing else is read when it is not this
    /// build's.
    pub layout_version: u32,
    pub generation: u64,
    /// `HP_META`'s [`proxy_common::forwarding`] value: the forwarding of unannotated
    /// Services the agent last applied.
    pub forwarding: u32,
    pub attachments: Vec<AttachmentView>,
    pub ports: Vec<PortView>,
    pub stats: Vec<(StatIndex, u64)>,
    pub flows: FlowCounts,
}

impl PinnedView {
    pub fn layout_ok(&self) -> bool {
        self.layout_version == LAYOUT_VERSION
    }
}

/// Reads the fast path pinned under `pin`; `None` when nothing is pinned there.
pub fn read(pin: &Path) -> Result<Option<PinnedView>, BpfError> {
    let Some(meta) = kernel::pinned_layout(pin) else {
        return Ok(None);
    };
    let attachments = kernel::pinned_links(pin)
        .into_iter()
        .map(|(a, _)| AttachmentView {
            live: netlink::if_index(&a.interface) == Some(a.if_index),
            attachment: a,
        })
        .collect();
    let mut view = PinnedView {
        pin_path: pin.to_path_buf(),
        layout_version: meta.layout_version,
        generation: meta.generation,
        forwarding: meta.forwarding,
        attachments,
        ports: Vec::new(),
        stats: Vec::new(),
        flows: FlowCounts::default(),
    };
    if !kernel::layout_matches(&meta) {
        return Ok(Some(view));
    }
    let mut maps = KernelMaps::open_pinned(pin)?;
    let mut entries: BTreeMap<u64, (usize, usize, usize)> = BTreeMap::new();
    for (_, v) in store::entries(&mut maps)? {
        let e = entries.entry(v.id).or_default();
        if v.flags & service_flags::COUNT_ONLY == 0 {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
        if v.flags & service_flags::REDIRECT != 0 {
            e.2 += 1;
        }
    }
    for (id, info) in maps.ports().entries()? {
        let (accelerated_entries, counted_entries, redirect_entries) =
            entries.get(&id).copied().unwrap_or_default();
        view.ports.push(PortView {
            id,
            label: writes::port_label(&info),
            slot: info.counter,
            pods: PathState::of_code(info.pods),
            external: PathState::of_code(info.external),
            accelerated_entries,
            counted_entries,
            redirect_entries,
            counter: if info.counter == 0 {
                ServiceCounter::default()
            } else {
                maps.counter(info.counter)?
            },
        });
    }
    view.ports.sort_by(|a, b| a.label.cmp(&b.label));
    view.stats = StatIndex::ALL
        .iter()
        .zip(maps.stats()?)
        .map(|(i, c)| (*i, c.packets))
        .collect();
    for f in store::flow_entries(&mut maps)? {
        if f.owner == owner::FAST {
            view.flows.fast += 1;
            if f.forwarding == proxy_common::forwarding::REDIRECT {
                view.flows.redirect += 1;
            }
        } else {
            view.flows.nftables_owned += 1;
        }
    }
    view.flows.capacity = maps.flow_capacity();
    Ok(Some(view))
}

/// The per-service counters of the given slots, read again (for rates).
pub fn read_counters(
    pin: &Path,
    slots: impl IntoIterator<Item = u32>,
) -> Result<BTreeMap<u32, ServiceCounter>, BpfError> {
    let maps = KernelMaps::open_pinned(pin)?;
    let mut out = BTreeMap::new();
    for slot in slots {
        if slot != 0 {
            out.insert(slot, maps.counter(slot)?);
        }
    }
    Ok(out)
}
