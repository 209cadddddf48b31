//! The embedded default store: one redb file, written by a thread of its own.
//!
//! Every request goes to that thread in order. Batches queued while it commits are committed
//! together in the next transaction (group commit): one fsync for all of them, and the
//! master's event loop never waits for one.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{oneshot, watch};

use super::{
    check_batch, first_failure, Change, StateStore, StoreError, StoreFuture, Table, Versioned,
};

/// At most this many batches go into one transaction, so that one commit's size stays
/// bounded however far the master runs ahead.
const MAX_GROUP: usize = 256;

/// Versions of every key, `<table>/<key>` → version. A key written before versions
/// existed has none here and counts as version 1.
const VERSIONS: TableDefinition<'static, &'static str, u64> = TableDefinition::new("versions");

fn def(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.name())
}

fn version_key(table: Table, key: &str) -> String {
    format!("{}/{key}", table.name())
}

fn io<E: std::fmt::Display>(operation: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Io {
        operation,
        reason: e.to_string(),
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Request {
    Get(Table, String, Reply<Option<Versioned>>),
    List(Table, Reply<Vec<(String, Versioned)>>),
    Apply(Vec<Change>, Reply<()>),
    /// Holds the thread until the sender is dropped, so a test can queue batches behind it.
    #[cfg(test)]
    Hold(mpsc::Receiver<()>),
}

/// The embedded store: `state.redb` in the master's data dir.
#[derive(Debug)]
pub struct RedbStore {
    /// `None` only while dropping.
    requests: Option<mpsc::Sender<Request>>,
    /// Joined on drop, so that the file is closed when the store is gone.
    thread: Option<std::thread::JoinHandle<()>>,
    closed: Arc<watch::Sender<Option<StoreError>>>,
    commits: Arc<AtomicU64>,
}

impl RedbStore {
    /// Opens (or creates) the store file `dir/state.redb`, creating `dir`, on the store's
    /// own thread.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        let (opened_tx, opened) = oneshot::channel();
        let (requests, rx) = mpsc::channel();
        let closed = Arc::new(watch::channel(None).0);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            closed: closed.clone(),
            commits: commits.clone(),
            failure: None,
        };
        let thread = std::thread::Builder::new()
            .name("actormesh-state".into())
            .spawn(move || match open_db(&dir) {
                Ok(db) => {
                    let _ = opened_tx.send(Ok(()));
                    writer.run(&db, rx);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })
            .map_err(io("start"))?;
        opened.await.map_err(io("open"))??;
        Ok(Self {
            requests: Some(requests),
            thread: Some(thread),
            closed,
            commits,
        })
    }

    /// How many write transactions were committed (each is one fsync).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn send<T: Send + 'static>(&self, make: impl FnOnce(Reply<T>) -> Request) -> StoreFuture<T> {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|r| r.send(make(tx)).is_ok());
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed("the store's thread has ended".into()));
            }
            rx.await
                .unwrap_or_else(|_| Err(StoreError::Closed("the store's thread has ended".into())))
        })
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // The thread ends once it has committed what was queued and sees no sender.
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_db(dir: &PathBuf) -> Result<redb::Database, StoreError> {
    let path = dir.join("state.redb");
    let open_err = |reason: String| StoreError::Open {
        path: path.clone(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    let db = redb::Database::create(&path).map_err(|e| open_err(e.to_string()))?;
    // The store holds the CA key: readable by the master's user only, in a directory
    // only that user can enter.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| open_err(e.to_string()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| open_err(e.to_string()))?;
    }
    // Create every table once, so that reads never meet a missing one.
    let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
    for t in Table::ALL {
        txn.open_table(def(t))
            .map_err(|e| open_err(e.to_string()))?;
    }
    txn.open_table(VERSIONS)
        .map_err(|e| open_err(e.to_string()))?;
    txn.commit().map_err(|e| open_err(e.to_string()))?;
    Ok(db)
}

/// The store thread's state.
struct Writer {
    closed: Arc<watch::Sender<Option<StoreError>>>,
    commits: Arc<AtomicU64>,
    /// The first failure: every later batch is refused.
    failure: Option<StoreError>,
}

impl Writer {
    fn run(mut self, db: &redb::Database, rx: mpsc::Receiver<Request>) {
        let mut next: Option<Request> = None;
        loop {
            let request = match next.take() {
                Some(r) => r,
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return,
                },
            };
            match request {
                Request::Get(table, key, reply) => {
                    let _ = reply.send(read_one(db, table, &key));
                }
                Request::List(table, reply) => {
                    let _ = reply.send(read_all(db, table));
                }
                Request::Apply(changes, reply) => {
                    let mut group = vec![(changes, reply)];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(Request::Apply(changes, reply)) => group.push((changes, reply)),
                            // A read waits for the group before it, so it sees its writes.
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_group(db, group);
                }
                #[cfg(test)]
                Request::Hold(release) => {
                    let _ = release.recv();
                }
            }
        }
    }

    fn commit_group(&mut self, db: &redb::Database, group: Vec<(Vec<Change>, Reply<()>)>) {
        if let Some(e) = &self.failure {
            let closed = StoreError::Closed(e.to_string());
            for (_, reply) in group {
                let _ = reply.send(Err(closed.clone()));
            }
            return;
        }
        let mut applied = Vec::new();
        let mut refused = Vec::new();
        let outcome = (|| {
            let txn = db.begin_write().map_err(io("write"))?;
            let mut group = group.into_iter();
            for (changes, reply) in group.by_ref() {
                match check_batch(&changes, |t, k| current_version(&txn, t, k)) {
                    Ok(()) => {
                        write_batch(&txn, &changes)?;
                        applied.push(reply);
                    }
                    Err(conflict) => {
                        // This batch changes nothing; those after it assumed it would.
                        refused.push((reply, Err(conflict.clone())));
                        let closed = StoreError::Closed(conflict.to_string());
                        refused.extend(group.map(|(_, r)| (r, Err(closed.clone()))));
                        self.fail(conflict);
                        break;
                    }
                }
            }
            // Dropping an uncommitted transaction aborts it: a failed commit changes nothing.
            txn.commit().map_err(io("commit"))
        })();
        match outcome {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                for reply in applied {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                self.fail(e.clone());
                for reply in applied {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        for (reply, result) in refused {
            let _ = reply.send(result);
        }
    }

    fn fail(&mut self, e: StoreError) {
        if self.failure.is_none() {
            tracing::error!(error = %e, "the state store failed; it accepts no more writes");
            self.closed.send_replace(Some(e.clone()));
            self.failure = Some(e);
        }
    }
}

fn current_version(
    txn: &WriteTransaction,
    table: Table,
    key: &str,
) -> Result<Option<u64>, StoreError> {
    let versions = txn.open_table(VERSIONS).map_err(io("read"))?;
    if let Some(v) = versions
        .get(version_key(table, key).as_str())
        .map_err(io("read"))?
    {
        return Ok(Some(v.value()));
    }
    let t = txn.open_table(def(table)).map_err(io("read"))?;
    let legacy = t.get(key).map_err(io("read"))?.map(|_| 1);
    Ok(legacy)
}

fn write_batch(txn: &WriteTransaction, changes: &[Change]) -> Result<(), StoreError> {
    for c in changes {
        match c {
            Change::Put {
                table, key, value, ..
            } => {
                let version = current_version(txn, *table, key)?.unwrap_or(0) + 1;
                txn.open_table(def(*table))
                    .map_err(io("write"))?
                    .insert(key.as_str(), value.as_slice())
                    .map_err(io("write"))?;
                txn.open_table(VERSIONS)
                    .map_err(io("write"))?
                    .insert(version_key(*table, key).as_str(), version)
                    .map_err(io("write"))?;
            }
            Change::Delete { table, key, .. } => {
                txn.open_table(def(*table))
                    .map_err(io("write"))?
                    .remove(key.as_str())
                    .map_err(io("write"))?;
                txn.open_table(VERSIONS)
                    .map_err(io("write"))?
                    .remove(version_key(*table, key).as_str())
                    .map_err(io("write"))?;
            }
            Change::Check { .. } => {}
        }
    }
    Ok(())
}

fn read_one(db: &redb::Database, table: Table, key: &str) -> Result<Option<Versioned>, StoreError> {
    let txn = db.begin_read().map_err(io("read"))?;
    let t = txn.open_table(def(table)).map_err(io("read"))?;
    let Some(value) = t.get(key).map_err(io("read"))? else {
        return Ok(None);
    };
    let versions = txn.open_table(VERSIONS).map_err(io("read"))?;
    let version = versions
        .get(version_key(table, key).as_str())
        .map_err(io("read"))?
        .map_or(1, |v| v.value());
    Ok(Some(Versioned {
        value: value.value().to_vec(),
        version,
    }))
}

fn read_all(db: &redb::Database, table: Table) -> Result<Vec<(String, Versioned)>, StoreError> {
    let txn = db.begin_read().map_err(io("list"))?;
    let t = txn.open_table(def(table)).map_err(io("list"))?;
    let versions = txn.open_table(VERSIONS).map_err(io("list"))?;
    let mut out = Vec::new();
    for item in t.iter().map_err(io("list"))? {
        let (k, v) = item.map_err(io("list"))?;
        let key = k.value().to_string();
        let version = versions
            .get(version_key(table, &key).as_str())
            .map_err(io("list"))?
            .map_or(1, |v| v.value());
        out.push((
            key,
            Versioned {
                value: v.value().to_vec(),
                version,
            },
        ));
    }
    Ok(out)
}

impl StateStore for RedbStore {
    fn get(&self, table: Table, key: &str) -> StoreFuture<Option<Versioned>> {
        let key = key.to_string();
        self.send(move |reply| Request::Get(table, key, reply))
    }

    fn list(&self, table: Table) -> StoreFuture<Vec<(String, Versioned)>> {
        self.send(move |reply| Request::List(table, reply))
    }

    fn apply(&self, changes: Vec<Change>) -> StoreFuture<()> {
        self.send(move |reply| Request::Apply(changes, reply))
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = StoreError> + Send + 'static>> {
        first_failure(self.closed.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract;
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("am-state-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn keeps_the_store_contract() {
        for (name, case) in [("atomic", 0), ("closes", 1), ("versions", 2)] {
            let dir = temp(name);
            let s = RedbStore::open(&dir).await.unwrap();
            match case {
                0 => contract::batches_are_atomic_and_versioned(&s).await,
                1 => contract::a_failed_batch_closes_the_store(&s).await,
                _ => contract::checks_and_deletes_honour_versions(&s).await,
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[tokio::test]
    async fn survives_reopening() {
        let dir = temp("reopen");
        std::fs::create_dir_all(&dir).unwrap();
        {
            let s = RedbStore::open(&dir).await.unwrap();
            // It holds the CA key: only the master's user may read it, or enter its dir,
            // also when the dir was made before with looser bits.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode(&dir.join("state.redb")), 0o600);
                assert_eq!(mode(&dir), 0o700);
            }
            s.apply(vec![
                Change::put(Table::Agents, "a1", b"one".to_vec()),
                Change::put(Table::Agents, "a2", b"two".to_vec()),
            ])
            .await
            .unwrap();
            s.apply(vec![Change::delete(Table::Agents, "a1")])
                .await
                .unwrap();
            s.apply(vec![Change::put(Table::Meta, "ca", b"pem".to_vec())])
                .await
                .unwrap();
            s.apply(vec![Change::put(Table::Meta, "ca", b"pem2".to_vec())])
                .await
                .unwrap();
        }
        let s = RedbStore::open(&dir).await.unwrap();
        assert_eq!(s.get(Table::Agents, "a1").await.unwrap(), None);
        let ca = s.get(Table::Meta, "ca").await.unwrap().unwrap();
        assert_eq!((ca.value.as_slice(), ca.version), (&b"pem2"[..], 2));
        let agents = s.list(Table::Agents).await.unwrap();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].0, "a2");
        assert_eq!(agents[0].1.value, b"two");
        assert!(s.list(Table::Tokens).await.unwrap().is_empty());
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn batches_queued_during_a_commit_share_the_next_one() {
        let dir = temp("group");
        let s = RedbStore::open(&dir).await.unwrap();
        let before = s.commits();
        // The thread is held while 100 batches queue up behind it, as when the master
        // writes faster than the disk syncs.
        let (release, hold) = mpsc::channel();
        s.requests
            .as_ref()
            .unwrap()
            .send(Request::Hold(hold))
            .unwrap();
        let writes: Vec<_> = (0..100)
            .map(|i| s.apply(vec![Change::put(Table::Agents, format!("a{i}"), vec![i])]))
            .collect();
        drop(release);
        for w in writes {
            w.await.unwrap();
        }
        assert_eq!(s.commits() - before, 1, "100 queued batches, one commit");
        assert_eq!(s.list(Table::Agents).await.unwrap().len(), 100);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn keys_written_before_versions_existed_count_as_version_one() {
        let dir = temp("legacy");
        {
            // A store as an earlier actormesh wrote it: values, no versions table.
            std::fs::create_dir_all(&dir).unwrap();
            let db = redb::Database::create(dir.join("state.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(def(Table::Meta))
                .unwrap()
                .insert("ca", b"old".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let s = RedbStore::open(&dir).await.unwrap();
        let ca = s.get(Table::Meta, "ca").await.unwrap().unwrap();
        assert_eq!((ca.value.as_slice(), ca.version), (&b"old"[..], 1));
        s.apply(vec![Change::put(Table::Meta, "ca", b"new".to_vec())
            .expecting(super::super::Expect::Version(1))])
            .await
            .unwrap();
        assert_eq!(s.get(Table::Meta, "ca").await.unwrap().unwrap().version, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_unopenable_path_is_a_clear_error() {
        let file = temp("file");
        std::fs::write(&file, b"x").unwrap();
        // A path whose parent is a file cannot hold a store.
        let e = RedbStore::open(&file.join("sub")).await.unwrap_err();
        assert!(e.to_string().contains("cannot open the state store"), "{e}");
        let _ = std::fs::remove_file(&file);
    }
}
