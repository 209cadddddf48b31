//! `ca init` and `ca issue`: a cluster CA and certificates from it, as files; `ca rotate`
//! and `ca status`: the running cluster's CA rotation, through the API.

use actormesh::transport::pki::CertificateAuthority;
use actormesh::transport::SpiffeId;
use actormesh_master::rotation::{Phase, RotationStatus};

use crate::args::CaCommand;
use crate::output::{self, JsonLayout};

/// What `ca status` and `ca rotate` print for people.
fn describe(s: RotationStatus) -> String {
    let short = |f: &str| f.chars().take(16).collect::<String>();
    let mut out = format!("phase:   {:?}\n", s.phase).to_lowercase();
    out += &format!("current: {}\n", s.current);
    if let Some(next) = &s.next {
        out += &format!("next:    {next}\n");
    }
    out += &format!("signer:  {} (new join tokens pin it)\n", s.signer);
    if s.phase != Phase::Stable {
        out += "agents:\n";
        for a in &s.agents {
            out += &format!(
                "  {:<20} trusts the bundle: {:<3}  certificate from {}\n",
                a.id,
                if a.trusts_bundle { "yes" } else { "no" },
                if a.moved {
                    "the signer".to_string()
                } else {
                    format!("another CA than {}", short(&s.signer))
                },
            );
        }
    }
    for (what, list) in [
        ("the new CA signs once", &s.switch_blockers),
        ("finish waits for", &s.finish_blockers),
    ] {
        if !list.is_empty() {
            out += &format!("{what}:\n");
            for b in list {
                out += &format!("  - {b}\n");
            }
        }
    }
    match s.phase {
        Phase::Adding if s.switch_blockers.is_empty() => {
            out += "next: the new CA signs at the next heartbeat\n"
        }
        Phase::Moving if s.finish_blockers.is_empty() => {
            out += "next: actormesh ca rotate finish\n"
        }
        _ => {}
    }
    out
}

pub(crate) fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Rotate { step, force, api } => {
            let answer = api.client()?.call(
                "POST",
                "/v1/ca/rotation",
                Some(serde_json::json!({ "action": step, "force": force })),
            )?;
            return output::print(api.output, JsonLayout::Pretty, answer, describe);
        }
        CaCommand::Status { api } => {
            let answer = api.client()?.call("GET", "/v1/ca", None)?;
            return output::print(api.output, JsonLayout::Pretty, answer, describe);
        }
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
