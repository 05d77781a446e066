//! A worker's metrics, served in the Prometheus text format on `--metrics-addr` (off by default).

use warren_service::metrics::{CounterVec, GaugeVec, HistogramVec, StoreLatency, LATENCY_BUCKETS};

/// Buckets of invocation durations, in seconds: 5 ms to 15 minutes.
const DURATION_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0];

pub struct WorkerMetrics {
    /// Final outcomes stored by this worker, by function and status.
    pub invocations: CounterVec,
    /// Run time of attempts (claim to outcome), by function.
    pub duration: HistogramVec,
    /// Failed attempts given another attempt, by function.
    pub retries: CounterVec,
    /// Messages this worker sent to a dead-letter queue, by pool and reason.
    pub dead_letters: CounterVec,
    pub store: StoreLatency,
    in_flight: GaugeVec,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            invocations: CounterVec::new(
                "warren_worker_invocations_total",
                "Invocation outcomes stored by this worker, by function and status.",
                &["function", "status"],
            ),
            duration: HistogramVec::new(
                "warren_worker_invocation_duration_seconds",
                "Time from claim to outcome of each attempt run here, by function.",
                &["function"],
                DURATION_BUCKETS,
            ),
            retries: CounterVec::new(
                "warren_worker_retries_total",
                "Failed attempts scheduled for another attempt, by function.",
                &["function"],
            ),
            dead_letters: CounterVec::new(
                "warren_worker_dead_letters_total",
                "Messages dead-lettered by this worker, by pool and reason.",
                &["pool", "reason"],
            ),
            store: StoreLatency(HistogramVec::new(
                "warren_store_latency_seconds",
                "Time taken by store calls, by operation.",
                &["op"],
                LATENCY_BUCKETS,
            )),
            in_flight: GaugeVec::new("warren_worker_in_flight", "Invocations running now (holding a run slot).", &[]),
        }
    }
}

impl WorkerMetrics {
    pub fn render(&self, in_flight: i64) -> String {
        self.in_flight.set(&[], in_flight);
        let mut out = String::new();
        self.invocations.render(&mut out);
        self.duration.render(&mut out);
        self.retries.render(&mut out);
        self.dead_letters.render(&mut out);
        self.in_flight.render(&mut out);
        self.store.0.render(&mut out);
        out
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
        async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render()) }
    };
    let app = axum::Router::new().route("/metrics", get(page)).route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
