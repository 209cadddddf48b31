//! What the traffic tests share: a master and agents on loopback QUIC (each agent its own
//! node, with test actor types), a caller node with a client identity that subscribes to
//! the master's registry, a test actor that says which instance it is, and waits on the
//! caller's route table.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actormesh::agent::tasks::ActorHost;
use actormesh::agent::AgentHandle;
use actormesh::mesh::{Endpoint, Mesh, MeshOptions, ServiceName};
use actormesh::prelude::{Deserialize, RemoteMessage, Serialize};
use actormesh::{Node, NodeConfig};
use actormesh_master::tokens::TokenRole;
use actormesh_master::{self as master, ApplyDeployment, MasterHandle};

#[path = "../inproc/mod.rs"]
mod inproc;

/// Asks an [`Instance`] which instance it is; the reply is its id.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.traffic.Who/v1", reply = String)]
pub struct Who(pub u64);

/// A test instance: answers [`Who`] with its id after its delay.
pub struct Instance {
    /// `<agent>-<n>`: unique within the test process.
    pub id: String,
    /// How long it takes to answer.
    pub delay: Duration,
}

impl Actor for Instance {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Who> for Instance {
    type Result = ResponseFuture<String>;
    fn handle(&mut self, _: Who, _: &mut Context<Self>) -> Self::Result {
        let (id, delay) = (self.id.clone(), self.delay);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            id
        })
    }
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// A host of actor type `who` whose instances on agent `agent` answer after `delay`; each
/// instance (a restart too) gets a fresh id `<agent>-<n>`.
pub fn who_host(agent: &str, delay: Duration) -> ActorHost {
    let agent = agent.to_string();
    ActorHost::new().with("who", move || Instance {
        id: format!("{agent}-{}", INSTANCES.fetch_add(1, Ordering::Relaxed)),
        delay,
    })
}

/// A master and its agents, in this process.
pub struct Cluster {
    pub master: MasterHandle,
    pub agents: Vec<AgentHandle>,
    pub dir: PathBuf,
}

/// Starts a master (100 ms heartbeats, Unreachable after 1 s) and one agent per
/// `(name, host)`, each offering `cpus:4`, with attribute `host=<name>` (for node
/// selectors).
pub async fn cluster(test: &str, agents: Vec<(&str, ActorHost)>) -> Cluster {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let dir = std::env::temp_dir().join(format!("am-traffic-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = master::start(inproc::master_config(&dir, true))
        .await
        .unwrap();
    let mut handles = Vec::new();
    for (name, host) in agents {
        let mut config = inproc::agent_config(&m, &dir, name).await;
        config.resources = Some("cpus:4".parse().unwrap());
        config.host = host;
        config.attrs = BTreeMap::from([("host".to_string(), name.to_string())]);
        handles.push(inproc::start_agent(config).await);
    }
    Cluster {
        master: m,
        agents: handles,
        dir,
    }
}

impl Cluster {
    /// Applies a deployment manifest (JSON or YAML).
    pub async fn apply(&self, manifest: &str) {
        self.master
            .master
            .send(ApplyDeployment(manifest.to_string()))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{manifest}: {e}"));
    }

    /// A caller outside the cluster: a node with a client identity issued over the
    /// bootstrap port, whose Proxy subscribes to the master.
    pub async fn caller(&self, name: &str) -> Mesh {
        caller(&self.master, &self.dir, name).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client node `name` (identity issued with a client token) whose mesh subscribes at the
/// master `m`.
pub async fn caller(m: &MasterHandle, dir: &Path, name: &str) -> Mesh {
    let token = m
        .token(TokenRole::Client, Duration::from_secs(600))
        .await
        .unwrap();
    let creds = actormesh::client::issue(m.bootstrap, &token, name, &dir.join(name))
        .await
        .unwrap();
    let node = Node::start(
        NodeConfig::new("127.0.0.1:0".parse().unwrap()),
        &creds.credentials,
    )
    .unwrap();
    Mesh::start(&node, MeshOptions::default().master(m.node.local_addr())).unwrap()
}

/// The endpoints of `service` in the caller's applied table.
pub fn endpoints(mesh: &Mesh, service: &str) -> Vec<Endpoint> {
    let name = ServiceName::parse(service, "default").unwrap();
    mesh.proxy_config()
        .services
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.endpoints)
        .unwrap_or_default()
}

/// Waits (polling every 10 ms, at most `limit`) until the caller's table holds endpoints
/// of `service` for which `cond` holds; returns them.
pub async fn wait_endpoints(
    mesh: &Mesh,
    service: &str,
    limit: Duration,
    cond: impl Fn(&[Endpoint]) -> bool,
) -> Vec<Endpoint> {
    let start = Instant::now();
    loop {
        let e = endpoints(mesh, service);
        if cond(&e) {
            return e;
        }
        assert!(
            start.elapsed() < limit,
            "{service}: endpoints not as expected within {limit:?}: {e:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many calls each answer got.
pub type Split = BTreeMap<String, u64>;

/// Makes `total` calls of [`Who`] to `service`, `concurrency` at a time, each with a 5 s
/// deadline; panics on any error; returns how many each instance answered.
pub async fn call_split(mesh: &Mesh, service: &str, total: u64, concurrency: u64) -> Split {
    let s = mesh.service(service).unwrap();
    let next = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (s, next) = (s.clone(), next.clone());
        workers.push(actix::spawn(async move {
            let mut split = Split::new();
            loop {
                let i = next.get();
                if i >= total {
                    return split;
                }
                next.set(i + 1);
                let who = s
                    .ask_timeout(Who(i), Duration::from_secs(5))
                    .await
                    .unwrap_or_else(|e| panic!("call {i} failed: {e}"));
                *split.entry(who).or_default() += 1;
            }
        }));
    }
    let mut split = Split::new();
    for w in workers {
        for (k, v) in w.await.unwrap() {
            *split.entry(k).or_default() += v;
        }
    }
    assert_eq!(split.values().sum::<u64>(), total, "every call answered");
    split
}
