//! The capabilities `deploy/daemonset.yaml` grants are enough: with exactly those (and root's
//! uid, as in the pod), the agent programs nftables and loads, attaches and fills the eBPF
//! fast path, preflight passes, and cleanup removes it all; with `BPF` taken away, the fast
//! path reports itself unavailable (so the test does tell the difference).
//!
//! The agent runs in a namespace the test creates, entered with `nsenter --net` (not
//! `ip netns exec`, which would mount a fresh /sys and hide the host's bpffs).

use std::{path::PathBuf, process::Output};

use hybrid_proxy_tests::{lab::agent_binary, netns::Netns, privileged};
use k8s_openapi::api::apps::v1::DaemonSet;

/// The capabilities the DaemonSet adds to a container, as `setpriv` spells them.
fn granted(container: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let ds: DaemonSet =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).expect("a DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    let c = containers
        .into_iter()
        .find(|c| c.name == container)
        .unwrap_or_else(|| panic!("no container {container}"));
    c.security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
        .iter()
        .map(|cap| cap.to_lowercase())
        .collect()
}

/// Runs the agent in `ns` with only `caps` (bounding set; uid 0 as in the pod).
fn agent_with(ns: &Netns, caps: &[String], args: &[&str]) -> Output {
    let bounding = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .args([
            "setpriv",
            &format!("--bounding-set={bounding}"),
            "--inh-caps=-all",
        ])
        .arg(agent_binary())
        .args(args)
        .output()
        .expect("running nsenter")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const MANIFESTS: &str = r"apiVersion: v1
kind: Node
metadata: {name: node-a}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.77.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, type: NodePort, ports: [{name: http, port: 80, nodePort: 30080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.1.5], nodeName: node-a}]
";

/// Removes what a failed run left: the agent's rules and pins, and the files.
struct Cleanup<'a> {
    ns: &'a Netns,
    dir: PathBuf,
    config: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let all = ["net_admin", "bpf", "perfmon", "sys_admin"].map(str::to_owned);
        let _ = agent_with(self.ns, &all, &["cleanup", "--config", &self.config]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_daemon_sets_capabilities_are_enough_for_nftables_and_the_fast_path() {
    const TEST: &str = "the_daemon_sets_capabilities_are_enough_for_nftables_and_the_fast_path";
    if !privileged::root_or_skip(TEST) {
        return;
    }
    let bpffs = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "));
    if !bpffs {
        privileged::kernel_lacks(TEST, "bpffs at /sys/fs/bpf", &"not mounted");
        return;
    }
    let ns = Netns::new("caps");
    let veth = "link add eth0 type veth peer name eth1";
    ns.exec_ok("ip", &veth.split(' ').collect::<Vec<_>>());
    for args in [
        "link set eth0 up",
        "link set eth1 up",
        "addr add 192.168.77.1/24 dev eth0",
    ] {
        ns.exec_ok("ip", &args.split(' ').collect::<Vec<_>>());
    }
    let dir = std::env::temp_dir().join(ns.name());
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("manifests/cluster.yaml"), MANIFESTS).unwrap();
    let pin = format!("/sys/fs/bpf/{}", ns.name());
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "clusterCIDR: 10.244.0.0/16\nacceleration: {{mode: all, interfaces: [eth0], pinPath: {pin}}}\n"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let manifests = dir.join("manifests");
    let manifests = manifests.to_str().unwrap();
    let _cleanup = Cleanup {
        ns: &ns,
        dir: dir.clone(),
        config: config.clone(),
    };
    let common = ["--config", config.as_str(), "--node", "node-a"];
    let apply: Vec<&str> = ["apply", "--manifests", manifests]
        .into_iter()
        .chain(common)
        .collect();

    // Without BPF the fast path cannot load, and says so; nftables still serves.
    let weaker: Vec<String> = granted("agent")
        .into_iter()
        .filter(|c| c != "bpf")
        .collect();
    let out = agent_with(&ns, &weaker, &apply);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the eBPF fast path is unavailable"),
        "{}",
        text(&out)
    );

    let agent = granted("agent");
    let out = agent_with(&ns, &agent, &apply);
    let said = text(&out);
    assert!(out.status.success(), "apply with {agent:?} failed: {said}");
    assert!(
        said.contains("fast path (all): 1 of 1 service ports accelerated"),
        "with {agent:?}: {said}"
    );
    assert!(PathBuf::from(&pin).is_dir(), "nothing pinned at {pin}");

    let preflight: Vec<&str> = ["preflight", "--json"].into_iter().chain(common).collect();
    let out = agent_with(&ns, &granted("preflight"), &preflight);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON from preflight ({e}): {}", text(&out)));
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["status"], "pass", "{report:#}");
    let checked: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(checked.contains(&"interface eth0"), "{checked:?}");

    let out = agent_with(&ns, &agent, &["cleanup", "--config", &config]);
    assert!(out.status.success(), "cleanup failed: {}", text(&out));
    assert!(!PathBuf::from(&pin).exists(), "{pin} left behind");
    let tables = ns.exec_ok("nft", &["list", "tables"]);
    assert!(
        String::from_utf8_lossy(&tables.stdout).trim().is_empty(),
        "{}",
        String::from_utf8_lossy(&tables.stdout)
    );
}
