//! A node dies under load, with real processes: a master and 3 agent processes, a service
//! with an instance on each, and a caller in this process (a client identity, its own
//! Proxy subscribed to the master) calling by name at 200 calls/s, each call with a
//! 500 ms deadline. One agent is killed with SIGKILL. The callers see only typed errors
//! (no call outlives its deadline), the errors stop within the Unreachable limit (the
//! master takes the agent's endpoint out of discovery in the push of that state change),
//! and after that every call succeeds on the two agents left.

mod common;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use actormesh::mesh::{Mesh, MeshOptions, ServiceName};
use actormesh::{AskError, Node, NodeConfig};
use actormesh_cli::demo::Echo;
use common::*;

/// The master's Unreachable limit in this test (`--unreachable-after`).
const UNREACHABLE_AFTER: Duration = Duration::from_secs(1);
/// Its heartbeat interval, which is also its detector's tick.
const HEARTBEAT: Duration = Duration::from_millis(100);
/// Between two calls: 200 calls/s.
const PERIOD: Duration = Duration::from_millis(5);
/// Each call's deadline.
const DEADLINE: Duration = Duration::from_millis(500);
/// How long the load runs before the kill, and after it.
const BEFORE_KILL: Duration = Duration::from_secs(1);
const AFTER_KILL: Duration = Duration::from_secs(4);

/// After the kill, the master's detector sees the agent silent for `UNREACHABLE_AFTER` at
/// its next tick (at most one `HEARTBEAT` later), and pushes the removal within its push
/// window (10 ms) plus a loopback round trip; a call that picked the dead endpoint just
/// before the caller applied that push fails (at its deadline). 300 ms covers the tick,
/// the window and the push, and leaves about 150 ms for a loaded 2-core machine.
const MARGIN: Duration = Duration::from_millis(300);

fn manifest() -> String {
    r#"{"kind":"Deployment","name":"echo","spec":{"actor":"echo","version":"v1","replicas":3,"resources":{"need":"cpus:1"},"constraints":{"unique_node":true},"service":{"balancer":"round_robin"}}}"#.to_string()
}

/// One call: when it started and ended, and how.
struct Call {
    start: Instant,
    end: Instant,
    result: Result<String, AskError>,
}

fn service_endpoints(mesh: &Mesh) -> Vec<actormesh::mesh::Endpoint> {
    let name = ServiceName::parse("echo", "default").unwrap();
    mesh.proxy_config()
        .services
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.endpoints)
        .unwrap_or_default()
}

/// The caller: waits for 3 endpoints, calls at 200/s, says when to kill (`ready`), learns
/// when the kill happened (`killed`), keeps calling `AFTER_KILL` more, and returns every
/// call and the endpoints its Proxy ended with.
async fn run_load(
    credentials: actormesh::transport::pki::Credentials,
    master_mesh: std::net::SocketAddr,
    ready: mpsc::Sender<()>,
    killed: mpsc::Receiver<Instant>,
) -> (Vec<Call>, Instant, Vec<actormesh::mesh::Endpoint>) {
    let node = Node::start(
        NodeConfig::new("127.0.0.1:0".parse().unwrap()),
        &credentials,
    )
    .unwrap();
    let mesh = Mesh::start(&node, MeshOptions::default().master(master_mesh)).unwrap();
    let waited = Instant::now();
    while service_endpoints(&mesh).len() < 3 {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "3 endpoints not in the caller's table: {:?}",
            mesh.proxy_config()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let echo = mesh.service("echo").unwrap();
    let calls = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut handles = Vec::new();
    // Missed ticks burst to catch up: the rate holds at 200/s on a busy machine.
    let mut ticker = tokio::time::interval(PERIOD);
    let began = Instant::now();
    let mut kill_at: Option<Instant> = None;
    let mut asked = false;
    for i in 0u64.. {
        ticker.tick().await;
        if !asked && began.elapsed() >= BEFORE_KILL {
            ready.send(()).unwrap();
            asked = true;
        }
        if kill_at.is_none() {
            kill_at = killed.try_recv().ok();
        }
        if kill_at.is_some_and(|k| k.elapsed() >= AFTER_KILL) {
            break;
        }
        assert!(
            began.elapsed() < BEFORE_KILL + AFTER_KILL + Duration::from_secs(20),
            "the kill never came"
        );
        let (echo, calls) = (echo.clone(), calls.clone());
        handles.push(actix::spawn(async move {
            let start = Instant::now();
            let result = echo.ask_timeout(Echo(format!("call {i}")), DEADLINE).await;
            calls.borrow_mut().push(Call {
                start,
                end: Instant::now(),
                result,
            });
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let calls = std::mem::take(&mut *calls.borrow_mut());
    (calls, kill_at.unwrap(), service_endpoints(&mesh))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_agents_under_load_gives_typed_errors_that_stop_within_the_unreachable_limit(
) {
    let dir = temp_dir("traffic-node-death");
    let (hb, ua) = (
        format!("{}ms", HEARTBEAT.as_millis()),
        format!("{}ms", UNREACHABLE_AFTER.as_millis()),
    );
    let master = Master::start(
        &dir.join("master"),
        free_udp(),
        free_udp(),
        free_tcp(),
        &["--heartbeat", &hb, "--unreachable-after", &ua],
    )
    .await;
    let token = master.token(3600);
    let opts = ["--demo-actors", "--resources", "cpus:2"];
    let mut victim = agent(&master, &dir.join("a1"), "a1", Some(&token), &opts).await;
    let _a2 = agent(&master, &dir.join("a2"), "a2", Some(&token), &opts).await;
    let _a3 = agent(&master, &dir.join("a3"), "a3", Some(&token), &opts).await;
    let f = dir.join("echo.json");
    std::fs::write(&f, manifest()).unwrap();
    let out = master.cli(&["apply", "-f", f.to_str().unwrap(), "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");
    let victim_addr: std::net::SocketAddr = {
        let nodes = master.nodes();
        let a1 = nodes.iter().find(|n| n.id == "a1").expect("a1 registered");
        a1.addr.expect("a1 has a mesh address")
    };

    // A client identity, issued with a client token over the bootstrap port.
    let client_token = master.client_token(600);
    let creds =
        actormesh::client::issue(master.bootstrap, &client_token, "load", &dir.join("client"))
            .await
            .unwrap();

    let (ready_tx, ready) = mpsc::channel();
    let (killed, killed_rx) = mpsc::channel();
    let master_mesh = master.mesh;
    let load = tokio::task::spawn_blocking(move || {
        actix::System::new().block_on(run_load(
            creds.credentials,
            master_mesh,
            ready_tx,
            killed_rx,
        ))
    });
    tokio::task::spawn_blocking(move || ready.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the caller started its load");
    let kill_at = Instant::now();
    victim.kill().await; // SIGKILL
    killed.send(kill_at).unwrap();
    let (calls, kill_at, endpoints_after) = tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("the load ended")
        .unwrap();

    // Typed errors only, none later than its deadline.
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut last_error: Option<Instant> = None;
    let mut slowest = Duration::ZERO;
    for c in &calls {
        slowest = slowest.max(c.end - c.start);
        if let Err(e) = &c.result {
            let kind = match e {
                AskError::Timeout { .. } => "Timeout",
                AskError::Unreachable { .. } => "Unreachable",
                other => panic!("an error a dead node should not cause: {other:?}"),
            };
            *kinds.entry(kind).or_default() += 1;
            // Calls take about a millisecond here: one that started within 50 ms before
            // the kill was in flight to the agent when it died.
            assert!(
                c.start + Duration::from_millis(50) >= kill_at,
                "a call that started {:?} before the kill failed: {e}",
                kill_at.saturating_duration_since(c.start)
            );
            last_error = Some(last_error.map_or(c.start, |l| l.max(c.start)));
        }
    }
    let errors: usize = kinds.values().sum();
    let window = last_error.map(|l| l.saturating_duration_since(kill_at));
    eprintln!(
        "{} calls, {errors} failed {kinds:?}; the last failing call started {window:?} after the kill; slowest call {slowest:?}",
        calls.len()
    );
    assert!(
        slowest <= DEADLINE + Duration::from_millis(250),
        "a call outlived its {DEADLINE:?} deadline: {slowest:?}"
    );
    assert!(errors > 0, "calls in flight to the killed agent fail");
    let window = window.unwrap();
    assert!(
        window <= UNREACHABLE_AFTER + MARGIN,
        "errors went on {window:?} after the kill, beyond the Unreachable limit {UNREACHABLE_AFTER:?} + {MARGIN:?}"
    );

    // After that, every call succeeded on the two agents left, and the killed agent's
    // endpoint is out of the caller's table.
    let settled = kill_at + window;
    let served = calls
        .iter()
        .filter(|c| c.start > settled && c.result.is_ok())
        .count();
    assert!(
        served >= 400,
        "at least 2 s of calls (200/s) answered after the errors stopped: {served}"
    );
    assert_eq!(endpoints_after.len(), 2, "{endpoints_after:#?}");
    assert!(endpoints_after.iter().all(|e| e.addr != victim_addr));
}
