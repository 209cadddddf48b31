//! The README's main job: `actormesh dev` serves its demo echo as the service
//! `default/echo` at once (`get services`, `get endpoints`), a user scales it with a
//! manifest of their own, and a restarted dev keeps what the user made of it.

mod common;

use std::time::{Duration, Instant};

use actormesh::mesh::Service;
use actormesh_master::deployments::DeploymentSummary;
use actormesh_master::services::ServiceSummary;
use common::*;

/// Starts `actormesh dev` on `dir` with its API at `api`; returns it and the
/// `--api … --api-token-file …` arguments it says to use.
async fn start_dev(dir: &std::path::Path, api: &str) -> (Proc, Vec<String>) {
    let mut dev = Proc::spawn(&[
        "dev",
        "--data-dir",
        dir.to_str().unwrap(),
        "--api",
        api,
        "--gateway-http",
        "127.0.0.1:0",
    ]);
    // The dev gateway greets through the echo service.
    let gw = dev.line("gateway default/gateway: ").await;
    let url = gw
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let hello = tokio::task::block_in_place(|| {
        ureq::get(&format!("{url}/hello/you"))
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
    })
    .unwrap_or_else(|e| panic!("{gw}: {e}"));
    assert_eq!(hello, "\"hello, you\"", "{gw}");
    // "try: actormesh get nodes --api http://… --api-token-file …"
    let hint = dev.line("try: actormesh get nodes ").await;
    let args: Vec<String> = hint.split_whitespace().map(str::to_string).collect();
    assert_eq!(args.len(), 4, "{hint}");
    (dev, args)
}

fn cli(api: &[String], first: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    all.extend(api.iter().cloned());
    tokio::task::block_in_place(|| std::process::Command::new(BIN).args(&all).output().unwrap())
}

fn json_of<T: serde::de::DeserializeOwned>(api: &[String], args: &[&str]) -> T {
    let out = cli(api, args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"))
}

/// Polls `get endpoints default/echo` (every 50 ms, at most 30 s) until `cond` holds.
async fn wait_echo(api: &[String], what: &str, cond: impl Fn(&Service) -> bool) -> Service {
    let start = Instant::now();
    loop {
        let s: Service = json_of(api, &["get", "endpoints", "default/echo", "-o", "json"]);
        if cond(&s) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_cluster_serves_its_demo_echo_as_a_service() {
    let dir = temp_dir("dev");
    let state = dir.join("state");
    let api = free_tcp().to_string();
    let (mut dev, args) = start_dev(&state, &api).await;

    // The join command it prints works as printed: a second agent joins.
    let join = dev.line("join an agent: ").await;
    let mut words: Vec<String> = join.split_whitespace().map(str::to_string).collect();
    assert_eq!(&words[..2], ["actormesh", "agent"], "{join}");
    let agent_dir = dir.join("my-agent");
    let last = words.len() - 1;
    words[last] = agent_dir.display().to_string();
    words.extend(["--name".into(), "mine".into()]);
    let argv: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    let mut mine = Proc::spawn(&argv);
    let start = Instant::now();
    loop {
        let nodes: Vec<actormesh_master::membership::AgentRecord> =
            json_of(&args, &["get", "nodes", "-o", "json"]);
        if nodes.iter().any(|n| n.id == "mine") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{nodes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mine.kill().await;

    // dev deployed the echo as a service, and said it is ready once it has an endpoint.
    let services: Vec<ServiceSummary> = json_of(&args, &["get", "services", "-o", "json"]);
    let echo = services
        .iter()
        .find(|s| s.name == "default/echo")
        .unwrap_or_else(|| panic!("no default/echo in {services:?}"));
    assert_eq!(
        (echo.endpoints, echo.versions.as_slice()),
        (1, ["v1".to_string()].as_slice()),
        "{echo:?}"
    );
    let out = cli(&args, &["get", "endpoints", "default/echo"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("/node/dev-agent") && table.contains(" v1 "),
        "{table}"
    );
    let e = &wait_echo(&args, "one endpoint", |s| s.endpoints.len() == 1)
        .await
        .endpoints[0];
    assert_eq!(e.zone.as_deref(), Some("dev"), "{e:?}");

    // The user scales it with their own manifest; apply waits for both.
    let manifest = dir.join("echo.yaml");
    std::fs::write(
        &manifest,
        "kind: Deployment\nname: echo\nspec:\n  actor: echo\n  version: v1\n  replicas: 2\n  resources: { need: \"mem:64MiB\" }\n  service: {}\n",
    )
    .unwrap();
    let out = cli(
        &args,
        &[
            "apply",
            "-f",
            manifest.to_str().unwrap(),
            "--timeout",
            "30s",
        ],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("default/echo: 2/2 running"),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_echo(&args, "two endpoints", |s| s.endpoints.len() == 2).await;
    let out = cli(&args, &["get", "tasks"]);
    let tasks = String::from_utf8_lossy(&out.stdout);
    assert!(
        tasks.contains("default/echo") && tasks.contains("dev-agent") && tasks.contains("Running"),
        "{tasks}"
    );

    // A restarted dev does not deploy its echo over the user's.
    dev.kill().await;
    let (mut dev, args) = start_dev(&state, &api).await;
    let deployments: Vec<DeploymentSummary> = json_of(&args, &["get", "deployments", "-o", "json"]);
    let echo = deployments
        .iter()
        .find(|d| (d.namespace.as_str(), d.name.as_str()) == ("default", "echo"))
        .unwrap_or_else(|| panic!("{deployments:?}"));
    assert_eq!(echo.replicas, 2, "the user's replicas stay: {echo:?}");
    wait_echo(&args, "two endpoints again", |s| s.endpoints.len() == 2).await;
    dev.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
