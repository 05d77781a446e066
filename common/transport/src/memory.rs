//! The in-process transport of the embedded mode: bounded queues in memory with the same
//! ack/redelivery semantics as the broker. Nothing survives the process, which is why it is
//! only used when management and workers share that process.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap_lite::Map;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use warren_wire::topology;

use crate::delivery::{Acker, Delivery, Hold};
use crate::error::{Result, TransportError};
use crate::interface::{Consumer, QueueStats, Transport};

/// How long `publish` waits for room in a full queue before answering [`TransportError::Full`].
const FULL_WAIT: Duration = Duration::from_secs(5);

struct Message {
    body: Bytes,
    redelivered: bool,
    reason: Option<String>,
}

struct Queue {
    name: String,
    items: Mutex<VecDeque<Message>>,
    capacity: usize,
    /// Signalled when a message arrives.
    arrived: Notify,
    /// Signalled when a message leaves.
    left: Notify,
    consumers: std::sync::atomic::AtomicU32,
}

impl Queue {
    fn new(name: String, capacity: usize) -> Arc<Self> {
        Arc::new(Queue {
            name,
            items: Mutex::new(VecDeque::new()),
            capacity,
            arrived: Notify::new(),
            left: Notify::new(),
            consumers: Default::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        // A panic while holding this lock cannot leave the deque inconsistent.
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn push(&self, body: Bytes, reason: Option<String>) -> Result<()> {
        let deadline = tokio::time::Instant::now() + FULL_WAIT;
        loop {
            let room = self.left.notified();
            {
                let mut q = self.lock();
                if q.len() < self.capacity {
                    q.push_back(Message { body, redelivered: false, reason });
                    drop(q);
                    self.arrived.notify_one();
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(TransportError::Full(self.name.clone()));
            }
        }
    }

    /// Puts a returned message at the front: it was taken first, so it goes out first.
    fn give_back(&self, body: Bytes, reason: Option<String>) {
        self.lock().push_front(Message { body, redelivered: true, reason });
        self.arrived.notify_one();
    }

    async fn pop(&self) -> Message {
        loop {
            let arrived = self.arrived.notified();
            let (taken, more) = {
                let mut q = self.lock();
                let m = q.pop_front();
                (m, !q.is_empty())
            };
            if let Some(m) = taken {
                self.left.notify_one();
                // Pass the wake-up on if more is waiting, so other consumers are not left idle.
                if more {
                    self.arrived.notify_one();
                }
                return m;
            }
            arrived.await;
        }
    }
}

/// A delivery's hold on its message: acked, requeued, or (when dropped) returned.
struct MemAcker {
    queue: Arc<Queue>,
    body: Option<Bytes>,
    reason: Option<String>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Hold for MemAcker {
    fn ack(mut self: Box<Self>) {
        self.body = None;
    }
    fn requeue(self: Box<Self>) {
        // Drop does it.
    }
}

impl Drop for MemAcker {
    fn drop(&mut self) {
        if let Some(body) = self.body.take() {
            self.queue.give_back(body, self.reason.take());
        }
    }
}

struct MemConsumer {
    queue: Arc<Queue>,
    prefetch: Arc<Semaphore>,
}

#[async_trait]
impl Consumer for MemConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let permit = self.prefetch.clone().acquire_owned().await.ok()?;
        let m = self.queue.pop().await;
        Some(Ok(Delivery {
            body: m.body.clone(),
            redelivered: m.redelivered,
            reason: None,
            acker: Acker::Held(Box::new(MemAcker {
                queue: self.queue.clone(),
                body: Some(m.body),
                reason: m.reason,
                _permit: Some(permit),
            })),
            _keep: None,
        }))
    }
}

impl Drop for MemConsumer {
    fn drop(&mut self) {
        self.queue.consumers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

struct NoticeConsumer {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

#[async_trait]
impl Consumer for NoticeConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let body = self.rx.recv().await?;
        Some(Ok(Delivery { body, redelivered: false, reason: None, acker: Acker::None, _keep: None }))
    }
}

/// Queues live as long as the transport; clones share them.
#[derive(Clone)]
pub struct MemoryTransport {
    queues: Arc<Map<Arc<Queue>>>,
    notices: Arc<Map<tokio::sync::mpsc::Sender<Bytes>>>,
    capacity: usize,
}

impl MemoryTransport {
    /// `capacity`: the most messages one queue holds before `publish` waits, then refuses.
    pub fn new(capacity: usize) -> Self {
        MemoryTransport { queues: Default::default(), notices: Default::default(), capacity }
    }

    fn queue(&self, name: &str) -> Arc<Queue> {
        self.queues.get_or_insert_with(name, || Queue::new(name.to_string(), self.capacity))
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn declare_pool(&self, pool: &str) -> Result<()> {
        self.queue(&topology::pool_queue(pool));
        Ok(())
    }

    async fn publish(&self, pool: &str, body: Bytes) -> Result<()> {
        self.queue(&topology::pool_queue(pool)).push(body, None).await
    }

    async fn publish_delayed(&self, pool: &str, body: Bytes, delay: Duration) -> Result<()> {
        // Held by a timer task; like everything in this transport it lives as long as the process.
        let queue = self.queue(&topology::pool_queue(pool));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // Accepted already: it goes in even over capacity, as a returned message does.
            queue.lock().push_back(Message { body, redelivered: false, reason: None });
            queue.arrived.notify_one();
        });
        Ok(())
    }

    async fn dead_letter(&self, pool: &str, body: Bytes, reason: &str) -> Result<()> {
        tracing::warn!(pool, reason, "message dead-lettered");
        self.queue(&topology::dead_queue(pool)).push(body, Some(reason.to_string())).await
    }

    async fn take_dead(&self, pool: &str, max: usize) -> Result<Vec<Delivery>> {
        let queue = self.queue(&topology::dead_queue(pool));
        let mut out = Vec::new();
        while out.len() < max {
            let Some(m) = queue.lock().pop_front() else { break };
            out.push(Delivery {
                body: m.body.clone(),
                redelivered: m.redelivered,
                reason: m.reason.clone(),
                acker: Acker::Held(Box::new(MemAcker {
                    queue: queue.clone(),
                    body: Some(m.body),
                    reason: m.reason,
                    _permit: None,
                })),
                _keep: None,
            });
        }
        Ok(out)
    }

    async fn dead_count(&self, pool: &str) -> Result<u64> {
        Ok(self.queue(&topology::dead_queue(pool)).lock().len() as u64)
    }

    async fn consume(&self, pool: &str, prefetch: u16) -> Result<Box<dyn Consumer>> {
        let queue = self.queue(&topology::pool_queue(pool));
        queue.consumers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Box::new(MemConsumer { queue, prefetch: Arc::new(Semaphore::new(prefetch.max(1) as usize)) }))
    }

    async fn open_notices(&self, instance: &str) -> Result<Box<dyn Consumer>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        self.notices.insert(&topology::notice_queue(instance), tx);
        Ok(Box::new(NoticeConsumer { rx }))
    }

    async fn notify(&self, notice_queue: &str, body: Bytes) -> Result<()> {
        if let Some(tx) = self.notices.get(notice_queue) {
            // Best effort by contract: a full or closed notice queue drops the notice.
            let _ = tx.try_send(body);
        }
        Ok(())
    }

    async fn queue_stats(&self, pool: &str) -> Result<QueueStats> {
        let q = self.queue(&topology::pool_queue(pool));
        let messages = q.lock().len() as u64;
        Ok(QueueStats { messages, consumers: q.consumers.load(std::sync::atomic::Ordering::Relaxed) })
    }
}

/// A tiny string-keyed map of clonable values; contention here is negligible.
mod dashmap_lite {
    use std::collections::HashMap;
    use std::sync::Mutex;

    pub(super) struct Map<V>(Mutex<HashMap<String, V>>);

    impl<V> Default for Map<V> {
        fn default() -> Self {
            Map(Mutex::new(HashMap::new()))
        }
    }

    impl<V: Clone> Map<V> {
        pub(super) fn get_or_insert_with(&self, k: &str, f: impl FnOnce() -> V) -> V {
            let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(k.to_string()).or_insert_with(f).clone()
        }
        pub(super) fn insert(&self, k: &str, v: V) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(k.to_string(), v);
        }
        pub(super) fn get(&self, k: &str) -> Option<V> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).get(k).cloned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unacked_delivery_returns_redelivered_and_prefetch_bounds() {
        let t = MemoryTransport::new(100);
        t.declare_pool("p").await.unwrap();
        for i in 0..3u8 {
            t.publish("p", Bytes::from(vec![i])).await.unwrap();
        }
        let mut c = t.consume("p", 2).await.unwrap();
        let a = c.next().await.unwrap().unwrap();
        let b = c.next().await.unwrap().unwrap();
        assert_eq!((a.body[0], b.body[0]), (0, 1));
        // Prefetch 2: the third waits until one is settled.
        assert!(tokio::time::timeout(Duration::from_millis(50), c.next()).await.is_err());
        drop(a); // neither acked nor requeued: back to the queue, at the front
        let again = c.next().await.unwrap().unwrap();
        assert_eq!(again.body[0], 0);
        assert!(again.redelivered);
        again.ack().await.unwrap();
        b.ack().await.unwrap();
        let last = c.next().await.unwrap().unwrap();
        assert_eq!(last.body[0], 2);
        assert!(!last.redelivered);
        last.ack().await.unwrap();
        assert_eq!(t.queue_stats("p").await.unwrap().messages, 0);
    }

    #[tokio::test]
    async fn full_queue_refuses_after_waiting() {
        tokio::time::pause();
        let t = MemoryTransport::new(1);
        t.publish("p", Bytes::from_static(b"a")).await.unwrap();
        let err = t.publish("p", Bytes::from_static(b"b")).await.unwrap_err();
        assert!(matches!(err, TransportError::Full(_)));
    }
}
