//! Invocations, their attempts and log lines: recorded, claimed, ended, replayed, read.

use uuid::Uuid;

use super::*;
use crate::guard::open_invocation;
use crate::interface::InvocationStore;
use crate::rows::Columns;

/// Records an invocation that has no record yet as `running` (a claim, or an outcome that
/// brings its record): $1 id, $2 function, $3 version, $4 attempt, $5 payload, $6 worker,
/// $7 created_ms, $8 started_ms.
const INSERT_RUNNING: &str =
    "INSERT INTO warren_invocations (id, function, version, status, attempts, payload, worker, created_ms, started_ms)
     VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING";

/// `Store::complete`'s guarded update, in `end_attempt`'s parameters.
const COMPLETE: &str = concat!(
    "UPDATE warren_invocations SET status = $1, attempts = $2, result = $3, error = $4, worker = $5, finished_ms = $6,
       started_ms = COALESCE($8, started_ms), version = COALESCE($9, version)
     WHERE id = $7 AND ",
    open_invocation!(),
    " AND attempts <= $2"
);

/// `Store::retry_later`'s guarded update, in `end_attempt`'s parameters: the next attempt's
/// number goes in at once, so a stale copy of this attempt's message is recognised
/// (`Claim::Superseded`) instead of running beside the retry.
const RETRY_LATER: &str = concat!(
    "UPDATE warren_invocations SET status = $1, attempts = $2 + 1, result = $3, error = $4, worker = $5,
       finished_ms = $6, started_ms = COALESCE($8, started_ms), version = COALESCE($9, version)
     WHERE id = $7 AND ",
    open_invocation!(),
    " AND attempts <= $2"
);

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

/// What a refused insert of invocation `id` means: it exists already (a conflict), or the
/// store is unavailable.
fn not_inserted(id: Uuid) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!("invocation {id} exists already"))
        } else {
            unavailable(e)
        }
    }
}

/// Log lines (of one or many invocations) in multi-row inserts, in chunks that stay under
/// SQLite's parameter limit. A line stored already (while its run went on) takes the outcome's
/// text: the outcome's lines are the ones kept.
async fn insert_logs(tx: &mut sqlx::Transaction<'static, sqlx::Any>, lines: &[(&str, &LogLine)]) -> Result<()> {
    for chunk in lines.chunks(200) {
        let sql = format!(
            "INSERT INTO warren_logs (invocation, attempt, seq, ts_ms, line) VALUES {}
             ON CONFLICT (invocation, attempt, seq) DO UPDATE SET ts_ms = excluded.ts_ms, line = excluded.line",
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

impl SqlxStore {
    /// Inserts `invs` as `queued` in one commit; per entry, whether it was recorded (`false`
    /// where the id existed, or came earlier in `invs`).
    async fn insert_invocations(&self, invs: &[NewInvocation]) -> Result<Vec<bool>> {
        let mut recorded = HashSet::new();
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
        let mut seen = HashSet::new();
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
    ) -> Result<HashSet<String>> {
        let rows = padded(items.len());
        let open = open_invocation!("i");
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
             WHERE {open} AND i.attempts <= excluded.attempts
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
}

#[async_trait]
impl InvocationStore for SqlxStore {
    async fn create_invocation(&self, inv: &NewInvocation) -> Result<()> {
        let origin = self.origin();
        bind_invocation(sqlx::query(INSERT_INVOCATION), inv, origin.as_deref())
            .execute(&self.pool)
            .await
            .map_err(not_inserted(inv.id))?;
        Ok(())
    }

    async fn take_turn(
        &self,
        function: &str,
        limit: u32,
        invocation: Uuid,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool> {
        let id = invocation.to_string();
        let held = sqlx::query("UPDATE warren_turns SET until_ms = $1 WHERE function = $2 AND invocation = $3")
            .bind(until_ms)
            .bind(function)
            .bind(&id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        if held.rows_affected() > 0 {
            return Ok(true);
        }
        // Each turn is one row: a free one is inserted, a lapsed one taken over, in one
        // statement each (two takers of one turn: the row decides).
        for turn in 0..limit as i64 {
            let taken = sqlx::query(
                "INSERT INTO warren_turns (function, turn, invocation, until_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (function, turn) DO UPDATE SET invocation = excluded.invocation, until_ms = excluded.until_ms
                 WHERE warren_turns.until_ms < $5",
            )
            .bind(function)
            .bind(turn)
            .bind(&id)
            .bind(until_ms)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            if taken.rows_affected() == 1 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn give_turn(&self, function: &str, invocation: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM warren_turns WHERE function = $1 AND invocation = $2")
            .bind(function)
            .bind(invocation.to_string())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn create_scheduled(&self, inv: &NewInvocation, run_at_ms: i64) -> Result<()> {
        let origin = self.origin();
        let mut tx = self.begin().await?;
        bind_invocation(sqlx::query(INSERT_INVOCATION), inv, origin.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(not_inserted(inv.id))?;
        sqlx::query("UPDATE warren_invocations SET run_at_ms = $1 WHERE id = $2")
            .bind(run_at_ms)
            .bind(inv.id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn create_invocations(&self, invs: &[NewInvocation]) -> Vec<Result<bool>> {
        // One statement (or one transaction) for all: every entry shares its fate.
        match self.insert_invocations(invs).await {
            Ok(answers) => answers.into_iter().map(Ok).collect(),
            Err(e) => invs.iter().map(|_| Err(e.again())).collect(),
        }
    }

    async fn claim(&self, inv: &NewInvocation, attempt: i32, worker: &str, started_ms: i64) -> Result<Claim> {
        let id = inv.id.to_string();
        let updated = sqlx::query(concat!(
            "UPDATE warren_invocations SET status = 'running', attempts = $1, worker = $2, started_ms = $3, version = $4
             WHERE id = $5 AND ",
            open_invocation!(),
            " AND attempts <= $1"
        ))
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
        Ok(claim_verdict(rows::status(&row, 0)?, Columns::int32(&row, 1)?, attempt))
    }

    async fn claim_many(&self, items: &[(&NewInvocation, i32)], worker: &str, started_ms: i64) -> Result<Vec<Claim>> {
        // The common case in one statement: every invocation still queued (or running after a
        // channel break) and not moved past this attempt. The rest go one by one after.
        let mut claimed = HashSet::new();
        let mut seen = HashSet::new();
        let unique: Vec<usize> = (0..items.len()).filter(|&i| seen.insert(items[i].0.id)).collect();
        if self.kind == Kind::Postgres {
            for chunk in unique.chunks(256) {
                let open = open_invocation!("i");
                let sql = format!(
                    "UPDATE warren_invocations i SET status = 'running', attempts = v.attempt, worker = $1,
                       started_ms = $2, version = v.version
                     FROM (VALUES {}) AS v (id, attempt, version)
                     WHERE i.id = v.id AND {open} AND i.attempts <= v.attempt
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
        let mut seen = HashSet::new();
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
            let open = open_invocation!("i");
            let sql = format!(
                "UPDATE warren_invocations i SET status = v.status, attempts = v.attempt, result = v.result,
                   error = v.error, worker = v.worker, finished_ms = v.finished_ms,
                   started_ms = COALESCE(v.started_ms, i.started_ms), version = COALESCE(v.version, i.version)
                 FROM (VALUES {}) AS v (id, status, attempt, result, error, worker, finished_ms, started_ms, version)
                 WHERE i.id = v.id AND {open} AND i.attempts <= v.attempt
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
        self.end_attempt(id, o, RETRY_LATER, Status::Queued, o.attempt).await
    }

    async fn take_idempotency_key(
        &self,
        function: &str,
        key: &str,
        body_sha256: &str,
        id: Uuid,
        now_ms: i64,
        since_ms: i64,
    ) -> Result<Option<(Uuid, String)>> {
        // Taken when free or past the window, in one statement; otherwise what it names.
        let taken = sqlx::query(
            "INSERT INTO warren_idempotency (function, idem_key, body_sha256, invocation, created_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (function, idem_key) DO UPDATE SET body_sha256 = excluded.body_sha256,
               invocation = excluded.invocation, created_ms = excluded.created_ms
             WHERE warren_idempotency.created_ms < $6",
        )
        .bind(function)
        .bind(key)
        .bind(body_sha256)
        .bind(id.to_string())
        .bind(now_ms)
        .bind(since_ms)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        if taken.rows_affected() == 1 {
            return Ok(None);
        }
        let row =
            sqlx::query("SELECT invocation, body_sha256 FROM warren_idempotency WHERE function = $1 AND idem_key = $2")
                .bind(function)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        match row {
            Some(r) => Ok(Some((rows::uuid(&r.text(0)?)?, r.text(1)?))),
            // Freed between the two statements: take it again.
            None => Box::pin(self.take_idempotency_key(function, key, body_sha256, id, now_ms, since_ms)).await,
        }
    }

    async fn forget_idempotency_key(&self, function: &str, key: &str, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM warren_idempotency WHERE function = $1 AND idem_key = $2 AND invocation = $3")
            .bind(function)
            .bind(key)
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn expire_idempotency_keys(&self, before_ms: i64, limit: u32) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM warren_idempotency WHERE (function, idem_key) IN (
               SELECT function, idem_key FROM warren_idempotency WHERE created_ms < $1 LIMIT $2)",
        )
        .bind(before_ms)
        .bind(limit as i64)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected())
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

    async fn cancel_invocation(&self, id: Uuid, now_ms: i64) -> Result<Option<bool>> {
        let done = sqlx::query(
            "UPDATE warren_invocations SET status = 'cancelled', finished_ms = $1, error = 'cancelled before it ended'
             WHERE id = $2 AND status IN ('queued', 'running')",
        )
        .bind(now_ms)
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        if done.rows_affected() == 1 {
            return Ok(Some(true));
        }
        Ok(self.get_invocation(id).await?.map(|_| false))
    }

    async fn get_invocation(&self, id: Uuid) -> Result<Option<Invocation>> {
        let row = sqlx::query(&format!("SELECT {INVOCATION_COLUMNS} FROM warren_invocations WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(rows::invocation).transpose()
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
        rows.iter().map(rows::invocation).collect()
    }

    async fn append_logs(&self, id: Uuid, lines: &[LogLine]) -> Result<()> {
        let id = id.to_string();
        let lines: Vec<(&str, &LogLine)> = lines.iter().map(|l| (id.as_str(), l)).collect();
        let mut tx = self.begin().await?;
        insert_logs(&mut tx, &lines).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn get_logs(&self, id: Uuid) -> Result<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT attempt, seq, ts_ms, line FROM warren_logs WHERE invocation = $1 ORDER BY attempt, seq",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(rows::log_line).collect()
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
        rows.iter().map(rows::attempt).collect()
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
        rows.iter().map(rows::minute_count).collect()
    }
}
