//! Rows 2 to 6: the real `warren-management` and `warren-worker` processes on RabbitMQ and a
//! store, driven through the HTTP API only.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

use crate::measure::{cpu_snap, cpu_use, now_ms, percentile, CpuUse};
use crate::procs::{self, Child};

/// What every mesh run shares.
pub(crate) struct Settings {
    /// One node, or the nodes of a cluster separated by commas (as `--amqp` takes them).
    pub amqp_url: String,
    pub queue_type: warren_transport::QueueType,
    pub bin_dir: PathBuf,
    pub work_dir: PathBuf,
    pub concurrency: u16,
    pub prefetch_multiplier: u16,
    pub in_flight: usize,
    pub input_bytes: usize,
    pub run_timeout: Duration,
}

/// The function a throughput run invokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    /// The built-in `runtime = "echo"`: no process at all (row 2).
    Echo,
    /// `examples/warm-python` as shipped (`mode = "persistent"`, its `[handler]` section): warm
    /// Python handler processes kept by the worker (row 3).
    WarmPython,
}

impl Func {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Func::Echo => "echo",
            Func::WarmPython => "warm-python",
        }
    }
}

/// The folder of the warm Python example (in the source tree the benchmark was built from).
pub(crate) fn warm_python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("examples").join("warm-python")
}

fn short_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_string()
}

/// An invocation input of about `len` bytes (a JSON object, so results show as JSON).
fn input(i: u64, len: usize) -> Vec<u8> {
    let head = format!("{{\"i\":{i},\"pad\":\"");
    let pad = len.saturating_sub(head.len() + 2);
    let mut v = head.into_bytes();
    v.extend(std::iter::repeat_n(b'x', pad));
    v.extend_from_slice(b"\"}");
    v
}

/// One management process on one store, plus the connections the benchmark reads with.
pub(crate) struct Mesh {
    pub label: &'static str,
    pub store_url: String,
    pub mgmt: Child,
    pub base: String,
    pub http: reqwest::Client,
    pub db: AnyPool,
    pub amqp: lapin::Connection,
    /// The channel queue statistics are read on, kept between polls (opening one per poll
    /// failed once after thousands of polls) and replaced after a 404 closes it.
    stats: Mutex<Option<lapin::Channel>>,
    pub settings: Arc<Settings>,
}

/// The figures of one end-to-end throughput run.
#[derive(Debug, Clone)]
pub(crate) struct LoadResult {
    pub store: &'static str,
    pub func: Func,
    pub workers: usize,
    /// Inputs per request: 0 for one `invoke?mode=async` request per invocation, N for bulk
    /// invokes (`POST /api/functions/{name}/invocations`) of N inputs each (row 2b).
    pub bulk: usize,
    pub requested: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub first_error: Option<String>,
    /// First request to the last 202.
    pub publish_secs: f64,
    /// First request to the last outcome stored.
    pub end_to_end_secs: f64,
    pub completed: u64,
    pub succeeded: u64,
    pub incomplete: bool,
    pub peak_queue_depth: u64,
    pub worker_rss_idle: u64,
    pub worker_rss_peak: u64,
    pub worker_rss_after: u64,
    pub mgmt_rss_idle: u64,
    pub mgmt_rss_peak: u64,
    /// Warm handler processes (the workers' children) alive right after, and their VmRSS summed.
    pub handlers_after: usize,
    pub handlers_rss_after: u64,
    /// (management, largest worker) resident memory when a quarter, half, three quarters and
    /// all of the invocations were stored: flat memory means these stay close.
    pub rss_by_progress: Vec<(u64, u64)>,
    pub cpu: CpuUse,
}

impl LoadResult {
    pub(crate) fn rate(&self) -> f64 {
        self.completed as f64 / self.end_to_end_secs.max(1e-9)
    }
    pub(crate) fn publish_rate(&self) -> f64 {
        self.accepted as f64 / self.publish_secs.max(1e-9)
    }
}

/// Row 2 split in halves: management alone, then workers alone.
#[derive(Debug, Clone)]
pub(crate) struct SplitResult {
    pub store: &'static str,
    pub workers: usize,
    pub requested: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub first_error: Option<String>,
    /// Ready messages in the pool's queue once every request was answered.
    pub queued: u64,
    /// First request to the last 202, with no worker attached.
    pub ingest_secs: f64,
    pub ingest_cpu: CpuUse,
    pub drained: u64,
    /// First claim to the last outcome stored (from the records' timestamps).
    pub drain_secs: f64,
    pub drain_cpu: CpuUse,
    pub incomplete: bool,
}

impl SplitResult {
    pub(crate) fn ingest_rate(&self) -> f64 {
        self.accepted as f64 / self.ingest_secs.max(1e-9)
    }
    pub(crate) fn drain_rate(&self) -> f64 {
        self.drained as f64 / self.drain_secs
    }
}

/// Row 5: one batch of NDJSON items through `POST /api/batches`.
#[derive(Debug, Clone)]
pub(crate) struct BatchResult {
    pub store: &'static str,
    pub items: u64,
    /// Workers attached to the pool during the whole row (0: acceptance only).
    pub workers: usize,
    pub body_bytes: u64,
    /// The 201's `total`.
    pub total: u64,
    /// The batch's state in the 201 (`running`: every item recorded and confirmed).
    pub state_at_201: String,
    /// First byte sent to the 201.
    pub accept_secs: f64,
    pub accept_cpu: CpuUse,
    /// First byte sent to the batch's `finished_ms` (state `done`); None without workers.
    pub done_secs: Option<f64>,
    /// First byte sent to the last item's outcome stored.
    pub last_item_secs: Option<f64>,
    pub done_cpu: Option<CpuUse>,
    /// The last state seen and its items per status.
    pub state: String,
    pub succeeded: u64,
    pub not_succeeded: u64,
    pub incomplete: bool,
    pub peak_queue_depth: u64,
    pub worker_rss_idle: u64,
    pub worker_rss_peak: u64,
    pub worker_rss_after: u64,
    pub mgmt_rss_idle: u64,
    /// Management's peak during acceptance (the body is streamed: it should stay flat).
    pub mgmt_rss_peak_accept: u64,
    pub mgmt_rss_peak: u64,
}

impl BatchResult {
    pub(crate) fn accept_rate(&self) -> f64 {
        self.total as f64 / self.accept_secs.max(1e-9)
    }
    pub(crate) fn done_rate(&self) -> Option<f64> {
        self.done_secs.map(|s| self.total as f64 / s.max(1e-9))
    }
}

/// Row 4's capacity: sync invokes answered per second with many waiting at once.
#[derive(Debug, Clone)]
pub(crate) struct SyncCapacity {
    pub in_flight: usize,
    pub secs: f64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub cpu: CpuUse,
}

impl SyncCapacity {
    pub(crate) fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct LatencyResult {
    /// What the offered rate is half of.
    pub basis: String,
    pub offered_rate: f64,
    pub secs: f64,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// How late the generator sent its requests (actual send - scheduled send): its own
    /// timer's share of the latencies above.
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub cpu: CpuUse,
    pub worker_rss_after: u64,
    /// The broker's own round trip at the same rate (lapin, no Warren code).
    pub broker: Option<Result<crate::broker::RoundTrip, String>>,
    pub notices: NoticeCounts,
}

/// What became of a latency run's completion notices, from management's and the worker's
/// metrics: a wait ended by its deadline is one whose notice was not there in time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NoticeCounts {
    /// Waits that ended at their deadline (then answered from the store).
    pub deadline: u64,
    /// Notices that came after their wait had ended.
    pub late: u64,
    /// Notices the worker could not hand to the broker.
    pub unsent: u64,
}

pub(crate) async fn open_db(url: &str) -> Result<AnyPool> {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| format!("cannot open the store {url}"))
}

impl Mesh {
    pub(crate) async fn start(label: &'static str, store_url: String, settings: Arc<Settings>) -> Result<Mesh> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let tag = label.to_lowercase();
        // The bench measures the API as it runs in production: with a key checked per request.
        let admin_key = format!("bench-admin-{}", uuid::Uuid::now_v7().simple());
        let mut mgmt = Child::spawn(
            &format!("warren-management ({label})"),
            &settings.bin_dir.join("warren-management"),
            &[
                "--amqp".into(),
                settings.amqp_url.clone(),
                "--queue-type".into(),
                settings.queue_type.to_string(),
                "--store".into(),
                store_url.clone(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--admin-key".into(),
                admin_key.clone(),
            ],
            settings.work_dir.join(format!("management-{tag}.log")),
        )?;
        let base = format!("http://127.0.0.1:{port}");
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {admin_key}").parse()?);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(90))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            mgmt.check_alive()?;
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("warren-management did not answer /healthz within 60 s; its output:\n{}", mgmt.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let db = open_db(&store_url).await?;
        let amqp =
            crate::broker::connect(crate::broker::first_node(&settings.amqp_url), "warren-bench-observer").await?;
        Ok(Mesh { label, store_url, mgmt, base, http, db, amqp, stats: Default::default(), settings })
    }

    /// Publishes an echo function on `pool`; returns its name.
    pub(crate) async fn deploy_echo(&self, pool: &str) -> Result<String> {
        self.deploy(pool, Func::Echo).await
    }

    /// Publishes a function of kind `func` on `pool`; returns its name.
    pub(crate) async fn deploy(&self, pool: &str, func: Func) -> Result<String> {
        let name = pool.replacen("bench-", &format!("bench-{}-", func.as_str()), 1);
        let dir = self.settings.work_dir.join("functions").join(&name);
        std::fs::create_dir_all(&dir)?;
        match func {
            Func::Echo => std::fs::write(
                dir.join("function.toml"),
                format!("name = \"{name}\"\nruntime = \"echo\"\npool = \"{pool}\"\ndescription = \"warren-bench\"\n"),
            )?,
            Func::WarmPython => {
                // The example as shipped, on this run's pool under this run's name.
                let src = warm_python_dir();
                let manifest = std::fs::read_to_string(src.join("function.toml"))
                    .with_context(|| format!("cannot read {}", src.join("function.toml").display()))?;
                let mut out = String::new();
                for line in manifest.lines() {
                    let key = line.split('=').next().unwrap_or("").trim();
                    match key {
                        "name" => out.push_str(&format!("name = \"{name}\"")),
                        "pool" => out.push_str(&format!("pool = \"{pool}\"")),
                        "description" => out.push_str("description = \"warren-bench (examples/warm-python)\""),
                        _ => out.push_str(line),
                    }
                    out.push('\n');
                }
                std::fs::write(dir.join("function.toml"), out)?;
                std::fs::copy(src.join("handler.py"), dir.join("handler.py"))
                    .with_context(|| format!("cannot copy {}", src.join("handler.py").display()))?;
            }
        }
        let pkg = warren_wire::package::pack_dir(&dir)
            .with_context(|| format!("cannot pack the {} function", func.as_str()))?;
        let r = self.http.post(format!("{}/api/functions", self.base)).body(pkg).send().await?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        if status.as_u16() != 201 {
            bail!("publishing {name} answered {status}: {text}");
        }
        Ok(name)
    }

    pub(crate) fn start_workers(&self, pool: &str, count: usize) -> Result<Vec<Child>> {
        self.start_workers_with(pool, count, &[])
    }

    /// Workers as [`Mesh::start_workers`] starts them, with `extra` arguments.
    fn start_workers_with(&self, pool: &str, count: usize, extra: &[String]) -> Result<Vec<Child>> {
        let s = &self.settings;
        (0..count)
            .map(|i| {
                let id = format!("{pool}-w{i}");
                let mut args = vec![
                    "--amqp".into(),
                    s.amqp_url.clone(),
                    "--queue-type".into(),
                    s.queue_type.to_string(),
                    "--store".into(),
                    self.store_url.clone(),
                    "--pool".into(),
                    pool.into(),
                    "--concurrency".into(),
                    s.concurrency.to_string(),
                    "--prefetch-multiplier".into(),
                    s.prefetch_multiplier.to_string(),
                    "--cache-dir".into(),
                    s.work_dir.join("cache").join(&id).display().to_string(),
                    "--id".into(),
                    id.clone(),
                    "--grace-secs".into(),
                    "5".into(),
                ];
                args.extend_from_slice(extra);
                Child::spawn(
                    &format!("warren-worker {id}"),
                    &s.bin_dir.join("warren-worker"),
                    &args,
                    s.work_dir.join(format!("{id}.log")),
                )
            })
            .collect()
    }

    /// The sum of the samples of `metric` whose labels contain `label` on the page at `url`
    /// (0 when it has none yet).
    async fn scrape(&self, url: &str, metric: &str, label: &str) -> Result<u64> {
        let page = self.http.get(url).send().await?.error_for_status()?.text().await?;
        Ok(page
            .lines()
            .filter(|l| l.starts_with(metric) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// What became of the completion notices of a latency run so far: (waits that ended at
    /// their deadline, notices that came after their wait ended, notices workers could not
    /// send).
    async fn notice_counts(&self, worker_metrics: &str) -> Result<[u64; 3]> {
        let mgmt = format!("{}/metrics", self.base);
        Ok([
            self.scrape(&mgmt, "warren_sync_waits_total", "ended=\"deadline\"").await?,
            self.scrape(&mgmt, "warren_completion_notices_total", "result=\"late\"").await?,
            self.scrape(worker_metrics, "warren_worker_completion_notices_total", "sent=\"false\"").await?,
        ])
    }

    /// (ready messages, consumers) of a pool's queue; (0, 0) while it does not exist.
    async fn queue_stats(&self, pool: &str) -> Result<(u64, u32)> {
        let kept = self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let ch = match kept.filter(|c| c.status().connected()) {
            Some(c) => c,
            None => {
                let c = self.amqp.create_channel().await?;
                *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                c
            }
        };
        let q = ch
            .queue_declare(
                warren_wire::topology::pool_queue(pool).as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await;
        match q {
            Ok(q) => Ok((q.message_count() as u64, q.consumer_count())),
            // A passive declare of a missing queue closes the channel (404): open another
            // next time.
            Err(_) => {
                *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok((0, 0))
            }
        }
    }

    pub(crate) async fn wait_consumers(&self, pool: &str, workers: &mut [Child]) -> Result<()> {
        let want = workers.len() as u32;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for w in workers.iter_mut() {
                w.check_alive()?;
            }
            if self.queue_stats(pool).await?.1 >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the {want} workers of pool {pool} did not attach to its queue within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes a finished run's queues (its pool and dead-letter queues), so runs leave nothing
    /// behind on the broker.
    pub(crate) async fn delete_queues(&self, pool: &str) {
        use warren_wire::topology::{dead_queue, pool_queue};
        for q in [pool_queue(pool), dead_queue(pool)] {
            // A missing queue closes the channel: one channel per delete.
            if let Ok(ch) = self.amqp.create_channel().await {
                if ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await.is_ok() {
                    let _ = ch.close(200, "done".into()).await;
                }
            }
        }
    }

    fn invoke_url(&self, name: &str, mode: &str) -> String {
        format!("{}/api/functions/{name}/invoke?mode={mode}&timeout_ms=30000", self.base)
    }

    /// `k` sync invokes, `k` at once: every worker loads the function before measuring.
    pub(crate) async fn warm_up(&self, name: &str, k: usize) -> Result<()> {
        let url = self.invoke_url(name, "sync");
        let futs = (0..k).map(|i| {
            let (http, url) = (self.http.clone(), url.clone());
            async move {
                let r = http.post(&url).body(input(i as u64, 32)).send().await?;
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                if status.as_u16() != 200 || !text.contains("succeeded") {
                    bail!("a warm-up invoke answered {status}: {text}");
                }
                Ok(())
            }
        });
        for r in futures_util::future::join_all(futs).await {
            r?;
        }
        Ok(())
    }

    /// (final, succeeded, latest finished_ms) invocations of a function.
    pub(crate) async fn finals(&self, name: &str) -> Result<(u64, u64, Option<i64>)> {
        let row: (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), SUM(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END), MAX(finished_ms)
             FROM warren_invocations WHERE function = $1 AND status NOT IN ('queued', 'running')",
        )
        .bind(name)
        .fetch_one(&self.db)
        .await
        .with_context(|| format!("cannot count the invocations in the {} store", self.label))?;
        Ok((row.0 as u64, row.1.unwrap_or(0) as u64, row.2))
    }

    /// (min started_ms, max finished_ms) of a function's final invocations.
    async fn span_ms(&self, name: &str) -> Result<(Option<i64>, Option<i64>)> {
        let row: (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT MIN(started_ms), MAX(finished_ms)
             FROM warren_invocations WHERE function = $1 AND status NOT IN ('queued', 'running')",
        )
        .bind(name)
        .fetch_one(&self.db)
        .await
        .with_context(|| format!("cannot read the invocations in the {} store", self.label))?;
        Ok(row)
    }

    /// Row 2, split in halves: management takes `n` async invokes with no worker attached
    /// (ingest alone), then `workers` fresh workers drain the backlog (workers alone).
    pub(crate) async fn split(&mut self, workers: usize, n: u64) -> Result<SplitResult> {
        let pool = format!("bench-{}", short_id());
        let name = self.deploy_echo(&pool).await?;
        let mut procs = Vec::new();
        let r = self.split_on(&pool, &name, &mut procs, workers, n).await;
        for p in procs.iter_mut() {
            p.stop(Duration::from_secs(5));
        }
        self.delete_queues(&pool).await;
        r
    }

    async fn split_on(
        &mut self,
        pool: &str,
        name: &str,
        procs: &mut Vec<Child>,
        workers: usize,
        n: u64,
    ) -> Result<SplitResult> {
        // Ingest alone.
        let cpu_before = cpu_snap(self.mgmt.pid(), &[]);
        let start = Instant::now();
        let fired = fire_async(
            self.http.clone(),
            self.invoke_url(name, "async"),
            n,
            self.settings.in_flight,
            self.settings.input_bytes,
        )
        .await;
        let ingest_secs = fired.last.duration_since(start).as_secs_f64();
        let ingest_cpu = cpu_use(&cpu_before, &cpu_snap(self.mgmt.pid(), &[]));
        self.mgmt.check_alive()?;
        let queued = self.queue_stats(pool).await?.0;

        // Workers alone.
        *procs = self.start_workers(pool, workers)?;
        let pids: Vec<u32> = procs.iter().map(|p| p.pid()).collect();
        let cpu_before = cpu_snap(self.mgmt.pid(), &pids);
        let deadline = Instant::now() + self.settings.run_timeout;
        let mut last = (0u64, Instant::now());
        let mut incomplete = false;
        let mut pacer = Pacer::new(0);
        let drained = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for p in procs.iter_mut() {
                p.check_alive()?;
            }
            if !pacer.due() && Instant::now() < deadline {
                continue;
            }
            let polled_at = Instant::now();
            let (done, _, _) = self.finals(name).await?;
            pacer.polled(done, fired.accepted, polled_at.elapsed());
            if done != last.0 {
                last = (done, Instant::now());
            }
            if done >= fired.accepted {
                break done;
            }
            if last.1.elapsed() > Duration::from_secs(10) && done > 0 || Instant::now() > deadline {
                incomplete = true;
                break done;
            }
        };
        let drain_cpu = cpu_use(&cpu_before, &cpu_snap(self.mgmt.pid(), &pids));
        let (first_start, last_finish) = self.span_ms(name).await?;
        let drain_secs = match (first_start, last_finish) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1000.0,
            _ => f64::NAN,
        };
        Ok(SplitResult {
            store: self.label,
            workers,
            requested: n,
            accepted: fired.accepted,
            rejected: fired.rejected,
            first_error: fired.first_error,
            queued,
            ingest_secs,
            ingest_cpu,
            drained,
            drain_secs,
            drain_cpu,
            incomplete,
        })
    }

    /// Rows 2 and 3 (and 6): `n` async invokes of `func`, `in_flight` at once, on `workers`
    /// fresh workers.
    /// Rows 2, 2b and 3: `n` async invocations of `func` with `workers` fresh workers, one
    /// request each (`bulk` 0) or in bulk invokes of `bulk` inputs.
    pub(crate) async fn throughput(&mut self, func: Func, workers: usize, n: u64, bulk: usize) -> Result<LoadResult> {
        let pool = format!("bench-{}", short_id());
        let name = self.deploy(&pool, func).await?;
        let mut procs = self.start_workers(&pool, workers)?;
        let r = self.throughput_on(&pool, &name, func, &mut procs, n, bulk).await;
        for p in procs.iter_mut() {
            p.stop(Duration::from_secs(5));
        }
        self.delete_queues(&pool).await;
        r
    }

    #[allow(clippy::manual_checked_ops)] // `bulk` is checked for 0 by the branch itself
    async fn throughput_on(
        &mut self,
        pool: &str,
        name: &str,
        func: Func,
        procs: &mut [Child],
        n: u64,
        bulk: usize,
    ) -> Result<LoadResult> {
        self.wait_consumers(pool, procs).await?;
        let pids: Vec<u32> = procs.iter().map(|p| p.pid()).collect();
        let worker_rss_idle = pids.iter().filter_map(|p| procs::rss_bytes(*p)).max().unwrap_or(0);
        self.warm_up(name, procs.len() * 4).await?;
        let mgmt_rss_idle = procs::rss_bytes(self.mgmt.pid()).unwrap_or(0);
        let (baseline, base_ok, _) = self.finals(name).await?;
        let target = baseline + n;

        let cpu_before = cpu_snap(self.mgmt.pid(), &pids);
        let start = Instant::now();
        let start_ms = now_ms();
        let load = if bulk == 0 {
            tokio::spawn(fire_async(
                self.http.clone(),
                self.invoke_url(name, "async"),
                n,
                self.settings.in_flight,
                self.settings.input_bytes,
            ))
        } else {
            // As many invocations in flight as the single-request rows, at least two requests.
            let requests = (self.settings.in_flight / bulk).max(2);
            tokio::spawn(fire_bulk(
                self.http.clone(),
                format!("{}/api/functions/{name}/invocations", self.base),
                n,
                requests,
                bulk,
                self.settings.input_bytes,
            ))
        };

        let deadline = start + self.settings.run_timeout;
        let (mut worker_rss_peak, mut mgmt_rss_peak, mut peak_queue_depth) = (0u64, mgmt_rss_idle, 0u64);
        let mut load_out: Option<FireResult> = None;
        let mut last_count = (baseline, Instant::now());
        let (mut done, mut ok, mut last_finished);
        let mut incomplete = false;
        let mut pacer = Pacer::new(baseline);
        let mut load = Some(load);
        let mut rss_by_progress = Vec::new();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.mgmt.check_alive()?;
            for p in procs.iter_mut() {
                p.check_alive()?;
            }
            for p in &pids {
                worker_rss_peak = worker_rss_peak.max(procs::rss_bytes(*p).unwrap_or(0));
            }
            mgmt_rss_peak = mgmt_rss_peak.max(procs::rss_bytes(self.mgmt.pid()).unwrap_or(0));
            peak_queue_depth = peak_queue_depth.max(self.queue_stats(pool).await?.0);
            if load.as_ref().is_some_and(|l| l.is_finished()) {
                load_out = Some(load.take().unwrap().await.context("the load task failed")?);
            }
            if !pacer.due() && Instant::now() < deadline {
                continue;
            }
            let polled_at = Instant::now();
            (done, ok, last_finished) = self.finals(name).await?;
            pacer.polled(done, target, polled_at.elapsed());
            if done != last_count.0 {
                last_count = (done, Instant::now());
            }
            while rss_by_progress.len() < 4 && (done - baseline) * 4 >= n * (rss_by_progress.len() as u64 + 1) {
                let worker = pids.iter().filter_map(|p| procs::rss_bytes(*p)).max().unwrap_or(0);
                rss_by_progress.push((procs::rss_bytes(self.mgmt.pid()).unwrap_or(0), worker));
            }
            if done >= target {
                break;
            }
            // Requests refused before being recorded never show up: stop once all requests
            // are answered and nothing has moved for 10 s.
            if load_out.is_some() && last_count.1.elapsed() > Duration::from_secs(10) {
                incomplete = true;
                break;
            }
            if Instant::now() > deadline {
                incomplete = true;
                break;
            }
        }
        let observed = start.elapsed().as_secs_f64();
        let cpu_after = cpu_snap(self.mgmt.pid(), &pids);
        let worker_rss_after = pids.iter().filter_map(|p| procs::rss_bytes(*p)).max().unwrap_or(0);
        let handlers = procs::descendants(&pids);
        let handlers_rss_after = handlers.iter().filter_map(|p| procs::rss_bytes(*p)).sum();
        let load_out = match (load_out, load) {
            (Some(o), _) => o,
            (None, Some(l)) => {
                if incomplete {
                    l.abort();
                    FireResult {
                        accepted: 0,
                        rejected: 0,
                        first_error: Some("the load did not finish".into()),
                        last: start,
                    }
                } else {
                    l.await.context("the load task failed")?
                }
            }
            (None, None) => unreachable!(),
        };
        let end_to_end_secs = match last_finished {
            Some(ms) if ms > start_ms => (ms - start_ms) as f64 / 1000.0,
            _ => observed,
        };
        Ok(LoadResult {
            store: self.label,
            func,
            workers: procs.len(),
            bulk,
            requested: n,
            accepted: load_out.accepted,
            rejected: load_out.rejected,
            first_error: load_out.first_error,
            publish_secs: load_out.last.duration_since(start).as_secs_f64(),
            end_to_end_secs,
            completed: done - baseline,
            succeeded: ok - base_ok,
            incomplete,
            peak_queue_depth,
            worker_rss_idle,
            worker_rss_peak,
            worker_rss_after,
            mgmt_rss_idle,
            mgmt_rss_peak,
            handlers_after: handlers.len(),
            handlers_rss_after,
            rss_by_progress,
            cpu: cpu_use(&cpu_before, &cpu_after),
        })
    }

    /// Row 5: a batch of `items` echo items, submitted as one streamed NDJSON body to
    /// `POST /api/batches`, with `workers` fresh workers attached; then, with workers, until
    /// the batch is `done`.
    pub(crate) async fn batch(&mut self, items: u64, workers: usize) -> Result<BatchResult> {
        let pool = format!("bench-{}", short_id());
        let name = self.deploy(&pool, Func::Echo).await?;
        let mut procs = self.start_workers(&pool, workers)?;
        let r = self.batch_on(&pool, &name, &mut procs, items).await;
        for p in procs.iter_mut() {
            p.stop(Duration::from_secs(5));
        }
        self.delete_queues(&pool).await;
        r
    }

    async fn batch_on(&mut self, pool: &str, name: &str, procs: &mut [Child], items: u64) -> Result<BatchResult> {
        let pids: Vec<u32> = procs.iter().map(|p| p.pid()).collect();
        if !procs.is_empty() {
            self.wait_consumers(pool, procs).await?;
        }
        let worker_rss_idle = pids.iter().filter_map(|p| procs::rss_bytes(*p)).max().unwrap_or(0);
        if !procs.is_empty() {
            self.warm_up(name, procs.len() * 4).await?;
        }
        let mgmt_rss_idle = procs::rss_bytes(self.mgmt.pid()).unwrap_or(0);
        let (baseline, base_ok, _) = self.finals(name).await?;

        // The NDJSON body, made before the clock starts, sent in 64 KiB parts.
        let mut body = Vec::with_capacity(items as usize * (self.settings.input_bytes + 1));
        for i in 0..items {
            body.extend_from_slice(&input(i, self.settings.input_bytes));
            body.push(b'\n');
        }
        let body = bytes::Bytes::from(body);
        let body_bytes = body.len() as u64;
        const PART: usize = 64 << 10;
        let parts: Vec<bytes::Bytes> =
            (0..body.len()).step_by(PART).map(|o| body.slice(o..(o + PART).min(body.len()))).collect();
        let req = self
            .http
            .post(format!("{}/api/batches?function={name}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .timeout(self.settings.run_timeout)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                parts.into_iter().map(Ok::<_, std::io::Error>),
            )));

        let (mut worker_rss_peak, mut mgmt_rss_peak, mut peak_queue_depth) = (0u64, mgmt_rss_idle, 0u64);
        let cpu_before = cpu_snap(self.mgmt.pid(), &pids);
        let start = Instant::now();
        let start_ms = now_ms();
        let mut send = tokio::spawn(async move {
            let r = req.send().await?;
            let answered = Instant::now();
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            Ok::<_, reqwest::Error>((status, text, answered))
        });
        let (status, text, answered) = loop {
            tokio::select! {
                r = &mut send => break r.context("the batch request task failed")?.context("the batch request failed")?,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    self.mgmt.check_alive()?;
                    for p in procs.iter_mut() {
                        p.check_alive()?;
                    }
                    for p in &pids {
                        worker_rss_peak = worker_rss_peak.max(procs::rss_bytes(*p).unwrap_or(0));
                    }
                    mgmt_rss_peak = mgmt_rss_peak.max(procs::rss_bytes(self.mgmt.pid()).unwrap_or(0));
                    peak_queue_depth = peak_queue_depth.max(self.queue_stats(pool).await?.0);
                }
            }
        };
        let accept_secs = answered.duration_since(start).as_secs_f64();
        let accept_cpu = cpu_use(&cpu_before, &cpu_snap(self.mgmt.pid(), &pids));
        let mgmt_rss_peak_accept = mgmt_rss_peak;
        if status.as_u16() != 201 {
            bail!(
                "the batch submission answered {status} after {accept_secs:.1} s: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        let b: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("the batch submission's 201 is not JSON: {text}"))?;
        let id = b["id"].as_str().with_context(|| format!("the batch submission's 201 has no id: {text}"))?.to_string();
        let total = b["total"].as_u64().unwrap_or(0);
        let state_at_201 = b["state"].as_str().unwrap_or("?").to_string();
        let mut r = BatchResult {
            store: self.label,
            items,
            workers: procs.len(),
            body_bytes,
            total,
            state_at_201: state_at_201.clone(),
            accept_secs,
            accept_cpu,
            done_secs: None,
            last_item_secs: None,
            done_cpu: None,
            state: state_at_201,
            succeeded: 0,
            not_succeeded: 0,
            incomplete: total != items,
            peak_queue_depth,
            worker_rss_idle,
            worker_rss_peak,
            worker_rss_after: 0,
            mgmt_rss_idle,
            mgmt_rss_peak_accept,
            mgmt_rss_peak,
        };
        if procs.is_empty() {
            return Ok(r);
        }

        // Until done: count the items' outcomes rarely (Pacer), then ask for the batch until
        // its state is `done`.
        let target = baseline + total;
        let deadline = answered + self.settings.run_timeout;
        let mut pacer = Pacer::new(baseline);
        let mut last_count = (baseline, Instant::now());
        let mut stored = false;
        let batch_url = format!("{}/api/batches/{id}", self.base);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.mgmt.check_alive()?;
            for p in procs.iter_mut() {
                p.check_alive()?;
            }
            for p in &pids {
                worker_rss_peak = worker_rss_peak.max(procs::rss_bytes(*p).unwrap_or(0));
            }
            mgmt_rss_peak = mgmt_rss_peak.max(procs::rss_bytes(self.mgmt.pid()).unwrap_or(0));
            peak_queue_depth = peak_queue_depth.max(self.queue_stats(pool).await?.0);
            if Instant::now() > deadline {
                r.incomplete = true;
                break;
            }
            if !stored {
                if !pacer.due() {
                    continue;
                }
                let polled_at = Instant::now();
                let (done, _, last_finished) = self.finals(name).await?;
                pacer.polled(done, target, polled_at.elapsed());
                if done != last_count.0 {
                    last_count = (done, Instant::now());
                }
                if done >= target {
                    stored = true;
                    r.last_item_secs =
                        last_finished.filter(|&ms| ms > start_ms).map(|ms| (ms - start_ms) as f64 / 1000.0);
                } else if last_count.1.elapsed() > Duration::from_secs(10) {
                    r.incomplete = true;
                    break;
                }
                continue;
            }
            let b: serde_json::Value = self.http.get(&batch_url).send().await?.error_for_status()?.json().await?;
            r.state = b["state"].as_str().unwrap_or("?").to_string();
            if r.state == "done" || r.state == "cancelled" {
                let counts = &b["counts"];
                r.succeeded = counts["succeeded"].as_u64().unwrap_or(0);
                r.not_succeeded = counts
                    .as_object()
                    .map(|m| m.iter().filter(|(k, _)| *k != "succeeded").filter_map(|(_, v)| v.as_u64()).sum())
                    .unwrap_or(0);
                r.done_secs =
                    b["finished_ms"].as_i64().filter(|&ms| ms > start_ms).map(|ms| (ms - start_ms) as f64 / 1000.0);
                r.incomplete |= r.state != "done" || r.succeeded != total;
                break;
            }
        }
        let cpu_after = cpu_snap(self.mgmt.pid(), &pids);
        r.done_cpu = Some(cpu_use(&cpu_before, &cpu_after));
        if r.state != "done" && r.state != "cancelled" {
            // Not finished: say how far the items got.
            let (_, ok, _) = self.finals(name).await?;
            r.succeeded = ok - base_ok;
        }
        r.worker_rss_after = pids.iter().filter_map(|p| procs::rss_bytes(*p)).max().unwrap_or(0);
        r.worker_rss_peak = worker_rss_peak;
        r.mgmt_rss_peak = mgmt_rss_peak;
        r.peak_queue_depth = peak_queue_depth;
        Ok(r)
    }

    /// Row 4: sync invokes at a fixed offered rate (open loop) on one fresh worker.
    /// Sync invokes with `in_flight` waiting at once (each task sends its next one when it has
    /// its answer) for `secs`, 1 worker: how many the mesh answers per second, the capacity the
    /// latency row offers half of.
    pub(crate) async fn sync_capacity(&mut self, in_flight: usize, secs: f64) -> Result<SyncCapacity> {
        let pool = format!("bench-{}", short_id());
        let name = self.deploy_echo(&pool).await?;
        let mut procs = self.start_workers(&pool, 1)?;
        let r = async {
            self.wait_consumers(&pool, &mut procs).await?;
            self.warm_up(&name, 16).await?;
            let pids: Vec<u32> = procs.iter().map(|p| p.pid()).collect();
            let url = self.invoke_url(&name, "sync");
            let cpu_before = cpu_snap(self.mgmt.pid(), &pids);
            let start = Instant::now();
            let until = start + Duration::from_secs_f64(secs);
            let tasks: Vec<_> = (0..in_flight)
                .map(|t| {
                    let (http, url, bytes) = (self.http.clone(), url.clone(), self.settings.input_bytes);
                    tokio::spawn(async move {
                        let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
                        let mut i = t as u64;
                        while Instant::now() < until {
                            match http.post(&url).body(input(i, bytes)).send().await {
                                Ok(r) => {
                                    let s = r.status();
                                    let text = r.text().await.unwrap_or_default();
                                    if s.as_u16() == 200 && text.contains("\"succeeded\"") {
                                        ok += 1;
                                    } else {
                                        errors += 1;
                                        first_error.get_or_insert(format!(
                                            "{s}: {}",
                                            text.chars().take(300).collect::<String>()
                                        ));
                                    }
                                }
                                Err(e) => {
                                    errors += 1;
                                    first_error.get_or_insert(format!("request failed: {e}"));
                                }
                            }
                            i += in_flight as u64;
                        }
                        (ok, errors, first_error)
                    })
                })
                .collect();
            let mut out =
                SyncCapacity { in_flight, secs: 0.0, ok: 0, errors: 0, first_error: None, cpu: CpuUse::default() };
            for t in tasks {
                let (ok, errors, first) = t.await.context("a capacity request task failed")?;
                out.ok += ok;
                out.errors += errors;
                if out.first_error.is_none() {
                    out.first_error = first;
                }
            }
            out.secs = start.elapsed().as_secs_f64();
            out.cpu = cpu_use(&cpu_before, &cpu_snap(self.mgmt.pid(), &pids));
            for p in procs.iter_mut() {
                p.check_alive()?;
            }
            self.mgmt.check_alive()?;
            Ok::<_, anyhow::Error>(out)
        }
        .await;
        for p in procs.iter_mut() {
            p.stop(Duration::from_secs(5));
        }
        self.delete_queues(&pool).await;
        r
    }

    pub(crate) async fn latency(&mut self, rate: f64, secs: f64) -> Result<LatencyResult> {
        let pool = format!("bench-{}", short_id());
        let name = self.deploy_echo(&pool).await?;
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let worker_metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
        let mut procs =
            self.start_workers_with(&pool, 1, &["--metrics-addr".into(), format!("127.0.0.1:{metrics_port}")])?;
        let r = async {
            self.wait_consumers(&pool, &mut procs).await?;
            self.warm_up(&name, 16).await?;
            let pids: Vec<u32> = procs.iter().map(|p| p.pid()).collect();
            let notices_before = self.notice_counts(&worker_metrics).await?;
            let cpu_before = cpu_snap(self.mgmt.pid(), &pids);
            let out =
                open_loop(self.http.clone(), self.invoke_url(&name, "sync"), rate, secs, self.settings.input_bytes)
                    .await;
            let cpu = cpu_use(&cpu_before, &cpu_snap(self.mgmt.pid(), &pids));
            for p in procs.iter_mut() {
                p.check_alive()?;
            }
            self.mgmt.check_alive()?;
            let mut out = out?;
            out.cpu = cpu;
            out.worker_rss_after = procs::rss_bytes(procs[0].pid()).unwrap_or(0);
            // Read once the last answer is in: a notice still on its way is not counted as late.
            let notices_after = self.notice_counts(&worker_metrics).await?;
            let [deadline, late, unsent] = std::array::from_fn(|i| notices_after[i] - notices_before[i]);
            out.notices = NoticeCounts { deadline, late, unsent };
            Ok::<_, anyhow::Error>(out)
        }
        .await;
        for p in procs.iter_mut() {
            p.stop(Duration::from_secs(5));
        }
        self.delete_queues(&pool).await;
        r
    }
}

/// When to count the store next: rarely while far from done, every 100 ms near the end, so
/// the benchmark's own COUNT queries take little from the store it measures; and never more
/// often than every 20 times the last count took (a count over a million rows costs the
/// store most of a second). The end time comes from the records' `finished_ms`, not from
/// when a poll saw it.
struct Pacer {
    since: Instant,
    from: u64,
    next: Instant,
}

impl Pacer {
    fn new(from: u64) -> Pacer {
        let now = Instant::now();
        Pacer { since: now, from, next: now + Duration::from_millis(300) }
    }

    fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    fn polled(&mut self, done: u64, target: u64, took: Duration) {
        let moved = done.saturating_sub(self.from);
        let wait = if moved == 0 {
            0.3
        } else {
            let rate = moved as f64 / self.since.elapsed().as_secs_f64().max(1e-3);
            target.saturating_sub(done) as f64 / rate / 2.0
        };
        let wait = wait.clamp(0.1, 2.0).max(took.as_secs_f64() * 20.0);
        self.next = Instant::now() + Duration::from_secs_f64(wait);
    }
}

struct FireResult {
    accepted: u64,
    rejected: u64,
    first_error: Option<String>,
    last: Instant,
}

/// `n` async invokes from `in_flight` tasks, each sending its next one as soon as the previous
/// is answered.
async fn fire_async(http: reqwest::Client, url: String, n: u64, in_flight: usize, input_bytes: usize) -> FireResult {
    fire(http, url, n, in_flight, 0, input_bytes).await
}

/// `n` invocations in bulk invokes of `bulk` NDJSON inputs, from `requests` tasks.
async fn fire_bulk(
    http: reqwest::Client,
    url: String,
    n: u64,
    requests: usize,
    bulk: usize,
    input_bytes: usize,
) -> FireResult {
    fire(http, url, n, requests, bulk, input_bytes).await
}

/// `n` invocations from `tasks` tasks, each sending its next request as soon as the previous is
/// answered: one input a request (`per_request` 0: `invoke?mode=async`, answered 202 `{id}`),
/// or `per_request` NDJSON inputs (a bulk invoke, answered with how many it `accepted`; a 503
/// may still have queued some, which run and count).
async fn fire(
    http: reqwest::Client,
    url: String,
    n: u64,
    tasks: usize,
    per_request: usize,
    input_bytes: usize,
) -> FireResult {
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let start = Instant::now();
    let step = per_request.max(1) as u64;
    let tasks: Vec<_> = (0..tasks)
        .map(|_| {
            let (http, url, next, accepted, rejected, first_error) =
                (http.clone(), url.clone(), next.clone(), accepted.clone(), rejected.clone(), first_error.clone());
            tokio::spawn(async move {
                let mut last = start;
                loop {
                    let from = next.fetch_add(step, Ordering::Relaxed);
                    if from >= n {
                        return last;
                    }
                    let to = (from + step).min(n);
                    let sent = to - from;
                    let req = if per_request == 0 {
                        http.post(&url).body(input(from, input_bytes))
                    } else {
                        let mut body = Vec::with_capacity(sent as usize * (input_bytes + 1));
                        for i in from..to {
                            body.extend_from_slice(&input(i, input_bytes));
                            body.push(b'\n');
                        }
                        http.post(&url).header("content-type", "application/x-ndjson").body(body)
                    };
                    let (ok, err) = match req.send().await {
                        Ok(r) => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            let ok = if per_request == 0 {
                                u64::from(status.as_u16() == 202)
                            } else {
                                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                                v["accepted"].as_u64().unwrap_or(0).min(sent)
                            };
                            let err = (status.as_u16() != 202 || ok < sent).then(|| {
                                format!(
                                    "{status} ({ok} of {sent} accepted): {}",
                                    text.chars().take(300).collect::<String>()
                                )
                            });
                            (ok, err)
                        }
                        Err(e) => (0, Some(format!("request failed: {e}"))),
                    };
                    last = Instant::now();
                    accepted.fetch_add(ok, Ordering::Relaxed);
                    if let Some(e) = err {
                        first_error.lock().unwrap().get_or_insert(e);
                        rejected.fetch_add(sent - ok, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut last = start;
    for t in tasks {
        if let Ok(l) = t.await {
            last = last.max(l);
        }
    }
    let first_error = first_error.lock().unwrap().take();
    FireResult {
        accepted: accepted.load(Ordering::Relaxed),
        rejected: rejected.load(Ordering::Relaxed),
        first_error,
        last,
    }
}

/// Sends sync invokes on a fixed schedule, never waiting for earlier answers; each latency
/// runs from the request's scheduled time (so a stalled sender shows up as latency too).
///
/// The schedule is kept by a thread of its own sleeping with the OS timer (tens of
/// microseconds late), not by tokio's timer, whose millisecond ticks sent each request about
/// 1 ms late on average and counted that millisecond as the mesh's latency. How late each
/// request still went is measured and reported beside the latencies.
async fn open_loop(
    http: reqwest::Client,
    url: String,
    rate: f64,
    secs: f64,
    input_bytes: usize,
) -> Result<LatencyResult> {
    let total = (rate * secs).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let runtime = tokio::runtime::Handle::current();
    let pacer = std::thread::Builder::new().name("bench-pacer".into()).spawn(move || {
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let at = start + interval.mul_f64(i as f64);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let (http, url) = (http.clone(), url.clone());
            tasks.push(runtime.spawn(async move {
                let lag = at.elapsed().as_secs_f64() * 1000.0;
                let r = http.post(&url).body(input(i, input_bytes)).send().await;
                let res = match r {
                    Ok(r) => {
                        let s = r.status();
                        let text = r.text().await.unwrap_or_default();
                        if s.as_u16() == 200 && text.contains("\"succeeded\"") {
                            Ok(())
                        } else {
                            Err(format!("{s}: {}", text.chars().take(300).collect::<String>()))
                        }
                    }
                    Err(e) => Err(format!("request failed: {e}")),
                };
                (at.elapsed().as_secs_f64() * 1000.0, lag, res)
            }));
        }
        tasks
    })?;
    let tasks = tokio::task::spawn_blocking(move || pacer.join())
        .await
        .context("the pacer thread")?
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    let mut lat = Vec::with_capacity(tasks.len());
    let mut lags = Vec::with_capacity(tasks.len());
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
    for t in tasks {
        let (ms, lag, res) = t.await.context("a latency request task failed")?;
        lags.push(lag);
        match res {
            Ok(()) => {
                ok += 1;
                lat.push(ms);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    lags.sort_by(|a, b| a.total_cmp(b));
    Ok(LatencyResult {
        basis: String::new(),
        broker: None,
        offered_rate: rate,
        secs,
        sent: total,
        ok,
        errors,
        first_error,
        p50_ms: percentile(&lat, 50.0),
        p90_ms: percentile(&lat, 90.0),
        p99_ms: percentile(&lat, 99.0),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        lag_p50_ms: percentile(&lags, 50.0),
        lag_p99_ms: percentile(&lags, 99.0),
        cpu: CpuUse::default(),
        worker_rss_after: 0,
        notices: NoticeCounts::default(),
    })
}
