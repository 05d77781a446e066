//! AMQP source triggers: a function whose active version has a `[source]` gets one invocation
//! per message arriving on another system's queue (or on Warren's queue
//! `warren.source.<function>`, bound to the named exchange with the routing key).
//!
//! Every management instance consumes each source (competing consumers: a message goes to
//! one). A source message is acked only once its invocation is recorded and its publish is
//! confirmed by Warren's broker; if Warren stops in between, the unacked message goes back to
//! its queue and comes again. A message too large to be an invocation is recorded as a failed
//! invocation (saying why) and acked, so it neither blocks the queue nor vanishes unnoticed.
//! The message's AMQP headers reach the function (`WARREN_HEADERS`, a JSON object).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::sync::watch;
use uuid::Uuid;
use warren_store::{NewInvocation, Outcome, Status};
use warren_transport::peer;
use warren_wire::manifest::AmqpSource;

use crate::{Error, Management};

const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Starts and stops source consumers as functions' active versions change. When `stop` turns
/// true (management is shutting down), the consumers stop taking messages, finish the ones
/// they hold (recorded, published and acked, or returned), and this returns.
pub async fn supervise(weak: Weak<Management>, stop: watch::Receiver<bool>) {
    let mut running: HashMap<String, (AmqpSource, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_EVERY) => {}
            _ = stopped(stop.clone()) => {
                for (_, (_, task)) in running.drain() {
                    let _ = task.await;
                }
                return;
            }
        }
        let Some(m) = weak.upgrade() else { break };
        let active = match m.active_manifests().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the source triggers yet");
                continue;
            }
        };
        drop(m);
        let wanted: HashMap<String, AmqpSource> =
            active.into_iter().filter_map(|(name, _, manifest)| manifest.source.clone().map(|s| (name, s))).collect();
        running.retain(|name, (src, task)| {
            let keep = wanted.get(name) == Some(src) && !task.is_finished();
            if !keep {
                task.abort();
                tracing::info!(function = %name, "source trigger stopped");
            }
            keep
        });
        for (name, src) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            tracing::info!(function = %name, queue = ?src.queue, exchange = ?src.exchange, "source trigger started");
            let task = tokio::spawn(consume(weak.clone(), name.clone(), src.clone(), stop.clone()));
            running.insert(name, (src, task));
        }
    }
    for (_, (_, task)) in running {
        task.abort();
    }
}

/// Consumes one source until management goes away, reconnecting with backoff.
async fn consume(weak: Weak<Management>, function: String, src: AmqpSource, stop: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(500);
    while !*stop.borrow() {
        let Some(url) = weak.upgrade().and_then(|m| src.url.clone().or_else(|| m.config.amqp_url.clone())) else {
            if weak.strong_count() == 0 {
                return;
            }
            tracing::warn!(function = %function, "source trigger names no broker (url) and management has none of its own");
            tokio::time::sleep(Duration::from_secs(30)).await;
            continue;
        };
        match run(&weak, &function, &src, &url, &stop).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(function = %function, error = %e, "source trigger interrupted; reconnecting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(stop.clone()) => return,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// The queue a source reads: its own, or Warren's bound to its exchange.
pub fn source_queue(function: &str, src: &AmqpSource) -> String {
    src.queue.clone().unwrap_or_else(|| format!("warren.source.{function}"))
}

async fn run(
    weak: &Weak<Management>,
    function: &str,
    src: &AmqpSource,
    url: &str,
    stop: &watch::Receiver<bool>,
) -> Result<(), String> {
    let conn = peer::connect(url, &format!("warren-source-{function}")).await?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let queue = source_queue(function, src);
    let declared = ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default()).await;
    let ch = match declared {
        Ok(_) => ch,
        // The queue exists with other arguments (its owner's): use it as it is.
        Err(_) => {
            let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
            ch.queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("queue {queue:?}: {e}"))?;
            ch
        }
    };
    if let Some(exchange) = &src.exchange {
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            src.routing_key.as_str().into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("cannot bind {queue:?} to exchange {exchange:?} (does it exist?): {e}"))?;
    }
    ch.basic_qos(src.prefetch, BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
    let consumer = ch
        .basic_consume(
            queue.as_str().into(),
            format!("warren-source-{function}-{}", Uuid::now_v7().simple()).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut failure = None;
    // At a stop, no new message is taken; those already taken are finished. What the broker
    // sent ahead (prefetch) and nobody took goes back to the queue when the channel closes.
    consumer
        .take_until(stopped(stop.clone()))
        .take_while(|d| {
            if let Err(e) = d {
                failure = Some(e.to_string());
            }
            std::future::ready(d.is_ok())
        })
        .for_each_concurrent(src.prefetch as usize, |d| async move {
            let Ok(d) = d else { return };
            let headers: Vec<(String, String)> = d
                .properties
                .headers()
                .as_ref()
                .map(|h| h.inner().iter().map(|(k, v)| (k.to_string(), peer::header_text(v))).collect())
                .unwrap_or_default();
            let acker = d.acker;
            match take(weak, function, Bytes::from(d.data), headers, stop).await {
                Taken::Yes => {
                    let _ = acker.ack(BasicAckOptions::default()).await;
                }
                Taken::No => {
                    let _ = acker.nack(BasicNackOptions { requeue: true, multiple: false }).await;
                }
            }
        })
        .await;
    if weak.strong_count() == 0 || *stop.borrow() {
        let _ = ch.close(200, "stopping".into()).await;
        return Ok(());
    }
    Err(failure.unwrap_or_else(|| "the consumer was closed by the broker".into()))
}

enum Taken {
    /// Recorded (and published): ack the source message.
    Yes,
    /// Not taken: return it to its queue.
    No,
}

/// Turns one source message into an invocation, waiting out store and broker outages.
async fn take(
    weak: &Weak<Management>,
    function: &str,
    body: Bytes,
    headers: Vec<(String, String)>,
    stop: &watch::Receiver<bool>,
) -> Taken {
    let mut delay = Duration::from_millis(200);
    loop {
        let Some(m) = weak.upgrade() else { return Taken::No };
        // A consumer aborted (its source changed) cannot cut an invoke between its record and
        // its publish (`invoke_with` is safe to cancel), nor, on a task of its own, the record
        // of a refused message between its record and its failure.
        let invoked = match m.invoke_with(function, body.clone(), None, headers.clone()).await {
            Ok(_) => Ok(Taken::Yes),
            Err(Error::TooLarge(why) | Error::BadRequest(why) | Error::Internal(why)) => {
                let (m, function) = (m.clone(), function.to_string());
                let refused = tokio::spawn(async move { record_refused(&m, &function, &why).await });
                Ok(match refused.await {
                    Ok(Ok(())) => Taken::Yes,
                    _ => Taken::No,
                })
            }
            Err(e) => Err(e),
        };
        match invoked {
            Ok(taken) => return taken,
            Err(Error::NotFound(why)) => {
                tracing::warn!(function, error = %why, "source message returned: the function is gone");
                // Not at once: the supervisor stops this consumer within seconds.
                drop(m);
                tokio::time::sleep(Duration::from_secs(5)).await;
                return Taken::No;
            }
            Err(e) => {
                tracing::warn!(function, error = %e, "cannot take a source message yet; holding it");
                drop(m);
                if *stop.borrow() {
                    return Taken::No;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Records a source message that cannot become an invocation as a failed one, with the reason.
async fn record_refused(m: &Arc<Management>, function: &str, why: &str) -> Result<(), Error> {
    let f = m.store.get_function(function).await?.ok_or_else(|| Error::NotFound(function.to_string()))?;
    let id = Uuid::now_v7();
    // Open until it is recorded failed (see `lease`).
    let held = m.settling.hold()?;
    let now = held.ms;
    let inv = NewInvocation {
        id,
        function: function.into(),
        version: f.active_version,
        payload: Vec::new(),
        created_ms: now,
    };
    m.store.create_invocation(&inv).await?;
    let error = format!("source message refused: {why}");
    tracing::warn!(function, invocation = %id, error = %error, "source message recorded as failed");
    let failed = Outcome::unrun(Status::Failed, 0, error);
    if let Err(e) = m.store.complete(id, &failed).await {
        // Recorded `queued` with no message: record the refusal when the store takes it (the
        // source message itself is acked: this record is its invocation).
        tracing::warn!(invocation = %id, error = %e, "cannot record a refused source message yet; retrying");
        tokio::spawn(crate::record_not_queued(m.store.clone(), id, failed, held));
    }
    Ok(())
}
