//! Security: what the running agent exposes.
//!
//! - `/healthz`, `/livez`, `/metrics` and the health-check node ports answer GET on their
//!   paths and nothing else: other methods get 405, other paths 404, and none of it changes
//!   anything.
//! - The agent listens on the configured addresses and nowhere else.
//! - Metrics on every address need `exposeMetricsOnAllAddresses: true`.
//!
//! Elsewhere: the capabilities the agent keeps after start-up (`NET_ADMIN`, `BPF`, `PERFMON`) are
//! checked in `agent_files.rs` (this file adds the inheritable and ambient sets), the
//! DaemonSet's capabilities in `capabilities.rs`, and the manifests' least privilege (RBAC,
//! host mounts, security contexts) in `deploy.rs`.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

use hybrid_proxy_tests::{
    lab::{Agent, Lab, NODE_A_IP, On, wait_for},
    netns::Netns,
    privileged,
    reliability::{metric, record},
    traffic::{self, TIMEOUT},
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An eTP-Local LoadBalancer Service with health-check node port 32100 and its endpoint a1
/// on node-a.
fn manifests(lab: &Lab) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: default}}\n\
         spec: {{type: LoadBalancer, clusterIP: 10.96.0.20, externalTrafficPolicy: Local, healthCheckNodePort: 32100, \
         ports: [{{name: http, port: 80, nodePort: 30080}}]}}\n\
         status: {{loadBalancer: {{ingress: [{{ip: 198.51.100.7}}]}}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: lb-1, namespace: default, labels: {{kubernetes.io/service-name: lb}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
         endpoints: [{{addresses: [{}], nodeName: node-a}}]\n---\n",
        lab.pod("a1").ip
    )
}

fn lab(tag: &str) -> Lab {
    let mut lab = Lab::new(tag);
    lab.add_pod("a1", On::NodeA);
    lab.add_pod("c1", On::NodeA);
    lab.serve("a1", 8080);
    lab.write_manifests(&manifests(&lab));
    lab
}

/// Waits until the agent serves the Service and its health-check port says 200.
fn wait_ready(lab: &Lab, agent: &Agent) {
    let hc = addr(&format!("{NODE_A_IP}:32100"));
    let ready = wait_for(Duration::from_secs(5), || {
        matches!(traffic::http_get(&lab.external, hc, "/"), Ok((200, _))).then_some(())
    });
    assert!(ready.is_some(), "not ready\n{}", agent.log_text());
}

/// One HTTP/1.1 request with a small body from inside `ns`; the status code.
fn request(ns: &Netns, to: SocketAddr, method: &str, path: &str) -> u16 {
    ns.run(|| {
        let mut conn = TcpStream::connect_timeout(&to, TIMEOUT)
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        let body = "{\"spec\": {\"replicas\": 0}}";
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        let _ = conn.read_to_string(&mut text);
        text.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{method} {to}{path}: not an HTTP response: {text:?}"))
    })
}

/// What the node's programmed state looks like, for before/after comparisons: our maps
/// (not the generation, which a periodic sync may bump) and the sync counters.
fn node_state(lab: &Lab) -> String {
    let mut state = String::new();
    for map in ["service-ips", "service-nodeports", "endpoints-tcp"] {
        let out = lab
            .node
            .exec_ok("nft", &["list", "map", "ip", "hybrid-proxy", map]);
        state.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let (_, metrics) = traffic::http_get(&lab.node, addr("127.0.0.1:10249"), "/metrics").unwrap();
    for series in [
        "hybrid_proxy_syncs_total{kind=\"full\"}",
        "hybrid_proxy_syncs_total{kind=\"partial\"}",
        "hybrid_proxy_services",
    ] {
        let _ = writeln!(state, "{series} {:?}", metric(&metrics, series));
    }
    state
}

#[test]
fn health_and_metrics_endpoints_expose_no_control() {
    if !privileged::root_or_skip("security_endpoints") {
        return;
    }
    let lab = lab("sech");
    let mut agent = lab.start_agent(&[]);
    wait_ready(&lab, &agent);
    let before = node_state(&lab);

    let node = &lab.node;
    let external = &lab.external;
    let healthz = addr("127.0.0.1:10256");
    let metrics = addr("127.0.0.1:10249");
    let health_check = addr(&format!("{NODE_A_IP}:32100"));
    // (who asks, where, the paths the server knows, whether other paths are unknown to it:
    // a health-check node port answers every path, as kube-proxy's does).
    let servers: [(&Netns, SocketAddr, &[&str], bool); 4] = [
        (node, healthz, &["/healthz", "/livez"], true),
        (
            external,
            addr(&format!("{NODE_A_IP}:10256")),
            &["/healthz"],
            true,
        ),
        (node, metrics, &["/metrics"], true),
        (external, health_check, &["/", "/healthz"], false),
    ];
    let unknown_paths = [
        "/",
        "/config",
        "/configz",
        "/debug/pprof/",
        "/quitquitquit",
        "/sync",
        "/metrics/reset",
        "/healthz/../metrics",
        "/%2e%2e/etc/passwd",
    ];
    let mut sent = 0u64;
    let mut wrong = Vec::new();
    for (ns, to, paths, strict) in servers {
        for path in paths {
            for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
                sent += 1;
                let status = request(ns, to, method, path);
                if status != 405 {
                    wrong.push(format!("{method} {to}{path}: {status}, want 405"));
                }
            }
            sent += 1;
            let status = request(ns, to, "GET", path);
            if status != 200 {
                wrong.push(format!("GET {to}{path}: {status}, want 200"));
            }
        }
        if strict {
            for path in unknown_paths.iter().filter(|p| !paths.contains(p)) {
                for method in ["GET", "POST"] {
                    sent += 1;
                    let status = request(ns, to, method, path);
                    if status != 404 {
                        wrong.push(format!("{method} {to}{path}: {status}, want 404"));
                    }
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = node_state(&lab);
    record(
        "security: hostile HTTP requests to health/metrics",
        sent,
        sent,
        wrong.len() as u64,
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(before, after, "the requests changed the node's state");
    assert!(agent.is_running(), "{}", agent.log_text());
    assert!(matches!(
        traffic::http_get(node, healthz, "/healthz"),
        Ok((200, _))
    ));
}

/// The TCP sockets listening in the agent's namespace that the agent's process holds, and
/// every UDP socket it holds, from /proc/<pid>/net and /proc/<pid>/fd.
fn sockets_of(pid: u32) -> (BTreeSet<SocketAddr>, BTreeSet<SocketAddr>) {
    let inodes: BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading the agent's fds")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().to_string();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let table = |file: &str, listening_only: bool| -> BTreeSet<SocketAddr> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap();
        text.lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
                if listening_only && *state != "0A" {
                    return None;
                }
                if !inodes.contains(&inode.parse().ok()?) {
                    return None;
                }
                parse_proc_addr(local)
            })
            .collect()
    };
    let mut tcp = table("tcp", true);
    tcp.extend(table("tcp6", true));
    let mut udp = table("udp", false);
    udp.extend(table("udp6", false));
    (tcp, udp)
}

/// `0100007F:2829` (IPv4) or 32 hex digits and a port (IPv6), as /proc/net prints them: each
/// 32-bit word of the address in the host's byte order, the port in hex.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::new();
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A capability set from /proc/<pid>/status (`CapInh:` ...).
fn capability_set(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

#[test]
fn the_agent_listens_only_on_the_configured_addresses() {
    if !privileged::root_or_skip("security_listeners") {
        return;
    }
    let lab = lab("secl");
    let config = lab.manifests().with_extension("listen-config.yaml");
    let cases: [(&str, &[&str]); 2] = [
        // The defaults: health on every address, metrics on loopback.
        ("", &["0.0.0.0:10256", "127.0.0.1:10249"]),
        (
            "healthzBindAddress: 192.168.1.10:10266\nmetricsBindAddress: 127.0.0.1:10259\n",
            &["192.168.1.10:10266", "127.0.0.1:10259"],
        ),
    ];
    let mut checked = 0u64;
    let mut unexpected = 0u64;
    for (yaml, configured) in cases {
        std::fs::write(&config, yaml).unwrap();
        let mut agent = lab.start_agent(&["--config", config.to_str().unwrap()]);
        wait_ready(&lab, &agent);
        let pid = agent.pid();
        // The health-check node port listens on the node-port addresses (the primary one).
        let want: BTreeSet<SocketAddr> = configured
            .iter()
            .copied()
            .chain([&*format!("{NODE_A_IP}:32100")])
            .map(addr)
            .collect();
        let (tcp, udp) = sockets_of(pid);
        checked += 1;
        unexpected += tcp.symmetric_difference(&want).count() as u64 + udp.len() as u64;
        assert_eq!(tcp, want, "listening TCP sockets with config {yaml:?}");
        assert!(udp.is_empty(), "the agent holds UDP sockets: {udp:?}");
        // Besides the effective, permitted and bounding sets (agent_files.rs): nothing to
        // hand down to the programs it runs.
        assert_eq!(capability_set(pid, "CapInh:"), 0);
        assert_eq!(capability_set(pid, "CapAmb:"), 0);
        assert!(agent.is_running(), "{}", agent.log_text());
    }
    let _ = std::fs::remove_file(&config);
    record(
        "security: listening sockets match the configuration",
        0,
        checked,
        unexpected,
    );
}

#[test]
fn metrics_on_every_address_need_an_explicit_opt_in() {
    if !privileged::root_or_skip("security_metrics_opt_in") {
        return;
    }
    let lab = lab("secm");
    let config = lab.manifests().with_extension("metrics-config.yaml");

    std::fs::write(&config, "metricsBindAddress: 0.0.0.0:10249\n").unwrap();
    let mut agent = lab.start_agent(&["--config", config.to_str().unwrap()]);
    let exited = wait_for(Duration::from_secs(5), || {
        (!agent.is_running()).then_some(())
    });
    assert!(
        exited.is_some(),
        "the agent started with metrics on every address and no opt-in\n{}",
        agent.log_text()
    );
    let status = agent.wait();
    let log = agent.log_text();
    assert!(!status.success(), "{status}\n{log}");
    assert!(
        log.contains("metricsBindAddress") && log.contains("exposeMetricsOnAllAddresses"),
        "the refusal names the key and the opt-in:\n{log}"
    );
    drop(agent);

    std::fs::write(
        &config,
        "metricsBindAddress: 0.0.0.0:10249\nexposeMetricsOnAllAddresses: true\n",
    )
    .unwrap();
    let agent = lab.start_agent(&["--config", config.to_str().unwrap()]);
    wait_ready(&lab, &agent);
    // Now scrapeable from outside the node.
    let scraped = traffic::http_get(
        &lab.external,
        addr(&format!("{NODE_A_IP}:10249")),
        "/metrics",
    );
    assert!(
        matches!(&scraped, Ok((200, body)) if body.contains("hybrid_proxy_services")),
        "{scraped:?}\n{}",
        agent.log_text()
    );
    let _ = std::fs::remove_file(&config);
    record("security: metrics on all addresses need opt-in", 1, 1, 0);
}
