//! Acks coalesced per consumer channel, with `basic.ack(multiple)`.
//!
//! One `basic.ack` per message costs the broker and the client a frame and a round of work
//! each; acking with `multiple = true` settles every unsettled delivery up to a tag in one
//! frame (measured with the raw broker row: 0.10 → 0.08 CPU-ms per message, 17.5k → 21k msg/s).
//! Deliveries finish out of order, so a multiple ack is only sent up to just below the oldest
//! delivery the consumer still holds (its *floor*): everything under it is done. A finished
//! delivery above the floor waits for it at most [`HOLD`], then is acked alone, so a long run
//! never keeps finished messages unacked (they count against the prefetch window).
//!
//! A flusher task per channel sends the acks: woken by each finished delivery, it first lets
//! the other tasks of the same wake-up finish theirs (a group commit ends many at once), then
//! sends one multiple ack for what is under the floor and single acks for what waited too long.
//! Both sets are bounded by the channel's prefetch. A delivery returned to the queue (nack) or
//! dropped unsettled is never covered by a multiple ack: it leaves the floor only once its nack
//! has been sent, and a dropped one stays the floor until the channel closes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::BasicAckOptions;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a finished delivery above the floor waits to be covered by a multiple ack.
pub(crate) const HOLD: Duration = Duration::from_millis(20);

#[derive(Default)]
struct State {
    /// Delivered and not yet acked or returned by the consumer.
    outstanding: BTreeSet<u64>,
    /// Finished: to be acked, with when they finished.
    ready: BTreeMap<u64, (lapin::Acker, Instant)>,
}

/// What one flush sends.
struct Flush {
    /// The highest finished tag under the floor: one multiple ack covers it and all below.
    multiple: Option<lapin::Acker>,
    /// Finished above the floor for longer than [`HOLD`] (or all of them, when flushing all).
    singles: Vec<lapin::Acker>,
}

pub(crate) struct AckBatch {
    state: Mutex<State>,
    wake: Notify,
}

impl AckBatch {
    /// A batch for one consumer channel, with its flusher task.
    pub(crate) fn start() -> Arc<AckBatch> {
        let batch = Arc::new(AckBatch { state: Mutex::new(State::default()), wake: Notify::new() });
        tokio::spawn(flusher(batch.clone()));
        batch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A delivery handed to the consumer.
    pub(crate) fn delivered(&self, tag: u64) {
        self.lock().outstanding.insert(tag);
    }

    /// The consumer is done with a delivery: it will be acked.
    pub(crate) fn finished(&self, tag: u64, acker: lapin::Acker) {
        {
            let mut s = self.lock();
            s.outstanding.remove(&tag);
            s.ready.insert(tag, (acker, Instant::now()));
        }
        self.wake.notify_one();
    }

    /// The consumer returned a delivery and its nack has been sent: it no longer holds the
    /// floor (the broker, seeing the nack first, leaves it out of a later multiple ack).
    pub(crate) fn returned(&self, tag: u64) {
        self.lock().outstanding.remove(&tag);
        self.wake.notify_one();
    }

    /// Takes what is to be sent now: everything under the floor, and above it what waited past
    /// [`HOLD`] (`all`: everything). Also when the next held one is due.
    fn take(&self, all: bool) -> (Flush, Option<Instant>) {
        let mut s = self.lock();
        let floor = s.outstanding.first().copied().unwrap_or(u64::MAX);
        let above = s.ready.split_off(&floor);
        let under = std::mem::replace(&mut s.ready, above);
        let multiple = under.into_iter().next_back().map(|(_, (acker, _))| acker);
        let now = Instant::now();
        let due: Vec<u64> =
            s.ready.iter().filter(|(_, (_, at))| all || now.duration_since(*at) >= HOLD).map(|(t, _)| *t).collect();
        let singles = due.iter().filter_map(|t| s.ready.remove(t)).map(|(a, _)| a).collect();
        let next = s.ready.values().map(|(_, at)| *at + HOLD).min();
        (Flush { multiple, singles }, next)
    }

    /// Sends every ack still held, now (at the end of a consumer's life).
    pub(crate) async fn flush_all(&self) {
        send(self.take(true).0).await;
    }
}

async fn send(f: Flush) {
    if let Some(a) = f.multiple {
        if let Err(e) = a.ack(BasicAckOptions { multiple: true }).await {
            tracing::debug!(error = %e, "multiple ack not sent (the channel is gone; the broker redelivers)");
        }
    }
    for a in f.singles {
        if let Err(e) = a.ack(BasicAckOptions::default()).await {
            tracing::debug!(error = %e, "ack not sent (the channel is gone; the broker redelivers)");
        }
    }
}

/// Sends the acks of one channel as they become ready; ends once nothing else holds the batch.
async fn flusher(batch: Arc<AckBatch>) {
    let mut next: Option<Instant> = None;
    loop {
        let woken = batch.wake.notified();
        let wait = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep_until(wait) => {}
        }
        // Let the other deliveries finished in the same wake-up join this flush.
        tokio::task::yield_now().await;
        let (flush, due) = batch.take(false);
        next = due;
        send(flush).await;
        if Arc::strong_count(&batch) == 1 {
            // The consumer and all its deliveries are gone.
            send(batch.take(true).0).await;
            return;
        }
    }
}
