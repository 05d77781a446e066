//! The store's interface: one [`Store`] made of a sub-trait per concern, so that a method is
//! found by what it is about. Callers hold an `Arc<dyn Store>`; every method of every
//! sub-trait is callable on it without importing the sub-trait.

use async_trait::async_trait;
use uuid::Uuid;
use warren_wire::manifest::Manifest;

use crate::model::*;

/// Everything a backend stores. Every backend passes the conformance suite
/// (`tests/tests/store_conformance.rs`).
pub trait Store:
    FunctionStore
    + InvocationStore
    + BatchStore
    + TriggerStore
    + SettingStore
    + KeyStore
    + FleetStore
    + RetentionStore
    + Send
    + Sync
    + 'static
{
    /// `sqlite`, `postgres` or `mssql`.
    fn backend(&self) -> &'static str;
}

/// Functions and their immutable versions.
#[async_trait]
pub trait FunctionStore: Send + Sync {
    /// Stores a new immutable version and makes it the function's active version, atomically.
    async fn publish_version(
        &self,
        manifest: &Manifest,
        manifest_text: &str,
        package: &[u8],
        sha256: &str,
    ) -> Result<FunctionVersion> {
        self.store_version(manifest, manifest_text, package, sha256, true).await
    }
    /// Stores a new immutable version; with `activate`, makes it the function's active
    /// version in the same transaction. Without, it is a draft that only a pinned invoke runs,
    /// unless the function has no active version (new, or deleted): then it becomes active,
    /// as there is nothing callers get that it could change.
    async fn store_version(
        &self,
        manifest: &Manifest,
        manifest_text: &str,
        package: &[u8],
        sha256: &str,
        activate: bool,
    ) -> Result<FunctionVersion>;
    async fn list_functions(&self) -> Result<Vec<FunctionInfo>>;
    async fn get_function(&self, name: &str) -> Result<Option<FunctionInfo>>;
    /// Newest first.
    async fn list_versions(&self, name: &str) -> Result<Vec<FunctionVersion>>;
    async fn get_version(&self, name: &str, version: i64) -> Result<Option<FunctionVersion>>;
    async fn get_package(&self, name: &str, version: i64) -> Result<Option<Vec<u8>>>;
    /// Makes an existing version the function's active one, in one statement (as a publish
    /// does): `false` when the function has no such version.
    async fn activate_version(&self, name: &str, version: i64) -> Result<bool>;
    /// Deletes a function with its versions, settings and timer ticks (its finished invocations
    /// stay, for their history), in one transaction: `Conflict` saying what is open when it has
    /// open invocations or an open batch (of it or fanning in to it); `false` when there is no
    /// such function.
    async fn delete_function(&self, name: &str) -> Result<bool>;
    /// Pauses a function at `now_ms` (until `resume_at_ms`, if given; a pause of a paused
    /// function moves only that end): `false` when there is no such function.
    async fn pause_function(&self, name: &str, now_ms: i64, resume_at_ms: Option<i64>) -> Result<bool>;
    /// Resumes a paused function at `now_ms` (`due`: only if its `resume_at_ms` has come). Its
    /// hold stays until a drain ends it. `false` when it was not paused (or not due).
    async fn resume_function(&self, name: &str, now_ms: i64, due: bool) -> Result<bool>;
    /// The functions whose invocations are held, or may still be (deleted ones aside).
    async fn holds(&self) -> Result<Vec<Hold>>;
    /// Marks that something was just set aside in a function's hold (`since_ms` moves to
    /// `now_ms`), so that the hold is drained and does not end before it is found empty again.
    async fn mark_held(&self, name: &str, now_ms: i64) -> Result<()>;
    /// Ends the hold of a resumed function whose held invocations are all back in its pool,
    /// unless it was paused or resumed again since `since_ms`. `true` when it ended.
    async fn drained(&self, name: &str, since_ms: i64) -> Result<bool>;
}

/// The refusal of a delete that finds work open, for every backend.
pub(crate) fn still_in_use(name: &str, invocations: i64, batches: i64) -> Option<StoreError> {
    let mut open = Vec::new();
    if invocations > 0 {
        open.push(format!("{invocations} open invocation{}", if invocations == 1 { "" } else { "s" }));
    }
    if batches > 0 {
        open.push(format!("{batches} open batch{}", if batches == 1 { "" } else { "es" }));
    }
    (!open.is_empty()).then(|| {
        StoreError::Conflict(format!(
            "function {name} has {}; wait until they end (a batch may be cancelled: warren batch cancel ID), then delete it",
            open.join(" and ")
        ))
    })
}

/// Invocations, their attempts and log lines: recorded, claimed, ended, replayed, read.
#[async_trait]
pub trait InvocationStore: Send + Sync {
    /// Records an invocation as `queued` (before its message is published).
    async fn create_invocation(&self, inv: &NewInvocation) -> Result<()>;
    /// [`create_invocation`](Self::create_invocation) for many at once (a group commit): one
    /// answer per entry, in order: `Ok(true)` recorded, `Ok(false)` where the id exists already
    /// (or came earlier in `invs`; nothing is changed then), or the error that kept this entry
    /// from being recorded. Backends without a faster way record them one by one; after a
    /// failure the rest are not tried and get the same error.
    async fn create_invocations(&self, invs: &[NewInvocation]) -> Vec<Result<bool>> {
        let mut out: Vec<Result<bool>> = Vec::with_capacity(invs.len());
        for inv in invs {
            if let Some(Err(e)) = out.last() {
                let again = e.again();
                out.push(Err(again));
                continue;
            }
            out.push(match self.create_invocation(inv).await {
                Ok(()) => Ok(true),
                Err(StoreError::Conflict(_)) => Ok(false),
                Err(e) => Err(e),
            });
        }
        out
    }
    /// Marks an invocation `running` on `worker` for `attempt` of function version
    /// `inv.version` (a replay may run a newer version than the first attempt), unless it is
    /// final already or a later attempt is scheduled. Creates the record if it does not exist (a message
    /// published by another path).
    async fn claim(&self, inv: &NewInvocation, attempt: i32, worker: &str, started_ms: i64) -> Result<Claim>;
    /// [`claim`](Self::claim) for many messages at once, all by `worker` at `started_ms`: one
    /// verdict per entry, in order. Backends without a faster way claim them one by one.
    async fn claim_many(&self, items: &[(&NewInvocation, i32)], worker: &str, started_ms: i64) -> Result<Vec<Claim>> {
        let mut out = Vec::with_capacity(items.len());
        for (inv, attempt) in items {
            out.push(self.claim(inv, *attempt, worker, started_ms).await?);
        }
        Ok(out)
    }
    /// Stores the final outcome of `outcome.attempt` (with its `started_ms` and `version` when
    /// given), its attempt record and its log lines, if the invocation is not final yet and no
    /// later attempt is scheduled. Returns `false` (and stores nothing) otherwise: the first
    /// final record wins. A backend may keep the last attempt's record in the invocation's own
    /// row (see [`list_attempts`](Self::list_attempts)).
    async fn complete(&self, id: Uuid, outcome: &Outcome) -> Result<bool>;
    /// [`complete`](Self::complete) for many invocations at once: a group commit, one result
    /// per entry, in order. Backends without a faster way store them one by one.
    async fn complete_many(&self, items: &[(Uuid, Outcome)]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(items.len());
        for (id, o) in items {
            out.push(self.complete(*id, o).await?);
        }
        Ok(out)
    }
    /// Records a failed attempt (its record and log lines) and schedules attempt
    /// `outcome.attempt + 1`: the invocation goes back to `queued`. `false` when the invocation
    /// is final or moved past this attempt already.
    async fn retry_later(&self, id: Uuid, outcome: &Outcome) -> Result<bool>;
    /// Takes an idempotency key of `function` for invocation `id` of a body with this digest:
    /// `None` when it was free (or named only something recorded before `since_ms`, past the
    /// window), else the invocation it names and that body's digest. Atomic across instances.
    async fn take_idempotency_key(
        &self,
        function: &str,
        key: &str,
        body_sha256: &str,
        id: Uuid,
        now_ms: i64,
        since_ms: i64,
    ) -> Result<Option<(Uuid, String)>>;
    /// Frees a key that names `id` (its invoke was not accepted), so that a retry may take it.
    async fn forget_idempotency_key(&self, function: &str, key: &str, id: Uuid) -> Result<()>;
    /// Removes up to `limit` idempotency keys taken before `before_ms` (past their window);
    /// returns how many.
    async fn expire_idempotency_keys(&self, before_ms: i64, limit: u32) -> Result<u64>;
    /// Turns a `dead` invocation back to `queued` for one more attempt; returns that attempt's
    /// number, or `None` when the invocation is not dead (any more).
    async fn replay(&self, id: Uuid) -> Result<Option<i32>>;
    /// Takes one of `limit` run turns of `function` (its `max_concurrency`) for `invocation`,
    /// held until `until_ms`: `true` when taken (or held by it already). A turn held past its
    /// time (its worker stopped) is free again.
    async fn take_turn(&self, function: &str, limit: u32, invocation: Uuid, now_ms: i64, until_ms: i64)
        -> Result<bool>;
    /// Gives `invocation`'s turn of `function` back.
    async fn give_turn(&self, function: &str, invocation: Uuid) -> Result<()>;
    /// Records a scheduled invocation: `queued`, to run at `run_at_ms`, in one transaction.
    async fn create_scheduled(&self, inv: &NewInvocation, run_at_ms: i64) -> Result<()>;
    /// Cancels an invocation that is not final (queued, waiting for a retry, or running): it
    /// becomes `cancelled` at `now_ms`, and no outcome of a run is stored over it. `Some(true)`
    /// when this call cancelled it, `Some(false)` when it was final already, `None` when there
    /// is no such invocation.
    async fn cancel_invocation(&self, id: Uuid, now_ms: i64) -> Result<Option<bool>>;
    async fn get_invocation(&self, id: Uuid) -> Result<Option<Invocation>>;
    /// Newest first.
    async fn list_invocations(&self, filter: &InvocationFilter) -> Result<Vec<Invocation>>;
    /// In attempt, then line order.
    async fn get_logs(&self, id: Uuid) -> Result<Vec<LogLine>>;
    /// Stores log lines of a run still going, so that they can be read before its outcome
    /// (which brings every line again: a line stored twice is kept once).
    async fn append_logs(&self, id: Uuid, lines: &[LogLine]) -> Result<()>;
    /// The attempts that ended, in order: the failed attempts that were retried, and the last
    /// one once the invocation is final (a cancelled batch item never ran: it has none).
    async fn list_attempts(&self, id: Uuid) -> Result<Vec<AttemptRecord>>;
    /// Invocations created in `[since_ms, until_ms)`, counted per minute of their creation and
    /// per current status; by minute, then status. Minutes without invocations are left out.
    async fn count_per_minute(&self, since_ms: i64, until_ms: i64) -> Result<Vec<MinuteCount>>;
}

/// Batches: items fanned out, and the fan-in once all are final.
#[async_trait]
pub trait BatchStore: Send + Sync {
    /// Records a batch in state `submitting`.
    async fn create_batch(&self, batch: &NewBatch) -> Result<()>;
    /// Records items of a batch as `queued` invocations (before they are published), in one
    /// multi-row insert.
    async fn add_batch_items(&self, batch: Uuid, items: &[NewInvocation]) -> Result<()>;
    /// Ends submission: records the total (and why it stopped early, if it did) and moves
    /// `submitting` to `running`. A batch cancelled meanwhile stays cancelled.
    async fn seal_batch(&self, batch: Uuid, total: i64, error: Option<&str>) -> Result<()>;
    async fn get_batch(&self, batch: Uuid) -> Result<Option<Batch>>;
    /// Newest first.
    async fn list_batches(&self, limit: u32) -> Result<Vec<Batch>>;
    /// Batches whose end is not recorded yet: `running`, `finishing`, and `cancelled` ones with
    /// items still in flight. Without their counts.
    async fn open_batches(&self) -> Result<Vec<Batch>>;
    /// Items not final yet.
    async fn batch_unfinished(&self, batch: Uuid) -> Result<i64>;
    /// Whether any item of a batch is still queued or running: what the fan-in sweeper asks
    /// every few hundred milliseconds, so it must not count a million-item batch each time.
    async fn batch_has_unfinished(&self, batch: Uuid) -> Result<bool> {
        Ok(self.batch_unfinished(batch).await? > 0)
    }
    /// A batch's state alone (cheap: no counts); `None` when there is no such batch.
    async fn batch_state(&self, batch: Uuid) -> Result<Option<BatchState>>;
    /// Cancels a batch that is submitting or running: its queued items become `cancelled`
    /// (running ones finish). Returns how many were cancelled; `None` if the batch is not
    /// there; `Conflict` if it ended already.
    async fn cancel_batch(&self, batch: Uuid, now_ms: i64) -> Result<Option<u64>>;
    /// Ids of up to `limit` items of a batch running now.
    async fn batch_running(&self, batch: Uuid, limit: u32) -> Result<Vec<Uuid>>;
    /// Items' outcomes in id order, after `after`, up to `limit` items, and ending before the item
    /// whose result would take the results read past `max_bytes` (the first item always comes):
    /// results may be megabytes each, and the store reads no more than that. A page whose
    /// results come to less than `max_bytes` and that has fewer than `limit` items is the last.
    async fn batch_results(
        &self,
        batch: Uuid,
        after: Option<Uuid>,
        limit: u32,
        max_bytes: u64,
    ) -> Result<Vec<ItemResult>>;
    /// Moves a `running` batch to `finishing` and records its fan-in invocation (`queued`), in one
    /// transaction. `false` when another instance did it first (or the batch is not running).
    async fn begin_fanin(&self, batch: Uuid, followup: &NewInvocation) -> Result<bool>;
    /// Records a batch's end (`done`, or the end of a cancelled batch).
    async fn end_batch(&self, batch: Uuid, state: BatchState, finished_ms: i64) -> Result<()>;
}

/// Timer ticks (each fired once) and output deliveries (leased, attempted, recorded).
#[async_trait]
pub trait TriggerStore: Send + Sync {
    /// Fires one tick: records (function, tick) and its invocation in one transaction, unless
    /// that tick was fired already (by any instance). `true` when this call fired it.
    async fn fire_tick(&self, function: &str, tick_ms: i64, inv: &NewInvocation) -> Result<bool>;
    /// The newest tick fired for a function.
    async fn last_tick(&self, function: &str) -> Result<Option<i64>>;
    /// Leases up to `limit` pending deliveries due by `now_ms` for `lease_ms` (no other instance
    /// takes them meanwhile) and returns them.
    async fn take_deliveries(&self, now_ms: i64, lease_ms: i64, limit: u32) -> Result<Vec<DeliveryRecord>>;
    /// Records one delivery attempt: `delivered`, `failed` (for good), or `pending` again at
    /// `next_ms`.
    async fn record_delivery(
        &self,
        invocation: Uuid,
        output: i32,
        status: DeliveryStatus,
        attempts: i32,
        error: Option<&str>,
        next_ms: i64,
    ) -> Result<()>;
    async fn list_deliveries(&self, invocation: Uuid) -> Result<Vec<DeliveryRecord>>;
    /// Makes an invocation's failed deliveries pending again; returns how many.
    async fn retry_deliveries(&self, invocation: Uuid, now_ms: i64) -> Result<u64>;
}

/// Functions' settings (environment variables; secret ones stored sealed).
#[async_trait]
pub trait SettingStore: Send + Sync {
    /// Creates or replaces a function's setting.
    async fn set_setting(&self, function: &str, setting: &Setting) -> Result<()>;
    /// `false` when there was no such setting.
    async fn delete_setting(&self, function: &str, name: &str) -> Result<bool>;
    /// By name.
    async fn list_settings(&self, function: &str) -> Result<Vec<Setting>>;
}

/// API keys, stored as the sha256 of the key only.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Records a new API key (only its hash). A second key with the same hash is a `Conflict`.
    async fn create_key(&self, key: &ApiKey) -> Result<()>;
    /// Every key, revoked ones included, oldest first.
    async fn list_keys(&self) -> Result<Vec<ApiKey>>;
    /// The key whose hash this is, revoked or not.
    async fn find_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>>;
    /// Marks a key revoked at `revoked_ms`; `false` when there is no such key or it was revoked
    /// already.
    async fn revoke_key(&self, id: Uuid, revoked_ms: i64) -> Result<bool>;
}

/// The processes of a Warren: workers' heartbeats, management instances' leases, and the settling of what a stopped instance left.
#[async_trait]
pub trait FleetStore: Send + Sync {
    async fn heartbeat(&self, worker: &WorkerInfo) -> Result<()>;
    async fn list_workers(&self) -> Result<Vec<WorkerInfo>>;
    /// Tags the invocations and batches this handle records `queued` (or `submitting`) with
    /// a management instance's name, so that what the instance leaves unpublished if it stops
    /// for good can be settled by another ([`settle_lapsed`](Self::settle_lapsed)). One
    /// management instance per store handle; records made before this, or by workers, carry
    /// no origin.
    fn set_origin(&self, instance: &str);
    /// A management instance's lease: it is alive now, every invocation it recorded `queued`
    /// before `settled_ms` (its own clock, like the records' `created_ms`) has its message
    /// confirmed by the broker or is recorded failed, and it counts as stopped once `lease_ms`
    /// pass without another renewal. The lease's times are the store's clock, so the clocks of
    /// the management hosts never enter into whether a lease ran out.
    async fn instance_alive(&self, instance: &str, settled_ms: i64, lease_ms: i64) -> Result<()>;
    /// Instances whose lease has run out (by the store's clock), each with its last `settled_ms`.
    async fn lapsed_instances(&self) -> Result<Vec<(String, i64)>>;
    /// Settles what a lapsed instance left, in one transaction, if its lease has run out
    /// (checked again in the transaction: a renewal since
    /// [`lapsed_instances`](Self::lapsed_instances) cancels it): its invocations still `queued`
    /// and never claimed, recorded from `since_ms` on, become failed with attempts 0 and
    /// `why.invocation` (a "not queued" record: if the message got through after all, its
    /// run replaces the record); its batches still `submitting` become `running` with the
    /// items recorded as their total and `why.batch` as their error; its lease is dropped.
    /// Returns how many invocations and batches it settled.
    async fn settle_lapsed(&self, instance: &str, since_ms: i64, now_ms: i64, why: &Settled) -> Result<(u64, u64)>;
    /// For a store that one process owns with an in-process queue (the embedded mode), at its
    /// start: every invocation still `queued` or `running` is recorded failed with
    /// `why.invocation` (its message stopped with the last process), and every batch still
    /// `submitting` becomes `running` with the items recorded and `why.batch`. Returns how many
    /// of each, in one transaction.
    async fn abandon_unfinished(&self, now_ms: i64, why: &Settled) -> Result<(u64, u64)>;
}

/// Retention: finished work removed once past its time, in short chunks, and the duties that
/// one management instance does at a time.
#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Takes, or renews, the lease of `duty` for `holder` for `lease_ms` by the store's clock:
    /// `true` when `holder` has it now (it was free, lapsed, or its own already).
    async fn take_duty(&self, duty: &str, holder: &str, lease_ms: i64) -> Result<bool>;
    /// Records what `holder` did of `duty` (JSON text) at `now_ms`, if it holds the duty still.
    async fn report_duty(&self, duty: &str, holder: &str, report: &str, now_ms: i64) -> Result<()>;
    async fn get_duty(&self, duty: &str) -> Result<Option<Duty>>;
    /// Every function with a row, deleted ones included (their invocations stay until their
    /// time is up), with the manifest text of its active version (`None` once deleted).
    async fn retention_subjects(&self) -> Result<Vec<(String, Option<String>)>>;
    /// Removes up to `limit` invocations of `function` that are final (`succeeded` ones, or
    /// else the failed, dead and cancelled ones), not items of a batch, with no delivery still
    /// pending, and that finished before `before_ms`, with their log lines, attempts and
    /// deliveries, in one short transaction. An invocation that is not final (a replayed one)
    /// is never removed.
    async fn purge_invocations(&self, function: &str, succeeded: bool, before_ms: i64, limit: u32) -> Result<Purged>;
    /// Removes up to `limit` items (as [`purge_invocations`](Self::purge_invocations) does)
    /// of one ended batch of `function` (`done`, or cancelled with its end recorded) that ended
    /// before `before_ms`, and the batch itself once it has no items left. An open batch is
    /// never touched. Nothing removed means nothing is left to remove.
    async fn purge_batches(&self, function: &str, before_ms: i64, limit: u32) -> Result<Purged>;
    /// Removes the versions of `function` numbered `keep` or more below its newest that
    /// nothing uses: not the active one, none of a queued or running invocation or an open
    /// batch; and none at all while the function was published or activated at `quiet_since_ms`
    /// or later (a message sent without a record, a synchronous invoke's, may still name the
    /// version active before). The function's row is locked meanwhile, so an activation waits
    /// and then finds the version gone. `keep` 0 removes none. Returns how many.
    async fn purge_versions(&self, function: &str, keep: u32, quiet_since_ms: i64) -> Result<u64>;
    /// Removes up to `limit` of the oldest timer ticks of `function` fired before `before_ms`,
    /// never its newest (which the timer's catch-up reads). Returns how many.
    async fn purge_ticks(&self, function: &str, before_ms: i64, limit: u32) -> Result<u64>;
}
