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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use actormesh::agent::{self, AgentConfig};
use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use example_support::{actormesh_binary, stop_signals, wait_until_stopped, DevCluster, Proc};

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

fn up(args: UpArgs) -> anyhow::Result<()> {
    let actormesh = actormesh_binary(args.actormesh, "bookinfo")?;
    let me = std::env::current_exe()?;
    let data = &args.data_dir;
    let manifests = data.join("manifests");
    std::fs::create_dir_all(&manifests)
        .with_context(|| format!("cannot create {}", manifests.display()))?;
    for (name, text) in MANIFESTS {
        let path = manifests.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut dev = DevCluster::start(&actormesh, &data.join("dev"), args.api, args.http, STEP)?;
    let mut agents = Vec::new();
    for (name, tier) in AGENTS {
        let dir = data.join(name);
        agents.push(Proc::spawn(
            name,
            Command::new(&me)
                .arg("agent")
                .args(["--join", &dev.bootstrap.to_string()])
                .args(["--token", &dev.join_token, "--name", name])
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
    dev.apply(&manifests.join("bookinfo.yaml"))?;
    let gateway = dev.gateway;
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
    let apply_cmd = dev.apply_line();
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
    let mut procs: Vec<&mut Proc> = std::iter::once(&mut dev.proc)
        .chain(agents.iter_mut())
        .collect();
    wait_until_stopped(&stop, "bookinfo", &mut procs)
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
