//! Inbound dispatch: what to do with one frame read from a lane, as plain functions of
//! the frame and the target's handler registry. The lane reader does the waiting and
//! the I/O; these decide.

use std::time::Duration;

use crate::message::HandlerEntry;
use crate::slots::ActorSlot;
use crate::wire::{LaneFrame, WireError};

/// What to do with a lane frame.
#[derive(Debug)]
pub(crate) enum Dispatch {
    /// Queue it for this handler of the target, once the mailbox has room.
    Deliver(&'static HandlerEntry),
    /// Nothing here takes it: an ask is answered with this error, a tell is dropped
    /// (tells are at-most-once).
    Refuse(WireError),
}

/// Routes `frame` to the actor `target` (`None`: no actor by the lane's name runs here).
#[inline]
pub(crate) fn dispatch(frame: &LaneFrame<'_>, target: Option<&ActorSlot>) -> Dispatch {
    let Some(slot) = target else {
        return Dispatch::Refuse(WireError::NoSuchActor);
    };
    match slot.entry_named(frame.name) {
        Some(entry) => Dispatch::Deliver(entry),
        None => Dispatch::Refuse(WireError::UnknownMessage {
            actor_type: slot.actor_type().to_string(),
        }),
    }
}

/// Whether an ask that has waited since it was read (behind a full mailbox) is past the
/// time its caller had left; it is then answered `Timeout`, not delivered. `waited` is
/// asked only for an ask, so a tell costs no clock read.
#[inline]
pub(crate) fn expired(frame: &LaneFrame<'_>, waited: impl FnOnce() -> Duration) -> bool {
    frame
        .ask
        .is_some_and(|(_, ms)| waited() > Duration::from_millis(u64::from(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Delivery, RemoteMessage};
    use crate::slots::SlotTable;
    use actix::{Actor, Context, Handler};

    #[derive(serde::Serialize, serde::Deserialize, actix::Message)]
    #[rtype(result = "()")]
    struct Ping;

    impl RemoteMessage for Ping {
        const NAME: &'static str = "test.Ping/v1";
    }

    struct Pinged;

    impl Actor for Pinged {
        type Context = Context<Self>;
    }

    impl Handler<Ping> for Pinged {
        type Result = ();
        fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
    }

    impl Handler<Delivery<Ping>> for Pinged {
        type Result = ();
        fn handle(&mut self, d: Delivery<Ping>, ctx: &mut Context<Self>) {
            d.handle(self, ctx)
        }
    }

    static PING: HandlerEntry = HandlerEntry::of::<Pinged, Ping>();

    fn frame(name: &str, ask: Option<(u64, u32)>) -> LaneFrame<'_> {
        LaneFrame {
            ask,
            meta: None,
            name,
            payload: &[],
        }
    }

    #[test]
    fn a_message_the_actor_accepts_goes_to_its_handler() {
        let table = SlotTable::default();
        let slot = table.insert(1, "p", "Pinged", &[&PING], 4, None).unwrap();
        match dispatch(&frame(Ping::NAME, None), Some(&slot)) {
            Dispatch::Deliver(entry) => assert!(std::ptr::eq(entry, &PING)),
            other => panic!("expected delivery, got {other:?}"),
        }
    }

    #[test]
    fn nothing_there_and_unknown_messages_are_refused_with_their_error() {
        let table = SlotTable::default();
        let slot = table.insert(1, "p", "Pinged", &[&PING], 4, None).unwrap();
        assert!(matches!(
            dispatch(&frame(Ping::NAME, Some((1, 100))), None),
            Dispatch::Refuse(WireError::NoSuchActor)
        ));
        match dispatch(&frame("test.Other/v1", Some((1, 100))), Some(&slot)) {
            Dispatch::Refuse(WireError::UnknownMessage { actor_type }) => {
                assert_eq!(actor_type, "Pinged")
            }
            other => panic!("expected UnknownMessage, got {other:?}"),
        }
    }

    #[test]
    fn an_ask_that_outwaited_its_deadline_expires_and_a_tell_never_does() {
        let ask = frame(Ping::NAME, Some((1, 100)));
        assert!(!expired(&ask, || Duration::from_millis(100)));
        assert!(expired(&ask, || Duration::from_millis(101)));
        let tell = frame(Ping::NAME, None);
        assert!(!expired(&tell, || panic!("a tell reads no clock")));
    }
}
