//! Supervision: an actor instance runs inside a future that catches its panics; the
//! restart policy decides whether a fresh instance replaces it.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::dev::ContextFut;
use actix::{Actor, Context};
use tracing::{error, info};

use crate::crash::dropping_crashed;
use crate::slots::ActorSlot;
use crate::watches::TerminationReason;

/// Whoever hosts supervised actors, told when one has ended for good. The node implements
/// it; the supervisor holds it weakly and stops supervising once the node is gone.
pub(crate) trait ActorEnd: Send + Sync {
    /// The actor in `slot` has ended: it is not restarted.
    fn actor_ended(&self, slot: &Arc<ActorSlot>, reason: TerminationReason);
}

/// Why an actor's first instance did not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The actor's factory panicked.
    #[error("the actor factory panicked: {0}")]
    FactoryPanicked(String),
    /// A stop was requested before the first instance was installed.
    #[error("the actor was stopped before it started")]
    StoppedBeforeStart,
}

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

/// A running actor instance and its generation number.
type Instance<A> = (ContextFut<A, Context<A>>, u64);

/// Makes an instance and installs its address in the slot, unless a stop was requested.
/// The factory runs inside `catch_unwind`: a factory that panics is a failed start.
fn instance<A, F>(slot: &ActorSlot, factory: &F) -> Result<Option<Instance<A>>, StartError>
where
    A: Actor<Context = Context<A>>,
    F: Fn() -> A,
{
    let actor = catch_unwind(AssertUnwindSafe(factory))
        .map_err(|p| StartError::FactoryPanicked(panic_text(p.as_ref())))?;
    let fut = Context::<A>::new().into_future(actor);
    Ok(slot
        .install_instance(Box::new(fut.address()))
        .map(|generation| (fut, generation)))
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
    node: Weak<dyn ActorEnd>,
    slot: Arc<ActorSlot>,
    factory: F,
    policy: RestartPolicy,
) -> Result<(), StartError>
where
    A: Actor<Context = Context<A>>,
    F: Fn() -> A + 'static,
{
    match instance(&slot, &factory)? {
        Some(first) => {
            actix::spawn(supervise(node, slot, factory, policy, first));
            Ok(())
        }
        None => Err(StartError::StoppedBeforeStart),
    }
}

/// Drops a finished or crashed instance without letting it run again. actix's `Drop` for
/// a live context polls it once more (handling what is left in its mailbox on the crashed
/// state), so the context is terminated first; a panic in the actor's own `Drop` is caught.
fn discard<A: Actor<Context = Context<A>>>(
    mut fut: std::pin::Pin<Box<ContextFut<A, Context<A>>>>,
    crashed: bool,
) {
    use actix::ActorContext;
    fut.as_mut().get_mut().ctx().terminate();
    let drop_it = AssertUnwindSafe(move || drop(fut));
    let result = if crashed {
        dropping_crashed(|| catch_unwind(drop_it))
    } else {
        catch_unwind(drop_it)
    };
    if let Err(p) = result {
        error!(panic = %panic_text(p.as_ref()), "dropping an actor panicked");
    }
}

async fn supervise<A, F>(
    node: Weak<dyn ActorEnd>,
    slot: Arc<ActorSlot>,
    factory: F,
    policy: RestartPolicy,
    first: Instance<A>,
) where
    A: Actor<Context = Context<A>>,
    F: Fn() -> A + 'static,
{
    let mut budget = RestartBudget::default();
    let mut current = first;
    loop {
        let (fut, generation) = current;
        let mut fut = Box::pin(fut);
        let stop = slot.stop_signal();
        tokio::pin!(stop);
        let mut stopping = false;
        let outcome = poll_fn(|cx| {
            if !stopping && stop.as_mut().poll(cx).is_ready() {
                // Graceful: actix runs `stopping`, then `stopped`.
                stopping = true;
                use actix::ActorContext;
                fut.as_mut().get_mut().ctx().stop();
            }
            match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
                Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
                Ok(Poll::Pending) => Poll::Pending,
                Err(payload) => Poll::Ready(Err(payload)),
            }
        })
        .await;
        let panicked = outcome.is_err();
        if let Err(payload) = &outcome {
            slot.crashed(generation);
            error!(actor = %slot.name(), actor_type = slot.actor_type(), panic = %panic_text(payload.as_ref()), "actor panicked");
        }
        // Asks still queued on a crashed instance are answered with `Panicked`.
        discard(fut, panicked);
        let Some(node) = node.upgrade() else { return };
        let mut reason = if panicked {
            TerminationReason::Panicked
        } else {
            TerminationReason::Stopped
        };
        let delay = match policy.limits(panicked) {
            Some((max, within, backoff)) if !slot.stop_requested() => {
                budget.next(Instant::now(), max, within, backoff)
            }
            _ => None,
        };
        if let Some(delay) = delay {
            info!(actor = %slot.name(), delay_ms = delay.as_millis() as u64, "restarting actor");
            // The new mailbox takes messages at once; they are handled after the delay.
            match instance(&slot, &factory) {
                Ok(Some(next)) => {
                    drop(node);
                    actix_rt::time::sleep(delay).await;
                    current = next;
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    error!(actor = %slot.name(), error = %e, "restart failed");
                    reason = TerminationReason::Panicked;
                }
            }
        }
        node.actor_ended(&slot, reason);
        return;
    }
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
