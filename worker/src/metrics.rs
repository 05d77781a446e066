//! A worker's metrics, served in the OpenMetrics text format on `--metrics-addr` (off by
//! default).

use std::time::Duration;

use warren_service::metrics::{
    render, Counter, EncodeLabelSet, Family, Gauge, Histogram, Histograms, Registry, StoreLatency, CONTENT_TYPE,
};

/// Buckets of invocation durations, in seconds: 5 ms to 15 minutes.
const DURATION_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS.iter().copied())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabel {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    function: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLabels {
    pool: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SentLabel {
    sent: &'static str,
}

pub struct WorkerMetrics {
    registry: Registry,
    /// Final outcomes stored by this worker, by function and status.
    invocations: Family<OutcomeLabels, Counter>,
    /// Run time of attempts (claim to outcome), by function.
    duration: Histograms<FunctionLabel>,
    /// Failed attempts given another attempt, by function.
    retries: Family<FunctionLabel, Counter>,
    /// Messages this worker sent to a dead-letter queue, by pool and reason.
    dead_letters: Family<DeadLabels, Counter>,
    pub store: StoreLatency,
    in_flight: Gauge,
    /// Completion notices to waiting synchronous invokes, by whether the broker took them.
    notices: Family<SentLabel, Counter>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let invocations = Family::default();
        registry.register(
            "warren_worker_invocations",
            "Invocation outcomes stored by this worker, by function and status",
            invocations.clone(),
        );
        let duration: Histograms<FunctionLabel> = Family::new_with_constructor(duration_histogram);
        registry.register(
            "warren_worker_invocation_duration_seconds",
            "Time from claim to outcome of each attempt run here, by function",
            duration.clone(),
        );
        let retries = Family::default();
        registry.register(
            "warren_worker_retries",
            "Failed attempts scheduled for another attempt, by function",
            retries.clone(),
        );
        let dead_letters = Family::default();
        registry.register(
            "warren_worker_dead_letters",
            "Messages dead-lettered by this worker, by pool and reason",
            dead_letters.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("warren_worker_in_flight", "Invocations running now (holding a run slot)", in_flight.clone());
        let notices = Family::default();
        registry.register(
            "warren_worker_completion_notices",
            "Completion notices to waiting synchronous invokes, by sent: true, or false (the broker was unreachable; the waiter reads the outcome at its deadline)",
            notices.clone(),
        );
        let store = StoreLatency::registered(&mut registry);
        WorkerMetrics { registry, invocations, duration, retries, dead_letters, store, in_flight, notices }
    }
}

impl WorkerMetrics {
    /// An outcome stored.
    pub fn stored(&self, function: &str, status: &'static str) {
        self.invocations.get_or_create(&OutcomeLabels { function: function.to_string(), status }).inc();
    }

    /// An attempt's run time, from its claim to its outcome.
    pub fn ran(&self, function: &str, took: Duration) {
        self.duration.get_or_create(&FunctionLabel { function: function.to_string() }).observe(took.as_secs_f64());
    }

    /// A failed attempt given another.
    pub fn retried(&self, function: &str) {
        self.retries.get_or_create(&FunctionLabel { function: function.to_string() }).inc();
    }

    /// A completion notice, sent or not.
    pub fn notice(&self, sent: bool) {
        self.notices.get_or_create(&SentLabel { sent: if sent { "true" } else { "false" } }).inc();
    }

    /// A message sent to a pool's dead-letter queue, and why.
    pub fn dead_lettered(&self, pool: &str, reason: &'static str) {
        self.dead_letters.get_or_create(&DeadLabels { pool: pool.to_string(), reason }).inc();
    }

    pub fn render(&self, in_flight: i64) -> String {
        self.in_flight.set(in_flight);
        render(&self.registry)
    }
}

/// Serves `GET /metrics` (the page `render` makes) and `GET /healthz` on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let page = move || {
        let render = render.clone();
        async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render()) }
    };
    let app = axum::Router::new().route("/metrics", get(page)).route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
