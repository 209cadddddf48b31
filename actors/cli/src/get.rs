//! `get nodes|deployments|tasks|frameworks|services|endpoints|traffic|proxy-status|proxy-config`:
//! a list from the API, as a table or JSON.

use serde::de::DeserializeOwned;

use actormesh_master::deployments::{DeploymentSummary, TaskEntry};
use actormesh_master::membership::AgentRecord;
use actormesh_master::scheduler::FrameworkSummary;
use actormesh_master::services::{ProxyStatusReport, ServiceSummary};

use actormesh::mesh::protocol::ProxyConfig;
use actormesh::mesh::{Service, ServiceName, DEFAULT_NAMESPACE};

use actormesh_master::manifest::{AuthzManifest, PolicyManifest, RouteManifest};

use crate::args::{ApiArgs, GetWhat};

/// What `GET /v1/traffic` answers.
#[derive(serde::Deserialize)]
struct TrafficList {
    routes: Vec<RouteManifest>,
    destination_policies: Vec<PolicyManifest>,
    #[serde(default)]
    authorization_policies: Vec<AuthzManifest>,
}
use crate::output::{self, JsonLayout};
use crate::tables;

pub(crate) fn run(what: GetWhat) -> anyhow::Result<()> {
    match what {
        GetWhat::Nodes { api } => list(&api, "/v1/nodes", |n: Vec<AgentRecord>| tables::nodes(&n)),
        GetWhat::Deployments { api } => {
            list(&api, "/v1/deployments", |d: Vec<DeploymentSummary>| {
                tables::deployments(&d)
            })
        }
        GetWhat::Tasks { api } => list(&api, "/v1/tasks", |t: Vec<TaskEntry>| tables::tasks(&t)),
        GetWhat::Frameworks { api } => list(&api, "/v1/frameworks", |f: Vec<FrameworkSummary>| {
            tables::frameworks(&f)
        }),
        GetWhat::Services { api } => list(&api, "/v1/services", |s: Vec<ServiceSummary>| {
            tables::services(&s)
        }),
        GetWhat::Endpoints { service, api } => {
            let name = ServiceName::parse(&service, DEFAULT_NAMESPACE)?;
            let path = format!("/v1/services/{}/{}", name.namespace, name.name);
            list(&api, &path, |s: Service| tables::endpoints(&s.endpoints))
        }
        GetWhat::Traffic { api } => list(&api, "/v1/traffic", |t: TrafficList| {
            tables::traffic(
                &t.routes,
                &t.destination_policies,
                &t.authorization_policies,
            )
        }),
        GetWhat::ApiTokens { api } => list(
            &api,
            "/v1/api-tokens",
            |t: Vec<actormesh_master::access::ApiTokenView>| tables::api_tokens(&t),
        ),
        GetWhat::Audit { limit, api } => list(
            &api,
            &format!("/v1/audit?limit={limit}"),
            |a: Vec<actormesh_master::access::AuditEntry>| tables::audit(&a),
        ),
        GetWhat::ProxyStatus { api } => list(&api, "/v1/proxy-status", |r: ProxyStatusReport| {
            tables::proxy_status(&r)
        }),
        GetWhat::ProxyConfig { node, api } => {
            // An agent id, or a node's SPIFFE id (`spiffe://<td>/node/<id>`).
            let id = match node.strip_prefix("spiffe://") {
                Some(rest) => rest.split_once("/node/").map_or("", |(_, id)| id),
                None => node.as_str(),
            };
            if id.is_empty() || id.contains(['/', '?', '#', '%', ' ']) {
                anyhow::bail!(
                    "invalid node {node:?}: expected an agent id from `actormesh get nodes`, `master`, or spiffe://<trust domain>/node/<id>"
                );
            }
            let path = format!("/v1/proxy-config/{id}");
            list(&api, &path, |c: ProxyConfig| tables::proxy_config(&c))
        }
    }
}

/// Prints the list at `path` as `table` lays out its rows, or as JSON.
fn list<T: DeserializeOwned>(
    api: &ApiArgs,
    path: &str,
    table: impl FnOnce(T) -> String,
) -> anyhow::Result<()> {
    let answer = api.client()?.call("GET", path, None)?;
    output::print(api.output, JsonLayout::Pretty, answer, table)
}
