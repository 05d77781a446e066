//! The PostgreSQL and SQLite schema, as numbered migration steps.

/// The schema's steps (see `crate::migrate`). Step N of the comments is recorded as N - 1.
/// `blob`: the type of binary columns (`BYTEA` on PostgreSQL, `BLOB` on SQLite).
pub(super) fn schema(blob: &str) -> Vec<(i32, String)> {
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
        // Step 8: idempotency keys of invokes: which invocation a key named, for which body.
        (
            7,
            "CREATE TABLE IF NOT EXISTS warren_idempotency (
            function TEXT NOT NULL,
            idem_key TEXT NOT NULL,
            body_sha256 TEXT NOT NULL,
            invocation TEXT NOT NULL,
            created_ms BIGINT NOT NULL,
            PRIMARY KEY (function, idem_key));
        CREATE INDEX IF NOT EXISTS warren_idempotency_created ON warren_idempotency (created_ms);"
                .to_string(),
        ),
        // Step 9: duties one management instance does at a time (retention's cleanup), and the
        // index that finds ended batches by age.
        (
            8,
            "CREATE TABLE IF NOT EXISTS warren_duties (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            until_ms BIGINT NOT NULL,
            report TEXT,
            report_ms BIGINT);
        CREATE INDEX IF NOT EXISTS warren_batches_function_finished ON warren_batches (function, finished_ms);"
                .to_string(),
        ),
        // Step 10: pausing a function (its invocations held until it resumes).
        (
            9,
            "ALTER TABLE warren_functions ADD COLUMN paused_ms BIGINT;
        ALTER TABLE warren_functions ADD COLUMN resume_at_ms BIGINT;
        ALTER TABLE warren_functions ADD COLUMN held_ms BIGINT;"
                .to_string(),
        ),
        // Step 11: scheduled invocations (run at a time of their caller's).
        (10, "ALTER TABLE warren_invocations ADD COLUMN run_at_ms BIGINT;".to_string()),
        // Step 12: run turns of functions with a max_concurrency.
        (
            11,
            "CREATE TABLE IF NOT EXISTS warren_turns (
            function TEXT NOT NULL,
            turn INTEGER NOT NULL,
            invocation TEXT NOT NULL,
            until_ms BIGINT NOT NULL,
            PRIMARY KEY (function, turn));"
                .to_string(),
        ),
    ]
}
