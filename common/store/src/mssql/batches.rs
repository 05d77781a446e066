//! Batches: items fanned out, and the fan-in once all are final.

use uuid::Uuid;

use super::*;
use crate::interface::BatchStore;

impl MssqlStore {
    /// Fills a batch's counts: every status, zeros included.
    async fn batch_counts(&self, b: &mut Batch) -> Result<()> {
        let id = b.id.to_string();
        let rows = self.rows(BATCH_COUNTS, &[&id.as_str()]).await?;
        b.counts = rows::status_counts(&rows)?;
        Ok(())
    }
}

#[async_trait]
impl BatchStore for MssqlStore {
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
        let mut b = rows::batch(row)?;
        self.batch_counts(&mut b).await?;
        Ok(Some(b))
    }

    async fn list_batches(&self, limit: u32) -> Result<Vec<Batch>> {
        let limit = limit.clamp(1, 1000) as i64;
        let rows = self.rows(LIST_BATCHES, &[&limit]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut b = rows::batch(r)?;
            self.batch_counts(&mut b).await?;
            out.push(b);
        }
        Ok(out)
    }

    async fn open_batches(&self) -> Result<Vec<Batch>> {
        self.rows(OPEN_BATCHES, &[]).await?.iter().map(rows::batch).collect()
    }

    async fn batch_unfinished(&self, batch: Uuid) -> Result<i64> {
        let id = batch.to_string();
        let rows = self.rows(BATCH_UNFINISHED, &[&id.as_str()]).await?;
        rows.first().map(|r| r.int(0)).transpose().map(|n| n.unwrap_or(0))
    }

    async fn batch_state(&self, batch: Uuid) -> Result<Option<BatchState>> {
        let id = batch.to_string();
        let rows = self.rows(BATCH_STATE, &[&id.as_str()]).await?;
        rows.first().map(|r| rows::batch_state(r, 0)).transpose()
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
            match rows::batch_state(&row, 0)? {
                BatchState::Done | BatchState::Finishing => {
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

    async fn batch_running(&self, batch: Uuid, limit: u32) -> Result<Vec<Uuid>> {
        let limit = limit.clamp(1, 100_000) as i64;
        let id = batch.to_string();
        self.rows(BATCH_RUNNING, &[&limit, &id.as_str()]).await?.iter().map(|r| rows::uuid(&r.text(0)?)).collect()
    }

    async fn batch_results(
        &self,
        batch: Uuid,
        after: Option<Uuid>,
        limit: u32,
        max_bytes: u64,
    ) -> Result<Vec<ItemResult>> {
        let limit = limit.clamp(1, 100_000) as i64;
        let id = batch.to_string();
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        let max_bytes = max_bytes.clamp(1, i64::MAX as u64) as i64;
        self.rows(BATCH_RESULTS, &[&limit, &id.as_str(), &after.as_str(), &max_bytes])
            .await?
            .iter()
            .map(rows::item_result)
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

    async fn end_batch(&self, batch: Uuid, state: BatchState, finished_ms: i64) -> Result<()> {
        let mut c = self.conn().await?;
        let id = batch.to_string();
        c.execute(END_BATCH, &[&state.as_str(), &finished_ms, &id.as_str()]).await.map_err(unavailable)?;
        Ok(())
    }
}
