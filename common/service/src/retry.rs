//! Waiting between tries: every Warren loop that retries (reconnecting to a broker, reopening a
//! consumer, storing an outcome while the database is down) backs off the same way, with
//! backon's exponential delays: `first`, doubling, at most `max`, without jitter and without end.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};
use tokio::time::Instant;

/// backon multiplies in `f32`: 200.000003 ms becomes 200 ms again.
fn whole_ms(d: Duration) -> Duration {
    Duration::from_millis((d.as_secs_f64() * 1000.0).round() as u64)
}

fn builder(first: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new().with_min_delay(first).with_max_delay(max).with_factor(2.0).without_max_times()
}

/// The waits of a loop that tries again and again: [`Backoff::next_delay`] after each failure,
/// [`Backoff::reset`] after a success.
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let builder = builder(first, max);
        Backoff { builder, delays: builder.build(), max }
    }

    /// How long to wait after this failure.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().map(whole_ms).unwrap_or(self.max)
    }

    /// Sleeps the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// After a success: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

/// Calls `op` until it succeeds, waiting `first`, doubling up to `max`, after each failure (told
/// to `on_retry` with the wait). Gives up with the last error once the next wait would end at
/// or past `deadline`.
pub async fn until<T, E, F, Fut>(
    deadline: Instant,
    (first, max): (Duration, Duration),
    op: F,
    on_retry: impl FnMut(&E, Duration),
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    op.retry(builder(first, max))
        .sleep(tokio::time::sleep)
        .adjust(move |_, delay| delay.map(whole_ms).filter(|d| Instant::now() + *d < deadline))
        .notify(on_retry)
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn delays_double_up_to_the_ceiling_and_start_over_after_a_reset() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let seen: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(seen, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
    }

    #[tokio::test(start_paused = true)]
    async fn until_gives_up_before_the_deadline_and_stops_at_a_success() {
        let ms = Duration::from_millis;
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        // Always failing: waits 100 + 200 + 400 ms, then the next 800 would pass the 1 s deadline.
        let failed: Result<(), &str> = until(
            start + ms(1000),
            (ms(100), ms(5000)),
            || async { Err::<(), _>(calls.fetch_add(1, Ordering::SeqCst)) },
            |_, _| {},
        )
        .await
        .map_err(|_| "gave up");
        assert_eq!((failed, calls.load(Ordering::SeqCst), start.elapsed()), (Err("gave up"), 4, ms(700)));
        // Succeeding at the third call.
        calls.store(0, Ordering::SeqCst);
        let mut waits = Vec::new();
        let got = until(
            Instant::now() + ms(10_000),
            (ms(100), ms(5000)),
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 2 {
                    Err(n)
                } else {
                    Ok(n)
                }
            },
            |_, d| waits.push(d),
        )
        .await;
        assert_eq!((got, waits), (Ok(2), vec![ms(100), ms(200)]));
    }
}
