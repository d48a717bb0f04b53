//! The programs' cost per packet (`BPF_PROG_TEST_RUN`) with 1 and with 10,000 services
//! loaded. Prints both; asserts only that every case ran (timings on shared machines drift,
//! the benchmark compares them).

use hybrid_proxy_tests::{bpf_harness::chain, privileged};
use proxy_agent::bpf::bench;

#[test]
fn per_packet_cost_with_1_and_10000_services() {
    if !privileged::root_or_skip("per_packet_cost") {
        return;
    }
    let rows = bench::prog_costs(&[1, 10_000], 100_000, 5, 3)
        .unwrap_or_else(|e| panic!("measuring: {}", chain(&e)));
    assert_eq!(rows.len(), 20, "10 cases, 2 service counts");
    println!(
        "{:<14} {:<28} {:>9} {:>12}",
        "program", "case", "services", "ns/packet"
    );
    for r in &rows {
        println!(
            "{:<14} {:<28} {:>9} {:>12}",
            r.program,
            r.case,
            r.services,
            r.per_packet.as_nanos()
        );
        assert!(r.per_packet.as_nanos() > 0, "{r:?}");
    }
}
