//! `pi`: a Mesos-style batch framework on actormesh that estimates π.
//!
//! ```text
//! pi run                                  # all of it: a dev cluster, two pi agents and
//!                                         # the framework, which fails over once; prints π
//! pi agent --join ADDR --token am1.… --data-dir DIR --resources 'cpus:1'
//! pi framework --join ADDR --token am1.… --data-dir DIR [--parts 12 --points 1000000]
//! pi sample --seed 3 --points 1000000     # one part, as a command task runs it
//! ```
//!
//! `framework` registers with the master under role `batch` (through
//! `Scheduler::follow`, which keeps its id in `<data-dir>/framework.json`), answers
//! `ResourceOffers` by launching the job's parts (command tasks anywhere, actor tasks
//! where `pi-sampler` is hosted) or declining with a filter, handles `StatusUpdate`s
//! (reading a finished command task's stdout, asking a running actor task's instance,
//! launching a failed part again) and acknowledges them, and keeps the job in
//! `<data-dir>/job.json`. Started again after it died, it re-registers with the same id
//! (its tasks were kept), reconciles the tasks it had launched, and goes on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use actix::prelude::*;
use actormesh::agent::{self, AgentConfig};
use actormesh::framework::{instance_name, FollowConfig, FrameworkEvent, LogStream, Scheduler};
use actormesh::mesh::MeshOptions;
use actormesh::resources::Resources;
use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use example_support::{actormesh_binary, stop_signals, DevCluster, Proc};
use pi::{Answer, Hits, Job, Next, Sample};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "Monte Carlo pi as a Mesos-style batch framework on actormesh")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a dev cluster and two pi agents, run the framework (it fails over once),
    /// print pi, and stop it all.
    Run(RunArgs),
    /// Join a cluster as an agent that hosts the pi-sampler actor type, until Ctrl-C.
    Agent(AgentArgs),
    /// Run the framework until the job is done.
    Framework(FrameworkArgs),
    /// Count one part and print it as JSON (what a command task runs).
    Sample(SampleArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Where the cluster, the agents and the framework keep their state.
    #[arg(long, default_value = "pi-data")]
    data_dir: PathBuf,
    /// The `actormesh` binary (default: the one beside this binary, as `cargo build`
    /// leaves it).
    #[arg(long)]
    actormesh: Option<PathBuf>,
    /// The operator API address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7080")]
    api: SocketAddr,
    /// Where the dev cluster's gateway serves HTTP (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    #[command(flatten)]
    job: JobArgs,
    /// The first framework process exits without a goodbye after this many counts, and
    /// a second one takes over with its id (0: no failover).
    #[arg(long, default_value_t = 4)]
    fail_over_after: usize,
}

#[derive(clap::Args, Debug, Clone)]
struct JobArgs {
    /// How many parts (alternately command and actor tasks).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    parts: u32,
    /// Points per part.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    points: u64,
    /// The first part's seed (part i uses seed + i).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(clap::Args, Debug)]
struct AgentArgs {
    /// The master's bootstrap address.
    #[arg(long)]
    join: SocketAddr,
    /// A join token (`actormesh token create`); only needed the first time.
    #[arg(long, env = "ACTORMESH_JOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the agent keeps its key, certificate and identity.
    #[arg(long, default_value = "pi-agent")]
    data_dir: PathBuf,
    /// The node's name (default: made from the host name).
    #[arg(long)]
    name: Option<String>,
    /// What it offers, e.g. 'cpus:1' (default: what the machine has).
    #[arg(long)]
    resources: Option<Resources>,
}

#[derive(clap::Args, Debug)]
struct FrameworkArgs {
    /// A master's bootstrap address (the others are learned).
    #[arg(long)]
    join: SocketAddr,
    /// A join token of role client (`actormesh token create --role client`); only needed
    /// the first time, to get the framework's identity.
    #[arg(long, env = "PI_CLIENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the framework keeps its identity, its id and the job.
    #[arg(long, default_value = "pi-framework")]
    data_dir: PathBuf,
    #[command(flatten)]
    job: JobArgs,
    /// Exit without a goodbye after this many counts, to show a failover.
    #[arg(long)]
    exit_after: Option<usize>,
    /// Give up (tearing nothing down: a next run resumes) if the job is not done within
    /// this long (ms, s, m, h or d).
    #[arg(long, value_parser = actormesh::duration::parse_duration, default_value = "10m")]
    give_up_after: Duration,
}

#[derive(clap::Args, Debug)]
struct SampleArgs {
    /// The part's seed.
    #[arg(long)]
    seed: u64,
    /// How many points.
    #[arg(long)]
    points: u64,
}

/// The exit code of a framework that left on purpose (`--exit-after`).
const LEFT_FOR_FAILOVER: i32 = 75;
/// How long `run` waits for each step.
const STEP: Duration = Duration::from_secs(120);

/// Passes the framework's events to its loop.
struct Events(mpsc::UnboundedSender<FrameworkEvent>);

impl Actor for Events {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<FrameworkEvent> for Events {
    type Result = ();
    fn handle(&mut self, e: FrameworkEvent, _: &mut Context<Self>) {
        let _ = self.0.send(e);
    }
}

/// The job and the file it is kept in.
struct Kept {
    job: Job,
    file: PathBuf,
}

impl Kept {
    fn load_or(file: PathBuf, new: impl FnOnce() -> Job) -> anyhow::Result<Kept> {
        let job = match std::fs::read_to_string(&file) {
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a pi job (JSON, as pi framework writes it)",
                    file.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        Ok(Kept { job, file })
    }

    /// Written whole, then renamed over the old one: a crash leaves one or the other.
    fn save(&self) -> anyhow::Result<()> {
        let tmp = self.file.with_extension("new");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.job)?)
            .and_then(|_| std::fs::rename(&tmp, &self.file))
            .with_context(|| format!("cannot write {}", self.file.display()))
    }
}

async fn framework(args: FrameworkArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let identity_dir = args.data_dir.join("identity");
    let client = if identity_dir.join(actormesh::client::CLIENT_FILE).is_file() {
        actormesh::client::load(&identity_dir)?
    } else {
        let token = args.token.as_deref().context(
            "the framework has no identity yet: pass --token with a client token (actormesh token create --role client)",
        )?;
        actormesh::client::issue(args.join, token, "pi", &identity_dir).await?
    };
    let mesh = client
        .connect(MeshOptions::default(), Duration::from_secs(10))
        .await?;
    let node = mesh.node().clone();
    let program = std::env::current_exe().context("cannot find this binary's path")?;
    let j = args.job.clone();
    let kept = Kept::load_or(args.data_dir.join("job.json"), || {
        Job::new(j.parts, j.points, j.seed, &program.display().to_string())
    })?;
    if kept.job.done() > 0 || !kept.job.outstanding().is_empty() {
        println!(
            "resuming the job in {}: {} of {} parts counted, {} launched (its --parts, --points and --seed are the job's)",
            kept.file.display(),
            kept.job.done(),
            kept.job.parts.len(),
            kept.job.outstanding().len()
        );
    }
    kept.save()?;

    let (tx, mut events) = mpsc::unbounded_channel();
    let me = node.spawn("pi-framework", Events(tx))?;
    let mut config = FollowConfig::new("pi", "batch", vec![args.join]);
    let state_file = args.data_dir.join("framework.json");
    config.state_file = Some(state_file.clone());
    let (s, reg) = Scheduler::follow(&node, &me, config).await?;
    if reg.reregistered {
        println!(
            "re-registered as framework {}: a failover, its tasks kept",
            reg.framework_id
        );
    } else {
        println!("registered as framework {}", reg.framework_id);
    }
    // Tasks launched before a failover: their latest state (as updates with uuid 0).
    let outstanding = kept.job.outstanding();
    if !outstanding.is_empty() {
        println!(
            "reconciling {} tasks launched before: {}",
            outstanding.len(),
            outstanding.join(", ")
        );
        s.reconcile(outstanding).await?;
    }

    let (asked_tx, mut asked) = mpsc::unbounded_channel();
    let mut fw = Framework {
        s,
        kept,
        node,
        asked: asked_tx,
        counted_here: 0,
        exit_after: args.exit_after,
    };
    let deadline = tokio::time::Instant::now() + args.give_up_after;
    let done = loop {
        tokio::select! {
            e = events.recv() => {
                let e = e.context("the framework's event actor stopped")?;
                if let Some(pi) = fw.on_event(e).await? {
                    break pi;
                }
            }
            a = asked.recv() => {
                let (task_id, got) = a.expect("a sender is kept in fw");
                if let Some(pi) = fw.count(&task_id, got).await? {
                    break pi;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                bail!(
                    "the job was not done within {:?} (--give-up-after): {} of {} parts counted",
                    args.give_up_after,
                    fw.kept.job.done(),
                    fw.kept.job.parts.len()
                );
            }
        }
    };
    let job = &fw.kept.job;
    let points: u64 = job.parts.iter().map(|p| p.points).sum();
    let launches: u32 = job.parts.iter().map(|p| p.attempts).sum();
    println!(
        "pi ≈ {done} from {points} points in {} parts ({launches} launches; error {:.6})",
        job.parts.len(),
        (done - std::f64::consts::PI).abs()
    );
    fw.s.teardown().await?;
    println!("framework {} torn down: the job is done", fw.s.id());
    // Torn down, the id is of no more use; the job stays in job.json.
    let _ = std::fs::remove_file(&state_file);
    fw.node.shutdown();
    Ok(())
}

/// A count, or why there is none.
type Counted = Result<Hits, String>;

/// The framework's loop state: what it calls, the job, and the counts asked for.
struct Framework {
    s: Scheduler,
    kept: Kept,
    node: actormesh::Node,
    /// Where an actor task's answer comes back (the ask runs on its own).
    asked: mpsc::UnboundedSender<(String, Counted)>,
    counted_here: usize,
    exit_after: Option<usize>,
}

impl Framework {
    /// Handles one event; π once the job is done.
    async fn on_event(&mut self, e: FrameworkEvent) -> anyhow::Result<Option<f64>> {
        match e {
            FrameworkEvent::Registered(reg) => println!(
                "event Registered: framework {} (re-registered: {})",
                reg.framework_id, reg.reregistered
            ),
            FrameworkEvent::ResourceOffers(offers) => {
                let answers = self.kept.job.plan(&offers);
                self.kept.save()?;
                for a in answers {
                    self.answer(a).await?;
                }
            }
            FrameworkEvent::OfferRescinded { offer_id } => {
                println!("event OfferRescinded: {offer_id}")
            }
            FrameworkEvent::StatusUpdate(st) => {
                let on = if st.agent_id.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", st.agent_id)
                };
                let why = if st.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", st.message)
                };
                println!("event StatusUpdate: {} {:?}{on}{why}", st.task_id, st.state);
                let next = self.kept.job.on_status(&st);
                self.kept.save()?;
                let mut done = None;
                match next {
                    Next::Ask {
                        task_id,
                        agent_addr,
                        sample: (seed, points),
                    } => {
                        let name = instance_name(self.s.id(), &task_id);
                        let instance = self.node.actor_ref(agent_addr, &name);
                        let asked = self.asked.clone();
                        actix::spawn(async move {
                            let got = instance
                                .ask_timeout(Sample { seed, points }, Duration::from_secs(120))
                                .await
                                .map_err(|e| format!("its instance did not answer: {e}"));
                            let _ = asked.send((task_id, got));
                        });
                    }
                    // Counted and kept before the update is acknowledged: the master
                    // forgets an acknowledged end, and its output with it.
                    Next::ReadOutput { task_id } => {
                        let got = read_count(&self.s, &task_id).await;
                        done = self.count(&task_id, got).await?;
                    }
                    other => self.carry_out(other).await?,
                }
                // Acknowledged once handled: until then the master sends the update again,
                // to this process or the next.
                if st.uuid != 0 {
                    self.s.acknowledge(&st).await?;
                }
                return Ok(done);
            }
            FrameworkEvent::Error { message } => {
                bail!("the master ended the framework: {message}")
            }
        }
        Ok(None)
    }

    /// Records a task's count (kept in job.json at once); π once every part is counted.
    async fn count(&mut self, task_id: &str, got: Counted) -> anyhow::Result<Option<f64>> {
        let hits = match got {
            Ok(hits) => hits,
            Err(why) => {
                println!("task {task_id} gave no count: {why}");
                let next = self.kept.job.retry(task_id, &why);
                self.kept.save()?;
                self.carry_out(next).await?;
                return Ok(None);
            }
        };
        if !self.kept.job.record(task_id, hits) {
            println!("a count of task {task_id} that is not a running part's: not counted");
            return Ok(None);
        }
        self.kept.save()?;
        self.counted_here += 1;
        println!(
            "counted task {task_id}: {}/{} inside; {} of {} parts",
            hits.inside,
            hits.points,
            self.kept.job.done(),
            self.kept.job.parts.len()
        );
        if let Some(pi) = self.kept.job.estimate() {
            return Ok(Some(pi));
        }
        if self.exit_after.is_some_and(|n| self.counted_here >= n) {
            println!(
                "leaving without a goodbye after {} counts: the master keeps the framework's tasks for its failover timeout",
                self.counted_here
            );
            std::process::exit(LEFT_FOR_FAILOVER);
        }
        Ok(None)
    }

    async fn carry_out(&mut self, next: Next) -> anyhow::Result<()> {
        match next {
            Next::Revive => {
                println!("a part waits again: offers revived (decline filters cleared)");
                self.s.set_offers(true).await?;
            }
            Next::GiveUp(why) => {
                self.s.teardown().await?;
                bail!("the job failed: {why}");
            }
            Next::Nothing | Next::Ask { .. } | Next::ReadOutput { .. } => {}
        }
        Ok(())
    }

    async fn answer(&mut self, a: Answer) -> anyhow::Result<()> {
        match a {
            Answer::Accept {
                offer_id,
                agent_id,
                launches,
            } => {
                let ids: Vec<String> = launches.iter().map(|l| l.task_id.clone()).collect();
                println!(
                    "accept offer {offer_id} of {agent_id}: launch {}",
                    ids.join(", ")
                );
                if let Err(e) = self.s.accept(&offer_id, launches).await {
                    println!("the master refused the launch: {e}");
                    for id in &ids {
                        let next = self
                            .kept
                            .job
                            .retry(id, &format!("its launch was refused: {e}"));
                        self.kept.save()?;
                        self.carry_out(next).await?;
                    }
                }
            }
            Answer::Decline {
                offer_id,
                agent_id,
                refuse_for,
                why,
            } => {
                println!("decline offer {offer_id} of {agent_id} for {refuse_for:?}: {why}");
                self.s.decline(&offer_id, refuse_for).await?;
            }
        }
        Ok(())
    }
}

/// A finished command task's count, from the last line of its stdout.
async fn read_count(s: &Scheduler, task_id: &str) -> Counted {
    let log = s
        .task_output(task_id, LogStream::Stdout, 4096)
        .await
        .map_err(|e| format!("cannot read its output: {e}"))?;
    let last = log
        .text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last).map_err(|e| {
        format!(
            "its output's last line {last:?} is not a count ({{\"inside\":…,\"points\":…}}): {e}"
        )
    })
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let mut config = AgentConfig::new(args.join, args.data_dir)
        .token(args.token)
        .host(pi::host());
    if let Some(name) = args.name {
        config = config.name(name);
    }
    if let Some(r) = args.resources {
        config = config.resources(r);
    }
    let a = agent::start(config).await?;
    println!(
        "pi agent {} joined the cluster at {}, hosting {}",
        a.agent_id,
        a.master.addr(),
        pi::SAMPLER
    );
    a.run_until_stopped().await?;
    Ok(())
}

fn sample(args: SampleArgs) -> anyhow::Result<()> {
    let hits = Hits {
        inside: pi::count_inside(args.seed, args.points),
        points: args.points,
    };
    println!("{}", serde_json::to_string(&hits)?);
    Ok(())
}

/// The pi agents `run` starts, each offering one cpu.
const AGENTS: [&str; 2] = ["pi-1", "pi-2"];

fn run(args: RunArgs) -> anyhow::Result<()> {
    let actormesh = actormesh_binary(args.actormesh, "pi")?;
    let me = std::env::current_exe()?;
    let data = &args.data_dir;
    let mut dev = DevCluster::start(&actormesh, &data.join("dev"), args.api, args.http, STEP)?;
    let bootstrap = dev.bootstrap.to_string();
    let mut agents = Vec::new();
    for name in AGENTS {
        agents.push(Proc::spawn(
            name,
            Command::new(&me)
                .arg("agent")
                .args(["--join", &dev.bootstrap.to_string()])
                .args(["--token", &dev.join_token, "--name", name])
                .arg("--data-dir")
                .arg(data.join(name))
                .args(["--resources", "cpus:1"]),
        )?);
    }
    for a in &mut agents {
        a.wait_for(STEP, "that it joined", |l| {
            l.starts_with("pi agent ").then_some(())
        })?;
    }
    let fw_dir = data.join("framework");
    // A new job each run: the framework's id and job of an earlier run are dropped (its
    // identity is kept).
    for f in ["job.json", "framework.json"] {
        match std::fs::remove_file(fw_dir.join(f)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e)
                    .with_context(|| format!("cannot remove {}", fw_dir.join(f).display()))
            }
            _ => {}
        }
    }
    let token = dev.client_token(600)?;
    let stop = stop_signals()?;
    let framework = |exit_after: Option<usize>| -> anyhow::Result<Proc> {
        let mut c = Command::new(&me);
        c.arg("framework")
            .args(["--join", &bootstrap])
            .arg("--data-dir")
            .arg(&fw_dir)
            .args(["--parts", &args.job.parts.to_string()])
            .args(["--points", &args.job.points.to_string()])
            .args(["--seed", &args.job.seed.to_string()])
            .env("PI_CLIENT_TOKEN", &token);
        if let Some(n) = exit_after {
            c.args(["--exit-after", &n.to_string()]);
        }
        Proc::spawn("framework", &mut c)
    };
    let first = (args.fail_over_after > 0).then_some(args.fail_over_after);
    let mut fw = framework(first)?;
    let mut failed_over = false;
    loop {
        if let Ok(why) = stop.recv_timeout(Duration::from_millis(200)) {
            println!("stopping pi ({why:?})");
            return Ok(());
        }
        for p in std::iter::once(&mut dev.proc).chain(agents.iter_mut()) {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} ended ({status}); stopping the rest", p.name);
            }
        }
        let Some(status) = fw.child.try_wait()? else {
            continue;
        };
        match status.code() {
            Some(0) => {
                println!("pi: done");
                return Ok(());
            }
            Some(LEFT_FOR_FAILOVER) if !failed_over => {
                println!("pi: the framework process is gone; starting another, which fails over with the framework id it kept");
                failed_over = true;
                fw = framework(None)?;
            }
            _ => bail!("the framework ended ({status})"),
        }
    }
}

fn main() -> ExitCode {
    let done = match Cli::parse().command {
        Cmd::Run(args) => run(args),
        Cmd::Agent(args) => actix::System::new().block_on(agent(args)),
        Cmd::Framework(args) => actix::System::new().block_on(framework(args)),
        Cmd::Sample(args) => sample(args),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pi: {e:#}");
            ExitCode::FAILURE
        }
    }
}
