//! Order and delivery across lane changes: an idle lane replaced while its receiver is
//! stalled, and a link cycled while messages flow.

use std::time::{Duration, Instant, SystemTime};

use actormesh::prelude::*;
use actormesh_integration::actors::*;
use actormesh_integration::harness::wait_until;
use actormesh_integration::pki::TestPki;
use tokio::sync::watch;

#[actix::test]
async fn a_new_lane_never_overtakes_an_idle_closed_one_whose_receiver_is_stalled() {
    let pki = TestPki::new("order.test");
    let (_, creds) = pki.node("a");
    let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap());
    config.lane_idle_close = Duration::from_millis(100);
    let a = Node::start(config, &creds).unwrap();
    let (_, creds) = pki.node("b");
    let b = Node::start(NodeConfig::new("127.0.0.1:0".parse().unwrap()), &creds).unwrap();
    let (open_tx, open_rx) = watch::channel(false);
    b.spawn_with(
        "gate",
        SpawnOptions {
            mailbox_capacity: Some(4),
            ..Default::default()
        },
        move || Gate::new(open_rx.clone()),
    )
    .unwrap();
    let r = a.actor_ref(b.local_addr(), "gate");
    r.tell(Hold).await.unwrap();
    let mut n = 0;
    for _ in 0..1000 {
        n += 1;
        r.tell(Seq { sender: 1, n }).await.unwrap();
    }
    // The first lane goes idle and closes while b still holds most of its frames unread.
    let closed = wait_until(Duration::from_secs(10), || a.lanes_to(b.local_addr()) == 0).await;
    assert!(closed, "the idle lane never closed");
    // A second lane: its frames must wait for the first lane to be read to its end.
    for _ in 0..1000 {
        n += 1;
        r.tell(Seq { sender: 1, n }).await.unwrap();
    }
    open_tx.send(true).unwrap();
    let stats = r
        .ask_timeout(GetStats, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(stats.seq_seen, n);
    assert!(stats.seq_in_order, "a later lane overtook an earlier one");
}

#[actix::test]
async fn cycling_a_link_mid_stream_loses_and_reorders_nothing() {
    let pki = TestPki::new("order.test");
    let now = SystemTime::now();
    // a's certificate lives 3 s, so a cycles its link to b after about 2.4 s.
    let short = pki.node_between(
        "a",
        now - Duration::from_secs(1),
        now + Duration::from_secs(3),
    );
    let a = Node::start(NodeConfig::new("127.0.0.1:0".parse().unwrap()), &short).unwrap();
    let renewed = pki
        .ca
        .issue(&pki.id("a"), Duration::from_secs(3600))
        .unwrap()
        .credentials()
        .unwrap();
    let (_, creds) = pki.node("b");
    let b = Node::start(NodeConfig::new("127.0.0.1:0".parse().unwrap()), &creds).unwrap();
    let (_open_tx, open_rx) = watch::channel(true);
    b.spawn("gate", Gate::new(open_rx)).unwrap();
    let r = a.actor_ref(b.local_addr(), "gate");
    r.tell(Seq { sender: 1, n: 1 }).await.unwrap();
    // The reply proves the link is up.
    r.ask(GetStats).await.unwrap();
    let first = a
        .endpoint()
        .existing_link(b.local_addr())
        .unwrap()
        .info()
        .id;
    // Renewed after the link came up: the link carries the short certificate and is cycled
    // before it expires; the new link presents the renewed one.
    a.endpoint().replace_credentials(&renewed).unwrap();
    let started = Instant::now();
    let mut n = 1;
    let mut cycled_at = None;
    // Bounded: at most 2M messages or 20 s; stops 2000 messages after the cycle.
    while n < 2_000_000 && started.elapsed() < Duration::from_secs(20) {
        n += 1;
        r.tell(Seq { sender: 1, n }).await.unwrap();
        if n % 100 == 0 && cycled_at.is_none() {
            let now_id = a
                .endpoint()
                .existing_link(b.local_addr())
                .map(|l| l.info().id);
            if now_id.is_some_and(|id| id != first) {
                cycled_at = Some(n);
            }
        }
        if cycled_at.is_some_and(|c| n >= c + 2000) {
            break;
        }
        if n % 256 == 0 {
            // Pace the sender a little so the cycle happens within a bounded count.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(cycled_at.is_some(), "the link was never cycled");
    let stats = r
        .ask_timeout(GetStats, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        stats.seq_seen, n,
        "messages were lost across the link change"
    );
    assert!(
        stats.seq_in_order,
        "messages were reordered across the link change"
    );
}
