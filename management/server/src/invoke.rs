//! Invoking: an invocation recorded (asynchronous and bulk invokes) and published with the
//! broker's confirm, or (synchronous) published and waited for until its worker's notice.
//!
//! Safe to cancel: an asynchronous invoke's record and publish run on a task of their own, so a
//! client that leaves cannot strand a record `queued` with no message; a synchronous one is not
//! recorded until its wait ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use warren_service::retry::Backoff;
use warren_store::group::Grouped;
use warren_store::{AttemptRecord, Invocation, LogLine, NewInvocation, Outcome, Status, Store, StoreError};
use warren_transport::{Transport, TransportError};
use warren_wire::manifest::default_pool;
use warren_wire::message::{InvocationMessage, PROTOCOL_VERSION};
use warren_wire::time::now_ms;
use warren_wire::topology::{self, notice_queue};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::Error;
use crate::lease::{Held, Lease};
use crate::metrics::Metrics;
use crate::notices::Waiters;

/// Invocation records inserted in one statement at most, and such inserts running at once.
/// A lone invoke's insert goes at once; under load, those that arrive while the slots are busy
/// share the next commit.
const GROUP_CREATE_MAX: usize = 200;
const GROUP_CREATES_IN_FLIGHT: usize = 4;

/// How long after the longest synchronous wait a key naming an invocation with no record is
/// taken anew (its instance stopped before publishing).
const KEY_ORPHANED_AFTER: Duration = Duration::from_secs(60);

/// How often expired idempotency keys are removed, and how many per statement.
const KEY_SWEEP_EVERY: Duration = Duration::from_secs(600);
const KEY_SWEEP_CHUNK: u32 = 1_000;

/// How often a repeated keyed invoke that waits reads its first invocation again.
const KEYED_REPEAT_POLL: Duration = Duration::from_millis(100);

/// Bulk invokes read and run at once; more wait (before their body is read) for a turn.
pub const MAX_BULK_IN_FLIGHT: usize = 4;

/// An invocation just accepted: its id, and whether its outcome is already known.
pub struct Accepted {
    pub id: Uuid,
    pub invocation: Option<Invocation>,
    /// Its log lines and attempts, when the worker's notice brought them (else read them).
    pub details: Option<(Vec<LogLine>, Vec<AttemptRecord>)>,
}

/// What [`Invoker::invoke_many`] did: the invocations queued, in input order, and those the
/// broker did not take (recorded failed, with why).
#[derive(Debug)]
pub struct BulkAccepted {
    pub ids: Vec<Uuid>,
    pub not_queued: Vec<(Uuid, String)>,
}

pub struct Invoker {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) transport: Arc<dyn Transport>,
    catalog: Arc<Catalog>,
    lease: Arc<Lease>,
    metrics: Arc<Metrics>,
    /// This instance's notice queue, where workers tell its synchronous invokes they are done.
    notices: String,
    waiters: Arc<Waiters>,
    max_payload_bytes: usize,
    default_sync_timeout: Duration,
    max_sync_timeout: Duration,
    /// How long an idempotency key names its invocation.
    idempotency_window: Duration,
    declared_pools: DashMap<String, ()>,
    /// Invocation records of concurrent invokes, inserted together (one statement, one commit).
    creates: Grouped<NewInvocation, Result<bool, StoreError>>,
    /// Bulk invokes being read or run at once: each may hold a body of up to 16 MiB and its
    /// records, so their number is bounded; others wait.
    bulk_turns: Semaphore,
    /// Where invokes' own tasks are spawned (owned by management's stop).
    tasks: TaskTracker,
}

impl Invoker {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<dyn Store>,
        transport: Arc<dyn Transport>,
        catalog: Arc<Catalog>,
        lease: Arc<Lease>,
        metrics: Arc<Metrics>,
        waiters: Arc<Waiters>,
        config: &Config,
        tasks: TaskTracker,
    ) -> Invoker {
        let creates = {
            let store = store.clone();
            Grouped::start(GROUP_CREATE_MAX, GROUP_CREATES_IN_FLIGHT, move |invs: Vec<NewInvocation>| {
                let store = store.clone();
                async move { Ok(store.create_invocations(&invs).await) }
            })
        };
        Invoker {
            notices: notice_queue(lease.instance()),
            store,
            transport,
            catalog,
            lease,
            metrics,
            waiters,
            max_payload_bytes: config.max_payload_bytes,
            default_sync_timeout: config.default_sync_timeout,
            max_sync_timeout: config.max_sync_timeout,
            idempotency_window: config.idempotency_window,
            declared_pools: DashMap::new(),
            creates,
            bulk_turns: Semaphore::new(MAX_BULK_IN_FLIGHT),
            tasks,
        }
    }

    /// The largest input accepted, in bytes.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// An input within the size limit, or the 413 that says so.
    fn input_fits(&self, payload: &[u8]) -> Result<(), Error> {
        if payload.len() > self.max_payload_bytes {
            return Err(Error::TooLarge(format!(
                "the input is {} bytes, over the limit of {} bytes",
                payload.len(),
                self.max_payload_bytes
            )));
        }
        Ok(())
    }

    /// How long a synchronous invoke waits: what the caller asked, within the limits.
    pub fn clamp_wait(&self, ms: Option<u64>) -> Duration {
        ms.map(Duration::from_millis).unwrap_or(self.default_sync_timeout).min(self.max_sync_timeout)
    }

    /// A turn to read and run a bulk invoke; `None` once management is stopping.
    pub async fn bulk_turn(&self) -> Option<SemaphorePermit<'_>> {
        self.bulk_turns.acquire().await.ok()
    }

    /// Records and publishes one invocation of a function's active version. With `wait`, waits
    /// for its outcome up to that long (woken by the worker's completion notice).
    // At debug level: a span per invoke was about 4 % of management's instructions; the
    // events of this path name their invocation themselves.
    #[tracing::instrument(name = "invocation", level = "debug", skip_all, fields(id = tracing::field::Empty, function = %function))]
    pub async fn invoke(
        self: &Arc<Self>,
        function: &str,
        payload: Bytes,
        wait: Option<Duration>,
    ) -> Result<Accepted, Error> {
        self.invoke_with(function, payload, wait, Vec::new()).await
    }

    /// [`invoke`](Self::invoke), with the headers of a triggering message for the function.
    pub async fn invoke_with(
        self: &Arc<Self>,
        function: &str,
        payload: Bytes,
        wait: Option<Duration>,
        headers: Vec<(String, String)>,
    ) -> Result<Accepted, Error> {
        self.invoke_as(Uuid::now_v7(), function, payload, wait, headers).await
    }

    /// An invoke under an idempotency key: the first with this key for the function within
    /// the window runs; a repeat with the same input is answered with the first one's id (and,
    /// when it waits, the first one's outcome), and nothing runs again; a repeat with another
    /// input is a conflict. The key is taken in the store, so repeats through any instance
    /// agree. A refusal before any publish frees the key (see [`run_keyed`](Self::run_keyed)).
    /// Returns whether this was a repeat.
    ///
    /// Safe to cancel: the key is taken and its invocation started on a task of its own, so a
    /// client that leaves cannot leave a key naming an invocation that was never published.
    pub async fn invoke_keyed(
        self: &Arc<Self>,
        function: &str,
        key: &str,
        payload: Bytes,
        wait: Option<Duration>,
    ) -> Result<(Accepted, bool), Error> {
        let (me, function, key) = (self.clone(), function.to_string(), key.to_string());
        self.tasks
            .spawn(tracing::Instrument::in_current_span(async move { me.keyed(&function, &key, payload, wait).await }))
            .await
            .map_err(|e| Error::Internal(format!("the invoke stopped: {e}")))?
    }

    async fn keyed(
        self: &Arc<Self>,
        function: &str,
        key: &str,
        payload: Bytes,
        wait: Option<Duration>,
    ) -> Result<(Accepted, bool), Error> {
        self.input_fits(&payload)?;
        self.catalog.active_manifest(function).await?;
        let digest = warren_wire::package::sha256_hex(&payload);
        let id = Uuid::now_v7();
        let first = match self.take_key(function, key, &digest, id, now_ms()).await? {
            KeyTaken::Fresh => return self.run_keyed(id, function, key, payload, wait).await,
            KeyTaken::Other => {
                return Err(Error::Store(StoreError::Conflict(format!(
                    "Idempotency-Key {key:?} of {function} was used with another input within the last {} s; \
                     use a new key for a new input",
                    self.idempotency_window.as_secs()
                ))))
            }
            KeyTaken::Repeat(first) => first,
        };
        // The first invocation as it is now; a waiting caller waits for its end (a synchronous
        // first one is recorded only once it ends or its own wait does).
        let deadline = tokio::time::Instant::now() + wait.unwrap_or_default();
        loop {
            let inv = self.store.get_invocation(first).await?;
            let done = inv.as_ref().is_some_and(|i| i.status.is_final());
            if done || wait.is_none() || tokio::time::Instant::now() >= deadline {
                return Ok((Accepted { id: first, invocation: inv, details: None }, true));
            }
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + KEYED_REPEAT_POLL)).await;
        }
    }

    /// Takes `key` of `function` for the input of digest `digest`, to name invocation `id`.
    /// A key whose invocation was never recorded, long after any wait for it could have ended
    /// (its instance stopped, or its store failed, between taking the key and recording), is
    /// taken anew.
    pub(crate) async fn take_key(
        &self,
        function: &str,
        key: &str,
        digest: &str,
        id: Uuid,
        now: i64,
    ) -> Result<KeyTaken, Error> {
        let since = now - self.idempotency_window.as_millis() as i64;
        let first = match self.store.take_idempotency_key(function, key, digest, id, now, since).await? {
            None => return Ok(KeyTaken::Fresh),
            Some((_, other)) if other != digest => return Ok(KeyTaken::Other),
            Some((first, _)) => first,
        };
        if self.store.get_invocation(first).await?.is_none() {
            let orphaned = now - (self.max_sync_timeout + KEY_ORPHANED_AFTER).as_millis() as i64;
            if self.store.take_idempotency_key(function, key, digest, id, now, orphaned).await?.is_none() {
                tracing::info!(%first, "idempotency key named an invocation never recorded; taken anew");
                return Ok(KeyTaken::Fresh);
            }
        }
        Ok(KeyTaken::Repeat(first))
    }

    /// How long an idempotency key names its invocation.
    pub(crate) fn idempotency_window(&self) -> Duration {
        self.idempotency_window
    }

    /// The first invoke under a key just taken. A refusal before anything was published (no
    /// such function, no lease, a bad request) frees the key; after a publish was tried, the
    /// message may have reached the broker and run, so the key keeps naming that invocation.
    async fn run_keyed(
        self: &Arc<Self>,
        id: Uuid,
        function: &str,
        key: &str,
        payload: Bytes,
        wait: Option<Duration>,
    ) -> Result<(Accepted, bool), Error> {
        let done = self.invoke_as(id, function, payload, wait, Vec::new()).await;
        if let Err(Error::NotFound(_) | Error::BadRequest(_) | Error::TooLarge(_) | Error::Unavailable(_)) = &done {
            if let Err(e) = self.store.forget_idempotency_key(function, key, id).await {
                tracing::warn!(%id, error = %e, "cannot free the idempotency key of a refused invoke");
            }
        }
        done.map(|a| (a, false))
    }

    /// Removes idempotency keys past their window, every [`KEY_SWEEP_EVERY`], in chunks (each
    /// its own short statement), until `stop`. Instances may sweep at once: a key is removed
    /// once whoever does it.
    pub(crate) async fn sweep_keys(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            let before = now_ms() - self.idempotency_window.as_millis() as i64;
            let mut removed = 0u64;
            loop {
                match self.store.expire_idempotency_keys(before, KEY_SWEEP_CHUNK).await {
                    Ok(n) => {
                        removed += n;
                        if n < KEY_SWEEP_CHUNK as u64 || stop.is_cancelled() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot remove expired idempotency keys now");
                        break;
                    }
                }
            }
            if removed > 0 {
                tracing::info!(removed, "expired idempotency keys removed");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(KEY_SWEEP_EVERY) => {}
            }
        }
    }

    /// [`invoke`](Self::invoke) of one version of the function, active or not (a draft, to
    /// try it before it is activated: callers of the function still get the active one).
    #[tracing::instrument(name = "invocation", level = "debug", skip_all, fields(id = tracing::field::Empty, function = %function, version = version))]
    pub async fn invoke_version(
        self: &Arc<Self>,
        function: &str,
        version: i64,
        payload: Bytes,
        wait: Option<Duration>,
    ) -> Result<Accepted, Error> {
        self.invoke_pinned(Uuid::now_v7(), function, Some(version), payload, wait, Vec::new()).await
    }

    /// [`invoke_with`](Self::invoke_with) under a given id.
    async fn invoke_as(
        self: &Arc<Self>,
        id: Uuid,
        function: &str,
        payload: Bytes,
        wait: Option<Duration>,
        headers: Vec<(String, String)>,
    ) -> Result<Accepted, Error> {
        self.invoke_pinned(id, function, None, payload, wait, headers).await
    }

    /// An invoke of `version`, or of the active version when `None`.
    async fn invoke_pinned(
        self: &Arc<Self>,
        id: Uuid,
        function: &str,
        version: Option<i64>,
        payload: Bytes,
        wait: Option<Duration>,
        headers: Vec<(String, String)>,
    ) -> Result<Accepted, Error> {
        self.input_fits(&payload)?;
        let (version, manifest) = match version {
            Some(v) => (v, self.catalog.version_manifest(function, v).await?),
            None => self.catalog.active_manifest(function).await?,
        };
        self.ensure_pool(&manifest.pool).await?;
        tracing::Span::current().record("id", tracing::field::display(id));
        // An asynchronous invoke is recorded `queued` before it is published: its id is
        // answered at once and may be looked up at once. A synchronous one is recorded by the
        // worker with its outcome, in one write: nobody can ask for it before its answer (and
        // if the wait ends first, it is recorded here before the 202, its message confirmed).
        let Some(wait) = wait else {
            let (me, function) = (self.clone(), function.to_string());
            let queued =
                async move { me.record_and_publish(id, &function, version, &manifest.pool, payload, headers).await };
            return self
                .tasks
                .spawn(tracing::Instrument::in_current_span(queued))
                .await
                .map_err(|e| Error::Internal(format!("the invoke stopped: {e}")))?;
        };
        let new =
            NewInvocation { id, function: function.to_string(), version, payload: Vec::new(), created_ms: now_ms() };
        self.invoke_sync(new, &manifest.pool, payload, headers, wait).await
    }

    /// A synchronous invoke: published unrecorded, answered from the worker's notice (or the
    /// store) when it comes, or recorded `queued` when the wait ends first.
    async fn invoke_sync(
        &self,
        mut new: NewInvocation,
        pool: &str,
        payload: Bytes,
        headers: Vec<(String, String)>,
        wait: Duration,
    ) -> Result<Accepted, Error> {
        let id = new.id;
        // A sync answer shows the input (a reference count, not a copy, until then); it is
        // copied into a record only if this instance records it (the wait ended first).
        let input = payload.clone();
        let msg = InvocationMessage {
            notify: Some(self.notices.clone()),
            headers,
            unrecorded: true,
            not_before_ms: None,
            ..first_message(&new, payload, true)
        };
        let (waiting, mut rx) = self.waiters.register(id);
        // The broker hands a message to its consumer before it confirms it (the confirm waits
        // for the broker's disk), so the worker's notice that the outcome is stored can come
        // first: the answer then does not wait for the confirm, which is awaited on its own.
        // A publish that fails before any notice is a 503, and nothing was recorded.
        let publish = {
            let (m_publish, pool, body) = (self.metrics.publish.clone(), pool.to_string(), Bytes::from(msg.encode()));
            let transport = self.transport.clone();
            self.tasks.spawn(async move {
                let started = std::time::Instant::now();
                let published = transport.publish(&pool, body).await;
                m_publish.observe(started.elapsed().as_secs_f64());
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
                Ok(Err(e)) => {
                    self.metrics.sync_wait("publish_failed");
                    return Err(e.into());
                }
                Err(e) => {
                    self.metrics.sync_wait("publish_failed");
                    return Err(Error::Transport(TransportError::Other(format!("the publish was interrupted: {e}"))));
                }
            },
        };
        self.metrics.accepted(&new.function, 1);
        drop(waiting);
        let noticed_in_time = matches!(noticed, Ok(Ok(_)));
        self.metrics.sync_wait(if noticed_in_time { "notice" } else { "deadline" });
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
                    function: new.function,
                    version: o.version,
                    status: o.status,
                    attempts: o.attempt,
                    payload: input.to_vec(),
                    result: o.result,
                    error: o.error,
                    worker: Some(o.worker),
                    created_ms: new.created_ms,
                    started_ms: o.started_ms,
                    finished_ms: Some(o.finished_ms),
                    run_at_ms: None,
                };
                return Ok(Accepted { id, invocation: Some(inv), details: Some((o.logs, vec![attempt])) });
            }
        }
        // Read once: after a notice without the outcome, or at the deadline in case a notice
        // was lost.
        let inv = self.metrics.store.time("get_invocation", self.store.get_invocation(id)).await?;
        if !noticed_in_time {
            if let Some(i) = inv.as_ref().filter(|i| i.status.is_final()) {
                // Its worker stored the outcome but its notice was not here in time: the run
                // ended just at the deadline, or the notice was lost (a broker outage, a worker
                // that stopped right after storing).
                tracing::info!(%id, status = %i.status, worker = ?i.worker, "a finished invocation's completion notice did not come in time; answered from the store at the wait's end");
            }
        }
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
        let held = self.lease.hold()?;
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
        self.metrics.accepted(function, 1);
        tracing::debug!("invocation published");
        Ok(Accepted { id, invocation: None, details: None })
    }

    /// An asynchronous invoke of the function's active version that runs at `run_at_ms`:
    /// recorded `queued` with its time, and published to wait in the broker's hop queues
    /// (`topology::schedule_hop`) until then; not fresh, so that the worker that runs it claims
    /// it first (a cancel meanwhile is found in the store even by a worker it did not reach).
    pub async fn invoke_scheduled(
        self: &Arc<Self>,
        function: &str,
        payload: Bytes,
        run_at_ms: i64,
    ) -> Result<Accepted, Error> {
        self.input_fits(&payload)?;
        let (version, manifest) = self.catalog.active_manifest(function).await?;
        self.ensure_pool(&manifest.pool).await?;
        let (me, function) = (self.clone(), function.to_string());
        let scheduled = async move {
            let held = me.lease.hold()?;
            let new = NewInvocation {
                id: Uuid::now_v7(),
                function: function.clone(),
                version,
                payload: payload.to_vec(),
                created_ms: held.ms,
            };
            let msg = InvocationMessage { not_before_ms: Some(run_at_ms), ..first_message(&new, payload, false) };
            me.store.create_scheduled(&new, run_at_ms).await?;
            me.publish_recorded(&manifest.pool, &msg).await?;
            drop(held);
            me.metrics.accepted(&function, 1);
            tracing::debug!(id = %new.id, run_at_ms, "scheduled invocation published");
            Ok(Accepted { id: new.id, invocation: None, details: None })
        };
        self.tasks
            .spawn(tracing::Instrument::in_current_span(scheduled))
            .await
            .map_err(|e| Error::Internal(format!("the invoke stopped: {e}")))?
    }

    /// Records and publishes one independent invocation of a function's active version per
    /// input (a bulk asynchronous invoke: no batch, no fan-in, each runs and is recorded like
    /// one `mode=async` invoke). All are recorded `queued` in one commit (PostgreSQL, SQLite),
    /// or none (the error). Then each is published with its confirm; one the broker does not
    /// confirm is recorded failed ("not queued") and listed in [`BulkAccepted::not_queued`].
    ///
    /// Safe to cancel: the records and their publishes run on a task of their own.
    pub async fn invoke_many(self: &Arc<Self>, function: &str, inputs: Vec<Bytes>) -> Result<BulkAccepted, Error> {
        let (me, function) = (self.clone(), function.to_string());
        self.tasks
            .spawn(async move { me.record_and_publish_many(&function, inputs, Vec::new()).await })
            .await
            .map_err(|e| Error::Internal(format!("the bulk invoke stopped: {e}")))?
    }

    /// A bulk invoke whose inputs each come with an idempotency key (`keys[i]` for
    /// `inputs[i]`, distinct): an input whose key was taken within the window with the same
    /// input is answered with that first invocation's id and not run again; one taken with
    /// another input refuses the whole request (409, naming its place), freeing the keys this
    /// request took. The others run as a bulk invoke's. Returns the ids in input order and
    /// how many were repeats.
    ///
    /// Safe to cancel: it runs on a task of its own.
    pub(crate) async fn invoke_many_keyed(
        self: &Arc<Self>,
        function: &str,
        items: Vec<KeyedInput>,
    ) -> Result<(BulkAccepted, usize), Error> {
        let (me, function) = (self.clone(), function.to_string());
        self.tasks
            .spawn(async move { me.keyed_many(&function, items).await })
            .await
            .map_err(|e| Error::Internal(format!("the bulk invoke stopped: {e}")))?
    }

    async fn keyed_many(&self, function: &str, items: Vec<KeyedInput>) -> Result<(BulkAccepted, usize), Error> {
        let (mut keys, mut inputs, mut digests) =
            (Vec::with_capacity(items.len()), Vec::with_capacity(items.len()), Vec::with_capacity(items.len()));
        for KeyedInput { key, input, digest } in items {
            keys.push(key);
            inputs.push(input);
            digests.push(digest);
        }
        self.catalog.active_manifest(function).await?;
        let now = now_ms();
        let mut ids = Vec::with_capacity(inputs.len());
        let mut fresh = Vec::new(); // places of the inputs that run
        let mut took = Vec::new(); // their keys, with the ids they name
        for (i, (key, digest)) in keys.iter().zip(&digests).enumerate() {
            let id = Uuid::now_v7();
            match self.take_key(function, key, digest, id, now).await {
                Ok(KeyTaken::Fresh) => {
                    fresh.push(i);
                    took.push((key.clone(), id));
                    ids.push(id);
                }
                Ok(KeyTaken::Repeat(first)) => ids.push(first),
                taken => {
                    // Another input under the key, or the store failed: nothing of this request runs.
                    self.forget_keys(function, &took).await;
                    return Err(match taken {
                        Err(e) => e,
                        _ => Error::Store(StoreError::Conflict(format!(
                            "input {} has the idempotency key {key:?}, used for {function} with another input within the last {} s; nothing was accepted",
                            i + 1,
                            self.idempotency_window.as_secs()
                        ))),
                    });
                }
            }
        }
        let repeats = inputs.len() - fresh.len();
        if fresh.is_empty() {
            return Ok((BulkAccepted { ids, not_queued: Vec::new() }, repeats));
        }
        let run: Vec<Bytes> = fresh.iter().map(|&i| inputs[i].clone()).collect();
        let run_ids: Vec<Uuid> = took.iter().map(|(_, id)| *id).collect();
        match self.record_and_publish_many(function, run, run_ids).await {
            Ok(mut out) => {
                // In input order: the repeats' first ids and the new ones queued (those not
                // queued are listed apart, as in any bulk invoke).
                let refused: std::collections::HashSet<Uuid> = out.not_queued.iter().map(|(id, _)| *id).collect();
                out.ids = ids.into_iter().filter(|id| !refused.contains(id)).collect();
                Ok((out, repeats))
            }
            Err(e) => {
                // Nothing was recorded: the keys taken here name nothing.
                self.forget_keys(function, &took).await;
                Err(e)
            }
        }
    }

    /// Frees keys taken for inputs that were never recorded (each with the id it names).
    pub(crate) async fn forget_keys(&self, function: &str, taken: &[(String, Uuid)]) {
        for (key, id) in taken {
            if let Err(e) = self.store.forget_idempotency_key(function, key, *id).await {
                tracing::warn!(%id, error = %e, "cannot free the idempotency key of an input never recorded");
            }
        }
    }

    /// Records and publishes each input as an invocation (with `ids[i]`, or new ids when `ids`
    /// is empty).
    async fn record_and_publish_many(
        &self,
        function: &str,
        inputs: Vec<Bytes>,
        ids: Vec<Uuid>,
    ) -> Result<BulkAccepted, Error> {
        if let Some((n, big)) = inputs.iter().enumerate().find(|(_, b)| b.len() > self.max_payload_bytes) {
            return Err(Error::TooLarge(format!(
                "input {} is {} bytes, over the limit of {} bytes",
                n + 1,
                big.len(),
                self.max_payload_bytes
            )));
        }
        let (version, manifest) = self.catalog.active_manifest(function).await?;
        self.ensure_pool(&manifest.pool).await?;
        // Open until every input is published or recorded failed (see `lease`).
        let _held = self.lease.hold()?;
        let mut records = new_records(function, version, &inputs);
        for (r, id) in records.iter_mut().zip(ids) {
            r.id = id;
        }
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
        self.metrics.accepted(function, out.ids.len() as u64);
        tracing::debug!(function, accepted = out.ids.len(), not_queued = out.not_queued.len(), "bulk invoke");
        Ok(out)
    }

    /// Records a new invocation `queued` through the group commit; `false` when its id is
    /// recorded already.
    async fn create(&self, new: NewInvocation) -> Result<bool, Error> {
        Ok(self.metrics.store.time("create_invocation", async { self.creates.call(new).await? }).await?)
    }

    /// Declares a pool's queues on the broker, once per instance.
    pub(crate) async fn ensure_pool(&self, pool: &str) -> Result<(), Error> {
        if !self.declared_pools.contains_key(pool) {
            self.transport.declare_pool(pool).await?;
            self.declared_pools.insert(pool.to_string(), ());
        }
        Ok(())
    }

    /// Declares the queues of every pool in use. Run at the start, it stops an instance whose
    /// `--queue-type` differs from the queues already on the broker before it takes work.
    pub async fn declare_pools(&self) -> Result<(), Error> {
        for pool in self.pools().await? {
            self.ensure_pool(&pool).await?;
        }
        Ok(())
    }

    /// The pools in use: those of every function's active version, and any declared here. A
    /// function whose active version cannot be read is left out (it names no pool anyone can
    /// use); a store that cannot answer is an error.
    pub async fn pools(&self) -> Result<Vec<String>, Error> {
        let mut pools: std::collections::BTreeSet<String> =
            self.declared_pools.iter().map(|e| e.key().clone()).collect();
        pools.insert(default_pool());
        for f in self.store.list_functions().await? {
            match self.catalog.version_manifest(&f.name, f.active_version).await {
                Ok(manifest) => {
                    pools.insert(manifest.pool.clone());
                }
                Err(Error::Store(StoreError::Unavailable(e))) => return Err(StoreError::Unavailable(e).into()),
                Err(_) => {}
            }
        }
        Ok(pools.into_iter().collect())
    }

    /// Publishes a message, its pool declared first; a failed publish is only answered (no
    /// record is settled: the caller publishes it again).
    pub(crate) async fn publish(&self, pool: &str, msg: &InvocationMessage) -> Result<(), Error> {
        self.ensure_pool(pool).await?;
        self.transport.publish(pool, msg.encode().into()).await?;
        Ok(())
    }

    /// Publishes the message of an invocation already recorded `queued` (or not recorded, for a
    /// synchronous invoke). If the broker does not confirm it, a recorded invocation is
    /// recorded failed ("not queued": never reported accepted).
    pub(crate) async fn publish_recorded(&self, pool: &str, msg: &InvocationMessage) -> Result<(), Error> {
        // A pool that cannot be declared is a publish that failed: the record is settled too.
        let published = match self.ensure_pool(pool).await {
            Ok(()) => {
                let started = std::time::Instant::now();
                // A scheduled one takes its first hop toward its time.
                let hop = msg.not_before_ms.and_then(|at| topology::schedule_hop(at.saturating_sub(now_ms())));
                let body = msg.encode().into();
                let published = match hop {
                    Some(hop) => self.transport.publish_later(pool, body, hop).await,
                    None => self.transport.publish(pool, body).await,
                }
                .map_err(Error::from);
                self.metrics.publish.observe(started.elapsed().as_secs_f64());
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
                    self.record_failure_later(msg.id, failed, self.lease.hold_at(msg.created_ms));
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

    /// Records the failure of an invocation recorded `queued` whose message will never be
    /// published (its publish failed, or its source message was refused), retrying until the
    /// store takes it; `held` keeps the record open in this instance's lease meanwhile. It
    /// outlives a stop: if the store never takes it, the lease is not handed back but lapses,
    /// and another instance settles the record.
    pub(crate) fn record_failure_later(&self, id: Uuid, failed: Outcome, held: Held) {
        let store = self.store.clone();
        self.tasks.spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
            loop {
                backoff.wait().await;
                match store.complete(id, &failed).await {
                    Ok(_) => break,
                    Err(e) => tracing::debug!(%id, error = %e, "cannot record an unpublished invocation's failure yet"),
                }
            }
            drop(held);
        });
    }
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
        not_before_ms: None,
    }
}

/// What taking an idempotency key found ([`Invoker::take_key`]).
pub(crate) enum KeyTaken {
    /// The key is the new invocation's now.
    Fresh,
    /// The key names an earlier invocation of the same input.
    Repeat(Uuid),
    /// The key names an invocation of another input.
    Other,
}

/// One keyed input, `{"key": "...", "input": ...}` (a line of a keyed bulk invoke or batch).
pub(crate) struct KeyedInput {
    /// 1 to 255 printable ASCII characters.
    pub key: String,
    /// The input's JSON text as sent: what the function gets.
    pub input: Bytes,
    /// The digest the key is compared by: of the input written compactly, so that the same
    /// input under the same key matches however it was spaced.
    pub digest: String,
}

/// Reads a [`KeyedInput`]; the error says what is wrong, to follow "input N" or "line N".
pub(crate) fn keyed_item(text: &[u8]) -> Result<KeyedInput, String> {
    let (key, input, digest) = keyed_parts(text)?;
    Ok(KeyedInput { key, input: Bytes::copy_from_slice(input.as_bytes()), digest })
}

/// A keyed input's key, its input as the text it is within `text`, and its digest (see
/// [`KeyedInput`]).
pub(crate) fn keyed_parts(text: &[u8]) -> Result<(String, &str, String), String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Keyed<'a> {
        key: String,
        #[serde(borrow)]
        input: &'a serde_json::value::RawValue,
    }
    let k: Keyed =
        serde_json::from_slice(text).map_err(|e| format!("is not {{\"key\": \"...\", \"input\": ...}} ({e})"))?;
    if k.key.is_empty() || k.key.len() > 255 || !k.key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("has a key that is not 1 to 255 printable ASCII characters".into());
    }
    let compact: serde_json::Value =
        serde_json::from_str(k.input.get()).map_err(|e| format!("has an input that is not JSON ({e})"))?;
    let digest = warren_wire::package::sha256_hex(&serde_json::to_vec(&compact).unwrap_or_default());
    Ok((k.key, k.input.get(), digest))
}

#[cfg(test)]
mod tests {
    use super::keyed_item;

    #[test]
    fn a_keyed_input_is_kept_as_sent_and_compared_however_spaced() {
        let a = keyed_item(br#"{"key": "k", "input": {"b": 1,  "a": 18446744073709551617}}"#).unwrap();
        assert_eq!((a.key.as_str(), &a.input[..]), ("k", &br#"{"b": 1,  "a": 18446744073709551617}"#[..]));
        let b = keyed_item(br#"{"input":{"b":1,"a":18446744073709551617},"key":"k"}"#).unwrap();
        assert_eq!(a.digest, b.digest, "spacing does not change the digest");
        let c = keyed_item(br#"{"key": "k", "input": {"b": 2, "a": 18446744073709551617}}"#).unwrap();
        assert_ne!(a.digest, c.digest);
        for bad in [&br#"{"input": 1}"#[..], br#"{"key": "", "input": 1}"#, br#"{"key": "k", "input": 1, "x": 2}"#] {
            assert!(keyed_item(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
