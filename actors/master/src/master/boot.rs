//! Starting a master: state, the CA, the operator API token, the master's own
//! credentials, the mesh node, the bootstrap port and the API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use tracing::{info, warn};

use actormesh::mesh::{Mesh, MeshOptions};
use actormesh::protocol::{
    BootstrapReply, BootstrapRequest, ClientCertReply, JoinReply, MASTER_ACTOR,
};
use actormesh::token::sha256_hex;
use actormesh::{Node, NodeConfig, NodeError};
use actormesh_transport::bootstrap::BootstrapServer;
use actormesh_transport::codec::{self, CodecError};
use actormesh_transport::identity::IdentityError;
use actormesh_transport::pki::{
    CertificateAuthority, Credentials, NodeKey, PkiError, DEFAULT_CA_TTL,
};
use actormesh_transport::{SpiffeId, TransportError};

use super::agents::{IssueClient, Join};
use super::effects::revoke;
use super::{Master, MasterConfig, MasterGate, MasterHandle};
use crate::core::{ClusterCore, LoadError, Setup};
use crate::membership::{AgentRecord, AgentState};
use crate::state::{Change, RedbStore, StateStore, StoreError, Table};
use crate::tokens::{self, TokenRecord};

const META_CA_CERT: &str = "ca_cert";
const META_CA_KEY: &str = "ca_key";
const META_API_TOKEN: &str = "api_token_hash";
/// File (mode 0600) in the data dir holding the operator API token.
pub const API_TOKEN_FILE: &str = "api-token";

/// Why a master could not start, or could not make a join token.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The state store failed or could not be opened.
    #[error("master state: {0}")]
    Store(#[from] StoreError),
    /// A file in the data dir could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What the file is for.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA or a key could not be made, read or used.
    #[error("certificates: {0}")]
    Pki(#[from] PkiError),
    /// The CA given with `--ca` is not the one this master already has.
    #[error("--ca {} differs from the CA this master already has (fingerprint {fingerprint}); --ca applies only at first start", dir.display())]
    CaMismatch {
        /// The directory given.
        dir: PathBuf,
        /// The fingerprint of the stored CA.
        fingerprint: String,
    },
    /// Stored state (the CA, agents, tokens) cannot be read.
    #[error("stored {what} cannot be read: {reason}")]
    Corrupt {
        /// What.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A stored value cannot be decoded.
    #[error("stored state cannot be decoded: {0}")]
    Decode(#[from] CodecError),
    /// Stored deployments or frameworks cannot be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The master's own identity is not valid in its trust domain.
    #[error("the master's identity: {0}")]
    Identity(#[from] IdentityError),
    /// The system's random generator failed.
    #[error("the system's random generator failed; cannot {0}")]
    Randomness(&'static str),
    /// The mesh node could not start.
    #[error("the master's mesh node: {0}")]
    Node(#[from] NodeError),
    /// The bootstrap port could not be bound.
    #[error("the bootstrap port: {0}")]
    Bootstrap(#[from] TransportError),
    /// The operator API could not listen.
    #[error("cannot listen for the API on {addr}: {reason}")]
    Api {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why (the OS error's text: as a source it would be printed twice).
        reason: String,
    },
    /// The master actor is not running.
    #[error("the master is not running: {0}")]
    Stopped(String),
    /// The master refused to make a join token.
    #[error("cannot create a join token: {0}")]
    Token(crate::core::OperatorError),
}

fn io_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> MasterError + 'a {
    move |source| MasterError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    // `mode` applies only when the file is created: tighten one that already existed.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// The CA: from the store, else from `--ca`, else new; stored on first start.
async fn load_or_create_ca(
    store: &dyn StateStore,
    config: &MasterConfig,
) -> Result<CertificateAuthority, MasterError> {
    if let (Some(cert), Some(key)) = (
        store.get(Table::Meta, META_CA_CERT).await?,
        store.get(Table::Meta, META_CA_KEY).await?,
    ) {
        let text = |bytes: &[u8]| {
            String::from_utf8(bytes.to_vec()).map_err(|e| MasterError::Corrupt {
                what: "CA",
                reason: e.to_string(),
            })
        };
        let ca = CertificateAuthority::from_pem(&text(&cert.value)?, &text(&key.value)?)?;
        if let Some(dir) = &config.ca_dir {
            let given = CertificateAuthority::load(dir)?;
            if given.fingerprint() != ca.fingerprint() {
                return Err(MasterError::CaMismatch {
                    dir: dir.clone(),
                    fingerprint: ca.fingerprint(),
                });
            }
        }
        return Ok(ca);
    }
    let ca = match &config.ca_dir {
        Some(dir) => CertificateAuthority::load(dir)?,
        None => CertificateAuthority::generate(&config.trust_domain, DEFAULT_CA_TTL)?,
    };
    store
        .apply(vec![
            Change::put(Table::Meta, META_CA_CERT, ca.cert_pem().as_bytes().to_vec()),
            Change::put(Table::Meta, META_CA_KEY, ca.key_pem().into_bytes()),
        ])
        .await?;
    match &config.ca_dir {
        Some(dir) => info!(
            trust_domain = ca.trust_domain(),
            fingerprint = %ca.fingerprint(),
            from = %dir.display(),
            "imported the cluster CA"
        ),
        None => info!(trust_domain = ca.trust_domain(), "created the cluster CA"),
    }
    Ok(ca)
}

/// The operator API token: the file's, if its hash matches the store; else a new one.
async fn load_or_create_api_token(
    store: &dyn StateStore,
    dir: &Path,
) -> Result<String, MasterError> {
    let file = dir.join(API_TOKEN_FILE);
    let stored = store.get(Table::Meta, META_API_TOKEN).await?;
    if let (Ok(token), Some(hash)) = (std::fs::read_to_string(&file), &stored) {
        let token = token.trim().to_string();
        if sha256_hex(&token).as_bytes() == hash.value.as_slice() {
            return Ok(token);
        }
    }
    let token =
        tokens::random_string(40).map_err(|_| MasterError::Randomness("make an API token"))?;
    write_private(&file, &token).map_err(io_error("cannot write the API token", &file))?;
    store
        .apply(vec![Change::put(
            Table::Meta,
            META_API_TOKEN,
            sha256_hex(&token).into_bytes(),
        )])
        .await?;
    Ok(token)
}

/// The master's own mesh credentials: a key kept in the data dir, a certificate issued
/// from the CA at each start, valid for `ttl` (renewed at half its life by
/// [`renew_master_certificate`]).
fn master_credentials(
    ca: &CertificateAuthority,
    dir: &Path,
    ttl: Duration,
) -> Result<Credentials, MasterError> {
    let key_file = dir.join(MASTER_KEY_FILE);
    let key = match std::fs::read_to_string(&key_file) {
        Ok(pem) => NodeKey::from_pem(&pem)?,
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error("cannot read the master key", &key_file)(e))
        }
        Err(_) => {
            let k = NodeKey::generate()?;
            write_private(&key_file, &k.pem())
                .map_err(io_error("cannot write the master key", &key_file))?;
            k
        }
    };
    let id = SpiffeId::node(ca.trust_domain(), "master")?;
    let cert = ca.sign_csr(&key.csr(&id)?, &id, ttl)?;
    Ok(key.credentials(&cert, ca.cert_pem())?)
}

/// The master's key file in its data dir.
const MASTER_KEY_FILE: &str = "master-key.pem";

/// Renews the master's own certificate as an agent renews its own: at half its life, a
/// new key and a certificate for `ttl`, handed to the node's endpoint (new links use it;
/// links up keep theirs) and the key written over the old one. A failure is retried a
/// minute later (or at a quarter of what is left, if sooner). Ends with the node.
async fn renew_master_certificate(
    node: actormesh::WeakNode,
    ca: CertificateAuthority,
    dir: std::path::PathBuf,
    ttl: Duration,
    mut expiry: SystemTime,
    expires: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut wait = half_left(expiry);
    loop {
        tokio::time::sleep(wait).await;
        let Some(node) = node.upgrade() else { return };
        let renewed = (|| -> Result<Credentials, MasterError> {
            let key = NodeKey::generate()?;
            let id = node.identity();
            let cert = ca.sign_csr(&key.csr(&id)?, &id, ttl)?;
            let creds = key.credentials(&cert, ca.cert_pem())?;
            node.endpoint().replace_credentials(&creds)?;
            let file = dir.join(MASTER_KEY_FILE);
            let tmp = dir.join(format!("{MASTER_KEY_FILE}.new"));
            write_private(&tmp, &key.pem())
                .map_err(io_error("cannot write the master key", &tmp))?;
            std::fs::rename(&tmp, &file)
                .map_err(io_error("cannot replace the master key", &file))?;
            Ok(creds)
        })();
        match renewed {
            Ok(creds) => {
                expiry = creds.not_after().unwrap_or(SystemTime::now() + ttl);
                expires.store(
                    crate::timestamp::ms_since_epoch(expiry),
                    std::sync::atomic::Ordering::Relaxed,
                );
                info!(expires = %crate::timestamp::format(expiry), "master certificate renewed");
                wait = half_left(expiry);
            }
            Err(e) => {
                let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
                wait = Duration::from_secs(60)
                    .min(left / 4)
                    .max(Duration::from_millis(100));
                warn!(error = %e, retry_in = ?wait, "master certificate renewal failed");
            }
        }
    }
}

/// Half the time left until `expiry`.
fn half_left(expiry: SystemTime) -> Duration {
    expiry.duration_since(SystemTime::now()).unwrap_or_default() / 2
}

/// Starts a master: state, CA, mesh node, bootstrap port, API. Call inside an actix
/// system.
pub async fn start(config: MasterConfig) -> Result<MasterHandle, MasterError> {
    // The store holds the CA key: its directory is made private before the store is.
    private_dir(&config.data_dir)?;
    let store = RedbStore::open(&config.data_dir).await?;
    start_with_store(config, Arc::new(store)).await
}

/// Creates `dir`, readable by this user only.
fn private_dir(dir: &Path) -> Result<(), MasterError> {
    std::fs::create_dir_all(dir).map_err(io_error("cannot create the data dir", dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error("cannot restrict the data dir", dir))?;
    }
    Ok(())
}

/// Starts a master on `store` instead of the file store in its data dir (the data dir
/// still holds its key and API token file).
pub async fn start_with_store(
    config: MasterConfig,
    store: Arc<dyn StateStore>,
) -> Result<MasterHandle, MasterError> {
    let dir = &config.data_dir;
    private_dir(dir)?;
    let ca = load_or_create_ca(store.as_ref(), &config).await?;
    let api_token = load_or_create_api_token(store.as_ref(), dir).await?;
    let creds = master_credentials(&ca, dir, config.master_cert_ttl)?;
    let cert_expiry = creds
        .not_after()
        .unwrap_or(SystemTime::now() + config.master_cert_ttl);
    let cert_expires = Arc::new(std::sync::atomic::AtomicU64::new(
        crate::timestamp::ms_since_epoch(cert_expiry),
    ));
    let mut node_config = NodeConfig::new(config.listen);
    node_config.metrics_listen = config.metrics_listen;
    node_config.access_log = config.access_log;
    node_config.tracing = config.tracing.clone();
    let node = Node::start(node_config, &creds)?;
    let fingerprint = ca.fingerprint();

    let agents: Vec<AgentRecord> = store
        .list(Table::Agents)
        .await?
        .into_iter()
        .map(|(_, v)| codec::decode(&v.value))
        .collect::<Result<_, _>>()?;
    let tokens: BTreeMap<String, TokenRecord> = store
        .list(Table::Tokens)
        .await?
        .into_iter()
        .map(|(k, v)| codec::decode(&v.value).map(|t| (k, t)))
        .collect::<Result<_, _>>()?;
    let config_rows = store.list(Table::Config).await?;
    let registry_ceiling = crate::services::parse_ceiling(
        store
            .get(Table::Meta, crate::services::VERSION_CEILING_KEY)
            .await?
            .as_ref()
            .map(|v| v.value.as_slice()),
    );
    for a in agents.iter().filter(|a| a.state == AgentState::Gone) {
        if let Ok(id) = SpiffeId::parse(&a.identity) {
            revoke(node.endpoint(), &id, a.cert_expiry);
        }
    }
    node.endpoint().prune_revocations(SystemTime::now());
    info!(
        agents = agents.len(),
        tokens = tokens.len(),
        "master state loaded"
    );
    let (stepped_down_tx, stepped_down) = tokio::sync::watch::channel(None);
    let epoch = u32::from_str_radix(&tokens::random_string(6).unwrap_or_default(), 36).unwrap_or(0);
    // A random start: an acknowledgement meant for an update of an earlier master (one it
    // sent again just before it died) must not match an update of this one.
    let first_update_uuid =
        tokens::random_u64().map_err(|_| MasterError::Randomness("number updates"))?;
    let core = ClusterCore::new(
        Setup {
            detector: config.detector,
            agents,
            tokens,
            config_rows,
            offer_timeout: config.offer_timeout,
            roles: config.roles.clone(),
            epoch,
            first_update_uuid,
            trust_domain: ca.trust_domain().to_string(),
            ca_fingerprint: fingerprint.clone(),
            agent_cert_ttl: config.agent_cert_ttl,
            push: crate::services::PushConfig {
                window: config.push_window,
                stale_after: config.push_stale_after,
                ..Default::default()
            },
            drain_time: config.drain_time,
            registry_ceiling,
            mesh: config.mesh,
            framework_grants: config.framework_grants.clone(),
        },
        Instant::now(),
    )?;
    let mut core = core;
    core.set_service_grants(config.service_grants.clone());
    // Bound before any actor starts: a taken port then fails the start with its error
    // alone (an actor dropped with the system's runtime panicked first).
    let api_listener = tokio::net::TcpListener::bind(config.api)
        .await
        .map_err(|e| MasterError::Api {
            addr: config.api,
            reason: e.to_string(),
        })?;
    let figures = Arc::new(super::figures::ControlFigures::new(&core));
    actormesh::metrics::register(&node, figures.clone());
    // The renewal signs with a CA of its own (the same certificate and key).
    let renewing_ca = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem())?;
    let master = Master {
        figures,
        core,
        store,
        ca,
        subscribers: Vec::new(),
        mesh_addr: node.local_addr(),
        endpoint: node.endpoint().clone(),
        node: node.clone(),
        framework_actors: BTreeMap::new(),
        stepped_down: stepped_down_tx,
        push_answer: config.push_stale_after,
        drained: BTreeMap::new(),
        next_drain_token: 0,
    }
    .start();
    node.spawn(
        MASTER_ACTOR,
        MasterGate {
            master: master.clone(),
        },
    )?;
    // The master's own Proxy, subscribed at its own `$master` (a local call: no caller),
    // so code in the master's process calls services by name as any node does.
    let mesh = Mesh::start(&node, MeshOptions::default().master(node.local_addr()))?;
    let join_master = master.clone();
    let mesh_addr = node.local_addr();
    let bootstrap = BootstrapServer::bind(config.bootstrap, &creds, move |body, from| {
        let master = join_master.clone();
        async move {
            let reply = match codec::decode::<BootstrapRequest>(&body) {
                Ok(BootstrapRequest::Join(req)) => {
                    BootstrapReply::Join(master.send(Join(req)).await.unwrap_or_else(|e| {
                        JoinReply::Refused {
                            reason: format!("the master is not running: {e}"),
                        }
                    }))
                }
                Ok(BootstrapRequest::Locate) => BootstrapReply::Located {
                    master_addr: mesh_addr,
                },
                Ok(BootstrapRequest::IssueClient(req)) => {
                    BootstrapReply::Client(master.send(IssueClient(req)).await.unwrap_or_else(
                        |e| ClientCertReply::Refused {
                            reason: format!("the master is not running: {e}"),
                        },
                    ))
                }
                Err(e) => BootstrapReply::Join(JoinReply::Refused {
                    reason: format!("malformed bootstrap request from {from}: {e}"),
                }),
            };
            codec::encode(&reply).unwrap_or_default()
        }
    })?;
    // The listener's task keeps serving after this handle is dropped.
    let bootstrap_addr = bootstrap.local_addr()?;
    let api_addr = crate::api::serve(api_listener, master.clone(), api_token).map_err(|e| {
        MasterError::Api {
            addr: config.api,
            reason: e.to_string(),
        }
    })?;
    actix::spawn(renew_master_certificate(
        node.downgrade(),
        renewing_ca,
        config.data_dir.clone(),
        config.master_cert_ttl,
        cert_expiry,
        cert_expires.clone(),
    ));
    info!(mesh = %node.local_addr(), bootstrap = %bootstrap_addr, api = %api_addr, "master up");
    Ok(MasterHandle {
        master,
        node,
        mesh,
        bootstrap: bootstrap_addr,
        api: api_addr,
        api_token_file: config.data_dir.join(API_TOKEN_FILE),
        ca_fingerprint: fingerprint,
        stepped_down,
        cert_expires,
    })
}
