//! The names both roles declare on the broker. Declarations are idempotent, so whichever role
//! starts first creates them and the other finds them.
//!
//! - `warren.invoke` (direct exchange, durable): routing key = pool name.
//! - `warren.pool.<pool>` (durable quorum-free classic queue): one per pool, bound with key `<pool>`;
//!   its dead-letter exchange is `warren.dead`.
//! - `warren.dead` (fanout exchange) → `warren.dead` (durable queue): messages no worker could
//!   take, with the reason in the `x-warren-reason` header.
//! - `warren.notice.<instance>` (exclusive, auto-delete): one per management instance, where
//!   workers send completion notices for synchronous invocations.

pub const INVOKE_EXCHANGE: &str = "warren.invoke";
pub const DEAD_EXCHANGE: &str = "warren.dead";
pub const DEAD_QUEUE: &str = "warren.dead";
/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-warren-reason";

pub fn pool_queue(pool: &str) -> String {
    format!("warren.pool.{pool}")
}

pub fn notice_queue(instance: &str) -> String {
    format!("warren.notice.{instance}")
}
