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
            print_join_command,
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
            if print_join_command && role != "agent" {
                anyhow::bail!(
                    "--print-join-command prints an agent's join command; a token of role {role} is used with `actormesh cert issue --token <t> --join <bootstrap>` instead"
                );
            }
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
                |v: serde_json::Value| {
                    let token = v["token"].as_str().unwrap_or_default();
                    if print_join_command {
                        format!("{}\n", join_command(&v, token))
                    } else {
                        format!("{token}\n")
                    }
                },
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

/// `actormesh agent --join <addrs> --token <token>` from a token answer's `join`.
fn join_command(answer: &serde_json::Value, token: &str) -> String {
    let join: Vec<&str> = answer["join"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if join.is_empty() {
        // A master of an earlier version says no addresses.
        return format!("actormesh agent --join <the master's bootstrap address> --token {token}");
    }
    format!("actormesh agent --join {} --token {token}", join.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_join_command_names_every_master_and_the_token() {
        let answer =
            serde_json::json!({"token": "am1.x", "join": ["127.0.0.1:7001", "127.0.0.1:7011"]});
        assert_eq!(
            join_command(&answer, "am1.x"),
            "actormesh agent --join 127.0.0.1:7001,127.0.0.1:7011 --token am1.x"
        );
        let old = serde_json::json!({"token": "am1.x"});
        assert!(join_command(&old, "am1.x").contains("--join <the master's bootstrap address>"));
    }
}
