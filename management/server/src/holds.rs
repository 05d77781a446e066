//! Paused functions: resumed when their time comes, and their held invocations moved back to
//! their pool once they resume.
//!
//! While a function is paused, workers set its invocations aside in its hold (the pool
//! `held.<function>`, see `warren_wire::topology::held_pool`) instead of running them; its
//! timers do not fire and its AMQP source does not consume (`timers`, `sources`). Once it
//! resumes, one instance at a time (the `drain:<function>` duty) takes the held messages in
//! order and publishes each back to the function's pool, confirmed, before acking it. The hold
//! ends (in the store) once its queue has been found empty more than [`SETTLED`] after the
//! resume and after the last time a worker marked it (a worker marks a hold in the store before
//! it sets something aside, at most every 5 s): by then no worker still holds by a list that
//! said "paused", and a hold a worker fills later is opened again by its mark.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren_service::shutdown::pace;
use warren_store::{Hold, Store};
use warren_transport::Transport;
use warren_wire::message::InvocationMessage;
use warren_wire::time::now_ms;
use warren_wire::topology::held_pool;

use crate::catalog::Catalog;

/// How often paused functions are looked at.
const EVERY: Duration = Duration::from_secs(1);
/// How long after a resume (or a worker's last mark that it set something aside) a hold found
/// empty ends: longer than a worker trusts its list of paused functions (3 s, read each second)
/// and twice as long as a worker goes between two marks (5 s).
const SETTLED: Duration = Duration::from_secs(10);
/// How long a drain waits for the next held message before it looks at the queue's depth.
const IDLE: Duration = Duration::from_millis(500);
/// Held messages put back in order at a time.
const WINDOW: usize = 256;
/// The drain duty's lease.
const DUTY_LEASE: Duration = Duration::from_secs(30);

pub(crate) struct Holds {
    store: Arc<dyn Store>,
    transport: Arc<dyn Transport>,
    catalog: Arc<Catalog>,
    instance: String,
}

impl Holds {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        transport: Arc<dyn Transport>,
        catalog: Arc<Catalog>,
        instance: String,
    ) -> Self {
        Holds { store, transport, catalog, instance }
    }

    /// Resumes due pauses and drains resumed functions' holds, until `stop`.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        while pace(EVERY, &stop).await {
            let holds = match self.store.holds().await {
                Ok(h) => h,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the paused functions now");
                    continue;
                }
            };
            let now = now_ms();
            for h in &holds {
                match (h.paused_ms, h.resume_at_ms) {
                    (Some(_), Some(at)) if at <= now => {
                        match self.store.resume_function(&h.function, now, true).await {
                            Ok(true) => tracing::info!(function = %h.function, "paused function resumed at its time"),
                            Ok(false) => {}
                            Err(e) => tracing::debug!(error = %e, "cannot resume a function now"),
                        }
                    }
                    (Some(_), _) => {}
                    (None, _) => self.drain(h, &stop).await,
                }
            }
        }
    }

    /// Moves the held messages of `h`'s function back to its pool, in order, if this instance holds the
    /// drain duty; ends the hold in the store once its queue is empty and settled.
    async fn drain(&self, h: &Hold, stop: &CancellationToken) {
        let function = h.function.as_str();
        let duty = format!("drain:{function}");
        match self.store.take_duty(&duty, &self.instance, DUTY_LEASE.as_millis() as i64).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot ask for a drain duty now");
                return;
            }
        }
        let idle = match self.move_back(function, &duty, stop).await {
            Ok((moved, idle)) => {
                if moved > 0 {
                    tracing::info!(function, moved, "held invocations moved back to the pool");
                }
                idle
            }
            Err(e) => {
                tracing::warn!(function, error = %e, "cannot move the held invocations back now; trying again");
                return;
            }
        };
        // Stopped early (paused again, the duty lost, a stop): what the consumer held goes back
        // to the hold as its channel closes, so the hold stays.
        if !idle {
            return;
        }
        if Duration::from_millis((now_ms() - h.since_ms).max(0) as u64) < SETTLED {
            return;
        }
        match self.transport.queue_stats(&held_pool(function)).await {
            // No consumer either: the drain's own channel has closed (its unacked messages, if
            // any, are back in the queue).
            Ok(s) if s.messages == 0 && s.consumers == 0 => {
                if let Err(e) = self.store.drained(function, h.since_ms).await {
                    tracing::debug!(error = %e, "cannot end a hold now");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read a hold's depth now"),
        }
    }

    /// Takes the held messages a window at a time (what the broker has handed over, up to
    /// [`WINDOW`]), puts each window back in the order the invocations were made (their ids are
    /// UUIDv7: a worker sets aside the deliveries it holds at once in any order), and publishes
    /// each to the function's pool before acking it, until the queue stays empty for [`IDLE`],
    /// the function is paused again, or a stop. How many it moved, and whether it stopped because the hold was idle.
    async fn move_back(&self, function: &str, duty: &str, stop: &CancellationToken) -> anyhow::Result<(u64, bool)> {
        let held = held_pool(function);
        self.transport.declare_pool(&held).await?;
        let (_, manifest) = self.catalog.active_manifest(function).await?;
        let pool = manifest.pool.clone();
        let mut consumer = self.transport.consume(&held, WINDOW as u16).await?;
        let (mut moved, mut looked, mut idle) = (0u64, Instant::now(), false);
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                n = tokio::time::timeout(IDLE, consumer.next()) => n,
            };
            let d = match next {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(_) => {
                    idle = true;
                    break;
                }
            };
            let mut window = vec![d?];
            while window.len() < WINDOW {
                match tokio::time::timeout(Duration::from_millis(20), consumer.next()).await {
                    Ok(Some(d)) => window.push(d?),
                    _ => break,
                }
            }
            // Undecodable ones keep their place at the end: a worker dead-letters them.
            window.sort_by_key(|d| InvocationMessage::decode(&d.body).map(|m| m.id).unwrap_or(Uuid::max()));
            let mut window = window.into_iter();
            while let Some(d) = window.next() {
                if let Err(e) = self.transport.publish(&pool, d.body.clone()).await {
                    let _ = d.requeue().await;
                    for rest in window {
                        let _ = rest.requeue().await;
                    }
                    return Err(e.into());
                }
                d.ack().await?;
                moved += 1;
            }
            if looked.elapsed() >= EVERY {
                looked = Instant::now();
                let paused = self.store.get_function(function).await?.is_none_or(|f| f.paused_ms.is_some());
                let kept = self.store.take_duty(duty, &self.instance, DUTY_LEASE.as_millis() as i64).await?;
                if paused || !kept {
                    break;
                }
            }
        }
        consumer.flush_acks().await;
        Ok((moved, idle))
    }
}
