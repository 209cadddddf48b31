//! The HTTP ingress gateway's rules, as a plain core: the `Gateway` and `HttpRoute`
//! objects as written ([`GatewaySpec`], [`HttpRouteSpec`], each with a `validate` whose
//! errors name the field), which rule an HTTP request takes ([`Router::route`]), and the
//! call it becomes: the service, the message, the JSON payload built from the path
//! parameters, the query and the body ([`payload`]), and the headers that travel on as
//! call metadata. No HTTP server and no network here: the gateway node serves these.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::policy::spec::FieldError;
use crate::protocol::MasterRefusal;
use crate::RemoteMessage;

/// A gateway node asks the master for the configuration of its gateway: the Gateway
/// `namespace/name` and its HttpRoutes.
#[derive(Debug, Clone, Serialize, Deserialize, RemoteMessage)]
#[remote(name = "actormesh.master.FetchGateway/v1", reply = Result<GatewayConfig, MasterRefusal>)]
pub struct FetchGateway {
    /// The gateway's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// A gateway's configuration, as the master holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayConfig {
    /// The Gateway's spec.
    pub spec: GatewaySpec,
    /// Its HttpRoutes' specs, by route name (all of the gateway's namespace).
    pub routes: Vec<(String, HttpRouteSpec)>,
}

fn refuse(field: impl Into<String>, problem: impl Into<String>, expected: &str) -> FieldError {
    FieldError {
        field: field.into(),
        problem: problem.into(),
        expected: expected.to_string(),
    }
}

/// A gateway: the hosts it answers for, the request headers that become call metadata
/// (propagated down the chain, e.g. `end-user`), and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    /// Host names served (`shop.example.com`, `*.example.com`); empty: any.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Request headers passed on as propagated call metadata, by name (any case).
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// The largest request body, in bytes (413 beyond).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// The most bytes of request headers (431 beyond).
    #[serde(default = "default_max_headers")]
    pub max_header_bytes: usize,
}

/// 1 MiB.
fn default_max_body() -> usize {
    1 << 20
}

/// 16 KiB.
fn default_max_headers() -> usize {
    16 << 10
}

/// What a header name may hold (RFC 9110 token characters), lowercased.
fn header_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then(|| name.to_ascii_lowercase())
}

fn check_host(field: String, host: &str) -> Result<(), FieldError> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(refuse(
            field,
            format!("{host:?} is not a host name"),
            "a DNS name such as shop.example.com, or *.example.com",
        ))
    }
}

impl GatewaySpec {
    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        for (i, h) in self.hosts.iter().enumerate() {
            check_host(format!("hosts[{i}]"), h)?;
        }
        for (i, h) in self.forward_headers.iter().enumerate() {
            if header_name(h).is_none() {
                return Err(refuse(
                    format!("forward_headers[{i}]"),
                    format!("{h:?} is not a header name"),
                    "an HTTP header name such as end-user",
                ));
            }
        }
        if self.max_body_bytes == 0 {
            return Err(refuse("max_body_bytes", "0", "a size above 0, in bytes"));
        }
        if self.max_header_bytes < 1024 {
            return Err(refuse(
                "max_header_bytes",
                self.max_header_bytes.to_string(),
                "at least 1024 bytes",
            ));
        }
        Ok(())
    }

    /// Whether the gateway answers for `host` (a request's `Host`, without its port).
    pub fn serves_host(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| host_matches(h, host))
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(&suffix.to_ascii_lowercase())
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        None => host == pattern.to_ascii_lowercase(),
    }
}

/// Routes of one gateway: rules tried in order, the first that matches wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteSpec {
    /// The gateway (its name, in the route's namespace) that serves these rules.
    pub gateway: String,
    /// Host names matched (as the gateway's); empty: every host the gateway serves.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The rules, in order.
    pub rules: Vec<HttpRule>,
}

/// One rule: what it matches, and the call it makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRule {
    /// What the request must be.
    #[serde(rename = "match", default)]
    pub matches: HttpMatch,
    /// The service called (`name` in the route's namespace, or `namespace/name`).
    pub service: String,
    /// The message the request becomes (its registered name, e.g. `shop.GetProduct/v1`).
    pub message: String,
    /// The response's media type. Absent: `application/json`, the reply's JSON is the
    /// body. Given (e.g. `text/html; charset=utf-8`): the reply must be a JSON string, and
    /// its text is the body, served with this type (a page rendered by an actor).
    #[serde(default)]
    pub content_type: Option<String>,
}

/// What a request must be to take a rule; every part given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMatch {
    /// The path: literal segments, `{name}` for a segment that becomes the payload's
    /// field `name`, and a last `*` for any rest. `None`: any path.
    #[serde(default)]
    pub path: Option<String>,
    /// The method (`GET`, `POST`...). `None`: any.
    #[serde(default)]
    pub method: Option<String>,
    /// Headers that must have these values (names in any case).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest,
}

fn parse_path(field: &str, path: &str) -> Result<Vec<Segment>, FieldError> {
    let expected = "a path such as /products/{id} or /static/*: literal segments, {name} segments, and a last *";
    let Some(rest) = path.strip_prefix('/') else {
        return Err(refuse(
            field,
            format!("{path:?} does not start with /"),
            expected,
        ));
    };
    let parts: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    let mut out = Vec::with_capacity(parts.len());
    let mut names = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let seg = if *p == "*" {
            if i + 1 != parts.len() {
                return Err(refuse(
                    field,
                    format!("{path:?} has * before its end"),
                    expected,
                ));
            }
            Segment::Rest
        } else if let Some(name) = p.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
            let ok =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(refuse(
                    field,
                    format!("{p:?} is not a parameter"),
                    "{name} with letters, digits and _",
                ));
            }
            if names.contains(&name) {
                return Err(refuse(field, format!("{{{name}}} appears twice"), expected));
            }
            names.push(name);
            Segment::Param(name.to_string())
        } else if p.is_empty() || p.contains(['{', '}', '*', '?', '#']) {
            return Err(refuse(
                field,
                format!("{path:?} has an empty or malformed segment {p:?}"),
                expected,
            ));
        } else {
            Segment::Literal(p.to_string())
        };
        out.push(seg);
    }
    Ok(out)
}

/// Whether `t` is a `type/subtype` with optional parameters, in printable ASCII (what a
/// `Content-Type` header can carry).
fn is_media_type(t: &str) -> bool {
    let essence = t.split(';').next().unwrap_or("").trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    t.bytes().all(|b| (b' '..=b'~').contains(&b))
        && essence
            .split_once('/')
            .is_some_and(|(ty, sub)| token(ty) && token(sub))
}

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

impl HttpRouteSpec {
    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.gateway.is_empty() {
            return Err(refuse("gateway", "empty", "the name of a Gateway"));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            check_host(format!("hosts[{i}]"), h)?;
        }
        if self.rules.is_empty() {
            return Err(refuse("rules", "none", "at least one rule"));
        }
        for (i, r) in self.rules.iter().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            if let Some(p) = &r.matches.path {
                parse_path(&at("match.path"), p)?;
            }
            if let Some(m) = &r.matches.method {
                if !METHODS.contains(&m.as_str()) {
                    return Err(refuse(
                        at("match.method"),
                        format!("{m:?}"),
                        "one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
                    ));
                }
            }
            for name in r.matches.headers.keys() {
                if header_name(name).is_none() {
                    return Err(refuse(
                        at("match.headers"),
                        format!("{name:?} is not a header name"),
                        "HTTP header names",
                    ));
                }
            }
            if r.service.is_empty() || r.service.split('/').count() > 2 {
                return Err(refuse(
                    at("service"),
                    format!("{:?}", r.service),
                    "a service: name, or namespace/name",
                ));
            }
            if r.message.is_empty() || r.message.contains(char::is_whitespace) {
                return Err(refuse(
                    at("message"),
                    format!("{:?}", r.message),
                    "a message name such as shop.GetProduct/v1",
                ));
            }
            if let Some(t) = &r.content_type {
                if !is_media_type(t) {
                    return Err(refuse(
                        at("content_type"),
                        format!("{t:?}"),
                        "a media type such as text/html; charset=utf-8 (type/subtype, printable ASCII)",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An HTTP request as the router sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The host, without its port.
    pub host: &'a str,
    /// The method.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The headers (names in any case).
    pub headers: &'a [(&'a str, &'a str)],
}

/// The rule a request took, with the path parameters it captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The service called (`namespace/name`).
    pub service: String,
    /// The message.
    pub message: String,
    /// Path parameters, by name.
    pub params: BTreeMap<String, String>,
    /// The rule's response media type, if not JSON ([`HttpRule::content_type`]).
    pub content_type: Option<String>,
}

/// A compiled rule.
#[derive(Debug, Clone)]
struct Compiled {
    hosts: Vec<String>,
    path: Option<Vec<Segment>>,
    method: Option<String>,
    headers: Vec<(String, String)>,
    service: String,
    message: String,
    content_type: Option<String>,
}

/// The routes of one gateway, compiled: rules in the order of their routes (by
/// namespace and name) and, within a route, in order.
#[derive(Debug, Clone, Default)]
pub struct Router {
    rules: Vec<Compiled>,
}

/// No rule took the request: 404.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no route of this gateway matches {method} {host}{path}")]
pub struct NoRoute {
    /// The method.
    pub method: String,
    /// The host.
    pub host: String,
    /// The path.
    pub path: String,
}

impl Router {
    /// The router of `routes`, each `(namespace, spec)`, already validated (a rule that
    /// does not compile is left out).
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a str, &'a HttpRouteSpec)>) -> Self {
        let mut rules = Vec::new();
        for (ns, spec) in routes {
            for r in &spec.rules {
                let path = match &r.matches.path {
                    Some(p) => match parse_path("path", p) {
                        Ok(p) => Some(p),
                        Err(_) => continue,
                    },
                    None => None,
                };
                let service = if r.service.contains('/') {
                    r.service.clone()
                } else {
                    format!("{ns}/{}", r.service)
                };
                rules.push(Compiled {
                    hosts: spec.hosts.clone(),
                    path,
                    method: r.matches.method.clone(),
                    headers: r
                        .matches
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                        .collect(),
                    service,
                    message: r.message.clone(),
                    content_type: r.content_type.clone(),
                });
            }
        }
        Self { rules }
    }

    /// The first rule `req` matches.
    pub fn route(&self, req: &Request<'_>) -> Result<Matched, NoRoute> {
        let segments: Vec<&str> = match req.path.strip_prefix('/') {
            Some("") | None => Vec::new(),
            Some(rest) => rest.split('/').collect(),
        };
        for rule in &self.rules {
            if !rule.hosts.is_empty() && !rule.hosts.iter().any(|h| host_matches(h, req.host)) {
                continue;
            }
            if rule
                .method
                .as_deref()
                .is_some_and(|m| !m.eq_ignore_ascii_case(req.method))
            {
                continue;
            }
            let headers_hold = rule.headers.iter().all(|(name, want)| {
                req.headers
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == want)
            });
            if !headers_hold {
                continue;
            }
            let params = match &rule.path {
                None => Some(BTreeMap::new()),
                Some(template) => capture(template, &segments),
            };
            if let Some(params) = params {
                return Ok(Matched {
                    service: rule.service.clone(),
                    message: rule.message.clone(),
                    params,
                    content_type: rule.content_type.clone(),
                });
            }
        }
        Err(NoRoute {
            method: req.method.to_string(),
            host: req.host.to_string(),
            path: req.path.to_string(),
        })
    }
}

/// The parameters `segments` give `template`, if they match it.
fn capture(template: &[Segment], segments: &[&str]) -> Option<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    for (i, t) in template.iter().enumerate() {
        match t {
            Segment::Rest => return Some(params),
            Segment::Literal(l) => {
                if segments.get(i) != Some(&l.as_str()) {
                    return None;
                }
            }
            Segment::Param(name) => {
                let s = segments.get(i).filter(|s| !s.is_empty())?;
                params.insert(name.clone(), percent_decode(s)?);
            }
        }
    }
    (segments.len() == template.len()).then_some(params)
}

/// `%XX`-decodes `s` (a `+` stays `+`, as in a path); `None` for a `%` without two hex
/// digits, or if the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Why a request cannot become a call's payload: 400, with these words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// The body is not JSON.
    #[error("the request body is not JSON: {0}")]
    NotJson(String),
    /// A field is given twice (path, query, body).
    #[error("{field:?} is given both {first} and {second}; give it once")]
    Twice {
        /// The field.
        field: String,
        /// Where first.
        first: &'static str,
        /// Where again.
        second: &'static str,
    },
    /// Parameters go with a body that is not a JSON object.
    #[error("the request has path or query parameters ({0}), so its body must be a JSON object to hold them")]
    NotAnObject(String),
    /// The query is not `name=value&...` in UTF-8.
    #[error("the query is not name=value pairs: {0:?}")]
    BadQuery(String),
}

/// The call's JSON payload: the body's JSON object (or `{}` when there is no body) with
/// the path parameters and the query's `name=value` pairs added as string fields (a name
/// given more than once in the query becomes an array). A field given twice is refused;
/// a body that is JSON but no object is the payload itself when there are no parameters.
pub fn payload(
    params: &BTreeMap<String, String>,
    query: Option<&str>,
    body: &[u8],
) -> Result<Value, BadRequest> {
    let mut from_query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let plus = |s: &str| s.replace('+', " ");
        let (Some(k), Some(v)) = (percent_decode(&plus(k)), percent_decode(&plus(v))) else {
            return Err(BadRequest::BadQuery(pair.to_string()));
        };
        from_query.entry(k).or_default().push(v);
    }
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(
            serde_json::from_slice::<Value>(body)
                .map_err(|e| BadRequest::NotJson(e.to_string()))?,
        )
    };
    if params.is_empty() && from_query.is_empty() {
        return Ok(body.unwrap_or_else(|| Value::Object(Map::new())));
    }
    let mut object = match body {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            let names: Vec<&str> = params
                .keys()
                .chain(from_query.keys())
                .map(String::as_str)
                .collect();
            return Err(BadRequest::NotAnObject(names.join(", ")));
        }
    };
    for (k, v) in params {
        if object.contains_key(k) {
            return Err(BadRequest::Twice {
                field: k.clone(),
                first: "in the body",
                second: "in the path",
            });
        }
        object.insert(k.clone(), Value::String(v.clone()));
    }
    for (k, mut vs) in from_query {
        if object.contains_key(&k) {
            let first = if params.contains_key(&k) {
                "in the path"
            } else {
                "in the body"
            };
            return Err(BadRequest::Twice {
                field: k,
                first,
                second: "in the query",
            });
        }
        let v = if vs.len() == 1 {
            Value::String(vs.remove(0))
        } else {
            Value::Array(vs.into_iter().map(Value::String).collect())
        };
        object.insert(k, v);
    }
    Ok(Value::Object(object))
}

/// The request headers a gateway passes on as call metadata: those `spec` names, with
/// their names lowercased, first value of each.
pub fn forwarded<'a>(spec: &GatewaySpec, headers: &[(&'a str, &'a str)]) -> Vec<(String, &'a str)> {
    let mut out: Vec<(String, &'a str)> = Vec::new();
    for want in spec.forward_headers.iter().filter_map(|h| header_name(h)) {
        if let Some((_, v)) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(&want)) {
            out.push((want, v));
        }
    }
    out
}

/// The trace context of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`);
/// `None` when it is not one (a malformed one is ignored, as the W3C spec says: the
/// gateway starts a new trace).
pub fn parse_traceparent(value: &str) -> Option<crate::TraceContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
        if s.len() != N * 2
            || !s
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return None;
        }
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
        }
        Some(out)
    }
    let trace_id = hex::<16>(trace)?;
    let span_id = hex::<8>(span)?;
    let [flags] = hex::<1>(flags)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(crate::TraceContext {
        trace_id,
        span_id,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_read_and_a_malformed_one_ignored() {
        let t =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.flags, 1);
        assert_eq!(
            t.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    fn route(yaml: &str) -> HttpRouteSpec {
        let spec: HttpRouteSpec = serde_json::from_str(yaml).unwrap();
        spec.validate().unwrap();
        spec
    }

    fn req<'a>(method: &'a str, path: &'a str, headers: &'a [(&'a str, &'a str)]) -> Request<'a> {
        Request {
            host: "shop.example.com",
            method,
            path,
            headers,
        }
    }

    #[test]
    fn the_first_matching_rule_wins_and_captures_its_parameters() {
        let spec = route(
            r#"{"gateway":"public","rules":[
                {"match":{"path":"/products/{id}","method":"GET","headers":{"End-User":"jason"}},"service":"reviews-v2","message":"r.Get/v1"},
                {"match":{"path":"/products/{id}","method":"GET"},"service":"shop/products","message":"p.Get/v1"},
                {"match":{"path":"/static/*"},"service":"files","message":"f.Get/v1"}
            ]}"#,
        );
        let r = Router::new([("shop", &spec)]);
        let jason = r
            .route(&req("GET", "/products/42", &[("end-user", "jason")]))
            .unwrap();
        assert_eq!(
            jason.service, "shop/reviews-v2",
            "the namespace of the route"
        );
        assert_eq!(jason.params.get("id").map(String::as_str), Some("42"));
        let other = r.route(&req("get", "/products/a%20b", &[])).unwrap();
        assert_eq!(other.service, "shop/products");
        assert_eq!(
            other.params["id"], "a b",
            "decoded, and the method in any case"
        );
        assert_eq!(
            r.route(&req("GET", "/static/css/a.css", &[]))
                .unwrap()
                .service,
            "shop/files"
        );
        assert_eq!(other.content_type, None, "JSON unless the rule says");
        let page = route(
            r#"{"gateway":"g","rules":[{"service":"page","message":"p.Page/v1","content_type":"text/html; charset=utf-8"}]}"#,
        );
        let page = Router::new([("shop", &page)]);
        assert_eq!(
            page.route(&req("GET", "/", &[]))
                .unwrap()
                .content_type
                .as_deref(),
            Some("text/html; charset=utf-8")
        );
        for (m, p) in [
            ("POST", "/products/42"),
            ("GET", "/products"),
            ("GET", "/products/42/x"),
            ("GET", "/products/"),
        ] {
            assert!(r.route(&req(m, p, &[])).is_err(), "{m} {p}");
        }
    }

    #[test]
    fn hosts_match_exactly_or_by_wildcard() {
        let spec = route(
            r#"{"gateway":"g","hosts":["*.example.com"],"rules":[{"service":"s","message":"m"}]}"#,
        );
        let r = Router::new([("default", &spec)]);
        let at = |host| Request {
            host,
            method: "GET",
            path: "/",
            headers: &[],
        };
        assert!(r.route(&at("shop.example.com")).is_ok());
        assert!(r.route(&at("SHOP.Example.com")).is_ok());
        assert!(
            r.route(&at("example.com")).is_err(),
            "the wildcard needs a label"
        );
        assert!(r.route(&at("shop.example.org")).is_err());
        let g = GatewaySpec {
            hosts: vec!["bookinfo.local".into()],
            forward_headers: vec![],
            max_body_bytes: 10,
            max_header_bytes: 1024,
        };
        assert!(g.serves_host("bookinfo.local") && !g.serves_host("other.local"));
    }

    #[test]
    fn bad_routes_are_refused_naming_the_field() {
        let bad = |json: &str, field: &str| {
            let spec: HttpRouteSpec = serde_json::from_str(json).unwrap();
            let e = spec.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        };
        bad(
            r#"{"gateway":"g","rules":[{"match":{"path":"products"},"service":"s","message":"m"}]}"#,
            "rules[0].match.path",
        );
        bad(
            r#"{"gateway":"g","rules":[{"match":{"path":"/a/*/b"},"service":"s","message":"m"}]}"#,
            "rules[0].match.path",
        );
        bad(
            r#"{"gateway":"g","rules":[{"match":{"path":"/{id}/{id}"},"service":"s","message":"m"}]}"#,
            "rules[0].match.path",
        );
        bad(
            r#"{"gateway":"g","rules":[{"match":{"method":"FETCH"},"service":"s","message":"m"}]}"#,
            "rules[0].match.method",
        );
        bad(
            r#"{"gateway":"g","rules":[{"service":"a/b/c","message":"m"}]}"#,
            "rules[0].service",
        );
        bad(
            r#"{"gateway":"g","rules":[{"service":"s","message":"a b"}]}"#,
            "rules[0].message",
        );
        bad(r#"{"gateway":"g","rules":[]}"#, "rules");
        for t in ["html", "text/", "/html", "text/html\n", "text html/x"] {
            let json = format!(
                r#"{{"gateway":"g","rules":[{{"service":"s","message":"m","content_type":{t:?}}}]}}"#
            );
            bad(&json, "rules[0].content_type");
        }
        bad(
            r#"{"gateway":"g","hosts":["bad host"],"rules":[{"service":"s","message":"m"}]}"#,
            "hosts[0]",
        );
        let g: GatewaySpec = serde_json::from_str(r#"{"forward_headers":["end user"]}"#).unwrap();
        assert_eq!(g.validate().unwrap_err().field, "forward_headers[0]");
        let g: GatewaySpec = serde_json::from_str(r#"{"max_header_bytes":10}"#).unwrap();
        assert_eq!(g.validate().unwrap_err().field, "max_header_bytes");
    }

    #[test]
    fn the_payload_holds_the_body_the_path_parameters_and_the_query() {
        let params = BTreeMap::from([("id".to_string(), "42".to_string())]);
        let p = payload(
            &params,
            Some("page=2&tag=a&tag=b%2Bc&q=x+y"),
            br#"{"note":"hi"}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            serde_json::json!({"note": "hi", "id": "42", "page": "2", "tag": ["a", "b+c"], "q": "x y"})
        );
        assert_eq!(
            payload(&BTreeMap::new(), None, b"").unwrap(),
            serde_json::json!({})
        );
        assert_eq!(
            payload(&BTreeMap::new(), None, b"\"plain\"").unwrap(),
            serde_json::json!("plain")
        );
        assert!(matches!(
            payload(&params, None, b"{\"id\":1}"),
            Err(BadRequest::Twice {
                second: "in the path",
                ..
            })
        ));
        assert!(matches!(
            payload(&params, Some("id=3"), b""),
            Err(BadRequest::Twice {
                first: "in the path",
                second: "in the query",
                ..
            })
        ));
        assert!(matches!(
            payload(&params, None, b"[1]"),
            Err(BadRequest::NotAnObject(_))
        ));
        let e = payload(&BTreeMap::new(), None, b"{\"a\":").unwrap_err();
        assert!(
            matches!(&e, BadRequest::NotJson(m) if m.contains("line 1")),
            "{e}"
        );
        assert!(matches!(
            payload(&BTreeMap::new(), Some("a=%FF"), b""),
            Err(BadRequest::BadQuery(_))
        ));
    }

    #[test]
    fn only_the_named_headers_travel_on() {
        let g: GatewaySpec = serde_json::from_str(r#"{"forward_headers":["End-User"]}"#).unwrap();
        let h = [
            ("end-user", "jason"),
            ("cookie", "secret"),
            ("END-USER", "second"),
        ];
        assert_eq!(forwarded(&g, &h), vec![("end-user".to_string(), "jason")]);
    }
}
