//! Azure Functions custom handlers: an invocation sent as the Azure Functions host sends it
//! (`POST /{function}` with `{"Data": …, "Metadata": …}`, or the HTTP request itself when it
//! is forwarded), and the handler's answer made Warren's outcome.
//!
//! The outcome's result is `{"Outputs": {…}, "ReturnValue": …}`: management answers HTTP
//! triggers from it, and `rabbitMQ` outputs pick their message out of it. The handler's
//! `Logs` become the invocation's log lines, after those it printed.

use base64::Engine as _;
use serde_json::{json, Map, Value};
use warren_wire::invocation::{LogLine, Status};
use warren_wire::manifest::{AzureFunction, AzureTrigger};
use warren_wire::message::InvocationMessage;
use warren_wire::schedule::rfc3339;
use warren_wire::time::now_ms;

use crate::handler::{Answer, Outcome};
use crate::http;
use crate::process::RunOutput;

/// The request for one invocation.
pub(crate) fn request(az: &AzureFunction, msg: &InvocationMessage) -> http::Request {
    let payload: &[u8] = &msg.payload;
    if az.trigger_type == AzureTrigger::Http {
        let req = http_request(payload);
        if az.forward {
            // An input given through Warren's own API has no URL: the function's own path.
            let route = az.route_or(&msg.function);
            let own = if route.contains('{') { format!("/api/{}", msg.function) } else { format!("/api/{route}") };
            return forwarded(&req, &own);
        }
        let mut data = req.clone();
        if let Some(o) = data.as_object_mut() {
            o.remove("BodyBase64");
        }
        let mut metadata = Map::new();
        for k in ["Query", "Headers", "Params"] {
            metadata.insert(k.to_string(), req.get(k).cloned().unwrap_or_else(|| json!({})));
        }
        // Route parameters are also binding data of their own, as the host gives them.
        if let Some(params) = req.get("Params").and_then(Value::as_object) {
            for (k, v) in params {
                metadata.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        return invoke(az, msg, data, metadata);
    }
    let (data, mut metadata) = match az.trigger_type {
        AzureTrigger::Timer => (timer_info(payload), Map::new()),
        _ => (message_value(payload), Map::new()),
    };
    if !msg.headers.is_empty() {
        let headers: Map<String, Value> = msg.headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        metadata.insert("Headers".into(), Value::Object(headers));
    }
    invoke(az, msg, data, metadata)
}

fn invoke(az: &AzureFunction, msg: &InvocationMessage, data: Value, mut metadata: Map<String, Value>) -> http::Request {
    metadata.insert(
        "sys".into(),
        json!({"MethodName": msg.function, "UtcNow": rfc3339(now_ms()), "RandGuid": msg.id.to_string()}),
    );
    let body = json!({"Data": {az.trigger.as_str(): data}, "Metadata": metadata});
    http::Request {
        method: "POST".into(),
        target: format!("/{}", msg.function),
        headers: vec![("content-type".into(), "application/json".into())],
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

/// The request object of an HTTP trigger: what management sent, or, for an input given
/// through Warren's own invoke API, a POST carrying it as its body.
fn http_request(payload: &[u8]) -> Value {
    if let Ok(v) = serde_json::from_slice::<Value>(payload) {
        if v.get("Method").is_some_and(Value::is_string) && v.get("Url").is_some_and(Value::is_string) {
            return v;
        }
    }
    let (body, base64) = match std::str::from_utf8(payload) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(payload), true),
    };
    json!({"Url": "", "Method": "POST", "Query": {}, "Headers": {}, "Params": {}, "Body": body, "BodyBase64": base64})
}

/// The request as it came to management, for a handler that takes it forwarded (to
/// `default_target` when it came with no URL).
fn forwarded(req: &Value, default_target: &str) -> http::Request {
    let url = req.get("Url").and_then(Value::as_str).unwrap_or("");
    // The path and query of the URL: from the first '/' after the scheme and authority.
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let target = match rest.find('/') {
        Some(i) => rest[i..].to_string(),
        None => default_target.to_string(),
    };
    let mut headers = Vec::new();
    if let Some(h) = req.get("Headers").and_then(Value::as_object) {
        for (k, v) in h {
            let value = match v {
                Value::Array(vs) => vs.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            headers.push((k.clone(), value));
        }
    }
    let text = req.get("Body").and_then(Value::as_str).unwrap_or("");
    let body = if req.get("BodyBase64").and_then(Value::as_bool) == Some(true) {
        base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default()
    } else {
        text.as_bytes().to_vec()
    };
    http::Request {
        method: req.get("Method").and_then(Value::as_str).unwrap_or("GET").to_string(),
        target,
        headers,
        body,
    }
}

/// A timer trigger's data, as the host describes a tick (`TimerInfo`), from Warren's tick.
fn timer_info(payload: &[u8]) -> Value {
    let tick: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    let Some(at) = tick.get("tick").and_then(Value::as_str) else { return message_value(payload) };
    json!({
        "Schedule": {"AdjustForDST": true},
        "ScheduleStatus": {
            "Last": tick.get("last").cloned().unwrap_or(Value::Null),
            "Next": tick.get("next").cloned().unwrap_or(Value::Null),
            "LastUpdated": at,
        },
        "IsPastDue": tick.get("past_due").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// A message's body as trigger data: its JSON when it is JSON, else its text (base64 when it
/// is not text).
fn message_value(payload: &[u8]) -> Value {
    if let Ok(v) = serde_json::from_slice::<Value>(payload) {
        return v;
    }
    match std::str::from_utf8(payload) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
    }
}

/// The handler's answer as the invocation's outcome.
pub(crate) fn outcome(az: &AzureFunction, out: Outcome, attempt: i32, max_logs: usize) -> RunOutput {
    let mut logs = out.logs;
    let failed = |error: String, logs| RunOutput { status: Status::Failed, result: None, error: Some(error), logs };
    let response = match out.answer {
        Ok(Answer::Http(r)) => r,
        Ok(Answer::Bytes(_)) => return failed("the custom handler answered outside HTTP".into(), logs),
        Err((status, error)) => return RunOutput { status, result: None, error: Some(error), logs },
    };
    if az.forward {
        let name = az.http_output.clone().unwrap_or_else(|| "res".into());
        let headers: Map<String, Value> = response.headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let mut res = json!({"statusCode": response.status, "headers": headers});
        match std::str::from_utf8(&response.body) {
            Ok(text) => res["body"] = json!(text),
            Err(_) => {
                res["body"] = json!(base64::engine::general_purpose::STANDARD.encode(&response.body));
                res["bodyBase64"] = json!(true);
            }
        }
        let result = if name == "$return" {
            json!({"Outputs": {}, "ReturnValue": res})
        } else {
            json!({"Outputs": {name: res}, "ReturnValue": null})
        };
        return RunOutput { status: Status::Succeeded, result: serde_json::to_vec(&result).ok(), error: None, logs };
    }
    let shown = || String::from_utf8_lossy(&response.body[..response.body.len().min(500)]).into_owned();
    if !(200..300).contains(&response.status) {
        return failed(format!("the custom handler answered HTTP {}: {}", response.status, shown()), logs);
    }
    let answer: Value = match serde_json::from_slice(&response.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return failed(
                format!(
                    "the custom handler's answer is not a JSON object with Outputs, Logs and ReturnValue: {}",
                    shown()
                ),
                logs,
            )
        }
    };
    if let Some(lines) = answer.get("Logs").and_then(Value::as_array) {
        for line in lines {
            if logs.len() >= max_logs {
                break;
            }
            let text = line.as_str().map(str::to_string).unwrap_or_else(|| line.to_string());
            logs.push(LogLine { attempt, seq: logs.len() as i32, ts_ms: now_ms(), line: text });
        }
    }
    let outputs = match answer.get("Outputs") {
        Some(o @ Value::Object(_)) => o.clone(),
        _ => json!({}),
    };
    let result = json!({"Outputs": outputs, "ReturnValue": answer.get("ReturnValue").cloned().unwrap_or(Value::Null)});
    RunOutput { status: Status::Succeeded, result: serde_json::to_vec(&result).ok(), error: None, logs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_request_keeps_its_path_query_headers_and_body() {
        let req = json!({"Url": "http://warren:7070/api/echo/a/b?x=1", "Method": "PUT",
            "Headers": {"X-Test": ["yes"]}, "Body": "aGk=", "BodyBase64": true});
        let r = forwarded(&req, "/api/echo");
        assert_eq!((r.method.as_str(), r.target.as_str(), r.body.as_slice()), ("PUT", "/api/echo/a/b?x=1", &b"hi"[..]));
        assert_eq!(r.headers, vec![("X-Test".to_string(), "yes".to_string())]);
        assert_eq!(forwarded(&http_request(b"in"), "/api/echo").target, "/api/echo");
    }

    #[test]
    fn a_tick_becomes_timer_info() {
        let info = timer_info(br#"{"tick": "2026-12-04T02:00:00Z", "next": "2026-12-05T02:00:00Z", "past_due": true}"#);
        assert_eq!(info["ScheduleStatus"]["Next"], "2026-12-05T02:00:00Z");
        assert_eq!(info["IsPastDue"], true);
        assert_eq!(info["Schedule"]["AdjustForDST"], true);
    }

    #[test]
    fn an_input_from_the_invoke_api_arrives_as_a_post_body() {
        let req = http_request(b"{\"name\": \"Ada\"}");
        assert_eq!((req["Method"].as_str(), req["Body"].as_str()), (Some("POST"), Some("{\"name\": \"Ada\"}")));
        assert_eq!(message_value(b"plain"), json!("plain"));
        assert_eq!(message_value(b"{\"a\": 1}"), json!({"a": 1}));
    }
}
