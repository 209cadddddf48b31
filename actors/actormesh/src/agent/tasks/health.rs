//! Health checks of the tasks on an agent: actor instances are asked
//! [`crate::health::HealthCheck`], command tasks run a command in their sandbox. After
//! `failures` in a row past the grace the task is killed and reported Failed with why.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use actix::prelude::*;
use tracing::warn;

use super::AgentGate;
use crate::protocol::HealthSpec;
use crate::task::TaskState;

/// A task's health check as its agent runs it.
pub(super) struct Health {
    spec: HealthSpec,
    started: std::time::Instant,
    last: Option<std::time::Instant>,
    in_flight: bool,
    failures: u32,
    /// The health last reported to the master.
    reported: Option<bool>,
}

impl Health {
    pub(super) fn new(spec: HealthSpec) -> Self {
        Self {
            spec,
            started: std::time::Instant::now(),
            last: None,
            in_flight: false,
            failures: 0,
            reported: None,
        }
    }
}

/// Where a command task's health check is kept, so a restarted agent runs it again.
pub(super) const HEALTH_FILE: &str = "health.json";

/// The outcome of one health check.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct HealthResult {
    task_id: String,
    outcome: Result<(), CheckFailure>,
}

/// Why a health check failed; its text goes into the task's status message.
#[derive(Debug, thiserror::Error)]
enum CheckFailure {
    /// The check of a command task names no program.
    #[error("the health check has no command")]
    NoCommand,
    /// The check's program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The check's program exited unsuccessfully.
    #[error("{program} exited with {status}")]
    Exited {
        /// The program.
        program: String,
        /// How it exited.
        status: std::process::ExitStatus,
    },
    /// The check's program ran past the check's timeout (it was killed).
    #[error("{program} did not finish within {timeout:?}")]
    TimedOut {
        /// The program.
        program: String,
        /// The check's timeout.
        timeout: Duration,
    },
    /// Waiting for the check's program failed.
    #[error("cannot wait for {program}: {source}")]
    Wait {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The blocking task that runs the check did not finish.
    #[error("the check did not run: {0}")]
    NotRun(tokio::task::JoinError),
    /// The actor instance answered that it is not healthy, with its reason.
    #[error("{0}")]
    Unhealthy(String),
    /// The actor instance did not answer (no handler, timeout, gone).
    #[error(transparent)]
    NoAnswer(crate::AskError),
}

/// Runs a health check command in `dir` with `env`, at most `timeout`.
fn run_check(
    command: &[String],
    dir: &Path,
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(), CheckFailure> {
    let (program, args) = command.split_first().ok_or(CheckFailure::NoCommand)?;
    let program = program.clone();
    let mut child = std::process::Command::new(&program)
        .args(args)
        .envs(env)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|source| CheckFailure::Spawn {
            program: program.clone(),
            source,
        })?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(CheckFailure::Exited { program, status }),
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CheckFailure::TimedOut { program, timeout });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(source) => return Err(CheckFailure::Wait { program, source }),
        }
    }
}

impl AgentGate {
    /// Starts the health checks that are due.
    pub(super) fn poll_health(&mut self, ctx: &mut Context<Self>) {
        let now = std::time::Instant::now();
        let due: Vec<String> = self
            .health
            .iter()
            .filter(|(_, h)| {
                !h.in_flight
                    && h.last.is_none_or(|at| {
                        now.duration_since(at) >= Duration::from_millis(h.spec.interval_ms)
                    })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(h) = self.health.get_mut(&id) else {
                continue;
            };
            h.in_flight = true;
            h.last = Some(now);
            let timeout = Duration::from_millis(h.spec.timeout_ms.max(1));
            let me = ctx.address();
            if let Some(c) = self.commands.get(&id) {
                let command = h.spec.command.clone().unwrap_or_default();
                let dir = c.running.dir().to_path_buf();
                let env = c.running.task().env.clone();
                actix::spawn(async move {
                    let outcome = tokio::task::spawn_blocking(move || {
                        run_check(&command, &dir, &env, timeout)
                    })
                    .await
                    .unwrap_or_else(|e| Err(CheckFailure::NotRun(e)));
                    me.do_send(HealthResult {
                        task_id: id,
                        outcome,
                    });
                });
            } else if let Some(t) = self.tasks.values().find(|t| t.id == id) {
                let instance = self.node.local_ref(&t.name);
                actix::spawn(async move {
                    let outcome = match instance
                        .ask_timeout(crate::health::HealthCheck, timeout)
                        .await
                    {
                        Ok(answer) => answer.map_err(CheckFailure::Unhealthy),
                        Err(e) => Err(CheckFailure::NoAnswer(e)),
                    };
                    me.do_send(HealthResult {
                        task_id: id,
                        outcome,
                    });
                });
            }
        }
    }
}

impl Handler<HealthResult> for AgentGate {
    type Result = ();
    fn handle(&mut self, r: HealthResult, ctx: &mut Context<Self>) {
        let Some(h) = self.health.get_mut(&r.task_id) else {
            return; // The task ended meanwhile.
        };
        h.in_flight = false;
        match r.outcome {
            Ok(()) => {
                h.failures = 0;
                self.task_ids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .healthy
                    .insert(r.task_id.clone());
                if h.reported != Some(true) {
                    h.reported = Some(true);
                    self.report_then(
                        &r.task_id,
                        TaskState::Running,
                        "healthy".into(),
                        None,
                        Some(true),
                    );
                }
            }
            Err(why) => {
                if h.started.elapsed() < Duration::from_millis(h.spec.grace_ms) {
                    return;
                }
                h.failures += 1;
                let (failures, limit) = (h.failures, h.spec.failures);
                self.task_ids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .healthy
                    .remove(&r.task_id);
                if h.reported != Some(false) {
                    h.reported = Some(false);
                    self.report_then(
                        &r.task_id,
                        TaskState::Running,
                        format!("health check failed: {why}"),
                        None,
                        Some(false),
                    );
                }
                if failures < limit {
                    return;
                }
                warn!(task = %r.task_id, failures, %why, "health check failed too often; killing the task");
                self.health.remove(&r.task_id);
                self.unhealthy.insert(
                    r.task_id.clone(),
                    format!("health check failed {failures} times in a row: {why}"),
                );
                if !self.stop_command(&r.task_id, ctx) {
                    // An actor task.
                    if let Some(name) = self
                        .tasks
                        .values()
                        .find(|t| t.id == r.task_id)
                        .map(|t| t.name.clone())
                    {
                        self.node.stop(&name);
                    }
                }
            }
        }
    }
}
