//! [`RemoteRef`]: a location-transparent reference to a named actor.

use std::any::TypeId;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use actormesh_transport::codec::{self, CodecError};
use actormesh_transport::sink::PushError;
use actormesh_transport::SpiffeId;

use crate::call::{
    ask_plan, outgoing_meta, outgoing_timeout, tell_block, Block, CallContext, CallInfo, CallMeta,
    CallOptions, Deadline, MetadataError, NO_OPTIONS,
};
use crate::deadline::LazyDeadline;
use crate::error::{AskError, TellError};
use crate::gate::Refusal;
use crate::locks::{read, write};
use crate::mailbox::Permit;
use crate::message::{Delivery, HandlerEntry, RemoteMessage, RemoteReply, ReplyTo};
use crate::peers::{Peer, Reply};
use crate::slots::ActorSlot;
use crate::stats::{Observed, Outcome};
use crate::wire::{self, WireError};

/// What a reference needs of the node it was made on. The node implements it, so a
/// reference keeps its node alive as before without this module depending on the node.
pub(crate) trait Home: Send + Sync + std::fmt::Debug {
    /// The actor `name` hosted on this node.
    fn slot(&self, name: &str) -> Option<Arc<ActorSlot>>;
    /// This node's identity.
    fn identity(&self) -> SpiffeId;
}

#[derive(Debug, Clone)]
enum Target {
    /// On this node: calls skip serialization. The slot is resolved lazily and again
    /// after the actor it named has ended.
    Local(Arc<RwLock<Option<Arc<ActorSlot>>>>),
    /// On another node.
    Remote(Arc<Peer>),
}

/// A reference to the actor named `name` on the node at `addr`.
///
/// `tell` is at-most-once and keeps order per sender→receiver pair. `ask` completes exactly
/// once: with the reply or a typed [`AskError`], never later than its deadline. Calls to an
/// actor on this node never serialize the message.
#[derive(Debug, Clone)]
pub struct RemoteRef {
    home: Arc<dyn Home>,
    name: Arc<str>,
    addr: SocketAddr,
    /// The node's default deadline of `ask`, copied so a call reads no config.
    default_timeout: Duration,
    target: Target,
    /// The identity the node at `addr` must prove before anything is sent to it.
    pinned: Option<Arc<Pin>>,
}

/// A pinned identity and the link it was last verified on.
#[derive(Debug)]
struct Pin {
    expected: SpiffeId,
    /// The peer's link epoch (odd: a link installed) whose link proved `expected`; 0 for
    /// none. While the epoch is unchanged the same link carries the calls, so the check
    /// costs two atomic loads.
    verified: AtomicU64,
}

impl RemoteRef {
    pub(crate) fn local(
        home: Arc<dyn Home>,
        addr: SocketAddr,
        default_timeout: Duration,
        slot: Arc<ActorSlot>,
    ) -> Self {
        Self {
            home,
            addr,
            name: slot.name().clone(),
            default_timeout,
            target: Target::Local(Arc::new(RwLock::new(Some(slot)))),
            pinned: None,
        }
    }

    pub(crate) fn local_by_name(
        home: Arc<dyn Home>,
        addr: SocketAddr,
        default_timeout: Duration,
        name: &str,
    ) -> Self {
        Self {
            home,
            addr,
            name: Arc::from(name),
            default_timeout,
            target: Target::Local(Arc::new(RwLock::new(None))),
            pinned: None,
        }
    }

    pub(crate) fn remote(
        home: Arc<dyn Home>,
        default_timeout: Duration,
        peer: Arc<Peer>,
        name: &str,
    ) -> Self {
        Self {
            home,
            addr: peer.addr,
            name: Arc::from(name),
            default_timeout,
            target: Target::Remote(peer),
            pinned: None,
        }
    }

    /// The actor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn name_arc(&self) -> Arc<str> {
        self.name.clone()
    }

    /// The address of the actor's node.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the actor is on this node.
    pub fn is_local(&self) -> bool {
        matches!(self.target, Target::Local(_))
    }

    pub(crate) fn peer(&self) -> Option<&Arc<Peer>> {
        match &self.target {
            Target::Remote(p) => Some(p),
            Target::Local(_) => None,
        }
    }

    fn local_slot(&self, cell: &RwLock<Option<Arc<ActorSlot>>>) -> Option<Arc<ActorSlot>> {
        if let Some(s) = read(cell).as_ref() {
            if !s.has_ended() {
                return Some(s.clone());
            }
        }
        let s = self.home.slot(&self.name)?;
        *write(cell) = Some(s.clone());
        Some(s)
    }

    /// Sends `msg` without waiting for a reply, waiting while the target's mailbox (local)
    /// or the lane to its node (remote) is full. Remote tells are at-most-once: `Ok` means
    /// queued for sending, not delivered. Made while handling a call, it carries that
    /// call's propagated metadata and the handling actor's workload.
    #[inline(always)]
    pub fn tell<M: RemoteMessage>(
        &self,
        msg: M,
    ) -> impl Future<Output = Result<(), TellError<M>>> + '_ {
        self.tell_call(msg, tell_block(None))
    }

    /// [`RemoteRef::tell`] with call options (metadata, attempt, trace; the timeout is
    /// not used: a tell has no deadline).
    #[inline(always)]
    pub fn tell_with_options<'a, M: RemoteMessage>(
        &'a self,
        msg: M,
        options: &'a CallOptions,
    ) -> impl Future<Output = Result<(), TellError<M>>> + 'a {
        self.tell_call(msg, tell_block(Some(options)))
    }

    /// `block` was planned when the call was made (see [`tell_block`]), not when this
    /// future is first polled, so a call made in a handler inherits from it even if it
    /// runs later.
    async fn tell_call<M: RemoteMessage>(
        &self,
        msg: M,
        block: Result<Block, MetadataError>,
    ) -> Result<(), TellError<M>> {
        let meta = match block {
            Ok(m) => m,
            Err(e) => {
                return Err(TellError::NotDelivered(
                    msg,
                    format!("invalid call metadata: {e}"),
                ))
            }
        };
        match &self.target {
            Target::Local(cell) => {
                if let Err(reason) = self.check_local_pin() {
                    return Err(TellError::NotDelivered(msg, reason));
                }
                let Some(slot) = self.local_slot(cell) else {
                    return Err(TellError::NoSuchActor(msg));
                };
                let Some(entry) = slot.entry_for(TypeId::of::<M>()) else {
                    return Err(TellError::UnknownMessage(msg));
                };
                if let Err(r) = slot.admit_local(M::NAME, meta.as_deref()) {
                    refused_here(&slot, entry, &meta, &r);
                    return Err(TellError::NotDelivered(msg, r.to_string()));
                }
                let (arrived, meta) = observe_local(&slot, entry, meta);
                let permit = slot.permits().acquire().await;
                let call = local_call(&slot, Deadline::None, meta);
                deliver_local(
                    &slot,
                    entry,
                    Delivery::new(msg, ReplyTo::None, Some(permit), call, arrived),
                )
                .map_err(|d| TellError::NoSuchActor(d.into_message()))
            }
            Target::Remote(peer) => {
                let checked = if self.ready_to_send(peer, &meta) {
                    downgrade(meta, peer.version(), false, self.addr)
                } else {
                    // Off the plain path, so its state does not weigh on every tell.
                    Box::pin(self.before_sending(peer, meta, false)).await
                };
                let meta = match checked {
                    Ok(m) => m,
                    Err(Refused::Unreachable(r)) => return Err(TellError::Unreachable(msg, r)),
                    Err(Refused::NotDelivered(r)) => return Err(TellError::NotDelivered(msg, r)),
                };
                let pushed = peer
                    .push_lane(&self.name, |b| {
                        wire::encode_call(b, None, meta.as_deref(), M::NAME, |b| {
                            codec::encode_into(&msg, b)
                        })
                    })
                    .await;
                push_result(pushed, msg)
            }
        }
    }

    /// Sends `msg` without waiting at all: a full mailbox or lane gives
    /// [`TellError::Full`] with the message handed back. It never waits for a link either:
    /// to a node this node has no link to yet, it goes without call metadata (the node's
    /// protocol version is not known yet), and a pinned reference refuses it.
    pub fn try_tell<M: RemoteMessage>(&self, msg: M) -> Result<(), TellError<M>> {
        let meta = CallInfo::ambient()
            .as_ref()
            .and_then(|a| outgoing_meta(Some(a), &NO_OPTIONS, false))
            .map(Arc::new);
        self.try_tell_meta(msg, meta)
    }

    /// [`RemoteRef::try_tell`] with call options (metadata, attempt, trace; the timeout is
    /// not used). As there, the metadata goes only over a link already up, and metadata
    /// breaking a limit is not sent (the message goes without it).
    pub fn try_tell_with_options<M: RemoteMessage>(
        &self,
        msg: M,
        options: &CallOptions,
    ) -> Result<(), TellError<M>> {
        let meta = outgoing_meta(CallInfo::ambient().as_ref(), options, false).map(Arc::new);
        self.try_tell_meta(msg, meta)
    }

    #[inline(always)]
    fn try_tell_meta<M: RemoteMessage>(
        &self,
        msg: M,
        meta: Option<Arc<CallMeta>>,
    ) -> Result<(), TellError<M>> {
        match &self.target {
            Target::Local(cell) => {
                if let Err(reason) = self.check_local_pin() {
                    return Err(TellError::NotDelivered(msg, reason));
                }
                let Some(slot) = self.local_slot(cell) else {
                    return Err(TellError::NoSuchActor(msg));
                };
                let Some(entry) = slot.entry_for(TypeId::of::<M>()) else {
                    return Err(TellError::UnknownMessage(msg));
                };
                if let Err(r) = slot.admit_local(M::NAME, meta.as_deref()) {
                    refused_here(&slot, entry, &meta, &r);
                    return Err(TellError::NotDelivered(msg, r.to_string()));
                }
                let Some(permit) = slot.permits().try_acquire() else {
                    return Err(TellError::Full(msg));
                };
                let (arrived, meta) = observe_local(&slot, entry, meta);
                let call = local_call(&slot, Deadline::None, meta);
                deliver_local(
                    &slot,
                    entry,
                    Delivery::new(msg, ReplyTo::None, Some(permit), call, arrived),
                )
                .map_err(|d| TellError::NoSuchActor(d.into_message()))
            }
            Target::Remote(peer) => {
                if let Some(pin) = self.pinned.as_ref().filter(|_| !self.pin_holds(peer)) {
                    let expected = &pin.expected;
                    match peer.current_link_info() {
                        Some(info) if info.peer == *expected => {}
                        Some(info) => {
                            return Err(TellError::NotDelivered(
                                msg,
                                pin_mismatch(self.addr, expected, &info.peer),
                            ))
                        }
                        None => {
                            return Err(TellError::NotDelivered(
                                msg,
                                format!("no verified link to {} yet to check the pinned identity {expected} (try_tell does not dial)", self.addr),
                            ))
                        }
                    }
                }
                // Metadata goes only where the link is known to read it.
                let meta = meta.filter(|m| peer.version() >= 2 && m.check().is_ok());
                let pushed = peer.try_push_lane(&self.name, |b| {
                    wire::encode_call(b, None, meta.as_deref(), M::NAME, |b| {
                        codec::encode_into(&msg, b)
                    })
                });
                push_result(pushed, msg)
            }
        }
    }

    /// Asks with the node's default deadline (or less: what the call being handled has left).
    ///
    /// Every call reads the context of the call being handled when it is made (not when
    /// its future is first polled), so a call made in a handler inherits from it.
    #[inline(always)]
    pub fn ask<M: RemoteMessage>(
        &self,
        msg: M,
    ) -> impl Future<Output = Result<M::Result, AskError>> + '_ {
        self.ask_call(msg, ask_plan(None, self.default_timeout), true)
    }

    /// Sends `msg` and waits for the reply, at most `timeout` (or less: what the call
    /// being handled has left).
    #[inline(always)]
    pub fn ask_timeout<M: RemoteMessage>(
        &self,
        msg: M,
        timeout: Duration,
    ) -> impl Future<Output = Result<M::Result, AskError>> + '_ {
        self.ask_call(msg, ask_plan(None, timeout), true)
    }

    /// Like [`RemoteRef::ask_timeout`], but fails at once with [`AskError::MailboxFull`]
    /// instead of waiting when the target's mailbox (local) or the lane to its node (remote)
    /// is full. The reply is still awaited, up to `timeout`.
    #[inline(always)]
    pub fn try_ask<M: RemoteMessage>(
        &self,
        msg: M,
        timeout: Duration,
    ) -> impl Future<Output = Result<M::Result, AskError>> + '_ {
        self.ask_call(msg, ask_plan(None, timeout), false)
    }

    /// Asks with call options: timeout (the node's default if `None`), metadata, attempt
    /// number and trace context. Made while handling a call, the deadline is that call's
    /// if it is shorter, and its metadata marked to propagate is added. Metadata breaking
    /// a limit fails with [`AskError::InvalidMetadata`] before anything is sent. To a node
    /// of protocol version 1 the metadata is not sent (its frames have no place for it).
    #[inline(always)]
    pub fn ask_with_options<'a, M: RemoteMessage>(
        &'a self,
        msg: M,
        options: &'a CallOptions,
    ) -> impl Future<Output = Result<M::Result, AskError>> + 'a {
        self.ask_call(msg, ask_plan(Some(options), self.default_timeout), true)
    }

    /// Like [`RemoteRef::ask_with_options`], but fails at once with
    /// [`AskError::MailboxFull`] instead of waiting when the target's mailbox (local) or the
    /// lane to its node (remote) is full.
    #[inline(always)]
    pub fn try_ask_with_options<'a, M: RemoteMessage>(
        &'a self,
        msg: M,
        options: &'a CallOptions,
    ) -> impl Future<Output = Result<M::Result, AskError>> + 'a {
        self.ask_call(msg, ask_plan(Some(options), self.default_timeout), false)
    }

    /// A reference that checks, before each call, that the node at its address proves
    /// `expected` (the verified identity of the link); a call to any other identity fails
    /// with [`AskError::NotDelivered`] (tell: [`TellError::NotDelivered`]) naming both,
    /// and nothing is sent.
    ///
    /// The identity is compared once per link (a link is fixed to one verified identity);
    /// later calls on the same link compare two integers.
    pub fn pinned(mut self, expected: SpiffeId) -> RemoteRef {
        self.pinned = Some(Arc::new(Pin {
            expected,
            verified: AtomicU64::new(0),
        }));
        self
    }

    /// The identity this reference is pinned to.
    pub fn pinned_identity(&self) -> Option<&SpiffeId> {
        self.pinned.as_ref().map(|p| &p.expected)
    }

    /// Whether nothing is left to check of the pin before sending to `peer`: no pin, or
    /// the current link already proved it.
    #[inline]
    fn pin_holds(&self, peer: &Peer) -> bool {
        match &self.pinned {
            None => true,
            Some(pin) => {
                let epoch = peer.epoch();
                epoch & 1 == 1 && pin.verified.load(Ordering::Acquire) == epoch
            }
        }
    }

    /// Calls the message named `message_name` with a JSON payload, without its Rust type;
    /// the reply comes back as JSON. The callee decodes the payload with the message's
    /// serde form: bad JSON is [`AskError::Rejected`] with serde_json's message, naming the
    /// field or position. Needs a node of protocol version 2 or later
    /// ([`AskError::NotDelivered`] otherwise).
    pub async fn ask_json(
        &self,
        message_name: &str,
        payload: &serde_json::Value,
        options: &CallOptions,
    ) -> Result<serde_json::Value, AskError> {
        check_message_name(message_name)?;
        let body = serde_json::to_vec(payload).map_err(|e| AskError::NotDelivered {
            reason: format!("cannot encode the JSON payload: {e}"),
        })?;
        let ambient = CallInfo::ambient();
        let timeout = outgoing_timeout(
            ambient.as_ref(),
            options,
            self.default_timeout,
            std::time::Instant::now,
        );
        let meta =
            outgoing_meta(ambient.as_ref(), options, true).expect("a JSON call always has a block");
        meta.check().map_err(AskError::InvalidMetadata)?;
        let meta = Arc::new(meta);
        let bytes = match &self.target {
            Target::Local(cell) => {
                self.check_local_pin()
                    .map_err(|reason| AskError::NotDelivered { reason })?;
                self.ask_local_encoded(cell, message_name, &body, meta, timeout, true)
                    .await?
            }
            Target::Remote(peer) => {
                let payload = |b: &mut Vec<u8>| {
                    b.extend_from_slice(&body);
                    Ok(())
                };
                self.ask_remote(peer, message_name, payload, Some(meta), timeout, true)
                    .await?
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            AskError::Rejected(format!("the reply to {message_name} is not JSON: {e}"))
        })
    }

    /// Calls the message named `message_name` with `payload` already encoded as its type
    /// encodes it (the runtime's codec); the reply comes back encoded. The mesh sends its
    /// copies of a call (mirrors) this way, so that they hold no borrow of the message.
    pub async fn ask_encoded(
        &self,
        message_name: &str,
        payload: &[u8],
        options: &CallOptions,
    ) -> Result<Bytes, AskError> {
        check_message_name(message_name)?;
        let ambient = CallInfo::ambient();
        let timeout = outgoing_timeout(
            ambient.as_ref(),
            options,
            self.default_timeout,
            std::time::Instant::now,
        );
        let meta = outgoing_meta(ambient.as_ref(), options, false);
        if let Some(m) = &meta {
            m.check().map_err(AskError::InvalidMetadata)?;
        }
        match &self.target {
            Target::Local(cell) => {
                self.check_local_pin()
                    .map_err(|reason| AskError::NotDelivered { reason })?;
                let meta = Arc::new(meta.unwrap_or_default());
                self.ask_local_encoded(cell, message_name, payload, meta, timeout, false)
                    .await
            }
            Target::Remote(peer) => {
                let body = |b: &mut Vec<u8>| {
                    b.extend_from_slice(payload);
                    Ok(())
                };
                self.ask_remote(peer, message_name, body, meta.map(Arc::new), timeout, true)
                    .await
            }
        }
    }

    /// `planned` was decided when the call was made (see [`ask_plan`]).
    async fn ask_call<M: RemoteMessage>(
        &self,
        msg: M,
        planned: Result<(Duration, Block), MetadataError>,
        wait_for_room: bool,
    ) -> Result<M::Result, AskError> {
        let (timeout, meta) = planned.map_err(AskError::InvalidMetadata)?;
        match &self.target {
            Target::Local(cell) => {
                self.check_local_pin()
                    .map_err(|reason| AskError::NotDelivered { reason })?;
                self.ask_local(cell, msg, timeout, wait_for_room, meta)
                    .await
            }
            Target::Remote(peer) => {
                let payload = |b: &mut Vec<u8>| codec::encode_into(&msg, b);
                // Boxed: a remote ask's state (its timers, the lane push) would otherwise
                // make every ask's future, local ones too, several times larger.
                let bytes =
                    Box::pin(self.ask_remote(peer, M::NAME, payload, meta, timeout, wait_for_room))
                        .await?;
                codec::decode::<M::Result>(&bytes).map_err(|e| {
                    AskError::Rejected(format!("cannot decode the reply to {}: {e}", M::NAME))
                })
            }
        }
    }

    fn mailbox_full(&self) -> AskError {
        AskError::MailboxFull {
            actor: self.name.to_string(),
        }
    }

    /// A pinned reference to an actor on this node checks this node's own identity.
    #[inline]
    fn check_local_pin(&self) -> Result<(), String> {
        match &self.pinned {
            None => Ok(()),
            Some(pin) => self.check_own_identity(&pin.expected),
        }
    }

    #[cold]
    fn check_own_identity(&self, expected: &SpiffeId) -> Result<(), String> {
        let me = self.home.identity();
        if me == *expected {
            Ok(())
        } else {
            Err(pin_mismatch(self.addr, expected, &me))
        }
    }

    async fn ask_local<M: RemoteMessage>(
        &self,
        cell: &RwLock<Option<Arc<ActorSlot>>>,
        msg: M,
        timeout: Duration,
        wait_for_room: bool,
        meta: Block,
    ) -> Result<M::Result, AskError> {
        let Some(slot) = self.local_slot(cell) else {
            return Err(AskError::NoSuchActor {
                actor: self.name.to_string(),
                node: self.addr,
            });
        };
        let Some(entry) = slot.entry_for(TypeId::of::<M>()) else {
            return Err(AskError::UnknownMessage {
                actor: self.name.to_string(),
                actor_type: slot.actor_type().to_string(),
                message: M::NAME.to_string(),
            });
        };
        if let Err(r) = slot.admit_local(M::NAME, meta.as_deref()) {
            refused_here(&slot, entry, &meta, &r);
            return Err(r.into());
        }
        let (arrived, meta) = observe_local(&slot, entry, meta);
        let (permit, remaining) = self.local_permit(&slot, timeout, wait_for_room).await?;
        let (tx, rx) = oneshot::channel();
        let generation = slot.generation();
        let call = local_call(&slot, Deadline::Within(remaining), meta);
        deliver_local(
            &slot,
            entry,
            Delivery::new(msg, ReplyTo::Local(tx), Some(permit), call, arrived),
        )
        .map_err(|_| self.stopped())?;
        match LazyDeadline::new(rx, remaining).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) if slot.panicked_since(generation) => Err(AskError::Panicked {
                actor: self.name.to_string(),
            }),
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(AskError::Timeout { after: timeout }),
        }
    }

    /// A mailbox place and the time left after waiting for it. The clock is read only
    /// when the mailbox is full; the fast path needs no time.
    #[inline]
    async fn local_permit(
        &self,
        slot: &ActorSlot,
        timeout: Duration,
        wait_for_room: bool,
    ) -> Result<(Permit, Duration), AskError> {
        match slot.permits().try_acquire() {
            Some(p) => Ok((p, timeout)),
            None if !wait_for_room => Err(self.mailbox_full()),
            // Boxed: the timer it needs would otherwise make every local ask's future
            // larger, and the mailbox is rarely full.
            None => Box::pin(self.wait_for_permit(slot, timeout)).await,
        }
    }

    async fn wait_for_permit(
        &self,
        slot: &ActorSlot,
        timeout: Duration,
    ) -> Result<(Permit, Duration), AskError> {
        let start = Instant::now();
        match tokio::time::timeout(timeout, slot.permits().acquire()).await {
            Ok(p) => Ok((p, timeout.saturating_sub(start.elapsed()))),
            Err(_) => Err(AskError::Timeout { after: timeout }),
        }
    }

    /// An encoded (JSON) ask to an actor on this node, by message name.
    async fn ask_local_encoded(
        &self,
        cell: &RwLock<Option<Arc<ActorSlot>>>,
        name: &str,
        payload: &[u8],
        meta: Arc<CallMeta>,
        timeout: Duration,
        json: bool,
    ) -> Result<Bytes, AskError> {
        let Some(slot) = self.local_slot(cell) else {
            return Err(AskError::NoSuchActor {
                actor: self.name.to_string(),
                node: self.addr,
            });
        };
        let Some(entry) = slot.entry_named(name) else {
            return Err(AskError::UnknownMessage {
                actor: self.name.to_string(),
                actor_type: slot.actor_type().to_string(),
                message: name.to_string(),
            });
        };
        let block = Some(meta);
        if let Err(r) = slot.admit_local(name, block.as_deref()) {
            refused_here(&slot, entry, &block, &r);
            return Err(r.into());
        }
        let (arrived, block) = observe_local(&slot, entry, block);
        let (permit, remaining) = self.local_permit(&slot, timeout, true).await?;
        let (tx, rx) = oneshot::channel();
        let call = local_call(&slot, Deadline::Within(remaining), block);
        let delivered = {
            let addr = slot.address();
            match addr.as_deref() {
                Some(a) => {
                    let reply = RemoteReply::local(tx, json);
                    // A decoding failure has answered the reply already.
                    let _ = (entry.remote)(a, payload, Some(reply), Some(permit), call, arrived);
                    true
                }
                None => false,
            }
        };
        if !delivered {
            return Err(self.stopped());
        }
        match LazyDeadline::new(rx, remaining).await {
            Ok(Ok(Reply::Ok(bytes))) => Ok(bytes),
            Ok(Ok(Reply::Err(e))) => Err(self.wire_error(name, e, timeout)),
            Ok(Ok(Reply::Lost(..))) | Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(AskError::Timeout { after: timeout }),
        }
    }

    /// Whether a remote call can be sent with nothing to wait for: the pin (if any) holds
    /// on the current link, and a call with a block knows the link's protocol version.
    /// Otherwise [`RemoteRef::before_sending`] finds out.
    #[inline]
    fn ready_to_send(&self, peer: &Peer, meta: &Block) -> bool {
        self.pin_holds(peer) && (meta.is_none() || peer.version() != 0)
    }

    /// What must hold before a remote call is sent, when [`RemoteRef::ready_to_send`]
    /// cannot tell yet: the pinned identity, and a known protocol version if the call has a
    /// block. Waits for a link. Returns the block to send (none to a version 1 node).
    async fn before_sending(
        &self,
        peer: &Arc<Peer>,
        meta: Block,
        json: bool,
    ) -> Result<Block, Refused> {
        let before = peer.epoch();
        let link = peer
            .connected_link()
            .await
            .map_err(|e| Refused::Unreachable(e.to_string()))?;
        let info = link.info();
        if let Some(pin) = &self.pinned {
            if info.peer != pin.expected {
                return Err(Refused::NotDelivered(pin_mismatch(
                    self.addr,
                    &pin.expected,
                    &info.peer,
                )));
            }
            // Cached only if the link checked is the one of this epoch.
            if before & 1 == 1 && peer.epoch() == before {
                pin.verified.store(before, Ordering::Release);
            }
        }
        downgrade(meta, info.version, json, self.addr)
    }

    async fn ask_remote(
        &self,
        peer: &Arc<Peer>,
        name: &str,
        payload: impl Fn(&mut Vec<u8>) -> Result<(), CodecError>,
        meta: Block,
        timeout: Duration,
        wait_for_room: bool,
    ) -> Result<Bytes, AskError> {
        let deadline = Instant::now() + timeout;
        let unreachable = |reason: String, sent: bool| AskError::Unreachable {
            node: self.addr,
            reason,
            sent,
        };
        let json = meta.as_ref().is_some_and(|m| m.json);
        // The plain path needs no check, so it arms no timer for one.
        let checked = if self.ready_to_send(peer, &meta) {
            Ok(downgrade(meta, peer.version(), json, self.addr))
        } else {
            // Off the plain path, so its state does not weigh on every ask.
            tokio::time::timeout_at(deadline, Box::pin(self.before_sending(peer, meta, json))).await
        };
        let meta = match checked {
            Ok(Ok(m)) => m,
            Ok(Err(Refused::Unreachable(r))) => return Err(unreachable(r, false)),
            Ok(Err(Refused::NotDelivered(reason))) => {
                return Err(AskError::NotDelivered { reason })
            }
            Err(_) => return Err(AskError::Timeout { after: timeout }),
        };
        let (tx, rx) = oneshot::channel();
        let corr = peer.expect_reply(tx);
        let _guard = PendingGuard { peer, corr };
        let work = async {
            // The callee gets the time left when the frame is queued, not the whole timeout.
            let encode = |b: &mut Vec<u8>| {
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = left.as_millis().min(u128::from(u32::MAX)) as u32;
                wire::encode_call(b, Some((corr, ms)), meta.as_deref(), name, &payload)
            };
            let pushed = if wait_for_room {
                peer.push_lane(&self.name, encode).await
            } else {
                peer.try_push_lane(&self.name, encode)
            };
            match pushed {
                Ok(()) => {}
                Err(PushError::Full) => return Err(self.mailbox_full()),
                Err(PushError::Closed(reason)) => return Err(unreachable(reason, false)),
                Err(e) => return Err(AskError::Rejected(format!("cannot send {name}: {e}"))),
            }
            match rx.await {
                Ok(Reply::Ok(bytes)) => Ok(bytes),
                Ok(Reply::Err(e)) => Err(self.wire_error(name, e, timeout)),
                Ok(Reply::Lost(reason, sent)) => Err(unreachable(reason, sent)),
                Err(_) => Err(unreachable("the node shut down".into(), true)),
            }
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(AskError::Timeout { after: timeout }),
        }
    }

    fn stopped(&self) -> AskError {
        AskError::Stopped {
            actor: self.name.to_string(),
        }
    }

    fn wire_error(&self, message: &str, e: WireError, timeout: Duration) -> AskError {
        let actor = self.name.to_string();
        match e {
            WireError::Stopped => AskError::Stopped { actor },
            WireError::Panicked => AskError::Panicked { actor },
            WireError::NoSuchActor => AskError::NoSuchActor {
                actor,
                node: self.addr,
            },
            WireError::UnknownMessage { actor_type } => AskError::UnknownMessage {
                actor,
                actor_type,
                message: message.to_string(),
            },
            WireError::Rejected(r) => AskError::Rejected(r),
            WireError::Timeout => AskError::Timeout { after: timeout },
            WireError::Refused(r) => r.into(),
        }
    }
}

/// Why a call was refused before anything was sent.
enum Refused {
    /// No link could be had.
    Unreachable(String),
    /// The node is not the pinned identity, or cannot read the call.
    NotDelivered(String),
}

/// The block to send on a link of `version`: a version 1 node reads none, so it goes
/// without (a JSON call cannot).
fn downgrade(meta: Block, version: u32, json: bool, addr: SocketAddr) -> Result<Block, Refused> {
    if version >= 2 || meta.is_none() {
        return Ok(meta);
    }
    if json {
        return Err(Refused::NotDelivered(format!(
            "the node at {addr} speaks protocol version {version}, which has no JSON calls"
        )));
    }
    Ok(None)
}

fn pin_mismatch(addr: SocketAddr, expected: &SpiffeId, found: &SpiffeId) -> String {
    format!("the node at {addr} is {found}, not the pinned identity {expected}")
}

/// The context of a call delivered on this node: no caller node, the deadline, the block,
/// and the workload of the actor that handles it.
#[inline]
fn local_call(slot: &ActorSlot, deadline: Deadline, meta: Block) -> CallInfo {
    let ctx = match meta {
        None => slot.local_context().cloned(),
        Some(m) => CallContext::shared(None, Some(m), slot.workload().cloned(), true),
    };
    CallInfo::with_context(deadline, ctx)
}

/// A message name given as text (`ask_json`, `ask_encoded`) must fit the frame.
fn check_message_name(name: &str) -> Result<(), AskError> {
    if name.is_empty() || name.len() > 255 {
        return Err(AskError::NotDelivered {
            reason: format!(
                "message name {name:?} must be 1 to 255 bytes, it is {}",
                name.len()
            ),
        });
    }
    Ok(())
}

/// Removes an ask from the pending table when the caller stops waiting (deadline or drop).
struct PendingGuard<'a> {
    peer: &'a Peer,
    corr: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.peer.forget_reply(self.corr);
    }
}

/// The workload a local call's block asserts.
#[inline]
fn workload_of(meta: &Block) -> Option<&str> {
    meta.as_ref()?.workload.as_deref()
}

/// The figures (and, if sampled, the access line and the server span) of a local call to
/// `entry`, and the block the handler sees (its trace context the server span's).
#[inline]
fn observe_local(
    slot: &ActorSlot,
    entry: &'static HandlerEntry,
    meta: Block,
) -> (Option<Observed>, Block) {
    let mut o = slot.observe(entry, workload_of(&meta), None, std::time::Instant::now);
    if o.is_none() {
        return (o, meta);
    }
    let trace_id = meta.as_ref().and_then(|m| m.trace).map(|t| t.trace_id);
    slot.sample_access(&mut o, None, trace_id);
    let meta = slot.server_span(&mut o, entry, None, meta);
    (o, meta)
}

/// Counts a local call the gate refused.
#[cold]
fn refused_here(slot: &ActorSlot, entry: &'static HandlerEntry, meta: &Block, r: &Refusal) {
    let outcome = Outcome::of_error(&AskError::from(r.clone()));
    slot.refused(
        entry,
        workload_of(meta),
        None,
        std::time::Instant::now(),
        outcome,
    );
}

fn deliver_local<M: RemoteMessage>(
    slot: &ActorSlot,
    entry: &HandlerEntry,
    d: Delivery<M>,
) -> Result<(), Delivery<M>> {
    let mut cell = Some(d);
    let delivered = {
        let addr = slot.address();
        addr.as_deref().is_some_and(|a| (entry.local)(a, &mut cell))
    };
    match (delivered, cell) {
        (true, _) => Ok(()),
        (false, Some(d)) => Err(d),
        (false, None) => Ok(()),
    }
}

fn push_result<M>(
    pushed: Result<(), PushError<actormesh_transport::codec::CodecError>>,
    msg: M,
) -> Result<(), TellError<M>> {
    match pushed {
        Ok(()) => Ok(()),
        Err(PushError::Full) => Err(TellError::Full(msg)),
        Err(PushError::Closed(reason)) => Err(TellError::Unreachable(msg, reason)),
        Err(PushError::Frame(e)) => Err(TellError::Encode(msg, e.to_string())),
        Err(PushError::Encode(e)) => Err(TellError::Encode(msg, e.to_string())),
    }
}
