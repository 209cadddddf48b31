//! `describe`: one cluster object in detail, as `Label:  value` lines for people.

use std::fmt;

use actormesh::mesh::protocol::EndpointLive;
use actormesh::mesh::{Service, ServiceName, DEFAULT_NAMESPACE};
use actormesh_master::deployments::DeploymentDescription;
use actormesh_master::membership::AgentRecord;
use actormesh_master::TaskDescription;

use crate::apply::deployment_key;
use crate::args::DescribeWhat;
use crate::output::{self, JsonLayout};
use crate::tables::{self, ago, until};

pub(crate) fn run(what: DescribeWhat) -> anyhow::Result<()> {
    match what {
        DescribeWhat::Node { id, api } => {
            let answer = api
                .client()?
                .call("GET", &format!("/v1/nodes/{id}"), None)?;
            output::print(api.output, JsonLayout::Pretty, answer, |n: AgentRecord| {
                NodeDetails(&n).to_string()
            })
        }
        DescribeWhat::Deployment { name, api } => {
            let key = deployment_key(&name)?;
            let answer = api
                .client()?
                .call("GET", &format!("/v1/deployments/{key}"), None)?;
            output::print(
                api.output,
                JsonLayout::Pretty,
                answer,
                |d: DeploymentDescription| DeploymentDetails(&d).to_string(),
            )
        }
        DescribeWhat::Service { service, node, api } => {
            let name = ServiceName::parse(&service, DEFAULT_NAMESPACE)?;
            let client = api.client()?;
            let path = format!("{}/{}", name.namespace, name.name);
            let registry = client.call("GET", &format!("/v1/services/{path}"), None)?;
            let live = client.call("GET", &format!("/v1/proxy-endpoints/{node}/{path}"), None)?;
            let answer =
                serde_json::json!({ "service": registry, "node": node, "endpoints": live });
            output::print(api.output, JsonLayout::Pretty, answer, |d: ServiceView| {
                d.to_string()
            })
        }
        DescribeWhat::Task { id, api } => {
            let answer = api
                .client()?
                .call("GET", &format!("/v1/tasks/{id}"), None)?;
            output::print(
                api.output,
                JsonLayout::Pretty,
                answer,
                |t: TaskDescription| TaskDetails(&t).to_string(),
            )
        }
    }
}

/// `describe service`: the registry's service and one node's live view of its endpoints.
#[derive(serde::Deserialize)]
pub(crate) struct ServiceView {
    service: Service,
    node: String,
    endpoints: Vec<EndpointLive>,
}

/// The indent of a route's or policy's detail lines (under `Route:` and `Policy:`).
const PAD: &str = "                 ";

/// `2s`, `500ms`: how manifests write durations.
fn dur(d: std::time::Duration) -> String {
    actormesh::duration::format_duration(d)
}

/// One rule of a route, as `describe service` shows it: what it matches and does, with
/// both timeouts spelled out (each try gets the earlier of its own and what the overall
/// one leaves).
fn write_rule(
    f: &mut fmt::Formatter<'_>,
    i: usize,
    r: &actormesh::mesh::policy::spec::Rule,
) -> fmt::Result {
    let matches = if r.matches.is_catch_all() {
        "every call".to_string()
    } else {
        serde_json::to_string(&r.matches).unwrap_or_default()
    };
    writeln!(f, "{:<17}match {matches}", format!("  rule {i}:"))?;
    if !r.split.is_empty() {
        let parts: Vec<String> = r
            .split
            .iter()
            .map(|s| format!("{} {}", s.subset, s.weight))
            .collect();
        writeln!(f, "{PAD}split {}", parts.join(", "))?;
    }
    let overall = r
        .timeout
        .map_or("the caller's (node default)".to_string(), dur);
    let per_try = r
        .retries
        .as_ref()
        .and_then(|t| t.per_try_timeout)
        .map_or("none (the overall one)".to_string(), dur);
    writeln!(f, "{PAD}timeout {overall} overall, per try {per_try}")?;
    if let Some(t) = &r.retries {
        let on: Vec<String> = t
            .on
            .iter()
            .map(|o| {
                serde_json::to_value(o).map_or(String::new(), |v| v.as_str().unwrap_or("").into())
            })
            .collect();
        writeln!(
            f,
            "{PAD}retries {} on {} (and not delivered), backoff {}..{}; only idempotent messages after a delivery",
            t.attempts,
            on.join(","),
            dur(t.backoff.base),
            dur(t.backoff.max)
        )?;
    }
    if let Some(fault) = &r.fault {
        if let Some(d) = &fault.delay {
            writeln!(f, "{PAD}fault delay {} for {} %", dur(d.fixed), d.percent)?;
        }
        if let Some(a) = &fault.abort {
            let kind = serde_json::to_value(a.error)
                .map_or(String::new(), |v| v.as_str().unwrap_or("").into());
            writeln!(f, "{PAD}fault abort {kind} for {} %", a.percent)?;
        }
    }
    if let Some(m) = &r.mirror {
        writeln!(f, "{PAD}mirror to {} for {} %", m.subset, m.percent)?;
    }
    Ok(())
}

fn write_policy(
    f: &mut fmt::Formatter<'_>,
    p: &actormesh::mesh::policy::spec::DestinationPolicySpec,
    service: &Service,
) -> fmt::Result {
    for s in &p.subsets {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let members = service
            .endpoints
            .iter()
            .filter(|e| actormesh::mesh::policy::active::in_subset(&s.labels, e))
            .count();
        let balancer = s
            .balancer
            .map_or(String::new(), |b| format!(", {}", b.as_str()));
        writeln!(
            f,
            "{:<17}{} ({members} endpoint(s){balancer})",
            format!("  subset {}:", s.name),
            labels.join(",")
        )?;
    }
    if let Some(b) = &p.circuit_breaker {
        writeln!(
            f,
            "  breaker:       {} in flight per endpoint, {} pending, {} concurrent retries",
            b.max_in_flight_per_endpoint, b.max_pending, b.max_retries
        )?;
        if let Some(n) = b.consecutive_failures {
            writeln!(
                f,
                "{PAD}trips open after {n} failures in a row for {}, then one trial call",
                dur(b.open_for)
            )?;
        }
    }
    if let Some(o) = &p.outlier_detection {
        writeln!(
            f,
            "  outliers:      {} errors in a row eject for n × {}; at most {} % ejected (at least one), at least {} % healthy",
            o.consecutive_errors,
            dur(o.base_ejection),
            o.max_ejection_percent,
            o.min_healthy_percent
        )?;
    }
    if let Some(b) = &p.retry_budget {
        writeln!(
            f,
            "  retry budget:  {} % of calls + {} a second, over {}",
            b.ratio * 100.0,
            b.min_per_second,
            dur(b.ttl)
        )?;
    }
    if let Some(r) = &p.rate_limit {
        let burst = r
            .burst
            .map_or("a second's worth".to_string(), |b| b.to_string());
        writeln!(
            f,
            "  rate limit:    {} a second, burst {burst}, where calls arrive",
            r.rate
        )?;
    }
    Ok(())
}

impl fmt::Display for ServiceView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.service;
        writeln!(f, "Service:         {}", s.name)?;
        let balancer = actormesh::mesh::policy::active::service_balancer(&s.traffic, s.balancer);
        if balancer == s.balancer {
            writeln!(f, "Balancer:        {}", balancer.as_str())?;
        } else {
            writeln!(
                f,
                "Balancer:        {} (set by the policy; the service declares {})",
                balancer.as_str(),
                s.balancer.as_str()
            )?;
        }
        writeln!(f, "Locality:        {}", s.locality)?;
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(f, "Labels:          {}", labels.join(", "))?;
        match &s.traffic.route {
            None => writeln!(f, "Route:           none (every call to the whole service)")?,
            Some(r) => {
                writeln!(f, "Route:           {}", r.object)?;
                for (i, rule) in r.spec.rules.iter().enumerate() {
                    write_rule(f, i, rule)?;
                }
                if !r
                    .spec
                    .rules
                    .last()
                    .is_some_and(|l| l.matches.is_catch_all())
                {
                    writeln!(
                        f,
                        "  otherwise:     the whole service, no timeout or retries of the route"
                    )?;
                }
            }
        }
        match &s.traffic.policy {
            None => writeln!(f, "Policy:          none")?,
            Some(p) => {
                writeln!(f, "Policy:          {}", p.object)?;
                write_policy(f, &p.spec, s)?;
            }
        }
        if s.traffic.authz.is_empty() {
            writeln!(
                f,
                "Authorization:   no AuthorizationPolicy (the mesh default decides)"
            )?;
        } else {
            writeln!(f, "Authorization:")?;
            for p in &s.traffic.authz {
                let scope = p
                    .spec
                    .service
                    .as_deref()
                    .map_or("its namespace", |_| "this service");
                writeln!(
                    f,
                    "  {:<14} {} {} rule(s), for {scope}",
                    p.object,
                    p.spec.action.as_str(),
                    p.spec.rules.len()
                )?;
            }
        }
        let hosts: Vec<&str> = s
            .hosts
            .iter()
            .map(|h| h.rsplit('/').next().unwrap_or(h))
            .collect();
        writeln!(
            f,
            "Hosts:           {} (the nodes whose calls may come as {})",
            tables::dash_if_empty(hosts.join(", ")),
            s.name
        )?;
        writeln!(f, "Seen by:         the proxy of {}", self.node)?;
        let rows: Vec<Vec<String>> = s
            .endpoints
            .iter()
            .map(|e| {
                let live = self.endpoints.iter().find(|l| l.id == e.id);
                vec![
                    e.id.clone(),
                    e.version.clone(),
                    e.addr.to_string(),
                    match live.map(|l| l.ejected_for_ms) {
                        None => "not in its table yet".into(),
                        Some(None) => "ready".into(),
                        Some(Some(0)) => "ejected, probe due".into(),
                        Some(Some(ms)) => format!("ejected for {ms} ms"),
                    },
                    live.map_or("-".into(), |l| tables::dash_if_empty(l.subsets.join(","))),
                    live.and_then(|l| l.breaker.clone())
                        .unwrap_or_else(|| "-".into()),
                    live.map_or("-".into(), |l| l.in_flight.to_string()),
                    live.map_or("-".into(), |l| format!("{:.2}", l.ewma_ms)),
                ]
            })
            .collect();
        write!(
            f,
            "{}",
            tables::render(
                &[
                    tables::Column::fit("ENDPOINT"),
                    tables::Column::fit("VERSION"),
                    tables::Column::fit("ADDRESS"),
                    tables::Column::fit("STATE"),
                    tables::Column::fit("SUBSETS"),
                    tables::Column::fit("BREAKER"),
                    tables::Column::right("IN FLIGHT", 9),
                    tables::Column::right("EWMA MS", 7),
                ],
                &rows,
            )
        )
    }
}

/// `describe node`: what the master knows of a node.
pub(crate) struct NodeDetails<'a>(pub(crate) &'a AgentRecord);

impl fmt::Display for NodeDetails<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        writeln!(f, "Node:            {}", n.id)?;
        writeln!(f, "Identity:        {}", n.identity)?;
        writeln!(f, "State:           {}", n.state)?;
        writeln!(f, "Draining:        {}", n.draining)?;
        writeln!(
            f,
            "Address:         {}",
            n.addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
        )?;
        writeln!(f, "Resources:       {}", n.resources)?;
        writeln!(
            f,
            "Attributes:      {}",
            n.attrs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(f, "Actor types:     {}", n.actor_types.join(", "))?;
        writeln!(f, "Running:         {}", n.running.join(", "))?;
        writeln!(f, "Joined with:     token {}", n.token_id)?;
        writeln!(f, "Last heartbeat:  {}", ago(n.last_heartbeat))?;
        writeln!(f, "Cert expires:    {}", until(n.cert_expiry))?;
        Ok(())
    }
}

/// `describe deployment`: its spec, standing, why replicas are not placed, its tasks.
pub(crate) struct DeploymentDetails<'a>(pub(crate) &'a DeploymentDescription);

impl fmt::Display for DeploymentDetails<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let m = &d.manifest;
        let s = &m.spec;
        let what = match (&s.actor, &s.command) {
            (Some(a), _) => format!("actor {a}"),
            (None, Some(c)) => format!("command {} {}", c.path, c.args.join(" "))
                .trim_end()
                .to_string(),
            (None, None) => "-".into(),
        };
        writeln!(f, "Deployment:      {}/{}", m.namespace, m.name)?;
        writeln!(f, "Runs:            {what}")?;
        writeln!(f, "Version:         {}", s.version)?;
        writeln!(f,
            "Replicas:        {} asked, {} running, {} starting, {} of older versions, {} ended for good",
            s.replicas, d.summary.running, d.summary.pending, d.summary.old, d.summary.done
        )?;
        writeln!(f, "Resources:       need {}, want {}", d.need, d.want)?;
        writeln!(f, "Priority:        {}", s.priority)?;
        let c = &s.constraints;
        let mut cons = Vec::new();
        if let Some(a) = &c.spread_by {
            cons.push(format!("spread by {a}"));
        }
        if c.unique_node {
            cons.push("unique node".into());
        }
        for (k, v) in &c.node_selector {
            cons.push(format!("{k}={v}"));
        }
        writeln!(
            f,
            "Constraints:     {}",
            if cons.is_empty() {
                "-".into()
            } else {
                cons.join(", ")
            }
        )?;
        writeln!(
            f,
            "Restart:         {} (backoff {} to {}; {} failure(s) in a row)",
            s.restart.policy, s.restart.backoff_initial, s.restart.backoff_max, d.failures
        )?;
        writeln!(
            f,
            "Rolling update:  max surge {}, max unavailable {}",
            s.rolling_update.max_surge, s.rolling_update.max_unavailable
        )?;
        writeln!(
            f,
            "Not placed:      {}",
            d.summary.unplaced.as_deref().unwrap_or("-")
        )?;
        writeln!(f)?;
        write!(f, "{}", tables::tasks(&d.tasks))?;
        Ok(())
    }
}

/// `describe task`: its state, and what its agent says (pid, sandbox, limits).
pub(crate) struct TaskDetails<'a>(pub(crate) &'a TaskDescription);

impl fmt::Display for TaskDetails<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        writeln!(f, "Task:            {}", d.task_id)?;
        writeln!(f, "Agent:           {}", d.agent)?;
        if let Some(e) = &d.endpoint {
            writeln!(
                f,
                "Endpoint:        actor {} on {} at {}",
                e.actor, e.node, e.addr
            )?;
        }
        if let Some(e) = &d.entry {
            writeln!(
                f,
                "Deployment:      {} (version {})",
                e.deployment, e.version
            )?;
            if e.stopping {
                writeln!(
                    f,
                    "State:           Killing (killed; its resources are held until it ends)"
                )?;
            } else {
                writeln!(f, "State:           {:?}", e.state)?;
            }
            writeln!(f, "Resources:       {}", e.resources)?;
            if !e.message.is_empty() {
                writeln!(f, "Message:         {}", e.message)?;
            }
        }
        if let Some(s) = &d.last_status {
            writeln!(
                f,
                "Last report:     {:?}{}",
                s.state,
                if s.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.message)
                }
            )?;
        }
        match (&d.on_agent, &d.agent_error) {
            (Some(a), _) => {
                writeln!(f, "Runs:            {}", a.what)?;
                writeln!(f, "On the agent:    {}", a.status)?;
                if let Some(pid) = a.pid {
                    writeln!(f, "Pid:             {pid}")?;
                }
                if let Some(dir) = &a.sandbox {
                    writeln!(f, "Sandbox:         {dir}")?;
                }
                writeln!(
                    f,
                    "Limits:          {}",
                    if a.limits.is_empty() {
                        "none".to_string()
                    } else {
                        a.limits.join(", ")
                    }
                )?;
            }
            (None, Some(e)) => writeln!(f, "On the agent:    unknown ({e})")?,
            (None, None) => {}
        }
        Ok(())
    }
}
