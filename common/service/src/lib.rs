//! What every Warren process shares, whatever its role.
//!
//! - [`telemetry`]: the log subscriber the binaries install.
//! - [`shutdown`]: the stop signal (Ctrl-C, SIGTERM, Ctrl-Break).
//! - [`metrics`]: counters, gauges and histograms in the Prometheus text format.
//! - [`retry`]: waiting between tries, with exponential backoff.
//! - [`secret`]: sealing and opening secret settings.
//! - [`host`]: this machine's name.
//! - [`redact`]: passwords out of printed URLs.

pub mod host;
pub mod metrics;
pub mod redact;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
