//! The kernel side: loading the programs (creating or adopting pinned maps), the maps behind
//! [`MapStore`], attaching to interfaces (pinned links), and removing it all.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use proxy_common::{
    AffinityKey, AffinityKey6, AffinityValue, AffinityValue6, Backend, Backend6, BackendKey,
    Counter, FlowKey, FlowKey6, FlowValue, FlowValue6, LAYOUT_VERSION, LocalEndpoint, MaglevKey,
    MaglevValue, Meta, PortInfo, ServiceCounter, ServiceKey, ServiceKey6, ServiceValue, StatIndex,
    map_names, program_names,
};

use super::{
    config::XdpAttachMode,
    object::BpfError,
    store::{FamilyTables, MapStore, StoreError, V4, V6},
    table::{KernelTable, Table},
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The maps of a loaded (or adopted) datapath.
pub struct KernelMaps {
    meta: Array<MapData, Meta>,
    stats: PerCpuArray<MapData, Counter>,
    services: KernelTable<ServiceKey, ServiceValue>,
    maglev: KernelTable<MaglevKey, MaglevValue>,
    backends: KernelTable<BackendKey, Backend>,
    flows: KernelTable<FlowKey, FlowValue>,
    affinity: KernelTable<AffinityKey, AffinityValue>,
    service_stats: PerCpuArray<MapData, ServiceCounter>,
    ports: KernelTable<u64, PortInfo>,
    services6: KernelTable<ServiceKey6, ServiceValue>,
    backends6: KernelTable<BackendKey, Backend6>,
    flows6: KernelTable<FlowKey6, FlowValue6>,
    affinity6: KernelTable<AffinityKey6, AffinityValue6>,
    /// `HP_LOCAL_EPS`: this node's pods, for redirect delivery.
    local_endpoints: KernelTable<u32, LocalEndpoint>,
    /// `HP_IFACES`: the interfaces our programs are attached to.
    interfaces: KernelTable<u32, u32>,
    nr_cpus: usize,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, BpfError> {
    ebpf.take_map(name).ok_or(BpfError::MissingMap { name })
}

fn sum(values: &PerCpuValues<Counter>) -> Counter {
    values.iter().fold(Counter::default(), |a, c| Counter {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
    })
}

fn sum_service(values: &PerCpuValues<ServiceCounter>) -> ServiceCounter {
    values
        .iter()
        .fold(ServiceCounter::default(), |a, c| ServiceCounter {
            seen_packets: a.seen_packets + c.seen_packets,
            fast_packets: a.fast_packets + c.fast_packets,
            redirected_packets: a.redirected_packets + c.redirected_packets,
        })
}

fn nr_cpus() -> Result<usize, BpfError> {
    aya::util::nr_cpus().map_err(|(_, e)| BpfError::Io {
        what: "counting CPUs",
        source: e,
    })
}

impl KernelMaps {
    /// The maps, each taken by `open(name, kind)` (from a loaded object, or from pins).
    fn assemble(
        mut open: impl FnMut(&'static str, fn(MapData) -> Map) -> Result<Map, BpfError>,
    ) -> Result<Self, BpfError> {
        fn typed<T: TryFrom<Map, Error = MapError>>(
            map: Map,
            name: &'static str,
        ) -> Result<T, BpfError> {
            T::try_from(map).map_err(|source| BpfError::Map { name, source })
        }
        let mut hash = |name: &'static str| open(name, Map::HashMap);
        let services = typed(hash(map_names::SERVICES)?, map_names::SERVICES)?;
        let maglev = typed(hash(map_names::MAGLEV)?, map_names::MAGLEV)?;
        let backends = typed(hash(map_names::BACKENDS)?, map_names::BACKENDS)?;
        let flows = typed(hash(map_names::FLOWS)?, map_names::FLOWS)?;
        let ports = typed(hash(map_names::PORTS)?, map_names::PORTS)?;
        let services6 = typed(hash(map_names::SERVICES6)?, map_names::SERVICES6)?;
        let backends6 = typed(hash(map_names::BACKENDS6)?, map_names::BACKENDS6)?;
        let flows6 = typed(hash(map_names::FLOWS6)?, map_names::FLOWS6)?;
        let local = typed(
            hash(map_names::LOCAL_ENDPOINTS)?,
            map_names::LOCAL_ENDPOINTS,
        )?;
        let interfaces = typed(hash(map_names::INTERFACES)?, map_names::INTERFACES)?;
        let affinity = typed(
            open(map_names::AFFINITY, Map::LruHashMap)?,
            map_names::AFFINITY,
        )?;
        let affinity6 = typed(
            open(map_names::AFFINITY6, Map::LruHashMap)?,
            map_names::AFFINITY6,
        )?;
        Ok(Self {
            meta: typed(open(map_names::META, Map::Array)?, map_names::META)?,
            stats: typed(open(map_names::STATS, Map::PerCpuArray)?, map_names::STATS)?,
            service_stats: typed(
                open(map_names::SERVICE_STATS, Map::PerCpuArray)?,
                map_names::SERVICE_STATS,
            )?,
            services: KernelTable::new("services", services),
            maglev: KernelTable::new("maglev", maglev),
            backends: KernelTable::new("backends", backends),
            flows: KernelTable::lenient("flows", flows),
            affinity: KernelTable::lenient("affinity", affinity),
            ports: KernelTable::new("ports", ports),
            services6: KernelTable::new("services6", services6),
            backends6: KernelTable::new("backends6", backends6),
            flows6: KernelTable::lenient("flows6", flows6),
            affinity6: KernelTable::lenient("affinity6", affinity6),
            local_endpoints: KernelTable::new("local endpoints", local),
            interfaces: KernelTable::new("interfaces", interfaces),
            nr_cpus: nr_cpus()?,
        })
    }

    fn take_all(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Self::assemble(|name, _| take(ebpf, name))
    }

    /// Opens the maps pinned under `pin` without loading or attaching anything (for
    /// `proxy-agent status` and `verify`, while the agent runs or not). Check the layout
    /// with [`pinned_layout`] first.
    pub fn open_pinned(pin: &Path) -> Result<Self, BpfError> {
        Self::assemble(|name, kind| {
            let data = MapData::from_pin(pin.join("maps").join(name))
                .map_err(|source| BpfError::Map { name, source })?;
            Ok(kind(data))
        })
    }

    /// `max_entries` of the connection table.
    pub fn flow_capacity(&self) -> u32 {
        self.flows.capacity()
    }
}

impl MapStore for KernelMaps {
    fn v4(&mut self) -> FamilyTables<'_, V4> {
        FamilyTables {
            services: &mut self.services,
            backends: &mut self.backends,
            flows: &mut self.flows,
            affinity: &mut self.affinity,
        }
    }
    fn v6(&mut self) -> FamilyTables<'_, V6> {
        FamilyTables {
            services: &mut self.services6,
            backends: &mut self.backends6,
            flows: &mut self.flows6,
            affinity: &mut self.affinity6,
        }
    }
    fn maglev(&mut self) -> &mut dyn Table<MaglevKey, MaglevValue> {
        &mut self.maglev
    }
    fn ports(&mut self) -> &mut dyn Table<u64, PortInfo> {
        &mut self.ports
    }
    fn local_endpoints(&mut self) -> &mut dyn Table<u32, LocalEndpoint> {
        &mut self.local_endpoints
    }
    fn interfaces(&mut self) -> &mut dyn Table<u32, u32> {
        &mut self.interfaces
    }
    fn put_counter(&mut self, slot: u32) -> Result<(), StoreError> {
        let zero = PerCpuValues::try_from(vec![ServiceCounter::default(); self.nr_cpus])
            .map_err(|e| StoreError::new("service counters", "put", MapError::IoError(e)))?;
        self.service_stats
            .set(slot, zero, 0)
            .map_err(|e| StoreError::new("service counters", "put", e))
    }
    fn counter(&self, slot: u32) -> Result<ServiceCounter, StoreError> {
        self.service_stats
            .get(&slot, 0)
            .map(|v| sum_service(&v))
            .map_err(|e| StoreError::new("service counters", "read", e))
    }
    fn stats(&self) -> Result<Vec<Counter>, StoreError> {
        let mut out = Vec::with_capacity(StatIndex::COUNT as usize);
        for i in 0..StatIndex::COUNT {
            let v = self
                .stats
                .get(&i, 0)
                .map_err(|e| StoreError::new("stats", "read", e))?;
            out.push(sum(&v));
        }
        Ok(out)
    }
    fn meta(&self) -> Result<Meta, StoreError> {
        self.meta
            .get(&0, 0)
            .map_err(|e| StoreError::new("meta", "read", e))
    }
    fn set_meta(&mut self, meta: Meta) -> Result<(), StoreError> {
        self.meta
            .set(0, meta, 0)
            .map_err(|e| StoreError::new("meta", "put", e))
    }
}

/// FNV-1a of the object: tells whether the attached programs are this build's.
pub fn object_hash(object: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in object {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The loaded programs and their maps.
pub struct Datapath {
    /// The programs (maps taken out into [`Datapath::maps`]).
    pub ebpf: Ebpf,
    pub maps: KernelMaps,
}

impl Datapath {
    /// Loads the object and verifies the programs. With `pin`, maps are pinned under
    /// `<pin>/maps/` and maps already pinned there are reused (check them with
    /// [`pinned_layout`] first).
    pub fn load(object: &[u8], pin: Option<&Path>, flow_entries: u32) -> Result<Self, BpfError> {
        let mut loader = EbpfLoader::new();
        let dirs: Vec<(&'static str, PathBuf)> = pin
            .map(|p| {
                map_names::ALL
                    .iter()
                    .map(|n| (*n, p.join("maps").join(n)))
                    .collect()
            })
            .unwrap_or_default();
        for (name, path) in &dirs {
            loader.map_pin_path(name, path.as_path());
        }
        loader.map_max_entries(map_names::FLOWS, flow_entries);
        loader.map_max_entries(map_names::FLOWS6, flow_entries);
        let mut ebpf = loader.load(object).map_err(BpfError::Load)?;
        for name in [
            program_names::TC_INGRESS,
            program_names::TC_EGRESS,
            program_names::TC_REPLY,
        ] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| BpfError::Program { name, source })?;
        }
        let xdp: &mut Xdp = program(&mut ebpf, program_names::XDP)?;
        xdp.load().map_err(|source| BpfError::Program {
            name: program_names::XDP,
            source,
        })?;
        let maps = KernelMaps::take_all(&mut ebpf)?;
        Ok(Self { ebpf, maps })
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(BpfError::MissingProgram { name })?
        .try_into()
        .map_err(|source| BpfError::Program { name, source })
}

/// The layout version recorded in pinned maps under `pin`, if there are any.
pub fn pinned_layout(pin: &Path) -> Option<Meta> {
    let path = pin.join("maps").join(map_names::META);
    let data = MapData::from_pin(&path).ok()?;
    let array: Array<MapData, Meta> = Array::try_from(Map::Array(data)).ok()?;
    array.get(&0, 0).ok()
}

/// Makes sure `pin` is a directory on a bpffs, mounting one when there is none: at
/// `/sys/fs/bpf` when the pin path is below it (the usual place, not mounted in some
/// containers), else at the pin path itself.
pub fn prepare_pin_dir(pin: &Path) -> Result<(), BpfError> {
    let io = |what: &'static str| move |source: io::Error| BpfError::Io { what, source };
    let standard = Path::new("/sys/fs/bpf");
    if !on_bpffs(pin) {
        if pin.starts_with(standard) && !on_bpffs(standard) {
            mount_bpffs(standard)?;
        }
        let parent_bpf = pin.parent().is_some_and(on_bpffs);
        fs::create_dir_all(pin).map_err(io("creating the pin directory"))?;
        if !parent_bpf && !on_bpffs(pin) {
            mount_bpffs(pin)?;
        }
    }
    for sub in ["maps", "links"] {
        fs::create_dir_all(pin.join(sub)).map_err(io("creating the pin directory"))?;
    }
    Ok(())
}

fn mount_bpffs(at: &Path) -> Result<(), BpfError> {
    let target = CString::new(at.as_os_str().as_bytes()).expect("no NUL in a path");
    // SAFETY: valid C strings; mounting a fresh bpffs instance.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(BpfError::Io {
            what: "mounting bpffs for the pin path",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn on_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-parameter.
    let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    #[expect(
        clippy::useless_conversion,
        reason = "`f_type` is an i64 on x86_64 but narrower on other targets"
    )]
    let f_type = i64::from(st.f_type);
    rc == 0 && f_type == BPF_FS_MAGIC
}

/// A program hook on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
    /// TC ingress of a node interface: replies of redirect flows from other nodes.
    TcReply,
}

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttachMode {
    XdpNative,
    XdpGeneric,
    /// TCX link (kernel 6.6+), pinned.
    Tcx,
    /// Legacy `clsact` filter (not pinnable; stays attached until removed).
    Netlink,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::XdpNative => "xdp native",
            Self::XdpGeneric => "xdp generic",
            Self::Tcx => "tcx",
            Self::Netlink => "tc netlink",
        })
    }
}

/// One attachment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    pub interface: String,
    pub if_index: u32,
    pub hook: Hook,
    pub mode: AttachMode,
}

impl std::fmt::Display for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hook = match self.hook {
            Hook::Xdp => "xdp",
            Hook::TcIngress => "tc ingress",
            Hook::TcEgress => "tc egress",
            Hook::TcReply => "tc ingress (replies)",
        };
        write!(f, "{} {hook} ({})", self.interface, self.mode)
    }
}

fn link_file(hook: Hook, mode: AttachMode, interface: &str, if_index: u32) -> String {
    let kind = match (hook, mode) {
        (Hook::Xdp, AttachMode::XdpGeneric) => "xdp-skb",
        (Hook::Xdp, _) => "xdp-drv",
        (Hook::TcIngress, _) => "tcx-ingress",
        (Hook::TcEgress, _) => "tcx-egress",
        (Hook::TcReply, _) => "tcx-reply",
    };
    format!("{kind}@{interface}#{if_index}")
}

/// Parses a link pin file name back.
fn parse_link_file(name: &str) -> Option<Attachment> {
    let (kind, rest) = name.split_once('@')?;
    let (interface, index) = rest.rsplit_once('#')?;
    let (hook, mode) = match kind {
        "xdp-skb" => (Hook::Xdp, AttachMode::XdpGeneric),
        "xdp-drv" => (Hook::Xdp, AttachMode::XdpNative),
        "tcx-ingress" => (Hook::TcIngress, AttachMode::Tcx),
        "tcx-egress" => (Hook::TcEgress, AttachMode::Tcx),
        "tcx-reply" => (Hook::TcReply, AttachMode::Tcx),
        _ => return None,
    };
    Some(Attachment {
        interface: interface.to_owned(),
        if_index: index.parse().ok()?,
        hook,
        mode,
    })
}

/// The attachments pinned under `pin`, with their pin files.
pub fn pinned_links(pin: &Path) -> Vec<(Attachment, PathBuf)> {
    let Ok(dir) = fs::read_dir(pin.join("links")) else {
        return Vec::new();
    };
    let mut out: Vec<(Attachment, PathBuf)> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            parse_link_file(&name).map(|a| (a, e.path()))
        })
        .collect();
    out.sort();
    out
}

fn attach_error(
    interface: &str,
    hook: Hook,
) -> impl FnOnce(aya::programs::ProgramError) -> BpfError {
    let interface = interface.to_owned();
    move |source| BpfError::Attach {
        interface,
        hook,
        source,
    }
}

fn link_error(interface: &str, hook: Hook) -> impl FnOnce(LinkError) -> BpfError {
    let interface = interface.to_owned();
    move |source| BpfError::Link {
        interface,
        hook,
        source,
    }
}

impl Datapath {
    /// Attaches a program to an interface, replacing our pinned link there atomically when
    /// there is one (a restarted or upgraded agent), and pins the new link under `pin`.
    pub fn attach(
        &mut self,
        interface: &str,
        hook: Hook,
        xdp_mode: XdpAttachMode,
        pin: Option<&Path>,
    ) -> Result<Attachment, BpfError> {
        let if_index =
            super::netlink::if_index(interface).ok_or_else(|| BpfError::NoInterface {
                interface: interface.to_owned(),
            })?;
        let existing = pin.and_then(|p| {
            pinned_links(p)
                .into_iter()
                .find(|(a, _)| a.interface == interface && a.if_index == if_index && a.hook == hook)
        });
        match hook {
            Hook::Xdp => self.attach_xdp(interface, if_index, xdp_mode, pin, existing),
            Hook::TcIngress | Hook::TcEgress | Hook::TcReply => {
                self.attach_tc(interface, if_index, hook, pin, existing)
            }
        }
    }

    fn attach_xdp(
        &mut self,
        interface: &str,
        if_index: u32,
        xdp_mode: XdpAttachMode,
        pin: Option<&Path>,
        existing: Option<(Attachment, PathBuf)>,
    ) -> Result<Attachment, BpfError> {
        let prog: &mut Xdp = program(&mut self.ebpf, program_names::XDP)?;
        if let Some((attachment, path)) = existing {
            let link = PinnedLink::from_pin(&path).map_err(link_error(interface, Hook::Xdp))?;
            let link =
                XdpLink::try_from(FdLink::from(link)).map_err(link_error(interface, Hook::Xdp))?;
            let id = prog
                .attach_to_link(link)
                .map_err(attach_error(interface, Hook::Xdp))?;
            // The pin keeps the (updated) link alive: close our descriptor of it (leaking
            // it would keep the link attached after a cleanup removed the pin).
            let link = prog
                .take_link(id)
                .map_err(attach_error(interface, Hook::Xdp))?;
            drop(FdLink::try_from(link).map_err(link_error(interface, Hook::Xdp))?);
            return Ok(attachment);
        }
        let modes: &[(XdpMode, AttachMode)] = match xdp_mode {
            XdpAttachMode::Auto => &[
                (XdpMode::Driver, AttachMode::XdpNative),
                (XdpMode::Skb, AttachMode::XdpGeneric),
            ],
            XdpAttachMode::Native => &[(XdpMode::Driver, AttachMode::XdpNative)],
            XdpAttachMode::Generic => &[(XdpMode::Skb, AttachMode::XdpGeneric)],
        };
        let mut last = None;
        for (xdp, mode) in modes {
            match prog.attach_to_if_index(if_index, *xdp) {
                Ok(id) => {
                    let link = prog
                        .take_link(id)
                        .map_err(attach_error(interface, Hook::Xdp))?;
                    keep(link, pin, &link_file(Hook::Xdp, *mode, interface, if_index)).map_err(
                        |source| BpfError::Pin {
                            interface: interface.to_owned(),
                            source,
                        },
                    )?;
                    return Ok(Attachment {
                        interface: interface.to_owned(),
                        if_index,
                        hook: Hook::Xdp,
                        mode: *mode,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(attach_error(interface, Hook::Xdp)(
            last.expect("at least one mode"),
        ))
    }

    fn attach_tc(
        &mut self,
        interface: &str,
        if_index: u32,
        hook: Hook,
        pin: Option<&Path>,
        existing: Option<(Attachment, PathBuf)>,
    ) -> Result<Attachment, BpfError> {
        let (name, attach_type) = match hook {
            Hook::TcIngress => (program_names::TC_INGRESS, TcAttachType::Ingress),
            Hook::TcReply => (program_names::TC_REPLY, TcAttachType::Ingress),
            _ => (program_names::TC_EGRESS, TcAttachType::Egress),
        };
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        if let Some((attachment, path)) = existing {
            let link = PinnedLink::from_pin(&path).map_err(link_error(interface, hook))?;
            let link = SchedClassifierLink::try_from(FdLink::from(link))
                .map_err(link_error(interface, hook))?;
            let id = prog
                .attach_to_link(link)
                .map_err(attach_error(interface, hook))?;
            let link = prog.take_link(id).map_err(attach_error(interface, hook))?;
            drop(FdLink::try_from(link).map_err(link_error(interface, hook))?);
            return Ok(attachment);
        }
        match prog.attach_with_options(
            interface,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        ) {
            Ok(id) => {
                let link = prog.take_link(id).map_err(attach_error(interface, hook))?;
                keep(
                    link,
                    pin,
                    &link_file(hook, AttachMode::Tcx, interface, if_index),
                )
                .map_err(|source| BpfError::Pin {
                    interface: interface.to_owned(),
                    source,
                })?;
                Ok(Attachment {
                    interface: interface.to_owned(),
                    if_index,
                    hook,
                    mode: AttachMode::Tcx,
                })
            }
            Err(tcx_error) => {
                // Kernels before 6.6 have no TCX: a clsact filter, which stays attached
                // until removed. Replace ours rather than stacking a second one.
                let _ = tc::qdisc_add_clsact(interface);
                let _ = tc::qdisc_detach_program(interface, attach_type, name);
                let id = prog
                    .attach_with_options(
                        interface,
                        attach_type,
                        TcAttachOptions::Netlink(NlOptions::default()),
                    )
                    .map_err(|_| attach_error(interface, hook)(tcx_error))?;
                let link = prog.take_link(id).map_err(attach_error(interface, hook))?;
                std::mem::forget(link);
                Ok(Attachment {
                    interface: interface.to_owned(),
                    if_index,
                    hook,
                    mode: AttachMode::Netlink,
                })
            }
        }
    }
}

/// Keeps a link attached after this process: pinned when it is a bpf link and a pin
/// directory is given, else leaked (an unpinned bpf link then lives as long as the process;
/// a netlink attachment stays until removed).
fn keep<L>(link: L, pin: Option<&Path>, file: &str) -> Result<(), aya::pin::PinError>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    if let Some(pin) = pin {
        // A netlink attachment is no bpf link: the conversion fails without detaching it,
        // and it stays attached by itself.
        if let Ok(fd_link) = FdLink::try_from(link) {
            let path = pin.join("links").join(file);
            let _ = fs::remove_file(&path);
            drop(fd_link.pin(&path)?);
        }
        return Ok(());
    }
    std::mem::forget(link);
    Ok(())
}

/// Detaches one pinned attachment (removing its pin releases the link).
pub fn detach_pinned(path: &Path) {
    if let Ok(link) = PinnedLink::from_pin(path) {
        let _ = link.unpin();
    } else {
        let _ = fs::remove_file(path);
    }
}

/// Removes everything the fast path pinned under `pin` and every attachment it made: pinned
/// links (which detaches them), clsact filters of our programs on every interface of this
/// namespace, and the pinned maps. Idempotent.
pub fn cleanup(pin: &Path) -> Result<(), BpfError> {
    for (_, path) in pinned_links(pin) {
        detach_pinned(&path);
    }
    if let Ok(interfaces) = super::netlink::interfaces() {
        for (name, _) in interfaces {
            for (prog, t) in [
                (program_names::TC_INGRESS, TcAttachType::Ingress),
                (program_names::TC_EGRESS, TcAttachType::Egress),
            ] {
                let _ = tc::qdisc_detach_program(&name, t, prog);
            }
        }
    }
    for sub in ["links", "maps"] {
        if let Ok(dir) = fs::read_dir(pin.join(sub)) {
            for e in dir.filter_map(Result::ok) {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir(pin.join(sub));
    }
    match fs::remove_dir(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        // Our own bpffs mount point stays (it is empty now).
        Err(_) if on_bpffs(pin) => Ok(()),
        Err(source) => Err(BpfError::Io {
            what: "removing the pin directory",
            source,
        }),
    }
}

/// Whether pinned maps have the layout this build writes.
pub fn layout_matches(meta: &Meta) -> bool {
    meta.layout_version == LAYOUT_VERSION
}
