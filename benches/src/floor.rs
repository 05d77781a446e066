//! Rows 1b and 1c: the durable work Warren's semantics require, written by hand with lapin and
//! sqlx on the same broker and PostgreSQL, with no Warren code, no HTTP and no function: the
//! floor under row 2. Row 2 divided by these rows is what Warren itself costs.
//!
//! - **1b, outcome stored before the ack**: row 1's publisher; the consumer stores the outcome
//!   of every delivery at hand (up to 256) in one multi-row `INSERT` committed with
//!   `synchronous_commit` on, then acks them with one `basic.ack(multiple)`. Two commits may
//!   run at once; acks go out in delivery order.
//! - **1c, recorded before the publish, outcome stored before the ack**: as 1b, but the
//!   publisher first records each message (256 rows per `INSERT`, committed without waiting
//!   for the disk, as Warren's management records invocations: the broker holds the message
//!   durably), and the consumer's write is the guarded `UPDATE` of that record.
//!
//! Row 1c also runs with several consumers (`--floor-consumers`), each on a connection of its
//! own with its own commits, as several workers would: the same messages spread over more
//! consumers make smaller groups, and what that costs the broker and PostgreSQL on this machine
//! shows without any Warren code (the consumers share one process, so more processes to wake
//! is not in it).
//!
//! The table has only its primary key (Warren's `warren_invocations` has two more indexes, for
//! listing by function and by status).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::sync::watch;

use crate::broker::{connect, Confirms};

/// Deliveries stored per statement at most, records per insert, and the consumer's prefetch
/// (a group commit needs more than one statement's worth in flight).
const GROUP: usize = 256;
/// Outcome commits running at once.
const COMMITS_IN_FLIGHT: usize = 2;
/// Length of an id (a hyphenated UUID) at the start of each message.
const ID_LEN: usize = 36;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Floor {
    /// 1b: the outcome stored before the ack.
    StoreBeforeAck,
    /// 1c: recorded before the publish, and the outcome stored before the ack.
    RecordThenStore,
}

impl Floor {
    pub(crate) fn row(self) -> &'static str {
        match self {
            Floor::StoreBeforeAck => "1b",
            Floor::RecordThenStore => "1c",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Floor::StoreBeforeAck => "broker + outcome stored before ack (lapin + sqlx)",
            Floor::RecordThenStore => "broker + record + outcome before ack (lapin + sqlx)",
        }
    }

    /// The label, naming the consumers when there are several.
    pub(crate) fn label_with(self, consumers: usize) -> String {
        match consumers {
            1 => self.label().to_string(),
            c => format!("{}, {c} consumers", self.label()),
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Floor::StoreBeforeAck => "store_before_ack",
            Floor::RecordThenStore => "record_then_store",
        }
    }
}

pub(crate) struct FloorResult {
    pub floor: Floor,
    /// Consumers (each its own connection and commits) that shared the messages.
    pub consumers: usize,
    pub messages: u64,
    pub publish_secs: f64,
    pub end_to_end_secs: f64,
    /// Rows the consumer's statements stored (must equal `messages`).
    pub stored: u64,
    /// Statements the consumer ran (so `stored / statements` is the mean group).
    pub statements: u64,
    pub cpu: crate::measure::CpuUse,
}

impl FloorResult {
    pub(crate) fn end_to_end_rate(&self) -> f64 {
        self.messages as f64 / self.end_to_end_secs
    }
    pub(crate) fn publish_rate(&self) -> f64 {
        self.messages as f64 / self.publish_secs
    }
}

pub(crate) async fn run(
    amqp: &str,
    pg: &str,
    floor: Floor,
    consumers: usize,
    n: u64,
    body_bytes: usize,
    window: usize,
) -> Result<FloorResult> {
    let consumers = consumers.max(1);
    let db = PgPoolOptions::new()
        .max_connections((COMMITS_IN_FLIGHT * consumers) as u32 + 1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(pg)
        .await
        .with_context(|| format!("cannot open PostgreSQL at {pg}"))?;
    let table = format!("bench_floor_{}", uuid::Uuid::now_v7().simple());
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (id TEXT PRIMARY KEY, status TEXT NOT NULL, payload BYTEA NOT NULL, result BYTEA,
         created_ms BIGINT NOT NULL, finished_ms BIGINT)"
    ))
    .execute(&db)
    .await?;
    let run = Run { db: &db, table: &table, floor, consumers, n, body_bytes, window };
    let r = measure(amqp, &run).await;
    let _ = sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {table}")).execute(&db).await;
    db.close().await;
    r
}

/// One measurement: its table, kind and sizes.
#[derive(Clone, Copy)]
struct Run<'a> {
    db: &'a PgPool,
    table: &'a str,
    floor: Floor,
    consumers: usize,
    n: u64,
    body_bytes: usize,
    window: usize,
}

async fn measure(amqp: &str, run: &Run<'_>) -> Result<FloorResult> {
    let (floor, n) = (run.floor, run.n);
    let queue = format!("warren-bench.raw.{}", uuid::Uuid::now_v7().simple());
    let pub_conn = connect(amqp, "warren-bench-floor-publisher").await?;
    let pub_ch = pub_conn.create_channel().await?;
    pub_ch.confirm_select(ConfirmSelectOptions::default()).await?;
    pub_ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default()).await?;
    // Every consumer stops waiting for deliveries once all `n` are taken between them.
    let taken = Arc::new(AtomicU64::new(0));
    let (all_taken, _) = watch::channel(false);
    let all_taken = Arc::new(all_taken);
    let mut sub_conns = Vec::with_capacity(run.consumers);
    let mut tasks = Vec::with_capacity(run.consumers);
    for c in 0..run.consumers {
        let sub_conn = connect(amqp, &format!("warren-bench-floor-consumer-{c}")).await?;
        let sub_ch = sub_conn.create_channel().await?;
        sub_ch.basic_qos(GROUP as u16, BasicQosOptions::default()).await?;
        let consumer = sub_ch
            .basic_consume(
                queue.as_str().into(),
                format!("warren-bench-floor-{c}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let shared = Shared { n, taken: taken.clone(), all_taken: all_taken.clone() };
        tasks.push(tokio::spawn(consume(consumer, run.db.clone(), run.table.to_string(), floor, shared)));
        sub_conns.push(sub_conn);
    }

    let cpu_before = crate::measure::cpu_snap(0, &[]);
    let start = Instant::now();
    let published = publish(&pub_ch, &queue, run).await;
    let publish_secs = start.elapsed().as_secs_f64();
    let consumed = match published {
        Ok(()) => {
            let all = futures_util::future::join_all(tasks);
            match tokio::time::timeout(Duration::from_secs(120), all).await {
                Ok(done) => done
                    .into_iter()
                    .map(|j| j.context("a floor consumer task")?)
                    .collect::<Result<Vec<(Instant, u64, u64)>>>(),
                Err(_) => Err(anyhow::anyhow!("the consumers took over 120 s to store and ack every message")),
            }
        }
        Err(e) => {
            tasks.iter().for_each(|t| t.abort());
            Err(e)
        }
    };
    let cpu = crate::measure::cpu_use(&cpu_before, &crate::measure::cpu_snap(0, &[]));
    let _ = pub_ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    for c in &sub_conns {
        let _ = c.close(200, "done".into()).await;
    }
    let _ = pub_conn.close(200, "done".into()).await;
    let consumed = consumed?;
    let last = consumed.iter().map(|c| c.0).max().context("at least one consumer")?;
    let (stored, statements) = consumed.iter().fold((0, 0), |(s, st), c| (s + c.1, st + c.2));
    if stored != n {
        bail!("the consumers' statements stored {stored} rows for {n} messages");
    }
    Ok(FloorResult {
        floor,
        consumers: run.consumers,
        messages: n,
        publish_secs,
        end_to_end_secs: last.duration_since(start).as_secs_f64(),
        stored,
        statements,
        cpu,
    })
}

/// What the consumers of one measurement share: how many deliveries they have taken between
/// them, and the signal that all `n` are.
struct Shared {
    n: u64,
    taken: Arc<AtomicU64>,
    all_taken: Arc<watch::Sender<bool>>,
}

fn message_id(i: u64) -> String {
    // Unique, sortable, and as long as Warren's ids.
    format!("00000000-0000-7000-8000-{i:012}")
}

async fn publish(ch: &lapin::Channel, queue: &str, run: &Run<'_>) -> Result<()> {
    let Run { db, table, floor, n, body_bytes, window, .. } = *run;
    let record = format!(
        "INSERT INTO {table} (id, status, payload, created_ms)
         SELECT id, 'queued', payload, $3 FROM UNNEST($1::text[], $2::bytea[]) AS u(id, payload)"
    );
    let mut confirms = Confirms::new(ch, queue, window);
    let mut next = 0u64;
    while next < n {
        let chunk: Vec<(String, Vec<u8>)> = (next..n.min(next + GROUP as u64))
            .map(|i| {
                let id = message_id(i);
                let mut body = id.clone().into_bytes();
                body.resize(body_bytes.max(ID_LEN), b'x');
                (id, body)
            })
            .collect();
        next += chunk.len() as u64;
        if floor == Floor::RecordThenStore {
            let (ids, bodies): (Vec<String>, Vec<Vec<u8>>) = chunk.iter().cloned().unzip();
            let mut tx = db.begin().await?;
            sqlx::raw_sql("SET LOCAL synchronous_commit TO OFF").execute(&mut *tx).await?;
            sqlx::query(&record).bind(ids).bind(bodies).bind(warren_wire::time::now_ms()).execute(&mut *tx).await?;
            tx.commit().await?;
        }
        for (_, body) in &chunk {
            confirms.publish(body).await?;
        }
    }
    confirms.finish(n).await
}

/// Stores and acks its deliveries until all `n` are taken (by it and the other consumers);
/// returns the time of its last ack, the rows it stored and the statements it ran.
async fn consume(
    mut consumer: lapin::Consumer,
    db: PgPool,
    table: String,
    floor: Floor,
    shared: Shared,
) -> Result<(Instant, u64, u64)> {
    let sql = match floor {
        Floor::StoreBeforeAck => format!(
            "INSERT INTO {table} (id, status, payload, result, created_ms, finished_ms)
             SELECT id, 'succeeded', result, result, $3, $3 FROM UNNEST($1::text[], $2::bytea[]) AS u(id, result)
             ON CONFLICT (id) DO NOTHING"
        ),
        Floor::RecordThenStore => format!(
            "UPDATE {table} t SET status = 'succeeded', result = u.result, finished_ms = $3
             FROM UNNEST($1::text[], $2::bytea[]) AS u(id, result)
             WHERE t.id = u.id AND t.status = 'queued'"
        ),
    };
    let (mut stored, mut statements) = (0u64, 0u64);
    let mut all_taken = shared.all_taken.subscribe();
    let mut commits: VecDeque<tokio::task::JoinHandle<Result<(lapin::Acker, u64)>>> = VecDeque::new();
    let mut last = Instant::now();
    // Acks the oldest commit's deliveries once it is stored: acks go out in delivery order, so
    // a `multiple` ack never covers a delivery whose outcome is not stored yet.
    async fn settle(
        commits: &mut VecDeque<tokio::task::JoinHandle<Result<(lapin::Acker, u64)>>>,
        stored: &mut u64,
    ) -> Result<()> {
        if let Some(c) = commits.pop_front() {
            let (acker, rows) = c.await.context("a commit task")??;
            acker.ack(BasicAckOptions { multiple: true }).await?;
            *stored += rows;
        }
        Ok(())
    }
    while !*all_taken.borrow_and_update() {
        let next = tokio::select! {
            next = consumer.next() => next,
            _ = all_taken.changed() => continue,
        };
        let first = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(anyhow::Error::from(e).context("consumer failed")),
            None => bail!("a consumer was closed after {stored} stored messages"),
        };
        let mut group = vec![first];
        while group.len() < GROUP {
            match consumer.next().now_or_never() {
                Some(Some(Ok(d))) => group.push(d),
                _ => break,
            }
        }
        if shared.taken.fetch_add(group.len() as u64, Ordering::Relaxed) + group.len() as u64 >= shared.n {
            shared.all_taken.send_replace(true);
        }
        let ids: Vec<String> =
            group.iter().map(|d| String::from_utf8_lossy(&d.data[..ID_LEN.min(d.data.len())]).into_owned()).collect();
        let results: Vec<Vec<u8>> = group.iter().map(|d| d.data.clone()).collect();
        let acker = group.pop().map(|d| d.acker).context("a group has a delivery")?;
        if commits.len() >= COMMITS_IN_FLIGHT {
            settle(&mut commits, &mut stored).await?;
            last = Instant::now();
        }
        let (db, sql) = (db.clone(), sql.clone());
        statements += 1;
        commits.push_back(tokio::spawn(async move {
            let done = sqlx::query(&sql).bind(ids).bind(results).bind(warren_wire::time::now_ms()).execute(&db).await?;
            Ok((acker, done.rows_affected()))
        }));
    }
    while !commits.is_empty() {
        settle(&mut commits, &mut stored).await?;
        last = Instant::now();
    }
    Ok((last, stored, statements))
}
