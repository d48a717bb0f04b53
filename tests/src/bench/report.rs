//! The report: Markdown, JSON and two SVG charts under `target/bench/`, and its main tables
//! on stdout.

use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    Options,
    control::{ControlResult, KubeLayout},
    data::{DataResult, PathRun, ServedBy},
    svg::{self, Bar, PALETTE, Panel, Series},
};

/// Reads one figure of a data-plane run.
type Get = fn(&PathRun) -> f64;

/// Where the numbers came from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub nft: String,
    pub commit: String,
    /// 1-minute load average when the run started and when it ended: other work on the
    /// machine disturbs the figures.
    pub load_before: f64,
    pub load_after: f64,
}

/// One of the goals the project quotes.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    /// `None` when this run did not measure it (`--quick`, or a part skipped).
    pub met: Option<bool>,
}

impl Goal {
    /// A goal with what was measured and whether it was met, or "not measured".
    fn new(goal: &str, outcome: Option<(String, Option<bool>)>) -> Self {
        let (measured, met) = outcome.unwrap_or_else(|| ("not measured in this run".into(), None));
        Self {
            goal: goal.to_owned(),
            measured,
            met,
        }
    }
}

/// One path's figure at the fewest Services measured.
fn at_fewest(d: &DataResult, path: ServedBy, get: Get) -> Option<f64> {
    let small = d.runs.iter().map(|r| r.services).min()?;
    d.run(path, small)
        .map(get)
        .filter(|v| v.is_finite() && *v > 0.0)
}

/// The lowest per-packet cost of a TC program's IPv4 cases (ns), at any service count.
fn worst_tc_cost(d: &DataResult) -> Option<(f64, String)> {
    d.prog_cost
        .iter()
        .filter(|r| r.program.starts_with("hp_tc") && !r.case.contains("IPv6"))
        .map(|r| (r.ns_per_packet, format!("{} {}", r.program, r.case)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// The east-west goals: the fast path's redirect against nftables and against the limit,
/// and the TC programs' cost.
fn east_west_goals(data: Option<&DataResult>, judged: bool) -> Vec<Goal> {
    let mut goals = Vec::new();
    let east_west: [(&str, f64, Get); 2] = [
        ("new TCP connections/s", 1.3, |r| {
            r.tcp_connections.per_second
        }),
        ("TCP request/response on open connections", 1.4, |r| {
            r.tcp_requests.per_second
        }),
    ];
    for (what, target, get) in east_west {
        goals.push(ratio_goal(
            &format!("fast path (redirect) at least {target}x nftables: {what}"),
            data,
            judged,
            target,
            get,
        ));
    }
    for (what, get) in east_west.map(|(w, _, g)| (w, g)) {
        goals.push(Goal::new(
            &format!("fast path (redirect) at least pod to pod with no tables: {what}"),
            data.and_then(|d| {
                let ratio =
                    at_fewest(d, ServedBy::FastPath, get)? / at_fewest(d, ServedBy::Direct, get)?;
                Some((
                    format!("{} of pod to pod", times(ratio)),
                    judged.then_some(ratio >= 1.0),
                ))
            }),
        ));
    }
    goals.push(Goal::new(
        "per-packet cost of the TC programs at most 100 ns (IPv4)",
        data.and_then(worst_tc_cost).map(|(ns, case)| {
            (
                format!("worst {ns:.0} ns ({case})"),
                judged.then_some(ns <= 100.0),
            )
        }),
    ));
    goals
}

/// A goal on the fast path's ratio to nftables for one figure, at the fewest and at the
/// most Services: met when both reach `target` (judged on full runs only).
fn ratio_goal(goal: &str, data: Option<&DataResult>, judged: bool, target: f64, get: Get) -> Goal {
    Goal::new(
        goal,
        data.and_then(|d| fast_over_nft(d, get))
            .map(|(small, large)| {
                (
                    format!(
                        "{} with few Services, {} with 10k",
                        times(small),
                        times(large)
                    ),
                    judged.then_some(small >= target && large >= target),
                )
            }),
    )
}

/// Fast path over nftables for one figure, with the fewest and with the most Services.
fn fast_over_nft(d: &DataResult, get: Get) -> Option<(f64, f64)> {
    let small = d.runs.iter().map(|r| r.services).min()?;
    let big = d.runs.iter().map(|r| r.services).max()?;
    let at = |n| Some(get(d.run(ServedBy::FastPath, n)?) / get(d.run(ServedBy::Nftables, n)?));
    Some((at(small)?, at(big)?))
}

/// The largest relative change of a program's cost per packet from 1 service to the most,
/// and which case it is.
fn worst_cost_change(d: &DataResult) -> Option<(f64, String)> {
    let mut worst: Option<(f64, String)> = None;
    for r in d.prog_cost.iter().filter(|r| r.services == 1) {
        if let Some(big) = d
            .prog_cost
            .iter()
            .filter(|b| b.services > 1 && b.program == r.program && b.case == r.case)
            .max_by_key(|b| b.services)
        {
            let change = big.ns_per_packet / r.ns_per_packet - 1.0;
            if worst.as_ref().is_none_or(|(w, _)| change.abs() > w.abs()) {
                worst = Some((change, format!("{} {}", r.program, r.case)));
            }
        }
    }
    worst
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub quick: bool,
    /// Repetitions of each small sync (medians are reported).
    pub rounds: usize,
    pub date: String,
    pub seconds: f64,
    pub machine: Machine,
    pub control: Vec<ControlResult>,
    pub data: Option<DataResult>,
    pub goals: Vec<Goal>,
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        memory_gib: (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: first_line("uname", &["-r"]),
        nft: first_line("nft", &["--version"]),
        commit: first_line("git", &["rev-parse", "--short", "HEAD"]),
        load_before: load_average(),
        load_after: f64::NAN,
    }
}

fn times(ratio: f64) -> String {
    if !ratio.is_finite() {
        "-".into()
    } else if ratio >= 10.0 {
        format!("{ratio:.0}x")
    } else {
        format!("{ratio:.2}x")
    }
}

fn msf(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line per size on stderr while the run goes on.
pub fn control_line(r: &ControlResult) -> String {
    format!(
        "bench:   full sync {} (floor {}, kube-proxy's layout {}), partial {}, add {}, resync {}, agent peak {:.0} MiB",
        msf(r.full_sync.total_ms),
        msf(r.floor.wall_ms),
        kube_cell(&r.kube_proxy),
        msf(r.partial_endpoint.total_ms),
        msf(r.add_service.total_ms),
        msf(r.full_resync.total_ms),
        r.agent_apply.agent_peak_mib
    )
}

fn kube_cell(k: &KubeLayout) -> String {
    match k {
        KubeLayout::Measured { full, .. } => msf(full.wall_ms),
        KubeLayout::TimedOut { after_s } => format!("> {after_s:.0} s (stopped)"),
        KubeLayout::Skipped { .. } => "not loaded*".into(),
    }
}

impl Report {
    pub fn start(opts: &Options, command: &str) -> Self {
        Self {
            command: command.to_owned(),
            quick: opts.quick,
            rounds: opts.rounds,
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            seconds: 0.0,
            machine: machine(),
            control: Vec::new(),
            data: None,
            goals: Vec::new(),
        }
    }

    pub fn finish(&mut self, took: Duration) {
        self.seconds = took.as_secs_f64();
        self.machine.load_after = load_average();
        self.goals = self.goals();
    }

    fn control_at(&self, services: usize, endpoints: usize) -> Option<&ControlResult> {
        self.control
            .iter()
            .find(|r| r.services == services && r.endpoints == endpoints)
    }

    fn goals(&self) -> Vec<Goal> {
        let at10k = self.control_at(10_000, 2);
        let mut goals = vec![
            Goal::new(
                "full sync at 10k Services (x2) at least 20x faster than kube-proxy's layout",
                at10k.and_then(|r| {
                    let kube = r.kube_proxy.full_ms()?;
                    let ratio = kube / r.full_sync.total_ms;
                    Some((
                        format!(
                            "{} (ours {} vs {})",
                            times(ratio),
                            msf(r.full_sync.total_ms),
                            msf(kube)
                        ),
                        Some(ratio >= 20.0),
                    ))
                }),
            ),
            Goal::new(
                "one-endpoint partial sync at 10k Services under 50 ms",
                at10k.map(|r| {
                    let x10 = self
                        .control_at(10_000, 10)
                        .map_or("-".into(), |x| msf(x.partial_endpoint.total_ms));
                    (
                        format!(
                            "{} (x10 endpoints: {x10})",
                            msf(r.partial_endpoint.total_ms)
                        ),
                        Some(r.partial_endpoint.total_ms < 50.0),
                    )
                }),
            ),
        ];
        let data = self.data.as_ref();
        // Judged only on a full run: --quick's figures mean nothing.
        let judged = !self.quick
            && data.and_then(|d| d.runs.iter().map(|r| r.services).max()) == Some(10_000);
        goals.extend(east_west_goals(data, judged));
        let metrics: [(&str, Get); 1] = [("packets/s (XDP path, live frames)", |r| {
            r.xdp_packets.per_second
        })];
        for (what, get) in metrics {
            goals.push(ratio_goal(
                &format!("fast path at least 2x nftables: {what}"),
                data,
                judged,
                2.0,
                get,
            ));
        }
        goals.push(Goal::new(
            "per-packet cost with 10k services within 10% of 1 service",
            data.and_then(worst_cost_change).map(|(change, case)| {
                (
                    format!("worst case {:+.1}% ({case})", change * 100.0),
                    judged.then_some(change.abs() <= 0.10),
                )
            }),
        ));
        goals
    }

    fn goals_table(&self) -> String {
        let mut t = String::from("| goal | measured | met |\n|---|---|---|\n");
        for g in &self.goals {
            let met = match g.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            };
            let _ = writeln!(t, "| {} | {} | {met} |", g.goal, g.measured);
        }
        t
    }

    fn control_table(&self) -> String {
        let mut t = String::from(
            "| Services x endpoints | ours: full sync | floor: `nft -f` | kube-proxy's layout: `nft -f` | kube-proxy / ours | ours / floor | partial sync: 1 endpoint | add 1 Service | full resync (loaded) | agent peak RSS |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.control {
            let kube = r.kube_proxy.full_ms();
            let _ = writeln!(
                t,
                "| {} x {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} MiB |",
                thousands(r.services),
                r.endpoints,
                msf(r.full_sync.total_ms),
                msf(r.floor.wall_ms),
                kube_cell(&r.kube_proxy),
                kube.map_or("-".into(), |k| times(k / r.full_sync.total_ms)),
                times(r.full_sync.total_ms / r.floor.wall_ms),
                msf(r.partial_endpoint.total_ms),
                msf(r.add_service.total_ms),
                msf(r.full_resync.total_ms),
                r.agent_apply.agent_peak_mib,
            );
        }
        t
    }

    fn kube_partial_table(&self) -> String {
        let mut t = String::from(
            "| Services x endpoints | ours: partial sync (1 endpoint) | kube-proxy's layout: its `nft -f` | ours: add 1 Service | kube-proxy's layout: its `nft -f` | nft peak RSS: ours / kube-proxy's layout |\n\
             |---|---|---|---|---|---|\n",
        );
        for r in &self.control {
            if let KubeLayout::Measured {
                full,
                partial_endpoint_ms,
                add_service_ms,
            } = &r.kube_proxy
            {
                let _ = writeln!(
                    t,
                    "| {} x {} | {} | {} | {} | {} | {:.0} / {:.0} MiB |",
                    thousands(r.services),
                    r.endpoints,
                    msf(r.partial_endpoint.total_ms),
                    msf(*partial_endpoint_ms),
                    msf(r.add_service.total_ms),
                    msf(*add_service_ms),
                    r.floor.nft_peak_mib,
                    full.nft_peak_mib
                );
            }
        }
        t
    }

    fn breakdown_table(&self) -> String {
        let mut t = String::from(
            "| Services x endpoints | sync | all | planning | building the transaction | `nft` | `nft` on CPU | bytes |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.control {
            for (what, s) in [
                ("full", &r.full_sync),
                ("partial, 1 endpoint", &r.partial_endpoint),
                ("add 1 Service", &r.add_service),
                ("full resync", &r.full_resync),
            ] {
                let _ = writeln!(
                    t,
                    "| {} x {} | {what} | {} | {} | {} | {} | {} | {} |",
                    thousands(r.services),
                    r.endpoints,
                    msf(s.total_ms),
                    msf(s.plan_ms),
                    msf(s.build_ms),
                    msf(s.nft_ms),
                    msf(s.nft_cpu_ms),
                    thousands(s.bytes)
                );
            }
        }
        t
    }

    fn apply_table(&self) -> String {
        let mut t = String::from(
            "| Services x endpoints | `proxy-agent apply` | reading manifests | planning | nftables | agent peak RSS | largest process (agent or nft) |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for r in &self.control {
            let a = &r.agent_apply;
            let _ = writeln!(
                t,
                "| {} x {} | {} | {} | {} | {} | {:.0} MiB | {:.0} MiB |",
                thousands(r.services),
                r.endpoints,
                msf(a.wall_ms),
                msf(a.read_ms),
                msf(a.plan_ms),
                msf(a.nftables_ms),
                a.agent_peak_mib,
                a.largest_process_mib
            );
        }
        t
    }

    fn data_table(&self) -> String {
        let Some(d) = &self.data else {
            return String::new();
        };
        let mut counts: Vec<usize> = d.runs.iter().map(|r| r.services).collect();
        counts.sort_unstable();
        counts.dedup();
        let (Some(&small), Some(&big)) = (counts.first(), counts.last()) else {
            return String::new();
        };
        let mut t = format!(
            "| metric | path | {} Services | {} Services | {} / {} |\n|---|---|---|---|---|\n",
            thousands(small),
            thousands(big),
            thousands(big),
            thousands(small)
        );
        let metrics: [(&str, Get); 3] = [
            ("new TCP connections/s", |r| r.tcp_connections.per_second),
            ("UDP requests/s", |r| r.udp_requests.per_second),
            ("packets/s, XDP path (live frames, 1 core)", |r| {
                r.xdp_packets.per_second
            }),
        ];
        for (name, get) in metrics {
            for path in [ServedBy::Nftables, ServedBy::FastPath] {
                let a = d.run(path, small).map_or(f64::NAN, get);
                let b = d.run(path, big).map_or(f64::NAN, get);
                let _ = writeln!(
                    t,
                    "| {name} | {} | {} | {} | {} |",
                    path.label(),
                    svg::compact(a),
                    svg::compact(b),
                    times(b / a)
                );
            }
            let ratio = |n| {
                let f = d.run(ServedBy::FastPath, n).map_or(f64::NAN, get);
                let n = d.run(ServedBy::Nftables, n).map_or(f64::NAN, get);
                f / n
            };
            let _ = writeln!(
                t,
                "| {name} | **fast / nft** | **{}** | **{}** | |",
                times(ratio(small)),
                times(ratio(big))
            );
        }
        t
    }

    /// Pod to ClusterIP on every path at the fewest Services (and the fast path's two
    /// forwarding modes at the most), with the machine's CPU per operation.
    fn east_west_table(&self) -> String {
        let Some(d) = &self.data else {
            return String::new();
        };
        let Some(small) = d.runs.iter().map(|r| r.services).min() else {
            return String::new();
        };
        let big = d.runs.iter().map(|r| r.services).max().unwrap_or(small);
        let mut t = String::from("| metric |");
        for p in ServedBy::ALL {
            let _ = write!(t, " {} |", p.label());
        }
        t.push_str(" redirect / nft | redirect / pod to pod |\n|---|---|---|---|---|---|---|\n");
        let metrics: [(&str, Get); 6] = [
            ("new TCP connections/s", |r| r.tcp_connections.per_second),
            ("TCP requests/s (open connections)", |r| {
                r.tcp_requests.per_second
            }),
            ("UDP requests/s", |r| r.udp_requests.per_second),
            ("CPU per new connection (us)", |r| {
                r.tcp_connections.cpu_us_per_op
            }),
            ("CPU per TCP request (us)", |r| r.tcp_requests.cpu_us_per_op),
            ("CPU per UDP request (us)", |r| r.udp_requests.cpu_us_per_op),
        ];
        for (name, get) in metrics {
            let cpu = name.starts_with("CPU");
            let value = |p| d.run(p, small).map_or(f64::NAN, get);
            let _ = write!(t, "| {name} |");
            for p in ServedBy::ALL {
                let v = value(p);
                if cpu {
                    let _ = write!(t, " {v:.1} |");
                } else {
                    let _ = write!(t, " {} |", svg::compact(v));
                }
            }
            let redirect = value(ServedBy::FastPath);
            let _ = writeln!(
                t,
                " **{}** | **{}** |",
                times(redirect / value(ServedBy::Nftables)),
                times(redirect / value(ServedBy::Direct))
            );
        }
        if big != small {
            let _ = writeln!(
                t,
                "\nWith {} Services loaded (no pod-to-pod run: it has no Services):\n\n| metric | nftables | fast path, stack | fast path, redirect | redirect / nft |\n|---|---|---|---|---|",
                thousands(big)
            );
            for (name, get) in metrics.iter().take(3) {
                let value = |p| d.run(p, big).map_or(f64::NAN, get);
                let _ = writeln!(
                    t,
                    "| {name} | {} | {} | {} | **{}** |",
                    svg::compact(value(ServedBy::Nftables)),
                    svg::compact(value(ServedBy::FastStack)),
                    svg::compact(value(ServedBy::FastPath)),
                    times(value(ServedBy::FastPath) / value(ServedBy::Nftables))
                );
            }
        }
        t
    }

    /// wrk against nginx, on the paths that ran it.
    fn wrk_table(&self) -> String {
        let Some(d) = &self.data else {
            return String::new();
        };
        let runs: Vec<&PathRun> = ServedBy::ALL
            .iter()
            .filter_map(|p| d.runs.iter().find(|r| r.path == *p && r.wrk.is_some()))
            .collect();
        if runs.is_empty() {
            return "not measured (nginx or wrk missing)\n".into();
        }
        let mut t = String::from("| HTTP requests/s |");
        for r in &runs {
            let _ = write!(t, " {} |", r.path.label());
        }
        t.push_str(" redirect / nft |\n|---|");
        for _ in &runs {
            t.push_str("---|");
        }
        t.push_str("---|\n");
        let get = |p: ServedBy, keep: bool| {
            d.runs
                .iter()
                .find(|r| r.path == p)
                .and_then(|r| r.wrk.as_ref())
                .map_or(f64::NAN, |w| {
                    if keep {
                        w.keep_alive.requests_per_second
                    } else {
                        w.new_connections.requests_per_second
                    }
                })
        };
        for (name, keep) in [("keep-alive", true), ("new connection per request", false)] {
            let _ = write!(t, "| {name} |");
            for r in &runs {
                let _ = write!(t, " {} |", svg::compact(get(r.path, keep)));
            }
            let _ = writeln!(
                t,
                " **{}** |",
                times(get(ServedBy::FastPath, keep) / get(ServedBy::Nftables, keep))
            );
        }
        t
    }

    fn cost_table(&self) -> String {
        let Some(d) = &self.data else {
            return String::new();
        };
        let most = d.prog_cost.iter().map(|r| r.services).max().unwrap_or(1);
        let mut t = format!(
            "| program | case | 1 service | {} services | change |\n|---|---|---|---|---|\n",
            thousands(most)
        );
        for r in d.prog_cost.iter().filter(|r| r.services == 1) {
            if let Some(b) = d
                .prog_cost
                .iter()
                .filter(|b| b.services > 1 && b.program == r.program && b.case == r.case)
                .max_by_key(|b| b.services)
            {
                let _ = writeln!(
                    t,
                    "| {} | {} | {:.0} ns | {:.0} ns | {:+.1}% |",
                    r.program,
                    r.case,
                    r.ns_per_packet,
                    b.ns_per_packet,
                    (b.ns_per_packet / r.ns_per_packet - 1.0) * 100.0
                );
            }
        }
        t
    }

    /// What the XDP path's packets cost, step by step, at the most Services measured.
    fn xdp_steps_table(&self) -> String {
        let Some(d) = &self.data else {
            return String::new();
        };
        let Some(big) = d.runs.iter().map(|r| r.services).max() else {
            return String::new();
        };
        let direct = d
            .run(ServedBy::Nftables, big)
            .and_then(|r| r.xdp_direct_to_pod.as_ref());
        let rows: [(&str, Option<f64>); 4] = [
            (
                "to the backend pod's own address, no tables: the node's forwarding alone",
                Some(d.xdp_direct_no_tables.per_second),
            ),
            (
                "to the backend pod's own address, our tables loaded: + conntrack and our filter chains",
                direct.map(|r| r.per_second),
            ),
            (
                "to the LoadBalancer IP through nftables: + DNAT",
                d.run(ServedBy::Nftables, big)
                    .map(|r| r.xdp_packets.per_second),
            ),
            (
                "to the LoadBalancer IP through the fast path: XDP DNAT, then the same stack",
                d.run(ServedBy::FastPath, big)
                    .map(|r| r.xdp_packets.per_second),
            ),
        ];
        let mut t = format!(
            "| frames ({} Services loaded) | packets/s | per packet |\n|---|---|---|\n",
            thousands(big)
        );
        for (what, pps) in rows {
            let pps = pps.unwrap_or(f64::NAN);
            let _ = writeln!(
                t,
                "| {what} | {} | {:.2} us |",
                svg::compact(pps),
                1e6 / pps
            );
        }
        t
    }

    fn fast_path_counters(&self) -> String {
        let Some(d) = &self.data else {
            return String::new();
        };
        let mut t = String::new();
        for r in d.runs.iter().filter(|r| r.path == ServedBy::FastPath) {
            let list: Vec<String> = r
                .fast_path_counters
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                t,
                "- {} Services: {}",
                thousands(r.services),
                list.join(", ")
            );
        }
        t
    }

    fn skipped(&self) -> String {
        let mut t = String::new();
        for r in &self.control {
            if let KubeLayout::Skipped { reason } = &r.kube_proxy {
                let _ = writeln!(
                    t,
                    "\\* {} x {}: {reason}",
                    thousands(r.services),
                    r.endpoints
                );
                break;
            }
        }
        t
    }

    /// The profile of a partial sync at 10k (or the largest size measured), in words.
    fn partial_profile(&self) -> String {
        let Some(r) = self
            .control_at(10_000, 2)
            .or_else(|| self.control.iter().max_by_key(|r| r.services))
        else {
            return String::new();
        };
        let p = &r.partial_endpoint;
        let f = &r.nft_fixed;
        format!(
            "**A one-endpoint partial sync at {} x {}** took {}: planning {} \
             (`Planner::update`), building the transaction {} (`NftSyncer`: rendering the changed \
             Service before and after, diffing, bookkeeping), nftables {} (libnftables in the \
             agent's process, on a CPU for {} of that). For comparison, the `nft` program: \
             starting it alone (`nft --version`) takes {}, and a transaction that changes nothing \
             on the loaded table {}; after a transaction that changes something, an `nft` \
             process also sleeps in `close()` of its netlink socket (`netlink_release` -> \
             `nft_rcv_nl_event` -> `__flush_work`, in a `perf` trace of `sched_switch`), waiting \
             for nf_tables' deferred destruction of the transaction, which waits for an RCU grace \
             period first (10-20 ms here). The agent keeps its socket open and does not wait. \
             The transaction itself ({} bytes):\n\n```\n{}```\n",
            thousands(r.services),
            r.endpoints,
            msf(p.total_ms),
            msf(p.plan_ms),
            msf(p.build_ms),
            msf(p.nft_ms),
            msf(p.nft_cpu_ms),
            msf(f.process_ms),
            msf(f.noop_transaction_ms),
            p.bytes,
            r.partial_example
        )
    }

    /// The tables printed on stdout.
    pub fn main_tables(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}\n", self.goals_table());
        let _ = writeln!(
            s,
            "Control plane (nftables):\n\n{}{}",
            self.control_table(),
            self.skipped()
        );
        if self.data.is_some() {
            let _ = writeln!(
                s,
                "Pod to ClusterIP (local backends):\n\n{}\nwrk against nginx:\n\n{}",
                self.east_west_table(),
                self.wrk_table()
            );
            let _ = writeln!(s, "Data plane:\n\n{}", self.data_table());
            let _ = writeln!(
                s,
                "Per-packet cost (BPF_PROG_TEST_RUN):\n\n{}",
                self.cost_table()
            );
        }
        s
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# hybrid-proxy benchmark{}\n",
            if self.quick {
                " (--quick: smoke run, figures meaningless)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "`{}` on {}, commit {}: {} ({} cores), {} GiB, kernel {}, {}. Took {:.0} s; load \
             average {:.2} at the start, {:.2} at the end (other work on the machine disturbs \
             the figures: compare ratios from one run, not absolute times across runs).\n",
            self.command,
            self.date,
            m.commit,
            m.cpu,
            m.cores,
            m.memory_gib,
            m.kernel,
            m.nft,
            self.seconds,
            m.load_before,
            m.load_after
        );
        let _ = writeln!(s, "## Goals\n\n{}", self.goals_table());
        let _ = writeln!(
            s,
            "## Control plane\n\nEach measurement in a fresh network namespace. *Ours: full sync* is \
             what the agent's sync loop does at start: planning, building the transaction, `nft` \
             (listing the empty tables, then `nft -f`). *Floor* is `nft -f` of the same ruleset \
             (`proxy-agent render`'s text) with no agent. *kube-proxy's layout* is `nft -f` of \
             kube-proxy's nftables-mode layout for the same Services (per-Service chains with an \
             anonymous `numgen random mod N vmap`, per-endpoint chains), generated like the \
             proof's `nft-bench --style vmap`. Partial syncs and additions are medians of {} runs. \
             *Full resync* rewrites everything on a loaded table (every `syncPeriod`).\n\n{}{}\n\
             ![sync time](sync-time.svg)\n",
            self.rounds,
            self.control_table(),
            self.skipped()
        );
        let _ = writeln!(
            s,
            "### kube-proxy's layout, small changes\n\n{}",
            self.kube_partial_table()
        );
        let _ = writeln!(
            s,
            "### Where the time goes\n\n{}\n{}",
            self.breakdown_table(),
            self.partial_profile()
        );
        let _ = writeln!(
            s,
            "### `proxy-agent apply` (the whole process)\n\n{}",
            self.apply_table()
        );
        if let Some(d) = &self.data {
            s.push_str(&self.data_section(d));
        }
        s
    }

    /// The report's data-plane section.
    fn data_section(&self, d: &DataResult) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## Data plane\n\nThe namespace lab: a client pod and two backend pods on node-a. \
                 Connections and UDP requests go from the client pod to a ClusterIP ({} client \
                 threads, {} server threads per backend pod; the paths take turns for {} rounds of \
                 one {:.1}-s window each, after a warm-up, and each figure is the median of its \
                 rounds; packets/s keep the best): a new TCP \
                 connection is connect, one request and reply, close; UDP requests use one flow per \
                 client thread. Packets/s: 64-byte UDP frames for a LoadBalancer IP with \
                 `externalTrafficPolicy: Local`, injected on node-a's `eth0` by \
                 `BPF_PROG_TEST_RUN` in live-frames mode from one thread, counted where they \
                 arrive (the backend pod's interface). *nftables*: `proxy-agent apply`; *fast \
                 path*: `proxy-agent apply` with `acceleration.mode: all` and `forwarding: \
                 redirect` (*stack*: the same with `forwarding: stack`); *pod to pod*: the \
                 client to the backend pods' own addresses after `proxy-agent cleanup` (no \
                 Service, no tables, no conntrack): the limit. Request/response keeps one TCP \
                 connection per client thread open. CPU is the whole machine's busy time \
                 (`/proc/stat`) per operation.\n\n### Pod to ClusterIP\n\n{}\n\
                 ### wrk against nginx\n\nnginx (one worker) in each backend pod, `wrk` (2 \
                 threads, 16 connections) in the client pod, to the ClusterIP (pod to pod: one \
                 `wrk` per backend pod, the same threads and connections in all).\n\n{}\n\
                 ### By Service count\n\n{}\n\
                 ![throughput](throughput.svg)\n\n### What a packet on the XDP path costs\n\n\
                 The same live frames, sent to the backend pod's own address (no translation), \
                 before and after our tables exist. Both paths pass the frame to the kernel's \
                 stack, conntrack included: the fast path saves nftables' DNAT only.\n\n{}\n\
                 The fast path's counters during its runs (every flow it started, and any that \
                 fell back to nftables):\n\n{}",
            d.client_threads,
            d.server_threads_per_pod,
            d.windows,
            d.seconds_per_window,
            self.east_west_table(),
            self.wrk_table(),
            self.data_table(),
            self.xdp_steps_table(),
            self.fast_path_counters()
        );
        let _ = writeln!(
            s,
            "### Per-packet cost\n\n`BPF_PROG_TEST_RUN` of the programs on private copies \
                 of the datapath, one per service count, loaded side by side and measured in \
                 turn, case by case: the kernel's average per run, median of a few rounds, \
                 lowest of several turns. On a shared VM a case can sit 20-30% higher for \
                 seconds at a time, so differences of that size between counts are within \
                 noise; compare several runs.\n\n{}",
            self.cost_table()
        );
        s
    }

    fn sync_chart(&self) -> String {
        let mut series = Vec::new();
        let mut endpoints: Vec<usize> = self.control.iter().map(|r| r.endpoints).collect();
        endpoints.sort_unstable();
        endpoints.dedup();
        #[expect(clippy::cast_precision_loss, reason = "Service counts")]
        let points = |e: usize, f: &dyn Fn(&ControlResult) -> Option<f64>| -> Vec<(f64, f64)> {
            self.control
                .iter()
                .filter(|r| r.endpoints == e)
                .filter_map(|r| f(r).map(|v| (r.services as f64, v)))
                .collect()
        };
        for (i, &e) in endpoints.iter().enumerate() {
            let dashed = i > 0;
            series.push(Series {
                name: format!("kube-proxy's layout, x{e}"),
                colour: PALETTE[2],
                dashed,
                points: points(e, &|r| r.kube_proxy.full_ms()),
            });
            series.push(Series {
                name: format!("ours: full sync, x{e}"),
                colour: PALETTE[0],
                dashed,
                points: points(e, &|r| Some(r.full_sync.total_ms)),
            });
            series.push(Series {
                name: format!("floor: nft -f, x{e}"),
                colour: PALETTE[1],
                dashed,
                points: points(e, &|r| Some(r.floor.wall_ms)),
            });
            series.push(Series {
                name: format!("ours: partial sync, x{e}"),
                colour: PALETTE[4],
                dashed,
                points: points(e, &|r| Some(r.partial_endpoint.total_ms)),
            });
        }
        series.retain(|s| !s.points.is_empty());
        svg::line_chart(
            "nftables programming time vs Services (x2 solid, x10 dashed)",
            "Services",
            "time",
            svg::duration_ms,
            &series,
        )
    }

    fn throughput_chart(&self) -> String {
        let Some(d) = &self.data else {
            return svg::bar_panels("throughput by path (not measured)", &[]);
        };
        let mut counts: Vec<usize> = d.runs.iter().map(|r| r.services).collect();
        counts.sort_unstable();
        counts.dedup();
        let metrics: [(&str, Get, &[ServedBy]); 4] = [
            (
                "TCP connections/s",
                |r| r.tcp_connections.per_second,
                &ServedBy::ALL,
            ),
            (
                "TCP requests/s",
                |r| r.tcp_requests.per_second,
                &ServedBy::ALL,
            ),
            (
                "UDP requests/s",
                |r| r.udp_requests.per_second,
                &ServedBy::ALL,
            ),
            (
                "XDP packets/s",
                |r| r.xdp_packets.per_second,
                &[ServedBy::Nftables, ServedBy::FastPath],
            ),
        ];
        let colour = |p: ServedBy| match p {
            ServedBy::Nftables => PALETTE[2],
            ServedBy::FastStack => PALETTE[1],
            ServedBy::FastPath => PALETTE[0],
            ServedBy::Direct => PALETTE[3],
        };
        let panels: Vec<Panel> = metrics
            .iter()
            .map(|(title, get, paths)| Panel {
                title: (*title).to_owned(),
                bars: counts
                    .iter()
                    .flat_map(|n| paths.iter().map(move |p| (*p, *n)))
                    .filter_map(|(path, n)| {
                        let r = d.run(path, n)?;
                        Some(Bar {
                            label: if path == ServedBy::Direct {
                                format!("{} (the limit)", path.label())
                            } else {
                                format!("{}, {} Services", path.label(), thousands(n))
                            },
                            colour: colour(path),
                            value: get(r),
                        })
                    })
                    .collect(),
            })
            .collect();
        svg::bar_panels("throughput by path", &panels)
    }

    /// Writes `report.md`, `report.json`, `sync-time.svg` and `throughput.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("sync-time.svg"), self.sync_chart())?;
        std::fs::write(dir.join("throughput.svg"), self.throughput_chart())?;
        Ok(())
    }
}
