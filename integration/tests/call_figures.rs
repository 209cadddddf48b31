//! The inbound call figures (`NodeConfig::metrics`) with real nodes on loopback: each
//! outcome counted where the call arrived (remote and local), the handler's time, the
//! source workload a caller asserts, and nothing counted on a node that keeps no figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::ResponseFuture;
use actormesh::prelude::*;
use actormesh::stats::{ServerFigures, StatsSnapshot, UNKNOWN};
use actormesh::{Arrival, AskError, InboundGate, Refusal, SpawnOptions};
use actormesh_integration::actors::*;
use actormesh_integration::pki::TestPki;

fn start(pki: &TestPki, name: &str, metrics: bool) -> Node {
    let (_, creds) = pki.node(name);
    let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap());
    config.metrics = metrics;
    Node::start(config, &creds).unwrap()
}

/// Refuses `test.Block/v1`, as a rate limit with no token would.
struct NoBlocks;

impl InboundGate for NoBlocks {
    fn admit(&self, call: &Arrival<'_>) -> Result<(), Refusal> {
        if call.message == "test.Block/v1" {
            Err(Refusal::RateLimited {
                service: "sink".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Relay/v1", reply = Result<Vec<u8>, AskError>)]
struct Relay(Vec<u8>);

/// Forwards an echo to `target`; spawned with a workload, which its call asserts.
struct Front {
    target: RemoteRef,
}

impl Actor for Front {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Relay> for Front {
    type Result = ResponseFuture<Result<Vec<u8>, AskError>>;
    fn handle(&mut self, m: Relay, _: &mut Context<Self>) -> Self::Result {
        // Inside the handled call's scope, the ask asserts the handler's workload.
        let info = CallInfo::current().expect("inside a handler");
        let target = self.target.clone();
        Box::pin(async move { info.scope(async move { target.ask(Echo(m.0)).await }).await })
    }
}

fn row<'a>(figures: &'a [ServerFigures], message: &str) -> &'a ServerFigures {
    figures
        .iter()
        .find(|f| f.message == message && f.destination.ends_with("Sink"))
        .unwrap_or_else(|| panic!("no row for {message}: {figures:?}"))
}

fn source<'a>(row: &'a ServerFigures, source: &str) -> &'a StatsSnapshot {
    &row.sources
        .iter()
        .find(|(s, _)| s == source)
        .unwrap_or_else(|| panic!("no source {source} in {row:?}"))
        .1
}

fn count(s: &StatsSnapshot, outcome: &str) -> u64 {
    s.outcomes
        .iter()
        .find(|(o, _)| o == outcome)
        .map_or(0, |(_, n)| *n)
}

/// Polls `node`'s figures (at most 10 s) until `done` holds: an outcome is counted as the
/// reply goes out, which the caller may see a moment before.
async fn figures_until(node: &Node, done: impl Fn(&[ServerFigures]) -> bool) -> Vec<ServerFigures> {
    let began = Instant::now();
    loop {
        let f = node.server_figures();
        if done(&f) {
            return f;
        }
        assert!(began.elapsed() < Duration::from_secs(10), "figures: {f:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix::test]
async fn each_outcome_is_counted_where_the_call_arrived() {
    let pki = TestPki::new("figures.test");
    let server = start(&pki, "server", true);
    let caller = start(&pki, "caller", true);
    server
        .spawn_with(
            "sink",
            SpawnOptions {
                restart: actormesh::RestartPolicy::on_failure(),
                ..Default::default()
            },
            Sink::default,
        )
        .unwrap();
    server.set_inbound_gate(Some(Arc::new(NoBlocks)));
    let remote = caller.actor_ref(server.local_addr(), "sink");
    let local = server.actor_ref(server.local_addr(), "sink");

    for i in 0..5u8 {
        assert_eq!(remote.ask(Echo(vec![i])).await.unwrap(), vec![i]);
    }
    for i in 0..3u8 {
        assert_eq!(local.ask(Echo(vec![i])).await.unwrap(), vec![i]);
    }
    // An asynchronous handler: counted when its response resolves, not when it returns.
    assert_eq!(remote.ask(Delay(30)).await.unwrap(), 30);
    assert!(matches!(
        remote.ask(Crash).await,
        Err(AskError::Panicked { .. })
    ));
    let bad = remote
        .ask_json(
            "test.Echo/v1",
            &serde_json::json!("not bytes"),
            &Default::default(),
        )
        .await;
    assert!(matches!(bad, Err(AskError::Rejected(_))), "{bad:?}");
    assert!(matches!(
        remote.ask(Block(1)).await,
        Err(AskError::RateLimited { .. })
    ));
    assert!(matches!(
        local.ask(Block(1)).await,
        Err(AskError::RateLimited { .. })
    ));

    // A handler with a workload asserts it on the call it makes: its own source.
    caller
        .spawn_with(
            "front",
            SpawnOptions {
                workload: Some("shop/front".into()),
                ..Default::default()
            },
            {
                let target = remote.clone();
                move || Front {
                    target: target.clone(),
                }
            },
        )
        .unwrap();
    let front = caller.actor_ref(caller.local_addr(), "front");
    assert_eq!(front.ask(Relay(vec![9])).await.unwrap().unwrap(), vec![9]);

    let figures = figures_until(&server, |f| {
        f.iter()
            .filter(|r| r.destination.ends_with("Sink"))
            .flat_map(|r| &r.sources)
            .all(|(_, s)| s.in_flight == 0)
            && f.iter()
                .any(|r| r.message == "test.Crash/v1" && !r.sources.is_empty())
    })
    .await;
    let echo = row(&figures, "test.Echo/v1");
    let plain = source(echo, UNKNOWN);
    assert_eq!(count(plain, "ok"), 8, "{plain:?}");
    assert_eq!(count(plain, "rejected"), 1, "{plain:?}");
    assert_eq!(plain.latency.count(), 9);
    assert_eq!(count(source(echo, "shop/front"), "ok"), 1);
    // The handler ran for the nine it took (not for the one refused by its decoder).
    assert_eq!(echo.handler_time.count(), 9);
    let delay = source(row(&figures, "test.Delay/v1"), UNKNOWN);
    assert_eq!(count(delay, "ok"), 1);
    // From arrival to the reply: the 30 ms the response took to resolve.
    let p50 = delay.latency.quantile(0.5).unwrap();
    assert!(p50 >= Duration::from_millis(20), "{p50:?}");
    assert_eq!(
        count(source(row(&figures, "test.Crash/v1"), UNKNOWN), "panicked"),
        1
    );
    let blocked = source(row(&figures, "test.Block/v1"), UNKNOWN);
    assert_eq!(count(blocked, "rate_limited"), 2, "{blocked:?}");
    assert_eq!(row(&figures, "test.Block/v1").handler_time.count(), 0);
}

#[actix::test]
async fn a_node_that_keeps_no_figures_counts_nothing() {
    let pki = TestPki::new("figures.test");
    let server = start(&pki, "server", false);
    let caller = start(&pki, "caller", true);
    server.spawn("sink", Sink::default()).unwrap();
    let remote = caller.actor_ref(server.local_addr(), "sink");
    assert_eq!(remote.ask(Echo(vec![1])).await.unwrap(), vec![1]);
    assert!(!server.keeps_figures());
    assert!(server.server_figures().is_empty());
    // The caller's node keeps figures of calls that arrive there only.
    assert!(caller.server_figures().is_empty());
}
