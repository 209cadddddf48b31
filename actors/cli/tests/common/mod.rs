//! Processes for the cluster tests: `actormesh master` and `actormesh agent` on loopback,
//! with ports chosen at run time and waits on events (a printed line, an API answer).
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use actormesh_cli::ApiClient;
use actormesh_master::membership::{AgentRecord, AgentState};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_actormesh");

pub struct Proc {
    pub child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    /// Everything the process printed on stderr so far: a thread drains the pipe, so a
    /// chatty process never blocks on a full one.
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_cmd(Command::new(BIN), args)
    }

    /// Runs `actormesh args` in the working directory `dir`.
    pub fn spawn_in(dir: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir);
        Self::spawn_cmd(cmd, args)
    }

    /// Runs `actormesh args` inside network namespace `ns` (`ip netns exec`).
    pub fn spawn_in_netns(ns: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, BIN]);
        Self::spawn_cmd(cmd, args)
    }

    fn spawn_cmd(mut cmd: Command, args: &[&str]) -> Self {
        let mut child = cmd
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start actormesh");
        let stdout = child.stdout.take().expect("stdout");
        let pipe = child
            .stderr
            .take()
            .expect("stderr")
            .into_owned_fd()
            .expect("stderr as a file");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let drain = std::thread::spawn(move || {
            use std::io::Read;
            let mut pipe = std::fs::File::from(pipe);
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
            stderr,
            drain: Some(drain),
        }
    }

    /// The rest of the first stdout line starting with `prefix`.
    pub async fn line(&mut self, prefix: &str) -> String {
        let work = async {
            while let Ok(Some(l)) = self.lines.next_line().await {
                if let Some(rest) = l.strip_prefix(prefix) {
                    return rest.trim().to_string();
                }
            }
            panic!(
                "process ended before printing {prefix:?}: {}",
                self.stderr_so_far()
            );
        };
        tokio::time::timeout(Duration::from_secs(60), work)
            .await
            .unwrap_or_else(|_| panic!("no {prefix:?} line within 60 s"))
    }

    /// What the process printed on stderr so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the process to exit; returns its stderr.
    pub async fn exit_stderr(mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        if let Some(drain) = self.drain.take() {
            // The pipe closes with the process (it has no children that keep it).
            let _ = tokio::task::spawn_blocking(move || drain.join()).await;
        }
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

/// Calls `fetch` (a blocking API call) every 50 ms until `cond` holds for what it gives,
/// at most `limit`; returns that.
async fn poll_until<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    fetch: impl Fn() -> Vec<T>,
    cond: impl Fn(&[T]) -> bool,
) -> Vec<T> {
    let start = Instant::now();
    loop {
        let got = tokio::task::block_in_place(&fetch);
        if cond(&got) {
            return got;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}: {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free UDP port on loopback (for QUIC listeners that must keep their address across a
/// restart).
pub fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A free TCP port on loopback.
pub fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("am-cluster-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Master {
    pub proc: Proc,
    pub mesh: SocketAddr,
    pub bootstrap: SocketAddr,
    pub api: SocketAddr,
    pub dir: PathBuf,
    pub fingerprint: String,
}

impl Master {
    pub async fn start(
        dir: &Path,
        mesh: SocketAddr,
        bootstrap: SocketAddr,
        api: SocketAddr,
        extra: &[&str],
    ) -> Self {
        let mut m = Self::spawn(dir, mesh, bootstrap, api, extra);
        let ready = m.proc.line("master ready:").await;
        m.fingerprint = ready.rsplit(' ').next().unwrap().to_string();
        m
    }

    /// Runs `actormesh master` on these addresses without waiting for it (the
    /// fingerprint is empty until a caller reads the ready line).
    pub fn spawn(
        dir: &Path,
        mesh: SocketAddr,
        bootstrap: SocketAddr,
        api: SocketAddr,
        extra: &[&str],
    ) -> Self {
        let (m, b, a) = (mesh.to_string(), bootstrap.to_string(), api.to_string());
        let mut args = vec![
            "master",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            &m,
            "--bootstrap",
            &b,
            "--api",
            &a,
        ];
        args.extend_from_slice(extra);
        Self {
            proc: Proc::spawn(&args),
            mesh,
            bootstrap,
            api,
            dir: dir.to_path_buf(),
            fingerprint: String::new(),
        }
    }

    pub fn client(&self) -> ApiClient {
        let token = std::fs::read_to_string(self.dir.join("api-token")).unwrap();
        ApiClient::new(&format!("http://{}", self.api), &token)
    }

    pub fn token(&self, ttl_secs: u64) -> String {
        let v = self
            .client()
            .call(
                "POST",
                "/v1/tokens",
                Some(serde_json::json!({ "ttl_secs": ttl_secs })),
            )
            .unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    /// A join token of role `client` (for `actormesh::client::issue`).
    pub fn client_token(&self, ttl_secs: u64) -> String {
        self.client()
            .call(
                "POST",
                "/v1/tokens",
                Some(serde_json::json!({ "ttl_secs": ttl_secs, "role": "client" })),
            )
            .unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Runs `actormesh <args> --api <this master> --api-token-file <its token>`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let api = format!("http://{}", self.api);
        let token_file = self.dir.join("api-token");
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&[
            "--api",
            &api,
            "--api-token-file",
            token_file.to_str().unwrap(),
        ]);
        tokio::task::block_in_place(|| std::process::Command::new(BIN).args(&all).output()).unwrap()
    }

    /// Every deployment task.
    pub fn tasks(&self) -> Vec<actormesh_master::deployments::TaskEntry> {
        serde_json::from_value(self.client().call("GET", "/v1/tasks", None).unwrap()).unwrap()
    }

    /// Polls the tasks (every 50 ms, at most `limit`) until `cond` holds for them; returns
    /// them.
    pub async fn wait_tasks(
        &self,
        what: &str,
        limit: Duration,
        cond: impl Fn(&[actormesh_master::deployments::TaskEntry]) -> bool,
    ) -> Vec<actormesh_master::deployments::TaskEntry> {
        poll_until(what, limit, || self.tasks(), |t| cond(t)).await
    }

    /// Polls the nodes (every 50 ms, at most `limit`) until `cond` holds; returns them.
    pub async fn wait_nodes(
        &self,
        what: &str,
        limit: Duration,
        cond: impl Fn(&[AgentRecord]) -> bool,
    ) -> Vec<AgentRecord> {
        poll_until(what, limit, || self.nodes(), |n| cond(n)).await
    }

    pub fn nodes(&self) -> Vec<AgentRecord> {
        serde_json::from_value(self.client().call("GET", "/v1/nodes", None).unwrap()).unwrap()
    }

    pub fn state_of(&self, id: &str) -> Option<AgentState> {
        self.nodes()
            .into_iter()
            .find(|n| n.id == id)
            .map(|n| n.state)
    }

    /// Polls the API (every 20 ms, at most `limit`) until `id` is in `state`; returns how
    /// long it took.
    pub async fn wait_state(&self, id: &str, state: AgentState, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let nodes = tokio::task::block_in_place(|| self.nodes());
            if nodes.iter().any(|n| n.id == id && n.state == state) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{id} not {state} within {limit:?}: {nodes:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn agent(
    master: &Master,
    dir: &Path,
    name: &str,
    token: Option<&str>,
    extra: &[&str],
) -> Proc {
    let join = master.bootstrap.to_string();
    let mut args = vec![
        "agent",
        "--join",
        &join,
        "--data-dir",
        dir.to_str().unwrap(),
        "--name",
        name,
    ];
    if let Some(t) = token {
        args.extend_from_slice(&["--token", t]);
    }
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(&args);
    p.line("agent ").await;
    p
}

/// Runs `actormesh agent --join <master> --data-dir <dir> [--name N] [--token T]` to its end
/// (it is expected to be refused) and returns what it printed on stderr.
pub async fn refused_agent(
    master: &Master,
    dir: &Path,
    name: Option<&str>,
    token: Option<&str>,
) -> String {
    let join = master.bootstrap.to_string();
    let mut args = vec![
        "agent",
        "--join",
        &join,
        "--data-dir",
        dir.to_str().unwrap(),
    ];
    if let Some(n) = name {
        args.extend_from_slice(&["--name", n]);
    }
    if let Some(t) = token {
        args.extend_from_slice(&["--token", t]);
    }
    Proc::spawn(&args).exit_stderr().await
}

/// Runs `f` with a node started from `credentials`, in an actix system of its own (the
/// test's runtime is tokio's, for the processes).
pub async fn on_node<F, Fut, T>(credentials: actormesh::transport::pki::Credentials, f: F) -> T
where
    F: FnOnce(actormesh::Node) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        actix::System::new().block_on(async move {
            let node = actormesh::Node::start(
                actormesh::NodeConfig::new("127.0.0.1:0".parse().unwrap()),
                &credentials,
            )
            .unwrap();
            f(node).await
        })
    })
    .await
    .unwrap()
}
