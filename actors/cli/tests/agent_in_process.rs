//! A user's own binary as an agent: it hosts its actor types, the master learns them
//! without a list, membership changes reach subscribed actors, and the agent's actors are
//! reachable over the mesh.

mod inproc;

use std::time::Duration;

use actix::prelude::*;
use actormesh::agent;
use actormesh::agent::tasks::ActorHost;
use actormesh::prelude::{Deserialize, RemoteMessage, Serialize};
use actormesh_master::membership::{AgentState, MembershipEvent};
use actormesh_master::{self as master, ListNodes, Subscribe};
use tokio::sync::mpsc;

#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Double/v1", reply = u64)]
struct Double(u64);

struct Doubler;

impl Actor for Doubler {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Double> for Doubler {
    type Result = u64;
    fn handle(&mut self, m: Double, _: &mut Context<Self>) -> u64 {
        m.0 * 2
    }
}

struct Collector(mpsc::UnboundedSender<MembershipEvent>);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<MembershipEvent> for Collector {
    type Result = ();
    fn handle(&mut self, e: MembershipEvent, _: &mut Context<Self>) {
        let _ = self.0.send(e);
    }
}

/// A master on loopback with ports chosen by the OS; `fast` shortens failure detection.
async fn start_master(dir: &std::path::Path, fast: bool) -> master::MasterHandle {
    master::start(inproc::master_config(dir, fast))
        .await
        .unwrap()
}

/// Starts agent `name` joined to `m` with a fresh token, hosting `host`.
async fn join(
    m: &master::MasterHandle,
    dir: &std::path::Path,
    name: &str,
    resources: Option<actormesh::resources::Resources>,
    host: ActorHost,
) -> agent::AgentHandle {
    let mut config = inproc::agent_config(m, dir, name).await;
    config.resources = resources;
    config.host = host;
    inproc::start_agent(config).await
}

/// Checks `cond` every 10 ms for up to `limit`; whether it became true.
async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..limit.as_millis() / 10 {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[actix::test]
async fn a_user_binary_joins_as_an_agent_hosting_its_own_actor_types() {
    let dir = std::env::temp_dir().join(format!("am-inproc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = start_master(&dir, false).await;
    let (tx, mut events) = mpsc::unbounded_channel();
    m.master
        .send(Subscribe(Collector(tx).start().recipient()))
        .await
        .unwrap();
    let a = join(&m, &dir, "worker", None, ActorHost::default()).await;
    a.node.spawn("doubler", Doubler).unwrap();

    let joined = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (joined.agent.as_str(), joined.from, joined.to),
        ("worker", None, AgentState::Active)
    );

    let nodes = m.master.send(ListNodes).await.unwrap();
    let worker = nodes.iter().find(|n| n.id == "worker").unwrap();
    assert!(
        worker.actor_types.iter().any(|t| t.ends_with("Doubler")),
        "the master does not know the agent hosts Doubler: {:?}",
        worker.actor_types
    );
    assert!(worker
        .actor_types
        .iter()
        .all(|t| !t.starts_with("actormesh::")));
    // Detected resources.
    assert!(worker.resources.scalars["cpus"] >= 1.0);

    // The agent's actor answers over the mesh, from the master's node.
    let r = m.node.actor_ref(a.node.local_addr(), "doubler");
    assert_eq!(r.ask(Double(21)).await.unwrap(), 42);
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix::test]
async fn the_master_starts_and_kills_actor_tasks_on_an_agent() {
    use actormesh_master::frameworks::TaskState;
    use actormesh_master::{KillOn, LaunchOn, ListTasks};

    let dir = std::env::temp_dir().join(format!("am-tasks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = start_master(&dir, false).await;
    let a = join(
        &m,
        &dir,
        "host1",
        None,
        ActorHost::new().with("doubler", || Doubler),
    )
    .await;
    let nodes = m.master.send(ListNodes).await.unwrap();
    assert_eq!(nodes[0].actor_types, vec!["doubler".to_string()]);

    let state_of = |task: &'static str| {
        let master = m.master.clone();
        async move {
            master
                .send(ListTasks)
                .await
                .unwrap()
                .into_iter()
                .find(|t| t.task_id == task)
                .map(|t| t.state)
        }
    };
    let wait_for = |task: &'static str, state: TaskState| async move {
        assert!(
            eventually(Duration::from_secs(5), || async {
                state_of(task).await == Some(state)
            })
            .await,
            "task {task} never reached {state:?}: {:?}",
            state_of(task).await
        );
    };

    m.master
        .send(LaunchOn {
            agent: "host1".into(),
            task_id: "t1".into(),
            actor_type: "doubler".into(),
            name: "doubler-1".into(),
        })
        .await
        .unwrap()
        .unwrap();
    wait_for("t1", TaskState::Running).await;
    // The task is a real actor on the agent, reachable over the mesh.
    let r = m.node.actor_ref(a.node.local_addr(), "doubler-1");
    assert_eq!(r.ask(Double(4)).await.unwrap(), 8);

    // The master's orders carry the term of its leadership (each start takes the next),
    // and the agent keeps the newest it obeyed.
    assert!(m.term >= 1);
    assert_eq!(a.master.term(), m.term);
    // An order of an older term, a delayed one of an earlier leadership, is refused,
    // even from the master's own identity.
    let older = actormesh::masters::order_options(m.term - 1, Duration::from_secs(5));
    let refused = m
        .node
        .actor_ref(a.node.local_addr(), actormesh::protocol::AGENT_ACTOR)
        .ask_with_options(
            actormesh::protocol::LaunchActor {
                task_id: "t-old".into(),
                actor_type: "doubler".into(),
                name: "doubler-old".into(),
                health: None,
                restart: None,
                resources: Default::default(),
                version: String::new(),
                workload: None,
            },
            &older,
        )
        .await
        .unwrap()
        .unwrap_err();
    assert!(refused.contains("older than term"), "{refused}");
    assert!(
        a.node
            .local_ref("doubler-old")
            .ask(Double(1))
            .await
            .is_err(),
        "nothing was launched"
    );

    // A type the agent does not host is an error, reported as such.
    let err = m
        .master
        .send(LaunchOn {
            agent: "host1".into(),
            task_id: "t2".into(),
            actor_type: "nope".into(),
            name: "nope-1".into(),
        })
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains("not hosted"), "{err}");
    wait_for("t2", TaskState::Error).await;

    m.master
        .send(KillOn {
            agent: "host1".into(),
            task_id: "t1".into(),
        })
        .await
        .unwrap()
        .unwrap();
    wait_for("t1", TaskState::Killed).await;
    // Only the master may launch tasks: another node is refused.
    let direct = a.node.local_ref(actormesh::protocol::AGENT_ACTOR);
    let refused = direct
        .ask(actormesh::protocol::LaunchActor {
            task_id: "t3".into(),
            actor_type: "doubler".into(),
            name: "sneaky".into(),
            health: None,
            restart: None,
            resources: Default::default(),
            version: String::new(),
            workload: None,
        })
        .await
        .unwrap();
    assert!(refused.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix::test]
async fn a_deployment_keeps_its_replicas_running_and_replaces_a_lost_agents() {
    use actormesh_master::{ApplyDeployment, ListDeploymentTasks, ListDeployments};

    let dir = std::env::temp_dir().join(format!("am-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = start_master(&dir, true).await;
    let mut agents = Vec::new();
    for name in ["w1", "w2"] {
        let host = ActorHost::new().with("doubler", || Doubler);
        agents.push(
            join(
                &m,
                &dir,
                name,
                Some("cpus:4;mem:4096".parse().unwrap()),
                host,
            )
            .await,
        );
    }
    let manifest = r#"{"kind":"Deployment","name":"calc","spec":{"actor":"doubler","version":"v1","replicas":3,"resources":{"need":"cpus:1"}}}"#;
    assert_eq!(
        m.master
            .send(ApplyDeployment(manifest.into()))
            .await
            .unwrap()
            .unwrap(),
        "default/calc"
    );
    let ok = eventually(Duration::from_secs(5), || async {
        m.master.send(ListDeployments).await.unwrap()[0].running == 3
    })
    .await;
    assert!(
        ok,
        "3 replicas never ran: {:?}",
        m.master.send(ListDeployments).await.unwrap()
    );
    // The launches carried the master's term.
    for a in &agents {
        assert_eq!(a.master.term(), m.term, "{}", a.agent_id);
    }
    // Every instance answers over the mesh.
    let tasks = m.master.send(ListDeploymentTasks).await.unwrap();
    for t in tasks
        .iter()
        .filter(|t| t.state == actormesh_master::frameworks::TaskState::Running)
    {
        let addr = if t.agent == "w1" {
            agents[0].node.local_addr()
        } else {
            agents[1].node.local_addr()
        };
        assert_eq!(
            m.node.actor_ref(addr, &t.id).ask(Double(1)).await.unwrap(),
            2
        );
    }
    // w1 goes away: its instances are replaced on w2.
    let lost = agents.remove(0);
    lost.node.shutdown();
    let running_on_w2 = || async {
        m.master
            .send(ListDeploymentTasks)
            .await
            .unwrap()
            .into_iter()
            .filter(|t| {
                t.agent == "w2" && t.state == actormesh_master::frameworks::TaskState::Running
            })
            .map(|t| t.id)
            .collect::<Vec<String>>()
    };
    let back = eventually(Duration::from_secs(10), || async {
        running_on_w2().await.len() == 3
    })
    .await;
    assert!(
        back,
        "replicas were not replaced: {:?}",
        m.master.send(ListDeploymentTasks).await.unwrap()
    );
    // Deleting the deployment stops its instances on the agent.
    let live = running_on_w2().await;
    assert_eq!(live.len(), 3);
    m.master
        .send(actormesh_master::DeleteDeployment("default/calc".into()))
        .await
        .unwrap()
        .unwrap();
    assert!(m.master.send(ListDeployments).await.unwrap().is_empty());
    let w2 = agents[0].node.local_addr();
    for id in &live {
        let stopped = eventually(Duration::from_secs(5), || async {
            let r = m.node.actor_ref(w2, id);
            r.ask_timeout(Double(1), Duration::from_secs(5))
                .await
                .is_err()
        })
        .await;
        assert!(
            stopped,
            "instance {id} still answers after its deployment was deleted"
        );
    }
    let err = m
        .master
        .send(actormesh_master::DeleteDeployment("default/calc".into()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("no deployment \"default/calc\""),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Never healthy.
struct Sick;

impl Actor for Sick {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<actormesh::health::HealthCheck> for Sick {
    type Result = Result<(), String>;
    fn handle(&mut self, _: actormesh::health::HealthCheck, _: &mut Context<Self>) -> Self::Result {
        Err("not ready".into())
    }
}

#[actormesh::handler]
impl Handler<actormesh::health::HealthCheck> for Doubler {
    type Result = Result<(), String>;
    fn handle(&mut self, _: actormesh::health::HealthCheck, _: &mut Context<Self>) -> Self::Result {
        Ok(())
    }
}

/// Healthy once it has lived 150 ms: a rollout of it takes several health checks, so the
/// rolling state lasts long enough to be seen however loaded the machine is (with
/// instances healthy at their first check, a whole rollout fit between two looks).
struct Warming(std::time::Instant);

impl Actor for Warming {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<actormesh::health::HealthCheck> for Warming {
    type Result = Result<(), String>;
    fn handle(&mut self, _: actormesh::health::HealthCheck, _: &mut Context<Self>) -> Self::Result {
        if self.0.elapsed() >= Duration::from_millis(150) {
            Ok(())
        } else {
            Err("warming up".into())
        }
    }
}

#[actix::test]
async fn health_checks_gate_availability_and_replace_unhealthy_instances() {
    use actormesh_master::frameworks::TaskState;
    use actormesh_master::{ApplyDeployment, ListDeploymentTasks, ListDeployments};

    let dir = std::env::temp_dir().join(format!("am-health-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = start_master(&dir, true).await;
    let host = ActorHost::new()
        .with("doubler", || Doubler)
        .with("sick", || Sick);
    let _a = join(
        &m,
        &dir,
        "h1",
        Some("cpus:4;mem:4096".parse().unwrap()),
        host,
    )
    .await;
    let manifest = |name: &str, actor: &str| {
        format!(
            r#"{{"kind":"Deployment","name":"{name}","spec":{{"actor":"{actor}","version":"v1","replicas":1,"resources":{{"need":"cpus:1"}},"health_check":{{"interval":"100ms","timeout":"100ms","failures":2}},"restart":{{"policy":"on-failure","backoff_initial":"100ms","backoff_max":"1s"}}}}}}"#
        )
    };
    for (name, actor) in [("good", "doubler"), ("bad", "sick")] {
        m.master
            .send(ApplyDeployment(manifest(name, actor)))
            .await
            .unwrap()
            .unwrap();
    }
    // The healthy one counts as running once its check passed.
    let good = eventually(Duration::from_secs(10), || async {
        m.master
            .send(ListDeployments)
            .await
            .unwrap()
            .iter()
            .any(|d| d.name == "good" && d.running == 1)
    })
    .await;
    assert!(good, "{:?}", m.master.send(ListDeployments).await.unwrap());
    // The sick one is killed after 2 failed checks, reported Failed with why, and
    // replaced (after the backoff).
    let replaced = eventually(Duration::from_secs(10), || async {
        let tasks = m.master.send(ListDeploymentTasks).await.unwrap();
        let bad: Vec<_> = tasks
            .iter()
            .filter(|t| t.deployment == "default/bad")
            .collect();
        bad.iter().any(|t| {
            t.state == TaskState::Failed
                && t.message
                    .contains("health check failed 2 times in a row: not ready")
        }) && bad.len() >= 2
    })
    .await;
    assert!(
        replaced,
        "{:#?}",
        m.master.send(ListDeploymentTasks).await.unwrap()
    );
    let summaries = m.master.send(ListDeployments).await.unwrap();
    let bad = summaries.iter().find(|d| d.name == "bad").unwrap();
    assert_eq!(bad.running, 0, "an unhealthy instance counted as running");
    let _ = std::fs::remove_dir_all(&dir);
}

#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Crash/v1", reply = u64)]
struct Crash(bool);

/// Panics when asked to.
struct Fragile;

impl Actor for Fragile {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Crash> for Fragile {
    type Result = u64;
    fn handle(&mut self, m: Crash, _: &mut Context<Self>) -> u64 {
        assert!(!m.0, "asked to crash");
        7
    }
}

#[actix::test]
async fn the_restart_policy_decides_whether_a_crashed_instance_comes_back() {
    use actormesh_master::frameworks::TaskState;
    use actormesh_master::{ApplyDeployment, ListDeploymentTasks, ListDeployments};

    let dir = std::env::temp_dir().join(format!("am-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = start_master(&dir, true).await;
    let host = ActorHost::new().with("fragile", || Fragile);
    let a = join(
        &m,
        &dir,
        "r1",
        Some("cpus:4;mem:4096".parse().unwrap()),
        host,
    )
    .await;
    let manifest = |name: &str, policy: &str| {
        format!(
            r#"{{"kind":"Deployment","name":"{name}","spec":{{"actor":"fragile","version":"v1","replicas":1,"resources":{{"need":"cpus:1"}},"restart":{{"policy":"{policy}","backoff_initial":"10ms","backoff_max":"100ms"}}}}}}"#
        )
    };
    for (name, policy) in [("never", "never"), ("again", "on-failure")] {
        m.master
            .send(ApplyDeployment(manifest(name, policy)))
            .await
            .unwrap()
            .unwrap();
    }
    let ready = eventually(Duration::from_secs(10), || async {
        m.master
            .send(ListDeployments)
            .await
            .unwrap()
            .iter()
            .all(|d| d.running == 1)
    })
    .await;
    assert!(ready);
    let tasks = m.master.send(ListDeploymentTasks).await.unwrap();
    let id = |d: &str| {
        tasks
            .iter()
            .find(|t| t.deployment == d && t.state == TaskState::Running)
            .unwrap()
            .id
            .clone()
    };
    let (never, again) = (id("default/never"), id("default/again"));
    for name in [&never, &again] {
        let r = m.node.actor_ref(a.node.local_addr(), name);
        assert!(r.ask(Crash(true)).await.is_err());
    }
    // on-failure: restarted in place, the same task answers again.
    let r = m.node.actor_ref(a.node.local_addr(), &again);
    let back = eventually(Duration::from_secs(10), || async {
        r.ask(Crash(false)).await.ok() == Some(7)
    })
    .await;
    assert!(back, "the on-failure instance did not come back");
    // never: the task failed and stays failed; nothing replaces it.
    let done = eventually(Duration::from_secs(10), || async {
        m.master
            .send(ListDeployments)
            .await
            .unwrap()
            .iter()
            .any(|d| d.name == "never" && d.done == 1 && d.running == 0)
    })
    .await;
    let tasks = m.master.send(ListDeploymentTasks).await.unwrap();
    assert!(done, "{tasks:#?}");
    let of_never: Vec<_> = tasks
        .iter()
        .filter(|t| t.deployment == "default/never")
        .collect();
    assert_eq!(of_never.len(), 1, "{of_never:#?}");
    assert_eq!(of_never[0].state, TaskState::Failed);
    let again_tasks: Vec<_> = tasks
        .iter()
        .filter(|t| t.deployment == "default/again")
        .collect();
    assert_eq!(again_tasks.len(), 1, "restarted in place, not replaced");
    assert_eq!(again_tasks[0].state, TaskState::Running);
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix::test]
async fn a_rolling_update_keeps_the_asked_availability_with_real_agents() {
    use actormesh_master::frameworks::TaskState;
    use actormesh_master::{ApplyDeployment, ListDeploymentTasks, ListDeployments};

    let dir = std::env::temp_dir().join(format!("am-roll-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = start_master(&dir, true).await;
    let mut agents = Vec::new();
    for name in ["u1", "u2"] {
        let host = ActorHost::new().with("doubler", || Warming(std::time::Instant::now()));
        let a = join(
            &m,
            &dir,
            name,
            Some("cpus:8;mem:4096".parse().unwrap()),
            host,
        )
        .await;
        agents.push(a);
    }
    let manifest = |version: &str| {
        format!(
            r#"{{"kind":"Deployment","name":"roll","spec":{{"actor":"doubler","version":"{version}","replicas":4,"resources":{{"need":"cpus:1"}},"health_check":{{"interval":"100ms","timeout":"100ms","failures":3}},"rolling_update":{{"max_surge":1,"max_unavailable":1}}}}}}"#
        )
    };
    m.master
        .send(ApplyDeployment(manifest("v1")))
        .await
        .unwrap()
        .unwrap();
    let up = eventually(Duration::from_secs(10), || async {
        m.master.send(ListDeployments).await.unwrap()[0].running == 4
    })
    .await;
    assert!(up);
    m.master
        .send(ApplyDeployment(manifest("v2")))
        .await
        .unwrap()
        .unwrap();
    // Until every instance runs v2, at least 3 (replicas - max_unavailable) are available
    // at every look, and at most 5 (replicas + max_surge) are live.
    let started = std::time::Instant::now();
    let mut looks = 0;
    // Looks at which v1 and v2 instances were live together: the update rolled, rather than
    // replacing everything at once (a count of looks would depend on how fast they come).
    let mut mixed = 0;
    loop {
        looks += 1;
        let tasks = m.master.send(ListDeploymentTasks).await.unwrap();
        let live: Vec<_> = tasks
            .iter()
            .filter(|t| {
                matches!(
                    t.state,
                    TaskState::Staging | TaskState::Starting | TaskState::Running
                )
            })
            .collect();
        let available: Vec<_> = live
            .iter()
            .filter(|t| t.state == TaskState::Running && t.healthy == Some(true))
            .collect();
        assert!(available.len() >= 3, "look {looks}: {tasks:#?}");
        assert!(live.len() <= 5, "look {looks}: {tasks:#?}");
        if live.iter().any(|t| t.version == "v1") && live.iter().any(|t| t.version == "v2") {
            mixed += 1;
        }
        if available.len() == 4 && available.iter().all(|t| t.version == "v2") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the update did not finish: {tasks:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(mixed > 0, "the update was not observed while under way");
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix::test]
async fn every_api_route_needs_the_token() {
    let dir = std::env::temp_dir().join(format!("am-api-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = start_master(&dir, false).await;
    let base = format!("http://{}", m.api);
    let token = std::fs::read_to_string(&m.api_token_file).unwrap();
    let routes = [
        ("GET", "/v1/nodes"),
        ("GET", "/v1/nodes/n1"),
        ("POST", "/v1/nodes/n1/drain"),
        ("POST", "/v1/tokens"),
        ("GET", "/v1/deployments"),
        ("POST", "/v1/deployments"),
        ("GET", "/v1/deployments/default/web"),
        ("DELETE", "/v1/deployments/default/web"),
        ("GET", "/v1/tasks"),
        ("GET", "/v1/frameworks"),
        ("GET", "/v1/tasks/t1"),
        ("GET", "/v1/tasks/t1/logs"),
    ];
    // The API client blocks; the master runs on this thread.
    let answers = tokio::task::spawn_blocking(move || {
        let call = |t: &str, method: &str, path: &str| {
            actormesh_cli::ApiClient::new(&base, t)
                .call(method, path, None)
                .map_err(|e| e.to_string())
        };
        let mut refused = Vec::new();
        for (method, path) in routes {
            for wrong in ["", "not-the-token"] {
                refused.push((method, path, call(wrong, method, path)));
            }
        }
        (refused, call(token.trim(), "GET", "/v1/nodes"))
    })
    .await
    .unwrap();
    let (refused, allowed) = answers;
    for (method, path, answer) in refused {
        let e = answer.expect_err(&format!("{method} {path} answered without the token"));
        assert!(
            e.contains("401") && e.contains("missing or wrong API token"),
            "{method} {path}: {e}"
        );
    }
    assert!(allowed.is_ok(), "{allowed:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
