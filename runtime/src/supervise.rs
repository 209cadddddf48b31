//! Supervision: an actor instance runs inside a future that catches its panics; the
//! restart policy decides whether a fresh instance replaces it.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::dev::ContextFut;
use actix::{Actor, Context};
use tracing::{error, info};

use crate::message::dropping_crashed;
use crate::node::{write, ActorSlot, NodeInner, TerminationReason};

/// Delays between restarts: `initial`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(5),
        }
    }
}

/// What happens when a supervised actor panics or stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restart: a panic or stop ends the actor.
    Never,
    /// Restart after a panic, at most `max_restarts` times within `within`.
    OnFailure {
        /// Restarts allowed in the window.
        max_restarts: u32,
        /// The sliding window.
        within: Duration,
        /// Delays between restarts.
        backoff: Backoff,
    },
    /// Restart after a panic or a stop, at most `max_restarts` times within `within`.
    Always {
        /// Restarts allowed in the window.
        max_restarts: u32,
        /// The sliding window.
        within: Duration,
        /// Delays between restarts.
        backoff: Backoff,
    },
}

impl RestartPolicy {
    /// Restart on panic, up to 10 times a minute, with the default backoff.
    pub fn on_failure() -> Self {
        RestartPolicy::OnFailure {
            max_restarts: 10,
            within: Duration::from_secs(60),
            backoff: Backoff::default(),
        }
    }

    fn limits(&self, panicked: bool) -> Option<(u32, Duration, Backoff)> {
        match *self {
            RestartPolicy::Never => None,
            RestartPolicy::OnFailure {
                max_restarts,
                within,
                backoff,
            } if panicked => Some((max_restarts, within, backoff)),
            RestartPolicy::OnFailure { .. } => None,
            RestartPolicy::Always {
                max_restarts,
                within,
                backoff,
            } => Some((max_restarts, within, backoff)),
        }
    }
}

/// Tracks restarts in a sliding window; a plain type so tests drive it directly.
#[derive(Debug, Default)]
pub(crate) struct RestartBudget {
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    /// The delay before the next restart, or `None` if the budget is spent.
    pub(crate) fn next(
        &mut self,
        now: Instant,
        max: u32,
        within: Duration,
        backoff: Backoff,
    ) -> Option<Duration> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > within)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= max {
            return None;
        }
        let n = self.recent.len() as u32;
        self.recent.push_back(now);
        Some((backoff.initial * 2u32.saturating_pow(n.min(20))).min(backoff.max))
    }
}

fn instance<A, F>(slot: &ActorSlot, factory: &F) -> (ContextFut<A, Context<A>>, u64)
where
    A: Actor<Context = Context<A>>,
    F: Fn() -> A,
{
    let fut = Context::<A>::new().into_future(factory());
    let generation = slot.generation.fetch_add(1, Ordering::AcqRel) + 1;
    *write(&slot.addr) = Some(Box::new(fut.address()));
    (fut, generation)
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Starts the first instance now (so its address is usable at once) and supervises it on
/// the current arbiter.
pub(crate) fn start<A, F>(
    node: Weak<NodeInner>,
    slot: Arc<ActorSlot>,
    factory: F,
    policy: RestartPolicy,
) where
    A: Actor<Context = Context<A>>,
    F: Fn() -> A + 'static,
{
    let first = instance(&slot, &factory);
    actix::spawn(supervise(node, slot, factory, policy, first));
}

async fn supervise<A, F>(
    node: Weak<NodeInner>,
    slot: Arc<ActorSlot>,
    factory: F,
    policy: RestartPolicy,
    first: (ContextFut<A, Context<A>>, u64),
) where
    A: Actor<Context = Context<A>>,
    F: Fn() -> A + 'static,
{
    {
        let mut budget = RestartBudget::default();
        let mut current = first;
        loop {
            let (fut, generation) = current;
            let mut fut = Box::pin(fut);
            let outcome =
                poll_fn(
                    |cx| match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
                        Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
                        Ok(Poll::Pending) => Poll::Pending,
                        Err(payload) => Poll::Ready(Err(payload)),
                    },
                )
                .await;
            let panicked = outcome.is_err();
            if let Err(payload) = &outcome {
                slot.panicked.store(generation, Ordering::Release);
                error!(actor = %slot.name, actor_type = slot.actor_type, panic = %panic_text(payload.as_ref()), "actor panicked");
                // Asks queued on the dead instance are answered with `Panicked`.
                dropping_crashed(|| drop(fut));
            } else {
                drop(fut);
            }
            let Some(node) = node.upgrade() else { return };
            let stop_requested = slot.stopped.load(Ordering::Acquire);
            let delay = match policy.limits(panicked) {
                Some((max, within, backoff)) if !stop_requested => {
                    budget.next(Instant::now(), max, within, backoff)
                }
                _ => None,
            };
            let Some(delay) = delay else {
                let reason = if panicked {
                    TerminationReason::Panicked
                } else {
                    TerminationReason::Stopped
                };
                node.actor_ended(&slot, reason);
                return;
            };
            info!(actor = %slot.name, delay_ms = delay.as_millis() as u64, "restarting actor");
            // The new mailbox takes messages at once; they are handled after the delay.
            current = instance(&slot, &factory);
            drop(node);
            actix_rt::time::sleep(delay).await;
        }
    }
}

/// Asks the actor to stop: its address is released, so it stops once its mailbox drains
/// (running `stopping` and `stopped`), and it is not restarted.
pub(crate) fn request_stop(slot: &ActorSlot) {
    slot.stopped.store(true, Ordering::Release);
    *write(&slot.addr) = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_backs_off_and_runs_out_within_the_window() {
        let mut b = RestartBudget::default();
        let t0 = Instant::now();
        let bo = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(35),
        };
        let w = Duration::from_secs(10);
        assert_eq!(b.next(t0, 3, w, bo), Some(Duration::from_millis(10)));
        assert_eq!(b.next(t0, 3, w, bo), Some(Duration::from_millis(20)));
        assert_eq!(b.next(t0, 3, w, bo), Some(Duration::from_millis(35)));
        assert_eq!(b.next(t0, 3, w, bo), None);
        // Outside the window the budget is back.
        assert_eq!(
            b.next(t0 + Duration::from_secs(11), 3, w, bo),
            Some(Duration::from_millis(10))
        );
    }
}
