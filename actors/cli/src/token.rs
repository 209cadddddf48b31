//! `token create`: a join token for an agent, or of role client for a client certificate.

use crate::args::TokenCommand;
use crate::output::{self, JsonLayout};

pub(crate) fn run(command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create { ttl, role, api } = command;
    let answer = api.client()?.call(
        "POST",
        "/v1/tokens",
        Some(serde_json::json!({ "ttl_secs": ttl.as_secs().max(1), "role": role })),
    )?;
    // The token alone, so that `TOKEN=$(actormesh token create)` works.
    output::print(
        api.output,
        JsonLayout::Line,
        answer,
        |v: serde_json::Value| format!("{}\n", v["token"].as_str().unwrap_or_default()),
    )
}
