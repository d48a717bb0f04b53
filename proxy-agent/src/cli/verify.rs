//! `proxy-agent verify`: reads our nftables tables and the pinned fast-path maps back and
//! compares them with the plan for the current input (a manifest directory, or the
//! Kubernetes API as `run` reads it). Prints every difference and exits non-zero when there
//! is one. Changes nothing.

use std::{collections::BTreeSet, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Args;
use tokio::sync::mpsc;

use super::CommonOptions;
use crate::{
    bpf::{self, AccelerationMode, kernel},
    config::Config,
    host,
    model::{ClusterState, ServiceName},
    nft::{self, NftBackend as _, NftCli},
    plan::{self, ProxyPlan},
    source::{Kind, Object, Source as _, SourceEvent, files, kube},
};

/// Options of `verify`.
#[derive(Debug, Args)]
pub struct VerifyOptions {
    /// Read the objects from this directory of manifests (as `run --manifests`) instead of
    /// the Kubernetes API.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// kubeconfig file, as for `run`.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// How long to wait for the API's first lists.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    pub timeout: u64,
    #[command(flatten)]
    pub common: CommonOptions,
}

pub fn verify(opts: &VerifyOptions) -> anyhow::Result<ExitCode> {
    let config = opts.common.config()?;
    let node = config.resolved_node_name();
    let state = match &opts.manifests {
        Some(dir) => {
            let (state, problems) = files::load_dir(dir, &node)?;
            for line in problems.lines() {
                eprintln!("skipped: {line}");
            }
            state
        }
        None => api_snapshot(opts, &node)?,
    };
    let addresses = host::local_addresses().context("reading this host's addresses")?;
    let plan = plan::compute(&state, &config.plan_settings(addresses));
    // A sync in progress (nftables written, the fast path not yet) shows as differences that
    // go away: look again before reporting them.
    let mut differences = differences(&config, &plan)?;
    for _ in 0..2 {
        if differences.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        differences = self::differences(&config, &plan)?;
    }
    for d in &differences {
        println!("{d}");
    }
    if differences.is_empty() {
        eprintln!(
            "verify: nftables and the fast path match the plan ({} services, {} ports)",
            plan.services.len(),
            plan.ports().count()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("verify: {} difference(s)", differences.len());
        Ok(ExitCode::FAILURE)
    }
}

/// Every difference between the kernel and `plan`, nftables first, as text.
pub fn differences(config: &Config, plan: &ProxyPlan) -> anyhow::Result<Vec<String>> {
    let mut cli = NftCli::default();
    let mut out: Vec<String> = nft::verify::verify(&mut cli, plan, config.masquerade_mark())
        .context("reading the nftables tables")?
        .iter()
        .map(ToString::to_string)
        .collect();
    let fp = config.fast_path();
    let pinned = kernel::pinned_layout(&fp.pin_path);
    let bpf_differences = match &pinned {
        None if fp.mode == AccelerationMode::Off => Vec::new(),
        None => vec![bpf::verify::Difference::NotPinned],
        Some(meta) if !kernel::layout_matches(meta) => vec![bpf::verify::Difference::Layout {
            found: meta.layout_version,
        }],
        Some(_) => {
            let mut maps =
                kernel::KernelMaps::open_pinned(&fp.pin_path).context("opening the pinned maps")?;
            bpf::verify::verify(&mut maps, plan, fp.mode).context("reading the pinned maps")?
        }
    };
    out.extend(bpf_differences.iter().map(ToString::to_string));
    if let (Some(meta), Ok(Some(nft_generation))) = (&pinned, cli.read_generation())
        && kernel::layout_matches(meta)
        && meta.generation != u64::from(nft_generation)
    {
        out.push(format!(
            "generations differ: nftables holds {nft_generation}, the fast path {}",
            meta.generation
        ));
    }
    Ok(out)
}

/// The objects as `run` would see them once the API's first lists arrive.
fn api_snapshot(opts: &VerifyOptions, node: &str) -> anyhow::Result<ClusterState> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let client = kube::client(opts.kubeconfig.as_deref())
            .await
            .context("configuring the Kubernetes client")?;
        let source = Box::new(kube::KubeSource::new(client, node.to_owned()));
        let (tx, mut rx) = mpsc::channel(1024);
        let task = tokio::spawn(source.run(tx));
        let mut state = ClusterState::new();
        let mut listed = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(opts.timeout);
        while listed.len() < Kind::ALL.len() {
            let event = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .context("timed out waiting for the Kubernetes API's lists")?
                .context("the Kubernetes source stopped")?;
            take(&mut state, &mut listed, event);
        }
        task.abort();
        Ok(state)
    })
}

/// Takes one source event into `state` (as the sync loop does; what cannot be identified
/// is skipped there as here).
fn take(state: &mut ClusterState, listed: &mut BTreeSet<Kind>, event: SourceEvent) {
    match event {
        SourceEvent::Replace { kind, objects } => {
            listed.insert(kind);
            let mut services = Vec::new();
            let mut slices = Vec::new();
            let mut node = None;
            for o in objects {
                match o {
                    Object::Service(s) => services.push(s),
                    Object::Slice(s) => slices.push(s),
                    Object::Node(n) => node = Some(n),
                }
            }
            match kind {
                Kind::Services => {
                    let _ = state.replace_services(services);
                }
                Kind::EndpointSlices => {
                    let _ = state.replace_slices(slices);
                }
                Kind::Node => {
                    let _ = state.set_node(node);
                }
            }
        }
        SourceEvent::Applied(Object::Service(s)) => {
            let _ = state.upsert_service(s);
        }
        SourceEvent::Applied(Object::Slice(s)) => {
            let _ = state.upsert_slice(s);
        }
        SourceEvent::Applied(Object::Node(n)) => {
            let _ = state.set_node(Some(n));
        }
        SourceEvent::Deleted(Object::Service(s)) => {
            let _ = state.remove_service(&ServiceName::new(
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            ));
        }
        SourceEvent::Deleted(Object::Slice(s)) => {
            let _ = state.remove_slice(
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default(),
            );
        }
        SourceEvent::Deleted(Object::Node(_)) => {
            let _ = state.set_node(None);
        }
        SourceEvent::Problems(lines) => {
            for line in lines {
                eprintln!("skipped: {line}");
            }
        }
    }
}
