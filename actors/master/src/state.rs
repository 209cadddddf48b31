//! The master's durable state, behind one trait.
//!
//! Everything the master must not lose goes through [`StateStore`]: the cluster CA, the
//! operator API token, join tokens, agent registrations, and validated config. Values are
//! bytes encoded by the one codec; tables are few and named. Changes are applied in atomic
//! batches, so a crash leaves either all of a change or none of it. The default backend is
//! an embedded redb file; a ZooKeeper backend for several masters implements the same
//! trait (tables become znode folders, batches become multi-ops).

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// The tables of master state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// One change in an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set `key` in `table` to `value`.
    Put {
        /// The table.
        table: Table,
        /// The key.
        key: String,
        /// The encoded value.
        value: Vec<u8>,
    },
    /// Remove `key` from `table` (no error if absent).
    Delete {
        /// The table.
        table: Table,
        /// The key.
        key: String,
    },
}

/// The state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be opened (path, permissions, corruption, another master
    /// holding it).
    #[error("cannot open the state store at {path}: {reason}")]
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
}

/// Durable master state: read one key, list a table, apply a batch atomically.
pub trait StateStore: Send + Sync + 'static {
    /// The value of `key` in `table`.
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every `(key, value)` of `table`, in key order.
    fn list(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies all of `changes`, or none of them.
    fn apply(&self, changes: &[Change]) -> Result<(), StoreError>;
}

/// The embedded default: one redb file.
#[derive(Debug)]
pub struct RedbStore {
    db: redb::Database,
}

fn def(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.name())
}

fn io(operation: &'static str) -> impl Fn(redb::Error) -> StoreError {
    move |e| StoreError::Io {
        operation,
        reason: e.to_string(),
    }
}

impl RedbStore {
    /// Opens (or creates) the store file `dir/state.redb`, creating `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("state.redb");
        let open_err = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let db = redb::Database::create(&path).map_err(|e| open_err(e.to_string()))?;
        // The store holds the CA key: readable by the master's user only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| open_err(e.to_string()))?;
        }
        // Create every table once, so that reads never meet a missing one.
        let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        for t in Table::ALL {
            txn.open_table(def(t))
                .map_err(|e| open_err(e.to_string()))?;
        }
        txn.commit().map_err(|e| open_err(e.to_string()))?;
        Ok(Self { db })
    }
}

impl StateStore for RedbStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let e = io("read");
        let txn = self.db.begin_read().map_err(|x| e(x.into()))?;
        let t = txn.open_table(def(table)).map_err(|x| e(x.into()))?;
        let v = t.get(key).map_err(|x| e(x.into()))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    fn list(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let e = io("list");
        let txn = self.db.begin_read().map_err(|x| e(x.into()))?;
        let t = txn.open_table(def(table)).map_err(|x| e(x.into()))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|x| e(x.into()))? {
            let (k, v) = item.map_err(|x| e(x.into()))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        let e = io("write");
        let txn = self.db.begin_write().map_err(|x| e(x.into()))?;
        for c in changes {
            match c {
                Change::Put { table, key, value } => {
                    let mut t = txn.open_table(def(*table)).map_err(|x| e(x.into()))?;
                    t.insert(key.as_str(), value.as_slice())
                        .map_err(|x| e(x.into()))?;
                }
                Change::Delete { table, key } => {
                    let mut t = txn.open_table(def(*table)).map_err(|x| e(x.into()))?;
                    t.remove(key.as_str()).map_err(|x| e(x.into()))?;
                }
            }
        }
        // Dropping an uncommitted transaction aborts it: a failed batch changes nothing.
        txn.commit().map_err(|x| e(x.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("am-state-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn put(table: Table, key: &str, value: &[u8]) -> Change {
        Change::Put {
            table,
            key: key.into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn survives_reopening() {
        let dir = temp("reopen");
        {
            let s = RedbStore::open(&dir).unwrap();
            s.apply(&[
                put(Table::Agents, "a1", b"one"),
                put(Table::Agents, "a2", b"two"),
            ])
            .unwrap();
            s.apply(&[Change::Delete {
                table: Table::Agents,
                key: "a1".into(),
            }])
            .unwrap();
            s.apply(&[put(Table::Meta, "ca", b"pem")]).unwrap();
        }
        let s = RedbStore::open(&dir).unwrap();
        assert_eq!(s.get(Table::Agents, "a1").unwrap(), None);
        assert_eq!(s.get(Table::Meta, "ca").unwrap().unwrap(), b"pem");
        assert_eq!(
            s.list(Table::Agents).unwrap(),
            vec![("a2".into(), b"two".to_vec())]
        );
        assert!(s.list(Table::Tokens).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unopenable_path_is_a_clear_error() {
        let file = temp("file");
        std::fs::write(&file, b"x").unwrap();
        // A path whose parent is a file cannot hold a store.
        let e = RedbStore::open(&file.join("sub")).unwrap_err();
        assert!(e.to_string().contains("cannot open the state store"), "{e}");
        let _ = std::fs::remove_file(&file);
    }
}
