//! API keys and the one layer that authorizes every request.
//!
//! Keys travel as `Authorization: Bearer <key>` or `x-warren-key: <key>`. The configured admin
//! key (`--admin-key`) is never stored; keys made through the API are stored as the sha256 of
//! the key and shown in clear once, when created. Comparisons of digests run in constant time.
//!
//! [`authorize`] classifies each request by its method and matched route:
//! - open: `GET /healthz`, `GET /metrics`, `GET /api/openapi.json`, and the portal's static
//!   files (`GET /`, `GET /portal/...`);
//! - by the function's `auth` level: invoking it, and reading its invocations and their logs;
//! - everything else, including routes added later and unknown paths: an admin key.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use warren_store::KeyLevel;
use warren_wire::manifest::AuthLevel;

use crate::api::ApiError;
use crate::Management;

/// Prefix of every key Warren generates, so a leaked one is recognisable in a scan.
pub const KEY_PREFIX: &str = "wrn_";

/// The shortest admin key accepted on the command line.
pub const MIN_ADMIN_KEY_CHARS: usize = 16;

/// How requests are authorized.
#[derive(Clone, Default)]
pub enum AuthMode {
    /// No key is checked: everything is open (`--insecure-no-auth`).
    #[default]
    Open,
    /// Keys are checked; the configured admin key is held as its sha256 only.
    Keys { admin_digest: [u8; 32] },
}

impl std::fmt::Debug for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMode::Open => f.write_str("Open"),
            AuthMode::Keys { .. } => f.write_str("Keys { admin key: [hidden] }"),
        }
    }
}

impl AuthMode {
    /// Keys checked, with `admin_key` as the configured admin key.
    pub fn with_admin_key(admin_key: &str) -> Result<AuthMode, String> {
        let admin_key = admin_key.trim();
        if admin_key.chars().count() < MIN_ADMIN_KEY_CHARS {
            return Err(format!(
                "the admin key is too short: give at least {MIN_ADMIN_KEY_CHARS} characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(AuthMode::Keys { admin_digest: digest(admin_key) })
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The hex sha256 of a key: what the store holds.
pub fn hash_key(key: &str) -> String {
    hex::encode(digest(key))
}

/// A new random key: the prefix and 256 random bits in hex.
pub fn generate_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who is calling, as far as its key tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No key sent.
    Nobody,
    Admin,
    /// A function key, for this function.
    Function(String),
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Need {
    Nothing,
    Admin,
    /// Whatever the function's `auth` level asks.
    Function(String),
    /// Whatever the `auth` level of the invocation's function asks.
    Invocation(String),
}

fn classify(method: &Method, route: Option<&str>, path: &str, params: &HashMap<String, String>) -> Need {
    let read = method == Method::GET || method == Method::HEAD;
    if read && (path == "/" || path == "/portal" || path.starts_with("/portal/")) {
        return Need::Nothing;
    }
    let param = |k: &str| params.get(k).cloned().unwrap_or_default();
    match (read, method == Method::POST, route) {
        (true, _, Some("/healthz" | "/metrics" | "/api/openapi.json")) => Need::Nothing,
        (_, true, Some("/api/functions/{name}/invoke" | "/api/functions/{name}/invocations")) => {
            Need::Function(param("name"))
        }
        (true, _, Some("/api/invocations/{id}" | "/api/invocations/{id}/logs")) => Need::Invocation(param("id")),
        _ => Need::Admin,
    }
}

/// The key a request carries, if any.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-warren-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let v = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

const HOW_TO_SEND: &str =
    "send it as `Authorization: Bearer <key>` or `x-warren-key: <key>` (the CLI: --key or WARREN_API_KEY)";

/// How long a valid API key found in the store is trusted without reading it again: a key
/// revoked through another management instance is refused by this one within this time (at
/// once by the instance that revoked it). Unknown keys are never cached.
pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Who the key of a request belongs to; 401 for a key that is unknown or revoked.
async fn identify(m: &Management, admin_digest: &[u8; 32], headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(key) = presented_key(headers).filter(|k| !k.is_empty()) else { return Ok(Caller::Nobody) };
    let d = digest(key);
    if constant_time_eq(&d, admin_digest) {
        return Ok(Caller::Admin);
    }
    let hash = hex::encode(d);
    let cached = m.keys.get(&hash).filter(|e| e.0.elapsed() < KEY_CACHE_TTL).map(|e| e.1.clone());
    let found = match cached {
        Some(k) => Some(k),
        None => {
            let found = m
                .metrics
                .store
                .time("find_key_by_hash", m.store.find_key_by_hash(&hash))
                .await
                .map_err(ApiError::from)?;
            match &found {
                Some(k) if k.revoked_ms.is_none() => {
                    m.keys.insert(hash.clone(), (std::time::Instant::now(), k.clone()));
                }
                _ => {
                    m.keys.remove(&hash);
                }
            }
            found
        }
    };
    match found {
        Some(k) if k.revoked_ms.is_none() && constant_time_eq(k.hash.as_bytes(), hash.as_bytes()) => match k.level {
            KeyLevel::Admin => Ok(Caller::Admin),
            KeyLevel::Function => Ok(Caller::Function(k.function.unwrap_or_default())),
        },
        _ => {
            Err(unauthorized("this API key is not known or was revoked; ask an admin for a key (`warren keys create`)"))
        }
    }
}

/// The function's `auth` level; `function` for one that does not exist (so that nothing
/// tells a caller without a key which functions exist).
async fn level_of(m: &Management, function: &str) -> Result<AuthLevel, ApiError> {
    match m.auth_level(function).await {
        Ok(Some(level)) => Ok(level),
        Ok(None) => Ok(AuthLevel::Function),
        Err(e) => Err(e.into()),
    }
}

fn check_admin(caller: &Caller, what: &str) -> Result<(), ApiError> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::Nobody => Err(unauthorized(format!("{what} needs an admin key; {HOW_TO_SEND}"))),
        Caller::Function(f) => {
            Err(forbidden(format!("{what} needs an admin key; this is a function key (for function {f:?})")))
        }
    }
}

fn check_function(caller: &Caller, function: &str, level: AuthLevel, what: &str) -> Result<(), ApiError> {
    match (level, caller) {
        (AuthLevel::Anonymous, _) | (_, Caller::Admin) => Ok(()),
        (AuthLevel::Admin, _) => check_admin(caller, what),
        (AuthLevel::Function, Caller::Function(f)) if f == function => Ok(()),
        (AuthLevel::Function, Caller::Nobody) => {
            Err(unauthorized(format!("{what} needs a key for function {function:?} or an admin key; {HOW_TO_SEND}")))
        }
        (AuthLevel::Function, Caller::Function(f)) => Err(forbidden(format!(
            "{what} needs a key for function {function:?} or an admin key; this key is for function {f:?}"
        ))),
    }
}

async fn check(m: &Management, caller: &Caller, need: Need) -> Result<(), ApiError> {
    match need {
        Need::Nothing => Ok(()),
        Need::Admin => check_admin(caller, "this endpoint"),
        Need::Function(f) => {
            let level = level_of(m, &f).await?;
            check_function(caller, &f, level, &format!("invoking {f:?}"))
        }
        Need::Invocation(id) => {
            let inv = match Uuid::parse_str(&id) {
                Ok(id) => {
                    m.metrics.store.time("get_invocation", m.store.get_invocation(id)).await.map_err(ApiError::from)?
                }
                Err(_) => None,
            };
            match inv {
                Some(inv) => {
                    let level = level_of(m, &inv.function).await?;
                    check_function(caller, &inv.function, level, "reading this invocation")
                }
                // Let any valid key see the 404 (or 400); without a key, say a key is needed.
                None if *caller != Caller::Nobody => Ok(()),
                None => Err(unauthorized(format!("reading invocations needs an API key; {HOW_TO_SEND}"))),
            }
        }
    }
}

/// The authorization layer over the whole router: a request goes on only if its key allows it.
pub async fn authorize(State(m): State<Arc<Management>>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let method = req.method().clone();
    let verdict = match &m.config.auth {
        AuthMode::Open => Ok(req),
        AuthMode::Keys { admin_digest } => {
            let (mut parts, body) = req.into_parts();
            let params = Path::<HashMap<String, String>>::from_request_parts(&mut parts, &())
                .await
                .map(|Path(p)| p)
                .unwrap_or_default();
            let need = classify(&parts.method, route.as_deref(), parts.uri.path(), &params);
            let allowed = match identify(&m, admin_digest, &parts.headers).await {
                Ok(caller) => check(&m, &caller, need).await,
                Err(e) => Err(e),
            };
            allowed.map(|()| Request::from_parts(parts, body))
        }
    };
    let response = match verdict {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    m.metrics.http_request(&method, route.as_deref(), response.status(), started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn routes_are_admin_unless_classified() {
        let none = HashMap::new();
        assert_eq!(classify(&Method::GET, Some("/healthz"), "/healthz", &none), Need::Nothing);
        assert_eq!(classify(&Method::GET, None, "/portal/app.js", &none), Need::Nothing);
        assert_eq!(classify(&Method::POST, None, "/portal/app.js", &none), Need::Admin);
        assert_eq!(classify(&Method::GET, Some("/api/batches"), "/api/batches", &none), Need::Admin);
        assert_eq!(classify(&Method::GET, None, "/nowhere", &none), Need::Admin);
        assert_eq!(
            classify(&Method::POST, Some("/api/functions/{name}/invoke"), "/x", &params(&[("name", "f")])),
            Need::Function("f".into())
        );
        assert_eq!(
            classify(&Method::POST, Some("/api/functions/{name}/invocations"), "/x", &params(&[("name", "f")])),
            Need::Function("f".into())
        );
        assert_eq!(
            classify(&Method::GET, Some("/api/invocations/{id}/logs"), "/x", &params(&[("id", "i")])),
            Need::Invocation("i".into())
        );
        assert_eq!(classify(&Method::DELETE, Some("/api/invocations/{id}"), "/x", &none), Need::Admin);
    }

    #[test]
    fn keys_are_read_from_either_header() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer  abc ".parse().unwrap());
        assert_eq!(presented_key(&h), Some("abc"));
        h.insert("x-warren-key", "def".parse().unwrap());
        assert_eq!(presented_key(&h), Some("def"));
        let mut basic = HeaderMap::new();
        basic.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&basic), None);
    }

    #[test]
    fn function_levels_decide() {
        let f = |s: &str| Caller::Function(s.into());
        assert!(check_function(&Caller::Nobody, "a", AuthLevel::Anonymous, "x").is_ok());
        assert_eq!(check_function(&Caller::Nobody, "a", AuthLevel::Function, "x").unwrap_err().status(), 401);
        assert!(check_function(&f("a"), "a", AuthLevel::Function, "x").is_ok());
        assert_eq!(check_function(&f("b"), "a", AuthLevel::Function, "x").unwrap_err().status(), 403);
        assert_eq!(check_function(&f("a"), "a", AuthLevel::Admin, "x").unwrap_err().status(), 403);
        assert!(check_function(&Caller::Admin, "a", AuthLevel::Admin, "x").is_ok());
    }

    #[test]
    fn generated_keys_are_long_and_distinct() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_PREFIX.len() + 64);
        assert_eq!(hash_key(&a).len(), 64);
        assert!(constant_time_eq(b"same", b"same") && !constant_time_eq(b"same", b"sane"));
        assert!(AuthMode::with_admin_key("short").is_err());
    }
}
