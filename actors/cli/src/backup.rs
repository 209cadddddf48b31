//! `actormesh backup` and `actormesh restore`: the whole master state, CA included, from
//! a running master (either store) to a file, and from a file into a new store (either),
//! for a master to start on.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use actormesh_master as master;
use master::state::backup;
use master::state::{RedbStore, StateStore, ZkStore};

use crate::args::{BackupArgs, RestoreArgs};

pub(crate) fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let bytes = args.api.client()?.get_bytes("/v1/backup")?;
    // Checked before it is kept: a backup that cannot be restored is no backup.
    let rows = backup::decode(&bytes).context("the master's answer")?;
    write_new_private(&args.out, &bytes)?;
    println!(
        "backed up {} keys ({} bytes, the CA key included) to {}; keep it private",
        rows.len(),
        bytes.len(),
        args.out.display()
    );
    Ok(())
}

/// Writes `bytes` to a new file `path`, mode 0600: an existing file is not overwritten.
fn write_new_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| {
        format!(
            "cannot create {} (a backup never overwrites a file)",
            path.display()
        )
    })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub(crate) fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.from)
        .with_context(|| format!("cannot read {}", args.from.display()))?;
    let rows = backup::decode(&bytes).with_context(|| format!("{}", args.from.display()))?;
    let zk = crate::serve::zk_config(&args.zk)?;
    anyhow::ensure!(
        zk.is_none() || args.data_dir.is_none(),
        "restore goes into one store: give --data-dir or --zk, not both"
    );
    let data_dir = args.data_dir.clone();
    actix::System::new().block_on(async move {
        let (store, into): (Arc<dyn StateStore>, String) = match zk {
            Some(zk) => {
                let shown = zk.address.shown();
                (Arc::new(ZkStore::open(zk).await?), format!("ZooKeeper {shown}"))
            }
            None => {
                let dir = data_dir.ok_or_else(|| {
                    anyhow::anyhow!("restore needs --data-dir DIR (a new master data dir) or --zk SERVERS/CHROOT")
                })?;
                let shown = dir.join("state.redb").display().to_string();
                (Arc::new(RedbStore::open(&dir).await?), shown)
            }
        };
        let n = backup::restore(store.as_ref(), rows).await?;
        println!("restored {n} keys into {into}; start a master on it");
        anyhow::Ok(())
    })
}
