//! Certificate rotation under traffic, and failure detection under CPU load.

mod common;

use std::time::{Duration, Instant};

use actormesh_master::membership::AgentState;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_rotate_without_dropping_the_agent() {
    let dir = temp_dir("rotation");
    let master = Master::start(
        &dir.join("master"),
        free_udp(),
        free_udp(),
        free_tcp(),
        &[
            "--agent-cert-ttl",
            "3s",
            "--heartbeat",
            "100ms",
            "--unreachable-after",
            "1s",
        ],
    )
    .await;
    let token = master.token(3600);
    let _a = agent(&master, &dir.join("r1"), "r1", Some(&token), &[]).await;
    let first = tokio::task::block_in_place(|| master.nodes())[0]
        .cert_expiry
        .unwrap();
    // Over 7 s the 3 s certificate must be renewed at least twice while heartbeats (the
    // agent's traffic) keep flowing: the agent never leaves Active.
    let start = Instant::now();
    let mut renewals = 0;
    let mut last = first;
    while start.elapsed() < Duration::from_secs(7) {
        let n = tokio::task::block_in_place(|| master.nodes()).remove(0);
        assert_eq!(
            n.state,
            AgentState::Active,
            "the agent dropped out during rotation at {:?}",
            start.elapsed()
        );
        let expiry = n.cert_expiry.unwrap();
        if expiry > last {
            renewals += 1;
            last = expiry;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        renewals >= 2,
        "only {renewals} renewals in 7 s with a 3 s certificate"
    );
    let on_disk = std::fs::read_to_string(dir.join("r1").join("creds").join("cert.pem")).unwrap();
    assert!(on_disk.contains("BEGIN CERTIFICATE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_alarms_while_both_cores_are_busy() {
    let dir = temp_dir("load");
    let master = Master::start(&dir.join("master"), free_udp(), free_udp(), free_tcp(), &[]).await;
    let token = master.token(3600);
    let mut agents = Vec::new();
    for name in ["l1", "l2", "l3"] {
        agents.push(agent(&master, &dir.join(name), name, Some(&token), &[]).await);
    }
    // Two busy loops, one per core, for a bounded 6 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(6);
                let mut x = 0u64;
                while Instant::now() < deadline && !stop.load(std::sync::atomic::Ordering::Relaxed)
                {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let nodes = tokio::task::block_in_place(|| master.nodes());
        for n in &nodes {
            assert_eq!(
                n.state,
                AgentState::Active,
                "false alarm under load after {:?}: {n:?}",
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in burners {
        let _ = b.join();
    }
}
