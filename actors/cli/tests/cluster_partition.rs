//! An agent on another (network-namespace) host, cut off by taking its link down: it is
//! Unreachable within the limit and is reconciled when the network heals. Needs root and
//! iproute2 (`scripts/test` installs it when missing); CI runs as root.

mod common;

use std::process::Command;
use std::time::Duration;

use actormesh_master::membership::AgentState;
use common::*;

/// A network namespace joined to the root namespace by a veth pair; removed on drop.
struct Host {
    ns: String,
    veth: String,
    host_ip: String,
    ns_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Host {
    fn create() -> Result<Self, String> {
        let id = std::process::id();
        let subnet = id % 250 + 1;
        let h = Host {
            ns: format!("am{id}"),
            veth: format!("amv{id}"),
            host_ip: format!("10.213.{subnet}.1"),
            ns_ip: format!("10.213.{subnet}.2"),
        };
        let peer = format!("{}p", h.veth);
        ip(&["netns", "add", &h.ns])?;
        ip(&[
            "link", "add", &h.veth, "type", "veth", "peer", "name", &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &h.ns])?;
        ip(&["addr", "add", &format!("{}/30", h.host_ip), "dev", &h.veth])?;
        ip(&["link", "set", &h.veth, "up"])?;
        ip(&[
            "-n",
            &h.ns,
            "addr",
            "add",
            &format!("{}/30", h.ns_ip),
            "dev",
            &peer,
        ])?;
        ip(&["-n", &h.ns, "link", "set", &peer, "up"])?;
        ip(&["-n", &h.ns, "link", "set", "lo", "up"])?;
        Ok(h)
    }

    fn cut(&self, down: bool) {
        ip(&["link", "set", &self.veth, if down { "down" } else { "up" }]).expect("set link");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.veth]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_by_the_network_is_unreachable_then_reconciled() {
    let host = Host::create()
        .expect("network namespaces need root and iproute2 (scripts/test installs it)");
    let dir = temp_dir("partition");
    let mesh = format!("{}:0", host.host_ip).parse().unwrap();
    let mesh = std::net::UdpSocket::bind::<std::net::SocketAddr>(mesh)
        .unwrap()
        .local_addr()
        .unwrap();
    let boot = std::net::UdpSocket::bind(format!("{}:0", host.host_ip))
        .unwrap()
        .local_addr()
        .unwrap();
    let master = Master::start(
        &dir.join("master"),
        mesh,
        boot,
        free_tcp(),
        &[
            "--heartbeat",
            "100ms",
            "--unreachable-after",
            "1s",
            "--gone-after",
            "60s",
        ],
    )
    .await;
    let token = master.token(3600);
    // The agent runs in the other namespace: a separate host as far as the network goes.
    let listen = format!("{}:0", host.ns_ip);
    let join = boot.to_string();
    let data = dir.join("p1");
    let mut a = Proc::spawn_in_netns(
        &host.ns,
        &[
            "agent",
            "--join",
            &join,
            "--token",
            &token,
            "--data-dir",
            data.to_str().unwrap(),
            "--name",
            "p1",
            "--listen",
            &listen,
        ],
    );
    a.line("agent ").await;
    master
        .wait_state("p1", AgentState::Active, Duration::from_secs(10))
        .await;

    host.cut(true);
    let took = master
        .wait_state("p1", AgentState::Unreachable, Duration::from_secs(10))
        .await;
    assert!(
        took < Duration::from_millis(2500),
        "took {took:?} for a 1 s limit"
    );
    host.cut(false);
    master
        .wait_state("p1", AgentState::Active, Duration::from_secs(20))
        .await;
    assert_eq!(tokio::task::block_in_place(|| master.nodes()).len(), 1);
    a.kill().await;
}
