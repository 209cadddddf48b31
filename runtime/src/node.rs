//! The [`Node`]: one QUIC endpoint, the actors it hosts, and its links to other nodes.
//!
//! Per peer node there is one [`Peer`]: the current link, one *lane* (a unidirectional
//! QUIC stream) per remote actor this node sends to, the asks awaiting replies and the
//! watches placed on actors there. A lane per target actor means QUIC's per-stream flow
//! control becomes per-actor backpressure: when one actor's mailbox is full its lane stops
//! being read, and only that lane stalls.

use std::any::TypeId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use actix::{Actor, Context, Recipient};
use bytes::Bytes;
use tokio::sync::{oneshot, Notify};
use tracing::{debug, info, warn};

use actormesh_transport::codec;
use actormesh_transport::codec::CodecError;
use actormesh_transport::frame::FrameReader;
use actormesh_transport::pki::Credentials;
use actormesh_transport::sink::{FrameSink, PushError, FINISHED, IDLE_CLOSED};
use actormesh_transport::{Endpoint, EndpointConfig, Link, NewLink, SpiffeId};

use crate::error::NodeError;
use crate::mailbox::MailboxGate;
use crate::message::{handlers_of, ErasedAddr, HandlerEntry, RemoteReply};
use crate::remote_ref::RemoteRef;
use crate::supervise::{self, RestartPolicy};
use crate::wire::{self, Control, StreamHeader, WatchEnd, WireError};

/// Stream priority of lanes to system actors (names starting with `$`, such as the
/// master's `$master`): heartbeats and membership are sent before user traffic on the same
/// link, second only to the control stream.
pub const PRIORITY_SYSTEM: i32 = 50;

/// Settings of a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Transport settings (listen address, timeouts, frame size, windows).
    pub endpoint: EndpointConfig,
    /// Deadline of `ask` when none is given.
    pub default_ask_timeout: Duration,
    /// Mailbox bound of actors spawned without their own.
    pub mailbox_capacity: usize,
    /// Unsent bytes a lane may buffer before `tell` waits and `try_tell` reports `Full`.
    pub lane_high_water: usize,
    /// A lane (the stream to one remote actor) unused for this long is closed; the next
    /// message opens a new one. Keeps the number of streams to what is in use.
    pub lane_idle_close: Duration,
}

impl NodeConfig {
    /// Defaults for a node listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        let mut endpoint = EndpointConfig::new(listen);
        // Asks to a node that died fail as Unreachable once its link times out.
        endpoint.idle_timeout = Duration::from_secs(5);
        endpoint.keep_alive = Duration::from_secs(1);
        Self {
            endpoint,
            default_ask_timeout: Duration::from_secs(5),
            mailbox_capacity: 1024,
            lane_high_water: 1024 * 1024,
            lane_idle_close: Duration::from_secs(30),
        }
    }
}

/// Options for [`Node::spawn_with`].
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    /// Messages the mailbox holds before senders wait (or `try_` calls fail).
    pub mailbox_capacity: Option<usize>,
    /// What happens when the actor panics or stops.
    pub restart: RestartPolicy,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        Self {
            mailbox_capacity: None,
            restart: RestartPolicy::Never,
        }
    }
}

/// Why a watched actor is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminationReason {
    /// It stopped.
    Stopped,
    /// It panicked and its restart policy gave up (or was `Never`).
    Panicked,
    /// There was no actor by that name when the watch was placed.
    NoSuchActor,
    /// Its node became unreachable; the actor may still run there.
    NodeUnreachable(String),
}

/// Notice that a watched actor is gone. Also an actix message, for watchers that are actors.
#[derive(Debug, Clone, PartialEq, Eq, actix::Message)]
#[rtype(result = "()")]
pub struct Terminated {
    /// The actor's name.
    pub actor: String,
    /// The node it lived on.
    pub node: SocketAddr,
    /// Why it is gone.
    pub reason: TerminationReason,
}

pub(crate) enum WatchSink {
    Channel(oneshot::Sender<Terminated>),
    Actor(Recipient<Terminated>),
    Remote { peer: SocketAddr, id: u64 },
}

impl std::fmt::Debug for WatchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchSink::Channel(_) => f.write_str("Channel"),
            WatchSink::Actor(_) => f.write_str("Actor"),
            WatchSink::Remote { peer, id } => write!(f, "Remote({peer}, {id})"),
        }
    }
}

impl WatchSink {
    /// Whether someone still listens (remote watchers are withdrawn with `Unwatch`).
    fn is_live(&self) -> bool {
        match self {
            WatchSink::Channel(tx) => !tx.is_closed(),
            WatchSink::Actor(r) => r.connected(),
            WatchSink::Remote { .. } => true,
        }
    }

    fn fire(self, node: &Arc<NodeInner>, t: Terminated) {
        match self {
            WatchSink::Channel(tx) => {
                let _ = tx.send(t);
            }
            WatchSink::Actor(r) => r.do_send(t),
            WatchSink::Remote { peer, id } => {
                let reason = match t.reason {
                    TerminationReason::Panicked => WatchEnd::Panicked,
                    TerminationReason::NoSuchActor => WatchEnd::NoSuchActor,
                    _ => WatchEnd::Stopped,
                };
                node.peer(peer)
                    .send_control(Control::Terminated { id, reason });
            }
        }
    }
}

/// A named actor on this node. It outlives restarts of the actor instance.
pub(crate) struct ActorSlot {
    pub(crate) name: Arc<str>,
    pub(crate) actor_type: &'static str,
    pub(crate) addr: RwLock<Option<Box<ErasedAddr>>>,
    pub(crate) by_name: HashMap<&'static str, &'static HandlerEntry>,
    /// Few entries per actor: a scan of TypeIds beats hashing them.
    pub(crate) by_type: Vec<(TypeId, &'static HandlerEntry)>,
    pub(crate) permits: Arc<MailboxGate>,
    /// Incremented each time an instance starts.
    pub(crate) generation: AtomicU64,
    /// The newest generation that panicked.
    pub(crate) panicked: AtomicU64,
    /// The actor has ended for good (set by `actor_ended`).
    pub(crate) stopped: AtomicBool,
    /// `Node::stop` was called: do not restart, stop the running instance.
    pub(crate) stop_requested: AtomicBool,
    pub(crate) stop_signal: Notify,
    /// `None` once the actor has ended: a watch placed later fires at once.
    watchers: Mutex<Option<Vec<WatchSink>>>,
}

impl std::fmt::Debug for ActorSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorSlot")
            .field("name", &self.name)
            .field("actor_type", &self.actor_type)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

impl ActorSlot {
    /// The handler of message type `M`, if the actor accepts it.
    #[inline]
    pub(crate) fn entry_for(&self, message: TypeId) -> Option<&'static HandlerEntry> {
        self.by_type
            .iter()
            .find(|(t, _)| *t == message)
            .map(|(_, e)| *e)
    }

    pub(crate) fn panicked_since(&self, generation: u64) -> bool {
        self.panicked.load(Ordering::Acquire) >= generation
    }
}

/// What a reply stream delivers to a waiting ask.
#[derive(Debug)]
pub(crate) enum Reply {
    Ok(Bytes),
    Err(WireError),
    Lost(String),
}

/// Set once everything sent on a lane has been read by the receiver (or can no longer
/// be: its link is gone).
#[derive(Debug, Default)]
pub(crate) struct Drained {
    done: AtomicBool,
    notify: Notify,
}

impl Drained {
    fn set(&self) {
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_set(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// Counts the streams being read on one link, so a retired link is closed only once
/// everything the peer sent on it has been read.
#[derive(Debug, Default)]
struct StreamCount {
    open: std::sync::atomic::AtomicUsize,
    changed: Notify,
}

struct StreamGuard(Arc<StreamCount>);

impl StreamGuard {
    fn new(count: &Arc<StreamCount>) -> Self {
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

#[derive(Debug)]
struct Lane {
    sink: FrameSink,
    drained: Arc<Drained>,
}

#[derive(Debug)]
struct LinkCtx {
    link: Link,
    control: FrameSink,
    replies: Option<FrameSink>,
    incoming: Arc<StreamCount>,
}

#[derive(Debug, Default)]
struct PeerState {
    link: Option<LinkCtx>,
    lanes: HashMap<Arc<str>, Lane>,
    /// Lanes whose `LaneDone` has not arrived yet, by lane id.
    draining: HashMap<u64, Arc<Drained>>,
    watches: HashMap<u64, (Arc<str>, WatchSink)>,
}

/// Everything this node holds about one other node.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    node: Weak<NodeInner>,
    state: Mutex<PeerState>,
    link_changed: Notify,
    pub(crate) pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_corr: AtomicU64,
    next_lane: AtomicU64,
}

impl Peer {
    pub(crate) fn next_corr(&self) -> u64 {
        self.next_corr.fetch_add(1, Ordering::Relaxed)
    }

    /// The lane to `target`: the existing one, or a new one whose driver connects first.
    fn lane(self: &Arc<Self>, target: &Arc<str>) -> Result<FrameSink, String> {
        let node = self.node.upgrade().ok_or("the node is shut down")?;
        let mut st = lock(&self.state);
        let previous = match st.lanes.get(target) {
            Some(lane) if !lane.sink.is_closed() => return Ok(lane.sink.clone()),
            Some(lane) => Some(lane.drained.clone()).filter(|d| !d.is_set()),
            None => None,
        };
        let (sink, driver) =
            FrameSink::new(node.config.lane_high_water, node.config.endpoint.max_frame);
        let id = self.next_lane.fetch_add(1, Ordering::Relaxed);
        let drained = Arc::new(Drained::default());
        st.draining.insert(id, drained.clone());
        st.lanes.insert(
            target.clone(),
            Lane {
                sink: sink.clone(),
                drained: drained.clone(),
            },
        );
        drop(st);
        let mut header = Vec::new();
        let body = wire::encode_header(&StreamHeader::Lane {
            id,
            target: target.to_string(),
        });
        actormesh_transport::frame::push_frame(&mut header, &body, usize::MAX)
            .map_err(|e| e.to_string())?;
        let peer = self.clone();
        let idle = node.config.lane_idle_close;
        let target = target.clone();
        let system = target.starts_with('$');
        tokio::spawn(async move {
            // Order across lanes: this lane's stream opens only once the receiver has read
            // the previous lane to this actor to its end. Frames wait in the buffer.
            if let Some(previous) = previous {
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
                Err(reason) => {
                    peer.fail_pending(&reason);
                    driver.abort(&reason);
                }
            }
            {
                // Forget the lane once it is done, so the map holds only lanes in use.
                let mut st = lock(&peer.state);
                st.draining.remove(&id);
                if st
                    .lanes
                    .get(&target)
                    .is_some_and(|l| Arc::ptr_eq(&l.drained, &drained))
                {
                    st.lanes.remove(&target);
                }
            }
            drained.set();
        });
        Ok(sink)
    }

    fn lane_done(&self, id: u64) {
        let drained = lock(&self.state).draining.remove(&id);
        if let Some(d) = drained {
            d.set();
        }
    }

    /// Appends one frame to the lane to `target`, waiting while it is full. A lane that
    /// closed for being idle is replaced transparently.
    pub(crate) async fn push_lane(
        self: &Arc<Self>,
        target: &Arc<str>,
        mut encode: impl FnMut(&mut Vec<u8>) -> Result<(), CodecError>,
    ) -> Result<(), PushError<CodecError>> {
        loop {
            let sink = self.lane(target).map_err(PushError::Closed)?;
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
            let sink = self.lane(target).map_err(PushError::Closed)?;
            match sink.try_push(&mut encode) {
                Err(PushError::Closed(r)) if r == IDLE_CLOSED || r == FINISHED => continue,
                other => return other,
            }
        }
    }

    /// The current link, dialing if there is none.
    pub(crate) async fn connected_link(self: &Arc<Self>) -> Result<Link, String> {
        let node = self.node.upgrade().ok_or("the node is shut down")?;
        let deadline = Instant::now() + node.config.endpoint.handshake_timeout * 2;
        loop {
            let changed = self.link_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(ctx) = &lock(&self.state).link {
                if ctx.link.is_alive() {
                    return Ok(ctx.link.clone());
                }
            }
            let link = node
                .endpoint
                .link(self.addr)
                .await
                .map_err(|e| e.to_string())?;
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
                return Err("the link came up but was never installed".into());
            }
        }
    }

    fn install(self: &Arc<Self>, node: &Arc<NodeInner>, ctx: LinkCtx) {
        let mut st = lock(&self.state);
        let mut restarted = false;
        if let Some(old) = st.link.take() {
            for lane in st.lanes.values() {
                lane.sink.finish();
            }
            if let Some(r) = &old.replies {
                r.finish();
            }
            old.control.finish();
            restarted = old.link.info().peer_incarnation != ctx.link.info().peer_incarnation;
            let lanes: Vec<Arc<Drained>> = st.lanes.values().map(|l| l.drained.clone()).collect();
            tokio::spawn(retire(old, lanes, node.config.endpoint.idle_timeout * 6));
        }
        // A restarted peer lost its actors: what waited on the old process ends now.
        let lost = if restarted {
            std::mem::take(&mut st.watches)
        } else {
            HashMap::new()
        };
        // Watches placed through an earlier link to the same process are placed again.
        for (id, (target, _)) in st.watches.iter() {
            let _ = ctx.control.try_push(|b| {
                codec::encode_into(
                    &Control::Watch {
                        id: *id,
                        target: target.to_string(),
                    },
                    b,
                )
            });
        }
        st.link = Some(ctx);
        drop(st);
        self.link_changed.notify_waiters();
        if restarted {
            let reason = "the node restarted";
            self.fail_pending(reason);
            self.fire_lost_watches(node, lost, reason);
            node.forget_remote_watchers(self.addr);
        }
    }

    fn fire_lost_watches(
        &self,
        node: &Arc<NodeInner>,
        watches: HashMap<u64, (Arc<str>, WatchSink)>,
        reason: &str,
    ) {
        for (_, (actor, sink)) in watches {
            sink.fire(
                node,
                Terminated {
                    actor: actor.to_string(),
                    node: self.addr,
                    reason: TerminationReason::NodeUnreachable(reason.to_string()),
                },
            );
        }
    }

    /// The link `id` closed. If it was the current one, everything waiting on it fails.
    /// (Lanes on it end by themselves: their streams fail with the connection.)
    fn link_closed(self: &Arc<Self>, node: &Arc<NodeInner>, id: u64, reason: &str) {
        let watches = {
            let mut st = lock(&self.state);
            if st.link.as_ref().map(|c| c.link.info().id) != Some(id) {
                return;
            }
            st.link = None;
            st.lanes.clear();
            std::mem::take(&mut st.watches)
        };
        self.link_changed.notify_waiters();
        self.fail_pending(reason);
        self.fire_lost_watches(node, watches, reason);
        node.forget_remote_watchers(self.addr);
    }

    pub(crate) fn fail_pending(&self, reason: &str) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        for (_, tx) in pending {
            let _ = tx.send(Reply::Lost(reason.to_string()));
        }
    }

    /// The sink for replies to this peer, on the current link.
    pub(crate) fn reply_sink(&self) -> Option<FrameSink> {
        let node = self.node.upgrade()?;
        let mut st = lock(&self.state);
        let ctx = st.link.as_mut()?;
        if let Some(r) = &ctx.replies {
            if !r.is_closed() {
                return Some(r.clone());
            }
        }
        // Replies never wait: a caller that stops reading them only loses its own replies.
        let (sink, driver) = FrameSink::new(64 * 1024 * 1024, node.config.endpoint.max_frame);
        ctx.replies = Some(sink.clone());
        let conn = ctx.link.connection().clone();
        let mut header = Vec::new();
        let _ = actormesh_transport::frame::push_frame(
            &mut header,
            &wire::encode_header(&StreamHeader::Replies),
            usize::MAX,
        );
        tokio::spawn(async move {
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
        let peer = self.clone();
        tokio::spawn(async move {
            if peer.connected_link().await.is_err() {
                return;
            }
            let sink = lock(&peer.state).link.as_ref().map(|c| c.control.clone());
            if let Some(sink) = sink {
                let _ = sink.push(|b| codec::encode_into(&msg, b)).await;
            }
        });
    }

    /// Withdraws watch `id` (its watcher went away before it fired).
    pub(crate) fn unwatch(self: &Arc<Self>, id: u64) {
        if lock(&self.state).watches.remove(&id).is_some() {
            self.send_control(Control::Unwatch { id });
        }
    }

    pub(crate) fn add_watch(self: &Arc<Self>, id: u64, target: Arc<str>, sink: WatchSink) {
        lock(&self.state).watches.insert(id, (target.clone(), sink));
        self.send_control(Control::Watch {
            id,
            target: target.to_string(),
        });
    }
}

pub(crate) struct NodeInner {
    pub(crate) endpoint: Endpoint,
    pub(crate) config: NodeConfig,
    pub(crate) actors: RwLock<HashMap<Arc<str>, Arc<ActorSlot>>>,
    peers: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    next_watch: AtomicU64,
    /// Recently ended actors and why, so a watch that arrives just after the end reports
    /// the real reason instead of `NoSuchActor`.
    ended: Mutex<std::collections::VecDeque<(Arc<str>, TerminationReason)>>,
}

const ENDED_KEPT: usize = 256;
/// Watchers one actor may have.
const MAX_WATCHERS: usize = 100_000;

impl std::fmt::Debug for NodeInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.endpoint.local_addr())
            .finish_non_exhaustive()
    }
}

impl NodeInner {
    pub(crate) fn peer(self: &Arc<Self>, addr: SocketAddr) -> Arc<Peer> {
        lock(&self.peers)
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Peer {
                    addr,
                    node: Arc::downgrade(self),
                    state: Mutex::new(PeerState::default()),
                    link_changed: Notify::new(),
                    pending: Mutex::new(HashMap::new()),
                    next_corr: AtomicU64::new(1),
                    next_lane: AtomicU64::new(1),
                })
            })
            .clone()
    }

    pub(crate) fn slot(&self, name: &str) -> Option<Arc<ActorSlot>> {
        read(&self.actors).get(name).cloned()
    }

    /// Why a watch on `name`, which is not running, ends.
    fn absent_reason(&self, name: &str) -> TerminationReason {
        lock(&self.ended)
            .iter()
            .rev()
            .find(|(n, _)| &**n == name)
            .map(|(_, r)| r.clone())
            .unwrap_or(TerminationReason::NoSuchActor)
    }

    fn forget_remote_watchers(&self, peer: SocketAddr) {
        for slot in read(&self.actors).values() {
            if let Some(w) = lock(&slot.watchers).as_mut() {
                w.retain(|w| !matches!(w, WatchSink::Remote { peer: p, .. } if *p == peer));
            }
        }
    }

    /// Adds a watcher to the actor `name`, or, if it is not running, fires it at once.
    fn add_watcher(self: &Arc<Self>, name: &str, sink: WatchSink) {
        let sink = match self.slot(name) {
            Some(slot) => match lock(&slot.watchers).as_mut() {
                Some(watchers) if watchers.len() >= MAX_WATCHERS => {
                    // Bounded: a peer placing watches without end must not grow us.
                    warn!(
                        actor = name,
                        "watch refused: the actor already has {MAX_WATCHERS} watchers"
                    );
                    return;
                }
                Some(watchers) => {
                    // Watchers that went away leave nothing behind.
                    watchers.retain(WatchSink::is_live);
                    // A watch placed again after a link change may be a duplicate; it only
                    // costs one extra notice, which the watcher ignores.
                    watchers.push(sink);
                    return;
                }
                None => sink,
            },
            None => sink,
        };
        sink.fire(
            self,
            Terminated {
                actor: name.to_string(),
                node: self.endpoint.local_addr(),
                reason: self.absent_reason(name),
            },
        );
    }

    /// The actor behind `slot` is gone for good: unregister it and tell its watchers.
    pub(crate) fn actor_ended(self: &Arc<Self>, slot: &Arc<ActorSlot>, reason: TerminationReason) {
        slot.stopped.store(true, Ordering::Release);
        *write(&slot.addr) = None;
        {
            let mut actors = write(&self.actors);
            if actors.get(&slot.name).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                actors.remove(&slot.name);
            }
        }
        {
            let mut ended = lock(&self.ended);
            if ended.len() == ENDED_KEPT {
                ended.pop_front();
            }
            ended.push_back((slot.name.clone(), reason.clone()));
        }
        let watchers = lock(&slot.watchers).take().unwrap_or_default();
        for w in watchers {
            w.fire(
                self,
                Terminated {
                    actor: slot.name.to_string(),
                    node: self.endpoint.local_addr(),
                    reason: reason.clone(),
                },
            );
        }
    }
}

/// A node of the mesh: hosts named actors and reaches actors on other nodes.
///
/// Cheap to clone. Start it inside an actix system (`#[actix::main]`): the actors it spawns
/// run on the current arbiter.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

fn valid_name(name: &str) -> Result<(), NodeError> {
    let bad = |reason| {
        Err(NodeError::BadName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 255 {
        return bad("names are 1 to 255 bytes long");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("names are printable ASCII without spaces");
    }
    Ok(())
}

impl Node {
    /// Starts a node with `credentials`, listening as `config` says.
    pub fn start(config: NodeConfig, credentials: &Credentials) -> Result<Node, NodeError> {
        if config.mailbox_capacity == 0 {
            return Err(NodeError::Config(
                "mailbox_capacity must be at least 1".into(),
            ));
        }
        let (endpoint, links) = Endpoint::bind(config.endpoint.clone(), credentials)?;
        let inner = Arc::new(NodeInner {
            endpoint,
            config,
            actors: RwLock::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            next_watch: AtomicU64::new(1),
            ended: Mutex::new(std::collections::VecDeque::new()),
        });
        tokio::spawn(link_loop(Arc::downgrade(&inner), links));
        Ok(Node { inner })
    }

    /// The address this node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.endpoint.local_addr()
    }

    /// This node's identity.
    pub fn identity(&self) -> SpiffeId {
        self.inner.endpoint.identity()
    }

    /// The transport endpoint (for certificate replacement and diagnostics).
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The configuration in force.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Starts `actor` under `name`, never restarted. Returns a reference to it.
    pub fn spawn<A>(&self, name: &str, actor: A) -> Result<RemoteRef, NodeError>
    where
        A: Actor<Context = Context<A>>,
    {
        let cell = std::cell::Cell::new(Some(actor));
        self.spawn_with(name, SpawnOptions::default(), move || {
            cell.take()
                .expect("a Never policy creates the actor exactly once")
        })
    }

    /// Starts an actor made by `factory` under `name`, supervised by `options.restart`:
    /// a panic (or, with `Always`, any stop) makes a fresh instance from `factory`.
    pub fn spawn_with<A, F>(
        &self,
        name: &str,
        options: SpawnOptions,
        factory: F,
    ) -> Result<RemoteRef, NodeError>
    where
        A: Actor<Context = Context<A>>,
        F: Fn() -> A + 'static,
    {
        valid_name(name)?;
        let entries = handlers_of(TypeId::of::<A>());
        let actor_type = std::any::type_name::<A>();
        if entries.is_empty() {
            return Err(NodeError::NoHandlers(actor_type));
        }
        let capacity = options
            .mailbox_capacity
            .unwrap_or(self.inner.config.mailbox_capacity)
            .max(1);
        let slot = Arc::new(ActorSlot {
            name: Arc::from(name),
            actor_type,
            addr: RwLock::new(None),
            by_name: entries.iter().map(|e| (e.name, *e)).collect(),
            by_type: entries.iter().map(|e| ((e.message)(), *e)).collect(),
            permits: MailboxGate::new(capacity),
            generation: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            stop_requested: AtomicBool::new(false),
            stop_signal: Notify::new(),
            watchers: Mutex::new(Some(Vec::new())),
        });
        {
            let mut actors = write(&self.inner.actors);
            if actors.contains_key(name) {
                return Err(NodeError::NameTaken(name.to_string()));
            }
            actors.insert(slot.name.clone(), slot.clone());
        }
        if let Err(reason) = supervise::start(
            Arc::downgrade(&self.inner),
            slot.clone(),
            factory,
            options.restart,
        ) {
            write(&self.inner.actors).remove(name);
            return Err(NodeError::Start {
                name: name.to_string(),
                reason,
            });
        }
        debug!(actor = name, actor_type, "actor spawned");
        Ok(RemoteRef::local(self.clone(), slot))
    }

    /// Stops the actor `name` (its `stopping`/`stopped` hooks run). Returns false if there
    /// is no such actor.
    pub fn stop(&self, name: &str) -> bool {
        match self.inner.slot(name) {
            Some(slot) => {
                supervise::request_stop(&slot);
                true
            }
            None => false,
        }
    }

    /// A reference to the actor `name` on the node listening at `addr` (this node or
    /// another). Making it does not contact the node.
    pub fn actor_ref(&self, addr: SocketAddr, name: &str) -> RemoteRef {
        if addr == self.local_addr() {
            return RemoteRef::local_by_name(self.clone(), name);
        }
        RemoteRef::remote(self.clone(), self.inner.peer(addr), name)
    }

    /// A reference to the actor `name` on this node.
    pub fn local_ref(&self, name: &str) -> RemoteRef {
        RemoteRef::local_by_name(self.clone(), name)
    }

    /// Messages waiting in the mailbox of actor `name` (queued, not yet handled).
    pub fn mailbox_depth(&self, name: &str) -> Option<usize> {
        self.inner.slot(name).map(|s| s.permits.depth())
    }

    /// Open lanes (streams to remote actors) from this node to the node at `addr`.
    pub fn lanes_to(&self, addr: SocketAddr) -> usize {
        let Some(peer) = lock(&self.inner.peers).get(&addr).cloned() else {
            return 0;
        };
        let st = lock(&peer.state);
        st.lanes.values().filter(|l| !l.sink.is_closed()).count()
    }

    /// Names of the actors hosted here.
    pub fn actor_names(&self) -> Vec<String> {
        read(&self.inner.actors)
            .keys()
            .map(|k| k.to_string())
            .collect()
    }

    /// Resolves when the actor behind `target` is gone (or its node becomes unreachable).
    pub fn watch(&self, target: &RemoteRef) -> Watch {
        let (tx, rx) = oneshot::channel();
        let remote = self.place_watch(target, WatchSink::Channel(tx));
        Watch {
            rx,
            actor: target.name().to_string(),
            node: target.addr(),
            remote,
            fired: false,
        }
    }

    /// Sends [`Terminated`] to `watcher` when the actor behind `target` is gone.
    pub fn watch_with(&self, target: &RemoteRef, watcher: Recipient<Terminated>) {
        self.place_watch(target, WatchSink::Actor(watcher));
    }

    fn place_watch(&self, target: &RemoteRef, sink: WatchSink) -> Option<(Arc<Peer>, u64)> {
        if let Some(peer) = target.peer() {
            let id = self.inner.next_watch.fetch_add(1, Ordering::Relaxed);
            peer.add_watch(id, target.name_arc(), sink);
            return Some((peer.clone(), id));
        }
        self.inner.add_watcher(target.name(), sink);
        None
    }

    /// Watchers placed on the actor `name` here (by this node and others).
    pub fn watchers_of(&self, name: &str) -> usize {
        self.inner
            .slot(name)
            .and_then(|s| lock(&s.watchers).as_ref().map(Vec::len))
            .unwrap_or(0)
    }

    /// Closes every link and stops accepting new ones.
    pub fn shutdown(&self) {
        self.inner.endpoint.shutdown();
    }
}

/// A future that resolves with [`Terminated`] when a watched actor is gone.
#[derive(Debug)]
pub struct Watch {
    rx: oneshot::Receiver<Terminated>,
    actor: String,
    node: SocketAddr,
    /// For a remote target: the peer and watch id, to withdraw the watch if this future is
    /// dropped before it fires.
    remote: Option<(Arc<Peer>, u64)>,
    fired: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let (false, Some((peer, id))) = (self.fired, self.remote.take()) {
            peer.unwatch(id);
        }
    }
}

impl std::future::Future for Watch {
    type Output = Terminated;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Terminated> {
        let this = &mut *self;
        std::pin::Pin::new(&mut this.rx).poll(cx).map(|r| {
            this.fired = true;
            r.unwrap_or_else(|_| Terminated {
                actor: this.actor.clone(),
                node: this.node,
                reason: TerminationReason::NodeUnreachable("the local node shut down".into()),
            })
        })
    }
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

async fn link_loop(
    node: Weak<NodeInner>,
    mut links: tokio::sync::mpsc::UnboundedReceiver<NewLink>,
) {
    while let Some(new) = links.recv().await {
        let Some(node) = node.upgrade() else { return };
        serve_link(node, new);
    }
}

fn serve_link(node: Arc<NodeInner>, new: NewLink) {
    let NewLink {
        link,
        control_send,
        control_recv,
    } = new;
    let peer = node.peer(link.info().peer_addr);
    let (control, driver) = FrameSink::new(4 * 1024 * 1024, node.config.endpoint.max_frame);
    tokio::spawn(driver.run(control_send, Vec::new(), None));
    let incoming = Arc::new(StreamCount::default());
    peer.install(
        &node,
        LinkCtx {
            link: link.clone(),
            control,
            replies: None,
            incoming: incoming.clone(),
        },
    );
    info!(peer = %link.peer(), addr = %link.info().peer_addr, "link to node up");
    tokio::spawn(serve_control(
        node.clone(),
        peer.clone(),
        link.clone(),
        control_recv,
    ));
    let conn = link.connection().clone();
    let (n2, p2, l2) = (node.clone(), peer.clone(), link.clone());
    tokio::spawn(async move {
        while let Ok(stream) = conn.accept_uni().await {
            let guard = StreamGuard::new(&incoming);
            let (n, p, l) = (n2.clone(), p2.clone(), l2.clone());
            tokio::spawn(async move {
                serve_stream(n, p, l, stream).await;
                drop(guard);
            });
        }
    });
    tokio::spawn(async move {
        let err = link.connection().closed().await;
        let reason =
            actormesh_transport::endpoint::map_connection_error(link.info().peer_addr, &err);
        debug!(peer = %link.peer(), %reason, "link closed");
        peer.link_closed(&node, link.info().id, &reason.to_string());
    });
}

async fn serve_control(
    node: Arc<NodeInner>,
    peer: Arc<Peer>,
    link: Link,
    mut recv: FrameReader<quinn::RecvStream>,
) {
    loop {
        let frame = match recv.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) if is_stream_failure(&e) => return,
            Err(e) => {
                warn!(peer = %link.peer(), error = %e, "bad control frame; closing link");
                link.close(
                    actormesh_transport::endpoint::close_code::PROTOCOL,
                    "bad control frame",
                );
                return;
            }
        };
        let msg: Control = match codec::decode(&frame) {
            Ok(m) => m,
            Err(e) => {
                warn!(peer = %link.peer(), error = %e, "undecodable control message; closing link");
                link.close(
                    actormesh_transport::endpoint::close_code::PROTOCOL,
                    "undecodable control message",
                );
                return;
            }
        };
        match msg {
            Control::Watch { id, target } => node.add_watcher(
                &target,
                WatchSink::Remote {
                    peer: peer.addr,
                    id,
                },
            ),
            Control::LaneDone { id } => peer.lane_done(id),
            Control::Unwatch { id } => {
                for slot in read(&node.actors).values() {
                    if let Some(w) = lock(&slot.watchers).as_mut() {
                        w.retain(|s| !matches!(s, WatchSink::Remote { peer: p, id: i } if *p == peer.addr && *i == id));
                    }
                }
            }
            Control::Terminated { id, reason } => {
                let entry = lock(&peer.state).watches.remove(&id);
                if let Some((actor, sink)) = entry {
                    let reason = match reason {
                        WatchEnd::Stopped => TerminationReason::Stopped,
                        WatchEnd::Panicked => TerminationReason::Panicked,
                        WatchEnd::NoSuchActor => TerminationReason::NoSuchActor,
                    };
                    sink.fire(
                        &node,
                        Terminated {
                            actor: actor.to_string(),
                            node: peer.addr,
                            reason,
                        },
                    );
                }
            }
        }
    }
}

/// The stream (or its connection) failed underneath: not the peer's framing at fault, so
/// nothing to refuse or report beyond the link going down.
fn is_stream_failure(e: &actormesh_transport::frame::FrameError) -> bool {
    matches!(e, actormesh_transport::frame::FrameError::Io(_))
}

/// Stop code sent on a stream whose frames broke the protocol.
const STOP_PROTOCOL: u32 = 1;

/// Stops a stream whose bytes broke the protocol, saying so in the log. The link and the
/// peer's other streams carry on.
fn refuse_stream(
    reader: &mut FrameReader<quinn::RecvStream>,
    link: &Link,
    what: &str,
    error: &dyn std::fmt::Display,
) {
    warn!(peer = %link.peer(), %error, "{what}; stream stopped");
    let _ = reader
        .get_mut()
        .stop(quinn::VarInt::from_u32(STOP_PROTOCOL));
}

async fn serve_stream(
    node: Arc<NodeInner>,
    peer: Arc<Peer>,
    link: Link,
    stream: quinn::RecvStream,
) {
    let mut reader = FrameReader::new(stream, node.config.endpoint.max_frame);
    let header = match reader.next().await {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(e) if is_stream_failure(&e) => return,
        Err(e) => {
            refuse_stream(&mut reader, &link, "bad header frame", &e);
            return;
        }
    };
    match wire::decode_header(&header) {
        Ok(StreamHeader::Lane { id, target }) => {
            if serve_lane(node, peer.clone(), link, target, reader).await {
                peer.send_control(Control::LaneDone { id });
            }
        }
        Ok(StreamHeader::Replies) => serve_replies(peer, link, reader).await,
        Err(e) => {
            refuse_stream(&mut reader, &link, "unknown stream header", &e);
        }
    }
}

async fn serve_replies(peer: Arc<Peer>, link: Link, mut reader: FrameReader<quinn::RecvStream>) {
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) if is_stream_failure(&e) => return,
            Err(e) => {
                refuse_stream(&mut reader, &link, "bad frame on the reply stream", &e);
                return;
            }
        };
        let (corr, result) = match wire::decode_reply(&frame) {
            Ok((corr, Ok(payload))) => {
                let offset = frame.len() - payload.len();
                (corr, Reply::Ok(frame.slice(offset..)))
            }
            Ok((corr, Err(e))) => (corr, Reply::Err(e)),
            Err(e) => {
                refuse_stream(&mut reader, &link, "malformed reply", &e);
                return;
            }
        };
        let waiter = lock(&peer.pending).remove(&corr);
        if let Some(tx) = waiter {
            let _ = tx.send(result);
        }
    }
}

/// Reads one lane and delivers its frames; true if it was read to a clean end.
async fn serve_lane(
    node: Arc<NodeInner>,
    peer: Arc<Peer>,
    link: Link,
    target: String,
    mut reader: FrameReader<quinn::RecvStream>,
) -> bool {
    let mut slot = node.slot(&target);
    let mut replies: Option<FrameSink> = None;
    let caller = Arc::new(link.peer().clone());
    // When the buffered frames were read from the network: an ask's time left counts from
    // there, so frames that waited behind a full mailbox are not mistaken for fresh ones.
    let mut received = Instant::now();
    loop {
        let next = match reader.try_next_buffered() {
            Ok(Some(f)) => Ok(Some(f)),
            Ok(None) => {
                let r = reader.next().await;
                received = Instant::now();
                r
            }
            Err(e) => Err(e),
        };
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => return true,
            Err(e) if is_stream_failure(&e) => return false,
            Err(e) => {
                refuse_stream(
                    &mut reader,
                    &link,
                    &format!("bad frame on the lane to {target}"),
                    &e,
                );
                return false;
            }
        };
        let lf = match wire::decode_lane(&frame) {
            Ok(f) => f,
            Err(e) => {
                refuse_stream(
                    &mut reader,
                    &link,
                    &format!("malformed frame on the lane to {target}"),
                    &e,
                );
                return false;
            }
        };
        let reply = match lf.ask {
            Some((corr, _)) => {
                if replies.as_ref().is_none_or(|r| r.is_closed()) {
                    replies = peer.reply_sink();
                }
                replies
                    .clone()
                    .map(|sink| RemoteReply::new(sink, corr, peer.clone()))
            }
            None => None,
        };
        if slot
            .as_ref()
            .is_none_or(|s| s.stopped.load(Ordering::Acquire))
        {
            slot = node.slot(&target);
        }
        let Some(s) = slot.as_ref() else {
            if let Some(r) = reply {
                r.fail(WireError::NoSuchActor);
            }
            continue;
        };
        let Some(entry) = s.by_name.get(lf.name) else {
            match reply {
                Some(r) => r.fail(WireError::UnknownMessage {
                    actor_type: s.actor_type.to_string(),
                }),
                None => {
                    debug!(actor = %target, message = lf.name, "tell of a message the actor does not accept dropped")
                }
            }
            continue;
        };
        // A full mailbox stops this lane (and only this lane) until there is room: QUIC
        // flow control then pushes back on the sender of this lane.
        let permit = match s.permits.try_acquire() {
            Some(p) => p,
            None => s.permits.acquire().await,
        };
        if let Some((_, ms)) = lf.ask {
            if received.elapsed() > Duration::from_millis(u64::from(ms)) {
                if let Some(r) = reply {
                    r.fail(WireError::Timeout);
                }
                continue;
            }
        }
        let addr = read(&s.addr);
        match addr.as_deref() {
            Some(a) => {
                if let Err(e) =
                    (entry.remote)(a, lf.payload, reply, Some(permit), Some(caller.clone()))
                {
                    debug!(actor = %target, message = lf.name, error = %e, "delivery failed");
                }
            }
            None => {
                if let Some(r) = reply {
                    r.fail(WireError::Stopped);
                }
            }
        }
    }
}
