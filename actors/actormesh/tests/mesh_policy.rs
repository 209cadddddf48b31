//! Traffic policy wired into real calls by name: nodes on loopback QUIC, a test node named
//! `master` pushing services with their Route and DestinationPolicy to the caller's (and
//! the callee's) `$proxy`, as the master's registry does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actormesh::mesh::protocol::{DumpEndpoints, EndpointLive, Push, PushKind, PROXY_ACTOR};
use actormesh::mesh::registry::{Applied, Traffic};
use actormesh::mesh::{BalancerKind, CallOptions, Endpoint, Mesh, MeshOptions, Service};
use actormesh::prelude::{Deserialize, RemoteMessage, Serialize};
use actormesh::{AskError, CallInfo, LocalCa, Node};

/// An idempotent call: answers with the serving node's name.
#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.policy.Get/v1", reply = String, idempotent)]
struct Get;

/// The same, not idempotent.
#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.policy.Put/v1", reply = String)]
struct Put;

/// Answers with the deadline the callee got, in ms (`None`: no deadline).
#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.policy.Deadline/v1", reply = Option<u64>)]
struct Deadline;

/// What a server saw and how it behaves, shared with the test.
#[derive(Debug, Default)]
struct Behaviour {
    /// Calls that arrived.
    arrivals: AtomicU32,
    /// Of them, retries (attempt > 0).
    retries: AtomicU32,
    /// How long to wait before answering, in ms.
    delay_ms: AtomicU64,
    /// While set, answers wait for a permit.
    hold: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl Behaviour {
    fn arrivals(&self) -> u32 {
        self.arrivals.load(Ordering::SeqCst)
    }

    fn retries(&self) -> u32 {
        self.retries.load(Ordering::SeqCst)
    }
}

struct Server {
    name: String,
    behaviour: Arc<Behaviour>,
}

impl Actor for Server {
    type Context = Context<Self>;
}

impl Server {
    fn answer(&self) -> ResponseFuture<String> {
        let b = self.behaviour.clone();
        b.arrivals.fetch_add(1, Ordering::SeqCst);
        if CallInfo::current().is_some_and(|c| c.attempt() > 0) {
            b.retries.fetch_add(1, Ordering::SeqCst);
        }
        let name = self.name.clone();
        Box::pin(async move {
            let delay = b.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let hold = b.hold.lock().unwrap().clone();
            if let Some(h) = hold {
                let _ = h.acquire().await;
            }
            name
        })
    }
}

#[actormesh::handler]
impl Handler<Get> for Server {
    type Result = ResponseFuture<String>;
    fn handle(&mut self, _: Get, _: &mut Context<Self>) -> Self::Result {
        self.answer()
    }
}

#[actormesh::handler]
impl Handler<Put> for Server {
    type Result = ResponseFuture<String>;
    fn handle(&mut self, _: Put, _: &mut Context<Self>) -> Self::Result {
        self.answer()
    }
}

#[actormesh::handler]
impl Handler<Deadline> for Server {
    type Result = Option<u64>;
    fn handle(&mut self, _: Deadline, _: &mut Context<Self>) -> Option<u64> {
        CallInfo::current()?
            .remaining()
            .map(|d| d.as_millis() as u64)
    }
}

/// Calls `default/back` by name from its handler (the second hop).
struct Front(Mesh);

impl Actor for Front {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Deadline> for Front {
    type Result = ResponseFuture<Option<u64>>;
    fn handle(&mut self, _: Deadline, _: &mut Context<Self>) -> Self::Result {
        let back = self.0.service("back").unwrap();
        let call = async move { back.ask(Deadline).await.ok().flatten() };
        // The call runs after `handle` returns: in the scope of the call being handled,
        // so that it inherits its deadline.
        match CallInfo::current() {
            Some(info) => Box::pin(info.scope(call)),
            None => Box::pin(call),
        }
    }
}

#[actormesh::handler]
impl Handler<Get> for Front {
    type Result = ResponseFuture<String>;
    fn handle(&mut self, _: Get, _: &mut Context<Self>) -> Self::Result {
        let back = self.0.service("back").unwrap();
        let call = async move { back.ask(Get).await.unwrap_or_else(|e| e.to_string()) };
        match CallInfo::current() {
            Some(info) => Box::pin(info.scope(call)),
            None => Box::pin(call),
        }
    }
}

/// One serving node: its mesh (so rate limits apply where calls arrive) and behaviour.
struct Served {
    mesh: Mesh,
    behaviour: Arc<Behaviour>,
    version: String,
}

struct Cluster {
    ca: LocalCa,
    master: Node,
    servers: Vec<Served>,
    caller: Mesh,
}

impl Cluster {
    /// Servers named `a`, `b`… with these versions, each serving actor `svc`.
    fn new(versions: &[&str]) -> Self {
        let ca = LocalCa::new("policy.test").unwrap();
        let master = ca.start_node("master").unwrap();
        let servers = versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let name = ((b'a' + i as u8) as char).to_string();
                let node = ca.start_node(&name).unwrap();
                let behaviour = Arc::new(Behaviour::default());
                node.spawn(
                    "svc",
                    Server {
                        name: name.clone(),
                        behaviour: behaviour.clone(),
                    },
                )
                .unwrap();
                Served {
                    mesh: Mesh::start(&node, MeshOptions::default()).unwrap(),
                    behaviour,
                    version: v.to_string(),
                }
            })
            .collect();
        let caller_node = ca.start_node("caller").unwrap();
        let caller = Mesh::start(&caller_node, MeshOptions::default()).unwrap();
        Self {
            ca,
            master,
            servers,
            caller,
        }
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.servers
            .iter()
            .map(|s| endpoint(s.mesh.node(), "svc", &s.version))
            .collect()
    }

    /// Pushes `services` as version `version` to every node's proxy.
    async fn push(&self, version: u64, services: Vec<Service>) {
        let meshes: Vec<&Mesh> = self
            .servers
            .iter()
            .map(|s| &s.mesh)
            .chain(std::iter::once(&self.caller))
            .collect();
        self.push_to(&meshes, version, services).await;
    }

    /// Pushes `services` as a full snapshot of version `version` to these meshes' proxies.
    async fn push_to(&self, meshes: &[&Mesh], version: u64, services: Vec<Service>) {
        let push = Push {
            version,
            kind: PushKind::Full,
            services,
            removed: vec![],
            revoked: vec![],
            mesh: Default::default(),
        };
        for m in meshes {
            let applied = self
                .master
                .actor_ref(m.node().local_addr(), PROXY_ACTOR)
                .ask(push.clone())
                .await
                .unwrap();
            assert_eq!(applied, Ok(version));
        }
    }

    /// The caller's live view of `svc`'s endpoints.
    async fn live(&self) -> Vec<EndpointLive> {
        self.master
            .actor_ref(self.caller.node().local_addr(), PROXY_ACTOR)
            .ask(DumpEndpoints("default/svc".parse().unwrap()))
            .await
            .unwrap()
            .unwrap()
    }

    fn by_name(&self, name: &str) -> &Behaviour {
        let i = (name.as_bytes()[0] - b'a') as usize;
        &self.servers[i].behaviour
    }
}

fn endpoint(node: &Node, actor: &str, version: &str) -> Endpoint {
    let id = node.identity().to_string();
    let name = id.rsplit('/').next().unwrap().to_string();
    Endpoint {
        id: name,
        node: id,
        addr: node.local_addr(),
        actor: actor.into(),
        version: version.into(),
        labels: BTreeMap::from([("version".into(), version.into())]),
        weight: 1,
        zone: None,
    }
}

/// Service `default/svc` over `endpoints` with this Route and DestinationPolicy (JSON specs;
/// empty: none).
fn svc(endpoints: Vec<Endpoint>, route: &str, policy: &str) -> Service {
    Service {
        name: "default/svc".parse().unwrap(),
        labels: BTreeMap::new(),
        balancer: BalancerKind::RoundRobin,
        locality: false,
        endpoints,
        traffic: Traffic {
            route: (!route.is_empty()).then(|| Applied {
                object: "default/svc".into(),
                spec: serde_json::from_str(route).expect("route JSON"),
            }),
            policy: (!policy.is_empty()).then(|| Applied {
                object: "default/svc-policy".into(),
                spec: serde_json::from_str(policy).expect("policy JSON"),
            }),
            authz: Vec::new(),
        },
        hosts: Vec::new(),
    }
}

const SUBSETS: &str = r#"{"service":"svc","subsets":[{"name":"v1","labels":{"version":"v1"}},{"name":"v2","labels":{"version":"v2"}}]}"#;

/// Runs `n` calls of `f`, at most `concurrency` at once; the results as they end.
async fn calls<T, F, Fut>(n: usize, concurrency: usize, f: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    use futures::StreamExt;
    futures::stream::iter((0..n).map(|_| f()))
        .buffer_unordered(concurrency)
        .collect()
        .await
}

#[actix::test]
async fn a_90_10_canary_lands_within_2_points_over_10000_calls() {
    let c = Cluster::new(&["v1", "v1", "v2"]);
    let route = r#"{"service":"svc","rules":[{"split":[{"subset":"v1","weight":90},{"subset":"v2","weight":10}]}]}"#;
    c.push(1, vec![svc(c.endpoints(), route, SUBSETS)]).await;
    let s = c.caller.service("svc").unwrap();
    let got = calls(10_000, 200, || s.ask(Get)).await;
    let v2 = got.iter().filter(|r| r.as_deref() == Ok("c")).count();
    let ok = got.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 10_000, "every call answered");
    let share = v2 as f64 / 100.0;
    assert!(
        (8.0..=12.0).contains(&share),
        "v2 got {share} % of the calls"
    );
    // v1's two endpoints share its 90 %.
    assert!(c.by_name("a").arrivals() > 4000 && c.by_name("b").arrivals() > 4000);
}

#[actix::test]
async fn a_route_on_a_metadata_value_sends_only_the_matching_calls() {
    let c = Cluster::new(&["v1", "v2"]);
    let route = r#"{"service":"svc","rules":[
        {"match":{"metadata":{"end-user":{"exact":"jason"}}},"split":[{"subset":"v2","weight":100}]},
        {"split":[{"subset":"v1","weight":100}]}]}"#;
    c.push(1, vec![svc(c.endpoints(), route, SUBSETS)]).await;
    let s = c.caller.service("svc").unwrap();
    let jason = CallOptions::default().metadata("end-user", "jason");
    let other = CallOptions::default().metadata("end-user", "mia");
    for _ in 0..50 {
        assert_eq!(s.ask_with(Get, &jason).await.unwrap(), "b");
        assert_eq!(s.ask_with(Get, &other).await.unwrap(), "a");
        assert_eq!(s.ask(Get).await.unwrap(), "a");
    }
    assert_eq!(c.by_name("b").arrivals(), 50);
    // A subset no policy defines is a clear error naming it.
    let bad = r#"{"service":"svc","rules":[{"split":[{"subset":"v9","weight":100}]}]}"#;
    c.push(2, vec![svc(c.endpoints(), bad, SUBSETS)]).await;
    let e = s.ask(Get).await.unwrap_err();
    assert!(
        matches!(&e, AskError::NoEndpoints { service } if service.contains("subset v9")),
        "{e}"
    );
}

#[actix::test]
async fn a_route_one_hop_down_matches_the_metadata_the_first_call_propagates() {
    let c = Cluster::new(&["v1", "v2"]);
    let front_node = c.ca.start_node("front").unwrap();
    let front_mesh = Mesh::start(&front_node, MeshOptions::default()).unwrap();
    front_node
        .spawn("front", Front(front_mesh.clone()))
        .unwrap();
    let mut front = svc(vec![endpoint(&front_node, "front", "v1")], "", "");
    front.name = "default/front".parse().unwrap();
    let route = r#"{"service":"back","rules":[
        {"match":{"metadata":{"end-user":{"exact":"jason"}}},"split":[{"subset":"v2","weight":100}]},
        {"split":[{"subset":"v1","weight":100}]}]}"#;
    let mut back = svc(
        c.endpoints(),
        route,
        &SUBSETS.replace(r#""svc""#, r#""back""#),
    );
    back.name = "default/back".parse().unwrap();
    c.push_to(&[&c.caller, &front_mesh], 1, vec![front, back])
        .await;
    let s = c.caller.service("front").unwrap();
    let propagated = CallOptions::default().propagated("end-user", "jason");
    let first_hop_only = CallOptions::default().metadata("end-user", "jason");
    for _ in 0..10 {
        assert_eq!(
            s.ask_with(Get, &propagated).await.unwrap(),
            "b",
            "v2 for jason"
        );
        assert_eq!(
            s.ask_with(Get, &first_hop_only).await.unwrap(),
            "a",
            "not propagated: the second hop does not see it"
        );
    }
}

/// `a` does not serve `svc` (no such actor there); `b` does.
fn one_broken(c: &Cluster) -> Vec<Endpoint> {
    let mut eps = c.endpoints();
    eps[0].actor = "missing".into();
    eps
}

#[actix::test]
async fn retries_go_to_another_endpoint() {
    let c = Cluster::new(&["v1", "v1"]);
    let route = r#"{"service":"svc","rules":[{"retries":{"attempts":2,"on":["unavailable"],"backoff":{"base":"1ms","max":"2ms"}}}]}"#;
    c.push(1, vec![svc(one_broken(&c), route, "")]).await;
    let s = c.caller.service("svc").unwrap();
    for _ in 0..20 {
        assert_eq!(s.ask(Get).await.unwrap(), "b", "retried on b");
    }
    assert!(
        c.by_name("b").retries() >= 1,
        "the first call to a is retried on b"
    );
    // Under hashing a retry goes to the next endpoint for the key, not the same one again:
    // with one retry, every key answers (a new broken endpoint, not yet ejected).
    let mut eps = one_broken(&c);
    eps[0].actor = "missing-again".into();
    let mut hashed = svc(
        eps,
        &route.replace(r#""attempts":2"#, r#""attempts":1"#),
        "",
    );
    hashed.balancer = BalancerKind::Hash;
    c.push(2, vec![hashed]).await;
    let s = c.caller.service("svc").unwrap();
    for key in 0..20u32 {
        let keyed = CallOptions::default().hash_key(key.to_le_bytes());
        assert_eq!(s.ask_with(Get, &keyed).await.unwrap(), "b", "key {key}");
    }
    // Without the route's retries, the same failure reaches the caller (a new endpoint
    // there, so a's ejection above does not hide it).
    let mut eps = one_broken(&c);
    eps[0].actor = "missing-too".into();
    c.push(3, vec![svc(eps, "", "")]).await;
    let s = c.caller.service("svc").unwrap();
    let mut failed = 0;
    for _ in 0..4 {
        failed += usize::from(s.ask(Get).await.is_err());
    }
    assert!(failed >= 1, "no retries, so a's answer is seen");
}

#[actix::test]
async fn only_idempotent_messages_are_retried_after_a_timeout() {
    let c = Cluster::new(&["v1", "v1"]);
    c.by_name("a").delay_ms.store(10_000, Ordering::SeqCst);
    // Tries of 500 ms: b answers well within one, however loaded the machine is.
    let route = r#"{"service":"svc","rules":[{"timeout":"5s","retries":{"attempts":1,"per_try_timeout":"500ms","on":["timeout"],"backoff":{"base":"1ms","max":"1ms"}}}]}"#;
    c.push(1, vec![svc(c.endpoints(), route, "")]).await;
    let s = c.caller.service("svc").unwrap();
    // Round robin: of two calls in a row, one goes to a. Put first: a's failures would
    // eject it after two.
    let mut timeouts = 0;
    for _ in 0..2 {
        match s.ask(Put).await {
            Ok(who) => assert_eq!(who, "b"),
            Err(AskError::Timeout { .. }) => timeouts += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        timeouts, 1,
        "Put (not idempotent) timed out on a, not retried"
    );
    assert_eq!(c.by_name("b").retries(), 0);
    for _ in 0..2 {
        assert_eq!(s.ask(Get).await.unwrap(), "b");
    }
    assert_eq!(
        c.by_name("b").retries(),
        1,
        "Get (idempotent) timed out on a and was retried on b"
    );
}

#[actix::test]
async fn once_the_budget_is_spent_retries_stay_within_ratio_and_minimum() {
    let c = Cluster::new(&["v1", "v1"]);
    for s in &c.servers {
        s.behaviour.delay_ms.store(5_000, Ordering::SeqCst);
    }
    // Every try times out; each could be retried 3 times. The budget: 20 % of calls, no
    // minimum per second.
    // Tries are long enough (300 ms) to reach the server however loaded the machine is,
    // so the server sees every retry.
    let route = r#"{"service":"svc","rules":[{"timeout":"2s","retries":{"attempts":3,"per_try_timeout":"300ms","on":["timeout"],"backoff":{"base":"1ms","max":"1ms"}}}]}"#;
    let policy = r#"{"service":"svc","retry_budget":{"ratio":0.2,"min_per_second":0,"ttl":"10s"}}"#;
    c.push(1, vec![svc(c.endpoints(), route, policy)]).await;
    let s = c.caller.service("svc").unwrap();
    let got = calls(50, 50, || s.ask(Get)).await;
    assert!(got.iter().all(Result::is_err));
    let retries: u32 = c.servers.iter().map(|s| s.behaviour.retries()).sum();
    let arrivals: u32 = c.servers.iter().map(|s| s.behaviour.arrivals()).sum();
    assert!(
        retries <= 10,
        "50 calls allow 10 retries, {retries} were made"
    );
    assert!(retries >= 5, "the budget was used: {retries} retries");
    assert_eq!(arrivals, 50 + retries);
}

#[actix::test]
async fn the_callee_gets_the_earlier_of_the_per_try_and_overall_deadline_and_it_propagates() {
    let c = Cluster::new(&["v1"]);
    // Bounds with seconds of margin: a loaded machine may take tens of milliseconds to
    // carry a call, and the callee reads its deadline when the handler runs.
    let route = r#"{"service":"svc","rules":[{"timeout":"10s","retries":{"attempts":1,"per_try_timeout":"1s"}}]}"#;
    c.push(1, vec![svc(c.endpoints(), route, "")]).await;
    let s = c.caller.service("svc").unwrap();
    let got = s.ask(Deadline).await.unwrap().unwrap();
    assert!(got <= 1_000, "per-try 1s of 10s: {got} ms");
    // Without a per-try timeout the try has the overall one.
    let overall = r#"{"service":"svc","rules":[{"timeout":"10s"}]}"#;
    c.push(2, vec![svc(c.endpoints(), overall, "")]).await;
    let got = s.ask(Deadline).await.unwrap().unwrap();
    assert!(got <= 10_000 && got > 1_000, "overall 10s: {got} ms");
    // A caller's shorter deadline wins over the route's.
    let short = CallOptions::default().timeout(Duration::from_millis(80));
    let got = s.ask_with(Deadline, &short).await.unwrap().unwrap();
    assert!(got <= 80, "{got} ms");

    let whole = r#"{"service":"svc","rules":[{"timeout":"300ms"}]}"#;
    // Two hops: caller → front (route: 300ms) → back (no route): back gets what is left.
    let front_node = c.ca.start_node("front").unwrap();
    let front_mesh = Mesh::start(&front_node, MeshOptions::default()).unwrap();
    front_node
        .spawn("front", Front(front_mesh.clone()))
        .unwrap();
    let mut front = svc(vec![endpoint(&front_node, "front", "v1")], whole, "");
    front.name = "default/front".parse().unwrap();
    front.traffic.route.as_mut().unwrap().spec.service = "front".into();
    let mut back = svc(c.endpoints(), "", "");
    back.name = "default/back".parse().unwrap();
    c.push_to(&[&c.caller, &front_mesh], 3, vec![front, back])
        .await;
    let got = c
        .caller
        .service("front")
        .unwrap()
        .ask(Deadline)
        .await
        .unwrap()
        .expect("back had a deadline");
    assert!(got < 300, "back's deadline is front's remaining: {got} ms");
}

#[actix::test]
async fn tries_stop_at_the_overall_timeout() {
    let c = Cluster::new(&["v1", "v1"]);
    for s in &c.servers {
        s.behaviour.delay_ms.store(10_000, Ordering::SeqCst);
    }
    // Tries of 1 s in 2.5 s: two whole ones and a half, each with time to arrive.
    let route = r#"{"service":"svc","rules":[{"timeout":"2500ms","retries":{"attempts":5,"per_try_timeout":"1s","on":["timeout"],"backoff":{"base":"1ms","max":"1ms"}}}]}"#;
    c.push(1, vec![svc(c.endpoints(), route, "")]).await;
    let e = c.caller.service("svc").unwrap().ask(Get).await.unwrap_err();
    assert!(matches!(e, AskError::Timeout { .. }), "{e}");
    let arrivals: u32 = c.servers.iter().map(|s| s.behaviour.arrivals()).sum();
    assert!(
        (2..=3).contains(&arrivals),
        "1 s tries within 2.5 s: {arrivals}"
    );
}

#[actix::test]
async fn the_breaker_opens_at_once_at_its_limit_and_closes_when_calls_finish() {
    let c = Cluster::new(&["v1"]);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *c.by_name("a").hold.lock().unwrap() = Some(gate.clone());
    let policy = r#"{"service":"svc","circuit_breaker":{"max_pending":2}}"#;
    c.push(1, vec![svc(c.endpoints(), "", policy)]).await;
    let s = c.caller.service("svc").unwrap();
    let first = tokio::spawn({
        let s = s.clone();
        async move { s.ask(Get).await }
    });
    let second = tokio::spawn({
        let s = s.clone();
        async move { s.ask(Get).await }
    });
    // Both are at the server, waiting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.by_name("a").arrivals() < 2 {
        assert!(Instant::now() < deadline, "the two calls never arrived");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let asked = Instant::now();
    let e = s.ask(Get).await.unwrap_err();
    assert!(
        matches!(&e, AskError::CircuitOpen { limit, .. } if limit == "max pending"),
        "{e}"
    );
    assert!(asked.elapsed() < Duration::from_secs(1), "answered at once");
    assert_eq!(c.by_name("a").arrivals(), 2, "the third was never sent");
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().unwrap(), "a");
    assert_eq!(second.await.unwrap().unwrap(), "a");
    gate.add_permits(1);
    assert_eq!(s.ask(Get).await.unwrap(), "a", "closed again");
}

#[actix::test]
async fn a_breaker_tripped_by_failures_refuses_at_once_then_half_opens_for_one_trial() {
    let c = Cluster::new(&["v1"]);
    let mut eps = c.endpoints();
    eps[0].actor = "later".into();
    let policy =
        r#"{"service":"svc","circuit_breaker":{"consecutive_failures":3,"open_for":"300ms"}}"#;
    c.push(1, vec![svc(eps, "", policy)]).await;
    let s = c.caller.service("svc").unwrap();
    for _ in 0..3 {
        let e = s.ask(Get).await.unwrap_err();
        assert!(matches!(e, AskError::NoSuchActor { .. }), "{e}");
    }
    // Tripped: refused at once, never sent.
    let e = s.ask(Get).await.unwrap_err();
    assert!(
        matches!(&e, AskError::CircuitOpen { limit, .. } if limit.contains("failures in a row")),
        "{e}"
    );
    let live = c.live().await;
    assert_eq!(
        live[0].breaker.as_deref(),
        Some("open: open after failures in a row")
    );
    // The actor comes up; after the open time one trial call goes through and closes it.
    let behaviour = Arc::new(Behaviour::default());
    c.servers[0]
        .mesh
        .node()
        .spawn(
            "later",
            Server {
                name: "a".into(),
                behaviour: behaviour.clone(),
            },
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.ask(Get).await {
            Ok(who) => {
                assert_eq!(who, "a");
                break;
            }
            Err(AskError::CircuitOpen { .. }) => {
                assert_eq!(behaviour.arrivals(), 0, "nothing is sent while open");
                assert!(Instant::now() < deadline, "it never half-opened");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(behaviour.arrivals(), 1, "one trial");
    for _ in 0..5 {
        assert_eq!(s.ask(Get).await.unwrap(), "a", "closed after the trial");
    }
    assert_eq!(c.live().await[0].breaker.as_deref(), Some("closed"));
}

#[actix::test]
async fn an_outlier_is_ejected_within_the_cap_and_returns_after_its_ejection_time() {
    let c = Cluster::new(&["v1", "v1", "v1"]);
    let mut eps = c.endpoints();
    eps[0].actor = "late".into();
    eps[1].actor = "missing".into();
    let policy =
        r#"{"service":"svc","outlier_detection":{"consecutive_errors":2,"base_ejection":"300ms"}}"#;
    c.push(1, vec![svc(eps, "", policy)]).await;
    let s = c.caller.service("svc").unwrap();
    for _ in 0..12 {
        let _ = s.ask(Get).await;
    }
    let live = c.live().await;
    let ejected: Vec<&str> = live
        .iter()
        .filter(|e| e.ejected_for_ms.is_some())
        .map(|e| e.id.as_str())
        .collect();
    // Both a and b fail, but 10 % of 3 endpoints allows one ejection at a time.
    assert_eq!(ejected.len(), 1, "{live:?}");
    let out = ejected[0].to_string();
    // The ejected one comes back once it serves: start its actor, and wait for it to be
    // called again after its ejection time (a probe).
    let node = c.servers[(out.as_bytes()[0] - b'a') as usize].mesh.node();
    let back = Arc::new(Behaviour::default());
    let actor = if out == "a" { "late" } else { "missing" };
    node.spawn(
        actor,
        Server {
            name: out.clone(),
            behaviour: back.clone(),
        },
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while back.arrivals() == 0 {
        assert!(Instant::now() < deadline, "{out} never came back");
        let _ = s.ask(Get).await;
    }
    let live = c.live().await;
    let now_out: Vec<&EndpointLive> = live.iter().filter(|e| e.id == out).collect();
    assert_eq!(now_out[0].ejected_for_ms, None, "{live:?}");
}

#[actix::test]
async fn injected_faults_hit_their_share_of_10000_calls() {
    let c = Cluster::new(&["v1"]);
    // Aborts for 25 %; delays longer than the timeout (so they show as timeouts) for 10 %.
    let route = r#"{"service":"svc","rules":[{"timeout":"3s","fault":{"abort":{"error":"unavailable","percent":25},"delay":{"fixed":"10s","percent":10}}}]}"#;
    c.push(1, vec![svc(c.endpoints(), route, "")]).await;
    let s = c.caller.service("svc").unwrap();
    // Enough at once that the delayed calls (3 s each) do not hold up the rest, and a 3 s
    // timeout that no call that is not delayed comes near.
    let got = calls(10_000, 1_000, || s.ask(Get)).await;
    let timeouts = got
        .iter()
        .filter(|r| matches!(r, Err(AskError::Timeout { .. })))
        .count();
    let aborts = got
        .iter()
        .filter(|r| matches!(r, Err(AskError::NotDelivered { reason }) if reason.contains("fault injected")))
        .count();
    let share = |n: usize| n as f64 / 100.0;
    assert!(
        (8.0..=12.0).contains(&share(timeouts)),
        "delays {}",
        share(timeouts)
    );
    // Aborts apply to the calls not delayed past their timeout: 25 % of 90 %.
    assert!(
        (20.5..=24.5).contains(&share(aborts)),
        "aborts {}",
        share(aborts)
    );
    assert_eq!(
        got.iter().filter(|r| r.is_ok()).count() as u32,
        c.by_name("a").arrivals()
    );
    // A delay shorter than the timeout delays the call, which then succeeds.
    let delayed =
        r#"{"service":"svc","rules":[{"fault":{"delay":{"fixed":"30ms","percent":100}}}]}"#;
    c.push(2, vec![svc(c.endpoints(), delayed, "")]).await;
    let t = Instant::now();
    assert_eq!(s.ask(Get).await.unwrap(), "a");
    assert!(t.elapsed() >= Duration::from_millis(30));
}

#[actix::test]
async fn a_mirror_gets_its_share_and_its_slow_replies_never_slow_the_caller() {
    let c = Cluster::new(&["v1", "v2"]);
    c.by_name("b").delay_ms.store(1_000, Ordering::SeqCst);
    let route = r#"{"service":"svc","rules":[{"split":[{"subset":"v1","weight":100}],"mirror":{"subset":"v2","percent":30}}]}"#;
    c.push(1, vec![svc(c.endpoints(), route, SUBSETS)]).await;
    let s = c.caller.service("svc").unwrap();
    let mut latencies = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        assert_eq!(s.ask(Get).await.unwrap(), "a");
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let p99 = latencies[989];
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    // The copies arrive within moments of their calls; wait until no more come.
    let mut seen = c.by_name("b").arrivals();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = c.by_name("b").arrivals();
        if now == seen || Instant::now() > deadline {
            break;
        }
        seen = now;
    }
    let share = seen as f64 / 10.0;
    assert!((25.0..=35.0).contains(&share), "mirror got {share} %");
}

#[actix::test]
async fn a_rate_limit_admits_no_more_than_rate_times_time_plus_burst_where_calls_arrive() {
    let c = Cluster::new(&["v1"]);
    let policy = r#"{"service":"svc","rate_limit":{"rate":20,"burst":5}}"#;
    c.push(1, vec![svc(c.endpoints(), "", policy)]).await;
    let s = c.caller.service("svc").unwrap();
    let started = Instant::now();
    let got = calls(200, 50, || s.ask(Get)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let ok = got.iter().filter(|r| r.is_ok()).count() as f64;
    let limited = got
        .iter()
        .filter(|r| matches!(r, Err(AskError::RateLimited { service }) if service == "default/svc"))
        .count();
    assert!(ok <= 20.0 * elapsed + 5.0, "{ok} admitted in {elapsed} s");
    assert!(ok >= 5.0, "the burst is admitted");
    assert_eq!(ok as usize + limited, 200, "the rest are RateLimited");
    assert_eq!(
        c.by_name("a").arrivals() as f64,
        ok,
        "refused calls never reached the actor"
    );
    // Calls from the endpoint's own node are limited too.
    let local = c.servers[0].mesh.service("svc").unwrap();
    let got = calls(50, 50, || local.ask(Get)).await;
    assert!(got
        .iter()
        .any(|r| matches!(r, Err(AskError::RateLimited { .. }))));
    // Without the limit, the gate is gone.
    c.push(2, vec![svc(c.endpoints(), "", "")]).await;
    let got = calls(100, 50, || s.ask(Get)).await;
    assert!(got.iter().all(Result::is_ok));
}
