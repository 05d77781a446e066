//! How invocations look in the API's answers: inputs and results as JSON when they are JSON,
//! as text when they are text, else as base64.

use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;
use warren_store::{AttemptRecord, Invocation, LogLine, Status};
use warren_wire::time::now_ms;

/// Bytes as JSON: the JSON value itself when they are JSON, a string when UTF-8, else base64
/// under a separate key.
pub(crate) fn bytes_value(b: &[u8]) -> (Value, Option<String>) {
    if let Ok(v) = serde_json::from_slice::<Value>(b) {
        return (v, None);
    }
    match std::str::from_utf8(b) {
        Ok(s) => (Value::String(s.to_string()), None),
        Err(_) => (Value::Null, Some(base64(b))),
    }
}

fn base64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[derive(Serialize)]
struct InvocationView<'a> {
    id: Uuid,
    function: &'a str,
    version: i64,
    status: Status,
    attempts: i32,
    input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_base64: Option<String>,
    result: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_base64: Option<String>,
    error: Option<&'a str>,
    worker: Option<&'a str>,
    created_ms: i64,
    started_ms: Option<i64>,
    finished_ms: Option<i64>,
    duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logs: Option<&'a [LogLine]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt_history: Option<&'a [AttemptRecord]>,
}

pub fn view(inv: &Invocation, logs: Option<&[LogLine]>, attempts: Option<&[AttemptRecord]>) -> Value {
    let (input, input_base64) = bytes_value(&inv.payload);
    let (result, result_base64) = inv.result.as_deref().map(bytes_value).unwrap_or((Value::Null, None));
    let mut v = serde_json::to_value(InvocationView {
        id: inv.id,
        function: &inv.function,
        version: inv.version,
        status: inv.status,
        attempts: inv.attempts,
        input,
        input_base64,
        result,
        result_base64,
        error: inv.error.as_deref(),
        worker: inv.worker.as_deref().filter(|w| !w.is_empty()),
        created_ms: inv.created_ms,
        started_ms: inv.started_ms,
        finished_ms: inv.finished_ms,
        duration_ms: inv.started_ms.zip(inv.finished_ms).map(|(s, f)| f - s).filter(|_| inv.status.is_final()),
        logs,
        attempt_history: attempts,
    })
    .unwrap_or_default();
    if let Some(at) = inv.run_at_ms {
        // A scheduled invocation: `scheduled` until its time comes, `queued` after (the record
        // itself is `queued` throughout: cancellable, never removed, counted as open).
        v["run_at_ms"] = json!(at);
        if inv.status == Status::Queued && at > now_ms() {
            v["status"] = json!("scheduled");
        }
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"\xff\xfe\x00\x01"), "//4AAQ==");
    }
}
