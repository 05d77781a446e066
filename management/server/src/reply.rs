//! How the API answers an error: [`ApiError`], a status with a JSON body
//! `{"error": {"code": "...", "message": "..."}}` whose message says what to do; and the
//! helpers that turn a request's bad parts into one. Every route module answers through these.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::json;
use uuid::Uuid;
use warren_store::StoreError;

use crate::error::Error;

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }
}

impl ApiError {
    /// Status, code and message.
    pub(crate) fn parts(self) -> (StatusCode, &'static str, String) {
        (self.status, self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The body may have been refused unread: the connection ends with this answer, so
            // that the client does not send its next request on a connection the server is
            // closing (it would see the connection cut instead of an answer).
            r.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        r
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match &e {
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Error::Store(StoreError::Conflict(_)) => (StatusCode::CONFLICT, "conflict"),
            Error::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Error::Transport(_) => (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let mut message = e.to_string();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            message.push_str("; nothing was accepted, retry later");
        }
        ApiError::new(status, code, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Error::Store(e).into()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// A 400 with this message.
pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A 404 with this message.
pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

/// A query string, or a 400 saying what is wrong with it.
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(q)| q).map_err(|e| bad_request(e.body_text()))
}

/// The request body, or a JSON 413/400 that says what the limit is.
pub(crate) fn body_or_error(body: Result<Bytes, BytesRejection>, limit: u64, what: &str) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the {what} is over the limit of {limit} bytes; nothing was stored"),
            )
        } else {
            bad_request(format!("cannot read the {what}: {}", e.body_text()))
        }
    })
}

/// A body that could not be read whole (`axum::body::to_bytes`): a 413 when it is over `limit`
/// (`then` says what to do about it), else a 400 saying why.
pub(crate) fn unread_body(e: axum::Error, limit: usize, what: &str, then: &str) -> ApiError {
    let e = e.into_inner();
    if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the {what} is over the limit of {limit} bytes{then}"),
        )
    } else {
        bad_request(format!("cannot read the {what}: {e}"))
    }
}

/// A JSON body that could not be taken: a 413 when it is over the body limit, else a 400 with
/// `help` (what to send).
pub(crate) fn json_rejected(e: axum::extract::rejection::JsonRejection, help: &str) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the body is over the limit; {help}"))
    } else {
        bad_request(format!("{}; {help}", e.body_text()))
    }
}

/// A path parameter, or a 400.
pub(crate) fn name_from(p: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    p.map(|Path(n)| n).map_err(|e| bad_request(e.body_text()))
}

/// An invocation id in the path, or a 400.
pub(crate) fn id_from(p: Result<Path<String>, PathRejection>) -> ApiResult<Uuid> {
    let s = name_from(p)?;
    Uuid::parse_str(&s).map_err(|_| bad_request(format!("{s:?} is not an invocation id (a UUID)")))
}
