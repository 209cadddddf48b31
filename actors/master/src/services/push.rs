//! [`PushBook`]: what each subscribed proxy applied, the push in flight to it (at most
//! one), its push latency and whether it is STALE; changes within a short window go out
//! as one push, and nothing goes out while pushes are held (after a master restart).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use actormesh::mesh::protocol::{Push, PushRefused};

use super::registry::ServiceRegistry;

/// Timing of pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushConfig {
    /// Changes within this long of the first go out as one push.
    pub window: Duration,
    /// A proxy that has not acknowledged a change this long after it is STALE; also how
    /// long a push may go unanswered.
    pub stale_after: Duration,
    /// After a push failed (no answer, link lost, refused as invalid), the next try waits
    /// this long.
    pub retry_after: Duration,
    /// A subscriber without membership (a client's node) whose pushes have failed this
    /// long is forgotten; it subscribes again when it is back. Members leave with their
    /// membership instead.
    pub forget_client_after: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(10),
            stale_after: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
            forget_client_after: Duration::from_secs(60),
        }
    }
}

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The proxy applied this version.
    Applied(u64),
    /// The proxy refused it.
    Refused(PushRefused),
    /// No answer: timeout, no link, no `$proxy` there.
    Failed(String),
}

#[derive(Debug, Clone)]
struct InFlight {
    version: u64,
    /// Since when the proxy lacks what this push brings.
    behind_since: Instant,
}

/// One subscribed proxy.
#[derive(Debug, Clone)]
struct Subscriber {
    addr: SocketAddr,
    applied: Option<u64>,
    in_flight: Option<InFlight>,
    /// The next push must be a full snapshot.
    needs_full: bool,
    /// Since when it lacks a version the registry has (`None`: up to date).
    behind_since: Option<Instant>,
    last_latency: Option<Duration>,
    last_error: Option<String>,
    retry_at: Option<Instant>,
    /// A client's node: it has no membership to leave with.
    client: bool,
    /// Since when its pushes fail (`None`: the last one was answered).
    failing_since: Option<Instant>,
}

/// One proxy's standing, for `get proxy-status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// The node's SPIFFE id.
    pub node: String,
    /// Its mesh address.
    pub addr: SocketAddr,
    /// The registry version it applied (`None`: nothing yet).
    pub applied: Option<u64>,
    /// The registry's version now.
    pub current: u64,
    /// How many versions it is behind.
    pub behind: u64,
    /// From a change at the master to its acknowledgement, for the last push it applied.
    pub last_push_latency_ms: Option<f64>,
    /// It has lacked a change for longer than the limit.
    pub stale: bool,
    /// A push is on its way to it.
    pub in_flight: bool,
    /// Why its last push failed or was refused, if it did.
    pub last_error: Option<String>,
}

/// A push to send now.
#[derive(Debug, Clone)]
pub struct OutgoingPush {
    /// The proxy's node (its SPIFFE id).
    pub node: String,
    /// Its mesh address.
    pub addr: SocketAddr,
    /// The push.
    pub push: Push,
}

/// The subscribed proxies and the pushes to them.
#[derive(Debug)]
pub struct PushBook {
    cfg: PushConfig,
    subs: BTreeMap<String, Subscriber>,
    /// No push goes out before this (a restarted master lets agents re-register first).
    held_until: Option<Instant>,
    /// A coalescing window is open until then.
    window_until: Option<Instant>,
    /// From a change to a proxy's acknowledgement, for every push applied: shared with the
    /// master's metrics (atomics; recording takes no lock).
    latency: std::sync::Arc<actormesh::stats::Histogram>,
}

impl PushBook {
    /// No subscribers; pushes held until `held_until`, if given.
    pub fn new(cfg: PushConfig, held_until: Option<Instant>) -> Self {
        Self {
            cfg,
            subs: BTreeMap::new(),
            held_until,
            window_until: None,
            latency: Default::default(),
        }
    }

    /// The latency histogram of applied pushes.
    pub fn latency(&self) -> &std::sync::Arc<actormesh::stats::Histogram> {
        &self.latency
    }

    /// Its timing.
    pub fn config(&self) -> &PushConfig {
        &self.cfg
    }

    /// Whether pushes are held at `now`.
    pub fn held(&self, now: Instant) -> bool {
        self.held_until.is_some_and(|t| now < t)
    }

    /// Node `node`'s proxy at `addr` subscribes, holding `have` (after a reconnect). A
    /// subscription again replaces the old one (the proxy restarted or reconnected), and
    /// a push in flight to the old one is forgotten. A `client` (no membership) is
    /// forgotten once its pushes failed for `forget_client_after`.
    pub fn subscribe(
        &mut self,
        node: &str,
        addr: SocketAddr,
        have: Option<u64>,
        client: bool,
        reg: &ServiceRegistry,
        now: Instant,
    ) {
        let up_to_date = have == Some(reg.version());
        self.subs.insert(
            node.to_string(),
            Subscriber {
                addr,
                applied: have,
                in_flight: None,
                needs_full: !have.is_some_and(|v| reg.can_delta_from(v)),
                behind_since: (!up_to_date).then_some(now),
                last_latency: None,
                last_error: None,
                retry_at: None,
                client,
                failing_since: None,
            },
        );
    }

    /// Node `node` left (Gone): no more pushes to it.
    pub fn unsubscribe(&mut self, node: &str) {
        self.subs.remove(node);
    }

    /// Whether `node` subscribed.
    pub fn is_subscribed(&self, node: &str) -> bool {
        self.subs.contains_key(node)
    }

    /// The registry changed at `now`: every proxy is behind from then on. Returns how long
    /// until the coalesced push goes out if this change opened a window (the driver then
    /// calls [`Self::close_window`] after it).
    pub fn changed(&mut self, now: Instant) -> Option<Duration> {
        for s in self.subs.values_mut() {
            s.behind_since.get_or_insert(now);
        }
        if self.window_until.is_some_and(|t| now < t) {
            return None;
        }
        self.window_until = Some(now + self.cfg.window);
        Some(self.cfg.window)
    }

    /// The coalescing window has passed.
    pub fn close_window(&mut self, now: Instant) {
        if self.window_until.is_some_and(|t| t <= now) {
            self.window_until = None;
        }
    }

    /// The pushes to send at `now`: one to each proxy that lacks the registry's version,
    /// has none in flight and is not waiting to retry; none while held or while a window
    /// is open. They are in flight from now on.
    pub fn due(&mut self, reg: &ServiceRegistry, now: Instant) -> Vec<OutgoingPush> {
        if self.held(now) || self.window_until.is_some_and(|t| now < t) {
            return Vec::new();
        }
        self.window_until = None;
        let forget = self.cfg.forget_client_after;
        self.subs.retain(|_, s| {
            !(s.client
                && s.failing_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= forget))
        });
        let mut out = Vec::new();
        for (node, s) in &mut self.subs {
            if s.in_flight.is_some()
                || s.retry_at.is_some_and(|t| now < t)
                || (s.applied == Some(reg.version()) && !s.needs_full)
            {
                continue;
            }
            let push = if s.needs_full {
                reg.full()
            } else {
                reg.push_from(s.applied)
            };
            s.retry_at = None;
            s.in_flight = Some(InFlight {
                version: push.version,
                behind_since: s.behind_since.unwrap_or(now),
            });
            out.push(OutgoingPush {
                node: node.clone(),
                addr: s.addr,
                push,
            });
        }
        out
    }

    /// The push of `version` to `node` ended with `outcome` at `now`. An answer to a push
    /// that is not the one in flight (late, or for an earlier subscription) changes nothing.
    pub fn answered(
        &mut self,
        node: &str,
        version: u64,
        outcome: PushOutcome,
        reg: &ServiceRegistry,
        now: Instant,
    ) {
        let Some(s) = self.subs.get_mut(node) else {
            return;
        };
        let Some(flight) = s.in_flight.take_if(|f| f.version == version) else {
            return;
        };
        match outcome {
            PushOutcome::Applied(v) if v == version => {
                s.failing_since = None;
                s.applied = Some(v);
                s.needs_full = false;
                s.last_error = None;
                let took = now.saturating_duration_since(flight.behind_since);
                self.latency.record(took);
                s.last_latency = Some(took);
                s.behind_since = if v >= reg.version() {
                    None
                } else {
                    Some(reg.first_change_after(v).unwrap_or(now))
                };
            }
            PushOutcome::Applied(v) => {
                // It says it applied another version than it was sent: start over.
                s.last_error = Some(format!("acknowledged version {v} for a push of {version}"));
                s.needs_full = true;
            }
            PushOutcome::Refused(PushRefused::WrongBase { .. }) => {
                // It holds something else than we thought: a full snapshot at once.
                s.last_error = None;
                s.needs_full = true;
            }
            PushOutcome::Refused(why) => {
                s.last_error = Some(why.to_string());
                s.needs_full = true;
                s.retry_at = Some(now + self.cfg.retry_after);
            }
            PushOutcome::Failed(why) => {
                // It may have applied it: the next delta from what we know it holds is
                // refused as WrongBase then, and a full snapshot follows.
                s.last_error = Some(why);
                s.retry_at = Some(now + self.cfg.retry_after);
                s.failing_since.get_or_insert(now);
            }
        }
    }

    /// Whether every subscribed proxy applied `version` or later.
    pub fn all_applied(&self, version: u64) -> bool {
        self.subs
            .values()
            .all(|s| s.applied.is_some_and(|v| v >= version))
    }

    /// Every proxy's standing at `now`.
    pub fn status(&self, reg: &ServiceRegistry, now: Instant) -> Vec<ProxyStatus> {
        self.subs
            .iter()
            .map(|(node, s)| ProxyStatus {
                node: node.clone(),
                addr: s.addr,
                applied: s.applied,
                current: reg.version(),
                behind: reg.version().saturating_sub(s.applied.unwrap_or(0)),
                last_push_latency_ms: s.last_latency.map(|d| d.as_secs_f64() * 1000.0),
                stale: s
                    .behind_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.stale_after),
                in_flight: s.in_flight.is_some(),
                last_error: s.last_error.clone(),
            })
            .collect()
    }

    /// The address of `node`'s proxy, if it subscribed.
    pub fn addr_of(&self, node: &str) -> Option<SocketAddr> {
        self.subs.get(node).map(|s| s.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::super::registry::tests::service;
    use super::*;
    use actormesh::mesh::protocol::PushKind;

    const MS: Duration = Duration::from_millis(1);

    fn addr() -> SocketAddr {
        "127.0.0.1:9100".parse().unwrap()
    }

    fn book() -> PushBook {
        PushBook::new(PushConfig::default(), None)
    }

    fn change(reg: &mut ServiceRegistry, eps: &[&str], at: Instant) -> u64 {
        reg.update(BTreeMap::from([service("a", eps)]), [], at)
            .unwrap()
    }

    fn ack(b: &mut PushBook, reg: &ServiceRegistry, p: &OutgoingPush, now: Instant) {
        b.answered(
            &p.node,
            p.push.version,
            PushOutcome::Applied(p.push.version),
            reg,
            now,
        );
    }

    #[test]
    fn a_new_proxy_gets_a_full_snapshot_then_deltas_one_in_flight_at_a_time() {
        let t = Instant::now();
        let mut reg = ServiceRegistry::new(0, 64);
        change(&mut reg, &["x"], t);
        let mut b = book();
        b.subscribe("n1", addr(), None, false, &reg, t);
        let first = b.due(&reg, t);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].push.kind, PushKind::Full);
        // A change while the snapshot is in flight: nothing more goes out yet.
        assert_eq!(b.changed(t + MS), Some(Duration::from_millis(10)));
        change(&mut reg, &["x", "y"], t + MS);
        b.close_window(t + 11 * MS);
        assert!(
            b.due(&reg, t + 11 * MS).is_empty(),
            "one push in flight at most"
        );
        ack(&mut b, &reg, &first[0], t + 12 * MS);
        // The next push brings everything since the acknowledged version.
        let next = b.due(&reg, t + 12 * MS);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].push.kind, PushKind::Delta { from: 1 });
        assert_eq!(next[0].push.version, 2);
        ack(&mut b, &reg, &next[0], t + 13 * MS);
        assert!(b.due(&reg, t + 14 * MS).is_empty(), "up to date");
        assert!(b.all_applied(2));
        let st = &b.status(&reg, t + 14 * MS)[0];
        assert_eq!((st.applied, st.behind, st.stale), (Some(2), 0, false));
        // Latency: from the change at the master (t + 1 ms) to its acknowledgement.
        assert_eq!(st.last_push_latency_ms, Some(12.0));
        // The metrics' histogram holds both applied pushes: the snapshot (the change at t,
        // acknowledged at t + 12 ms) and the delta (12 ms too).
        let h = b.latency().snapshot();
        assert_eq!((h.count(), h.sum_nanos), (2, 24_000_000));
    }

    #[test]
    fn changes_within_the_window_go_out_as_one_push() {
        let t = Instant::now();
        let mut reg = ServiceRegistry::new(0, 64);
        let mut b = book();
        b.subscribe("n1", addr(), Some(0), false, &reg, t);
        assert!(b.due(&reg, t).is_empty(), "already holds version 0");
        assert!(b.changed(t).is_some());
        change(&mut reg, &["x"], t);
        assert!(b.changed(t + 4 * MS).is_none(), "the window is open");
        change(&mut reg, &["x", "y"], t + 4 * MS);
        assert!(b.due(&reg, t + 5 * MS).is_empty(), "within the window");
        b.close_window(t + 10 * MS);
        let p = b.due(&reg, t + 10 * MS);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].push.kind, PushKind::Delta { from: 0 });
        assert_eq!(p[0].push.version, 2, "both changes in one push");
    }

    #[test]
    fn a_wrong_base_gets_a_full_snapshot_and_a_failure_waits_to_retry() {
        let t = Instant::now();
        let mut reg = ServiceRegistry::new(0, 64);
        change(&mut reg, &["x"], t);
        let mut b = book();
        b.subscribe("n1", addr(), Some(0), false, &reg, t);
        let p = b.due(&reg, t);
        assert_eq!(p[0].push.kind, PushKind::Delta { from: 0 });
        b.answered(
            "n1",
            1,
            PushOutcome::Refused(PushRefused::WrongBase {
                from: 0,
                holds: None,
            }),
            &reg,
            t,
        );
        let p = b.due(&reg, t);
        assert_eq!(p[0].push.kind, PushKind::Full, "full after WrongBase");
        b.answered("n1", 1, PushOutcome::Failed("timeout".into()), &reg, t);
        assert!(b.due(&reg, t + 999 * MS).is_empty(), "waits to retry");
        let p = b.due(&reg, t + 1000 * MS);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].push.kind, PushKind::Full, "still owes a full snapshot");
        // A late answer for an older push changes nothing.
        b.answered("n1", 0, PushOutcome::Applied(0), &reg, t);
        assert_eq!(b.status(&reg, t)[0].applied, Some(0));
        assert!(b.status(&reg, t)[0].in_flight);
    }

    #[test]
    fn a_proxy_that_does_not_acknowledge_within_the_limit_is_stale() {
        let t = Instant::now();
        let mut reg = ServiceRegistry::new(0, 64);
        let mut b = book();
        b.subscribe("n1", addr(), Some(0), false, &reg, t);
        b.subscribe("n2", addr(), Some(0), false, &reg, t);
        b.changed(t);
        change(&mut reg, &["x"], t);
        b.close_window(t + 10 * MS);
        let p = b.due(&reg, t + 10 * MS);
        ack(&mut b, &reg, &p[0], t + 20 * MS);
        let st = b.status(&reg, t + Duration::from_secs(5));
        assert_eq!((st[0].stale, st[1].stale), (false, true));
        assert_eq!(st[1].behind, 1);
        assert!(!b.all_applied(1), "n2 has not applied it");
        assert!(!b.status(&reg, t + 4999 * MS)[1].stale);
    }

    #[test]
    fn a_client_whose_pushes_fail_for_long_is_forgotten_but_a_member_is_not() {
        let t = Instant::now();
        let reg = ServiceRegistry::new(0, 64);
        let mut b = book();
        b.subscribe("client", addr(), None, true, &reg, t);
        b.subscribe("node", addr(), None, false, &reg, t);
        let mut now = t;
        while now < t + Duration::from_secs(61) {
            for p in b.due(&reg, now) {
                b.answered(
                    &p.node,
                    p.push.version,
                    PushOutcome::Failed("gone".into()),
                    &reg,
                    now,
                );
            }
            now += Duration::from_secs(1);
        }
        assert!(!b.is_subscribed("client"));
        assert!(
            b.is_subscribed("node"),
            "a member leaves with its membership"
        );
        // An answer in time keeps a client.
        b.subscribe("client", addr(), None, true, &reg, now);
        let p = b.due(&reg, now);
        b.answered(
            "client",
            p[0].push.version,
            PushOutcome::Failed("x".into()),
            &reg,
            now,
        );
        let later = now + Duration::from_secs(30);
        let p = b.due(&reg, later);
        let mine = p.iter().find(|p| p.node == "client").unwrap();
        b.answered(
            "client",
            mine.push.version,
            PushOutcome::Applied(mine.push.version),
            &reg,
            later,
        );
        let _ = b.due(&reg, later + Duration::from_secs(61));
        assert!(b.is_subscribed("client"));
    }

    #[test]
    fn nothing_goes_out_while_pushes_are_held() {
        let t = Instant::now();
        let mut reg = ServiceRegistry::new(50, 64);
        let mut b = PushBook::new(PushConfig::default(), Some(t + Duration::from_secs(4)));
        b.subscribe("n1", addr(), Some(3), false, &reg, t);
        change(&mut reg, &["x"], t + MS);
        assert!(b.due(&reg, t + 3999 * MS).is_empty());
        let p = b.due(&reg, t + Duration::from_secs(4));
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].push.kind,
            PushKind::Full,
            "version 3 is from an earlier master"
        );
        assert_eq!(p[0].push.version, 51);
    }
}
