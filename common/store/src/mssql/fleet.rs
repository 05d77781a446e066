//! The processes of a Warren: workers' heartbeats, management instances' leases, and the settling of what a stopped instance left.

use super::*;
use crate::interface::FleetStore;

#[async_trait]
impl FleetStore for MssqlStore {
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
            &w.state.as_str(),
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

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        self.rows(LIST_WORKERS, &[]).await?.iter().map(rows::worker).collect()
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
        self.rows(LAPSED_INSTANCES, &[]).await?.iter().map(rows::lapsed_instance).collect()
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
}
