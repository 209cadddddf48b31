//! The master a node follows, when there may be several (`actormesh master --zk`): its
//! address and identity, shared by every part of an agent that talks to it (heartbeats,
//! renewals, status reports, the Proxy's subscription), and found again through the
//! bootstrap ports of the masters it knows when the one it followed stops answering.
//!
//! An agent obeys only the master it follows: orders from another master's identity (an
//! old leader that was paused and resumed) are refused ([`FollowedMaster::obeys`]). It
//! follows a new master only once that master answers a `Locate` as the leader and its
//! link proves a master's identity.

use std::net::SocketAddr;
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
}

impl FollowedMaster {
    /// Following the master at `addr`, of the identity `identity` if known.
    pub fn new(addr: SocketAddr, identity: Option<SpiffeId>) -> Self {
        Self {
            now: Arc::new(watch::Sender::new(Followed { addr, identity })),
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

/// Asks the bootstrap ports `joins` at once where the leading master is, each pinning
/// the CAs of `trust` in turn (the newest first: after a CA rotation the masters present
/// only the new one). The first answer wins, so a dead master costs no wait; `None` if
/// none answered within `limit`.
pub async fn locate(
    joins: &[SocketAddr],
    trust: &[CertificateDer<'static>],
    limit: Duration,
) -> Option<SocketAddr> {
    let ask = codec::encode(&BootstrapRequest::Locate).ok()?;
    let pins: Vec<String> = trust
        .iter()
        .rev()
        .map(actormesh_transport::pki::fingerprint)
        .collect();
    let mut asks = tokio::task::JoinSet::new();
    for join in joins.iter().copied() {
        let (ask, pins) = (ask.clone(), pins.clone());
        asks.spawn(async move {
            for pin in &pins {
                if let Ok((reply, _)) = bootstrap::request(join, pin, &ask, limit).await {
                    if let Ok(BootstrapReply::Located { master_addr }) = codec::decode(&reply) {
                        return Some(master_addr);
                    }
                    return None;
                }
            }
            None
        });
    }
    // The rest are aborted when the set is dropped.
    while let Some(found) = asks.join_next().await {
        if let Ok(Some(addr)) = found {
            return Some(addr);
        }
    }
    None
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
}
