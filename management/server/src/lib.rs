//! Warren's management role: the HTTP API ([`api`]), publishing, invoking, and the waiters of
//! synchronous invocations (woken by completion notices from workers, not by polling).
//!
//! The same code runs distributed (`warren-management`, AMQP + a networked store) and embedded
//! (`warren up`, in the `warren-cli` crate: in-process queue, SQLite, workers in the same process).

pub mod api;
pub mod auth;
pub mod batch;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod outputs;
pub mod portal;
pub mod sources;
pub mod timers;
pub mod triggers_api;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use tokio::sync::oneshot;
use uuid::Uuid;
use warren_store::group::Grouped;
use warren_store::{
    AttemptRecord, FunctionVersion, Invocation, LogLine, NewInvocation, Outcome, Status, Store, StoreError,
};
use warren_transport::{Transport, TransportError};
use warren_wire::message::{CompletionNotice, InvocationMessage, NoticeOutcome, PROTOCOL_VERSION};
use warren_wire::package;
use warren_wire::time::now_ms;

#[derive(Debug, Clone)]
pub struct Config {
    /// Largest invocation input accepted, in bytes.
    pub max_payload_bytes: usize,
    pub package_limits: package::Limits,
    /// How long a synchronous invoke waits when the caller does not say.
    pub default_sync_timeout: Duration,
    pub max_sync_timeout: Duration,
    /// Seals secret settings; without it, secret settings are refused.
    pub secret_key: Option<warren_service::secret::SecretKey>,
    /// The broker that `[source]` triggers and `amqp` outputs use when they name none (Warren's
    /// own, in the distributed mode).
    pub amqp_url: Option<String>,
    /// Largest fan-in input with the results inline; past it the follow-up gets a reference.
    pub max_fanin_inline_bytes: usize,
    /// Runs the timer scheduler, source consumers, output deliveries and batch sweeper.
    pub triggers: bool,
    /// Whether and how API keys are checked (open by default: the binaries decide).
    pub auth: auth::AuthMode,
    /// An instance whose lease is not renewed for this long has stopped: another settles the
    /// invocations and batches it left unpublished (see [`lease`]).
    pub instance_lease: Duration,
    /// API connections open at once; at the cap new ones wait in the kernel's backlog (see
    /// [`http`]).
    pub max_connections: usize,
    /// How long a client may send nothing while the server waits for it (a request head, the
    /// next request on a keep-alive connection, the rest of a body) before its connection is
    /// closed or its body read fails (see [`http`]).
    pub client_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_payload_bytes: 1 << 20,
            package_limits: package::Limits::default(),
            default_sync_timeout: Duration::from_secs(30),
            max_sync_timeout: Duration::from_secs(300),
            secret_key: None,
            amqp_url: None,
            max_fanin_inline_bytes: 16 << 20,
            triggers: true,
            auth: auth::AuthMode::Open,
            instance_lease: Duration::from_secs(60),
            max_connections: 1024,
            client_timeout: Duration::from_secs(30),
        }
    }
}

/// Why an operation failed, in terms the API turns into a status code and a message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{}", store_message(.0))]
    Store(#[from] StoreError),
    #[error("the message broker is unavailable: {0}")]
    Transport(#[from] TransportError),
    /// This instance takes no new work now (it is stopping, or cut off from the store for
    /// over half its lease); another instance may.
    #[error("{0}")]
    Unavailable(String),
    /// A bug: a task of Warren's own stopped (a panic), logged where it happened.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A store error in words: a conflict is the caller's (409), anything else the store's.
fn store_message(e: &StoreError) -> String {
    match e {
        StoreError::Conflict(m) => m.clone(),
        other => format!("the store is unavailable: {other}"),
    }
}

pub struct Management {
    pub store: Arc<dyn Store>,
    pub transport: Arc<dyn Transport>,
    pub config: Config,
    pub metrics: metrics::Metrics,
    /// This instance's name; its notice queue is `warren.notice.<instance>`.
    instance: String,
    waiters: DashMap<Uuid, oneshot::Sender<Option<NoticeOutcome>>>,
    declared_pools: DashMap<String, ()>,
    /// Active version per function, reused for [`ACTIVE_TTL`]: invoking does not read the
    /// store for it each time. A publish through this instance updates it at once.
    active: DashMap<String, (std::time::Instant, i64)>,
    /// Manifests of versions (immutable, so kept).
    manifests: DashMap<(String, i64), Arc<warren_wire::manifest::Manifest>>,
    /// Links to other brokers, for `amqp` outputs.
    pub(crate) peers: warren_transport::peer::Peers,
    /// Invocation records of concurrent invokes, inserted together (one statement, one commit).
    creates: Grouped<NewInvocation, Result<bool, StoreError>>,
    /// Turned true by [`Management::stop_sources`].
    stopping: tokio::sync::watch::Sender<bool>,
    /// Bulk invokes being read or run at once (see `api::MAX_BULK_IN_FLIGHT`): each may hold
    /// a body of up to 16 MiB and its records, so their number is bounded; others wait.
    pub(crate) bulk_in_flight: tokio::sync::Semaphore,
    /// API keys found by their hash, for [`auth::KEY_CACHE_TTL`]: a function key's request
    /// costs no store read while its key is cached. Only keys that were valid are kept; a
    /// revoke through this instance drops its entry at once.
    pub(crate) keys: DashMap<String, (std::time::Instant, warren_store::ApiKey)>,
    /// The source supervisor, awaited when stopping.
    sources: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Creation times of this instance's records not yet published or recorded failed: its
    /// lease's settled mark.
    pub(crate) settling: lease::Settling,
    /// Set by [`Management::release_lease`]: hand the lease back by this deadline.
    lease_release: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
    /// The lease loop, awaited when releasing.
    lease_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Invocation records inserted in one statement at most, and such inserts running at once.
/// A lone invoke's insert goes at once; under load, those that arrive while the slots are busy
/// share the next commit.
const GROUP_CREATE_MAX: usize = 200;
const GROUP_CREATES_IN_FLIGHT: usize = 4;

/// How long an instance trusts the active version it read. Another management instance's
/// publish is seen within this delay.
pub const ACTIVE_TTL: Duration = Duration::from_secs(1);

/// Wakes sync waiters from completion notices; reopens the notice queue after a broker outage
/// (notices sent meanwhile are lost, and those waiters read the store at their deadline).
async fn listen_notices(weak: std::sync::Weak<Management>, mut notices: Box<dyn warren_transport::Consumer>) {
    loop {
        while let Some(n) = notices.next().await {
            let Some(m) = weak.upgrade() else { return };
            match n {
                Ok(d) => match CompletionNotice::decode(&d.body) {
                    Ok(notice) => {
                        if let Some((_, tx)) = m.waiters.remove(&notice.id) {
                            let _ = tx.send(notice.outcome);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring an undecodable completion notice"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "completion notices interrupted; reopening");
                    break;
                }
            }
        }
        let mut delay = Duration::from_millis(100);
        loop {
            let Some(m) = weak.upgrade() else { return };
            match m.transport.open_notices(&m.instance).await {
                Ok(c) => {
                    notices = c;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cannot reopen the notice queue yet"),
            }
            drop(m);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Removes a waiter when the waiting request ends, however it ends.
struct WaiterGuard<'a> {
    map: &'a DashMap<Uuid, oneshot::Sender<Option<NoticeOutcome>>>,
    id: Uuid,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.map.remove(&self.id);
    }
}

/// A dead letter as listed: what it was, and why it is there.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub pool: String,
    pub id: Option<Uuid>,
    pub function: Option<String>,
    pub version: Option<i64>,
    pub attempt: Option<u32>,
    pub reason: Option<String>,
    pub bytes: usize,
}

impl DeadLetter {
    fn describe(pool: &str, d: &warren_transport::Delivery) -> Self {
        let m = InvocationMessage::decode(&d.body).ok();
        DeadLetter {
            pool: pool.to_string(),
            id: m.as_ref().map(|m| m.id),
            function: m.as_ref().map(|m| m.function.clone()),
            version: m.as_ref().map(|m| m.version),
            attempt: m.as_ref().map(|m| m.attempt),
            reason: d.reason.clone(),
            bytes: d.body.len(),
        }
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct ReplayReport {
    pub replayed: Vec<Uuid>,
    /// Selected, but their invocation is not dead (any more).
    pub skipped: Vec<Uuid>,
    /// Not selected, or not decodable: left in the dead-letter queue.
    pub kept: usize,
}

/// What [`Management::invoke_many`] did: the invocations queued, in input order, and those
/// the broker did not take (recorded failed, with why).
#[derive(Debug)]
pub struct BulkAccepted {
    pub ids: Vec<Uuid>,
    pub not_queued: Vec<(Uuid, String)>,
}

/// An invocation just accepted: its id, and whether its outcome is already known.
pub struct Accepted {
    pub id: Uuid,
    pub invocation: Option<Invocation>,
    /// Its log lines and attempts, when the worker's notice brought them (else read them).
    pub details: Option<(Vec<LogLine>, Vec<AttemptRecord>)>,
}

impl Management {
    /// Creates the management state and starts listening for completion notices.
    pub async fn start(
        store: Arc<dyn Store>,
        transport: Arc<dyn Transport>,
        config: Config,
    ) -> anyhow::Result<Arc<Self>> {
        let instance = Uuid::now_v7().simple().to_string();
        let notices = transport.open_notices(&instance).await?;
        store.set_origin(&instance);
        let m = Arc::new(Management {
            store: store.clone(),
            transport,
            config,
            metrics: metrics::Metrics::default(),
            instance,
            waiters: DashMap::new(),
            declared_pools: DashMap::new(),
            active: DashMap::new(),
            manifests: DashMap::new(),
            peers: Default::default(),
            creates: {
                let store = store.clone();
                Grouped::start(GROUP_CREATE_MAX, GROUP_CREATES_IN_FLIGHT, move |invs: Vec<NewInvocation>| {
                    let store = store.clone();
                    async move { Ok(store.create_invocations(&invs).await) }
                })
            },
            stopping: tokio::sync::watch::channel(false).0,
            bulk_in_flight: tokio::sync::Semaphore::new(api::MAX_BULK_IN_FLIGHT),
            keys: DashMap::new(),
            sources: std::sync::Mutex::new(None),
            settling: Default::default(),
            lease_release: tokio::sync::watch::channel(None).0,
            lease_task: std::sync::Mutex::new(None),
        });
        // The lease exists before the first record is made (if the store answers now; else
        // the loop writes it as soon as it does).
        if let Err(e) = lease::renew(&m).await {
            tracing::warn!(error = %e, "cannot write this instance's lease yet");
        }
        let task = tokio::spawn(lease::lease_beat(Arc::downgrade(&m), m.lease_release.subscribe()));
        *m.lease_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        tokio::spawn(listen_notices(Arc::downgrade(&m), notices));
        if m.config.triggers {
            tokio::spawn(batch::sweep(Arc::downgrade(&m)));
            tokio::spawn(outputs::deliver(Arc::downgrade(&m)));
            tokio::spawn(timers::schedule(Arc::downgrade(&m)));
            let task = tokio::spawn(sources::supervise(Arc::downgrade(&m), m.stopping.subscribe()));
            *m.sources.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
        Ok(m)
    }

    /// Stops the source triggers for a shutdown: they take no new message and finish the ones
    /// they hold (so none is acked unrecorded, and none recorded but left unacked to come
    /// again as a second invocation), within `grace`.
    pub async fn stop_sources(&self, grace: Duration) {
        self.stopping.send_replace(true);
        let task = self.sources.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            if tokio::time::timeout(grace, task).await.is_err() {
                tracing::warn!("source triggers still busy after the grace period; stopping anyway");
            }
        }
    }

    /// Checks a package completely, then stores it as the function's new active version.
    pub async fn publish(&self, package_bytes: &[u8]) -> Result<FunctionVersion, Error> {
        let limits = self.config.package_limits;
        if package_bytes.len() as u64 > limits.max_package_bytes {
            return Err(Error::TooLarge(format!(
                "the package is {} bytes, over the limit of {} bytes",
                package_bytes.len(),
                limits.max_package_bytes
            )));
        }
        // Decompressing and checking every entry is CPU work: keep it off the async threads.
        let bytes = Bytes::copy_from_slice(package_bytes);
        let checked = bytes.clone();
        let p = tokio::task::spawn_blocking(move || package::inspect(&checked, &limits))
            .await
            .map_err(|e| Error::BadRequest(format!("package check failed: {e}")))?
            .map_err(|e| Error::BadRequest(format!("package refused: {e}")))?;
        let v = self.store.publish_version(&p.manifest, &p.manifest_text, &bytes, &p.sha256).await?;
        self.active.insert(v.name.clone(), (std::time::Instant::now(), v.version));
        tracing::info!(function = %v.name, version = v.version, sha256 = %v.sha256, "published");
        Ok(v)
    }

    pub(crate) async fn ensure_pool(&self, pool: &str) -> Result<(), Error> {
        if !self.declared_pools.contains_key(pool) {
            self.transport.declare_pool(pool).await?;
            self.declared_pools.insert(pool.to_string(), ());
        }
        Ok(())
    }

    /// Records and publishes one invocation of a function's active version. With `wait`, waits
    /// for its outcome up to that long (woken by the worker's completion notice).
    #[tracing::instrument(name = "invocation", skip_all, fields(id = tracing::field::Empty, function = %function))]
    pub async fn invoke(
        self: &Arc<Self>,
        function: &str,
        payload: Bytes,
        wait: Option<Duration>,
    ) -> Result<Accepted, Error> {
        self.invoke_with(function, payload, wait, Vec::new()).await
    }

    /// [`invoke`](Self::invoke), with the headers of a triggering message for the function.
    ///
    /// Safe to cancel (a client that leaves, a source consumer aborted): an asynchronous
    /// invoke's record and publish run on a task of their own, so a record is never left
    /// `queued` with no message; a synchronous one is not recorded until its wait ends.
    pub async fn invoke_with(
        self: &Arc<Self>,
        function: &str,
        payload: Bytes,
        wait: Option<Duration>,
        headers: Vec<(String, String)>,
    ) -> Result<Accepted, Error> {
        if payload.len() > self.config.max_payload_bytes {
            return Err(Error::TooLarge(format!(
                "the input is {} bytes, over the limit of {} bytes",
                payload.len(),
                self.config.max_payload_bytes
            )));
        }
        let (version, manifest) = self.active_manifest(function).await?;
        self.ensure_pool(&manifest.pool).await?;

        let id = Uuid::now_v7();
        tracing::Span::current().record("id", tracing::field::display(id));
        // An asynchronous invoke is recorded `queued` before it is published: its id is
        // answered at once and may be looked up at once. A synchronous one is recorded by the
        // worker with its outcome, in one write: nobody can ask for it before its answer (and
        // if the wait ends first, it is recorded here before the 202, its message confirmed).
        let Some(wait) = wait else {
            let (m, function) = (self.clone(), function.to_string());
            let queued =
                async move { m.record_and_publish(id, &function, version, &manifest.pool, payload, headers).await };
            return tokio::spawn(tracing::Instrument::in_current_span(queued))
                .await
                .map_err(|e| Error::Internal(format!("the invoke stopped: {e}")))?;
        };
        let created_ms = now_ms();
        // Its input is copied into the record only if this instance records it (the wait ended
        // first): the message takes the bytes as they came.
        let mut new = NewInvocation { id, function: function.to_string(), version, payload: Vec::new(), created_ms };
        // A sync answer shows the input (a reference count, not a copy, until then).
        let input = payload.clone();
        let msg = InvocationMessage {
            notify: Some(warren_wire::topology::notice_queue(&self.instance)),
            headers,
            unrecorded: true,
            ..first_message(&new, payload, true)
        };
        // Register before publishing: the notice may come back before publish returns.
        let (tx, mut rx) = oneshot::channel();
        self.waiters.insert(id, tx);
        let guard = WaiterGuard { map: &self.waiters, id };
        // The broker hands a message to its consumer before it confirms it (the confirm waits
        // for the broker's disk), so the worker's notice that the outcome is stored can come
        // first: the answer then does not wait for the confirm, which is awaited on its own.
        // A publish that fails before any notice is a 503, and nothing was recorded.
        let publish = {
            let (m_publish, pool, body) =
                (self.metrics.publish.clone(), manifest.pool.clone(), Bytes::from(msg.encode()));
            let transport = self.transport.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let published = transport.publish(&pool, body).await;
                m_publish.observe_duration(&[], started.elapsed());
                if let Err(e) = &published {
                    tracing::warn!(%id, error = %e, "the broker did not confirm a synchronous invocation");
                }
                published
            })
        };
        let deadline = tokio::time::Instant::now() + wait;
        let noticed = tokio::select! {
            notice = &mut rx => Ok(notice),
            published = publish => match published {
                Ok(Ok(())) => tokio::time::timeout_at(deadline, rx).await,
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => return Err(Error::Transport(TransportError::Other(format!("the publish was interrupted: {e}")))),
            },
        };
        self.metrics.invocations_accepted.inc(&[function]);
        drop(guard);
        // The first attempt's outcome, as the worker stored it, came with the notice: the
        // record, its log lines and its one attempt are known without reading them back.
        if let Ok(Ok(Some(o))) = noticed {
            if o.attempt == 1 && o.status.is_final() {
                let attempt = AttemptRecord {
                    attempt: o.attempt,
                    status: o.status,
                    error: o.error.clone(),
                    worker: o.worker.clone(),
                    finished_ms: o.finished_ms,
                };
                let inv = Invocation {
                    id,
                    function: function.to_string(),
                    version: o.version,
                    status: o.status,
                    attempts: o.attempt,
                    payload: input.to_vec(),
                    result: o.result,
                    error: o.error,
                    worker: Some(o.worker),
                    created_ms,
                    started_ms: o.started_ms,
                    finished_ms: Some(o.finished_ms),
                };
                return Ok(Accepted { id, invocation: Some(inv), details: Some((o.logs, vec![attempt])) });
            }
        }
        // Read once: after a notice without the outcome, or at the deadline in case a notice
        // was lost.
        let inv = self.metrics.store.time("get_invocation", self.store.get_invocation(id)).await?;
        if inv.is_none() {
            // Not run yet (a backlog): recorded `queued` now, so that the id answered with the
            // 202 can be looked up. If the worker recorded it meanwhile, that record stays.
            new.payload = input.to_vec();
            self.create(new).await?;
        }
        Ok(Accepted { id, invocation: inv, details: None })
    }

    /// An asynchronous invoke's record (`queued`, through the group commit) and publish, with
    /// this instance's lease holding it open until the publish is settled.
    async fn record_and_publish(
        &self,
        id: Uuid,
        function: &str,
        version: i64,
        pool: &str,
        payload: Bytes,
        headers: Vec<(String, String)>,
    ) -> Result<Accepted, Error> {
        let held = self.settling.hold()?;
        let new = NewInvocation {
            id,
            function: function.to_string(),
            version,
            payload: payload.to_vec(),
            created_ms: held.ms,
        };
        let msg = InvocationMessage { headers, ..first_message(&new, payload, true) };
        if !self.create(new).await? {
            return Err(Error::Store(StoreError::Conflict(format!("invocation {id} exists already"))));
        }
        self.publish_recorded(pool, &msg).await?;
        drop(held);
        self.metrics.invocations_accepted.inc(&[function]);
        tracing::debug!("invocation published");
        Ok(Accepted { id, invocation: None, details: None })
    }

    /// Records and publishes one independent invocation of a function's active version per
    /// input (a bulk asynchronous invoke: no batch, no fan-in, each runs and is recorded like
    /// one `mode=async` invoke). All are recorded `queued` in one commit (PostgreSQL, SQLite),
    /// or none (the error). Then each is published with its confirm; one the broker does not
    /// confirm is recorded failed ("not queued") and listed in [`BulkAccepted::not_queued`].
    pub async fn invoke_many(&self, function: &str, inputs: Vec<Bytes>) -> Result<BulkAccepted, Error> {
        if let Some((n, big)) = inputs.iter().enumerate().find(|(_, b)| b.len() > self.config.max_payload_bytes) {
            return Err(Error::TooLarge(format!(
                "input {} is {} bytes, over the limit of {} bytes",
                n + 1,
                big.len(),
                self.config.max_payload_bytes
            )));
        }
        let (version, manifest) = self.active_manifest(function).await?;
        self.ensure_pool(&manifest.pool).await?;
        // Open until every input is published or recorded failed (see `lease`).
        let _held = self.settling.hold()?;
        let records = new_records(function, version, &inputs);
        let recorded = self
            .metrics
            .store
            .time("create_invocations", async { self.store.create_invocations(&records).await })
            .await;
        // PostgreSQL and SQLite record all or none; a store that records one by one may stop
        // part-way: what it recorded is published, the rest is answered not queued.
        let mut out = BulkAccepted { ids: Vec::with_capacity(records.len()), not_queued: Vec::new() };
        let mut messages = Vec::with_capacity(records.len());
        let mut first_error = None;
        for ((r, payload), stored) in records.iter().zip(inputs).zip(recorded) {
            match stored {
                Ok(true) => messages.push(first_message(r, payload, true)),
                Ok(false) => out.not_queued.push((r.id, "not recorded: the id exists already".into())),
                Err(e) => {
                    out.not_queued.push((r.id, format!("not recorded: {e}")));
                    first_error.get_or_insert(e);
                }
            }
        }
        if messages.is_empty() {
            // Nothing recorded: the store's error, as for a single invoke.
            return Err(first_error
                .unwrap_or_else(|| StoreError::Conflict("none of the new invocation ids could be recorded".into()))
                .into());
        }
        for (id, r) in self.publish_all(&manifest.pool, messages).await {
            match r {
                Ok(()) => out.ids.push(id),
                Err(e) => out.not_queued.push((id, format!("not queued (recorded failed): {e}"))),
            }
        }
        self.metrics.invocations_accepted.add(&[function], out.ids.len() as u64);
        tracing::debug!(function, accepted = out.ids.len(), not_queued = out.not_queued.len(), "bulk invoke");
        Ok(out)
    }

    /// Records a new invocation `queued` through the group commit; `false` when its id is
    /// recorded already.
    async fn create(&self, new: NewInvocation) -> Result<bool, Error> {
        Ok(self.metrics.store.time("create_invocation", async { self.creates.call(new).await? }).await?)
    }

    /// Publishes the message of an invocation already recorded `queued` (or not recorded, for a
    /// synchronous invoke). If the broker does not confirm it, a recorded invocation is
    /// recorded failed ("not queued": never reported accepted).
    pub(crate) async fn publish_recorded(&self, pool: &str, msg: &InvocationMessage) -> Result<(), Error> {
        // A pool that cannot be declared is a publish that failed: the record is settled too.
        let published = match self.ensure_pool(pool).await {
            Ok(()) => {
                let started = std::time::Instant::now();
                let published = self.transport.publish(pool, msg.encode().into()).await.map_err(Error::from);
                self.metrics.publish.observe_duration(&[], started.elapsed());
                published
            }
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            if !msg.unrecorded {
                let failed = Outcome::unrun(Status::Failed, 0, format!("not queued: {e}"));
                if let Err(store_error) = self.store.complete(msg.id, &failed).await {
                    // The record stays `queued` with no message: keep it open (this instance's
                    // lease mark stays before it) and record the failure when the store is back.
                    tracing::warn!(id = %msg.id, error = %store_error, "cannot record a publish failure yet; retrying");
                    let held = self.settling.hold_at(msg.created_ms);
                    tokio::spawn(record_not_queued(self.store.clone(), msg.id, failed, held));
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Publishes the messages of invocations recorded `queued`, up to 256 confirms awaited at
    /// once; each one's result, in order (a failed one is recorded failed by
    /// [`publish_recorded`](Self::publish_recorded)).
    pub(crate) async fn publish_all(
        &self,
        pool: &str,
        messages: Vec<InvocationMessage>,
    ) -> Vec<(Uuid, Result<(), Error>)> {
        futures_util::stream::iter(messages)
            .map(|msg| async move { (msg.id, self.publish_recorded(pool, &msg).await) })
            .buffered(256)
            .collect()
            .await
    }

    /// The manifest of one version (cached: versions are immutable).
    pub async fn version_manifest(
        &self,
        function: &str,
        version: i64,
    ) -> Result<Arc<warren_wire::manifest::Manifest>, Error> {
        let key = (function.to_string(), version);
        if let Some(m) = self.manifests.get(&key) {
            return Ok(m.clone());
        }
        let v = self
            .store
            .get_version(function, version)
            .await?
            .ok_or_else(|| Error::NotFound(format!("function {function:?} has no version {version}")))?;
        let manifest = Arc::new(v.parsed_manifest()?);
        self.manifests.insert(key, manifest.clone());
        Ok(manifest)
    }

    /// Every function's active version and its manifest (what the triggers follow).
    pub async fn active_manifests(&self) -> Result<Vec<(String, i64, Arc<warren_wire::manifest::Manifest>)>, Error> {
        let mut out = Vec::new();
        for f in self.store.list_functions().await? {
            match self.version_manifest(&f.name, f.active_version).await {
                Ok(m) => out.push((f.name, f.active_version, m)),
                Err(Error::Store(e)) => return Err(Error::Store(e)),
                Err(e) => {
                    tracing::warn!(function = %f.name, error = %e, "skipping a function whose manifest is unreadable")
                }
            }
        }
        Ok(out)
    }

    /// The pools in use: those of every function's active version, and any declared here.
    pub async fn pools(&self) -> Result<Vec<String>, Error> {
        let mut pools: std::collections::BTreeSet<String> =
            self.declared_pools.iter().map(|e| e.key().clone()).collect();
        pools.insert(warren_wire::manifest::default_pool());
        for f in self.store.list_functions().await? {
            if let Some(v) = self.store.get_version(&f.name, f.active_version).await? {
                if let Ok(m) = v.parsed_manifest() {
                    pools.insert(m.pool);
                }
            }
        }
        Ok(pools.into_iter().collect())
    }

    /// Lists up to `limit` dead letters of each pool (they stay in their queues).
    pub async fn dead_letters(&self, pools: &[String], limit: usize) -> Result<Vec<DeadLetter>, Error> {
        let mut out = Vec::new();
        for pool in pools {
            let taken = self.transport.take_dead(pool, limit).await?;
            for d in taken {
                out.push(DeadLetter::describe(pool, &d));
                d.requeue().await?;
            }
        }
        Ok(out)
    }

    /// Replays dead letters: each selected one becomes a new attempt of its invocation (not a
    /// new invocation), on the function's active version. `ids = None` selects all.
    /// Undecodable messages stay where they are.
    pub async fn replay(&self, pools: &[String], ids: Option<&[Uuid]>, limit: usize) -> Result<ReplayReport, Error> {
        let mut report = ReplayReport::default();
        for pool in pools {
            for d in self.transport.take_dead(pool, limit).await? {
                let msg = match InvocationMessage::decode(&d.body) {
                    Ok(m) if ids.map(|ids| ids.contains(&m.id)).unwrap_or(true) => m,
                    _ => {
                        report.kept += 1;
                        d.requeue().await?;
                        continue;
                    }
                };
                let attempt = match self.store.replay(msg.id).await? {
                    Some(attempt) => attempt,
                    None => match self.store.get_invocation(msg.id).await? {
                        // Recorded as this dead letter's replay, but the letter is still here:
                        // the instance that replayed it stopped before its publish (or before
                        // its ack). Publish it now; if it went out already, the worker's claim
                        // runs the attempt once.
                        Some(inv) if inv.status == Status::Queued && inv.attempts == msg.attempt as i32 + 1 => {
                            inv.attempts
                        }
                        // Not dead in the store (replayed already, or stale): leave it be.
                        _ => {
                            report.skipped.push(msg.id);
                            d.requeue().await?;
                            continue;
                        }
                    },
                };
                // The new attempt runs the function's active version: replaying after a fix
                // means publishing the fix, then replaying.
                let version = match self.store.get_function(&msg.function).await? {
                    Some(f) => f.active_version,
                    None => msg.version,
                };
                let again = InvocationMessage {
                    attempt: attempt as u32,
                    version,
                    notify: None,
                    fresh: false,
                    unrecorded: false,
                    ..msg
                };
                match self.transport.publish(pool, again.encode().into()).await {
                    Ok(()) => {
                        d.ack().await?;
                        report.replayed.push(again.id);
                    }
                    Err(e) => {
                        // Put things back as they were: the message stays dead, and so does
                        // the invocation.
                        d.requeue().await?;
                        let failed = Outcome::unrun(Status::Dead, attempt, format!("replay failed: {e}"));
                        let _ = self.store.complete(again.id, &failed).await;
                        return Err(e.into());
                    }
                }
            }
        }
        Ok(report)
    }

    /// Sets one of a function's settings; a secret one is sealed before it is stored.
    pub async fn set_setting(&self, function: &str, name: &str, value: &str, secret: bool) -> Result<(), Error> {
        if self.store.get_function(function).await?.is_none() {
            return Err(Error::NotFound(format!("function {function:?} does not exist; publish it first")));
        }
        let valid = name.len() <= 128
            && name.chars().next().map(|c| c.is_ascii_alphabetic() || c == '_').unwrap_or(false)
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid || name.starts_with("WARREN_") {
            return Err(Error::BadRequest(format!(
                "setting name {name:?} must be an environment variable name (letters, digits, '_'; not starting with a digit or WARREN_)"
            )));
        }
        let stored = if secret {
            let key = self.config.secret_key.as_ref().ok_or_else(|| {
                Error::BadRequest(
                    "secret settings need an encryption key: start management (and workers) with WARREN_SECRET_KEY=<64 hex chars>".into(),
                )
            })?;
            key.seal(value)
        } else {
            value.to_string()
        };
        let setting = warren_store::Setting { name: name.to_string(), value: stored, secret, updated_ms: now_ms() };
        self.store.set_setting(function, &setting).await?;
        Ok(())
    }

    /// A function's active version and its manifest, from memory when fresh enough.
    pub(crate) async fn active_manifest(
        &self,
        function: &str,
    ) -> Result<(i64, Arc<warren_wire::manifest::Manifest>), Error> {
        let cached = self.active.get(function).filter(|e| e.0.elapsed() < ACTIVE_TTL).map(|e| e.1);
        let version = match cached {
            Some(v) => v,
            None => {
                let f = self.store.get_function(function).await?.ok_or_else(|| {
                    Error::NotFound(format!(
                        "function {function:?} does not exist; publish it first (warren publish DIR)"
                    ))
                })?;
                self.active.insert(function.to_string(), (std::time::Instant::now(), f.active_version));
                f.active_version
            }
        };
        Ok((version, self.version_manifest(function, version).await?))
    }

    /// The `auth` level of a function's active version; `None` when there is no such function.
    pub async fn auth_level(&self, function: &str) -> Result<Option<warren_wire::manifest::AuthLevel>, Error> {
        match self.active_manifest(function).await {
            Ok((_, manifest)) => Ok(Some(manifest.auth)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn clamp_wait(&self, ms: Option<u64>) -> Duration {
        ms.map(Duration::from_millis).unwrap_or(self.config.default_sync_timeout).min(self.config.max_sync_timeout)
    }
}

pub use http::serve;

/// Records the failure of an invocation recorded `queued` whose message will never be
/// published (its publish failed, or its source message was refused), retrying until the store
/// takes it; `held` keeps the record open in this instance's lease meanwhile.
pub(crate) async fn record_not_queued(store: Arc<dyn Store>, id: Uuid, failed: Outcome, held: lease::Held) {
    let mut delay = Duration::from_millis(200);
    loop {
        tokio::time::sleep(delay).await;
        match store.complete(id, &failed).await {
            Ok(_) => break,
            Err(e) => tracing::debug!(%id, error = %e, "cannot record an unpublished invocation's failure yet"),
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    drop(held);
}

/// New invocation records of one version, one per input, created now.
pub(crate) fn new_records(function: &str, version: i64, inputs: &[Bytes]) -> Vec<NewInvocation> {
    let created_ms = now_ms();
    inputs
        .iter()
        .map(|p| NewInvocation {
            id: Uuid::now_v7(),
            function: function.to_string(),
            version,
            payload: p.to_vec(),
            created_ms,
        })
        .collect()
}

/// The first message of a recorded invocation. `fresh`: its first delivery may run without a
/// claim (nothing can cancel it); batch items are not fresh, a cancel may reach them.
pub(crate) fn first_message(r: &NewInvocation, payload: Bytes, fresh: bool) -> InvocationMessage {
    InvocationMessage {
        v: PROTOCOL_VERSION,
        id: r.id,
        function: r.function.clone(),
        version: r.version,
        attempt: 1,
        payload,
        notify: None,
        created_ms: r.created_ms,
        headers: Vec::new(),
        fresh,
        unrecorded: false,
    }
}
