//! Per-packet cost of the programs, measured with `BPF_PROG_TEST_RUN` on a private (unpinned,
//! unattached) copy of the datapath loaded with a given number of services.
//!
//! `BPF_PROG_TEST_RUN` runs a program `repeat` times on the same buffer, so a rewrite would
//! only happen on the first run. To measure the established-flow path on every run, the
//! service under test has a mirror: its backend address is itself a service whose backend is
//! the first service's address, so each run translates the packet one way or the other
//! through an existing connection-table entry.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::{
    TestRun as _, TestRunOptions,
    programs::{SchedClassifier, Xdp},
};
use proxy_common::{program_names, scope};

use super::{
    kernel::Datapath,
    object::{BpfError, embedded_object},
    store,
    store::MapStore as _,
    writes::{self, Desired, DesiredService, SetId},
};
use crate::model::Protocol;

/// One measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgCost {
    pub program: &'static str,
    pub case: &'static str,
    pub services: usize,
    /// Median over the rounds of the kernel's average time per run.
    pub per_packet: Duration,
}

/// Internet checksum over `data`, starting from `sum`.
fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded above")]
    let folded = sum as u16;
    !folded
}

/// An Ethernet/IPv4/UDP frame with valid checksums.
pub fn udp_frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: usize) -> Vec<u8> {
    let udp_len = 8 + payload;
    let mut f = vec![0u8; 14 + 20 + udp_len];
    f[0..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = u16::try_from(20 + udp_len).expect("small");
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&src.0.octets());
    f[30..34].copy_from_slice(&dst.0.octets());
    let c = checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&src.1.to_be_bytes());
    f[36..38].copy_from_slice(&dst.1.to_be_bytes());
    f[38..40].copy_from_slice(&u16::try_from(udp_len).expect("small").to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&f[26..34]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&f[38..40]);
    let mut sum = 0u32;
    for c in pseudo.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    let mut c = checksum(&f[34..], sum);
    if c == 0 {
        c = 0xffff;
    }
    f[40..42].copy_from_slice(&c.to_be_bytes());
    f
}

/// An Ethernet/IPv6/UDP frame with a valid checksum (never 0).
pub fn udp6_frame(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: usize) -> Vec<u8> {
    let udp_len = 8 + payload;
    let mut f = vec![0u8; 14 + 40 + udp_len];
    f[0..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let len = u16::try_from(udp_len).expect("small").to_be_bytes();
    f[14] = 0x60;
    f[18..20].copy_from_slice(&len);
    f[20] = 17;
    f[21] = 64;
    f[22..38].copy_from_slice(&src.0.octets());
    f[38..54].copy_from_slice(&dst.0.octets());
    f[54..56].copy_from_slice(&src.1.to_be_bytes());
    f[56..58].copy_from_slice(&dst.1.to_be_bytes());
    f[58..60].copy_from_slice(&len);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&f[22..54]);
    pseudo.extend_from_slice(&[0, 0]);
    pseudo.extend_from_slice(&len);
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    let mut sum = 0u32;
    for c in pseudo.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    let mut c = checksum(&f[54..], sum);
    if c == 0 {
        c = 0xffff;
    }
    f[60..62].copy_from_slice(&c.to_be_bytes());
    f
}

/// The IPv6 service under test and its mirror (see the module's comment).
const VIP6: (Ipv6Addr, u16) = (Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 1), 53);
const BACKEND6: (Ipv6Addr, u16) = (Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 2), 5353);
const CLIENT6: (Ipv6Addr, u16) = (Ipv6Addr::new(0xfd00, 0x244, 9, 0, 0, 0, 0, 9), 40000);

/// The address of the service that is only counted.
const COUNTED: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 97, 0, 1), 53);
/// A mirrored pair whose flows are redirected: each address is the other's backend, and both
/// are local endpoints (on interface 1: `BPF_PROG_TEST_RUN` returns the redirect verdict
/// without carrying it out).
const REDIRECT_VIP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 200, 1), 53);
const REDIRECT_BACKEND: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 0, 3), 5353);
/// A redirected packet's TTL drops by one on every run, and a run reuses the packet: calls
/// of the redirect case repeat at most this often (its TTL starts at 255), in more rounds.
const REDIRECT_REPEAT: u32 = 250;

fn vip(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).expect("fewer than 2^32 services");
    Ipv4Addr::from(0x0a60_0000 + i + 1)
}

/// Writes `services` UDP services into both scopes (plus the mirrored one under test, always
/// the first), each with two backends.
fn populate(dp: &mut Datapath, services: usize) -> Result<(), BpfError> {
    let mut desired = Desired::default();
    let mut add = |id: u64, addr: (IpAddr, u16), backends: Vec<(IpAddr, u16)>, redirect: bool| {
        let set = SetId {
            id,
            set: if addr.0.is_ipv6() {
                proxy_common::set::CLUSTER | proxy_common::set::IPV6
            } else {
                proxy_common::set::CLUSTER
            },
        };
        desired.sets.insert(
            set,
            backends
                .into_iter()
                .map(|(ip, port)| writes::backend_of(ip, port))
                .collect(),
        );
        for key_scope in [scope::POD, scope::EXTERNAL] {
            desired.services.insert(
                writes::service_key(addr.0, addr.1, Protocol::Udp, key_scope),
                DesiredService {
                    set,
                    affinity_timeout: None,
                    protocol: Protocol::Udp,
                    count_only: false,
                    redirect: redirect && key_scope == scope::POD,
                },
            );
        }
    };
    let under_test = (vip(0).into(), 53);
    let backend = (Ipv4Addr::new(10, 244, 0, 2).into(), 5353);
    add(1, under_test, vec![backend], false);
    add(2, backend, vec![under_test], false);
    let (vip6, backend6) = ((VIP6.0.into(), VIP6.1), (BACKEND6.0.into(), BACKEND6.1));
    add(4, vip6, vec![backend6], false);
    add(5, backend6, vec![vip6], false);
    let (rv, rb) = (
        (REDIRECT_VIP.0.into(), REDIRECT_VIP.1),
        (REDIRECT_BACKEND.0.into(), REDIRECT_BACKEND.1),
    );
    add(6, rv, vec![rb], true);
    add(7, rb, vec![rv], true);
    for i in 1..services {
        let i64 = u64::try_from(i).expect("small");
        add(
            1000 + i64,
            (vip(i).into(), 53),
            vec![
                (
                    Ipv4Addr::from(0x0af4_0000 + u32::try_from(i).expect("small")).into(),
                    8080,
                ),
                (
                    Ipv4Addr::from(0x0af5_0000 + u32::try_from(i).expect("small")).into(),
                    8080,
                ),
            ],
            false,
        );
    }
    // A service nftables serves: the programs only count its packets.
    for key_scope in [scope::POD, scope::EXTERNAL] {
        desired.services.insert(
            writes::service_key(COUNTED.0.into(), COUNTED.1, Protocol::Udp, key_scope),
            DesiredService {
                set: SetId {
                    id: 3,
                    set: proxy_common::set::CLUSTER,
                },
                affinity_timeout: None,
                protocol: Protocol::Udp,
                count_only: true,
                redirect: false,
            },
        );
    }
    let (w, _) = writes::plan_writes(&writes::ServiceMaps::default(), &desired, 1);
    store::apply(&mut dp.maps, &w)?;
    for addr in [REDIRECT_VIP.0, REDIRECT_BACKEND.0] {
        dp.maps
            .local_endpoints()
            .put(
                super::forwarding::addr_key(addr),
                proxy_common::LocalEndpoint {
                    if_index: 1,
                    pod_mac: [2, 0, 0, 0, 0, 9],
                    host_mac: [2, 0, 0, 0, 0, 8],
                },
            )
            .map_err(BpfError::Store)?;
    }
    Ok(())
}

fn run_median(
    dp: &mut Datapath,
    program: &'static str,
    frame: &[u8],
    repeat: u32,
    rounds: u32,
) -> Result<Duration, BpfError> {
    let mut samples = Vec::new();
    let mut out = vec![0u8; frame.len() + 256];
    for _ in 0..rounds.max(1) {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let prog = dp
            .ebpf
            .program_mut(program)
            .ok_or(BpfError::MissingProgram { name: program })?;
        let result = if program == program_names::XDP {
            let xdp: &mut Xdp = prog.try_into().map_err(|source| BpfError::Program {
                name: program,
                source,
            })?;
            xdp.test_run(opts)
        } else {
            let tc: &mut SchedClassifier = prog.try_into().map_err(|source| BpfError::Program {
                name: program,
                source,
            })?;
            tc.test_run(opts)
        }
        .map_err(|source| BpfError::Program {
            name: program,
            source,
        })?;
        samples.push(result.duration);
    }
    samples.sort();
    Ok(samples[samples.len() / 2])
}

const REDIRECT_CASE: &str = "established flow, DNAT and redirect to a local pod";

/// A packet to the redirected service, with the highest TTL (see [`REDIRECT_REPEAT`]).
fn redirect_frame(client: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut f = udp_frame(client, REDIRECT_VIP, 64);
    let old = u16::from_be_bytes([f[22], f[23]]);
    f[22] = 255;
    let new = u16::from_be_bytes([f[22], f[23]]);
    // RFC 1624 update of the header checksum for the TTL word.
    let check = u16::from_be_bytes([f[24], f[25]]);
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded above")]
    let c = !(sum as u16);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// The cases measured: program, case, and the frame it runs on.
fn cases() -> [(&'static str, &'static str, Vec<u8>); 10] {
    let client = (Ipv4Addr::new(10, 244, 9, 9), 40000);
    let to_vip = udp_frame(client, (vip(0), 53), 64);
    let reply = udp_frame((Ipv4Addr::new(10, 244, 0, 2), 5353), client, 64);
    let to_nothing = udp_frame(client, (Ipv4Addr::new(192, 0, 2, 1), 9), 64);
    let to_counted = udp_frame(client, COUNTED, 64);
    [
        (program_names::XDP, "established flow, DNAT", to_vip.clone()),
        (program_names::XDP, "no service", to_nothing),
        (
            program_names::XDP,
            "counted, to nftables",
            to_counted.clone(),
        ),
        (program_names::TC_INGRESS, "established flow, DNAT", to_vip),
        (
            program_names::TC_INGRESS,
            REDIRECT_CASE,
            redirect_frame(client),
        ),
        (
            program_names::TC_INGRESS,
            "counted, to nftables",
            to_counted,
        ),
        (program_names::TC_EGRESS, "reply, reverse NAT", reply),
        (
            program_names::XDP,
            "IPv6 established flow, DNAT",
            udp6_frame(CLIENT6, VIP6, 64),
        ),
        (
            program_names::TC_INGRESS,
            "IPv6 established flow, DNAT",
            udp6_frame(CLIENT6, VIP6, 64),
        ),
        (
            program_names::TC_EGRESS,
            "IPv6 reply, reverse NAT",
            udp6_frame(BACKEND6, CLIENT6, 64),
        ),
    ]
}

/// Measures the programs' cost per packet with `services` services loaded: a packet of an
/// established flow through XDP and TC ingress (translated every run), a reply through TC
/// egress, a packet to no service through XDP, and a packet to a service nftables serves
/// (only counted) through XDP and TC ingress; and the same established-flow and reply
/// cases over IPv6.
pub fn prog_cost(services: usize, repeat: u32, rounds: u32) -> Result<Vec<ProgCost>, BpfError> {
    prog_costs(&[services], repeat, rounds, 1)
}

/// [`prog_cost`] for several service counts at once: one datapath per count, all loaded
/// first, then each case measured on each in turn, `alternations` times, keeping each one's
/// lowest median. A shared machine's slow and fast spells (seconds long) then fall on every
/// count alike instead of on whichever was measured during one.
pub fn prog_costs(
    service_counts: &[usize],
    repeat: u32,
    rounds: u32,
    alternations: u32,
) -> Result<Vec<ProgCost>, BpfError> {
    let mut datapaths = Vec::new();
    for &services in service_counts {
        let mut dp = Datapath::load(
            embedded_object()?,
            None,
            proxy_common::capacity::CONNECTIONS,
        )?;
        populate(&mut dp, services.max(1))?;
        datapaths.push((services, dp));
    }
    let cases = cases();
    let mut out: Vec<ProgCost> = Vec::new();
    for (services, dp) in &mut datapaths {
        for (program, case, frame) in &cases {
            // One run first, so that the flow exists before the measured runs.
            run_median(dp, program, frame, 1, 1)?;
            out.push(ProgCost {
                program,
                case,
                services: *services,
                per_packet: Duration::MAX,
            });
        }
    }
    for _ in 0..alternations.max(1) {
        for (i, (program, case, frame)) in cases.iter().enumerate() {
            let (repeat, rounds) = if *case == REDIRECT_CASE {
                (repeat.min(REDIRECT_REPEAT), rounds.max(1) * 20)
            } else {
                (repeat, rounds)
            };
            for (d, (_, dp)) in datapaths.iter_mut().enumerate() {
                let cost = run_median(dp, program, frame, repeat, rounds)?;
                let best = &mut out[d * cases.len() + i].per_packet;
                *best = (*best).min(cost);
            }
        }
    }
    Ok(out)
}
