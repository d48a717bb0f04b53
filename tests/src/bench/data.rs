//! Data plane: the namespace lab ([`Lab`]) with a client pod and two backend pods on
//! node-a, served first through nftables alone and then through the eBPF fast path
//! (`acceleration.mode: all`), with a few Services and with 10,000 loaded.
//!
//! - new TCP connections per second from the client pod to a ClusterIP (connect, one
//!   request and reply, close);
//! - UDP requests and replies per second to a ClusterIP, one flow per client thread;
//! - packets per second arriving on node-a's `eth0` for a LoadBalancer IP with
//!   `externalTrafficPolicy: Local` (the XDP path), injected with live frames
//!   ([`super::xdp_live`]) and delivered to a pod;
//! - the programs' cost per packet (`BPF_PROG_TEST_RUN`), with 1 and 10,000 services.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::{Map, MapData, PerCpuArray};
use proxy_common::{Counter, StatIndex, map_names};
use serde::Serialize;

use super::{
    Options,
    load::{self, Rate, Servers, Windows},
    process::{self, Measure},
    xdp_live::{self, LiveRate},
};
use crate::lab::{EXTERNAL_IP, Lab, NODE_A, NODE_FLAGS, On};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TCP_PORT: u16 = 80;
const UDP_PORT: u16 = 53;
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const LB_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
const SINK_PORT: u16 = 9000;
/// The Services under test; the rest of a larger count are fillers.
const UNDER_TEST: usize = 2;

/// Which path served a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServedBy {
    Nftables,
    FastPath,
}

impl ServedBy {
    pub fn label(self) -> &'static str {
        match self {
            Self::Nftables => "nftables",
            Self::FastPath => "fast path",
        }
    }
}

/// One path at one Service count.
#[derive(Clone, Debug, Serialize)]
pub struct PathRun {
    pub path: ServedBy,
    pub services: usize,
    pub tcp_connections: Rate,
    pub udp_requests: Rate,
    pub xdp_packets: LiveRate,
    /// The same frames sent to the backend pod's own address instead of the Service's, with
    /// our tables loaded: what conntrack, our filter chains and forwarding cost without any
    /// translation (nftables runs only).
    pub xdp_direct_to_pod: Option<LiveRate>,
    /// Changes of the fast path's counters during the run (fast path only): how many flows
    /// it served and whether any fell back to nftables.
    pub fast_path_counters: BTreeMap<String, u64>,
}

/// One program case of [`proxy_agent::bpf::bench::prog_cost`].
#[derive(Clone, Debug, Serialize)]
pub struct ProgCostRow {
    pub program: String,
    pub case: String,
    pub services: usize,
    pub ns_per_packet: f64,
}

/// Everything the data plane measured.
#[derive(Clone, Debug, Serialize)]
pub struct DataResult {
    pub client_threads: usize,
    pub server_threads_per_pod: usize,
    /// Each figure is the best of this many windows of `seconds_per_window`.
    pub windows: usize,
    pub seconds_per_window: f64,
    /// Frames sent to the backend pod's own address before any table exists: the node's
    /// forwarding alone (no conntrack, no nftables), the floor for the XDP-path figures.
    pub xdp_direct_no_tables: LiveRate,
    pub runs: Vec<PathRun>,
    pub prog_cost: Vec<ProgCostRow>,
}

fn best<T: Clone>(a: &mut T, b: &T, rate: fn(&T) -> f64) {
    if rate(b) > rate(a) {
        *a = b.clone();
    }
}

impl PathRun {
    /// Keeps the best of each figure and adds up the counters.
    fn merge(&mut self, other: Self) {
        best(&mut self.tcp_connections, &other.tcp_connections, |r| {
            r.per_second
        });
        best(&mut self.udp_requests, &other.udp_requests, |r| {
            r.per_second
        });
        best(&mut self.xdp_packets, &other.xdp_packets, |r| r.per_second);
        match (&mut self.xdp_direct_to_pod, other.xdp_direct_to_pod) {
            (Some(a), Some(b)) => best(a, &b, |r| r.per_second),
            (mine, theirs) => {
                if mine.is_none() {
                    *mine = theirs;
                }
            }
        }
        for (k, v) in other.fast_path_counters {
            *self.fast_path_counters.entry(k).or_insert(0) += v;
        }
    }
}

impl DataResult {
    pub fn run(&self, path: ServedBy, services: usize) -> Option<&PathRun> {
        self.runs
            .iter()
            .find(|r| r.path == path && r.services == services)
    }
}

fn manifests(lab: &Lab, services: usize) -> String {
    let ip = |pod: &str| lab.pod(pod).ip;
    let mut y = String::with_capacity(services * 420);
    let _ = write!(
        y,
        "apiVersion: v1\nkind: Service\nmetadata: {{name: rr, namespace: default}}\n\
         spec: {{clusterIP: {CLUSTER_IP}, ports: [{{name: tcp, port: {TCP_PORT}, targetPort: {BACKEND_PORT}}}, \
         {{name: udp, port: {UDP_PORT}, protocol: UDP, targetPort: {BACKEND_PORT}}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: rr-1, namespace: default, labels: {{kubernetes.io/service-name: rr}}}}\n\
         addressType: IPv4\nports: [{{name: tcp, port: {BACKEND_PORT}}}, {{name: udp, port: {BACKEND_PORT}, protocol: UDP}}]\n\
         endpoints: [{{addresses: [{}], nodeName: {NODE_A}}}, {{addresses: [{}], nodeName: {NODE_A}}}]\n---\n",
        ip("srv-a"),
        ip("srv-b"),
    );
    let _ = write!(
        y,
        "apiVersion: v1\nkind: Service\nmetadata: {{name: edge, namespace: default}}\n\
         spec: {{type: LoadBalancer, clusterIP: 10.96.0.20, externalTrafficPolicy: Local, healthCheckNodePort: 32090, \
         ports: [{{name: sink, port: {LB_PORT}, protocol: UDP, nodePort: 30090, targetPort: {SINK_PORT}}}]}}\n\
         status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}}}]}}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: edge-1, namespace: default, labels: {{kubernetes.io/service-name: edge}}}}\n\
         addressType: IPv4\nports: [{{name: sink, port: {SINK_PORT}, protocol: UDP}}]\n\
         endpoints: [{{addresses: [{}], nodeName: {NODE_A}}}]\n---\n",
        ip("srv-a"),
    );
    // Fillers: ClusterIPs in 10.100.0.0/16 (inside the Service CIDR), two endpoints each on
    // node-b, in 10.244.16.0 and up (clear of the lab's pods).
    for i in 0..services.saturating_sub(UNDER_TEST) {
        let n = u32::try_from(i).expect("small");
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + n + 1);
        let ep = |k: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 16, 0)) + 2 * n + k + 1);
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: f-{i}, namespace: fill}}\n\
             spec: {{clusterIP: {vip}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: f-{i}-1, namespace: fill, labels: {{kubernetes.io/service-name: f-{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
             endpoints: [{{addresses: [{}], nodeName: node-b}}, {{addresses: [{}], nodeName: node-b}}]\n---\n",
            ep(0),
            ep(1),
        );
    }
    y
}

/// Runs `proxy-agent <command>` for node-a from a thread inside it (not `ip netns exec`,
/// which would hide the host's bpffs where the fast path pins its links).
fn agent(
    lab: &Lab,
    opts: &Options,
    command: &str,
    config: Option<&Path>,
) -> anyhow::Result<String> {
    let mut cmd = Command::new(&opts.agent);
    cmd.arg(command);
    if command != "cleanup" {
        cmd.arg("--manifests").arg(lab.manifests());
    }
    cmd.args(NODE_FLAGS);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let done = process::run(&lab.node, cmd, None, Measure::default())?
        .ok(&format!("proxy-agent {command}"))?;
    Ok(done.stderr)
}

/// The fast path's global counters, summed over CPUs.
fn fast_path_stats(pin: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let data = MapData::from_pin(pin.join("maps").join(map_names::STATS))
        .context("opening the pinned STATS map")?;
    let stats: PerCpuArray<MapData, Counter> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).context("the STATS map")?;
    let mut out = BTreeMap::new();
    for s in StatIndex::ALL {
        let values = stats.get(&(s as u32), 0).context("reading STATS")?;
        out.insert(s.name().to_owned(), values.iter().map(|c| c.packets).sum());
    }
    Ok(out)
}

fn measure_path(
    lab: &Lab,
    opts: &Options,
    path: ServedBy,
    services: usize,
    pin: &Path,
    run_index: u16,
    w: Windows,
) -> anyhow::Result<PathRun> {
    let fast = path == ServedBy::FastPath;
    // Each run starts with an empty connection-tracking table.
    let _ = lab.node.exec("conntrack", &["-F"]);
    let before = if fast {
        fast_path_stats(pin)?
    } else {
        BTreeMap::new()
    };
    let client = &lab.pod("client").ns;
    let tcp = load::tcp_connections(
        client,
        SocketAddr::from((CLUSTER_IP, TCP_PORT)),
        opts.client_threads,
        w,
    );
    let udp = load::udp_requests(
        client,
        SocketAddr::from((CLUSTER_IP, UDP_PORT)),
        opts.client_threads,
        w,
    );
    let (_, node_mac, _) = xdp_live::link(&lab.node, "eth0")?;
    let external: Ipv4Addr = EXTERNAL_IP.parse().expect("an address");
    // A source port of its own per run: a flow nftables saw first stays with nftables.
    let frame = xdp_live::frame(node_mac, (external, 20000 + run_index), (LB_IP, LB_PORT));
    let sink = &lab.pod("srv-a");
    let xdp = xdp_live::run(&lab.node, "eth0", fast.then_some(pin), &frame, &sink.ns, w)?;
    let direct = if fast {
        None
    } else {
        let frame = xdp_live::frame(
            node_mac,
            (external, 20000 + run_index),
            (sink.ip, SINK_PORT),
        );
        Some(xdp_live::run(&lab.node, "eth0", None, &frame, &sink.ns, w)?)
    };
    let mut counters = BTreeMap::new();
    if fast {
        let after = fast_path_stats(pin)?;
        for (k, v) in after {
            let d = v.saturating_sub(before.get(&k).copied().unwrap_or(0));
            if d > 0 {
                counters.insert(k, d);
            }
        }
        if counters.get("new_flow").copied().unwrap_or(0) == 0 {
            bail!("the fast path started no flow: traffic went through nftables ({counters:?})");
        }
    }
    for (what, failed, done) in [
        ("TCP", tcp.failed, tcp.completed),
        ("UDP", udp.failed, udp.completed),
    ] {
        if done == 0 {
            bail!(
                "{what} through {} got no replies ({failed} failures)",
                path.label()
            );
        }
    }
    Ok(PathRun {
        path,
        services,
        tcp_connections: tcp,
        udp_requests: udp,
        xdp_packets: xdp,
        xdp_direct_to_pod: direct,
        fast_path_counters: counters,
    })
}

/// One TCP and one UDP exchange between the client and each backend pod, with patience:
/// the pods reach their node through a proxy-ARP gateway, whose first answer the kernel
/// delays by up to `proxy_delay`, which no measurement should include.
fn prime(lab: &Lab) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    for pod in ["srv-a", "srv-b"] {
        let dst = SocketAddr::from((lab.pod(pod).ip, BACKEND_PORT));
        lab.pod("client").ns.run(|| -> anyhow::Result<()> {
            let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(5))
                .with_context(|| format!("connecting to {pod} directly"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"x\n")?;
            let mut buf = [0u8; 16];
            let _ = s.read(&mut buf)?;
            let u = std::net::UdpSocket::bind("0.0.0.0:0")?;
            u.connect(dst)?;
            u.set_read_timeout(Some(Duration::from_millis(500)))?;
            for _ in 0..10 {
                u.send(b"x")?;
                if u.recv(&mut buf).is_ok() {
                    return Ok(());
                }
            }
            bail!("no UDP reply from {pod}")
        })?;
    }
    Ok(())
}

/// The lab: a client pod and two backend pods on node-a, servers in the backends, and a
/// sink for the XDP-path frames in the first.
fn build_lab(opts: &Options) -> (Lab, Servers) {
    let mut lab = Lab::new("bench");
    lab.add_pod("client", On::NodeA);
    lab.add_pod("srv-a", On::NodeA);
    lab.add_pod("srv-b", On::NodeA);
    // Short-lived flows end quickly in conntrack (its own namespace only), so that a long
    // run does not fill the table.
    for key in [
        "nf_conntrack_tcp_timeout_close",
        "nf_conntrack_tcp_timeout_time_wait",
    ] {
        let _ = lab
            .node
            .exec("sysctl", &["-qw", &format!("net.netfilter.{key}=1")]);
    }
    let mut servers = Servers::new();
    for pod in ["srv-a", "srv-b"] {
        let p = lab.pod(pod);
        servers.serve(
            &p.ns,
            SocketAddr::from((p.ip, BACKEND_PORT)),
            opts.server_threads,
        );
    }
    let srv_a = lab.pod("srv-a");
    servers.sink(&srv_a.ns, SocketAddr::from((srv_a.ip, SINK_PORT)));
    (lab, servers)
}

/// What the rounds measured.
#[derive(Default)]
struct Measured {
    runs: Vec<PathRun>,
    floor: LiveRate,
}

/// Both paths at every Service count, taking turns (see [`measure`]).
fn rounds(
    lab: &mut Lab,
    opts: &Options,
    pin: &Path,
    accel: &Path,
    m: &mut Measured,
) -> anyhow::Result<()> {
    prime(lab)?;
    let (_, node_mac, _) = xdp_live::link(&lab.node, "eth0")?;
    let external: Ipv4Addr = EXTERNAL_IP.parse().expect("an address");
    let sink = lab.pod("srv-a").ip;
    let floor_frame = xdp_live::frame(node_mac, (external, 19999), (sink, SINK_PORT));
    let one = Windows {
        windows: 1,
        ..opts.windows()
    };
    let rounds = opts.data_windows.max(1);
    let mut run_index = 0;
    for &services in &opts.data_services {
        let services = services.max(UNDER_TEST);
        lab.write_manifests(&manifests(lab, services));
        for round in 1..=rounds {
            eprintln!("bench: data plane, {services} Services, round {round} of {rounds}");
            let f = xdp_live::run(
                &lab.node,
                "eth0",
                None,
                &floor_frame,
                &lab.pod("srv-a").ns,
                one,
            )?;
            if f.per_second > m.floor.per_second {
                m.floor = f;
            }
            for path in [ServedBy::Nftables, ServedBy::FastPath] {
                if path == ServedBy::FastPath {
                    let log = agent(lab, opts, "apply", Some(accel))?;
                    if !log.contains("fast path (all)") {
                        bail!("the fast path did not start:\n{log}");
                    }
                } else {
                    agent(lab, opts, "apply", None)?;
                }
                run_index += 1;
                let run = measure_path(lab, opts, path, services, pin, run_index, one)?;
                match m
                    .runs
                    .iter_mut()
                    .find(|r| r.path == path && r.services == services)
                {
                    Some(best) => best.merge(run),
                    None => m.runs.push(run),
                }
            }
            agent(lab, opts, "cleanup", Some(accel))?;
        }
    }
    Ok(())
}

/// Builds the lab, measures both paths at each Service count, removes the lab, then
/// measures the programs' cost per packet.
///
/// The paths take turns, one window each per round, so that a disturbance from other work
/// on the machine falls on both alike; each figure keeps its best window.
pub fn measure(opts: &Options) -> anyhow::Result<DataResult> {
    let (mut lab, servers) = build_lab(opts);
    let pin = PathBuf::from(format!("/sys/fs/bpf/hpb-bench-{}", std::process::id()));
    let accel = lab.manifests().with_extension("accel.yaml");
    std::fs::write(
        &accel,
        format!(
            "acceleration:\n  mode: all\n  interfaces: [eth0]\n  pinPath: {}\n",
            pin.display()
        ),
    )?;
    let mut m = Measured::default();
    let result = rounds(&mut lab, opts, &pin, &accel, &mut m);
    // Whatever happened, nothing stays pinned.
    let _ = agent(&lab, opts, "cleanup", Some(&accel));
    let _ = std::fs::remove_file(&accel);
    drop(servers);
    drop(lab);
    result?;

    let prog_cost = prog_cost(opts)?;
    Ok(DataResult {
        client_threads: opts.client_threads,
        server_threads_per_pod: opts.server_threads,
        windows: opts.data_windows,
        seconds_per_window: opts.data_seconds.as_secs_f64(),
        xdp_direct_no_tables: m.floor,
        runs: m.runs,
        prog_cost,
    })
}

/// The programs' cost per packet at each service count, measured in turn on datapaths
/// loaded side by side ([`proxy_agent::bpf::bench::prog_costs`]).
fn prog_cost(opts: &Options) -> anyhow::Result<Vec<ProgCostRow>> {
    eprintln!(
        "bench: per-packet cost with {:?} services",
        opts.cost_services
    );
    let rows = proxy_agent::bpf::bench::prog_costs(
        &opts.cost_services,
        opts.cost_repeat,
        opts.cost_rounds,
        u32::try_from(opts.cost_alternations).unwrap_or(u32::MAX),
    )
    .map_err(|e| anyhow::anyhow!("{}", crate::bpf_harness::chain(&e)))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            #[expect(clippy::cast_precision_loss, reason = "nanoseconds per packet")]
            let ns = r.per_packet.as_nanos() as f64;
            ProgCostRow {
                ns_per_packet: ns,
                services: r.services,
                program: r.program.to_owned(),
                case: r.case.to_owned(),
            }
        })
        .collect())
}
