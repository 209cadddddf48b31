//! Exact shares of calls: the access log's and the trace roots' sampling. Its own module,
//! so that the figures and the traces share it without importing each other.

use std::sync::atomic::{AtomicU64, Ordering};

/// A share of calls, taken exactly: one in round(1 / share), counted with one atomic (the
/// access log's and the trace roots' sampling).
#[derive(Debug)]
pub struct OneIn {
    every: u64,
    seen: AtomicU64,
}

impl OneIn {
    /// About `share` of the calls (0 < share ≤ 1); `what` names it in the error.
    pub fn new(share: f64, what: &str) -> Result<Self, String> {
        if !(share > 0.0 && share <= 1.0) {
            return Err(format!(
                "the {what} must be above 0 and at most 1 (1: every call, 0.01: one in a hundred), not {share}"
            ));
        }
        Ok(Self {
            every: (1.0 / share).round().max(1.0) as u64,
            seen: AtomicU64::new(0),
        })
    }

    /// Whether this call is one of the share.
    #[inline]
    pub fn take(&self) -> bool {
        self.seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.every)
    }

    /// One call in how many.
    pub fn every(&self) -> u64 {
        self.every
    }
}
