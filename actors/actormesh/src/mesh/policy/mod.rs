//! Traffic policy (issue 10, in progress): the counting and timing rules the Proxy's call
//! path will compose, each a plain core that takes the time as an argument, so its tests
//! need no clock and no network.
//!
//! Built so far: the retry budget ([`budget`]) and the token bucket of local rate limits
//! ([`bucket`]). Neither is wired into calls yet.
pub mod bucket;
pub mod budget;
