//! The command line: every command, its flags and their help texts (`clap` derive).
//!
//! Help texts are part of the interface: each `///` line here is what `--help` shows.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use actormesh_cli::{
    parse_attr, parse_duration, parse_metrics_listen, parse_role_setting, parse_share, ApiClient,
};
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::output::Format;

#[derive(Parser, Debug)]
#[command(
    name = "actormesh",
    version,
    about = "An actor runtime whose cluster is made of actors"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// How log lines on stderr look: text (coloured only on a terminal) or json (one
    /// object a line, for log collectors).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "ACTORMESH_LOG_FORMAT"
    )]
    pub(crate) log_format: actormesh_cli::LogFormat,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Cluster certificate authority: create one, issue certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run a master: membership, certificate authority, operator API.
    Master(Box<MasterArgs>),
    /// Run an agent that joins a master.
    Agent(AgentArgs),
    /// Run an HTTP ingress gateway: a node that joins as an agent offering nothing and
    /// serves a Gateway's HttpRoutes as calls by name.
    Gateway(GatewayArgs),
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Certificates from a running master: a client identity for a program that is not a node.
    #[command(subcommand)]
    Cert(CertCommand),
    /// List cluster objects.
    Get {
        #[command(subcommand)]
        what: GetWhat,
    },
    /// Show one cluster object in detail.
    Describe {
        #[command(subcommand)]
        what: DescribeWhat,
    },
    /// Remove a cluster object.
    Delete {
        #[command(subcommand)]
        what: DeleteWhat,
    },
    /// Stop placing new work on a node.
    Drain {
        #[command(subcommand)]
        what: DrainWhat,
    },
    /// Print the end of a command task's captured stdout (or stderr).
    Logs(LogsArgs),
    /// Write the whole master state, the CA included, to a file (from a running master,
    /// on either store; needs an admin API token).
    Backup(BackupArgs),
    /// Write a backup into a new store (a data dir, or a ZooKeeper chroot) for a master to
    /// start on.
    Restore(RestoreArgs),
    /// A whole cluster in one process: a master, one agent and a gateway on embedded state.
    Dev(DevArgs),
    /// Validate a manifest (YAML, or JSON for .json) and submit it: a Deployment, Route,
    /// DestinationPolicy, AuthorizationPolicy, Gateway or HttpRoute.
    Apply(ApplyArgs),
    /// Call a service by name with a JSON payload and print the reply as JSON.
    ///
    /// Exit codes: 0 answered; 1 could not start (no identity, no registry from the
    /// master); 2 usage; 3 bad input (JSON, service name, metadata); 4 timeout; 5
    /// unavailable (no ready endpoint, unreachable, full, not delivered); 6 not found (no
    /// such actor, unknown message); 7 rejected by the callee (e.g. a field it could not
    /// decode); 8 the callee stopped or crashed; 9 permission denied.
    Call(CallArgs),
    /// Check Route and DestinationPolicy manifests across each other and against the
    /// master's services; every finding has a code, the object and the field.
    ///
    /// Codes: AM1001 a route to a subset no policy defines; AM1002 a subset no endpoint
    /// matches; AM1003 a service the registry does not have; AM1004 two Routes for one
    /// service; AM1005 a rule an earlier rule always takes first. Exit 1 on any finding.
    Analyze(AnalyzeArgs),
    /// Requests per second, success rate and p50/p95/p99 per service and message, from
    /// every node that serves an endpoint (over the mesh, as a client identity), like
    /// `linkerd viz stat`. Nodes count calls only with metrics on (`--metrics-listen`).
    Top(TopArgs),
    /// Authorization: what the callee's proxy would decide.
    #[command(subcommand)]
    Authz(AuthzCommand),
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuthzCommand {
    /// Explain the decision on a call from the policies the master pushes with the
    /// service: which policy and rule decided, and why each rule did or did not match.
    /// Exit 0 if the call would be allowed, 1 if denied.
    Check(AuthzCheckArgs),
}

#[derive(Args, Debug)]
pub(crate) struct AuthzCheckArgs {
    /// The caller's identity: a workload (spiffe://<td>/ns/<ns>/sa/<service>), a node
    /// (spiffe://<td>/node/<id>) or a client (spiffe://<td>/client/<name>).
    #[arg(long)]
    pub(crate) from: String,
    /// The node the call comes from, for rules on nodes (default: --from itself when it
    /// is a node or client identity; a workload's node is otherwise unknown).
    #[arg(long)]
    pub(crate) from_node: Option<String>,
    /// The service called: `namespace/name`, or a bare name in --namespace.
    #[arg(long)]
    pub(crate) to: String,
    /// The message name, e.g. demo.Echo/v1.
    #[arg(long)]
    pub(crate) message: String,
    /// Call metadata, as key=value (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub(crate) metadata: Vec<String>,
    /// The namespace a bare service name resolves in.
    #[arg(long, default_value = "default")]
    pub(crate) namespace: String,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

/// What a node of `master` or `agent` shows of its calls: metrics, the access log, traces.
#[derive(Args, Debug, Clone)]
pub(crate) struct TelemetryArgs {
    /// Serve Prometheus metrics at /metrics here: HOST:PORT, a PORT on loopback, or off.
    /// By default on loopback, on a port the system picks (the ready lines print it).
    #[arg(long, value_parser = parse_metrics_listen, default_value = "127.0.0.1:0")]
    pub(crate) metrics_listen: actormesh_cli::MetricsListen,
    /// Write an access log line (target actormesh::access) for this share of the calls
    /// that arrive here: 1 every call, 0.01 one in a hundred. Off by default.
    #[arg(long, value_parser = parse_share, value_name = "SHARE")]
    pub(crate) access_log: Option<f64>,
    #[command(flatten)]
    pub(crate) trace: TraceArgs,
}

/// Trace export (`master`, `agent`, `dev`).
#[derive(Args, Debug, Clone)]
pub(crate) struct TraceArgs {
    /// Export traces over OTLP/HTTP (protobuf) to this collector, e.g.
    /// http://127.0.0.1:4318 (/v1/traces is added). Off by default.
    #[arg(long, value_name = "URL")]
    pub(crate) otlp_endpoint: Option<String>,
    /// The share of root calls that start a trace (with --otlp-endpoint).
    #[arg(long, value_parser = parse_share, default_value = "0.01", value_name = "SHARE")]
    pub(crate) trace_sample: f64,
}

#[derive(Args, Debug)]
pub(crate) struct TopArgs {
    /// Keep going: a new view every interval.
    #[arg(long)]
    pub(crate) watch: bool,
    /// The time between the two samples a view is made of.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub(crate) interval: Duration,
    /// How long a node may take to give its figures.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub(crate) timeout: Duration,
    /// Also show actors that serve no service (system actors, by Rust type).
    #[arg(long)]
    pub(crate) all: bool,
    /// Output format (with --watch, json is one line a view).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub(crate) output: Format,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// Who a command that joins the mesh is (`call`, `top`): a client identity.
#[derive(Args, Debug)]
pub(crate) struct ClientArgs {
    /// The directory of the client identity (`actormesh dev` writes one into
    /// <data-dir>/client; `actormesh cert issue --client` writes one where you say).
    #[arg(
        long,
        env = "ACTORMESH_IDENTITY",
        default_value = "actormesh-dev/client"
    )]
    pub(crate) identity: PathBuf,
    /// The master's mesh address (default: the one recorded with the identity).
    #[arg(long)]
    pub(crate) master: Option<SocketAddr>,
}

impl ClientArgs {
    /// The client identity, or an error that says how to get one.
    pub(crate) fn load(&self) -> anyhow::Result<actormesh::client::ClientCredentials> {
        actormesh::client::load(&self.identity).with_context(|| {
            format!(
                "no client identity in {} (`actormesh dev` writes one there; else use `actormesh cert issue --client <name> --token <t> --out <dir>` and pass --identity <dir>)",
                self.identity.display()
            )
        })
    }
}

#[derive(Args, Debug)]
pub(crate) struct AnalyzeArgs {
    /// Manifest files (YAML, or JSON for .json); repeat for several.
    #[arg(short = 'f', long = "file", required = true)]
    pub(crate) files: Vec<PathBuf>,
    /// Check the files only, without asking the master for its services.
    #[arg(long)]
    pub(crate) offline: bool,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Args, Debug)]
pub(crate) struct CallArgs {
    /// The service: `namespace/name`, or a bare name in --namespace.
    pub(crate) service: String,
    /// The message's wire name, e.g. demo.Echo/v1.
    pub(crate) message: String,
    /// The payload as JSON, e.g. '"hello"' or '{"id": 7}'.
    pub(crate) json: String,
    /// How long the whole call may take (ms, s, m, h or d); with --repeat, each call.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub(crate) timeout: Duration,
    /// Make the call this many times over one connection, one after another: each reply
    /// prints as one JSON line, each failure as an error line on stderr, and a summary
    /// ends it (the exit code is the last failure's, else 0).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) repeat: u32,
    /// Metadata sent with the call, as key=value (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub(crate) metadata: Vec<String>,
    /// The key a `hash` balancer picks the endpoint by: calls with the same key reach the
    /// same endpoint (as `CallOptions::hash_key` in Rust; default: none, a random one).
    #[arg(long, value_name = "KEY")]
    pub(crate) hash_key: Option<String>,
    /// The namespace a bare service name resolves in.
    #[arg(long, default_value = "default")]
    pub(crate) namespace: String,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub(crate) enum CaCommand {
    /// Create a cluster CA: writes ca.pem and ca-key.pem (mode 0600) into --out.
    Init {
        /// Trust domain of the cluster, e.g. cluster.local.
        #[arg(long)]
        trust_domain: String,
        /// Directory to create the CA in.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime of the CA certificate (ms, s, m, h or d).
        #[arg(long, value_parser = parse_duration, default_value = "3650d")]
        ttl: Duration,
    },
    /// Issue a certificate for a SPIFFE identity: writes cert.pem, key.pem (0600), ca.pem.
    Issue {
        /// Directory of the CA (made by `ca init`).
        #[arg(long)]
        ca: PathBuf,
        /// Identity, e.g. spiffe://cluster.local/node/n1.
        #[arg(long)]
        identity: String,
        /// Directory to write the certificate and key to.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime of the certificate (ms, s, m, h or d).
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        ttl: Duration,
    },
    /// Rotate the running cluster's CA with an overlapping trust bundle: `begin` trusts a
    /// new CA beside the current one (it signs once every agent trusts it); `finish`
    /// drops the old one once nothing depends on it; `abort` forgets a new CA that does
    /// not sign yet. Needs an admin API token.
    Rotate {
        /// The step.
        #[arg(value_parser = ["begin", "finish", "abort"])]
        step: String,
        /// With finish: drop the old CA even while agents or clients still depend on it
        /// (they then fail until they rejoin or are reissued).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Where a CA rotation stands: the CAs, each agent's progress, what blocks the next
    /// step.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub(crate) struct MasterArgs {
    /// Where state, the CA and the API token are kept.
    #[arg(long, default_value = "actormesh-data")]
    pub(crate) data_dir: PathBuf,
    /// Mesh (mutual TLS, QUIC) address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub(crate) listen: SocketAddr,
    /// Bootstrap address agents join through (QUIC).
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub(crate) bootstrap: SocketAddr,
    /// Operator API address (HTTP). Loopback unless you mean otherwise.
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub(crate) api: SocketAddr,
    /// Trust domain of the CA created at first start.
    #[arg(long, default_value = "cluster.local")]
    pub(crate) trust_domain: String,
    /// Use this CA directory (from `actormesh ca init`) at first start.
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// Agent heartbeat interval.
    #[arg(long, value_parser = parse_duration, default_value = "250ms")]
    pub(crate) heartbeat: Duration,
    /// Silence after which an agent is Unreachable.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub(crate) unreachable_after: Duration,
    /// Silence after which an agent is Gone (removed, identity revoked).
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub(crate) gone_after: Duration,
    /// Agents that may be removed in any minute.
    #[arg(long, default_value_t = 5)]
    pub(crate) max_removals_per_minute: u32,
    /// Lifetime of agent certificates (renewed at half-life).
    #[arg(long, value_parser = parse_duration, default_value = "24h")]
    pub(crate) agent_cert_ttl: Duration,
    /// Lifetime of the master's own certificate, renewed at half its life.
    #[arg(long, value_parser = parse_duration, default_value = "24h")]
    pub(crate) master_cert_ttl: Duration,
    #[command(flatten)]
    pub(crate) zk: ZkArgs,
    /// This master's name among the masters of one --zk store (default: its API
    /// address). Each keeps its own api-token file under it.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// How long a framework may hold an offer before it is rescinded.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub(crate) offer_timeout: Duration,
    /// A role's weight for fair sharing, e.g. analytics=2 (repeatable; others weigh 1).
    #[arg(long = "role-weight", value_parser = parse_role_setting)]
    pub(crate) role_weights: Vec<(String, String)>,
    /// Resources a role is guaranteed, e.g. 'analytics=cpus:4;mem:8GiB' (repeatable).
    #[arg(long = "role-guarantee", value_parser = parse_role_setting)]
    pub(crate) role_guarantees: Vec<(String, String)>,
    /// Who may register frameworks under which roles: IDENTITY=ROLE, both globs, e.g.
    /// 'spiffe://cluster.local/client/*=batch' (repeatable). Default: every client
    /// identity, any role; node (agent) identities none.
    #[arg(long = "framework-role", value_name = "IDENTITY=ROLE")]
    pub(crate) framework_roles: Vec<actormesh_master::access::FrameworkGrant>,
    /// Which nodes may register endpoints of which services themselves: IDENTITY=SERVICE,
    /// both globs, e.g. 'spiffe://cluster.local/node/edge-*=shop/*' (repeatable). Default:
    /// every node, every service no deployment declares.
    #[arg(long = "service-grant", value_name = "IDENTITY=SERVICE")]
    pub(crate) service_grants: Vec<actormesh_master::access::ServiceGrant>,
    /// Resources a role may never exceed, e.g. 'batch=cpus:16' (repeatable).
    #[arg(long = "role-limit", value_parser = parse_role_setting)]
    pub(crate) role_limits: Vec<(String, String)>,
    #[command(flatten)]
    pub(crate) telemetry: TelemetryArgs,
    #[command(flatten)]
    pub(crate) push: PushArgs,
}

/// How the master pushes the service registry to proxies (`master` and `dev`).
#[derive(Args, Debug, Clone)]
pub(crate) struct PushArgs {
    /// Registry changes within this long go out to proxies as one push.
    #[arg(long, value_parser = parse_duration, default_value = "10ms")]
    pub(crate) push_window: Duration,
    /// A proxy that has not acknowledged a change this long is STALE (and an unanswered
    /// push has failed).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub(crate) push_stale_after: Duration,
    /// The kill of an instance that is an endpoint waits, at most this long, until every
    /// proxy applied its removal.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub(crate) drain_time: Duration,
    /// What decides a call to a service that no ALLOW AuthorizationPolicy applies to:
    /// allow or deny.
    #[arg(long, default_value = "allow")]
    pub(crate) authz_default: actormesh::mesh::authz::AuthzDefault,
    /// Denials tell callers outside the service's namespace no policy or rule name.
    #[arg(long)]
    pub(crate) hide_policy_names: bool,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct AgentArgs {
    /// The master's bootstrap address; with several masters (`master --zk`), each
    /// one's, comma-separated: the agent asks them in turn where the leader is.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub(crate) join: Vec<SocketAddr>,
    /// Join token from `actormesh token create` (only needed the first time).
    #[arg(long, env = "ACTORMESH_JOIN_TOKEN")]
    pub(crate) token: Option<String>,
    /// Where this agent keeps its key, certificate and id.
    #[arg(long, default_value = "actormesh-agent")]
    pub(crate) data_dir: PathBuf,
    /// Mesh address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) listen: SocketAddr,
    /// Agent name (lowercase letters, digits, '-'); the master picks one if empty.
    #[arg(long, default_value = "")]
    pub(crate) name: String,
    /// Offered resources, e.g. 'cpus:4;mem:8GiB;disk:20GiB;ports:[31000-32000]'. Detected if absent.
    #[arg(long)]
    pub(crate) resources: Option<String>,
    /// Attribute key=value (repeatable), e.g. --attr zone=a --attr rack=r1.
    #[arg(long = "attr", value_parser = parse_attr)]
    pub(crate) attrs: Vec<(String, String)>,
    /// Resources set aside for a role, e.g. 'analytics=cpus:2;mem:4GiB' (repeatable):
    /// offered to that role only.
    #[arg(long = "reserve", value_parser = parse_role_setting)]
    pub(crate) reserve: Vec<(String, String)>,
    /// Also host the demo actor type `echo` as actor tasks (as `actormesh dev` does).
    /// Without it this agent runs command tasks only: actor tasks need your own binary.
    #[arg(long)]
    pub(crate) demo_actors: bool,
    #[command(flatten)]
    pub(crate) telemetry: TelemetryArgs,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct GatewayArgs {
    /// The master's bootstrap address (several masters: each one's, comma-separated).
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub(crate) join: Vec<SocketAddr>,
    /// Join token from `actormesh token create` (only needed the first time).
    #[arg(long, env = "ACTORMESH_JOIN_TOKEN")]
    pub(crate) token: Option<String>,
    /// Where this node keeps its key, certificate and id.
    #[arg(long, default_value = "actormesh-gateway")]
    pub(crate) data_dir: PathBuf,
    /// Mesh address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) listen: SocketAddr,
    /// Node name (lowercase letters, digits, '-'); the master picks one if empty.
    #[arg(long, default_value = "")]
    pub(crate) name: String,
    /// The Gateway served: namespace/name, or name in the default namespace.
    #[arg(long, default_value = "default/gateway")]
    pub(crate) gateway: String,
    /// Where to serve HTTP (HTTP/1.1, and HTTP/2 with prior knowledge; with a certificate,
    /// HTTPS with ALPN).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) http: SocketAddr,
    /// Serve TLS with this PEM certificate chain (with --tls-key).
    #[arg(long)]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long)]
    pub(crate) tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) telemetry: TelemetryArgs,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ApiArgs {
    /// The master's operator API; with several masters, any of theirs, or a comma-separated
    /// list tried in turn. The masters a leader names are kept next to the API token file
    /// (`<file>.masters`) and tried too, so the CLI finds the leader after a failover.
    #[arg(
        long,
        env = "ACTORMESH_API",
        default_value = "http://127.0.0.1:7080",
        global = true
    )]
    pub(crate) api: String,
    /// The API token (else read from --api-token-file).
    #[arg(
        long,
        env = "ACTORMESH_API_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub(crate) api_token: Option<String>,
    /// File holding the API token (the master writes it into its data dir).
    #[arg(
        long,
        env = "ACTORMESH_API_TOKEN_FILE",
        default_value = "actormesh-data/api-token",
        global = true
    )]
    pub(crate) api_token_file: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub(crate) output: Format,
}

impl ApiArgs {
    pub(crate) fn client(&self) -> anyhow::Result<ApiClient> {
        let token = match &self.api_token {
            Some(t) => return Ok(ApiClient::new(&self.api, t)),
            None => std::fs::read_to_string(&self.api_token_file).with_context(|| {
                format!(
                    "cannot read the API token from {} (pass --api-token or --api-token-file)",
                    self.api_token_file.display()
                )
            })?,
        };
        let mut known = self.api_token_file.clone().into_os_string();
        known.push(".masters");
        Ok(ApiClient::new(&self.api, &token).with_known_masters(known.into()))
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum TokenCommand {
    /// Create a join token, or with --scope and --holder an operator API token (`--role
    /// api`); prints it (the secret is shown only here).
    Create {
        /// How long the token works.
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        ttl: Duration,
        /// What the token allows: `agent` joins an agent (needs an admin API token);
        /// `client` issues a client certificate (`actormesh cert issue --client`), with
        /// no membership; `api` is an operator API token (the default with --scope).
        #[arg(long, value_parser = ["agent", "client", "api"])]
        role: Option<String>,
        /// An operator API token's scope: viewer (get, describe), operator (apply, delete,
        /// drain, client join tokens, the audit log) or admin (everything: agent join
        /// tokens, API tokens, certificates). (`--api` names the API's address, so an API
        /// token is asked for by its scope.)
        #[arg(long, value_parser = ["viewer", "operator", "admin"], requires = "holder")]
        scope: Option<String>,
        /// Who the API token belongs to (shown in the audit log).
        #[arg(long, requires = "scope")]
        holder: Option<String>,
        /// Print the whole command that joins an agent with the token (`actormesh agent
        /// --join <the masters' bootstrap addresses> --token <token>`), as `kubeadm token
        /// create --print-join-command` does; add --name, --data-dir and the rest to it.
        #[arg(long, conflicts_with_all = ["scope", "holder"])]
        print_join_command: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke an operator API token by id (from `actormesh get api-tokens`).
    Revoke {
        /// The token's id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum CertCommand {
    /// Get a client certificate, spiffe://<td>/client/<name>, from the master's bootstrap
    /// port (a key made here, a signing request, the CA the token pins): writes key.pem,
    /// cert.pem, ca.pem and client.json (mode 0600) into --out. The client is not a node.
    Issue {
        /// Client name: 1 to 63 lowercase letters, digits, '-' or '_'.
        #[arg(long)]
        client: String,
        /// Token of role client, from `actormesh token create --role client`.
        #[arg(long, env = "ACTORMESH_CLIENT_TOKEN", hide_env_values = true)]
        token: String,
        /// The master's bootstrap address.
        #[arg(long, default_value = "127.0.0.1:7001")]
        join: SocketAddr,
        /// Directory to write the key and certificate to (replaces a client identity there).
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a client identity: every node refuses it within one push (its links close,
    /// its handshakes fail), and the master issues no certificate for the name, until every
    /// certificate it could hold has expired.
    Revoke {
        /// Client name, or its SPIFFE id (spiffe://<td>/client/<name>).
        #[arg(long)]
        client: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum GetWhat {
    /// Nodes: state, resources, attributes, last heartbeat, certificate expiry.
    Nodes {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Deployments: replicas asked for, running, pending, and why any are not placed.
    Deployments {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Tasks of deployments and frameworks: owner, version, agent, state, resources.
    Tasks {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Frameworks (the deployment controller first): role, weight, share, tasks, offers.
    Frameworks {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Services: balancer, endpoints ready, versions.
    Services {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A service's endpoints: id, node, address, actor, version, weight, zone, labels.
    Endpoints {
        /// namespace/name, or just name for the default namespace.
        service: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Applied Routes and DestinationPolicies: kind, name, service, rules or subsets.
    Traffic {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Every node's proxy: version applied, versions behind, last push latency, STALE.
    ProxyStatus {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// What one node's proxy applied (asked of that node).
    ProxyConfig {
        /// The node: an agent id from `get nodes`, or `master`.
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Operator API tokens: id, holder, scope, expiry, revocation (needs admin).
    ApiTokens {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The audit log: every change made through the API, who made it and when.
    Audit {
        /// The last this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum DeleteWhat {
    /// A node, by id: it is Gone at once (as after --gone-after): its identity and join
    /// token are revoked, its links close, and its instances are replaced elsewhere. To
    /// come back it joins again with a new token.
    Node {
        /// The node id (as `actormesh get nodes` lists).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A deployment, by namespace/name (e.g. default/web): its instances are stopped.
    Deployment {
        /// namespace/name, or just name for the default namespace.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A Route, by namespace/name: its service goes back to no rules at the next push.
    Route {
        /// namespace/name, or just name for the default namespace.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A DestinationPolicy, by namespace/name: its service goes back to no policy.
    DestinationPolicy {
        /// namespace/name, or just name for the default namespace.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// An AuthorizationPolicy, by namespace/name: it stops applying at the next push.
    AuthorizationPolicy {
        /// namespace/name, or just name for the default namespace.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A Gateway, by namespace/name (its HttpRoutes stay, unserved).
    Gateway {
        /// namespace/name, or just name for the default namespace.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// An HttpRoute, by namespace/name.
    HttpRoute {
        /// namespace/name, or just name for the default namespace.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum DescribeWhat {
    /// A node by id.
    Node {
        /// The node id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A deployment: its spec, standing, why replicas are not placed, and its tasks.
    Deployment {
        /// namespace/name, or just name for the default namespace.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A task: state, agent, and what the agent says (pid, sandbox, limits in effect).
    Task {
        /// The task id (from `actormesh get tasks`).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A service: its balancer and labels, and each endpoint as one node's proxy sees it
    /// now (ready or ejected, calls in flight, latency estimate).
    Service {
        /// `namespace/name`, or a bare name in the default namespace.
        service: String,
        /// Whose view: an agent id from `get nodes`, or `master`.
        #[arg(long, default_value = "master")]
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum DrainWhat {
    /// A node by id.
    Node {
        /// The node id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub(crate) struct DevArgs {
    /// Where the dev cluster keeps its state.
    #[arg(long, default_value = "actormesh-dev")]
    pub(crate) data_dir: PathBuf,
    /// Operator API address.
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub(crate) api: SocketAddr,
    /// Bootstrap address, where your own agents join (port 0: one chosen by the system;
    /// the ready lines print it with a join command).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) bootstrap: SocketAddr,
    /// Where the dev gateway serves HTTP (`127.0.0.1:0`: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) gateway_http: SocketAddr,
    /// The master's Prometheus metrics (/metrics): HOST:PORT, a PORT on loopback (0: one
    /// chosen by the system), or off. The agent's get a port chosen by the system; the
    /// ready lines print both.
    #[arg(long, value_parser = parse_metrics_listen, default_value = "127.0.0.1:0")]
    pub(crate) metrics_listen: actormesh_cli::MetricsListen,
    #[command(flatten)]
    pub(crate) trace: TraceArgs,
    #[command(flatten)]
    pub(crate) push: PushArgs,
}

#[derive(Args, Debug)]
pub(crate) struct LogsArgs {
    /// The task id (from `actormesh get tasks`).
    pub(crate) task: String,
    /// Show stderr instead of stdout.
    #[arg(long)]
    pub(crate) stderr: bool,
    /// At most this many bytes from the end.
    #[arg(long, default_value_t = 64 * 1024)]
    pub(crate) bytes: u64,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Args, Debug)]
pub(crate) struct ApplyArgs {
    /// The manifest file: one object, or several separated by `---` lines (all are
    /// checked before any is applied; then they are applied in order).
    #[arg(short = 'f', long = "file")]
    pub(crate) file: PathBuf,
    /// Only validate; submit nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Return once the master has the deployment, without waiting for its replicas.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// How long to wait for every replica to run (ms, s, m, h or d).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub(crate) timeout: Duration,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

/// Where a master's state is in ZooKeeper (`--zk`), for `master` and `restore`.
#[derive(Args, Debug, Clone)]
pub(crate) struct ZkArgs {
    /// Keep the master's state in ZooKeeper instead of the data dir's redb file:
    /// host:port[,host:port...]/chroot, e.g. 127.0.0.1:2181,127.0.0.1:2182/actormesh.
    #[arg(long, value_name = "SERVERS/CHROOT")]
    pub(crate) zk: Option<String>,
    /// File (mode 0600) holding the ZooKeeper digest credentials, user:password: every
    /// znode is readable and writable with them only. Needed with --zk.
    #[arg(long, value_name = "FILE")]
    pub(crate) zk_auth_file: Option<PathBuf>,
    /// The ZooKeeper session timeout. A leader stops acting when ZooKeeper has not
    /// answered it for two thirds of it; a standby takes over about this long after the
    /// leader dies.
    #[arg(long, value_parser = parse_duration, default_value = "6s")]
    pub(crate) zk_session_timeout: Duration,
}

/// `actormesh backup`.
#[derive(Args, Debug)]
pub(crate) struct BackupArgs {
    /// The file to write (new; mode 0600: it holds the CA key).
    #[arg(long)]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

/// `actormesh restore`.
#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    /// The backup file (from `actormesh backup`).
    #[arg(long)]
    pub(crate) from: PathBuf,
    /// Restore into this new master data dir (its state.redb)...
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// ...or into ZooKeeper.
    #[command(flatten)]
    pub(crate) zk: ZkArgs,
}
