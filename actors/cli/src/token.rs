//! `token create`: a join token for an agent, or of role client for a client certificate,
//! or with `--api` an operator API token with a scope and a holder; `token revoke`.

use actormesh_master::access::{ApiTokenView, CreatedApiToken};

use crate::args::TokenCommand;
use crate::output::{self, JsonLayout};

pub(crate) fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            ttl,
            role,
            scope,
            holder,
            api,
        } => {
            let api_token = match (role.as_deref(), &scope) {
                (Some("api"), None) => anyhow::bail!(
                    "--role api needs --scope (viewer, operator or admin) and --holder"
                ),
                (Some("api") | None, Some(_)) => true,
                (Some(r), Some(_)) => anyhow::bail!(
                    "--scope is for API tokens; a join token of role {r} has none (drop --role, or --scope)"
                ),
                (_, None) => false,
            };
            let role = role.unwrap_or_else(|| "agent".to_string());
            if api_token {
                let answer = api.client()?.call(
                    "POST",
                    "/v1/api-tokens",
                    Some(serde_json::json!({
                        "holder": holder,
                        "scope": scope,
                        "ttl_secs": ttl.as_secs().max(1),
                    })),
                )?;
                return output::print(
                    api.output,
                    JsonLayout::Line,
                    answer,
                    |t: CreatedApiToken| format!("{}\n", t.token),
                );
            }
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
        TokenCommand::Revoke { id, api } => {
            let answer = api
                .client()?
                .call("DELETE", &format!("/v1/api-tokens/{id}"), None)?;
            output::print(api.output, JsonLayout::Line, answer, |v: ApiTokenView| {
                format!("revoked API token {} of {}\n", v.id, v.holder)
            })
        }
    }
}
