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

use std::{
    net::{Ipv4Addr, SocketAddr},
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
}

fn sysctl(ns: &Netns, key: &str, value: &str) {
    ns.exec_ok("sysctl", &["-qw", &format!("{key}={value}")]);
}

impl Lab {
    /// Builds the lab's nodes and external client (no pods yet).
    pub fn new(tag: &str) -> Self {
        let node = Netns::new(&format!("{tag}-a"));
        let node_b = Netns::new(&format!("{tag}-b"));
        let external = Netns::new(&format!("{tag}-x"));
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
        let dir = std::env::temp_dir().join(format!("{}-manifests", node.name()));
        std::fs::create_dir_all(&dir).expect("creating the manifest directory");
        Self {
            node,
            node_b,
            external,
            pods: Vec::new(),
            servers: Vec::new(),
            dir,
            next_host: [5, 5],
        }
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
        self.pods.push(Pod {
            name: name.to_owned(),
            ns,
            ip,
            on,
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

    /// The ready endpoints of `pods`, comma-separated, for an `endpoints: [...]` list.
    pub fn endpoints(&self, pods: &[&str]) -> String {
        pods.iter()
            .map(|p| self.endpoint(p, ""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Starts TCP and UDP servers named after the pod on `port`.
    pub fn serve(&mut self, pod: &str, port: u16) {
        let p = self.pod(pod);
        let server = Server::start(&p.ns, &p.name, SocketAddr::from((p.ip, port)));
        self.servers.push(server);
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
        let node = format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE_A}, labels: {{topology.kubernetes.io/zone: z1}}}}\n\
             spec: {{podCIDR: 10.244.1.0/24}}\nstatus: {{addresses: [{{type: InternalIP, address: {NODE_A_IP}}}]}}\n---\n"
        );
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
        cmd.args(NODE_FLAGS).args(extra);
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
        cmd.args(NODE_FLAGS).args(extra);
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
