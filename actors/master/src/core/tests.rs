//! The core driven directly: a few events each, time passed in, effects inspected. These
//! are the rules that were only tested across processes before.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use actormesh::framework::{
    AcceptOffer, Acknowledge, FrameworkError, FrameworkEvent, Offer, ReadTaskOutput,
    RegisterFramework, TaskLaunch,
};
use actormesh::protocol::{Heartbeat, Register, TaskStatusReport};
use actormesh_transport::SpiffeId;

use super::*;
use crate::frameworks::TaskState;
use crate::state::Versioned;

mod rotation;
mod services;

const TD: &str = "test.local";

fn detector() -> DetectorConfig {
    DetectorConfig {
        heartbeat_interval: Duration::from_millis(500),
        unreachable_after: Duration::from_secs(1),
        gone_after: Duration::from_secs(60),
        max_removals_per_minute: 10,
    }
}

fn wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn node(id: &str) -> Option<SpiffeId> {
    Some(SpiffeId::node(TD, id).unwrap())
}

pub(super) fn setup(agents: Vec<AgentRecord>, config_rows: Vec<(String, Versioned)>) -> Setup {
    Setup {
        detector: detector(),
        agents,
        tokens: BTreeMap::new(),
        config_rows,
        offer_timeout: Duration::from_secs(10),
        roles: BTreeMap::new(),
        epoch: 7,
        first_update_uuid: 1000,
        trust_domain: TD.into(),
        trust: crate::rotation::TrustView::single("fp", "PEM", "digest"),
        agent_cert_ttl: Duration::from_secs(3600),
        push: crate::services::PushConfig::default(),
        drain_time: crate::services::DEFAULT_DRAIN,
        registry_ceiling: 0,
        mesh: Default::default(),
        framework_grants: Vec::new(),
    }
}

pub(super) fn core_over(
    agents: Vec<AgentRecord>,
    config_rows: Vec<(String, Versioned)>,
    t0: Instant,
) -> ClusterCore {
    ClusterCore::new(setup(agents, config_rows), t0).unwrap()
}

/// Agent `id` joins at `t0` with an hour-long certificate.
fn admit(core: &mut ClusterCore, id: &str, t0: Instant) {
    let _ = core.admit(
        JoinAdmission {
            agent_id: id.to_string(),
            identity: node(id).unwrap(),
            cert_ttl: Duration::from_secs(3600),
            cert_expiry: wall() + Duration::from_secs(3600),
            token_id: "t".into(),
        },
        t0,
        wall(),
    );
}

/// A fresh master with agents that joined and registered at `t0`, each with 4 cpus.
fn cluster(agents: &[&str], t0: Instant) -> ClusterCore {
    let mut core = core_over(Vec::new(), Vec::new(), t0);
    for (i, id) in agents.iter().enumerate() {
        admit(&mut core, id, t0);
        let step = register(&mut core, id, i as u16 + 1, &[], t0);
        step.reply.unwrap();
    }
    core
}

fn register(
    core: &mut ClusterCore,
    id: &str,
    port: u16,
    running: &[&str],
    now: Instant,
) -> Step<Result<actormesh::protocol::Registered, actormesh::protocol::MasterRefusal>> {
    let held = running
        .iter()
        .map(|t| (t.to_string(), "cpus:1".parse().unwrap()))
        .collect();
    let r = Register {
        agent_id: id.into(),
        addr: addr(port),
        resources: "cpus:4".parse().unwrap(),
        attrs: BTreeMap::new(),
        actor_types: vec!["echo".into()],
        running: running.iter().map(|t| t.to_string()).collect(),
        healthy: vec![],
        held,
        versions: BTreeMap::new(),
        reserved: BTreeMap::new(),
        cert_expiry: wall() + Duration::from_secs(3600),
    };
    core.register(r, node(id), now, wall())
}

fn heartbeat(core: &mut ClusterCore, id: &str, now: Instant) -> bool {
    let hb = Heartbeat {
        agent_id: id.into(),
        trust_digest: "digest".into(),
        cert_ca: "fp".into(),
    };
    core.heartbeat(&hb, node(id), now, wall())
        .reply
        .unwrap()
        .reregister
}

fn report(
    core: &mut ClusterCore,
    agent: &str,
    task: &str,
    state: TaskState,
    now: Instant,
) -> Step<Result<actormesh::protocol::ReportAck, actormesh::protocol::MasterRefusal>> {
    let status = TaskStatus {
        task_id: task.into(),
        agent_id: agent.into(),
        state,
        message: String::new(),
        uuid: 0,
        healthy: None,
    };
    core.task_status(
        TaskStatusReport {
            agent_id: agent.into(),
            status,
        },
        node(agent),
        now,
    )
}

fn web(replicas: u32) -> String {
    format!(
        r#"{{"kind":"Deployment","name":"web","spec":{{"actor":"echo","version":"v1","replicas":{replicas},"resources":{{"need":"cpus:1"}}}}}}"#
    )
}

fn launches(effects: &[Effect]) -> Vec<(String, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Launch { agent, task_id, .. } => Some((agent.clone(), task_id.clone())),
            _ => None,
        })
        .collect()
}

fn kills(effects: &[Effect]) -> Vec<(String, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Kill { agent, task_id, .. } => Some((agent.clone(), task_id.clone())),
            _ => None,
        })
        .collect()
}

fn framework_events(effects: &[Effect]) -> Vec<&FrameworkEvent> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ToFramework { event, .. } => Some(event),
            _ => None,
        })
        .collect()
}

fn task_state(core: &ClusterCore, task: &str) -> TaskState {
    core.deployments().task(task).unwrap().state
}

/// One instance of `web` launched on one of agents a and b; returns (core, its agent,
/// the other agent, the task).
fn launched_web(t0: Instant) -> (ClusterCore, String, String, String) {
    let mut core = cluster(&["a", "b"], t0);
    core.apply_deployment(web(1)).reply.unwrap();
    let launched = launches(&core.scheduled_round(t0));
    assert_eq!(launched.len(), 1, "one replica, one launch");
    let (on, task) = launched[0].clone();
    let other = if on == "a" { "b" } else { "a" }.to_string();
    (core, on, other, task)
}

/// `on` falls silent while `other` heartbeats; ticks until `on` is Unreachable. Returns the
/// effects of the ticks.
fn lose(core: &mut ClusterCore, other: &str, t0: Instant) -> Vec<Effect> {
    let mut effects = Vec::new();
    for ms in [500, 1000, 1500] {
        let now = t0 + Duration::from_millis(ms);
        heartbeat(core, other, now);
        effects.extend(core.tick(now, wall()));
    }
    effects
}

#[test]
fn an_agent_lost_mid_launch_has_its_instance_replaced_once() {
    let t0 = Instant::now();
    let (mut core, on, other, task) = launched_web(t0);
    // The launch is on its way (Staging) when its agent falls silent.
    let effects = lose(&mut core, &other, t0);
    assert_eq!(task_state(&core, &task), TaskState::Lost);
    let replaced = launches(&effects);
    assert_eq!(replaced.len(), 1, "{effects:?}");
    assert_eq!(
        replaced[0].0, other,
        "the replacement goes to the agent still there"
    );
    // The launch to the lost agent times out afterwards: that is no failure of the
    // deployment, and it starts nothing more.
    let later = t0 + Duration::from_millis(1600);
    let _ = core.launch_failed(&task, "timed out", later);
    assert_eq!(task_state(&core, &task), TaskState::Lost);
    assert_eq!(
        core.deployments().describe("default/web").unwrap().failures,
        0
    );
    assert!(launches(&core.scheduled_round(later)).is_empty());
    assert_ne!(on, other);
}

#[test]
fn an_agent_that_returns_with_a_replaced_instance_is_told_to_kill_it() {
    let t0 = Instant::now();
    let (mut core, on, other, task) = launched_web(t0);
    let _ = lose(&mut core, &other, t0);
    let back = t0 + Duration::from_millis(1700);
    // Its heartbeat finds it not counted: it registers again with what it runs.
    assert!(heartbeat(&mut core, &on, back), "told to register again");
    let step = register(&mut core, &on, 9, &[&task], back);
    step.reply.unwrap();
    assert_eq!(kills(&step.effects), vec![(on.clone(), task.clone())]);
    let t = core.deployments().task(&task).unwrap();
    assert_eq!(t.state, TaskState::Killed);
    assert!(
        t.stopping,
        "it holds its resources until its end is reported"
    );
    assert_eq!(t.agent, on);
}

#[test]
fn an_undelivered_kill_is_sent_again_every_second_while_the_instance_stops() {
    let t0 = Instant::now();
    let mut core = cluster(&["a"], t0);
    core.apply_deployment(web(1)).reply.unwrap();
    let (agent, task) = launches(&core.scheduled_round(t0))[0].clone();
    report(&mut core, &agent, &task, TaskState::Running, t0)
        .reply
        .unwrap();
    let step = core.delete_deployment("default/web");
    step.reply.unwrap();
    assert_eq!(kills(&step.effects), vec![(agent.clone(), task.clone())]);

    let retry = core.kill_not_delivered(&task, &agent, "timed out");
    assert!(
        matches!(&retry[..], [Effect::RetryKill { task_id, after, .. }] if *task_id == task && *after == Duration::from_secs(1)),
        "{retry:?}"
    );
    assert_eq!(
        kills(&core.retry_kill(&task, &agent)),
        vec![(agent.clone(), task.clone())]
    );

    // Once its end is reported, it is done with: no more kills.
    report(&mut core, &agent, &task, TaskState::Killed, t0)
        .reply
        .unwrap();
    assert!(core
        .kill_not_delivered(&task, &agent, "timed out")
        .is_empty());
    assert!(kills(&core.retry_kill(&task, &agent)).is_empty());
}

const FW_CALLER: &str = "spiffe://test.local/client/batch";

fn fw_caller() -> Option<SpiffeId> {
    Some(SpiffeId::parse(FW_CALLER).unwrap())
}

/// Registers framework `batch` (event actor at port 50) and stores its record.
fn framework(core: &mut ClusterCore, failover: Duration, now: Instant) -> String {
    let r = RegisterFramework {
        name: "batch".into(),
        role: "batch".into(),
        failover_timeout_ms: failover.as_millis() as u64,
        framework_id: None,
        actor_addr: addr(50),
        actor_name: "events".into(),
    };
    let step = core.register_framework(r, fw_caller(), &[addr(50)]);
    assert!(step
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Persist(b) if b.acknowledges)));
    let step = core.framework_stored(step.reply.unwrap(), Ok(()), now);
    step.reply.unwrap().framework_id
}

/// Framework `fw` takes the first offer it gets and runs task `t1` (cpus:1) there.
fn run_task(core: &mut ClusterCore, fw: &str, now: Instant) -> (String, String) {
    let t1 = TaskLaunch::actor("t1", "echo", "cpus:1".parse().unwrap());
    run(core, fw, t1, now)
}

/// Framework `fw` takes the first offer it gets and runs `launch` there.
fn run(core: &mut ClusterCore, fw: &str, launch: TaskLaunch, now: Instant) -> (String, String) {
    let effects = core.scheduled_round(now);
    let offers: Vec<&Offer> = framework_events(&effects)
        .into_iter()
        .filter_map(|e| match e {
            FrameworkEvent::ResourceOffers(o) => Some(o),
            _ => None,
        })
        .flatten()
        .collect();
    let offer = offers.first().expect("an offer");
    assert_eq!(
        offer.agent_addr,
        addr(1),
        "an offer says where its agent is"
    );
    let accept = AcceptOffer {
        framework_id: fw.into(),
        offer_id: offer.offer_id.clone(),
        launches: vec![launch],
    };
    let step = core.accept_offer(accept, fw_caller());
    step.reply.unwrap();
    let launched = launches(&step.effects);
    assert_eq!(launched.len(), 1);
    let (agent, task) = launched[0].clone();
    report(core, &agent, &task, TaskState::Running, now)
        .reply
        .unwrap();
    (agent, task)
}

#[test]
fn a_framework_acknowledging_an_end_releases_the_report_its_agent_keeps() {
    let t0 = Instant::now();
    let mut core = cluster(&["a"], t0);
    let fw = framework(&mut core, Duration::from_secs(60), t0);
    let (agent, task) = run_task(&mut core, &fw, t0);

    let step = report(&mut core, &agent, &task, TaskState::Finished, t0);
    assert!(
        step.reply.unwrap().keep,
        "the agent keeps the end until the framework acknowledges it"
    );
    let uuid = framework_events(&step.effects)
        .into_iter()
        .find_map(|e| match e {
            FrameworkEvent::StatusUpdate(s) if s.state == TaskState::Finished => Some(s.uuid),
            _ => None,
        })
        .expect("the end goes to the framework");

    // The framework acknowledges at once: the release may reach the agent before the
    // answer to its report does.
    let ack = Acknowledge {
        framework_id: fw.clone(),
        task_id: "t1".into(),
        uuid,
    };
    let step = core.acknowledge(ack.clone(), fw_caller());
    step.reply.unwrap();
    assert!(
        matches!(&step.effects[..], [Effect::ReleaseStatus { at, task_id }] if *at == addr(1) && *task_id == task),
        "{:?}",
        step.effects
    );
    let again = core.acknowledge(ack, fw_caller());
    assert!(again.effects.is_empty(), "released once");

    // A release that was lost: the agent reports the end again, and the framework hears
    // it once more (at least once).
    let step = report(&mut core, &agent, &task, TaskState::Finished, t0);
    assert!(step.reply.unwrap().keep);
    assert!(framework_events(&step.effects)
        .iter()
        .any(|e| matches!(e, FrameworkEvent::StatusUpdate(s) if s.state == TaskState::Finished)));
}

#[test]
fn a_framework_reads_the_output_of_its_own_command_tasks_only_at_their_agent() {
    let t0 = Instant::now();
    let mut core = cluster(&["a"], t0);
    let fw = framework(&mut core, Duration::from_secs(60), t0);
    let cmd = TaskLaunch::command("c1", "/bin/echo", &["hi"], "cpus:1".parse().unwrap());
    let (_, task) = run(&mut core, &fw, cmd, t0);
    let read = |task_id: &str| ReadTaskOutput {
        framework_id: fw.clone(),
        task_id: task_id.into(),
        stream: actormesh::framework::LogStream::Stdout,
        max_bytes: 100,
    };
    assert_eq!(
        core.task_output_source(&read("c1"), &fw_caller()),
        Ok((task.clone(), addr(1))),
        "the agent's id for the task, at the agent's address"
    );
    let other = Some(SpiffeId::parse("spiffe://test.local/client/other").unwrap());
    let e = core.task_output_source(&read("c1"), &other).unwrap_err();
    assert!(matches!(e, FrameworkError::Forbidden(_)), "{e:?}");
    let e = core
        .task_output_source(&read("nope"), &fw_caller())
        .unwrap_err();
    assert!(e.to_string().contains("has no task \"nope\""), "{e}");
    for max_bytes in [0, actormesh::protocol::MAX_TASK_LOG_BYTES + 1] {
        let e = core
            .task_output_source(
                &ReadTaskOutput {
                    max_bytes,
                    ..read("c1")
                },
                &fw_caller(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("out of range: expected 1 to"), "{e}");
    }

    let (_, actor_task) = run_task(&mut core, &fw, t0);
    let e = core
        .task_output_source(&read("t1"), &fw_caller())
        .unwrap_err();
    assert!(
        e.to_string().contains("is an actor task") && e.to_string().contains(&actor_task),
        "{e}"
    );
}

#[test]
fn a_framework_that_does_not_return_within_its_failover_timeout_has_its_tasks_killed() {
    let t0 = Instant::now();
    let mut core = cluster(&["a"], t0);
    let fw = framework(&mut core, Duration::from_secs(5), t0);
    let (agent, task) = run_task(&mut core, &fw, t0);

    let gone = t0 + Duration::from_secs(1);
    let effects = core.framework_terminated(addr(50), "events", "stopped", gone);
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Unwatch { framework } if *framework == fw)));
    // Its tasks run on while it may still fail over.
    assert!(kills(&core.scheduled_round(gone + Duration::from_secs(4))).is_empty());
    let effects = core.scheduled_round(gone + Duration::from_millis(5100));
    assert_eq!(kills(&effects), vec![(agent, task)]);
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Persist(Batch { changes: Ok(c), .. })
            if c.iter().any(|c| matches!(c, Change::Delete { key, .. } if *key == format!("framework/{fw}")))
    )));
}

fn stored_agent(id: &str, port: u16) -> AgentRecord {
    AgentRecord {
        id: id.into(),
        identity: node(id).unwrap().to_string(),
        addr: Some(addr(port)),
        resources: "cpus:4".parse().unwrap(),
        attrs: BTreeMap::new(),
        actor_types: vec!["echo".into()],
        state: AgentState::Active,
        draining: false,
        token_id: "t".into(),
        joined_at: wall(),
        last_heartbeat: None,
        cert_expiry: None,
        running: vec![],
    }
}

fn row(key: &str, value: &str) -> (String, Versioned) {
    (
        key.into(),
        Versioned {
            value: value.as_bytes().to_vec(),
            version: 1,
        },
    )
}

#[test]
fn a_restarted_master_adopts_what_it_knows_kills_the_rest_and_waits_for_known_agents() {
    let t0 = Instant::now();
    let framework = format!(
        r#"{{"id":"fw-old-1","name":"batch","role":"batch","failover_timeout_ms":60000,"registered_by":"{FW_CALLER}"}}"#
    );
    let mut core = core_over(
        vec![stored_agent("a", 1), stored_agent("b", 2)],
        vec![
            row("deployment/default/web", &web(2)),
            row("framework/fw-old-1", &framework),
        ],
        t0,
    );
    let soon = t0 + Duration::from_millis(100);
    let running = [
        "default.web-1f.1",
        "fw-old-1_t1",
        "fw-unknown-9_t2",
        "default.deleted-x1",
    ];
    let step = register(&mut core, "a", 1, &running, soon);
    step.reply.unwrap();
    let mut killed = kills(&step.effects);
    killed.sort();
    assert_eq!(
        killed,
        vec![
            ("a".to_string(), "default.deleted-x1".to_string()),
            ("a".to_string(), "fw-unknown-9_t2".to_string()),
        ]
    );
    assert_eq!(task_state(&core, "default.web-1f.1"), TaskState::Running);
    assert!(core
        .all_tasks()
        .iter()
        .any(|t| t.id == "fw-old-1_t1" && t.state == TaskState::Running));

    // Agent b was known too: nothing is launched before it had its grace (twice the
    // Unreachable limit) to report what it runs.
    let mut launched = Vec::new();
    for ms in [200, 1000, 1900] {
        let now = t0 + Duration::from_millis(ms);
        heartbeat(&mut core, "a", now);
        launched.extend(launches(&core.scheduled_round(now)));
    }
    assert!(launched.is_empty(), "{launched:?}");
    let after = t0 + Duration::from_millis(2100);
    heartbeat(&mut core, "a", after);
    let launched = launches(&core.scheduled_round(after));
    assert_eq!(
        launched.len(),
        1,
        "the second replica, once the grace is over"
    );
}

#[test]
fn a_deleted_node_is_gone_at_once_its_identity_revoked_and_its_instances_replaced() {
    let t0 = Instant::now();
    let (mut core, on, other, task) = launched_web(t0);
    let _ = report(&mut core, &on, &task, TaskState::Running, t0);
    let step = core.delete_agent(&on, t0);
    let rec = step.reply.expect("deleted");
    assert_eq!(rec.state, AgentState::Gone);
    assert!(
        step.effects.iter().any(
            |e| matches!(e, Effect::Revoke { identity, .. } if identity.to_string() == rec.identity)
        ),
        "its identity is revoked: {:?}",
        step.effects
    );
    assert!(
        step.effects
            .iter()
            .any(|e| matches!(e, Effect::Persist(b) if b.acknowledges)),
        "answered once on disk"
    );
    assert_eq!(
        core.deployments().task(&task).unwrap().state,
        TaskState::Lost,
        "what ran there is lost"
    );
    let mut replaced = launches(&step.effects);
    replaced.extend(launches(&core.scheduled_round(t0 + Duration::from_secs(1))));
    assert_eq!(replaced.len(), 1, "and replaced: {:?}", step.effects);
    assert_eq!(replaced[0].0, other, "on the node that is left");
    // Deleting it again, or a node that never was, says what is wrong.
    match core.delete_agent(&on, t0).reply {
        Err(OperatorError::Invalid(why)) => assert!(why.contains("Gone already"), "{why}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    match core.delete_agent("nobody", t0).reply {
        Err(OperatorError::NotFound(why)) => assert!(why.contains("actormesh get nodes"), "{why}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Not the detector: the removal does not use up its budget of removals a minute.
    assert_eq!(
        core.agents()
            .filter(|a| a.state == AgentState::Gone)
            .count(),
        1
    );
}
