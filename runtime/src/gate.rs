//! The inbound gate: what decides, as a call arrives at this node and before it takes a
//! place in the target's mailbox, whether it is delivered. The runtime has no rules of its
//! own here; the mesh installs one (its authorization policies and local rate limits).
//!
//! Every call to a local actor passes it, from the network and from this node alike. With
//! no gate installed, or one that decides nothing ([`InboundGate::decides`]), a call pays
//! one relaxed atomic load.
//!
//! The gate also vouches for workloads ([`InboundGate::hosts`]): a workload that a calling
//! node asserts is taken as the caller's only if the gate says that node hosts an instance
//! of it. Without a gate no remote workload is proven.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use actormesh_transport::SpiffeId;
use serde::{Deserialize, Serialize};

use crate::{AskError, Metadata};

/// A call as it arrives.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// The target actor's name on this node.
    pub actor: &'a str,
    /// The message name.
    pub message: &'a str,
    /// The calling node's verified identity (`None`: this node).
    pub caller: Option<&'a SpiffeId>,
    /// The caller's workload (`namespace/name`), proven: asserted by this node for one of
    /// its own actors, or asserted by `caller` and vouched for by [`InboundGate::hosts`].
    /// `None` when the call asserts none or its assertion is not proven.
    pub workload: Option<&'a str>,
    /// The call's user metadata.
    pub metadata: &'a Metadata,
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
    /// An authorization policy (or the mesh's default) denied the call
    /// ([`AskError::PermissionDenied`]). Appended after `RateLimited`: variants travel by
    /// position.
    #[error("permission denied by policy {policy:?}, rule {rule:?}")]
    PermissionDenied {
        /// The policy that decided (`default-deny` under the mesh's default).
        policy: String,
        /// Its rule.
        rule: String,
    },
}

impl From<Refusal> for AskError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::RateLimited { service } => AskError::RateLimited { service },
            Refusal::PermissionDenied { policy, rule } => {
                AskError::PermissionDenied { policy, rule }
            }
        }
    }
}

/// Decides on arriving calls.
pub trait InboundGate: Send + Sync + 'static {
    /// Whether `call` may be delivered.
    fn admit(&self, call: &Arrival<'_>) -> Result<(), Refusal>;

    /// Whether [`InboundGate::admit`] can refuse anything; read once when the gate is
    /// installed. A gate that only vouches says false, and calls then skip it.
    fn decides(&self) -> bool {
        true
    }

    /// Whether the node `caller` hosts an instance of `workload` (`namespace/name`), so
    /// that its assertion of that workload is believed.
    fn hosts(&self, caller: &SpiffeId, workload: &str) -> bool {
        let _ = (caller, workload);
        false
    }
}

/// A node's gate, if one is installed.
#[derive(Default)]
pub(crate) struct GateCell {
    /// A gate that decides is installed.
    on: AtomicBool,
    /// Any gate is installed (it may vouch for workloads).
    any: AtomicBool,
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
        let on = gate.as_ref().is_some_and(|g| g.decides());
        let any = gate.is_some();
        *self.gate.write().unwrap_or_else(|e| e.into_inner()) = gate;
        self.on.store(on, Ordering::Release);
        self.any.store(any, Ordering::Release);
    }

    /// Whether `call` may be delivered.
    #[inline]
    pub(crate) fn admit(&self, call: &Arrival<'_>) -> Result<(), Refusal> {
        if !self.on.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.admit_gated(call)
    }

    /// Whether the installed gate vouches that `caller` hosts `workload`.
    pub(crate) fn vouches(&self, caller: &SpiffeId, workload: &str) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let gate = self.gate.read().unwrap_or_else(|e| e.into_inner()).clone();
        gate.is_some_and(|g| g.hosts(caller, workload))
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

    fn call(message: &str) -> Arrival<'_> {
        Arrival {
            actor: "a",
            message,
            caller: None,
            workload: None,
            metadata: &crate::call::NO_METADATA,
        }
    }

    #[test]
    fn without_a_gate_everything_passes_and_with_one_it_decides() {
        let cell = GateCell::default();
        assert_eq!(cell.admit(&call("pong")), Ok(()));
        cell.set(Some(Arc::new(OnlyPing)));
        assert_eq!(cell.admit(&call("ping")), Ok(()));
        assert_eq!(
            cell.admit(&call("pong")),
            Err(Refusal::RateLimited {
                service: "a".into()
            })
        );
        cell.set(None);
        assert_eq!(cell.admit(&call("pong")), Ok(()));
    }

    struct Vouching;

    impl InboundGate for Vouching {
        fn admit(&self, _: &Arrival<'_>) -> Result<(), Refusal> {
            Err(Refusal::PermissionDenied {
                policy: "p".into(),
                rule: "r".into(),
            })
        }
        fn decides(&self) -> bool {
            false
        }
        fn hosts(&self, caller: &SpiffeId, workload: &str) -> bool {
            caller.as_str().ends_with("/node/a") && workload == "shop/web"
        }
    }

    #[test]
    fn a_gate_that_decides_nothing_is_skipped_and_still_vouches() {
        let cell = GateCell::default();
        let a = SpiffeId::parse("spiffe://t/node/a").unwrap();
        let b = SpiffeId::parse("spiffe://t/node/b").unwrap();
        assert!(!cell.vouches(&a, "shop/web"), "no gate proves nothing");
        cell.set(Some(Arc::new(Vouching)));
        assert_eq!(cell.admit(&call("x")), Ok(()), "its admit is never called");
        assert!(cell.vouches(&a, "shop/web"));
        assert!(!cell.vouches(&b, "shop/web"));
        assert!(!cell.vouches(&a, "shop/db"));
    }
}
