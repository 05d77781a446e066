//! What the rows measure with: CPU used by role over an interval, percentiles, the clock.

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::procs;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// CPU seconds used during a measured interval, by role.
#[derive(Default, Clone, Debug)]
pub(crate) struct CpuUse {
    pub management: f64,
    /// The worker processes and their children (warm handler processes).
    pub workers: f64,
    /// Of `workers`: their children, the warm handler processes.
    pub handlers: f64,
    pub rabbitmq: f64,
    pub postgres: f64,
    pub bench: f64,
    /// Busy share of the whole machine (all cores), 0..100.
    pub machine_busy_pct: f64,
    /// CPU-seconds the whole machine spent busy (all processes, kernel included).
    pub machine: f64,
    /// The other process families that used the most CPU meanwhile (name, CPU-seconds).
    pub others: Vec<(String, f64)>,
}

pub(crate) struct CpuSnap {
    mgmt: u32,
    workers: Vec<u32>,
    /// The workers' descendants (warm handler processes) alive at this snapshot.
    children: HashSet<u32>,
    all: HashMap<u32, (String, f64)>,
    machine: (u64, u64),
}

pub(crate) fn cpu_snap(mgmt: u32, workers: &[u32]) -> CpuSnap {
    CpuSnap {
        mgmt,
        workers: workers.to_vec(),
        children: procs::descendants(workers),
        all: procs::all_cpu(),
        machine: procs::machine_ticks().unwrap_or((0, 0)),
    }
}

pub(crate) fn is_rabbitmq(comm: &str) -> bool {
    comm.starts_with("beam.smp")
}

pub(crate) fn is_postgres(comm: &str) -> bool {
    comm == "postgres"
}

pub(crate) fn cpu_use(a: &CpuSnap, b: &CpuSnap) -> CpuUse {
    let (busy, total) = (b.machine.0.saturating_sub(a.machine.0), b.machine.1.saturating_sub(a.machine.1));
    let me = std::process::id();
    let mut u = CpuUse {
        machine_busy_pct: if total > 0 { busy as f64 * 100.0 / total as f64 } else { 0.0 },
        machine: busy as f64 / procs::clock_ticks(),
        ..CpuUse::default()
    };
    for (pid, comm, d) in procs::deltas(&a.all, &b.all) {
        if pid == b.mgmt && pid != 0 {
            u.management += d;
        } else if b.workers.contains(&pid) {
            u.workers += d;
        } else if b.children.contains(&pid) || a.children.contains(&pid) {
            u.workers += d;
            u.handlers += d;
        } else if pid == me {
            u.bench += d;
        } else if is_rabbitmq(comm) {
            u.rabbitmq += d;
        } else if is_postgres(comm) {
            u.postgres += d;
        }
    }
    let known = |pid: u32, comm: &str| {
        (pid == b.mgmt && pid != 0)
            || b.workers.contains(&pid)
            || b.children.contains(&pid)
            || a.children.contains(&pid)
            || pid == me
            || is_rabbitmq(comm)
            || is_postgres(comm)
    };
    u.others = procs::top_families(&a.all, &b.all, &known, 3);
    u
}

/// The `p`th percentile (nearest rank) of sorted values; NaN when there are none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
