//! hello: a greeter actor served by one process and called by another, over QUIC with
//! mutual TLS.
//!
//! ```text
//! hello serve --certs certs/server --listen 127.0.0.1:7100
//! hello call  --certs certs/client --to 127.0.0.1:7100 --name you
//! hello demo              # makes throwaway certs, starts `serve`, calls it, exits
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use actormesh::prelude::*;
use actormesh::transport::pki::{CertificateAuthority, Credentials};
use actormesh::transport::SpiffeId;
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Asks the greeter to greet someone.
#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "hello.Greet/v1", reply = String)]
struct Greet {
    name: String,
}

/// How many greetings the greeter has given.
#[derive(Debug, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "hello.Count/v1", reply = u64)]
struct Count;

struct Greeter {
    node: String,
    greeted: u64,
}

impl Actor for Greeter {
    type Context = Context<Self>;
}

#[actormesh::handler]
impl Handler<Greet> for Greeter {
    type Result = String;
    fn handle(&mut self, m: Greet, _: &mut Context<Self>) -> String {
        self.greeted += 1;
        format!("Hello, {}! (from {})", m.name, self.node)
    }
}

#[actormesh::handler]
impl Handler<Count> for Greeter {
    type Result = u64;
    fn handle(&mut self, _: Count, _: &mut Context<Self>) -> u64 {
        self.greeted
    }
}

#[derive(Parser, Debug)]
#[command(about = "actormesh hello: one process serves a greeter, another calls it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Host the greeter actor until stopped.
    Serve {
        /// Directory with cert.pem, key.pem, ca.pem (from `actormesh ca issue`).
        #[arg(long)]
        certs: PathBuf,
        /// UDP address to listen on.
        #[arg(long, default_value = "127.0.0.1:7100")]
        listen: SocketAddr,
    },
    /// Greet through a remote greeter and print the reply.
    Call {
        /// Directory with cert.pem, key.pem, ca.pem (from `actormesh ca issue`).
        #[arg(long)]
        certs: PathBuf,
        /// Address the greeter's node listens on.
        #[arg(long, default_value = "127.0.0.1:7100")]
        to: SocketAddr,
        /// Who to greet.
        #[arg(long, default_value = "world")]
        name: String,
    },
    /// Make throwaway certificates, start `serve` as a second process, call it, exit.
    Demo,
}

fn main() -> anyhow::Result<()> {
    // A library leaves logging to the program: this one logs warnings to stderr, or what
    // RUST_LOG asks for.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let sys = actix::System::new();
    sys.block_on(async {
        match Cli::parse().command {
            Command::Serve { certs, listen } => serve(&certs, listen).await,
            Command::Call { certs, to, name } => call(&certs, to, &name).await,
            Command::Demo => demo().await,
        }
    })
}

async fn serve(certs: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let creds = Credentials::load(certs)?;
    let node = Node::start(NodeConfig::new(listen), &creds)?;
    let id = node.identity().to_string();
    node.spawn_with(
        "greeter",
        SpawnOptions {
            restart: RestartPolicy::on_failure(),
            ..Default::default()
        },
        move || Greeter {
            node: id.clone(),
            greeted: 0,
        },
    )?;
    println!(
        "serving greeter as {} on {}",
        node.identity(),
        node.local_addr()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

async fn call(certs: &Path, to: SocketAddr, name: &str) -> anyhow::Result<()> {
    let creds = Credentials::load(certs)?;
    let node = Node::start(NodeConfig::new("127.0.0.1:0".parse()?), &creds)?;
    let greeter = node.actor_ref(to, "greeter");
    let reply = greeter
        .ask(Greet {
            name: name.to_string(),
        })
        .await
        .with_context(|| format!("greeting through {to}"))?;
    println!("{reply}");
    let count = greeter.ask(Count).await?;
    println!("the greeter has greeted {count} time(s)");
    Ok(())
}

async fn demo() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("actormesh-hello-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = CertificateAuthority::generate("hello.local", Duration::from_secs(86400))?;
    for who in ["server", "client"] {
        let id = SpiffeId::node("hello.local", who)?;
        ca.issue(&id, Duration::from_secs(3600))?
            .save(&dir.join(who))?;
    }
    println!(
        "certificates for spiffe://hello.local/node/{{server,client}} in {}",
        dir.display()
    );

    let mut server = tokio::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--certs"])
        .arg(dir.join("server"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(server.stdout.take().context("server stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the server did not start within 30 s")??
        .context("the server exited")?;
    println!("server process: {line}");
    let addr: SocketAddr = line.rsplit(' ').next().context("server address")?.parse()?;

    let creds = Credentials::load(&dir.join("client"))?;
    let node = Node::start(NodeConfig::new("127.0.0.1:0".parse()?), &creds)?;
    let greeter = node.actor_ref(addr, "greeter");
    for name in ["Ada", "Grace", "Barbara"] {
        let reply = greeter
            .ask(Greet {
                name: name.to_string(),
            })
            .await?;
        println!("client process: {reply}");
    }
    println!(
        "client process: greeter count = {}",
        greeter.ask(Count).await?
    );
    match node.actor_ref(addr, "nobody").ask(Count).await {
        Err(e) => println!("client process: asking a missing actor gives a typed error: {e}"),
        Ok(v) => println!("client process: unexpected reply {v}"),
    }
    server.kill().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
