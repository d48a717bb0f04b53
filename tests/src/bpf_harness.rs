//! Driving the fast path's programs with `BPF_PROG_TEST_RUN`: a private (unpinned,
//! unattached) datapath whose maps are programmed from a real `ProxyPlan`, and plans built
//! from the model's fixtures.

use aya::{
    TestRun as _, TestRunOptions,
    programs::{SchedClassifier, Xdp},
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use proxy_agent::{
    bpf::{
        AccelerationMode, ApplyReport,
        kernel::Datapath,
        netlink::ConntrackTuple,
        reconcile::{Counters, FakeConntrack, Syncer},
    },
    model::{ClusterState, fixtures::NodeBuilder},
    plan::{self, DetectLocal, PlanSettings, ProxyPlan},
};
use proxy_common::{StatIndex, program_names};

/// The node the test plans are computed for.
pub const NODE: &str = "node-a";
pub const NODE_IP: &str = "192.168.1.10";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const POD_CIDR: &str = "10.244.1.0/24";
/// The node's IPv6 address and the IPv6 cluster CIDR of [`plan_dual_stack`].
pub const NODE_IP6: &str = "fd00:1::10";
pub const CLUSTER_CIDR6: &str = "fd00:244::/48";

/// XDP and TC verdicts the programs return.
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_PIPE: u32 = 3;

/// Computes the plan for `node-a` (pod CIDR 10.244.1.0/24, cluster CIDR 10.244.0.0/16,
/// node IP 192.168.1.10) from Services and EndpointSlices.
///
/// # Panics
/// When an object is invalid.
pub fn plan(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ProxyPlan {
    plan_on(services, slices, false)
}

/// As [`plan`], on a dual-stack node: IPv6 address `fd00:1::10`, IPv6 cluster CIDR
/// `fd00:244::/48`, service CIDR `fd00:96::/112`.
///
/// # Panics
/// When an object is invalid.
pub fn plan_dual_stack(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ProxyPlan {
    plan_on(services, slices, true)
}

fn plan_on(services: Vec<Service>, slices: Vec<EndpointSlice>, dual: bool) -> ProxyPlan {
    let mut state = ClusterState::new();
    for s in services {
        state.upsert_service(s).expect("valid service");
    }
    for s in slices {
        state.upsert_slice(s).expect("valid slice");
    }
    let mut node = NodeBuilder::new(NODE)
        .internal_ip(NODE_IP)
        .pod_cidr(POD_CIDR);
    let mut cluster_cidrs = vec![CLUSTER_CIDR.parse().unwrap()];
    let mut service_cidrs = vec!["10.96.0.0/12".parse().unwrap()];
    if dual {
        node = node.internal_ip(NODE_IP6);
        cluster_cidrs.push(CLUSTER_CIDR6.parse().unwrap());
        service_cidrs.push("fd00:96::/112".parse().unwrap());
    }
    state.set_node(Some(node.build()));
    let settings = PlanSettings {
        node_name: NODE.into(),
        detect_local: DetectLocal::ClusterCidr,
        cluster_cidrs,
        service_cidrs,
        ..PlanSettings::default()
    };
    let plan = plan::compute(&state, &settings);
    assert!(plan.errors.is_empty(), "plan errors: {:?}", plan.errors);
    plan
}

/// A loaded datapath under test.
pub struct TestDatapath {
    pub dp: Datapath,
    pub syncer: Syncer,
    pub conntrack: FakeConntrack,
    generation: u64,
}

/// A program's verdict and output frame.
#[derive(Clone, Debug)]
pub struct Run {
    pub verdict: u32,
    pub frame: Vec<u8>,
}

impl TestDatapath {
    /// Loads the embedded programs with a connection table of `flow_entries`.
    ///
    /// # Panics
    /// When the object is missing or the verifier rejects a program.
    pub fn load(mode: AccelerationMode, flow_entries: u32) -> Self {
        let object = proxy_agent::bpf::embedded_object()
            .unwrap_or_else(|e| panic!("{e}: `cargo xtask test` builds it first"));
        let dp = Datapath::load(object, None, flow_entries)
            .unwrap_or_else(|e| panic!("loading the datapath: {}", chain(&e)));
        Self {
            dp,
            syncer: Syncer::new(mode),
            conntrack: FakeConntrack::default(),
            generation: 0,
        }
    }

    /// Programs the maps for `plan`.
    ///
    /// # Panics
    /// When the sync fails.
    pub fn apply(&mut self, plan: &ProxyPlan) -> ApplyReport {
        self.generation += 1;
        self.syncer
            .sync(
                &mut self.dp.maps,
                &mut self.conntrack,
                plan,
                self.generation,
            )
            .unwrap_or_else(|e| panic!("sync: {}", chain(&e)))
    }

    /// Makes the fake conntrack report these nftables flows from now on.
    pub fn conntrack_has(&mut self, tuples: Vec<ConntrackTuple>) {
        self.conntrack.snapshots = vec![tuples];
    }

    fn run(&mut self, program: &'static str, frame: &[u8]) -> Run {
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let prog = self.dp.ebpf.program_mut(program).expect("program");
        let result = if program == program_names::XDP {
            let xdp: &mut Xdp = prog.try_into().unwrap();
            xdp.test_run(opts)
        } else {
            let tc: &mut SchedClassifier = prog.try_into().unwrap();
            tc.test_run(opts)
        }
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {program}: {e}"));
        out.truncate(result.data_size_out as usize);
        Run {
            verdict: result.return_value,
            frame: out,
        }
    }

    /// Runs the XDP program (a packet from outside arriving on a node interface).
    pub fn xdp(&mut self, frame: &[u8]) -> Run {
        let r = self.run(program_names::XDP, frame);
        assert_eq!(r.verdict, XDP_PASS, "the XDP program always passes");
        r
    }

    /// Runs TC ingress (a packet from a pod).
    pub fn from_pod(&mut self, frame: &[u8]) -> Run {
        let r = self.run(program_names::TC_INGRESS, frame);
        assert_eq!(r.verdict, TC_ACT_PIPE, "TC ingress always continues");
        r
    }

    /// Runs TC ingress of a pod interface, whatever its verdict (redirect forwarding).
    pub fn tc_ingress(&mut self, frame: &[u8]) -> Run {
        self.run(program_names::TC_INGRESS, frame)
    }

    /// Runs the reply program of node interfaces' TC ingress, whatever its verdict.
    pub fn tc_reply(&mut self, frame: &[u8]) -> Run {
        self.run(program_names::TC_REPLY, frame)
    }

    /// Runs TC egress (a packet leaving toward a client).
    pub fn to_client(&mut self, frame: &[u8]) -> Run {
        let r = self.run(program_names::TC_EGRESS, frame);
        assert_eq!(r.verdict, TC_ACT_PIPE, "TC egress always continues");
        r
    }

    /// The programs' and services' counters.
    ///
    /// # Panics
    /// When the maps cannot be read.
    pub fn counters(&self) -> Counters {
        Counters::read(&self.dp.maps, self.syncer.counter_slots()).expect("reading counters")
    }

    pub fn stat(&self, index: StatIndex) -> u64 {
        self.counters().stat(index).packets
    }
}

/// An error with its sources.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
