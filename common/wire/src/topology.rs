//! The names both roles declare on the broker. Declarations are idempotent, so whichever role
//! starts first creates them and the other finds them.
//!
//! - `warren.invoke` (direct exchange, durable): routing key = pool name.
//! - `warren.pool.<pool>` (durable queue): one per pool, bound with key `<pool>`; messages it
//!   rejects go to the dead-letter exchange with the same key.
//! - `warren.deadletter` (direct exchange) → `warren.dead.<pool>` (durable queue per pool):
//!   messages no worker could take or that used up their attempts, with the reason in the
//!   `x-warren-reason` header. Kept until replayed.
//! - `warren.retry.<pool>.<bucket>` (durable queues, no consumers): a failed attempt's message
//!   waits here for its per-message TTL, then dead-letters back into `warren.invoke` with key
//!   `<pool>`. `<bucket>` is the power of two (in ms) at or below the delay, so messages in one
//!   queue expire in nearly the order they arrive (a message never waits more than its bucket's
//!   width behind another).
//! - `warren.pool.held.<function>` (durable queue, a pool of its own named `held.<function>`):
//!   the invocations of a paused function that workers set aside, in order of arrival, until
//!   management moves them back to the function's pool once it resumes. (Pool names of
//!   functions have no dot: no function's pool is called so.)
//! - `warren.notice.<instance>` (exclusive, auto-delete): one per management instance, where
//!   workers send completion notices for synchronous invocations.

use std::time::Duration;

pub const INVOKE_EXCHANGE: &str = "warren.invoke";
pub const DEAD_EXCHANGE: &str = "warren.deadletter";
/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-warren-reason";

pub fn pool_queue(pool: &str) -> String {
    format!("warren.pool.{pool}")
}

pub fn dead_queue(pool: &str) -> String {
    format!("warren.dead.{pool}")
}

/// The bucket (ms, a power of two) a retry delay waits in.
pub fn retry_bucket(delay: Duration) -> u64 {
    let ms = (delay.as_millis() as u64).max(1);
    1u64 << (63 - ms.leading_zeros())
}

pub fn retry_queue(pool: &str, bucket_ms: u64) -> String {
    format!("warren.retry.{pool}.{bucket_ms}")
}

/// The pool where a paused function's invocations are held.
pub fn held_pool(function: &str) -> String {
    format!("held.{function}")
}

pub fn notice_queue(instance: &str) -> String {
    format!("warren.notice.{instance}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn buckets_are_powers_of_two_below_the_delay() {
        use std::time::Duration;
        assert_eq!(super::retry_bucket(Duration::from_millis(1)), 1);
        assert_eq!(super::retry_bucket(Duration::from_millis(1000)), 512);
        assert_eq!(super::retry_bucket(Duration::from_millis(1024)), 1024);
        assert_eq!(super::retry_bucket(Duration::ZERO), 1);
    }
}
