//! `cargo xtask bench`: the control plane (nftables programming, against kube-proxy's layout
//! and against a bare `nft -f`) and the data plane (nftables against the eBPF fast path, in
//! the namespace lab), in one run, reported as ratios (see DESIGN.md, "Performance").
//!
//! Everything runs in network namespaces this run creates (`hpt-bench-*`) and removes, and
//! pins under `/sys/fs/bpf/hpb-bench-<pid>`, removed at the end.

pub mod cluster;
pub mod control;
pub mod data;
pub mod kube_layout;
pub mod load;
pub mod process;
pub mod report;
pub mod svg;
pub mod wrk;
pub mod xdp_live;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use cluster::Shape;

/// Milliseconds, as the report writes them.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What to measure and how long.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    /// The `proxy-agent` binary.
    pub agent: PathBuf,
    /// Where the report goes (`target/bench`).
    pub out: PathBuf,
    /// Scratch space for manifests and rulesets.
    pub work: PathBuf,
    pub control: bool,
    pub data: bool,
    pub shapes: Vec<Shape>,
    /// Repetitions of each partial sync (the median is reported).
    pub rounds: usize,
    /// kube-proxy's layout is loaded up to this many Service endpoints (Services x
    /// endpoints); above it, it is skipped with the reason.
    pub kube_max_endpoints: usize,
    pub kube_timeout: Duration,
    pub data_services: Vec<usize>,
    pub client_threads: usize,
    pub server_threads: usize,
    pub data_warmup: Duration,
    /// Each data-plane figure is the best of `data_windows` windows of `data_seconds`.
    pub data_seconds: Duration,
    pub data_windows: usize,
    pub cost_services: Vec<usize>,
    pub cost_repeat: u32,
    pub cost_rounds: u32,
    pub cost_alternations: usize,
}

impl Options {
    /// The full run: 1k, 10k and 30k Services with 2 and 10 endpoints each.
    pub fn full(agent: PathBuf, out: PathBuf) -> Self {
        let shapes = [1_000, 10_000, 30_000]
            .into_iter()
            .flat_map(|services| {
                [2, 10].map(|endpoints| Shape {
                    services,
                    endpoints,
                })
            })
            .collect();
        Self {
            quick: false,
            agent,
            out,
            work: std::env::temp_dir().join(format!("hpb-bench-{}", std::process::id())),
            control: true,
            data: true,
            shapes,
            rounds: 5,
            // 1k x 2, 1k x 10 and 10k x 2: about a minute together.
            kube_max_endpoints: 20_000,
            kube_timeout: Duration::from_mins(2),
            data_services: vec![1, 10_000],
            client_threads: 4,
            server_threads: 2,
            data_warmup: Duration::from_millis(500),
            data_seconds: Duration::from_secs(1),
            data_windows: 5,
            cost_services: vec![1, 10_000],
            cost_repeat: 100_000,
            cost_rounds: 5,
            cost_alternations: 5,
        }
    }

    /// A smoke run of a few seconds: small sizes, short runs; it checks that everything
    /// runs and prints numbers, not what the numbers are.
    pub fn quick(agent: PathBuf, out: PathBuf) -> Self {
        Self {
            quick: true,
            shapes: vec![
                Shape {
                    services: 100,
                    endpoints: 2,
                },
                Shape {
                    services: 300,
                    endpoints: 2,
                },
            ],
            rounds: 2,
            kube_max_endpoints: 1_000,
            kube_timeout: Duration::from_secs(30),
            data_services: vec![1, 100],
            data_warmup: Duration::from_millis(100),
            data_seconds: Duration::from_millis(300),
            data_windows: 1,
            cost_services: vec![1, 100],
            cost_repeat: 1_000,
            cost_rounds: 1,
            cost_alternations: 1,
            ..Self::full(agent, out)
        }
    }
}

impl Options {
    /// The data plane's measurement windows.
    pub fn windows(&self) -> load::Windows {
        load::Windows {
            warmup: self.data_warmup,
            window: self.data_seconds,
            windows: self.data_windows,
        }
    }
}

/// Runs what `opts` asks for and writes the report; returns it.
pub fn run(opts: &Options, command: &str) -> anyhow::Result<report::Report> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.work)?;
    let mut report = report::Report::start(opts, command);
    let result = (|| -> anyhow::Result<()> {
        if opts.control {
            for shape in &opts.shapes {
                eprintln!(
                    "bench: control plane, {} Services x {} endpoints",
                    shape.services, shape.endpoints
                );
                let r = control::measure(*shape, opts)?;
                eprintln!("{}", report::control_line(&r));
                report.control.push(r);
            }
        }
        if opts.data {
            report.data = Some(data::measure(opts)?);
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&opts.work);
    result?;
    report.finish(started.elapsed());
    report.write(&opts.out)?;
    Ok(report)
}
