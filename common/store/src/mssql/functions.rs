//! Functions and their immutable versions.

use warren_wire::manifest::Manifest;

use super::*;
use crate::interface::FunctionStore;

#[async_trait]
impl FunctionStore for MssqlStore {
    async fn store_version(
        &self,
        manifest: &Manifest,
        manifest_text: &str,
        package: &[u8],
        sha256: &str,
        activate: bool,
    ) -> Result<FunctionVersion> {
        let mut c = self.conn().await?;
        let now = now_ms();
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            // UPDLOCK + HOLDLOCK serialise publishers of one function until commit.
            let next: i64 =
                match c.query(NEXT_VERSION, &[&manifest.name.as_str()]).await.map_err(unavailable)?.into_row().await {
                    Ok(Some(r)) => r.int(0)?,
                    Ok(None) => 1,
                    Err(e) => return Err(unavailable(e)),
                };
            c.execute(
                INSERT_VERSION,
                &[&manifest.name.as_str(), &next, &sha256, &manifest_text, &package, &(package.len() as i64), &now],
            )
            .await
            .map_err(unavailable)?;
            let updated = c
                .execute(
                    if activate { ACTIVATE_VERSION } else { DRAFT_VERSION },
                    &[&manifest.name.as_str(), &next, &now],
                )
                .await
                .map_err(unavailable)?;
            if updated.total() == 0 {
                c.execute(INSERT_FUNCTION, &[&manifest.name.as_str(), &next, &now]).await.map_err(unavailable)?;
            }
            Ok(next)
        }
        .await;
        finish(&mut c, result.is_ok()).await?;
        let next = result?;
        Ok(FunctionVersion {
            name: manifest.name.clone(),
            version: next,
            sha256: sha256.to_string(),
            manifest: manifest_text.to_string(),
            size: package.len() as i64,
            created_ms: now,
        })
    }

    async fn list_functions(&self) -> Result<Vec<FunctionInfo>> {
        self.rows(LIST_FUNCTIONS, &[]).await?.iter().map(rows::function).collect()
    }

    async fn get_function(&self, name: &str) -> Result<Option<FunctionInfo>> {
        self.rows(GET_FUNCTION, &[&name]).await?.first().map(rows::function).transpose()
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<FunctionVersion>> {
        self.rows(LIST_VERSIONS, &[&name]).await?.iter().map(rows::version).collect()
    }

    async fn get_version(&self, name: &str, version: i64) -> Result<Option<FunctionVersion>> {
        self.rows(GET_VERSION, &[&name, &version]).await?.first().map(rows::version).transpose()
    }

    async fn get_package(&self, name: &str, version: i64) -> Result<Option<Vec<u8>>> {
        let rows = self.rows(GET_PACKAGE, &[&name, &version]).await?;
        rows.first().map(|r| r.bytes(0)).transpose()
    }

    async fn activate_version(&self, name: &str, version: i64) -> Result<bool> {
        let mut c = self.conn().await?;
        let done = c.execute(ACTIVATE_EXISTING, &[&name, &version, &now_ms()]).await.map_err(unavailable)?;
        Ok(done.total() == 1)
    }

    async fn delete_function(&self, name: &str) -> Result<bool> {
        let mut c = self.conn().await?;
        c.simple_query(BEGIN).await.map_err(unavailable)?.into_results().await.map_err(unavailable)?;
        let result = async {
            if c.execute(TOMBSTONE_FUNCTION, &[&name, &now_ms()]).await.map_err(unavailable)?.total() == 0 {
                return Ok(false);
            }
            let mut counts = [0i64; 2];
            for (n, sql) in counts.iter_mut().zip([COUNT_OPEN_INVOCATIONS, COUNT_OPEN_BATCHES]) {
                let row = c.query(sql, &[&name]).await.map_err(unavailable)?.into_row().await.map_err(unavailable)?;
                *n = row.map(|r| r.int(0)).transpose()?.unwrap_or(0);
            }
            if let Some(refused) = crate::interface::still_in_use(name, counts[0], counts[1]) {
                return Err(refused);
            }
            for sql in DELETE_FUNCTION_ROWS {
                c.execute(*sql, &[&name]).await.map_err(unavailable)?;
            }
            Ok(true)
        }
        .await;
        finish(&mut c, matches!(result, Ok(true))).await?;
        result
    }

    async fn pause_function(&self, name: &str, now_ms: i64, resume_at_ms: Option<i64>) -> Result<bool> {
        let mut c = self.conn().await?;
        Ok(c.execute(PAUSE, &[&name, &now_ms, &resume_at_ms]).await.map_err(unavailable)?.total() == 1)
    }

    async fn resume_function(&self, name: &str, now_ms: i64, due: bool) -> Result<bool> {
        let mut c = self.conn().await?;
        let sql = if due { RESUME_DUE } else { RESUME };
        Ok(c.execute(sql, &[&name, &now_ms]).await.map_err(unavailable)?.total() == 1)
    }

    async fn holds(&self) -> Result<Vec<Hold>> {
        self.rows(HOLDS, &[]).await?.iter().map(rows::hold).collect()
    }

    async fn mark_held(&self, name: &str, now_ms: i64) -> Result<()> {
        let mut c = self.conn().await?;
        c.execute(MARK_HELD, &[&name, &now_ms]).await.map_err(unavailable)?;
        Ok(())
    }

    async fn drained(&self, name: &str, since_ms: i64) -> Result<bool> {
        let mut c = self.conn().await?;
        Ok(c.execute(DRAINED, &[&name, &since_ms]).await.map_err(unavailable)?.total() == 1)
    }
}
