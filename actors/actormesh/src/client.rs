//! Client identities: a certificate for a program that is not a node of the cluster (the
//! CLI, a user's program), so that it can open mutual-TLS links to nodes and call actors.
//!
//! [`issue`] gets one from the master as an agent joins, but without membership: it makes
//! a key here (the key never leaves), sends a signing request over the bootstrap port with
//! a join token of role `client`, trusts only the CA that token pins, and writes the
//! certificate for `spiffe://<trust-domain>/client/<name>` into a directory:
//!
//! | file | what |
//! |---|---|
//! | `key.pem` | the private key (mode 0600) |
//! | `cert.pem` | the certificate (0600) |
//! | `ca.pem` | the cluster CA certificate (0600) |
//! | `client.json` | the identity and where the master was when it was issued (0600) |
//!
//! [`load`] reads such a directory back; its credentials start a [`crate::Node`], and
//! [`connect`] does all of it: loads the identity, starts a node and its part of the mesh,
//! and waits for the master's registry, so that services can be called by name:
//!
//! ```no_run
//! # async fn kv() -> Result<(), Box<dyn std::error::Error>> {
//! # #[derive(serde::Serialize, serde::Deserialize, actormesh::RemoteMessage)]
//! # #[remote(name = "kv.Get/v1", reply = Option<String>)]
//! # struct Get { key: String }
//! use std::time::Duration;
//! let mesh = actormesh::client::connect("actormesh-dev/client".as_ref(), Duration::from_secs(5)).await?;
//! let value = mesh.service("default/kv")?.ask(Get { key: "greeting".into() }).await?;
//! mesh.node().shutdown();
//! # Ok(()) }
//! ```
//!
//! The
//! master does not list clients as nodes, and `$master` refuses a client identity for
//! agent messages. A client certificate is not renewed: issue a new one before it expires.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use actormesh_transport::codec::{self, CodecError};
use actormesh_transport::pki::{files, Credentials, NodeKey, PkiError};
use actormesh_transport::{bootstrap, SpiffeId, TransportError};

use crate::mesh::{Mesh, MeshOptions};
use crate::protocol::{
    BootstrapReply, BootstrapRequest, ClientCertReply, ClientCertRequest, JoinReply,
};
use crate::token::{JoinToken, TokenFormatError};
use crate::{Node, NodeConfig, NodeError};

/// The path prefix of client identities: `spiffe://<td>/client/<name>`.
pub const CLIENT_PATH_PREFIX: &str = "/client/";

/// The file in a client directory that records its identity and the master's address.
pub const CLIENT_FILE: &str = "client.json";

/// The longest client name.
pub const MAX_CLIENT_NAME: usize = 63;

/// How long [`issue`] waits for the bootstrap port's answer.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(15);

/// A client name that cannot name an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client name {0:?} is not valid: use 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit")]
pub struct InvalidClientName(pub String);

/// Checks a client name: 1 to [`MAX_CLIENT_NAME`] lowercase letters, digits, `-` or `_`,
/// starting with a letter or digit (one segment of a SPIFFE path).
pub fn check_client_name(name: &str) -> Result<(), InvalidClientName> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CLIENT_NAME
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidClientName(name.to_string()))
    }
}

/// Whether `id` is a client identity (`spiffe://<td>/client/<name>`), not a node's or a
/// service's.
pub fn is_client_identity(id: &SpiffeId) -> bool {
    id.path().starts_with(CLIENT_PATH_PREFIX)
}

/// `spiffe://<trust_domain>/client/<name>`, for a valid name.
pub fn client_identity(trust_domain: &str, name: &str) -> Result<SpiffeId, ClientError> {
    check_client_name(name)?;
    Ok(SpiffeId::parse(&format!(
        "spiffe://{trust_domain}{CLIENT_PATH_PREFIX}{name}"
    ))?)
}

/// Why a client certificate could not be issued or loaded; each variant names what was
/// wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client name is not valid.
    #[error(transparent)]
    InvalidName(#[from] InvalidClientName),
    /// The token does not parse.
    #[error(transparent)]
    Token(#[from] TokenFormatError),
    /// The identity is not a valid SPIFFE id.
    #[error(transparent)]
    Identity(#[from] actormesh_transport::identity::IdentityError),
    /// Making the key or CSR, or reading the certificates failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A bootstrap message could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The bootstrap port could not be reached, or its CA is not the one the token pins.
    #[error("cannot get a client certificate through {addr}: {source}")]
    Unreachable {
        /// The bootstrap address.
        addr: SocketAddr,
        /// The transport's reason.
        source: TransportError,
    },
    /// The master refused (a wrong, expired or agent token, a bad name).
    #[error("the master refused the client certificate: {0}")]
    Refused(String),
    /// The bootstrap port answered with something other than what was asked.
    #[error("the bootstrap port at {0} answered a client certificate request with something else")]
    UnexpectedReply(SocketAddr),
    /// The certificate the master signed is not for a client identity.
    #[error("the master signed {0}, which is not a client identity (spiffe://<td>/client/<name>)")]
    NotAClient(SpiffeId),
    /// Reading or writing the client directory failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Storage {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `client.json` does not parse.
    #[error("{} is not a valid client file: {source}", path.display())]
    ClientFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: serde_json::Error,
    },
}

/// What `client.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The client's SPIFFE id.
    pub identity: String,
    /// The master's mesh address when the certificate was issued.
    pub master_addr: SocketAddr,
    /// The bootstrap address it was issued through (ask it with
    /// [`BootstrapRequest::Locate`] if the master moved).
    pub bootstrap: SocketAddr,
    /// Every master's bootstrap address known (with several masters), asked at
    /// [`ClientCredentials::connect`] which leads, so the client finds the leader when
    /// the master it was issued by is gone. Written since HA masters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masters: Vec<SocketAddr>,
}

/// A client identity on disk, loaded.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The client's identity, `spiffe://<td>/client/<name>`.
    pub identity: SpiffeId,
    /// Key, certificate and CA: give them to [`crate::Node::start`].
    pub credentials: Credentials,
    /// The directory they are in.
    pub dir: PathBuf,
    /// Where the master's mesh node was, and the bootstrap port.
    pub record: ClientRecord,
}

/// Gets a certificate for `spiffe://<td>/client/<name>` from the master's bootstrap port
/// at `bootstrap`, with `token` (role `client`), and writes it into `out_dir` (created,
/// mode 0700; files 0600). Replaces a client identity already there.
pub async fn issue(
    bootstrap: SocketAddr,
    token: &str,
    name: &str,
    out_dir: &Path,
) -> Result<ClientCredentials, ClientError> {
    check_client_name(name)?;
    let token: JoinToken = token.parse()?;
    let key = NodeKey::generate()?;
    // The master decides the identity; the CSR only carries the public key.
    let placeholder = SpiffeId::parse(&format!("spiffe://joining{CLIENT_PATH_PREFIX}{name}"))?;
    let request = BootstrapRequest::IssueClient(ClientCertRequest {
        token_id: token.id.clone(),
        token_secret: token.secret.clone(),
        name: name.to_string(),
        csr_pem: key.csr(&placeholder)?,
    });
    let (reply, bundle) = bootstrap::request(
        bootstrap,
        &token.ca_fingerprint,
        &codec::encode(&request)?,
        ISSUE_TIMEOUT,
    )
    .await
    .map_err(|source| ClientError::Unreachable {
        addr: bootstrap,
        source,
    })?;
    let (cert_pem, master_addr) = match codec::decode::<BootstrapReply>(&reply)? {
        BootstrapReply::Client(ClientCertReply::Issued {
            cert_pem,
            master_addr,
            ..
        }) => (cert_pem, master_addr),
        BootstrapReply::Client(ClientCertReply::Refused { reason })
        // A master that predates client certificates answers with a join refusal.
        | BootstrapReply::Join(JoinReply::Refused { reason }) => {
            return Err(ClientError::Refused(reason))
        }
        _ => return Err(ClientError::UnexpectedReply(bootstrap)),
    };
    // The whole bundle the master lists: during a CA rotation, the old and the new CA.
    let ca_pem = actormesh_transport::trust::bundle_pem(&bundle);
    let credentials = key.credentials(&cert_pem, &ca_pem)?;
    let identity = credentials.identity()?;
    if !is_client_identity(&identity) {
        return Err(ClientError::NotAClient(identity));
    }
    // Every master, so that the client finds the leader when this one is gone.
    let mut masters = vec![bootstrap];
    if let Some(found) = crate::masters::locate(&masters, &bundle, ISSUE_TIMEOUT).await {
        crate::masters::learn(&mut masters, &found.bootstraps);
    }
    let record = ClientRecord {
        identity: identity.to_string(),
        master_addr,
        bootstrap,
        masters: if masters.len() > 1 {
            masters
        } else {
            Vec::new()
        },
    };
    save(out_dir, &key.pem(), &cert_pem, &ca_pem, &record)?;
    Ok(ClientCredentials {
        identity,
        credentials,
        dir: out_dir.to_path_buf(),
        record,
    })
}

/// Reads a client identity written by [`issue`] (or `actormesh cert issue --client`).
pub fn load(dir: &Path) -> Result<ClientCredentials, ClientError> {
    let credentials = Credentials::load(dir)?;
    let identity = credentials.identity()?;
    if !is_client_identity(&identity) {
        return Err(ClientError::NotAClient(identity));
    }
    let file = dir.join(CLIENT_FILE);
    let text = std::fs::read_to_string(&file).map_err(|source| ClientError::Storage {
        what: "read",
        path: file.clone(),
        source,
    })?;
    let record: ClientRecord =
        serde_json::from_str(&text).map_err(|source| ClientError::ClientFile {
            path: file.clone(),
            source,
        })?;
    Ok(ClientCredentials {
        identity,
        credentials,
        dir: dir.to_path_buf(),
        record,
    })
}

/// Why [`connect`] gave no mesh; each variant names what to check. The cause is part of
/// the message, not a `source`, so a printer of the error chain says it once.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The client identity could not be loaded.
    #[error("no client identity in {}: {error} (`actormesh dev` writes one into <data-dir>/client; else `actormesh cert issue --client <name> --token <t> --out <dir>`)", dir.display())]
    Identity {
        /// The directory given.
        dir: PathBuf,
        /// Why it did not load.
        error: ClientError,
    },
    /// The client's node did not start.
    #[error("cannot start the client node: {0}")]
    Node(NodeError),
    /// The master sent no registry in time.
    #[error("the master at {master} sent no registry within {waited:?}; is it running, and does it accept this client ({identity})?")]
    NoRegistry {
        /// The master's mesh address.
        master: SocketAddr,
        /// How long it was waited for.
        waited: Duration,
        /// The client's identity.
        identity: SpiffeId,
    },
}

/// The local address a client node binds to reach `peer`: loopback for a master on
/// loopback, else any address of the peer's family.
fn bind_for(peer: SocketAddr) -> SocketAddr {
    let ip = match peer.ip() {
        ip if ip.is_loopback() => ip,
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

/// Loads the client identity in `dir` (see [`load`]) and [`ClientCredentials::connect`]s
/// it to the master it was issued by, in the namespace `default`.
pub async fn connect(dir: &Path, wait: Duration) -> Result<Mesh, ConnectError> {
    let client = load(dir).map_err(|error| ConnectError::Identity {
        dir: dir.to_path_buf(),
        error,
    })?;
    client.connect(MeshOptions::default(), wait).await
}

impl ClientCredentials {
    /// Starts a node with this identity on a port the OS picks, and its part of the mesh
    /// (a Proxy subscribed to `options.master`, or the master recorded with the identity
    /// when that is `None`), and waits at most `wait` until the Proxy has the master's
    /// registry, so that a call by name right after finds the endpoints. Call inside an
    /// actix system; `mesh.node().shutdown()` closes the node's links.
    ///
    /// With several masters known (`record.masters`), the Proxy subscribes to whichever
    /// leads now, asked of their bootstrap ports at once.
    pub async fn connect(
        &self,
        mut options: MeshOptions,
        wait: Duration,
    ) -> Result<Mesh, ConnectError> {
        if options.master.is_none() && !self.record.masters.is_empty() {
            let limit = wait.min(Duration::from_secs(5));
            if let Some(found) =
                crate::masters::locate(&self.record.masters, &self.credentials.trust, limit).await
            {
                options.master = Some(found.leader);
            }
        }
        let master = *options.master.get_or_insert(self.record.master_addr);
        let node = Node::start(NodeConfig::new(bind_for(master)), &self.credentials)
            .map_err(ConnectError::Node)?;
        let mesh = match Mesh::start(&node, options) {
            Ok(mesh) => mesh,
            Err(e) => {
                node.shutdown();
                return Err(ConnectError::Node(e));
            }
        };
        let mut applied = mesh.applied();
        let got = tokio::time::timeout(wait, applied.wait_for(|v| v.is_some()))
            .await
            .is_ok_and(|r| r.is_ok());
        if !got {
            node.shutdown();
            return Err(ConnectError::NoRegistry {
                master,
                waited: wait,
                identity: self.identity.clone(),
            });
        }
        Ok(mesh)
    }
}

fn save(
    dir: &Path,
    key_pem: &str,
    cert_pem: &str,
    ca_pem: &str,
    record: &ClientRecord,
) -> Result<(), ClientError> {
    let storage = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| ClientError::Storage { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(storage("create", dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(storage("restrict", dir))?;
    }
    let json = serde_json::to_string_pretty(record).map_err(|source| ClientError::ClientFile {
        path: dir.join(CLIENT_FILE),
        source,
    })?;
    // The certificate last: until it is in place, a reader finds the old set's certificate,
    // which the new key does not match, and says so, rather than a half-written file.
    for (file, text) in [
        (files::CA_CERT, ca_pem),
        (files::KEY, key_pem),
        (CLIENT_FILE, json.as_str()),
        (files::CERT, cert_pem),
    ] {
        let path = dir.join(file);
        crate::agent::write_private(&path, text).map_err(storage("write", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_node_binds_loopback_only_for_a_master_on_loopback() {
        let bind = |a: &str| bind_for(a.parse().unwrap()).to_string();
        assert_eq!(bind("127.0.0.1:7000"), "127.0.0.1:0");
        assert_eq!(bind("[::1]:7000"), "[::1]:0");
        assert_eq!(bind("10.1.2.3:7000"), "0.0.0.0:0");
        assert_eq!(bind("[fd00::1]:7000"), "[::]:0");
    }

    #[test]
    fn client_names_follow_the_rule_and_a_refusal_names_it() {
        for good in ["cli", "a", "my-app_2", "0day", &"x".repeat(63)] {
            assert_eq!(check_client_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-cli",
            "_cli",
            "Cli",
            "my app",
            "a/b",
            "a.b",
            "é",
            &"x".repeat(64),
        ] {
            let e = check_client_name(bad).unwrap_err();
            assert!(
                e.to_string()
                    .contains("1 to 63 lowercase letters, digits, '-' or '_'"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn client_identities_are_told_from_node_and_service_identities() {
        let c = client_identity("td", "cli").unwrap();
        assert_eq!(c.as_str(), "spiffe://td/client/cli");
        assert!(is_client_identity(&c));
        assert!(!is_client_identity(
            &SpiffeId::node("td", "client").unwrap()
        ));
        assert!(!is_client_identity(
            &SpiffeId::service("td", "client", "x").unwrap()
        ));
        assert!(matches!(
            client_identity("td", "Bad"),
            Err(ClientError::InvalidName(_))
        ));
    }

    #[test]
    fn saved_files_are_private_and_load_back() {
        let dir = std::env::temp_dir().join(format!("am-client-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = crate::LocalCa::new("td").unwrap();
        let issued = ca
            .authority()
            .issue(
                &client_identity("td", "cli").unwrap(),
                Duration::from_secs(60),
            )
            .unwrap();
        let record = ClientRecord {
            identity: "spiffe://td/client/cli".into(),
            master_addr: "127.0.0.1:7000".parse().unwrap(),
            bootstrap: "127.0.0.1:7001".parse().unwrap(),
            masters: Vec::new(),
        };
        save(
            &dir,
            &issued.key_pem,
            &issued.cert_pem,
            &issued.ca_pem,
            &record,
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [files::KEY, files::CERT, files::CA_CERT, CLIENT_FILE] {
                let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let loaded = load(&dir).unwrap();
        assert_eq!(loaded.identity.as_str(), "spiffe://td/client/cli");
        assert_eq!(loaded.record, record);
        // A node certificate in a client directory is refused by name.
        let node = ca
            .authority()
            .issue(
                &SpiffeId::node("td", "n1").unwrap(),
                Duration::from_secs(60),
            )
            .unwrap();
        node.save(&dir.join("node")).unwrap();
        std::fs::copy(dir.join(CLIENT_FILE), dir.join("node").join(CLIENT_FILE)).unwrap();
        assert!(matches!(
            load(&dir.join("node")),
            Err(ClientError::NotAClient(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
