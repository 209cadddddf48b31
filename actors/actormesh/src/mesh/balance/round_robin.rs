//! Round robin: each endpoint in turn, one shared counter.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Round robin over `n` endpoints (positions `0..n`).
#[derive(Debug)]
pub struct RoundRobin {
    n: usize,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Over `n` endpoints, starting at `start` (callers spread their starts so that nodes do
    /// not all begin with the same endpoint).
    pub fn new(n: usize, start: usize) -> Self {
        Self {
            n,
            next: AtomicUsize::new(start),
        }
    }

    /// The next endpoint that `admit` accepts, trying each at most once.
    pub fn pick(&self, mut admit: impl FnMut(usize) -> bool) -> Option<usize> {
        if self.n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed) % self.n;
        (0..self.n)
            .map(|k| (start + k) % self.n)
            .find(|&p| admit(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_of_three_gets_its_third_of_ten_thousand() {
        let rr = RoundRobin::new(3, 0);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[rr.pick(|_| true).unwrap()] += 1;
        }
        for c in counts {
            // A third, ±1 % of all picks.
            assert!((3233..=3433).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn a_refused_endpoint_is_skipped() {
        let rr = RoundRobin::new(3, 0);
        for _ in 0..9 {
            assert_ne!(rr.pick(|p| p != 1), Some(1));
        }
        assert_eq!(rr.pick(|_| false), None);
    }
}
