//! `meshbench mesh`: calls by service name against direct calls to the same actor, the
//! registry's push to 100 proxies, and what serving endpoints costs an agent in memory.
//!
//! - Calls: a master in this process on its own thread, an agent process that serves the
//!   endpoint (one instance of a deployment with `service: { locality: false }`), and a
//!   caller agent in this process that is given no endpoint. By-name asks (`ServiceRef`)
//!   and direct asks (`RemoteRef` to the same instance) from the same node alternate round
//!   by round, as the messaging suite alternates raw quinn and actormesh.
//! - Policy: by-name asks to a second service alike but for its Route (a split, a
//!   timeout, retries) and DestinationPolicy (subsets, a breaker, outlier detection),
//!   against by-name asks with no policy, alternating the same way; nothing fires.
//! - Memory: two agent processes alike but for one attribute; a deployment places 100
//!   instances, endpoints of one service, on one of them; VmRSS of each.
//! - Push: a fresh master thread, 100 lightweight agents in this process (each its own
//!   node and Proxy on loopback QUIC), 1,000 services their nodes registered; 100 endpoint
//!   registrations one after the other, each timed from the request until the last proxy
//!   applied the version that carries it. `MESHBENCH_TRACE=1` prints each change's times
//!   to stderr.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::Addr;
use actormesh::agent::{self, tasks::ActorHost, AgentConfig, AgentHandle};
use actormesh::mesh::{Endpoint, ServiceName};
use actormesh_integration::actors::{Echo, Sink};
use actormesh_integration::harness::ChildProc;
use actormesh_master::{
    self as master, ApplyDeployment, ApplyTraffic, ListProxyStatus, Master, MasterConfig,
    ServiceEndpoints,
};
use anyhow::{anyhow, Context as _};

use crate::authz::AUTHZ_TENANT;
use crate::cpu::{cpu_at_rate, thread_cpu, RateTarget};
use crate::telemetry::{receiver_thread, tracing_to};
use crate::turns::{paired_latencies, paired_rates};
use crate::{median, percentile, Line, PAYLOAD};

/// The namespace of every service the suite makes.
pub(crate) const NAMESPACE: &str = "bench";
/// The longest a single call may take before the run fails.
pub(crate) const CALL_LIMIT: Duration = Duration::from_secs(10);
/// The longest one measurement loop may take before the run fails.
pub(crate) const LOOP_LIMIT: Duration = Duration::from_secs(120);
/// The longest one endpoint change may take to reach every proxy before the run fails.
const CHANGE_LIMIT: Duration = Duration::from_secs(10);
/// Agents started at once while the push cluster comes up.
const JOIN_BATCH: usize = 25;

/// The suite's settings.
pub struct Settings {
    pub rounds: usize,
    pub scale: f64,
    pub nodes: usize,
    pub services: usize,
    pub changes: usize,
    pub endpoints: usize,
    /// The push cluster's heartbeat interval (`None`: the master's default).
    pub heartbeat: Option<Duration>,
    /// Only the push measurement.
    pub push_only: bool,
}

pub fn run(s: Settings) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("meshbench-mesh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = actix::System::new().block_on(run_in(dir.clone(), s));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: PathBuf, s: Settings) -> anyhow::Result<()> {
    // Each phase prints its lines as it ends, so that one that fails loses no other.
    if s.push_only {
        return push_lines(&dir, &s).await;
    }
    let calls = calls_and_memory(&dir.join("calls"), &s).await?;

    for (name, p) in [("mesh_ask_seq_p50", 0.5), ("mesh_ask_seq_p99", 0.99)] {
        Line {
            name,
            value: median(calls.by_name_lat.iter().map(|l| percentile(l, p)).collect()),
            unit: "us",
            baseline: median(calls.direct_lat.iter().map(|l| percentile(l, p)).collect()),
        }
        .print();
    }
    Line {
        name: "mesh_policy_overhead_p50",
        value: median(
            calls
                .policy_lat
                .iter()
                .map(|l| percentile(l, 0.5))
                .collect(),
        ),
        unit: "us",
        baseline: median(calls.plain_lat.iter().map(|l| percentile(l, 0.5)).collect()),
    }
    .print();
    for (name, authz, open) in [
        ("mesh_authz_overhead_p50", &calls.authz_lat, &calls.open_lat),
        (
            "mesh_authz_overhead_p50_distinct_principals",
            &calls.authz_lat_distinct,
            &calls.open_lat_distinct,
        ),
        (
            "mesh_authz_overhead_p50_globs_unindexed",
            &calls.authz_lat_globs,
            &calls.open_lat_globs,
        ),
    ] {
        Line {
            name,
            value: median(authz.iter().map(|l| percentile(l, 0.5)).collect()),
            unit: "us",
            baseline: median(open.iter().map(|l| percentile(l, 0.5)).collect()),
        }
        .print();
    }
    Line {
        name: "mesh_ask_pipelined_throughput",
        value: median(calls.by_name_pipe),
        unit: "req/s",
        baseline: median(calls.direct_pipe),
    }
    .print();
    // CPU seconds per second of the calling node's thread and the serving node's process
    // together at 1,000 calls/s (ztunnel: 0.06 vCPU at 1,000 rps), beside direct asks.
    Line {
        name: "proxy_cpu_per_1000rps",
        value: median(calls.cpu_by_name),
        unit: "cpu-s/s",
        baseline: median(calls.cpu_direct),
    }
    .print();
    // Call figures kept on both nodes and /metrics served (no scrapes during the run), and
    // 1 % of the calls traced, their spans exported over OTLP/HTTP to a local receiver.
    Line {
        name: "mesh_ask_pipelined_throughput_metrics_on",
        value: median(calls.figures_on_pipe),
        unit: "req/s",
        baseline: median(calls.figures_off_pipe),
    }
    .print();
    Line {
        name: "node_rss_mb_100_endpoints",
        value: calls.rss_serving_mib,
        unit: "MiB",
        baseline: calls.rss_idle_mib,
    }
    .print();
    push_lines(&dir, &s).await
}

async fn push_lines(dir: &Path, s: &Settings) -> anyhow::Result<()> {
    let push = push_convergence(&dir.join("push"), s).await?;
    // Baseline: the same change's time to the first proxy, so the ratio is what fanning
    // out to every proxy adds over reaching one.
    Line {
        name: "push_converged_p99_ms",
        value: p99_ms(push.last),
        unit: "ms",
        baseline: p99_ms(push.first),
    }
    .print();
    // The master's own view (proxy-status): from the change at the master to the last
    // acknowledgement; baseline the coalescing window every push waits out first.
    Line {
        name: "push_acked_p99_ms",
        value: p99_ms(push.acked),
        unit: "ms",
        baseline: push.window.as_secs_f64() * 1e3,
    }
    .print();
    Ok(())
}

// ---------------------------------------------------------------- the cluster pieces

/// A master in this process on a thread of its own (its own actix system), so that its
/// work does not share the thread of the agents measured.
pub(crate) struct MasterThread {
    master: Addr<Master>,
    pub(crate) bootstrap: SocketAddr,
    pub(crate) token: String,
    window: Duration,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

type Started = (
    Addr<Master>,
    SocketAddr,
    String,
    Duration,
    tokio::sync::oneshot::Sender<()>,
);

impl MasterThread {
    pub(crate) fn start(dir: PathBuf, heartbeat: Option<Duration>) -> anyhow::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<anyhow::Result<Started>>();
        std::thread::Builder::new()
            .name("master".into())
            .spawn(move || {
                actix::System::new().block_on(async move {
                    let mut config = MasterConfig::new(dir);
                    config.listen = "127.0.0.1:0".parse().expect("address");
                    config.bootstrap = "127.0.0.1:0".parse().expect("address");
                    config.api = "127.0.0.1:0".parse().expect("address");
                    if let Some(every) = heartbeat {
                        config.detector.heartbeat_interval = every;
                        // Eight missed beats, as the default (250 ms, 2 s).
                        config.detector.unreachable_after = every * 8;
                    }
                    let window = config.push_window;
                    let started = async {
                        let m = master::start(config).await?;
                        let token = m.agent_token(Duration::from_secs(3600)).await?;
                        anyhow::Ok((m, token))
                    }
                    .await;
                    match started {
                        Ok((m, token)) => {
                            let (stop, stopped) = tokio::sync::oneshot::channel();
                            let _ =
                                tx.send(Ok((m.master.clone(), m.bootstrap, token, window, stop)));
                            // Until the suite is done with this master.
                            let _ = stopped.await;
                            m.node.shutdown();
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })
            })?;
        let (master, bootstrap, token, window, stop) =
            rx.recv_timeout(Duration::from_secs(60))
                .context("the master did not start within 60 s")??;
        Ok(Self {
            master,
            bootstrap,
            token,
            window,
            stop: Some(stop),
        })
    }

    fn agent_config(&self, dir: &Path, name: &str, role: &str, host: ActorHost) -> AgentConfig {
        agent_config(
            self.bootstrap,
            self.token.clone(),
            dir.join(name),
            name,
            role,
            host,
        )
    }

    async fn endpoints(&self, service: &ServiceName) -> anyhow::Result<Vec<Endpoint>> {
        // Not found yet is no endpoint yet.
        Ok(self
            .master
            .send(ServiceEndpoints(service.clone()))
            .await?
            .map(|s| s.endpoints)
            .unwrap_or_default())
    }

    /// Polls (every 20 ms, at most `limit`) until `service` has `want` endpoints.
    pub(crate) async fn until_endpoints(
        &self,
        service: &ServiceName,
        want: usize,
        limit: Duration,
    ) -> anyhow::Result<Vec<Endpoint>> {
        let start = Instant::now();
        loop {
            let eps = self.endpoints(service).await?;
            if eps.len() >= want {
                return Ok(eps);
            }
            if start.elapsed() > limit {
                anyhow::bail!(
                    "{service} has {} of {want} endpoints after {limit:?}",
                    eps.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls (every 20 ms, at most `limit`) until at least `proxies` proxies are subscribed
    /// (the master's own node may be one more) and all applied the registry's current
    /// version; that version.
    async fn until_converged(&self, proxies: usize, limit: Duration) -> anyhow::Result<u64> {
        let start = Instant::now();
        loop {
            let s = self.master.send(ListProxyStatus).await?;
            let done = s
                .proxies
                .iter()
                .filter(|p| p.applied == Some(s.version))
                .count();
            if s.proxies.len() >= proxies && done == s.proxies.len() {
                return Ok(s.version);
            }
            if start.elapsed() > limit {
                let nodes: Vec<&str> = s.proxies.iter().map(|p| p.node.as_str()).collect();
                anyhow::bail!(
                    "{done} of {proxies} proxies at version {} after {limit:?} ({} subscribed: {nodes:?})",
                    s.version,
                    s.proxies.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn apply(&self, manifest: String) -> anyhow::Result<()> {
        self.master
            .send(ApplyDeployment(manifest))
            .await?
            .map_err(|e| anyhow!("deployment refused: {e}"))?;
        Ok(())
    }

    /// Applies a Route or DestinationPolicy; its analyze warnings are errors here.
    pub(crate) async fn apply_traffic(&self, manifest: String) -> anyhow::Result<()> {
        let applied = self
            .master
            .send(ApplyTraffic(manifest))
            .await?
            .map_err(|e| anyhow!("traffic policy refused: {e}"))?;
        anyhow::ensure!(
            applied.warnings.is_empty(),
            "{}: {:?}",
            applied.applied,
            applied.warnings
        );
        Ok(())
    }
}

impl Drop for MasterThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn agent_config(
    join: SocketAddr,
    token: String,
    data_dir: PathBuf,
    name: &str,
    role: &str,
    host: ActorHost,
) -> AgentConfig {
    AgentConfig {
        join,
        also_join: Vec::new(),
        token: Some(token),
        data_dir,
        listen: "127.0.0.1:0".parse().expect("address"),
        name: name.to_string(),
        // Room for the memory measurement's instances (0.1 cpu each).
        resources: Some("cpus:16;mem:4096".parse().expect("resources")),
        attrs: BTreeMap::from([("role".to_string(), role.to_string())]),
        actor_types: Vec::new(),
        reserved: Default::default(),
        metrics_listen: None,
        access_log: None,
        tracing: None,
        host,
    }
}

/// An actor deployment of `replicas` sinks on the agents of role `role`, serving the
/// service `bench/<name>` with locality off.
pub(crate) fn manifest(name: &str, replicas: usize, role: &str) -> String {
    format!(
        r#"{{"kind":"Deployment","name":"{name}","namespace":"{NAMESPACE}","spec":{{"actor":"sink","version":"v1","replicas":{replicas},"resources":{{"need":"cpus:0.1;mem:1"}},"constraints":{{"node_selector":{{"role":"{role}"}}}},"service":{{"locality":false}}}}}}"#
    )
}

/// The route of `bench/echo-policy`: a split over two subsets, a timeout, retries.
const ROUTE: &str = r#"{"kind":"Route","name":"echo-policy","namespace":"bench","spec":{"service":"echo-policy","rules":[{"split":[{"subset":"a","weight":50},{"subset":"b","weight":50}],"timeout":"10s","retries":{"attempts":2,"per_try_timeout":"5s","on":["unreachable","timeout"]}}]}}"#;

/// Its policy: two subsets (both hold the one endpoint), a breaker, outlier detection.
const POLICY: &str = r#"{"kind":"DestinationPolicy","name":"echo-policy","namespace":"bench","spec":{"service":"echo-policy","subsets":[{"name":"a","labels":{"version":"v1"}},{"name":"b","labels":{"version":"v1"}}],"circuit_breaker":{},"outlier_detection":{}}}"#;

pub(crate) fn service_name(name: &str) -> ServiceName {
    ServiceName {
        namespace: NAMESPACE.to_string(),
        name: name.to_string(),
    }
}

/// (internal) An agent process hosting sinks, with attribute `role`.
pub fn agent_proc(
    join: SocketAddr,
    token: String,
    data_dir: PathBuf,
    name: String,
    role: String,
    metrics: bool,
    otlp_endpoint: Option<String>,
) -> anyhow::Result<()> {
    actix::System::new().block_on(async move {
        let host = ActorHost::new().with("sink", Sink::default);
        let mut config = agent_config(join, token, data_dir, &name, &role, host);
        if metrics {
            config.metrics_listen = Some("127.0.0.1:0".parse().expect("address"));
        }
        if let Some(url) = otlp_endpoint {
            config.tracing = Some(tracing_to(&url, &name)?);
        }
        let a = agent::start(config).await?;
        println!("READY {}", a.agent_id);
        std::future::pending::<()>().await;
        anyhow::Ok(())
    })
}

pub(crate) async fn spawn_agent_proc(
    exe: &Path,
    m: &MasterThread,
    dir: &Path,
    name: &str,
    metrics: bool,
) -> anyhow::Result<ChildProc> {
    spawn_agent_proc_with(exe, m, dir, name, metrics, None).await
}

async fn spawn_agent_proc_with(
    exe: &Path,
    m: &MasterThread,
    dir: &Path,
    name: &str,
    metrics: bool,
    otlp: Option<&str>,
) -> anyhow::Result<ChildProc> {
    let (join, data) = (
        m.bootstrap.to_string(),
        dir.join(name).display().to_string(),
    );
    let mut args = vec![
        "mesh-agent-proc",
        "--join",
        &join,
        "--token",
        &m.token,
        "--data-dir",
        &data,
        "--name",
        name,
        "--role",
        name,
    ];
    if metrics {
        args.push("--metrics");
    }
    if let Some(url) = otlp {
        args.extend(["--otlp-endpoint", url]);
    }
    let mut child = ChildProc::spawn(exe, &args)?;
    child
        .wait_line("READY", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!("agent process {name}: {e}"))?;
    Ok(child)
}

/// Resident memory of process `pid` in MiB (VmRSS).
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib / 1024.0)
}

// ---------------------------------------------------------------- calls and memory

struct CallFigures {
    direct_lat: Vec<Vec<Duration>>,
    by_name_lat: Vec<Vec<Duration>>,
    /// By name to a service with no policy, paired with…
    plain_lat: Vec<Vec<Duration>>,
    /// …by name to a like service through a route and a policy that never fire.
    policy_lat: Vec<Vec<Duration>>,
    /// By name, with metadata, to a service with no AuthorizationPolicy, paired with…
    open_lat: Vec<Vec<Duration>>,
    /// …the same call to a like service under 100 policies of 10 rules, every rule
    /// naming the caller's principal with a `when` on the metadata, the allowing rule the
    /// last one (each rule could match on its principal, so each is a candidate).
    authz_lat: Vec<Vec<Duration>>,
    /// The same pair, the 1,000 rules each naming another principal but the last.
    open_lat_distinct: Vec<Vec<Duration>>,
    authz_lat_distinct: Vec<Vec<Duration>>,
    /// The same pair, every rule's principal and `when` value a glob: nothing to index,
    /// so the call walks all 1,000 rules.
    open_lat_globs: Vec<Vec<Duration>>,
    authz_lat_globs: Vec<Vec<Duration>>,
    direct_pipe: Vec<f64>,
    by_name_pipe: Vec<f64>,
    /// CPU seconds per second of the caller's thread and the server process at 1,000
    /// calls/s by name, paired with…
    cpu_by_name: Vec<f64>,
    /// …the same with direct asks.
    cpu_direct: Vec<f64>,
    /// By name between nodes that keep no figures, paired with…
    figures_off_pipe: Vec<f64>,
    /// …by name between like nodes that keep them and serve /metrics.
    figures_on_pipe: Vec<f64>,
    rss_idle_mib: f64,
    rss_serving_mib: f64,
}

async fn calls_and_memory(dir: &Path, s: &Settings) -> anyhow::Result<CallFigures> {
    let exe = std::env::current_exe()?;
    let m = MasterThread::start(dir.join("master"), None)?;
    let mut server = spawn_agent_proc(&exe, &m, dir, "server", false).await?;
    // The caller hosts nothing, so it is given no endpoint: every call by name is remote.
    let caller = agent::start(m.agent_config(dir, "caller", "caller", ActorHost::new()))
        .await
        .context("the caller agent")?;

    let echo = service_name("echo");
    m.apply(manifest("echo", 1, "server")).await?;
    let eps = m.until_endpoints(&echo, 1, Duration::from_secs(60)).await?;
    let ep = &eps[0];
    let direct = caller.node.actor_ref(ep.addr, &ep.actor);
    let by_name = caller.mesh().service(&echo.to_string())?;
    // The caller's proxy learns of the endpoint a push after the master's registry.
    let start = Instant::now();
    while by_name
        .ask_timeout(Echo(vec![0; PAYLOAD]), CALL_LIMIT)
        .await
        .is_err()
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "{echo} not callable by name within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    direct
        .ask_timeout(Echo(vec![0; PAYLOAD]), CALL_LIMIT)
        .await?;

    // The same actor type on the same agent, as a second service with a Route (a split,
    // a timeout, retries) and a DestinationPolicy (subsets, a breaker, outlier detection).
    let policed = service_name("echo-policy");
    m.apply(manifest("echo-policy", 1, "server")).await?;
    m.until_endpoints(&policed, 1, Duration::from_secs(60))
        .await?;
    m.apply_traffic(POLICY.to_string()).await?;
    m.apply_traffic(ROUTE.to_string()).await?;
    let with_policy = caller.mesh().service(&policed.to_string())?;
    let start = Instant::now();
    while caller
        .mesh()
        .proxy_config()
        .services
        .iter()
        .find(|s| s.name == policed)
        .is_none_or(|s| s.traffic.route.is_none() || s.endpoints.is_empty())
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "{policed} with its route not at the caller within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    with_policy
        .ask_timeout(Echo(vec![0; PAYLOAD]), CALL_LIMIT)
        .await?;

    // Two more like services, each under 100 AuthorizationPolicies of 10 rules with `when`
    // conditions; the call carries the metadata that the last rule of the last policy
    // allows. The baseline is the plain service called with the same metadata.
    let authz_refs = crate::authz::services(&m, &caller).await?;
    let open_with_meta = by_name
        .clone()
        .with_options(actormesh::mesh::CallOptions::default().metadata("tenant", AUTHZ_TENANT));

    // A caller and a server that keep call figures and serve /metrics, beside the pair
    // that keep none: the same service, actor and deployment shape.
    // Both trace 1 % of their roots and export the spans over OTLP/HTTP to a receiver.
    let receiver = receiver_thread()?;
    let url = receiver.endpoint();
    let mut server_m = spawn_agent_proc_with(&exe, &m, dir, "server-m", true, Some(&url)).await?;
    let mut caller_config = m.agent_config(dir, "caller-m", "caller-m", ActorHost::new());
    caller_config.metrics_listen = Some("127.0.0.1:0".parse().expect("address"));
    caller_config.tracing = Some(tracing_to(&url, "caller-m")?);
    let caller_m = agent::start(caller_config)
        .await
        .context("the caller agent with metrics")?;
    let counted = service_name("echo-m");
    m.apply(manifest("echo-m", 1, "server-m")).await?;
    m.until_endpoints(&counted, 1, Duration::from_secs(60))
        .await?;
    let with_figures = caller_m.mesh().service(&counted.to_string())?;
    let start = Instant::now();
    while with_figures
        .ask_timeout(Echo(vec![0; PAYLOAD]), CALL_LIMIT)
        .await
        .is_err()
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "{counted} not callable by name within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::ensure!(
        caller_m.node.keeps_figures() && !caller.node.keeps_figures(),
        "the caller with metrics keeps figures, the other does not"
    );

    let n = |base: f64| ((base * s.scale) as usize).max(1000);
    let mut f = CallFigures {
        direct_lat: Vec::new(),
        by_name_lat: Vec::new(),
        plain_lat: Vec::new(),
        policy_lat: Vec::new(),
        open_lat: Vec::new(),
        authz_lat: Vec::new(),
        open_lat_distinct: Vec::new(),
        authz_lat_distinct: Vec::new(),
        open_lat_globs: Vec::new(),
        authz_lat_globs: Vec::new(),
        direct_pipe: Vec::new(),
        by_name_pipe: Vec::new(),
        cpu_by_name: Vec::new(),
        cpu_direct: Vec::new(),
        figures_off_pipe: Vec::new(),
        figures_on_pipe: Vec::new(),
        rss_idle_mib: 0.0,
        rss_serving_mib: 0.0,
    };
    let direct_ask = |p| direct.ask_timeout(Echo(p), CALL_LIMIT);
    let by_name_ask = |p| by_name.ask_timeout(Echo(p), CALL_LIMIT);
    // Interleaved in short runs (a hundred sequential asks, a tenth of a pipelined
    // round), the order swapped every run, so that the machine's noise, which changes
    // over seconds on these machines, hits both alike.
    for _ in 0..s.rounds {
        let (d, b) = paired_latencies(n(5_000.0), direct_ask, by_name_ask).await?;
        f.direct_lat.push(d);
        f.by_name_lat.push(b);
        let (d, b) = paired_rates(n(100_000.0), direct_ask, by_name_ask).await?;
        f.direct_pipe.push(d);
        f.by_name_pipe.push(b);
        // CPU at a fixed rate: by name, then direct, the order swapped every round.
        let server_pid = server.child.id().context("the server's pid")?;
        let span = Duration::from_secs_f64((2.0 * s.scale).max(1.0));
        let first_by_name = f.cpu_by_name.len().is_multiple_of(2);
        for by_name_now in [first_by_name, !first_by_name] {
            if by_name_now {
                let t = RateTarget::ByName(by_name.clone());
                f.cpu_by_name.push(cpu_at_rate(span, server_pid, t).await?);
            } else {
                let t = RateTarget::Direct(direct.clone());
                f.cpu_direct.push(cpu_at_rate(span, server_pid, t).await?);
            }
        }
        let figures_ask = |p| with_figures.ask_timeout(Echo(p), CALL_LIMIT);
        let (off, on) = paired_rates(n(100_000.0), by_name_ask, figures_ask).await?;
        f.figures_off_pipe.push(off);
        f.figures_on_pipe.push(on);
        let policy_ask = |p| with_policy.ask_timeout(Echo(p), CALL_LIMIT);
        let (plain, policed) = paired_latencies(n(5_000.0), by_name_ask, policy_ask).await?;
        f.plain_lat.push(plain);
        f.policy_lat.push(policed);
        let open_ask = |p| open_with_meta.ask_timeout(Echo(p), CALL_LIMIT);
        let authz_ask = |p| authz_refs[0].ask_timeout(Echo(p), CALL_LIMIT);
        let (open, authz) = paired_latencies(n(5_000.0), open_ask, authz_ask).await?;
        f.open_lat.push(open);
        f.authz_lat.push(authz);
        let distinct_ask = |p| authz_refs[1].ask_timeout(Echo(p), CALL_LIMIT);
        let (open, authz) = paired_latencies(n(5_000.0), open_ask, distinct_ask).await?;
        f.open_lat_distinct.push(open);
        f.authz_lat_distinct.push(authz);
        let globs_ask = |p| authz_refs[2].ask_timeout(Echo(p), CALL_LIMIT);
        let (open, authz) = paired_latencies(n(5_000.0), open_ask, globs_ask).await?;
        f.open_lat_globs.push(open);
        f.authz_lat_globs.push(authz);
    }
    // The traced calls' spans reached the receiver (both sides of each traced call).
    let start = Instant::now();
    while receiver.received() == 0 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "no span exported from the traced calls"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server_m_pid = server_m.child.id().context("the server's pid")?;
    eprintln!(
        "metrics-on measurement: {} spans exported in {} requests; CPU of the exporters {:.3} s (caller {:.3} s, server {:.3} s), of the receiver {:.3} s",
        receiver.received(),
        receiver.requests(),
        thread_cpu(None, "otlp-export") + thread_cpu(Some(server_m_pid), "otlp-export"),
        thread_cpu(None, "otlp-export"),
        thread_cpu(Some(server_m_pid), "otlp-export"),
        thread_cpu(None, "otlp-receiver"),
    );
    let (idle, serving) = memory(&exe, &m, dir, &caller, s.endpoints).await?;
    f.rss_idle_mib = idle;
    f.rss_serving_mib = serving;
    server.kill().await;
    server_m.kill().await;
    caller.node.shutdown();
    caller_m.node.shutdown();
    Ok(f)
}

/// Two agent processes alike but for their `role`; `endpoints` instances of a service go
/// to one. Their resident memory once every instance answers and both proxies hold the
/// service: (idle, serving), in MiB, each the median of 5 samples.
async fn memory(
    exe: &Path,
    m: &MasterThread,
    dir: &Path,
    caller: &AgentHandle,
    endpoints: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut idle = spawn_agent_proc(exe, m, dir, "idle", false).await?;
    let mut serving = spawn_agent_proc(exe, m, dir, "serving", false).await?;
    let service = service_name("resident");
    m.apply(manifest("resident", endpoints, "serving")).await?;
    let eps = m
        .until_endpoints(&service, endpoints, Duration::from_secs(120))
        .await?;
    // Every instance serves: one call to each.
    for ep in &eps {
        caller
            .node
            .actor_ref(ep.addr, &ep.actor)
            .ask_timeout(Echo(vec![1; PAYLOAD]), CALL_LIMIT)
            .await
            .with_context(|| format!("endpoint {}", ep.id))?;
    }
    // Every proxy (the echo server's, the caller's, the idle and the serving agent's)
    // holds the service.
    m.until_converged(4, Duration::from_secs(60)).await?;
    let (idle_pid, serving_pid) = (
        idle.child.id().context("idle pid")?,
        serving.child.id().context("serving pid")?,
    );
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        a.push(rss_mib(idle_pid)?);
        b.push(rss_mib(serving_pid)?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    idle.kill().await;
    serving.kill().await;
    Ok((median(a), median(b)))
}

// ---------------------------------------------------------------- push

struct PushFigures {
    /// Per change, from the request to the first proxy's applying it.
    first: Vec<Duration>,
    /// Per change, from the request to the last proxy's applying it.
    last: Vec<Duration>,
    /// Per change, the master's latest push latency over every proxy (change to ack).
    acked: Vec<Duration>,
    window: Duration,
}

fn p99_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    percentile(&v, 0.99) / 1e3
}

/// Each proxy's applied versions, with when this thread saw each.
type AppliedLog = Rc<RefCell<Vec<(u64, Instant)>>>;

async fn push_convergence(dir: &Path, s: &Settings) -> anyhow::Result<PushFigures> {
    let m = MasterThread::start(dir.join("master"), s.heartbeat)?;
    // A tenth of the nodes register the services, then the rest join and get them in
    // one snapshot each. (Registering 1,000 services one by one while 100 proxies are
    // subscribed makes a push per coalescing window to each of them; on this 2-core
    // machine that starved heartbeats until agents dropped their links to the master.)
    let registrars = s.nodes.div_ceil(10);
    let mut agents = start_agents(&m, dir, 0..registrars).await?;
    let registrations = agents.iter().enumerate().map(|(i, a)| async move {
        for k in (i..s.services).step_by(registrars) {
            let actor = format!("svc-{k}");
            a.node.spawn(&actor, Sink::default())?;
            a.mesh()
                .register_service(service_name(&actor), &actor, "v1", BTreeMap::new(), 1)
                .await
                .with_context(|| format!("registering {actor}"))?;
        }
        anyhow::Ok(())
    });
    for r in futures::future::join_all(registrations).await {
        r?;
    }
    agents.extend(start_agents(&m, dir, registrars..s.nodes).await?);
    let mut version = m.until_converged(s.nodes, Duration::from_secs(120)).await?;
    let held = agents[0].mesh().proxy_config().services.len();
    anyhow::ensure!(
        held == s.services,
        "a proxy holds {held} of {} services",
        s.services
    );

    // Watch every proxy's applied version from now on.
    let seen = Rc::new(tokio::sync::Notify::new());
    let logs: Vec<AppliedLog> = agents
        .iter()
        .map(|_| Rc::new(RefCell::new(Vec::new())))
        .collect();
    let watchers: Vec<_> = agents
        .iter()
        .zip(&logs)
        .map(|(a, log)| {
            let (mut applied, log, seen) = (a.mesh().applied(), log.clone(), seen.clone());
            actix::spawn(async move {
                while applied.changed().await.is_ok() {
                    let v = *applied.borrow_and_update();
                    if let Some(v) = v {
                        log.borrow_mut().push((v, Instant::now()));
                        seen.notify_one();
                    }
                }
            })
        })
        .collect();

    let mut f = PushFigures {
        first: Vec::new(),
        last: Vec::new(),
        acked: Vec::new(),
        window: m.window,
    };
    for c in 0..s.changes {
        // A new endpoint of an existing service, served by another node than the first.
        let target = service_name(&format!("svc-{}", (c * 10) % s.services));
        let node = &agents[(c + s.nodes / 2) % s.nodes];
        let actor = format!("extra-{c}");
        node.node.spawn(&actor, Sink::default())?;
        let t0 = Instant::now();
        node.mesh()
            .register_service(target.clone(), &actor, "v1", BTreeMap::new(), 1)
            .await?;
        let registered = t0.elapsed();
        // The version that holds the change: the registry's, right after it answered.
        let v = m.master.send(ListProxyStatus).await?.version;
        anyhow::ensure!(v > version, "change {c} made no new version ({v})");
        version = v;
        // When each proxy first applied `v` or later.
        let reached = |log: &AppliedLog| {
            log.borrow()
                .iter()
                .find(|(applied, _)| *applied >= v)
                .map(|(_, at)| *at)
        };
        let deadline = t0 + CHANGE_LIMIT;
        let times = loop {
            let times: Option<Vec<Instant>> = logs.iter().map(reached).collect();
            if let Some(times) = times {
                break times;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let behind = logs.iter().filter(|l| reached(l).is_none()).count();
                anyhow::bail!(
                    "change {c}: {behind} proxies lack version {v} after {CHANGE_LIMIT:?}"
                );
            }
            let _ = tokio::time::timeout(left, seen.notified()).await;
        };
        let first = times.iter().min().context("no proxy")?;
        let last = times.iter().max().context("no proxy")?;
        f.first.push(first.duration_since(t0));
        f.last.push(last.duration_since(t0));
        f.acked.push(acked(&m, v, s.nodes).await?);
        if std::env::var_os("MESHBENCH_TRACE").is_some() {
            eprintln!(
                "change {c}: v{v} registered {registered:?} first {:?} last {:?} acked {:?}",
                f.first[c], f.last[c], f.acked[c]
            );
        }
    }
    for w in watchers {
        w.abort();
    }
    let endpoints: usize = agents[0]
        .mesh()
        .proxy_config()
        .services
        .iter()
        .map(|s| s.endpoints.len())
        .sum();
    anyhow::ensure!(
        endpoints == s.services + s.changes,
        "a proxy holds {endpoints} endpoints, expected {}",
        s.services + s.changes
    );
    for a in &agents {
        a.node.shutdown();
    }
    Ok(f)
}

/// Starts agents `p<i>` for each `i` of `range`, [`JOIN_BATCH`] at a time.
async fn start_agents(
    m: &MasterThread,
    dir: &Path,
    range: std::ops::Range<usize>,
) -> anyhow::Result<Vec<AgentHandle>> {
    let mut agents = Vec::new();
    for batch in range.collect::<Vec<_>>().chunks(JOIN_BATCH) {
        let joins = batch.iter().map(|i| {
            agent::start(m.agent_config(dir, &format!("p{i}"), "proxy", ActorHost::new()))
        });
        for a in futures::future::join_all(joins).await {
            agents.push(a.context("a push agent")?);
        }
    }
    Ok(agents)
}

/// Once every proxy acknowledged version `v` (polled every 2 ms, at most
/// [`CHANGE_LIMIT`]), the longest of their last push latencies as the master measured them.
async fn acked(m: &MasterThread, v: u64, proxies: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let s = m.master.send(ListProxyStatus).await?;
        let acked: Vec<_> = s
            .proxies
            .iter()
            .filter(|p| p.applied.is_some_and(|a| a >= v))
            .collect();
        if acked.len() >= proxies && acked.len() == s.proxies.len() {
            let ms = acked
                .iter()
                .filter_map(|p| p.last_push_latency_ms)
                .fold(0.0, f64::max);
            return Ok(Duration::from_secs_f64(ms / 1e3));
        }
        anyhow::ensure!(
            start.elapsed() < CHANGE_LIMIT,
            "{} of {proxies} proxies acknowledged version {v}",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
