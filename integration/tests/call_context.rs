//! The call context with real nodes on loopback: protocol versions N and N−1, CallInfo in
//! handlers, propagation across hops, pinned identities, JSON calls and metadata limits.

use std::time::Duration;

use actix::ResponseFuture;
use actormesh::prelude::*;
use actormesh::{AskError, CallOutcome, MetadataError};
use actormesh_integration::actors::*;
use actormesh_integration::pki::TestPki;

fn start(pki: &TestPki, name: &str, version: u32) -> Node {
    let (_, creds) = pki.node(name);
    let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap());
    config.endpoint.protocol_version = version;
    Node::start(config, &creds).unwrap()
}

/// How a relay forwards the call it handles.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Forward {
    /// Asks the next hop from inside `CallInfo::scope`, after an `.await`.
    Scoped,
    /// Tells the next hop from the synchronous handler.
    Tell,
}

#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Observe/v1", reply = Seen)]
struct Observe {
    forward: Forward,
}

/// What a handler saw of its call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Seen {
    remaining_ms: Option<u128>,
    metadata: Vec<(String, String, bool)>,
    workload: Option<String>,
    caller: Option<String>,
    attempt: u32,
    next: Option<Box<Seen>>,
}

impl Seen {
    fn of(info: &CallInfo) -> Seen {
        Seen {
            remaining_ms: info.remaining().map(|d| d.as_millis()),
            metadata: info
                .metadata()
                .iter()
                .map(|(k, v, p)| (k.to_string(), v.to_string(), p))
                .collect(),
            workload: info.asserted_workload().map(str::to_string),
            caller: info.caller_node().map(|c| c.to_string()),
            attempt: info.attempt(),
            next: None,
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Record/v1")]
struct Record;

#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Recorded/v1", reply = Option<Seen>)]
struct Recorded;

/// Reports the call it handles, and forwards it to `next` if it has one.
#[derive(Default)]
struct Probe {
    next: Option<RemoteRef>,
    recorded: Option<Seen>,
}

impl Actor for Probe {
    type Context = Context<Self>;
}

#[handler]
impl Handler<Observe> for Probe {
    type Result = ResponseFuture<Seen>;
    fn handle(&mut self, m: Observe, _: &mut Context<Self>) -> Self::Result {
        let info = CallInfo::current().expect("a handler runs with its call's context");
        let seen = Seen::of(&info);
        let Some(next) = self.next.clone() else {
            return Box::pin(async move { seen });
        };
        match m.forward {
            Forward::Scoped => Box::pin(info.clone().scope(async move {
                tokio::task::yield_now().await;
                let after_await = CallInfo::current().expect("the scope survives .await");
                assert_eq!(after_await.metadata(), info.metadata());
                let below = next.ask(Observe { forward: m.forward }).await;
                Seen {
                    next: Some(Box::new(below.expect("the next hop answers"))),
                    ..seen
                }
            })),
            Forward::Tell => {
                next.try_tell(Record).expect("the lane has room");
                Box::pin(async move { seen })
            }
        }
    }
}

#[handler]
impl Handler<Record> for Probe {
    type Result = ();
    fn handle(&mut self, _: Record, _: &mut Context<Self>) {
        self.recorded = CallInfo::current().map(|i| Seen::of(&i));
    }
}

#[handler]
impl Handler<Recorded> for Probe {
    type Result = MessageResult<Recorded>;
    fn handle(&mut self, _: Recorded, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.recorded.take())
    }
}

fn options(timeout_ms: u64) -> CallOptions {
    CallOptions {
        timeout: Some(Duration::from_millis(timeout_ms)),
        metadata: Metadata::new()
            .with_propagated("tenant", "acme")
            .with("secret", "only-for-b"),
        attempt: 2,
        trace: None,
    }
}

/// A → B → C: B relays, running as workload `shop/relay`.
fn chain(pki: &TestPki) -> (Node, Node, Node, RemoteRef) {
    let (a, b, c) = (start(pki, "a", 2), start(pki, "b", 2), start(pki, "c", 2));
    c.spawn("probe", Probe::default()).unwrap();
    let to_c = b.actor_ref(c.local_addr(), "probe");
    b.spawn_with(
        "relay",
        SpawnOptions {
            workload: Some("shop/relay".into()),
            ..Default::default()
        },
        move || Probe {
            next: Some(to_c.clone()),
            recorded: None,
        },
    )
    .unwrap();
    let relay = a.actor_ref(b.local_addr(), "relay");
    (a, b, c, relay)
}

#[actix::test]
async fn deadline_and_propagated_metadata_hold_across_three_nodes() {
    let pki = TestPki::new("context.test");
    let (_a, _b, _c, relay) = chain(&pki);
    let seen = relay
        .ask_with_options(
            Observe {
                forward: Forward::Scoped,
            },
            &options(3000),
        )
        .await
        .unwrap();
    // B: everything A sent, A's verified identity, no workload (A called from no actor).
    assert_eq!(
        seen.caller.as_deref(),
        Some(pki.id("a").to_string().as_str())
    );
    assert_eq!(seen.get("tenant"), Some("acme"));
    assert_eq!(seen.get("secret"), Some("only-for-b"));
    assert_eq!(seen.attempt, 2);
    assert_eq!(seen.workload, None);
    let b_left = seen.remaining_ms.unwrap();
    assert!(b_left <= 3000, "B has {b_left} ms");
    // C: the remaining deadline, the propagated entry only, B's workload as asserted.
    let c = seen.next.expect("C answered");
    let c_left = c.remaining_ms.unwrap();
    assert!(c_left <= b_left, "C has {c_left} ms, B had {b_left}");
    assert_eq!(c.get("tenant"), Some("acme"));
    assert_eq!(c.get("secret"), None, "not marked to propagate");
    assert_eq!(c.attempt, 0, "the attempt is per hop");
    assert_eq!(c.workload.as_deref(), Some("shop/relay"));
    assert_eq!(c.caller.as_deref(), Some(pki.id("b").to_string().as_str()));
}

/// The plain path (no options anywhere) uses a context shared by the lane, or by the
/// actor for calls from its own node: it must still carry the handler's workload on.
#[actix::test]
async fn plain_calls_carry_the_handlers_workload_remote_and_local() {
    let pki = TestPki::new("context.test");
    let (_a, b, _c, relay) = chain(&pki);
    for _ in 0..2 {
        // Twice: the second call takes the context the lane built for the first.
        let seen = relay
            .ask(Observe {
                forward: Forward::Scoped,
            })
            .await
            .unwrap();
        assert!(seen.metadata.is_empty());
        let c = seen.next.expect("C answered");
        assert_eq!(c.workload.as_deref(), Some("shop/relay"));
        assert_eq!(c.caller.as_deref(), Some(pki.id("b").to_string().as_str()));
    }
    // From B's own node: the actor's own plain context.
    let local = b.local_ref("relay");
    for _ in 0..2 {
        let seen = local
            .ask(Observe {
                forward: Forward::Scoped,
            })
            .await
            .unwrap();
        assert_eq!(seen.caller, None);
        let c = seen.next.expect("C answered");
        assert_eq!(c.workload.as_deref(), Some("shop/relay"));
    }
}

#[actix::test]
async fn a_short_deadline_is_inherited_rather_than_the_default() {
    let pki = TestPki::new("context.test");
    let (_a, _b, _c, relay) = chain(&pki);
    let seen = relay
        .ask_with_options(
            Observe {
                forward: Forward::Scoped,
            },
            &options(400),
        )
        .await
        .unwrap();
    let c = seen.next.unwrap();
    // B's own ask would have had the node default (5 s) without the inherited deadline.
    assert!(c.remaining_ms.unwrap() <= 400, "{c:?}");
}

#[actix::test]
async fn a_tell_from_a_synchronous_handler_carries_the_propagated_metadata() {
    let pki = TestPki::new("context.test");
    let (_a, _b, c, relay) = chain(&pki);
    // try_tell never waits for a link, so it sends metadata only on a link whose version
    // is known: bring B's link to C up first.
    relay
        .ask(Observe {
            forward: Forward::Scoped,
        })
        .await
        .unwrap();
    relay
        .ask_with_options(
            Observe {
                forward: Forward::Tell,
            },
            &options(3000),
        )
        .await
        .unwrap();
    let at_c = c.local_ref("probe");
    let waiting = std::time::Instant::now();
    let recorded = loop {
        if let Some(r) = at_c.ask(Recorded).await.unwrap() {
            break r;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "the tell never reached the probe"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(recorded.get("tenant"), Some("acme"));
    assert_eq!(recorded.get("secret"), None);
    assert_eq!(recorded.workload.as_deref(), Some("shop/relay"));
    assert_eq!(recorded.remaining_ms, None, "a tell has no deadline");
}

#[actix::test]
async fn a_local_ask_gets_a_call_context_without_a_caller_node() {
    let pki = TestPki::new("context.test");
    let a = start(&pki, "a", 2);
    let probe = a.spawn("probe", Probe::default()).unwrap();
    let seen = probe
        .ask_with_options(
            Observe {
                forward: Forward::Scoped,
            },
            &options(900),
        )
        .await
        .unwrap();
    assert_eq!(seen.caller, None);
    assert!(seen.remaining_ms.unwrap() <= 900);
    assert_eq!(seen.get("secret"), Some("only-for-b"));
    // A plain local ask still has its deadline.
    let plain = probe
        .ask_timeout(
            Observe {
                forward: Forward::Scoped,
            },
            Duration::from_millis(700),
        )
        .await
        .unwrap();
    assert!(plain.remaining_ms.unwrap() <= 700, "{plain:?}");
    assert!(plain.metadata.is_empty());
}

#[actix::test]
async fn metadata_over_the_limit_is_refused_before_sending() {
    let pki = TestPki::new("context.test");
    let (a, b) = (start(&pki, "a", 2), start(&pki, "b", 2));
    b.spawn("probe", Probe::default()).unwrap();
    let r = a.actor_ref(b.local_addr(), "probe");
    let mut big = CallOptions::default();
    big.metadata.insert("blob", "x".repeat(1100));
    match r
        .ask_with_options(
            Observe {
                forward: Forward::Scoped,
            },
            &big,
        )
        .await
    {
        Err(
            e @ AskError::InvalidMetadata(MetadataError::TooLarge {
                size: 1104,
                limit: 1024,
            }),
        ) => {
            assert_eq!(e.outcome(), CallOutcome::NotDelivered);
            assert!(e.to_string().contains("1024-byte limit"), "{e}");
        }
        other => panic!("expected InvalidMetadata, got {other:?}"),
    }
    assert!(matches!(
        r.tell_with_options(Record, &big).await,
        Err(TellError::NotDelivered(Record, reason)) if reason.contains("over the 1024-byte limit")
    ));
}

async fn both_ways_work(caller: &Node, callee: &Node) {
    callee.spawn("sink", Sink::default()).unwrap();
    callee.spawn("probe", Probe::default()).unwrap();
    let sink = caller.actor_ref(callee.local_addr(), "sink");
    assert_eq!(sink.ask(Echo(vec![1, 2])).await.unwrap(), vec![1, 2]);
    for _ in 0..3 {
        sink.tell(Note(vec![0; 8])).await.unwrap();
    }
    assert_eq!(sink.ask(GetStats).await.unwrap().notes, 3);
    // Metadata reaches a v2 callee over a v2 link, and a v1 link carries none (v1 frames).
    let seen = caller
        .actor_ref(callee.local_addr(), "probe")
        .ask_with_options(
            Observe {
                forward: Forward::Scoped,
            },
            &options(2000),
        )
        .await
        .unwrap();
    let both_v2 = caller.config().endpoint.protocol_version >= 2
        && callee.config().endpoint.protocol_version >= 2;
    assert_eq!(seen.get("tenant").is_some(), both_v2, "{seen:?}");
    assert!(seen.remaining_ms.unwrap() <= 2000);
}

#[actix::test]
async fn a_v2_node_and_a_v1_node_call_each_other_both_ways() {
    let pki = TestPki::new("context.test");
    // Each pair is fresh, so each direction dials its own link.
    let (new, old) = (start(&pki, "new", 2), start(&pki, "old", 1));
    both_ways_work(&new, &old).await;
    both_ways_work(&old, &new).await;
    let (new, old) = (start(&pki, "new2", 2), start(&pki, "old2", 1));
    both_ways_work(&old, &new).await;
    both_ways_work(&new, &old).await;
    // Two v2 nodes speak v2.
    let (x, y) = (start(&pki, "x", 2), start(&pki, "y", 2));
    both_ways_work(&x, &y).await;
}

#[actix::test]
async fn versions_further_apart_are_refused_naming_both() {
    let pki = TestPki::new("context.test");
    let (v3, v1) = (start(&pki, "v3", 3), start(&pki, "v1", 1));
    v1.spawn("sink", Sink::default()).unwrap();
    v3.spawn("sink", Sink::default()).unwrap();
    match v3
        .actor_ref(v1.local_addr(), "sink")
        .ask(Echo(vec![]))
        .await
    {
        Err(AskError::Unreachable { reason, sent, .. }) => {
            assert!(
                reason.contains("we speak version 3, the peer speaks version 1"),
                "{reason}"
            );
            assert!(!sent, "nothing was sent");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    match v1
        .actor_ref(v3.local_addr(), "sink")
        .ask(Echo(vec![]))
        .await
    {
        Err(AskError::Unreachable { reason, .. }) => assert!(
            reason.contains("we speak version 1, the peer speaks version 3"),
            "{reason}"
        ),
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[actix::test]
async fn a_ref_pinned_to_another_identity_is_refused_and_nothing_is_sent() {
    let pki = TestPki::new("context.test");
    let (a, b) = (start(&pki, "a", 2), start(&pki, "b", 2));
    b.spawn("sink", Sink::default()).unwrap();
    let wrong = a
        .actor_ref(b.local_addr(), "sink")
        .pinned(pki.id("mallory"));
    match wrong.ask(Echo(vec![1])).await {
        Err(e @ AskError::NotDelivered { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&pki.id("mallory").to_string()), "{text}");
            assert!(text.contains(&pki.id("b").to_string()), "{text}");
            assert!(e.is_retry_safe());
        }
        other => panic!("expected NotDelivered, got {other:?}"),
    }
    assert!(matches!(
        wrong.tell(Note(vec![])).await,
        Err(TellError::NotDelivered(..))
    ));
    assert!(matches!(
        wrong.try_tell(Note(vec![])),
        Err(TellError::NotDelivered(..))
    ));
    let right = a.actor_ref(b.local_addr(), "sink").pinned(pki.id("b"));
    assert_eq!(right.ask(Echo(vec![4])).await.unwrap(), vec![4]);
    right.tell(Note(vec![])).await.unwrap();
    assert_eq!(
        right.ask(GetStats).await.unwrap().notes,
        1,
        "only the tell of the right pin arrived"
    );
    // A local reference is checked against this node's own identity.
    let local = b.local_ref("sink").pinned(pki.id("a"));
    assert!(matches!(
        local.ask(Echo(vec![])).await,
        Err(AskError::NotDelivered { .. })
    ));
}

#[actix::test]
async fn json_calls_reach_handlers_without_the_rust_types() {
    let pki = TestPki::new("context.test");
    let (a, b) = (start(&pki, "a", 2), start(&pki, "b", 2));
    b.spawn("sink", Sink::default()).unwrap();
    b.spawn("probe", Probe::default()).unwrap();
    let sink = a.actor_ref(b.local_addr(), "sink");
    let reply = sink
        .ask_json(
            "test.Echo/v1",
            &serde_json::json!([1, 2, 3]),
            &CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(reply, serde_json::json!([1, 2, 3]));
    // Metadata rides along with JSON calls too.
    let probe = a.actor_ref(b.local_addr(), "probe");
    let seen = probe
        .ask_json(
            "test.Observe/v1",
            &serde_json::json!({ "forward": "Scoped" }),
            &options(2000),
        )
        .await
        .unwrap();
    assert_eq!(seen["attempt"], 2);
    // Bad JSON is refused by the callee's decoder, naming the field.
    match probe
        .ask_json(
            "test.Observe/v1",
            &serde_json::json!({ "foward": "Scoped" }),
            &CallOptions::default(),
        )
        .await
    {
        Err(AskError::Rejected(reason)) => {
            assert!(reason.contains("missing field `forward`"), "{reason}")
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    match sink
        .ask_json(
            "test.Nope/v1",
            &serde_json::json!(null),
            &CallOptions::default(),
        )
        .await
    {
        Err(AskError::UnknownMessage { message, .. }) => assert_eq!(message, "test.Nope/v1"),
        other => panic!("expected UnknownMessage, got {other:?}"),
    }
    // The same on this node, without the network.
    let local = b.local_ref("sink");
    assert_eq!(
        local
            .ask_json(
                "test.Echo/v1",
                &serde_json::json!([9]),
                &CallOptions::default()
            )
            .await
            .unwrap(),
        serde_json::json!([9])
    );
    assert!(matches!(
        local
            .ask_json(
                "test.Echo/v1",
                &serde_json::json!("x"),
                &CallOptions::default()
            )
            .await,
        Err(AskError::Rejected(_))
    ));
}

#[actix::test]
async fn a_json_call_to_a_v1_node_is_not_delivered() {
    let pki = TestPki::new("context.test");
    let (new, old) = (start(&pki, "new", 2), start(&pki, "old", 1));
    old.spawn("sink", Sink::default()).unwrap();
    match new
        .actor_ref(old.local_addr(), "sink")
        .ask_json(
            "test.Echo/v1",
            &serde_json::json!([1]),
            &CallOptions::default(),
        )
        .await
    {
        Err(AskError::NotDelivered { reason }) => {
            assert!(reason.contains("protocol version 1"), "{reason}")
        }
        other => panic!("expected NotDelivered, got {other:?}"),
    }
}

/// Sends one frame body on `send`.
async fn send_frame(send: &mut quinn::SendStream, body: &[u8]) {
    let mut out = Vec::new();
    actormesh::transport::frame::push_frame(&mut out, body, 1 << 20).unwrap();
    send.write_all(&out).await.unwrap();
}

/// An ask frame body of kind 4 (version 2) whose block holds `entries`, built by hand: the
/// runtime's own sender refuses to encode one over the limit.
fn ask_with_entries(corr: u64, entries: &[(&str, String)]) -> Vec<u8> {
    let mut body = (entries.len() as u16).to_le_bytes().to_vec();
    for (k, v) in entries {
        body.push(1);
        body.extend_from_slice(&(k.len() as u16).to_le_bytes());
        body.extend_from_slice(k.as_bytes());
        body.extend_from_slice(&(v.len() as u16).to_le_bytes());
        body.extend_from_slice(v.as_bytes());
    }
    let mut f = vec![4];
    f.extend_from_slice(&corr.to_le_bytes());
    f.extend_from_slice(&5000u32.to_le_bytes());
    f.push(8);
    f.extend_from_slice(&(body.len() as u16).to_le_bytes());
    f.extend_from_slice(&body);
    let name = b"test.Echo/v1";
    f.push(name.len() as u8);
    f.extend_from_slice(name);
    f.extend_from_slice(&actormesh::transport::codec::encode(&Echo(vec![5])).unwrap());
    f
}

#[actix::test]
async fn the_receiver_refuses_metadata_over_the_limit_and_the_lane_goes_on() {
    use actormesh::transport::{codec, frame::FrameReader};
    use actormesh_runtime::wire::{self, WireError};
    let pki = TestPki::new("context.test");
    let b = start(&pki, "b", 2);
    b.spawn("sink", Sink::default()).unwrap();
    let (_, raw) = pki.node("raw");
    let conn = pki.raw_connect(Some(&raw), b.local_addr()).await.unwrap();
    let (mut control, control_recv) = conn.open_bi().await.unwrap();
    let mut hello = 2u32.to_le_bytes().to_vec();
    let listen: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    codec::encode_into(&(listen, 1u64, false), &mut hello).unwrap();
    send_frame(&mut control, &hello).await;
    let mut control_recv = FrameReader::new(control_recv, 1 << 20);
    control_recv.next().await.unwrap().expect("a Hello reply");
    let mut lane = conn.open_uni().await.unwrap();
    send_frame(
        &mut lane,
        &wire::encode_header(&wire::StreamHeader::Lane {
            id: 1,
            target: "sink".into(),
        }),
    )
    .await;
    let over = [("a", "x".repeat(600)), ("b", "y".repeat(600))];
    send_frame(&mut lane, &ask_with_entries(7, &over)).await;
    send_frame(&mut lane, &ask_with_entries(8, &[("a", "fits".into())])).await;
    let replies = conn.accept_uni().await.unwrap();
    let mut replies = FrameReader::new(replies, 1 << 20);
    let header = replies.next().await.unwrap().unwrap();
    assert_eq!(
        wire::decode_header(&header).unwrap(),
        wire::StreamHeader::Replies
    );
    let first = replies.next().await.unwrap().unwrap();
    match wire::decode_reply(&first).unwrap() {
        (7, Err(WireError::Rejected(reason))) => assert!(
            reason.contains("1202 bytes of keys and values, over the 1024-byte limit"),
            "{reason}"
        ),
        other => panic!("expected the over-limit ask to be rejected, got {other:?}"),
    }
    let second = replies.next().await.unwrap().unwrap();
    let (corr, ok) = wire::decode_reply(&second).unwrap();
    assert_eq!(corr, 8);
    assert_eq!(codec::decode::<Vec<u8>>(ok.unwrap()).unwrap(), vec![5]);
}
