//! Telling workers of cancelled invocations: `{"cancel": ID}` on the notice queue of every
//! worker heard from lately (`worker::cancels` reads them). The store has recorded the cancel
//! first; a worker that misses the notice still finds the record final when it claims a
//! delivery, and no outcome of a run is stored over it.

use bytes::Bytes;
use serde_json::json;
use uuid::Uuid;
use warren_store::{Store, StoreError, WorkerState};
use warren_transport::Transport;
use warren_wire::time::now_ms;

/// A worker silent this long (three missed heartbeats) is lost: `GET /api/workers` says so, and
/// it is not told of cancels.
pub(crate) const LOST_AFTER_MS: i64 = 15_000;

/// Tells every live worker that `ids` are cancelled; answers how many workers were told.
pub(crate) async fn tell_workers(
    store: &dyn Store,
    transport: &dyn Transport,
    ids: &[Uuid],
) -> Result<usize, StoreError> {
    let now = now_ms();
    let mut told = 0;
    for w in store.list_workers().await? {
        if w.state == WorkerState::Gone || now - w.last_seen_ms > LOST_AFTER_MS {
            continue;
        }
        let queue = warren_wire::topology::notice_queue(&w.id);
        let mut reached = true;
        for id in ids {
            if let Err(e) = transport.notify(&queue, Bytes::from(json!({"cancel": id}).to_string())).await {
                tracing::warn!(worker = %w.id, error = %e, "cannot tell a worker of a cancel");
                reached = false;
                break;
            }
        }
        told += usize::from(reached);
    }
    Ok(told)
}
