//! The worker's two group commits ([`Grouped`]): claims, and outcomes. Deliveries that claim or
//! finish while a statement runs go together in the next one.

use std::sync::Arc;

use uuid::Uuid;
use warren_store::group::Grouped;
use warren_store::{Claim, NewInvocation, Outcome, Store};
use warren_wire::time::now_ms;

/// Outcomes stored in one statement at most.
const GROUP_COMMIT_MAX: usize = 256;

/// Commits running at once: like the store pool's own parallelism, so that a quiet worker's
/// outcome does not wait behind another's commit.
const GROUP_COMMITS_IN_FLIGHT: usize = 4;

/// Claims made in one statement at most, and claim statements running at once. Claims commit
/// without waiting for the disk (see `SqlxStore`'s relaxed pool, sized for these and the
/// heartbeat); the deliveries that wait for a statement then go in the next one.
const GROUP_CLAIM_MAX: usize = 256;
const GROUP_CLAIMS_IN_FLIGHT: usize = 4;

pub(crate) struct Groups {
    claims: Grouped<(Arc<NewInvocation>, i32), Claim>,
    outcomes: Grouped<(Uuid, Outcome), bool>,
}

impl Groups {
    /// Starts both; `worker` is the id the claims record.
    pub(crate) fn start(store: Arc<dyn Store>, worker: String) -> Groups {
        let s = store.clone();
        let claims =
            Grouped::start(GROUP_CLAIM_MAX, GROUP_CLAIMS_IN_FLIGHT, move |items: Vec<(Arc<NewInvocation>, i32)>| {
                let (store, worker) = (s.clone(), worker.clone());
                async move {
                    let refs: Vec<(&NewInvocation, i32)> = items.iter().map(|(inv, a)| (&**inv, *a)).collect();
                    store.claim_many(&refs, &worker, now_ms()).await
                }
            });
        let outcomes = Grouped::start(GROUP_COMMIT_MAX, GROUP_COMMITS_IN_FLIGHT, move |items: Vec<(Uuid, Outcome)>| {
            let store = store.clone();
            async move { store.complete_many(&items).await }
        });
        Groups { claims, outcomes }
    }

    pub(crate) async fn claim(&self, inv: Arc<NewInvocation>, attempt: i32) -> warren_store::Result<Claim> {
        self.claims.call((inv, attempt)).await
    }

    pub(crate) async fn complete(&self, id: Uuid, outcome: Outcome) -> warren_store::Result<bool> {
        self.outcomes.call((id, outcome)).await
    }
}
