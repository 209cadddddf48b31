//! A node process for multi-process tests: hosts a `Sink` named "sink" (restarted on
//! panic), prints `READY <addr>` and runs until killed.

use std::path::PathBuf;
use std::time::Duration;

use actormesh::prelude::*;
use actormesh::transport::pki::Credentials;
use actormesh_integration::actors::Sink;
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Directory with cert.pem, key.pem and ca.pem.
    #[arg(long)]
    certs: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Link idle timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    idle_ms: u64,
}

fn main() -> anyhow::Result<()> {
    actormesh_cli::init_logging();
    let args = Args::parse();
    let sys = actix::System::new();
    sys.block_on(async move {
        let creds = Credentials::load(&args.certs)?;
        let mut config = NodeConfig::new(args.listen);
        config.endpoint.idle_timeout = Duration::from_millis(args.idle_ms);
        config.endpoint.keep_alive = Duration::from_millis(args.idle_ms / 4);
        let node = Node::start(config, &creds)?;
        node.spawn_with(
            "sink",
            SpawnOptions {
                restart: RestartPolicy::on_failure(),
                ..Default::default()
            },
            Sink::default,
        )?;
        println!("READY {}", node.local_addr());
        // Keep the node alive until the process is killed.
        std::future::pending::<()>().await;
        anyhow::Ok(())
    })?;
    Ok(())
}
