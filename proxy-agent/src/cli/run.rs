//! `proxy-agent run`: the daemon the DaemonSet runs.

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::sync::mpsc;

use super::RunOptions;
use crate::{
    bpf::{self, InterfaceWatcher},
    config::Config,
    health::{self, HealthState},
    host,
    metrics::Metrics,
    nft::{NftCli, NftSyncer},
    plan::Planner,
    source::{
        Source,
        files::FilesSource,
        kube::{self, KubeEvents, KubeSource},
    },
    sync::{Control, EventSink, LogEvents, Parts, SyncLoop, Timing},
};

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

/// The fast path's settings when it should run: acceleration is on, or a previous agent
/// left one pinned (its flows then finish there).
fn fast_path_config(config: &Config) -> Option<bpf::FastPathConfig> {
    let fp = config.fast_path();
    (fp.mode != bpf::AccelerationMode::Off || bpf::is_pinned(&fp.pin_path)).then_some(fp)
}

/// Wakes the loop when links or routes change (new pod interfaces), and periodically to
/// collect ended fast-path flows.
fn spawn_fast_path_helpers(control: mpsc::Sender<Control>) {
    let watcher_tx = control.clone();
    std::thread::spawn(move || {
        let watcher = match InterfaceWatcher::open() {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch interfaces; new pod interfaces are found at the next sync");
                return;
            }
        };
        loop {
            match watcher.wait(Duration::from_secs(5)) {
                Ok(true) => {
                    if watcher_tx
                        .blocking_send(Control::InterfacesChanged)
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "interface watch failed");
                    return;
                }
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            if control.send(Control::CollectGarbage).await.is_err() {
                return;
            }
        }
    });
}

pub fn run(opts: &RunOptions) -> anyhow::Result<ExitCode> {
    let config = opts.common.config()?;
    let node = config.resolved_node_name();
    anyhow::ensure!(
        !node.is_empty(),
        "no node name: set nodeName, --node or $NODE_NAME"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(HealthState::new(config.sync_period * 2));
        if let Some(addr) = config.healthz_bind_address {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for health checks on {addr}"))?;
            tokio::spawn(health::serve(listener, health.clone()));
        }
        if let Some(addr) = config.metrics_bind_address {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for metrics on {addr}"))?;
            tokio::spawn(health::serve_metrics(listener, metrics.clone()));
        }

        let (source, events): (Box<dyn Source>, Arc<dyn EventSink>) =
            if let Some(dir) = &opts.manifests {
                let files = FilesSource {
                    dir: dir.clone(),
                    node: node.clone(),
                };
                (Box::new(files), Arc::new(LogEvents))
            } else {
                let client = kube::client(opts.kubeconfig.as_deref())
                    .await
                    .context("configuring the Kubernetes client")?;
                (
                    Box::new(KubeSource::new(client.clone(), node.clone())),
                    Arc::new(KubeEvents::new(client, node.clone())),
                )
            };
        let addresses = host::local_addresses().context("reading this host's addresses")?;
        let fast_path = fast_path_config(&config);
        let (control_tx, control_rx) = mpsc::channel(16);
        if fast_path.is_some() {
            spawn_fast_path_helpers(control_tx.clone());
        }
        let parts = Parts {
            planner: Planner::new(config.plan_settings(addresses)),
            metrics,
            health,
            events,
            fast_path,
            udp_stale_entry_cleanup: config.udp_stale_entry_cleanup,
            timing: Timing {
                min_sync_period: config.min_sync_period,
                sync_period: config.sync_period,
                ..Timing::default()
            },
        };
        let sync_loop = SyncLoop::new(
            NftSyncer::new(NftCli::default(), config.masquerade_mark()),
            parts,
        );
        let (tx, rx) = mpsc::channel(1024);
        let source_task = tokio::spawn(async move {
            if let Err(e) = source.run(tx).await {
                tracing::error!(error = %e, "the source stopped");
            }
        });
        tracing::info!(node = %node, "running");
        let mut sync_loop = sync_loop.run(rx, control_rx, shutdown_signal()).await;
        drop(control_tx);
        source_task.abort();
        if config.cleanup_on_exit {
            tracing::info!("cleanupOnExit: removing the rules");
            tokio::task::block_in_place(|| sync_loop_cleanup(&mut sync_loop, &config))?;
        } else {
            tracing::info!("exiting; the rules stay in place and keep serving");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(ExitCode::SUCCESS)
    })
}

fn sync_loop_cleanup<B: crate::nft::NftBackend>(
    _: &mut SyncLoop<B>,
    config: &Config,
) -> anyhow::Result<()> {
    NftSyncer::new(NftCli::default(), config.masquerade_mark())
        .cleanup()
        .context("removing the nftables tables")?;
    bpf::cleanup(&config.acceleration.pin_path).context("removing the fast path")?;
    Ok(())
}
