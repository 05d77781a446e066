//! The worker and its parts. What it does with a delivery is in `pipeline`; how it consumes,
//! beats and drains is in `consume`.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use uuid::Uuid;
use warren_store::{Claim, NewInvocation, Outcome, Store, StoreError, WorkerInfo, WorkerState};
use warren_transport::Transport;
use warren_wire::time::now_ms;

use crate::cancels::Cancels;
use crate::config::WorkerConfig;
use crate::groups::Groups;
use crate::handler::Handlers;
use crate::metrics::WorkerMetrics;
use crate::paused::Paused;
use crate::settings::SettingsCache;
use crate::versions::Versions;

/// The version of this build, shown in the workers' list.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct Worker {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) cfg: WorkerConfig,
    pub(crate) versions: Versions,
    pub(crate) settings: SettingsCache,
    pub(crate) handlers: Handlers,
    /// Messages held: waiting for a run slot, running, or having their outcome stored.
    pub(crate) in_flight: AtomicI32,
    /// Invocations holding a run slot: what the registry and the gauge show against concurrency.
    pub(crate) running_now: AtomicI32,
    /// Invocations running here now. After a channel break the broker redelivers what the old
    /// channel held while it may still be running here: such a copy waits its turn.
    pub(crate) running: DashMap<Uuid, ()>,
    pub metrics: WorkerMetrics,
    /// The functions paused now: their invocations are set aside in their hold.
    pub(crate) paused: Paused,
    /// Invocations cancelled (as management told this worker) and the runs here to stop.
    pub(crate) cancels: Arc<Cancels>,
    /// The holds this worker has declared on the broker, with when it last marked each held in
    /// the store.
    pub(crate) holds_marked: DashMap<String, std::time::Instant>,
    /// The group commits, once [`Worker::run`] started them.
    pub(crate) groups: OnceLock<Groups>,
    started_ms: i64,
}

impl Worker {
    pub fn new(store: Arc<dyn Store>, transport: Arc<dyn Transport>, cfg: WorkerConfig) -> Arc<Self> {
        Arc::new(Worker {
            versions: Versions::new(store.clone(), cfg.cache_dir.clone(), cfg.cache_max_bytes, cfg.package_limits),
            settings: SettingsCache::new(store.clone(), cfg.secret_key.clone()),
            store,
            transport,
            cfg,
            handlers: Handlers::default(),
            in_flight: AtomicI32::new(0),
            running_now: AtomicI32::new(0),
            running: DashMap::new(),
            paused: Paused::default(),
            cancels: Arc::new(Cancels::default()),
            holds_marked: DashMap::new(),
            metrics: WorkerMetrics::default(),
            groups: OnceLock::new(),
            started_ms: now_ms(),
        })
    }

    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    /// The metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(self.running_now.load(Ordering::Relaxed) as i64)
    }

    /// What the workers' list shows of this one.
    pub(crate) fn info(&self, state: WorkerState) -> WorkerInfo {
        WorkerInfo {
            id: self.cfg.id.clone(),
            host: warren_service::host::hostname(),
            pools: self.cfg.pools.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(","),
            concurrency: self.cfg.pools.iter().map(|(_, c)| *c as i32).sum(),
            in_flight: self.running_now.load(Ordering::Relaxed),
            version: VERSION.to_string(),
            started_ms: self.started_ms,
            last_seen_ms: now_ms(),
            state,
        }
    }

    /// [`Store::complete`] through the group commit when it runs (else directly).
    pub(crate) async fn complete(&self, id: Uuid, outcome: &Outcome) -> Result<bool, StoreError> {
        match self.groups.get() {
            Some(g) => g.complete(id, outcome.clone()).await,
            None => self.store.complete(id, outcome).await,
        }
    }

    /// [`Store::claim`] through the group commit when it runs (else directly).
    pub(crate) async fn claim(&self, inv: &Arc<NewInvocation>, attempt: i32) -> Result<Claim, StoreError> {
        match self.groups.get() {
            Some(g) => g.claim(inv.clone(), attempt).await,
            None => self.store.claim(inv, attempt, &self.cfg.id, now_ms()).await,
        }
    }
}
