//! Deployments with real processes: an agent killed with -9 has its replicas come back
//! elsewhere, and a master killed mid-deploy and restarted neither duplicates nor loses
//! instances.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use actormesh_master::frameworks::TaskState;
use actormesh_master::membership::AgentState;
use common::*;

fn echo(replicas: u32) -> String {
    format!(
        "kind: Deployment\nname: echo\nspec:\n  actor: echo\n  version: v1\n  replicas: {replicas}\n  resources: {{ need: \"cpus:1\" }}\n"
    )
}

fn running(tasks: &[actormesh_master::deployments::TaskEntry]) -> Vec<(String, String)> {
    tasks
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .map(|t| (t.id.clone(), t.agent.clone()))
        .collect()
}

/// The ids of the Running tasks.
fn running_ids(tasks: &[actormesh_master::deployments::TaskEntry]) -> BTreeSet<String> {
    running(tasks).into_iter().map(|(id, _)| id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_an_agent_killed_with_sigkill_come_back_elsewhere() {
    let dir = temp_dir("dep-kill");
    let master = Master::start(
        &dir.join("master"),
        free_udp(),
        free_udp(),
        free_tcp(),
        &["--heartbeat", "100ms", "--unreachable-after", "1s"],
    )
    .await;
    let token = master.token(3600);
    let opts = ["--demo-actors", "--resources", "cpus:4"];
    let mut a1 = agent(&master, &dir.join("a1"), "a1", Some(&token), &opts).await;
    let _a2 = agent(&master, &dir.join("a2"), "a2", Some(&token), &opts).await;
    let f = dir.join("echo.yaml");
    std::fs::write(&f, echo(4)).unwrap();
    let out = master.cli(&["apply", "-f", f.to_str().unwrap(), "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");
    let before = running(&master.tasks());
    let on_a1: Vec<String> = before
        .iter()
        .filter(|(_, a)| a == "a1")
        .map(|(t, _)| t.clone())
        .collect();
    assert_eq!(on_a1.len(), 2, "spread over both agents: {before:?}");

    a1.kill().await;
    let tasks = master
        .wait_tasks("4 running on a2", Duration::from_secs(30), |t| {
            let r = running(t);
            r.len() == 4 && r.iter().all(|(_, a)| a == "a2")
        })
        .await;
    for id in &on_a1 {
        let t = tasks.iter().find(|t| &t.id == id).unwrap();
        assert_eq!(t.state, TaskState::Lost, "{t:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restarted_mid_deploy_neither_duplicates_nor_loses_instances() {
    let dir = temp_dir("dep-restart");
    let (mesh, boot, api) = (free_udp(), free_udp(), free_tcp());
    let flags = ["--heartbeat", "100ms", "--unreachable-after", "1s"];
    let mut master = Master::start(&dir.join("master"), mesh, boot, api, &flags).await;
    let token = master.token(3600);
    let opts = ["--demo-actors", "--resources", "cpus:2"];
    let _a1 = agent(&master, &dir.join("a1"), "a1", Some(&token), &opts).await;
    let _a2 = agent(&master, &dir.join("a2"), "a2", Some(&token), &opts).await;
    // 6 replicas, room for 4: the deployment is under way when the master dies.
    let f = dir.join("echo.yaml");
    std::fs::write(&f, echo(6)).unwrap();
    let out = master.cli(&["apply", "-f", f.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success(), "{out:?}");
    let before = running_ids(
        &master
            .wait_tasks("4 running", Duration::from_secs(30), |t| {
                running(t).len() == 4
            })
            .await,
    );

    master.proc.kill().await;
    let master = Master::start(&dir.join("master"), mesh, boot, api, &flags).await;
    for a in ["a1", "a2"] {
        master
            .wait_state(a, AgentState::Active, Duration::from_secs(20))
            .await;
    }
    // The same 4 instances, adopted: nothing started twice, nothing lost.
    let after = running_ids(
        &master
            .wait_tasks("the 4 instances adopted", Duration::from_secs(30), |t| {
                running(t).len() == 4
            })
            .await,
    );
    assert_eq!(before, after);
    // What the agents said they run when they registered again: those 4, no more.
    let nodes = master
        .wait_nodes(
            "a1 and a2 report their instances",
            Duration::from_secs(20),
            |n| n.iter().map(|a| a.running.len()).sum::<usize>() >= 4,
        )
        .await;
    let reported: BTreeSet<String> = nodes
        .iter()
        .flat_map(|a| a.running.iter().cloned())
        .collect();
    assert_eq!(reported, before);

    // Room for the rest: the deployment completes with exactly 6, and the agents run
    // exactly those 6.
    let _a3 = agent(&master, &dir.join("a3"), "a3", Some(&token), &opts).await;
    let tasks = master
        .wait_tasks("6 running", Duration::from_secs(30), |t| {
            running(t).len() == 6
        })
        .await;
    let live: BTreeSet<String> = tasks
        .iter()
        .filter(|t| !t.state.is_terminal())
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(live.len(), 6, "{tasks:#?}");
    assert!(before.is_subset(&live));
}

/// The example: `unique_node`, `max_surge: 1`, `max_unavailable: 0` and as many
/// agents as replicas. `apply` of the new version stops waiting at once and says why and
/// what to change, instead of waiting out its timeout at "0/2 running, 2 of older versions".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_a_rolling_update_that_cannot_finish_says_so_and_how_to_fix_it() {
    let dir = temp_dir("dep-stalled");
    let master = Master::start(&dir.join("master"), free_udp(), free_udp(), free_tcp(), &[]).await;
    let token = master.token(3600);
    let opts = ["--demo-actors", "--resources", "cpus:4"];
    let _a1 = agent(&master, &dir.join("a1"), "a1", Some(&token), &opts).await;
    let _a2 = agent(&master, &dir.join("a2"), "a2", Some(&token), &opts).await;
    let manifest = |version: &str| {
        format!(
            "kind: Deployment\nname: echo\nspec:\n  actor: echo\n  version: {version}\n  replicas: 2\n  resources: {{ need: \"cpus:1\" }}\n  constraints: {{ unique_node: true }}\n  rolling_update: {{ max_surge: 1, max_unavailable: 0 }}\n"
        )
    };
    let f = dir.join("echo.yaml");
    std::fs::write(&f, manifest("v1")).unwrap();
    let out = master.cli(&["apply", "-f", f.to_str().unwrap(), "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");
    std::fs::write(&f, manifest("v2")).unwrap();
    // A timeout far beyond the test: only the stall ends the wait.
    let out = master.cli(&["apply", "-f", f.to_str().unwrap(), "--timeout", "10m"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        said.contains("the rolling update to v2 cannot finish on these agents")
            && said.contains("Set rolling_update.max_unavailable to 1 or more"),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
