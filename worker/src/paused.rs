//! Which functions are paused now, as the store says, read once a second. Their invocations are
//! set aside in their hold (`topology::held_pool`) instead of running; management moves them
//! back once the function resumes.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use warren_service::shutdown::pace;
use warren_store::Store;

/// How often the paused functions are read.
const EVERY: Duration = Duration::from_secs(1);
/// A list older than this is not trusted: management ends a hold only once its function has
/// been resumed for longer (`management::holds`), so that no worker still holding by an old
/// list sets an invocation aside into a hold nobody drains.
pub(crate) const TRUSTED_FOR: Duration = Duration::from_secs(3);

#[derive(Default)]
pub(crate) struct Paused {
    /// The paused functions, and when the store said so.
    known: RwLock<Option<(Instant, Arc<HashSet<String>>)>>,
}

impl Paused {
    /// Whether `function` is paused, by a list read within [`TRUSTED_FOR`] (none: not paused).
    pub(crate) fn contains(&self, function: &str) -> bool {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        matches!(&*known, Some((at, set)) if at.elapsed() < TRUSTED_FOR && set.contains(function))
    }

    /// Reads the paused functions once; `false` when the store could not say.
    pub(crate) async fn read(&self, store: &dyn Store) -> bool {
        // Timed from before the query: the list is as old as the moment it was asked for.
        let asked = Instant::now();
        match store.holds().await {
            Ok(holds) => {
                let set: HashSet<String> =
                    holds.into_iter().filter(|h| h.paused_ms.is_some()).map(|h| h.function).collect();
                *self.known.write().unwrap_or_else(|p| p.into_inner()) = Some((asked, Arc::new(set)));
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the paused functions now");
                false
            }
        }
    }

    /// Reads the paused functions every second until `stop`.
    pub(crate) async fn follow(&self, store: Arc<dyn Store>, stop: CancellationToken) {
        while pace(EVERY, &stop).await {
            self.read(&*store).await;
        }
    }
}
