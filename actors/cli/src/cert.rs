//! `cert issue --client`: a client identity from a running master (`ca issue` is for offline
//! CA directories); `cert revoke --client`: every node refuses it.

use actormesh_master::core::ClientRevocation;

use crate::args::CertCommand;
use crate::output::{self, JsonLayout};

pub(crate) fn run(command: CertCommand) -> anyhow::Result<()> {
    let (client, token, join, out) = match command {
        CertCommand::Issue {
            client,
            token,
            join,
            out,
        } => (client, token, join, out),
        CertCommand::Revoke { client, api } => {
            let answer = api.client()?.call(
                "POST",
                "/v1/revocations",
                Some(serde_json::json!({ "client": client })),
            )?;
            return output::print(
                api.output,
                JsonLayout::Line,
                answer,
                |r: ClientRevocation| {
                    let left = std::time::Duration::from_millis(r.until_ms).saturating_sub(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default(),
                    );
                    format!(
                    "revoked {}: every node refuses it from the next push, for {}s (until its certificates have expired)\n",
                    r.identity,
                    left.as_secs()
                )
                },
            );
        }
    };
    let issued = actix::System::new()
        .block_on(async { actormesh::client::issue(join, &token, &client, &out).await })?;
    let expires = issued
        .credentials
        .not_after()
        .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
        .map(|d| format!(" (valid {}s)", d.as_secs()))
        .unwrap_or_default();
    println!("issued {} into {}{expires}", issued.identity, out.display());
    Ok(())
}
