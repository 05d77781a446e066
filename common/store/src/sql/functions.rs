//! Functions and their immutable versions.

use warren_wire::manifest::Manifest;

use super::*;
use crate::interface::FunctionStore;

#[async_trait]
impl FunctionStore for SqlxStore {
    async fn publish_version(
        &self,
        manifest: &Manifest,
        manifest_text: &str,
        package: &[u8],
        sha256: &str,
    ) -> Result<FunctionVersion> {
        // Two publishers of one function may pick the same number; the primary key refuses
        // the second, which then tries again with the next number.
        for _ in 0..5 {
            let mut tx = self.begin().await?;
            let next: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 FROM warren_versions WHERE name = $1")
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
            sqlx::query(
                "INSERT INTO warren_functions (name, active_version, created_ms, updated_ms) VALUES ($1, $2, $3, $3)
                 ON CONFLICT (name) DO UPDATE SET active_version = excluded.active_version, updated_ms = excluded.updated_ms",
            )
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
            sqlx::query("SELECT name, active_version, created_ms, updated_ms FROM warren_functions ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        rows.iter().map(rows::function).collect()
    }

    async fn get_function(&self, name: &str) -> Result<Option<FunctionInfo>> {
        let row =
            sqlx::query("SELECT name, active_version, created_ms, updated_ms FROM warren_functions WHERE name = $1")
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
}
