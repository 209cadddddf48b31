//! `authz check`: the decision a callee's proxy would make on a call, from the policies the
//! master pushes with the service and its mesh default, explained rule by rule. It reads
//! the same specs with the same rules as the proxies (`actormesh::mesh::authz::explain`,
//! which a unit test holds to the proxies' compiled engine).

use std::process::ExitCode;

use anyhow::Context as _;

use actormesh::mesh::authz::engine::bare;
use actormesh::mesh::authz::{explain, Explanation, Facts};
use actormesh::mesh::{MeshSettings, Service, ServiceName};

use crate::args::AuthzCheckArgs;
use crate::output::{self, JsonLayout};

/// What `GET /v1/traffic` says of the mesh settings.
#[derive(serde::Deserialize)]
struct Settings {
    #[serde(default)]
    mesh: MeshSettings,
}

/// The caller's principal and namespace, from `--from`: a SPIFFE id of a workload, a
/// node or a client.
fn caller(from: &str) -> anyhow::Result<(String, Option<String>)> {
    let id = actormesh::transport::SpiffeId::parse(from).map_err(|e| {
        anyhow::anyhow!(
            "--from {from:?}: {e}; expected spiffe://<td>/ns/<ns>/sa/<service>, spiffe://<td>/node/<id> or spiffe://<td>/client/<name>"
        )
    })?;
    let path = id.path().trim_start_matches('/');
    let parts: Vec<&str> = path.split('/').collect();
    let namespace = match parts.as_slice() {
        ["ns", ns, "sa", _] => Some(ns.to_string()),
        ["node", _] | ["client", _] => None,
        _ => anyhow::bail!(
            "--from {from:?}: the path /{path} is not a workload, node or client identity (expected /ns/<ns>/sa/<service>, /node/<id> or /client/<name>)"
        ),
    };
    Ok((bare(id.as_str()).to_string(), namespace))
}

pub(crate) fn check(args: AuthzCheckArgs) -> anyhow::Result<ExitCode> {
    let (principal, namespace) = caller(&args.from)?;
    let node = match &args.from_node {
        Some(n) => bare(n).to_string(),
        None if namespace.is_none() => principal.clone(),
        None => String::new(),
    };
    let options = crate::call::metadata(&args.metadata).map_err(anyhow::Error::msg)?;
    let name = ServiceName::parse(&args.to, &args.namespace)?;
    let client = args.api.client()?;
    let service: Service = serde_json::from_value(
        client
            .call(
                "GET",
                &format!("/v1/services/{}/{}", name.namespace, name.name),
                None,
            )
            .with_context(|| format!("service {name}"))?,
    )?;
    let settings: Settings = serde_json::from_value(client.call("GET", "/v1/traffic", None)?)?;
    let e = explain(
        &name,
        &service.traffic.authz,
        settings.mesh.authz_default,
        &Facts {
            principal: &principal,
            namespace: namespace.as_deref(),
            node: &node,
            message: &args.message,
            metadata: &options.metadata,
        },
    );
    let allowed = e.decision == "allow";
    output::print(
        args.api.output,
        JsonLayout::Pretty,
        serde_json::to_value(&e)?,
        |e: Explanation| text(&name, &principal, &e),
    )?;
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn text(service: &ServiceName, principal: &str, e: &Explanation) -> String {
    let mut out = format!(
        "{} call from {principal} to {service}\npolicy: {}\nrule: {}\n",
        e.decision.to_uppercase(),
        e.policy,
        e.rule
    );
    if let Some(a) = &e.audited {
        out.push_str(&format!("audited by: {a}\n"));
    }
    if e.trace.is_empty() {
        out.push_str("no AuthorizationPolicy applies to this service\n");
    }
    for p in &e.trace {
        out.push_str(&format!("{} ({}):\n", p.policy, p.action));
        for r in &p.rules {
            out.push_str(&format!("  {r}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_read_as_principals_and_bad_ones_say_what_is_expected() {
        assert_eq!(
            caller("spiffe://td/ns/shop/sa/web").unwrap(),
            ("td/ns/shop/sa/web".to_string(), Some("shop".to_string()))
        );
        assert_eq!(
            caller("spiffe://td/client/cli").unwrap(),
            ("td/client/cli".to_string(), None)
        );
        assert_eq!(caller("spiffe://td/node/a").unwrap().1, None);
        let e = caller("spiffe://td/ns/shop").unwrap_err().to_string();
        assert!(e.contains("expected /ns/<ns>/sa/<service>"), "{e}");
        let e = caller("web").unwrap_err().to_string();
        assert!(e.contains("expected spiffe://"), "{e}");
    }
}
