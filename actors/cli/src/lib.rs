//! The `actormesh` binary's library: the operator API client, flag parsers, logging set-up
//! and the demo actor type that `actormesh dev` hosts.
//!
//! The binary itself (`main.rs`) keeps its modules next to this file: `args` (every flag),
//! one module per command group (`serve` for master, agent and dev; `ca`, `token`, `apply`
//! with delete, `get`, `describe`, `drain`, `logs`), `output` (table or `-o json`) and
//! `tables`.
//!
//! [`client_identity`] loads the client certificate that `actormesh dev` writes for the CLI.

pub mod demo;
pub mod gateway;
pub mod ha;

use std::path::{Path, PathBuf};
use std::time::Duration;

use actormesh::client::{ClientCredentials, ClientError};

pub use actormesh_master::manifest::parse_duration;

/// Where `--metrics-listen` says to serve metrics (`None`: off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<std::net::SocketAddr>);

/// Parses a metrics address (for `--metrics-listen`): `HOST:PORT`, a bare `PORT` on
/// loopback, or `off` (no metrics served, no call figures kept).
pub fn parse_metrics_listen(s: &str) -> Result<MetricsListen, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(MetricsListen(None));
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(MetricsListen(Some(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            port,
        )))));
    }
    s.parse().map(|a| MetricsListen(Some(a))).map_err(|_| {
        format!("invalid metrics address {s:?}: expected HOST:PORT (e.g. 127.0.0.1:9464), a port on loopback (e.g. 9464), or off")
    })
}

/// Parses `key=value` (for `--attr`).
pub fn parse_attr(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!(
            "invalid attribute {s:?}: expected key=value, e.g. zone=a"
        )),
    }
}

/// Parses `role=value` (for `--role-weight`, `--role-guarantee`, `--role-limit`, `--reserve`).
pub fn parse_role_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => Err(format!(
            "invalid role setting {s:?}: expected role=value, e.g. analytics=2 or 'analytics=cpus:4;mem:8GiB'"
        )),
    }
}

/// Where `actormesh dev` writes the CLI's client identity, inside its data dir.
pub const DEV_CLIENT_DIR: &str = "client";

/// The client name of the identity `actormesh dev` writes for the CLI
/// (`spiffe://<td>/client/cli`).
pub const DEV_CLIENT_NAME: &str = "cli";

/// The client identity directory of a dev cluster whose data dir is `data_dir`.
pub fn dev_client_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DEV_CLIENT_DIR)
}

/// The client identity `actormesh dev --data-dir <data_dir>` wrote for the CLI: its key,
/// certificate, CA, and the master's mesh address. Start a [`actormesh::Node`] with its
/// credentials to call actors on the dev cluster.
pub fn client_identity(data_dir: &Path) -> Result<ClientCredentials, ClientError> {
    actormesh::client::load(&dev_client_dir(data_dir))
}

/// A client of the master's operator API.
pub struct ApiClient {
    /// The masters' APIs, tried in turn while one cannot be reached.
    bases: Vec<String>,
    token: String,
    http: ureq::Agent,
    /// Where the masters learned from a leader's answers are kept.
    known_file: Option<PathBuf>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("bases", &self.bases)
            .finish_non_exhaustive()
    }
}

/// The API URLs of a comma-separated list, each without a trailing '/'; empty ones
/// skipped.
fn api_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(|b| b.trim().trim_end_matches('/').to_string())
        .filter(|b| !b.is_empty())
        .collect()
}

/// Whether the request surely did not reach the API (so another master's may be tried,
/// even for a POST).
fn not_reached(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Timeout(t) => {
            matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve)
        }
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::AddrNotAvailable
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
        ),
        _ => false,
    }
}

impl ApiClient {
    /// A client for the API at `base` (e.g. `http://127.0.0.1:7080`, or several masters'
    /// comma-separated, tried in turn while one cannot be reached) with bearer `token`.
    pub fn new(base: &str, token: &str) -> Self {
        // Redirects are followed by hand: ureq would drop the token on the way, and a
        // standby master's 307 to the leader is for the same cluster.
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .max_redirects(0)
            .build();
        Self {
            bases: api_list(base),
            token: token.trim().to_string(),
            http: ureq::Agent::new_with_config(config),
            known_file: None,
        }
    }

    /// Also tries the masters' APIs kept in `file` (after those given), and keeps there
    /// the masters a leader's answer names ([`actormesh_master::ha::MASTERS_HEADER`]),
    /// so the CLI finds the leader when the master it was pointed at is gone.
    pub fn with_known_masters(mut self, file: PathBuf) -> Self {
        if let Ok(text) = std::fs::read_to_string(&file) {
            for b in api_list(text.trim()) {
                if !self.bases.contains(&b) {
                    self.bases.push(b);
                }
            }
        }
        self.known_file = Some(file);
        self
    }

    /// Keeps the masters an answer named, if it names others than those kept.
    fn remember(&self, resp: &ureq::http::Response<ureq::Body>) {
        let (Some(file), Some(named)) = (
            &self.known_file,
            resp.headers()
                .get(actormesh_master::ha::MASTERS_HEADER)
                .and_then(|v| v.to_str().ok()),
        ) else {
            return;
        };
        // Those named first (the leader's first), then those kept that it did not name:
        // a master missing from one answer is not forgotten.
        let kept = std::fs::read_to_string(file).unwrap_or_default();
        let mut all = api_list(named);
        for k in api_list(kept.trim()) {
            if !all.contains(&k) {
                all.push(k);
            }
        }
        let all = all.join(",");
        if !all.is_empty() && kept.trim() != all {
            // Best effort: the answer is the caller's either way.
            if let Err(e) = std::fs::write(file, format!("{all}\n")) {
                tracing::warn!(file = %file.display(), error = %e, "cannot keep the masters' addresses");
            }
        }
    }

    /// GET, POST or DELETE `path`; the JSON answer, or an error that says what went wrong.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        self.call_found(method, path, body)?
            .map_err(|not_found| anyhow::anyhow!(not_found))
    }

    /// GET `path`: its JSON answer, or `None` if the master has no such thing (404).
    pub fn get_optional(&self, path: &str) -> anyhow::Result<Option<serde_json::Value>> {
        Ok(self.call_found("GET", path, None)?.ok())
    }

    /// Sends the request, following a standby master's redirects (307) to the leader.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let mut tried = Vec::new();
        for base in &self.bases {
            match self.send_to(base, method, path, body.clone()) {
                Ok(resp) => {
                    self.remember(&resp);
                    return Ok(resp);
                }
                Err(e) if not_reached(&e) => tried.push(format!("{base}: {e}")),
                Err(e) => anyhow::bail!(
                    "cannot reach the master API at {base}{path}: {e} (is `actormesh master` running, and is --api right?)"
                ),
            }
        }
        anyhow::bail!(
            "cannot reach the master API: {} (is `actormesh master` running, and is --api right?)",
            if tried.is_empty() {
                "no --api address given".to_string()
            } else {
                tried.join("; ")
            }
        )
    }

    /// Sends the request to the API at `base`, following a standby master's redirects
    /// (307) to the leader.
    fn send_to(
        &self,
        base: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut url = format!("{base}{path}");
        let auth = format!("Bearer {}", self.token);
        // A standby master redirects (307) to the leader's API: once or twice at most.
        let mut hops = 0;
        let resp = loop {
            let result = match (method, &body) {
                ("GET", _) => self.http.get(&url).header("Authorization", &auth).call(),
                ("DELETE", _) => self.http.delete(&url).header("Authorization", &auth).call(),
                (_, Some(b)) => self
                    .http
                    .post(&url)
                    .header("Authorization", &auth)
                    .send_json(b),
                (_, None) => self
                    .http
                    .post(&url)
                    .header("Authorization", &auth)
                    .send_empty(),
            };
            let resp = result?;
            let to = resp
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .filter(|l| l.starts_with("http://") || l.starts_with("https://"));
            match to {
                Some(to) if resp.status() == 307 && hops < 3 => {
                    hops += 1;
                    url = to.to_string();
                }
                _ => break resp,
            }
        };
        Ok(resp)
    }

    /// GET `path` as bytes (a backup); an error that says what went wrong otherwise.
    pub fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let mut resp = self.send("GET", path, None)?;
        let status = resp.status();
        if !status.is_success() {
            let value: serde_json::Value = resp.body_mut().read_json().unwrap_or_default();
            let msg = value
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("no message");
            anyhow::bail!("the master API answered {status}: {msg}");
        }
        resp.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| anyhow::anyhow!("cannot read the master API's answer: {e}"))
    }

    /// The answer, or (`Err` inside) the master's words for a 404 to a GET.
    fn call_found(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Result<serde_json::Value, String>> {
        let mut resp = self.send(method, path, body)?;
        let status = resp.status();
        let value: serde_json::Value = resp.body_mut().read_json().map_err(|e| {
            anyhow::anyhow!(
                "the master API at {} answered {status} with no JSON: {e}",
                self.bases.join(",")
            )
        })?;
        if status.is_success() {
            Ok(Ok(value))
        } else {
            let msg = value
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("no message");
            let said = format!("the master API answered {status}: {msg}");
            if status == 404 && method == "GET" {
                return Ok(Err(said));
            }
            anyhow::bail!(said)
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    init_logging_with_default("info", LogFormat::Text);
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object a line (timestamp, level, target, fields), never coloured.
    Json,
}

/// The tracing target of the access log.
pub const ACCESS_TARGET: &str = "actormesh::access";

/// Parses a share of calls (for `--access-log`, `--trace-sample`): above 0, at most 1.
pub fn parse_share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!(
            "invalid share {s:?}: expected a number above 0 and at most 1 (1: every call, 0.01: one call in a hundred)"
        )),
    }
}

/// Logs to stderr in `format`, filtered by `RUST_LOG`, or by `default` when it is unset.
/// Colour codes go only to a terminal: files and pipes get plain text. The access log's
/// target is always on (it writes only when a node's `--access-log` is).
pub fn init_logging_with_default(default: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // The access log (off unless --access-log) and the callee's lines on denied and
    // audited calls are written whatever the level, unless RUST_LOG says otherwise of them.
    for target in [
        ACCESS_TARGET,
        actormesh::mesh::inbound::DENIAL_TARGET,
        actormesh::mesh::inbound::AUDIT_TARGET,
    ] {
        let says = std::env::var("RUST_LOG").is_ok_and(|v| v.contains(target));
        if !says {
            if let Ok(d) = format!("{target}=info").parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

#[cfg(test)]
mod metrics_listen_tests {
    use super::parse_metrics_listen;

    #[test]
    fn a_bare_port_is_on_loopback_and_bad_input_names_the_forms() {
        let addr = |s: &str| parse_metrics_listen(s).unwrap().0.map(|a| a.to_string());
        assert_eq!(addr("9464").as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(addr("0.0.0.0:9").as_deref(), Some("0.0.0.0:9"));
        assert_eq!(addr("off"), None);
        let e = parse_metrics_listen("localhost").unwrap_err();
        assert!(
            e.contains("HOST:PORT") && e.contains("\"localhost\""),
            "{e}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("5w")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_attr("zone=a").unwrap(), ("zone".into(), "a".into()));
        assert!(parse_attr("zone").unwrap_err().contains("key=value"));
        assert!(parse_duration("h")
            .unwrap_err()
            .to_string()
            .contains("whole number"));
        assert!(parse_duration("0s")
            .unwrap_err()
            .to_string()
            .contains("longer than zero"));
    }
}
