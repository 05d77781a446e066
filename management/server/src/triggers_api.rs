//! The API of batches, timers and output deliveries.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | /api/batches?function=F[&then=G] | body: NDJSON (streamed; default) or a JSON array (`Content-Type: application/json`) → 201 + the batch |
//! | GET  | /api/batches[?limit=N] | newest first, with counts per status |
//! | GET  | /api/batches/{id} | total, counts per status, state, follow-up |
//! | POST | /api/batches/{id}/cancel[?running=true] | queued items are not run; running ones finish, or are stopped with running=true |
//! | GET  | /api/batches/{id}/results[?after=ID][&limit=N] | items' outcomes in id order (paging) |
//! | GET  | /api/timers | functions with a timer, next and last tick |
//! | GET  | /api/invocations/{id}/deliveries | forwards of its result, and how they went |
//! | POST | /api/invocations/{id}/deliveries/retry | failed forwards are tried again |

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use warren_wire::time::now_ms;

use crate::batch::{self, Format};
use crate::management::Management;
use crate::reply::{bad_request, id_from, not_found, query, ApiError, ApiResult};
use crate::views::bytes_value;

/// Largest JSON-array batch body (NDJSON bodies are streamed and have no overall limit).
pub const MAX_JSON_BATCH_BYTES: usize = 256 << 20;

pub fn routes() -> Router<Arc<Management>> {
    Router::new()
        .route("/api/batches", post(submit).get(list))
        .route("/api/batches/{id}", get(show))
        .route("/api/batches/{id}/cancel", post(cancel))
        .route("/api/batches/{id}/results", get(results))
        .route("/api/timers", get(timers))
        .route("/api/invocations/{id}/deliveries", get(deliveries))
        .route("/api/invocations/{id}/deliveries/retry", post(retry_deliveries))
}

#[derive(Deserialize)]
struct SubmitQuery {
    function: Option<String>,
    then: Option<String>,
    /// Each item is `{"key": "...", "input": ...}`.
    keyed: Option<bool>,
}

async fn submit(
    State(m): State<Arc<Management>>,
    q: Result<Query<SubmitQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let q = query(q)?;
    let function = q.function.filter(|f| !f.is_empty()).ok_or_else(|| {
        bad_request("say which function runs the items: POST /api/batches?function=NAME[&then=FOLLOW_UP], body = NDJSON (one JSON item per line) or a JSON array")
    })?;
    let json_array = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.starts_with("application/json"))
        .unwrap_or(false);
    let format = if json_array { Format::JsonArray } else { Format::Ndjson };
    // A JSON array is read whole: bound it. NDJSON is streamed line by line.
    let mut seen = 0usize;
    let stream = body.into_data_stream().map(move |part| {
        let part = part.map_err(|e| e.to_string())?;
        seen += part.len();
        if json_array && seen > MAX_JSON_BATCH_BYTES {
            return Err(format!(
                "a JSON-array batch is limited to {MAX_JSON_BATCH_BYTES} bytes; send larger batches as NDJSON (Content-Type: application/x-ndjson), which is streamed"
            ));
        }
        Ok(part)
    });
    // The submission runs on its own task: a client that goes away ends it between two chunks
    // (its body stops), never in the middle of one.
    let then = q.then.filter(|t| !t.is_empty());
    let keyed = q.keyed.unwrap_or(false);
    let submitted = m.batches.submit(function, then, (format, keyed), stream).await?;
    match submitted {
        Ok(s) => {
            let mut v = batch::to_json(&s.batch);
            if keyed {
                v["repeated"] = json!(s.repeated);
            }
            Ok((StatusCode::CREATED, Json(v)).into_response())
        }
        Err(e) => {
            let Some(id) = e.batch else { return Err(ApiError::from(e.error)) };
            // Say why, and what was kept: the items before the failure are submitted and run,
            // so the advice is to send the rest, not the whole body again (the error's own
            // text, without the generic "nothing was accepted, retry later" of a 503).
            let reason = e.error.to_string();
            let (status, code, _) = ApiError::from(e.error).parts();
            let (n, r) = (e.accepted, e.repeated);
            let message = if keyed {
                // Keys make a resubmission safe: the items already taken are not run twice.
                format!(
                    "{reason}; the {} items before it were taken ({n} submitted as batch {id}, {r} repeats of keys used before): send the whole batch again once that is mended; its keys keep those items from running twice",
                    n + r
                )
            } else if n > 0 {
                format!(
                    "{reason}; the first {n} items were submitted as batch {id} and will run (see GET /api/batches/{id}; cancel them with POST /api/batches/{id}/cancel): send only the items after them again, as a new batch"
                )
            } else {
                format!("{reason}; no item was submitted (batch {id} is empty): send the batch again")
            };
            Ok((
                status,
                Json(json!({"error": {"code": code, "message": message}, "batch": id, "accepted": e.accepted, "repeated": e.repeated})),
            )
                .into_response())
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<u32>,
}

async fn list(State(m): State<Arc<Management>>, q: Result<Query<ListQuery>, QueryRejection>) -> ApiResult<Json<Value>> {
    let q = query(q)?;
    let batches = m.store.list_batches(q.limit.unwrap_or(50).min(1000)).await?;
    Ok(Json(json!({"batches": batches.iter().map(batch::to_json).collect::<Vec<_>>()})))
}

fn batch_id(p: Result<Path<String>, PathRejection>) -> ApiResult<Uuid> {
    id_from(p).map_err(|_| bad_request("that is not a batch id (a UUID)"))
}

async fn show(State(m): State<Arc<Management>>, id: Result<Path<String>, PathRejection>) -> ApiResult<Json<Value>> {
    let id = batch_id(id)?;
    let b = m.store.get_batch(id).await?.ok_or_else(|| not_found(format!("no batch {id}")))?;
    Ok(Json(batch::to_json(&b)))
}

#[derive(Deserialize, Default)]
struct CancelQuery {
    /// Stop the items running now too (else they finish).
    running: Option<bool>,
}

async fn cancel(
    State(m): State<Arc<Management>>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<CancelQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let id = batch_id(id)?;
    let q = query(q)?;
    let b = m.batches.cancel_batch(id).await?;
    let mut v = batch::to_json(&b);
    if q.running.unwrap_or(false) {
        // Its queued items are cancelled; the running ones (no more than the workers' run
        // slots) are cancelled one by one, then their workers told.
        let mut stopped = Vec::new();
        loop {
            let running = m.store.batch_running(id, 1000).await?;
            let mut cancelled = 0;
            for item in &running {
                if m.store.cancel_invocation(*item, now_ms()).await? == Some(true) {
                    stopped.push(*item);
                    cancelled += 1;
                }
            }
            if running.len() < 1000 || cancelled == 0 {
                break;
            }
        }
        if !stopped.is_empty() {
            crate::cancel::tell_workers(&*m.store, &*m.transport, &stopped).await?;
        }
        tracing::info!(batch = %id, stopped = stopped.len(), "running items of a cancelled batch stopped");
        let b = m.store.get_batch(id).await?.unwrap_or(b);
        v = batch::to_json(&b);
        v["stopped"] = json!(stopped.len());
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
struct ResultsQuery {
    after: Option<Uuid>,
    limit: Option<u32>,
}

async fn results(
    State(m): State<Arc<Management>>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<ResultsQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let id = batch_id(id)?;
    let q = query(q)?;
    if m.store.get_batch(id).await?.is_none() {
        return Err(not_found(format!("no batch {id}")));
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    // A page ends at `limit` items or before the result that would take it past
    // RESULT_PAGE_BYTES, whichever comes first (results may be megabytes each).
    let page = m.store.batch_results(id, q.after, limit, batch::RESULT_PAGE_BYTES).await?;
    let bytes: u64 = page.iter().map(|i| i.result.as_ref().map_or(0, Vec::len) as u64).sum();
    let more = page.len() as u32 == limit || bytes >= batch::RESULT_PAGE_BYTES;
    let next = if more { page.last().map(|i| i.id) } else { None };
    let items: Vec<Value> = page
        .iter()
        .map(|i| {
            json!({"id": i.id, "status": i.status,
                   "result": i.result.as_deref().map(|r| bytes_value(r).0), "error": i.error})
        })
        .collect();
    Ok(Json(json!({"items": items, "next_after": next})))
}

async fn timers(State(m): State<Arc<Management>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"timers": m.timers.list().await?})))
}

async fn deliveries(
    State(m): State<Arc<Management>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = id_from(id)?;
    if m.store.get_invocation(id).await?.is_none() {
        return Err(not_found(format!("no invocation {id}")));
    }
    Ok(Json(json!({"deliveries": m.store.list_deliveries(id).await?})))
}

async fn retry_deliveries(
    State(m): State<Arc<Management>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = id_from(id)?;
    if m.store.get_invocation(id).await?.is_none() {
        return Err(not_found(format!("no invocation {id}")));
    }
    let n = m.store.retry_deliveries(id, now_ms()).await?;
    Ok(Json(json!({"retried": n})))
}
