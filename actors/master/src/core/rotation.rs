//! CA rotation in the core: each step checks its rule (`crate::rotation`), records what
//! it changes in the store, and changes the trust the core hands out. The shell makes the
//! new CA and swaps the certificates the master presents.

use std::time::SystemTime;

use tracing::info;

use super::{ClusterCore, OperatorError, Step};
use crate::rotation::{
    finish_blockers, progress, switch_blockers, AgentProgress, Phase, RotationRecord,
    RotationStatus, TrustView, META_CA_BRIDGE, META_CA_CERT, META_CA_KEY, META_NEXT_CA_CERT,
    META_NEXT_CA_KEY, META_ROTATION,
};
use crate::state::{Change, Table};
use crate::timestamp::ms_since_epoch;
use actormesh_transport::codec;

/// A CA for a rotation step, as PEM, with the bundle nodes trust once the step is taken.
#[derive(Debug, Clone)]
pub struct StepCa {
    /// The CA's fingerprint.
    pub fingerprint: String,
    /// Its certificate.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
    /// The bridge (begin only): the new CA signed by the current one.
    pub bridge_pem: String,
    /// The bundle in force after the step, as PEM.
    pub bundle_pem: String,
    /// Its digest.
    pub digest: String,
}

impl ClusterCore {
    /// The trust in force: the CAs and where a rotation stands.
    pub fn trust(&self) -> &TrustView {
        &self.trust
    }

    fn rotation_progress(&self) -> Vec<AgentProgress> {
        progress(
            &self.trust,
            self.membership.all().map(|a| (a.id.as_str(), a.state)),
            &self.agent_trust,
        )
    }

    /// Where a rotation stands, for the API; `master_moved`: the master's own certificate
    /// is from the CA that signs.
    pub fn rotation_status(&self, master_moved: bool, wall: SystemTime) -> RotationStatus {
        let agents = self.rotation_progress();
        RotationStatus {
            phase: self.trust.phase,
            current: self.trust.current.clone(),
            next: self.trust.next.clone(),
            signer: self.trust.signer().to_string(),
            began: self.trust.began,
            switched: self.trust.switched,
            switch_blockers: match self.trust.phase {
                Phase::Adding => switch_blockers(&self.trust, &agents),
                _ => Vec::new(),
            },
            finish_blockers: match self.trust.phase {
                Phase::Moving => finish_blockers(
                    &self.trust,
                    &agents,
                    master_moved,
                    self.agent_cert_ttl,
                    wall,
                ),
                _ => Vec::new(),
            },
            agents,
        }
    }

    /// Whether every agent trusts the new CA, so that it may sign.
    pub fn rotation_may_switch(&self) -> bool {
        self.trust.phase == Phase::Adding
            && switch_blockers(&self.trust, &self.rotation_progress()).is_empty()
    }

    fn record(&mut self, record: &RotationRecord) -> Result<Vec<u8>, OperatorError> {
        codec::encode(record).map_err(|e| OperatorError::Unavailable(e.to_string()))
    }

    /// Begins a rotation to `next`: trusted beside the current CA, which still signs.
    pub fn begin_rotation(
        &mut self,
        next: StepCa,
        wall: SystemTime,
    ) -> Step<Result<(), OperatorError>> {
        self.step(|core| {
            core.quiet = true;
            if core.trust.phase != Phase::Stable {
                return Err(OperatorError::Invalid(format!(
                    "a CA rotation is already under way (phase {:?}); finish or abort it first",
                    core.trust.phase
                ).to_lowercase()));
            }
            let record = core.record(&RotationRecord {
                phase: Phase::Adding,
                began_ms: ms_since_epoch(wall),
                switched_ms: None,
            })?;
            core.persist_acknowledged(vec![
                Change::put(Table::Meta, META_NEXT_CA_CERT, next.cert_pem.into_bytes()),
                Change::put(Table::Meta, META_NEXT_CA_KEY, next.key_pem.into_bytes()),
                Change::put(Table::Meta, META_CA_BRIDGE, next.bridge_pem.into_bytes()),
                Change::put(Table::Meta, META_ROTATION, record),
            ]);
            core.trust = TrustView {
                phase: Phase::Adding,
                current: core.trust.current.clone(),
                next: Some(next.fingerprint.clone()),
                bundle_pem: next.bundle_pem,
                digest: next.digest,
                switched: None,
                began: Some(wall),
            };
            info!(next = %next.fingerprint, "CA rotation begun: the new CA is trusted beside the current one");
            Ok(())
        })
    }

    /// The new CA starts signing, once every agent trusts it.
    pub fn switch_rotation(&mut self, wall: SystemTime) -> Step<Result<(), OperatorError>> {
        self.step(|core| {
            core.quiet = true;
            let why = switch_blockers(&core.trust, &core.rotation_progress());
            if !why.is_empty() {
                return Err(OperatorError::Invalid(format!(
                    "the new CA cannot sign yet: {}",
                    why.join("; ")
                )));
            }
            let record = core.record(&RotationRecord {
                phase: Phase::Moving,
                began_ms: core.trust.began.map(ms_since_epoch).unwrap_or(0),
                switched_ms: Some(ms_since_epoch(wall)),
            })?;
            core.persist_acknowledged(vec![Change::put(Table::Meta, META_ROTATION, record)]);
            core.trust.phase = Phase::Moving;
            core.trust.switched = Some(wall);
            info!(signer = %core.trust.signer(), "CA rotation: every agent trusts the new CA, which signs from now on");
            Ok(())
        })
    }

    /// Drops the old CA: `next` (the new CA, with a bundle of it alone) becomes the one
    /// CA. Refused, naming why, while anything still depends on the old one, unless
    /// `force`.
    pub fn finish_rotation(
        &mut self,
        next: StepCa,
        force: bool,
        master_moved: bool,
        wall: SystemTime,
    ) -> Step<Result<(), OperatorError>> {
        self.step(|core| {
            core.quiet = true;
            if core.trust.phase != Phase::Moving {
                let why = finish_blockers(&core.trust, &[], true, core.agent_cert_ttl, wall);
                return Err(OperatorError::Invalid(why.join("; ")));
            }
            let why = finish_blockers(
                &core.trust,
                &core.rotation_progress(),
                master_moved,
                core.agent_cert_ttl,
                wall,
            );
            if !why.is_empty() && !force {
                return Err(OperatorError::Invalid(format!(
                    "the old CA is still needed: {} (--force drops it anyway; what still depends on it then fails)",
                    why.join("; ")
                )));
            }
            core.persist_acknowledged(vec![
                Change::put(Table::Meta, META_CA_CERT, next.cert_pem.into_bytes()),
                Change::put(Table::Meta, META_CA_KEY, next.key_pem.into_bytes()),
                Change::delete(Table::Meta, META_NEXT_CA_CERT),
                Change::delete(Table::Meta, META_NEXT_CA_KEY),
                Change::delete(Table::Meta, META_CA_BRIDGE),
                Change::delete(Table::Meta, META_ROTATION),
            ]);
            core.trust = TrustView::single(&next.fingerprint, &next.bundle_pem, &next.digest);
            info!(ca = %next.fingerprint, forced = force && !why.is_empty(), "CA rotation finished: the old CA is no longer trusted");
            Ok(())
        })
    }

    /// Abandons a rotation whose new CA does not sign yet: `current` (with a bundle of it
    /// alone) stays the one CA, and the new one is forgotten.
    pub fn abort_rotation(&mut self, current: StepCa) -> Step<Result<(), OperatorError>> {
        self.step(|core| {
            core.quiet = true;
            match core.trust.phase {
                Phase::Adding => {}
                Phase::Stable => {
                    return Err(OperatorError::Invalid(
                        "no CA rotation is under way".into(),
                    ))
                }
                Phase::Moving => {
                    return Err(OperatorError::Invalid(
                        "the new CA signs already (certificates from it are in use): finish the rotation instead".into(),
                    ))
                }
            }
            core.persist_acknowledged(vec![
                Change::delete(Table::Meta, META_NEXT_CA_CERT),
                Change::delete(Table::Meta, META_NEXT_CA_KEY),
                Change::delete(Table::Meta, META_CA_BRIDGE),
                Change::delete(Table::Meta, META_ROTATION),
            ]);
            core.trust =
                TrustView::single(&current.fingerprint, &current.bundle_pem, &current.digest);
            info!("CA rotation aborted: the new CA is no longer trusted");
            Ok(())
        })
    }
}
