//! Azure Functions HTTP triggers: a request to `/api/<route>` that no route of Warren's own
//! takes goes to the app function whose route takes it (`routes`), invoked synchronously with
//! the documented request object (`Url`, `Method`, `Query`, `Headers`, `Params`, `Body`), and
//! is answered from the function's `http` output binding: status, headers and body.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use warren_store::{Invocation, Status};
use warren_wire::manifest::AzureFunction;

use crate::auth::KeyFrom;
use crate::management::Management;
use crate::reply::{not_found, unread_body, ApiError};

/// Set on every answer of an app: a unique origin, as if served from a host of its own.
const APP_CSP: &str = "sandbox allow-scripts allow-forms allow-popups allow-downloads";

/// The router's fallback: an app's HTTP trigger, or the API's 404.
pub(crate) async fn serve(State(m): State<Arc<Management>>, req: Request) -> Response {
    match answer(&m, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn answer(m: &Management, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let found = match m.routes.lookup(&m.catalog, parts.method.as_str(), &path).await? {
        Ok(found) => found,
        Err(allowed) if !allowed.is_empty() => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} takes {}", allowed.join(", ")),
            ))
        }
        Err(_) => return Err(not_found("no such endpoint; the API lives under /api (see README)")),
    };
    let limit = m.config.max_payload_bytes;
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| unread_body(e, limit, "request body", ""))?;
    let host = parts.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    // Keys presented to Warren are not the function's business: `code` (Azure's key in the
    // URL), the key headers, and a bearer token that was a Warren key.
    let kept: Vec<(String, String)> = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k != "code")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut query = Map::new();
    for (k, v) in &kept {
        query.insert(k.clone(), Value::String(v.clone()));
    }
    let target = if kept.is_empty() {
        path.clone()
    } else {
        format!("{path}?{}", url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&kept).finish())
    };
    let bearer_was_key = parts.extensions.get::<KeyFrom>() == Some(&KeyFrom::Bearer);
    let mut headers: Map<String, Value> = Map::new();
    for (k, v) in &parts.headers {
        if k == "x-warren-key" || k == "x-functions-key" || (bearer_was_key && k == "authorization") {
            continue;
        }
        let value = Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned());
        match headers.entry(k.as_str()).or_insert_with(|| json!([])) {
            Value::Array(a) => a.push(value),
            other => *other = json!([value]),
        }
    }
    let (text, base64) = match std::str::from_utf8(&body) {
        Ok(t) => (t.to_string(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(&body), true),
    };
    let params: Map<String, Value> = found.params.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let mut request = json!({
        "Url": format!("http://{host}{target}"),
        "Method": parts.method.as_str(),
        "Query": query,
        "Headers": headers,
        "Params": params,
        "Body": text,
    });
    if base64 {
        request["BodyBase64"] = json!(true);
    }
    let payload = serde_json::to_vec(&request).unwrap_or_default();
    // The function's input is the whole request object: the body escaped as JSON text (or
    // base64), with the headers, can be over the limit when the body alone is not.
    if payload.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the request as the function gets it (headers, and the {}-byte body as {}) is {} bytes, over the limit of {limit} bytes",
                body.len(),
                if base64 { "base64" } else { "JSON text" },
                payload.len()
            ),
        ));
    }
    let wait = m.invoker.clamp_wait(Some(u64::MAX));
    let accepted = m.invoker.invoke(&found.function, payload.into(), Some(wait)).await?;
    match accepted.invocation {
        Some(inv) if inv.status.is_final() => Ok(http_answer(&found.azure, &inv)),
        _ => Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "id": accepted.id,
                "status": "queued",
                "message": format!("still running after the wait; read it later at /api/invocations/{}", accepted.id),
            })),
        )
            .into_response()),
    }
}

/// The HTTP answer of a finished invocation: its `http` output binding's value.
fn http_answer(az: &AzureFunction, inv: &Invocation) -> Response {
    let id = HeaderValue::from_str(&inv.id.to_string()).ok();
    let mut response = if inv.status != Status::Succeeded {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "function_failed",
            format!(
                "{} {}: {} (invocation {})",
                inv.function,
                inv.status,
                inv.error.as_deref().unwrap_or("no error recorded"),
                inv.id
            ),
        )
        .into_response()
    } else {
        let result: Value = inv.result.as_deref().and_then(|r| serde_json::from_slice(r).ok()).unwrap_or(Value::Null);
        let value = match az.http_output.as_deref() {
            Some("$return") => result.get("ReturnValue").cloned(),
            Some(name) => result.get("Outputs").and_then(|o| o.get(name)).cloned(),
            None => None,
        };
        match value {
            Some(v) => http_response(v),
            None => StatusCode::NO_CONTENT.into_response(),
        }
    };
    let h = response.headers_mut();
    if let Some(id) = id {
        h.insert("x-warren-invocation", id);
    }
    // An app's answer is served from the portal's origin: sandboxed, its scripts cannot read
    // what the portal keeps there (the signed-in key).
    h.append("content-security-policy", HeaderValue::from_static(APP_CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

/// An `http` output value as a response: `{statusCode, headers, body}` (a JSON string holding
/// one too), or any other value as a 200 body.
fn http_response(value: Value) -> Response {
    let value = match value {
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(v @ Value::Object(_)) if v.get("statusCode").is_some() || v.get("body").is_some() => v,
            _ => Value::String(s),
        },
        v => v,
    };
    let Value::Object(o) = &value else { return body_response(StatusCode::OK, &value, Vec::new()) };
    if !(o.contains_key("statusCode")
        || o.contains_key("status")
        || o.contains_key("body")
        || o.contains_key("headers"))
    {
        return body_response(StatusCode::OK, &value, Vec::new());
    }
    let code = o.get("statusCode").or_else(|| o.get("status"));
    let status = code
        .and_then(|c| c.as_u64().or_else(|| c.as_str().and_then(|s| s.parse().ok())))
        .and_then(|c| StatusCode::from_u16(c as u16).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers = Vec::new();
    for (k, v) in o.get("headers").and_then(Value::as_object).into_iter().flatten() {
        let values: Vec<String> = match v {
            Value::Array(vs) => {
                vs.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect()
            }
            Value::String(s) => vec![s.clone()],
            other => vec![other.to_string()],
        };
        for v in values {
            headers.push((k.clone(), v));
        }
    }
    let body = o.get("body").cloned().unwrap_or(Value::Null);
    if o.get("bodyBase64").and_then(Value::as_bool) == Some(true) {
        let bytes =
            body.as_str().and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()).unwrap_or_default();
        return with_headers(Response::builder().status(status).body(Body::from(bytes)), headers, None);
    }
    body_response(status, &body, headers)
}

fn body_response(status: StatusCode, body: &Value, headers: Vec<(String, String)>) -> Response {
    let (bytes, content_type) = match body {
        Value::Null => (Vec::new(), None),
        Value::String(s) => (s.clone().into_bytes(), Some("text/plain; charset=utf-8")),
        other => (serde_json::to_vec(other).unwrap_or_default(), Some("application/json")),
    };
    with_headers(Response::builder().status(status).body(Body::from(bytes)), headers, content_type)
}

fn with_headers(
    built: Result<Response, axum::http::Error>,
    headers: Vec<(String, String)>,
    default_type: Option<&str>,
) -> Response {
    let mut r = built.unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    for (k, v) in headers {
        let lower = k.to_ascii_lowercase();
        if ["content-length", "transfer-encoding", "connection"].contains(&lower.as_str()) {
            continue;
        }
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
            r.headers_mut().append(k, v);
        }
    }
    if let Some(t) = default_type {
        if !r.headers().contains_key("content-type") {
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static(if t.starts_with("text") {
                    "text/plain; charset=utf-8"
                } else {
                    "application/json"
                }),
            );
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_values_become_answers() {
        let r = http_response(json!({"statusCode": "201", "headers": {"X-A": "1"}, "body": {"ok": true}}));
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers()["content-type"], "application/json");
        let r = http_response(json!("{\"statusCode\": 404, \"body\": \"nope\"}"));
        assert_eq!(r.status(), 404);
        let r = http_response(json!("plain"));
        assert_eq!(
            (r.status().as_u16(), r.headers()["content-type"].to_str().unwrap()),
            (200, "text/plain; charset=utf-8")
        );
    }
}
