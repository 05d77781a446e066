//! The management API as the CLI uses it: one client for every command, one place where URLs
//! are built, the key is sent and errors are worded.
//!
//! Each method is one endpoint (see management's `openapi.json`) and answers its JSON body;
//! a status of 400 or more is an error carrying the API's own message.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

/// A client of one management API, sending one key (if any) on every request.
pub(crate) struct Client {
    base: Url,
    http: reqwest::Client,
    /// `Bearer KEY`, marked sensitive (kept out of debug output).
    auth: Option<reqwest::header::HeaderValue>,
}

/// What an invoke answered: 200 with the outcome, or 202 with the invocation id.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Value,
}

/// How an invoke waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wait {
    /// For the outcome, up to this long.
    Sync(Duration),
    /// Only until the broker has the invocation.
    Async,
    /// Asynchronous, to run this many seconds from now.
    In(u64),
    /// Asynchronous, to run at this time (RFC 3339, or milliseconds since the epoch).
    At(String),
}

impl Client {
    /// A client of the API at `base` (`http://host:port`, with or without a path prefix).
    pub(crate) fn new(base: &str, key: Option<&SecretString>) -> anyhow::Result<Client> {
        let base = Url::parse(base).map_err(|e| {
            anyhow::anyhow!(
                "{base:?} is not a URL ({e}); give the management API's address, e.g. http://127.0.0.1:7070"
            )
        })?;
        let auth = match key.map(|k| k.expose_secret().trim()).filter(|k| !k.is_empty()) {
            Some(key) => {
                let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| anyhow::anyhow!("the API key holds characters a header cannot carry"))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Client { base, http: reqwest::Client::new(), auth })
    }

    /// The request for `segments` under the base URL (each segment encoded as needed).
    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        let req = self.http.request(method, url);
        match &self.auth {
            Some(auth) => req.header(reqwest::header::AUTHORIZATION, auth.clone()),
            None => req,
        }
    }

    fn get(&self, segments: &[&str]) -> RequestBuilder {
        self.request(Method::GET, segments)
    }

    fn post(&self, segments: &[&str]) -> RequestBuilder {
        self.request(Method::POST, segments)
    }

    /// Sends a request; any answer comes back with its status, the body as JSON (a string when
    /// it is not JSON).
    async fn answer(&self, req: RequestBuilder) -> anyhow::Result<Answer> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow::anyhow!("cannot reach Warren at {}: is it running? (`warren up` starts one here)", self.base)
            } else {
                anyhow::anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }

    /// Sends a request; a status of 400 or more is an error with the API's message.
    async fn send(&self, req: RequestBuilder) -> anyhow::Result<Answer> {
        let a = self.answer(req).await?;
        if a.status >= 400 {
            anyhow::bail!("{} (HTTP {})", error_message(&a.body), a.status);
        }
        Ok(a)
    }

    async fn json(&self, req: RequestBuilder) -> anyhow::Result<Value> {
        Ok(self.send(req).await?.body)
    }

    /// `POST /api/functions`: publishes a package (`.tar.gz` or `.zip`); an Azure Functions
    /// app's functions on `pool`.
    pub(crate) async fn publish(&self, package: Vec<u8>, pool: Option<&str>) -> anyhow::Result<Value> {
        let mut req = self.post(&["api", "functions"]).body(package);
        if let Some(pool) = pool {
            req = req.query(&[("pool", pool)]);
        }
        self.json(req).await
    }

    /// `GET /api/functions`.
    pub(crate) async fn functions(&self) -> anyhow::Result<Value> {
        self.json(self.get(&["api", "functions"])).await
    }

    /// `GET /api/functions/{name}`: one function and its versions.
    pub(crate) async fn function(&self, name: &str) -> anyhow::Result<Value> {
        self.json(self.get(&["api", "functions", name])).await
    }

    /// `POST /api/functions/{name}/activate`: an earlier (or later) version made active.
    pub(crate) async fn activate(&self, name: &str, version: i64) -> anyhow::Result<Value> {
        self.json(self.post(&["api", "functions", name, "activate"]).json(&json!({"version": version}))).await
    }

    /// `POST /api/functions/{name}/pause`, for `for_secs` if given.
    pub(crate) async fn pause(&self, name: &str, for_secs: Option<u64>) -> anyhow::Result<Value> {
        let body = match for_secs {
            Some(s) => json!({"for_secs": s}),
            None => json!({}),
        };
        self.json(self.post(&["api", "functions", name, "pause"]).json(&body)).await
    }

    /// `POST /api/invocations/{id}/cancel`.
    pub(crate) async fn cancel(&self, id: &str) -> anyhow::Result<Value> {
        self.json(self.post(&["api", "invocations", id, "cancel"])).await
    }

    /// `POST /api/functions/{name}/resume`.
    pub(crate) async fn resume(&self, name: &str) -> anyhow::Result<Value> {
        self.json(self.post(&["api", "functions", name, "resume"])).await
    }

    /// `DELETE /api/functions/{name}`.
    pub(crate) async fn delete_function(&self, name: &str) -> anyhow::Result<Value> {
        self.json(self.request(Method::DELETE, &["api", "functions", name])).await
    }

    /// `POST /api/functions/{name}/invoke`.
    pub(crate) async fn invoke(
        &self,
        name: &str,
        input: Vec<u8>,
        wait: Wait,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut req = self.post(&["api", "functions", name, "invoke"]).body(input);
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        let req = match wait {
            Wait::Async => req.query(&[("mode", "async")]),
            Wait::In(secs) => req.query(&[("mode", "async".to_string()), ("delay_ms", (secs * 1000).to_string())]),
            Wait::At(ref at) => req.query(&[("mode", "async"), ("run_at", at.as_str())]),
            Wait::Sync(timeout) => req
                .query(&[("mode", "sync".to_string()), ("timeout_ms", timeout.as_millis().to_string())])
                .timeout(timeout + Duration::from_secs(10)),
        };
        self.send(req).await
    }

    /// `POST /api/functions/{name}/invocations`: NDJSON, one asynchronous invocation per line.
    /// Any answer comes back (a 503 lists what was queued and what was not).
    pub(crate) async fn invoke_lines(&self, name: &str, ndjson: Vec<u8>, keyed: bool) -> anyhow::Result<Answer> {
        let req = self.post(&["api", "functions", name, "invocations"]);
        let req = if keyed { req.query(&[("keyed", "true")]) } else { req };
        let req = req.header(reqwest::header::CONTENT_TYPE, "application/x-ndjson").body(ndjson);
        self.answer(req).await
    }

    /// `GET /api/invocations/{id}`: status, result, attempts and log lines.
    pub(crate) async fn invocation(&self, id: &str) -> anyhow::Result<Value> {
        self.json(self.get(&["api", "invocations", id])).await
    }

    /// `POST /api/keys`.
    pub(crate) async fn create_key(&self, name: &str, level: &str, function: Option<&str>) -> anyhow::Result<Value> {
        let body = json!({"name": name, "level": level, "function": function});
        self.json(self.post(&["api", "keys"]).json(&body)).await
    }

    /// `GET /api/keys`.
    pub(crate) async fn keys(&self) -> anyhow::Result<Value> {
        self.json(self.get(&["api", "keys"])).await
    }

    /// `DELETE /api/keys/{id}`.
    pub(crate) async fn revoke_key(&self, id: &str) -> anyhow::Result<Value> {
        self.json(self.request(Method::DELETE, &["api", "keys", id])).await
    }

    /// `GET /api/functions/{name}/settings`.
    pub(crate) async fn settings(&self, function: &str) -> anyhow::Result<Value> {
        self.json(self.get(&["api", "functions", function, "settings"])).await
    }

    /// `PUT /api/functions/{name}/settings/{key}`.
    pub(crate) async fn set_setting(
        &self,
        function: &str,
        name: &str,
        value: &str,
        secret: bool,
    ) -> anyhow::Result<Value> {
        let body = json!({"value": value, "secret": secret});
        self.json(self.request(Method::PUT, &["api", "functions", function, "settings", name]).json(&body)).await
    }

    /// `DELETE /api/functions/{name}/settings/{key}`.
    pub(crate) async fn remove_setting(&self, function: &str, name: &str) -> anyhow::Result<Value> {
        self.json(self.request(Method::DELETE, &["api", "functions", function, "settings", name])).await
    }

    /// `GET /api/workers`.
    /// `GET /api/retention`: the defaults, each function's policy, the last cleanup.
    pub(crate) async fn retention(&self) -> anyhow::Result<Value> {
        self.json(self.get(&["api", "retention"])).await
    }

    pub(crate) async fn workers(&self) -> anyhow::Result<Value> {
        self.json(self.get(&["api", "workers"])).await
    }

    /// `GET /api/dead-letters`.
    pub(crate) async fn dead_letters(&self, pool: Option<&str>, limit: usize) -> anyhow::Result<Value> {
        let mut req = self.get(&["api", "dead-letters"]).query(&[("limit", limit)]);
        if let Some(p) = pool {
            req = req.query(&[("pool", p)]);
        }
        self.json(req).await
    }

    /// `POST /api/dead-letters/replay`.
    pub(crate) async fn replay(&self, ids: &[String], all: bool, pool: Option<&str>) -> anyhow::Result<Value> {
        let body = json!({"ids": ids, "all": all, "pool": pool});
        self.json(self.post(&["api", "dead-letters", "replay"]).json(&body)).await
    }

    /// `POST /api/batches`: the items as a streamed body (NDJSON, or a JSON array).
    pub(crate) async fn submit_batch(
        &self,
        function: &str,
        then: Option<&str>,
        keyed: bool,
        content_type: &str,
        items: reqwest::Body,
    ) -> anyhow::Result<Value> {
        let mut req = self.post(&["api", "batches"]).query(&[("function", function)]);
        if let Some(t) = then {
            req = req.query(&[("then", t)]);
        }
        if keyed {
            req = req.query(&[("keyed", "true")]);
        }
        self.json(req.header(reqwest::header::CONTENT_TYPE, content_type).body(items)).await
    }

    /// `GET /api/batches/{id}`.
    pub(crate) async fn batch(&self, id: &str) -> anyhow::Result<Value> {
        self.json(self.get(&["api", "batches", id])).await
    }

    /// `GET /api/batches`.
    pub(crate) async fn batches(&self, limit: u32) -> anyhow::Result<Value> {
        self.json(self.get(&["api", "batches"]).query(&[("limit", limit)])).await
    }

    /// `POST /api/batches/{id}/cancel`.
    pub(crate) async fn cancel_batch(&self, id: &str, running: bool) -> anyhow::Result<Value> {
        let req = self.post(&["api", "batches", id, "cancel"]);
        self.json(if running { req.query(&[("running", "true")]) } else { req }).await
    }

    /// `GET /api/timers`.
    pub(crate) async fn timers(&self) -> anyhow::Result<Value> {
        self.json(self.get(&["api", "timers"])).await
    }

    /// `GET /api/invocations/{id}/deliveries`.
    pub(crate) async fn deliveries(&self, id: &str) -> anyhow::Result<Value> {
        self.json(self.get(&["api", "invocations", id, "deliveries"])).await
    }

    /// `POST /api/invocations/{id}/deliveries/retry`.
    pub(crate) async fn retry_deliveries(&self, id: &str) -> anyhow::Result<Value> {
        self.json(self.post(&["api", "invocations", id, "deliveries", "retry"])).await
    }
}

/// The API's message in an error answer (`{"error": {"message": ...}}`), or the body itself.
pub(crate) fn error_message(body: &Value) -> String {
    body.pointer("/error/message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_built_under_the_base_and_encoded() {
        let c = Client::new("http://127.0.0.1:7070/warren/", None).unwrap();
        let req = c.get(&["api", "functions", "a b"]).build().unwrap();
        assert_eq!(req.url().as_str(), "http://127.0.0.1:7070/warren/api/functions/a%20b");
        let c = Client::new("http://127.0.0.1:7070", None).unwrap();
        assert_eq!(c.get(&["api", "keys"]).build().unwrap().url().as_str(), "http://127.0.0.1:7070/api/keys");
        assert!(Client::new("not a url", None).is_err());
    }

    #[test]
    fn the_key_goes_in_a_sensitive_header() {
        let key = SecretString::from("wrn_0123");
        let c = Client::new("http://h", Some(&key)).unwrap();
        let req = c.get(&["x"]).build().unwrap();
        let auth = &req.headers()[reqwest::header::AUTHORIZATION];
        assert_eq!(auth.to_str().unwrap(), "Bearer wrn_0123");
        assert!(auth.is_sensitive());
    }
}
