//! The agent's configuration: one YAML file with camelCase keys, parsed once into typed
//! values. Every problem in the file is reported together, each with its key.
//!
//! Every key, its default and the reason for the default are listed in the README's
//! configuration reference; `DEFAULTS` below is the same text in YAML form.

pub mod duration;
pub mod kube_proxy;
mod reader;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use reader::Reader;
use thiserror::Error;

use crate::{
    model::ip::parse_cidr,
    plan::{DetectLocal, NodePortAddresses, PlanSettings},
};

/// Which services the eBPF fast path serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccelerationMode {
    /// Everything through nftables.
    #[default]
    Off,
    /// Services annotated `hybrid-proxy.io/acceleration: "on"`.
    Annotated,
    /// Services whose measured packet rate crosses `acceleration.auto.promoteAbovePps`.
    Auto,
    /// Every eligible service.
    All,
}

impl AccelerationMode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "off" => Self::Off,
            "annotated" => Self::Annotated,
            "auto" => Self::Auto,
            "all" => Self::All,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Annotated => "annotated",
            Self::Auto => "auto",
            Self::All => "all",
        }
    }
}

/// How accelerated pod flows are forwarded (`acceleration.forwarding`); the fast path uses
/// this type as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardingMode {
    /// `redirect` unless the node has something that must see forwarded pod traffic.
    #[default]
    Auto,
    /// Accelerated pod flows bypass the node's netfilter and routing, both directions.
    Redirect,
    /// Translate, then let the kernel forward (for nodes whose policy lives in netfilter).
    Stack,
}

impl ForwardingMode {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auto" => Self::Auto,
            "redirect" => Self::Redirect,
            "stack" => Self::Stack,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Redirect => "redirect",
            Self::Stack => "stack",
        }
    }
}

impl fmt::Display for ForwardingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    #[default]
    Auto,
    Native,
    Generic,
}

/// Thresholds of automatic promotion (`acceleration.mode: auto`).
#[derive(Clone, Debug, PartialEq)]
pub struct AutoAcceleration {
    /// A service whose packet rate stays above this is promoted to the fast path.
    pub promote_above_pps: f64,
    /// A promoted service whose rate falls below this is demoted (hysteresis).
    pub demote_below_pps: f64,
    /// A service stays at least this long on a path before it may move again.
    pub min_dwell: Duration,
    /// At most this many services on the fast path (0: as many as the maps hold).
    pub max_services: u32,
}

impl Default for AutoAcceleration {
    fn default() -> Self {
        Self {
            promote_above_pps: 1000.0,
            demote_below_pps: 200.0,
            min_dwell: Duration::from_secs(30),
            max_services: 0,
        }
    }
}

/// The `acceleration` section.
#[derive(Clone, Debug, PartialEq)]
pub struct AccelerationConfig {
    pub mode: AccelerationMode,
    /// Node (external) interfaces the XDP program attaches to.
    pub interfaces: Vec<String>,
    /// Pod-facing interfaces (names, or prefixes ending in `*`); empty: every interface
    /// holding a route into this node's podCIDR.
    pub pod_interfaces: Vec<String>,
    /// Where maps and links are pinned (bpffs).
    pub pin_path: PathBuf,
    pub xdp_mode: XdpMode,
    pub auto: AutoAcceleration,
    /// `auto`, `redirect` or `stack`: whether accelerated pod flows bypass the node's stack
    /// (default `auto`: redirect unless a netfilter policy engine or another BPF program
    /// needs to see them).
    pub forwarding: ForwardingMode,
}

impl Default for AccelerationConfig {
    fn default() -> Self {
        Self {
            mode: AccelerationMode::Off,
            interfaces: Vec::new(),
            pod_interfaces: Vec::new(),
            pin_path: PathBuf::from("/sys/fs/bpf/hybrid-proxy"),
            xdp_mode: XdpMode::Auto,
            auto: AutoAcceleration::default(),
            forwarding: ForwardingMode::Auto,
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "each flag is an independent, documented key"
)]
pub struct Config {
    /// This node's name; default: `$NODE_NAME`, else the host name.
    pub node_name: Option<String>,
    pub cluster_cidrs: Vec<IpNet>,
    pub detect_local: DetectLocal,
    pub service_cidrs: Vec<IpNet>,
    pub node_port_addresses: NodePortAddresses,
    pub masquerade_all: bool,
    /// Bit of the packet mark that asks for masquerade (kube-proxy's default 14: 0x4000).
    pub masquerade_bit: u8,
    pub sync_period: Duration,
    pub min_sync_period: Duration,
    /// `None`: no health server.
    pub healthz_bind_address: Option<SocketAddr>,
    /// `None`: no metrics server.
    pub metrics_bind_address: Option<SocketAddr>,
    /// Must be set to serve metrics on 0.0.0.0 / `::`.
    pub expose_metrics_on_all_addresses: bool,
    pub cleanup_on_exit: bool,
    /// Delete stale UDP conntrack entries when endpoints go away.
    pub udp_stale_entry_cleanup: bool,
    pub acceleration: AccelerationConfig,
    /// `logFormat`: `text` (the default; coloured only on a terminal) or `json` (one JSON
    /// object per line with the span fields, as kube-proxy's `--logging-format=json`).
    /// `--log-format` wins.
    pub log_format: LogFormat,
}

/// How the agent writes its log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: None,
            cluster_cidrs: Vec::new(),
            detect_local: DetectLocal::None,
            service_cidrs: Vec::new(),
            node_port_addresses: NodePortAddresses::Primary,
            masquerade_all: false,
            masquerade_bit: 14,
            sync_period: Duration::from_secs(30),
            min_sync_period: Duration::from_secs(1),
            healthz_bind_address: Some(SocketAddr::from(([0, 0, 0, 0], 10256))),
            metrics_bind_address: Some(SocketAddr::from(([127, 0, 0, 1], 10249))),
            expose_metrics_on_all_addresses: false,
            cleanup_on_exit: false,
            udp_stale_entry_cleanup: true,
            acceleration: AccelerationConfig::default(),
            log_format: LogFormat::Text,
        }
    }
}

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// Dotted key path, e.g. `acceleration.mode`.
    pub key: String,
    pub problem: ConfigProblem,
}

/// What is wrong with a key.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfigProblem {
    #[error("not a valid YAML document: {0}")]
    Yaml(String),
    #[error("unknown key")]
    UnknownKey,
    #[error("wrong type: {0}")]
    WrongType(String),
    #[error("{value:?} is not {expected}")]
    Invalid {
        value: String,
        expected: &'static str,
    },
    #[error("{0}")]
    Inconsistent(&'static str),
}

/// Every problem found in a file.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub struct ConfigErrors {
    /// The file (or flag) the configuration came from.
    pub origin: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in {}:", self.errors.len(), self.origin)?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Failure to load a configuration file.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
}

fn cidr_list(r: &mut Reader<'_>, key: &str) -> Option<Vec<IpNet>> {
    // kube-proxy spells CIDR lists as one comma-separated string; accept a YAML list too.
    let items: Vec<String> = r.take_string_list(key)?;
    let mut nets = Vec::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        match parse_cidr(item) {
            Some(net) => nets.push(net),
            None => r.error(
                key,
                ConfigProblem::Invalid {
                    value: item.to_owned(),
                    expected: "a CIDR",
                },
            ),
        }
    }
    Some(nets)
}

/// A listen address; an empty string disables the server.
enum Bind {
    Disabled,
    At(SocketAddr),
}

fn bind_address(r: &mut Reader<'_>, key: &str) -> Option<Bind> {
    let text: String = r.take(key)?;
    if text.is_empty() {
        return Some(Bind::Disabled);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(Bind::At(addr));
    }
    r.error(
        key,
        ConfigProblem::Invalid {
            value: text,
            expected: "host:port (or empty to disable)",
        },
    );
    None
}

fn duration(r: &mut Reader<'_>, key: &str) -> Option<Duration> {
    let text: String = r.take(key)?;
    let parsed = duration::parse(&text);
    if parsed.is_none() {
        r.error(
            key,
            ConfigProblem::Invalid {
                value: text,
                expected: "a duration like 30s or 1m",
            },
        );
    }
    parsed
}

impl Config {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::from_yaml(&text, &path.display().to_string())?)
    }

    /// Parses a configuration document; `source` names it in errors.
    pub fn from_yaml(text: &str, source: &str) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let config = match serde_yaml::from_str::<serde_yaml::Value>(text) {
            Ok(serde_yaml::Value::Null) => Self::default(),
            // kube-proxy's own file, as its ConfigMap holds it.
            Ok(serde_yaml::Value::Mapping(map))
                if kube_proxy::is_kube_proxy_configuration(&map) =>
            {
                let (config, ignored) = kube_proxy::read(map, &mut errors);
                kube_proxy::log_ignored(&ignored);
                config
            }
            Ok(serde_yaml::Value::Mapping(map)) => {
                let mut reader = Reader::new(map, String::new(), &mut errors);
                let config = Self::read(&mut reader);
                reader.finish();
                config
            }
            Ok(_) => {
                errors.push(ConfigError {
                    key: String::new(),
                    problem: ConfigProblem::WrongType("the document must be a mapping".into()),
                });
                Self::default()
            }
            Err(e) => {
                errors.push(ConfigError {
                    key: String::new(),
                    problem: ConfigProblem::Yaml(e.to_string()),
                });
                Self::default()
            }
        };
        if errors.is_empty() {
            config.check(&mut errors);
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors {
                origin: source.to_owned(),
                errors,
            })
        }
    }

    fn read(r: &mut Reader<'_>) -> Self {
        let mut c = Self {
            node_name: r.take::<String>("nodeName").filter(|n| !n.is_empty()),
            ..Self::default()
        };
        if let Some(nets) = cidr_list(r, "clusterCIDR") {
            c.cluster_cidrs = nets;
        }
        if let Some(nets) = cidr_list(r, "serviceCIDRs") {
            c.service_cidrs = nets;
        }
        let mut bridge = None;
        let mut prefix = None;
        if let Some(mut d) = r.section("detectLocal") {
            bridge = d
                .take::<String>("bridgeInterface")
                .filter(|s| !s.is_empty());
            prefix = d
                .take::<String>("interfaceNamePrefix")
                .filter(|s| !s.is_empty());
            d.finish();
        }
        let mode: Option<String> = r.take("detectLocalMode");
        c.detect_local = match mode.as_deref().unwrap_or("") {
            "" if c.cluster_cidrs.is_empty() => DetectLocal::None,
            "" | "ClusterCIDR" => DetectLocal::ClusterCidr,
            "NodeCIDR" => DetectLocal::NodeCidr,
            "None" => DetectLocal::None,
            "BridgeInterface" => DetectLocal::BridgeInterface(bridge.clone().unwrap_or_default()),
            "InterfaceNamePrefix" => {
                DetectLocal::InterfaceNamePrefix(prefix.clone().unwrap_or_default())
            }
            other => {
                r.error("detectLocalMode", ConfigProblem::Invalid {
                    value: other.to_owned(),
                    expected: "one of ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix, None",
                });
                DetectLocal::None
            }
        };
        if let Some(items) = r.take_string_list("nodePortAddresses") {
            c.node_port_addresses = node_port_addresses(r, &items);
        }
        if let Some(v) = r.take("masqueradeAll") {
            c.masquerade_all = v;
        }
        if let Some(bit) = r.take::<u8>("masqueradeBit") {
            if bit < 32 {
                c.masquerade_bit = bit;
            } else {
                r.error(
                    "masqueradeBit",
                    ConfigProblem::Invalid {
                        value: bit.to_string(),
                        expected: "a bit number 0-31",
                    },
                );
            }
        }
        if let Some(d) = duration(r, "syncPeriod") {
            c.sync_period = d;
        }
        if let Some(d) = duration(r, "minSyncPeriod") {
            c.min_sync_period = d;
        }
        for (key, field) in [
            ("healthzBindAddress", &mut c.healthz_bind_address),
            ("metricsBindAddress", &mut c.metrics_bind_address),
        ] {
            match bind_address(r, key) {
                Some(Bind::Disabled) => *field = None,
                Some(Bind::At(addr)) => *field = Some(addr),
                None => {}
            }
        }
        if let Some(v) = r.take("exposeMetricsOnAllAddresses") {
            c.expose_metrics_on_all_addresses = v;
        }
        if let Some(v) = r.take("cleanupOnExit") {
            c.cleanup_on_exit = v;
        }
        c.log_format = read_log_format(r);
        if let Some(mut ct) = r.section("conntrack") {
            if let Some(v) = ct.take("udpStaleEntryCleanup") {
                c.udp_stale_entry_cleanup = v;
            }
            ct.finish();
        }
        if let Some(mut a) = r.section("acceleration") {
            c.acceleration = read_acceleration(&mut a);
            a.finish();
        }
        c
    }

    /// Checks relations between keys.
    fn check(&self, errors: &mut Vec<ConfigError>) {
        let mut err = |key: &str, why: &'static str| {
            errors.push(ConfigError {
                key: key.to_owned(),
                problem: ConfigProblem::Inconsistent(why),
            });
        };
        match &self.detect_local {
            DetectLocal::ClusterCidr if self.cluster_cidrs.is_empty() => {
                err("detectLocalMode", "ClusterCIDR needs clusterCIDR");
            }
            DetectLocal::BridgeInterface(name) if name.is_empty() => {
                err(
                    "detectLocal.bridgeInterface",
                    "BridgeInterface needs detectLocal.bridgeInterface",
                );
            }
            DetectLocal::InterfaceNamePrefix(p) if p.is_empty() => {
                err(
                    "detectLocal.interfaceNamePrefix",
                    "InterfaceNamePrefix needs detectLocal.interfaceNamePrefix",
                );
            }
            _ => {}
        }
        if self.sync_period.is_zero() {
            err("syncPeriod", "must be more than zero");
        }
        if self.min_sync_period > self.sync_period {
            err("minSyncPeriod", "must not exceed syncPeriod");
        }
        if let Some(addr) = self.metrics_bind_address
            && addr.ip().is_unspecified()
            && !self.expose_metrics_on_all_addresses
        {
            err(
                "metricsBindAddress",
                "serves metrics on every address; set exposeMetricsOnAllAddresses: true if that is intended",
            );
        }
        let auto = &self.acceleration.auto;
        if auto.demote_below_pps >= auto.promote_above_pps {
            err(
                "acceleration.auto.demoteBelowPps",
                "must be below promoteAbovePps (hysteresis)",
            );
        }
    }

    /// The node name: configured, else `$NODE_NAME`, else the host name.
    pub fn resolved_node_name(&self) -> String {
        if let Some(name) = &self.node_name {
            return name.clone();
        }
        if let Ok(name) = std::env::var("NODE_NAME")
            && !name.is_empty()
        {
            return name;
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    }

    /// The plan's settings; `local_addresses` are this host's interface addresses.
    pub fn plan_settings(&self, local_addresses: Vec<IpAddr>) -> PlanSettings {
        PlanSettings {
            node_name: self.resolved_node_name(),
            detect_local: self.detect_local.clone(),
            cluster_cidrs: self.cluster_cidrs.clone(),
            service_cidrs: self.service_cidrs.clone(),
            node_port_addresses: self.node_port_addresses.clone(),
            local_addresses,
            masquerade_all: self.masquerade_all,
        }
    }

    /// The fast path's settings.
    #[cfg(feature = "agent")]
    pub fn fast_path(&self) -> crate::bpf::FastPathConfig {
        let a = &self.acceleration;
        let prefixes: Vec<String> = a
            .pod_interfaces
            .iter()
            .filter_map(|p| p.strip_suffix('*').map(str::to_owned))
            .collect();
        crate::bpf::FastPathConfig {
            mode: match a.mode {
                AccelerationMode::Off => crate::bpf::AccelerationMode::Off,
                AccelerationMode::Annotated => crate::bpf::AccelerationMode::Annotated,
                AccelerationMode::Auto => crate::bpf::AccelerationMode::Auto,
                AccelerationMode::All => crate::bpf::AccelerationMode::All,
            },
            node_interfaces: a.interfaces.clone(),
            pod_interfaces: if a.pod_interfaces.is_empty() {
                crate::bpf::PodInterfaces::PodCidrRoutes
            } else if prefixes.is_empty() {
                crate::bpf::PodInterfaces::Names(a.pod_interfaces.clone())
            } else {
                crate::bpf::PodInterfaces::Prefixes(prefixes)
            },
            pin_path: a.pin_path.clone(),
            xdp_mode: match a.xdp_mode {
                XdpMode::Auto => crate::bpf::XdpAttachMode::Auto,
                XdpMode::Native => crate::bpf::XdpAttachMode::Native,
                XdpMode::Generic => crate::bpf::XdpAttachMode::Generic,
            },
            auto: crate::bpf::AutoThresholds {
                promote_above_pps: a.auto.promote_above_pps,
                demote_below_pps: a.auto.demote_below_pps,
                min_dwell: a.auto.min_dwell,
                max_services: a.auto.max_services,
            },
            forwarding: a.forwarding,
            ..crate::bpf::FastPathConfig::default()
        }
    }

    /// The packet-mark bit that requests masquerade.
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }
}

fn node_port_addresses(r: &mut Reader<'_>, items: &[String]) -> NodePortAddresses {
    let items: Vec<&str> = items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() || items == ["primary"] {
        return NodePortAddresses::Primary;
    }
    let mut cidrs = Vec::new();
    for item in items {
        if item == "primary" {
            r.error(
                "nodePortAddresses",
                ConfigProblem::Inconsistent("\"primary\" cannot be combined with CIDRs"),
            );
            continue;
        }
        match parse_cidr(item) {
            Some(net) => cidrs.push(net),
            None => r.error(
                "nodePortAddresses",
                ConfigProblem::Invalid {
                    value: item.to_owned(),
                    expected: "a CIDR or \"primary\"",
                },
            ),
        }
    }
    NodePortAddresses::Cidrs(cidrs)
}

fn read_log_format(r: &mut Reader<'_>) -> LogFormat {
    let Some(v) = r.take::<String>("logFormat") else {
        return LogFormat::Text;
    };
    LogFormat::parse(&v).unwrap_or_else(|| {
        r.error(
            "logFormat",
            ConfigProblem::Invalid {
                value: v,
                expected: "text or json",
            },
        );
        LogFormat::Text
    })
}

fn read_acceleration(r: &mut Reader<'_>) -> AccelerationConfig {
    let mut a = AccelerationConfig::default();
    if let Some(mode) = r.take::<String>("mode") {
        match AccelerationMode::parse(&mode) {
            Some(m) => a.mode = m,
            None => r.error(
                "mode",
                ConfigProblem::Invalid {
                    value: mode,
                    expected: "one of off, annotated, auto, all",
                },
            ),
        }
    }
    if let Some(list) = r.take_string_list("interfaces") {
        a.interfaces = list;
    }
    if let Some(list) = r.take_string_list("podInterfaces") {
        let prefixes = list.iter().filter(|p| p.ends_with('*')).count();
        if prefixes != 0 && prefixes != list.len() {
            r.error(
                "podInterfaces",
                ConfigProblem::Inconsistent("list either names or prefixes ending in *, not both"),
            );
        }
        a.pod_interfaces = list;
    }
    if let Some(path) = r.take::<String>("pinPath") {
        if path.starts_with('/') {
            a.pin_path = PathBuf::from(path);
        } else {
            r.error(
                "pinPath",
                ConfigProblem::Invalid {
                    value: path,
                    expected: "an absolute path on bpffs",
                },
            );
        }
    }
    if let Some(mode) = r.take::<String>("xdpMode") {
        a.xdp_mode = match mode.as_str() {
            "auto" => XdpMode::Auto,
            "native" => XdpMode::Native,
            "generic" => XdpMode::Generic,
            _ => {
                r.error(
                    "xdpMode",
                    ConfigProblem::Invalid {
                        value: mode,
                        expected: "one of auto, native, generic",
                    },
                );
                XdpMode::Auto
            }
        };
    }
    if let Some(mode) = r.take::<String>("forwarding") {
        match ForwardingMode::parse(&mode) {
            Some(m) => a.forwarding = m,
            None => r.error(
                "forwarding",
                ConfigProblem::Invalid {
                    value: mode,
                    expected: "one of auto, redirect, stack",
                },
            ),
        }
    }
    if let Some(mut auto) = r.section("auto") {
        if let Some(v) = auto.take("promoteAbovePps") {
            a.auto.promote_above_pps = v;
        }
        if let Some(v) = auto.take("demoteBelowPps") {
            a.auto.demote_below_pps = v;
        }
        if let Some(d) = duration(&mut auto, "minDwell") {
            a.auto.min_dwell = d;
        }
        if let Some(v) = auto.take("maxServices") {
            a.auto.max_services = v;
        }
        auto.finish();
    }
    a
}

#[cfg(test)]
mod tests;
