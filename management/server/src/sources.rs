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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use warren_service::retry::Backoff;
use warren_service::shutdown::pace;
use warren_store::{NewInvocation, Outcome, Status, Store};
use warren_transport::{peer, QueueType};
use warren_wire::manifest::AmqpSource;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::Error;
use crate::invoke::Invoker;
use crate::lease::Lease;

const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// The source triggers of one management instance.
pub(crate) struct Sources {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    invoker: Arc<Invoker>,
    lease: Arc<Lease>,
    /// The broker of sources that name none (Warren's own, in the distributed mode).
    amqp_url: Option<String>,
    /// The type of the queues this declares.
    queue_type: QueueType,
    /// Where the consumers and the records of refused messages run (owned by management's stop).
    tasks: TaskTracker,
}

impl Sources {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        invoker: Arc<Invoker>,
        lease: Arc<Lease>,
        config: &Config,
        tasks: TaskTracker,
    ) -> Arc<Sources> {
        Arc::new(Sources {
            store,
            catalog,
            invoker,
            lease,
            amqp_url: config.amqp_url.clone(),
            queue_type: config.queue_type,
            tasks,
        })
    }

    /// Starts and stops source consumers (on `tasks`) as functions' active versions change.
    /// At `stop` the consumers stop taking messages and finish the ones they hold (recorded,
    /// published and acked, or returned); then `idle` is set and this returns.
    pub(crate) async fn supervise(self: Arc<Self>, stop: CancellationToken, idle: Arc<AtomicBool>) {
        let mut running: HashMap<String, (AmqpSource, tokio::task::JoinHandle<()>)> = HashMap::new();
        while pace(REFRESH_EVERY, &stop).await {
            let active = match self.catalog.active_manifests().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the source triggers yet");
                    continue;
                }
            };
            // A paused function's source stops consuming until it resumes.
            let paused = self.catalog.paused().await;
            let wanted: HashMap<String, AmqpSource> = active
                .into_iter()
                .filter(|(name, _, _)| !paused.contains(name))
                .filter_map(|(name, _, manifest)| manifest.source.clone().map(|s| (name, s)))
                .collect();
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
                let task = self.tasks.spawn(self.clone().consume(name.clone(), src.clone(), stop.clone()));
                running.insert(name, (src, task));
            }
        }
        for (_, (_, task)) in running.drain() {
            let _ = task.await;
        }
        idle.store(true, Ordering::Release);
    }

    /// Consumes one source until the stop, reconnecting with backoff.
    async fn consume(self: Arc<Self>, function: String, src: AmqpSource, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        while !stop.is_cancelled() {
            let (src, url) = match self.resolve(&function, &src).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(function = %function, error = %e, "source trigger cannot start yet");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                        _ = stop.cancelled() => return,
                    }
                    continue;
                }
            };
            match self.run(&function, &src, &url, &stop).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(function = %function, error = %e, "source trigger interrupted; reconnecting"),
            }
            tokio::select! {
                _ = backoff.wait() => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// The source with `%NAME%` in its queue name resolved from the function's settings, and its
    /// broker: `url_setting`'s value, `url`, or Warren's own.
    async fn resolve(&self, function: &str, src: &AmqpSource) -> Result<(AmqpSource, String), Error> {
        let mut src = src.clone();
        if let Some(q) = &src.queue {
            src.queue = Some(self.catalog.expand(function, q).await?);
        }
        let url = match &src.url_setting {
            Some(setting) => self.catalog.setting_value(function, setting).await?,
            None => src.url.clone().or_else(|| self.amqp_url.clone()).ok_or_else(|| {
                Error::BadRequest("the source names no broker (url) and management has none of its own".into())
            })?,
        };
        Ok((src, url))
    }

    /// One connection's worth of consuming: declares (or finds) the queue, binds it, and takes
    /// messages until the stop or a broken connection.
    async fn run(&self, function: &str, src: &AmqpSource, url: &str, stop: &CancellationToken) -> Result<(), String> {
        let conn = peer::connect(url, &format!("warren-source-{function}")).await?;
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        let queue = source_queue(function, src);
        let args = self.queue_type.arguments(None);
        let declared = ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args).await;
        let ch = match declared {
            Ok(_) => ch,
            // The queue exists with other arguments (its owner's, or of another queue type):
            // use it as it is.
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
            .take_until(stop.cancelled())
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
                match self.take(function, Bytes::from(d.data), headers, stop).await {
                    Taken::Yes => {
                        let _ = acker.ack(BasicAckOptions::default()).await;
                    }
                    Taken::No => {
                        let _ = acker.nack(BasicNackOptions { requeue: true, multiple: false }).await;
                    }
                }
            })
            .await;
        if stop.is_cancelled() {
            let _ = ch.close(200, "stopping".into()).await;
            return Ok(());
        }
        Err(failure.unwrap_or_else(|| "the consumer was closed by the broker".into()))
    }

    /// Turns one source message into an invocation, waiting out store and broker outages.
    async fn take(
        &self,
        function: &str,
        body: Bytes,
        headers: Vec<(String, String)>,
        stop: &CancellationToken,
    ) -> Taken {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            // A consumer aborted (its source changed) cannot cut an invoke between its record
            // and its publish (`invoke_with` is safe to cancel), nor, on a task of its own, the
            // record of a refused message between its record and its failure.
            let invoked = match self.invoker.invoke_with(function, body.clone(), None, headers.clone()).await {
                Ok(_) => Ok(Taken::Yes),
                Err(Error::TooLarge(why) | Error::BadRequest(why) | Error::Internal(why)) => {
                    let (refuse, function) = (self.refuser(), function.to_string());
                    let refused = self.tasks.spawn(async move { refuse.record_refused(&function, &why).await });
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
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    return Taken::No;
                }
                Err(e) => {
                    tracing::warn!(function, error = %e, "cannot take a source message yet; holding it");
                    if stop.is_cancelled() {
                        return Taken::No;
                    }
                    backoff.wait().await;
                }
            }
        }
    }
}

enum Taken {
    /// Recorded (and published): ack the source message.
    Yes,
    /// Not taken: return it to its queue.
    No,
}

/// What records a refused source message, on a task of its own.
struct Refuser {
    store: Arc<dyn Store>,
    invoker: Arc<Invoker>,
    lease: Arc<Lease>,
}

impl Sources {
    fn refuser(&self) -> Refuser {
        Refuser { store: self.store.clone(), invoker: self.invoker.clone(), lease: self.lease.clone() }
    }
}

impl Refuser {
    /// Records a source message that cannot become an invocation as a failed one, with the
    /// reason.
    async fn record_refused(&self, function: &str, why: &str) -> Result<(), Error> {
        let f = self.store.get_function(function).await?.ok_or_else(|| Error::NotFound(function.to_string()))?;
        let id = Uuid::now_v7();
        // Open until it is recorded failed (see `lease`).
        let held = self.lease.hold()?;
        let inv = NewInvocation {
            id,
            function: function.into(),
            version: f.active_version,
            payload: Vec::new(),
            created_ms: held.ms,
        };
        self.store.create_invocation(&inv).await?;
        let error = format!("source message refused: {why}");
        tracing::warn!(function, invocation = %id, error = %error, "source message recorded as failed");
        let failed = Outcome::unrun(Status::Failed, 0, error);
        if let Err(e) = self.store.complete(id, &failed).await {
            // Recorded `queued` with no message: record the refusal when the store takes it (the
            // source message itself is acked: this record is its invocation).
            tracing::warn!(invocation = %id, error = %e, "cannot record a refused source message yet; retrying");
            self.invoker.record_failure_later(id, failed, held);
        }
        Ok(())
    }
}

/// The queue a source reads: its own, or Warren's bound to its exchange.
pub(crate) fn source_queue(function: &str, src: &AmqpSource) -> String {
    src.queue.clone().unwrap_or_else(|| format!("warren.source.{function}"))
}
