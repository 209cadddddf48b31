//! `meshbench scheduling`: how fast the deployment controller places actor instances, and
//! how fast it replaces the instances of a lost agent. The master and the agents run in
//! this process (lightweight agents), each agent with its own node, speaking the real
//! protocol over QUIC on loopback.

use std::time::{Duration, Instant};

use actormesh::agent::{self, tasks::ActorHost, AgentConfig};
use actormesh::{Node, NodeConfig};
use actormesh_integration::actors::Sink;
use actormesh_integration::pki::TestPki;
use actormesh_master::{self as master, ApplyDeployment, ListDeployments, MasterConfig};
use anyhow::{anyhow, Context as _};

use crate::Line;

pub fn run(agents: usize, instances: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("meshbench-scheduling-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = actix::System::new().block_on(run_in(dir.clone(), agents, instances));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn running(m: &actix::Addr<master::Master>) -> anyhow::Result<u32> {
    Ok(m.send(ListDeployments)
        .await?
        .first()
        .map_or(0, |d| d.running))
}

/// Polls (every 20 ms, at most `limit`) until `want` instances run; the time it took.
async fn until_running(
    m: &actix::Addr<master::Master>,
    want: u32,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if running(m).await? >= want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            anyhow::bail!(
                "only {} of {want} instances running after {limit:?}",
                running(m).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_in(dir: std::path::PathBuf, n_agents: usize, instances: usize) -> anyhow::Result<()> {
    // Baseline: the same actor spawned locally on one node, without scheduling.
    let pki = TestPki::new("sched.local");
    let (_, creds) = pki.node("local");
    let local = Node::start(NodeConfig::new("127.0.0.1:0".parse()?), &creds)?;
    let t = Instant::now();
    for i in 0..instances {
        local.spawn(&format!("local-{i}"), Sink::default())?;
    }
    let spawn_rate = instances as f64 / t.elapsed().as_secs_f64();

    let mut config = MasterConfig::new(dir.join("master"));
    config.listen = "127.0.0.1:0".parse()?;
    config.bootstrap = "127.0.0.1:0".parse()?;
    config.api = "127.0.0.1:0".parse()?;
    let limit = config.detector.unreachable_after;
    let m = master::start(config).await?;
    let token = m.agent_token(Duration::from_secs(3600)).await?;
    // Room for every instance even after one agent is lost.
    let per_agent = instances.div_ceil(n_agents.saturating_sub(1).max(1)) + 2;
    let mut agents = Vec::new();
    for i in 0..n_agents {
        agents.push(
            agent::start(AgentConfig {
                join: m.bootstrap,
                also_join: Vec::new(),
                token: Some(token.clone()),
                data_dir: dir.join(format!("a{i}")),
                listen: "127.0.0.1:0".parse()?,
                name: format!("a{i}"),
                resources: Some(format!("cpus:{per_agent};mem:{}", per_agent * 64).parse()?),
                attrs: Default::default(),
                actor_types: Vec::new(),
                reserved: Default::default(),
                metrics_listen: None,
                access_log: None,
                tracing: None,
                host: ActorHost::new().with("sink", Sink::default),
            })
            .await
            .with_context(|| format!("agent a{i}"))?,
        );
    }
    let manifest = format!(
        r#"{{"kind":"Deployment","name":"bench","spec":{{"actor":"sink","version":"v1","replicas":{instances},"resources":{{"need":"cpus:1;mem:32"}}}}}}"#
    );
    let t = Instant::now();
    m.master
        .send(ApplyDeployment(manifest))
        .await?
        .map_err(|e| anyhow!(e))?;
    until_running(&m.master, instances as u32, Duration::from_secs(300)).await?;
    let placement = instances as f64 / t.elapsed().as_secs_f64();

    // Lose one agent; time until all instances run again elsewhere.
    let lost = agents.remove(0);
    lost.node.shutdown();
    let t = Instant::now();
    // First the master must see the agent go (its instances are then marked Lost), then
    // the replacements must run.
    let lost_id = lost.agent_id.clone();
    let seen = async {
        loop {
            let nodes = m.master.send(master::ListNodes).await?;
            if nodes
                .iter()
                .any(|n| n.id == lost_id && n.state != master::membership::AgentState::Active)
            {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), seen)
        .await
        .map_err(|_| anyhow!("the lost agent was never noticed"))??;
    until_running(&m.master, instances as u32, Duration::from_secs(120)).await?;
    let replacement = t.elapsed().as_secs_f64();

    Line {
        name: "placement_throughput",
        value: placement,
        unit: "instances/s",
        baseline: spawn_rate,
    }
    .print();
    Line {
        name: "replacement_running_seconds",
        value: replacement,
        unit: "s",
        baseline: limit.as_secs_f64(),
    }
    .print();
    drop(agents);
    Ok(())
}
