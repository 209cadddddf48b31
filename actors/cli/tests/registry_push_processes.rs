//! Push with real processes: a master and agents (each with its own Proxy, and the
//! master's own) converge after a change, as `get proxy-status` and `get proxy-config`
//! show; a proxy that was away (its process stopped, or the master restarted) catches up
//! when it is back; a removed node's identity is refused by another agent, not only by the
//! master.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use actormesh::mesh::protocol::{DumpConfig, ProxyConfig, PROXY_ACTOR};
use actormesh_master::membership::AgentState;
use actormesh_master::services::{ProxyStatus, ProxyStatusReport};
use common::*;

fn echo(replicas: u32) -> String {
    format!("kind: Deployment\nname: echo\nspec:\n  actor: echo\n  version: v1\n  replicas: {replicas}\n  resources: {{ need: \"cpus:0.5\" }}\n  service: {{}}\n")
}

fn json_of<T: serde::de::DeserializeOwned>(master: &Master, path: &str) -> T {
    serde_json::from_value(master.client().call("GET", path, None).unwrap())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn status(master: &Master) -> ProxyStatusReport {
    json_of(master, "/v1/proxy-status")
}

fn proxy_config(master: &Master, node: &str) -> ProxyConfig {
    json_of(master, &format!("/v1/proxy-config/{node}"))
}

/// Polls `get proxy-status` (every 50 ms, at most `limit`) until `cond` holds.
async fn wait_status(
    master: &Master,
    what: &str,
    limit: Duration,
    cond: impl Fn(&ProxyStatusReport) -> bool,
) -> ProxyStatusReport {
    let start = Instant::now();
    loop {
        let s = tokio::task::block_in_place(|| status(master));
        if cond(&s) {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node ids (`a1`, `master`) of the proxies in `s`.
fn nodes_of(s: &ProxyStatusReport) -> BTreeSet<String> {
    s.proxies
        .iter()
        .map(|p| p.node.rsplit('/').next().unwrap().to_string())
        .collect()
}

fn of<'a>(s: &'a ProxyStatusReport, node: &str) -> &'a ProxyStatus {
    let id = format!("spiffe://cluster.local/node/{node}");
    s.proxies
        .iter()
        .find(|p| p.node == id)
        .unwrap_or_else(|| panic!("no proxy of {node} in {s:#?}"))
}

/// Every proxy of `nodes` applied the registry's version (none behind, none STALE), and
/// no other proxy is subscribed.
fn converged(s: &ProxyStatusReport, nodes: &[&str]) -> bool {
    let want: BTreeSet<String> = nodes.iter().map(|n| n.to_string()).collect();
    !s.held
        && nodes_of(s) == want
        && s.proxies
            .iter()
            .all(|p| p.applied == Some(s.version) && p.behind == 0 && !p.stale)
}

fn echo_endpoints(c: &ProxyConfig) -> usize {
    c.services
        .iter()
        .filter(|s| s.name.to_string() == "default/echo")
        .map(|s| s.endpoints.len())
        .sum()
}

fn apply(master: &Master, dir: &Path, replicas: u32) {
    let f = dir.join(format!("echo-{replicas}.yaml"));
    std::fs::write(&f, echo(replicas)).unwrap();
    let out = master.cli(&["apply", "-f", f.to_str().unwrap(), "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");
}

/// Sends `signal` (STOP, CONT) to `proc`.
fn signal(proc: &Proc, signal: &str) {
    let pid = proc.child.id().expect("the process runs").to_string();
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxy_converges_after_a_change_and_catches_up_after_being_away() {
    let dir = temp_dir("push-converge");
    let (mesh, boot, api) = (free_udp(), free_udp(), free_tcp());
    // Heartbeats of 250 ms, Unreachable after 4 s: a proxy stopped for a moment is STALE
    // (after 1 s without an acknowledgement) before its agent is Unreachable; a restarted
    // master holds pushes for 8 s.
    let flags = [
        "--heartbeat",
        "250ms",
        "--unreachable-after",
        "4s",
        "--push-stale-after",
        "1s",
    ];
    let mut master = Master::start(&dir.join("master"), mesh, boot, api, &flags).await;
    let token = master.token(3600);
    let mut agents = Vec::new();
    for name in ["a1", "a2", "a3"] {
        let extra = ["--demo-actors", "--resources", "cpus:2"];
        agents.push(agent(&master, &dir.join(name), name, Some(&token), &extra).await);
    }
    let all = ["a1", "a2", "a3", "master"];

    // (a) 1 → 3: every node's proxy (the agents' and the master's) applies the version with
    // three endpoints, and none is STALE.
    apply(&master, &dir, 1);
    apply(&master, &dir, 3);
    let three = wait_status(
        &master,
        "all four proxies at the version with 3 endpoints",
        Duration::from_secs(20),
        |s| {
            converged(s, &all)
                && all.iter().all(|n| {
                    echo_endpoints(&tokio::task::block_in_place(|| proxy_config(&master, n))) == 3
                })
        },
    )
    .await;
    for n in all {
        let c = tokio::task::block_in_place(|| proxy_config(&master, n));
        assert_eq!(c.version, Some(three.version), "{n}: {c:?}");
        assert!(of(&three, n).last_push_latency_ms.is_some(), "{three:#?}");
    }
    let out = master.cli(&["get", "proxy-status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !table.contains("STALE") && table.contains("/node/master"),
        "{table}"
    );

    // (b) a3's process stops: a change reaches the others; a3 falls behind and turns
    // STALE; once it runs again the master's next push brings it up to date.
    signal(&agents[2], "STOP");
    apply(&master, &dir, 2);
    let behind = wait_status(
        &master,
        "a3 STALE and behind, the others converged",
        Duration::from_secs(10),
        |s| {
            let a3 = of(s, "a3");
            a3.stale
                && a3.behind > 0
                && s.proxies
                    .iter()
                    .filter(|p| !p.node.ends_with("/a3"))
                    .all(|p| p.applied == Some(s.version))
        },
    )
    .await;
    assert!(behind.version > three.version);
    signal(&agents[2], "CONT");
    let caught_up = wait_status(&master, "a3 caught up", Duration::from_secs(15), |s| {
        converged(s, &all)
    })
    .await;
    assert!(caught_up.version >= behind.version);
    assert_eq!(
        echo_endpoints(&tokio::task::block_in_place(|| proxy_config(&master, "a3"))),
        2
    );

    // (b) The master restarts: every proxy subscribes again, with the version it holds,
    // and gets the new master's registry, at a version above every earlier one.
    master.proc.kill().await;
    let master = Master::start(&dir.join("master"), mesh, boot, api, &flags).await;
    let back = wait_status(
        &master,
        "every proxy at the restarted master's version",
        Duration::from_secs(30),
        |s| {
            converged(s, &all)
                && all.iter().all(|n| {
                    echo_endpoints(&tokio::task::block_in_place(|| proxy_config(&master, n))) == 2
                })
        },
    )
    .await;
    assert!(
        back.version > caught_up.version,
        "{} after {}",
        back.version,
        caught_up.version
    );
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Asks the `$proxy` of the node at `at` for its config, from a node with `credentials`.
async fn dump_from(
    credentials: &actormesh::transport::pki::Credentials,
    at: std::net::SocketAddr,
) -> Result<ProxyConfig, actormesh::AskError> {
    on_node(credentials.clone(), move |node| async move {
        node.actor_ref(at, PROXY_ACTOR)
            .ask_timeout(DumpConfig, Duration::from_secs(3))
            .await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_agent_refuses_a_removed_nodes_identity() {
    let dir = temp_dir("push-revoke");
    let flags = [
        "--heartbeat",
        "100ms",
        "--unreachable-after",
        "1s",
        "--gone-after",
        "3s",
    ];
    let master = Master::start(
        &dir.join("master"),
        free_udp(),
        free_udp(),
        free_tcp(),
        &flags,
    )
    .await;
    let token = master.token(3600);
    let _a1 = agent(&master, &dir.join("a1"), "a1", Some(&token), &[]).await;
    let mut a2 = agent(&master, &dir.join("a2"), "a2", Some(&token), &[]).await;
    let a1_addr = master
        .nodes()
        .into_iter()
        .find(|n| n.id == "a1")
        .and_then(|n| n.addr)
        .unwrap();
    // a2's identity, as a thief who copied its key would hold it.
    let stolen = actormesh::transport::pki::Credentials::load(&dir.join("a2").join("creds"))
        .expect("a2's credentials");

    // a2 dies. While it is only Unreachable, its identity still reaches a1.
    a2.kill().await;
    let before = dump_from(&stolen, a1_addr).await;
    assert!(
        before.is_ok(),
        "a2's identity before its removal: {before:?}"
    );

    // a2 is Gone: its identity is revoked, and the master pushes the revocation.
    master
        .wait_state("a2", AgentState::Gone, Duration::from_secs(20))
        .await;
    let start = Instant::now();
    loop {
        let c = tokio::task::block_in_place(|| proxy_config(&master, "a1"));
        if c.revoked.iter().any(|r| r.id.ends_with("/node/a2")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a1 never applied a2's revocation: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // a1 refuses a2's identity: the handshake fails, the call never arrives.
    let after = dump_from(&stolen, a1_addr).await;
    assert!(
        matches!(after, Err(actormesh::AskError::Unreachable { .. })),
        "a1 must refuse the removed a2: {after:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
