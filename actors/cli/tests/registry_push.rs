//! The master's side of the push, end to end in one process. The agent's real Proxy
//! (`AgentHandle::mesh`) and the master's own (`MasterHandle::mesh`) subscribe by
//! themselves and apply the endpoints as they come up (calls by name reach them);
//! `proxy-status` shows them converged and `proxy-config` asks the node. A
//! second subscriber, a client's node with a stand-in `$proxy` (a test double that applies
//! full snapshots and deltas, refuses a delta from a base it does not hold, and takes its
//! time to acknowledge a removal), shows that pushes are one snapshot and then deltas, and
//! that the kill of an endpoint on scale-down waits until every proxy acknowledged its
//! removal.

mod inproc;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use actormesh::agent::tasks::ActorHost;
use actormesh::mesh::protocol::{
    DumpConfig, ProxyConfig, Push, PushKind, PushRefused, Subscribe, PROXY_ACTOR,
};
use actormesh::mesh::{Revocation, Service, ServiceName};
use actormesh::prelude::{Deserialize, RemoteMessage, Serialize};
use actormesh::protocol::MASTER_ACTOR;
use actormesh::{Node, NodeConfig};
use actormesh_master::tokens::TokenRole;
use actormesh_master::{self as master, ApplyDeployment, ListProxyStatus, ProxyConfigOf};
use tokio::sync::mpsc;

#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.registry.Ping/v1", reply = u64)]
struct Ping(u64);

struct Pinged;

impl Actor for Pinged {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Ping> for Pinged {
    type Result = u64;
    fn handle(&mut self, m: Ping, _: &mut Context<Self>) -> u64 {
        m.0
    }
}

/// What the stand-in proxy saw of one push.
#[derive(Debug)]
struct Seen {
    push: Push,
    /// Endpoints it holds after the push.
    endpoints: usize,
    /// For each endpoint the push removed: whether it still answered before the ack.
    removed_alive: Vec<(String, bool)>,
}

/// A stand-in `$proxy` on a client's node (not a real Proxy, so that it can hold its
/// acknowledgement back and see each push's kind).
struct StandInProxy {
    node: Node,
    version: Option<u64>,
    services: BTreeMap<ServiceName, Service>,
    revoked: Vec<Revocation>,
    seen: mpsc::UnboundedSender<Seen>,
    /// How long it takes to acknowledge a push that removes an endpoint.
    slow_removal: Duration,
}

impl Actor for StandInProxy {
    type Context = Context<Self>;
}

impl StandInProxy {
    /// (id, actor, node address) of every endpoint held.
    fn endpoints(&self) -> Vec<(String, String, SocketAddr)> {
        self.services
            .values()
            .flat_map(|s| {
                s.endpoints
                    .iter()
                    .map(|e| (e.id.clone(), e.actor.clone(), e.addr))
            })
            .collect()
    }
}

#[actormesh::handler]
impl Handler<Push> for StandInProxy {
    type Result = ResponseFuture<Result<u64, PushRefused>>;
    fn handle(&mut self, p: Push, _: &mut Context<Self>) -> Self::Result {
        if let PushKind::Delta { from } = p.kind {
            if self.version != Some(from) {
                let holds = self.version;
                return Box::pin(async move { Err(PushRefused::WrongBase { from, holds }) });
            }
        }
        let before = self.endpoints();
        if p.kind == PushKind::Full {
            self.services.clear();
            self.revoked.clear();
        }
        for s in &p.services {
            self.services.insert(s.name.clone(), s.clone());
        }
        for n in &p.removed {
            self.services.remove(n);
        }
        self.revoked.extend(p.revoked.iter().cloned());
        self.version = Some(p.version);
        let now = self.endpoints();
        let gone: Vec<(String, String, SocketAddr)> = before
            .into_iter()
            .filter(|(id, _, _)| !now.iter().any(|(n, _, _)| n == id))
            .collect();
        let endpoints = now.len();
        let (node, seen, slow) = (self.node.clone(), self.seen.clone(), self.slow_removal);
        Box::pin(async move {
            let mut removed_alive = Vec::new();
            if !gone.is_empty() {
                tokio::time::sleep(slow).await;
                for (id, actor, addr) in gone {
                    // Over the network, to the agent that runs it.
                    let r = node.actor_ref(addr, &actor);
                    let alive = r
                        .ask_timeout(Ping(1), Duration::from_millis(500))
                        .await
                        .is_ok();
                    removed_alive.push((id, alive));
                }
            }
            let version = p.version;
            let _ = seen.send(Seen {
                push: p,
                endpoints,
                removed_alive,
            });
            Ok(version)
        })
    }
}

#[actormesh::handler]
impl Handler<DumpConfig> for StandInProxy {
    type Result = MessageResult<DumpConfig>;
    fn handle(&mut self, _: DumpConfig, _: &mut Context<Self>) -> Self::Result {
        MessageResult(ProxyConfig {
            version: self.version,
            services: self.services.values().cloned().collect(),
            revoked: self.revoked.clone(),
            mesh: Default::default(),
        })
    }
}

fn manifest(replicas: u32) -> String {
    format!(
        r#"{{"kind":"Deployment","name":"ping","spec":{{"actor":"pinged","version":"v1","replicas":{replicas},"resources":{{"need":"cpus:0.1"}},"service":{{"balancer":"hash"}}}}}}"#
    )
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("a push within 10 s")
        .unwrap()
}

fn endpoint_count(p: &ProxyConfig) -> usize {
    p.services.iter().map(|s| s.endpoints.len()).sum()
}

/// Waits (at most 10 s) until the real Proxy of `mesh` holds `n` endpoints.
async fn real_proxy_holds(mesh: &actormesh::mesh::Mesh, n: usize) {
    let mut applied = mesh.applied();
    tokio::time::timeout(Duration::from_secs(10), async {
        while endpoint_count(&mesh.proxy_config()) != n {
            applied.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the agent's proxy does not hold {n} endpoints: {:?}",
            mesh.proxy_config()
        )
    });
}

#[actix::test]
async fn a_proxy_gets_a_snapshot_then_deltas_converges_and_holds_back_the_kill_it_has_not_acked() {
    let dir = std::env::temp_dir().join(format!("am-push-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = master::start(inproc::master_config(&dir, false))
        .await
        .unwrap();
    let mut config = inproc::agent_config(&m, &dir, "n1").await;
    config.resources = Some("cpus:2".parse().unwrap());
    config.host = ActorHost::new().with("pinged", || Pinged);
    let a = inproc::start_agent(config).await;
    let n1 = format!("spiffe://cluster.local/node/{}", a.agent_id);

    // A client's node subscribes a stand-in proxy that is slow to acknowledge removals.
    let token = m
        .token(TokenRole::Client, Duration::from_secs(60))
        .await
        .unwrap();
    let client = actormesh::client::issue(m.bootstrap, &token, "standin", &dir.join("client"))
        .await
        .unwrap();
    let client_node = Node::start(
        NodeConfig::new("127.0.0.1:0".parse().unwrap()),
        &client.credentials,
    )
    .unwrap();
    let (tx, mut seen) = mpsc::unbounded_channel();
    client_node
        .spawn(
            PROXY_ACTOR,
            StandInProxy {
                node: client_node.clone(),
                version: None,
                services: BTreeMap::new(),
                revoked: Vec::new(),
                seen: tx,
                slow_removal: Duration::from_millis(300),
            },
        )
        .unwrap();
    let subscribed = client_node
        .actor_ref(m.node.local_addr(), MASTER_ACTOR)
        .ask(Subscribe {
            addr: client_node.local_addr(),
            have: None,
        })
        .await
        .unwrap()
        .unwrap();
    let first = next(&mut seen).await;
    assert_eq!(first.push.kind, PushKind::Full);
    assert!(first.push.version >= subscribed.version);

    // Two instances come up: deltas bring them.
    m.master
        .send(ApplyDeployment(manifest(2)))
        .await
        .unwrap()
        .unwrap();
    let mut applied = first.push.version;
    loop {
        let s = next(&mut seen).await;
        assert_eq!(s.push.kind, PushKind::Delta { from: applied });
        applied = s.push.version;
        if s.endpoints == 2 {
            break;
        }
    }
    // The agent's own Proxy applied them too, and calls by name reach them.
    real_proxy_holds(a.mesh(), 2).await;
    let ping = a.mesh().service("default/ping").unwrap();
    assert_eq!(ping.ask(Ping(7)).await.unwrap(), 7);
    // So did the master's own Proxy: code in the master's process calls by name too.
    real_proxy_holds(m.mesh(), 2).await;
    let from_master = m.mesh().service("default/ping").unwrap();
    assert_eq!(from_master.ask(Ping(8)).await.unwrap(), 8);
    let c = m
        .master
        .send(ProxyConfigOf(a.agent_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(endpoint_count(&c), 2);
    assert_eq!(
        c.version,
        a.mesh().version(),
        "proxy-config asks the node's proxy"
    );
    let status = m.master.send(ListProxyStatus).await.unwrap();
    let p = status
        .proxies
        .iter()
        .find(|p| p.node == n1)
        .unwrap_or_else(|| panic!("{n1} not in {status:#?}"));
    assert_eq!(
        (p.applied, p.behind, p.stale),
        (Some(status.version), 0, false),
        "{status:#?}"
    );
    assert!(p.last_push_latency_ms.is_some());
    let own = status
        .proxies
        .iter()
        .find(|p| p.node == "spiffe://cluster.local/node/master")
        .unwrap_or_else(|| panic!("the master's own proxy is not in {status:#?}"));
    assert_eq!(
        (own.applied, own.addr, own.stale),
        (Some(status.version), m.node.local_addr(), false)
    );
    let standin = status
        .proxies
        .iter()
        .find(|p| p.node == client.identity.to_string())
        .unwrap_or_else(|| panic!("the stand-in is not in {status:#?}"));
    assert_eq!(standin.applied, Some(applied));

    // Scale down to 1: the endpoint leaves discovery; its instance still answers while the
    // stand-in takes its time to acknowledge, and is killed after.
    m.master
        .send(ApplyDeployment(manifest(1)))
        .await
        .unwrap()
        .unwrap();
    let removal = loop {
        let s = next(&mut seen).await;
        if !s.removed_alive.is_empty() {
            break s;
        }
    };
    assert_eq!(removal.removed_alive.len(), 1);
    let (id, alive) = &removal.removed_alive[0];
    assert!(
        alive,
        "{id} was killed before the proxy acknowledged its removal"
    );
    real_proxy_holds(a.mesh(), 1).await;
    let actor = id.clone();
    let gone = async {
        loop {
            let r = a.node.actor_ref(a.node.local_addr(), &actor);
            if r.ask_timeout(Ping(1), Duration::from_millis(200))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(4), gone)
        .await
        .expect("killed once the removal was acknowledged, well before the 5 s drain time");
    let nobody = m.master.send(ProxyConfigOf("nobody".into())).await.unwrap();
    assert!(
        matches!(&nobody, Err(master::OperatorError::NotFound(why)) if why.contains("no node \"nobody\"")),
        "{nobody:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
