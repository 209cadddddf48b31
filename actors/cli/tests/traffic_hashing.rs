//! Consistent hashing by service name, end to end: the same key reaches the same instance,
//! and when one of 4 instances is removed (a scale-down from 4 to 3), no key of the other
//! three moves; only the removed instance's keys go elsewhere.

mod traffic;

use std::collections::BTreeMap;
use std::time::Duration;

use actormesh::mesh::{CallOptions, Mesh};
use traffic::*;

const KEYS: usize = 1_000;

fn deployment(replicas: u32) -> String {
    format!(
        r#"{{"kind":"Deployment","name":"ring","spec":{{"actor":"who","version":"v1","replicas":{replicas},"resources":{{"need":"cpus:1"}},"constraints":{{"unique_node":true}},"service":{{"balancer":"hash"}}}}}}"#
    )
}

/// Which instance answered each key, calling every key `rounds` times; panics if a key
/// reached two instances.
async fn owners(mesh: &Mesh, rounds: usize) -> BTreeMap<String, String> {
    let s = mesh.service("ring").unwrap();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..rounds {
        for k in 0..KEYS {
            let key = format!("user-{k}");
            let who = s
                .ask_with(
                    Who(k as u64),
                    &CallOptions::default()
                        .timeout(Duration::from_secs(5))
                        .hash_key(&key),
                )
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            if let Some(before) = owner.insert(key.clone(), who.clone()) {
                assert_eq!(before, who, "{key} moved in round {round} with no change");
            }
        }
    }
    owner
}

#[actix::test]
async fn a_key_stays_on_its_instance_and_only_the_removed_instances_keys_move() {
    let hosts = ["a1", "a2", "a3", "a4"]
        .map(|a| (a, who_host(a, Duration::ZERO)))
        .to_vec();
    let c = cluster("hash", hosts).await;
    let mesh = c.caller("hash-caller").await;
    c.apply(&deployment(4)).await;
    wait_endpoints(&mesh, "ring", Duration::from_secs(20), |e| e.len() == 4).await;

    let before = owners(&mesh, 3).await;
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for who in before.values() {
        *per.entry(who).or_default() += 1;
    }
    eprintln!("keys per instance of 4: {per:?}");
    assert_eq!(per.len(), 4, "the keys spread over all 4: {per:?}");

    c.apply(&deployment(3)).await;
    wait_endpoints(&mesh, "ring", Duration::from_secs(20), |e| e.len() == 3).await;
    let after = owners(&mesh, 1).await;
    let remaining: Vec<&String> = after.values().collect();
    let removed: Vec<&str> = per
        .keys()
        .copied()
        .filter(|id| !remaining.contains(&&id.to_string()))
        .collect();
    assert_eq!(removed.len(), 1, "one instance left: {per:?} {after:?}");
    let mut moved = 0;
    for (key, was) in &before {
        if was == removed[0] {
            assert_ne!(&after[key], was);
            moved += 1;
        } else {
            assert_eq!(
                &after[key], was,
                "{key} moved although {was} is still there"
            );
        }
    }
    eprintln!("removed {}: {moved} keys moved, all its own", removed[0]);
    assert_eq!(moved, per[removed[0]]);
}
