//! Frameworks as actors (the Mesos model) against a real master and agents in one
//! process, over loopback QUIC: registration, offers shared by weighted DRF, accepting
//! with launches, status updates redelivered until acknowledged, kill, reconciliation,
//! decline filters and revive, offer timeouts, agent loss, and failover.

mod fwevents;
mod inproc;

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use actormesh::agent;
use actormesh::agent::tasks::ActorHost;
use actormesh::framework::{instance_name, FrameworkEvent, Offer, Scheduler, TaskLaunch};
use actormesh::prelude::{Deserialize, RemoteMessage, Serialize};
use actormesh::resources::Resources;
use actormesh::RemoteRef;
use actormesh_master::allocator::RoleConfig;
use actormesh_master::frameworks::TaskState;
use actormesh_master::scheduler::ListFrameworks;
use actormesh_master::{self as master, ListNodes};
use fwevents::{next, Events};
use tokio::sync::mpsc;

#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.fw.Square/v1", reply = u64)]
struct Square(u64);

struct Worker;

impl Actor for Worker {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Square> for Worker {
    type Result = u64;
    fn handle(&mut self, m: Square, _: &mut Context<Self>) -> u64 {
        m.0 * m.0
    }
}

async fn start_master(
    dir: &std::path::Path,
    roles: BTreeMap<String, RoleConfig>,
    offer_timeout: Duration,
) -> master::MasterHandle {
    let mut config = inproc::master_config(dir, true);
    config.offer_timeout = offer_timeout;
    config.roles = roles;
    master::start(config).await.unwrap()
}

async fn join(
    m: &master::MasterHandle,
    dir: &std::path::Path,
    name: &str,
    resources: &str,
) -> agent::AgentHandle {
    let mut config = inproc::agent_config(m, dir, name).await;
    config.resources = Some(resources.parse().unwrap());
    config.host = ActorHost::new().with("worker", || Worker);
    inproc::start_agent(config).await
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("am-fw-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A framework actor named `name` on `node`, registered with `role`.
async fn framework(
    m: &master::MasterHandle,
    node: &actormesh::Node,
    name: &str,
    role: &str,
    failover: Duration,
    id: Option<String>,
) -> (
    Scheduler,
    mpsc::UnboundedReceiver<FrameworkEvent>,
    RemoteRef,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let me = node.spawn(name, Events(tx)).unwrap();
    let (s, _) = Scheduler::register(node, m.node.local_addr(), &me, name, role, failover, id)
        .await
        .unwrap();
    (s, rx, me)
}

fn offers(e: &FrameworkEvent) -> Option<Vec<Offer>> {
    match e {
        FrameworkEvent::ResourceOffers(o) => Some(o.clone()),
        _ => None,
    }
}

fn cpus(r: &Resources) -> f64 {
    r.scalars.get("cpus").copied().unwrap_or(0.0)
}

#[actix::test]
async fn two_frameworks_share_the_cluster_by_weighted_drf() {
    let dir = temp("drf");
    let roles = BTreeMap::from([
        (
            "analytics".to_string(),
            RoleConfig {
                weight: 2.0,
                ..Default::default()
            },
        ),
        ("batch".to_string(), RoleConfig::default()),
    ]);
    let m = start_master(&dir, roles, Duration::from_secs(30)).await;
    let mut agents = Vec::new();
    for i in 0..12 {
        agents.push(join(&m, &dir, &format!("w{i}"), "cpus:2;mem:2GiB").await);
    }
    let (a, mut a_rx, _) = framework(
        &m,
        &agents[0].node,
        "fw-analytics",
        "analytics",
        Duration::from_secs(60),
        None,
    )
    .await;
    // Alone, analytics is offered everything; it gives the offers back once batch is
    // registered, so that the two compete from there on.
    let mut first = Vec::new();
    while first.len() < 12 {
        first.extend(next(&mut a_rx, "offers for analytics", offers).await);
    }
    let (b, mut b_rx, _) = framework(
        &m,
        &agents[1].node,
        "fw-batch",
        "batch",
        Duration::from_secs(60),
        None,
    )
    .await;
    for o in first {
        a.decline(&o.offer_id, Duration::ZERO).await.unwrap();
    }
    // Both want everything: each accepts every offer with as many 1-cpu tasks as fit.
    let mut held = [0.0f64; 2];
    let mut n = 0;
    while held[0] + held[1] < 24.0 {
        let (i, got) = tokio::select! {
            o = next(&mut a_rx, "offers for analytics", offers) => (0, o),
            o = next(&mut b_rx, "offers for batch", offers) => (1, o),
        };
        let s = if i == 0 { &a } else { &b };
        for o in got {
            let k = cpus(&o.resources).floor() as usize;
            let launches: Vec<TaskLaunch> = (0..k)
                .map(|_| {
                    n += 1;
                    TaskLaunch::actor(
                        &format!("t{n}"),
                        "worker",
                        "cpus:1;mem:512MiB".parse().unwrap(),
                    )
                })
                .collect();
            s.accept(&o.offer_id, launches).await.unwrap();
            held[i] += k as f64;
        }
    }
    // Weights 2:1 over 24 cpus: 16 and 8, within one agent's worth (2 cpus). (Equal
    // weights would give 12 and 12.)
    assert!(
        (held[0] - 16.0).abs() <= 2.0 && (held[1] - 8.0).abs() <= 2.0,
        "analytics {} cpus, batch {} cpus",
        held[0],
        held[1]
    );
    let list = m.master.send(ListFrameworks).await.unwrap();
    let share = |role: &str| {
        list.iter()
            .find(|f| f.role == role)
            .map(|f| f.weighted_share)
            .unwrap()
    };
    // Weighted dominant shares come out equal (within one agent: 2/24 of a share).
    assert!(
        (share("analytics") - share("batch")).abs() <= 2.0 / 24.0 + 1e-9,
        "{list:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix::test]
async fn a_framework_launches_kills_reconciles_and_acknowledges() {
    let dir = temp("api");
    let m = start_master(&dir, BTreeMap::new(), Duration::from_millis(800)).await;
    let w = join(&m, &dir, "w0", "cpus:2;mem:1GiB").await;
    let (s, mut rx, _) =
        framework(&m, &w.node, "fw-api", "web", Duration::from_secs(60), None).await;
    next(&mut rx, "Registered", |e| {
        matches!(e, FrameworkEvent::Registered(r) if r.framework_id == s.id() && !r.reregistered)
            .then_some(())
    })
    .await;

    // An offer left unanswered times out and is rescinded.
    let first = next(&mut rx, "an offer", offers).await;
    let rescinded = next(&mut rx, "OfferRescinded", |e| match e {
        FrameworkEvent::OfferRescinded { offer_id } => Some(offer_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(rescinded, first[0].offer_id);
    let gone = s.accept(&rescinded, vec![]).await.unwrap_err();
    assert!(
        gone.to_string().contains("unknown, expired or rescinded"),
        "{gone}"
    );

    // Asking for more than the offer holds is refused, naming both.
    let o = next(&mut rx, "an offer", offers).await.remove(0);
    let too_big = TaskLaunch::actor("big", "worker", "cpus:3".parse().unwrap());
    let e = s.accept(&o.offer_id, vec![too_big]).await.unwrap_err();
    assert!(e.to_string().contains("more than offer"), "{e}");
    // Negative amounts (which would inflate what is free) are refused too.
    let o = next(&mut rx, "an offer", offers).await.remove(0);
    let mut negative = TaskLaunch::actor("neg", "worker", Resources::default());
    negative.resources.scalars.insert("cpus".into(), -100.0);
    let e = s.accept(&o.offer_id, vec![negative]).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("cpus:-100 is not valid: expected a finite amount of 0 or more"),
        "{e}"
    );

    // Accept with one actor task; it reports Starting and Running.
    let o = next(&mut rx, "an offer", offers).await.remove(0);
    let launch = TaskLaunch::actor("sq", "worker", "cpus:1;mem:256MiB".parse().unwrap());
    s.accept(&o.offer_id, vec![launch]).await.unwrap();
    let running = next(&mut rx, "Running", |e| match e {
        FrameworkEvent::StatusUpdate(st)
            if st.task_id == "sq" && st.state == TaskState::Running =>
        {
            Some(st.clone())
        }
        _ => None,
    })
    .await;
    assert_ne!(running.uuid, 0);
    // The instance answers over the mesh under its instance name.
    let addr = m
        .master
        .send(ListNodes)
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.id == "w0")
        .unwrap()
        .addr
        .unwrap();
    let inst = m.node.actor_ref(addr, &instance_name(s.id(), "sq"));
    assert_eq!(inst.ask(Square(12)).await.unwrap(), 144);

    // Not acknowledged: the same update comes again.
    next(&mut rx, "the Running update again", |e| match e {
        FrameworkEvent::StatusUpdate(st) if st.task_id == "sq" && st.uuid == running.uuid => {
            Some(())
        }
        _ => None,
    })
    .await;
    s.acknowledge(&running).await.unwrap();

    // Reconciliation answers with the latest state, needing no acknowledgement.
    s.reconcile(vec!["sq".into(), "nope".into()]).await.unwrap();
    let mut seen = BTreeMap::new();
    while seen.len() < 2 {
        let st = next(&mut rx, "reconciliation", |e| match e {
            FrameworkEvent::StatusUpdate(st) if st.uuid == 0 => Some(st.clone()),
            _ => None,
        })
        .await;
        seen.insert(st.task_id.clone(), st.state);
    }
    assert_eq!(seen["sq"], TaskState::Running);
    assert_eq!(seen["nope"], TaskState::Lost);

    // Kill: a Killed update, and the instance is gone.
    s.kill("sq").await.unwrap();
    let killed = next(&mut rx, "Killed", |e| match e {
        FrameworkEvent::StatusUpdate(st) if st.task_id == "sq" && st.state == TaskState::Killed => {
            Some(st.clone())
        }
        _ => None,
    })
    .await;
    s.acknowledge(&killed).await.unwrap();
    assert!(inst.ask(Square(2)).await.is_err());

    // Decline with a long filter, then revive: the agent is offered again at once.
    let o = next(&mut rx, "an offer", offers).await.remove(0);
    s.decline(&o.offer_id, Duration::from_secs(3600))
        .await
        .unwrap();
    s.set_offers(true).await.unwrap();
    let back = next(&mut rx, "an offer after revive", offers).await;
    assert_eq!(back[0].agent_id, "w0");
    s.teardown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix::test]
async fn agent_loss_and_framework_failover() {
    let dir = temp("failover");
    let m = start_master(&dir, BTreeMap::new(), Duration::from_secs(30)).await;
    let host = join(&m, &dir, "host", "mem:1MiB").await;
    let w1 = join(&m, &dir, "w1", "cpus:1").await;
    let (s, mut rx, me) = framework(
        &m,
        &host.node,
        "fw-fo",
        "svc",
        Duration::from_secs(30),
        None,
    )
    .await;
    // One task on w1.
    let o = loop {
        let got = next(&mut rx, "an offer on w1", offers).await;
        if let Some(o) = got.into_iter().find(|o| o.agent_id == "w1") {
            break o;
        }
    };
    let launch = TaskLaunch::actor("keep", "worker", "cpus:1".parse().unwrap());
    s.accept(&o.offer_id, vec![launch]).await.unwrap();
    next(&mut rx, "Running", |e| {
        matches!(e, FrameworkEvent::StatusUpdate(st) if st.task_id == "keep" && st.state == TaskState::Running).then_some(())
    })
    .await;

    // Another node cannot take the framework over by its id.
    let (tx_thief, _thief_rx) = mpsc::unbounded_channel();
    let thief = w1.node.spawn("thief", Events(tx_thief)).unwrap();
    let e = Scheduler::register(
        &w1.node,
        m.node.local_addr(),
        &thief,
        "fw-fo",
        "svc",
        Duration::from_secs(30),
        Some(s.id().to_string()),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("may not take it over"), "{e}");

    // Nor can a node register a framework whose event actor is on another node: the
    // master would dial an address the registering identity does not hold.
    let e = w1
        .node
        .actor_ref(m.node.local_addr(), actormesh::protocol::MASTER_ACTOR)
        .ask_timeout(
            actormesh::framework::RegisterFramework {
                name: "elsewhere".into(),
                role: "svc".into(),
                failover_timeout_ms: 1000,
                framework_id: None,
                actor_addr: host.node.local_addr(),
                actor_name: me.name().to_string(),
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        e.to_string().contains("must be on the registering node"),
        "{e}"
    );

    // The framework's actor stops: the master notices, and the framework re-registers
    // with its id from a new actor within its failover timeout, keeping its task.
    host.node.stop(me.name());
    let (tx, mut rx2) = mpsc::unbounded_channel();
    let me2 = host.node.spawn("fw-fo-2", Events(tx)).unwrap();
    let (s2, reg) = Scheduler::register(
        &host.node,
        m.node.local_addr(),
        &me2,
        "fw-fo",
        "svc",
        Duration::from_secs(30),
        Some(s.id().to_string()),
    )
    .await
    .unwrap();
    assert!(reg.reregistered);
    assert_eq!(s2.id(), s.id());
    s2.reconcile(vec![]).await.unwrap();
    next(&mut rx2, "the kept task, Running", |e| {
        matches!(e, FrameworkEvent::StatusUpdate(st) if st.task_id == "keep" && st.state == TaskState::Running && st.uuid == 0).then_some(())
    })
    .await;

    // w1 goes away: the task is Unreachable.
    w1.node.shutdown();
    next(&mut rx2, "Unreachable", |e| {
        matches!(e, FrameworkEvent::StatusUpdate(st) if st.task_id == "keep" && st.state == TaskState::Unreachable).then_some(())
    })
    .await;

    // A framework that never comes back fails over: its tasks are killed.
    s2.set_offers(false).await.unwrap();
    let (f, mut frx, fme) = framework(
        &m,
        &host.node,
        "fw-short",
        "short",
        Duration::from_millis(300),
        None,
    )
    .await;
    let w2 = join(&m, &dir, "w2", "cpus:1").await;
    let o = loop {
        let got = next(&mut frx, "an offer on w2", offers).await;
        if let Some(o) = got.into_iter().find(|o| o.agent_id == "w2") {
            break o;
        }
    };
    f.accept(
        &o.offer_id,
        vec![TaskLaunch::actor(
            "doomed",
            "worker",
            "cpus:1".parse().unwrap(),
        )],
    )
    .await
    .unwrap();
    next(&mut frx, "Running", |e| {
        matches!(e, FrameworkEvent::StatusUpdate(st) if st.task_id == "doomed" && st.state == TaskState::Running).then_some(())
    })
    .await;
    let inst = m
        .node
        .actor_ref(w2.node.local_addr(), &instance_name(f.id(), "doomed"));
    assert_eq!(inst.ask(Square(3)).await.unwrap(), 9);
    host.node.stop(fme.name());
    let mut gone = false;
    for _ in 0..200 {
        if inst.ask(Square(3)).await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the failed-over framework's task still runs");
    let list = m.master.send(ListFrameworks).await.unwrap();
    assert!(list.iter().all(|x| x.id != f.id()), "{list:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix::test]
async fn reserved_resources_are_offered_to_their_role_only() {
    let dir = temp("reserve");
    let m = start_master(&dir, BTreeMap::new(), Duration::from_secs(30)).await;
    let mut config = inproc::agent_config(&m, &dir, "r1").await;
    config.resources = Some("cpus:4".parse().unwrap());
    config.reserved = BTreeMap::from([("analytics".to_string(), "cpus:3".parse().unwrap())]);
    config.host = ActorHost::new().with("worker", || Worker);
    let a = inproc::start_agent(config).await;
    // Another role sees only the unreserved cpu.
    let (_b, mut b_rx, _) = framework(
        &m,
        &a.node,
        "fw-batch",
        "batch",
        Duration::from_secs(60),
        None,
    )
    .await;
    let got = next(&mut b_rx, "offers for batch", offers).await;
    assert_eq!(
        got.iter().map(|o| cpus(&o.resources)).sum::<f64>(),
        1.0,
        "{got:?}"
    );
    // The role it is reserved for is offered the rest.
    let (_a, mut a_rx, _) = framework(
        &m,
        &a.node,
        "fw-analytics",
        "analytics",
        Duration::from_secs(60),
        None,
    )
    .await;
    let got = next(&mut a_rx, "offers for analytics", offers).await;
    assert_eq!(
        got.iter().map(|o| cpus(&o.resources)).sum::<f64>(),
        3.0,
        "{got:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix::test]
async fn decline_filters_and_revive_are_per_framework() {
    let dir = temp("filters");
    let m = start_master(&dir, BTreeMap::new(), Duration::from_secs(60)).await;
    let w = join(&m, &dir, "w0", "cpus:2").await;
    let hour = Duration::from_secs(3600);
    let (a, mut a_rx, _) = framework(&m, &w.node, "fw-a", "web", hour, None).await;
    let o = next(&mut a_rx, "an offer for a", offers).await.remove(0);
    a.decline(&o.offer_id, hour).await.unwrap();
    // a refuses w0 for an hour; b, of the same role, is still offered it.
    let (b, mut b_rx, _) = framework(&m, &w.node, "fw-b", "web", hour, None).await;
    let o = next(&mut b_rx, "an offer for b", offers).await.remove(0);
    assert_eq!(o.agent_id, "w0");
    b.decline(&o.offer_id, hour).await.unwrap();
    // Both refuse it now. a's revive clears a's filter only: a gets w0.
    a.set_offers(true).await.unwrap();
    let o = next(&mut a_rx, "an offer for a after its revive", offers)
        .await
        .remove(0);
    assert_eq!(o.agent_id, "w0");
    a.decline(&o.offer_id, hour).await.unwrap();
    // b's revive does not lift a's filter: b gets w0, although a (registered first) would
    // win a tie.
    b.set_offers(true).await.unwrap();
    let o = next(&mut b_rx, "an offer for b after its revive", offers)
        .await
        .remove(0);
    assert_eq!(o.agent_id, "w0");
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix::test]
async fn frameworks_of_one_role_share_it_by_drf() {
    let dir = temp("role-drf");
    let m = start_master(&dir, BTreeMap::new(), Duration::from_secs(60)).await;
    let w = join(&m, &dir, "w0", "cpus:8;mem:8GiB").await;
    let hour = Duration::from_secs(3600);
    let task = |id: &str, res: &str| TaskLaunch::actor(id, "worker", res.parse().unwrap());
    // a runs one big task: half the cpus.
    let (a, mut a_rx, _) = framework(&m, &w.node, "fw-a", "web", hour, None).await;
    let o = next(&mut a_rx, "an offer for a", offers).await.remove(0);
    a.accept(&o.offer_id, vec![task("big", "cpus:4;mem:512MiB")])
        .await
        .unwrap();
    let rest = next(&mut a_rx, "the rest for a", offers).await.remove(0);
    assert_eq!(cpus(&rest.resources), 4.0);
    // b holds nothing: what a gives back goes to b.
    let (b, mut b_rx, _) = framework(&m, &w.node, "fw-b", "web", hour, None).await;
    a.decline(&rest.offer_id, Duration::ZERO).await.unwrap();
    let o = next(&mut b_rx, "an offer for b", offers).await.remove(0);
    b.accept(
        &o.offer_id,
        vec![
            task("s1", "cpus:0.5;mem:256MiB"),
            task("s2", "cpus:0.5;mem:256MiB"),
        ],
    )
    .await
    .unwrap();
    // b now runs more tasks than a (two against one) but holds less (an eighth of the
    // cpus against a half): the rest goes to b again.
    let o = next(&mut b_rx, "the rest for b", offers).await.remove(0);
    assert_eq!(cpus(&o.resources), 3.0);
    let _ = std::fs::remove_dir_all(&dir);
}
