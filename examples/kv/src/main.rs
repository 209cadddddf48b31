//! `kv`: a key-value service that is its own agent, and its client.
//!
//! ```text
//! kv agent --join 127.0.0.1:7001 --token am1.… --data-dir kv-agent   # serve the kv type
//! kv put greeting hello                                             # call it by name
//! kv get greeting
//! kv delete greeting
//! ```
//!
//! The agent joins the cluster and tells the master it hosts the actor type `kv`; a
//! Deployment with `spec.actor: kv` then runs instances of it here. The client commands
//! call the service `default/kv` by name with the client identity `actormesh dev` writes,
//! each key hashed to pick the instance (under the `hash` balancer, one key always reaches
//! the same instance while it runs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use actormesh::agent::{self, ActorHost, AgentConfig};
use actormesh::mesh::CallOptions;
use actormesh::RemoteMessage;
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kv::{Delete, Get, Kv, Put, ACTOR_TYPE};

#[derive(Parser, Debug)]
#[command(about = "A key-value service on actormesh: serve it as an agent, or call it by name")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Join the cluster as an agent that hosts the actor type `kv`, until Ctrl-C.
    Agent {
        /// The master's bootstrap address (`actormesh dev` prints it).
        #[arg(long)]
        join: SocketAddr,
        /// A join token (`actormesh token create`); only needed the first time.
        #[arg(long, env = "ACTORMESH_JOIN_TOKEN")]
        token: Option<String>,
        /// Where the agent keeps its key, certificate and identity.
        #[arg(long, default_value = "kv-agent")]
        data_dir: PathBuf,
        /// The node's name (default: made from the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Set a key; prints the value it had.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a key's value.
    Get {
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a key; prints the value it had.
    Delete {
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(clap::Args, Debug)]
struct ClientArgs {
    /// The client identity to call with (`actormesh dev` writes one into
    /// <data-dir>/client; `actormesh cert issue --client` makes one for any cluster).
    #[arg(
        long,
        env = "ACTORMESH_IDENTITY",
        default_value = "actormesh-dev/client"
    )]
    identity: PathBuf,
    /// The service to call: `namespace/name`.
    #[arg(long, default_value = "default/kv")]
    service: String,
}

async fn serve(
    join: SocketAddr,
    token: Option<String>,
    data_dir: PathBuf,
    name: Option<String>,
) -> anyhow::Result<()> {
    let mut config = AgentConfig::new(join, data_dir)
        .token(token)
        .host(ActorHost::new().with(ACTOR_TYPE, Kv::default));
    if let Some(name) = name {
        config = config.name(name);
    }
    let agent = agent::start(config).await?;
    println!(
        "kv agent {} joined the cluster at {join}, hosting the actor type {ACTOR_TYPE:?}",
        agent.agent_id
    );
    agent.run_until_stopped().await?;
    Ok(())
}

/// Calls the service with `msg`, its instance picked by `key`, and prints the reply.
async fn call<M>(client: ClientArgs, key: &str, msg: M) -> anyhow::Result<()>
where
    M: RemoteMessage<Result = Option<String>>,
{
    let mesh = actormesh::client::connect(&client.identity, Duration::from_secs(5)).await?;
    let service = mesh.service(&client.service)?;
    let reply = service
        .with_options(CallOptions::default().hash_key(key))
        .ask(msg)
        .await;
    mesh.node().shutdown();
    let value = reply.with_context(|| format!("calling {}", client.service))?;
    println!("{}", value.as_deref().unwrap_or("(none)"));
    Ok(())
}

/// Runs the command; an error is printed as one line with its causes.
#[actix::main]
async fn main() -> ExitCode {
    let done = match Cli::parse().command {
        Command::Agent {
            join,
            token,
            data_dir,
            name,
        } => serve(join, token, data_dir, name).await,
        Command::Put { key, value, client } => call(client, &key.clone(), Put { key, value }).await,
        Command::Get { key, client } => call(client, &key.clone(), Get { key }).await,
        Command::Delete { key, client } => call(client, &key.clone(), Delete { key }).await,
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
