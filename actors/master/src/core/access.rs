//! The operator API's tokens and audit log, as steps of the core: made, revoked and
//! recorded here, stored in the Config table (see [`crate::access`]).

use std::time::{Duration, SystemTime};

use super::{ClusterCore, OperatorError, Step};
use crate::access::{AccessRefusal, ApiTokenView, AuditEntry, Caller, CreatedApiToken, Scope};

impl ClusterCore {
    /// Makes an API token for `holder` with `scope`, working for `ttl` (`None`: until
    /// revoked); answered once stored.
    pub fn create_api_token(
        &mut self,
        holder: &str,
        scope: Scope,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Step<Result<CreatedApiToken, OperatorError>> {
        self.step(|core| {
            core.quiet = true;
            let (created, change) = core
                .access
                .create(holder, scope, ttl, now)
                .map_err(OperatorError::Invalid)?;
            core.persist_acknowledged(vec![change]);
            tracing::info!(holder, scope = scope.as_str(), id = %created.view.id, "API token created");
            Ok(created)
        })
    }

    /// Revokes API token `id`; answered once stored.
    pub fn revoke_api_token(
        &mut self,
        id: &str,
        now: SystemTime,
    ) -> Step<Result<ApiTokenView, OperatorError>> {
        self.step(|core| {
            core.quiet = true;
            let (view, change) = core
                .access
                .revoke(id, now)
                .map_err(OperatorError::NotFound)?;
            core.persist_acknowledged(vec![change]);
            tracing::warn!(id, holder = %view.holder, "API token revoked");
            Ok(view)
        })
    }

    /// Who presents API token `token` at `now`.
    pub fn check_api_token(&self, token: &str, now: SystemTime) -> Result<Caller, AccessRefusal> {
        self.access.check(token, now)
    }

    /// Records a change made through the API (stored, not waited for).
    pub fn record_audit(
        &mut self,
        caller: &Caller,
        what: String,
        object: Option<String>,
        status: u16,
        now: SystemTime,
    ) -> Step<()> {
        self.step(|core| {
            core.quiet = true;
            let changes = core.access.record(caller, what, object, status, now);
            core.persist(changes);
        })
    }

    /// Every API token (no secrets).
    pub fn api_tokens(&self) -> Vec<ApiTokenView> {
        self.access.tokens()
    }

    /// The last `limit` audit entries, oldest first.
    pub fn audit(&self, limit: usize) -> Vec<AuditEntry> {
        self.access.audit(limit)
    }
}
