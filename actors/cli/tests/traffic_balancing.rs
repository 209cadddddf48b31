//! Load balancing by service name, end to end: a master, agents each on its own node over
//! loopback QUIC, deployments with a `service:` block, and a client node calling by name
//! through its Proxy. Each instance answers with its own id, so the caller counts the
//! split: round robin gives each of 3 instances its third (±1 %), weighted 3:1 splits 75/25
//! (±2 points), and P2C sends under 15 % to an instance 10× slower than the others.

mod traffic;

use std::time::Duration;

use traffic::*;

const CALLS: u64 = 10_000;

/// A deployment of `who` serving `service`, one instance per agent.
fn deployment(name: &str, replicas: u32, service: &str) -> String {
    placed(name, replicas, r#"{"unique_node":true}"#, service)
}

/// A deployment of `who` with these constraints, serving `service`.
fn placed(name: &str, replicas: u32, constraints: &str, service: &str) -> String {
    format!(
        r#"{{"kind":"Deployment","name":"{name}","spec":{{"actor":"who","version":"v1","replicas":{replicas},"resources":{{"need":"cpus:1"}},"constraints":{constraints},"service":{service}}}}}"#
    )
}

fn share(split: &Split, id: &str) -> f64 {
    split[id] as f64 / CALLS as f64
}

#[actix::test]
async fn round_robin_gives_each_of_three_instances_its_third() {
    let hosts = ["a1", "a2", "a3"]
        .map(|a| (a, who_host(a, Duration::ZERO)))
        .to_vec();
    let c = cluster("rr", hosts).await;
    let mesh = c.caller("rr-caller").await;
    c.apply(&deployment("rr", 3, r#"{"balancer":"round_robin"}"#))
        .await;
    wait_endpoints(&mesh, "rr", Duration::from_secs(20), |e| e.len() == 3).await;

    let split = call_split(&mesh, "rr", CALLS, 8).await;
    eprintln!("round robin over 3: {split:?}");
    assert_eq!(split.len(), 3, "every instance answered: {split:?}");
    for id in split.keys() {
        let s = share(&split, id);
        assert!(
            (s - 1.0 / 3.0).abs() <= 0.01,
            "{id} got {:.2} % of the calls, not 33.33 ± 1 %: {split:?}",
            s * 100.0
        );
    }
}

#[actix::test]
async fn weighted_three_to_one_splits_within_two_points() {
    let hosts = ["a1", "a2"]
        .map(|a| (a, who_host(a, Duration::ZERO)))
        .to_vec();
    let c = cluster("wrr", hosts).await;
    let mesh = c.caller("wrr-caller").await;
    // Two deployments (say two versions) share the service, with weights 3 and 1, the
    // heavy one on a1 and the light one on a2, so an answer's id says which it came from.
    c.apply(&placed(
        "heavy",
        1,
        r#"{"node_selector":{"host":"a1"}}"#,
        r#"{"name":"split","balancer":"weighted","weight":3}"#,
    ))
    .await;
    c.apply(&placed(
        "light",
        1,
        r#"{"node_selector":{"host":"a2"}}"#,
        r#"{"name":"split","balancer":"weighted","weight":1}"#,
    ))
    .await;
    let eps = wait_endpoints(&mesh, "split", Duration::from_secs(20), |e| e.len() == 2).await;
    let heavy = eps
        .iter()
        .find(|e| e.weight == 3)
        .expect("a weight-3 endpoint");
    assert!(eps.iter().any(|e| e.weight == 1), "{eps:#?}");
    assert_eq!(heavy.addr, c.agents[0].node.local_addr(), "heavy on a1");

    let split = call_split(&mesh, "split", CALLS, 8).await;
    eprintln!("weighted 3:1: {split:?}");
    assert_eq!(split.len(), 2, "{split:?}");
    let heavy_id = split
        .keys()
        .find(|id| id.starts_with("a1-"))
        .unwrap_or_else(|| panic!("no answer from the heavy endpoint: {split:?}"));
    let s = share(&split, heavy_id);
    assert!(
        (s - 0.75).abs() <= 0.02,
        "the weight-3 endpoint got {:.2} % of the calls, not 75 ± 2 %: {split:?}",
        s * 100.0
    );
}

#[actix::test]
async fn p2c_sends_under_fifteen_percent_to_an_instance_ten_times_slower() {
    let hosts = vec![
        ("a1", who_host("a1", Duration::from_millis(5))),
        ("a2", who_host("a2", Duration::from_millis(5))),
        ("slow", who_host("slow", Duration::from_millis(50))),
    ];
    let c = cluster("p2c", hosts).await;
    let mesh = c.caller("p2c-caller").await;
    c.apply(&deployment("p2c", 3, r#"{"balancer":"p2c"}"#))
        .await;
    wait_endpoints(&mesh, "p2c", Duration::from_secs(20), |e| e.len() == 3).await;

    let split = call_split(&mesh, "p2c", CALLS, 8).await;
    eprintln!("p2c with one instance 10x slower: {split:?}");
    let slow: u64 = split
        .iter()
        .filter(|(id, _)| id.starts_with("slow-"))
        .map(|(_, n)| n)
        .sum();
    let s = slow as f64 / CALLS as f64;
    assert!(
        s < 0.15,
        "the slow instance got {:.2} % of the calls: {split:?}",
        s * 100.0
    );
    assert!(slow > 0, "the slow instance stays in the pool: {split:?}");
    assert_eq!(split.len(), 3, "{split:?}");
}
