//! `actormesh master --zk`: a master among several on one ZooKeeper store. It stands for
//! election; while another leads it is a standby whose API redirects to the leader and
//! whose bootstrap port tells where the leader is and forwards joins to it; once it leads it takes the next term, keeps its lease on the session, and starts as a
//! master on the store fenced by that term (see `actormesh_master::ha`).

use std::sync::Arc;

use actormesh_master as master;
use master::ha::{self, FencedStore, Lease, MasterInfo};
use master::state::zk::election;
use master::state::{StateStore, ZkConfig, ZkStore};
use tracing::info;

/// A master's name when `--name` is not given: the host's name and the API port, which
/// no other master of the host can have.
pub fn default_name(api: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>();
    let host = if host.is_empty() {
        "master".into()
    } else {
        host
    };
    format!("{host}-{}", api.port())
}

/// Waits, three seconds at most, until the UDP port `addr` can be bound: a closed QUIC
/// endpoint lets its socket go a moment after it is closed. (If it stays taken, the
/// master's start says so.)
async fn wait_until_free(addr: std::net::SocketAddr) {
    for _ in 0..150 {
        if std::net::UdpSocket::bind(addr).is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until this master leads, then starts it. Returns the master and the leadership,
/// to hold for as long as the master runs.
pub async fn lead(
    mut config: master::MasterConfig,
    zk: ZkConfig,
    name: String,
) -> anyhow::Result<(master::MasterHandle, election::Leadership)> {
    anyhow::ensure!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
        "--name {name:?}: a master's name is letters, digits, '-', '.' and '_' (it is part of its identity, spiffe://<td>/master/<name>)"
    );
    let session_timeout = zk.session_timeout;
    let store = ZkStore::open(zk).await?;
    let client = store.client();
    let info = MasterInfo {
        name: name.clone(),
        mesh: config.listen,
        bootstrap: config.bootstrap,
        api: config.api,
    };
    let masters = election::watch_masters(client.clone());
    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for the API on {}: {e}", config.api))?;
    let (_, standby) = master::api::serve_standby(listener, name.clone(), masters.clone())?;
    let store: Arc<dyn StateStore> = Arc::new(store);
    let standby_bootstrap =
        master::serve_standby_bootstrap(&config, name.clone(), store.clone(), masters.clone());
    println!("master standby: {name}, standing for election");
    let (serving, at) = (standby_bootstrap.serving(), config.bootstrap);
    let said = tokio::spawn(async move {
        serving.await;
        println!("master standby bootstrap: {at}, telling where the leader is and forwarding joins to it");
    });
    let leadership = election::campaign(&client, &info).await?;
    // The standby's API gives its address back to the master's own; its bootstrap port
    // is handed over, so it answers all along (a standby's that did not serve yet is
    // closed, and the master binds the port).
    standby.stop().await;
    said.abort();
    match standby_bootstrap.hand_over().await {
        Some(server) => config.bootstrap_server = Some(Arc::new(server)),
        None => wait_until_free(config.bootstrap).await,
    }
    let term = ha::take_term(store.as_ref()).await?;
    let lease = Lease::new(session_timeout);
    tokio::spawn(election::keep_lease(client, lease.clone()));
    info!(%name, term = term.number, "leading");
    println!("master leading: {name}, term {}", term.number);
    config.name = Some(name);
    config.term = Some(term.number);
    config.masters = Some(masters);
    let fenced = Arc::new(FencedStore::new(store, term, lease));
    let m = master::start_with_store(config, fenced).await?;
    Ok((m, leadership))
}
