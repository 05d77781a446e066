//! Metrics on prometheus-client: families keyed by typed label sets (structs, so a label can
//! neither be misspelt nor forgotten), updated without a mutex, rendered in the OpenMetrics
//! text format. Each role keeps a [`Registry`] of its own; management serves it at
//! `GET /metrics`, a worker on `--metrics-addr`.

use std::future::Future;
use std::time::{Duration, Instant};

pub use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;

/// The content type of a rendered registry.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets, in seconds: 1 ms to 60 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A family of histograms whose buckets a constructor sets.
pub type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// A histogram with [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// Latency histograms, one per label set.
pub fn latency_histograms<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Family::new_with_constructor(latency_histogram)
}

/// A store call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    pub op: &'static str,
}

/// Store call latency by operation, kept by both roles.
#[derive(Clone)]
pub struct StoreLatency(Histograms<Op>);

impl StoreLatency {
    /// A new family, registered in `registry` as `warren_store_latency_seconds`.
    pub fn registered(registry: &mut Registry) -> StoreLatency {
        let family = latency_histograms();
        registry.register("warren_store_latency_seconds", "Time taken by store calls, by operation", family.clone());
        StoreLatency(family)
    }

    /// Runs a store call and records how long it took.
    pub async fn time<T>(&self, op: &'static str, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = call.await;
        self.observe(op, started.elapsed());
        out
    }

    pub fn observe(&self, op: &'static str, took: Duration) {
        self.0.get_or_create(&Op { op }).observe(took.as_secs_f64());
    }
}

/// The registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Things {
        function: String,
        status: &'static str,
    }

    #[test]
    fn renders_typed_label_sets_in_the_text_format() {
        let mut registry = Registry::default();
        let counter = Family::<Things, Counter>::default();
        registry.register("t", "Things", counter.clone());
        let gauge = Gauge::<i64>::default();
        registry.register("t_depth", "Depth", gauge.clone());
        let latency = StoreLatency::registered(&mut registry);
        counter.get_or_create(&Things { function: "a\"b".into(), status: "ok" }).inc_by(3);
        gauge.set(-3);
        latency.observe("claim", Duration::from_millis(2));
        let page = render(&registry);
        assert!(page.contains("t_total{function=\"a\\\"b\",status=\"ok\"} 3\n"), "{page}");
        assert!(page.contains("t_depth -3\n"), "{page}");
        assert!(page.contains("warren_store_latency_seconds_bucket{le=\"0.0025\",op=\"claim\"} 1\n"), "{page}");
        assert!(page.contains("warren_store_latency_seconds_count{op=\"claim\"} 1\n"), "{page}");
        assert!(page.ends_with("# EOF\n"), "{page}");
    }
}
