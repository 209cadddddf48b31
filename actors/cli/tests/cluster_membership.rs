//! A master and agents as real processes on loopback: joining, failure detection,
//! removal, refusals, master restart.

mod common;

use std::time::Duration;

use actormesh_master::membership::AgentState;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_join_fail_and_are_removed_and_a_removed_agent_is_refused() {
    let dir = temp_dir("membership");
    let master = Master::start(
        &dir.join("master"),
        free_udp(),
        free_udp(),
        free_tcp(),
        &[
            "--heartbeat",
            "100ms",
            "--unreachable-after",
            "1s",
            "--gone-after",
            "3s",
        ],
    )
    .await;
    let token = master.token(3600);
    let mut agents = Vec::new();
    for (i, zone) in ["a", "b", "c"].iter().enumerate() {
        let name = format!("n{}", i + 1);
        let attr = format!("zone={zone}");
        agents.push(
            agent(
                &master,
                &dir.join(&name),
                &name,
                Some(&token),
                &["--attr", &attr, "--resources", "cpus:2;mem:1GiB"],
            )
            .await,
        );
    }
    let nodes = tokio::task::block_in_place(|| master.nodes());
    assert_eq!(nodes.len(), 3);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(master.dir.join("api-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the API token file must be private");
    }
    // The operator's view: `actormesh get nodes`, as a table and as JSON.
    let api = format!("http://{}", master.api);
    let token_file = master.dir.join("api-token");
    let out = std::process::Command::new(BIN)
        .args([
            "get",
            "nodes",
            "--api",
            &api,
            "--api-token-file",
            token_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("ID")
            && table.contains("LAST HEARTBEAT")
            && table.contains("CERT EXPIRES"),
        "{table}"
    );
    for id in ["n1", "n2", "n3"] {
        assert!(table.contains(id), "{table}");
    }
    let out = std::process::Command::new(BIN)
        .args([
            "get",
            "nodes",
            "-o",
            "json",
            "--api",
            &api,
            "--api-token-file",
            token_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    let out = std::process::Command::new(BIN)
        .args(["get", "nodes", "--api", &api, "--api-token", "wrong"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong API token"));
    for n in &nodes {
        assert_eq!(n.state, AgentState::Active, "{n:?}");
        assert_eq!(n.resources.scalars["cpus"], 2.0);
        assert!(n.attrs.contains_key("zone"));
        assert!(n.cert_expiry.is_some() && n.last_heartbeat.is_some());
    }

    // kill -9 n2 and start it again while it is Unreachable: the same agent comes back
    // (reconciled), not a second one.
    agents[1].kill().await;
    master
        .wait_state("n2", AgentState::Unreachable, Duration::from_secs(10))
        .await;
    agents[1] = agent(&master, &dir.join("n2"), "n2", None, &[]).await;
    master
        .wait_state("n2", AgentState::Active, Duration::from_secs(10))
        .await;
    assert_eq!(tokio::task::block_in_place(|| master.nodes()).len(), 3);

    // kill -9 n3: Unreachable within the limit, Gone later.
    agents[2].kill().await;
    let took = master
        .wait_state("n3", AgentState::Unreachable, Duration::from_secs(10))
        .await;
    assert!(
        took < Duration::from_millis(2500),
        "took {took:?} for a 1 s limit"
    );
    master
        .wait_state("n3", AgentState::Gone, Duration::from_secs(15))
        .await;
    assert_eq!(
        tokio::task::block_in_place(|| master.state_of("n1")),
        Some(AgentState::Active)
    );

    // The removed agent, restarted with its old certificate, is refused and says why.
    let err = refused_agent(&master, &dir.join("n3"), None, None).await;
    assert!(err.contains("refused") && err.contains("revoked"), "{err}");
    // Its name is never given out again, even with a fresh token: the revoked identity
    // cannot come back under someone else.
    let fresh = master.token(3600);
    let err = refused_agent(&master, &dir.join("n3c"), Some("n3"), Some(&fresh)).await;
    assert!(err.contains("agent name n3 is taken"), "{err}");
    let err = refused_agent(&master, &dir.join("mm"), Some("master"), Some(&fresh)).await;
    assert!(err.contains("reserved"), "{err}");
    // Its token, replayed by a new node, is refused too.
    let err = refused_agent(&master, &dir.join("n3b"), Some("n3b"), Some(&token)).await;
    assert!(err.contains("has been revoked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_and_foreign_credentials_are_refused_with_a_reason() {
    let dir = temp_dir("refusals");
    let master = Master::start(&dir.join("master"), free_udp(), free_udp(), free_tcp(), &[]).await;
    let join = master.bootstrap.to_string();
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn(&args).exit_stderr().await
    };
    let d = |n: &str| dir.join(n).to_str().unwrap().to_string();

    let err = run(vec![
        "agent".into(),
        "--join".into(),
        join.clone(),
        "--data-dir".into(),
        d("x1"),
        "--token".into(),
        "not-a-token".into(),
    ])
    .await;
    assert!(err.contains("invalid join token"), "{err}");

    let valid = master.token(3600);
    let unknown = format!("am1.zzzzzz{}", &valid[10..]);
    let err = run(vec![
        "agent".into(),
        "--join".into(),
        join.clone(),
        "--data-dir".into(),
        d("x2"),
        "--token".into(),
        unknown,
    ])
    .await;
    assert!(err.contains("unknown to this master"), "{err}");

    let short = master.token(1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = run(vec![
        "agent".into(),
        "--join".into(),
        join.clone(),
        "--data-dir".into(),
        d("x3"),
        "--token".into(),
        short,
    ])
    .await;
    assert!(err.contains("expired"), "{err}");

    // A token pinning another cluster's CA: the agent refuses the master.
    let (head, _) = valid.rsplit_once('.').unwrap();
    let other = format!("{head}.{}", "0".repeat(64));
    let err = run(vec![
        "agent".into(),
        "--join".into(),
        join.clone(),
        "--data-dir".into(),
        d("x4"),
        "--token".into(),
        other,
    ])
    .await;
    assert!(err.contains("unknown CA"), "{err}");

    // A node holding a certificate from another CA is refused at the handshake.
    let foreign = d("foreign-ca");
    let status = std::process::Command::new(BIN)
        .args([
            "ca",
            "init",
            "--trust-domain",
            "cluster.local",
            "--out",
            &foreign,
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let x5 = d("x5");
    let status = std::process::Command::new(BIN)
        .args([
            "ca",
            "issue",
            "--ca",
            &foreign,
            "--identity",
            "spiffe://cluster.local/node/x5",
            "--out",
            &x5,
        ])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(
        dir.join("x5").join("agent.json"),
        format!(
            "{{\"agent_id\":\"x5\",\"master_addr\":\"{}\"}}",
            master.mesh
        ),
    )
    .unwrap();
    let err = run(vec![
        "agent".into(),
        "--join".into(),
        join.clone(),
        "--data-dir".into(),
        x5,
    ])
    .await;
    assert!(
        err.contains("refused") && err.contains("unknown CA"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_and_restarted_keeps_its_state_and_agents_come_back() {
    let dir = temp_dir("restart");
    let (mesh, boot, api) = (free_udp(), free_udp(), free_tcp());
    let mut master = Master::start(
        &dir.join("master"),
        mesh,
        boot,
        api,
        &["--heartbeat", "100ms", "--unreachable-after", "1s"],
    )
    .await;
    let token = master.token(3600);
    let _a1 = agent(&master, &dir.join("a1"), "a1", Some(&token), &[]).await;
    let _a2 = agent(&master, &dir.join("a2"), "a2", Some(&token), &[]).await;
    let fingerprint = master.fingerprint.clone();
    master.proc.kill().await;

    let master = Master::start(
        &dir.join("master"),
        mesh,
        boot,
        api,
        &["--heartbeat", "100ms", "--unreachable-after", "1s"],
    )
    .await;
    assert_eq!(
        master.fingerprint, fingerprint,
        "the CA changed across the restart"
    );
    // The same agents, reconnected by themselves: never duplicated, Active again.
    for id in ["a1", "a2"] {
        master
            .wait_state(id, AgentState::Active, Duration::from_secs(20))
            .await;
    }
    let nodes = tokio::task::block_in_place(|| master.nodes());
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    // Tokens survived too: a new agent joins with the token made before the restart.
    let _a3 = agent(&master, &dir.join("a3"), "a3", Some(&token), &[]).await;
    master
        .wait_state("a3", AgentState::Active, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_finds_a_master_that_moved() {
    let dir = temp_dir("moved");
    let (boot, api) = (free_udp(), free_tcp());
    let mut master = Master::start(&dir.join("master"), free_udp(), boot, api, &[]).await;
    let token = master.token(3600);
    let mut a = agent(&master, &dir.join("m1"), "m1", Some(&token), &[]).await;
    a.kill().await;
    master.proc.kill().await;
    // Same data and bootstrap address, another mesh port.
    let master = Master::start(&dir.join("master"), free_udp(), boot, api, &[]).await;
    let _a = agent(&master, &dir.join("m1"), "m1", None, &[]).await;
    // `agent` returned: the restarted agent registered with the moved master.
    master
        .wait_state("m1", AgentState::Active, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_is_unreachable_and_reconciled_when_it_returns() {
    let dir = temp_dir("cutoff");
    let master = Master::start(
        &dir.join("master"),
        free_udp(),
        free_udp(),
        free_tcp(),
        &[
            "--heartbeat",
            "100ms",
            "--unreachable-after",
            "1s",
            "--gone-after",
            "30s",
        ],
    )
    .await;
    let token = master.token(3600);
    let a = agent(&master, &dir.join("c1"), "c1", Some(&token), &[]).await;
    let pid = a.child.id().unwrap().to_string();
    // Frozen, the agent sends nothing at all: to the master, a cut cable.
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let took = master
        .wait_state("c1", AgentState::Unreachable, Duration::from_secs(10))
        .await;
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    // Back before the Gone limit: the same agent, Active again, not a duplicate.
    master
        .wait_state("c1", AgentState::Active, Duration::from_secs(15))
        .await;
    assert_eq!(tokio::task::block_in_place(|| master.nodes()).len(), 1);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_validates_and_get_deployments_says_why_replicas_are_not_placed() {
    let dir = temp_dir("apply");
    let master = Master::start(&dir.join("master"), free_udp(), free_udp(), free_tcp(), &[]).await;
    let token = master.token(3600);
    let _a = agent(&master, &dir.join("d1"), "d1", Some(&token), &[]).await;
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "kind: Deployment\nname: calc\nspec:\n  actor: calc\n  version: v1\n  replicas: -1\n  resources: { need: \"cpus:1\" }\n").unwrap();
    let out = master.cli(&["apply", "-f", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.replicas") && err.contains("bad.yaml"),
        "{err}"
    );
    let good = dir.join("good.yaml");
    std::fs::write(&good, "kind: Deployment\nname: calc\nspec:\n  actor: calc\n  version: v1\n  replicas: 2\n  resources: { need: \"cpus:1\" }\n").unwrap();
    let out = master.cli(&["apply", "-f", good.to_str().unwrap(), "--dry-run"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid Deployment default/calc"));
    // Nothing can be placed (see below): waiting ends in an error that says why.
    let out = master.cli(&["apply", "-f", good.to_str().unwrap(), "--timeout", "1s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("only 0/2 replicas running")
            && err.contains("do not host the type"),
        "{err}"
    );
    let out = master.cli(&["apply", "-f", good.to_str().unwrap(), "--no-wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The plain `actormesh agent` hosts no actor types, so nothing can be placed: say so.
    let out = master.cli(&["get", "deployments"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("default/calc") && table.contains("1 do not host the type"),
        "{table}"
    );
    // Delete it: gone from the list, and deleting it again names what was wrong.
    let out = master.cli(&["delete", "deployment", "calc"]);
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("deleted default/calc"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = master.cli(&["get", "deployments"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !table.contains("default/calc"),
        "{table}"
    );
    let out = master.cli(&["delete", "deployment", "default/calc"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("404")
            && err.contains("no deployment \"default/calc\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_given_a_ca_says_it_imported_it_not_that_it_created_one() {
    use std::io::{BufRead, Read};
    let dir = temp_dir("ca-import");
    let ca = dir.join("ca");
    let status = std::process::Command::new(BIN)
        .args(["ca", "init", "--trust-domain", "import.test", "--out"])
        .arg(&ca)
        .status()
        .unwrap();
    assert!(status.success());
    let (m, b, a) = (free_udp(), free_udp(), free_tcp());
    // Its INFO lines (the tests' processes log WARN and above).
    let mut child = std::process::Command::new(BIN)
        .args(["master", "--data-dir"])
        .arg(dir.join("master"))
        .args(["--listen", &m.to_string(), "--bootstrap", &b.to_string()])
        .args(["--api", &a.to_string(), "--ca", ca.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with("master ready:"))
    });
    let ready = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("master ready within 60 s")
        .unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(ready, "{stderr}");
    assert!(
        stderr.contains("imported the cluster CA") && !stderr.contains("created the cluster CA"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_api_port_is_taken_says_so_once_and_does_not_panic() {
    let dir = temp_dir("api-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = taken.local_addr().unwrap().to_string();
    // Ports the system picks: a port picked here and freed could be taken by another
    // test's process before this master binds it (seen once, on its mesh port).
    let data = dir.join("master");
    let proc = Proc::spawn(&[
        "master",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--bootstrap",
        "127.0.0.1:0",
        "--api",
        &api,
    ]);
    let stderr = proc.exit_stderr().await;
    assert!(
        stderr.contains(&format!("cannot listen for the API on {api}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_node_is_gone_at_once_and_its_agent_stops_with_the_reason() {
    let dir = temp_dir("delete-node");
    let master = Master::start(&dir.join("master"), free_udp(), free_udp(), free_tcp(), &[]).await;
    let token = master.token(600);
    let agent = agent(&master, &dir.join("a1"), "oops", Some(&token), &[]).await;
    master
        .wait_state("oops", AgentState::Active, Duration::from_secs(30))
        .await;
    let out = master.cli(&["delete", "node", "oops"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("deleted node oops: it is Gone"),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(master.state_of("oops"), Some(AgentState::Gone));
    // The agent learns it was removed and stops, saying so.
    let stderr = agent.exit_stderr().await;
    assert!(stderr.contains("removed"), "{stderr}");
    // Again: it is Gone already; a node that never was is not found.
    let again = master.cli(&["delete", "node", "oops"]);
    let why = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && why.contains("Gone already"),
        "{why}"
    );
    let none = master.cli(&["delete", "node", "nobody"]);
    let why = String::from_utf8_lossy(&none.stderr);
    assert!(
        !none.status.success() && why.contains("no node named \"nobody\""),
        "{why}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Logs into a pipe carry no colour codes; `--log-format json` writes one object a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_into_a_pipe_are_plain_text_or_json_lines() {
    let dir = temp_dir("log-format");
    // A taken API port: the master logs its start, then exits with the error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = taken.local_addr().unwrap().to_string();
    let run = |format: &str, data: &str| {
        let data = dir.join(data);
        let (m, b) = ("127.0.0.1:0", "127.0.0.1:0");
        tokio::task::block_in_place(|| {
            std::process::Command::new(BIN)
                .args(["--log-format", format, "master", "--data-dir"])
                .arg(&data)
                .args(["--listen", m, "--bootstrap", b, "--api", &api])
                .env("RUST_LOG", "info")
                .output()
                .unwrap()
        })
    };
    let text = run("text", "m1");
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(stderr.contains("created the cluster CA"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes in a pipe: {stderr:?}"
    );
    let json = run("json", "m2");
    let stderr = String::from_utf8_lossy(&json.stderr);
    let logged: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        logged
            .iter()
            .any(|v| v["level"] == "INFO" && v["fields"]["message"] == "created the cluster CA"),
        "{stderr}"
    );
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}
