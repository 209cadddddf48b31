//! `bookinfo`: Istio's bookinfo sample on actormesh.
//!
//! ```text
//! bookinfo up                                   # all of it: a dev cluster, 3 agents, the
//!                                               # manifests; prints the URL
//! bookinfo agent --join ADDR --token am1.… --data-dir DIR --attr tier=front
//! ```
//!
//! `agent` joins a cluster as an agent that hosts every bookinfo actor type. `up` starts
//! `actormesh dev` (a master, its agent and the HTTP gateway), three `bookinfo agent`s
//! (tiers `front`, `reviews` and `ratings`, so that every call between services crosses
//! the wire), applies `manifests/bookinfo.yaml`, waits until the page answers, prints its
//! URL, and stops it all on Ctrl-C.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use actormesh::agent::{self, AgentConfig};
use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use tokio::signal::unix::SignalKind;

#[derive(Parser, Debug)]
#[command(about = "Istio's bookinfo on actormesh: run it all, or serve its services as an agent")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a dev cluster, three bookinfo agents and the manifests; print the URL; run
    /// until Ctrl-C.
    Up(UpArgs),
    /// Join a cluster as an agent that hosts the bookinfo actor types, until Ctrl-C.
    Agent(AgentArgs),
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    /// Where the cluster and the agents keep their state (kept between runs).
    #[arg(long, default_value = "bookinfo-data")]
    data_dir: PathBuf,
    /// The `actormesh` binary (default: the one beside this binary, as `cargo build`
    /// leaves it).
    #[arg(long)]
    actormesh: Option<PathBuf>,
    /// The operator API address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7080")]
    api: SocketAddr,
    /// Where the gateway serves HTTP (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
}

#[derive(clap::Args, Debug)]
struct AgentArgs {
    /// The master's bootstrap address.
    #[arg(long)]
    join: SocketAddr,
    /// A join token (`actormesh token create`); only needed the first time.
    #[arg(long, env = "ACTORMESH_JOIN_TOKEN")]
    token: Option<String>,
    /// Where the agent keeps its key, certificate and identity.
    #[arg(long, default_value = "bookinfo-agent")]
    data_dir: PathBuf,
    /// The node's name (default: made from the host name).
    #[arg(long)]
    name: Option<String>,
    /// An attribute `key=value` the master places by (repeatable), e.g. `tier=front`.
    #[arg(long = "attr", value_parser = parse_attr)]
    attrs: Vec<(String, String)>,
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value, e.g. tier=front")),
    }
}

/// The manifests, as in `examples/bookinfo/manifests`; `up` writes them into its data dir.
const MANIFESTS: [(&str, &str); 8] = [
    ("bookinfo.yaml", include_str!("../manifests/bookinfo.yaml")),
    (
        "reviews-v1.yaml",
        include_str!("../manifests/reviews-v1.yaml"),
    ),
    (
        "reviews-jason-v2.yaml",
        include_str!("../manifests/reviews-jason-v2.yaml"),
    ),
    (
        "reviews-v3.yaml",
        include_str!("../manifests/reviews-v3.yaml"),
    ),
    (
        "reviews-canary.yaml",
        include_str!("../manifests/reviews-canary.yaml"),
    ),
    (
        "ratings-delay.yaml",
        include_str!("../manifests/ratings-delay.yaml"),
    ),
    (
        "ratings-abort.yaml",
        include_str!("../manifests/ratings-abort.yaml"),
    ),
    (
        "ratings-no-faults.yaml",
        include_str!("../manifests/ratings-no-faults.yaml"),
    ),
];

/// The three agents `up` starts: name and tier.
const AGENTS: [(&str, &str); 3] = [
    ("bookinfo-front", "front"),
    ("bookinfo-reviews", "reviews"),
    ("bookinfo-ratings", "ratings"),
];

/// How long `up` waits for each step.
const STEP: Duration = Duration::from_secs(120);

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let mut config = AgentConfig::new(args.join, args.data_dir)
        .token(args.token)
        .host(bookinfo::host());
    if let Some(name) = args.name {
        config = config.name(name);
    }
    for (k, v) in args.attrs {
        config = config.attr(k, v);
    }
    let a = agent::start(config).await?;
    println!(
        "bookinfo agent {} joined the cluster at {}, hosting {}",
        a.agent_id,
        a.master.addr(),
        bookinfo::ACTOR_TYPES.join(", ")
    );
    a.run_until_stopped().await?;
    Ok(())
}

/// A child process whose stdout lines come through a channel (and are echoed with its
/// name), killed when dropped.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Proc> {
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
                if tx.send(line).is_err() {
                    // Nobody reads any more: keep echoing.
                }
            }
        });
        Ok(Proc {
            name: name.to_string(),
            child,
            lines,
        })
    }

    /// The first line `pick` takes, within `within`; an error if the process ends first.
    fn wait_for<T>(
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
fn word_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()
}

/// The status of `GET path` at `addr` (HTTP/1.1), or why there is none.
fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let text = std::str::from_utf8(&head)?;
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP status line: {text:?}"))
}

fn actormesh_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let me = std::env::current_exe().context("cannot find this binary's path")?;
    let beside = me.with_file_name("actormesh");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "there is no actormesh binary beside {} (build it: cargo build --release -p actormesh-cli -p bookinfo; or pass --actormesh PATH)",
        me.display()
    )
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    let actormesh = actormesh_binary(args.actormesh)?;
    let me = std::env::current_exe()?;
    let data = &args.data_dir;
    let manifests = data.join("manifests");
    std::fs::create_dir_all(&manifests)
        .with_context(|| format!("cannot create {}", manifests.display()))?;
    for (name, text) in MANIFESTS {
        let path = manifests.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let dev_dir = data.join("dev");
    let mut dev = Proc::spawn(
        "dev",
        Command::new(&actormesh)
            .arg("dev")
            .arg("--data-dir")
            .arg(&dev_dir)
            .args(["--api", &args.api.to_string()])
            .args(["--gateway-http", &args.http.to_string()]),
    )?;
    let mut api = None;
    let mut gateway = None;
    let (bootstrap, token) = dev.wait_for(STEP, "its join command", |line| {
        if let Some(a) = word_after(line, "(api http://") {
            api = a.trim_end_matches(',').parse::<SocketAddr>().ok();
        }
        if line.starts_with("gateway default/gateway: http://") {
            gateway = word_after(line, "gateway default/gateway: http://")
                .and_then(|g| g.parse::<SocketAddr>().ok());
        }
        let join = word_after(line, "join an agent: actormesh agent --join ")?;
        let token = word_after(line, " --token ")?;
        Some((join.to_string(), token.to_string()))
    })?;
    let api = api.context("dev printed no API address")?;
    let gateway = gateway.context("dev printed no gateway address")?;
    let mut agents = Vec::new();
    for (name, tier) in AGENTS {
        let dir = data.join(name);
        agents.push(Proc::spawn(
            name,
            Command::new(&me)
                .arg("agent")
                .args(["--join", &bootstrap, "--token", &token, "--name", name])
                .arg("--data-dir")
                .arg(&dir)
                .args(["--attr", &format!("tier={tier}")]),
        )?);
    }
    for a in &mut agents {
        a.wait_for(STEP, "that it joined", |l| {
            l.starts_with("bookinfo agent ").then_some(())
        })?;
    }
    let token_file = dev_dir.join("master").join("api-token");
    apply(
        &actormesh,
        api,
        &token_file,
        &manifests.join("bookinfo.yaml"),
    )?;
    let deadline = Instant::now() + STEP;
    loop {
        match http_status(gateway, "/productpage") {
            Ok(200) => break,
            other if Instant::now() > deadline => {
                bail!("the product page did not answer 200 within {STEP:?}: {other:?}")
            }
            // The gateway fetches its routes each second and the endpoints come with the
            // next push.
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let m = manifests.display();
    let apply_cmd = format!(
        "{} apply --api http://{api} --api-token-file {} -f",
        actormesh.display(),
        token_file.display()
    );
    let stop = stop_signals()?;
    println!("bookinfo ready: http://{gateway}/productpage");
    println!("  as jason: http://{gateway}/productpage?u=jason");
    println!("  all to reviews v1:      {apply_cmd} {m}/reviews-v1.yaml");
    println!("  jason to v2:            {apply_cmd} {m}/reviews-jason-v2.yaml");
    println!("  90/10 canary v1/v3:     {apply_cmd} {m}/reviews-canary.yaml");
    println!("  all to v3:              {apply_cmd} {m}/reviews-v3.yaml");
    println!("  ratings delay (jason):  {apply_cmd} {m}/ratings-delay.yaml");
    println!("  ratings abort (jason):  {apply_cmd} {m}/ratings-abort.yaml");
    println!("  no ratings faults:      {apply_cmd} {m}/ratings-no-faults.yaml");
    println!("Ctrl-C stops it all.");
    wait_until_stopped(stop, &mut dev, &mut agents)
}

fn apply(actormesh: &Path, api: SocketAddr, token_file: &Path, file: &Path) -> anyhow::Result<()> {
    let status = Command::new(actormesh)
        .arg("apply")
        .args(["--api", &format!("http://{api}")])
        .arg("--api-token-file")
        .arg(token_file)
        .arg("-f")
        .arg(file)
        .status()
        .context("cannot run actormesh apply")?;
    if !status.success() {
        bail!("actormesh apply -f {} failed ({status})", file.display());
    }
    Ok(())
}

/// Which signal came first, Ctrl-C or SIGTERM, on the channel. Once this returns, a SIGTERM
/// stops the children (through their `Drop`) instead of killing `up` alone and orphaning
/// them.
fn stop_signals() -> anyhow::Result<mpsc::Receiver<Stop>> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Ctrl-C: in a terminal the whole process group got it.
    Interrupt,
    /// SIGTERM: sent to `up` alone.
    Terminate,
}

/// Until `stop` fires, or until any process ends (then the others are stopped too).
fn wait_until_stopped(
    stop: mpsc::Receiver<Stop>,
    dev: &mut Proc,
    agents: &mut [Proc],
) -> anyhow::Result<()> {
    loop {
        if let Ok(why) = stop.recv_timeout(Duration::from_millis(500)) {
            println!("stopping bookinfo");
            // After a Ctrl-C in a terminal every process got it: give them a moment to stop
            // on their own. Otherwise (and after that moment) `Drop` kills them.
            let wait = match why {
                Stop::Interrupt => Duration::from_secs(5),
                Stop::Terminate => Duration::ZERO,
            };
            let deadline = Instant::now() + wait;
            for p in std::iter::once(&mut *dev).chain(agents.iter_mut()) {
                while p.child.try_wait()?.is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            return Ok(());
        }
        for p in std::iter::once(&mut *dev).chain(agents.iter_mut()) {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} ended ({status}); stopping the rest", p.name);
            }
        }
    }
}

fn main() -> ExitCode {
    let done = match Cli::parse().command {
        Cmd::Up(args) => up(args),
        Cmd::Agent(args) => actix::System::new().block_on(agent(args)),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
