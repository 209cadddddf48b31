//! Death watch: who is told when an actor is gone, as plain tables.
//!
//! [`WatcherBook`] holds the watchers of the actors hosted on this node, both local
//! (a channel or an actor) and remote (a peer's watch id), indexed by actor slot and by
//! peer, so that an `Unwatch` or a lost link touches only that peer's watches. The node
//! fires what the book hands back; the book itself does no I/O.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use actix::Recipient;
use tokio::sync::oneshot;

use crate::wire::WatchEnd;

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

impl TerminationReason {
    /// The reason a peer reported on the wire.
    pub(crate) fn from_wire(end: WatchEnd) -> Self {
        match end {
            WatchEnd::Stopped => TerminationReason::Stopped,
            WatchEnd::Panicked => TerminationReason::Panicked,
            WatchEnd::NoSuchActor => TerminationReason::NoSuchActor,
        }
    }

    fn to_wire(&self) -> WatchEnd {
        match self {
            TerminationReason::Panicked => WatchEnd::Panicked,
            TerminationReason::NoSuchActor => WatchEnd::NoSuchActor,
            _ => WatchEnd::Stopped,
        }
    }
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

/// Who is told when a watched actor is gone.
pub(crate) enum WatchSink {
    Channel(oneshot::Sender<Terminated>),
    Actor(Recipient<Terminated>),
    /// Watch `id` placed by the node at `peer`.
    Remote {
        peer: SocketAddr,
        id: u64,
    },
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

/// A `Terminated` notice owed to a peer's watch; the node sends it on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteEnd {
    pub(crate) peer: SocketAddr,
    pub(crate) id: u64,
    pub(crate) end: WatchEnd,
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

    /// Tells a local watcher at once; a remote one is handed back as the notice to send.
    pub(crate) fn fire(self, t: Terminated) -> Option<RemoteEnd> {
        match self {
            WatchSink::Channel(tx) => {
                let _ = tx.send(t);
                None
            }
            WatchSink::Actor(r) => {
                r.do_send(t);
                None
            }
            WatchSink::Remote { peer, id } => Some(RemoteEnd {
                peer,
                id,
                end: t.reason.to_wire(),
            }),
        }
    }
}

/// Watchers one actor may have: a peer placing watches without end must not grow us.
pub(crate) const MAX_WATCHERS: usize = 100_000;

/// What became of a watch placed with [`WatcherBook::add`].
#[derive(Debug)]
pub(crate) enum Placed {
    /// Filed; it fires when the actor ends.
    Added,
    /// The actor already has its maximum of watchers; the watch is dropped.
    Refused,
    /// The actor has ended already: fire the watch now.
    Ended(WatchSink),
}

#[derive(Debug, Default)]
struct Watchers {
    local: Vec<WatchSink>,
    remote: HashSet<(SocketAddr, u64)>,
}

impl Watchers {
    fn len(&self) -> usize {
        self.local.len() + self.remote.len()
    }
}

/// The watchers of the actors hosted here, by actor slot and, for remote ones, by peer.
#[derive(Debug)]
pub(crate) struct WatcherBook {
    /// Open while the actor lives; a slot missing here has ended (or never started).
    by_slot: HashMap<u64, Watchers>,
    /// Watches each peer placed: watch id → slot id.
    by_peer: HashMap<SocketAddr, HashMap<u64, u64>>,
    max_per_actor: usize,
}

impl WatcherBook {
    pub(crate) fn new(max_per_actor: usize) -> Self {
        Self {
            by_slot: HashMap::new(),
            by_peer: HashMap::new(),
            max_per_actor,
        }
    }

    /// The actor in `slot` started: watches on it are filed from now on.
    pub(crate) fn open(&mut self, slot: u64) {
        self.by_slot.entry(slot).or_default();
    }

    /// Files a watch on the actor in `slot`.
    pub(crate) fn add(&mut self, slot: u64, sink: WatchSink) -> Placed {
        let Some(watchers) = self.by_slot.get_mut(&slot) else {
            return Placed::Ended(sink);
        };
        // Watchers that went away leave nothing behind.
        watchers.local.retain(WatchSink::is_live);
        if watchers.len() >= self.max_per_actor {
            return Placed::Refused;
        }
        match sink {
            WatchSink::Remote { peer, id } => {
                // A watch placed again after a link change is the same watch.
                watchers.remote.insert((peer, id));
                let previous = self.by_peer.entry(peer).or_default().insert(id, slot);
                if let Some(other) = previous.filter(|s| *s != slot) {
                    if let Some(w) = self.by_slot.get_mut(&other) {
                        w.remote.remove(&(peer, id));
                    }
                }
            }
            local => watchers.local.push(local),
        }
        Placed::Added
    }

    /// Withdraws watch `id` of `peer` (its watcher went away).
    pub(crate) fn unwatch(&mut self, peer: SocketAddr, id: u64) {
        let Some(ids) = self.by_peer.get_mut(&peer) else {
            return;
        };
        if let Some(slot) = ids.remove(&id) {
            if let Some(w) = self.by_slot.get_mut(&slot) {
                w.remote.remove(&(peer, id));
            }
        }
        if ids.is_empty() {
            self.by_peer.remove(&peer);
        }
    }

    /// Drops every watch `peer` placed (its link is gone, or it restarted).
    pub(crate) fn forget_peer(&mut self, peer: SocketAddr) {
        for (id, slot) in self.by_peer.remove(&peer).unwrap_or_default() {
            if let Some(w) = self.by_slot.get_mut(&slot) {
                w.remote.remove(&(peer, id));
            }
        }
    }

    /// The actor in `slot` has ended: its watchers, to fire. Later watches end at once.
    pub(crate) fn close(&mut self, slot: u64) -> Vec<WatchSink> {
        let Some(watchers) = self.by_slot.remove(&slot) else {
            return Vec::new();
        };
        let mut sinks = watchers.local;
        for (peer, id) in watchers.remote {
            if let Some(ids) = self.by_peer.get_mut(&peer) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_peer.remove(&peer);
                }
            }
            sinks.push(WatchSink::Remote { peer, id });
        }
        sinks
    }

    /// Watchers on the actor in `slot`.
    pub(crate) fn count(&self, slot: u64) -> usize {
        self.by_slot.get(&slot).map_or(0, Watchers::len)
    }

    /// Watches that `peer` has placed here.
    #[cfg(test)]
    pub(crate) fn placed_by(&self, peer: SocketAddr) -> usize {
        self.by_peer.get(&peer).map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 4000))
    }

    fn remote(n: u8, id: u64) -> WatchSink {
        WatchSink::Remote { peer: peer(n), id }
    }

    fn remotes(sinks: &[WatchSink]) -> Vec<(SocketAddr, u64)> {
        let mut v: Vec<_> = sinks
            .iter()
            .filter_map(|s| match s {
                WatchSink::Remote { peer, id } => Some((*peer, *id)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_ended_actor_hands_back_every_watcher_and_later_watches_fire_at_once() {
        let mut book = WatcherBook::new(MAX_WATCHERS);
        book.open(1);
        let (tx, _rx) = oneshot::channel();
        assert!(matches!(book.add(1, WatchSink::Channel(tx)), Placed::Added));
        assert!(matches!(book.add(1, remote(2, 7)), Placed::Added));
        let fired = book.close(1);
        assert_eq!(fired.len(), 2);
        assert_eq!(remotes(&fired), vec![(peer(2), 7)]);
        assert_eq!(
            book.placed_by(peer(2)),
            0,
            "the peer index keeps no ended actor"
        );
        assert!(matches!(book.add(1, remote(2, 8)), Placed::Ended(_)));
        assert!(matches!(book.add(99, remote(2, 9)), Placed::Ended(_)));
    }

    #[test]
    fn unwatch_withdraws_only_that_peers_watch() {
        let mut book = WatcherBook::new(MAX_WATCHERS);
        book.open(1);
        book.add(1, remote(2, 7));
        book.add(1, remote(3, 7));
        book.unwatch(peer(2), 7);
        assert_eq!(book.count(1), 1);
        assert_eq!(book.placed_by(peer(2)), 0);
        assert_eq!(remotes(&book.close(1)), vec![(peer(3), 7)]);
    }

    #[test]
    fn a_lost_peer_takes_its_watches_on_every_actor_and_nothing_else() {
        let mut book = WatcherBook::new(MAX_WATCHERS);
        book.open(1);
        book.open(2);
        book.add(1, remote(2, 1));
        book.add(2, remote(2, 2));
        book.add(2, remote(3, 1));
        book.forget_peer(peer(2));
        assert_eq!(book.count(1), 0);
        assert_eq!(book.count(2), 1);
        assert_eq!(book.placed_by(peer(2)), 0);
        assert_eq!(book.placed_by(peer(3)), 1);
    }

    #[test]
    fn a_watch_placed_again_after_a_link_change_is_filed_once() {
        let mut book = WatcherBook::new(MAX_WATCHERS);
        book.open(1);
        book.add(1, remote(2, 7));
        book.add(1, remote(2, 7));
        assert_eq!(book.count(1), 1);
        assert_eq!(book.close(1).len(), 1);
    }

    #[test]
    fn watchers_are_bounded_per_actor_and_gone_ones_free_their_place() {
        let mut book = WatcherBook::new(2);
        book.open(1);
        let (tx, rx) = oneshot::channel();
        book.add(1, WatchSink::Channel(tx));
        book.add(1, remote(2, 1));
        assert!(matches!(book.add(1, remote(2, 2)), Placed::Refused));
        assert_eq!(
            book.placed_by(peer(2)),
            1,
            "a refused watch leaves no index entry"
        );
        // The channel's receiver is dropped: its place is free again.
        drop(rx);
        assert!(matches!(book.add(1, remote(2, 2)), Placed::Added));
        assert_eq!(book.count(1), 2);
    }

    #[test]
    fn a_remote_watcher_fires_as_a_notice_with_the_wire_reason() {
        let t = Terminated {
            actor: "a".into(),
            node: peer(1),
            reason: TerminationReason::Panicked,
        };
        assert_eq!(
            remote(2, 7).fire(t),
            Some(RemoteEnd {
                peer: peer(2),
                id: 7,
                end: WatchEnd::Panicked
            })
        );
    }
}
