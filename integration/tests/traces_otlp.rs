//! Traces across services with no tracing code in them: a caller → a → b → c, each
//! service on a node of its own (loopback QUIC), each node exporting its spans over
//! OTLP/HTTP to a real receiver (opentelemetry-proto's types). The receiver gets one trace
//! of six spans, a client and a server span per hop, each the child of the one before.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actormesh::mesh::protocol::{Push, PushKind, PROXY_ACTOR};
use actormesh::mesh::{BalancerKind, Endpoint, Mesh, MeshOptions, Service};
use actormesh::otlp::OtlpExporter;
use actormesh::prelude::{Deserialize, RemoteMessage, Serialize};
use actormesh::trace::Tracing;
use actormesh::{CallInfo, LocalCa, Node, NodeConfig};
use actormesh_integration::otlp_receiver::{string_attribute, Received, Receiver};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.trace.Hop/v1", reply = Vec<String>)]
struct Hop;

/// Answers with the services the call went through: its own, after the next one's.
struct Service_ {
    me: &'static str,
    next: Option<&'static str>,
    mesh: Mesh,
}

impl Actor for Service_ {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Hop> for Service_ {
    type Result = ResponseFuture<Vec<String>>;
    fn handle(&mut self, _: Hop, _: &mut Context<Self>) -> Self::Result {
        let me = self.me.to_string();
        let next = self.next.map(|n| self.mesh.service(n).unwrap());
        let call = async move {
            let mut path = match next {
                Some(s) => s.ask(Hop).await.unwrap_or_else(|e| vec![e.to_string()]),
                None => Vec::new(),
            };
            path.push(me);
            path
        };
        // The plain way to call on after `handle` returns (as for deadlines): no tracing
        // code, the scope carries the call's context.
        match CallInfo::current() {
            Some(info) => Box::pin(info.scope(call)),
            None => Box::pin(call),
        }
    }
}

fn endpoint(node: &Node, actor: &str) -> Endpoint {
    let id = node.identity().to_string();
    Endpoint {
        id: actor.to_string(),
        node: id,
        addr: node.local_addr(),
        actor: actor.into(),
        version: "v1".into(),
        labels: BTreeMap::new(),
        weight: 1,
        zone: None,
    }
}

fn service(name: &str, e: Endpoint) -> Service {
    Service {
        name: format!("default/{name}").parse().unwrap(),
        labels: BTreeMap::new(),
        balancer: BalancerKind::RoundRobin,
        locality: false,
        endpoints: vec![e],
        traffic: Default::default(),
        hosts: Vec::new(),
    }
}

fn traced(ca: &LocalCa, name: &str, receiver: &Receiver, ratio: f64) -> (Node, Arc<OtlpExporter>) {
    let exporter = OtlpExporter::start(&receiver.endpoint(), name).unwrap();
    let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap());
    config.tracing = Some(Tracing::new(exporter.clone(), ratio).unwrap());
    (ca.start_node_with(name, config).unwrap(), exporter)
}

/// Waits (at most 15 s: exporters send every 500 ms) until every exporter has sent all
/// it recorded.
async fn exported(exporters: &[Arc<OtlpExporter>]) {
    let began = Instant::now();
    while exporters.iter().any(|e| e.pending() > 0) {
        assert!(
            began.elapsed() < Duration::from_secs(15),
            "spans not exported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(exporters
        .iter()
        .all(|e| e.failed() == 0 && e.dropped() == 0));
}

/// A string attribute of `span`.
fn attribute(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    string_attribute(&span.attributes, key)
}

#[actix::test]
async fn a_chain_of_calls_by_name_is_one_trace_of_client_and_server_spans() {
    let receiver = Receiver::start().await.unwrap();
    let ca = LocalCa::new("trace.test").unwrap();
    let master = ca.start_node("master").unwrap();
    let chain = [("a", Some("b")), ("b", Some("c")), ("c", None)];
    let mut meshes = Vec::new();
    let mut services = Vec::new();
    let mut exporters = Vec::new();
    for (name, next) in chain {
        let (node, exporter) = traced(&ca, name, &receiver, 1.0);
        exporters.push(exporter);
        let mesh = Mesh::start(&node, MeshOptions::default()).unwrap();
        // Running as their service's workload: the calls they make name it as source.
        let m = mesh.clone();
        node.spawn_with(
            name,
            actormesh::SpawnOptions {
                workload: Some(format!("default/{name}")),
                ..Default::default()
            },
            move || Service_ {
                me: name,
                next,
                mesh: m.clone(),
            },
        )
        .unwrap();
        services.push(service(name, endpoint(&node, name)));
        meshes.push(mesh);
    }
    // The caller samples every root (ratio 1): its call by name starts the trace.
    let (caller_node, exporter) = traced(&ca, "caller", &receiver, 1.0);
    exporters.push(exporter);
    let caller = Mesh::start(&caller_node, MeshOptions::default()).unwrap();
    meshes.push(caller.clone());
    let push = Push {
        version: 1,
        kind: PushKind::Full,
        services,
        removed: vec![],
        revoked: vec![],
        mesh: Default::default(),
    };
    for m in &meshes {
        let applied = master
            .actor_ref(m.node().local_addr(), PROXY_ACTOR)
            .ask(push.clone())
            .await
            .unwrap();
        assert_eq!(applied, Ok(1));
    }

    let path = caller.service("a").unwrap().ask(Hop).await.unwrap();
    assert_eq!(path, ["c", "b", "a"]);

    // Every span is recorded by the time the reply is back; wait for their export.
    exported(&exporters).await;
    let got = receiver.spans();
    assert_eq!(got.len(), 6, "{got:#?}");
    let trace = &got[0].span.trace_id;
    assert!(got.iter().all(|r| &r.span.trace_id == trace), "one trace");
    // Each span's parent is the span before it on the path.
    let roots: Vec<&Received> = got
        .iter()
        .filter(|r| r.span.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    let mut walk = vec![roots[0]];
    while walk.len() < 6 {
        let last = walk.last().unwrap();
        let children: Vec<&Received> = got
            .iter()
            .filter(|r| r.span.parent_span_id == last.span.span_id)
            .collect();
        assert_eq!(
            children.len(),
            1,
            "one child of {:?}: {children:#?}",
            last.span.name
        );
        walk.push(children[0]);
    }
    let kinds: Vec<(String, i32)> = walk
        .iter()
        .map(|r| (r.service.clone(), r.span.kind))
        .collect();
    let (client, server) = (SpanKind::Client as i32, SpanKind::Server as i32);
    assert_eq!(
        kinds,
        [
            ("caller".to_string(), client),
            ("a".to_string(), server),
            ("a".to_string(), client),
            ("b".to_string(), server),
            ("b".to_string(), client),
            ("c".to_string(), server),
        ]
    );
    assert!(walk.iter().all(|r| r.span.name == "test.trace.Hop/v1"));
    // Every span ended with its call (not dropped unfinished), and says its service.
    for r in &walk {
        assert_eq!(
            attribute(&r.span, "outcome").as_deref(),
            Some("ok"),
            "{r:#?}"
        );
        assert!(attribute(&r.span, "service").is_some(), "{r:#?}");
    }
    assert_eq!(
        attribute(&walk[1].span, "service").as_deref(),
        Some("default/a")
    );
    assert_eq!(
        attribute(&walk[3].span, "source").as_deref(),
        Some("default/a")
    );
    // A parent spans its child.
    for pair in walk.windows(2) {
        let (p, c) = (&pair[0].span, &pair[1].span);
        assert!(
            p.start_time_unix_nano <= c.start_time_unix_nano,
            "{}",
            c.name
        );
        assert!(p.end_time_unix_nano >= c.end_time_unix_nano, "{}", c.name);
    }
}

#[actix::test]
async fn a_root_not_sampled_sends_no_trace_and_the_ratio_holds() {
    let receiver = Receiver::start().await.unwrap();
    let ca = LocalCa::new("trace.test").unwrap();
    let master = ca.start_node("master").unwrap();
    let (server, server_exporter) = traced(&ca, "s", &receiver, 1.0);
    let server_mesh = Mesh::start(&server, MeshOptions::default()).unwrap();
    server
        .spawn(
            "s",
            Service_ {
                me: "s",
                next: None,
                mesh: server_mesh.clone(),
            },
        )
        .unwrap();
    // One root in four is sampled by the caller.
    let (caller_node, caller_exporter) = traced(&ca, "caller", &receiver, 0.25);
    let caller = Mesh::start(&caller_node, MeshOptions::default()).unwrap();
    let push = Push {
        version: 1,
        kind: PushKind::Full,
        services: vec![service("s", endpoint(&server, "s"))],
        removed: vec![],
        revoked: vec![],
        mesh: Default::default(),
    };
    for m in [&server_mesh, &caller] {
        master
            .actor_ref(m.node().local_addr(), PROXY_ACTOR)
            .ask(push.clone())
            .await
            .unwrap()
            .unwrap();
    }
    let s = caller.service("s").unwrap();
    for _ in 0..20 {
        s.ask(Hop).await.unwrap();
    }
    // 5 sampled roots, each a client and a server span; the 15 others none.
    exported(&[server_exporter, caller_exporter]).await;
    let got = receiver.spans();
    assert_eq!(got.len(), 10, "{got:#?}");
    let traces: std::collections::BTreeSet<_> =
        got.iter().map(|r| r.span.trace_id.clone()).collect();
    assert_eq!(traces.len(), 5);
}
