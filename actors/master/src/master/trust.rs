//! The master's side of the trust lifecycle: the CAs it holds, which one signs, its own
//! certificate (renewed at half its life, reissued when the signer changes), and the CA
//! rotation steps (`actormesh ca rotate`), whose rules are `crate::rotation`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use tracing::{info, warn};

use actormesh_transport::bootstrap::BootstrapServer;
use actormesh_transport::pki::{
    CertificateAuthority, Credentials, NodeKey, PkiError, DEFAULT_CA_TTL,
};
use actormesh_transport::quinn::rustls::pki_types::CertificateDer;
use actormesh_transport::trust;
use actormesh_transport::SpiffeId;

use super::boot::{io_error, write_private, MasterError};
use super::Master;
use crate::core::{OperatorError, StepCa};
use crate::rotation::{Phase, RotationStatus};

/// The CAs the master holds and where a rotation stands.
pub(crate) struct Cas {
    /// The CA trusted before the rotation (the only one when stable).
    pub current: Arc<CertificateAuthority>,
    /// The CA rotated to.
    pub next: Option<Arc<CertificateAuthority>>,
    /// The new CA's certificate signed by the current one.
    pub bridge: Option<String>,
    /// Where the rotation stands.
    pub phase: Phase,
}

impl Cas {
    /// The CA that signs now.
    pub fn signer(&self) -> &Arc<CertificateAuthority> {
        match (&self.next, self.phase) {
            (Some(next), Phase::Moving) => next,
            _ => &self.current,
        }
    }

    /// The CAs trusted now, as DER.
    pub fn bundle(&self) -> Vec<CertificateDer<'static>> {
        let mut b = vec![self.current.cert_der().clone()];
        b.extend(self.next.iter().map(|n| n.cert_der().clone()));
        b
    }

    /// What a certificate signed now is presented with: the bridge, while the new CA
    /// signs, so that a peer that trusts only the old CA accepts it.
    fn chain_tail(&self) -> &str {
        match self.phase {
            Phase::Moving => self.bridge.as_deref().unwrap_or(""),
            _ => "",
        }
    }

    /// Signs a CSR with the CA that signs now; the PEM holds the chain to present.
    pub fn sign_csr(&self, csr: &str, id: &SpiffeId, ttl: Duration) -> Result<String, PkiError> {
        Ok(self.signer().sign_csr(csr, id, ttl)? + self.chain_tail())
    }

    fn step_ca(ca: &CertificateAuthority, bundle: &[CertificateDer<'_>]) -> StepCa {
        StepCa {
            fingerprint: ca.fingerprint(),
            cert_pem: ca.cert_pem().to_string(),
            key_pem: ca.key_pem(),
            bridge_pem: String::new(),
            bundle_pem: trust::bundle_pem(bundle),
            digest: trust::digest(bundle),
        }
    }
}

/// What the master actor and its certificate renewal share.
pub(crate) struct Keeper {
    pub cas: RwLock<Cas>,
    /// The bootstrap port, once bound: it presents the master's certificate too.
    pub bootstrap: OnceLock<Arc<BootstrapServer>>,
    /// The data dir (the master's key file).
    pub dir: PathBuf,
    /// Lifetime of the master's own certificate.
    pub ttl: Duration,
    /// Expiry of the master's certificate, ms since the epoch.
    pub expires: Arc<AtomicU64>,
    /// The fingerprint of the CA that issued the master's certificate.
    pub master_ca: RwLock<String>,
}

/// The master's key file in its data dir.
pub(crate) const MASTER_KEY_FILE: &str = "master-key.pem";

impl Keeper {
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Cas> {
        self.cas.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cas> {
        self.cas.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the master's own certificate is from the CA that signs.
    pub fn master_moved(&self) -> bool {
        *self.master_ca.read().unwrap_or_else(|p| p.into_inner())
            == self.read().signer().fingerprint()
    }

    /// The master's credentials over `key`, from the CA that signs now, with the bundle.
    pub fn master_credentials(
        &self,
        key: &NodeKey,
        id: &SpiffeId,
    ) -> Result<Credentials, MasterError> {
        let cas = self.read();
        let cert = cas.sign_csr(&key.csr(id)?, id, self.ttl)?;
        let mut creds = key.credentials(&cert, cas.current.cert_pem())?;
        creds.trust = cas.bundle();
        *self.master_ca.write().unwrap_or_else(|p| p.into_inner()) = cas.signer().fingerprint();
        if let Some(t) = creds.not_after() {
            self.expires
                .store(crate::timestamp::ms_since_epoch(t), Ordering::Relaxed);
        }
        Ok(creds)
    }

    /// A new key and certificate for the master, presented by its node and its bootstrap
    /// port from the next handshake on (links up keep theirs); the key file is replaced.
    pub fn reissue(&self, node: &actormesh::Node) -> Result<SystemTime, MasterError> {
        let key = NodeKey::generate()?;
        let creds = self.master_credentials(&key, &node.identity())?;
        node.endpoint().replace_credentials(&creds)?;
        if let Some(b) = self.bootstrap.get() {
            b.replace_credentials(&creds)?;
        }
        let file = self.dir.join(MASTER_KEY_FILE);
        let tmp = self.dir.join(format!("{MASTER_KEY_FILE}.new"));
        write_private(&tmp, &key.pem()).map_err(io_error("cannot write the master key", &tmp))?;
        std::fs::rename(&tmp, &file).map_err(io_error("cannot replace the master key", &file))?;
        Ok(creds.not_after().unwrap_or(SystemTime::now() + self.ttl))
    }

    fn expiry(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.expires.load(Ordering::Relaxed))
    }

    /// Trusts the bundle in force on the node's endpoint; says how many links it closed.
    fn apply_trust(&self, node: &actormesh::Node) -> Result<usize, MasterError> {
        let bundle = self.read().bundle();
        Ok(node.endpoint().replace_trust(&bundle)?)
    }
}

/// Renews the master's own certificate as an agent renews its own: at half its life, a
/// new key and a certificate (from the CA that signs then), handed to the node's endpoint
/// and the bootstrap port. A failure is retried a minute later (or at a quarter of what is
/// left, if sooner). A reissue meanwhile (a CA rotation) moves the next renewal. Ends with
/// the node.
pub(crate) async fn renew_master_certificate(node: actormesh::WeakNode, keeper: Arc<Keeper>) {
    loop {
        let expiry = keeper.expiry();
        let half = expiry.duration_since(SystemTime::now()).unwrap_or_default() / 2;
        tokio::time::sleep(half).await;
        if keeper.expiry() != expiry {
            continue;
        }
        let Some(node) = node.upgrade() else { return };
        match keeper.reissue(&node) {
            Ok(expiry) => {
                info!(expires = %crate::timestamp::format(expiry), "master certificate renewed")
            }
            Err(e) => {
                let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
                let wait = Duration::from_secs(60)
                    .min(left / 4)
                    .max(Duration::from_millis(100));
                warn!(error = %e, retry_in = ?wait, "master certificate renewal failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// A step of a CA rotation, asked through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationAction {
    /// Make a new CA and trust it beside the current one.
    Begin,
    /// Drop the old CA (`force`: even while something depends on it).
    Finish {
        /// Drop it anyway.
        force: bool,
    },
    /// Forget a new CA that does not sign yet.
    Abort,
}

/// Takes a rotation step; answers where the rotation stands after it.
#[derive(Debug, Message)]
#[rtype(result = "Result<RotationStatus, OperatorError>")]
pub struct RotateCa(pub RotationAction);

/// Where a CA rotation stands.
#[derive(Debug, Message)]
#[rtype(result = "RotationStatus")]
pub struct CaStatus;

impl Handler<CaStatus> for Master {
    type Result = MessageResult<CaStatus>;
    fn handle(&mut self, _: CaStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.core
                .rotation_status(self.keeper.master_moved(), SystemTime::now()),
        )
    }
}

impl Handler<RotateCa> for Master {
    type Result = ResponseFuture<Result<RotationStatus, OperatorError>>;
    fn handle(&mut self, m: RotateCa, ctx: &mut Context<Self>) -> Self::Result {
        let step = match m.0 {
            RotationAction::Begin => match self.begin_rotation() {
                Ok(step) => step,
                Err(e) => return Box::pin(async move { Err(e) }),
            },
            RotationAction::Finish { force } => {
                let (next, bundle) = {
                    let cas = self.keeper.read();
                    let next = cas.next.clone();
                    (
                        next,
                        cas.next
                            .iter()
                            .map(|n| n.cert_der().clone())
                            .collect::<Vec<_>>(),
                    )
                };
                let Some(next) = next else {
                    return Box::pin(async {
                        Err(OperatorError::Invalid(
                            "no CA rotation is under way (`actormesh ca rotate begin`)".into(),
                        ))
                    });
                };
                let step = self.core.finish_rotation(
                    Cas::step_ca(&next, &bundle),
                    force,
                    self.keeper.master_moved(),
                    SystemTime::now(),
                );
                if step.reply.is_ok() {
                    let mut cas = self.keeper.write();
                    cas.current = next;
                    cas.next = None;
                    cas.bridge = None;
                    cas.phase = Phase::Stable;
                }
                step
            }
            RotationAction::Abort => {
                let current = self.keeper.read().current.clone();
                let step = self
                    .core
                    .abort_rotation(Cas::step_ca(&current, &[current.cert_der().clone()]));
                if step.reply.is_ok() {
                    let mut cas = self.keeper.write();
                    cas.next = None;
                    cas.bridge = None;
                    cas.phase = Phase::Stable;
                }
                step
            }
        };
        if step.reply.is_ok() {
            self.install_trust();
        }
        let stored = self.carry_out_stored(step.effects, ctx);
        let reply = step.reply;
        let status = self
            .core
            .rotation_status(self.keeper.master_moved(), SystemTime::now());
        Box::pin(async move {
            reply?;
            stored.await.map_err(|e| {
                OperatorError::Unavailable(format!("cannot record the rotation step: {e}"))
            })?;
            Ok(status)
        })
    }
}

impl Master {
    fn begin_rotation(
        &mut self,
    ) -> Result<crate::core::Step<Result<(), OperatorError>>, OperatorError> {
        let current = self.keeper.read().current.clone();
        let made = CertificateAuthority::generate(current.trust_domain(), DEFAULT_CA_TTL)
            .and_then(|next| current.cross_sign(&next).map(|bridge| (next, bridge)));
        let (next, bridge) =
            made.map_err(|e| OperatorError::Unavailable(format!("cannot make the new CA: {e}")))?;
        let bundle = [current.cert_der().clone(), next.cert_der().clone()];
        let mut step_ca = Cas::step_ca(&next, &bundle);
        step_ca.bridge_pem = bridge.clone();
        let step = self.core.begin_rotation(step_ca, SystemTime::now());
        if step.reply.is_ok() {
            let mut cas = self.keeper.write();
            cas.next = Some(Arc::new(next));
            cas.bridge = Some(bridge);
            cas.phase = Phase::Adding;
        }
        Ok(step)
    }

    /// Trusts the bundle in force, and presents a new certificate from the CA that signs
    /// now, with the bundle (the bootstrap port lists it for joining nodes).
    fn install_trust(&mut self) {
        match self.keeper.apply_trust(&self.node) {
            Ok(closed) if closed > 0 => {
                info!(
                    closed,
                    "closed links whose peers' certificates are from a CA no longer trusted"
                )
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot trust the new bundle"),
        }
        match self.keeper.reissue(&self.node) {
            Ok(expiry) => info!(
                signer = %self.keeper.read().signer().fingerprint(),
                expires = %crate::timestamp::format(expiry),
                "master certificate reissued"
            ),
            Err(e) => warn!(error = %e, "cannot reissue the master certificate"),
        }
    }

    /// Lets the new CA sign once every agent trusts it (checked after each heartbeat).
    pub(super) fn switch_ca_when_ready(&mut self, ctx: &mut Context<Self>) {
        if !self.core.rotation_may_switch() {
            return;
        }
        let step = self.core.switch_rotation(SystemTime::now());
        if step.reply.is_ok() {
            self.keeper.write().phase = Phase::Moving;
            self.install_trust();
        }
        self.carry_out(step.effects, ctx);
    }
}
