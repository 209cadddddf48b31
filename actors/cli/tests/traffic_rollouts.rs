//! Rollouts under load, end to end: callers keep calling a service by name while its
//! deployment rolls to a new version, and no call fails. First the same actor type at
//! version v1 then v2; then the ★ message rollout: an actor that accepts `x.Get/v1` rolled
//! to another type that accepts `x.Get/v2` and still `x.Get/v1`, with v1 callers all along.

mod traffic;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actormesh::agent::tasks::ActorHost;
use actormesh::mesh::{Endpoint, Mesh};
use actormesh::prelude::{Deserialize, RemoteMessage, Serialize};
use actormesh::AskError;
use actormesh_master::frameworks::TaskState;
use traffic::*;

/// The first version of the message: the caller gets the instance's id.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.x.Get/v1", reply = String)]
struct GetV1 {
    key: u64,
}

/// Its second version: the same, with a field the first did not have.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.x.Get/v2", reply = String)]
struct GetV2 {
    key: u64,
    detail: bool,
}

/// How long each answer takes: calls are in flight when an instance is taken out.
const WORK: Duration = Duration::from_millis(3);

async fn answer(id: String) -> String {
    tokio::time::sleep(WORK).await;
    id
}

/// Accepts `x.Get/v1` only.
struct GetterV1 {
    id: String,
}

impl Actor for GetterV1 {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<GetV1> for GetterV1 {
    type Result = ResponseFuture<String>;
    fn handle(&mut self, _: GetV1, _: &mut Context<Self>) -> Self::Result {
        Box::pin(answer(format!("v1:{}", self.id)))
    }
}

/// Accepts `x.Get/v2`, and still `x.Get/v1`.
struct GetterV2 {
    id: String,
}

impl Actor for GetterV2 {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<GetV1> for GetterV2 {
    type Result = ResponseFuture<String>;
    fn handle(&mut self, _: GetV1, _: &mut Context<Self>) -> Self::Result {
        Box::pin(answer(format!("v2:{}", self.id)))
    }
}

#[actormesh::handler]
impl Handler<GetV2> for GetterV2 {
    type Result = ResponseFuture<String>;
    fn handle(&mut self, m: GetV2, _: &mut Context<Self>) -> Self::Result {
        let id = format!("v2:{}{}", self.id, if m.detail { "+" } else { "" });
        Box::pin(answer(id))
    }
}

/// How long a [`Busy`] instance works on each call: well within the agent's wait for a
/// killed actor's mailbox to stay empty (50 ms), and with 4 calls queued per instance
/// longer than a push and its acknowledgement.
const BUSY_WORK: Duration = Duration::from_millis(5);

/// Answers [`Who`] one call at a time, taking [`BUSY_WORK`] for each: under load, calls
/// wait in its mailbox.
struct Busy {
    id: String,
}

impl Actor for Busy {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Who> for Busy {
    type Result = AtomicResponse<Self, String>;
    fn handle(&mut self, _: Who, _: &mut Context<Self>) -> Self::Result {
        let id = self.id.clone();
        let work = async move {
            tokio::time::sleep(BUSY_WORK).await;
            id
        };
        AtomicResponse::new(Box::pin(work.into_actor(self)))
    }
}

fn getter_host(agent: &'static str) -> ActorHost {
    who_host(agent, WORK)
        .with("busy", move || Busy {
            id: agent.to_string(),
        })
        .with("getter-v1", move || GetterV1 {
            id: agent.to_string(),
        })
        .with("getter-v2", move || GetterV2 {
            id: agent.to_string(),
        })
}

fn deployment(actor: &str, version: &str) -> String {
    scaled(actor, version, 3)
}

fn scaled(actor: &str, version: &str, replicas: u32) -> String {
    format!(
        r#"{{"kind":"Deployment","name":"x","spec":{{"actor":"{actor}","version":"{version}","replicas":{replicas},"resources":{{"need":"cpus:1"}},"rolling_update":{{"max_surge":1,"max_unavailable":0}},"service":{{"balancer":"round_robin"}}}}}}"#
    )
}

/// A failed call: its number, when it started (since the load began), the registry
/// version the caller had applied then, and the error.
type Failure = (u64, Duration, Option<u64>, AskError);

/// What a load of calls saw.
#[derive(Debug, Default)]
struct Load {
    ok: u64,
    failed: Vec<Failure>,
    /// Answers by prefix (`v1:`, `v2:`, or the `who` id's agent).
    answered_by: std::collections::BTreeMap<String, u64>,
}

/// `workers` callers, each calling with `call` back to back until `stop` is set.
fn start_load<F, Fut>(
    mesh: &Mesh,
    workers: usize,
    stop: Rc<Cell<bool>>,
    call: F,
) -> (Rc<RefCell<Load>>, Vec<tokio::task::JoinHandle<()>>)
where
    F: Fn(u64) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = Result<String, AskError>> + 'static,
{
    let load = Rc::new(RefCell::new(Load::default()));
    let next = Rc::new(Cell::new(0u64));
    let began = Instant::now();
    let handles = (0..workers)
        .map(|_| {
            let (load, next, stop, call) = (load.clone(), next.clone(), stop.clone(), call.clone());
            let mesh = mesh.clone();
            actix::spawn(async move {
                while !stop.get() {
                    let i = next.get();
                    next.set(i + 1);
                    let (at, version) = (began.elapsed(), mesh.version());
                    let r = call(i).await;
                    let mut l = load.borrow_mut();
                    match r {
                        Ok(who) => {
                            l.ok += 1;
                            let kind = who.split(['-', ':']).next().unwrap_or("").to_string();
                            *l.answered_by.entry(kind).or_default() += 1;
                        }
                        Err(e) => l.failed.push((i, at, version, e)),
                    }
                }
            })
        })
        .collect();
    (load, handles)
}

async fn stop_load(stop: Rc<Cell<bool>>, handles: Vec<tokio::task::JoinHandle<()>>) {
    stop.set(true);
    for h in handles {
        h.await.unwrap();
    }
}

/// Waits until the caller's table holds exactly 3 endpoints, all of `version`, and the
/// master runs no instance of another version (the old ones are killed, not only out of
/// discovery); returns the endpoints.
async fn wait_rolled(c: &Cluster, mesh: &Mesh, version: &str) -> Vec<Endpoint> {
    let eps = wait_endpoints(mesh, "x", Duration::from_secs(30), |e| {
        e.len() == 3 && e.iter().all(|e| e.version == version)
    })
    .await;
    let start = Instant::now();
    loop {
        let tasks = c
            .master
            .master
            .send(actormesh_master::ListDeploymentTasks)
            .await
            .unwrap();
        let old_live = tasks
            .iter()
            .filter(|t| {
                t.version != version
                    && (t.stopping
                        || matches!(
                            t.state,
                            TaskState::Staging | TaskState::Starting | TaskState::Running
                        ))
            })
            .count();
        if old_live == 0 {
            return eps;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "old instances still live: {tasks:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix::test]
async fn a_rolling_update_under_load_fails_no_call() {
    let hosts = vec![
        ("a1", getter_host("a1")),
        ("a2", getter_host("a2")),
        ("a3", getter_host("a3")),
    ];
    let c = cluster("roll", hosts).await;
    let mesh = c.caller("roll-caller").await;
    let who = |version: &str| deployment("who", version);
    c.apply(&who("v1")).await;
    let v1 = wait_rolled(&c, &mesh, "v1").await;

    let s = mesh.service("x").unwrap();
    let stop = Rc::new(Cell::new(false));
    let (load, handles) = start_load(&mesh, 4, stop.clone(), move |i| {
        let s = s.clone();
        async move { s.ask_timeout(Who(i), Duration::from_secs(5)).await }
    });
    c.apply(&who("v2")).await;
    let v2 = wait_rolled(&c, &mesh, "v2").await;
    let during = load.borrow().ok;
    // A little more load on the new instances alone.
    let more = load.borrow().ok + 300;
    let waiting = Instant::now();
    while load.borrow().ok < more && load.borrow().failed.is_empty() {
        assert!(
            waiting.elapsed() < Duration::from_secs(20),
            "the load stalled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_load(stop, handles).await;

    let load = load.borrow();
    eprintln!(
        "rolling update v1 -> v2: {} calls answered ({during} during the update), {} failed; endpoints {:?} -> {:?}",
        load.ok,
        load.failed.len(),
        v1.iter().map(|e| &e.id).collect::<Vec<_>>(),
        v2.iter().map(|e| &e.id).collect::<Vec<_>>()
    );
    assert!(load.failed.is_empty(), "calls failed: {:#?}", load.failed);
    assert!(
        v1.iter().all(|a| v2.iter().all(|b| a.id != b.id)),
        "every instance was replaced"
    );
    assert!(
        during >= 20,
        "the load ran through the update: {during} calls"
    );
}

#[actix::test]
async fn a_message_rollout_from_get_v1_to_get_v2_fails_no_v1_caller() {
    let hosts = vec![
        ("a1", getter_host("a1")),
        ("a2", getter_host("a2")),
        ("a3", getter_host("a3")),
    ];
    let c = cluster("msg-roll", hosts).await;
    let mesh = c.caller("msg-roll-caller").await;
    c.apply(&deployment("getter-v1", "v1")).await;
    wait_rolled(&c, &mesh, "v1").await;
    let s = mesh.service("x").unwrap();
    let before = s
        .ask_timeout(
            GetV2 {
                key: 0,
                detail: true,
            },
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(before, Err(AskError::UnknownMessage { ref message, .. }) if message == "test.x.Get/v2"),
        "a v1 instance does not take x.Get/v2: {before:?}"
    );

    let stop = Rc::new(Cell::new(false));
    let (load, handles) = start_load(&mesh, 4, stop.clone(), move |key| {
        let s = s.clone();
        async move { s.ask_timeout(GetV1 { key }, Duration::from_secs(5)).await }
    });
    // The update changes the actor type along with the version.
    c.apply(&deployment("getter-v2", "v2")).await;
    wait_rolled(&c, &mesh, "v2").await;
    let more = load.borrow().answered_by.get("v2").copied().unwrap_or(0) + 300;
    let waiting = Instant::now();
    while load.borrow().answered_by.get("v2").copied().unwrap_or(0) < more
        && load.borrow().failed.is_empty()
    {
        assert!(
            waiting.elapsed() < Duration::from_secs(20),
            "the load stalled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_load(stop, handles).await;

    let load = std::mem::take(&mut *load.borrow_mut());
    eprintln!(
        "message rollout: v1 callers got {} answers ({:?}), {} failed",
        load.ok,
        load.answered_by,
        load.failed.len()
    );
    assert!(
        load.failed.is_empty(),
        "v1 calls failed: {:#?}",
        load.failed
    );
    assert!(
        load.answered_by.get("v1").is_some_and(|n| *n > 0),
        "v1 instances answered during the rollout: {load:?}"
    );
    // After it, v2 callers are served everywhere.
    let s = mesh.service("x").unwrap();
    for key in 0..30 {
        let who = s
            .ask_timeout(GetV2 { key, detail: true }, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("x.Get/v2 after the rollout: {e}"));
        assert!(who.starts_with("v2:") && who.ends_with('+'), "{who}");
    }
}

#[actix::test]
async fn a_scale_down_of_a_busy_actor_fails_none_of_the_calls_queued_in_its_mailbox() {
    let hosts = vec![
        ("a1", getter_host("a1")),
        ("a2", getter_host("a2")),
        ("a3", getter_host("a3")),
    ];
    let c = cluster("busy", hosts).await;
    let mesh = c.caller("busy-caller").await;
    c.apply(&scaled("busy", "v1", 3)).await;
    wait_rolled(&c, &mesh, "v1").await;

    // 12 callers on 3 instances that take one call at a time: calls queue.
    let s = mesh.service("x").unwrap();
    let stop = Rc::new(Cell::new(false));
    let (load, handles) = start_load(&mesh, 12, stop.clone(), move |i| {
        let s = s.clone();
        async move { s.ask_timeout(Who(i), Duration::from_secs(5)).await }
    });
    let waiting = Instant::now();
    while load.borrow().ok < 100 {
        assert!(
            waiting.elapsed() < Duration::from_secs(20),
            "the load never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.apply(&scaled("busy", "v1", 1)).await;
    wait_endpoints(&mesh, "x", Duration::from_secs(20), |e| e.len() == 1).await;
    let start = Instant::now();
    while c
        .master
        .master
        .send(actormesh_master::ListDeploymentTasks)
        .await
        .unwrap()
        .iter()
        .any(|t| t.stopping)
    {
        assert!(start.elapsed() < Duration::from_secs(20), "kills not done");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_load(stop, handles).await;
    let load = std::mem::take(&mut *load.borrow_mut());
    eprintln!(
        "scale-down 3 -> 1 of a busy actor: {} answered ({:?}), {} failed",
        load.ok,
        load.answered_by,
        load.failed.len()
    );
    assert!(load.failed.is_empty(), "calls failed: {:#?}", load.failed);
}
