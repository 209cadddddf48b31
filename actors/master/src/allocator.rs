//! The allocator: who is offered which free resources, by weighted Dominant Resource
//! Fairness with quota guarantees, limits, reservations and decline filters.
//!
//! Plain state, driven by events (an agent joins or leaves, resources are used or given
//! back, an offer is declined) and asked for offers; time is passed in. Offers follow the
//! Mesos model: an agent's free resources go to one role at a time, and what is offered
//! counts as allocated until it is used or given back.
//!
//! Order of service: first roles still below their guaranteed quota, then the role with the
//! lowest weighted dominant share (its largest share of any resource kind in the cluster,
//! divided by its weight). A role is never offered more than its limit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use actormesh::resources::Resources;

/// A role's share settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleConfig {
    /// Relative weight: a role of weight 2 is entitled to twice the dominant share.
    pub weight: f64,
    /// Resources the role is guaranteed (served before fairness applies).
    pub guarantee: Resources,
    /// Resources the role may never exceed.
    pub limit: Option<Resources>,
}

impl Default for RoleConfig {
    fn default() -> Self {
        Self {
            weight: 1.0,
            guarantee: Resources::default(),
            limit: None,
        }
    }
}

/// Free resources of one agent offered to one role.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// The role offered to.
    pub role: String,
    /// The agent the resources are on.
    pub agent: String,
    /// What is offered.
    pub resources: Resources,
}

#[derive(Debug, Default)]
struct RoleState {
    config: RoleConfig,
    allocated: Resources,
    wants_offers: bool,
}

#[derive(Debug)]
struct AgentSlot {
    total: Resources,
    /// Unreserved resources not allocated.
    free: Resources,
    /// Reserved resources not allocated, by role.
    reserved_free: BTreeMap<String, Resources>,
    /// All reserved resources, by role.
    reserved: BTreeMap<String, Resources>,
    /// No new offers (draining, unreachable).
    paused: bool,
}

/// The allocator's state.
#[derive(Debug, Default)]
pub struct Allocator {
    roles: BTreeMap<String, RoleState>,
    agents: BTreeMap<String, AgentSlot>,
    /// (role, agent) pairs declined until an instant.
    filters: BTreeMap<(String, String), Instant>,
    /// What each role holds on each agent, so that an agent leaving takes exactly that
    /// out of the roles' totals.
    held: BTreeMap<(String, String), Resources>,
}

/// A request the allocator cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No such agent.
    #[error("no agent {0:?} in the allocator")]
    UnknownAgent(String),
    /// The agent does not have these resources free for this role.
    #[error("agent {agent} does not have {wanted} free for role {role}")]
    NotFree {
        /// The agent.
        agent: String,
        /// The role.
        role: String,
        /// What was asked for.
        wanted: String,
    },
}

impl Allocator {
    /// Sets (or changes) a role's share settings.
    pub fn set_role(&mut self, role: &str, config: RoleConfig) {
        self.roles.entry(role.to_string()).or_default().config = config;
    }

    /// Whether `role` currently wants offers (it has frameworks with work to place).
    pub fn set_demand(&mut self, role: &str, wants: bool) {
        self.roles.entry(role.to_string()).or_default().wants_offers = wants;
    }

    /// An agent joins with `total` resources, of which `reserved` are set aside per role.
    pub fn add_agent(&mut self, id: &str, total: Resources, reserved: BTreeMap<String, Resources>) {
        let reserved_sum = reserved
            .values()
            .fold(Resources::default(), |a, r| a.plus(r));
        self.agents.insert(
            id.to_string(),
            AgentSlot {
                free: total.minus(&reserved_sum),
                total,
                reserved_free: reserved.clone(),
                reserved,
                paused: false,
            },
        );
    }

    /// An agent leaves; what roles held on it is theirs no longer.
    pub fn remove_agent(&mut self, id: &str) {
        self.agents.remove(id);
        self.filters.retain(|(_, a), _| a != id);
        let keys: Vec<(String, String)> =
            self.held.keys().filter(|(_, a)| a == id).cloned().collect();
        for key in keys {
            if let Some(res) = self.held.remove(&key) {
                if let Some(state) = self.roles.get_mut(&key.0) {
                    state.allocated = state.allocated.minus(&res);
                }
            }
        }
    }

    /// Whether agent `id` is known.
    pub fn has_agent(&self, id: &str) -> bool {
        self.agents.contains_key(id)
    }

    /// Keeps `agent` from `role`'s offers until `until` (set from its frameworks' declines).
    pub fn filter(&mut self, role: &str, agent: &str, until: Instant) {
        self.filters
            .insert((role.to_string(), agent.to_string()), until);
    }

    /// Lets `agent` be offered to `role` again.
    pub fn unfilter(&mut self, role: &str, agent: &str) {
        self.filters.remove(&(role.to_string(), agent.to_string()));
    }

    /// Clears `role`'s decline filters (Mesos' revive): every agent may be offered again.
    pub fn revive(&mut self, role: &str) {
        self.filters.retain(|(r, _), _| r != role);
    }

    /// The role's settings, if set.
    pub fn role(&self, role: &str) -> Option<&RoleConfig> {
        self.roles.get(role).map(|r| &r.config)
    }

    /// Stops (or resumes) offering an agent's resources, e.g. while it drains.
    pub fn pause_agent(&mut self, id: &str, paused: bool) {
        if let Some(a) = self.agents.get_mut(id) {
            a.paused = paused;
        }
    }

    /// Records that `role` uses `res` on `agent` without an offer (a task that survived a
    /// master restart and was reconciled).
    pub fn allocate(&mut self, role: &str, agent: &str, res: &Resources) -> Result<(), AllocError> {
        let slot = self
            .agents
            .get_mut(agent)
            .ok_or_else(|| AllocError::UnknownAgent(agent.to_string()))?;
        let reserved = slot.reserved_free.get(role).cloned().unwrap_or_default();
        let from_reserved = reserved
            .take_between(&Resources::default(), res)
            .unwrap_or_default();
        let rest = res.minus(&from_reserved);
        if !slot.free.contains(&rest) {
            return Err(AllocError::NotFree {
                agent: agent.to_string(),
                role: role.to_string(),
                wanted: res.to_string(),
            });
        }
        if let Some(r) = slot.reserved_free.get_mut(role) {
            *r = r.minus(&from_reserved);
        }
        slot.free = slot.free.minus(&rest);
        let state = self.roles.entry(role.to_string()).or_default();
        state.allocated = state.allocated.plus(res);
        let held = self
            .held
            .entry((role.to_string(), agent.to_string()))
            .or_default();
        *held = held.plus(res);
        Ok(())
    }

    /// `role` gives back `res` on `agent` (a task ended, or part of an offer went unused).
    /// Nothing happens for an agent that left: its holdings went with it. Only what the
    /// role holds there comes back: giving back what was never counted (an instance that
    /// came back and did not fit) must not make resources out of nothing.
    pub fn recover(&mut self, role: &str, agent: &str, res: &Resources) {
        let Some(slot) = self.agents.get_mut(agent) else {
            return;
        };
        let key = (role.to_string(), agent.to_string());
        let Some(held) = self.held.get_mut(&key) else {
            return;
        };
        // The part of `res` that is held: res - (res - held).
        let res = &res.minus(&res.minus(held));
        *held = held.minus(res);
        if held.is_empty() {
            self.held.remove(&key);
        }
        if let Some(state) = self.roles.get_mut(role) {
            state.allocated = state.allocated.minus(res);
        }
        // Reserved resources return to the role's reservation, the rest to the pool.
        let mut back = res.clone();
        let reserved = slot.reserved.get(role).cloned().unwrap_or_default();
        if let Some(r) = slot.reserved_free.get_mut(role) {
            let room = reserved.minus(r);
            let to_reserved = back
                .take_between(&Resources::default(), &room)
                .unwrap_or_default();
            *r = r.plus(&to_reserved);
            back = back.minus(&to_reserved);
        }
        slot.free = slot.free.plus(&back);
    }

    /// `role` declines an offer on `agent` and does not want that agent's resources until
    /// `now + refuse_for`. The resources come back.
    pub fn decline(&mut self, offer: &Offer, refuse_for: Duration, now: Instant) {
        self.recover(&offer.role, &offer.agent, &offer.resources);
        self.filters
            .insert((offer.role.clone(), offer.agent.clone()), now + refuse_for);
    }

    /// Total resources of all agents.
    pub fn cluster_total(&self) -> Resources {
        self.agents
            .values()
            .fold(Resources::default(), |a, s| a.plus(&s.total))
    }

    /// What `role` holds now.
    pub fn allocated(&self, role: &str) -> Resources {
        self.roles
            .get(role)
            .map(|r| r.allocated.clone())
            .unwrap_or_default()
    }

    /// `role`'s dominant share divided by its weight.
    pub fn weighted_share(&self, role: &str) -> f64 {
        let total = self.cluster_total();
        let Some(state) = self.roles.get(role) else {
            return 0.0;
        };
        dominant_share(&state.allocated, &total) / state.config.weight.max(f64::MIN_POSITIVE)
    }

    fn below_guarantee(&self, role: &str) -> bool {
        self.roles.get(role).is_some_and(|r| {
            !r.config.guarantee.is_empty() && !r.allocated.contains(&r.config.guarantee)
        })
    }

    /// What of `free` `role` may still take under its limit.
    fn within_limit(&self, role: &str, free: &Resources) -> Resources {
        let Some(state) = self.roles.get(role) else {
            return free.clone();
        };
        let Some(limit) = &state.config.limit else {
            return free.clone();
        };
        let room = limit.minus(&state.allocated);
        // Only kinds the limit names are capped.
        let mut capped = free.clone();
        for k in limit.kinds() {
            if let Some(f) = free.scalars.get(k) {
                let r = room.scalars.get(k).copied().unwrap_or(0.0);
                if r <= 0.0 {
                    capped.scalars.remove(k);
                } else {
                    capped.scalars.insert(k.clone(), f.min(r));
                }
            }
        }
        capped
    }

    /// Hands out free resources as offers, one role per agent per call; offered resources
    /// count as allocated until recovered or declined.
    pub fn offers(&mut self, now: Instant) -> Vec<Offer> {
        self.filters.retain(|_, until| *until > now);
        let mut out = Vec::new();
        let agent_ids: Vec<String> = self.agents.keys().cloned().collect();
        for agent in agent_ids {
            // Reservations first: they belong to their role alone.
            let reserved: Vec<(String, Resources)> = self.agents[&agent]
                .reserved_free
                .iter()
                .filter(|(_, r)| !r.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (role, res) in reserved {
                if self.agents[&agent].paused || !self.wants(&role, &agent) {
                    continue;
                }
                let res = self.within_limit(&role, &res);
                if res.is_empty() {
                    continue;
                }
                let _ = self.allocate(&role, &agent, &res);
                out.push(Offer {
                    role,
                    agent: agent.clone(),
                    resources: res,
                });
            }
            let slot = &self.agents[&agent];
            if slot.paused || slot.free.is_empty() {
                continue;
            }
            let free = slot.free.clone();
            let Some(role) = self.next_role(&agent, &free) else {
                continue;
            };
            let res = self.within_limit(&role, &free);
            if self.allocate(&role, &agent, &res).is_ok() {
                out.push(Offer {
                    role,
                    agent: agent.clone(),
                    resources: res,
                });
            }
        }
        out
    }

    fn wants(&self, role: &str, agent: &str) -> bool {
        self.roles.get(role).is_some_and(|r| r.wants_offers)
            && !self
                .filters
                .contains_key(&(role.to_string(), agent.to_string()))
    }

    /// The role to offer `free` on `agent` to: guarantees first, then the lowest weighted
    /// dominant share; ties by name, so the order is deterministic.
    fn next_role(&self, agent: &str, free: &Resources) -> Option<String> {
        let candidates: BTreeSet<&String> = self
            .roles
            .keys()
            .filter(|r| self.wants(r, agent) && !self.within_limit(r, free).is_empty())
            .collect();
        let by_share = |rs: Vec<&String>| {
            rs.into_iter()
                .map(|r| (self.weighted_share(r), r))
                .min_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)))
                .map(|(_, r)| r.clone())
        };
        let guaranteed: Vec<&String> = candidates
            .iter()
            .copied()
            .filter(|r| self.below_guarantee(r))
            .collect();
        if !guaranteed.is_empty() {
            return by_share(guaranteed);
        }
        by_share(candidates.into_iter().collect())
    }
}

/// A task's resource request.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRequest {
    /// Must have.
    pub need: Resources,
    /// Would like, at most.
    pub want: Resources,
    /// Higher goes first.
    pub priority: i32,
}

/// The largest share of `total` that `held` has of any one kind: its dominant share.
pub fn dominant_share(held: &Resources, total: &Resources) -> f64 {
    held.kinds()
        .map(|k| {
            let t = total.amount(k);
            if t > 0.0 {
                held.amount(k) / t
            } else {
                0.0
            }
        })
        .fold(0.0, f64::max)
}

/// DRF among the frameworks of one role (the second level, as Mesos sorts frameworks
/// within a role): of `candidates`, the one whose holdings (`held`) have the smallest
/// dominant share of `total`; ties go by id.
pub fn least_dominant<'a>(
    candidates: &'a [String],
    held: &BTreeMap<String, Resources>,
    total: &Resources,
) -> Option<&'a String> {
    let empty = Resources::default();
    candidates
        .iter()
        .map(|f| (dominant_share(held.get(f).unwrap_or(&empty), total), f))
        .min_by(|x, y| x.0.total_cmp(&y.0).then_with(|| x.1.cmp(y.1)))
        .map(|(_, f)| f)
}

/// Places as many of `tasks` as fit in `offer`, higher priority first (ties in order):
/// each placed task gets at least its need and up to its want. Returns (task index,
/// resources given).
pub fn place(tasks: &[TaskRequest], offer: &Resources) -> Vec<(usize, Resources)> {
    let mut order: Vec<usize> = (0..tasks.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tasks[i].priority));
    // First every task's need, in priority order, so that wants never crowd out needs.
    let mut left = offer.clone();
    let mut placed: Vec<(usize, Resources)> = Vec::new();
    for i in order {
        if left.contains(&tasks[i].need) {
            left = left.minus(&tasks[i].need);
            placed.push((i, tasks[i].need.clone()));
        }
    }
    // Then the extra up to each want, in the same order.
    for (i, got) in placed.iter_mut() {
        let extra_want = tasks[*i].want.minus(got);
        if let Some(extra) = left.take_between(&Resources::default(), &extra_want) {
            left = left.minus(&extra);
            *got = got.plus(&extra);
        }
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Resources {
        s.parse().unwrap()
    }

    /// Frameworks that use every offer completely, as long as they have demand.
    fn run_until_full(a: &mut Allocator, now: Instant) -> BTreeMap<String, usize> {
        let mut agents_by_role = BTreeMap::new();
        for _ in 0..1000 {
            let offers = a.offers(now);
            if offers.is_empty() {
                break;
            }
            for o in offers {
                *agents_by_role.entry(o.role).or_insert(0) += 1;
            }
        }
        agents_by_role
    }

    #[test]
    fn weighted_drf_splits_a_cluster_by_weight() {
        let mut a = Allocator::default();
        for i in 0..99 {
            a.add_agent(&format!("a{i:02}"), r("cpus:1;mem:1024"), BTreeMap::new());
        }
        a.set_role("light", RoleConfig::default());
        a.set_role(
            "heavy",
            RoleConfig {
                weight: 2.0,
                ..Default::default()
            },
        );
        a.set_demand("light", true);
        a.set_demand("heavy", true);
        let got = run_until_full(&mut a, Instant::now());
        // Weighted shares equalise: heavy gets twice light's, within one agent.
        assert!((got["heavy"] as i64 - 66).abs() <= 1, "{got:?}");
        assert!((got["light"] as i64 - 33).abs() <= 1, "{got:?}");
        let (l, h) = (a.weighted_share("light"), a.weighted_share("heavy"));
        assert!((l - h).abs() < 0.02, "weighted shares {l} vs {h}");
    }

    #[test]
    fn within_a_role_the_framework_with_the_smallest_dominant_share_goes_first() {
        let total = r("cpus:8;mem:8GiB");
        let fws: Vec<String> = ["a", "b", "c"].iter().map(|f| f.to_string()).collect();
        // a: one big task (half the cpus); b: two small ones (an eighth of the cpus, but a
        // quarter of the memory); c: nothing yet.
        let mut held = BTreeMap::from([
            ("a".to_string(), r("cpus:4;mem:512MiB")),
            ("b".to_string(), r("cpus:1;mem:2GiB")),
        ]);
        assert_eq!(dominant_share(&held["a"], &total), 0.5);
        assert_eq!(dominant_share(&held["b"], &total), 0.25);
        assert_eq!(least_dominant(&fws, &held, &total).unwrap(), "c");
        // Fewer tasks does not mean less: a (one task) holds more than b (two).
        assert_eq!(least_dominant(&fws[..2], &held, &total).unwrap(), "b");
        // Equal shares go by id.
        held.insert("c".into(), r("cpus:1"));
        held.insert("b".into(), r("cpus:1"));
        assert_eq!(least_dominant(&fws, &held, &total).unwrap(), "b");
        assert!(least_dominant(&[], &held, &total).is_none());
    }

    #[test]
    fn only_what_a_role_holds_comes_back() {
        let mut a = Allocator::default();
        a.add_agent("n1", r("cpus:2;ports:[100-199]"), BTreeMap::new());
        a.allocate("web", "n1", &r("cpus:1;ports:[100-109]"))
            .unwrap();
        // More cpus than it holds, and ports it never had: only the held part comes back.
        a.recover("web", "n1", &r("cpus:2;ports:[105-120]"));
        assert_eq!(a.allocated("web"), r("ports:[100-104]"));
        a.recover("web", "n1", &r("cpus:1;ports:[100-104]"));
        assert!(a.allocated("web").is_empty());
        // Nothing held: nothing comes back (the agent's free stays within its total).
        a.recover("web", "n1", &r("cpus:1"));
        let offers = a.offers(Instant::now());
        assert!(offers.is_empty(), "no role wants offers yet");
        a.set_demand("web", true);
        let offers = a.offers(Instant::now());
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].resources, r("cpus:2;ports:[100-199]"));
    }

    #[test]
    fn guarantees_come_first_and_limits_hold() {
        let mut a = Allocator::default();
        for i in 0..10 {
            a.add_agent(&format!("a{i}"), r("cpus:2;mem:1024"), BTreeMap::new());
        }
        a.set_role(
            "batch",
            RoleConfig {
                limit: Some(r("cpus:4")),
                ..Default::default()
            },
        );
        a.set_role(
            "web",
            RoleConfig {
                weight: 0.1,
                guarantee: r("cpus:8"),
                ..Default::default()
            },
        );
        a.set_demand("batch", true);
        a.set_demand("web", true);
        run_until_full(&mut a, Instant::now());
        assert!(
            a.allocated("web").scalars["cpus"] >= 8.0,
            "{}",
            a.allocated("web")
        );
        assert!(
            a.allocated("batch").scalars["cpus"] <= 4.0,
            "{}",
            a.allocated("batch")
        );
    }

    #[test]
    fn reservations_go_to_their_role_and_declines_are_filtered() {
        let now = Instant::now();
        let mut a = Allocator::default();
        a.add_agent(
            "a1",
            r("cpus:4;mem:4096"),
            BTreeMap::from([("db".to_string(), r("cpus:2;mem:2048"))]),
        );
        a.set_demand("db", true);
        a.set_demand("web", true);
        let offers = a.offers(now);
        let db = offers.iter().find(|o| o.role == "db").unwrap();
        assert_eq!(db.resources.scalars["cpus"], 2.0);
        // The unreserved half went to web (lower share than db now).
        let web = offers.iter().find(|o| o.role == "web").unwrap().clone();
        assert_eq!(web.resources.scalars["cpus"], 2.0);
        // web declines for 5 s: nothing is offered to it on a1 until then.
        a.decline(&web, Duration::from_secs(5), now);
        a.set_demand("db", false);
        assert!(a.offers(now + Duration::from_secs(1)).is_empty());
        let later = a.offers(now + Duration::from_secs(6));
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].role, "web");
    }

    #[test]
    fn recovered_resources_are_offered_again() {
        let now = Instant::now();
        let mut a = Allocator::default();
        a.add_agent("a1", r("cpus:2"), BTreeMap::new());
        a.set_demand("x", true);
        let o = a.offers(now).remove(0);
        assert!(a.offers(now).is_empty());
        a.recover("x", "a1", &o.resources);
        assert_eq!(a.offers(now)[0].resources, r("cpus:2"));
    }

    #[test]
    fn need_want_and_priority() {
        let t = |need: &str, want: &str, priority| TaskRequest {
            need: r(need),
            want: r(want),
            priority,
        };
        let tasks = vec![
            t("cpus:1", "cpus:4", 0),
            t("cpus:2", "cpus:2", 10),
            t("cpus:2", "cpus:2", 0),
        ];
        let placed = place(&tasks, &r("cpus:4"));
        // Priority 10 first (its need), then task 0's need; task 2 does not fit.
        let got: BTreeMap<usize, f64> = placed
            .iter()
            .map(|(i, r)| (*i, r.scalars["cpus"]))
            .collect();
        assert_eq!(got.get(&1), Some(&2.0));
        assert_eq!(
            got.get(&0),
            Some(&2.0),
            "task 0 gets its need plus what is left of its want"
        );
        assert_eq!(got.get(&2), None);
    }
}
