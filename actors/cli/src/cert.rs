//! `cert issue --client`: a client identity from a running master (`ca issue` is for offline
//! CA directories).

use crate::args::CertCommand;

pub(crate) fn run(command: CertCommand) -> anyhow::Result<()> {
    let CertCommand::Issue {
        client,
        token,
        join,
        out,
    } = command;
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
