//! One delivery's path through a worker, in stages: decode → admit (a run slot) → claim → load
//! → run → decide → store. Each stage either hands its result to the next or ends the path with
//! a [`Verdict`], and [`Worker::settle`] is the one place where a delivery is acked, returned
//! to its queue or dead-lettered.
//!
//! The order inside `store` is what keeps nothing lost: a retry is published (confirmed) before
//! the failed attempt is recorded, a dead letter is queued before the invocation is stored dead,
//! and a delivery is acked only after its outcome is stored.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::Instrument;
use uuid::Uuid;
use warren_store::{Claim, NewDelivery, NewInvocation, Outcome, Status};
use warren_transport::Delivery;
use warren_wire::manifest::{Output, RetryPolicy};
use warren_wire::message::InvocationMessage;
use warren_wire::time::now_ms;
use warren_wire::topology;

use crate::process::RunOutput;
use crate::settings::Settings;
use crate::versions::{LoadError, Loaded};
use crate::worker::Worker;

/// How often a worker setting invocations aside tells the store so (management ends a hold only
/// once it has been empty for twice as long since the last mark).
const MARK_HELD_EVERY: Duration = Duration::from_secs(5);

/// How long a second copy of an invocation running here waits before it goes back.
const SECOND_COPY_WAIT: Duration = Duration::from_millis(500);

/// A pool's run slots (its concurrency) and the number of its current consumer: a delivery
/// handed out by an earlier consumer (before a channel break) is stale.
pub(crate) struct Gate {
    slots: Semaphore,
    consumer: AtomicU64,
}

impl Gate {
    pub(crate) fn new(concurrency: u16) -> Gate {
        Gate { slots: Semaphore::new(concurrency.max(1) as usize), consumer: AtomicU64::new(0) }
    }

    /// A new consumer takes over: the deliveries of the one before are stale. Its number.
    pub(crate) fn next_consumer(&self) -> u64 {
        self.consumer.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Stopping: no delivery takes a slot from now on.
    pub(crate) fn close(&self) {
        self.slots.close();
    }
}

/// What becomes of a delivery, done by [`Worker::settle`].
pub(crate) enum Verdict {
    /// Done with (its outcome stored, or none needed): acknowledged.
    Ack,
    /// Not taken now: back to its queue, after `after`, marked redelivered.
    Requeue { after: Duration },
    /// Its channel broke while it waited: left unsettled, the broker hands it out again.
    Abandon,
    /// No worker can take it: to the pool's dead-letter queue with the reason, then acked.
    DeadLetter { reason: String },
    /// Its function is paused: `body` to the function's hold (confirmed), then acked.
    Hold { function: String, body: bytes::Bytes },
}

impl Verdict {
    pub(crate) const REQUEUE: Verdict = Verdict::Requeue { after: Duration::ZERO };
    /// Returned after a second: the store, the disk or the broker failed it here, and at once
    /// it would come straight back to fail the same way at the broker's pace.
    pub(crate) const REQUEUE_AFTER_TROUBLE: Verdict = Verdict::Requeue { after: Duration::from_secs(1) };
}

/// What an attempt's end calls for, carried out by the `store` stage.
enum Decision {
    /// Its outcome, to store.
    Complete(Outcome),
    /// A failed attempt with attempts left: the next one is published after `delay`, then this
    /// one recorded.
    Retry { outcome: Outcome, delay: Duration },
    /// No attempt left, or nothing a worker could run: the message goes to the dead-letter
    /// queue with the outcome's error as reason (counted under `why`), and the invocation is
    /// stored dead.
    GiveUp { outcome: Outcome, why: &'static str },
}

/// What the load stage found.
enum Loadout {
    Ready(Arc<Loaded>, Arc<Settings>),
    /// Cannot run (its settings cannot be opened, its package is broken): the attempt fails
    /// with this error (retries do not apply: nothing ran).
    Unrunnable(String),
    /// The version does not exist (any more): no worker could ever run the message, which is
    /// dead-lettered with this reason.
    Missing(String),
}

/// One attempt of one invocation, as the stages see it.
struct Attempt<'a> {
    msg: &'a InvocationMessage,
    inv: Arc<NewInvocation>,
    number: i32,
    /// Claimed in the store before running (every delivery but a fresh one's first).
    claimed: bool,
    /// When it took its run slot.
    started: Instant,
    started_ms: i64,
}

/// A pool's run slot, counted in [`Worker::running_now`] while held.
struct RunSlot<'a> {
    _permit: SemaphorePermit<'a>,
    count: &'a AtomicI32,
}

impl Drop for RunSlot<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A fresh first delivery runs unclaimed only this soon after it was published: a cancel of
/// it reaches the workers as a notice, which a worker that started or reconnected since may
/// have missed; an older one is claimed, and the claim finds a cancel in the store.
const FRESH_FOR_MS: i64 = 15_000;

/// The delivery's message without its `fresh` mark, for a copy published before the delivery
/// is acked.
fn unfresh(msg: &InvocationMessage, d: &Delivery) -> bytes::Bytes {
    if msg.fresh {
        InvocationMessage { fresh: false, ..msg.clone() }.encode().into()
    } else {
        d.body.clone()
    }
}

/// How long an invocation whose function has every run turn taken waits (in the broker's hop
/// queue) before it tries again.
const TURN_WAIT: Duration = Duration::from_millis(256);

/// Takes an invocation id out of [`Worker::running`] when its run ends, however it ends.
struct RunningHere<'a> {
    map: &'a DashMap<Uuid, ()>,
    id: Uuid,
}

impl Drop for RunningHere<'_> {
    fn drop(&mut self) {
        self.map.remove(&self.id);
    }
}

impl Worker {
    /// Takes one delivery to its end: acked after its outcome is stored, or returned.
    pub(crate) async fn handle(&self, pool: &str, d: Delivery, gate: &Gate, generation: u64) {
        match self.decode(pool, &d) {
            Ok(msg) => {
                let span = tracing::info_span!("invocation", id = %msg.id, function = %msg.function, version = msg.version, attempt = msg.attempt);
                async {
                    // One copy of an invocation at a time here, until its delivery is settled.
                    let (here, verdict) = match self.admit(&msg) {
                        Ok(here) => match self.stages(pool, &msg, &d, gate, generation).await {
                            Ok(v) | Err(v) => (Some(here), v),
                        },
                        Err(v) => (None, v),
                    };
                    self.settle(pool, d, verdict).await;
                    drop(here);
                }
                .instrument(span)
                .await
            }
            Err(verdict) => self.settle(pool, d, verdict).await,
        }
    }

    /// The stages after decode and admit; an `Err` is a stage that ended the path early.
    async fn stages(
        &self,
        pool: &str,
        msg: &InvocationMessage,
        d: &Delivery,
        gate: &Gate,
        generation: u64,
    ) -> Result<Verdict, Verdict> {
        if let Some(hop) = msg.not_before_ms.and_then(|at| topology::schedule_hop(at.saturating_sub(now_ms()))) {
            return Err(self.next_hop(pool, msg, d, hop).await);
        }
        if self.paused.contains(&msg.function) {
            return Err(self.hold_verdict(msg, d));
        }
        let slot = self.take_slot(gate, generation).await?;
        let attempt = Attempt::new(msg, d.redelivered);
        self.claim_stage(&attempt).await?;
        if self.cancels.is_cancelled(msg.id) {
            // Its record says so: a fresh first delivery is not claimed, so this is what keeps
            // it from running.
            tracing::info!("cancelled before it ran; not running it");
            return Err(Verdict::Ack);
        }
        let (decision, ran) = match self.load(&attempt).await? {
            Loadout::Ready(loaded, settings) => {
                let turn = match self.take_turn(pool, &attempt, &loaded, d).await {
                    Ok(turn) => turn,
                    Err(wait) => {
                        drop(slot);
                        return Err(wait);
                    }
                };
                let run = self.run_attempt(&attempt, &loaded, &settings).await;
                drop(slot);
                if turn {
                    if let Err(e) = self.store.give_turn(&msg.function, msg.id).await {
                        tracing::debug!(error = %e, "cannot give the run turn back; it lapses by itself");
                    }
                }
                (self.decide(&attempt, run, Some(&loaded)), Some(loaded))
            }
            Loadout::Unrunnable(error) => {
                drop(slot);
                let failed = RunOutput { status: Status::Failed, result: None, error: Some(error), logs: Vec::new() };
                (self.decide(&attempt, failed, None), None)
            }
            Loadout::Missing(reason) => {
                drop(slot);
                let dead = RunOutput { status: Status::Dead, result: None, error: Some(reason), logs: Vec::new() };
                self.metrics.ran(&msg.function, attempt.started.elapsed());
                (Decision::GiveUp { outcome: self.outcome(&attempt, dead, false), why: "missing_version" }, None)
            }
        };
        Ok(self.store(pool, &attempt, &d.body, decision, ran.as_deref()).await)
    }

    /// Hold: the message as it goes to its paused function's hold. It loses its `fresh` mark:
    /// a connection lost between a confirmed publish and the ack (here, or in management's
    /// drain) leaves two copies, so it is claimed when it comes back.
    fn hold_verdict(&self, msg: &InvocationMessage, d: &Delivery) -> Verdict {
        tracing::debug!("function paused: setting the invocation aside until it resumes");
        Verdict::Hold { function: msg.function.clone(), body: unfresh(msg, d) }
    }

    /// Puts a message in its paused function's hold, confirmed. First (at most every
    /// [`MARK_HELD_EVERY`]) the store is told that the hold has something from now on, so that
    /// management drains it even if the function was resumed meanwhile, and ends it only once
    /// it finds it empty well after this; the hold is declared the first time.
    async fn hold(&self, function: &str, body: bytes::Bytes) -> Result<(), String> {
        let pool = topology::held_pool(function);
        let marked = self.holds_marked.get(&pool).map(|t| *t);
        if marked.is_none_or(|t| t.elapsed() >= MARK_HELD_EVERY) {
            self.store.mark_held(function, now_ms()).await.map_err(|e| e.to_string())?;
            if marked.is_none() {
                self.transport.declare_pool(&pool).await.map_err(|e| e.to_string())?;
            }
            self.holds_marked.insert(pool.clone(), Instant::now());
        }
        let started = Instant::now();
        self.transport.publish(&pool, body).await.map_err(|e| e.to_string())?;
        // A slow publish (a broker reconnect) may land after management found the hold empty
        // and ended it: marked again, the hold opens anew and is drained.
        if started.elapsed() >= Duration::from_secs(1) {
            self.store.mark_held(function, now_ms()).await.map_err(|e| e.to_string())?;
            self.holds_marked.insert(pool, Instant::now());
        }
        Ok(())
    }

    /// Decode: a message that cannot be read (garbage, a newer protocol) is dead-lettered.
    fn decode(&self, pool: &str, d: &Delivery) -> Result<InvocationMessage, Verdict> {
        InvocationMessage::decode(&d.body).map_err(|e| {
            let reason = e.to_string();
            tracing::warn!(%pool, %reason, bytes = d.body.len(), "undecodable message; dead-lettering it");
            self.metrics.dead_lettered(pool, "undecodable");
            Verdict::DeadLetter { reason }
        })
    }

    /// Admit, first half: one copy of an invocation runs here at a time (after a channel break
    /// the broker redelivers what may still be running here).
    fn admit(&self, msg: &InvocationMessage) -> Result<RunningHere<'_>, Verdict> {
        if self.running.insert(msg.id, ()).is_some() {
            tracing::info!(
                "this invocation is already running here (a redelivery after a channel break); returning the copy"
            );
            return Err(Verdict::Requeue { after: SECOND_COPY_WAIT });
        }
        Ok(RunningHere { map: &self.running, id: msg.id })
    }

    /// Admit, second half: a run slot of the pool. Waiting for one, the invocation is not
    /// claimed by this worker.
    async fn take_slot<'g>(&'g self, gate: &'g Gate, generation: u64) -> Result<RunSlot<'g>, Verdict> {
        let Ok(permit) = gate.slots.acquire().await else {
            tracing::debug!("stopping before this invocation started; returning it to the queue");
            return Err(Verdict::REQUEUE);
        };
        if gate.consumer.load(Ordering::SeqCst) != generation {
            // Its channel broke while it waited: the broker hands it out again (the ack could
            // not reach it anyway), so running it here would only duplicate the work.
            tracing::info!("dropping a delivery of a broken channel before running it");
            return Err(Verdict::Abandon);
        }
        self.running_now.fetch_add(1, Ordering::Relaxed);
        Ok(RunSlot { _permit: permit, count: &self.running_now })
    }

    /// A turn to run, for a function with a `max_concurrency`: `Ok(true)` when taken (give it
    /// back after the run), `Ok(false)` when the function has no limit; with every turn taken,
    /// the message waits [`TURN_WAIT`] in the broker and comes back (`Err(Ack)` once it is on
    /// its way). A turn is held at most the function's timeout and a minute: a worker that
    /// stops holding one does not hold it for ever.
    async fn take_turn(
        &self,
        pool: &str,
        attempt: &Attempt<'_>,
        loaded: &Loaded,
        d: &Delivery,
    ) -> Result<bool, Verdict> {
        let Some(limit) = loaded.manifest.max_concurrency else { return Ok(false) };
        let now = now_ms();
        let until = now + loaded.manifest.timeout_secs as i64 * 1000 + 60_000;
        match self.store.take_turn(&attempt.msg.function, limit, attempt.msg.id, now, until).await {
            Ok(true) => Ok(true),
            // Without its fresh mark: if this ack is lost after the confirmed publish, the copy
            // that comes back is claimed like the redelivered original (one of them runs).
            Ok(false) => {
                tracing::debug!(limit, "every run turn of the function is taken; waiting for one");
                Err(self.send_later(pool, unfresh(attempt.msg, d), TURN_WAIT).await)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take a run turn in the store; returning the message");
                Err(Verdict::REQUEUE_AFTER_TROUBLE)
            }
        }
    }

    /// A scheduled invocation that came before its time: sent on its next hop (confirmed, then
    /// this delivery acked), or dropped if it was cancelled meanwhile (its record says so).
    async fn next_hop(&self, pool: &str, msg: &InvocationMessage, d: &Delivery, hop: Duration) -> Verdict {
        if self.cancels.is_cancelled(msg.id) {
            tracing::info!("a scheduled invocation was cancelled; not sending it on");
            return Verdict::Ack;
        }
        tracing::debug!(hop_ms = hop.as_millis() as u64, "scheduled invocation sent on its next hop");
        self.send_later(pool, d.body.clone(), hop).await
    }

    /// A delivery that comes back after `wait` (a hop queue): acked once its copy is confirmed
    /// there, returned if the broker did not take the copy.
    async fn send_later(&self, pool: &str, body: bytes::Bytes, wait: Duration) -> Verdict {
        match self.transport.publish_later(pool, body, wait).await {
            Ok(()) => Verdict::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "cannot send the invocation on to wait in the broker; returning it");
                Verdict::REQUEUE_AFTER_TROUBLE
            }
        }
    }

    /// Claim, unless the message is a fresh one's first delivery (management published it once
    /// for a new invocation nothing can cancel: it cannot have an outcome yet, and its outcome
    /// is stored by the same guarded update as any other). A redelivery whose outcome is stored
    /// is acked without running, and so is a stale copy of an older attempt.
    async fn claim_stage(&self, attempt: &Attempt<'_>) -> Result<(), Verdict> {
        if !attempt.claimed {
            return Ok(());
        }
        let claim = self.with_store_retry("claim", "claim the invocation", || self.claim(&attempt.inv, attempt.number));
        match claim.await.ok_or(Verdict::REQUEUE)? {
            Claim::Run => Ok(()),
            Claim::AlreadyFinal(status) => {
                tracing::info!(%status, "redelivered invocation already has its outcome; not running it again");
                self.notify(attempt.msg, None).await;
                Err(Verdict::Ack)
            }
            Claim::Superseded => {
                tracing::info!("a later attempt of this invocation is scheduled; dropping this stale copy");
                Err(Verdict::Ack)
            }
        }
    }

    /// Load: the version and the function's settings; `Err` returns the message (the store or
    /// the disk failed).
    async fn load(&self, attempt: &Attempt<'_>) -> Result<Loadout, Verdict> {
        let msg = attempt.msg;
        let settings = match self.settings.get(&msg.function).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the function's settings; returning the message");
                return Err(Verdict::REQUEUE_AFTER_TROUBLE);
            }
        };
        match self.versions.load(&msg.function, msg.version).await {
            Ok(loaded) => match settings {
                Ok(settings) => Ok(Loadout::Ready(loaded, settings)),
                Err(why) => Ok(Loadout::Unrunnable(why)),
            },
            Err(LoadError::Missing(reason)) => Ok(Loadout::Missing(reason)),
            Err(LoadError::Broken(reason)) => Ok(Loadout::Unrunnable(reason)),
            Err(LoadError::Unavailable(e)) => {
                tracing::warn!(error = %e, "cannot load the function version; returning the message");
                Err(Verdict::REQUEUE_AFTER_TROUBLE)
            }
        }
    }

    /// Run: the built-in echo, a warm handler, or a process; a run not claimed first that lasts
    /// is marked `running` meanwhile. Secret values are taken out of what it reports.
    async fn run_attempt(&self, attempt: &Attempt<'_>, loaded: &Loaded, settings: &Settings) -> RunOutput {
        let run = self.execute(loaded, attempt.msg, attempt.number, settings);
        let mut out =
            if attempt.claimed { run.await } else { self.run_marked_if_long(run, &attempt.inv, attempt.number).await };
        // Whatever the runtime, no NUL reaches the store's text columns (`process::storable`).
        for l in &mut out.logs {
            l.line = crate::process::storable(std::mem::take(&mut l.line));
        }
        out.error = out.error.map(crate::process::storable);
        if !settings.secrets.is_empty() {
            for l in &mut out.logs {
                l.line = settings.redact(&l.line);
            }
            out.error = out.error.map(|e| settings.redact(&e));
            out.result = out.result.map(|r| settings.redact_bytes(r));
        }
        out
    }

    /// Decide: the attempt's outcome, and whether it is retried (the version's retry policy).
    fn decide(&self, attempt: &Attempt<'_>, run: RunOutput, ran: Option<&Loaded>) -> Decision {
        let outcome = self.outcome(attempt, run, ran.is_some());
        self.metrics.ran(&attempt.msg.function, attempt.started.elapsed());
        let no_retry = RetryPolicy::default();
        let retry = ran.map(|l| &l.manifest.retry).unwrap_or(&no_retry);
        let failed = matches!(outcome.status, Status::Failed | Status::TimedOut);
        if !failed || !retry.retries() {
            return Decision::Complete(outcome);
        }
        if (attempt.number as u32) < retry.max_attempts {
            let delay = Duration::from_millis(retry.delay_ms(attempt.number as u32, rand::random::<f64>()));
            return Decision::Retry { outcome, delay };
        }
        let reason = format!(
            "gave up after {} attempts: {}",
            attempt.number,
            outcome.error.as_deref().unwrap_or("the function failed")
        );
        Decision::GiveUp { outcome: Outcome { error: Some(reason), ..outcome }, why: "attempts_exhausted" }
    }

    /// An attempt's outcome as it ended (`ran`: a version was loaded and ran).
    fn outcome(&self, attempt: &Attempt<'_>, run: RunOutput, ran: bool) -> Outcome {
        Outcome {
            status: run.status,
            attempt: attempt.number,
            result: run.result,
            error: run.error,
            worker: self.cfg.id.clone(),
            started_ms: Some(attempt.started_ms),
            version: ran.then_some(attempt.msg.version),
            finished_ms: now_ms(),
            logs: run.logs,
            deliveries: Vec::new(),
            record: attempt.msg.unrecorded.then(|| attempt.inv.clone()),
        }
    }

    /// Store: carries out the decision in the order that loses nothing, then tells a waiting
    /// management instance. `body` is the message, for a retry or a dead letter.
    async fn store(
        &self,
        pool: &str,
        attempt: &Attempt<'_>,
        body: &bytes::Bytes,
        decision: Decision,
        ran: Option<&Loaded>,
    ) -> Verdict {
        let outputs: &[Output] = ran.map(|l| l.manifest.outputs.as_slice()).unwrap_or(&[]);
        let mut outcome = match decision {
            Decision::Complete(outcome) => outcome,
            Decision::Retry { outcome, delay } => return self.retry_later(pool, attempt.msg, &outcome, delay).await,
            Decision::GiveUp { outcome, why } => {
                let reason = outcome.error.clone().unwrap_or_default();
                if let Err(e) = self.transport.dead_letter(pool, body.clone(), &reason).await {
                    tracing::warn!(error = %e, "cannot dead-letter; returning the message");
                    return Verdict::REQUEUE;
                }
                self.metrics.dead_lettered(pool, why);
                Outcome { status: Status::Dead, ..outcome }
            }
        };
        // Forwards to make, decided now and stored with the outcome; management delivers them.
        let succeeded = outcome.status == Status::Succeeded;
        outcome.deliveries = outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| o.applies(succeeded, outcome.result.as_deref()))
            .map(|(i, o)| NewDelivery { output: i as i32, target: o.target() })
            .collect();
        let mut stored =
            self.with_store_retry("complete", "store the outcome", || self.complete(attempt.msg.id, &outcome)).await;
        if stored == Some(false) && !attempt.claimed && !attempt.msg.unrecorded {
            stored = self.record_unrecorded(&attempt.inv, attempt.number, &outcome).await;
        }
        let Some(stored) = stored else { return Verdict::REQUEUE };
        if stored {
            self.metrics.stored(&attempt.msg.function, outcome.status.as_str());
        }
        self.notify(attempt.msg, stored.then_some(&outcome)).await;
        Verdict::Ack
    }

    /// Settles a delivery as its verdict says: the one place a delivery is acked, returned or
    /// dead-lettered.
    pub(crate) async fn settle(&self, pool: &str, d: Delivery, verdict: Verdict) {
        match verdict {
            Verdict::Ack => {
                if let Err(e) = d.ack().await {
                    // The outcome is stored: a redelivery will be recognised and acked then.
                    tracing::warn!(error = %e, "ack failed after the outcome was stored");
                }
            }
            Verdict::Requeue { after } => {
                if !after.is_zero() {
                    tokio::time::sleep(after).await;
                }
                let _ = d.requeue().await;
            }
            Verdict::Abandon => drop(d),
            Verdict::Hold { function, body } => match self.hold(&function, body).await {
                Ok(()) => {
                    let _ = d.ack().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set the invocation of a paused function aside; returning it");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = d.requeue().await;
                }
            },
            Verdict::DeadLetter { reason } => match self.transport.dead_letter(pool, d.body.clone(), &reason).await {
                Ok(()) => {
                    let _ = d.ack().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot dead-letter; returning the message");
                    let _ = d.requeue().await;
                }
            },
        }
    }
}

impl<'a> Attempt<'a> {
    fn new(msg: &'a InvocationMessage, redelivered: bool) -> Self {
        let number = msg.attempt.max(1) as i32;
        Attempt {
            msg,
            inv: Arc::new(NewInvocation {
                id: msg.id,
                function: msg.function.clone(),
                version: msg.version,
                payload: msg.payload.to_vec(),
                created_ms: msg.created_ms,
            }),
            number,
            claimed: !(msg.fresh && !redelivered && number == 1 && now_ms() - msg.created_ms < FRESH_FOR_MS),
            started: Instant::now(),
            started_ms: now_ms(),
        }
    }
}
