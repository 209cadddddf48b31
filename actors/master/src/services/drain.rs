//! [`DrainBook`]: kills held back while an endpoint leaves discovery. An instance that is
//! an endpoint is taken out of the registry first; its kill goes out once every subscribed
//! proxy applied a version without it, or the drain time has passed, so that calls in
//! flight to it finish.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a kill waits at most for the proxies by default.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);

/// A kill waiting for the proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldKill {
    /// The task.
    pub task_id: String,
    /// Its agent.
    pub agent: String,
    /// The agent's mesh address.
    pub at: SocketAddr,
    /// The first registry version without the endpoint.
    pub version: u64,
    /// Sent then even if some proxy has not applied `version`.
    pub deadline: Instant,
}

/// An answer waiting for the proxies: a node's deregistration is answered once its
/// endpoint is drained, so that the node stops its actor only then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldReply {
    /// The driver's token for the answer.
    pub token: u64,
    /// The first registry version without the endpoint.
    pub version: u64,
    /// Answered then even if some proxy has not applied `version`.
    pub deadline: Instant,
}

/// Kills and answers waiting for the proxies.
#[derive(Debug, Default)]
pub struct DrainBook {
    held: Vec<HeldKill>,
    replies: Vec<HeldReply>,
}

impl DrainBook {
    /// Holds a kill.
    pub fn hold(&mut self, kill: HeldKill) {
        if !self.held.iter().any(|k| k.task_id == kill.task_id) {
            self.held.push(kill);
        }
    }

    /// The kills to send at `now`: those whose version every proxy applied (`applied`
    /// says), and those past their deadline.
    pub fn release(&mut self, applied: impl Fn(u64) -> bool, now: Instant) -> Vec<HeldKill> {
        let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|k| applied(k.version) || now >= k.deadline);
        self.held = keep;
        out
    }

    /// Holds an answer.
    pub fn hold_reply(&mut self, reply: HeldReply) {
        self.replies.push(reply);
    }

    /// The answers to give at `now`, as [`Self::release`] decides for kills.
    pub fn release_replies(&mut self, applied: impl Fn(u64) -> bool, now: Instant) -> Vec<u64> {
        let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.replies)
            .into_iter()
            .partition(|r| applied(r.version) || now >= r.deadline);
        self.replies = keep;
        out.into_iter().map(|r| r.token).collect()
    }

    /// Whether `task_id`'s kill is held.
    pub fn holds(&self, task_id: &str) -> bool {
        self.held.iter().any(|k| k.task_id == task_id)
    }

    /// Forgets the held kills of agent `agent` (it is gone: nothing there to kill).
    pub fn forget_agent(&mut self, agent: &str) {
        self.held.retain(|k| k.agent != agent);
    }

    /// The kills held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(id: &str, version: u64, deadline: Instant) -> HeldKill {
        HeldKill {
            task_id: id.into(),
            agent: "a1".into(),
            at: "127.0.0.1:9000".parse().unwrap(),
            version,
            deadline,
        }
    }

    #[test]
    fn a_kill_goes_once_every_proxy_applied_the_removal_or_the_drain_time_passed() {
        let t = Instant::now();
        let mut d = DrainBook::default();
        d.hold(kill("x", 5, t + DEFAULT_DRAIN));
        d.hold(kill("y", 7, t + Duration::from_secs(1)));
        d.hold(kill("x", 5, t + DEFAULT_DRAIN));
        assert_eq!(d.len(), 2, "held once");
        // Every proxy is at 6: x's removal (5) is applied, y's (7) is not.
        let out = d.release(|v| v <= 6, t);
        assert_eq!(
            out.iter().map(|k| &k.task_id[..]).collect::<Vec<_>>(),
            ["x"]
        );
        assert!(d.holds("y"));
        assert!(d
            .release(|v| v <= 6, t + Duration::from_millis(999))
            .is_empty());
        let out = d.release(|v| v <= 6, t + Duration::from_secs(1));
        assert_eq!(out.len(), 1, "the drain time passed");
        assert!(d.is_empty());
        // Answers the same way.
        for (token, version) in [(1, 5), (2, 7)] {
            d.hold_reply(HeldReply {
                token,
                version,
                deadline: t + Duration::from_secs(1),
            });
        }
        assert_eq!(d.release_replies(|v| v <= 6, t), [1]);
        assert!(d.release_replies(|v| v <= 6, t).is_empty());
        assert_eq!(
            d.release_replies(|_| false, t + Duration::from_secs(1)),
            [2]
        );
    }
}
