//! Helpers for Warren's end-to-end tests: real RabbitMQ, real PostgreSQL, real OS processes.
//!
//! Services are reached at the addresses the test command (`scripts/test`) makes sure are up;
//! override with `WARREN_TEST_AMQP_URL` and `WARREN_TEST_PG_URL`. A test that cannot reach them
//! fails with a message naming what is missing; nothing is skipped silently.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn amqp_url() -> String {
    std::env::var("WARREN_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The PostgreSQL server the tests use, as configured (`WARREN_TEST_PG_URL`).
pub fn base_pg_url() -> String {
    std::env::var("WARREN_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// This test process's own PostgreSQL database, created on first use next to the configured
/// one (`warren_t_<pid>_<random>`). Every management instance runs the triggers of every
/// function in its store: sharing one database, a test's instances would consume another
/// test's source queues, deliver its outputs and fire its timers (and be killed holding them),
/// so each test process gets a database of its own. Databases of test processes that are gone
/// are dropped when the next one is made; `scripts/test` drops the rest at its end. If the
/// server refuses `CREATE DATABASE`, the configured database is used as it is, with a warning.
pub fn pg_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let base = base_pg_url();
        // Its own thread and runtime: callers may be inside an async runtime already.
        let made = std::thread::spawn({
            let base = base.clone();
            move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(own_database(&base))
            }
        })
        .join()
        .expect("creating the test database");
        match made {
            Ok(url) => url,
            Err(e) => {
                eprintln!("warren-tests: cannot create a database of this test's own ({e}); sharing {base}");
                base
            }
        }
    })
    .clone()
}

/// Prefix of the per-process test databases.
pub const TEST_DB_PREFIX: &str = "warren_t_";

async fn own_database(base: &str) -> anyhow::Result<String> {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(base).await?;
    // Databases left by test processes that are gone (a crash, a killed run).
    let names = sqlx::query("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
        .bind(TEST_DB_PREFIX)
        .fetch_all(&mut conn)
        .await?;
    for row in names {
        let name: String = row.try_get(0)?;
        let pid = name[TEST_DB_PREFIX.len()..].split('_').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if cfg!(target_os = "linux") && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ =
                    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut conn).await;
            }
        }
    }
    let name = format!("{TEST_DB_PREFIX}{}_{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await?;
    let mut url = url::Url::parse(base)?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

fn reachable(url: &str, default_port: u16) -> bool {
    let u = url::Url::parse(url).expect("test service URL");
    let addr = format!("{}:{}", u.host_str().unwrap_or("127.0.0.1"), u.port().unwrap_or(default_port));
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
        .unwrap_or(false)
}

/// Panics with a clear message unless RabbitMQ and PostgreSQL answer.
pub fn require_services() {
    let mut missing = Vec::new();
    if !reachable(&amqp_url(), 5672) {
        missing.push(format!("RabbitMQ at {}", amqp_url()));
    }
    if !reachable(&base_pg_url(), 5432) {
        missing.push(format!("PostgreSQL at {}", base_pg_url()));
    }
    assert!(
        missing.is_empty(),
        "cannot reach {}: run the tests through scripts/test, which starts them, or set WARREN_TEST_AMQP_URL / WARREN_TEST_PG_URL",
        missing.join(" and ")
    );
}

/// A short random name, so concurrent tests never share a function or a pool.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// The path of one of the workspace's binaries (built by `scripts/test` before the tests).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; scripts/test does it)",
        p.display()
    );
    p
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, name: name.to_string() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `within` for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `check` returns `Some`, polling every 20 ms, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a function folder: `function.toml` from `manifest`, plus `files`.
pub fn function_dir(root: &Path, manifest: &str, files: &[(&str, &str)]) -> PathBuf {
    let name = manifest
        .lines()
        .find_map(|l| l.strip_prefix("name = "))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_else(|| unique("f"));
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("function.toml"), manifest).unwrap();
    for (f, text) in files {
        std::fs::write(dir.join(f), text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    dir
}

/// A new random admin key.
pub fn new_admin_key() -> String {
    format!("test-admin-{}", uuid::Uuid::new_v4().simple())
}

/// An HTTP client that sends `key` as a bearer token on every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().expect("key as a header"));
    reqwest::Client::builder().default_headers(headers).build().expect("HTTP client")
}

/// A management process on a free port, on the real broker and `store_url`, started with a
/// fresh admin key that `http` sends on every request.
pub struct Management {
    pub proc: Proc,
    pub base: String,
    /// Sends the admin key.
    pub http: reqwest::Client,
    /// The admin key management was started with (empty with `--insecure-no-auth`).
    pub key: String,
}

impl Management {
    pub async fn start(store_url: &str) -> Management {
        Self::start_with(store_url, &[]).await
    }

    /// With extra command-line arguments (limits, keys, ...). An admin key is added unless
    /// `extra` gives one or `--insecure-no-auth`; the test broker unless it gives `--amqp`.
    pub async fn start_with(store_url: &str, extra: &[&str]) -> Management {
        let port = free_port();
        let given = extra.iter().position(|a| *a == "--admin-key").and_then(|i| extra.get(i + 1));
        let open = extra.contains(&"--insecure-no-auth");
        let key = match (given, open) {
            (Some(k), _) => k.to_string(),
            (None, true) => String::new(),
            (None, false) => new_admin_key(),
        };
        let mut cmd = Command::new(bin("warren-management"));
        if !extra.contains(&"--amqp") {
            cmd.args(["--amqp", &amqp_url()]);
        }
        cmd.args(["--store", store_url, "--listen", &format!("127.0.0.1:{port}")]).args(extra);
        if given.is_none() && !open {
            cmd.args(["--admin-key", &key]);
        }
        let proc = Proc::spawn("warren-management", &mut cmd);
        let http = if key.is_empty() { reqwest::Client::new() } else { client_with_key(&key) };
        let m = Management { proc, base: format!("http://127.0.0.1:{port}"), http, key };
        m.wait_ready().await;
        m
    }

    /// The `warren` CLI aimed at this management, with its admin key (`WARREN_API_KEY`).
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(bin("warren"));
        cmd.env("WARREN_URL", &self.base).env("WARREN_API_KEY", &self.key).env_remove("WARREN_CONFIG");
        cmd
    }

    pub async fn wait_ready(&self) {
        let url = format!("{}/healthz", self.base);
        let http = self.http.clone();
        eventually(Duration::from_secs(30), "management to answer /healthz", || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
    }

    pub async fn publish_dir(&self, dir: &Path) -> serde_json::Value {
        let pkg = warren_wire::package::pack_dir(dir).expect("pack");
        self.publish_bytes(pkg).await.1
    }

    pub async fn publish_bytes(&self, pkg: Vec<u8>) -> (u16, serde_json::Value) {
        let r = self.http.post(format!("{}/api/functions", self.base)).body(pkg).send().await.expect("publish");
        let status = r.status().as_u16();
        (status, r.json().await.expect("publish answer is JSON"))
    }

    /// POST invoke; returns the HTTP status and the JSON answer.
    pub async fn invoke(&self, name: &str, mode: &str, input: &[u8]) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}/api/functions/{name}/invoke?mode={mode}&timeout_ms=60000", self.base))
            .body(input.to_vec())
            .send()
            .await
            .expect("invoke");
        let status = r.status().as_u16();
        (status, r.json().await.expect("invoke answer is JSON"))
    }

    /// Waits (up to 60 s) until the invocation's status is `want`; returns its record.
    pub async fn wait_status(&self, id: &str, want: &str) -> serde_json::Value {
        let path = format!("/api/invocations/{id}");
        eventually(Duration::from_secs(60), &format!("invocation {id} to be {want}"), || async {
            let (_, v) = self.get(&path).await;
            (v["status"] == want).then_some(v)
        })
        .await
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.base);
        // A pooled connection may be one the server is closing (after it refused a request
        // body it did not read): a GET can safely go again on a new one.
        let r = match self.http.get(&url).send().await {
            Ok(r) => r,
            Err(e) if e.is_request() || e.is_connect() => {
                client_with_key(&self.key).get(&url).send().await.expect("get")
            }
            Err(e) => panic!("get {url}: {e}"),
        };
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON answer"))
    }
}

/// A worker process on the real broker.
pub fn start_worker(store_url: &str, pool: &str, concurrency: u16, cache: &Path) -> Proc {
    start_worker_with(store_url, pool, concurrency, cache, &[], &[])
}

/// A worker process with extra arguments (`--amqp` among them replaces the test broker) and
/// environment variables.
pub fn start_worker_with(
    store_url: &str,
    pool: &str,
    concurrency: u16,
    cache: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let mut cmd = Command::new(bin("warren-worker"));
    if !extra.contains(&"--amqp") {
        cmd.args(["--amqp", &amqp_url()]);
    }
    Proc::spawn(
        "warren-worker",
        cmd.envs(env.iter().copied()).args(extra).args([
            "--store",
            store_url,
            "--pool",
            pool,
            "--concurrency",
            &concurrency.to_string(),
            "--cache-dir",
            &cache.display().to_string(),
        ]),
    )
}

/// Waits until `n` consumers are attached to a pool's queue.
pub async fn wait_consumers(pool: &str, n: u32) {
    use warren_transport::Transport;
    let t = warren_transport::amqp::AmqpTransport::connect(&amqp_url(), "warren-tests").await.expect("amqp");
    eventually(Duration::from_secs(30), &format!("{n} consumers on pool {pool}"), || {
        let t = &t;
        async move { t.queue_stats(pool).await.ok().filter(|s| s.consumers >= n).map(|_| ()) }
    })
    .await;
}

/// A .tar.gz written with raw headers, so that entries the tar crate's own builder refuses
/// (`../x`, absolute paths, links) can be crafted. Each entry: (name, body, type, link target).
pub fn crafted_tar_gz(entries: &[(&str, &[u8], tar::EntryType, &str)]) -> Vec<u8> {
    let mut raw = Vec::new();
    for (name, body, kind, link) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(*kind);
        h.set_cksum();
        raw.extend_from_slice(h.as_bytes());
        raw.extend_from_slice(body);
        raw.resize(raw.len().div_ceil(512) * 512, 0);
    }
    raw.resize(raw.len() + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    gz.finish().unwrap()
}
