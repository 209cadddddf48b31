//! Two nodes on loopback in one process: tell, ask, errors, order, local calls.

use std::time::Duration;

use actormesh::prelude::*;
use actormesh_integration::actors::*;
use actormesh_integration::harness::wait_until;
use actormesh_integration::pki::TestPki;

fn start(pki: &TestPki, name: &str) -> Node {
    let (_, creds) = pki.node(name);
    Node::start(NodeConfig::new("127.0.0.1:0".parse().unwrap()), &creds).unwrap()
}

#[actix::test]
async fn ask_and_tell_across_nodes() {
    let pki = TestPki::new("basics.test");
    let a = start(&pki, "a");
    let b = start(&pki, "b");
    b.spawn("sink", Sink::default()).unwrap();
    let r = a.actor_ref(b.local_addr(), "sink");
    assert!(!r.is_local());
    assert_eq!(r.ask(Echo(b"hi".to_vec())).await.unwrap(), b"hi");
    for _ in 0..100 {
        r.tell(Note(vec![1; 64])).await.unwrap();
    }
    // Asks and tells share the lane, so the stats reflect every tell before it.
    let stats = r.ask(GetStats).await.unwrap();
    assert_eq!(stats.notes, 100);
}

#[actix::test]
async fn unknown_message_and_missing_actor_are_typed_errors() {
    let pki = TestPki::new("basics.test");
    let a = start(&pki, "a");
    let b = start(&pki, "b");
    b.spawn("sink", Sink::default()).unwrap();
    let r = a.actor_ref(b.local_addr(), "sink");
    let said = r.ask(Nobody).await;
    // The usual cause is an `impl Handler` without the attribute: the error says so.
    let text = said.as_ref().unwrap_err().to_string();
    assert!(
        text.contains("mark that impl with #[actormesh::handler]"),
        "{text}"
    );
    match said {
        Err(AskError::UnknownMessage {
            actor,
            message,
            actor_type,
        }) => {
            assert_eq!(actor, "sink");
            assert_eq!(message, "test.Nobody/v1");
            assert!(actor_type.contains("Sink"), "{actor_type}");
        }
        other => panic!("expected UnknownMessage, got {other:?}"),
    }
    let missing = a.actor_ref(b.local_addr(), "nobody-here");
    match missing.ask(Echo(vec![])).await {
        Err(AskError::NoSuchActor { actor, node }) => {
            assert_eq!(actor, "nobody-here");
            assert_eq!(node, b.local_addr());
        }
        other => panic!("expected NoSuchActor, got {other:?}"),
    }
    // The same errors for a local target, without the network.
    let local = b.local_ref("sink");
    assert!(matches!(
        local.ask(Nobody).await,
        Err(AskError::UnknownMessage { .. })
    ));
    assert!(matches!(
        b.local_ref("nope").ask(Echo(vec![])).await,
        Err(AskError::NoSuchActor { .. })
    ));
}

#[actix::test]
async fn local_calls_go_through_the_same_api() {
    let pki = TestPki::new("basics.test");
    let a = start(&pki, "a");
    let r = a.spawn("sink", Sink::default()).unwrap();
    assert!(r.is_local());
    assert_eq!(r.ask(Echo(vec![7])).await.unwrap(), vec![7]);
    r.tell(Note(vec![])).await.unwrap();
    r.try_tell(Note(vec![])).unwrap();
    assert_eq!(r.ask(GetStats).await.unwrap().notes, 2);
}

#[actix::test]
async fn order_is_kept_per_sender_receiver_pair() {
    let pki = TestPki::new("basics.test");
    let a = start(&pki, "a");
    let c = start(&pki, "c");
    let b = start(&pki, "b");
    b.spawn("sink", Sink::default()).unwrap();
    let from_a = a.actor_ref(b.local_addr(), "sink");
    let from_c = c.actor_ref(b.local_addr(), "sink");
    const N: u64 = 5_000;
    let send = |r: RemoteRef, sender: u32| async move {
        for n in 1..=N {
            r.tell(Seq { sender, n }).await.unwrap();
        }
    };
    tokio::join!(send(from_a.clone(), 1), send(from_c.clone(), 2));
    // An ask on each lane arrives after that lane's tells.
    from_c.ask(GetStats).await.unwrap();
    let stats = from_a.ask(GetStats).await.unwrap();
    assert_eq!(stats.seq_seen, 2 * N);
    assert!(
        stats.seq_in_order,
        "messages from one sender arrived out of order"
    );
}

#[actix::test]
async fn a_lane_opened_from_another_arbiter_runs_on_the_nodes_runtime() {
    let pki = TestPki::new("basics.test");
    let a = start(&pki, "a");
    let b = start(&pki, "b");
    b.spawn("sink", Sink::default()).unwrap();
    let r = a.actor_ref(b.local_addr(), "sink");
    let other = actix::Arbiter::new();
    let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
    let from_other = r.clone();
    // The first message to the actor opens the lane, which spawns its writer.
    other.spawn(async move {
        let _ = sent_tx.send(from_other.try_tell(Note(vec![1; 64])).is_ok());
    });
    assert!(sent_rx.await.unwrap());
    // The calling arbiter goes away: a writer spawned there would go with it, and the
    // note (and the ask behind it on the same lane) would never be sent.
    other.stop();
    other.join().unwrap();
    let stats = r.ask_timeout(GetStats, Duration::from_secs(10)).await;
    assert_eq!(stats.unwrap().notes, 1);
}

#[actix::test]
async fn ten_thousand_concurrent_asks_all_complete() {
    let pki = TestPki::new("basics.test");
    let a = start(&pki, "a");
    let b = start(&pki, "b");
    b.spawn("sink", Sink::default()).unwrap();
    let r = a.actor_ref(b.local_addr(), "sink");
    let asks = (0..10_000u32).map(|i| {
        let r = r.clone();
        async move {
            r.ask_timeout(Echo(i.to_le_bytes().to_vec()), Duration::from_secs(30))
                .await
        }
    });
    let results = futures::future::join_all(asks).await;
    for (i, res) in results.into_iter().enumerate() {
        assert_eq!(res.unwrap(), (i as u32).to_le_bytes().to_vec());
    }
}

#[actix::test]
async fn idle_lanes_close_and_reopen_without_losing_messages() {
    let pki = TestPki::new("basics.test");
    let (_, creds) = pki.node("a");
    let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap());
    config.lane_idle_close = Duration::from_millis(200);
    let a = Node::start(config, &creds).unwrap();
    let b = start(&pki, "b");
    for name in ["s1", "s2", "s3"] {
        b.spawn(name, Sink::default()).unwrap();
    }
    let refs: Vec<RemoteRef> = ["s1", "s2", "s3"]
        .iter()
        .map(|n| a.actor_ref(b.local_addr(), n))
        .collect();
    for r in &refs {
        r.tell(Note(vec![])).await.unwrap();
    }
    assert_eq!(a.lanes_to(b.local_addr()), 3);
    // Wait (bounded) for the idle lanes to close.
    let closed = wait_until(Duration::from_secs(10), || a.lanes_to(b.local_addr()) == 0).await;
    assert!(closed, "idle lanes never closed");
    for r in &refs {
        r.tell(Note(vec![])).await.unwrap();
        assert_eq!(r.ask(GetStats).await.unwrap().notes, 2);
    }
}

static SERIALIZED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A message that counts how often it is serialized.
#[derive(Debug, Deserialize, RemoteMessage)]
#[remote(name = "basics.Counted/v1", reply = u32)]
struct Counted(u32);

impl Serialize for Counted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SERIALIZED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        s.serialize_newtype_struct("Counted", &self.0)
    }
}

struct Doubler;

impl Actor for Doubler {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Counted> for Doubler {
    type Result = u32;
    fn handle(&mut self, m: Counted, _: &mut Context<Self>) -> u32 {
        m.0 * 2
    }
}

#[actix::test]
async fn local_calls_never_serialize_and_remote_ones_do() {
    let pki = TestPki::new("basics.test");
    let a = start(&pki, "a");
    let b = start(&pki, "b");
    let local = a.spawn("doubler", Doubler).unwrap();
    b.spawn("doubler", Doubler).unwrap();
    let before = SERIALIZED.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(local.ask(Counted(21)).await.unwrap(), 42);
    local.tell(Counted(1)).await.unwrap();
    assert_eq!(a.local_ref("doubler").ask(Counted(2)).await.unwrap(), 4);
    assert_eq!(SERIALIZED.load(std::sync::atomic::Ordering::SeqCst), before);
    let remote = a.actor_ref(b.local_addr(), "doubler");
    assert_eq!(remote.ask(Counted(5)).await.unwrap(), 10);
    assert!(SERIALIZED.load(std::sync::atomic::Ordering::SeqCst) > before);
}

#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "basics.WhoAmI/v1", reply = Option<String>)]
struct WhoAmI;

struct Mirror;

impl Actor for Mirror {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<WhoAmI> for Mirror {
    type Result = Option<String>;
    fn handle(&mut self, _: WhoAmI, _: &mut Context<Self>) -> Option<String> {
        actormesh::caller().map(|c| c.to_string())
    }
}

#[actix::test]
async fn handlers_see_the_verified_identity_of_remote_callers() {
    let pki = TestPki::new("basics.test");
    let a = start(&pki, "a");
    let b = start(&pki, "b");
    b.spawn("mirror", Mirror).unwrap();
    let remote = a.actor_ref(b.local_addr(), "mirror");
    assert_eq!(
        remote.ask(WhoAmI).await.unwrap().as_deref(),
        Some("spiffe://basics.test/node/a")
    );
    assert_eq!(b.local_ref("mirror").ask(WhoAmI).await.unwrap(), None);
}
