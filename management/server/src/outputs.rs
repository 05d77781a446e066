//! Output deliveries: forwarding results to the `[[outputs]]` of a function's manifest.
//!
//! A worker decides which outputs apply (`when` and the JSON-pointer predicate) and stores them
//! `pending` in the same transaction as the final outcome. Every management instance runs
//! [`Outputs::deliver`]: it leases due deliveries (a compare-and-set in the store, so two instances do
//! not take the same one), POSTs or publishes them, and records each attempt. A failed attempt
//! is retried with exponential backoff up to the output's `max_attempts`, then recorded
//! `failed`; `POST /api/invocations/{id}/deliveries/retry` makes it pending again.
//! Delivery is at-least-once: a receiver may see a result twice (an instance that dies after
//! sending and before recording), never zero times while a retry is possible.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use warren_service::shutdown::pace;
use warren_store::{DeliveryRecord, DeliveryStatus, Invocation, Store};
use warren_transport::peer::Peers;
use warren_wire::manifest::{Output, OutputKind};
use warren_wire::time::now_ms;

use crate::catalog::Catalog;
use crate::config::Config;

const POLL_EVERY: Duration = Duration::from_millis(200);
/// A delivery taken by an instance is its own for this long.
const LEASE_MS: i64 = 60_000;
const BATCH: u32 = 64;
const CONCURRENCY: usize = 16;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF_MS: i64 = 500;
const MAX_BACKOFF_MS: i64 = 5 * 60_000;

/// The output deliveries of one management instance.
pub(crate) struct Outputs {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    peers: Peers,
    /// The broker of `amqp` outputs that name none (Warren's own, in the distributed mode).
    amqp_url: Option<String>,
}

impl Outputs {
    pub(crate) fn new(store: Arc<dyn Store>, catalog: Arc<Catalog>, peers: Peers, config: &Config) -> Arc<Outputs> {
        Arc::new(Outputs { store, catalog, peers, amqp_url: config.amqp_url.clone() })
    }

    /// The delivery loop, until `stop`.
    pub(crate) async fn deliver(self: Arc<Self>, stop: CancellationToken) {
        let http = match reqwest::Client::builder().timeout(HTTP_TIMEOUT).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the HTTP client; outputs will not be delivered");
                return;
            }
        };
        while pace(POLL_EVERY, &stop).await {
            let due = match self.store.take_deliveries(now_ms(), LEASE_MS, BATCH).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read pending deliveries yet");
                    continue;
                }
            };
            if due.is_empty() {
                continue;
            }
            futures_util::stream::iter(due)
                .for_each_concurrent(CONCURRENCY, |d| {
                    let (me, http) = (&self, &http);
                    async move { me.deliver_one(http, d).await }
                })
                .await;
        }
    }

    async fn deliver_one(&self, http: &reqwest::Client, d: DeliveryRecord) {
        let mut attempts = d.attempts + 1;
        let (status, error, next_ms) = match self.attempt(http, &d).await {
            Ok(()) => (DeliveryStatus::Delivered, None, now_ms()),
            Err(Failure::Never(why)) => (DeliveryStatus::Failed, Some(why), now_ms()),
            Err(Failure::Later(why, max)) if attempts >= max => (DeliveryStatus::Failed, Some(why), now_ms()),
            Err(Failure::Later(why, max)) => {
                if max == i32::MAX {
                    // Our own store's trouble: not an attempt at the receiver.
                    attempts = d.attempts;
                }
                (DeliveryStatus::Pending, Some(why), now_ms() + backoff(attempts.max(1)))
            }
        };
        if status != DeliveryStatus::Delivered {
            tracing::warn!(
                invocation = %d.invocation,
                output = d.output + 1,
                attempts,
                status = %status,
                error = error.as_deref().unwrap_or(""),
                "output delivery failed"
            );
        }
        if let Err(e) =
            self.store.record_delivery(d.invocation, d.output, status, attempts, error.as_deref(), next_ms).await
        {
            // The lease runs out and the delivery is taken again: at least once.
            tracing::warn!(invocation = %d.invocation, error = %e, "cannot record a delivery attempt");
        }
    }

    async fn attempt(&self, http: &reqwest::Client, d: &DeliveryRecord) -> Result<(), Failure> {
        // Store trouble is not the receiver's fault: it does not use up the output's attempts.
        let inv = self
            .store
            .get_invocation(d.invocation)
            .await
            .map_err(|e| Failure::Later(e.to_string(), i32::MAX))?
            .ok_or_else(|| Failure::Never("the invocation is gone".into()))?;
        let manifest = self
            .catalog
            .version_manifest(&inv.function, inv.version)
            .await
            .map_err(|e| Failure::Later(e.to_string(), i32::MAX))?;
        let output = manifest
            .outputs
            .get(d.output as usize)
            .ok_or_else(|| Failure::Never(format!("version {} has no output {}", inv.version, d.output + 1)))?;
        self.send(http, output, &inv).await.map_err(|e| Failure::Later(e, output.max_attempts as i32))
    }

    async fn send(&self, http: &reqwest::Client, o: &Output, inv: &Invocation) -> Result<(), String> {
        let (body, content_type) = match &o.body {
            Some(pointer) => part_of(inv, pointer)?,
            None => body_of(inv),
        };
        let facts = [
            ("x-warren-invocation", inv.id.to_string()),
            ("x-warren-function", inv.function.clone()),
            ("x-warren-version", inv.version.to_string()),
            ("x-warren-status", inv.status.to_string()),
        ];
        match o.kind {
            OutputKind::Http => {
                let url = o.url.as_deref().unwrap_or_default();
                let mut req = http.post(url).header("content-type", content_type).body(body);
                for (k, v) in &facts {
                    req = req.header(*k, v);
                }
                for (k, v) in &o.headers {
                    req = req.header(k.as_str(), self.header_value(&inv.function, v).await?);
                }
                let resp = req.send().await.map_err(|e| format!("POST {url}: {e}"))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("POST {url}: the receiver answered {}", resp.status()))
                }
            }
            OutputKind::Amqp => {
                let from_setting = match &o.url_setting {
                    Some(setting) => {
                        Some(self.catalog.setting_value(&inv.function, setting).await.map_err(|e| e.to_string())?)
                    }
                    None => None,
                };
                let url =
                    from_setting.as_deref().or(o.url.as_deref()).or(self.amqp_url.as_deref()).ok_or_else(|| {
                        "this output names no broker (url) and management has none of its own (embedded mode)"
                            .to_string()
                    })?;
                let exchange = o.exchange.as_deref().unwrap_or_default();
                let routing_key =
                    self.catalog.expand(&inv.function, &o.routing_key).await.map_err(|e| e.to_string())?;
                // A blocked or unreachable broker must not hold up every other delivery.
                tokio::time::timeout(
                    HTTP_TIMEOUT,
                    self.peers.publish(url, exchange, &routing_key, &body, content_type, &facts),
                )
                .await
                .map_err(|_| format!("the broker did not confirm within {} s", HTTP_TIMEOUT.as_secs()))?
            }
        }
    }

    /// A header value as written, or, for `"$NAME"`, the function's setting NAME (a secret one
    /// unsealed): tokens stay out of the manifest.
    async fn header_value(&self, function: &str, written: &str) -> Result<String, String> {
        if let Some(literal) = written.strip_prefix("$$") {
            // `$$x` stands for a literal `$x`.
            return Ok(format!("${literal}"));
        }
        let Some(name) = written.strip_prefix('$').filter(|n| !n.is_empty()) else { return Ok(written.to_string()) };
        self.catalog.setting_value(function, name).await.map_err(|e| e.to_string())
    }
}

enum Failure {
    /// Worth another attempt, up to this many in all.
    Later(String, i32),
    /// No attempt can succeed.
    Never(String),
}

fn backoff(attempts: i32) -> i64 {
    (FIRST_BACKOFF_MS << (attempts - 1).clamp(0, 20)).min(MAX_BACKOFF_MS)
}

/// What is sent of a result when the output picks a part of it (`body`): a string as its text,
/// anything else as JSON.
fn part_of(inv: &Invocation, pointer: &str) -> Result<(Vec<u8>, &'static str), String> {
    let result: serde_json::Value = inv
        .result
        .as_deref()
        .and_then(|r| serde_json::from_slice(r).ok())
        .ok_or("the result is not JSON, so the output's body pointer finds nothing")?;
    match result.pointer(pointer) {
        Some(serde_json::Value::String(text)) => {
            let json = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            Ok((text.clone().into_bytes(), if json { "application/json" } else { "text/plain" }))
        }
        Some(other) => Ok((serde_json::to_vec(other).unwrap_or_default(), "application/json")),
        None => Err(format!("the result has nothing at {pointer}")),
    }
}

/// What is sent: the result as it is, or (no result: a failure) a JSON description.
fn body_of(inv: &Invocation) -> (Vec<u8>, &'static str) {
    match &inv.result {
        Some(r) if serde_json::from_slice::<serde::de::IgnoredAny>(r).is_ok() => (r.clone(), "application/json"),
        Some(r) => (r.clone(), "application/octet-stream"),
        None => (
            serde_json::to_vec(&serde_json::json!({
                "invocation": inv.id, "function": inv.function, "status": inv.status, "error": inv.error,
            }))
            .unwrap_or_default(),
            "application/json",
        ),
    }
}
