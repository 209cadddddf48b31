//! The traffic policy's figures on a caller that keeps them: retries sent, an ejected
//! endpoint, the breaker's refusals and state, and the outcome counts of calls by name,
//! with nodes on loopback QUIC and pushes sent to each `$proxy` as the master sends them.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use actormesh::mesh::protocol::{Push, PushKind, PROXY_ACTOR};
use actormesh::mesh::registry::{Applied, Traffic};
use actormesh::mesh::{BalancerKind, Endpoint, Mesh, MeshOptions, Service};
use actormesh::prelude::{Deserialize, RemoteMessage, Serialize};
use actormesh::{AskError, LocalCa, Node, NodeConfig};

#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.figures.Get/v1", reply = String, idempotent)]
struct Get;

struct Server;

impl Actor for Server {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Get> for Server {
    type Result = String;
    fn handle(&mut self, _: Get, _: &mut Context<Self>) -> String {
        "ok".into()
    }
}

fn endpoint(id: &str, node: &str, addr: std::net::SocketAddr) -> Endpoint {
    Endpoint {
        id: id.into(),
        node: node.into(),
        addr,
        actor: "svc".into(),
        version: "v1".into(),
        labels: BTreeMap::new(),
        weight: 1,
        zone: None,
    }
}

fn svc(endpoints: Vec<Endpoint>, route: &str, policy: &str) -> Service {
    Service {
        name: "default/svc".parse().unwrap(),
        labels: BTreeMap::new(),
        balancer: BalancerKind::RoundRobin,
        locality: false,
        endpoints,
        traffic: Traffic {
            route: Some(Applied {
                object: "default/svc".into(),
                spec: serde_json::from_str(route).unwrap(),
            }),
            policy: Some(Applied {
                object: "default/svc-policy".into(),
                spec: serde_json::from_str(policy).unwrap(),
            }),
            authz: Vec::new(),
        },
        hosts: Vec::new(),
    }
}

async fn push(master: &Node, to: &Mesh, service: Service) {
    let push = Push {
        version: 1,
        kind: PushKind::Full,
        services: vec![service],
        removed: vec![],
        revoked: vec![],
        mesh: Default::default(),
    };
    let applied = master
        .actor_ref(to.node().local_addr(), PROXY_ACTOR)
        .ask(push)
        .await
        .unwrap();
    assert_eq!(applied, Ok(1));
}

fn value(node: &Node, name: &str) -> f64 {
    actormesh::metrics::gather(node)
        .value(name, &[("service", "default/svc")])
        .unwrap_or_else(|| panic!("no {name}"))
}

#[actix::test]
async fn retries_ejections_and_the_breaker_are_counted_per_service() {
    let ca = LocalCa::new("figures.test").unwrap();
    let master = ca.start_node("master").unwrap();
    let server = ca.start_node("server").unwrap();
    server.spawn("svc", Server).unwrap();
    let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap());
    config.metrics = true;
    let caller_node = ca.start_node_with("caller", config).unwrap();
    let caller = Mesh::start(&caller_node, MeshOptions::default()).unwrap();
    // Two endpoints: the server's actor, and one naming an actor the server does not run
    // (an instance that went away): it fails at once, `NoSuchActor`, and is retried on the
    // other.
    let id = server.identity().to_string();
    let mut gone = endpoint("gone", &id, server.local_addr());
    gone.actor = "nobody".into();
    let endpoints = vec![endpoint("live", &id, server.local_addr()), gone];
    let route = r#"{"service":"svc","rules":[{"timeout":"5s","retries":{"attempts":3,"per_try_timeout":"1s","on":["unavailable"],"backoff":{"base":"1ms","max":"2ms"}}}]}"#;
    let policy = r#"{"service":"svc","circuit_breaker":{"max_pending":1},"outlier_detection":{"consecutive_errors":1}}"#;
    push(&master, &caller, svc(endpoints, route, policy)).await;

    let s = caller.service("svc").unwrap();
    for _ in 0..6 {
        assert_eq!(
            s.ask_timeout(Get, Duration::from_secs(5)).await.unwrap(),
            "ok"
        );
    }
    // The gone endpoint was tried (round robin), failed, was retried on the live one, and
    // is ejected now.
    assert!(value(&caller_node, "actormesh_outbound_retries") >= 1.0);
    assert_eq!(value(&caller_node, "actormesh_outbound_endpoints"), 2.0);
    assert_eq!(
        value(&caller_node, "actormesh_outbound_endpoints_ejected"),
        1.0
    );
    assert_eq!(value(&caller_node, "actormesh_outbound_breaker_open"), 0.0);
    // The breaker takes one pending call: a second at the same time is refused at once.
    let (a, b) = futures::join!(
        s.ask_timeout(Get, Duration::from_secs(5)),
        s.ask_timeout(Get, Duration::from_secs(5))
    );
    let refused = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(AskError::CircuitOpen { .. })))
        .count();
    assert_eq!(refused, 1, "{a:?} {b:?}");
    assert_eq!(value(&caller_node, "actormesh_outbound_circuit_open"), 1.0);
    // And the calls by name count their outcomes, one per call whatever its retries.
    let families = actormesh::metrics::gather(&caller_node);
    let ok = families
        .value(
            "actormesh_outbound_requests",
            &[
                ("source", "unknown"),
                ("service", "default/svc"),
                ("message", "test.figures.Get/v1"),
                ("outcome", "ok"),
            ],
        )
        .unwrap();
    assert_eq!(ok, 7.0);
    let open = families
        .value(
            "actormesh_outbound_requests",
            &[
                ("source", "unknown"),
                ("service", "default/svc"),
                ("message", "test.figures.Get/v1"),
                ("outcome", "circuit_open"),
            ],
        )
        .unwrap();
    assert_eq!(open, 1.0);
}
