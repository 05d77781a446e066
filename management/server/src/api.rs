//! The HTTP API. Every error is JSON: `{"error": {"code": "...", "message": "..."}}`, with a
//! message that says what to do.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET  | /healthz | liveness, backends |
//! | POST | /api/functions[?activate=false] | publish a package (.tar.gz body) → 201 + the new version (a draft with activate=false) |
//! | GET  | /api/functions | functions with their active version |
//! | GET  | /api/functions/{name} | one function and all its versions |
//! | GET  | /api/functions/{name}/versions/{version}/package | a version's package, as published |
//! | POST | /api/functions/{name}/invoke[?mode=async][&timeout_ms=N][&version=N][&delay_ms=N\|&run_at=T] | body = input bytes |
//! | GET  | /api/invocations/{id} | status, result, error, attempts, worker, timings, logs |
//! | GET  | /api/invocations/{id}/logs | log lines only |
//! | POST | /api/invocations/{id}/cancel | cancel one not final (409 when it is) |
//! | GET  | /api/functions/{name}/settings | settings; secret values masked |
//! | PUT  | /api/functions/{name}/settings/{key} | `{"value": "...", "secret": bool}` |
//! | DELETE | /api/functions/{name}/settings/{key} | |
//! | GET  | /api/invocations[?function=F][&status=S][&limit=N] | newest first |
//! | GET  | /api/workers | registered workers, their heartbeats, `lost` when silent too long |
//! | GET  | /api/dead-letters[?pool=P][&limit=N] | messages kept in the dead-letter queues |
//! | POST | /api/dead-letters/replay | `{"ids": [...]}` or `{"all": true}` (optional `"pool"`) |
//! | GET  | /api/stats[?minutes=N] | invocations per minute and status, queue depths, workers online |
//! | POST | /api/keys | `{"name": "...", "level": "admin"\|"function", "function": "F"}` → 201 + the key, once |
//! | GET  | /api/keys | keys without their secrets |
//! | DELETE | /api/keys/{id} | revoke a key |
//! | GET  | /metrics | Prometheus text |
//! | GET  | /api/openapi.json | the OpenAPI description of this API |
//!
//! Every request goes through `auth::authorize` first. [`ROUTES`] lists every route; the
//! router is checked against it and against the OpenAPI document in tests.
//!
//! Batches, timers and deliveries: see `triggers_api`. `GET /` and `GET /portal/{file}` serve
//! the portal (`portal`). Errors are answered through `reply`.

use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use warren_store::{ApiKey, InvocationFilter, KeyLevel, Status, WorkerState};
use warren_wire::manifest::valid_name;
use warren_wire::time::now_ms;

use crate::cancel::{self, LOST_AFTER_MS};
use crate::error::Error;
use crate::keys::{generate_key, hash_key};
use crate::management::Management;
use crate::reply::{
    bad_request, body_or_error, id_from, json_rejected, name_from, not_found, query, unread_body, ApiError, ApiResult,
};
use crate::views::view;
use crate::{auth, azure_http, portal, triggers_api};

/// Every route of the API as (method, path): what [`router`] serves, and what the OpenAPI
/// document (`openapi.json`) must describe.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/api/openapi.json"),
    ("POST", "/api/functions"),
    ("GET", "/api/functions"),
    ("GET", "/api/functions/{name}"),
    ("DELETE", "/api/functions/{name}"),
    ("GET", "/api/functions/{name}/versions/{version}/package"),
    ("POST", "/api/functions/{name}/activate"),
    ("POST", "/api/functions/{name}/pause"),
    ("POST", "/api/functions/{name}/resume"),
    ("POST", "/api/functions/{name}/invoke"),
    ("POST", "/api/functions/{name}/invocations"),
    ("GET", "/api/functions/{name}/settings"),
    ("PUT", "/api/functions/{name}/settings/{key}"),
    ("DELETE", "/api/functions/{name}/settings/{key}"),
    ("GET", "/api/invocations/{id}"),
    ("GET", "/api/invocations/{id}/logs"),
    ("POST", "/api/invocations/{id}/cancel"),
    ("GET", "/api/invocations"),
    ("GET", "/api/workers"),
    ("GET", "/api/dead-letters"),
    ("POST", "/api/dead-letters/replay"),
    ("POST", "/api/keys"),
    ("GET", "/api/keys"),
    ("DELETE", "/api/keys/{id}"),
    ("GET", "/api/stats"),
    ("GET", "/api/retention"),
    // crate::triggers_api::routes()
    ("POST", "/api/batches"),
    ("GET", "/api/batches"),
    ("GET", "/api/batches/{id}"),
    ("POST", "/api/batches/{id}/cancel"),
    ("GET", "/api/batches/{id}/results"),
    ("GET", "/api/timers"),
    ("GET", "/api/invocations/{id}/deliveries"),
    ("POST", "/api/invocations/{id}/deliveries/retry"),
];

/// The OpenAPI 3 description of the API.
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn router(m: Arc<Management>) -> Router {
    let package_limit = m.config.package_limits.max_package_bytes as usize;
    let payload_limit = m.config.max_payload_bytes;
    Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
        .route("/api/functions", post(publish).layer(DefaultBodyLimit::max(package_limit)).get(list_functions))
        .route("/api/functions/{name}", get(get_function).delete(delete_function))
        .route("/api/functions/{name}/versions/{version}/package", get(get_package))
        .route("/api/functions/{name}/activate", post(activate_function))
        .route("/api/functions/{name}/pause", post(pause_function))
        .route("/api/functions/{name}/resume", post(resume_function))
        .route("/api/functions/{name}/invoke", post(invoke).layer(DefaultBodyLimit::max(payload_limit)))
        // Its body limit is applied by the handler, which reads the body only once it has a turn.
        .route("/api/functions/{name}/invocations", post(invoke_many))
        .route("/api/functions/{name}/settings", get(list_settings))
        .route("/api/functions/{name}/settings/{key}", axum::routing::put(put_setting).delete(delete_setting))
        .route("/api/invocations/{id}", get(get_invocation))
        .route("/api/invocations/{id}/logs", get(get_logs))
        .route("/api/invocations/{id}/cancel", post(cancel_invocation))
        .route("/api/invocations", get(list_invocations))
        .route("/api/workers", get(list_workers))
        .route("/api/dead-letters", get(list_dead))
        .route("/api/dead-letters/replay", post(replay_dead))
        .route("/api/keys", post(create_key).get(list_keys))
        .route("/api/keys/{id}", axum::routing::delete(revoke_key))
        .route("/api/stats", get(stats))
        .route("/api/retention", get(retention))
        .merge(triggers_api::routes())
        .merge(portal::routes())
        // Paths no route here takes: Azure Functions apps' HTTP triggers under /api/, else 404.
        .fallback(azure_http::serve)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method; see /api/openapi.json for what it takes",
            )
        })
        // Everything else takes small JSON bodies at most.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Outermost: no request reaches a handler before its key is checked.
        .layer(axum::middleware::from_fn_with_state(m.clone(), auth::authorize))
        .with_state(m)
}

async fn metrics(State(m): State<Arc<Management>>) -> Response {
    let pools = m.invoker.pools().await.unwrap_or_default();
    let text = m.metrics.render(&pools, &*m.transport).await;
    ([(axum::http::header::CONTENT_TYPE, warren_service::metrics::CONTENT_TYPE)], text).into_response()
}

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(Deserialize)]
struct NewKeyBody {
    name: String,
    level: String,
    function: Option<String>,
}

const KEY_BODY_HELP: &str =
    "send {\"name\": \"...\", \"level\": \"admin\"} or {\"name\": \"...\", \"level\": \"function\", \"function\": \"NAME\"}";

/// Creates a key; the answer is the only place the key is ever shown.
async fn create_key(
    State(m): State<Arc<Management>>,
    body: Result<Json<NewKeyBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let bad = |msg: String| bad_request(msg);
    let Json(b) = body.map_err(|e| json_rejected(e, KEY_BODY_HELP))?;
    let name = b.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(bad(format!("a key needs a name of 1 to 200 characters (who or what uses it); {KEY_BODY_HELP}")));
    }
    let level = KeyLevel::parse(&b.level)
        .ok_or_else(|| bad(format!("level {:?} is not \"admin\" or \"function\"", b.level)))?;
    let function = match (level, b.function) {
        (KeyLevel::Function, Some(f)) if valid_name(&f) => Some(f),
        (KeyLevel::Function, Some(f)) => {
            return Err(bad(format!("{f:?} is not a function name (letters, digits, '-', '_')")))
        }
        (KeyLevel::Function, None) => return Err(bad(format!("a function key names its function; {KEY_BODY_HELP}"))),
        (KeyLevel::Admin, Some(_)) => {
            return Err(bad("an admin key is not bound to a function: leave out \"function\"".into()))
        }
        (KeyLevel::Admin, None) => None,
    };
    let secret = generate_key();
    let key = ApiKey {
        id: Uuid::now_v7(),
        name,
        level,
        function,
        hash: hash_key(secret.expose_secret()),
        created_ms: now_ms(),
        revoked_ms: None,
    };
    m.store.create_key(&key).await?;
    tracing::info!(key.id = %key.id, key.name = %key.name, level = level.as_str(), "API key created");
    let mut v = serde_json::to_value(&key).unwrap_or_default();
    v["key"] = json!(secret.expose_secret());
    v["message"] = json!("store this key now: it is not shown again (only its hash is kept)");
    Ok((StatusCode::CREATED, Json(v)))
}

async fn list_keys(State(m): State<Arc<Management>>) -> ApiResult<Json<Value>> {
    Ok(Json(serde_json::to_value(m.store.list_keys().await?).unwrap_or_default()))
}

async fn revoke_key(
    State(m): State<Arc<Management>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let s = name_from(id)?;
    let id = Uuid::parse_str(&s).map_err(|_| bad_request(format!("{s:?} is not a key id (a UUID)")))?;
    if !m.store.revoke_key(id, now_ms()).await? {
        return Err(not_found(format!("no key {id} that is not revoked already; `warren keys list` shows them")));
    }
    // Refused at once here; other instances drop their cached copy within KEY_CACHE_TTL.
    m.keys.forget(id);
    tracing::info!(key.id = %id, "API key revoked");
    Ok(Json(json!({"id": id, "revoked": true})))
}

async fn health(State(m): State<Arc<Management>>) -> Json<Value> {
    Json(json!({"status": "ok", "store": m.store.backend(), "version": env!("CARGO_PKG_VERSION")}))
}

#[derive(Deserialize, Default)]
struct PublishQuery {
    /// An Azure Functions app's worker pool.
    pool: Option<String>,
    /// `false`: store a draft, run only by invokes that name its version.
    activate: Option<bool>,
}

async fn publish(
    State(m): State<Arc<Management>>,
    q: Result<Query<PublishQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let q = query(q)?;
    if let Some(pool) = q.pool.as_deref().filter(|p| !valid_name(p)) {
        return Err(bad_request(format!("pool {pool:?} must be 1-64 letters, digits, '-' or '_'")));
    }
    let body = body_or_error(body, m.config.package_limits.max_package_bytes, "package")?;
    if body.is_empty() {
        return Err(bad_request("send the function package (.tar.gz with function.toml at its root) as the request body; `warren publish DIR` packs a folder",
        ));
    }
    let published = m.catalog.publish(&body, q.pool.as_deref(), q.activate.unwrap_or(true)).await?;
    if !published.app {
        // One function: its version, as it always was, and any notes beside.
        let mut v = serde_json::to_value(&published.versions[0]).unwrap_or_default();
        if !published.notes.is_empty() {
            v["notes"] = json!(published.notes);
        }
        return Ok((StatusCode::CREATED, Json(v)));
    }
    Ok((StatusCode::CREATED, Json(json!({"app": true, "functions": published.versions, "notes": published.notes}))))
}

async fn list_functions(State(m): State<Arc<Management>>) -> ApiResult<Json<Value>> {
    let functions = m.store.list_functions().await?;
    let mut out = Vec::with_capacity(functions.len());
    for f in functions {
        // What starts each function, from its active version's manifest (cached).
        let trigger = m.catalog.version_manifest(&f.name, f.active_version).await.ok().map(|mf| mf.trigger());
        let mut v = serde_json::to_value(&f).unwrap_or_default();
        v["trigger"] = json!(trigger);
        out.push(v);
    }
    Ok(Json(Value::Array(out)))
}

async fn get_function(
    State(m): State<Arc<Management>>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let name = name_from(name)?;
    let f = m.store.get_function(&name).await?.ok_or_else(|| not_found(format!("function {name:?} does not exist")))?;
    let versions = m.store.list_versions(&name).await?;
    let manifest = m.catalog.version_manifest(&name, f.active_version).await.ok();
    let trigger = manifest.as_ref().map(|mf| mf.trigger());
    let retention = m.cleaner.defaults.over(manifest.as_ref().and_then(|mf| mf.retention.as_ref()));
    Ok(Json(json!({"function": f, "trigger": trigger, "retention": retention, "versions": versions})))
}

/// Retention: management's defaults, each function's policy, and the last cleanup (by
/// whichever instance ran it).
async fn retention(State(m): State<Arc<Management>>) -> ApiResult<Json<Value>> {
    let mut functions = Vec::new();
    for f in m.store.list_functions().await? {
        let manifest = m.catalog.version_manifest(&f.name, f.active_version).await.ok();
        let own = manifest.as_ref().and_then(|mf| mf.retention.clone());
        let policy = m.cleaner.defaults.over(own.as_ref());
        functions.push(json!({"name": f.name, "retention": policy, "own": own.unwrap_or_default()}));
    }
    let duty = m.store.get_duty(crate::retention::DUTY).await?;
    let last = duty.as_ref().and_then(|d| d.report.as_deref()).and_then(|r| serde_json::from_str::<Value>(r).ok());
    Ok(Json(json!({
        "defaults": m.cleaner.defaults,
        "cleanup": {
            "enabled": m.config.triggers,
            "every_secs": m.cleaner.every.as_secs(),
            "chunk": crate::retention::CHUNK,
            "holder": duty.as_ref().map(|d| &d.holder),
            "last": last,
        },
        "functions": functions,
    })))
}

/// A version's package as it was published (a `.tar.gz`, or an Azure Functions app's `.zip`).
async fn get_package(
    State(m): State<Arc<Management>>,
    path: Result<Path<(String, i64)>, PathRejection>,
) -> ApiResult<Response> {
    let Path((name, version)) = path
        .map_err(|e| bad_request(format!("{}; the path is /api/functions/NAME/versions/N/package", e.body_text())))?;
    let bytes = m.store.get_package(&name, version).await?.ok_or_else(|| {
        not_found(format!("function {name:?} has no version {version}; GET /api/functions/{name} lists them"))
    })?;
    let zip = bytes.starts_with(b"PK\x03\x04");
    let (kind, ext) = if zip { ("application/zip", "zip") } else { ("application/gzip", "tar.gz") };
    let disposition = format!("attachment; filename=\"{name}-v{version}.{ext}\"");
    let mut r = bytes.into_response();
    let h = r.headers_mut();
    h.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static(kind));
    if let Ok(v) = axum::http::HeaderValue::from_str(&disposition) {
        h.insert(axum::http::header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

#[derive(Deserialize)]
struct ActivateBody {
    version: i64,
}

async fn activate_function(
    State(m): State<Arc<Management>>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<ActivateBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let name = name_from(name)?;
    let Json(b) = body.map_err(|e| json_rejected(e, "send {\"version\": N}"))?;
    let v = m.catalog.activate(&name, b.version).await?;
    Ok(Json(json!({"name": name, "active_version": v.version, "version": v})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    /// Resume by itself at this time (ms since the epoch)...
    resume_at_ms: Option<i64>,
    /// ...or this many seconds from now.
    for_secs: Option<u64>,
}

/// The longest pause that ends by itself.
const MAX_PAUSE_SECS: u64 = 366 * 86_400;

async fn pause_function(
    State(m): State<Arc<Management>>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let name = name_from(name)?;
    let body = body_or_error(body, BODY_LIMIT as u64, "body")?;
    let how = "send nothing, {\"for_secs\": N} or {\"resume_at_ms\": MS}";
    let b: PauseBody = if body.iter().all(u8::is_ascii_whitespace) {
        PauseBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("{e}; {how}")))?
    };
    let now = now_ms();
    let resume_at = match (b.resume_at_ms, b.for_secs) {
        (Some(_), Some(_)) => return Err(bad_request(format!("give one of for_secs and resume_at_ms; {how}"))),
        (None, Some(s)) if s == 0 || s > MAX_PAUSE_SECS => {
            return Err(bad_request(format!("for_secs must be 1 to {MAX_PAUSE_SECS}")))
        }
        (None, Some(s)) => Some(now + s as i64 * 1000),
        (Some(at), None) if at <= now || at > now + MAX_PAUSE_SECS as i64 * 1000 => {
            return Err(bad_request("resume_at_ms must be in the future, within a year"))
        }
        (at, None) => at,
    };
    if !m.catalog.pause(&name, resume_at).await? {
        return Err(not_found(format!("function {name:?} does not exist")));
    }
    let f = m.store.get_function(&name).await?.ok_or_else(|| not_found(format!("function {name:?} does not exist")))?;
    Ok(Json(json!({"name": name, "paused": true, "paused_ms": f.paused_ms, "resume_at_ms": f.resume_at_ms})))
}

async fn resume_function(
    State(m): State<Arc<Management>>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let name = name_from(name)?;
    if !m.catalog.resume(&name).await? {
        if m.store.get_function(&name).await?.is_none() {
            return Err(not_found(format!("function {name:?} does not exist")));
        }
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("function {name:?} is not paused")));
    }
    Ok(Json(json!({"name": name, "resumed": true})))
}

async fn delete_function(
    State(m): State<Arc<Management>>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let name = name_from(name)?;
    if !m.catalog.delete(&name).await? {
        return Err(not_found(format!("function {name:?} does not exist")));
    }
    Ok(Json(json!({"name": name, "deleted": true})))
}

#[derive(Deserialize, Default)]
struct InvokeQuery {
    /// `sync` (default) or `async`.
    mode: Option<String>,
    timeout_ms: Option<u64>,
    /// Runs this version instead of the active one (a draft, to try it).
    version: Option<i64>,
    /// Runs it this many milliseconds from now (an asynchronous invoke, held by the broker).
    delay_ms: Option<u64>,
    /// Runs it at this time: RFC 3339 (`2026-12-24T06:00:00Z`) or milliseconds since the epoch.
    run_at: Option<String>,
}

/// The body limit of every route without one of its own (inputs and packages have theirs).
const BODY_LIMIT: usize = 1 << 20;

/// The longest a scheduled invocation may wait.
const MAX_SCHEDULE_MS: i64 = 90 * 24 * 3600 * 1000;

/// When an invoke with `delay_ms` or `run_at` is to run, if it has one.
fn scheduled_at(q: &InvokeQuery) -> ApiResult<Option<i64>> {
    let now = now_ms();
    let at = match (q.delay_ms, q.run_at.as_deref()) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => return Err(bad_request("send delay_ms or run_at, not both")),
        (Some(d), None) => now.saturating_add(d.min(i64::MAX as u64) as i64),
        (None, Some(t)) => match t.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => warren_wire::schedule::parse_rfc3339(t).map_err(|e| {
                bad_request(format!(
                    "run_at={t:?} is not a time ({e}): give RFC 3339 such as 2026-12-24T06:00:00Z, or milliseconds since the epoch"
                ))
            })?,
        },
    };
    // A time already past runs at once; one before the epoch is a mistake (and would overflow
    // the arithmetic of its hops).
    if at < 0 {
        return Err(bad_request(format!("run_at={at} is before 1970: give a time in milliseconds since the epoch")));
    }
    if at.saturating_sub(now) > MAX_SCHEDULE_MS {
        return Err(bad_request("a scheduled invocation runs within 90 days; schedule it later, or use a timer"));
    }
    Ok(Some(at))
}

/// The request's `Idempotency-Key`, if it has one: 1 to 255 printable ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let key =
        v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (0x20..0x7f).contains(&b)));
    match key {
        Some(k) => Ok(Some(k.to_string())),
        None => Err(bad_request("Idempotency-Key must be 1 to 255 printable ASCII characters (a UUID is a good key)")),
    }
}

async fn invoke(
    State(m): State<Arc<Management>>,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<InvokeQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body_or_error(body, m.config.max_payload_bytes as u64, "input")?;
    let name = name_from(name)?;
    let q = query(q)?;
    let wait = match q.mode.as_deref() {
        None | Some("sync") => Some(m.invoker.clamp_wait(q.timeout_ms)),
        Some("async") => None,
        Some(other) => {
            return Err(bad_request(format!(
                "mode={other:?} is not known: use mode=sync (wait for the result) or mode=async (202 and an id)"
            )))
        }
    };
    // Safe to cancel: a client that leaves cannot cut an async invoke between its record and
    // its publish (see `Invoker::invoke_with`).
    let key = idempotency_key(&headers)?;
    if let Some(at) = scheduled_at(&q)? {
        // A time of the caller's: asynchronous by nature (the answer comes long before it runs).
        if matches!(q.mode.as_deref(), Some("sync")) || key.is_some() || q.version.is_some() {
            return Err(bad_request(
                "a scheduled invoke (delay_ms, run_at) is asynchronous, of the active version, without an Idempotency-Key",
            ));
        }
        let accepted = m.invoker.invoke_scheduled(&name, body, at).await?;
        return Ok((StatusCode::ACCEPTED, Json(json!({"id": accepted.id, "status": "scheduled", "run_at_ms": at})))
            .into_response());
    }
    let (accepted, repeat) = match (&key, q.version) {
        (Some(_), Some(_)) => {
            return Err(bad_request(
                "an Idempotency-Key is for the function's callers, version= for trying a version: send one of them",
            ))
        }
        (Some(key), None) => m.invoker.invoke_keyed(&name, key, body, wait).await?,
        (None, Some(v)) => (m.invoker.invoke_version(&name, v, body, wait).await?, false),
        (None, None) => (m.invoker.invoke(&name, body, wait).await?, false),
    };
    let mut answer = match wait {
        // Asynchronous: the id (a repeat's invocation may have ended already: its status).
        None => {
            let status = accepted.invocation.as_ref().map(|i| i.status).unwrap_or(Status::Queued);
            (StatusCode::ACCEPTED, Json(json!({"id": accepted.id, "status": status}))).into_response()
        }
        Some(_) => invoke_answer(&m, accepted).await?,
    };
    if repeat {
        // As other APIs with idempotency keys say it: this is the first request's invocation.
        answer.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
    }
    Ok(answer)
}

/// An invoke's answer: 200 with the outcome when it is final, else 202 with the id.
async fn invoke_answer(m: &Management, accepted: crate::invoke::Accepted) -> ApiResult<Response> {
    match accepted.invocation {
        Some(inv) if inv.status.is_final() => {
            let (logs, attempts) = match accepted.details {
                Some(known) => known,
                // Two reads at once: one round trip of waiting instead of two.
                None => tokio::try_join!(m.store.get_logs(inv.id), m.store.list_attempts(inv.id))?,
            };
            Ok((StatusCode::OK, Json(view(&inv, Some(&logs), Some(&attempts)))).into_response())
        }
        Some(inv) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "id": inv.id,
                "status": inv.status,
                "message": format!("still {} after the wait; read it later at /api/invocations/{}", inv.status, inv.id),
            })),
        )
            .into_response()),
        None => Ok((StatusCode::ACCEPTED, Json(json!({"id": accepted.id, "status": "queued"}))).into_response()),
    }
}

/// Inputs one bulk invoke may carry.
pub const MAX_BULK_INPUTS: usize = 10_000;
/// The body limit of a bulk invoke: 16 MiB, or one input of the largest size if that is more.
fn bulk_body_limit(payload_limit: usize) -> usize {
    (16usize << 20).max(payload_limit + 2)
}

/// A bulk invoke's inputs, checked.
enum BulkInputs {
    Plain(Vec<Bytes>),
    Keyed(Vec<crate::invoke::KeyedInput>),
}

/// The lines of a keyed bulk invoke, `{"key": "...", "input": ...}`, each key once.
fn keyed_inputs(lines: Vec<Bytes>) -> ApiResult<Vec<crate::invoke::KeyedInput>> {
    let mut items = Vec::with_capacity(lines.len());
    let mut seen = std::collections::HashSet::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let no = i + 1;
        let item = crate::invoke::keyed_item(line).map_err(|why| {
            bad_request(format!("input {no} {why}; with keyed=true each line is one; nothing was accepted"))
        })?;
        if !seen.insert(item.key.clone()) {
            return Err(bad_request(format!(
                "input {no} repeats the key {:?} of an earlier line; nothing was accepted",
                item.key
            )));
        }
        items.push(item);
    }
    Ok(items)
}

/// The inputs of a bulk invoke's body: one JSON value per line, blank lines skipped. The
/// first bad line refuses the whole request (nothing is recorded), naming the line.
fn bulk_inputs(body: &Bytes, max_input: usize) -> ApiResult<Vec<Bytes>> {
    let mut inputs = Vec::new();
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let no = n + 1;
        if line.len() > max_input {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "line {no} is {} bytes, over the input limit of {max_input} bytes; nothing was accepted",
                    line.len()
                ),
            ));
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(line) {
            return Err(bad_request(format!(
                "line {no} is not a JSON value ({e}); each line holds one input; nothing was accepted"
            )));
        }
        if inputs.len() == MAX_BULK_INPUTS {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("more than {MAX_BULK_INPUTS} inputs; send them in several requests (or as a batch: POST /api/batches); nothing was accepted"),
            ));
        }
        // A slice of the body: no copy.
        inputs.push(body.slice_ref(line));
    }
    Ok(inputs)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BulkQuery {
    /// Each line is `{"key": "...", "input": ...}`: an idempotency key per input.
    keyed: Option<bool>,
}

/// `POST /api/functions/{name}/invocations`: NDJSON, one input per line, each an independent
/// asynchronous invocation (as `invoke?mode=async`, without a batch's bookkeeping). 202 with
/// the ids in input order once every one is recorded and confirmed by the broker. With
/// `keyed=true` each line carries an idempotency key (`keyed_inputs`).
async fn invoke_many(
    State(m): State<Arc<Management>>,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<BulkQuery>, QueryRejection>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let name = name_from(name)?;
    let keyed = query(q)?.keyed.unwrap_or(false);
    // The body is read only once this request has its turn: waiting requests hold no body.
    // A request waits for its turn at most the client timeout, and its body must be in within
    // twice that once it has one: a client trickling its body a byte at a time (never idle
    // long enough for the client timeout) holds one of the few turns only that long.
    let (turn_wait, body_within) = (m.config.client_timeout, m.config.client_timeout * 2);
    let turn = tokio::time::timeout(turn_wait, m.invoker.bulk_turn()).await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "{} bulk invokes were being read or run for the last {} s; nothing was accepted: retry later",
                crate::invoke::MAX_BULK_IN_FLIGHT,
                turn_wait.as_secs()
            ),
        )
    })?;
    let _turn = turn.ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "management is stopping; nothing was accepted")
    })?;
    let limit = bulk_body_limit(m.config.max_payload_bytes);
    let read = tokio::time::timeout(body_within, axum::body::to_bytes(body, limit)).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the body did not arrive within {} s of its turn; nothing was accepted", body_within.as_secs()),
        )
    })?;
    let body = read.map_err(|e| {
        unread_body(
            e,
            limit,
            "body",
            "; send the inputs in several requests (or as a batch: POST /api/batches); nothing was accepted",
        )
    })?;
    let big = body.len() > 64 << 10;
    let max_input = m.config.max_payload_bytes;
    let check = move || -> ApiResult<BulkInputs> {
        let inputs = bulk_inputs(&body, max_input)?;
        if inputs.is_empty() {
            return Err(bad_request("the body holds no input: send NDJSON, one JSON input per line"));
        }
        Ok(if keyed { BulkInputs::Keyed(keyed_inputs(inputs)?) } else { BulkInputs::Plain(inputs) })
    };
    // Checking megabytes of JSON (and digesting each keyed line) is CPU work: off the async
    // threads when the body is large.
    let inputs = if big {
        tokio::task::spawn_blocking(check).await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the body check failed: {e}"))
        })??
    } else {
        check()?
    };
    // Safe to cancel: a client that goes away mid-way does not stop it between the records
    // and their publishes (see `Invoker::invoke_many`).
    let (out, repeated) = match inputs {
        BulkInputs::Keyed(items) => m.invoker.invoke_many_keyed(&name, items).await?,
        BulkInputs::Plain(inputs) => (m.invoker.invoke_many(&name, inputs).await?, 0),
    };
    if out.not_queued.is_empty() {
        let mut v = json!({"function": name, "accepted": out.ids.len(), "ids": out.ids});
        if keyed {
            v["repeated"] = json!(repeated);
        }
        return Ok((StatusCode::ACCEPTED, Json(v)).into_response());
    }
    // Some were recorded but the broker did not take them: they are recorded failed, never
    // run; the others are queued and will run.
    let not_queued: Vec<Value> = out.not_queued.iter().map(|(id, e)| json!({"id": id, "error": e})).collect();
    let message = format!(
        "{} of {} inputs were not queued ({}); the other {} are queued and will run: do not send the whole body again, only the inputs of not_queued",
        not_queued.len(),
        not_queued.len() + out.ids.len(),
        out.not_queued[0].1,
        out.ids.len()
    );
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "error": {"code": "unavailable", "message": message},
            "function": name,
            "accepted": out.ids.len(),
            "ids": out.ids,
            "not_queued": not_queued,
        })),
    )
        .into_response())
}

async fn get_invocation(
    State(m): State<Arc<Management>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = id_from(id)?;
    let inv = m.store.get_invocation(id).await?.ok_or_else(|| not_found(format!("no invocation {id}")))?;
    let logs = m.store.get_logs(id).await?;
    let attempts = m.store.list_attempts(id).await?;
    let mut v = view(&inv, Some(&logs), Some(&attempts));
    let deliveries = m.store.list_deliveries(id).await?;
    if !deliveries.is_empty() {
        v["deliveries"] = serde_json::to_value(deliveries).unwrap_or_default();
    }
    Ok(Json(v))
}

async fn get_logs(State(m): State<Arc<Management>>, id: Result<Path<String>, PathRejection>) -> ApiResult<Json<Value>> {
    let id = id_from(id)?;
    if m.store.get_invocation(id).await?.is_none() {
        return Err(not_found(format!("no invocation {id}")));
    }
    Ok(Json(serde_json::to_value(m.store.get_logs(id).await?).unwrap_or_default()))
}

/// Cancels an invocation that is not final: recorded `cancelled` at once, then every worker
/// running now is told, so that a delivery of it is acked without running and a run of it is
/// stopped. A final one is a 409 naming its status.
async fn cancel_invocation(
    State(m): State<Arc<Management>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = id_from(id)?;
    match m.store.cancel_invocation(id, now_ms()).await? {
        None => Err(not_found(format!("no invocation {id}"))),
        Some(false) => {
            let status = m.store.get_invocation(id).await?.map(|i| i.status.as_str()).unwrap_or("final");
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("invocation {id} is {status} already: only a queued or running one can be cancelled"),
            ))
        }
        Some(true) => {
            let told = cancel::tell_workers(&*m.store, &*m.transport, &[id]).await?;
            tracing::info!(invocation = %id, workers = told, "cancelled");
            Ok(Json(json!({"id": id, "status": Status::Cancelled, "workers_told": told})))
        }
    }
}

/// Settings, secret values masked: they are never returned, in full or in part.
async fn list_settings(
    State(m): State<Arc<Management>>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let name = name_from(name)?;
    if m.store.get_function(&name).await?.is_none() {
        return Err(not_found(format!("function {name:?} does not exist")));
    }
    let list: Vec<Value> = m
        .store
        .list_settings(&name)
        .await?
        .into_iter()
        .map(|s| {
            json!({
                "name": s.name,
                "value": if s.secret { Value::String("********".into()) } else { Value::String(s.value) },
                "secret": s.secret,
                "updated_ms": s.updated_ms,
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

#[derive(Deserialize)]
struct SettingBody {
    value: String,
    #[serde(default)]
    secret: bool,
}

async fn put_setting(
    State(m): State<Arc<Management>>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<SettingBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Path((name, key)) = path.map_err(|e| bad_request(e.body_text()))?;
    let Json(b) = body.map_err(|e| json_rejected(e, "send {\"value\": \"...\", \"secret\": true|false}"))?;
    m.catalog.set_setting(&name, &key, &b.value, b.secret).await?;
    Ok(Json(json!({"name": key, "secret": b.secret, "stored": true})))
}

async fn delete_setting(
    State(m): State<Arc<Management>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path((name, key)) = path.map_err(|e| bad_request(e.body_text()))?;
    if !m.store.delete_setting(&name, &key).await? {
        return Err(not_found(format!("function {name:?} has no setting {key:?}")));
    }
    Ok(Json(json!({"name": key, "deleted": true})))
}

async fn list_workers(State(m): State<Arc<Management>>) -> ApiResult<Json<Value>> {
    let now = now_ms();
    let workers: Vec<Value> = m
        .store
        .list_workers()
        .await?
        .into_iter()
        .map(|w| {
            let silent = now - w.last_seen_ms;
            let mut v = serde_json::to_value(&w).unwrap_or_default();
            if w.state != WorkerState::Gone && silent > LOST_AFTER_MS {
                v["state"] = json!("lost");
            }
            v["silent_ms"] = json!(silent);
            v
        })
        .collect();
    Ok(Json(Value::Array(workers)))
}

#[derive(Deserialize)]
struct StatsQuery {
    minutes: Option<u32>,
}

/// The overview: invocations per minute (of creation) and current status over the last
/// `minutes` (60 by default, at most 1440), each pool's queue, and the workers heard from lately.
async fn stats(
    State(m): State<Arc<Management>>,
    q: Result<Query<StatsQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query(q)?;
    let minutes = q.minutes.unwrap_or(60);
    if !(1..=1440).contains(&minutes) {
        return Err(bad_request(format!("minutes={minutes} is out of range: give 1 to 1440 (a day)")));
    }
    let now = now_ms();
    // Whole minutes: the current one and the `minutes - 1` before it.
    let since = (now / 60_000 - (minutes as i64 - 1)) * 60_000;
    let per_minute = m.store.count_per_minute(since, now + 60_000).await?;
    let mut queues = Vec::new();
    for pool in m.invoker.pools().await? {
        // Declared once (as an invoke would): reading a missing queue makes the broker close
        // a channel, which lapin logs as an error at every poll. One pool the broker cannot
        // tell about does not hide the rest of the overview.
        let read = async {
            m.invoker.ensure_pool(&pool).await.map_err(|e| e.to_string())?;
            m.transport.queue_stats(&pool).await.map_err(|e| e.to_string())
        };
        let q = match read.await {
            Ok(s) => json!({"pool": pool, "ready": s.messages, "consumers": s.consumers}),
            Err(e) => json!({"pool": pool, "ready": null, "consumers": null, "error": e}),
        };
        queues.push(q);
    }
    let workers_online = m
        .store
        .list_workers()
        .await?
        .iter()
        .filter(|w| w.state != WorkerState::Gone && now - w.last_seen_ms <= LOST_AFTER_MS)
        .count();
    Ok(Json(json!({
        "since_ms": since,
        "now_ms": now,
        "per_minute": per_minute,
        "queues": queues,
        "workers_online": workers_online,
    })))
}

#[derive(Deserialize)]
struct ListQuery {
    function: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

async fn list_invocations(
    State(m): State<Arc<Management>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query(q)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            bad_request(format!(
                "status {s:?} is not one of queued, running, succeeded, failed, timed_out, dead, cancelled"
            ))
        })?),
    };
    let filter = InvocationFilter { function: q.function, status, limit: q.limit.unwrap_or(50).min(1000) };
    let list = m.store.list_invocations(&filter).await?;
    Ok(Json(Value::Array(list.iter().map(|i| view(i, None, None)).collect())))
}

#[derive(Deserialize)]
struct DeadQuery {
    pool: Option<String>,
    limit: Option<usize>,
}

async fn pools_for(m: &Management, pool: Option<String>) -> ApiResult<Vec<String>> {
    match pool {
        Some(p) if valid_name(&p) => Ok(vec![p]),
        Some(p) => Err(bad_request(format!("{p:?} is not a pool name"))),
        None => Ok(m.invoker.pools().await?),
    }
}

async fn list_dead(
    State(m): State<Arc<Management>>,
    q: Result<Query<DeadQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query(q)?;
    let pools = pools_for(&m, q.pool).await?;
    let mut counts = serde_json::Map::new();
    for p in &pools {
        counts.insert(p.clone(), json!(m.transport.dead_count(p).await.map_err(Error::from)?));
    }
    let items = m.invoker.dead_letters(&pools, q.limit.unwrap_or(100).min(1000)).await?;
    Ok(Json(json!({"counts": counts, "items": items})))
}

#[derive(Deserialize)]
struct ReplayBody {
    #[serde(default)]
    ids: Vec<Uuid>,
    #[serde(default)]
    all: bool,
    pool: Option<String>,
    limit: Option<usize>,
}

async fn replay_dead(
    State(m): State<Arc<Management>>,
    body: Result<Json<ReplayBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(b) =
        body.map_err(|e| json_rejected(e, "send {\"ids\": [\"<invocation id>\", ...]} or {\"all\": true}"))?;
    if b.ids.is_empty() && !b.all {
        return Err(bad_request("say which dead letters to replay: {\"ids\": [...]} or {\"all\": true}"));
    }
    let pools = pools_for(&m, b.pool).await?;
    let ids = (!b.all).then_some(b.ids.as_slice());
    let report = m.invoker.replay(&pools, ids, b.limit.unwrap_or(10_000).min(10_000)).await?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}
