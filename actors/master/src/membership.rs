//! Agent membership and failure detection, as plain state driven with explicit time so
//! tests run it without a network or a clock.
//!
//! An agent heartbeats every `heartbeat_interval`. One silent for `unreachable_after` is
//! `Unreachable`; silent for `gone_after` it is `Gone` (its identity is then revoked),
//! but at most `max_removals_per_minute` agents go in any minute, so a partition cannot
//! empty the cluster in one sweep. A returning `Unreachable` agent is `Active` again (the
//! same agent, not a new one). A `Gone` agent is refused.
//!
//! False alarms under load: silence is measured on the master's monotonic clock between
//! heartbeats *processed*, and when the master's own check runs late (its thread was
//! starved), the lateness is credited to every agent: a master that could not look cannot
//! blame agents for what it did not see.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use actormesh::resources::Resources;

/// Where an agent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    /// Heartbeating.
    Active,
    /// Silent for longer than `unreachable_after`.
    Unreachable,
    /// Removed: silent for longer than `gone_after`; its identity is revoked.
    Gone,
}

impl std::fmt::Display for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AgentState::Active => "Active",
            AgentState::Unreachable => "Unreachable",
            AgentState::Gone => "Gone",
        })
    }
}

/// An agent as the master records it (durable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Short id, unique in the cluster (also the last path segment of its identity).
    pub id: String,
    /// Its SPIFFE identity.
    pub identity: String,
    /// The address its node listens on.
    pub addr: Option<SocketAddr>,
    /// What it offers.
    pub resources: Resources,
    /// Attributes such as zone and rack.
    pub attrs: BTreeMap<String, String>,
    /// Actor types its binary hosts.
    pub actor_types: Vec<String>,
    /// Membership state.
    pub state: AgentState,
    /// No new work is placed on a draining agent.
    pub draining: bool,
    /// The join token it used.
    pub token_id: String,
    /// When it joined (RFC 3339 in JSON, as every time of the API).
    #[serde(with = "crate::timestamp")]
    pub joined_at: SystemTime,
    /// Wall-clock time of the last heartbeat seen (for display).
    #[serde(with = "crate::timestamp::option")]
    pub last_heartbeat: Option<SystemTime>,
    /// Expiry of its current certificate.
    #[serde(with = "crate::timestamp::option")]
    pub cert_expiry: Option<SystemTime>,
    /// What it reported running at its last registration (soft state). The API's node
    /// views (`ClusterCore::agent_views`) put the tasks the master knows there now instead.
    pub running: Vec<String>,
}

/// Failure-detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// How often agents heartbeat.
    pub heartbeat_interval: Duration,
    /// Silence after which an agent is `Unreachable`.
    pub unreachable_after: Duration,
    /// Silence after which an agent is `Gone`.
    pub gone_after: Duration,
    /// Agents that may become `Gone` in any 60 s.
    pub max_removals_per_minute: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(250),
            unreachable_after: Duration::from_secs(2),
            gone_after: Duration::from_secs(300),
            max_removals_per_minute: 5,
        }
    }
}

/// A change of an agent's state, published to subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, actix::Message)]
#[rtype(result = "()")]
pub struct MembershipEvent {
    /// The agent.
    pub agent: String,
    /// Its state before (`None` when it first joined).
    pub from: Option<AgentState>,
    /// Its state now.
    pub to: AgentState,
}

/// Why a heartbeat or registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberRefusal {
    /// The agent is not known.
    #[error("agent {0} is not registered with this master; join with a token first")]
    Unknown(String),
    /// The agent was removed.
    #[error("agent {0} was removed (Gone) and its identity revoked; join again with a new token")]
    Gone(String),
}

/// All agents and the failure detector.
#[derive(Debug)]
pub struct Membership {
    config: DetectorConfig,
    agents: BTreeMap<String, AgentRecord>,
    last_seen: HashMap<String, Instant>,
    last_check: Option<Instant>,
    removals: Vec<Instant>,
}

impl Membership {
    /// Membership over `agents` (as loaded from the state store) at `now`. Every agent
    /// not `Gone` gets a grace period: after a master restart, agents have twice
    /// `unreachable_after` to notice the restart, reconnect and show up.
    pub fn new(config: DetectorConfig, agents: Vec<AgentRecord>, now: Instant) -> Self {
        let last_seen = agents
            .iter()
            .filter(|a| a.state != AgentState::Gone)
            .map(|a| (a.id.clone(), now + config.unreachable_after))
            .collect();
        Self {
            config,
            agents: agents.into_iter().map(|a| (a.id.clone(), a)).collect(),
            last_seen,
            last_check: None,
            removals: Vec::new(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// One agent.
    pub fn get(&self, id: &str) -> Option<&AgentRecord> {
        self.agents.get(id)
    }

    /// Every agent, by id.
    pub fn all(&self) -> impl Iterator<Item = &AgentRecord> {
        self.agents.values()
    }

    /// Adds a newly joined agent (state `Active`).
    pub fn join(&mut self, record: AgentRecord, now: Instant) -> MembershipEvent {
        let id = record.id.clone();
        self.agents.insert(id.clone(), record);
        self.last_seen.insert(id.clone(), now);
        MembershipEvent {
            agent: id,
            from: None,
            to: AgentState::Active,
        }
    }

    /// An agent (re)registered or heartbeat: it is alive. Returns the state change, if any.
    pub fn seen(
        &mut self,
        id: &str,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Option<MembershipEvent>, MemberRefusal> {
        let a = self
            .agents
            .get_mut(id)
            .ok_or_else(|| MemberRefusal::Unknown(id.to_string()))?;
        if a.state == AgentState::Gone {
            return Err(MemberRefusal::Gone(id.to_string()));
        }
        self.last_seen.insert(id.to_string(), now);
        a.last_heartbeat = Some(wall);
        if a.state == AgentState::Unreachable {
            a.state = AgentState::Active;
            return Ok(Some(MembershipEvent {
                agent: id.to_string(),
                from: Some(AgentState::Unreachable),
                to: AgentState::Active,
            }));
        }
        Ok(None)
    }

    /// Mutable access to a record (registration details, draining, certificate expiry).
    pub fn record_mut(&mut self, id: &str) -> Option<&mut AgentRecord> {
        self.agents.get_mut(id)
    }

    /// Makes agent `id` `Gone` now, on an operator's word (`delete node`): not counted
    /// against `max_removals_per_minute`, which guards against the detector's mass
    /// removals. `None` if there is no such agent or it is `Gone` already.
    pub fn remove_now(&mut self, id: &str) -> Option<MembershipEvent> {
        let a = self.agents.get_mut(id)?;
        if a.state == AgentState::Gone {
            return None;
        }
        let from = a.state;
        a.state = AgentState::Gone;
        self.last_seen.remove(id);
        Some(MembershipEvent {
            agent: id.to_string(),
            from: Some(from),
            to: AgentState::Gone,
        })
    }

    /// Runs the failure detector at `now`; returns the state changes.
    pub fn check(&mut self, now: Instant) -> Vec<MembershipEvent> {
        // Credit the master's own lateness to everyone (see the module docs).
        if let Some(last) = self.last_check {
            let gap = now.saturating_duration_since(last);
            let late = gap.saturating_sub(self.config.heartbeat_interval * 2);
            if !late.is_zero() {
                for seen in self.last_seen.values_mut() {
                    *seen += late;
                }
            }
        }
        self.last_check = Some(now);
        self.removals
            .retain(|t| now.saturating_duration_since(*t) < Duration::from_secs(60));
        let mut events = Vec::new();
        for (id, a) in self.agents.iter_mut() {
            let Some(seen) = self.last_seen.get(id) else {
                continue;
            };
            let silent = now.saturating_duration_since(*seen);
            match a.state {
                AgentState::Active if silent > self.config.unreachable_after => {
                    a.state = AgentState::Unreachable;
                    events.push(MembershipEvent {
                        agent: id.clone(),
                        from: Some(AgentState::Active),
                        to: AgentState::Unreachable,
                    });
                }
                AgentState::Unreachable
                    if silent > self.config.gone_after
                        && (self.removals.len() as u32) < self.config.max_removals_per_minute =>
                {
                    a.state = AgentState::Gone;
                    self.removals.push(now);
                    events.push(MembershipEvent {
                        agent: id.clone(),
                        from: Some(AgentState::Unreachable),
                        to: AgentState::Gone,
                    });
                }
                _ => {}
            }
        }
        for e in &events {
            if e.to == AgentState::Gone {
                self.last_seen.remove(&e.agent);
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> AgentRecord {
        AgentRecord {
            id: id.into(),
            identity: format!("spiffe://t/node/{id}"),
            addr: None,
            resources: Resources::default(),
            attrs: BTreeMap::new(),
            actor_types: vec![],
            state: AgentState::Active,
            draining: false,
            token_id: "tok".into(),
            joined_at: SystemTime::now(),
            last_heartbeat: None,
            cert_expiry: None,
            running: vec![],
        }
    }

    #[test]
    fn a_record_in_json_has_rfc3339_times_and_its_stored_form_reads_back() {
        let mut r = record("a");
        r.joined_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_157_779);
        r.cert_expiry = Some(r.joined_at + Duration::from_secs(86_400));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["joined_at"], "2026-12-01T20:42:59Z");
        assert_eq!(json["cert_expiry"], "2026-12-02T20:42:59Z");
        assert_eq!(json["last_heartbeat"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<AgentRecord>(json).unwrap(), r);
        let stored = actormesh_transport::codec::encode(&r).unwrap();
        assert_eq!(
            actormesh_transport::codec::decode::<AgentRecord>(&stored).unwrap(),
            r
        );
    }

    fn cfg() -> DetectorConfig {
        DetectorConfig {
            heartbeat_interval: Duration::from_millis(100),
            unreachable_after: Duration::from_secs(2),
            gone_after: Duration::from_secs(10),
            max_removals_per_minute: 2,
        }
    }

    /// Drives the detector every 100 ms up to `until`, with `alive` heartbeating.
    fn run(
        m: &mut Membership,
        from: Instant,
        until: Duration,
        alive: &[&str],
    ) -> Vec<MembershipEvent> {
        let mut events = Vec::new();
        let mut t = Duration::ZERO;
        while t <= until {
            let now = from + t;
            for id in alive {
                let _ = m.seen(id, now, SystemTime::now());
            }
            events.extend(m.check(now));
            t += Duration::from_millis(100);
        }
        events
    }

    #[test]
    fn silent_agents_become_unreachable_then_gone_and_return_only_before_gone() {
        let t0 = Instant::now();
        let mut m = Membership::new(cfg(), vec![record("a"), record("b")], t0);
        // Loaded agents get a grace of twice unreachable_after (4 s here).
        let ev = run(&mut m, t0, Duration::from_millis(3900), &["a"]);
        assert!(ev.is_empty(), "{ev:?}");
        let ev = run(
            &mut m,
            t0 + Duration::from_secs(4),
            Duration::from_millis(500),
            &["a"],
        );
        let unreachable = MembershipEvent {
            agent: "b".into(),
            from: Some(AgentState::Active),
            to: AgentState::Unreachable,
        };
        assert_eq!(ev, vec![unreachable]);
        // b comes back: the same agent, Active again.
        let back = m.seen("b", t0 + Duration::from_millis(4600), SystemTime::now());
        assert_eq!(back.unwrap().unwrap().to, AgentState::Active);
        // Now silent for good.
        let ev = run(
            &mut m,
            t0 + Duration::from_millis(4700),
            Duration::from_secs(11),
            &["a"],
        );
        assert_eq!(ev.last().unwrap().to, AgentState::Gone);
        assert_eq!(m.get("b").unwrap().state, AgentState::Gone);
        let late = m.seen("b", t0 + Duration::from_secs(20), SystemTime::now());
        assert_eq!(late, Err(MemberRefusal::Gone("b".into())));
        assert_eq!(m.get("a").unwrap().state, AgentState::Active);
    }

    #[test]
    fn removals_are_rate_limited() {
        let t0 = Instant::now();
        let agents: Vec<_> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|i| record(i))
            .collect();
        let mut m = Membership::new(cfg(), agents, t0);
        // Everyone goes silent (a partition); within the first minute at most 2 are removed.
        let ev = run(&mut m, t0, Duration::from_secs(32), &[]);
        let gone = ev.iter().filter(|e| e.to == AgentState::Gone).count();
        assert_eq!(gone, 2);
        // Once the first removals are a minute old, two more may go.
        let ev = run(
            &mut m,
            t0 + Duration::from_secs(30),
            Duration::from_secs(45),
            &[],
        );
        assert_eq!(ev.iter().filter(|e| e.to == AgentState::Gone).count(), 2);
    }

    #[test]
    fn a_stalled_master_does_not_blame_agents() {
        let t0 = Instant::now();
        let mut m = Membership::new(cfg(), vec![record("a")], t0);
        m.seen("a", t0, SystemTime::now()).unwrap();
        assert!(m.check(t0).is_empty());
        // The master's thread was starved for 5 s: no check ran, no heartbeat was read.
        assert!(m.check(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(m.get("a").unwrap().state, AgentState::Active);
        // But real silence after that still counts.
        assert!(run(
            &mut m,
            t0 + Duration::from_secs(5),
            Duration::from_millis(2500),
            &[]
        )
        .iter()
        .any(|e| e.to == AgentState::Unreachable));
    }

    #[test]
    fn after_a_restart_known_agents_get_a_grace_period_and_gone_stays_gone() {
        let t0 = Instant::now();
        let mut gone = record("g");
        gone.state = AgentState::Gone;
        let mut m = Membership::new(cfg(), vec![record("a"), gone], t0);
        assert!(m.check(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(
            m.seen("g", t0, SystemTime::now()),
            Err(MemberRefusal::Gone("g".into()))
        );
        assert_eq!(
            m.seen("zz", t0, SystemTime::now()),
            Err(MemberRefusal::Unknown("zz".into()))
        );
    }
}
