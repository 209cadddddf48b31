//! Traffic policy through the control plane: `actormesh apply` of a Route and a
//! DestinationPolicy reaches the master's API, the registry pushes them with their service,
//! a caller's calls by name follow them, `get traffic` and `describe service` show them,
//! and `delete route` takes the route away.

mod common;
mod traffic;

use std::time::{Duration, Instant};

use actormesh::mesh::{CallOptions, Mesh, ServiceName};
use traffic::{cluster, who_host, Cluster, Who};

fn deployment(name: &str, version: &str, replicas: u32) -> String {
    format!(
        r#"{{"kind":"Deployment","name":"{name}","spec":{{"actor":"who","version":"{version}","replicas":{replicas},"resources":{{"need":"cpus:1"}},"service":{{"name":"web","balancer":"round_robin"}}}}}}"#
    )
}

const ROUTE: &str = "kind: Route
name: web
spec:
  service: web
  rules:
    - match: { metadata: { end-user: { exact: jason } } }
      split: [ { subset: v2, weight: 100 } ]
    - split: [ { subset: v1, weight: 100 } ]
      timeout: 2s
      retries: { attempts: 2, per_try_timeout: 500ms }
";

const POLICY: &str = "kind: DestinationPolicy
name: web
spec:
  service: web
  subsets:
    - { name: v1, labels: { version: v1 } }
    - { name: v2, labels: { version: v2 } }
  circuit_breaker: { max_pending: 100 }
  outlier_detection: {}
";

/// Runs the CLI against the in-process master, off the test's thread (the master runs
/// on it): whether it succeeded, stdout, stderr.
async fn cli(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend([
        "--api".into(),
        format!("http://{}", c.master.api),
        "--api-token-file".into(),
        c.master.api_token_file.display().to_string(),
    ]);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::BIN)
            .args(&all)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the caller's table shows `web` with a route (and its policy), or without a
/// route.
async fn wait_route(mesh: &Mesh, present: bool) {
    let name: ServiceName = "default/web".parse().unwrap();
    let start = Instant::now();
    loop {
        let has = mesh.proxy_config().services.iter().any(|s| {
            s.name == name
                && s.traffic.route.is_some() == present
                && (!present || s.traffic.policy.is_some())
        });
        if has {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the caller's table never showed web with route={present}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The agents that answered `n` calls with these options.
async fn answered_by(mesh: &Mesh, n: u64, options: &CallOptions) -> Vec<String> {
    let s = mesh.service("web").unwrap();
    let mut by = Vec::new();
    for i in 0..n {
        let who = s.ask_with(Who(i), options).await.unwrap();
        let agent = who.split('-').next().unwrap().to_string();
        if !by.contains(&agent) {
            by.push(agent);
        }
    }
    by.sort();
    by
}

#[actix::test]
async fn an_applied_route_and_policy_reach_the_callers_and_describe_shows_them() {
    let c = cluster(
        "policy",
        vec![
            ("a", who_host("a", Duration::ZERO)),
            ("b", who_host("b", Duration::ZERO)),
        ],
    )
    .await;
    let mesh = c.caller("policy-caller").await;
    // v2 on one agent, v1 on the other: v2 takes all 4 cpus of its agent, so v1's two
    // replicas go to the other.
    c.apply(&deployment("web-v2", "v2", 1).replace(r#""need":"cpus:1""#, r#""need":"cpus:4""#))
        .await;
    traffic::wait_endpoints(&mesh, "web", Duration::from_secs(20), |e| e.len() == 1).await;
    c.apply(&deployment("web-v1", "v1", 2)).await;
    traffic::wait_endpoints(&mesh, "web", Duration::from_secs(20), |e| e.len() == 3).await;

    let dir = &c.dir;
    std::fs::write(dir.join("route.yaml"), ROUTE).unwrap();
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    let route = dir.join("route.yaml").display().to_string();
    let policy = dir.join("policy.yaml").display().to_string();
    // The route first: applied, with analyze's warning that no policy defines its subsets.
    let (ok, out, err) = cli(&c, &["apply", "-f", &route]).await;
    assert!(
        ok && out.contains("applied Route default/web"),
        "{out}{err}"
    );
    assert!(
        err.contains("warning AM1001 Route default/web rules[0].split[0].subset"),
        "{err}"
    );
    let (ok, out, err) = cli(&c, &["apply", "-f", &policy]).await;
    assert!(
        ok && out.contains("applied DestinationPolicy default/web"),
        "{out}{err}"
    );
    assert!(
        !err.contains("warning"),
        "the subsets are defined now: {err}"
    );

    wait_route(&mesh, true).await;
    let jason = CallOptions::default().metadata("end-user", "jason");
    let v2 = answered_by(&mesh, 20, &jason).await;
    let v1 = answered_by(&mesh, 20, &CallOptions::default()).await;
    assert_eq!(v2.len(), 1, "jason goes to v2's one agent: {v2:?}");
    assert_eq!(v1.len(), 1, "everyone else to v1's agent: {v1:?}");
    assert_ne!(v1, v2);

    let (ok, out, err) = cli(&c, &["get", "traffic"]).await;
    assert!(
        ok && out.contains("Route")
            && out.contains("DestinationPolicy")
            && out.contains("subsets v1,v2"),
        "{out}{err}"
    );
    let (ok, out, err) = cli(&c, &["describe", "service", "web"]).await;
    eprintln!("{out}");
    for want in [
        "Route:           default/web",
        "rule 0:",
        "split v2 100",
        "timeout 2s overall, per try 500ms",
        "Policy:          default/web",
        "subset v1:",
        "pending",
        "BREAKER",
        "closed",
    ] {
        assert!(ok && out.contains(want), "{want:?} missing:\n{out}{err}");
    }

    // A second Route for the same service is refused, naming the first.
    std::fs::write(
        dir.join("other.yaml"),
        ROUTE.replace("name: web", "name: web-two"),
    )
    .unwrap();
    let other = dir.join("other.yaml").display().to_string();
    let (ok, _, err) = cli(&c, &["apply", "-f", &other]).await;
    assert!(
        !ok && err.contains("Route default/web already applies"),
        "{err}"
    );

    let (ok, out, err) = cli(&c, &["delete", "route", "web"]).await;
    assert!(
        ok && out.contains("deleted Route default/web"),
        "{out}{err}"
    );
    wait_route(&mesh, false).await;
    assert_eq!(
        answered_by(&mesh, 20, &CallOptions::default()).await,
        ["a", "b"],
        "without the route, round robin over all three"
    );
    let (ok, _, err) = cli(&c, &["delete", "route", "web"]).await;
    assert!(!ok && err.contains("no Route default/web"), "{err}");
}
