//! The ZooKeeper state store against a real three-server ensemble on loopback (Debian's
//! `zookeeper`, which the test command installs): the contract every store keeps, values
//! larger than ZooKeeper's 1 MiB limit, the ACLs, and the errors of a bad address. The
//! tests share one ensemble and each works under a chroot of its own.

use std::sync::OnceLock;
use std::time::Duration;

use actormesh_integration::zk::Ensemble;
use actormesh_master::state::zk::{ZkAddress, ZkConfig};
use actormesh_master::state::{contract, Change, StateStore, StoreError, Table, ZkStore};

fn ensemble() -> &'static Ensemble {
    static E: OnceLock<Ensemble> = OnceLock::new();
    E.get_or_init(|| {
        assert!(
            Ensemble::available(),
            "ZooKeeper is not installed: the test command installs Debian's zookeeper package"
        );
        let dir = std::env::temp_dir().join(format!("am-zk-store-{}", std::process::id()));
        Ensemble::start(&dir, 3).expect("a three-server ensemble")
    })
}

fn config(chroot: &str, auth: &str) -> ZkConfig {
    ZkConfig {
        address: ZkAddress::parse(&format!("{}{chroot}", ensemble().connect_string())).unwrap(),
        auth: auth.to_string(),
        session_timeout: Duration::from_secs(4),
    }
}

async fn store(chroot: &str) -> ZkStore {
    ZkStore::open(config(chroot, "am:secret")).await.unwrap()
}

#[tokio::test]
async fn the_zookeeper_store_keeps_the_store_contract() {
    contract::batches_are_atomic_and_versioned(&store("/contract/a").await).await;
    contract::a_failed_batch_closes_the_store(&store("/contract/b").await).await;
    contract::checks_and_deletes_honour_versions(&store("/contract/c").await).await;
}

#[tokio::test]
async fn values_over_the_one_mib_limit_are_chunked_and_survive_a_reopen() {
    let s = store("/big").await;
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let medium: Vec<u8> = vec![7; 300 * 1024];
    // One batch larger than a ZooKeeper request may be: it still commits atomically.
    s.apply(vec![
        Change::put(Table::Meta, "big", big.clone()),
        Change::put(Table::Config, "deployment/default/m1", medium.clone()),
        Change::put(Table::Config, "deployment/default/m2", medium.clone()),
        Change::put(Table::Config, "deployment/default/m3", medium.clone()),
        Change::put(Table::Config, "small", b"s".to_vec()),
    ])
    .await
    .unwrap();
    let got = s.get(Table::Meta, "big").await.unwrap().unwrap();
    assert_eq!((got.value.len(), got.version), (big.len(), 1));
    assert_eq!(got.value, big);
    let listed = s.list(Table::Config).await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "deployment/default/m1",
            "deployment/default/m2",
            "deployment/default/m3",
            "small"
        ]
    );
    assert!(listed[..3].iter().all(|(_, v)| v.value == medium));
    // Replaced by a small value: version 2, and read back after a reopen.
    s.apply(vec![Change::put(Table::Meta, "big", b"now small".to_vec())])
        .await
        .unwrap();
    drop(s);
    let s = store("/big").await;
    let got = s.get(Table::Meta, "big").await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.version), (&b"now small"[..], 2));
    // The replaced chunks are gone: only the medium values' chunks are left, if any.
    let raw = zookeeper_client::Client::connector()
        .with_auth("digest", b"am:secret")
        .connect(&ensemble().connect_string())
        .await
        .unwrap();
    let chunks = raw.list_children("/big/chunks").await.unwrap();
    assert!(
        chunks.iter().all(|c| c.starts_with("config.")),
        "{chunks:?}"
    );
}

#[tokio::test]
async fn other_zookeeper_users_can_neither_read_nor_open_the_state() {
    let s = store("/acl").await;
    s.apply(vec![Change::put(
        Table::Meta,
        "ca_key",
        b"PRIVATE".to_vec(),
    )])
    .await
    .unwrap();
    for auth in [Some(&b"mallory:guess"[..]), None] {
        let mut c = zookeeper_client::Client::connector();
        if let Some(a) = auth {
            c = c.with_auth("digest", a);
        }
        let raw = c.connect(&ensemble().connect_string()).await.unwrap();
        let read = raw.get_data("/acl/tables/meta/ca_key").await;
        assert_eq!(
            read.unwrap_err(),
            zookeeper_client::Error::NoAuth,
            "{auth:?}"
        );
        let write = raw.set_data("/acl/txn", b"x", None).await;
        assert_eq!(write.unwrap_err(), zookeeper_client::Error::NoAuth);
    }
    let e = ZkStore::open(config("/acl", "mallory:guess"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("belongs to other ZooKeeper credentials"),
        "{e}"
    );
}

#[tokio::test]
async fn a_bad_address_or_chroot_is_a_clear_error_at_open() {
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = ZkConfig {
        address: ZkAddress::parse(&format!("127.0.0.1:{port}/actormesh")).unwrap(),
        auth: "am:secret".into(),
        session_timeout: Duration::from_secs(1),
    };
    let started = std::time::Instant::now();
    let e = ZkStore::open(cfg).await.unwrap_err();
    assert!(matches!(e, StoreError::Open { .. }), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let e = ZkAddress::parse("127.0.0.1:2181").unwrap_err();
    assert!(e.to_string().contains("no chroot"), "{e}");
}
