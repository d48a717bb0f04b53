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
    sync::{Control, EventSink, LogEvents, Parts, Reload, SyncLoop, Timing},
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

/// How often ended flows are removed from the fast path's connection table.
const GC_PERIOD: Duration = Duration::from_secs(10);

/// The fast path's settings when it should run: acceleration is on, or a previous agent
/// left one pinned (its flows then finish there).
fn fast_path_config(config: &Config) -> Option<bpf::FastPathConfig> {
    let fp = config.fast_path();
    (fp.mode != bpf::AccelerationMode::Off || bpf::is_pinned(&fp.pin_path)).then_some(fp)
}

/// Wakes the loop when links or routes change (new pod interfaces), every
/// [`bpf::OBSERVE_PERIOD`] for `auto` mode and the fast path's metrics, and every
/// [`GC_PERIOD`] to collect ended fast-path flows.
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
        let mut observe = tokio::time::interval(bpf::OBSERVE_PERIOD);
        let mut gc = tokio::time::interval(GC_PERIOD);
        // A loop busy with a long sync gets one request when it is back, not a burst.
        observe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let request = tokio::select! {
                _ = observe.tick() => Control::Observe,
                _ = gc.tick() => Control::CollectGarbage,
            };
            if control.send(request).await.is_err() {
                return;
            }
        }
    });
}

/// What the loop applies live from a configuration.
fn reload_from(config: &Config) -> std::io::Result<Reload> {
    Ok(Reload {
        settings: config.plan_settings(host::local_addresses()?),
        mark: config.masquerade_mark(),
        fast_path: fast_path_config(config),
        udp_stale_entry_cleanup: config.udp_stale_entry_cleanup,
        min_sync_period: config.min_sync_period,
        sync_period: config.sync_period,
    })
}

/// Reloads the configuration on SIGHUP and whenever the `--config` file changes (watching
/// its directory, so that a ConfigMap's symlink swap is seen). An invalid file is reported
/// and the running configuration kept. Settings that need a restart (listen addresses) are
/// named in the log.
fn spawn_config_reloader(
    common: super::CommonOptions,
    current: Config,
    control: mpsc::Sender<Control>,
) {
    use notify::Watcher as _;
    let (changed_tx, mut changed) = mpsc::unbounded_channel::<&'static str>();
    let mut watcher = None;
    if let Some(path) = &common.config {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let tx = changed_tx.clone();
        match notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
            let _ = tx.send("the configuration file changed");
        }) {
            Ok(mut w) => match w.watch(dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => watcher = Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the configuration file; reload with SIGHUP");
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the configuration file; reload with SIGHUP");
            }
        }
    }
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP");
                return;
            }
        };
        let mut current = current;
        loop {
            let why = tokio::select! {
                _ = hup.recv() => "SIGHUP",
                Some(why) = changed.recv() => why,
            };
            // An editor's save or a ConfigMap update is several events.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while changed.try_recv().is_ok() {}
            let config = match common.config() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(reason = why, error = %e, "not reloading: the configuration is invalid; keeping the running one");
                    continue;
                }
            };
            if config == current {
                continue;
            }
            if config.healthz_bind_address != current.healthz_bind_address
                || config.metrics_bind_address != current.metrics_bind_address
            {
                tracing::warn!(
                    "healthzBindAddress and metricsBindAddress take effect after a restart"
                );
            }
            tracing::info!(reason = why, "reloading the configuration");
            match reload_from(&config) {
                Ok(reload) => {
                    if control
                        .send(Control::Reload(Box::new(reload)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    current = config;
                }
                Err(e) => {
                    tracing::error!(error = %e, "not reloading: cannot read this host's addresses");
                }
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
        // Always running: a reload may turn acceleration on.
        spawn_fast_path_helpers(control_tx.clone());
        spawn_config_reloader(opts.common.clone(), config.clone(), control_tx.clone());
        let parts = Parts {
            planner: Planner::new(config.plan_settings(addresses)),
            metrics,
            health,
            events,
            fast_path,
            udp_stale_entry_cleanup: config.udp_stale_entry_cleanup,
            drop_capabilities: true,
            timing: Timing {
                min_sync_period: config.min_sync_period,
                sync_period: config.sync_period,
                ..Timing::default()
            },
        };
        let sync_loop = SyncLoop::new(
            // One libnftables context for the agent's life: no `nft` process, and no wait
            // for its socket to close, on each sync.
            NftSyncer::new(NftCli::in_process(), config.masquerade_mark()),
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
