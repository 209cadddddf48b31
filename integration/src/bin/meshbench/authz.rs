//! The policies of `mesh_authz_overhead_p50`: 100 AuthorizationPolicies of 10 rules each,
//! every rule with a `when`, only the last rule of the last policy allowing the call, in
//! three shapes (see [`AuthzShape`]).

use std::time::{Duration, Instant};

use actormesh::agent::AgentHandle;
use actormesh::mesh::ServiceRef;
use actormesh_integration::actors::Echo;

use crate::mesh::{manifest, service_name, MasterThread, CALL_LIMIT, NAMESPACE};
use crate::PAYLOAD;

/// The three services under their policies, on the server agent, each callable by name
/// from `caller` with the allowing tenant (and refused without it: the policies are in
/// force).
pub(crate) async fn services(
    m: &MasterThread,
    caller: &AgentHandle,
) -> anyhow::Result<Vec<ServiceRef>> {
    let principal = caller.node.identity().to_string();
    let mut refs = Vec::new();
    for (service, shape) in [
        ("echo-authz", AuthzShape::Same),
        ("echo-authz-d", AuthzShape::Distinct),
        ("echo-authz-g", AuthzShape::Globs),
    ] {
        let name = service_name(service);
        m.apply(manifest(service, 1, "server")).await?;
        m.until_endpoints(&name, 1, Duration::from_secs(60)).await?;
        for p in authz_policies(service, &principal, shape) {
            m.apply_traffic(p).await?;
        }
        let options = actormesh::mesh::CallOptions::default().metadata("tenant", AUTHZ_TENANT);
        let r = caller
            .mesh()
            .service(&name.to_string())?
            .with_options(options);
        let start = Instant::now();
        while caller
            .mesh()
            .proxy_config()
            .services
            .iter()
            .find(|s| s.name == name)
            .is_none_or(|s| s.traffic.authz.len() < AUTHZ_POLICIES || s.endpoints.is_empty())
            || r.ask_timeout(Echo(vec![0; PAYLOAD]), CALL_LIMIT)
                .await
                .is_err()
        {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(60),
                "{name} with its {AUTHZ_POLICIES} policies not callable within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let refused = caller
            .mesh()
            .service(&name.to_string())?
            .ask_timeout(Echo(vec![0; PAYLOAD]), CALL_LIMIT)
            .await;
        anyhow::ensure!(
            matches!(refused, Err(actormesh::AskError::PermissionDenied { .. })),
            "{name}: a call without the tenant was not denied: {refused:?}"
        );
        refs.push(r);
    }
    Ok(refs)
}

/// The metadata value the last rule of the last authorization policy allows.
pub(crate) const AUTHZ_TENANT: &str = "t-99-9";
/// Policies on each authorization service, of [`AUTHZ_RULES`] rules each.
pub(crate) const AUTHZ_POLICIES: usize = 100;
const AUTHZ_RULES: usize = 10;

/// How the benchmark's 1,000 rules name the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthzShape {
    /// Every rule names the caller's principal, with `when` tenant `t-i-j`.
    Same,
    /// Every rule but the last names another principal.
    Distinct,
    /// Every rule names the caller by a glob (`*/node/<id>`) and its tenant by a glob
    /// (`t-i-j*`): no exact attribute to index a rule by.
    Globs,
}

/// The AuthorizationPolicies of `service`: ALLOW, rule `j` of policy `i` from the caller
/// (as `shape` names it) when `tenant` is `t-i-j`, so that only the last rule of the last
/// policy allows the call.
pub(crate) fn authz_policies(service: &str, principal: &str, shape: AuthzShape) -> Vec<String> {
    let node = principal.rsplit('/').next().unwrap_or_default();
    (0..AUTHZ_POLICIES)
        .map(|i| {
            let rules: Vec<serde_json::Value> = (0..AUTHZ_RULES)
                .map(|j| {
                    let last = i == AUTHZ_POLICIES - 1 && j == AUTHZ_RULES - 1;
                    let (from, tenant) = match shape {
                        AuthzShape::Distinct if !last => (
                            format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/client-{i}-{j}"),
                            format!("t-{i}-{j}"),
                        ),
                        AuthzShape::Same | AuthzShape::Distinct => {
                            (principal.to_string(), format!("t-{i}-{j}"))
                        }
                        AuthzShape::Globs => (format!("*/node/{node}"), format!("t-{i}-{j}*")),
                    };
                    serde_json::json!({
                        "from": [{ "source": { "principals": [from] } }],
                        "when": [{ "key": "tenant", "values": [tenant] }],
                    })
                })
                .collect();
            serde_json::json!({
                "kind": "AuthorizationPolicy",
                "name": format!("{service}-{i:03}"),
                "namespace": NAMESPACE,
                "spec": { "service": service, "action": "ALLOW", "rules": rules },
            })
            .to_string()
        })
        .collect()
}
