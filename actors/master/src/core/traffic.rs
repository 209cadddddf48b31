//! Traffic policy: Routes and DestinationPolicies are applied and deleted here, stored in
//! the Config table, and pushed with their services by the registry (every change is a
//! new registry version of the services it touches).

use serde::Serialize;
use tracing::info;

use actormesh::mesh::policy::analyze::{analyze, Finding};
use actormesh::mesh::Service;

use super::{ClusterCore, OperatorError, Step};
use crate::manifest::{parse_object, AuthzManifest, Object, PolicyManifest, RouteManifest};

/// What `apply` of a Route or DestinationPolicy answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficApplied {
    /// `Kind namespace/name`.
    pub applied: String,
    /// What `analyze` finds across the applied objects and the registry with it in place
    /// (warnings: the object is applied all the same).
    pub warnings: Vec<Finding>,
}

/// The kinds `delete` takes besides deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficKind {
    /// `kind: Route`.
    Route,
    /// `kind: DestinationPolicy`.
    DestinationPolicy,
    /// `kind: AuthorizationPolicy`.
    AuthorizationPolicy,
    /// `kind: Gateway`.
    Gateway,
    /// `kind: HttpRoute`.
    HttpRoute,
}

impl ClusterCore {
    /// Applies (creates or replaces) the Route or DestinationPolicy in `manifest_json`. The
    /// reply waits until it is stored; the registry pushes it with its service.
    pub fn apply_traffic(
        &mut self,
        manifest_json: String,
    ) -> Step<Result<TrafficApplied, OperatorError>> {
        self.step(|core| {
            let path = std::path::Path::new("manifest.json");
            let object = parse_object(path, &manifest_json)
                .map_err(|e| OperatorError::Invalid(e.to_string()))?;
            let applied = object.describe();
            let (routes, policies) = match &object {
                Object::Route(r) => (vec![r.clone()], vec![]),
                Object::DestinationPolicy(p) => (vec![], vec![p.clone()]),
                Object::AuthorizationPolicy(_) | Object::Gateway(_) | Object::HttpRoute(_) => {
                    (vec![], vec![])
                }
                Object::Deployment(_) => {
                    return Err(OperatorError::Invalid(
                        "a Deployment goes to /v1/deployments, not /v1/traffic".into(),
                    ))
                }
            };
            let warnings = core.analyze_with(&routes, &policies);
            let changes = match object {
                Object::Route(r) => core.traffic.apply_route(r),
                Object::DestinationPolicy(p) => core.traffic.apply_policy(p),
                Object::AuthorizationPolicy(p) => core.traffic.apply_authz(p),
                Object::Gateway(g) => Ok(core.traffic.apply_gateway(g)),
                Object::HttpRoute(r) => Ok(core.traffic.apply_http_route(r)),
                Object::Deployment(_) => unreachable!("refused above"),
            }
            .map_err(|e| OperatorError::Invalid(e.to_string()))?;
            core.persist_acknowledged(changes);
            info!(object = %applied, warnings = warnings.len(), "traffic policy applied");
            Ok(TrafficApplied { applied, warnings })
        })
    }

    /// Deletes the Route or DestinationPolicy `namespace/name`.
    pub fn delete_traffic(
        &mut self,
        kind: TrafficKind,
        namespace: &str,
        name: &str,
    ) -> Step<Result<(), OperatorError>> {
        self.step(|core| {
            let changes = match kind {
                TrafficKind::Route => core.traffic.delete_route(namespace, name),
                TrafficKind::DestinationPolicy => core.traffic.delete_policy(namespace, name),
                TrafficKind::AuthorizationPolicy => core.traffic.delete_authz(namespace, name),
                TrafficKind::Gateway => core.traffic.delete_gateway(namespace, name),
                TrafficKind::HttpRoute => core.traffic.delete_http_route(namespace, name),
            }
            .map_err(|e| OperatorError::NotFound(e.to_string()))?;
            core.persist_acknowledged(changes);
            info!(?kind, %namespace, %name, "traffic policy deleted");
            Ok(())
        })
    }

    /// Every applied Route.
    pub fn routes(&self) -> Vec<RouteManifest> {
        self.traffic.routes().cloned().collect()
    }

    /// Every applied DestinationPolicy.
    pub fn destination_policies(&self) -> Vec<PolicyManifest> {
        self.traffic.policies().cloned().collect()
    }

    /// The mesh-wide settings every push carries.
    pub fn mesh_settings(&self) -> actormesh::mesh::MeshSettings {
        self.registry.mesh()
    }

    /// Every applied Gateway.
    pub fn gateways(&self) -> Vec<crate::manifest::GatewayManifest> {
        self.traffic.gateways().cloned().collect()
    }

    /// Every applied HttpRoute.
    pub fn http_routes(&self) -> Vec<crate::manifest::HttpRouteManifest> {
        self.traffic.http_routes().cloned().collect()
    }

    /// The configuration of Gateway `namespace/name`, for a member node (`caller`) that
    /// serves it.
    pub fn fetch_gateway(
        &self,
        namespace: &str,
        name: &str,
        caller: Option<actormesh_transport::SpiffeId>,
    ) -> Result<actormesh::mesh::gateway::GatewayConfig, actormesh::protocol::MasterRefusal> {
        use actormesh::protocol::MasterRefusal;
        self.registered_node(&caller)?;
        let view = self.traffic.gateway(namespace, name).ok_or_else(|| {
            MasterRefusal::Forbidden(format!(
                "no Gateway {namespace}/{name} is applied (actormesh apply -f a kind: Gateway manifest)"
            ))
        })?;
        Ok(actormesh::mesh::gateway::GatewayConfig {
            spec: view.gateway.spec,
            routes: view.routes.into_iter().map(|r| (r.name, r.spec)).collect(),
        })
    }

    /// The Gateway `namespace/name` with its routes, as its nodes fetch it.
    pub fn gateway(&self, namespace: &str, name: &str) -> Option<crate::services::GatewayView> {
        self.traffic.gateway(namespace, name)
    }

    /// Every applied AuthorizationPolicy.
    pub fn authorization_policies(&self) -> Vec<AuthzManifest> {
        self.traffic.authorization_policies().cloned().collect()
    }

    /// What `analyze` finds across the applied objects, `routes` and `policies` (in place of
    /// applied ones of the same name) and the registry.
    pub fn analyze_with(
        &self,
        routes: &[RouteManifest],
        policies: &[PolicyManifest],
    ) -> Vec<Finding> {
        let (r, p) = self.traffic.named(routes, policies);
        let services: Vec<Service> = self.registry.services().cloned().collect();
        analyze(&r, &p, &services)
    }
}
