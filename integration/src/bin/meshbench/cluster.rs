//! `meshbench cluster`: how fast the cluster notices a dead agent, recovers from a master
//! restart, and lets agents join. The master and the agent that is killed are separate
//! processes; the agents measured for recovery and join run inside this process, each
//! with its own node, speaking the real protocol over QUIC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actormesh::agent::{self, AgentConfig};
use actormesh_cli::ApiClient;
use actormesh_integration::harness::ChildProc;
use actormesh_master::membership::{AgentRecord, AgentState};
use actormesh_master::{self as master, MasterConfig};
use anyhow::{anyhow, Context as _};

use crate::Line;

pub fn master_proc(
    data_dir: PathBuf,
    listen: SocketAddr,
    bootstrap: SocketAddr,
    api: SocketAddr,
) -> anyhow::Result<()> {
    actix::System::new().block_on(async move {
        let mut config = MasterConfig::new(data_dir);
        config.listen = listen;
        config.bootstrap = bootstrap;
        config.api = api;
        let m = master::start(config).await?;
        println!("READY {}", m.api_token_file.display());
        std::future::pending::<()>().await;
        anyhow::Ok(())
    })
}

pub fn agent_proc(join: SocketAddr, token: String, data_dir: PathBuf) -> anyhow::Result<()> {
    actix::System::new().block_on(async move {
        let a = agent::start(agent_config(join, Some(token), data_dir, "victim")).await?;
        println!("READY {}", a.agent_id);
        std::future::pending::<()>().await;
        anyhow::Ok(())
    })
}

fn agent_config(
    join: SocketAddr,
    token: Option<String>,
    data_dir: PathBuf,
    name: &str,
) -> AgentConfig {
    AgentConfig {
        join,
        also_join: Vec::new(),
        token,
        data_dir,
        listen: "127.0.0.1:0".parse().expect("address"),
        name: name.to_string(),
        resources: Some("cpus:1;mem:512".parse().expect("resources")),
        attrs: Default::default(),
        actor_types: Vec::new(),
        reserved: Default::default(),
        metrics_listen: None,
        access_log: None,
        tracing: None,
        host: Default::default(),
    }
}

pub(crate) fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
}

struct MasterProc {
    proc: ChildProc,
    api: ApiClient,
}

async fn start_master(
    dir: &std::path::Path,
    mesh: SocketAddr,
    boot: SocketAddr,
    api: SocketAddr,
) -> anyhow::Result<MasterProc> {
    let exe = std::env::current_exe()?;
    let args = [
        "master-proc".to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--listen".into(),
        mesh.to_string(),
        "--bootstrap".into(),
        boot.to_string(),
        "--api".into(),
        api.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = ChildProc::spawn(&exe, &args)?;
    let token_file = proc
        .wait_line("READY", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!(e))?;
    let token = std::fs::read_to_string(token_file)?;
    Ok(MasterProc {
        proc,
        api: ApiClient::new(&format!("http://{api}"), &token),
    })
}

fn nodes(api: &ApiClient) -> anyhow::Result<Vec<AgentRecord>> {
    Ok(serde_json::from_value(api.call(
        "GET",
        "/v1/nodes",
        None,
    )?)?)
}

/// Polls until `done` holds (every 10 ms, at most `limit`); the time it took.
async fn until(limit: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            anyhow::bail!("not reached within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(start.elapsed())
}

pub fn run(n_agents: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("meshbench-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = actix::System::new().block_on(run_in(dir.clone(), n_agents));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: PathBuf, n_agents: usize) -> anyhow::Result<()> {
    let (mesh, boot) = (free_udp(), free_udp());
    let api_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut m = start_master(&dir.join("master"), mesh, boot, api_addr).await?;
    let token = m.api.call(
        "POST",
        "/v1/tokens",
        Some(serde_json::json!({ "ttl_secs": 3600 })),
    )?["token"]
        .as_str()
        .context("token")?
        .to_string();
    let limit = master::membership::DetectorConfig::default().unreachable_after;

    // Bare bootstrap round trips (handshake + one tiny request/reply), the join baseline.
    let fingerprint = token.rsplit('.').next().context("fingerprint")?.to_string();
    let rounds = n_agents.max(20);
    let t = Instant::now();
    for _ in 0..rounds {
        let _ = actormesh::transport::bootstrap::request(
            boot,
            &fingerprint,
            b"x",
            Duration::from_secs(10),
        )
        .await?;
    }
    let bare_rate = rounds as f64 / t.elapsed().as_secs_f64();

    // Join rate: n agents join at once.
    let t = Instant::now();
    let joins = (0..n_agents).map(|i| {
        agent::start(agent_config(
            boot,
            Some(token.clone()),
            dir.join(format!("a{i}")),
            &format!("a{i}"),
        ))
    });
    let agents: Vec<_> = futures::future::join_all(joins)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let join_rate = n_agents as f64 / t.elapsed().as_secs_f64();

    // Detection: kill -9 an agent process, time until the master says Unreachable.
    let exe = std::env::current_exe()?;
    let victim_dir = dir.join("victim").display().to_string();
    let boot_s = boot.to_string();
    let mut victim = ChildProc::spawn(
        &exe,
        &[
            "agent-proc",
            "--join",
            &boot_s,
            "--token",
            &token,
            "--data-dir",
            &victim_dir,
        ],
    )?;
    victim
        .wait_line("READY", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!(e))?;
    victim.kill().await;
    let killed = Instant::now();
    until(Duration::from_secs(30), || {
        nodes(&m.api).is_ok_and(|ns| {
            ns.iter()
                .any(|n| n.id == "victim" && n.state == AgentState::Unreachable)
        })
    })
    .await?;
    let detect = killed.elapsed().as_secs_f64();

    // Master recovery: kill -9 the master with n agents, restart it, time until every
    // agent is Active again, heartbeating to the new process.
    m.proc.kill().await;
    let t = Instant::now();
    let killed_at = std::time::SystemTime::now();
    let m2 = start_master(&dir.join("master"), mesh, boot, api_addr).await?;
    let ids: Vec<String> = agents.iter().map(|a| a.agent_id.clone()).collect();
    until(Duration::from_secs(60), || {
        nodes(&m2.api).is_ok_and(|ns| {
            // Active with a heartbeat seen by the new master process.
            ids.iter().all(|id| {
                ns.iter().any(|n| {
                    &n.id == id
                        && n.state == AgentState::Active
                        && n.last_heartbeat.is_some_and(|h| h > killed_at)
                })
            })
        })
    })
    .await?;
    // Counted from the kill, as an operator would see it.
    let recovery = t.elapsed().as_secs_f64();

    Line {
        name: "detect_unreachable_seconds",
        value: detect,
        unit: "s",
        baseline: limit.as_secs_f64(),
    }
    .print();
    // Baseline: the grace a restarted master gives known agents (twice the Unreachable
    // limit); below 1 means every agent was back before any could be misjudged.
    Line {
        name: "master_recovery_seconds",
        value: recovery,
        unit: "s",
        baseline: 2.0 * limit.as_secs_f64(),
    }
    .print();
    Line {
        name: "join_rate",
        value: join_rate,
        unit: "agents/s",
        baseline: bare_rate,
    }
    .print();
    drop(agents);
    Ok(())
}
