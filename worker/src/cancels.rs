//! Cancelled invocations, as management tells this worker (a notice on the worker's own notice
//! queue, `{"cancel": "<id>"}`, sent to every worker the store lists as running). A cancelled
//! invocation delivered afterwards is acked without running (its record says `cancelled`, so a
//! claim would find it final, but a fresh first delivery is not claimed); a run of it going on
//! now is stopped (a process run's tree killed; a warm handler's call told by a cancel frame,
//! the handler killed after its grace period, see `handler`). Both lists are bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren_service::shutdown::pace;
use warren_transport::Transport;

/// How long a cancel is remembered: longer than a message waits in a busy queue, usually; a
/// delivery after that is still claimed and found final unless it is a fresh first delivery.
const REMEMBERED_FOR: Duration = Duration::from_secs(3600);
/// At most this many cancels are remembered (the oldest go first).
const REMEMBERED_MAX: usize = 100_000;

#[derive(Default)]
pub(crate) struct Cancels {
    /// Cancelled ids and when the notice came.
    recent: Mutex<HashMap<Uuid, Instant>>,
    /// Runs going on here, each with what stops it.
    running: Mutex<HashMap<Uuid, CancellationToken>>,
}

/// A run registered with [`Cancels::track`]: forgets it when dropped.
pub(crate) struct Tracked<'a> {
    cancels: &'a Cancels,
    id: Uuid,
    pub token: CancellationToken,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.cancels.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl Cancels {
    /// Whether `id` was cancelled (as far as this worker was told).
    pub(crate) fn is_cancelled(&self, id: Uuid) -> bool {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&id)
    }

    /// Registers a run of `id`; its token is cancelled if a cancel of `id` comes (or came).
    pub(crate) fn track(&self, id: Uuid) -> Tracked<'_> {
        let token = CancellationToken::new();
        if self.is_cancelled(id) {
            token.cancel();
        }
        self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(id, token.clone());
        // A cancel that came between the look above and the insert found no run to stop.
        if self.is_cancelled(id) {
            token.cancel();
        }
        Tracked { cancels: self, id, token }
    }

    /// A cancel of `id`: remembered, and its run here (if any) stopped.
    pub(crate) fn cancel(&self, id: Uuid) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() >= REMEMBERED_MAX {
                recent.retain(|_, at| at.elapsed() < REMEMBERED_FOR);
                if recent.len() >= REMEMBERED_MAX {
                    if let Some(oldest) = recent.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k) {
                        recent.remove(&oldest);
                    }
                }
            }
            recent.insert(id, Instant::now());
        }
        if let Some(token) = self.running.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            tracing::info!(invocation = %id, "cancelled while running here: stopping it");
            token.cancel();
        }
    }

    /// Reads cancel notices from `worker`'s notice queue until `stop`, opening it again after a
    /// broker outage.
    pub(crate) async fn follow(
        self: Arc<Self>,
        transport: Arc<dyn Transport>,
        worker: String,
        stop: CancellationToken,
    ) {
        loop {
            match transport.open_notices(&worker).await {
                Ok(mut notices) => loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => return,
                        n = notices.next() => n,
                    };
                    match next {
                        Some(Ok(d)) => match parse(&d.body) {
                            Some(id) => self.cancel(id),
                            None => tracing::warn!("ignoring a notice that is not {{\"cancel\": ID}}"),
                        },
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "the cancel notices stopped; opening them again");
                            break;
                        }
                        None => break,
                    }
                },
                Err(e) => tracing::debug!(error = %e, "cannot open the cancel notices now"),
            }
            if !pace(Duration::from_secs(1), &stop).await {
                return;
            }
        }
    }
}

/// `{"cancel": "<uuid>"}`.
fn parse(body: &[u8]) -> Option<Uuid> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("cancel")?.as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_stops_a_tracked_run_and_marks_later_ones() {
        let c = Cancels::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let run = c.track(a);
        assert!(!run.token.is_cancelled());
        c.cancel(a);
        assert!(run.token.is_cancelled(), "a run going on is stopped");
        assert!(c.is_cancelled(a) && !c.is_cancelled(b));
        drop(run);
        assert!(c.running.lock().unwrap().is_empty(), "a finished run is forgotten");
        assert!(c.track(a).token.is_cancelled(), "a run that starts after its cancel stops at once");
        assert_eq!(parse(format!("{{\"cancel\": \"{b}\"}}").as_bytes()), Some(b));
        assert_eq!(parse(b"{\"cancel\": 7}"), None);
    }
}
