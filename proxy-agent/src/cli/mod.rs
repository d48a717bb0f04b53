//! The command line.

pub mod logging;
mod oneshot;
mod preflight;
mod run;
mod status;
mod verify;

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, ConfigErrors, ConfigProblem};

/// hybrid-proxy: a Kubernetes service proxy for Linux nodes.
///
/// Every Service is programmed into nftables (tables `ip hybrid-proxy` and
/// `ip6 hybrid-proxy`) with kube-proxy's nftables-mode behaviour; hot Services can also be
/// served by eBPF fast paths (XDP and TC). Without `--manifests`, `run` reads Services,
/// EndpointSlices and this node's Node from the Kubernetes API.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Cli {
    /// Log filter, e.g. `info`, `debug`, `proxy_agent::nft=trace` (or `RUST_LOG`).
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    pub log: String,
    /// Log format: `text` (coloured only on a terminal) or `json` (one object per line with
    /// the span fields, for log pipelines). Overrides `logFormat`; default text.
    #[arg(long, global = true, env = "HYBRID_PROXY_LOG_FORMAT")]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read manifests from a directory, program them with one full sync, and exit.
    ///
    /// Bad objects are reported on stderr and skipped; everything else is programmed.
    /// The rules stay in place after the command exits.
    Apply(ManifestOptions),
    /// Print the ruleset `apply` would write, in nft syntax, without touching the kernel.
    Render(ManifestOptions),
    /// Remove everything the agent programmed (both nftables tables and the fast path).
    ///
    /// With `--kube-proxy`, remove kube-proxy's leftovers instead: its iptables chains, its
    /// nftables tables and kube-ipvs0. Never done without the flag.
    Cleanup(CleanupOptions),
    /// Check that this node can run the agent and that no other service proxy is in the way.
    ///
    /// Prints one line per check (pass, warn or fail, with how to fix it) and exits non-zero
    /// when a check fails. Changes nothing.
    Preflight(preflight::PreflightOptions),
    /// Run as the node's service proxy (what the DaemonSet runs).
    ///
    /// Watches Services, EndpointSlices and this node's Node (from `--manifests DIR`, or
    /// from the Kubernetes API), keeps nftables and the fast path in step, and serves
    /// `/healthz`, `/livez`, `/metrics` and health-check node ports. SIGTERM/SIGINT leave
    /// the rules in place, so traffic keeps flowing while the agent restarts, unless
    /// `cleanupOnExit: true`.
    Run(RunOptions),
    /// Show what the kernel serves: the plan generation in nftables and in the fast path,
    /// where each service port's traffic goes and why, packet rates, connection-table
    /// occupancy and how the programs are attached.
    ///
    /// Reads our nftables table and the pinned maps and links without changing or attaching
    /// anything, so it works whether the agent runs or not. `--json` for a document.
    Status(status::StatusOptions),
    /// Check that nftables and the fast path hold what the plan for the current input asks
    /// for (`--manifests DIR`, or the Kubernetes API as `run` reads it).
    ///
    /// Prints each difference and exits non-zero when there is one. Changes nothing.
    Verify(verify::VerifyOptions),
}

impl Cli {
    /// How to log: `--log-format`, else the configuration file's `logFormat` (read once
    /// here; the command reads the file again and reports its problems), else text. An
    /// unknown value is reported and text is used.
    pub fn log_format(&self) -> crate::config::LogFormat {
        use crate::config::LogFormat;
        if let Some(f) = &self.log_format {
            return LogFormat::parse(f).unwrap_or_else(|| {
                eprintln!("warning: --log-format {f:?} is neither text nor json; logging text");
                LogFormat::Text
            });
        }
        self.common()
            .config
            .as_ref()
            .and_then(|path| Config::load(path).ok())
            .map_or(LogFormat::Text, |c| c.log_format)
    }

    fn common(&self) -> &CommonOptions {
        match &self.command {
            Command::Apply(o) | Command::Render(o) => &o.common,
            Command::Cleanup(o) => &o.common,
            Command::Preflight(o) => &o.common,
            Command::Run(o) => &o.common,
            Command::Status(o) => &o.common,
            Command::Verify(o) => &o.common,
        }
    }
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunOptions {
    /// Read manifests from this directory, and watch it, instead of the Kubernetes API.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// kubeconfig file (default: `$KUBECONFIG`, else `~/.kube/config`, else the in-cluster
    /// service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonOptions,
}

/// Options every command takes.
#[derive(Clone, Debug, Args)]
pub struct CommonOptions {
    /// Configuration file (YAML, camelCase keys); keys it leaves out keep their defaults.
    #[arg(long, short = 'c', env = "HYBRID_PROXY_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's name (overrides `nodeName`; default `$NODE_NAME`, else the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Pod CIDRs of the cluster, comma-separated (overrides `clusterCIDR`).
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<String>,
    /// Service CIDRs, comma-separated (overrides `serviceCIDRs`).
    #[arg(long, value_delimiter = ',')]
    pub service_cidr: Vec<String>,
    /// Masquerade all traffic to cluster IPs (overrides `masqueradeAll`).
    #[arg(long)]
    pub masquerade_all: bool,
    /// Acceleration mode: off, annotated, auto or all (overrides `acceleration.mode`).
    #[arg(long)]
    pub acceleration: Option<String>,
    /// Forwarding of accelerated pod flows: auto, redirect or stack (overrides
    /// `acceleration.forwarding`). `redirect` bypasses the node's netfilter and routing;
    /// `auto` does so unless a netfilter policy engine or another BPF program is present.
    #[arg(long)]
    pub forwarding: Option<String>,
}

/// Options of `cleanup`.
#[derive(Debug, Args)]
pub struct CleanupOptions {
    /// Remove kube-proxy's leftovers (iptables `KUBE-*` chains and the jumps to them in nat,
    /// filter and mangle, tables `ip kube-proxy` and `ip6 kube-proxy`, kube-ipvs0) instead
    /// of the agent's own rules. Stop kube-proxy first.
    #[arg(long)]
    pub kube_proxy: bool,
    #[command(flatten)]
    pub common: CommonOptions,
}

/// Options of the commands that read a directory of manifests.
#[derive(Debug, Args)]
pub struct ManifestOptions {
    /// Directory of Kubernetes YAML/JSON manifests (Services, EndpointSlices, Nodes).
    #[arg(long)]
    pub manifests: PathBuf,
    #[command(flatten)]
    pub common: CommonOptions,
}

impl CommonOptions {
    /// The configuration file with the flags applied on top; every problem at once.
    pub fn config(&self) -> Result<Config, ConfigErrors> {
        let mut config = match &self.config {
            Some(path) => Config::load(path).map_err(|e| match e {
                crate::config::LoadError::Invalid(errors) => errors,
                crate::config::LoadError::Read { path, source } => ConfigErrors {
                    origin: path.display().to_string(),
                    errors: vec![ConfigError {
                        key: String::new(),
                        problem: ConfigProblem::Yaml(source.to_string()),
                    }],
                },
            })?,
            None => Config::default(),
        };
        let mut overrides = String::new();
        if !self.cluster_cidr.is_empty() {
            let _ = writeln!(overrides, "clusterCIDR: {:?}", self.cluster_cidr.join(","));
        }
        if !self.service_cidr.is_empty() {
            let _ = writeln!(overrides, "serviceCIDRs: {:?}", self.service_cidr.join(","));
        }
        match (&self.acceleration, &self.forwarding) {
            (Some(mode), Some(fwd)) => {
                let _ = writeln!(
                    overrides,
                    "acceleration: {{ mode: {mode:?}, forwarding: {fwd:?} }}"
                );
            }
            (Some(mode), None) => {
                let _ = writeln!(overrides, "acceleration: {{ mode: {mode:?} }}");
            }
            (None, Some(fwd)) => {
                let _ = writeln!(overrides, "acceleration: {{ forwarding: {fwd:?} }}");
            }
            (None, None) => {}
        }
        if !overrides.is_empty() {
            let flags = Config::from_yaml(&overrides, "command-line flags")?;
            if !self.cluster_cidr.is_empty() {
                config.cluster_cidrs = flags.cluster_cidrs;
                if config.detect_local == crate::plan::DetectLocal::None {
                    config.detect_local = flags.detect_local;
                }
            }
            if !self.service_cidr.is_empty() {
                config.service_cidrs = flags.service_cidrs;
            }
            if self.acceleration.is_some() {
                config.acceleration.mode = flags.acceleration.mode;
            }
            if self.forwarding.is_some() {
                config.acceleration.forwarding = flags.acceleration.forwarding;
            }
        }
        if let Some(node) = &self.node {
            config.node_name = Some(node.clone());
        }
        if self.masquerade_all {
            config.masquerade_all = true;
        }
        Ok(config)
    }
}

/// Runs a command; the exit code says whether it did what it was asked.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Apply(opts) => oneshot::apply(&opts),
        Command::Render(opts) => oneshot::render(&opts),
        Command::Cleanup(opts) => oneshot::cleanup(&opts),
        Command::Run(opts) => run::run(&opts),
        Command::Preflight(opts) => preflight::preflight(&opts),
        Command::Status(opts) => status::status(&opts),
        Command::Verify(opts) => verify::verify(&opts),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
