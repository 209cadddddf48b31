//! A framework keeps its tasks across a master restart: the master runs as a process
//! (killed with -9 and started again on the same addresses), an agent process runs the
//! task, and the framework actor lives in this test on a node joined to the cluster.

mod common;
mod fwevents;

use std::time::{Duration, Instant};

use actormesh::agent::{self, AgentConfig};
use actormesh::framework::{FrameworkEvent, Scheduler, TaskLaunch};
use actormesh_master::frameworks::TaskState;
use actormesh_master::scheduler::FrameworkSummary;
use common::*;
use fwevents::{next, Events};
use tokio::sync::mpsc;

fn frameworks(master: &Master) -> Vec<FrameworkSummary> {
    serde_json::from_value(master.client().call("GET", "/v1/frameworks", None).unwrap()).unwrap()
}

#[actix::test]
async fn a_framework_keeps_its_tasks_across_a_master_restart() {
    let dir = temp_dir("fw-restart");
    let (mesh, boot, api) = (free_udp(), free_udp(), free_tcp());
    // The framework registers from an agent's node: granted, as an operator would.
    let flags = [
        "--heartbeat",
        "100ms",
        "--unreachable-after",
        "1s",
        "--framework-role",
        "spiffe://cluster.local/node/fwhost=*",
    ];
    let mut master = Master::start(&dir.join("master"), mesh, boot, api, &flags).await;
    let token = master.token(3600);
    let _w1 = agent(
        &master,
        &dir.join("w1"),
        "w1",
        Some(&token),
        &["--demo-actors", "--resources", "cpus:2"],
    )
    .await;
    // The framework's own node: an agent in this process that offers next to nothing.
    let host = agent::start(AgentConfig {
        join: boot,
        also_join: Vec::new(),
        token: Some(token.clone()),
        data_dir: dir.join("fwhost"),
        listen: "127.0.0.1:0".parse().unwrap(),
        name: "fwhost".into(),
        resources: Some("mem:1MiB".parse().unwrap()),
        attrs: Default::default(),
        actor_types: Vec::new(),
        reserved: Default::default(),
        metrics_listen: None,
        access_log: None,
        tracing: None,
        host: Default::default(),
    })
    .await
    .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let me = host.node.spawn("svc-framework", Events(tx)).unwrap();
    let (s, _) = Scheduler::register(
        &host.node,
        mesh,
        &me,
        "svc",
        "svc",
        Duration::from_secs(120),
        None,
    )
    .await
    .unwrap();
    let offer = loop {
        let got = next(&mut rx, "an offer on w1", |e| match e {
            FrameworkEvent::ResourceOffers(o) => Some(o.clone()),
            _ => None,
        })
        .await;
        if let Some(o) = got.into_iter().find(|o| o.agent_id == "w1") {
            break o;
        }
    };
    // An actor task, and a command task that ends when the test says so (a file in its
    // sandbox).
    s.accept(
        &offer.offer_id,
        vec![
            TaskLaunch::actor("e1", "echo", "cpus:1".parse().unwrap()),
            TaskLaunch::command(
                "c1",
                "/bin/sh",
                &["-c", "while [ ! -f go ]; do sleep 0.05; done; exit 3"],
                "cpus:0.5".parse().unwrap(),
            ),
            TaskLaunch::command(
                "c2",
                "/bin/sh",
                &["-c", "while [ ! -f go ]; do sleep 0.05; done; exit 4"],
                "cpus:0.5".parse().unwrap(),
            ),
        ],
    )
    .await
    .unwrap();
    for task in ["e1", "c1", "c2"] {
        next(&mut rx, "Running", |e| {
            matches!(e, FrameworkEvent::StatusUpdate(st) if st.task_id == task && st.state == TaskState::Running).then_some(())
        })
        .await;
    }

    // c2 ends and the framework hears of it, but the master dies before the framework
    // acknowledges: the agent keeps the report and gives it to the next master.
    let sandbox_of = |task: &str| {
        dir.join("w1")
            .join("sandboxes")
            .join(actormesh::framework::instance_name(s.id(), task))
    };
    std::fs::write(sandbox_of("c2").join("go"), b"").unwrap();
    let first = next(&mut rx, "c2 Failed", |e| match e {
        FrameworkEvent::StatusUpdate(st) if st.task_id == "c2" && st.state == TaskState::Failed => {
            Some(st.uuid)
        }
        _ => None,
    })
    .await;

    // The master dies and comes back on the same addresses; c1 ends while it is down.
    master.proc.kill().await;
    let sandbox = sandbox_of("c1");
    std::fs::write(sandbox.join("go"), b"").unwrap();
    let started = Instant::now();
    while !sandbox.join("exit_status").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "c1 did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let master = Master::start(&dir.join("master"), mesh, boot, api, &flags).await;
    // The framework fails over to the new master with its id.
    let started = Instant::now();
    let s2 = loop {
        match Scheduler::register(
            &host.node,
            mesh,
            &me,
            "svc",
            "svc",
            Duration::from_secs(120),
            Some(s.id().to_string()),
        )
        .await
        {
            Ok((s2, reg)) => {
                assert!(reg.reregistered);
                break s2;
            }
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "could not re-register: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // c1's end reaches the framework through the new master.
    let ended = next(&mut rx, "c1 Failed after the restart", |e| match e {
        FrameworkEvent::StatusUpdate(st) if st.task_id == "c1" && st.state == TaskState::Failed => {
            Some(st.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(ended.message, "exited with code 3");
    s2.acknowledge(&ended).await.unwrap();
    let again = next(
        &mut rx,
        "c2 Failed again, from the new master",
        |e| match e {
            // The old master may have sent its copy again before it died; that one
            // is not the new master's to acknowledge.
            FrameworkEvent::StatusUpdate(st)
                if st.task_id == "c2" && st.state == TaskState::Failed && st.uuid != first =>
            {
                Some(st.clone())
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(again.message, "exited with code 4");
    s2.acknowledge(&again).await.unwrap();
    // Acknowledged: the master releases the agent's copy, which marks it delivered.
    let started = Instant::now();
    while !sandbox_of("c2").join("end_reported").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the agent never released c2's report"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once w1 has registered again, the master knows the task again.
    let started = Instant::now();
    loop {
        let list = frameworks(&master);
        if list.iter().any(|f| f.id == s2.id() && f.tasks == 1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the task was not taken up again: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Operators see it under its framework, and its agent describes it.
    let id = actormesh::framework::instance_name(s2.id(), "e1");
    let tasks: Vec<actormesh_master::deployments::TaskEntry> =
        serde_json::from_value(master.client().call("GET", "/v1/tasks", None).unwrap()).unwrap();
    let t = tasks.iter().find(|t| t.id == id).expect("listed");
    assert_eq!(
        (t.deployment.as_str(), t.state),
        (
            format!("framework/{}", s2.id()).as_str(),
            TaskState::Running
        )
    );
    let d = master
        .client()
        .call("GET", &format!("/v1/tasks/{id}"), None)
        .unwrap();
    assert_eq!(d["on_agent"]["what"], "actor echo", "{d}");
    s2.reconcile(vec!["e1".into()]).await.unwrap();
    next(&mut rx, "e1 Running after the restart", |e| {
        matches!(e, FrameworkEvent::StatusUpdate(st) if st.task_id == "e1" && st.state == TaskState::Running && st.uuid == 0).then_some(())
    })
    .await;
    // And it can still kill it.
    s2.kill("e1").await.unwrap();
    next(&mut rx, "e1 Killed", |e| {
        matches!(e, FrameworkEvent::StatusUpdate(st) if st.task_id == "e1" && st.state == TaskState::Killed).then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
