//! Services: the registry follows the cluster's state after every event ([`ClusterCore::settle`]),
//! proxies subscribe and acknowledge pushes, nodes register their own actors, and kills of
//! endpoints wait until the proxies applied their removal.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use actormesh::mesh::protocol::{DeregisterService, RegisterService, Subscribe, Subscribed};
use actormesh::mesh::{Revocation, Service, ServiceName};
use actormesh::protocol::MasterRefusal;
use actormesh_transport::SpiffeId;

use super::{ClusterCore, Effect, Step};
use crate::membership::AgentState;
use crate::services::{
    endpoints_of, HeldKill, HeldReply, NodeEndpoint, ProxyStatus, ProxyStatusReport, PushOutcome,
    ServiceSummary, VERSION_BLOCK, VERSION_CEILING_KEY,
};
use crate::state::{Change, Table};

/// The id the master's own node subscribes under (its Proxy is a seam for now).
const MASTER_NODE: &str = "master";

pub(super) fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ClusterCore {
    /// Brings the registry up to the state an event left and returns the event's
    /// `effects` with what follows from it: a kill of an instance that was an endpoint is
    /// held until every subscribed proxy applied a version without it (or the drain time
    /// passed); held kills that may go now, and the pushes that are due, are added. The
    /// driver passes every step's effects through here before it carries them out.
    pub fn settle(&mut self, effects: Vec<Effect>, now: Instant) -> Vec<Effect> {
        self.clock = self.clock.max(now);
        let was_endpoint: Vec<bool> = effects
            .iter()
            .map(|e| matches!(e, Effect::Kill { task_id, .. } if self.registry.has_endpoint(task_id)))
            .collect();
        let mut out = Vec::with_capacity(effects.len());
        // Only after events that may have changed what the registry is derived from (not
        // after a heartbeat that changed nothing): O(tasks + registrations) each time.
        let changed = if std::mem::take(&mut self.registry_dirty) {
            self.recomputed += 1;
            self.recompute_registry(now, &mut out)
        } else {
            None
        };
        if changed.is_some() {
            if let Some(after) = self.pushes.changed(now) {
                out.push(Effect::FlushPushes { after });
            }
        }
        for (e, was) in effects.into_iter().zip(was_endpoint) {
            match e {
                Effect::Kill { agent, at, task_id }
                    if was && !self.registry.has_endpoint(&task_id) =>
                {
                    self.drains.hold(HeldKill {
                        task_id,
                        agent,
                        at,
                        version: self.registry.version(),
                        deadline: now + self.drain_time,
                    });
                }
                e => out.push(e),
            }
        }
        for token in std::mem::take(&mut self.deregistered) {
            self.drains.hold_reply(HeldReply {
                token,
                version: self.registry.version(),
                deadline: now + self.drain_time,
            });
        }
        let pushes = &self.pushes;
        for token in self.drains.release_replies(|v| pushes.all_applied(v), now) {
            out.push(Effect::Drained { token });
        }
        for k in self.drains.release(|v| pushes.all_applied(v), now) {
            out.push(Effect::Kill {
                agent: k.agent,
                at: k.at,
                task_id: k.task_id,
            });
        }
        for p in self.pushes.due(&self.registry, now) {
            out.push(Effect::Push {
                node: p.node,
                at: p.addr,
                push: Box::new(p.push),
            });
        }
        out
    }

    /// The services and revocations the cluster's state says there are now.
    /// Gone nodes leave (their registrations, subscriptions, held kills on them), the
    /// services are computed anew and the registry updated; the version ceiling is
    /// written ahead, into `out`, when the version nears it. Returns what `update` does.
    fn recompute_registry(&mut self, now: Instant, out: &mut Vec<Effect>) -> Option<u64> {
        let gone: Vec<String> = self
            .membership
            .all()
            .filter(|a| a.state == AgentState::Gone)
            .map(|a| a.id.clone())
            .collect();
        for id in &gone {
            self.node_services.retain(|(agent, _, _), _| agent != id);
            self.pushes.unsubscribe(&self.identity_of(id));
            self.drains.forget_agent(id);
        }
        let (desired, revoked) = self.registry_now();
        if self.registry.version() + VERSION_BLOCK / 2 > self.version_ceiling {
            // Reserved before any version of the new block goes out, in the same ordered log.
            self.version_ceiling = self.registry.version() + VERSION_BLOCK;
            out.push(Effect::Persist(super::Batch {
                changes: Ok(vec![Change::put(
                    Table::Meta,
                    VERSION_CEILING_KEY,
                    self.version_ceiling.to_string().into_bytes(),
                )]),
                acknowledges: false,
            }));
        }
        self.registry.update(desired, revoked, now)
    }

    /// How many times `settle` recomputed the services (they are recomputed only after
    /// events that may change them).
    pub fn registry_recomputations(&self) -> u64 {
        self.recomputed
    }

    pub(super) fn registry_now(
        &self,
    ) -> (
        std::collections::BTreeMap<ServiceName, Service>,
        Vec<Revocation>,
    ) {
        let mut desired = endpoints_of(
            &self.deployments,
            |id| self.membership.get(id),
            &self.node_services,
            &self.trust_domain,
        );
        for (name, traffic) in self.traffic.by_service() {
            if let Some(s) = desired.get_mut(&name) {
                s.traffic = traffic;
            }
        }
        if self.traffic.has_authz() {
            for (name, s) in desired.iter_mut() {
                s.traffic.authz = self.traffic.authz_for(name);
            }
        }
        let revoked = self
            .membership
            .all()
            .filter(|a| a.state == AgentState::Gone)
            .map(|a| Revocation {
                id: a.identity.clone(),
                until_ms: a
                    .cert_expiry
                    .map(|t| ms_since_epoch(t + actormesh_transport::tls::REVOCATION_SKEW))
                    .unwrap_or(u64::MAX),
            })
            .chain(
                self.revoked_clients
                    .iter()
                    .map(|(id, &until_ms)| Revocation {
                        id: id.clone(),
                        until_ms,
                    }),
            )
            .filter(|r| r.until_ms > self.wall_ms)
            .collect();
        (desired, revoked)
    }

    /// The wall clock at the master's tick: revocations past their end are forgotten.
    pub(super) fn services_tick(&mut self, wall: SystemTime) {
        self.wall_ms = ms_since_epoch(wall);
        self.registry.forget_revocations(self.wall_ms);
    }

    /// Which nodes may register endpoints of which services (none given: every node, every
    /// service no deployment declares).
    pub fn set_service_grants(&mut self, grants: Vec<crate::access::ServiceGrant>) {
        self.service_grants = grants;
    }

    /// The node id of a caller of the mesh: `spiffe://<td>/node/<id>` of this trust domain.
    fn calling_node(&self, caller: &Option<SpiffeId>) -> Result<String, MasterRefusal> {
        let c = caller.as_ref().ok_or_else(|| {
            MasterRefusal::Forbidden("registry messages must come over the mesh".into())
        })?;
        let prefix = format!("spiffe://{}/node/", self.trust_domain);
        c.as_str()
            .strip_prefix(&prefix)
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map(str::to_string)
            .ok_or_else(|| {
                MasterRefusal::Forbidden(format!(
                    "{c} is not a node of trust domain {} (expected {prefix}<id>)",
                    self.trust_domain
                ))
            })
    }

    /// The calling node must be a registered agent that is not Gone.
    pub(super) fn registered_node(
        &self,
        caller: &Option<SpiffeId>,
    ) -> Result<String, MasterRefusal> {
        let id = self.calling_node(caller)?;
        match self.membership.get(&id) {
            None => Err(MasterRefusal::NotRegistered(format!(
                "node {id} has not joined this cluster"
            ))),
            Some(a) if a.state == AgentState::Gone => {
                Err(MasterRefusal::Removed(format!("node {id} was removed")))
            }
            Some(a) if a.addr.is_none() => Err(MasterRefusal::NotRegistered(format!(
                "node {id} joined but has not registered yet"
            ))),
            Some(_) => Ok(id),
        }
    }

    /// A node's Proxy subscribes (agents, and the master's own node). It gets a full
    /// snapshot, or a delta from `have` if the log covers it, as soon as pushes are not
    /// held.
    pub fn subscribe(
        &mut self,
        s: Subscribe,
        caller: Option<SpiffeId>,
        now: Instant,
    ) -> Step<Result<Subscribed, MasterRefusal>> {
        self.step(|core| {
            let c = caller.as_ref().ok_or_else(|| {
                MasterRefusal::Forbidden("registry messages must come over the mesh".into())
            })?;
            // A client's node (no membership) may subscribe, to call by name; it is
            // forgotten once it is gone for long.
            let client =
                actormesh::client::is_client_identity(c) && c.trust_domain() == core.trust_domain;
            let node = if client {
                c.to_string()
            } else {
                let id = core.calling_node(&caller)?;
                if id != MASTER_NODE {
                    core.registered_node(&caller)?;
                    // Pushes go to the node's own `$proxy`, at the address it registered.
                    let registered = core.membership.get(&id).and_then(|a| a.addr);
                    if registered != Some(s.addr) {
                        return Err(MasterRefusal::Forbidden(format!(
                            "node {id} subscribes for {} but registered {registered:?}: a node's proxy listens at its own address",
                            s.addr
                        )));
                    }
                }
                core.identity_of(&id)
            };
            core.pushes
                .subscribe(&node, s.addr, s.have, client, &core.registry, now);
            Ok(Subscribed {
                version: core.registry.version(),
            })
        })
    }

    /// A registered node serves one of its own actors as an endpoint of a service, for as
    /// long as it is a member. Until the mesh's authorization, any node may register any
    /// service name.
    pub fn register_service(
        &mut self,
        r: RegisterService,
        caller: Option<SpiffeId>,
    ) -> Step<Result<(), MasterRefusal>> {
        self.step(|core| {
            let id = core.registered_node(&caller)?;
            let invalid = |what: &str| {
                Err(MasterRefusal::Forbidden(format!(
                    "invalid registration of {} by node {id}: {what}",
                    r.service
                )))
            };
            if r.actor.is_empty() || r.actor.len() > 255 {
                return invalid("the actor name must be 1 to 255 bytes");
            }
            if r.version.trim().is_empty() {
                return invalid("the version label is empty (expected e.g. v1)");
            }
            if r.weight == 0 {
                return invalid("weight 0 (expected at least 1)");
            }
            if r.labels.contains_key("version") {
                return invalid("a `version` label (expected it in the version field)");
            }
            // A deployment's service is served by its instances only: a node cannot add
            // endpoints to it (and so cannot receive its calls).
            if let Some(d) = core
                .deployments
                .deployments()
                .find(|d| d.service.as_ref().is_some_and(|s| s.name == r.service))
            {
                return Err(MasterRefusal::Forbidden(format!(
                    "node {id} may not register endpoints of {}: deployment {} serves it, and only its instances do",
                    r.service,
                    crate::deployments::key(d)
                )));
            }
            let identity = crate::services::node_identity(&core.trust_domain, &id);
            let service = r.service.to_string();
            if !crate::access::may_serve(&core.service_grants, &identity, &service) {
                let grants: Vec<String> = core
                    .service_grants
                    .iter()
                    .map(|g| format!("{}={}", g.identity, g.service))
                    .collect();
                return Err(MasterRefusal::Forbidden(format!(
                    "node {id} may not register endpoints of {service}: the master grants {} (set with master --service-grant IDENTITY=SERVICE)",
                    grants.join(", ")
                )));
            }
            core.node_services.insert(
                (id, r.service, r.actor),
                NodeEndpoint {
                    version: r.version,
                    labels: r.labels,
                    weight: r.weight,
                },
            );
            Ok(())
        })
    }

    /// A node takes one of its actors out of a service (deregistering what is not
    /// registered is no error). The endpoint leaves discovery at once; the answer, under
    /// the driver's `token`, is [`Effect::Drained`] once every subscribed proxy applied the
    /// version without it, or the drain time passed, so the node stops the actor only then.
    pub fn deregister_service(
        &mut self,
        d: DeregisterService,
        caller: Option<SpiffeId>,
        token: u64,
    ) -> Step<Result<(), MasterRefusal>> {
        self.step(|core| {
            let id = core.calling_node(&caller)?;
            core.node_services.remove(&(id, d.service, d.actor));
            core.deregistered.push(token);
            Ok(())
        })
    }

    /// The push of `version` to `node` ended.
    pub fn push_answered(
        &mut self,
        node: &str,
        version: u64,
        outcome: PushOutcome,
        now: Instant,
    ) -> Vec<Effect> {
        self.pushes
            .answered(node, version, outcome, &self.registry, now);
        Vec::new()
    }

    /// The coalescing window asked for with [`Effect::FlushPushes`] has passed.
    pub fn flush_pushes(&mut self, now: Instant) -> Vec<Effect> {
        self.pushes.close_window(now);
        Vec::new()
    }

    /// Every service, for `get services`.
    pub fn service_summaries(&self) -> Vec<ServiceSummary> {
        self.registry.services().map(ServiceSummary::of).collect()
    }

    /// One service and its endpoints, for `get endpoints`.
    pub fn service(&self, name: &ServiceName) -> Option<&Service> {
        self.registry.service(name)
    }

    /// The latencies of applied pushes (shared with the metrics).
    pub fn push_latency(&self) -> std::sync::Arc<actormesh::stats::Histogram> {
        self.pushes.latency().clone()
    }

    /// The registry's version now.
    pub fn registry_version(&self) -> u64 {
        self.registry.version()
    }

    /// Every subscribed proxy's standing at `now`, for `get proxy-status`.
    pub fn proxy_status(&self, now: Instant) -> Vec<ProxyStatus> {
        self.pushes.status(&self.registry, now)
    }

    /// The registry's version, whether pushes are held, and every proxy's standing.
    pub fn proxy_status_report(&self, now: Instant) -> ProxyStatusReport {
        ProxyStatusReport {
            version: self.registry.version(),
            held: self.pushes.held(now),
            proxies: self.proxy_status(now),
        }
    }

    /// The SPIFFE id and mesh address of node `node` (an agent id, `master`, or a SPIFFE
    /// id), where its `$proxy` listens: where it subscribed from, else where it registered.
    pub fn proxy_of(&self, node: &str) -> Option<(String, SocketAddr)> {
        let id = node
            .strip_prefix(&format!("spiffe://{}/node/", self.trust_domain))
            .unwrap_or(node);
        let identity = self.identity_of(id);
        if let Some(addr) = self.pushes.addr_of(&identity) {
            return Some((identity, addr));
        }
        let rec = self.membership.get(id)?;
        Some((identity, rec.addr?))
    }

    /// How long held kills wait at most for the proxies.
    pub fn drain_time(&self) -> Duration {
        self.drain_time
    }
}
