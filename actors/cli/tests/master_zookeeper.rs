//! `actormesh master --zk`: the master's state in a real three-server ZooKeeper ensemble
//! (Debian's `zookeeper`, installed by the test command). A bad address, chroot or
//! credentials file is a clear error at start; a master killed with SIGKILL and started
//! again reloads everything from ZooKeeper, and its agent's task keeps running.

mod callload;
mod common;
mod fwevents;
#[path = "../../../integration/src/zk.rs"]
#[allow(dead_code)]
mod zk;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use actormesh_master::deployments::TaskEntry;
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

/// The flags of master `name` of the store at `zk`, with a short session (the failover
/// takes about one session timeout).
fn ha_flags(zk: &str, auth: &Path, name: &str, session: &str) -> Vec<String> {
    [
        "--zk",
        zk,
        "--zk-auth-file",
        auth.to_str().unwrap(),
        "--zk-session-timeout",
        session,
        "--name",
        name,
        "--heartbeat",
        "100ms",
        "--unreachable-after",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A master that is to stand by: started, and seen standing for election.
async fn standby(dir: &Path, flags: &[String]) -> Master {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut m = Master::spawn(dir, free_udp(), free_udp(), free_tcp(), &flags);
    m.proc.line("master standby:").await;
    m
}

/// A standby master was told it leads: waits for its ready line (at most `limit`), and
/// takes the CA fingerprint from it.
async fn now_leading(m: &mut Master, limit: Duration) -> Duration {
    let began = std::time::Instant::now();
    let ready = tokio::time::timeout(limit, m.proc.line("master ready:"))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the standby did not lead within {limit:?}: {}",
                m.proc.stderr_so_far()
            )
        });
    m.fingerprint = ready.rsplit(' ').next().unwrap().to_string();
    began.elapsed()
}

/// The status line and the Location header of a GET of `path` at `api`, by hand (the
/// CLI's client follows redirects).
fn raw_get(api: std::net::SocketAddr, path: &str) -> (String, Option<String>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.lines().next().unwrap_or_default().to_string();
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("location: ").map(str::to_string));
    (status, location)
}

/// Polls a standby's API until it redirects to `leader`.
async fn redirects_to(standby: &Master, leader: &Master) {
    let want = format!("http://{}/v1/nodes", leader.api);
    for _ in 0..200 {
        let (status, location) = tokio::task::block_in_place(|| raw_get(standby.api, "/v1/nodes"));
        if status.contains("307") && location.as_deref() == Some(want.as_str()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the standby at {} never redirected to {want}", standby.api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_a_standby_takes_over_with_all_of_the_state_and_kills_nothing() {
    let dir = temp_dir("zk-failover");
    let zk = format!(
        "{}/failover-{}",
        ensemble().connect_string(),
        std::process::id()
    );
    let (m1, mut m2, a1, tasks) = two_masters_and_an_agent(&dir, &zk, "2s").await;
    let auth = dir.join("zk-auth");
    redirects_to(&m2, &m1).await;
    // An operator's API token: in the store, so good at whichever master leads.
    let out = m1.cli(&[
        "token", "create", "--scope", "admin", "--holder", "ops", "--ttl", "1h",
    ]);
    assert!(out.status.success(), "{out:?}");
    let ops = dir.join("ops-token");
    std::fs::write(&ops, String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let get_nodes = |api: std::net::SocketAddr| {
        let api = format!("http://{api}");
        tokio::task::block_in_place(|| {
            std::process::Command::new(BIN)
                .args([
                    "get",
                    "nodes",
                    "--api",
                    &api,
                    "--api-token-file",
                    ops.to_str().unwrap(),
                ])
                .output()
                .unwrap()
        })
    };
    // The CLI, pointed at the leader, keeps the masters its answer names.
    let out = get_nodes(m1.api);
    assert!(out.status.success(), "{out:?}");
    let kept = std::fs::read_to_string(dir.join("ops-token.masters")).unwrap();
    assert_eq!(
        kept.trim(),
        format!("http://{},http://{}", m1.api, m2.api),
        "the leader's API first"
    );
    // A client calling the web service without pause, its certificate issued through
    // the standby's bootstrap port (which forwards the request to the leader).
    let client_dir = dir.join("client");
    let client_token = m1.client_token(600);
    let standby_join = m2.bootstrap.to_string();
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(BIN)
            .args([
                "cert",
                "issue",
                "--client",
                "load",
                "--token",
                &client_token,
                "--join",
                &standby_join,
                "--out",
                client_dir.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{out:?}");
    let load = callload::Load::start(&client_dir, "default/web");
    load.more(50, "before the kill").await;

    // kill -9 the leader under that load: the standby leads within 10 s, with the same
    // CA, and the agent follows it; the task is adopted, not replaced; the client's
    // Proxy serves its last snapshot all along (its master is the dead one), and no call
    // fails.
    let mut m1 = m1;
    let killed = std::time::Instant::now();
    m1.proc.kill().await;
    load.more(100, "right after the kill").await;
    now_leading(&mut m2, Duration::from_secs(10)).await;
    assert_eq!(
        m2.fingerprint, m1.fingerprint,
        "the same CA, from ZooKeeper"
    );
    m2.wait_state("a1", AgentState::Active, Duration::from_secs(10))
        .await;
    let again = m2
        .wait_tasks("the task adopted", Duration::from_secs(10), |t| {
            t.len() == 1 && t[0].state == tasks[0].state
        })
        .await;
    assert_eq!(
        again[0].id, tasks[0].id,
        "the same task: nothing was killed"
    );
    eprintln!(
        "failover: the agent was Active at the new leader {:?} after the kill",
        killed.elapsed()
    );
    let deployments = m2.client().call("GET", "/v1/deployments", None).unwrap();
    assert!(deployments.to_string().contains("\"web\""), "{deployments}");
    // The CLI still pointed at the dead master finds the new leader among those it kept.
    let out = get_nodes(m1.api);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("a1"),
        "{out:?}"
    );
    load.more(100, "after the failover").await;
    // A new client process with that identity finds the new leader among the masters
    // its identity keeps (the one it was issued through, and the leader it learned). The
    // new leader sends a new subscriber its registry once the agents had their restart
    // grace (twice --unreachable-after) to report again: until then a call says so.
    let call = || {
        tokio::task::block_in_place(|| {
            std::process::Command::new(BIN)
                .args([
                    "call",
                    "--identity",
                    client_dir.to_str().unwrap(),
                    "default/web",
                    "demo.Greet/v1",
                    r#"{"name":"after"}"#,
                ])
                .output()
                .unwrap()
        })
    };
    let began = std::time::Instant::now();
    loop {
        let out = call();
        if out.status.success() {
            break;
        }
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            said.contains(&format!("the master at {} sent no registry", m2.mesh))
                && began.elapsed() < Duration::from_secs(30),
            "the call does not reach the new leader's registry: {out:?}"
        );
    }
    let (ok, errors) = load.stop();
    assert!(errors.is_empty(), "{ok} calls answered, but: {errors:?}");
    eprintln!("{ok} calls answered across the failover, none failed");

    // The old leader, started again, stands by and redirects to the new one.
    let m1_again = standby(&dir.join("m1"), &ha_flags(&zk, &auth, "m1", "2s")).await;
    redirects_to(&m1_again, &m2).await;
    // The CLI pointed at the standby follows its redirect to the leader, token and all.
    let api = format!("http://{}", m1_again.api);
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(BIN)
            .args([
                "get",
                "nodes",
                "--api",
                &api,
                "--api-token-file",
                ops.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    });
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("a1"),
        "{out:?}"
    );
    drop(a1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two masters on `zk` (m1 leading, m2 standing by), an agent that knows both running
/// the web deployment's one task.
async fn two_masters_and_an_agent(
    dir: &Path,
    zk: &str,
    session: &str,
) -> (Master, Master, Proc, Vec<TaskEntry>) {
    let auth = auth_file(dir, 0o600);
    let f1 = ha_flags(zk, &auth, "m1", session);
    let f1: Vec<&str> = f1.iter().map(String::as_str).collect();
    let m1 = Master::start(&dir.join("m1"), free_udp(), free_udp(), free_tcp(), &f1).await;
    let m2 = standby(&dir.join("m2"), &ha_flags(zk, &auth, "m2", session)).await;
    let token = m1.token(600);
    let joins = format!("{},{}", m1.bootstrap, m2.bootstrap);
    let mut a1 = Proc::spawn(&[
        "agent",
        "--join",
        &joins,
        "--data-dir",
        dir.join("a1").to_str().unwrap(),
        "--name",
        "a1",
        "--token",
        &token,
        "--demo-actors",
        "--resources",
        "cpus:2;mem:1GiB",
    ]);
    a1.line("agent ").await;
    let file = dir.join("web.yaml");
    std::fs::write(&file, WEB).unwrap();
    let out = m1.cli(&["apply", "-f", file.to_str().unwrap(), "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");
    let tasks = m1.tasks();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    (m1, m2, a1, tasks)
}

fn signal(p: &Proc, sig: &str) {
    let pid = p.child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_resumed_after_another_took_over_steps_down_and_writes_nothing() {
    let dir = temp_dir("zk-split");
    let zk = format!(
        "{}/split-{}",
        ensemble().connect_string(),
        std::process::id()
    );
    let (mut m1, mut m2, _a1, tasks) = two_masters_and_an_agent(&dir, &zk, "2s").await;
    // SIGSTOP the leader until the standby leads and the agent follows it.
    signal(&m1.proc, "-STOP");
    now_leading(&mut m2, Duration::from_secs(15)).await;
    m2.wait_state("a1", AgentState::Active, Duration::from_secs(10))
        .await;
    // Resumed, the old leader finds its lease lapsed (its session expired meanwhile) and
    // steps down: it exits, saying why, without acting.
    signal(&m1.proc, "-CONT");
    let status = tokio::time::timeout(Duration::from_secs(10), m1.proc.child.wait())
        .await
        .expect("the old leader exits")
        .unwrap();
    let said = m1.proc.stderr_so_far();
    assert!(!status.success(), "{said}");
    assert!(said.contains("stepped down"), "{said}");
    assert!(said.contains("no longer leads"), "{said}");
    eprintln!(
        "the resumed leader said: {}",
        said.lines()
            .rev()
            .find(|l| l.contains("stepped down"))
            .unwrap()
    );
    // It wrote nothing: the new leader's writes are still fenced by its own term (a
    // write of the old one would have moved /txn and closed the new leader's store).
    let file = dir.join("api.yaml");
    std::fs::write(&file, WEB.replace("name: web", "name: api")).unwrap();
    let out = m2.cli(&["apply", "-f", file.to_str().unwrap(), "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");
    let now = m2
        .wait_tasks("both tasks", Duration::from_secs(20), |t| t.len() == 2)
        .await;
    assert!(
        now.iter()
            .any(|t| t.id == tasks[0].id && t.state == tasks[0].state),
        "the first task is untouched: {now:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_zookeeper_follower_changes_no_leader_and_losing_its_leader_kills_no_task() {
    // An ensemble of its own: the other tests share one that stays whole.
    let dir = temp_dir("zk-server-loss");
    let mut e = zk::Ensemble::start(&dir.join("zk"), 3).expect("a three-server ensemble");
    let zk = format!("{}/loss", e.connect_string());
    let (m1, mut m2, _a1, tasks) = two_masters_and_an_agent(&dir, &zk, "6s").await;
    let leader = e.leader().expect("the ensemble has a leader");
    let follower = (0..3).find(|i| *i != leader).unwrap();
    e.kill(follower);
    // m1 still leads: it applies a change, and m2 still stands by, pointing at it.
    let file = dir.join("api.yaml");
    std::fs::write(&file, WEB.replace("name: web", "name: api")).unwrap();
    let out = m1.cli(&["apply", "-f", file.to_str().unwrap(), "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");
    redirects_to(&m2, &m1).await;
    assert!(m2.proc.child.try_wait().unwrap().is_none());
    e.restart(follower).unwrap();
    e.wait_serving(Duration::from_secs(30)).unwrap();

    // The ZooKeeper leader: the ensemble elects another; the masters change leader at
    // most once, and the task runs on.
    let leader = e.leader().expect("the ensemble has a leader");
    e.kill(leader);
    e.wait_serving(Duration::from_secs(30)).unwrap();
    let mut m1 = m1;
    let changed = tokio::time::timeout(Duration::from_secs(8), m1.proc.child.wait())
        .await
        .is_ok();
    let now = if changed {
        // m1 lost its session: m2 leads, once.
        now_leading(&mut m2, Duration::from_secs(15)).await;
        &m2
    } else {
        redirects_to(&m2, &m1).await;
        &m1
    };
    let seen = now
        .wait_tasks("the tasks", Duration::from_secs(20), |t| {
            t.len() == 2
                && t.iter()
                    .any(|x| x.id == tasks[0].id && x.state == tasks[0].state)
        })
        .await;
    eprintln!(
        "ZooKeeper leader lost: masters changed leader {}; {} tasks running on",
        if changed { "once" } else { "never" },
        seen.len()
    );
    if !changed {
        assert!(
            m2.proc.child.try_wait().unwrap().is_none(),
            "m2 still stands by"
        );
    }
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `actormesh <args>` to its end.
fn run(args: &[&str]) -> std::process::Output {
    tokio::task::block_in_place(|| {
        std::process::Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
}

fn said(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_on_the_other_store_brings_back_the_same_cluster() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("zk-backup");
    let auth = auth_file(&dir, 0o600);
    // A master on the embedded store: a deployment, an agent, a framework, join and API
    // tokens.
    let fast = [
        "--heartbeat",
        "100ms",
        "--framework-role",
        "spiffe://cluster.local/client/fw=batch",
    ];
    let mut m = Master::start(&dir.join("m"), free_udp(), free_udp(), free_tcp(), &fast).await;
    let later_join = m.token(3600);
    let mut a1 = agent(
        &m,
        &dir.join("a1"),
        "a1",
        Some(&m.token(600)),
        &["--demo-actors", "--resources", "cpus:2;mem:1GiB"],
    )
    .await;
    let file = dir.join("web.yaml");
    std::fs::write(&file, WEB).unwrap();
    let out = m.cli(&["apply", "-f", file.to_str().unwrap(), "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");
    let out = m.cli(&[
        "token", "create", "--scope", "admin", "--holder", "ops", "--ttl", "1h",
    ]);
    assert!(out.status.success(), "{out:?}");
    let ops = dir.join("ops-token");
    std::fs::write(&ops, String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    // A framework, registered from a client's node; it disconnects, and the master keeps
    // it for its failover timeout.
    let fw_dir = dir.join("fw");
    let join = m.bootstrap.to_string();
    let fw_token = m.client_token(600);
    let out = run(&[
        "cert",
        "issue",
        "--client",
        "fw",
        "--token",
        &fw_token,
        "--join",
        &join,
        "--out",
        fw_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let fw = actormesh::client::load(&fw_dir).unwrap();
    let master_mesh = m.mesh;
    let framework_id = on_node(fw.credentials, move |node| async move {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let me = node.spawn("batch-events", fwevents::Events(tx)).unwrap();
        let (s, _) = actormesh::framework::Scheduler::register(
            &node,
            master_mesh,
            &me,
            "batch",
            "batch",
            Duration::from_secs(3600),
            None,
        )
        .await
        .unwrap();
        s.id().to_string()
    })
    .await;
    let frameworks = |m: &Master| {
        m.client()
            .call("GET", "/v1/frameworks", None)
            .unwrap()
            .to_string()
    };
    assert!(frameworks(&m).contains(&framework_id), "{}", frameworks(&m));

    let backup = dir.join("cluster.backup");
    let out = m.cli(&["backup", "--out", backup.to_str().unwrap()]);
    assert!(
        out.status.success() && said(&out).contains("backed up"),
        "{out:?}"
    );
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "it holds the CA key");
    let out = m.cli(&["backup", "--out", backup.to_str().unwrap()]);
    assert!(
        !out.status.success() && said(&out).contains("never overwrites"),
        "{out:?}"
    );
    // A viewer may not take one: it holds the CA key.
    let out = m.cli(&[
        "token", "create", "--scope", "viewer", "--holder", "v", "--ttl", "1h",
    ]);
    let viewer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let api = format!("http://{}", m.api);
    let other = dir.join("viewer.backup");
    let out = run(&[
        "backup",
        "--out",
        other.to_str().unwrap(),
        "--api",
        &api,
        "--api-token",
        &viewer,
    ]);
    assert!(
        !out.status.success() && said(&out).contains("admin"),
        "{out:?}"
    );
    m.proc.kill().await;
    a1.kill().await;

    // Into ZooKeeper: the same CA, deployments and tokens.
    let zk = format!(
        "{}/backup-{}",
        ensemble().connect_string(),
        std::process::id()
    );
    let zk_flags = [
        "--zk",
        zk.as_str(),
        "--zk-auth-file",
        auth.to_str().unwrap(),
    ];
    let mut restore = vec!["restore", "--from", backup.to_str().unwrap()];
    restore.extend_from_slice(&zk_flags);
    let out = run(&restore);
    assert!(
        out.status.success() && said(&out).contains("restored"),
        "{out:?}"
    );
    let out = run(&restore);
    assert!(
        !out.status.success() && said(&out).contains("not empty"),
        "{out:?}"
    );
    let mut flags = zk_flags.to_vec();
    flags.extend_from_slice(&["--name", "r1", "--heartbeat", "100ms"]);
    let mut m2 = Master::start(&dir.join("m2"), free_udp(), free_udp(), free_tcp(), &flags).await;
    assert_eq!(m2.fingerprint, m.fingerprint, "the same CA");
    let deployments = m2.client().call("GET", "/v1/deployments", None).unwrap();
    assert!(deployments.to_string().contains("\"web\""), "{deployments}");
    assert!(
        frameworks(&m2).contains(&framework_id),
        "the framework: {}",
        frameworks(&m2)
    );
    let api2 = format!("http://{}", m2.api);
    let out = run(&[
        "get",
        "nodes",
        "--api",
        &api2,
        "--api-token-file",
        ops.to_str().unwrap(),
    ]);
    assert!(
        out.status.success() && said(&out).contains("a1"),
        "the API token: {out:?}"
    );
    // A join token made before the backup joins an agent to the restored master.
    let _a2 = agent(
        &m2,
        &dir.join("a2"),
        "a2",
        Some(&later_join),
        &["--demo-actors", "--resources", "cpus:2;mem:1GiB"],
    )
    .await;
    m2.wait_state("a2", AgentState::Active, Duration::from_secs(20))
        .await;

    // And back, from ZooKeeper into a new data dir.
    let backup2 = dir.join("zk.backup");
    let out = m2.cli(&["backup", "--out", backup2.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    m2.proc.kill().await;
    let m3_dir = dir.join("m3");
    let out = run(&[
        "restore",
        "--from",
        backup2.to_str().unwrap(),
        "--data-dir",
        m3_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let m3 = Master::start(&m3_dir, free_udp(), free_udp(), free_tcp(), &fast).await;
    assert_eq!(m3.fingerprint, m.fingerprint);
    let nodes = m3.nodes();
    assert!(
        nodes.iter().any(|n| n.id == "a1") && nodes.iter().any(|n| n.id == "a2"),
        "{nodes:?}"
    );
    let deployments = m3.client().call("GET", "/v1/deployments", None).unwrap();
    assert!(deployments.to_string().contains("\"web\""), "{deployments}");
    assert!(
        frameworks(&m3).contains(&framework_id),
        "{}",
        frameworks(&m3)
    );
    // A damaged file is refused, saying so.
    let bytes = std::fs::read(&backup2).unwrap();
    let cut = dir.join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = run(&[
        "restore",
        "--from",
        cut.to_str().unwrap(),
        "--data-dir",
        dir.join("m4").to_str().unwrap(),
    ]);
    assert!(
        !out.status.success() && said(&out).contains("damaged"),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_whole_ensemble_stops_the_masters_and_the_cluster_recovers_when_it_is_back() {
    let dir = temp_dir("zk-ensemble-loss");
    let mut e = zk::Ensemble::start(&dir.join("zk"), 3).expect("a three-server ensemble");
    let zk = format!("{}/whole", e.connect_string());
    let (mut m1, mut m2, mut a1, tasks) = two_masters_and_an_agent(&dir, &zk, "2s").await;
    for i in 0..3 {
        e.kill(i);
    }
    // Neither master can change state: the leader's lease lapses and it steps down, and
    // the standby's session ends; both exit, for their supervisor to start them again.
    for (name, m) in [("m1", &mut m1), ("m2", &mut m2)] {
        let status = tokio::time::timeout(Duration::from_secs(30), m.proc.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{name} still runs without ZooKeeper"))
            .unwrap();
        assert!(!status.success(), "{name}: {}", m.proc.stderr_so_far());
    }
    // What runs keeps running meanwhile: the agent, and its task.
    assert!(a1.child.try_wait().unwrap().is_none(), "the agent runs on");
    for i in 0..3 {
        e.restart(i).unwrap();
    }
    e.wait_serving(Duration::from_secs(30)).unwrap();
    // Started again (as a supervisor would), one leads and adopts the task as it was.
    let auth = dir.join("zk-auth");
    let f1 = ha_flags(&zk, &auth, "m1", "2s");
    let f1: Vec<&str> = f1.iter().map(String::as_str).collect();
    let m1 = Master::start(&m1.dir, m1.mesh, m1.bootstrap, m1.api, &f1).await;
    m1.wait_state("a1", AgentState::Active, Duration::from_secs(20))
        .await;
    let again = m1
        .wait_tasks("the task adopted", Duration::from_secs(20), |t| {
            t.len() == 1 && t[0].state == tasks[0].state
        })
        .await;
    assert_eq!(again[0].id, tasks[0].id, "nothing was killed");
    a1.kill().await;
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent's saved bootstrap addresses of the masters (`agent.json`'s `joins`).
fn saved_joins(agent_dir: &Path) -> Vec<std::net::SocketAddr> {
    let text = std::fs::read_to_string(agent_dir.join("agent.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(v["joins"].clone()).unwrap()
}

/// Polls (every 20 ms, at most `limit`) until `id` is in `state` at `m`, without the
/// blocking helpers' `block_in_place` (this runs on actix's one thread).
async fn wait_active(m: &Master, id: &str, limit: Duration) {
    let started = std::time::Instant::now();
    loop {
        let nodes = m.nodes();
        if nodes
            .iter()
            .any(|n| n.id == id && n.state == AgentState::Active)
        {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{id} not Active at {} within {limit:?}: {nodes:?}",
            m.api
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix::test]
async fn an_agent_and_a_framework_given_only_a_standby_learn_the_masters_and_fail_over_to_the_new_leader(
) {
    use actormesh::agent::{self, AgentConfig};
    use actormesh::framework::{FollowConfig, FrameworkEvent, Scheduler, TaskLaunch};
    use actormesh_master::frameworks::TaskState;
    use fwevents::{next, Events};

    let dir = temp_dir("zk-learn");
    let zk = format!(
        "{}/learn-{}",
        ensemble().connect_string(),
        std::process::id()
    );
    let auth = auth_file(&dir, 0o600);
    let grant = ["--framework-role", "spiffe://cluster.local/node/fwhost=*"];
    let flags = |name: &str| {
        let mut f = ha_flags(&zk, &auth, name, "2s");
        f.extend(grant.iter().map(|s| s.to_string()));
        f
    };
    let f1 = flags("m1");
    let f1: Vec<&str> = f1.iter().map(String::as_str).collect();
    let mut m1 = Master::start(&dir.join("m1"), free_udp(), free_udp(), free_tcp(), &f1).await;
    let mut m2 = standby(&dir.join("m2"), &flags("m2")).await;
    m2.proc.line("master standby bootstrap:").await;
    let token = m1.token(600);

    // An agent told of the standby alone: the standby forwards its join to the leader,
    // and it learns of every master.
    let standby_only = m2.bootstrap.to_string();
    let mut a1 = Proc::spawn(&[
        "agent",
        "--join",
        &standby_only,
        "--data-dir",
        dir.join("a1").to_str().unwrap(),
        "--name",
        "a1",
        "--token",
        &token,
        "--demo-actors",
        "--resources",
        "cpus:2;mem:1GiB",
    ]);
    a1.line("agent ").await;
    wait_active(&m1, "a1", Duration::from_secs(10)).await;
    let joins = saved_joins(&dir.join("a1"));
    assert!(
        joins.contains(&m1.bootstrap) && joins.contains(&m2.bootstrap),
        "the agent keeps both masters' bootstrap addresses: {joins:?}"
    );

    // A framework on a node of its own (an agent in this process, joined through the
    // standby too), told of the standby alone.
    let host = agent::start(AgentConfig {
        join: m2.bootstrap,
        also_join: Vec::new(),
        token: Some(token.clone()),
        data_dir: dir.join("fwhost"),
        listen: "127.0.0.1:0".parse().unwrap(),
        name: "fwhost".into(),
        resources: Some("mem:1MiB".parse().unwrap()),
        attrs: Default::default(),
        actor_types: Vec::new(),
        reserved: Default::default(),
        metrics_listen: None,
        access_log: None,
        tracing: None,
        host: Default::default(),
    })
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let me = host.node.spawn("batch-framework", Events(tx)).unwrap();
    let state = dir.join("framework.json");
    let mut config = FollowConfig::new("batch", "batch", vec![m2.bootstrap]);
    config.failover_timeout = Duration::from_secs(120);
    config.state_file = Some(state.clone());
    config.check_every = Duration::from_millis(200);
    let (s, reg) = Scheduler::follow(&host.node, &me, config).await.unwrap();
    assert!(!reg.reregistered);
    assert_eq!(s.master_addr(), m1.mesh, "registered with the leader");
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(kept["framework_id"], s.id());
    let masters = kept["masters"].to_string();
    assert!(
        masters.contains(&m1.bootstrap.to_string()) && masters.contains(&m2.bootstrap.to_string()),
        "the framework keeps both masters: {kept}"
    );
    let offer = loop {
        let got = next(&mut rx, "an offer on a1", |e| match e {
            FrameworkEvent::ResourceOffers(o) => Some(o.clone()),
            _ => None,
        })
        .await;
        if let Some(o) = got.into_iter().find(|o| o.agent_id == "a1") {
            break o;
        }
    };
    s.accept(
        &offer.offer_id,
        vec![TaskLaunch::command(
            "c1",
            "/bin/sh",
            &["-c", "while [ ! -f go ]; do sleep 0.05; done; exit 3"],
            "cpus:0.5".parse().unwrap(),
        )],
    )
    .await
    .unwrap();
    next(&mut rx, "c1 Running", |e| {
        matches!(e, FrameworkEvent::StatusUpdate(st) if st.task_id == "c1" && st.state == TaskState::Running).then_some(())
    })
    .await;

    // kill -9 the leader: the standby leads, the agent follows it, and the driver
    // registers the framework there again with its id.
    m1.proc.kill().await;
    now_leading(&mut m2, Duration::from_secs(10)).await;
    let again = next(
        &mut rx,
        "Registered again, by the new leader",
        |e| match e {
            FrameworkEvent::Registered(r) => Some(r.clone()),
            _ => None,
        },
    )
    .await;
    assert!(again.reregistered, "{again:?}");
    assert_eq!(again.framework_id, s.id());
    // The driver swaps the master it calls once the registration's answer is in, just
    // after the event.
    let swapped = std::time::Instant::now();
    while s.master_addr() != m2.mesh {
        assert!(
            swapped.elapsed() < Duration::from_secs(10),
            "the scheduler still calls {}",
            s.master_addr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_active(&m2, "a1", Duration::from_secs(10)).await;

    // The task was not killed: it ends by itself now, and its end reaches the framework
    // from the new leader, whose term is newer.
    let sandbox = dir
        .join("a1")
        .join("sandboxes")
        .join(actormesh::framework::instance_name(s.id(), "c1"));
    std::fs::write(sandbox.join("go"), b"").unwrap();
    let ended = next(&mut rx, "c1 Failed, through the new leader", |e| match e {
        FrameworkEvent::StatusUpdate(st) if st.task_id == "c1" && st.state == TaskState::Failed => {
            Some(st.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(ended.message, "exited with code 3", "it ran to its end");
    s.acknowledge(&ended).await.unwrap();
    drop(s);
    drop(a1);
    let _ = std::fs::remove_dir_all(&dir);
}
