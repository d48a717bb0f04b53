use std::time::Duration;

use super::*;

#[test]
fn an_empty_file_is_the_defaults() {
    assert_eq!(Config::from_yaml("", "t").unwrap(), Config::default());
    assert_eq!(Config::from_yaml("{}", "t").unwrap(), Config::default());
}

#[test]
fn every_key_parses() {
    let c = Config::from_yaml(
        r"
nodeName: node-a
clusterCIDR: 10.244.0.0/16,fd00:244::/56
serviceCIDRs: [10.96.0.0/12]
detectLocalMode: NodeCIDR
nodePortAddresses: [192.168.0.0/16]
masqueradeAll: true
masqueradeBit: 15
syncPeriod: 1m
minSyncPeriod: 500ms
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: ''
cleanupOnExit: true
conntrack:
  udpStaleEntryCleanup: false
acceleration:
  mode: annotated
  interfaces: [eth0]
  podInterfaces: ['cali*']
  pinPath: /sys/fs/bpf/hp
  xdpMode: generic
  auto:
    promoteAbovePps: 5000
    demoteBelowPps: 100
    minDwell: 1m
    maxServices: 64
",
        "t",
    )
    .unwrap();
    assert_eq!(c.node_name.as_deref(), Some("node-a"));
    assert_eq!(c.cluster_cidrs.len(), 2);
    assert_eq!(c.detect_local, DetectLocal::NodeCidr);
    assert_eq!(
        c.node_port_addresses,
        NodePortAddresses::Cidrs(vec!["192.168.0.0/16".parse().unwrap()])
    );
    assert!(c.masquerade_all);
    assert_eq!(c.masquerade_mark(), 0x8000);
    assert_eq!(c.sync_period, Duration::from_mins(1));
    assert_eq!(c.min_sync_period, Duration::from_millis(500));
    assert_eq!(
        c.healthz_bind_address,
        Some("127.0.0.1:10256".parse().unwrap())
    );
    assert_eq!(c.metrics_bind_address, None);
    assert!(c.cleanup_on_exit);
    assert!(!c.udp_stale_entry_cleanup);
    assert_eq!(c.acceleration.mode, AccelerationMode::Annotated);
    assert_eq!(c.acceleration.pod_interfaces, vec!["cali*".to_owned()]);
    assert_eq!(c.acceleration.xdp_mode, XdpMode::Generic);
    assert_eq!(c.acceleration.auto.max_services, 64);
}

#[test]
fn cluster_cidr_turns_on_the_cluster_cidr_detector() {
    let c = Config::from_yaml("clusterCIDR: 10.244.0.0/16", "t").unwrap();
    assert_eq!(c.detect_local, DetectLocal::ClusterCidr);
}

#[test]
fn all_problems_are_reported_together_with_their_keys() {
    let err = Config::from_yaml(
        r"
clusterCIDR: 10.244.0.0/33
masqueradeAll: maybe
syncPeriod: soon
bogus: 1
acceleration:
  mode: turbo
  extra: true
",
        "agent.yaml",
    )
    .unwrap_err();
    let keys: Vec<&str> = err.errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "clusterCIDR",
            "masqueradeAll",
            "syncPeriod",
            "acceleration.mode",
            "acceleration.extra",
            "bogus"
        ],
        "{err}"
    );
    let text = err.to_string();
    assert!(text.starts_with("6 problem(s) in agent.yaml:"), "{text}");
    assert!(
        text.contains("acceleration.mode: \"turbo\" is not one of off, annotated, auto, all"),
        "{text}"
    );
}

#[test]
fn metrics_on_every_address_must_be_asked_for() {
    let err = Config::from_yaml("metricsBindAddress: 0.0.0.0:10249", "t").unwrap_err();
    assert_eq!(err.errors[0].key, "metricsBindAddress");
    let ok = Config::from_yaml(
        "metricsBindAddress: 0.0.0.0:10249\nexposeMetricsOnAllAddresses: true",
        "t",
    );
    assert!(ok.is_ok());
}

#[test]
fn relations_between_keys_are_checked() {
    for (yaml, key) in [
        ("detectLocalMode: ClusterCIDR", "detectLocalMode"),
        (
            "detectLocalMode: BridgeInterface",
            "detectLocal.bridgeInterface",
        ),
        ("syncPeriod: 1s\nminSyncPeriod: 2s", "minSyncPeriod"),
        (
            "nodePortAddresses: [primary, 10.0.0.0/8]",
            "nodePortAddresses",
        ),
        (
            "acceleration: {auto: {promoteAbovePps: 10, demoteBelowPps: 10}}",
            "acceleration.auto.demoteBelowPps",
        ),
    ] {
        let err = Config::from_yaml(yaml, "t").unwrap_err();
        assert_eq!(err.errors[0].key, key, "{yaml}: {err}");
    }
}

#[test]
fn log_format_and_forwarding_parse_and_bad_values_name_their_key() {
    let c = Config::from_yaml("logFormat: json\nacceleration: {forwarding: stack}\n", "t").unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.acceleration.forwarding, ForwardingMode::Stack);
    assert_eq!(
        Config::default().acceleration.forwarding,
        ForwardingMode::Auto
    );
    let e = Config::from_yaml(
        "logFormat: xml\nacceleration: {forwarding: sideways}\n",
        "t",
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("logFormat") && text.contains("xml"), "{text}");
    assert!(
        text.contains("acceleration.forwarding") && text.contains("one of auto, redirect, stack"),
        "{text}"
    );
}
