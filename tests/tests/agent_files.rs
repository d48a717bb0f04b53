//! `proxy-agent run --manifests DIR` as a daemon: it picks up edits, serves health and
//! metrics, answers health-check node ports, and leaves the rules in place on SIGTERM.

use std::{net::SocketAddr, time::Duration};

use hybrid_proxy_tests::{
    lab::{Lab, NODE_A_IP, On, wait_for},
    privileged,
    traffic::{self, Outcome},
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn manifests(lab: &Lab, endpoints: &[&str], lb_endpoints: &[&str]) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: default}}\n\
         spec: {{type: LoadBalancer, clusterIP: 10.96.0.20, externalTrafficPolicy: Local, healthCheckNodePort: 32100, \
         ports: [{{name: http, port: 80, nodePort: 30080}}]}}\n\
         status: {{loadBalancer: {{ingress: [{{ip: 198.51.100.7}}]}}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: lb-1, namespace: default, labels: {{kubernetes.io/service-name: lb}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n---\n",
        lab.endpoints(endpoints),
        lab.endpoints(lb_endpoints)
    )
}

/// The backend that answers, once the answer is a reply from one of `want`.
fn served_by(lab: &Lab, want: &[&str]) -> Option<String> {
    match traffic::tcp(&lab.pod("c1").ns, addr("10.96.0.10:80")) {
        Outcome::Reply { backend, .. } if want.contains(&backend.as_str()) => Some(backend),
        _ => None,
    }
}

#[test]
fn the_daemon_follows_manifest_edits_and_reports_health() {
    if !privileged::root_or_skip("daemon_files") {
        return;
    }
    let mut lab = Lab::new("run");
    lab.add_pod("a1", On::NodeA);
    lab.add_pod("b1", On::NodeB);
    lab.add_pod("c1", On::NodeA);
    lab.serve("a1", 8080);
    lab.serve("b1", 8080);
    lab.write_manifests(&manifests(&lab, &["a1"], &["a1"]));
    let mut agent = lab.start_agent(&[]);

    // Served within 2 s of start.
    assert!(
        wait_for(Duration::from_secs(2), || served_by(&lab, &["a1"])).is_some(),
        "not served within 2 s\n{}",
        agent.log_text()
    );
    // After start-up the agent keeps only what proxying needs: NET_ADMIN (12), PERFMON (38)
    // and BPF (39), in its effective and bounding sets.
    let want: u64 = (1 << 12) | (1 << 38) | (1 << 39);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(value, want, "{field} {value:#x}\n{}", agent.log_text());
    }

    // An edit takes effect within 2 s (and leaves the LB Service with a remote endpoint
    // only).
    lab.write_manifests(&manifests(&lab, &["b1"], &["b1"]));
    assert!(
        wait_for(Duration::from_secs(2), || served_by(&lab, &["b1"])).is_some(),
        "edit not picked up within 2 s\n{}",
        agent.log_text()
    );

    // /healthz and /livez answer 200 with kube-proxy's fields; /metrics has its names.
    for path in ["/healthz", "/livez"] {
        let (status, body) =
            traffic::http_get(&lab.node, addr("127.0.0.1:10256"), path).expect(path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(
            body.contains("lastUpdated") && body.contains("currentTime"),
            "{body}"
        );
    }
    let (status, metrics) =
        traffic::http_get(&lab.node, addr("127.0.0.1:10249"), "/metrics").unwrap();
    assert_eq!(status, 200);
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\"} 1",
        "hybrid_proxy_services 2",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    // Metrics listen on loopback only (the default), not on the node's address.
    assert!(traffic::http_get(&lab.node, addr(&format!("{NODE_A_IP}:10249")), "/metrics").is_err());

    // The health-check node port: 503 without local endpoints, 200 once there is one.
    let hc = addr(&format!("{NODE_A_IP}:32100"));
    let (status, body) = traffic::http_get(&lab.external, hc, "/").expect("health-check port");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"localEndpoints\": 0"), "{body}");
    lab.write_manifests(&manifests(&lab, &["b1"], &["a1"]));
    let answered = wait_for(Duration::from_secs(2), || {
        match traffic::http_get(&lab.external, hc, "/") {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    });
    let body = answered
        .unwrap_or_else(|| panic!("health-check port never turned 200\n{}", agent.log_text()));
    assert!(
        body.contains("\"localEndpoints\": 1") && body.contains("\"name\": \"lb\""),
        "{body}"
    );

    // SIGTERM: the agent exits and the rules keep serving.
    agent.signal(libc::SIGTERM);
    let status = agent.wait();
    assert!(status.success(), "{status}");
    assert_eq!(
        traffic::tcp(&lab.pod("c1").ns, addr("10.96.0.10:80")).backend(),
        "b1"
    );
}

#[test]
fn a_configuration_edit_applies_without_a_restart() {
    if !privileged::root_or_skip("daemon_reload") {
        return;
    }
    let mut lab = Lab::new("rld");
    lab.add_pod("a1", On::NodeA);
    lab.add_pod("c1", On::NodeA);
    lab.serve("a1", 8080);
    lab.write_manifests(&manifests(&lab, &["a1"], &["a1"]));
    let config = lab.manifests().with_extension("agent-config.yaml");
    std::fs::write(&config, "masqueradeAll: false\n").unwrap();
    let mut agent = lab.start_agent(&["--config", config.to_str().unwrap()]);
    let c1 = lab.pod("c1").ip;
    let peer = || match traffic::tcp(&lab.pod("c1").ns, addr("10.96.0.10:80")) {
        Outcome::Reply { peer, .. } => Some(peer.ip()),
        _ => None,
    };
    assert_eq!(
        wait_for(Duration::from_secs(2), peer),
        Some(c1.into()),
        "{}",
        agent.log_text()
    );

    // The file changes: masquerading everything applies within a couple of seconds.
    std::fs::write(&config, "masqueradeAll: true\n").unwrap();
    let masqueraded = wait_for(Duration::from_secs(3), || {
        peer().filter(|p| *p != std::net::IpAddr::from(c1))
    });
    assert!(
        masqueraded.is_some(),
        "reload not applied\n{}",
        agent.log_text()
    );

    // An invalid file is refused and the running configuration kept; SIGHUP works too.
    std::fs::write(&config, "masqueradeAll: sometimes\n").unwrap();
    agent.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(600));
    assert!(agent.is_running(), "{}", agent.log_text());
    assert!(
        agent.log_text().contains("configuration is invalid"),
        "{}",
        agent.log_text()
    );
    assert_ne!(peer(), Some(c1.into()));
    let _ = std::fs::remove_file(&config);
}
