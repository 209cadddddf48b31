//! When a failed try may go again, after how long, and how long the next try may take: a
//! plain core over the error, the try count, the message's idempotency and the time the
//! call has left. The budget and the breaker are asked by the caller, after this says yes.
//!
//! - Any message may be retried when the callee never got it ([`AskError::is_retry_safe`]);
//!   otherwise only an idempotent one (`#[remote(..., idempotent)]`).
//! - The error must be one the rule retries ([`RetryOn`]); `NotDelivered` always is.
//! - A per-try timeout never lengthens or shortens the overall one: each try gets the
//!   earlier of its own timeout and what the call has left ([`try_timeout`]).
//! - Backoff is full jitter (AWS): uniform in `0..=min(max, base × 2^(try - 1))`.

use std::collections::BTreeSet;
use std::time::Duration;

use actormesh_runtime::AskError;

use super::spec::{Backoff, Retries, RetryOn};
use crate::mesh::balance::Random;

/// Why a failed call is not tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It had all its tries.
    Attempts,
    /// The rule does not retry this error.
    NotRetried,
    /// The callee may have run it, and the message is not idempotent.
    NotIdempotent,
    /// The call has no time left for the backoff and a try.
    Deadline,
}

/// A rule's retries, ready to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    per_try_timeout: Option<Duration>,
    on: BTreeSet<RetryOn>,
    backoff: Backoff,
}

/// The class of `e` that a rule names in `retries.on`, if it has one.
pub fn class(e: &AskError) -> Option<RetryOn> {
    match e {
        AskError::Unreachable { sent: false, .. } => Some(RetryOn::Unreachable),
        AskError::Unreachable { sent: true, .. } => Some(RetryOn::Reset),
        AskError::Timeout { .. } => Some(RetryOn::Timeout),
        AskError::Stopped { .. } | AskError::NoSuchActor { .. } => Some(RetryOn::Unavailable),
        AskError::MailboxFull { .. } => Some(RetryOn::Overloaded),
        _ => None,
    }
}

/// How long the next try may take: the earlier of its own timeout and what the call has
/// left overall.
pub fn try_timeout(per_try: Option<Duration>, overall_left: Duration) -> Duration {
    per_try.map_or(overall_left, |p| p.min(overall_left))
}

impl RetryPolicy {
    /// The policy of a rule's `retries` block.
    pub fn new(r: &Retries) -> Self {
        Self {
            attempts: r.attempts,
            per_try_timeout: r.per_try_timeout,
            on: r.on.iter().copied().collect(),
            backoff: r.backoff,
        }
    }

    /// Each try's own timeout.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// Whether a call that failed with `e` on its `tried`-th try (1 is the first) goes
    /// again, and if so after what backoff. `left` is what the call has left overall.
    pub fn decide(
        &self,
        e: &AskError,
        tried: u32,
        idempotent: bool,
        left: Duration,
        random: &mut impl Random,
    ) -> Result<Duration, Stop> {
        if tried > self.attempts {
            return Err(Stop::Attempts);
        }
        let listed = class(e).is_some_and(|c| self.on.contains(&c));
        if !listed && !matches!(e, AskError::NotDelivered { .. }) {
            return Err(Stop::NotRetried);
        }
        if !e.is_retry_safe() && !idempotent {
            return Err(Stop::NotIdempotent);
        }
        let after = self.backoff(tried, random);
        if after >= left {
            return Err(Stop::Deadline);
        }
        Ok(after)
    }

    fn backoff(&self, tried: u32, random: &mut impl Random) -> Duration {
        let base = self.backoff.base.as_nanos() as u64;
        let ceiling = base
            .saturating_mul(1u64 << tried.saturating_sub(1).min(32))
            .min(self.backoff.max.as_nanos() as u64);
        Duration::from_nanos(
            ((u128::from(random.next_u64()) * (u128::from(ceiling) + 1)) >> 64) as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::balance::SplitMix64;

    const MS: Duration = Duration::from_millis(1);

    fn policy(attempts: u32, on: &[RetryOn]) -> RetryPolicy {
        RetryPolicy::new(&Retries {
            attempts,
            per_try_timeout: Some(100 * MS),
            on: on.to_vec(),
            backoff: Backoff {
                base: 10 * MS,
                max: 40 * MS,
            },
        })
    }

    fn unreachable(sent: bool) -> AskError {
        AskError::Unreachable {
            node: ([127, 0, 0, 1], 1).into(),
            reason: "gone".into(),
            sent,
        }
    }

    fn timeout() -> AskError {
        AskError::Timeout { after: 100 * MS }
    }

    #[test]
    fn a_call_the_callee_never_got_may_be_retried_whatever_the_message() {
        let p = policy(2, &[RetryOn::Unreachable]);
        let mut r = SplitMix64(1);
        assert!(p
            .decide(&unreachable(false), 1, false, 10 * MS * 100, &mut r)
            .is_ok());
        let nd = AskError::NotDelivered {
            reason: "pin".into(),
        };
        assert!(
            p.decide(&nd, 1, false, MS * 1000, &mut r).is_ok(),
            "NotDelivered always is"
        );
    }

    #[test]
    fn only_idempotent_messages_are_retried_after_the_callee_may_have_run_them() {
        let p = policy(2, &[RetryOn::Timeout, RetryOn::Reset]);
        let mut r = SplitMix64(1);
        assert_eq!(
            p.decide(&timeout(), 1, false, MS * 1000, &mut r),
            Err(Stop::NotIdempotent)
        );
        assert!(p.decide(&timeout(), 1, true, MS * 1000, &mut r).is_ok());
        assert_eq!(
            p.decide(&unreachable(true), 1, false, MS * 1000, &mut r),
            Err(Stop::NotIdempotent)
        );
    }

    #[test]
    fn errors_not_listed_are_not_retried_and_tries_are_counted() {
        let p = policy(2, &[RetryOn::Unreachable]);
        let mut r = SplitMix64(1);
        assert_eq!(
            p.decide(&timeout(), 1, true, MS * 1000, &mut r),
            Err(Stop::NotRetried)
        );
        let rejected = AskError::Rejected("bad field".into());
        assert_eq!(
            p.decide(&rejected, 1, true, MS * 1000, &mut r),
            Err(Stop::NotRetried)
        );
        assert!(p
            .decide(&unreachable(false), 2, false, MS * 1000, &mut r)
            .is_ok());
        assert_eq!(
            p.decide(&unreachable(false), 3, false, MS * 1000, &mut r),
            Err(Stop::Attempts)
        );
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let p = policy(10, &[RetryOn::Unreachable]);
        let mut r = SplitMix64(7);
        for (tried, ceiling) in [(1, 10), (2, 20), (3, 40), (6, 40)] {
            let waits: Vec<Duration> = (0..2_000)
                .map(|_| {
                    p.decide(&unreachable(false), tried, false, MS * 10_000, &mut r)
                        .unwrap()
                })
                .collect();
            let top = *waits.iter().max().unwrap();
            assert!(top <= ceiling * MS, "try {tried}: {top:?}");
            assert!(
                top >= ceiling * MS * 9 / 10,
                "try {tried}: jitter spans the range, {top:?}"
            );
            assert!(
                waits.iter().any(|w| *w < ceiling * MS / 10),
                "try {tried}: down to near 0"
            );
        }
    }

    #[test]
    fn no_retry_without_time_for_it_and_tries_fit_the_overall_deadline() {
        let p = policy(3, &[RetryOn::Unreachable]);
        let mut r = SplitMix64(3);
        assert_eq!(
            p.decide(&unreachable(false), 1, false, Duration::ZERO, &mut r),
            Err(Stop::Deadline)
        );
        // No backoff at all still needs time left for the try itself.
        let eager = RetryPolicy::new(&Retries {
            attempts: 3,
            per_try_timeout: None,
            on: vec![RetryOn::Unreachable],
            backoff: Backoff {
                base: Duration::ZERO,
                max: Duration::ZERO,
            },
        });
        assert_eq!(
            eager.decide(&unreachable(false), 1, false, Duration::ZERO, &mut r),
            Err(Stop::Deadline)
        );
        assert_eq!(
            eager.decide(&unreachable(false), 1, false, MS, &mut r),
            Ok(Duration::ZERO)
        );
        assert_eq!(
            try_timeout(p.per_try_timeout(), 30 * MS),
            30 * MS,
            "the overall one is earlier"
        );
        assert_eq!(
            try_timeout(p.per_try_timeout(), 500 * MS),
            100 * MS,
            "the per-try one is earlier"
        );
        assert_eq!(try_timeout(None, 500 * MS), 500 * MS);
    }
}
