//! The registry inside the core: endpoints follow task and agent states, pushes follow
//! the registry, kills of endpoints wait for the proxies, and versions survive a restart.

use actormesh::mesh::protocol::{DeregisterService, PushKind, RegisterService, Subscribe};
use actormesh::mesh::ServiceName;

use super::*;
use crate::services::{PushOutcome, VERSION_BLOCK, VERSION_CEILING_KEY};

fn svc_web(replicas: u32, extra: &str) -> String {
    format!(
        r#"{{"kind":"Deployment","name":"web","spec":{{"actor":"echo","version":"v1","replicas":{replicas},"resources":{{"need":"cpus:1"}},"service":{{"labels":{{"tier":"front"}},"weight":2}}{extra}}}}}"#
    )
}

fn web_name() -> ServiceName {
    "default/web".parse().unwrap()
}

fn endpoint_ids(core: &ClusterCore) -> Vec<String> {
    core.service(&web_name())
        .map(|s| s.endpoints.iter().map(|e| e.id.clone()).collect())
        .unwrap_or_default()
}

fn pushes(effects: &[Effect]) -> Vec<(String, actormesh::mesh::protocol::Push)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Push { node, push, .. } => Some((node.clone(), (**push).clone())),
            _ => None,
        })
        .collect()
}

fn flush(effects: &[Effect]) -> Option<Duration> {
    effects.iter().find_map(|e| match e {
        Effect::FlushPushes { after } => Some(*after),
        _ => None,
    })
}

/// Runs `effects` through `settle` at `now`.
fn settled(core: &mut ClusterCore, effects: Vec<Effect>, now: Instant) -> Vec<Effect> {
    core.settle(effects, now)
}

/// `n` instances of the service deployment `web`, Running on a and b (zone z-a and z-b).
fn serving(n: u32, extra: &str, t0: Instant) -> (ClusterCore, Vec<(String, String)>) {
    let mut core = core_over(Vec::new(), Vec::new(), t0);
    for (i, id) in ["a", "b"].iter().enumerate() {
        admit(&mut core, id, t0);
        let r = Register {
            agent_id: id.to_string(),
            addr: addr(i as u16 + 1),
            resources: "cpus:4".parse().unwrap(),
            attrs: BTreeMap::from([("zone".to_string(), format!("z-{id}"))]),
            actor_types: vec!["echo".into()],
            running: vec![],
            healthy: vec![],
            held: BTreeMap::new(),
            versions: BTreeMap::new(),
            reserved: BTreeMap::new(),
            cert_expiry: wall() + Duration::from_secs(3600),
        };
        core.register(r, node(id), t0, wall()).reply.unwrap();
    }
    let _ = settled(&mut core, Vec::new(), t0);
    core.apply_deployment(svc_web(n, extra)).reply.unwrap();
    let round = core.scheduled_round(t0);
    let launched = launches(&round);
    let _ = settled(&mut core, round, t0);
    assert_eq!(launched.len(), n as usize);
    (core, launched)
}

fn run(core: &mut ClusterCore, launched: &[(String, String)], now: Instant) -> Vec<Effect> {
    let mut effects = Vec::new();
    for (agent, task) in launched {
        effects.extend(report(core, agent, task, TaskState::Running, now).effects);
    }
    settled(core, effects, now)
}

#[test]
fn instances_become_endpoints_once_running_with_their_node_address_actor_and_zone() {
    let t0 = Instant::now();
    let (mut core, launched) = serving(2, "", t0);
    let _ = settled(&mut core, Vec::new(), t0);
    let s = core
        .service(&web_name())
        .expect("declared, so listed before it has endpoints");
    assert!(s.endpoints.is_empty(), "Staging instances are no endpoints");
    let _ = run(&mut core, &launched, t0);
    let s = core.service(&web_name()).unwrap();
    assert_eq!(s.endpoints.len(), 2);
    let (agent, task) = &launched[0];
    let e = s.endpoints.iter().find(|e| &e.id == task).unwrap();
    assert_eq!(e.node, format!("spiffe://{TD}/node/{agent}"));
    assert_eq!(e.addr, core.agent_addr(agent).unwrap());
    assert_eq!(
        e.actor, *task,
        "LaunchActor names the instance after its task"
    );
    assert_eq!(e.zone.as_deref(), Some(&*format!("z-{agent}")));
    assert_eq!((e.version.as_str(), e.weight), ("v1", 2));
    assert_eq!(e.labels["version"], "v1");
    assert_eq!(e.labels["tier"], "front");
    let summary = &core.service_summaries()[0];
    assert_eq!(
        (summary.endpoints, summary.versions.clone()),
        (2, vec!["v1".to_string()])
    );
}

#[test]
fn with_a_health_check_only_healthy_instances_are_endpoints() {
    let t0 = Instant::now();
    let hc = r#","health_check":{"interval":"1s","timeout":"1s","failures":3}"#;
    let (mut core, launched) = serving(1, hc, t0);
    let _ = run(&mut core, &launched, t0);
    assert!(endpoint_ids(&core).is_empty(), "running, not yet healthy");
    let (agent, task) = &launched[0];
    let status = TaskStatus {
        task_id: task.clone(),
        agent_id: agent.clone(),
        state: TaskState::Running,
        message: "healthy".into(),
        uuid: 0,
        healthy: Some(true),
    };
    let step = core.task_status(
        TaskStatusReport {
            agent_id: agent.clone(),
            status,
        },
        node(agent),
        t0,
    );
    let _ = settled(&mut core, step.effects, t0);
    assert_eq!(endpoint_ids(&core), vec![task.clone()]);
}

#[test]
fn a_subscribed_proxy_gets_a_snapshot_then_coalesced_deltas_and_is_seen_converged() {
    let t0 = Instant::now();
    let (mut core, launched) = serving(2, "", t0);
    // After the window of the changes before.
    let t0 = t0 + Duration::from_millis(10);
    let step = core.subscribe(
        Subscribe {
            addr: addr(1),
            have: None,
        },
        node("a"),
        t0,
    );
    let v0 = step.reply.unwrap().version;
    let p = pushes(&settled(&mut core, step.effects, t0));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, format!("spiffe://{TD}/node/a"));
    assert_eq!((p[0].1.kind.clone(), p[0].1.version), (PushKind::Full, v0));
    let _ = core.push_answered(&p[0].0, v0, PushOutcome::Applied(v0), t0);
    // Both instances come up in one burst: one change opens the window, one push after it.
    let t1 = t0 + Duration::from_millis(1);
    let effects = run(&mut core, &launched, t1);
    assert_eq!(flush(&effects), Some(Duration::from_millis(10)));
    assert!(pushes(&effects).is_empty(), "held for the window");
    let t2 = t1 + Duration::from_millis(10);
    let effects = core.flush_pushes(t2);
    let p = pushes(&settled(&mut core, effects, t2));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1.kind, PushKind::Delta { from: v0 });
    assert_eq!(p[0].1.services[0].endpoints.len(), 2);
    let v1 = p[0].1.version;
    let t3 = t2 + Duration::from_millis(2);
    let _ = core.push_answered(&p[0].0, v1, PushOutcome::Applied(v1), t3);
    let st = &core.proxy_status(t3)[0];
    assert_eq!((st.applied, st.behind, st.stale), (Some(v1), 0, false));
    assert_eq!(
        st.last_push_latency_ms,
        Some(12.0),
        "from the change at t1 to the ack"
    );
}

#[test]
fn an_unreachable_node_takes_its_endpoints_out_in_the_same_version_and_gone_revokes_it() {
    let t0 = Instant::now();
    let mut core = cluster(&["a", "b"], t0);
    let reg = |actor: &str| RegisterService {
        service: "default/shop".parse().unwrap(),
        actor: actor.into(),
        version: "v1".into(),
        labels: BTreeMap::new(),
        weight: 1,
    };
    core.register_service(reg("cart"), node("a")).reply.unwrap();
    core.register_service(reg("cart"), node("b")).reply.unwrap();
    let _ = settled(&mut core, Vec::new(), t0);
    let shop: ServiceName = "default/shop".parse().unwrap();
    let ids = |core: &ClusterCore| -> Vec<String> {
        core.service(&shop)
            .map(|s| s.endpoints.iter().map(|e| e.id.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(ids(&core), ["a/cart", "b/cart"]);
    let before = core.registry_version();
    // b falls silent: the tick that marks it Unreachable is the version without it.
    let effects = lose(&mut core, "a", t0);
    let _ = settled(&mut core, effects, t0 + Duration::from_millis(1500));
    assert_eq!(ids(&core), ["a/cart"]);
    assert_eq!(core.registry_version(), before + 1);
    // It comes back: its endpoint too.
    let back = t0 + Duration::from_millis(1700);
    heartbeat(&mut core, "b", back);
    let _ = settled(&mut core, Vec::new(), back);
    assert_eq!(ids(&core), ["a/cart", "b/cart"]);
    // A node of another trust domain, or one that never joined, may not register.
    let foreign = Some(SpiffeId::node("other.td", "a").unwrap());
    assert!(core.register_service(reg("x"), foreign).reply.is_err());
    assert!(matches!(
        core.register_service(reg("x"), node("nobody")).reply,
        Err(actormesh::protocol::MasterRefusal::NotRegistered(_))
    ));
    let mut zero = reg("x");
    zero.weight = 0;
    assert!(core.register_service(zero, node("a")).reply.is_err());
    // With grants, only the nodes named may register the services named.
    core.set_service_grants(vec!["spiffe://test.local/node/a=default/*"
        .parse()
        .unwrap()]);
    let other = |actor: &str| RegisterService {
        service: "default/other".parse().unwrap(),
        ..reg(actor)
    };
    let refused = core
        .register_service(other("y"), node("b"))
        .reply
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("node b may not register endpoints of default/other"),
        "{refused}"
    );
    core.register_service(other("y"), node("a")).reply.unwrap();
    core.set_service_grants(Vec::new());
    // Deregistering takes it out; without proxies, the answer is due at once.
    let step = core.deregister_service(
        DeregisterService {
            service: shop.clone(),
            actor: "cart".into(),
        },
        node("a"),
        7,
    );
    step.reply.unwrap();
    let effects = settled(&mut core, step.effects, back);
    assert_eq!(ids(&core), ["b/cart"]);
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Drained { token: 7 })));
}

#[test]
fn a_gone_node_is_deregistered_and_revoked_in_one_push() {
    let t0 = Instant::now();
    let mut core = cluster(&["a", "b"], t0);
    core.register_service(
        RegisterService {
            service: "default/shop".parse().unwrap(),
            actor: "cart".into(),
            version: "v1".into(),
            labels: BTreeMap::new(),
            weight: 1,
        },
        node("b"),
    )
    .reply
    .unwrap();
    let _ = settled(&mut core, Vec::new(), t0);
    // After the window of the changes before.
    let t0 = t0 + Duration::from_millis(10);
    let step = core.subscribe(
        Subscribe {
            addr: addr(1),
            have: None,
        },
        node("a"),
        t0,
    );
    let p = pushes(&settled(&mut core, step.effects, t0));
    let v = p[0].1.version;
    let _ = core.push_answered(&p[0].0, v, PushOutcome::Applied(v), t0);
    // b is silent past gone_after (a heartbeats); the proxy applies every push.
    let mut now = t0;
    let mut effects = Vec::new();
    let mut unreachable_push = None;
    while now < t0 + Duration::from_secs(61) {
        now += Duration::from_millis(500);
        heartbeat(&mut core, "a", now);
        let ticked = core_tick(&mut core, now);
        effects = settled(&mut core, ticked, now);
        if core
            .agents()
            .any(|r| r.id == "b" && r.state == AgentState::Gone)
        {
            break;
        }
        for (node, push) in pushes(&effects) {
            unreachable_push.get_or_insert(push.clone());
            let _ =
                core.push_answered(&node, push.version, PushOutcome::Applied(push.version), now);
        }
    }
    // Unreachable: its endpoint left, nothing revoked yet.
    let first = unreachable_push.expect("a push when b became Unreachable");
    assert!(
        first.services.iter().all(|s| s.endpoints.is_empty()),
        "{first:?}"
    );
    assert!(first.revoked.is_empty());
    // Gone: the revocation goes out in the push of the state change.
    assert!(effects.iter().any(|e| matches!(e, Effect::Revoke { .. })));
    let later = now + Duration::from_millis(10);
    let flushed = core.flush_pushes(later);
    let p = pushes(&settled(&mut core, flushed, later));
    assert_eq!(p.len(), 1);
    let push = &p[0].1;
    assert_eq!(push.revoked.len(), 1, "{push:?}");
    assert_eq!(push.revoked[0].id, format!("spiffe://{TD}/node/b"));
    // Its registration went with its membership: it cannot come back.
    let again = core.register_service(
        RegisterService {
            service: "default/shop".parse().unwrap(),
            actor: "cart".into(),
            version: "v1".into(),
            labels: BTreeMap::new(),
            weight: 1,
        },
        node("b"),
    );
    assert!(matches!(
        again.reply,
        Err(actormesh::protocol::MasterRefusal::Removed(_))
    ));
    assert!(core.service_summaries().iter().all(|s| s.endpoints == 0));
}

fn core_tick(core: &mut ClusterCore, now: Instant) -> Vec<Effect> {
    core.tick(now, wall())
}

#[test]
fn the_kill_of_an_endpoint_waits_until_every_proxy_applied_its_removal() {
    let t0 = Instant::now();
    let (mut core, launched) = serving(2, "", t0);
    let _ = run(&mut core, &launched, t0);
    // After the window of the changes before.
    let t0 = t0 + Duration::from_millis(10);
    let step = core.subscribe(
        Subscribe {
            addr: addr(1),
            have: None,
        },
        node("a"),
        t0,
    );
    let p = pushes(&settled(&mut core, step.effects, t0));
    let v = p[0].1.version;
    let _ = core.push_answered(&p[0].0, v, PushOutcome::Applied(v), t0);
    // Scale down to 1: one instance leaves discovery, its kill is held.
    core.apply_deployment(svc_web(1, "")).reply.unwrap();
    let t1 = t0 + Duration::from_millis(5);
    let round = core.scheduled_round(t1);
    assert_eq!(kills(&round).len(), 1, "the controller kills one");
    let effects = settled(&mut core, round, t1);
    assert!(
        kills(&effects).is_empty(),
        "held until the proxies applied the removal"
    );
    assert_eq!(endpoint_ids(&core).len(), 1, "it left discovery first");
    let t2 = t1 + Duration::from_millis(10);
    let flushed = core.flush_pushes(t2);
    let p = pushes(&settled(&mut core, flushed, t2));
    let v2 = p[0].1.version;
    assert!(kills(&settled(&mut core, Vec::new(), t2)).is_empty());
    // The proxy applies the version without it: the kill goes.
    let effects = core.push_answered(&p[0].0, v2, PushOutcome::Applied(v2), t2);
    let k = kills(&settled(&mut core, effects, t2));
    assert_eq!(k.len(), 1);
    assert!(!endpoint_ids(&core).contains(&k[0].1));
}

#[test]
fn a_held_kill_goes_after_the_drain_time_if_a_proxy_never_answers() {
    let t0 = Instant::now();
    let (mut core, launched) = serving(1, "", t0);
    let _ = run(&mut core, &launched, t0);
    // After the window of the changes before.
    let t0 = t0 + Duration::from_millis(10);
    let step = core.subscribe(
        Subscribe {
            addr: addr(1),
            have: None,
        },
        node("a"),
        t0,
    );
    let _ = settled(&mut core, step.effects, t0);
    // The snapshot is never answered; the deployment is deleted.
    let step = core.delete_deployment("default/web");
    step.reply.unwrap();
    assert_eq!(kills(&step.effects).len(), 1);
    assert!(
        kills(&settled(&mut core, step.effects, t0)).is_empty(),
        "held"
    );
    let just_before = t0 + crate::services::DEFAULT_DRAIN - Duration::from_millis(1);
    assert!(kills(&settled(&mut core, Vec::new(), just_before)).is_empty());
    let at = t0 + crate::services::DEFAULT_DRAIN;
    assert_eq!(kills(&settled(&mut core, Vec::new(), at)).len(), 1);
}

#[test]
fn without_proxies_a_kill_is_not_held() {
    let t0 = Instant::now();
    let (mut core, launched) = serving(1, "", t0);
    let _ = run(&mut core, &launched, t0);
    let step = core.delete_deployment("default/web");
    assert_eq!(kills(&settled(&mut core, step.effects, t0)).len(), 1);
}

/// The registry's version ceiling written by `effects`, if one is.
fn ceiling_written(effects: &[Effect]) -> Option<u64> {
    effects.iter().find_map(|e| match e {
        Effect::Persist(b) => b.changes.as_ref().ok()?.iter().find_map(|c| match c {
            crate::state::Change::Put { key, value, .. } if key == VERSION_CEILING_KEY => {
                std::str::from_utf8(value).ok()?.parse().ok()
            }
            _ => None,
        }),
        _ => None,
    })
}

#[test]
fn a_restarted_master_continues_above_the_stored_ceiling_and_holds_pushes_for_the_grace() {
    let t0 = Instant::now();
    let mut core = cluster(&["a"], t0);
    let first = settled(&mut core, Vec::new(), t0);
    assert_eq!(
        ceiling_written(&first),
        Some(VERSION_BLOCK),
        "a block is reserved before any version is used"
    );
    let applied = core.apply_deployment(svc_web(1, "")).effects;
    let _ = settled(&mut core, applied, t0);
    let used = core.registry_version();
    assert!(used > 0 && used < VERSION_BLOCK, "version {used}");
    // A new master process over what the store holds.
    let agents: Vec<AgentRecord> = core.agents().cloned().collect();
    let mut stored = setup(agents, Vec::new());
    stored.registry_ceiling = crate::services::parse_ceiling(Some(b"1048576"));
    let t1 = t0 + Duration::from_secs(1);
    let mut after = ClusterCore::new(stored, t1).unwrap();
    assert_eq!(after.registry_version(), VERSION_BLOCK, "never goes back");
    let step = after.subscribe(
        Subscribe {
            addr: addr(1),
            have: Some(used),
        },
        node("a"),
        t1,
    );
    step.reply.unwrap();
    let effects = settled(&mut after, step.effects, t1);
    assert_eq!(ceiling_written(&effects), Some(2 * VERSION_BLOCK));
    assert!(pushes(&effects).is_empty(), "held while agents re-register");
    let grace = t1 + detector().unreachable_after * 2;
    let before_grace = grace - Duration::from_millis(1);
    assert!(pushes(&settled(&mut after, Vec::new(), before_grace)).is_empty());
    let p = pushes(&settled(&mut after, Vec::new(), grace));
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].1.kind,
        PushKind::Full,
        "an earlier master's version: full"
    );
    assert!(p[0].1.version >= VERSION_BLOCK);
}

#[test]
fn a_client_may_subscribe_but_not_register_and_a_node_must_have_joined() {
    let t0 = Instant::now();
    let mut core = cluster(&["a"], t0);
    let client = Some(SpiffeId::parse(&format!("spiffe://{TD}/client/cli")).unwrap());
    let sub = |have| Subscribe {
        addr: addr(40),
        have,
    };
    core.subscribe(sub(None), client.clone(), t0).reply.unwrap();
    assert_eq!(
        core.proxy_status(t0)[0].node,
        format!("spiffe://{TD}/client/cli")
    );
    let reg = RegisterService {
        service: "default/x".parse().unwrap(),
        actor: "x".into(),
        version: "v1".into(),
        labels: BTreeMap::new(),
        weight: 1,
    };
    assert!(matches!(
        core.register_service(reg, client).reply,
        Err(actormesh::protocol::MasterRefusal::Forbidden(_))
    ));
    let foreign = Some(SpiffeId::parse("spiffe://other.td/client/cli").unwrap());
    assert!(core.subscribe(sub(None), foreign, t0).reply.is_err());
    assert!(core
        .subscribe(sub(None), node("never-joined"), t0)
        .reply
        .is_err());
    assert!(core.subscribe(sub(None), None, t0).reply.is_err());
    core.subscribe(sub(Some(0)), node("master"), t0)
        .reply
        .unwrap();
    assert_eq!(
        core.proxy_status(t0).len(),
        2,
        "the master's own node, a seam"
    );
}

#[test]
fn a_deregistration_is_answered_once_every_proxy_applied_it_or_the_drain_time_passed() {
    let t0 = Instant::now();
    let mut core = cluster(&["a", "b"], t0);
    let shop: ServiceName = "default/shop".parse().unwrap();
    core.register_service(
        RegisterService {
            service: shop.clone(),
            actor: "cart".into(),
            version: "v1".into(),
            labels: BTreeMap::new(),
            weight: 1,
        },
        node("b"),
    )
    .reply
    .unwrap();
    let _ = settled(&mut core, Vec::new(), t0);
    let t0 = t0 + Duration::from_millis(10);
    let step = core.subscribe(
        Subscribe {
            addr: addr(1),
            have: None,
        },
        node("a"),
        t0,
    );
    let p = pushes(&settled(&mut core, step.effects, t0));
    let v = p[0].1.version;
    let _ = core.push_answered(&p[0].0, v, PushOutcome::Applied(v), t0);
    let drained = |effects: &[Effect]| {
        effects
            .iter()
            .filter(|e| matches!(e, Effect::Drained { .. }))
            .count()
    };
    let dereg = |core: &mut ClusterCore, token| {
        core.deregister_service(
            DeregisterService {
                service: shop.clone(),
                actor: "cart".into(),
            },
            node("b"),
            token,
        )
    };
    let step = dereg(&mut core, 1);
    step.reply.unwrap();
    assert_eq!(
        drained(&settled(&mut core, step.effects, t0)),
        0,
        "not yet applied"
    );
    let t1 = t0 + Duration::from_millis(10);
    let flushed = core.flush_pushes(t1);
    let p = pushes(&settled(&mut core, flushed, t1));
    assert_eq!(p[0].1.removed, vec![shop.clone()], "its only endpoint left");
    let v = p[0].1.version;
    let effects = core.push_answered(&p[0].0, v, PushOutcome::Applied(v), t1);
    assert_eq!(drained(&settled(&mut core, effects, t1)), 1);
    // A proxy that never answers: the drain time.
    core.register_service(
        RegisterService {
            service: shop.clone(),
            actor: "cart".into(),
            version: "v1".into(),
            labels: BTreeMap::new(),
            weight: 1,
        },
        node("b"),
    )
    .reply
    .unwrap();
    let _ = settled(&mut core, Vec::new(), t1);
    let t2 = t1 + Duration::from_millis(10);
    let flushed = core.flush_pushes(t2);
    assert_eq!(
        pushes(&settled(&mut core, flushed, t2)).len(),
        1,
        "never answered"
    );
    let step = dereg(&mut core, 2);
    assert_eq!(drained(&settled(&mut core, step.effects, t2)), 0);
    let end = t2 + crate::services::DEFAULT_DRAIN;
    assert_eq!(
        drained(&settled(
            &mut core,
            Vec::new(),
            end - Duration::from_millis(1)
        )),
        0
    );
    assert_eq!(drained(&settled(&mut core, Vec::new(), end)), 1);
}

#[test]
fn a_rolling_update_takes_the_old_instance_out_of_discovery_before_it_is_killed() {
    let t0 = Instant::now();
    let (mut core, launched) = serving(1, "", t0);
    let _ = run(&mut core, &launched, t0);
    let old = launched[0].1.clone();
    let t0 = t0 + Duration::from_millis(10);
    let step = core.subscribe(
        Subscribe {
            addr: addr(1),
            have: None,
        },
        node("a"),
        t0,
    );
    let p = pushes(&settled(&mut core, step.effects, t0));
    let v = p[0].1.version;
    let _ = core.push_answered(&p[0].0, v, PushOutcome::Applied(v), t0);
    // v2: a surge instance first; once it runs, the v1 one is killed.
    let v2 = svc_web(1, "").replace("\"v1\"", "\"v2\"");
    let step = core.apply_deployment(v2);
    step.reply.unwrap();
    let _ = settled(&mut core, step.effects, t0);
    let round = core.scheduled_round(t0);
    let new = launches(&round);
    let _ = settled(&mut core, round, t0);
    assert_eq!(new.len(), 1);
    let effects = run(&mut core, &new, t0);
    let round = core.scheduled_round(t0);
    let mut all = effects;
    all.extend(round);
    assert_eq!(kills(&all).len(), 1, "the controller kills v1: {all:?}");
    let effects = settled(&mut core, all, t0);
    assert!(kills(&effects).is_empty(), "held");
    let s = core.service(&web_name()).unwrap();
    assert_eq!(s.endpoints.len(), 1);
    assert_eq!(
        (s.endpoints[0].version.as_str(), s.endpoints[0].id != old),
        ("v2", true)
    );
    let t1 = t0 + Duration::from_millis(10);
    let flushed = core.flush_pushes(t1);
    let p = pushes(&settled(&mut core, flushed, t1));
    let v = p[0].1.version;
    let effects = core.push_answered(&p[0].0, v, PushOutcome::Applied(v), t1);
    let k = kills(&settled(&mut core, effects, t1));
    assert_eq!(k.len(), 1);
    assert_eq!(
        k[0].1, old,
        "the v1 instance goes once the proxy applied its removal"
    );
}

#[test]
fn heartbeats_that_change_nothing_do_not_recompute_the_services_and_other_events_do() {
    let t0 = Instant::now();
    let (mut core, launched) = serving(2, "", t0);
    let _ = run(&mut core, &launched, t0);
    assert_eq!(endpoint_ids(&core).len(), 2);
    let before = core.registry_recomputations();
    let mut now = t0;
    for _ in 0..5 {
        now += Duration::from_millis(100);
        heartbeat(&mut core, "a", now);
        heartbeat(&mut core, "b", now);
        let _ = settled(&mut core, Vec::new(), now);
    }
    assert_eq!(
        core.registry_recomputations(),
        before,
        "a heartbeat of an Active agent changes no service"
    );
    // A task's end changes its service: recomputed, and its endpoint is gone.
    let (agent, task) = &launched[0];
    let step = report(&mut core, agent, task, TaskState::Failed, now);
    let _ = settled(&mut core, step.effects, now);
    assert_eq!(core.registry_recomputations(), before + 1);
    assert_eq!(endpoint_ids(&core), vec![launched[1].1.clone()]);
}

/// The Config rows an event's effects write, applied to `rows`.
fn keep_config(rows: &mut Vec<(String, Versioned)>, effects: &[Effect]) {
    for e in effects {
        if let Effect::Persist(Batch {
            changes: Ok(changes),
            ..
        }) = e
        {
            for c in changes {
                match c {
                    Change::Put {
                        table: Table::Config,
                        key,
                        value,
                        ..
                    } => {
                        rows.retain(|(k, _)| k != key);
                        rows.push((
                            key.clone(),
                            Versioned {
                                value: value.clone(),
                                version: 1,
                            },
                        ));
                    }
                    Change::Delete {
                        table: Table::Config,
                        key,
                        ..
                    } => rows.retain(|(k, _)| k != key),
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn an_applied_route_is_a_new_version_of_its_service_and_survives_a_restart() {
    let t0 = Instant::now();
    let (mut core, _) = serving(1, "", t0);
    let mut rows = Vec::new();
    let applied = core.apply_deployment(svc_web(1, "")).effects;
    keep_config(&mut rows, &applied);
    let _ = settled(&mut core, applied, t0);
    let before = core.registry_version();
    let route = r#"{"kind":"Route","name":"web-canary","spec":{"service":"web","rules":[{"split":[{"subset":"v1","weight":90},{"subset":"v2","weight":10}],"timeout":"2s"}]}}"#;
    let step = core.apply_traffic(route.to_string());
    let answer = step.reply.unwrap();
    assert_eq!(answer.applied, "Route default/web-canary");
    // No policy defines the subsets yet: applied, with analyze's warning.
    assert!(
        answer.warnings.iter().any(|w| w.code == "AM1001"),
        "{:?}",
        answer.warnings
    );
    assert!(step
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Persist(b) if b.acknowledges)));
    keep_config(&mut rows, &step.effects);
    let _ = settled(&mut core, step.effects, t0);
    assert!(core.registry_version() > before, "a change of the service");
    let traffic = &core.service(&web_name()).unwrap().traffic;
    assert_eq!(traffic.route.as_ref().unwrap().object, "default/web-canary");
    assert_eq!(traffic.route.as_ref().unwrap().spec.rules[0].split.len(), 2);
    // A second Route for the same service is refused, naming the first.
    let other = route.replace("web-canary", "web-other");
    let refused = core.apply_traffic(other).reply.unwrap_err();
    assert!(
        refused.to_string().contains("default/web-canary"),
        "{refused}"
    );
    // A restarted master over the stored rows pushes the same.
    let agents: Vec<AgentRecord> = core.agents().cloned().collect();
    let again = ClusterCore::new(setup(agents, rows.clone()), t0).unwrap();
    assert_eq!(
        again.service(&web_name()).unwrap().traffic,
        core.service(&web_name()).unwrap().traffic
    );
    // Deleted: the service goes back to no rules, in a new version.
    let v = core.registry_version();
    let step = core.delete_traffic(TrafficKind::Route, "default", "web-canary");
    step.reply.unwrap();
    keep_config(&mut rows, &step.effects);
    let _ = settled(&mut core, step.effects, t0);
    assert!(core.registry_version() > v);
    assert!(core.service(&web_name()).unwrap().traffic.is_empty());
    assert!(rows.iter().all(|(k, _)| !k.starts_with("route/")));
    assert!(matches!(
        core.delete_traffic(TrafficKind::Route, "default", "web-canary")
            .reply,
        Err(OperatorError::NotFound(_))
    ));
}

#[test]
fn a_node_view_lists_the_instances_running_there_now_not_its_registration_report() {
    let t0 = Instant::now();
    let (mut core, launched) = serving(2, "", t0);
    let _ = run(&mut core, &launched, t0);
    let on = |core: &ClusterCore, id: &str| {
        core.agent_views()
            .into_iter()
            .find(|a| a.id == id)
            .unwrap()
            .running
    };
    let mut want_a: Vec<String> = launched
        .iter()
        .filter(|(agent, _)| agent == "a")
        .map(|(_, t)| t.clone())
        .collect();
    want_a.sort();
    assert_eq!(
        on(&core, "a"),
        want_a,
        "registered with nothing, runs its instances"
    );
    let total: usize = ["a", "b"].iter().map(|id| on(&core, id).len()).sum();
    assert_eq!(total, 2);
    // The stored record keeps what the agent reported (nothing).
    assert!(core.agents().all(|a| a.running.is_empty()));
    // Ended instances leave the view.
    for (agent, task) in &launched {
        let _ = report(&mut core, agent, task, TaskState::Failed, t0);
    }
    assert!(core.agent_views().iter().all(|a| a.running.is_empty()));
}

#[test]
fn a_task_view_names_where_an_actor_instance_serves_and_no_endpoint_for_a_command() {
    let t0 = Instant::now();
    let (mut core, launched) = serving(2, "", t0);
    core.apply_deployment(
        r#"{"kind":"Deployment","name":"job","spec":{"command":{"path":"/bin/true"},"version":"v1","replicas":1,"resources":{"need":"cpus:1"}}}"#
            .to_string(),
    )
    .reply
    .unwrap();
    let command = launches(&core.scheduled_round(t0));
    assert_eq!(command.len(), 1, "the command deployment is placed");
    let tasks = core.all_tasks();
    for (agent, task) in &launched {
        let t = tasks.iter().find(|t| &t.id == task).unwrap();
        let e = t
            .endpoint
            .as_ref()
            .expect("an actor instance has an endpoint");
        assert_eq!(
            e.actor, *task,
            "a deployment instance is named by its task id"
        );
        assert_eq!(
            e.addr,
            addr(if agent == "a" { 1 } else { 2 }),
            "its agent's address"
        );
        assert_eq!(e.node, node(agent).unwrap().to_string());
    }
    let job = tasks.iter().find(|t| t.id == command[0].1).unwrap();
    assert_eq!(job.endpoint, None, "a command task serves no actor");
}

#[test]
fn a_member_node_fetches_its_gateway_with_its_routes_and_others_are_refused() {
    let t0 = Instant::now();
    let mut core = cluster(&["gw1"], t0);
    let missing = core
        .fetch_gateway("shop", "public", node("gw1"))
        .unwrap_err();
    assert!(
        missing.to_string().contains("no Gateway shop/public"),
        "{missing}"
    );
    for manifest in [
        r#"{"kind":"Gateway","name":"public","namespace":"shop","spec":{"forward_headers":["end-user"]}}"#,
        r#"{"kind":"HttpRoute","name":"pages","namespace":"shop","spec":{"gateway":"public","rules":[{"match":{"path":"/p/{id}"},"service":"products","message":"p.Get/v1"}]}}"#,
    ] {
        let step = core.apply_traffic(manifest.into());
        step.reply.unwrap();
    }
    let got = core.fetch_gateway("shop", "public", node("gw1")).unwrap();
    assert_eq!(got.spec.forward_headers, ["end-user"]);
    assert_eq!(got.routes.len(), 1);
    assert_eq!(got.routes[0].0, "pages");
    assert_eq!(got.routes[0].1.rules[0].service, "products");
    assert!(
        core.fetch_gateway("shop", "public", node("never-joined"))
            .is_err(),
        "only a member node"
    );
    assert!(core.fetch_gateway("shop", "public", None).is_err());
}
