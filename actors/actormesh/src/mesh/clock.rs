//! The mesh's clock: monotonic nanoseconds since the first time it was read in this
//! process, the [`Nanos`] that the plain cores take as "now".

use std::sync::OnceLock;
use std::time::Instant;

use crate::mesh::balance::Nanos;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// `at` in the mesh's clock.
pub(crate) fn nanos(at: Instant) -> Nanos {
    at.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_nanos() as Nanos
}

/// Now in the mesh's clock.
pub(crate) fn now() -> Nanos {
    nanos(Instant::now())
}
