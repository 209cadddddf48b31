//! Supervision, death watch and bounded mailboxes, with nodes on loopback.

use std::time::Duration;

use actormesh::prelude::*;
use actormesh_integration::actors::*;
use actormesh_integration::harness::wait_until;
use actormesh_integration::pki::TestPki;
use tokio::sync::watch;

fn start(pki: &TestPki, name: &str) -> Node {
    let (_, creds) = pki.node(name);
    Node::start(NodeConfig::new("127.0.0.1:0".parse().unwrap()), &creds).unwrap()
}

#[actix::test]
async fn full_mailbox_backpressures_its_sender_without_blocking_another_actor() {
    let pki = TestPki::new("sup.test");
    let a = start(&pki, "a");
    let b = start(&pki, "b");
    let (open_tx, open_rx) = watch::channel(false);
    b.spawn_with(
        "gated",
        SpawnOptions {
            mailbox_capacity: Some(8),
            ..Default::default()
        },
        move || Gate::new(open_rx.clone()),
    )
    .unwrap();
    b.spawn("free", Sink::default()).unwrap();
    let gated = a.actor_ref(b.local_addr(), "gated");
    let free = a.actor_ref(b.local_addr(), "free");
    gated.tell(Hold).await.unwrap();

    // Flood the held actor until its sender is pushed back. Bounded: the mailbox (8), the
    // QUIC stream window (1 MiB) and the lane buffer (1 MiB) hold far fewer than 1M notes.
    let mut sent = 0u64;
    let mut pushed_back = false;
    for _ in 0..1_000_000 {
        match gated.try_tell(Note(vec![0; 64])) {
            Ok(()) => sent += 1,
            Err(TellError::Full(_)) => {
                pushed_back = true;
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        if sent.is_multiple_of(1024) {
            // Let the lane writer and the connection run.
            tokio::task::yield_now().await;
        }
    }
    assert!(
        pushed_back,
        "try_tell never reported Full after {sent} notes"
    );
    // The other actor on the same node pair is not blocked by the full lane.
    let reply = free
        .ask_timeout(Echo(b"still here".to_vec()), Duration::from_secs(5))
        .await
        .expect("the second actor must answer while the first one's lane is full");
    assert_eq!(reply, b"still here");
    // Open the gate: every note that was accepted is delivered, none lost.
    open_tx.send(true).unwrap();
    let stats = gated
        .ask_timeout(GetStats, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(stats.notes, sent);
}

#[actix::test]
async fn panicking_actor_fails_pending_asks_and_is_restarted() {
    let pki = TestPki::new("sup.test");
    let a = start(&pki, "a");
    let b = start(&pki, "b");
    let (open_tx, open_rx) = watch::channel(false);
    b.spawn_with(
        "gate",
        SpawnOptions {
            restart: RestartPolicy::on_failure(),
            ..Default::default()
        },
        move || Gate::new(open_rx.clone()),
    )
    .unwrap();
    let r = a.actor_ref(b.local_addr(), "gate");
    r.tell(Hold).await.unwrap();
    let crash = r.ask(Crash);
    let queued = r.ask(Echo(vec![1]));
    let opener = async {
        // Open the gate once both asks sit in the held mailbox on b.
        for _ in 0..10_000 {
            if b.mailbox_depth("gate") == Some(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            b.mailbox_depth("gate"),
            Some(2),
            "the asks never reached the mailbox"
        );
        open_tx.send(true).unwrap();
    };
    let (crash, queued, ()) = tokio::join!(crash, queued, opener);
    assert_eq!(
        crash,
        Err(AskError::Panicked {
            actor: "gate".into()
        })
    );
    assert_eq!(
        queued,
        Err(AskError::Panicked {
            actor: "gate".into()
        })
    );
    // A fresh instance answers.
    assert_eq!(r.ask(Echo(vec![2])).await.unwrap(), vec![2]);
}

#[actix::test]
async fn actor_without_restart_stays_down_and_watchers_hear_why() {
    let pki = TestPki::new("sup.test");
    let a = start(&pki, "a");
    let b = start(&pki, "b");
    b.spawn("sink", Sink::default()).unwrap();
    let r = a.actor_ref(b.local_addr(), "sink");
    r.ask(Echo(vec![])).await.unwrap();
    let watch = a.watch(&r);
    assert_eq!(
        r.ask(Crash).await,
        Err(AskError::Panicked {
            actor: "sink".into()
        })
    );
    let t = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap();
    assert_eq!(t.reason, TerminationReason::Panicked);
    assert_eq!(t.actor, "sink");
    assert!(matches!(
        r.ask(Echo(vec![])).await,
        Err(AskError::NoSuchActor { .. })
    ));
}

#[actix::test]
async fn watcher_is_told_when_a_remote_actor_stops() {
    let pki = TestPki::new("sup.test");
    let a = start(&pki, "a");
    let b = start(&pki, "b");
    b.spawn("sink", Sink::default()).unwrap();
    let r = a.actor_ref(b.local_addr(), "sink");
    r.ask(Echo(vec![])).await.unwrap();
    let watch = a.watch(&r);
    // The watch (control stream) and the stop (lane) race; either way the watcher hears
    // that the actor stopped, because b remembers recently ended actors.
    r.ask(StopSelf).await.unwrap();
    let t = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap();
    assert_eq!(t.reason, TerminationReason::Stopped);
    assert_eq!(t.node, b.local_addr());
    // Watching something that does not exist resolves at once.
    let missing = a.watch(&a.actor_ref(b.local_addr(), "never-was"));
    let t = tokio::time::timeout(Duration::from_secs(10), missing)
        .await
        .unwrap();
    assert_eq!(t.reason, TerminationReason::NoSuchActor);
}

#[actix::test]
async fn local_watch_and_stop() {
    let pki = TestPki::new("sup.test");
    let a = start(&pki, "a");
    let r = a.spawn("sink", Sink::default()).unwrap();
    let watch = a.watch(&r);
    assert!(a.stop("sink"));
    let t = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap();
    assert_eq!(t.reason, TerminationReason::Stopped);
    assert!(!a.stop("sink"));
}

#[actix::test]
async fn try_ask_reports_a_full_mailbox_instead_of_waiting() {
    let pki = TestPki::new("sup.test");
    let a = start(&pki, "a");
    let (open_tx, open_rx) = watch::channel(false);
    let r = a
        .spawn_with(
            "gate",
            SpawnOptions {
                mailbox_capacity: Some(2),
                ..Default::default()
            },
            move || Gate::new(open_rx.clone()),
        )
        .unwrap();
    r.tell(Hold).await.unwrap();
    // Wait until the gate is holding (its Hold has been handled and freed its permit).
    assert!(
        wait_until(Duration::from_secs(10), || a.mailbox_depth("gate")
            == Some(0))
        .await
    );
    r.try_tell(Note(vec![])).unwrap();
    r.try_tell(Note(vec![])).unwrap();
    assert!(matches!(
        r.try_tell(Note(vec![])),
        Err(TellError::Full(Note(_)))
    ));
    assert_eq!(
        r.try_ask(Echo(vec![]), Duration::from_secs(5)).await,
        Err(AskError::MailboxFull {
            actor: "gate".into()
        })
    );
    open_tx.send(true).unwrap();
    assert_eq!(r.ask(GetStats).await.unwrap().notes, 2);
}

/// Keeps itself busy with a timer, so it never stops just because addresses are dropped.
struct Ticker;

impl Actor for Ticker {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_millis(5), |_, _| {});
    }
}

#[actormesh::handler]
impl Handler<Echo> for Ticker {
    type Result = MessageResult<Echo>;
    fn handle(&mut self, m: Echo, _: &mut Context<Self>) -> Self::Result {
        MessageResult(m.0)
    }
}

#[actormesh::handler]
impl Handler<Crash> for Ticker {
    type Result = ();
    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("ticker crashed on purpose");
    }
}

#[actix::test]
async fn stop_ends_an_actor_that_keeps_timers_and_is_not_restarted() {
    let pki = TestPki::new("sup.test");
    let a = start(&pki, "a");
    let r = a
        .spawn_with(
            "ticker",
            SpawnOptions {
                restart: RestartPolicy::Always {
                    max_restarts: 100,
                    within: Duration::from_secs(60),
                    backoff: actormesh::Backoff::default(),
                },
                ..Default::default()
            },
            || Ticker,
        )
        .unwrap();
    assert_eq!(r.ask(Echo(vec![3])).await.unwrap(), vec![3]);
    let watch = a.watch(&r);
    assert!(a.stop("ticker"));
    let t = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap();
    assert_eq!(t.reason, TerminationReason::Stopped);
    assert!(a.actor_names().is_empty(), "{:?}", a.actor_names());
}

#[actix::test]
async fn a_crash_never_runs_queued_messages_on_the_crashed_instance() {
    let pki = TestPki::new("sup.test");
    let a = start(&pki, "a");
    let r = a
        .spawn_with(
            "ticker",
            SpawnOptions {
                restart: RestartPolicy::on_failure(),
                ..Default::default()
            },
            || Ticker,
        )
        .unwrap();
    // Two crashes queued together: the first panics; the second must not run on the
    // crashed instance (a second panic there would escape supervision).
    let (c1, c2, e) = tokio::join!(r.ask(Crash), r.ask(Crash), r.ask(Echo(vec![1])));
    assert_eq!(
        c1,
        Err(AskError::Panicked {
            actor: "ticker".into()
        })
    );
    assert_eq!(
        c2,
        Err(AskError::Panicked {
            actor: "ticker".into()
        })
    );
    assert_eq!(
        e,
        Err(AskError::Panicked {
            actor: "ticker".into()
        })
    );
    assert_eq!(r.ask(Echo(vec![2])).await.unwrap(), vec![2]);
}

#[actix::test]
async fn a_factory_that_panics_on_restart_ends_the_actor() {
    let pki = TestPki::new("sup.test");
    let a = start(&pki, "a");
    let made = std::cell::Cell::new(0);
    let r = a
        .spawn_with(
            "ticker",
            SpawnOptions {
                restart: RestartPolicy::on_failure(),
                ..Default::default()
            },
            move || {
                made.set(made.get() + 1);
                assert!(made.get() == 1, "only the first instance can be made");
                Ticker
            },
        )
        .unwrap();
    let watch = a.watch(&r);
    assert!(matches!(r.ask(Crash).await, Err(AskError::Panicked { .. })));
    let t = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .unwrap();
    assert_eq!(t.reason, TerminationReason::Panicked);
    // A factory that panics at once is a spawn error, and the name stays free.
    let err = a.spawn_with("bad", SpawnOptions::default(), || -> Ticker {
        panic!("no")
    });
    assert!(
        matches!(err, Err(actormesh::NodeError::Start { .. })),
        "{err:?}"
    );
    a.spawn("bad", Ticker).unwrap();
}

#[actix::test]
async fn dropped_watches_are_withdrawn_locally_and_remotely() {
    let pki = TestPki::new("sup.test");
    let a = start(&pki, "a");
    let b = start(&pki, "b");
    b.spawn("sink", Sink::default()).unwrap();
    let remote = a.actor_ref(b.local_addr(), "sink");
    remote.ask(Echo(vec![])).await.unwrap();
    // Bounded: 200 watches placed and dropped.
    for _ in 0..200 {
        drop(a.watch(&remote));
    }
    let kept = a.watch(&remote);
    // The remote side ends with only the live watch (Unwatch travels on the control
    // stream; wait for it to be applied).
    assert!(
        wait_until(Duration::from_secs(10), || b.watchers_of("sink") == 1).await,
        "remote watchers: {}",
        b.watchers_of("sink")
    );
    // Locally, dead watchers are pruned when the next one is placed.
    let local = b.local_ref("sink");
    for _ in 0..200 {
        drop(b.watch(&local));
    }
    let _live = b.watch(&local);
    assert!(
        b.watchers_of("sink") <= 3,
        "local watchers: {}",
        b.watchers_of("sink")
    );
    // The kept watch still fires.
    remote.ask(StopSelf).await.unwrap();
    let t = tokio::time::timeout(Duration::from_secs(10), kept)
        .await
        .unwrap();
    assert_eq!(t.reason, TerminationReason::Stopped);
}
