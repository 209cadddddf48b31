//! Starting a master: state, the CA, the operator API token, the master's own
//! credentials, the mesh node, the bootstrap port and the API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use tracing::info;

use actormesh::mesh::{Mesh, MeshOptions};
use actormesh::protocol::{
    BootstrapReply, BootstrapRequest, ClientCertReply, JoinReply, MastersReply, MASTER_ACTOR,
};
use actormesh::token::sha256_hex;
use actormesh::{Node, NodeConfig, NodeError};
use actormesh_transport::bootstrap::BootstrapServer;
use actormesh_transport::codec::{self, CodecError};
use actormesh_transport::identity::IdentityError;
use actormesh_transport::pki::{CertificateAuthority, NodeKey, PkiError, DEFAULT_CA_TTL};
use actormesh_transport::{SpiffeId, TransportError};

use super::agents::{IssueClient, Join};
use super::effects::revoke;
use super::trust::{renew_master_certificate, Cas, Keeper, MASTER_KEY_FILE};
use super::{Master, MasterConfig, MasterGate, MasterHandle};
use crate::core::{ClusterCore, LoadError, Setup};
use crate::membership::{AgentRecord, AgentState};
use crate::state::{Change, RedbStore, StateStore, StoreError, Table};
use crate::tokens::{self, TokenRecord};

use crate::rotation::{
    Phase, RotationRecord, TrustView, META_CA_BRIDGE, META_CA_CERT, META_CA_KEY, META_NEXT_CA_CERT,
    META_NEXT_CA_KEY, META_ROTATION,
};
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

pub(super) fn io_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> MasterError + 'a {
    move |source| MasterError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
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

/// The CA in the store, if one was stored.
pub(super) async fn stored_ca(
    store: &dyn StateStore,
) -> Result<Option<CertificateAuthority>, MasterError> {
    let (Some(cert), Some(key)) = (
        store.get(Table::Meta, META_CA_CERT).await?,
        store.get(Table::Meta, META_CA_KEY).await?,
    ) else {
        return Ok(None);
    };
    let text = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec()).map_err(|e| MasterError::Corrupt {
            what: "CA",
            reason: e.to_string(),
        })
    };
    Ok(Some(CertificateAuthority::from_pem(
        &text(&cert.value)?,
        &text(&key.value)?,
    )?))
}

/// The CA: from the store, else from `--ca`, else new; stored on first start.
async fn load_or_create_ca(
    store: &dyn StateStore,
    config: &MasterConfig,
) -> Result<CertificateAuthority, MasterError> {
    if let Some(ca) = stored_ca(store).await? {
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
    name: Option<&str>,
) -> Result<String, MasterError> {
    let file = dir.join(API_TOKEN_FILE);
    // Masters of one store each have their own file, so each its own hash.
    let key = match name {
        None => META_API_TOKEN.to_string(),
        Some(n) => format!("{META_API_TOKEN}@{n}"),
    };
    let stored = store.get(Table::Meta, &key).await?;
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
            key,
            sha256_hex(&token).into_bytes(),
        )])
        .await?;
    Ok(token)
}

/// The master's key, kept in the data dir (made at first start).
pub(super) fn master_key(dir: &Path) -> Result<NodeKey, MasterError> {
    let key_file = dir.join(MASTER_KEY_FILE);
    match std::fs::read_to_string(&key_file) {
        Ok(pem) => Ok(NodeKey::from_pem(&pem)?),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error("cannot read the master key", &key_file)(e))
        }
        Err(_) => {
            let k = NodeKey::generate()?;
            write_private(&key_file, &k.pem())
                .map_err(io_error("cannot write the master key", &key_file))?;
            Ok(k)
        }
    }
}

/// The rest of a CA rotation under way, if one is: the new CA, the bridge and the record.
pub(super) async fn load_rotation(
    store: &dyn StateStore,
    current: CertificateAuthority,
) -> Result<(Cas, Option<RotationRecord>), MasterError> {
    let text = |what: &'static str, bytes: Vec<u8>| {
        String::from_utf8(bytes).map_err(|e| MasterError::Corrupt {
            what,
            reason: e.to_string(),
        })
    };
    let get = |key: &'static str| store.get(Table::Meta, key);
    let (Some(record), Some(cert), Some(key), Some(bridge)) = (
        get(META_ROTATION).await?,
        get(META_NEXT_CA_CERT).await?,
        get(META_NEXT_CA_KEY).await?,
        get(META_CA_BRIDGE).await?,
    ) else {
        return Ok((
            Cas {
                current: Arc::new(current),
                next: None,
                bridge: None,
                phase: Phase::Stable,
            },
            None,
        ));
    };
    let record: RotationRecord = codec::decode(&record.value)?;
    let next = CertificateAuthority::from_pem(
        &text("the new CA", cert.value)?,
        &text("the new CA", key.value)?,
    )?;
    Ok((
        Cas {
            current: Arc::new(current),
            next: Some(Arc::new(next)),
            bridge: Some(text("the CA bridge", bridge.value)?),
            phase: record.phase,
        },
        Some(record),
    ))
}

/// The core's view of the CAs loaded.
fn trust_view(cas: &Cas, record: Option<&RotationRecord>) -> TrustView {
    let bundle = cas.bundle();
    let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    TrustView {
        phase: cas.phase,
        current: cas.current.fingerprint(),
        next: cas.next.as_ref().map(|n| n.fingerprint()),
        bundle_pem: actormesh_transport::trust::bundle_pem(&bundle),
        digest: actormesh_transport::trust::digest(&bundle),
        switched: record.and_then(|r| r.switched_ms).map(at),
        began: record.map(|r| at(r.began_ms)),
    }
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
pub(super) fn private_dir(dir: &Path) -> Result<(), MasterError> {
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
    // Every leadership has a term, a lone master's too (each start takes the next), so
    // an order of an earlier one is told apart from a newer one's.
    let term = match config.term {
        Some(t) => t,
        None => crate::ha::take_term(store.as_ref()).await?.number,
    };
    let ca = load_or_create_ca(store.as_ref(), &config).await?;
    let api_token = load_or_create_api_token(store.as_ref(), dir, config.name.as_deref()).await?;
    let trust_domain = ca.trust_domain().to_string();
    let fingerprint = ca.fingerprint();
    let (cas, rotation) = load_rotation(store.as_ref(), ca).await?;
    let view = trust_view(&cas, rotation.as_ref());
    let cert_expires = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let keeper = Arc::new(Keeper {
        cas: std::sync::RwLock::new(cas),
        bootstrap: std::sync::OnceLock::new(),
        dir: dir.clone(),
        ttl: config.master_cert_ttl,
        expires: cert_expires.clone(),
        master_ca: std::sync::RwLock::new(String::new()),
    });
    // A lone master is `node/master`; one of several on a store, `master/<name>`: agents
    // obey only the one they follow, so each must be told apart.
    let me = match &config.name {
        None => SpiffeId::node(&trust_domain, "master")?,
        Some(name) => SpiffeId::master(&trust_domain, name)?,
    };
    let creds = keeper.master_credentials(&master_key(dir)?, &me)?;
    let mut node_config = NodeConfig::new(config.listen);
    node_config.metrics_listen = config.metrics_listen;
    node_config.access_log = config.access_log;
    node_config.tracing = config.tracing.clone();
    let node = Node::start(node_config, &creds)?;

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
            trust_domain: trust_domain.clone(),
            trust: view,
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
    let master = Master {
        figures,
        core,
        store,
        keeper: keeper.clone(),
        subscribers: Vec::new(),
        mesh_addr: node.local_addr(),
        endpoint: node.endpoint().clone(),
        node: node.clone(),
        framework_actors: BTreeMap::new(),
        stepped_down: stepped_down_tx,
        push_answer: config.push_stale_after,
        drained: BTreeMap::new(),
        next_drain_token: 0,
        term,
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
    // Known once bound (the configured address may have port 0).
    let own_bootstrap = Arc::new(std::sync::OnceLock::<std::net::SocketAddr>::new());
    let (masters, own) = (config.masters.clone(), own_bootstrap.clone());
    let own_name = config.name.clone();
    let answer = move |body: Vec<u8>, from: std::net::SocketAddr| {
        let master = join_master.clone();
        let standing = masters.as_ref().map(|m| m.borrow().clone());
        // This master's own address first, then the standbys'.
        let bootstraps =
            crate::ha::bootstrap_set(own.get().copied(), standing.as_deref().unwrap_or_default());
        // Who leads, as the election says (a leader resumed after a pause may no longer).
        let leader = crate::ha::leader_as_seen(own_name.as_deref(), mesh_addr, standing.as_deref());
        async move {
            let reply = match codec::decode::<BootstrapRequest>(&body) {
                Ok(BootstrapRequest::Join(req)) => {
                    BootstrapReply::Join(master.send(Join(req)).await.unwrap_or_else(|e| {
                        JoinReply::Refused {
                            reason: format!("the master is not running: {e}"),
                        }
                    }))
                }
                Ok(BootstrapRequest::Locate) => match leader {
                    Some((master_addr, _)) => BootstrapReply::Located { master_addr },
                    None => BootstrapReply::Join(JoinReply::Refused {
                        reason:
                            "no master leads now (an election is under way); ask again in a moment"
                                .into(),
                    }),
                },
                Ok(BootstrapRequest::IssueClient(req)) => {
                    BootstrapReply::Client(master.send(IssueClient(req)).await.unwrap_or_else(
                        |e| ClientCertReply::Refused {
                            reason: format!("the master is not running: {e}"),
                        },
                    ))
                }
                Ok(BootstrapRequest::Masters) => BootstrapReply::Masters(MastersReply {
                    leader: leader.map(|(at, _)| at),
                    term: leader.filter(|(_, own)| *own).map(|_| term),
                    bootstraps,
                }),
                Err(e) => BootstrapReply::Join(JoinReply::Refused {
                    reason: format!("malformed bootstrap request from {from}: {e}"),
                }),
            };
            codec::encode(&reply).unwrap_or_default()
        }
    };
    // A standby's port, handed over, answers as this master from now on: it never
    // stopped answering. The listener's task keeps serving after this handle is dropped.
    let bootstrap = match config.bootstrap_server.clone() {
        Some(server) => {
            server.replace_credentials(&creds)?;
            server.replace_handler(answer);
            server
        }
        None => Arc::new(BootstrapServer::bind(config.bootstrap, &creds, answer)?),
    };
    let bootstrap_addr = bootstrap.local_addr()?;
    let _ = own_bootstrap.set(bootstrap_addr);
    // Kept for the renewals and rotations: they change what it presents.
    let _ = keeper.bootstrap.set(bootstrap);
    let api_addr = crate::api::serve(
        api_listener,
        master.clone(),
        api_token,
        bootstrap_addr,
        config.masters.clone(),
    )
    .map_err(|e| MasterError::Api {
        addr: config.api,
        reason: e.to_string(),
    })?;
    actix::spawn(renew_master_certificate(node.downgrade(), keeper));
    info!(mesh = %node.local_addr(), bootstrap = %bootstrap_addr, api = %api_addr, "master up");
    Ok(MasterHandle {
        master,
        node,
        mesh,
        bootstrap: bootstrap_addr,
        api: api_addr,
        api_token_file: config.data_dir.join(API_TOKEN_FILE),
        ca_fingerprint: fingerprint,
        term,
        stepped_down,
        cert_expires,
    })
}
