//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table in which every
//! backend owns about the same number of slots, and adding or removing one backend moves
//! about `1/n` of the slots.
//!
//! A backend's place in the table depends only on its address and port, so every node (and a
//! restarted agent) computes the same table for the same set.

use proxy_common::MAGLEV_SIZE;

/// FNV-1a with a seed, then a 64-bit finaliser (the preferences of two backends must look
/// independent even when their addresses differ in one bit).
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Builds the table: slot -> index into `backends`. `backends` are identified by their bytes
/// (address and port); their order only decides the indexes, not who owns which slot.
///
/// # Panics
/// When `backends` is empty or larger than the table.
pub fn table(backends: &[Vec<u8>]) -> Vec<u16> {
    let n = backends.len();
    assert!(n > 0 && n <= proxy_common::MAX_BACKENDS, "{n} backends");
    let m = MAGLEV_SIZE as u64;
    // Fill in a canonical order (Maglev breaks ties by order) so that ownership depends on
    // the set alone, then report the caller's indexes.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| backends[*a].cmp(&backends[*b]));
    let prefs: Vec<(u64, u64)> = order
        .iter()
        .map(|i| &backends[*i])
        .map(|b| {
            let offset = hash(0x6d61_676c, b) % m;
            let skip = hash(0x6576_2121, b) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut entry = vec![u16::MAX; MAGLEV_SIZE];
    let mut filled = 0;
    loop {
        for (i, (offset, skip)) in prefs.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while entry[usize::try_from(c).expect("slot fits")] != u16::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            entry[usize::try_from(c).expect("slot fits")] =
                u16::try_from(order[i]).expect("at most MAX_BACKENDS");
            next[i] += 1;
            filled += 1;
            if filled == MAGLEV_SIZE {
                return entry;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080", i / 200, i % 200 + 1).into_bytes())
            .collect()
    }

    #[test]
    fn every_backend_gets_a_fair_share() {
        for n in [1, 2, 3, 10, 100] {
            let t = table(&names(n));
            let mut counts = vec![0usize; n];
            for slot in &t {
                counts[usize::from(*slot)] += 1;
            }
            let fair = MAGLEV_SIZE / n;
            for c in counts {
                assert!(
                    c.abs_diff(fair) <= fair / 10 + 1,
                    "n={n}: {c} slots, fair {fair}"
                );
            }
        }
    }

    #[test]
    fn adding_a_backend_moves_about_one_in_n_plus_one_slots() {
        for n in [3usize, 10, 30] {
            let before_names = names(n);
            let after_names = names(n + 1);
            let before = table(&before_names);
            let after = table(&after_names);
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(a, b)| before_names[usize::from(**a)] != after_names[usize::from(**b)])
                .count();
            #[expect(clippy::cast_precision_loss, reason = "small counts")]
            let (fraction, ideal) = (moved as f64 / MAGLEV_SIZE as f64, 1.0 / (n + 1) as f64);
            assert!(
                fraction >= ideal * 0.9 && fraction <= ideal * 2.0,
                "n={n}: moved {fraction:.3}, ideal {ideal:.3}"
            );
        }
    }

    #[test]
    fn order_of_backends_does_not_change_ownership() {
        let a = names(5);
        let mut b = a.clone();
        b.reverse();
        let ta = table(&a);
        let tb = table(&b);
        assert!(
            ta.iter()
                .zip(&tb)
                .all(|(x, y)| a[usize::from(*x)] == b[usize::from(*y)])
        );
    }
}
