//! A worker's settings: its pools, its limits, its package cache.

use std::path::PathBuf;
use std::time::Duration;

use warren_service::secret::SecretKey;
use warren_wire::package;

use crate::process;

/// See [`WorkerConfig::prefetch_multiplier`].
pub const DEFAULT_PREFETCH_MULTIPLIER: u16 = 4;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Unique per worker process; shows in the store as the invocation's `worker`.
    pub id: String,
    /// Pools served, each with its concurrency: functions of the pool run at once.
    pub pools: Vec<(String, u16)>,
    /// Broker prefetch per pool, as a multiple of its concurrency. Above 1, messages whose
    /// outcome is being stored (which no longer hold a run slot) do not keep the next ones
    /// from starting; the price is that up to that many more messages wait here, unclaimed,
    /// instead of in the queue where an idle worker could take them.
    pub prefetch_multiplier: u16,
    /// Where unpacked packages are cached, one folder per sha256.
    pub cache_dir: PathBuf,
    pub heartbeat_every: Duration,
    /// How long a worker keeps trying to store an outcome before returning the message.
    pub store_retry_for: Duration,
    pub limits: process::Limits,
    pub package_limits: package::Limits,
    /// Size above which the least recently used unpacked packages are evicted from the cache.
    pub cache_max_bytes: u64,
    /// Opens secret settings (the key management sealed them with).
    pub secret_key: Option<SecretKey>,
}

impl WorkerConfig {
    pub fn new(pools: Vec<(String, u16)>) -> Self {
        let host = warren_service::host::hostname();
        WorkerConfig {
            id: format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::now_v7().simple().to_string()[24..]),
            pools,
            prefetch_multiplier: DEFAULT_PREFETCH_MULTIPLIER,
            cache_dir: std::env::temp_dir().join("warren-cache"),
            heartbeat_every: Duration::from_secs(5),
            store_retry_for: Duration::from_secs(30),
            limits: process::Limits::default(),
            package_limits: package::Limits::default(),
            cache_max_bytes: 2 << 30,
            secret_key: None,
        }
    }
}
