//! A retry budget, as Linkerd's: retries may add `ratio` of the calls made in the last
//! `ttl`, plus `min_per_second` over that window, so that retries cannot multiply the load
//! of a failing service. A plain core: the caller passes the time.

use std::time::Duration;

use crate::mesh::balance::Nanos;

/// A retry budget's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed as a share of the calls in the window (0.2: 20 % more).
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic, so a quiet service can retry.
    pub min_per_second: u32,
    /// How long a call or a retry counts.
    pub ttl: Duration,
}

impl Default for BudgetConfig {
    /// Linkerd's: 20 % extra plus 10 per second, counted over 10 s.
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// Counts over the window are kept in this many slots of `ttl / SLOTS` each.
const SLOTS: usize = 10;

/// The calls and retries of the last `ttl`, and whether one more retry fits.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    config: BudgetConfig,
    slot_len: Nanos,
    /// Per slot: its index in time (`now / slot_len`), calls, retries.
    slots: [(u64, u64, u64); SLOTS],
}

impl RetryBudget {
    /// An empty budget (no call made yet: only the minimum is there).
    pub fn new(config: BudgetConfig) -> Self {
        let slot_len = (config.ttl.as_nanos() as Nanos / SLOTS as Nanos).max(1);
        Self {
            config,
            slot_len,
            slots: [(u64::MAX, 0, 0); SLOTS],
        }
    }

    /// The settings.
    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    fn slot(&mut self, now: Nanos) -> &mut (u64, u64, u64) {
        let index = now / self.slot_len;
        let slot = &mut self.slots[(index % SLOTS as u64) as usize];
        if slot.0 != index {
            *slot = (index, 0, 0);
        }
        slot
    }

    /// The calls and retries counted in the window ending at `now`.
    fn window(&self, now: Nanos) -> (u64, u64) {
        let current = now / self.slot_len;
        self.slots
            .iter()
            .filter(|(index, _, _)| *index <= current && current - index < SLOTS as u64)
            .fold((0, 0), |(c, r), (_, calls, retries)| {
                (c + calls, r + retries)
            })
    }

    /// Counts a first attempt (it deposits `ratio` of a retry).
    pub fn call(&mut self, now: Nanos) {
        self.slot(now).1 += 1;
    }

    /// How many retries the window allows in all at `now`.
    pub fn allowed(&self, now: Nanos) -> u64 {
        let (calls, _) = self.window(now);
        let minimum = u64::from(self.config.min_per_second) * self.config.ttl.as_secs().max(1);
        minimum + (self.config.ratio * calls as f64) as u64
    }

    /// Takes one retry from the budget if it has one, and counts it; false if spent.
    pub fn try_retry(&mut self, now: Nanos) -> bool {
        let (_, retried) = self.window(now);
        if retried >= self.allowed(now) {
            return false;
        }
        self.slot(now).2 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;
    const S: Nanos = 1_000 * MS;

    fn budget(ratio: f64, min_per_second: u32, ttl_s: u64) -> RetryBudget {
        RetryBudget::new(BudgetConfig {
            ratio,
            min_per_second,
            ttl: Duration::from_secs(ttl_s),
        })
    }

    #[test]
    fn retries_stay_within_ratio_plus_minimum_once_spent() {
        let mut b = budget(0.2, 10, 10);
        let mut retried = 0;
        // 1,000 calls in one second, each failing and retried as long as the budget lets.
        for i in 0..1_000 {
            let now = i * MS;
            b.call(now);
            if b.try_retry(now) {
                retried += 1;
            }
        }
        // 20 % of 1,000 plus 10 per second over the 10 s window.
        assert_eq!(retried, 200 + 100);
    }

    #[test]
    fn a_quiet_service_has_the_minimum() {
        let mut b = budget(0.2, 10, 10);
        let granted = (0..500).filter(|_| b.try_retry(S)).count();
        assert_eq!(granted, 100);
    }

    #[test]
    fn calls_and_retries_expire_after_the_ttl() {
        let mut b = budget(0.0, 1, 2);
        assert!(b.try_retry(0));
        assert!(b.try_retry(0));
        assert!(!b.try_retry(0), "2 per window of 2 s");
        // Still within the window.
        assert!(!b.try_retry(S + 900 * MS));
        // The retries of time 0 have left the window.
        assert!(b.try_retry(2 * S + 10 * MS));
    }

    #[test]
    fn deposits_come_from_calls_in_the_window_only() {
        let mut b = budget(0.5, 0, 1);
        for _ in 0..10 {
            b.call(0);
        }
        assert_eq!(b.allowed(0), 5);
        assert_eq!(b.allowed(2 * S), 0, "the calls have expired");
    }
}
