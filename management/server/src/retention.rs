//! Retention's cleanup: finished work past its time removed, by one management instance at a
//! time.
//!
//! Every [`Config::cleanup_every`](crate::config::Config) each instance asks the store for the
//! `cleanup` duty (a lease by the store's clock, as for an instance's own lease); the one that
//! holds it goes through every function (deleted ones too: their invocations stay until their
//! time is up) with the function's `[retention]` over management's defaults, and removes in
//! chunks of [`CHUNK`], each its own short transaction: succeeded invocations past
//! `succeeded`, failed, timed-out, dead and cancelled ones past `failed` (never one that is not
//! final, nor one with a delivery still pending), ended batches with their items past the
//! longer of the two, old timer ticks, and versions beyond the newest `versions` that nothing
//! uses. What it removed is counted in the metrics and reported in the store, where
//! `GET /api/retention` on any instance reads it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use warren_store::{Purged, Store, StoreError};
use warren_wire::manifest::Manifest;
use warren_wire::retention::Policy;
use warren_wire::time::now_ms;

use crate::metrics::Metrics;

/// The duty's name in the store.
pub const DUTY: &str = "cleanup";
/// Rows removed per transaction.
pub const CHUNK: u32 = 1000;
/// A pause between chunks, so that the store's other writers get their turns (SQLite has one
/// writer at a time) while a million rows go.
const BREATHER: Duration = Duration::from_millis(5);

/// What one cleanup removed, as reported in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub started_ms: i64,
    pub finished_ms: i64,
    pub invocations: u64,
    pub log_lines: u64,
    pub batches: u64,
    pub versions: u64,
    pub ticks: u64,
    /// Why it stopped before the end, if it did (the store failed, the duty was lost, a stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    fn add(&mut self, p: Purged) {
        self.invocations += p.invocations;
        self.log_lines += p.log_lines;
        self.batches += p.batches;
    }
}

pub struct Cleaner {
    store: Arc<dyn Store>,
    instance: String,
    /// Management's defaults, under each function's own `[retention]`.
    pub defaults: Policy,
    pub every: Duration,
    /// The idempotency keys' window: no invocation goes sooner than this after its end, so
    /// that a key still in its window always finds the invocation it names.
    keys_window: Duration,
    /// How long after a publish or an activation no version of the function is removed: a
    /// synchronous invoke's message names its version without a record, and instances trust
    /// the active version they read for a second.
    versions_quiet: Duration,
    metrics: Arc<Metrics>,
}

impl Cleaner {
    pub fn new(
        store: Arc<dyn Store>,
        instance: String,
        defaults: Policy,
        every: Duration,
        keys_window: Duration,
        versions_quiet: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Cleaner { store, instance, defaults, every, keys_window, versions_quiet, metrics }
    }

    /// The duty's lease: twice the pause between two runs and a minute, renewed at the end of
    /// each run, so that the holder keeps it while it lives; another instance, asking once per
    /// pause, takes over within about three pauses after it stops.
    fn lease(&self) -> Duration {
        self.every * 2 + Duration::from_secs(60)
    }

    /// A function's policy: its own `[retention]` (from its active version's manifest text)
    /// over the defaults. A deleted function, or a manifest that no longer parses, gets the
    /// defaults.
    pub fn policy(&self, manifest: Option<&str>) -> Policy {
        let own = manifest.and_then(|t| Manifest::parse(t).ok()).and_then(|m| m.retention);
        self.defaults.over(own.as_ref())
    }

    /// Runs a cleanup every [`every`](Self::every) while this instance holds the duty, until
    /// `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            match self.store.take_duty(DUTY, &self.instance, self.lease().as_millis() as i64).await {
                Ok(true) => {
                    let report = self.clean(&stop).await;
                    let removed = report.invocations + report.batches + report.versions + report.ticks;
                    if report.error.is_some() || removed > 0 {
                        tracing::info!(
                            invocations = report.invocations,
                            log_lines = report.log_lines,
                            batches = report.batches,
                            versions = report.versions,
                            ticks = report.ticks,
                            took_ms = report.finished_ms - report.started_ms,
                            error = report.error.as_deref().unwrap_or(""),
                            "retention cleanup"
                        );
                    }
                    let text = serde_json::to_string(&report).unwrap_or_default();
                    if let Err(e) = self.store.report_duty(DUTY, &self.instance, &text, now_ms()).await {
                        tracing::debug!(error = %e, "cannot record the cleanup's report");
                    }
                    // Renewed for the pause to come.
                    let _ = self.store.take_duty(DUTY, &self.instance, self.lease().as_millis() as i64).await;
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "cannot ask for the cleanup duty now"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// One cleanup of every function.
    pub async fn clean(&self, stop: &CancellationToken) -> Report {
        let mut report = Report { started_ms: now_ms(), ..Report::default() };
        let mut run = Run { cleaner: self, stop, renewed: Instant::now() };
        if let Err(e) = run.all(&mut report).await {
            report.error = Some(e.to_string());
        }
        report.finished_ms = now_ms();
        self.metrics.retention_removed(&[
            ("invocations", report.invocations),
            ("log_lines", report.log_lines),
            ("batches", report.batches),
            ("versions", report.versions),
            ("ticks", report.ticks),
        ]);
        report
    }
}

/// Why a cleanup ended early.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("another instance holds the cleanup duty now")]
    Lost,
    #[error("management is stopping")]
    Stopping,
}

/// One cleanup under way.
struct Run<'a> {
    cleaner: &'a Cleaner,
    stop: &'a CancellationToken,
    renewed: Instant,
}

impl Run<'_> {
    async fn all(&mut self, report: &mut Report) -> Result<(), Stopped> {
        let store = self.cleaner.store.clone();
        for (function, manifest) in store.retention_subjects().await? {
            let policy = self.cleaner.policy(manifest.as_deref());
            let now = now_ms();
            let keys_before = now - self.cleaner.keys_window.as_millis() as i64;
            for (succeeded, keep) in [(true, policy.succeeded), (false, policy.failed)] {
                if let Some(before) = keep.cutoff(now).map(|b| b.min(keys_before)) {
                    self.chunks(report, |s| {
                        let f = function.clone();
                        async move { s.purge_invocations(&f, succeeded, before, CHUNK).await }
                    })
                    .await?;
                }
            }
            if let Some(before) = policy.batches().cutoff(now) {
                self.chunks(report, |s| {
                    let f = function.clone();
                    async move { s.purge_batches(&f, before, CHUNK).await }
                })
                .await?;
                loop {
                    let n = store.purge_ticks(&function, before, CHUNK).await?;
                    report.ticks += n;
                    self.breathe().await?;
                    if n < u64::from(CHUNK) {
                        break;
                    }
                }
            }
            let quiet_since = now - self.cleaner.versions_quiet.as_millis() as i64;
            report.versions += store.purge_versions(&function, policy.versions, quiet_since).await?;
        }
        Ok(())
    }

    /// Calls `purge` until it removes nothing, pausing between chunks.
    async fn chunks<F, Fut>(&mut self, report: &mut Report, purge: F) -> Result<(), Stopped>
    where
        F: Fn(Arc<dyn Store>) -> Fut,
        Fut: std::future::Future<Output = warren_store::Result<Purged>>,
    {
        loop {
            let p = purge(self.cleaner.store.clone()).await?;
            report.add(p);
            self.breathe().await?;
            if p.is_empty() {
                return Ok(());
            }
        }
    }

    /// Between two chunks: a short pause, the stop checked, and the duty renewed every third
    /// of its lease (a cleanup that lost it stops: another instance runs it now).
    async fn breathe(&mut self) -> Result<(), Stopped> {
        tokio::select! {
            _ = self.stop.cancelled() => return Err(Stopped::Stopping),
            _ = tokio::time::sleep(BREATHER) => {}
        }
        let lease = self.cleaner.lease();
        if self.renewed.elapsed() > lease / 3 {
            let c = self.cleaner;
            if !c.store.take_duty(DUTY, &c.instance, lease.as_millis() as i64).await? {
                return Err(Stopped::Lost);
            }
            self.renewed = Instant::now();
        }
        Ok(())
    }
}
