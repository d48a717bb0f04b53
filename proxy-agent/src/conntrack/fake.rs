//! [`Conntrack`] in memory, for tests of whatever drives conntrack.

use std::{fmt, io};

use super::{Conntrack, ConntrackError, Flow, FlowFilter, Request};
use crate::model::IpFamily;

/// An in-memory conntrack table with the kernel's semantics: an entry is identified by its
/// original tuple (inserting the same one again replaces it), listing filters by family and
/// protocol, and deleting removes every entry that matches any filter. A failure can be
/// injected to test how callers handle a kernel that refuses.
#[derive(Clone, Debug, Default)]
pub struct FakeConntrack {
    flows: Vec<Flow>,
    failure: Option<i32>,
}

impl FakeConntrack {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_flows(flows: impl IntoIterator<Item = Flow>) -> Self {
        let mut fake = Self::new();
        for flow in flows {
            fake.insert(flow);
        }
        fake
    }

    /// Adds a flow, replacing one with the same original tuple.
    pub fn insert(&mut self, flow: Flow) {
        match self.flows.iter_mut().find(|f| f.original == flow.original) {
            Some(existing) => *existing = flow,
            None => self.flows.push(flow),
        }
    }

    /// Every flow, sorted: the state to compare against what a test expects.
    pub fn dump(&self) -> Vec<Flow> {
        let mut flows = self.flows.clone();
        flows.sort();
        flows
    }

    /// Makes every later call fail as if the kernel answered `errno` (`None`: succeed again).
    pub fn fail_with(&mut self, errno: Option<i32>) {
        self.failure = errno;
    }

    fn check(&self, request: Request) -> Result<(), ConntrackError> {
        match self.failure {
            Some(errno) => Err(ConntrackError::Refused {
                request,
                source: io::Error::from_raw_os_error(errno),
            }),
            None => Ok(()),
        }
    }
}

impl Conntrack for FakeConntrack {
    fn flows(&mut self, family: IpFamily, protocol: u8) -> Result<Vec<Flow>, ConntrackError> {
        self.check(Request::Dump { family, protocol })?;
        Ok(self
            .flows
            .iter()
            .filter(|f| f.family() == family && f.protocol() == protocol)
            .copied()
            .collect())
    }

    fn delete(&mut self, filters: &[FlowFilter]) -> Result<usize, ConntrackError> {
        // The kernel backend lists before it deletes, so a refusing kernel fails any delete
        // with filters, whether or not something matches.
        if let Some(filter) = filters.first() {
            let doomed = self
                .flows
                .iter()
                .find(|f| filters.iter().any(|filter| filter.matches(f)));
            self.check(match doomed {
                Some(flow) => Request::Delete { flow: *flow },
                None => Request::Dump {
                    family: filter.families()[0],
                    protocol: filter.protocol,
                },
            })?;
        }
        let before = self.flows.len();
        self.flows
            .retain(|f| !filters.iter().any(|filter| filter.matches(f)));
        Ok(before - self.flows.len())
    }
}

impl fmt::Display for FakeConntrack {
    /// One flow a line, sorted, as `conntrack -L` prints them (without timers and flags).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for flow in self.dump() {
            writeln!(f, "{flow}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::Tuple;

    fn udp(src: &str, dst: &str, sport: u16, dport: u16, backend: (&str, u16)) -> Flow {
        let original = Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: sport,
            dst_port: dport,
            protocol: 17,
        };
        Flow {
            original,
            reply: Tuple {
                src: backend.0.parse().unwrap(),
                dst: original.src,
                src_port: backend.1,
                dst_port: sport,
                protocol: 17,
            },
        }
    }

    #[test]
    fn the_fake_lists_by_family_and_protocol_and_deletes_what_matches() {
        let a = udp("10.0.0.1", "10.96.0.10", 1000, 53, ("10.244.0.5", 5353));
        let b = udp("10.0.0.1", "10.96.0.10", 1001, 53, ("10.244.0.6", 5353));
        let c = udp("fd00::1", "fd00:96::10", 1000, 53, ("fd00:244::5", 5353));
        let mut ct = FakeConntrack::with_flows([a, b, c]);
        // The same original tuple again replaces the entry, as in the kernel.
        ct.insert(b);
        assert_eq!(ct.flows(IpFamily::V4, 17).unwrap(), vec![a, b]);
        assert_eq!(ct.flows(IpFamily::V6, 17).unwrap(), vec![c]);
        assert!(ct.flows(IpFamily::V4, 132).unwrap().is_empty());

        let filter = FlowFilter {
            reply_src: Some("10.244.0.5".parse().unwrap()),
            ..FlowFilter::protocol(17)
        };
        assert_eq!(ct.delete(&[filter, filter]).unwrap(), 1);
        assert_eq!(ct.delete(&[filter]).unwrap(), 0);
        assert_eq!(ct.dump(), vec![b, c]);
        assert_eq!(
            ct.to_string(),
            "udp src=10.0.0.1 dst=10.96.0.10 sport=1001 dport=53 src=10.244.0.6 dst=10.0.0.1 sport=5353 dport=1001\n\
             udp src=fd00::1 dst=fd00:96::10 sport=1000 dport=53 src=fd00:244::5 dst=fd00::1 sport=5353 dport=1000\n"
        );
    }

    #[test]
    fn an_injected_failure_changes_nothing() {
        let a = udp("10.0.0.1", "10.96.0.10", 1000, 53, ("10.244.0.5", 5353));
        let mut ct = FakeConntrack::with_flows([a]);
        ct.fail_with(Some(libc::EPERM));
        let err = ct.delete(&[FlowFilter::protocol(17)]).unwrap_err();
        assert!(
            matches!(err, ConntrackError::Refused { request: Request::Delete { flow }, .. } if flow == a),
            "{err}"
        );
        assert!(ct.flows(IpFamily::V4, 17).is_err());
        ct.fail_with(None);
        assert_eq!(ct.dump(), vec![a]);
    }
}
