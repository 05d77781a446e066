//! Completion notices: a synchronous invoke waits for its worker's notice (sent to this
//! instance's queue, `warren.notice.<instance>`) instead of polling the store.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren_service::retry::Backoff;
use warren_transport::{Consumer, Transport};
use warren_wire::message::{CompletionNotice, NoticeOutcome};

use crate::metrics::Metrics;

/// The synchronous invokes waiting here, each for its invocation's notice.
#[derive(Default)]
pub(crate) struct Waiters {
    map: DashMap<Uuid, oneshot::Sender<Option<NoticeOutcome>>>,
}

/// A registered waiter; it is removed when this is dropped, however the wait ends.
pub(crate) struct Waiting<'a> {
    waiters: &'a Waiters,
    id: Uuid,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.waiters.map.remove(&self.id);
    }
}

impl Waiters {
    /// Registers a wait for `id` (before its message is published: the notice may come back
    /// before the publish returns).
    pub(crate) fn register(&self, id: Uuid) -> (Waiting<'_>, oneshot::Receiver<Option<NoticeOutcome>>) {
        let (tx, rx) = oneshot::channel();
        self.map.insert(id, tx);
        (Waiting { waiters: self, id }, rx)
    }

    /// Wakes the waiter of `notice`'s invocation; false when nobody waits for it (its wait
    /// ended first, or it waits on another instance).
    fn wake(&self, notice: CompletionNotice) -> bool {
        match self.map.remove(&notice.id) {
            Some((_, tx)) => tx.send(notice.outcome).is_ok(),
            None => false,
        }
    }
}

/// Wakes waiters from the notices of `instance` until `stop`; reopens the notice queue after a
/// broker outage (notices sent meanwhile are lost, and those waiters read the store at their
/// deadline).
pub(crate) async fn listen(
    waiters: Arc<Waiters>,
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    instance: String,
    mut notices: Box<dyn Consumer>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        loop {
            let next = tokio::select! {
                next = notices.next() => next,
                _ = stop.cancelled() => return,
            };
            match next {
                Some(Ok(d)) => match CompletionNotice::decode(&d.body) {
                    Ok(notice) => metrics.notice(if waiters.wake(notice) { "woke" } else { "late" }),
                    Err(e) => {
                        metrics.notice("undecodable");
                        tracing::warn!(error = %e, "ignoring an undecodable completion notice");
                    }
                },
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "completion notices interrupted; reopening");
                    break;
                }
                None => break,
            }
        }
        backoff.reset();
        loop {
            match transport.open_notices(&instance).await {
                Ok(c) => {
                    notices = c;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cannot reopen the notice queue yet"),
            }
            tokio::select! {
                _ = backoff.wait() => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
