//! PostgreSQL and SQLite backends, through sqlx's `Any` driver.
//!
//! The two share every statement: both accept `$N` placeholders (numbered in order of first
//! use), `ON CONFLICT` upserts and the same column types once spelled per backend in
//! [`schema`]. What differs is the connection setup and how migrations are serialised
//! (an advisory lock on PostgreSQL, `BEGIN IMMEDIATE` on SQLite).
//!
//! This module holds the store handle and what several concerns share; each of the others
//! implements one sub-trait of [`Store`].

mod batches;
mod fleet;
mod functions;
mod invocations;
mod keys;
mod retention;
mod schema;
mod settings;
mod triggers;

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{AnyPool, Executor, Row};
use warren_wire::time::now_ms;

use crate::interface::Store;
use crate::migrate::{migrate, Migrating};
use crate::model::*;
use crate::rows;

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

const VERSION_COLUMNS: &str = "name, version, sha256, manifest, size, created_ms";
const INVOCATION_COLUMNS: &str =
    "id, function, version, status, attempts, payload, result, error, worker, created_ms, started_ms, finished_ms, run_at_ms";
const BATCH_COLUMNS: &str =
    "id, function, version, then_function, total, state, followup, error, created_ms, finished_ms";
const DELIVERY_COLUMNS: &str = "invocation, output, target, status, attempts, last_error, next_ms, updated_ms";
const KEY_COLUMNS: &str = "id, name, level, function, hash, created_ms, revoked_ms";
const WORKER_COLUMNS: &str = "id, host, pools, concurrency, in_flight, version, started_ms, last_seen_ms, state";

const INSERT_INVOCATION: &str =
    "INSERT INTO warren_invocations (id, function, version, status, attempts, payload, created_ms, origin)
     VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6)";

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds a new invocation's five own columns: id, function, version, payload, created_ms.
fn bind_new<'q>(q: AnyQuery<'q>, inv: &'q NewInvocation) -> AnyQuery<'q> {
    q.bind(inv.id.to_string()).bind(&inv.function).bind(inv.version).bind(inv.payload.clone()).bind(inv.created_ms)
}

/// Binds `INSERT_INVOCATION`'s six parameters: the five of [`bind_new`], then the origin.
fn bind_invocation<'q>(q: AnyQuery<'q>, inv: &'q NewInvocation, origin: Option<&str>) -> AnyQuery<'q> {
    bind_new(q, inv).bind(origin.map(str::to_string))
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
                    sql.push_str(before);
                    push_param(&mut sql, n);
                    sql.push_str(after);
                    n += 1;
                }
                None => sql.push_str(t),
            }
        }
        sql.push(')');
    }
    sql
}

/// Appends `$n`. Written digit by digit: a statement of 256 rows has over a thousand of them,
/// and `format!` for each was a measurable share of management's instructions per invoke.
fn push_param(sql: &mut String, n: usize) {
    let mut digits = [0u8; 20];
    let (mut i, mut v) = (digits.len(), n);
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    sql.push('$');
    sql.push_str(std::str::from_utf8(&digits[i..]).expect("ASCII digits"));
}

/// Rows of a multi-row statement on PostgreSQL: `n` rounded up to a power of two, the rest
/// filled with rows of id `''` that match nothing. Each size is then one of a few statement
/// texts, which stay in each connection's prepared-statement cache instead of being parsed and
/// planned again for every new batch size.
fn padded(n: usize) -> usize {
    n.next_power_of_two()
}

/// The ids a statement's rows return in their first column.
fn returned_ids(rows: &[AnyRow]) -> Result<HashSet<String>> {
    rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>().map_err(unavailable)
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
        let conn = pool.acquire().await.map_err(unavailable)?;
        migrate(&mut Migration { conn, kind }, &schema::schema(kind.blob())).await?;
        Ok(SqlxStore { pool, relaxed, kind, origin: Default::default() })
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
}

/// The connection migrations run on: serialised by an advisory lock on PostgreSQL, and by one
/// `BEGIN IMMEDIATE` transaction around all the steps on SQLite.
struct Migration {
    conn: PoolConnection<sqlx::Any>,
    kind: Kind,
}

#[async_trait]
impl Migrating for Migration {
    async fn lock(&mut self) -> Result<()> {
        let lock = match self.kind {
            Kind::Postgres => "SELECT pg_advisory_lock(7460113)",
            Kind::Sqlite => "BEGIN IMMEDIATE",
        };
        self.conn.execute(lock).await.map_err(unavailable)?;
        Ok(())
    }

    async fn unlock(&mut self, applied: bool) -> Result<()> {
        let unlock = match (self.kind, applied) {
            (Kind::Postgres, _) => "SELECT pg_advisory_unlock(7460113)",
            (Kind::Sqlite, true) => "COMMIT",
            (Kind::Sqlite, false) => "ROLLBACK",
        };
        self.conn.execute(unlock).await.map_err(unavailable)?;
        Ok(())
    }

    async fn recorded(&mut self) -> Result<HashSet<i32>> {
        self.conn
            .execute("CREATE TABLE IF NOT EXISTS warren_schema (step INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)")
            .await
            .map_err(unavailable)?;
        let rows =
            sqlx::query("SELECT step FROM warren_schema").fetch_all(&mut *self.conn).await.map_err(unavailable)?;
        rows.iter().map(|r| r.try_get::<i32, _>(0).map_err(unavailable)).collect()
    }

    async fn apply(&mut self, step: i32, sql: &str) -> Result<()> {
        self.conn.execute(sql).await.map_err(unavailable)?;
        sqlx::query("INSERT INTO warren_schema (step, applied_ms) VALUES ($1, $2)")
            .bind(step)
            .bind(now_ms())
            .execute(&mut *self.conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Kind {
    /// The type of binary columns.
    fn blob(self) -> &'static str {
        match self {
            Kind::Postgres => "BYTEA",
            Kind::Sqlite => "BLOB",
        }
    }
}

impl Store for SqlxStore {
    fn backend(&self) -> &'static str {
        match self.kind {
            Kind::Postgres => "postgres",
            Kind::Sqlite => "sqlite",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interface::KeyStore;

    #[test]
    fn value_rows_number_their_parameters() {
        assert_eq!(
            value_rows(1, 2, &["?", "'queued'", "?::int8"]),
            "($1, 'queued', $2::int8), ($3, 'queued', $4::int8)"
        );
        let many = value_rows(2, 256, &["?::text", "?::int8", "?::int8", "?::bytea"]);
        assert!(many.starts_with("($2::text, $3::int8, $4::int8, $5::bytea), ($6::text"), "{many}");
        assert!(many.ends_with("($1022::text, $1023::int8, $1024::int8, $1025::bytea)"), "{many}");
        assert_eq!(value_rows(1, 1, &["?", "$1"]), "($1, $1)");
    }

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
        let all: Vec<i32> = schema::schema(Kind::Sqlite.blob()).iter().map(|(n, _)| *n).collect();
        assert_eq!(steps(&store).await, all);
        // As if this database had been migrated by a build without step 5.
        store.pool.execute("DROP TABLE warren_keys; DELETE FROM warren_schema WHERE step = 4").await.unwrap();
        drop(store);
        let store = SqlxStore::open(&url).await.unwrap();
        assert_eq!(steps(&store).await, all);
        assert!(store.list_keys().await.unwrap().is_empty(), "warren_keys is back");
    }
}
