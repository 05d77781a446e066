//! The `process` runtime: one OS process per invocation.
//!
//! The input goes to the process's stdin, its stdout is the result, and each stderr line is a
//! log line. A non-zero exit is a failure carrying those logs. Past the timeout the whole
//! process tree is killed (a process group on Unix, `taskkill /T` on Windows) and the invocation
//! is `timed_out`. Output and log volume are capped so a chatty function cannot exhaust memory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warren_wire::invocation::{LogLine, Status};
use warren_wire::time::now_ms;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_output_bytes: usize,
    pub max_log_lines: usize,
    pub max_log_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_output_bytes: 16 << 20, max_log_lines: 10_000, max_log_line_bytes: 8 << 10 }
    }
}

/// What one run produced.
#[derive(Debug)]
pub struct RunOutput {
    pub status: Status,
    pub result: Option<Vec<u8>>,
    pub error: Option<String>,
    pub logs: Vec<LogLine>,
}

/// What may follow a run from outside: its log lines as they come (when there is room in the
/// channel), and a token that stops it (its process tree killed, the run `cancelled`).
#[derive(Default)]
pub struct Watch {
    pub live: Option<mpsc::Sender<LogLine>>,
    pub cancel: Option<CancellationToken>,
}

/// Facts about the invocation given to the process as environment variables.
pub struct InvocationEnv<'a> {
    pub id: &'a str,
    pub function: &'a str,
    pub version: i64,
    pub attempt: u32,
    /// Headers of the triggering message (source trigger); `WARREN_HEADERS` as a JSON object.
    pub headers: &'a [(String, String)],
}

impl InvocationEnv<'_> {
    /// The headers as a JSON object (`{}` when there are none).
    pub fn headers_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.headers.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
        )
    }
}

/// Variables kept from the worker's environment so that ordinary programs can start; nothing
/// else of the worker's environment (its credentials included) reaches the function.
const INHERITED: &[&str] = &[
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "HOME",
    // Windows needs these for most programs to start at all.
    "SYSTEMROOT",
    "SystemRoot",
    "WINDIR",
    "TEMP",
    "TMP",
    "PATHEXT",
    "COMSPEC",
];

fn resolve_program(dir: &Path, program: &str) -> PathBuf {
    let p = Path::new(program);
    // "./run.sh" or "bin/tool" are relative to the package folder; bare names go through PATH.
    if p.is_relative() && p.components().count() > 1 {
        with_pathext(dir.join(p))
    } else {
        p.to_path_buf()
    }
}

/// Windows: a program of the package named without its extension (`./run`) is found as
/// `cmd.exe` would find it, trying each extension of `PATHEXT` in turn (`run.com`, `run.exe`,
/// `run.bat`, `run.cmd` by default). A name found as written, or with an extension, stays.
#[cfg(windows)]
fn with_pathext(path: PathBuf) -> PathBuf {
    if path.extension().is_some() || path.is_file() {
        return path;
    }
    let exts = std::env::var("PATHEXT").unwrap_or_else(|_| ".COM;.EXE;.BAT;.CMD".to_string());
    for ext in exts.split(';').filter(|e| e.starts_with('.')) {
        let mut candidate = path.clone().into_os_string();
        candidate.push(ext);
        let candidate = PathBuf::from(candidate);
        if candidate.is_file() {
            return candidate;
        }
    }
    path
}

#[cfg(not(windows))]
fn with_pathext(path: PathBuf) -> PathBuf {
    path
}

/// A command for a function's process: run in its package folder, with a clean environment
/// (only [`INHERITED`] variables of the worker, then `vars`), in its own process group (Unix)
/// or process group and job (Windows), killed if dropped.
pub(crate) fn command(command: &[String], dir: &Path, vars: &[(String, String)]) -> Command {
    let mut cmd = Command::new(resolve_program(dir, &command[0]));
    cmd.args(&command[1..])
        .current_dir(dir)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for k in INHERITED {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    {
        // A worker that dies (even by SIGKILL) takes its function processes with it: a warm
        // handler that never reads its stdin (a custom handler) would otherwise live on.
        let worker = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (prctl, getppid), allocating nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The worker died before the line above: nobody would kill this process.
                if libc::getppid() as u32 != worker {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(windows)]
    {
        // CREATE_NEW_PROCESS_GROUP: the tree can be signalled and killed apart from the worker.
        cmd.creation_flags(0x0000_0200);
    }
    cmd
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    command_line: &[String],
    dir: &Path,
    input: &[u8],
    timeout: Duration,
    env: &InvocationEnv<'_>,
    settings: &[(String, String)],
    attempt: i32,
    limits: &Limits,
    watch: Watch,
) -> RunOutput {
    let Watch { live, cancel } = watch;
    let mut vars: Vec<(String, String)> = settings.to_vec();
    vars.push(("WARREN_INVOCATION_ID".into(), env.id.to_string()));
    vars.push(("WARREN_FUNCTION".into(), env.function.to_string()));
    vars.push(("WARREN_VERSION".into(), env.version.to_string()));
    vars.push(("WARREN_ATTEMPT".into(), env.attempt.to_string()));
    vars.push(("WARREN_HEADERS".into(), env.headers_json().to_string()));
    let command = command_line;
    let mut cmd = self::command(command, dir, &vars);

    let mut child = match cmd.spawn() {
        Ok(c) => {
            crate::tree::contain(&c);
            c
        }
        Err(e) => {
            return RunOutput {
                status: Status::Failed,
                result: None,
                error: Some(format!("could not start {:?} in {}: {e}", command[0], dir.display())),
                logs: Vec::new(),
            }
        }
    };

    let mut stdin = child.stdin.take();
    let input = input.to_vec();
    let writer = tokio::spawn(async move {
        if let Some(s) = stdin.as_mut() {
            // A function that does not read its input closes the pipe early: not an error.
            let _ = s.write_all(&input).await;
            let _ = s.shutdown().await;
        }
    });
    let stdout = child.stdout.take().expect("stdout piped");
    let max_out = limits.max_output_bytes;
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        // One byte over the cap tells "exactly at the cap" from "over it".
        let n = stdout.take(max_out as u64 + 1).read_to_end(&mut buf).await;
        (n, buf)
    });
    let stderr = child.stderr.take().expect("stderr piped");
    let lim = *limits;
    let logger = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr);
        let mut logs = Vec::new();
        let mut dropped = 0usize;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            // At most one byte over the line limit is kept (so a line without a newline cannot
            // fill the worker's memory); the rest of a longer line is read and dropped.
            match (&mut lines).take(lim.max_log_line_bytes as u64 + 1).read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if !buf.ends_with(b"\n") && buf.len() > lim.max_log_line_bytes {
                let mut rest = Vec::new();
                loop {
                    rest.clear();
                    match (&mut lines).take(64 << 10).read_until(b'\n', &mut rest).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) if rest.ends_with(b"\n") => break,
                        Ok(_) => {}
                    }
                }
            }
            if logs.len() >= lim.max_log_lines {
                dropped += 1;
                continue;
            }
            let mut line = storable(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string());
            if line.len() > lim.max_log_line_bytes {
                let mut cut = lim.max_log_line_bytes;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
                line.push_str(" [line truncated]");
            }
            let l = LogLine { attempt, seq: logs.len() as i32, ts_ms: now_ms(), line };
            if let Some(tx) = &live {
                // Read while it runs when there is room; the outcome brings every line anyway.
                let _ = tx.try_send(l.clone());
            }
            logs.push(l);
        }
        if dropped > 0 {
            logs.push(LogLine {
                attempt,
                seq: logs.len() as i32,
                ts_ms: now_ms(),
                line: format!("[warren: {dropped} more log lines dropped; the limit is {}]", lim.max_log_lines),
            });
        }
        logs
    });

    let pid = child.id();
    let cancelled = async {
        match &cancel {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let waited = tokio::select! {
        w = tokio::time::timeout(timeout, child.wait()) => w.map_err(|_| false),
        _ = cancelled => Err(true),
    };
    let mut stopped = false;
    let exit = match waited {
        Ok(r) => Some(r),
        Err(cancelled) => {
            stopped = cancelled;
            kill_tree(&mut child).await;
            None
        }
    };
    // The readers end when every holder of the pipes is gone. A grandchild that left the
    // process group could keep them open: do not wait on it forever.
    let grace = Duration::from_secs(2);
    writer.abort();
    if let Some(pid) = pid {
        crate::tree::release(pid);
    }
    let out = tokio::time::timeout(grace, reader).await;
    let logs = tokio::time::timeout(grace, logger).await.ok().and_then(|r| r.ok()).unwrap_or_default();

    let fail = |status, error: String, logs| RunOutput { status, result: None, error: Some(error), logs };
    let overflow = matches!(&out, Ok(Ok((_, buf))) if buf.len() > max_out);
    if overflow && exit.is_some() {
        // Reading stopped at the cap, so the process may also have died of a broken pipe:
        // the cause to report is the size.
        return fail(Status::Failed, format!("the function's output is over the limit of {max_out} bytes"), logs);
    }
    match exit {
        None if stopped => fail(Status::Cancelled, "cancelled while it ran; the process tree was killed".into(), logs),
        None => fail(
            Status::TimedOut,
            format!("timed out after {} s; the process tree was killed", timeout.as_secs_f64()),
            logs,
        ),
        Some(Err(e)) => fail(Status::Failed, format!("could not wait for the process: {e}"), logs),
        Some(Ok(code)) if !code.success() => {
            let what = match code.code() {
                Some(c) => format!("exited with code {c}"),
                None => "was killed by a signal".to_string(),
            };
            let last = logs.iter().rev().find(|l| !l.line.trim().is_empty()).map(|l| l.line.clone());
            let error = match last {
                Some(l) => format!("the function {what}: {l}"),
                None => format!("the function {what}"),
            };
            fail(Status::Failed, error, logs)
        }
        Some(Ok(_)) => match out {
            Ok(Ok((Ok(_), buf))) if buf.len() > max_out => {
                fail(Status::Failed, format!("the function's output is over the limit of {max_out} bytes"), logs)
            }
            Ok(Ok((Ok(_), buf))) => RunOutput { status: Status::Succeeded, result: Some(buf), error: None, logs },
            _ => fail(Status::Failed, "could not read the function's output".to_string(), logs),
        },
    }
}

/// Kills the process and everything it started.
pub(crate) async fn kill_tree(child: &mut Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // The child leads its own process group (process_group(0) above); -pid is the group.
        // SAFETY: kill(2) with a group id and a signal number has no memory effects.
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
        }
    }
    #[cfg(windows)]
    if let Some(pid) = child.id() {
        // The job object takes the whole tree; taskkill /T walks the tree for a child that got
        // no job.
        if !crate::tree::kill(pid) {
            let _ = Command::new("taskkill").args(["/F", "/T", "/PID", &pid.to_string()]).output().await;
        }
    }
    let _ = child.kill().await;
    let _ = child.wait().await;
}

/// What only Windows can show: run as Windows test executables under Wine by `scripts/windows`.
#[cfg(all(test, windows))]
mod windows_tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    fn env<'a>() -> InvocationEnv<'a> {
        InvocationEnv {
            id: "0190d1a4-0000-7000-8000-000000000000",
            function: "f",
            version: 1,
            attempt: 1,
            headers: &[],
        }
    }

    async fn run_in(dir: &Path, command: &[&str], vars: &[(&str, &str)], timeout: Duration) -> RunOutput {
        let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        run(&command, dir, b"", timeout, &env(), &vars, 1, &Limits::default(), Watch::default()).await
    }

    /// Not a test of its own: the process tree `a_timed_out_tree_is_killed_whole` starts. With
    /// `WARREN_TREE_HELPER=spawn` it starts a child of itself and says its pid; both sleep.
    #[test]
    #[ignore = "started by a_timed_out_tree_is_killed_whole"]
    fn tree_helper() {
        match std::env::var("WARREN_TREE_HELPER").as_deref() {
            Ok("spawn") => {
                let me = std::env::current_exe().unwrap();
                let child = std::process::Command::new(me)
                    .args(std::env::args().skip(1))
                    .env("WARREN_TREE_HELPER", "sleep")
                    .spawn()
                    .unwrap();
                eprintln!("child {}", child.id());
                std::thread::sleep(Duration::from_secs(60));
            }
            Ok("sleep") => std::thread::sleep(Duration::from_secs(60)),
            _ => {}
        }
    }

    /// Whether a process is still running.
    fn alive(pid: u32) -> bool {
        use windows_sys::Win32::Foundation::CloseHandle;
        use windows_sys::Win32::System::Threading::{
            GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
        };
        const STILL_ACTIVE: u32 = 259;
        // SAFETY: a handle opened here and closed once; the exit code is written into a local.
        unsafe {
            let h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
            if h.is_null() {
                return false;
            }
            let mut code = 0u32;
            let ok = GetExitCodeProcess(h, &mut code);
            CloseHandle(h);
            ok != 0 && code == STILL_ACTIVE
        }
    }

    #[tokio::test]
    async fn a_timed_out_tree_is_killed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::env::current_exe().unwrap();
        let me = me.to_str().unwrap();
        let args =
            [me, "--exact", "process::windows_tests::tree_helper", "--ignored", "--nocapture", "--test-threads=1"];
        let out = run_in(dir.path(), &args, &[("WARREN_TREE_HELPER", "spawn")], Duration::from_secs(3)).await;
        assert_eq!(out.status, Status::TimedOut, "{out:?}");
        let pid: u32 = out
            .logs
            .iter()
            .find_map(|l| l.line.strip_prefix("child ").and_then(|p| p.trim().parse().ok()))
            .unwrap_or_else(|| panic!("the helper said its child's pid: {:?}", out.logs));
        // The job object takes the grandchild with the child; give the kill a moment to land.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!alive(pid), "the grandchild {pid} outlived its tree's kill");
    }

    #[tokio::test]
    async fn the_environment_is_clean_but_for_what_windows_needs() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("WARREN_TEST_WORKER_ONLY", "leak");
        let out = run_in(dir.path(), &["cmd", "/c", "set"], &[("GREETING", "hi")], Duration::from_secs(20)).await;
        assert_eq!(out.status, Status::Succeeded, "{out:?}");
        let text = String::from_utf8_lossy(out.result.as_deref().unwrap_or_default()).to_uppercase();
        for wanted in ["SYSTEMROOT=", "WINDIR=", "COMSPEC=", "PATHEXT=", "GREETING=HI", "WARREN_FUNCTION=F"] {
            assert!(text.contains(wanted), "{wanted} missing from the function's environment:\n{text}");
        }
        assert!(!text.contains("WARREN_TEST_WORKER_ONLY"), "the worker's own environment leaked:\n{text}");
    }

    #[tokio::test]
    async fn a_package_command_without_extension_is_found_through_pathext() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("greet.cmd"), "@echo hello %1\r\n").unwrap();
        let out = run_in(dir.path(), &["./greet", "world"], &[], Duration::from_secs(20)).await;
        assert_eq!(out.status, Status::Succeeded, "{out:?}");
        assert_eq!(String::from_utf8_lossy(out.result.as_deref().unwrap_or_default()).trim(), "hello world");
    }
}

/// `line` as a store can hold it: PostgreSQL's text refuses the NUL character (a statement
/// with one fails, and with it every outcome of its group commit), so each becomes U+FFFD, as
/// bytes that are not UTF-8 already do.
pub(crate) fn storable(line: String) -> String {
    if line.contains('\0') {
        line.replace('\0', "\u{FFFD}")
    } else {
        line
    }
}
