//! The queue interface both roles use, and its two implementations:
//! [`amqp::AmqpTransport`] (RabbitMQ through lapin; the distributed mode) and
//! [`memory::MemoryTransport`] (in process; only the embedded mode).
//!
//! Both give the same guarantees: `publish` returns only once the message is safely queued
//! (a publisher confirm on AMQP), a delivery stays owned by its consumer until it is acked or
//! returned, a delivery dropped without either goes back to the queue marked `redelivered`, and
//! a consumer never holds more than `prefetch` unacked deliveries.

mod acks;
pub mod amqp;
mod delivery;
mod error;
mod interface;
pub mod memory;
pub mod peer;
pub mod queues;

pub use delivery::Delivery;
pub use error::{Result, TransportError};
pub use interface::{Consumer, QueueStats, Transport};
pub use queues::QueueType;
