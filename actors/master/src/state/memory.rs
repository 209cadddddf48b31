//! State in memory, for tests: the same contract as the file store, and a switch that makes
//! writes fail the way a full disk would.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::{
    check_batch, first_failure, Change, StateStore, StoreError, StoreFuture, Table, Versioned,
};

/// State in memory. Clones share it, so a test can keep one to look at what was stored, or
/// start a second master on what the first one left.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    closed: watch::Sender<Option<StoreError>>,
}

#[derive(Debug, Default)]
struct Inner {
    rows: BTreeMap<(Table, String), Versioned>,
    /// The first failure; every batch after it fails.
    closed: Option<StoreError>,
    /// Fail the next write with this reason (an injected I/O error).
    fail_writes: Option<String>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            closed: watch::channel(None).0,
        }
    }

    /// Makes the next batch fail with an I/O error saying `reason` (then the store is closed).
    pub fn fail_writes(&self, reason: &str) {
        self.lock().fail_writes = Some(reason.to_string());
    }

    /// Opens the store again after a failure, with what it held: what a restarted master
    /// finds.
    pub fn reopen(&self) -> Self {
        let mut inner = self.lock();
        inner.closed = None;
        inner.fail_writes = None;
        Self {
            inner: self.inner.clone(),
            closed: watch::channel(None).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent rows: every change is applied
        // only after its whole batch was checked.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply_now(&self, changes: &[Change]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(e) = &inner.closed {
            return Err(StoreError::Closed(e.to_string()));
        }
        let result = match inner.fail_writes.take() {
            Some(reason) => Err(StoreError::Io {
                operation: "write",
                reason,
            }),
            None => inner.check(changes),
        };
        match result {
            Ok(()) => {
                inner.write(changes);
                Ok(())
            }
            Err(e) => {
                inner.closed = Some(e.clone());
                self.closed.send_replace(Some(e.clone()));
                Err(e)
            }
        }
    }
}

impl Inner {
    fn check(&self, changes: &[Change]) -> Result<(), StoreError> {
        check_batch(changes, |table, key| {
            Ok(self.rows.get(&(table, key.to_string())).map(|v| v.version))
        })
    }

    fn write(&mut self, changes: &[Change]) {
        for c in changes {
            match c {
                Change::Put {
                    table, key, value, ..
                } => {
                    let k = (*table, key.clone());
                    let version = self.rows.get(&k).map_or(0, |v| v.version) + 1;
                    self.rows.insert(
                        k,
                        Versioned {
                            value: value.clone(),
                            version,
                        },
                    );
                }
                Change::Delete { table, key, .. } => {
                    self.rows.remove(&(*table, key.clone()));
                }
                Change::Check { .. } => {}
            }
        }
    }
}

impl StateStore for MemoryStore {
    fn get(&self, table: Table, key: &str) -> StoreFuture<Option<Versioned>> {
        let v = self.lock().rows.get(&(table, key.to_string())).cloned();
        Box::pin(async move { Ok(v) })
    }

    fn list(&self, table: Table) -> StoreFuture<Vec<(String, Versioned)>> {
        let rows = self
            .lock()
            .rows
            .range((table, String::new())..)
            .take_while(|((t, _), _)| *t == table)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        Box::pin(async move { Ok(rows) })
    }

    fn apply(&self, changes: Vec<Change>) -> StoreFuture<()> {
        let result = self.apply_now(&changes);
        Box::pin(async move { result })
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = StoreError> + Send + 'static>> {
        first_failure(self.closed.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract;
    use super::*;

    #[tokio::test]
    async fn keeps_the_store_contract() {
        contract::batches_are_atomic_and_versioned(&MemoryStore::new()).await;
        contract::a_failed_batch_closes_the_store(&MemoryStore::new()).await;
        contract::checks_and_deletes_honour_versions(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn an_injected_failure_closes_it_until_reopened() {
        let s = MemoryStore::new();
        s.fail_writes("disk full");
        let e = s
            .apply(vec![Change::put(Table::Meta, "k", b"v".to_vec())])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert!(s.closed().await.to_string().contains("disk full"));
        let again = s.reopen();
        assert_eq!(again.get(Table::Meta, "k").await.unwrap(), None);
        again
            .apply(vec![Change::put(Table::Meta, "k", b"v".to_vec())])
            .await
            .unwrap();
    }
}
