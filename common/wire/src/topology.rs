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

/// Where a scheduled invocation waits one hop of `hop_ms` (a power of two) on its way to
/// `pool`: every message in it waits exactly that long (the queue's own TTL).
pub fn later_queue(pool: &str, hop_ms: u64) -> String {
    format!("warren.later.{pool}.{hop_ms}")
}

/// A scheduled invocation this close to its time (or past it) runs now.
pub const SCHEDULE_EARLY_MS: i64 = 20;
/// The longest single hop: 2^31 ms, about 24.9 days.
const LONGEST_HOP_MS: i64 = 1 << 31;

/// The next hop of a scheduled invocation `remaining_ms` before its time: the longest power of
/// two of milliseconds that does not pass it, or `None` when it is due. A wait of d takes about
/// log2(d) hops, each a pass through the pool's queue.
pub fn schedule_hop(remaining_ms: i64) -> Option<Duration> {
    if remaining_ms <= SCHEDULE_EARLY_MS {
        return None;
    }
    let ms = remaining_ms.min(LONGEST_HOP_MS) as u64;
    Some(Duration::from_millis(1u64 << (63 - ms.leading_zeros())))
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

    #[test]
    fn a_schedule_hops_by_powers_of_two_never_past_its_time() {
        use std::time::Duration;
        assert_eq!(super::schedule_hop(-5), None, "past its time: due");
        assert_eq!(super::schedule_hop(super::SCHEDULE_EARLY_MS), None, "close enough: due");
        assert_eq!(super::schedule_hop(1000), Some(Duration::from_millis(512)));
        assert_eq!(super::schedule_hop(1024), Some(Duration::from_millis(1024)));
        assert_eq!(super::schedule_hop(i64::MAX), Some(Duration::from_millis(1 << 31)), "the longest hop");
        // Hop after hop, a wait of 100 s ends within the early margin of its time, never past it.
        let (mut left, mut hops) = (100_000i64, 0);
        while let Some(h) = super::schedule_hop(left) {
            left -= h.as_millis() as i64;
            hops += 1;
        }
        assert!((0..=super::SCHEDULE_EARLY_MS).contains(&left) && hops <= 17, "{left} ms left after {hops} hops");
    }
}
