//! Invocations, their attempts and log lines: recorded, claimed, ended, replayed, read.

use uuid::Uuid;

use super::*;
use crate::interface::InvocationStore;

impl MssqlStore {
    /// Like `SqlxStore::end_attempt`, except that every attempt's record, the last one
    /// included, goes to warren_attempts (so `list_attempts` and `replay` need nothing of the
    /// invocation's row): the update, then the attempt record and log lines, in one
    /// transaction, only if the update touched the invocation.
    async fn end_attempt(&self, id: Uuid, o: &Outcome, update: &str, status: Status) -> Result<bool> {
        let mut c = self.conn().await?;
        let id = id.to_string();
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            if let Some(inv) = &o.record {
                // No record yet (a synchronous invoke): made now, then ended like any other.
                let params: [&dyn ToSql; 8] = [
                    &id.as_str(),
                    &inv.function.as_str(),
                    &inv.version,
                    &o.attempt,
                    &inv.payload.as_slice(),
                    &o.worker.as_str(),
                    &inv.created_ms,
                    &o.started_ms,
                ];
                match c.execute(CLAIM_INSERT, &params).await {
                    Ok(_) => {}
                    Err(e) if is_duplicate(&e) => {}
                    Err(e) => return Err(unavailable(e)),
                }
            }
            let result = if status.is_final() { o.result.as_deref() } else { None };
            let updated = c
                .execute(
                    update,
                    &[
                        &status.as_str(),
                        &o.attempt,
                        &result,
                        &o.error.as_deref(),
                        &o.worker.as_str(),
                        &o.finished_ms,
                        &id.as_str(),
                        &o.started_ms,
                        &o.version,
                    ],
                )
                .await
                .map_err(unavailable)?;
            if updated.total() == 0 {
                return Ok(false);
            }
            c.execute(
                INSERT_ATTEMPT,
                &[
                    &id.as_str(),
                    &o.attempt,
                    &o.status.as_str(),
                    &o.error.as_deref(),
                    &o.worker.as_str(),
                    &o.finished_ms,
                ],
            )
            .await
            .map_err(unavailable)?;
            if !o.logs.is_empty() {
                // Lines stored while the run went on (`append_logs`) come again with it.
                c.execute(DELETE_ATTEMPT_LOGS, &[&id.as_str(), &o.attempt]).await.map_err(unavailable)?;
            }
            for chunk in o.logs.chunks(LOG_ROWS_PER_INSERT) {
                let sql = insert_logs_sql(chunk.len());
                let mut params: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * 5);
                for l in chunk {
                    params.push(&id);
                    params.push(&l.attempt);
                    params.push(&l.seq);
                    params.push(&l.ts_ms);
                    params.push(&l.line);
                }
                c.execute(sql, &params).await.map_err(unavailable)?;
            }
            if status.is_final() {
                for d in &o.deliveries {
                    let params: [&dyn ToSql; 4] = [&id.as_str(), &d.output, &d.target.as_str(), &o.finished_ms];
                    let inserted = c.execute(INSERT_DELIVERY, &params).await.map_err(unavailable)?.total();
                    if inserted == 0 {
                        c.execute(RESET_DELIVERY, &params).await.map_err(unavailable)?;
                    }
                }
            }
            Ok(true)
        }
        .await;
        finish(&mut c, matches!(result, Ok(true))).await?;
        result
    }
}

#[async_trait]
impl InvocationStore for MssqlStore {
    async fn create_invocation(&self, inv: &NewInvocation) -> Result<()> {
        let mut c = self.conn().await?;
        let origin = self.origin();
        insert_invocation(&mut c, inv, origin.as_deref()).await.map_err(not_inserted(inv.id))?;
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
        let mut c = self.conn().await?;
        let id = invocation.to_string();
        if c.execute(TURN_RENEW, &[&until_ms, &function, &id.as_str()]).await.map_err(unavailable)?.total() > 0 {
            return Ok(true);
        }
        for turn in 0..limit as i32 {
            let params: [&dyn ToSql; 5] = [&function, &turn, &id.as_str(), &until_ms, &now_ms];
            if c.execute(TURN_TAKE_OVER, &params).await.map_err(unavailable)?.total() == 1 {
                return Ok(true);
            }
            match c.execute(TURN_INSERT, &params[..4]).await.map(|done| done.total()) {
                Ok(1) => return Ok(true),
                Ok(_) => {}
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(false)
    }

    async fn give_turn(&self, function: &str, invocation: Uuid) -> Result<()> {
        let mut c = self.conn().await?;
        let id = invocation.to_string();
        c.execute(TURN_GIVE, &[&function, &id.as_str()]).await.map_err(unavailable)?;
        Ok(())
    }

    async fn create_scheduled(&self, inv: &NewInvocation, run_at_ms: i64) -> Result<()> {
        let mut c = self.conn().await?;
        let origin = self.origin();
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            insert_invocation(&mut c, inv, origin.as_deref()).await.map_err(not_inserted(inv.id))?;
            let id = inv.id.to_string();
            c.execute(SET_RUN_AT, &[&run_at_ms, &id.as_str()]).await.map_err(unavailable)?;
            Ok(())
        }
        .await;
        finish(&mut c, result.is_ok()).await?;
        result
    }

    async fn claim(&self, inv: &NewInvocation, attempt: i32, worker: &str, started_ms: i64) -> Result<Claim> {
        let mut c = self.conn().await?;
        let id = inv.id.to_string();
        let updated = c
            .execute(CLAIM_UPDATE, &[&attempt, &worker, &started_ms, &inv.version, &id.as_str()])
            .await
            .map_err(unavailable)?;
        if updated.total() == 1 {
            return Ok(Claim::Run);
        }
        let inserted = c
            .execute(
                CLAIM_INSERT,
                &[
                    &id.as_str(),
                    &inv.function.as_str(),
                    &inv.version,
                    &attempt,
                    &inv.payload.as_slice(),
                    &worker,
                    &inv.created_ms,
                    &started_ms,
                ],
            )
            .await;
        match inserted {
            Ok(r) if r.rows_affected().iter().sum::<u64>() == 1 => return Ok(Claim::Run),
            Ok(_) => {}
            Err(e) if is_duplicate(&e) => {}
            Err(e) => return Err(unavailable(e)),
        }
        let row =
            c.query(GET_STATUS, &[&id.as_str()]).await.map_err(unavailable)?.into_row().await.map_err(unavailable)?;
        let row = row.ok_or_else(|| StoreError::Corrupt(format!("invocation {id} vanished while claimed")))?;
        Ok(claim_verdict(rows::status(&row, 0)?, row.int32(1)?, attempt))
    }

    async fn complete(&self, id: Uuid, o: &Outcome) -> Result<bool> {
        self.end_attempt(id, o, COMPLETE, o.status).await
    }

    async fn retry_later(&self, id: Uuid, o: &Outcome) -> Result<bool> {
        self.end_attempt(id, o, RETRY_LATER, Status::Queued).await
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
        let mut c = self.conn().await?;
        let id = id.to_string();
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            let params: [&dyn ToSql; 6] = [&function, &key, &body_sha256, &id.as_str(), &now_ms, &since_ms];
            if c.execute(IDEM_RENEW, &params).await.map_err(unavailable)?.total() == 1 {
                return Ok(None);
            }
            if c.execute(IDEM_INSERT, &params[..5]).await.map_err(unavailable)?.total() == 1 {
                return Ok(None);
            }
            let row = c.query(IDEM_GET, &[&function, &key]).await.map_err(unavailable)?.into_row().await;
            match row.map_err(unavailable)? {
                Some(r) => Ok(Some((rows::uuid(&r.text(0)?)?, r.text(1)?))),
                None => Err(StoreError::Unavailable(format!("idempotency key {key:?} of {function} vanished; retry"))),
            }
        }
        .await;
        finish(&mut c, result.is_ok()).await?;
        result
    }

    async fn forget_idempotency_key(&self, function: &str, key: &str, id: Uuid) -> Result<()> {
        let mut c = self.conn().await?;
        c.execute(IDEM_FORGET, &[&function, &key, &id.to_string()]).await.map_err(unavailable)?;
        Ok(())
    }

    async fn expire_idempotency_keys(&self, before_ms: i64, limit: u32) -> Result<u64> {
        let mut c = self.conn().await?;
        let done = c.execute(IDEM_EXPIRE, &[&before_ms, &(limit as i64)]).await.map_err(unavailable)?;
        Ok(done.total())
    }

    async fn replay(&self, id: Uuid) -> Result<Option<i32>> {
        let Some(inv) = self.get_invocation(id).await? else { return Ok(None) };
        if inv.status != Status::Dead {
            return Ok(None);
        }
        let next = inv.attempts + 1;
        let mut c = self.conn().await?;
        let id = id.to_string();
        let r = c.execute(REPLAY, &[&next, &id.as_str(), &inv.attempts]).await.map_err(unavailable)?;
        Ok((r.total() == 1).then_some(next))
    }

    async fn cancel_invocation(&self, id: Uuid, now_ms: i64) -> Result<Option<bool>> {
        let mut c = self.conn().await?;
        let key = id.to_string();
        if c.execute(CANCEL_INVOCATION, &[&now_ms, &key.as_str()]).await.map_err(unavailable)?.total() == 1 {
            return Ok(Some(true));
        }
        drop(c);
        Ok(self.get_invocation(id).await?.map(|_| false))
    }

    async fn get_invocation(&self, id: Uuid) -> Result<Option<Invocation>> {
        let id = id.to_string();
        self.rows(GET_INVOCATION, &[&id.as_str()]).await?.first().map(rows::invocation).transpose()
    }

    async fn list_invocations(&self, f: &InvocationFilter) -> Result<Vec<Invocation>> {
        let sql = list_invocations_sql(f.function.is_some(), f.status.is_some());
        let limit = f.limit.clamp(1, 10_000) as i64;
        let mut params: Vec<&dyn ToSql> = vec![&limit];
        if let Some(func) = &f.function {
            params.push(func);
        }
        let status = f.status.map(|s| s.as_str());
        if let Some(st) = &status {
            params.push(st);
        }
        self.rows(&sql, &params).await?.iter().map(rows::invocation).collect()
    }

    async fn append_logs(&self, id: Uuid, lines: &[LogLine]) -> Result<()> {
        let id = id.to_string();
        let mut c = self.conn().await?;
        for l in lines {
            let params: [&dyn ToSql; 5] = [&id.as_str(), &l.attempt, &l.seq, &l.ts_ms, &l.line.as_str()];
            c.execute(APPEND_LOG, &params).await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn get_logs(&self, id: Uuid) -> Result<Vec<LogLine>> {
        let id = id.to_string();
        self.rows(GET_LOGS, &[&id.as_str()]).await?.iter().map(rows::log_line).collect()
    }

    async fn list_attempts(&self, id: Uuid) -> Result<Vec<AttemptRecord>> {
        let id = id.to_string();
        self.rows(LIST_ATTEMPTS, &[&id.as_str()]).await?.iter().map(rows::attempt).collect()
    }

    async fn count_per_minute(&self, since_ms: i64, until_ms: i64) -> Result<Vec<MinuteCount>> {
        self.rows(COUNT_PER_MINUTE, &[&since_ms, &until_ms]).await?.iter().map(rows::minute_count).collect()
    }
}

/// What a refused insert of invocation `id` means: it exists already (a conflict), or the
/// store is unavailable.
fn not_inserted(id: Uuid) -> impl FnOnce(tiberius::error::Error) -> StoreError {
    move |e| {
        if is_duplicate(&e) {
            StoreError::Conflict(format!("invocation {id} exists already"))
        } else {
            unavailable(e)
        }
    }
}
