//! Management's metrics, served at `GET /metrics` in the OpenMetrics text format.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use warren_service::metrics::{
    latency_histogram, latency_histograms, render, Counter, EncodeLabelSet, Family, Gauge, Histogram, Histograms,
    Registry, StoreLatency,
};
use warren_transport::Transport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabel {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndedLabel {
    ended: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

pub struct Metrics {
    registry: Registry,
    /// Invocations recorded and confirmed by the broker, by function.
    invocations_accepted: Family<FunctionLabel, Counter>,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: Histograms<RouteLabel>,
    pub store: StoreLatency,
    /// Time from publishing an invocation to the broker's confirm (a handle the tasks that
    /// await the confirms of synchronous invokes share).
    pub publish: Histogram,
    queue_depth: Family<PoolLabel, Gauge>,
    queue_consumers: Family<PoolLabel, Gauge>,
    dead_depth: Family<PoolLabel, Gauge>,
    /// Rows retention's cleanup removed, by kind.
    retention_removed: Family<KindLabel, Counter>,
    retention_runs: Counter,
    /// Completion notices received, by what became of them.
    notices: Family<ResultLabel, Counter>,
    /// Synchronous waits, by how they ended.
    sync_waits: Family<EndedLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let invocations_accepted = Family::default();
        registry.register(
            "warren_invocations_accepted",
            "Invocations accepted (recorded, and confirmed by the broker), by function",
            invocations_accepted.clone(),
        );
        let http_requests = Family::default();
        registry.register(
            "warren_http_requests",
            "HTTP requests answered, by method, route and status",
            http_requests.clone(),
        );
        let http_duration = latency_histograms();
        registry.register(
            "warren_http_request_duration_seconds",
            "Time to answer HTTP requests, by route",
            http_duration.clone(),
        );
        let store = StoreLatency::registered(&mut registry);
        let publish = latency_histogram();
        registry.register(
            "warren_broker_publish_seconds",
            "Time from publishing an invocation's message to the broker's confirm",
            publish.clone(),
        );
        let queue_depth = Family::default();
        registry.register(
            "warren_queue_depth",
            "Messages ready in a pool's queue, read when scraped",
            queue_depth.clone(),
        );
        let queue_consumers = Family::default();
        registry.register(
            "warren_queue_consumers",
            "Consumers (worker channels) on a pool's queue, read when scraped",
            queue_consumers.clone(),
        );
        let dead_depth = Family::default();
        registry.register(
            "warren_dead_letters",
            "Messages in a pool's dead-letter queue, read when scraped",
            dead_depth.clone(),
        );
        let retention_removed = Family::default();
        registry.register(
            "warren_retention_removed",
            "What retention's cleanup removed on this instance, by kind (invocations, log_lines, batches, versions, ticks)",
            retention_removed.clone(),
        );
        let retention_runs = Counter::default();
        registry.register("warren_retention_runs", "Cleanups this instance ran", retention_runs.clone());
        let notices = Family::default();
        registry.register(
            "warren_completion_notices",
            "Workers' completion notices received, by result: woke (a waiting synchronous invoke), late (nobody waits for it any more), undecodable",
            notices.clone(),
        );
        let sync_waits = Family::default();
        registry.register(
            "warren_sync_waits",
            "Synchronous invokes' waits, by how they ended: notice (the worker's), deadline (none came in time), publish_failed; a client that leaves first is not counted",
            sync_waits.clone(),
        );
        Metrics {
            registry,
            retention_removed,
            retention_runs,
            notices,
            sync_waits,
            invocations_accepted,
            http_requests,
            http_duration,
            store,
            publish,
            queue_depth,
            queue_consumers,
            dead_depth,
        }
    }
}

impl Metrics {
    /// Counts `n` invocations of `function` accepted.
    pub fn accepted(&self, function: &str, n: u64) {
        self.invocations_accepted.get_or_create(&FunctionLabel { function: function.to_string() }).inc_by(n);
    }

    /// Counts one cleanup and what it removed, by kind.
    pub fn retention_removed(&self, removed: &[(&'static str, u64)]) {
        self.retention_runs.inc();
        for &(kind, n) in removed {
            self.retention_removed.get_or_create(&KindLabel { kind }).inc_by(n);
        }
    }

    /// Counts one completion notice received: `woke`, `late` or `undecodable`.
    pub fn notice(&self, result: &'static str) {
        self.notices.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts one synchronous wait ended: `notice`, `deadline` or `publish_failed`.
    pub fn sync_wait(&self, ended: &'static str) {
        self.sync_waits.get_or_create(&EndedLabel { ended }).inc();
    }

    /// Counts one answered request. Unmatched paths share one route label, so that scans of
    /// random paths cannot grow the registry without bound.
    pub fn http_request(&self, method: &Method, route: Option<&str>, status: StatusCode, took: Duration) {
        let route = route.unwrap_or("unmatched").to_string();
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::HEAD => "HEAD",
            Method::PATCH => "PATCH",
            _ => "other",
        };
        self.http_duration.get_or_create(&RouteLabel { route: route.clone() }).observe(took.as_secs_f64());
        self.http_requests.get_or_create(&RequestLabels { method, route, status: status.as_u16() }).inc();
    }

    /// The text exposition, with the depths of `pools` read from the broker now (a pool the
    /// broker cannot answer for is left out).
    pub async fn render(&self, pools: &[String], transport: &dyn Transport) -> String {
        for pool in pools {
            let label = PoolLabel { pool: pool.clone() };
            if let Ok(stats) = transport.queue_stats(pool).await {
                self.queue_depth.get_or_create(&label).set(stats.messages as i64);
                self.queue_consumers.get_or_create(&label).set(stats.consumers as i64);
            }
            if let Ok(n) = transport.dead_count(pool).await {
                self.dead_depth.get_or_create(&label).set(n as i64);
            }
        }
        render(&self.registry)
    }
}
