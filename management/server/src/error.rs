//! What a management operation fails with, in terms the API turns into a status and a message.

use warren_store::StoreError;
use warren_transport::TransportError;

/// Why an operation failed, in terms the API turns into a status code and a message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{}", store_message(.0))]
    Store(#[from] StoreError),
    #[error("the message broker is unavailable: {0}")]
    Transport(#[from] TransportError),
    /// This instance takes no new work now (it is stopping, or cut off from the store for
    /// over half its lease); another instance may.
    #[error("{0}")]
    Unavailable(String),
    /// A bug: a task of Warren's own stopped (a panic), logged where it happened.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A store error in words: a conflict is the caller's (409), anything else the store's.
fn store_message(e: &StoreError) -> String {
    match e {
        StoreError::Conflict(m) => m.clone(),
        other => format!("the store is unavailable: {other}"),
    }
}
