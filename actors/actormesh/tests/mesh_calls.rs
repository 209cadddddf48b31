//! Calling by name across in-process nodes: a test node named `master` pushes hand-made
//! registries to each caller's `$proxy`, and calls by name reach the endpoints as the
//! service's balancer says.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use actix::prelude::*;
use actormesh::mesh::protocol::{DumpConfig, Push, PushKind, PushRefused, PROXY_ACTOR};
use actormesh::mesh::{
    BalancerKind, CallOptions, Endpoint, Mesh, MeshOptions, Revocation, Service,
};
use actormesh::prelude::{Deserialize, RemoteMessage, Serialize};
use actormesh::{AskError, LocalCa, Node};

#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.mesh.Who/v1", reply = String)]
struct Who;

/// Answers with its node's name.
struct Server(String);

impl Actor for Server {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Who> for Server {
    type Result = String;
    fn handle(&mut self, _: Who, _: &mut Context<Self>) -> String {
        self.0.clone()
    }
}

#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.mesh.Tenant/v1", reply = Option<String>)]
struct Tenant;

#[actormesh::handler]
impl Handler<Tenant> for Server {
    type Result = Option<String>;
    fn handle(&mut self, _: Tenant, _: &mut Context<Self>) -> Option<String> {
        let info = actormesh::CallInfo::current()?;
        info.metadata().get("tenant").map(str::to_string)
    }
}

#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.mesh.Relay/v1", reply = String)]
struct Relay;

/// Calls `default/echo` by name from inside its handler.
struct Front(Mesh);

impl Actor for Front {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Relay> for Front {
    type Result = ResponseFuture<String>;
    fn handle(&mut self, _: Relay, _: &mut Context<Self>) -> Self::Result {
        let echo = self.0.service("echo").unwrap();
        Box::pin(async move {
            match echo.ask(Who).await {
                Ok(name) => format!("via front: {name}"),
                Err(e) => format!("error: {e}"),
            }
        })
    }
}

struct Cluster {
    ca: LocalCa,
    master: Node,
    servers: Vec<Node>,
}

impl Cluster {
    fn new(names: &[&str]) -> Self {
        let ca = LocalCa::new("mesh.test").unwrap();
        let master = ca.start_node("master").unwrap();
        let servers = names
            .iter()
            .map(|n| {
                let node = ca.start_node(n).unwrap();
                node.spawn("echo", Server(n.to_string())).unwrap();
                node
            })
            .collect();
        Self {
            ca,
            master,
            servers,
        }
    }

    fn caller(&self, name: &str, options: MeshOptions) -> Mesh {
        let node = self.ca.start_node(name).unwrap();
        Mesh::start(&node, options).unwrap()
    }

    async fn push(&self, to: &Mesh, push: Push) -> Result<u64, PushRefused> {
        self.master
            .actor_ref(to.node().local_addr(), PROXY_ACTOR)
            .ask(push)
            .await
            .unwrap()
    }
}

fn endpoint(node: &Node, actor: &str, weight: u32) -> Endpoint {
    let id = node.identity().to_string();
    let name = id.rsplit('/').next().unwrap().to_string();
    Endpoint {
        id: name.clone(),
        node: id,
        addr: node.local_addr(),
        actor: actor.into(),
        version: "v1".into(),
        labels: BTreeMap::from([("version".into(), "v1".into())]),
        weight,
        zone: None,
    }
}

fn service(name: &str, balancer: BalancerKind, endpoints: Vec<Endpoint>) -> Service {
    Service {
        name: name.parse().unwrap(),
        labels: BTreeMap::new(),
        balancer,
        locality: false,
        endpoints,
        traffic: Default::default(),
        hosts: Vec::new(),
    }
}

fn full(version: u64, services: Vec<Service>) -> Push {
    Push {
        version,
        kind: PushKind::Full,
        services,
        removed: vec![],
        revoked: vec![],
        mesh: Default::default(),
    }
}

async fn tally(
    mesh: &Mesh,
    name: &str,
    calls: usize,
    options: CallOptions,
) -> HashMap<String, usize> {
    let svc = mesh.service(name).unwrap().with_options(options);
    let mut counts = HashMap::new();
    for _ in 0..calls {
        let who = svc.ask(Who).await.unwrap();
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

#[actix::test]
async fn round_robin_by_name_gives_each_endpoint_its_turn_and_a_delta_removes_one() {
    let c = Cluster::new(&["a", "b", "c"]);
    let mesh = c.caller("caller", MeshOptions::default());
    let eps: Vec<Endpoint> = c.servers.iter().map(|n| endpoint(n, "echo", 1)).collect();
    let push = full(
        1,
        vec![service("echo", BalancerKind::RoundRobin, eps.clone())],
    );
    assert_eq!(c.push(&mesh, push).await, Ok(1));
    assert_eq!(mesh.version(), Some(1));

    let counts = tally(&mesh, "default/echo", 300, CallOptions::default()).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n == 100), "{counts:?}");

    // A delta takes b out: it gets no more calls.
    let delta = Push {
        version: 2,
        kind: PushKind::Delta { from: 1 },
        services: vec![service(
            "echo",
            BalancerKind::RoundRobin,
            vec![eps[0].clone(), eps[2].clone()],
        )],
        removed: vec![],
        revoked: vec![],
        mesh: Default::default(),
    };
    assert_eq!(c.push(&mesh, delta).await, Ok(2));
    let counts = tally(&mesh, "echo", 100, CallOptions::default()).await;
    assert_eq!(counts.get("b"), None, "{counts:?}");
    assert_eq!(counts.get("a"), Some(&50), "{counts:?}");

    // What the proxy applied, as the operator sees it.
    let dump = c
        .master
        .actor_ref(mesh.node().local_addr(), PROXY_ACTOR)
        .ask(DumpConfig)
        .await
        .unwrap();
    assert_eq!(dump.version, Some(2));
    assert_eq!(dump.services[0].endpoints.len(), 2);
}

#[actix::test]
async fn weighted_and_hash_balancers_by_name() {
    let c = Cluster::new(&["a", "b", "c", "d"]);
    let mesh = c.caller("caller", MeshOptions::default());
    let weighted = service(
        "heavy",
        BalancerKind::Weighted,
        vec![
            endpoint(&c.servers[0], "echo", 3),
            endpoint(&c.servers[1], "echo", 1),
        ],
    );
    let four: Vec<Endpoint> = c.servers.iter().map(|n| endpoint(n, "echo", 1)).collect();
    let hash = service("sticky", BalancerKind::Hash, four.clone());
    assert_eq!(c.push(&mesh, full(1, vec![weighted, hash])).await, Ok(1));

    let counts = tally(&mesh, "heavy", 400, CallOptions::default()).await;
    assert_eq!((counts["a"], counts["b"]), (300, 100));

    // The same key reaches the same endpoint; removing d moves none of the other keys.
    let sticky = mesh.service("sticky").unwrap();
    let mut owner = HashMap::new();
    for k in 0..200 {
        let o = CallOptions::default().hash_key(format!("user-{k}"));
        let first = sticky.ask_with(Who, &o).await.unwrap();
        assert_eq!(sticky.ask_with(Who, &o).await.unwrap(), first);
        owner.insert(k, first);
    }
    let three = service("sticky", BalancerKind::Hash, four[..3].to_vec());
    let delta = Push {
        version: 2,
        kind: PushKind::Delta { from: 1 },
        services: vec![three],
        removed: vec![],
        revoked: vec![],
        mesh: Default::default(),
    };
    assert_eq!(c.push(&mesh, delta).await, Ok(2));
    for (k, was) in &owner {
        let o = CallOptions::default().hash_key(format!("user-{k}"));
        let now = sticky.ask_with(Who, &o).await.unwrap();
        if was != "d" {
            assert_eq!(&now, was, "key {k} moved");
        }
    }
}

#[actix::test]
async fn no_endpoints_is_a_clear_error_naming_the_service() {
    let c = Cluster::new(&[]);
    let mesh = c.caller("caller", MeshOptions::default());
    let unknown = mesh.service("shop/ratings").unwrap();
    match unknown.ask(Who).await {
        Err(e @ AskError::NoEndpoints { .. }) => {
            assert!(e.to_string().contains("shop/ratings"), "{e}");
            assert!(e.is_retry_safe(), "nothing was sent");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        unknown.tell(Who).await,
        Err(actormesh::TellError::NotDelivered(..))
    ));
    let empty = service("empty", BalancerKind::P2c, vec![]);
    c.push(&mesh, full(1, vec![empty])).await.unwrap();
    match mesh.service("empty").unwrap().ask(Who).await {
        Err(AskError::NoEndpoints { service }) => assert_eq!(service, "default/empty"),
        other => panic!("{other:?}"),
    }
    assert!(mesh.service("Bad/Name").is_err());
}

#[actix::test]
async fn the_proxy_refuses_pushes_out_of_order_and_from_others_than_the_master() {
    let c = Cluster::new(&["a"]);
    let mesh = c.caller("caller", MeshOptions::default());
    assert_eq!(c.push(&mesh, full(5, vec![])).await, Ok(5));
    assert_eq!(
        c.push(&mesh, full(4, vec![])).await,
        Err(PushRefused::Older {
            offered: 4,
            applied: 5
        })
    );
    let stray = Push {
        kind: PushKind::Delta { from: 3 },
        ..full(6, vec![])
    };
    assert_eq!(
        c.push(&mesh, stray).await,
        Err(PushRefused::WrongBase {
            from: 3,
            holds: Some(5)
        })
    );
    let from_a = c.servers[0]
        .actor_ref(mesh.node().local_addr(), PROXY_ACTOR)
        .ask(full(9, vec![]))
        .await
        .unwrap();
    assert!(
        matches!(&from_a, Err(PushRefused::Forbidden { caller }) if caller.ends_with("/node/a")),
        "{from_a:?}"
    );
    assert_eq!(mesh.version(), Some(5));
}

#[actix::test]
async fn locality_keeps_calls_on_the_callers_node_and_handlers_call_by_name() {
    let c = Cluster::new(&["a"]);
    let mesh = c.caller("caller", MeshOptions::default());
    let node = mesh.node().clone();
    node.spawn("echo", Server("local".into())).unwrap();
    let mut svc = service(
        "echo",
        BalancerKind::RoundRobin,
        vec![
            endpoint(&c.servers[0], "echo", 1),
            endpoint(&node, "echo", 1),
        ],
    );
    svc.locality = true;
    c.push(&mesh, full(1, vec![svc])).await.unwrap();
    let counts = tally(&mesh, "echo", 50, CallOptions::default()).await;
    assert_eq!(counts.get("local"), Some(&50), "{counts:?}");
    assert_eq!(
        node.lanes_to(c.servers[0].local_addr()),
        0,
        "no call left the node"
    );

    // From inside a handler.
    let front = node.spawn("front", Front(mesh.clone())).unwrap();
    assert_eq!(front.ask(Relay).await.unwrap(), "via front: local");
}

#[actix::test]
async fn an_endpoint_whose_node_is_gone_is_skipped() {
    let c = Cluster::new(&["a", "b", "c"]);
    let mesh = c.caller("caller", MeshOptions::default());
    let eps: Vec<Endpoint> = c.servers.iter().map(|n| endpoint(n, "echo", 1)).collect();
    c.push(
        &mesh,
        full(1, vec![service("echo", BalancerKind::RoundRobin, eps)]),
    )
    .await
    .unwrap();
    // Links to all three exist, then c goes.
    tally(&mesh, "echo", 30, CallOptions::default()).await;
    c.servers[2].shutdown();
    let svc = mesh.service("echo").unwrap();
    let mut errors = 0;
    let mut last = Vec::new();
    for _ in 0..60 {
        match svc.ask_timeout(Who, Duration::from_millis(500)).await {
            Ok(who) => last.push(who),
            Err(AskError::Unreachable { .. } | AskError::Timeout { .. }) => errors += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(errors <= 3, "{errors} errors");
    assert!(last.iter().rev().take(30).all(|w| w != "c"), "{last:?}");
}

#[actix::test]
async fn a_revocation_in_a_push_makes_the_node_refuse_that_identity() {
    let c = Cluster::new(&["a"]);
    let mesh = c.caller("caller", MeshOptions::default());
    let a = &c.servers[0];
    let to_caller = a.actor_ref(mesh.node().local_addr(), PROXY_ACTOR);
    assert!(
        to_caller.ask(DumpConfig).await.is_ok(),
        "a reaches the caller before"
    );
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000;
    let mut push = full(1, vec![]);
    push.revoked = vec![Revocation {
        id: a.identity().to_string(),
        until_ms: until,
    }];
    c.push(&mesh, push).await.unwrap();
    let after = a
        .actor_ref(mesh.node().local_addr(), PROXY_ACTOR)
        .ask_timeout(DumpConfig, Duration::from_secs(3))
        .await;
    assert!(after.is_err(), "a revoked node is refused: {after:?}");
}

/// A stand-in for the master's registry: records each subscription and answers it.
struct FakeRegistry(tokio::sync::mpsc::UnboundedSender<actormesh::mesh::protocol::Subscribe>);

impl Actor for FakeRegistry {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<actormesh::mesh::protocol::Subscribe> for FakeRegistry {
    type Result = Result<actormesh::mesh::protocol::Subscribed, actormesh::protocol::MasterRefusal>;
    fn handle(
        &mut self,
        m: actormesh::mesh::protocol::Subscribe,
        _: &mut Context<Self>,
    ) -> Self::Result {
        let _ = self.0.send(m);
        Ok(actormesh::mesh::protocol::Subscribed { version: 0 })
    }
}

#[actix::test]
async fn the_proxy_subscribes_and_subscribes_again_with_what_it_has_when_the_master_returns() {
    use actormesh::protocol::MASTER_ACTOR;
    let c = Cluster::new(&["a"]);
    let (tx, mut subs) = tokio::sync::mpsc::unbounded_channel();
    c.master
        .spawn(MASTER_ACTOR, FakeRegistry(tx.clone()))
        .unwrap();
    let mesh = c.caller(
        "caller",
        MeshOptions::default().master(c.master.local_addr()),
    );
    let first = subs.recv().await.unwrap();
    assert_eq!(first.addr, mesh.node().local_addr());
    assert_eq!(first.have, None);

    let eps = vec![endpoint(&c.servers[0], "echo", 1)];
    c.push(
        &mesh,
        full(7, vec![service("echo", BalancerKind::P2c, eps)]),
    )
    .await
    .unwrap();
    // The master goes: the proxy keeps serving what it applied.
    let gone = c.master.watch(&c.master.local_ref(MASTER_ACTOR));
    assert!(c.master.stop(MASTER_ACTOR));
    gone.await;
    let echo = mesh.service("echo").unwrap();
    assert_eq!(echo.ask(Who).await.unwrap(), "a");
    // It comes back: the proxy subscribes again, saying what it holds.
    c.master
        .spawn(MASTER_ACTOR, FakeRegistry(tx.clone()))
        .unwrap();
    let again = subs.recv().await.unwrap();
    assert_eq!(again.have, Some(7));
    assert_eq!(echo.ask(Who).await.unwrap(), "a");
}

#[test]
fn calls_by_name_can_be_spawned_on_any_runtime() {
    fn is_send<T: Send>(_: &T) {}
    let sys = actix::System::new();
    sys.block_on(async {
        let c = Cluster::new(&[]);
        let mesh = c.caller("caller", MeshOptions::default());
        let svc = mesh.service("echo").unwrap();
        let ask = svc.ask(Who);
        is_send(&ask);
        let tell = svc.tell(Who);
        is_send(&tell);
    });
}

#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.mesh.Slow/v1", reply = String)]
struct Slow;

/// Answers `Slow` after its delay.
struct Delayed(String, Duration);

impl Actor for Delayed {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Slow> for Delayed {
    type Result = ResponseFuture<String>;
    fn handle(&mut self, _: Slow, _: &mut Context<Self>) -> Self::Result {
        let (name, delay) = (self.0.clone(), self.1);
        Box::pin(async move {
            actix::clock::sleep(delay).await;
            name
        })
    }
}

#[actix::test]
async fn p2c_by_name_sends_little_to_an_endpoint_ten_times_slower() {
    let c = Cluster::new(&["a", "b", "c"]);
    // 5 ms against 50 ms: a fast endpoint's latency estimate is peak-sensitive, so one
    // stall of a loaded machine (tens of ms) must not make it look slower than c (10 ms
    // against 1 ms failed so under CI load: a 30 ms sample starved b for the whole test).
    for (i, n) in c.servers.iter().enumerate() {
        let delay = Duration::from_millis(if i == 2 { 50 } else { 5 });
        n.spawn("delayed", Delayed(["a", "b", "c"][i].into(), delay))
            .unwrap();
    }
    let mesh = c.caller("caller", MeshOptions::default());
    // Links first: a first call's dial would count as its endpoint's latency.
    for n in &c.servers {
        let direct = mesh.node().actor_ref(n.local_addr(), "delayed");
        direct.ask(Slow).await.unwrap();
    }
    let eps = c
        .servers
        .iter()
        .map(|n| endpoint(n, "delayed", 1))
        .collect();
    c.push(
        &mesh,
        full(1, vec![service("slowish", BalancerKind::P2c, eps)]),
    )
    .await
    .unwrap();
    let svc = mesh.service("slowish").unwrap();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        *counts.entry(svc.ask(Slow).await.unwrap()).or_insert(0) += 1;
    }
    let slow = counts.get("c").copied().unwrap_or(0);
    assert!(slow * 100 < 15 * 300, "{counts:?}");
    assert!(counts["a"] > 50 && counts["b"] > 50, "{counts:?}");
}

#[actix::test]
async fn an_endpoint_is_called_only_on_the_node_the_registry_names() {
    let c = Cluster::new(&["a", "b"]);
    let mesh = c.caller("caller", MeshOptions::default());
    // The registry says node b hosts this endpoint, but a answers at the address.
    let mut impostor = endpoint(&c.servers[0], "echo", 1);
    impostor.node = c.servers[1].identity().to_string();
    let svc = service("pinned", BalancerKind::RoundRobin, vec![impostor]);
    c.push(&mesh, full(1, vec![svc])).await.unwrap();
    match mesh.service("pinned").unwrap().ask(Who).await {
        Err(e @ AskError::NotDelivered { .. }) => {
            let why = e.to_string();
            assert!(why.contains("/node/a") && why.contains("/node/b"), "{why}");
        }
        other => panic!("expected NotDelivered, got {other:?}"),
    }
    // Metadata set on a call by name reaches the endpoint's handler.
    let honest = service(
        "honest",
        BalancerKind::RoundRobin,
        vec![endpoint(&c.servers[0], "echo", 1)],
    );
    let delta = Push {
        version: 2,
        kind: PushKind::Delta { from: 1 },
        services: vec![honest],
        removed: vec![],
        revoked: vec![],
        mesh: Default::default(),
    };
    c.push(&mesh, delta).await.unwrap();
    let o = CallOptions::default().metadata("tenant", "t1");
    let honest = mesh.service("honest").unwrap();
    assert_eq!(
        honest.ask_with(Tenant, &o).await.unwrap().as_deref(),
        Some("t1")
    );
    assert_eq!(honest.ask(Tenant).await.unwrap(), None);
}
