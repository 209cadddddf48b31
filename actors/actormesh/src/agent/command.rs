//! Command tasks (the Mesos command executor): an OS process with its arguments and
//! environment, stdout and stderr captured to files in a sandbox directory, resource
//! limits (cgroups v2 where the agent may write them, otherwise rlimits), killed with a
//! grace period, and checkpointed so that a restarted agent re-attaches to it.
//!
//! The process runs under a small `sh` wrapper in its own process group. The wrapper
//! joins the cgroup, applies rlimits, runs the command and writes its exit status to the
//! sandbox, so the status survives an agent restart even though the restarted agent is not
//! the process's parent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use crate::task::CommandTask;

/// How a command task ended (or that it still runs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandStatus {
    /// Still running.
    Running,
    /// Exited with status 0.
    Finished,
    /// Exited with a non-zero status.
    Failed {
        /// The exit status.
        code: i32,
    },
    /// Ended by [`Running::kill`].
    Killed,
    /// Gone without leaving a status (killed from outside, or the machine restarted).
    Lost,
}

/// Launching failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The sandbox could not be prepared.
    #[error("cannot prepare the sandbox {dir}: {source}")]
    Sandbox {
        /// The sandbox.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The program.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The checkpoint kept in the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    task: CommandTask,
    pid: u32,
    /// Process start time (clock ticks after boot), to tell a reused pid apart.
    started: u64,
    limits: Vec<String>,
    /// The task's cgroup, if its limits are applied through one.
    #[serde(default)]
    cgroup: Option<PathBuf>,
}

/// A launched command task.
#[derive(Debug)]
pub struct Running {
    task: CommandTask,
    cgroup: Option<PathBuf>,
    dir: PathBuf,
    pid: u32,
    started: u64,
    /// The limits in effect, in words (shown in the task's description).
    pub limits: Vec<String>,
    killed: bool,
    /// The wrapper process, when this agent process started it (not after a re-attach):
    /// reaped by the status checks, so no zombie stays and no thread waits on it.
    child: Option<std::sync::Mutex<std::process::Child>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropped before its end was seen (the wrapper writes the status, then exits): the
        // last wait goes to a thread, so the agent never blocks on it.
        if let Some(child) = self.child.take() {
            let mut child = child.into_inner().unwrap_or_else(|e| e.into_inner());
            if !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
            }
        }
    }
}

const STATUS_FILE: &str = "exit_status";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CHECKPOINT: &str = "task.json";
const KILL_MARK: &str = "kill_requested";

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // Field 22 of stat; the 20th after the command name.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Where cgroup v2 is mounted: `ACTORMESH_CGROUP_ROOT`, else `/sys/fs/cgroup`. Point it at
/// a subtree delegated to the agent (systemd `Delegate=yes`) to limit tasks without root.
pub fn cgroup_root() -> PathBuf {
    std::env::var_os("ACTORMESH_CGROUP_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CGROUP_ROOT))
}

fn controllers(file: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_to_string(file)
        .map(|t| t.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// A cgroup v2 directory for the task under `root`, with the controllers usable in it, if
/// the task has limits and the agent may create one.
fn cgroup_for(
    task: &CommandTask,
    root: &Path,
) -> Option<(PathBuf, std::collections::BTreeSet<String>)> {
    if task.mem_bytes.is_none() && task.cpus.is_none() {
        return None;
    }
    if !root.join("cgroup.controllers").exists() {
        return None;
    }
    let available = controllers(&root.join("cgroup.controllers"));
    for (c, wanted) in [
        ("memory", task.mem_bytes.is_some()),
        ("cpu", task.cpus.is_some()),
    ] {
        if wanted && available.contains(c) {
            // Lets the task's cgroup use the controller (harmless if already enabled).
            let _ = std::fs::write(root.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
    let dir = root.join(format!("actormesh-{}", task.id));
    std::fs::create_dir_all(&dir).ok()?;
    let usable = controllers(&dir.join("cgroup.controllers"));
    Some((dir, usable))
}

/// Starts `task` in the sandbox `sandbox_root/<id>`, limited through the cgroup v2 tree at
/// [`cgroup_root`] where it can be written, else through rlimits.
pub fn launch(task: &CommandTask, sandbox_root: &Path) -> Result<Running, CommandError> {
    launch_with(task, sandbox_root, &cgroup_root())
}

/// [`launch`] with the cgroup v2 tree at `cgroup_root`.
pub fn launch_with(
    task: &CommandTask,
    sandbox_root: &Path,
    cgroup_root: &Path,
) -> Result<Running, CommandError> {
    let dir = sandbox_root.join(&task.id);
    let sandbox = |source| CommandError::Sandbox {
        dir: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(sandbox)?;
    let _ = std::fs::remove_file(dir.join(STATUS_FILE));
    let _ = std::fs::remove_file(dir.join(KILL_MARK));
    let stdout = std::fs::File::create(dir.join("stdout")).map_err(sandbox)?;
    let stderr = std::fs::File::create(dir.join("stderr")).map_err(sandbox)?;

    let mut limits = Vec::new();
    let mut prelude = String::new();
    let cg = cgroup_for(task, cgroup_root);
    let usable = |c: &str| cg.as_ref().is_some_and(|(_, u)| u.contains(c));
    let mut in_cgroup = false;
    if let Some(m) = task.mem_bytes {
        let written = usable("memory")
            && cg.as_ref().is_some_and(|(dir, _)| {
                std::fs::write(dir.join("memory.max"), m.to_string()).is_ok()
            });
        if written {
            in_cgroup = true;
            limits.push(format!("memory {m} bytes (cgroup v2)"));
        } else {
            // rlimit fallback: address space, in KiB for ulimit.
            prelude.push_str(&format!("ulimit -v {} || exit 126; ", (m / 1024).max(1)));
            limits.push(format!(
                "address space {m} bytes (rlimit; {})",
                if cg.is_some() {
                    "the cgroup v2 memory controller is not available here"
                } else {
                    "no writable cgroup v2"
                }
            ));
        }
    }
    if let Some(c) = task.cpus {
        let quota = (c * 100_000.0).round().max(1000.0) as u64;
        let written = usable("cpu")
            && cg.as_ref().is_some_and(|(dir, _)| {
                std::fs::write(dir.join("cpu.max"), format!("{quota} 100000")).is_ok()
            });
        if written {
            in_cgroup = true;
            limits.push(format!("cpus {c} (cgroup v2)"));
        } else {
            limits.push(format!(
                "cpus not enforced ({})",
                if cg.is_some() {
                    "the cgroup v2 cpu controller is not available here"
                } else {
                    "no writable cgroup v2"
                }
            ));
        }
    }
    let cgroup = match cg {
        Some((dir, _)) if in_cgroup => {
            // The wrapper joins the cgroup before it starts the command; if it cannot, the
            // limits would be a lie, so the task fails (exit 125).
            prelude.push_str(&format!(
                "echo $$ > {} || exit 125; ",
                sh_quote(&dir.join("cgroup.procs").display().to_string())
            ));
            Some(dir)
        }
        Some((dir, _)) => {
            let _ = std::fs::remove_dir(&dir);
            None
        }
        None => None,
    };
    let status_file = sh_quote(&dir.join(STATUS_FILE).display().to_string());
    // The command runs as a child of the wrapper, which records its exit status. A kill
    // signals the whole process group: the wrapper handles SIGTERM (a handler, not an
    // ignore, so the command still gets the default) and keeps waiting, so it is alive as
    // long as the command is, and SIGKILL after the grace period still has a target.
    let script = format!(
        "{prelude}trap 'true' TERM; \"$@\" & c=$!; \
         while :; do wait $c; s=$?; kill -0 $c 2>/dev/null || break; done; \
         echo $s > {status_file}.tmp && mv {status_file}.tmp {status_file}"
    );
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .arg("actormesh-task")
        .arg(&task.path)
        .args(&task.args)
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .envs(&task.env)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // Its own process group, so a kill reaches the command and its children.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().map_err(|source| CommandError::Spawn {
        path: task.path.clone(),
        source,
    })?;
    // The status file says how it ended, for this agent process and for a restarted one
    // alike; the child handle is only for reaping.
    let pid = child.id();
    let started = start_time(pid).unwrap_or(0);
    let checkpoint = Checkpoint {
        task: task.clone(),
        pid,
        started,
        limits: limits.clone(),
        cgroup: cgroup.clone(),
    };
    if let Ok(json) = serde_json::to_string(&checkpoint) {
        let _ = std::fs::write(dir.join(CHECKPOINT), json);
    }
    Ok(Running {
        task: task.clone(),
        cgroup,
        dir,
        pid,
        started,
        limits,
        killed: false,
        child: Some(std::sync::Mutex::new(child)),
    })
}

/// Re-attaches to the task checkpointed in `dir` (after an agent restart). `None` if there
/// is no checkpoint.
pub fn reattach(dir: &Path) -> Option<Running> {
    let text = std::fs::read_to_string(dir.join(CHECKPOINT)).ok()?;
    let c: Checkpoint = serde_json::from_str(&text).ok()?;
    Some(Running {
        task: c.task,
        cgroup: c.cgroup,
        dir: dir.to_path_buf(),
        pid: c.pid,
        started: c.started,
        limits: c.limits,
        killed: dir.join(KILL_MARK).exists(),
        child: None,
    })
}

impl Running {
    /// What runs.
    pub fn task(&self) -> &CommandTask {
        &self.task
    }

    /// The wrapper's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The sandbox directory (stdout, stderr, status).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reaps the wrapper if this agent started it and it has exited; true then. (A zombie
    /// still has its /proc entry, so this comes before the liveness check.)
    fn reap(&self) -> bool {
        self.child.as_ref().is_some_and(|c| {
            matches!(
                c.lock().unwrap_or_else(|e| e.into_inner()).try_wait(),
                Ok(Some(_))
            )
        })
    }

    /// The status the wrapper wrote, if it did.
    fn written_status(&self) -> Option<CommandStatus> {
        let text = std::fs::read_to_string(self.dir.join(STATUS_FILE)).ok()?;
        Some(match text.trim().parse::<i32>() {
            Ok(0) => CommandStatus::Finished,
            Ok(code) if self.killed && code >= 128 => CommandStatus::Killed,
            Ok(code) => CommandStatus::Failed { code },
            Err(_) => CommandStatus::Lost,
        })
    }

    /// The status now.
    pub fn status(&self) -> CommandStatus {
        let reaped = self.reap();
        if let Some(s) = self.written_status() {
            return s;
        }
        if !reaped && start_time(self.pid).is_some_and(|s| s == self.started) {
            return CommandStatus::Running;
        }
        // Gone: it may have written its status between the first look and its exit.
        if let Some(s) = self.written_status() {
            s
        } else if self.killed {
            CommandStatus::Killed
        } else {
            CommandStatus::Lost
        }
    }

    /// Waits until the task ends (checking every 20 ms), at most `limit`.
    pub async fn wait(&self, limit: Duration) -> CommandStatus {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status();
            if s != CommandStatus::Running || Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, sig: &str) {
        // The whole process group: the command and anything it started.
        let _ = std::process::Command::new("kill")
            .args([sig, "--", &format!("-{}", self.pid)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Removes the task's cgroup, once it has ended (an empty cgroup is all that is left).
    pub fn release(&self) {
        if let Some(dir) = &self.cgroup {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// The task's cgroup, if its limits are applied through one.
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }

    /// Asks the task to stop (SIGTERM to its process group); from now on its end counts
    /// as Killed. Follow with [`Running::force`] after a grace period if it still runs.
    pub fn terminate(&mut self) {
        self.killed = true;
        // Kept on disk, so that an agent restarted mid-kill still calls the end Killed.
        let _ = std::fs::write(self.dir.join(KILL_MARK), b"");
        if self.status() == CommandStatus::Running {
            self.signal("-TERM");
        }
    }

    /// Kills the task's process group (SIGKILL) if it still runs.
    pub fn force(&self) {
        if self.status() == CommandStatus::Running {
            self.signal("-KILL");
        }
    }

    /// Whether [`Running::terminate`] was called.
    pub fn kill_requested(&self) -> bool {
        self.killed
    }

    /// Asks the task to stop (SIGTERM), and kills it (SIGKILL) after `grace`.
    pub async fn kill(&mut self, grace: Duration) -> CommandStatus {
        self.terminate();
        let s = self.wait(grace).await;
        if s != CommandStatus::Running {
            return s;
        }
        self.force();
        self.wait(Duration::from_secs(5)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn task(id: &str, path: &str, args: &[&str]) -> CommandTask {
        CommandTask {
            id: id.into(),
            path: path.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
            mem_bytes: None,
            cpus: None,
            kill_grace_ms: 1000,
            resources: Default::default(),
            version: String::new(),
        }
    }

    fn sandbox(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("am-cmd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn exit_codes_and_captured_output() {
        let root = sandbox("exit");
        let ok = launch(
            &task("ok", "/bin/sh", &["-c", "echo $GREETING; echo oops >&2"]),
            &root,
        )
        .unwrap();
        assert_eq!(
            ok.wait(Duration::from_secs(10)).await,
            CommandStatus::Finished
        );
        assert_eq!(
            std::fs::read_to_string(ok.dir().join("stdout")).unwrap(),
            "hi\n"
        );
        assert_eq!(
            std::fs::read_to_string(ok.dir().join("stderr")).unwrap(),
            "oops\n"
        );
        let bad = launch(&task("bad", "/bin/sh", &["-c", "exit 3"]), &root).unwrap();
        assert_eq!(
            bad.wait(Duration::from_secs(10)).await,
            CommandStatus::Failed { code: 3 }
        );
        let missing = launch(&task("missing", "/no/such/program", &[]), &root).unwrap();
        assert_eq!(
            missing.wait(Duration::from_secs(10)).await,
            CommandStatus::Failed { code: 127 }
        );
        // The status checks reap the wrapper: no zombie is left, and no thread waited.
        let proc_entry = std::path::PathBuf::from(format!("/proc/{}", bad.pid()));
        let t = Instant::now();
        while proc_entry.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the wrapper of an ended task was not reaped"
            );
            bad.status();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn kill_with_grace_then_force() {
        let root = sandbox("kill");
        // Ignores SIGTERM: only SIGKILL after the grace period ends it.
        let mut stubborn = launch(
            &task(
                "stubborn",
                "/bin/sh",
                &["-c", "trap '' TERM; echo started; sleep 30"],
            ),
            &root,
        )
        .unwrap();
        // Killed once it runs (a kill before the command started ends it at once, which
        // is right but not what this test is about).
        let t = Instant::now();
        while std::fs::read_to_string(stubborn.dir().join("stdout")).unwrap_or_default()
            != "started\n"
        {
            assert!(t.elapsed() < Duration::from_secs(10), "it never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(stubborn.status(), CommandStatus::Running);
        let t = Instant::now();
        assert_eq!(
            stubborn.kill(Duration::from_millis(300)).await,
            CommandStatus::Killed
        );
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(10),
            "SIGKILL came after {took:?}, not after the 300 ms grace"
        );
        // Nothing of its process group is left (once the dead are reaped).
        let group_alive = || {
            std::process::Command::new("kill")
                .args(["-0", "--", &format!("-{}", stubborn.pid())])
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        };
        let t = Instant::now();
        while group_alive() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "a process of the task survived the kill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut polite = launch(&task("polite", "/bin/sleep", &["30"]), &root).unwrap();
        assert_eq!(
            polite.kill(Duration::from_secs(10)).await,
            CommandStatus::Killed
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_restarted_agent_reattaches_and_sees_the_end() {
        let root = sandbox("reattach");
        let first = launch(
            &task("long", "/bin/sh", &["-c", "sleep 0.5; exit 4"]),
            &root,
        )
        .unwrap();
        let dir = first.dir().to_path_buf();
        drop(first);
        // A new agent process would do exactly this with the sandbox it finds on disk.
        let again = reattach(&dir).expect("checkpoint");
        assert_eq!(again.status(), CommandStatus::Running);
        assert_eq!(
            again.wait(Duration::from_secs(10)).await,
            CommandStatus::Failed { code: 4 }
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn limits_in_effect_are_reported() {
        let root = sandbox("limits");
        let mut t = task("limited", "/bin/sh", &["-c", "exit 0"]);
        t.mem_bytes = Some(512 * 1024 * 1024);
        let r = launch(&t, &root).unwrap();
        assert!(
            r.limits.iter().any(|l| l.contains("536870912")),
            "{:?}",
            r.limits
        );
        assert_eq!(
            r.wait(Duration::from_secs(10)).await,
            CommandStatus::Finished
        );
        r.release();
        assert!(!Path::new(CGROUP_ROOT).join("actormesh-limited").exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn limits_go_through_a_cgroup_v2_tree_where_its_controllers_are_available() {
        // A cgroup v2 tree of our own (mounting needs root, as CI runs the tests).
        let mnt = sandbox("cg2-mount");
        std::fs::create_dir_all(&mnt).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            mounted,
            "cannot mount cgroup2 at {}: run the tests as root (CI does)",
            mnt.display()
        );
        let root = sandbox("cg2");
        let mut t = task("cg", "/bin/sh", &["-c", "cat /proc/self/cgroup"]);
        t.mem_bytes = Some(256 * 1024 * 1024);
        t.cpus = Some(0.5);
        let r = launch_with(&t, &root, &mnt).unwrap();
        let status = r.wait(Duration::from_secs(10)).await;
        let available = controllers(&mnt.join("cgroup.controllers"));
        let out = std::fs::read_to_string(r.dir().join("stdout")).unwrap();
        if available.contains("memory") {
            // A cgroup v2 host: the limit is in the cgroup and the command ran inside it.
            assert!(
                r.limits
                    .contains(&"memory 268435456 bytes (cgroup v2)".to_string()),
                "{:?}",
                r.limits
            );
            assert!(out.contains("actormesh-cg"), "{out}");
        } else {
            // Controllers bound to cgroup v1 (as on this CI machine): rlimits instead,
            // said so, and no empty cgroup left behind.
            assert!(
                r.limits.contains(
                    &"address space 268435456 bytes (rlimit; the cgroup v2 memory controller is not available here)"
                        .to_string()
                ),
                "{:?}",
                r.limits
            );
            assert!(r.cgroup().is_none());
            assert!(!mnt.join("actormesh-cg").exists());
        }
        if !available.contains("cpu") {
            assert!(
                r.limits.iter().any(|l| l.starts_with("cpus not enforced")),
                "{:?}",
                r.limits
            );
        }
        assert_eq!(status, CommandStatus::Finished);
        r.release();
        let _ = std::process::Command::new("umount").arg(&mnt).status();
        let _ = std::fs::remove_dir_all(&root);
    }
}
