//! Group commit: the same store write from many concurrent callers, gathered into one call
//! (one statement, one commit) while earlier calls are still running.
//!
//! Each caller sends its item and waits for its own answer. A collector task takes whatever
//! items are waiting when a slot frees up, up to `max`, and hands them to the batch function;
//! at most `in_flight` batches run at once. Nothing ever waits for a batch to fill: a lone
//! item goes at once, alone. Under load, items pile up while the slots are busy and the next
//! batch takes them all, so the number of commits falls as the load rises.
//!
//! The queue of waiting items is bounded (`max * in_flight`): a caller past it waits to send.

use std::future::Future;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Result, StoreError};

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
        let (tx, mut rx) = mpsc::channel::<Request<I, O>>(max * in_flight.max(1));
        let run = std::sync::Arc::new(run);
        tokio::spawn(async move {
            let slots = std::sync::Arc::new(Semaphore::new(in_flight.max(1)));
            while let Some(first) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let mut batch = vec![first];
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let run = run.clone();
                tokio::spawn(async move {
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
                    drop(slot);
                });
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
    use std::sync::atomic::{AtomicUsize, Ordering};
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
