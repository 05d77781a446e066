//! What a queue operation can fail with.

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the message broker is unreachable or refused the operation: {0}")]
    Unavailable(String),
    #[error("the broker did not confirm the message (nack); it may not be queued")]
    NotConfirmed,
    #[error("queue {0} is full; try again later")]
    Full(String),
    /// A queue exists with another type (classic or quorum) than this role declares: a
    /// configuration error, not an outage.
    #[error("{0}")]
    QueueType(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = TransportError> = std::result::Result<T, E>;
