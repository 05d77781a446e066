//! A worker's life: a consumer per pool, heartbeats, and at the stop signal a drain ([`Worker::run`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warren_service::retry::Backoff;
use warren_service::shutdown::pace;
use warren_store::WorkerState;
use warren_transport::{Consumer, Delivery};

use crate::groups::Groups;
use crate::pipeline::Gate;
use crate::worker::Worker;

impl Worker {
    /// Runs until `stop` is cancelled, then stops taking work, lets what it holds finish (up to
    /// `grace`), marks itself gone and returns. Broker and store outages are ridden out:
    /// consumers are reopened and store writes retried.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, grace: Duration) -> anyhow::Result<()> {
        let cache = self.versions.cache_dir().to_path_buf();
        std::fs::create_dir_all(&cache)
            .with_context(|| format!("cannot create the package cache {}", cache.display()))?;
        if let Err(e) = self.store.heartbeat(&self.info(WorkerState::Running)).await {
            tracing::warn!(error = %e, "cannot register in the store yet; will keep trying");
        }
        if self.groups.get().is_none() {
            let _ = self.groups.set(Groups::start(self.store.clone(), self.cfg.id.clone()));
        }
        // Paused functions are known before the first delivery (if the store answers now).
        self.paused.read(&*self.store).await;
        let mut consumers = JoinSet::new();
        for (pool, concurrency) in self.cfg.pools.clone() {
            consumers.spawn(self.clone().consume_loop(pool, concurrency, stop.clone()));
        }
        tracing::info!(worker = %self.cfg.id, pools = ?self.cfg.pools, "worker started");
        let beat = tokio::spawn(self.clone().beat(stop.clone()));
        let follow = tokio::spawn({
            let (w, stop) = (self.clone(), stop.clone());
            async move { w.paused.follow(w.store.clone(), stop).await }
        });
        let cancels =
            tokio::spawn(self.cancels.clone().follow(self.transport.clone(), self.cfg.id.clone(), stop.clone()));
        stop.cancelled().await;
        tracing::info!(in_flight = self.in_flight.load(Ordering::Relaxed), "draining");
        let _ = self.store.heartbeat(&self.info(WorkerState::Draining)).await;
        // Consumers stop at the signal and wait for their in-flight invocations.
        if tokio::time::timeout(grace, async { while consumers.join_next().await.is_some() {} }).await.is_err() {
            tracing::warn!(
                in_flight = self.in_flight.load(Ordering::Relaxed),
                "grace period over; unfinished invocations go back to the queue"
            );
            consumers.abort_all();
            while consumers.join_next().await.is_some() {}
        }
        beat.abort();
        follow.abort();
        cancels.abort();
        self.handlers.close_all();
        let _ = self.store.heartbeat(&self.info(WorkerState::Gone)).await;
        Ok(())
    }

    /// Heartbeats until the stop signal, retiring warm handlers of versions no longer active.
    async fn beat(self: Arc<Self>, stop: CancellationToken) {
        while pace(self.cfg.heartbeat_every, &stop).await {
            if let Err(e) = self.store.heartbeat(&self.info(WorkerState::Running)).await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
            self.retire_inactive_handlers().await;
        }
    }

    /// Shuts down the warm handlers of versions that are no longer their function's active one.
    async fn retire_inactive_handlers(&self) {
        for (function, version) in self.handlers.versions() {
            match self.store.get_function(&function).await {
                Ok(Some(f)) if f.active_version != version => self.handlers.close_version(&function, version),
                Ok(None) => self.handlers.close_version(&function, version),
                _ => {}
            }
        }
    }

    /// Consumes one pool until the stop signal, reopening the consumer whenever it ends (broker
    /// restart, connection loss) with backoff. Then what runs finishes (stored and acked) and
    /// what waits for a run slot goes back to the queue.
    async fn consume_loop(self: Arc<Self>, pool: String, concurrency: u16, stop: CancellationToken) {
        let prefetch = (concurrency as u32 * self.cfg.prefetch_multiplier.max(1) as u32).min(u16::MAX as u32) as u16;
        let gate = Arc::new(Gate::new(concurrency));
        // Prefetch bounds what the broker hands over, so this set never exceeds it.
        let mut running = JoinSet::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // The consumer in use, kept past the loop so that its held-back acks go out at the end.
        let mut last: Option<Box<dyn Consumer>> = None;
        while !stop.is_cancelled() {
            if let Some(mut old) = last.take() {
                old.flush_acks().await;
            }
            let opened = async {
                self.transport.declare_pool(&pool).await?;
                self.transport.consume(&pool, prefetch).await
            };
            let consumer = tokio::select! {
                c = opened => match c {
                    Ok(c) => c,
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(%pool, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot consume; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = stop.cancelled() => {}
                        }
                        continue;
                    }
                },
                _ = stop.cancelled() => continue,
            };
            backoff.reset();
            // Deliveries of earlier consumers still waiting for a slot are now stale.
            let generation = gate.next_consumer();
            let consumer = last.insert(consumer);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                    next = consumer.next() => match next {
                        Some(Ok(d)) => {
                            // Boxed: a delivery's stages are a future of tens of kilobytes, which
                            // the task would otherwise copy at its spawn and at each change of
                            // state (most of the worker's instructions per invocation, measured).
                            running.spawn(Box::pin(self.clone().take(pool.clone(), d, gate.clone(), generation)));
                        }
                        // Its deliveries still waiting for a slot are stale from now on (their acks
                        // cannot reach the broker, which hands them out again), not only once
                        // another consumer is open.
                        Some(Err(e)) => {
                            tracing::warn!(%pool, error = %e, "consumer failed; reopening");
                            gate.next_consumer();
                            break;
                        }
                        None => {
                            tracing::warn!(%pool, "consumer closed (broker connection lost?); reopening");
                            gate.next_consumer();
                            break;
                        }
                    }
                }
            }
        }
        // Stopping: the broker hands over nothing more, and what it had sent on but nobody took
        // yet goes back at once (not when the channel closes after the last run), so other
        // workers take it meanwhile.
        // Bounded as a whole: a broker that does not answer the cancel must not keep the slots
        // open (and runs starting) past it.
        if let Some(c) = last.as_mut() {
            let cancelled = async {
                if c.cancel().await {
                    while let Some(Ok(d)) = c.next().await {
                        let _ = d.requeue().await;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), cancelled).await;
        }
        // What runs finishes (and is stored and acked); what waits for a slot goes back to the
        // queue instead of starting now.
        gate.close();
        while running.join_next().await.is_some() {}
        if let Some(mut c) = last {
            c.flush_acks().await;
        }
    }

    /// One delivery, counted in flight while it is held.
    async fn take(self: Arc<Self>, pool: String, d: Delivery, gate: Arc<Gate>, generation: u64) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.handle(&pool, d, &gate, generation).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
