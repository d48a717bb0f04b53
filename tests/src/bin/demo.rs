//! `cargo xtask demo`: hybrid-proxy's main job on a lab built in network namespaces.
//!
//! Builds a node, a second node, pods and an external client, writes example manifests,
//! programs the node with `proxy-agent apply`, sends real TCP and UDP traffic, and prints
//! which backend served each kind of request, what client address it saw, and which path
//! served it: first with acceleration off (nftables), then with the eBPF fast path on.
//! Everything it created is removed at the end.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, path::Path, process::ExitCode};

use hybrid_proxy_tests::{
    lab::{EXTERNAL_IP, Lab, NODE_A_IP, On},
    netns::Netns,
    traffic::{self, Outcome},
};
use proxy_agent::bpf::inspect;
use proxy_common::StatIndex;

const REQUESTS: usize = 20;

fn manifests(lab: &Lab) -> String {
    let slice = |svc: &str, ports: &str, pods: &[&str]| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {svc}-1, namespace: default, labels: {{kubernetes.io/service-name: {svc}}}}}\n\
             addressType: IPv4\nports: [{ports}]\nendpoints: [{}]\n---\n",
            lab.endpoints(pods)
        )
    };
    let mut y = String::new();
    y.push_str("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\n");
    y.push_str(&slice(
        "web",
        "{name: http, port: 8080}",
        &["web-a", "web-b"],
    ));
    y.push_str("apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: default}\nspec: {clusterIP: 10.96.0.53, ports: [{name: dns, port: 53, protocol: UDP, targetPort: 8080}]}\n---\n");
    y.push_str(&slice(
        "dns",
        "{name: dns, port: 8080, protocol: UDP}",
        &["dns-a", "dns-b"],
    ));
    y.push_str("apiVersion: v1\nkind: Service\nmetadata: {name: shop, namespace: default}\nspec: {type: LoadBalancer, clusterIP: 10.96.0.20, externalTrafficPolicy: Local, healthCheckNodePort: 32100, ports: [{name: http, port: 80, nodePort: 30080, targetPort: 8080}]}\nstatus: {loadBalancer: {ingress: [{ip: 198.51.100.7}]}}\n---\n");
    y.push_str(&slice(
        "shop",
        "{name: http, port: 8080}",
        &["shop-a", "shop-b"],
    ));
    y.push_str("apiVersion: v1\nkind: Service\nmetadata: {name: sticky, namespace: default}\nspec: {clusterIP: 10.96.0.30, sessionAffinity: ClientIP, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\n");
    y.push_str(&slice(
        "sticky",
        "{name: http, port: 8080}",
        &["web-a", "web-b"],
    ));
    y
}

/// One kind of request the demo makes.
struct Row {
    from: &'static str,
    to: &'static str,
    udp: bool,
    dst: SocketAddr,
}

fn rows() -> Vec<Row> {
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    vec![
        Row {
            from: "pod client (node-a)",
            to: "web ClusterIP 10.96.0.10:80",
            udp: false,
            dst: a("10.96.0.10:80"),
        },
        Row {
            from: "pod client (node-a)",
            to: "dns ClusterIP 10.96.0.53:53",
            udp: true,
            dst: a("10.96.0.53:53"),
        },
        Row {
            from: "pod client (node-a)",
            to: "sticky ClusterIP (ClientIP affinity)",
            udp: false,
            dst: a("10.96.0.30:80"),
        },
        Row {
            from: "node-a itself",
            to: "web ClusterIP 10.96.0.10:80",
            udp: false,
            dst: a("10.96.0.10:80"),
        },
        Row {
            from: "external client",
            to: "shop LB 198.51.100.7:80 (eTP Local)",
            udp: false,
            dst: a("198.51.100.7:80"),
        },
        Row {
            from: "external client",
            to: "shop NodePort 192.168.1.10:30080",
            udp: false,
            dst: a("192.168.1.10:30080"),
        },
        Row {
            from: "pod client (node-a)",
            to: "shop LB 198.51.100.7:80 (short-circuit)",
            udp: false,
            dst: a("198.51.100.7:80"),
        },
        Row {
            from: "pod client (node-a)",
            to: "web ClusterIP, unknown port 81",
            udp: false,
            dst: a("10.96.0.10:81"),
        },
    ]
}

fn source<'a>(lab: &'a Lab, from: &str) -> &'a Netns {
    match from {
        "node-a itself" => &lab.node,
        "external client" => &lab.external,
        _ => &lab.pod("client").ns,
    }
}

/// Sends the row's requests and summarises where they went.
fn run_row(lab: &Lab, row: &Row) -> (String, String) {
    let ns = source(lab, row.from);
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    let mut peers: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..REQUESTS {
        let outcome = if row.udp {
            traffic::udp(ns, row.dst)
        } else {
            traffic::tcp(ns, row.dst)
        };
        match outcome {
            Outcome::Reply { backend, peer } => {
                *served.entry(backend).or_default() += 1;
                *peers.entry(peer.ip().to_string()).or_default() += 1;
            }
            Outcome::Refused => *failures.entry("refused (reject)".into()).or_default() += 1,
            Outcome::Timeout => *failures.entry("timed out (drop)".into()).or_default() += 1,
            Outcome::Error(e) => *failures.entry(e).or_default() += 1,
        }
    }
    let mut result: Vec<String> = served.iter().map(|(b, n)| format!("{b} x{n}")).collect();
    result.extend(failures.iter().map(|(f, n)| format!("{f} x{n}")));
    let seen = peers.keys().cloned().collect::<Vec<_>>().join(", ");
    (result.join(", "), seen)
}

/// New flows the fast path pinned at `pin` has started so far.
/// The fast path's new flows and redirected packets so far.
fn fast_flows(pin: &Path) -> (u64, u64) {
    match inspect::read(pin) {
        Ok(Some(view)) => {
            let stat = |s: StatIndex| {
                view.stats
                    .iter()
                    .find(|(i, _)| *i == s)
                    .map_or(0, |(_, n)| *n)
            };
            (stat(StatIndex::NewFlow), stat(StatIndex::Redirected))
        }
        _ => (0, 0),
    }
}

/// Sends every row's requests and prints where they went. With a fast path pinned at `pin`,
/// its new-flow counter says which requests it served (each request is a new flow), and its
/// redirect counter whether they skipped the node's stack; the rest went through nftables.
fn table(lab: &Lab, pin: Option<&Path>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<22} {:<42} {:<5} {:<28} {:<26} path",
        "from", "to", "proto", "served by", "source seen"
    );
    for row in rows() {
        let before = pin.map(fast_flows);
        let (served, seen) = run_row(lab, &row);
        let (fast, redirected) = pin.zip(before).map_or((0, 0), |(p, b)| {
            let now = fast_flows(p);
            (now.0.saturating_sub(b.0), now.1.saturating_sub(b.1))
        });
        // Pod flows skip the node's stack (redirect) unless something there needs it.
        let hook = if row.from == "external client" {
            "XDP"
        } else if redirected > 0 {
            "TC, redirect"
        } else {
            "TC, stack"
        };
        let path = match usize::try_from(fast).unwrap_or(usize::MAX) {
            0 => "nftables".to_owned(),
            n if n >= REQUESTS => format!("fast path ({hook})"),
            n => format!("fast path ({hook}) x{n}, nftables x{}", REQUESTS - n),
        };
        let _ = writeln!(
            out,
            "  {:<22} {:<42} {:<5} {:<28} {:<26} {}",
            row.from,
            row.to,
            if row.udp { "UDP" } else { "TCP" },
            served,
            seen,
            path
        );
    }
    out
}

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo builds network namespaces and programs nftables: run it as root");
        return ExitCode::FAILURE;
    }
    println!(
        "hybrid-proxy demo: building a lab in network namespaces (node-a, node-b, pods, an external client)"
    );
    let mut lab = Lab::new("demo");
    for (pod, on) in [
        ("web-a", On::NodeA),
        ("web-b", On::NodeB),
        ("dns-a", On::NodeA),
        ("dns-b", On::NodeB),
        ("shop-a", On::NodeA),
        ("shop-b", On::NodeB),
        ("client", On::NodeA),
    ] {
        lab.add_pod(pod, on);
        if pod != "client" {
            lab.serve(pod, 8080);
        }
    }
    lab.write_manifests(&manifests(&lab));
    println!(
        "  node-a {NODE_A_IP}, external client {EXTERNAL_IP}, pod client {}",
        lab.pod("client").ip
    );
    println!("  manifests: {}", lab.manifests().display());
    for pod in &lab.pods {
        println!("  pod {:<7} {:<12} on {}", pod.name, pod.ip, pod.node());
    }

    println!("\n== proxy-agent apply (acceleration off): every Service through nftables");
    print!("{}", indent(&lab.apply(&[])));
    println!("{}", table(&lab, None));

    let config = lab.manifests().with_extension("config.yaml");
    let pin = Path::new("/sys/fs/bpf/hpt-demo");
    std::fs::write(
        &config,
        format!(
            "acceleration:\n  mode: all\n  interfaces: [eth0, fab0]\n  pinPath: {}\n",
            pin.display()
        ),
    )
    .unwrap();
    println!("== proxy-agent apply --acceleration all: hot Services from the eBPF fast path");
    let out = lab.agent("apply", &["--config", config.to_str().unwrap()]);
    print!("{}", indent(&String::from_utf8_lossy(&out.stderr)));
    println!("{}", table(&lab, Some(pin)));

    let out = lab.agent("cleanup", &["--config", config.to_str().unwrap()]);
    print!("{}", indent(&String::from_utf8_lossy(&out.stderr)));
    let _ = std::fs::remove_file(&config);
    drop(lab);
    println!("lab removed");
    ExitCode::SUCCESS
}

fn indent(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let _ = writeln!(out, "  | {line}");
    }
    out
}
