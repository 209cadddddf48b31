//! The registry's views with real processes: a deployment with a `service:` block has its
//! Running instances listed as endpoints (`get services`, `get endpoints`), an agent killed
//! with -9 takes its endpoints out, `get proxy-status` shows the registry's version, and
//! `get proxy-config` of an unknown node is a clear 404.

mod common;

use std::time::Duration;

use actormesh::mesh::Service;
use actormesh_master::services::{ProxyStatusReport, ServiceSummary};
use common::*;

const ECHO: &str = "kind: Deployment\nname: echo\nspec:\n  actor: echo\n  version: v1\n  replicas: 2\n  resources: { need: \"cpus:1\" }\n  constraints: { unique_node: true }\n  service: { labels: { tier: front }, weight: 3, balancer: round_robin }\n";

fn json_of<T: serde::de::DeserializeOwned>(master: &Master, args: &[&str]) -> T {
    let out = master.cli(args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"))
}

fn endpoints(master: &Master) -> Service {
    json_of(master, &["get", "endpoints", "echo", "-o", "json"])
}

async fn wait_endpoints(master: &Master, what: &str, cond: impl Fn(&Service) -> bool) -> Service {
    let start = std::time::Instant::now();
    loop {
        let s = tokio::task::block_in_place(|| endpoints(master));
        if cond(&s) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_instances_are_endpoints_and_a_killed_agent_takes_its_own_out() {
    let dir = temp_dir("svc-views");
    let (mesh, boot, api) = (free_udp(), free_udp(), free_tcp());
    let flags = ["--heartbeat", "100ms", "--unreachable-after", "1s"];
    let mut master = Master::start(&dir.join("master"), mesh, boot, api, &flags).await;
    let token = master.token(3600);
    let opts = |zone: &'static str| ["--demo-actors", "--resources", "cpus:4", "--attr", zone];
    let mut a1 = agent(
        &master,
        &dir.join("a1"),
        "a1",
        Some(&token),
        &opts("zone=z1"),
    )
    .await;
    let _a2 = agent(
        &master,
        &dir.join("a2"),
        "a2",
        Some(&token),
        &opts("zone=z2"),
    )
    .await;
    let f = dir.join("echo.yaml");
    std::fs::write(&f, ECHO).unwrap();
    let out = master.cli(&["apply", "-f", f.to_str().unwrap(), "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");

    let s = wait_endpoints(&master, "2 endpoints", |s| s.endpoints.len() == 2).await;
    let nodes = master.nodes();
    let tasks = master.tasks();
    for e in &s.endpoints {
        let t = tasks
            .iter()
            .find(|t| t.id == e.id)
            .expect("an endpoint is a task");
        let n = nodes.iter().find(|n| n.id == t.agent).unwrap();
        assert_eq!(e.node, n.identity, "the node's SPIFFE id");
        assert_eq!(Some(e.addr), n.addr, "the node's mesh address");
        assert_eq!(e.actor, t.id, "the instance's actor name on the agent");
        assert_eq!(e.zone.as_deref(), n.attrs.get("zone").map(String::as_str));
        assert_eq!((e.version.as_str(), e.weight), ("v1", 3));
        assert_eq!(e.labels.get("tier").map(String::as_str), Some("front"));
    }
    let list: Vec<ServiceSummary> = json_of(&master, &["get", "services", "-o", "json"]);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "default/echo");
    assert_eq!(
        (list[0].endpoints, list[0].versions.clone()),
        (2, vec!["v1".to_string()])
    );
    let table = master.cli(&["get", "services"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("default/echo")
                && l.contains("round_robin")
                && l.contains(" 2 ")),
        "{table}"
    );
    let status: ProxyStatusReport = json_of(&master, &["get", "proxy-status", "-o", "json"]);
    assert!(status.version > 0, "{status:?}");

    // The master's proxy's live view of both endpoints, once it applied them.
    let waiting = std::time::Instant::now();
    let view = loop {
        let out = master.cli(&["describe", "service", "echo"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.matches(" ready ").count() == 2 {
            break text;
        }
        assert!(
            waiting.elapsed() < std::time::Duration::from_secs(20),
            "the master's proxy never showed both endpoints ready: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(view.contains("Service:         default/echo"), "{view}");
    assert!(
        view.contains("Seen by:         the proxy of master"),
        "{view}"
    );
    for e in &s.endpoints {
        assert!(view.contains(&e.id), "{view}");
    }
    let live: serde_json::Value = json_of(
        &master,
        &["describe", "service", "echo", "--node", "a1", "-o", "json"],
    );
    assert_eq!(live["node"], "a1");
    assert!(
        live["endpoints"].as_array().is_some_and(|e| e.len() == 2),
        "{live}"
    );
    let out = master.cli(&["describe", "service", "echo", "--node", "nobody"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("no node \"nobody\""),
        "{out:?}"
    );

    // a1 dies: its endpoint goes at once, its replacement cannot go to a1 or a2 (unique
    // node), so one endpoint stays.
    let on_a1 = s
        .endpoints
        .iter()
        .find(|e| e.node.ends_with("/node/a1"))
        .unwrap()
        .id
        .clone();
    a1.kill().await;
    let left = wait_endpoints(&master, "a1's endpoint out", |s| {
        s.endpoints.iter().all(|e| e.id != on_a1)
    })
    .await;
    assert_eq!(left.endpoints.len(), 1, "{left:?}");
    assert!(left.endpoints[0].node.ends_with("/node/a2"));
    let later: ProxyStatusReport = json_of(&master, &["get", "proxy-status", "-o", "json"]);
    assert!(later.version > status.version, "the version only grows");

    // Unknown names are clear errors.
    let out = master.cli(&["get", "proxy-config", "nobody"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no node \"nobody\""), "{err}");
    let out = master.cli(&["get", "endpoints", "nothing-here"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no service default/nothing-here"), "{err}");
    let out = master.cli(&["get", "endpoints", "Bad/Name"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid service name"));

    // A restarted master rebuilds the registry from what the agent reports, at a version
    // above every one before.
    master.proc.kill().await;
    let master = Master::start(&dir.join("master"), mesh, boot, api, &flags).await;
    let restarted: ProxyStatusReport = json_of(&master, &["get", "proxy-status", "-o", "json"]);
    assert!(
        restarted.version > later.version,
        "{} after {}",
        restarted.version,
        later.version
    );
    let back = wait_endpoints(&master, "a2's endpoint again", |s| s.endpoints.len() == 1).await;
    assert!(back.endpoints[0].node.ends_with("/node/a2"));
}
