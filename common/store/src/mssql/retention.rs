//! Retention: finished work removed in short chunks, and the duties one management instance
//! does at a time (as `SqlxStore`'s, in T-SQL).

use super::*;
use crate::interface::RetentionStore;

/// Children of an invocation, removed with it.
const CHILDREN: [&str; 3] = ["warren_logs", "warren_attempts", "warren_deliveries"];

impl MssqlStore {
    /// A chunk of ids matching `cond` (over @P1 = `owner`, @P2 = `before_ms`), at most `limit`.
    async fn removable_ids(&self, cond: &str, owner: &str, before_ms: i64, limit: u32) -> Result<Vec<String>> {
        let rows = self.rows(&purge_select_sql(cond), &[&owner, &before_ms, &i64::from(limit)]).await?;
        rows.iter().map(|r| r.text(0)).collect()
    }

    /// Deletes those of `ids` that still match `cond`, then the children of those that went,
    /// in one transaction.
    async fn remove_invocations(&self, cond: &str, owner: &str, before_ms: i64, ids: &[String]) -> Result<Purged> {
        if ids.is_empty() {
            return Ok(Purged::default());
        }
        let mut c = self.conn().await?;
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            let mut params: Vec<&dyn ToSql> = vec![&owner, &before_ms];
            params.extend(ids.iter().map(|i| i as &dyn ToSql));
            let gone = c.execute(purge_delete_sql(cond, ids.len()), &params).await.map_err(unavailable)?.total();
            let mut log_lines = 0;
            if gone > 0 {
                let params: Vec<&dyn ToSql> = ids.iter().map(|i| i as &dyn ToSql).collect();
                for table in CHILDREN {
                    let n =
                        c.execute(purge_children_sql(table, ids.len()), &params).await.map_err(unavailable)?.total();
                    if table == "warren_logs" {
                        log_lines = n;
                    }
                }
            }
            Ok(Purged { invocations: gone, log_lines, batches: 0 })
        }
        .await;
        finish(&mut c, result.is_ok()).await?;
        result
    }
}

#[async_trait]
impl RetentionStore for MssqlStore {
    async fn take_duty(&self, duty: &str, holder: &str, lease_ms: i64) -> Result<bool> {
        let mut c = self.conn().await?;
        let params: [&dyn ToSql; 3] = [&duty, &holder, &lease_ms];
        if c.execute(DUTY_RENEW, &params).await.map_err(unavailable)?.total() == 1 {
            return Ok(true);
        }
        match c.execute(DUTY_INSERT, &params).await {
            Ok(done) => Ok(done.total() == 1),
            // Another instance inserted it first: it holds the duty.
            Err(e) if is_duplicate(&e) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn report_duty(&self, duty: &str, holder: &str, report: &str, now_ms: i64) -> Result<()> {
        let mut c = self.conn().await?;
        c.execute(DUTY_REPORT, &[&duty, &holder, &report, &now_ms]).await.map_err(unavailable)?;
        Ok(())
    }

    async fn get_duty(&self, duty: &str) -> Result<Option<Duty>> {
        let rows = self.rows(DUTY_GET, &[&duty]).await?;
        rows.first()
            .map(|r| {
                Ok(Duty { holder: r.text(0)?, until_ms: r.int(1)?, report: r.opt_text(2)?, report_ms: r.opt_int(3)? })
            })
            .transpose()
    }

    async fn retention_subjects(&self) -> Result<Vec<(String, Option<String>)>> {
        self.rows(RETENTION_SUBJECTS, &[]).await?.iter().map(|r| Ok((r.text(0)?, r.opt_text(1)?))).collect()
    }

    async fn purge_invocations(&self, function: &str, succeeded: bool, before_ms: i64, limit: u32) -> Result<Purged> {
        let cond = purge_condition(succeeded, false);
        let ids = self.removable_ids(&cond, function, before_ms, limit).await?;
        self.remove_invocations(&cond, function, before_ms, &ids).await
    }

    async fn purge_batches(&self, function: &str, before_ms: i64, limit: u32) -> Result<Purged> {
        let batches = self.rows(ENDED_BATCHES, &[&function, &before_ms]).await?;
        let cond = purge_condition(true, true);
        for row in &batches {
            let batch = row.text(0)?;
            // Every item ended before its batch did: no time bound of its own.
            let ids = self.removable_ids(&cond, &batch, i64::MAX, limit).await?;
            let mut purged = self.remove_invocations(&cond, &batch, i64::MAX, &ids).await?;
            if ids.len() < limit as usize {
                let mut c = self.conn().await?;
                purged.batches = c.execute(DELETE_EMPTY_BATCH, &[&batch.as_str()]).await.map_err(unavailable)?.total();
            }
            if !purged.is_empty() {
                return Ok(purged);
            }
        }
        Ok(Purged::default())
    }

    async fn purge_versions(&self, function: &str, keep: u32, quiet_since_ms: i64) -> Result<u64> {
        if keep == 0 {
            return Ok(0);
        }
        let mut c = self.conn().await?;
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            // The function's row first: an activation of an old version waits for this commit.
            if c.execute(LOCK_QUIET_FUNCTION, &[&function, &quiet_since_ms]).await.map_err(unavailable)?.total() == 0 {
                return Ok(0);
            }
            Ok(c.execute(PURGE_VERSIONS, &[&function, &i64::from(keep)]).await.map_err(unavailable)?.total())
        }
        .await;
        finish(&mut c, matches!(result, Ok(n) if n > 0)).await?;
        result
    }

    async fn purge_ticks(&self, function: &str, before_ms: i64, limit: u32) -> Result<u64> {
        let mut c = self.conn().await?;
        Ok(c.execute(PURGE_TICKS, &[&function, &before_ms, &i64::from(limit)]).await.map_err(unavailable)?.total())
    }
}
