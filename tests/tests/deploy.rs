//! The manifests in `deploy/` and its Dockerfile: every document parses into its Kubernetes
//! type (and back, unchanged: a misspelt field would be dropped), and the invariants that
//! keep the agent least-privileged and working hold. No cluster, no root.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use k8s_openapi::{
    Resource,
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use proxy_agent::config::Config;
use serde::{Deserialize as _, de::DeserializeOwned};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML document of every `deploy/*.yaml`, with the file it came from.
fn documents() -> Vec<(String, serde_yaml::Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("reading deploy/")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a manifest");
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

/// The manifests by kind, each parsed into its type; panics on an unknown kind, a document
/// that does not parse, or one that loses a field on the way (a misspelt key).
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

fn typed<T: DeserializeOwned + serde::Serialize>(file: &str, value: &serde_yaml::Value) -> T {
    let parsed: T = serde_yaml::from_value(value.clone()).unwrap_or_else(|e| {
        panic!(
            "{file}: does not parse as {}: {e}",
            std::any::type_name::<T>()
        )
    });
    let original = serde_json::to_value(value).expect("YAML as JSON");
    let round_trip = serde_json::to_value(&parsed).expect("serialising");
    let mut lost = Vec::new();
    differences(&original, &round_trip, String::new(), &mut lost);
    assert!(
        lost.is_empty(),
        "{file}: fields lost or changed in parsing (misspelt keys?): {lost:?}"
    );
    parsed
}

/// Paths where `back` (the parsed object, serialised again) differs from `original`.
fn differences(
    original: &serde_json::Value,
    back: &serde_json::Value,
    path: String,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => differences(value, other, here, out),
                    None => out.push(here),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(x, y, format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a != b => out.push(path),
        _ => {}
    }
}

fn manifests() -> Manifests {
    let mut m = Manifests {
        namespaces: Vec::new(),
        service_accounts: Vec::new(),
        cluster_roles: Vec::new(),
        bindings: Vec::new(),
        config_maps: Vec::new(),
        daemon_sets: Vec::new(),
    };
    for (file, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            Namespace::KIND => m.namespaces.push(typed(&file, &doc)),
            ServiceAccount::KIND => m.service_accounts.push(typed(&file, &doc)),
            ClusterRole::KIND => m.cluster_roles.push(typed(&file, &doc)),
            ClusterRoleBinding::KIND => m.bindings.push(typed(&file, &doc)),
            ConfigMap::KIND => m.config_maps.push(typed(&file, &doc)),
            DaemonSet::KIND => m.daemon_sets.push(typed(&file, &doc)),
            other => panic!("{file}: unexpected kind {other:?}"),
        }
    }
    m
}

const NAMESPACE: &str = "hybrid-proxy";

fn one<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(items.len(), 1, "expected exactly one {what}");
    &items[0]
}

fn daemon_set() -> DaemonSet {
    one(&manifests().daemon_sets, "DaemonSet").clone()
}

fn pod_spec(ds: &DaemonSet) -> PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("a pod template")
}

fn agent(pod: &PodSpec) -> &Container {
    one(&pod.containers, "container")
}

fn preflight(pod: &PodSpec) -> &Container {
    one(
        pod.init_containers.as_deref().unwrap_or_default(),
        "init container",
    )
}

/// The agent configuration in the ConfigMap, parsed by the agent's own parser.
fn agent_config() -> Config {
    let m = manifests();
    let cm = one(&m.config_maps, "ConfigMap");
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("config.yaml"))
        .expect("config.yaml in the ConfigMap");
    Config::from_yaml(text, "deploy/configmap.yaml").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_manifest_parses_into_its_type_in_the_agents_namespace() {
    let m = manifests();
    let ns = one(&m.namespaces, "Namespace");
    assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
    // Host network and capabilities are admitted only at the privileged level.
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged")
    );
    let namespaced = [
        one(&m.service_accounts, "ServiceAccount")
            .metadata
            .namespace
            .clone(),
        one(&m.config_maps, "ConfigMap").metadata.namespace.clone(),
        one(&m.daemon_sets, "DaemonSet").metadata.namespace.clone(),
    ];
    for ns in namespaced {
        assert_eq!(ns.as_deref(), Some(NAMESPACE));
    }
    one(&m.cluster_roles, "ClusterRole");
    one(&m.bindings, "ClusterRoleBinding");
}

#[test]
fn the_cluster_role_grants_exactly_what_the_agent_uses() {
    let m = manifests();
    let role = one(&m.cluster_roles, "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(rule.resource_names.is_none(), "{rule:?}");
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    for word in [group, resource, verb] {
                        assert!(!word.contains('*'), "wildcard in {rule:?}");
                    }
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let expected: BTreeSet<(String, String, String)> = [
        ("", "services", "list"),
        ("", "services", "watch"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
        ("", "events", "create"),
        ("", "events", "patch"),
    ]
    .into_iter()
    .map(|(g, r, v)| (g.to_owned(), r.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(granted, expected);
    assert!(role.aggregation_rule.is_none());
}

#[test]
fn the_binding_gives_the_role_to_the_agents_service_account() {
    let m = manifests();
    let binding = one(&m.bindings, "ClusterRoleBinding");
    let role = one(&m.cluster_roles, "ClusterRole");
    let sa = one(&m.service_accounts, "ServiceAccount");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    let subject = one(subjects, "subject");
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
    let pod = pod_spec(&daemon_set());
    assert_eq!(pod.service_account_name, sa.metadata.name);
}

/// The added capabilities of a container, checking that it is otherwise locked down.
fn capabilities(c: &Container) -> BTreeSet<String> {
    let sc = c.security_context.as_ref().expect("a securityContext");
    assert_eq!(sc.privileged, Some(false), "{}: privileged", c.name);
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_owned()][..]),
        "{}",
        c.name
    );
    caps.add.clone().unwrap_or_default().into_iter().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn the_pods_use_the_host_network_and_only_the_listed_capabilities() {
    let pod = pod_spec(&daemon_set());
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_ne!(pod.host_pid, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
    assert_eq!(
        capabilities(agent(&pod)),
        set(&["NET_ADMIN", "BPF", "PERFMON"])
    );
    assert_eq!(
        capabilities(preflight(&pod)),
        set(&["NET_ADMIN", "NET_RAW", "BPF"])
    );
}

#[test]
fn host_mounts_are_only_bpffs() {
    let pod = pod_spec(&daemon_set());
    let host_paths: BTreeMap<String, String> = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|v| {
            v.host_path
                .as_ref()
                .map(|h| (v.name.clone(), h.path.clone()))
        })
        .collect();
    assert_eq!(
        host_paths.values().cloned().collect::<BTreeSet<_>>(),
        set(&["/sys/fs/bpf"])
    );
    let bpffs_volume = host_paths.keys().next().unwrap();
    let mount = agent(&pod)
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| &m.name == bpffs_volume)
        .expect("the agent mounts bpffs");
    assert_eq!(mount.mount_path, "/sys/fs/bpf");
    // Bidirectional propagation would need a privileged container.
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
    // The fast path pins below the mounted bpffs.
    assert!(
        agent_config()
            .acceleration
            .pin_path
            .starts_with(&mount.mount_path)
    );
}

#[test]
fn the_pods_are_node_critical_and_tolerate_every_taint() {
    let pod = pod_spec(&daemon_set());
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "no toleration for every taint: {tolerations:?}"
    );
}

fn http_probe(c: &Container, liveness: bool) -> (String, i32) {
    let probe = if liveness {
        c.liveness_probe.as_ref()
    } else {
        c.readiness_probe.as_ref()
    };
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .expect("an HTTP probe");
    let port = match &get.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => c
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_ref() == Some(name))
            .map_or_else(|| panic!("no port named {name}"), |p| p.container_port),
    };
    (get.path.clone().unwrap_or_default(), port)
}

#[test]
fn probes_ask_livez_and_healthz_on_the_configured_health_port() {
    let pod = pod_spec(&daemon_set());
    let healthz = agent_config()
        .healthz_bind_address
        .expect("the configuration serves health checks")
        .port();
    let c = agent(&pod);
    assert_eq!(
        http_probe(c, true),
        ("/livez".to_owned(), i32::from(healthz))
    );
    assert_eq!(
        http_probe(c, false),
        ("/healthz".to_owned(), i32::from(healthz))
    );
}

#[test]
fn updates_roll_one_node_at_a_time() {
    let ds = daemon_set();
    let strategy = ds
        .spec
        .unwrap()
        .update_strategy
        .expect("an update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
}

fn env_from_node_name(c: &Container) -> bool {
    c.env.as_deref().unwrap_or_default().iter().any(|e| {
        e.name == "NODE_NAME"
            && e.value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .is_some_and(|f| f.field_path == "spec.nodeName")
    })
}

/// The configuration path a container is started with, which must be where the ConfigMap is
/// mounted.
fn config_arg(c: &Container) -> String {
    let args = c.args.clone().unwrap_or_default();
    let path = args
        .iter()
        .find_map(|a| a.strip_prefix("--config="))
        .unwrap_or_else(|| panic!("{}: no --config= in {args:?}", c.name));
    let mounted = c
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|m| Path::new(path).starts_with(&m.mount_path) && m.name == "config");
    assert!(mounted, "{}: {path} is not on the config volume", c.name);
    path.to_owned()
}

#[test]
fn the_init_container_runs_preflight_and_the_agent_runs_with_the_same_config() {
    let pod = pod_spec(&daemon_set());
    let pre = preflight(&pod);
    let agent = agent(&pod);
    assert_eq!(
        pre.args
            .as_deref()
            .unwrap_or_default()
            .first()
            .map(String::as_str),
        Some("preflight")
    );
    assert_eq!(
        agent
            .args
            .as_deref()
            .unwrap_or_default()
            .first()
            .map(String::as_str),
        Some("run")
    );
    assert_eq!(pre.image, agent.image);
    assert_eq!(config_arg(pre), config_arg(agent));
    for c in [pre, agent] {
        assert!(
            env_from_node_name(c),
            "{}: NODE_NAME from spec.nodeName",
            c.name
        );
        let args = c.args.clone().unwrap_or_default();
        assert!(args.iter().any(|a| a == "--node=$(NODE_NAME)"), "{args:?}");
    }
}

#[test]
fn the_config_map_holds_a_configuration_the_agent_accepts() {
    let config = agent_config();
    assert!(
        !config.cluster_cidrs.is_empty(),
        "clusterCIDR is documented and set"
    );
    assert_eq!(config.node_name, None, "the node name comes from NODE_NAME");
    // Metrics stay on loopback unless the operator opts in.
    assert!(
        config
            .metrics_bind_address
            .is_some_and(|a| a.ip().is_loopback())
    );
}

fn dockerfile() -> String {
    std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile")
}

/// A constant's value in xtask/src/prereq.rs, e.g. `LLVM_MAJOR: u32 = 22;` -> `22`.
fn prereq_constant(name: &str) -> String {
    let text = std::fs::read_to_string(deploy_dir().join("../xtask/src/prereq.rs"))
        .expect("xtask/src/prereq.rs");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("const {name}:")))
        .unwrap_or_else(|| panic!("no const {name} in prereq.rs"));
    let value = line.split('=').nth(1).expect("a value");
    value
        .trim()
        .trim_end_matches(';')
        .trim_matches('"')
        .to_owned()
}

#[test]
fn the_dockerfile_builds_the_ebpf_object_and_ships_nft() {
    let text = dockerfile();
    let stages: Vec<&str> = text.split("\nFROM ").skip(1).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = (stages[0], stages[1]);
    assert!(build.starts_with("docker.io/library/rust:"), "{build}");
    // The eBPF toolchain as xtask installs it.
    let llvm = prereq_constant("LLVM_MAJOR");
    let linker = prereq_constant("BPF_LINKER_VERSION");
    assert!(
        build.contains(&format!("ARG LLVM_MAJOR={llvm}")),
        "LLVM {llvm}"
    );
    assert!(
        build.contains(&format!("ARG BPF_LINKER_VERSION={linker}")),
        "bpf-linker {linker}"
    );
    for needed in [
        "llvm-${LLVM_MAJOR}-dev",
        "libpolly-${LLVM_MAJOR}-dev",
        "--component rust-src",
        "cargo install bpf-linker",
        "LLVM_PREFIX=/usr/lib/llvm-${LLVM_MAJOR}",
        "--features llvm-${LLVM_MAJOR}",
    ] {
        assert!(build.contains(needed), "the build stage lacks {needed:?}");
    }
    // The object before the agent, whose build script embeds it.
    let ebpf = build
        .find("cargo xtask build-ebpf")
        .expect("builds the eBPF object");
    let agent = build
        .find("cargo build --release -p proxy-agent")
        .expect("builds the agent");
    assert!(ebpf < agent);
    assert!(
        runtime.starts_with("docker.io/library/debian:bookworm"),
        "{runtime}"
    );
    let install = runtime
        .lines()
        .skip_while(|l| !l.contains("apt-get install"))
        .take(3)
        .collect::<String>();
    for package in ["nftables", "iptables", "iproute2"] {
        assert!(
            install.contains(package),
            "runtime lacks {package}: {install}"
        );
    }
    assert!(runtime.contains("COPY --from=build /out/proxy-agent /usr/local/bin/proxy-agent"));
    // The DaemonSet starts the binary where the image puts it.
    let pod = pod_spec(&daemon_set());
    assert_eq!(
        agent_command(&pod),
        vec!["/usr/local/bin/proxy-agent".to_owned()]
    );
    // The build context stays small.
    let ignore = std::fs::read_to_string(deploy_dir().join("Dockerfile.dockerignore"))
        .expect("deploy/Dockerfile.dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

fn agent_command(pod: &PodSpec) -> Vec<String> {
    agent(pod).command.clone().unwrap_or_default()
}
