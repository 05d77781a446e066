//! The Warren worker: consumes its pools' queues, runs each invocation, stores the outcome and
//! its log lines, then (and only then) acks the message.
//!
//! Per delivery ([`Worker::handle`]):
//! 1. decode; a message that cannot be decoded is dead-lettered with the reason and acked;
//! 2. claim the invocation in the store; one that is final already (a redelivery) is acked
//!    without running again;
//! 3. load the function version (manifest from a cache, package unpacked on disk by sha256);
//! 4. run it (built-in `echo`, or one process per invocation);
//! 5. store the outcome, retrying with backoff while the store is down; past a bound, return
//!    the message to the queue instead of acking it;
//! 6. send a completion notice if someone waits, and ack.

pub mod handler;
pub mod metrics;
pub mod process;
mod tree;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dashmap::DashMap;
use tracing::Instrument;
use warren_store::group::Grouped;
use warren_store::{Claim, NewDelivery, NewInvocation, Outcome, Status, Store, StoreError, WorkerInfo, WorkerState};
use warren_transport::{Delivery, Transport};
use warren_wire::manifest::{Manifest, Mode, RetryPolicy, Runtime};
use warren_wire::message::{
    CompletionNotice, InvocationMessage, NoticeOutcome, NOTICE_OUTCOME_MAX_BYTES, PROTOCOL_VERSION,
};
use warren_wire::package;
use warren_wire::time::now_ms;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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
    pub secret_key: Option<warren_service::secret::SecretKey>,
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

/// A loaded function version: its manifest and, for process functions, its unpacked folder.
struct Loaded {
    manifest: Manifest,
    dir: Option<PathBuf>,
    sha256: String,
}

pub struct Worker {
    store: Arc<dyn Store>,
    transport: Arc<dyn Transport>,
    cfg: WorkerConfig,
    versions: DashMap<(String, i64), Arc<Loaded>>,
    /// Messages held: waiting for a run slot, running, or having their outcome stored.
    in_flight: AtomicI32,
    /// Invocations holding a run slot: what the registry and the gauge show against concurrency.
    running_now: AtomicI32,
    started_ms: i64,
    handlers: handler::Handlers,
    /// When each cached package (by sha256) was last used, for eviction.
    last_used: DashMap<String, std::time::Instant>,
    /// Each function's settings, read at most every [`SETTINGS_TTL`].
    settings: DashMap<String, (std::time::Instant, Arc<Settings>)>,
    /// Invocations running here now. After a channel break the broker redelivers what the old
    /// channel held while it may still be running here: such a copy waits its turn.
    running: DashMap<uuid::Uuid, ()>,
    pub metrics: metrics::WorkerMetrics,
    /// The group commits, once [`Worker::run`] started them.
    groups: std::sync::OnceLock<Groups>,
}

/// Outcomes stored in one statement at most.
const GROUP_COMMIT_MAX: usize = 256;

/// Commits running at once: like the store pool's own parallelism, so that a quiet worker's
/// outcome does not wait behind another's commit.
const GROUP_COMMITS_IN_FLIGHT: usize = 4;

/// Claims made in one statement at most, and claim statements running at once. Claims commit
/// without waiting for the disk (see `SqlxStore`'s relaxed pool, sized for these and the
/// heartbeat); the deliveries that wait for a statement then go in the next one.
const GROUP_CLAIM_MAX: usize = 256;
const GROUP_CLAIMS_IN_FLIGHT: usize = 4;

/// The group commits of claims and of outcomes ([`Grouped`]), once [`Worker::run`] started them.
struct Groups {
    claims: Grouped<(Arc<NewInvocation>, i32), Claim>,
    outcomes: Grouped<(uuid::Uuid, Outcome), bool>,
}

impl Groups {
    fn start(store: Arc<dyn Store>, worker: String) -> Groups {
        let s = store.clone();
        let claims =
            Grouped::start(GROUP_CLAIM_MAX, GROUP_CLAIMS_IN_FLIGHT, move |items: Vec<(Arc<NewInvocation>, i32)>| {
                let (store, worker) = (s.clone(), worker.clone());
                async move {
                    let refs: Vec<(&NewInvocation, i32)> = items.iter().map(|(inv, a)| (&**inv, *a)).collect();
                    store.claim_many(&refs, &worker, now_ms()).await
                }
            });
        let outcomes =
            Grouped::start(GROUP_COMMIT_MAX, GROUP_COMMITS_IN_FLIGHT, move |items: Vec<(uuid::Uuid, Outcome)>| {
                let store = store.clone();
                async move { store.complete_many(&items).await }
            });
        Groups { claims, outcomes }
    }
}

/// Takes an invocation id out of [`Worker::running`] when its run ends, however it ends.
struct RunningGuard<'a> {
    map: &'a DashMap<uuid::Uuid, ()>,
    id: uuid::Uuid,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.map.remove(&self.id);
    }
}

/// A pool's run slots (its concurrency) and the number of its current consumer: a delivery
/// handed out by an earlier consumer (before a channel break) is stale.
pub struct Gate {
    slots: tokio::sync::Semaphore,
    consumer: std::sync::atomic::AtomicU64,
}

/// A pool's run slot, counted in [`Worker::running_now`] while held.
struct RunSlot<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    count: &'a AtomicI32,
}

impl Drop for RunSlot<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long an invocation run without a claim may take before it is marked `running` in the
/// store.
const RUNNING_MARK_AFTER: Duration = Duration::from_millis(250);

/// How long a function's settings are reused before they are read again.
const SETTINGS_TTL: Duration = Duration::from_secs(5);

/// A function's settings, opened: environment variables, and the secret values to keep out of
/// log lines and errors.
#[derive(Default)]
struct Settings {
    vars: Vec<(String, String)>,
    secrets: Vec<String>,
}

impl Settings {
    /// The result with each secret value replaced: a function that echoes a secret does not
    /// publish it through the API.
    fn redact_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        let mut out = bytes;
        for s in self.secrets.iter().filter(|s| s.len() >= 3) {
            let needle = s.as_bytes();
            if !out.windows(needle.len()).any(|w| w == needle) {
                continue;
            }
            let mut replaced = Vec::with_capacity(out.len());
            let mut i = 0;
            while i < out.len() {
                if out[i..].starts_with(needle) {
                    replaced.extend_from_slice(b"[secret]");
                    i += needle.len();
                } else {
                    replaced.push(out[i]);
                    i += 1;
                }
            }
            out = replaced;
        }
        out
    }

    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if s.len() >= 3 && out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[secret]");
            }
        }
        out
    }
}

/// Why a version could not be loaded: missing (poison for this message) or a passing fault.
enum LoadError {
    Missing(String),
    Broken(String),
    Unavailable(StoreError),
}

impl Worker {
    pub fn new(store: Arc<dyn Store>, transport: Arc<dyn Transport>, cfg: WorkerConfig) -> Arc<Self> {
        Arc::new(Worker {
            store,
            transport,
            cfg,
            versions: DashMap::new(),
            in_flight: AtomicI32::new(0),
            running_now: AtomicI32::new(0),
            metrics: metrics::WorkerMetrics::default(),
            started_ms: now_ms(),
            handlers: handler::Handlers::default(),
            last_used: DashMap::new(),
            settings: DashMap::new(),
            running: DashMap::new(),
            groups: std::sync::OnceLock::new(),
        })
    }

    /// [`Store::complete`] through the group commit when it runs (else directly).
    async fn complete(&self, id: uuid::Uuid, outcome: &Outcome) -> Result<bool, StoreError> {
        match self.groups.get() {
            Some(g) => g.outcomes.call((id, outcome.clone())).await,
            None => self.store.complete(id, outcome).await,
        }
    }

    /// [`Store::claim`] through the group commit when it runs (else directly).
    async fn claim(&self, inv: &Arc<NewInvocation>, attempt: i32) -> Result<Claim, StoreError> {
        match self.groups.get() {
            Some(g) => g.claims.call((inv.clone(), attempt)).await,
            None => self.store.claim(inv, attempt, &self.cfg.id, now_ms()).await,
        }
    }

    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    fn info(&self, state: WorkerState) -> WorkerInfo {
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

    /// Runs until `shutdown` turns true, then stops taking work, lets what it holds finish
    /// (up to `grace`), marks itself gone and returns. Broker and store outages are ridden
    /// out: consumers are reopened and store writes retried.
    pub async fn run(
        self: Arc<Self>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.cfg.cache_dir)
            .with_context(|| format!("cannot create the package cache {}", self.cfg.cache_dir.display()))?;
        if let Err(e) = self.store.heartbeat(&self.info(WorkerState::Running)).await {
            tracing::warn!(error = %e, "cannot register in the store yet; will keep trying");
        }
        if self.groups.get().is_none() {
            let _ = self.groups.set(Groups::start(self.store.clone(), self.cfg.id.clone()));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (pool, concurrency) in self.cfg.pools.clone() {
            tasks.spawn(self.clone().consume_loop(pool, concurrency, shutdown.clone()));
        }
        tracing::info!(worker = %self.cfg.id, pools = ?self.cfg.pools, "worker started");
        let beat = {
            let me = self.clone();
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(me.cfg.heartbeat_every) => {}
                        _ = stop.changed() => break,
                    }
                    if let Err(e) = me.store.heartbeat(&me.info(WorkerState::Running)).await {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                    me.retire_inactive_handlers().await;
                }
            })
        };
        let mut stop = shutdown.clone();
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
        tracing::info!(in_flight = self.in_flight.load(Ordering::Relaxed), "draining");
        let _ = self.store.heartbeat(&self.info(WorkerState::Draining)).await;
        // Consumers stop at the signal and wait for their in-flight invocations.
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
            tracing::warn!(
                in_flight = self.in_flight.load(Ordering::Relaxed),
                "grace period over; unfinished invocations go back to the queue"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        beat.abort();
        self.handlers.close_all();
        let _ = self.store.heartbeat(&self.info(WorkerState::Gone)).await;
        Ok(())
    }

    /// Consumes one pool until shutdown, reopening the consumer whenever it ends (broker
    /// restart, connection loss) with backoff.
    async fn consume_loop(
        self: Arc<Self>,
        pool: String,
        concurrency: u16,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let prefetch = (concurrency as u32 * self.cfg.prefetch_multiplier.max(1) as u32).min(u16::MAX as u32) as u16;
        let gate = Arc::new(Gate {
            slots: tokio::sync::Semaphore::new(concurrency.max(1) as usize),
            consumer: std::sync::atomic::AtomicU64::new(0),
        });
        // Prefetch bounds what the broker hands over, so this set never exceeds it.
        let mut running = tokio::task::JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        // The consumer in use, kept past the loop so that its held-back acks go out at the end.
        let mut last: Option<Box<dyn warren_transport::Consumer>> = None;
        'outer: while !*shutdown.borrow() {
            let opened = async {
                self.transport.declare_pool(&pool).await?;
                self.transport.consume(&pool, prefetch).await
            };
            if let Some(mut old) = last.take() {
                old.flush_acks().await;
            }
            let consumer = tokio::select! {
                c = opened => match c {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%pool, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot consume; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
                _ = shutdown.changed() => continue,
            };
            backoff = Duration::from_millis(100);
            // Deliveries of earlier consumers still waiting for a slot are now stale.
            let generation = gate.consumer.fetch_add(1, Ordering::SeqCst) + 1;
            let consumer = last.insert(consumer);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => {
                        if *shutdown.borrow() { break 'outer; }
                    }
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                    next = consumer.next() => match next {
                        Some(Ok(d)) => { running.spawn(self.clone().handle(pool.clone(), d, gate.clone(), generation)); }
                        Some(Err(e)) => {
                            tracing::warn!(%pool, error = %e, "consumer failed; reopening");
                            break;
                        }
                        None => {
                            tracing::warn!(%pool, "consumer closed (broker connection lost?); reopening");
                            break;
                        }
                    }
                }
            }
        }
        // Stopping: what runs finishes (and is stored and acked); what waits for a slot goes
        // back to the queue instead of starting now.
        gate.slots.close();
        while running.join_next().await.is_some() {}
        if let Some(mut c) = last {
            c.flush_acks().await;
        }
    }

    /// Shuts down the warm handlers of versions that are no longer their function's active one.
    async fn retire_inactive_handlers(&self) {
        for (function, version) in self.handlers.versions() {
            match self.store.get_function(&function).await {
                Ok(Some(f)) if f.active_version != version => self.handlers.close_version(&function, version),
                Ok(None) => self.handlers.close_version(&function, version),
                _ => {}
            }
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(self.running_now.load(Ordering::Relaxed) as i64)
    }

    /// Takes one delivery to its end: acked after its outcome is stored, or returned.
    pub async fn handle(self: Arc<Self>, pool: String, d: Delivery, gate: Arc<Gate>, generation: u64) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.handle_inner(&pool, d, &gate, generation).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    async fn handle_inner(&self, pool: &str, d: Delivery, gate: &Gate, generation: u64) {
        let msg = match InvocationMessage::decode(&d.body) {
            Ok(m) => m,
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(%pool, %reason, bytes = d.body.len(), "undecodable message; dead-lettering it");
                self.metrics.dead_letters.inc(&[pool, "undecodable"]);
                return self.dead_letter(pool, d, &reason).await;
            }
        };
        let span = tracing::info_span!("invocation", id = %msg.id, function = %msg.function, version = msg.version, attempt = msg.attempt);
        self.run_message(pool, msg, d, gate, generation).instrument(span).await
    }

    async fn run_message(&self, pool: &str, msg: InvocationMessage, d: Delivery, gate: &Gate, generation: u64) {
        if self.running.insert(msg.id, ()).is_some() {
            tracing::info!(
                "this invocation is already running here (a redelivery after a channel break); returning the copy"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = d.requeue().await;
            return;
        }
        let _running = RunningGuard { map: &self.running, id: msg.id };
        let inv = Arc::new(NewInvocation {
            id: msg.id,
            function: msg.function.clone(),
            version: msg.version,
            payload: msg.payload.to_vec(),
            created_ms: msg.created_ms,
        });
        let attempt = msg.attempt.max(1) as i32;
        // Waiting for a slot, the invocation is not claimed by this worker.
        let Ok(permit) = gate.slots.acquire().await else {
            tracing::debug!("stopping before this invocation started; returning it to the queue");
            let _ = d.requeue().await;
            return;
        };
        if gate.consumer.load(Ordering::SeqCst) != generation {
            // Its channel broke while it waited: the broker hands it out again (the ack could
            // not reach it anyway), so running it here would only duplicate the work.
            tracing::info!("dropping a delivery of a broken channel before running it");
            return;
        }
        self.running_now.fetch_add(1, Ordering::Relaxed);
        let slot = RunSlot { _permit: permit, count: &self.running_now };
        let claimed_at = std::time::Instant::now();
        let started_ms = now_ms();
        // A first delivery of a message management published once for a new invocation cannot
        // have an outcome yet: it runs at once, and its outcome is stored by the same guarded
        // update as any other. Every other message is claimed first (a redelivery, a retry, a
        // replay, a batch item that a cancel may have turned `cancelled`).
        let claimed = !(msg.fresh && !d.redelivered && attempt == 1);
        let claim = if claimed {
            self.with_store_retry("claim", "claim the invocation", || self.claim(&inv, attempt)).await
        } else {
            Some(Claim::Run)
        };
        match claim {
            Some(Claim::Run) => {}
            Some(Claim::AlreadyFinal(status)) => {
                tracing::info!(%status, "redelivered invocation already has its outcome; not running it again");
                self.notify(&msg, None).await;
                let _ = d.ack().await;
                return;
            }
            Some(Claim::Superseded) => {
                tracing::info!("a later attempt of this invocation is scheduled; dropping this stale copy");
                let _ = d.ack().await;
                return;
            }
            None => {
                let _ = d.requeue().await;
                return;
            }
        }

        let settings = match self.settings_for(&msg.function).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the function's settings; returning the message");
                let _ = d.requeue().await;
                return;
            }
        };
        // The loaded version, when it ran: its manifest's retry policy and outputs apply.
        let (run, ran) = match self.load(&msg.function, msg.version).await {
            Ok(loaded) => match &settings {
                Ok(settings) => {
                    let run = self.execute(&loaded, &msg, attempt, settings);
                    let mut run = if claimed { run.await } else { self.run_marked_if_long(run, &inv, attempt).await };
                    if !settings.secrets.is_empty() {
                        for l in &mut run.logs {
                            l.line = settings.redact(&l.line);
                        }
                        run.error = run.error.map(|e| settings.redact(&e));
                        run.result = run.result.map(|r| settings.redact_bytes(r));
                    }
                    (run, Some(loaded))
                }
                Err(why) => (
                    process::RunOutput {
                        status: Status::Failed,
                        result: None,
                        error: Some(why.clone()),
                        logs: Vec::new(),
                    },
                    None,
                ),
            },
            Err(LoadError::Missing(reason)) => {
                // No worker could ever run it: keep the message for inspection, record why.
                if self.transport.dead_letter(pool, d.body.clone(), &reason).await.is_err() {
                    let _ = d.requeue().await;
                    return;
                }
                self.metrics.dead_letters.inc(&[pool, "missing_version"]);
                let dead =
                    process::RunOutput { status: Status::Dead, result: None, error: Some(reason), logs: Vec::new() };
                (dead, None)
            }
            Err(LoadError::Broken(reason)) => {
                let failed =
                    process::RunOutput { status: Status::Failed, result: None, error: Some(reason), logs: Vec::new() };
                (failed, None)
            }
            Err(LoadError::Unavailable(e)) => {
                tracing::warn!(error = %e, "cannot load the function version; returning the message");
                let _ = d.requeue().await;
                return;
            }
        };
        drop(slot);
        let mut outcome = Outcome {
            status: run.status,
            attempt,
            result: run.result,
            error: run.error,
            worker: self.cfg.id.clone(),
            started_ms: Some(started_ms),
            version: ran.as_ref().map(|_| msg.version),
            finished_ms: now_ms(),
            logs: run.logs,
            deliveries: Vec::new(),
            record: msg.unrecorded.then(|| inv.clone()),
        };
        self.metrics.duration.observe_duration(&[&msg.function], claimed_at.elapsed());
        let no_retry = RetryPolicy::default();
        let retry = ran.as_ref().map(|l| &l.manifest.retry).unwrap_or(&no_retry);
        let outputs = ran.as_ref().map(|l| l.manifest.outputs.as_slice()).unwrap_or(&[]);
        let failed = matches!(outcome.status, Status::Failed | Status::TimedOut);
        if failed && retry.retries() {
            if (attempt as u32) < retry.max_attempts {
                return self.retry_later(pool, &msg, d, &outcome, retry).await;
            }
            // Out of attempts: the message is kept in the dead-letter queue, the invocation dead.
            let reason = format!(
                "gave up after {attempt} attempts: {}",
                outcome.error.as_deref().unwrap_or("the function failed")
            );
            if let Err(e) = self.transport.dead_letter(pool, d.body.clone(), &reason).await {
                tracing::warn!(error = %e, "cannot dead-letter; returning the message");
                let _ = d.requeue().await;
                return;
            }
            self.metrics.dead_letters.inc(&[pool, "attempts_exhausted"]);
            outcome.status = Status::Dead;
            outcome.error = Some(reason);
        }
        // Forwards to make, decided now and stored with the outcome; management delivers them.
        let succeeded = outcome.status == Status::Succeeded;
        outcome.deliveries = outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| o.applies(succeeded, outcome.result.as_deref()))
            .map(|(i, o)| NewDelivery { output: i as i32, target: o.target() })
            .collect();
        let mut stored =
            self.with_store_retry("complete", "store the outcome", || self.complete(msg.id, &outcome)).await;
        if stored == Some(false) && !claimed && !msg.unrecorded {
            stored = self.record_unrecorded(&inv, attempt, &outcome).await;
        }
        let stored = match stored {
            None => {
                let _ = d.requeue().await;
                return;
            }
            Some(stored) => stored,
        };
        if stored {
            self.metrics.invocations.inc(&[&msg.function, outcome.status.as_str()]);
        }
        self.notify(&msg, stored.then_some(&outcome)).await;
        if let Err(e) = d.ack().await {
            // The outcome is stored: a redelivery will be recognised and acked then.
            tracing::warn!(error = %e, "ack failed after the outcome was stored");
        }
    }

    /// Runs an invocation that was not claimed; if it is still running after
    /// [`RUNNING_MARK_AFTER`], marks it `running` in the store (a claim, made while the run goes
    /// on) so that listings show what is running. Short runs, most of them, go from `queued` to
    /// their outcome in one write.
    async fn run_marked_if_long(
        &self,
        run: impl std::future::Future<Output = process::RunOutput>,
        inv: &Arc<NewInvocation>,
        attempt: i32,
    ) -> process::RunOutput {
        let mut run = std::pin::pin!(run);
        tokio::select! {
            biased;
            out = &mut run => out,
            _ = tokio::time::sleep(RUNNING_MARK_AFTER) => {
                let mark = async {
                    match self.claim(inv, attempt).await {
                        Ok(Claim::Run) => {}
                        Ok(other) => tracing::info!(
                            verdict = ?other,
                            "this invocation moved on while it ran (another copy?); its outcome will be stored only if it is still open"
                        ),
                        Err(e) => tracing::debug!(error = %e, "cannot mark the invocation running; its outcome is stored all the same"),
                    }
                };
                tokio::join!(run, mark).0
            }
        }
    }

    /// An unclaimed run's outcome found no open record. Either another outcome came first, or
    /// the record is not there at all (management's insert commits without waiting for the
    /// disk, so a database crash can lose it while its message lives on in the broker): then
    /// the record is made now, as the claim would have made it, and the outcome stored on it.
    /// `None` when the store cannot be reached (the message goes back to the queue).
    async fn record_unrecorded(&self, inv: &Arc<NewInvocation>, attempt: i32, outcome: &Outcome) -> Option<bool> {
        let found = self
            .with_store_retry("get_invocation", "look for the invocation's record", || {
                self.store.get_invocation(inv.id)
            })
            .await?;
        if found.is_some() {
            return Some(false);
        }
        tracing::warn!("the invocation has no record (lost in a database crash?); recording it with its outcome");
        match self.with_store_retry("claim", "record the invocation", || self.claim(inv, attempt)).await? {
            Claim::Run => {
                self.with_store_retry("complete", "store the outcome", || self.complete(inv.id, outcome)).await
            }
            _ => Some(false),
        }
    }

    /// Schedules the next attempt through the broker, records this one, then acks. The retry
    /// message is published first: if the worker dies after that, the original comes back and
    /// is recognised as superseded (or, if the record was not written, runs again) — nothing
    /// is lost either way.
    async fn retry_later(
        &self,
        pool: &str,
        msg: &InvocationMessage,
        d: Delivery,
        outcome: &Outcome,
        policy: &RetryPolicy,
    ) {
        let delay = Duration::from_millis(policy.delay_ms(outcome.attempt as u32, rand::random::<f64>()));
        let mut next = msg.clone();
        next.attempt = outcome.attempt as u32 + 1;
        next.fresh = false;
        next.unrecorded = false;
        if let Err(e) = self.transport.publish_delayed(pool, next.encode().into(), delay).await {
            tracing::warn!(error = %e, "cannot schedule the retry; returning the message");
            let _ = d.requeue().await;
            return;
        }
        tracing::info!(
            status = %outcome.status,
            next_attempt = next.attempt,
            delay_ms = delay.as_millis() as u64,
            "attempt failed; retry scheduled"
        );
        if self
            .with_store_retry("retry_later", "record the failed attempt", || self.store.retry_later(msg.id, outcome))
            .await
            .is_none()
        {
            let _ = d.requeue().await;
            return;
        }
        self.metrics.retries.inc(&[&msg.function]);
        let _ = d.ack().await;
    }

    async fn dead_letter(&self, pool: &str, d: Delivery, reason: &str) {
        match self.transport.dead_letter(pool, d.body.clone(), reason).await {
            Ok(()) => {
                let _ = d.ack().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot dead-letter; returning the message");
                let _ = d.requeue().await;
            }
        }
    }

    /// Runs a store operation, retrying with exponential backoff while the store is
    /// unavailable, for up to `store_retry_for`. `None` when it never succeeded: the caller
    /// returns the message to the queue instead of acking it.
    async fn with_store_retry<T, F, Fut>(&self, op_label: &str, what: &str, op: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let deadline = tokio::time::Instant::now() + self.cfg.store_retry_for;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.metrics.store.time(op_label, op()).await {
                Ok(v) => return Some(v),
                Err(e) if tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot {what}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot {what}; returning the message to the queue");
                    return None;
                }
            }
        }
    }

    /// Tells a waiting management instance that the invocation has its outcome: `stored`, the
    /// one this worker stored, goes with it when it is small, so the waiter need not read it
    /// back from the store.
    async fn notify(&self, msg: &InvocationMessage, stored: Option<&Outcome>) {
        if let Some(q) = &msg.notify {
            let outcome = stored
                .filter(|o| o.status.is_final())
                .map(|o| NoticeOutcome {
                    status: o.status,
                    attempt: o.attempt,
                    version: o.version.unwrap_or(msg.version),
                    result: o.result.clone(),
                    error: o.error.clone(),
                    worker: o.worker.clone(),
                    started_ms: o.started_ms,
                    finished_ms: o.finished_ms,
                    logs: o.logs.clone(),
                })
                .filter(|o| o.size() <= NOTICE_OUTCOME_MAX_BYTES);
            let notice = CompletionNotice { v: PROTOCOL_VERSION, id: msg.id, outcome };
            if let Err(e) = self.transport.notify(q, notice.encode().into()).await {
                tracing::debug!(error = %e, "completion notice not sent");
            }
        }
    }

    /// The function's settings (cached for a few seconds). The outer error is the store being
    /// unavailable (the message goes back); the inner one, settings that cannot be opened
    /// (the invocation fails with that reason).
    async fn settings_for(&self, function: &str) -> Result<Result<Arc<Settings>, String>, StoreError> {
        if let Some(e) = self.settings.get(function) {
            if e.0.elapsed() < SETTINGS_TTL {
                return Ok(Ok(e.1.clone()));
            }
        }
        let stored = self.store.list_settings(function).await?;
        let mut opened = Settings::default();
        for s in stored {
            let value = if s.secret {
                let Some(key) = &self.cfg.secret_key else {
                    return Ok(Err(warren_service::secret::SecretError::NoKey.to_string()));
                };
                match key.open(&s.value) {
                    Ok(v) => {
                        opened.secrets.push(v.clone());
                        v
                    }
                    Err(e) => return Ok(Err(format!("setting {}: {e}", s.name))),
                }
            } else {
                s.value
            };
            opened.vars.push((s.name, value));
        }
        let opened = Arc::new(opened);
        self.settings.insert(function.to_string(), (std::time::Instant::now(), opened.clone()));
        Ok(Ok(opened))
    }

    async fn execute(
        &self,
        loaded: &Loaded,
        msg: &InvocationMessage,
        attempt: i32,
        settings: &Settings,
    ) -> process::RunOutput {
        match loaded.manifest.runtime {
            Runtime::Echo => process::RunOutput {
                status: Status::Succeeded,
                result: Some(msg.payload.to_vec()),
                error: None,
                logs: Vec::new(),
            },
            Runtime::Process => {
                let dir = loaded.dir.as_deref().expect("process functions are unpacked");
                let id = msg.id.to_string();
                let env = process::InvocationEnv {
                    id: &id,
                    function: &msg.function,
                    version: msg.version,
                    attempt: msg.attempt,
                    headers: &msg.headers,
                };
                let timeout = Duration::from_secs(loaded.manifest.timeout_secs);
                let settings = settings.vars.clone();
                if loaded.manifest.mode == Mode::Persistent {
                    let pool =
                        self.handlers.pool(&loaded.manifest, msg.version, dir.to_path_buf(), settings, self.cfg.limits);
                    return pool.invoke(&env, &msg.payload, timeout, attempt).await;
                }
                process::run(
                    &loaded.manifest.command,
                    dir,
                    &msg.payload,
                    timeout,
                    &env,
                    &settings,
                    attempt,
                    &self.cfg.limits,
                )
                .await
            }
        }
    }

    /// Keeps the package cache under `cache_max_bytes`: removes the least recently used
    /// unpacked packages, never one used in the last ten minutes (it may be running).
    async fn evict(&self) {
        let dir = self.cfg.cache_dir.clone();
        let max = self.cfg.cache_max_bytes;
        let recent: std::collections::HashMap<String, std::time::Instant> =
            self.last_used.iter().map(|e| (e.key().clone(), *e.value())).collect();
        let removed = tokio::task::spawn_blocking(move || evict_cache(&dir, max, &recent)).await.unwrap_or_default();
        for sha in removed {
            self.last_used.remove(&sha);
            self.versions.retain(|_, l| l.sha256 != sha);
            tracing::info!(%sha, "evicted an unpacked package from the cache");
        }
    }

    /// A version's manifest from memory, or from the store on first use; its package unpacked
    /// into the cache (by sha256, verified) unless it is there already.
    async fn load(&self, function: &str, version: i64) -> Result<Arc<Loaded>, LoadError> {
        let key = (function.to_string(), version);
        if let Some(l) = self.versions.get(&key).map(|l| l.clone()) {
            if l.dir.is_some() {
                self.last_used.insert(l.sha256.clone(), std::time::Instant::now());
            }
            return Ok(l);
        }
        let v = self
            .store
            .get_version(function, version)
            .await
            .map_err(LoadError::Unavailable)?
            .ok_or_else(|| LoadError::Missing(format!("function {function} version {version} does not exist")))?;
        let manifest = v.parsed_manifest().map_err(|e| LoadError::Broken(e.to_string()))?;
        let dir = if manifest.runtime == Runtime::Process {
            let dir = self.cfg.cache_dir.join(&v.sha256);
            if !dir.join(warren_wire::manifest::MANIFEST_FILE).exists() {
                let bytes =
                    self.store.get_package(function, version).await.map_err(LoadError::Unavailable)?.ok_or_else(
                        || LoadError::Missing(format!("package of {function} version {version} is gone")),
                    )?;
                let (sha, dest, limits) = (v.sha256.clone(), dir.clone(), self.cfg.package_limits);
                tokio::task::spawn_blocking(move || package::unpack(&bytes, &sha, &dest, &limits))
                    .await
                    .map_err(|e| {
                        LoadError::Unavailable(StoreError::Unavailable(format!("unpacking was interrupted: {e}")))
                    })?
                    .map_err(|e| match e {
                        // The disk, not the package: try again later (the message is returned).
                        package::PackageError::Io(e) => LoadError::Unavailable(StoreError::Unavailable(format!(
                            "cannot unpack into the cache: {e}"
                        ))),
                        e => LoadError::Broken(format!("package of {function} version {version}: {e}")),
                    })?;
                self.last_used.insert(v.sha256.clone(), std::time::Instant::now());
                self.evict().await;
            }
            self.last_used.insert(v.sha256.clone(), std::time::Instant::now());
            Some(dir)
        } else {
            None
        };
        let loaded = Arc::new(Loaded { manifest, dir, sha256: v.sha256.clone() });
        self.versions.insert(key, loaded.clone());
        Ok(loaded)
    }
}

fn dir_size(p: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Removes the least recently used package folders until the cache fits in `max` bytes.
/// Returns the sha256 of each folder removed.
fn evict_cache(
    dir: &std::path::Path,
    max: u64,
    recent: &std::collections::HashMap<String, std::time::Instant>,
) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut folders: Vec<(String, u64, std::time::SystemTime)> = entries
        .flatten()
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            let modified = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
            (e.file_name().to_string_lossy().into_owned(), dir_size(&e.path()), modified)
        })
        .collect();
    let mut total: u64 = folders.iter().map(|f| f.1).sum();
    if total <= max {
        return Vec::new();
    }
    // Oldest use first: in-memory use times where known, else the folder's time on disk.
    let now = std::time::Instant::now();
    let sys_now = std::time::SystemTime::now();
    folders.sort_by_key(|(sha, _, modified)| match recent.get(sha) {
        Some(t) => sys_now - now.duration_since(*t),
        None => *modified,
    });
    let mut removed = Vec::new();
    for (sha, size, _) in folders {
        if total <= max {
            break;
        }
        if recent.get(&sha).map(|t| now.duration_since(*t) < Duration::from_secs(600)).unwrap_or(false) {
            continue;
        }
        if std::fs::remove_dir_all(dir.join(&sha)).is_ok() {
            total = total.saturating_sub(size);
            removed.push(sha);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    #[test]
    fn eviction_removes_the_least_recently_used_but_spares_recent_ones() {
        let tmp = tempfile::tempdir().unwrap();
        for (name, size) in [("old", 600), ("mid", 600), ("hot", 600)] {
            std::fs::create_dir(tmp.path().join(name)).unwrap();
            std::fs::write(tmp.path().join(name).join("f"), vec![0u8; size]).unwrap();
        }
        let now = std::time::Instant::now();
        let mut recent = std::collections::HashMap::new();
        recent.insert("old".to_string(), now - std::time::Duration::from_secs(3600));
        recent.insert("mid".to_string(), now - std::time::Duration::from_secs(1800));
        recent.insert("hot".to_string(), now);
        // 1,800 bytes in all; 1,000 allowed: "old" goes, then "mid"; "hot" is in use.
        let removed = super::evict_cache(tmp.path(), 1000, &recent);
        assert_eq!(removed, vec!["old".to_string(), "mid".to_string()]);
        assert!(tmp.path().join("hot").exists());
        assert!(super::evict_cache(tmp.path(), 1000, &recent).is_empty());
    }
}
