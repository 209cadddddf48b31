//! Several masters on one ZooKeeper store: which one leads, its term, and how long it may
//! act on a session it has not heard from. The plain rules are here, unit-tested; the
//! ZooKeeper side is `state::zk::election`, the start-up in `actormesh master --zk`.
//!
//! - **Election** (the Mesos recipe, through `zookeeper-client`'s lock): each master
//!   creates an ephemeral sequential znode under `/election`, holding its [`MasterInfo`];
//!   the lowest sequence leads, and each other master waits on the one just below its own.
//! - **The term** is the fencing token. A new leader bumps the Meta key [`META_TERM`]
//!   (version-checked, so two can never take the same term) and every batch it writes
//!   from then on starts with a check of that key at that version ([`FencedStore`]): once
//!   a later leader has taken a term, an older leader's writes all fail, and it steps down.
//! - **The lease.** A leader stops acting before the server could have expired its
//!   session: it pings ZooKeeper, and acts only while the last answered ping was *sent*
//!   less than two thirds of the session timeout ago ([`lease_holds`]). The server heard
//!   it no earlier than it was sent, so it cannot expire the session before then.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::state::{Change, Expect, StateStore, StoreError, StoreFuture, Table};

/// The Meta key whose version is the current leadership term.
pub const META_TERM: &str = "leader_term";

/// What a master says about itself in its election znode (JSON, so that an operator can
/// read it with `zkCli.sh get`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterInfo {
    /// The master's name (`--name`), unique among the masters.
    pub name: String,
    /// Its mesh address.
    pub mesh: SocketAddr,
    /// Its bootstrap (join) address.
    pub bootstrap: SocketAddr,
    /// Its operator API address.
    pub api: SocketAddr,
}

/// The sequence number ZooKeeper appended to an election znode's name (its last ten
/// digits), if the name is one.
pub fn sequence(name: &str) -> Option<u64> {
    let digits = name.get(name.len().checked_sub(10)?..)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The leading member among the election znodes `children`: the lowest sequence. Names
/// that are not election znodes are ignored.
pub fn leader_of(children: &[String]) -> Option<&str> {
    children
        .iter()
        .filter_map(|c| sequence(c).map(|s| (s, c.as_str())))
        .min()
        .map(|(_, c)| c)
}

/// The response header in which a leader's API names every master's API, the leader's
/// first (comma-separated URLs), so the CLI learns them and keeps them.
pub const MASTERS_HEADER: &str = "x-actormesh-masters";

/// The value of [`MASTERS_HEADER`] for the masters standing.
pub fn masters_header(masters: &[MasterInfo]) -> String {
    masters
        .iter()
        .map(|m| format!("http://{}", m.api))
        .collect::<Vec<_>>()
        .join(",")
}

/// Who leads, as a master at `own_mesh` tells it: itself when it is the only master
/// (`own_name` or `standing` is `None`), else the first master of the election `standing`
/// (itself or another: a leader resumed after a pause may no longer lead); `None` while
/// the election names none. The flag says whether it is this master.
pub fn leader_as_seen(
    own_name: Option<&str>,
    own_mesh: SocketAddr,
    standing: Option<&[MasterInfo]>,
) -> Option<(SocketAddr, bool)> {
    let (Some(name), Some(standing)) = (own_name, standing) else {
        return Some((own_mesh, true));
    };
    let first = standing.first()?;
    Some(if first.name == name {
        (own_mesh, true)
    } else {
        (first.mesh, false)
    })
}

/// The bootstrap addresses to tell of the masters standing, `first` (the answering
/// master's own) leading, each once.
pub fn bootstrap_set(first: Option<SocketAddr>, masters: &[MasterInfo]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = first.into_iter().collect();
    for m in masters {
        if !out.contains(&m.bootstrap) {
            out.push(m.bootstrap);
        }
    }
    out
}

/// Whether a leader may still act: the last ping ZooKeeper answered was sent at `sent`,
/// and the session times out after `timeout` without the server hearing from us.
pub fn lease_holds(now: Instant, sent: Instant, timeout: Duration) -> bool {
    now.saturating_duration_since(sent) < timeout * 2 / 3
}

/// A leader's lease on its ZooKeeper session, renewed by its pinger.
#[derive(Debug)]
pub struct Lease {
    base: Instant,
    /// When the last answered ping was sent, in ms after `base`.
    sent_ms: AtomicU64,
    timeout: Duration,
}

impl Lease {
    /// A lease for a session of `timeout`, as if a ping sent now had been answered.
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            sent_ms: AtomicU64::new(0),
            timeout,
        })
    }

    /// A ping sent at `sent` was answered.
    pub fn renewed(&self, sent: Instant) {
        let ms = sent.saturating_duration_since(self.base).as_millis() as u64;
        self.sent_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When the last answered ping was sent.
    fn sent(&self) -> Instant {
        self.base + Duration::from_millis(self.sent_ms.load(Ordering::Relaxed))
    }

    /// Whether the leader may act at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        lease_holds(now, self.sent(), self.timeout)
    }

    /// When the lease lapses unless renewed.
    pub fn lapses_at(&self) -> Instant {
        self.sent() + self.timeout * 2 / 3
    }

    /// How often to ping: six times in a lease, so that a ping or two may be slow.
    pub fn ping_every(&self) -> Duration {
        self.timeout / 9
    }
}

/// A term taken: its number, and the version of [`META_TERM`] it wrote (which the
/// leader's writes check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    /// The term's number; orders carry it.
    pub number: u64,
    /// The key's version once this term was taken.
    pub version: u64,
}

/// The number of the term after the one stored as `value` at `version`: one more than
/// both, so that terms only grow, also after a restore (which writes the key anew, its
/// version starting again while its value keeps the last term). A value that is no
/// number counts as none.
pub fn next_term(value: &[u8], version: u64) -> u64 {
    let stored = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    stored.max(version) + 1
}

/// Takes the next term: writes [`META_TERM`] at the version read, so that of two masters
/// racing for it one fails (a conflict).
pub async fn take_term(store: &dyn StateStore) -> Result<Term, StoreError> {
    let now = store.get(Table::Meta, META_TERM).await?;
    let (expect, number, version) = match &now {
        None => (Expect::Absent, 1, 1),
        Some(v) => (
            Expect::Version(v.version),
            next_term(&v.value, v.version),
            v.version + 1,
        ),
    };
    store
        .apply(vec![Change::put(
            Table::Meta,
            META_TERM,
            number.to_string().into_bytes(),
        )
        .expecting(expect)])
        .await?;
    Ok(Term { number, version })
}

/// The store as the leader of `term` writes it: every batch first checks that the term is
/// still current, and none is sent once the lease lapsed.
pub struct FencedStore {
    inner: Arc<dyn StateStore>,
    term: Term,
    lease: Arc<Lease>,
}

impl std::fmt::Debug for FencedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FencedStore")
            .field("term", &self.term)
            .finish_non_exhaustive()
    }
}

impl FencedStore {
    /// `inner` fenced by `term` (as [`take_term`] returned it) and `lease`.
    pub fn new(inner: Arc<dyn StateStore>, term: Term, lease: Arc<Lease>) -> Self {
        Self { inner, term, lease }
    }

    /// The batch as it is written: the term check first.
    fn fenced(&self, mut changes: Vec<Change>) -> Vec<Change> {
        changes.insert(
            0,
            Change::Check {
                table: Table::Meta,
                key: META_TERM.into(),
                expect: Expect::Version(self.term.version),
            },
        );
        changes
    }
}

fn lapsed() -> StoreError {
    StoreError::Closed(
        "the leadership lease lapsed: ZooKeeper has not answered for two thirds of the session timeout, so another master may lead".into(),
    )
}

impl StateStore for FencedStore {
    fn get(&self, table: Table, key: &str) -> StoreFuture<Option<crate::state::Versioned>> {
        self.inner.get(table, key)
    }

    fn list(&self, table: Table) -> StoreFuture<Vec<(String, crate::state::Versioned)>> {
        self.inner.list(table)
    }

    fn apply(&self, changes: Vec<Change>) -> StoreFuture<()> {
        if !self.lease.holds(Instant::now()) {
            return Box::pin(async { Err(lapsed()) });
        }
        self.inner.apply(self.fenced(changes))
    }

    fn closed(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = StoreError> + Send>> {
        let inner = self.inner.closed();
        let lease = self.lease.clone();
        Box::pin(async move {
            let lapse = async move {
                loop {
                    let at = lease.lapses_at();
                    tokio::time::sleep_until(at.into()).await;
                    if !lease.holds(Instant::now()) {
                        return lapsed();
                    }
                }
            };
            tokio::select! {
                e = inner => e,
                e = lapse => e,
            }
        })
    }

    fn may_act(&self) -> bool {
        self.lease.holds(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    #[test]
    fn the_bootstrap_set_puts_the_answering_master_first_and_each_once() {
        let info = |name: &str, port: u16| MasterInfo {
            name: name.into(),
            mesh: SocketAddr::from(([127, 0, 0, 1], port - 1)),
            bootstrap: SocketAddr::from(([127, 0, 0, 1], port)),
            api: SocketAddr::from(([127, 0, 0, 1], port + 1)),
        };
        let all = [info("m1", 7001), info("m2", 7101), info("m3", 7201)];
        let p = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(
            bootstrap_set(Some(p(7101)), &all),
            vec![p(7101), p(7001), p(7201)],
            "the answering master first, then the others in election order, none twice"
        );
        assert_eq!(
            bootstrap_set(Some(p(7001)), &[]),
            vec![p(7001)],
            "a lone master"
        );
        assert_eq!(bootstrap_set(None, &all), vec![p(7001), p(7101), p(7201)]);
        assert_eq!(
            masters_header(&all[..2]),
            "http://127.0.0.1:7002,http://127.0.0.1:7102"
        );
    }

    #[test]
    fn the_lowest_sequence_leads_and_other_names_are_ignored() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let children = c(&[
            "_c_b1-latch-0000000012",
            "_c_a9-latch-0000000003",
            "notes",
            "_c_ff-latch-0000000007",
        ]);
        assert_eq!(leader_of(&children), Some("_c_a9-latch-0000000003"));
        assert_eq!(leader_of(&c(&["x", "latch-12345678x0"])), None);
        assert_eq!(sequence("_c_a9-latch-0000000003"), Some(3));
        assert_eq!(sequence("short"), None);
    }

    #[test]
    fn a_lease_holds_for_two_thirds_of_the_session_timeout_after_the_ping_was_sent() {
        let t = Duration::from_secs(6);
        let sent = Instant::now();
        assert!(lease_holds(sent + Duration::from_millis(3999), sent, t));
        assert!(!lease_holds(sent + Duration::from_secs(4), sent, t));
        // A ping sent earlier that is answered late renews from when it was sent.
        let lease = Lease::new(t);
        let later = lease.base + Duration::from_secs(10);
        assert!(!lease.holds(later));
        lease.renewed(lease.base + Duration::from_secs(7));
        assert!(lease.holds(later));
        // An older ping answered after a newer one does not move the lease back.
        lease.renewed(lease.base + Duration::from_secs(1));
        assert!(lease.holds(later));
        assert_eq!(lease.lapses_at(), lease.base + Duration::from_secs(11));
    }

    #[test]
    fn a_master_tells_as_leader_whom_the_election_names() {
        let info = |name: &str, port: u16| MasterInfo {
            name: name.into(),
            mesh: SocketAddr::from(([127, 0, 0, 1], port)),
            bootstrap: SocketAddr::from(([127, 0, 0, 1], port + 1)),
            api: SocketAddr::from(([127, 0, 0, 1], port + 2)),
        };
        let me = SocketAddr::from(([127, 0, 0, 1], 7000));
        assert_eq!(
            leader_as_seen(None, me, None),
            Some((me, true)),
            "a lone master"
        );
        let m1_first = [info("m1", 7000), info("m2", 7100)];
        assert_eq!(
            leader_as_seen(Some("m1"), me, Some(&m1_first)),
            Some((me, true))
        );
        // m1, paused and resumed, finds m2 first: it tells m2, not itself.
        let m2_first = [info("m2", 7100), info("m1", 7000)];
        assert_eq!(
            leader_as_seen(Some("m1"), me, Some(&m2_first)),
            Some((m2_first[0].mesh, false))
        );
        assert_eq!(
            leader_as_seen(Some("m1"), me, Some(&[])),
            None,
            "none named"
        );
    }

    #[test]
    fn the_next_term_is_above_both_the_stored_one_and_the_keys_version() {
        assert_eq!(next_term(b"1", 1), 2);
        // Restored: the key written anew (version 1) keeps the last term, 7.
        assert_eq!(next_term(b"7", 1), 8);
        // Written by an earlier version, whose term was the version.
        assert_eq!(next_term(b"", 4), 5);
        assert_eq!(next_term(b"not a number", 3), 4);
    }

    #[tokio::test]
    async fn a_restored_store_goes_on_from_the_last_term() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        store
            .apply(vec![Change::put(Table::Meta, META_TERM, b"7".to_vec())])
            .await
            .unwrap();
        let t = take_term(store.as_ref()).await.unwrap();
        assert_eq!(
            t,
            Term {
                number: 8,
                version: 2
            }
        );
        let fenced = FencedStore::new(store.clone(), t, Lease::new(Duration::from_secs(60)));
        fenced
            .apply(vec![Change::put(Table::Config, "a", b"1".to_vec())])
            .await
            .expect("the check is of the version written");
    }

    #[tokio::test]
    async fn terms_increase_and_an_older_leaders_writes_fail_once_a_newer_one_took_its_term() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let first = take_term(store.as_ref()).await.unwrap();
        assert_eq!(
            first,
            Term {
                number: 1,
                version: 1
            }
        );
        let old = FencedStore::new(store.clone(), first, Lease::new(Duration::from_secs(60)));
        old.apply(vec![Change::put(Table::Config, "a", b"1".to_vec())])
            .await
            .unwrap();
        let second = take_term(store.as_ref()).await.unwrap();
        assert_eq!(
            second,
            Term {
                number: 2,
                version: 2
            }
        );
        let new = FencedStore::new(store.clone(), second, Lease::new(Duration::from_secs(60)));
        let e = old
            .apply(vec![Change::put(Table::Config, "a", b"old".to_vec())])
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Conflict { key, .. } if key == META_TERM),
            "{e}"
        );
        // The memory store closes on the conflict, as every backend does; what the newer
        // leader wrote before stands, and the older one's write is not there.
        assert_eq!(
            store.get(Table::Config, "a").await.unwrap().unwrap().value,
            b"1"
        );
        drop(new);
    }

    #[tokio::test]
    async fn a_store_whose_lease_lapsed_writes_nothing_and_says_it_is_closed() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let term = take_term(store.as_ref()).await.unwrap();
        let lease = Lease::new(Duration::from_millis(300));
        let fenced = FencedStore::new(store.clone(), term, lease.clone());
        assert!(fenced.may_act());
        fenced
            .apply(vec![Change::put(Table::Config, "a", b"1".to_vec())])
            .await
            .unwrap();
        // No ping renews it: it lapses after 200 ms, and `closed` says so.
        let why = fenced.closed().await;
        assert!(why.to_string().contains("lease lapsed"), "{why}");
        assert!(!fenced.may_act());
        let e = fenced
            .apply(vec![Change::put(Table::Config, "b", b"2".to_vec())])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("lease lapsed"), "{e}");
        assert_eq!(store.get(Table::Config, "b").await.unwrap(), None);
    }
}
