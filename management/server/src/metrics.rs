//! Management's metrics, served at `GET /metrics` in the Prometheus text format.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use warren_service::metrics::{CounterVec, GaugeVec, HistogramVec, StoreLatency, LATENCY_BUCKETS};

use warren_transport::Transport;

pub struct Metrics {
    /// Invocations recorded and confirmed by the broker, by function.
    pub invocations_accepted: CounterVec,
    pub http_requests: CounterVec,
    pub http_duration: HistogramVec,
    pub store: StoreLatency,
    /// Time from publishing an invocation to the broker's confirm (shared with the tasks that
    /// await the confirms of synchronous invokes).
    pub publish: std::sync::Arc<HistogramVec>,
    queue_depth: GaugeVec,
    queue_consumers: GaugeVec,
    dead_depth: GaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            invocations_accepted: CounterVec::new(
                "warren_invocations_accepted_total",
                "Invocations accepted (recorded, and confirmed by the broker), by function.",
                &["function"],
            ),
            http_requests: CounterVec::new(
                "warren_http_requests_total",
                "HTTP requests answered, by method, route and status.",
                &["method", "route", "status"],
            ),
            http_duration: HistogramVec::new(
                "warren_http_request_duration_seconds",
                "Time to answer HTTP requests, by route.",
                &["route"],
                LATENCY_BUCKETS,
            ),
            store: StoreLatency::default(),
            publish: std::sync::Arc::new(HistogramVec::new(
                "warren_broker_publish_seconds",
                "Time from publishing an invocation's message to the broker's confirm.",
                &[],
                LATENCY_BUCKETS,
            )),
            queue_depth: GaugeVec::new(
                "warren_queue_depth",
                "Messages ready in a pool's queue, read when scraped.",
                &["pool"],
            ),
            queue_consumers: GaugeVec::new(
                "warren_queue_consumers",
                "Consumers (worker channels) on a pool's queue, read when scraped.",
                &["pool"],
            ),
            dead_depth: GaugeVec::new(
                "warren_dead_letters",
                "Messages in a pool's dead-letter queue, read when scraped.",
                &["pool"],
            ),
        }
    }
}

impl Metrics {
    /// Counts one answered request. Unmatched paths share one route label, so that scans of
    /// random paths cannot grow the registry without bound.
    pub fn http_request(&self, method: &Method, route: Option<&str>, status: StatusCode, took: Duration) {
        let route = route.unwrap_or("unmatched");
        let method = match *method {
            Method::GET | Method::POST | Method::PUT | Method::DELETE | Method::HEAD | Method::PATCH => method.as_str(),
            _ => "other",
        };
        self.http_requests.inc(&[method, route, status.as_str()]);
        self.http_duration.observe_duration(&[route], took);
    }

    /// The text exposition, with the depths of `pools` read from the broker now (a pool the
    /// broker cannot answer for is left out).
    pub async fn render(&self, pools: &[String], transport: &dyn Transport) -> String {
        for pool in pools {
            if let Ok(stats) = transport.queue_stats(pool).await {
                self.queue_depth.set(&[pool], stats.messages as i64);
                self.queue_consumers.set(&[pool], stats.consumers as i64);
            }
            if let Ok(n) = transport.dead_count(pool).await {
                self.dead_depth.set(&[pool], n as i64);
            }
        }
        let mut out = String::new();
        self.invocations_accepted.render(&mut out);
        self.http_requests.render(&mut out);
        self.http_duration.render(&mut out);
        self.store.0.render(&mut out);
        self.publish.render(&mut out);
        self.queue_depth.render(&mut out);
        self.queue_consumers.render(&mut out);
        self.dead_depth.render(&mut out);
        out
    }
}
