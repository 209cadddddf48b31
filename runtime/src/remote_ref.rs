//! [`RemoteRef`]: a location-transparent reference to a named actor.

use std::any::TypeId;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use actormesh_transport::codec;
use actormesh_transport::sink::PushError;

use crate::deadline::LazyDeadline;
use crate::error::{AskError, TellError};
use crate::locks::{read, write};
use crate::message::{Delivery, HandlerEntry, RemoteMessage, ReplyTo};
use crate::peers::{Peer, Reply};
use crate::slots::ActorSlot;
use crate::wire::{self, WireError};

/// What a reference needs of the node it was made on. The node implements it, so a
/// reference keeps its node alive as before without this module depending on the node.
pub(crate) trait Home: Send + Sync + std::fmt::Debug {
    /// The actor `name` hosted on this node.
    fn slot(&self, name: &str) -> Option<Arc<ActorSlot>>;
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
    /// queued for sending, not delivered.
    pub async fn tell<M: RemoteMessage>(&self, msg: M) -> Result<(), TellError<M>> {
        match &self.target {
            Target::Local(cell) => {
                let Some(slot) = self.local_slot(cell) else {
                    return Err(TellError::NoSuchActor(msg));
                };
                let Some(entry) = slot.entry_for(TypeId::of::<M>()) else {
                    return Err(TellError::UnknownMessage(msg));
                };
                let permit = slot.permits().acquire().await;
                deliver_local(
                    &slot,
                    entry,
                    Delivery::new(msg, ReplyTo::None, Some(permit)),
                )
                .map_err(|d| TellError::NoSuchActor(d.into_message()))
            }
            Target::Remote(peer) => {
                let pushed = peer
                    .push_lane(&self.name, |b| wire::encode_tell(b, M::NAME, &msg))
                    .await;
                push_result(pushed, msg)
            }
        }
    }

    /// Sends `msg` without waiting at all: a full mailbox or lane gives
    /// [`TellError::Full`] with the message handed back.
    pub fn try_tell<M: RemoteMessage>(&self, msg: M) -> Result<(), TellError<M>> {
        match &self.target {
            Target::Local(cell) => {
                let Some(slot) = self.local_slot(cell) else {
                    return Err(TellError::NoSuchActor(msg));
                };
                let Some(entry) = slot.entry_for(TypeId::of::<M>()) else {
                    return Err(TellError::UnknownMessage(msg));
                };
                let Some(permit) = slot.permits().try_acquire() else {
                    return Err(TellError::Full(msg));
                };
                deliver_local(
                    &slot,
                    entry,
                    Delivery::new(msg, ReplyTo::None, Some(permit)),
                )
                .map_err(|d| TellError::NoSuchActor(d.into_message()))
            }
            Target::Remote(peer) => {
                let pushed =
                    peer.try_push_lane(&self.name, |b| wire::encode_tell(b, M::NAME, &msg));
                push_result(pushed, msg)
            }
        }
    }

    /// Asks with the node's default deadline.
    pub async fn ask<M: RemoteMessage>(&self, msg: M) -> Result<M::Result, AskError> {
        self.ask_timeout(msg, self.default_timeout).await
    }

    /// Sends `msg` and waits for the reply, at most `timeout`.
    pub async fn ask_timeout<M: RemoteMessage>(
        &self,
        msg: M,
        timeout: Duration,
    ) -> Result<M::Result, AskError> {
        self.ask_with(msg, timeout, true).await
    }

    /// Like [`RemoteRef::ask_timeout`], but fails at once with [`AskError::MailboxFull`]
    /// instead of waiting when the target's mailbox (local) or the lane to its node (remote)
    /// is full. The reply is still awaited, up to `timeout`.
    pub async fn try_ask<M: RemoteMessage>(
        &self,
        msg: M,
        timeout: Duration,
    ) -> Result<M::Result, AskError> {
        self.ask_with(msg, timeout, false).await
    }

    async fn ask_with<M: RemoteMessage>(
        &self,
        msg: M,
        timeout: Duration,
        wait_for_room: bool,
    ) -> Result<M::Result, AskError> {
        match &self.target {
            Target::Local(cell) => self.ask_local(cell, msg, timeout, wait_for_room).await,
            Target::Remote(peer) => {
                let deadline = Instant::now() + timeout;
                self.ask_remote(peer, msg, deadline, timeout, wait_for_room)
                    .await
            }
        }
    }

    fn mailbox_full(&self) -> AskError {
        AskError::MailboxFull {
            actor: self.name.to_string(),
        }
    }

    async fn ask_local<M: RemoteMessage>(
        &self,
        cell: &RwLock<Option<Arc<ActorSlot>>>,
        msg: M,
        timeout: Duration,
        wait_for_room: bool,
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
        // The clock is read only when the mailbox is full; the fast path needs no time.
        let (permit, remaining) = match slot.permits().try_acquire() {
            Some(p) => (p, timeout),
            None if !wait_for_room => return Err(self.mailbox_full()),
            None => {
                let start = Instant::now();
                match tokio::time::timeout(timeout, slot.permits().acquire()).await {
                    Ok(p) => (p, timeout.saturating_sub(start.elapsed())),
                    Err(_) => return Err(AskError::Timeout { after: timeout }),
                }
            }
        };
        let (tx, rx) = oneshot::channel();
        let generation = slot.generation();
        deliver_local(
            &slot,
            entry,
            Delivery::new(msg, ReplyTo::Local(tx), Some(permit)),
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

    async fn ask_remote<M: RemoteMessage>(
        &self,
        peer: &Arc<Peer>,
        msg: M,
        deadline: Instant,
        timeout: Duration,
        wait_for_room: bool,
    ) -> Result<M::Result, AskError> {
        let unreachable = |reason: String, sent: bool| AskError::Unreachable {
            node: self.addr,
            reason,
            sent,
        };
        let (tx, rx) = oneshot::channel();
        let corr = peer.expect_reply(tx);
        let _guard = PendingGuard { peer, corr };
        let work = async {
            // The callee gets the time left when the frame is queued, not the whole timeout.
            let encode = |b: &mut Vec<u8>| {
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = left.as_millis().min(u128::from(u32::MAX)) as u32;
                wire::encode_ask(b, corr, ms, M::NAME, &msg)
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
                Err(e) => return Err(AskError::Rejected(format!("cannot send {}: {e}", M::NAME))),
            }
            match rx.await {
                Ok(Reply::Ok(bytes)) => codec::decode::<M::Result>(&bytes).map_err(|e| {
                    AskError::Rejected(format!("cannot decode the reply to {}: {e}", M::NAME))
                }),
                Ok(Reply::Err(e)) => Err(self.wire_error::<M>(e, timeout)),
                Ok(Reply::Lost(reason)) => Err(unreachable(reason, true)),
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

    fn wire_error<M: RemoteMessage>(&self, e: WireError, timeout: Duration) -> AskError {
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
                message: M::NAME.to_string(),
            },
            WireError::Rejected(r) => AskError::Rejected(r),
            WireError::Timeout => AskError::Timeout { after: timeout },
        }
    }
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
