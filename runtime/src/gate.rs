//! The inbound gate: what decides, as a call arrives at this node and before it takes a
//! place in the target's mailbox, whether it is delivered. The runtime has no rules of its
//! own here; the mesh installs one (its local rate limits; later its authorization).
//!
//! Every call to a local actor passes it, from the network and from this node alike. With
//! no gate installed a call pays one relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use actormesh_transport::SpiffeId;
use serde::{Deserialize, Serialize};

use crate::AskError;

/// A call as it arrives.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// The target actor's name on this node.
    pub actor: &'a str,
    /// The message name.
    pub message: &'a str,
    /// The calling node's verified identity (`None`: this node).
    pub caller: Option<&'a SpiffeId>,
}

/// Why a gate refused a call; the caller gets the matching [`AskError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// A rate limit of the service had no token ([`AskError::RateLimited`]).
    #[error("rate limited: service {service:?} takes no more calls now")]
    RateLimited {
        /// The service.
        service: String,
    },
}

impl From<Refusal> for AskError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::RateLimited { service } => AskError::RateLimited { service },
        }
    }
}

/// Decides on arriving calls.
pub trait InboundGate: Send + Sync + 'static {
    /// Whether `call` may be delivered.
    fn admit(&self, call: &Arrival<'_>) -> Result<(), Refusal>;
}

/// A node's gate, if one is installed.
#[derive(Default)]
pub(crate) struct GateCell {
    on: AtomicBool,
    gate: RwLock<Option<Arc<dyn InboundGate>>>,
}

impl std::fmt::Debug for GateCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateCell")
            .field("on", &self.on.load(Ordering::Relaxed))
            .finish()
    }
}

impl GateCell {
    /// Installs `gate` (`None`: every call passes).
    pub(crate) fn set(&self, gate: Option<Arc<dyn InboundGate>>) {
        let on = gate.is_some();
        *self.gate.write().unwrap_or_else(|e| e.into_inner()) = gate;
        self.on.store(on, Ordering::Release);
    }

    /// Whether the call to `actor` of `message` from `caller` may be delivered.
    #[inline]
    pub(crate) fn admit(
        &self,
        actor: &str,
        message: &str,
        caller: Option<&SpiffeId>,
    ) -> Result<(), Refusal> {
        if !self.on.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.admit_gated(&Arrival {
            actor,
            message,
            caller,
        })
    }

    #[cold]
    fn admit_gated(&self, call: &Arrival<'_>) -> Result<(), Refusal> {
        let gate = self.gate.read().unwrap_or_else(|e| e.into_inner()).clone();
        match gate {
            Some(g) => g.admit(call),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OnlyPing;

    impl InboundGate for OnlyPing {
        fn admit(&self, call: &Arrival<'_>) -> Result<(), Refusal> {
            if call.message == "ping" {
                Ok(())
            } else {
                Err(Refusal::RateLimited {
                    service: call.actor.to_string(),
                })
            }
        }
    }

    #[test]
    fn without_a_gate_everything_passes_and_with_one_it_decides() {
        let cell = GateCell::default();
        assert_eq!(cell.admit("a", "pong", None), Ok(()));
        cell.set(Some(Arc::new(OnlyPing)));
        assert_eq!(cell.admit("a", "ping", None), Ok(()));
        assert_eq!(
            cell.admit("a", "pong", None),
            Err(Refusal::RateLimited {
                service: "a".into()
            })
        );
        cell.set(None);
        assert_eq!(cell.admit("a", "pong", None), Ok(()));
    }
}
