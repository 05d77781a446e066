//! PostgreSQL and SQLite backends, through sqlx's `Any` driver.
//!
//! The two share every statement: both accept `$N` placeholders (numbered in order of first
//! use), `ON CONFLICT` upserts and the same column types once spelled per backend in
//! [`schema`]. What differs is the connection setup and how migrations are serialised
//! (an advisory lock on PostgreSQL, `BEGIN IMMEDIATE` on SQLite).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use uuid::Uuid;

use warren_wire::manifest::Manifest;
use warren_wire::time::now_ms;

use crate::interface::Store;
use crate::model::*;

/// Every PostgreSQL connection plans each statement for the table as it is now. Statements
/// are prepared once per connection (sqlx caches them), and after five executions PostgreSQL
/// may switch a prepared statement to a generic plan that it then keeps until the table's
/// statistics change. A generic plan made while `warren_invocations` was nearly empty (a new
/// install, or any server where autovacuum, hence autoanalyze, is off) is a sequential scan,
/// kept as the table grows: measured here, the worker's batched claim took 1.9 ms at 20,000
/// rows and 74 ms at 200,000 (a seq scan per statement), against 0.1 ms by the primary key.
/// Re-planning costs tens of microseconds per statement; parsing stays cached.
const CUSTOM_PLANS: &str = "SET plan_cache_mode = force_custom_plan";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Postgres,
    Sqlite,
}

pub struct SqlxStore {
    pool: AnyPool,
    /// Connections whose commits do not wait for the disk (`synchronous_commit = off`, on
    /// PostgreSQL; the main pool on SQLite), for writes whose loss in a database crash costs
    /// nothing: claims (the message is still unacked, so it comes back and is claimed
    /// again) and heartbeats. A later durable commit flushes them anyway (the log is sequential).
    relaxed: AnyPool,
    kind: Kind,
    /// The management instance whose `queued` records this handle creates (see
    /// [`Store::set_origin`]).
    origin: std::sync::RwLock<Option<std::sync::Arc<str>>>,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The schema: numbered steps, each run once (its number recorded in `warren_schema`). Step N of
/// the comments is recorded as N - 1. The runner applies every step whose number is not
/// recorded yet, in order, so numbers may leave gaps (step 4 belongs to another branch).
fn schema(kind: Kind) -> Vec<(i32, String)> {
    let blob = if kind == Kind::Postgres { "BYTEA" } else { "BLOB" };
    vec![
        (
            0,
            format!(
                "CREATE TABLE IF NOT EXISTS warren_functions (
            name TEXT PRIMARY KEY,
            active_version BIGINT NOT NULL,
            created_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS warren_versions (
            name TEXT NOT NULL,
            version BIGINT NOT NULL,
            sha256 TEXT NOT NULL,
            manifest TEXT NOT NULL,
            package {blob} NOT NULL,
            size BIGINT NOT NULL,
            created_ms BIGINT NOT NULL,
            PRIMARY KEY (name, version));
        CREATE TABLE IF NOT EXISTS warren_invocations (
            id TEXT PRIMARY KEY,
            function TEXT NOT NULL,
            version BIGINT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            payload {blob} NOT NULL,
            result {blob},
            error TEXT,
            worker TEXT,
            created_ms BIGINT NOT NULL,
            started_ms BIGINT,
            finished_ms BIGINT);
        CREATE INDEX IF NOT EXISTS warren_invocations_function ON warren_invocations (function, created_ms);
        CREATE INDEX IF NOT EXISTS warren_invocations_status ON warren_invocations (status, created_ms);
        CREATE TABLE IF NOT EXISTS warren_logs (
            invocation TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            ts_ms BIGINT NOT NULL,
            line TEXT NOT NULL,
            PRIMARY KEY (invocation, attempt, seq));
        CREATE TABLE IF NOT EXISTS warren_workers (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pools TEXT NOT NULL,
            concurrency INTEGER NOT NULL,
            in_flight INTEGER NOT NULL,
            version TEXT NOT NULL,
            started_ms BIGINT NOT NULL,
            last_seen_ms BIGINT NOT NULL,
            state TEXT NOT NULL);"
            ),
        ),
        // Step 2: one record per ended attempt (retries).
        (
            1,
            "CREATE TABLE IF NOT EXISTS warren_attempts (
            invocation TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            worker TEXT NOT NULL,
            finished_ms BIGINT NOT NULL,
            PRIMARY KEY (invocation, attempt));"
                .to_string(),
        ),
        // Step 3: per-function settings (environment variables; secrets sealed).
        (
            2,
            "CREATE TABLE IF NOT EXISTS warren_settings (
            function TEXT NOT NULL,
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            secret INTEGER NOT NULL,
            updated_ms BIGINT NOT NULL,
            PRIMARY KEY (function, name));"
                .to_string(),
        ),
        // Step 4: batches (items are invocations with a batch id), timer ticks, output deliveries.
        (
            3,
            "ALTER TABLE warren_invocations ADD COLUMN batch TEXT;
        CREATE INDEX IF NOT EXISTS warren_invocations_batch_status ON warren_invocations (batch, status)
            WHERE batch IS NOT NULL;
        CREATE INDEX IF NOT EXISTS warren_invocations_batch_id ON warren_invocations (batch, id)
            WHERE batch IS NOT NULL;
        CREATE TABLE IF NOT EXISTS warren_batches (
            id TEXT PRIMARY KEY,
            function TEXT NOT NULL,
            version BIGINT NOT NULL,
            then_function TEXT,
            total BIGINT NOT NULL,
            state TEXT NOT NULL,
            followup TEXT,
            error TEXT,
            created_ms BIGINT NOT NULL,
            finished_ms BIGINT);
        CREATE INDEX IF NOT EXISTS warren_batches_state ON warren_batches (state);
        CREATE TABLE IF NOT EXISTS warren_ticks (
            function TEXT NOT NULL,
            tick_ms BIGINT NOT NULL,
            invocation TEXT NOT NULL,
            PRIMARY KEY (function, tick_ms));
        CREATE TABLE IF NOT EXISTS warren_deliveries (
            invocation TEXT NOT NULL,
            output INTEGER NOT NULL,
            target TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            last_error TEXT,
            next_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL,
            PRIMARY KEY (invocation, output));
        CREATE INDEX IF NOT EXISTS warren_deliveries_due ON warren_deliveries (status, next_ms);"
                .to_string(),
        ),
        // Step 5: API keys, stored as the sha256 of the key (never the key).
        (
            4,
            "CREATE TABLE IF NOT EXISTS warren_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            level TEXT NOT NULL,
            function TEXT,
            hash TEXT NOT NULL UNIQUE,
            created_ms BIGINT NOT NULL,
            revoked_ms BIGINT);"
                .to_string(),
        ),
        // Step 6: which management instance recorded an invocation or batch `queued`, and each
        // instance's lease, so that what a stopped instance left unpublished is settled.
        (
            5,
            "ALTER TABLE warren_invocations ADD COLUMN origin TEXT;
        ALTER TABLE warren_batches ADD COLUMN origin TEXT;
        CREATE TABLE IF NOT EXISTS warren_instances (
            id TEXT PRIMARY KEY,
            seen_ms BIGINT NOT NULL,
            settled_ms BIGINT NOT NULL);"
                .to_string(),
        ),
        // Step 7: each lease's own length (instances may be started with different ones).
        (6, "ALTER TABLE warren_instances ADD COLUMN lease_ms BIGINT NOT NULL DEFAULT 60000;".to_string()),
    ]
}

const VERSION_COLUMNS: &str = "name, version, sha256, manifest, size, created_ms";
const INVOCATION_COLUMNS: &str =
    "id, function, version, status, attempts, payload, result, error, worker, created_ms, started_ms, finished_ms";
const BATCH_COLUMNS: &str =
    "id, function, version, then_function, total, state, followup, error, created_ms, finished_ms";
const DELIVERY_COLUMNS: &str = "invocation, output, target, status, attempts, last_error, next_ms, updated_ms";
const KEY_COLUMNS: &str = "id, name, level, function, hash, created_ms, revoked_ms";
const WORKER_COLUMNS: &str = "id, host, pools, concurrency, in_flight, version, started_ms, last_seen_ms, state";

fn version_from(r: &AnyRow) -> Result<FunctionVersion> {
    Ok(FunctionVersion {
        name: r.try_get(0).map_err(unavailable)?,
        version: r.try_get(1).map_err(unavailable)?,
        sha256: r.try_get(2).map_err(unavailable)?,
        manifest: r.try_get(3).map_err(unavailable)?,
        size: r.try_get(4).map_err(unavailable)?,
        created_ms: r.try_get(5).map_err(unavailable)?,
    })
}

fn function_from(r: &AnyRow) -> Result<FunctionInfo> {
    Ok(FunctionInfo {
        name: r.try_get(0).map_err(unavailable)?,
        active_version: r.try_get(1).map_err(unavailable)?,
        created_ms: r.try_get(2).map_err(unavailable)?,
        updated_ms: r.try_get(3).map_err(unavailable)?,
    })
}

fn invocation_from(r: &AnyRow) -> Result<Invocation> {
    let id: String = r.try_get(0).map_err(unavailable)?;
    let status: String = r.try_get(3).map_err(unavailable)?;
    Ok(Invocation {
        id: parse_uuid(&id)?,
        function: r.try_get(1).map_err(unavailable)?,
        version: r.try_get(2).map_err(unavailable)?,
        status: parse_status(&status)?,
        attempts: r.try_get(4).map_err(unavailable)?,
        payload: r.try_get(5).map_err(unavailable)?,
        result: r.try_get(6).map_err(unavailable)?,
        error: r.try_get(7).map_err(unavailable)?,
        worker: r.try_get(8).map_err(unavailable)?,
        created_ms: r.try_get(9).map_err(unavailable)?,
        started_ms: r.try_get(10).map_err(unavailable)?,
        finished_ms: r.try_get(11).map_err(unavailable)?,
    })
}

fn batch_from(r: &AnyRow) -> Result<Batch> {
    let id: String = r.try_get(0).map_err(unavailable)?;
    let followup: Option<String> = r.try_get(6).map_err(unavailable)?;
    Ok(Batch {
        id: parse_uuid(&id)?,
        function: r.try_get(1).map_err(unavailable)?,
        version: r.try_get(2).map_err(unavailable)?,
        then: r.try_get(3).map_err(unavailable)?,
        total: r.try_get(4).map_err(unavailable)?,
        state: r.try_get(5).map_err(unavailable)?,
        followup_invocation: followup.as_deref().map(parse_uuid).transpose()?,
        error: r.try_get(7).map_err(unavailable)?,
        created_ms: r.try_get(8).map_err(unavailable)?,
        finished_ms: r.try_get(9).map_err(unavailable)?,
        counts: Default::default(),
    })
}

fn delivery_from(r: &AnyRow) -> Result<DeliveryRecord> {
    let id: String = r.try_get(0).map_err(unavailable)?;
    Ok(DeliveryRecord {
        invocation: parse_uuid(&id)?,
        output: r.try_get(1).map_err(unavailable)?,
        target: r.try_get(2).map_err(unavailable)?,
        status: r.try_get(3).map_err(unavailable)?,
        attempts: r.try_get(4).map_err(unavailable)?,
        last_error: r.try_get(5).map_err(unavailable)?,
        next_ms: r.try_get(6).map_err(unavailable)?,
        updated_ms: r.try_get(7).map_err(unavailable)?,
    })
}

/// Records an invocation that has no record yet as `running` (a claim, or an outcome that
/// brings its record): $1 id, $2 function, $3 version, $4 attempt, $5 payload, $6 worker,
/// $7 created_ms, $8 started_ms.
const INSERT_RUNNING: &str =
    "INSERT INTO warren_invocations (id, function, version, status, attempts, payload, worker, created_ms, started_ms)
     VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING";

/// `Store::complete`'s guarded update, in `end_attempt`'s parameters.
const COMPLETE: &str =
    "UPDATE warren_invocations SET status = $1, attempts = $2, result = $3, error = $4, worker = $5, finished_ms = $6,
       started_ms = COALESCE($8, started_ms), version = COALESCE($9, version)
     WHERE id = $7 AND (status IN ('queued', 'running') OR (status = 'failed' AND attempts = 0)) AND attempts <= $2";

const INSERT_INVOCATION: &str =
    "INSERT INTO warren_invocations (id, function, version, status, attempts, payload, created_ms, origin)
     VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6)";

fn key_from(r: &AnyRow) -> Result<ApiKey> {
    let id: String = r.try_get(0).map_err(unavailable)?;
    let level: String = r.try_get(2).map_err(unavailable)?;
    Ok(ApiKey {
        id: parse_uuid(&id)?,
        name: r.try_get(1).map_err(unavailable)?,
        level: parse_key_level(&level)?,
        function: r.try_get(3).map_err(unavailable)?,
        hash: r.try_get(4).map_err(unavailable)?,
        created_ms: r.try_get(5).map_err(unavailable)?,
        revoked_ms: r.try_get(6).map_err(unavailable)?,
    })
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds a new invocation's five own columns: id, function, version, payload, created_ms.
fn bind_new<'q>(q: AnyQuery<'q>, inv: &'q NewInvocation) -> AnyQuery<'q> {
    q.bind(inv.id.to_string()).bind(&inv.function).bind(inv.version).bind(inv.payload.clone()).bind(inv.created_ms)
}

/// Binds `INSERT_INVOCATION`'s six parameters: the five of [`bind_new`], then the origin.
fn bind_invocation<'q>(q: AnyQuery<'q>, inv: &'q NewInvocation, origin: Option<&str>) -> AnyQuery<'q> {
    bind_new(q, inv).bind(origin.map(str::to_string))
}

/// Binds an attempt's end in `end_attempt`'s parameter order ($1..$9): status, attempt,
/// result, error, worker, finished_ms, id, started_ms, version.
fn bind_end<'q>(
    q: AnyQuery<'q>,
    status: Status,
    attempt: i32,
    result: Option<Vec<u8>>,
    o: &Outcome,
    id: &str,
) -> AnyQuery<'q> {
    q.bind(status.as_str())
        .bind(attempt)
        .bind(result)
        .bind(o.error.clone())
        .bind(o.worker.clone())
        .bind(o.finished_ms)
        .bind(id.to_string())
        .bind(o.started_ms)
        .bind(o.version)
}

/// The statements of `end_attempt` inside a transaction the caller ends: the record if the
/// outcome brings one and it is missing, the guarded `update`, then (only if it touched the
/// invocation) a retried attempt's record, the log lines and a final outcome's deliveries.
/// `false` when the update touched nothing: nothing was written then.
async fn end_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    id: &str,
    o: &Outcome,
    update: &str,
    status: Status,
    attempt: i32,
) -> Result<bool> {
    let result = if status.is_final() { o.result.clone() } else { None };
    let bind = |q| bind_end(q, status, attempt, result.clone(), o, id);
    if let Some(inv) = &o.record {
        // No record yet (a synchronous invoke): made now, then ended like any other.
        sqlx::query(INSERT_RUNNING)
            .bind(id)
            .bind(&inv.function)
            .bind(inv.version)
            .bind(attempt)
            .bind(inv.payload.clone())
            .bind(&o.worker)
            .bind(inv.created_ms)
            .bind(o.started_ms)
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
    }
    let updated = bind(sqlx::query(update)).execute(&mut **tx).await.map_err(unavailable)?;
    if updated.rows_affected() == 0 {
        return Ok(false);
    }
    if !status.is_final() {
        sqlx::query(
            "INSERT INTO warren_attempts (invocation, attempt, status, error, worker, finished_ms)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(attempt)
        .bind(o.status.as_str())
        .bind(o.error.clone())
        .bind(&o.worker)
        .bind(o.finished_ms)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    }
    let lines: Vec<(&str, &LogLine)> = o.logs.iter().map(|l| (id, l)).collect();
    insert_logs(tx, &lines).await?;
    if status.is_final() {
        insert_deliveries(tx, id, o).await?;
    }
    Ok(true)
}

/// Log lines (of one or many invocations) in multi-row inserts, in chunks that stay under
/// SQLite's parameter limit.
async fn insert_logs(tx: &mut sqlx::Transaction<'static, sqlx::Any>, lines: &[(&str, &LogLine)]) -> Result<()> {
    for chunk in lines.chunks(200) {
        let sql = format!(
            "INSERT INTO warren_logs (invocation, attempt, seq, ts_ms, line) VALUES {} ON CONFLICT DO NOTHING",
            value_rows(1, chunk.len(), &["?", "?", "?", "?", "?"])
        );
        let mut q = sqlx::query(&sql);
        for (id, l) in chunk {
            q = q.bind(id.to_string()).bind(l.attempt).bind(l.seq).bind(l.ts_ms).bind(l.line.clone());
        }
        q.execute(&mut **tx).await.map_err(unavailable)?;
    }
    Ok(())
}

/// A final outcome's forwards, `pending` (a replayed invocation's new outcome is forwarded
/// again).
async fn insert_deliveries(tx: &mut sqlx::Transaction<'static, sqlx::Any>, id: &str, o: &Outcome) -> Result<()> {
    for d in &o.deliveries {
        sqlx::query(
            "INSERT INTO warren_deliveries (invocation, output, target, status, attempts, next_ms, updated_ms)
             VALUES ($1, $2, $3, 'pending', 0, $4, $4)
             ON CONFLICT (invocation, output) DO UPDATE SET status = 'pending', attempts = 0,
               last_error = NULL, target = excluded.target, next_ms = excluded.next_ms,
               updated_ms = excluded.updated_ms",
        )
        .bind(id)
        .bind(d.output)
        .bind(&d.target)
        .bind(o.finished_ms)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    }
    Ok(())
}

/// Ends a transaction whose guard statement decided whether `inv` is to be recorded: records
/// it and commits when `won`, rolls back otherwise. Returns `won`.
async fn record_if(
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    won: bool,
    inv: &NewInvocation,
    origin: Option<&str>,
) -> Result<bool> {
    if !won {
        tx.rollback().await.map_err(unavailable)?;
        return Ok(false);
    }
    bind_invocation(sqlx::query(INSERT_INVOCATION), inv, origin).execute(&mut *tx).await.map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    Ok(true)
}

/// Ends the submission of the batches still `submitting` (of `origin`, or all): `running`, with
/// the items recorded as their total and `error` (unless they have one). How many.
async fn seal_submitting(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    origin: Option<&str>,
    error: &str,
) -> Result<u64> {
    let sql = format!(
        "UPDATE warren_batches SET state = 'running', error = COALESCE(error, $1),
           total = (SELECT COUNT(*) FROM warren_invocations i WHERE i.batch = warren_batches.id)
         WHERE state = 'submitting'{}",
        if origin.is_some() { " AND origin = $2" } else { "" }
    );
    let mut q = sqlx::query(&sql).bind(error);
    if let Some(o) = origin {
        q = q.bind(o);
    }
    Ok(q.execute(&mut **tx).await.map_err(unavailable)?.rows_affected())
}

/// `rows` tuples for a multi-row `VALUES`, one item per column template: a `?` in a template
/// becomes the next numbered parameter, counting from `$first` (`"?::text"` casts it; a template
/// without `?` is a literal). `value_rows(1, 2, &["?", "'queued'", "?::int8"])` is
/// `($1, 'queued', $2::int8), ($3, 'queued', $4::int8)`.
fn value_rows(first: usize, rows: usize, cols: &[&str]) -> String {
    let mut sql = String::with_capacity(rows * cols.len() * 10);
    let mut n = first;
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for (c, t) in cols.iter().enumerate() {
            if c > 0 {
                sql.push_str(", ");
            }
            match t.split_once('?') {
                Some((before, after)) => {
                    sql.push_str(&format!("{before}${n}{after}"));
                    n += 1;
                }
                None => sql.push_str(t),
            }
        }
        sql.push(')');
    }
    sql
}

/// Rows of a multi-row statement on PostgreSQL: `n` rounded up to a power of two, the rest
/// filled with rows of id `''` that match nothing. Each size is then one of a few statement
/// texts, which stay in each connection's prepared-statement cache instead of being parsed and
/// planned again for every new batch size.
fn padded(n: usize) -> usize {
    n.next_power_of_two()
}

/// The ids a statement's rows return in their first column.
fn returned_ids(rows: &[AnyRow]) -> Result<std::collections::HashSet<String>> {
    rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>().map_err(unavailable)
}

fn worker_from(r: &AnyRow) -> Result<WorkerInfo> {
    Ok(WorkerInfo {
        id: r.try_get(0).map_err(unavailable)?,
        host: r.try_get(1).map_err(unavailable)?,
        pools: r.try_get(2).map_err(unavailable)?,
        concurrency: r.try_get(3).map_err(unavailable)?,
        in_flight: r.try_get(4).map_err(unavailable)?,
        version: r.try_get(5).map_err(unavailable)?,
        started_ms: r.try_get(6).map_err(unavailable)?,
        last_seen_ms: r.try_get(7).map_err(unavailable)?,
        state: r.try_get(8).map_err(unavailable)?,
    })
}

impl SqlxStore {
    /// Opens (creating a SQLite file if needed) and migrates.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("sqlite:") { Kind::Sqlite } else { Kind::Postgres };
        let (url, max) = match kind {
            Kind::Sqlite => {
                let mut u = url.to_string();
                if !u.contains("mode=") {
                    u.push_str(if u.contains('?') { "&mode=rwc" } else { "?mode=rwc" });
                }
                // SQLite takes one writer at a time; a few connections serve readers.
                (u, 4)
            }
            Kind::Postgres => (url.to_string(), 8),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    match kind {
                        // WAL lets readers run beside the writer; FULL makes each commit durable
                        // before a worker acks its message.
                        Kind::Sqlite => {
                            conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;")
                                .await?;
                        }
                        Kind::Postgres => {
                            conn.execute(CUSTOM_PLANS).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot open the {} store at {}: {e}",
                    if kind == Kind::Sqlite { "SQLite" } else { "PostgreSQL" },
                    warren_service::redact::redact_url(&url)
                ))
            })?;
        // On SQLite a second pool would be a second writer contending for the one write lock
        // (measured: the worker drain rate halved), so claims share the main pool there.
        let relaxed = if kind == Kind::Sqlite {
            pool.clone()
        } else {
            // The worker's claim group commit runs up to 4 statements at once; one more
            // connection keeps heartbeats from queueing behind them.
            AnyPoolOptions::new()
                .max_connections(5)
                .acquire_timeout(Duration::from_secs(10))
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        let setup = match kind {
                            Kind::Sqlite => {
                                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;"
                            }
                            Kind::Postgres => "SET synchronous_commit = off",
                        };
                        conn.execute(setup).await?;
                        if kind == Kind::Postgres {
                            conn.execute(CUSTOM_PLANS).await?;
                        }
                        Ok(())
                    })
                })
                .connect_lazy(&url)
                .map_err(unavailable)?
        };
        let store = SqlxStore { pool, relaxed, kind, origin: Default::default() };
        store.migrate().await?;
        Ok(store)
    }

    /// A write transaction. SQLite's must take the write lock at once (`BEGIN IMMEDIATE`):
    /// a deferred one that reads first and writes later fails with "database is locked"
    /// instead of waiting when another writer got there in between.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        match self.kind {
            Kind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(unavailable),
            Kind::Postgres => self.pool.begin().await.map_err(unavailable),
        }
    }

    /// The store's clock in milliseconds since the epoch, as SQL.
    fn clock_ms(&self) -> &'static str {
        match self.kind {
            Kind::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            Kind::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        }
    }

    fn origin(&self) -> Option<std::sync::Arc<str>> {
        self.origin.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Inserts `invs` as `queued` in one commit; per entry, whether it was recorded (`false`
    /// where the id existed, or came earlier in `invs`).
    async fn insert_invocations(&self, invs: &[NewInvocation]) -> Result<Vec<bool>> {
        let mut recorded = std::collections::HashSet::new();
        let origin = self.origin();
        // One commit for all: a transaction only when they take more than one statement.
        let chunks: Vec<&[NewInvocation]> = invs.chunks(256).collect();
        let mut tx = if chunks.len() > 1 { Some(self.begin().await?) } else { None };
        for chunk in chunks {
            let (sql, rows) = match self.kind {
                Kind::Postgres => (
                    format!(
                        "INSERT INTO warren_invocations (id, function, version, status, attempts, payload, created_ms, origin)
                         SELECT id, function, version, 'queued', 0, payload, created_ms, $1::text
                         FROM (VALUES {}) AS v (id, function, version, payload, created_ms) WHERE v.id <> ''
                         ON CONFLICT (id) DO NOTHING RETURNING id",
                        // Numbered after $1, the origin.
                        value_rows(2, padded(chunk.len()), &["?::text", "?::text", "?::int8", "?::bytea", "?::int8"])
                    ),
                    padded(chunk.len()),
                ),
                Kind::Sqlite => (
                    format!(
                        "INSERT INTO warren_invocations (id, function, version, status, attempts, payload, created_ms, origin)
                         VALUES {} ON CONFLICT (id) DO NOTHING RETURNING id",
                        value_rows(2, chunk.len(), &["?", "?", "?", "'queued'", "0", "?", "?", "$1"])
                    ),
                    chunk.len(),
                ),
            };
            let mut q = sqlx::query(&sql).bind(origin.as_deref().map(str::to_string));
            for inv in chunk {
                q = bind_new(q, inv);
            }
            for _ in chunk.len()..rows {
                q = q.bind("").bind("").bind(0i64).bind(Vec::<u8>::new()).bind(0i64);
            }
            let rows = match tx.as_mut() {
                Some(tx) => q.fetch_all(&mut **tx).await,
                None => q.fetch_all(&self.pool).await,
            };
            recorded.extend(returned_ids(&rows.map_err(unavailable)?)?);
        }
        if let Some(tx) = tx {
            tx.commit().await.map_err(unavailable)?;
        }
        // A second entry of one id is not recorded again: only the first answers `true`.
        let mut seen = std::collections::HashSet::new();
        Ok(invs.iter().map(|inv| recorded.contains(&inv.id.to_string()) && seen.insert(inv.id)).collect())
    }

    /// Ends one attempt: `update` (which must touch the invocation only if it is not final and
    /// not past `attempt`; parameters $1..$9 = status, attempt, result, error, worker,
    /// finished_ms, id, started_ms, version) and, if it did, the attempt's log lines and, for an
    /// attempt that is retried, its attempt record, in one transaction. A final attempt's record
    /// is the invocation's own row (`list_attempts` reads it from there): one row written
    /// per invocation instead of two.
    async fn end_attempt(&self, id: Uuid, o: &Outcome, update: &str, status: Status, attempt: i32) -> Result<bool> {
        let id = id.to_string();
        let result = if status.is_final() { o.result.clone() } else { None };
        let bind = |q| bind_end(q, status, attempt, result.clone(), o, &id);
        if self.kind == Kind::Postgres
            && o.record.is_some()
            && status.is_final()
            && o.logs.is_empty()
            && o.deliveries.is_empty()
        {
            let won = self.upsert_outcomes(None, &[(&id, o)]).await?;
            return Ok(!won.is_empty());
        }
        if o.record.is_none() && o.logs.is_empty() && (o.deliveries.is_empty() || !status.is_final()) {
            // One statement, so no transaction round trips. A retried attempt's record is
            // inserted only if the update touched the invocation (a data-modifying CTE on
            // PostgreSQL; SQLite, with one writer, takes the statement and the insert in one
            // transaction below).
            if status.is_final() {
                let done = bind(sqlx::query(update)).execute(&self.pool).await.map_err(unavailable)?;
                return Ok(done.rows_affected() == 1);
            }
            if self.kind == Kind::Postgres {
                let sql = format!(
                    "WITH u AS ({update} RETURNING id)
                     INSERT INTO warren_attempts (invocation, attempt, status, error, worker, finished_ms)
                     SELECT id, $2, $10, $4, $5, $6 FROM u"
                );
                let done =
                    bind(sqlx::query(&sql)).bind(o.status.as_str()).execute(&self.pool).await.map_err(unavailable)?;
                return Ok(done.rows_affected() == 1);
            }
        }
        let mut tx = self.begin().await?;
        let won = end_in(&mut tx, &id, o, update, status, attempt).await?;
        if won {
            tx.commit().await.map_err(unavailable)?;
        } else {
            tx.rollback().await.map_err(unavailable)?;
        }
        Ok(won)
    }

    /// `complete` for each item in turn, all in one transaction; one answer per item.
    async fn complete_in_one(&self, items: Vec<&(Uuid, Outcome)>) -> Result<Vec<bool>> {
        let mut tx = self.begin().await?;
        let mut won = Vec::with_capacity(items.len());
        for (id, o) in items {
            won.push(end_in(&mut tx, &id.to_string(), o, COMPLETE, o.status, o.attempt).await?);
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(won)
    }

    /// PostgreSQL: stores final outcomes (without log lines or deliveries) that bring their
    /// record, in one statement: the record is inserted with its outcome when it is missing,
    /// and otherwise updated under `complete`'s guard (open, and not past this attempt).
    /// Returns the ids stored. Ids must be distinct.
    async fn upsert_outcomes(
        &self,
        tx: Option<&mut sqlx::Transaction<'static, sqlx::Any>>,
        items: &[(&String, &Outcome)],
    ) -> Result<std::collections::HashSet<String>> {
        let rows = padded(items.len());
        let sql = format!(
            "INSERT INTO warren_invocations AS i (id, function, version, status, attempts, payload, result, error,
               worker, created_ms, started_ms, finished_ms)
             SELECT id, function, version, status, attempt, payload, result, error, worker, created_ms, started_ms,
               finished_ms
             FROM (VALUES {}) AS v (id, function, version, status, attempt, payload, result, error, worker, created_ms,
               started_ms, finished_ms)
             WHERE v.id <> ''
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, attempts = excluded.attempts,
               result = excluded.result, error = excluded.error, worker = excluded.worker,
               finished_ms = excluded.finished_ms, started_ms = COALESCE(excluded.started_ms, i.started_ms),
               version = excluded.version
             WHERE (i.status IN ('queued', 'running') OR (i.status = 'failed' AND i.attempts = 0)) AND i.attempts <= excluded.attempts
             RETURNING id",
            value_rows(
                1,
                rows,
                &[
                    "?::text", "?::text", "?::int8", "?::text", "?::int4", "?::bytea", "?::bytea", "?::text",
                    "?::text", "?::int8", "?::int8", "?::int8",
                ],
            )
        );
        let mut q = sqlx::query(&sql);
        for (id, o) in items {
            let inv = o.record.as_ref().expect("upserted outcomes bring their record");
            q = q
                .bind(id.to_string())
                .bind(inv.function.clone())
                .bind(o.version.unwrap_or(inv.version))
                .bind(o.status.as_str())
                .bind(o.attempt)
                .bind(inv.payload.clone())
                .bind(o.result.clone())
                .bind(o.error.clone())
                .bind(o.worker.clone())
                .bind(inv.created_ms)
                .bind(o.started_ms)
                .bind(o.finished_ms);
        }
        for _ in items.len()..rows {
            q = q
                .bind("")
                .bind("")
                .bind(0i64)
                .bind("")
                .bind(0i32)
                .bind(Vec::<u8>::new())
                .bind(None::<Vec<u8>>)
                .bind(None::<String>)
                .bind("")
                .bind(0i64)
                .bind(None::<i64>)
                .bind(0i64);
        }
        let rows = match tx {
            Some(tx) => q.fetch_all(&mut **tx).await,
            None => q.fetch_all(&self.pool).await,
        };
        returned_ids(&rows.map_err(unavailable)?)
    }

    async fn batch_counts(&self, b: &mut Batch) -> Result<()> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM warren_invocations WHERE batch = $1 GROUP BY status")
            .bind(b.id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        b.counts = Status::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
        for r in rows {
            let status: String = r.try_get(0).map_err(unavailable)?;
            b.counts.insert(status, r.try_get(1).map_err(unavailable)?);
        }
        Ok(())
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        // Serialise concurrent starts (several workers booting at once).
        match self.kind {
            Kind::Postgres => {
                conn.execute("SELECT pg_advisory_lock(7460113)").await.map_err(unavailable)?;
            }
            Kind::Sqlite => {
                conn.execute("BEGIN IMMEDIATE").await.map_err(unavailable)?;
            }
        }
        let result = async {
            conn.execute(
                "CREATE TABLE IF NOT EXISTS warren_schema (step INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)",
            )
            .await
            .map_err(unavailable)?;
            let done: std::collections::HashSet<i32> = sqlx::query("SELECT step FROM warren_schema")
                .fetch_all(&mut *conn)
                .await
                .map_err(unavailable)?
                .iter()
                .map(|r| r.try_get::<i32, _>(0))
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            for (n, step) in schema(self.kind).iter().filter(|(n, _)| !done.contains(n)) {
                conn.execute(step.as_str()).await.map_err(unavailable)?;
                sqlx::query("INSERT INTO warren_schema (step, applied_ms) VALUES ($1, $2)")
                    .bind(*n)
                    .bind(now_ms())
                    .execute(&mut *conn)
                    .await
                    .map_err(unavailable)?;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        let end = match (self.kind, result.is_ok()) {
            (Kind::Postgres, _) => "SELECT pg_advisory_unlock(7460113)",
            (Kind::Sqlite, true) => "COMMIT",
            (Kind::Sqlite, false) => "ROLLBACK",
        };
        conn.execute(end).await.map_err(unavailable)?;
        result
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[async_trait]
impl Store for SqlxStore {
    fn backend(&self) -> &'static str {
        match self.kind {
            Kind::Postgres => "postgres",
            Kind::Sqlite => "sqlite",
        }
    }

    async fn publish_version(
        &self,
        manifest: &Manifest,
        manifest_text: &str,
        package: &[u8],
        sha256: &str,
    ) -> Result<FunctionVersion> {
        // Two publishers of one function may pick the same number; the primary key refuses
        // the second, which then tries again with the next number.
        for _ in 0..5 {
            let mut tx = self.begin().await?;
            let next: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 FROM warren_versions WHERE name = $1")
                .bind(&manifest.name)
                .fetch_one(&mut *tx)
                .await
                .and_then(|r| r.try_get::<i64, _>(0))
                .map_err(unavailable)?;
            let now = now_ms();
            let inserted = sqlx::query(
                "INSERT INTO warren_versions (name, version, sha256, manifest, package, size, created_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&manifest.name)
            .bind(next)
            .bind(sha256)
            .bind(manifest_text)
            .bind(package.to_vec())
            .bind(package.len() as i64)
            .bind(now)
            .execute(&mut *tx)
            .await;
            match inserted {
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(unavailable(e)),
                Ok(_) => {}
            }
            sqlx::query(
                "INSERT INTO warren_functions (name, active_version, created_ms, updated_ms) VALUES ($1, $2, $3, $3)
                 ON CONFLICT (name) DO UPDATE SET active_version = excluded.active_version, updated_ms = excluded.updated_ms",
            )
            .bind(&manifest.name)
            .bind(next)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            match tx.commit().await {
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(unavailable(e)),
                Ok(()) => {}
            }
            return Ok(FunctionVersion {
                name: manifest.name.clone(),
                version: next,
                sha256: sha256.to_string(),
                manifest: manifest_text.to_string(),
                size: package.len() as i64,
                created_ms: now,
            });
        }
        Err(StoreError::Conflict(format!(
            "function {} is being published concurrently by others; try again",
            manifest.name
        )))
    }

    async fn list_functions(&self) -> Result<Vec<FunctionInfo>> {
        let rows =
            sqlx::query("SELECT name, active_version, created_ms, updated_ms FROM warren_functions ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        rows.iter().map(function_from).collect()
    }

    async fn get_function(&self, name: &str) -> Result<Option<FunctionInfo>> {
        let row =
            sqlx::query("SELECT name, active_version, created_ms, updated_ms FROM warren_functions WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        row.as_ref().map(function_from).transpose()
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<FunctionVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM warren_versions WHERE name = $1 ORDER BY version DESC"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(version_from).collect()
    }

    async fn get_version(&self, name: &str, version: i64) -> Result<Option<FunctionVersion>> {
        let row =
            sqlx::query(&format!("SELECT {VERSION_COLUMNS} FROM warren_versions WHERE name = $1 AND version = $2"))
                .bind(name)
                .bind(version)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        row.as_ref().map(version_from).transpose()
    }

    async fn get_package(&self, name: &str, version: i64) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT package FROM warren_versions WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| r.try_get(0).map_err(unavailable)).transpose()
    }

    async fn create_invocation(&self, inv: &NewInvocation) -> Result<()> {
        let origin = self.origin();
        bind_invocation(sqlx::query(INSERT_INVOCATION), inv, origin.as_deref()).execute(&self.pool).await.map_err(
            |e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("invocation {} exists already", inv.id))
                } else {
                    unavailable(e)
                }
            },
        )?;
        Ok(())
    }

    async fn claim(&self, inv: &NewInvocation, attempt: i32, worker: &str, started_ms: i64) -> Result<Claim> {
        let id = inv.id.to_string();
        let updated = sqlx::query(
            "UPDATE warren_invocations SET status = 'running', attempts = $1, worker = $2, started_ms = $3, version = $4
             WHERE id = $5 AND (status IN ('queued', 'running') OR (status = 'failed' AND attempts = 0)) AND attempts <= $1",
        )
        .bind(attempt)
        .bind(worker)
        .bind(started_ms)
        .bind(inv.version)
        .bind(&id)
        .execute(&self.relaxed)
        .await
        .map_err(unavailable)?;
        if updated.rows_affected() == 1 {
            return Ok(Claim::Run);
        }
        // Final, superseded, or never recorded: insert unless present.
        let inserted = sqlx::query(INSERT_RUNNING)
            .bind(&id)
            .bind(&inv.function)
            .bind(inv.version)
            .bind(attempt)
            .bind(inv.payload.clone())
            .bind(worker)
            .bind(inv.created_ms)
            .bind(started_ms)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        if inserted.rows_affected() == 1 {
            return Ok(Claim::Run);
        }
        let row = sqlx::query("SELECT status, attempts FROM warren_invocations WHERE id = $1")
            .bind(&id)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        let status = parse_status(&row.try_get::<String, _>(0).map_err(unavailable)?)?;
        let attempts: i32 = row.try_get(1).map_err(unavailable)?;
        Ok(claim_verdict(status, attempts, attempt))
    }

    async fn create_invocations(&self, invs: &[NewInvocation]) -> Vec<Result<bool>> {
        // One statement (or one transaction) for all: every entry shares its fate.
        match self.insert_invocations(invs).await {
            Ok(answers) => answers.into_iter().map(Ok).collect(),
            Err(e) => invs.iter().map(|_| Err(e.again())).collect(),
        }
    }

    async fn claim_many(&self, items: &[(&NewInvocation, i32)], worker: &str, started_ms: i64) -> Result<Vec<Claim>> {
        // The common case in one statement: every invocation still queued (or running after a
        // channel break) and not moved past this attempt. The rest go one by one after.
        let mut claimed = std::collections::HashSet::new();
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<usize> = (0..items.len()).filter(|&i| seen.insert(items[i].0.id)).collect();
        if self.kind == Kind::Postgres {
            for chunk in unique.chunks(256) {
                let sql = format!(
                    "UPDATE warren_invocations i SET status = 'running', attempts = v.attempt, worker = $1,
                       started_ms = $2, version = v.version
                     FROM (VALUES {}) AS v (id, attempt, version)
                     WHERE i.id = v.id AND (i.status IN ('queued', 'running') OR (i.status = 'failed' AND i.attempts = 0)) AND i.attempts <= v.attempt
                     RETURNING i.id",
                    // Numbered after $1 and $2.
                    value_rows(3, padded(chunk.len()), &["?::text", "?::int4", "?::int8"])
                );
                let mut q = sqlx::query(&sql).bind(worker).bind(started_ms);
                for &i in chunk {
                    let (inv, attempt) = items[i];
                    q = q.bind(inv.id.to_string()).bind(attempt).bind(inv.version);
                }
                for _ in chunk.len()..padded(chunk.len()) {
                    q = q.bind("").bind(0i32).bind(0i64);
                }
                claimed.extend(returned_ids(&q.fetch_all(&self.relaxed).await.map_err(unavailable)?)?);
            }
        }
        let mut out = Vec::with_capacity(items.len());
        for (n, (inv, attempt)) in items.iter().enumerate() {
            let first = unique.binary_search(&n).is_ok();
            out.push(if first && claimed.contains(&inv.id.to_string()) {
                Claim::Run
            } else {
                self.claim(inv, *attempt, worker, started_ms).await?
            });
        }
        Ok(out)
    }

    async fn complete(&self, id: Uuid, o: &Outcome) -> Result<bool> {
        self.end_attempt(id, o, COMPLETE, o.status, o.attempt).await
    }

    async fn complete_many(&self, items: &[(Uuid, Outcome)]) -> Result<Vec<bool>> {
        if self.kind != Kind::Postgres {
            // SQLite has one writer: the outcomes one after the other, in one transaction (one
            // commit, so one wait for the disk, for all of them). A second outcome of one
            // invocation then finds the first stored.
            return self.complete_in_one(items.iter().collect()).await;
        }
        // Every outcome in one guarded statement (one for those that bring their record, one
        // for the others), then the log lines of those stored in multi-row inserts and their
        // deliveries: one commit. A second outcome of one invocation goes after, one by one:
        // it then finds the first stored. Without log lines, deliveries or repeats it is a
        // single statement, so no transaction.
        let mut out = vec![false; items.len()];
        let mut seen = std::collections::HashSet::new();
        let (firsts, repeats): (Vec<usize>, Vec<usize>) = (0..items.len()).partition(|&i| seen.insert(items[i].0));
        let extra = |i: &usize| !items[*i].1.logs.is_empty() || !items[*i].1.deliveries.is_empty();
        let (with_record, plain): (Vec<usize>, Vec<usize>) =
            firsts.iter().copied().partition(|&i| items[i].1.record.is_some());
        let mut tx =
            if !repeats.is_empty() || firsts.iter().any(extra) || (!with_record.is_empty() && !plain.is_empty()) {
                Some(self.begin().await?)
            } else {
                None
            };
        let ids: Vec<String> = items.iter().map(|(id, _)| id.to_string()).collect();
        for chunk in with_record.chunks(256) {
            let entries: Vec<(&String, &Outcome)> = chunk.iter().map(|&i| (&ids[i], &items[i].1)).collect();
            let won = self.upsert_outcomes(tx.as_mut(), &entries).await?;
            for &i in chunk {
                out[i] = won.contains(&ids[i]);
            }
        }
        for chunk in plain.chunks(256) {
            let sql = format!(
                "UPDATE warren_invocations i SET status = v.status, attempts = v.attempt, result = v.result,
                   error = v.error, worker = v.worker, finished_ms = v.finished_ms,
                   started_ms = COALESCE(v.started_ms, i.started_ms), version = COALESCE(v.version, i.version)
                 FROM (VALUES {}) AS v (id, status, attempt, result, error, worker, finished_ms, started_ms, version)
                 WHERE i.id = v.id AND (i.status IN ('queued', 'running') OR (i.status = 'failed' AND i.attempts = 0)) AND i.attempts <= v.attempt
                 RETURNING i.id",
                value_rows(
                    1,
                    padded(chunk.len()),
                    &[
                        "?::text", "?::text", "?::int4", "?::bytea", "?::text", "?::text", "?::int8", "?::int8",
                        "?::int8"
                    ],
                )
            );
            let mut q = sqlx::query(&sql);
            for &i in chunk {
                let (_, o) = &items[i];
                q = q
                    .bind(ids[i].clone())
                    .bind(o.status.as_str())
                    .bind(o.attempt)
                    .bind(o.result.clone())
                    .bind(o.error.clone())
                    .bind(&o.worker)
                    .bind(o.finished_ms)
                    .bind(o.started_ms)
                    .bind(o.version);
            }
            for _ in chunk.len()..padded(chunk.len()) {
                q = q
                    .bind("")
                    .bind("")
                    .bind(0i32)
                    .bind(None::<Vec<u8>>)
                    .bind(None::<String>)
                    .bind("")
                    .bind(0i64)
                    .bind(None::<i64>)
                    .bind(None::<i64>);
            }
            let rows = match tx.as_mut() {
                Some(tx) => q.fetch_all(&mut **tx).await,
                None => q.fetch_all(&self.pool).await,
            };
            let won = returned_ids(&rows.map_err(unavailable)?)?;
            for &i in chunk {
                out[i] = won.contains(&ids[i]);
            }
        }
        if let Some(mut tx) = tx {
            let stored: Vec<usize> = firsts.iter().copied().filter(|&i| out[i]).collect();
            let lines: Vec<(&str, &LogLine)> = stored
                .iter()
                .flat_map(|&i| {
                    let id = ids[i].as_str();
                    items[i].1.logs.iter().map(move |l| (id, l))
                })
                .collect();
            insert_logs(&mut tx, &lines).await?;
            for &i in &stored {
                insert_deliveries(&mut tx, &ids[i], &items[i].1).await?;
            }
            for &i in &repeats {
                out[i] = end_in(&mut tx, &ids[i], &items[i].1, COMPLETE, items[i].1.status, items[i].1.attempt).await?;
            }
            tx.commit().await.map_err(unavailable)?;
        }
        Ok(out)
    }

    async fn retry_later(&self, id: Uuid, o: &Outcome) -> Result<bool> {
        // The next attempt's number goes in at once: a stale copy of this attempt's message is
        // then recognised (Claim::Superseded) instead of running beside the retry.
        self.end_attempt(
            id,
            o,
            "UPDATE warren_invocations SET status = $1, attempts = $2 + 1, result = $3, error = $4, worker = $5,
               finished_ms = $6, started_ms = COALESCE($8, started_ms), version = COALESCE($9, version)
             WHERE id = $7 AND (status IN ('queued', 'running') OR (status = 'failed' AND attempts = 0)) AND attempts <= $2",
            Status::Queued,
            o.attempt,
        )
        .await
    }

    async fn replay(&self, id: Uuid) -> Result<Option<i32>> {
        let Some(inv) = self.get_invocation(id).await? else { return Ok(None) };
        if inv.status != Status::Dead {
            return Ok(None);
        }
        let next = inv.attempts + 1;
        let mut tx = self.begin().await?;
        // The dead attempt's record lives in the invocation's row, which the next attempt
        // overwrites: it moves to warren_attempts first.
        sqlx::query(
            "INSERT INTO warren_attempts (invocation, attempt, status, error, worker, finished_ms)
             SELECT id, attempts, status, error, COALESCE(worker, ''), finished_ms FROM warren_invocations
             WHERE id = $1 AND status = 'dead' AND attempts = $2 AND finished_ms IS NOT NULL
             ON CONFLICT DO NOTHING",
        )
        .bind(id.to_string())
        .bind(inv.attempts)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let updated = sqlx::query(
            "UPDATE warren_invocations SET status = 'queued', attempts = $1, finished_ms = NULL
             WHERE id = $2 AND status = 'dead' AND attempts = $3",
        )
        .bind(next)
        .bind(id.to_string())
        .bind(inv.attempts)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if updated.rows_affected() != 1 {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(None);
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(next))
    }

    async fn get_invocation(&self, id: Uuid) -> Result<Option<Invocation>> {
        let row = sqlx::query(&format!("SELECT {INVOCATION_COLUMNS} FROM warren_invocations WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(invocation_from).transpose()
    }

    async fn list_invocations(&self, f: &InvocationFilter) -> Result<Vec<Invocation>> {
        let mut sql = format!("SELECT {INVOCATION_COLUMNS} FROM warren_invocations WHERE 1 = 1");
        let mut n = 0;
        if f.function.is_some() {
            n += 1;
            sql.push_str(&format!(" AND function = ${n}"));
        }
        if f.status.is_some() {
            n += 1;
            sql.push_str(&format!(" AND status = ${n}"));
        }
        sql.push_str(&format!(" ORDER BY created_ms DESC, id DESC LIMIT ${}", n + 1));
        let mut q = sqlx::query(&sql);
        if let Some(func) = &f.function {
            q = q.bind(func);
        }
        if let Some(st) = f.status {
            q = q.bind(st.as_str());
        }
        let rows = q.bind(f.limit.clamp(1, 10_000) as i64).fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(invocation_from).collect()
    }

    async fn list_attempts(&self, id: Uuid) -> Result<Vec<AttemptRecord>> {
        // The retried attempts' records, and the last attempt's, which is the invocation's own
        // row once it is final (a database written by an older build may hold it in both).
        let rows = sqlx::query(
            "SELECT attempt, status, error, worker, finished_ms FROM warren_attempts WHERE invocation = $1
             UNION ALL
             SELECT attempts, status, error, COALESCE(worker, ''), finished_ms FROM warren_invocations i
             WHERE id = $1 AND status IN ('succeeded', 'failed', 'timed_out', 'dead') AND finished_ms IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM warren_attempts a WHERE a.invocation = i.id AND a.attempt = i.attempts)
             ORDER BY 1",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRecord {
                    attempt: r.try_get(0).map_err(unavailable)?,
                    status: parse_status(&r.try_get::<String, _>(1).map_err(unavailable)?)?,
                    error: r.try_get(2).map_err(unavailable)?,
                    worker: r.try_get(3).map_err(unavailable)?,
                    finished_ms: r.try_get(4).map_err(unavailable)?,
                })
            })
            .collect()
    }

    async fn get_logs(&self, id: Uuid) -> Result<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT attempt, seq, ts_ms, line FROM warren_logs WHERE invocation = $1 ORDER BY attempt, seq",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(LogLine {
                    attempt: r.try_get(0).map_err(unavailable)?,
                    seq: r.try_get(1).map_err(unavailable)?,
                    ts_ms: r.try_get(2).map_err(unavailable)?,
                    line: r.try_get(3).map_err(unavailable)?,
                })
            })
            .collect()
    }

    async fn set_setting(&self, function: &str, s: &Setting) -> Result<()> {
        sqlx::query(
            "INSERT INTO warren_settings (function, name, value, secret, updated_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (function, name) DO UPDATE SET value = excluded.value, secret = excluded.secret,
               updated_ms = excluded.updated_ms",
        )
        .bind(function)
        .bind(&s.name)
        .bind(&s.value)
        .bind(s.secret as i32)
        .bind(s.updated_ms)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn delete_setting(&self, function: &str, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM warren_settings WHERE function = $1 AND name = $2")
            .bind(function)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(r.rows_affected() == 1)
    }

    async fn list_settings(&self, function: &str) -> Result<Vec<Setting>> {
        let rows = sqlx::query(
            "SELECT name, value, secret, updated_ms FROM warren_settings WHERE function = $1 ORDER BY name",
        )
        .bind(function)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(Setting {
                    name: r.try_get(0).map_err(unavailable)?,
                    value: r.try_get(1).map_err(unavailable)?,
                    secret: r.try_get::<i32, _>(2).map_err(unavailable)? != 0,
                    updated_ms: r.try_get(3).map_err(unavailable)?,
                })
            })
            .collect()
    }

    async fn heartbeat(&self, w: &WorkerInfo) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO warren_workers ({WORKER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET host = excluded.host, pools = excluded.pools,
               concurrency = excluded.concurrency, in_flight = excluded.in_flight, version = excluded.version,
               last_seen_ms = excluded.last_seen_ms, state = excluded.state"
        ))
        .bind(&w.id)
        .bind(&w.host)
        .bind(&w.pools)
        .bind(w.concurrency)
        .bind(w.in_flight)
        .bind(&w.version)
        .bind(w.started_ms)
        .bind(w.last_seen_ms)
        .bind(&w.state)
        .execute(&self.relaxed)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    fn set_origin(&self, instance: &str) {
        *self.origin.write().unwrap_or_else(|p| p.into_inner()) = Some(instance.into());
    }

    async fn instance_alive(&self, instance: &str, settled_ms: i64, lease_ms: i64) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO warren_instances (id, seen_ms, settled_ms, lease_ms) VALUES ($1, {}, $2, $3)
             ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms, settled_ms = excluded.settled_ms,
               lease_ms = excluded.lease_ms",
            self.clock_ms()
        ))
        .bind(instance)
        .bind(settled_ms)
        .bind(lease_ms)
        .execute(&self.relaxed)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn lapsed_instances(&self) -> Result<Vec<(String, i64)>> {
        let sql = format!(
            "SELECT id, settled_ms FROM warren_instances WHERE seen_ms + lease_ms < {} ORDER BY id",
            self.clock_ms()
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(|r| Ok((r.try_get(0).map_err(unavailable)?, r.try_get(1).map_err(unavailable)?))).collect()
    }

    async fn settle_lapsed(&self, instance: &str, since_ms: i64, now_ms: i64, why: &Settled) -> Result<(u64, u64)> {
        let mut tx = self.begin().await?;
        // Still lapsed (not renewed since it was listed), and dropped: one settler does it.
        let sql = format!("DELETE FROM warren_instances WHERE id = $1 AND seen_ms + lease_ms < {}", self.clock_ms());
        let dropped = sqlx::query(&sql).bind(instance).execute(&mut *tx).await.map_err(unavailable)?.rows_affected();
        if dropped == 0 {
            tx.rollback().await.map_err(unavailable)?;
            return Ok((0, 0));
        }
        let invocations = sqlx::query(
            "UPDATE warren_invocations SET status = 'failed', error = $1, finished_ms = $2
             WHERE status = 'queued' AND attempts = 0 AND created_ms >= $3 AND origin = $4",
        )
        .bind(&why.invocation)
        .bind(now_ms)
        .bind(since_ms)
        .bind(instance)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        let batches = seal_submitting(&mut tx, Some(instance), &why.batch).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok((invocations, batches))
    }

    async fn abandon_unfinished(&self, now_ms: i64, why: &Settled) -> Result<(u64, u64)> {
        let mut tx = self.begin().await?;
        let invocations = sqlx::query(
            "UPDATE warren_invocations SET status = 'failed', error = $1, finished_ms = $2
             WHERE status IN ('queued', 'running')",
        )
        .bind(&why.invocation)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        let batches = seal_submitting(&mut tx, None, &why.batch).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok((invocations, batches))
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        let rows = sqlx::query(&format!("SELECT {WORKER_COLUMNS} FROM warren_workers ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(worker_from).collect()
    }

    async fn create_batch(&self, b: &NewBatch) -> Result<()> {
        sqlx::query(
            "INSERT INTO warren_batches (id, function, version, then_function, total, state, created_ms, origin)
             VALUES ($1, $2, $3, $4, 0, 'submitting', $5, $6)",
        )
        .bind(b.id.to_string())
        .bind(&b.function)
        .bind(b.version)
        .bind(b.then.clone())
        .bind(b.created_ms)
        .bind(self.origin().map(|o| o.to_string()))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn batch_state(&self, batch: Uuid) -> Result<Option<String>> {
        sqlx::query("SELECT state FROM warren_batches WHERE id = $1")
            .bind(batch.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(unavailable)
    }

    async fn add_batch_items(&self, batch: Uuid, items: &[NewInvocation]) -> Result<()> {
        let batch = batch.to_string();
        // All or nothing: a half-recorded chunk would hold the batch open forever.
        let origin = self.origin();
        let mut tx = self.begin().await?;
        // 5 parameters a row after the batch and the origin: chunks stay under SQLite's
        // parameter limit.
        for chunk in items.chunks(150) {
            let sql = format!(
                "INSERT INTO warren_invocations (id, function, version, status, attempts, payload, created_ms, batch, origin) VALUES {}",
                value_rows(3, chunk.len(), &["?", "?", "?", "'queued'", "0", "?", "?", "$1", "$2"])
            );
            let mut q = sqlx::query(&sql).bind(&batch).bind(origin.as_deref().map(str::to_string));
            for inv in chunk {
                q = bind_new(q, inv);
            }
            q.execute(&mut *tx).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(())
    }

    async fn seal_batch(&self, batch: Uuid, total: i64, error: Option<&str>) -> Result<()> {
        sqlx::query(
            "UPDATE warren_batches SET total = $1, error = $2,
               state = CASE WHEN state = 'submitting' THEN 'running' ELSE state END
             WHERE id = $3",
        )
        .bind(total)
        .bind(error.map(str::to_string))
        .bind(batch.to_string())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn get_batch(&self, batch: Uuid) -> Result<Option<Batch>> {
        let row = sqlx::query(&format!("SELECT {BATCH_COLUMNS} FROM warren_batches WHERE id = $1"))
            .bind(batch.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let mut b = batch_from(&row)?;
        self.batch_counts(&mut b).await?;
        Ok(Some(b))
    }

    async fn list_batches(&self, limit: u32) -> Result<Vec<Batch>> {
        let rows = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM warren_batches ORDER BY created_ms DESC, id DESC LIMIT $1"
        ))
        .bind(limit.clamp(1, 1000) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut b = batch_from(r)?;
            self.batch_counts(&mut b).await?;
            out.push(b);
        }
        Ok(out)
    }

    async fn open_batches(&self) -> Result<Vec<Batch>> {
        let rows = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM warren_batches
             WHERE state IN ('running', 'finishing') OR (state = 'cancelled' AND finished_ms IS NULL)"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(batch_from).collect()
    }

    async fn batch_unfinished(&self, batch: Uuid) -> Result<i64> {
        sqlx::query("SELECT COUNT(*) FROM warren_invocations WHERE batch = $1 AND status IN ('queued', 'running')")
            .bind(batch.to_string())
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get::<i64, _>(0))
            .map_err(unavailable)
    }

    async fn batch_has_unfinished(&self, batch: Uuid) -> Result<bool> {
        // The first unfinished item found ends the scan of the (batch, status) index.
        let found = sqlx::query(
            "SELECT 1 FROM warren_invocations WHERE batch = $1 AND status IN ('queued', 'running') LIMIT 1",
        )
        .bind(batch.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(found.is_some())
    }

    async fn cancel_batch(&self, batch: Uuid, now_ms: i64) -> Result<Option<u64>> {
        let id = batch.to_string();
        let mut tx = self.begin().await?;
        let state: Option<String> = sqlx::query("SELECT state FROM warren_batches WHERE id = $1")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(unavailable)?;
        match state.as_deref() {
            None => return Ok(None),
            Some("done") | Some("finishing") => {
                return Err(StoreError::Conflict(format!("batch {batch} has finished already; nothing to cancel")))
            }
            _ => {}
        }
        sqlx::query(
            "UPDATE warren_batches SET state = 'cancelled' WHERE id = $1 AND state IN ('submitting', 'running')",
        )
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let n = sqlx::query(
            "UPDATE warren_invocations SET status = 'cancelled', finished_ms = $1,
               error = 'not run: its batch was cancelled'
             WHERE batch = $2 AND status = 'queued'",
        )
        .bind(now_ms)
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(n))
    }

    async fn batch_results(&self, batch: Uuid, after: Option<Uuid>, limit: u32) -> Result<Vec<ItemResult>> {
        let rows = sqlx::query(
            "SELECT id, status, result, error FROM warren_invocations WHERE batch = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(batch.to_string())
        .bind(after.map(|a| a.to_string()).unwrap_or_default())
        .bind(limit.clamp(1, 100_000) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(ItemResult {
                    id: parse_uuid(&r.try_get::<String, _>(0).map_err(unavailable)?)?,
                    status: parse_status(&r.try_get::<String, _>(1).map_err(unavailable)?)?,
                    result: r.try_get(2).map_err(unavailable)?,
                    error: r.try_get(3).map_err(unavailable)?,
                })
            })
            .collect()
    }

    async fn begin_fanin(&self, batch: Uuid, f: &NewInvocation) -> Result<bool> {
        let mut tx = self.begin().await?;
        let won = sqlx::query(
            "UPDATE warren_batches SET state = 'finishing', followup = $1 WHERE id = $2 AND state = 'running'",
        )
        .bind(f.id.to_string())
        .bind(batch.to_string())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected()
            == 1;
        // Not tagged: a `finishing` batch's follow-up is republished by the fan-in sweep.
        record_if(tx, won, f, None).await
    }

    async fn end_batch(&self, batch: Uuid, state: &str, finished_ms: i64) -> Result<()> {
        sqlx::query("UPDATE warren_batches SET state = $1, finished_ms = $2 WHERE id = $3")
            .bind(state)
            .bind(finished_ms)
            .bind(batch.to_string())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn fire_tick(&self, function: &str, tick_ms: i64, inv: &NewInvocation) -> Result<bool> {
        let mut tx = self.begin().await?;
        let fired = sqlx::query(
            "INSERT INTO warren_ticks (function, tick_ms, invocation) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(function)
        .bind(tick_ms)
        .bind(inv.id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected()
            == 1;
        record_if(tx, fired, inv, self.origin().as_deref()).await
    }

    async fn last_tick(&self, function: &str) -> Result<Option<i64>> {
        sqlx::query("SELECT MAX(tick_ms) FROM warren_ticks WHERE function = $1")
            .bind(function)
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get::<Option<i64>, _>(0))
            .map_err(unavailable)
    }

    async fn take_deliveries(&self, now_ms: i64, lease_ms: i64, limit: u32) -> Result<Vec<DeliveryRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM warren_deliveries WHERE status = 'pending' AND next_ms <= $1
             ORDER BY next_ms LIMIT $2"
        ))
        .bind(now_ms)
        .bind(limit.clamp(1, 1000) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut out = Vec::new();
        for r in &rows {
            let mut d = delivery_from(r)?;
            // Compare-and-set on next_ms: of several instances, one takes it.
            let leased = sqlx::query(
                "UPDATE warren_deliveries SET next_ms = $1
                 WHERE invocation = $2 AND output = $3 AND status = 'pending' AND next_ms = $4",
            )
            .bind(now_ms + lease_ms)
            .bind(d.invocation.to_string())
            .bind(d.output)
            .bind(d.next_ms)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?
            .rows_affected()
                == 1;
            if leased {
                d.next_ms = now_ms + lease_ms;
                out.push(d);
            }
        }
        Ok(out)
    }

    async fn record_delivery(
        &self,
        invocation: Uuid,
        output: i32,
        status: &str,
        attempts: i32,
        error: Option<&str>,
        next_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE warren_deliveries SET status = $1, attempts = $2, last_error = $3, next_ms = $4, updated_ms = $5
             WHERE invocation = $6 AND output = $7",
        )
        .bind(status)
        .bind(attempts)
        .bind(error.map(str::to_string))
        .bind(next_ms)
        .bind(now_ms())
        .bind(invocation.to_string())
        .bind(output)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn list_deliveries(&self, invocation: Uuid) -> Result<Vec<DeliveryRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM warren_deliveries WHERE invocation = $1 ORDER BY output"
        ))
        .bind(invocation.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(delivery_from).collect()
    }

    async fn retry_deliveries(&self, invocation: Uuid, now_ms: i64) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE warren_deliveries SET status = 'pending', attempts = 0, next_ms = $1, updated_ms = $1
             WHERE invocation = $2 AND status = 'failed'",
        )
        .bind(now_ms)
        .bind(invocation.to_string())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(r.rows_affected())
    }

    async fn count_per_minute(&self, since_ms: i64, until_ms: i64) -> Result<Vec<MinuteCount>> {
        // Integer division buckets the same on both: BIGINT / INTEGER is integral in PostgreSQL
        // and in SQLite.
        let rows = sqlx::query(
            "SELECT (created_ms / 60000) * 60000 AS minute_ms, status, COUNT(*) AS n FROM warren_invocations
             WHERE created_ms >= $1 AND created_ms < $2 GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(since_ms)
        .bind(until_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(MinuteCount {
                    minute_ms: r.try_get(0).map_err(unavailable)?,
                    status: parse_status(&r.try_get::<String, _>(1).map_err(unavailable)?)?,
                    count: r.try_get(2).map_err(unavailable)?,
                })
            })
            .collect()
    }

    async fn create_key(&self, key: &ApiKey) -> Result<()> {
        let done = sqlx::query(&format!("INSERT INTO warren_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"))
            .bind(key.id.to_string())
            .bind(&key.name)
            .bind(key.level.as_str())
            .bind(key.function.clone())
            .bind(&key.hash)
            .bind(key.created_ms)
            .bind(key.revoked_ms)
            .execute(&self.pool)
            .await;
        match done {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("a key with this id or hash exists".into())),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM warren_keys ORDER BY created_ms, id"))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(key_from).collect()
    }

    async fn find_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM warren_keys WHERE hash = $1"))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(key_from).transpose()
    }

    async fn revoke_key(&self, id: Uuid, revoked_ms: i64) -> Result<bool> {
        let done = sqlx::query("UPDATE warren_keys SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
            .bind(revoked_ms)
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database that has steps 1 to 3 but not step 5 (or a step numbered in a gap) gets the
    /// missing ones on open, whatever the order they were added in.
    #[tokio::test]
    async fn migration_applies_every_step_not_recorded_yet() {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", tmp.path().join("m.db").display());
        let store = SqlxStore::open(&url).await.unwrap();
        let steps = |s: &SqlxStore| {
            let pool = s.pool.clone();
            async move {
                let rows = sqlx::query("SELECT step FROM warren_schema ORDER BY step").fetch_all(&pool).await.unwrap();
                rows.iter().map(|r| r.try_get::<i32, _>(0).unwrap()).collect::<Vec<_>>()
            }
        };
        let all: Vec<i32> = schema(Kind::Sqlite).iter().map(|(n, _)| *n).collect();
        assert_eq!(steps(&store).await, all);
        // As if this database had been migrated by a build without step 5.
        store.pool.execute("DROP TABLE warren_keys; DELETE FROM warren_schema WHERE step = 4").await.unwrap();
        drop(store);
        let store = SqlxStore::open(&url).await.unwrap();
        assert_eq!(steps(&store).await, all);
        assert!(store.list_keys().await.unwrap().is_empty(), "warren_keys is back");
    }
}
