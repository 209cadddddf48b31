//! `apply` and `delete deployment`: submit a manifest (and wait for its replicas), remove a
//! deployment.

use std::time::Duration;

use actormesh_cli::ApiClient;
use actormesh_master::deployments::DeploymentSummary;
use actormesh_master::manifest::Object;
use actormesh_master::membership::AgentRecord;
use anyhow::Context as _;

use crate::args::{ApplyArgs, DeleteWhat};
use crate::output::{self, JsonLayout};

pub(crate) fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let ApplyArgs {
        file,
        dry_run,
        no_wait,
        timeout,
        api,
    } = args;
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    // Every document is read before anything is applied: a file with a mistake in its
    // last object changes nothing.
    let objects = actormesh_master::manifest::parse_objects(&file, &text)?;
    if dry_run {
        for object in &objects {
            println!("{}: valid {}", file.display(), object.describe());
        }
        return Ok(());
    }
    let client = api.client()?;
    let mut deployments = Vec::new();
    for object in objects {
        let traffic = match object {
            Object::Deployment(d) => {
                let body = serde_json::to_value(&d.manifest)?;
                let v = client.call("POST", "/v1/deployments", Some(body))?;
                let key = v["applied"].as_str().unwrap_or_default().to_string();
                println!("applied {key}");
                deployments.push(key);
                continue;
            }
            Object::Route(r) => serde_json::to_value(&r)?,
            Object::DestinationPolicy(p) => serde_json::to_value(&p)?,
            Object::AuthorizationPolicy(p) => serde_json::to_value(&p)?,
            Object::Gateway(g) => serde_json::to_value(&g)?,
            Object::HttpRoute(r) => serde_json::to_value(&r)?,
        };
        apply_traffic(&client, traffic)?;
    }
    // The deployments are placed together; then each is waited for.
    if !no_wait {
        for key in &deployments {
            wait_for_replicas(&client, key, timeout)?;
        }
    }
    Ok(())
}

/// Applies a Route or DestinationPolicy and prints what `analyze` warns of with it in
/// place (the object is applied all the same, as `istioctl` does).
fn apply_traffic(client: &ApiClient, body: serde_json::Value) -> anyhow::Result<()> {
    let v = client.call("POST", "/v1/traffic", Some(body))?;
    println!("applied {}", v["applied"].as_str().unwrap_or_default());
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!(
            "warning {} {} {}: {}",
            w["code"].as_str().unwrap_or_default(),
            w["object"].as_str().unwrap_or_default(),
            w["field"].as_str().unwrap_or_default(),
            w["message"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

pub(crate) fn delete(what: DeleteWhat) -> anyhow::Result<()> {
    let (name, api, path, what) = match what {
        DeleteWhat::Node { id, api } => {
            let answer = api
                .client()?
                .call("DELETE", &format!("/v1/nodes/{id}"), None)?;
            return output::print(api.output, JsonLayout::Line, answer, |n: AgentRecord| {
                format!(
                        "deleted node {}: it is Gone, its identity and join token are revoked, and what ran there is replaced elsewhere\n",
                        n.id
                    )
            });
        }
        DeleteWhat::Deployment { name, api } => (name, api, "deployments", None),
        DeleteWhat::Route { name, api } => (name, api, "routes", Some("Route")),
        DeleteWhat::DestinationPolicy { name, api } => {
            (name, api, "destination-policies", Some("DestinationPolicy"))
        }
        DeleteWhat::AuthorizationPolicy { name, api } => (
            name,
            api,
            "authorization-policies",
            Some("AuthorizationPolicy"),
        ),
        DeleteWhat::Gateway { name, api } => (name, api, "gateways", Some("Gateway")),
        DeleteWhat::HttpRoute { name, api } => (name, api, "http-routes", Some("HttpRoute")),
    };
    if let Some(kind) = what {
        let key = object_key(&name, kind)?;
        let answer = api
            .client()?
            .call("DELETE", &format!("/v1/{path}/{key}"), None)?;
        return output::print(
            api.output,
            JsonLayout::Line,
            answer,
            |_: serde_json::Value| format!("deleted {kind} {key}\n"),
        );
    }
    let key = deployment_key(&name)?;
    let answer = api
        .client()?
        .call("DELETE", &format!("/v1/deployments/{key}"), None)?;
    output::print(
        api.output,
        JsonLayout::Line,
        answer,
        |_: serde_json::Value| format!("deleted {key}: its instances are being stopped\n"),
    )
}

/// Prints progress until every replica of deployment `key` runs; an error after `timeout`
/// that says how far it got and why the rest are not placed.
fn wait_for_replicas(client: &ApiClient, key: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        let list: Vec<DeploymentSummary> =
            serde_json::from_value(client.call("GET", "/v1/deployments", None)?)?;
        let Some(d) = list
            .into_iter()
            .find(|d| format!("{}/{}", d.namespace, d.name) == key)
        else {
            anyhow::bail!("deployment {key} was deleted while waiting for it");
        };
        let now = (d.running, d.pending, d.old, d.unplaced.clone());
        let asked = d.replicas.saturating_sub(d.done);
        if last.as_ref() != Some(&now) {
            println!(
                "{key}: {}/{} running, {} starting{}{}",
                d.running,
                asked,
                d.pending,
                if d.old > 0 {
                    format!(", {} of older versions", d.old)
                } else {
                    String::new()
                },
                d.unplaced
                    .as_deref()
                    .map(|w| format!("; not placed: {w}"))
                    .unwrap_or_default()
            );
            last = Some(now);
        }
        if d.running >= asked && d.pending == 0 && d.old == 0 {
            return Ok(());
        }
        if d.stalled {
            anyhow::bail!(
                "{key}: {} (the deployment stays applied; `actormesh describe deployment {key}` follows it)",
                d.unplaced.unwrap_or_default()
            );
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{key}: only {}/{} replicas running after {timeout:?}{} (the deployment stays applied; \
                 `actormesh describe deployment {key}` shows its progress, --timeout waits longer, --no-wait does not wait)",
                d.running,
                asked,
                d.unplaced
                    .map(|w| format!("; not placed: {w}"))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `namespace/name` from `namespace/name` or `name` (the default namespace).
pub(crate) fn deployment_key(name: &str) -> anyhow::Result<String> {
    object_key(name, "deployment")
}

/// `namespace/name` of an object named `name` (a bare name is in `default`).
fn object_key(name: &str, kind: &str) -> anyhow::Result<String> {
    match name.split_once('/') {
        Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => {
            Ok(format!("{ns}/{n}"))
        }
        Some(_) => anyhow::bail!(
            "{name:?} is not a {kind} name: expected namespace/name (e.g. default/web) or name"
        ),
        None => Ok(format!("default/{name}")),
    }
}
