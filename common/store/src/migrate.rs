//! Schema migrations, run once by every backend when it opens: numbered steps, each applied once
//! and recorded in `warren_schema`, in order. A database takes every step whose number is not
//! recorded yet, so numbers may leave gaps, and one migrated by an older build takes the steps
//! added since. Concurrent starts (several workers booting at once) are serialised by the
//! backend's own lock.

use std::collections::HashSet;

use async_trait::async_trait;

use crate::model::Result;

/// A connection a backend migrates through.
#[async_trait]
pub(crate) trait Migrating: Send {
    /// Takes the lock that serialises migrations across processes.
    async fn lock(&mut self) -> Result<()>;
    /// Releases it; `applied` says whether every step went through (a backend whose lock is a
    /// transaction commits it then, and rolls it back otherwise).
    async fn unlock(&mut self, applied: bool) -> Result<()>;
    /// The step numbers recorded in `warren_schema`, which is created if missing.
    async fn recorded(&mut self) -> Result<HashSet<i32>>;
    /// Runs one step and records its number.
    async fn apply(&mut self, step: i32, sql: &str) -> Result<()>;
}

/// Applies every step of `steps` not recorded yet, in order, under the migration lock.
pub(crate) async fn migrate<S: AsRef<str> + Sync>(conn: &mut impl Migrating, steps: &[(i32, S)]) -> Result<()> {
    conn.lock().await?;
    let result = async {
        let recorded = conn.recorded().await?;
        for (step, sql) in steps.iter().filter(|(n, _)| !recorded.contains(n)) {
            conn.apply(*step, sql.as_ref()).await?;
        }
        Ok(())
    }
    .await;
    conn.unlock(result.is_ok()).await?;
    result
}
