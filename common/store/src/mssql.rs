//! SQL Server backend, through tiberius with a bb8 connection pool.
//!
//! Every statement is a constant in this file and listed in [`STATEMENTS`], so that a test can
//! parse each one with a SQL Server dialect on machines where no SQL Server runs. The full
//! conformance suite runs against a real server wherever `WARREN_TEST_MSSQL_URL` points to one.
//!
//! URL form: `mssql://USER:PASSWORD@HOST:PORT/DATABASE?encrypt=false|true&trust_cert=true`.

use std::time::Duration;

use async_trait::async_trait;
use tiberius::{AuthMethod, Client, Config, EncryptionLevel, Row, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
use uuid::Uuid;

use warren_wire::manifest::Manifest;
use warren_wire::time::now_ms;

use crate::interface::Store;
use crate::model::*;

type Conn = Client<Compat<TcpStream>>;

/// Schema steps, each applied once (its number recorded in `warren_schema`). Steps 1 to 3 are
/// numbered 0 to 8, one statement each; from step 4 on, step N's statements are numbered
/// N * 100, N * 100 + 1, ... The runner applies every number not recorded yet, in order, so
/// numbers may leave gaps (step 4 belongs to another branch).
pub const SCHEMA: &[(i32, &str)] = &[
    (
        0,
        "CREATE TABLE warren_functions (
        name NVARCHAR(64) NOT NULL PRIMARY KEY,
        active_version BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL)",
    ),
    (
        1,
        "CREATE TABLE warren_versions (
        name NVARCHAR(64) NOT NULL,
        version BIGINT NOT NULL,
        sha256 NVARCHAR(64) NOT NULL,
        manifest NVARCHAR(MAX) NOT NULL,
        package VARBINARY(MAX) NOT NULL,
        size BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        CONSTRAINT pk_warren_versions PRIMARY KEY (name, version))",
    ),
    (
        2,
        "CREATE TABLE warren_invocations (
        id NVARCHAR(36) NOT NULL PRIMARY KEY,
        function_name NVARCHAR(64) NOT NULL,
        version BIGINT NOT NULL,
        status NVARCHAR(16) NOT NULL,
        attempts INT NOT NULL,
        payload VARBINARY(MAX) NOT NULL,
        result VARBINARY(MAX) NULL,
        error NVARCHAR(MAX) NULL,
        worker NVARCHAR(200) NULL,
        created_ms BIGINT NOT NULL,
        started_ms BIGINT NULL,
        finished_ms BIGINT NULL)",
    ),
    (3, "CREATE INDEX warren_invocations_function ON warren_invocations (function_name, created_ms)"),
    (4, "CREATE INDEX warren_invocations_status ON warren_invocations (status, created_ms)"),
    (
        5,
        "CREATE TABLE warren_logs (
        invocation NVARCHAR(36) NOT NULL,
        attempt INT NOT NULL,
        seq INT NOT NULL,
        ts_ms BIGINT NOT NULL,
        line NVARCHAR(MAX) NOT NULL,
        CONSTRAINT pk_warren_logs PRIMARY KEY (invocation, attempt, seq))",
    ),
    (
        6,
        "CREATE TABLE warren_workers (
        id NVARCHAR(200) NOT NULL PRIMARY KEY,
        host NVARCHAR(200) NOT NULL,
        pools NVARCHAR(1000) NOT NULL,
        concurrency INT NOT NULL,
        in_flight INT NOT NULL,
        version NVARCHAR(64) NOT NULL,
        started_ms BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL,
        state NVARCHAR(16) NOT NULL)",
    ),
    (
        7,
        "CREATE TABLE warren_attempts (
        invocation NVARCHAR(36) NOT NULL,
        attempt INT NOT NULL,
        status NVARCHAR(16) NOT NULL,
        error NVARCHAR(MAX) NULL,
        worker NVARCHAR(200) NOT NULL,
        finished_ms BIGINT NOT NULL,
        CONSTRAINT pk_warren_attempts PRIMARY KEY (invocation, attempt))",
    ),
    (
        8,
        "CREATE TABLE warren_settings (
        function_name NVARCHAR(64) NOT NULL,
        name NVARCHAR(128) NOT NULL,
        value NVARCHAR(MAX) NOT NULL,
        secret INT NOT NULL,
        updated_ms BIGINT NOT NULL,
        CONSTRAINT pk_warren_settings PRIMARY KEY (function_name, name))",
    ),
    // Batches (items are invocations with a batch id), timer ticks, output deliveries. The
    // column is added in a step of its own (each step is its own batch): T-SQL compiles a
    // batch before running it, so a statement using a column added in that batch may not resolve.
    (400, "ALTER TABLE warren_invocations ADD batch NVARCHAR(36) NULL"),
    (401, "CREATE INDEX warren_invocations_batch_status ON warren_invocations (batch, status) WHERE batch IS NOT NULL"),
    (402, "CREATE INDEX warren_invocations_batch_id ON warren_invocations (batch, id) WHERE batch IS NOT NULL"),
    (
        403,
        "CREATE TABLE warren_batches (
        id NVARCHAR(36) NOT NULL PRIMARY KEY,
        function_name NVARCHAR(64) NOT NULL,
        version BIGINT NOT NULL,
        then_function NVARCHAR(64) NULL,
        total BIGINT NOT NULL,
        state NVARCHAR(16) NOT NULL,
        followup NVARCHAR(36) NULL,
        error NVARCHAR(MAX) NULL,
        created_ms BIGINT NOT NULL,
        finished_ms BIGINT NULL)",
    ),
    (404, "CREATE INDEX warren_batches_state ON warren_batches (state)"),
    (
        405,
        "CREATE TABLE warren_ticks (
        function_name NVARCHAR(64) NOT NULL,
        tick_ms BIGINT NOT NULL,
        invocation NVARCHAR(36) NOT NULL,
        CONSTRAINT pk_warren_ticks PRIMARY KEY (function_name, tick_ms))",
    ),
    // `output` is a reserved word in T-SQL, hence `output_index` (as `function` is `function_name`).
    (
        406,
        "CREATE TABLE warren_deliveries (
        invocation NVARCHAR(36) NOT NULL,
        output_index INT NOT NULL,
        target NVARCHAR(MAX) NOT NULL,
        status NVARCHAR(16) NOT NULL,
        attempts INT NOT NULL,
        last_error NVARCHAR(MAX) NULL,
        next_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        CONSTRAINT pk_warren_deliveries PRIMARY KEY (invocation, output_index))",
    ),
    (407, "CREATE INDEX warren_deliveries_due ON warren_deliveries (status, next_ms)"),
    // Step 5: API keys, stored as the sha256 of the key (never the key).
    (
        500,
        "CREATE TABLE warren_keys (
        id NVARCHAR(36) NOT NULL PRIMARY KEY,
        name NVARCHAR(200) NOT NULL,
        key_level NVARCHAR(16) NOT NULL,
        function_name NVARCHAR(64) NULL,
        hash NVARCHAR(64) NOT NULL CONSTRAINT uq_warren_keys_hash UNIQUE,
        created_ms BIGINT NOT NULL,
        revoked_ms BIGINT NULL)",
    ),
    // Step 6: which management instance recorded an invocation or batch `queued`, and each
    // instance's lease, so that what a stopped instance left unpublished is settled.
    (600, "ALTER TABLE warren_invocations ADD origin NVARCHAR(64) NULL"),
    (601, "ALTER TABLE warren_batches ADD origin NVARCHAR(64) NULL"),
    (
        602,
        "CREATE TABLE warren_instances (
        id NVARCHAR(64) NOT NULL PRIMARY KEY,
        seen_ms BIGINT NOT NULL,
        settled_ms BIGINT NOT NULL)",
    ),
    // Step 7: each lease's own length (instances may be started with different ones).
    (
        700,
        "ALTER TABLE warren_instances ADD lease_ms BIGINT NOT NULL CONSTRAINT df_warren_instances_lease DEFAULT 60000",
    ),
];

const SCHEMA_EXISTS: &str = "SELECT CASE WHEN OBJECT_ID(N'warren_schema', N'U') IS NULL THEN 0 ELSE 1 END";
const SCHEMA_CREATE: &str = "CREATE TABLE warren_schema (step INT NOT NULL PRIMARY KEY, applied_ms BIGINT NOT NULL)";
const SCHEMA_STEPS: &str = "SELECT step FROM warren_schema";
const SCHEMA_RECORD: &str = "INSERT INTO warren_schema (step, applied_ms) VALUES (@P1, @P2)";
const MIGRATE_LOCK: &str =
    "EXEC sp_getapplock @Resource = 'warren_migrate', @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = 60000";
const MIGRATE_UNLOCK: &str = "EXEC sp_releaseapplock @Resource = 'warren_migrate', @LockOwner = 'Session'";

const NEXT_VERSION: &str =
    "SELECT COALESCE(MAX(version), 0) + 1 FROM warren_versions WITH (UPDLOCK, HOLDLOCK) WHERE name = @P1";
const INSERT_VERSION: &str = "INSERT INTO warren_versions (name, version, sha256, manifest, package, size, created_ms)
     VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7)";
const ACTIVATE_VERSION: &str = "UPDATE warren_functions SET active_version = @P2, updated_ms = @P3 WHERE name = @P1";
const INSERT_FUNCTION: &str =
    "INSERT INTO warren_functions (name, active_version, created_ms, updated_ms) VALUES (@P1, @P2, @P3, @P3)";
const LIST_FUNCTIONS: &str = "SELECT name, active_version, created_ms, updated_ms FROM warren_functions ORDER BY name";
const GET_FUNCTION: &str = "SELECT name, active_version, created_ms, updated_ms FROM warren_functions WHERE name = @P1";
const LIST_VERSIONS: &str = "SELECT name, version, sha256, manifest, size, created_ms FROM warren_versions
     WHERE name = @P1 ORDER BY version DESC";
const GET_VERSION: &str = "SELECT name, version, sha256, manifest, size, created_ms FROM warren_versions
     WHERE name = @P1 AND version = @P2";
const GET_PACKAGE: &str = "SELECT package FROM warren_versions WHERE name = @P1 AND version = @P2";
const CREATE_INVOCATION: &str =
    "INSERT INTO warren_invocations (id, function_name, version, status, attempts, payload, created_ms, origin)
     VALUES (@P1, @P2, @P3, 'queued', 0, @P4, @P5, @P6)";
const CLAIM_UPDATE: &str = "UPDATE warren_invocations
     SET status = 'running', attempts = @P1, worker = @P2, started_ms = @P3, version = @P4
     WHERE id = @P5 AND (status IN ('queued', 'running') OR (status = 'failed' AND attempts = 0)) AND attempts <= @P1";
const CLAIM_INSERT: &str = "INSERT INTO warren_invocations
     (id, function_name, version, status, attempts, payload, worker, created_ms, started_ms)
     SELECT @P1, @P2, @P3, 'running', @P4, @P5, @P6, @P7, @P8
     WHERE NOT EXISTS (SELECT 1 FROM warren_invocations WHERE id = @P1)";
const GET_STATUS: &str = "SELECT status, attempts FROM warren_invocations WHERE id = @P1";
const COMPLETE: &str = "UPDATE warren_invocations
     SET status = @P1, attempts = @P2, result = @P3, error = @P4, worker = @P5, finished_ms = @P6,
       started_ms = COALESCE(@P8, started_ms), version = COALESCE(@P9, version)
     WHERE id = @P7 AND (status IN ('queued', 'running') OR (status = 'failed' AND attempts = 0)) AND attempts <= @P2";
const RETRY_LATER: &str = "UPDATE warren_invocations
     SET status = @P1, attempts = @P2 + 1, result = @P3, error = @P4, worker = @P5, finished_ms = @P6,
       started_ms = COALESCE(@P8, started_ms), version = COALESCE(@P9, version)
     WHERE id = @P7 AND (status IN ('queued', 'running') OR (status = 'failed' AND attempts = 0)) AND attempts <= @P2";
const INSERT_ATTEMPT: &str = "INSERT INTO warren_attempts (invocation, attempt, status, error, worker, finished_ms)
     VALUES (@P1, @P2, @P3, @P4, @P5, @P6)";
const REPLAY: &str = "UPDATE warren_invocations SET status = 'queued', attempts = @P1, finished_ms = NULL
     WHERE id = @P2 AND status = 'dead' AND attempts = @P3";
const LIST_ATTEMPTS: &str =
    "SELECT attempt, status, error, worker, finished_ms FROM warren_attempts WHERE invocation = @P1 ORDER BY attempt";
const SETTING_UPDATE: &str =
    "UPDATE warren_settings SET value = @P3, secret = @P4, updated_ms = @P5 WHERE function_name = @P1 AND name = @P2";
const SETTING_INSERT: &str = "INSERT INTO warren_settings (function_name, name, value, secret, updated_ms)
     VALUES (@P1, @P2, @P3, @P4, @P5)";
const SETTING_DELETE: &str = "DELETE FROM warren_settings WHERE function_name = @P1 AND name = @P2";
const SETTING_LIST: &str =
    "SELECT name, value, secret, updated_ms FROM warren_settings WHERE function_name = @P1 ORDER BY name";
const INVOCATION_SELECT: &str = "SELECT TOP (@P1) id, function_name, version, status, attempts, payload, result,
     error, worker, created_ms, started_ms, finished_ms FROM warren_invocations WHERE 1 = 1";
const INSERT_LOGS_PREFIX: &str = "INSERT INTO warren_logs (invocation, attempt, seq, ts_ms, line) VALUES ";
const GET_INVOCATION: &str = "SELECT id, function_name, version, status, attempts, payload, result, error, worker,
     created_ms, started_ms, finished_ms FROM warren_invocations WHERE id = @P1";
const GET_LOGS: &str = "SELECT attempt, seq, ts_ms, line FROM warren_logs WHERE invocation = @P1 ORDER BY attempt, seq";
const HEARTBEAT_UPDATE: &str = "UPDATE warren_workers SET host = @P2, pools = @P3, concurrency = @P4, in_flight = @P5,
     version = @P6, last_seen_ms = @P8, state = @P9 WHERE id = @P1";
const HEARTBEAT_INSERT: &str = "INSERT INTO warren_workers
     (id, host, pools, concurrency, in_flight, version, started_ms, last_seen_ms, state)
     VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9)";
const LIST_WORKERS: &str = "SELECT id, host, pools, concurrency, in_flight, version, started_ms, last_seen_ms, state
     FROM warren_workers ORDER BY id";
const CREATE_BATCH: &str =
    "INSERT INTO warren_batches (id, function_name, version, then_function, total, state, created_ms, origin)
     VALUES (@P1, @P2, @P3, @P4, 0, 'submitting', @P5, @P6)";
const INSERT_ITEMS_PREFIX: &str =
    "INSERT INTO warren_invocations (id, function_name, version, status, attempts, payload, created_ms, batch, origin) VALUES ";
/// Lease times are the store's clock: milliseconds since the epoch, UTC (SQL Server 2016+).
macro_rules! clock_ms {
    () => {
        "DATEDIFF_BIG(millisecond, '1970-01-01', SYSUTCDATETIME())"
    };
}
const INSTANCE_UPDATE: &str =
    concat!("UPDATE warren_instances SET seen_ms = ", clock_ms!(), ", settled_ms = @P2, lease_ms = @P3 WHERE id = @P1");
const INSTANCE_INSERT: &str = concat!(
    "INSERT INTO warren_instances (id, seen_ms, settled_ms, lease_ms) VALUES (@P1, ",
    clock_ms!(),
    ", @P2, @P3)"
);
const LAPSED_INSTANCES: &str =
    concat!("SELECT id, settled_ms FROM warren_instances WHERE seen_ms + lease_ms < ", clock_ms!(), " ORDER BY id");
const SETTLE_INVOCATIONS: &str = "UPDATE warren_invocations SET status = 'failed', error = @P1, finished_ms = @P2
     WHERE status = 'queued' AND attempts = 0 AND created_ms >= @P3 AND origin = @P4";
/// Ends the submission of the batches still `submitting` of origin @P2, or of all when @P2 is
/// NULL: `running`, with the items recorded as their total and @P1 as error (unless they have one).
const SEAL_SUBMITTING: &str = "UPDATE warren_batches SET state = 'running', error = COALESCE(error, @P1),
       total = (SELECT COUNT(*) FROM warren_invocations i WHERE i.batch = warren_batches.id)
     WHERE state = 'submitting' AND (@P2 IS NULL OR origin = @P2)";
const ABANDON_INVOCATIONS: &str = "UPDATE warren_invocations SET status = 'failed', error = @P1, finished_ms = @P2
     WHERE status IN ('queued', 'running')";
const FORGET_INSTANCE: &str =
    concat!("DELETE FROM warren_instances WHERE id = @P1 AND seen_ms + lease_ms < ", clock_ms!());
const SEAL_BATCH: &str = "UPDATE warren_batches SET total = @P1, error = @P2,
       state = CASE WHEN state = 'submitting' THEN 'running' ELSE state END
     WHERE id = @P3";
const GET_BATCH: &str = "SELECT id, function_name, version, then_function, total, state, followup, error, created_ms,
     finished_ms FROM warren_batches WHERE id = @P1";
const LIST_BATCHES: &str = "SELECT TOP (@P1) id, function_name, version, then_function, total, state, followup, error,
     created_ms, finished_ms FROM warren_batches ORDER BY created_ms DESC, id DESC";
const OPEN_BATCHES: &str = "SELECT id, function_name, version, then_function, total, state, followup, error,
     created_ms, finished_ms FROM warren_batches
     WHERE state IN ('running', 'finishing') OR (state = 'cancelled' AND finished_ms IS NULL)";
const BATCH_COUNTS: &str = "SELECT status, COUNT_BIG(*) FROM warren_invocations WHERE batch = @P1 GROUP BY status";
const BATCH_UNFINISHED: &str =
    "SELECT COUNT_BIG(*) FROM warren_invocations WHERE batch = @P1 AND status IN ('queued', 'running')";
/// Locks the batch row until the transaction ends, so a cancel and a fan-in do not interleave.
const BATCH_STATE_LOCKED: &str = "SELECT state FROM warren_batches WITH (UPDLOCK, HOLDLOCK) WHERE id = @P1";
const CANCEL_BATCH: &str =
    "UPDATE warren_batches SET state = 'cancelled' WHERE id = @P1 AND state IN ('submitting', 'running')";
const CANCEL_ITEMS: &str = "UPDATE warren_invocations SET status = 'cancelled', finished_ms = @P1,
       error = 'not run: its batch was cancelled'
     WHERE batch = @P2 AND status = 'queued'";
const BATCH_RESULTS: &str = "SELECT TOP (@P1) id, status, result, error FROM warren_invocations
     WHERE batch = @P2 AND id > @P3 ORDER BY id";
const BEGIN_FANIN: &str =
    "UPDATE warren_batches SET state = 'finishing', followup = @P1 WHERE id = @P2 AND state = 'running'";
const END_BATCH: &str = "UPDATE warren_batches SET state = @P1, finished_ms = @P2 WHERE id = @P3";
const INSERT_TICK: &str = "INSERT INTO warren_ticks (function_name, tick_ms, invocation)
     SELECT @P1, @P2, @P3
     WHERE NOT EXISTS (SELECT 1 FROM warren_ticks WHERE function_name = @P1 AND tick_ms = @P2)";
const LAST_TICK: &str = "SELECT MAX(tick_ms) FROM warren_ticks WHERE function_name = @P1";
const INSERT_DELIVERY: &str =
    "INSERT INTO warren_deliveries (invocation, output_index, target, status, attempts, next_ms, updated_ms)
     SELECT @P1, @P2, @P3, 'pending', 0, @P4, @P4
     WHERE NOT EXISTS (SELECT 1 FROM warren_deliveries WHERE invocation = @P1 AND output_index = @P2)";
/// A replayed invocation's new outcome is forwarded again (run when INSERT_DELIVERY found a row).
const RESET_DELIVERY: &str = "UPDATE warren_deliveries SET status = 'pending', attempts = 0, last_error = NULL,
       target = @P3, next_ms = @P4, updated_ms = @P4
     WHERE invocation = @P1 AND output_index = @P2";
const BATCH_STATE: &str = "SELECT state FROM warren_batches WHERE id = @P1";
const DUE_DELIVERIES: &str = "SELECT TOP (@P1) invocation, output_index, target, status, attempts, last_error, next_ms,
     updated_ms FROM warren_deliveries WHERE status = 'pending' AND next_ms <= @P2 ORDER BY next_ms";
const LEASE_DELIVERY: &str = "UPDATE warren_deliveries SET next_ms = @P1
     WHERE invocation = @P2 AND output_index = @P3 AND status = 'pending' AND next_ms = @P4";
const RECORD_DELIVERY: &str = "UPDATE warren_deliveries
     SET status = @P1, attempts = @P2, last_error = @P3, next_ms = @P4, updated_ms = @P5
     WHERE invocation = @P6 AND output_index = @P7";
const LIST_DELIVERIES: &str = "SELECT invocation, output_index, target, status, attempts, last_error, next_ms,
     updated_ms FROM warren_deliveries WHERE invocation = @P1 ORDER BY output_index";
const RETRY_DELIVERIES: &str = "UPDATE warren_deliveries SET status = 'pending', attempts = 0, next_ms = @P1,
       updated_ms = @P1
     WHERE invocation = @P2 AND status = 'failed'";
const COUNT_PER_MINUTE: &str = "SELECT minute_ms, status, COUNT_BIG(*) FROM
     (SELECT (created_ms / 60000) * 60000 AS minute_ms, status FROM warren_invocations
      WHERE created_ms >= @P1 AND created_ms < @P2) AS recent
     GROUP BY minute_ms, status ORDER BY minute_ms, status";
const KEY_INSERT: &str = "INSERT INTO warren_keys
     (id, name, key_level, function_name, hash, created_ms, revoked_ms) VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7)";
const KEY_LIST: &str = "SELECT id, name, key_level, function_name, hash, created_ms, revoked_ms FROM warren_keys
     ORDER BY created_ms, id";
const KEY_BY_HASH: &str =
    "SELECT id, name, key_level, function_name, hash, created_ms, revoked_ms FROM warren_keys WHERE hash = @P1";
const KEY_REVOKE: &str = "UPDATE warren_keys SET revoked_ms = @P1 WHERE id = @P2 AND revoked_ms IS NULL";
const BEGIN: &str = "BEGIN TRANSACTION";
const COMMIT: &str = "COMMIT TRANSACTION";
const ROLLBACK: &str = "ROLLBACK TRANSACTION";

/// Rows per multi-row log insert: 5 parameters each, under SQL Server's 2,100 per statement.
const LOG_ROWS_PER_INSERT: usize = 400;
/// Rows per multi-row batch item insert: the batch id and the origin once, then 5 parameters
/// each (2,002 in all, under SQL Server's 2,100 per statement).
const ITEM_ROWS_PER_INSERT: usize = 400;

/// Every statement this backend sends (the log insert with two rows as its example).
pub fn statements() -> Vec<String> {
    let mut all: Vec<String> = SCHEMA.iter().map(|(_, s)| s.to_string()).collect();
    all.extend(
        [
            SCHEMA_EXISTS,
            SCHEMA_CREATE,
            INSTANCE_UPDATE,
            INSTANCE_INSERT,
            LAPSED_INSTANCES,
            SETTLE_INVOCATIONS,
            SEAL_SUBMITTING,
            FORGET_INSTANCE,
            ABANDON_INVOCATIONS,
            SCHEMA_STEPS,
            SCHEMA_RECORD,
            MIGRATE_LOCK,
            MIGRATE_UNLOCK,
            NEXT_VERSION,
            INSERT_VERSION,
            ACTIVATE_VERSION,
            INSERT_FUNCTION,
            LIST_FUNCTIONS,
            GET_FUNCTION,
            LIST_VERSIONS,
            GET_VERSION,
            GET_PACKAGE,
            CREATE_INVOCATION,
            CLAIM_UPDATE,
            CLAIM_INSERT,
            GET_STATUS,
            COMPLETE,
            GET_INVOCATION,
            GET_LOGS,
            HEARTBEAT_UPDATE,
            HEARTBEAT_INSERT,
            LIST_WORKERS,
            BEGIN,
            COMMIT,
            ROLLBACK,
            RETRY_LATER,
            INSERT_ATTEMPT,
            REPLAY,
            LIST_ATTEMPTS,
            SETTING_UPDATE,
            SETTING_INSERT,
            SETTING_DELETE,
            SETTING_LIST,
            CREATE_BATCH,
            SEAL_BATCH,
            GET_BATCH,
            LIST_BATCHES,
            OPEN_BATCHES,
            BATCH_COUNTS,
            BATCH_UNFINISHED,
            BATCH_STATE_LOCKED,
            CANCEL_BATCH,
            CANCEL_ITEMS,
            BATCH_RESULTS,
            BEGIN_FANIN,
            END_BATCH,
            INSERT_TICK,
            LAST_TICK,
            INSERT_DELIVERY,
            DUE_DELIVERIES,
            LEASE_DELIVERY,
            RECORD_DELIVERY,
            LIST_DELIVERIES,
            RETRY_DELIVERIES,
            COUNT_PER_MINUTE,
            RESET_DELIVERY,
            BATCH_STATE,
            KEY_INSERT,
            KEY_LIST,
            KEY_BY_HASH,
            KEY_REVOKE,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    all.push(insert_logs_sql(2));
    all.push(insert_items_sql(2));
    all.push(insert_items_sql(ITEM_ROWS_PER_INSERT));
    for (f, st) in [(false, false), (true, false), (false, true), (true, true)] {
        all.push(list_invocations_sql(f, st));
    }
    all
}

fn list_invocations_sql(function: bool, status: bool) -> String {
    let mut sql = String::from(INVOCATION_SELECT);
    let mut n = 1;
    if function {
        n += 1;
        sql.push_str(&format!(" AND function_name = @P{n}"));
    }
    if status {
        n += 1;
        sql.push_str(&format!(" AND status = @P{n}"));
    }
    sql.push_str(" ORDER BY created_ms DESC, id DESC");
    sql
}

fn insert_logs_sql(rows: usize) -> String {
    let mut sql = String::from(INSERT_LOGS_PREFIX);
    for i in 0..rows {
        let b = i * 5;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(@P{}, @P{}, @P{}, @P{}, @P{})", b + 1, b + 2, b + 3, b + 4, b + 5));
    }
    sql
}

/// `@P1` is the batch id, shared by every row; each row then has id, function, version,
/// payload and created_ms.
fn insert_items_sql(rows: usize) -> String {
    let mut sql = String::from(INSERT_ITEMS_PREFIX);
    for i in 0..rows {
        // @P1 is the batch and @P2 the origin, shared by every row.
        let b = 2 + i * 5;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(@P{}, @P{}, @P{}, 'queued', 0, @P{}, @P{}, @P1, @P2)",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5
        ));
    }
    sql
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// SQL Server's error numbers for a duplicate key.
fn is_duplicate(e: &tiberius::error::Error) -> bool {
    matches!(e.code(), Some(2627) | Some(2601))
}

pub struct Manager {
    config: Config,
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = tiberius::error::Error;

    async fn connect(&self) -> Result<Conn, Self::Error> {
        let tcp = TcpStream::connect(self.config.get_addr()).await?;
        tcp.set_nodelay(true)?;
        Client::connect(self.config.clone(), tcp.compat_write()).await
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), Self::Error> {
        conn.simple_query("SELECT 1").await?.into_row().await?;
        Ok(())
    }

    fn has_broken(&self, _: &mut Conn) -> bool {
        false
    }
}

pub struct MssqlStore {
    pool: bb8::Pool<Manager>,
    /// The management instance whose `queued` records this handle creates (see
    /// [`Store::set_origin`]).
    origin: std::sync::RwLock<Option<std::sync::Arc<str>>>,
}

/// Turns `mssql://user:pass@host:port/db?encrypt=…&trust_cert=…` into a tiberius config.
pub fn config_from_url(url: &str) -> Result<Config> {
    let u = url::Url::parse(url).map_err(|_| StoreError::BadUrl(url.to_string()))?;
    let mut c = Config::new();
    c.host(u.host_str().unwrap_or("localhost"));
    c.port(u.port().unwrap_or(1433));
    let db = u.path().trim_start_matches('/');
    if !db.is_empty() {
        c.database(db);
    }
    let user = percent_decode(u.username());
    let pass = percent_decode(u.password().unwrap_or(""));
    c.authentication(AuthMethod::sql_server(user, pass));
    // This build carries no TLS stack for SQL Server: the connection is unencrypted unless a
    // TLS-enabled build is used (see README, "Stores").
    c.encryption(EncryptionLevel::NotSupported);
    for (k, v) in u.query_pairs() {
        if k == "trust_cert" && v == "true" {
            c.trust_cert();
        }
    }
    Ok(c)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Ends a transaction. A failed rollback is only logged: the server may have rolled back
/// already (error 3903), and the caller reports the error that led here.
/// Records an invocation `queued` (CREATE_INVOCATION), on `c` and in its transaction if any.
async fn insert_invocation(c: &mut Conn, inv: &NewInvocation, origin: Option<&str>) -> tiberius::Result<()> {
    let id = inv.id.to_string();
    c.execute(
        CREATE_INVOCATION,
        &[&id.as_str(), &inv.function.as_str(), &inv.version, &inv.payload.as_slice(), &inv.created_ms, &origin],
    )
    .await
    .map(|_| ())
}

async fn finish(c: &mut Conn, commit: bool) -> Result<()> {
    if commit {
        c.simple_query(COMMIT).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
    } else if let Err(e) = async { c.simple_query(ROLLBACK).await?.into_results().await }.await {
        tracing::debug!(error = %e, "rollback failed");
    }
    Ok(())
}

fn col<'a, T: tiberius::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get::<T, usize>(i).map_err(unavailable)?.ok_or_else(|| StoreError::Corrupt(format!("column {i} is NULL")))
}

fn opt<'a, T: tiberius::FromSql<'a>>(row: &'a Row, i: usize) -> Result<Option<T>> {
    row.try_get::<T, usize>(i).map_err(unavailable)
}

fn key_from(r: &Row) -> Result<ApiKey> {
    Ok(ApiKey {
        id: parse_uuid(col::<&str>(r, 0)?)?,
        name: col::<&str>(r, 1)?.to_string(),
        level: parse_key_level(col::<&str>(r, 2)?)?,
        function: opt::<&str>(r, 3)?.map(str::to_string),
        hash: col::<&str>(r, 4)?.to_string(),
        created_ms: col(r, 5)?,
        revoked_ms: opt(r, 6)?,
    })
}

fn version_from(r: &Row) -> Result<FunctionVersion> {
    Ok(FunctionVersion {
        name: col::<&str>(r, 0)?.to_string(),
        version: col(r, 1)?,
        sha256: col::<&str>(r, 2)?.to_string(),
        manifest: col::<&str>(r, 3)?.to_string(),
        size: col(r, 4)?,
        created_ms: col(r, 5)?,
    })
}

fn function_from(r: &Row) -> Result<FunctionInfo> {
    Ok(FunctionInfo {
        name: col::<&str>(r, 0)?.to_string(),
        active_version: col(r, 1)?,
        created_ms: col(r, 2)?,
        updated_ms: col(r, 3)?,
    })
}

fn invocation_from(r: &Row) -> Result<Invocation> {
    Ok(Invocation {
        id: parse_uuid(col::<&str>(r, 0)?)?,
        function: col::<&str>(r, 1)?.to_string(),
        version: col(r, 2)?,
        status: parse_status(col::<&str>(r, 3)?)?,
        attempts: col(r, 4)?,
        payload: col::<&[u8]>(r, 5)?.to_vec(),
        result: opt::<&[u8]>(r, 6)?.map(|b| b.to_vec()),
        error: opt::<&str>(r, 7)?.map(str::to_string),
        worker: opt::<&str>(r, 8)?.map(str::to_string),
        created_ms: col(r, 9)?,
        started_ms: opt(r, 10)?,
        finished_ms: opt(r, 11)?,
    })
}

fn worker_from(r: &Row) -> Result<WorkerInfo> {
    Ok(WorkerInfo {
        id: col::<&str>(r, 0)?.to_string(),
        host: col::<&str>(r, 1)?.to_string(),
        pools: col::<&str>(r, 2)?.to_string(),
        concurrency: col(r, 3)?,
        in_flight: col(r, 4)?,
        version: col::<&str>(r, 5)?.to_string(),
        started_ms: col(r, 6)?,
        last_seen_ms: col(r, 7)?,
        state: col::<&str>(r, 8)?.to_string(),
    })
}

fn batch_from(r: &Row) -> Result<Batch> {
    Ok(Batch {
        id: parse_uuid(col::<&str>(r, 0)?)?,
        function: col::<&str>(r, 1)?.to_string(),
        version: col(r, 2)?,
        then: opt::<&str>(r, 3)?.map(str::to_string),
        total: col(r, 4)?,
        state: col::<&str>(r, 5)?.to_string(),
        followup_invocation: opt::<&str>(r, 6)?.map(parse_uuid).transpose()?,
        error: opt::<&str>(r, 7)?.map(str::to_string),
        created_ms: col(r, 8)?,
        finished_ms: opt(r, 9)?,
        counts: Default::default(),
    })
}

fn delivery_from(r: &Row) -> Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        invocation: parse_uuid(col::<&str>(r, 0)?)?,
        output: col(r, 1)?,
        target: col::<&str>(r, 2)?.to_string(),
        status: col::<&str>(r, 3)?.to_string(),
        attempts: col(r, 4)?,
        last_error: opt::<&str>(r, 5)?.map(str::to_string),
        next_ms: col(r, 6)?,
        updated_ms: col(r, 7)?,
    })
}

impl MssqlStore {
    fn origin(&self) -> Option<std::sync::Arc<str>> {
        self.origin.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn open(url: &str) -> Result<Self> {
        let config = config_from_url(url)?;
        let pool = bb8::Pool::builder()
            .max_size(8)
            .connection_timeout(Duration::from_secs(10))
            .build(Manager { config })
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open the SQL Server store: {e}")))?;
        let store = MssqlStore { pool, origin: Default::default() };
        store.migrate().await?;
        Ok(store)
    }

    async fn conn(&self) -> Result<bb8::PooledConnection<'_, Manager>> {
        self.pool.get().await.map_err(unavailable)
    }

    async fn migrate(&self) -> Result<()> {
        let mut c = self.conn().await?;
        c.simple_query(MIGRATE_LOCK).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            let exists: i32 = match c.simple_query(SCHEMA_EXISTS).await.map_err(unavailable)?.into_row().await {
                Ok(Some(r)) => col(&r, 0)?,
                Ok(None) => 0,
                Err(e) => return Err(unavailable(e)),
            };
            if exists == 0 {
                c.execute(SCHEMA_CREATE, &[]).await.map_err(unavailable)?;
            }
            let rows = c
                .simple_query(SCHEMA_STEPS)
                .await
                .map_err(unavailable)?
                .into_first_result()
                .await
                .map_err(unavailable)?;
            let done: std::collections::HashSet<i32> = rows.iter().map(|r| col(r, 0)).collect::<Result<_>>()?;
            for (n, step) in SCHEMA.iter().filter(|(n, _)| !done.contains(n)) {
                c.execute(*step, &[]).await.map_err(unavailable)?;
                c.execute(SCHEMA_RECORD, &[n, &now_ms()]).await.map_err(unavailable)?;
            }
            Ok(())
        }
        .await;
        c.simple_query(MIGRATE_UNLOCK).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        result
    }

    /// Like `SqlxStore::end_attempt`, except that every attempt's record, the last one
    /// included, goes to warren_attempts (so `list_attempts` and `replay` need nothing of the
    /// invocation's row): the update, then the attempt record and log lines, in one
    /// transaction, only if the update touched the invocation.
    async fn end_attempt(&self, id: Uuid, o: &Outcome, update: &str, status: Status) -> Result<bool> {
        let mut c = self.conn().await?;
        let id = id.to_string();
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            if let Some(inv) = &o.record {
                // No record yet (a synchronous invoke): made now, then ended like any other.
                let params: [&dyn ToSql; 8] = [
                    &id.as_str(),
                    &inv.function.as_str(),
                    &inv.version,
                    &o.attempt,
                    &inv.payload.as_slice(),
                    &o.worker.as_str(),
                    &inv.created_ms,
                    &o.started_ms,
                ];
                match c.execute(CLAIM_INSERT, &params).await {
                    Ok(_) => {}
                    Err(e) if is_duplicate(&e) => {}
                    Err(e) => return Err(unavailable(e)),
                }
            }
            let result = if status.is_final() { o.result.as_deref() } else { None };
            let updated = c
                .execute(
                    update,
                    &[
                        &status.as_str(),
                        &o.attempt,
                        &result,
                        &o.error.as_deref(),
                        &o.worker.as_str(),
                        &o.finished_ms,
                        &id.as_str(),
                        &o.started_ms,
                        &o.version,
                    ],
                )
                .await
                .map_err(unavailable)?;
            if updated.total() == 0 {
                return Ok(false);
            }
            c.execute(
                INSERT_ATTEMPT,
                &[
                    &id.as_str(),
                    &o.attempt,
                    &o.status.as_str(),
                    &o.error.as_deref(),
                    &o.worker.as_str(),
                    &o.finished_ms,
                ],
            )
            .await
            .map_err(unavailable)?;
            for chunk in o.logs.chunks(LOG_ROWS_PER_INSERT) {
                let sql = insert_logs_sql(chunk.len());
                let mut params: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * 5);
                for l in chunk {
                    params.push(&id);
                    params.push(&l.attempt);
                    params.push(&l.seq);
                    params.push(&l.ts_ms);
                    params.push(&l.line);
                }
                c.execute(sql, &params).await.map_err(unavailable)?;
            }
            if status.is_final() {
                for d in &o.deliveries {
                    let params: [&dyn ToSql; 4] = [&id.as_str(), &d.output, &d.target.as_str(), &o.finished_ms];
                    let inserted = c.execute(INSERT_DELIVERY, &params).await.map_err(unavailable)?.total();
                    if inserted == 0 {
                        c.execute(RESET_DELIVERY, &params).await.map_err(unavailable)?;
                    }
                }
            }
            Ok(true)
        }
        .await;
        finish(&mut c, matches!(result, Ok(true))).await?;
        result
    }

    /// Fills a batch's counts: every status, zeros included.
    async fn batch_counts(&self, b: &mut Batch) -> Result<()> {
        let id = b.id.to_string();
        let rows = self.rows(BATCH_COUNTS, &[&id.as_str()]).await?;
        b.counts = Status::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
        for r in &rows {
            b.counts.insert(col::<&str>(r, 0)?.to_string(), col(r, 1)?);
        }
        Ok(())
    }

    async fn rows(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Row>> {
        let mut c = self.conn().await?;
        let stream = c.query(sql, params).await.map_err(unavailable)?;
        stream.into_first_result().await.map_err(unavailable)
    }
}

#[async_trait]
impl Store for MssqlStore {
    fn backend(&self) -> &'static str {
        "mssql"
    }

    async fn publish_version(
        &self,
        manifest: &Manifest,
        manifest_text: &str,
        package: &[u8],
        sha256: &str,
    ) -> Result<FunctionVersion> {
        let mut c = self.conn().await?;
        let now = now_ms();
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            // UPDLOCK + HOLDLOCK serialise publishers of one function until commit.
            let next: i64 =
                match c.query(NEXT_VERSION, &[&manifest.name.as_str()]).await.map_err(unavailable)?.into_row().await {
                    Ok(Some(r)) => col(&r, 0)?,
                    Ok(None) => 1,
                    Err(e) => return Err(unavailable(e)),
                };
            c.execute(
                INSERT_VERSION,
                &[&manifest.name.as_str(), &next, &sha256, &manifest_text, &package, &(package.len() as i64), &now],
            )
            .await
            .map_err(unavailable)?;
            let updated =
                c.execute(ACTIVATE_VERSION, &[&manifest.name.as_str(), &next, &now]).await.map_err(unavailable)?;
            if updated.total() == 0 {
                c.execute(INSERT_FUNCTION, &[&manifest.name.as_str(), &next, &now]).await.map_err(unavailable)?;
            }
            Ok(next)
        }
        .await;
        finish(&mut c, result.is_ok()).await?;
        let next = result?;
        Ok(FunctionVersion {
            name: manifest.name.clone(),
            version: next,
            sha256: sha256.to_string(),
            manifest: manifest_text.to_string(),
            size: package.len() as i64,
            created_ms: now,
        })
    }

    async fn list_functions(&self) -> Result<Vec<FunctionInfo>> {
        self.rows(LIST_FUNCTIONS, &[]).await?.iter().map(function_from).collect()
    }

    async fn get_function(&self, name: &str) -> Result<Option<FunctionInfo>> {
        self.rows(GET_FUNCTION, &[&name]).await?.first().map(function_from).transpose()
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<FunctionVersion>> {
        self.rows(LIST_VERSIONS, &[&name]).await?.iter().map(version_from).collect()
    }

    async fn get_version(&self, name: &str, version: i64) -> Result<Option<FunctionVersion>> {
        self.rows(GET_VERSION, &[&name, &version]).await?.first().map(version_from).transpose()
    }

    async fn get_package(&self, name: &str, version: i64) -> Result<Option<Vec<u8>>> {
        let rows = self.rows(GET_PACKAGE, &[&name, &version]).await?;
        rows.first().map(|r| col::<&[u8]>(r, 0).map(|b| b.to_vec())).transpose()
    }

    async fn create_invocation(&self, inv: &NewInvocation) -> Result<()> {
        let mut c = self.conn().await?;
        let origin = self.origin();
        insert_invocation(&mut c, inv, origin.as_deref()).await.map_err(|e| {
            if is_duplicate(&e) {
                StoreError::Conflict(format!("invocation {} exists already", inv.id))
            } else {
                unavailable(e)
            }
        })?;
        Ok(())
    }

    async fn claim(&self, inv: &NewInvocation, attempt: i32, worker: &str, started_ms: i64) -> Result<Claim> {
        let mut c = self.conn().await?;
        let id = inv.id.to_string();
        let updated = c
            .execute(CLAIM_UPDATE, &[&attempt, &worker, &started_ms, &inv.version, &id.as_str()])
            .await
            .map_err(unavailable)?;
        if updated.total() == 1 {
            return Ok(Claim::Run);
        }
        let inserted = c
            .execute(
                CLAIM_INSERT,
                &[
                    &id.as_str(),
                    &inv.function.as_str(),
                    &inv.version,
                    &attempt,
                    &inv.payload.as_slice(),
                    &worker,
                    &inv.created_ms,
                    &started_ms,
                ],
            )
            .await;
        match inserted {
            Ok(r) if r.rows_affected().iter().sum::<u64>() == 1 => return Ok(Claim::Run),
            Ok(_) => {}
            Err(e) if is_duplicate(&e) => {}
            Err(e) => return Err(unavailable(e)),
        }
        let row =
            c.query(GET_STATUS, &[&id.as_str()]).await.map_err(unavailable)?.into_row().await.map_err(unavailable)?;
        let row = row.ok_or_else(|| StoreError::Corrupt(format!("invocation {id} vanished while claimed")))?;
        Ok(claim_verdict(parse_status(col::<&str>(&row, 0)?)?, col(&row, 1)?, attempt))
    }

    async fn complete(&self, id: Uuid, o: &Outcome) -> Result<bool> {
        self.end_attempt(id, o, COMPLETE, o.status).await
    }

    async fn retry_later(&self, id: Uuid, o: &Outcome) -> Result<bool> {
        self.end_attempt(id, o, RETRY_LATER, Status::Queued).await
    }

    async fn replay(&self, id: Uuid) -> Result<Option<i32>> {
        let Some(inv) = self.get_invocation(id).await? else { return Ok(None) };
        if inv.status != Status::Dead {
            return Ok(None);
        }
        let next = inv.attempts + 1;
        let mut c = self.conn().await?;
        let id = id.to_string();
        let r = c.execute(REPLAY, &[&next, &id.as_str(), &inv.attempts]).await.map_err(unavailable)?;
        Ok((r.total() == 1).then_some(next))
    }

    async fn get_invocation(&self, id: Uuid) -> Result<Option<Invocation>> {
        let id = id.to_string();
        self.rows(GET_INVOCATION, &[&id.as_str()]).await?.first().map(invocation_from).transpose()
    }

    async fn list_invocations(&self, f: &InvocationFilter) -> Result<Vec<Invocation>> {
        let sql = list_invocations_sql(f.function.is_some(), f.status.is_some());
        let limit = f.limit.clamp(1, 10_000) as i64;
        let mut params: Vec<&dyn ToSql> = vec![&limit];
        if let Some(func) = &f.function {
            params.push(func);
        }
        let status = f.status.map(|s| s.as_str());
        if let Some(st) = &status {
            params.push(st);
        }
        self.rows(&sql, &params).await?.iter().map(invocation_from).collect()
    }

    async fn list_attempts(&self, id: Uuid) -> Result<Vec<AttemptRecord>> {
        let id = id.to_string();
        self.rows(LIST_ATTEMPTS, &[&id.as_str()])
            .await?
            .iter()
            .map(|r| {
                Ok(AttemptRecord {
                    attempt: col(r, 0)?,
                    status: parse_status(col::<&str>(r, 1)?)?,
                    error: opt::<&str>(r, 2)?.map(str::to_string),
                    worker: col::<&str>(r, 3)?.to_string(),
                    finished_ms: col(r, 4)?,
                })
            })
            .collect()
    }

    async fn get_logs(&self, id: Uuid) -> Result<Vec<LogLine>> {
        let id = id.to_string();
        self.rows(GET_LOGS, &[&id.as_str()])
            .await?
            .iter()
            .map(|r| {
                Ok(LogLine {
                    attempt: col(r, 0)?,
                    seq: col(r, 1)?,
                    ts_ms: col(r, 2)?,
                    line: col::<&str>(r, 3)?.to_string(),
                })
            })
            .collect()
    }

    async fn set_setting(&self, function: &str, s: &Setting) -> Result<()> {
        let mut c = self.conn().await?;
        let secret = s.secret as i32;
        let params: [&dyn ToSql; 5] = [&function, &s.name, &s.value, &secret, &s.updated_ms];
        let updated = c.execute(SETTING_UPDATE, &params).await.map_err(unavailable)?;
        if updated.total() == 0 {
            match c.execute(SETTING_INSERT, &params).await {
                Ok(_) => {}
                // Set concurrently: the other writer's value stands, as it would with an upsert.
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }

    async fn delete_setting(&self, function: &str, name: &str) -> Result<bool> {
        let mut c = self.conn().await?;
        Ok(c.execute(SETTING_DELETE, &[&function, &name]).await.map_err(unavailable)?.total() == 1)
    }

    async fn list_settings(&self, function: &str) -> Result<Vec<Setting>> {
        self.rows(SETTING_LIST, &[&function])
            .await?
            .iter()
            .map(|r| {
                Ok(Setting {
                    name: col::<&str>(r, 0)?.to_string(),
                    value: col::<&str>(r, 1)?.to_string(),
                    secret: col::<i32>(r, 2)? != 0,
                    updated_ms: col(r, 3)?,
                })
            })
            .collect()
    }

    async fn heartbeat(&self, w: &WorkerInfo) -> Result<()> {
        let mut c = self.conn().await?;
        let params: [&dyn ToSql; 9] = [
            &w.id,
            &w.host,
            &w.pools,
            &w.concurrency,
            &w.in_flight,
            &w.version,
            &w.started_ms,
            &w.last_seen_ms,
            &w.state,
        ];
        let updated = c.execute(HEARTBEAT_UPDATE, &params).await.map_err(unavailable)?;
        if updated.total() == 0 {
            match c.execute(HEARTBEAT_INSERT, &params).await {
                Ok(_) => {}
                // Raced with our own previous beat: the row exists now, which is what we wanted.
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }

    fn set_origin(&self, instance: &str) {
        *self.origin.write().unwrap_or_else(|p| p.into_inner()) = Some(instance.into());
    }

    async fn instance_alive(&self, instance: &str, settled_ms: i64, lease_ms: i64) -> Result<()> {
        let mut c = self.conn().await?;
        let params: [&dyn ToSql; 3] = [&instance, &settled_ms, &lease_ms];
        if c.execute(INSTANCE_UPDATE, &params).await.map_err(unavailable)?.total() == 0 {
            match c.execute(INSTANCE_INSERT, &params).await {
                Ok(_) => {}
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }

    async fn lapsed_instances(&self) -> Result<Vec<(String, i64)>> {
        self.rows(LAPSED_INSTANCES, &[])
            .await?
            .iter()
            .map(|r| Ok((col::<&str>(r, 0)?.to_string(), col::<i64>(r, 1)?)))
            .collect()
    }

    async fn settle_lapsed(&self, instance: &str, since_ms: i64, now_ms: i64, why: &Settled) -> Result<(u64, u64)> {
        let mut c = self.conn().await?;
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            // Still lapsed (not renewed since it was listed), and dropped: one settler does it.
            if c.execute(FORGET_INSTANCE, &[&instance]).await.map_err(unavailable)?.total() == 0 {
                return Ok(None);
            }
            let invocations = c
                .execute(SETTLE_INVOCATIONS, &[&why.invocation.as_str(), &now_ms, &since_ms, &instance])
                .await
                .map_err(unavailable)?
                .total();
            let origin = Some(instance);
            let batches =
                c.execute(SEAL_SUBMITTING, &[&why.batch.as_str(), &origin]).await.map_err(unavailable)?.total();
            Ok(Some((invocations, batches)))
        }
        .await;
        finish(&mut c, matches!(result, Ok(Some(_)))).await?;
        result.map(|r| r.unwrap_or((0, 0)))
    }

    async fn abandon_unfinished(&self, now_ms: i64, why: &Settled) -> Result<(u64, u64)> {
        let mut c = self.conn().await?;
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            let invocations = c
                .execute(ABANDON_INVOCATIONS, &[&why.invocation.as_str(), &now_ms])
                .await
                .map_err(unavailable)?
                .total();
            let all: Option<&str> = None;
            let batches = c.execute(SEAL_SUBMITTING, &[&why.batch.as_str(), &all]).await.map_err(unavailable)?.total();
            Ok((invocations, batches))
        }
        .await;
        finish(&mut c, result.is_ok()).await?;
        result
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        self.rows(LIST_WORKERS, &[]).await?.iter().map(worker_from).collect()
    }

    async fn create_batch(&self, b: &NewBatch) -> Result<()> {
        let mut c = self.conn().await?;
        let id = b.id.to_string();
        let origin = self.origin();
        let params: [&dyn ToSql; 6] =
            [&id.as_str(), &b.function.as_str(), &b.version, &b.then.as_deref(), &b.created_ms, &origin.as_deref()];
        c.execute(CREATE_BATCH, &params).await.map_err(unavailable)?;
        Ok(())
    }

    async fn add_batch_items(&self, batch: Uuid, items: &[NewInvocation]) -> Result<()> {
        let mut c = self.conn().await?;
        let batch = batch.to_string();
        let origin = self.origin().map(|o| o.to_string());
        // All or nothing: a half-recorded chunk would hold the batch open forever.
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            for chunk in items.chunks(ITEM_ROWS_PER_INSERT) {
                let ids: Vec<String> = chunk.iter().map(|inv| inv.id.to_string()).collect();
                let sql = insert_items_sql(chunk.len());
                let mut params: Vec<&dyn ToSql> = Vec::with_capacity(2 + chunk.len() * 5);
                params.push(&batch);
                params.push(&origin);
                for (inv, id) in chunk.iter().zip(&ids) {
                    params.push(id);
                    params.push(&inv.function);
                    params.push(&inv.version);
                    params.push(&inv.payload);
                    params.push(&inv.created_ms);
                }
                c.execute(sql, &params).await.map_err(unavailable)?;
            }
            Ok(())
        }
        .await;
        finish(&mut c, result.is_ok()).await?;
        result
    }

    async fn seal_batch(&self, batch: Uuid, total: i64, error: Option<&str>) -> Result<()> {
        let mut c = self.conn().await?;
        let id = batch.to_string();
        c.execute(SEAL_BATCH, &[&total, &error, &id.as_str()]).await.map_err(unavailable)?;
        Ok(())
    }

    async fn get_batch(&self, batch: Uuid) -> Result<Option<Batch>> {
        let id = batch.to_string();
        let rows = self.rows(GET_BATCH, &[&id.as_str()]).await?;
        let Some(row) = rows.first() else { return Ok(None) };
        let mut b = batch_from(row)?;
        self.batch_counts(&mut b).await?;
        Ok(Some(b))
    }

    async fn list_batches(&self, limit: u32) -> Result<Vec<Batch>> {
        let limit = limit.clamp(1, 1000) as i64;
        let rows = self.rows(LIST_BATCHES, &[&limit]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut b = batch_from(r)?;
            self.batch_counts(&mut b).await?;
            out.push(b);
        }
        Ok(out)
    }

    async fn open_batches(&self) -> Result<Vec<Batch>> {
        self.rows(OPEN_BATCHES, &[]).await?.iter().map(batch_from).collect()
    }

    async fn batch_state(&self, batch: Uuid) -> Result<Option<String>> {
        let id = batch.to_string();
        let rows = self.rows(BATCH_STATE, &[&id.as_str()]).await?;
        rows.first().map(|r| col::<&str>(r, 0).map(str::to_string)).transpose()
    }

    async fn batch_unfinished(&self, batch: Uuid) -> Result<i64> {
        let id = batch.to_string();
        let rows = self.rows(BATCH_UNFINISHED, &[&id.as_str()]).await?;
        rows.first().map(|r| col(r, 0)).transpose().map(|n| n.unwrap_or(0))
    }

    async fn cancel_batch(&self, batch: Uuid, now_ms: i64) -> Result<Option<u64>> {
        let mut c = self.conn().await?;
        let id = batch.to_string();
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            let row = c
                .query(BATCH_STATE_LOCKED, &[&id.as_str()])
                .await
                .map_err(unavailable)?
                .into_row()
                .await
                .map_err(unavailable)?;
            let Some(row) = row else { return Ok(None) };
            match col::<&str>(&row, 0)? {
                "done" | "finishing" => {
                    return Err(StoreError::Conflict(format!("batch {batch} has finished already; nothing to cancel")))
                }
                _ => {}
            }
            c.execute(CANCEL_BATCH, &[&id.as_str()]).await.map_err(unavailable)?;
            let n = c.execute(CANCEL_ITEMS, &[&now_ms, &id.as_str()]).await.map_err(unavailable)?.total();
            Ok(Some(n))
        }
        .await;
        finish(&mut c, matches!(result, Ok(Some(_)))).await?;
        result
    }

    async fn batch_results(&self, batch: Uuid, after: Option<Uuid>, limit: u32) -> Result<Vec<ItemResult>> {
        let limit = limit.clamp(1, 100_000) as i64;
        let id = batch.to_string();
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        self.rows(BATCH_RESULTS, &[&limit, &id.as_str(), &after.as_str()])
            .await?
            .iter()
            .map(|r| {
                Ok(ItemResult {
                    id: parse_uuid(col::<&str>(r, 0)?)?,
                    status: parse_status(col::<&str>(r, 1)?)?,
                    result: opt::<&[u8]>(r, 2)?.map(|b| b.to_vec()),
                    error: opt::<&str>(r, 3)?.map(str::to_string),
                })
            })
            .collect()
    }

    async fn begin_fanin(&self, batch: Uuid, f: &NewInvocation) -> Result<bool> {
        let mut c = self.conn().await?;
        let batch = batch.to_string();
        let fid = f.id.to_string();
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            // Conditional: of several instances, one moves the batch on.
            let won =
                c.execute(BEGIN_FANIN, &[&fid.as_str(), &batch.as_str()]).await.map_err(unavailable)?.total() == 1;
            if !won {
                return Ok(false);
            }
            // Not tagged: a `finishing` batch's follow-up is republished by the fan-in sweep.
            insert_invocation(&mut c, f, None).await.map_err(unavailable)?;
            Ok(true)
        }
        .await;
        finish(&mut c, matches!(result, Ok(true))).await?;
        result
    }

    async fn end_batch(&self, batch: Uuid, state: &str, finished_ms: i64) -> Result<()> {
        let mut c = self.conn().await?;
        let id = batch.to_string();
        c.execute(END_BATCH, &[&state, &finished_ms, &id.as_str()]).await.map_err(unavailable)?;
        Ok(())
    }

    async fn fire_tick(&self, function: &str, tick_ms: i64, inv: &NewInvocation) -> Result<bool> {
        let origin = self.origin();
        let mut c = self.conn().await?;
        let id = inv.id.to_string();
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            // Two instances may both pass the NOT EXISTS; the primary key refuses the second.
            let fired = match c.execute(INSERT_TICK, &[&function, &tick_ms, &id.as_str()]).await {
                Ok(r) => r.total() == 1,
                Err(e) if is_duplicate(&e) => false,
                Err(e) => return Err(unavailable(e)),
            };
            if !fired {
                return Ok(false);
            }
            insert_invocation(&mut c, inv, origin.as_deref()).await.map_err(unavailable)?;
            Ok(true)
        }
        .await;
        finish(&mut c, matches!(result, Ok(true))).await?;
        result
    }

    async fn last_tick(&self, function: &str) -> Result<Option<i64>> {
        let rows = self.rows(LAST_TICK, &[&function]).await?;
        Ok(rows.first().map(|r| opt::<i64>(r, 0)).transpose()?.flatten())
    }

    async fn take_deliveries(&self, now_ms: i64, lease_ms: i64, limit: u32) -> Result<Vec<DeliveryRecord>> {
        let limit = limit.clamp(1, 1000) as i64;
        let mut c = self.conn().await?;
        let rows = c
            .query(DUE_DELIVERIES, &[&limit, &now_ms])
            .await
            .map_err(unavailable)?
            .into_first_result()
            .await
            .map_err(unavailable)?;
        let due = rows.iter().map(delivery_from).collect::<Result<Vec<_>>>()?;
        let until = now_ms + lease_ms;
        let mut out = Vec::with_capacity(due.len());
        for mut d in due {
            // Compare-and-set on next_ms: of several instances, one takes it.
            let id = d.invocation.to_string();
            let leased = c
                .execute(LEASE_DELIVERY, &[&until, &id.as_str(), &d.output, &d.next_ms])
                .await
                .map_err(unavailable)?
                .total()
                == 1;
            if leased {
                d.next_ms = until;
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
        let mut c = self.conn().await?;
        let id = invocation.to_string();
        let now = now_ms();
        c.execute(RECORD_DELIVERY, &[&status, &attempts, &error, &next_ms, &now, &id.as_str(), &output])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn list_deliveries(&self, invocation: Uuid) -> Result<Vec<DeliveryRecord>> {
        let id = invocation.to_string();
        self.rows(LIST_DELIVERIES, &[&id.as_str()]).await?.iter().map(delivery_from).collect()
    }

    async fn retry_deliveries(&self, invocation: Uuid, now_ms: i64) -> Result<u64> {
        let mut c = self.conn().await?;
        let id = invocation.to_string();
        Ok(c.execute(RETRY_DELIVERIES, &[&now_ms, &id.as_str()]).await.map_err(unavailable)?.total())
    }

    async fn count_per_minute(&self, since_ms: i64, until_ms: i64) -> Result<Vec<MinuteCount>> {
        self.rows(COUNT_PER_MINUTE, &[&since_ms, &until_ms])
            .await?
            .iter()
            .map(|r| {
                Ok(MinuteCount { minute_ms: col(r, 0)?, status: parse_status(col::<&str>(r, 1)?)?, count: col(r, 2)? })
            })
            .collect()
    }

    async fn create_key(&self, key: &ApiKey) -> Result<()> {
        let mut c = self.conn().await?;
        let id = key.id.to_string();
        let params: [&dyn ToSql; 7] =
            [&id, &key.name, &key.level.as_str(), &key.function, &key.hash, &key.created_ms, &key.revoked_ms];
        match c.execute(KEY_INSERT, &params).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Err(StoreError::Conflict("a key with this id or hash exists".into())),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        self.rows(KEY_LIST, &[]).await?.iter().map(key_from).collect()
    }

    async fn find_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        self.rows(KEY_BY_HASH, &[&hash]).await?.first().map(key_from).transpose()
    }

    async fn revoke_key(&self, id: Uuid, revoked_ms: i64) -> Result<bool> {
        let mut c = self.conn().await?;
        let id = id.to_string();
        Ok(c.execute(KEY_REVOKE, &[&revoked_ms, &id]).await.map_err(unavailable)?.total() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_parses_as_tsql() {
        let dialect = sqlparser::dialect::MsSqlDialect {};
        let mut refused = Vec::new();
        for sql in statements() {
            if let Err(e) = sqlparser::parser::Parser::parse_sql(&dialect, &sql) {
                refused.push(format!("{sql}\n  -> {e}"));
            }
        }
        assert!(refused.is_empty(), "T-SQL the parser refused:\n{}", refused.join("\n"));
    }

    #[test]
    fn batch_item_inserts_stay_under_the_parameter_limit() {
        assert_eq!(
            insert_items_sql(2),
            format!("{INSERT_ITEMS_PREFIX}(@P3, @P4, @P5, 'queued', 0, @P6, @P7, @P1, @P2), (@P8, @P9, @P10, 'queued', 0, @P11, @P12, @P1, @P2)")
        );
        let full = insert_items_sql(ITEM_ROWS_PER_INSERT);
        let last = 2 + ITEM_ROWS_PER_INSERT * 5;
        assert!(full.contains(&format!("@P{last}, @P1, @P2)")) && !full.contains(&format!("@P{}", last + 1)));
        // sp_executesql's own two parameters count too.
        assert!(last + 2 <= 2100);
    }

    #[test]
    fn url_becomes_config() {
        let c = config_from_url("mssql://sa:p%40ss@db.local:1444/warren").unwrap();
        assert_eq!(c.get_addr(), "db.local:1444");
        assert_eq!(percent_decode("p%40ss"), "p@ss");
    }
}
