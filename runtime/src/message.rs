//! Remote messages, the delivery envelope and the automatic handler registry.

use std::any::{Any, TypeId};

use actix::dev::MessageResponse;
use actix::{Actor, Addr, Context, Handler};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Arc;
use tokio::sync::oneshot;

use actormesh_transport::codec;
use actormesh_transport::sink::{FrameSink, PushError};

use crate::call::CallInfo;
use crate::crash::dropping_crash;
use crate::mailbox::Permit;
use crate::peers::{Peer, Reply};
use crate::stats::{Observed, Outcome};
use crate::wire::{self, WireError};
use actormesh_transport::SpiffeId;
use std::time::Instant;

/// A message that can cross the network: a serde type with a stable, versioned name and a
/// typed reply (its actix `Message::Result`). Declare it with `#[derive(RemoteMessage)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a remote message",
    label = "`{Self}` needs `#[derive(RemoteMessage)]`",
    note = "declare it with `#[derive(Serialize, Deserialize, RemoteMessage)]` and `#[remote(name = \"pkg.Message/v1\", reply = ReplyType)]`"
)]
pub trait RemoteMessage:
    actix::Message<Result: Serialize + DeserializeOwned + Send + 'static>
    + Serialize
    + DeserializeOwned
    + Send
    + 'static
{
    /// The name on the wire, e.g. `bookinfo.ratings.Get/v1`.
    const NAME: &'static str;
    /// Whether handling it twice does what handling it once does
    /// (`#[remote(..., idempotent)]`): a call of it may then be retried after any error,
    /// not only after [`crate::AskError::NotDelivered`].
    const IDEMPOTENT: bool = false;
}

/// Where the reply to a delivery goes.
pub(crate) enum ReplyTo<R> {
    /// A tell: nobody waits.
    None,
    /// A local ask: straight to the caller, never serialized.
    Local(oneshot::Sender<R>),
    /// A remote ask: encoded onto the reply stream of the link it came from.
    Remote(RemoteReply),
}

/// The reply address of a remote ask. If it is dropped unanswered (the actor stopped or
/// panicked, or the response future was dropped), it answers with the matching error, so
/// the caller never waits for its deadline in vain.
#[derive(Debug)]
pub(crate) struct RemoteReply {
    dest: ReplyDest,
    done: bool,
    /// Encode the reply as JSON (the call's payload was JSON).
    json: bool,
}

#[derive(Debug)]
enum ReplyDest {
    /// Onto the reply stream of the asking node.
    Wire {
        sink: FrameSink,
        corr: u64,
        /// The asking node: if `sink` closed (its link was replaced), the reply takes
        /// the current link's reply stream instead.
        peer: Arc<Peer>,
    },
    /// Encoded, to a caller on this node that has no Rust type for it (`ask_json`).
    Local(Option<oneshot::Sender<Reply>>),
}

impl RemoteReply {
    pub(crate) fn new(sink: FrameSink, corr: u64, peer: Arc<Peer>, json: bool) -> Self {
        Self {
            dest: ReplyDest::Wire { sink, corr, peer },
            done: false,
            json,
        }
    }

    /// A reply encoded (as JSON when `json`) for a caller on this node.
    pub(crate) fn local(tx: oneshot::Sender<Reply>, json: bool) -> Self {
        Self {
            dest: ReplyDest::Local(Some(tx)),
            done: false,
            json,
        }
    }

    /// Pushes one reply frame, re-routing to the current link if this one's stream closed.
    /// `encode` writes the status and value after the correlation id.
    fn push(
        &mut self,
        mut encode: impl FnMut(&mut Vec<u8>) -> Result<(), codec::CodecError>,
    ) -> Result<(), PushError<codec::CodecError>> {
        match &mut self.dest {
            ReplyDest::Wire { sink, corr, peer } => {
                let corr = *corr;
                let mut frame = |buf: &mut Vec<u8>| {
                    buf.extend_from_slice(&corr.to_le_bytes());
                    encode(buf)
                };
                match sink.try_push(&mut frame) {
                    Err(PushError::Closed(_)) => match peer.reply_sink() {
                        Some(current) => current.try_push(frame),
                        None => Err(PushError::Closed("no link to the asking node".into())),
                    },
                    other => other,
                }
            }
            ReplyDest::Local(tx) => {
                let mut buf = Vec::new();
                encode(&mut buf).map_err(PushError::Encode)?;
                let reply = match wire::decode_reply_body(&buf) {
                    Ok(Ok(payload)) => Reply::Ok(bytes::Bytes::copy_from_slice(payload)),
                    Ok(Err(e)) => Reply::Err(e),
                    Err(e) => Reply::Err(WireError::Rejected(e.to_string())),
                };
                if let Some(tx) = tx.take() {
                    let _ = tx.send(reply);
                }
                Ok(())
            }
        }
    }

    fn peer_addr(&self) -> String {
        match &self.dest {
            ReplyDest::Wire { peer, .. } => peer.addr.to_string(),
            ReplyDest::Local(_) => "this node".into(),
        }
    }

    pub(crate) fn ok<R: Serialize>(mut self, value: &R) {
        self.done = true;
        let json = self.json;
        match self.push(|buf| wire::encode_reply_ok_body(buf, value, json)) {
            Ok(()) => {}
            Err(PushError::Encode(err)) => {
                self.done = false;
                self.fail(WireError::Rejected(format!(
                    "cannot encode the reply: {err}"
                )));
            }
            Err(PushError::Frame(err)) => {
                self.done = false;
                self.fail(WireError::Rejected(format!(
                    "the reply is too large: {err}"
                )));
            }
            Err(other) => tracing::warn!(
                peer = %self.peer_addr(),
                error = %other,
                "reply not sent; the caller will time out"
            ),
        }
    }

    pub(crate) fn fail(mut self, err: WireError) {
        self.send_error(&err);
    }

    fn send_error(&mut self, err: &WireError) {
        if self.done {
            return;
        }
        self.done = true;
        let _ = self.push(|buf| wire::encode_reply_err_body(buf, err));
    }
}

impl Drop for RemoteReply {
    fn drop(&mut self) {
        if !self.done {
            let err = if std::thread::panicking() || dropping_crash() {
                WireError::Panicked
            } else {
                WireError::Stopped
            };
            self.send_error(&err);
        }
    }
}

/// The envelope in which the runtime delivers a message to an actor. Generated code
/// implements `Handler<Delivery<M>>` for every `#[handler]`; users never build one.
pub struct Delivery<M: actix::Message> {
    msg: M,
    reply: ReplyTo<M::Result>,
    _permit: Option<Permit>,
    call: Option<CallInfo>,
    /// The call's server-side figures, when the node keeps them.
    observed: Option<Observed>,
}

/// The verified identity of the node that sent the message being handled right now, taken
/// from the certificate of the link it came on; `None` when the sender is on this node (or
/// outside a handler). Use it in a handler to decide whether a caller may do what it asks.
/// The same as `CallInfo::current()?.caller_node()`.
pub fn caller() -> Option<SpiffeId> {
    CallInfo::ambient().and_then(|c| c.caller_node().cloned())
}

impl<M: RemoteMessage> std::fmt::Debug for Delivery<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &M::NAME)
            .finish()
    }
}

// Bound by `actix::Message` only, so that the types `#[handler]` writes stay well formed
// for a message that is not a `RemoteMessage`: then only `register` fails, once.
impl<M: actix::Message + 'static> actix::Message for Delivery<M> {
    type Result = ();
}

/// What `#[handler]` registers for `impl Handler<M> for A`: the registry entry and the
/// function its `Handler<Delivery<M>>` calls. Made by [`register`], the one generic call
/// that holds every bound.
#[allow(missing_debug_implementations)]
pub struct Registration<A: Actor<Context = Context<A>>, M: actix::Message> {
    /// The entry the node's registry collects.
    pub entry: HandlerEntry,
    /// Runs `A`'s `Handler<M>` for a delivery and routes its response.
    pub deliver: fn(Delivery<M>, &mut A, &mut Context<A>),
}

/// The registration of `impl Handler<M> for A`. Used by `#[actormesh::handler]`.
pub const fn register<A, M>() -> Registration<A, M>
where
    A: Actor<Context = Context<A>> + Handler<M> + Handler<Delivery<M>>,
    M: RemoteMessage,
{
    Registration {
        entry: HandlerEntry::of::<A, M>(),
        deliver: Delivery::<M>::handle::<A>,
    }
}

/// A message's reply type (`Self`) is the handler's `Result` (`T`). `#[handler]` checks
/// it where the handler's `Result` is a plain type, so that a message declared without
/// `reply = T` gets an error that says its reply is `()`.
#[diagnostic::on_unimplemented(
    message = "the handler's `type Result` is `{T}`, but the message replies `{Self}`",
    label = "the message's reply type is `{Self}`",
    note = "a RemoteMessage replies what `#[remote(name = \"...\", reply = T)]` says, and `()` when it has no `reply =`: declare `reply = {T}` on the message"
)]
pub trait ReplyType<T> {}

impl<T> ReplyType<T> for T {}

/// Compiles only if `M` replies with `T`. Used by `#[actormesh::handler]`.
pub const fn reply_is<M, T>()
where
    M: actix::Message,
    M::Result: ReplyType<T>,
{
}

impl<M: RemoteMessage> Delivery<M> {
    /// A delivery whose handler runs with `call` as its context (none when it says
    /// nothing). Built in one step: the envelope is moved once, into the mailbox.
    #[inline]
    pub(crate) fn new(
        msg: M,
        reply: ReplyTo<M::Result>,
        permit: Option<Permit>,
        call: CallInfo,
        observed: Option<Observed>,
    ) -> Self {
        Self {
            msg,
            reply,
            _permit: permit,
            call: (!call.is_empty()).then_some(call),
            observed,
        }
    }

    pub(crate) fn into_message(self) -> M {
        self.msg
    }

    /// Runs the actor's `Handler<M>` and routes its response. Called by generated code.
    pub fn handle<A>(self, act: &mut A, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>> + Handler<M>,
    {
        let Delivery {
            msg,
            reply,
            _permit,
            call,
            observed,
        } = self;
        if let Some(observed) = observed {
            // Off the plain path: a node that keeps figures times the handler and sees
            // when its response resolves.
            return observed_handle(act, ctx, msg, reply, _permit, call, observed);
        }
        let response = match call {
            Some(call) => call.enter(|| <A as Handler<M>>::handle(act, msg, ctx)),
            None => <A as Handler<M>>::handle(act, msg, ctx),
        };
        // The mailbox slot frees as soon as the handler has run.
        drop(_permit);
        match reply {
            ReplyTo::None => response.handle(ctx, None),
            ReplyTo::Local(tx) => response.handle(ctx, Some(tx)),
            ReplyTo::Remote(remote) => {
                let (tx, mut rx) = oneshot::channel();
                response.handle(ctx, Some(tx));
                match rx.try_recv() {
                    Ok(value) => remote.ok(&value),
                    Err(oneshot::error::TryRecvError::Empty) => {
                        // An asynchronous response: answer when it resolves.
                        actix::spawn(async move {
                            if let Ok(value) = rx.await {
                                remote.ok(&value);
                            }
                        });
                    }
                    Err(oneshot::error::TryRecvError::Closed) => drop(remote),
                }
            }
        }
    }
}

/// [`Delivery::handle`] for a call whose figures the node keeps: the handler's time, and
/// the call's outcome once its response resolves. Not inlined, so that the plain path's
/// code stays what it was.
#[inline(never)]
fn observed_handle<A, M>(
    act: &mut A,
    ctx: &mut Context<A>,
    msg: M,
    reply: ReplyTo<M::Result>,
    permit: Option<Permit>,
    call: Option<CallInfo>,
    observed: Observed,
) where
    A: Actor<Context = Context<A>> + Handler<M>,
    M: RemoteMessage,
{
    let started = Instant::now();
    let response = match call {
        Some(call) => call.enter(|| <A as Handler<M>>::handle(act, msg, ctx)),
        None => <A as Handler<M>>::handle(act, msg, ctx),
    };
    let ran = Instant::now();
    observed.handler_ran(ran - started);
    drop(permit);
    // A synchronous response ends the call when the handler returned: that clock read
    // serves both figures.
    let answer = move |value: M::Result, observed: Observed, ended: Option<Instant>| {
        observed.finish_at(Outcome::Ok, ended.unwrap_or_else(Instant::now));
        match reply {
            ReplyTo::None => {}
            ReplyTo::Local(tx) => {
                let _ = tx.send(value);
            }
            ReplyTo::Remote(remote) => remote.ok(&value),
        }
    };
    let (tx, mut rx) = oneshot::channel();
    response.handle(ctx, Some(tx));
    match rx.try_recv() {
        Ok(value) => answer(value, observed, Some(ran)),
        Err(oneshot::error::TryRecvError::Empty) => {
            actix::spawn(async move {
                if let Ok(value) = rx.await {
                    answer(value, observed, None);
                }
            });
        }
        // Dropped unanswered: `observed` counts it stopped (or panicked).
        Err(oneshot::error::TryRecvError::Closed) => {}
    }
}

/// An actor's address with its type erased; holds an `Addr<A>`.
pub(crate) type ErasedAddr = dyn Any + Send + Sync;

/// Why a remote delivery did not reach the mailbox.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliverError {
    /// The payload does not decode as the message type.
    #[error("{0}")]
    Decode(String),
    /// The actor's mailbox is closed (it stopped).
    #[error("the actor's mailbox is closed")]
    Closed,
}

/// Decodes a payload (binary, or JSON if the call says so) and queues it for the actor
/// behind the address, with the call's context.
pub(crate) type RemoteDeliverFn = fn(
    &ErasedAddr,
    &[u8],
    Option<RemoteReply>,
    Option<Permit>,
    CallInfo,
    Option<Observed>,
) -> Result<(), DeliverError>;

/// One `impl Handler<M> for A` registered by `#[actormesh::handler]`.
#[derive(Debug)]
pub struct HandlerEntry {
    pub(crate) actor: fn() -> TypeId,
    pub(crate) message: fn() -> TypeId,
    pub(crate) actor_type: fn() -> &'static str,
    pub(crate) name: &'static str,
    pub(crate) remote: RemoteDeliverFn,
    pub(crate) local: fn(&ErasedAddr, &mut dyn Any) -> bool,
}

inventory::collect!(HandlerEntry);

impl HandlerEntry {
    /// The entry for `impl Handler<M> for A`. Used by `#[actormesh::handler]`.
    pub const fn of<A, M>() -> Self
    where
        A: Actor<Context = Context<A>> + Handler<M> + Handler<Delivery<M>>,
        M: RemoteMessage,
    {
        Self {
            actor: TypeId::of::<A>,
            message: TypeId::of::<M>,
            actor_type: std::any::type_name::<A>,
            name: M::NAME,
            remote: deliver_remote::<A, M>,
            local: deliver_local::<A, M>,
        }
    }
}

fn deliver_remote<A, M>(
    addr: &ErasedAddr,
    payload: &[u8],
    reply: Option<RemoteReply>,
    permit: Option<Permit>,
    call: CallInfo,
    observed: Option<Observed>,
) -> Result<(), DeliverError>
where
    A: Actor<Context = Context<A>> + Handler<Delivery<M>>,
    M: RemoteMessage,
{
    let decoded = if call.is_json() {
        // The error names the field (`items[2].name: invalid type...`), as a caller of
        // the JSON form (the gateway, `actormesh call`) needs.
        let mut de = serde_json::Deserializer::from_slice(payload);
        serde_path_to_error::deserialize::<_, M>(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path.is_empty() || path == "." {
                format!("cannot decode {} from JSON: {inner}", M::NAME)
            } else {
                format!("cannot decode {} from JSON: {path}: {inner}", M::NAME)
            }
        })
    } else {
        codec::decode::<M>(payload).map_err(|e| format!("cannot decode {}: {e}", M::NAME))
    };
    let msg: M = match decoded {
        Ok(m) => m,
        Err(reason) => {
            if let Some(r) = reply {
                r.fail(WireError::Rejected(reason.clone()));
            }
            if let Some(o) = observed {
                o.finish(Outcome::Rejected);
            }
            return Err(DeliverError::Decode(reason));
        }
    };
    let addr = addr
        .downcast_ref::<Addr<A>>()
        .expect("an actor slot holds the Addr of the type its handlers were registered for");
    let reply = match reply {
        Some(r) => ReplyTo::Remote(r),
        None => ReplyTo::None,
    };
    // The semaphore permit bounds the mailbox; actix's own capacity is bypassed on purpose
    // because its full-mailbox path does not wake waiting senders.
    addr.do_send(Delivery::new(msg, reply, permit, call, observed));
    if addr.connected() {
        Ok(())
    } else {
        Err(DeliverError::Closed)
    }
}

/// Delivers the `Delivery<M>` held in `slot` (an `Option<Delivery<M>>`). Returns false,
/// leaving it in place, if the mailbox is closed.
fn deliver_local<A, M>(addr: &ErasedAddr, slot: &mut dyn Any) -> bool
where
    A: Actor<Context = Context<A>> + Handler<Delivery<M>>,
    M: RemoteMessage,
{
    let addr = addr
        .downcast_ref::<Addr<A>>()
        .expect("an actor slot holds the Addr of the type its handlers were registered for");
    let slot = slot
        .downcast_mut::<Option<Delivery<M>>>()
        .expect("local delivery is called with the entry found by the message's TypeId");
    if !addr.connected() {
        return false;
    }
    if let Some(d) = slot.take() {
        addr.do_send(d);
    }
    true
}

/// Every actor type this binary can host remotely (has at least one `#[handler]`), by
/// Rust type name, sorted. An agent reports these to the master, so the master knows
/// which actor types it may place there, without a list kept by hand.
pub fn hosted_actor_types() -> Vec<&'static str> {
    let mut types: Vec<&'static str> = inventory::iter::<HandlerEntry>
        .into_iter()
        .map(|e| (e.actor_type)())
        .collect();
    types.sort_unstable();
    types.dedup();
    types
}

/// The registered handlers of actor type `A`.
pub(crate) fn handlers_of(actor: TypeId) -> Vec<&'static HandlerEntry> {
    inventory::iter::<HandlerEntry>
        .into_iter()
        .filter(|e| (e.actor)() == actor)
        .collect()
}
