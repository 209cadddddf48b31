//! `apply --dry-run` reads Route and DestinationPolicy manifests (issue 10): valid ones are
//! named, bad ones are refused naming the file and the field. Applying them is not built
//! yet, and says so.

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

fn apply(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .arg("apply")
        .args(args)
        .output()
        .expect("run actormesh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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

    // Without --dry-run: valid, but not served yet, and said so before any master is asked.
    let (ok, _, err) = apply(&["-f", route.to_str().unwrap()]);
    assert!(!ok && err.contains("cannot apply it yet"), "{err}");
}
