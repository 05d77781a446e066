//! What a worker writes besides running: store calls retried while the store is down, the next
//! attempt of a failed one, the record of an invocation whose record was lost, and completion
//! notices to the management instance that waits.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use warren_store::{Claim, NewInvocation, Outcome, StoreError};
use warren_wire::message::{
    CompletionNotice, InvocationMessage, NoticeOutcome, NOTICE_OUTCOME_MAX_BYTES, PROTOCOL_VERSION,
};

use crate::pipeline::Verdict;
use crate::worker::Worker;

impl Worker {
    /// Runs a store operation, retrying with backoff while the store is unavailable, for up to
    /// `store_retry_for`. `None` when it never succeeded: the caller returns the message to the
    /// queue instead of acking it.
    pub(crate) async fn with_store_retry<T, F, Fut>(&self, op_label: &'static str, what: &str, op: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let deadline = tokio::time::Instant::now() + self.cfg.store_retry_for;
        let attempt = || self.metrics.store.time(op_label, op());
        let on_retry = |e: &StoreError, delay: Duration| {
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot {what}");
        };
        match warren_service::retry::until(
            deadline,
            (Duration::from_millis(100), Duration::from_secs(5)),
            attempt,
            on_retry,
        )
        .await
        {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "cannot {what}; returning the message to the queue");
                None
            }
        }
    }

    /// An unclaimed run's outcome found no open record. Either another outcome came first, or
    /// the record is not there at all (management's insert commits without waiting for the
    /// disk, so a database crash can lose it while its message lives on in the broker): then
    /// the record is made now, as the claim would have made it, and the outcome stored on it.
    /// `None` when the store cannot be reached (the message goes back to the queue).
    pub(crate) async fn record_unrecorded(
        &self,
        inv: &Arc<NewInvocation>,
        attempt: i32,
        outcome: &Outcome,
    ) -> Option<bool> {
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
    pub(crate) async fn retry_later(
        &self,
        pool: &str,
        msg: &InvocationMessage,
        outcome: &Outcome,
        delay: Duration,
    ) -> Verdict {
        let mut next = msg.clone();
        next.attempt = outcome.attempt as u32 + 1;
        next.fresh = false;
        next.unrecorded = false;
        if let Err(e) = self.transport.publish_delayed(pool, next.encode().into(), delay).await {
            tracing::warn!(error = %e, "cannot schedule the retry; returning the message");
            return Verdict::REQUEUE;
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
            return Verdict::REQUEUE;
        }
        self.metrics.retried(&msg.function);
        Verdict::Ack
    }

    /// Tells a waiting management instance that the invocation has its outcome: `stored`, the
    /// one this worker stored, goes with it when it is small, so the waiter need not read it
    /// back from the store.
    pub(crate) async fn notify(&self, msg: &InvocationMessage, stored: Option<&Outcome>) {
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
            let sent = self.transport.notify(q, notice.encode().into()).await;
            self.metrics.notice(sent.is_ok());
            if let Err(e) = sent {
                tracing::debug!(error = %e, "completion notice not sent");
            }
        }
    }
}
