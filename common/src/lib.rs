//! Warren's shared parts, used by both roles.
//!
//! - [`message`]: what travels on the queues (MessagePack, versioned).
//! - [`manifest`]: a function's `function.toml`.
//! - [`schedule`]: cron schedules of timer triggers.
//! - [`package`]: packing, checking and unpacking function packages.
//! - [`store`]: the store interface and its SQLite, PostgreSQL and SQL Server backends.
//! - [`transport`]: the queue interface, over AMQP (lapin) or in process.
//! - [`topology`]: the exchange and queue names both roles declare.
//! - [`metrics`]: counters, gauges and histograms in the Prometheus text format.

pub mod manifest;
pub mod message;
pub mod metrics;
pub mod package;
pub mod schedule;
pub mod secret;
pub mod store;
pub mod topology;
pub mod transport;

/// Milliseconds since the Unix epoch: the one time format of the store and the wire.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A short name for this machine, for worker ids and logs.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
