//! The one layer that authorizes every request ([`authorize`]).
//!
//! Keys travel as `Authorization: Bearer <key>` or `x-warren-key: <key>` (or, as Azure Functions
//! clients send them, `x-functions-key: <key>` or `?code=<key>`), and are checked
//! against the configured admin key's digest and the stored ones (see `keys`); comparisons of
//! digests run in constant time.
//!
//! [`authorize`] classifies each request by its method and matched route:
//! - open: `GET /healthz`, `GET /metrics`, `GET /api/openapi.json`, and the portal's static
//!   files (`GET /`, `GET /portal/...`);
//! - by the function's `auth` level: invoking it (its active version; `?version=N` needs an
//!   admin key), reading its invocations and their logs, and
//!   calling an Azure Functions HTTP trigger at its route under `/api/` (`azure_http`);
//! - everything else, including routes added later and unknown paths: an admin key.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;
use warren_store::KeyLevel;
use warren_wire::manifest::AuthLevel;

use crate::keys::{constant_time_eq, digest, AuthMode};
use crate::management::Management;
use crate::reply::ApiError;

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
    /// A path under `/api/` no route of Warren's own matched: an Azure Functions HTTP trigger's
    /// route, perhaps.
    AppRoute(String, String),
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
        (_, _, None) if path.starts_with("/api/") => Need::AppRoute(method.to_string(), path.to_string()),
        _ => Need::Admin,
    }
}

/// Whether a query names a `version` (an invoke of a version other than the active one).
fn pins_version(query: Option<&str>) -> bool {
    // Decoded as the handler decodes it: `versio%6E=2` names `version` too.
    query.is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "version"))
}

/// Where a request carried its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyFrom {
    Header,
    Code,
    Bearer,
}

/// The key a request carries, if any, and where.
fn presented_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<(KeyFrom, std::borrow::Cow<'a, str>)> {
    // Header names made once: a name given as text is parsed and checked on every lookup.
    const NAMES: [HeaderName; 2] =
        [HeaderName::from_static("x-warren-key"), HeaderName::from_static("x-functions-key")];
    for name in &NAMES {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some((KeyFrom::Header, v.trim().into()));
        }
    }
    let code = query.and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "code").map(|(_, v)| v));
    if let Some(code) = code {
        return Some((KeyFrom::Code, code));
    }
    let v = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| (KeyFrom::Bearer, rest.trim().into()))
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

const HOW_TO_SEND: &str =
    "send it as `Authorization: Bearer <key>` or `x-warren-key: <key>` (the CLI: --key or WARREN_API_KEY)";

/// Who the key of a request belongs to; 401 for a key that is unknown or revoked.
async fn identify(
    m: &Management,
    admin_digest: &[u8; 32],
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Caller, ApiError> {
    let Some((_, key)) = presented_key(headers, query).filter(|(_, k)| !k.is_empty()) else {
        return Ok(Caller::Nobody);
    };
    let d = digest(&key);
    if constant_time_eq(&d, admin_digest) {
        return Ok(Caller::Admin);
    }
    let hash = hex::encode(d);
    let found = m.keys.find(&hash).await.map_err(ApiError::from)?;
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
    match m.catalog.auth_level(function).await {
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
        Need::AppRoute(method, path) => match m.routes.lookup(&m.catalog, &method, &path).await? {
            Ok(found) => check_function(caller, &found.function, found.auth, &format!("calling {:?}", found.function)),
            // A route that takes other methods: the handler answers 405, to anyone.
            Err(allowed) if !allowed.is_empty() => Ok(()),
            // No route at all: as for any unknown path, only an admin learns it is not there.
            Err(_) => check_admin(caller, "this endpoint"),
        },
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
            let mut need = classify(&parts.method, route.as_deref(), parts.uri.path(), &params);
            if route.as_deref() == Some("/api/functions/{name}/invoke") && pins_version(parts.uri.query()) {
                // Running a version other than the active one (a draft) is part of editing.
                need = Need::Admin;
            }
            let app_route = matches!(need, Need::AppRoute(..));
            let allowed = match identify(&m, admin_digest, &parts.headers, parts.uri.query()).await {
                Ok(caller) => {
                    // An app's function must not see the Warren key it was called with.
                    if caller != Caller::Nobody {
                        if let Some((from, _)) = presented_key(&parts.headers, parts.uri.query()) {
                            parts.extensions.insert(from);
                        }
                    }
                    check(&m, &caller, need).await
                }
                // A credential Warren does not know may be the app's own (an OAuth `code`, its
                // own bearer token): an app route decides by its level, as for no key at all.
                Err(_) if app_route => check(&m, &Caller::Nobody, need).await,
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
    fn a_version_is_found_however_its_name_is_encoded() {
        assert!(pins_version(Some("mode=async&version=2")));
        assert!(pins_version(Some("versio%6E=2")));
        assert!(pins_version(Some("%76ersion")));
        assert!(!pins_version(Some("mode=async&versions=2")));
        assert!(!pins_version(None));
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
            classify(&Method::GET, None, "/api/products/7", &none),
            Need::AppRoute("GET".into(), "/api/products/7".into())
        );
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
        let key = |h: &HeaderMap, q: Option<&str>| presented_key(h, q).map(|(f, k)| (f, k.into_owned()));
        assert_eq!(key(&h, None), Some((KeyFrom::Bearer, "abc".into())));
        assert_eq!(key(&h, Some("x=1&code=c%2Bd")), Some((KeyFrom::Code, "c+d".into())));
        h.insert("x-functions-key", "fk".parse().unwrap());
        assert_eq!(key(&h, None), Some((KeyFrom::Header, "fk".into())));
        h.insert("x-warren-key", "def".parse().unwrap());
        assert_eq!(key(&h, None), Some((KeyFrom::Header, "def".into())));
        let mut basic = HeaderMap::new();
        basic.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&basic, None), None);
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
}
