//! The long-running commands: `master`, `agent`, and `dev` (both in one process).

use std::collections::BTreeMap;
use std::time::Duration;

use actormesh::agent::{self, AgentConfig};
use actormesh::resources::Resources;
use actormesh_master::allocator::RoleConfig;
use actormesh_master::membership::DetectorConfig;
use actormesh_master::tokens::TokenRole;
use actormesh_master::{self as master, MasterConfig};
use anyhow::Context as _;

use crate::args::{AgentArgs, DevArgs, GatewayArgs, MasterArgs, PushArgs};
use crate::tables;

pub(crate) fn master(args: MasterArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let zk = zk_config(&args.zk)?;
    anyhow::ensure!(
        zk.is_some() || args.name.is_none(),
        "--name names a master among the masters of one --zk store; it applies only with --zk"
    );
    run_system(async move {
        // Held while this master leads: dropping it ends the candidacy.
        let mut held = None;
        let m = match zk {
            Some(zk) => {
                let name = args
                    .name
                    .clone()
                    .unwrap_or_else(|| actormesh_cli::ha::default_name(config.api));
                let (m, leadership) = actormesh_cli::ha::lead(config, zk, name).await?;
                held = Some(leadership);
                m
            }
            None => master::start(config).await?,
        };
        println!(
            "master ready: mesh {} bootstrap {} api http://{} ca-fingerprint {}",
            m.node.local_addr(),
            m.bootstrap,
            m.api,
            m.ca_fingerprint
        );
        println!("api token file: {}", m.api_token_file.display());
        if let Some(addr) = m.node.metrics_addr() {
            println!("metrics: http://{addr}/metrics");
        }
        tokio::select! {
            r = wait_for_ctrl_c() => r,
            why = m.stepped_down() => {
                let e = anyhow::anyhow!(why);
                match &held {
                    // Another master leads, or will once ZooKeeper expires this one's
                    // session.
                    Some(_) => Err(e.context(
                        "this master no longer leads; the next leader takes over the stored state, and this one, started again, stands for election as a standby",
                    )),
                    None => Err(e),
                }
            }
        }
    })
}

/// The ZooKeeper store `--zk` names, if it names one; a bad address, or credentials
/// missing or readable by others, are refused here, naming the flag.
pub(crate) fn zk_config(
    args: &crate::args::ZkArgs,
) -> anyhow::Result<Option<master::state::ZkConfig>> {
    let Some(spec) = &args.zk else {
        anyhow::ensure!(
            args.zk_auth_file.is_none(),
            "--zk-auth-file applies only with --zk"
        );
        return Ok(None);
    };
    let address =
        master::state::zk::ZkAddress::parse(spec).map_err(|e| anyhow::anyhow!("--zk: {e}"))?;
    let file = args.zk_auth_file.as_ref().ok_or_else(|| {
        anyhow::anyhow!("--zk needs --zk-auth-file FILE holding the ZooKeeper digest credentials (user:password), so that other ZooKeeper users cannot read the state (the CA key is in it)")
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file)
            .with_context(|| format!("--zk-auth-file {}", file.display()))?
            .permissions()
            .mode()
            & 0o777;
        anyhow::ensure!(
            mode & 0o077 == 0,
            "--zk-auth-file {} has mode {mode:o}: credentials must be readable by their owner only (chmod 600 {})",
            file.display(),
            file.display()
        );
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--zk-auth-file {}", file.display()))?;
    let auth = master::state::zk::parse_auth(&text)
        .map_err(|e| anyhow::anyhow!("--zk-auth-file {}: {e}", file.display()))?;
    Ok(Some(master::state::ZkConfig {
        address,
        auth,
        session_timeout: args.zk_session_timeout,
    }))
}

pub(crate) fn agent(args: AgentArgs) -> anyhow::Result<()> {
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
    let tracing = args
        .telemetry
        .trace
        .tracing(&format!("agent/{}", args.name))?;
    let config = AgentConfig {
        join: args.join[0],
        also_join: args.join[1..].to_vec(),
        token: args.token,
        data_dir: args.data_dir,
        listen: args.listen,
        name: args.name,
        resources,
        attrs: args.attrs.into_iter().collect::<BTreeMap<_, _>>(),
        actor_types: Vec::new(),
        reserved,
        metrics_listen: args.telemetry.metrics_listen.0,
        access_log: args.telemetry.access_log,
        tracing,
        host: if args.demo_actors {
            actormesh_cli::demo::host()
        } else {
            Default::default()
        },
    };
    run_system(async move {
        let a = agent::start(config).await?;
        println!("agent {} ready on {}", a.agent_id, a.node.local_addr());
        if let Some(addr) = a.node.metrics_addr() {
            println!("metrics: http://{addr}/metrics");
        }
        Ok(a.run_until_stopped().await?)
    })
}

pub(crate) fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let (namespace, name) = match args.gateway.split_once('/') {
        Some((ns, n)) => (ns.to_string(), n.to_string()),
        None => ("default".to_string(), args.gateway.clone()),
    };
    anyhow::ensure!(
        !namespace.is_empty() && !name.is_empty() && !name.contains('/'),
        "--gateway {:?}: expected namespace/name, or name in the default namespace",
        args.gateway
    );
    let tracing = args
        .telemetry
        .trace
        .tracing(&format!("gateway/{}", args.name))?;
    let mut attrs = BTreeMap::new();
    attrs.insert("role".to_string(), "gateway".to_string());
    let config = AgentConfig {
        join: args.join[0],
        also_join: args.join[1..].to_vec(),
        token: args.token,
        data_dir: args.data_dir,
        listen: args.listen,
        name: args.name,
        // It offers nothing: no work is placed on a gateway.
        resources: Some(Resources::default()),
        attrs,
        actor_types: Vec::new(),
        reserved: BTreeMap::new(),
        metrics_listen: args.telemetry.metrics_listen.0,
        access_log: args.telemetry.access_log,
        tracing,
        host: Default::default(),
    };
    let http = args.http;
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = actormesh_cli::gateway::Tls { cert, key };
            // Refused at start, naming the file, rather than at the first request.
            tls.server_config()?;
            Some(tls)
        }
        (None, None) => None,
        _ => anyhow::bail!(
            "--tls-cert and --tls-key go together: give both, or neither for cleartext"
        ),
    };
    run_system(async move {
        let listener = tokio::net::TcpListener::bind(http)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {http} (--http): {e}"))?;
        let a = agent::start(config).await?;
        let at = actormesh_cli::gateway::serve(
            &a,
            namespace.clone(),
            name.clone(),
            listener,
            tls.as_ref(),
        )?
        .addr;
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!(
            "gateway {namespace}/{name} ready: {scheme}://{at} (node {} on {})",
            a.agent_id,
            a.node.local_addr()
        );
        Ok(a.run_until_stopped().await?)
    })
}

pub(crate) fn dev(args: DevArgs) -> anyhow::Result<()> {
    run_system(run_dev(args))
}

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
        c.framework_grants = self.framework_roles.clone();
        c.service_grants = self.service_grants.clone();
        c.detector = DetectorConfig {
            heartbeat_interval: self.heartbeat,
            unreachable_after: self.unreachable_after,
            gone_after: self.gone_after,
            max_removals_per_minute: self.max_removals_per_minute,
        };
        c.agent_cert_ttl = self.agent_cert_ttl;
        if self.master_cert_ttl < Duration::from_secs(60)
            || self.master_cert_ttl > Duration::from_secs(366 * 24 * 3600)
        {
            anyhow::bail!(
                "--master-cert-ttl must be between a minute and a year (366d); it is {:?}",
                self.master_cert_ttl
            );
        }
        c.master_cert_ttl = self.master_cert_ttl;
        c.offer_timeout = self.offer_timeout;
        c.roles = self.roles()?;
        c.metrics_listen = self.telemetry.metrics_listen.0;
        c.access_log = self.telemetry.access_log;
        c.tracing = self.telemetry.trace.tracing("master")?;
        self.push.apply(&mut c)?;
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

impl crate::args::TraceArgs {
    /// The node's tracing: spans exported to --otlp-endpoint as `service.name` `name`.
    fn tracing(&self, name: &str) -> anyhow::Result<Option<actormesh::trace::Tracing>> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        let exporter = actormesh::otlp::OtlpExporter::start(endpoint, name)
            .map_err(|e| anyhow::anyhow!("--otlp-endpoint: {e}"))?;
        let tracing = actormesh::trace::Tracing::new(exporter, self.trace_sample)
            .map_err(|e| anyhow::anyhow!("--trace-sample: {e}"))?;
        Ok(Some(tracing))
    }
}

impl PushArgs {
    /// Sets the push settings of `c`, refusing a window that is not shorter than the STALE
    /// limit (every proxy would be STALE while each window is open).
    fn apply(&self, c: &mut MasterConfig) -> anyhow::Result<()> {
        if self.push_window >= self.push_stale_after {
            anyhow::bail!(
                "--push-window ({:?}) must be shorter than --push-stale-after ({:?}), or every proxy would be STALE while a push waits for its window",
                self.push_window,
                self.push_stale_after
            );
        }
        c.push_window = self.push_window;
        c.push_stale_after = self.push_stale_after;
        c.drain_time = self.drain_time;
        c.mesh = actormesh::mesh::MeshSettings {
            authz_default: self.authz_default,
            hide_policy_names: self.hide_policy_names,
        };
        Ok(())
    }
}

fn run_system<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    actix::System::new().block_on(f)
}

async fn wait_for_ctrl_c() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}

/// A master and one agent in one process, with the token made internally.
async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let mut config = MasterConfig::new(args.data_dir.join("master"));
    config.listen = "127.0.0.1:0".parse()?;
    config.bootstrap = args.bootstrap;
    config.api = args.api;
    config.metrics_listen = args.metrics_listen.0;
    config.tracing = args.trace.tracing("master")?;
    args.push.apply(&mut config)?;
    let m = master::start(config).await?;
    let token = m.agent_token(Duration::from_secs(3600)).await?;
    let a = agent::start(AgentConfig {
        join: m.bootstrap,
        also_join: Vec::new(),
        token: Some(token),
        data_dir: args.data_dir.join("agent"),
        listen: "127.0.0.1:0".parse()?,
        name: "dev-agent".into(),
        resources: None,
        attrs: BTreeMap::from([("zone".to_string(), "dev".to_string())]),
        actor_types: Vec::new(),
        reserved: Default::default(),
        metrics_listen: args.metrics_listen.0.map(|_| ([127, 0, 0, 1], 0).into()),
        access_log: None,
        tracing: args.trace.tracing("agent/dev-agent")?,
        host: actormesh_cli::demo::host(),
    })
    .await?;
    deploy_dev_echo(&m).await?;
    let (gateway, _gateway_node) = dev_gateway(&m, &args).await?;
    let client = dev_client(&m, &args.data_dir).await?;
    println!(
        "client identity {} in {}",
        client.identity,
        client.dir.display()
    );
    tokio::spawn(renew_dev_client(m.clone(), args.data_dir.clone(), client));
    println!(
        "dev cluster ready: master {} (api http://{}, bootstrap {}), agent {} on {}",
        m.node.local_addr(),
        m.api,
        m.bootstrap,
        a.agent_id,
        a.node.local_addr()
    );
    println!(
        "gateway default/gateway: http://{0} (try: curl http://{0}/hello/you)",
        gateway.addr
    );
    if let (Some(mm), Some(am)) = (m.node.metrics_addr(), a.node.metrics_addr()) {
        println!("metrics: master http://{mm}/metrics, agent http://{am}/metrics");
    }
    print!(
        "{}",
        tables::nodes(&m.master.send(master::ListNodes).await?)
    );
    print!(
        "{}",
        tables::services(&m.master.send(master::ListServices).await?)
    );
    println!(
        "try: actormesh get nodes --api http://{} --api-token-file {}",
        m.api,
        m.api_token_file.display()
    );
    // A token for the user's own agents (an hour, as `token create` gives by default a
    // day): the command to copy, and what a binary of theirs passes to `agent::start`.
    let join = m.agent_token(Duration::from_secs(3600)).await?;
    println!(
        "join an agent: actormesh agent --join {} --token {join} --data-dir ./my-agent",
        m.bootstrap
    );
    println!(
        "  (your own binary: AgentConfig::new(\"{}\".parse()?, \"./my-agent\").token(<that token>), or ACTORMESH_JOIN_TOKEN; valid 1h, `actormesh token create` for more)",
        m.bootstrap
    );
    until_stopped(&m).await
}

/// The Gateway and HttpRoute `dev` applies at its first start: `GET /hello/{name}`
/// greets through the echo service.
const DEV_GATEWAY: &str =
    r#"{"kind":"Gateway","name":"gateway","spec":{"forward_headers":["end-user"]}}"#;
const DEV_ROUTE: &str = r#"{"kind":"HttpRoute","name":"echo","spec":{"gateway":"gateway","rules":[{"match":{"path":"/hello/{name}","method":"GET"},"service":"echo","message":"demo.Greet/v1"},{"match":{"path":"/whoami"},"service":"echo","message":"demo.Whoami/v1"}]}}"#;

/// The dev cluster's gateway: at the first start (no Gateway `default/gateway` yet) its
/// Gateway and HttpRoute are applied; then a node of its own joins and serves it on
/// `--gateway-http`, and `dev` waits (10 s at most) until it has its routes.
async fn dev_gateway(
    m: &master::MasterHandle,
    args: &DevArgs,
) -> anyhow::Result<(actormesh_cli::gateway::Served, agent::AgentHandle)> {
    let listener = tokio::net::TcpListener::bind(args.gateway_http)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen for the dev gateway on {} (--gateway-http): {e}; --gateway-http 127.0.0.1:0 takes any free port",
                args.gateway_http
            )
        })?;
    let applied = m.master.send(master::ListTraffic).await?;
    if !applied
        .gateways
        .iter()
        .any(|g| g.namespace == "default" && g.name == "gateway")
    {
        for object in [DEV_GATEWAY, DEV_ROUTE] {
            m.master
                .send(master::ApplyTraffic(object.into()))
                .await?
                .context("applying the dev gateway")?;
        }
    }
    let token = m.agent_token(Duration::from_secs(3600)).await?;
    let node = agent::start(AgentConfig {
        join: m.bootstrap,
        also_join: Vec::new(),
        token: Some(token),
        data_dir: args.data_dir.join("gateway"),
        listen: "127.0.0.1:0".parse()?,
        name: "dev-gateway".into(),
        resources: Some(Resources::default()),
        attrs: BTreeMap::from([("role".to_string(), "gateway".to_string())]),
        actor_types: Vec::new(),
        reserved: Default::default(),
        metrics_listen: None,
        access_log: None,
        tracing: args.trace.tracing("gateway/dev-gateway")?,
        host: Default::default(),
    })
    .await?;
    let served =
        actormesh_cli::gateway::serve(&node, "default".into(), "gateway".into(), listener, None)?;
    if !served.configured(Duration::from_secs(10)).await {
        tracing::warn!(
            "the dev gateway has not fetched its routes yet; it answers 503 until it does"
        );
    }
    Ok((served, node))
}

/// How long `dev` waits for its echo service to have a ready endpoint before it says so
/// and goes on.
const DEV_ECHO_READY: Duration = Duration::from_secs(30);

/// At the first start (no `default/echo` deployment yet), deploys the demo echo as the
/// service `default/echo`; a later start keeps what the user made of it. Then waits, at
/// most [`DEV_ECHO_READY`], until the master's own Proxy has an endpoint of it, so that
/// "ready" means it can be called.
async fn deploy_dev_echo(m: &master::MasterHandle) -> anyhow::Result<()> {
    use actormesh_cli::demo::{ECHO_DEPLOYMENT, ECHO_SERVICE};
    let deployments = m.master.send(master::ListDeployments).await?;
    if !deployments
        .iter()
        .any(|d| format!("{}/{}", d.namespace, d.name) == ECHO_SERVICE)
    {
        m.master
            .send(master::ApplyDeployment(ECHO_DEPLOYMENT.into()))
            .await?
            .context("deploying the demo echo")?;
        println!("deployed {ECHO_SERVICE} (actor echo), served as the service {ECHO_SERVICE}");
    }
    let mesh = m.mesh();
    let has_endpoint = || {
        mesh.proxy_config()
            .services
            .iter()
            .any(|s| s.name.to_string() == ECHO_SERVICE && !s.endpoints.is_empty())
    };
    let mut applied = mesh.applied();
    let ready = tokio::time::timeout(DEV_ECHO_READY, async {
        while !has_endpoint() {
            if applied.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    if ready.is_err() || !has_endpoint() {
        tracing::warn!(
            "the service {ECHO_SERVICE} has no ready endpoint after {DEV_ECHO_READY:?}; see `actormesh get deployments`"
        );
    }
    Ok(())
}

/// Issues the CLI's client identity into the dev data dir, over the bootstrap port with a
/// short-lived client token, as any client gets one.
async fn dev_client(
    m: &master::MasterHandle,
    data_dir: &std::path::Path,
) -> anyhow::Result<actormesh::client::ClientCredentials> {
    let token = m.token(TokenRole::Client, Duration::from_secs(300)).await?;
    let dir = actormesh_cli::dev_client_dir(data_dir);
    Ok(actormesh::client::issue(m.bootstrap, &token, actormesh_cli::DEV_CLIENT_NAME, &dir).await?)
}

/// Client certificates are not renewed over the mesh: the dev process issues the CLI's
/// again at half its life, so a dev cluster left running keeps a usable one.
async fn renew_dev_client(
    m: master::MasterHandle,
    data_dir: std::path::PathBuf,
    mut current: actormesh::client::ClientCredentials,
) {
    loop {
        let left = current
            .credentials
            .not_after()
            .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
            .unwrap_or_default();
        tokio::time::sleep((left / 2).max(Duration::from_secs(1))).await;
        match dev_client(&m, &data_dir).await {
            Ok(renewed) => current = renewed,
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the CLI's client identity; retrying in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}

/// Runs until Ctrl-C, or fails once the master steps down (its state store failed), so
/// that a supervisor restarts it and it reloads what was stored.
async fn until_stopped(m: &master::MasterHandle) -> anyhow::Result<()> {
    tokio::select! {
        r = wait_for_ctrl_c() => r,
        why = m.stepped_down() => Err(anyhow::anyhow!(why)),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::args::{Cli, Command};

    fn master_config(args: &[&str]) -> anyhow::Result<actormesh_master::MasterConfig> {
        let mut all = vec!["actormesh", "master"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all)?.command {
            Command::Master(m) => m.config(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn push_flags_set_the_masters_push_settings() {
        let c = master_config(&[
            "--push-window",
            "25ms",
            "--push-stale-after",
            "2s",
            "--drain-time",
            "750ms",
        ])
        .unwrap();
        assert_eq!(c.push_window, std::time::Duration::from_millis(25));
        assert_eq!(c.push_stale_after, std::time::Duration::from_secs(2));
        assert_eq!(c.drain_time, std::time::Duration::from_millis(750));
        // The defaults are MasterConfig's.
        let d = master_config(&[]).unwrap();
        let defaults = actormesh_master::MasterConfig::new("x".into());
        assert_eq!(
            (d.push_window, d.push_stale_after, d.drain_time),
            (
                defaults.push_window,
                defaults.push_stale_after,
                defaults.drain_time
            )
        );
    }

    #[test]
    fn a_push_window_not_shorter_than_the_stale_limit_is_refused() {
        let e = master_config(&["--push-window", "5s", "--push-stale-after", "5s"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--push-window (5s) must be shorter than --push-stale-after (5s), or every proxy would be STALE while a push waits for its window"
        );
    }

    #[test]
    fn bad_durations_name_the_flag() {
        let e = master_config(&["--drain-time", "5 parsecs"]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("--drain-time"), "{text}");
        let e = master_config(&["--push-window", "0ms"]).unwrap_err();
        assert!(e.to_string().contains("--push-window"), "{e}");
    }
}
