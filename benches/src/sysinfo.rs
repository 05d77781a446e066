//! What the figures were measured on: cores, CPU, OS, toolchain and server versions.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

pub(crate) struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory: String,
    pub os: String,
    pub kernel: String,
    pub rustc: String,
    pub rabbitmq: String,
    pub postgres_server: String,
    pub postgres_client: String,
    pub sqlite: String,
    pub postgres_settings: String,
    /// How busy the machine was (all cores, %) during the second before the benchmark began:
    /// anything well above zero means other work shares the machine.
    pub busy_before_pct: Option<f64>,
    /// Who was busy then (process family, CPU-seconds).
    pub busy_before_top: Vec<(String, f64)>,
    pub loadavg: String,
}

impl Machine {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "cores": self.cores,
            "cpu": self.cpu,
            "memory": self.memory,
            "os": self.os,
            "kernel": self.kernel,
            "rustc": self.rustc,
            "rabbitmq": self.rabbitmq,
            "postgres_server": self.postgres_server,
            "postgres_client": self.postgres_client,
            "sqlite": self.sqlite,
            "postgres_settings": self.postgres_settings,
            "busy_before_pct": self.busy_before_pct,
            "busy_before_top": self.busy_before_top.iter().map(|(n, s)| json!({"process": n, "cpu_secs": s})).collect::<Vec<_>>(),
            "loadavg": self.loadavg,
        })
    }
}

/// Runs a command with a time limit; its trimmed stdout, or `None`.
pub(crate) fn output(program: &str, args: &[&str], limit: Duration) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => break,
            Ok(Some(_)) => return None,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut s = String::new();
    use std::io::Read;
    child.stdout.take()?.read_to_string(&mut s).ok()?;
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

pub(crate) fn rustc_version() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    output(&rustc, &["-V"], Duration::from_secs(10)).unwrap_or_else(|| "unknown".into())
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown".into())
}

fn memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

/// RabbitMQ's version: `rabbitmqctl version` (needs the Erlang cookie: usually root or the
/// rabbitmq user), else the installed package's version.
fn rabbitmq_version() -> String {
    if let Some(v) = output("rabbitmqctl", &["-q", "version"], Duration::from_secs(20)) {
        return v.lines().last().unwrap_or(&v).to_string();
    }
    if let Some(v) = output("dpkg-query", &["-W", "-f", "${Version}", "rabbitmq-server"], Duration::from_secs(5)) {
        return format!("{v} (installed package; rabbitmqctl did not answer)");
    }
    "unknown (rabbitmqctl did not answer)".into()
}

pub(crate) async fn collect(pg_server: Option<String>, sqlite: Option<String>) -> Machine {
    let rabbitmq = tokio::task::spawn_blocking(rabbitmq_version).await.unwrap_or_else(|_| "unknown".into());
    Machine {
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cpu: cpu_model(),
        memory: memory(),
        os: os_name(),
        kernel: output("uname", &["-r"], Duration::from_secs(5)).unwrap_or_else(|| "unknown".into()),
        rustc: rustc_version(),
        rabbitmq,
        postgres_server: pg_server.unwrap_or_else(|| "unknown".into()),
        postgres_client: output("psql", &["-V"], Duration::from_secs(5)).unwrap_or_else(|| "psql not installed".into()),
        sqlite: sqlite.unwrap_or_else(|| "unknown".into()),
        postgres_settings: String::new(),
        busy_before_pct: None,
        busy_before_top: Vec::new(),
        loadavg: String::new(),
    }
}

/// The machine's busy share (all cores, %) over `window`, and the process families that used
/// the most CPU meanwhile.
pub(crate) async fn busy_pct(window: Duration) -> Option<(f64, Vec<(String, f64)>)> {
    let a = crate::procs::machine_ticks()?;
    let pa = crate::procs::all_cpu();
    tokio::time::sleep(window).await;
    let b = crate::procs::machine_ticks()?;
    let pb = crate::procs::all_cpu();
    let (busy, total) = (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1));
    let me = std::process::id();
    let top = crate::procs::top_families(&pa, &pb, &|pid, _| pid == me, 4);
    (total > 0).then(|| (busy as f64 * 100.0 / total as f64, top))
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
