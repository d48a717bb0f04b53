//! `proxy-agent run --kubeconfig` end to end: the agent runs inside the lab's node-a, reads a
//! fake API server bound inside that namespace, and programs nftables that real packets cross.
//! Changes made through the API take effect within 2 s; an API server restarted without its
//! history (410) is re-listed without ever interrupting traffic to unchanged Services.

use std::{
    net::{SocketAddr, TcpListener},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hybrid_proxy_tests::{
    fake_api::FakeApiServer,
    lab::{Agent, Lab, NODE_A, NODE_A_IP, On, wait_for},
    privileged,
    traffic::{self, Outcome},
};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use proxy_agent::model::fixtures::{NodeBuilder, ServiceBuilder};

/// How long a change made through the API may take to reach the packets.
const CHANGE: Duration = Duration::from_secs(2);

/// How long the agent may take to come back to the API after an outage: its backoff
/// (client-go's, 0.8 s doubling) has grown for a few seconds by then.
const RECONNECT: Duration = Duration::from_secs(20);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn service(name: &str, cluster_ip: &str) -> Service {
    ServiceBuilder::cluster_ip("default", name, cluster_ip)
        .port("http", 80)
        .build()
}

fn node_a() -> Node {
    NodeBuilder::new(NODE_A)
        .internal_ip(NODE_A_IP)
        .pod_cidr("10.244.1.0/24")
        .zone("z1")
        .build()
}

/// The backend `service` answers from pod c1 with, if it answers.
fn backend(lab: &Lab, service: &str) -> Option<String> {
    match traffic::tcp(&lab.pod("c1").ns, addr(service)) {
        Outcome::Reply { backend, .. } => Some(backend),
        _ => None,
    }
}

/// Waits up to `within` for `service` to be answered by one of `want` (or, with `want` empty,
/// to stop being answered); fails with the agent's log otherwise.
fn expect_served(lab: &Lab, agent: &Agent, service: &str, want: &[&str], within: Duration) {
    let done = wait_for(within, || {
        let got = backend(lab, service);
        let ok = match &got {
            Some(b) => want.contains(&b.as_str()),
            None => want.is_empty(),
        };
        ok.then_some(())
    });
    assert!(
        done.is_some(),
        "{service}: wanted {want:?} within {within:?}, last got {:?}\n--- agent log ---\n{}\n--- \
         ruleset ---\n{}",
        backend(lab, service),
        agent.log_text(),
        lab.ruleset()
    );
}

#[test]
fn the_agent_follows_the_api_and_rides_out_an_api_server_restart() {
    if !privileged::root_or_skip("agent_kube") {
        return;
    }
    let mut lab = Lab::new("kapi");
    lab.add_pod("a1", On::NodeA);
    lab.add_pod("b1", On::NodeB);
    lab.add_pod("c1", On::NodeA);
    lab.serve("a1", 8080);
    lab.serve("b1", 8080);

    // The API server listens on node-a's loopback, where the agent looks for it.
    let api = lab.node.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding inside node-a");
        FakeApiServer::start_on(listener)
    });
    api.apply(&node_a());
    api.apply(&service("steady", "10.96.0.11"));
    api.apply(&lab.kube_slice("steady", &["b1"]));
    api.apply(
        &ServiceBuilder::cluster_ip("default", "lb", "10.96.0.20")
            .port("http", 80)
            .node_port(30080)
            .load_balancer(&["198.51.100.7"])
            .external_policy_local()
            .health_check_node_port(32100)
            .build(),
    );
    api.apply(&lab.kube_slice("lb", &["a1"]));
    let agent = lab.start_kube_agent(&api, &["--log", "info,proxy_agent::source=debug"]);
    expect_served(
        &lab,
        &agent,
        "10.96.0.11:80",
        &["b1"],
        Duration::from_secs(10),
    );

    // A Service and its slice created through the API serve within 2 s.
    api.apply(&service("web", "10.96.0.10"));
    api.apply(&lab.kube_slice("web", &["a1"]));
    expect_served(&lab, &agent, "10.96.0.10:80", &["a1"], CHANGE);

    // An endpoint change takes effect.
    api.apply(&lab.kube_slice("web", &["b1"]));
    expect_served(&lab, &agent, "10.96.0.10:80", &["b1"], CHANGE);

    // A deleted Service stops being served.
    api.delete::<EndpointSlice>(Some("default"), "web-1");
    api.delete::<Service>(Some("default"), "web");
    expect_served(&lab, &agent, "10.96.0.10:80", &[], CHANGE);

    invalid_services_are_reported(&api, &agent);
    an_api_server_restart_interrupts_nothing(&lab, &api, &agent);
    health_and_metrics_answer(&lab);
    drop(agent);
}

/// A Service the agent cannot program is reported as an Event on it.
fn invalid_services_are_reported(api: &FakeApiServer, agent: &Agent) {
    let bad = api.apply(
        &ServiceBuilder::cluster_ip("default", "bad", "10.96.0.30")
            .port("http", 80)
            .protocol("ICMP")
            .build(),
    );
    let event = wait_for(CHANGE * 5, || {
        api.events()
            .into_iter()
            .find(|e| e["regarding"]["name"] == "bad")
    })
    .unwrap_or_else(|| panic!("no event about Service bad\n{}", agent.log_text()));
    assert_eq!(event["reason"], "InvalidService");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reportingController"], "hybrid-proxy");
    assert_eq!(event["reportingInstance"], NODE_A);
    assert_eq!(
        event["regarding"]["uid"].as_str(),
        bad.metadata.uid.as_deref()
    );
    assert!(
        event["note"].as_str().unwrap_or_default().contains("ICMP"),
        "{event}"
    );
}

/// The API server goes away and comes back without its history, with changes made while it
/// was down. Meanwhile an unchanged Service is probed continuously: it must never stop.
fn an_api_server_restart_interrupts_nothing(lab: &Lab, api: &FakeApiServer, agent: &Agent) {
    api.apply(&service("gone", "10.96.0.12"));
    api.apply(&lab.kube_slice("gone", &["a1"]));
    expect_served(lab, agent, "10.96.0.12:80", &["a1"], CHANGE);
    let expired_before = api.requests::<Service>().expired_watches;
    let probing = AtomicBool::new(true);
    let failures = Mutex::new(Vec::new());
    let probes = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let start = Instant::now();
            let mut count = 0u32;
            while probing.load(Ordering::Relaxed) {
                let outcome = traffic::tcp(&lab.pod("c1").ns, addr("10.96.0.11:80"));
                if outcome.backend_name() != Some("b1") {
                    failures.lock().unwrap().push((start.elapsed(), outcome));
                }
                count += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            count
        });

        // Whatever happens below, the prober stops, or the scope would wait for it forever.
        let stop_probing = StopOnDrop(&probing);
        api.stop();
        api.delete::<EndpointSlice>(Some("default"), "gone-1");
        api.delete::<Service>(Some("default"), "gone");
        api.apply(&service("fresh", "10.96.0.13"));
        api.apply(&lab.kube_slice("fresh", &["b1"]));
        // Down long enough for the agent to notice and back off.
        std::thread::sleep(Duration::from_secs(2));
        // "gone" is still served: losing the API removes nothing.
        assert_eq!(backend(lab, "10.96.0.12:80").as_deref(), Some("a1"));
        api.compact();
        api.restart();

        expect_served(lab, agent, "10.96.0.13:80", &["b1"], RECONNECT);
        expect_served(lab, agent, "10.96.0.12:80", &[], CHANGE);
        // A little more probing after the re-list's full sync.
        std::thread::sleep(Duration::from_secs(1));
        drop(stop_probing);
        prober.join().unwrap()
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        probes > 20 && failures.is_empty(),
        "the unchanged Service failed {} of {probes} probes: {failures:?}\n{}",
        failures.len(),
        agent.log_text()
    );
    assert!(
        api.requests::<Service>().expired_watches > expired_before,
        "the agent's watch was answered 410 Gone and it listed again"
    );
}

/// Health, metrics and the health-check node port.
fn health_and_metrics_answer(lab: &Lab) {
    for path in ["/healthz", "/livez"] {
        let (status, body) =
            traffic::http_get(&lab.node, addr("127.0.0.1:10256"), path).expect(path);
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, metrics) =
        traffic::http_get(&lab.node, addr("127.0.0.1:10249"), "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
        "hybrid_proxy_services",
        "hybrid_proxy_rejected_objects",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let hc = addr(&format!("{NODE_A_IP}:32100"));
    let (status, body) = traffic::http_get(&lab.external, hc, "/").expect("health-check port");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"localEndpoints\": 1"), "{body}");
}

/// Clears the flag when dropped, panics included.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

trait BackendName {
    fn backend_name(&self) -> Option<&str>;
}

impl BackendName for Outcome {
    fn backend_name(&self) -> Option<&str> {
        match self {
            Outcome::Reply { backend, .. } => Some(backend),
            _ => None,
        }
    }
}
