//! API keys, stored as the sha256 of the key only.

use uuid::Uuid;

use super::*;
use crate::interface::KeyStore;

#[async_trait]
impl KeyStore for SqlxStore {
    async fn create_key(&self, key: &ApiKey) -> Result<()> {
        let done = sqlx::query(&format!("INSERT INTO warren_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"))
            .bind(key.id.to_string())
            .bind(&key.name)
            .bind(key.level.as_str())
            .bind(key.function.clone())
            .bind(&key.hash)
            .bind(key.created_ms)
            .bind(key.revoked_ms)
            .execute(&self.pool)
            .await;
        match done {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("a key with this id or hash exists".into())),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM warren_keys ORDER BY created_ms, id"))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(rows::key).collect()
    }

    async fn find_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM warren_keys WHERE hash = $1"))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(rows::key).transpose()
    }

    async fn revoke_key(&self, id: Uuid, revoked_ms: i64) -> Result<bool> {
        let done = sqlx::query("UPDATE warren_keys SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
            .bind(revoked_ms)
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }
}
