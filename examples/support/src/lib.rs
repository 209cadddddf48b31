//! What the examples' one-command runs (`bookinfo up`, `pi run`) share: child processes
//! whose output is echoed and read line by line, `actormesh dev` started through the
//! `actormesh` binary (its addresses and join token read from what it prints), and
//! stopping it all on Ctrl-C or SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::signal::unix::SignalKind;

/// A child process whose stdout lines come through a channel (and are echoed with its
/// name), killed when dropped.
#[derive(Debug)]
pub struct Proc {
    /// Its name in the echoed lines.
    pub name: String,
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `cmd` with stdout piped and stdin closed.
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Proc> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        let prefix = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                println!("{prefix} | {line}");
                // Once nobody reads any more, the lines are only echoed.
                let _ = tx.send(line);
            }
        });
        Ok(Proc {
            name: name.to_string(),
            child,
            lines,
        })
    }

    /// The first line `pick` takes, within `within`; an error if the process ends first.
    pub fn wait_for<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = pick(&line) {
                        return Ok(v);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("{} did not print {what} within {within:?}", self.name)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!("{} ended ({status}) before it printed {what}", self.name)
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text after `key` in `line`, up to the next space.
pub fn word_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()
}

/// The `actormesh` binary: `given`, else the one beside this binary, as `cargo build`
/// leaves it. `package` names the example's package for the hint.
pub fn actormesh_binary(given: Option<PathBuf>, package: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let me = std::env::current_exe().context("cannot find this binary's path")?;
    let beside = me.with_file_name("actormesh");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "there is no actormesh binary beside {} (build it: cargo build --release -p actormesh-cli -p {package}; or pass --actormesh PATH)",
        me.display()
    )
}

/// `actormesh dev`, started as a child, with what it printed.
#[derive(Debug)]
pub struct DevCluster {
    /// The process.
    pub proc: Proc,
    /// The operator API.
    pub api: SocketAddr,
    /// Where the gateway serves HTTP.
    pub gateway: SocketAddr,
    /// The bootstrap address agents join.
    pub bootstrap: SocketAddr,
    /// A join token for agents (an hour).
    pub join_token: String,
    /// The operator API token's file.
    pub api_token_file: PathBuf,
    actormesh: PathBuf,
}

impl DevCluster {
    /// Starts `actormesh dev` with its data in `dir`, its API on `api` and its gateway on
    /// `gateway_http` (port 0: any free port), and waits (at most `within`) until it
    /// printed its join command.
    pub fn start(
        actormesh: &Path,
        dir: &Path,
        api: SocketAddr,
        gateway_http: SocketAddr,
        within: Duration,
    ) -> anyhow::Result<DevCluster> {
        let mut proc = Proc::spawn(
            "dev",
            Command::new(actormesh)
                .arg("dev")
                .arg("--data-dir")
                .arg(dir)
                .args(["--api", &api.to_string()])
                .args(["--gateway-http", &gateway_http.to_string()]),
        )?;
        let mut api = None;
        let mut gateway = None;
        let (bootstrap, join_token) = proc.wait_for(within, "its join command", |line| {
            if let Some(a) = word_after(line, "(api http://") {
                api = a.trim_end_matches(',').parse::<SocketAddr>().ok();
            }
            if line.starts_with("gateway default/gateway: http://") {
                gateway = word_after(line, "gateway default/gateway: http://")
                    .and_then(|g| g.parse::<SocketAddr>().ok());
            }
            let join = word_after(line, "join an agent: actormesh agent --join ")?;
            let token = word_after(line, " --token ")?;
            Some((join.parse::<SocketAddr>().ok()?, token.to_string()))
        })?;
        Ok(DevCluster {
            proc,
            api: api.context("dev printed no API address")?,
            gateway: gateway.context("dev printed no gateway address")?,
            bootstrap,
            join_token,
            api_token_file: dir.join("master").join("api-token"),
            actormesh: actormesh.to_path_buf(),
        })
    }

    /// `actormesh <args> --api … --api-token-file …`, for this cluster.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.actormesh);
        c.args(args)
            .args(["--api", &format!("http://{}", self.api)])
            .arg("--api-token-file")
            .arg(&self.api_token_file);
        c
    }

    /// The `actormesh apply` command line for `file`, to print for a user.
    pub fn apply_line(&self) -> String {
        format!(
            "{} apply --api http://{} --api-token-file {} -f",
            self.actormesh.display(),
            self.api,
            self.api_token_file.display()
        )
    }

    /// Applies the manifests in `file`.
    pub fn apply(&self, file: &Path) -> anyhow::Result<()> {
        let mut c = self.command(&["apply"]);
        let status = c
            .arg("-f")
            .arg(file)
            .status()
            .context("cannot run actormesh apply")?;
        if !status.success() {
            bail!("actormesh apply -f {} failed ({status})", file.display());
        }
        Ok(())
    }

    /// A join token of role client (for a program that is not a node), valid `ttl_secs`.
    pub fn client_token(&self, ttl_secs: u64) -> anyhow::Result<String> {
        let ttl = format!("{ttl_secs}s");
        let out = self
            .command(&["token", "create", "--role", "client", "--ttl", &ttl])
            .stderr(Stdio::inherit())
            .output()
            .context("cannot run actormesh token create")?;
        if !out.status.success() {
            bail!(
                "actormesh token create --role client failed ({})",
                out.status
            );
        }
        let token = String::from_utf8(out.stdout)?.trim().to_string();
        if token.is_empty() {
            bail!("actormesh token create printed no token");
        }
        Ok(token)
    }
}

/// What stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Ctrl-C: in a terminal the whole process group got it.
    Interrupt,
    /// SIGTERM: sent to this process alone.
    Terminate,
}

/// Which signal came first, Ctrl-C or SIGTERM, on the channel. Once this returns, a
/// SIGTERM stops the children (through their `Drop`) instead of killing this process
/// alone and orphaning them.
pub fn stop_signals() -> anyhow::Result<mpsc::Receiver<Stop>> {
    let (tx, rx) = mpsc::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal watcher")?;
    let (term, int) = rt.block_on(async {
        let term = tokio::signal::unix::signal(SignalKind::terminate());
        let int = tokio::signal::unix::signal(SignalKind::interrupt());
        (term, int)
    });
    let mut term = term.context("cannot watch for SIGTERM")?;
    let mut int = int.context("cannot watch for Ctrl-C")?;
    std::thread::spawn(move || {
        let first = rt.block_on(async {
            tokio::select! {
                _ = int.recv() => Stop::Interrupt,
                _ = term.recv() => Stop::Terminate,
            }
        });
        let _ = tx.send(first);
    });
    Ok(rx)
}

/// Until `stop` fires (then `Ok`), or until one of `procs` ends (then an error naming it;
/// the others are stopped by their `Drop`). After a Ctrl-C the processes get 5 seconds to
/// stop on their own: in a terminal they got it too.
pub fn wait_until_stopped(
    stop: &mpsc::Receiver<Stop>,
    what: &str,
    procs: &mut [&mut Proc],
) -> anyhow::Result<()> {
    loop {
        if let Ok(why) = stop.recv_timeout(Duration::from_millis(500)) {
            println!("stopping {what}");
            let wait = match why {
                Stop::Interrupt => Duration::from_secs(5),
                Stop::Terminate => Duration::ZERO,
            };
            let deadline = Instant::now() + wait;
            for p in procs.iter_mut() {
                while p.child.try_wait()?.is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            return Ok(());
        }
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} ended ({status}); stopping the rest", p.name);
            }
        }
    }
}
