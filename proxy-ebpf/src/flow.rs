//! Choosing a backend and following a flow: the connection-table logic, written once and
//! compiled once per address family. `v4.rs` and `v6.rs` each include this file as their
//! `flow` module; `super` is then the family, which names its maps and types with the same
//! names (`FLOWS`, `FlowKey`, `Backend`, ...) and provides `Addr`, `addr_eq` and the hashes.
//! Each family thus gets its own monomorphic, fully inlined code, as if written twice: the
//! IPv4 path costs what it did before IPv6 existed.

use aya_ebpf::bindings::BPF_NOEXIST;
use proxy_common::{
    BackendKey, FLOW_REFRESH_NS, MAGLEV_SIZE, MaglevKey, ServiceValue, StatIndex, dir, forwarding,
    owner, scope as scopes, service_flags, tcp,
};

use super::{
    AFFINITY, AffinityKey, AffinityValue, BACKENDS, Backend, FLOWS, FlowKey, FlowValue, Packet,
    SERVICES, ServiceKey, addr_eq, hash_client, hash_flow,
};
use crate::{EEXIST, IPPROTO_TCP, MAGLEV, count, count_service, now};

/// Refreshes a flow entry's timestamp and TCP flags, writing only when something changed.
#[inline(always)]
fn touch(v: *mut FlowValue, flags: u8, now: u64) {
    // SAFETY: `v` points into a live map value; concurrent writers store the same kind of
    // data, and a lost update only delays a refresh.
    unsafe {
        if now.wrapping_sub((*v).last_seen_ns) > FLOW_REFRESH_NS {
            (*v).last_seen_ns = now;
        }
        if (*v).tcp_flags | flags != (*v).tcp_flags {
            (*v).tcp_flags |= flags;
        }
    }
}

/// Picks the backend of a new flow: the client's affinity entry when it has a live one, else
/// the backend set's Maglev table at the flow's (or, with affinity, the client's) hash.
#[inline(always)]
fn choose(svc: &ServiceValue, pkt: &Packet, now: u64) -> Option<Backend> {
    let affinity = svc.flags & service_flags::AFFINITY != 0;
    let akey = AffinityKey {
        id: svc.id,
        client: pkt.saddr,
        set: svc.set,
        ..AffinityKey::default()
    };
    let hash = if affinity {
        if let Some(a) = AFFINITY.get_ptr_mut(akey) {
            let timeout = u64::from(svc.affinity_timeout_s) * 1_000_000_000;
            // SAFETY: a live map value; racing writers store whole, equivalent entries.
            unsafe {
                if now.wrapping_sub((*a).last_used_ns) < timeout {
                    (*a).last_used_ns = now;
                    return Some((*a).backend);
                }
            }
        }
        hash_client(pkt)
    } else {
        hash_flow(pkt)
    };
    let table = MAGLEV.get_ptr(MaglevKey {
        id: svc.id,
        revision: svc.revision,
        set: svc.set,
        _pad: [0; 3],
    })?;
    let slot = hash as usize % MAGLEV_SIZE;
    // The compiler knows `slot < MAGLEV_SIZE` and drops the check, but the verifier does not
    // track the bound through a modulo: hide the value from the compiler so the check stays.
    // SAFETY: reading a local.
    let slot = unsafe { core::ptr::read_volatile(&raw const slot) };
    if slot >= MAGLEV_SIZE {
        return None;
    }
    // SAFETY: a live map value; the agent never writes a table in place (a new revision is a
    // new element).
    let index = unsafe { *(*table).slots.as_ptr().add(slot) };
    let backend = BACKENDS.get_ptr(BackendKey {
        id: svc.id,
        revision: svc.revision,
        set: svc.set,
        _pad: 0,
        index,
    })?;
    // SAFETY: as above.
    let backend = unsafe { *backend };
    if affinity {
        // `allow`, not `expect`: this file is compiled once per family, and only the IPv4
        // value has no padding field left for the update to fill.
        #[allow(
            clippy::needless_update,
            reason = "fills the IPv6 value's padding; a no-op for IPv4"
        )]
        let value = AffinityValue {
            last_used_ns: now,
            backend,
            ..AffinityValue::default()
        };
        let _ = AFFINITY.insert(akey, value, 0);
    }
    Some(backend)
}

/// A fast-path packet from a client: where it goes and how.
#[derive(Clone, Copy)]
#[allow(
    dead_code,
    reason = "compiled once per family; IPv6 reads only the backend (never redirected)"
)]
pub(crate) struct Verdict {
    /// The backend to translate to.
    pub(crate) to: Backend,
    /// The flow bypasses the stack ([`forwarding::REDIRECT`]).
    pub(crate) redirect: bool,
    /// This packet started the flow.
    pub(crate) new: bool,
    /// The service port's counter slot.
    pub(crate) slot: u32,
}

/// What to do with a packet arriving from a client (pod or external).
#[inline(always)]
pub(crate) fn forward(pkt: &Packet, scope: u8, bytes: usize) -> Option<Verdict> {
    let key = forward_key(pkt);
    // The connection table first: a flow keeps its path and backend.
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a live map value.
        let (owner, nat, slot, fwd, seen) = unsafe {
            (
                (*v).owner,
                (*v).nat,
                (*v).counter,
                (*v).forwarding,
                (*v).tcp_flags,
            )
        };
        if owner == owner::FAST
            && pkt.proto == IPPROTO_TCP
            && pkt.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN
            && seen & (tcp::FIN | tcp::RST) != 0
        {
            // A new connection on the tuple of one that ended (as conntrack does): forget
            // the old flow and start afresh, with today's backends and forwarding.
            let _ = FLOWS.remove(reply_key(pkt, &nat));
            let _ = FLOWS.remove(key);
            return start(key, pkt, scope, bytes);
        }
        touch(v, pkt.tcp_flags, now());
        if owner != owner::FAST {
            count(StatIndex::NftablesOwned, bytes);
            count_service(slot, true, false);
            return None;
        }
        count(StatIndex::FlowHit, bytes);
        count_service(slot, true, true);
        return Some(Verdict {
            to: nat,
            redirect: fwd == forwarding::REDIRECT,
            new: false,
            slot,
        });
    }
    start(key, pkt, scope, bytes)
}

/// The forward entry's key of the flow `pkt` (from a client) belongs to.
#[inline(always)]
fn forward_key(pkt: &Packet) -> FlowKey {
    FlowKey {
        src: pkt.saddr,
        dst: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        dir: dir::FORWARD,
        _pad: 0,
    }
}

/// The reply entry's key of a flow from `pkt`'s client translated to `to`.
#[inline(always)]
fn reply_key(pkt: &Packet, to: &Backend) -> FlowKey {
    FlowKey {
        src: to.addr,
        dst: pkt.saddr,
        sport: to.port,
        dport: pkt.sport,
        proto: pkt.proto,
        dir: dir::REPLY,
        _pad: 0,
    }
}

/// A packet without a flow: the service table decides whether the fast path starts one.
#[inline(always)]
fn start(key: FlowKey, pkt: &Packet, scope: u8, bytes: usize) -> Option<Verdict> {
    let svc = SERVICES.get_ptr(ServiceKey {
        addr: pkt.daddr,
        port: pkt.dport,
        proto: pkt.proto,
        scope,
    })?;
    // SAFETY: a live map value, copied at once.
    let svc = unsafe { *svc };
    count_service(svc.counter, true, false);
    if svc.flags & service_flags::COUNT_ONLY != 0 {
        // Served by nftables: counted, passed unchanged.
        return None;
    }
    if pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (tcp::SYN | tcp::ACK) != tcp::SYN {
        // Only a SYN starts a fast-path TCP flow: anything else is either a flow nftables
        // started (before the service was promoted) or garbage for conntrack to judge.
        count(StatIndex::NotFirstPacket, bytes);
        return None;
    }
    let now = now();
    let Some(backend) = choose(&svc, pkt, now) else {
        count(StatIndex::NoBackend, bytes);
        return None;
    };
    if addr_eq(&backend.addr, &pkt.saddr) {
        // Hairpin: the reply must look as if it came from elsewhere, which takes SNAT.
        count(StatIndex::Hairpin, bytes);
        return None;
    }
    // Only pod traffic is redirected (north-south flows go through the stack), and only
    // where the agent said so for this service port.
    let fwd = if scope == scopes::POD && svc.flags & service_flags::REDIRECT != 0 {
        forwarding::REDIRECT
    } else {
        forwarding::STACK
    };
    let to = record(key, pkt, &svc, backend, fwd, now, bytes)?;
    Some(Verdict {
        to: to.0,
        redirect: to.1 == forwarding::REDIRECT,
        new: true,
        slot: svc.counter,
    })
}

/// Records a new fast-path flow (reply entry first, so that a reply never finds the flow
/// half-recorded) and returns its backend; `None` when it must go to nftables instead.
#[inline(always)]
fn record(
    key: FlowKey,
    pkt: &Packet,
    svc: &ServiceValue,
    backend: Backend,
    fwd: u8,
    now: u64,
    bytes: usize,
) -> Option<(Backend, u8)> {
    let rkey = reply_key(pkt, &backend);
    let service = Backend {
        addr: pkt.daddr,
        port: pkt.dport,
        _pad: 0,
    };
    let reply = FlowValue {
        id: svc.id,
        last_seen_ns: now,
        nat: service,
        owner: owner::FAST,
        tcp_flags: 0,
        forwarding: fwd,
        counter: svc.counter,
        ..FlowValue::default()
    };
    if let Err(e) = FLOWS.insert(rkey, reply, u64::from(BPF_NOEXIST)) {
        if e != -EEXIST {
            count(StatIndex::TableFull, bytes);
            return None;
        }
        // The same flow recorded by another CPU is fine; another flow with this reply tuple
        // (the same client port to another service with the same backend) is not.
        let existing = FLOWS.get_ptr(rkey)?;
        // SAFETY: a live map value.
        let existing = unsafe { (*existing).nat };
        if !addr_eq(&existing.addr, &service.addr) || existing.port != service.port {
            count(StatIndex::ReplyClash, bytes);
            return None;
        }
    }
    let value = FlowValue {
        id: svc.id,
        last_seen_ns: now,
        nat: backend,
        owner: owner::FAST,
        tcp_flags: pkt.tcp_flags,
        forwarding: fwd,
        counter: svc.counter,
        ..FlowValue::default()
    };
    if let Err(e) = FLOWS.insert(key, value, u64::from(BPF_NOEXIST)) {
        if e == -EEXIST {
            // Another CPU started the same flow a moment ago: follow its choice.
            let v = FLOWS.get_ptr(key)?;
            // SAFETY: a live map value.
            let (owner, nat, fwd) = unsafe { ((*v).owner, (*v).nat, (*v).forwarding) };
            return (owner == owner::FAST).then_some((nat, fwd));
        }
        let _ = FLOWS.remove(rkey);
        count(StatIndex::TableFull, bytes);
        return None;
    }
    count(StatIndex::NewFlow, bytes);
    count_service(svc.counter, false, true);
    Some((backend, fwd))
}

/// Puts a flow that was just recorded for redirect on the stack instead, both directions:
/// its first packet found no plain forward, and a flow must never be redirected one way only.
#[inline(always)]
#[allow(
    dead_code,
    reason = "compiled once per family; IPv6 flows are never redirected"
)]
pub(crate) fn fall_back_to_stack(pkt: &Packet, to: &Backend) {
    for key in [forward_key(pkt), reply_key(pkt, to)] {
        if let Some(v) = FLOWS.get_ptr_mut(key) {
            // SAFETY: a live map value; a one-byte store.
            unsafe { (*v).forwarding = forwarding::STACK };
        }
    }
}

/// The service address to restore on a reply of a fast-path flow, and the flow's counter
/// slot. `at_ingress`: the reply is entering the node, where only redirect flows are
/// handled (the others are translated at egress, after the stack routed them).
#[inline(always)]
pub(crate) fn reply(pkt: &Packet, bytes: usize, at_ingress: bool) -> Option<(Backend, u32)> {
    let key = FlowKey {
        src: pkt.saddr,
        dst: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        dir: dir::REPLY,
        _pad: 0,
    };
    let v = FLOWS.get_ptr_mut(key)?;
    // SAFETY: a live map value.
    let (owner, nat, slot, fwd) = unsafe { ((*v).owner, (*v).nat, (*v).counter, (*v).forwarding) };
    if owner != owner::FAST || (at_ingress && fwd != forwarding::REDIRECT) {
        return None;
    }
    if pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK {
        // A handshake answer on the reply tuple of a flow that ended is another connection's
        // (the same client port to another service with this backend, served by nftables):
        // the ended flow's entries go, and the packet passes untouched.
        let fkey = FlowKey {
            src: pkt.daddr,
            dst: nat.addr,
            sport: pkt.dport,
            dport: nat.port,
            proto: pkt.proto,
            dir: dir::FORWARD,
            _pad: 0,
        };
        let ended = match FLOWS.get_ptr(fkey) {
            // SAFETY: a live map value.
            Some(f) => (unsafe { (*f).tcp_flags } & (tcp::FIN | tcp::RST)) != 0,
            None => true,
        };
        if ended {
            let _ = FLOWS.remove(key);
            let _ = FLOWS.remove(fkey);
            return None;
        }
    }
    touch(v, pkt.tcp_flags, now());
    count(StatIndex::ReplyTranslated, bytes);
    count_service(slot, false, true);
    Some((nat, slot))
}
