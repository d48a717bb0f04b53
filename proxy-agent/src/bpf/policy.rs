//! The `auto` mode's hot-service policy. Pure: fed by periodic reads of the per-service
//! counters (packets from clients, whichever path served them), it says which service ports
//! the fast path should serve.
//!
//! - **Rates** are packets per second between two observations: the period at which the
//!   agent observes (see [`super::FastPath::observe`]) is the averaging window.
//! - **Hysteresis:** a port is promoted when its rate is above `promote_above_pps` and
//!   demoted when it falls below `demote_below_pps`, which is lower; in between it stays
//!   where it is.
//! - **Dwell:** after a move the port stays at least `min_dwell` where it went (a port first
//!   seen has never moved and may be promoted at once).
//! - **Capacity:** the promoted ports must fit in the maps (Maglev tables and backend entries,
//!   two revisions each) and in `max_services` when set. Hotter ports are admitted first; a
//!   full fast path admits new ports only as others leave (no preemption: that would move
//!   flows for a small gain and could flap).
//! - **Annotations win:** a port annotated `"on"` is always served (it uses capacity first);
//!   one annotated `"off"` never (it is no candidate).
//! - A port that stops being a candidate (ineligible, deleted, annotated `"off"`) leaves at
//!   once, whatever its dwell.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use super::{
    config::AutoThresholds,
    eligibility::{AutoChoice, Reason},
};
use crate::plan::ServicePortId;

/// A service port the fast path could serve (eligible on at least one path with mode
/// `all`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: ServicePortId,
    /// Annotated `"on"`: served whatever its rate.
    pub forced: bool,
    /// Maglev tables (backend sets) its accelerated paths need.
    pub sets: usize,
    /// Backend entries its accelerated paths need.
    pub backend_entries: usize,
}

/// How much the fast path may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub ports: usize,
    pub sets: usize,
    pub backend_entries: usize,
}

impl Capacity {
    /// The maps' capacity (every set and backend needs room for two revisions), and at most
    /// `max_services` ports when that is not 0.
    pub fn of_maps(max_services: u32) -> Self {
        let half = |n: u32| usize::try_from(n / 2).unwrap_or(usize::MAX);
        Self {
            ports: if max_services == 0 {
                usize::MAX
            } else {
                usize::try_from(max_services).unwrap_or(usize::MAX)
            },
            sets: half(proxy_common::capacity::MAGLEV),
            backend_entries: half(proxy_common::capacity::BACKENDS),
        }
    }

    fn fits(&self, used: &Usage, c: &Candidate) -> bool {
        used.ports < self.ports
            && used.sets + c.sets <= self.sets
            && used.backend_entries + c.backend_entries <= self.backend_entries
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    ports: usize,
    sets: usize,
    backend_entries: usize,
}

impl Usage {
    fn add(&mut self, c: &Candidate) {
        self.ports += 1;
        self.sets += c.sets;
        self.backend_entries += c.backend_entries;
    }
}

/// What one observation changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub promoted: Vec<ServicePortId>,
    pub demoted: Vec<ServicePortId>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.promoted.is_empty() && self.demoted.is_empty()
    }
}

/// What the policy knows of one service port.
#[derive(Clone, Copy, Debug, Default)]
struct Tracked {
    /// The last counter read, and when.
    last: Option<(u64, Duration)>,
    /// Packets per second between the last two reads; `None` before the second one.
    rate: Option<f64>,
    /// When the policy last moved it.
    moved_at: Option<Duration>,
}

/// Observations shorter than this do not update a rate (too noisy).
const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// The policy's state between observations.
#[derive(Clone, Debug)]
pub struct AutoPolicy {
    thresholds: AutoThresholds,
    capacity: Capacity,
    tracked: BTreeMap<ServicePortId, Tracked>,
    choice: AutoChoice,
}

impl AutoPolicy {
    pub fn new(thresholds: AutoThresholds, capacity: Capacity) -> Self {
        Self {
            thresholds,
            capacity,
            tracked: BTreeMap::new(),
            choice: AutoChoice::default(),
        }
    }

    /// New settings (a configuration reload); they apply from the next observation.
    pub fn set_thresholds(&mut self, thresholds: AutoThresholds, capacity: Capacity) {
        self.thresholds = thresholds;
        self.capacity = capacity;
    }

    /// The current choice, for [`super::eligibility::decide_auto`].
    pub fn choice(&self) -> &AutoChoice {
        &self.choice
    }

    /// The last measured rate of a port (packets from clients per second).
    pub fn rate(&self, id: ServicePortId) -> Option<f64> {
        self.tracked.get(&id).and_then(|t| t.rate)
    }

    /// Takes ports that are on the fast path already (found in adopted maps, or promoted by
    /// another mode before a switch to `auto`) as promoted at `now`: they stay at least
    /// `min_dwell`, rather than leaving before they were measured.
    pub fn adopt(&mut self, ids: impl IntoIterator<Item = ServicePortId>, now: Duration) {
        for id in ids {
            self.choice.held.remove(&id);
            if self.choice.promoted.insert(id) {
                self.tracked.entry(id).or_default().moved_at = Some(now);
            }
        }
    }

    /// Takes one counter read: `seen` is each counted port's cumulative count of packets from
    /// clients at `now` (a monotonic clock). Returns the ports promoted and demoted.
    pub fn observe(
        &mut self,
        now: Duration,
        candidates: &[Candidate],
        seen: &BTreeMap<ServicePortId, u64>,
    ) -> Changes {
        self.update_rates(now, candidates, seen);
        let rate = |id: &ServicePortId| {
            self.tracked
                .get(id)
                .and_then(|t| t.rate)
                .unwrap_or_default()
        };
        let dwelt = |id: &ServicePortId| {
            self.tracked
                .get(id)
                .and_then(|t| t.moved_at)
                .is_none_or(|m| now.saturating_sub(m) >= self.thresholds.min_dwell)
        };
        // Annotated ports are not the policy's to move.
        let forced: BTreeSet<ServicePortId> = candidates
            .iter()
            .filter(|c| c.forced)
            .map(|c| c.id)
            .collect();
        let before: BTreeSet<ServicePortId> =
            self.choice.promoted.difference(&forced).copied().collect();
        let before = &before;
        let mut used = Usage::default();
        let mut held = BTreeMap::new();
        // Annotated ports first: they take capacity whatever their rate.
        for c in candidates.iter().filter(|c| c.forced) {
            used.add(c);
        }
        // Promoted ports stay unless cold for long enough; if the capacity shrank (a reload),
        // the coldest go.
        let mut staying: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| !c.forced && before.contains(&c.id))
            .filter(|c| {
                let cold = rate(&c.id) < self.thresholds.demote_below_pps;
                !(cold && dwelt(&c.id))
            })
            .collect();
        staying.sort_by(|a, b| rate(&b.id).total_cmp(&rate(&a.id)).then(a.id.cmp(&b.id)));
        let mut promoted = BTreeSet::new();
        for c in staying {
            if self.capacity.fits(&used, c) {
                used.add(c);
                promoted.insert(c.id);
            }
        }
        // Hot ports join, hottest first, while there is room.
        let mut joining: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| !c.forced && !before.contains(&c.id))
            .collect();
        joining.sort_by(|a, b| rate(&b.id).total_cmp(&rate(&a.id)).then(a.id.cmp(&b.id)));
        for c in joining {
            if rate(&c.id) <= self.thresholds.promote_above_pps {
                held.insert(c.id, Reason::Cold);
            } else if !dwelt(&c.id) {
                held.insert(c.id, Reason::Dwell);
            } else if self.capacity.fits(&used, c) {
                used.add(c);
                promoted.insert(c.id);
            } else {
                held.insert(c.id, Reason::Capacity);
            }
        }
        for c in candidates.iter().filter(|c| !c.forced) {
            if before.contains(&c.id) && !promoted.contains(&c.id) {
                held.insert(c.id, Reason::Cold);
            }
        }
        let changes = Changes {
            promoted: promoted.difference(before).copied().collect(),
            demoted: before.difference(&promoted).copied().collect(),
        };
        for id in changes.promoted.iter().chain(&changes.demoted) {
            self.tracked.entry(*id).or_default().moved_at = Some(now);
        }
        self.choice = AutoChoice { promoted, held };
        changes
    }

    fn update_rates(
        &mut self,
        now: Duration,
        candidates: &[Candidate],
        seen: &BTreeMap<ServicePortId, u64>,
    ) {
        for (id, count) in seen {
            let t = self.tracked.entry(*id).or_default();
            // The first read is only a baseline.
            if let Some((before, at)) = t.last {
                let elapsed = now.saturating_sub(at);
                if elapsed < MIN_INTERVAL {
                    continue;
                }
                // A count that went down was reset (the slot was reassigned): count from 0.
                let delta = count.checked_sub(before).unwrap_or(*count);
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "a packet rate needs no more than f64's 52 bits"
                )]
                let rate = delta as f64 / elapsed.as_secs_f64();
                t.rate = Some(rate);
            }
            t.last = Some((*count, now));
        }
        let known: BTreeSet<ServicePortId> = candidates
            .iter()
            .map(|c| c.id)
            .chain(seen.keys().copied())
            .collect();
        self.tracked.retain(|id, _| known.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn thresholds(max_services: u32) -> AutoThresholds {
        AutoThresholds {
            promote_above_pps: 1000.0,
            demote_below_pps: 200.0,
            min_dwell: Duration::from_secs(10),
            max_services,
        }
    }

    fn candidate(id: u64) -> Candidate {
        Candidate {
            id: ServicePortId(id),
            forced: false,
            sets: 1,
            backend_entries: 2,
        }
    }

    /// Drives a policy with a fake clock: each step is `(seconds since start, [(port,
    /// packets per second since the previous step)])`; the counters accumulate.
    struct Run {
        policy: AutoPolicy,
        counts: BTreeMap<ServicePortId, u64>,
        last: Duration,
    }

    impl Run {
        fn new(max_services: u32) -> Self {
            Self {
                policy: AutoPolicy::new(thresholds(max_services), Capacity::of_maps(max_services)),
                counts: BTreeMap::new(),
                last: Duration::ZERO,
            }
        }

        fn step(&mut self, at: u64, rates: &[(u64, u64)], candidates: &[Candidate]) -> Changes {
            let now = Duration::from_secs(at);
            let elapsed = now.saturating_sub(self.last).as_secs();
            for (id, pps) in rates {
                *self.counts.entry(ServicePortId(*id)).or_default() += pps * elapsed;
            }
            for c in candidates {
                self.counts.entry(c.id).or_default();
            }
            self.last = now;
            self.policy.observe(now, candidates, &self.counts)
        }

        fn promoted(&self) -> Vec<u64> {
            self.policy.choice().promoted.iter().map(|i| i.0).collect()
        }

        fn held(&self, id: u64) -> Option<Reason> {
            self.policy.choice().held.get(&ServicePortId(id)).copied()
        }
    }

    /// One port through a traffic history: `(time, pps over the last interval, promoted
    /// after this step, reason when not)`.
    #[test]
    fn hysteresis_and_dwell_decide_when_a_port_moves() {
        type Step = (u64, u64, bool, Option<Reason>);
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                "a first read is only a baseline",
                vec![(0, 0, false, Some(Reason::Cold))],
            ),
            (
                "above the promotion threshold: promoted at once (never moved)",
                vec![(0, 0, false, None), (2, 5000, true, None)],
            ),
            (
                "at the threshold is not above it",
                vec![(0, 0, false, None), (2, 1000, false, Some(Reason::Cold))],
            ),
            (
                "between the thresholds a promoted port stays (hysteresis)",
                vec![
                    (0, 0, false, None),
                    (2, 5000, true, None),
                    (20, 500, true, None),
                    (40, 300, true, None),
                ],
            ),
            (
                "below the demotion threshold, but within the dwell: stays",
                vec![
                    (0, 0, false, None),
                    (2, 5000, true, None),
                    (4, 10, true, None),
                    (11, 10, true, None),
                ],
            ),
            (
                "below the demotion threshold after the dwell: demoted",
                vec![
                    (0, 0, false, None),
                    (2, 5000, true, None),
                    (12, 10, false, Some(Reason::Cold)),
                ],
            ),
            (
                "hot again right after a demotion waits for the dwell",
                vec![
                    (0, 0, false, None),
                    (2, 5000, true, None),
                    (12, 10, false, None),
                    (14, 5000, false, Some(Reason::Dwell)),
                    (22, 5000, true, None),
                ],
            ),
            (
                "between the thresholds a cold port stays cold",
                vec![
                    (0, 0, false, None),
                    (2, 800, false, Some(Reason::Cold)),
                    (4, 800, false, Some(Reason::Cold)),
                ],
            ),
        ];
        for (what, steps) in cases {
            let mut run = Run::new(0);
            let c = [candidate(1)];
            for (i, (at, pps, promoted, reason)) in steps.into_iter().enumerate() {
                run.step(at, &[(1, pps)], &c);
                assert_eq!(
                    run.promoted() == vec![1],
                    promoted,
                    "{what}: step {i} at {at}s"
                );
                if let Some(r) = reason {
                    assert_eq!(run.held(1), Some(r), "{what}: step {i}");
                }
            }
        }
    }

    #[test]
    fn capacity_admits_the_hottest_and_no_preemption() {
        let mut run = Run::new(2);
        let c: Vec<Candidate> = (1..=4).map(candidate).collect();
        run.step(0, &[], &c);
        let changes = run.step(2, &[(1, 2000), (2, 9000), (3, 5000), (4, 100)], &c);
        assert_eq!(run.promoted(), vec![2, 3], "the two hottest");
        assert_eq!(changes.promoted, vec![ServicePortId(2), ServicePortId(3)]);
        assert_eq!(run.held(1), Some(Reason::Capacity));
        assert_eq!(run.held(4), Some(Reason::Cold));
        // Port 1 gets hotter than both: it still waits (no preemption) ...
        run.step(4, &[(1, 50_000), (2, 1500), (3, 1500)], &c);
        assert_eq!(run.promoted(), vec![2, 3]);
        // ... until one leaves.
        let changes = run.step(14, &[(1, 50_000), (2, 1500), (3, 10)], &c);
        assert_eq!(changes.demoted, vec![ServicePortId(3)]);
        assert_eq!(changes.promoted, vec![ServicePortId(1)]);
        assert_eq!(run.promoted(), vec![1, 2]);
    }

    #[test]
    fn annotated_ports_take_capacity_first_and_ineligible_ones_leave_at_once() {
        let mut run = Run::new(2);
        let forced = Candidate {
            forced: true,
            ..candidate(9)
        };
        let c = vec![candidate(1), candidate(2), forced.clone()];
        run.step(0, &[], &c);
        run.step(2, &[(1, 5000), (2, 4000)], &c);
        assert_eq!(
            run.promoted(),
            vec![1],
            "the annotated port holds one place"
        );
        assert_eq!(run.held(2), Some(Reason::Capacity));
        // Port 1 stops being a candidate (annotated "off", ineligible or deleted), in its
        // dwell: it leaves at once, and port 2 takes its place.
        let c2 = vec![candidate(2), forced];
        let changes = run.step(3, &[(1, 5000), (2, 4000)], &c2);
        assert_eq!(changes.demoted, vec![ServicePortId(1)]);
        assert_eq!(changes.promoted, vec![ServicePortId(2)]);
    }

    #[test]
    fn capacity_counts_backend_sets_and_entries() {
        let cap = Capacity {
            ports: usize::MAX,
            sets: 3,
            backend_entries: 10,
        };
        let mut policy = AutoPolicy::new(thresholds(0), cap);
        let big = |id, sets, backend_entries| Candidate {
            id: ServicePortId(id),
            forced: false,
            sets,
            backend_entries,
        };
        let c = vec![big(1, 2, 4), big(2, 2, 2), big(3, 1, 6)];
        let mut seen: BTreeMap<ServicePortId, u64> = c.iter().map(|c| (c.id, 0)).collect();
        policy.observe(Duration::ZERO, &c, &seen);
        for (id, n) in [(1, 30_000), (2, 20_000), (3, 10_000)] {
            seen.insert(ServicePortId(id), n);
        }
        policy.observe(SEC, &c, &seen);
        // 1 (2 sets, 4 entries) fits; 2 needs a fourth set; 3 fits in sets (3) and entries (10).
        assert_eq!(
            policy.choice().promoted,
            [ServicePortId(1), ServicePortId(3)].into()
        );
        assert_eq!(
            policy.choice().held.get(&ServicePortId(2)),
            Some(&Reason::Capacity)
        );
    }

    #[test]
    fn adopted_ports_dwell_before_they_may_leave_and_resets_are_not_negative_rates() {
        let mut run = Run::new(0);
        let c = [candidate(1)];
        run.policy.adopt([ServicePortId(1)], Duration::ZERO);
        run.step(0, &[], &c);
        run.step(5, &[(1, 0)], &c);
        assert_eq!(run.promoted(), vec![1], "within the dwell");
        run.step(11, &[(1, 0)], &c);
        assert_eq!(run.promoted(), Vec::<u64>::new(), "cold after the dwell");

        // A counter that goes down (its slot was reassigned) counts from zero.
        let mut policy = AutoPolicy::new(thresholds(0), Capacity::of_maps(0));
        let id = ServicePortId(1);
        policy.observe(Duration::ZERO, &c, &[(id, 1_000_000)].into());
        policy.observe(SEC, &c, &[(id, 3000)].into());
        assert_eq!(policy.rate(id), Some(3000.0));
        // Reads closer together than the minimum interval do not update the rate.
        policy.observe(SEC + Duration::from_millis(10), &c, &[(id, 100_000)].into());
        assert_eq!(policy.rate(id), Some(3000.0));
    }

    #[test]
    fn a_lowered_max_services_demotes_the_coldest_first() {
        let mut run = Run::new(0);
        let c: Vec<Candidate> = (1..=3).map(candidate).collect();
        run.step(0, &[], &c);
        run.step(2, &[(1, 3000), (2, 9000), (3, 5000)], &c);
        assert_eq!(run.promoted(), vec![1, 2, 3]);
        run.policy
            .set_thresholds(thresholds(1), Capacity::of_maps(1));
        let changes = run.step(4, &[(1, 3000), (2, 9000), (3, 5000)], &c);
        assert_eq!(run.promoted(), vec![2]);
        assert_eq!(changes.demoted, vec![ServicePortId(1), ServicePortId(3)]);
    }
}
