//! The ZooKeeper backend (`actormesh master --zk host:port,.../chroot`): master state kept
//! per object in znodes, written in ZooKeeper transactions (`multi`) with every change
//! conditional on the znode's version, as Mesos keeps its registry.
//!
//! - **Per object.** Each key is a znode under its table (`layout`); its version is the
//!   znode's version plus one, so [`Expect`] maps onto ZooKeeper's versioned writes.
//! - **Atomic batches.** A batch is one `multi`: all of it or none. Its first operation
//!   sets `/txn` at the version read before, so a batch of another writer in between makes
//!   it fail as a conflict.
//! - **Values over ZooKeeper's 1 MiB limit** (which caps a whole transaction) are written
//!   copy-on-write in chunks before the batch, and the batch flips the object's znode to a
//!   pointer at them. Chunks no object points at are deleted after the batch, and at open.
//! - **A lost reply.** When the connection is lost during a commit, it is unknown whether
//!   the batch was applied: `/txn`'s version tells (one more: applied; the same: not, and
//!   the batch is sent again).
//! - **ACLs.** Every znode is created with `creator_all` under digest credentials, so a
//!   ZooKeeper user without them can neither read (the CA key is here) nor write.
//! - **Order.** One task does every operation in the order they were called, so reads see
//!   every batch queued before them. A failed batch, or an expired session, closes the
//!   store ([`StoreError::Closed`] from then on).

pub mod election;
mod layout;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use zookeeper_client as zk;

use self::layout::{
    chunk_dir, key_path, table_path, unescape, Stored, BATCH_INLINE_MAX, CHUNK, INLINE_MAX,
};
pub use self::layout::{parse_auth, ZkAddress, DEFAULT_SESSION_TIMEOUT};
use super::{
    check_batch, first_failure, Change, Expect, StateStore, StoreError, StoreFuture, Table,
    Versioned,
};

/// How to reach the store.
#[derive(Debug, Clone)]
pub struct ZkConfig {
    /// Servers and chroot.
    pub address: ZkAddress,
    /// Digest credentials, `user:password`.
    pub auth: String,
    /// The ZooKeeper session timeout.
    pub session_timeout: Duration,
}

enum Op {
    Get(
        Table,
        String,
        oneshot::Sender<Result<Option<Versioned>, StoreError>>,
    ),
    List(
        Table,
        oneshot::Sender<Result<Vec<(String, Versioned)>, StoreError>>,
    ),
    Apply(Vec<Change>, oneshot::Sender<Result<(), StoreError>>),
}

/// Master state in ZooKeeper.
pub struct ZkStore {
    ops: mpsc::UnboundedSender<Op>,
    closed: watch::Receiver<Option<StoreError>>,
    /// The session, chrooted: the election and the lease use it too, so that leading and
    /// writing end with the same session.
    client: zk::Client,
}

impl std::fmt::Debug for ZkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkStore").finish_non_exhaustive()
    }
}

fn io(operation: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        operation,
        reason: format!("ZooKeeper: {e}"),
    }
}

fn options() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all())
}

impl ZkStore {
    /// Connects, creates the chroot and the tables if they are not there, and starts the
    /// store's task. Call inside a tokio runtime. A bad address, a chroot of other
    /// credentials or no server answering within the session timeout fail here, saying so.
    pub async fn open(config: ZkConfig) -> Result<Self, StoreError> {
        let shown = config.address.shown();
        let open_err = |reason: String| StoreError::Open {
            path: shown.clone().into(),
            reason,
        };
        let connect = zk::Client::connector()
            .with_session_timeout(config.session_timeout)
            .with_connection_timeout(config.session_timeout)
            .with_auth("digest", config.auth.as_bytes())
            .with_fail_eagerly()
            .connect(&config.address.servers);
        let root = match tokio::time::timeout(config.session_timeout * 2, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(open_err(format!(
                    "cannot connect to ZooKeeper at {}: {e}",
                    config.address.servers
                )))
            }
            Err(_) => {
                return Err(open_err(format!(
                    "no ZooKeeper server at {} answered within {:?}",
                    config.address.servers,
                    config.session_timeout * 2
                )))
            }
        };
        let chroot = &config.address.chroot;
        match root.mkdir(chroot, &options()).await {
            Ok(()) | Err(zk::Error::NodeExists) => {}
            Err(zk::Error::NoAuth) => {
                return Err(open_err(format!(
                    "the credentials may not create {chroot} (an ancestor's ACL refuses them)"
                )))
            }
            Err(e) => return Err(open_err(format!("cannot create the chroot {chroot}: {e}"))),
        }
        match root.get_data(chroot).await {
            Ok(_) => {}
            Err(zk::Error::NoAuth) => {
                return Err(open_err(format!(
                    "{chroot} belongs to other ZooKeeper credentials: its ACL does not admit these (is --zk-auth-file the one the other masters use?)"
                )))
            }
            Err(e) => return Err(open_err(format!("cannot read {chroot}: {e}"))),
        }
        let client = root
            .chroot(chroot.as_str())
            .map_err(|_| open_err(format!("{chroot} is not a usable chroot")))?;
        let mut dirs: Vec<String> = vec![
            "/tables".into(),
            "/chunks".into(),
            "/txn".into(),
            election::ELECTION.into(),
        ];
        dirs.extend(Table::ALL.iter().map(|t| table_path(*t)));
        for dir in &dirs {
            match client.create(dir, &[], &options()).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(open_err(format!("cannot create {chroot}{dir}: {e}"))),
            }
        }
        if let Err(e) = collect_chunks(&client).await {
            warn!(error = %e, "could not delete chunks no object points at; they are tried again at the next start");
        }
        info!(store = %shown, session_timeout = ?config.session_timeout, "state store on ZooKeeper");
        let (ops, rx) = mpsc::unbounded_channel();
        let (closed_tx, closed) = watch::channel(None);
        let closed_tx = Arc::new(closed_tx);
        tokio::spawn(watch_session(client.state_watcher(), closed_tx.clone()));
        tokio::spawn(serve(client.clone(), rx, closed_tx));
        Ok(Self {
            ops,
            closed,
            client,
        })
    }

    /// The store's session (chrooted), for the election and the lease.
    pub fn client(&self) -> zk::Client {
        self.client.clone()
    }

    fn send<T: Send + 'static>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> StoreFuture<T> {
        let (tx, rx) = oneshot::channel();
        let sent = self.ops.send(op(tx)).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed(
                    "the ZooKeeper store's task has ended".into(),
                ));
            }
            rx.await.unwrap_or_else(|_| {
                Err(StoreError::Closed(
                    "the ZooKeeper store's task has ended".into(),
                ))
            })
        })
    }
}

impl StateStore for ZkStore {
    fn get(&self, table: Table, key: &str) -> StoreFuture<Option<Versioned>> {
        let key = key.to_string();
        self.send(move |tx| Op::Get(table, key, tx))
    }

    fn list(&self, table: Table) -> StoreFuture<Vec<(String, Versioned)>> {
        self.send(move |tx| Op::List(table, tx))
    }

    fn apply(&self, changes: Vec<Change>) -> StoreFuture<()> {
        self.send(move |tx| Op::Apply(changes, tx))
    }

    fn closed(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = StoreError> + Send + 'static>> {
        first_failure(self.closed.clone())
    }
}

/// Closes the store when the session ends for good: expired, refused, or closed.
async fn watch_session(
    mut state: zk::StateWatcher,
    closed: Arc<watch::Sender<Option<StoreError>>>,
) {
    loop {
        let now = state.changed().await;
        if matches!(
            now,
            zk::SessionState::Expired | zk::SessionState::AuthFailed | zk::SessionState::Closed
        ) {
            let e = io("session", format!("the session ended ({now:?})"));
            closed.send_if_modified(|c| c.is_none() && c.replace(e).is_none());
            return;
        }
    }
}

/// The store's task: every operation in the order called.
async fn serve(
    client: zk::Client,
    mut ops: mpsc::UnboundedReceiver<Op>,
    closed: Arc<watch::Sender<Option<StoreError>>>,
) {
    while let Some(op) = ops.recv().await {
        match op {
            Op::Get(table, key, reply) => {
                let _ = reply.send(get(&client, table, &key).await);
            }
            Op::List(table, reply) => {
                let _ = reply.send(list(&client, table).await);
            }
            Op::Apply(changes, reply) => {
                let failed = closed.borrow().clone();
                let result = match failed {
                    Some(first) => Err(StoreError::Closed(first.to_string())),
                    None => apply(&client, &changes).await,
                };
                if let Err(e) = &result {
                    if !matches!(e, StoreError::Closed(_)) {
                        warn!(error = %e, "a state store batch failed; the store is closed");
                        closed.send_if_modified(|c| c.is_none() && c.replace(e.clone()).is_none());
                    }
                }
                let _ = reply.send(result);
            }
        }
    }
}

/// How many times an operation is tried again while the connection is lost (the client
/// reconnects meanwhile, within its session), backing off to a second: about 15 s.
const LOSS_RETRIES: u32 = 20;

/// Runs `op` again while the connection is lost: a read, or a write whose effect is told
/// by what it returns next (see [`create_once`]).
async fn retry<T, Fut: std::future::Future<Output = Result<T, zk::Error>>>(
    mut op: impl FnMut() -> Fut,
) -> Result<T, zk::Error> {
    let mut wait = Duration::from_millis(50);
    for _ in 0..LOSS_RETRIES {
        match op().await {
            Err(zk::Error::ConnectionLoss) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            done => return done,
        }
    }
    op().await
}

/// Creates `path` once: when the connection is lost during the create it is unknown
/// whether it happened, so after a loss "it exists" means our create did.
async fn create_once(client: &zk::Client, path: &str, data: &[u8]) -> Result<(), zk::Error> {
    let mut lost = false;
    retry(|| {
        let first = !lost;
        lost = true;
        async move {
            match client.create(path, data, &options()).await {
                Ok(_) => Ok(()),
                Err(zk::Error::NodeExists) if !first => Ok(()),
                Err(e) => Err(e),
            }
        }
    })
    .await
}

/// A znode's data and ZooKeeper version, `None` if absent.
async fn read(client: &zk::Client, path: &str) -> Result<Option<(Vec<u8>, i32)>, StoreError> {
    match retry(|| client.get_data(path)).await {
        Ok((data, stat)) => Ok(Some((data, stat.version))),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(io("read", e)),
    }
}

fn corrupt(path: &str) -> StoreError {
    io("read", format!("{path} does not hold actormesh state"))
}

/// The value a key's znode stands for (reading its chunks if it points at them).
async fn value_of(
    client: &zk::Client,
    table: Table,
    key: &str,
    data: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let path = key_path(table, key);
    match Stored::decode(data).ok_or_else(|| corrupt(&path))? {
        Stored::Inline(v) => Ok(v),
        Stored::Chunked {
            generation,
            count,
            len,
        } => {
            let dir = chunk_dir(table, key, generation);
            let mut value = Vec::with_capacity(len as usize);
            for i in 0..count {
                let (chunk, _) = read(client, &format!("{dir}/{i}"))
                    .await?
                    .ok_or_else(|| corrupt(&dir))?;
                value.extend_from_slice(&chunk);
            }
            if value.len() as u64 != len {
                return Err(corrupt(&dir));
            }
            Ok(value)
        }
    }
}

async fn get(
    client: &zk::Client,
    table: Table,
    key: &str,
) -> Result<Option<Versioned>, StoreError> {
    let Some((data, version)) = read(client, &key_path(table, key)).await? else {
        return Ok(None);
    };
    Ok(Some(Versioned {
        value: value_of(client, table, key, &data).await?,
        version: version as u64 + 1,
    }))
}

async fn list(client: &zk::Client, table: Table) -> Result<Vec<(String, Versioned)>, StoreError> {
    let dir = table_path(table);
    let (names, _) = retry(|| client.get_children(&dir))
        .await
        .map_err(|e| io("list", e))?;
    let mut out = Vec::with_capacity(names.len());
    for group in names.chunks(32) {
        // Pipelined on the one connection.
        let paths: Vec<String> = group.iter().map(|name| format!("{dir}/{name}")).collect();
        let reads = paths.iter().map(|p| read(client, p));
        for (name, got) in group.iter().zip(futures::future::join_all(reads).await) {
            let Some((data, version)) = got? else {
                continue;
            };
            let key = unescape(name).ok_or_else(|| corrupt(&format!("{dir}/{name}")))?;
            let value = value_of(client, table, &key, &data).await?;
            out.push((
                key,
                Versioned {
                    value,
                    version: version as u64 + 1,
                },
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Deletes a directory of chunks (absent is fine).
async fn delete_dir(client: &zk::Client, dir: &str) -> Result<(), zk::Error> {
    let children = match client.list_children(dir).await {
        Ok(c) => c,
        Err(zk::Error::NoNode) => return Ok(()),
        Err(e) => return Err(e),
    };
    for c in children {
        match client.delete(&format!("{dir}/{c}"), None).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    match client.delete(dir, None).await {
        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes every chunk directory no object points at (left by a batch that failed or a
/// master that died between a batch and its cleanup).
async fn collect_chunks(client: &zk::Client) -> Result<(), zk::Error> {
    let mut live = std::collections::BTreeSet::new();
    for table in Table::ALL {
        let dir = table_path(table);
        for name in client.list_children(&dir).await? {
            if let Ok((data, _)) = client.get_data(&format!("{dir}/{name}")).await {
                if let (Some(Stored::Chunked { generation, .. }), Some(key)) =
                    (Stored::decode(&data), unescape(&name))
                {
                    live.insert(chunk_dir(table, &key, generation));
                }
            }
        }
    }
    for name in client.list_children("/chunks").await? {
        let dir = format!("/chunks/{name}");
        if !live.contains(&dir) {
            delete_dir(client, &dir).await?;
        }
    }
    Ok(())
}

/// What a batch does to one key, planned before the transaction.
struct Plan {
    /// The znode bytes of each Put, by change index.
    data: BTreeMap<usize, Vec<u8>>,
    /// Chunks to write first: (directory, pieces).
    chunks: Vec<(String, Vec<Vec<u8>>)>,
}

fn plan(changes: &[Change], txn_version: i32) -> Plan {
    let mut data = BTreeMap::new();
    let mut chunks = Vec::new();
    // Values too large inline, and then the largest of the rest until the batch fits.
    let mut puts: Vec<(usize, Table, &str, &[u8])> = changes
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            Change::Put {
                table, key, value, ..
            } => Some((i, *table, key.as_str(), value.as_slice())),
            _ => None,
        })
        .collect();
    puts.sort_by_key(|p| std::cmp::Reverse(p.3.len()));
    let mut inline: usize = puts.iter().map(|p| p.3.len()).sum();
    for (i, table, key, value) in puts {
        if value.len() > INLINE_MAX || inline > BATCH_INLINE_MAX {
            inline -= value.len();
            // Unique per batch and change: the batch's `/txn` version and the index.
            let generation = ((txn_version as u64 + 1) << 20) | i as u64;
            let pieces: Vec<Vec<u8>> = value.chunks(CHUNK).map(<[u8]>::to_vec).collect();
            let pointer = Stored::Chunked {
                generation,
                count: pieces.len() as u32,
                len: value.len() as u64,
            };
            chunks.push((chunk_dir(table, key, generation), pieces));
            data.insert(i, pointer.encode());
        } else {
            data.insert(i, Stored::Inline(value.to_vec()).encode());
        }
    }
    Plan { data, chunks }
}

/// How many times a batch whose reply was lost, and that was not applied, is sent again.
const RESENDS: u32 = 3;

async fn apply(client: &zk::Client, changes: &[Change]) -> Result<(), StoreError> {
    for attempt in 0..=RESENDS {
        match apply_once(client, changes).await? {
            Outcome::Applied => return Ok(()),
            Outcome::NotApplied if attempt < RESENDS => {
                warn!(attempt, "a state store batch was not applied when the connection was lost; sending it again");
            }
            Outcome::NotApplied => break,
        }
    }
    Err(io(
        "write",
        "the connection to ZooKeeper kept failing during the batch",
    ))
}

enum Outcome {
    Applied,
    NotApplied,
}

/// A key's znode version and what it holds.
type Held = (i32, Option<Stored>);

async fn apply_once(client: &zk::Client, changes: &[Change]) -> Result<Outcome, StoreError> {
    // What the batch's keys hold now.
    let mut before: BTreeMap<(Table, &str), Option<Held>> = BTreeMap::new();
    for c in changes {
        let (table, key, _) = c.target();
        if let std::collections::btree_map::Entry::Vacant(slot) = before.entry((table, key)) {
            let now = read(client, &key_path(table, key)).await?;
            slot.insert(now.map(|(d, v)| (v, Stored::decode(&d))));
        }
    }
    check_batch(changes, |t, k| {
        Ok(before
            .get(&(t, k))
            .and_then(|b| b.as_ref())
            .map(|(v, _)| *v as u64 + 1))
    })?;
    let (_, txn) = read(client, "/txn").await?.ok_or_else(|| corrupt("/txn"))?;
    let plan = plan(changes, txn);
    for (dir, pieces) in &plan.chunks {
        write_chunks(client, dir, pieces)
            .await
            .map_err(|e| io("write", e))?;
    }

    let mut w = client.new_multi_writer();
    let add = |r: Result<(), zk::Error>| r.map_err(|e| io("write", e));
    add(w.add_set_data("/txn", &[], Some(txn)))?;
    // Which change each operation after the first stands for.
    let mut op_change: Vec<usize> = Vec::new();
    let mut state: BTreeMap<(Table, &str), Option<i32>> = before
        .iter()
        .map(|(k, b)| (*k, b.as_ref().map(|(v, _)| *v)))
        .collect();
    let mut garbage: Vec<String> = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        let (table, key, expect) = c.target();
        let path = key_path(table, key);
        let now = state.get(&(table, key)).copied().flatten();
        let absent_check = |w: &mut zk::MultiWriter<'_>, op_change: &mut Vec<usize>| {
            // Asserts absence: creating succeeds only if nothing is there.
            add(w.add_create(&path, &[], &options()))?;
            add(w.add_delete(&path, Some(0)))?;
            op_change.extend([i, i]);
            Ok::<(), StoreError>(())
        };
        match c {
            Change::Put { .. } => {
                let data = plan.data.get(&i).cloned().unwrap_or_default();
                match now {
                    Some(v) => add(w.add_set_data(&path, &data, Some(v)))?,
                    None => add(w.add_create(&path, &data, &options()))?,
                }
                op_change.push(i);
                state.insert((table, key), Some(now.map_or(0, |v| v + 1)));
            }
            Change::Delete { .. } => match now {
                Some(v) => {
                    add(w.add_delete(&path, Some(v)))?;
                    op_change.push(i);
                    state.insert((table, key), None);
                }
                None if expect == Expect::Absent => absent_check(&mut w, &mut op_change)?,
                None => {}
            },
            Change::Check { .. } => match now {
                Some(v) => {
                    add(w.add_check_version(&path, v))?;
                    op_change.push(i);
                }
                None => absent_check(&mut w, &mut op_change)?,
            },
        }
        if !matches!(c, Change::Check { .. }) {
            if let Some(Some((_, Some(Stored::Chunked { generation, .. })))) =
                before.get(&(table, key))
            {
                let dir = chunk_dir(table, key, *generation);
                if !garbage.contains(&dir) {
                    garbage.push(dir);
                }
            }
        }
    }
    match w.commit().await {
        Ok(_) => {}
        Err(zk::MultiWriteError::OperationFailed { index: 0, source }) => {
            return Err(StoreError::Conflict {
                table: "txn",
                key: "/txn".into(),
                expected: format!("version {txn} (no other writer)"),
                found: format!("another writer's batch ({source})"),
            })
        }
        Err(zk::MultiWriteError::OperationFailed { index, source }) => {
            let c = &changes[op_change.get(index - 1).copied().unwrap_or(0)];
            let (table, key, expect) = c.target();
            return Err(StoreError::Conflict {
                table: table.name(),
                key: key.to_string(),
                expected: match expect {
                    Expect::Any => "anything".into(),
                    Expect::Absent => "no key".into(),
                    Expect::Version(v) => format!("version {v}"),
                },
                found: format!("a concurrent change ({source})"),
            });
        }
        Err(zk::MultiWriteError::RequestFailed {
            source: zk::Error::ConnectionLoss,
        }) => {
            if !applied(client, txn).await? {
                return Ok(Outcome::NotApplied);
            }
        }
        Err(e) => return Err(io("write", e)),
    }
    for dir in garbage {
        if let Err(e) = delete_dir(client, &dir).await {
            warn!(%dir, error = %e, "could not delete replaced chunks; they are deleted at the next start");
        }
    }
    Ok(Outcome::Applied)
}

/// After a lost reply: whether the batch that set `/txn` from version `txn` was applied.
async fn applied(client: &zk::Client, txn: i32) -> Result<bool, StoreError> {
    let mut wait = Duration::from_millis(50);
    for _ in 0..40 {
        match client.check_stat("/txn").await {
            Ok(Some(stat)) if stat.version == txn + 1 => return Ok(true),
            Ok(Some(stat)) if stat.version == txn => return Ok(false),
            Ok(_) => {
                return Err(io(
                    "write",
                    "another writer changed the store while the reply was lost",
                ))
            }
            Err(zk::Error::ConnectionLoss) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(io("write", e)),
        }
    }
    Err(io(
        "write",
        "ZooKeeper did not come back to tell whether the batch was applied",
    ))
}

async fn write_chunks(client: &zk::Client, dir: &str, pieces: &[Vec<u8>]) -> Result<(), zk::Error> {
    // A directory of this generation can only be a leftover of a failed try.
    delete_dir(client, dir).await?;
    create_once(client, dir, &[]).await?;
    for (i, piece) in pieces.iter().enumerate() {
        create_once(client, &format!("{dir}/{i}"), piece).await?;
    }
    Ok(())
}
