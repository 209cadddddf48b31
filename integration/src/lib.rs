//! Shared pieces of the multi-process tests and the benchmark: throwaway PKI, test actors,
//! and a child-process harness. Tests wait on events (a line on stdout, a reply), never on
//! sleeps.
#![forbid(unsafe_code)]

pub mod actors;
pub mod fuzz;
pub mod harness;
pub mod otlp_receiver;
pub mod pki;
pub mod zk;
