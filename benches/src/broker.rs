//! Row 1: the raw broker ceiling, with lapin directly and no Warren code.
//!
//! N persistent messages (delivery_mode 2) are published with publisher confirms to a fresh
//! durable queue, keeping up to `confirm_window` confirms outstanding, on one connection; a
//! consumer on a second connection (prefetch `prefetch`, manual acks: one `basic.ack` with
//! `multiple` per `ack_every` deliveries, 1 = one ack per message) drains the queue at the
//! same time. End to end = first publish to last ack.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren_transport::QueueType;

pub(crate) struct RawResult {
    pub messages: u64,
    /// The consumer's prefetch and deliveries per (multiple) ack.
    pub prefetch: u16,
    pub ack_every: u16,
    pub body_bytes: usize,
    pub publish_secs: f64,
    pub end_to_end_secs: f64,
    pub cpu: crate::measure::CpuUse,
}

impl RawResult {
    pub(crate) fn end_to_end_rate(&self) -> f64 {
        self.messages as f64 / self.end_to_end_secs
    }
    pub(crate) fn publish_rate(&self) -> f64 {
        self.messages as f64 / self.publish_secs
    }
}

pub(crate) async fn connect(url: &str, name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(Duration::from_secs(15), Connection::connect(url, props))
        .await
        .map_err(|_| anyhow::anyhow!("RabbitMQ at {} did not answer within 15 s", redact(url)))?
        .with_context(|| format!("cannot connect to RabbitMQ at {} (is it running? `rabbitmqctl status`)", redact(url)))
}

pub(crate) fn redact(url: &str) -> String {
    warren_service::redact::redact_url(url)
}

/// Deletes the queues of Warren's default pool when they are empty and unused: every
/// management declares them at its start, and a queue left by a run with the other queue type
/// would stop the next one's management (row 7 runs both types on one cluster).
pub(crate) async fn clear_default_pool(url: &str) {
    let Ok(conn) = connect(first_node(url), "warren-bench-sweeper").await else { return };
    for q in [warren_wire::topology::pool_queue("default"), warren_wire::topology::dead_queue("default")] {
        // A refused delete closes its channel: one channel per queue.
        // (Quorum queues take no if-empty / if-unused delete: look first.)
        let Ok(ch) = conn.create_channel().await else { continue };
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let Ok(found) = ch.queue_declare(q.as_str().into(), passive, FieldTable::default()).await else { continue };
        if found.message_count() == 0
            && found.consumer_count() == 0
            && ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await.is_ok()
        {
            let _ = ch.close(200, "done".into()).await;
        }
    }
    let _ = conn.close(200, "done".into()).await;
}

/// A comma-separated list of URLs, each without its password.
pub(crate) fn redact_list(urls: &str) -> String {
    urls.split(',').map(|u| redact(u.trim())).collect::<Vec<_>>().join(",")
}

/// Persistent messages published to one queue with publisher confirms, at most `window`
/// of them unconfirmed at once.
pub(crate) struct Confirms<'a> {
    ch: &'a lapin::Channel,
    queue: &'a str,
    window: usize,
    props: BasicProperties,
    inflight: FuturesUnordered<lapin::PublisherConfirm>,
    nacked: u64,
}

impl<'a> Confirms<'a> {
    pub(crate) fn new(ch: &'a lapin::Channel, queue: &'a str, window: usize) -> Self {
        Confirms {
            ch,
            queue,
            window: window.max(1),
            props: BasicProperties::default().with_delivery_mode(2).with_content_type("application/msgpack".into()),
            inflight: FuturesUnordered::new(),
            nacked: 0,
        }
    }

    /// Publishes one message, first waiting for confirms while the window is full.
    pub(crate) async fn publish(&mut self, body: &[u8]) -> Result<()> {
        while self.inflight.len() >= self.window {
            if let Some(c) = self.inflight.next().await {
                if !c?.is_ack() {
                    self.nacked += 1;
                }
            }
        }
        let confirm = self
            .ch
            .basic_publish("".into(), self.queue.into(), BasicPublishOptions::default(), body, self.props.clone())
            .await?;
        self.inflight.push(confirm);
        Ok(())
    }

    /// Waits for every outstanding confirm; fails if the broker nacked any of the `n` sent.
    pub(crate) async fn finish(mut self, n: u64) -> Result<()> {
        while let Some(c) = self.inflight.next().await {
            if !c?.is_ack() {
                self.nacked += 1;
            }
        }
        if self.nacked > 0 {
            bail!("the broker nacked {} of {n} messages", self.nacked);
        }
        Ok(())
    }
}

/// The first node of a broker URL list (`--cluster` gives several, separated by commas).
pub(crate) fn first_node(urls: &str) -> &str {
    urls.split(',').next().unwrap_or(urls).trim()
}

/// Row 1 (and 7's ceilings): `url` is one node, or a cluster's nodes separated by commas (the
/// publisher then connects to the first, the consumer to the second, as Warren's roles spread
/// over the nodes); the queue is of type `queue_type`.
pub(crate) async fn run(
    url: &str,
    n: u64,
    body_bytes: usize,
    confirm_window: usize,
    prefetch: u16,
    ack_every: u16,
    queue_type: QueueType,
) -> Result<RawResult> {
    let ack_every = u64::from(ack_every.clamp(1, prefetch.max(1)));
    let queue = format!("warren-bench.raw.{}", uuid::Uuid::now_v7().simple());
    let nodes: Vec<&str> = url.split(',').map(str::trim).collect();
    let pub_conn = connect(nodes[0], "warren-bench-raw-publisher").await?;
    let sub_conn = connect(nodes[1 % nodes.len()], "warren-bench-raw-consumer").await?;

    let pub_ch = pub_conn.create_channel().await?;
    pub_ch.confirm_select(ConfirmSelectOptions::default()).await?;
    pub_ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), queue_type.arguments(None)).await?;

    let sub_ch = sub_conn.create_channel().await?;
    sub_ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = sub_ch
        .basic_consume(
            queue.as_str().into(),
            "warren-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let acked = Arc::new(AtomicU64::new(0));
    let acked2 = acked.clone();
    let consume = tokio::spawn(async move {
        let (mut last, mut taken, mut unacked) = (Instant::now(), 0u64, 0u64);
        while acked2.load(Ordering::Relaxed) < n {
            match consumer.next().await {
                Some(Ok(d)) => {
                    taken += 1;
                    unacked += 1;
                    if unacked >= ack_every || taken == n {
                        // Acks this delivery and every earlier one on the channel.
                        d.acker.ack(BasicAckOptions { multiple: ack_every > 1 }).await?;
                        acked2.fetch_add(unacked, Ordering::Relaxed);
                        unacked = 0;
                        last = Instant::now();
                    }
                }
                Some(Err(e)) => return Err(anyhow::Error::from(e).context("consumer failed")),
                None => bail!("the consumer was closed after {} messages", acked2.load(Ordering::Relaxed)),
            }
        }
        Ok::<Instant, anyhow::Error>(last)
    });

    let body = vec![b'x'; body_bytes];
    let cpu_before = crate::measure::cpu_snap(0, &[]);
    let start = Instant::now();
    let mut confirms = Confirms::new(&pub_ch, &queue, confirm_window);
    for _ in 0..n {
        confirms.publish(&body).await?;
    }
    confirms.finish(n).await?;
    let publish_secs = start.elapsed().as_secs_f64();

    let last_ack = match tokio::time::timeout(Duration::from_secs(120), consume).await {
        Ok(j) => j.context("consumer task")??,
        Err(_) => {
            bail!("the consumer took over 120 s to drain the queue ({} of {n} acked)", acked.load(Ordering::Relaxed))
        }
    };
    let end_to_end_secs = last_ack.duration_since(start).as_secs_f64();
    let cpu = crate::measure::cpu_use(&cpu_before, &crate::measure::cpu_snap(0, &[]));

    let _ = pub_ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = sub_conn.close(200, "done".into()).await;
    let _ = pub_conn.close(200, "done".into()).await;
    Ok(RawResult { messages: n, prefetch, ack_every: ack_every as u16, publish_secs, end_to_end_secs, body_bytes, cpu })
}

/// Deletes the queues earlier benchmark runs left behind when they were killed (names starting
/// `warren.pool.bench-`, `warren.dead.bench-` or `warren-bench.raw.`, without consumers). Needs
/// `rabbitmqctl` to list them, so only for a broker on this machine; returns how many went.
pub(crate) async fn sweep_stale(url: &str) -> usize {
    let local = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h == "127.0.0.1" || h == "localhost" || h == "::1"))
        .unwrap_or(false);
    if !local {
        return 0;
    }
    let listed = tokio::task::spawn_blocking(|| {
        crate::sysinfo::output("rabbitmqctl", &["-q", "list_queues", "name", "consumers"], Duration::from_secs(20))
    })
    .await
    .ok()
    .flatten();
    let Some(listed) = listed else { return 0 };
    let stale: Vec<String> = listed
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, consumers) = (f.next()?, f.next()?);
            let ours =
                ["warren.pool.bench-", "warren.dead.bench-", "warren-bench.raw."].iter().any(|p| name.starts_with(p));
            (ours && consumers == "0").then(|| name.to_string())
        })
        .collect();
    if stale.is_empty() {
        return 0;
    }
    let Ok(conn) = connect(url, "warren-bench-sweeper").await else { return 0 };
    let mut n = 0;
    for q in stale {
        // A failed delete closes its channel: one channel per queue.
        if let Ok(ch) = conn.create_channel().await {
            if ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await.is_ok() {
                n += 1;
                let _ = ch.close(200, "done".into()).await;
            }
        }
    }
    let _ = conn.close(200, "done".into()).await;
    n
}

/// The latency row's baseline: the broker's own round trip, as a sync invoke uses it, with
/// lapin directly and no Warren code, at the same offered rate.
#[derive(Debug, Clone)]
pub(crate) struct RoundTrip {
    pub offered_rate: f64,
    pub sent: u64,
    pub answered: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub cpu: crate::measure::CpuUse,
}

/// A client connection publishes persistent messages with confirms to a fresh durable queue
/// on a fixed schedule (a pacer thread, as in the latency row); a server connection consumes
/// them (prefetch 64, manual acks) and answers each with a transient message to the client's
/// exclusive reply queue, consumed without acks. Each latency runs from the request's
/// scheduled send to its answer's arrival: the two broker hops of a sync invoke, without the
/// HTTP, the function or the store.
pub(crate) async fn round_trip(url: &str, rate: f64, secs: f64, body_bytes: usize) -> Result<RoundTrip> {
    let queue = format!("warren-bench.raw.{}", uuid::Uuid::now_v7().simple());
    let reply = format!("warren-bench.raw.{}.reply", uuid::Uuid::now_v7().simple());
    let client = connect(url, "warren-bench-rtt-client").await?;
    let server = connect(url, "warren-bench-rtt-server").await?;

    let pub_ch = client.create_channel().await?;
    pub_ch.confirm_select(ConfirmSelectOptions::default()).await?;
    pub_ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default()).await?;
    let reply_ch = client.create_channel().await?;
    reply_ch
        .queue_declare(
            reply.as_str().into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let mut replies = reply_ch
        .basic_consume(
            reply.as_str().into(),
            "warren-bench-rtt".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;

    let srv_ch = server.create_channel().await?;
    srv_ch.basic_qos(64, BasicQosOptions::default()).await?;
    let mut requests = srv_ch
        .basic_consume(
            queue.as_str().into(),
            "warren-bench-rtt".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (srv_pub, reply_to) = (srv_ch.clone(), reply.clone());
    let serve = tokio::spawn(async move {
        while let Some(Ok(d)) = requests.next().await {
            let answered = srv_pub
                .basic_publish(
                    "".into(),
                    reply_to.as_str().into(),
                    BasicPublishOptions::default(),
                    &d.data,
                    BasicProperties::default(),
                )
                .await;
            if answered.is_err() || d.acker.ack(BasicAckOptions::default()).await.is_err() {
                break;
            }
        }
    });

    let total = (rate * secs).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let cpu_before = crate::measure::cpu_snap(0, &[]);
    // Replies carry the offset of their request's scheduled send from `start`.
    let collect = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(total as usize);
        let until = start + Duration::from_secs_f64(secs) + Duration::from_secs(10);
        while (lat.len() as u64) < total {
            let Ok(Some(Ok(d))) = tokio::time::timeout_at(until.into(), replies.next()).await else { break };
            if let Some(at) = d.data.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) {
                lat.push(start.elapsed().as_secs_f64() * 1000.0 - at as f64 / 1e6);
            }
        }
        lat
    });
    let runtime = tokio::runtime::Handle::current();
    let (ch, q) = (pub_ch.clone(), queue.clone());
    let pacer = std::thread::Builder::new().name("bench-rtt-pacer".into()).spawn(move || {
        let props = BasicProperties::default().with_delivery_mode(2);
        for i in 0..total {
            let offset = interval.mul_f64(i as f64);
            if let Some(wait) = (start + offset).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let mut body = (offset.as_nanos() as u64).to_le_bytes().to_vec();
            body.resize(body_bytes.max(8), b'x');
            let (ch, q, props) = (ch.clone(), q.clone(), props.clone());
            runtime.spawn(async move {
                if let Ok(confirm) =
                    ch.basic_publish("".into(), q.as_str().into(), BasicPublishOptions::default(), &body, props).await
                {
                    let _ = confirm.await;
                }
            });
        }
    })?;
    tokio::task::spawn_blocking(move || pacer.join())
        .await
        .context("the round-trip pacer thread")?
        .map_err(|_| anyhow::anyhow!("the round-trip pacer thread panicked"))?;
    let mut lat = collect.await.context("the round-trip collector")?;
    let cpu = crate::measure::cpu_use(&cpu_before, &crate::measure::cpu_snap(0, &[]));
    serve.abort();
    let _ = pub_ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = server.close(200, "done".into()).await;
    let _ = client.close(200, "done".into()).await;
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| crate::measure::percentile(&lat, p);
    Ok(RoundTrip {
        offered_rate: rate,
        sent: total,
        answered: lat.len() as u64,
        p50_ms: pct(50.0),
        p90_ms: pct(90.0),
        p99_ms: pct(99.0),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        cpu,
    })
}
