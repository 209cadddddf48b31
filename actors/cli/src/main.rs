//! The `actormesh` command.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use actormesh::agent::{self, AgentConfig};
use actormesh::resources::Resources;
use actormesh::transport::pki::CertificateAuthority;
use actormesh::transport::SpiffeId;
use actormesh_cli::ApiClient;
use actormesh_master::allocator::RoleConfig;
use actormesh_master::membership::{AgentRecord, DetectorConfig};
use actormesh_master::{self as master, MasterConfig};
use anyhow::Context as _;
use clap::Parser;

mod args;

use args::{
    ApplyArgs, CaCommand, Cli, Command, DeleteWhat, DescribeWhat, DevArgs, DrainWhat, GetWhat,
    LogsArgs, MasterArgs, Output, TokenCommand,
};

impl MasterArgs {
    fn config(&self) -> anyhow::Result<MasterConfig> {
        if self.unreachable_after <= self.heartbeat * 2 {
            anyhow::bail!(
                "--unreachable-after ({:?}) must be more than twice --heartbeat ({:?}), or healthy agents would be declared unreachable",
                self.unreachable_after,
                self.heartbeat
            );
        }
        if self.gone_after <= self.unreachable_after {
            anyhow::bail!("--gone-after must be longer than --unreachable-after");
        }
        if self.agent_cert_ttl > Duration::from_secs(366 * 24 * 3600) {
            anyhow::bail!("--agent-cert-ttl must be at most a year (366d)");
        }
        let mut c = MasterConfig::new(self.data_dir.clone());
        c.listen = self.listen;
        c.bootstrap = self.bootstrap;
        c.api = self.api;
        c.trust_domain = self.trust_domain.clone();
        c.ca_dir = self.ca.clone();
        c.detector = DetectorConfig {
            heartbeat_interval: self.heartbeat,
            unreachable_after: self.unreachable_after,
            gone_after: self.gone_after,
            max_removals_per_minute: self.max_removals_per_minute,
        };
        c.agent_cert_ttl = self.agent_cert_ttl;
        c.offer_timeout = self.offer_timeout;
        c.roles = self.roles()?;
        Ok(c)
    }

    fn roles(&self) -> anyhow::Result<BTreeMap<String, RoleConfig>> {
        let mut roles: BTreeMap<String, RoleConfig> = BTreeMap::new();
        for (role, w) in &self.role_weights {
            let weight: f64 = w.parse().ok().filter(|w: &f64| w.is_finite() && *w > 0.0).ok_or_else(|| {
                anyhow::anyhow!("--role-weight {role}={w}: the weight must be a number above 0, e.g. {role}=2")
            })?;
            roles.entry(role.clone()).or_default().weight = weight;
        }
        for (role, r) in &self.role_guarantees {
            let res: Resources = r
                .parse()
                .map_err(|e| anyhow::anyhow!("--role-guarantee {role}={r}: {e}"))?;
            roles.entry(role.clone()).or_default().guarantee = res;
        }
        for (role, r) in &self.role_limits {
            let res: Resources = r
                .parse()
                .map_err(|e| anyhow::anyhow!("--role-limit {role}={r}: {e}"))?;
            roles.entry(role.clone()).or_default().limit = Some(res);
        }
        for (role, c) in &roles {
            if let Some(limit) = &c.limit {
                if !limit.contains(&c.guarantee) {
                    anyhow::bail!(
                        "role {role}: the guarantee {} is above the limit {limit}",
                        c.guarantee
                    );
                }
            }
        }
        Ok(roles)
    }
}

/// that says how far it got and why the rest are not placed.
fn wait_for_replicas(client: &ApiClient, key: &str, timeout: Duration) -> anyhow::Result<()> {
    use actormesh_master::deployments::DeploymentSummary;
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
fn deployment_key(name: &str) -> anyhow::Result<String> {
    match name.split_once('/') {
        Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => {
            Ok(format!("{ns}/{n}"))
        }
        Some(_) => anyhow::bail!(
            "{name:?} is not a deployment name: expected namespace/name (e.g. default/web) or name"
        ),
        None => Ok(format!("default/{name}")),
    }
}

fn print_tasks(list: &[actormesh_master::deployments::TaskEntry]) {
    println!(
        "{:<28} {:<20} {:<8} {:<12} {:<10} {:<22} MESSAGE",
        "TASK", "OWNER", "VERSION", "AGENT", "STATE", "RESOURCES"
    );
    for t in list {
        println!(
            "{:<28} {:<20} {:<8} {:<12} {:<10} {:<22} {}",
            t.id,
            t.deployment,
            t.version,
            t.agent,
            // Killed, but its end not reported yet: it still holds its resources.
            if t.stopping {
                "Killing".to_string()
            } else {
                format!("{:?}", t.state)
            },
            t.resources.to_string(),
            t.message
        );
    }
}

fn describe_deployment(d: &actormesh_master::deployments::DeploymentDescription) {
    let m = &d.manifest;
    let s = &m.spec;
    let what = match (&s.actor, &s.command) {
        (Some(a), _) => format!("actor {a}"),
        (None, Some(c)) => format!("command {} {}", c.path, c.args.join(" "))
            .trim_end()
            .to_string(),
        (None, None) => "-".into(),
    };
    println!("Deployment:      {}/{}", m.namespace, m.name);
    println!("Runs:            {what}");
    println!("Version:         {}", s.version);
    println!(
        "Replicas:        {} asked, {} running, {} starting, {} of older versions, {} ended for good",
        s.replicas, d.summary.running, d.summary.pending, d.summary.old, d.summary.done
    );
    println!("Resources:       need {}, want {}", d.need, d.want);
    println!("Priority:        {}", s.priority);
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
    println!(
        "Constraints:     {}",
        if cons.is_empty() {
            "-".into()
        } else {
            cons.join(", ")
        }
    );
    println!(
        "Restart:         {} (backoff {} to {}; {} failure(s) in a row)",
        s.restart.policy, s.restart.backoff_initial, s.restart.backoff_max, d.failures
    );
    println!(
        "Rolling update:  max surge {}, max unavailable {}",
        s.rolling_update.max_surge, s.rolling_update.max_unavailable
    );
    println!(
        "Not placed:      {}",
        d.summary.unplaced.as_deref().unwrap_or("-")
    );
    println!();
    print_tasks(&d.tasks);
}

fn describe_task(d: &actormesh_master::TaskDescription) {
    println!("Task:            {}", d.task_id);
    println!("Agent:           {}", d.agent);
    if let Some(e) = &d.entry {
        println!("Deployment:      {} (version {})", e.deployment, e.version);
        if e.stopping {
            println!("State:           Killing (killed; its resources are held until it ends)");
        } else {
            println!("State:           {:?}", e.state);
        }
        println!("Resources:       {}", e.resources);
        if !e.message.is_empty() {
            println!("Message:         {}", e.message);
        }
    }
    if let Some(s) = &d.last_status {
        println!(
            "Last report:     {:?}{}",
            s.state,
            if s.message.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.message)
            }
        );
    }
    match (&d.on_agent, &d.agent_error) {
        (Some(a), _) => {
            println!("Runs:            {}", a.what);
            println!("On the agent:    {}", a.status);
            if let Some(pid) = a.pid {
                println!("Pid:             {pid}");
            }
            if let Some(dir) = &a.sandbox {
                println!("Sandbox:         {dir}");
            }
            println!(
                "Limits:          {}",
                if a.limits.is_empty() {
                    "none".to_string()
                } else {
                    a.limits.join(", ")
                }
            );
        }
        (None, Some(e)) => println!("On the agent:    unknown ({e})"),
        (None, None) => {}
    }
}

fn ago(t: Option<SystemTime>) -> String {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) if d < Duration::from_secs(120) => format!("{:.1}s ago", d.as_secs_f64()),
        Some(d) => format!("{}m ago", d.as_secs() / 60),
        None => "-".into(),
    }
}

fn until(t: Option<SystemTime>) -> String {
    match t.map(|t| t.duration_since(SystemTime::now())) {
        Some(Ok(d)) => format!("in {}h{:02}m", d.as_secs() / 3600, d.as_secs() % 3600 / 60),
        Some(Err(_)) => "expired".into(),
        None => "-".into(),
    }
}

fn print_nodes(nodes: &[AgentRecord]) {
    let header = [
        "ID",
        "STATE",
        "DRAINING",
        "ADDRESS",
        "RESOURCES",
        "ATTRIBUTES",
        "LAST HEARTBEAT",
        "CERT EXPIRES",
    ];
    let rows: Vec<[String; 8]> = nodes
        .iter()
        .map(|n| {
            [
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
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(header.to_vec()));
    for r in &rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
}

fn describe(n: &AgentRecord) {
    println!("Node:            {}", n.id);
    println!("Identity:        {}", n.identity);
    println!("State:           {}", n.state);
    println!("Draining:        {}", n.draining);
    println!(
        "Address:         {}",
        n.addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
    );
    println!("Resources:       {}", n.resources);
    println!(
        "Attributes:      {}",
        n.attrs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("Actor types:     {}", n.actor_types.join(", "));
    println!("Running:         {}", n.running.join(", "));
    println!("Joined with:     token {}", n.token_id);
    println!("Last heartbeat:  {}", ago(n.last_heartbeat));
    println!("Cert expires:    {}", until(n.cert_expiry));
}

fn run_system<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    actix::System::new().block_on(f)
}

async fn wait_for_ctrl_c() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ca(CaCommand::Init {
            trust_domain,
            out,
            ttl,
        }) => {
            let ca = CertificateAuthority::generate(&trust_domain, ttl)?;
            ca.save(&out)?;
            println!(
                "created CA for trust domain {trust_domain} in {} (valid {} days)",
                out.display(),
                ttl.as_secs() / 86400
            );
        }
        Command::Ca(CaCommand::Issue {
            ca,
            identity,
            out,
            ttl,
        }) => {
            let ca = CertificateAuthority::load(&ca)?;
            let id = SpiffeId::parse(&identity)?;
            let cert = ca.issue(&id, ttl)?;
            cert.save(&out)?;
            println!(
                "issued {id} into {} (valid {}s)",
                out.display(),
                ttl.as_secs()
            );
        }
        Command::Master(args) => {
            let config = args.config()?;
            run_system(async move {
                let m = master::start(config).await?;
                println!(
                    "master ready: mesh {} bootstrap {} api http://{} ca-fingerprint {}",
                    m.node.local_addr(),
                    m.bootstrap,
                    m.api,
                    m.ca_fingerprint
                );
                println!("api token file: {}", m.api_token_file.display());
                until_stopped(&m).await
            })?;
        }
        Command::Agent(args) => {
            let resources = args
                .resources
                .as_deref()
                .map(str::parse::<Resources>)
                .transpose()?;
            let mut reserved: BTreeMap<String, Resources> = BTreeMap::new();
            for (role, r) in &args.reserve {
                let res: Resources = r
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--reserve {role}={r}: {e}"))?;
                let sum = reserved.remove(role).unwrap_or_default().plus(&res);
                reserved.insert(role.clone(), sum);
            }
            let config = AgentConfig {
                join: args.join,
                token: args.token,
                data_dir: args.data_dir,
                listen: args.listen,
                name: args.name,
                resources,
                attrs: args.attrs.into_iter().collect::<BTreeMap<_, _>>(),
                actor_types: Vec::new(),
                reserved,
                host: if args.demo_actors {
                    actormesh_cli::demo::host()
                } else {
                    Default::default()
                },
            };
            run_system(async move {
                let a = agent::start(config).await?;
                println!("agent {} ready on {}", a.agent_id, a.node.local_addr());
                let mut removed = a.removed.clone();
                tokio::select! {
                    r = wait_for_ctrl_c() => r,
                    reason = removed.wait_for(|r| r.is_some()) => {
                        let reason = reason.map(|r| r.clone().unwrap_or_default()).unwrap_or_default();
                        anyhow::bail!("this agent was removed from the cluster: {reason}")
                    }
                }
            })?;
        }
        Command::Token(TokenCommand::Create { ttl, role: _, api }) => {
            let v = api.client()?.call(
                "POST",
                "/v1/tokens",
                Some(serde_json::json!({ "ttl_secs": ttl.as_secs().max(1), "role": "agent" })),
            )?;
            match api.output {
                Output::Json => println!("{v}"),
                Output::Table => println!("{}", v["token"].as_str().unwrap_or_default()),
            }
        }
        Command::Get {
            what: GetWhat::Nodes { api },
        } => {
            let v = api.client()?.call("GET", "/v1/nodes", None)?;
            match api.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => print_nodes(&serde_json::from_value::<Vec<AgentRecord>>(v)?),
            }
        }
        Command::Describe {
            what: DescribeWhat::Node { id, api },
        } => {
            let v = api
                .client()?
                .call("GET", &format!("/v1/nodes/{id}"), None)?;
            match api.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => describe(&serde_json::from_value(v)?),
            }
        }
        Command::Describe {
            what: DescribeWhat::Deployment { name, api },
        } => {
            let key = deployment_key(&name)?;
            let v = api
                .client()?
                .call("GET", &format!("/v1/deployments/{key}"), None)?;
            match api.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => describe_deployment(&serde_json::from_value(v)?),
            }
        }
        Command::Describe {
            what: DescribeWhat::Task { id, api },
        } => {
            let v = api
                .client()?
                .call("GET", &format!("/v1/tasks/{id}"), None)?;
            match api.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => describe_task(&serde_json::from_value(v)?),
            }
        }
        Command::Logs(LogsArgs {
            task,
            stderr,
            bytes,
            api,
        }) => {
            let stream = if stderr { "stderr" } else { "stdout" };
            let v = api.client()?.call(
                "GET",
                &format!("/v1/tasks/{task}/logs?stream={stream}&bytes={bytes}"),
                None,
            )?;
            match api.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => {
                    let log: actormesh::protocol::TaskLog = serde_json::from_value(v)?;
                    if log.skipped_bytes > 0 {
                        eprintln!(
                            "[{} earlier bytes not shown; --bytes shows more]",
                            log.skipped_bytes
                        );
                    }
                    print!("{}", log.text);
                }
            }
        }
        Command::Drain {
            what: DrainWhat::Node { id, api },
        } => {
            let v = api
                .client()?
                .call("POST", &format!("/v1/nodes/{id}/drain"), None)?;
            match api.output {
                Output::Json => println!("{v}"),
                Output::Table => {
                    println!("node {id} is draining: no new work will be placed on it")
                }
            }
        }
        Command::Delete {
            what: DeleteWhat::Deployment { name, api },
        } => {
            let key = deployment_key(&name)?;
            let v = api
                .client()?
                .call("DELETE", &format!("/v1/deployments/{key}"), None)?;
            match api.output {
                Output::Json => println!("{v}"),
                Output::Table => println!("deleted {key}: its instances are being stopped"),
            }
        }
        Command::Dev(args) => run_system(dev(args))?,
        Command::Apply(ApplyArgs {
            file,
            dry_run,
            no_wait,
            timeout,
            api,
        }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let d = actormesh_master::manifest::parse(&file, &text)?;
            if dry_run {
                println!(
                    "{}: valid Deployment {}/{}",
                    file.display(),
                    d.manifest.namespace,
                    d.manifest.name
                );
                return Ok(());
            }
            let body = serde_json::to_value(&d.manifest)?;
            let client = api.client()?;
            let v = client.call("POST", "/v1/deployments", Some(body))?;
            let key = v["applied"].as_str().unwrap_or_default().to_string();
            println!("applied {key}");
            if !no_wait {
                wait_for_replicas(&client, &key, timeout)?;
            }
        }
        Command::Get {
            what: GetWhat::Deployments { api },
        } => {
            let v = api.client()?.call("GET", "/v1/deployments", None)?;
            match api.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => {
                    let list: Vec<actormesh_master::deployments::DeploymentSummary> =
                        serde_json::from_value(v)?;
                    println!(
                        "{:<24} {:<8} {:>8} {:>8} {:>8}  WHY NOT PLACED",
                        "NAME", "VERSION", "REPLICAS", "RUNNING", "PENDING"
                    );
                    for d in list {
                        println!(
                            "{:<24} {:<8} {:>8} {:>8} {:>8}  {}",
                            format!("{}/{}", d.namespace, d.name),
                            d.version,
                            d.replicas,
                            d.running,
                            d.pending,
                            d.unplaced.unwrap_or_default()
                        );
                    }
                }
            }
        }
        Command::Get {
            what: GetWhat::Frameworks { api },
        } => {
            let v = api.client()?.call("GET", "/v1/frameworks", None)?;
            match api.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => {
                    let list: Vec<actormesh_master::scheduler::FrameworkSummary> =
                        serde_json::from_value(v)?;
                    println!(
                        "{:<20} {:<24} {:<12} {:<10} {:>6} {:>6} {:>6} {:>7}  ALLOCATED",
                        "ID", "NAME", "ROLE", "STATE", "WEIGHT", "TASKS", "OFFERS", "SHARE"
                    );
                    for f in list {
                        let state = match (f.connected, f.suppressed) {
                            (false, _) => "failover",
                            (true, true) => "suppressed",
                            (true, false) => "active",
                        };
                        println!(
                            "{:<20} {:<24} {:<12} {:<10} {:>6} {:>6} {:>6} {:>7.3}  {}",
                            f.id,
                            f.name,
                            f.role,
                            state,
                            f.weight,
                            f.tasks,
                            f.offers,
                            f.weighted_share,
                            f.allocated
                        );
                    }
                }
            }
        }
        Command::Get {
            what: GetWhat::Tasks { api },
        } => {
            let v = api.client()?.call("GET", "/v1/tasks", None)?;
            match api.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => {
                    let list: Vec<actormesh_master::deployments::TaskEntry> =
                        serde_json::from_value(v)?;
                    print_tasks(&list);
                }
            }
        }
    }
    Ok(())
}

/// A master and one agent in one process, with the token made internally.
async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let mut config = MasterConfig::new(args.data_dir.join("master"));
    config.listen = "127.0.0.1:0".parse()?;
    config.bootstrap = "127.0.0.1:0".parse()?;
    config.api = args.api;
    let m = master::start(config).await?;
    let token = m.agent_token(Duration::from_secs(3600)).await?;
    let a = agent::start(AgentConfig {
        join: m.bootstrap,
        token: Some(token),
        data_dir: args.data_dir.join("agent"),
        listen: "127.0.0.1:0".parse()?,
        name: "dev-agent".into(),
        resources: None,
        attrs: BTreeMap::from([("zone".to_string(), "dev".to_string())]),
        actor_types: Vec::new(),
        reserved: Default::default(),
        host: actormesh_cli::demo::host(),
    })
    .await?;
    println!(
        "dev cluster ready: master {} (api http://{}), agent {} on {}",
        m.node.local_addr(),
        m.api,
        a.agent_id,
        a.node.local_addr()
    );
    print_nodes(&m.master.send(master::ListNodes).await?);
    println!(
        "try: actormesh get nodes --api http://{} --api-token-file {}",
        m.api,
        m.api_token_file.display()
    );
    until_stopped(&m).await
}

/// Runs until Ctrl-C, or fails once the master steps down (its state store failed), so
/// that a supervisor restarts it and it reloads what was stored.
async fn until_stopped(m: &master::MasterHandle) -> anyhow::Result<()> {
    tokio::select! {
        r = wait_for_ctrl_c() => r,
        why = m.stepped_down() => Err(anyhow::anyhow!(why)),
    }
}

fn main() -> ExitCode {
    actormesh_cli::init_logging();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
