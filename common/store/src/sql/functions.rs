//! Functions and their immutable versions.

use warren_wire::manifest::Manifest;

use super::*;
use crate::interface::FunctionStore;

/// A published version becomes the active one.
const UPSERT_ACTIVE: &str =
    "INSERT INTO warren_functions (name, active_version, created_ms, updated_ms) VALUES ($1, $2, $3, $3)
     ON CONFLICT (name) DO UPDATE SET active_version = excluded.active_version, updated_ms = excluded.updated_ms,
       created_ms = CASE WHEN warren_functions.active_version < 0 THEN excluded.created_ms
         ELSE warren_functions.created_ms END";
/// A draft becomes active only where nothing is (a new or deleted function).
const UPSERT_DRAFT: &str =
    "INSERT INTO warren_functions (name, active_version, created_ms, updated_ms) VALUES ($1, $2, $3, $3)
     ON CONFLICT (name) DO UPDATE SET
       active_version = CASE WHEN warren_functions.active_version < 0 THEN excluded.active_version
         ELSE warren_functions.active_version END,
       updated_ms = excluded.updated_ms,
       created_ms = CASE WHEN warren_functions.active_version < 0 THEN excluded.created_ms
         ELSE warren_functions.created_ms END";

#[async_trait]
impl FunctionStore for SqlxStore {
    async fn store_version(
        &self,
        manifest: &Manifest,
        manifest_text: &str,
        package: &[u8],
        sha256: &str,
        activate: bool,
    ) -> Result<FunctionVersion> {
        // Two publishers of one function may pick the same number; the primary key refuses
        // the second, which then tries again with the next number.
        for _ in 0..5 {
            let mut tx = self.begin().await?;
            let next: i64 = sqlx::query(NEXT_VERSION)
                .bind(&manifest.name)
                .fetch_one(&mut *tx)
                .await
                .and_then(|r| r.try_get::<i64, _>(0))
                .map_err(unavailable)?;
            let now = now_ms();
            let inserted = sqlx::query(
                "INSERT INTO warren_versions (name, version, sha256, manifest, package, size, created_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&manifest.name)
            .bind(next)
            .bind(sha256)
            .bind(manifest_text)
            .bind(package.to_vec())
            .bind(package.len() as i64)
            .bind(now)
            .execute(&mut *tx)
            .await;
            match inserted {
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(unavailable(e)),
                Ok(_) => {}
            }
            sqlx::query(if activate { UPSERT_ACTIVE } else { UPSERT_DRAFT })
                .bind(&manifest.name)
                .bind(next)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            match tx.commit().await {
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(unavailable(e)),
                Ok(()) => {}
            }
            return Ok(FunctionVersion {
                name: manifest.name.clone(),
                version: next,
                sha256: sha256.to_string(),
                manifest: manifest_text.to_string(),
                size: package.len() as i64,
                created_ms: now,
            });
        }
        Err(StoreError::Conflict(format!(
            "function {} is being published concurrently by others; try again",
            manifest.name
        )))
    }

    async fn list_functions(&self) -> Result<Vec<FunctionInfo>> {
        let rows =
            sqlx::query("SELECT name, active_version, created_ms, updated_ms, paused_ms, resume_at_ms FROM warren_functions WHERE active_version > 0 ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        rows.iter().map(rows::function).collect()
    }

    async fn get_function(&self, name: &str) -> Result<Option<FunctionInfo>> {
        let row =
            sqlx::query("SELECT name, active_version, created_ms, updated_ms, paused_ms, resume_at_ms FROM warren_functions WHERE name = $1 AND active_version > 0")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        row.as_ref().map(rows::function).transpose()
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<FunctionVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM warren_versions WHERE name = $1 ORDER BY version DESC"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(rows::version).collect()
    }

    async fn get_version(&self, name: &str, version: i64) -> Result<Option<FunctionVersion>> {
        let row =
            sqlx::query(&format!("SELECT {VERSION_COLUMNS} FROM warren_versions WHERE name = $1 AND version = $2"))
                .bind(name)
                .bind(version)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        row.as_ref().map(rows::version).transpose()
    }

    async fn get_package(&self, name: &str, version: i64) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT package FROM warren_versions WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|r| r.try_get(0).map_err(unavailable)).transpose()
    }

    async fn activate_version(&self, name: &str, version: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE warren_functions SET active_version = $2, updated_ms = $3
             WHERE name = $1 AND active_version > 0
               AND EXISTS (SELECT 1 FROM warren_versions WHERE name = $1 AND version = $2)",
        )
        .bind(name)
        .bind(version)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_function(&self, name: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        // Marked first: the row stays locked until commit (PostgreSQL), so a publish of the
        // name waits for the outcome; a refusal below rolls the mark back.
        let marked = sqlx::query(TOMBSTONE)
            .bind(name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
        if marked == 0 {
            return Ok(false);
        }
        // Queued or running: a record failed "not queued" (its publish unconfirmed) never ends,
        // and does not keep the function.
        let open_invocations =
            "SELECT COUNT(*) FROM warren_invocations WHERE function = $1 AND status IN ('queued', 'running')"
                .to_string();
        let open_batches = format!("SELECT COUNT(*) FROM warren_batches WHERE {OPEN_BATCH_OF}");
        let mut counts = [0i64; 2];
        for (n, sql) in counts.iter_mut().zip([&open_invocations, &open_batches]) {
            *n = sqlx::query(sql)
                .bind(name)
                .fetch_one(&mut *tx)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(unavailable)?;
        }
        let [invocations, batches] = counts;
        if let Some(refused) = crate::interface::still_in_use(name, invocations, batches) {
            return Err(refused);
        }
        for sql in [
            "DELETE FROM warren_settings WHERE function = $1",
            "DELETE FROM warren_ticks WHERE function = $1",
            "DELETE FROM warren_idempotency WHERE function = $1",
            "DELETE FROM warren_versions WHERE name = $1",
        ] {
            sqlx::query(sql).bind(name).execute(&mut *tx).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    async fn pause_function(&self, name: &str, now_ms: i64, resume_at_ms: Option<i64>) -> Result<bool> {
        let q = sqlx::query(PAUSE).bind(name).bind(now_ms).bind(resume_at_ms);
        Ok(q.execute(&self.pool).await.map_err(unavailable)?.rows_affected() == 1)
    }

    async fn resume_function(&self, name: &str, now_ms: i64, due: bool) -> Result<bool> {
        let q = sqlx::query(if due { RESUME_DUE } else { RESUME }).bind(name).bind(now_ms);
        Ok(q.execute(&self.pool).await.map_err(unavailable)?.rows_affected() == 1)
    }

    async fn holds(&self) -> Result<Vec<Hold>> {
        let rows = sqlx::query(HOLDS).fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(rows::hold).collect()
    }

    async fn mark_held(&self, name: &str, now_ms: i64) -> Result<()> {
        let q = sqlx::query(MARK_HELD).bind(name).bind(now_ms);
        q.execute(&self.pool).await.map_err(unavailable)?;
        Ok(())
    }

    async fn drained(&self, name: &str, since_ms: i64) -> Result<bool> {
        let q = sqlx::query(DRAINED).bind(name).bind(since_ms);
        Ok(q.execute(&self.pool).await.map_err(unavailable)?.rows_affected() == 1)
    }
}

/// Pauses `$1` at `$2` until `$3` (a paused one keeps its start).
const PAUSE: &str = "UPDATE warren_functions SET paused_ms = COALESCE(paused_ms, $2), resume_at_ms = $3,
       held_ms = COALESCE(paused_ms, $2)
     WHERE name = $1 AND active_version > 0";
/// Resumes `$1` at `$2`; its hold stays (from `$2`) until a drain ends it.
const RESUME: &str = "UPDATE warren_functions SET paused_ms = NULL, resume_at_ms = NULL, held_ms = $2
     WHERE name = $1 AND paused_ms IS NOT NULL";
const RESUME_DUE: &str = "UPDATE warren_functions SET paused_ms = NULL, resume_at_ms = NULL, held_ms = $2
     WHERE name = $1 AND paused_ms IS NOT NULL AND resume_at_ms <= $2";
const HOLDS: &str = "SELECT name, paused_ms, resume_at_ms, held_ms FROM warren_functions
     WHERE held_ms IS NOT NULL AND active_version > 0 ORDER BY name";
const MARK_HELD: &str = "UPDATE warren_functions SET held_ms = $2
     WHERE name = $1 AND active_version > 0 AND (held_ms IS NULL OR held_ms < $2)";
const DRAINED: &str = "UPDATE warren_functions SET held_ms = NULL
     WHERE name = $1 AND paused_ms IS NULL AND held_ms = $2";

/// A deleted function keeps its row, with `active_version` set to minus its newest version (a
/// tombstone no read returns), so that a later publish of the name numbers on after it: a
/// version number is never reused, and workers and other instances, which keep what they read
/// of a (function, version) for good, never run an old package for a new version.
const TOMBSTONE: &str = "UPDATE warren_functions
     SET active_version = -COALESCE((SELECT MAX(version) FROM warren_versions WHERE name = $1), active_version),
       updated_ms = $2, paused_ms = NULL, resume_at_ms = NULL, held_ms = NULL
     WHERE name = $1 AND active_version > 0";

/// The next version number of function `$1`: after its newest version, or after the newest
/// it had before it was deleted.
const NEXT_VERSION: &str = "SELECT COALESCE(MAX(v), 0) + 1 FROM (
       SELECT MAX(version) AS v FROM warren_versions WHERE name = $1
       UNION ALL SELECT -active_version FROM warren_functions WHERE name = $1 AND active_version < 0) AS t";

/// A batch still open (items arriving or running, fan-in not done, or cancelled with items
/// still running) that runs the function `$1` or fans in to it.
const OPEN_BATCH_OF: &str = "(function = $1 OR then_function = $1)
     AND (state IN ('submitting', 'running', 'finishing') OR (state = 'cancelled' AND finished_ms IS NULL))";
