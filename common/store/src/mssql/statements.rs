//! Every T-SQL statement of the SQL Server backend, as constants listed in [`statements`] so
//! that a test parses each one with a SQL Server dialect where no SQL Server runs.

use crate::guard::open_invocation;

/// The schema's steps (see `crate::migrate`), one statement each (T-SQL compiles a batch before
/// running it, so a column added by one statement is not seen by the next in the same batch).
/// Steps 1 to 3 are numbered 0 to 8; from step 4 on, step N's statements are numbered
/// N * 100, N * 100 + 1, ...
pub(super) const SCHEMA: &[(i32, &str)] = &[
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
    // Step 8: idempotency keys of invokes: which invocation a key named, for which body.
    (
        800,
        "CREATE TABLE warren_idempotency (
        function_name NVARCHAR(64) NOT NULL,
        idem_key NVARCHAR(255) NOT NULL,
        body_sha256 NVARCHAR(64) NOT NULL,
        invocation NVARCHAR(36) NOT NULL,
        created_ms BIGINT NOT NULL,
        CONSTRAINT pk_warren_idempotency PRIMARY KEY (function_name, idem_key))",
    ),
    (801, "CREATE INDEX warren_idempotency_created ON warren_idempotency (created_ms)"),
    (
        900,
        "CREATE TABLE warren_duties (
        name NVARCHAR(200) NOT NULL PRIMARY KEY,
        holder NVARCHAR(200) NOT NULL,
        until_ms BIGINT NOT NULL,
        report NVARCHAR(MAX) NULL,
        report_ms BIGINT NULL)",
    ),
    (901, "CREATE INDEX warren_batches_function_finished ON warren_batches (function_name, finished_ms)"),
    (1000, "ALTER TABLE warren_functions ADD paused_ms BIGINT NULL"),
    (1001, "ALTER TABLE warren_functions ADD resume_at_ms BIGINT NULL"),
    (1002, "ALTER TABLE warren_functions ADD held_ms BIGINT NULL"),
    (1100, "ALTER TABLE warren_invocations ADD run_at_ms BIGINT NULL"),
    (
        1200,
        "CREATE TABLE warren_turns (
        function_name NVARCHAR(64) NOT NULL,
        turn INT NOT NULL,
        invocation NVARCHAR(36) NOT NULL,
        until_ms BIGINT NOT NULL,
        CONSTRAINT pk_warren_turns PRIMARY KEY (function_name, turn))",
    ),
];

pub(super) const SCHEMA_EXISTS: &str = "SELECT CASE WHEN OBJECT_ID(N'warren_schema', N'U') IS NULL THEN 0 ELSE 1 END";
pub(super) const SCHEMA_CREATE: &str =
    "CREATE TABLE warren_schema (step INT NOT NULL PRIMARY KEY, applied_ms BIGINT NOT NULL)";
pub(super) const SCHEMA_STEPS: &str = "SELECT step FROM warren_schema";
pub(super) const SCHEMA_RECORD: &str = "INSERT INTO warren_schema (step, applied_ms) VALUES (@P1, @P2)";
pub(super) const MIGRATE_LOCK: &str =
    "EXEC sp_getapplock @Resource = 'warren_migrate', @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = 60000";
pub(super) const MIGRATE_UNLOCK: &str = "EXEC sp_releaseapplock @Resource = 'warren_migrate', @LockOwner = 'Session'";

/// After the newest version, or after the newest a deleted function had (its tombstone: see
/// `TOMBSTONE_FUNCTION`).
pub(super) const NEXT_VERSION: &str = "SELECT COALESCE(MAX(v), 0) + 1 FROM (
       SELECT MAX(version) AS v FROM warren_versions WITH (UPDLOCK, HOLDLOCK) WHERE name = @P1
       UNION ALL SELECT -active_version FROM warren_functions WITH (UPDLOCK, HOLDLOCK)
         WHERE name = @P1 AND active_version < 0) AS t";
pub(super) const INSERT_VERSION: &str =
    "INSERT INTO warren_versions (name, version, sha256, manifest, package, size, created_ms)
     VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7)";
pub(super) const ACTIVATE_VERSION: &str = "UPDATE warren_functions SET active_version = @P2, updated_ms = @P3,
       created_ms = CASE WHEN active_version < 0 THEN @P3 ELSE created_ms END
     WHERE name = @P1";
/// A draft: active only where nothing is (a deleted function).
pub(super) const DRAFT_VERSION: &str = "UPDATE warren_functions SET
       active_version = CASE WHEN active_version < 0 THEN @P2 ELSE active_version END, updated_ms = @P3,
       created_ms = CASE WHEN active_version < 0 THEN @P3 ELSE created_ms END
     WHERE name = @P1";
pub(super) const INSERT_FUNCTION: &str =
    "INSERT INTO warren_functions (name, active_version, created_ms, updated_ms) VALUES (@P1, @P2, @P3, @P3)";
pub(super) const LIST_FUNCTIONS: &str =
    "SELECT name, active_version, created_ms, updated_ms, paused_ms, resume_at_ms FROM warren_functions WHERE active_version > 0 ORDER BY name";
pub(super) const GET_FUNCTION: &str =
    "SELECT name, active_version, created_ms, updated_ms, paused_ms, resume_at_ms FROM warren_functions WHERE name = @P1 AND active_version > 0";
pub(super) const LIST_VERSIONS: &str = "SELECT name, version, sha256, manifest, size, created_ms FROM warren_versions
     WHERE name = @P1 ORDER BY version DESC";
pub(super) const GET_VERSION: &str = "SELECT name, version, sha256, manifest, size, created_ms FROM warren_versions
     WHERE name = @P1 AND version = @P2";
pub(super) const GET_PACKAGE: &str = "SELECT package FROM warren_versions WHERE name = @P1 AND version = @P2";
pub(super) const ACTIVATE_EXISTING: &str = "UPDATE warren_functions SET active_version = @P2, updated_ms = @P3
     WHERE name = @P1 AND active_version > 0
       AND EXISTS (SELECT 1 FROM warren_versions WHERE name = @P1 AND version = @P2)";
/// A deleted function keeps its row as a tombstone, `active_version` set to minus its newest
/// version, which no read returns: a later publish numbers on after it, so a version number is
/// never reused (workers keep what they read of a version for good). Also locks the row until
/// commit, so that a publish of the name waits for the delete's outcome.
pub(super) const TOMBSTONE_FUNCTION: &str = "UPDATE warren_functions
     SET active_version = -COALESCE((SELECT MAX(version) FROM warren_versions WHERE name = @P1), active_version),
       updated_ms = @P2, paused_ms = NULL, resume_at_ms = NULL, held_ms = NULL
     WHERE name = @P1 AND active_version > 0";
/// Queued or running: a record failed "not queued" never ends, and does not keep the function.
pub(super) const COUNT_OPEN_INVOCATIONS: &str =
    "SELECT COUNT_BIG(*) FROM warren_invocations WHERE function_name = @P1 AND status IN ('queued', 'running')";
pub(super) const COUNT_OPEN_BATCHES: &str = "SELECT COUNT_BIG(*) FROM warren_batches
     WHERE (function_name = @P1 OR then_function = @P1)
     AND (state IN ('submitting', 'running', 'finishing') OR (state = 'cancelled' AND finished_ms IS NULL))";
pub(super) const DELETE_FUNCTION_ROWS: &[&str] = &[
    "DELETE FROM warren_settings WHERE function_name = @P1",
    "DELETE FROM warren_ticks WHERE function_name = @P1",
    "DELETE FROM warren_idempotency WHERE function_name = @P1",
    "DELETE FROM warren_versions WHERE name = @P1",
];
/// A key taken anew when it names nothing, or only what it named before `@P6` (past the window).
pub(super) const IDEM_RENEW: &str = "UPDATE warren_idempotency WITH (UPDLOCK, HOLDLOCK)
     SET body_sha256 = @P3, invocation = @P4, created_ms = @P5
     WHERE function_name = @P1 AND idem_key = @P2 AND created_ms < @P6";
pub(super) const IDEM_INSERT: &str = "INSERT INTO warren_idempotency (function_name, idem_key, body_sha256, invocation, created_ms)
     SELECT @P1, @P2, @P3, @P4, @P5
     WHERE NOT EXISTS (SELECT 1 FROM warren_idempotency WITH (UPDLOCK, HOLDLOCK) WHERE function_name = @P1 AND idem_key = @P2)";
pub(super) const IDEM_GET: &str =
    "SELECT invocation, body_sha256 FROM warren_idempotency WHERE function_name = @P1 AND idem_key = @P2";
pub(super) const IDEM_EXPIRE: &str = "DELETE w FROM warren_idempotency AS w
     INNER JOIN (SELECT TOP (@P2) function_name, idem_key FROM warren_idempotency WHERE created_ms < @P1) AS o
       ON w.function_name = o.function_name AND w.idem_key = o.idem_key";
pub(super) const IDEM_FORGET: &str =
    "DELETE FROM warren_idempotency WHERE function_name = @P1 AND idem_key = @P2 AND invocation = @P3";
pub(super) const CREATE_INVOCATION: &str =
    "INSERT INTO warren_invocations (id, function_name, version, status, attempts, payload, created_ms, origin)
     VALUES (@P1, @P2, @P3, 'queued', 0, @P4, @P5, @P6)";
pub(super) const CLAIM_UPDATE: &str = concat!(
    "UPDATE warren_invocations
     SET status = 'running', attempts = @P1, worker = @P2, started_ms = @P3, version = @P4
     WHERE id = @P5 AND ",
    open_invocation!(),
    " AND attempts <= @P1"
);
pub(super) const CLAIM_INSERT: &str = "INSERT INTO warren_invocations
     (id, function_name, version, status, attempts, payload, worker, created_ms, started_ms)
     SELECT @P1, @P2, @P3, 'running', @P4, @P5, @P6, @P7, @P8
     WHERE NOT EXISTS (SELECT 1 FROM warren_invocations WHERE id = @P1)";
pub(super) const GET_STATUS: &str = "SELECT status, attempts FROM warren_invocations WHERE id = @P1";
pub(super) const COMPLETE: &str = concat!(
    "UPDATE warren_invocations
     SET status = @P1, attempts = @P2, result = @P3, error = @P4, worker = @P5, finished_ms = @P6,
       started_ms = COALESCE(@P8, started_ms), version = COALESCE(@P9, version)
     WHERE id = @P7 AND ",
    open_invocation!(),
    " AND attempts <= @P2"
);
pub(super) const RETRY_LATER: &str = concat!(
    "UPDATE warren_invocations
     SET status = @P1, attempts = @P2 + 1, result = @P3, error = @P4, worker = @P5, finished_ms = @P6,
       started_ms = COALESCE(@P8, started_ms), version = COALESCE(@P9, version)
     WHERE id = @P7 AND ",
    open_invocation!(),
    " AND attempts <= @P2"
);
pub(super) const INSERT_ATTEMPT: &str =
    "INSERT INTO warren_attempts (invocation, attempt, status, error, worker, finished_ms)
     VALUES (@P1, @P2, @P3, @P4, @P5, @P6)";
pub(super) const REPLAY: &str = "UPDATE warren_invocations SET status = 'queued', attempts = @P1, finished_ms = NULL
     WHERE id = @P2 AND status = 'dead' AND attempts = @P3";
pub(super) const LIST_ATTEMPTS: &str =
    "SELECT attempt, status, error, worker, finished_ms FROM warren_attempts WHERE invocation = @P1 ORDER BY attempt";
pub(super) const SETTING_UPDATE: &str =
    "UPDATE warren_settings SET value = @P3, secret = @P4, updated_ms = @P5 WHERE function_name = @P1 AND name = @P2";
pub(super) const SETTING_INSERT: &str = "INSERT INTO warren_settings (function_name, name, value, secret, updated_ms)
     VALUES (@P1, @P2, @P3, @P4, @P5)";
pub(super) const SETTING_DELETE: &str = "DELETE FROM warren_settings WHERE function_name = @P1 AND name = @P2";
pub(super) const SETTING_LIST: &str =
    "SELECT name, value, secret, updated_ms FROM warren_settings WHERE function_name = @P1 ORDER BY name";
pub(super) const INVOCATION_SELECT: &str =
    "SELECT TOP (@P1) id, function_name, version, status, attempts, payload, result,
     error, worker, created_ms, started_ms, finished_ms, run_at_ms FROM warren_invocations WHERE 1 = 1";
/// One line of a run still going, unless it is stored already.
pub(super) const APPEND_LOG: &str = "INSERT INTO warren_logs (invocation, attempt, seq, ts_ms, line)
     SELECT @P1, @P2, @P3, @P4, @P5 WHERE NOT EXISTS
       (SELECT 1 FROM warren_logs WHERE invocation = @P1 AND attempt = @P2 AND seq = @P3)";
/// An attempt's lines stored while it ran, replaced by all of them with its outcome.
pub(super) const DELETE_ATTEMPT_LOGS: &str = "DELETE FROM warren_logs WHERE invocation = @P1 AND attempt = @P2";
pub(super) const INSERT_LOGS_PREFIX: &str = "INSERT INTO warren_logs (invocation, attempt, seq, ts_ms, line) VALUES ";
pub(super) const TURN_RENEW: &str =
    "UPDATE warren_turns SET until_ms = @P1 WHERE function_name = @P2 AND invocation = @P3";
/// A lapsed turn taken over.
pub(super) const TURN_TAKE_OVER: &str = "UPDATE warren_turns SET invocation = @P3, until_ms = @P4
     WHERE function_name = @P1 AND turn = @P2 AND until_ms < @P5";
/// A free turn taken (a taker racing for it gets a duplicate key: not taken).
pub(super) const TURN_INSERT: &str = "INSERT INTO warren_turns (function_name, turn, invocation, until_ms)
     SELECT @P1, @P2, @P3, @P4 WHERE NOT EXISTS
       (SELECT 1 FROM warren_turns WITH (UPDLOCK, HOLDLOCK) WHERE function_name = @P1 AND turn = @P2)";
pub(super) const TURN_GIVE: &str = "DELETE FROM warren_turns WHERE function_name = @P1 AND invocation = @P2";
/// A scheduled invocation's time, set in the transaction that records it.
pub(super) const SET_RUN_AT: &str = "UPDATE warren_invocations SET run_at_ms = @P1 WHERE id = @P2";
pub(super) const CANCEL_INVOCATION: &str = "UPDATE warren_invocations SET status = 'cancelled', finished_ms = @P1,
       error = 'cancelled before it ended'
     WHERE id = @P2 AND status IN ('queued', 'running')";
pub(super) const GET_INVOCATION: &str =
    "SELECT id, function_name, version, status, attempts, payload, result, error, worker,
     created_ms, started_ms, finished_ms, run_at_ms FROM warren_invocations WHERE id = @P1";
pub(super) const GET_LOGS: &str =
    "SELECT attempt, seq, ts_ms, line FROM warren_logs WHERE invocation = @P1 ORDER BY attempt, seq";
pub(super) const HEARTBEAT_UPDATE: &str =
    "UPDATE warren_workers SET host = @P2, pools = @P3, concurrency = @P4, in_flight = @P5,
     version = @P6, last_seen_ms = @P8, state = @P9 WHERE id = @P1";
pub(super) const HEARTBEAT_INSERT: &str = "INSERT INTO warren_workers
     (id, host, pools, concurrency, in_flight, version, started_ms, last_seen_ms, state)
     VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9)";
pub(super) const LIST_WORKERS: &str =
    "SELECT id, host, pools, concurrency, in_flight, version, started_ms, last_seen_ms, state
     FROM warren_workers ORDER BY id";
pub(super) const CREATE_BATCH: &str =
    "INSERT INTO warren_batches (id, function_name, version, then_function, total, state, created_ms, origin)
     VALUES (@P1, @P2, @P3, @P4, 0, 'submitting', @P5, @P6)";
pub(super) const INSERT_ITEMS_PREFIX: &str =
    "INSERT INTO warren_invocations (id, function_name, version, status, attempts, payload, created_ms, batch, origin) VALUES ";
/// Lease times are the store's clock: milliseconds since the epoch, UTC (SQL Server 2016+).
macro_rules! clock_ms {
    () => {
        "DATEDIFF_BIG(millisecond, '1970-01-01', SYSUTCDATETIME())"
    };
}
pub(super) const INSTANCE_UPDATE: &str =
    concat!("UPDATE warren_instances SET seen_ms = ", clock_ms!(), ", settled_ms = @P2, lease_ms = @P3 WHERE id = @P1");
pub(super) const INSTANCE_INSERT: &str = concat!(
    "INSERT INTO warren_instances (id, seen_ms, settled_ms, lease_ms) VALUES (@P1, ",
    clock_ms!(),
    ", @P2, @P3)"
);
pub(super) const LAPSED_INSTANCES: &str =
    concat!("SELECT id, settled_ms FROM warren_instances WHERE seen_ms + lease_ms < ", clock_ms!(), " ORDER BY id");
/// Pauses @P1 at @P2 until @P3 (a paused one keeps its start).
pub(super) const PAUSE: &str = "UPDATE warren_functions SET paused_ms = COALESCE(paused_ms, @P2), resume_at_ms = @P3,
       held_ms = COALESCE(paused_ms, @P2)
     WHERE name = @P1 AND active_version > 0";
/// Resumes @P1 at @P2; its hold stays (from @P2) until a drain ends it.
pub(super) const RESUME: &str = "UPDATE warren_functions SET paused_ms = NULL, resume_at_ms = NULL, held_ms = @P2
     WHERE name = @P1 AND paused_ms IS NOT NULL";
pub(super) const RESUME_DUE: &str = "UPDATE warren_functions SET paused_ms = NULL, resume_at_ms = NULL, held_ms = @P2
     WHERE name = @P1 AND paused_ms IS NOT NULL AND resume_at_ms <= @P2";
pub(super) const HOLDS: &str = "SELECT name, paused_ms, resume_at_ms, held_ms FROM warren_functions
     WHERE held_ms IS NOT NULL AND active_version > 0 ORDER BY name";
pub(super) const MARK_HELD: &str = "UPDATE warren_functions SET held_ms = @P2
     WHERE name = @P1 AND active_version > 0 AND (held_ms IS NULL OR held_ms < @P2)";
pub(super) const DRAINED: &str = "UPDATE warren_functions SET held_ms = NULL
     WHERE name = @P1 AND paused_ms IS NULL AND held_ms = @P2";
/// A duty's lease renewed by its holder, or taken over once lapsed (by the store's clock).
pub(super) const DUTY_RENEW: &str = concat!(
    "UPDATE warren_duties WITH (UPDLOCK, HOLDLOCK) SET holder = @P2, until_ms = ",
    clock_ms!(),
    " + @P3 WHERE name = @P1 AND (holder = @P2 OR until_ms < ",
    clock_ms!(),
    ")"
);
pub(super) const DUTY_INSERT: &str = concat!(
    "INSERT INTO warren_duties (name, holder, until_ms) SELECT @P1, @P2, ",
    clock_ms!(),
    " + @P3 WHERE NOT EXISTS (SELECT 1 FROM warren_duties WITH (UPDLOCK, HOLDLOCK) WHERE name = @P1)"
);
pub(super) const DUTY_REPORT: &str =
    "UPDATE warren_duties SET report = @P3, report_ms = @P4 WHERE name = @P1 AND holder = @P2";
pub(super) const DUTY_GET: &str = "SELECT holder, until_ms, report, report_ms FROM warren_duties WHERE name = @P1";
pub(super) const RETENTION_SUBJECTS: &str = "SELECT f.name, v.manifest FROM warren_functions f
     LEFT JOIN warren_versions v ON v.name = f.name AND v.version = f.active_version ORDER BY f.name";
pub(super) const ENDED_BATCHES: &str = "SELECT TOP (8) id FROM warren_batches
     WHERE function_name = @P1 AND finished_ms < @P2 AND (state = 'done' OR state = 'cancelled') ORDER BY finished_ms";
pub(super) const DELETE_EMPTY_BATCH: &str = "DELETE FROM warren_batches WHERE id = @P1
     AND NOT EXISTS (SELECT 1 FROM warren_invocations WHERE batch = @P1)";
pub(super) const LOCK_QUIET_FUNCTION: &str =
    "UPDATE warren_functions SET updated_ms = updated_ms WHERE name = @P1 AND updated_ms < @P2";
pub(super) const PURGE_VERSIONS: &str = "DELETE FROM warren_versions WHERE name = @P1
       AND version <= (SELECT MAX(version) FROM warren_versions WHERE name = @P1) - @P2
       AND version <> (SELECT active_version FROM warren_functions WHERE name = @P1)
       AND NOT EXISTS (SELECT 1 FROM warren_invocations i WHERE i.status IN ('queued', 'running')
         AND i.function_name = @P1 AND i.version = warren_versions.version)
       AND NOT EXISTS (SELECT 1 FROM warren_batches b WHERE b.function_name = @P1 AND b.version = warren_versions.version
         AND (b.state IN ('submitting', 'running', 'finishing') OR (b.state = 'cancelled' AND b.finished_ms IS NULL)))";
pub(super) const PURGE_TICKS: &str = "DELETE t FROM warren_ticks AS t
     INNER JOIN (SELECT TOP (@P3) tick_ms FROM warren_ticks WHERE function_name = @P1 AND tick_ms < @P2
         AND tick_ms < (SELECT MAX(tick_ms) FROM warren_ticks WHERE function_name = @P1) ORDER BY tick_ms) AS o
       ON o.tick_ms = t.tick_ms
     WHERE t.function_name = @P1";
pub(super) const SETTLE_INVOCATIONS: &str =
    "UPDATE warren_invocations SET status = 'failed', error = @P1, finished_ms = @P2
     WHERE status = 'queued' AND attempts = 0 AND created_ms >= @P3 AND origin = @P4";
/// Ends the submission of the batches still `submitting` of origin @P2, or of all when @P2 is
/// NULL: `running`, with the items recorded as their total and @P1 as error (unless they have one).
pub(super) const SEAL_SUBMITTING: &str = "UPDATE warren_batches SET state = 'running', error = COALESCE(error, @P1),
       total = (SELECT COUNT(*) FROM warren_invocations i WHERE i.batch = warren_batches.id)
     WHERE state = 'submitting' AND (@P2 IS NULL OR origin = @P2)";
pub(super) const ABANDON_INVOCATIONS: &str =
    "UPDATE warren_invocations SET status = 'failed', error = @P1, finished_ms = @P2
     WHERE status IN ('queued', 'running')";
pub(super) const FORGET_INSTANCE: &str =
    concat!("DELETE FROM warren_instances WHERE id = @P1 AND seen_ms + lease_ms < ", clock_ms!());
pub(super) const SEAL_BATCH: &str = "UPDATE warren_batches SET total = @P1, error = @P2,
       state = CASE WHEN state = 'submitting' THEN 'running' ELSE state END
     WHERE id = @P3";
pub(super) const GET_BATCH: &str =
    "SELECT id, function_name, version, then_function, total, state, followup, error, created_ms,
     finished_ms FROM warren_batches WHERE id = @P1";
pub(super) const LIST_BATCHES: &str =
    "SELECT TOP (@P1) id, function_name, version, then_function, total, state, followup, error,
     created_ms, finished_ms FROM warren_batches ORDER BY created_ms DESC, id DESC";
pub(super) const OPEN_BATCHES: &str = "SELECT id, function_name, version, then_function, total, state, followup, error,
     created_ms, finished_ms FROM warren_batches
     WHERE state IN ('running', 'finishing') OR (state = 'cancelled' AND finished_ms IS NULL)";
pub(super) const BATCH_COUNTS: &str =
    "SELECT status, COUNT_BIG(*) FROM warren_invocations WHERE batch = @P1 GROUP BY status";
pub(super) const BATCH_UNFINISHED: &str =
    "SELECT COUNT_BIG(*) FROM warren_invocations WHERE batch = @P1 AND status IN ('queued', 'running')";
/// Locks the batch row until the transaction ends, so a cancel and a fan-in do not interleave.
pub(super) const BATCH_STATE_LOCKED: &str = "SELECT state FROM warren_batches WITH (UPDLOCK, HOLDLOCK) WHERE id = @P1";
pub(super) const CANCEL_BATCH: &str =
    "UPDATE warren_batches SET state = 'cancelled' WHERE id = @P1 AND state IN ('submitting', 'running')";
pub(super) const CANCEL_ITEMS: &str = "UPDATE warren_invocations SET status = 'cancelled', finished_ms = @P1,
       error = 'not run: its batch was cancelled'
     WHERE batch = @P2 AND status = 'queued'";
pub(super) const BATCH_RUNNING: &str =
    "SELECT TOP (@P1) id FROM warren_invocations WHERE batch = @P2 AND status = 'running'";
pub(super) const BATCH_RESULTS: &str = "SELECT id, status, result, error FROM (
         SELECT TOP (@P1) id, status, result, error,
                CAST(ISNULL(DATALENGTH(result), 0) AS BIGINT) AS own,
                SUM(CAST(ISNULL(DATALENGTH(result), 0) AS BIGINT)) OVER (ORDER BY id ROWS UNBOUNDED PRECEDING) AS upto
         FROM warren_invocations WHERE batch = @P2 AND id > @P3 ORDER BY id
     ) AS page WHERE upto - own < @P4 ORDER BY id";
pub(super) const BEGIN_FANIN: &str =
    "UPDATE warren_batches SET state = 'finishing', followup = @P1 WHERE id = @P2 AND state = 'running'";
pub(super) const END_BATCH: &str = "UPDATE warren_batches SET state = @P1, finished_ms = @P2 WHERE id = @P3";
pub(super) const INSERT_TICK: &str = "INSERT INTO warren_ticks (function_name, tick_ms, invocation)
     SELECT @P1, @P2, @P3
     WHERE NOT EXISTS (SELECT 1 FROM warren_ticks WHERE function_name = @P1 AND tick_ms = @P2)";
pub(super) const LAST_TICK: &str = "SELECT MAX(tick_ms) FROM warren_ticks WHERE function_name = @P1";
pub(super) const INSERT_DELIVERY: &str =
    "INSERT INTO warren_deliveries (invocation, output_index, target, status, attempts, next_ms, updated_ms)
     SELECT @P1, @P2, @P3, 'pending', 0, @P4, @P4
     WHERE NOT EXISTS (SELECT 1 FROM warren_deliveries WHERE invocation = @P1 AND output_index = @P2)";
/// A replayed invocation's new outcome is forwarded again (run when INSERT_DELIVERY found a row).
pub(super) const RESET_DELIVERY: &str =
    "UPDATE warren_deliveries SET status = 'pending', attempts = 0, last_error = NULL,
       target = @P3, next_ms = @P4, updated_ms = @P4
     WHERE invocation = @P1 AND output_index = @P2";
pub(super) const BATCH_STATE: &str = "SELECT state FROM warren_batches WHERE id = @P1";
pub(super) const DUE_DELIVERIES: &str =
    "SELECT TOP (@P1) invocation, output_index, target, status, attempts, last_error, next_ms,
     updated_ms FROM warren_deliveries WHERE status = 'pending' AND next_ms <= @P2 ORDER BY next_ms";
pub(super) const LEASE_DELIVERY: &str = "UPDATE warren_deliveries SET next_ms = @P1
     WHERE invocation = @P2 AND output_index = @P3 AND status = 'pending' AND next_ms = @P4";
pub(super) const RECORD_DELIVERY: &str = "UPDATE warren_deliveries
     SET status = @P1, attempts = @P2, last_error = @P3, next_ms = @P4, updated_ms = @P5
     WHERE invocation = @P6 AND output_index = @P7";
pub(super) const LIST_DELIVERIES: &str =
    "SELECT invocation, output_index, target, status, attempts, last_error, next_ms,
     updated_ms FROM warren_deliveries WHERE invocation = @P1 ORDER BY output_index";
pub(super) const RETRY_DELIVERIES: &str =
    "UPDATE warren_deliveries SET status = 'pending', attempts = 0, next_ms = @P1,
       updated_ms = @P1
     WHERE invocation = @P2 AND status = 'failed'";
pub(super) const COUNT_PER_MINUTE: &str = "SELECT minute_ms, status, COUNT_BIG(*) FROM
     (SELECT (created_ms / 60000) * 60000 AS minute_ms, status FROM warren_invocations
      WHERE created_ms >= @P1 AND created_ms < @P2) AS recent
     GROUP BY minute_ms, status ORDER BY minute_ms, status";
pub(super) const KEY_INSERT: &str = "INSERT INTO warren_keys
     (id, name, key_level, function_name, hash, created_ms, revoked_ms) VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7)";
pub(super) const KEY_LIST: &str =
    "SELECT id, name, key_level, function_name, hash, created_ms, revoked_ms FROM warren_keys
     ORDER BY created_ms, id";
pub(super) const KEY_BY_HASH: &str =
    "SELECT id, name, key_level, function_name, hash, created_ms, revoked_ms FROM warren_keys WHERE hash = @P1";
pub(super) const KEY_REVOKE: &str = "UPDATE warren_keys SET revoked_ms = @P1 WHERE id = @P2 AND revoked_ms IS NULL";
pub(super) const BEGIN: &str = "BEGIN TRANSACTION";
pub(super) const COMMIT: &str = "COMMIT TRANSACTION";
pub(super) const ROLLBACK: &str = "ROLLBACK TRANSACTION";

/// Rows per multi-row log insert: 5 parameters each, under SQL Server's 2,100 per statement.
pub(super) const LOG_ROWS_PER_INSERT: usize = 400;
/// Rows per multi-row batch item insert: the batch id and the origin once, then 5 parameters
/// each (2,002 in all, under SQL Server's 2,100 per statement).
pub(super) const ITEM_ROWS_PER_INSERT: usize = 400;

/// Every statement this backend sends (the log insert with two rows as its example).
#[cfg(test)]
pub(super) fn statements() -> Vec<String> {
    let mut all: Vec<String> = SCHEMA.iter().map(|(_, s)| s.to_string()).collect();
    all.extend(
        [
            SCHEMA_EXISTS,
            SCHEMA_CREATE,
            INSTANCE_UPDATE,
            INSTANCE_INSERT,
            PAUSE,
            RESUME,
            RESUME_DUE,
            HOLDS,
            DRAINED,
            MARK_HELD,
            DUTY_RENEW,
            DUTY_INSERT,
            DUTY_REPORT,
            DUTY_GET,
            RETENTION_SUBJECTS,
            ENDED_BATCHES,
            DELETE_EMPTY_BATCH,
            PURGE_VERSIONS,
            LOCK_QUIET_FUNCTION,
            PURGE_TICKS,
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
            DRAFT_VERSION,
            APPEND_LOG,
            DELETE_ATTEMPT_LOGS,
            CANCEL_INVOCATION,
            SET_RUN_AT,
            TURN_RENEW,
            TURN_TAKE_OVER,
            TURN_INSERT,
            TURN_GIVE,
            INSERT_FUNCTION,
            LIST_FUNCTIONS,
            GET_FUNCTION,
            LIST_VERSIONS,
            GET_VERSION,
            GET_PACKAGE,
            ACTIVATE_EXISTING,
            TOMBSTONE_FUNCTION,
            COUNT_OPEN_INVOCATIONS,
            COUNT_OPEN_BATCHES,
            IDEM_RENEW,
            IDEM_INSERT,
            IDEM_GET,
            IDEM_FORGET,
            IDEM_EXPIRE,
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
            BATCH_RUNNING,
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
    all.extend(DELETE_FUNCTION_ROWS.iter().map(|s| s.to_string()));
    all.push(insert_logs_sql(2));
    for (succeeded, item) in [(true, false), (false, false), (true, true)] {
        let cond = purge_condition(succeeded, item);
        all.push(purge_select_sql(&cond));
        all.push(purge_delete_sql(&cond, 3));
    }
    all.extend(["warren_logs", "warren_attempts", "warren_deliveries"].map(|t| purge_children_sql(t, 3)));
    all.push(insert_items_sql(2));
    all.push(insert_items_sql(ITEM_ROWS_PER_INSERT));
    for (f, st) in [(false, false), (true, false), (false, true), (true, true)] {
        all.push(list_invocations_sql(f, st));
    }
    all
}

pub(super) fn list_invocations_sql(function: bool, status: bool) -> String {
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

/// The invocations retention may remove, of function @P1 (or, for an `item`, of batch @P1),
/// ended before @P2: a chunk of at most @P3 of their ids.
pub(super) fn purge_condition(succeeded: bool, item: bool) -> String {
    let owner = if item { "batch = @P1" } else { "function_name = @P1" };
    format!("{owner} AND {}", crate::guard::removable(succeeded, item, "@P2"))
}

pub(super) fn purge_select_sql(cond: &str) -> String {
    format!("SELECT TOP (@P3) id FROM warren_invocations WHERE {cond} AND created_ms < @P2")
}

/// Those of `ids` ids (from @P3 on) that still match `cond`.
pub(super) fn purge_delete_sql(cond: &str, ids: usize) -> String {
    format!("DELETE FROM warren_invocations WHERE {cond} AND id IN ({})", id_params(3, ids))
}

/// An invocation's rows in `table` once the invocation is gone: of `ids` ids from @P1 on.
pub(super) fn purge_children_sql(table: &str, ids: usize) -> String {
    format!(
        "DELETE FROM {table} WHERE invocation IN ({}) AND NOT EXISTS (SELECT 1 FROM warren_invocations i WHERE i.id = {table}.invocation)",
        id_params(1, ids)
    )
}

fn id_params(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("@P{i}")).collect::<Vec<_>>().join(", ")
}

pub(super) fn insert_logs_sql(rows: usize) -> String {
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
pub(super) fn insert_items_sql(rows: usize) -> String {
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
}
