//! Acceleration control on real traffic, with nftables present: the namespace lab of
//! `nft_lab` (node-a, node-b, pods, an external client), programmed by `proxy-agent apply`
//! or `run`, with the eBPF fast path on top.
//!
//! - The fast path changes nothing about where traffic goes: the same exchanges with
//!   acceleration off and on reach the same backends from the same client addresses, and
//!   what it refuses (eTP Cluster node ports) still works through nftables.
//! - `auto` mode promotes a loaded service and demotes it when the load stops; established
//!   connections survive both moves, and new flows after the demotion go to nftables.
//! - Changing the mode or the XDP interfaces under traffic fails no request; a full connection table sends new
//!   flows to nftables and drops nothing; an agent killed with SIGKILL leaves both paths serving, and
//!   the restarted one adopts the fast path without resetting a connection.
//!
//! Every pin path is `/sys/fs/bpf/hpt-*` and is removed by the test.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Output,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hybrid_proxy_tests::{
    bpf_harness::chain,
    lab::{EXTERNAL_IP, Lab, NODE_A_IP, On, agent_binary, wait_for},
    privileged,
    reliability::record,
    traffic::{self, Connection, Outcome, Seen, exchanges},
};
use proxy_agent::{
    bpf::{
        FastPath, FastPathConfig, inspect,
        kernel::{self, KernelMaps},
        store::MapStore as _,
    },
    config::Config,
    metrics::Metrics,
    plan::ProxyPlan,
    source::files,
};
use proxy_common::StatIndex;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const WEB: &str = "10.96.0.10:80";
const WEB_DNS: &str = "10.96.0.10:53";
const PLAIN: &str = "10.96.0.11:80";
const STICKY: &str = "10.96.0.12:80";
const EDGE_LOCAL: &str = "192.168.1.10:30080";
const EDGE_LB: &str = "198.51.100.7:80";
const EDGE_CLUSTER: &str = "192.168.1.10:30081";

/// A pin path of one test on the host's bpffs; everything pinned there (and attached from
/// it) is removed on drop, from inside the lab's node namespace.
struct Pin {
    path: PathBuf,
    netns: String,
    /// Configuration files written for the test, removed with the pins.
    files: Mutex<Vec<PathBuf>>,
}

impl Pin {
    fn new(test: &str, lab: &Lab) -> Self {
        Self {
            path: PathBuf::from(format!("/sys/fs/bpf/hpt-{test}-{}", std::process::id())),
            netns: lab.node.name().to_owned(),
            files: Mutex::new(Vec::new()),
        }
    }

    fn text(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        for f in self.files.lock().unwrap().drain(..) {
            let _ = std::fs::remove_file(f);
        }
        let (path, netns) = (self.path.clone(), self.netns.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(f) = std::fs::File::open(format!("/run/netns/{netns}")) {
                // SAFETY: a namespace descriptor; only this thread's namespace changes.
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
                let _ = kernel::cleanup(&path);
            }
            let _ = std::fs::remove_dir_all(&path);
        })
        .join();
    }
}

/// A Service with ports http (80/TCP) and dns (53/UDP). `spec` and `metadata` are extra
/// flow-mapping entries.
fn service(name: &str, cluster_ip: &str, ports: &str, spec: &str, metadata: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default{metadata}}}\n\
         spec: {{clusterIP: {cluster_ip}, ports: [{ports}]{spec}}}\n---\n"
    )
}

const PORTS: &str = "{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}";

/// An EndpointSlice with ready endpoints (pods of the lab) serving http and dns on 8080.
fn slice(lab: &Lab, service: &str, pods: &[&str]) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-1, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}, {{name: dns, port: 8080, protocol: UDP}}]\n\
         endpoints: [{}]\n---\n",
        lab.endpoints(pods)
    )
}

const OFF: &str = ", annotations: {hybrid-proxy.io/acceleration: \"off\"}";

/// Backends `a1`, `a2` (node-a) and `b1` (node-b) serving 8080; client pod `c1` (node-a).
fn lab(tag: &str) -> Lab {
    with_pods(Lab::new(tag))
}

/// [`lab`]'s pods in `lab`.
fn with_pods(mut lab: Lab) -> Lab {
    for (pod, on) in [
        ("a1", On::NodeA),
        ("a2", On::NodeA),
        ("b1", On::NodeB),
        ("c1", On::NodeA),
    ] {
        lab.add_pod(pod, on);
        if pod != "c1" {
            lab.serve(pod, 8080);
        }
    }
    lab
}

/// `web` (ClusterIP, TCP and UDP, a1 a2 b1), `plain` (the same, annotated "off": always
/// nftables), `sticky` (ClientIP affinity), `edge` (eTP Local node port 30080 and LB IP:
/// XDP), `edge-cluster` (eTP Cluster node port 30081: XDP refuses it, needs SNAT).
fn manifests(lab: &Lab) -> String {
    let all = ["a1", "a2", "b1"];
    [
        service("web", "10.96.0.10", PORTS, "", ""),
        slice(lab, "web", &all),
        service("plain", "10.96.0.11", PORTS, "", OFF),
        slice(lab, "plain", &all),
        service(
            "sticky",
            "10.96.0.12",
            PORTS,
            ", sessionAffinity: ClientIP",
            "",
        ),
        slice(lab, "sticky", &all),
        service(
            "edge",
            "10.96.0.20",
            "{name: http, port: 80, nodePort: 30080}",
            ", type: LoadBalancer, externalTrafficPolicy: Local",
            "",
        )
        .replace(
            "\n---\n",
            "\nstatus: {loadBalancer: {ingress: [{ip: 198.51.100.7}]}}\n---\n",
        ),
        slice(lab, "edge", &all),
        service(
            "edge-cluster",
            "10.96.0.21",
            "{name: http, port: 80, nodePort: 30081}",
            ", type: NodePort",
            "",
        ),
        slice(lab, "edge-cluster", &all),
    ]
    .concat()
}

/// Writes the agent configuration for this lab and returns its path. The forwarding is the
/// one under test unless `extra` names one.
fn write_config(lab: &Lab, pin: &Pin, mode: &str, extra: &str) -> PathBuf {
    let path = lab.manifests().with_extension(format!("{mode}.yaml"));
    pin.files.lock().unwrap().push(path.clone());
    let forwarding = if extra.contains("forwarding:") {
        String::new()
    } else {
        format!(
            "  forwarding: {}\n",
            hybrid_proxy_tests::forwarding_under_test()
        )
    };
    let extra = format!("{forwarding}{extra}");
    std::fs::write(
        &path,
        format!(
            "nodeName: node-a\nclusterCIDR: 10.244.0.0/16\nserviceCIDRs: 10.96.0.0/12\n\
             acceleration:\n  mode: {mode}\n  interfaces: [eth0]\n  pinPath: {}\n{extra}",
            pin.text()
        ),
    )
    .unwrap();
    path
}

/// `proxy-agent status` in node-a.
fn status_of(lab: &Lab, config: &Path, extra: &[&str]) -> Output {
    std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.node.name()))
        .arg(agent_binary())
        .args(["status", "--config", arg(config)])
        .args(extra)
        .output()
        .expect("running proxy-agent status")
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads the pinned fast path (from the test process: bpffs is the host's).
fn pinned(pin: &Pin) -> inspect::PinnedView {
    inspect::read(&pin.path)
        .unwrap_or_else(|e| panic!("reading {}: {}", pin.text(), chain(&e)))
        .unwrap_or_else(|| panic!("nothing pinned at {}", pin.text()))
}

fn port<'a>(view: &'a inspect::PinnedView, label: &str) -> &'a inspect::PortView {
    view.ports
        .iter()
        .find(|p| p.label.starts_with(label))
        .unwrap_or_else(|| panic!("no port {label} in {:#?}", view.ports))
}

fn stat(view: &inspect::PinnedView, index: StatIndex) -> u64 {
    view.stats
        .iter()
        .find(|(i, _)| *i == index)
        .map_or(0, |(_, n)| *n)
}

/// The exchanges compared between modes: from the pod (TC) and from outside (XDP).
fn all_exchanges(lab: &Lab) -> Vec<(String, Seen)> {
    let c1 = &lab.pod("c1").ns;
    let mut out = Vec::new();
    for (from, name, dst, udp, n) in [
        (c1, "pod", WEB, false, 40),
        (c1, "pod", WEB_DNS, true, 40),
        (c1, "pod", PLAIN, false, 40),
        (c1, "pod", STICKY, false, 8),
        (c1, "pod", EDGE_LB, false, 40),
        (&lab.external, "external", EDGE_LOCAL, false, 20),
        (&lab.external, "external", EDGE_LB, false, 20),
        (&lab.external, "external", EDGE_CLUSTER, false, 40),
    ] {
        let mut seen =
            exchanges(from, dst, udp, n).unwrap_or_else(|e| panic!("{e}\n{}", lab.ruleset()));
        if dst == STICKY {
            // ClientIP affinity: one backend, whichever the path picked first.
            assert_eq!(seen.backends.len(), 1, "{seen:?}");
            seen.backends = ["(one)".to_owned()].into();
        }
        out.push((
            format!("{name} -> {dst}{}", if udp { "/udp" } else { "" }),
            seen,
        ));
    }
    out
}

#[test]
fn the_fast_path_serves_the_same_backends_and_client_addresses_as_nftables() {
    if !privileged::root_or_skip("accel_identical") {
        return;
    }
    let lab = lab("aid");
    let pin = Pin::new("identical", &lab);
    lab.write_manifests(&manifests(&lab));
    lab.apply(&[]);
    let off = all_exchanges(&lab);

    let all = write_config(&lab, &pin, "all", "");
    let out = lab.apply(&["--config", arg(&all)]);
    assert!(out.contains("fast path (all)"), "{out}");
    let before = pinned(&pin);
    let on = all_exchanges(&lab);
    let after = pinned(&pin);
    for ((what, a), (_, b)) in off.iter().zip(&on) {
        assert_eq!(a, b, "{what}: acceleration off vs all");
    }
    // Where each went: web, sticky and edge by the fast path; plain and eTP Cluster by
    // nftables (counted, never translated).
    let delta = |label: &str| {
        let (b, a) = (port(&before, label).counter, port(&after, label).counter);
        (
            a.seen_packets - b.seen_packets,
            a.fast_packets - b.fast_packets,
        )
    };
    for label in [
        "default/web http",
        "default/web dns",
        "default/sticky http",
        "default/edge http",
    ] {
        let (seen, fast) = delta(label);
        assert!(seen > 0 && fast > 0, "{label}: {seen} seen, {fast} fast");
    }
    for label in ["default/plain http", "default/edge-cluster http"] {
        let (seen, fast) = delta(label);
        assert!(seen > 0 && fast == 0, "{label}: {seen} seen, {fast} fast");
    }
    let cluster = port(&after, "default/edge-cluster http");
    assert_eq!(cluster.external.to_string(), "nftables (needs SNAT)");
    assert!(cluster.pods.is_fast(), "pods reach its cluster IP by TC");
    // The eTP Cluster node port was masqueraded by nftables, as with acceleration off.
    let edge_cluster = &on.iter().find(|(w, _)| w.contains("30081")).unwrap().1;
    assert!(
        !edge_cluster.peers.contains(EXTERNAL_IP),
        "{edge_cluster:?}"
    );
    // Client addresses are kept where kube-proxy keeps them.
    let web = &on
        .iter()
        .find(|(w, _)| w.starts_with("pod -> 10.96.0.10:80"))
        .unwrap()
        .1;
    assert_eq!(web.peers, [lab.pod("c1").ip.to_string()].into());

    // Verify agrees with the kernel; the fast path's half names a tampered entry.
    let verify = lab.agent("verify", &["--config", arg(&all)]);
    assert!(
        verify.status.success(),
        "{}{}",
        stdout(&verify),
        stderr(&verify)
    );
    let mut maps = KernelMaps::open_pinned(&pin.path).unwrap();
    let (key, value) = maps
        .v4()
        .services
        .entries()
        .unwrap()
        .into_iter()
        .find(|(_, v)| v.flags & proxy_common::service_flags::COUNT_ONLY == 0)
        .unwrap();
    maps.v4().services.delete(&key).unwrap();
    let verify = lab.agent("verify", &["--config", arg(&all)]);
    assert!(!verify.status.success());
    assert!(
        stdout(&verify).contains("fast path: service entry")
            && stdout(&verify).contains("is missing"),
        "{}",
        stdout(&verify)
    );
    maps.v4().services.put(key, value).unwrap();

    // Demoted (apply with acceleration off): new flows are served by nftables.
    let off_config = write_config(&lab, &pin, "off", "");
    lab.apply(&["--config", arg(&off_config)]);
    let before = pinned(&pin);
    assert!(before.ports.is_empty(), "mode off leaves no entries");
    let again = all_exchanges(&lab);
    assert_eq!(
        again.iter().map(|(_, s)| s).collect::<Vec<_>>(),
        off.iter().map(|(_, s)| s).collect::<Vec<_>>()
    );
    let after = pinned(&pin);
    assert_eq!(
        stat(&after, StatIndex::NewFlow),
        stat(&before, StatIndex::NewFlow),
        "no new flow on the fast path after demotion"
    );
}

/// Builds the plan `proxy-agent` builds for this lab under `config` (inside node-a, for its
/// addresses).
fn plan_of(lab: &Lab, config: &Config) -> ProxyPlan {
    let (state, _) = files::load_dir(lab.manifests(), "node-a").unwrap();
    let addresses = lab.node.run(proxy_agent::host::local_addresses).unwrap();
    proxy_agent::plan::compute(&state, &config.plan_settings(addresses))
}

fn open_fast_path(lab: &Lab, config: &FastPathConfig) -> FastPath {
    lab.node.run(|| {
        FastPath::open(config, &["10.244.1.0/24".parse().unwrap()])
            .unwrap_or_else(|e| panic!("opening the fast path: {}", chain(&e)))
    })
}

/// Waits until the running agent's fast path counts every port in `labels` (written after
/// nftables: the agent then serves them).
fn wait_counted(pin: &Pin, agent: &hybrid_proxy_tests::lab::Agent, labels: &[&str]) {
    let counted = wait_for(Duration::from_secs(5), || {
        inspect::read(&pin.path).ok().flatten().filter(|v| {
            labels
                .iter()
                .all(|l| v.ports.iter().any(|p| p.label.starts_with(l)))
        })
    });
    assert!(
        counted.is_some(),
        "the fast path never counted {labels:?}\n{}",
        agent.log_text()
    );
}

/// Sets a flag when dropped: a scope's main thread that panics still stops its helpers (the
/// scope waits for them before the panic goes on).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Moves the calling thread into a namespace of the lab for good.
fn enter(netns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
    // SAFETY: a namespace descriptor; only this thread's namespace changes.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {netns}");
}

/// How long a request on a long-lived connection may take before it counts as failed: what
/// these loads test is that a connection survives (a reset fails at once), and a packet lost
/// under a busy CI machine costs a retransmission (200 ms, doubling), not a failure. The
/// slowest request is reported.
const PATIENCE: Duration = Duration::from_secs(5);

/// A request loop in a pod: requests on one connection `pace` apart, until stopped or `limit`
/// passes (paced, so that the lab's two CPUs still serve the agent). Counts what it sent and
/// what failed, and keeps each failure with its time since the start (to set against the
/// scenario's own timeline).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    /// The slowest request so far, in microseconds.
    slowest_us: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    started: Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(netns: &str, dst: SocketAddr, pace: Duration, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let slowest_us = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let (stopping, sending, failing, noting, timing) = (
            stop.clone(),
            sent.clone(),
            failed.clone(),
            errors.clone(),
            slowest_us.clone(),
        );
        let netns = netns.to_owned();
        let thread = std::thread::spawn(move || {
            enter(&netns);
            let fail = |what: String| {
                failing.fetch_add(1, Ordering::Relaxed);
                noting.lock().unwrap().push(format!(
                    "{:?} ({} UTC): {what}",
                    started.elapsed(),
                    time_of_day()
                ));
            };
            let mut conn: Option<BufReader<TcpStream>> = None;
            while !stopping.load(Ordering::Relaxed) && started.elapsed() < limit {
                sending.fetch_add(1, Ordering::Relaxed);
                if conn.is_none() {
                    match TcpStream::connect_timeout(&dst, PATIENCE) {
                        Ok(stream) => {
                            stream.set_read_timeout(Some(PATIENCE)).unwrap();
                            conn = Some(BufReader::new(stream));
                        }
                        Err(e) => {
                            fail(format!("connecting to {dst}: {e}"));
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    }
                }
                let stream = conn.as_mut().expect("connected above");
                let local = stream.get_ref().local_addr().ok();
                let mut line = String::new();
                let asked = Instant::now();
                let outcome = stream
                    .get_mut()
                    .write_all(b"load\n")
                    .and_then(|()| stream.read_line(&mut line));
                let took = usize::try_from(asked.elapsed().as_micros()).unwrap_or(usize::MAX);
                timing.fetch_max(took, Ordering::Relaxed);
                let failure = match outcome {
                    Ok(0) => Some("connection closed".to_owned()),
                    Ok(_) => None,
                    Err(e) => Some(e.to_string()),
                };
                if let Some(failure) = failure {
                    fail(format!("request from {local:?}: {failure}"));
                    conn = None;
                }
                std::thread::sleep(pace);
            }
        });
        Self {
            stop,
            sent,
            slowest_us,
            failed,
            errors,
            started,
            thread: Some(thread),
        }
    }

    /// Each failure so far, with its time since the load started.
    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// The slowest request so far.
    fn slowest(&self) -> Duration {
        Duration::from_micros(self.slowest_us.load(Ordering::Relaxed) as u64)
    }

    fn stop(&mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The time of day, to set a test's events against the agent's log.
fn time_of_day() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, millis) = (now.as_secs() % 86_400, now.subsec_millis());
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[test]
fn auto_mode_promotes_a_loaded_service_and_demotes_it_when_the_load_stops() {
    if !privileged::root_or_skip("accel_auto") {
        return;
    }
    let lab = lab("aau");
    let pin = Pin::new("auto", &lab);
    lab.write_manifests(&manifests(&lab));
    let config_path = write_config(
        &lab,
        &pin,
        "auto",
        "  auto: {promoteAbovePps: 100, demoteBelowPps: 20, minDwell: 2s}\n",
    );
    // The agent in auto mode: every port counted, nothing measured yet, nothing promoted.
    let agent = lab.start_agent(&["--config", arg(&config_path)]);
    wait_counted(&pin, &agent, &["default/web http"]);
    let web = || port(&pinned(&pin), "default/web http").pods.to_string();
    assert_eq!(web(), "nftables (auto: not hot)");

    // A connection nftables serves, before any move.
    let c1 = &lab.pod("c1").ns;
    let mut old = Connection::open(c1, addr(WEB));
    let old_backend = old.request().backend().to_owned();

    // Load, bounded in time, generated inside the lab: the agent promotes the port.
    let mut load = Load::start(
        c1.name(),
        addr(WEB),
        Duration::from_millis(1),
        Duration::from_secs(30),
    );
    let started = Instant::now();
    let promoted = wait_for(Duration::from_secs(12), || {
        (web() == "fast path").then_some(())
    });
    assert!(
        promoted.is_some(),
        "not promoted under load: {}\n{}",
        web(),
        agent.log_text()
    );
    println!("promoted after {:?}", started.elapsed());
    // status shows the load, measured on the port.
    let status = status_of(&lab, &config_path, &["--json"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let rate = json["fast_path"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"].as_str().unwrap().starts_with("default/web http"))
        .and_then(|p| p["seen_pps"].as_f64())
        .unwrap_or_default();
    println!("{rate:.0} pps under load");
    assert!(rate > 100.0, "{json:#}");
    assert_eq!(
        port(&pinned(&pin), "default/plain http").pods.to_string(),
        "nftables (annotation off)",
        "the annotation wins"
    );
    // New connections are served by the fast path now; the old one is not moved.
    let before = port(&pinned(&pin), "default/web http").counter;
    let mut new = Connection::open(c1, addr(WEB));
    let new_backend = new.request().backend().to_owned();
    let fast = exchanges(c1, WEB, false, 10).unwrap();
    assert!(!fast.backends.is_empty());
    let after = port(&pinned(&pin), "default/web http").counter;
    assert!(
        after.fast_packets >= before.fast_packets + 10,
        "served by the fast path: {before:?} -> {after:?}"
    );
    assert_eq!(
        old.request().backend(),
        old_backend,
        "kept across the promotion"
    );

    // The load stops: the agent demotes the port after minDwell.
    let (sent, failed) = load.stop();
    println!(
        "load: {sent} requests, {failed} failed, slowest {:?}",
        load.slowest()
    );
    assert_eq!(failed, 0, "{:#?}\n{}", load.errors(), agent.log_text());
    let stopped = Instant::now();
    let demoted = wait_for(Duration::from_secs(12), || {
        (web() == "nftables (auto: not hot)").then_some(())
    });
    assert!(
        demoted.is_some(),
        "not demoted without load: {}\n{}",
        web(),
        agent.log_text()
    );
    println!("demoted {:?} after the load stopped", stopped.elapsed());
    // Both established connections go on, on the path they started on; new flows are
    // served by nftables.
    assert_eq!(old.request().backend(), old_backend);
    assert_eq!(new.request().backend(), new_backend);
    let new_flows = stat(&pinned(&pin), StatIndex::NewFlow);
    exchanges(c1, WEB, false, 10).unwrap();
    assert_eq!(stat(&pinned(&pin), StatIndex::NewFlow), new_flows);
    let log = agent.log_text();
    assert!(log.contains("auto acceleration moved services"), "{log}");
    drop(agent);
}

#[test]
fn hot_services_beyond_the_fast_paths_room_stay_on_nftables_and_serve() {
    if !privileged::root_or_skip("accel_capacity") {
        return;
    }
    let lab = lab("acp");
    let pin = Pin::new("capacity", &lab);
    lab.write_manifests(&manifests(&lab));
    // Room for one promoted port; two get loaded.
    let config_path = write_config(
        &lab,
        &pin,
        "auto",
        "  auto: {promoteAbovePps: 100, demoteBelowPps: 20, minDwell: 2s, maxServices: 1}\n",
    );
    let agent = lab.start_agent(&["--config", arg(&config_path)]);
    // Loads start once the agent serves both ports (a connection tried before its first sync
    // would time out on a node without rules).
    wait_counted(&pin, &agent, &["default/web http", "default/sticky http"]);
    let c1 = lab.pod("c1").ns.name().to_owned();
    let limit = Duration::from_secs(30);
    let pace = Duration::from_millis(1);
    let mut loads = [
        Load::start(&c1, addr(WEB), pace, limit),
        Load::start(&c1, addr(STICKY), pace, limit),
    ];
    let paths = || {
        let view = inspect::read(&pin.path).ok().flatten()?;
        let find = |label: &str| {
            view.ports
                .iter()
                .find(|p| p.label.starts_with(label))
                .map(|p| p.pods.to_string())
        };
        Some([find("default/web http")?, find("default/sticky http")?])
    };
    let settled = wait_for(Duration::from_secs(12), || {
        paths().filter(|p| {
            p.contains(&"fast path".to_owned())
                && p.contains(&"nftables (auto: hot, fast path full)".to_owned())
        })
    });
    let settled = settled.unwrap_or_else(|| {
        panic!(
            "one promoted, one held for room: {:?}\n{}",
            paths(),
            agent.log_text()
        )
    });
    println!("web, sticky: {settled:?}");
    let metrics = wait_for(Duration::from_secs(5), || {
        traffic::http_get(&lab.node, addr("127.0.0.1:10249"), "/metrics")
            .ok()
            .filter(|(_, text)| text.contains("hybrid_proxy_fastpath_held_for_capacity 1"))
    });
    assert!(metrics.is_some(), "no held_for_capacity metric");
    // The held port still serves, through nftables: its fast-path counter does not move.
    let held = if settled[0] == "fast path" {
        ("default/sticky http", STICKY)
    } else {
        ("default/web http", WEB)
    };
    let before = port(&pinned(&pin), held.0).counter;
    exchanges(&lab.pod("c1").ns, held.1, false, 10).unwrap();
    let after = port(&pinned(&pin), held.0).counter;
    assert_eq!(after.fast_packets, before.fast_packets, "{}", held.0);
    assert!(after.seen_packets > before.seen_packets, "{}", held.0);
    let tallies = loads.each_mut().map(Load::stop);
    let (sent, failed) = tallies
        .iter()
        .fold((10, 0), |(s, f), (sent, failed)| (s + sent, f + failed));
    record(
        "fast path: more hot services than it may hold",
        1,
        sent as u64,
        failed as u64,
    );
    for (((sent, failed), what), load) in tallies.iter().zip(["web", "sticky"]).zip(&loads) {
        println!(
            "{what}: {sent} requests, {failed} failed, slowest {:?}",
            load.slowest()
        );
        assert_eq!(
            *failed,
            0,
            "{what}: {:#?}\n{}",
            load.errors(),
            agent.log_text()
        );
    }
    drop(agent);
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn changing_mode_and_interfaces_under_traffic_fails_no_request() {
    if !privileged::root_or_skip("accel_toggle") {
        return;
    }
    let lab = lab("atg");
    let pin = Pin::new("toggle", &lab);
    lab.write_manifests(&manifests(&lab));
    let config = lab.manifests().with_extension("agent.yaml");
    pin.files.lock().unwrap().push(config.clone());
    let write_with = |mode: &str, interfaces: &str| {
        let text = std::fs::read_to_string(write_config(&lab, &pin, mode, ""))
            .unwrap()
            .replace("interfaces: [eth0]", &format!("interfaces: {interfaces}"));
        // Written aside and renamed, as a ConfigMap update does.
        let tmp = config.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &config).unwrap();
    };
    let write = |mode: &str| write_with(mode, "[eth0]");
    write("all");
    let agent = lab.start_agent(&["--config", arg(&config)]);
    let accelerated = || {
        inspect::read(&pin.path)
            .ok()
            .flatten()
            .map(|v| v.ports.iter().any(|p| p.pods.is_fast()))
    };
    assert!(
        wait_for(Duration::from_secs(5), || accelerated().filter(|a| *a)).is_some(),
        "never accelerated\n{}",
        agent.log_text()
    );

    let c1 = lab.pod("c1").ns.name().to_owned();
    let mut tcp_load = Load::start(
        &c1,
        addr(WEB),
        Duration::from_millis(5),
        Duration::from_mins(1),
    );
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
    let requests = AtomicUsize::new(0);
    // Each step, on the load's clock, to set failures against.
    let timeline = Mutex::new(Vec::new());
    let note_step = |what: String| {
        timeline.lock().unwrap().push(format!(
            "{:?} ({} UTC): {what}",
            tcp_load.started.elapsed(),
            time_of_day()
        ));
    };
    let toggles = std::thread::scope(|s| {
        // New connections and UDP exchanges, from the pod and from outside.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                for (ns, dst, udp) in [
                    (&lab.pod("c1").ns, WEB, false),
                    (&lab.pod("c1").ns, WEB_DNS, true),
                    (&lab.external, EDGE_LOCAL, false),
                ] {
                    requests.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = exchanges(ns, dst, udp, 1) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{:?}: {e}", tcp_load.started.elapsed()));
                    }
                }
            }
        });
        let _stop = StopOnDrop(&stop);
        let mut toggles: u64 = 0;
        for round in 0..4 {
            for (mode, on) in [("off", false), ("all", true)] {
                note_step(format!("mode {mode} written"));
                write(mode);
                let applied = wait_for(Duration::from_secs(5), || {
                    accelerated().filter(|a| *a == on)
                });
                assert!(
                    applied.is_some(),
                    "round {round}: mode {mode} not applied\n{}",
                    agent.log_text()
                );
                note_step(format!("mode {mode} applied"));
                toggles += 1;
                std::thread::sleep(Duration::from_millis(400));
            }
        }
        // The node interfaces too: XDP leaves eth0 and comes back, under the same traffic.
        let xdp_on_eth0 = || {
            inspect::read(&pin.path).ok().flatten().map(|v| {
                v.attachments.iter().any(|a| {
                    a.attachment.interface == "eth0" && a.attachment.hook == kernel::Hook::Xdp
                })
            })
        };
        for (interfaces, on) in [("[]", false), ("[eth0]", true)] {
            note_step(format!("interfaces {interfaces} written"));
            write_with("all", interfaces);
            let applied = wait_for(Duration::from_secs(5), || {
                xdp_on_eth0().filter(|a| *a == on)
            });
            assert!(
                applied.is_some(),
                "interfaces {interfaces} not applied\n{}",
                agent.log_text()
            );
            note_step(format!("interfaces {interfaces} applied"));
            toggles += 1;
            std::thread::sleep(Duration::from_millis(400));
        }
        stop.store(true, Ordering::Relaxed);
        toggles
    });
    let (sent, failed) = tcp_load.stop();
    let failures = failures.into_inner().unwrap();
    record(
        "fast path: mode and interfaces changed under traffic",
        toggles,
        (sent + requests.load(Ordering::Relaxed)) as u64,
        (failed + failures.len()) as u64,
    );
    println!(
        "{toggles} mode and interface changes; {sent} requests on one connection (slowest {:?}), \
         {} new-connection and UDP exchanges",
        tcp_load.slowest(),
        requests.load(Ordering::Relaxed)
    );
    let timeline = timeline.into_inner().unwrap();
    assert!(
        failed == 0 && failures.is_empty(),
        "on the long-lived connection: {:#?}\nnew connections and UDP: {failures:#?}\n\
         steps: {timeline:#?}\n{}",
        tcp_load.errors(),
        agent.log_text()
    );
    drop(agent);
}

#[test]
fn a_full_connection_table_sends_new_flows_to_nftables_and_drops_nothing() {
    if !privileged::root_or_skip("accel_table_full") {
        return;
    }
    let lab = lab("atf");
    let pin = Pin::new("full", &lab);
    lab.write_manifests(&manifests(&lab));
    let config_path = write_config(&lab, &pin, "all", "");
    lab.apply(&[]);
    let config = Config::load(&config_path).unwrap();
    let plan = plan_of(&lab, &config);
    // Room for three flows (two entries each).
    let fp_config = FastPathConfig {
        flow_entries: 6,
        ..config.fast_path()
    };
    let mut fp = open_fast_path(&lab, &fp_config);
    lab.node.run(|| fp.apply(&plan, 1)).unwrap();
    let metrics = Metrics::new();
    metrics.fast_path.record(&fp.gauges().unwrap());

    let c1 = &lab.pod("c1").ns;
    let mut conns: Vec<(Connection, String)> = (0..8)
        .map(|i| {
            let mut c = Connection::open(c1, addr(WEB));
            let who = c.request();
            assert!(
                matches!(who, Outcome::Reply { .. }),
                "connection {i}: {who:?}"
            );
            (c, who.backend().to_owned())
        })
        .collect();
    for (i, (c, who)) in conns.iter_mut().enumerate() {
        assert_eq!(c.request().backend(), who, "connection {i}");
    }
    let view = pinned(&pin);
    assert_eq!(view.flows.fast, 6, "the table is full");
    assert!(stat(&view, StatIndex::TableFull) >= 5, "{:?}", view.stats);
    assert_eq!(stat(&view, StatIndex::NewFlow), 3);
    exchanges(c1, WEB_DNS, true, 5).expect("UDP goes to nftables too");
    metrics.fast_path.record(&fp.gauges().unwrap());
    let text = metrics.encode();
    assert!(
        text.contains("hybrid_proxy_fastpath_connection_table_full 1"),
        "{text}"
    );
    // status says so too.
    let status = status_of(&lab, &config_path, &["--interval", "0"]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(
        stdout(&status).contains("went to nftables because the table was full"),
        "{}",
        stdout(&status)
    );
    drop(fp);
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn a_killed_agent_leaves_both_paths_serving_and_a_restarted_one_resets_no_connection() {
    if !privileged::root_or_skip("accel_restart") {
        return;
    }
    let lab = lab("ark");
    let pin = Pin::new("restart", &lab);
    lab.write_manifests(&manifests(&lab));
    let config = write_config(&lab, &pin, "all", "");
    let flags = ["--config", arg(&config)];
    let mut agent = lab.start_agent(&flags);
    let ready = || {
        inspect::read(&pin.path).ok().flatten().filter(|v| {
            v.ports
                .iter()
                .any(|p| p.label.starts_with("default/web http"))
        })
    };
    assert!(
        wait_for(Duration::from_secs(5), ready).is_some(),
        "the fast path never came up\n{}",
        agent.log_text()
    );
    let view = pinned(&pin);
    assert!(port(&view, "default/web http").pods.is_fast());
    assert!(!port(&view, "default/plain http").pods.is_fast());
    assert!(port(&view, "default/edge http").external.is_fast());

    let c1 = &lab.pod("c1").ns;
    // Long-lived connections on both paths, and through XDP.
    let mut long: Vec<(&str, Connection, String)> =
        [(c1, WEB), (c1, PLAIN), (&lab.external, EDGE_LOCAL)]
            .into_iter()
            .map(|(ns, dst)| {
                let mut c = Connection::open(ns, addr(dst));
                let who = c.request().backend().to_owned();
                (dst, c, who)
            })
            .collect();
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
    let requests = AtomicUsize::new(0);
    std::thread::scope(|s| {
        // A continuous request loop on new connections to both paths.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                for (ns, dst) in [(c1, WEB), (c1, PLAIN), (&lab.external, EDGE_LOCAL)] {
                    requests.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = exchanges(ns, dst, false, 1) {
                        failures.lock().unwrap().push(e);
                    }
                }
            }
        });
        let _stop = StopOnDrop(&stop);
        let check_long = |long: &mut Vec<(&str, Connection, String)>, stage: &str| {
            for (dst, c, who) in long.iter_mut() {
                let got = c.request();
                assert!(
                    matches!(&got, Outcome::Reply { backend, .. } if backend == who),
                    "{stage}: long-lived connection to {dst}: {got:?}"
                );
            }
        };
        std::thread::sleep(Duration::from_millis(500));
        check_long(&mut long, "before the kill");

        agent.signal(libc::SIGKILL);
        agent.wait();
        let down = Instant::now();
        // While it is down: both paths serve, status and verify read the kernel.
        let status = status_of(&lab, &config, &["--json"]);
        assert!(status.status.success(), "{}", stderr(&status));
        let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        let fp = &json["fast_path"];
        assert_eq!(fp["in_step"], true, "{json:#}");
        let web = fp["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"].as_str().unwrap().starts_with("default/web http"))
            .unwrap();
        assert_eq!(web["pods"], "fast path", "{json:#}");
        assert!(
            web["seen_pps"].as_f64().unwrap() > 0.0,
            "{json:#}\nrequests so far {}, failures {:#?}",
            requests.load(Ordering::Relaxed),
            failures.lock().unwrap()
        );
        assert!(fp["connections"]["fast_flows"].as_u64().unwrap() >= 2);
        assert!(
            fp["attachments"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["interface"] == "eth0" && a["hook"] == "xdp" && a["live"] == true),
            "{json:#}"
        );
        let verify = lab.agent("verify", &flags);
        assert!(
            verify.status.success(),
            "verify while down: {}{}",
            stdout(&verify),
            stderr(&verify)
        );
        std::thread::sleep(Duration::from_secs(2).saturating_sub(down.elapsed()));
        check_long(&mut long, "while the agent is down");
        assert!(
            failures.lock().unwrap().is_empty(),
            "while down: {:#?}",
            failures.lock().unwrap()
        );

        // Restarted: it adopts the pinned maps and links.
        let agent = lab.start_agent(&flags);
        let synced = wait_for(Duration::from_secs(5), || {
            agent.log_text().contains("fast path ready").then_some(())
        });
        assert!(synced.is_some(), "{}", agent.log_text());
        std::thread::sleep(Duration::from_secs(1));
        let verify = lab.agent("verify", &flags);
        assert!(
            verify.status.success(),
            "verify after the restart: {}{}\n{}",
            stdout(&verify),
            stderr(&verify),
            agent.log_text()
        );
        check_long(&mut long, "after the restart");
        stop.store(true, Ordering::Relaxed);
        drop(agent);
    });
    let failures = failures.into_inner().unwrap();
    println!(
        "{} requests on new connections across the kill and restart",
        requests.load(Ordering::Relaxed)
    );
    record(
        "fast path: agent SIGKILLed and restarted under traffic",
        1,
        requests.load(Ordering::Relaxed) as u64,
        failures.len() as u64,
    );
    assert!(failures.is_empty(), "{failures:#?}");
    check_cleanup(&lab, &pin, &config);
}

/// `proxy-agent cleanup` removes the tables, the pins, and every attachment: the programs'
/// counters stop moving under traffic.
fn check_cleanup(lab: &Lab, pin: &Pin, config: &Path) {
    let maps = KernelMaps::open_pinned(&pin.path).unwrap();
    let out = lab.agent("cleanup", &["--config", arg(config)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!pin.path.exists(), "{}", stderr(&out));
    assert!(
        lab.node
            .exec("nft", &["list", "table", "ip", "hybrid-proxy"])
            .status
            .code()
            != Some(0)
    );
    let seen = |m: &KernelMaps| {
        let s = m.stats().unwrap();
        (
            s[StatIndex::XdpSeen as usize].packets,
            s[StatIndex::TcIngressSeen as usize].packets,
            s[StatIndex::TcEgressSeen as usize].packets,
        )
    };
    let before = seen(&maps);
    let _ = traffic::tcp(
        &lab.pod("c1").ns,
        addr(&format!("{}:8080", lab.pod("a1").ip)),
    );
    let _ = traffic::tcp(&lab.external, addr(&format!("{NODE_A_IP}:30080")));
    assert_eq!(seen(&maps), before, "a program is still attached somewhere");
}

// ---------------------------------------------------------------------------------------------
// Forwarding: redirect (the programs deliver pod flows, the node's stack never sees them)
// against stack (translated, then routed through conntrack and the filter chains).

const BYPASS: &str = "10.96.0.10:80";
const BYPASS_DNS: &str = "10.96.0.10:53";
const PINNED: &str = "10.96.0.13:80";
const STACK_ANNOTATION: &str = ", annotations: {hybrid-proxy.io/forwarding: stack}";

/// `web` (a1 on node-a, b1 on node-b: a local and a remote backend) and `pinned` (a2,
/// annotated `forwarding: stack`).
fn forwarding_manifests(lab: &Lab) -> String {
    [
        service("web", "10.96.0.10", PORTS, "", ""),
        slice(lab, "web", &["a1", "b1"]),
        service("pinned", "10.96.0.13", PORTS, "", STACK_ANNOTATION),
        slice(lab, "pinned", &["a2"]),
    ]
    .concat()
}

/// A configuration with both node interfaces (the uplink and the link to node-b), so that
/// flows to node-b's pods can be redirected too.
fn forwarding_config(lab: &Lab, pin: &Pin, forwarding: &str) -> PathBuf {
    let path = write_config(lab, pin, "all", &format!("  forwarding: {forwarding}\n"));
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("interfaces: [eth0]", "interfaces: [eth0, fab0]");
    let path2 = path.with_extension(format!("{forwarding}.yaml"));
    std::fs::write(&path2, text).unwrap();
    pin.files.lock().unwrap().push(path2.clone());
    path2
}

/// Node-a's conntrack entries from `client` to `backend` (original direction).
fn conntrack_entries(lab: &Lab, client: &str, backend: &str) -> usize {
    let out = lab
        .node
        .exec("conntrack", &["-L", "-s", client, "-d", backend]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(client))
        .count()
}

/// Exchanges from c1 to `dst`: every backend in `want` answers, and c1's address is kept.
fn served_by(lab: &Lab, dst: &str, udp: bool, want: &[&str]) {
    let seen = exchanges(&lab.pod("c1").ns, dst, udp, 40)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.ruleset()));
    let want: std::collections::BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(seen.backends, want, "{dst} udp={udp}");
    assert_eq!(seen.peers, [lab.pod("c1").ip.to_string()].into());
}

#[test]
fn redirect_keeps_pod_flows_out_of_conntrack_and_stack_keeps_them_in() {
    if !privileged::root_or_skip("accel_redirect") {
        return;
    }
    redirect_or_stack(&lab("ard"), "redirect");
}

/// As above, with node-a's pods on a bridge (Flannel's `cni0`): the host-side interfaces
/// are bridge ports, and the node finds its pods in the bridge's forwarding database.
#[test]
fn redirect_and_stack_serve_pods_on_a_bridge() {
    if !privileged::root_or_skip("accel_redirect_bridge") {
        return;
    }
    let lab = with_pods(Lab::bridged("arb"));
    // Acceleration off first: nftables serves bridged pods (bridge-nf-call-iptables).
    lab.write_manifests(&forwarding_manifests(&lab));
    lab.apply(&[]);
    served_by(&lab, BYPASS, false, &["a1", "b1"]);
    served_by(&lab, BYPASS_DNS, true, &["a1", "b1"]);
    redirect_or_stack(&lab, "redirectbr");
}

/// Both forwarding modes on `lab`: where the flows went (conntrack, the counters).
fn redirect_or_stack(lab: &Lab, pin_tag: &str) {
    let pin = Pin::new(pin_tag, lab);
    lab.write_manifests(&forwarding_manifests(lab));
    let c1 = lab.pod("c1").ip.to_string();
    let (a1, a2, b1) = (
        lab.pod("a1").ip.to_string(),
        lab.pod("a2").ip.to_string(),
        lab.pod("b1").ip.to_string(),
    );
    for forwarding in ["redirect", "stack"] {
        let config = forwarding_config(lab, &pin, forwarding);
        let out = lab.apply(&["--config", arg(&config)]);
        assert!(
            out.contains(&format!("forwarding {forwarding} ({forwarding})")),
            "{out}"
        );
        let _ = lab.node.exec("conntrack", &["-F"]);
        let before = pinned(&pin);
        served_by(lab, BYPASS, false, &["a1", "b1"]);
        served_by(lab, BYPASS_DNS, true, &["a1", "b1"]);
        served_by(lab, PINNED, false, &["a2"]);
        let after = pinned(&pin);
        let d = |i| stat(&after, i) - stat(&before, i);
        let local = conntrack_entries(lab, &c1, &a1);
        let remote = conntrack_entries(lab, &c1, &b1);
        let annotated = conntrack_entries(lab, &c1, &a2);
        let web = port(&after, "default/web http").counter.redirected_packets
            - port(&before, "default/web http").counter.redirected_packets;
        let note = format!(
            "{forwarding}: conntrack local {local} remote {remote} annotated {annotated}; \
             redirected {} replies {} no route {} reply program {}; web redirected {web}",
            d(StatIndex::Redirected),
            d(StatIndex::RedirectedReply),
            d(StatIndex::RedirectNoRoute),
            d(StatIndex::TcReplySeen),
        );
        println!("{note}");
        // The annotated Service is on the stack either way.
        assert!(annotated > 0, "{note}");
        if forwarding == "redirect" {
            assert_eq!((local, remote), (0, 0), "{note}\n{}", lab.ruleset());
            assert!(web > 0 && d(StatIndex::RedirectedReply) > 0, "{note}");
            assert!(
                d(StatIndex::TcReplySeen) > 0,
                "replies from node-b meet the reply program: {note}"
            );
            assert_eq!(d(StatIndex::RedirectNoRoute), 0, "{note}");
        } else {
            assert!(local > 0 && remote > 0, "{note}");
            assert_eq!(web, 0, "{note}");
        }
    }
}

#[test]
fn switching_forwarding_under_traffic_fails_no_established_connection() {
    if !privileged::root_or_skip("accel_forwarding_switch") {
        return;
    }
    let lab = lab("afs");
    let pin = Pin::new("fwdswitch", &lab);
    lab.write_manifests(&forwarding_manifests(&lab));
    let c1 = lab.pod("c1").ip.to_string();
    let redirect = forwarding_config(&lab, &pin, "redirect");
    let stack = forwarding_config(&lab, &pin, "stack");
    lab.apply(&["--config", arg(&redirect)]);
    let _ = lab.node.exec("conntrack", &["-F"]);
    // Connections opened under redirect, to both backends.
    let mut open: Vec<Connection> = Vec::new();
    let mut backends = std::collections::BTreeSet::new();
    for _ in 0..40 {
        if backends.len() == 2 && open.len() >= 4 {
            break;
        }
        let mut c = Connection::open(&lab.pod("c1").ns, addr(BYPASS));
        match c.request() {
            Outcome::Reply { backend, .. } => {
                backends.insert(backend);
            }
            other => panic!("first request under redirect: {other:?}"),
        }
        open.push(c);
    }
    assert_eq!(backends.len(), 2, "{backends:?}");
    for (step, config) in [
        ("stack", &stack),
        ("redirect", &redirect),
        ("stack", &stack),
    ] {
        lab.apply(&["--config", arg(config)]);
        for (i, c) in open.iter_mut().enumerate() {
            match c.request() {
                Outcome::Reply { .. } => {}
                other => panic!("connection {i} after switching to {step}: {other:?}"),
            }
        }
        served_by(&lab, BYPASS, false, &["a1", "b1"]);
    }
    // The old connections never reached conntrack; new ones under stack did.
    let entries = conntrack_entries(&lab, &c1, &lab.pod("a1").ip.to_string())
        + conntrack_entries(&lab, &c1, &lab.pod("b1").ip.to_string());
    assert!(entries > 0, "connections opened under stack are tracked");
    let sent = u64::try_from(open.len() * 3).expect("small");
    record(
        "fast path: forwarding switched under open connections",
        3,
        sent,
        0,
    );
}

#[test]
fn auto_forwarding_stays_on_the_stack_next_to_a_foreign_forward_rule() {
    if !privileged::root_or_skip("accel_forwarding_auto") {
        return;
    }
    let lab = lab("afa");
    let pin = Pin::new("fwdauto", &lab);
    lab.write_manifests(&forwarding_manifests(&lab));
    let auto = forwarding_config(&lab, &pin, "auto");
    let out = lab.apply(&["--config", arg(&auto)]);
    assert!(out.contains("forwarding redirect (auto)"), "{out}");
    // A firewall of another owner on the forward hook: its rules must keep seeing pod
    // traffic, so auto puts new flows on the stack and says why.
    for cmd in [
        "add table ip lab-firewall",
        "add chain ip lab-firewall forward { type filter hook forward priority 0; policy accept; }",
        "add rule ip lab-firewall forward counter",
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        let done = lab.node.exec("nft", &args);
        assert!(done.status.success(), "nft {cmd}: {done:?}");
    }
    let out = lab.apply(&["--config", arg(&auto)]);
    assert!(
        out.contains("forwarding stack (auto): chain forward in table ip lab-firewall has 1 rule(s) on the forward hook"),
        "{out}"
    );
    let status = status_of(&lab, &auto, &[]);
    assert!(
        stdout(&status).contains("forwarding: stack"),
        "{}",
        stdout(&status)
    );
    let _ = lab.node.exec("conntrack", &["-F"]);
    served_by(&lab, BYPASS, false, &["a1", "b1"]);
    let c1 = lab.pod("c1").ip.to_string();
    assert!(conntrack_entries(&lab, &c1, &lab.pod("a1").ip.to_string()) > 0);
    // The rule saw the pod traffic.
    let rules = lab
        .node
        .exec("nft", &["list", "chain", "ip", "lab-firewall", "forward"]);
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains("packets 0 "),
        "{}",
        String::from_utf8_lossy(&rules.stdout)
    );
    let _ = lab
        .node
        .exec("nft", &["delete", "table", "ip", "lab-firewall"]);
    let out = lab.apply(&["--config", arg(&auto)]);
    assert!(out.contains("forwarding redirect (auto)"), "{out}");
}

#[test]
fn auto_forwarding_stays_on_the_stack_next_to_a_foreign_tc_program() {
    if !privileged::root_or_skip("accel_forwarding_tc") {
        return;
    }
    let lab = lab("aft");
    let pin = Pin::new("fwdtc", &lab);
    lab.write_manifests(&forwarding_manifests(&lab));
    let auto = forwarding_config(&lab, &pin, "auto");
    // Another owner's (classic) BPF filter on the client's host-side interface.
    let iface = format!("cali1{:03}", lab.pod("c1").ip.octets()[3]);
    for args in [
        vec!["qdisc", "add", "dev", &iface, "clsact"],
        vec![
            "filter",
            "add",
            "dev",
            &iface,
            "ingress",
            "bpf",
            "bytecode",
            "1,6 0 0 0,",
        ],
    ] {
        let done = lab.node.exec("tc", &args);
        assert!(done.status.success(), "tc {args:?}: {done:?}");
    }
    let out = lab.apply(&["--config", arg(&auto)]);
    assert!(
        out.contains(&format!(
            "forwarding stack (auto): another BPF program (tc ingress filter bpf 0x1) is attached to pod interface {iface}"
        )),
        "{out}"
    );
    let _ = lab.node.exec("conntrack", &["-F"]);
    served_by(&lab, BYPASS, false, &["a1", "b1"]);
    let c1 = lab.pod("c1").ip.to_string();
    assert!(conntrack_entries(&lab, &c1, &lab.pod("a1").ip.to_string()) > 0);
}

#[test]
fn a_packet_larger_than_the_egress_mtu_takes_the_stack() {
    if !privileged::root_or_skip("accel_redirect_mtu") {
        return;
    }
    let lab = lab("amt");
    let pin = Pin::new("fwdmtu", &lab);
    // `far` has only the backend on node-b, behind a link with a smaller MTU.
    lab.write_manifests(
        &[
            service("far", "10.96.0.14", PORTS, "", ""),
            slice(&lab, "far", &["b1"]),
        ]
        .concat(),
    );
    for n in [&lab.node, &lab.node_b] {
        n.ip(&["link", "set", "fab0", "mtu", "1000"]);
    }
    let config = forwarding_config(&lab, &pin, "redirect");
    lab.apply(&["--config", arg(&config)]);
    let _ = lab.node.exec("conntrack", &["-F"]);
    let before = pinned(&pin);
    // A small datagram fits: redirected. A large one without DF does not: the stack
    // fragments it (and would send ICMP "fragmentation needed" for one with DF).
    let c1 = &lab.pod("c1").ns;
    let small = hybrid_proxy_tests::bpf_lab::UdpFlow::open(c1, 41000, addr("10.96.0.14:53"));
    assert_eq!(small.request().as_deref().map(backend_name), Ok("b1"));
    let big = c1.run(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:41001").unwrap();
        let no_df: libc::c_int = 0; // IP_PMTUDISC_DONT
        // SAFETY: a valid option value of the size given.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&raw const no_df).cast(),
                4,
            );
        }
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(&[b'x'; 1400], "10.96.0.14:53").unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = s
            .recv_from(&mut buf)
            .expect("an answer to the large datagram");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    });
    assert_eq!(big.1, addr("10.96.0.14:53"), "answered from the service");
    assert_eq!(backend_name(&big.0), "b1");
    let after = pinned(&pin);
    let deltas: Vec<(StatIndex, u64)> = after
        .stats
        .iter()
        .map(|(i, n)| (*i, n - stat(&before, *i)))
        .filter(|(_, d)| *d > 0)
        .collect();
    assert!(
        stat(&after, StatIndex::RedirectTooBig) > stat(&before, StatIndex::RedirectTooBig),
        "counted: {deltas:?}"
    );
    let c1_ip = lab.pod("c1").ip.to_string();
    assert!(
        conntrack_entries(&lab, &c1_ip, &lab.pod("b1").ip.to_string()) >= 1,
        "the large datagram's flow went through the stack (conntrack), the small one did not"
    );
}

#[test]
fn udp_flows_to_a_removed_endpoint_move_to_a_live_one_under_redirect() {
    if !privileged::root_or_skip("accel_redirect_udp_removal") {
        return;
    }
    let lab = lab("aur");
    let pin = Pin::new("fwdudp", &lab);
    let both = [
        service("dns", "10.96.0.15", PORTS, "", ""),
        slice(&lab, "dns", &["a1", "a2"]),
    ]
    .concat();
    lab.write_manifests(&both);
    let config = forwarding_config(&lab, &pin, "redirect");
    lab.apply(&["--config", arg(&config)]);
    let flow =
        hybrid_proxy_tests::bpf_lab::UdpFlow::open(&lab.pod("c1").ns, 42000, addr("10.96.0.15:53"));
    let first = backend_name(&flow.request().expect("an answer")).to_owned();
    let other = if first == "a1" { "a2" } else { "a1" };
    lab.write_manifests(
        &[
            service("dns", "10.96.0.15", PORTS, "", ""),
            slice(&lab, "dns", &[other]),
        ]
        .concat(),
    );
    lab.apply(&["--config", arg(&config)]);
    // The same socket (the same flow): its entries went with the endpoint, as kube-proxy
    // deletes the conntrack entries of a removed UDP endpoint.
    let again = flow.request().expect("an answer after the removal");
    assert_eq!(backend_name(&again), other);
}

/// The backend name in a lab server's answer (`name peer`).
fn backend_name(answer: &str) -> &str {
    answer.split_whitespace().next().unwrap_or_default()
}

#[test]
fn a_reload_of_the_auto_thresholds_reaches_the_policy() {
    if !privileged::root_or_skip("accel_auto_reload") {
        return;
    }
    let lab = lab("aar");
    let pin = Pin::new("autoreload", &lab);
    lab.write_manifests(&manifests(&lab));
    // Thresholds no load here reaches: nothing is promoted.
    let config_path = write_config(
        &lab,
        &pin,
        "auto",
        "  auto: {promoteAbovePps: 1000000, demoteBelowPps: 20, minDwell: 1s}\n",
    );
    let agent = lab.start_agent(&["--config", arg(&config_path)]);
    wait_counted(&pin, &agent, &["default/web http"]);
    let web = || port(&pinned(&pin), "default/web http").pods.to_string();
    let mut load = Load::start(
        lab.pod("c1").ns.name(),
        addr(WEB),
        Duration::from_millis(1),
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(web(), "nftables (auto: not hot)", "{}", agent.log_text());
    // The same file with reachable thresholds: the running agent reloads it and promotes.
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("promoteAbovePps: 1000000", "promoteAbovePps: 100");
    let tmp = config_path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &config_path).unwrap();
    let promoted = wait_for(Duration::from_secs(15), || {
        (web() == "fast path").then_some(())
    });
    assert!(
        promoted.is_some(),
        "the reloaded thresholds did not promote: {}\n{}",
        web(),
        agent.log_text()
    );
    let (_, failed) = load.stop();
    assert_eq!(failed, 0, "no request failed across the reload");
}
