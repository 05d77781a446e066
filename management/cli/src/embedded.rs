//! `warren up`: management and workers in one process, on a SQLite file and the in-process
//! transport, with the sample functions published. Nothing to install beyond the binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use warren_management::keys::{generate_key, AuthMode};
use warren_transport::memory::MemoryTransport;
use warren_wire::package;
use warren_worker::{Worker, WorkerConfig};

use warren_management::{Config, Management};

pub(crate) struct Options {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub workers: usize,
    pub concurrency: u16,
    pub pools: Vec<String>,
    /// A folder of function folders to publish at start; the built-in samples when `None`.
    pub examples: Option<PathBuf>,
}

/// The built-in samples, the same files as the repository's `examples/`.
const SAMPLES: &[(&str, &[(&str, &str)])] = &[
    ("echo", &[("function.toml", include_str!("../../../examples/echo/function.toml"))]),
    (
        "hello",
        &[
            ("function.toml", include_str!("../../../examples/hello/function.toml")),
            ("main.py", include_str!("../../../examples/hello/main.py")),
        ],
    ),
    (
        "fail",
        &[
            ("function.toml", include_str!("../../../examples/fail/function.toml")),
            ("main.py", include_str!("../../../examples/fail/main.py")),
        ],
    ),
];

fn sample_packages(dir: Option<&Path>) -> anyhow::Result<Vec<Vec<u8>>> {
    if let Some(dir) = dir {
        let mut out = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the examples folder {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let app = e.path().join(warren_wire::azure::HOST_FILE).is_file();
            if app || e.path().join(warren_wire::manifest::MANIFEST_FILE).is_file() {
                out.push(package::pack_dir(&e.path()).with_context(|| format!("cannot pack {}", e.path().display()))?);
            }
        }
        return Ok(out);
    }
    let tmp = std::env::temp_dir().join(format!("warren-samples-{}", std::process::id()));
    let mut out = Vec::new();
    for (name, files) in SAMPLES {
        let d = tmp.join(name);
        std::fs::create_dir_all(&d)?;
        for (f, text) in *files {
            std::fs::write(d.join(f), text)?;
        }
        out.push(package::pack_dir(&d)?);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(out)
}

/// Whether this exact package is its function's active version already (a restart).
async fn already_active(store: &dyn warren_store::Store, pkg: &[u8]) -> bool {
    let functions = match package::inspect_contents(pkg, &package::Limits::default(), None) {
        Ok(package::Contents::Function(p)) => vec![*p],
        Ok(package::Contents::App { functions, .. }) => functions,
        Err(_) => return false,
    };
    for p in functions {
        let Ok(Some(f)) = store.get_function(&p.manifest.name).await else { return false };
        if !matches!(store.get_version(&f.name, f.active_version).await, Ok(Some(v)) if v.sha256 == p.sha256) {
            return false;
        }
    }
    true
}

/// The key sealing secret settings: `WARREN_SECRET_KEY` if set, else one kept in the data
/// folder (created on first start, readable by its owner only).
fn embedded_key(data_dir: &Path) -> anyhow::Result<warren_service::secret::SecretKey> {
    if let Some(k) = warren_service::secret::SecretKey::from_env()? {
        return Ok(k);
    }
    let path = data_dir.join("secret.key");
    if !path.exists() {
        let bytes: [u8; 32] = rand::random();
        std::fs::write(&path, hex::encode(bytes))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(warren_service::secret::SecretKey::from_hex(&text)?)
}

/// The admin API key: `WARREN_ADMIN_KEY` if set, else one kept in the data folder (created on
/// first start, readable by its owner only).
fn embedded_admin_key(data_dir: &Path) -> anyhow::Result<SecretString> {
    if let Ok(k) = std::env::var("WARREN_ADMIN_KEY") {
        if !k.trim().is_empty() {
            return Ok(SecretString::from(k.trim()));
        }
    }
    let path = data_dir.join("admin.key");
    if !path.exists() {
        std::fs::write(&path, generate_key().expose_secret())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    let key = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(SecretString::from(key.trim()))
}

/// Locks the data folder for this process (`.lock` in it), or says who has it.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another `warren up` is using the data folder {}: stop it first, or give this one another --data-dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Runs until `shutdown` resolves.
pub(crate) async fn up(
    opts: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create the data folder {}", opts.data_dir.display()))?;
    // One process per data folder: its queue is in memory, so what the store says is queued or
    // running belongs to this process or to a stopped one. Held until this returns.
    let _lock = lock_data_dir(&opts.data_dir)?;
    let db = opts.data_dir.join("warren.db");
    let store = warren_store::open(&format!("sqlite://{}", db.display())).await?;
    // What the last run left queued or running went with its in-memory queue: record it lost
    // instead of leaving it `queued` or `running` for ever.
    let why = warren_store::Settled {
        invocation: "lost: the embedded Warren (`warren up`) stopped before this invocation finished, and its queue \
                     was in memory (use RabbitMQ for work that must survive a stop)"
            .into(),
        batch: "the submission stopped: the embedded Warren (`warren up`) stopped before the end of the body".into(),
    };
    let (lost, batches) = store.abandon_unfinished(warren_wire::time::now_ms(), &why).await?;
    if lost + batches > 0 {
        tracing::warn!(
            invocations = lost,
            batches,
            "the last run stopped with work in its in-memory queue: recorded failed (lost)"
        );
    }
    let transport = Arc::new(MemoryTransport::new(100_000));
    let secret_key = embedded_key(&opts.data_dir)?;
    let admin_key = embedded_admin_key(&opts.data_dir)?;
    let auth = AuthMode::with_admin_key(&admin_key).map_err(|e| anyhow::anyhow!("WARREN_ADMIN_KEY: {e}"))?;
    let config = Config { secret_key: Some(secret_key.clone()), auth, ..Config::default() };
    let m = Management::start(store.clone(), transport.clone(), config).await?;

    for pkg in sample_packages(opts.examples.as_deref())? {
        if already_active(&*store, &pkg).await {
            continue;
        }
        let published =
            m.catalog.publish(&pkg, None, true).await.map_err(|e| anyhow::anyhow!("cannot publish a sample: {e}"))?;
        for v in published.versions {
            tracing::info!(function = %v.name, version = v.version, "sample published");
        }
    }

    let stop_workers = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..opts.workers {
        let mut cfg = WorkerConfig::new(opts.pools.iter().map(|p| (p.clone(), opts.concurrency)).collect());
        cfg.id = format!("embedded-{}-{}", std::process::id(), i + 1);
        cfg.cache_dir = opts.data_dir.join("cache");
        cfg.secret_key = Some(secret_key.clone());
        let w = Worker::new(store.clone(), transport.clone(), cfg);
        workers.spawn(w.run(stop_workers.clone(), Duration::from_secs(10)));
    }

    let listener = tokio::net::TcpListener::bind(opts.listen).await.with_context(|| {
        format!("cannot listen on {}; is another Warren running? pick another with --listen", opts.listen)
    })?;
    let addr = listener.local_addr()?;
    // Printed once, for the user to copy: the one place the key is shown.
    let admin_key = admin_key.expose_secret();
    println!("Warren is up (embedded: management + {} workers, store {}).", opts.workers, db.display());
    println!("  portal:    http://{addr}/   (open it in a browser; sign in with the admin key)");
    println!("  API:       http://{addr}/api/functions");
    match std::env::var("WARREN_ADMIN_KEY") {
        Ok(k) if !k.trim().is_empty() => println!("  admin key: from WARREN_ADMIN_KEY"),
        _ => println!("  admin key: {admin_key}   (kept in {})", opts.data_dir.join("admin.key").display()),
    }
    println!("  use it:    export WARREN_URL=http://{addr} WARREN_API_KEY={admin_key}");
    println!("  invoke:    warren invoke hello --data '{{\"name\": \"Ada\"}}'");
    println!(
        "  or:        curl -s -H 'Authorization: Bearer {admin_key}' -X POST http://{addr}/api/functions/hello/invoke -d '{{\"name\": \"Ada\"}}'"
    );
    println!("  publish:   warren publish ./my-function");
    println!("  metrics:   http://{addr}/metrics");
    println!("Stop with Ctrl-C.");
    warren_management::serve(m.clone(), listener, shutdown).await?;
    // The API is closed: the workers and management stop side by side.
    stop_workers.cancel();
    m.stop().await;
    while let Some(r) = workers.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "worker ended with an error");
        }
    }
    Ok(())
}
