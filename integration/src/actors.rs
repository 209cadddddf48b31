//! Actors used by the tests, the test node binary and the benchmark.

use std::time::Duration;

use actormesh::handler;
use actormesh::prelude::*;

/// Echoes a payload back.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Echo/v1", reply = Vec<u8>)]
pub struct Echo(pub Vec<u8>);

/// A one-way payload; the receiver counts it.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Note/v1")]
pub struct Note(pub Vec<u8>);

/// A sequenced one-way message from a named sender.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Seq/v1")]
pub struct Seq {
    pub sender: u32,
    pub n: u64,
}

/// Returns what the actor has seen so far.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Stats/v1", reply = Stats)]
pub struct GetStats;

/// Counters kept by [`Sink`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub notes: u64,
    pub seq_in_order: bool,
    pub seq_seen: u64,
}

/// Sleeps in its handler (blocking its arbiter) for the given milliseconds, then replies.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Block/v1", reply = u64)]
pub struct Block(pub u64);

/// Replies after the given milliseconds without blocking the actor's thread.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Delay/v1", reply = u64)]
pub struct Delay(pub u64);

/// Makes the handler panic.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Crash/v1", reply = ())]
pub struct Crash;

/// Asks the actor to stop itself.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Stop/v1", reply = ())]
pub struct StopSelf;

/// A message no test actor handles.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Nobody/v1", reply = ())]
pub struct Nobody;

/// Holds an actor's mailbox shut (without blocking the thread) until its gate opens.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "test.Hold/v1")]
pub struct Hold;

/// What an actor has received: notes, and sequences checked for order per sender.
#[derive(Debug, Default)]
pub struct Tally {
    stats: Stats,
    last: std::collections::HashMap<u32, u64>,
}

impl Tally {
    pub fn note(&mut self) {
        self.stats.notes += 1;
    }

    pub fn seq(&mut self, m: &Seq) {
        if self.stats.seq_seen == 0 {
            self.stats.seq_in_order = true;
        }
        let last = self.last.entry(m.sender).or_insert(0);
        if m.n != *last + 1 {
            self.stats.seq_in_order = false;
        }
        *last = m.n;
        self.stats.seq_seen += 1;
    }

    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }
}

/// Answers echoes, counts notes, checks per-sender order, can block, crash and stop.
#[derive(Debug, Default)]
pub struct Sink {
    tally: Tally,
}

impl Actor for Sink {
    type Context = Context<Self>;
}

#[handler]
impl Handler<Echo> for Sink {
    type Result = MessageResult<Echo>;
    fn handle(&mut self, m: Echo, _: &mut Context<Self>) -> Self::Result {
        MessageResult(m.0)
    }
}

#[handler]
impl Handler<Note> for Sink {
    type Result = ();
    fn handle(&mut self, _: Note, _: &mut Context<Self>) {
        self.tally.note();
    }
}

#[handler]
impl Handler<Seq> for Sink {
    type Result = ();
    fn handle(&mut self, m: Seq, _: &mut Context<Self>) {
        self.tally.seq(&m);
    }
}

#[handler]
impl Handler<GetStats> for Sink {
    type Result = MessageResult<GetStats>;
    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.tally.stats())
    }
}

#[handler]
impl Handler<Block> for Sink {
    type Result = u64;
    fn handle(&mut self, m: Block, _: &mut Context<Self>) -> u64 {
        std::thread::sleep(Duration::from_millis(m.0));
        m.0
    }
}

#[handler]
impl Handler<Delay> for Sink {
    type Result = actix::ResponseFuture<u64>;
    fn handle(&mut self, m: Delay, _: &mut Context<Self>) -> Self::Result {
        Box::pin(async move {
            actix_rt::time::sleep(Duration::from_millis(m.0)).await;
            m.0
        })
    }
}

#[handler]
impl Handler<Crash> for Sink {
    type Result = ();
    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("asked to crash");
    }
}

#[handler]
impl Handler<StopSelf> for Sink {
    type Result = ();
    fn handle(&mut self, _: StopSelf, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Like [`Sink`] for notes, sequences and echoes, but its mailbox can be held shut with
/// [`Hold`] until the watch channel it was made with says `true`.
#[derive(Debug)]
pub struct Gate {
    open: tokio::sync::watch::Receiver<bool>,
    tally: Tally,
}

impl Gate {
    pub fn new(open: tokio::sync::watch::Receiver<bool>) -> Self {
        Self {
            open,
            tally: Tally::default(),
        }
    }
}

impl Actor for Gate {
    type Context = Context<Self>;
}

#[handler]
impl Handler<Hold> for Gate {
    type Result = ();
    fn handle(&mut self, _: Hold, ctx: &mut Context<Self>) {
        let mut open = self.open.clone();
        // `wait` stops this actor's mailbox, and only this actor's, until the gate opens.
        ctx.wait(actix::fut::wrap_future(async move {
            let _ = open.wait_for(|o| *o).await;
        }));
    }
}

#[handler]
impl Handler<Note> for Gate {
    type Result = ();
    fn handle(&mut self, _: Note, _: &mut Context<Self>) {
        self.tally.note();
    }
}

#[handler]
impl Handler<Seq> for Gate {
    type Result = ();
    fn handle(&mut self, m: Seq, _: &mut Context<Self>) {
        self.tally.seq(&m);
    }
}

#[handler]
impl Handler<GetStats> for Gate {
    type Result = MessageResult<GetStats>;
    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.tally.stats())
    }
}

#[handler]
impl Handler<Echo> for Gate {
    type Result = MessageResult<Echo>;
    fn handle(&mut self, m: Echo, _: &mut Context<Self>) -> Self::Result {
        MessageResult(m.0)
    }
}

#[handler]
impl Handler<Crash> for Gate {
    type Result = ();
    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("gate crashed on purpose");
    }
}
