//! The processes of a Warren: workers' heartbeats, management instances' leases, and the settling of what a stopped instance left.

use super::*;
use crate::interface::FleetStore;

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

#[async_trait]
impl FleetStore for SqlxStore {
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
        .bind(w.state.as_str())
        .execute(&self.relaxed)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        let rows = sqlx::query(&format!("SELECT {WORKER_COLUMNS} FROM warren_workers ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(rows::worker).collect()
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
        rows.iter().map(rows::lapsed_instance).collect()
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
}
