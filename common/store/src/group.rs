//! Group commit: the same store write from many concurrent callers, gathered into one call
//! (one statement, one commit) while earlier calls are still running.
//!
//! Each caller sends its item and waits for its own answer. A collector task takes whatever
//! items are waiting, up to `max`, and hands them to the batch function. Nothing ever waits for
//! a batch to fill: when no batch is running, a lone item goes at once, alone. While one runs,
//! the items that arrive wait for it to end and then go together, unless they are many (a
//! `max / 8` of them): then another batch starts beside it, up to `in_flight` at once. So a
//! light load makes one commit at a time (on a small machine, commits that run side by side
//! slow each other down more than they gain), a heavy one several, and the number of commits
//! falls as the load rises.
//!
//! The queue of waiting items is bounded (`max * in_flight`): a caller past it waits to send.

use std::future::Future;

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot, Notify};

use crate::model::{Result, StoreError};

type Request<I, O> = (I, oneshot::Sender<Result<O>>);

/// A running group-commit collector for items `I` answered by `O`.
pub struct Grouped<I, O> {
    tx: mpsc::Sender<Request<I, O>>,
}

impl<I, O> Clone for Grouped<I, O> {
    fn clone(&self) -> Self {
        Grouped { tx: self.tx.clone() }
    }
}

const STOPPED: &str = "the group commit stopped";

/// Counts a batch out when it ends, however it ends, and wakes the collector.
struct Ending {
    running: std::sync::Arc<AtomicUsize>,
    ended: std::sync::Arc<Notify>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
        self.ended.notify_one();
    }
}

impl<I: Send + 'static, O: Send + 'static> Grouped<I, O> {
    /// Starts the collector on the current tokio runtime. `run` stores a batch and answers one
    /// `O` per item, in order; if it fails, every item of the batch gets the error. The
    /// collector stops when every handle is dropped.
    pub fn start<F, Fut>(max: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>>> + Send + 'static,
    {
        let max = max.max(1);
        let in_flight = in_flight.max(1);
        let spill = (max / 8).max(2);
        let (tx, mut rx) = mpsc::channel::<Request<I, O>>(max * in_flight);
        let run = std::sync::Arc::new(run);
        tokio::spawn(async move {
            let running = std::sync::Arc::new(AtomicUsize::new(0));
            let ended = std::sync::Arc::new(Notify::new());
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                // Wait for a running batch to end, gathering what arrives meanwhile, unless
                // this one is big enough to go beside it.
                loop {
                    let now = running.load(Ordering::Acquire);
                    if now == 0 || (now < in_flight && batch.len() >= spill) {
                        break;
                    }
                    tokio::select! {
                        _ = ended.notified() => {}
                        Some(r) = rx.recv(), if batch.len() < max => batch.push(r),
                    }
                }
                running.fetch_add(1, Ordering::AcqRel);
                let ending = Ending { running: running.clone(), ended: ended.clone() };
                let run = run.clone();
                // Boxed: a statement's future is large, and a task copies its future when it
                // is spawned and when it ends.
                tokio::spawn(Box::pin(async move {
                    let _ending = ending;
                    let (items, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
                    let n = items.len();
                    match run(items).await {
                        Ok(answers) if answers.len() == n => {
                            for (tx, a) in replies.into_iter().zip(answers) {
                                let _ = tx.send(Ok(a));
                            }
                        }
                        Ok(answers) => {
                            let why = format!("a batch of {n} items was answered {} times", answers.len());
                            for tx in replies {
                                let _ = tx.send(Err(StoreError::Corrupt(why.clone())));
                            }
                        }
                        Err(e) => {
                            for tx in replies {
                                let _ = tx.send(Err(e.again()));
                            }
                        }
                    }
                }));
            }
        });
        Grouped { tx }
    }

    /// Sends one item and waits for its answer.
    pub async fn call(&self, item: I) -> Result<O> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).await.map_err(|_| StoreError::Unavailable(STOPPED.into()))?;
        answer.await.unwrap_or_else(|_| Err(StoreError::Unavailable(STOPPED.into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn answers_reach_their_own_callers_and_batches_form_under_load() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let g: Grouped<u32, u32> = Grouped::start(64, 1, move |items: Vec<u32>| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(items.into_iter().map(|i| i * 2).collect())
            }
        });
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let g = g.clone();
                tokio::spawn(async move { (i, g.call(i).await.unwrap()) })
            })
            .collect();
        for t in tasks {
            let (i, a) = t.await.unwrap();
            assert_eq!(a, i * 2);
        }
        let n = calls.load(Ordering::SeqCst);
        assert!(n < 200, "200 concurrent items took {n} batches: nothing was grouped");
    }

    /// Light load: one batch at a time, the rest gathered behind it. Heavy load: batches side
    /// by side, never more than `in_flight`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_batches_wait_for_the_running_one_and_big_ones_go_beside_it() {
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (n, m) = (now.clone(), most.clone());
        let g: Grouped<u32, u32> = Grouped::start(64, 3, move |items: Vec<u32>| {
            let (n, m) = (n.clone(), m.clone());
            async move {
                let at = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(at, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                Ok(items)
            }
        });
        // A few callers at a time (under 64 / 8 waiting): never two batches at once.
        for round in 0..5u32 {
            let calls: Vec<_> = (0..3)
                .map(|i| {
                    let g = g.clone();
                    tokio::spawn(async move { g.call(round * 10 + i).await })
                })
                .collect();
            for c in calls {
                c.await.unwrap().unwrap();
            }
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "light load ran batches side by side");
        // 600 callers at once: batches overlap, up to 3.
        let calls: Vec<_> = (0..600u32)
            .map(|i| {
                let g = g.clone();
                tokio::spawn(async move { (i, g.call(i).await.unwrap()) })
            })
            .collect();
        for c in calls {
            let (i, a) = c.await.unwrap();
            assert_eq!(i, a);
        }
        let peak = most.load(Ordering::SeqCst);
        assert!((2..=3).contains(&peak), "heavy load: {peak} batches at once");
    }

    #[tokio::test]
    async fn a_failed_or_short_batch_fails_each_of_its_items() {
        let g: Grouped<u32, u32> = Grouped::start(8, 2, |items: Vec<u32>| async move {
            if items.contains(&7) {
                Err(StoreError::Unavailable("down".into()))
            } else {
                Ok(vec![])
            }
        });
        match g.call(7).await {
            Err(StoreError::Unavailable(m)) => assert_eq!(m, "down"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(g.call(1).await, Err(StoreError::Corrupt(_))));
    }
}
