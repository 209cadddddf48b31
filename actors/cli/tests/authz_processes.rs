//! AuthorizationPolicies with real processes: an `actormesh master` and an `actormesh
//! agent` serving the demo echo as `default/echo`, and `actormesh call` as two client
//! identities, alice and bob. Policies are applied with `actormesh apply`; each outcome
//! (allow, deny, audit, the default both ways, globs) is what a caller sees, and
//! `actormesh authz check` agrees with the callee on every case.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

struct Cluster {
    master: Master,
    agent: Proc,
    dir: PathBuf,
}

const ECHO: &str = "kind: Deployment\nname: echo\nspec:\n  actor: echo\n  version: v1\n  replicas: 1\n  resources: { need: \"cpus:1\" }\n  service: {}\n";

async fn cluster(name: &str, master_flags: &[&str]) -> Cluster {
    let dir = temp_dir(name);
    let master = Master::start(
        &dir.join("master"),
        free_udp(),
        free_udp(),
        free_tcp(),
        master_flags,
    )
    .await;
    let token = master.token(600);
    let agent = agent(
        &master,
        &dir.join("a1"),
        "a1",
        Some(&token),
        &["--demo-actors", "--resources", "cpus:2;mem:1GiB"],
    )
    .await;
    let c = Cluster { master, agent, dir };
    c.apply("echo", ECHO);
    let client_token = c.master.client_token(600);
    for who in ["alice", "bob"] {
        let out = c.cli_plain(&[
            "cert",
            "issue",
            "--client",
            who,
            "--token",
            &client_token,
            "--join",
            &c.master.bootstrap.to_string(),
            "--out",
            c.identity(who).to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
    }
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Cluster {
    fn identity(&self, who: &str) -> PathBuf {
        self.dir.join(who)
    }

    fn cli_plain(&self, args: &[&str]) -> std::process::Output {
        tokio::task::block_in_place(|| {
            std::process::Command::new(BIN)
                .args(args)
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        })
    }

    /// Applies `yaml` (written to `<name>.yaml`).
    fn apply(&self, name: &str, yaml: &str) {
        let file = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let out = self
            .master
            .cli(&["apply", "-f", file.to_str().unwrap(), "--timeout", "30s"]);
        assert!(out.status.success(), "{name}: {out:?}");
    }

    /// `actormesh call default/echo demo.Greet/v1` as `who` with `end-user` metadata:
    /// the exit code and what it printed.
    fn call(&self, who: &str, end_user: Option<&str>) -> (i32, String) {
        let identity = self.identity(who);
        let meta = end_user.map(|u| format!("end-user={u}"));
        let mut args = vec![
            "call",
            "--identity",
            identity.to_str().unwrap(),
            "default/echo",
            "demo.Greet/v1",
            r#"{"name": "x"}"#,
        ];
        if let Some(m) = &meta {
            args.extend(["--metadata", m.as_str()]);
        }
        let out = self.cli_plain(&args);
        (
            out.status.code().unwrap_or(-1),
            text(&out.stdout) + &text(&out.stderr),
        )
    }

    /// `actormesh authz check` for the same call: allowed, and the deciding policy.
    fn check(&self, who: &str, end_user: Option<&str>) -> (bool, String, String) {
        let from = format!("spiffe://cluster.local/client/{who}");
        let meta = end_user.map(|u| format!("end-user={u}"));
        let mut args = vec![
            "authz",
            "check",
            "--from",
            from.as_str(),
            "--to",
            "echo",
            "--message",
            "demo.Greet/v1",
            "-o",
            "json",
        ];
        if let Some(m) = &meta {
            args.extend(["--metadata", m.as_str()]);
        }
        let out = self.master.cli(&args);
        let e: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|err| panic!("{err}: {out:?}"));
        let allowed = e["decision"] == "allow";
        assert_eq!(out.status.success(), allowed, "exit status: {out:?}");
        (
            allowed,
            e["policy"].as_str().unwrap().to_string(),
            e["rule"].as_str().unwrap().to_string(),
        )
    }

    /// Waits (every 50 ms, at most 30 s) until `who`'s call ends with exit `code`: the
    /// push of a policy reaching the agent.
    async fn until(&self, who: &str, end_user: Option<&str>, code: i32) -> String {
        let start = Instant::now();
        loop {
            let (c, out) = self.call(who, end_user);
            if c == code {
                return out;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{who}: exit {c}, not {code}: {out}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The caller's outcome and `authz check` agree: allowed exactly when the call
    /// answers, and a denial names the policy and rule the check names.
    fn agree(&self, who: &str, end_user: Option<&str>) -> (bool, String, String) {
        let (code, out) = self.call(who, end_user);
        let (allowed, policy, rule) = self.check(who, end_user);
        match code {
            0 => assert!(allowed, "{who} {end_user:?}: answered, but check says deny"),
            9 => {
                assert!(!allowed, "{who} {end_user:?}: denied, but check says allow");
                assert!(
                    out.contains(&format!("{policy:?}")) && out.contains(&format!("{rule:?}")),
                    "{who} {end_user:?}: the caller was told {out}, the check says {policy} {rule}"
                );
            }
            other => panic!("{who} {end_user:?}: exit {other}: {out}"),
        }
        (allowed, policy, rule)
    }
}

async fn wait_for_endpoint(c: &Cluster) {
    c.until("alice", None, 0).await;
}

const ONLY_ALICE: &str = "kind: AuthorizationPolicy\nname: only-alice\nspec:\n  service: echo\n  action: ALLOW\n  rules:\n    - from: [ { source: { principals: [\"*/client/alice\"] } } ]\n";
const NO_MALLORY: &str = "kind: AuthorizationPolicy\nname: no-mallory\nspec:\n  action: DENY\n  rules:\n    - when: [ { key: end-user, values: [\"mallory*\"] } ]\n";
const AUDIT_GREET: &str = "kind: AuthorizationPolicy\nname: audit-greet\nspec:\n  service: echo\n  action: AUDIT\n  rules:\n    - to: [ { operation: { messages: [\"demo.Gr*/v1\"] } } ]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_and_audit_decide_as_authz_check_says() {
    let mut c = cluster("authz-allow", &[]).await;
    wait_for_endpoint(&c).await;
    // Under the default (allow) and no policy, both callers are answered.
    assert_eq!(
        c.agree("bob", None),
        (
            true,
            "default-allow".into(),
            "no ALLOW policy applies to default/echo".into()
        )
    );

    // An ALLOW policy with a principal glob: alice only.
    c.apply("only-alice", ONLY_ALICE);
    let out = c.until("bob", None, 9).await;
    assert!(out.contains("permission denied"), "{out}");
    assert_eq!(c.agree("alice", None).1, "default/only-alice");
    assert_eq!(
        c.agree("bob", None),
        (
            false,
            "default/only-alice".into(),
            "no rule of the ALLOW policies of default/echo matched".into()
        )
    );

    // `describe service` shows the policies that apply and the hosts.
    let out = c.master.cli(&["describe", "service", "echo"]);
    let view = text(&out.stdout);
    assert!(
        view.contains("default/only-alice ALLOW 1 rule(s), for this service")
            && view
                .contains("Hosts:           a1 (the nodes whose calls may come as default/echo)"),
        "{view}{}",
        text(&out.stderr)
    );
    // A namespace-wide DENY on metadata wins over the ALLOW that matches alice.
    c.apply("no-mallory", NO_MALLORY);
    c.until("alice", Some("mallory-7"), 9).await;
    assert_eq!(
        c.agree("alice", Some("mallory-7")),
        (false, "default/no-mallory".into(), "rules[0]".into())
    );
    assert!(c.agree("alice", Some("alice")).0);

    // AUDIT changes nothing, and the callee logs the match with its policy.
    c.apply("audit-greet", AUDIT_GREET);
    let start = Instant::now();
    loop {
        assert_eq!(c.call("alice", None).0, 0);
        let log = c.agent.stderr_so_far();
        if log.contains("call audited") && log.contains("default/audit-greet") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no audit line: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The denials were logged by the callee with their policy and rule.
    let log = c.agent.stderr_so_far();
    assert!(
        log.lines().any(|l| l.contains("call denied")
            && l.contains("default/no-mallory")
            && l.contains("rules[0]")),
        "{log}"
    );

    // Deleting the policies brings the default back.
    for name in ["only-alice", "no-mallory", "audit-greet"] {
        let out = c.master.cli(&["delete", "authorization-policy", name]);
        assert!(out.status.success(), "{out:?}");
    }
    c.until("bob", None, 0).await;
    c.agent.kill().await;
    let _ = std::fs::remove_dir_all(&c.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_deny_default_only_what_an_allow_policy_names_is_answered() {
    let mut c = cluster("authz-deny", &["--authz-default", "deny"]).await;
    // The deployment's endpoint comes with the deny default already in force.
    let out = c.until("alice", None, 9).await;
    assert!(out.contains("default-deny"), "{out}");
    assert_eq!(
        c.agree("alice", None),
        (
            false,
            "default-deny".into(),
            "no ALLOW policy applies to default/echo".into()
        )
    );
    c.apply("only-alice", ONLY_ALICE);
    c.until("alice", None, 0).await;
    assert!(c.agree("alice", None).0);
    assert!(!c.agree("bob", None).0);
    c.agent.kill().await;
    let _ = std::fs::remove_dir_all(&c.dir);
}

/// `demo.Echo/v1`, as the demo's echo takes it (the test calls the instance directly).
#[derive(Debug, serde::Serialize, serde::Deserialize, actormesh::RemoteMessage)]
#[remote(name = "demo.Echo/v1", reply = String)]
struct Echo(String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_at_the_agent_within_one_push() {
    let mut c = cluster("authz-revoke", &[]).await;
    wait_for_endpoint(&c).await;
    let task = tokio::task::block_in_place(|| c.master.tasks())
        .into_iter()
        .next()
        .expect("the echo task");
    let agent_addr = tokio::task::block_in_place(|| c.master.nodes())[0]
        .addr
        .expect("the agent's address");
    let bob = actormesh::client::load(&c.identity("bob")).unwrap();
    let alice = actormesh::client::load(&c.identity("alice")).unwrap();

    // alice links to the agent directly (not through the master), and is answered.
    let (revoked_tx, revoked_rx) = std::sync::mpsc::channel::<()>();
    let (linked_tx, linked_rx) = tokio::sync::oneshot::channel::<()>();
    let task_id = task.id.clone();
    let alice_side = tokio::spawn(on_node(alice.credentials.clone(), move |node| async move {
        let echo = node.actor_ref(agent_addr, &task_id);
        assert_eq!(echo.ask(Echo("hi".into())).await.unwrap(), "hi");
        linked_tx.send(()).unwrap();
        tokio::task::spawn_blocking(move || revoked_rx.recv().unwrap())
            .await
            .unwrap();
        // Within one push the agent closes the link and refuses every new handshake.
        let start = Instant::now();
        loop {
            match echo
                .ask_timeout(Echo("again".into()), Duration::from_secs(2))
                .await
            {
                Ok(_) => {}
                Err(actormesh::AskError::Unreachable { .. }) => break,
                Err(other) => panic!("expected Unreachable, got {other:?}"),
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the agent still answers a revoked client"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // It stays refused.
        let again = echo
            .ask_timeout(Echo("later".into()), Duration::from_secs(2))
            .await;
        assert!(
            matches!(again, Err(actormesh::AskError::Unreachable { .. })),
            "{again:?}"
        );
    }));
    linked_rx.await.unwrap();
    let out = c.master.cli(&["cert", "revoke", "--client", "alice"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout)
            .starts_with("revoked spiffe://cluster.local/client/alice: every node refuses it"),
        "{out:?}"
    );
    revoked_tx.send(()).unwrap();
    alice_side.await.unwrap();

    // bob, not revoked, still reaches the agent; no new certificate is issued for alice.
    let task_id = task.id.clone();
    on_node(bob.credentials.clone(), move |node| async move {
        let echo = node.actor_ref(agent_addr, &task_id);
        assert_eq!(echo.ask(Echo("bob".into())).await.unwrap(), "bob");
    })
    .await;
    let client_token = c.master.client_token(600);
    let out = c.cli_plain(&[
        "cert",
        "issue",
        "--client",
        "alice",
        "--token",
        &client_token,
        "--join",
        &c.master.bootstrap.to_string(),
        "--out",
        c.dir.join("alice-again").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr)
            .contains("client identity spiffe://cluster.local/client/alice is revoked"),
        "{out:?}"
    );
    // The revocation is listed, and a bad name is refused naming what is expected.
    let listed = c
        .master
        .client()
        .call("GET", "/v1/revocations", None)
        .unwrap();
    assert_eq!(listed[0]["identity"], "spiffe://cluster.local/client/alice");
    let out = c.master.cli(&["cert", "revoke", "--client", "Not/valid"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr)
            .contains("expected a client name or spiffe://cluster.local/client/<name>"),
        "{out:?}"
    );
    c.agent.kill().await;
    let _ = std::fs::remove_dir_all(&c.dir);
}
