//! The `actormesh` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use actormesh::cli::parse_duration;
use actormesh::transport::pki::CertificateAuthority;
use actormesh::transport::SpiffeId;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "actormesh",
    version,
    about = "An actor runtime whose cluster is made of actors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Cluster certificate authority: create one, issue certificates.
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create a cluster CA: writes ca.pem and ca-key.pem (mode 0600) into --out.
    Init {
        /// Trust domain of the cluster, e.g. cluster.local.
        #[arg(long)]
        trust_domain: String,
        /// Directory to create the CA in.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime of the CA certificate (s, m, h or d).
        #[arg(long, value_parser = parse_duration, default_value = "3650d")]
        ttl: Duration,
    },
    /// Issue a certificate for a SPIFFE identity: writes cert.pem, key.pem (0600), ca.pem.
    Issue {
        /// Directory of the CA (made by `ca init`).
        #[arg(long)]
        ca: PathBuf,
        /// Identity, e.g. spiffe://cluster.local/node/n1.
        #[arg(long)]
        identity: String,
        /// Directory to write the certificate and key to.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime of the certificate (s, m, h or d).
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        ttl: Duration,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ca(CaCommand::Init {
            trust_domain,
            out,
            ttl,
        }) => {
            let ca = CertificateAuthority::generate(&trust_domain, ttl)?;
            ca.save(&out)?;
            println!(
                "created CA for trust domain {trust_domain} in {} (valid {} days)",
                out.display(),
                ttl.as_secs() / 86400
            );
        }
        Command::Ca(CaCommand::Issue {
            ca,
            identity,
            out,
            ttl,
        }) => {
            let ca = CertificateAuthority::load(&ca)?;
            let id = SpiffeId::parse(&identity)?;
            let cert = ca.issue(&id, ttl)?;
            cert.save(&out)?;
            println!(
                "issued {id} into {} (valid {}s)",
                out.display(),
                ttl.as_secs()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    actormesh::cli::init_logging();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
