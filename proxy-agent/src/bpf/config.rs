//! What the fast path needs to know from the agent's configuration.
//!
//! Plain data with defaults; the agent's YAML config (`acceleration.*`) maps onto it.

use std::{fmt, path::PathBuf, time::Duration};

/// Which services go on the fast path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccelerationMode {
    /// No service is accelerated; every new flow goes through nftables. An agent that finds
    /// a pinned fast path still opens it, so that the flows on it finish there; with nothing
    /// pinned it need not open one.
    #[default]
    Off,
    /// Services annotated `hybrid-proxy.io/acceleration: "on"`.
    Annotated,
    /// Services whose measured packet rate makes them hot (see [`AutoThresholds`] and
    /// [`super::policy`]), and those annotated `"on"`.
    Auto,
    /// Every service that can be (an annotation `"off"` still keeps one out).
    All,
}

impl fmt::Display for AccelerationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Annotated => "annotated",
            Self::Auto => "auto",
            Self::All => "all",
        })
    }
}

/// How the XDP program is attached to node interfaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// Native (driver) mode, falling back to generic (skb) mode where the driver has none.
    #[default]
    Auto,
    /// Native only: fail when the driver cannot.
    Native,
    /// Generic (skb) mode only: works everywhere, slower.
    Generic,
}

/// Which interfaces face this node's pods (TC programs go there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PodInterfaces {
    /// Every interface holding a route into one of this node's pod CIDRs (what CNI plugins
    /// with one veth per pod, or a bridge, set up).
    #[default]
    PodCidrRoutes,
    /// Exactly these interfaces.
    Names(Vec<String>),
    /// Interfaces whose name starts with one of these prefixes (e.g. `cali`, `lxc`).
    Prefixes(Vec<String>),
}

/// Idle timeouts after which the agent removes a flow from the connection table.
///
/// The table is not an LRU (see the datapath), so ended flows are removed here. The defaults
/// follow the kernel's conntrack and kube-proxy's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// A TCP flow that saw SYN and ACK but no FIN or RST (kube-proxy sets conntrack's
    /// established timeout to 24 h).
    pub tcp_established: Duration,
    /// A TCP flow that saw FIN or RST (conntrack: `time_wait` 120 s).
    pub tcp_closing: Duration,
    /// A TCP flow that never got past the SYN (conntrack: `syn_sent` 120 s).
    pub tcp_opening: Duration,
    /// A UDP flow (conntrack: `udp_timeout_stream` 120 s).
    pub udp: Duration,
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_hours(24),
            tcp_closing: Duration::from_mins(2),
            tcp_opening: Duration::from_mins(2),
            udp: Duration::from_mins(2),
        }
    }
}

/// The `auto` mode's policy settings (`acceleration.auto.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct AutoThresholds {
    /// A service port whose rate of packets from clients is above this is promoted.
    pub promote_above_pps: f64,
    /// A promoted service port whose rate falls below this is demoted (lower than
    /// `promote_above_pps`: hysteresis).
    pub demote_below_pps: f64,
    /// A service port stays at least this long on a path before the policy moves it again.
    pub min_dwell: Duration,
    /// At most this many service ports promoted by the policy (0: as many as the maps hold).
    pub max_services: u32,
}

impl Default for AutoThresholds {
    fn default() -> Self {
        Self {
            promote_above_pps: 1000.0,
            demote_below_pps: 200.0,
            min_dwell: Duration::from_secs(30),
            max_services: 0,
        }
    }
}

/// Where pinned objects live unless configured otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/hybrid-proxy";

/// The fast path's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct FastPathConfig {
    pub mode: AccelerationMode,
    /// Node (external) interfaces: XDP for north-south traffic, TC egress for its replies.
    /// Empty: no XDP path (pod traffic is still accelerated).
    pub node_interfaces: Vec<String>,
    pub pod_interfaces: PodInterfaces,
    /// Directory on a bpffs where maps and links are pinned (bpffs is mounted there when the
    /// directory is not on one), so that the fast path outlives the agent process and a
    /// restarted agent adopts it.
    pub pin_path: PathBuf,
    pub xdp_mode: XdpAttachMode,
    /// Capacity of the connection table (two entries per flow). Fixed when the maps are first
    /// created; a changed value takes effect after `proxy-agent cleanup`.
    pub flow_entries: u32,
    pub flow_timeouts: FlowTimeouts,
    pub auto: AutoThresholds,
    /// How accelerated pod flows are forwarded (`acceleration.forwarding`).
    pub forwarding: super::forwarding::ForwardingMode,
}

impl Default for FastPathConfig {
    fn default() -> Self {
        Self {
            mode: AccelerationMode::Off,
            node_interfaces: Vec::new(),
            pod_interfaces: PodInterfaces::default(),
            pin_path: PathBuf::from(DEFAULT_PIN_PATH),
            xdp_mode: XdpAttachMode::Auto,
            flow_entries: proxy_common::capacity::CONNECTIONS,
            flow_timeouts: FlowTimeouts::default(),
            auto: AutoThresholds::default(),
            forwarding: super::forwarding::ForwardingMode::default(),
        }
    }
}
