//! CA rotation, the plain rules: which trust bundle nodes get, who signs, and when a
//! rotation may take its next step. The master's shell carries the steps out (new CA,
//! certificates, store writes); these rules decide them, so tests drive them without a
//! network.
//!
//! The steps, as ARCHITECTURE.md "CA rotation" tells:
//! 1. `begin`: a new CA is made and trusted beside the current one (phase `adding`); the
//!    current one still signs.
//! 2. Once every agent that is not Gone reports the two-CA bundle, the new CA signs
//!    (phase `moving`): the master's own certificate is reissued, agents are told to renew
//!    at once, and each new certificate carries a bridge (the new CA signed by the old)
//!    so that a peer that trusts only the old CA still accepts it.
//! 3. `finish`: the old CA is dropped, once every agent's certificate is from the new CA
//!    and no client certificate from the old one can still be valid (or with `force`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::membership::AgentState;

/// Where the current CA is kept in the `Meta` table.
pub const META_CA_CERT: &str = "ca_cert";
/// Its key.
pub const META_CA_KEY: &str = "ca_key";
/// The CA being rotated to.
pub const META_NEXT_CA_CERT: &str = "next_ca_cert";
/// Its key.
pub const META_NEXT_CA_KEY: &str = "next_ca_key";
/// The bridge: the new CA's certificate signed by the current one.
pub const META_CA_BRIDGE: &str = "ca_bridge";
/// The [`RotationRecord`].
pub const META_ROTATION: &str = "ca_rotation";

/// Where a rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// One CA, trusted and signing.
    Stable,
    /// The new CA is trusted beside the current one, which still signs.
    Adding,
    /// The new CA signs; the old one is still trusted.
    Moving,
}

/// The rotation as stored (`Meta` "ca_rotation"), beside the CAs themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationRecord {
    /// Where it stands.
    pub phase: Phase,
    /// When it began (ms since the epoch).
    pub began_ms: u64,
    /// When the new CA started signing (ms since the epoch).
    pub switched_ms: Option<u64>,
}

/// What the rules know of the CAs: fingerprints and the bundle, no keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustView {
    /// Where the rotation stands.
    pub phase: Phase,
    /// The CA trusted before the rotation (the only one when stable).
    pub current: String,
    /// The CA being rotated to.
    pub next: Option<String>,
    /// The bundle nodes must trust now, as PEM.
    pub bundle_pem: String,
    /// Its digest (`actormesh_transport::trust::digest`).
    pub digest: String,
    /// When the new CA started signing.
    pub switched: Option<SystemTime>,
    /// When it began.
    pub began: Option<SystemTime>,
}

impl TrustView {
    /// One CA, trusted and signing: `bundle_pem` holds it, `digest` is the bundle's.
    pub fn single(fingerprint: &str, bundle_pem: &str, digest: &str) -> Self {
        Self {
            phase: Phase::Stable,
            current: fingerprint.to_string(),
            next: None,
            bundle_pem: bundle_pem.to_string(),
            digest: digest.to_string(),
            switched: None,
            began: None,
        }
    }

    /// The CA that signs certificates now (and that join tokens pin).
    pub fn signer(&self) -> &str {
        match (self.phase, &self.next) {
            (Phase::Moving, Some(next)) => next,
            _ => &self.current,
        }
    }
}

/// What an agent reported with its last heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentTrust {
    /// The digest of the bundle it trusts.
    pub digest: String,
    /// The fingerprint of the CA that issued its certificate ("" if unknown).
    pub cert_ca: String,
}

/// What a heartbeat's answer tells the agent about trust.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustOrder {
    /// The bundle to trust, when the agent's differs.
    pub bundle: Option<String>,
    /// Renew the certificate now: it is not from the CA that signs.
    pub renew: bool,
}

/// The answer for an agent that reported `report`.
pub fn order_for(view: &TrustView, report: &AgentTrust) -> TrustOrder {
    TrustOrder {
        bundle: (report.digest != view.digest).then(|| view.bundle_pem.clone()),
        renew: view.phase == Phase::Moving
            && report.digest == view.digest
            && report.cert_ca != view.signer(),
    }
}

/// One agent as the rotation sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentProgress {
    /// The agent.
    pub id: String,
    /// It trusts the bundle in force.
    pub trusts_bundle: bool,
    /// Its certificate is from the CA that signs.
    pub moved: bool,
}

/// Where each agent that is not Gone stands.
pub fn progress<'a>(
    view: &TrustView,
    agents: impl IntoIterator<Item = (&'a str, AgentState)>,
    reports: &BTreeMap<String, AgentTrust>,
) -> Vec<AgentProgress> {
    agents
        .into_iter()
        .filter(|(_, state)| *state != AgentState::Gone)
        .map(|(id, _)| {
            let r = reports.get(id).cloned().unwrap_or_default();
            AgentProgress {
                id: id.to_string(),
                trusts_bundle: r.digest == view.digest,
                moved: r.cert_ca == view.signer(),
            }
        })
        .collect()
}

/// A rotation as the API shows it (`GET /v1/ca`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationStatus {
    /// Where it stands.
    pub phase: Phase,
    /// The CA trusted before the rotation (the only one when stable).
    pub current: String,
    /// The CA being rotated to.
    pub next: Option<String>,
    /// The CA that signs now, which new join tokens pin.
    pub signer: String,
    /// When the rotation began.
    #[serde(with = "crate::timestamp::option")]
    pub began: Option<SystemTime>,
    /// When the new CA started signing.
    #[serde(with = "crate::timestamp::option")]
    pub switched: Option<SystemTime>,
    /// Each agent that is not Gone.
    pub agents: Vec<AgentProgress>,
    /// Why the new CA does not sign yet (while adding).
    pub switch_blockers: Vec<String>,
    /// Why the old CA cannot be dropped yet (while moving).
    pub finish_blockers: Vec<String>,
}

/// Why the new CA may not sign yet (empty: it may).
pub fn switch_blockers(view: &TrustView, agents: &[AgentProgress]) -> Vec<String> {
    if view.phase != Phase::Adding {
        return vec![format!("the rotation is {:?}, not adding", view.phase).to_lowercase()];
    }
    agents
        .iter()
        .filter(|a| !a.trusts_bundle)
        .map(|a| format!("agent {} does not trust the new CA yet", a.id))
        .collect()
}

/// Why the old CA may not be dropped yet (empty: it may). Client certificates are not
/// tracked one by one: one issued just before the switch lives `client_ttl`.
pub fn finish_blockers(
    view: &TrustView,
    agents: &[AgentProgress],
    master_moved: bool,
    client_ttl: Duration,
    now: SystemTime,
) -> Vec<String> {
    let Some(switched) = view.switched.filter(|_| view.phase == Phase::Moving) else {
        return vec![match view.phase {
            Phase::Stable => "no CA rotation is under way (`actormesh ca rotate begin`)".into(),
            _ => "the new CA does not sign yet: every agent must trust it first".into(),
        }];
    };
    let mut why: Vec<String> = agents
        .iter()
        .filter(|a| !a.moved)
        .map(|a| {
            format!(
                "agent {} still presents a certificate from the old CA",
                a.id
            )
        })
        .collect();
    if !master_moved {
        why.push("the master's own certificate is not from the new CA yet".into());
    }
    let until = switched + client_ttl;
    if now < until {
        why.push(format!(
            "client certificates from the old CA may be valid until {} (issued before {}); reissue your clients' identities",
            crate::timestamp::format(until),
            crate::timestamp::format(switched),
        ));
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(phase: Phase) -> TrustView {
        TrustView {
            phase,
            current: "old".into(),
            next: (phase != Phase::Stable).then(|| "new".into()),
            bundle_pem: "PEM".into(),
            digest: if phase == Phase::Stable { "d1" } else { "d2" }.into(),
            switched: (phase == Phase::Moving).then_some(SystemTime::UNIX_EPOCH),
            began: None,
        }
    }

    fn report(digest: &str, ca: &str) -> AgentTrust {
        AgentTrust {
            digest: digest.into(),
            cert_ca: ca.into(),
        }
    }

    #[test]
    fn the_new_ca_signs_only_while_moving() {
        assert_eq!(view(Phase::Stable).signer(), "old");
        assert_eq!(view(Phase::Adding).signer(), "old");
        assert_eq!(view(Phase::Moving).signer(), "new");
    }

    #[test]
    fn an_agent_gets_the_bundle_when_its_own_differs_and_renews_only_once_it_trusts_it() {
        let adding = view(Phase::Adding);
        let o = order_for(&adding, &report("d1", "old"));
        assert_eq!(o.bundle.as_deref(), Some("PEM"));
        assert!(!o.renew, "the old CA still signs");
        assert_eq!(
            order_for(&adding, &report("d2", "old")),
            TrustOrder::default()
        );
        let moving = view(Phase::Moving);
        // A certificate from the new CA is useless to peers that do not trust it yet.
        let o = order_for(&moving, &report("d1", "old"));
        assert!(o.bundle.is_some() && !o.renew);
        assert!(order_for(&moving, &report("d2", "old")).renew);
        assert!(!order_for(&moving, &report("d2", "new")).renew);
    }

    #[test]
    fn the_switch_waits_for_every_agent_but_the_gone() {
        let v = view(Phase::Adding);
        let mut reports = BTreeMap::new();
        reports.insert("a1".to_string(), report("d2", "old"));
        reports.insert("a2".to_string(), report("d1", "old"));
        let agents = [
            ("a1", AgentState::Active),
            ("a2", AgentState::Unreachable),
            ("a3", AgentState::Gone),
        ];
        let p = progress(&v, agents, &reports);
        assert_eq!(p.len(), 2, "a Gone agent does not count");
        let why = switch_blockers(&v, &p);
        assert_eq!(
            why,
            vec!["agent a2 does not trust the new CA yet".to_string()]
        );
        reports.insert("a2".to_string(), report("d2", "old"));
        assert!(switch_blockers(&v, &progress(&v, agents, &reports)).is_empty());
        assert!(!switch_blockers(&view(Phase::Moving), &[]).is_empty());
        assert!(!switch_blockers(&view(Phase::Stable), &[]).is_empty());
    }

    #[test]
    fn finishing_waits_for_agents_the_master_and_old_client_certificates() {
        let v = view(Phase::Moving);
        let ttl = Duration::from_secs(100);
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(101);
        let mut reports = BTreeMap::new();
        reports.insert("a1".to_string(), report("d2", "old"));
        let agents = [("a1", AgentState::Active)];
        let why = finish_blockers(&v, &progress(&v, agents, &reports), true, ttl, later);
        assert_eq!(why.len(), 1);
        assert!(why[0].contains("agent a1"), "{why:?}");
        reports.insert("a1".to_string(), report("d2", "new"));
        let p = progress(&v, agents, &reports);
        assert!(finish_blockers(&v, &p, true, ttl, later).is_empty());
        assert!(finish_blockers(&v, &p, false, ttl, later)[0].contains("master"));
        let early = SystemTime::UNIX_EPOCH + Duration::from_secs(99);
        let why = finish_blockers(&v, &p, true, ttl, early);
        assert!(
            why.len() == 1 && why[0].contains("client certificates"),
            "{why:?}"
        );
        assert!(!finish_blockers(&view(Phase::Adding), &p, true, ttl, later).is_empty());
        assert!(!finish_blockers(&view(Phase::Stable), &p, true, ttl, later).is_empty());
    }
}
