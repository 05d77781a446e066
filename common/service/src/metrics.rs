//! A small metrics registry rendered in the Prometheus text format (version 0.0.4): labelled
//! counters, gauges and fixed-bucket histograms. Both roles keep one; management serves it at
//! `GET /metrics`, a worker on `--metrics-addr`.
//!
//! Updates take a short `std` mutex per family (never held across an `.await`); at Warren's
//! rates (thousands of updates a second) that costs nothing measurable, and it keeps this
//! dependency-free.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets, in seconds: 1 ms to 60 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

type Labels = Vec<String>;

fn key(labels: &[&str]) -> Labels {
    labels.iter().map(|s| s.to_string()).collect()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn label_text(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = names.iter().zip(values).map(|(n, v)| format!("{n}=\"{}\"", escape(v))).collect();
    if let Some((n, v)) = extra {
        parts.push(format!("{n}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A counter per combination of label values.
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Labels, u64>>,
}

impl CounterVec {
    pub const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        CounterVec { name, help, labels, values: Mutex::new(BTreeMap::new()) }
    }

    pub fn add(&self, labels: &[&str], n: u64) {
        if let Ok(mut v) = self.values.lock() {
            *v.entry(key(labels)).or_insert(0) += n;
        }
    }

    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1);
    }

    pub fn get(&self, labels: &[&str]) -> u64 {
        self.values.lock().ok().and_then(|v| v.get(&key(labels)).copied()).unwrap_or(0)
    }

    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        if let Ok(v) = self.values.lock() {
            for (values, n) in v.iter() {
                let _ = writeln!(out, "{}{} {n}", self.name, label_text(self.labels, values, None));
            }
        }
    }
}

/// A gauge per combination of label values.
pub struct GaugeVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Labels, i64>>,
}

impl GaugeVec {
    pub const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        GaugeVec { name, help, labels, values: Mutex::new(BTreeMap::new()) }
    }

    pub fn set(&self, labels: &[&str], n: i64) {
        if let Ok(mut v) = self.values.lock() {
            v.insert(key(labels), n);
        }
    }

    pub fn add(&self, labels: &[&str], n: i64) {
        if let Ok(mut v) = self.values.lock() {
            *v.entry(key(labels)).or_insert(0) += n;
        }
    }

    pub fn get(&self, labels: &[&str]) -> i64 {
        self.values.lock().ok().and_then(|v| v.get(&key(labels)).copied()).unwrap_or(0)
    }

    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "gauge");
        if let Ok(v) = self.values.lock() {
            for (values, n) in v.iter() {
                let _ = writeln!(out, "{}{} {n}", self.name, label_text(self.labels, values, None));
            }
        }
    }
}

#[derive(Clone, Default)]
struct Histogram {
    /// Per bucket (not cumulative; summed when rendered).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram with fixed buckets per combination of label values.
pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    values: Mutex<BTreeMap<Labels, Histogram>>,
}

impl HistogramVec {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        HistogramVec { name, help, labels, buckets, values: Mutex::new(BTreeMap::new()) }
    }

    pub fn observe(&self, labels: &[&str], value: f64) {
        let Ok(mut v) = self.values.lock() else { return };
        let h = v
            .entry(key(labels))
            .or_insert_with(|| Histogram { counts: vec![0; self.buckets.len()], ..Default::default() });
        if let Some(i) = self.buckets.iter().position(|b| value <= *b) {
            h.counts[i] += 1;
        }
        h.sum += value;
        h.count += 1;
    }

    pub fn observe_duration(&self, labels: &[&str], d: Duration) {
        self.observe(labels, d.as_secs_f64());
    }

    /// How many values were observed with these labels.
    pub fn count(&self, labels: &[&str]) -> u64 {
        self.values.lock().ok().and_then(|v| v.get(&key(labels)).map(|h| h.count)).unwrap_or(0)
    }

    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let Ok(v) = self.values.lock() else { return };
        for (values, h) in v.iter() {
            let mut cumulative = 0;
            for (b, n) in self.buckets.iter().zip(&h.counts) {
                cumulative += n;
                let le = b.to_string();
                let _ = writeln!(
                    out,
                    "{}_bucket{} {cumulative}",
                    self.name,
                    label_text(self.labels, values, Some(("le", &le)))
                );
            }
            let _ = writeln!(
                out,
                "{}_bucket{} {}",
                self.name,
                label_text(self.labels, values, Some(("le", "+Inf"))),
                h.count
            );
            let plain = label_text(self.labels, values, None);
            let _ = writeln!(out, "{}_sum{plain} {}", self.name, h.sum);
            let _ = writeln!(out, "{}_count{plain} {}", self.name, h.count);
        }
    }
}

/// Store call latency by operation, kept by both roles.
pub struct StoreLatency(pub HistogramVec);

impl Default for StoreLatency {
    fn default() -> Self {
        StoreLatency(HistogramVec::new(
            "warren_store_latency_seconds",
            "Time taken by store calls, by operation.",
            &["op"],
            LATENCY_BUCKETS,
        ))
    }
}

impl StoreLatency {
    /// Runs a store call and records how long it took.
    pub async fn time<T>(&self, op: &str, call: impl std::future::Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let out = call.await;
        self.0.observe_duration(&[op], started.elapsed());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let c = CounterVec::new("t_total", "Things.", &["function", "status"]);
        c.inc(&["a\"b", "ok"]);
        c.add(&["a\"b", "ok"], 2);
        let g = GaugeVec::new("t_depth", "Depth.", &[]);
        g.set(&[], -3);
        let h = HistogramVec::new("t_seconds", "Time.", &["op"], &[0.1, 1.0]);
        h.observe(&["x"], 0.05);
        h.observe(&["x"], 0.5);
        h.observe(&["x"], 5.0);
        let mut out = String::new();
        c.render(&mut out);
        g.render(&mut out);
        h.render(&mut out);
        let expected = "# HELP t_total Things.\n# TYPE t_total counter\nt_total{function=\"a\\\"b\",status=\"ok\"} 3\n\
# HELP t_depth Depth.\n# TYPE t_depth gauge\nt_depth -3\n\
# HELP t_seconds Time.\n# TYPE t_seconds histogram\n\
t_seconds_bucket{op=\"x\",le=\"0.1\"} 1\nt_seconds_bucket{op=\"x\",le=\"1\"} 2\nt_seconds_bucket{op=\"x\",le=\"+Inf\"} 3\n\
t_seconds_sum{op=\"x\"} 5.55\nt_seconds_count{op=\"x\"} 3\n";
        assert_eq!(out, expected);
        assert_eq!((c.get(&["a\"b", "ok"]), h.count(&["x"])), (3, 3));
    }
}
