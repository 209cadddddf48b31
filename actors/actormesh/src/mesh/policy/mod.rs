//! Traffic policy (issue 10, in progress): the counting and timing rules the Proxy's call
//! path will compose, each a plain core that takes the time as an argument, so its tests
//! need no clock and no network.
//!
//! Built so far: what a Route decides for a call (rule, subset, faults, mirror:
//! [`choose`]), when a failed try goes again and how long each try may take ([`retry`]),
//! the retry budget ([`budget`]), the token bucket of local rate limits
//! ([`bucket`]), the circuit breaker's limits ([`breaker`]), how much outlier detection
//! may eject and for how long ([`ejection`]), and idempotency declared on a message
//! (`#[remote(..., idempotent)]`, `RemoteMessage::IDEMPOTENT`), and the `Route` and
//! `DestinationPolicy` objects with their validation ([`spec`]) and the checks across them
//! ([`analyze`]). The master reads their manifests (`apply --dry-run`); none is applied,
//! pushed or wired into calls yet.
pub mod active;
pub mod analyze;
pub mod breaker;
pub mod bucket;
pub mod budget;
pub mod choose;
pub mod ejection;
pub mod retry;
pub mod spec;

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use crate::RemoteMessage;

    #[derive(Serialize, Deserialize, RemoteMessage)]
    #[remote(name = "policy.test.Get/v1", reply = u32, idempotent)]
    struct Get;

    #[derive(Serialize, Deserialize, RemoteMessage)]
    #[remote(name = "policy.test.Add/v1")]
    struct Add;

    /// What a retry layer reads, generic over the message as it will be.
    fn idempotent<M: RemoteMessage>() -> bool {
        M::IDEMPOTENT
    }

    #[test]
    fn idempotency_is_declared_on_the_message_and_off_by_default() {
        assert!(idempotent::<Get>());
        assert!(!idempotent::<Add>());
    }
}
