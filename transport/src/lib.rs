//! # actormesh-transport
//!
//! The wire under actormesh: QUIC endpoints (quinn) with TLS 1.3 mutual authentication
//! (rustls, ring provider), SPIFFE identities, length-delimited frames and the one bounded
//! codec. It knows nothing of actors.
//!
//! - [`pki`]: a cluster CA and the certificates it issues (`actormesh ca init|issue`).
//! - [`tls`]: certificate verification by chain, expiry and trust domain; a certificate
//!   store that can be replaced on a running endpoint.
//! - [`endpoint`]: [`Endpoint`] keeps one [`Link`] per peer, dials with capped exponential
//!   backoff, collapses simultaneous dials deterministically and cycles links before their
//!   certificates expire.
//! - [`trust`]: trust bundles (the old and the new CA during a rotation).
//! - [`frame`] and [`codec`]: every decode is bounded, and bad input is a typed error.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use actormesh_transport::{pki::Credentials, Endpoint, EndpointConfig};
//! let creds = Credentials::load("certs/node-a".as_ref())?;
//! let (endpoint, mut links) = Endpoint::bind(EndpointConfig::new("127.0.0.1:0".parse()?), &creds)?;
//! let link = endpoint.link("127.0.0.1:7000".parse()?).await?;
//! println!("connected to {}", link.peer());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bootstrap;
pub mod codec;
pub mod endpoint;
pub mod error;
pub mod frame;
pub mod identity;
pub mod pki;
pub mod sink;
pub mod tls;
pub mod trust;
mod x509;

pub use endpoint::{Endpoint, EndpointConfig, Link, LinkInfo, NewLink, PROTOCOL_VERSION};
pub use error::{Refusal, RefusedBy, TransportError};
pub use identity::SpiffeId;
pub use quinn;
