//! A master and agents inside the test process, on loopback QUIC with ports chosen by the
//! OS: the setup the in-process tests share.
#![allow(dead_code)]

use std::time::Duration;

use actormesh::agent::{self, AgentConfig};
use actormesh_master::{self as master, MasterConfig};

/// A master's configuration with its data in `dir/master` and every port chosen by the OS;
/// `fast` shortens failure detection (100 ms heartbeats, Unreachable after 1 s).
pub fn master_config(dir: &std::path::Path, fast: bool) -> MasterConfig {
    let mut config = MasterConfig::new(dir.join("master"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.bootstrap = "127.0.0.1:0".parse().unwrap();
    config.api = "127.0.0.1:0".parse().unwrap();
    // These tests register frameworks from their agents' nodes: granted here, as an
    // operator would with --framework-role (by default only client identities may).
    config.framework_grants = vec!["spiffe://cluster.local/node/*=*".parse().unwrap()];
    if fast {
        config.detector.heartbeat_interval = Duration::from_millis(100);
        config.detector.unreachable_after = Duration::from_secs(1);
    }
    config
}

/// The configuration of agent `name` joining `m` with a fresh token, its data in
/// `dir/name`; resources detected, no hosted types and no reservations until set.
pub async fn agent_config(
    m: &master::MasterHandle,
    dir: &std::path::Path,
    name: &str,
) -> AgentConfig {
    let token = m.agent_token(Duration::from_secs(60)).await.unwrap();
    // The builder's defaults are what these tests assume: listen on 127.0.0.1:0, detect
    // resources, no attributes, types or reservations.
    AgentConfig::new(m.bootstrap, dir.join(name))
        .token(token)
        .name(name)
}

/// Starts an agent from `config`.
pub async fn start_agent(config: AgentConfig) -> agent::AgentHandle {
    agent::start(config).await.unwrap()
}
