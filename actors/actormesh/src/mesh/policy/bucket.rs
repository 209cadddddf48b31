//! A token bucket: `rate` tokens a second, at most `burst` held. A plain core: the caller
//! passes the time. Over any span `t` it admits at most `rate × t + burst` calls.

use crate::mesh::balance::Nanos;

/// A local rate limit's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketConfig {
    /// Tokens added per second.
    pub rate: f64,
    /// The most tokens held (and the bucket's size when it starts).
    pub burst: u32,
}

/// Tokens held, refilled by the time passed.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    config: BucketConfig,
    /// Tokens held, in millionths of a token, so that slow rates refill exactly.
    micros: u64,
    /// When the tokens were last refilled.
    at: Nanos,
}

const MICRO: u64 = 1_000_000;

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(config: BucketConfig, now: Nanos) -> Self {
        Self {
            config,
            micros: u64::from(config.burst) * MICRO,
            at: now,
        }
    }

    /// The settings.
    pub fn config(&self) -> &BucketConfig {
        &self.config
    }

    fn refill(&mut self, now: Nanos) {
        if now <= self.at {
            return;
        }
        let added = ((now - self.at) as f64 * self.config.rate / 1_000.0) as u64;
        if added == 0 {
            // Too little time for a millionth of a token: keep counting from `at`.
            return;
        }
        let cap = u64::from(self.config.burst) * MICRO;
        self.micros = (self.micros + added).min(cap);
        self.at = now;
    }

    /// Takes a token if one is held at `now`; false (rate limited) otherwise.
    pub fn try_take(&mut self, now: Nanos) -> bool {
        self.refill(now);
        if self.micros >= MICRO {
            self.micros -= MICRO;
            true
        } else {
            false
        }
    }

    /// Whole tokens held at `now`.
    pub fn available(&mut self, now: Nanos) -> u64 {
        self.refill(now);
        self.micros / MICRO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn bucket(rate: f64, burst: u32) -> TokenBucket {
        TokenBucket::new(BucketConfig { rate, burst }, 0)
    }

    #[test]
    fn it_admits_no_more_than_rate_times_time_plus_burst() {
        let mut b = bucket(100.0, 20);
        // A call every 100 µs for 2 s: far more than the rate.
        let admitted = (0..20_000).filter(|i| b.try_take(i * MS / 10)).count();
        let bound = 100 * 2 + 20;
        assert!(admitted <= bound, "{admitted} > {bound}");
        assert!(admitted >= bound - 1, "{admitted} is well under {bound}");
    }

    #[test]
    fn an_idle_bucket_holds_no_more_than_its_burst() {
        let mut b = bucket(1_000.0, 5);
        assert_eq!(b.available(60_000 * MS), 5);
        let admitted = (0..10).filter(|_| b.try_take(60_000 * MS)).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn slow_rates_refill_exactly_over_many_small_steps() {
        let mut b = bucket(0.5, 1);
        assert!(b.try_take(0));
        // 1 ms steps for 2 s: one token exactly at 2 s, not lost to rounding.
        let mut got = None;
        for ms in 1..=2_000 {
            if b.try_take(ms * MS) {
                got = Some(ms);
                break;
            }
        }
        assert_eq!(got, Some(2_000));
    }

    #[test]
    fn steps_too_short_for_a_millionth_of_a_token_still_add_up() {
        let mut b = bucket(0.5, 1);
        assert!(b.try_take(0));
        // 1 µs steps: each adds less than a millionth of a token at 0.5 a second.
        let us = 1_000;
        let got = (1..=2_100_000).find(|i| b.try_take(i * us));
        assert_eq!(got, Some(2_000_000), "one token after 2 s");
    }
}
