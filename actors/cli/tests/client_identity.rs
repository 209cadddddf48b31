//! Client identities as real processes: `token create --role client`, `cert issue --client`,
//! a client node calling an actor on an agent over mutual TLS, the refusals between the two
//! roles, and `dev` writing the CLI's identity.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use actormesh::protocol::{MasterRefusal, Register, MASTER_ACTOR};
use actormesh_cli::demo::Echo;
use common::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `actormesh cert issue --client <name> --token <token> --join <master> --out <out>`.
fn cert_issue(master: &Master, name: &str, token: &str, out: &Path) -> std::process::Output {
    let join = master.bootstrap.to_string();
    tokio::task::block_in_place(|| {
        std::process::Command::new(BIN)
            .args([
                "cert",
                "issue",
                "--client",
                name,
                "--token",
                token,
                "--join",
                &join,
                "--out",
                out.to_str().unwrap(),
            ])
            .output()
    })
    .unwrap()
}

#[cfg(unix)]
fn assert_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for f in ["key.pem", "cert.pem", "ca.pem", "client.json"] {
        let mode = std::fs::metadata(dir.join(f))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f} must be private");
    }
}

/// A registration as an agent would send it, from whatever node sends it.
fn register_as(agent_id: &str, addr: std::net::SocketAddr) -> Register {
    Register {
        agent_id: agent_id.into(),
        addr,
        resources: Default::default(),
        attrs: BTreeMap::new(),
        actor_types: vec![],
        running: vec![],
        healthy: vec![],
        held: BTreeMap::new(),
        versions: BTreeMap::new(),
        reserved: BTreeMap::new(),
        cert_expiry: SystemTime::now() + Duration::from_secs(3600),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_calls_an_actor_on_an_agent_without_joining() {
    let dir = temp_dir("client-identity");
    let master = Master::start(&dir.join("master"), free_udp(), free_udp(), free_tcp(), &[]).await;
    let agent_token = master.token(3600);
    let _agent = agent(
        &master,
        &dir.join("n1"),
        "n1",
        Some(&agent_token),
        &["--demo-actors", "--resources", "cpus:2;mem:1GiB"],
    )
    .await;

    // The operator makes a client token and a client certificate with the CLI.
    let out = master.cli(&["token", "create", "--role", "client", "--ttl", "10m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let client_token = stdout(&out).trim().to_string();
    let client_dir = dir.join("tool");
    let out = cert_issue(&master, "tool", &client_token, &client_dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("issued spiffe://cluster.local/client/tool into "),
        "{}",
        stdout(&out)
    );
    #[cfg(unix)]
    assert_private(&client_dir);

    // The client is no node.
    let nodes = tokio::task::block_in_place(|| master.nodes());
    assert_eq!(
        nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["n1"]
    );
    let out = master.cli(&["get", "nodes"]);
    assert!(!stdout(&out).contains("tool"), "{}", stdout(&out));

    // An echo instance on the agent, asked from a node with the client identity.
    let manifest = dir.join("echo.yaml");
    std::fs::write(
        &manifest,
        "kind: Deployment\nname: echo\nspec:\n  actor: echo\n  version: v1\n  replicas: 1\n  resources: { need: \"cpus:1\" }\n",
    )
    .unwrap();
    let out = master.cli(&[
        "apply",
        "-f",
        manifest.to_str().unwrap(),
        "--timeout",
        "30s",
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let task = tokio::task::block_in_place(|| master.tasks())
        .into_iter()
        .next()
        .expect("the echo task");
    let agent_addr = nodes[0].addr.expect("the agent's address");
    let client = actormesh::client::load(&client_dir).unwrap();
    assert_eq!(
        client.identity.as_str(),
        "spiffe://cluster.local/client/tool"
    );
    assert_eq!(client.record.master_addr, master.mesh);
    let master_mesh = master.mesh;
    let task_id = task.id.clone();
    on_node(client.credentials.clone(), move |node| async move {
        let echo = node.actor_ref(agent_addr, &task_id);
        assert_eq!(echo.ask(Echo("hi".into())).await.unwrap(), "hi");

        // The client cannot pass for an agent at $master, with its own name or the agent's.
        let gate = node.actor_ref(master_mesh, MASTER_ACTOR);
        for id in ["tool", "n1"] {
            let refusal = gate
                .ask(register_as(id, node.local_addr()))
                .await
                .unwrap()
                .unwrap_err();
            match refusal {
                MasterRefusal::Forbidden(why) => assert!(
                    why.starts_with("spiffe://cluster.local/client/tool is a client identity; Register is an agent message"),
                    "{why}"
                ),
                other => panic!("expected Forbidden, got {other:?}"),
            }
        }
        let heartbeat = actormesh::protocol::Heartbeat {
            agent_id: "n1".into(),
            trust_digest: String::new(),
            cert_ca: String::new(),
        };
        let answer = gate.ask(heartbeat).await.unwrap();
        assert!(
            matches!(&answer, Err(MasterRefusal::Forbidden(why)) if why.contains("is a client identity; Heartbeat")),
            "{answer:?}"
        );
    })
    .await;
    let nodes = tokio::task::block_in_place(|| master.nodes());
    assert_eq!(nodes.len(), 1, "{nodes:?}");

    // The roles do not mix.
    let said = refused_agent(&master, &dir.join("n2"), Some("n2"), Some(&client_token)).await;
    assert!(
        said.contains("is a client token; joining as an agent needs a token of role agent"),
        "{said}"
    );
    let out = cert_issue(&master, "tool2", &agent_token, &dir.join("tool2"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "is an agent token; issuing a client certificate needs a token of role client"
        ),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("tool2").exists());

    // A bad name is refused before anything is sent, naming the rule.
    let out = cert_issue(&master, "Tool/2", &client_token, &dir.join("tool3"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "client name \"Tool/2\" is not valid: use 1 to 63 lowercase letters, digits, '-' or '_'"
        ),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_writes_a_client_identity_that_the_cli_can_use_at_once() {
    let dir = temp_dir("dev-client");
    let state = dir.join("state");
    let api = free_tcp().to_string();
    let mut dev = Proc::spawn(&[
        "dev",
        "--data-dir",
        state.to_str().unwrap(),
        "--api",
        &api,
        "--gateway-http",
        "127.0.0.1:0",
    ]);
    let said = dev.line("client identity ").await;
    assert_eq!(
        said,
        format!(
            "spiffe://cluster.local/client/cli in {}",
            state.join("client").display()
        )
    );
    dev.line("try: actormesh get nodes ").await;
    #[cfg(unix)]
    assert_private(&state.join("client"));
    let client = actormesh_cli::client_identity(&state).unwrap();
    assert_eq!(
        client.identity.as_str(),
        "spiffe://cluster.local/client/cli"
    );
    // Mutual TLS with the dev master accepts it, and it is no agent there.
    let master_addr = client.record.master_addr;
    on_node(client.credentials.clone(), move |node| async move {
        let link = node.endpoint().link(master_addr).await.unwrap();
        assert_eq!(link.peer().path(), "/node/master");
        let refusal = node
            .actor_ref(master_addr, MASTER_ACTOR)
            .ask(register_as("dev-agent", node.local_addr()))
            .await
            .unwrap();
        assert!(
            matches!(&refusal, Err(MasterRefusal::Forbidden(why)) if why.contains("is a client identity")),
            "{refusal:?}"
        );
    })
    .await;
    dev.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
