//! `meshbench gateway`: HTTP requests per second through the ingress gateway to a service
//! on another node process, driven by `wrk` (Debian's package; without it the suite says
//! so and fails). The baseline, in the same run, is the same topology from plain parts: an
//! axum reverse proxy in front of an axum JSON backend, each a process. Every server on
//! both sides runs on one thread (a node is one actix system; the baseline's runtimes are
//! current-thread tokio), the load is the same JSON POST, and the rounds alternate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context as _};

use actormesh::agent::{self, AgentConfig};
use actormesh::resources::Resources;
use actormesh_integration::harness::ChildProc;

use crate::mesh::{manifest, service_name, spawn_agent_proc, MasterThread};
use crate::Line;

const GATEWAY: &str = r#"{"kind":"Gateway","name":"gw","namespace":"bench","spec":{}}"#;
const ROUTE: &str = r#"{"kind":"HttpRoute","name":"echo","namespace":"bench","spec":{"gateway":"gw","rules":[{"match":{"path":"/echo","method":"POST"},"service":"echo","message":"test.Echo/v1"}]}}"#;
/// The request body: `test.Echo/v1`'s JSON (its bytes), answered back as they are.
const BODY: &str = "[104,101,108,108,111,44,32,103,97,116,101,119,97,121]";

/// How the suite runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Rounds of each side; the median is reported.
    pub rounds: usize,
    /// How long each wrk run lasts.
    pub secs: u64,
    /// wrk's connections.
    pub connections: usize,
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
}

pub fn run(s: Settings) -> anyhow::Result<()> {
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        anyhow::bail!("the gateway suite needs wrk (Debian's package: apt-get install wrk)");
    }
    let dir = std::env::temp_dir().join(format!("meshbench-gateway-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = actix::System::new().block_on(run_in(dir.clone(), s));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: PathBuf, s: Settings) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let m = MasterThread::start(dir.join("master"), None)?;
    let _backend = spawn_agent_proc(&exe, &m, &dir, "backend", false).await?;
    m.apply(manifest("echo", 1, "backend")).await?;
    m.until_endpoints(&service_name("echo"), 1, Duration::from_secs(30))
        .await?;
    m.apply_traffic(GATEWAY.into()).await?;
    m.apply_traffic(ROUTE.into()).await?;

    let gw_addr = free_tcp();
    let (join, data, http) = (
        m.bootstrap.to_string(),
        dir.join("gw").display().to_string(),
        gw_addr.to_string(),
    );
    let mut gw = ChildProc::spawn(
        &exe,
        &[
            "gateway-proc",
            "--join",
            &join,
            "--token",
            &m.token,
            "--data-dir",
            &data,
            "--http",
            &http,
        ],
    )?;
    gw.wait_line("READY", Duration::from_secs(60))
        .await
        .map_err(|e| anyhow!("the gateway did not start: {e}"))?;

    let (backend_addr, proxy_addr) = (free_tcp(), free_tcp());
    let mut backend = ChildProc::spawn(
        &exe,
        &["gateway-backend-proc", "--http", &backend_addr.to_string()],
    )?;
    backend
        .wait_line("READY", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!("the baseline backend did not start: {e}"))?;
    let mut proxy = ChildProc::spawn(
        &exe,
        &[
            "gateway-proxy-proc",
            "--http",
            &proxy_addr.to_string(),
            "--to",
            &backend_addr.to_string(),
        ],
    )?;
    proxy
        .wait_line("READY", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!("the baseline proxy did not start: {e}"))?;

    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"{BODY}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )?;
    // Both answer the same before anything is timed.
    check(&format!("http://{gw_addr}/echo")).await?;
    check(&format!("http://{proxy_addr}/echo")).await?;
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..s.rounds {
        ours.push(wrk(&script, &format!("http://{gw_addr}/echo"), s).await?);
        base.push(wrk(&script, &format!("http://{proxy_addr}/echo"), s).await?);
    }
    Line {
        name: "gateway_http_rps",
        value: crate::median(ours),
        unit: "req/s",
        baseline: crate::median(base),
    }
    .print();
    Ok(())
}

/// One POST, answered 200 with the body back.
async fn check(url: &str) -> anyhow::Result<()> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let mut resp = ureq::post(&url)
            .header("content-type", "application/json")
            .send(BODY)
            .with_context(|| format!("POST {url}"))?;
        let got: serde_json::Value = resp.body_mut().read_json()?;
        let want: serde_json::Value = serde_json::from_str(BODY)?;
        anyhow::ensure!(got == want, "POST {url} answered {got}");
        anyhow::Ok(())
    })
    .await?
}

/// Requests per second of one wrk run against `url`; a run with errors or non-2xx
/// answers fails.
async fn wrk(script: &Path, url: &str, s: Settings) -> anyhow::Result<f64> {
    let out = tokio::process::Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{}", s.connections),
            &format!("-d{}s", s.secs),
            "-s",
            &script.display().to_string(),
            url,
        ])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "wrk saw errors against {url}: {text}"
    );
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Requests/sec in wrk's output: {text}"))
}

/// (internal) A gateway node serving `bench/gw` on `http`; prints READY once it has its
/// routes.
pub fn gateway_proc(
    join: SocketAddr,
    token: String,
    data_dir: PathBuf,
    http: SocketAddr,
) -> anyhow::Result<()> {
    actix::System::new().block_on(async move {
        let listener = tokio::net::TcpListener::bind(http).await?;
        let a = agent::start(AgentConfig {
            join,
            also_join: Vec::new(),
            token: Some(token),
            data_dir,
            listen: "127.0.0.1:0".parse()?,
            name: "gw".into(),
            resources: Some(Resources::default()),
            attrs: Default::default(),
            actor_types: Vec::new(),
            reserved: Default::default(),
            metrics_listen: None,
            access_log: None,
            tracing: None,
            host: Default::default(),
        })
        .await?;
        let served =
            actormesh_cli::gateway::serve(&a, "bench".into(), "gw".into(), listener, None)?;
        anyhow::ensure!(
            served.configured(Duration::from_secs(30)).await,
            "the gateway got no routes within 30 s"
        );
        println!("READY");
        std::future::pending::<()>().await;
        anyhow::Ok(())
    })
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// (internal) The baseline's backend: an axum server answering a JSON POST with its JSON.
pub fn backend_proc(http: SocketAddr) -> anyhow::Result<()> {
    current_thread()?.block_on(async move {
        let app = axum::Router::new().route(
            "/echo",
            axum::routing::post(|axum::Json(v): axum::Json<serde_json::Value>| async move {
                axum::Json(v)
            }),
        );
        let listener = tokio::net::TcpListener::bind(http).await?;
        println!("READY");
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

/// (internal) The baseline's reverse proxy: an axum server passing each request to `to`
/// over a pooled HTTP/1.1 client and the answer back.
pub fn proxy_proc(http: SocketAddr, to: SocketAddr) -> anyhow::Result<()> {
    use http_body_util::{BodyExt, Full};
    current_thread()?.block_on(async move {
        let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let client = client.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = match axum::body::to_bytes(body, 1 << 20).await {
                    Ok(b) => b,
                    Err(_) => return axum::http::StatusCode::PAYLOAD_TOO_LARGE.into_response(),
                };
                let uri = format!(
                    "http://{to}{}",
                    parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/")
                );
                let mut out = axum::http::Request::builder().method(parts.method).uri(uri);
                for (k, v) in parts
                    .headers
                    .iter()
                    .filter(|(k, _)| *k != axum::http::header::HOST)
                {
                    out = out.header(k, v);
                }
                let Ok(out) = out.body(Full::new(body)) else {
                    return axum::http::StatusCode::BAD_REQUEST.into_response();
                };
                match client.request(out).await {
                    Ok(resp) => {
                        let (parts, body) = resp.into_parts();
                        match body.collect().await {
                            Ok(b) => axum::http::Response::from_parts(
                                parts,
                                axum::body::Body::from(b.to_bytes()),
                            )
                            .into_response(),
                            Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
                        }
                    }
                    Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind(http).await?;
        println!("READY");
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

use axum::response::IntoResponse as _;
