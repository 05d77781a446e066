//! Time as Warren stores and sends it: milliseconds since the Unix epoch (`i64`).

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
