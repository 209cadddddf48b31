//! Authorization where calls arrive, on real calls: nodes on loopback QUIC, a test node
//! named `master` pushing services with their AuthorizationPolicies and hosts to every
//! node's `$proxy`, as the master's registry does. A workload is believed only from a node
//! the push lists as hosting it; a forged one is judged as its node. Denials name the
//! policy and rule, take no mailbox place (the handler never runs), and are made on the
//! local path too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use actormesh::mesh::authz::AuthzDefault;
use actormesh::mesh::protocol::{Push, PushKind, PROXY_ACTOR};
use actormesh::mesh::registry::{Applied, Traffic};
use actormesh::mesh::{
    BalancerKind, CallOptions, Endpoint, Mesh, MeshOptions, MeshSettings, Service,
};
use actormesh::prelude::{Deserialize, RemoteMessage, Serialize};
use actormesh::{AskError, CallInfo, LocalCa, Node, SpawnOptions};

/// Answers with the caller's workload as the callee sees it: proven, then asserted.
#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.authz.Who/v1", reply = String)]
struct Who;

/// Asks its actor to call `default/back` with `Who`, with metadata `end-user` if given;
/// the answer is the reply or the error's text.
#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.authz.Relay/v1", reply = Result<String, AskError>)]
struct Relay {
    end_user: Option<String>,
}

struct Back {
    arrivals: Arc<AtomicU32>,
}

impl Actor for Back {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Who> for Back {
    type Result = String;
    fn handle(&mut self, _: Who, _: &mut Context<Self>) -> String {
        self.arrivals.fetch_add(1, Ordering::SeqCst);
        let info = CallInfo::current().expect("in a handler");
        format!("{:?}|{:?}", info.workload(), info.asserted_workload())
    }
}

/// Calls `default/back` by name from its handler, so the call asserts its workload.
struct Relayer(Mesh);

impl Actor for Relayer {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Relay> for Relayer {
    type Result = ResponseFuture<Result<String, AskError>>;
    fn handle(&mut self, m: Relay, _: &mut Context<Self>) -> Self::Result {
        let back = self.0.service("back").unwrap();
        let mut options = CallOptions::default();
        if let Some(u) = m.end_user {
            options = options.metadata("end-user", u);
        }
        let call = async move { back.ask_with(Who, &options).await };
        let info = CallInfo::current().expect("in a handler");
        Box::pin(info.scope(call))
    }
}

struct Cluster {
    master: Node,
    /// Serves `back`; also hosts `front-local`, an instance of `front` on the same node.
    back: Mesh,
    /// Hosts `front`, an instance of `default/front`.
    front: Mesh,
    /// Hosts nothing, and spawns `fake` asserting `default/front`.
    forger: Mesh,
    /// A plain caller with no workload.
    caller: Mesh,
    arrivals: Arc<AtomicU32>,
}

fn endpoint(node: &Node, actor: &str) -> Endpoint {
    let id = node.identity().to_string();
    Endpoint {
        id: format!("{}/{actor}", id.rsplit('/').next().unwrap()),
        node: id,
        addr: node.local_addr(),
        actor: actor.into(),
        version: "v1".into(),
        labels: BTreeMap::from([("version".into(), "v1".into())]),
        weight: 1,
        zone: None,
    }
}

fn relayer(node: &Node, mesh: &Mesh, name: &str) {
    node.spawn_with(
        name,
        SpawnOptions {
            workload: Some("default/front".into()),
            ..Default::default()
        },
        {
            let mesh = mesh.clone();
            move || Relayer(mesh.clone())
        },
    )
    .unwrap();
}

impl Cluster {
    fn new() -> Self {
        let ca = LocalCa::new("authz.test").unwrap();
        let master = ca.start_node("master").unwrap();
        let mesh_of = |name: &str| {
            // The callee keeps figures: its denials are counted by policy.
            let mut config = actormesh::NodeConfig::new("127.0.0.1:0".parse().unwrap());
            config.metrics = name == "back";
            let node = ca.start_node_with(name, config).unwrap();
            Mesh::start(&node, MeshOptions::default()).unwrap()
        };
        let (back, front, forger, caller) = (
            mesh_of("back"),
            mesh_of("front"),
            mesh_of("forger"),
            mesh_of("caller"),
        );
        let arrivals = Arc::new(AtomicU32::new(0));
        back.node()
            .spawn(
                "back",
                Back {
                    arrivals: arrivals.clone(),
                },
            )
            .unwrap();
        relayer(back.node(), &back, "front-local");
        relayer(front.node(), &front, "front");
        relayer(forger.node(), &forger, "fake");
        Self {
            master,
            back,
            front,
            forger,
            caller,
            arrivals,
        }
    }

    /// `default/back` under `policies` (`(object, JSON spec)`), and `default/front` hosted
    /// on the front and back nodes, open to every caller (the test asks its instances to
    /// relay); pushed as `version` to every proxy with `mesh`.
    async fn push(&self, version: u64, policies: &[(&str, &str)], mesh: MeshSettings) {
        let service = |name: &str, endpoints: Vec<Endpoint>, hosts: Vec<String>, authz| Service {
            name: name.parse().unwrap(),
            labels: BTreeMap::new(),
            balancer: BalancerKind::RoundRobin,
            locality: false,
            endpoints,
            traffic: Traffic {
                authz,
                ..Traffic::default()
            },
            hosts,
        };
        let authz = policies
            .iter()
            .map(|(object, spec)| Applied {
                object: object.to_string(),
                spec: serde_json::from_str(spec).expect("policy JSON"),
            })
            .collect();
        let id = |m: &Mesh| m.node().identity().to_string();
        let push = Push {
            version,
            kind: PushKind::Full,
            services: vec![
                service(
                    "default/back",
                    vec![endpoint(self.back.node(), "back")],
                    vec![id(&self.back)],
                    authz,
                ),
                service(
                    "default/front",
                    vec![endpoint(self.front.node(), "front")],
                    vec![id(&self.back), id(&self.front)],
                    vec![Applied {
                        object: "default/front-open".into(),
                        spec: serde_json::from_str(r#"{"service":"front","rules":[{}]}"#).unwrap(),
                    }],
                ),
            ],
            removed: vec![],
            revoked: vec![],
            mesh,
        };
        self.send(push).await;
    }

    /// Sends `push` to every node's proxy; each applies it.
    async fn send(&self, push: Push) {
        for m in [&self.back, &self.front, &self.forger, &self.caller] {
            let applied = self
                .master
                .actor_ref(m.node().local_addr(), PROXY_ACTOR)
                .ask(push.clone())
                .await
                .unwrap();
            assert_eq!(applied, Ok(push.version));
        }
    }

    /// `default/back` under `policies` alone: the service front is gone.
    async fn push_without_front(&self, version: u64, policies: &[(&str, &str)]) {
        self.push(version, policies, ALLOW).await;
        let current = self.back.proxy_config();
        let back = current
            .services
            .iter()
            .find(|s| s.name.name == "back")
            .unwrap()
            .clone();
        let push = Push {
            version: version + 1,
            kind: PushKind::Delta { from: version },
            services: vec![back],
            removed: vec!["default/front".parse().unwrap()],
            revoked: vec![],
            mesh: ALLOW,
        };
        self.send(push).await;
    }

    /// `actor` on `mesh`'s node relays a call to back.
    async fn relay(
        &self,
        mesh: &Mesh,
        actor: &str,
        end_user: Option<&str>,
    ) -> Result<String, AskError> {
        mesh.node()
            .actor_ref(mesh.node().local_addr(), actor)
            .ask(Relay {
                end_user: end_user.map(str::to_string),
            })
            .await
            .unwrap()
    }

    fn arrivals(&self) -> u32 {
        self.arrivals.load(Ordering::SeqCst)
    }
}

fn denied(r: Result<String, AskError>) -> (String, String) {
    match r {
        Err(AskError::PermissionDenied { policy, rule }) => (policy, rule),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

const ONLY_FRONT: (&str, &str) = (
    "default/only-front",
    r#"{"service":"back","rules":[{"from":[{"source":{"principals":["*/ns/default/sa/front"]}}]}]}"#,
);
const NO_MALLORY: (&str, &str) = (
    "default/no-mallory",
    r#"{"action":"DENY","rules":[{"when":[{"key":"end-user","values":["mallory*"]}]}]}"#,
);
const ALLOW: MeshSettings = MeshSettings {
    authz_default: AuthzDefault::Allow,
    hide_policy_names: false,
};

#[actix::test]
async fn a_workload_is_proven_only_from_a_node_that_hosts_it_and_policies_decide_on_it() {
    let c = Cluster::new();
    c.push(1, &[], ALLOW).await;
    // No policy: every call goes through; the callee believes front's workload from the
    // front node and from its own node, and not from the forger's.
    let proven = r#"Some("default/front")|Some("default/front")"#;
    assert_eq!(c.relay(&c.front, "front", None).await.unwrap(), proven);
    assert_eq!(c.relay(&c.back, "front-local", None).await.unwrap(), proven);
    assert_eq!(
        c.relay(&c.forger, "fake", None).await.unwrap(),
        r#"None|Some("default/front")"#,
        "the forger's assertion is not taken"
    );

    c.push(2, &[ONLY_FRONT, NO_MALLORY], ALLOW).await;
    let before = c.arrivals();
    assert_eq!(c.relay(&c.front, "front", None).await.unwrap(), proven);
    assert_eq!(c.relay(&c.back, "front-local", None).await.unwrap(), proven);
    // A forged workload is judged as its node, which no ALLOW rule names.
    let (policy, rule) = denied(c.relay(&c.forger, "fake", None).await);
    assert_eq!(policy, "default/only-front");
    assert_eq!(
        rule,
        "no rule of the ALLOW policies of default/back matched"
    );
    // A caller without a workload, by name.
    let back = c.caller.service("back").unwrap();
    let (policy, _) = denied(back.ask(Who).await);
    assert_eq!(policy, "default/only-front");
    // A DENY rule wins over the ALLOW that matches, remote and on the local path alike.
    assert_eq!(
        denied(c.relay(&c.front, "front", Some("mallory-2")).await),
        ("default/no-mallory".into(), "rules[0]".into())
    );
    assert_eq!(
        denied(c.relay(&c.back, "front-local", Some("mallory")).await),
        ("default/no-mallory".into(), "rules[0]".into())
    );
    assert_eq!(
        c.relay(&c.front, "front", Some("alice")).await.unwrap(),
        proven
    );
    // Only the three allowed calls reached the handler: a denial takes no mailbox place.
    assert_eq!(c.arrivals() - before, 3);

    // The service front is deleted: from the push without it, its instances are no longer
    // believed to be front anywhere, and are refused as their nodes.
    c.push_without_front(3, &[ONLY_FRONT]).await;
    let (policy, _) = denied(c.relay(&c.front, "front", None).await);
    assert_eq!(policy, "default/only-front");
    assert_eq!(c.arrivals() - before, 3);

    // The callee counted each denial by the policy that decided.
    let figures = actormesh::metrics::gather(c.back.node());
    let denials = |policy: &str| {
        figures.value(
            "actormesh_authz_decisions",
            &[
                ("service", "default/back"),
                ("policy", policy),
                ("decision", "denied"),
            ],
        )
    };
    assert_eq!(denials("default/only-front"), Some(3.0));
    assert_eq!(denials("default/no-mallory"), Some(2.0));
}

#[actix::test]
async fn the_mesh_default_decides_where_no_allow_policy_applies_and_names_can_be_hidden() {
    let c = Cluster::new();
    let deny = MeshSettings {
        authz_default: AuthzDefault::Deny,
        hide_policy_names: false,
    };
    c.push(1, &[], deny).await;
    let back = c.caller.service("back").unwrap();
    assert_eq!(
        denied(back.ask(Who).await),
        (
            "default-deny".into(),
            "no ALLOW policy applies to default/back".into()
        )
    );
    // A DENY policy is no ALLOW policy: the default still decides.
    c.push(2, &[NO_MALLORY], deny).await;
    assert_eq!(denied(back.ask(Who).await).0, "default-deny");
    c.push(3, &[ONLY_FRONT], deny).await;
    assert!(c.relay(&c.front, "front", None).await.is_ok());
    // The default changed with a delta: every service is judged anew.
    let delta = Push {
        version: 4,
        kind: PushKind::Delta { from: 3 },
        services: vec![],
        removed: vec![],
        revoked: vec![],
        mesh: ALLOW,
    };
    c.master
        .actor_ref(c.back.node().local_addr(), PROXY_ACTOR)
        .ask(delta)
        .await
        .unwrap()
        .unwrap();
    let hidden = MeshSettings {
        authz_default: AuthzDefault::Deny,
        hide_policy_names: true,
    };
    c.push(5, &[ONLY_FRONT], hidden).await;
    // The caller has no namespace, so it is outside default: it is told nothing.
    assert_eq!(
        denied(back.ask(Who).await),
        ("(hidden)".into(), "(hidden)".into())
    );
    // The forger's node is outside too; front, in default, would be told (it is allowed).
    assert_eq!(denied(c.relay(&c.forger, "fake", None).await).0, "(hidden)");
    c.push(6, &[], ALLOW).await;
    assert!(
        back.ask(Who).await.is_ok(),
        "no policy and the default allows"
    );
}
