//! Timer ticks (each fired once) and output deliveries (leased, attempted, recorded).

use uuid::Uuid;

use super::*;
use crate::interface::TriggerStore;

#[async_trait]
impl TriggerStore for SqlxStore {
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
            let mut d = rows::delivery(r)?;
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
        status: DeliveryStatus,
        attempts: i32,
        error: Option<&str>,
        next_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE warren_deliveries SET status = $1, attempts = $2, last_error = $3, next_ms = $4, updated_ms = $5
             WHERE invocation = $6 AND output = $7",
        )
        .bind(status.as_str())
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
        rows.iter().map(rows::delivery).collect()
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
}
