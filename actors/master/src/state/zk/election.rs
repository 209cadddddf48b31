//! Leader election among the masters of one ZooKeeper store (see [`crate::ha`]): a
//! candidacy is an ephemeral sequential znode under `/election` holding the master's
//! [`MasterInfo`], made through `zookeeper-client`'s lock recipe, which also finds its own
//! znode again when the connection is lost during the create (the name carries a unique
//! prefix, as Apache Curator's do). Its session's end deletes it.

use std::time::Instant;

use tokio::sync::watch;
use tracing::{debug, warn};
use zookeeper_client as zk;

use super::io;
use crate::ha::{Lease, MasterInfo};
use crate::state::StoreError;

/// Where the candidacies are.
pub(super) const ELECTION: &str = "/election";
/// The lock name in each candidacy's znode name.
const LATCH: &str = "latch-";

/// This master's leadership: the candidacy that won. Dropping it deletes the znode.
#[derive(Debug)]
pub struct Leadership {
    _lock: zk::OwnedLockClient,
}

/// Stands for election with `info` and waits until this master leads.
pub async fn campaign(client: &zk::Client, info: &MasterInfo) -> Result<Leadership, StoreError> {
    let data = serde_json::to_vec(info).map_err(|e| io("campaign", e))?;
    let prefix = zk::LockPrefix::new_curator(ELECTION, LATCH).map_err(|e| io("campaign", e))?;
    let lock = client
        .lock(prefix, &data, zk::Acls::creator_all())
        .await
        .map_err(|e| io("campaign", e))?;
    Ok(Leadership {
        _lock: lock.into_owned(),
    })
}

/// Every master standing, in election order (the leader first).
pub async fn members(client: &zk::Client) -> Result<Vec<MasterInfo>, StoreError> {
    let children = client
        .list_children(ELECTION)
        .await
        .map_err(|e| io("list the masters", e))?;
    infos(client, children).await
}

/// The masters of the candidacy znodes `children`, in election order (the leader first).
async fn infos(
    client: &zk::Client,
    mut children: Vec<String>,
) -> Result<Vec<MasterInfo>, StoreError> {
    children.retain(|c| crate::ha::sequence(c).is_some());
    children.sort_by_key(|c| crate::ha::sequence(c));
    let mut out = Vec::with_capacity(children.len());
    for c in children {
        match client.get_data(&format!("{ELECTION}/{c}")).await {
            Ok((data, _)) => match serde_json::from_slice(&data) {
                Ok(info) => out.push(info),
                Err(e) => warn!(znode = %c, error = %e, "an election znode holds no master info"),
            },
            // It ended between the listing and the read.
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(io("read a master's info", e)),
        }
    }
    Ok(out)
}

/// The masters standing, the leader first, as they change: a task reads the election and
/// watches it. Empty while none stands (or ZooKeeper cannot be read).
pub fn watch_masters(client: zk::Client) -> watch::Receiver<Vec<MasterInfo>> {
    let (tx, rx) = watch::channel(Vec::new());
    tokio::spawn(async move {
        loop {
            let read = match client.list_and_watch_children(ELECTION).await {
                Ok((children, watcher)) => infos(&client, children)
                    .await
                    .map(|masters| (masters, watcher)),
                Err(e) => Err(io("read the election", e)),
            };
            let (masters, watcher) = match read {
                Ok(got) => got,
                Err(e) => {
                    debug!(error = %e, "cannot read the election; trying again");
                    tx.send_replace(Vec::new());
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            };
            // A leader whose znode ended between the listing and the read is not among
            // them: the next, which leads next, comes first, and the watch fires.
            tx.send_replace(masters);
            tokio::select! {
                _ = watcher.changed() => {}
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

/// Renews `lease` while this master leads: a request every [`Lease::ping_every`], the
/// lease taking the time each answered one was sent.
pub async fn keep_lease(client: zk::Client, lease: std::sync::Arc<Lease>) {
    loop {
        let sent = Instant::now();
        match client.check_stat("/").await {
            Ok(_) => lease.renewed(sent),
            Err(e) => debug!(error = %e, "ZooKeeper did not answer the lease ping"),
        }
        tokio::time::sleep(lease.ping_every()).await;
    }
}
