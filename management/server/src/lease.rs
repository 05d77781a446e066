//! Each management instance's lease, and the settling of what a stopped one left.
//!
//! An invocation is recorded `queued` before its message is published. An instance that stops
//! for good in between (SIGKILL, a lost machine), or that could record neither the message nor
//! its failure (broker and database both down), would leave a record `queued` forever, and a
//! batch it was submitting `submitting` forever. So:
//!
//! - every record an instance makes `queued` (and every batch) carries its name (the store's
//!   origin, [`FleetStore::set_origin`](warren_store::FleetStore::set_origin));
//! - each instance keeps the creation times of its records whose publish is not settled yet
//!   ([`Settling`]), and every beat of [`Lease::keep`] writes its lease: seen now, and every record
//!   it made before the oldest of them settled (published and confirmed, or recorded failed);
//! - every instance that has itself renewed its lease for a whole lease period (so that, after
//!   a store outage, none judges another that was merely cut off as well) looks for leases not
//!   renewed within the lease time (default 60 s), and settles them: the lapsed instance's records still `queued`, never claimed and made from its
//!   last settled mark on (less [`CLOCK_MARGIN`]) are recorded failed "not queued", and its
//!   batches still `submitting` go `running` with the items recorded so far.
//!
//! An instance that cannot renew its lease fences itself: half a lease after the start of its
//! last renewal that reached the store, it refuses new records (503), and once it renews again
//! after such a gap (the store was out of reach, or the process was paused) it counts a lapse,
//! and a batch being submitted through it stops before its next chunk: another instance may
//! have sealed it meanwhile, and no item may join a sealed batch.
//!
//! A record settled so may still have its message in the broker (the instance stopped after the
//! confirm, before its mark moved): a "not queued" record stays open to that message's one run,
//! whose outcome replaces it. Records of other instances, and records older than the mark (their
//! messages confirmed, perhaps waiting in a long queue), are never touched.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use warren_store::{Settled, Store, StoreError};
use warren_wire::time::now_ms;

use crate::error::Error;

/// A lapsed instance's records are settled from this long before its last mark, in case its
/// clock stepped back after the mark was taken (the mark and the records' creation times are
/// both read from the instance's own clock; the lease itself is timed by the store's clock).
pub const CLOCK_MARGIN: Duration = Duration::from_secs(1);

/// The creation times of this instance's records whose publish is not settled yet.
#[derive(Default)]
pub struct Settling {
    open: Arc<Mutex<Open>>,
}

#[derive(Default)]
struct Open {
    /// Creation time → holds of it.
    times: BTreeMap<i64, usize>,
    /// Closed at a clean stop, once nothing is held: the lease is being handed back, and no
    /// record may begin after it.
    closed: bool,
    /// When the last renewal that reached the store began (none before the first): on the
    /// monotonic clock, and on the wall clock (ms), which also runs while the machine is
    /// suspended, as the store's clock does.
    renewed: Option<(Instant, i64)>,
    /// No record may begin from this instant (or wall-clock ms): half a lease after `renewed`.
    /// Another instance settles this one's records only once a whole lease has passed without
    /// a renewal, so what begins before the fence has half a lease to settle before anyone may
    /// judge it.
    fence: Option<(Instant, i64)>,
    /// How many times this instance went over half a lease between two renewals that reached
    /// the store: each time, another instance may have settled it (sealed its batches).
    lapses: u64,
}

/// Keeps one creation time open until dropped.
pub struct Held {
    open: Arc<Mutex<Open>>,
    /// The creation time held: records made from now on under this hold take it or later.
    pub ms: i64,
}

impl Settling {
    /// Holds the current time open; take it before the records it covers are stamped. Refused
    /// once the instance is stopping (its lease handed back): the caller answers 503.
    pub fn hold(&self) -> Result<Held, Error> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.closed {
            return Err(Error::Unavailable(
                "this management instance is stopping: send the request to another one".into(),
            ));
        }
        open.fenced()?;
        // Read under the lock: a mark taken meanwhile is either before this hold (and not
        // later than its time) or sees it.
        let ms = now_ms();
        *open.times.entry(ms).or_default() += 1;
        Ok(Held { open: self.open.clone(), ms })
    }

    /// Notes a renewal that reached the store, begun at `began` (and `began_ms` on the wall
    /// clock): moves the fence, and counts a lapse if the last one began over half a lease
    /// before it by either clock (a step of the wall clock may count one that was not: the
    /// cost is a batch stopped for nothing, never one filled after its seal).
    pub(crate) fn renewed(&self, (began, began_ms): (Instant, i64), lease: Duration) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last, last_ms)) = open.renewed {
            let wall = Duration::from_millis(began_ms.saturating_sub(last_ms).max(0) as u64);
            let gap = began.saturating_duration_since(last).max(wall);
            if gap > lease / 2 {
                open.lapses += 1;
                tracing::warn!(
                    gap_ms = gap.as_millis() as u64,
                    lease_ms = lease.as_millis() as u64,
                    "this instance's lease was not renewed for over half its lease (store unreachable, or the process paused): \
                     another instance may have settled its records; batches being submitted here stop"
                );
            }
        }
        if open.renewed.is_none_or(|(last, _)| began > last) {
            open.renewed = Some((began, began_ms));
            open.fence = Some((began + lease / 2, began_ms.saturating_add((lease / 2).as_millis() as i64)));
        }
    }

    /// How many times the lease went over half its time unrenewed (see [`Settling::renewed`]).
    pub(crate) fn lapses(&self) -> u64 {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).lapses
    }

    /// Whether work begun when [`lapses`](Self::lapses) was `since` may still record: the
    /// fence not passed and no lapse since. A batch checks it before each chunk's insert: once
    /// another instance may have sealed it, no item may join it.
    pub(crate) fn still_current(&self, since: u64) -> Result<(), Error> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.fenced()?;
        if open.lapses != since {
            return Err(Error::Unavailable(
                "this management instance went over half its lease without reaching the store (see its log); \
                 another may have sealed this batch, so its submission stopped here"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Holds a given creation time open (a record whose settling outlives the hold it was
    /// made under).
    pub fn hold_at(&self, ms: i64) -> Held {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()).times.entry(ms).or_default() += 1;
        Held { open: self.open.clone(), ms }
    }

    /// Every record made before this is settled.
    pub fn mark(&self) -> i64 {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.times.keys().next().copied().unwrap_or_else(now_ms)
    }

    /// Closes to new holds if nothing is held; whether it did.
    fn close_if_empty(&self) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.closed = open.times.is_empty();
        open.closed
    }

    /// Opens again (the lease could not be handed back).
    fn reopen(&self) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).closed = false;
    }
}

impl Open {
    /// Refuses new records once the fence is passed.
    fn fenced(&self) -> Result<(), Error> {
        match self.fence {
            Some((fence, fence_ms)) if Instant::now() >= fence || now_ms() >= fence_ms => Err(Error::Unavailable(
                "this management instance cannot renew its lease (the store is unreachable or too slow): \
                 send the request to another one"
                    .into(),
            )),
            _ => Ok(()),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.times.get_mut(&self.ms) {
            *n -= 1;
            if *n == 0 {
                open.times.remove(&self.ms);
            }
        }
    }
}

/// How often an instance renews its lease (and moves its mark) and looks for lapsed ones: a
/// sixth of the lease, at most every second. The mark is at most this old when an instance
/// stops, so the records it made in its last second (published or not) are the ones settled
/// "not queued" beside the few it really left; one small write a second costs nothing.
pub fn beat_every(lease: Duration) -> Duration {
    (lease / 6).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// One management instance's lease: its name, the holds on what it is publishing
/// ([`Settling`]), and the loop that renews it ([`Lease::keep`]).
pub struct Lease {
    store: Arc<dyn Store>,
    instance: String,
    settling: Settling,
    length: Duration,
    /// At a stop: how long to wait for the source consumers, then for the holds to clear.
    grace: Duration,
}

impl Lease {
    pub(crate) fn new(store: Arc<dyn Store>, instance: String, length: Duration, grace: Duration) -> Lease {
        Lease { store, instance, settling: Settling::default(), length, grace }
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// See [`Settling::hold`].
    pub(crate) fn hold(&self) -> Result<Held, Error> {
        self.settling.hold()
    }

    /// See [`Settling::hold_at`].
    pub(crate) fn hold_at(&self, ms: i64) -> Held {
        self.settling.hold_at(ms)
    }

    /// See [`Settling::lapses`].
    pub(crate) fn lapses(&self) -> u64 {
        self.settling.lapses()
    }

    /// See [`Settling::still_current`].
    pub(crate) fn still_current(&self, since: u64) -> Result<(), Error> {
        self.settling.still_current(since)
    }

    /// Writes this instance's lease now (seen now, its mark).
    pub(crate) async fn renew(&self) -> Result<(), StoreError> {
        let lease_ms = self.length.as_millis() as i64;
        let began = (Instant::now(), now_ms());
        self.store.instance_alive(&self.instance, self.settling.mark(), lease_ms).await?;
        self.settling.renewed(began, self.length);
        Ok(())
    }

    /// The lease loop of one management instance: the only writer of its lease once started.
    ///
    /// At `stop` it renews on while the source consumers finish what they hold (`sources_idle`,
    /// for up to the grace period), then hands the lease back once every record this instance
    /// made is settled (waiting up to the grace period again), so that no other instance
    /// settles its last records, which may be waiting in a queue, "not queued". If some are
    /// still open then, the lease is left to lapse and be settled. The loop makes the last
    /// write itself, so no renewal can overwrite it.
    pub(crate) async fn keep(self: Arc<Self>, stop: CancellationToken, sources_idle: Arc<AtomicBool>) {
        let lease = self.length;
        // Since when this instance's beats have all reached the store. Only after a whole lease
        // of them does it judge others: an instance alive and in touch with the store renews
        // within its lease, so one that did not is gone (after a store outage every instance
        // first renews its own lease, and none settles another that was merely cut off too).
        let mut renewing_since: Option<tokio::time::Instant> = None;
        let mut renewed_at: Option<tokio::time::Instant> = None;
        // Set at the stop: until when the sources may finish, then until when the holds may clear.
        let mut sources_by: Option<tokio::time::Instant> = None;
        let mut release_by: Option<tokio::time::Instant> = None;
        loop {
            if stop.is_cancelled() && release_by.is_none() {
                let now = tokio::time::Instant::now();
                let sources_by = *sources_by.get_or_insert(now + self.grace);
                if sources_idle.load(Ordering::Acquire) || now >= sources_by {
                    release_by = Some(now + self.grace);
                }
            }
            if let Some(deadline) = release_by {
                if self.hand_back(deadline).await {
                    return;
                }
            }
            // While stopping, the sources and holds are looked at every 20 ms, the lease renewed
            // at its pace.
            if renewed_at.is_none_or(|t| t.elapsed() >= beat_every(lease)) {
                renewed_at = Some(tokio::time::Instant::now());
                match self.renew().await {
                    Ok(()) => {
                        let since = *renewing_since.get_or_insert_with(tokio::time::Instant::now);
                        if !stop.is_cancelled() && since.elapsed() >= lease {
                            if let Err(e) = self.settle_lapsed().await {
                                tracing::debug!(error = %e, "cannot settle lapsed instances yet");
                            }
                        }
                    }
                    Err(e) => {
                        renewing_since = None;
                        tracing::debug!(error = %e, "cannot renew this instance's lease yet");
                    }
                }
            }
            if stop.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(beat_every(lease)) => {}
                    _ = stop.cancelled() => {}
                }
            }
        }
    }

    /// At a stop, once nothing is held: no record may begin now (a late request, a timer tick:
    /// 503), and the lease is written lapsed at once (a lease of 0 ms) with everything it made
    /// settled, so the next settler finds nothing of it to settle and drops the row. Whether
    /// the loop is done: handed back, or given up at `deadline` (the lease will lapse).
    async fn hand_back(&self, deadline: tokio::time::Instant) -> bool {
        if !self.settling.close_if_empty() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("records still being published at the stop; leaving the lease to lapse");
                return true;
            }
            return false;
        }
        match self.store.instance_alive(&self.instance, i64::MAX, 0).await {
            Ok(()) => {
                tracing::debug!("lease handed back");
                true
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "cannot hand the lease back yet");
                self.settling.reopen();
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand the lease back; it will lapse");
                true
            }
        }
    }

    /// Settles the instances whose lease lapsed.
    async fn settle_lapsed(&self) -> Result<(), StoreError> {
        for (instance, settled_ms) in self.store.lapsed_instances().await? {
            if instance == self.instance {
                // Renewed just before; its work is in hand here anyway.
                continue;
            }
            let why = Settled {
                invocation: format!(
                    "not queued: management instance {instance} stopped (its lease ran out) before the broker \
                     confirmed this invocation's message; if the message got through, its run replaces this record"
                ),
                batch: format!(
                    "the submission stopped: management instance {instance} stopped (its lease ran out) before the \
                     end of the body; the items recorded before that are the batch"
                ),
            };
            let since = settled_ms.saturating_sub(CLOCK_MARGIN.as_millis() as i64);
            let (invocations, batches) = self.store.settle_lapsed(&instance, since, now_ms(), &why).await?;
            if invocations + batches > 0 {
                tracing::warn!(
                    %instance,
                    invocations,
                    batches,
                    "settled what a stopped management instance left: invocations recorded failed (not queued), batches \
                     whose submission it was reading"
                );
            } else {
                tracing::info!(%instance, "a stopped management instance left nothing unsettled");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_the_oldest_open_hold_or_now() {
        let s = Settling::default();
        let before = now_ms();
        assert!(s.mark() >= before, "nothing held: the mark is now");
        let a = s.hold_at(1_000);
        let b = s.hold_at(1_000);
        let c = s.hold_at(2_000);
        assert_eq!(s.mark(), 1_000);
        drop(a);
        assert_eq!(s.mark(), 1_000, "a second hold of the same time keeps it open");
        drop(b);
        assert_eq!(s.mark(), 2_000);
        let d = s.hold().unwrap();
        assert!(d.ms >= before);
        drop(c);
        assert_eq!(s.mark(), d.ms);
        assert!(!s.close_if_empty(), "a hold is open");
        assert!(s.hold().is_ok(), "not closed while something is held");
        drop(d);
        assert!(s.mark() >= before);
        assert!(s.close_if_empty());
        assert!(s.hold().is_err(), "closed: no record may begin");
        s.reopen();
        assert!(s.hold().is_ok());
    }

    #[test]
    fn no_record_begins_past_half_a_lease_unrenewed_and_a_gap_is_a_lapse() {
        let lease = Duration::from_secs(60);
        let s = Settling::default();
        assert!(s.hold().is_ok(), "before any renewal: nothing to be settled by others");
        let (now, now_wall) = (Instant::now(), now_ms());
        let at = |secs: f64| (now + Duration::from_secs_f64(secs), now_wall + (secs * 1000.0) as i64);
        let ago = |secs: u64| (now - Duration::from_secs(secs), now_wall - secs as i64 * 1000);
        // The last renewal that reached the store began 31 s ago: fenced.
        s.renewed(ago(31), lease);
        assert!(s.hold().is_err(), "past half a lease since the last renewal");
        assert_eq!(s.lapses(), 0);
        let since = s.lapses();
        assert!(s.still_current(since).is_err(), "fenced work may not record either");
        // Renewed again now: 31 s after the last one, so others may have settled this one.
        s.renewed(at(0.0), lease);
        assert!(s.hold().is_ok(), "renewed: records may begin again");
        assert_eq!(s.lapses(), 1);
        assert!(s.still_current(since).is_err(), "a batch begun before the lapse stops");
        assert!(s.still_current(1).is_ok(), "work begun after it goes on");
        // Beats at their pace (and a late answer of an older renewal) are no lapse.
        s.renewed(at(1.0), lease);
        s.renewed(at(0.5), lease);
        s.renewed(at(11.0), lease);
        assert_eq!(s.lapses(), 1);
        assert!(s.hold().is_ok());
        // The machine was suspended: the monotonic clock stood still for 40 s, the wall clock
        // (and the store's) did not. A lapse all the same.
        s.renewed((now + Duration::from_secs(12), now_wall + 51_000), lease);
        assert_eq!(s.lapses(), 2);
    }

    #[test]
    fn the_wall_clock_fences_too() {
        let lease = Duration::from_secs(60);
        let s = Settling::default();
        // Renewed just now by the monotonic clock, but 31 s ago by the wall clock (a suspend
        // since): fenced.
        s.renewed((Instant::now(), now_ms() - 31_000), lease);
        assert!(s.hold().is_err());
    }
}
