//! kube-proxy's nftables layout for the same Services, as text for `nft -f`.
//!
//! The same generator as the proof's `nft-bench --mode text --style vmap`
//! (`reference/aya-nft-proof/ws/nft-bench`): per Service port a chain choosing an endpoint
//! with an anonymous `numgen random mod N vmap`, per endpoint a chain with the hairpin
//! masquerade and the DNAT, and the `service-ips` verdict map. kube-proxy's real ruleset
//! has more per Service (the off-cluster masquerade rule, the `cluster-ips` set, firewall
//! and no-endpoint maps), so this comparison is, if anything, kind to kube-proxy.

use std::{fmt::Write as _, net::Ipv4Addr};

use super::cluster::SynthService;

/// Our name for its table, in a namespace of its own.
pub const TABLE: &str = "kube-proxy";

fn base(out: &mut String) {
    let t = TABLE;
    let _ = write!(
        out,
        "add table ip {t}\n\
         add map ip {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}\n\
         add chain ip {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; policy accept ; }}\n\
         add chain ip {t} nat-output {{ type nat hook output priority -100 ; policy accept ; }}\n\
         add chain ip {t} nat-postrouting {{ type nat hook postrouting priority srcnat ; policy accept ; }}\n\
         add chain ip {t} mark-for-masquerade\n\
         add chain ip {t} services\n\
         add rule ip {t} nat-prerouting jump services\n\
         add rule ip {t} nat-output jump services\n\
         add rule ip {t} nat-postrouting meta mark & 0x4000 == 0x4000 masquerade\n\
         add rule ip {t} mark-for-masquerade meta mark set meta mark | 0x4000\n\
         add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n"
    );
}

/// Endpoint chain names: kube-proxy hashes the endpoint into the name, so a new endpoint
/// gets a new chain; here the endpoint's address names it.
fn endpoint_chain(s: &SynthService, ip: Ipv4Addr) -> String {
    format!("ep-{}-{}", s.index, u32::from(ip))
}

fn service_chain(s: &SynthService) -> String {
    format!("svc-{}", s.index)
}

fn service_rule(out: &mut String, s: &SynthService) {
    let t = TABLE;
    let vmap: Vec<String> = s
        .endpoints
        .iter()
        .enumerate()
        .map(|(k, (ip, _))| format!("{k} : goto {}", endpoint_chain(s, *ip)))
        .collect();
    let _ = writeln!(
        out,
        "add rule ip {t} {} numgen random mod {} vmap {{ {} }}",
        service_chain(s),
        s.endpoints.len(),
        vmap.join(", ")
    );
}

fn endpoint(out: &mut String, s: &SynthService, ip: Ipv4Addr, port: u16) {
    let t = TABLE;
    let chain = endpoint_chain(s, ip);
    let _ = writeln!(out, "add chain ip {t} {chain}");
    let _ = writeln!(
        out,
        "add rule ip {t} {chain} ip saddr {ip} jump mark-for-masquerade"
    );
    let _ = writeln!(
        out,
        "add rule ip {t} {chain} meta l4proto tcp dnat to {ip}:{port}"
    );
}

fn add_service(out: &mut String, s: &SynthService) {
    let t = TABLE;
    let _ = writeln!(out, "add chain ip {t} {}", service_chain(s));
    for (ip, port) in &s.endpoints {
        endpoint(out, s, *ip, *port);
    }
    service_rule(out, s);
    let _ = writeln!(
        out,
        "add element ip {t} service-ips {{ {} . tcp . {} : goto {} }}",
        s.vip,
        s.port,
        service_chain(s)
    );
}

/// The whole ruleset, as one transaction.
pub fn full(services: &[SynthService]) -> String {
    let mut out = String::with_capacity(services.len() * 600);
    base(&mut out);
    for s in services {
        add_service(&mut out, s);
    }
    out
}

/// One more Service, into a loaded table.
pub fn one_more(s: &SynthService) -> String {
    let mut out = String::new();
    add_service(&mut out, s);
    out
}

/// kube-proxy's partial sync when endpoint `k` of `before` is replaced by `new_ip`: a chain
/// for the new endpoint, the Service's chain rewritten, the old endpoint's chain flushed and
/// deleted.
pub fn replace_endpoint(before: &SynthService, k: usize, new_ip: Ipv4Addr) -> String {
    let t = TABLE;
    let mut after = before.clone();
    let (old_ip, port) = before.endpoints[k];
    after.endpoints[k] = (new_ip, port);
    let mut out = String::new();
    endpoint(&mut out, &after, new_ip, port);
    let _ = writeln!(out, "flush chain ip {t} {}", service_chain(&after));
    service_rule(&mut out, &after);
    let old = endpoint_chain(before, old_ip);
    let _ = writeln!(out, "flush chain ip {t} {old}");
    let _ = writeln!(out, "delete chain ip {t} {old}");
    out
}
