//! `actormesh master --zk`: the master's state in a real three-server ZooKeeper ensemble
//! (Debian's `zookeeper`, installed by the test command). A bad address, chroot or
//! credentials file is a clear error at start; a master killed with SIGKILL and started
//! again reloads everything from ZooKeeper, and its agent's task keeps running.

mod common;
#[path = "../../../integration/src/zk.rs"]
#[allow(dead_code)]
mod zk;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use actormesh_master::membership::AgentState;
use common::*;

fn ensemble() -> &'static zk::Ensemble {
    static E: OnceLock<zk::Ensemble> = OnceLock::new();
    E.get_or_init(|| {
        assert!(
            zk::Ensemble::available(),
            "ZooKeeper is not installed: the test command installs Debian's zookeeper package"
        );
        let dir = std::env::temp_dir().join(format!("am-master-zk-{}", std::process::id()));
        zk::Ensemble::start(&dir, 3).expect("a three-server ensemble")
    })
}

fn auth_file(dir: &Path, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let f = dir.join("zk-auth");
    std::fs::write(&f, "actormesh:s3cret\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    f
}

/// Runs `actormesh master` with `args` (expected to fail at start); returns its stderr.
async fn refused_master(dir: &Path, args: &[&str]) -> String {
    let data = dir.join("data");
    let (m, b, a) = (
        free_udp().to_string(),
        free_udp().to_string(),
        free_tcp().to_string(),
    );
    let mut all = vec![
        "master",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &m,
        "--bootstrap",
        &b,
        "--api",
        &a,
    ];
    all.extend_from_slice(args);
    Proc::spawn(&all).exit_stderr().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_zookeeper_address_chroot_or_credentials_file_is_a_clear_error_at_start() {
    let dir = temp_dir("zk-bad-config");
    let auth = auth_file(&dir, 0o600);
    let auth = auth.to_str().unwrap();
    let nothing = free_tcp();
    let spec = format!("{nothing}/actormesh");
    let said = refused_master(
        &dir,
        &[
            "--zk",
            &spec,
            "--zk-auth-file",
            auth,
            "--zk-session-timeout",
            "1s",
        ],
    )
    .await;
    assert!(
        said.contains(&nothing.to_string()) && said.contains("ZooKeeper"),
        "{said}"
    );
    let said = refused_master(&dir, &["--zk", "127.0.0.1:2181", "--zk-auth-file", auth]).await;
    assert!(
        said.contains("--zk") && said.contains("no chroot"),
        "{said}"
    );
    let said = refused_master(&dir, &["--zk", "127.0.0.1:2181/a/", "--zk-auth-file", auth]).await;
    assert!(said.contains("must name a node"), "{said}");
    let zk = format!("{}/bad", ensemble().connect_string());
    let said = refused_master(&dir, &["--zk", &zk]).await;
    assert!(said.contains("--zk needs --zk-auth-file"), "{said}");
    let open = auth_file(&dir, 0o644);
    let said = refused_master(
        &dir,
        &["--zk", &zk, "--zk-auth-file", open.to_str().unwrap()],
    )
    .await;
    assert!(said.contains("chmod 600"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

const WEB: &str = "kind: Deployment\nname: web\nspec:\n  actor: echo\n  version: v1\n  replicas: 1\n  resources: { need: \"cpus:1\" }\n  service: {}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_on_zookeeper_killed_and_started_again_reloads_its_state() {
    let dir = temp_dir("zk-master");
    let auth = auth_file(&dir, 0o600);
    let zk = format!(
        "{}/actormesh-{}",
        ensemble().connect_string(),
        std::process::id()
    );
    let flags = [
        "--zk",
        zk.as_str(),
        "--zk-auth-file",
        auth.to_str().unwrap(),
        "--heartbeat",
        "100ms",
        "--unreachable-after",
        "2s",
    ];
    let (mesh, boot, api) = (free_udp(), free_udp(), free_tcp());
    let mut master = Master::start(&dir.join("master"), mesh, boot, api, &flags).await;
    // Nothing of the state is in the data dir: no redb file.
    assert!(!dir.join("master").join("state.redb").exists());
    let fingerprint = master.fingerprint.clone();
    let token = master.token(600);
    let _a1 = agent(
        &master,
        &dir.join("a1"),
        "a1",
        Some(&token),
        &["--demo-actors", "--resources", "cpus:2;mem:1GiB"],
    )
    .await;
    let file = dir.join("web.yaml");
    std::fs::write(&file, WEB).unwrap();
    let out = master.cli(&["apply", "-f", file.to_str().unwrap(), "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");
    let tasks = master.tasks();
    assert_eq!(tasks.len(), 1, "{tasks:?}");

    master.proc.kill().await;
    let master = Master::start(&dir.join("master"), mesh, boot, api, &flags).await;
    assert_eq!(
        master.fingerprint, fingerprint,
        "the same CA, from ZooKeeper"
    );
    master
        .wait_state("a1", AgentState::Active, Duration::from_secs(20))
        .await;
    let again = master
        .wait_tasks("the task adopted", Duration::from_secs(20), |t| {
            t.len() == 1 && t[0].state == tasks[0].state
        })
        .await;
    assert_eq!(
        again[0].id, tasks[0].id,
        "the same task, not a new one: nothing was killed"
    );
    let deployments = master
        .client()
        .call("GET", "/v1/deployments", None)
        .unwrap();
    assert!(deployments.to_string().contains("\"web\""), "{deployments}");
    let _ = std::fs::remove_dir_all(&dir);
}
