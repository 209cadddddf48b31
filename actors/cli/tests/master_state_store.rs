//! What the master does when its state store fails after a change was made in memory: it
//! acknowledges nothing the store did not accept, steps down, and a master restarted on
//! the same store has exactly what was acknowledged.

mod inproc;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actormesh::agent::{self, AgentError};
use actormesh_master::state::{
    Change, MemoryStore, StateStore, StoreError, StoreFuture, Table, Versioned,
};
use actormesh_master::tokens::TokenRole;
use actormesh_master::{
    self as master, ApplyDeployment, CreateToken, ListDeployments, OperatorError,
};

const MANIFEST: &str = r#"{"kind":"Deployment","name":"web","spec":{"actor":"echo","version":"v1","replicas":1,"resources":{"need":"cpus:1"}}}"#;

#[actix::test]
async fn a_change_the_store_refuses_is_never_acknowledged_and_the_master_steps_down() {
    let dir = std::env::temp_dir().join(format!("am-store-fail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = MemoryStore::new();
    let config = inproc::master_config(&dir, false);
    let m = master::start_with_store(config.clone(), Arc::new(store.clone()))
        .await
        .unwrap();
    let create = CreateToken {
        ttl: Duration::from_secs(60),
        role: TokenRole::Agent,
    };
    // Stored, then acknowledged.
    let kept = m.master.send(create).await.unwrap().unwrap();

    // The disk fills: the deployment is already in the master's memory when its write fails.
    store.fail_writes("disk full");
    let refused = m
        .master
        .send(ApplyDeployment(MANIFEST.into()))
        .await
        .unwrap()
        .unwrap_err();
    // Not the operator's fault: the API answers 503, and a restarted master may take it.
    assert!(
        matches!(&refused, OperatorError::Unavailable(r)
            if r.contains("cannot record the deployment") && r.contains("disk full")),
        "{refused:?}"
    );
    let why = m.stepped_down().await;
    assert!(
        why.contains("stepped down") && why.contains("disk full"),
        "{why}"
    );

    // Restarted on what the store holds: the token acknowledged before is there, the
    // deployment that was refused is not.
    let rows = store.list(Table::Config).await.unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    let mut config = config;
    config.data_dir = dir.join("master-2");
    let again = master::start_with_store(config, Arc::new(store.reopen()))
        .await
        .unwrap();
    assert!(again.master.send(ListDeployments).await.unwrap().is_empty());
    assert_eq!(again.ca_fingerprint, m.ca_fingerprint);
    let mut agent = inproc::agent_config(&again, &dir, "a1").await;
    agent.token = Some(kept.token);
    // The old token works against the new master: it was stored before it was handed out.
    agent::start(agent).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix::test]
async fn a_join_whose_record_cannot_be_stored_gets_no_certificate() {
    let dir = std::env::temp_dir().join(format!("am-store-join-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = MemoryStore::new();
    let m = master::start_with_store(inproc::master_config(&dir, false), Arc::new(store.clone()))
        .await
        .unwrap();
    let config = inproc::agent_config(&m, &dir, "a1").await;
    store.fail_writes("disk full");
    let e = agent::start(config).await.unwrap_err();
    assert!(
        matches!(&e, AgentError::JoinRefused(r) if r.contains("could not record") && r.contains("disk full")),
        "{e}"
    );
    assert!(m.stepped_down().await.contains("disk full"));
    assert!(store.list(Table::Agents).await.unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store whose leader may stop acting while the store itself stays open: a lapsed
/// ZooKeeper lease, seen by the master before the lapse timer closes the store.
#[derive(Clone)]
struct Lapsing {
    inner: MemoryStore,
    holds: Arc<AtomicBool>,
}

impl StateStore for Lapsing {
    fn get(&self, table: Table, key: &str) -> StoreFuture<Option<Versioned>> {
        self.inner.get(table, key)
    }
    fn list(&self, table: Table) -> StoreFuture<Vec<(String, Versioned)>> {
        self.inner.list(table)
    }
    fn apply(&self, changes: Vec<Change>) -> StoreFuture<()> {
        self.inner.apply(changes)
    }
    fn closed(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = StoreError> + Send + 'static>> {
        self.inner.closed()
    }
    fn may_act(&self) -> bool {
        self.holds.load(Ordering::SeqCst)
    }
}

#[actix::test]
async fn a_master_whose_lease_lapsed_writes_and_acknowledges_nothing_and_steps_down() {
    let dir = std::env::temp_dir().join(format!("am-store-lapse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Lapsing {
        inner: MemoryStore::new(),
        holds: Arc::new(AtomicBool::new(true)),
    };
    let m = master::start_with_store(inproc::master_config(&dir, false), Arc::new(store.clone()))
        .await
        .unwrap();
    let create = || CreateToken {
        ttl: Duration::from_secs(60),
        role: TokenRole::Agent,
    };
    m.master.send(create()).await.unwrap().unwrap();
    let before = store.list(Table::Tokens).await.unwrap().len();
    assert_eq!(before, 1);
    // The lease lapses; the store would still take the write.
    store.holds.store(false, Ordering::SeqCst);
    let refused = m.master.send(create()).await.unwrap().unwrap_err();
    assert!(
        format!("{refused:?}").contains("lease lapsed"),
        "{refused:?}"
    );
    let why = m.stepped_down().await;
    assert!(why.contains("lease lapsed"), "{why}");
    assert_eq!(
        store.list(Table::Tokens).await.unwrap().len(),
        before,
        "nothing written once the lease lapsed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
