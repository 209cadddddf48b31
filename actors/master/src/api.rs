//! The operator HTTP API (JSON), guarded by a bearer token.
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `/v1/nodes` | every node |
//! | GET | `/v1/nodes/{id}` | one node |
//! | POST | `/v1/nodes/{id}/drain` | mark a node draining |
//! | POST | `/v1/tokens` | `{"ttl_secs": 3600, "role": "agent"}` (or `"client"`; no role: agent) → a join token |
//! | POST | `/v1/deployments` | a Deployment manifest (JSON) → applied |
//! | GET | `/v1/deployments` | every deployment with running/pending counts |
//! | GET | `/v1/deployments/{namespace}/{name}` | one deployment: manifest, standing, tasks |
//! | DELETE | `/v1/deployments/{namespace}/{name}` | remove a deployment, stop its instances |
//! | GET | `/v1/tasks` | every task of a deployment or a framework (owner `framework/<id>`) |
//! | GET | `/v1/frameworks` | every framework, the deployment controller first |
//! | GET | `/v1/tasks/{id}` | one task, with what its agent says of it (pid, sandbox, limits) |
//! | GET | `/v1/tasks/{id}/logs?stream=stdout\|stderr&bytes=N` | the end of a command task's output |
//! | GET | `/v1/services` | every service: name, balancer, locality, labels, endpoints ready, versions |
//! | GET | `/v1/services/{namespace}/{name}` | one service with its endpoints (as pushed to proxies) |
//! | GET | `/v1/proxy-status` | the registry version, whether pushes are held, each proxy's standing |
//! | GET | `/v1/proxy-config/{node}` | what node `{node}`'s proxy applied (asked of its `$proxy`) |
//! | GET | `/v1/proxy-endpoints/{node}/{namespace}/{name}` | the live state of a service's endpoints as node `{node}`'s proxy sees them: ejection, in flight, latency estimate |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actormesh::protocol::MAX_TASK_LOG_BYTES;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::tokens::TokenRole;
use super::{
    ApplyDeployment, ApplyTraffic, CreateToken, DeleteDeployment, DeleteNode, DeleteTraffic,
    DeploymentRefusal, DescribeDeployment, DescribeTaskOf, DrainNode, ListDeployments, ListNodes,
    ListRevocations, ListTraffic, Master, OperatorError, RevokeClient, TaskLogs, TaskQueryRefusal,
};
use crate::access::{Caller, Scope, FILE_HOLDER};
use crate::core::TrafficKind;
use crate::master::{
    CheckApiToken, CreateApiToken, ListApiTokens, ListAudit, RecordAudit, RevokeApiToken,
};

#[derive(Clone)]
struct Api {
    master: Addr<Master>,
    token: Arc<str>,
    /// The bootstrap addresses a join token is used at: this master's first, then the
    /// other masters' of its store.
    join: JoinAddrs,
}

/// This master's bootstrap address and the masters it knows, for a token's `join`.
#[derive(Clone)]
struct JoinAddrs {
    own: SocketAddr,
    masters: Option<tokio::sync::watch::Receiver<Vec<crate::ha::MasterInfo>>>,
}

impl JoinAddrs {
    fn get(&self) -> Vec<SocketAddr> {
        let masters = self.masters.as_ref().map(|m| m.borrow().clone());
        crate::ha::bootstrap_set(Some(self.own), masters.as_deref().unwrap_or_default())
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// An operator request refused: 400 for a bad request, 404 for something missing, 503 when
/// the master cannot carry it out now (its store failed).
fn refused(e: OperatorError) -> Response {
    let status = match e {
        OperatorError::Invalid(_) => StatusCode::BAD_REQUEST,
        OperatorError::NotFound(_) => StatusCode::NOT_FOUND,
        OperatorError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

/// The bearer token a request presents ("" if none).
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Whether `presented` is the api-token file's token.
fn is_file_token(api: &Api, presented: &str) -> bool {
    crate::tokens::constant_time_eq(presented.as_bytes(), api.token.as_bytes())
}

/// The object a change names, for the audit log: a manifest's kind and name, a token's
/// role or holder, a revoked client.
fn object_named(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str());
    if let (Some(kind), Some(name)) = (s("kind"), s("name")) {
        let ns = s("namespace").unwrap_or("default");
        return Some(format!("{kind} {ns}/{name}"));
    }
    if let Some(holder) = s("holder") {
        return Some(format!(
            "API token for {holder} ({})",
            s("scope").unwrap_or("?")
        ));
    }
    if let Some(client) = s("client") {
        return Some(format!("client {client}"));
    }
    s("role").map(|r| format!("join token of role {r}"))
}

/// The master actor did not take the request (it stopped).
fn master_down(e: actix::MailboxError) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the master is not running: {e}"),
    )
}

/// Every route needs a token whose scope covers it: checked here, before any handler
/// runs, so that no route can be added without it. Every request that would change
/// something (not a `GET`) is recorded in the audit log with its holder and outcome,
/// refused ones too.
async fn require_token(
    State(api): State<Api>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = bearer(request.headers()).to_string();
    let caller = if is_file_token(&api, &presented) {
        Caller {
            holder: FILE_HOLDER.to_string(),
            scope: Scope::Admin,
        }
    } else if presented.is_empty() {
        return unauthorized("none was sent".into());
    } else {
        match api.master.send(CheckApiToken(presented)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return unauthorized(e.to_string()),
            Err(e) => return master_down(e),
        }
    };
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let need = crate::access::needed(&method, &path);
    let changes = method != "GET";
    let (parts, body) = request.into_parts();
    // A change names its object in the audit log: its body is read first (bounded).
    let bytes = if changes {
        match axum::body::to_bytes(body, 4 << 20).await {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("cannot read the request body (at most 4 MiB): {e}"),
                )
            }
        }
    } else {
        axum::body::Bytes::new()
    };
    let object = changes.then(|| object_named(&bytes)).flatten();
    let audit = |status: StatusCode, caller: Caller| {
        if changes {
            api.master.do_send(RecordAudit {
                caller,
                what: format!("{method} {path}"),
                object: object.clone(),
                status: status.as_u16(),
            });
        }
    };
    if caller.scope < need {
        let response = error(
            StatusCode::FORBIDDEN,
            format!(
                "the API token of {} has scope {}; {method} {path} needs {} (see `actormesh token create --scope`)",
                caller.holder,
                caller.scope.as_str(),
                need.as_str()
            ),
        );
        audit(response.status(), caller);
        return response;
    }
    let mut request = axum::extract::Request::from_parts(
        parts,
        if changes {
            axum::body::Body::from(bytes.clone())
        } else {
            axum::body::Body::empty()
        },
    );
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    audit(response.status(), caller);
    response
}

fn unauthorized(why: String) -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        format!("missing or wrong API token ({why}): send 'Authorization: Bearer <token>' with the token from the master's api-token file, or one from `actormesh token create --scope <s> --holder <name>`"),
    )
}

async fn nodes(State(api): State<Api>) -> Response {
    match api.master.send(ListNodes).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => master_down(e),
    }
}

async fn node(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.master.send(ListNodes).await {
        Ok(list) => match list.into_iter().find(|n| n.id == id) {
            Some(n) => Json(n).into_response(),
            None => error(StatusCode::NOT_FOUND, format!("no node named {id:?}")),
        },
        Err(e) => master_down(e),
    }
}

async fn delete_node(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.master.send(DeleteNode(id)).await {
        Ok(Ok(n)) => Json(n).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => master_down(e),
    }
}

async fn drain(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.master.send(DrainNode(id)).await {
        Ok(Ok(n)) => Json(n).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => master_down(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    ttl_secs: Option<u64>,
    role: Option<String>,
}

async fn create_token(
    State(api): State<Api>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: axum::body::Bytes,
) -> Response {
    let req: TokenRequest = if body.is_empty() {
        TokenRequest {
            ttl_secs: None,
            role: None,
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                    "bad token request: {e} (expected {{\"ttl_secs\": 3600, \"role\": \"agent\"}})"
                ),
                )
            }
        }
    };
    // A request without a role asks for an agent token, as before roles existed.
    let role = match req.role.as_deref().map(str::parse::<TokenRole>) {
        None => TokenRole::Agent,
        Some(Ok(role)) => role,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let ttl = Duration::from_secs(req.ttl_secs.unwrap_or(24 * 3600));
    if ttl.is_zero() {
        return error(StatusCode::BAD_REQUEST, "ttl_secs must be more than 0");
    }
    // A node's membership is the admin's to grant; a client certificate the operator's.
    if role == TokenRole::Agent && caller.scope < Scope::Admin {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "the API token of {} has scope {}; a join token of role agent needs admin (role client needs operator)",
                caller.holder,
                caller.scope.as_str()
            ),
        );
    }
    match api.master.send(CreateToken { ttl, role }).await {
        Ok(Ok(t)) => {
            // Where to use it, for `token create --print-join-command`.
            let mut body = serde_json::to_value(t).unwrap_or_default();
            body["join"] = json!(api.join.get());
            Json(body).into_response()
        }
        Ok(Err(e)) => refused(e),
        Err(e) => master_down(e),
    }
}

/// An API token request: `{"holder": "alice", "scope": "viewer", "ttl_secs": 86400}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiTokenRequest {
    holder: String,
    scope: String,
    ttl_secs: Option<u64>,
}

async fn create_api_token(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    let req: ApiTokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad API token request: {e} (expected {{\"holder\": \"alice\", \"scope\": \"viewer\", \"ttl_secs\": 86400}})"),
            )
        }
    };
    let scope = match req.scope.parse::<Scope>() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let ttl = req.ttl_secs.map(Duration::from_secs);
    match api
        .master
        .send(CreateApiToken {
            holder: req.holder,
            scope,
            ttl,
        })
        .await
    {
        Ok(Ok(t)) => Json(t).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => master_down(e),
    }
}

async fn api_tokens(State(api): State<Api>) -> Response {
    match api.master.send(ListApiTokens).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => master_down(e),
    }
}

async fn revoke_api_token(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.master.send(RevokeApiToken(id)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => master_down(e),
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(api): State<Api>,
    axum::extract::Query(q): axum::extract::Query<AuditQuery>,
) -> Response {
    match api.master.send(ListAudit(q.limit.unwrap_or(100))).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => master_down(e),
    }
}

/// A revocation request: `{"client": "<name or SPIFFE id>"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationRequest {
    client: String,
}

async fn revoke(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    let req: RevocationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad revocation request: {e} (expected {{\"client\": \"<name>\"}})"),
            )
        }
    };
    match api.master.send(RevokeClient(req.client)).await {
        Ok(Ok(r)) => Json(r).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => master_down(e),
    }
}

/// A CA rotation step: `{"action": "begin" | "finish" | "abort", "force": false}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotationRequest {
    action: String,
    #[serde(default)]
    force: bool,
}

async fn rotate_ca(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    let expected = r#"(expected {"action": "begin" | "finish" | "abort", "force": false})"#;
    let req: RotationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad rotation request: {e} {expected}"),
            )
        }
    };
    let action = match (req.action.as_str(), req.force) {
        ("begin", false) => crate::RotationAction::Begin,
        ("finish", force) => crate::RotationAction::Finish { force },
        ("abort", false) => crate::RotationAction::Abort,
        ("begin" | "abort", true) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("force applies to finish only, not to {}", req.action),
            )
        }
        (other, _) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown rotation action {other:?} {expected}"),
            )
        }
    };
    match api.master.send(crate::RotateCa(action)).await {
        Ok(Ok(status)) => Json(status).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => master_down(e),
    }
}

async fn ca_status(State(api): State<Api>) -> Response {
    match api.master.send(crate::CaStatus).await {
        Ok(status) => Json(status).into_response(),
        Err(e) => master_down(e),
    }
}

async fn revocations(State(api): State<Api>) -> Response {
    match api.master.send(ListRevocations).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => master_down(e),
    }
}

async fn apply(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the manifest is not UTF-8 (expected a JSON Deployment manifest)",
        );
    };
    match api.master.send(ApplyDeployment(text)).await {
        Ok(Ok(key)) => Json(json!({ "applied": key })).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => master_down(e),
    }
}

async fn apply_traffic(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the manifest is not UTF-8 (expected a JSON Route, DestinationPolicy, AuthorizationPolicy, Gateway or HttpRoute manifest)",
        );
    };
    match api.master.send(ApplyTraffic(text)).await {
        Ok(Ok(applied)) => Json(applied).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => master_down(e),
    }
}

async fn list_traffic(State(api): State<Api>) -> Response {
    match api.master.send(ListTraffic).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => master_down(e),
    }
}

async fn delete_traffic(api: Api, kind: TrafficKind, namespace: String, name: String) -> Response {
    let key = format!("{namespace}/{name}");
    match api.master.send(DeleteTraffic(kind, namespace, name)).await {
        Ok(Ok(())) => Json(json!({ "deleted": key })).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => master_down(e),
    }
}

async fn delete_route(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    delete_traffic(api, TrafficKind::Route, namespace, name).await
}

async fn delete_policy(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    delete_traffic(api, TrafficKind::DestinationPolicy, namespace, name).await
}

async fn delete_authz(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    delete_traffic(api, TrafficKind::AuthorizationPolicy, namespace, name).await
}

async fn delete_gateway(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    delete_traffic(api, TrafficKind::Gateway, namespace, name).await
}

async fn delete_http_route(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    delete_traffic(api, TrafficKind::HttpRoute, namespace, name).await
}

async fn deployments(State(api): State<Api>) -> Response {
    match api.master.send(ListDeployments).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => master_down(e),
    }
}

async fn delete_deployment(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let key = format!("{namespace}/{name}");
    match api.master.send(DeleteDeployment(key.clone())).await {
        Ok(Ok(())) => Json(json!({ "deleted": key })).into_response(),
        Ok(Err(e @ DeploymentRefusal::NotFound(_))) => error(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => master_down(e),
    }
}

async fn tasks(State(api): State<Api>) -> Response {
    match api.master.send(super::ListAllTasks).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => master_down(e),
    }
}

async fn frameworks(State(api): State<Api>) -> Response {
    match api.master.send(super::scheduler::ListFrameworks).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => master_down(e),
    }
}

async fn describe_deployment(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match api
        .master
        .send(DescribeDeployment(format!("{namespace}/{name}")))
        .await
    {
        Ok(Ok(d)) => Json(d).into_response(),
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => master_down(e),
    }
}

fn task_refusal(e: TaskQueryRefusal) -> Response {
    match e {
        TaskQueryRefusal::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        TaskQueryRefusal::Unavailable(_) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

async fn describe_task(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.master.send(DescribeTaskOf(id)).await {
        Ok(Ok(d)) => Json(d).into_response(),
        Ok(Err(e)) => task_refusal(e),
        Err(e) => master_down(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    stream: Option<String>,
    bytes: Option<u64>,
}

async fn task_logs(
    State(api): State<Api>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(q) => q.0,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad log query: {e} (expected ?stream=stdout|stderr&bytes=N)"),
            )
        }
    };
    let stream = match q.stream.as_deref() {
        None | Some("stdout") => actormesh::protocol::LogStream::Stdout,
        Some("stderr") => actormesh::protocol::LogStream::Stderr,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown stream {other:?}: expected stdout or stderr"),
            )
        }
    };
    let max_bytes = q.bytes.unwrap_or(64 * 1024);
    if max_bytes == 0 || max_bytes > MAX_TASK_LOG_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            format!("bytes={max_bytes} is out of range: expected 1 to {MAX_TASK_LOG_BYTES}"),
        );
    }
    match api
        .master
        .send(TaskLogs {
            task_id: id,
            stream,
            max_bytes,
        })
        .await
    {
        Ok(Ok(log)) => Json(log).into_response(),
        Ok(Err(e)) => task_refusal(e),
        Err(e) => master_down(e),
    }
}

async fn services(State(api): State<Api>) -> Response {
    match api.master.send(super::ListServices).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => master_down(e),
    }
}

async fn service_endpoints(
    State(api): State<Api>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let given = format!("{namespace}/{name}");
    let name = match actormesh::mesh::ServiceName::parse(&given, "default") {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match api.master.send(super::ServiceEndpoints(name)).await {
        Ok(Ok(s)) => Json(s).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => master_down(e),
    }
}

async fn proxy_status(State(api): State<Api>) -> Response {
    match api.master.send(super::ListProxyStatus).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => master_down(e),
    }
}

async fn proxy_config(State(api): State<Api>, Path(node): Path<String>) -> Response {
    match api.master.send(super::ProxyConfigOf(node)).await {
        Ok(Ok(c)) => Json(c).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => master_down(e),
    }
}

async fn proxy_endpoints(
    State(api): State<Api>,
    Path((node, namespace, name)): Path<(String, String, String)>,
) -> Response {
    let given = format!("{namespace}/{name}");
    let name = match actormesh::mesh::ServiceName::parse(&given, "default") {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match api.master.send(super::ProxyEndpointsOf(node, name)).await {
        Ok(Ok(c)) => Json(c).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => master_down(e),
    }
}

/// Serves the API on `listener` (bound before the master's actors start, so that a taken
/// port fails the start cleanly); returns its address.
pub fn serve(
    listener: tokio::net::TcpListener,
    master: Addr<Master>,
    token: String,
    bootstrap: SocketAddr,
    masters: Option<tokio::sync::watch::Receiver<Vec<crate::ha::MasterInfo>>>,
) -> std::io::Result<SocketAddr> {
    let api = Api {
        master,
        token: token.into(),
        join: JoinAddrs {
            own: bootstrap,
            masters: masters.clone(),
        },
    };
    let app = Router::new()
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{id}", get(node).delete(delete_node))
        .route("/v1/nodes/{id}/drain", post(drain))
        .route("/v1/tokens", post(create_token))
        .route("/v1/revocations", get(revocations).post(revoke))
        .route("/v1/ca", get(ca_status))
        .route("/v1/ca/rotation", post(rotate_ca))
        .route("/v1/api-tokens", get(api_tokens).post(create_api_token))
        .route(
            "/v1/api-tokens/{id}",
            axum::routing::delete(revoke_api_token),
        )
        .route("/v1/audit", get(audit))
        .route("/v1/backup", get(take_backup))
        .route("/v1/deployments", get(deployments).post(apply))
        .route(
            "/v1/deployments/{namespace}/{name}",
            get(describe_deployment).delete(delete_deployment),
        )
        .route("/v1/traffic", get(list_traffic).post(apply_traffic))
        .route(
            "/v1/routes/{namespace}/{name}",
            axum::routing::delete(delete_route),
        )
        .route(
            "/v1/destination-policies/{namespace}/{name}",
            axum::routing::delete(delete_policy),
        )
        .route(
            "/v1/authorization-policies/{namespace}/{name}",
            axum::routing::delete(delete_authz),
        )
        .route(
            "/v1/gateways/{namespace}/{name}",
            axum::routing::delete(delete_gateway),
        )
        .route(
            "/v1/http-routes/{namespace}/{name}",
            axum::routing::delete(delete_http_route),
        )
        .route("/v1/tasks", get(tasks))
        .route("/v1/frameworks", get(frameworks))
        .route("/v1/tasks/{id}", get(describe_task))
        .route("/v1/tasks/{id}/logs", get(task_logs))
        .route("/v1/services", get(services))
        .route("/v1/services/{namespace}/{name}", get(service_endpoints))
        .route("/v1/proxy-status", get(proxy_status))
        .route("/v1/proxy-config/{node}", get(proxy_config))
        .route(
            "/v1/proxy-endpoints/{node}/{namespace}/{name}",
            get(proxy_endpoints),
        )
        // Inside the token check: only a caller with a token learns the masters.
        .route_layer(axum::middleware::map_response_with_state(
            masters,
            name_the_masters,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            require_token,
        ))
        .with_state(api);
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "API server stopped");
        }
    });
    Ok(bound)
}

/// Names every master's API in [`crate::ha::MASTERS_HEADER`] (with several masters).
async fn name_the_masters(
    State(masters): State<Option<tokio::sync::watch::Receiver<Vec<crate::ha::MasterInfo>>>>,
    mut resp: Response,
) -> Response {
    // None named (ZooKeeper unread for a moment): no header, rather than an empty one.
    if let Some(value) = masters
        .map(|m| crate::ha::masters_header(&m.borrow()))
        .filter(|v| !v.is_empty())
    {
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            resp.headers_mut().insert(crate::ha::MASTERS_HEADER, v);
        }
    }
    resp
}

/// `GET /v1/backup` (admin): the whole state, CA included, as a backup file.
async fn take_backup(State(api): State<Api>) -> Response {
    match api.master.send(crate::master::TakeBackup).await {
        Ok(Ok(bytes)) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": format!("cannot read the state to back it up: {e}") })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": format!("the master is not running: {e}") })),
        )
            .into_response(),
    }
}

/// Serves the API of a standby master (`actormesh master --zk` while another leads):
/// every request is redirected (307, which keeps the method and body) to the same path
/// at the leader's API, or answered 503 while no master leads. Returns the address, and
/// the server, to stop once this master leads (its own API then binds the address).
pub fn serve_standby(
    listener: tokio::net::TcpListener,
    name: String,
    masters: tokio::sync::watch::Receiver<Vec<crate::ha::MasterInfo>>,
) -> std::io::Result<(SocketAddr, StandbyApi)> {
    let app = Router::new().fallback(move |uri: axum::http::Uri| {
        let now = masters.borrow().first().cloned();
        let name = name.clone();
        async move { standby_answer(&name, now.as_ref(), &uri) }
    });
    let bound = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(e) = served.await {
            tracing::error!(error = %e, "the standby API server stopped");
        }
    });
    Ok((bound, StandbyApi { stop, task }))
}

/// A standby's API server.
#[derive(Debug)]
pub struct StandbyApi {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl StandbyApi {
    /// Stops it and waits until its listener is closed (a second at most for the requests
    /// in flight), so that the address is free.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(1), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// A standby's answer to a request for `uri`: where the leader is, or that none leads.
fn standby_answer(
    name: &str,
    leader: Option<&crate::ha::MasterInfo>,
    uri: &axum::http::Uri,
) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    match leader {
        Some(l) if l.name != name => {
            let to = format!("http://{}{path}", l.api);
            let body = json!({
                "error": format!("master {name} is a standby; master {} leads, at http://{}", l.name, l.api),
                "leader": l,
            });
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, to)],
                Json(body),
            )
                .into_response()
        }
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1".to_string())],
            Json(json!({
                "error": format!("master {name} is a standby and no master leads now (an election is under way); try again in a moment"),
            })),
        )
            .into_response(),
    }
}
