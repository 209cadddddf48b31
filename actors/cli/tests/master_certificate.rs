//! The master's own certificate lives `master_cert_ttl` (24 h by default, no longer a
//! year) and is renewed at half its life like an agent's: new links use the new one.

#[path = "inproc/mod.rs"]
mod inproc;

use std::time::{Duration, Instant, SystemTime};

use actormesh_master as master;

#[actix::test]
async fn the_master_renews_its_own_certificate_at_half_its_life() {
    let dir = std::env::temp_dir().join(format!("am-master-cert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The default is a day.
    assert_eq!(
        master::MasterConfig::new(dir.clone()).master_cert_ttl,
        Duration::from_secs(24 * 3600)
    );
    let mut config = inproc::master_config(&dir, true);
    config.master_cert_ttl = Duration::from_secs(4);
    let m = master::start(config).await.unwrap();
    let first = m.certificate_expiry();
    let left = first.duration_since(SystemTime::now()).unwrap();
    assert!(left <= Duration::from_secs(4), "{left:?}");
    let key_before = std::fs::read_to_string(dir.join("master").join("master-key.pem")).unwrap();
    // Renewed at half its life (about 2 s): wait for it, at most one lifetime.
    let start = Instant::now();
    while m.certificate_expiry() == first {
        assert!(start.elapsed() < Duration::from_secs(4), "not renewed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(m.certificate_expiry() > first);
    let key_after = std::fs::read_to_string(dir.join("master").join("master-key.pem")).unwrap();
    assert_ne!(key_before, key_after, "a new key, as an agent's renewal");
    // After the first certificate has expired, a new agent joins and links to the master:
    // the endpoint presents the renewed one.
    while SystemTime::now() < first + Duration::from_millis(200) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let agent = inproc::start_agent(inproc::agent_config(&m, &dir, "late").await).await;
    let nodes = m.master.send(master::ListNodes).await.unwrap();
    assert!(nodes.iter().any(|n| n.id == "late"), "{nodes:?}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
