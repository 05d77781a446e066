//! Rows into Warren's types, once for every backend: each backend's row type gives its columns
//! by position ([`Columns`]), and every `SELECT` lists them in the order these functions read.

use uuid::Uuid;

use crate::model::*;

/// A fetched row's columns by position. A NULL where a value is required, or a value of another
/// type, is [`StoreError::Corrupt`].
pub(crate) trait Columns {
    fn text(&self, i: usize) -> Result<String>;
    fn opt_text(&self, i: usize) -> Result<Option<String>>;
    /// `BIGINT`.
    fn int(&self, i: usize) -> Result<i64>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>>;
    /// `INTEGER` / `INT`.
    fn int32(&self, i: usize) -> Result<i32>;
    fn bytes(&self, i: usize) -> Result<Vec<u8>>;
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>>;
}

fn corrupt(i: usize, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("column {i}: {e}"))
}

impl Columns for sqlx::any::AnyRow {
    fn text(&self, i: usize) -> Result<String> {
        sqlx::Row::try_get(self, i).map_err(|e| corrupt(i, e))
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        sqlx::Row::try_get(self, i).map_err(|e| corrupt(i, e))
    }
    fn int(&self, i: usize) -> Result<i64> {
        sqlx::Row::try_get(self, i).map_err(|e| corrupt(i, e))
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        sqlx::Row::try_get(self, i).map_err(|e| corrupt(i, e))
    }
    fn int32(&self, i: usize) -> Result<i32> {
        sqlx::Row::try_get(self, i).map_err(|e| corrupt(i, e))
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>> {
        sqlx::Row::try_get(self, i).map_err(|e| corrupt(i, e))
    }
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>> {
        sqlx::Row::try_get(self, i).map_err(|e| corrupt(i, e))
    }
}

/// A value tiberius reads, required.
fn required<T>(i: usize, v: tiberius::Result<Option<T>>) -> Result<T> {
    v.map_err(|e| corrupt(i, e))?.ok_or_else(|| corrupt(i, "NULL"))
}

impl Columns for tiberius::Row {
    fn text(&self, i: usize) -> Result<String> {
        required(i, self.try_get::<&str, usize>(i)).map(str::to_string)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.try_get::<&str, usize>(i).map_err(|e| corrupt(i, e))?.map(str::to_string))
    }
    fn int(&self, i: usize) -> Result<i64> {
        required(i, self.try_get::<i64, usize>(i))
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        self.try_get::<i64, usize>(i).map_err(|e| corrupt(i, e))
    }
    fn int32(&self, i: usize) -> Result<i32> {
        required(i, self.try_get::<i32, usize>(i))
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>> {
        required(i, self.try_get::<&[u8], usize>(i)).map(<[u8]>::to_vec)
    }
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>> {
        Ok(self.try_get::<&[u8], usize>(i).map_err(|e| corrupt(i, e))?.map(<[u8]>::to_vec))
    }
}

pub(crate) fn uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(format!("id {text:?}: {e}")))
}

/// An invocation's status in column `i`.
pub(crate) fn status(r: &impl Columns, i: usize) -> Result<Status> {
    let s = r.text(i)?;
    Status::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("status {s:?}")))
}

/// `name, version, sha256, manifest, size, created_ms`
pub(crate) fn version(r: &impl Columns) -> Result<FunctionVersion> {
    Ok(FunctionVersion {
        name: r.text(0)?,
        version: r.int(1)?,
        sha256: r.text(2)?,
        manifest: r.text(3)?,
        size: r.int(4)?,
        created_ms: r.int(5)?,
    })
}

/// `name, active_version, created_ms, updated_ms, paused_ms, resume_at_ms`
pub(crate) fn function(r: &impl Columns) -> Result<FunctionInfo> {
    Ok(FunctionInfo {
        name: r.text(0)?,
        active_version: r.int(1)?,
        created_ms: r.int(2)?,
        updated_ms: r.int(3)?,
        paused_ms: r.opt_int(4)?,
        resume_at_ms: r.opt_int(5)?,
    })
}

/// `name, paused_ms, resume_at_ms, held_ms`
pub(crate) fn hold(r: &impl Columns) -> Result<Hold> {
    Ok(Hold { function: r.text(0)?, paused_ms: r.opt_int(1)?, resume_at_ms: r.opt_int(2)?, since_ms: r.int(3)? })
}

/// `id, function, version, status, attempts, payload, result, error, worker, created_ms,
/// started_ms, finished_ms, run_at_ms`
pub(crate) fn invocation(r: &impl Columns) -> Result<Invocation> {
    Ok(Invocation {
        id: uuid(&r.text(0)?)?,
        function: r.text(1)?,
        version: r.int(2)?,
        status: status(r, 3)?,
        attempts: r.int32(4)?,
        payload: r.bytes(5)?,
        result: r.opt_bytes(6)?,
        error: r.opt_text(7)?,
        worker: r.opt_text(8)?,
        created_ms: r.int(9)?,
        started_ms: r.opt_int(10)?,
        finished_ms: r.opt_int(11)?,
        run_at_ms: r.opt_int(12)?,
    })
}

/// `attempt, status, error, worker, finished_ms`
pub(crate) fn attempt(r: &impl Columns) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        attempt: r.int32(0)?,
        status: status(r, 1)?,
        error: r.opt_text(2)?,
        worker: r.text(3)?,
        finished_ms: r.int(4)?,
    })
}

/// `attempt, seq, ts_ms, line`
pub(crate) fn log_line(r: &impl Columns) -> Result<LogLine> {
    Ok(LogLine { attempt: r.int32(0)?, seq: r.int32(1)?, ts_ms: r.int(2)?, line: r.text(3)? })
}

/// `minute_ms, status, count`
pub(crate) fn minute_count(r: &impl Columns) -> Result<MinuteCount> {
    Ok(MinuteCount { minute_ms: r.int(0)?, status: status(r, 1)?, count: r.int(2)? })
}

/// `id, function, version, then_function, total, state, followup, error, created_ms,
/// finished_ms` (without its counts)
pub(crate) fn batch(r: &impl Columns) -> Result<Batch> {
    Ok(Batch {
        id: uuid(&r.text(0)?)?,
        function: r.text(1)?,
        version: r.int(2)?,
        then: r.opt_text(3)?,
        total: r.int(4)?,
        state: batch_state(r, 5)?,
        followup_invocation: r.opt_text(6)?.as_deref().map(uuid).transpose()?,
        error: r.opt_text(7)?,
        created_ms: r.int(8)?,
        finished_ms: r.opt_int(9)?,
        counts: Default::default(),
    })
}

/// `status, count` rows: the count of every status, zeros included.
pub(crate) fn status_counts<R: Columns>(rows: &[R]) -> Result<std::collections::BTreeMap<String, i64>> {
    let mut counts: std::collections::BTreeMap<String, i64> =
        Status::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
    for r in rows {
        counts.insert(r.text(0)?, r.int(1)?);
    }
    Ok(counts)
}

/// A batch's state in column `i`.
pub(crate) fn batch_state(r: &impl Columns, i: usize) -> Result<BatchState> {
    let s = r.text(i)?;
    BatchState::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("batch state {s:?}")))
}

/// `id, status, result, error`
pub(crate) fn item_result(r: &impl Columns) -> Result<ItemResult> {
    Ok(ItemResult { id: uuid(&r.text(0)?)?, status: status(r, 1)?, result: r.opt_bytes(2)?, error: r.opt_text(3)? })
}

/// `invocation, output, target, status, attempts, last_error, next_ms, updated_ms`
pub(crate) fn delivery(r: &impl Columns) -> Result<DeliveryRecord> {
    let s = r.text(3)?;
    Ok(DeliveryRecord {
        invocation: uuid(&r.text(0)?)?,
        output: r.int32(1)?,
        target: r.text(2)?,
        status: DeliveryStatus::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("delivery status {s:?}")))?,
        attempts: r.int32(4)?,
        last_error: r.opt_text(5)?,
        next_ms: r.int(6)?,
        updated_ms: r.int(7)?,
    })
}

/// `name, value, secret, updated_ms`
pub(crate) fn setting(r: &impl Columns) -> Result<Setting> {
    Ok(Setting { name: r.text(0)?, value: r.text(1)?, secret: r.int32(2)? != 0, updated_ms: r.int(3)? })
}

/// `id, name, level, function, hash, created_ms, revoked_ms`
pub(crate) fn key(r: &impl Columns) -> Result<ApiKey> {
    let level = r.text(2)?;
    Ok(ApiKey {
        id: uuid(&r.text(0)?)?,
        name: r.text(1)?,
        level: KeyLevel::parse(&level).ok_or_else(|| StoreError::Corrupt(format!("key level {level:?}")))?,
        function: r.opt_text(3)?,
        hash: r.text(4)?,
        created_ms: r.int(5)?,
        revoked_ms: r.opt_int(6)?,
    })
}

/// `id, host, pools, concurrency, in_flight, version, started_ms, last_seen_ms, state`
pub(crate) fn worker(r: &impl Columns) -> Result<WorkerInfo> {
    let state = r.text(8)?;
    Ok(WorkerInfo {
        id: r.text(0)?,
        host: r.text(1)?,
        pools: r.text(2)?,
        concurrency: r.int32(3)?,
        in_flight: r.int32(4)?,
        version: r.text(5)?,
        started_ms: r.int(6)?,
        last_seen_ms: r.int(7)?,
        state: WorkerState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("worker state {state:?}")))?,
    })
}

/// `id, settled_ms`
pub(crate) fn lapsed_instance(r: &impl Columns) -> Result<(String, i64)> {
    Ok((r.text(0)?, r.int(1)?))
}
