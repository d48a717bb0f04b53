//! Planning at scale: `cargo bench -p proxy-agent --bench plan [-- SERVICES ENDPOINTS]`.
//!
//! Builds the cluster state for `SERVICES` Services of `ENDPOINTS` endpoints each (default
//! 30,000 x 10) from fixtures, then times a full plan and a one-Service re-plan, and reports
//! peak memory (`VmHWM`) before and after planning.

use std::time::{Duration, Instant};

use proxy_agent::{
    model::{
        ClusterState, ServiceName,
        fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder},
    },
    plan::{DetectLocal, NodePortAddresses, PlanSettings, Planner},
};

fn peak_memory_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn ip(base: [u8; 2], i: usize) -> String {
    format!(
        "{}.{}.{}.{}",
        base[0],
        usize::from(base[1]) + (i >> 16),
        (i >> 8) & 255,
        i & 255
    )
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let services = args.first().copied().unwrap_or(30_000);
    let endpoints = args.get(1).copied().unwrap_or(10);
    let started = Instant::now();
    let mut state = ClusterState::new();
    state.set_node(Some(
        NodeBuilder::new("node-a")
            .internal_ip("192.168.1.10")
            .zone("z1")
            .build(),
    ));
    for i in 0..services {
        let ns = format!("ns-{}", i % 100);
        let name = format!("svc-{i}");
        state
            .upsert_service(
                ServiceBuilder::cluster_ip(&ns, &name, &ip([10, 96], i))
                    .port("http", 80)
                    .build(),
            )
            .expect("valid service");
        let mut slice = SliceBuilder::new(&ns, &name).port("http", 8080);
        for k in 0..endpoints {
            slice = slice.endpoint(
                &ip([10, 128], i * endpoints + k),
                &format!("node-{}", k % 3),
            );
        }
        state.upsert_slice(slice.build()).expect("valid slice");
    }
    let built = started.elapsed();
    let before = peak_memory_kib();
    let settings = PlanSettings {
        node_name: "node-a".into(),
        detect_local: DetectLocal::ClusterCidr,
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        node_port_addresses: NodePortAddresses::Primary,
        local_addresses: Vec::new(),
        masquerade_all: false,
    };
    let mut planner = Planner::new(settings);
    let mut best = Duration::MAX;
    let mut plan = None;
    for _ in 0..3 {
        let t = Instant::now();
        plan = Some(planner.full(&state));
        best = best.min(t.elapsed());
    }
    let plan = plan.expect("planned");
    let after = peak_memory_kib();
    let one = ServiceName::new("ns-7", "svc-7");
    let t = Instant::now();
    let replanned = planner.update(&state, [&one]);
    let partial = t.elapsed();
    assert_eq!(replanned.services.len(), plan.services.len());
    println!(
        "plan: {services} services x {endpoints} endpoints: full {:.3} s (best of 3), one Service {:.3} ms; \
         state built in {:.1} s; peak memory {} MiB with the state, {} MiB after planning",
        best.as_secs_f64(),
        partial.as_secs_f64() * 1000.0,
        built.as_secs_f64(),
        before / 1024,
        after / 1024
    );
}
