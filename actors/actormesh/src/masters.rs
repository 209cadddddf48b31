//! The master a node follows, when there may be several (`actormesh master --zk`): its
//! address and identity, shared by every part of an agent that talks to it (heartbeats,
//! renewals, status reports, the Proxy's subscription), and found again through the
//! bootstrap ports of the masters it knows when the one it followed stops answering.
//!
//! An agent obeys only the master it follows: orders from another master's identity (an
//! old leader that was paused and resumed) are refused ([`FollowedMaster::obeys`]). It
//! follows a new master only once that master answers a `Locate` as the leader and its
//! link proves a master's identity.
//!
//! Every leadership has a term (a fencing token the store hands out, one higher each
//! time a master starts leading). The master's orders carry it in the call metadata
//! [`TERM_KEY`]; an order of an older term than the newest one seen is refused
//! ([`FollowedMaster::check_order`]), so a delayed order of an earlier leadership, even
//! of the same master, cannot act after a newer one did.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actormesh_transport::bootstrap;
use actormesh_transport::codec;
use actormesh_transport::quinn::rustls::pki_types::CertificateDer;
use actormesh_transport::SpiffeId;
use tokio::sync::watch;

use crate::protocol::{BootstrapReply, BootstrapRequest, MASTER_ACTOR};
use crate::{Node, RemoteRef};

/// Who the node follows: an address, and the identity its link proved (`None` until
/// one did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    /// The master's mesh address.
    pub addr: SocketAddr,
    /// The master's identity.
    pub identity: Option<SpiffeId>,
}

/// The master a node follows, shared. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FollowedMaster {
    now: Arc<watch::Sender<Followed>>,
    /// The newest term an obeyed order carried (0: none yet).
    term: Arc<AtomicU64>,
}

/// The call metadata key of the term a master's order is sent under.
pub const TERM_KEY: &str = "actormesh-term";

/// The call options of an order sent by the leader of `term`, answered within `timeout`.
pub fn order_options(term: u64, timeout: Duration) -> crate::CallOptions {
    let mut options = crate::CallOptions {
        timeout: Some(timeout),
        ..Default::default()
    };
    options.metadata.insert(TERM_KEY, term.to_string());
    options
}

/// The term of the call being handled, if it carries one; an unreadable one is an error
/// naming it.
pub fn order_term() -> Result<Option<u64>, String> {
    crate::CallInfo::with_current(|c| {
        let Some(text) = c.and_then(|c| c.metadata().get(TERM_KEY)) else {
            return Ok(None);
        };
        text.parse()
            .map(Some)
            .map_err(|_| format!("the order's {TERM_KEY} metadata {text:?} is not a term number"))
    })
}

/// Why an order is not obeyed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Disobeyed {
    /// The caller is not a master at all.
    #[error("{0} is not a master")]
    NotAMaster(SpiffeId),
    /// A master, but not the one followed.
    #[error("{caller} is not the master followed ({}); only the leading master is obeyed", followed.as_ref().map(|f| f.to_string()).unwrap_or_else(|| "none yet".into()))]
    NotFollowed {
        /// Who sent it.
        caller: SpiffeId,
        /// Who is followed.
        followed: Option<SpiffeId>,
    },
    /// The order is of an older leadership than one already obeyed.
    #[error("the order is of term {term}, older than term {newest} already obeyed; a master that no longer leads sent it")]
    OlderTerm {
        /// The order's term.
        term: u64,
        /// The newest term obeyed.
        newest: u64,
    },
    /// The order carries no term, though orders of a term were obeyed.
    #[error("the order carries no term, but orders of term {newest} were obeyed; only a master of an earlier version sends none")]
    NoTerm {
        /// The newest term obeyed.
        newest: u64,
    },
}

impl FollowedMaster {
    /// Following the master at `addr`, of the identity `identity` if known.
    pub fn new(addr: SocketAddr, identity: Option<SpiffeId>) -> Self {
        Self {
            now: Arc::new(watch::Sender::new(Followed { addr, identity })),
            term: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Who is followed now.
    pub fn get(&self) -> Followed {
        self.now.borrow().clone()
    }

    /// The followed master's address.
    pub fn addr(&self) -> SocketAddr {
        self.now.borrow().addr
    }

    /// Follows another master. Returns whether that changed anything.
    pub fn follow(&self, addr: SocketAddr, identity: SpiffeId) -> bool {
        let new = Followed {
            addr,
            identity: Some(identity),
        };
        self.now.send_if_modified(|f| {
            let changed = *f != new;
            *f = new;
            changed
        })
    }

    /// Changes to who is followed.
    pub fn subscribe(&self) -> watch::Receiver<Followed> {
        self.now.subscribe()
    }

    /// The followed master's `$master`, pinned to its identity when that is known.
    pub fn actor_ref(&self, node: &Node) -> RemoteRef {
        let f = self.get();
        let r = node.actor_ref(f.addr, MASTER_ACTOR);
        match f.identity {
            Some(id) => r.pinned(id),
            None => r,
        }
    }

    /// The newest term an obeyed order carried (0 before any did).
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    /// Whether an order from `caller` sent under `term` is obeyed: it must come from the
    /// master followed ([`FollowedMaster::obeys`]) and be of no older term than the newest
    /// obeyed, which an obeyed order of a newer term raises. An order without a term (from
    /// a master of an earlier version) is obeyed only while no order of a term was.
    pub fn check_order(&self, caller: &SpiffeId, term: Option<u64>) -> Result<(), Disobeyed> {
        if !caller.is_master() {
            return Err(Disobeyed::NotAMaster(caller.clone()));
        }
        if !self.obeys(caller) {
            return Err(Disobeyed::NotFollowed {
                caller: caller.clone(),
                followed: self.get().identity,
            });
        }
        match term {
            Some(term) => {
                let newest = self.term.fetch_max(term, Ordering::AcqRel);
                if term < newest {
                    return Err(Disobeyed::OlderTerm { term, newest });
                }
            }
            None => {
                let newest = self.term();
                if newest > 0 {
                    return Err(Disobeyed::NoTerm { newest });
                }
            }
        }
        Ok(())
    }

    /// Whether an order from `caller` is to be obeyed: it must be a master's identity,
    /// and the one followed once one is known.
    pub fn obeys(&self, caller: &SpiffeId) -> bool {
        caller.is_master()
            && self
                .now
                .borrow()
                .identity
                .as_ref()
                .is_none_or(|f| f == caller)
    }
}

/// Where the leading master is, as a master's bootstrap port told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The leader's mesh address.
    pub leader: SocketAddr,
    /// The leader's term, if the leader answered.
    pub term: Option<u64>,
    /// Every master's bootstrap address the answer named (empty from a master of an
    /// earlier version, which tells the leader only).
    pub bootstraps: Vec<SocketAddr>,
}

/// Asks the bootstrap ports `joins` at once where the leading master is and which masters
/// there are, each pinning the CAs of `trust` in turn (the newest first: after a CA
/// rotation the masters present only the new one). The first that names a leader wins,
/// so a dead master costs no wait; `None` if none did within `limit`.
pub async fn locate(
    joins: &[SocketAddr],
    trust: &[CertificateDer<'static>],
    limit: Duration,
) -> Option<Located> {
    let ask = codec::encode(&BootstrapRequest::Masters).ok()?;
    let ask_leader = codec::encode(&BootstrapRequest::Locate).ok()?;
    let pins: Vec<String> = trust
        .iter()
        .rev()
        .map(actormesh_transport::pki::fingerprint)
        .collect();
    let mut asks = tokio::task::JoinSet::new();
    for join in joins.iter().copied() {
        let (ask, ask_leader, pins) = (ask.clone(), ask_leader.clone(), pins.clone());
        asks.spawn(async move {
            for pin in &pins {
                let Ok((reply, _)) = bootstrap::request(join, pin, &ask, limit).await else {
                    continue;
                };
                return match codec::decode(&reply) {
                    Ok(BootstrapReply::Masters(m)) => m.leader.map(|leader| Located {
                        leader,
                        term: m.term,
                        bootstraps: m.bootstraps,
                    }),
                    // A master of an earlier version does not know the request: it
                    // tells the leader only.
                    Ok(BootstrapReply::Join(_)) => {
                        let (reply, _) = bootstrap::request(join, pin, &ask_leader, limit)
                            .await
                            .ok()?;
                        match codec::decode(&reply) {
                            Ok(BootstrapReply::Located { master_addr }) => Some(Located {
                                leader: master_addr,
                                term: None,
                                bootstraps: Vec::new(),
                            }),
                            _ => None,
                        }
                    }
                    _ => None,
                };
            }
            None
        });
    }
    // The rest are aborted when the set is dropped.
    while let Some(found) = asks.join_next().await {
        if let Ok(Some(located)) = found {
            return Some(located);
        }
    }
    None
}

/// `known` with the bootstrap addresses of `learned` that it lacks added at the end (a
/// master no longer standing is kept: asking it costs nothing while others answer).
/// Returns whether any was added.
pub fn learn(known: &mut Vec<SocketAddr>, learned: &[SocketAddr]) -> bool {
    let before = known.len();
    for a in learned {
        if !known.contains(a) {
            known.push(*a);
        }
    }
    known.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_obeyed_from_the_followed_master_only() {
        let m1 = SpiffeId::master("td", "m1").unwrap();
        let m2 = SpiffeId::master("td", "m2").unwrap();
        let agent = SpiffeId::node("td", "a1").unwrap();
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let f = FollowedMaster::new(addr, None);
        // Before a link proved who leads, any master.
        assert!(f.obeys(&m1) && f.obeys(&m2));
        assert!(!f.obeys(&agent));
        assert!(f.follow(addr, m1.clone()));
        assert!(
            !f.follow(addr, m1.clone()),
            "the same master again is no change"
        );
        assert!(f.obeys(&m1));
        assert!(!f.obeys(&m2), "another master, e.g. an old leader resumed");
        let other: SocketAddr = "127.0.0.1:7100".parse().unwrap();
        assert!(f.follow(other, m2.clone()));
        assert!(f.obeys(&m2) && !f.obeys(&m1));
        assert_eq!(f.addr(), other);
    }

    #[test]
    fn masters_learned_are_added_once_and_none_is_forgotten() {
        let p = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mut known = vec![p(7001), p(7101)];
        assert!(learn(&mut known, &[p(7101), p(7201), p(7201)]));
        assert_eq!(known, vec![p(7001), p(7101), p(7201)]);
        assert!(!learn(&mut known, &[p(7201)]), "nothing new");
        assert!(
            !learn(&mut known, &[]),
            "an answer naming none forgets none"
        );
        assert_eq!(known.len(), 3);
    }

    #[test]
    fn orders_of_an_older_term_are_refused() {
        let m1 = SpiffeId::master("td", "m1").unwrap();
        let m2 = SpiffeId::master("td", "m2").unwrap();
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let f = FollowedMaster::new(addr, Some(m1.clone()));
        assert_eq!(f.term(), 0);
        assert_eq!(
            f.check_order(&m1, None),
            Ok(()),
            "no term while none was seen"
        );
        assert_eq!(f.check_order(&m1, Some(3)), Ok(()));
        assert_eq!(f.term(), 3, "an obeyed order raises the newest term");
        assert_eq!(f.check_order(&m1, Some(3)), Ok(()), "the same term again");
        assert_eq!(
            f.check_order(&m1, Some(2)),
            Err(Disobeyed::OlderTerm { term: 2, newest: 3 }),
            "a delayed order of an earlier leadership of the same master"
        );
        assert_eq!(f.term(), 3, "a refused order leaves the term");
        assert_eq!(
            f.check_order(&m1, None),
            Err(Disobeyed::NoTerm { newest: 3 }),
            "once a term was obeyed, an order needs one"
        );
        assert!(matches!(
            f.check_order(&m2, Some(9)),
            Err(Disobeyed::NotFollowed { .. })
        ));
        assert_eq!(
            f.term(),
            3,
            "an order of a master not followed raises nothing"
        );
        let agent = SpiffeId::node("td", "a1").unwrap();
        assert_eq!(
            f.check_order(&agent, Some(9)),
            Err(Disobeyed::NotAMaster(agent))
        );
    }

    #[test]
    fn an_order_carries_its_term_in_the_metadata() {
        let o = order_options(7, Duration::from_secs(2));
        assert_eq!(o.metadata.get(TERM_KEY), Some("7"));
        assert_eq!(o.timeout, Some(Duration::from_secs(2)));
    }
}
