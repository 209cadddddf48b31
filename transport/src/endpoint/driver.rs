//! The endpoint's background tasks: accepting incoming links, installing links as the
//! peer book decides, retiring replaced links and cycling links before their certificates
//! expire. This is where tokio and quinn meet the plain state of [`super::peers`].

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

use super::handshake::{accept, dial};
use super::link::{Link, NewLink};
use super::peers::PeerBook;
use super::{close_code, lock, Inner};
use crate::error::TransportError;

/// Handshakes refused that an endpoint remembers for `recent_refusals`.
const RECENT_REFUSALS: usize = 64;

/// Accepts incoming connections until the endpoint is dropped, each in its own task.
pub(super) async fn accept_loop(inner: Weak<Inner>, quinn: quinn::Endpoint) {
    while let Some(incoming) = quinn.accept().await {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let timeout = strong.config.handshake_timeout;
            match tokio::time::timeout(timeout, accept(&strong, incoming)).await {
                Ok(Ok(Some(new))) => {
                    install(&strong, &mut lock(&strong.peers), new);
                    strong.changed.notify_waiters();
                }
                Ok(Ok(None)) => {}
                Ok(Err(TransportError::HandshakeRefused { refusal, by, addr })) => {
                    warn!(peer = %addr, refused_by = ?by, reason = %refusal, "handshake refused");
                    let mut r = lock(&strong.refusals);
                    if r.len() >= RECENT_REFUSALS {
                        r.remove(0);
                    }
                    r.push((addr, refusal.clone()));
                    let _ = strong.refusal_events.send((addr, refusal));
                }
                Ok(Err(e)) => debug!(peer = %remote, error = %e, "incoming link failed"),
                Err(_) => debug!(peer = %remote, "incoming handshake timed out"),
            }
        });
    }
}

/// Files `new` in the book as the link to its peer and takes it into service.
pub(super) fn install(inner: &Arc<Inner>, book: &mut PeerBook<Link>, new: NewLink) {
    let replaced = book.install(new.link.info().peer_addr, new.link.clone(), Instant::now());
    take_into_service(inner, replaced, new);
}

/// Retires the link `new` replaced, schedules its cycling if we dialed it, and hands it to
/// the layer above. Runs under the book's lock, so the layer above learns of links in the
/// order the book filed them.
pub(super) fn take_into_service(inner: &Arc<Inner>, replaced: Option<Link>, new: NewLink) {
    if let Some(old) = replaced {
        retire(old, inner.config.retire_after);
    }
    if new.link.info().dialed_by_us {
        tokio::spawn(cycle_before_expiry(Arc::downgrade(inner), new.link.clone()));
    }
    let info = new.link.info();
    debug!(peer = %info.peer, addr = %info.peer_addr, id = info.id, "link up");
    let _ = inner.links_tx.send(new);
}

/// Closes a replaced link after `after` at the latest, so data in flight can still arrive.
fn retire(old: Link, after: Duration) {
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(after) => {}
            _ = old.connection().closed() => {}
        }
        old.close(close_code::REPLACED, "replaced by a newer link");
    });
}

/// Dials a fresh link before either certificate on `link` expires, so that a long-lived
/// link never outlives the certificates it was authenticated with.
async fn cycle_before_expiry(inner: Weak<Inner>, link: Link) {
    let info = link.info().clone();
    let expiry = info.peer_cert_expiry.min(info.local_cert_expiry);
    let span = expiry
        .duration_since(info.established)
        .unwrap_or(Duration::ZERO);
    let mut at = info.established + span.mul_f64(0.8);
    loop {
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = link.connection().closed() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        if lock(&inner.peers).current_link_id(info.peer_addr) != Some(info.id) {
            return;
        }
        info!(peer = %info.peer, "cycling link before certificate expiry");
        match dial(&inner, info.peer_addr, true).await {
            Ok(new) => {
                install(&inner, &mut lock(&inner.peers), new);
                inner.changed.notify_waiters();
                return;
            }
            Err(e) => {
                warn!(peer = %info.peer, error = ?e, "cycling the link failed; retrying");
                at = SystemTime::now() + inner.config.dial_backoff().after_failures(3);
            }
        }
    }
}
