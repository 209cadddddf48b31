//! Deployment manifests (YAML, or JSON for `.json` files), validated before they are
//! accepted. Every error names the file, the field and what was expected.
//!
//! ```yaml
//! kind: Deployment
//! name: ratings
//! namespace: shop
//! spec:
//!   actor: bookinfo::Ratings        # or: command: { path: /bin/server, args: [], env: {}, kill_grace: 10s }
//!   version: v2
//!   replicas: 3
//!   resources: { need: "cpus:0.5;mem:256MiB", want: "cpus:1;mem:512MiB" }
//!   priority: 10
//!   constraints: { spread_by: zone, unique_node: true, node_selector: { disk: ssd } }
//!   health_check: { interval: 5s, timeout: 1s, failures: 3 }
//!   restart: { policy: on-failure, backoff_initial: 1s, backoff_max: 1m }
//!   rolling_update: { max_surge: 1, max_unavailable: 0 }
//!   service: { name: ratings, labels: { tier: back }, weight: 1, balancer: p2c, locality: true }
//! ```
//!
//! `service:` makes the instances endpoints of a service (actor deployments only: a
//! command task has no actor to call).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use actormesh::resources::Resources;

pub use actormesh::duration::{parse_duration, DurationError};

mod traffic;
pub use traffic::{
    documents, parse_object, parse_objects, AuthzManifest, GatewayManifest, HttpRouteManifest,
    Object, PolicyManifest, RouteManifest,
};

/// A manifest as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Only `Deployment` for now.
    pub kind: String,
    /// Name, unique in its namespace.
    pub name: String,
    /// Namespace (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// What to run and how.
    pub spec: DeploymentSpec,
}

fn default_namespace() -> String {
    "default".into()
}

/// What a deployment runs and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    /// An actor type hosted by agents (exclusive with `command`).
    #[serde(default)]
    pub actor: Option<String>,
    /// An OS process (exclusive with `actor`).
    #[serde(default)]
    pub command: Option<CommandSpec>,
    /// Version label, used by rolling updates and traffic rules.
    pub version: String,
    /// Instances to keep running.
    pub replicas: u32,
    /// Resources per instance.
    pub resources: ResourceSpec,
    /// Higher goes first.
    #[serde(default)]
    pub priority: i32,
    /// Placement constraints.
    #[serde(default)]
    pub constraints: Constraints,
    /// Health check.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartSpec,
    /// Rolling update limits.
    #[serde(default)]
    pub rolling_update: RollingUpdate,
    /// The service its instances serve, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
}

/// The service a deployment's instances serve, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Its name within the deployment's namespace (default: the deployment's name).
    #[serde(default)]
    pub name: Option<String>,
    /// Its labels (each endpoint also gets `version`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Each instance's weight under weighted balancers (default 1, at least 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// `p2c` (default), `round_robin`, `weighted` or `hash`.
    #[serde(default)]
    pub balancer: Option<String>,
    /// Whether callers prefer an endpoint on their node, then in their zone (default true).
    #[serde(default)]
    pub locality: Option<bool>,
}

/// A validated `service:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDecl {
    /// `namespace/name`.
    pub name: actormesh::mesh::ServiceName,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Each instance's weight.
    pub weight: u32,
    /// Its balancer.
    pub balancer: actormesh::mesh::BalancerKind,
    /// Whether callers prefer nearby endpoints.
    pub locality: bool,
}

/// An OS process to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// Program path.
    pub path: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// On stop: time between SIGTERM and SIGKILL, e.g. `10s` (the default).
    #[serde(default)]
    pub kill_grace: Option<String>,
}

/// Resources as resource strings (see [`Resources`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// The minimum an instance needs.
    pub need: String,
    /// The most it can use (defaults to `need`).
    #[serde(default)]
    pub want: Option<String>,
}

/// Placement constraints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Spread instances evenly over the values of this agent attribute.
    #[serde(default)]
    pub spread_by: Option<String>,
    /// At most one instance per agent.
    #[serde(default)]
    pub unique_node: bool,
    /// Only agents with all these attributes.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
}

/// A health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Between checks, e.g. `5s`.
    pub interval: String,
    /// Per check, e.g. `1s`.
    pub timeout: String,
    /// Consecutive failures before the instance is replaced.
    pub failures: u32,
    /// Command deployments: a program and its arguments, run in the task's sandbox; exit
    /// code 0 means healthy. (Actor deployments are asked [`actormesh::health::HealthCheck`].)
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Failures in this long after the start do not count, e.g. `30s`.
    #[serde(default)]
    pub grace: Option<String>,
}

/// When to restart instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    /// `never`, `on-failure` or `always`.
    pub policy: String,
    /// First backoff, e.g. `1s`.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial: String,
    /// Longest backoff, e.g. `1m`.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: String,
}

fn default_backoff_initial() -> String {
    "1s".into()
}

fn default_backoff_max() -> String {
    "1m".into()
}

impl Default for RestartSpec {
    fn default() -> Self {
        Self {
            policy: "on-failure".into(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
        }
    }
}

/// Rolling update limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingUpdate {
    /// Extra instances allowed during an update.
    pub max_surge: u32,
    /// Instances that may be missing during an update.
    pub max_unavailable: u32,
}

impl Default for RollingUpdate {
    fn default() -> Self {
        Self {
            max_surge: 1,
            max_unavailable: 0,
        }
    }
}

/// A manifest was refused: which file, which field, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {problem} (expected {expected})")]
pub struct ManifestError {
    /// The file.
    pub file: String,
    /// The field, as a dotted path (`spec.replicas`), or `document` for syntax errors.
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// What would be right.
    pub expected: String,
}

/// A validated deployment, with strings turned into values.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// The manifest as written.
    pub manifest: Manifest,
    /// Parsed `resources.need`.
    pub need: Resources,
    /// Parsed `resources.want` (or `need`).
    pub want: Resources,
    /// The parsed health check.
    pub health: Option<actormesh::protocol::HealthSpec>,
    /// Parsed restart backoff: (initial, max).
    pub backoff: (Duration, Duration),
    /// Parsed `command.kill_grace` (10 s if not given).
    pub kill_grace: Duration,
    /// The validated `service:` block.
    pub service: Option<ServiceDecl>,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

pub(crate) use actormesh::mesh::registry::is_valid_name as valid_name;

/// Parses and validates a manifest; `file` names it in errors and picks JSON for `.json`.
/// Reads `text` (JSON if the file is `.json`, YAML otherwise) as a `T`; on failure, the
/// field's path (`document` for syntax errors) and the message.
pub(crate) fn read<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<T, (String, String)> {
    let r = if file.extension().is_some_and(|e| e == "json") {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de)
            .map_err(|e| (e.path().to_string(), e.into_inner().to_string()))
    } else {
        // The field path is taken as the error passes through; the outer error then only says
        // the document ended early.
        let mut at: Option<(String, String)> = None;
        let result = serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                at = Some((e.path().to_string(), e.inner().to_string()));
                e.into_inner()
            })
        });
        result.map_err(|e| at.unwrap_or_else(|| ("document".to_string(), e.to_string())))
    };
    r.map_err(|(path, msg)| {
        let field = if path.is_empty() || path == "." {
            "document".to_string()
        } else {
            path
        };
        (field, msg)
    })
}

/// The kinds of object `apply` takes.
pub const KINDS: &str =
    "Deployment, Route, DestinationPolicy, AuthorizationPolicy, Gateway or HttpRoute";

pub fn parse(file: &Path, text: &str) -> Result<Deployment, ManifestError> {
    let fname = file.display().to_string();
    let err = |field: &str, problem: String, expected: &str| ManifestError {
        file: fname.clone(),
        field: field.to_string(),
        problem,
        expected: expected.to_string(),
    };
    let parsed: Result<Manifest, (String, String)> = read(file, text);
    let m = parsed.map_err(|(field, msg)| {
        err(
            &field,
            msg,
            "a Deployment manifest: kind, name, namespace and spec (actor or command, version, replicas, resources, ...)",
        )
    })?;
    if m.kind != "Deployment" {
        return Err(err(
            "kind",
            format!("{:?} is not a Deployment", m.kind),
            "Deployment (this reads deployments only; apply takes Deployment, Route, DestinationPolicy, AuthorizationPolicy, Gateway or HttpRoute)",
        ));
    }
    if !valid_name(&m.name) {
        return Err(err(
            "name",
            format!("{:?} is not a valid name", m.name),
            "1-63 lowercase letters, digits and '-'",
        ));
    }
    if !valid_name(&m.namespace) {
        return Err(err(
            "namespace",
            format!("{:?} is not a valid namespace", m.namespace),
            "1-63 lowercase letters, digits and '-'",
        ));
    }
    let s = &m.spec;
    match (&s.actor, &s.command) {
        (Some(_), Some(_)) => {
            return Err(err(
                "spec",
                "both actor and command are set".into(),
                "exactly one of spec.actor or spec.command",
            ))
        }
        (None, None) => {
            return Err(err(
                "spec",
                "neither actor nor command is set".into(),
                "exactly one of spec.actor or spec.command",
            ))
        }
        (Some(a), None) if a.trim().is_empty() => {
            return Err(err("spec.actor", "empty".into(), "an actor type name"))
        }
        (None, Some(c)) if c.path.trim().is_empty() => {
            return Err(err("spec.command.path", "empty".into(), "a program path"))
        }
        _ => {}
    }
    if s.version.trim().is_empty() {
        return Err(err(
            "spec.version",
            "empty".into(),
            "a version label such as v1",
        ));
    }
    let need: Resources =
        s.resources
            .need
            .parse()
            .map_err(|e: actormesh::resources::ResourceError| {
                err(
                    "spec.resources.need",
                    e.to_string(),
                    "a resource string such as cpus:0.5;mem:256MiB",
                )
            })?;
    let want: Resources = match &s.resources.want {
        Some(w) => w
            .parse()
            .map_err(|e: actormesh::resources::ResourceError| {
                err(
                    "spec.resources.want",
                    e.to_string(),
                    "a resource string such as cpus:1;mem:512MiB",
                )
            })?,
        None => need.clone(),
    };
    if !want.contains(&need) {
        return Err(err(
            "spec.resources.want",
            format!("{want} is less than need {need}"),
            "at least as much as spec.resources.need",
        ));
    }
    let health = match &s.health_check {
        Some(h) => {
            let interval = duration(&h.interval)
                .map_err(|e| err("spec.health_check.interval", e, "a duration such as 5s"))?;
            let timeout = duration(&h.timeout)
                .map_err(|e| err("spec.health_check.timeout", e, "a duration such as 1s"))?;
            if timeout > interval {
                return Err(err(
                    "spec.health_check.timeout",
                    format!("{} is longer than the interval {}", h.timeout, h.interval),
                    "a timeout no longer than the interval",
                ));
            }
            if h.failures == 0 {
                return Err(err("spec.health_check.failures", "0".into(), "at least 1"));
            }
            let grace = match &h.grace {
                Some(g) => duration(g)
                    .map_err(|e| err("spec.health_check.grace", e, "a duration such as 30s"))?,
                None => Duration::ZERO,
            };
            match (&s.actor, &h.command) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        "spec.health_check.command",
                        "set for an actor deployment".into(),
                        "no command: actor instances are asked the actormesh.Health/v1 message",
                    ))
                }
                (None, None) => {
                    return Err(err(
                        "spec.health_check.command",
                        "missing".into(),
                        "a command such as [\"/bin/sh\", \"-c\", \"curl -f localhost:8080\"] for a command deployment",
                    ))
                }
                (None, Some(c)) if c.is_empty() || c[0].trim().is_empty() => {
                    return Err(err(
                        "spec.health_check.command",
                        "empty".into(),
                        "a program and its arguments",
                    ))
                }
                _ => {}
            }
            Some(actormesh::protocol::HealthSpec {
                interval_ms: interval.as_millis() as u64,
                timeout_ms: timeout.as_millis() as u64,
                failures: h.failures,
                grace_ms: grace.as_millis() as u64,
                command: h.command.clone(),
            })
        }
        None => None,
    };
    if !["never", "on-failure", "always"].contains(&s.restart.policy.as_str()) {
        return Err(err(
            "spec.restart.policy",
            format!("{:?}", s.restart.policy),
            "never, on-failure or always",
        ));
    }
    let initial = duration(&s.restart.backoff_initial)
        .map_err(|e| err("spec.restart.backoff_initial", e, "a duration such as 1s"))?;
    let max = duration(&s.restart.backoff_max)
        .map_err(|e| err("spec.restart.backoff_max", e, "a duration such as 1m"))?;
    if max < initial {
        return Err(err(
            "spec.restart.backoff_max",
            format!("{} is shorter than backoff_initial", s.restart.backoff_max),
            "at least backoff_initial",
        ));
    }
    let kill_grace = match s.command.as_ref().and_then(|c| c.kill_grace.as_deref()) {
        Some(g) => {
            duration(g).map_err(|e| err("spec.command.kill_grace", e, "a duration such as 10s"))?
        }
        None => Duration::from_secs(10),
    };
    if s.rolling_update.max_surge == 0 && s.rolling_update.max_unavailable == 0 {
        return Err(err(
            "spec.rolling_update",
            "max_surge and max_unavailable are both 0, so no update could ever proceed".into(),
            "max_surge or max_unavailable above 0",
        ));
    }
    let service = match &s.service {
        Some(svc) => Some(service_decl(svc, &m, &err)?),
        None => None,
    };
    Ok(Deployment {
        manifest: m,
        need,
        want,
        health,
        backoff: (initial, max),
        kill_grace,
        service,
    })
}

/// Validates a `service:` block of manifest `m`.
fn service_decl(
    svc: &ServiceSpec,
    m: &Manifest,
    err: &impl Fn(&str, String, &str) -> ManifestError,
) -> Result<ServiceDecl, ManifestError> {
    use actormesh::mesh::{BalancerKind, ServiceName};
    if m.spec.command.is_some() {
        return Err(err(
            "spec.service",
            "set for a command deployment".into(),
            "no service block: a command task has no actor to call; serve it from an actor deployment",
        ));
    }
    let given = svc.name.clone().unwrap_or_else(|| m.name.clone());
    if given.contains('/') {
        return Err(err(
            "spec.service.name",
            format!("{given:?} names a namespace"),
            "a bare name: the service lives in the deployment's namespace",
        ));
    }
    let name = ServiceName::parse(&given, &m.namespace).map_err(|e| {
        err(
            "spec.service.name",
            format!("{given:?}: {}", e.reason),
            "1-63 lowercase letters, digits and '-'",
        )
    })?;
    for (k, v) in &svc.labels {
        if k.is_empty() || k.len() > 63 || v.len() > 253 {
            return Err(err(
                &format!("spec.service.labels.{k}"),
                "empty or too long".into(),
                "a key of 1-63 bytes and a value of at most 253",
            ));
        }
        if k == "version" {
            return Err(err(
                "spec.service.labels.version",
                "set by hand".into(),
                "no `version` label: each endpoint gets spec.version as its version label",
            ));
        }
    }
    let weight = svc.weight.unwrap_or(1);
    if weight == 0 {
        return Err(err("spec.service.weight", "0".into(), "at least 1"));
    }
    let balancer = match svc.balancer.as_deref() {
        None | Some("p2c") => BalancerKind::P2c,
        Some("round_robin") => BalancerKind::RoundRobin,
        Some("weighted") => BalancerKind::Weighted,
        Some("hash") => BalancerKind::Hash,
        Some(other) => {
            return Err(err(
                "spec.service.balancer",
                format!("{other:?} is not a balancer"),
                "p2c, round_robin, weighted or hash",
            ))
        }
    };
    Ok(ServiceDecl {
        name,
        labels: svc.labels.clone(),
        weight,
        balancer,
        locality: svc.locality.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
kind: Deployment
name: ratings
namespace: shop
spec:
  actor: bookinfo::Ratings
  version: v2
  replicas: 3
  resources: { need: "cpus:0.5;mem:256MiB", want: "cpus:1;mem:512MiB" }
  priority: 10
  constraints: { spread_by: zone, unique_node: true, node_selector: { disk: ssd } }
  health_check: { interval: 5s, timeout: 1s, failures: 3 }
  restart: { policy: on-failure, backoff_initial: 1s, backoff_max: 1m }
  rolling_update: { max_surge: 1, max_unavailable: 0 }
"#;

    #[test]
    fn a_full_manifest_parses_from_yaml_and_json() {
        let d = parse(Path::new("deploy.yaml"), GOOD).unwrap();
        assert_eq!(d.manifest.spec.replicas, 3);
        assert_eq!(d.need.scalars["cpus"], 0.5);
        assert_eq!(d.want.scalars["mem"], 512.0);
        let h = d.health.clone().unwrap();
        assert_eq!((h.interval_ms, h.timeout_ms, h.failures), (5000, 1000, 3));
        let json = serde_json::to_string(&d.manifest).unwrap();
        let again = parse(Path::new("deploy.json"), &json).unwrap();
        assert_eq!(again.manifest, d.manifest);
    }

    #[test]
    fn a_service_block_gets_its_defaults_and_a_command_deployment_refuses_one() {
        use actormesh::mesh::BalancerKind;
        let d = parse(Path::new("d.yaml"), &format!("{GOOD}  service: {{}}\n")).unwrap();
        let s = d.service.unwrap();
        assert_eq!(s.name.to_string(), "shop/ratings", "the deployment's name");
        assert_eq!(
            (s.weight, s.balancer, s.locality),
            (1, BalancerKind::P2c, true)
        );
        let d = parse(
            Path::new("d.yaml"),
            &format!("{GOOD}  service: {{ name: rate, labels: {{ tier: back }}, weight: 3, balancer: hash, locality: false }}\n"),
        )
        .unwrap();
        let s = d.service.clone().unwrap();
        assert_eq!(s.name.to_string(), "shop/rate");
        assert_eq!(s.labels["tier"], "back");
        assert_eq!(
            (s.weight, s.balancer, s.locality),
            (3, BalancerKind::Hash, false)
        );
        let json = serde_json::to_string(&d.manifest).unwrap();
        assert_eq!(
            parse(Path::new("d.json"), &json).unwrap().service,
            d.service
        );
        assert!(parse(Path::new("d.yaml"), GOOD).unwrap().service.is_none());
        let cmd = "kind: Deployment\nname: job\nspec:\n  command: { path: /bin/true }\n  version: v1\n  replicas: 1\n  resources: { need: \"cpus:1\" }\n  service: {}\n";
        let e = parse(Path::new("job.yaml"), cmd).unwrap_err();
        assert_eq!(e.field, "spec.service");
        assert!(e.expected.contains("no actor to call"), "{e}");
    }

    #[test]
    fn errors_name_the_file_the_field_and_what_was_expected() {
        let cases = [
            (
                GOOD.replace("replicas: 3", "replicas: three"),
                "spec.replicas",
            ),
            (GOOD.replace("kind: Deployment", "kind: Pod"), "kind"),
            (
                GOOD.replace("  priority: 10\n", "  priority: 10\n  colour: red\n"),
                "spec",
            ),
            (
                GOOD.replace("cpus:1;mem:512MiB", "cpus:0.1;mem:512MiB"),
                "spec.resources.want",
            ),
            (
                GOOD.replace("mem:256MiB", "mem:256XB"),
                "spec.resources.need",
            ),
            (
                GOOD.replace("policy: on-failure", "policy: sometimes"),
                "spec.restart.policy",
            ),
            (
                GOOD.replace("timeout: 1s", "timeout: 9s"),
                "spec.health_check.timeout",
            ),
            (
                GOOD.replace(
                    "  actor: bookinfo::Ratings\n",
                    "  actor: x\n  command: { path: /bin/true }\n",
                ),
                "spec",
            ),
            (
                GOOD.replace("max_surge: 1", "max_surge: 0"),
                "spec.rolling_update",
            ),
            (GOOD.replace("name: ratings", "name: Ratings!"), "name"),
            (
                format!("{GOOD}  service: {{ balancer: random }}\n"),
                "spec.service.balancer",
            ),
            (
                format!("{GOOD}  service: {{ weight: 0 }}\n"),
                "spec.service.weight",
            ),
            (
                format!("{GOOD}  service: {{ name: Rate }}\n"),
                "spec.service.name",
            ),
            (
                format!("{GOOD}  service: {{ name: a/b }}\n"),
                "spec.service.name",
            ),
            (
                format!("{GOOD}  service: {{ labels: {{ version: v9 }} }}\n"),
                "spec.service.labels.version",
            ),
            (
                format!("{GOOD}  service: {{ colour: red }}\n"),
                "spec.service",
            ),
            (
                format!("{GOOD}  service: {{ locality: maybe }}\n"),
                "spec.service.locality",
            ),
        ];
        for (text, field) in cases {
            let e = parse(Path::new("deploy.yaml"), &text).unwrap_err();
            assert_eq!(e.file, "deploy.yaml");
            assert!(e.field.starts_with(field), "{field}: {e}");
            assert!(e.to_string().contains("expected"), "{e}");
        }
        let e = parse(Path::new("bad.yaml"), "kind: [unclosed").unwrap_err();
        assert!(e.to_string().starts_with("bad.yaml: "), "{e}");
        let e = parse(
            Path::new("d.yaml"),
            &GOOD.replace("replicas: 3", "replicas: three"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("spec.replicas"), "{e}");
        assert!(
            e.problem.contains("line"),
            "the problem should say where: {e}"
        );
    }
}
