//! The master's durable state, behind one asynchronous trait.
//!
//! Everything the master must not lose goes through [`StateStore`]: the cluster CA, the
//! operator API token, join tokens, agent registrations, and validated config. Values are
//! bytes encoded by the one codec; tables are few and named.
//!
//! - **Batches are atomic**: a crash leaves either all of a batch or none of it.
//! - **Batches form one ordered log.** [`StateStore::apply`] queues a batch behind every
//!   batch queued before it, when it is called (not when its future is polled), and a
//!   backend may commit several queued batches at once (group commit). The returned future
//!   says when the batch is durable. Dropping it does not cancel the write.
//! - **A failed batch closes the store.** Later batches would assume it had been applied,
//!   so they fail too ([`StoreError::Closed`]), and [`StateStore::closed`] resolves. The
//!   master then steps down (see `Master::step_down`): it acknowledges nothing the store
//!   did not accept, and a restarted master reloads what the store holds.
//! - **Writes are versioned.** Every key has a version that each put increments; a
//!   [`Change`] may require a version ([`Expect`]), which is how a ZooKeeper backend fences
//!   an old leader (compare-and-set, as ZooKeeper's versioned `setData` and `multi`).
//!
//! The default backend is an embedded redb file written on a thread of its own, so the
//! master's event loop never waits for an fsync ([`RedbStore`]). [`MemoryStore`] keeps
//! state in memory, for tests, and can be told to fail.

pub mod backup;
mod memory;
mod redb;
pub mod zk;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;
pub use self::zk::{ZkConfig, ZkStore};

/// The tables of master state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Single values: the CA, the operator API token hash, the cluster id.
    Meta,
    /// Join tokens by token id.
    Tokens,
    /// Agent registrations by agent id.
    Agents,
    /// Validated config (manifests, policies) by kind/name.
    Config,
}

impl Table {
    /// Every table, for backends that prepare them up front.
    pub const ALL: [Table; 4] = [Table::Meta, Table::Tokens, Table::Agents, Table::Config];

    /// The table's name in the backend.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Tokens => "tokens",
            Table::Agents => "agents",
            Table::Config => "config",
        }
    }
}

/// What a change requires of its key's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expect {
    /// Nothing: the change applies whatever is there.
    #[default]
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist at exactly this version.
    Version(u64),
}

/// One change in an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set `key` in `table` to `value`; its version goes up by one (a new key gets 1).
    Put {
        /// The table.
        table: Table,
        /// The key.
        key: String,
        /// The encoded value.
        value: Vec<u8>,
        /// What the key's version must be.
        expect: Expect,
    },
    /// Remove `key` from `table` (no error if absent, unless `expect` says otherwise).
    Delete {
        /// The table.
        table: Table,
        /// The key.
        key: String,
        /// What the key's version must be.
        expect: Expect,
    },
    /// Change nothing, but require `key`'s version: a fence (ZooKeeper's `check` op).
    Check {
        /// The table.
        table: Table,
        /// The key.
        key: String,
        /// What the key's version must be.
        expect: Expect,
    },
}

impl Change {
    /// Sets `key` whatever its version.
    pub fn put(table: Table, key: impl Into<String>, value: Vec<u8>) -> Self {
        Change::Put {
            table,
            key: key.into(),
            value,
            expect: Expect::Any,
        }
    }

    /// Removes `key` whatever its version.
    pub fn delete(table: Table, key: impl Into<String>) -> Self {
        Change::Delete {
            table,
            key: key.into(),
            expect: Expect::Any,
        }
    }

    /// The same change, applied only if the key's version is as `expect` says.
    pub fn expecting(mut self, want: Expect) -> Self {
        match &mut self {
            Change::Put { expect, .. }
            | Change::Delete { expect, .. }
            | Change::Check { expect, .. } => *expect = want,
        }
        self
    }

    fn target(&self) -> (Table, &str, Expect) {
        match self {
            Change::Put {
                table, key, expect, ..
            }
            | Change::Delete { table, key, expect }
            | Change::Check { table, key, expect } => (*table, key, *expect),
        }
    }
}

/// A stored value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The encoded value.
    pub value: Vec<u8>,
    /// Its version: 1 after the first put, one more after each.
    pub version: u64,
}

/// The state store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be opened (path, permissions, corruption, another master
    /// holding it).
    #[error("cannot open the state store at {}: {reason}", path.display())]
    Open {
        /// Where.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A read or write failed.
    #[error("state store {operation} failed: {reason}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// A change's version requirement did not hold; the batch changed nothing.
    #[error("state store conflict on {table}/{key}: expected {expected}, found {found}")]
    Conflict {
        /// The table's name.
        table: &'static str,
        /// The key.
        key: String,
        /// What the change required.
        expected: String,
        /// What the store had.
        found: String,
    },
    /// An earlier batch failed, so this one was not applied, nor will any later one be.
    #[error("the state store is closed after an earlier failure ({0}); restart the master to reload what was stored")]
    Closed(String),
}

/// What a store operation resolves to.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// Durable master state: read one key, list a table, apply batches in order.
pub trait StateStore: Send + Sync + 'static {
    /// The value of `key` in `table`, with its version. Reads see every batch queued before.
    fn get(&self, table: Table, key: &str) -> StoreFuture<Option<Versioned>>;
    /// Every `(key, value)` of `table`, in key order.
    fn list(&self, table: Table) -> StoreFuture<Vec<(String, Versioned)>>;
    /// Queues `changes` as one atomic batch behind every batch queued before; resolves when
    /// it is durable. After a failure every later batch fails with [`StoreError::Closed`].
    fn apply(&self, changes: Vec<Change>) -> StoreFuture<()>;
    /// Resolves, with the first failure, once the store stops accepting batches.
    fn closed(&self) -> Pin<Box<dyn Future<Output = StoreError> + Send + 'static>>;
    /// Whether the master may act on this store now: a leader's store says no once its
    /// lease on the ZooKeeper session lapsed ([`crate::ha::FencedStore`]), before the store
    /// has closed. A store of one master always may.
    fn may_act(&self) -> bool {
        true
    }
}

/// Checks one change's version requirement against the version the key has now
/// (`None`: absent). Backends share it, so they agree on what a conflict is.
fn check_expect(change: &Change, current: Option<u64>) -> Result<(), StoreError> {
    let (table, key, expect) = change.target();
    let holds = match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Version(v) => current == Some(v),
    };
    if holds {
        return Ok(());
    }
    let show = |v: Option<u64>| match v {
        None => "no key".to_string(),
        Some(v) => format!("version {v}"),
    };
    Err(StoreError::Conflict {
        table: table.name(),
        key: key.to_string(),
        expected: match expect {
            Expect::Any => "anything".into(),
            Expect::Absent => "no key".into(),
            Expect::Version(v) => show(Some(v)),
        },
        found: show(current),
    })
}

/// Checks every requirement of a batch against the versions as its own earlier changes
/// leave them; `current` reads a key's version before the batch.
fn check_batch(
    changes: &[Change],
    mut current: impl FnMut(Table, &str) -> Result<Option<u64>, StoreError>,
) -> Result<(), StoreError> {
    let mut seen: std::collections::BTreeMap<(Table, &str), Option<u64>> = Default::default();
    for c in changes {
        let (table, key, _) = c.target();
        let now = match seen.get(&(table, key)) {
            Some(v) => *v,
            None => current(table, key)?,
        };
        check_expect(c, now)?;
        let after = match c {
            Change::Put { .. } => Some(now.unwrap_or(0) + 1),
            Change::Delete { .. } => None,
            Change::Check { .. } => now,
        };
        seen.insert((table, key), after);
    }
    Ok(())
}

/// Resolves with the failure a backend publishes on `rx` (its [`StateStore::closed`]).
fn first_failure(
    mut rx: tokio::sync::watch::Receiver<Option<StoreError>>,
) -> Pin<Box<dyn Future<Output = StoreError> + Send + 'static>> {
    Box::pin(async move {
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The store was dropped: nothing more can be written.
                return StoreError::Closed("the store was dropped".into());
            }
        }
    })
}

/// The behaviour every backend must have, run against each (the ZooKeeper one from
/// `integration/tests/zk_store.rs`, which needs a server).
#[cfg(any(test, feature = "store-contract"))]
#[doc(hidden)]
pub mod contract {
    use super::*;

    pub async fn batches_are_atomic_and_versioned(s: &dyn StateStore) {
        s.apply(vec![
            Change::put(Table::Agents, "a1", b"one".to_vec()),
            Change::put(Table::Agents, "a2", b"two".to_vec()),
        ])
        .await
        .unwrap();
        s.apply(vec![Change::put(Table::Agents, "a1", b"uno".to_vec())])
            .await
            .unwrap();
        let a1 = s.get(Table::Agents, "a1").await.unwrap().unwrap();
        assert_eq!((a1.value.as_slice(), a1.version), (&b"uno"[..], 2));
        // A batch whose second change's requirement fails leaves its first change out too.
        let e = s
            .apply(vec![
                Change::put(Table::Agents, "a3", b"three".to_vec()),
                Change::put(Table::Agents, "a1", b"x".to_vec()).expecting(Expect::Version(1)),
            ])
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Conflict { key, found, .. } if key == "a1" && found == "version 2"),
            "{e}"
        );
        assert_eq!(s.get(Table::Agents, "a3").await.unwrap(), None);
        assert_eq!(
            s.get(Table::Agents, "a1").await.unwrap().unwrap().value,
            b"uno"
        );
    }

    pub async fn a_failed_batch_closes_the_store(s: &dyn StateStore) {
        s.apply(vec![Change::put(Table::Meta, "k", b"v".to_vec())])
            .await
            .unwrap();
        // Queued together: the conflict, then a batch that would be fine on its own.
        let bad = s.apply(vec![
            Change::put(Table::Meta, "k", b"w".to_vec()).expecting(Expect::Absent)
        ]);
        let after = s.apply(vec![Change::put(Table::Meta, "later", b"x".to_vec())]);
        assert!(matches!(bad.await, Err(StoreError::Conflict { .. })));
        assert!(matches!(after.await, Err(StoreError::Closed(_))));
        assert!(matches!(s.closed().await, StoreError::Conflict { .. }));
        assert!(matches!(
            s.apply(vec![Change::delete(Table::Meta, "k")]).await,
            Err(StoreError::Closed(_))
        ));
        assert_eq!(s.get(Table::Meta, "later").await.unwrap(), None);
        assert_eq!(s.get(Table::Meta, "k").await.unwrap().unwrap().value, b"v");
    }

    pub async fn checks_and_deletes_honour_versions(s: &dyn StateStore) {
        s.apply(vec![Change::put(Table::Meta, "term", b"1".to_vec())])
            .await
            .unwrap();
        s.apply(vec![
            Change::Check {
                table: Table::Meta,
                key: "term".into(),
                expect: Expect::Version(1),
            },
            Change::put(Table::Config, "d", b"x".to_vec()).expecting(Expect::Absent),
        ])
        .await
        .unwrap();
        s.apply(vec![
            Change::delete(Table::Config, "d").expecting(Expect::Version(1))
        ])
        .await
        .unwrap();
        assert!(s.list(Table::Config).await.unwrap().is_empty());
        let listed = s.list(Table::Meta).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, "term");
        assert_eq!(listed[0].1.version, 1);
    }
}
