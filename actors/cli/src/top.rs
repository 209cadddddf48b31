//! `actormesh top`: requests per second, success rate and latency quantiles per service and
//! message, as `linkerd viz stat` shows them. The figures come from every node that serves
//! an endpoint, over the mesh (each node's `$proxy` answers `Figures`), not over HTTP, so
//! it works with `/metrics` on loopback or not served. Two samples an interval apart make
//! one view: the rates are what happened in between.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use actormesh::mesh::protocol::{GetFigures, NodeFigures, PROXY_ACTOR};
use actormesh::mesh::{Mesh, MeshOptions};
use actormesh::stats::HistogramSnapshot;
use serde::Serialize;

use crate::args::TopArgs;
use crate::output::Format;

/// One line of the view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TopRow {
    /// The service (or, for an actor that serves none, its Rust type).
    pub(crate) service: String,
    /// The message name.
    pub(crate) message: String,
    /// Calls that ended in the interval.
    pub(crate) requests: u64,
    /// Of them, a second.
    pub(crate) rps: f64,
    /// The share answered (not failed with an error of the runtime or the mesh); `None`
    /// without calls.
    pub(crate) success_rate: Option<f64>,
    /// Latency quantiles from arrival to reply, in milliseconds.
    pub(crate) p50_ms: Option<f64>,
    /// 95th percentile.
    pub(crate) p95_ms: Option<f64>,
    /// 99th percentile.
    pub(crate) p99_ms: Option<f64>,
}

/// What happened between two samples of the same nodes, per (service, message), summed
/// over the nodes that served it and the sources that called it. Only services unless
/// `all` (actors that serve none are named by their Rust type, with `::`).
pub(crate) fn rows(
    before: &BTreeMap<String, NodeFigures>,
    after: &BTreeMap<String, NodeFigures>,
    elapsed: Duration,
    all: bool,
) -> Vec<TopRow> {
    let mut sums: BTreeMap<(String, String), (u64, u64, HistogramSnapshot)> = BTreeMap::new();
    for (node, now) in after {
        let earlier = before.get(node);
        for row in &now.inbound {
            if !all && row.destination.contains("::") {
                continue;
            }
            for (source, s) in &row.sources {
                let was = earlier.and_then(|e| {
                    e.inbound
                        .iter()
                        .find(|r| r.destination == row.destination && r.message == row.message)
                        .and_then(|r| r.sources.iter().find(|(x, _)| x == source))
                        .map(|(_, s)| s)
                });
                let d = match was {
                    Some(before) => s.since(before),
                    None => s.clone(),
                };
                let e = sums
                    .entry((row.destination.clone(), row.message.clone()))
                    .or_default();
                e.0 += d.requests();
                e.1 += d.ok();
                e.2.add(&d.latency);
            }
        }
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ms = |q: f64, h: &HistogramSnapshot| h.quantile(q).map(|d| d.as_secs_f64() * 1e3);
    sums.into_iter()
        .map(|((service, message), (requests, ok, latency))| TopRow {
            service,
            message,
            requests,
            rps: requests as f64 / secs,
            success_rate: (requests > 0).then(|| ok as f64 / requests as f64),
            p50_ms: ms(0.5, &latency),
            p95_ms: ms(0.95, &latency),
            p99_ms: ms(0.99, &latency),
        })
        .collect()
}

/// The view as a table.
pub(crate) fn table(rows: &[TopRow]) -> String {
    let opt = |v: Option<f64>, digits: usize| match v {
        Some(v) => format!("{v:.digits$}"),
        None => "-".to_string(),
    };
    let mut lines = vec![vec![
        "SERVICE".to_string(),
        "MESSAGE".into(),
        "RPS".into(),
        "SUCCESS".into(),
        "P50 MS".into(),
        "P95 MS".into(),
        "P99 MS".into(),
    ]];
    for r in rows {
        lines.push(vec![
            r.service.clone(),
            r.message.clone(),
            format!("{:.1}", r.rps),
            r.success_rate
                .map_or_else(|| "-".to_string(), |s| format!("{:.2}%", s * 100.0)),
            opt(r.p50_ms, 2),
            opt(r.p95_ms, 2),
            opt(r.p99_ms, 2),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str(
            "(no calls counted: a node counts only with metrics on, e.g. --metrics-listen)\n",
        );
    }
    out
}

/// The nodes that serve an endpoint, by address.
fn serving_nodes(mesh: &Mesh) -> BTreeMap<SocketAddr, String> {
    let mut nodes = BTreeMap::new();
    for s in mesh.proxy_config().services {
        for e in s.endpoints {
            nodes.insert(e.addr, e.node);
        }
    }
    nodes
}

/// Every serving node's figures now (a node that does not answer is left out, with a
/// line on stderr).
async fn sample(mesh: &Mesh, timeout: Duration) -> BTreeMap<String, NodeFigures> {
    let asks = serving_nodes(mesh).into_iter().map(|(addr, node)| {
        let target = mesh.node().actor_ref(addr, PROXY_ACTOR);
        async move { (addr, node, target.ask_timeout(GetFigures, timeout).await) }
    });
    let mut out = BTreeMap::new();
    for (addr, node, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(f) => {
                out.insert(node, f);
            }
            Err(e) => eprintln!("node {node} at {addr} did not give its figures: {e}"),
        }
    }
    out
}

pub(crate) fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    if args.interval < Duration::from_millis(100) {
        anyhow::bail!(
            "--interval {:?} is too short to measure rates: give 100ms or more",
            args.interval
        );
    }
    let client = args.client.load()?;
    let options = MeshOptions {
        master: args.client.master,
        ..MeshOptions::default()
    };
    actix::System::new().block_on(async move {
        let mesh = client.connect(options, Duration::from_secs(10)).await?;
        let mut before = sample(&mesh, args.timeout).await;
        let mut taken = Instant::now();
        loop {
            tokio::time::sleep(args.interval).await;
            let after = sample(&mesh, args.timeout).await;
            let now = Instant::now();
            let view = rows(&before, &after, now - taken, args.all);
            match args.output {
                Format::Json if args.watch => println!("{}", serde_json::to_string(&view)?),
                Format::Json => println!("{}", serde_json::to_string_pretty(&view)?),
                Format::Table => {
                    if args.watch {
                        println!();
                    }
                    print!("{}", table(&view));
                }
            }
            if !args.watch {
                break;
            }
            (before, taken) = (after, now);
        }
        mesh.node().shutdown();
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actormesh::stats::{Histogram, ServerFigures, StatsSnapshot};

    fn stats(ok: u64, failed: u64, each: Duration) -> StatsSnapshot {
        let h = Histogram::default();
        for _ in 0..ok + failed {
            h.record(each);
        }
        let mut outcomes = vec![("ok".to_string(), ok)];
        if failed > 0 {
            outcomes.push(("timeout".to_string(), failed));
        }
        StatsSnapshot {
            outcomes,
            latency: h.snapshot(),
            in_flight: 0,
        }
    }

    fn node(dest: &str, sources: Vec<(String, StatsSnapshot)>) -> NodeFigures {
        NodeFigures {
            node: "n".into(),
            keeps_figures: true,
            inbound: vec![ServerFigures {
                destination: dest.into(),
                message: "m/v1".into(),
                sources,
                handler_time: Default::default(),
            }],
            outbound: vec![],
        }
    }

    #[test]
    fn rates_success_and_quantiles_come_from_what_happened_between_the_samples() {
        let before = BTreeMap::from([(
            "a".to_string(),
            node(
                "shop/cart",
                vec![("client".into(), stats(10, 0, Duration::from_secs(1)))],
            ),
        )]);
        // 40 more on a (30 ok, 10 timeouts, all 1.5 ms; its counts hold the 10 before,
        // of 1 s each), and b, new, 10 ok.
        let ms = Duration::from_micros(1500);
        let mut cumulative = before["a"].inbound[0].sources[0].1.clone();
        cumulative.add(&stats(30, 10, ms));
        let after = BTreeMap::from([
            (
                "a".to_string(),
                node("shop/cart", vec![("client".into(), cumulative)]),
            ),
            (
                "b".to_string(),
                node("shop/cart", vec![("shop/web".into(), stats(10, 0, ms))]),
            ),
            (
                "c".to_string(),
                node(
                    "actormesh::mesh::proxy::Proxy",
                    vec![("unknown".into(), stats(5, 0, ms))],
                ),
            ),
        ]);
        let view = rows(&before, &after, Duration::from_secs(2), false);
        assert_eq!(
            view.len(),
            1,
            "actors without a service are left out: {view:?}"
        );
        let r = &view[0];
        assert_eq!((r.service.as_str(), r.requests), ("shop/cart", 50));
        assert!((r.rps - 25.0).abs() < 1e-9);
        assert!((r.success_rate.unwrap() - 0.8).abs() < 1e-9);
        // Every call in the interval took 1.5 ms: in the (1 ms, 2 ms] bucket, not 1 s.
        let p99 = r.p99_ms.unwrap();
        assert!((1.0..=2.0).contains(&p99), "{p99}");
        assert_eq!(rows(&before, &after, Duration::from_secs(2), true).len(), 2);
    }

    #[test]
    fn a_node_whose_counts_went_down_restarted_and_counts_whole() {
        let before = BTreeMap::from([(
            "a".to_string(),
            node(
                "s/x",
                vec![("client".into(), stats(100, 0, Duration::from_millis(1)))],
            ),
        )]);
        let after = BTreeMap::from([(
            "a".to_string(),
            node(
                "s/x",
                vec![("client".into(), stats(7, 0, Duration::from_millis(1)))],
            ),
        )]);
        let view = rows(&before, &after, Duration::from_secs(1), false);
        assert_eq!(view[0].requests, 7);
        let t = table(&view);
        assert!(t.starts_with("SERVICE"), "{t}");
        assert!(t.contains("100.00%"), "{t}");
    }
}
