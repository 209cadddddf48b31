//! Peers: everything this node holds about each other node it talks to. Per peer there
//! is the current link, the lanes to its actors (a [`LaneBook`]), the asks awaiting
//! replies and the watches placed on its actors. A lane per target actor means QUIC's
//! per-stream flow control becomes per-actor backpressure: when one actor's mailbox is
//! full its lane stops being read, and only that lane stalls.
//!
//! Every task a peer spawns (lane and reply writers, control sends, link retirement) runs
//! on the node's own runtime, whichever thread made the call.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};
use tracing::{debug, warn};

use actormesh_transport::codec::{self, CodecError};
use actormesh_transport::frame::{push_frame, FrameError};
use actormesh_transport::sink::{FrameSink, PushError, FINISHED, IDLE_CLOSED};
use actormesh_transport::{Endpoint, Link, TransportError};

use crate::config::{NodeConfig, PRIORITY_SYSTEM};
use crate::lanes::{Drained, LaneBook, LaneFor, NewLane};
use crate::locks::lock;
use crate::watches::{Terminated, TerminationReason, WatchSink};
use crate::wire::{self, Control, StreamHeader, WireError};

/// Why no link to a peer could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// The node this peer belongs to was dropped.
    #[error("the node is shut down")]
    NodeGone,
    /// Dialing the peer failed.
    #[error(transparent)]
    Dial(#[from] TransportError),
    /// A link came up but the node's link loop never installed it.
    #[error("the link came up but was never installed")]
    NotInstalled,
    /// The lane header did not fit in a frame (the target's name is too long).
    #[error("cannot frame the lane header: {0}")]
    Header(#[from] FrameError),
}

/// What a reply stream delivers to a waiting ask.
#[derive(Debug)]
pub(crate) enum Reply {
    Ok(Bytes),
    Err(WireError),
    /// The link went before the answer; `sent`: the ask may have reached the peer.
    Lost(String, bool),
}

/// Whether an ask filed at link epoch `filed` cannot have been sent by `now`: no link was
/// installed when it was filed (even epoch), and none has been since.
fn never_sent(filed: u64, now: u64) -> bool {
    filed & 1 == 0 && filed == now
}

/// What every peer of one node shares.
#[derive(Debug)]
pub(crate) struct PeerContext {
    pub(crate) endpoint: Endpoint,
    pub(crate) config: NodeConfig,
    /// The node's runtime: a call from an actor on another arbiter must not put the
    /// node's writers on that arbiter (they would stop with it).
    runtime: tokio::runtime::Handle,
    /// Lane ids are unique per process: the receiver reports them back in `LaneDone`.
    next_lane: AtomicU64,
}

impl PeerContext {
    pub(crate) fn new(
        endpoint: Endpoint,
        config: NodeConfig,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            endpoint,
            config,
            runtime,
            next_lane: AtomicU64::new(1),
        }
    }

    /// Runs `task` on the node's runtime.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        drop(self.runtime.spawn(task));
    }
}

/// Counts the streams being read on one link, so a retired link is closed only once
/// everything the peer sent on it has been read.
#[derive(Debug, Default)]
pub(crate) struct StreamCount {
    open: AtomicUsize,
    changed: Notify,
}

/// Held while one incoming stream of a link is being read.
pub(crate) struct StreamGuard(Arc<StreamCount>);

impl StreamGuard {
    pub(crate) fn new(count: &Arc<StreamCount>) -> Self {
        count.open.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// A link and the streams this node writes on it.
#[derive(Debug)]
pub(crate) struct LinkCtx {
    pub(crate) link: Link,
    pub(crate) control: FrameSink,
    pub(crate) replies: Option<FrameSink>,
    pub(crate) incoming: Arc<StreamCount>,
}

#[derive(Debug, Default)]
struct PeerState {
    link: Option<LinkCtx>,
    lanes: LaneBook,
    /// Watches this node placed on the peer's actors, by watch id.
    watches: HashMap<u64, (Arc<str>, WatchSink)>,
}

/// Everything this node holds about one other node.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    ctx: Weak<PeerContext>,
    state: Mutex<PeerState>,
    link_changed: Notify,
    /// Asks awaiting replies, by correlation id, with the link epoch they were filed in.
    pending: Mutex<HashMap<u64, (oneshot::Sender<Reply>, u64)>>,
    next_corr: AtomicU64,
    /// Twice the number of links installed, plus one while a link is installed: an ask
    /// filed at an even epoch that is still current when a dial fails was never sent.
    epoch: AtomicU64,
    /// The protocol version of the current (or last) link; 0 before the first.
    version: AtomicU32,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr, ctx: Weak<PeerContext>) -> Self {
        Self {
            addr,
            ctx,
            state: Mutex::new(PeerState::default()),
            link_changed: Notify::new(),
            pending: Mutex::new(HashMap::new()),
            next_corr: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
            version: AtomicU32::new(0),
        }
    }

    /// The protocol version of the current (or last) link; 0 if there never was one.
    #[inline]
    pub(crate) fn version(&self) -> u32 {
        self.version.load(Ordering::Acquire)
    }

    /// The link epoch: changes with every link installed or lost; odd while one is installed.
    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Facts of the current link, if it is alive.
    pub(crate) fn current_link_info(&self) -> Option<Arc<actormesh_transport::LinkInfo>> {
        lock(&self.state)
            .link
            .as_ref()
            .filter(|c| c.link.is_alive())
            .map(|c| c.link.info().clone())
    }

    /// Files an ask awaiting its reply; returns its correlation id.
    pub(crate) fn expect_reply(&self, tx: oneshot::Sender<Reply>) -> u64 {
        let corr = self.next_corr.fetch_add(1, Ordering::Relaxed);
        let epoch = self.epoch.load(Ordering::Acquire);
        lock(&self.pending).insert(corr, (tx, epoch));
        corr
    }

    /// The ask `corr` stopped waiting (it finished, timed out or was dropped).
    pub(crate) fn forget_reply(&self, corr: u64) {
        lock(&self.pending).remove(&corr);
    }

    /// Hands a reply that arrived to the ask waiting for it, if one still does.
    pub(crate) fn complete(&self, corr: u64, reply: Reply) {
        let waiter = lock(&self.pending).remove(&corr);
        if let Some((tx, _)) = waiter {
            let _ = tx.send(reply);
        }
    }

    /// The lane to `target`: the open one, or a new one whose writer connects first.
    #[inline]
    fn lane(self: &Arc<Self>, target: &Arc<str>) -> Result<FrameSink, LinkError> {
        let ctx = self.ctx.upgrade().ok_or(LinkError::NodeGone)?;
        let found = lock(&self.state).lanes.lane_for(
            target,
            || ctx.next_lane.fetch_add(1, Ordering::Relaxed),
            || FrameSink::new(ctx.config.lane_high_water, ctx.config.endpoint.max_frame),
        );
        match found {
            LaneFor::Open(sink) => Ok(sink),
            LaneFor::New(lane) => self.start_lane(&ctx, target, lane),
        }
    }

    /// Starts the writer of a new lane on the node's runtime.
    fn start_lane(
        self: &Arc<Self>,
        ctx: &PeerContext,
        target: &Arc<str>,
        lane: NewLane,
    ) -> Result<FrameSink, LinkError> {
        let NewLane {
            id,
            sink,
            driver,
            drained,
            after,
        } = lane;
        let mut header = Vec::new();
        let body = wire::encode_header(&StreamHeader::Lane {
            id,
            target: target.to_string(),
        });
        if let Err(e) = push_frame(&mut header, &body, usize::MAX) {
            driver.abort(&e.to_string());
            lock(&self.state).lanes.ended(target, id);
            return Err(e.into());
        }
        let peer = self.clone();
        let idle = ctx.config.lane_idle_close;
        let target = target.clone();
        let system = target.starts_with('$');
        ctx.spawn(async move {
            // Order across lanes: this lane's stream opens only once the receiver has read
            // the previous lane to this actor to its end. Frames wait in the buffer.
            if let Some(previous) = after {
                previous.wait().await;
            }
            match peer.connected_link().await {
                Ok(link) => match link.connection().open_uni().await {
                    Ok(stream) => {
                        if system {
                            let _ = stream.set_priority(PRIORITY_SYSTEM);
                        }
                        if driver.run(stream, header, Some(idle)).await.is_ok() {
                            tokio::select! {
                                _ = drained.wait() => {}
                                _ = link.connection().closed() => {}
                            }
                        }
                    }
                    Err(e) => driver.abort(&e.to_string()),
                },
                Err(e) => {
                    let reason = e.to_string();
                    peer.fail_unsent(&reason);
                    driver.abort(&reason);
                }
            }
            lock(&peer.state).lanes.ended(&target, id);
        });
        Ok(sink)
    }

    /// The peer read lane `id` to its end.
    pub(crate) fn lane_done(&self, id: u64) {
        lock(&self.state).lanes.done(id);
    }

    /// The figures of the current link, if it is alive.
    pub(crate) fn figures(&self) -> Option<crate::stats::PeerFigures> {
        let (link, lanes) = {
            let state = lock(&self.state);
            let link = state
                .link
                .as_ref()
                .filter(|c| c.link.is_alive())?
                .link
                .clone();
            (link, state.lanes.open_count())
        };
        let stats = link.connection().stats();
        Some(crate::stats::PeerFigures {
            addr: self.addr,
            identity: link.peer().to_string(),
            rtt: stats.path.rtt,
            sent_bytes: stats.udp_tx.bytes,
            received_bytes: stats.udp_rx.bytes,
            lost_packets: stats.path.lost_packets,
            open_lanes: lanes as u64,
            pending_asks: lock(&self.pending).len() as u64,
        })
    }

    /// Open lanes from this node to the peer.
    pub(crate) fn open_lanes(&self) -> usize {
        lock(&self.state).lanes.open_count()
    }

    /// Appends one frame to the lane to `target`, waiting while it is full. A lane that
    /// closed for being idle is replaced transparently.
    pub(crate) async fn push_lane(
        self: &Arc<Self>,
        target: &Arc<str>,
        mut encode: impl FnMut(&mut Vec<u8>) -> Result<(), CodecError>,
    ) -> Result<(), PushError<CodecError>> {
        loop {
            let sink = self.lane(target).map_err(closed)?;
            match sink.push(&mut encode).await {
                // The lane ended (idle, or its link was replaced): open a new one.
                Err(PushError::Closed(r)) if r == IDLE_CLOSED || r == FINISHED => continue,
                other => return other,
            }
        }
    }

    /// Appends one frame to the lane to `target` without waiting.
    pub(crate) fn try_push_lane(
        self: &Arc<Self>,
        target: &Arc<str>,
        mut encode: impl FnMut(&mut Vec<u8>) -> Result<(), CodecError>,
    ) -> Result<(), PushError<CodecError>> {
        loop {
            let sink = self.lane(target).map_err(closed)?;
            match sink.try_push(&mut encode) {
                Err(PushError::Closed(r)) if r == IDLE_CLOSED || r == FINISHED => continue,
                other => return other,
            }
        }
    }

    /// The current link, dialing if there is none.
    pub(crate) async fn connected_link(self: &Arc<Self>) -> Result<Link, LinkError> {
        let ctx = self.ctx.upgrade().ok_or(LinkError::NodeGone)?;
        let deadline = Instant::now() + ctx.config.endpoint.handshake_timeout * 2;
        loop {
            let changed = self.link_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(current) = &lock(&self.state).link {
                if current.link.is_alive() {
                    return Ok(current.link.clone());
                }
            }
            let link = ctx.endpoint.link(self.addr).await?;
            // The link is served (and installed here) by the node's link loop.
            let installed = {
                let st = lock(&self.state);
                st.link.as_ref().map(|c| c.link.info().id) == Some(link.info().id)
            };
            if installed {
                return Ok(link);
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                return Err(LinkError::NotInstalled);
            }
        }
    }

    /// Makes `new` the current link. The previous one finishes its streams and is closed
    /// once drained. Returns true if the peer restarted (a new incarnation): its old
    /// process is gone, so its asks have failed and the watches on it have fired.
    pub(crate) fn install(self: &Arc<Self>, new: LinkCtx) -> bool {
        let ctx = self.ctx.upgrade();
        let mut st = lock(&self.state);
        let mut restarted = false;
        if let Some(old) = st.link.take() {
            let lanes = st.lanes.finish_all();
            if let Some(r) = &old.replies {
                r.finish();
            }
            old.control.finish();
            restarted = old.link.info().peer_incarnation != new.link.info().peer_incarnation;
            if let Some(ctx) = &ctx {
                ctx.spawn(retire(old, lanes, ctx.config.endpoint.retire_after));
            }
        }
        // A restarted peer lost its actors: what waited on the old process ends now.
        let lost = if restarted {
            std::mem::take(&mut st.watches)
        } else {
            HashMap::new()
        };
        // Watches placed through an earlier link to the same process are placed again.
        for (id, (target, _)) in st.watches.iter() {
            let _ = new.control.try_push(|b| {
                codec::encode_into(
                    &Control::Watch {
                        id: *id,
                        target: target.to_string(),
                    },
                    b,
                )
            });
        }
        self.version
            .store(new.link.info().version, Ordering::Release);
        self.epoch.store(
            (self.epoch.load(Ordering::Acquire) | 1) + 2,
            Ordering::Release,
        );
        st.link = Some(new);
        drop(st);
        self.link_changed.notify_waiters();
        if restarted {
            let reason = "the node restarted";
            self.fail_pending(reason);
            self.fire_lost_watches(lost, reason);
        }
        restarted
    }

    fn fire_lost_watches(&self, watches: HashMap<u64, (Arc<str>, WatchSink)>, reason: &str) {
        for (_, (actor, sink)) in watches {
            // Watches placed on a peer are local sinks: nothing goes back on the wire.
            let _ = sink.fire(Terminated {
                actor: actor.to_string(),
                node: self.addr,
                reason: TerminationReason::NodeUnreachable(reason.to_string()),
            });
        }
    }

    /// The link `id` closed. If it was the current one, everything waiting on it fails
    /// and this returns true. (Lanes on it end by themselves with the connection.)
    pub(crate) fn link_closed(&self, id: u64, reason: &str) -> bool {
        let watches = {
            let mut st = lock(&self.state);
            if st.link.as_ref().map(|c| c.link.info().id) != Some(id) {
                return false;
            }
            st.link = None;
            st.lanes.link_lost();
            self.epoch.store(
                (self.epoch.load(Ordering::Acquire) | 1) + 1,
                Ordering::Release,
            );
            std::mem::take(&mut st.watches)
        };
        self.link_changed.notify_waiters();
        self.fail_pending(reason);
        self.fire_lost_watches(watches, reason);
        true
    }

    /// Fails every pending ask: the link they may have gone on is gone.
    pub(crate) fn fail_pending(&self, reason: &str) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        for (_, (tx, _)) in pending {
            let _ = tx.send(Reply::Lost(reason.to_string(), true));
        }
    }

    /// A dial failed: every pending ask fails; those filed while no link was installed,
    /// with none installed since, were never sent.
    fn fail_unsent(&self, reason: &str) {
        let now = self.epoch.load(Ordering::Acquire);
        let pending = std::mem::take(&mut *lock(&self.pending));
        for (_, (tx, epoch)) in pending {
            let sent = !never_sent(epoch, now);
            let _ = tx.send(Reply::Lost(reason.to_string(), sent));
        }
    }

    /// The sink for replies to this peer, on the current link.
    pub(crate) fn reply_sink(&self) -> Option<FrameSink> {
        let ctx = self.ctx.upgrade()?;
        let mut st = lock(&self.state);
        let current = st.link.as_mut()?;
        if let Some(r) = &current.replies {
            if !r.is_closed() {
                return Some(r.clone());
            }
        }
        // Replies never wait: a caller that stops reading them only loses its own replies.
        let (sink, driver) = FrameSink::new(64 * 1024 * 1024, ctx.config.endpoint.max_frame);
        current.replies = Some(sink.clone());
        let conn = current.link.connection().clone();
        drop(st);
        let mut header = Vec::new();
        let _ = push_frame(
            &mut header,
            &wire::encode_header(&StreamHeader::Replies),
            usize::MAX,
        );
        ctx.spawn(async move {
            match conn.open_uni().await {
                Ok(stream) => {
                    let _ = driver.run(stream, header, None).await;
                }
                Err(e) => driver.abort(&e.to_string()),
            }
        });
        Some(sink)
    }

    /// Sends a control message on the current link, connecting first if needed.
    pub(crate) fn send_control(self: &Arc<Self>, msg: Control) {
        let current = lock(&self.state)
            .link
            .as_ref()
            .filter(|c| c.link.is_alive())
            .map(|c| c.control.clone());
        if let Some(sink) = current {
            // The usual case: no task, and a full control buffer (a peer that stopped
            // reading) drops the notice instead of piling up waiters.
            if let Err(e) = sink.try_push(|b| codec::encode_into(&msg, b)) {
                debug!(peer = %self.addr, error = %e, "control message dropped");
            }
            return;
        }
        let Some(ctx) = self.ctx.upgrade() else {
            return;
        };
        let peer = self.clone();
        ctx.spawn(async move {
            if peer.connected_link().await.is_err() {
                return;
            }
            let sink = lock(&peer.state).link.as_ref().map(|c| c.control.clone());
            if let Some(sink) = sink {
                let _ = sink.push(|b| codec::encode_into(&msg, b)).await;
            }
        });
    }

    /// Places watch `id` on the peer's actor `target`.
    pub(crate) fn add_watch(self: &Arc<Self>, id: u64, target: Arc<str>, sink: WatchSink) {
        lock(&self.state).watches.insert(id, (target.clone(), sink));
        self.send_control(Control::Watch {
            id,
            target: target.to_string(),
        });
    }

    /// Withdraws watch `id` (its watcher went away before it fired).
    pub(crate) fn unwatch(self: &Arc<Self>, id: u64) {
        if lock(&self.state).watches.remove(&id).is_some() {
            self.send_control(Control::Unwatch { id });
        }
    }

    /// The node forgets this peer (no link, unused, past the limit): watches still placed
    /// on it were never answered, and end now rather than never.
    pub(crate) fn forgotten(&self) {
        let watches = std::mem::take(&mut lock(&self.state).watches);
        self.fire_lost_watches(watches, "the node was not reached");
    }

    /// The peer reported that the actor of watch `id` is gone.
    pub(crate) fn watch_ended(&self, id: u64, reason: TerminationReason) {
        let entry = lock(&self.state).watches.remove(&id);
        if let Some((actor, sink)) = entry {
            let _ = sink.fire(Terminated {
                actor: actor.to_string(),
                node: self.addr,
                reason,
            });
        }
    }
}

fn closed(e: LinkError) -> PushError<CodecError> {
    PushError::Closed(e.to_string())
}

/// Closes a replaced link once it has nothing left to deliver: every lane we sent on it
/// was read to its end by the peer, and every stream the peer sent on it was read by us.
/// `limit` bounds the wait (a peer that never drains cannot keep a link open for ever).
async fn retire(old: LinkCtx, lanes: Vec<Arc<Drained>>, limit: Duration) {
    let drained = async {
        for lane in &lanes {
            lane.wait().await;
        }
        loop {
            let changed = old.incoming.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if old.incoming.open.load(Ordering::Acquire) == 0 {
                return;
            }
            changed.await;
        }
    };
    tokio::select! {
        _ = drained => debug!(peer = %old.link.peer(), "replaced link drained"),
        _ = tokio::time::sleep(limit) => warn!(peer = %old.link.peer(), "replaced link did not drain in {limit:?}; closing it"),
        _ = old.link.connection().closed() => return,
    }
    old.link.close(
        actormesh_transport::endpoint::close_code::REPLACED,
        "replaced by a newer link",
    );
}

/// A peer without a link that nothing refers to any more is forgotten after this long.
/// Long enough that a node coming back from a restart or a short partition finds its
/// entry again; short enough that nodes coming and going do not grow the table.
pub(crate) const PEER_GONE_KEPT: Duration = Duration::from_secs(60);

/// A peer looked up in a [`PeerTable`], and the peers pruned to make room for it.
#[derive(Debug)]
pub(crate) struct Filed<P> {
    pub(crate) peer: Arc<P>,
    pub(crate) forgotten: Vec<Arc<P>>,
}

#[derive(Debug)]
struct PeerEntry<P> {
    peer: Arc<P>,
    /// Since when it has had no link; `None` while it has one.
    gone_since: Option<Instant>,
}

/// The peers of a node by address, pruned of those gone past [`PEER_GONE_KEPT`].
/// Plain: the time is passed in.
#[derive(Debug)]
pub(crate) struct PeerTable<P> {
    entries: HashMap<SocketAddr, PeerEntry<P>>,
    kept: Duration,
}

impl<P> PeerTable<P> {
    pub(crate) fn new(kept: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            kept,
        }
    }

    /// Every peer.
    pub(crate) fn all(&self) -> Vec<Arc<P>> {
        self.entries.values().map(|e| e.peer.clone()).collect()
    }

    pub(crate) fn get(&self, addr: &SocketAddr) -> Option<Arc<P>> {
        self.entries.get(addr).map(|e| e.peer.clone())
    }

    /// The peer at `addr`, made by `make` if there is none (it has no link yet). Making
    /// one prunes the table first, so the table grows only with peers in use; the peers
    /// pruned come back in `forgotten`.
    pub(crate) fn get_or_insert_with(
        &mut self,
        addr: SocketAddr,
        now: Instant,
        make: impl FnOnce() -> P,
    ) -> Filed<P> {
        if let Some(e) = self.entries.get(&addr) {
            return Filed {
                peer: e.peer.clone(),
                forgotten: Vec::new(),
            };
        }
        let forgotten = self.prune(now);
        let peer = Arc::new(make());
        self.entries.insert(
            addr,
            PeerEntry {
                peer: peer.clone(),
                gone_since: Some(now),
            },
        );
        Filed { peer, forgotten }
    }

    /// The peer at `addr` has a link.
    pub(crate) fn linked(&mut self, addr: SocketAddr) {
        if let Some(e) = self.entries.get_mut(&addr) {
            e.gone_since = None;
        }
    }

    /// The peer at `addr` lost its link at `now`.
    pub(crate) fn unlinked(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(e) = self.entries.get_mut(&addr) {
            e.gone_since.get_or_insert(now);
        }
    }

    /// Forgets peers that have had no link for longer than the limit and that no
    /// reference, ask or task holds any more (one that is held is looked up again by
    /// whoever holds it, so it must stay the one filed). Returns them.
    pub(crate) fn prune(&mut self, now: Instant) -> Vec<Arc<P>> {
        let kept = self.kept;
        let mut gone = Vec::new();
        self.entries.retain(|_, e| {
            let stale = e
                .gone_since
                .is_some_and(|t| now.saturating_duration_since(t) > kept);
            let forget = stale && Arc::strong_count(&e.peer) == 1;
            if forget {
                gone.push(e.peer.clone());
            }
            !forget
        });
        gone
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asks_filed_with_no_link_and_none_since_count_as_never_sent() {
        assert!(
            never_sent(0, 0),
            "no link ever: the dial failed before anything went"
        );
        assert!(!never_sent(3, 3), "filed while a link was installed");
        assert!(!never_sent(4, 7), "a link was installed since");
        assert!(!never_sent(4, 8), "a link came and went since");
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 4000))
    }

    /// What `prune` hands back, by address (the tests file each peer as its address).
    fn pruned(table: &mut PeerTable<SocketAddr>, now: Instant) -> Vec<SocketAddr> {
        table.prune(now).into_iter().map(|p| *p).collect()
    }

    #[test]
    fn peers_gone_past_the_limit_and_unreferenced_are_forgotten() {
        let mut table = PeerTable::new(PEER_GONE_KEPT);
        let t0 = Instant::now();
        table.get_or_insert_with(addr(1), t0, || addr(1));
        table.unlinked(addr(1), t0);
        assert!(
            pruned(&mut table, t0 + PEER_GONE_KEPT).is_empty(),
            "kept up to the limit"
        );
        assert_eq!(
            pruned(&mut table, t0 + PEER_GONE_KEPT + Duration::from_secs(1)),
            vec![addr(1)]
        );
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn linked_or_referenced_peers_are_kept() {
        let mut table = PeerTable::new(PEER_GONE_KEPT);
        let t0 = Instant::now();
        table.get_or_insert_with(addr(1), t0, || addr(1));
        table.linked(addr(1));
        let held = table.get_or_insert_with(addr(2), t0, || addr(2)).peer;
        let later = t0 + PEER_GONE_KEPT * 2;
        assert!(pruned(&mut table, later).is_empty());
        assert_eq!(table.len(), 2);
        // The link goes: the clock for addr(1) starts then, not when it was first seen.
        table.unlinked(addr(1), later);
        assert!(pruned(&mut table, later + Duration::from_secs(1)).is_empty());
        drop(held);
        assert_eq!(
            pruned(&mut table, later + Duration::from_secs(1)),
            vec![addr(2)]
        );
        assert_eq!(
            pruned(&mut table, later + PEER_GONE_KEPT + Duration::from_secs(1)),
            vec![addr(1)]
        );
    }

    #[test]
    fn the_table_stays_bounded_as_peers_come_and_go() {
        let mut table = PeerTable::new(PEER_GONE_KEPT);
        let t0 = Instant::now();
        let mut forgotten = 0;
        // A new address every second for an hour, none referenced after use.
        for i in 0..3600u32 {
            let at = t0 + Duration::from_secs(u64::from(i));
            let a = SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 4000));
            let filed = table.get_or_insert_with(a, at, || a);
            forgotten += filed.forgotten.len();
        }
        assert!(
            table.len() <= PEER_GONE_KEPT.as_secs() as usize + 2,
            "{} peers kept",
            table.len()
        );
        assert_eq!(
            forgotten + table.len(),
            3600,
            "each pruned peer is handed back"
        );
    }
}
