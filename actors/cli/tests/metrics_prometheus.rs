//! `/metrics` on real nodes, scraped by Debian's Prometheus: a master and two agent
//! processes (`--metrics-listen`) and a client node in this process calling the echo
//! service by name. PromQL over Prometheus' HTTP API returns the calls made, inbound and
//! outbound, and a non-empty latency histogram; `promtool check metrics` passes on every
//! node's classic text; the OpenMetrics format is served when the scraper asks for it.
//! One agent writes an access log line per call; `actormesh top` shows the service's
//! rate, success and latency from the agents' figures over the mesh.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actormesh::mesh::{Mesh, MeshOptions};
use actormesh::{Node, NodeConfig};
use actormesh_cli::demo::Echo;
use common::*;

const CALLS: usize = 100;

fn manifest() -> String {
    r#"{"kind":"Deployment","name":"echo","spec":{"actor":"echo","version":"v1","replicas":2,"resources":{"need":"cpus:1"},"constraints":{"unique_node":true},"service":{"balancer":"round_robin"}}}"#.to_string()
}

fn get(url: &str, accept: Option<&str>) -> (String, String) {
    try_get(url, accept).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn try_get(url: &str, accept: Option<&str>) -> Result<(String, String), ureq::Error> {
    let mut req = ureq::get(url);
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let mut resp = req.call()?;
    let ty = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((ty, resp.body_mut().read_to_string()?))
}

/// The metrics address a process printed (`metrics: http://ADDR/metrics`, the rest
/// after the prefix).
fn metrics_addr(line: &str) -> SocketAddr {
    line.trim()
        .strip_prefix("http://")
        .and_then(|l| l.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("not a metrics line: {line:?}"))
        .parse()
        .unwrap()
}

fn need(tool: &str) {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is not installed: scripts/test installs Debian's prometheus package (it needs root)"
    );
}

/// One PromQL instant query's single value, if it has one.
fn query(prometheus: SocketAddr, promql: &str) -> Option<f64> {
    let url = format!(
        "http://{prometheus}/api/v1/query?query={}",
        promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    let body: serde_json::Value = serde_json::from_str(&get(&url, None).1).ok()?;
    let result = body["data"]["result"].as_array()?;
    let v = result.first()?["value"][1].as_str()?;
    v.parse().ok()
}

/// Polls `promql` (at most 60 s, as scrapes come in every second) until `ok` holds for
/// its value; returns the value.
async fn wait_query(prometheus: SocketAddr, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let began = Instant::now();
    loop {
        let v = tokio::task::block_in_place(|| query(prometheus, promql));
        if let Some(v) = v.filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "{promql} is {v:?} after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn client_calls(
    credentials: actormesh::transport::pki::Credentials,
    master: SocketAddr,
    metrics: SocketAddr,
) -> (Node, actormesh::mesh::ServiceRef) {
    let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap());
    config.metrics_listen = Some(metrics);
    let node = Node::start(config, &credentials).unwrap();
    let mesh = Mesh::start(&node, MeshOptions::default().master(master)).unwrap();
    let began = Instant::now();
    let echo = mesh.service("echo").unwrap();
    while mesh
        .proxy_config()
        .services
        .iter()
        .find(|s| s.name.to_string() == "default/echo")
        .is_none_or(|s| s.endpoints.len() < 2)
    {
        assert!(began.elapsed() < Duration::from_secs(30), "no 2 endpoints");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..CALLS {
        let reply = echo.ask(Echo(format!("call {i}"))).await.unwrap();
        assert_eq!(reply, format!("call {i}"));
    }
    (node, echo)
}

/// Calls `echo` every 2 ms until `stop` says so (at most 30 s, 15,000 calls); returns how
/// many it made.
async fn more_calls(
    echo: &actormesh::mesh::ServiceRef,
    stop: std::sync::mpsc::Receiver<()>,
) -> usize {
    let began = Instant::now();
    let mut made = 0;
    while stop.try_recv().is_err() && began.elapsed() < Duration::from_secs(30) && made < 15_000 {
        echo.ask(Echo("more".into())).await.unwrap();
        made += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    made
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_node_and_queries_return_the_calls() {
    need("prometheus");
    need("promtool");
    let dir = temp_dir("metrics");
    let mm = free_tcp().to_string();
    let mut master = Master::start(
        &dir.join("m"),
        free_udp(),
        free_udp(),
        free_tcp(),
        &["--metrics-listen", &mm],
    )
    .await;
    let master_metrics = metrics_addr(&master.proc.line("metrics: ").await);
    let token = master.token(3600);
    let mut agents = Vec::new();
    let mut targets = vec![master_metrics];
    for name in ["a1", "a2"] {
        let port = free_tcp().port().to_string();
        let mut opts = vec![
            "--demo-actors",
            "--resources",
            "cpus:2",
            "--metrics-listen",
            &port,
        ];
        if name == "a1" {
            opts.extend(["--access-log", "1", "--log-format", "json"]);
        }
        let mut a = agent(&master, &dir.join(name), name, Some(&token), &opts).await;
        targets.push(metrics_addr(&a.line("metrics: ").await));
        agents.push(a);
    }
    let f = dir.join("echo.json");
    std::fs::write(&f, manifest()).unwrap();
    let out = master.cli(&["apply", "-f", f.to_str().unwrap(), "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");

    // A client node in this process, serving its own metrics, makes the calls.
    let client_token = master.client_token(600);
    let creds =
        actormesh::client::issue(master.bootstrap, &client_token, "load", &dir.join("client"))
            .await
            .unwrap();
    let client_metrics = free_tcp();
    targets.push(client_metrics);
    let master_mesh = master.mesh;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (called_tx, called_rx) = std::sync::mpsc::channel::<()>();
    let (more_tx, more_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        actix::System::new().block_on(async move {
            let (node, echo) = client_calls(creds.credentials, master_mesh, client_metrics).await;
            called_tx.send(()).unwrap();
            // Then calls again while `top` watches, until told to stop.
            let _ = tokio::task::spawn_blocking(move || more_rx.recv()).await;
            let made = more_calls(&echo, stop_rx).await;
            // Keeps serving its metrics until the test is done with them.
            let _ = tokio::task::spawn_blocking(move || done_rx.recv()).await;
            drop(node);
            made
        })
    });
    tokio::task::spawn_blocking(move || called_rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the client made its calls");

    // Every node's classic text passes promtool; OpenMetrics when asked for.
    for t in &targets {
        let (ty, text) = tokio::task::block_in_place(|| get(&format!("http://{t}/metrics"), None));
        assert!(ty.starts_with("text/plain; version=0.0.4"), "{t}: {ty}");
        let mut check = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics on {t}: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (ty, open) = tokio::task::block_in_place(|| {
            get(
                &format!("http://{t}/metrics"),
                Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
            )
        });
        assert!(ty.starts_with("application/openmetrics-text"), "{t}: {ty}");
        assert!(open.trim_end().ends_with("# EOF"), "{t}: no # EOF");
    }

    // A real Prometheus scraping the four nodes every second.
    let prom_dir = dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: actormesh\n    static_configs:\n      - targets: [{}]\n",
        targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::fs::write(prom_dir.join("prometheus.yml"), config).unwrap();
    let prom_addr = free_tcp();
    let mut prom = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            prom_dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");

    // Ready once it answers /-/ready; it must not have exited meanwhile.
    let began = Instant::now();
    while tokio::task::block_in_place(|| try_get(&format!("http://{prom_addr}/-/ready"), None))
        .is_err()
    {
        assert!(prom.try_wait().unwrap().is_none(), "prometheus exited");
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "prometheus not ready in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let up = wait_query(prom_addr, "count(up == 1)", |v| v == targets.len() as f64).await;
    assert_eq!(up, 4.0);
    let n = CALLS as f64;
    // Inbound: the two instances served them all, counted where they arrived, under
    // their service (their proxy names it).
    wait_query(
        prom_addr,
        r#"sum(actormesh_inbound_requests_total{service="default/echo",message="demo.Echo/v1",outcome="ok"})"#,
        |v| v == n,
    )
    .await;
    // Round robin: each agent served half.
    for t in &targets[1..3] {
        let q = format!(
            r#"sum(actormesh_inbound_requests_total{{instance="{t}",message="demo.Echo/v1"}})"#
        );
        wait_query(prom_addr, &q, |v| v == n / 2.0).await;
    }
    // Outbound: the client counted its calls by name, as a client.
    wait_query(
        prom_addr,
        r#"sum(actormesh_outbound_requests_total{source="client",service="default/echo",message="demo.Echo/v1",outcome="ok"})"#,
        |v| v == n,
    )
    .await;
    // The latency histograms hold every call, and a quantile comes out of them.
    wait_query(
        prom_addr,
        r#"sum(actormesh_inbound_latency_seconds_count{message="demo.Echo/v1"})"#,
        |v| v == n,
    )
    .await;
    let p99 = wait_query(
        prom_addr,
        r#"histogram_quantile(0.99, sum by (le) (actormesh_outbound_latency_seconds_bucket{service="default/echo"}))"#,
        |v| v > 0.0 && v.is_finite(),
    )
    .await;
    assert!(p99 < 5.0, "p99 {p99}");
    // The master's control plane: two agents active, the two instances placed, pushes
    // acknowledged, and no proxy behind once they all applied.
    let master_job = format!(r#"instance="{master_metrics}""#);
    for (q, want) in [
        (
            format!(r#"actormesh_master_agents{{{master_job},state="Active"}}"#),
            2.0,
        ),
        (
            format!(r#"actormesh_master_placements_total{{{master_job}}}"#),
            2.0,
        ),
        (
            format!(r#"actormesh_master_instances_running{{{master_job}}}"#),
            2.0,
        ),
        (
            format!(r#"actormesh_master_replicas_pending{{{master_job}}}"#),
            0.0,
        ),
        (
            format!(r#"actormesh_master_proxies_behind{{{master_job}}}"#),
            0.0,
        ),
    ] {
        wait_query(prom_addr, &q, |v| v == want).await;
    }
    wait_query(
        prom_addr,
        &format!(r#"actormesh_master_push_latency_seconds_count{{{master_job}}}"#),
        |v| v > 0.0,
    )
    .await;
    wait_query(
        prom_addr,
        &format!(r#"actormesh_master_registry_version{{{master_job}}}"#),
        |v| v > 0.0,
    )
    .await;
    // Transport figures per peer, from quinn.
    wait_query(prom_addr, r#"count(actormesh_peer_rtt_seconds)"#, |v| {
        v >= 3.0
    })
    .await;

    let _ = prom.kill().await;

    // The access log of a1: one JSON line per call it served, with the call's labels.
    let began = Instant::now();
    let lines = loop {
        let text = agents[0].stderr_so_far();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| {
                v["target"] == "actormesh::access" && v["fields"]["message"] == "demo.Echo/v1"
            })
            .collect();
        if lines.len() >= CALLS / 2 {
            break lines;
        }
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{} access lines:\n{text}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), CALLS / 2);
    let f = &lines[0]["fields"];
    assert_eq!(f["service"], "default/echo", "{f}");
    assert_eq!(f["source"], "client", "{f}");
    assert_eq!(f["outcome"], "ok", "{f}");
    assert!(
        f["caller"].as_str().unwrap().ends_with("/client/load"),
        "{f}"
    );
    assert!(f["duration_us"].as_u64().is_some(), "{f}");
    // a2 writes none.
    assert!(!agents[1].stderr_so_far().contains("actormesh::access"));

    // `actormesh top` while the client calls again, with an identity of its own.
    let top_identity = dir.join("top");
    actormesh::client::issue(master.bootstrap, &client_token, "top", &top_identity)
        .await
        .unwrap();
    more_tx.send(()).unwrap();
    let mesh_addr = master.mesh.to_string();
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(BIN)
            .args([
                "top",
                "-o",
                "json",
                "--interval",
                "1s",
                "--identity",
                top_identity.to_str().unwrap(),
                "--master",
                &mesh_addr,
            ])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    });
    stop_tx.send(()).unwrap();
    assert!(out.status.success(), "{out:?}");
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = view.as_array().unwrap();
    let echo = rows
        .iter()
        .find(|r| r["service"] == "default/echo" && r["message"] == "demo.Echo/v1")
        .unwrap_or_else(|| panic!("no echo row in {view}"));
    assert!(echo["requests"].as_u64().unwrap() > 0, "{echo}");
    assert!(echo["rps"].as_f64().unwrap() > 0.0, "{echo}");
    assert_eq!(echo["success_rate"].as_f64(), Some(1.0), "{echo}");
    for q in ["p50_ms", "p95_ms", "p99_ms"] {
        let v = echo[q].as_f64().unwrap_or_else(|| panic!("{q} in {echo}"));
        assert!(v > 0.0 && v < 5000.0, "{q} {v}");
    }
    // Only services unless --all: system actors (by Rust type) are not listed.
    assert!(
        rows.iter()
            .all(|r| !r["service"].as_str().unwrap().contains("::")),
        "{view}"
    );

    done_tx.send(()).unwrap();
    let made = client.join().unwrap();
    assert!(made > 0);
    for mut a in agents {
        a.kill().await;
    }
    master.proc.kill().await;
}
