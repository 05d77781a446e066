//! Batch fan-out and fan-in.
//!
//! **Fan-out** ([`Batches::submit_batch`]): items arrive as NDJSON (streamed: a
//! million-item batch is never held whole) or as a JSON array; every [`CHUNK`] items (or
//! [`CHUNK_BYTES`]) are recorded `queued` in one multi-row insert, then published
//! concurrently, each with its confirm; up to [`CHUNKS_IN_FLIGHT`] chunks are on their way at
//! once. The batch is `submitting` until the last chunk is confirmed, then `running`.
//!
//! **Fan-in** ([`Batches::sweep`], every instance): a `running` batch whose items are all final gets
//! its follow-up function invoked once. The store's conditional `running → finishing` update,
//! made in the same transaction that records the follow-up invocation, picks one instance;
//! that one publishes it and marks the batch `done`. An instance that died in between leaves
//! the batch `finishing` with a `queued` follow-up, which any instance publishes after
//! [`STALE_FINISHING`] (a rare second copy is deduplicated by the worker's claim).
//!
//! **Cancel**: queued items become `cancelled` (never run), running ones finish (the API's
//! `?running=true` cancels and stops them too, in `triggers_api`); the batch is
//! `cancelled` and gets no fan-in.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use warren_service::shutdown::pace;
use warren_store::{Batch, BatchState, NewBatch, NewInvocation, Status, Store};
use warren_wire::time::now_ms;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::Error;
use crate::invoke::{first_message, new_records, Invoker, KeyTaken};
use crate::lease::Lease;

/// Items recorded and published together, at most.
pub const CHUNK: usize = 500;
/// A chunk is also cut once its items reach this many bytes, so that a submission holds about
/// twice [`CHUNKS_IN_FLIGHT`] + 2 times this (each running chunk's items and their records,
/// one waiting, one being filled, plus one item) in memory, whatever its items' size.
const CHUNK_BYTES: usize = 4 << 20;
/// Chunks being submitted at once: the next one is recorded while the earlier ones are being
/// published and confirmed, so the store and the broker work side by side instead of in turn.
const CHUNKS_IN_FLIGHT: usize = 3;
/// How often each instance looks for batches to finish.
const SWEEP_EVERY: Duration = Duration::from_millis(300);
/// A `finishing` batch older than this lost its instance before the follow-up was published.
const STALE_FINISHING: Duration = Duration::from_secs(15);

/// How a batch body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON value per line (blank lines skipped).
    Ndjson,
    /// One JSON array of values.
    JsonArray,
}

/// A batch as submitted.
#[derive(Debug)]
pub struct Submitted {
    pub batch: Batch,
    /// Items of a keyed batch not recorded in it: their key was used within the window with
    /// the same input, by the invocation that runs them.
    pub repeated: i64,
}

/// Why a submission stopped; the items before the failure stay submitted.
#[derive(Debug)]
pub struct SubmitError {
    pub batch: Option<Uuid>,
    pub accepted: i64,
    /// Items before the failure that were repeats of keys used earlier (keyed batches).
    pub repeated: i64,
    pub error: Error,
}

/// The chunk being filled while a submission's body is read; full chunks go to the task that
/// records and publishes them (`Batches::feed`).
struct Submission<'a> {
    tx: tokio::sync::mpsc::Sender<Chunk>,
    chunk: Chunk,
    chunk_bytes: usize,
    /// Items pushed so far.
    pushed: usize,
    /// Set once a chunk failed: no further chunk is started.
    stop: &'a AtomicBool,
}

/// Items cut from the body, with their idempotency keys and the digests they are compared by
/// when the batch is keyed (`keys[i]` for `items[i]`; empty otherwise).
#[derive(Default)]
struct Chunk {
    items: Vec<Bytes>,
    keys: Vec<(String, String)>,
    /// The first item's place in the batch, from 0.
    start: usize,
}

/// What [`Batches::take_keys`] did with a chunk's keys.
struct KeysTaken {
    repeated: i64,
    /// The keys taken, with the ids of their items.
    taken: Vec<(String, Uuid)>,
    /// Why the chunk was cut short, if it was.
    refused: Option<Error>,
}

/// Whose turn it is to record its items: chunk numbers in the order they were cut.
#[derive(Default)]
struct Turn {
    next: AtomicUsize,
    moved: tokio::sync::Notify,
}

impl Turn {
    async fn wait(&self, i: usize) {
        loop {
            // Registered before the check, so an advance in between is not missed.
            let moved = self.moved.notified();
            let mut moved = std::pin::pin!(moved);
            moved.as_mut().enable();
            if self.next.load(Ordering::Acquire) == i {
                return;
            }
            moved.await;
        }
    }

    fn advance(&self) {
        self.next.fetch_add(1, Ordering::AcqRel);
        self.moved.notify_waiters();
    }
}

/// What the reader answers when a chunk failed; the chunk's own error is the one reported.
const STOPPED: &str = "the submission stopped";

impl Submission<'_> {
    /// Adds one item (with its key, in a keyed batch); a full chunk is handed over (after
    /// waiting for room).
    async fn push(&mut self, item: Bytes, key: Option<(String, String)>) -> Result<(), Error> {
        self.chunk_bytes += item.len();
        self.chunk.items.push(item);
        self.chunk.keys.extend(key);
        self.pushed += 1;
        if self.chunk.items.len() >= CHUNK || self.chunk_bytes >= CHUNK_BYTES {
            self.cut().await?;
        }
        Ok(())
    }

    /// Hands over the chunk being filled, if it holds anything.
    async fn cut(&mut self) -> Result<(), Error> {
        if self.stop.load(Ordering::Acquire) {
            return Err(Error::BadRequest(STOPPED.into()));
        }
        if self.chunk.items.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Chunk { start: self.pushed, ..Chunk::default() });
        self.chunk_bytes = 0;
        self.tx.send(chunk).await.map_err(|_| Error::BadRequest(STOPPED.into()))
    }
}

/// About this many bytes of results are read from the store at a time (a batch's items may
/// each have a result as large as the workers' output limit, 16 MiB by default): the results
/// API's pages and the fan-in's reads end there (`Store::batch_results`).
pub(crate) const RESULT_PAGE_BYTES: u64 = 8 << 20;

/// Batches: their submission, cancellation and fan-in.
pub struct Batches {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    invoker: Arc<Invoker>,
    lease: Arc<Lease>,
    /// Largest item, in bytes.
    max_payload_bytes: usize,
    /// Largest fan-in input with the results inline; past it the follow-up gets a reference.
    max_fanin_inline_bytes: usize,
    /// Where submissions run (owned by management's stop).
    tasks: TaskTracker,
}

impl Batches {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        invoker: Arc<Invoker>,
        lease: Arc<Lease>,
        config: &Config,
        tasks: TaskTracker,
    ) -> Batches {
        Batches {
            store,
            catalog,
            invoker,
            lease,
            max_payload_bytes: config.max_payload_bytes,
            max_fanin_inline_bytes: config.max_fanin_inline_bytes,
            tasks,
        }
    }

    /// [`submit_batch`](Self::submit_batch) on a task of its own: a client that goes away ends
    /// it between two chunks (its body stops), never in the middle of one.
    pub async fn submit<S, E>(
        self: &Arc<Self>,
        function: String,
        then: Option<String>,
        (format, keyed): (Format, bool),
        body: S,
    ) -> Result<Result<Submitted, SubmitError>, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let me = self.clone();
        self.tasks
            .spawn(async move { me.submit_batch(&function, then.as_deref(), (format, keyed), body).await })
            .await
            .map_err(|e| Error::Internal(format!("the submission failed: {e}")))
    }

    /// Submits a batch: one invocation of `function` per item; `then` is invoked once with the
    /// results when every item is final. Returns the batch as recorded.
    ///
    /// In a keyed batch each item is `{"key": "...", "input": ...}`: an item whose key was used
    /// for `function` within the idempotency window with the same input is a repeat, not
    /// recorded in this batch (the invocation that took the key runs it, in its own batch or
    /// alone); one used with another input stops the submission there (409), as a malformed
    /// item does. Keys are taken one by one, in item order.
    pub async fn submit_batch<S, E>(
        &self,
        function: &str,
        then: Option<&str>,
        (format, keyed): (Format, bool),
        body: S,
    ) -> Result<Submitted, SubmitError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let early = |error| SubmitError { batch: None, accepted: 0, repeated: 0, error };
        let (version, manifest) = self.catalog.active_manifest(function).await.map_err(early)?;
        if let Some(then) = then {
            if self.store.get_function(then).await.map_err(|e| early(e.into()))?.is_none() {
                return Err(early(Error::NotFound(format!(
                    "follow-up function {then:?} does not exist; publish it first"
                ))));
            }
        }
        self.invoker.ensure_pool(&manifest.pool).await.map_err(early)?;
        // A lapse of this instance's lease from here on stops the submission (see `lease`):
        // noted before the batch exists, so that no lapse can fall between its creation and
        // the first chunk unseen.
        let lapses = self.lease.lapses();
        self.lease.still_current(lapses).map_err(early)?;
        let id = Uuid::now_v7();
        let batch = NewBatch {
            id,
            function: function.to_string(),
            version,
            then: then.map(str::to_string),
            created_ms: now_ms(),
        };
        self.store.create_batch(&batch).await.map_err(|e| early(e.into()))?;

        let (mut total, mut repeated) = (0i64, 0i64);
        let outcome =
            self.feed(&batch, &manifest.pool, (format, keyed), body, lapses, (&mut total, &mut repeated)).await;
        let stopped = outcome.as_ref().err().map(|e| match repeated {
            0 => format!("submission stopped after {total} items: {e}"),
            r => format!("submission stopped after {total} items (and {r} repeats of keys used before): {e}"),
        });
        let failed = |error| SubmitError { batch: Some(id), accepted: total, repeated, error };
        self.store.seal_batch(id, total, stopped.as_deref()).await.map_err(|e| failed(e.into()))?;
        if let Err(error) = outcome {
            return Err(failed(error));
        }
        tracing::info!(batch = %id, function, total, repeated, "batch submitted");
        match self.store.get_batch(id).await {
            Ok(Some(batch)) => Ok(Submitted { batch, repeated }),
            Ok(None) => Err(failed(Error::NotFound("the batch vanished".into()))),
            Err(e) => Err(failed(e.into())),
        }
    }

    /// Reads items from the body and submits them chunk by chunk, up to [`CHUNKS_IN_FLIGHT`]
    /// chunks at once while the body is still being read; `total` counts those recorded (and
    /// published, or recorded failed). Every chunk started is taken to its end before this
    /// returns, whatever stopped the submission: a chunk left half-way would hold recorded
    /// items that were never published. After a chunk fails, no other one starts.
    async fn feed<S, E>(
        &self,
        batch: &NewBatch,
        pool: &str,
        (format, keyed): (Format, bool),
        body: S,
        lapses: u64,
        (total, repeated): (&mut i64, &mut i64),
    ) -> Result<(), Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let stop = AtomicBool::new(false);
        // One chunk waits while CHUNKS_IN_FLIGHT run and the reader fills the next.
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(1);
        let reader = async {
            let mut sub = Submission { tx, chunk: Chunk::default(), chunk_bytes: 0, pushed: 0, stop: &stop };
            // A body that ended well has its last chunk submitted; one that failed loses only
            // the items of the chunk being filled (never recorded), as the answer's count says.
            match self.read_items((format, keyed), body, &mut sub).await {
                Ok(()) => sub.cut().await,
                Err(e) => Err(e),
            }
            // `sub`, and with it the sender, is dropped here: the chunks stream ends.
        };
        let runner = async {
            let chunks = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
            let turn = Turn::default();
            let runs = chunks
                .enumerate()
                .map(|(i, chunk)| {
                    let (stop, turn) = (&stop, &turn);
                    async move { self.submit_chunk(batch, pool, chunk, (i, turn), (stop, lapses)).await }
                })
                .buffer_unordered(CHUNKS_IN_FLIGHT);
            let mut runs = std::pin::pin!(runs);
            let (mut recorded, mut repeats, mut first) = (0i64, 0i64, None);
            while let Some(((n, r), result)) = runs.next().await {
                recorded += n;
                repeats += r;
                if let Err(e) = result {
                    stop.store(true, Ordering::Release);
                    first.get_or_insert(e);
                }
            }
            (recorded, repeats, first)
        };
        // Both in this task: the chunks progress while the body is read.
        let (read, (recorded, repeats, failed)) = tokio::join!(reader, runner);
        (*total, *repeated) = (recorded, repeats);
        match failed {
            Some(e) => Err(e),
            None => read,
        }
    }

    /// Parses the body's items into `sub`, which submits them a chunk at a time.
    async fn read_items<S, E>(
        &self,
        (format, keyed): (Format, bool),
        mut body: S,
        sub: &mut Submission<'_>,
    ) -> Result<(), Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let max_item = self.max_payload_bytes;
        match format {
            Format::JsonArray => {
                // A JSON array has to be read whole; its size is bounded by the route's limit.
                let mut all = Vec::new();
                while let Some(part) = body.next().await {
                    all.extend_from_slice(&part.map_err(|e| Error::BadRequest(format!("cannot read the body: {e}")))?);
                }
                // Parsing up to the route's limit is CPU work: keep it off the async threads.
                // It finds where each item (a keyed item's input) lies in the body, up to the
                // first bad one, and why that one is bad; the items are then slices of the body,
                // not copies.
                let parsed = tokio::task::spawn_blocking(move || {
                    let items = serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&all).map_err(|e| {
                        Error::BadRequest(format!(
                            "the body is not a JSON array of items ({e}); send a JSON array, or NDJSON (one item per line) with Content-Type: application/x-ndjson"
                        ))
                    })?;
                    let at = |part: &[u8]| {
                        let from = part.as_ptr() as usize - all.as_ptr() as usize;
                        from..from + part.len()
                    };
                    let mut good = Vec::with_capacity(items.len());
                    let mut bad = None;
                    for (n, item) in items.iter().map(|i| i.get().as_bytes()).enumerate() {
                        if item.len() > max_item {
                            let why = format!("item {} is {} bytes, over the limit of {max_item} bytes", n + 1, item.len());
                            bad = Some(Error::TooLarge(why));
                            break;
                        }
                        if !keyed {
                            good.push((at(item), None));
                            continue;
                        }
                        match crate::invoke::keyed_parts(item) {
                            Ok((key, input, digest)) => good.push((at(input.as_bytes()), Some((key, digest)))),
                            Err(why) => {
                                bad = Some(Error::BadRequest(format!("item {} {why}; with keyed=true each item is one", n + 1)));
                                break;
                            }
                        }
                    }
                    drop(items);
                    Ok::<_, Error>((Bytes::from(all), good, bad))
                })
                .await
                .map_err(|e| Error::BadRequest(format!("cannot parse the body: {e}")))?;
                let (all, items, bad) = parsed?;
                for (range, key) in items {
                    sub.push(all.slice(range), key).await?;
                }
                if let Some(bad) = bad {
                    // The items before the bad one are submitted, as the answer says.
                    sub.cut().await?;
                    return Err(bad);
                }
            }
            Format::Ndjson => {
                let mut buf: Vec<u8> = Vec::new();
                let mut line_no: u64 = 0;
                let mut ended = false;
                while !ended {
                    match body.next().await {
                        Some(part) => buf.extend_from_slice(
                            &part.map_err(|e| Error::BadRequest(format!("cannot read the body: {e}")))?,
                        ),
                        None => {
                            ended = true;
                            if !buf.is_empty() && buf.last() != Some(&b'\n') {
                                buf.push(b'\n');
                            }
                        }
                    }
                    let mut start = 0;
                    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
                        let line = &buf[start..start + nl];
                        start += nl + 1;
                        line_no += 1;
                        let line = line.strip_suffix(b"\r").unwrap_or(line);
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        let bad = if line.len() > max_item {
                            Some(Error::TooLarge(format!(
                                "line {line_no} is {} bytes, over the item limit of {max_item} bytes",
                                line.len()
                            )))
                        } else if keyed {
                            match crate::invoke::keyed_item(line) {
                                Ok(k) => {
                                    sub.push(k.input, Some((k.key, k.digest))).await?;
                                    continue;
                                }
                                Err(why) => Some(Error::BadRequest(format!(
                                    "line {line_no} {why}; with keyed=true each line is one"
                                ))),
                            }
                        } else if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                            Some(Error::BadRequest(format!(
                                "line {line_no} is not a JSON value ({e}); each line must hold one item"
                            )))
                        } else {
                            None
                        };
                        if let Some(bad) = bad {
                            // The items before the bad line are submitted, as the answer says.
                            sub.cut().await?;
                            return Err(bad);
                        }
                        sub.push(Bytes::copy_from_slice(line), None).await?;
                    }
                    buf.drain(..start);
                    if buf.len() > max_item + 2 {
                        return Err(Error::TooLarge(format!(
                            "line {} is over the item limit of {max_item} bytes",
                            line_no + 1
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Records one chunk's items `queued`, then publishes them. Answers how many it recorded
    /// and how many were repeats of keys used before (keyed batches), and why it stopped, if it
    /// did: recorded items are then published, recorded failed, or cancelled, never left
    /// queued with no message.
    ///
    /// Chunks take their keys and record their items in the order they were cut (chunk `i`
    /// waits for its turn), and none does once `stop` is set: the items recorded are always the
    /// first ones of the body, so "the N items before it were submitted" stays true however
    /// the chunks overlap.
    async fn submit_chunk(
        &self,
        batch: &NewBatch,
        pool: &str,
        chunk: Chunk,
        (i, turn): (usize, &Turn),
        (stop, lapses): (&AtomicBool, u64),
    ) -> ((i64, i64), Result<(), Error>) {
        // Open until every item is published or recorded failed (see `lease`).
        let _held = match self.lease.hold() {
            Ok(h) => h,
            Err(e) => {
                stop.store(true, Ordering::Release);
                turn.wait(i).await;
                turn.advance();
                return ((0, 0), Err(e));
            }
        };
        let Chunk { mut items, keys, start } = chunk;
        let mut records = new_records(&batch.function, batch.version, &items);
        turn.wait(i).await;
        if stop.load(Ordering::Acquire) {
            // An earlier chunk failed: this one is never recorded, not counted.
            turn.advance();
            return ((0, 0), Ok(()));
        }
        // Checked at the last moment, after the turn: the lease may have lapsed while it waited.
        if let Err(e) = self.lease.still_current(lapses) {
            stop.store(true, Ordering::Release);
            turn.advance();
            return ((0, 0), Err(e));
        }
        let (mut repeated, mut taken, mut refused) = (0i64, Vec::new(), None);
        if !keys.is_empty() {
            let t = self.take_keys(&batch.function, &keys, start, &mut records, &mut items).await;
            (repeated, taken, refused) = (t.repeated, t.taken, t.refused);
            if refused.is_some() {
                stop.store(true, Ordering::Release);
            }
            // Taking the keys took a while: the lease may have lapsed meanwhile.
            if let Err(e) = self.lease.still_current(lapses) {
                stop.store(true, Ordering::Release);
                turn.advance();
                self.invoker.forget_keys(&batch.function, &taken).await;
                return ((0, 0), Err(e));
            }
        }
        let inserted = match records.is_empty() {
            true => Ok(()),
            false => self.store.add_batch_items(batch.id, &records).await,
        };
        if inserted.is_err() {
            stop.store(true, Ordering::Release);
        }
        turn.advance();
        if let Err(e) = inserted {
            // Nothing of this chunk was recorded: the keys it took name nothing.
            self.invoker.forget_keys(&batch.function, &taken).await;
            return ((0, 0), Err(e.into()));
        }
        let recorded = records.len() as i64;
        let counts = (recorded, repeated);
        let ended = |result: Result<(), Error>| match refused {
            Some(e) => Err(e),
            None => result,
        };
        if records.is_empty() {
            return (counts, ended(Ok(())));
        }
        // Cancelled meanwhile (here or on another instance): these items are not to run. Checked
        // after the insert, so a cancel that comes later still finds them queued and cancels them.
        // If the state cannot be read, they are published: the worker claims each item before
        // running it, and a claim finds a cancelled one.
        if let Ok(Some(state)) = self.store.batch_state(batch.id).await {
            if state == BatchState::Cancelled {
                let cancelled = self.store.cancel_batch(batch.id, now_ms()).await;
                let why = match cancelled {
                    Ok(_) => "the batch was cancelled while it was being submitted".to_string(),
                    Err(e) => format!("the batch was cancelled while it was being submitted (and its last items could not be marked cancelled: {e})"),
                };
                return (counts, Err(Error::BadRequest(why)));
            }
        }
        // Not fresh: a cancel may turn an item `cancelled` before it runs; the worker claims it first.
        let messages = records.iter().zip(items).map(|(r, payload)| first_message(r, payload, false)).collect();
        let published: Vec<Result<(), Error>> =
            self.invoker.publish_all(pool, messages).await.into_iter().map(|(_, r)| r).collect();
        // Items whose publish failed are recorded failed ("not queued") by publish_recorded:
        // they are final, so the batch can still finish.
        let failed = published.iter().filter(|r| r.is_err()).count();
        if let Some(Err(e)) = published.into_iter().find(|r| r.is_err()) {
            return (
                counts,
                Err(Error::Transport(warren_transport::TransportError::Unavailable(format!(
                    "{failed} of a chunk of {recorded} items could not be queued (recorded failed): {e}"
                )))),
            );
        }
        (counts, ended(Ok(())))
    }

    /// Takes the keys of a keyed chunk's items, in order (`start` is the first item's place in
    /// the batch, from 0). A repeat (the key used with the same input) is taken out of
    /// `records` and `items`; a key used with another input, or a store error, cuts the chunk
    /// before that item and says why. The keys taken stay with the items left.
    async fn take_keys(
        &self,
        function: &str,
        keys: &[(String, String)],
        start: usize,
        records: &mut Vec<NewInvocation>,
        items: &mut Vec<Bytes>,
    ) -> KeysTaken {
        let now = now_ms();
        let mut out = KeysTaken { repeated: 0, taken: Vec::new(), refused: None };
        let (mut kept_records, mut kept_items) = (Vec::with_capacity(records.len()), Vec::with_capacity(items.len()));
        for (((key, digest), record), item) in keys.iter().zip(records.drain(..)).zip(items.drain(..)) {
            match self.invoker.take_key(function, key, digest, record.id, now).await {
                Ok(KeyTaken::Fresh) => {
                    out.taken.push((key.clone(), record.id));
                    kept_records.push(record);
                    kept_items.push(item);
                }
                Ok(KeyTaken::Repeat(_)) => out.repeated += 1,
                taken => {
                    let no = start + kept_records.len() + out.repeated as usize + 1;
                    out.refused = Some(match taken {
                        Err(e) => e,
                        _ => Error::Store(warren_store::StoreError::Conflict(format!(
                            "item {no} has the idempotency key {key:?}, used for {function} with another input within the last {} s",
                            self.invoker.idempotency_window().as_secs()
                        ))),
                    });
                    break;
                }
            }
        }
        (*records, *items) = (kept_records, kept_items);
        out
    }

    /// Cancels a batch: its queued items are not run.
    pub async fn cancel_batch(&self, id: Uuid) -> Result<Batch, Error> {
        let n = self
            .store
            .cancel_batch(id, now_ms())
            .await?
            .ok_or_else(|| Error::NotFound(format!("batch {id} does not exist")))?;
        tracing::info!(batch = %id, cancelled = n, "batch cancelled");
        self.store.get_batch(id).await?.ok_or_else(|| Error::NotFound(format!("batch {id} does not exist")))
    }

    /// The fan-in input: the batch's figures and its items' results inline, or a reference to
    /// them when they would be over `max_fanin_inline_bytes`.
    async fn fanin_input(&self, b: &Batch) -> Result<Vec<u8>, Error> {
        let limit = self.max_fanin_inline_bytes;
        // Every item is final by now: the store's counts are the fan-in's (the statuses present).
        let fresh = self.store.get_batch(b.id).await?;
        let counts: std::collections::BTreeMap<String, i64> =
            fresh.as_ref().unwrap_or(b).counts.iter().filter(|(_, n)| **n > 0).map(|(s, n)| (s.clone(), *n)).collect();
        // The results are read only while they may still fit inline, in pages sized by bytes.
        let mut results = Vec::new();
        let mut size = 0usize;
        let mut inline = true;
        let mut after = None;
        'pages: loop {
            let page = self.store.batch_results(b.id, after, 5000, RESULT_PAGE_BYTES).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for item in page {
                let result = item.result.as_deref().map(|r| {
                    serde_json::from_slice::<Value>(r)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(r).into_owned()))
                });
                let v = json!({"id": item.id, "status": item.status, "result": result, "error": item.error});
                size += v.to_string().len() + 1;
                if size > limit {
                    inline = false;
                    results = Vec::new();
                    break 'pages;
                }
                results.push(v);
            }
        }
        let mut input = json!({
            "batch": b.id,
            "function": b.function,
            "total": b.total,
            "counts": counts,
            "error": b.error,
        });
        if inline {
            input["results"] = Value::Array(results);
        } else {
            input["results_url"] = Value::String(format!("/api/batches/{}/results", b.id));
        }
        Ok(serde_json::to_vec(&input).unwrap_or_default())
    }

    /// Finishes one open batch if it can; returns whether it changed.
    async fn finish_batch(&self, b: &Batch) -> Result<bool, Error> {
        match b.state {
            BatchState::Running => {
                if self.store.batch_has_unfinished(b.id).await? {
                    return Ok(false);
                }
                let Some(then) = &b.then else {
                    self.store.end_batch(b.id, BatchState::Done, now_ms()).await?;
                    tracing::info!(batch = %b.id, "batch done");
                    return Ok(true);
                };
                let (version, manifest) = self.catalog.active_manifest(then).await?;
                let payload = self.fanin_input(b).await?;
                let inv = NewInvocation {
                    id: Uuid::now_v7(),
                    function: then.clone(),
                    version,
                    payload,
                    created_ms: now_ms(),
                };
                if !self.store.begin_fanin(b.id, &inv).await? {
                    return Ok(false);
                }
                self.publish_fanin(&manifest.pool, inv).await?;
                self.store.end_batch(b.id, BatchState::Done, now_ms()).await?;
                tracing::info!(batch = %b.id, then = %then, "batch done; follow-up invoked");
                Ok(true)
            }
            BatchState::Finishing => {
                let Some(fid) = b.followup_invocation else { return Ok(false) };
                let Some(f) = self.store.get_invocation(fid).await? else { return Ok(false) };
                let age = now_ms() - f.created_ms;
                if f.status == Status::Queued && f.attempts == 0 {
                    if age < STALE_FINISHING.as_millis() as i64 {
                        return Ok(false);
                    }
                    let manifest = self.catalog.version_manifest(&f.function, f.version).await?;
                    let inv = NewInvocation {
                        id: f.id,
                        function: f.function.clone(),
                        version: f.version,
                        payload: f.payload,
                        created_ms: f.created_ms,
                    };
                    self.publish_fanin(&manifest.pool, inv).await?;
                }
                self.store.end_batch(b.id, BatchState::Done, now_ms()).await?;
                Ok(true)
            }
            BatchState::Cancelled => {
                // Items recorded after the cancel (a submission still streaming) are cancelled too.
                self.store.cancel_batch(b.id, now_ms()).await?;
                if self.store.batch_has_unfinished(b.id).await? {
                    return Ok(false);
                }
                self.store.end_batch(b.id, BatchState::Cancelled, now_ms()).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn publish_fanin(&self, pool: &str, mut inv: NewInvocation) -> Result<(), Error> {
        // May be published twice (by the `finishing` branch of another instance): not fresh.
        // The input (results inline, up to 16 MiB) moves into the message, not copied.
        let payload = std::mem::take(&mut inv.payload).into();
        let msg = first_message(&inv, payload, false);
        // Not publish_recorded: a failed publish must leave the follow-up `queued` (the
        // `finishing` branch publishes it again), not record it failed for good.
        self.invoker.publish(pool, &msg).await
    }

    /// The fan-in loop of one management instance, until `stop`.
    pub(crate) async fn sweep(self: Arc<Self>, stop: CancellationToken) {
        while pace(SWEEP_EVERY, &stop).await {
            let open = match self.store.open_batches().await {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list open batches yet");
                    continue;
                }
            };
            for b in open {
                if let Err(e) = self.finish_batch(&b).await {
                    tracing::warn!(batch = %b.id, error = %e, "cannot finish the batch yet; will try again");
                }
            }
        }
    }
}

/// A batch as the API shows it.
pub fn to_json(b: &Batch) -> Value {
    serde_json::to_value(b).unwrap_or_default()
}
