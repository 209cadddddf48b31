//! The actor slot table: a slot per named actor hosted here, which outlives restarts of
//! the actor's instances, and the reasons recent actors ended.
//!
//! A slot's fields are private. Its supervisor drives the instance's life through
//! `install_instance`, `crashed` and `request_stop`; the table alone ends a slot (`end`).

use std::any::TypeId;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::call::CallContext;
use crate::locks::{lock, read, write};
use crate::mailbox::MailboxGate;
use crate::message::{ErasedAddr, HandlerEntry};
use crate::stats::{source_label, Access, HandlerStats, Observed, OneIn, Outcome, ServerBook};
use crate::watches::TerminationReason;
use actormesh_transport::SpiffeId;
use std::time::Instant;

/// A named actor on this node.
pub(crate) struct ActorSlot {
    /// Unique per node, unlike the name, which a later actor may take again.
    id: u64,
    name: Arc<str>,
    actor_type: &'static str,
    /// The running instance's `Addr`; `None` while there is none.
    addr: RwLock<Option<Box<ErasedAddr>>>,
    by_name: HashMap<&'static str, &'static HandlerEntry>,
    /// Few entries per actor: a scan of TypeIds beats hashing them.
    by_type: Vec<(TypeId, &'static HandlerEntry)>,
    permits: Arc<MailboxGate>,
    /// Incremented each time an instance starts.
    generation: AtomicU64,
    /// The newest generation that panicked.
    panicked: AtomicU64,
    /// The actor has ended for good.
    ended: AtomicBool,
    /// `Node::stop` was called: do not restart, stop the running instance.
    stop_requested: AtomicBool,
    stop_signal: Notify,
    /// The workload the actor runs as (`SpawnOptions::workload`): asserted on the calls
    /// its handlers make.
    workload: Option<Arc<str>>,
    /// The context of a plain call from this node to the actor (its workload, no caller,
    /// no block), built once: none when the actor has no workload.
    local_context: Option<Arc<CallContext>>,
    /// The node's inbound gate (shared by every slot of the node).
    gate: Arc<crate::gate::GateCell>,
    /// The server-side figures of each handler, by the entry's address, when the node
    /// keeps figures (`NodeConfig::metrics`).
    stats: Option<Box<[HandlerRow]>>,
    /// The same, under the service the mesh says the actor serves (`Node::serve_as`),
    /// once it says so: the figures then name the service, not the actor's type.
    service_stats: std::sync::OnceLock<(Arc<str>, Box<[HandlerRow]>)>,
    /// The node's server book, to find the service's rows in.
    server: Option<Arc<ServerBook>>,
    /// The node's access log, when it writes one.
    access: Option<Arc<OneIn>>,
    /// The node's tracing, when it traces.
    tracing: Option<crate::trace::Tracing>,
}

impl std::fmt::Debug for ActorSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorSlot")
            .field("name", &self.name)
            .field("actor_type", &self.actor_type)
            .finish_non_exhaustive()
    }
}

impl ActorSlot {
    fn new(
        id: u64,
        name: &str,
        actor_type: &'static str,
        entries: &[&'static HandlerEntry],
        capacity: usize,
        workload: Option<Arc<str>>,
        table: &SlotTable,
    ) -> Self {
        let destination = workload.as_deref().unwrap_or(actor_type);
        let stats = table.server.as_deref().map(|book| {
            entries
                .iter()
                .map(|e| (entry_key(e), book.row(destination, e.name)))
                .collect()
        });
        Self {
            stats,
            service_stats: std::sync::OnceLock::new(),
            server: table.server.clone(),
            access: table.access.clone(),
            tracing: table.tracing.clone(),
            gate: table.gate.clone(),
            id,
            name: Arc::from(name),
            actor_type,
            addr: RwLock::new(None),
            by_name: entries.iter().map(|e| (e.name, *e)).collect(),
            by_type: entries.iter().map(|e| ((e.message)(), *e)).collect(),
            permits: MailboxGate::new(capacity),
            generation: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            stop_requested: AtomicBool::new(false),
            stop_signal: Notify::new(),
            local_context: CallContext::shared(None, None, workload.clone(), true),
            workload,
        }
    }

    /// Whether a call of `message` from `caller` (`None`: this node), as the proven
    /// `workload`, with `metadata`, passes the node's inbound gate; one relaxed load when
    /// no gate decides.
    #[inline]
    pub(crate) fn admit(
        &self,
        message: &str,
        caller: Option<&actormesh_transport::SpiffeId>,
        workload: Option<&str>,
        metadata: &crate::Metadata,
    ) -> Result<(), crate::gate::Refusal> {
        self.gate.admit(&crate::gate::Arrival {
            actor: &self.name,
            message,
            caller,
            workload,
            metadata,
        })
    }

    /// The gate's decision on a call from this node with block `meta`: the workload it
    /// asserts is the calling handler's, set by this node, so it is proven.
    #[inline]
    pub(crate) fn admit_local(
        &self,
        message: &str,
        meta: Option<&crate::call::CallMeta>,
    ) -> Result<(), crate::gate::Refusal> {
        self.admit(
            message,
            None,
            meta.and_then(|m| m.workload.as_deref()),
            meta.map_or(&crate::call::NO_METADATA, |m| &m.metadata),
        )
    }

    /// Whether the node's gate vouches that `caller` hosts `workload`.
    pub(crate) fn vouches(&self, caller: &actormesh_transport::SpiffeId, workload: &str) -> bool {
        self.gate.vouches(caller, workload)
    }

    /// The figures of a call to `entry` that arrived at `arrived` (read only when the
    /// node keeps figures), from `workload` on node `caller` (`None`: this node).
    #[inline]
    pub(crate) fn observe(
        &self,
        entry: &'static HandlerEntry,
        workload: Option<&str>,
        caller: Option<&SpiffeId>,
        arrived: impl FnOnce() -> Instant,
    ) -> Option<Observed> {
        // A plain field first: a node that keeps no figures stops here.
        let by_type = self.stats.as_deref()?;
        let stats = match self.service_stats.get() {
            Some((_, rows)) => &**rows,
            None => by_type,
        };
        let key = entry_key(entry);
        let (_, row) = stats.iter().find(|(k, _)| *k == key)?;
        let from_client = caller.is_some_and(|c| c.path().starts_with("/client/"));
        Some(Observed::start(
            row,
            source_label(workload, from_client),
            arrived(),
        ))
    }

    /// Whether the access log writes the call `observed` (if the node writes one and samples
    /// this call): then it takes what the line needs.
    #[inline]
    pub(crate) fn sample_access(
        &self,
        observed: &mut Option<Observed>,
        caller: Option<&Arc<SpiffeId>>,
        trace_id: Option<[u8; 16]>,
    ) {
        if let (Some(o), Some(sampler)) = (observed.as_mut(), self.access.as_deref()) {
            if sampler.take() {
                o.log_access(Access {
                    actor: self.name.clone(),
                    caller: caller.cloned(),
                    trace_id,
                });
            }
        }
    }

    /// A server span for the call `observed` if the node traces and the call's trace is
    /// sampled; returns the block the handler sees, whose trace context is then the
    /// server span's, so the calls the handler makes are its children.
    #[inline]
    pub(crate) fn server_span(
        &self,
        observed: &mut Option<Observed>,
        entry: &'static HandlerEntry,
        caller: Option<&Arc<SpiffeId>>,
        meta: Option<Arc<crate::call::CallMeta>>,
    ) -> Option<Arc<crate::call::CallMeta>> {
        let (Some(tracing), Some(o)) = (self.tracing.as_ref(), observed.as_mut()) else {
            return meta;
        };
        let Some(m) = meta.as_ref() else { return meta };
        let Some(ctx) = m.trace.filter(crate::trace::is_sampled) else {
            return meta;
        };
        let mut span = crate::trace::OpenSpan::start(
            tracing,
            crate::trace::SpanKind::Server,
            entry.name,
            ctx.trace_id,
            Some(ctx.span_id),
        );
        span.attribute("actor", self.name.to_string());
        if let Some(c) = caller {
            span.attribute("caller", c.to_string());
        }
        let child = span.context();
        o.trace(span);
        Some(Arc::new(crate::call::CallMeta {
            trace: Some(child),
            ..(**m).clone()
        }))
    }

    /// From now on, counts the actor's calls under `service` (the first service named
    /// stays: an actor serving several keeps the first). Nothing without figures, or
    /// when the actor has a workload of its own.
    pub(crate) fn serve_as(&self, service: &str) {
        let Some(book) = self.server.as_deref() else {
            return;
        };
        if self.workload.is_some() || self.service_stats.get().is_some() {
            return;
        }
        let rows = self
            .by_type
            .iter()
            .map(|(_, e)| (entry_key(e), book.row(service, e.name)))
            .collect();
        let _ = self.service_stats.set((Arc::from(service), rows));
    }

    /// Counts a call to `entry` refused where it arrived, with `outcome`.
    pub(crate) fn refused(
        &self,
        entry: &'static HandlerEntry,
        workload: Option<&str>,
        caller: Option<&SpiffeId>,
        arrived: Instant,
        outcome: Outcome,
    ) {
        if let Some(o) = self.observe(entry, workload, caller, || arrived) {
            o.finish(outcome);
        }
    }

    /// The context of a plain call from this node to the actor.
    #[inline]
    pub(crate) fn local_context(&self) -> Option<&Arc<CallContext>> {
        self.local_context.as_ref()
    }

    /// The workload the actor runs as.
    pub(crate) fn workload(&self) -> Option<&Arc<str>> {
        self.workload.as_ref()
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn actor_type(&self) -> &'static str {
        self.actor_type
    }

    /// The handler of message type `message`, if the actor accepts it.
    #[inline]
    pub(crate) fn entry_for(&self, message: TypeId) -> Option<&'static HandlerEntry> {
        self.by_type
            .iter()
            .find(|(t, _)| *t == message)
            .map(|(_, e)| *e)
    }

    /// The handler of the message named `name` on the wire.
    pub(crate) fn entry_named(&self, name: &str) -> Option<&'static HandlerEntry> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn permits(&self) -> &Arc<MailboxGate> {
        &self.permits
    }

    /// The running instance's address, held for one delivery.
    #[inline]
    pub(crate) fn address(&self) -> RwLockReadGuard<'_, Option<Box<ErasedAddr>>> {
        read(&self.addr)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn panicked_since(&self, generation: u64) -> bool {
        self.panicked.load(Ordering::Acquire) >= generation
    }

    #[inline]
    pub(crate) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::Acquire)
    }

    /// Resolves once `request_stop` is called (registered when first polled).
    pub(crate) fn stop_signal(&self) -> Notified<'_> {
        self.stop_signal.notified()
    }

    /// Puts a new instance's address in place unless a stop was requested; returns the
    /// instance's generation. Checked under the address lock, which `request_stop` takes
    /// too, so a stop requested while the actor restarts is never missed.
    pub(crate) fn install_instance(&self, addr: Box<ErasedAddr>) -> Option<u64> {
        let mut current = write(&self.addr);
        if self.stop_requested() {
            return None;
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *current = Some(addr);
        Some(generation)
    }

    /// The instance of `generation` panicked: calls now fail until a new one is installed.
    pub(crate) fn crashed(&self, generation: u64) {
        self.panicked.store(generation, Ordering::Release);
        *write(&self.addr) = None;
    }

    /// Asks the actor to stop: new messages are refused at once, `stopping` and `stopped`
    /// run, and it is not restarted.
    pub(crate) fn request_stop(&self) {
        let mut addr = write(&self.addr);
        self.stop_requested.store(true, Ordering::Release);
        *addr = None;
        drop(addr);
        self.stop_signal.notify_one();
    }
}

/// A handler's server-side figures, by its entry's identity ([`entry_key`]).
type HandlerRow = (usize, Arc<HandlerStats>);

/// A handler entry's identity: its address (entries are statics).
fn entry_key(entry: &'static HandlerEntry) -> usize {
    entry as *const HandlerEntry as usize
}

/// How many ended actors' reasons are kept for watches that arrive just after the end.
const ENDED_KEPT: usize = 256;

/// The actors hosted on this node, by name.
#[derive(Debug, Default)]
pub(crate) struct SlotTable {
    slots: RwLock<HashMap<Arc<str>, Arc<ActorSlot>>>,
    /// Recently ended actors and why, so a watch that arrives just after the end reports
    /// the real reason instead of `NoSuchActor`.
    ended: Mutex<VecDeque<(Arc<str>, TerminationReason)>>,
    next_id: AtomicU64,
    /// What decides on calls as they arrive, before a mailbox place is taken.
    pub(crate) gate: Arc<crate::gate::GateCell>,
    /// The node's server-side figures, when it keeps them.
    pub(crate) server: Option<Arc<ServerBook>>,
    /// The node's access log, when it writes one (it keeps figures then).
    pub(crate) access: Option<Arc<OneIn>>,
    /// The node's tracing, when it traces (it keeps figures then).
    pub(crate) tracing: Option<crate::trace::Tracing>,
}

impl SlotTable {
    /// An empty table; its actors' calls are counted when `figures`.
    pub(crate) fn keeping_figures(
        figures: bool,
        access: Option<OneIn>,
        tracing: Option<crate::trace::Tracing>,
    ) -> Self {
        let keeps = figures || access.is_some() || tracing.is_some();
        if keeps {
            // Arrivals are counted from the first such node's start.
            crate::stats::epoch();
        }
        Self {
            server: keeps.then(Default::default),
            access: access.map(Arc::new),
            tracing,
            ..Self::default()
        }
    }

    /// The actor `name`, if it runs here.
    #[inline]
    pub(crate) fn get(&self, name: &str) -> Option<Arc<ActorSlot>> {
        read(&self.slots).get(name).cloned()
    }

    /// A fresh slot id, so its watch table can open before the slot can be found.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Files a new slot `id` under `name`; `None` if the name is taken.
    pub(crate) fn insert(
        &self,
        id: u64,
        name: &str,
        actor_type: &'static str,
        entries: &[&'static HandlerEntry],
        capacity: usize,
        workload: Option<Arc<str>>,
    ) -> Option<Arc<ActorSlot>> {
        let mut slots = write(&self.slots);
        if slots.contains_key(name) {
            return None;
        }
        // The workload is set before the slot can be found, so no lane can build (and
        // keep) a context without it.
        let slot = Arc::new(ActorSlot::new(
            id, name, actor_type, entries, capacity, workload, self,
        ));
        slots.insert(slot.name.clone(), slot.clone());
        Some(slot)
    }

    /// Takes back a slot whose actor never started.
    pub(crate) fn withdraw(&self, slot: &Arc<ActorSlot>) {
        self.unfile(slot);
    }

    /// The actor in `slot` is gone for good: refuse calls, unregister it, keep the reason.
    pub(crate) fn end(&self, slot: &Arc<ActorSlot>, reason: &TerminationReason) {
        slot.ended.store(true, Ordering::Release);
        *write(&slot.addr) = None;
        self.unfile(slot);
        let mut ended = lock(&self.ended);
        if ended.len() == ENDED_KEPT {
            ended.pop_front();
        }
        ended.push_back((slot.name.clone(), reason.clone()));
    }

    fn unfile(&self, slot: &Arc<ActorSlot>) {
        let mut slots = write(&self.slots);
        // A later actor may hold the name already.
        if slots.get(&slot.name).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(&slot.name);
        }
    }

    /// Why a watch on `name`, which is not running, ends.
    pub(crate) fn absent_reason(&self, name: &str) -> TerminationReason {
        lock(&self.ended)
            .iter()
            .rev()
            .find(|(n, _)| &**n == name)
            .map(|(_, r)| r.clone())
            .unwrap_or(TerminationReason::NoSuchActor)
    }

    /// Every actor's mailbox, as the metrics show it.
    pub(crate) fn actor_figures(&self) -> Vec<crate::stats::ActorFigures> {
        let mut out: Vec<_> = read(&self.slots)
            .values()
            .map(|s| crate::stats::ActorFigures {
                name: s.name.to_string(),
                actor_type: s.actor_type.to_string(),
                workload: s.workload.as_deref().map(str::to_string),
                mailbox_depth: s.permits.depth() as u64,
                mailbox_capacity: s.permits.capacity() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub(crate) fn names(&self) -> Vec<String> {
        read(&self.slots).keys().map(|k| k.to_string()).collect()
    }
}
