//! The [`Node`], the runtime's composition root: it owns the endpoint, the actor slot
//! table, the watcher book and the peer table, and wires them together. Link events go
//! to the peers, control frames to the watch tables, incoming streams to the readers in
//! `inbound`, and actor ends from the supervisor to the slot table and the watchers.

use std::any::{Any, TypeId};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use actix::{Actor, Context, Recipient};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use actormesh_transport::codec;
use actormesh_transport::endpoint::{close_code, map_connection_error};
use actormesh_transport::frame::FrameReader;
use actormesh_transport::pki::Credentials;
use actormesh_transport::sink::FrameSink;
use actormesh_transport::{Endpoint, Link, NewLink, SpiffeId};

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::inbound::{is_stream_failure, serve_stream};
use crate::locks::lock;
use crate::message::handlers_of;
use crate::peers::{
    LinkCtx, Peer, PeerContext, PeerTable, StreamCount, StreamGuard, PEER_GONE_KEPT,
};
use crate::remote_ref::{Home, RemoteRef};
use crate::slots::{ActorSlot, SlotTable};
use crate::supervise::{self, ActorEnd, RestartPolicy};
use crate::watches::{Placed, Terminated, TerminationReason, WatchSink, WatcherBook, MAX_WATCHERS};
use crate::wire::Control;

/// Options for [`Node::spawn_with`].
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    /// Messages the mailbox holds before senders wait (or `try_` calls fail).
    pub mailbox_capacity: Option<usize>,
    /// What happens when the actor panics or stops.
    pub restart: RestartPolicy,
    /// The workload the actor runs as (e.g. `shop/ratings`): the calls its handlers make
    /// assert it to their callees, who read it as `CallInfo::asserted_workload` (asserted
    /// by this node, not proven). At most 255 bytes.
    pub workload: Option<String>,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        Self {
            mailbox_capacity: None,
            restart: RestartPolicy::Never,
            workload: None,
        }
    }
}

pub(crate) struct NodeInner {
    ctx: Arc<PeerContext>,
    slots: Arc<SlotTable>,
    peers: Mutex<PeerTable<Peer>>,
    watchers: Mutex<WatcherBook>,
    next_watch: AtomicU64,
    /// Values other layers attach to the node, one per type (the mesh's call figures,
    /// the master's), for the metrics server to find.
    extensions: Mutex<Vec<(TypeId, Arc<dyn Any + Send + Sync>)>>,
    /// Where the metrics server listens, once started.
    metrics_addr: std::sync::OnceLock<SocketAddr>,
}

impl std::fmt::Debug for NodeInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.ctx.endpoint.local_addr())
            .finish_non_exhaustive()
    }
}

impl Home for NodeInner {
    fn slot(&self, name: &str) -> Option<Arc<ActorSlot>> {
        self.slots.get(name)
    }

    fn identity(&self) -> SpiffeId {
        self.ctx.endpoint.identity()
    }
}

impl ActorEnd for NodeInner {
    fn actor_ended(&self, slot: &Arc<ActorSlot>, reason: TerminationReason) {
        self.slots.end(slot, &reason);
        let watchers = lock(&self.watchers).close(slot.id());
        for w in watchers {
            self.fire(
                w,
                Terminated {
                    actor: slot.name().to_string(),
                    node: self.local_addr(),
                    reason: reason.clone(),
                },
            );
        }
    }
}

impl NodeInner {
    fn local_addr(&self) -> SocketAddr {
        self.ctx.endpoint.local_addr()
    }

    fn peer(&self, addr: SocketAddr) -> Arc<Peer> {
        let filed = {
            let mut peers = lock(&self.peers);
            if let Some(p) = peers.get(&addr) {
                return p;
            }
            peers.get_or_insert_with(addr, Instant::now(), || {
                Peer::new(addr, Arc::downgrade(&self.ctx))
            })
        };
        forget(filed.forgotten);
        filed.peer
    }

    /// Tells a watcher; a remote one gets a `Terminated` on its node's control stream.
    fn fire(&self, sink: WatchSink, t: Terminated) {
        if let Some(notice) = sink.fire(t) {
            self.peer(notice.peer).send_control(Control::Terminated {
                id: notice.id,
                reason: notice.end,
            });
        }
    }

    /// Adds a watcher to the actor `name`, or, if it is not running, fires it at once.
    fn add_watcher(&self, name: &str, sink: WatchSink) {
        let placed = match self.slots.get(name) {
            Some(slot) => lock(&self.watchers).add(slot.id(), sink),
            None => Placed::Ended(sink),
        };
        match placed {
            Placed::Added => {}
            Placed::Refused => {
                warn!(
                    actor = name,
                    "watch refused: the actor already has {MAX_WATCHERS} watchers"
                );
            }
            Placed::Ended(sink) => self.fire(
                sink,
                Terminated {
                    actor: name.to_string(),
                    node: self.local_addr(),
                    reason: self.slots.absent_reason(name),
                },
            ),
        }
    }

    /// A link to `peer` came up.
    fn link_up(&self, peer: &Arc<Peer>, link: LinkCtx) {
        let restarted = peer.install(link);
        lock(&self.peers).linked(peer.addr);
        if restarted {
            lock(&self.watchers).forget_peer(peer.addr);
        }
    }

    /// The link `id` to `peer` closed.
    fn link_down(&self, peer: &Peer, id: u64, reason: &str) {
        if !peer.link_closed(id, reason) {
            return;
        }
        lock(&self.watchers).forget_peer(peer.addr);
        let now = Instant::now();
        let forgotten = {
            let mut peers = lock(&self.peers);
            peers.unlinked(peer.addr, now);
            peers.prune(now)
        };
        forget(forgotten);
    }
}

/// Peers pruned from the table: what still waited on them ends (outside the table's lock).
fn forget(peers: Vec<Arc<Peer>>) {
    for peer in peers {
        debug!(peer = %peer.addr, "peer forgotten");
        peer.forgotten();
    }
}

/// A node of the mesh: hosts named actors and reaches actors on other nodes.
///
/// Cheap to clone. Start it inside an actix system (`#[actix::main]`): the actors it spawns
/// run on the current arbiter; the node's own tasks (links, lanes, readers) run on the
/// runtime it was started on, whichever arbiter calls it later.
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
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
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            NodeError::Config("a node starts inside a tokio runtime (an actix system)".into())
        })?;
        let server = match config.metrics_listen {
            None => None,
            Some(addr) => Some((addr, metrics_server()?)),
        };
        let access = config
            .access_log
            .map(|share| crate::stats::OneIn::new(share, "access log's share of calls"))
            .transpose()
            .map_err(NodeError::Config)?;
        let figures = config.metrics || server.is_some();
        let (endpoint, links) = Endpoint::bind(config.endpoint.clone(), credentials)?;
        let slots = SlotTable::keeping_figures(figures, access, config.tracing.clone());
        let inner = Arc::new(NodeInner {
            ctx: Arc::new(PeerContext::new(endpoint, config, runtime)),
            slots: Arc::new(slots),
            peers: Mutex::new(PeerTable::new(PEER_GONE_KEPT)),
            watchers: Mutex::new(WatcherBook::new(MAX_WATCHERS)),
            next_watch: AtomicU64::new(1),
            extensions: Mutex::new(Vec::new()),
            metrics_addr: std::sync::OnceLock::new(),
        });
        inner.ctx.spawn(link_loop(Arc::downgrade(&inner), links));
        let node = Node { inner };
        if let Some((addr, server)) = server {
            let bound = (server.serve)(&node, addr).map_err(|reason| {
                node.shutdown();
                NodeError::Config(format!("cannot serve metrics on {addr}: {reason}"))
            })?;
            let _ = node.inner.metrics_addr.set(bound);
        }
        Ok(node)
    }

    /// A handle that does not keep the node alive.
    pub fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.inner))
    }

    /// Where this node serves `/metrics` (`NodeConfig::metrics_listen`, its port chosen).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.inner.metrics_addr.get().copied()
    }

    /// Whether the node keeps call figures (`NodeConfig::metrics`).
    pub fn keeps_figures(&self) -> bool {
        self.inner.slots.server.is_some()
    }

    /// The server-side call figures of this node's actors (empty unless it keeps them).
    pub fn server_figures(&self) -> Vec<crate::stats::ServerFigures> {
        self.inner
            .slots
            .server
            .as_ref()
            .map(|b| b.snapshot())
            .unwrap_or_default()
    }

    /// Counts the calls of actor `name` (if it runs here and has no workload) under
    /// `service` from now on: the mesh says so of the local endpoints of a service. The
    /// first service named for an actor stays.
    pub fn serve_as(&self, name: &str, service: &str) {
        if let Some(slot) = self.inner.slots.get(name) {
            slot.serve_as(service);
        }
    }

    /// Every actor's mailbox.
    pub fn actor_figures(&self) -> Vec<crate::stats::ActorFigures> {
        self.inner.slots.actor_figures()
    }

    /// Every live link's figures, from quinn's statistics.
    pub fn peer_figures(&self) -> Vec<crate::stats::PeerFigures> {
        let peers = lock(&self.inner.peers).all();
        let mut out: Vec<_> = peers.iter().filter_map(|p| p.figures()).collect();
        out.sort_by_key(|p| p.addr);
        out
    }

    /// The value of type `T` attached to this node, made by `make` if there is none.
    pub fn extension<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        let mut ext = lock(&self.inner.extensions);
        if let Some((_, v)) = ext.iter().find(|(t, _)| *t == TypeId::of::<T>()) {
            if let Ok(v) = v.clone().downcast::<T>() {
                return v;
            }
        }
        let v = Arc::new(make());
        ext.push((TypeId::of::<T>(), v.clone()));
        v
    }

    /// The value of type `T` attached to this node, if any.
    pub fn find_extension<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let ext = lock(&self.inner.extensions);
        ext.iter()
            .find(|(t, _)| *t == TypeId::of::<T>())
            .and_then(|(_, v)| v.clone().downcast::<T>().ok())
    }

    /// The address this node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    /// This node's identity.
    pub fn identity(&self) -> SpiffeId {
        self.inner.ctx.endpoint.identity()
    }

    /// Installs the gate that decides on every call to this node's actors as it arrives
    /// (from the network or from this node), before it takes a mailbox place; `None`
    /// removes it. A refused ask fails with the refusal's [`crate::AskError`]; a refused
    /// tell is dropped (remote) or handed back as `TellError::NotDelivered` (local).
    pub fn set_inbound_gate(&self, gate: Option<Arc<dyn crate::InboundGate>>) {
        self.inner.slots.gate.set(gate);
    }

    /// The transport endpoint (for certificate replacement and diagnostics).
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.ctx.endpoint
    }

    /// The configuration in force.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.ctx.config
    }

    fn home(&self) -> Arc<dyn Home> {
        self.inner.clone()
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
        if let Some(w) = &options.workload {
            if w.is_empty() || w.len() > crate::call::WORKLOAD_LIMIT {
                return Err(NodeError::Config(format!(
                    "workload {w:?} must be 1 to {} bytes, it is {}",
                    crate::call::WORKLOAD_LIMIT,
                    w.len()
                )));
            }
        }
        let capacity = options
            .mailbox_capacity
            .unwrap_or(self.inner.ctx.config.mailbox_capacity)
            .max(1);
        // The watch table opens first, so a watch arriving as soon as the slot can be
        // found is filed rather than fired as if the actor had ended.
        let id = self.inner.slots.next_id();
        lock(&self.inner.watchers).open(id);
        let Some(slot) = self.inner.slots.insert(
            id,
            name,
            actor_type,
            &entries,
            capacity,
            options.workload.as_deref().map(Arc::from),
        ) else {
            lock(&self.inner.watchers).close(id);
            return Err(NodeError::NameTaken(name.to_string()));
        };
        let owner: Weak<dyn ActorEnd> = Arc::downgrade(&self.inner) as Weak<dyn ActorEnd>;
        if let Err(e) = supervise::start(owner, slot.clone(), factory, options.restart) {
            self.inner.slots.withdraw(&slot);
            lock(&self.inner.watchers).close(id);
            return Err(NodeError::Start {
                name: name.to_string(),
                reason: e.to_string(),
            });
        }
        debug!(actor = name, actor_type, "actor spawned");
        Ok(RemoteRef::local(
            self.home(),
            self.local_addr(),
            self.config().default_ask_timeout,
            slot,
        ))
    }

    /// Stops the actor `name` (its `stopping`/`stopped` hooks run). Returns false if there
    /// is no such actor.
    pub fn stop(&self, name: &str) -> bool {
        match self.inner.slots.get(name) {
            Some(slot) => {
                slot.request_stop();
                true
            }
            None => false,
        }
    }

    /// A reference to the actor `name` on the node listening at `addr` (this node or
    /// another). Making it does not contact the node.
    pub fn actor_ref(&self, addr: SocketAddr, name: &str) -> RemoteRef {
        if addr == self.local_addr() {
            return self.local_ref(name);
        }
        RemoteRef::remote(
            self.home(),
            self.config().default_ask_timeout,
            self.inner.peer(addr),
            name,
        )
    }

    /// A reference to the actor `name` on this node.
    pub fn local_ref(&self, name: &str) -> RemoteRef {
        RemoteRef::local_by_name(
            self.home(),
            self.local_addr(),
            self.config().default_ask_timeout,
            name,
        )
    }

    /// Messages waiting in the mailbox of actor `name` (queued, not yet handled).
    pub fn mailbox_depth(&self, name: &str) -> Option<usize> {
        self.inner.slots.get(name).map(|s| s.permits().depth())
    }

    /// Open lanes (streams to remote actors) from this node to the node at `addr`.
    pub fn lanes_to(&self, addr: SocketAddr) -> usize {
        let peer = lock(&self.inner.peers).get(&addr);
        peer.map_or(0, |p| p.open_lanes())
    }

    /// Names of the actors hosted here.
    pub fn actor_names(&self) -> Vec<String> {
        self.inner.slots.names()
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
            .slots
            .get(name)
            .map_or(0, |s| lock(&self.inner.watchers).count(s.id()))
    }

    /// Closes every link and stops accepting new ones.
    pub fn shutdown(&self) {
        self.inner.ctx.endpoint.shutdown();
    }
}

/// A [`Node`] handle that does not keep it alive.
#[derive(Debug, Clone)]
pub struct WeakNode(Weak<NodeInner>);

impl WeakNode {
    /// The node, while something else holds it.
    pub fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

/// A server of `/metrics` that a binary links in; the node starts the first one found
/// when `NodeConfig::metrics_listen` is set. The `actormesh` façade's `metrics` feature
/// submits one.
#[derive(Debug)]
pub struct MetricsServer {
    /// Serves the node's metrics on `addr` (on the node's runtime); returns the address
    /// bound.
    pub serve: fn(&Node, SocketAddr) -> Result<SocketAddr, String>,
}

inventory::collect!(MetricsServer);

fn metrics_server() -> Result<&'static MetricsServer, NodeError> {
    inventory::iter::<MetricsServer>.into_iter().next().ok_or_else(|| {
        NodeError::Config(
            "NodeConfig::metrics_listen is set, but this binary has no metrics server built in: enable the `metrics` feature of the actormesh crate".into(),
        )
    })
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
    let ctx = node.ctx.clone();
    let peer = node.peer(link.info().peer_addr);
    let (control, driver) = FrameSink::new(4 * 1024 * 1024, ctx.config.endpoint.max_frame);
    ctx.spawn(async move {
        let _ = driver.run(control_send, Vec::new(), None).await;
    });
    let incoming = Arc::new(StreamCount::default());
    node.link_up(
        &peer,
        LinkCtx {
            link: link.clone(),
            control,
            replies: None,
            incoming: incoming.clone(),
        },
    );
    info!(peer = %link.peer(), addr = %link.info().peer_addr, "link to node up");
    ctx.spawn(serve_control(
        node.clone(),
        peer.clone(),
        link.clone(),
        control_recv,
    ));
    let conn = link.connection().clone();
    let (slots, p2, l2, c2) = (node.slots.clone(), peer.clone(), link.clone(), ctx.clone());
    let max_frame = ctx.config.endpoint.max_frame;
    ctx.spawn(async move {
        while let Ok(stream) = conn.accept_uni().await {
            let guard = StreamGuard::new(&incoming);
            let (s, p, l) = (slots.clone(), p2.clone(), l2.clone());
            c2.spawn(async move {
                serve_stream(s, p, l, stream, max_frame).await;
                drop(guard);
            });
        }
    });
    ctx.spawn(async move {
        let err = link.connection().closed().await;
        let reason = map_connection_error(link.info().peer_addr, &err);
        debug!(peer = %link.peer(), %reason, "link closed");
        node.link_down(&peer, link.info().id, &reason.to_string());
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
                link.close(close_code::PROTOCOL, "bad control frame");
                return;
            }
        };
        let msg: Control = match codec::decode(&frame) {
            Ok(m) => m,
            Err(e) => {
                warn!(peer = %link.peer(), error = %e, "undecodable control message; closing link");
                link.close(close_code::PROTOCOL, "undecodable control message");
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
            Control::Unwatch { id } => lock(&node.watchers).unwatch(peer.addr, id),
            Control::Terminated { id, reason } => {
                peer.watch_ended(id, TerminationReason::from_wire(reason))
            }
        }
    }
}
