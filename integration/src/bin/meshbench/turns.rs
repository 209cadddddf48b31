//! Two ways of calling measured in turns, the order swapped every turn, so that the
//! machine's noise, which changes over seconds here, hits both alike.

use std::future::Future;
use std::time::{Duration, Instant};

use actormesh::AskError;
use anyhow::Context as _;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::mesh::LOOP_LIMIT;
use crate::{PAYLOAD, PIPELINE};

/// `n` sequential asks each way, `a` and `b` taking turns every hundred, the order
/// swapped every turn: the sorted latencies of each.
pub(crate) async fn paired_latencies<A, B, FutA, FutB>(
    n: usize,
    mut a: A,
    mut b: B,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)>
where
    A: FnMut(Vec<u8>) -> FutA,
    B: FnMut(Vec<u8>) -> FutB,
    FutA: Future<Output = Result<Vec<u8>, AskError>>,
    FutB: Future<Output = Result<Vec<u8>, AskError>>,
{
    const TURN: usize = 100;
    let begun = Instant::now();
    let (mut la, mut lb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut turn = 0;
    while la.len() < n || lb.len() < n {
        for a_now in [turn % 2 == 0, turn % 2 == 1] {
            for _ in 0..TURN {
                let t = Instant::now();
                let reply = if a_now {
                    a(vec![1u8; PAYLOAD]).await?
                } else {
                    b(vec![1u8; PAYLOAD]).await?
                };
                let took = t.elapsed();
                anyhow::ensure!(reply.len() == PAYLOAD, "bad echo");
                if a_now {
                    la.push(took)
                } else {
                    lb.push(took)
                }
            }
        }
        turn += 1;
        anyhow::ensure!(
            begun.elapsed() < LOOP_LIMIT,
            "sequential asks: {} and {} of {n} in {LOOP_LIMIT:?}",
            la.len(),
            lb.len()
        );
    }
    la.sort();
    lb.sort();
    Ok((la, lb))
}

/// The pipelined rates of `a` and `b`, each over `n` asks done in ten turns taken in
/// alternation (the order swapped every turn): the rate of each over its own turns.
pub(crate) async fn paired_rates<A, B, FutA, FutB>(
    n: usize,
    mut a: A,
    mut b: B,
) -> anyhow::Result<(f64, f64)>
where
    A: FnMut(Vec<u8>) -> FutA,
    B: FnMut(Vec<u8>) -> FutB,
    FutA: Future<Output = Result<Vec<u8>, AskError>>,
    FutB: Future<Output = Result<Vec<u8>, AskError>>,
{
    const TURNS: usize = 10;
    let per_turn = (n / TURNS).max(1);
    let (mut ta, mut tb) = (Duration::ZERO, Duration::ZERO);
    for turn in 0..TURNS {
        for a_now in [turn % 2 == 0, turn % 2 == 1] {
            if a_now {
                ta += pipelined_time(per_turn, &mut a).await?;
            } else {
                tb += pipelined_time(per_turn, &mut b).await?;
            }
        }
    }
    let done = (per_turn * TURNS) as f64;
    Ok((done / ta.as_secs_f64(), done / tb.as_secs_f64()))
}

async fn pipelined_time<F, Fut>(n: usize, mut ask: F) -> anyhow::Result<Duration>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, AskError>>,
{
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let (mut sent, mut done) = (0, 0);
    while done < n {
        while inflight.len() < PIPELINE && sent < n {
            inflight.push(ask(vec![9u8; PAYLOAD]));
            sent += 1;
        }
        let reply = inflight.next().await.context("asks ran out")??;
        anyhow::ensure!(reply.len() == PAYLOAD, "bad echo");
        done += 1;
        anyhow::ensure!(
            start.elapsed() < LOOP_LIMIT,
            "pipelined asks: {done} of {n} in {LOOP_LIMIT:?}"
        );
    }
    Ok(start.elapsed())
}
