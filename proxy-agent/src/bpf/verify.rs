//! The fast path's half of `proxy-agent verify`: the pinned maps read back and compared with
//! what a sync of the plan writes ([`writes::desired`] of [`eligibility::decide_auto`]).
//!
//! Compared: every service entry (accelerated or counting, its backend set, revision and
//! backend count, affinity, counter slot), every accelerated set's backends and Maglev table,
//! and every counted port's record. Not compared: flows and affinity entries (traffic state),
//! the generation (the CLI compares it with nftables'), and a set's previous revision (kept
//! on purpose for packets in flight).
//!
//! In `auto` mode which ports are hot is the running agent's measurement, not part of the
//! plan: the ports the maps accelerate are taken as the policy's choice, and each must be
//! one the policy may promote.

use std::{collections::BTreeSet, fmt, fmt::Write as _};

use proxy_common::{ServiceValue, service_flags};

use super::{
    config::AccelerationMode,
    eligibility::{self, AutoChoice, Reason},
    forwarding::Forwarding,
    reconcile,
    store::{self, MapStore, StoreError},
    writes::{self, Endpoint, SetId},
};
use crate::{
    model::AccelerationAnnotation,
    plan::{ProxyPlan, ServicePortId},
};

/// One difference between the pinned maps and the plan.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Difference {
    /// Acceleration is on but no fast path is pinned.
    NotPinned,
    /// The pinned maps have another layout (an agent of another version wrote them).
    Layout {
        found: u32,
    },
    MissingEntry {
        key: String,
        want: String,
    },
    UnexpectedEntry {
        key: String,
        got: String,
    },
    WrongEntry {
        key: String,
        want: String,
        got: String,
    },
    WrongBackends {
        set: String,
        want: String,
        got: String,
    },
    MissingMaglev {
        set: String,
        revision: u32,
    },
    MissingPort {
        port: String,
    },
    UnexpectedPort {
        id: u64,
        port: String,
    },
    WrongPort {
        port: String,
        want: String,
        got: String,
    },
    /// `auto`: accelerated, but not a port the policy may promote.
    NotPromotable {
        port: String,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPinned => f.write_str("fast path: acceleration is on but nothing is pinned"),
            Self::Layout { found } => write!(
                f,
                "fast path: pinned maps have layout v{found}, this build reads v{}",
                proxy_common::LAYOUT_VERSION
            ),
            Self::MissingEntry { key, want } => {
                write!(f, "fast path: service entry {key} is missing (want {want})")
            }
            Self::UnexpectedEntry { key, got } => {
                write!(f, "fast path: unexpected service entry {key} ({got})")
            }
            Self::WrongEntry { key, want, got } => {
                write!(f, "fast path: service entry {key} is {got}, want {want}")
            }
            Self::WrongBackends { set, want, got } => {
                write!(
                    f,
                    "fast path: backend set {set} holds [{got}], want [{want}]"
                )
            }
            Self::MissingMaglev { set, revision } => write!(
                f,
                "fast path: backend set {set} rev {revision} has no Maglev table"
            ),
            Self::MissingPort { port } => write!(f, "fast path: no record of port {port}"),
            Self::UnexpectedPort { id, port } => {
                write!(f, "fast path: unexpected record {id:016x} ({port})")
            }
            Self::WrongPort { port, want, got } => {
                write!(f, "fast path: record of {port} says {got}, want {want}")
            }
            Self::NotPromotable { port } => write!(
                f,
                "fast path: {port} is accelerated, but auto mode may not promote it"
            ),
        }
    }
}

fn describe(v: &ServiceValue) -> String {
    if v.flags & service_flags::COUNT_ONLY != 0 {
        return format!("counting for {:016x} in slot {}", v.id, v.counter);
    }
    let set = SetId {
        id: v.id,
        set: v.set,
    };
    let mut s = format!(
        "set {set} rev {}, {} backends, slot {}",
        v.revision, v.backend_count, v.counter
    );
    if v.flags & service_flags::AFFINITY != 0 {
        let _ = write!(s, ", affinity {}s", v.affinity_timeout_s);
    }
    s
}

fn backends_text(b: &[Endpoint]) -> String {
    writes::fmt_backends(b)
}

/// Whether two decision codes agree: equal, or both "not hot yet" reasons of `auto` mode
/// (which of them holds depends on the agent's measurements).
fn codes_agree(mode: AccelerationMode, want: u8, got: u8) -> bool {
    let auto_reason = |c: u8| {
        matches!(
            Reason::from_code(c),
            Some(Reason::Cold | Reason::Dwell | Reason::Capacity)
        )
    };
    want == got || (mode == AccelerationMode::Auto && auto_reason(want) && auto_reason(got))
}

/// Compares the maps behind `store` with a sync of `plan` in `mode`.
pub fn verify(
    store: &mut dyn MapStore,
    plan: &ProxyPlan,
    mode: AccelerationMode,
) -> Result<Vec<Difference>, StoreError> {
    let maps = store::read_service_maps(store)?;
    let maglev: BTreeSet<(u64, u32, u8)> = store
        .maglev()
        .keys()?
        .into_iter()
        .map(|k| (k.id, k.revision, k.set))
        .collect();
    let mut out = Vec::new();

    let accelerated: BTreeSet<ServicePortId> = maps
        .services
        .values()
        .filter(|v| v.flags & service_flags::COUNT_ONLY == 0)
        .map(|v| ServicePortId(v.id))
        .collect();
    let mut choice = AutoChoice::default();
    if mode == AccelerationMode::Auto {
        let candidates = reconcile::candidates(plan);
        for id in &accelerated {
            if candidates.iter().any(|c| c.id == *id) {
                choice.promoted.insert(*id);
            }
        }
    }
    let ports = eligibility::decide_auto(plan, mode, &choice);
    if mode == AccelerationMode::Auto {
        for p in &ports {
            let promotable =
                choice.promoted.contains(&p.id) || p.annotation == AccelerationAnnotation::On;
            if accelerated.contains(&p.id) && !promotable {
                out.push(Difference::NotPromotable { port: p.label() });
            }
        }
    }
    let desired = writes::desired(&ports, &Forwarding::recorded(maps.forwarding));

    for (key, want) in &desired.services {
        let key_text = writes::describe_key(*key);
        let Some(got) = maps.services.get(key) else {
            out.push(Difference::MissingEntry {
                key: key_text,
                want: if want.count_only {
                    format!("counting for {:016x}", want.set.id)
                } else {
                    format!("set {}", want.set)
                },
            });
            continue;
        };
        check_entry(&key_text, want, got, &maps, &desired, &maglev, &mut out);
    }
    for (key, got) in &maps.services {
        if !desired.services.contains_key(key) {
            out.push(Difference::UnexpectedEntry {
                key: writes::describe_key(*key),
                got: describe(got),
            });
        }
    }

    for (id, want) in &desired.ports {
        let Some(got) = maps.ports.get(id) else {
            out.push(Difference::MissingPort {
                port: want.label.clone(),
            });
            continue;
        };
        let label = writes::port_label(got);
        if label != want.label
            || !codes_agree(mode, want.pods, got.pods)
            || !codes_agree(mode, want.external, got.external)
        {
            out.push(Difference::WrongPort {
                port: want.label.clone(),
                want: format!(
                    "{}, pods {}, external {}",
                    want.label, want.pods, want.external
                ),
                got: format!("{label}, pods {}, external {}", got.pods, got.external),
            });
        }
    }
    for (id, got) in &maps.ports {
        if !desired.ports.contains_key(id) {
            out.push(Difference::UnexpectedPort {
                id: *id,
                port: writes::port_label(got),
            });
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The counter slot a port's entries must use: the one its record names (the entries'
/// own slots are what is checked).
fn slot_of(maps: &writes::ServiceMaps, id: u64) -> u32 {
    maps.ports
        .get(&id)
        .map(|p| p.counter)
        .or_else(|| maps.counters.get(&id).copied())
        .unwrap_or(0)
}

fn check_entry(
    key_text: &str,
    want: &writes::DesiredService,
    got: &ServiceValue,
    maps: &writes::ServiceMaps,
    desired: &writes::Desired,
    maglev: &BTreeSet<(u64, u32, u8)>,
    out: &mut Vec<Difference>,
) {
    let slot = slot_of(maps, want.set.id);
    if want.count_only {
        let ok =
            got.flags == service_flags::COUNT_ONLY && got.id == want.set.id && got.counter == slot;
        if !ok {
            out.push(Difference::WrongEntry {
                key: key_text.to_owned(),
                want: format!("counting for {:016x} in slot {slot}", want.set.id),
                got: describe(got),
            });
        }
        return;
    }
    let backends = desired.sets.get(&want.set).cloned().unwrap_or_default();
    let affinity = want.affinity_timeout.is_some();
    let ok = got.flags & service_flags::COUNT_ONLY == 0
        && got.id == want.set.id
        && got.set == want.set.set
        && (got.flags & service_flags::AFFINITY != 0) == affinity
        && got.affinity_timeout_s == want.affinity_timeout.unwrap_or(0)
        && usize::from(got.backend_count) == backends.len()
        && got.counter == slot;
    if !ok {
        out.push(Difference::WrongEntry {
            key: key_text.to_owned(),
            want: format!(
                "set {} with {} backends, slot {slot}{}",
                want.set,
                backends.len(),
                want.affinity_timeout
                    .map(|t| format!(", affinity {t}s"))
                    .unwrap_or_default()
            ),
            got: describe(got),
        });
        return;
    }
    // The revision the entry uses must hold exactly the plan's backends, and a Maglev table.
    let current = maps
        .sets
        .get(&want.set)
        .filter(|r| r.current.revision == got.revision);
    match current {
        Some(revs) if revs.current.backends == backends => {}
        other => out.push(Difference::WrongBackends {
            set: format!("{} rev {}", want.set, got.revision),
            want: backends_text(&backends),
            got: other.map_or_else(String::new, |r| backends_text(&r.current.backends)),
        }),
    }
    if !maglev.contains(&(got.id, got.revision, got.set)) {
        out.push(Difference::MissingMaglev {
            set: want.set.to_string(),
            revision: got.revision,
        });
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use super::*;
    use crate::{
        bpf::{
            reconcile::{FakeConntrack, Syncer},
            store::FakeMaps,
        },
        model::{
            ClusterState,
            fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder},
            service::ACCELERATION_ANNOTATION,
        },
        plan::{self, DetectLocal, PlanSettings},
    };

    fn slice(name: &str, ips: &[&str]) -> EndpointSlice {
        let mut b = SliceBuilder::new("default", name).port("http", 8080);
        for ip in ips {
            b = b.endpoint(ip, "node-a");
        }
        b.build()
    }

    /// `web` (two endpoints, node port, eTP Local) and `quiet` (annotated "off").
    fn plan_of(web_endpoints: &[&str]) -> ProxyPlan {
        let mut state = ClusterState::new();
        state
            .upsert_service(
                ServiceBuilder::cluster_ip("default", "web", "10.96.0.10")
                    .port("http", 80)
                    .node_port(30080)
                    .external_policy_local()
                    .build(),
            )
            .unwrap();
        state
            .upsert_service(
                ServiceBuilder::cluster_ip("default", "quiet", "10.96.0.11")
                    .port("http", 80)
                    .annotation(ACCELERATION_ANNOTATION, "off")
                    .build(),
            )
            .unwrap();
        state.upsert_slice(slice("web", web_endpoints)).unwrap();
        state.upsert_slice(slice("quiet", &["10.244.1.9"])).unwrap();
        state.set_node(Some(
            NodeBuilder::new("node-a")
                .internal_ip("192.168.1.10")
                .pod_cidr("10.244.1.0/24")
                .build(),
        ));
        plan::compute(
            &state,
            &PlanSettings {
                node_name: "node-a".into(),
                detect_local: DetectLocal::ClusterCidr,
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                ..PlanSettings::default()
            },
        )
    }

    fn synced(mode: AccelerationMode, plan: &ProxyPlan) -> (FakeMaps, Syncer) {
        let mut maps = FakeMaps::new();
        let mut syncer = Syncer::new(mode);
        syncer
            .sync(&mut maps, &mut FakeConntrack::default(), plan, 1)
            .unwrap();
        (maps, syncer)
    }

    fn texts(d: &[Difference]) -> Vec<String> {
        d.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn maps_written_for_a_plan_verify_clean_in_every_mode() {
        let p = plan_of(&["10.244.1.5", "10.244.1.6"]);
        for mode in [
            AccelerationMode::Off,
            AccelerationMode::Annotated,
            AccelerationMode::Auto,
            AccelerationMode::All,
        ] {
            let (mut maps, _) = synced(mode, &p);
            assert_eq!(verify(&mut maps, &p, mode).unwrap(), vec![], "{mode}");
        }
    }

    #[test]
    fn each_kind_of_tampering_is_named() {
        let p = plan_of(&["10.244.1.5", "10.244.1.6"]);
        let (mut clean, _) = synced(AccelerationMode::All, &p);

        // Another plan's maps: the backend set differs.
        let other = plan_of(&["10.244.1.5"]);
        let (mut maps, _) = synced(AccelerationMode::All, &other);
        let d = texts(&verify(&mut maps, &p, AccelerationMode::All).unwrap());
        assert!(
            d.iter().any(|t| t.contains("10.96.0.10:80/tcp [pods]")
                && t.contains("1 backends")
                && t.contains("want set")),
            "{d:#?}"
        );

        // An entry deleted, one added.
        let mut maps = clean.clone();
        let (key, value) = maps
            .services
            .iter()
            .find(|(_, v)| v.flags & service_flags::COUNT_ONLY == 0)
            .map(|(k, v)| (*k, *v))
            .unwrap();
        maps.services.remove(&key);
        let mut extra = key;
        extra.port = 81u16.to_be();
        maps.services.insert(extra, value);
        let d = texts(&verify(&mut maps, &p, AccelerationMode::All).unwrap());
        assert_eq!(d.len(), 2, "{d:#?}");
        assert!(d.iter().any(|t| t.contains("is missing")), "{d:#?}");
        assert!(
            d.iter()
                .any(|t| t.contains("unexpected service entry") && t.contains(":81/tcp")),
            "{d:#?}"
        );

        // A backend rewritten behind the agent's back, a Maglev table lost.
        let mut maps = clean.clone();
        let b = maps.backends.values_mut().next().unwrap();
        b.port = 9999u16.to_be();
        let d = texts(&verify(&mut maps, &p, AccelerationMode::All).unwrap());
        assert!(
            d.iter()
                .any(|t| t.contains("holds [") && t.contains(":9999")),
            "{d:#?}"
        );
        let mut maps = clean.clone();
        maps.maglev.clear();
        let d = texts(&verify(&mut maps, &p, AccelerationMode::All).unwrap());
        assert!(d.iter().any(|t| t.contains("no Maglev table")), "{d:#?}");

        // A port's record says the wrong thing; a counting entry lost its slot.
        let mut maps = clean.clone();
        maps.ports.values_mut().next().unwrap().pods = 0;
        let counting = maps
            .services
            .values_mut()
            .find(|v| v.flags == service_flags::COUNT_ONLY)
            .unwrap();
        counting.counter = 0;
        let d = texts(&verify(&mut maps, &p, AccelerationMode::All).unwrap());
        assert!(d.iter().any(|t| t.contains("record of")), "{d:#?}");
        assert!(d.iter().any(|t| t.contains("counting for")), "{d:#?}");

        // Maps of mode all, checked against mode off: everything is unexpected.
        let d = verify(&mut clean, &p, AccelerationMode::Off).unwrap();
        assert!(
            d.iter().all(|d| matches!(
                d,
                Difference::UnexpectedEntry { .. } | Difference::UnexpectedPort { .. }
            )),
            "{d:#?}"
        );
        assert_eq!(d.len(), clean.services.len() + clean.ports.len());
    }

    #[test]
    fn auto_takes_the_promoted_ports_from_the_maps_but_only_promotable_ones() {
        let p = plan_of(&["10.244.1.5", "10.244.1.6"]);
        let (mut maps, mut syncer) = synced(AccelerationMode::Auto, &p);
        // The policy promoted web: still clean (verify cannot know the rates).
        let web = syncer.candidates()[0].id;
        syncer.auto.promoted.insert(web);
        syncer
            .sync(&mut maps, &mut FakeConntrack::default(), &p, 2)
            .unwrap();
        assert!(syncer.accelerated().contains(&web));
        assert_eq!(
            verify(&mut maps, &p, AccelerationMode::Auto).unwrap(),
            vec![]
        );
        // Maps of mode all hold the annotated-off service too? No: it is never accelerated.
        // But an entry accelerating it, written behind the agent's back, is named.
        let quiet = p
            .ports()
            .find(|(s, _)| s.name.name == "quiet")
            .map(|(_, port)| port.id)
            .unwrap();
        let counting_key = *maps
            .services
            .iter()
            .find(|(_, v)| v.id == quiet.0)
            .unwrap()
            .0;
        let accelerated = *maps
            .services
            .values()
            .find(|v| v.flags & service_flags::COUNT_ONLY == 0)
            .unwrap();
        maps.services.insert(
            counting_key,
            ServiceValue {
                id: quiet.0,
                ..accelerated
            },
        );
        let d = texts(&verify(&mut maps, &p, AccelerationMode::Auto).unwrap());
        assert!(
            d.iter()
                .any(|t| t.contains("default/quiet") && t.contains("may not promote")),
            "{d:#?}"
        );
    }

    /// `web`, dual-stack, with a node port and eTP Local, on a node with an IPv6 address.
    fn dual_stack_plan() -> ProxyPlan {
        let mut state = ClusterState::new();
        state
            .upsert_service(
                ServiceBuilder::cluster_ip("default", "web", "10.96.0.10,fd00:96::10")
                    .port("http", 80)
                    .node_port(30080)
                    .external_policy_local()
                    .with_spec(|s| {
                        s.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
                        s.ip_family_policy = Some("RequireDualStack".into());
                    })
                    .build(),
            )
            .unwrap();
        state.upsert_slice(slice("web", &["10.244.1.5"])).unwrap();
        state
            .upsert_slice(
                SliceBuilder::new("default", "web")
                    .name("web-v6")
                    .ipv6()
                    .port("http", 8080)
                    .endpoint("fd00:244:1::5", "node-a")
                    .build(),
            )
            .unwrap();
        state.set_node(Some(
            NodeBuilder::new("node-a")
                .internal_ip("192.168.1.10")
                .internal_ip("fd00:1::10")
                .pod_cidr("10.244.1.0/24")
                .build(),
        ));
        plan::compute(
            &state,
            &PlanSettings {
                node_name: "node-a".into(),
                detect_local: DetectLocal::ClusterCidr,
                cluster_cidrs: vec![
                    "10.244.0.0/16".parse().unwrap(),
                    "fd00:244::/48".parse().unwrap(),
                ],
                ..PlanSettings::default()
            },
        )
    }

    #[test]
    fn verify_reads_the_ipv6_maps_and_names_a_missing_or_wrong_ipv6_entry() {
        let p = dual_stack_plan();
        let (mut clean, _) = synced(AccelerationMode::All, &p);
        assert_eq!(
            verify(&mut clean, &p, AccelerationMode::All).unwrap(),
            vec![]
        );
        // Both IPv6 paths are written: the ClusterIP for pods, the node port on the node's
        // IPv6 address for XDP.
        let described: Vec<String> = clean
            .services6
            .keys()
            .map(|k| writes::describe_key(writes::EntryKey::V6(*k)))
            .collect();
        assert!(
            described.contains(&"[fd00:96::10]:80/tcp [pods]".to_owned())
                && described.contains(&"[fd00:1::10]:30080/tcp [external]".to_owned()),
            "{described:#?}"
        );

        let mut maps = clean.clone();
        let pods = *clean
            .services6
            .keys()
            .find(|k| k.scope == proxy_common::scope::POD && k.port == 80u16.to_be())
            .unwrap();
        maps.services6.remove(&pods);
        let d = texts(&verify(&mut maps, &p, AccelerationMode::All).unwrap());
        assert_eq!(d.len(), 1, "{d:#?}");
        assert!(
            d[0].contains("[fd00:96::10]:80/tcp [pods]") && d[0].contains("is missing"),
            "{d:#?}"
        );

        let mut maps = clean.clone();
        maps.backends6.values_mut().next().unwrap().port = 9999u16.to_be();
        let d = texts(&verify(&mut maps, &p, AccelerationMode::All).unwrap());
        assert!(
            d.iter()
                .any(|t| t.contains("[fd00:244:1::5]:9999") && t.contains("/ipv6")),
            "{d:#?}"
        );
    }
}
