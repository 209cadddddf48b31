//! Backups of the whole master state, CA included, from either store to either store
//! (`actormesh backup`, `actormesh restore`).
//!
//! - **A consistent snapshot.** [`snapshot`] asks every table's listing at once. A store
//!   serves its operations in the order they were called, so the listings see the same
//!   batches: every batch queued before, none queued after. The master takes it from its
//!   own actor ([`crate::master::TakeBackup`]), so no batch of its own comes in between.
//! - **The file** is `AMBACKUP` and a format version, then records, each a little-endian
//!   `u32` length and one codec value: a row per key, then an end record with the row
//!   count and the SHA-256 of everything before it. Each record is decoded on its own, so
//!   a backup may be larger than the codec's one-value limit; a truncated or altered file
//!   is refused, naming what is wrong.
//! - **Restoring** goes only into an empty store, in batches of bounded size, the CA last:
//!   a master started on a store the restore did not finish finds no CA there (and a
//!   second restore refuses the store: it is not empty).

use serde::{Deserialize, Serialize};

use super::{Change, StateStore, StoreError, Table};

/// The first bytes of a backup file.
pub const MAGIC: &[u8; 8] = b"AMBACKUP";
/// The format version after them.
pub const FORMAT: u32 = 1;

/// One key of the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The table's name.
    pub table: String,
    /// The key.
    pub key: String,
    /// The stored value.
    pub value: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Row(Row),
    End { rows: u64, sha256: String },
}

/// A backup could not be read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file is not a backup, or not one of this format.
    #[error("not an actormesh backup: {0}")]
    NotABackup(String),
    /// The file ends, or its contents differ from what was written.
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    /// The store to restore into holds state already.
    #[error("the store to restore into is not empty ({0}); restore only into a new data dir or ZooKeeper chroot (after a restore that failed midway, remove it and restore again)")]
    NotEmpty(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn table_named(name: &str) -> Option<Table> {
    Table::ALL.into_iter().find(|t| t.name() == name)
}

/// Every key of every table, in one consistent view of `store`.
pub async fn snapshot(store: &dyn StateStore) -> Result<Vec<Row>, StoreError> {
    snapshot_queued(store).await
}

/// [`snapshot`], its listings queued when this is called (not when it is polled): every
/// table is asked before anything else can be queued between them.
pub fn snapshot_queued(
    store: &dyn StateStore,
) -> impl std::future::Future<Output = Result<Vec<Row>, StoreError>> + Send + 'static {
    let listings: Vec<_> = Table::ALL.iter().map(|t| (*t, store.list(*t))).collect();
    async move { collect(listings).await }
}

/// A table's listing, on its way.
type Listing = (Table, super::StoreFuture<Vec<(String, super::Versioned)>>);

async fn collect(listings: Vec<Listing>) -> Result<Vec<Row>, StoreError> {
    let mut rows = Vec::new();
    for (table, listing) in listings {
        for (key, v) in listing.await? {
            rows.push(Row {
                table: table.name().to_string(),
                key,
                value: v.value,
            });
        }
    }
    Ok(rows)
}

/// The backup file of `rows`.
pub fn encode(rows: &[Row]) -> Result<Vec<u8>, StoreError> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&FORMAT.to_le_bytes());
    let push = |out: &mut Vec<u8>, r: &Record| -> Result<(), StoreError> {
        let bytes = actormesh_transport::codec::encode(r).map_err(|e| StoreError::Io {
            operation: "encode a backup",
            reason: e.to_string(),
        })?;
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
        Ok(())
    };
    for row in rows {
        push(&mut out, &Record::Row(row.clone()))?;
    }
    let end = Record::End {
        rows: rows.len() as u64,
        sha256: actormesh::token::sha256_hex_bytes(&out),
    };
    push(&mut out, &end)?;
    Ok(out)
}

/// The rows of a backup file, checked whole.
pub fn decode(bytes: &[u8]) -> Result<Vec<Row>, BackupError> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(BackupError::NotABackup(
            "it does not start with AMBACKUP".into(),
        ));
    }
    let format = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if format != FORMAT {
        return Err(BackupError::NotABackup(format!(
            "format {format}; this actormesh reads format {FORMAT}"
        )));
    }
    let mut at = 12;
    let mut rows = Vec::new();
    loop {
        let start = at;
        let len = bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
            .ok_or_else(|| {
                BackupError::Damaged(format!(
                    "it ends after {} rows, before its end record",
                    rows.len()
                ))
            })?;
        at += 4;
        let body = bytes.get(at..at + len).ok_or_else(|| {
            BackupError::Damaged(format!("record {} is cut short", rows.len() + 1))
        })?;
        at += len;
        let record: Record = actormesh_transport::codec::decode(body)
            .map_err(|e| BackupError::Damaged(format!("record {}: {e}", rows.len() + 1)))?;
        match record {
            Record::Row(row) => {
                if table_named(&row.table).is_none() {
                    return Err(BackupError::Damaged(format!(
                        "record {} names table {:?}, which this actormesh does not have",
                        rows.len() + 1,
                        row.table
                    )));
                }
                rows.push(row);
            }
            Record::End { rows: n, sha256 } => {
                if n != rows.len() as u64 {
                    return Err(BackupError::Damaged(format!(
                        "it says {n} rows and holds {}",
                        rows.len()
                    )));
                }
                if actormesh::token::sha256_hex_bytes(&bytes[..start]) != sha256 {
                    return Err(BackupError::Damaged(
                        "its checksum does not match its contents".into(),
                    ));
                }
                if at != bytes.len() {
                    return Err(BackupError::Damaged(format!(
                        "{} bytes follow its end record",
                        bytes.len() - at
                    )));
                }
                return Ok(rows);
            }
        }
    }
}

/// A batch of a restore holds at most this many bytes of values...
const BATCH_BYTES: usize = 256 * 1024;
/// ...and this many keys.
const BATCH_KEYS: usize = 200;

/// Writes `rows` into `store`, which must be empty: in batches, the CA last.
pub async fn restore(store: &dyn StateStore, rows: Vec<Row>) -> Result<usize, BackupError> {
    for table in Table::ALL {
        let n = store.list(table).await?.len();
        if n > 0 {
            return Err(BackupError::NotEmpty(format!(
                "table {} holds {n} keys",
                table.name()
            )));
        }
    }
    let is_ca = |r: &Row| {
        r.table == Table::Meta.name()
            && (r.key == crate::rotation::META_CA_CERT || r.key == crate::rotation::META_CA_KEY)
    };
    let (ca, rest): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(is_ca);
    let count = ca.len() + rest.len();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for row in rest {
        bytes += row.value.len();
        let table = table_named(&row.table)
            .ok_or_else(|| BackupError::Damaged(format!("table {:?} is unknown", row.table)))?;
        batch.push(Change::put(table, row.key, row.value));
        if batch.len() >= BATCH_KEYS || bytes >= BATCH_BYTES {
            store.apply(std::mem::take(&mut batch)).await?;
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        store.apply(batch).await?;
    }
    if !ca.is_empty() {
        store
            .apply(
                ca.into_iter()
                    .map(|r| Change::put(Table::Meta, r.key, r.value))
                    .collect(),
            )
            .await?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    async fn filled() -> MemoryStore {
        let s = MemoryStore::new();
        s.apply(vec![
            Change::put(Table::Meta, crate::rotation::META_CA_CERT, b"cert".to_vec()),
            Change::put(Table::Meta, crate::rotation::META_CA_KEY, b"key".to_vec()),
            Change::put(Table::Tokens, "t1", vec![1; 10]),
        ])
        .await
        .unwrap();
        // Many keys and large values: the restore takes several batches.
        let many: Vec<Change> = (0..450)
            .map(|i| Change::put(Table::Config, format!("audit/{i:05}"), vec![i as u8; 2000]))
            .collect();
        s.apply(many).await.unwrap();
        s
    }

    #[tokio::test]
    async fn a_backup_restores_every_key_into_an_empty_store_and_nowhere_else() {
        let from = filled().await;
        let rows = snapshot(&from).await.unwrap();
        assert_eq!(rows.len(), 453);
        let file = encode(&rows).unwrap();
        let back = decode(&file).unwrap();
        assert_eq!(back, rows);
        let to = MemoryStore::new();
        assert_eq!(restore(&to, back.clone()).await.unwrap(), 453);
        assert_eq!(snapshot(&to).await.unwrap(), rows);
        let e = restore(&to, back).await.unwrap_err();
        assert!(matches!(e, BackupError::NotEmpty(_)), "{e}");
    }

    #[tokio::test]
    async fn a_truncated_altered_or_foreign_file_is_refused_saying_what_is_wrong() {
        let rows = snapshot(&filled().await).await.unwrap();
        let file = encode(&rows).unwrap();
        let e = decode(&file[..file.len() - 10]).unwrap_err();
        assert!(matches!(e, BackupError::Damaged(_)), "{e}");
        let e = decode(&file[..file.len() / 2]).unwrap_err();
        assert!(
            e.to_string().contains("cut short") || e.to_string().contains("ends after"),
            "{e}"
        );
        let mut altered = file.clone();
        altered[40] ^= 1;
        assert!(matches!(
            decode(&altered).unwrap_err(),
            BackupError::Damaged(_)
        ));
        let e = decode(b"{\"not\": \"a backup\"}").unwrap_err();
        assert!(matches!(e, BackupError::NotABackup(_)), "{e}");
        let mut later = file.clone();
        later[8] = 9;
        assert!(decode(&later).unwrap_err().to_string().contains("format 9"));
        let mut longer = file;
        longer.push(0);
        assert!(decode(&longer)
            .unwrap_err()
            .to_string()
            .contains("follow its end"));
    }

    /// A store that takes `left` batches, then fails every one.
    struct FailsAfter {
        inner: MemoryStore,
        left: std::sync::atomic::AtomicUsize,
    }

    impl StateStore for FailsAfter {
        fn get(
            &self,
            t: Table,
            k: &str,
        ) -> crate::state::StoreFuture<Option<crate::state::Versioned>> {
            self.inner.get(t, k)
        }
        fn list(
            &self,
            t: Table,
        ) -> crate::state::StoreFuture<Vec<(String, crate::state::Versioned)>> {
            self.inner.list(t)
        }
        fn apply(&self, changes: Vec<Change>) -> crate::state::StoreFuture<()> {
            use std::sync::atomic::Ordering;
            if self.left.fetch_sub(1, Ordering::Relaxed) == 0 {
                self.inner.fail_writes("disk full");
            }
            self.inner.apply(changes)
        }
        fn closed(
            &self,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = StoreError> + Send>> {
            self.inner.closed()
        }
    }

    #[tokio::test]
    async fn the_ca_is_written_last() {
        let rows = snapshot(&filled().await).await.unwrap();
        let to = FailsAfter {
            inner: MemoryStore::new(),
            left: 2.into(),
        };
        // The store fails after the first batches: the CA is not there.
        assert!(restore(&to, rows).await.is_err());
        assert!(to
            .get(Table::Meta, crate::rotation::META_CA_CERT)
            .await
            .unwrap()
            .is_none());
        // Two batches went in: each ends at the first key past 256 KiB of values (the
        // token and 132 audit rows, then 132 more).
        assert_eq!(to.list(Table::Config).await.unwrap().len(), 264);
    }
}
