//! kube-proxy's behaviours on the nftables path, with real packets in a namespace lab:
//! `proxy-agent apply` programs node-a, and clients in pods, on the node and outside the
//! cluster see where their connections go.

use std::{collections::BTreeSet, net::SocketAddr};

use hybrid_proxy_tests::{
    lab::{EXTERNAL_IP, Lab, NODE_A_IP},
    privileged,
    traffic::{self, Connection, Outcome},
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A Service manifest. `extra_spec` is inserted into the spec (YAML flow-mapping entries).
fn service(name: &str, cluster_ip: &str, ports: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{clusterIP: {cluster_ip}, ports: [{ports}]{extra_spec}}}\n---\n"
    )
}

/// An EndpointSlice with ready endpoints `(ip, node)` serving port `http` on 8080.
fn slice(service: &str, endpoints: &[(&str, &str)]) -> String {
    slice_with(service, endpoints, "")
}

fn slice_with(service: &str, endpoints: &[(&str, &str)], conditions: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(ip, node)| format!("{{addresses: [{ip}], nodeName: {node}{conditions}}}"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-1, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}, {{name: dns, port: 8080, protocol: UDP}}]\n\
         endpoints: [{}]\n---\n",
        eps.join(", ")
    )
}

const HTTP: &str = "{name: http, port: 80}";

/// A lab with backends `a1` (node-a) and `b1` (node-b) serving 8080, and a client pod `c1`
/// on node-a.
fn lab(tag: &str) -> Lab {
    Lab::new(tag).with_backends()
}

fn ips(lab: &Lab, pods: &[&str]) -> Vec<(String, &'static str)> {
    pods.iter()
        .map(|p| {
            let pod = lab.pod(p);
            (pod.ip.to_string(), pod.node())
        })
        .collect()
}

fn eps<'a>(list: &'a [(String, &'static str)]) -> Vec<(&'a str, &'a str)> {
    list.iter().map(|(ip, node)| (ip.as_str(), *node)).collect()
}

/// Backends seen over `n` TCP requests.
fn backends(
    lab: &Lab,
    from: &hybrid_proxy_tests::netns::Netns,
    dst: &str,
    n: usize,
) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            let outcome = traffic::tcp(from, addr(dst));
            assert!(
                matches!(outcome, Outcome::Reply { .. }),
                "{dst}: {outcome:?}\n{}",
                lab.ruleset()
            );
            outcome.backend().to_owned()
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

macro_rules! require_root {
    ($name:expr) => {
        if !privileged::root_or_skip($name) {
            return;
        }
    };
}

#[test]
fn cluster_ip_spreads_over_endpoints_keeps_client_ips_and_rejects_what_it_must() {
    require_root!("cluster_ip");
    let lab = lab("cip");
    let backends_ab = ips(&lab, &["a1", "b1"]);
    lab.write_manifests(&format!(
        "{}{}{}",
        service(
            "web",
            "10.96.0.10",
            &format!("{HTTP}, {{name: dns, port: 53, protocol: UDP}}"),
            ""
        ),
        slice("web", &eps(&backends_ab)),
        service("empty", "10.96.0.11", HTTP, ""),
    ));
    lab.apply(&[]);
    let c1 = &lab.pod("c1").ns;

    // Port 80 maps to target port 8080 on both endpoints, local and remote.
    assert_eq!(backends(&lab, c1, "10.96.0.10:80", 24), set(&["a1", "b1"]));
    // The client's address is kept.
    assert_eq!(
        traffic::tcp(c1, addr("10.96.0.10:80")).peer().ip(),
        lab.pod("c1").ip
    );
    // UDP.
    let udp = traffic::udp(c1, addr("10.96.0.10:53"));
    assert!(matches!(udp, Outcome::Reply { .. }), "{udp:?}");
    assert_eq!(udp.peer().ip(), lab.pod("c1").ip);
    // An unknown port on a cluster IP and a Service without endpoints are rejected; an
    // unallocated cluster IP is dropped.
    assert_eq!(traffic::tcp(c1, addr("10.96.0.10:81")), Outcome::Refused);
    assert_eq!(traffic::tcp(c1, addr("10.96.0.11:80")), Outcome::Refused);
    assert_eq!(traffic::udp(c1, addr("10.96.0.11:80")), Outcome::Refused);
    assert_eq!(traffic::tcp(c1, addr("10.96.0.99:80")), Outcome::Timeout);
    // From the node itself (host network): masqueraded to the node's address.
    let from_host = traffic::tcp(&lab.node, addr("10.96.0.10:80"));
    assert_ne!(
        from_host.peer().ip().to_string(),
        "10.96.0.10",
        "{from_host:?}"
    );
}

#[test]
fn node_port_from_outside_is_masqueraded() {
    require_root!("node_port");
    let lab = lab("np");
    let backends_ab = ips(&lab, &["a1", "b1"]);
    lab.write_manifests(&format!(
        "{}{}",
        service(
            "web",
            "10.96.0.10",
            "{name: http, port: 80, nodePort: 30080}",
            ", type: NodePort"
        ),
        slice("web", &eps(&backends_ab)),
    ));
    lab.apply(&[]);
    let seen = backends(&lab, &lab.external, &format!("{NODE_A_IP}:30080"), 24);
    assert_eq!(seen, set(&["a1", "b1"]));
    let reply = traffic::tcp(&lab.external, addr(&format!("{NODE_A_IP}:30080")));
    assert_ne!(
        reply.peer().ip().to_string(),
        EXTERNAL_IP,
        "eTP Cluster must masquerade"
    );
}

#[test]
fn external_policy_local_keeps_the_client_ip_uses_local_endpoints_and_drops_without() {
    require_root!("etp_local");
    let lab = lab("etp");
    let backends_ab = ips(&lab, &["a1", "b1"]);
    let svc = service(
        "web",
        "10.96.0.10",
        "{name: http, port: 80, nodePort: 30080}",
        ", type: NodePort, externalTrafficPolicy: Local",
    );
    lab.write_manifests(&format!("{svc}{}", slice("web", &eps(&backends_ab))));
    lab.apply(&[]);
    let np = format!("{NODE_A_IP}:30080");
    assert_eq!(backends(&lab, &lab.external, &np, 12), set(&["a1"]));
    assert_eq!(
        traffic::tcp(&lab.external, addr(&np))
            .peer()
            .ip()
            .to_string(),
        EXTERNAL_IP
    );
    // Pods short-circuit to every endpoint.
    assert_eq!(
        backends(&lab, &lab.pod("c1").ns, &np, 24),
        set(&["a1", "b1"])
    );

    // Only a remote endpoint left: external clients are dropped.
    let remote = ips(&lab, &["b1"]);
    lab.write_manifests(&format!("{svc}{}", slice("web", &eps(&remote))));
    lab.apply(&[]);
    assert_eq!(traffic::tcp(&lab.external, addr(&np)), Outcome::Timeout);
}

#[test]
fn load_balancer_ip_honours_source_ranges_and_external_ips_are_served() {
    require_root!("lb_source_ranges");
    let lab = lab("lb");
    let backends_ab = ips(&lab, &["a1", "b1"]);
    let manifests = |ranges: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: default}}\n\
             spec: {{type: LoadBalancer, clusterIP: 10.96.0.10, ports: [{{name: http, port: 80, nodePort: 30080}}], \
             loadBalancerSourceRanges: [{ranges}], externalIPs: [203.0.113.9]}}\n\
             status: {{loadBalancer: {{ingress: [{{ip: 198.51.100.7}}]}}}}\n---\n{}",
            slice("lb", &eps(&backends_ab))
        )
    };
    lab.write_manifests(&manifests("192.168.1.0/24"));
    lab.apply(&[]);
    assert_eq!(
        backends(&lab, &lab.external, "198.51.100.7:80", 24),
        set(&["a1", "b1"])
    );
    // External IPs are not subject to source ranges.
    assert_eq!(
        backends(&lab, &lab.external, "203.0.113.9:80", 24),
        set(&["a1", "b1"])
    );

    lab.write_manifests(&manifests("10.0.0.0/8"));
    lab.apply(&[]);
    assert_eq!(
        traffic::tcp(&lab.external, addr("198.51.100.7:80")),
        Outcome::Timeout
    );
    // Node ports are not filtered by source ranges either.
    assert!(matches!(
        traffic::tcp(&lab.external, addr(&format!("{NODE_A_IP}:30080"))),
        Outcome::Reply { .. }
    ));
}

#[test]
fn client_ip_affinity_sticks_to_one_endpoint() {
    require_root!("affinity");
    let lab = lab("aff");
    let backends_ab = ips(&lab, &["a1", "b1"]);
    lab.write_manifests(&format!(
        "{}{}",
        service("web", "10.96.0.10", HTTP, ", sessionAffinity: ClientIP"),
        slice("web", &eps(&backends_ab)),
    ));
    lab.apply(&[]);
    let seen = backends(&lab, &lab.pod("c1").ns, "10.96.0.10:80", 16);
    assert_eq!(
        seen.len(),
        1,
        "affinity should pin c1 to one endpoint: {seen:?}"
    );
    // Another client may land elsewhere, but also sticks.
    let other = backends(&lab, &lab.external, "10.96.0.10:80", 16);
    assert_eq!(other.len(), 1, "{other:?}");
}

#[test]
fn internal_policy_local_and_terminating_fallback() {
    require_root!("itp_local");
    let lab = lab("itp");
    let backends_ab = ips(&lab, &["a1", "b1"]);
    lab.write_manifests(&format!(
        "{}{}",
        service("web", "10.96.0.10", HTTP, ", internalTrafficPolicy: Local"),
        slice("web", &eps(&backends_ab)),
    ));
    lab.apply(&[]);
    assert_eq!(
        backends(&lab, &lab.pod("c1").ns, "10.96.0.10:80", 12),
        set(&["a1"])
    );

    // Every endpoint terminating but still serving: traffic still flows to them.
    lab.write_manifests(&format!(
        "{}{}",
        service("web", "10.96.0.10", HTTP, ""),
        slice_with(
            "web",
            &eps(&backends_ab),
            ", conditions: {ready: false, serving: true, terminating: true}"
        ),
    ));
    lab.apply(&[]);
    assert_eq!(
        backends(&lab, &lab.pod("c1").ns, "10.96.0.10:80", 24),
        set(&["a1", "b1"])
    );
    // Terminating and not serving: no endpoints.
    lab.write_manifests(&format!(
        "{}{}",
        service("web", "10.96.0.10", HTTP, ""),
        slice_with(
            "web",
            &eps(&backends_ab),
            ", conditions: {ready: false, serving: false, terminating: true}"
        ),
    ));
    lab.apply(&[]);
    assert_eq!(
        traffic::tcp(&lab.pod("c1").ns, addr("10.96.0.10:80")),
        Outcome::Refused
    );
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_masqueraded() {
    require_root!("hairpin");
    let lab = lab("hp");
    let only_a1 = ips(&lab, &["a1"]);
    lab.write_manifests(&format!(
        "{}{}",
        service("web", "10.96.0.10", HTTP, ""),
        slice("web", &eps(&only_a1))
    ));
    lab.apply(&[]);
    let reply = traffic::tcp(&lab.pod("a1").ns, addr("10.96.0.10:80"));
    assert_eq!(reply.backend(), "a1", "{reply:?}\n{}", lab.ruleset());
    assert_ne!(
        reply.peer().ip(),
        lab.pod("a1").ip,
        "hairpin traffic must be masqueraded"
    );
}

#[test]
fn endpoint_updates_deletes_and_cleanup_take_effect() {
    require_root!("updates");
    let lab = lab("upd");
    let c1 = &lab.pod("c1").ns;
    let a1 = ips(&lab, &["a1"]);
    let b1 = ips(&lab, &["b1"]);
    lab.write_manifests(&format!(
        "{}{}",
        service("web", "10.96.0.10", HTTP, ""),
        slice("web", &eps(&a1))
    ));
    lab.apply(&[]);
    assert_eq!(backends(&lab, c1, "10.96.0.10:80", 6), set(&["a1"]));

    lab.write_manifests(&format!(
        "{}{}",
        service("web", "10.96.0.10", HTTP, ""),
        slice("web", &eps(&b1))
    ));
    lab.apply(&[]);
    assert_eq!(backends(&lab, c1, "10.96.0.10:80", 6), set(&["b1"]));

    // The Service is deleted: its cluster IP is now unallocated and dropped.
    lab.write_manifests("");
    lab.apply(&[]);
    assert_eq!(traffic::tcp(c1, addr("10.96.0.10:80")), Outcome::Timeout);

    let out = lab.agent("cleanup", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables =
        String::from_utf8_lossy(&lab.node.exec_ok("nft", &["list", "tables"]).stdout).to_string();
    assert!(!tables.contains("hybrid-proxy"), "{tables}");
}

#[test]
fn an_established_connection_survives_repeated_apply_runs() {
    require_root!("survives_apply");
    let lab = lab("est");
    let backends_ab = ips(&lab, &["a1", "b1"]);
    let web = format!(
        "{}{}",
        service("web", "10.96.0.10", HTTP, ""),
        slice("web", &eps(&backends_ab))
    );
    lab.write_manifests(&web);
    lab.apply(&[]);
    let mut conn = Connection::open(&lab.pod("c1").ns, addr("10.96.0.10:80"));
    let first = conn.request();
    let backend = first.backend().to_owned();
    for i in 0..5 {
        // Each run changes something else, and one run changes nothing.
        let other = if i % 2 == 0 {
            service("other", &format!("10.96.0.{}", 20 + i), HTTP, "")
        } else {
            String::new()
        };
        lab.write_manifests(&format!("{web}{other}"));
        lab.apply(&[]);
        let reply = conn.request();
        assert_eq!(reply.backend(), backend, "run {i}: {reply:?}");
    }
}

#[test]
fn the_lab_routes_pods_and_nodes_without_the_proxy() {
    require_root!("lab_routing");
    let lab = lab("net");
    let a1 = format!("{}:8080", lab.pod("a1").ip);
    let b1 = format!("{}:8080", lab.pod("b1").ip);
    // Pod addresses are not routed from outside the cluster, as in most clusters.
    for (from, name) in [(&lab.pod("c1").ns, "c1"), (&lab.node, "node")] {
        for (dst, want) in [(&a1, "a1"), (&b1, "b1")] {
            let outcome = traffic::tcp(from, addr(dst));
            assert!(
                matches!(&outcome, Outcome::Reply { backend, .. } if backend == want),
                "{name} -> {want}: {outcome:?}"
            );
        }
    }
}

#[test]
fn verify_finds_nothing_after_apply_and_names_what_changed_behind_its_back() {
    require_root!("verify");
    let lab = lab("vfy");
    let backends_ab = ips(&lab, &["a1", "b1"]);
    lab.write_manifests(&format!(
        "{}{}{}",
        service("web", "10.96.0.10", HTTP, ", sessionAffinity: ClientIP"),
        slice("web", &eps(&backends_ab)),
        service(
            "np",
            "10.96.0.11",
            "{name: http, port: 80, nodePort: 30080}",
            ", type: NodePort, externalTrafficPolicy: Local"
        ),
    ));
    lab.apply(&[]);
    // The affinity set gets a client, which verify must not count as a difference.
    assert!(matches!(
        traffic::tcp(&lab.pod("c1").ns, addr("10.96.0.10:80")),
        Outcome::Reply { .. }
    ));

    let verify = || {
        lab.node.run(|| {
            let config = proxy_agent::config::Config {
                node_name: Some("node-a".into()),
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
                detect_local: proxy_agent::plan::DetectLocal::ClusterCidr,
                ..proxy_agent::config::Config::default()
            };
            let (state, _) =
                proxy_agent::source::files::load_dir(lab.manifests(), "node-a").unwrap();
            let settings = config.plan_settings(proxy_agent::host::local_addresses().unwrap());
            let plan = proxy_agent::plan::compute(&state, &settings);
            proxy_agent::nft::verify(
                &mut proxy_agent::nft::NftCli::default(),
                &plan,
                config.masquerade_mark(),
            )
            .unwrap()
        })
    };
    let clean = verify();
    assert!(clean.is_empty(), "{clean:#?}\n{}", lab.ruleset());

    lab.node.exec_ok(
        "nft",
        &[
            "delete",
            "element",
            "ip",
            "hybrid-proxy",
            "cluster-ips",
            "{ 10.96.0.11 }",
        ],
    );
    lab.node
        .exec_ok("nft", &["add", "chain", "ip", "hybrid-proxy", "intruder"]);
    let found: Vec<String> = verify().iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            "nftables ip: chain intruder should not be there",
            "nftables ip: cluster-ips lacks 10.96.0.11",
        ],
        "{found:#?}"
    );
}
