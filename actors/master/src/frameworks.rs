//! Frameworks, offers and status updates on the master, as plain state with time passed in
//! (the Mesos framework model).
//!
//! - A framework registers with a role and a failover timeout. If it disconnects it keeps
//!   its id and tasks for that long; re-registering with its id in time picks them up
//!   again, and after that it is failed over (its tasks are to be killed).
//! - Offers expire after `offer_timeout` and are rescinded, as are offers on a lost agent.
//! - Status updates are delivered at least once: each stays pending, and is due again with
//!   capped backoff, until the framework acknowledges it by its uuid.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actormesh::resources::Resources;

pub use actormesh::task::{TaskState, TaskStatus};

/// A registered framework.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameworkRecord {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its role (for the allocator).
    pub role: String,
    /// How long it keeps its tasks while disconnected.
    pub failover_timeout: Duration,
    /// When it disconnected, if it is disconnected.
    pub disconnected_at: Option<Instant>,
}

/// An outstanding offer.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferRecord {
    /// Offer id.
    pub id: String,
    /// To whom.
    pub framework: String,
    /// On which agent.
    pub agent: String,
    /// What.
    pub resources: Resources,
    /// Rescinded after this.
    pub expires: Instant,
}

#[derive(Debug, Clone)]
struct PendingUpdate {
    status: TaskStatus,
    due: Instant,
    attempts: u32,
}

/// Why a framework request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameworkRefusal {
    /// No such framework (never registered, or failed over).
    #[error("framework {0} is not registered (it may have failed over); register again")]
    Unknown(String),
    /// The framework re-registered with another role.
    #[error("framework {id} is registered with role {registered:?}, not {asked:?}")]
    RoleMismatch {
        /// The framework.
        id: String,
        /// Its role.
        registered: String,
        /// The role asked for.
        asked: String,
    },
    /// The offer is not (or no longer) this framework's.
    #[error("offer {0} is unknown, expired or rescinded")]
    UnknownOffer(String),
}

/// What `expire` found.
#[derive(Debug, Default, PartialEq)]
pub struct Expired {
    /// Offers past their timeout: to rescind (tell the framework) and recover.
    pub offers: Vec<OfferRecord>,
    /// Frameworks past their failover timeout: their tasks are to be killed.
    pub failed_over: Vec<FrameworkRecord>,
}

/// Frameworks, offers and pending status updates.
#[derive(Debug)]
pub struct FrameworkBook {
    frameworks: BTreeMap<String, FrameworkRecord>,
    offers: BTreeMap<String, OfferRecord>,
    updates: BTreeMap<(String, String), PendingUpdate>,
    offer_timeout: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    next_id: u64,
    /// Part of every framework id, different per master process, so ids never repeat.
    epoch: u32,
}

impl FrameworkBook {
    /// A book whose offers live `offer_timeout` and whose updates are retried from
    /// `retry_initial`, doubling up to `retry_max`.
    pub fn new(offer_timeout: Duration, retry_initial: Duration, retry_max: Duration) -> Self {
        Self {
            frameworks: BTreeMap::new(),
            offers: BTreeMap::new(),
            updates: BTreeMap::new(),
            offer_timeout,
            retry_initial,
            retry_max,
            next_id: 1,
            epoch: 0,
        }
    }

    /// Framework ids made from now on carry `epoch` (differs per master process).
    pub fn set_epoch(&mut self, epoch: u32) {
        self.epoch = epoch;
    }

    fn fresh(&mut self, prefix: &str) -> String {
        let id = if self.epoch == 0 {
            format!("{prefix}-{}", self.next_id)
        } else {
            format!("{prefix}-{:x}-{}", self.epoch, self.next_id)
        };
        self.next_id += 1;
        id
    }

    /// Registers a framework, or re-registers one within its failover timeout (`id`).
    /// Returns its id and whether it was a re-registration.
    pub fn register(
        &mut self,
        name: &str,
        role: &str,
        failover_timeout: Duration,
        id: Option<&str>,
    ) -> Result<(String, bool), FrameworkRefusal> {
        if let Some(id) = id {
            let f = self
                .frameworks
                .get_mut(id)
                .ok_or_else(|| FrameworkRefusal::Unknown(id.to_string()))?;
            if f.role != role {
                return Err(FrameworkRefusal::RoleMismatch {
                    id: id.to_string(),
                    registered: f.role.clone(),
                    asked: role.to_string(),
                });
            }
            f.disconnected_at = None;
            f.failover_timeout = failover_timeout;
            return Ok((id.to_string(), true));
        }
        let id = self.fresh("fw");
        self.frameworks.insert(
            id.clone(),
            FrameworkRecord {
                id: id.clone(),
                name: name.to_string(),
                role: role.to_string(),
                failover_timeout,
                disconnected_at: None,
            },
        );
        Ok((id, false))
    }

    /// A framework an earlier master process registered (from the state store): it is
    /// disconnected from `now` until it re-registers within its failover timeout.
    pub fn restore(
        &mut self,
        id: &str,
        name: &str,
        role: &str,
        failover_timeout: Duration,
        now: Instant,
    ) {
        self.frameworks.insert(
            id.to_string(),
            FrameworkRecord {
                id: id.to_string(),
                name: name.to_string(),
                role: role.to_string(),
                failover_timeout,
                disconnected_at: Some(now),
            },
        );
    }

    /// Removes a framework (torn down): returns its outstanding offers, to recover.
    pub fn remove(&mut self, id: &str) -> Vec<OfferRecord> {
        self.frameworks.remove(id);
        self.updates.retain(|(fw, _), _| fw != id);
        self.rescind_framework(id)
    }

    /// Every framework.
    pub fn all(&self) -> impl Iterator<Item = &FrameworkRecord> {
        self.frameworks.values()
    }

    /// Outstanding offers to `framework`: withdrawn (it disconnected or is torn down).
    pub fn rescind_framework(&mut self, framework: &str) -> Vec<OfferRecord> {
        let ids: Vec<String> = self
            .offers
            .values()
            .filter(|o| o.framework == framework)
            .map(|o| o.id.clone())
            .collect();
        ids.iter().filter_map(|id| self.offers.remove(id)).collect()
    }

    /// The outstanding offers.
    pub fn outstanding(&self) -> impl Iterator<Item = &OfferRecord> {
        self.offers.values()
    }

    /// How many offers `framework` holds.
    pub fn offers_held(&self, framework: &str) -> usize {
        self.offers
            .values()
            .filter(|o| o.framework == framework)
            .count()
    }

    /// Makes every pending update of `framework` due at `now` (it re-registered).
    pub fn redeliver_now(&mut self, framework: &str, now: Instant) {
        for ((fw, _), u) in self.updates.iter_mut() {
            if fw == framework {
                u.due = now;
                u.attempts = 0;
            }
        }
    }

    /// The framework's link went down at `now`; its failover timer starts.
    pub fn disconnected(&mut self, id: &str, now: Instant) {
        if let Some(f) = self.frameworks.get_mut(id) {
            f.disconnected_at.get_or_insert(now);
        }
    }

    /// One framework.
    pub fn get(&self, id: &str) -> Option<&FrameworkRecord> {
        self.frameworks.get(id)
    }

    /// Records an offer of `resources` on `agent` to `framework` at `now`; returns its id.
    pub fn offer(
        &mut self,
        framework: &str,
        agent: &str,
        resources: Resources,
        now: Instant,
    ) -> String {
        let id = self.fresh("offer");
        self.offers.insert(
            id.clone(),
            OfferRecord {
                id: id.clone(),
                framework: framework.to_string(),
                agent: agent.to_string(),
                resources,
                expires: now + self.offer_timeout,
            },
        );
        id
    }

    /// The framework uses (accepts or declines) offer `id`: it leaves the book.
    pub fn take_offer(
        &mut self,
        framework: &str,
        id: &str,
    ) -> Result<OfferRecord, FrameworkRefusal> {
        if self
            .offers
            .get(id)
            .is_some_and(|o| o.framework == framework)
        {
            if let Some(o) = self.offers.remove(id) {
                return Ok(o);
            }
        }
        Err(FrameworkRefusal::UnknownOffer(id.to_string()))
    }

    /// Every offer on `agent` (which was lost): to rescind and forget.
    pub fn rescind_agent(&mut self, agent: &str) -> Vec<OfferRecord> {
        let ids: Vec<String> = self
            .offers
            .values()
            .filter(|o| o.agent == agent)
            .map(|o| o.id.clone())
            .collect();
        ids.iter().filter_map(|id| self.offers.remove(id)).collect()
    }

    /// Offers past their timeout and frameworks past their failover timeout, at `now`.
    pub fn expire(&mut self, now: Instant) -> Expired {
        let offers: Vec<String> = self
            .offers
            .values()
            .filter(|o| o.expires <= now)
            .map(|o| o.id.clone())
            .collect();
        let failed: Vec<String> = self
            .frameworks
            .values()
            .filter(|f| {
                f.disconnected_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= f.failover_timeout)
            })
            .map(|f| f.id.clone())
            .collect();
        let mut out = Expired {
            offers: offers
                .iter()
                .filter_map(|id| self.offers.remove(id))
                .collect(),
            failed_over: Vec::new(),
        };
        for id in failed {
            if let Some(f) = self.frameworks.remove(&id) {
                // Its offers and pending updates go with it.
                let gone: Vec<String> = self
                    .offers
                    .values()
                    .filter(|o| o.framework == id)
                    .map(|o| o.id.clone())
                    .collect();
                out.offers
                    .extend(gone.iter().filter_map(|o| self.offers.remove(o)));
                self.updates.retain(|(fw, _), _| fw != &id);
                out.failed_over.push(f);
            }
        }
        out
    }

    /// A status update for `framework`'s task: pending until acknowledged, due at once.
    /// A newer update for the same task replaces an unacknowledged older one.
    pub fn status_update(&mut self, framework: &str, status: TaskStatus, now: Instant) {
        self.updates.insert(
            (framework.to_string(), status.task_id.clone()),
            PendingUpdate {
                status,
                due: now,
                attempts: 0,
            },
        );
    }

    /// Updates due for (re)delivery at `now` to connected frameworks; each is scheduled
    /// again with backoff until acknowledged.
    pub fn due_updates(&mut self, now: Instant) -> Vec<(String, TaskStatus)> {
        let mut out = Vec::new();
        for ((fw, _), u) in self.updates.iter_mut() {
            let connected = self
                .frameworks
                .get(fw)
                .is_some_and(|f| f.disconnected_at.is_none());
            if connected && u.due <= now {
                out.push((fw.clone(), u.status.clone()));
                let backoff = self.retry_initial * 2u32.saturating_pow(u.attempts.min(16));
                u.attempts += 1;
                u.due = now + backoff.min(self.retry_max);
            }
        }
        out
    }

    /// The framework acknowledges update `uuid` of `task_id`. An acknowledgement of an
    /// older update (another uuid) is ignored: the newer one stays pending.
    pub fn acknowledge(&mut self, framework: &str, task_id: &str, uuid: u64) -> bool {
        let key = (framework.to_string(), task_id.to_string());
        match self.updates.get(&key) {
            Some(u) if u.status.uuid == uuid => {
                self.updates.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// Updates not yet acknowledged.
    pub fn pending_updates(&self) -> usize {
        self.updates.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> FrameworkBook {
        FrameworkBook::new(
            Duration::from_secs(10),
            Duration::from_secs(1),
            Duration::from_secs(8),
        )
    }

    fn status(task: &str, state: TaskState, uuid: u64) -> TaskStatus {
        TaskStatus {
            task_id: task.into(),
            agent_id: "a1".into(),
            state,
            message: String::new(),
            uuid,
            healthy: None,
        }
    }

    #[test]
    fn offers_expire_and_are_rescinded_with_their_agent() {
        let t0 = Instant::now();
        let mut b = book();
        let (fw, _) = b
            .register("web", "web", Duration::from_secs(60), None)
            .unwrap();
        let o1 = b.offer(&fw, "a1", "cpus:1".parse().unwrap(), t0);
        let o2 = b.offer(&fw, "a2", "cpus:1".parse().unwrap(), t0);
        assert_eq!(b.rescind_agent("a2").len(), 1);
        assert!(b.take_offer(&fw, &o2).is_err());
        assert!(b.expire(t0 + Duration::from_secs(9)).offers.is_empty());
        let e = b.expire(t0 + Duration::from_secs(10));
        assert_eq!(
            e.offers.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            vec![o1.as_str()]
        );
        assert!(matches!(
            b.take_offer(&fw, &o1),
            Err(FrameworkRefusal::UnknownOffer(_))
        ));
    }

    #[test]
    fn a_framework_fails_over_only_after_its_timeout() {
        let t0 = Instant::now();
        let mut b = book();
        let (fw, again) = b
            .register("web", "web", Duration::from_secs(30), None)
            .unwrap();
        assert!(!again);
        b.disconnected(&fw, t0);
        assert!(b
            .expire(t0 + Duration::from_secs(29))
            .failed_over
            .is_empty());
        // Back in time: same id, same tasks.
        assert_eq!(
            b.register("web", "web", Duration::from_secs(30), Some(&fw))
                .unwrap(),
            (fw.clone(), true)
        );
        assert!(b
            .expire(t0 + Duration::from_secs(100))
            .failed_over
            .is_empty());
        // Gone for good this time.
        b.disconnected(&fw, t0 + Duration::from_secs(100));
        let e = b.expire(t0 + Duration::from_secs(130));
        assert_eq!(e.failed_over.len(), 1);
        assert!(matches!(
            b.register("web", "web", Duration::from_secs(30), Some(&fw)),
            Err(FrameworkRefusal::Unknown(_))
        ));
        let (other, _) = b.register("db", "db", Duration::ZERO, None).unwrap();
        assert!(matches!(
            b.register("db", "web", Duration::ZERO, Some(&other)),
            Err(FrameworkRefusal::RoleMismatch { .. })
        ));
    }

    #[test]
    fn status_updates_are_retried_with_backoff_until_acknowledged() {
        let t0 = Instant::now();
        let mut b = book();
        let (fw, _) = b
            .register("web", "web", Duration::from_secs(60), None)
            .unwrap();
        b.status_update(&fw, status("t1", TaskState::Running, 1), t0);
        let due_at = |b: &mut FrameworkBook, secs: f64| {
            b.due_updates(t0 + Duration::from_secs_f64(secs)).len()
        };
        assert_eq!(due_at(&mut b, 0.0), 1);
        assert_eq!(due_at(&mut b, 0.5), 0);
        assert_eq!(due_at(&mut b, 1.0), 1); // after 1 s
        assert_eq!(due_at(&mut b, 2.0), 0);
        assert_eq!(due_at(&mut b, 3.0), 1); // then 2 s later
                                            // A newer update replaces the old one; acknowledging the old uuid changes nothing.
        b.status_update(
            &fw,
            status("t1", TaskState::Finished, 2),
            t0 + Duration::from_secs(4),
        );
        assert!(!b.acknowledge(&fw, "t1", 1));
        assert_eq!(b.pending_updates(), 1);
        assert!(b.acknowledge(&fw, "t1", 2));
        assert_eq!(b.pending_updates(), 0);
        assert!(TaskState::Finished.is_terminal() && !TaskState::Unreachable.is_terminal());
    }

    #[test]
    fn updates_wait_while_the_framework_is_disconnected() {
        let t0 = Instant::now();
        let mut b = book();
        let (fw, _) = b
            .register("web", "web", Duration::from_secs(60), None)
            .unwrap();
        b.disconnected(&fw, t0);
        b.status_update(&fw, status("t1", TaskState::Lost, 7), t0);
        assert!(b.due_updates(t0 + Duration::from_secs(5)).is_empty());
        b.register("web", "web", Duration::from_secs(60), Some(&fw))
            .unwrap();
        assert_eq!(b.due_updates(t0 + Duration::from_secs(6)).len(), 1);
    }
}
