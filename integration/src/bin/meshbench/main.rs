//! The end-to-end benchmark. `meshbench messaging` measures actormesh messaging between
//! two processes on loopback, and in the same run a raw-quinn baseline with the same
//! framing, TLS and transport settings; each result is printed as one JSON line with its
//! ratio to the baseline. Every figure is the median of several rounds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actormesh::prelude::*;
use actormesh::transport::frame::{push_frame, FrameReader};
use actormesh::transport::pki::Credentials;
use actormesh::transport::{tls, EndpointConfig};
use actormesh_integration::actors::{Echo, GetStats, Note, Sink};
use actormesh_integration::harness::ChildProc;
use actormesh_integration::pki::TestPki;
use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::stream::{FuturesUnordered, StreamExt};

mod authz;
mod cluster;
mod cpu;
mod gateway;
mod ha;
mod mesh;
mod scheduling;
mod telemetry;
mod turns;

pub(crate) const PAYLOAD: usize = 64;
/// Asks in flight in the pipelined measurements.
pub(crate) const PIPELINE: usize = 64;

#[derive(Parser, Debug)]
#[command(about = "actormesh end-to-end benchmark")]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand, Debug)]
enum Suite {
    /// Remote tell/ask and local ask, against raw quinn and plain actix.
    Messaging {
        /// Rounds per measurement; the median is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Scale of message counts (1.0 = default sizes).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// Scheduling: placement throughput and replacement time of actor deployments.
    Scheduling {
        /// Lightweight agents (in this process).
        #[arg(long, default_value_t = 100)]
        agents: usize,
        /// Actor instances to place.
        #[arg(long, default_value_t = 10_000)]
        instances: usize,
    },
    /// Cluster: failure detection, master recovery with 50 agents, join rate.
    Cluster {
        /// Agents for the recovery and join measurements.
        #[arg(long, default_value_t = 50)]
        agents: usize,
    },
    /// Mesh: calls by service name against direct calls, push convergence over 100
    /// proxies, an agent's memory with 100 endpoints.
    Mesh {
        /// Rounds per call measurement; the median is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Scale of call counts (1.0 = default sizes).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Lightweight nodes (in this process), each with its Proxy, for the push.
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Services in the registry during the push measurement.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Endpoint changes timed.
        #[arg(long, default_value_t = 100)]
        changes: usize,
        /// Endpoints on the agent whose memory is measured.
        #[arg(long, default_value_t = 100)]
        endpoints: usize,
        /// Heartbeat interval of the push cluster's agents, in ms (default: the master's).
        #[arg(long)]
        heartbeat_ms: Option<u64>,
        /// Only the push measurement.
        #[arg(long)]
        push_only: bool,
    },
    /// Highly available masters (needs ZooKeeper): kill -9 of the leading master with
    /// this many agents, to the standby leading with every agent back.
    Ha {
        /// Agents that fail over.
        #[arg(long, default_value_t = 50)]
        agents: usize,
        /// The ZooKeeper session timeout, in ms.
        #[arg(long, default_value_t = 2000)]
        session_ms: u64,
    },
    /// The HTTP ingress gateway (needs wrk): requests per second through it to a service
    /// on another node process, against an axum reverse proxy in front of an axum backend.
    Gateway {
        /// Rounds of each side; the median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds of each wrk run.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// wrk's open connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// (internal) A gateway node, for the gateway suite.
    #[command(hide = true)]
    GatewayProc {
        #[arg(long)]
        join: SocketAddr,
        #[arg(long)]
        token: String,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        http: SocketAddr,
    },
    /// (internal) The gateway suite's baseline backend.
    #[command(hide = true)]
    GatewayBackendProc {
        #[arg(long)]
        http: SocketAddr,
    },
    /// (internal) The gateway suite's baseline reverse proxy.
    #[command(hide = true)]
    GatewayProxyProc {
        #[arg(long)]
        http: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
    },
    /// (internal) A master of several on ZooKeeper, for the ha suite.
    #[command(hide = true)]
    HaMasterProc {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        bootstrap: SocketAddr,
        #[arg(long)]
        api: SocketAddr,
        #[arg(long)]
        zk: String,
        #[arg(long)]
        session_ms: u64,
        #[arg(long)]
        name: String,
    },
    /// (internal) An agent process hosting sinks, for the mesh suite.
    #[command(hide = true)]
    MeshAgentProc {
        #[arg(long)]
        join: SocketAddr,
        #[arg(long)]
        token: String,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
        /// Keep call figures and serve them at /metrics (on a port the system picks).
        #[arg(long)]
        metrics: bool,
        /// Trace (1 % of roots) and export spans over OTLP/HTTP here.
        #[arg(long)]
        otlp_endpoint: Option<String>,
    },
    /// (internal) A master process for the cluster suite.
    #[command(hide = true)]
    MasterProc {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        bootstrap: SocketAddr,
        #[arg(long)]
        api: SocketAddr,
    },
    /// (internal) An agent process for the cluster suite.
    #[command(hide = true)]
    AgentProc {
        #[arg(long)]
        join: SocketAddr,
        #[arg(long)]
        token: String,
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// (internal) The server process: a raw echo endpoint and a mesh node.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        certs: PathBuf,
        /// Serve only the raw endpoint, on a multi-thread tokio runtime.
        #[arg(long)]
        multi_thread: bool,
    },
}

fn main() -> anyhow::Result<()> {
    actormesh_cli::init_logging_with_default("warn", actormesh_cli::LogFormat::Text);
    match Cli::parse().suite {
        Suite::Messaging { rounds, scale } => messaging(rounds.max(1), scale),
        Suite::Cluster { agents } => cluster::run(agents.max(1)),
        Suite::Ha { agents, session_ms } => {
            ha::run(agents.max(1), Duration::from_millis(session_ms.max(500)))
        }
        Suite::Gateway {
            rounds,
            secs,
            connections,
        } => gateway::run(gateway::Settings {
            rounds: rounds.max(1),
            secs: secs.clamp(1, 60),
            connections: connections.clamp(1, 1000),
        }),
        Suite::GatewayProc {
            join,
            token,
            data_dir,
            http,
        } => gateway::gateway_proc(join, token, data_dir, http),
        Suite::GatewayBackendProc { http } => gateway::backend_proc(http),
        Suite::GatewayProxyProc { http, to } => gateway::proxy_proc(http, to),
        Suite::HaMasterProc {
            data_dir,
            listen,
            bootstrap,
            api,
            zk,
            session_ms,
            name,
        } => ha::master_proc(
            data_dir,
            [listen, bootstrap, api],
            zk,
            Duration::from_millis(session_ms),
            name,
        ),
        Suite::Scheduling { agents, instances } => scheduling::run(agents.max(1), instances.max(1)),
        Suite::Mesh {
            rounds,
            scale,
            nodes,
            services,
            changes,
            endpoints,
            heartbeat_ms,
            push_only,
        } => mesh::run(mesh::Settings {
            rounds: rounds.max(1),
            scale,
            nodes: nodes.max(1),
            services: services.max(1),
            changes: changes.max(1),
            endpoints: endpoints.max(1),
            heartbeat: heartbeat_ms.map(|ms| Duration::from_millis(ms.max(10))),
            push_only,
        }),
        Suite::MeshAgentProc {
            join,
            token,
            data_dir,
            name,
            role,
            metrics,
            otlp_endpoint,
        } => mesh::agent_proc(join, token, data_dir, name, role, metrics, otlp_endpoint),
        Suite::MasterProc {
            data_dir,
            listen,
            bootstrap,
            api,
        } => cluster::master_proc(data_dir, listen, bootstrap, api),
        Suite::AgentProc {
            join,
            token,
            data_dir,
        } => cluster::agent_proc(join, token, data_dir),
        Suite::Serve {
            certs,
            multi_thread: false,
        } => serve(&certs),
        Suite::Serve {
            certs,
            multi_thread: true,
        } => serve_raw_multi_thread(&certs),
    }
}

fn endpoint_config() -> EndpointConfig {
    actormesh::NodeConfig::new("127.0.0.1:0".parse().expect("address")).endpoint
}

// ---------------------------------------------------------------- server process

fn serve(certs: &Path) -> anyhow::Result<()> {
    let creds = Credentials::load(certs)?;
    let sys = actix::System::new();
    sys.block_on(async move {
        let raw = raw_server(&creds)?;
        let node = Node::start(actormesh::NodeConfig::new("127.0.0.1:0".parse()?), &creds)?;
        node.spawn_with(
            "bench",
            SpawnOptions {
                mailbox_capacity: Some(4096),
                ..Default::default()
            },
            Sink::default,
        )?;
        println!("READY {} {}", raw, node.local_addr());
        std::future::pending::<()>().await;
        anyhow::Ok(())
    })
}

fn serve_raw_multi_thread(certs: &Path) -> anyhow::Result<()> {
    let creds = Credentials::load(certs)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let raw = raw_server(&creds)?;
        println!("READY {raw} -");
        std::future::pending::<()>().await;
        anyhow::Ok(())
    })
}

/// CPU time (user + system) used so far by process `pid`, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    // Linux reports these in USER_HZ, which is 100 on every mainstream configuration.
    Duration::from_millis(ticks * 10)
}

/// The raw one-way and round-trip measurements with client and server both on
/// multi-thread tokio runtimes (2 workers): rate, p50 round trip, CPU per message.
fn raw_multi_thread(
    exe: &Path,
    server_dir: &Path,
    client_creds: Credentials,
    rounds: usize,
    oneway_n: usize,
    rtt_n: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut child = ChildProc::spawn(
            exe,
            &[
                "serve",
                "--multi-thread",
                "--certs",
                server_dir.to_str().context("path")?,
            ],
        )?;
        let ready = child
            .wait_line("READY", Duration::from_secs(30))
            .await
            .map_err(|e| anyhow!(e))?;
        let raw_addr: SocketAddr = ready
            .split_whitespace()
            .next()
            .context("raw address")?
            .parse()?;
        let pid = child.child.id().context("server pid")?;
        let (_, client_cfg) = quinn_configs(&client_creds)?;
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let conn = ep.connect_with(client_cfg, raw_addr, "actormesh")?.await?;
        let (mut rates, mut p50s) = (Vec::new(), Vec::new());
        let (mut cpu, mut msgs) = (Duration::ZERO, 0usize);
        for _ in 0..rounds {
            let before = cpu_time(pid) + cpu_time(std::process::id());
            rates.push(raw_oneway_rate(&conn, oneway_n).await?);
            cpu += cpu_time(pid) + cpu_time(std::process::id()) - before;
            msgs += oneway_n;
            p50s.push(percentile(&raw_latencies(&conn, rtt_n).await?, 0.5));
        }
        child.kill().await;
        anyhow::Ok((
            median(rates),
            median(p50s),
            cpu.as_nanos() as f64 / msgs as f64,
        ))
    })
}

fn quinn_configs(
    creds: &Credentials,
) -> anyhow::Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let certs = tls::CertStore::new(creds)?;
    let id = certs.current().identity.clone();
    let verifier = tls::SpiffeVerifier::new(&creds.trust, id.trust_domain())?;
    let (server_tls, client_tls) = tls::rustls_configs(certs, verifier)?;
    let transport = Arc::new(actormesh::transport::endpoint::transport_config(
        &endpoint_config(),
    )?);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)?,
    ));
    server.transport_config(transport.clone());
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)?,
    ));
    client.transport_config(transport);
    Ok((server, client))
}

/// Raw quinn server: on each bidi stream, the first byte picks echo (`E`) or count (`C`).
fn raw_server(creds: &Credentials) -> anyhow::Result<SocketAddr> {
    let (server, _) = quinn_configs(creds)?;
    let ep = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
    let addr = ep.local_addr()?;
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(raw_stream(send, recv));
                }
            });
        }
    });
    Ok(addr)
}

async fn raw_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut mode = [0u8; 1];
    if recv.read_exact(&mut mode).await.is_err() {
        return;
    }
    let mut reader = FrameReader::new(recv, 1 << 20);
    match mode[0] {
        b'E' => {
            let mut out = Vec::with_capacity(64 * 1024);
            while let Ok(Some(frame)) = reader.next().await {
                let _ = push_frame(&mut out, &frame, 1 << 20);
                while let Ok(Some(frame)) = reader.try_next_buffered() {
                    let _ = push_frame(&mut out, &frame, 1 << 20);
                }
                if send.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
        b'C' => {
            let mut n = 0u64;
            while let Ok(Some(_)) = reader.next().await {
                n += 1;
            }
            let _ = send.write_all(&n.to_le_bytes()).await;
            let _ = send.finish();
        }
        _ => {}
    }
}

// ---------------------------------------------------------------- driver

pub(crate) struct Line {
    pub(crate) name: &'static str,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    pub(crate) baseline: f64,
}

impl Line {
    pub(crate) fn print(&self) {
        let ratio = if self.baseline > 0.0 {
            self.value / self.baseline
        } else {
            0.0
        };
        println!(
            "{}",
            serde_json::json!({
                "name": self.name,
                "value": round3(self.value),
                "unit": self.unit,
                "baseline": round3(self.baseline),
                "ratio": round3(ratio),
            })
        );
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn messaging(rounds: usize, scale: f64) -> anyhow::Result<()> {
    let pki = TestPki::new("bench.local");
    let (server_dir, _) = pki.node("server");
    let (_, client_creds) = pki.node("client");
    let exe = std::env::current_exe()?;
    let sys = actix::System::new();
    sys.block_on(async move {
        let mut child = ChildProc::spawn(
            &exe,
            &["serve", "--certs", server_dir.to_str().context("path")?],
        )?;
        let ready = child
            .wait_line("READY", Duration::from_secs(30))
            .await
            .map_err(|e| anyhow!(e))?;
        let mut parts = ready.split_whitespace();
        let raw_addr: SocketAddr = parts.next().context("raw address")?.parse()?;
        let mesh_addr: SocketAddr = parts.next().context("mesh address")?.parse()?;
        let n = |base: f64| ((base * scale) as usize).max(1000);

        let (_, client_cfg) = quinn_configs(&client_creds)?;
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let conn = ep.connect_with(client_cfg, raw_addr, "actormesh")?.await?;
        let node = Node::start(
            actormesh::NodeConfig::new("127.0.0.1:0".parse()?),
            &client_creds,
        )?;
        let bench = node.actor_ref(mesh_addr, "bench");
        bench.ask(Echo(vec![0; PAYLOAD])).await?;

        let server_pid = child.child.id().context("server pid")?;
        let (mut ct_cpu, mut ct_msgs) = (Duration::ZERO, 0usize);
        let mut raw_oneway = Vec::new();
        let mut mesh_tell = Vec::new();
        let mut raw_pipe = Vec::new();
        let mut mesh_pipe = Vec::new();
        let mut raw_lat = Vec::new();
        let mut mesh_lat = Vec::new();
        // Interleave raw and mesh rounds so that machine noise hits both alike.
        for _ in 0..rounds {
            let before = cpu_time(server_pid) + cpu_time(std::process::id());
            raw_oneway.push(raw_oneway_rate(&conn, n(2_000_000.0)).await?);
            ct_cpu += cpu_time(server_pid) + cpu_time(std::process::id()) - before;
            ct_msgs += n(2_000_000.0);
            mesh_tell.push(mesh_tell_rate(&bench, n(500_000.0)).await?);
            raw_pipe.push(raw_pipelined_rate(&conn, n(300_000.0)).await?);
            mesh_pipe.push(mesh_pipelined_rate(&bench, n(200_000.0)).await?);
            raw_lat.push(raw_latencies(&conn, n(5_000.0)).await?);
            mesh_lat.push(mesh_latencies(&bench, n(5_000.0)).await?);
        }
        Line {
            name: "tell_throughput",
            value: median(mesh_tell),
            unit: "msg/s",
            baseline: median(raw_oneway.clone()),
        }
        .print();
        Line {
            name: "ask_pipelined_throughput",
            value: median(mesh_pipe),
            unit: "req/s",
            baseline: median(raw_pipe),
        }
        .print();
        for (name, p) in [
            ("ask_seq_p50", 0.5),
            ("ask_seq_p99", 0.99),
            ("ask_seq_p999", 0.999),
        ] {
            let value = median(mesh_lat.iter().map(|l| percentile(l, p)).collect());
            let baseline = median(raw_lat.iter().map(|l| percentile(l, p)).collect());
            Line {
                name,
                value,
                unit: "us",
                baseline,
            }
            .print();
        }
        let (local, actix_ns) = local_ask_latency(&node, rounds, n(200_000.0)).await?;
        Line {
            name: "local_ask_latency",
            value: local,
            unit: "ns",
            baseline: actix_ns,
        }
        .print();
        child.kill().await;

        // The same raw measurements on multi-thread runtimes, for the runtime choice.
        let ct_oneway = median(raw_oneway.clone());
        let ct_p50 = median(raw_lat.iter().map(|l| percentile(l, 0.5)).collect());
        let ct_cpu_per_msg = ct_cpu.as_nanos() as f64 / ct_msgs as f64;
        let (exe, dir) = (exe.clone(), server_dir.clone());
        let creds = client_creds.clone();
        let (oneway_n, rtt_n) = (n(2_000_000.0), n(5_000.0));
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(raw_multi_thread(&exe, &dir, creds, rounds, oneway_n, rtt_n));
        });
        let (mt_oneway, mt_p50, mt_cpu_per_msg) = rx.await.context("multi-thread run")??;
        Line {
            name: "raw_oneway_multi_thread",
            value: mt_oneway,
            unit: "msg/s",
            baseline: ct_oneway,
        }
        .print();
        Line {
            name: "raw_rtt_p50_multi_thread",
            value: mt_p50,
            unit: "us",
            baseline: ct_p50,
        }
        .print();
        Line {
            name: "raw_cpu_per_msg_multi_thread",
            value: mt_cpu_per_msg,
            unit: "ns",
            baseline: ct_cpu_per_msg,
        }
        .print();
        anyhow::Ok(())
    })
}

async fn raw_oneway_rate(conn: &quinn::Connection, n: usize) -> anyhow::Result<f64> {
    const BATCH: usize = 1024;
    let mut batch = Vec::new();
    for _ in 0..BATCH {
        push_frame(&mut batch, &[7u8; PAYLOAD], 1 << 20)?;
    }
    let batch = Bytes::from(batch);
    let (mut send, mut recv) = conn.open_bi().await?;
    let start = Instant::now();
    send.write_all(b"C").await?;
    let batches = n.div_ceil(BATCH);
    for _ in 0..batches {
        send.write_chunk(batch.clone()).await?;
    }
    send.finish()?;
    let mut count = [0u8; 8];
    recv.read_exact(&mut count).await?;
    let got = u64::from_le_bytes(count) as usize;
    anyhow::ensure!(got == batches * BATCH, "raw one-way: server counted {got}");
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

async fn raw_pipelined_rate(conn: &quinn::Connection, n: usize) -> anyhow::Result<f64> {
    let (mut send, recv) = conn.open_bi().await?;
    send.write_all(b"E").await?;
    let mut reader = FrameReader::new(recv, 1 << 20);
    let req = [9u8; PAYLOAD];
    let start = Instant::now();
    let mut out = Vec::new();
    for _ in 0..PIPELINE {
        push_frame(&mut out, &req, 1 << 20)?;
    }
    send.write_all(&out).await?;
    let (mut sent, mut done) = (PIPELINE, 0);
    while done < n {
        reader.next().await?.context("echo stream ended")?;
        done += 1;
        let mut more = 0;
        while let Some(_f) = reader.try_next_buffered()? {
            done += 1;
            more += 1;
        }
        out.clear();
        for _ in 0..(1 + more).min(n.saturating_sub(sent)) {
            push_frame(&mut out, &req, 1 << 20)?;
            sent += 1;
        }
        if !out.is_empty() {
            send.write_all(&out).await?;
        }
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    send.finish()?;
    Ok(rate)
}

async fn raw_latencies(conn: &quinn::Connection, n: usize) -> anyhow::Result<Vec<Duration>> {
    let (mut send, recv) = conn.open_bi().await?;
    send.write_all(b"E").await?;
    let mut reader = FrameReader::new(recv, 1 << 20);
    let mut frame = Vec::new();
    push_frame(&mut frame, &[1u8; PAYLOAD], 1 << 20)?;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        send.write_all(&frame).await?;
        reader.next().await?.context("echo stream ended")?;
        lat.push(t.elapsed());
    }
    send.finish()?;
    lat.sort();
    Ok(lat)
}

async fn mesh_tell_rate(bench: &RemoteRef, n: usize) -> anyhow::Result<f64> {
    let before = bench.ask(GetStats).await?.notes;
    let payload = vec![7u8; PAYLOAD];
    let start = Instant::now();
    for _ in 0..n {
        match bench.try_tell(Note(payload.clone())) {
            Ok(()) => {}
            Err(TellError::Full(m)) => bench.tell(m).await.map_err(|e| anyhow!("{e}"))?,
            Err(e) => return Err(anyhow!("{e}")),
        }
    }
    // The ask travels on the same lane, so its reply follows every tell above.
    let after = bench
        .ask_timeout(GetStats, Duration::from_secs(120))
        .await?
        .notes;
    let elapsed = start.elapsed();
    anyhow::ensure!(
        after - before == n as u64,
        "tells lost: {} of {n}",
        after - before
    );
    Ok(n as f64 / elapsed.as_secs_f64())
}

async fn mesh_pipelined_rate(bench: &RemoteRef, n: usize) -> anyhow::Result<f64> {
    let payload = vec![9u8; PAYLOAD];
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut sent = 0;
    let mut done = 0;
    while done < n {
        while inflight.len() < PIPELINE && sent < n {
            let r = bench.clone();
            let p = payload.clone();
            inflight.push(async move { r.ask(Echo(p)).await });
            sent += 1;
        }
        let reply = inflight.next().await.context("asks ran out")??;
        anyhow::ensure!(reply.len() == PAYLOAD, "bad echo");
        done += 1;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

async fn mesh_latencies(bench: &RemoteRef, n: usize) -> anyhow::Result<Vec<Duration>> {
    let payload = vec![1u8; PAYLOAD];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        bench.ask(Echo(payload.clone())).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(lat)
}

/// Mean ns per sequential ask: through `RemoteRef` to a local actor, and through plain
/// actix `Addr::send` to an identical actor.
async fn local_ask_latency(node: &Node, rounds: usize, n: usize) -> anyhow::Result<(f64, f64)> {
    let local = node.spawn("local-bench", Sink::default())?;
    let plain = actix::Actor::start(Sink::default());
    let mut mesh = Vec::new();
    let mut actix_ns = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        for i in 0..n {
            local.ask(Echo(vec![i as u8])).await?;
        }
        mesh.push(t.elapsed().as_nanos() as f64 / n as f64);
        let t = Instant::now();
        for i in 0..n {
            plain.send(Echo(vec![i as u8])).await?;
        }
        actix_ns.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    Ok((median(mesh), median(actix_ns)))
}
