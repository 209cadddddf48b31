//! CA rotation under load, with real processes: an `actormesh master`, agents serving the
//! demo echo as `default/echo`, and a client calling it without pause. `actormesh ca
//! rotate begin` trusts a new CA beside the old one; the new one signs as soon as every
//! agent trusts it, and agents renew at once; a client issued before the rotation still
//! reaches every node on new links; `finish` drops the old CA. No call fails at any step.

mod callload;
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actormesh_master::rotation::{Phase, RotationStatus};
use callload::Load;
use common::*;

const ECHO: &str = "kind: Deployment\nname: echo\nspec:\n  actor: echo\n  version: v1\n  replicas: 2\n  resources: { need: \"cpus:1\" }\n  service: {}\n";

fn status(master: &Master) -> RotationStatus {
    let out = master.cli(&["ca", "status", "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

async fn wait_status(
    master: &Master,
    what: &str,
    cond: impl Fn(&RotationStatus) -> bool,
) -> RotationStatus {
    let start = Instant::now();
    loop {
        let s = status(master);
        if cond(&s) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn issue_client(master: &Master, name: &str, dir: &Path) -> PathBuf {
    let out_dir = dir.join(name);
    let token = master.client_token(600);
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(BIN)
            .args([
                "cert",
                "issue",
                "--client",
                name,
                "--token",
                &token,
                "--join",
                &master.bootstrap.to_string(),
                "--out",
                out_dir.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{out:?}");
    out_dir
}

/// A fresh `actormesh call` (a new process: new handshakes with the master and an echo).
fn call(identity: &Path) -> std::process::Output {
    tokio::task::block_in_place(|| {
        std::process::Command::new(BIN)
            .args([
                "call",
                "--identity",
                identity.to_str().unwrap(),
                "--timeout",
                "10s",
                "default/echo",
                "demo.Greet/v1",
                r#"{"name": "fresh"}"#,
            ])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
}

fn bundle_size(agent_dir: &Path) -> usize {
    let pem = std::fs::read_to_string(agent_dir.join("creds").join("ca.pem")).unwrap();
    pem.matches("BEGIN CERTIFICATE").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_under_load_fails_no_call() {
    let dir = temp_dir("ca-rotation");
    let master = Master::start(
        &dir.join("master"),
        free_udp(),
        free_udp(),
        free_tcp(),
        &["--heartbeat", "100ms", "--agent-cert-ttl", "120s"],
    )
    .await;
    let token = master.token(600);
    let serving = ["--demo-actors", "--resources", "cpus:1;mem:1GiB"];
    let _a1 = agent(&master, &dir.join("a1"), "a1", Some(&token), &serving).await;
    let _a2 = agent(&master, &dir.join("a2"), "a2", Some(&token), &serving).await;
    let file = dir.join("echo.yaml");
    std::fs::write(&file, ECHO).unwrap();
    let out = master.cli(&["apply", "-f", file.to_str().unwrap(), "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");
    // a3 serves nothing: it is restarted mid-rotation.
    let mut a3 = agent(
        &master,
        &dir.join("a3"),
        "a3",
        Some(&token),
        &["--resources", "cpus:1"],
    )
    .await;
    let before = status(&master);
    assert_eq!(before.phase, Phase::Stable);
    let old_ca = before.current.clone();

    let l1 = issue_client(&master, "l1", &dir);
    let load1 = Load::start(&l1, "default/echo");
    load1.more(100, "before the rotation").await;

    // Begin: the new CA is trusted beside the old; it signs once every agent trusts it,
    // and every agent then renews from it.
    let out = master.cli(&["ca", "rotate", "begin"]);
    assert!(out.status.success(), "{out:?}");
    let moving = wait_status(&master, "the new CA signs", |s| s.phase == Phase::Moving).await;
    let new_ca = moving.next.clone().unwrap();
    assert_ne!(new_ca, old_ca);
    assert_eq!(moving.signer, new_ca);
    wait_status(&master, "every agent renewed from the new CA", |s| {
        s.agents.len() == 3 && s.agents.iter().all(|a| a.trusts_bundle && a.moved)
    })
    .await;
    load1.more(100, "after the switch").await;
    assert_eq!(bundle_size(&dir.join("a1")), 2, "a1 saved both CAs");

    // A client from before the rotation (its certificate and trust from the old CA)
    // reaches the master and an echo on new links: their certificates carry the bridge.
    let out = call(&l1);
    assert!(out.status.success(), "an old client on new links: {out:?}");

    // An agent restarted mid-rotation comes back from what it saved.
    a3.kill().await;
    let _a3 = agent(
        &master,
        &dir.join("a3"),
        "a3",
        None,
        &["--resources", "cpus:1"],
    )
    .await;
    master
        .wait_state(
            "a3",
            actormesh_master::membership::AgentState::Active,
            Duration::from_secs(20),
        )
        .await;

    // The operator reissues the client before finishing; its load takes over.
    let l2 = issue_client(&master, "l2", &dir);
    let load2 = Load::start(&l2, "default/echo");
    load2.more(100, "with the reissued client").await;
    let (ok1, errors1) = load1.stop();
    assert!(
        errors1.is_empty(),
        "calls failed before the finish: {errors1:?}"
    );

    // Finish is refused while client certificates from the old CA may still be valid,
    // saying so; the operator reissued them, so they finish with --force.
    let out = master.cli(&["ca", "rotate", "finish"]);
    assert!(!out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("client certificates from the old CA"),
        "{said}"
    );
    let out = master.cli(&["ca", "rotate", "finish", "--force"]);
    assert!(out.status.success(), "{out:?}");
    let done = status(&master);
    assert_eq!(
        (done.phase, done.current.as_str()),
        (Phase::Stable, new_ca.as_str())
    );
    load2.more(100, "after the finish").await;

    // The old CA is dropped everywhere: the agents saved a bundle of the new CA alone,
    // and the old client is refused on a new link; the reissued one is not.
    let start = Instant::now();
    while bundle_size(&dir.join("a1")) != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a1 still trusts the old CA"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = call(&l1);
    assert!(
        !out.status.success(),
        "a client of the dropped CA was let in: {out:?}"
    );
    let out = call(&l2);
    assert!(out.status.success(), "{out:?}");
    // A node joins with a token made now (it pins the new CA).
    let token = master.token(600);
    let _a4 = agent(
        &master,
        &dir.join("a4"),
        "a4",
        Some(&token),
        &["--resources", "cpus:1"],
    )
    .await;
    master
        .wait_state(
            "a4",
            actormesh_master::membership::AgentState::Active,
            Duration::from_secs(20),
        )
        .await;

    load2.more(100, "at the end").await;
    let (ok2, errors2) = load2.stop();
    assert!(
        errors2.is_empty(),
        "calls failed across the finish: {errors2:?}"
    );
    eprintln!("calls: {ok1} by the client from before the rotation, {ok2} by the reissued one; none failed");
    let _ = std::fs::remove_dir_all(&dir);
}
