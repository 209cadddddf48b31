//! A standby master's bootstrap port (`actormesh master --zk` while another leads): it
//! tells where the leader is and which masters there are, and forwards joins and client
//! certificate requests to the leader, so a node or client given any master's bootstrap
//! address gets in. It presents its own certificate (`master/<name>`), signed with the CA
//! it reads from the store (it writes nothing), and serves once the first leader has
//! made the CA.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use actormesh::protocol::{
    BootstrapReply, BootstrapRequest, ClientCertReply, JoinReply, MastersReply,
};
use actormesh_transport::bootstrap::{self, BootstrapServer};
use actormesh_transport::codec;
use actormesh_transport::pki::Credentials;
use actormesh_transport::SpiffeId;

use super::boot::{load_rotation, master_key, private_dir, stored_ca};
use super::{MasterConfig, MasterError};
use crate::ha::{bootstrap_set, MasterInfo};
use crate::state::StateStore;

/// How often the standby reads the CAs again: a rotation is presented within this long
/// (its certificate is signed again only when they changed, or at half its life).
const REFRESH: Duration = Duration::from_secs(5);
/// How often it looks for the CA before the first leader made it.
const NO_CA_YET: Duration = Duration::from_millis(500);
/// How long a forwarded request may take (the bootstrap port gives a request 10 s).
const FORWARD: Duration = Duration::from_secs(8);

/// A standby's bootstrap port, serving until handed over ([`StandbyBootstrap::hand_over`]) or dropped.
#[derive(Debug)]
pub struct StandbyBootstrap {
    task: tokio::task::JoinHandle<()>,
    server: Arc<Mutex<Option<BootstrapServer>>>,
    serving: watch::Receiver<bool>,
}

impl Drop for StandbyBootstrap {
    fn drop(&mut self) {
        self.task.abort();
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(s) = server {
            s.shut();
        }
    }
}

impl StandbyBootstrap {
    /// Resolves once the port serves (the first leader may not have made the CA yet).
    pub fn serving(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut serving = self.serving.clone();
        async move {
            let _ = serving.wait_for(|s| *s).await;
        }
    }

    /// Stops answering as a standby and gives the port, still bound, to the master this
    /// one becomes (`MasterConfig::bootstrap_server`); `None` if it did not serve yet.
    pub async fn hand_over(mut self) -> Option<BootstrapServer> {
        self.task.abort();
        // Ended, so it binds nothing after the port is taken from it here.
        let _ = (&mut self.task).await;
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        server
    }
}

/// Serves the bootstrap port of standby master `name` at `config.bootstrap`, the
/// masters standing as `masters` says, the CA read from `store`.
pub fn serve_standby_bootstrap(
    config: &MasterConfig,
    name: String,
    store: Arc<dyn StateStore>,
    masters: watch::Receiver<Vec<MasterInfo>>,
) -> StandbyBootstrap {
    let server = Arc::new(Mutex::new(None::<BootstrapServer>));
    let (config, kept) = (config.clone(), server.clone());
    let (serves, serving) = watch::channel(false);
    let task = tokio::spawn(async move {
        let pin = Arc::new(RwLock::new(String::new()));
        // The bundle the certificate presented was signed under, and when.
        let mut signed: Option<(String, Instant)> = None;
        loop {
            let fresh = credentials(store.as_ref(), &config, &name, signed.as_ref()).await;
            let wait = match fresh {
                Ok(Some(None)) => REFRESH,
                Ok(Some(Some((creds, fingerprint, digest)))) => {
                    *pin.write().unwrap_or_else(|p| p.into_inner()) = fingerprint;
                    let mut slot = kept.lock().unwrap_or_else(|p| p.into_inner());
                    match slot.as_ref() {
                        Some(s) => match s.replace_credentials(&creds) {
                            Ok(()) => signed = Some((digest, Instant::now())),
                            Err(e) => {
                                warn!(error = %e, "the standby's bootstrap port keeps its certificate")
                            }
                        },
                        None => {
                            let (name, masters, pin) = (name.clone(), masters.clone(), pin.clone());
                            let bound =
                                BootstrapServer::bind(config.bootstrap, &creds, move |body, _| {
                                    let leader_pin =
                                        pin.read().unwrap_or_else(|p| p.into_inner()).clone();
                                    answer(name.clone(), masters.borrow().clone(), leader_pin, body)
                                });
                            match bound {
                                Ok(s) => {
                                    info!(bootstrap = %config.bootstrap, "the standby's bootstrap port serves");
                                    *slot = Some(s);
                                    signed = Some((digest, Instant::now()));
                                    serves.send_replace(true);
                                }
                                Err(e) => {
                                    warn!(error = %e, "the standby cannot serve its bootstrap port yet")
                                }
                            }
                        }
                    }
                    // A port not bound yet is tried again soon.
                    if slot.is_some() {
                        REFRESH
                    } else {
                        NO_CA_YET
                    }
                }
                Ok(None) => {
                    debug!("no CA in the store yet: the first leader makes it");
                    NO_CA_YET
                }
                Err(e) => {
                    warn!(error = %e, "the standby cannot read the CA from the store");
                    NO_CA_YET * 4
                }
            };
            tokio::time::sleep(wait).await;
        }
    });
    StandbyBootstrap {
        task,
        server,
        serving,
    }
}

/// What [`credentials`] found: new credentials, the fingerprint of the CA that nodes pin
/// and the digest of the bundle; `None` when those `signed` still stand.
type Fresh = Option<(Credentials, String, String)>;

/// The standby's credentials, over the master's key and signed with the CA in the store:
/// `None` while there is no CA yet; `Some(None)` if the bundle is the one `signed` was
/// for and that certificate is younger than half its life.
async fn credentials(
    store: &dyn StateStore,
    config: &MasterConfig,
    name: &str,
    signed: Option<&(String, Instant)>,
) -> Result<Option<Fresh>, MasterError> {
    let Some(ca) = stored_ca(store).await? else {
        return Ok(None);
    };
    let fingerprint = ca.fingerprint();
    let me = SpiffeId::master(ca.trust_domain(), name)?;
    let (cas, _) = load_rotation(store, ca).await?;
    let digest = actormesh_transport::trust::digest(&cas.bundle());
    if signed.is_some_and(|(d, at)| *d == digest && at.elapsed() < config.master_cert_ttl / 2) {
        return Ok(Some(None));
    }
    private_dir(&config.data_dir)?;
    let key = master_key(&config.data_dir)?;
    let cert = cas.sign_csr(&key.csr(&me)?, &me, config.master_cert_ttl)?;
    let mut creds = key.credentials(&cert, cas.current.cert_pem())?;
    creds.trust = cas.bundle();
    Ok(Some(Some((creds, fingerprint, digest))))
}

/// The standby `name`'s answer to `body`, the masters standing being `masters` (the
/// leader first); a join or a client certificate request goes to the leader, whose CA
/// has `pin`.
async fn answer(name: String, masters: Vec<MasterInfo>, pin: String, body: Vec<u8>) -> Vec<u8> {
    let leader = masters.first().filter(|l| l.name != name).cloned();
    let none_leads = || {
        format!("master {name} is a standby and no master leads now (an election is under way); ask again in a moment")
    };
    let reply = match codec::decode::<BootstrapRequest>(&body) {
        Ok(BootstrapRequest::Locate) => match &leader {
            Some(l) => BootstrapReply::Located {
                master_addr: l.mesh,
            },
            None => BootstrapReply::Join(JoinReply::Refused {
                reason: none_leads(),
            }),
        },
        Ok(BootstrapRequest::Masters) => BootstrapReply::Masters(MastersReply {
            leader: leader.as_ref().map(|l| l.mesh),
            term: None,
            bootstraps: bootstrap_set(None, &masters),
        }),
        Ok(BootstrapRequest::Join(_)) => match &leader {
            Some(l) => {
                return forward(&name, l, &pin, &body, |reason| {
                    BootstrapReply::Join(JoinReply::Refused { reason })
                })
                .await
            }
            None => BootstrapReply::Join(JoinReply::Refused {
                reason: none_leads(),
            }),
        },
        Ok(BootstrapRequest::IssueClient(_)) => match &leader {
            Some(l) => {
                return forward(&name, l, &pin, &body, |reason| {
                    BootstrapReply::Client(ClientCertReply::Refused { reason })
                })
                .await
            }
            None => BootstrapReply::Client(ClientCertReply::Refused {
                reason: none_leads(),
            }),
        },
        Err(e) => BootstrapReply::Join(JoinReply::Refused {
            reason: format!("malformed bootstrap request: {e}"),
        }),
    };
    codec::encode(&reply).unwrap_or_default()
}

/// Sends `body` on to the leader `l`'s bootstrap port and gives back its answer as it is;
/// if the leader cannot be reached, `refused` says so.
async fn forward(
    name: &str,
    l: &MasterInfo,
    pin: &str,
    body: &[u8],
    refused: impl FnOnce(String) -> BootstrapReply,
) -> Vec<u8> {
    match bootstrap::request(l.bootstrap, pin, body, FORWARD).await {
        Ok((reply, _)) => reply,
        Err(e) => codec::encode(&refused(format!(
            "master {name} is a standby and could not reach the leading master {} at {}: {e}",
            l.name, l.bootstrap
        )))
        .unwrap_or_default(),
    }
}
