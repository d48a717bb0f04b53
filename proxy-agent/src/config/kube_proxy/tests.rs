use std::{net::SocketAddr, time::Duration};

use super::*;

/// What Kubespray's kubeadm template writes with its defaults (mode ipvs), booleans in
/// Ansible's spelling.
const KUBESPRAY: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: "0.0.0.0"
clientConnection:
  acceptContentTypes:
  burst: 10
  contentType: application/vnd.kubernetes.protobuf
  kubeconfig:
  qps: 5
clusterCIDR: "10.233.64.0/18"
configSyncPeriod: 15m0s
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
enableProfiling: False
healthzBindAddress: "0.0.0.0:10256"
hostnameOverride: "node1"
iptables:
  masqueradeAll: False
  masqueradeBit: 14
  minSyncPeriod: 0s
  syncPeriod: 30s
ipvs:
  excludeCIDRs: []
  minSyncPeriod: 0s
  scheduler: rr
  syncPeriod: 30s
  strictARP: False
  tcpTimeout: 0s
  tcpFinTimeout: 0s
  udpTimeout: 0s
metricsBindAddress: "127.0.0.1:10249"
mode: ipvs
nodePortAddresses: []
oomScoreAdj: -999
portRange:
featureGates:
  InPlacePodVerticalScaling: true
"#;

fn keys(ignored: &[Ignored]) -> Vec<&str> {
    ignored.iter().map(|i| i.key.as_str()).collect()
}

#[test]
fn a_kubespray_config_maps_with_ipvs_mode_semantics() {
    let (c, ignored) = parse(KUBESPRAY, "kube-proxy/config.conf").unwrap();
    assert_eq!(c.node_name.as_deref(), Some("node1"));
    assert_eq!(
        c.cluster_cidrs,
        vec!["10.233.64.0/18".parse::<IpNet>().unwrap()]
    );
    assert_eq!(c.detect_local, DetectLocal::ClusterCidr);
    assert!(!c.masquerade_all);
    assert_eq!(c.masquerade_mark(), 0x4000);
    // ipvs mode syncs on ipvs.*; 0s is kube-proxy's "default", 1s.
    assert_eq!(c.sync_period, Duration::from_secs(30));
    assert_eq!(c.min_sync_period, Duration::from_secs(1));
    assert_eq!(
        c.healthz_bind_address,
        Some("0.0.0.0:10256".parse().unwrap())
    );
    assert_eq!(
        c.metrics_bind_address,
        Some("127.0.0.1:10249".parse().unwrap())
    );
    assert!(!c.expose_metrics_on_all_addresses);
    // An empty list in ipvs mode: every local address, as kube-proxy served them.
    assert_eq!(
        c.node_port_addresses,
        NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()])
    );
    assert_eq!(
        keys(&ignored),
        [
            "mode",
            "ipvs.scheduler",
            "clientConnection.contentType",
            "clientConnection.qps",
            "clientConnection.burst",
            "conntrack.maxPerCore",
            "conntrack.min",
            "conntrack.tcpEstablishedTimeout",
            "conntrack.tcpCloseWaitTimeout",
            "featureGates",
            "oomScoreAdj",
            "configSyncPeriod",
        ]
    );
    let max = &ignored[5];
    assert_eq!(max.value, "32768");
    assert!(max.reason.contains("nf_conntrack"), "{max}");
    assert_eq!(
        ignored[9].to_string(),
        "featureGates = {\"InPlacePodVerticalScaling\":true} is ignored: kube-proxy's feature \
         gates do not apply to this agent"
    );
}

/// `kubectl -n kube-system get cm kube-proxy` on a kubeadm cluster in nftables mode: every
/// field present, nearly all at their zero value.
const KUBEADM_NFTABLES: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: nftables
nftables:
  masqueradeAll: true
  masqueradeBit: 15
  minSyncPeriod: 2s
  syncPeriod: 1m0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

#[test]
fn a_kubeadm_nftables_config_reads_the_nftables_section_and_ignores_only_what_is_set() {
    let (c, ignored) = parse(KUBEADM_NFTABLES, "t").unwrap();
    assert_eq!(c.node_name, None);
    assert_eq!(c.cluster_cidrs.len(), 2);
    assert_eq!(c.detect_local, DetectLocal::ClusterCidr);
    assert!(c.masquerade_all);
    assert_eq!(c.masquerade_bit, 15);
    assert_eq!(c.sync_period, Duration::from_mins(1));
    assert_eq!(c.min_sync_period, Duration::from_secs(2));
    // Empty addresses are kube-proxy's defaults.
    assert_eq!(
        c.healthz_bind_address,
        Some("0.0.0.0:10256".parse().unwrap())
    );
    assert_eq!(
        c.metrics_bind_address,
        Some("127.0.0.1:10249".parse().unwrap())
    );
    assert_eq!(c.node_port_addresses, NodePortAddresses::Primary);
    assert_eq!(keys(&ignored), ["clientConnection.kubeconfig"]);
    assert!(ignored[0].reason.contains("--kubeconfig"));
}

#[test]
fn from_yaml_recognises_the_kind_and_gives_the_same_configuration() {
    let (via_parse, _) = parse(KUBEADM_NFTABLES, "t").unwrap();
    assert_eq!(Config::from_yaml(KUBEADM_NFTABLES, "t").unwrap(), via_parse);
    let (via_parse, _) = parse(KUBESPRAY, "t").unwrap();
    assert_eq!(Config::from_yaml(KUBESPRAY, "t").unwrap(), via_parse);
}

#[test]
fn the_mode_picks_the_section() {
    let yaml = |mode: &str| {
        format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             mode: {mode:?}\n\
             iptables: {{masqueradeBit: 10, syncPeriod: 10s, localhostNodePorts: true}}\n\
             ipvs: {{syncPeriod: 20s, strictARP: true}}\n\
             nftables: {{masqueradeBit: 12, syncPeriod: 40s}}\n"
        )
    };
    for (mode, bit, sync, ignored_keys) in [
        ("", 10, 10, vec!["iptables.localhostNodePorts"]),
        (
            "iptables",
            10,
            10,
            vec!["mode", "iptables.localhostNodePorts"],
        ),
        (
            "ipvs",
            10,
            20,
            vec!["mode", "iptables.localhostNodePorts", "ipvs.strictARP"],
        ),
        ("nftables", 12, 40, vec![]),
    ] {
        let (c, ignored) = parse(&yaml(mode), "t").unwrap();
        assert_eq!(c.masquerade_bit, bit, "{mode:?}");
        assert_eq!(c.sync_period, Duration::from_secs(sync), "{mode:?}");
        assert_eq!(keys(&ignored), ignored_keys, "{mode:?}");
    }
}

#[test]
fn bind_addresses_follow_kube_proxys_defaults() {
    let head = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n";
    let (c, ignored) = parse(&format!("{head}bindAddress: '::'\n"), "t").unwrap();
    assert_eq!(c.healthz_bind_address, Some("[::]:10256".parse().unwrap()));
    assert_eq!(c.metrics_bind_address, Some("[::1]:10249".parse().unwrap()));
    assert!(ignored.is_empty());
    let (c, ignored) = parse(
        &format!("{head}bindAddress: 192.168.1.10\nhealthzBindAddress: 127.0.0.1\nmetricsBindAddress: 0.0.0.0:9999\n"),
        "t",
    )
    .unwrap();
    assert_eq!(
        c.healthz_bind_address,
        Some("127.0.0.1:10256".parse().unwrap())
    );
    let metrics: SocketAddr = "0.0.0.0:9999".parse().unwrap();
    assert_eq!(c.metrics_bind_address, Some(metrics));
    // kube-proxy serves on every address when told to; that is consent enough.
    assert!(c.expose_metrics_on_all_addresses);
    assert_eq!(keys(&ignored), ["bindAddress"]);
}

#[test]
fn node_port_address_keywords() {
    let head = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n";
    let read = |list: &str| parse(&format!("{head}nodePortAddresses: {list}\n"), "t");
    assert_eq!(
        read("[primary]").unwrap().0.node_port_addresses,
        NodePortAddresses::Primary
    );
    assert_eq!(
        read("[all]").unwrap().0.node_port_addresses,
        NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()])
    );
    let (c, ignored) = read("[localhost, 192.168.0.0/16]").unwrap();
    assert_eq!(
        c.node_port_addresses,
        NodePortAddresses::Cidrs(vec!["192.168.0.0/16".parse().unwrap()])
    );
    assert_eq!(keys(&ignored), ["nodePortAddresses"]);
    let err = read("[primary, 10.0.0.0/8]").unwrap_err();
    assert_eq!(err.errors[0].key, "nodePortAddresses");
}

#[test]
fn problems_are_reported_together_and_unknown_fields_only_warn() {
    let err = parse(
        "apiVersion: kubeproxy.config.k8s.io/v1beta9\nkind: KubeProxyConfiguration\n\
         mode: kernelspace\nclusterCIDR: 10.0.0.0/33\n\
         nftables: {masqueradeBit: 40}\nmetricsBindAddress: nowhere\n",
        "cm/kube-proxy",
    )
    .unwrap_err();
    let problems: Vec<&str> = err.errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        problems,
        [
            "apiVersion",
            "mode",
            "metricsBindAddress",
            "nftables.masqueradeBit",
            "clusterCIDR"
        ],
        "{err}"
    );
    let (_, ignored) = parse(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         mode: nftables\nsomeFutureField: {enabled: true}\nnftables: {futureKnob: 3}\n",
        "t",
    )
    .unwrap();
    assert_eq!(keys(&ignored), ["nftables.futureKnob", "someFutureField"]);
}

#[test]
fn our_own_format_is_not_mistaken_for_kube_proxys() {
    let err = parse("clusterCIDR: 10.0.0.0/8\n", "t").unwrap_err();
    assert_eq!(err.errors[0].key, "kind");
    // And a kube-proxy document is not read as ours (which would reject its keys).
    assert!(Config::from_yaml(KUBESPRAY, "t").is_ok());
}
