//! Who may do what through the operator API: API tokens that belong to a named holder and
//! carry a scope, and the audit log of every change made through the API. A plain book,
//! with the time passed in; the core holds it and stores its rows in the Config table
//! (`apitoken/<id>` and `audit/<seq>`, as JSON).
//!
//! Scopes, each including the one before:
//! - `viewer`: every `GET` (lists, descriptions, logs);
//! - `operator`: apply and delete objects, drain nodes, client join tokens, and the audit
//!   log;
//! - `admin`: agent join tokens, API tokens, certificates (revocation) and node removal.
//!
//! The token in the master's `api-token` file is the first admin's (holder
//! `api-token-file`); it makes the others.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use actormesh::token::{random_string, sha256_hex};

use crate::state::{Change, Table};
use crate::tokens::constant_time_eq;

/// Config-table prefix of API tokens.
pub const API_TOKEN_PREFIX: &str = "apitoken/";
/// Config-table prefix of audit entries.
pub const AUDIT_PREFIX: &str = "audit/";
/// Audit entries kept (the oldest go first).
pub const AUDIT_KEPT: usize = 10_000;
/// The holder of the token in the master's `api-token` file.
pub const FILE_HOLDER: &str = "api-token-file";

/// Who may register frameworks under which roles: identities matching `identity` (a glob
/// over SPIFFE ids) under roles matching `role` (a glob). Written `IDENTITY=ROLE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameworkGrant {
    /// A glob over the registering identity (`spiffe://<td>/client/*`).
    pub identity: String,
    /// A glob over the role (`batch`, `etl-*`, `*`).
    pub role: String,
}

impl std::str::FromStr for FrameworkGrant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((identity, role)) if !identity.is_empty() && !role.is_empty() => Ok(Self {
                identity: identity.to_string(),
                role: role.to_string(),
            }),
            _ => Err(format!(
                "{s:?} is not a framework grant (expected IDENTITY=ROLE with globs, e.g. 'spiffe://cluster.local/client/*=batch')"
            )),
        }
    }
}

/// The grants when none is configured: every client identity of the trust domain, under
/// any role (node identities, agents', may register none).
pub fn default_framework_grants(trust_domain: &str) -> Vec<FrameworkGrant> {
    vec![FrameworkGrant {
        identity: format!("spiffe://{trust_domain}/client/*"),
        role: "*".into(),
    }]
}

/// Whether `grants` let `identity` register a framework under `role`.
pub fn may_register(grants: &[FrameworkGrant], identity: &str, role: &str) -> bool {
    use actormesh::mesh::policy::spec::glob_matches;
    grants
        .iter()
        .any(|g| glob_matches(&g.identity, identity) && glob_matches(&g.role, role))
}

/// Which node identities may register endpoints of which services themselves
/// (`RegisterService`): identities matching `identity` (a glob over SPIFFE ids) for
/// services matching `service` (a glob over `namespace/name`). Written `IDENTITY=SERVICE`.
/// A deployment's service is its instances' alone, whatever the grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceGrant {
    /// A glob over the registering node's identity.
    pub identity: String,
    /// A glob over the service's `namespace/name`.
    pub service: String,
}

impl std::str::FromStr for ServiceGrant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((identity, service)) if !identity.is_empty() && !service.is_empty() => {
                Ok(Self {
                    identity: identity.to_string(),
                    service: service.to_string(),
                })
            }
            _ => Err(format!(
                "{s:?} is not a service grant (expected IDENTITY=SERVICE with globs, e.g. 'spiffe://cluster.local/node/edge-*=shop/*')"
            )),
        }
    }
}

/// Whether `grants` let node `identity` register endpoints of `service`; no grant
/// configured lets every node register every service no deployment declares.
pub fn may_serve(grants: &[ServiceGrant], identity: &str, service: &str) -> bool {
    use actormesh::mesh::policy::spec::glob_matches;
    grants.is_empty()
        || grants
            .iter()
            .any(|g| glob_matches(&g.identity, identity) && glob_matches(&g.service, service))
}

/// What an API token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read: every `GET`.
    Viewer,
    /// Change the cluster's objects: apply, delete, drain; client join tokens.
    Operator,
    /// Everything: agent join tokens, API tokens, certificates.
    Admin,
}

impl Scope {
    /// As written on the command line and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Viewer => "viewer",
            Scope::Operator => "operator",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Scope::Viewer),
            "operator" => Ok(Scope::Operator),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "{other:?} is not a scope (expected viewer, operator or admin)"
            )),
        }
    }
}

/// The scope a request needs, by its method and path. Join tokens of role agent need
/// admin; the handler checks that, since the role is in the body.
pub fn needed(method: &str, path: &str) -> Scope {
    // A backup holds the CA key: admin, though it is a GET.
    let admin = path.starts_with("/v1/api-tokens")
        || path.starts_with("/v1/backup")
        || path.starts_with("/v1/revocations") && method != "GET"
        || path.starts_with("/v1/ca") && method != "GET"
        || method == "DELETE" && path.starts_with("/v1/nodes/");
    if admin {
        Scope::Admin
    } else if path.starts_with("/v1/audit") || method != "GET" {
        Scope::Operator
    } else {
        Scope::Viewer
    }
}

/// An API token as the master keeps it: the hash of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    /// Its id (the token's middle part).
    pub id: String,
    /// Who holds it.
    pub holder: String,
    /// What it allows.
    pub scope: Scope,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// When it was made (ms since the Unix epoch).
    pub created_ms: u64,
    /// When it stops working, if ever (ms since the Unix epoch).
    pub expires_ms: Option<u64>,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

/// An API token as listed (no secret, no hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenView {
    /// Its id.
    pub id: String,
    /// Its holder.
    pub holder: String,
    /// Its scope.
    pub scope: Scope,
    /// When it stops working, if ever (ms since the epoch).
    pub expires_ms: Option<u64>,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

/// An API token just made: the whole token is shown once.
#[derive(Clone, Serialize, Deserialize)]
pub struct CreatedApiToken {
    /// `amapi.<id>.<secret>`: what `Authorization: Bearer` carries.
    pub token: String,
    /// What is kept of it.
    pub view: ApiTokenView,
}

impl std::fmt::Debug for CreatedApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApiToken")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

/// Why a presented API token is refused (the API answers 401 with this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessRefusal {
    /// Not a token of this master, or its secret is wrong.
    #[error("not a token of this master, or its secret is wrong")]
    Unknown,
    /// Revoked.
    #[error("API token {0} was revoked")]
    Revoked(String),
    /// Past its expiry.
    #[error("API token {0} has expired")]
    Expired(String),
}

/// A request's caller, once its token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's holder.
    pub holder: String,
    /// Its scope.
    pub scope: Scope,
}

/// One change made through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Order of recording (never reused by this store).
    pub seq: u64,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// The token's holder.
    pub holder: String,
    /// Its scope then.
    pub scope: Scope,
    /// `METHOD /path`.
    pub what: String,
    /// The object named, when the request says (`Deployment default/web`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The API tokens and the audit log.
#[derive(Debug, Default, Clone)]
pub struct Access {
    tokens: BTreeMap<String, ApiTokenRecord>,
    audit: VecDeque<AuditEntry>,
    next_seq: u64,
}

/// A holder's name: 1 to 63 of a-z, 0-9, '-', '_', '.', '@'.
fn valid_holder(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.@".contains(&b))
}

impl Access {
    /// The book as the Config table holds it (other rows are skipped).
    pub fn load<'a>(rows: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Self, String> {
        let mut out = Self::default();
        for (k, v) in rows {
            if k.starts_with(API_TOKEN_PREFIX) {
                let r: ApiTokenRecord =
                    serde_json::from_slice(v).map_err(|e| format!("stored {k}: {e}"))?;
                out.tokens.insert(r.id.clone(), r);
            } else if k.starts_with(AUDIT_PREFIX) {
                let e: AuditEntry =
                    serde_json::from_slice(v).map_err(|e| format!("stored {k}: {e}"))?;
                out.next_seq = out.next_seq.max(e.seq + 1);
                out.audit.push_back(e);
            }
        }
        out.audit.make_contiguous().sort_by_key(|e| e.seq);
        Ok(out)
    }

    /// Makes a token for `holder` with `scope`, working for `ttl` (`None`: until revoked).
    pub fn create(
        &mut self,
        holder: &str,
        scope: Scope,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Result<(CreatedApiToken, Change), String> {
        if !valid_holder(holder) {
            return Err(format!(
                "holder {holder:?} is not valid: use 1 to 63 lowercase letters, digits, '-', '_', '.' or '@'"
            ));
        }
        if ttl.is_some_and(|t| t.is_zero()) {
            return Err("the token's lifetime must be more than 0".into());
        }
        let rand = |n| random_string(n).map_err(|_| "no system randomness".to_string());
        let (id, secret) = (rand(12)?, rand(32)?);
        let record = ApiTokenRecord {
            id: id.clone(),
            holder: holder.to_string(),
            scope,
            secret_sha256: sha256_hex(&secret),
            created_ms: ms(now),
            expires_ms: ttl.map(|t| ms(now + t)),
            revoked_ms: None,
        };
        let change = Change::put(
            Table::Config,
            format!("{API_TOKEN_PREFIX}{id}"),
            serde_json::to_vec(&record).expect("a record serializes"),
        );
        let view = Self::view(&record);
        self.tokens.insert(id.clone(), record);
        Ok((
            CreatedApiToken {
                token: format!("amapi.{id}.{secret}"),
                view,
            },
            change,
        ))
    }

    fn view(r: &ApiTokenRecord) -> ApiTokenView {
        ApiTokenView {
            id: r.id.clone(),
            holder: r.holder.clone(),
            scope: r.scope,
            expires_ms: r.expires_ms,
            revoked_ms: r.revoked_ms,
        }
    }

    /// Who presents `token` at `now`, or why it is refused. The secret is compared in
    /// constant time before anything else is said about the token.
    pub fn check(&self, token: &str, now: SystemTime) -> Result<Caller, AccessRefusal> {
        let mut parts = token.splitn(3, '.');
        let (Some("amapi"), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(AccessRefusal::Unknown);
        };
        let Some(r) = self.tokens.get(id) else {
            return Err(AccessRefusal::Unknown);
        };
        if !constant_time_eq(sha256_hex(secret).as_bytes(), r.secret_sha256.as_bytes()) {
            return Err(AccessRefusal::Unknown);
        }
        if r.revoked_ms.is_some() {
            return Err(AccessRefusal::Revoked(r.id.clone()));
        }
        if r.expires_ms.is_some_and(|e| e <= ms(now)) {
            return Err(AccessRefusal::Expired(r.id.clone()));
        }
        Ok(Caller {
            holder: r.holder.clone(),
            scope: r.scope,
        })
    }

    /// Revokes token `id` at `now` (revoking it again changes nothing).
    pub fn revoke(&mut self, id: &str, now: SystemTime) -> Result<(ApiTokenView, Change), String> {
        let r = self
            .tokens
            .get_mut(id)
            .ok_or_else(|| format!("no API token {id:?} (see `actormesh get api-tokens`)"))?;
        r.revoked_ms.get_or_insert(ms(now));
        let change = Change::put(
            Table::Config,
            format!("{API_TOKEN_PREFIX}{id}"),
            serde_json::to_vec(&*r).expect("a record serializes"),
        );
        Ok((Self::view(r), change))
    }

    /// Every token, by id.
    pub fn tokens(&self) -> Vec<ApiTokenView> {
        self.tokens.values().map(Self::view).collect()
    }

    /// Records a change made through the API; the store changes (the entry, and the
    /// oldest one out once [`AUDIT_KEPT`] are kept).
    pub fn record(
        &mut self,
        caller: &Caller,
        what: String,
        object: Option<String>,
        status: u16,
        now: SystemTime,
    ) -> Vec<Change> {
        let e = AuditEntry {
            seq: self.next_seq,
            at_ms: ms(now),
            holder: caller.holder.clone(),
            scope: caller.scope,
            what,
            object,
            status,
        };
        self.next_seq += 1;
        let mut changes = vec![Change::put(
            Table::Config,
            format!("{AUDIT_PREFIX}{:020}", e.seq),
            serde_json::to_vec(&e).expect("an entry serializes"),
        )];
        self.audit.push_back(e);
        while self.audit.len() > AUDIT_KEPT {
            if let Some(old) = self.audit.pop_front() {
                changes.push(Change::delete(
                    Table::Config,
                    format!("{AUDIT_PREFIX}{:020}", old.seq),
                ));
            }
        }
        changes
    }

    /// The audit log, oldest first: the last `limit` entries.
    pub fn audit(&self, limit: usize) -> Vec<AuditEntry> {
        let skip = self.audit.len().saturating_sub(limit);
        self.audit.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)
    }

    #[test]
    fn framework_grants_name_identities_and_roles_and_by_default_only_clients_register() {
        let d = default_framework_grants("td");
        assert!(may_register(&d, "spiffe://td/client/cli", "batch"));
        assert!(!may_register(&d, "spiffe://td/node/agent-1", "batch"));
        let g: Vec<FrameworkGrant> = [
            "spiffe://td/node/agent-*=etl-*",
            "spiffe://td/client/ops=batch",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert!(may_register(&g, "spiffe://td/node/agent-2", "etl-nightly"));
        assert!(!may_register(&g, "spiffe://td/node/agent-2", "batch"));
        assert!(may_register(&g, "spiffe://td/client/ops", "batch"));
        assert!(!may_register(&g, "spiffe://td/client/cli", "batch"));
        assert!("nope"
            .parse::<FrameworkGrant>()
            .unwrap_err()
            .contains("expected IDENTITY=ROLE"));
    }

    #[test]
    fn service_grants_name_nodes_and_services_and_none_grants_all() {
        assert!(may_serve(&[], "spiffe://td/node/a", "shop/web"));
        let g: Vec<ServiceGrant> = ["spiffe://td/node/edge-*=shop/*"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(may_serve(&g, "spiffe://td/node/edge-1", "shop/web"));
        assert!(!may_serve(&g, "spiffe://td/node/core-1", "shop/web"));
        assert!(!may_serve(&g, "spiffe://td/node/edge-1", "ops/web"));
        assert!("x"
            .parse::<ServiceGrant>()
            .unwrap_err()
            .contains("IDENTITY=SERVICE"));
    }

    #[test]
    fn each_scope_needs_what_it_should_and_each_includes_the_one_before() {
        assert_eq!(needed("GET", "/v1/nodes"), Scope::Viewer);
        assert_eq!(needed("GET", "/v1/tasks/x/logs"), Scope::Viewer);
        assert_eq!(needed("GET", "/v1/revocations"), Scope::Viewer);
        assert_eq!(needed("GET", "/v1/ca"), Scope::Viewer);
        for (m, p) in [
            ("POST", "/v1/deployments"),
            ("DELETE", "/v1/deployments/default/web"),
            ("POST", "/v1/traffic"),
            ("DELETE", "/v1/authorization-policies/a/b"),
            ("POST", "/v1/nodes/a1/drain"),
            ("POST", "/v1/tokens"),
            ("GET", "/v1/audit"),
        ] {
            assert_eq!(needed(m, p), Scope::Operator, "{m} {p}");
        }
        for (m, p) in [
            ("POST", "/v1/api-tokens"),
            ("GET", "/v1/api-tokens"),
            ("DELETE", "/v1/api-tokens/x"),
            ("POST", "/v1/revocations"),
            ("POST", "/v1/ca/rotation"),
            ("DELETE", "/v1/nodes/a1"),
            ("GET", "/v1/backup"),
        ] {
            assert_eq!(needed(m, p), Scope::Admin, "{m} {p}");
        }
        assert!(Scope::Admin > Scope::Operator && Scope::Operator > Scope::Viewer);
        assert_eq!("operator".parse::<Scope>(), Ok(Scope::Operator));
        assert!("root"
            .parse::<Scope>()
            .unwrap_err()
            .contains("expected viewer, operator or admin"));
    }

    #[test]
    fn a_token_checks_out_until_revoked_or_expired_and_reloads_as_kept() {
        let mut a = Access::default();
        let (t, change) = a
            .create("alice", Scope::Viewer, Some(Duration::from_secs(60)), now())
            .unwrap();
        assert_eq!(
            a.check(&t.token, now()),
            Ok(Caller {
                holder: "alice".into(),
                scope: Scope::Viewer
            })
        );
        let wrong = format!("{}x", t.token);
        assert_eq!(a.check(&wrong, now()), Err(AccessRefusal::Unknown));
        assert_eq!(a.check("nonsense", now()), Err(AccessRefusal::Unknown));
        let later = now() + Duration::from_secs(61);
        assert!(matches!(
            a.check(&t.token, later),
            Err(AccessRefusal::Expired(_))
        ));
        // The stored row holds no secret, and reloads.
        let Change::Put { key, value, .. } = change else {
            panic!("a put")
        };
        assert!(!String::from_utf8_lossy(&value).contains(t.token.rsplit('.').next().unwrap()));
        let again = Access::load([(key.as_str(), value.as_slice())]).unwrap();
        assert!(again.check(&t.token, now()).is_ok());
        let (view, _) = a.revoke(&t.view.id, now()).unwrap();
        assert!(view.revoked_ms.is_some());
        assert_eq!(
            a.check(&t.token, now()),
            Err(AccessRefusal::Revoked(t.view.id.clone()))
        );
        assert!(a
            .revoke("nope", now())
            .unwrap_err()
            .contains("no API token"));
        assert!(a.create("Bad Name", Scope::Admin, None, now()).is_err());
    }

    #[test]
    fn the_audit_log_keeps_the_last_entries_in_order_and_reloads() {
        let mut a = Access::default();
        let c = Caller {
            holder: "ops".into(),
            scope: Scope::Operator,
        };
        let mut rows: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for i in 0..(AUDIT_KEPT + 3) {
            for ch in a.record(&c, format!("POST /v1/x{i}"), None, 200, now()) {
                match ch {
                    Change::Put { key, value, .. } => {
                        rows.insert(key, value);
                    }
                    Change::Delete { key, .. } => {
                        rows.remove(&key);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(rows.len(), AUDIT_KEPT);
        let last = a.audit(2);
        assert_eq!(last[1].what, format!("POST /v1/x{}", AUDIT_KEPT + 2));
        assert_eq!(last[0].seq + 1, last[1].seq);
        let again = Access::load(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        assert_eq!(again.audit(2), last);
        assert_eq!(again.next_seq, a.next_seq);
    }
}
