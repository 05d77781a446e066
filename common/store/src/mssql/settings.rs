//! Functions' settings (environment variables; secret ones stored sealed).

use super::*;
use crate::interface::SettingStore;

#[async_trait]
impl SettingStore for MssqlStore {
    async fn set_setting(&self, function: &str, s: &Setting) -> Result<()> {
        let mut c = self.conn().await?;
        let secret = s.secret as i32;
        let params: [&dyn ToSql; 5] = [&function, &s.name, &s.value, &secret, &s.updated_ms];
        let updated = c.execute(SETTING_UPDATE, &params).await.map_err(unavailable)?;
        if updated.total() == 0 {
            match c.execute(SETTING_INSERT, &params).await {
                Ok(_) => {}
                // Set concurrently: the other writer's value stands, as it would with an upsert.
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }

    async fn delete_setting(&self, function: &str, name: &str) -> Result<bool> {
        let mut c = self.conn().await?;
        Ok(c.execute(SETTING_DELETE, &[&function, &name]).await.map_err(unavailable)?.total() == 1)
    }

    async fn list_settings(&self, function: &str) -> Result<Vec<Setting>> {
        self.rows(SETTING_LIST, &[&function]).await?.iter().map(rows::setting).collect()
    }
}
