//! Consistent hashing on a call's key: a ring of points, each endpoint owning a number of
//! points in proportion to its weight, placed by hashing the endpoint's id (not its
//! position). A key goes to the owner of the first point at or after the key's hash, so
//! when an endpoint leaves, only the keys on its points move, to their next owners; every
//! other key stays where it was. The ring is built once per snapshot.

use super::rng::{mix64, stable_hash};

/// Ring points per unit of weight.
pub const POINTS_PER_WEIGHT: u32 = 100;
/// At most this many points per endpoint.
pub const MAX_POINTS_PER_ENDPOINT: u32 = 10_000;

/// A hash ring over endpoints (positions `0..n`).
#[derive(Debug)]
pub struct HashRing {
    points: Vec<(u64, u32)>,
}

impl HashRing {
    /// Over endpoints given as `(id, weight)`.
    pub fn new<'a>(endpoints: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let mut points = Vec::new();
        for (p, (id, weight)) in endpoints.into_iter().enumerate() {
            let base = stable_hash(id.as_bytes());
            let count = weight
                .max(1)
                .saturating_mul(POINTS_PER_WEIGHT)
                .min(MAX_POINTS_PER_ENDPOINT);
            for i in 0..count {
                points.push((mix64(base ^ mix64(u64::from(i))), p as u32));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The owner of `key`, or, while `admit` refuses it, the next owner along the ring.
    pub fn pick(&self, key: u64, mut admit: impl FnMut(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|&(h, _)| h < key);
        let n = self.points.len();
        let mut last = u32::MAX;
        for k in 0..n {
            let (_, p) = self.points[(start + k) % n];
            // Runs of one owner are common; ask about each owner once per run.
            if p != last {
                if admit(p as usize) {
                    return Some(p as usize);
                }
                last = p;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner<'a>(ids: &[&'a str], ring: &HashRing, key: u64) -> &'a str {
        ids[ring.pick(key, |_| true).unwrap()]
    }

    #[test]
    fn the_same_key_reaches_the_same_endpoint_and_removing_one_moves_only_its_keys() {
        let four = ["a", "b", "c", "d"];
        let ring4 = HashRing::new(four.iter().map(|id| (*id, 1)));
        let three = ["a", "b", "d"];
        let ring3 = HashRing::new(three.iter().map(|id| (*id, 1)));
        let mut moved_from_c = 0;
        let mut owners = [0u32; 4];
        for k in 0..10_000u64 {
            let key = stable_hash(&k.to_le_bytes());
            let before = owner(&four, &ring4, key);
            assert_eq!(before, owner(&four, &ring4, key), "same key, same endpoint");
            let after = owner(&three, &ring3, key);
            owners[four.iter().position(|i| *i == before).unwrap()] += 1;
            if before == "c" {
                moved_from_c += 1;
            } else {
                assert_eq!(before, after, "key {k} of {before} moved to {after}");
            }
        }
        assert!(moved_from_c > 1500, "c owned {moved_from_c}");
        assert!(owners.iter().all(|&o| o > 1500), "{owners:?}");
    }

    #[test]
    fn points_follow_weights_and_a_refused_owner_passes_to_the_next() {
        let ring = HashRing::new([("a", 3), ("b", 1)]);
        let mut a = 0;
        for k in 0..10_000u64 {
            if ring.pick(stable_hash(&k.to_le_bytes()), |_| true) == Some(0) {
                a += 1;
            }
        }
        assert!((6500..8500).contains(&a), "a got {a}");
        for k in 0..100u64 {
            assert_eq!(ring.pick(k << 40, |p| p == 1), Some(1));
        }
    }
}
