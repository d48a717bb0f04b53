//! The eBPF toolchain end to end: the programs built by `cargo xtask build-ebpf`, embedded in
//! the agent, load, attach to real interfaces and see real packets; `BPF_PROG_TEST_RUN`
//! runs them on crafted frames.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use aya::{
    Ebpf, TestRun as _, TestRunOptions,
    maps::PerCpuArray,
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc},
};
use hybrid_proxy_tests::{netns::Netns, packet::Frame, privileged};
use proxy_common::{Counter, StatIndex};

const PACKETS: u64 = 20;

fn load() -> Ebpf {
    let object = proxy_agent::bpf::embedded_object()
        .unwrap_or_else(|e| panic!("{e}: `cargo xtask test` builds it before running the tests"));
    Ebpf::load(object).expect("loading the embedded eBPF object")
}

fn stat(ebpf: &Ebpf, slot: StatIndex) -> Counter {
    let stats: PerCpuArray<_, Counter> =
        PerCpuArray::try_from(ebpf.map("STATS").expect("STATS map")).expect("STATS is per-CPU");
    let per_cpu = stats.get(&(slot as u32), 0).expect("reading STATS");
    per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

#[test]
fn xdp_and_tc_programs_count_real_udp_packets_across_a_veth_pair() {
    if !privileged::root_or_skip("xdp_and_tc_programs_count_real_udp_packets") {
        return;
    }
    let client = Netns::new("smoke-c");
    let node = Netns::new("smoke-n");
    client.veth("veth0", &node, "veth0");
    client.ip(&["addr", "add", "10.251.0.1/24", "dev", "veth0"]);
    node.ip(&["addr", "add", "10.251.0.2/24", "dev", "veth0"]);

    let (ebpf, receiver) = node.run(|| {
        let mut ebpf = load();
        let xdp: &mut Xdp = ebpf
            .program_mut("hp_xdp")
            .expect("hp_xdp")
            .try_into()
            .unwrap();
        xdp.load().expect("verifier accepts hp_xdp");
        xdp.attach("veth0", XdpMode::default())
            .expect("attaching XDP to veth0");
        let _ = tc::qdisc_add_clsact("veth0");
        let ingress: &mut SchedClassifier = ebpf
            .program_mut("hp_tc_ingress")
            .expect("hp_tc_ingress")
            .try_into()
            .unwrap();
        ingress.load().expect("verifier accepts hp_tc_ingress");
        ingress
            .attach("veth0", TcAttachType::Ingress)
            .expect("attaching TC ingress to veth0");
        let receiver = UdpSocket::bind("10.251.0.2:9000").expect("binding the receiver");
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        (ebpf, receiver)
    });
    let xdp_before = stat(&ebpf, StatIndex::XdpSeen).packets;
    let tc_before = stat(&ebpf, StatIndex::TcIngressSeen).packets;

    client.run(|| {
        let sender = UdpSocket::bind("10.251.0.1:0").unwrap();
        for i in 0..PACKETS {
            sender
                .send_to(&i.to_be_bytes(), "10.251.0.2:9000")
                .expect("sending");
        }
    });
    let mut buf = [0u8; 64];
    for _ in 0..PACKETS {
        receiver
            .recv(&mut buf)
            .expect("every packet crosses the veth pair");
    }

    let xdp_seen = stat(&ebpf, StatIndex::XdpSeen).packets - xdp_before;
    let tc_seen = stat(&ebpf, StatIndex::TcIngressSeen).packets - tc_before;
    // Neighbour discovery may add a packet or two; the UDP packets must all be there.
    assert!(
        xdp_seen >= PACKETS,
        "XDP saw {xdp_seen} packets, sent {PACKETS}"
    );
    assert!(
        tc_seen >= PACKETS,
        "TC ingress saw {tc_seen} packets, sent {PACKETS}"
    );
    assert!(
        xdp_seen < PACKETS + 10 && tc_seen < PACKETS + 10,
        "counters count something else"
    );
}

#[test]
fn bpf_prog_test_run_returns_pass_and_counts_the_frame() {
    if !privileged::root_or_skip("bpf_prog_test_run_returns_pass") {
        return;
    }
    let mut ebpf = load();
    let src: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let dst: SocketAddr = "10.96.0.10:53".parse().unwrap();
    let frame = Frame::udp(src, dst, b"query").build();
    let mut out = vec![0u8; frame.len() + 64];

    let xdp: &mut Xdp = ebpf.program_mut("hp_xdp").unwrap().try_into().unwrap();
    xdp.load().unwrap();
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&frame);
    opts.data_out = Some(&mut out);
    let result = xdp.test_run(opts).expect("BPF_PROG_TEST_RUN on hp_xdp");
    assert_eq!(result.return_value, 2, "XDP_PASS");
    assert_eq!(
        &out[..result.data_size_out as usize],
        frame.as_slice(),
        "frame unchanged"
    );

    let tc: &mut SchedClassifier = ebpf
        .program_mut("hp_tc_ingress")
        .unwrap()
        .try_into()
        .unwrap();
    tc.load().unwrap();
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&frame);
    let result = tc
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN on hp_tc_ingress");
    assert_eq!(result.return_value, 3, "TC_ACT_PIPE");

    let xdp_stat = stat(&ebpf, StatIndex::XdpSeen);
    assert_eq!(xdp_stat.packets, 1);
    assert_eq!(xdp_stat.bytes, frame.len() as u64);
    assert_eq!(stat(&ebpf, StatIndex::TcIngressSeen).packets, 1);
}
