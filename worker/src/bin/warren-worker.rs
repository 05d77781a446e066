//! `warren-worker`: a stateless worker of the distributed mode.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use warren_transport::amqp::{AmqpTransport, Brokers};
use warren_transport::{QueueType, Transport, TransportError};
use warren_worker::{Worker, WorkerConfig};

/// mimalloc instead of the system allocator (Unix): a delivery's stages allocate and free many
/// small buffers, and glibc's malloc took a large share of the worker's instructions.
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Warren worker: consumes invocations from RabbitMQ, runs the functions, stores results
/// and logs in the store, and acks each message only once its outcome is stored.
///
/// Start as many as you like, on as many machines as you like: they share the work of a pool
/// as competing consumers. Stop one with SIGTERM or Ctrl-C: it finishes what it holds (up to
/// --grace-secs), returns the rest to the queue, and exits 0.
///
/// Example:
///   warren-worker --amqp amqp://guest:guest@127.0.0.1:5672/%2f \
///                 --store postgres://postgres@127.0.0.1/warren --pool default --concurrency 8
#[derive(Parser, Debug)]
#[command(name = "warren-worker", version, verbatim_doc_comment)]
struct Args {
    /// RabbitMQ URL (amqp://user:password@host:port/vhost; the default vhost is %2f). For a
    /// cluster, list its nodes separated by commas: the worker connects to one and moves to
    /// another when it is lost.
    #[arg(long, env = "WARREN_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: Brokers,
    /// The type of Warren's queues on RabbitMQ: classic (one node holds each queue) or quorum
    /// (replicated across a cluster, RabbitMQ 3.10 or later). Every management and worker of
    /// one deployment must use the same; see "High availability" in the README.
    #[arg(long, env = "WARREN_QUEUE_TYPE", default_value = "classic")]
    queue_type: QueueType,
    /// Store URL: postgres://…, mssql://USER:PASSWORD@HOST:PORT/DB, or sqlite://PATH.
    #[arg(long, env = "WARREN_STORE_URL")]
    store: String,
    /// Pool (queue) to serve, as NAME or NAME:CONCURRENCY; repeat or separate with commas to
    /// serve several, each with its own concurrency (default --concurrency), so that a busy
    /// batch pool cannot starve an interactive one: --pool default:8,batch:2
    #[arg(long = "pool", env = "WARREN_POOL", default_value = "default", value_delimiter = ',')]
    pools: Vec<String>,
    /// Invocations run at once per pool.
    #[arg(long, env = "WARREN_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1000))]
    concurrency: u16,
    /// Messages taken from the broker per pool, as a multiple of its concurrency. Above 1, new
    /// messages start while finished ones are being stored: more throughput for short
    /// functions. For long-running ones use 1, so that no message waits here while another
    /// worker is idle.
    #[arg(long, env = "WARREN_PREFETCH_MULTIPLIER", default_value_t = warren_worker::DEFAULT_PREFETCH_MULTIPLIER,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    prefetch_multiplier: u16,
    /// Folder where function packages are unpacked and cached by hash.
    #[arg(long, env = "WARREN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Size of the package cache, in MB, past which the least recently used packages are removed.
    #[arg(long, env = "WARREN_CACHE_MAX_MB", default_value_t = 2048)]
    cache_max_mb: u64,
    /// Largest result an invocation may produce, in bytes; more is a failure.
    #[arg(long, env = "WARREN_MAX_OUTPUT_BYTES", default_value_t = 16 << 20)]
    max_output_bytes: usize,
    /// Log lines kept per invocation; the rest are counted and dropped.
    #[arg(long, env = "WARREN_MAX_LOG_LINES", default_value_t = 10_000)]
    max_log_lines: usize,
    /// Key that opens secret settings: the same one management was given.
    #[arg(long, env = "WARREN_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<SecretString>,
    /// Seconds to finish in-flight invocations after a stop signal.
    #[arg(long, env = "WARREN_GRACE_SECS", default_value_t = 30)]
    grace_secs: u64,
    /// Worker id shown in the store (default: host-pid-random).
    #[arg(long, env = "WARREN_WORKER_ID")]
    id: Option<String>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (off unless given), e.g. 0.0.0.0:9464.
    #[arg(long, env = "WARREN_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Log format on stderr: text, or json (one object per line, with the invocation's span).
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = warren_service::telemetry::LogFormat::Text)]
    log_format: warren_service::telemetry::LogFormat,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    warren_service::telemetry::init_tracing(args.log_format);
    if let Err(e) = run(args).await {
        eprintln!("warren-worker: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut pools = Vec::new();
    for p in &args.pools {
        let (name, conc) = match p.split_once(':') {
            Some((n, c)) => {
                let c: u16 = c.parse().ok().filter(|c| (1..=1000).contains(c)).ok_or_else(|| {
                    anyhow::anyhow!("--pool {p:?}: the concurrency after ':' must be a number from 1 to 1000")
                })?;
                (n, c)
            }
            None => (p.as_str(), args.concurrency),
        };
        anyhow::ensure!(
            warren_wire::manifest::valid_name(name),
            "pool name {name:?} must be 1-64 letters, digits, '-' or '_'"
        );
        pools.push((name.to_string(), conc));
    }
    let store = warren_store::open(&args.store).await?;
    let mut cfg = WorkerConfig::new(pools);
    cfg.prefetch_multiplier = args.prefetch_multiplier;
    if let Some(id) = args.id {
        cfg.id = id;
    }
    if let Some(dir) = args.cache_dir {
        cfg.cache_dir = dir;
    }
    cfg.cache_max_bytes = args.cache_max_mb << 20;
    cfg.limits.max_output_bytes = args.max_output_bytes;
    cfg.limits.max_log_lines = args.max_log_lines;
    if let Some(k) = &args.secret_key {
        cfg.secret_key = Some(warren_service::secret::SecretKey::from_hex(k.expose_secret())?);
    }
    let hold = Duration::from_secs(10);
    let transport = Arc::new(AmqpTransport::connect_to(&args.amqp.0, &cfg.id, args.queue_type, hold).await?);
    // Queues of another type than --queue-type stop the worker now, before it takes work.
    for (pool, _) in &cfg.pools {
        match transport.declare_pool(pool).await {
            Err(e @ TransportError::QueueType(_)) => anyhow::bail!("{e}"),
            Err(e) => tracing::warn!(%pool, error = %e, "cannot declare the pool's queues yet"),
            Ok(()) => {}
        }
    }
    let worker = Worker::new(store, transport, cfg);
    let stop = CancellationToken::new();
    let mut metrics = None;
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}; pick another --metrics-addr"))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics at /metrics");
        let w = worker.clone();
        let render = move || w.metrics_text();
        metrics = Some(tokio::spawn(warren_worker::metrics::serve(render, listener, stop.clone().cancelled_owned())));
    }
    let signal = stop.clone();
    tokio::spawn(async move {
        warren_service::shutdown::shutdown_signal().await;
        tracing::info!("stop requested: finishing in-flight invocations");
        signal.cancel();
    });
    worker.run(stop, Duration::from_secs(args.grace_secs)).await?;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    Ok(())
}
