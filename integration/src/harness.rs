//! Child processes for multi-process tests: start, wait for a line, kill.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// A child process whose stdout is read line by line.
#[derive(Debug)]
pub struct ChildProc {
    pub child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl ChildProc {
    /// Starts `program` with `args`; stderr goes to the test's stderr.
    pub fn spawn(program: &Path, args: &[&str]) -> std::io::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            // Children log errors only, unless the test run asks for more.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Waits (at most `limit`) for a stdout line starting with `prefix`; returns the rest.
    pub async fn wait_line(&mut self, prefix: &str, limit: Duration) -> Result<String, String> {
        let work = async {
            loop {
                match self.lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(rest) = line.strip_prefix(prefix) {
                            return Ok(rest.trim().to_string());
                        }
                    }
                    Ok(None) => return Err(format!("child exited before printing {prefix:?}")),
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| format!("no {prefix:?} line within {limit:?}"))?
    }

    /// Kills the process with SIGKILL and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Checks `cond` every millisecond until it holds or `limit` passes; returns whether it
/// held. For states that have no event to wait on (a counter reaching a value).
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
