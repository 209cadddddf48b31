//! The tables the CLI prints: one layout ([`render`]) and, per kind of row, its columns and
//! cells. `get` prints them; `dev` prints the nodes table, `describe deployment` the tasks.

use std::time::{Duration, SystemTime};

use actormesh_master::deployments::{DeploymentSummary, TaskEntry};
use actormesh_master::membership::AgentRecord;
use actormesh_master::scheduler::FrameworkSummary;
use actormesh_master::services::{ProxyStatusReport, ServiceSummary};

use actormesh::mesh::protocol::ProxyConfig;
use actormesh::mesh::Endpoint;

/// Which side of its column a cell (and the header) keeps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// How wide a column is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    /// As wide as its header or widest cell: the column lines up whatever the rows hold.
    Fit,
    /// At least this many characters: a longer cell pushes only the rest of its own line.
    AtLeast(usize),
}

/// One column of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Column {
    header: &'static str,
    width: Width,
    align: Align,
    /// Spaces between this column and the one before it.
    gap: usize,
}

impl Column {
    /// A left-aligned column as wide as its widest cell.
    pub(crate) const fn fit(header: &'static str) -> Self {
        Self::new(header, Width::Fit, Align::Left)
    }

    /// A left-aligned column at least `width` wide.
    pub(crate) const fn left(header: &'static str, width: usize) -> Self {
        Self::new(header, Width::AtLeast(width), Align::Left)
    }

    /// A right-aligned column (numbers) at least `width` wide.
    pub(crate) const fn right(header: &'static str, width: usize) -> Self {
        Self::new(header, Width::AtLeast(width), Align::Right)
    }

    /// `spaces` between this column and the one before it (one unless said).
    pub(crate) const fn gap(self, spaces: usize) -> Self {
        Self {
            gap: spaces,
            ..self
        }
    }

    const fn new(header: &'static str, width: Width, align: Align) -> Self {
        Self {
            header,
            width,
            align,
            gap: 1,
        }
    }
}

/// The header line and one line per row, each ending in a newline. The last column is not
/// padded, so that long free text (a message, a reason) does not drag spaces behind it.
pub(crate) fn render(columns: &[Column], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| match c.width {
            Width::AtLeast(w) => w,
            Width::Fit => rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(String::len)
                .fold(c.header.len(), usize::max),
        })
        .collect();
    let mut out = String::new();
    push_line(&mut out, columns, &widths, columns.iter().map(|c| c.header));
    for r in rows {
        push_line(&mut out, columns, &widths, r.iter().map(String::as_str));
    }
    out
}

fn push_line<'a>(
    out: &mut String,
    columns: &[Column],
    widths: &[usize],
    cells: impl Iterator<Item = &'a str>,
) {
    for (i, ((cell, c), w)) in cells.zip(columns).zip(widths).enumerate() {
        if i > 0 {
            out.extend(std::iter::repeat_n(' ', c.gap));
        }
        let w = if i + 1 == columns.len() { 0 } else { *w };
        out.push_str(&match c.align {
            Align::Left => format!("{cell:<w$}"),
            Align::Right => format!("{cell:>w$}"),
        });
    }
    out.push('\n');
}

const NODES: &[Column] = &[
    Column::fit("ID"),
    Column::fit("STATE").gap(2),
    Column::fit("DRAINING").gap(2),
    Column::fit("ADDRESS").gap(2),
    Column::fit("RESOURCES").gap(2),
    Column::fit("ATTRIBUTES").gap(2),
    Column::fit("LAST HEARTBEAT").gap(2),
    Column::fit("CERT EXPIRES").gap(2),
];

/// Nodes: state, whether draining, address, resources, attributes, heartbeat, certificate.
pub(crate) fn nodes(nodes: &[AgentRecord]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                n.state.to_string(),
                if n.draining { "yes" } else { "no" }.into(),
                n.addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                n.resources.to_string(),
                n.attrs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                ago(n.last_heartbeat),
                until(n.cert_expiry),
            ]
        })
        .collect();
    render(NODES, &rows)
}

const DEPLOYMENTS: &[Column] = &[
    Column::left("NAME", 24),
    Column::left("VERSION", 8),
    Column::right("REPLICAS", 8),
    Column::right("RUNNING", 8),
    Column::right("PENDING", 8),
    Column::left("WHY NOT PLACED", 0).gap(2),
];

/// Deployments: replicas asked for, running, pending, and why any are not placed.
pub(crate) fn deployments(list: &[DeploymentSummary]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            vec![
                format!("{}/{}", d.namespace, d.name),
                d.version.clone(),
                d.replicas.to_string(),
                d.running.to_string(),
                d.pending.to_string(),
                d.unplaced.clone().unwrap_or_default(),
            ]
        })
        .collect();
    render(DEPLOYMENTS, &rows)
}

const TASKS: &[Column] = &[
    Column::left("TASK", 28),
    Column::left("OWNER", 20),
    Column::left("VERSION", 8),
    Column::left("AGENT", 12),
    Column::left("STATE", 10),
    Column::left("RESOURCES", 22),
    Column::fit("ENDPOINT"),
    Column::left("MESSAGE", 0).gap(2),
];

/// An actor task's endpoint as `address/actor` (what `node.actor_ref(address, actor)`
/// takes), `-` for a task that serves no actor.
pub(crate) fn task_endpoint(t: &TaskEntry) -> String {
    t.endpoint
        .as_ref()
        .map_or_else(|| "-".to_string(), |e| format!("{}/{}", e.addr, e.actor))
}

/// Tasks: owner (deployment or framework), version, agent, state, resources, endpoint,
/// message.
pub(crate) fn tasks(list: &[TaskEntry]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.deployment.clone(),
                t.version.clone(),
                t.agent.clone(),
                // Killed, but its end not reported yet: it still holds its resources.
                if t.stopping {
                    "Killing".to_string()
                } else {
                    format!("{:?}", t.state)
                },
                t.resources.to_string(),
                task_endpoint(t),
                t.message.clone(),
            ]
        })
        .collect();
    render(TASKS, &rows)
}

const FRAMEWORKS: &[Column] = &[
    Column::left("ID", 20),
    Column::left("NAME", 24),
    Column::left("ROLE", 12),
    Column::left("STATE", 10),
    Column::right("WEIGHT", 6),
    Column::right("TASKS", 6),
    Column::right("OFFERS", 6),
    Column::right("SHARE", 7),
    Column::left("ALLOCATED", 0).gap(2),
];

/// Frameworks: role, connection state, weight, tasks, offers, weighted share, allocation.
pub(crate) fn frameworks(list: &[FrameworkSummary]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|f| {
            let state = match (f.connected, f.suppressed) {
                (false, _) => "failover",
                (true, true) => "suppressed",
                (true, false) => "active",
            };
            vec![
                f.id.clone(),
                f.name.clone(),
                f.role.clone(),
                state.to_string(),
                f.weight.to_string(),
                f.tasks.to_string(),
                f.offers.to_string(),
                format!("{:.3}", f.weighted_share),
                f.allocated.to_string(),
            ]
        })
        .collect();
    render(FRAMEWORKS, &rows)
}

/// How long ago `t` was: `1.5s ago`, `3m ago`, or `-` (never, or in the future).
const SERVICES: &[Column] = &[
    Column::fit("NAME"),
    Column::fit("BALANCER").gap(2),
    Column::fit("LOCALITY").gap(2),
    Column::right("ENDPOINTS", 9).gap(2),
    Column::fit("VERSIONS").gap(2),
];

/// Services: balancer, locality, endpoints ready, versions.
pub(crate) fn services(list: &[ServiceSummary]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.balancer.as_str().into(),
                if s.locality { "on" } else { "off" }.into(),
                s.endpoints.to_string(),
                dash_if_empty(s.versions.join(",")),
            ]
        })
        .collect();
    render(SERVICES, &rows)
}

const API_TOKENS: &[Column] = &[
    Column::fit("ID"),
    Column::fit("HOLDER").gap(2),
    Column::fit("SCOPE").gap(2),
    Column::fit("EXPIRES").gap(2),
    Column::fit("REVOKED").gap(2),
];

fn at_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// Operator API tokens.
pub(crate) fn api_tokens(tokens: &[actormesh_master::access::ApiTokenView]) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.holder.clone(),
                t.scope.as_str().to_string(),
                t.expires_ms
                    .map_or_else(|| "never".to_string(), |e| until(Some(at_ms(e)))),
                t.revoked_ms
                    .map_or_else(|| "-".to_string(), |r| ago(Some(at_ms(r)))),
            ]
        })
        .collect();
    render(API_TOKENS, &rows)
}

const AUDIT: &[Column] = &[
    Column::fit("WHEN"),
    Column::fit("HOLDER").gap(2),
    Column::fit("SCOPE").gap(2),
    Column::fit("STATUS").gap(2),
    Column::fit("WHAT").gap(2),
    Column::fit("OBJECT").gap(2),
];

/// The audit log, oldest first.
pub(crate) fn audit(entries: &[actormesh_master::access::AuditEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                actormesh_master::timestamp::format(at_ms(e.at_ms)),
                e.holder.clone(),
                e.scope.as_str().to_string(),
                e.status.to_string(),
                e.what.clone(),
                e.object.clone().unwrap_or_default(),
            ]
        })
        .collect();
    render(AUDIT, &rows)
}

const TRAFFIC: &[Column] = &[
    Column::fit("KIND"),
    Column::fit("NAME").gap(2),
    Column::fit("SERVICE").gap(2),
    Column::fit("DETAIL").gap(2),
];

/// The applied Routes and DestinationPolicies.
pub(crate) fn traffic(
    routes: &[actormesh_master::manifest::RouteManifest],
    policies: &[actormesh_master::manifest::PolicyManifest],
    authz: &[actormesh_master::manifest::AuthzManifest],
) -> String {
    let mut rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            vec![
                "Route".into(),
                format!("{}/{}", r.namespace, r.name),
                r.spec.service.clone(),
                format!("{} rule(s)", r.spec.rules.len()),
            ]
        })
        .collect();
    rows.extend(policies.iter().map(|p| {
        let subsets: Vec<&str> = p.spec.subsets.iter().map(|s| s.name.as_str()).collect();
        vec![
            "DestinationPolicy".into(),
            format!("{}/{}", p.namespace, p.name),
            p.spec.service.clone(),
            if subsets.is_empty() {
                "no subsets".into()
            } else {
                format!("subsets {}", subsets.join(","))
            },
        ]
    }));
    rows.extend(authz.iter().map(|p| {
        vec![
            "AuthorizationPolicy".into(),
            format!("{}/{}", p.namespace, p.name),
            p.spec
                .service
                .clone()
                .unwrap_or_else(|| format!("{}/*", p.namespace)),
            format!("{} {} rule(s)", p.spec.action.as_str(), p.spec.rules.len()),
        ]
    }));
    render(TRAFFIC, &rows)
}

const ENDPOINTS: &[Column] = &[
    Column::fit("ID"),
    Column::fit("NODE").gap(2),
    Column::fit("ADDRESS").gap(2),
    Column::fit("ACTOR").gap(2),
    Column::fit("VERSION").gap(2),
    Column::right("WEIGHT", 6).gap(2),
    Column::fit("ZONE").gap(2),
    Column::fit("LABELS").gap(2),
];

/// A service's endpoints.
pub(crate) fn endpoints(list: &[Endpoint]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                e.id.clone(),
                e.node.clone(),
                e.addr.to_string(),
                e.actor.clone(),
                e.version.clone(),
                e.weight.to_string(),
                e.zone.clone().unwrap_or_else(|| "-".into()),
                dash_if_empty(
                    e.labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ]
        })
        .collect();
    render(ENDPOINTS, &rows)
}

const PROXIES: &[Column] = &[
    Column::fit("NODE"),
    Column::fit("ADDRESS").gap(2),
    Column::right("APPLIED", 7).gap(2),
    Column::right("BEHIND", 6).gap(2),
    Column::right("LAST PUSH", 9).gap(2),
    Column::fit("STATUS").gap(2),
];

/// Every proxy: version applied, versions behind, last push latency, STALE; a first line
/// with the registry's version.
pub(crate) fn proxy_status(r: &ProxyStatusReport) -> String {
    let rows: Vec<Vec<String>> = r
        .proxies
        .iter()
        .map(|p| {
            let status = if p.stale {
                "STALE"
            } else if p.behind > 0 || p.in_flight {
                "SYNCING"
            } else {
                "SYNCED"
            };
            let status = match &p.last_error {
                Some(e) => format!("{status} ({e})"),
                None => status.to_string(),
            };
            vec![
                p.node.clone(),
                p.addr.to_string(),
                p.applied.map_or_else(|| "-".into(), |v| v.to_string()),
                p.behind.to_string(),
                p.last_push_latency_ms
                    .map_or_else(|| "-".into(), |ms| format!("{ms:.1}ms")),
                status,
            ]
        })
        .collect();
    let held = if r.held {
        " (pushes held while agents register again after a master restart)"
    } else {
        ""
    };
    format!(
        "registry version {}{held}\n{}",
        r.version,
        render(PROXIES, &rows)
    )
}

const APPLIED: &[Column] = &[
    Column::fit("SERVICE"),
    Column::fit("BALANCER").gap(2),
    Column::fit("ENDPOINT").gap(2),
    Column::fit("NODE").gap(2),
    Column::fit("ADDRESS").gap(2),
    Column::fit("VERSION").gap(2),
    Column::right("WEIGHT", 6).gap(2),
];

/// What a proxy applied: its version, each service's endpoints, the revoked identities.
pub(crate) fn proxy_config(c: &ProxyConfig) -> String {
    let mut rows = Vec::new();
    for s in &c.services {
        if s.endpoints.is_empty() {
            rows.push(vec![
                s.name.to_string(),
                s.balancer.as_str().into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for e in &s.endpoints {
            rows.push(vec![
                s.name.to_string(),
                s.balancer.as_str().into(),
                e.id.clone(),
                e.node.clone(),
                e.addr.to_string(),
                e.version.clone(),
                e.weight.to_string(),
            ]);
        }
    }
    let mut out = match c.version {
        Some(v) => format!("applied version {v}\n"),
        None => "applied nothing yet\n".to_string(),
    };
    out.push_str(&render(APPLIED, &rows));
    if !c.revoked.is_empty() {
        out.push_str("revoked:\n");
        for r in &c.revoked {
            out.push_str(&format!("  {}\n", r.id));
        }
    }
    out
}

pub(crate) fn dash_if_empty(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

pub(crate) fn ago(t: Option<SystemTime>) -> String {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) if d < Duration::from_secs(120) => format!("{:.1}s ago", d.as_secs_f64()),
        Some(d) => format!("{}m ago", d.as_secs() / 60),
        None => "-".into(),
    }
}

/// How long until `t`: `in 23h59m`, `expired`, or `-` (not known).
pub(crate) fn until(t: Option<SystemTime>) -> String {
    match t.map(|t| t.duration_since(SystemTime::now())) {
        Some(Ok(d)) => format!("in {}h{:02}m", d.as_secs() / 3600, d.as_secs() % 3600 / 60),
        Some(Err(_)) => "expired".into(),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actormesh::task::TaskState;

    pub(crate) fn deployment(
        name: &str,
        running: u32,
        unplaced: Option<&str>,
    ) -> DeploymentSummary {
        DeploymentSummary {
            namespace: "default".into(),
            name: name.into(),
            version: "v1".into(),
            replicas: 2,
            running,
            pending: 2 - running,
            old: 0,
            done: 0,
            unplaced: unplaced.map(Into::into),
            stalled: false,
        }
    }

    fn task(id: &str, stopping: bool, message: &str) -> TaskEntry {
        TaskEntry {
            id: id.into(),
            deployment: "default/web".into(),
            version: "v1".into(),
            agent: "n1".into(),
            state: TaskState::Running,
            message: message.into(),
            resources: "cpus:0.5;mem:64MiB".parse().unwrap(),
            seq: 0,
            running_since: None,
            healthy: None,
            stopping,
            endpoint: None,
        }
    }

    #[test]
    fn fitted_columns_line_up_on_the_widest_cell_two_spaces_apart() {
        const COLUMNS: &[Column] = &[
            Column::fit("ID"),
            Column::fit("STATE").gap(2),
            Column::fit("AT").gap(2),
        ];
        let rows = vec![
            vec!["n1".to_string(), "Unreachable".into(), "-".into()],
            vec![
                "node-two".to_string(),
                "Active".into(),
                "127.0.0.1:7000".into(),
            ],
        ];
        assert_eq!(
            render(COLUMNS, &rows),
            "ID        STATE        AT\n\
             n1        Unreachable  -\n\
             node-two  Active       127.0.0.1:7000\n"
        );
    }

    #[test]
    fn a_cell_longer_than_its_fixed_width_pushes_only_its_own_line() {
        let list = [
            deployment("web", 2, None),
            deployment(
                "a-name-longer-than-24-chars",
                1,
                Some("no agent with cpus:8"),
            ),
        ];
        // Numbers keep to the right; an empty last cell still leaves its two-space gap.
        assert_eq!(
            deployments(&list),
            "NAME                     VERSION  REPLICAS  RUNNING  PENDING  WHY NOT PLACED\n\
             default/web              v1              2        2        0  \n\
             default/a-name-longer-than-24-chars v1              2        1        1  no agent with cpus:8\n"
        );
    }

    #[test]
    fn a_killed_task_still_in_its_grace_reads_killing() {
        let mut serving = task("default.web-1", false, "");
        serving.endpoint = Some(actormesh_master::deployments::TaskEndpoint {
            node: "spiffe://cluster.local/node/n1".into(),
            addr: "127.0.0.1:7100".parse().unwrap(),
            actor: "default.web-1".into(),
        });
        let text = tasks(&[serving, task("default.web-2", true, "killed")]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "TASK                         OWNER                VERSION  AGENT        STATE      RESOURCES              ENDPOINT                      MESSAGE",
                "default.web-1                default/web          v1       n1           Running    cpus:0.5;mem:64MiB     127.0.0.1:7100/default.web-1  ",
                "default.web-2                default/web          v1       n1           Killing    cpus:0.5;mem:64MiB     -                             killed",
            ]
        );
    }

    #[test]
    fn frameworks_show_their_connection_and_a_share_of_three_decimals() {
        let framework = |id: &str, connected, suppressed| FrameworkSummary {
            id: id.into(),
            name: "etl".into(),
            role: "analytics".into(),
            connected,
            suppressed,
            tasks: 3,
            offers: 1,
            allocated: "cpus:1".parse().unwrap(),
            weighted_share: 0.25,
            weight: 2.0,
        };
        let text = frameworks(&[
            framework("f1", true, false),
            framework("f2", true, true),
            framework("f3", false, true),
        ]);
        assert_eq!(
            text,
            "ID                   NAME                     ROLE         STATE      WEIGHT  TASKS OFFERS   SHARE  ALLOCATED\n\
             f1                   etl                      analytics    active          2      3      1   0.250  cpus:1\n\
             f2                   etl                      analytics    suppressed      2      3      1   0.250  cpus:1\n\
             f3                   etl                      analytics    failover        2      3      1   0.250  cpus:1\n"
        );
    }

    fn proxy(
        node: &str,
        applied: Option<u64>,
        behind: u64,
        stale: bool,
    ) -> actormesh_master::services::ProxyStatus {
        actormesh_master::services::ProxyStatus {
            node: node.into(),
            addr: "127.0.0.1:7100".parse().unwrap(),
            applied,
            current: 9,
            behind,
            last_push_latency_ms: applied.map(|_| 1.5),
            stale,
            in_flight: false,
            last_error: stale.then(|| "deadline has elapsed".to_string()),
        }
    }

    #[test]
    fn proxy_status_says_the_version_and_marks_stale_proxies() {
        let r = ProxyStatusReport {
            version: 9,
            held: false,
            proxies: vec![
                proxy("spiffe://td/node/a", Some(9), 0, false),
                proxy("spiffe://td/node/b", Some(7), 2, true),
                proxy("spiffe://td/node/c", None, 9, false),
            ],
        };
        assert_eq!(
            proxy_status(&r),
            "registry version 9\n\
             NODE                ADDRESS         APPLIED  BEHIND  LAST PUSH  STATUS\n\
             spiffe://td/node/a  127.0.0.1:7100        9       0      1.5ms  SYNCED\n\
             spiffe://td/node/b  127.0.0.1:7100        7       2      1.5ms  STALE (deadline has elapsed)\n\
             spiffe://td/node/c  127.0.0.1:7100        -       9          -  SYNCING\n"
        );
        let held = ProxyStatusReport {
            held: true,
            proxies: vec![],
            ..r
        };
        assert!(proxy_status(&held).starts_with("registry version 9 (pushes held"));
    }

    #[test]
    fn services_and_endpoints_show_what_callers_route_by() {
        let e = Endpoint {
            id: "default.web-1".into(),
            node: "spiffe://td/node/a".into(),
            addr: "127.0.0.1:7100".parse().unwrap(),
            actor: "default.web-1".into(),
            version: "v2".into(),
            labels: [("tier", "front"), ("version", "v2")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            weight: 3,
            zone: None,
        };
        assert_eq!(
            endpoints(std::slice::from_ref(&e)),
            "ID             NODE                ADDRESS         ACTOR          VERSION  WEIGHT  ZONE  LABELS\n\
             default.web-1  spiffe://td/node/a  127.0.0.1:7100  default.web-1  v2            3  -     tier=front,version=v2\n"
        );
        let s = ServiceSummary {
            name: "default/web".into(),
            balancer: actormesh::mesh::BalancerKind::RoundRobin,
            locality: false,
            labels: Default::default(),
            endpoints: 0,
            versions: vec![],
        };
        assert_eq!(
            services(&[s]),
            "NAME         BALANCER     LOCALITY  ENDPOINTS  VERSIONS\n\
             default/web  round_robin  off               0  -\n"
        );
        let c = ProxyConfig {
            version: Some(4),
            services: vec![actormesh::mesh::Service {
                name: "default/web".parse().unwrap(),
                labels: Default::default(),
                balancer: actormesh::mesh::BalancerKind::P2c,
                locality: true,
                endpoints: vec![e],
                traffic: Default::default(),
                hosts: Vec::new(),
            }],
            revoked: vec![actormesh::mesh::Revocation {
                id: "spiffe://td/node/gone".into(),
                until_ms: 1,
            }],
            mesh: Default::default(),
        };
        let text = proxy_config(&c);
        assert!(text.starts_with("applied version 4\nSERVICE"), "{text}");
        assert!(
            text.contains("default/web  p2c       default.web-1"),
            "{text}"
        );
        assert!(
            text.ends_with("revoked:\n  spiffe://td/node/gone\n"),
            "{text}"
        );
    }
}
