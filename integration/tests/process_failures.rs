//! Real node processes on loopback: a killed peer, hostile bytes, bounded memory.

use std::time::{Duration, Instant};

use actormesh::prelude::*;
use actormesh::transport::{Endpoint, EndpointConfig};
use actormesh_integration::actors::*;
use actormesh_integration::harness::ChildProc;
use actormesh_integration::pki::TestPki;

const TESTNODE: &str = env!("CARGO_BIN_EXE_am-testnode");

async fn child_node(pki: &TestPki, name: &str, idle_ms: u64) -> (ChildProc, std::net::SocketAddr) {
    let (dir, _) = pki.node(name);
    let idle = idle_ms.to_string();
    let mut child = ChildProc::spawn(
        TESTNODE.as_ref(),
        &["--certs", dir.to_str().unwrap(), "--idle-ms", &idle],
    )
    .unwrap();
    let addr = child
        .wait_line("READY", Duration::from_secs(30))
        .await
        .unwrap();
    (child, addr.parse().unwrap())
}

fn local_node(pki: &TestPki, name: &str, idle_ms: u64) -> Node {
    let (_, creds) = pki.node(name);
    let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap());
    config.endpoint.idle_timeout = Duration::from_millis(idle_ms);
    config.endpoint.keep_alive = Duration::from_millis(idle_ms / 4);
    Node::start(config, &creds).unwrap()
}

#[actix::test]
async fn killing_the_peer_during_an_ask_gives_unreachable_within_the_deadline() {
    let pki = TestPki::new("proc.test");
    let (mut child, addr) = child_node(&pki, "victim", 1500).await;
    let node = local_node(&pki, "caller", 1500);
    let sink = node.actor_ref(addr, "sink");
    assert_eq!(sink.ask(Echo(vec![1])).await.unwrap(), vec![1]);
    let watch = node.watch(&sink);
    let deadline = Duration::from_secs(10);
    let started = Instant::now();
    let pending = sink.ask_timeout(Delay(60_000), deadline);
    let killer = async {
        child.kill().await;
    };
    let (result, ()) = tokio::join!(pending, killer);
    let elapsed = started.elapsed();
    match result {
        Err(AskError::Unreachable { node: n, .. }) => assert_eq!(n, addr),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(
        elapsed < deadline,
        "took {elapsed:?}, deadline {deadline:?}"
    );
    let t = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap();
    assert!(
        matches!(t.reason, TerminationReason::NodeUnreachable(_)),
        "{t:?}"
    );
    // Later calls fail fast as Unreachable too (the dial is refused or times out).
    let again = sink
        .ask_timeout(Echo(vec![]), Duration::from_secs(10))
        .await;
    assert!(
        matches!(again, Err(AskError::Unreachable { .. })),
        "{again:?}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[actix::test]
async fn garbage_and_oversized_frames_are_refused_and_the_node_keeps_serving() {
    let pki = TestPki::new("proc.test");
    let (child, addr) = child_node(&pki, "target", 5000).await;
    let pid = child.child.id().unwrap();
    let (_, creds) = pki.node("hostile");
    let (hostile, _links) =
        Endpoint::bind(EndpointConfig::new("127.0.0.1:0".parse().unwrap()), &creds).unwrap();
    let link = hostile.link(addr).await.unwrap();
    let conn = link.connection().clone();
    let rss_before = rss_kib(pid);

    let mut lane_header = Vec::new();
    actormesh::transport::frame::push_frame(
        &mut lane_header,
        &actormesh_runtime::wire::encode_header(&actormesh_runtime::wire::StreamHeader::Lane {
            id: 1,
            target: "sink".into(),
        }),
        1 << 20,
    )
    .unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage header",
            b"\x05\x00\x00\x00\xde\xad\xbe\xef\x01".to_vec(),
        ),
        ("oversized header prefix", u32::MAX.to_le_bytes().to_vec()),
        (
            "oversized frame prefix",
            [lane_header.clone(), u32::MAX.to_le_bytes().to_vec()].concat(),
        ),
        (
            "garbage lane frame",
            [lane_header.clone(), vec![3, 0, 0, 0, 9, 9, 9]].concat(),
        ),
    ];
    for (what, bytes) in &cases {
        // Each hostile stream is stopped by the node with the protocol error code.
        for _ in 0..50 {
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(bytes).await.unwrap();
            let stopped = tokio::time::timeout(Duration::from_secs(10), s.stopped())
                .await
                .unwrap_or_else(|_| panic!("{what}: the node did not stop the stream"));
            assert_eq!(stopped.unwrap(), Some(quinn::VarInt::from_u32(1)), "{what}");
        }
    }
    // An ask with an undecodable payload is refused with a typed error, not a panic.
    let mut s = conn.open_uni().await.unwrap();
    let mut bad_ask = lane_header.clone();
    actormesh::transport::frame::push_frame(
        &mut bad_ask,
        &{
            let mut b = Vec::new();
            b.push(2u8);
            b.extend_from_slice(&1u64.to_le_bytes());
            b.extend_from_slice(&1000u32.to_le_bytes());
            b.push(12);
            b.extend_from_slice(b"test.Echo/v1");
            b.extend_from_slice(&[0xff; 3]);
            b
        },
        1 << 20,
    )
    .unwrap();
    s.write_all(&bad_ask).await.unwrap();
    s.finish().unwrap();

    let rss_after = rss_kib(pid);
    // 200 claims of 4 GiB each: memory must stay bounded (well under 64 MiB of growth).
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The link itself survived, and a well-behaved node is served normally.
    assert!(link.is_alive());
    let good = local_node(&pki, "good", 5000);
    let sink = good.actor_ref(addr, "sink");
    assert_eq!(sink.ask(Echo(b"ok".to_vec())).await.unwrap(), b"ok");
    drop(child);
}

#[actix::test]
async fn garbage_instead_of_hello_closes_that_connection_only() {
    let pki = TestPki::new("proc.test");
    let (child, addr) = child_node(&pki, "target", 5000).await;
    let (_, creds) = pki.node("rude");
    let conn = pki.raw_connect(Some(&creds), addr).await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    // A frame too short to hold even the protocol version.
    send.write_all(&[2, 0, 0, 0, 0xAA, 0xBB]).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap()
    {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(4), "{c}");
        }
        other => panic!("expected an application close with the protocol code, got {other}"),
    }
    let good = local_node(&pki, "good", 5000);
    assert_eq!(
        good.actor_ref(addr, "sink")
            .ask(Echo(vec![5]))
            .await
            .unwrap(),
        vec![5]
    );
    drop(child);
}

#[actix::test]
async fn a_restarted_peer_is_reached_again_after_backoff() {
    let pki = TestPki::new("proc.test");
    let (mut child, addr) = child_node(&pki, "phoenix", 1500).await;
    let node = local_node(&pki, "caller", 1500);
    let sink = node.actor_ref(addr, "sink");
    assert_eq!(sink.ask(Echo(vec![1])).await.unwrap(), vec![1]);
    child.kill().await;
    // The link times out; the pending table is failed; further calls fail as Unreachable.
    let lost = sink
        .ask_timeout(Delay(60_000), Duration::from_secs(10))
        .await;
    assert!(
        matches!(lost, Err(AskError::Unreachable { .. })),
        "{lost:?}"
    );

    // A new process (new incarnation) on the same address.
    let (dir, _) = pki.node("phoenix");
    let listen = addr.to_string();
    let mut reborn = ChildProc::spawn(
        TESTNODE.as_ref(),
        &[
            "--certs",
            dir.to_str().unwrap(),
            "--idle-ms",
            "1500",
            "--listen",
            &listen,
        ],
    )
    .unwrap();
    reborn
        .wait_line("READY", Duration::from_secs(30))
        .await
        .unwrap();
    // Calls succeed again once the dial backoff allows a new dial; each failed attempt
    // before that fails fast (it does not wait for its deadline).
    let mut attempts = 0;
    let reply = loop {
        attempts += 1;
        let started = Instant::now();
        match sink
            .ask_timeout(Echo(vec![2]), Duration::from_secs(10))
            .await
        {
            Ok(r) => break r,
            Err(AskError::Unreachable { .. }) if attempts < 50 => {
                assert!(started.elapsed() < Duration::from_secs(10));
                // Wait out (part of) the backoff before the next attempt.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("attempt {attempts}: {e}"),
        }
    };
    assert_eq!(reply, vec![2]);
    reborn.kill().await;
}

#[actix::test]
async fn a_peer_that_restarts_and_calls_back_fails_what_waited_on_its_old_process() {
    let pki = TestPki::new("proc.test");
    // Long idle timeouts: the restart must be noticed from the new link, not by silence.
    let (mut child, addr) = child_node(&pki, "phoenix", 20_000).await;
    let a = local_node(&pki, "a", 20_000);
    a.spawn("sink", Sink::default()).unwrap();
    let old = a.actor_ref(addr, "sink");
    assert_eq!(old.ask(Echo(vec![1])).await.unwrap(), vec![1]);
    let watch = a.watch(&old);
    let started = Instant::now();
    let pending = old.ask_timeout(Delay(60_000), Duration::from_secs(15));
    let restart = async {
        child.kill().await;
        // The same node comes back on the same address (a new process: new incarnation)
        // and calls a.
        let (_, creds) = pki.node("phoenix");
        let mut config = NodeConfig::new(addr);
        config.endpoint.idle_timeout = Duration::from_secs(20);
        config.endpoint.keep_alive = Duration::from_secs(5);
        let reborn = Node::start(config, &creds).unwrap();
        let back = reborn.actor_ref(a.local_addr(), "sink");
        assert_eq!(back.ask(Echo(vec![2])).await.unwrap(), vec![2]);
        reborn
    };
    let (result, _reborn) = tokio::join!(pending, restart);
    match result {
        Err(AskError::Unreachable { reason, .. }) => {
            assert!(reason.contains("restarted"), "{reason}")
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    let t = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap();
    assert!(
        matches!(t.reason, TerminationReason::NodeUnreachable(ref r) if r.contains("restarted")),
        "{t:?}"
    );
}
