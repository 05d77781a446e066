//! Functions' settings (environment variables; secret ones stored sealed).

use super::*;
use crate::interface::SettingStore;

#[async_trait]
impl SettingStore for SqlxStore {
    async fn set_setting(&self, function: &str, s: &Setting) -> Result<()> {
        sqlx::query(
            "INSERT INTO warren_settings (function, name, value, secret, updated_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (function, name) DO UPDATE SET value = excluded.value, secret = excluded.secret,
               updated_ms = excluded.updated_ms",
        )
        .bind(function)
        .bind(&s.name)
        .bind(&s.value)
        .bind(s.secret as i32)
        .bind(s.updated_ms)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn delete_setting(&self, function: &str, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM warren_settings WHERE function = $1 AND name = $2")
            .bind(function)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(r.rows_affected() == 1)
    }

    async fn list_settings(&self, function: &str) -> Result<Vec<Setting>> {
        let rows = sqlx::query(
            "SELECT name, value, secret, updated_ms FROM warren_settings WHERE function = $1 ORDER BY name",
        )
        .bind(function)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(rows::setting).collect()
    }
}
