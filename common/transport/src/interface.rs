//! The queue interface both roles use: [`Transport`] and its [`Consumer`]s.

use async_trait::async_trait;
use bytes::Bytes;

use crate::delivery::Delivery;
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    pub messages: u64,
    pub consumers: u32,
}

#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Declares a pool's queue, its dead-letter queue and the shared exchanges (idempotent).
    async fn declare_pool(&self, pool: &str) -> Result<()>;
    /// Queues one invocation for a pool; returns once the broker confirmed it.
    async fn publish(&self, pool: &str, body: Bytes) -> Result<()>;
    /// Queues a message for a pool after `delay`, the broker holding it meanwhile. Returns once
    /// confirmed.
    async fn publish_delayed(&self, pool: &str, body: Bytes, delay: std::time::Duration) -> Result<()>;
    /// Queues a message for a pool after exactly `hop` (a power of two of milliseconds, see
    /// `topology::schedule_hop`), the broker holding it meanwhile: every message waiting for one
    /// hop length waits as long, so none waits behind a longer one. Returns once confirmed.
    async fn publish_later(&self, pool: &str, body: Bytes, hop: std::time::Duration) -> Result<()> {
        self.publish_delayed(pool, body, hop).await
    }
    /// Moves a message to the pool's dead-letter queue, with the reason. Returns once confirmed.
    async fn dead_letter(&self, pool: &str, body: Bytes, reason: &str) -> Result<()>;
    /// Takes up to `max` messages from a pool's dead-letter queue. Each must be acked (gone for
    /// good) or requeued (kept); dropping one keeps it.
    async fn take_dead(&self, pool: &str, max: usize) -> Result<Vec<Delivery>>;
    /// Consumes a pool's queue with at most `prefetch` unacked deliveries.
    async fn consume(&self, pool: &str, prefetch: u16) -> Result<Box<dyn Consumer>>;
    /// Opens the completion-notice queue of one management instance.
    async fn open_notices(&self, instance: &str) -> Result<Box<dyn Consumer>>;
    /// Sends a completion notice (best effort: a lost notice only delays a waiter until its
    /// deadline, when it reads the store).
    async fn notify(&self, notice_queue: &str, body: Bytes) -> Result<()>;
    /// Depth and consumer count of a pool's queue.
    async fn queue_stats(&self, pool: &str) -> Result<QueueStats>;
    /// Depth of a pool's dead-letter queue.
    async fn dead_count(&self, pool: &str) -> Result<u64>;
}

#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; `None` once the consumer is closed (connection lost, shut down).
    async fn next(&mut self) -> Option<Result<Delivery>>;
    /// Sends now whatever acks of its deliveries are still held back (call it once they are
    /// all settled, before the process ends).
    async fn flush_acks(&mut self) {}
    /// Asks the broker to hand over no more deliveries (a stop). `true` when it did: `next`
    /// then yields what had already arrived, then `None`; their settlement works as before.
    /// `false` when there is nothing to cancel (the in-process queue hands over only what is
    /// asked for).
    async fn cancel(&mut self) -> bool {
        false
    }
}
