//! The dial state of an endpoint, as plain state: per peer address, the current link,
//! whether a dial is under way, the backoff after failed dials, and which identity holds
//! the address. No I/O and no clock: the endpoint passes `now` in and carries out what the
//! [`PeerBook`] decides, so tests drive every rule here directly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::link::{Link, LinkInfo};
use crate::identity::SpiffeId;

/// A peer with no live link, no dial under way and no retry time pending is forgotten once
/// it has been gone this long. Far above the 5 s backoff cap, so a peer that flaps keeps
/// its backoff, while addresses that never come back stop costing memory.
pub const FORGET_PEER_AFTER: Duration = Duration::from_secs(5 * 60);

/// How often the book looks for peers to forget; a pass scans every peer, so it runs rarely.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// The acceptor's decision on a new incoming link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Keep the new link (replacing any existing one).
    Accept,
    /// Refuse it: the existing link (or our own pending dial) is the one to keep.
    Duplicate,
}

/// The current state towards a peer, as seen when a new incoming link arrives.
#[derive(Debug, Clone, Copy)]
pub struct Existing {
    /// Whether the existing link was dialed by us.
    pub dialed_by_us: bool,
    /// The peer incarnation seen on it.
    pub peer_incarnation: u64,
}

/// Decides whether an incoming link from `peer` is kept.
///
/// The rule that both sides apply: of two links between the same pair of live processes,
/// the one dialed by the lower `(identity, address)` wins. A link from a restarted peer
/// (new incarnation), one the peer dialed again itself, or an explicit replacement always
/// wins, because the old one is then dead or being retired.
pub fn admit(
    me: (&SpiffeId, SocketAddr),
    peer: (&SpiffeId, SocketAddr),
    existing: Option<Existing>,
    dialing_out: bool,
    incarnation: u64,
    replaces: bool,
) -> Admission {
    let me_lower = me < peer;
    match existing {
        None if dialing_out && me_lower => Admission::Duplicate,
        None => Admission::Accept,
        Some(_) if replaces => Admission::Accept,
        Some(e) if e.peer_incarnation != incarnation => Admission::Accept,
        Some(e) if !e.dialed_by_us => Admission::Accept,
        Some(_) if me_lower => Admission::Duplicate,
        Some(_) => Admission::Accept,
    }
}

/// Capped exponential dial backoff: `initial` after the first failure, doubling up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The delay after one failure.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// How long to wait before the next dial after `failures` failures in a row.
    pub fn after_failures(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        self.initial.saturating_mul(1 << exp).min(self.max)
    }
}

/// What the book reads of a link: [`Link`] in the endpoint, a stand-in in tests.
pub(crate) trait LinkFacts: Clone {
    /// The facts fixed when the link was made.
    fn info(&self) -> &LinkInfo;
    /// Whether the connection is still open.
    fn is_alive(&self) -> bool;
}

impl LinkFacts for Link {
    fn info(&self) -> &LinkInfo {
        Link::info(self)
    }

    fn is_alive(&self) -> bool {
        Link::is_alive(self)
    }
}

/// Why the last dial to a peer failed: its text, and the handshake refusal when it was
/// one, so that a caller backing off still learns it was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DialFailure {
    /// The error as it reads.
    pub text: String,
    /// Who refused the handshake and why, if the dial was refused.
    pub refused: Option<(crate::error::RefusedBy, crate::error::Refusal)>,
}

impl From<&str> for DialFailure {
    fn from(text: &str) -> Self {
        DialFailure {
            text: text.to_string(),
            refused: None,
        }
    }
}

impl From<&crate::error::TransportError> for DialFailure {
    fn from(e: &crate::error::TransportError) -> Self {
        DialFailure {
            text: e.to_string(),
            refused: match e {
                crate::error::TransportError::HandshakeRefused { by, refusal, .. } => {
                    Some((*by, refusal.clone()))
                }
                _ => None,
            },
        }
    }
}

/// What a caller that wants a link to a peer does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LinkStep<L> {
    /// A live link exists: use it.
    Ready(L),
    /// Another caller is dialing the peer: wait until the book changes.
    AwaitDial,
    /// The last dial failed and its retry time has not come: fail at once.
    BackingOff {
        /// The error of the last dial.
        last_error: Option<DialFailure>,
        /// How long until the next dial is allowed.
        retry_in: Duration,
    },
    /// Dial now; the book has recorded the dial as under way.
    Dial,
}

/// A new incoming link, as the Hello exchange presents it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming<'a> {
    /// The listen address the peer claims in its Hello.
    pub addr: SocketAddr,
    /// The peer's verified identity.
    pub peer: &'a SpiffeId,
    /// The peer's incarnation.
    pub incarnation: u64,
    /// Whether the peer asks to replace its current link.
    pub replaces: bool,
}

/// Another identity holds a live link for the address an incoming link claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddressTaken {
    /// The identity that holds the address.
    pub holder: SpiffeId,
}

#[derive(Debug)]
struct PeerEntry<L> {
    link: Option<L>,
    dialing: bool,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<DialFailure>,
    /// The last time anything happened for this peer or it was seen with a live link.
    last_seen: Instant,
}

impl<L> PeerEntry<L> {
    fn new(now: Instant) -> Self {
        PeerEntry {
            link: None,
            dialing: false,
            failures: 0,
            retry_at: None,
            last_error: None,
            last_seen: now,
        }
    }
}

impl<L: LinkFacts> PeerEntry<L> {
    fn live_link(&self) -> Option<&L> {
        self.link.as_ref().filter(|l| l.is_alive())
    }
}

/// The endpoint's dial state per peer listen address.
#[derive(Debug)]
pub(crate) struct PeerBook<L> {
    peers: HashMap<SocketAddr, PeerEntry<L>>,
    backoff: Backoff,
    next_prune: Option<Instant>,
}

impl<L: LinkFacts> PeerBook<L> {
    /// An empty book whose failed dials back off by `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        PeerBook {
            peers: HashMap::new(),
            backoff,
            next_prune: None,
        }
    }

    /// The entry of `addr`, made if missing; forgets gone peers first when a pass is due.
    fn entry(&mut self, addr: SocketAddr, now: Instant) -> &mut PeerEntry<L> {
        if self.next_prune.is_none_or(|at| now >= at) {
            self.prune(now);
            self.next_prune = Some(now + PRUNE_EVERY);
        }
        let entry = self
            .peers
            .entry(addr)
            .or_insert_with(|| PeerEntry::new(now));
        entry.last_seen = now;
        entry
    }

    /// What a caller that wants a link to `addr` does next. A call before the retry time
    /// of a failed dial fails at once with its error, so no one waits on a dead peer.
    pub fn next_step(&mut self, addr: SocketAddr, now: Instant) -> LinkStep<L> {
        let entry = self.entry(addr, now);
        if let Some(link) = entry.live_link() {
            return LinkStep::Ready(link.clone());
        }
        if entry.dialing {
            return LinkStep::AwaitDial;
        }
        if let Some(at) = entry.retry_at.filter(|at| now < *at) {
            return LinkStep::BackingOff {
                last_error: entry.last_error.clone(),
                retry_in: at.saturating_duration_since(now),
            };
        }
        entry.dialing = true;
        LinkStep::Dial
    }

    /// Our dial made `link`: it becomes the peer's link and the backoff starts over.
    /// Returns the link it replaced, to retire.
    pub fn dial_succeeded(&mut self, addr: SocketAddr, link: L, now: Instant) -> Option<L> {
        let entry = self.entry(addr, now);
        entry.dialing = false;
        entry.failures = 0;
        entry.retry_at = None;
        entry.last_error = None;
        self.install(addr, link, now)
    }

    /// The peer refused our dial as a duplicate: its own dial to us is the one to keep.
    pub fn dial_refused_as_duplicate(&mut self, addr: SocketAddr, now: Instant) {
        self.entry(addr, now).dialing = false;
    }

    /// Our dial failed with `error`. Returns how long the peer is now left alone.
    pub fn dial_failed(&mut self, addr: SocketAddr, error: DialFailure, now: Instant) -> Duration {
        let backoff = self.backoff;
        let entry = self.entry(addr, now);
        entry.dialing = false;
        entry.failures = entry.failures.saturating_add(1);
        let wait = backoff.after_failures(entry.failures);
        entry.retry_at = Some(now + wait);
        entry.last_error = Some(error);
        wait
    }

    /// The caller driving a dial gave up on it (its future was dropped): a later caller
    /// dials again instead of waiting for a dial that no one drives.
    pub fn dial_abandoned(&mut self, addr: SocketAddr) {
        if let Some(entry) = self.peers.get_mut(&addr) {
            entry.dialing = false;
        }
    }

    /// Decides on an incoming link. The address comes from the peer's own Hello, so it is
    /// only a claim: while one identity has a live link for it, no other may take it over.
    /// An accepted link also clears the backoff towards the peer.
    pub fn admit_incoming(
        &mut self,
        me: (&SpiffeId, SocketAddr),
        incoming: Incoming<'_>,
        now: Instant,
    ) -> Result<Admission, AddressTaken> {
        let entry = self.entry(incoming.addr, now);
        let live = entry.live_link().map(LinkFacts::info);
        if let Some(holder) = live.filter(|l| &l.peer != incoming.peer) {
            return Err(AddressTaken {
                holder: holder.peer.clone(),
            });
        }
        let existing = live.map(|l| Existing {
            dialed_by_us: l.dialed_by_us,
            peer_incarnation: l.peer_incarnation,
        });
        let decision = admit(
            me,
            (incoming.peer, incoming.addr),
            existing,
            entry.dialing,
            incoming.incarnation,
            incoming.replaces,
        );
        if decision == Admission::Accept {
            entry.failures = 0;
            entry.retry_at = None;
        }
        Ok(decision)
    }

    /// Makes `link` the peer's link. Returns the link it replaced, to retire.
    pub fn install(&mut self, addr: SocketAddr, link: L, now: Instant) -> Option<L> {
        let id = link.info().id;
        self.entry(addr, now)
            .link
            .replace(link)
            .filter(|old| old.info().id != id)
    }

    /// The live link to `addr`, if any.
    pub fn live_link(&self, addr: SocketAddr) -> Option<L> {
        self.peers.get(&addr)?.live_link().cloned()
    }

    /// The number of the link currently filed for `addr`, alive or not.
    pub fn current_link_id(&self, addr: SocketAddr) -> Option<u64> {
        Some(self.peers.get(&addr)?.link.as_ref()?.info().id)
    }

    /// Every link filed.
    pub fn all_links(&self) -> Vec<L> {
        self.peers.values().filter_map(|e| e.link.clone()).collect()
    }

    /// Every link filed for the identity `peer`.
    pub fn links_of(&self, peer: &SpiffeId) -> Vec<L> {
        self.peers
            .values()
            .filter_map(|e| e.link.clone())
            .filter(|l| &l.info().peer == peer)
            .collect()
    }

    /// Forgets peers gone for longer than [`FORGET_PEER_AFTER`]: no live link, no dial under
    /// way, no retry time to come. A peer with a live link or a dial counts as seen now.
    fn prune(&mut self, now: Instant) {
        self.peers.retain(|_, e| {
            if e.dialing || e.live_link().is_some() {
                e.last_seen = now;
                return true;
            }
            let retry_pending = e.retry_at.is_some_and(|at| now < at);
            retry_pending || now.saturating_duration_since(e.last_seen) < FORGET_PEER_AFTER
        });
    }

    /// How many peers the book holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;

    fn id(n: &str) -> SpiffeId {
        SpiffeId::node("t", n).unwrap()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A link whose liveness the test switches.
    #[derive(Debug, Clone)]
    struct FakeLink {
        info: Arc<LinkInfo>,
        alive: Arc<AtomicBool>,
    }

    impl FakeLink {
        fn new(link_id: u64, peer: &SpiffeId, at: SocketAddr, dialed_by_us: bool) -> Self {
            FakeLink {
                info: Arc::new(LinkInfo {
                    id: link_id,
                    peer: peer.clone(),
                    peer_addr: at,
                    peer_incarnation: 7,
                    dialed_by_us,
                    peer_cert_expiry: SystemTime::UNIX_EPOCH,
                    local_cert_expiry: SystemTime::UNIX_EPOCH,
                    established: SystemTime::UNIX_EPOCH,
                    version: super::super::PROTOCOL_VERSION,
                }),
                alive: Arc::new(AtomicBool::new(true)),
            }
        }

        fn die(&self) {
            self.alive.store(false, Ordering::Relaxed);
        }
    }

    impl PartialEq for FakeLink {
        fn eq(&self, other: &Self) -> bool {
            self.info.id == other.info.id
        }
    }

    impl Eq for FakeLink {}

    impl LinkFacts for FakeLink {
        fn info(&self) -> &LinkInfo {
            &self.info
        }

        fn is_alive(&self) -> bool {
            self.alive.load(Ordering::Relaxed)
        }
    }

    fn book() -> PeerBook<FakeLink> {
        PeerBook::new(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
        })
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn simultaneous_dial_keeps_the_lower_dialers_link_on_both_sides() {
        let (a, b) = (id("a"), id("b"));
        let (aa, ba) = (addr(1), addr(2));
        // Both dialing, neither established: a (lower) refuses b's dial, b accepts a's.
        assert_eq!(
            admit((&a, aa), (&b, ba), None, true, 7, false),
            Admission::Duplicate
        );
        assert_eq!(
            admit((&b, ba), (&a, aa), None, true, 7, false),
            Admission::Accept
        );
        // a's dial finished first: a refuses b's late dial; b had already accepted a's.
        let mine = Some(Existing {
            dialed_by_us: true,
            peer_incarnation: 7,
        });
        assert_eq!(
            admit((&a, aa), (&b, ba), mine, false, 7, false),
            Admission::Duplicate
        );
        // b's dial finished first: a's late dial reaches b, which keeps it.
        assert_eq!(
            admit((&b, ba), (&a, aa), mine, false, 7, false),
            Admission::Accept
        );
    }

    #[test]
    fn restarts_redials_and_replacements_win() {
        let (a, b) = (id("a"), id("b"));
        let (aa, ba) = (addr(1), addr(2));
        let mine = Some(Existing {
            dialed_by_us: true,
            peer_incarnation: 7,
        });
        let theirs = Some(Existing {
            dialed_by_us: false,
            peer_incarnation: 7,
        });
        assert_eq!(
            admit((&a, aa), (&b, ba), mine, false, 8, false),
            Admission::Accept
        );
        assert_eq!(
            admit((&a, aa), (&b, ba), theirs, false, 7, false),
            Admission::Accept
        );
        assert_eq!(
            admit((&a, aa), (&b, ba), mine, false, 7, true),
            Admission::Accept
        );
    }

    #[test]
    fn backoff_doubles_from_50ms_and_caps_at_5s() {
        let b = book().backoff;
        assert_eq!(b.after_failures(1), ms(50));
        assert_eq!(b.after_failures(2), ms(100));
        assert_eq!(b.after_failures(3), ms(200));
        assert_eq!(b.after_failures(30), Duration::from_secs(5));
        assert_eq!(b.after_failures(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn a_refused_dial_is_remembered_as_a_refusal_while_backing_off() {
        use crate::error::{Refusal, RefusedBy, TransportError};
        let mut book = book();
        let t0 = Instant::now();
        let peer = addr(9);
        assert_eq!(book.next_step(peer, t0), LinkStep::Dial);
        let refused = TransportError::HandshakeRefused {
            addr: peer,
            by: RefusedBy::Peer,
            refusal: Refusal::Revoked,
        };
        book.dial_failed(peer, DialFailure::from(&refused), t0);
        match book.next_step(peer, t0 + ms(10)) {
            LinkStep::BackingOff {
                last_error: Some(f),
                ..
            } => assert_eq!(f.refused, Some((RefusedBy::Peer, Refusal::Revoked))),
            other => panic!("expected to back off with the refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_call_before_the_retry_time_fails_at_once_with_the_last_error() {
        let mut book = book();
        let t0 = Instant::now();
        let peer = addr(9);
        assert_eq!(book.next_step(peer, t0), LinkStep::Dial);
        assert_eq!(book.dial_failed(peer, "refused".into(), t0), ms(50));
        assert_eq!(
            book.next_step(peer, t0 + ms(10)),
            LinkStep::BackingOff {
                last_error: Some("refused".into()),
                retry_in: ms(40),
            }
        );
        // At the retry time a dial is allowed again; a second failure waits twice as long.
        assert_eq!(book.next_step(peer, t0 + ms(50)), LinkStep::Dial);
        let t1 = t0 + ms(60);
        assert_eq!(book.dial_failed(peer, "timed out".into(), t1), ms(100));
        assert_eq!(
            book.next_step(peer, t1 + ms(99)),
            LinkStep::BackingOff {
                last_error: Some("timed out".into()),
                retry_in: ms(1),
            }
        );
    }

    #[test]
    fn a_successful_dial_starts_the_backoff_over() {
        let mut book = book();
        let t0 = Instant::now();
        let (b, peer) = (id("b"), addr(9));
        for n in 0..3 {
            let t = t0 + Duration::from_secs(10 * n);
            assert_eq!(book.next_step(peer, t), LinkStep::Dial);
            book.dial_failed(peer, "refused".into(), t);
        }
        let t = t0 + Duration::from_secs(40);
        assert_eq!(book.next_step(peer, t), LinkStep::Dial);
        let link = FakeLink::new(1, &b, peer, true);
        assert_eq!(book.dial_succeeded(peer, link.clone(), t), None);
        assert_eq!(book.next_step(peer, t), LinkStep::Ready(link.clone()));
        link.die();
        assert_eq!(book.next_step(peer, t), LinkStep::Dial);
        assert_eq!(book.dial_failed(peer, "refused".into(), t), ms(50));
    }

    #[test]
    fn callers_wait_for_a_dial_under_way_and_redial_when_it_is_abandoned() {
        let mut book = book();
        let t0 = Instant::now();
        let peer = addr(9);
        assert_eq!(book.next_step(peer, t0), LinkStep::Dial);
        assert_eq!(book.next_step(peer, t0), LinkStep::AwaitDial);
        book.dial_abandoned(peer);
        assert_eq!(book.next_step(peer, t0), LinkStep::Dial);
        book.dial_refused_as_duplicate(peer, t0);
        assert_eq!(book.next_step(peer, t0), LinkStep::Dial);
    }

    #[test]
    fn an_incoming_link_during_our_dial_is_refused_by_the_lower_side_only() {
        let (a, b) = (id("a"), id("b"));
        let (aa, ba) = (addr(1), addr(2));
        let t0 = Instant::now();
        let from = |peer| Incoming {
            addr: ba,
            peer,
            incarnation: 7,
            replaces: false,
        };
        let mut at_a = book();
        assert_eq!(at_a.next_step(ba, t0), LinkStep::Dial);
        assert_eq!(
            at_a.admit_incoming((&a, aa), from(&b), t0),
            Ok(Admission::Duplicate)
        );
        // Without a dial of its own, a takes b's link.
        at_a.dial_abandoned(ba);
        assert_eq!(
            at_a.admit_incoming((&a, aa), from(&b), t0),
            Ok(Admission::Accept)
        );
    }

    #[test]
    fn another_identity_cannot_take_an_address_while_its_holder_is_linked() {
        let (me, b, mallory) = (id("a"), id("b"), id("mallory"));
        let (mine, claimed) = (addr(1), addr(2));
        let t0 = Instant::now();
        let mut book = book();
        let held = FakeLink::new(1, &b, claimed, false);
        book.install(claimed, held.clone(), t0);
        let claim = |peer, replaces| Incoming {
            addr: claimed,
            peer,
            incarnation: 7,
            replaces,
        };
        assert_eq!(
            book.admit_incoming((&me, mine), claim(&mallory, true), t0),
            Err(AddressTaken { holder: b.clone() })
        );
        // The holder itself may replace its link.
        assert_eq!(
            book.admit_incoming((&me, mine), claim(&b, true), t0),
            Ok(Admission::Accept)
        );
        // Once the holder's link is gone, the address is free to claim.
        held.die();
        assert_eq!(
            book.admit_incoming((&me, mine), claim(&mallory, false), t0),
            Ok(Admission::Accept)
        );
    }

    #[test]
    fn an_accepted_incoming_link_clears_the_backoff_and_a_refused_claim_does_not() {
        let (me, b, mallory) = (id("a"), id("b"), id("mallory"));
        let (mine, peer) = (addr(1), addr(2));
        let t0 = Instant::now();
        let claim = |who| Incoming {
            addr: peer,
            peer: who,
            incarnation: 7,
            replaces: false,
        };
        let mut book = book();
        book.next_step(peer, t0);
        book.dial_failed(peer, "refused".into(), t0);
        let held = FakeLink::new(1, &b, peer, false);
        book.install(peer, held.clone(), t0);
        assert!(book
            .admit_incoming((&me, mine), claim(&mallory), t0)
            .is_err());
        held.die();
        assert!(matches!(
            book.next_step(peer, t0),
            LinkStep::BackingOff { .. }
        ));
        assert_eq!(
            book.admit_incoming((&me, mine), claim(&b), t0),
            Ok(Admission::Accept)
        );
        assert_eq!(book.next_step(peer, t0), LinkStep::Dial);
    }

    #[test]
    fn installing_returns_the_replaced_link_to_retire() {
        let b = id("b");
        let peer = addr(2);
        let t0 = Instant::now();
        let mut book = book();
        let first = FakeLink::new(1, &b, peer, true);
        let second = FakeLink::new(2, &b, peer, false);
        assert_eq!(book.install(peer, first.clone(), t0), None);
        assert_eq!(book.install(peer, first.clone(), t0), None);
        assert_eq!(book.install(peer, second.clone(), t0), Some(first));
        assert_eq!(book.current_link_id(peer), Some(2));
        assert_eq!(book.links_of(&b), vec![second]);
        assert_eq!(book.links_of(&id("c")), vec![]);
    }

    #[test]
    fn peers_that_come_and_go_are_forgotten_so_the_book_stays_bounded() {
        let mut book = book();
        let t0 = Instant::now();
        let per_minute = 100u16;
        // Every minute for an hour, 100 new peers link and leave, and 100 others fail a dial.
        for minute in 0..60u16 {
            let t = t0 + Duration::from_secs(60 * u64::from(minute));
            for n in 0..per_minute {
                let port = 1 + minute * 2 * per_minute + n;
                let linked = FakeLink::new(u64::from(port), &id("p"), addr(port), true);
                assert_eq!(book.next_step(addr(port), t), LinkStep::Dial);
                book.dial_succeeded(addr(port), linked.clone(), t);
                linked.die();
                let dead = addr(port + per_minute);
                assert_eq!(book.next_step(dead, t), LinkStep::Dial);
                book.dial_failed(dead, "refused".into(), t);
            }
            // Only the peers of the last few minutes (the limit plus one pass) remain.
            let window = (FORGET_PEER_AFTER + PRUNE_EVERY).as_secs() / 60 + 1;
            let bound = usize::from(2 * per_minute) * window as usize;
            assert!(
                book.len() <= bound,
                "{} peers after minute {minute}",
                book.len()
            );
        }
        assert!(book.len() >= usize::from(2 * per_minute));
    }

    #[test]
    fn a_peer_is_kept_while_linked_dialing_backing_off_or_within_the_limit() {
        let mut book = PeerBook::new(Backoff {
            initial: Duration::from_secs(600),
            max: Duration::from_secs(600),
        });
        let t0 = Instant::now();
        let (linked, dialing, backing_off, recent) = (addr(1), addr(2), addr(3), addr(4));
        book.install(linked, FakeLink::new(1, &id("a"), linked, true), t0);
        assert_eq!(book.next_step(dialing, t0), LinkStep::Dial);
        book.next_step(backing_off, t0);
        book.dial_failed(backing_off, "refused".into(), t0);
        let late = t0 + FORGET_PEER_AFTER + PRUNE_EVERY;
        let left = FakeLink::new(2, &id("r"), recent, true);
        book.install(recent, left.clone(), late - ms(1));
        left.die();
        // A pass after the limit: the first three are kept for their own reasons, the
        // fourth because it was seen within the limit.
        book.entry(addr(5), late + PRUNE_EVERY);
        for kept in [linked, dialing, backing_off, recent] {
            assert!(book.peers.contains_key(&kept), "{kept} was forgotten");
        }
        // Well past its retry time and the limit, the peer that failed is forgotten.
        let much_later = t0 + Duration::from_secs(3600);
        book.entry(addr(5), much_later);
        assert!(!book.peers.contains_key(&backing_off));
        assert!(!book.peers.contains_key(&recent));
        assert!(book.peers.contains_key(&linked));
        assert!(book.peers.contains_key(&dialing));
    }
}
