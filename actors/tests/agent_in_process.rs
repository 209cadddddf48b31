//! A user's own binary as an agent: it hosts its actor types, the master learns them
//! without a list, membership changes reach subscribed actors, and the agent's actors are
//! reachable over the mesh.

use std::time::Duration;

use actix::prelude::*;
use actormesh::agent::{self, AgentConfig};
use actormesh::master::membership::{AgentState, MembershipEvent};
use actormesh::master::token::TokenRole;
use actormesh::master::{self, CreateToken, ListNodes, MasterConfig, Subscribe};
use actormesh::prelude::{Deserialize, RemoteMessage, Serialize};
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

#[actix::test]
async fn a_user_binary_joins_as_an_agent_hosting_its_own_actor_types() {
    let dir = std::env::temp_dir().join(format!("am-inproc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = MasterConfig::new(dir.join("master"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.bootstrap = "127.0.0.1:0".parse().unwrap();
    config.api = "127.0.0.1:0".parse().unwrap();
    let m = master::start(config).await.unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    m.master
        .send(Subscribe(Collector(tx).start().recipient()))
        .await
        .unwrap();
    let token = m
        .master
        .send(CreateToken {
            ttl: Duration::from_secs(60),
            role: TokenRole::Agent,
        })
        .await
        .unwrap()
        .unwrap();
    let a = agent::start(AgentConfig {
        join: m.bootstrap,
        token: Some(token.token),
        data_dir: dir.join("agent"),
        listen: "127.0.0.1:0".parse().unwrap(),
        name: "worker".into(),
        resources: None,
        attrs: Default::default(),
        actor_types: Vec::new(),
    })
    .await
    .unwrap();
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
