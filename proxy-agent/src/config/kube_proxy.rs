//! kube-proxy's own configuration file, `KubeProxyConfiguration`
//! (`kubeproxy.config.k8s.io/v1alpha1`), as kubeadm and Kubespray write it into the
//! `kube-proxy` ConfigMap, so that the ConfigMap can be mounted unchanged.
//!
//! [`Config::from_yaml`] recognises the document by its `kind` and reads it here. Every field
//! with a meaning for this agent is mapped with kube-proxy's semantics: the section kube-proxy
//! reads depends on its `mode` (`nftables` reads `nftables.*`; `iptables`, the default, reads
//! `iptables.*`; `ipvs` reads its masquerade settings from `iptables.*` and its sync periods
//! from `ipvs.*`), a zero duration means kube-proxy's default, and an unset
//! `nodePortAddresses` means every local address in the iptables and ipvs modes and the
//! primary addresses in nftables mode. Every other field that is set is ignored with a
//! warning, once, and returned in a list; so is a field this version does not know, so that
//! a newer kube-proxy's file still loads. A field at its zero value (`0s`, `""`, `false`,
//! `{}`) configures nothing in kube-proxy either, and is passed over silently.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use ipnet::IpNet;
use serde_yaml::{Mapping, Value};

use super::{Config, ConfigError, ConfigErrors, ConfigProblem, duration};
use crate::{
    model::ip::parse_cidr,
    plan::{DetectLocal, NodePortAddresses},
};

pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const KIND: &str = "KubeProxyConfiguration";

/// A field of a kube-proxy configuration that this agent does not use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// Dotted key, e.g. `conntrack.maxPerCore`.
    pub key: String,
    /// The value, compactly (JSON).
    pub value: String,
    pub reason: &'static str,
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {} is ignored: {}",
            self.key, self.value, self.reason
        )
    }
}

/// Whether a YAML document is a `KubeProxyConfiguration`.
pub fn is_kube_proxy_configuration(map: &Mapping) -> bool {
    map.get("kind").and_then(Value::as_str) == Some(KIND)
}

/// Parses a `KubeProxyConfiguration` document: the configuration and the fields it ignored
/// (not logged: [`Config::from_yaml`] logs them).
pub fn parse(text: &str, source: &str) -> Result<(Config, Vec<Ignored>), ConfigErrors> {
    let mut errors = Vec::new();
    let result = match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Mapping(map)) if is_kube_proxy_configuration(&map) => {
            let (config, ignored) = read(map, &mut errors);
            if errors.is_empty() {
                config.check(&mut errors);
            }
            Some((config, ignored))
        }
        Ok(_) => {
            errors.push(ConfigError {
                key: "kind".into(),
                problem: ConfigProblem::Inconsistent("not a KubeProxyConfiguration"),
            });
            None
        }
        Err(e) => {
            errors.push(ConfigError {
                key: String::new(),
                problem: ConfigProblem::Yaml(e.to_string()),
            });
            None
        }
    };
    match result {
        Some(ok) if errors.is_empty() => Ok(ok),
        _ => Err(ConfigErrors {
            origin: source.to_owned(),
            errors,
        }),
    }
}

/// Logs each ignored field once, as a warning.
pub(super) fn log_ignored(ignored: &[Ignored]) {
    for i in ignored {
        tracing::warn!(
            key = %i.key,
            value = %i.value,
            "kube-proxy configuration field ignored: {}",
            i.reason
        );
    }
}

/// Whether a value configures nothing: null, false, zero, an empty string or a zero duration,
/// an empty list, or a mapping of such values.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || duration::parse(s) == Some(Duration::ZERO),
        Value::Sequence(items) => items.is_empty(),
        Value::Mapping(m) => m.values().all(is_unset),
        Value::Tagged(t) => is_unset(&t.value),
    }
}

fn compact(v: &Value) -> String {
    let text = serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"));
    if text.chars().count() > 80 {
        format!("{}...", text.chars().take(77).collect::<String>())
    } else {
        text
    }
}

/// The errors and ignored fields of one document.
#[derive(Default)]
struct Found {
    errors: Vec<ConfigError>,
    ignored: Vec<Ignored>,
}

/// The fields of one mapping, taken one by one; what is left is reported as unknown.
struct Fields {
    map: Mapping,
    prefix: String,
}

impl Fields {
    fn new(map: Mapping, prefix: &str) -> Self {
        Self {
            map,
            prefix: prefix.to_owned(),
        }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn error(&self, found: &mut Found, key: &str, problem: ConfigProblem) {
        found.errors.push(ConfigError {
            key: self.path(key),
            problem,
        });
    }

    /// A value that is set (absent and null are `None`).
    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    /// A string (numbers and booleans are read as their text).
    fn string(&mut self, found: &mut Found, key: &str) -> Option<String> {
        match self.take(key)? {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.error(
                    found,
                    key,
                    ConfigProblem::WrongType(format!(
                        "expected a string, found {}",
                        compact(&other)
                    )),
                );
                None
            }
        }
    }

    fn bool(&mut self, found: &mut Found, key: &str) -> Option<bool> {
        match self.take(key)? {
            Value::Bool(b) => Some(b),
            other => {
                self.error(
                    found,
                    key,
                    ConfigProblem::WrongType(format!(
                        "expected true or false, found {}",
                        compact(&other)
                    )),
                );
                None
            }
        }
    }

    /// A duration; zero (kube-proxy's "use the default") is `None`.
    fn duration(&mut self, found: &mut Found, key: &str) -> Option<Duration> {
        let text = self.string(found, key)?;
        match duration::parse(&text) {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => {
                self.error(
                    found,
                    key,
                    ConfigProblem::Invalid {
                        value: text,
                        expected: "a duration like 30s or 1m0s",
                    },
                );
                None
            }
        }
    }

    fn section(&mut self, found: &mut Found, key: &str) -> Option<Fields> {
        match self.take(key)? {
            Value::Mapping(map) => Some(Fields::new(map, &self.path(key))),
            other => {
                self.error(
                    found,
                    key,
                    ConfigProblem::WrongType(format!(
                        "expected a mapping, found {}",
                        compact(&other)
                    )),
                );
                None
            }
        }
    }

    /// Takes a field this agent does not use; reports it when it is set.
    fn ignore(&mut self, found: &mut Found, key: &str, reason: &'static str) {
        if let Some(value) = self.map.remove(key)
            && !is_unset(&value)
        {
            found.ignored.push(Ignored {
                key: self.path(key),
                value: compact(&value),
                reason,
            });
        }
    }

    /// Drops a section kube-proxy itself would not read in this mode.
    fn drop_unused(&mut self, key: &str) {
        self.map.remove(key);
    }

    /// Reports every field nobody took.
    fn finish(self, found: &mut Found) {
        for (key, value) in &self.map {
            if is_unset(value) {
                continue;
            }
            let name = key.as_str().map_or_else(|| compact(key), str::to_owned);
            found.ignored.push(Ignored {
                key: self.path(&name),
                value: compact(value),
                reason: "not a KubeProxyConfiguration field this agent knows",
            });
        }
    }
}

/// kube-proxy's proxy modes: which section it reads, and the default of `nodePortAddresses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Iptables,
    Ipvs,
    Nftables,
}

/// kube-proxy's `healthzBindAddress` / `metricsBindAddress`: `ip:port`, or an IP to which it
/// appends the default port; empty is the default address.
fn bind_address(text: &str, default: SocketAddr) -> Option<SocketAddr> {
    if text.is_empty() {
        return Some(default);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip = text.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default.port()))
}

fn read_bind_addresses(f: &mut Fields, found: &mut Found, c: &mut Config) {
    let mut v6 = false;
    if let Some(bind) = f.string(found, "bindAddress").filter(|s| !s.is_empty()) {
        match bind.parse::<IpAddr>() {
            Ok(ip) => {
                // Its family picks the default health and metrics addresses, as in
                // kube-proxy; as an override of the node's primary IP it has no use here.
                v6 = ip.is_ipv6();
                if !ip.is_unspecified() {
                    found.ignored.push(Ignored {
                        key: "bindAddress".into(),
                        value: compact(&Value::String(bind)),
                        reason: "the node's primary IPs come from its Node object",
                    });
                }
            }
            Err(_) => f.error(
                found,
                "bindAddress",
                ConfigProblem::Invalid {
                    value: bind,
                    expected: "an IP address",
                },
            ),
        }
    }
    let (any, local): (IpAddr, IpAddr) = if v6 {
        (Ipv6Addr::UNSPECIFIED.into(), Ipv6Addr::LOCALHOST.into())
    } else {
        (Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::LOCALHOST.into())
    };
    for (key, default) in [
        ("healthzBindAddress", SocketAddr::new(any, 10256)),
        ("metricsBindAddress", SocketAddr::new(local, 10249)),
    ] {
        let text = f.string(found, key).unwrap_or_default();
        let Some(addr) = bind_address(&text, default) else {
            f.error(
                found,
                key,
                ConfigProblem::Invalid {
                    value: text,
                    expected: "an IP, or IP:port",
                },
            );
            continue;
        };
        if key == "healthzBindAddress" {
            c.healthz_bind_address = Some(addr);
        } else {
            c.metrics_bind_address = Some(addr);
            // kube-proxy serves metrics on every address when told to; no second opt-in.
            c.expose_metrics_on_all_addresses = addr.ip().is_unspecified();
        }
    }
}

fn read_mode(f: &mut Fields, found: &mut Found) -> Mode {
    let text = f.string(found, "mode").unwrap_or_default();
    let mode = match text.as_str() {
        "" | "iptables" => Mode::Iptables,
        "ipvs" => Mode::Ipvs,
        "nftables" => Mode::Nftables,
        _ => {
            f.error(
                found,
                "mode",
                ConfigProblem::Invalid {
                    value: text,
                    expected: "one of iptables, ipvs, nftables (or empty)",
                },
            );
            return Mode::Nftables;
        }
    };
    if matches!(text.as_str(), "iptables" | "ipvs") {
        found.ignored.push(Ignored {
            key: "mode".into(),
            value: compact(&Value::String(text)),
            reason: "the agent always programs nftables, with kube-proxy's nftables-mode \
                     behaviour; this mode's section and its nodePortAddresses default are kept",
        });
    }
    mode
}

/// The masquerade and sync settings, from the section `mode` reads.
fn read_mode_sections(f: &mut Fields, found: &mut Found, c: &mut Config, mode: Mode) {
    let (masquerade_from, sync_from) = match mode {
        Mode::Nftables => ("nftables", "nftables"),
        Mode::Iptables => ("iptables", "iptables"),
        Mode::Ipvs => ("iptables", "ipvs"),
    };
    for name in ["iptables", "ipvs", "nftables"] {
        if name != masquerade_from && name != sync_from {
            // kube-proxy in this mode does not read it either.
            f.drop_unused(name);
            continue;
        }
        let Some(mut s) = f.section(found, name) else {
            continue;
        };
        if name == masquerade_from {
            if let Some(all) = s.bool(found, "masqueradeAll") {
                c.masquerade_all = all;
            }
            if let Some(bit) = s.take("masqueradeBit") {
                match bit
                    .as_u64()
                    .and_then(|b| u8::try_from(b).ok())
                    .filter(|b| *b < 32)
                {
                    Some(b) => c.masquerade_bit = b,
                    None => s.error(
                        found,
                        "masqueradeBit",
                        ConfigProblem::Invalid {
                            value: compact(&bit),
                            expected: "a bit number 0-31",
                        },
                    ),
                }
            }
        }
        if name == sync_from {
            if let Some(d) = s.duration(found, "syncPeriod") {
                c.sync_period = d;
            }
            if let Some(d) = s.duration(found, "minSyncPeriod") {
                c.min_sync_period = d;
            }
        }
        match name {
            "iptables" => {
                s.ignore(
                    found,
                    "localhostNodePorts",
                    "NodePorts on localhost are not served, as in kube-proxy's nftables mode",
                );
                s.ignore(
                    found,
                    "snatNodeInternalIP",
                    "masquerade uses the outgoing interface's address",
                );
                if name != sync_from {
                    // ipvs mode reads only the masquerade settings from here.
                    s.map.remove("syncPeriod");
                    s.map.remove("minSyncPeriod");
                }
            }
            "ipvs" => {
                s.ignore(
                    found,
                    "scheduler",
                    "endpoints are picked at random, as in kube-proxy's iptables and nftables modes",
                );
                s.ignore(
                    found,
                    "strictARP",
                    "there is no kube-ipvs0 to answer ARP for",
                );
                s.ignore(found, "excludeCIDRs", "there are no IPVS services to keep");
                for key in ["tcpTimeout", "tcpFinTimeout", "udpTimeout"] {
                    s.ignore(found, key, "IPVS timeouts do not apply to nftables");
                }
            }
            _ => {}
        }
        s.finish(found);
    }
}

fn cidrs(f: &Fields, found: &mut Found, key: &str, items: &[String]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for item in items {
        match parse_cidr(item) {
            Some(net) => out.push(net),
            None => f.error(
                found,
                key,
                ConfigProblem::Invalid {
                    value: item.clone(),
                    expected: "a CIDR",
                },
            ),
        }
    }
    out
}

fn string_list(f: &mut Fields, found: &mut Found, key: &str) -> Option<Vec<String>> {
    let items: Vec<String> = match f.take(key)? {
        Value::String(s) => s.split(',').map(|p| p.trim().to_owned()).collect(),
        Value::Sequence(seq) => seq
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.trim().to_owned()),
                other => {
                    f.error(
                        found,
                        key,
                        ConfigProblem::WrongType(format!(
                            "expected strings, found {}",
                            compact(other)
                        )),
                    );
                    None
                }
            })
            .collect(),
        other => {
            f.error(
                found,
                key,
                ConfigProblem::WrongType(format!("expected a list, found {}", compact(&other))),
            );
            return None;
        }
    };
    Some(
        items
            .into_iter()
            .filter(|s: &String| !s.is_empty())
            .collect(),
    )
}

/// `0.0.0.0/0` and `::/0`: every local address.
fn every_address() -> Vec<IpNet> {
    vec![
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ]
}

/// `nodePortAddresses`: CIDRs and the keywords `primary`, `all` and `localhost`.
fn read_node_port_addresses(f: &mut Fields, found: &mut Found, mode: Mode) -> NodePortAddresses {
    let items = string_list(f, found, "nodePortAddresses").unwrap_or_default();
    if items.is_empty() {
        return match mode {
            Mode::Nftables => NodePortAddresses::Primary,
            Mode::Iptables | Mode::Ipvs => NodePortAddresses::Cidrs(every_address()),
        };
    }
    let mut cidrs = Vec::new();
    let mut primary = false;
    for item in &items {
        match item.as_str() {
            "primary" => primary = true,
            "all" => cidrs.extend(every_address()),
            "localhost" => found.ignored.push(Ignored {
                key: "nodePortAddresses".into(),
                value: "\"localhost\"".into(),
                reason: "NodePorts on localhost are not served, as in kube-proxy's nftables mode",
            }),
            other => cidrs.extend(self::cidrs(
                f,
                found,
                "nodePortAddresses",
                &[other.to_owned()],
            )),
        }
    }
    if primary && !cidrs.is_empty() {
        f.error(
            found,
            "nodePortAddresses",
            ConfigProblem::Inconsistent(
                "\"primary\" combined with CIDRs cannot be expressed here; list the CIDRs of the primary addresses instead",
            ),
        );
    }
    if primary {
        NodePortAddresses::Primary
    } else {
        NodePortAddresses::Cidrs(cidrs)
    }
}

fn read_detect_local(f: &mut Fields, found: &mut Found, c: &mut Config) {
    if let Some(items) = string_list(f, found, "clusterCIDR") {
        c.cluster_cidrs = cidrs(f, found, "clusterCIDR", &items);
    }
    let (mut bridge, mut prefix) = (String::new(), String::new());
    if let Some(mut d) = f.section(found, "detectLocal") {
        bridge = d.string(found, "bridgeInterface").unwrap_or_default();
        prefix = d.string(found, "interfaceNamePrefix").unwrap_or_default();
        d.finish(found);
    }
    let mode = f.string(found, "detectLocalMode").unwrap_or_default();
    c.detect_local = match mode.as_str() {
        "" if c.cluster_cidrs.is_empty() => DetectLocal::None,
        "" | "ClusterCIDR" => DetectLocal::ClusterCidr,
        "NodeCIDR" => DetectLocal::NodeCidr,
        "BridgeInterface" => DetectLocal::BridgeInterface(bridge),
        "InterfaceNamePrefix" => DetectLocal::InterfaceNamePrefix(prefix),
        _ => {
            f.error(
                found,
                "detectLocalMode",
                ConfigProblem::Invalid {
                    value: mode,
                    expected: "one of ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix",
                },
            );
            DetectLocal::None
        }
    };
}

/// The fields that have no meaning for this agent, and why.
const IGNORED: &[(&str, &str)] = &[
    (
        "featureGates",
        "kube-proxy's feature gates do not apply to this agent",
    ),
    ("logging", "the agent logs through --log / RUST_LOG"),
    ("enableProfiling", "the agent has no profiling endpoint"),
    (
        "showHiddenMetricsForVersion",
        "the agent has no hidden metrics",
    ),
    (
        "oomScoreAdj",
        "the kubelet sets it from the pod's priority class (system-node-critical)",
    ),
    (
        "configSyncPeriod",
        "the agent's watches do not resync; syncPeriod drives full syncs",
    ),
    ("portRange", "unused since kube-proxy's userspace mode"),
    ("winkernel", "Windows only"),
    ("windowsRunAsService", "Windows only"),
];

/// Reads a `KubeProxyConfiguration` mapping; problems are added to `errors`.
pub(super) fn read(map: Mapping, errors: &mut Vec<ConfigError>) -> (Config, Vec<Ignored>) {
    let mut found = Found::default();
    let mut f = Fields::new(map, "");
    let mut c = Config::default();
    let version = f.string(&mut found, "apiVersion").unwrap_or_default();
    if version != API_VERSION {
        f.error(
            &mut found,
            "apiVersion",
            ConfigProblem::Invalid {
                value: version,
                expected: API_VERSION,
            },
        );
    }
    f.take("kind");
    let mode = read_mode(&mut f, &mut found);
    c.node_name = f
        .string(&mut found, "hostnameOverride")
        .filter(|s| !s.is_empty());
    read_bind_addresses(&mut f, &mut found, &mut c);
    // kube-proxy exits when it cannot bind if this is true; the agent always does.
    f.take("bindAddressHardFail");
    read_mode_sections(&mut f, &mut found, &mut c, mode);
    read_detect_local(&mut f, &mut found, &mut c);
    c.node_port_addresses = read_node_port_addresses(&mut f, &mut found, mode);
    if let Some(mut client) = f.section(&mut found, "clientConnection") {
        client.ignore(
            &mut found,
            "kubeconfig",
            "pass it with --kubeconfig (without it, the pod's service account is used)",
        );
        for key in ["acceptContentTypes", "contentType", "qps", "burst"] {
            client.ignore(&mut found, key, "the agent's client has its own settings");
        }
        client.finish(&mut found);
    }
    if let Some(mut ct) = f.section(&mut found, "conntrack") {
        for key in [
            "maxPerCore",
            "min",
            "tcpEstablishedTimeout",
            "tcpCloseWaitTimeout",
            "tcpBeLiberal",
            "udpTimeout",
            "udpStreamTimeout",
        ] {
            ct.ignore(
                &mut found,
                key,
                "the agent leaves conntrack sysctls alone: set net.netfilter.nf_conntrack_* on \
                 the node if you relied on kube-proxy setting them",
            );
        }
        ct.finish(&mut found);
    }
    for (key, reason) in IGNORED {
        f.ignore(&mut found, key, reason);
    }
    f.finish(&mut found);
    errors.append(&mut found.errors);
    (c, found.ignored)
}

#[cfg(test)]
mod tests;
