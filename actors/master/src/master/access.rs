//! The operator API's access: its tokens (checked for every request), and the audit log
//! of the changes made through it.

use std::time::{Duration, SystemTime};

use actix::prelude::*;

use super::Master;
use crate::access::{AccessRefusal, ApiTokenView, AuditEntry, Caller, CreatedApiToken, Scope};
use crate::core::OperatorError;

/// Makes an API token for a holder with a scope.
#[derive(Debug, Message)]
#[rtype(result = "Result<CreatedApiToken, OperatorError>")]
pub struct CreateApiToken {
    /// Who holds it.
    pub holder: String,
    /// What it allows.
    pub scope: Scope,
    /// How long it works (`None`: until revoked).
    pub ttl: Option<Duration>,
}

impl Handler<CreateApiToken> for Master {
    type Result = ResponseFuture<Result<CreatedApiToken, OperatorError>>;
    fn handle(&mut self, m: CreateApiToken, ctx: &mut Context<Self>) -> Self::Result {
        let step = self
            .core
            .create_api_token(&m.holder, m.scope, m.ttl, SystemTime::now());
        self.answer(step, ctx, |e| {
            OperatorError::Unavailable(format!("cannot record the token: {e}"))
        })
    }
}

/// Revokes an API token by id.
#[derive(Debug, Message)]
#[rtype(result = "Result<ApiTokenView, OperatorError>")]
pub struct RevokeApiToken(pub String);

impl Handler<RevokeApiToken> for Master {
    type Result = ResponseFuture<Result<ApiTokenView, OperatorError>>;
    fn handle(&mut self, m: RevokeApiToken, ctx: &mut Context<Self>) -> Self::Result {
        let step = self.core.revoke_api_token(&m.0, SystemTime::now());
        self.answer(step, ctx, |e| {
            OperatorError::Unavailable(format!("cannot record the revocation: {e}"))
        })
    }
}

/// Who presents an API token.
#[derive(Debug, Message)]
#[rtype(result = "Result<Caller, AccessRefusal>")]
pub struct CheckApiToken(pub String);

impl Handler<CheckApiToken> for Master {
    type Result = Result<Caller, AccessRefusal>;
    fn handle(&mut self, m: CheckApiToken, _: &mut Context<Self>) -> Self::Result {
        self.core.check_api_token(&m.0, SystemTime::now())
    }
}

/// Records a change made through the API.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RecordAudit {
    /// Who made it.
    pub caller: Caller,
    /// `METHOD /path`.
    pub what: String,
    /// The object it named, if the request said.
    pub object: Option<String>,
    /// The status answered.
    pub status: u16,
}

impl Handler<RecordAudit> for Master {
    type Result = ();
    fn handle(&mut self, m: RecordAudit, ctx: &mut Context<Self>) {
        let step = self
            .core
            .record_audit(&m.caller, m.what, m.object, m.status, SystemTime::now());
        self.carry_out(step.effects, ctx);
    }
}

/// Every API token (no secrets).
#[derive(Debug, Message)]
#[rtype(result = "Vec<ApiTokenView>")]
pub struct ListApiTokens;

impl Handler<ListApiTokens> for Master {
    type Result = MessageResult<ListApiTokens>;
    fn handle(&mut self, _: ListApiTokens, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.api_tokens())
    }
}

/// The last entries of the audit log, oldest first.
#[derive(Debug, Message)]
#[rtype(result = "Vec<AuditEntry>")]
pub struct ListAudit(pub usize);

impl Handler<ListAudit> for Master {
    type Result = MessageResult<ListAudit>;
    fn handle(&mut self, m: ListAudit, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.audit(m.0))
    }
}
