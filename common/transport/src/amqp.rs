//! The AMQP transport: RabbitMQ through lapin, with reconnection.
//!
//! A supervisor task owns the connection. It publishes the current [`Link`] (connection plus a
//! confirm-mode publishing channel) through a `watch` channel; when the link breaks (an
//! operation fails on it, or a periodic check finds it closed) the supervisor reconnects with
//! exponential backoff, re-declares the topology it declared before, and publishes the new
//! link. Given several nodes of one cluster, each connection attempt tries them in turn,
//! starting after the node of the last link, so a role whose node is lost moves to another. Operations wait for a link for at most `hold` (then fail as `Unavailable`), so a
//! publish during an outage either goes through once the broker is back or reports failure —
//! never success without a confirm. Consumers end when their link breaks; callers open them
//! again (the worker does so in its consume loop).
//!
//! Messages are persistent, queues durable (classic or quorum, see [`crate::queues`]), every
//! publish (but notices) confirmed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{watch, Notify};

use warren_service::redact::redact_url;
use warren_service::retry::{self, Backoff};
use warren_wire::topology;

use crate::acks::AckBatch;
use crate::delivery::{Acker, Delivery};
use crate::error::{Result, TransportError};
use crate::interface::{Consumer, QueueStats, Transport};
use crate::queues::{type_mismatch, QueueType};

fn unavailable(e: lapin::Error) -> TransportError {
    TransportError::Unavailable(e.to_string())
}

/// How long the first connection is retried before `connect` gives up.
const FIRST_CONNECT: Duration = Duration::from_secs(20);
/// How long one node may take to accept a connection before the next one is tried (a host
/// that is gone answers nothing at all).
const NODE_CONNECT: Duration = Duration::from_secs(5);

/// Which of `nodes` nodes a transport named `name` tries first: a hash of the name, so that
/// roles (named by host and id) spread over the nodes of a cluster.
pub fn first_node(name: &str, nodes: usize) -> usize {
    name.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % nodes.max(1)
}

/// The nodes of one broker (a single node, or the nodes of a cluster), as `--amqp` gives them.
#[derive(Clone, Debug)]
pub struct Brokers(pub Vec<String>);

impl std::str::FromStr for Brokers {
    type Err = String;

    fn from_str(list: &str) -> std::result::Result<Self, String> {
        broker_urls(list).map(Brokers)
    }
}

impl Brokers {
    /// The list as given: the nodes separated by commas.
    pub fn joined(&self) -> String {
        self.0.join(",")
    }
}

/// The nodes of one broker (a single node, or the nodes of a cluster) from a list separated by
/// commas, each checked as an AMQP URI (`amqp://user:password@host:port/vhost`). A comma in a
/// password must be written `%2C`.
pub fn broker_urls(list: &str) -> std::result::Result<Vec<String>, String> {
    let urls: Vec<String> = list.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
    if urls.is_empty() {
        return Err("no RabbitMQ URL given".into());
    }
    for u in &urls {
        u.parse::<lapin::uri::AMQPUri>()
            .map_err(|e| format!("{} is not an AMQP URL (amqp://user:password@host:port/vhost): {e}", redact_url(u)))?;
    }
    Ok(urls)
}

struct Link {
    conn: Connection,
    publisher: Channel,
    /// Completion notices go on a channel without confirms: on the confirm channel, every
    /// unawaited confirm would be kept by lapin for the life of the connection.
    notifier: Channel,
    generation: u64,
    /// The node this link is to (an index into `Shared::urls`).
    node: usize,
}

impl Link {
    fn healthy(&self) -> bool {
        self.conn.status().connected() && self.publisher.status().connected()
    }
}

/// A queue declared once, re-declared after every reconnection.
#[derive(Clone)]
enum Declared {
    Pool,
    Retry { pool: String, bucket_ms: u64 },
    Later { pool: String, hop_ms: u64 },
}

struct Shared {
    urls: Vec<String>,
    /// The node the next connection attempt starts with.
    next: AtomicUsize,
    queue_type: QueueType,
    name: String,
    link: watch::Sender<Option<Arc<Link>>>,
    broken: Notify,
    declared: DashMap<String, Declared>,
    generation: AtomicU64,
    hold: Duration,
}

pub struct AmqpTransport {
    shared: Arc<Shared>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Drop for AmqpTransport {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2).with_content_type("application/msgpack".into())
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

impl AmqpTransport {
    /// Connects to one of `urls` (retrying for up to 20 s, so a worker may start before its
    /// broker) and declares the shared exchanges. `urls` are the nodes of one broker, each an
    /// AMQP URI such as `amqp://guest:guest@127.0.0.1:5672/%2f`; which one is tried first
    /// depends on `name`, so that roles spread over the nodes. `hold`: how long an operation
    /// waits for the broker to come back during an outage before it fails.
    pub async fn connect_to(urls: &[String], name: &str, queue_type: QueueType, hold: Duration) -> Result<Self> {
        if urls.is_empty() {
            return Err(TransportError::Other("no RabbitMQ URL given".into()));
        }
        let first = first_node(name, urls.len());
        let (tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            urls: urls.to_vec(),
            next: AtomicUsize::new(first),
            queue_type,
            name: name.to_string(),
            link: tx,
            broken: Notify::new(),
            declared: DashMap::new(),
            generation: AtomicU64::new(0),
            hold,
        });
        let deadline = tokio::time::Instant::now() + FIRST_CONNECT;
        let delays = (Duration::from_millis(100), Duration::from_secs(2));
        let first = retry::until(deadline, delays, || shared.open_link(), |_, _| {}).await.map_err(|e| match e {
            TransportError::QueueType(_) => e,
            e => TransportError::Unavailable(format!("cannot connect to RabbitMQ at {}: {e}", shared.nodes())),
        })?;
        shared.link.send_replace(Some(first));
        let supervisor = tokio::spawn(supervise(Arc::downgrade(&shared)));
        Ok(AmqpTransport { shared, supervisor })
    }

    /// [`connect_to`](Self::connect_to) one node (or a comma-separated list of them), with
    /// classic queues.
    pub async fn connect_with(url: &str, name: &str, hold: Duration) -> Result<Self> {
        let urls = broker_urls(url).map_err(TransportError::Other)?;
        Self::connect_to(&urls, name, QueueType::Classic, hold).await
    }

    /// [`connect_with`](Self::connect_with) holding operations for up to 10 s during outages.
    pub async fn connect(url: &str, name: &str) -> Result<Self> {
        Self::connect_with(url, name, Duration::from_secs(10)).await
    }

    /// The node the transport is connected to now (its URL without password), if any.
    pub fn node(&self) -> Option<String> {
        let link = self.shared.link.borrow().clone()?;
        Some(redact_url(&self.shared.urls[link.node]))
    }
}

/// Reconnects whenever the link breaks, until the transport is dropped.
async fn supervise(weak: std::sync::Weak<Shared>) {
    loop {
        // Wait for a break: reported by an operation, or seen by the periodic check.
        loop {
            let Some(shared) = weak.upgrade() else { return };
            let healthy = shared.link.borrow().as_ref().map(|l| l.healthy()).unwrap_or(false);
            if !healthy {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), shared.broken.notified()).await;
        }
        let Some(shared) = weak.upgrade() else { return };
        shared.link.send_replace(None);
        tracing::warn!(name = %shared.name, "lost the connection to RabbitMQ; reconnecting");
        drop(shared);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let Some(shared) = weak.upgrade() else { return };
            let delay = match shared.open_link().await {
                Ok(link) => {
                    tracing::info!(name = %shared.name, generation = link.generation, "reconnected to RabbitMQ");
                    shared.link.send_replace(Some(link));
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "reconnect failed");
                    delay
                }
            };
            drop(shared);
            tokio::time::sleep(delay).await;
        }
    }
}

impl Shared {
    /// The nodes, for messages (without passwords).
    fn nodes(&self) -> String {
        self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(", ")
    }

    /// A link to the first node, in turn from `next`, that accepts one.
    async fn open_link(&self) -> Result<Arc<Link>> {
        let n = self.urls.len();
        let start = self.next.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..n {
            let node = (start + i) % n;
            match self.open_link_to(node).await {
                Ok(link) => {
                    // The next attempt (after this link breaks) starts with the node after it.
                    self.next.store((node + 1) % n, Ordering::Relaxed);
                    return Ok(link);
                }
                Err(e @ TransportError::QueueType(_)) => return Err(e),
                Err(e) if n == 1 => return Err(e),
                Err(e) => errors.push(format!("{}: {e}", redact_url(&self.urls[node]))),
            }
        }
        Err(TransportError::Unavailable(format!("no node answered ({})", errors.join("; "))))
    }

    async fn open_link_to(&self, node: usize) -> Result<Arc<Link>> {
        let props = ConnectionProperties::default().with_connection_name(self.name.clone().into());
        let conn = tokio::time::timeout(NODE_CONNECT, Connection::connect(&self.urls[node], props))
            .await
            .map_err(|_| TransportError::Unavailable(format!("no answer within {} s", NODE_CONNECT.as_secs())))?
            .map_err(unavailable)?;
        let publisher = conn.create_channel().await.map_err(unavailable)?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable)?;
        let notifier = conn.create_channel().await.map_err(unavailable)?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let link = Link { conn, publisher, notifier, generation, node };
        declare_shared(&link.publisher).await?;
        let declared: Vec<(String, Declared)> =
            self.declared.iter().map(|e| (e.key().clone(), e.value().clone())).collect();
        for (name, what) in declared {
            match what {
                Declared::Pool => declare_pool_on(&link.publisher, &name, self.queue_type).await?,
                Declared::Retry { pool, bucket_ms } => {
                    declare_retry_on(&link.publisher, &pool, bucket_ms, self.queue_type).await?
                }
                Declared::Later { pool, hop_ms } => {
                    declare_later_on(&link.publisher, &pool, hop_ms, self.queue_type).await?
                }
            }
        }
        Ok(Arc::new(link))
    }

    /// Runs a declaration on a channel of its own: a refused one closes its channel, and the
    /// publishing channel must not go with it.
    async fn declare<F, Fut>(&self, op: F) -> Result<()>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let op = &op;
        self.with_link(|l| async move {
            let ch = l.conn.create_channel().await.map_err(unavailable)?;
            op(ch.clone()).await?;
            let _ = ch.close(200, "declared".into()).await;
            Ok(())
        })
        .await
    }

    /// The current link, waiting up to `hold` for one during an outage.
    async fn current(&self) -> Result<Arc<Link>> {
        let mut rx = self.link.subscribe();
        let waited =
            tokio::time::timeout(self.hold, rx.wait_for(|l| l.as_ref().map(|l| l.healthy()).unwrap_or(false))).await;
        match waited {
            Ok(Ok(l)) => Ok(l.clone().expect("checked above")),
            _ => Err(TransportError::Unavailable(format!(
                "RabbitMQ has been unreachable for {} s; retry later",
                self.hold.as_secs()
            ))),
        }
    }

    /// Reports that an operation failed on `link`; the supervisor reconnects if it is broken.
    fn failed_on(&self, link: &Link) {
        if !link.healthy() {
            self.broken.notify_one();
        }
    }

    /// Runs `op` on the current link; if it fails because the link broke, once more on the
    /// next link (within `hold`).
    async fn with_link<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(Arc<Link>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        // The operation itself is bounded too: a broker that blocks publishers (a memory or
        // disk alarm) must not hold a caller forever.
        let bounded = |link: Arc<Link>| async {
            tokio::time::timeout(self.hold, op(link)).await.unwrap_or_else(|_| {
                Err(TransportError::Unavailable(format!(
                    "RabbitMQ did not answer within {} s (is it blocking publishers?); retry later",
                    self.hold.as_secs()
                )))
            })
        };
        let link = self.current().await?;
        match bounded(link.clone()).await {
            Err(TransportError::Unavailable(_)) if !link.healthy() => {
                self.failed_on(&link);
                bounded(self.current().await?).await
            }
            other => other,
        }
    }
}

async fn declare_shared(ch: &Channel) -> Result<()> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(topology::INVOKE_EXCHANGE.into(), ExchangeKind::Direct, durable, FieldTable::default())
        .await
        .map_err(unavailable)?;
    ch.exchange_declare(topology::DEAD_EXCHANGE.into(), ExchangeKind::Direct, durable, FieldTable::default())
        .await
        .map_err(unavailable)?;
    Ok(())
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<()> {
    ch.queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .map_err(unavailable)
}

/// Declares a durable queue of type `qt`; a queue of the other type is a [`TransportError::QueueType`].
async fn declare_queue(ch: &Channel, queue: &str, qt: QueueType, args: FieldTable) -> Result<()> {
    ch.queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await
        .map(|_| ())
        .map_err(|e| type_mismatch(queue, qt, &e).unwrap_or_else(|| unavailable(e)))
}

async fn declare_pool_on(ch: &Channel, pool: &str, qt: QueueType) -> Result<()> {
    let queue = topology::pool_queue(pool);
    declare_queue(ch, &queue, qt, qt.arguments(Some((topology::DEAD_EXCHANGE, pool)))).await?;
    bind(ch, &queue, topology::INVOKE_EXCHANGE, pool).await?;
    let dead = topology::dead_queue(pool);
    declare_queue(ch, &dead, qt, qt.arguments(None)).await?;
    bind(ch, &dead, topology::DEAD_EXCHANGE, pool).await
}

async fn declare_retry_on(ch: &Channel, pool: &str, bucket_ms: u64, qt: QueueType) -> Result<()> {
    let q = topology::retry_queue(pool, bucket_ms);
    declare_queue(ch, &q, qt, qt.arguments(Some((topology::INVOKE_EXCHANGE, pool)))).await
}

/// A hop queue of a scheduled invocation: its messages expire after exactly `hop_ms` (the
/// queue's TTL) into the pool, through the invoke exchange as retries do.
async fn declare_later_on(ch: &Channel, pool: &str, hop_ms: u64, qt: QueueType) -> Result<()> {
    let q = topology::later_queue(pool, hop_ms);
    let mut args = qt.arguments(Some((topology::INVOKE_EXCHANGE, pool)));
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(hop_ms as i64));
    declare_queue(ch, &q, qt, args).await
}

/// Publishes one message (mandatory) and waits for its confirm; a nack or a returned
/// (unroutable) message is an error. Also used for other systems' brokers (`peer`).
pub(super) async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<()> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions { mandatory: true, immediate: false },
            body,
            props,
        )
        .await
        .map_err(unavailable)?
        .await
        .map_err(unavailable)?;
    if !confirm.is_ack() {
        return Err(TransportError::NotConfirmed);
    }
    if confirm.take_message().is_some() {
        return Err(TransportError::Other(format!(
            "the broker returned the message: no queue is bound to {exchange:?} with key {key:?}"
        )));
    }
    Ok(())
}

fn reason_of(props: &BasicProperties) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(topology::REASON_HEADER)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

struct AmqpConsumer {
    inner: lapin::Consumer,
    channel: Arc<Channel>,
    link: Arc<Link>,
    shared: Arc<Shared>,
    no_ack: bool,
    /// Coalesces the acks of this channel's deliveries (pool consumers).
    acks: Option<Arc<AckBatch>>,
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let d = match self.inner.next().await {
            Some(d) => d,
            None => {
                self.shared.failed_on(&self.link);
                return None;
            }
        };
        Some(match d {
            Ok(d) => Ok(Delivery {
                body: Bytes::from(d.data),
                redelivered: d.redelivered,
                reason: None,
                acker: match (&self.acks, self.no_ack) {
                    (_, true) => Acker::None,
                    (Some(batch), false) => {
                        batch.delivered(d.delivery_tag);
                        Acker::Batched { batch: batch.clone(), tag: d.delivery_tag, acker: d.acker }
                    }
                    (None, false) => Acker::Amqp(d.acker),
                },
                _keep: Some(self.channel.clone()),
            }),
            Err(e) => {
                self.shared.failed_on(&self.link);
                Err(unavailable(e))
            }
        })
    }

    async fn flush_acks(&mut self) {
        if let Some(batch) = &self.acks {
            batch.flush_all().await;
        }
    }

    async fn cancel(&mut self) -> bool {
        let tag = self.inner.tag();
        match self.channel.basic_cancel(tag, lapin::options::BasicCancelOptions::default()).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "cannot cancel a consumer (its channel is gone: the broker returns its deliveries)");
                false
            }
        }
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    async fn declare_pool(&self, pool: &str) -> Result<()> {
        let qt = self.shared.queue_type;
        self.shared.declare(|ch| async move { declare_pool_on(&ch, pool, qt).await }).await?;
        self.shared.declared.insert(pool.to_string(), Declared::Pool);
        Ok(())
    }

    async fn publish(&self, pool: &str, body: Bytes) -> Result<()> {
        let body = &body;
        self.shared
            .with_link(|l| async move {
                publish_confirmed(&l.publisher, topology::INVOKE_EXCHANGE, pool, body, persistent()).await
            })
            .await
    }

    async fn publish_delayed(&self, pool: &str, body: Bytes, delay: Duration) -> Result<()> {
        let bucket_ms = topology::retry_bucket(delay);
        let queue = topology::retry_queue(pool, bucket_ms);
        if !self.shared.declared.contains_key(&queue) {
            let qt = self.shared.queue_type;
            self.shared.declare(|ch| async move { declare_retry_on(&ch, pool, bucket_ms, qt).await }).await?;
            self.shared.declared.insert(queue.clone(), Declared::Retry { pool: pool.to_string(), bucket_ms });
        }
        let props = persistent().with_expiration(delay.as_millis().max(1).to_string().into());
        let (body, queue, props) = (&body, &queue, &props);
        // Straight to the bucket queue through the default exchange.
        self.shared
            .with_link(|l| async move { publish_confirmed(&l.publisher, "", queue, body, props.clone()).await })
            .await
    }

    async fn publish_later(&self, pool: &str, body: Bytes, hop: Duration) -> Result<()> {
        let hop_ms = hop.as_millis().max(1) as u64;
        let queue = topology::later_queue(pool, hop_ms);
        if !self.shared.declared.contains_key(&queue) {
            let qt = self.shared.queue_type;
            self.shared.declare(|ch| async move { declare_later_on(&ch, pool, hop_ms, qt).await }).await?;
            self.shared.declared.insert(queue.clone(), Declared::Later { pool: pool.to_string(), hop_ms });
        }
        let props = persistent();
        let (body, queue, props) = (&body, &queue, &props);
        self.shared
            .with_link(|l| async move { publish_confirmed(&l.publisher, "", queue, body, props.clone()).await })
            .await
    }

    async fn dead_letter(&self, pool: &str, body: Bytes, reason: &str) -> Result<()> {
        let mut headers = FieldTable::default();
        headers.insert(topology::REASON_HEADER.into(), long(reason));
        let props = persistent().with_headers(headers);
        let (body, props) = (&body, &props);
        self.shared
            .with_link(|l| async move {
                publish_confirmed(&l.publisher, topology::DEAD_EXCHANGE, pool, body, props.clone()).await
            })
            .await
    }

    async fn take_dead(&self, pool: &str, max: usize) -> Result<Vec<Delivery>> {
        let link = self.shared.current().await?;
        let channel = Arc::new(link.conn.create_channel().await.map_err(unavailable)?);
        let queue = topology::dead_queue(pool);
        let mut out = Vec::new();
        while out.len() < max {
            let got = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }).await;
            match got {
                Ok(Some(m)) => {
                    let d = m.delivery;
                    out.push(Delivery {
                        reason: reason_of(&d.properties),
                        body: Bytes::from(d.data),
                        redelivered: d.redelivered,
                        acker: Acker::Amqp(d.acker),
                        _keep: Some(channel.clone()),
                    });
                }
                Ok(None) => break,
                // A pool never declared has no dead-letter queue: nothing to take.
                Err(_) if out.is_empty() && link.healthy() => break,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(out)
    }

    async fn consume(&self, pool: &str, prefetch: u16) -> Result<Box<dyn Consumer>> {
        let link = self.shared.current().await?;
        let channel = link.conn.create_channel().await.map_err(unavailable)?;
        channel.basic_qos(prefetch.max(1), BasicQosOptions::default()).await.map_err(unavailable)?;
        let inner = channel
            .basic_consume(
                topology::pool_queue(pool).as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        Ok(Box::new(AmqpConsumer {
            inner,
            channel: Arc::new(channel),
            link,
            shared: self.shared.clone(),
            no_ack: false,
            acks: Some(AckBatch::start()),
        }))
    }

    async fn open_notices(&self, instance: &str) -> Result<Box<dyn Consumer>> {
        let link = self.shared.current().await?;
        let channel = link.conn.create_channel().await.map_err(unavailable)?;
        let queue = topology::notice_queue(instance);
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let inner = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        Ok(Box::new(AmqpConsumer {
            inner,
            channel: Arc::new(channel),
            link,
            shared: self.shared.clone(),
            no_ack: true,
            acks: None,
        }))
    }

    async fn notify(&self, notice_queue: &str, body: Bytes) -> Result<()> {
        // Not mandatory and not confirmed: the waiter may be gone, and a lost notice only
        // delays it until its deadline. Nor is it held during an outage.
        let link = self.shared.link.borrow().clone();
        let Some(link) = link else { return Err(TransportError::Unavailable("reconnecting".into())) };
        link.notifier
            .basic_publish(
                "".into(),
                notice_queue.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn queue_stats(&self, pool: &str) -> Result<QueueStats> {
        let (messages, consumers) = passive(&self.shared, &topology::pool_queue(pool)).await?;
        Ok(QueueStats { messages, consumers })
    }

    async fn dead_count(&self, pool: &str) -> Result<u64> {
        Ok(passive(&self.shared, &topology::dead_queue(pool)).await?.0)
    }
}

/// Depth and consumers of a queue, or zeros when it does not exist.
async fn passive(shared: &Shared, queue: &str) -> Result<(u64, u32)> {
    let link = shared.current().await?;
    // A passive declare of a missing queue closes its channel, so use a throwaway one.
    let channel = link.conn.create_channel().await.map_err(unavailable)?;
    let q = channel
        .queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await;
    match q {
        Ok(q) => {
            let _ = channel.close(200, "done".into()).await;
            Ok((q.message_count() as u64, q.consumer_count()))
        }
        Err(_) if link.healthy() => Ok((0, 0)),
        Err(e) => Err(unavailable(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_list_is_split_on_commas_and_each_node_checked() {
        let urls = broker_urls(" amqp://a:5672/%2f , amqp://b:5673/%2f,").unwrap();
        assert_eq!(urls, ["amqp://a:5672/%2f", "amqp://b:5673/%2f"]);
        assert!(broker_urls("amqp://a/%2f,http://b").unwrap_err().contains("http://b is not an AMQP URL"));
        assert!(broker_urls(" , ").is_err());
    }

    #[test]
    fn names_spread_over_the_nodes() {
        let firsts: std::collections::HashSet<usize> = (0..30).map(|i| first_node(&format!("worker-{i}"), 3)).collect();
        assert_eq!(firsts.len(), 3, "{firsts:?}");
        assert_eq!(first_node("anything", 1), 0);
    }
}
