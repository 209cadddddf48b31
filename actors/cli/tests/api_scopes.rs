//! Operator API tokens with real processes: an `actormesh master`, and the CLI with tokens
//! of each scope made by `actormesh token create --api`. Each scope can do what it should
//! and nothing more; a revoked token is refused; every change, refused ones too, is in the
//! audit log with its holder.

mod common;

use common::*;

struct Cli<'a> {
    master: &'a Master,
}

impl Cli<'_> {
    /// `actormesh <args> --api <master> --api-token <token>`: (exit code, stdout+stderr).
    fn run(&self, token: &str, args: &[&str]) -> (i32, String) {
        let api = format!("http://{}", self.master.api);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--api", &api, "--api-token", token]);
        let out = tokio::task::block_in_place(|| {
            std::process::Command::new(BIN)
                .args(&all)
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        });
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn ok(&self, token: &str, args: &[&str]) -> String {
        let (code, out) = self.run(token, args);
        assert_eq!(code, 0, "{args:?}: {out}");
        out
    }

    fn forbidden(&self, token: &str, args: &[&str], needs: &str) {
        let (code, out) = self.run(token, args);
        assert_ne!(code, 0, "{args:?} should be refused: {out}");
        assert!(
            out.contains("403") && out.contains(&format!("needs {needs}")),
            "{args:?}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scope_does_what_it_should_and_nothing_more() {
    let dir = temp_dir("api-scopes");
    let master = Master::start(&dir.join("m"), free_udp(), free_udp(), free_tcp(), &[]).await;
    let cli = Cli { master: &master };
    let admin = std::fs::read_to_string(master.dir.join("api-token")).unwrap();
    let admin = admin.trim();
    let token = |scope: &str, holder: &str| {
        cli.ok(
            admin,
            &[
                "token", "create", "--scope", scope, "--holder", holder, "--ttl", "1h",
            ],
        )
        .trim()
        .to_string()
    };
    let (viewer, operator, admin2) = (
        token("viewer", "vera"),
        token("operator", "otto"),
        token("admin", "ada"),
    );
    let manifest = dir.join("web.yaml");
    std::fs::write(
        &manifest,
        "kind: Deployment\nname: web\nspec:\n  actor: echo\n  version: v1\n  replicas: 1\n  resources: { need: \"cpus:1\" }\n",
    )
    .unwrap();
    let apply = ["apply", "-f", manifest.to_str().unwrap(), "--no-wait"];

    // viewer: get and describe only.
    cli.ok(&viewer, &["get", "nodes"]);
    cli.ok(&viewer, &["get", "deployments"]);
    cli.forbidden(&viewer, &apply, "operator");
    cli.forbidden(
        &viewer,
        &["token", "create", "--role", "client"],
        "operator",
    );
    cli.forbidden(&viewer, &["delete", "deployment", "web"], "operator");
    cli.forbidden(&viewer, &["get", "audit"], "operator");

    // operator: apply, delete, client join tokens, the audit log; not agent tokens, API
    // tokens or certificates.
    cli.ok(&operator, &apply);
    cli.ok(&operator, &["token", "create", "--role", "client"]);
    cli.ok(&operator, &["get", "audit"]);
    let (code, out) = cli.run(&operator, &["token", "create"]);
    assert!(
        code != 0 && out.contains("a join token of role agent needs admin"),
        "{out}"
    );
    cli.forbidden(
        &operator,
        &[
            "token", "create", "--role", "api", "--scope", "viewer", "--holder", "x",
        ],
        "admin",
    );
    cli.forbidden(&operator, &["cert", "revoke", "--client", "cli"], "admin");
    cli.forbidden(&operator, &["get", "api-tokens"], "admin");
    cli.ok(&operator, &["delete", "deployment", "web"]);

    // admin: everything.
    cli.ok(&admin2, &["token", "create"]);
    cli.ok(&admin2, &["cert", "revoke", "--client", "cli"]);
    let listed = cli.ok(&admin2, &["get", "api-tokens"]);
    for holder in ["vera", "otto", "ada"] {
        assert!(listed.contains(holder), "{listed}");
    }

    // A revoked token is refused, whatever its scope.
    let tokens: Vec<serde_json::Value> =
        serde_json::from_str(&cli.ok(admin, &["get", "api-tokens", "-o", "json"])).unwrap();
    let otto = tokens.iter().find(|t| t["holder"] == "otto").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cli.ok(admin, &["token", "revoke", &otto]);
    let (code, out) = cli.run(&operator, &["get", "nodes"]);
    assert!(
        code != 0 && out.contains("401") && out.contains("was revoked"),
        "{out}"
    );
    let (code, out) = cli.run("amapi.nothing.here", &["get", "nodes"]);
    assert!(
        code != 0 && out.contains("missing or wrong API token (not a token of this master"),
        "{out}"
    );

    // The audit log has every change with its holder, the refused ones too.
    let audit: Vec<serde_json::Value> =
        serde_json::from_str(&cli.ok(admin, &["get", "audit", "-o", "json"])).unwrap();
    let has = |holder: &str, what: &str, status: u16| {
        audit.iter().any(|e| {
            e["holder"] == holder
                && e["what"].as_str().is_some_and(|w| w.starts_with(what))
                && e["status"] == status
        })
    };
    assert!(has("otto", "POST /v1/deployments", 200), "{audit:#?}");
    assert!(has("vera", "POST /v1/deployments", 403), "{audit:#?}");
    assert!(
        has("otto", "DELETE /v1/deployments/default/web", 200),
        "{audit:#?}"
    );
    assert!(has("ada", "POST /v1/revocations", 200), "{audit:#?}");
    assert!(
        has("api-token-file", "DELETE /v1/api-tokens/", 200),
        "{audit:#?}"
    );
    let applied = audit
        .iter()
        .find(|e| e["holder"] == "otto" && e["what"] == "POST /v1/deployments")
        .unwrap();
    assert_eq!(applied["object"], "Deployment default/web");
    assert!(!audit
        .iter()
        .any(|e| e["what"].as_str().unwrap().starts_with("GET")));
    let table = cli.ok(admin, &["get", "audit"]);
    assert!(
        table.starts_with("WHEN") && table.contains("otto"),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A framework's event actor for the registration test: takes events, does nothing.
struct Quiet;

impl actix::Actor for Quiet {
    type Context = actix::Context<Self>;
}

#[actormesh::handler]
impl actix::Handler<actormesh::framework::FrameworkEvent> for Quiet {
    type Result = ();
    fn handle(&mut self, _: actormesh::framework::FrameworkEvent, _: &mut actix::Context<Self>) {}
}

/// `actormesh <args>`, run to its end.
fn plain(args: &[&str]) -> std::process::Output {
    tokio::task::block_in_place(|| std::process::Command::new(BIN).args(args).output().unwrap())
}

/// A client identity `name` from `master`, written into `out`; its credentials.
fn issue_client(
    master: &Master,
    name: &str,
    out: &std::path::Path,
) -> actormesh::transport::pki::Credentials {
    let done = plain(&[
        "cert",
        "issue",
        "--client",
        name,
        "--token",
        &master.client_token(600),
        "--join",
        &master.bootstrap.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(done.status.success(), "{done:?}");
    actormesh::client::load(out).unwrap().credentials
}

/// Registers a framework under `role` from a node with `credentials`.
async fn register(
    credentials: actormesh::transport::pki::Credentials,
    master: std::net::SocketAddr,
    role: &'static str,
) -> Result<(), actormesh::framework::FrameworkError> {
    on_node(credentials, move |node| async move {
        let me = node.spawn("events", Quiet).unwrap();
        actormesh::framework::Scheduler::register(
            &node,
            master,
            &me,
            "fw",
            role,
            std::time::Duration::from_secs(5),
            None,
        )
        .await
        .map(|_| ())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_granted_identities_register_frameworks_and_an_agent_is_not_one_by_default() {
    let dir = temp_dir("fw-grants");
    // Default grants first: clients may, agents may not.
    let master = Master::start(&dir.join("m"), free_udp(), free_udp(), free_tcp(), &[]).await;
    let token = master.token(600);
    let mut a1 = agent(&master, &dir.join("a1"), "a1", Some(&token), &[]).await;
    let agent_creds = actormesh::transport::pki::Credentials::load(&dir.join("a1").join("creds"))
        .or_else(|_| actormesh::transport::pki::Credentials::load(&dir.join("a1")))
        .unwrap();
    let e = register(agent_creds, master.mesh, "batch")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "spiffe://cluster.local/node/a1 may not register a framework under role \"batch\""
        ) && e.to_string().contains("master --framework-role"),
        "{e}"
    );
    let issue = |name: &str| issue_client(&master, name, &dir.join(name));
    register(issue("ops"), master.mesh, "batch").await.unwrap();
    a1.kill().await;
    drop(master);

    // Configured grants replace the default: only ops, only under batch.
    let master = Master::start(
        &dir.join("m2"),
        free_udp(),
        free_udp(),
        free_tcp(),
        &[
            "--framework-role",
            "spiffe://cluster.local/client/ops=batch",
        ],
    )
    .await;
    let issue = |name: &str| issue_client(&master, name, &dir.join(format!("{name}2")));
    register(issue("ops"), master.mesh, "batch").await.unwrap();
    let e = register(issue("ops"), master.mesh, "etl")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("under role \"etl\""), "{e}");
    let e = register(issue("dev"), master.mesh, "batch")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("client/dev may not register")
            && e.to_string()
                .contains("spiffe://cluster.local/client/ops=batch"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
