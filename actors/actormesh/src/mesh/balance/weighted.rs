//! Weighted round robin, smooth as nginx's: each endpoint gets traffic in proportion to its
//! weight, interleaved (weights 5:1:1 give `a a b a c a a`, not `a a a a a b c`).
//!
//! The sequence is computed once per snapshot and then walked with one shared counter, so a
//! pick is a `fetch_add` and an index: no lock, nothing written per endpoint. A sequence is at
//! most [`MAX_SEQUENCE`] long; larger weight totals are scaled down first (each weight kept
//! at least 1), which keeps proportions to within a part in a few thousand.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The longest precomputed sequence.
pub const MAX_SEQUENCE: u64 = 4096;

/// Smooth weighted round robin over endpoints with `weights` (positions `0..weights.len()`).
#[derive(Debug)]
pub struct Weighted {
    sequence: Vec<u32>,
    n: usize,
    next: AtomicUsize,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Weighted {
    /// Over endpoints with these weights (a weight of 0 counts as 1), starting at `start`.
    pub fn new(weights: &[u32], start: usize) -> Self {
        let mut w: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
        let g = w.iter().copied().fold(0, gcd).max(1);
        w.iter_mut().for_each(|x| *x /= g);
        let total: u64 = w.iter().sum();
        if total > MAX_SEQUENCE {
            w.iter_mut()
                .for_each(|x| *x = (*x * MAX_SEQUENCE / total).max(1));
        }
        let total: i64 = w.iter().sum::<u64>() as i64;
        // nginx's smooth WRR: add each weight to its current, take the largest, take the
        // total off the one taken.
        let mut current = vec![0i64; w.len()];
        let mut sequence = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..w.len() {
                current[i] += w[i] as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            sequence.push(best as u32);
        }
        let len = sequence.len().max(1);
        Self {
            sequence,
            n: weights.len(),
            next: AtomicUsize::new(start % len),
        }
    }

    /// The next endpoint in the sequence; if `admit` refuses it, the next position after it
    /// that `admit` accepts.
    pub fn pick(&self, mut admit: impl FnMut(usize) -> bool) -> Option<usize> {
        if self.sequence.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Relaxed) % self.sequence.len();
        let p = self.sequence[i] as usize;
        (0..self.n).map(|k| (p + k) % self.n).find(|&p| admit(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(weights: &[u32], picks: usize) -> Vec<f64> {
        let w = Weighted::new(weights, 0);
        let mut counts = vec![0usize; weights.len()];
        for _ in 0..picks {
            counts[w.pick(|_| true).unwrap()] += 1;
        }
        counts
            .iter()
            .map(|&c| c as f64 * 100.0 / picks as f64)
            .collect()
    }

    #[test]
    fn three_to_one_splits_within_two_points() {
        let s = shares(&[3, 1], 10_000);
        assert!((s[0] - 75.0).abs() <= 2.0, "{s:?}");
        assert!((s[1] - 25.0).abs() <= 2.0, "{s:?}");
    }

    #[test]
    fn the_sequence_is_smooth_as_nginx() {
        let w = Weighted::new(&[5, 1, 1], 0);
        let seq: Vec<usize> = (0..7).map(|_| w.pick(|_| true).unwrap()).collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn huge_weights_are_scaled_and_keep_their_proportions() {
        let s = shares(&[3_000_000, 1_000_000, 1], 40_000);
        assert!((s[0] - 75.0).abs() <= 0.5, "{s:?}");
        assert!(s[2] > 0.0 && s[2] < 0.1, "{s:?}");
    }
}
