//! Dead letters: listed where they wait (each put back in its queue), and replayed as a new
//! attempt of their invocation, on the function's active version.

use uuid::Uuid;
use warren_store::{Outcome, Status};
use warren_transport::Delivery;
use warren_wire::message::InvocationMessage;

use crate::error::Error;
use crate::invoke::Invoker;

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
    fn describe(pool: &str, d: &Delivery) -> Self {
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

impl Invoker {
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
                    not_before_ms: None,
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
}
