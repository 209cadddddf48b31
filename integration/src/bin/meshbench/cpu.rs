//! CPU time from `/proc` (the schedstat of a thread, of a process's threads, of threads by
//! name), and calls at a fixed rate with the CPU they cost: `proxy_cpu_per_1000rps`.

use std::time::{Duration, Instant};

use actormesh::AskError;
use actormesh_integration::actors::Echo;
use anyhow::Context as _;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::mesh::{CALL_LIMIT, LOOP_LIMIT};
use crate::PAYLOAD;

/// CPU seconds used so far by the threads named `name` of process `pid` (`None`: this one).
pub(crate) fn thread_cpu(pid: Option<u32>, name: &str) -> f64 {
    let dir = match pid {
        Some(p) => format!("/proc/{p}/task"),
        None => "/proc/self/task".to_string(),
    };
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return 0.0;
    };
    let mut nanos = 0u64;
    for t in tasks.flatten() {
        let path = t.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        nanos += schedstat_nanos(&path.join("schedstat").display().to_string()).unwrap_or(0);
    }
    nanos as f64 / 1e9
}

/// The first field of a task's `schedstat`: its time on the CPU, in nanoseconds.
fn schedstat_nanos(path: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no CPU time in {path}"))
}

/// CPU time used so far, in nanoseconds, by the thread calling this (`/proc/thread-self`),
/// or by every thread of process `pid`.
fn cpu_nanos(pid: Option<u32>) -> anyhow::Result<u64> {
    let read = schedstat_nanos;
    match pid {
        None => read("/proc/thread-self/schedstat"),
        Some(pid) => {
            let mut total = 0;
            for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
                let task = task?.path();
                // A thread may end between listing and reading.
                if let Ok(n) = read(&format!("{}/schedstat", task.display())) {
                    total += n;
                }
            }
            Ok(total)
        }
    }
}

/// What the fixed-rate load calls.
#[derive(Clone)]
pub(crate) enum RateTarget {
    /// By service name.
    ByName(actormesh::mesh::ServiceRef),
    /// Directly to the instance.
    Direct(actormesh::RemoteRef),
}

impl RateTarget {
    async fn ask(&self) -> Result<Vec<u8>, AskError> {
        let m = Echo(vec![3u8; PAYLOAD]);
        match self {
            RateTarget::ByName(s) => s.ask_timeout(m, CALL_LIMIT).await,
            RateTarget::Direct(r) => r.ask_timeout(m, CALL_LIMIT).await,
        }
    }
}

/// Calls `target` at 1,000 a second for `span` from a thread of its own (the load is the
/// application's, not the node's: it is not counted), not waiting for one call to end
/// before the next starts; then waits for the last. The CPU seconds per second used
/// meanwhile by this thread (the caller's node runs on it: its links, lanes and replies)
/// and the server process together.
pub(crate) async fn cpu_at_rate(
    span: Duration,
    server: u32,
    target: RateTarget,
) -> anyhow::Result<f64> {
    const RATE: u64 = 1000;
    let total = (span.as_secs_f64() * RATE as f64) as u64;
    let (caller0, server0) = (cpu_nanos(None)?, cpu_nanos(Some(server))?);
    let began = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("load-1000".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let _ = tx.send(rt.block_on(async move {
                let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut inflight = FuturesUnordered::new();
                let mut sent = 0;
                while sent < total || !inflight.is_empty() {
                    tokio::select! {
                        _ = ticker.tick(), if sent < total => {
                            let t = target.clone();
                            inflight.push(async move { t.ask().await });
                            sent += 1;
                        }
                        Some(reply) = inflight.next(), if !inflight.is_empty() => {
                            anyhow::ensure!(reply?.len() == PAYLOAD, "bad echo");
                        }
                    }
                    anyhow::ensure!(
                        began.elapsed() < LOOP_LIMIT,
                        "calls at 1,000/s ran past {LOOP_LIMIT:?}"
                    );
                }
                anyhow::Ok(())
            }));
        })?;
    rx.await.context("the load thread ended")??;
    let took = began.elapsed().as_secs_f64();
    let used = (cpu_nanos(None)? - caller0) + cpu_nanos(Some(server))?.saturating_sub(server0);
    Ok(used as f64 / 1e9 / took)
}
