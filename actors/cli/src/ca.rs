//! `ca init` and `ca issue`: a cluster CA and certificates from it, as files.

use actormesh::transport::pki::CertificateAuthority;
use actormesh::transport::SpiffeId;

use crate::args::CaCommand;

pub(crate) fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init {
            trust_domain,
            out,
            ttl,
        } => {
            let ca = CertificateAuthority::generate(&trust_domain, ttl)?;
            ca.save(&out)?;
            println!(
                "created CA for trust domain {trust_domain} in {} (valid {} days)",
                out.display(),
                ttl.as_secs() / 86400
            );
        }
        CaCommand::Issue {
            ca,
            identity,
            out,
            ttl,
        } => {
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
