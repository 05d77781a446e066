//! `warren-bench`: Warren's benchmark. See `benches/README.md` for what each row means.
//!
//! ```sh
//! cargo run --release -p warren-benches -- [--quick]
//! ```

mod broker;
mod floor;
mod measure;
mod mesh;
mod procs;
mod report;
mod sysinfo;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use warren_transport::QueueType;

use crate::mesh::{Func, LoadResult, Mesh, Settings};
use crate::report::Figures;

/// Warren's benchmark: the raw broker ceiling (1), the mesh end to end with the built-in echo
/// (2: management + 1, 2 and 4 workers on PostgreSQL and SQLite) and with a warm Python
/// handler (3: examples/warm-python), sync-invoke latency at a fixed offered rate (4), a
/// 100,000-item batch submitted through POST /api/batches (5), and the memory of the workers
/// (6). Prints tables and writes the figures as JSON.
///
/// Needs RabbitMQ and PostgreSQL (the same ones `scripts/test` uses). Run through
/// `cargo run --release -p warren-benches -- [--quick]`: it first builds `warren-management`
/// and `warren-worker` in the same profile (skip with --no-build).
#[derive(Parser, Debug)]
#[command(name = "warren-bench", version, verbatim_doc_comment)]
struct Args {
    /// Short run (N = 3,000, 3 s of latency, a 10,000-item batch): about a minute.
    #[arg(long)]
    quick: bool,
    /// Messages / invocations per throughput row (default 20,000; 3,000 with --quick).
    #[arg(short = 'n', long)]
    messages: Option<u64>,
    /// RabbitMQ URL.
    #[arg(long, env = "WARREN_BENCH_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// PostgreSQL URL (a database `warren_bench` is created next to it and dropped afterwards,
    /// unless --no-fresh-db). Without TLS by default, like the broker's: both are on this
    /// machine's loopback, where encryption only costs CPU (about 12 % of an invocation's here).
    #[arg(
        long,
        env = "WARREN_BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
    )]
    pg: String,
    /// Use the --pg database itself instead of a fresh `warren_bench` database.
    #[arg(long)]
    no_fresh_db: bool,
    /// Stores to run the mesh rows on.
    #[arg(long, value_delimiter = ',', default_value = "postgres,sqlite")]
    stores: Vec<String>,
    /// Worker counts of the end-to-end rows.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Each worker's --concurrency. The default, 64, sizes each worker's pipeline (64 × the
    /// prefetch multiplier 4 = 256 messages held, as many as the raw row's confirms in flight)
    /// to cover an outcome's durable commit and a batch item's claim at this rate; with 16
    /// (the earlier default) one worker drains batch items at about half the raw rate.
    #[arg(long, default_value_t = 64)]
    concurrency: u16,
    /// Each worker's --prefetch-multiplier (default: the worker's own default).
    #[arg(long, default_value_t = warren_worker::DEFAULT_PREFETCH_MULTIPLIER)]
    prefetch_multiplier: u16,
    /// HTTP invoke requests in flight in the end-to-end rows: by default as many as the raw
    /// broker row's confirms in flight, so that both rows offer the broker the same concurrency.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Row 2b (PostgreSQL): inputs per bulk invoke (`POST /api/functions/{name}/invocations`,
    /// NDJSON): the same N invocations, sent in requests of this many, --in-flight / this many
    /// requests at once (at least 2; by default 4 × 64 = 256 invocations in flight, as in
    /// row 2); 0 skips the row.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    bulk: u64,
    /// Size of each invocation input and of each raw broker message, in bytes.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Raw broker row: publisher confirms outstanding at once.
    #[arg(long, default_value_t = 256)]
    confirm_window: usize,
    /// Raw broker row 1a (one ack per message): consumer prefetch. Row 1, the ceiling, tries
    /// the settings of `RAW_CEILING_SETTINGS` and keeps the best.
    #[arg(long, default_value_t = 64)]
    prefetch: u16,
    /// Latency row: seconds of load (default 10; 3 with --quick).
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Latency row: offered rate in invocations/s. Default: half the measured sync capacity
    /// (a row of its own: sync invokes with --sync-in-flight waiting at once), and a second row
    /// at half the 1-worker PostgreSQL async rate (the definition of earlier runs).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Latency row: sync invokes waiting at once while the sync capacity is measured.
    #[arg(long, default_value_t = 64)]
    sync_in_flight: usize,
    /// Give up on an end-to-end row after this many seconds (default 180; 60 with --quick).
    #[arg(long)]
    run_timeout: Option<u64>,
    /// Where to write the JSON figures (default: <target>/bench/latest.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folder of warren-management and warren-worker (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Do not build warren-management and warren-worker first.
    #[arg(long)]
    no_build: bool,
    /// Workers of the split row (management ingest alone, then workers drain alone); 0 skips it.
    #[arg(long, default_value_t = 1)]
    split_workers: usize,
    /// Row 3 (PostgreSQL): worker counts of the warm-handler rows, which invoke
    /// examples/warm-python (mode = "persistent") instead of echo; 0 skips them.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    warm_workers: Vec<usize>,
    /// Row 5 (PostgreSQL): items of the batch submitted through POST /api/batches
    /// (default 100,000; 10,000 with --quick); 0 skips the row.
    #[arg(long)]
    batch_items: Option<u64>,
    /// Skip rows 1b and 1c (the broker with PostgreSQL writes by hand, no Warren: the floor
    /// under row 2).
    #[arg(long)]
    no_floor: bool,
    /// Row 1c: consumer counts to run it with (each its own connection and commits, as
    /// workers would), to see what spreading the messages costs without Warren; 1b runs with 1.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    floor_consumers: Vec<usize>,
    /// Row 5: workers attached to the batch's pool while it is submitted and drained; 0
    /// measures acceptance alone (no "until done" figure).
    #[arg(long, default_value_t = 1)]
    batch_workers: usize,
    /// Row 7: the AMQP URLs of a RabbitMQ cluster's nodes, separated by commas (`scripts/cluster
    /// start` runs three here and prints them). Row 7 runs the raw broker and row 2 on it, with
    /// classic and with quorum queues, on PostgreSQL; without this it is skipped.
    #[arg(long, env = "WARREN_BENCH_CLUSTER")]
    cluster: Option<String>,
    /// Row 7: workers of its end-to-end rows.
    #[arg(long, default_value_t = 2)]
    cluster_workers: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted: the child processes were stopped")),
        }
    });
    // The guards of the run have dropped by now (killing their processes); this catches any
    // left behind by a task.
    procs::kill_all();
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("warren-bench: some rows failed (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("warren-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The folder holding this binary: target/<profile>.
fn exe_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the benchmark binary")?;
    Ok(exe.parent().context("benchmark binary has no folder")?.to_path_buf())
}

fn build_binaries(release: bool) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    let mut cmd = std::process::Command::new(&cargo);
    cmd.current_dir(root).args(["build", "-p", "warren-management", "-p", "warren-worker", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "warren-bench: building warren-management and warren-worker ({})",
        if release { "release" } else { "debug" }
    );
    let status = cmd.status().with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("building warren-management and warren-worker failed ({status}); fix the build or pass --no-build");
    }
    Ok(())
}

async fn preflight_amqp(url: &str) -> Result<()> {
    let conn = broker::connect(url, "warren-bench-preflight").await.context(
        "RabbitMQ is unreachable: start it (`rabbitmq-server -detached`, or scripts/test starts it) or pass --amqp",
    )?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

async fn pg_admin(url: &str) -> Result<sqlx::AnyPool> {
    let u = url::Url::parse(url).with_context(|| format!("--pg {url:?} is not a URL"))?;
    let addr = format!("{}:{}", u.host_str().unwrap_or("127.0.0.1"), u.port().unwrap_or(5432));
    match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!(
            "PostgreSQL is unreachable at {addr} ({e}): start it (`pg_ctlcluster <version> main start`, or \
             scripts/test starts it) or pass --pg"
        ),
        Err(_) => bail!("PostgreSQL at {addr} did not accept a connection within 3 s: is it running? or pass --pg"),
    }
    tokio::time::timeout(Duration::from_secs(15), mesh::open_db(url))
        .await
        .map_err(|_| anyhow::anyhow!("PostgreSQL at {url} did not answer within 15 s"))?
        .with_context(|| {
            format!("PostgreSQL is unreachable at {url}: is the database there and the user allowed in? or pass --pg")
        })
}

const FRESH_DB: &str = "warren_bench";

/// Messages of each raw broker run at least: shorter runs (a fraction of a second) are mostly
/// noise on a shared machine.
const RAW_MIN_MESSAGES: u64 = 20_000;

/// Row 1's consumer settings tried for the ceiling, (prefetch, deliveries per multiple ack):
/// the best a plain client does is the baseline of every ratio.
const RAW_CEILING_SETTINGS: [(u16, u16); 3] = [(256, 50), (1024, 100), (2048, 250)];

/// One run of row 1 with the consumer's (prefetch, ack_every), added to `runs` (or its failure
/// noted).
async fn raw_row(
    args: &Args,
    n: u64,
    (prefetch, ack_every): (u16, u16),
    runs: &mut Vec<broker::RawResult>,
    error: &mut Option<String>,
) {
    eprintln!(
        "[1] raw broker: {n} persistent messages, {} confirms in flight, prefetch {prefetch}, an ack per {ack_every}",
        args.confirm_window,
    );
    let (url, size, window) = (&args.amqp, args.payload_bytes, args.confirm_window);
    match broker::run(url, n, size, window, prefetch, ack_every, QueueType::Classic).await {
        Ok(r) => {
            eprintln!("    {:.0} msg/s end to end", r.end_to_end_rate());
            runs.push(r);
        }
        Err(e) => {
            eprintln!("    FAILED: {e:#}");
            error.get_or_insert(format!("{e:#}"));
        }
    }
}

async fn drop_fresh_db(admin: &sqlx::AnyPool) {
    let force = format!("DROP DATABASE IF EXISTS {FRESH_DB} WITH (FORCE)");
    if sqlx::raw_sql(&force).execute(admin).await.is_err() {
        let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {FRESH_DB}")).execute(admin).await;
    }
}

/// A fresh database next to `url`, or `url` itself when that is not possible.
async fn fresh_pg(admin: &sqlx::AnyPool, url: &str) -> (String, Option<String>) {
    drop_fresh_db(admin).await;
    match sqlx::raw_sql(&format!("CREATE DATABASE {FRESH_DB}")).execute(admin).await {
        Ok(_) => {
            let mut u = url::Url::parse(url).expect("checked URL");
            u.set_path(&format!("/{FRESH_DB}"));
            (u.to_string(), None)
        }
        Err(e) => (url.to_string(), Some(format!("cannot create database {FRESH_DB} ({e}); using {url} itself"))),
    }
}

async fn scalar_text(pool: &sqlx::AnyPool, sql: &str) -> Option<String> {
    sqlx::query_scalar::<_, String>(sql).fetch_one(pool).await.ok()
}

async fn run(args: Args) -> Result<bool> {
    let n = args.messages.unwrap_or(if args.quick { 3_000 } else { 20_000 });
    let latency_secs = args.latency_secs.unwrap_or(if args.quick { 3.0 } else { 10.0 });
    let run_timeout = Duration::from_secs(args.run_timeout.unwrap_or(if args.quick { 60 } else { 180 }));
    let batch_items = args.batch_items.unwrap_or(if args.quick { 10_000 } else { 100_000 });
    let warm_workers: Vec<usize> = args.warm_workers.iter().copied().filter(|&w| w > 0).collect();
    for s in &args.stores {
        if !matches!(s.as_str(), "postgres" | "sqlite") {
            bail!("--stores takes postgres and/or sqlite, not {s:?}");
        }
    }
    if args.workers.is_empty() || args.workers.contains(&0) {
        bail!("--workers takes worker counts of 1 or more, e.g. 1,2,4");
    }

    // Binaries.
    let exe_dir = exe_dir()?;
    let release = exe_dir.file_name().is_some_and(|f| f == "release");
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| exe_dir.clone());
    let built = if !args.no_build && args.bin_dir.is_none() && std::env::var_os("CARGO").is_some() {
        build_binaries(release)?;
        true
    } else {
        false
    };
    for b in ["warren-management", "warren-worker"] {
        let p = bin_dir.join(format!("{b}{}", std::env::consts::EXE_SUFFIX));
        if !p.exists() {
            bail!(
                "{} is missing: run `cargo build --release --workspace --bins` first, or run the benchmark as \
                 `cargo run --release -p warren-benches`, which builds them",
                p.display()
            );
        }
    }
    if !release {
        eprintln!(
            "warren-bench: WARNING: this is not a release build; the figures say little (use cargo run --release)"
        );
    }

    let began = Instant::now();

    // Services.
    preflight_amqp(&args.amqp).await?;
    let swept = broker::sweep_stale(&args.amqp).await;
    if swept > 0 {
        eprintln!("warren-bench: deleted {swept} queues left behind by earlier (killed) benchmark runs");
    }
    let want_pg = args.stores.iter().any(|s| s == "postgres");
    let admin = if want_pg || !args.no_fresh_db { Some(pg_admin(&args.pg).await?) } else { None };
    let pg_version = match &admin {
        Some(a) => scalar_text(a, "SHOW server_version").await,
        None => None,
    };
    let sqlite_version = match mesh::open_db("sqlite::memory:").await {
        Ok(p) => scalar_text(&p, "SELECT sqlite_version()").await,
        Err(_) => None,
    };
    let pg_settings = match &admin {
        Some(a) => {
            let mut v = Vec::new();
            for k in ["synchronous_commit", "fsync", "shared_buffers"] {
                if let Some(x) = scalar_text(a, &format!("SHOW {k}")).await {
                    v.push(format!("{k}={x}"));
                }
            }
            (!v.is_empty()).then(|| v.join(", "))
        }
        None => None,
    };
    let mut machine = sysinfo::collect(pg_version, sqlite_version).await;
    machine.postgres_settings = pg_settings.unwrap_or_default();
    if let Some((pct, top)) = sysinfo::busy_pct(Duration::from_secs(1)).await {
        machine.busy_before_pct = Some(pct);
        machine.busy_before_top = top;
    }
    machine.loadavg = sysinfo::loadavg();

    let target_dir = exe_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("target"));
    let out = args.out.clone().unwrap_or_else(|| target_dir.join("bench").join("latest.json"));
    let work_dir = target_dir.join("bench").join("work");
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir).with_context(|| format!("cannot create {}", work_dir.display()))?;

    let settings = Arc::new(Settings {
        amqp_url: args.amqp.clone(),
        queue_type: QueueType::Classic,
        bin_dir: bin_dir.clone(),
        work_dir: work_dir.clone(),
        concurrency: args.concurrency,
        prefetch_multiplier: args.prefetch_multiplier,
        in_flight: args.in_flight,
        input_bytes: args.payload_bytes,
        run_timeout,
    });
    let ctx = report::Context {
        quick: args.quick,
        n,
        machine,
        settings: report::SettingsView {
            amqp: broker::redact(&args.amqp),
            pg: args.pg.clone(),
            fresh_db: !args.no_fresh_db,
            stores: args.stores.clone(),
            workers: args.workers.clone(),
            concurrency: args.concurrency,
            prefetch_multiplier: args.prefetch_multiplier,
            in_flight: args.in_flight,
            payload_bytes: args.payload_bytes,
            confirm_window: args.confirm_window,
            prefetch: args.prefetch,
            latency_secs,
            run_timeout_secs: run_timeout.as_secs(),
            warm_workers: warm_workers.clone(),
            batch_items,
            batch_workers: args.batch_workers,
            bin_dir: bin_dir.display().to_string(),
            built_by_bench: built,
            cluster: args.cluster.clone().filter(|c| !c.trim().is_empty()),
            cluster_workers: args.cluster_workers,
            release,
            work_dir: work_dir.display().to_string(),
        },
    };
    report::print_header(&ctx);

    let mut fig = Figures {
        raw: None,
        raw_rates: Vec::new(),
        raw_tried: Vec::new(),
        raw_per_message: None,
        raw_per_message_rates: Vec::new(),
        raw_error: None,
        floors: Vec::new(),
        runs: Vec::new(),
        splits: Vec::new(),
        warm: Vec::new(),
        sync_capacity: None,
        latency: Vec::new(),
        batch: None,
        cluster: Vec::new(),
        notes: Vec::new(),
    };

    // Row 1, the ceiling: each of the settings once, then the best one again now and once
    // after the Warren rows; the median of its three runs is the baseline, so that one run
    // disturbed by the machine's other tenants does not move every ratio. Row 1a (one ack per
    // message) once now and once after.
    let raw_n = n.max(RAW_MIN_MESSAGES);
    let per_message = (args.prefetch, 1);
    let mut per_message_runs = Vec::new();
    raw_row(&args, raw_n, per_message, &mut per_message_runs, &mut fig.raw_error).await;
    let mut tried = Vec::new();
    for setting in RAW_CEILING_SETTINGS {
        raw_row(&args, raw_n, setting, &mut tried, &mut fig.raw_error).await;
    }
    fig.raw_tried = tried.iter().map(|r| (r.prefetch, r.ack_every, r.end_to_end_rate())).collect();
    let best = tried.iter().enumerate().max_by(|a, b| a.1.end_to_end_rate().total_cmp(&b.1.end_to_end_rate()));
    let best_setting = best.map(|(_, r)| (r.prefetch, r.ack_every)).unwrap_or(RAW_CEILING_SETTINGS[0]);
    let mut raw_runs: Vec<broker::RawResult> = match best.map(|(i, _)| i) {
        Some(i) => vec![tried.swap_remove(i)],
        None => Vec::new(),
    };
    raw_row(&args, raw_n, best_setting, &mut raw_runs, &mut fig.raw_error).await;

    // Rows 1b and 1c: the floor under row 2 (its durable writes by hand), on PostgreSQL.
    if want_pg && !args.no_floor {
        let admin = admin.as_ref().expect("admin pool");
        let url = if args.no_fresh_db { args.pg.clone() } else { fresh_pg(admin, &args.pg).await.0 };
        let floors = std::iter::once((floor::Floor::StoreBeforeAck, 1))
            .chain(args.floor_consumers.iter().map(|&c| (floor::Floor::RecordThenStore, c.max(1))));
        for (f, consumers) in floors {
            eprintln!(
                "[{}] {}: {raw_n} messages, {} confirms in flight, {consumers} consumer(s)",
                f.row(),
                f.label(),
                args.confirm_window
            );
            match floor::run(&args.amqp, &url, f, consumers, raw_n, args.payload_bytes, args.confirm_window).await {
                Ok(r) => {
                    eprintln!(
                        "    {:.0} msg/s end to end, {:.0} rows per statement",
                        r.end_to_end_rate(),
                        r.stored as f64 / r.statements.max(1) as f64
                    );
                    fig.floors.push(Ok(r));
                }
                Err(e) => {
                    eprintln!("    FAILED: {e:#}");
                    fig.floors.push(Err((f, consumers, format!("{e:#}"))));
                }
            }
        }
    }

    // Rows 2-6, per store (3, 4 and 5 on PostgreSQL only).
    for store in &args.stores {
        let (label, url) = if store == "postgres" {
            let admin = admin.as_ref().expect("admin pool");
            if args.no_fresh_db {
                ("PostgreSQL", args.pg.clone())
            } else {
                let (url, note) = fresh_pg(admin, &args.pg).await;
                if let Some(note) = note {
                    eprintln!("warren-bench: {note}");
                    fig.notes.push(note);
                }
                ("PostgreSQL", url)
            }
        } else {
            let path = work_dir.join("warren-bench.sqlite");
            ("SQLite", format!("sqlite://{}", path.display()))
        };
        eprintln!("[2] {label}: starting warren-management");
        let mut m = match Mesh::start(label, url, settings.clone()).await {
            Ok(m) => m,
            Err(e) => {
                eprintln!("    FAILED: {e:#}");
                for &w in &args.workers {
                    fig.runs.push(Err((label.to_string(), w, format!("{e:#}"))));
                }
                continue;
            }
        };
        // Row 2 (one request per invocation), then 2b (bulk invokes; PostgreSQL only).
        let bulk = if label == "PostgreSQL" { args.bulk as usize } else { 0 };
        for per_request in std::iter::once(0).chain((bulk > 0).then_some(bulk)) {
            for &w in &args.workers {
                let (row, how) = match per_request {
                    0 => ("2", format!("{n} async invokes, {} in flight", args.in_flight)),
                    b => ("2b", format!("{n} invocations in bulk invokes of {b}")),
                };
                eprintln!("[{row}] {label}, {w} worker(s) x --concurrency {}: {how}", args.concurrency);
                let what = if per_request == 0 { label.to_string() } else { format!("{label} (bulk)") };
                fig.runs.push(throughput_row(&mut m, Func::Echo, w, n, per_request, what).await);
            }
        }
        if args.split_workers > 0 {
            let w = args.split_workers;
            eprintln!("[2] {label}, split: {n} async invokes with no worker attached, then {w} worker(s) drain them");
            match m.split(w, n).await {
                Ok(r) => {
                    eprintln!(
                        "    ingest alone {:.0}/s ({} queued), drain alone {:.0}/s ({} stored{})",
                        r.ingest_rate(),
                        r.queued,
                        r.drain_rate(),
                        r.drained,
                        if r.incomplete { ", INCOMPLETE" } else { "" }
                    );
                    fig.splits.push(Ok(r));
                }
                Err(e) => {
                    eprintln!("    FAILED: {e:#}");
                    fig.splits.push(Err((label.to_string(), w, format!("{e:#}"))));
                }
            }
        }
        if store == "postgres" {
            for &w in &warm_workers {
                eprintln!(
                    "[3] {label}, warm Python handler (examples/warm-python), {w} worker(s) x --concurrency {}: {n} async \
                     invokes, {} in flight",
                    args.concurrency, args.in_flight
                );
                fig.warm.push(throughput_row(&mut m, Func::WarmPython, w, n, 0, label.to_string()).await);
            }
            let base = fig
                .runs
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .find(|r| r.store == "PostgreSQL" && !r.incomplete)
                .map(|r| r.rate() / r.workers as f64);
            // What each latency run offers half of: the sync capacity (measured here) and the
            // async rate; or just the rate given.
            let mut rates: Vec<(String, f64)> = Vec::new();
            if let Some(r) = args.latency_rate {
                rates.push(("--latency-rate".into(), r));
            } else {
                let secs = if args.quick { 2.0 } else { 5.0 };
                eprintln!(
                    "[4] sync capacity: sync invokes with {} waiting at once for {secs} s, 1 worker, {label}",
                    args.sync_in_flight
                );
                let cap = m.sync_capacity(args.sync_in_flight, secs).await.map_err(|e| format!("{e:#}"));
                match &cap {
                    Ok(c) => {
                        eprintln!("    {:.0}/s", c.rate());
                        if c.ok > 0 {
                            rates.push(("half the sync capacity".into(), (c.rate() / 2.0).max(1.0)));
                        }
                    }
                    Err(e) => eprintln!("    FAILED: {e}"),
                }
                fig.sync_capacity = Some(cap);
                if let Some(b) = base {
                    rates.push(("half the 1-worker async rate".into(), (b / 2.0).max(1.0)));
                }
            }
            if rates.is_empty() {
                fig.latency.push(Err("no throughput figure to derive the offered rate from".into()));
            }
            for (basis, rate) in rates {
                eprintln!("[4] latency: sync invokes at {rate:.0}/s ({basis}) for {latency_secs} s, 1 worker, {label}");
                let mut r = m.latency(rate, latency_secs).await.map_err(|e| format!("{e:#}"));
                match &mut r {
                    Ok(l) => {
                        eprintln!(
                            "    p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; waits ended by their deadline {} (notices late {}, unsent {})",
                            l.p50_ms, l.p99_ms, l.max_ms, l.notices.deadline, l.notices.late, l.notices.unsent
                        );
                        l.basis = basis;
                        eprintln!("[4] baseline: the raw broker round trip at {rate:.0}/s for {latency_secs} s");
                        let b = broker::round_trip(&args.amqp, rate, latency_secs, args.payload_bytes)
                            .await
                            .map_err(|e| format!("{e:#}"));
                        if let Ok(b) = &b {
                            eprintln!("    p50 {:.1} ms, p99 {:.1} ms", b.p50_ms, b.p99_ms);
                        }
                        l.broker = Some(b);
                    }
                    Err(e) => eprintln!("    FAILED: {e}"),
                }
                fig.latency.push(r);
            }
            if batch_items > 0 {
                eprintln!(
                    "[5] batch: {batch_items} items as NDJSON to POST /api/batches, {} worker(s) attached, {label}",
                    args.batch_workers
                );
                let r = m.batch(batch_items, args.batch_workers).await.map_err(|e| format!("{e:#}"));
                match &r {
                    Ok(b) => eprintln!(
                        "    accepted {} items in {:.2} s ({:.0}/s){}",
                        b.total,
                        b.accept_secs,
                        b.accept_rate(),
                        match b.done_secs {
                            Some(d) => format!(", done after {d:.2} s ({:.0}/s)", b.total as f64 / d),
                            None if b.workers > 0 => format!(", not done (state {})", b.state),
                            None => String::new(),
                        }
                    ),
                    Err(e) => eprintln!("    FAILED: {e}"),
                }
                fig.batch = Some(r);
            }
        }
        let Mesh { mut mgmt, db, amqp, .. } = m;
        db.close().await;
        let _ = amqp.close(200, "done".into()).await;
        mgmt.stop(Duration::from_secs(5));
    }
    // Row 7: classic against quorum queues on a cluster, each against its own raw ceiling.
    if let Some(cluster) = args.cluster.as_deref().filter(|c| !c.trim().is_empty()) {
        match admin.as_ref().filter(|_| want_pg) {
            Some(admin) => {
                for qt in [QueueType::Classic, QueueType::Quorum] {
                    let row = cluster_row(&args, cluster, qt, raw_n, n, admin, &settings).await;
                    fig.cluster.push(row);
                }
            }
            None => fig.notes.push("row 7 (--cluster) runs on PostgreSQL: add postgres to --stores".into()),
        }
    }
    if let (Some(admin), false) = (&admin, args.no_fresh_db) {
        if want_pg {
            drop_fresh_db(admin).await;
        }
    }
    raw_row(&args, raw_n, best_setting, &mut raw_runs, &mut fig.raw_error).await;
    raw_row(&args, raw_n, per_message, &mut per_message_runs, &mut fig.raw_error).await;
    fig.raw_rates = raw_runs.iter().map(|r| r.end_to_end_rate()).collect();
    raw_runs.sort_by(|a, b| a.end_to_end_rate().total_cmp(&b.end_to_end_rate()));
    if !raw_runs.is_empty() {
        let mid = raw_runs.len() / 2;
        fig.raw = Some(raw_runs.swap_remove(mid));
    }
    fig.raw_per_message_rates = per_message_runs.iter().map(|r| r.end_to_end_rate()).collect();
    per_message_runs.sort_by(|a, b| a.end_to_end_rate().total_cmp(&b.end_to_end_rate()));
    fig.raw_per_message = per_message_runs.pop();

    let ok = fig.raw_error.is_none()
        && fig.floors.iter().all(|f| f.is_ok())
        && fig.runs.iter().all(|r| r.as_ref().is_ok_and(|r| !r.incomplete))
        && fig.splits.iter().all(|r| r.as_ref().is_ok_and(|r| !r.incomplete))
        && fig.warm.iter().all(|r| r.as_ref().is_ok_and(|r| !r.incomplete))
        && fig.latency.iter().all(|l| l.is_ok())
        && fig.sync_capacity.as_ref().is_none_or(|c| c.is_ok())
        && fig.batch.as_ref().is_none_or(|b| b.as_ref().is_ok_and(|b| !b.incomplete))
        && fig.cluster.iter().all(|c| c.raw.is_ok() && c.run.as_ref().is_ok_and(|r| !r.incomplete));
    report::print_tables(&ctx, &fig);
    let json = report::to_json(&ctx, &fig, began.elapsed());
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("\nfigures written to {} (benchmark time {:.0} s)", out.display(), began.elapsed().as_secs_f64());
    Ok(ok)
}

/// Row 7 for one queue type: the raw ceiling on the cluster, then row 2 (echo, PostgreSQL,
/// --cluster-workers) with every role given all the nodes and `--queue-type`.
async fn cluster_row(
    args: &Args,
    cluster: &str,
    qt: QueueType,
    raw_n: u64,
    n: u64,
    admin: &sqlx::AnyPool,
    base: &Settings,
) -> report::ClusterRow {
    eprintln!("[7] cluster, {qt} queues: raw broker, {raw_n} persistent messages");
    let (prefetch, ack_every) = RAW_CEILING_SETTINGS[0];
    let raw = broker::run(cluster, raw_n, args.payload_bytes, args.confirm_window, prefetch, ack_every, qt)
        .await
        .map_err(|e| format!("{e:#}"));
    match &raw {
        Ok(r) => eprintln!("    {:.0} msg/s end to end", r.end_to_end_rate()),
        Err(e) => eprintln!("    FAILED: {e}"),
    }
    let label = match qt {
        QueueType::Classic => "cluster, classic queues",
        QueueType::Quorum => "cluster, quorum queues",
    };
    let w = args.cluster_workers.max(1);
    eprintln!("[7] {label}, PostgreSQL, {w} worker(s): {n} async invokes, {} in flight", args.in_flight);
    let settings = Arc::new(Settings {
        amqp_url: cluster.to_string(),
        queue_type: qt,
        bin_dir: base.bin_dir.clone(),
        work_dir: base.work_dir.clone(),
        concurrency: base.concurrency,
        prefetch_multiplier: base.prefetch_multiplier,
        in_flight: base.in_flight,
        input_bytes: base.input_bytes,
        run_timeout: base.run_timeout,
    });
    let url = if args.no_fresh_db { args.pg.clone() } else { fresh_pg(admin, &args.pg).await.0 };
    broker::clear_default_pool(cluster).await;
    let run = match Mesh::start(label, url, settings).await {
        Ok(mut m) => {
            let r = throughput_row(&mut m, Func::Echo, w, n, 0, label.to_string()).await;
            let Mesh { mut mgmt, db, amqp, .. } = m;
            db.close().await;
            let _ = amqp.close(200, "done".into()).await;
            mgmt.stop(Duration::from_secs(5));
            broker::clear_default_pool(cluster).await;
            r
        }
        Err(e) => {
            eprintln!("    FAILED: {e:#}");
            Err((label.to_string(), w, format!("{e:#}")))
        }
    };
    report::ClusterRow { queue_type: qt, raw, run }
}

/// One throughput row (2, 2b or 3): runs it and prints its figures; a failure is kept as
/// (`label`, workers, why) for the table.
async fn throughput_row(
    m: &mut Mesh,
    func: Func,
    workers: usize,
    n: u64,
    per_request: usize,
    label: String,
) -> Result<LoadResult, (String, usize, String)> {
    match m.throughput(func, workers, n, per_request).await {
        Ok(r) => {
            eprintln!(
                "    {:.0} invocations/s end to end ({} of {n} stored{}), publish-only {:.0}/s",
                r.rate(),
                r.completed,
                if r.incomplete { ", INCOMPLETE" } else { "" },
                r.publish_rate()
            );
            Ok(r)
        }
        Err(e) => {
            eprintln!("    FAILED: {e:#}");
            Err((label, workers, format!("{e:#}")))
        }
    }
}
