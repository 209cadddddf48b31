//! A CA rotation through the core: begin, the agents' reports, the switch, the renewals
//! and the finish, with what each heartbeat answer tells an agent.

use super::*;
use crate::rotation::Phase;

fn beat(
    core: &mut ClusterCore,
    id: &str,
    digest: &str,
    ca: &str,
    now: Instant,
) -> actormesh::protocol::HeartbeatAck {
    let hb = Heartbeat {
        agent_id: id.into(),
        trust_digest: digest.into(),
        cert_ca: ca.into(),
    };
    core.heartbeat(&hb, node(id), now, wall()).reply.unwrap()
}

fn next_ca() -> StepCa {
    StepCa {
        fingerprint: "fp2".into(),
        cert_pem: "CERT2".into(),
        key_pem: "KEY2".into(),
        bridge_pem: "BRIDGE".into(),
        bundle_pem: "PEM+PEM2".into(),
        digest: "digest12".into(),
    }
}

fn meta_keys(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Persist(b) => b.changes.as_ref().ok(),
            _ => None,
        })
        .flatten()
        .map(|c| format!("{c:?}"))
        .collect()
}

#[test]
fn a_rotation_moves_every_agent_over_before_the_old_ca_is_dropped() {
    let t0 = Instant::now();
    let mut core = cluster(&["a1", "a2"], t0);
    assert_eq!(core.ca_fingerprint(), "fp");
    // Stable: nothing to send, nothing to renew.
    let ack = beat(&mut core, "a1", "digest", "fp", t0);
    assert!(ack.trust_bundle.is_none() && !ack.renew_now);

    let step = core.begin_rotation(next_ca(), wall());
    step.reply.unwrap();
    let keys = meta_keys(&step.effects);
    assert!(keys.iter().any(|k| k.contains("next_ca_key")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("ca_rotation")), "{keys:?}");
    assert!(
        core.begin_rotation(next_ca(), wall()).reply.is_err(),
        "one at a time"
    );
    // The current CA still signs, and tokens still pin it.
    assert_eq!(core.ca_fingerprint(), "fp");
    assert_eq!(core.trust().phase, Phase::Adding);

    // a1 is told the bundle; until a2 trusts it too, the new CA does not sign.
    let ack = beat(&mut core, "a1", "digest", "fp", t0);
    assert_eq!(ack.trust_bundle.as_deref(), Some("PEM+PEM2"));
    assert!(!ack.renew_now);
    beat(&mut core, "a1", "digest12", "fp", t0);
    assert!(!core.rotation_may_switch());
    let status = core.rotation_status(false, wall());
    assert_eq!(
        status.switch_blockers,
        vec!["agent a2 does not trust the new CA yet".to_string()]
    );
    assert!(core.switch_rotation(wall()).reply.is_err());
    beat(&mut core, "a2", "digest12", "fp", t0);
    assert!(core.rotation_may_switch());
    core.switch_rotation(wall()).reply.unwrap();
    assert_eq!(core.ca_fingerprint(), "fp2", "new tokens pin the new CA");

    // Now each agent on an old certificate is told to renew; one that renewed is not.
    assert!(beat(&mut core, "a1", "digest12", "fp", t0).renew_now);
    assert!(!beat(&mut core, "a1", "digest12", "fp2", t0).renew_now);

    // Finish waits for a2, for the master and for old client certificates (an hour).
    let later = wall() + Duration::from_secs(3601);
    let e = core
        .finish_rotation(next_ca(), false, true, later)
        .reply
        .unwrap_err();
    assert!(e.to_string().contains("agent a2 still presents"), "{e}");
    beat(&mut core, "a2", "digest12", "fp2", t0);
    let e = core
        .finish_rotation(next_ca(), false, false, later)
        .reply
        .unwrap_err();
    assert!(e.to_string().contains("master"), "{e}");
    let e = core
        .finish_rotation(next_ca(), false, true, wall())
        .reply
        .unwrap_err();
    assert!(e.to_string().contains("client certificates"), "{e}");
    assert!(
        core.abort_rotation(next_ca()).reply.is_err(),
        "too late to abort"
    );

    let mut done = next_ca();
    done.bundle_pem = "PEM2".into();
    done.digest = "digest2".into();
    let step = core.finish_rotation(done, false, true, later);
    step.reply.unwrap();
    let keys = meta_keys(&step.effects);
    assert!(
        keys.iter()
            .any(|k| k.contains("Delete") && k.contains("next_ca_key")),
        "{keys:?}"
    );
    assert_eq!(core.trust().phase, Phase::Stable);
    assert_eq!(core.ca_fingerprint(), "fp2");
    // The agents are sent the bundle without the old CA.
    assert_eq!(
        beat(&mut core, "a1", "digest12", "fp2", t0)
            .trust_bundle
            .as_deref(),
        Some("PEM2")
    );
}

#[test]
fn a_forced_finish_drops_the_old_ca_while_it_is_needed_and_an_abort_forgets_the_new_one() {
    let t0 = Instant::now();
    let mut core = cluster(&["a1"], t0);
    core.begin_rotation(next_ca(), wall()).reply.unwrap();
    assert!(
        core.finish_rotation(next_ca(), true, true, wall())
            .reply
            .is_err(),
        "not even forced before the switch"
    );
    let mut back = next_ca();
    back.fingerprint = "fp".into();
    back.bundle_pem = "PEM".into();
    back.digest = "digest".into();
    core.abort_rotation(back).reply.unwrap();
    assert_eq!(core.trust().phase, Phase::Stable);
    assert_eq!(
        beat(&mut core, "a1", "digest12", "fp", t0)
            .trust_bundle
            .as_deref(),
        Some("PEM")
    );

    core.begin_rotation(next_ca(), wall()).reply.unwrap();
    beat(&mut core, "a1", "digest12", "fp", t0);
    core.switch_rotation(wall()).reply.unwrap();
    // a1 never renewed: only --force drops the old CA now.
    assert!(core
        .finish_rotation(next_ca(), false, true, wall())
        .reply
        .is_err());
    core.finish_rotation(next_ca(), true, true, wall())
        .reply
        .unwrap();
    assert_eq!(core.trust().phase, Phase::Stable);
}
