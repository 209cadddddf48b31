//! `meshbench ha`: how long a standby master takes to lead, with every agent back, after
//! kill -9 of the leader. It needs ZooKeeper (Debian's `zookeeper`): a three-server
//! ensemble on loopback. The masters are processes (`ha-master-proc`); the agents run in
//! this process, each with its own node, speaking the real protocol over QUIC.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use actormesh::agent::{self, AgentConfig};
use actormesh_cli::ApiClient;
use actormesh_integration::harness::ChildProc;
use actormesh_integration::zk::Ensemble;
use actormesh_master::membership::{AgentRecord, AgentState};
use actormesh_master::state::zk::{parse_auth, ZkAddress};
use actormesh_master::state::ZkConfig;
use actormesh_master::MasterConfig;
use anyhow::{anyhow, Context as _};

use crate::cluster::free_udp;
use crate::Line;

/// The digest credentials the bench's masters share.
const AUTH: &str = "meshbench:ha";

/// A master of several on `zk`: prints `STANDBY`, then `READY <api token file>` once it
/// leads.
pub fn master_proc(
    data_dir: PathBuf,
    addrs: [SocketAddr; 3],
    zk: String,
    session: Duration,
    name: String,
) -> anyhow::Result<()> {
    actix::System::new().block_on(async move {
        let mut config = MasterConfig::new(data_dir);
        [config.listen, config.bootstrap, config.api] = addrs;
        config.detector.heartbeat_interval = Duration::from_millis(100);
        config.detector.unreachable_after = Duration::from_secs(5);
        let zk = ZkConfig {
            address: ZkAddress::parse(&zk).map_err(|e| anyhow!(e))?,
            auth: parse_auth(AUTH).map_err(|e| anyhow!(e))?,
            session_timeout: session,
        };
        println!("STANDBY");
        let (m, _leadership) = actormesh_cli::ha::lead(config, zk, name).await?;
        println!("READY {}", m.api_token_file.display());
        let why = m.stepped_down().await;
        anyhow::bail!(why)
    })
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
}

struct HaMaster {
    proc: ChildProc,
    addrs: [SocketAddr; 3],
}

fn spawn_master(dir: &Path, zk: &str, session: Duration, name: &str) -> anyhow::Result<HaMaster> {
    let addrs = [free_udp(), free_udp(), free_tcp()];
    let exe = std::env::current_exe()?;
    let args = [
        "ha-master-proc".to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--listen".into(),
        addrs[0].to_string(),
        "--bootstrap".into(),
        addrs[1].to_string(),
        "--api".into(),
        addrs[2].to_string(),
        "--zk".into(),
        zk.to_string(),
        "--session-ms".into(),
        session.as_millis().to_string(),
        "--name".into(),
        name.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(HaMaster {
        proc: ChildProc::spawn(&exe, &args)?,
        addrs,
    })
}

impl HaMaster {
    /// Waits until it leads; its API client.
    async fn leading(&mut self, limit: Duration) -> anyhow::Result<ApiClient> {
        let token_file = self
            .proc
            .wait_line("READY", limit)
            .await
            .map_err(|e| anyhow!("the master did not lead: {e}"))?;
        let token = std::fs::read_to_string(token_file)?;
        Ok(ApiClient::new(&format!("http://{}", self.addrs[2]), &token))
    }
}

fn nodes(api: &ApiClient) -> anyhow::Result<Vec<AgentRecord>> {
    Ok(serde_json::from_value(api.call(
        "GET",
        "/v1/nodes",
        None,
    )?)?)
}

pub fn run(n_agents: usize, session: Duration) -> anyhow::Result<()> {
    if !Ensemble::available() {
        anyhow::bail!(
            "meshbench ha needs ZooKeeper: install Debian's zookeeper package (the test command does); the other suites do not need it"
        );
    }
    let dir = std::env::temp_dir().join(format!("meshbench-ha-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let ensemble = Ensemble::start(&dir.join("zk"), 3).map_err(|e| anyhow!(e))?;
    let zk = format!("{}/meshbench", ensemble.connect_string());
    let result = actix::System::new().block_on(run_in(dir.clone(), zk, n_agents, session));
    drop(ensemble);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(
    dir: PathBuf,
    zk: String,
    n_agents: usize,
    session: Duration,
) -> anyhow::Result<()> {
    let mut m1 = spawn_master(&dir.join("m1"), &zk, session, "m1")?;
    let api1 = m1.leading(Duration::from_secs(30)).await?;
    let mut m2 = spawn_master(&dir.join("m2"), &zk, session, "m2")?;
    m2.proc
        .wait_line("STANDBY", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!(e))?;
    let token = api1.call(
        "POST",
        "/v1/tokens",
        Some(serde_json::json!({ "ttl_secs": 3600 })),
    )?["token"]
        .as_str()
        .context("token")?
        .to_string();
    let starts = (0..n_agents).map(|i| {
        let config = AgentConfig::new(m1.addrs[1], dir.join(format!("a{i}")))
            .also_join([m2.addrs[1]])
            .token(token.clone())
            .name(format!("a{i}"))
            .resources("cpus:1;mem:512".parse().expect("resources"));
        agent::start(config)
    });
    let agents: Vec<_> = futures::future::join_all(starts)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let ids: Vec<String> = agents.iter().map(|a| a.agent_id.clone()).collect();

    // kill -9 the leader; time until the standby leads and every agent heartbeats to it.
    m1.proc.kill().await;
    let killed = Instant::now();
    let killed_at = SystemTime::now();
    let api2 = m2.leading(Duration::from_secs(60)).await?;
    let led = killed.elapsed();
    loop {
        let all_back = nodes(&api2).is_ok_and(|ns| {
            ids.iter().all(|id| {
                ns.iter().any(|n| {
                    &n.id == id
                        && n.state == AgentState::Active
                        && n.last_heartbeat.is_some_and(|h| h > killed_at)
                })
            })
        });
        if all_back {
            break;
        }
        if killed.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("the agents were not all back at the new leader within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failover = killed.elapsed();
    // The ratio is to the ZooKeeper session timeout: the dead leader's candidacy lives
    // that long, so no failover on ZooKeeper can be much faster.
    Line {
        name: "master_failover_seconds",
        value: failover.as_secs_f64(),
        unit: "s",
        baseline: session.as_secs_f64(),
    }
    .print();
    Line {
        name: "master_failover_new_leader_seconds",
        value: led.as_secs_f64(),
        unit: "s",
        baseline: session.as_secs_f64(),
    }
    .print();
    drop(agents);
    Ok(())
}
