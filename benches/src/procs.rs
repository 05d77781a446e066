//! Child processes that never outlive the benchmark, and what `/proc` says about processes.
//!
//! Every child is registered in a global list: a `Child` guard kills (SIGKILL) and reaps it when
//! dropped (also while unwinding from a panic), the Ctrl-C handler kills every registered one,
//! and on Linux each child asks the kernel for SIGKILL should the benchmark itself die
//! (`PR_SET_PDEATHSIG`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static LIVE: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn register(pid: u32) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashSet::new).insert(pid);
}

fn unregister(pid: u32) {
    if let Some(s) = LIVE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        s.remove(&pid);
    }
}

/// Kills every child still registered (used by the Ctrl-C handler).
pub(crate) fn kill_all() {
    let pids: Vec<u32> = LIVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default();
    for pid in pids {
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}

/// A child process, killed and reaped when dropped. Its stdout and stderr go to `log`.
pub(crate) struct Child {
    child: Option<std::process::Child>,
    pub name: String,
    pub log: PathBuf,
}

impl Child {
    pub(crate) fn spawn(name: &str, program: &Path, args: &[String], log: PathBuf) -> Result<Child> {
        if !program.exists() {
            bail!(
                "{} is missing: build the binaries first (`cargo build --release --workspace --bins`), \
                 or run the benchmark through `cargo run --release -p warren-benches`, which builds them",
                program.display()
            );
        }
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .env("RUST_LOG", std::env::var("WARREN_BENCH_LOG").unwrap_or_else(|_| "warn".into()));
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {name} ({})", program.display()))?;
        register(child.id());
        Ok(Child { child: Some(child), name: name.to_string(), log })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `Err` with the tail of its log if the process has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                bail!("{} exited unexpectedly ({status}); last lines of its output:\n{}", self.name, self.log_tail(20));
            }
        }
        Ok(())
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        all[from..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + grace;
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
            unregister(c.id());
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            unregister(c.id());
        }
    }
}

/// Resident memory (VmRSS) of a process, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(crate) fn clock_ticks() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time (user + system) a process has used so far, in seconds.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ppid(1) ... utime(11) stime(12).
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn ppid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Every live descendant of `roots` (not the roots themselves): e.g. a worker's warm handler
/// processes.
pub(crate) fn descendants(roots: &[u32]) -> HashSet<u32> {
    let mut out = HashSet::new();
    if roots.is_empty() {
        return out;
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let Some(pp) = ppid(pid) {
                children.entry(pp).or_default().push(pid);
            }
        }
    }
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if out.insert(c) {
                todo.push(c);
            }
        }
    }
    out
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

/// Every process's command name and CPU seconds so far.
pub(crate) fn all_cpu() -> HashMap<u32, (String, f64)> {
    let mut out = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let (Some(c), Some(cpu)) = (comm(pid), cpu_secs(pid)) {
                out.insert(pid, (c, cpu));
            }
        }
    }
    out
}

/// A process family name: kernel threads lose their `/instance` suffix (kworker/1:1H -> kworker).
pub(crate) fn family(comm: &str) -> String {
    comm.split('/').next().unwrap_or(comm).to_string()
}

/// CPU seconds per process between two `all_cpu` snapshots (processes born in between count
/// from zero; processes that died in between are lost).
pub(crate) fn deltas<'a>(
    before: &'a HashMap<u32, (String, f64)>,
    after: &'a HashMap<u32, (String, f64)>,
) -> impl Iterator<Item = (u32, &'a str, f64)> + 'a {
    after.iter().filter_map(move |(pid, (c, cpu))| {
        let d = cpu - before.get(pid).map(|b| b.1).unwrap_or(0.0);
        (d > 0.0).then_some((*pid, c.as_str(), d))
    })
}

/// The `k` process families that used the most CPU between two snapshots, leaving out `skip`.
pub(crate) fn top_families(
    before: &HashMap<u32, (String, f64)>,
    after: &HashMap<u32, (String, f64)>,
    skip: &dyn Fn(u32, &str) -> bool,
    k: usize,
) -> Vec<(String, f64)> {
    let mut by: HashMap<String, f64> = HashMap::new();
    for (pid, c, d) in deltas(before, after) {
        if !skip(pid, c) {
            *by.entry(family(c)).or_default() += d;
        }
    }
    let mut v: Vec<(String, f64)> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(k);
    v
}

/// Machine-wide CPU counters from /proc/stat: (busy, total) in ticks.
pub(crate) fn machine_ticks() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice are inside user/nice]
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    Some((total - idle, total))
}
