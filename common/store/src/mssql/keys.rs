//! API keys, stored as the sha256 of the key only.

use uuid::Uuid;

use super::*;
use crate::interface::KeyStore;

#[async_trait]
impl KeyStore for MssqlStore {
    async fn create_key(&self, key: &ApiKey) -> Result<()> {
        let mut c = self.conn().await?;
        let id = key.id.to_string();
        let params: [&dyn ToSql; 7] =
            [&id, &key.name, &key.level.as_str(), &key.function, &key.hash, &key.created_ms, &key.revoked_ms];
        match c.execute(KEY_INSERT, &params).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Err(StoreError::Conflict("a key with this id or hash exists".into())),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>> {
        self.rows(KEY_LIST, &[]).await?.iter().map(rows::key).collect()
    }

    async fn find_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        self.rows(KEY_BY_HASH, &[&hash]).await?.first().map(rows::key).transpose()
    }

    async fn revoke_key(&self, id: Uuid, revoked_ms: i64) -> Result<bool> {
        let mut c = self.conn().await?;
        let id = id.to_string();
        Ok(c.execute(KEY_REVOKE, &[&revoked_ms, &id]).await.map_err(unavailable)?.total() == 1)
    }
}
