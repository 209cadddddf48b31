//! `apply --dry-run` reads Route and DestinationPolicy manifests (issue 10): valid ones are
//! named, bad ones are refused naming the file and the field; `analyze` reports its
//! findings.

mod common;

use common::{temp_dir, BIN};

const ROUTE: &str = "kind: Route
name: ratings
namespace: shop
spec:
  service: ratings
  rules:
    - match: { message: { glob: \"shop.ratings.*\" } }
      split: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]
      timeout: 2s
      retries: { attempts: 2, per_try_timeout: 500ms }
";

/// Runs `actormesh <command> <args>`: whether it succeeded, its stdout and its stderr.
fn actormesh(command: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .arg(command)
        .args(args)
        .output()
        .expect("run actormesh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn apply(args: &[&str]) -> (bool, String, String) {
    actormesh("apply", args)
}

fn analyze(args: &[&str]) -> (bool, String, String) {
    actormesh("analyze", args)
}

#[test]
fn dry_run_names_valid_routes_and_policies_and_refuses_bad_ones_by_field() {
    let dir = temp_dir("traffic-manifests");
    let route = dir.join("route.yaml");
    std::fs::write(&route, ROUTE).unwrap();
    let (ok, out, err) = apply(&["-f", route.to_str().unwrap(), "--dry-run"]);
    assert!(ok && out.contains("valid Route shop/ratings"), "{out}{err}");

    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "kind: DestinationPolicy\nname: ratings\nnamespace: shop\nspec:\n  service: ratings\n  subsets: [ { name: v1, labels: { version: v1 } } ]\n  retry_budget: {}\n",
    )
    .unwrap();
    let (ok, out, err) = apply(&["-f", policy.to_str().unwrap(), "--dry-run"]);
    assert!(
        ok && out.contains("valid DestinationPolicy shop/ratings"),
        "{out}{err}"
    );

    let bad = dir.join("bad-route.yaml");
    std::fs::write(&bad, ROUTE.replace("weight: 10", "weight: 5")).unwrap();
    let (ok, _, err) = apply(&["-f", bad.to_str().unwrap(), "--dry-run"]);
    assert!(
        !ok && err.contains("bad-route.yaml")
            && err.contains("spec.rules[0].split")
            && err.contains("summing to 100"),
        "{err}"
    );
}

const POLICY: &str = "kind: DestinationPolicy
name: ratings
namespace: shop
spec:
  service: ratings
  subsets: [ { name: v1, labels: { version: v1 } } ]
";

#[test]
fn analyze_offline_reports_findings_across_files_with_code_object_and_field() {
    let dir = temp_dir("traffic-analyze");
    let (route, policy, second) = (
        dir.join("route.yaml"),
        dir.join("policy.yaml"),
        dir.join("second.yaml"),
    );
    std::fs::write(&route, ROUTE).unwrap();
    std::fs::write(&policy, POLICY).unwrap();
    std::fs::write(&second, ROUTE.replace("name: ratings", "name: ratings-too")).unwrap();
    let files = |fs: &[&std::path::Path]| -> Vec<String> {
        fs.iter()
            .flat_map(|f| ["-f".to_string(), f.to_str().unwrap().to_string()])
            .collect()
    };
    let mut args = files(&[&route, &policy, &second]);
    args.extend(["--offline".into(), "-o".into(), "json".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = analyze(&args);
    assert!(!ok && err.contains("finding"), "{out}{err}");
    let found: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let keys: Vec<(String, String, String)> = found
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["object"].as_str().unwrap().to_string(),
                f["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let key = |c: &str, o: &str, f: &str| (c.to_string(), o.to_string(), f.to_string());
    assert!(
        keys.contains(&key(
            "AM1001",
            "Route shop/ratings",
            "rules[0].split[1].subset"
        )),
        "{keys:?}"
    );
    assert!(
        keys.contains(&key("AM1004", "Route shop/ratings-too", "service")),
        "{keys:?}"
    );

    // One route whose subsets the policy defines: nothing to say.
    let fine = dir.join("fine.yaml");
    std::fs::write(
        &fine,
        ROUTE.replace(
            "[ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]",
            "[ { subset: v1, weight: 100 } ]",
        ),
    )
    .unwrap();
    let args = files(&[&fine, &policy]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push("--offline");
    let (ok, out, err) = analyze(&args);
    assert!(ok && out.contains("no findings"), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_asks_the_master_for_the_services_it_names() {
    use common::{free_tcp, free_udp, Master};
    let dir = temp_dir("traffic-analyze-master");
    let master = Master::start(&dir.join("master"), free_udp(), free_udp(), free_tcp(), &[]).await;
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let out = master.cli(&["analyze", "-f", policy.to_str().unwrap()]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !out.status.success()
            && stdout.contains("AM1003")
            && stdout.contains("DestinationPolicy shop/ratings")
            && stdout.contains("no service shop/ratings in the registry"),
        "{stdout}{stderr}"
    );
}
