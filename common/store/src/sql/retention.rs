//! Retention: finished work removed in short chunks, and the duties one management instance
//! does at a time.
//!
//! Each purge first reads the ids of a chunk, then, in one transaction, deletes those of them
//! that still qualify (the condition is checked again: an invocation replayed in between is not
//! final any more) and the log lines, attempts and deliveries of the ones that went.

use super::*;
use crate::guard::removable;
use crate::interface::RetentionStore;

/// Children of an invocation, removed with it.
const CHILDREN: [&str; 3] = ["warren_logs", "warren_attempts", "warren_deliveries"];

/// `$first, $first+1, ...` for `n` ids, padded (see [`padded`]) with `''` rows that match nothing.
fn id_list(first: usize, n: usize) -> String {
    (0..padded(n)).map(|i| format!("${}", first + i)).collect::<Vec<_>>().join(", ")
}

/// Binds `ids`, then the `''` rows that pad them.
fn bind_ids<'q>(mut q: AnyQuery<'q>, ids: &[String]) -> AnyQuery<'q> {
    let pad = padded(ids.len()) - ids.len();
    for id in ids.iter().cloned().chain(std::iter::repeat_n(String::new(), pad)) {
        q = q.bind(id);
    }
    q
}

impl SqlxStore {
    /// Deletes the invocations among `ids` that still match `cond` (over `$1`, `$2`), then the
    /// children of those that went, in one transaction.
    async fn remove_invocations(&self, cond: &str, p1: &str, p2: i64, ids: &[String]) -> Result<Purged> {
        if ids.is_empty() {
            return Ok(Purged::default());
        }
        let list = id_list(3, ids.len());
        let mut tx = self.begin().await?;
        let sql = format!("DELETE FROM warren_invocations WHERE {cond} AND id IN ({list})");
        let gone = bind_ids(sqlx::query(&sql).bind(p1.to_string()).bind(p2), ids)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
        let mut log_lines = 0;
        if gone > 0 {
            for table in CHILDREN {
                // Numbered from $1 here: no function or time.
                let sql = format!(
                    "DELETE FROM {table} WHERE invocation IN ({}) AND NOT EXISTS (SELECT 1 FROM warren_invocations i WHERE i.id = {table}.invocation)",
                    id_list(1, ids.len())
                );
                let n = bind_ids(sqlx::query(&sql), ids).execute(&mut *tx).await.map_err(unavailable)?;
                if table == "warren_logs" {
                    log_lines = n.rows_affected();
                }
            }
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(Purged { invocations: gone, log_lines, batches: 0 })
    }
}

#[async_trait]
impl RetentionStore for SqlxStore {
    async fn take_duty(&self, duty: &str, holder: &str, lease_ms: i64) -> Result<bool> {
        let clock = self.clock_ms();
        let sql = format!(
            "INSERT INTO warren_duties (name, holder, until_ms) VALUES ($1, $2, {clock} + $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
             WHERE warren_duties.holder = excluded.holder OR warren_duties.until_ms < {clock}"
        );
        let done =
            sqlx::query(&sql).bind(duty).bind(holder).bind(lease_ms).execute(&self.pool).await.map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn report_duty(&self, duty: &str, holder: &str, report: &str, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE warren_duties SET report = $3, report_ms = $4 WHERE name = $1 AND holder = $2")
            .bind(duty)
            .bind(holder)
            .bind(report)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get_duty(&self, duty: &str) -> Result<Option<Duty>> {
        let row = sqlx::query("SELECT holder, until_ms, report, report_ms FROM warren_duties WHERE name = $1")
            .bind(duty)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| -> std::result::Result<Duty, sqlx::Error> {
            Ok(Duty { holder: r.try_get(0)?, until_ms: r.try_get(1)?, report: r.try_get(2)?, report_ms: r.try_get(3)? })
        })
        .transpose()
        .map_err(unavailable)
    }

    async fn retention_subjects(&self) -> Result<Vec<(String, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT f.name, v.manifest FROM warren_functions f
             LEFT JOIN warren_versions v ON v.name = f.name AND v.version = f.active_version ORDER BY f.name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(unavailable)
    }

    async fn purge_invocations(&self, function: &str, succeeded: bool, before_ms: i64, limit: u32) -> Result<Purged> {
        let cond = format!("function = $1 AND {}", removable(succeeded, false, "$2"));
        // created_ms <= finished_ms: the bound lets the (function, created_ms) index find them.
        let sql = format!("SELECT id FROM warren_invocations WHERE {cond} AND created_ms < $2 LIMIT $3");
        let rows = sqlx::query(&sql)
            .bind(function)
            .bind(before_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        let ids: Vec<String> =
            rows.iter().map(|r| r.try_get(0)).collect::<std::result::Result<_, _>>().map_err(unavailable)?;
        self.remove_invocations(&cond, function, before_ms, &ids).await
    }

    async fn purge_batches(&self, function: &str, before_ms: i64, limit: u32) -> Result<Purged> {
        let batches = sqlx::query(
            "SELECT id FROM warren_batches WHERE function = $1 AND finished_ms < $2
               AND (state = 'done' OR state = 'cancelled') ORDER BY finished_ms LIMIT 8",
        )
        .bind(function)
        .bind(before_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        for row in &batches {
            let batch: String = row.try_get(0).map_err(unavailable)?;
            // $1 is the batch here; every item ended before the batch did.
            let cond = format!("batch = $1 AND {}", removable(true, true, "$2"));
            let sql = format!("SELECT id FROM warren_invocations WHERE {cond} LIMIT $3");
            let rows = sqlx::query(&sql)
                .bind(&batch)
                .bind(i64::MAX)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            let ids: Vec<String> =
                rows.iter().map(|r| r.try_get(0)).collect::<std::result::Result<_, _>>().map_err(unavailable)?;
            let mut purged = self.remove_invocations(&cond, &batch, i64::MAX, &ids).await?;
            if ids.len() < limit as usize {
                purged.batches = sqlx::query(
                    "DELETE FROM warren_batches WHERE id = $1
                       AND NOT EXISTS (SELECT 1 FROM warren_invocations WHERE batch = $1)",
                )
                .bind(&batch)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?
                .rows_affected();
            }
            if !purged.is_empty() {
                return Ok(purged);
            }
            // Items that cannot go yet (a delivery still pending): the next batch.
        }
        Ok(Purged::default())
    }

    async fn purge_versions(&self, function: &str, keep: u32, quiet_since_ms: i64) -> Result<u64> {
        if keep == 0 {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        // The function's row first: an activation of an old version waits for this commit.
        let quiet =
            sqlx::query("UPDATE warren_functions SET updated_ms = updated_ms WHERE name = $1 AND updated_ms < $2")
                .bind(function)
                .bind(quiet_since_ms)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected();
        if quiet == 0 {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(0);
        }
        let done = sqlx::query(
            "DELETE FROM warren_versions WHERE name = $1
               AND version <= (SELECT MAX(version) FROM warren_versions WHERE name = $1) - $2
               AND version <> (SELECT active_version FROM warren_functions WHERE name = $1)
               AND NOT EXISTS (SELECT 1 FROM warren_invocations i WHERE i.status IN ('queued', 'running')
                 AND i.function = $1 AND i.version = warren_versions.version)
               AND NOT EXISTS (SELECT 1 FROM warren_batches b WHERE b.function = $1 AND b.version = warren_versions.version
                 AND (b.state IN ('submitting', 'running', 'finishing') OR (b.state = 'cancelled' AND b.finished_ms IS NULL)))",
        )
        .bind(function)
        .bind(i64::from(keep))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        tx.commit().await.map_err(unavailable)?;
        Ok(done)
    }

    async fn purge_ticks(&self, function: &str, before_ms: i64, limit: u32) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM warren_ticks WHERE function = $1 AND tick_ms IN (
               SELECT tick_ms FROM warren_ticks WHERE function = $1 AND tick_ms < $2
                 AND tick_ms < (SELECT MAX(tick_ms) FROM warren_ticks WHERE function = $1)
               ORDER BY tick_ms LIMIT $3)",
        )
        .bind(function)
        .bind(before_ms)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}
