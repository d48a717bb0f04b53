//! Arbitrary YAML/JSON manifests through the whole pure core: parsing, normalising and
//! planning must never panic, and planning the same input twice must give the same plan.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_agent::{
    plan::{DetectLocal, NodePortAddresses, PlanSettings, compute},
    source::{files::state_from, manifest::parse_str},
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let manifests = parse_str(&text, "fuzz.yaml");
    let (state, _) = state_from(manifests, "node-a");
    let settings = PlanSettings {
        node_name: "node-a".into(),
        detect_local: DetectLocal::ClusterCidr,
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        node_port_addresses: NodePortAddresses::Primary,
        local_addresses: Vec::new(),
        masquerade_all: false,
    };
    let first = compute(&state, &settings);
    assert_eq!(first, compute(&state, &settings));
});
