//! `actormesh gateway`: an HTTP ingress node. It joins as an agent that offers nothing
//! (so no work is placed on it), fetches its Gateway and HttpRoutes from the master it
//! follows (`FetchGateway/v1`, again every second: a change applies within that), and
//! serves HTTP/1.1 and HTTP/2 (cleartext with prior knowledge, or over TLS with ALPN when
//! given a certificate: [`Tls`]): each request takes the first
//! route that matches ([`actormesh::mesh::gateway::Router`]) and becomes a call by name
//! with a JSON payload; the reply's JSON is the body, and an error its status.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::{info, warn};

use actormesh::agent::AgentHandle;
use actormesh::mesh::gateway::{
    forwarded, parse_traceparent, payload, FetchGateway, GatewayConfig, GatewaySpec,
    Request as Req, Router,
};
use actormesh::mesh::{CallOptions, Mesh, ServiceName};

/// How often the gateway fetches its configuration again.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long a call may take before the gateway answers 504.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The configuration in force.
struct Live {
    config: GatewayConfig,
    router: Router,
}

/// The certificate a gateway serves TLS with: PEM files, the chain (leaf first) and its
/// private key.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The certificate chain.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

impl Tls {
    /// The TLS server configuration: TLS 1.2 and 1.3 with ring, ALPN `h2` and
    /// `http/1.1`; a file that is missing or holds no certificate or key says so.
    pub fn server_config(&self) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", self.cert.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", self.cert.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "--tls-cert {}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
            self.cert.display()
        );
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            anyhow::anyhow!(
                "--tls-key {}: {e} (expected a PEM private key: PKCS#8, PKCS#1 or SEC1)",
                self.key.display()
            )
        })?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| anyhow::anyhow!("--tls-cert and --tls-key do not go together: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A gateway's HTTP server, running.
#[derive(Debug)]
pub struct Served {
    /// Where it serves.
    pub addr: SocketAddr,
    configured: tokio::sync::watch::Receiver<bool>,
}

impl Served {
    /// Waits, at most `limit`, until it has fetched its configuration; says whether it did.
    pub async fn configured(&self, limit: Duration) -> bool {
        let mut rx = self.configured.clone();
        tokio::time::timeout(limit, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// What the server shares.
#[derive(Clone)]
struct Shared {
    live: Arc<RwLock<Option<Arc<Live>>>>,
    mesh: Mesh,
    namespace: String,
    /// The gateway's workload, `namespace/name`: what its calls assert.
    workload: Arc<str>,
}

/// The gateway's own actor, the endpoint of its workload's service: it tells the routes
/// in force (`actormesh.gateway.Routes/v1`).
struct RoutesActor {
    live: Arc<RwLock<Option<Arc<Live>>>>,
}

impl actix::Actor for RoutesActor {
    type Context = actix::Context<Self>;
}

/// Asks a gateway node for its configuration in force (`None` before the first fetch).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, actormesh::RemoteMessage)]
#[remote(name = "actormesh.gateway.Routes/v1", reply = Option<GatewayConfig>)]
pub struct Routes {}

#[actormesh::handler]
impl actix::Handler<Routes> for RoutesActor {
    type Result = actix::MessageResult<Routes>;
    fn handle(&mut self, _: Routes, _: &mut actix::Context<Self>) -> Self::Result {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner()).clone();
        actix::MessageResult(live.map(|l| l.config.clone()))
    }
}

/// The actor name of [`RoutesActor`] on a gateway node.
pub const GATEWAY_ACTOR: &str = "gateway";

/// Serves Gateway `namespace/name` on `listener`, from the agent node `agent`. Returns
/// once the server runs; it fetches its configuration in the background (503 until then).
pub fn serve(
    agent: &AgentHandle,
    namespace: String,
    name: String,
    listener: tokio::net::TcpListener,
    tls: Option<&Tls>,
) -> anyhow::Result<Served> {
    let tls = tls.map(Tls::server_config).transpose()?;
    let live = Arc::new(RwLock::new(None));
    agent
        .node
        .spawn(GATEWAY_ACTOR, RoutesActor { live: live.clone() })?;
    let (configured_tx, configured) = tokio::sync::watch::channel(false);
    let shared = Shared {
        live,
        mesh: agent.mesh().clone(),
        namespace: namespace.clone(),
        workload: Arc::from(format!("{namespace}/{name}")),
    };
    // The gateway's node serves its workload's service, so the nodes it calls believe
    // the workload its calls assert, and authorization policies can name it
    // (`<td>/ns/<namespace>/sa/<name>`).
    tokio::spawn(serve_workload(
        agent.mesh().clone(),
        namespace.clone(),
        name.clone(),
    ));
    tokio::spawn(keep_config(
        agent.node.clone(),
        agent.master.clone(),
        namespace,
        name,
        shared.live.clone(),
        configured_tx,
    ));
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let shared = shared.clone();
        async move { answer(&shared, req).await }
    });
    let addr = listener.local_addr()?;
    match tls {
        None => {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app.into_make_service()).await {
                    tracing::error!(error = %e, "the gateway's HTTP server stopped");
                }
            });
        }
        Some(config) => {
            tokio::spawn(serve_tls(
                listener,
                tokio_rustls::TlsAcceptor::from(config),
                app,
            ));
        }
    }
    Ok(Served { addr, configured })
}

/// Registers the gateway's actor as the endpoint of service `namespace/name`, trying
/// again (every second) until the master takes it.
async fn serve_workload(mesh: Mesh, namespace: String, name: String) {
    let service = ServiceName { namespace, name };
    let labels = std::collections::BTreeMap::from([("role".to_string(), "gateway".to_string())]);
    let mut said: Option<String> = None;
    loop {
        match mesh
            .register_service(service.clone(), GATEWAY_ACTOR, "v1", labels.clone(), 1)
            .await
        {
            Ok(()) => {
                info!(%service, "the gateway serves its workload's service");
                return;
            }
            Err(e) => {
                let why = e.to_string();
                if said.as_deref() != Some(why.as_str()) {
                    warn!(%service, error = %why, "cannot register the gateway's service yet");
                    said = Some(why);
                }
            }
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// Serves `app` over TLS: HTTP/2 or HTTP/1.1 as ALPN chose, one task a connection.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors, say: the next accept may work.
                warn!(error = %e, "the gateway cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(error = %e, "a TLS handshake failed"),
                    Err(_) => return tracing::debug!("a TLS handshake took over 10 s"),
                };
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder.serve_connection(io, service).await {
                tracing::debug!(error = %e, "a gateway connection ended");
            }
        });
    }
}

/// Fetches the configuration every [`REFRESH`], keeping the last one while the master
/// cannot answer.
async fn keep_config(
    node: actormesh::Node,
    master: actormesh::masters::FollowedMaster,
    namespace: String,
    name: String,
    live: Arc<RwLock<Option<Arc<Live>>>>,
    configured: tokio::sync::watch::Sender<bool>,
) {
    let mut said: Option<String> = None;
    loop {
        let ask = FetchGateway {
            namespace: namespace.clone(),
            name: name.clone(),
        };
        match master
            .actor_ref(&node)
            .ask_timeout(ask, Duration::from_secs(5))
            .await
        {
            Ok(Ok(config)) => {
                let changed = live
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .is_none_or(|l| l.config != config);
                if changed {
                    let router =
                        Router::new(config.routes.iter().map(|(_, r)| (namespace.as_str(), r)));
                    info!(gateway = %format!("{namespace}/{name}"), routes = config.routes.len(), "gateway configuration in force");
                    *live.write().unwrap_or_else(|p| p.into_inner()) =
                        Some(Arc::new(Live { config, router }));
                    configured.send_replace(true);
                }
                said = None;
            }
            failed => {
                let why = match failed {
                    Ok(Err(refusal)) => refusal.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => unreachable!(),
                };
                if said.as_deref() != Some(why.as_str()) {
                    warn!(error = %why, "cannot fetch the gateway's configuration; keeping the last one");
                    said = Some(why);
                }
            }
        }
        tokio::time::sleep(REFRESH).await;
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// What kind of JSON value `v` is, for an error.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The request's host, without its port: the URI's authority (HTTP/2) or `Host`.
fn host_of(req: &Request<Body>) -> String {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    strip_port(&raw).to_ascii_lowercase()
}

/// A host without its port (`[::1]:80` → `::1`).
fn strip_port(raw: &str) -> &str {
    if let Some(rest) = raw.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match raw.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw,
    }
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum()
}

async fn answer(shared: &Shared, req: Request<Body>) -> Response {
    let Some(live) = shared
        .live
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway has not fetched its configuration from the master yet",
        );
    };
    let spec: &GatewaySpec = &live.config.spec;
    let size = header_bytes(req.headers());
    if size > spec.max_header_bytes {
        return error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request's headers hold {size} bytes, over the gateway's limit of {}",
                spec.max_header_bytes
            ),
        );
    }
    let host = host_of(&req);
    if !spec.serves_host(&host) {
        return error(
            StatusCode::NOT_FOUND,
            format!("this gateway does not serve the host {host:?}"),
        );
    }
    let (parts, body) = req.into_parts();
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    let matched = match live.router.route(&Req {
        host: &host,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        headers: &headers,
    }) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::NOT_FOUND, e.to_string()),
    };
    let body = match axum::body::to_bytes(body, spec.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over the gateway's limit of {} bytes",
                    spec.max_body_bytes
                ),
            )
        }
    };
    let value = match payload(&matched.params, parts.uri.query(), &body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut options = CallOptions::default().timeout(CALL_TIMEOUT);
    for (k, v) in forwarded(spec, &headers) {
        options = options.propagated(k, v);
    }
    if let Some(t) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
        .and_then(|(_, v)| parse_traceparent(v))
    {
        options = options.trace(t);
    }
    let service = match ServiceName::parse(&matched.service, &shared.namespace) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let target = shared.mesh.service_named(service);
    let message = matched.message;
    let call = async move { target.ask_json(&message, &value, &options).await };
    match actormesh::CallInfo::acting_as(&shared.workload)
        .scope(call)
        .await
    {
        Ok(reply) => match (matched.content_type, reply) {
            (None, reply) => (StatusCode::OK, Json(reply)).into_response(),
            (Some(t), serde_json::Value::String(text)) => {
                (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, t)], text).into_response()
            }
            (Some(t), other) => error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the route serves {t}, so the reply must be a JSON string (its text is the body), but {} answered {}",
                    matched.service,
                    json_kind(&other)
                ),
            ),
        },
        Err(e) => {
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(status, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_loses_its_port() {
        assert_eq!(strip_port("shop.example.com:8080"), "shop.example.com");
        assert_eq!(strip_port("shop.example.com"), "shop.example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("127.0.0.1:80"), "127.0.0.1");
    }
}
