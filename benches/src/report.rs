//! The printed tables and the JSON file.

use std::time::Duration;

use serde_json::{json, Value};

use crate::measure::CpuUse;
use crate::mesh::{BatchResult, Func, LatencyResult, LoadResult, SplitResult, SyncCapacity};
use crate::sysinfo::Machine;

/// Everything measured, for the tables and the JSON.
pub(crate) struct Figures {
    /// The median of the ceiling's runs (row 1): the baseline of every ratio.
    pub raw: Option<crate::broker::RawResult>,
    /// Every run of the ceiling's setting: end-to-end rates, in the order they ran.
    pub raw_rates: Vec<f64>,
    /// Each setting tried for the ceiling: (prefetch, ack every, rate of its first run).
    pub raw_tried: Vec<(u16, u16, f64)>,
    /// Row 1a: one ack per message (the better of its runs), and every run's rate.
    pub raw_per_message: Option<crate::broker::RawResult>,
    pub raw_per_message_rates: Vec<f64>,
    pub raw_error: Option<String>,
    /// Rows 1b and 1c: the broker with PostgreSQL writes by hand (no Warren).
    pub floors: Vec<Result<crate::floor::FloorResult, (crate::floor::Floor, usize, String)>>,
    pub runs: Vec<Result<LoadResult, (String, usize, String)>>,
    pub splits: Vec<Result<SplitResult, (String, usize, String)>>,
    pub warm: Vec<Result<LoadResult, (String, usize, String)>>,
    /// Row 4: sync invokes per second with --sync-in-flight waiting at once.
    pub sync_capacity: Option<Result<SyncCapacity, String>>,
    /// Row 4: one latency run per offered rate.
    pub latency: Vec<Result<LatencyResult, String>>,
    pub batch: Option<Result<BatchResult, String>>,
    /// Row 7: per queue type, the raw ceiling and row 2 on a cluster (`--cluster`).
    pub cluster: Vec<ClusterRow>,
    pub notes: Vec<String>,
}

/// Row 7 for one queue type.
pub(crate) struct ClusterRow {
    pub queue_type: warren_transport::QueueType,
    pub raw: Result<crate::broker::RawResult, String>,
    pub run: Result<LoadResult, (String, usize, String)>,
}

pub(crate) struct SettingsView {
    pub amqp: String,
    pub pg: String,
    pub fresh_db: bool,
    pub stores: Vec<String>,
    pub workers: Vec<usize>,
    pub concurrency: u16,
    pub prefetch_multiplier: u16,
    pub in_flight: usize,
    pub payload_bytes: usize,
    pub confirm_window: usize,
    pub prefetch: u16,
    pub latency_secs: f64,
    pub run_timeout_secs: u64,
    pub warm_workers: Vec<usize>,
    pub batch_items: u64,
    pub batch_workers: usize,
    pub bin_dir: String,
    pub built_by_bench: bool,
    /// Row 7's cluster (`--cluster`), if any.
    pub cluster: Option<String>,
    pub cluster_workers: usize,
    pub release: bool,
    pub work_dir: String,
}

pub(crate) struct Context {
    pub quick: bool,
    pub n: u64,
    pub machine: Machine,
    pub settings: SettingsView,
}

fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(v: f64) -> String {
    if v.is_finite() {
        thousands(v.round() as u64)
    } else {
        "-".into()
    }
}

fn mib(b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.1} MiB", b as f64 / 1024.0 / 1024.0)
    }
}

fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "-".into()
    }
}

/// Prints a table: the first column and "notes" left-aligned, the others right-aligned.
fn table(title: &str, head: &[&str], rows: &[Vec<String>]) {
    let cols = head.len();
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i].saturating_sub(c.chars().count());
            if i == 0 || head[i] == "notes" {
                if i > 0 {
                    s.push_str("  ");
                }
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        println!("{}", s.trim_end());
    };
    println!("\n{title}");
    line(head.iter().map(|h| h.to_string()).collect());
    println!("{}", w.iter().map(|n| "-".repeat(*n)).collect::<Vec<_>>().join("  "));
    for r in rows {
        let mut r = r.clone();
        r.resize(cols, String::new());
        line(r);
    }
}

pub(crate) fn print_header(c: &Context) {
    let m = &c.machine;
    let s = &c.settings;
    println!("Warren benchmark{} — N = {} per throughput row", if c.quick { " (--quick)" } else { "" }, thousands(c.n));
    println!("machine   {} cores ({}), {} RAM", m.cores, m.cpu, m.memory);
    println!("os        {} (kernel {})", m.os, m.kernel);
    println!("rustc     {}", m.rustc);
    println!("rabbitmq  {}", m.rabbitmq);
    println!("postgres  server {}; client {}", m.postgres_server, m.postgres_client);
    if !m.postgres_settings.is_empty() {
        println!("          {}", m.postgres_settings);
    }
    println!("sqlite    {} (sqlx's bundled library in this binary; the workers link the same)", m.sqlite);
    println!(
        "settings  worker --concurrency {} --prefetch-multiplier {}, {} HTTP requests in flight, {} B inputs; raw broker: {} confirms in flight, row 1a prefetch {}; \
         latency {} s; row timeout {} s",
        s.concurrency, s.prefetch_multiplier, s.in_flight, s.payload_bytes, s.confirm_window, s.prefetch, s.latency_secs, s.run_timeout_secs
    );
    println!(
        "          broker {}; PostgreSQL {}{}; binaries {} ({}{})",
        s.amqp,
        s.pg,
        if s.fresh_db { " (fresh database warren_bench next to it)" } else { "" },
        s.bin_dir,
        if s.release { "release" } else { "DEBUG" },
        if s.built_by_bench { ", built by the bench" } else { ", as found" }
    );
    println!(
        "          warm rows (3): examples/warm-python as shipped, {}; batch (5): {} NDJSON items, {} worker{} attached",
        if s.warm_workers.is_empty() {
            "skipped".to_string()
        } else {
            format!("{} worker(s)", s.warm_workers.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(", "))
        },
        thousands(s.batch_items),
        s.batch_workers,
        if s.batch_workers == 1 { "" } else { "s" }
    );
    if let Some(cluster) = &s.cluster {
        println!(
            "          cluster (7): {} ({} worker{} per row)",
            crate::broker::redact_list(cluster),
            s.cluster_workers,
            if s.cluster_workers == 1 { "" } else { "s" }
        );
    }
    println!("          work folder (store file, process logs) {}", s.work_dir);
    if let Some(b) = m.busy_before_pct {
        println!("load      machine {b:.0} % busy in the second before the run; load average {}", m.loadavg);
        if b > 15.0 {
            let top: Vec<String> =
                m.busy_before_top.iter().map(|(n, s)| format!("{n} {:.0} %", s * 100.0 / m.cores as f64)).collect();
            println!(
                "          WARNING: other work is using the machine ({b:.0} % of all cores): the figures below will be \
                 low and noisy\
                 {}",
                if top.is_empty() { String::new() } else { format!(" (busiest: {})", top.join(", ")) }
            );
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// "2  warren e2e PostgreSQL, 1 worker" / "3  warm python handler, PostgreSQL, 1 worker".
fn run_label(r: &LoadResult) -> String {
    match r.func {
        Func::Echo if r.bulk > 0 => {
            format!("2b warren e2e {}, {} worker{}, bulk invokes of {}", r.store, r.workers, plural(r.workers), r.bulk)
        }
        Func::Echo => format!("2  warren e2e {}, {} worker{}", r.store, r.workers, plural(r.workers)),
        Func::WarmPython => format!("3  warm python handler, {}, {} worker{}", r.store, r.workers, plural(r.workers)),
    }
}

fn failed_label(func: Func, store: &str, w: usize) -> String {
    match func {
        Func::Echo => format!("2  warren e2e {store}, {w} worker{}", plural(w)),
        Func::WarmPython => format!("3  warm python handler, {store}, {w} worker{}", plural(w)),
    }
}

fn first_line(e: &str) -> String {
    e.lines().next().unwrap_or("").chars().take(120).collect()
}

fn load_row(r: &LoadResult, ratio: &dyn Fn(f64) -> String) -> Vec<String> {
    let mut notes = Vec::new();
    if r.incomplete {
        notes.push("INCOMPLETE".to_string());
    }
    if r.completed != r.succeeded {
        notes.push(format!("{} not succeeded", r.completed - r.succeeded));
    }
    if r.rejected > 0 {
        notes.push(format!(
            "{} rejected: {}",
            r.rejected,
            r.first_error.as_deref().unwrap_or("").chars().take(80).collect::<String>()
        ));
    }
    notes.push(format!("queue peak {}", thousands(r.peak_queue_depth)));
    vec![
        run_label(r),
        rate(r.rate()),
        ratio(r.rate()),
        rate(r.publish_rate()),
        format!("{}/{}", thousands(r.completed), thousands(r.requested)),
        format!("{:.2} s", r.end_to_end_secs),
        notes.join("; "),
    ]
}

fn failed_row(label: String, e: &str) -> Vec<String> {
    vec![label, "FAILED".into(), String::new(), String::new(), String::new(), String::new(), first_line(e)]
}

fn batch_rows(b: &BatchResult, ratio: &dyn Fn(f64) -> String) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if b.total != b.items {
        notes.push(format!("INCOMPLETE: 201 says total {}", thousands(b.total)));
    }
    notes.push(format!(
        "{:.1} MB of NDJSON; {} worker{} attached",
        b.body_bytes as f64 / 1e6,
        b.workers,
        plural(b.workers)
    ));
    if b.state_at_201 != "running" {
        notes.push(format!("state at 201: {}", b.state_at_201));
    }
    rows.push(vec![
        format!("5  batch submit {}: accepted (first byte → 201)", b.store),
        rate(b.accept_rate()),
        ratio(b.accept_rate()),
        String::new(),
        format!("{}/{}", thousands(b.total), thousands(b.items)),
        format!("{:.2} s", b.accept_secs),
        notes.join("; "),
    ]);
    if b.workers > 0 {
        let mut notes = Vec::new();
        if b.incomplete {
            notes.push(format!("INCOMPLETE (state {})", b.state));
        }
        if b.not_succeeded > 0 {
            notes.push(format!("{} not succeeded", thousands(b.not_succeeded)));
        }
        if let Some(l) = b.last_item_secs {
            notes.push(format!("last item stored at {l:.2} s"));
        }
        notes.push(format!("queue peak {}", thousands(b.peak_queue_depth)));
        let done = b.done_rate().unwrap_or(f64::NAN);
        rows.push(vec![
            format!(
                "5  batch {}: first byte → state done ({} worker{} draining)",
                b.store,
                b.workers,
                plural(b.workers)
            ),
            rate(done),
            if done.is_finite() { ratio(done) } else { "-".into() },
            String::new(),
            format!("{}/{}", thousands(b.succeeded), thousands(b.total)),
            b.done_secs.map(|d| format!("{d:.2} s")).unwrap_or_else(|| "-".into()),
            notes.join("; "),
        ]);
    }
    rows
}

pub(crate) fn print_tables(c: &Context, f: &Figures) {
    let base = f.raw.as_ref().map(|r| r.end_to_end_rate());
    let ratio = |v: f64| base.map(|b| format!("{:.2}", v / b)).unwrap_or_else(|| "-".into());

    let mut rows = Vec::new();
    match (&f.raw, &f.raw_error) {
        (Some(r), _) => {
            rows.push(vec![
                "1  true ceiling (lapin): publish+consume end to end".into(),
                rate(r.end_to_end_rate()),
                "1.00".into(),
                rate(r.publish_rate()),
                format!("{}/{}", thousands(r.messages), thousands(r.messages)),
                format!("{:.2} s", r.end_to_end_secs),
                format!(
                    "prefetch {}, one multiple ack per {}: the best of {}; median of {} runs (two before the Warren rows, one after): {} msg/s",
                    r.prefetch,
                    r.ack_every,
                    f.raw_tried
                        .iter()
                        .map(|(p, k, x)| format!("{p}/{k} {}", rate(*x)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    f.raw_rates.len(),
                    f.raw_rates.iter().map(|&x| rate(x)).collect::<Vec<_>>().join(" / ")
                ),
            ]);
            if let Some(p) = &f.raw_per_message {
                rows.push(vec![
                    "1a raw broker, one ack per message".into(),
                    rate(p.end_to_end_rate()),
                    ratio(p.end_to_end_rate()),
                    rate(p.publish_rate()),
                    format!("{}/{}", thousands(p.messages), thousands(p.messages)),
                    format!("{:.2} s", p.end_to_end_secs),
                    format!(
                        "prefetch {}; the better of {} runs: {} msg/s",
                        p.prefetch,
                        f.raw_per_message_rates.len(),
                        f.raw_per_message_rates.iter().map(|&x| rate(x)).collect::<Vec<_>>().join(" / ")
                    ),
                ]);
            }
        }
        (None, e) => rows.push(vec![
            "1  raw broker (lapin)".into(),
            "FAILED".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            e.clone().unwrap_or_default(),
        ]),
    }
    for r in &f.floors {
        match r {
            Ok(r) => rows.push(vec![
                format!("{}  {}", r.floor.row(), r.floor.label_with(r.consumers)),
                rate(r.end_to_end_rate()),
                ratio(r.end_to_end_rate()),
                rate(r.publish_rate()),
                format!("{}/{}", thousands(r.stored), thousands(r.messages)),
                format!("{:.2} s", r.end_to_end_secs),
                format!(
                    "no Warren code: the durable writes of row 2 by hand; {:.0} rows per statement",
                    r.stored as f64 / r.statements.max(1) as f64
                ),
            ]),
            Err((floor, consumers, e)) => {
                rows.push(failed_row(format!("{}  {}", floor.row(), floor.label_with(*consumers)), e))
            }
        }
    }
    for r in &f.runs {
        match r {
            Ok(r) => rows.push(load_row(r, &ratio)),
            Err((store, w, e)) => rows.push(failed_row(failed_label(Func::Echo, store, *w), e)),
        }
    }
    for r in &f.splits {
        match r {
            Ok(r) => {
                let mut notes = Vec::new();
                if r.incomplete {
                    notes.push("INCOMPLETE".to_string());
                }
                if r.rejected > 0 {
                    notes.push(format!(
                        "{} rejected: {}",
                        r.rejected,
                        r.first_error.as_deref().unwrap_or("").chars().take(80).collect::<String>()
                    ));
                }
                rows.push(vec![
                    format!("2  {} split: management ingest alone (no worker)", r.store),
                    rate(r.ingest_rate()),
                    ratio(r.ingest_rate()),
                    rate(r.ingest_rate()),
                    format!("{}/{}", thousands(r.accepted), thousands(r.requested)),
                    format!("{:.2} s", r.ingest_secs),
                    {
                        let mut n = notes.clone();
                        n.push(format!("{} left queued", thousands(r.queued)));
                        n.join("; ")
                    },
                ]);
                rows.push(vec![
                    format!(
                        "2  {} split: {} worker{} drain the backlog alone",
                        r.store,
                        r.workers,
                        if r.workers == 1 { "" } else { "s" }
                    ),
                    rate(r.drain_rate()),
                    ratio(r.drain_rate()),
                    String::new(),
                    format!("{}/{}", thousands(r.drained), thousands(r.accepted)),
                    format!("{:.2} s", r.drain_secs),
                    notes.join("; "),
                ]);
            }
            Err((store, w, e)) => rows.push(vec![
                format!("2  {store} split ({w} worker{})", if *w == 1 { "" } else { "s" }),
                "FAILED".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                e.lines().next().unwrap_or("").chars().take(120).collect(),
            ]),
        }
    }
    for r in &f.warm {
        match r {
            Ok(r) => rows.push(load_row(r, &ratio)),
            Err((store, w, e)) => rows.push(failed_row(failed_label(Func::WarmPython, store, *w), e)),
        }
    }
    match &f.batch {
        Some(Ok(b)) => rows.extend(batch_rows(b, &ratio)),
        Some(Err(e)) => rows.push(failed_row("5  batch submit PostgreSQL".into(), e)),
        None => {}
    }
    table(
        &format!(
            "Throughput (N = {} each, batch {} items; ratio = to row 1, the true ceiling; publish-only = until the last 202 / confirm)",
            thousands(c.n),
            thousands(c.settings.batch_items)
        ),
        &["row", "per s", "ratio", "publish-only /s", "stored", "time", "notes"],
        &rows,
    );

    if !f.cluster.is_empty() {
        cluster_table(c, f);
    }

    // Latency.
    let mut rows = Vec::new();
    match &f.sync_capacity {
        Some(Ok(c)) => rows.push(vec![
            format!("4  sync capacity: {} waiting at once", c.in_flight),
            format!("({}/s)", rate(c.rate())),
            format!("{:.0} s", c.secs),
            format!("{}/{}", thousands(c.ok), thousands(c.ok + c.errors)),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            if c.errors > 0 {
                format!(
                    "{} errors: {}",
                    c.errors,
                    c.first_error.as_deref().unwrap_or("").chars().take(80).collect::<String>()
                )
            } else {
                "answered per s: the capacity the first latency run offers half of".into()
            },
        ]),
        Some(Err(e)) => rows.push(vec![
            "4  sync capacity".into(),
            "FAILED".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            e.lines().next().unwrap_or("").chars().take(120).collect(),
        ]),
        None => {}
    }
    for l in &f.latency {
        match l {
            Ok(l) => {
                rows.push(vec![
                    "4  sync invoke, PostgreSQL, 1 worker".into(),
                    format!("{}/s", rate(l.offered_rate)),
                    format!("{:.0} s", l.secs),
                    format!("{}/{}", thousands(l.ok), thousands(l.sent)),
                    ms(l.p50_ms),
                    ms(l.p90_ms),
                    ms(l.p99_ms),
                    ms(l.max_ms),
                    {
                        let n = &l.notices;
                        let lag = format!(
                            "{}; sent late by p50 {} / p99 {} ms; waits ended by their deadline: {} (notices late {}, unsent {})",
                            l.basis,
                            ms(l.lag_p50_ms),
                            ms(l.lag_p99_ms),
                            n.deadline,
                            n.late,
                            n.unsent
                        );
                        if l.errors > 0 {
                            format!(
                                "{lag}; {} errors: {}",
                                l.errors,
                                l.first_error.as_deref().unwrap_or("").chars().take(80).collect::<String>()
                            )
                        } else {
                            lag
                        }
                    },
                ]);
                match &l.broker {
                    Some(Ok(b)) => rows.push(vec![
                        "   raw broker round trip (lapin), same rate".into(),
                        format!("{}/s", rate(b.offered_rate)),
                        format!("{:.0} s", l.secs),
                        format!("{}/{}", thousands(b.answered), thousands(b.sent)),
                        ms(b.p50_ms),
                        ms(b.p90_ms),
                        ms(b.p99_ms),
                        ms(b.max_ms),
                        format!(
                            "the two broker hops of a sync invoke alone; Warren p50 = {:.1}x this",
                            l.p50_ms / b.p50_ms
                        ),
                    ]),
                    Some(Err(e)) => rows.push(vec![
                        "   raw broker round trip (lapin)".into(),
                        "FAILED".into(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        e.lines().next().unwrap_or("").chars().take(120).collect(),
                    ]),
                    None => {}
                }
            }
            Err(e) => rows.push(vec![
                "4  sync invoke, PostgreSQL, 1 worker".into(),
                "FAILED".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                e.lines().next().unwrap_or("").chars().take(120).collect(),
            ]),
        }
    }
    if rows.is_empty() {
        rows.push(vec!["4  sync invoke".into(), "not run (no PostgreSQL in --stores)".into()]);
    }
    table(
        "Latency (open loop, paced by a thread of its own; ms from each request's scheduled send to its 200)",
        &["row", "offered", "for", "ok", "p50 ms", "p90 ms", "p99 ms", "max ms", "notes"],
        &rows,
    );

    // Memory.
    let mut rows = Vec::new();
    for r in f.runs.iter().chain(f.warm.iter()).filter_map(|r| r.as_ref().ok()) {
        rows.push(vec![
            format!("6  {}", &run_label(r)[3..]),
            mib(r.worker_rss_idle),
            mib(r.worker_rss_peak),
            mib(r.worker_rss_after),
            mib(r.mgmt_rss_idle),
            mib(r.mgmt_rss_peak),
            {
                let mut notes = Vec::new();
                if r.rss_by_progress.len() == 4 {
                    let at =
                        |f: fn(&(u64, u64)) -> u64| r.rss_by_progress.iter().map(|x| mib(f(x))).collect::<Vec<_>>();
                    notes.push(format!(
                        "at 25/50/75/100 % stored: management {}, worker {}",
                        at(|x| x.0).join(" / "),
                        at(|x| x.1).join(" / ")
                    ));
                }
                if r.func != Func::Echo {
                    notes.push(format!(
                        "{} handler process{} right after, {} together (not in the worker columns)",
                        r.handlers_after,
                        if r.handlers_after == 1 { "" } else { "es" },
                        mib(r.handlers_rss_after)
                    ));
                }
                notes.join("; ")
            },
        ]);
    }
    if let Some(Ok(l)) = f.latency.first() {
        rows.push(vec![
            "6  after the latency row (1 worker)".into(),
            String::new(),
            String::new(),
            mib(l.worker_rss_after),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    if let Some(Ok(b)) = &f.batch {
        rows.push(vec![
            format!("6  batch of {} items, {}", thousands(b.items), b.store),
            mib(b.worker_rss_idle),
            mib(b.worker_rss_peak),
            mib(b.worker_rss_after),
            mib(b.mgmt_rss_idle),
            mib(b.mgmt_rss_peak),
            format!("management peak while accepting {}", mib(b.mgmt_rss_peak_accept)),
        ]);
    }
    table(
        "Memory (VmRSS; worker columns = the largest worker of the run)",
        &[
            "row",
            "worker idle",
            "worker peak under load",
            "worker right after",
            "management idle",
            "management peak",
            "notes",
        ],
        &rows,
    );

    // CPU.
    let cpu_row = |label: String, count: u64, c: &CpuUse| {
        let k = count.max(1) as f64 / 1000.0;
        let other = (c.machine - c.management - c.workers - c.rabbitmq - c.postgres - c.bench).max(0.0);
        vec![
            label,
            format!("{:.2}", c.management / k),
            format!("{:.2}", c.workers / k),
            format!("{:.2}", c.rabbitmq / k),
            format!("{:.2}", c.postgres / k),
            format!("{:.2}", c.bench / k),
            format!("{:.2}", other / k),
            format!("{:.2}", c.machine / k),
            format!("{:.0} %", c.machine_busy_pct),
            {
                let mut n: Vec<String> = Vec::new();
                if c.handlers > 0.0 {
                    n.push(format!("workers incl. handler processes {:.2}", c.handlers / k));
                }
                n.extend(c.others.iter().map(|(n, s)| format!("{n} {:.2}", s / k)));
                n.join(", ")
            },
        ]
    };
    let mut rows = Vec::new();
    if let Some(r) = &f.raw {
        rows.push(cpu_row("true ceiling (lapin)".into(), r.messages, &r.cpu));
    }
    for r in f.floors.iter().filter_map(|r| r.as_ref().ok()) {
        rows.push(cpu_row(format!("{} (bench client = both)", r.floor.label_with(r.consumers)), r.messages, &r.cpu));
    }
    for r in f.runs.iter().filter_map(|r| r.as_ref().ok()) {
        rows.push(cpu_row(run_label(r)[3..].to_string(), r.completed, &r.cpu));
    }
    for r in f.splits.iter().filter_map(|r| r.as_ref().ok()) {
        rows.push(cpu_row(format!("{} split: ingest alone", r.store), r.accepted, &r.ingest_cpu));
        rows.push(cpu_row(
            format!("{} split: {} worker{} drain alone", r.store, r.workers, if r.workers == 1 { "" } else { "s" }),
            r.drained,
            &r.drain_cpu,
        ));
    }
    for r in f.warm.iter().filter_map(|r| r.as_ref().ok()) {
        rows.push(cpu_row(run_label(r)[3..].to_string(), r.completed, &r.cpu));
    }
    for r in &f.cluster {
        if let Ok(raw) = &r.raw {
            rows.push(cpu_row(format!("raw broker, cluster, {} queue", r.queue_type), raw.messages, &raw.cpu));
        }
        if let Ok(run) = &r.run {
            rows.push(cpu_row(run_label(run)[3..].to_string(), run.completed, &run.cpu));
        }
    }
    if let Some(Ok(c)) = &f.sync_capacity {
        rows.push(cpu_row(format!("sync capacity ({} waiting)", c.in_flight), c.ok, &c.cpu));
    }
    for l in f.latency.iter().filter_map(|l| l.as_ref().ok()) {
        rows.push(cpu_row(format!("sync invokes at {}/s", rate(l.offered_rate)), l.ok, &l.cpu));
        if let Some(Ok(b)) = &l.broker {
            rows.push(cpu_row(format!("raw broker round trip at {}/s", rate(b.offered_rate)), b.answered, &b.cpu));
        }
    }
    if let Some(Ok(b)) = &f.batch {
        rows.push(cpu_row(format!("batch {}: accept", b.store), b.total, &b.accept_cpu));
        if let Some(c) = &b.done_cpu {
            rows.push(cpu_row(format!("batch {}: first byte → done", b.store), b.total, c));
        }
    }
    table(
        "CPU during each run (CPU-seconds per 1,000 invocations; other = kernel threads and any other process, the \
         biggest of them in notes; busy = share of all cores)",
        &[
            "run",
            "management",
            "workers",
            "rabbitmq",
            "postgres",
            "bench client",
            "other",
            "whole machine",
            "machine busy",
            "notes",
        ],
        &rows,
    );
    for n in &f.notes {
        println!("note: {n}");
    }
}

/// Row 7: each queue type's Warren rate against its own raw ceiling on the same cluster.
fn cluster_table(c: &Context, f: &Figures) {
    let classic = f.cluster.iter().find(|r| r.queue_type == warren_transport::QueueType::Classic);
    let classic_rate = |pick: fn(&ClusterRow) -> Option<f64>| classic.and_then(pick);
    let raw_of = |r: &ClusterRow| r.raw.as_ref().ok().map(|r| r.end_to_end_rate());
    let run_of = |r: &ClusterRow| r.run.as_ref().ok().map(|r| r.rate());
    let mut rows = Vec::new();
    for r in &f.cluster {
        let qt = r.queue_type;
        match &r.raw {
            Ok(raw) => rows.push(vec![
                format!("7  raw broker (lapin), {qt} queue"),
                rate(raw.end_to_end_rate()),
                "1.00".into(),
                classic_rate(raw_of).map(|c| format!("{:.2}", raw.end_to_end_rate() / c)).unwrap_or_default(),
                rate(raw.publish_rate()),
                format!("{:.2} s", raw.end_to_end_secs),
                "publisher on the first node, consumer on the second".into(),
            ]),
            Err(e) => rows.push(failed_row(format!("7  raw broker (lapin), {qt} queue"), e)),
        }
        match &r.run {
            Ok(run) => rows.push(vec![
                format!("7  warren e2e PostgreSQL, {qt} queues, {} worker{}", run.workers, plural(run.workers)),
                rate(run.rate()),
                raw_of(r).map(|b| format!("{:.2}", run.rate() / b)).unwrap_or_else(|| "-".into()),
                classic_rate(run_of).map(|c| format!("{:.2}", run.rate() / c)).unwrap_or_default(),
                rate(run.publish_rate()),
                format!("{:.2} s", run.end_to_end_secs),
                {
                    let mut notes = vec![format!("{}/{} stored", thousands(run.completed), thousands(run.requested))];
                    if run.incomplete {
                        notes.push("INCOMPLETE".into());
                    }
                    notes.join("; ")
                },
            ]),
            Err((label, _, e)) => rows.push(failed_row(format!("7  warren e2e {label}"), e)),
        }
    }
    table(
        &format!(
            "Queue types on a {}-node RabbitMQ cluster (N = {}; ratio = to the same queue type's raw row; \
             vs classic = to the classic row of the same kind)",
            c.settings.cluster.as_deref().map(|u| u.split(',').count()).unwrap_or(0),
            thousands(c.n)
        ),
        &["row", "per s", "ratio", "vs classic", "publish-only /s", "time", "notes"],
        &rows,
    );
}

fn cpu_json(c: &CpuUse) -> Value {
    json!({
        "management": c.management,
        "workers": c.workers,
        "workers_handler_processes": c.handlers,
        "rabbitmq": c.rabbitmq,
        "postgres": c.postgres,
        "bench": c.bench,
        "machine": c.machine,
        "machine_busy_pct": c.machine_busy_pct,
        "top_others": c.others.iter().map(|(n, s)| json!({"process": n, "cpu_secs": s})).collect::<Vec<_>>(),
    })
}

pub(crate) fn to_json(c: &Context, f: &Figures, took: Duration) -> Value {
    let s = &c.settings;
    let base = f.raw.as_ref().map(|r| r.end_to_end_rate());
    let raw = match (&f.raw, &f.raw_error) {
        (Some(r), _) => json!({
            "messages": r.messages,
            "body_bytes": r.body_bytes,
            "end_to_end_per_s": r.end_to_end_rate(),
            "publish_confirmed_per_s": r.publish_rate(),
            "end_to_end_secs": r.end_to_end_secs,
            "publish_secs": r.publish_secs,
            "runs_end_to_end_per_s": f.raw_rates,
            "prefetch": r.prefetch,
            "ack_every": r.ack_every,
            "tried": f.raw_tried.iter().map(|(p, k, x)| json!({"prefetch": p, "ack_every": k, "end_to_end_per_s": x})).collect::<Vec<_>>(),
            "per_message": f.raw_per_message.as_ref().map(|p| json!({
                "prefetch": p.prefetch,
                "end_to_end_per_s": p.end_to_end_rate(),
                "runs_end_to_end_per_s": f.raw_per_message_rates,
            })),
            "cpu_secs": cpu_json(&r.cpu),
        }),
        (None, e) => json!({"error": e}),
    };
    let floors: Vec<Value> = f
        .floors
        .iter()
        .map(|r| match r {
            Ok(r) => json!({
                "row": r.floor.row(),
                "kind": r.floor.key(),
                "consumers": r.consumers,
                "messages": r.messages,
                "stored": r.stored,
                "statements": r.statements,
                "end_to_end_per_s": r.end_to_end_rate(),
                "ratio_to_raw": base.map(|b| r.end_to_end_rate() / b),
                "publish_confirmed_per_s": r.publish_rate(),
                "end_to_end_secs": r.end_to_end_secs,
                "cpu_secs": cpu_json(&r.cpu),
            }),
            Err((floor, consumers, e)) => {
                json!({"row": floor.row(), "kind": floor.key(), "consumers": consumers, "error": e})
            }
        })
        .collect();
    let run_json = |r: &Result<LoadResult, (String, usize, String)>| match r {
        Ok(r) => json!({
            "store": r.store,
            "function": r.func.as_str(),
            "workers": r.workers,
            "bulk_inputs_per_request": r.bulk,
            "requested": r.requested,
            "accepted": r.accepted,
            "rejected": r.rejected,
            "first_error": r.first_error,
            "completed": r.completed,
            "succeeded": r.succeeded,
            "incomplete": r.incomplete,
            "end_to_end_per_s": r.rate(),
            "ratio_to_raw": base.map(|b| r.rate() / b),
            "end_to_end_secs": r.end_to_end_secs,
            "publish_only_per_s": r.publish_rate(),
            "publish_secs": r.publish_secs,
            "peak_queue_depth": r.peak_queue_depth,
            "memory_bytes": {
                "worker_idle": r.worker_rss_idle,
                "worker_peak": r.worker_rss_peak,
                "worker_after": r.worker_rss_after,
                "management_idle": r.mgmt_rss_idle,
                "management_peak": r.mgmt_rss_peak,
                "handler_processes_after": r.handlers_after,
                "handlers_after": r.handlers_rss_after,
                "by_progress": r.rss_by_progress.iter().zip([25, 50, 75, 100])
                    .map(|((m, w), pct)| json!({"stored_pct": pct, "management": m, "worker": w}))
                    .collect::<Vec<_>>(),
            },
            "cpu_secs": cpu_json(&r.cpu),
        }),
        Err((store, w, e)) => json!({"store": store, "workers": w, "error": e}),
    };
    let runs: Vec<Value> = f.runs.iter().map(run_json).collect();
    let warm: Vec<Value> = f.warm.iter().map(run_json).collect();
    let batch = match &f.batch {
        Some(Ok(b)) => json!({
            "store": b.store,
            "function": "echo",
            "items": b.items,
            "workers": b.workers,
            "body_bytes": b.body_bytes,
            "total": b.total,
            "state_at_201": b.state_at_201,
            "accept_secs": b.accept_secs,
            "accept_per_s": b.accept_rate(),
            "accept_ratio_to_raw": base.map(|x| b.accept_rate() / x),
            "accept_cpu_secs": cpu_json(&b.accept_cpu),
            "done_secs": b.done_secs,
            "done_per_s": b.done_rate(),
            "done_ratio_to_raw": match (base, b.done_rate()) { (Some(x), Some(d)) => Some(d / x), _ => None },
            "last_item_stored_secs": b.last_item_secs,
            "done_cpu_secs": b.done_cpu.as_ref().map(cpu_json),
            "state": b.state,
            "succeeded": b.succeeded,
            "not_succeeded": b.not_succeeded,
            "incomplete": b.incomplete,
            "peak_queue_depth": b.peak_queue_depth,
            "memory_bytes": {
                "worker_idle": b.worker_rss_idle,
                "worker_peak": b.worker_rss_peak,
                "worker_after": b.worker_rss_after,
                "management_idle": b.mgmt_rss_idle,
                "management_peak_accepting": b.mgmt_rss_peak_accept,
                "management_peak": b.mgmt_rss_peak,
            },
        }),
        Some(Err(e)) => json!({"error": e}),
        None => Value::Null,
    };
    let splits: Vec<Value> = f
        .splits
        .iter()
        .map(|r| match r {
            Ok(r) => json!({
                "store": r.store,
                "workers": r.workers,
                "requested": r.requested,
                "accepted": r.accepted,
                "rejected": r.rejected,
                "first_error": r.first_error,
                "queued_after_ingest": r.queued,
                "ingest_alone_per_s": r.ingest_rate(),
                "ingest_ratio_to_raw": base.map(|b| r.ingest_rate() / b),
                "ingest_secs": r.ingest_secs,
                "ingest_cpu_secs": cpu_json(&r.ingest_cpu),
                "drained": r.drained,
                "drain_alone_per_s": r.drain_rate(),
                "drain_ratio_to_raw": base.map(|b| r.drain_rate() / b),
                "drain_secs": r.drain_secs,
                "drain_cpu_secs": cpu_json(&r.drain_cpu),
                "incomplete": r.incomplete,
            }),
            Err((store, w, e)) => json!({"store": store, "workers": w, "error": e}),
        })
        .collect();
    let latency: Vec<Value> = f
        .latency
        .iter()
        .map(|l| match l {
            Ok(l) => json!({
                "store": "PostgreSQL",
                "workers": 1,
                "basis": l.basis,
                "offered_per_s": l.offered_rate,
                "secs": l.secs,
                "sent": l.sent,
                "ok": l.ok,
                "errors": l.errors,
                "first_error": l.first_error,
                "p50_ms": l.p50_ms,
                "p90_ms": l.p90_ms,
                "p99_ms": l.p99_ms,
                "max_ms": l.max_ms,
                "send_lag_p50_ms": l.lag_p50_ms,
                "send_lag_p99_ms": l.lag_p99_ms,
                "waits_ended_by_deadline": l.notices.deadline,
                "notices_late": l.notices.late,
                "notices_unsent": l.notices.unsent,
                "cpu_secs": cpu_json(&l.cpu),
                "worker_rss_after_bytes": l.worker_rss_after,
                "raw_broker_round_trip": match &l.broker {
                    Some(Ok(b)) => json!({
                        "sent": b.sent,
                        "answered": b.answered,
                        "p50_ms": b.p50_ms,
                        "p90_ms": b.p90_ms,
                        "p99_ms": b.p99_ms,
                        "max_ms": b.max_ms,
                        "cpu_secs": cpu_json(&b.cpu),
                    }),
                    Some(Err(e)) => json!({"error": e}),
                    None => Value::Null,
                },
            }),
            Err(e) => json!({"error": e}),
        })
        .collect();
    let sync_capacity = match &f.sync_capacity {
        Some(Ok(c)) => json!({
            "in_flight": c.in_flight,
            "secs": c.secs,
            "ok": c.ok,
            "errors": c.errors,
            "per_s": c.rate(),
            "cpu_secs": cpu_json(&c.cpu),
        }),
        Some(Err(e)) => json!({"error": e}),
        None => Value::Null,
    };
    let cluster: Vec<Value> = f
        .cluster
        .iter()
        .map(|r| {
            let raw_rate = r.raw.as_ref().ok().map(|x| x.end_to_end_rate());
            json!({
                "queue_type": r.queue_type.as_str(),
                "raw_broker": match &r.raw {
                    Ok(x) => json!({
                        "messages": x.messages,
                        "end_to_end_per_s": x.end_to_end_rate(),
                        "publish_confirmed_per_s": x.publish_rate(),
                        "cpu_secs": cpu_json(&x.cpu),
                    }),
                    Err(e) => json!({"error": e}),
                },
                "end_to_end": run_json(&r.run),
                "end_to_end_ratio_to_own_raw": match (&r.run, raw_rate) {
                    (Ok(x), Some(b)) => Some(x.rate() / b),
                    _ => None,
                },
            })
        })
        .collect();
    json!({
        "benchmark": "warren-bench",
        "unix_ms": crate::measure::now_ms(),
        "took_secs": took.as_secs_f64(),
        "quick": c.quick,
        "machine": c.machine.to_json(),
        "settings": {
            "n": c.n,
            "amqp": s.amqp,
            "pg": s.pg,
            "fresh_pg_database": s.fresh_db,
            "stores": s.stores,
            "workers": s.workers,
            "worker_concurrency": s.concurrency,
            "http_in_flight": s.in_flight,
            "payload_bytes": s.payload_bytes,
            "raw_confirm_window": s.confirm_window,
            "raw_prefetch": s.prefetch,
            "latency_secs": s.latency_secs,
            "run_timeout_secs": s.run_timeout_secs,
            "warm_workers": s.warm_workers,
            "warm_function": "examples/warm-python",
            "batch_items": s.batch_items,
            "batch_workers": s.batch_workers,
            "bin_dir": s.bin_dir,
            "binaries_built_by_bench": s.built_by_bench,
            "cluster": s.cluster.as_deref().map(crate::broker::redact_list),
            "cluster_workers": s.cluster_workers,
            "release": s.release,
        },
        "raw_broker": raw,
        "floor": floors,
        "end_to_end": runs,
        "split": splits,
        "warm_handlers": warm,
        "sync_capacity": sync_capacity,
        "latency": latency,
        "batch": batch,
        "cluster": cluster,
        "notes": f.notes,
    })
}
