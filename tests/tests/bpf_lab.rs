//! The fast path on real traffic between network namespaces: the loader runs inside the
//! node's namespace (from a thread that entered it), attaches XDP/TC to real veths, pins
//! under a per-test bpffs path, and serves TCP and UDP to local and remote backends.
//!
//! There is no nftables in this lab (see `bpf_lab`): every exchange with a service address
//! that succeeds was translated by the fast path, and the counters say so too.
//!
//! Still to add once `proxy-agent apply` (nftables) can run in the lab: the same exchanges
//! with acceleration off must reach the same backends ("identical to acceleration off"), new
//! flows after demotion must be served by nftables, and UDP flows nftables started before a
//! promotion must stay with nftables on real conntrack.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use hybrid_proxy_tests::{
    bpf_harness::{chain, plan, plan_dual_stack},
    bpf_lab::{Connection, FastPathLab, Node, UdpFlow, tcp_once},
    privileged,
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use proxy_agent::{
    bpf::{
        AccelerationMode, FastPath, FastPathConfig, InterfaceWatcher, kernel, store::MapStore as _,
    },
    model::fixtures::{ServiceBuilder, SliceBuilder},
    plan::{ProxyPlan, ServicePortId},
};
use proxy_common::StatIndex;

const WEB: &str = "10.96.0.10:80";
const DNS: &str = "10.96.0.11:53";
const STICKY: &str = "10.96.0.12:80";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A pin path of this test, removed (with everything pinned there) when dropped.
struct Pin(PathBuf);

impl Pin {
    fn new(test: &str) -> Self {
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/hpt-{test}-{}",
            std::process::id()
        )))
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let _ = kernel::cleanup(&self.0);
    }
}

fn config(pin: &Pin, mode: AccelerationMode) -> FastPathConfig {
    FastPathConfig {
        mode,
        node_interfaces: vec!["eth0".into()],
        pin_path: pin.0.clone(),
        forwarding: proxy_agent::bpf::forwarding::ForwardingMode::parse(
            hybrid_proxy_tests::forwarding_under_test(),
        )
        .expect("a forwarding mode"),
        ..FastPathConfig::default()
    }
}

fn open(lab: &FastPathLab, config: &FastPathConfig) -> FastPath {
    lab.node.run(|| {
        FastPath::open(config, &["10.244.1.0/24".parse().unwrap()])
            .unwrap_or_else(|e| panic!("opening the fast path: {}", chain(&e)))
    })
}

fn apply(lab: &FastPathLab, fp: &mut FastPath, plan: &ProxyPlan, generation: u64) {
    let report = lab
        .node
        .run(|| fp.apply(plan, generation))
        .unwrap_or_else(|e| panic!("applying: {}", chain(&e)));
    println!("{report}");
}

fn service(name: &str, addr: &str, protocol: &str) -> ServiceBuilder {
    let a = sa(addr);
    ServiceBuilder::cluster_ip("default", name, &a.ip().to_string())
        .port("p", i32::from(a.port()))
        .protocol(protocol)
}

fn slice(name: &str, protocol: &str, pods: &[(std::net::Ipv4Addr, &str)]) -> EndpointSlice {
    let mut b = SliceBuilder::new("default", name).port_with_protocol("p", 8080, protocol);
    for (ip, node) in pods {
        b = b.endpoint(&ip.to_string(), node);
    }
    b.build()
}

fn id_of(plan: &ProxyPlan, name: &str) -> ServicePortId {
    plan.ports()
        .find(|(s, _)| s.name.name == name)
        .map(|(_, p)| p.id)
        .unwrap()
}

fn root(test: &str) -> bool {
    privileged::root_or_skip(test)
}

#[test]
fn clusterip_tcp_udp_and_affinity_to_local_and_remote_backends() {
    if !root("bpf_lab_clusterip") {
        return;
    }
    let mut lab = FastPathLab::new("fpc");
    lab.add_pod("c1", Node::A);
    lab.add_pod("c2", Node::A);
    let b1 = lab.add_pod("b1", Node::A);
    let b2 = lab.add_pod("b2", Node::B);
    lab.serve("b1");
    lab.serve("b2");
    let backends = [(b1, "node-a"), (b2, "node-b")];
    let services: Vec<Service> = vec![
        service("web", WEB, "TCP").build(),
        service("dns", DNS, "UDP").build(),
        service("sticky", STICKY, "TCP").affinity(Some(300)).build(),
    ];
    let p = plan(
        services,
        vec![
            slice("web", "TCP", &backends),
            slice("dns", "UDP", &backends),
            slice("sticky", "TCP", &backends),
        ],
    );
    let pin = Pin::new("clusterip");
    let mut fp = open(&lab, &config(&pin, AccelerationMode::All));
    apply(&lab, &mut fp, &p, 1);
    let attached: Vec<String> = fp.attachments().iter().map(ToString::to_string).collect();
    assert!(
        attached.iter().any(|a| a.starts_with("p-c1 tc ingress")),
        "{attached:?}"
    );

    let c1 = &lab.pod("c1").ns;
    let mut tcp_seen = BTreeSet::new();
    for port in 41000..41016 {
        let who = tcp_once(c1, Some(port), sa(WEB)).unwrap_or_else(|e| {
            panic!(
                "TCP to {WEB} from port {port}: {e}\n{}",
                fp.status().unwrap()
            )
        });
        tcp_seen.insert(who);
    }
    assert_eq!(tcp_seen, BTreeSet::from(["b1".to_owned(), "b2".to_owned()]));
    let mut udp_seen = BTreeSet::new();
    for port in 42000..42016 {
        let who = UdpFlow::open(c1, port, sa(DNS))
            .request()
            .unwrap_or_else(|e| panic!("UDP to {DNS} from port {port}: {e}"));
        udp_seen.insert(who);
    }
    assert_eq!(udp_seen, BTreeSet::from(["b1".to_owned(), "b2".to_owned()]));

    for client in ["c1", "c2"] {
        let ns = &lab.pod(client).ns;
        let chosen: BTreeSet<String> = (43000..43006)
            .map(|port| tcp_once(ns, Some(port), sa(STICKY)).unwrap())
            .collect();
        assert_eq!(chosen.len(), 1, "{client} with affinity went to {chosen:?}");
    }

    let status = fp.status().unwrap();
    println!("{status}");
    for name in ["web", "dns", "sticky"] {
        let c = status.counters.service(id_of(&p, name));
        assert!(c.fast_packets > 0, "{name} served by the fast path: {c:?}");
    }
    assert!(status.counters.stat(StatIndex::NewFlow).packets >= 16 + 16 + 12);
    assert!(status.counters.stat(StatIndex::ReplyTranslated).packets > 0);
    assert!(status.flows > 0);
}

#[test]
fn xdp_serves_nodeport_and_lb_ip_of_an_etp_local_service() {
    if !root("bpf_lab_xdp") {
        return;
    }
    let mut lab = FastPathLab::new("fpx");
    let b1 = lab.add_pod("b1", Node::A);
    let b2 = lab.add_pod("b2", Node::B);
    lab.serve("b1");
    lab.serve("b2");
    let svc = ServiceBuilder::cluster_ip("default", "edge", "10.96.0.20")
        .port("p", 80)
        .node_port(30080)
        .load_balancer(&["198.51.100.7"])
        .external_policy_local()
        .build();
    let p = plan(
        vec![svc],
        vec![slice("edge", "TCP", &[(b1, "node-a"), (b2, "node-b")])],
    );
    let pin = Pin::new("xdp");
    let mut fp = open(&lab, &config(&pin, AccelerationMode::All));
    apply(&lab, &mut fp, &p, 1);
    assert!(
        fp.attachments()
            .iter()
            .any(|a| a.interface == "eth0" && a.hook == kernel::Hook::Xdp),
        "{:?}",
        fp.attachments()
    );
    for dst in ["198.51.100.7:80", "192.168.1.10:30080"] {
        for _ in 0..5 {
            let who = tcp_once(&lab.external, None, sa(dst))
                .unwrap_or_else(|e| panic!("external TCP to {dst}: {e}"));
            assert_eq!(who, "b1", "eTP Local: the local endpoint");
        }
    }
    let status = fp.status().unwrap();
    println!("{status}");
    assert!(status.counters.service(id_of(&p, "edge")).fast_packets >= 10 * 3);
    assert!(status.counters.stat(StatIndex::XdpSeen).packets > 0);
    assert!(status.counters.stat(StatIndex::NewFlow).packets >= 10);
}

#[test]
fn established_flows_keep_their_backend_through_demotion_promotion_and_a_new_backend() {
    if !root("bpf_lab_consistency") {
        return;
    }
    let mut lab = FastPathLab::new("fpk");
    lab.add_pod("c1", Node::A);
    let b1 = lab.add_pod("b1", Node::A);
    let b2 = lab.add_pod("b2", Node::B);
    let b3 = lab.add_pod("b3", Node::A);
    for b in ["b1", "b2", "b3"] {
        lab.serve(b);
    }
    let plan_with = |pods: &[(std::net::Ipv4Addr, &str)]| {
        plan(
            vec![
                service("web", WEB, "TCP").build(),
                service("dns", DNS, "UDP").build(),
            ],
            vec![slice("web", "TCP", pods), slice("dns", "UDP", pods)],
        )
    };
    let two = plan_with(&[(b1, "node-a"), (b2, "node-b")]);
    let three = plan_with(&[(b1, "node-a"), (b2, "node-b"), (b3, "node-a")]);
    let pin = Pin::new("consistency");
    let mut fp = open(&lab, &config(&pin, AccelerationMode::All));
    apply(&lab, &mut fp, &two, 1);

    let c1 = &lab.pod("c1").ns;
    let mut conns = Vec::new();
    for port in 44000..44006 {
        let mut c = Connection::open(c1, Some(port), sa(WEB)).expect("connecting");
        let who = c.request().expect("first request");
        conns.push((c, who));
    }
    let udp: Vec<(UdpFlow, String)> = (45000..45006)
        .map(|port| {
            let f = UdpFlow::open(c1, port, sa(DNS));
            let who = f.request().expect("first datagram");
            (f, who)
        })
        .collect();
    let check = |conns: &mut Vec<(Connection, String)>, stage: &str| {
        for (c, who) in conns.iter_mut() {
            assert_eq!(
                &c.request().unwrap_or_else(|e| panic!("{stage}: {e}")),
                who,
                "{stage}"
            );
        }
        for (f, who) in &udp {
            assert_eq!(
                &f.request().unwrap_or_else(|e| panic!("{stage}: {e}")),
                who,
                "{stage}"
            );
        }
    };
    check(&mut conns, "promoted");

    // Demoted: no service entries, the flows go on from the connection table.
    fp.set_mode(AccelerationMode::Off);
    apply(&lab, &mut fp, &two, 2);
    assert_eq!(
        fp.status()
            .unwrap()
            .ports
            .iter()
            .filter(|p| p.any_accelerated())
            .count(),
        0
    );
    std::thread::sleep(Duration::from_millis(200));
    check(&mut conns, "demoted");

    // Promoted again with an unrelated backend added.
    fp.set_mode(AccelerationMode::All);
    apply(&lab, &mut fp, &three, 3);
    check(&mut conns, "re-promoted with a third backend");
    let status = fp.status().unwrap();
    assert!(status.counters.stat(StatIndex::FlowHit).packets >= 3 * 12);
}

#[test]
fn a_one_shot_apply_keeps_serving_and_a_restarted_agent_adopts_it() {
    if !root("bpf_lab_adopt") {
        return;
    }
    let mut lab = FastPathLab::new("fpa");
    lab.add_pod("c1", Node::A);
    let b1 = lab.add_pod("b1", Node::A);
    let b2 = lab.add_pod("b2", Node::B);
    lab.serve("b1");
    lab.serve("b2");
    let p = plan(
        vec![service("web", WEB, "TCP").build()],
        vec![slice("web", "TCP", &[(b1, "node-a"), (b2, "node-b")])],
    );
    let pin = Pin::new("adopt");
    let cfg = config(&pin, AccelerationMode::All);
    {
        let mut fp = open(&lab, &cfg);
        apply(&lab, &mut fp, &p, 7);
    }
    // The agent is gone; the pinned programs and maps keep serving.
    let c1 = &lab.pod("c1").ns;
    let mut conn = Connection::open(c1, Some(46000), sa(WEB)).expect("served after exit");
    let who = conn.request().unwrap();

    let mut fp = open(&lab, &cfg);
    let status = fp.status().unwrap();
    assert!(status.adopted, "{status}");
    assert_eq!(status.generation, 7, "generation kept");
    assert!(status.flows >= 2, "flows kept: {status}");
    let report = lab.node.run(|| fp.apply(&p, 8)).unwrap();
    assert!(
        report.writes.is_noop(),
        "adopted maps match the plan: {}",
        report.writes
    );
    assert_eq!(
        conn.request().unwrap(),
        who,
        "the flow survived the restart"
    );

    drop(fp);
    lab.node.run(|| kernel::cleanup(&pin.0)).unwrap();
    assert!(kernel::pinned_links(&pin.0).is_empty());
    assert!(!pin.0.join("maps").exists());
    assert!(
        tcp_once(c1, Some(46001), sa(WEB)).is_err(),
        "after cleanup nothing translates (and this lab has no nftables)"
    );
}

#[test]
fn new_pod_interfaces_are_attached_and_vanished_ones_forgotten() {
    if !root("bpf_lab_interfaces") {
        return;
    }
    let mut lab = FastPathLab::new("fpi");
    lab.add_pod("c1", Node::A);
    let b1 = lab.add_pod("b1", Node::A);
    lab.serve("b1");
    let p = plan(
        vec![service("web", WEB, "TCP").build()],
        vec![slice("web", "TCP", &[(b1, "node-a")])],
    );
    let pin = Pin::new("interfaces");
    let mut fp = open(&lab, &config(&pin, AccelerationMode::All));
    apply(&lab, &mut fp, &p, 1);
    let watcher = lab.node.run(InterfaceWatcher::open).expect("watcher");

    lab.add_pod("c2", Node::A);
    assert!(
        watcher.wait(Duration::from_secs(3)).unwrap(),
        "a change was reported"
    );
    let changes = lab.node.run(|| fp.sync_interfaces()).unwrap();
    assert_eq!(changes.attached, vec!["p-c2".to_owned()], "{changes:?}");
    let who = tcp_once(&lab.pod("c2").ns, None, sa(WEB)).expect("the new pod is served");
    assert_eq!(who, "b1");

    lab.remove_pod("c2");
    assert!(watcher.wait(Duration::from_secs(3)).unwrap());
    let changes = lab.node.run(|| fp.sync_interfaces()).unwrap();
    assert_eq!(changes.forgotten, vec!["p-c2".to_owned()], "{changes:?}");
    assert!(fp.attachments().iter().all(|a| a.interface != "p-c2"));
    assert!(
        kernel::pinned_links(&pin.0)
            .iter()
            .all(|(a, _)| a.interface != "p-c2")
    );
}

#[test]
fn pinned_maps_of_another_layout_are_rebuilt_not_adopted() {
    if !root("bpf_lab_layout") {
        return;
    }
    let ns = hybrid_proxy_tests::netns::Netns::new("fpl");
    let pin = Pin::new("layout");
    let cfg = FastPathConfig {
        mode: AccelerationMode::All,
        pod_interfaces: proxy_agent::bpf::PodInterfaces::Names(Vec::new()),
        pin_path: pin.0.clone(),
        ..FastPathConfig::default()
    };
    let open_here = || {
        ns.run(|| FastPath::open(&cfg, &[]))
            .unwrap_or_else(|e| panic!("opening: {}", chain(&e)))
    };
    let mut fp = open_here();
    let key = proxy_common::FlowKey::default();
    let value = proxy_common::FlowValue {
        owner: proxy_common::owner::NFTABLES,
        ..proxy_common::FlowValue::default()
    };
    fp.maps().v4().flows.put(key, value).unwrap();
    let mut meta = fp.maps().meta().unwrap();
    meta.layout_version = 999;
    fp.maps().set_meta(meta).unwrap();
    drop(fp);

    let mut fp = open_here();
    let status = fp.status().unwrap();
    assert!(!status.adopted, "{status}");
    let why = status.rebuilt.clone().expect("rebuilt");
    assert!(why.contains("v999"), "{why}");
    assert_eq!(status.layout_version, proxy_common::LAYOUT_VERSION);
    assert_eq!(status.flows, 0, "nothing of the old layout is read");
    drop(fp);
    let mut fp = open_here();
    assert!(
        fp.status().unwrap().adopted,
        "the rebuilt maps are adopted next time"
    );
}

#[test]
fn flows_nftables_started_stay_with_nftables_when_the_service_is_promoted() {
    if !root("bpf_lab_udp_promotion") {
        return;
    }
    let mut lab = FastPathLab::new("fpu");
    lab.add_pod("c1", Node::A);
    let b1 = lab.add_pod("b1", Node::A);
    let b2 = lab.add_pod("b2", Node::B);
    let b3 = lab.add_pod("b3", Node::A);
    for b in ["b1", "b2", "b3"] {
        lab.serve(b);
    }
    // Stand-in for the nftables path: DNAT the service address to b3, a pod that is not one of
    // the service's endpoints, so a flow the fast path took over would answer from b1 or b2.
    lab.node.exec_ok("nft", &["add table ip hpt"]);
    lab.node.exec_ok(
        "nft",
        &["add chain ip hpt pre { type nat hook prerouting priority dstnat; }"],
    );
    for rule in [
        format!("add rule ip hpt pre ip daddr 10.96.0.11 udp dport 53 dnat to {b3}:8080"),
        format!("add rule ip hpt pre ip daddr 10.96.0.10 tcp dport 80 dnat to {b3}:8080"),
    ] {
        lab.node.exec_ok("nft", &[&rule]);
    }
    let p = plan(
        vec![
            service("dns", DNS, "UDP").build(),
            service("web", WEB, "TCP").build(),
        ],
        vec![
            slice("dns", "UDP", &[(b1, "node-a"), (b2, "node-b")]),
            slice("web", "TCP", &[(b1, "node-a"), (b2, "node-b")]),
        ],
    );
    let pin = Pin::new("udp-promotion");
    let mut fp = open(&lab, &config(&pin, AccelerationMode::Off));
    apply(&lab, &mut fp, &p, 1);

    let c1 = &lab.pod("c1").ns;
    let old = UdpFlow::open(c1, 47000, sa(DNS));
    assert_eq!(old.request().unwrap(), "b3", "nftables serves it before");
    let mut old_tcp = Connection::open(c1, Some(47100), sa(WEB)).unwrap();
    assert_eq!(
        old_tcp.request().unwrap(),
        "b3",
        "nftables serves it before"
    );

    fp.set_mode(AccelerationMode::All);
    let report = lab.node.run(|| fp.apply(&p, 2)).unwrap();
    println!("{report}");
    assert_eq!(report.conntrack_error, None);
    assert!(report.nftables_owned_marked >= 2, "{report}");
    for _ in 0..5 {
        assert_eq!(
            old.request().unwrap(),
            "b3",
            "the old flow stays with nftables"
        );
        assert_eq!(
            old_tcp.request().unwrap(),
            "b3",
            "so does the old connection"
        );
    }
    let new = UdpFlow::open(c1, 47001, sa(DNS)).request().unwrap();
    assert!(
        new == "b1" || new == "b2",
        "a new flow takes the fast path: {new}"
    );
    let new = tcp_once(c1, Some(47101), sa(WEB)).unwrap();
    assert!(
        new == "b1" || new == "b2",
        "a new connection takes the fast path: {new}"
    );
    let status = fp.status().unwrap();
    assert!(status.counters.stat(StatIndex::NftablesOwned).packets >= 5);
}

/// `web6` (TCP, node port 30080, eTP Local) and `dns6` (UDP), dual-stack, on `b1` (node-a)
/// and `b2` (node-b).
fn ipv6_plan(lab: &FastPathLab, b1: std::net::Ipv4Addr, b2: std::net::Ipv4Addr) -> ProxyPlan {
    let v6 = |name: &str| lab.pod(name).ip6.expect("IPv6 enabled").to_string();
    let dual = |name: &str, vips: &str, port: i32, protocol: &str| {
        ServiceBuilder::cluster_ip("default", name, vips)
            .port("p", port)
            .protocol(protocol)
            .with_spec(|s| {
                s.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
                s.ip_family_policy = Some("RequireDualStack".into());
            })
    };
    let slice6 = |name: &str, protocol: &str| {
        SliceBuilder::new("default", name)
            .name(&format!("{name}-v6"))
            .ipv6()
            .port_with_protocol("p", 8080, protocol)
            .endpoint(&v6("b1"), "node-a")
            .endpoint(&v6("b2"), "node-b")
            .build()
    };
    let backends = [(b1, "node-a"), (b2, "node-b")];
    plan_dual_stack(
        vec![
            dual("web6", "10.96.0.30,fd00:96::30", 80, "TCP")
                .node_port(30080)
                .external_policy_local()
                .build(),
            dual("dns6", "10.96.0.31,fd00:96::31", 53, "UDP").build(),
        ],
        vec![
            slice("web6", "TCP", &backends),
            slice6("web6", "TCP"),
            slice("dns6", "UDP", &backends),
            slice6("dns6", "UDP"),
        ],
    )
}

#[test]
fn ipv6_clusterip_and_nodeport_are_served_by_the_fast_path() {
    if !root("bpf_lab_ipv6") {
        return;
    }
    let mut lab = FastPathLab::new("fp6");
    lab.add_pod("c1", Node::A);
    let b1 = lab.add_pod("b1", Node::A);
    let b2 = lab.add_pod("b2", Node::B);
    lab.enable_ipv6();
    lab.serve("b1");
    lab.serve("b2");
    let p = ipv6_plan(&lab, b1, b2);
    let pin = Pin::new("ipv6");
    let mut fp = open(&lab, &config(&pin, AccelerationMode::All));
    apply(&lab, &mut fp, &p, 1);

    // From a pod to the IPv6 ClusterIP: local and remote backends, TCP and UDP. Nothing
    // but the fast path knows these addresses in the lab, so every answer proves it.
    let c1 = &lab.pod("c1").ns;
    // The lab's IPv6 itself: straight to each backend.
    for b in ["b1", "b2"] {
        let to = SocketAddr::new(lab.pod(b).ip6.unwrap().into(), 8080);
        let who = tcp_once(c1, None, to)
            .unwrap_or_else(|e| panic!("pod TCP straight to {to}: {e}\n{}", fp.status().unwrap()));
        assert_eq!(who, b);
    }
    let mut answered = BTreeSet::new();
    for _ in 0..12 {
        let who = tcp_once(c1, None, sa("[fd00:96::30]:80")).unwrap_or_else(|e| {
            panic!(
                "pod TCP to the IPv6 ClusterIP: {e}\n{}",
                fp.status().unwrap()
            )
        });
        answered.insert(who);
    }
    assert_eq!(
        answered,
        ["b1", "b2"].map(String::from).into(),
        "both backends"
    );
    let mut conn = Connection::open(c1, None, sa("[fd00:96::30]:80")).unwrap();
    let first = conn.request().unwrap();
    for _ in 0..5 {
        assert_eq!(
            conn.request().unwrap(),
            first,
            "a connection keeps its backend"
        );
    }
    let mut answered = BTreeSet::new();
    for port in 0..12u16 {
        let flow = UdpFlow::open(c1, 41000 + port, sa("[fd00:96::31]:53"));
        // `request` checks the answer comes from the ClusterIP: reverse translation.
        answered.insert(
            flow.request()
                .unwrap_or_else(|e| panic!("pod UDP to the IPv6 ClusterIP: {e}")),
        );
    }
    assert_eq!(
        answered,
        ["b1", "b2"].map(String::from).into(),
        "both backends"
    );

    // From outside to the node port on the node's IPv6 address: XDP, the local endpoint.
    for _ in 0..5 {
        let who = tcp_once(&lab.external, None, sa("[fd00:1::10]:30080"))
            .unwrap_or_else(|e| panic!("external TCP to the IPv6 node port: {e}"));
        assert_eq!(who, "b1", "eTP Local: the local endpoint");
    }

    let status = fp.status().unwrap();
    println!("{status}");
    assert!(
        status.counters.service(id_of(&p, "web6")).fast_packets >= (12 + 1 + 5) * 3,
        "{status}"
    );
    assert!(status.counters.service(id_of(&p, "dns6")).fast_packets >= 12 * 2);
    assert!(status.counters.stat(StatIndex::NewFlow).packets >= 12 + 1 + 12 + 5);
    assert!(status.counters.stat(StatIndex::ReplyTranslated).packets >= 12 * 2);
    let flows6 = fp.maps().v6().flows.entries().unwrap();
    assert!(
        !flows6.is_empty(),
        "the flows are in the IPv6 connection table"
    );
    assert!(
        fp.maps().v4().flows.entries().unwrap().is_empty(),
        "no IPv4 flow took part"
    );
}
