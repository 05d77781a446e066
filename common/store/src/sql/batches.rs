//! Batches: items fanned out, and the fan-in once all are final.

use uuid::Uuid;

use super::*;
use crate::interface::BatchStore;

impl SqlxStore {
    /// Fills a batch's counts: every status, zeros included.
    async fn batch_counts(&self, b: &mut Batch) -> Result<()> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM warren_invocations WHERE batch = $1 GROUP BY status")
            .bind(b.id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        b.counts = rows::status_counts(&rows)?;
        Ok(())
    }
}

#[async_trait]
impl BatchStore for SqlxStore {
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
        let mut b = rows::batch(&row)?;
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
            let mut b = rows::batch(r)?;
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
        rows.iter().map(rows::batch).collect()
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

    async fn batch_state(&self, batch: Uuid) -> Result<Option<BatchState>> {
        sqlx::query("SELECT state FROM warren_batches WHERE id = $1")
            .bind(batch.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(|r| rows::batch_state(&r, 0))
            .transpose()
    }

    async fn cancel_batch(&self, batch: Uuid, now_ms: i64) -> Result<Option<u64>> {
        let id = batch.to_string();
        let mut tx = self.begin().await?;
        let state = sqlx::query("SELECT state FROM warren_batches WHERE id = $1")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?
            .map(|r| rows::batch_state(&r, 0))
            .transpose()?;
        match state {
            None => return Ok(None),
            Some(BatchState::Done | BatchState::Finishing) => {
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

    async fn batch_running(&self, batch: Uuid, limit: u32) -> Result<Vec<Uuid>> {
        let rows = sqlx::query("SELECT id FROM warren_invocations WHERE batch = $1 AND status = 'running' LIMIT $2")
            .bind(batch.to_string())
            .bind(limit.clamp(1, 100_000) as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(|r| rows::uuid(&r.try_get::<String, _>(0).map_err(unavailable)?)).collect()
    }

    async fn batch_results(
        &self,
        batch: Uuid,
        after: Option<Uuid>,
        limit: u32,
        max_bytes: u64,
    ) -> Result<Vec<ItemResult>> {
        // The running total of the sizes (octet_length reads a PostgreSQL value's size without
        // fetching it) keeps the items whose results start within the budget; only those are read.
        let rows = sqlx::query(
            "SELECT id, status, result, error FROM (
                 SELECT id, status, result, error,
                        COALESCE(octet_length(result), 0) AS own,
                        SUM(COALESCE(octet_length(result), 0)) OVER (ORDER BY id ROWS UNBOUNDED PRECEDING) AS upto
                 FROM warren_invocations WHERE batch = $1 AND id > $2 ORDER BY id LIMIT $3
             ) AS page WHERE upto - own < $4 ORDER BY id",
        )
        .bind(batch.to_string())
        .bind(after.map(|a| a.to_string()).unwrap_or_default())
        .bind(limit.clamp(1, 100_000) as i64)
        .bind(max_bytes.clamp(1, i64::MAX as u64) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(rows::item_result).collect()
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

    async fn end_batch(&self, batch: Uuid, state: BatchState, finished_ms: i64) -> Result<()> {
        sqlx::query("UPDATE warren_batches SET state = $1, finished_ms = $2 WHERE id = $3")
            .bind(state.as_str())
            .bind(finished_ms)
            .bind(batch.to_string())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
