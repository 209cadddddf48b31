//! Agents: joining, registration, heartbeats, renewal, failure detection and removal;
//! join tokens and draining.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use actormesh::protocol::{
    Heartbeat, HeartbeatAck, JoinRequest, MasterRefusal, Register, Registered,
};
use actormesh_transport::codec;
use actormesh_transport::SpiffeId;

use super::{ClusterCore, Effect, OperatorError, Step, PRUNE_EVERY};
use crate::membership::{self, AgentRecord, AgentState, MembershipEvent};
use crate::state::{Change, Table};
use crate::tokens::{self, JoinToken, TokenRecord, TokenRole};
use crate::CreatedToken;

/// The longest a join token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Why a join was refused (sent to the joining node as text).
#[derive(Debug, thiserror::Error)]
pub enum JoinRefusal {
    /// The token is unknown, expired, revoked, used for another role, or its secret or CA
    /// pin is wrong.
    #[error(transparent)]
    Token(#[from] tokens::TokenRefusal),
    /// The system's random generator failed to name the agent.
    #[error("the master has no randomness")]
    NoRandomness,
    /// The requested name is not a valid agent name.
    #[error("agent name {0:?} is not valid: use up to 63 lowercase letters, digits and '-'")]
    InvalidName(String),
    /// `master` names the master itself.
    #[error("agent name \"master\" is reserved for the master itself")]
    ReservedName,
    /// Names are never reused (a join retried before the first registration excepted).
    #[error("agent name {0} is taken (by a member in state {1}); choose another name")]
    NameTaken(String, AgentState),
    /// The name makes no valid identity in the trust domain.
    #[error("{0}")]
    Identity(#[from] actormesh_transport::identity::IdentityError),
    /// The configured certificate lifetime overflows the clock.
    #[error("the master's agent certificate lifetime is out of range")]
    LifetimeOutOfRange,
}

/// A join the core admits, once the driver has signed its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinAdmission {
    /// The agent's id (its name).
    pub agent_id: String,
    /// Its identity, for the certificate.
    pub identity: SpiffeId,
    /// The certificate's lifetime.
    pub cert_ttl: Duration,
    /// When the certificate expires.
    pub cert_expiry: SystemTime,
    /// The token it joins with.
    pub token_id: String,
}

impl ClusterCore {
    /// Checks a presented token's id and secret for a use that needs `role`.
    pub(super) fn check_token(
        &self,
        id: &str,
        secret: &str,
        role: TokenRole,
        wall: SystemTime,
    ) -> Result<(), tokens::TokenRefusal> {
        let presented = JoinToken {
            id: id.to_string(),
            secret: secret.to_string(),
            ca_fingerprint: self.trust.signer().to_string(),
        };
        let Some(record) = self.tokens.get(id) else {
            return Err(tokens::TokenRefusal::Unknown(id.to_string()));
        };
        record.check(&presented, role, wall)
    }

    /// Checks a join request at `wall`; `random_name` names an agent that asked for no
    /// name. The driver signs the certificate, then calls [`Self::admit`].
    pub fn check_join(
        &self,
        req: &JoinRequest,
        random_name: impl FnOnce() -> Option<String>,
        wall: SystemTime,
    ) -> Result<JoinAdmission, JoinRefusal> {
        self.check_token(&req.token_id, &req.token_secret, TokenRole::Agent, wall)?;
        let id = if req.name.is_empty() {
            random_name().ok_or(JoinRefusal::NoRandomness)?
        } else {
            req.name.clone()
        };
        if id.len() > 63
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(JoinRefusal::InvalidName(id));
        }
        if id == "master" {
            return Err(JoinRefusal::ReservedName);
        }
        if let Some(existing) = self.membership.get(&id) {
            // A join whose reply was lost may be retried with the same token until the
            // agent first registers; otherwise names are never reused, so a removed
            // node's revoked identity can never come back under someone else.
            let retry = existing.token_id == req.token_id
                && existing.addr.is_none()
                && existing.state != AgentState::Gone;
            if !retry {
                return Err(JoinRefusal::NameTaken(id, existing.state));
            }
        }
        let identity = SpiffeId::node(&self.trust_domain, &id)?;
        let cert_expiry = wall
            .checked_add(self.agent_cert_ttl)
            .ok_or(JoinRefusal::LifetimeOutOfRange)?;
        Ok(JoinAdmission {
            agent_id: id,
            identity,
            cert_ttl: self.agent_cert_ttl,
            cert_expiry,
            token_id: req.token_id.clone(),
        })
    }

    /// Admits a joining node whose certificate is signed; the reply (the certificate)
    /// waits for its record to be stored.
    pub fn admit(&mut self, join: JoinAdmission, now: Instant, wall: SystemTime) -> Vec<Effect> {
        self.step(|core| {
            let record = AgentRecord {
                id: join.agent_id.clone(),
                identity: join.identity.to_string(),
                addr: None,
                resources: Default::default(),
                attrs: BTreeMap::new(),
                actor_types: vec![],
                state: AgentState::Active,
                draining: false,
                token_id: join.token_id,
                joined_at: wall,
                last_heartbeat: None,
                cert_expiry: Some(join.cert_expiry),
                running: vec![],
            };
            // If this write fails the master steps down, and the restarted master never
            // heard of this agent.
            let changes = super::agent_batch(&record, Vec::new());
            core.out.push(Effect::Persist(super::Batch {
                changes,
                acknowledges: true,
            }));
            let event = core.membership.join(record, now);
            core.publish(event);
            info!(agent = %join.agent_id, "agent joined");
        })
        .effects
    }

    /// The verified caller is the agent it claims to be.
    pub(super) fn check_caller(
        &self,
        agent_id: &str,
        caller: &Option<SpiffeId>,
    ) -> Result<(), MasterRefusal> {
        match caller {
            Some(c) if c.as_str() == self.identity_of(agent_id) => Ok(()),
            Some(c) => Err(MasterRefusal::Forbidden(format!(
                "{c} may not speak for agent {agent_id}"
            ))),
            None => Err(MasterRefusal::Forbidden(
                "agent messages must come over the mesh".into(),
            )),
        }
    }

    /// An agent's message finds it alive (or says why it is refused).
    fn seen(
        &mut self,
        agent_id: &str,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Option<MembershipEvent>, MasterRefusal> {
        let event = self
            .membership
            .seen(agent_id, now, wall)
            .map_err(|e| match e {
                membership::MemberRefusal::Gone(_) => MasterRefusal::Removed(e.to_string()),
                membership::MemberRefusal::Unknown(_) => {
                    MasterRefusal::NotRegistered(e.to_string())
                }
            })?;
        // A changed state (an Unreachable agent is back) changes its endpoints.
        if event.is_some() {
            self.registry_dirty = true;
        }
        Ok(event)
    }

    /// An agent registers (again) with what it runs: its instances are adopted or killed,
    /// its slot in the allocator is made anew. The reply waits for its record.
    pub fn register(
        &mut self,
        r: Register,
        caller: Option<SpiffeId>,
        now: Instant,
        wall: SystemTime,
    ) -> Step<Result<Registered, MasterRefusal>> {
        self.step(|core| core.register_now(r, caller, now, wall))
    }

    fn register_now(
        &mut self,
        r: Register,
        caller: Option<SpiffeId>,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Registered, MasterRefusal> {
        self.check_caller(&r.agent_id, &caller)?;
        let invalid = std::iter::once(("resources", &r.resources))
            .chain(r.held.values().map(|h| ("held", h)))
            .chain(r.reserved.values().map(|h| ("reserved", h)))
            .find_map(|(what, res)| res.validate().err().map(|e| format!("{what}: {e}")));
        if let Some(e) = invalid {
            return Err(MasterRefusal::Forbidden(format!(
                "agent {} registered invalid resources: {e}",
                r.agent_id
            )));
        }
        let event = self.seen(&r.agent_id, now, wall)?;
        if let Some(rec) = self.membership.record_mut(&r.agent_id) {
            rec.addr = Some(r.addr);
            rec.resources = r.resources;
            rec.attrs = r.attrs;
            rec.actor_types = r.actor_types;
            rec.running = r.running.clone();
            rec.cert_expiry = Some(r.cert_expiry);
        }
        let mut kills = self.deployments.adopt(
            &r.agent_id,
            &r.running,
            &r.healthy,
            &r.held,
            &r.versions,
            now,
        );
        kills.extend(self.adopt_framework_tasks(&r.agent_id, &r.running, &r.held, now));
        self.reservations
            .insert(r.agent_id.clone(), r.reserved.clone());
        // Registration is soft state: if it cannot be written, the agent is told to retry
        // and registers again after a master restart anyway.
        self.persist_agent(&r.agent_id, Vec::new(), true);
        if let Some(e) = event {
            self.publish(e);
        }
        self.rebuild_agent(&r.agent_id);
        if !kills.is_empty() {
            info!(agent = %r.agent_id, kills = kills.len(), "killing instances that were replaced or whose deployment is gone");
            self.carry_out(kills);
        }
        self.schedule_round();
        Ok(Registered {
            heartbeat_interval_ms: self.membership.config().heartbeat_interval.as_millis() as u64,
        })
    }

    /// An agent's heartbeat.
    pub fn heartbeat(
        &mut self,
        hb: &Heartbeat,
        caller: Option<SpiffeId>,
        now: Instant,
        wall: SystemTime,
    ) -> Step<Result<HeartbeatAck, MasterRefusal>> {
        self.step(|core| {
            // A heartbeat changes the registry only by changing the agent's state, which
            // `seen` marks; most change nothing, and `settle` need not recompute.
            core.quiet = true;
            core.check_caller(&hb.agent_id, &caller)?;
            if let Some(e) = core.seen(&hb.agent_id, now, wall)? {
                core.persist_agent(&hb.agent_id, Vec::new(), false);
                core.publish(e);
            }
            let report = crate::rotation::AgentTrust {
                digest: hb.trust_digest.clone(),
                cert_ca: hb.cert_ca.clone(),
            };
            let order = crate::rotation::order_for(&core.trust, &report);
            core.agent_trust.insert(hb.agent_id.clone(), report);
            // An agent the allocator does not count (it was unreachable, or this master
            // restarted) registers again, reporting what it runs.
            Ok(HeartbeatAck {
                reregister: !core.allocator.has_agent(&hb.agent_id),
                trust_bundle: order.bundle,
                renew_now: order.renew,
            })
        })
    }

    /// Checks a renewal; returns the identity its certificate is for. The driver signs it,
    /// then calls [`Self::renewed`].
    pub fn check_renewal(
        &mut self,
        agent_id: &str,
        caller: Option<SpiffeId>,
        now: Instant,
        wall: SystemTime,
    ) -> Result<(SpiffeId, Duration), MasterRefusal> {
        self.check_caller(agent_id, &caller)?;
        self.seen(agent_id, now, wall)?;
        let identity = SpiffeId::parse(&self.identity_of(agent_id))
            .map_err(|e| MasterRefusal::Unavailable(e.to_string()))?;
        Ok((identity, self.agent_cert_ttl))
    }

    /// Agent `agent_id` got a renewed certificate at `wall`; the reply waits for its record.
    pub fn renewed(&mut self, agent_id: &str, wall: SystemTime) -> Vec<Effect> {
        self.step(|core| {
            if let Some(rec) = core.membership.record_mut(agent_id) {
                rec.cert_expiry = wall.checked_add(core.agent_cert_ttl);
            }
            core.persist_agent(agent_id, Vec::new(), true);
            info!(agent = %agent_id, "certificate renewed");
        })
        .effects
    }

    /// Creates join token `token` (made by the driver from the system's randomness) for
    /// `ttl`; the reply waits for it to be stored.
    pub fn create_token(
        &mut self,
        token: JoinToken,
        role: TokenRole,
        ttl: Duration,
        wall: SystemTime,
    ) -> Step<Result<CreatedToken, OperatorError>> {
        self.step(|core| {
            if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
                return Err(OperatorError::Invalid(format!(
                    "a token's lifetime must be between 1 s and {} s (a year), not {} s",
                    MAX_TOKEN_TTL.as_secs(),
                    ttl.as_secs()
                )));
            }
            let record = TokenRecord::new(&token, role, wall, ttl);
            let value =
                codec::encode(&record).map_err(|e| OperatorError::Unavailable(e.to_string()))?;
            core.persist_acknowledged(vec![Change::put(Table::Tokens, token.id.clone(), value)]);
            let expires = record.expires;
            core.tokens.insert(token.id.clone(), record);
            Ok(CreatedToken {
                token: token.to_string(),
                id: token.id,
                expires,
            })
        })
    }

    /// The CA fingerprint join tokens pin.
    pub fn ca_fingerprint(&self) -> &str {
        self.trust.signer()
    }

    /// Marks agent `id` draining: no new work is placed on it.
    pub fn drain(&mut self, id: &str) -> Step<Result<AgentRecord, OperatorError>> {
        self.step(|core| {
            let Some(rec) = core.membership.record_mut(id) else {
                return Err(OperatorError::NotFound(format!("no node named {id:?}")));
            };
            rec.draining = true;
            let rec = rec.clone();
            core.persist_agent(id, Vec::new(), true);
            core.allocator.pause_agent(id, true);
            core.rescind_offers_on(id);
            Ok(rec)
        })
    }

    /// Removes agent `id` now (`delete node`), as `--gone-after` would: it is `Gone`, its
    /// identity and join token are revoked (its links close, it cannot come back without a
    /// new token), its offers are rescinded and its instances replaced elsewhere. Answered
    /// once that is on disk.
    pub fn delete_agent(
        &mut self,
        id: &str,
        now: Instant,
    ) -> Step<Result<AgentRecord, OperatorError>> {
        self.step(|core| {
            let Some(event) = core.membership.remove_now(id) else {
                return Err(match core.membership.get(id) {
                    Some(_) => OperatorError::Invalid(format!(
                        "node {id:?} is Gone already: its identity and join token are revoked"
                    )),
                    None => OperatorError::NotFound(format!(
                        "no node named {id:?} (expected a node id as `actormesh get nodes` lists)"
                    )),
                });
            };
            let extra = core.remove(id);
            core.persist_agent(id, extra, true);
            core.agent_left(id, AgentState::Gone, now);
            core.publish(event);
            core.schedule_round();
            Ok(core
                .membership
                .get(id)
                .cloned()
                .expect("the agent was just removed, not forgotten"))
        })
    }

    /// Failure detection at `now`, and the pruning that is due.
    pub(super) fn check(&mut self, now: Instant, wall: SystemTime) {
        if now >= self.next_prune {
            self.next_prune = now + PRUNE_EVERY;
            self.prune_expired(wall);
        }
        for event in self.membership.check(now) {
            let extra = if event.to == AgentState::Gone {
                self.remove(&event.agent)
            } else {
                Vec::new()
            };
            self.persist_agent(&event.agent, extra, false);
            if event.to != AgentState::Active {
                self.agent_left(&event.agent, event.to, now);
            }
            self.publish(event);
        }
    }

    /// Forgets join tokens past their expiry (they can join nothing) and revocations of
    /// certificates that have expired, so neither grows without bound.
    fn prune_expired(&mut self, wall: SystemTime) {
        let expired = tokens::prune_expired(&mut self.tokens, wall);
        if !expired.is_empty() {
            info!(tokens = expired.len(), "expired join tokens forgotten");
            self.persist(
                expired
                    .into_iter()
                    .map(|id| Change::delete(Table::Tokens, id))
                    .collect(),
            );
        }
        let ended = self.prune_client_revocations(wall);
        if !ended.is_empty() {
            info!(
                revocations = ended.len(),
                "ended client revocations forgotten"
            );
            self.persist(ended);
        }
        self.out.push(Effect::PruneRevocations { now: wall });
    }

    /// A Gone agent: its identity is revoked (handshakes refused, links closed) and the
    /// token it joined with stops working, so it cannot be replayed. Returns the token
    /// change, to be written in one batch with the agent's new state.
    fn remove(&mut self, id: &str) -> Vec<Change> {
        let Some(rec) = self.membership.get(id).cloned() else {
            return Vec::new();
        };
        if let Ok(identity) = SpiffeId::parse(&rec.identity) {
            self.out.push(Effect::Revoke {
                identity,
                until: rec.cert_expiry,
            });
        }
        warn!(
            agent = id,
            "agent removed (Gone); identity and join token revoked"
        );
        self.reservations.remove(id);
        let Some(t) = self.tokens.get_mut(&rec.token_id) else {
            return Vec::new();
        };
        t.revoked = true;
        match codec::encode(t) {
            Ok(value) => vec![Change::put(Table::Tokens, t.id.clone(), value)],
            Err(_) => Vec::new(),
        }
    }
}
