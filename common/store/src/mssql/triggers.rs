//! Timer ticks (each fired once) and output deliveries (leased, attempted, recorded).

use uuid::Uuid;

use super::*;
use crate::interface::TriggerStore;

#[async_trait]
impl TriggerStore for MssqlStore {
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
        Ok(rows.first().map(|r| r.opt_int(0)).transpose()?.flatten())
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
        let due = rows.iter().map(rows::delivery).collect::<Result<Vec<_>>>()?;
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
        status: DeliveryStatus,
        attempts: i32,
        error: Option<&str>,
        next_ms: i64,
    ) -> Result<()> {
        let mut c = self.conn().await?;
        let id = invocation.to_string();
        let now = now_ms();
        c.execute(RECORD_DELIVERY, &[&status.as_str(), &attempts, &error, &next_ms, &now, &id.as_str(), &output])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn list_deliveries(&self, invocation: Uuid) -> Result<Vec<DeliveryRecord>> {
        let id = invocation.to_string();
        self.rows(LIST_DELIVERIES, &[&id.as_str()]).await?.iter().map(rows::delivery).collect()
    }

    async fn retry_deliveries(&self, invocation: Uuid, now_ms: i64) -> Result<u64> {
        let mut c = self.conn().await?;
        let id = invocation.to_string();
        Ok(c.execute(RETRY_DELIVERIES, &[&now_ms, &id.as_str()]).await.map_err(unavailable)?.total())
    }
}
