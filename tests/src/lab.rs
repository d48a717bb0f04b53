//! A small cluster in network namespaces.
//!
//! ```text
//!   external client ──eth0── node-a ──fab0── node-b
//!   192.168.1.100        192.168.1.10   192.168.2.1/.2
//!                            │ cali*            │ cali*
//!                    pods 10.244.1.0/24   pods 10.244.2.0/24
//! ```
//!
//! Pods are wired as Calico wires them: a veth per pod, the pod's /32 address routed to it on
//! the node, and the pod's default route via a link-local gateway the node answers by proxy
//! ARP. The external client routes the Service CIDR, the load-balancer range and the external
//! IP range to node-a. Everything is deleted when the lab is dropped.
//!
//! [`Lab::bridged`] wires node-a's pods the way Flannel's `bridge` plugin does instead: one
//! bridge `cni0` (10.244.1.1/24, the pods' gateway) with a veth port per pod, each pod in the
//! /24 (no host routes); node-b stays routed.
//!
//! [`Lab::dual_stack`] adds IPv6 alongside, mirroring the IPv4 wiring:
//!
//! ```text
//!   external client ──eth0── node-a ──fab0── node-b
//!   fd00:1::100          fd00:1::10     fd00:2::1/::2
//!                            │ cali*                 │ cali*
//!               pods fd00:10:244:1::/64    pods fd00:10:244:2::/64
//! ```
//!
//! Each pod's /128 is routed to its veth, and its default route goes via `fe80::1`, a fixed
//! link-local address on the node's end of every pod veth (Calico's 169.254.1.1, without
//! needing proxy NDP). Duplicate address detection is off in every namespace of a
//! dual-stack lab, so that addresses are usable at once. The agent is told both families'
//! cluster and service CIDRs ([`NODE_FLAGS_DUAL_STACK`]) and node-a's Node object lists its
//! IPv6 address, which makes it a node-port address.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use proxy_agent::model::fixtures::SliceBuilder;

use crate::{fake_api::FakeApiServer, netns::Netns, traffic::Server};

pub const NODE_A: &str = "node-a";
pub const NODE_B: &str = "node-b";
pub const NODE_A_IP: &str = "192.168.1.10";
pub const EXTERNAL_IP: &str = "192.168.1.100";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The flags that make `proxy-agent` node-a of this lab.
pub const NODE_FLAGS: [&str; 6] = [
    "--node",
    NODE_A,
    "--cluster-cidr",
    CLUSTER_CIDR,
    "--service-cidr",
    SERVICE_CIDR,
];
/// Routed to node-a by the external client, for load-balancer IPs.
pub const LB_RANGE: &str = "198.51.100.0/24";
/// Routed to node-a by the external client, for external IPs.
pub const EXTERNAL_IP_RANGE: &str = "203.0.113.0/24";

/// Node-a's IPv6 address (dual-stack labs only).
pub const NODE_A_IP6: &str = "fd00:1::10";
/// The external client's IPv6 address (dual-stack labs only).
pub const EXTERNAL_IP6: &str = "fd00:1::100";
/// Both pod CIDRs (node-a's `fd00:10:244:1::/64`, node-b's `fd00:10:244:2::/64`).
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/56";
pub const SERVICE_CIDR6: &str = "fd00:10:96::/112";
/// Routed to node-a by the external client, for IPv6 load-balancer IPs.
pub const LB_RANGE6: &str = "2001:db8:51::/64";
/// Routed to node-a by the external client, for IPv6 external IPs.
pub const EXTERNAL_IP_RANGE6: &str = "2001:db8:113::/64";
/// The node side's address on every pod veth, the pods' IPv6 default gateway.
const POD_GATEWAY6: &str = "fe80::1";
/// [`NODE_FLAGS`] of a dual-stack lab: both families' CIDRs, comma-separated.
pub const NODE_FLAGS_DUAL_STACK: [&str; 6] = [
    "--node",
    NODE_A,
    "--cluster-cidr",
    "10.244.0.0/16,fd00:10:244::/56",
    "--service-cidr",
    "10.96.0.0/12,fd00:10:96::/112",
];

/// Which node a pod runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum On {
    NodeA,
    NodeB,
}

/// A pod: its own namespace with one veth to its node.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in a dual-stack lab.
    pub ip6: Option<Ipv6Addr>,
    pub on: On,
}

impl Pod {
    /// The name of the node it runs on, as EndpointSlices and Nodes spell it.
    pub fn node(&self) -> &'static str {
        match self.on {
            On::NodeA => NODE_A,
            On::NodeB => NODE_B,
        }
    }

    /// Its IPv6 address; panics outside a dual-stack lab.
    pub fn ip6(&self) -> Ipv6Addr {
        self.ip6
            .unwrap_or_else(|| panic!("pod {} has no IPv6 address", self.name))
    }
}

/// The lab; see the module docs.
#[derive(Debug)]
pub struct Lab {
    pub node: Netns,
    pub node_b: Netns,
    pub external: Netns,
    pub pods: Vec<Pod>,
    servers: Vec<Server>,
    dir: PathBuf,
    next_host: [u8; 2],
    dual_stack: bool,
    /// Node-a's pods are ports of the bridge `cni0`.
    bridged: bool,
}

fn sysctl(ns: &Netns, key: &str, value: &str) {
    ns.exec_ok("sysctl", &["-qw", &format!("{key}={value}")]);
}

/// Turns duplicate address detection off for interfaces created in `ns` from now on
/// (their automatic link-local addresses included), so that IPv6 works at once.
fn no_dad(ns: &Netns) {
    sysctl(ns, "net.ipv6.conf.default.accept_dad", "0");
    sysctl(ns, "net.ipv6.conf.all.accept_dad", "0");
}

/// Adds an IPv6 address without duplicate address detection.
fn add6(ns: &Netns, addr: &str, dev: &str) {
    ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
}

impl Lab {
    /// Builds the lab's nodes and external client (no pods yet).
    pub fn new(tag: &str) -> Self {
        Self::build(tag, false)
    }

    /// As [`Lab::new`], with node-a's pods on a bridge (see the module docs).
    pub fn bridged(tag: &str) -> Self {
        let mut lab = Self::build(tag, false);
        lab.bridged = true;
        let n = &lab.node;
        n.ip(&["link", "add", "cni0", "type", "bridge"]);
        n.ip(&["addr", "add", "10.244.1.1/24", "dev", "cni0"]);
        n.ip(&["link", "set", "cni0", "up"]);
        lab
    }

    /// As [`Lab::new`], with IPv6 too (see the module docs); pods added later get both
    /// families and serve on both.
    pub fn dual_stack(tag: &str) -> Self {
        Self::build(tag, true)
    }

    fn build(tag: &str, dual_stack: bool) -> Self {
        let new_ns = |suffix: &str| {
            let ns = Netns::new(&format!("{tag}-{suffix}"));
            if dual_stack {
                no_dad(&ns);
            }
            ns
        };
        let node = new_ns("a");
        let node_b = new_ns("b");
        let external = new_ns("x");
        external.veth("eth0", &node, "eth0");
        external.ip(&["addr", "add", &format!("{EXTERNAL_IP}/24"), "dev", "eth0"]);
        node.ip(&["addr", "add", &format!("{NODE_A_IP}/24"), "dev", "eth0"]);
        for range in [SERVICE_CIDR, LB_RANGE, EXTERNAL_IP_RANGE] {
            external.ip(&["route", "add", range, "via", NODE_A_IP]);
        }
        node.veth("fab0", &node_b, "fab0");
        node.ip(&["addr", "add", "192.168.2.1/24", "dev", "fab0"]);
        node_b.ip(&["addr", "add", "192.168.2.2/24", "dev", "fab0"]);
        node.ip(&["route", "add", "10.244.2.0/24", "via", "192.168.2.2"]);
        node_b.ip(&["route", "add", "default", "via", "192.168.2.1"]);
        // Node-a's upstream is the external client's side; besides being realistic, a route
        // to 169.254.1.1 is what lets the node answer its pods' ARP for it by proxy.
        node.ip(&["route", "add", "default", "via", EXTERNAL_IP]);
        for n in [&node, &node_b] {
            sysctl(n, "net.ipv4.ip_forward", "1");
            // Replies of masqueraded or short-circuited flows may come back on another
            // interface than the request left by.
            sysctl(n, "net.ipv4.conf.all.rp_filter", "0");
            sysctl(n, "net.ipv4.conf.default.rp_filter", "0");
        }
        if dual_stack {
            add6(&external, &format!("{EXTERNAL_IP6}/64"), "eth0");
            add6(&node, &format!("{NODE_A_IP6}/64"), "eth0");
            for range in [SERVICE_CIDR6, LB_RANGE6, EXTERNAL_IP_RANGE6] {
                external.ip(&["-6", "route", "add", range, "via", NODE_A_IP6]);
            }
            add6(&node, "fd00:2::1/64", "fab0");
            add6(&node_b, "fd00:2::2/64", "fab0");
            node.ip(&[
                "-6",
                "route",
                "add",
                "fd00:10:244:2::/64",
                "via",
                "fd00:2::2",
            ]);
            node_b.ip(&["-6", "route", "add", "default", "via", "fd00:2::1"]);
            node.ip(&["-6", "route", "add", "default", "via", EXTERNAL_IP6]);
            for n in [&node, &node_b] {
                sysctl(n, "net.ipv6.conf.all.forwarding", "1");
            }
        }
        let dir = std::env::temp_dir().join(format!("{}-manifests", node.name()));
        std::fs::create_dir_all(&dir).expect("creating the manifest directory");
        let lab = Self {
            node,
            node_b,
            external,
            pods: Vec::new(),
            servers: Vec::new(),
            dir,
            next_host: [5, 5],
            dual_stack,
            bridged: false,
        };
        if dual_stack {
            crate::netns::wait_no_tentative(&[&lab.node, &lab.node_b, &lab.external]);
        }
        lab
    }

    /// Whether this lab has IPv6 too.
    pub fn is_dual_stack(&self) -> bool {
        self.dual_stack
    }

    /// The flags that make `proxy-agent` node-a of this lab.
    pub fn node_flags(&self) -> [&'static str; 6] {
        if self.dual_stack {
            NODE_FLAGS_DUAL_STACK
        } else {
            NODE_FLAGS
        }
    }

    /// Adds the lab most tests use: backends `a1` (node-a) and `b1` (node-b) serving 8080,
    /// and a client pod `c1` on node-a.
    #[must_use]
    pub fn with_backends(mut self) -> Self {
        self.add_pod("a1", On::NodeA);
        self.add_pod("b1", On::NodeB);
        self.add_pod("c1", On::NodeA);
        self.serve("a1", 8080);
        self.serve("b1", 8080);
        self
    }

    /// Adds a pod on a node and returns its address.
    pub fn add_pod(&mut self, name: &str, on: On) -> Ipv4Addr {
        let (node, subnet, slot) = match on {
            On::NodeA => (&self.node, 1, 0),
            On::NodeB => (&self.node_b, 2, 1),
        };
        let host = self.next_host[slot];
        self.next_host[slot] += 1;
        let ip = Ipv4Addr::new(10, 244, subnet, host);
        let ns = Netns::new(&format!("{}-p", &node.name()[4..node.name().len().min(12)]));
        if self.dual_stack {
            no_dad(&ns);
        }
        if self.bridged && on == On::NodeA {
            return self.add_bridged_pod(name, ns, host);
        }
        let node_if = format!("cali{subnet}{host:03}");
        ns.veth("eth0", node, &node_if);
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        ns.ip(&[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ]);
        node.ip(&["route", "add", &format!("{ip}/32"), "dev", &node_if]);
        sysctl(node, &format!("net.ipv4.conf.{node_if}.proxy_arp"), "1");
        // Answered at once, as Calico configures its interfaces (the default delays a proxy
        // answer by up to 80 jiffies, 320 ms here, on each first contact).
        sysctl(node, &format!("net.ipv4.neigh.{node_if}.proxy_delay"), "0");
        sysctl(node, &format!("net.ipv4.conf.{node_if}.rp_filter"), "0");
        let ip6 = self.dual_stack.then(|| {
            let ip6 = Ipv6Addr::new(
                0xfd00,
                0x10,
                0x244,
                u16::from(subnet),
                0,
                0,
                0,
                u16::from(host),
            );
            add6(node, &format!("{POD_GATEWAY6}/64"), &node_if);
            add6(&ns, &format!("{ip6}/128"), "eth0");
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                POD_GATEWAY6,
                "dev",
                "eth0",
            ]);
            node.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", &node_if]);
            crate::netns::wait_no_tentative(&[node, &ns]);
            ip6
        });
        self.pods.push(Pod {
            name: name.to_owned(),
            ns,
            ip,
            ip6,
            on,
        });
        ip
    }

    /// A pod of node-a as the `bridge` CNI plugin wires it: a veth port of `cni0`, the
    /// pod's address in the bridge's /24, the bridge as its gateway. One datagram to the
    /// gateway makes the node and the bridge learn the pod's MAC, as any pod's first
    /// packet does.
    fn add_bridged_pod(&mut self, name: &str, ns: Netns, host: u8) -> Ipv4Addr {
        let node = &self.node;
        let ip = Ipv4Addr::new(10, 244, 1, host);
        let port = format!("veth1{host:03}");
        ns.veth("eth0", node, &port);
        node.ip(&["link", "set", &port, "master", "cni0"]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["route", "add", "default", "via", "10.244.1.1"]);
        ns.run(|| {
            if let Ok(s) = std::net::UdpSocket::bind("0.0.0.0:0") {
                let _ = s.send_to(b"hello", "10.244.1.1:9");
            }
        });
        self.pods.push(Pod {
            name: name.to_owned(),
            ns,
            ip,
            ip6: None,
            on: On::NodeA,
        });
        ip
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Pod `name` as an EndpointSlice endpoint, `{addresses: [IP], nodeName: NODE<extra>}`
    /// (`extra`: more flow-mapping entries, e.g. `, conditions: {ready: false}`).
    pub fn endpoint(&self, name: &str, extra: &str) -> String {
        let pod = self.pod(name);
        format!(
            "{{addresses: [{}], nodeName: {}{extra}}}",
            pod.ip,
            pod.node()
        )
    }

    /// An EndpointSlice of `default/<service>` with port `http` on 8080 and the ready
    /// endpoints `pods`, as the API serves it.
    pub fn kube_slice(&self, service: &str, pods: &[&str]) -> EndpointSlice {
        let mut builder = SliceBuilder::new("default", service).port("http", 8080);
        for name in pods {
            let pod = self.pod(name);
            builder = builder.endpoint(&pod.ip.to_string(), pod.node());
        }
        builder.build()
    }

    /// Pod `name`'s IPv6 address as an EndpointSlice endpoint, as [`Lab::endpoint`].
    pub fn endpoint6(&self, name: &str, extra: &str) -> String {
        let pod = self.pod(name);
        format!(
            "{{addresses: [\"{}\"], nodeName: {}{extra}}}",
            pod.ip6(),
            pod.node()
        )
    }

    /// The ready IPv6 endpoints of `pods`, comma-separated, for an `endpoints: [...]` list.
    pub fn endpoints6(&self, pods: &[&str]) -> String {
        pods.iter()
            .map(|p| self.endpoint6(p, ""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The ready endpoints of `pods`, comma-separated, for an `endpoints: [...]` list.
    pub fn endpoints(&self, pods: &[&str]) -> String {
        pods.iter()
            .map(|p| self.endpoint(p, ""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Starts TCP and UDP servers named after the pod on `port` (on its IPv6 address too, in
    /// a dual-stack lab).
    pub fn serve(&mut self, pod: &str, port: u16) {
        let p = self.pod(pod);
        let mut servers = vec![Server::start(
            &p.ns,
            &p.name,
            SocketAddr::from((p.ip, port)),
        )];
        if let Some(ip6) = p.ip6 {
            servers.push(Server::start(&p.ns, &p.name, SocketAddr::from((ip6, port))));
        }
        self.servers.extend(servers);
    }

    /// Stops every server (their ports close).
    pub fn stop_servers(&mut self) {
        self.servers.clear();
    }

    /// The directory the agent reads manifests from.
    pub fn manifests(&self) -> &Path {
        &self.dir
    }

    /// Replaces the manifests with one file of this YAML, after a Node object for node-a.
    pub fn write_manifests(&self, yaml: &str) {
        // Every other file goes; cluster.yaml itself is replaced by the rename below, so that
        // a watcher never sees the directory without it.
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if entry.file_name() != "cluster.yaml" {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let node = if self.dual_stack {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE_A}, labels: {{topology.kubernetes.io/zone: z1}}}}\n\
                 spec: {{podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, \"fd00:10:244:1::/64\"]}}\n\
                 status: {{addresses: [{{type: InternalIP, address: {NODE_A_IP}}}, {{type: InternalIP, address: \"{NODE_A_IP6}\"}}]}}\n---\n"
            )
        } else {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE_A}, labels: {{topology.kubernetes.io/zone: z1}}}}\n\
                 spec: {{podCIDR: 10.244.1.0/24}}\nstatus: {{addresses: [{{type: InternalIP, address: {NODE_A_IP}}}]}}\n---\n"
            )
        };
        // Written to a temporary name and renamed, so that a watcher never reads half a file.
        let tmp = self.dir.join(".cluster.yaml.tmp");
        std::fs::write(&tmp, format!("{node}{yaml}")).unwrap();
        std::fs::rename(&tmp, self.dir.join("cluster.yaml")).unwrap();
    }

    /// A command running `proxy-agent <command>` in node-a's network namespace.
    ///
    /// `nsenter --net`, not `ip netns exec`: the latter also gives the process a private
    /// mount namespace with its own /sys, so the fast path's pins would land in a bpffs that
    /// disappears, with the programs, when the process exits.
    fn agent_command(&self, command: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.node.name()))
            .arg(agent_binary())
            .arg(command);
        cmd
    }

    /// Runs `proxy-agent <args>` inside node-a with this lab's manifests and node flags.
    pub fn agent(&self, command: &str, extra: &[&str]) -> Output {
        let mut cmd = self.agent_command(command);
        if command != "cleanup" {
            cmd.arg("--manifests").arg(&self.dir);
        }
        cmd.args(self.node_flags()).args(extra);
        cmd.output().expect("running proxy-agent")
    }

    /// `proxy-agent apply`, asserting success; returns its stderr.
    pub fn apply(&self, extra: &[&str]) -> String {
        let out = self.agent("apply", extra);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "proxy-agent apply failed:\n{stderr}");
        stderr
    }

    /// Starts `proxy-agent run` inside node-a on this lab's manifests.
    pub fn start_agent(&self, extra: &[&str]) -> Agent {
        let mut cmd = self.agent_command("run");
        cmd.arg("--manifests").arg(&self.dir);
        self.spawn_run(cmd, extra, None)
    }

    /// Starts `proxy-agent run --kubeconfig` inside node-a, reading `api` (which must listen
    /// where node-a reaches it).
    pub fn start_kube_agent(&self, api: &FakeApiServer, extra: &[&str]) -> Agent {
        let kubeconfig = self.dir.with_extension("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let mut cmd = self.agent_command("run");
        cmd.arg("--kubeconfig").arg(&kubeconfig);
        self.spawn_run(cmd, extra, Some(kubeconfig))
    }

    /// Spawns `run` with the node flags and `extra`, logging to a file; `kubeconfig` is
    /// removed with the agent.
    fn spawn_run(&self, mut cmd: Command, extra: &[&str], kubeconfig: Option<PathBuf>) -> Agent {
        let log = self.dir.with_extension("agent.log");
        let file = std::fs::File::create(&log).expect("creating the agent log");
        cmd.args(self.node_flags()).args(extra);
        cmd.stdout(file.try_clone().unwrap()).stderr(file);
        let child = cmd.spawn().expect("starting proxy-agent run");
        Agent {
            child: Some(child),
            log,
            kubeconfig,
        }
    }

    /// The node's nftables ruleset, for failure messages.
    pub fn ruleset(&self) -> String {
        String::from_utf8_lossy(&self.node.exec("nft", &["list", "ruleset"]).stdout).to_string()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `proxy-agent run`; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Agent {
    child: Option<std::process::Child>,
    pub log: PathBuf,
    kubeconfig: Option<PathBuf>,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// Sends a signal to the agent process.
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits");
        // SAFETY: kill has no memory effects; the pid is our own child's.
        unsafe { libc::kill(pid, signal) };
    }

    /// Waits for the agent to exit; its exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child
            .take()
            .expect("agent running")
            .wait()
            .expect("waiting for the agent")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            for _ in 0..50 {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
        if let Some(kubeconfig) = &self.kubeconfig {
            let _ = std::fs::remove_file(kubeconfig);
        }
    }
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The `proxy-agent` binary built next to the test binaries.
///
/// # Panics
/// When it has not been built (`cargo xtask test` builds it first).
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HYBRID_PROXY_AGENT") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // A test runs from target/<profile>/deps/, a binary of this crate from target/<profile>/.
    let dir = exe.parent().expect("binary directory");
    let candidates = [
        dir.join("proxy-agent"),
        dir.parent()
            .map(|d| d.join("proxy-agent"))
            .unwrap_or_default(),
    ];
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "no proxy-agent next to {}: run `cargo build -p proxy-agent` (cargo xtask test does), or set HYBRID_PROXY_AGENT",
            exe.display()
        )
    })
}
