//! One message handed to a consumer, and how it is settled: acked, or returned to its queue.

use bytes::Bytes;

use crate::acks::AckBatch;
use crate::error::{Result, TransportError};

/// One message handed to a consumer. Ack it once its outcome is stored, or requeue it.
/// Dropping it without either returns it to the queue.
pub struct Delivery {
    pub body: Bytes,
    pub redelivered: bool,
    /// Why it was dead-lettered (dead-letter queues only).
    pub reason: Option<String>,
    pub(crate) acker: Acker,
    /// Keeps what the acker needs alive (the channel a message was taken on).
    pub(crate) _keep: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
}

/// How an in-process queue's delivery is settled (see `memory`).
pub(crate) trait Hold: Send + Sync {
    /// Gone for good.
    fn ack(self: Box<Self>);
    /// Back to the front of its queue, marked redelivered.
    fn requeue(self: Box<Self>);
}

pub(crate) enum Acker {
    Amqp(lapin::Acker),
    /// Acked through its channel's [`acks::AckBatch`] (coalesced into multiple acks).
    Batched {
        batch: std::sync::Arc<AckBatch>,
        tag: u64,
        acker: lapin::Acker,
    },
    /// A message of an in-process queue, held until acked or returned.
    Held(Box<dyn Hold>),
    /// Notices are consumed without acknowledgement.
    None,
}

impl Delivery {
    pub async fn ack(self) -> Result<()> {
        match self.acker {
            Acker::Amqp(a) => a
                .ack(lapin::options::BasicAckOptions::default())
                .await
                .map(|_| ())
                .map_err(|e| TransportError::Unavailable(e.to_string())),
            Acker::Batched { batch, tag, acker } => {
                // Sent by the channel's flusher (a failure there only means a redelivery,
                // which finds the outcome stored).
                batch.finished(tag, acker);
                Ok(())
            }
            Acker::Held(h) => {
                h.ack();
                Ok(())
            }
            Acker::None => Ok(()),
        }
    }

    /// Returns the message to its queue for another attempt (marked redelivered).
    pub async fn requeue(self) -> Result<()> {
        match self.acker {
            Acker::Amqp(a) => a
                .nack(lapin::options::BasicNackOptions { requeue: true, multiple: false })
                .await
                .map(|_| ())
                .map_err(|e| TransportError::Unavailable(e.to_string())),
            Acker::Batched { batch, tag, acker } => {
                // The nack goes out before the tag stops holding the channel's floor: lapin
                // sends each settlement from a task of its own, so a multiple ack taken after
                // `returned` could reach the broker first, ack this message (lost), and make
                // the nack an unknown delivery tag that closes the channel.
                let sent = acker
                    .nack(lapin::options::BasicNackOptions { requeue: true, multiple: false })
                    .await
                    .map(|_| ())
                    .map_err(|e| TransportError::Unavailable(e.to_string()));
                batch.returned(tag);
                sent
            }
            Acker::Held(h) => {
                h.requeue();
                Ok(())
            }
            Acker::None => Ok(()),
        }
    }
}
