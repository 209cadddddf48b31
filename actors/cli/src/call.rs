//! `actormesh call <service> <message> '<json>'`: calls a service by name with a JSON payload
//! and prints the reply as JSON, as grpcurl does for gRPC. The CLI is a client node: it
//! starts a node with its client identity, subscribes its Proxy to the master, and calls an
//! endpoint directly once the first snapshot is applied.

use std::process::ExitCode;
use std::time::Instant;

use actormesh::client::ConnectError;
use actormesh::mesh::{CallOptions, MeshOptions, ServiceName};
use actormesh::{AskError, CallOutcome};

use crate::args::CallArgs;

/// Exit codes of `actormesh call`, by what went wrong (documented in `--help` and README).
pub(crate) mod exit {
    /// The reply was printed.
    pub const OK: u8 = 0;
    /// The CLI could not start: no identity, or the master never sent the registry.
    pub const SETUP: u8 = 1;
    /// The input is wrong: JSON, service name or metadata.
    pub const BAD_INPUT: u8 = 3;
    /// The deadline passed.
    pub const TIMEOUT: u8 = 4;
    /// Nothing could take the call now (no ready endpoint, unreachable, full, not delivered).
    pub const UNAVAILABLE: u8 = 5;
    /// The endpoint does not take this message (no such actor, unknown message).
    pub const NOT_FOUND: u8 = 6;
    /// The callee refused the call (for example its payload did not decode).
    pub const REJECTED: u8 = 7;
    /// The callee stopped or crashed with the call.
    pub const FAILED: u8 = 8;
    /// Authorization said no.
    pub const DENIED: u8 = 9;
    /// The callee's rate limit refused the call: try again later.
    pub const RATE_LIMITED: u8 = 10;
}

/// The exit code for a failed call.
pub(crate) fn exit_code(e: &AskError) -> u8 {
    match e {
        AskError::Timeout { .. } => exit::TIMEOUT,
        AskError::NoSuchActor { .. } | AskError::UnknownMessage { .. } => exit::NOT_FOUND,
        AskError::Rejected(_) => exit::REJECTED,
        AskError::InvalidMetadata(_) => exit::BAD_INPUT,
        AskError::PermissionDenied { .. } => exit::DENIED,
        AskError::RateLimited { .. } => exit::RATE_LIMITED,
        AskError::Stopped { .. } | AskError::Panicked { .. } => exit::FAILED,
        _ => exit::UNAVAILABLE,
    }
}

/// Parses `k=v` metadata arguments.
pub(crate) fn metadata(pairs: &[String]) -> Result<CallOptions, String> {
    let mut options = CallOptions::default();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!(
                "--metadata {pair:?}: expected key=value, e.g. --metadata tenant=acme"
            ));
        };
        if k.is_empty() {
            return Err(format!("--metadata {pair:?}: the key is empty"));
        }
        options = options.metadata(k, v);
    }
    options
        .metadata
        .check()
        .map_err(|e| format!("--metadata: {e}"))?;
    Ok(options)
}

pub(crate) fn run(args: CallArgs) -> anyhow::Result<ExitCode> {
    let bad = |msg: String| {
        eprintln!("error: {msg}");
        Ok(ExitCode::from(exit::BAD_INPUT))
    };
    let service = match ServiceName::parse(&args.service, &args.namespace) {
        Ok(s) => s,
        Err(e) => return bad(e.to_string()),
    };
    let payload: serde_json::Value = match serde_json::from_str(&args.json) {
        Ok(v) => v,
        Err(e) => return bad(format!("the payload is not JSON: {e}")),
    };
    let mut options = match metadata(&args.metadata) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    options.timeout = Some(args.timeout);
    if let Some(key) = &args.hash_key {
        options = options.hash_key(key);
    }
    let client = args.client.load()?;
    let mut mesh_options = MeshOptions::default().namespace(&args.namespace);
    mesh_options.master = args.client.master;
    actix::System::new().block_on(async move {
        let started = Instant::now();
        let mesh = match client.connect(mesh_options, args.timeout).await {
            Ok(mesh) => mesh,
            Err(e @ ConnectError::NoRegistry { .. }) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(exit::SETUP));
            }
            Err(e) => return Err(e.into()),
        };
        let node = mesh.node().clone();
        let target = mesh.service_named(service);
        if args.repeat > 1 {
            let code = repeat(&target, &args, &payload, &options).await;
            node.shutdown();
            return code;
        }
        options.timeout = Some(args.timeout.saturating_sub(started.elapsed()));
        let reply = target.ask_json(&args.message, &payload, &options).await;
        node.shutdown();
        match reply {
            Ok(v) => {
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(ExitCode::from(exit::OK))
            }
            Err(e) => {
                let delivered = match e.outcome() {
                    CallOutcome::NotDelivered => "not delivered",
                    CallOutcome::Delivered => "delivered",
                    CallOutcome::Unknown => "delivery unknown",
                };
                eprintln!("error: {e} ({delivered})");
                Ok(ExitCode::from(exit_code(&e)))
            }
        }
    })
}

/// `--repeat`: the call `args.repeat` times in turn, each with the whole timeout.
async fn repeat(
    target: &actormesh::mesh::ServiceRef,
    args: &CallArgs,
    payload: &serde_json::Value,
    options: &CallOptions,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (mut failed, mut last) = (0u32, exit::OK);
    for _ in 0..args.repeat {
        match target.ask_json(&args.message, payload, options).await {
            Ok(v) => println!("{}", serde_json::to_string(&v)?),
            Err(e) => {
                failed += 1;
                last = exit_code(&e);
                eprintln!("error: {e}");
            }
        }
    }
    eprintln!(
        "{} of {} calls answered in {:.2?}",
        args.repeat - failed,
        args.repeat,
        started.elapsed()
    );
    Ok(ExitCode::from(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn metadata_pairs_parse_and_bad_ones_name_what_is_wrong() {
        let o = metadata(&["tenant=acme".into(), "empty=".into()]).unwrap();
        assert_eq!(o.metadata.get("tenant"), Some("acme"));
        assert_eq!(o.metadata.get("empty"), Some(""));
        assert!(metadata(&["novalue".into()])
            .unwrap_err()
            .contains("expected key=value"));
        assert!(metadata(&["=v".into()])
            .unwrap_err()
            .contains("key is empty"));
        let huge = format!("k={}", "x".repeat(2000));
        assert!(metadata(&[huge]).unwrap_err().contains("--metadata"));
    }

    #[test]
    fn every_failure_has_its_exit_code() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let cases = [
            (
                AskError::Timeout {
                    after: Duration::from_secs(1),
                },
                exit::TIMEOUT,
            ),
            (
                AskError::NoEndpoints {
                    service: "default/x".into(),
                },
                exit::UNAVAILABLE,
            ),
            (
                AskError::NoSuchActor {
                    actor: "a".into(),
                    node: addr,
                },
                exit::NOT_FOUND,
            ),
            (
                AskError::Rejected("missing field `x`".into()),
                exit::REJECTED,
            ),
            (AskError::Panicked { actor: "a".into() }, exit::FAILED),
            (
                AskError::PermissionDenied {
                    policy: "p".into(),
                    rule: "r".into(),
                },
                exit::DENIED,
            ),
            (
                AskError::RateLimited {
                    service: "shop/ratings".into(),
                },
                exit::RATE_LIMITED,
            ),
            (
                AskError::CircuitOpen {
                    service: "shop/ratings".into(),
                    limit: "max pending".into(),
                },
                exit::UNAVAILABLE,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(exit_code(&e), code, "{e:?}");
        }
    }
}
