//! Data plane: the namespace lab ([`Lab`]) with a client pod and two backend pods on
//! node-a, served in turn through nftables alone, through the eBPF fast path
//! (`acceleration.mode: all`) with `forwarding: stack` and with `forwarding: redirect`, and
//! pod to pod with no Service and no tables at all (the limit a path that skips the node's
//! stack should reach), with a few Services and with 10,000 loaded.
//!
//! - new TCP connections per second from the client pod to a ClusterIP (connect, one
//!   request and reply, close);
//! - TCP requests and replies per second on open connections (one per client thread);
//! - UDP requests and replies per second to a ClusterIP, one flow per client thread;
//! - the machine's CPU time per connection and per request;
//! - the same with a third-party client and server ([`super::wrk`]: wrk against nginx),
//!   keep-alive and a new connection per request;
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
    load::{self, Load, Rate, Servers, Windows},
    process::{self, Measure},
    wrk::{self, HTTP_PORT, Nginx, WrkRate},
    xdp_live::{self, LiveRate},
};
use crate::lab::{EXTERNAL_IP, Lab, NODE_A, NODE_FLAGS, On};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TCP_PORT: u16 = 80;
const UDP_PORT: u16 = 53;
/// The Service port of nginx (targets [`HTTP_PORT`]).
const HTTP_SERVICE_PORT: u16 = 81;
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
    /// The fast path with `forwarding: stack`: translated, then the node's stack.
    FastStack,
    /// The fast path with `forwarding: redirect` (the default where nothing needs the
    /// stack): the node's stack never sees the flows.
    FastPath,
    /// The client pod to the backend pods' own addresses, no Service and no tables.
    Direct,
}

impl ServedBy {
    /// Every path, in the order a round measures them.
    pub const ALL: [Self; 4] = [
        Self::Nftables,
        Self::FastStack,
        Self::FastPath,
        Self::Direct,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Nftables => "nftables",
            Self::FastStack => "fast path, stack",
            Self::FastPath => "fast path, redirect",
            Self::Direct => "pod to pod, no tables",
        }
    }
}

/// wrk against nginx on one path.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WrkRun {
    /// HTTP keep-alive: requests on open connections.
    pub keep_alive: WrkRate,
    /// `Connection: close`: a new connection per request.
    pub new_connections: WrkRate,
    /// Every round's keep-alive and new-connection figures.
    pub keep_alive_samples: Vec<f64>,
    pub new_connection_samples: Vec<f64>,
}

/// One path at one Service count.
#[derive(Clone, Debug, Serialize)]
pub struct PathRun {
    pub path: ServedBy,
    pub services: usize,
    pub tcp_connections: Rate,
    /// Requests and replies on open TCP connections.
    pub tcp_requests: Rate,
    pub udp_requests: Rate,
    /// The XDP path's packets (nftables and the fast path only; zero for the others).
    pub xdp_packets: LiveRate,
    /// The same frames sent to the backend pod's own address instead of the Service's, with
    /// our tables loaded: what conntrack, our filter chains and forwarding cost without any
    /// translation (nftables runs only).
    pub xdp_direct_to_pod: Option<LiveRate>,
    /// Changes of the fast path's counters during the run (fast path only): how many flows
    /// it served and whether any fell back to nftables.
    pub fast_path_counters: BTreeMap<String, u64>,
    /// wrk against nginx (at the fewest Services only).
    pub wrk: Option<WrkRun>,
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
    /// Each figure is the median of this many rounds of `seconds_per_window` (the paths
    /// taking turns, one window each per round; XDP figures keep the best window).
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
    /// Takes the median of each load's rounds (the best of the XDP path's) and adds up the
    /// counters.
    fn merge(&mut self, other: Self) {
        self.tcp_connections.merge(&other.tcp_connections);
        self.tcp_requests.merge(&other.tcp_requests);
        self.udp_requests.merge(&other.udp_requests);
        if let (Some(a), Some(b)) = (&mut self.wrk, &other.wrk) {
            a.keep_alive_samples.extend(&b.keep_alive_samples);
            a.new_connection_samples.extend(&b.new_connection_samples);
            a.keep_alive.requests_per_second = load::median(&a.keep_alive_samples);
            a.new_connections.requests_per_second = load::median(&a.new_connection_samples);
            a.keep_alive.errors += b.keep_alive.errors;
            a.new_connections.errors += b.new_connections.errors;
        } else if self.wrk.is_none() {
            self.wrk = other.wrk;
        }
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
         {{name: udp, port: {UDP_PORT}, protocol: UDP, targetPort: {BACKEND_PORT}}}, \
         {{name: http, port: {HTTP_SERVICE_PORT}, targetPort: {HTTP_PORT}}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: rr-1, namespace: default, labels: {{kubernetes.io/service-name: rr}}}}\n\
         addressType: IPv4\nports: [{{name: tcp, port: {BACKEND_PORT}}}, {{name: udp, port: {BACKEND_PORT}, protocol: UDP}}, \
         {{name: http, port: {HTTP_PORT}}}]\n\
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

/// The addresses a path's load goes to: the Service, or both backend pods directly.
fn targets(lab: &Lab, path: ServedBy, service: SocketAddr, backend_port: u16) -> Vec<SocketAddr> {
    if path == ServedBy::Direct {
        ["srv-a", "srv-b"]
            .iter()
            .map(|p| SocketAddr::from((lab.pod(p).ip, backend_port)))
            .collect()
    } else {
        vec![service]
    }
}

/// wrk against nginx over `path`: keep-alive, then a new connection per request.
fn wrk_run(lab: &Lab, opts: &Options, path: ServedBy) -> anyhow::Result<WrkRun> {
    let http = targets(
        lab,
        path,
        SocketAddr::from((CLUSTER_IP, HTTP_SERVICE_PORT)),
        HTTP_PORT,
    );
    let seconds = opts.data_seconds.as_secs().max(1);
    let client = &lab.pod("client").ns;
    let keep_alive = wrk::run(client, &http, 2, 16, seconds, false)?;
    let new_connections = wrk::run(client, &http, 2, 16, seconds, true)?;
    Ok(WrkRun {
        keep_alive_samples: vec![keep_alive.requests_per_second],
        new_connection_samples: vec![new_connections.requests_per_second],
        keep_alive,
        new_connections,
    })
}

/// One path's turn in a round.
struct Turn {
    /// Numbers the XDP frames' source port (a flow nftables saw first stays with it).
    run_index: u16,
    windows: Windows,
    /// Also run wrk against nginx.
    wrk: bool,
}

fn measure_path(
    lab: &Lab,
    opts: &Options,
    path: ServedBy,
    services: usize,
    pin: &Path,
    turn: &Turn,
) -> anyhow::Result<PathRun> {
    let (run_index, w) = (turn.run_index, turn.windows);
    let fast = matches!(path, ServedBy::FastPath | ServedBy::FastStack);
    // Each run starts with an empty connection-tracking table.
    let _ = lab.node.exec("conntrack", &["-F"]);
    let before = if fast {
        fast_path_stats(pin)?
    } else {
        BTreeMap::new()
    };
    let client = &lab.pod("client").ns;
    let tcp_dst = targets(
        lab,
        path,
        SocketAddr::from((CLUSTER_IP, TCP_PORT)),
        BACKEND_PORT,
    );
    let udp_dst = targets(
        lab,
        path,
        SocketAddr::from((CLUSTER_IP, UDP_PORT)),
        BACKEND_PORT,
    );
    let threads = opts.client_threads;
    let tcp = load::drive(client, &tcp_dst, threads, w, Load::TcpConnections);
    let rr = load::drive(client, &tcp_dst, threads, w, Load::TcpRequests);
    let udp = load::drive(client, &udp_dst, threads, w, Load::UdpRequests);
    let wrk = if turn.wrk {
        Some(wrk_run(lab, opts, path)?)
    } else {
        None
    };
    let mut xdp = LiveRate::default();
    let mut direct = None;
    if matches!(path, ServedBy::Nftables | ServedBy::FastPath) {
        let (_, node_mac, _) = xdp_live::link(&lab.node, "eth0")?;
        let external: Ipv4Addr = EXTERNAL_IP.parse().expect("an address");
        // A source port of its own per run: a flow nftables saw first stays with nftables.
        let frame = xdp_live::frame(node_mac, (external, 20000 + run_index), (LB_IP, LB_PORT));
        let sink = &lab.pod("srv-a");
        xdp = xdp_live::run(&lab.node, "eth0", fast.then_some(pin), &frame, &sink.ns, w)?;
        if path == ServedBy::Nftables {
            let frame = xdp_live::frame(
                node_mac,
                (external, 20000 + run_index),
                (sink.ip, SINK_PORT),
            );
            direct = Some(xdp_live::run(&lab.node, "eth0", None, &frame, &sink.ns, w)?);
        }
    }
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
        let redirected = counters.get("redirected").copied().unwrap_or(0);
        match path {
            ServedBy::FastPath if redirected == 0 => {
                bail!("forwarding redirect redirected nothing ({counters:?})")
            }
            ServedBy::FastStack if redirected != 0 => {
                bail!("forwarding stack redirected packets ({counters:?})")
            }
            _ => {}
        }
    }
    for (what, failed, done) in [
        ("TCP connections", tcp.failed, tcp.completed),
        ("TCP requests", rr.failed, rr.completed),
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
        tcp_requests: rr,
        udp_requests: udp,
        xdp_packets: xdp,
        xdp_direct_to_pod: direct,
        fast_path_counters: counters,
        wrk,
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

/// The lab: a client pod and two backend pods on node-a, servers (ours, and nginx when it
/// is installed) in the backends, and a sink for the XDP-path frames in the first.
fn build_lab(opts: &Options) -> (Lab, Servers, Vec<Nginx>) {
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
    let mut nginx = Vec::new();
    let third_party = which("nginx") && which("wrk");
    if !third_party {
        eprintln!("bench: nginx or wrk is not installed; the wrk figures are skipped");
    }
    for pod in ["srv-a", "srv-b"] {
        let p = lab.pod(pod);
        servers.serve(
            &p.ns,
            SocketAddr::from((p.ip, BACKEND_PORT)),
            opts.server_threads,
        );
        if third_party {
            match Nginx::start(&p.ns, SocketAddr::from((p.ip, HTTP_PORT))) {
                Ok(n) => nginx.push(n),
                Err(e) => eprintln!("bench: nginx in {pod}: {e:#}; the wrk figures are skipped"),
            }
        }
    }
    if nginx.len() != 2 {
        nginx.clear();
    }
    let srv_a = lab.pod("srv-a");
    servers.sink(&srv_a.ns, SocketAddr::from((srv_a.ip, SINK_PORT)));
    (lab, servers, nginx)
}

/// Whether a program is on `PATH`.
fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// What the rounds measured.
#[derive(Default)]
struct Measured {
    runs: Vec<PathRun>,
    floor: LiveRate,
}

/// The agent configurations of the fast path's two forwarding modes.
struct Configs {
    redirect: PathBuf,
    stack: PathBuf,
}

/// Every path at every Service count, taking turns (see [`measure`]). The pod-to-pod
/// limit has no Services, so it is measured with the first count only.
fn rounds(
    lab: &mut Lab,
    opts: &Options,
    pin: &Path,
    configs: &Configs,
    with_wrk: bool,
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
    let first = opts
        .data_services
        .first()
        .copied()
        .unwrap_or(UNDER_TEST)
        .max(UNDER_TEST);
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
            for path in ServedBy::ALL {
                if path == ServedBy::Direct && services != first {
                    continue;
                }
                // Every path starts from nothing: flows a previous path left in the fast
                // path's connection table would otherwise keep their way (that is what the
                // table is for) and serve part of this path's load.
                agent(lab, opts, "cleanup", Some(&configs.redirect))?;
                match path {
                    ServedBy::Nftables => {
                        agent(lab, opts, "apply", None)?;
                    }
                    ServedBy::FastStack | ServedBy::FastPath => {
                        let (config, want) = if path == ServedBy::FastPath {
                            (&configs.redirect, "forwarding redirect")
                        } else {
                            (&configs.stack, "forwarding stack")
                        };
                        let log = agent(lab, opts, "apply", Some(config))?;
                        if !log.contains("fast path (all)") || !log.contains(want) {
                            bail!("the fast path did not start with {want}:\n{log}");
                        }
                    }
                    // No Service, no tables: nothing of ours (or conntrack) on the way.
                    ServedBy::Direct => {}
                }
                run_index += 1;
                let turn = Turn {
                    run_index,
                    windows: one,
                    wrk: with_wrk && services == first,
                };
                let run = measure_path(lab, opts, path, services, pin, &turn)?;
                match m
                    .runs
                    .iter_mut()
                    .find(|r| r.path == path && r.services == services)
                {
                    Some(all) => all.merge(run),
                    None => m.runs.push(run),
                }
            }
            agent(lab, opts, "cleanup", Some(&configs.redirect))?;
        }
    }
    Ok(())
}

/// Builds the lab, measures every path at each Service count, removes the lab, then
/// measures the programs' cost per packet.
///
/// The paths take turns, one window each per round, so that a disturbance from other work
/// on the machine falls on all alike; each figure is the median of its rounds.
pub fn measure(opts: &Options) -> anyhow::Result<DataResult> {
    let (mut lab, servers, nginx) = build_lab(opts);
    let pin = PathBuf::from(format!("/sys/fs/bpf/hpb-bench-{}", std::process::id()));
    let config = |forwarding: &str| -> anyhow::Result<PathBuf> {
        let path = lab
            .manifests()
            .with_extension(format!("accel-{forwarding}.yaml"));
        std::fs::write(
            &path,
            format!(
                "acceleration:\n  mode: all\n  forwarding: {forwarding}\n  interfaces: [eth0]\n  pinPath: {}\n",
                pin.display()
            ),
        )?;
        Ok(path)
    };
    let configs = Configs {
        redirect: config("redirect")?,
        stack: config("stack")?,
    };
    let mut m = Measured::default();
    let result = rounds(&mut lab, opts, &pin, &configs, !nginx.is_empty(), &mut m);
    // Whatever happened, nothing stays pinned.
    let _ = agent(&lab, opts, "cleanup", Some(&configs.redirect));
    let _ = std::fs::remove_file(&configs.redirect);
    let _ = std::fs::remove_file(&configs.stack);
    drop(nginx);
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
