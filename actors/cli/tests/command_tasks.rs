//! Command tasks with real processes: a master and agents as `actormesh` processes on
//! loopback running command deployments — exit codes, captured logs, kill with a grace
//! period, and an agent restarted (kill -9) re-attaching to the processes it left.

mod common;

use std::time::Duration;

use actormesh_master::deployments::TaskEntry;
use actormesh_master::frameworks::TaskState;
use actormesh_master::membership::AgentState;
use common::*;

fn write(dir: &std::path::Path, file: &str, text: &str) -> String {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn of<'a>(tasks: &'a [TaskEntry], deployment: &str) -> Vec<&'a TaskEntry> {
    tasks
        .iter()
        .filter(|t| t.deployment == deployment)
        .collect()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The command the wrapper `pid` started (it forks it after setting up), waiting for it.
async fn child_of(pid: u32) -> String {
    let start = std::time::Instant::now();
    loop {
        let out = std::process::Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .output()
            .unwrap();
        let child = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !child.is_empty() {
            return child;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the wrapper {pid} started no command"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A master process (heartbeat 100 ms, then `master_flags`) and agent process `a1` with
/// `resources`, under `dir`.
async fn one_agent_cluster(
    dir: &std::path::Path,
    master_flags: &[&str],
    resources: &str,
) -> (Master, Proc) {
    let mut flags = vec!["--heartbeat", "100ms"];
    flags.extend_from_slice(master_flags);
    let master = Master::start(
        &dir.join("master"),
        free_udp(),
        free_udp(),
        free_tcp(),
        &flags,
    )
    .await;
    let token = master.token(3600);
    let a = agent(
        &master,
        &dir.join("a1"),
        "a1",
        Some(&token),
        &["--resources", resources],
    )
    .await;
    (master, a)
}

/// The pid an agent reports for a command task (`describe task`).
fn pid_of(master: &Master, task: &str) -> u32 {
    let out = ok(&master.cli(&["describe", "task", task, "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["on_agent"]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid for {task}: {v}")) as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_tasks_report_exit_codes_show_logs_and_are_killed() {
    let dir = temp_dir("cmd");
    let (master, _a) = one_agent_cluster(&dir, &[], "cpus:4;mem:1GiB").await;
    let deploy = |name: &str, script: &str, extra: &str| {
        format!(
            "kind: Deployment\nname: {name}\nspec:\n  command: {{ path: /bin/sh, args: [\"-c\", {script:?}], env: {{ GREETING: hi }}, kill_grace: 500ms }}\n  version: v1\n  replicas: 1\n  resources: {{ need: \"cpus:0.1;mem:64MiB\" }}\n{extra}"
        )
    };
    let never = "  restart: { policy: never }\n";
    for (name, script, extra) in [
        ("ok", "echo out-$GREETING; echo err-line >&2", never),
        ("bad", "echo failing; exit 3", never),
        // Ignores SIGTERM: only the SIGKILL after the grace period ends it.
        ("stubborn", "trap '' TERM; echo started; sleep 60", ""),
    ] {
        let f = write(&dir, &format!("{name}.yaml"), &deploy(name, script, extra));
        ok(&master.cli(&["apply", "-f", &f, "--no-wait"]));
    }
    let tasks = master
        .wait_tasks(
            "ok Finished, bad Failed, stubborn Running",
            Duration::from_secs(30),
            |t| {
                let state = |d: &str| of(t, d).first().map(|t| t.state);
                state("default/ok") == Some(TaskState::Finished)
                    && state("default/bad") == Some(TaskState::Failed)
                    && state("default/stubborn") == Some(TaskState::Running)
            },
        )
        .await;
    let id = |d: &str| of(&tasks, d)[0].id.clone();
    assert_eq!(of(&tasks, "default/bad")[0].message, "exited with code 3");
    assert_eq!(of(&tasks, "default/ok")[0].message, "exited with code 0");
    // Ended for good under `never`: not started again.
    assert_eq!(of(&tasks, "default/bad").len(), 1);

    // Logs, both streams, through the CLI.
    assert_eq!(ok(&master.cli(&["logs", &id("default/ok")])), "out-hi\n");
    assert_eq!(
        ok(&master.cli(&["logs", &id("default/ok"), "--stderr"])),
        "err-line\n"
    );
    assert_eq!(ok(&master.cli(&["logs", &id("default/bad")])), "failing\n");
    let out = master.cli(&["logs", "default.nope-1"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no task"),
        "{out:?}"
    );
    // The description shows the limits in effect.
    let described = ok(&master.cli(&["describe", "task", &id("default/stubborn")]));
    assert!(
        described.contains("Limits:") && described.contains("67108864"),
        "{described}"
    );

    // Deleting the deployment kills the task: SIGTERM is ignored, SIGKILL follows.
    let pid = pid_of(&master, &id("default/stubborn"));
    assert!(alive(pid));
    // The command itself (the wrapper's child), which ignores SIGTERM.
    let child: u32 = child_of(pid).await.parse().expect("a pid");
    ok(&master.cli(&["delete", "deployment", "stubborn"]));
    let tasks = master
        .wait_tasks("stubborn Killed", Duration::from_secs(30), |t| {
            of(t, "default/stubborn")
                .first()
                .is_some_and(|t| t.state == TaskState::Killed)
        })
        .await;
    assert_eq!(of(&tasks, "default/stubborn").len(), 1);
    let start = std::time::Instant::now();
    while alive(pid) || alive(child) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the wrapper {pid} or the command {child} survived the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_reattaches_to_its_command_tasks() {
    let dir = temp_dir("reattach");
    // The agent's restart stays within the Unreachable limit.
    let (master, mut a) =
        one_agent_cluster(&dir, &["--unreachable-after", "30s"], "cpus:4;mem:1GiB").await;
    let agent_dir = dir.join("a1");
    let f = write(
        &dir,
        "svc.yaml",
        "kind: Deployment\nname: svc\nspec:\n  command: { path: /bin/sh, args: [\"-c\", \"echo up; sleep 60\"], kill_grace: 1s }\n  version: v1\n  replicas: 1\n  resources: { need: \"cpus:0.1\" }\n  restart: { policy: on-failure, backoff_initial: 100ms, backoff_max: 1s }\n",
    );
    ok(&master.cli(&["apply", "-f", &f]));
    let tasks = master.tasks();
    let first = of(&tasks, "default/svc")[0].id.clone();
    let pid = pid_of(&master, &first);

    // kill -9 the agent: its command task keeps running, and the restarted agent takes
    // it up again instead of the master starting another.
    a.kill().await;
    assert!(alive(pid), "the task died with its agent");
    let mut a = agent(&master, &agent_dir, "a1", None, &[]).await;
    master
        .wait_state("a1", AgentState::Active, Duration::from_secs(10))
        .await;
    let described = ok(&master.cli(&["describe", "task", &first]));
    assert!(
        described.contains("On the agent:    Running")
            && described.contains(&format!("Pid:             {pid}")),
        "{described}"
    );
    let tasks = master.tasks();
    assert_eq!(
        of(&tasks, "default/svc")
            .iter()
            .map(|t| (t.id.as_str(), t.state))
            .collect::<Vec<_>>(),
        vec![(first.as_str(), TaskState::Running)],
        "no duplicate, same task"
    );

    // The re-attached agent still watches it: the command is killed from outside, the end
    // is reported with its exit code, and the on-failure policy starts a new instance.
    let sleeper = child_of(pid).await;
    std::process::Command::new("kill")
        .args(["-KILL", &sleeper])
        .status()
        .unwrap();
    let tasks = master
        .wait_tasks("failed and replaced", Duration::from_secs(30), |t| {
            let svc = of(t, "default/svc");
            svc.iter()
                .any(|t| t.id == first && t.state == TaskState::Failed)
                && svc
                    .iter()
                    .any(|t| t.id != first && t.state == TaskState::Running)
        })
        .await;
    let failed = of(&tasks, "default/svc")
        .into_iter()
        .find(|t| t.id == first)
        .unwrap()
        .message
        .clone();
    assert_eq!(failed, "exited with code 137");

    // An end while the agent is down is not lost: the restarted agent finds the exit
    // status in the sandbox and reports it.
    let second = of(&tasks, "default/svc")
        .into_iter()
        .find(|t| t.id != first && t.state == TaskState::Running)
        .unwrap()
        .id
        .clone();
    let pid2 = pid_of(&master, &second);
    a.kill().await;
    let child = child_of(pid2).await;
    std::process::Command::new("kill")
        .args(["-TERM", &child])
        .status()
        .unwrap();
    let start = std::time::Instant::now();
    while alive(pid2) {
        assert!(start.elapsed() < Duration::from_secs(20), "{pid2} lives on");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _a = agent(&master, &agent_dir, "a1", None, &[]).await;
    let tasks = master
        .wait_tasks(
            "the end reported after the restart",
            Duration::from_secs(30),
            |t| {
                of(t, "default/svc")
                    .iter()
                    .any(|t| t.id == second && t.state == TaskState::Failed)
            },
        )
        .await;
    let why = &of(&tasks, "default/svc")
        .into_iter()
        .find(|t| t.id == second)
        .unwrap()
        .message;
    assert_eq!(why, "exited with code 143");
    ok(&master.cli(&["delete", "deployment", "svc"]));
    master
        .wait_tasks("all killed", Duration::from_secs(30), |t| {
            of(t, "default/svc").iter().all(|t| t.state.is_terminal())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_health_checks_run_in_the_sandbox() {
    let dir = temp_dir("cmd-health");
    let (master, _a) = one_agent_cluster(&dir, &[], "cpus:4;mem:1GiB").await;
    let deploy = |name: &str, check: &str, grace: &str| {
        format!(
            "kind: Deployment\nname: {name}\nspec:\n  command: {{ path: /bin/sleep, args: [\"60\"], kill_grace: 500ms }}\n  version: v1\n  replicas: 1\n  resources: {{ need: \"cpus:0.1\" }}\n  health_check: {{ interval: 100ms, timeout: 100ms, failures: 2, command: {check}{grace} }}\n  restart: {{ policy: never }}\n"
        )
    };
    // Healthy once a file appears in its sandbox (failures do not count for a minute);
    // never healthy.
    let f = write(
        &dir,
        "ready.yaml",
        &deploy(
            "ready",
            "[\"/bin/sh\", \"-c\", \"test -f ready\"]",
            ", grace: 60s",
        ),
    );
    let g = write(&dir, "never.yaml", &deploy("sick", "[\"/bin/false\"]", ""));
    ok(&master.cli(&["apply", "-f", &g, "--no-wait"]));
    let tasks = master
        .wait_tasks("sick Failed", Duration::from_secs(30), |t| {
            of(t, "default/sick")
                .first()
                .is_some_and(|t| t.state == TaskState::Failed)
        })
        .await;
    let why = &of(&tasks, "default/sick")[0].message;
    assert!(
        why.starts_with("health check failed 2 times in a row: /bin/false exited"),
        "{why}"
    );
    ok(&master.cli(&["apply", "-f", &f, "--no-wait"]));
    let tasks = master
        .wait_tasks("ready Running", Duration::from_secs(30), |t| {
            of(t, "default/ready")
                .first()
                .is_some_and(|t| t.state == TaskState::Running)
        })
        .await;
    let id = of(&tasks, "default/ready")[0].id.clone();
    let out = ok(&master.cli(&["describe", "task", &id, "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sandbox = v["on_agent"]["sandbox"].as_str().unwrap().to_string();
    std::fs::write(std::path::Path::new(&sandbox).join("ready"), b"").unwrap();
    master
        .wait_tasks("ready healthy", Duration::from_secs(30), |t| {
            of(t, "default/ready")
                .first()
                .is_some_and(|t| t.healthy == Some(true))
        })
        .await;
    ok(&master.cli(&["delete", "deployment", "ready"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_task_holds_its_resources_through_its_kill_grace() {
    let dir = temp_dir("grace-held");
    let (master, _a) = one_agent_cluster(&dir, &[], "cpus:1;mem:1GiB").await;
    let deploy = |name: &str, script: &str| {
        format!(
            "kind: Deployment\nname: {name}\nspec:\n  command: {{ path: /bin/sh, args: [\"-c\", {script:?}], kill_grace: 2s }}\n  version: v1\n  replicas: 1\n  resources: {{ need: \"cpus:1\" }}\n"
        )
    };
    // `old` takes the agent's only cpu and ignores SIGTERM: a kill ends it only after
    // its 2 s grace.
    let f = write(&dir, "old.yaml", &deploy("old", "trap '' TERM; sleep 60"));
    ok(&master.cli(&["apply", "-f", &f]));
    let old = of(&master.tasks(), "default/old")[0].id.clone();
    let pid = pid_of(&master, &old);
    let f = write(&dir, "new.yaml", &deploy("new", "sleep 60"));
    ok(&master.cli(&["apply", "-f", &f, "--no-wait"]));
    ok(&master.cli(&["delete", "deployment", "old"]));
    // While `old` runs out its grace it still holds the cpu, so `new` starts only after
    // `old` has ended.
    master
        .wait_tasks("new Running", Duration::from_secs(30), |t| {
            of(t, "default/new")
                .first()
                .is_some_and(|t| t.state == TaskState::Running)
        })
        .await;
    assert!(
        !alive(pid),
        "new was placed while old ({pid}) still ran in its kill grace"
    );
    let tasks = master.tasks();
    let old = tasks.iter().find(|t| t.id == old).expect("old is listed");
    assert_eq!((old.state, old.stopping), (TaskState::Killed, false));
}
