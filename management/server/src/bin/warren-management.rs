//! `warren-management`: the management role of the distributed mode.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use secrecy::{ExposeSecret, SecretString};
use warren_management::keys::AuthMode;
use warren_management::{Config, Management};
use warren_service::telemetry::LogFormat;
use warren_transport::amqp::{AmqpTransport, Brokers};
use warren_transport::{QueueType, TransportError};
use warren_wire::retention::{Keep, Policy};

/// mimalloc instead of the system allocator: management allocates and frees a few hundred
/// small buffers per request, and glibc's malloc was over a third of its instructions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Warren management: the HTTP API that publishes functions and invocations to RabbitMQ and
/// reads outcomes from the store. Run one or several behind a load balancer; they share nothing
/// but the broker and the store.
///
/// Example:
///   warren-management --amqp amqp://guest:guest@127.0.0.1:5672/%2f \
///                     --store postgres://postgres@127.0.0.1/warren --listen 0.0.0.0:7070
#[derive(Parser, Debug)]
#[command(name = "warren-management", version, verbatim_doc_comment)]
struct Args {
    /// RabbitMQ URL (amqp://user:password@host:port/vhost; the default vhost is %2f). For a
    /// cluster, list its nodes separated by commas: management connects to one and moves to
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
    /// Address to serve the API on.
    #[arg(long, env = "WARREN_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Largest invocation input accepted, in bytes (larger ones get 413).
    #[arg(long, env = "WARREN_MAX_PAYLOAD_BYTES", default_value_t = 1 << 20)]
    max_payload_bytes: usize,
    /// Key that seals secret settings (64 hex chars; `openssl rand -hex 32`). Workers need the
    /// same key to open them.
    #[arg(long, env = "WARREN_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<SecretString>,
    /// Largest function package accepted at publish, in bytes.
    #[arg(long, env = "WARREN_MAX_PACKAGE_BYTES", default_value_t = 64 << 20)]
    max_package_bytes: u64,
    /// Largest unpacked size of a package, in bytes.
    #[arg(long, env = "WARREN_MAX_UNPACKED_BYTES", default_value_t = 512 << 20)]
    max_unpacked_bytes: u64,
    /// Unpacked-to-packed size ratio above which a package is refused as a decompression bomb.
    #[arg(long, env = "WARREN_MAX_PACKAGE_RATIO", default_value_t = 200)]
    max_package_ratio: u64,
    /// The admin API key (at least 16 characters; `openssl rand -hex 32`). Requests carry it as
    /// `Authorization: Bearer KEY` or `x-warren-key: KEY`. It is never stored; more keys
    /// (admin or per function) are made with `warren keys create`.
    #[arg(long, env = "WARREN_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<SecretString>,
    /// Serve without checking any key: everyone may do everything. For a closed test network only.
    #[arg(long, conflicts_with = "admin_key")]
    insecure_no_auth: bool,
    /// Seconds without a lease renewed after which an instance counts as stopped for good
    /// (killed, its machine lost). Another instance then settles what it left half done:
    /// invocations it recorded but could not publish become failed ("not queued"), and a batch
    /// it was reading keeps the items recorded so far. Each instance renews its lease every
    /// second (every sixth of this, if shorter), timed by the store's clock. Keep it longer than
    /// a store outage the instances should ride out.
    #[arg(long, env = "WARREN_INSTANCE_LEASE_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    instance_lease_secs: u64,
    /// API connections open at once. At the limit the connections idle for 200 ms or more
    /// between keep-alive requests are closed, and new connections wait until one closes (a
    /// warning says so). The process raises its open-file limit to
    /// the hard one (`ulimit -Hn`) at start; keep this under it, less the store's and broker's
    /// connections.
    #[arg(long, env = "WARREN_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Seconds a client may send nothing while the server waits for it: the request's
    /// headers, the next request on a keep-alive connection, the rest of a request body. Past
    /// it the connection is closed (a body cut short fails its request). Never counted while a
    /// request is being answered. A bulk invoke also waits at most this long for its turn
    /// (503 after it), and its body must be in within twice this once it has one (408).
    #[arg(long, env = "WARREN_CLIENT_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    client_timeout_secs: u64,
    /// Seconds an invoke's `Idempotency-Key` names its invocation: a repeat within them (same
    /// function, same key) gets the first invocation's id and outcome instead of a new run.
    #[arg(long, env = "WARREN_IDEMPOTENCY_WINDOW_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    idempotency_window_secs: u64,
    /// How long succeeded invocations are kept, with their logs, counted from their end: a
    /// whole number with s, m, h or d ("7d", "12h"), or "forever". A function's manifest may
    /// say otherwise in its [retention] section.
    #[arg(long, env = "WARREN_RETAIN_SUCCEEDED", default_value = "7d", value_parser = parse_keep)]
    retain_succeeded: Keep,
    /// How long failed, timed-out, dead and cancelled invocations are kept (and ended batches:
    /// the longer of the two).
    #[arg(long, env = "WARREN_RETAIN_FAILED", default_value = "30d", value_parser = parse_keep)]
    retain_failed: Keep,
    /// How many of each function's newest version numbers are kept; older versions are removed
    /// unless active or still used by a queued or running invocation or an open batch. 0 keeps
    /// every version.
    #[arg(long, env = "WARREN_RETAIN_VERSIONS", default_value_t = 10)]
    retain_versions: u32,
    /// Seconds between two cleanups. One instance at a time cleans (the store decides); it
    /// deletes in chunks of 1,000 rows, each its own short transaction.
    #[arg(long, env = "WARREN_CLEANUP_EVERY_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    cleanup_every_secs: u64,
    /// Seconds after a function's publish or activation during which none of its versions is
    /// removed (a synchronous invoke's message names its version without a record).
    #[arg(long, env = "WARREN_RETAIN_VERSIONS_QUIET_SECS", default_value_t = 600)]
    retain_versions_quiet_secs: u64,
    /// Log format on stderr: text, or json (one object per line, with the invocation's span).
    #[arg(long, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn parse_keep(s: &str) -> Result<Keep, String> {
    s.parse()
}

/// The exit code of an invalid configuration (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    warren_service::telemetry::init_tracing(args.log_format);
    let admin_key = args.admin_key.as_ref().filter(|k| !k.expose_secret().trim().is_empty());
    let auth = match (admin_key, args.insecure_no_auth) {
        (Some(k), _) => match AuthMode::with_admin_key(k) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("warren-management: {e}");
                std::process::exit(EXIT_CONFIG);
            }
        },
        (None, true) => {
            tracing::warn!("--insecure-no-auth: no API key is checked, anyone who reaches this port may do anything");
            AuthMode::Open
        }
        (None, false) => {
            eprintln!(
                "warren-management: no admin key: give one with --admin-key or WARREN_ADMIN_KEY (e.g. `openssl rand -hex 32`), \
                 or pass --insecure-no-auth to serve without keys on a closed network"
            );
            std::process::exit(EXIT_CONFIG);
        }
    };
    if let Err(e) = run(args, auth).await {
        eprintln!("warren-management: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args, auth: AuthMode) -> anyhow::Result<()> {
    let store = warren_store::open(&args.store).await?;
    let name = format!("warren-management@{}", warren_service::host::hostname());
    let hold = Duration::from_secs(10);
    let transport = Arc::new(AmqpTransport::connect_to(&args.amqp.0, &name, args.queue_type, hold).await?);
    let package_limits = warren_wire::package::Limits {
        max_package_bytes: args.max_package_bytes,
        max_unpacked_bytes: args.max_unpacked_bytes,
        max_ratio: args.max_package_ratio,
        ..Default::default()
    };
    let secret_key = match &args.secret_key {
        Some(k) => Some(warren_service::secret::SecretKey::from_hex(k.expose_secret())?),
        None => None,
    };
    let config = Config {
        max_payload_bytes: args.max_payload_bytes,
        package_limits,
        secret_key,
        auth,
        amqp_url: Some(args.amqp.joined()),
        queue_type: args.queue_type,
        instance_lease: Duration::from_secs(args.instance_lease_secs),
        max_connections: args.max_connections as usize,
        client_timeout: Duration::from_secs(args.client_timeout_secs),
        idempotency_window: Duration::from_secs(args.idempotency_window_secs),
        retention: Policy {
            succeeded: args.retain_succeeded,
            failed: args.retain_failed,
            versions: args.retain_versions,
        },
        cleanup_every: Duration::from_secs(args.cleanup_every_secs),
        versions_quiet: Duration::from_secs(args.retain_versions_quiet_secs),
        ..Config::default()
    };
    let m = Management::start(store, transport, config).await?;
    // Queues of another type than --queue-type stop this instance now, not each invoke later.
    match m.invoker.declare_pools().await {
        Err(warren_management::Error::Transport(e @ TransportError::QueueType(_))) => {
            m.stop().await;
            anyhow::bail!("{e}");
        }
        Err(e) => tracing::warn!(error = %e, "cannot check the pools' queues yet"),
        Ok(()) => {}
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "management listening");
    warren_management::serve(m.clone(), listener, warren_service::shutdown::shutdown_signal()).await?;
    // The API is closed: the loops stop, the source triggers finish what they hold, and the
    // lease is handed back before the process ends.
    m.stop().await;
    Ok(())
}
