//! Warm (persistent) handlers: `mode = "persistent"` functions keep a small pool of handler
//! processes per version, each serving many invocations over the handler protocol.
//!
//! ## The protocol (language-neutral, over the handler's stdin/stdout)
//!
//! Every frame is one line of JSON (a header, ending in `\n`; a `\r` before it is tolerated),
//! followed by exactly `len` raw bytes when the header has a `len`.
//!
//! - handler → worker, once at start: `{"type":"ready"}`, or `{"type":"ready","cancel":true}` from
//!   a handler that takes cancel frames
//! - worker → handler: `{"type":"invoke","id":"<uuid>","function":"f","version":3,"attempt":1,"timeout_ms":30000,"len":N}` + N input bytes
//! - handler → worker, any number, before the answer: `{"type":"log","id":"<uuid>","line":"text"}`
//! - handler → worker, the answer: `{"type":"result","id":"<uuid>","len":N}` + N result bytes,
//!   or `{"type":"error","id":"<uuid>","message":"why"}`
//! - worker → handler, to one that said it takes them: `{"type":"cancel","id":"<uuid>"}`: the
//!   invocation was cancelled; the handler should stop it and answer it (any answer; it is not
//!   stored over the cancel)
//!
//! Answers may come in any order when a handler takes several invocations at once
//! (`handler.concurrency`). Nothing else may be written to stdout; stderr lines are kept as log
//! lines of the invocation in flight when there is exactly one, else as worker logs. The
//! handler's stdin closes when it should exit.
//!
//! A handler that exits, breaks the protocol, holds an invocation past its timeout, or has not
//! answered a cancelled one within `handler.cancel_grace_secs` is killed (with its process tree)
//! and replaced on the next invocation; the invocations it held end `failed` (or `timed_out` for
//! the one that timed out, `cancelled` for the one cancelled). A custom handler (HTTP) has no
//! cancel frame: its cancelled call has the grace period to end, then the handler is killed.
//! Handlers are recycled after `handler.recycle_after` invocations, and shut down when a newer
//! version of their function arrives or the worker stops.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use warren_wire::invocation::{LogLine, Status};
use warren_wire::manifest::Manifest;
use warren_wire::time::now_ms;

use crate::http;
use crate::process::{self, Limits, RunOutput};

/// How long a custom handler's broken connection waits for the handler's exit to be seen.
const EXIT_SEEN_WITHIN: Duration = Duration::from_secs(1);

/// Longest header line accepted from a handler.
const MAX_HEADER: usize = 64 << 10;

#[derive(Serialize)]
struct InvokeFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    function: &'a str,
    version: i64,
    attempt: u32,
    timeout_ms: u64,
    len: usize,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    headers: serde_json::Value,
}

#[derive(Deserialize)]
struct HandlerFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    line: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    len: Option<usize>,
    /// On `ready`: the handler takes `cancel` frames.
    #[serde(default)]
    cancel: bool,
}

/// What an invocation sends its handler.
pub(crate) enum Call<'a> {
    /// The input, in an `invoke` frame.
    Frame(&'a [u8]),
    /// A request to a custom handler's port.
    Http(http::Request),
}

/// A handler's answer to a [`Call`].
pub(crate) enum Answer {
    Bytes(Vec<u8>),
    Http(http::Response),
}

/// How a [`Call`] went, with the log lines of the invocation.
pub(crate) struct Outcome {
    pub answer: Result<Answer, (Status, String)>,
    pub logs: Vec<LogLine>,
}

enum Reply {
    Result(Vec<u8>),
    Http(http::Response),
    Error(String),
    /// The handler died or was killed while holding the invocation.
    Lost(String),
}

struct Pending {
    tx: oneshot::Sender<(Reply, Vec<LogLine>)>,
    logs: Vec<LogLine>,
    attempt: i32,
}

/// One handler process.
struct Proc {
    pid: Option<u32>,
    /// An Azure Functions custom handler's port: it is called over HTTP, not framed stdio.
    port: Option<u16>,
    to_stdin: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    pending: Mutex<HashMap<String, Pending>>,
    in_flight: AtomicUsize,
    served: AtomicU64,
    dead: AtomicBool,
    retired: AtomicBool,
    /// The handler said (in its `ready` frame) that it takes `cancel` frames.
    takes_cancel: AtomicBool,
    kill: Arc<Notify>,
    /// The handler's stdout and stderr as their line readers see them (custom handlers only).
    outputs: Vec<Output>,
}

/// One output pipe of a handler: whether its reader has attributed all it read, and (on
/// Unix) a duplicate of the pipe's read end, to ask how many bytes wait unread in it.
struct Output {
    idle: Arc<AtomicBool>,
    #[cfg(unix)]
    fd: Option<std::os::fd::OwnedFd>,
}

impl Output {
    #[cfg(unix)]
    fn new(pipe: &impl std::os::fd::AsFd) -> Output {
        Output { idle: Arc::new(AtomicBool::new(true)), fd: pipe.as_fd().try_clone_to_owned().ok() }
    }

    #[cfg(not(unix))]
    fn new<T>(_pipe: &T) -> Output {
        Output { idle: Arc::new(AtomicBool::new(true)) }
    }

    /// Everything written to the pipe so far has been read and attributed.
    fn settled(&self) -> bool {
        if !self.idle.load(Ordering::SeqCst) {
            return false;
        }
        #[cfg(unix)]
        if let Some(fd) = &self.fd {
            use std::os::fd::AsRawFd;
            let mut unread: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int through the pointer, on a descriptor we own.
            let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut unread) };
            return r != 0 || unread == 0;
        }
        true
    }
}

/// How long an answered custom-handler invocation waits for the handler's output lines written
/// before its answer to be read and attributed to it.
const OUTPUT_SETTLE_MAX: Duration = Duration::from_millis(50);

impl Proc {
    /// Waits (at most [`OUTPUT_SETTLE_MAX`]) until what the handler wrote on stdout and stderr
    /// so far has been read: a line printed just before the answer is then the invocation's.
    async fn settle_output(&self) {
        let deadline = tokio::time::Instant::now() + OUTPUT_SETTLE_MAX;
        let settled = || self.outputs.iter().all(Output::settled);
        while tokio::time::Instant::now() < deadline {
            if settled() {
                // Once more after a yield: a reader that has just emptied the pipe marks
                // itself busy a moment after the pipe reads empty.
                tokio::task::yield_now().await;
                if settled() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends every invocation this handler holds with `why`, and has it killed.
    fn fail_all(&self, why: &str) {
        self.dead.store(true, Ordering::SeqCst);
        let drained: Vec<Pending> = self.lock_pending().drain().map(|(_, p)| p).collect();
        for p in drained {
            let _ = p.tx.send((Reply::Lost(why.to_string()), p.logs));
        }
        self.kill.notify_one();
    }

    /// Closes stdin: the handler should exit once it has answered what it holds; if it has
    /// not after 10 s, it is killed. A custom handler, called only when it holds nothing, is
    /// killed at once.
    fn close(&self) {
        if self.to_stdin.lock().unwrap_or_else(|p| p.into_inner()).take().is_some() {
            // A custom handler does not read its stdin: nothing would tell it to go.
            if self.port.is_some() {
                self.kill.notify_one();
                return;
            }
            let kill = self.kill.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                kill.notify_one();
            });
        }
    }
}

/// The warm handlers of one function version.
pub struct Pool {
    manifest: Manifest,
    dir: PathBuf,
    vars: Vec<(String, String)>,
    limits: Limits,
    procs: Mutex<Vec<Arc<Proc>>>,
    starting: AtomicUsize,
    slots: Arc<tokio::sync::Semaphore>,
    changed: Notify,
    closed: AtomicBool,
}

impl Pool {
    pub fn new(manifest: Manifest, dir: PathBuf, vars: Vec<(String, String)>, limits: Limits) -> Arc<Pool> {
        let slots = (manifest.handler.processes * manifest.handler.concurrency) as usize;
        Arc::new(Pool {
            manifest,
            dir,
            vars,
            limits,
            procs: Mutex::new(Vec::new()),
            starting: AtomicUsize::new(0),
            slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            changed: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    fn lock_procs(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Proc>>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shuts every handler down (after what they hold), and refuses new invocations.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for p in self.lock_procs().drain(..) {
            p.retired.store(true, Ordering::SeqCst);
            // A busy handler finishes what it holds (within its timeouts); the last answer
            // closes it (see `invoke`).
            if p.in_flight.load(Ordering::SeqCst) == 0 {
                p.close();
            }
        }
        self.slots.close();
    }

    /// Runs one invocation on a warm handler of the framed protocol.
    pub async fn invoke(
        self: &Arc<Self>,
        env: &process::InvocationEnv<'_>,
        input: &[u8],
        timeout: Duration,
        log_attempt: i32,
        cancel: Option<&CancellationToken>,
    ) -> RunOutput {
        let out = self.call(env, Call::Frame(input), timeout, log_attempt, cancel).await;
        match out.answer {
            Ok(Answer::Bytes(bytes)) => {
                RunOutput { status: Status::Succeeded, result: Some(bytes), error: None, logs: out.logs }
            }
            Ok(Answer::Http(_)) => unreachable!("a framed call is answered by a frame"),
            Err((status, error)) => RunOutput { status, result: None, error: Some(error), logs: out.logs },
        }
    }

    /// Runs one invocation on a warm handler: a frame on its stdin, or an HTTP request to its
    /// port (custom handlers). Once `cancel` fires, the call has `handler.cancel_grace_secs` to
    /// end (a handler that takes cancel frames is sent one), then the handler is killed; either
    /// way the outcome is `cancelled`.
    pub(crate) async fn call(
        self: &Arc<Self>,
        env: &process::InvocationEnv<'_>,
        input: Call<'_>,
        timeout: Duration,
        log_attempt: i32,
        cancel: Option<&CancellationToken>,
    ) -> Outcome {
        let grace = Duration::from_secs(self.manifest.handler.cancel_grace_secs);
        let id = env.id;
        let failed = |status, error: String, logs| Outcome { answer: Err((status, error)), logs };
        let unsent = || failed(Status::Cancelled, "cancelled before its handler was given it".into(), Vec::new());
        let is_cancelled = || cancel.is_some_and(|c| c.is_cancelled());
        let slot = async {
            match cancel {
                Some(c) => tokio::select! {
                    slot = self.slots.clone().acquire_owned() => Some(slot),
                    _ = c.cancelled() => None,
                },
                None => Some(self.slots.clone().acquire_owned().await),
            }
        };
        let _slot = match slot.await {
            None => return unsent(),
            Some(Ok(slot)) => slot,
            Some(Err(_)) => {
                return failed(
                    Status::Failed,
                    "the worker is shutting down this function's handlers".into(),
                    Vec::new(),
                )
            }
        };
        // Not raced with the cancel: `pick` may be starting a handler, which must complete.
        let proc = match self.pick().await {
            Ok(p) => p,
            Err(e) => return failed(Status::Failed, e, Vec::new()),
        };
        if is_cancelled() {
            self.give_back(&proc);
            return unsent();
        }
        let (tx, mut rx) = oneshot::channel();
        proc.lock_pending().insert(id.to_string(), Pending { tx, logs: Vec::new(), attempt: log_attempt });
        // `fail_all` marks the process dead before it drains `pending`: if it died in between,
        // this entry may never be answered.
        if proc.dead.load(Ordering::SeqCst) {
            proc.lock_pending().remove(id);
            self.give_back(&proc);
            return failed(Status::Failed, "the handler died as it was given the invocation".into(), Vec::new());
        }
        let answered = match (input, proc.port) {
            (Call::Http(request), Some(port)) => {
                // The answer is the response; a handler that dies meanwhile answers through `rx`.
                let limit = self.limits.max_output_bytes;
                let exchange = async {
                    let response = tokio::select! {
                        response = http::send(port, request, limit) => response,
                        lost = &mut rx => return lost,
                    };
                    let failed = match response {
                        Ok(r) => {
                            proc.settle_output().await;
                            let logs = proc.lock_pending().remove(id).map(|p| p.logs).unwrap_or_default();
                            return Ok((Reply::Http(r), logs));
                        }
                        Err(e) => e,
                    };
                    // A connection cut short is most often the handler dying: its exit, seen
                    // in a moment, says more than the broken connection.
                    if let Ok(lost) = tokio::time::timeout(EXIT_SEEN_WITHIN, &mut rx).await {
                        return lost;
                    }
                    let logs = proc.lock_pending().remove(id).map(|p| p.logs).unwrap_or_default();
                    Ok((
                        match failed {
                            // Nothing listens any more: replace the handler.
                            http::SendError::Connect(e) => {
                                Reply::Lost(format!("the custom handler did not answer: {e}"))
                            }
                            // A live handler botched this one exchange: fail it alone.
                            http::SendError::Exchange(e) => Reply::Error(format!("no usable answer: {e}")),
                        },
                        logs,
                    ))
                };
                // HTTP has no cancel frame: the call is given the grace period as it is.
                tokio::time::timeout(timeout, unless_cancelled(exchange, cancel, grace, || {})).await
            }
            (Call::Frame(input), None) => {
                let header = InvokeFrame {
                    kind: "invoke",
                    id,
                    function: env.function,
                    version: env.version,
                    attempt: env.attempt,
                    timeout_ms: timeout.as_millis() as u64,
                    len: input.len(),
                    headers: if env.headers.is_empty() { serde_json::Value::Null } else { env.headers_json() },
                };
                let mut frame = serde_json::to_vec(&header).expect("frame serialises");
                frame.push(b'\n');
                frame.extend_from_slice(input);
                let sender = proc.to_stdin.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let sent = match sender {
                    Some(s) => s.send(frame).await.is_ok(),
                    None => false,
                };
                if !sent {
                    proc.lock_pending().remove(id);
                    self.give_back(&proc);
                    return failed(
                        Status::Failed,
                        "the handler stopped before it took the invocation".into(),
                        Vec::new(),
                    );
                }
                let tell = || {
                    if !proc.takes_cancel.load(Ordering::SeqCst) {
                        return;
                    }
                    let frame = format!("{{\"type\":\"cancel\",\"id\":\"{id}\"}}\n").into_bytes();
                    // A full pipe (the handler reads nothing) is met by the kill after the grace.
                    if let Some(s) = proc.to_stdin.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                        let _ = s.try_send(frame);
                    }
                };
                tokio::time::timeout(timeout, unless_cancelled(rx, cancel, grace, tell)).await
            }
            _ => {
                proc.lock_pending().remove(id);
                self.give_back(&proc);
                return failed(Status::Failed, "this handler does not speak that protocol".into(), Vec::new());
            }
        };
        let out = match answered {
            Ok(Waited::Ended(Ok((Reply::Result(bytes), logs)))) => Outcome { answer: Ok(Answer::Bytes(bytes)), logs },
            Ok(Waited::Ended(Ok((Reply::Http(r), logs)))) => Outcome { answer: Ok(Answer::Http(r)), logs },
            Ok(Waited::Ended(Ok((Reply::Error(msg), logs)))) => {
                failed(Status::Failed, format!("the handler reported: {msg}"), logs)
            }
            Ok(Waited::Ended(Ok((Reply::Lost(why), logs)))) => {
                // A custom handler that cannot be talked to is replaced, like one that died.
                if proc.port.is_some() {
                    proc.fail_all(&why);
                }
                failed(Status::Failed, why, logs)
            }
            Ok(Waited::Ended(Err(_))) => failed(Status::Failed, "the handler went away".into(), Vec::new()),
            Ok(Waited::CancelledEnded(ended)) => {
                let logs = match ended {
                    Ok((Reply::Lost(why), logs)) => {
                        if proc.port.is_some() {
                            proc.fail_all(&why);
                        }
                        logs
                    }
                    Ok((_, logs)) => logs,
                    Err(_) => Vec::new(),
                };
                failed(Status::Cancelled, "cancelled while it ran; the handler ended it".into(), logs)
            }
            Ok(Waited::CancelledHeld) => {
                let why = format!(
                    "the handler was killed: invocation {id} was cancelled and not ended within {} s",
                    grace.as_secs()
                );
                let logs = self.kill_over(&proc, id, &why);
                failed(
                    Status::Cancelled,
                    format!(
                        "cancelled while it ran; the handler did not end it within {} s and was killed with its process tree",
                        grace.as_secs()
                    ),
                    logs,
                )
            }
            Err(_) => {
                let logs =
                    self.kill_over(&proc, id, &format!("the handler was killed: invocation {id} timed out on it"));
                // Cancelled and then out of time within the grace period: a cancel, not a
                // failure to retry.
                if is_cancelled() {
                    failed(
                        Status::Cancelled,
                        "cancelled while it ran; its timeout came within the grace period and the handler was killed"
                            .into(),
                        logs,
                    )
                } else {
                    failed(
                        Status::TimedOut,
                        format!(
                            "timed out after {} s; the handler and its process tree were killed",
                            timeout.as_secs_f64()
                        ),
                        logs,
                    )
                }
            }
        };
        let served = proc.served.fetch_add(1, Ordering::SeqCst) + 1;
        let left = proc.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        if served >= self.manifest.handler.recycle_after || proc.dead.load(Ordering::SeqCst) {
            self.retire(&proc);
        } else if left == 0 && proc.retired.load(Ordering::SeqCst) {
            proc.close();
        }
        self.changed.notify_waiters();
        out
    }

    /// A call given back unanswered (not sent, or the handler could not take it): its slot is
    /// freed, and a handler retired meanwhile closes with its last call, as after an answer.
    fn give_back(&self, proc: &Proc) {
        let left = proc.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 && proc.retired.load(Ordering::SeqCst) {
            proc.close();
        }
        self.changed.notify_waiters();
    }

    /// Kills a handler (with its process tree) over invocation `id`, which it held too long:
    /// what else it held ends with `why`, and it is replaced. Answers `id`'s log lines.
    fn kill_over(&self, proc: &Arc<Proc>, id: &str, why: &str) -> Vec<LogLine> {
        let logs = proc.lock_pending().remove(id).map(|p| p.logs).unwrap_or_default();
        proc.fail_all(why);
        self.retire(proc);
        logs
    }

    /// Takes a handler out of service: no new invocations; it exits once it has answered.
    fn retire(&self, proc: &Arc<Proc>) {
        proc.retired.store(true, Ordering::SeqCst);
        self.lock_procs().retain(|p| !Arc::ptr_eq(p, proc));
        if proc.in_flight.load(Ordering::SeqCst) == 0 {
            proc.close();
        }
        self.changed.notify_waiters();
    }

    /// A live handler with room, starting one if the pool is not full. The caller holds a slot,
    /// so one of the two is always possible, at worst after a start in progress completes.
    async fn pick(self: &Arc<Self>) -> Result<Arc<Proc>, String> {
        let conc = self.manifest.handler.concurrency as usize;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let start_one = {
                let mut procs = self.lock_procs();
                procs.retain(|p| !p.dead.load(Ordering::SeqCst));
                if let Some(p) = procs.iter().min_by_key(|p| p.in_flight.load(Ordering::SeqCst)) {
                    if p.in_flight.load(Ordering::SeqCst) < conc {
                        p.in_flight.fetch_add(1, Ordering::SeqCst);
                        return Ok(p.clone());
                    }
                }
                let room =
                    procs.len() + self.starting.load(Ordering::SeqCst) < self.manifest.handler.processes as usize;
                if room {
                    self.starting.fetch_add(1, Ordering::SeqCst);
                }
                room
            };
            if start_one {
                let started = self.start().await;
                // Counted out of `starting` and into the list in one step, under the lock the
                // room check takes (a look in between would see it in neither and start one too
                // many), and only while the pool is open (`close` sets `closed` before it
                // drains the list, so a handler added here is either drained or refused).
                let joined = {
                    let mut procs = self.lock_procs();
                    self.starting.fetch_sub(1, Ordering::SeqCst);
                    match started {
                        Ok(proc) if !self.closed.load(Ordering::SeqCst) => {
                            proc.in_flight.fetch_add(1, Ordering::SeqCst);
                            procs.push(proc.clone());
                            Ok(proc)
                        }
                        Ok(proc) => {
                            proc.close();
                            Err("the function's handlers are shutting down".into())
                        }
                        Err(e) => Err(e),
                    }
                };
                // Whatever happened, those waiting for this start must look again.
                self.changed.notify_waiters();
                return joined;
            }
            changed.await;
        }
    }

    /// Starts one handler and waits for its `ready` frame.
    async fn start(self: &Arc<Self>) -> Result<Arc<Proc>, String> {
        let mut vars = self.vars.clone();
        vars.push(("WARREN_FUNCTION".into(), self.manifest.name.clone()));
        vars.push(("WARREN_HANDLER".into(), "1".into()));
        let mut command = self.manifest.command.clone();
        let mut dir = self.dir.clone();
        let port = match &self.manifest.azure {
            Some(az) => {
                // As the Azure Functions host starts a custom handler: its program found in the
                // app's root first, run in its working folder, told its port.
                let port = http::free_port().map_err(|e| format!("no free port for the custom handler: {e}"))?;
                for name in ["FUNCTIONS_CUSTOMHANDLER_PORT", "FUNCTIONS_HTTPWORKER_PORT"] {
                    vars.push((name.into(), port.to_string()));
                }
                command[0] = http::app_program(&self.dir, &command[0]);
                if let Some(w) = &az.working_directory {
                    dir = dir.join(w);
                }
                Some(port)
            }
            None => None,
        };
        let mut child = process::command(&command, &dir, &vars)
            .spawn()
            .map_err(|e| format!("could not start the handler {:?}: {e}", self.manifest.command[0]))?;
        crate::tree::contain(&child);
        let mut stdin = child.stdin.take().expect("stdin piped");
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        let outputs = match port {
            Some(_) => vec![Output::new(&stdout), Output::new(&stderr)],
            None => vec![Output::new(&stderr)],
        };
        let idle: Vec<Arc<AtomicBool>> = outputs.iter().map(|o| o.idle.clone()).collect();
        let proc = Arc::new(Proc {
            pid: child.id(),
            port,
            to_stdin: Mutex::new(Some(tx)),
            pending: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            takes_cancel: AtomicBool::new(false),
            kill: Arc::new(Notify::new()),
            outputs,
        });
        // Writer: frames in order; closing the channel closes stdin.
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if stdin.write_all(&frame).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        match port {
            // A custom handler's stdout is log lines like its stderr; it is ready once its port
            // takes a connection.
            Some(port) => {
                tokio::spawn(read_lines(proc.clone(), stdout, idle[0].clone(), self.limits));
                let p = proc.clone();
                tokio::spawn(http::wait_listening(port, ready_tx, move || p.dead.load(Ordering::SeqCst)));
            }
            None => drop(tokio::spawn(read_frames(proc.clone(), stdout, ready_tx, self.limits))),
        }
        tokio::spawn(read_lines(proc.clone(), stderr, idle[idle.len() - 1].clone(), self.limits));
        // Owner of the child: kills it when asked, reaps it when it exits, then fails whatever
        // it still held.
        {
            let proc = proc.clone();
            let pool = Arc::downgrade(self);
            tokio::spawn(async move {
                let status = tokio::select! {
                    s = child.wait() => s.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    _ = proc.kill.notified() => {
                        process::kill_tree(&mut child).await;
                        "killed".to_string()
                    }
                };
                if let Some(pid) = proc.pid {
                    crate::tree::release(pid);
                }
                proc.fail_all(&format!("the handler process exited ({status}) while holding the invocation"));
                if let Some(pool) = pool.upgrade() {
                    pool.lock_procs().retain(|p| !Arc::ptr_eq(p, &proc));
                    pool.changed.notify_waiters();
                }
            });
        }
        let limit = Duration::from_secs(self.manifest.handler.start_timeout_secs);
        match tokio::time::timeout(limit, ready_rx).await {
            Ok(Ok(())) => {
                tracing::info!(function = %self.manifest.name, pid = ?proc.pid, "warm handler ready");
                Ok(proc)
            }
            Ok(Err(_)) => {
                proc.fail_all("the handler exited before it was ready");
                Err(match port {
                    Some(port) => format!("the custom handler exited before it listened on port {port}"),
                    None => {
                        "the handler exited before saying it was ready (a {\"type\":\"ready\"} line on stdout)".into()
                    }
                })
            }
            Err(_) => {
                proc.fail_all("the handler was not ready in time");
                Err(match port {
                    Some(port) => format!(
                        "the custom handler did not listen on port {port} (FUNCTIONS_CUSTOMHANDLER_PORT) within {} s; it was killed",
                        limit.as_secs()
                    ),
                    None => format!("the handler did not say it was ready within {} s", limit.as_secs()),
                })
            }
        }
    }
}

/// How a call's wait for its answer ended.
enum Waited<T> {
    /// It ended (answered, or the handler was lost) with no cancel.
    Ended(T),
    /// It was cancelled, and ended within the grace period.
    CancelledEnded(T),
    /// It was cancelled and had not ended when the grace period was over.
    CancelledHeld,
}

/// Waits for `answer`; once `cancel` fires, calls `tell` (to pass the cancel on to the handler)
/// and waits at most `grace` more.
async fn unless_cancelled<T>(
    answer: impl std::future::Future<Output = T>,
    cancel: Option<&CancellationToken>,
    grace: Duration,
    tell: impl FnOnce(),
) -> Waited<T> {
    let mut answer = std::pin::pin!(answer);
    let Some(cancel) = cancel else { return Waited::Ended(answer.await) };
    tokio::select! {
        out = answer.as_mut() => return Waited::Ended(out),
        _ = cancel.cancelled() => {}
    }
    tell();
    match tokio::time::timeout(grace, answer).await {
        Ok(out) => Waited::CancelledEnded(out),
        Err(_) => Waited::CancelledHeld,
    }
}

fn protocol_error(proc: &Proc, what: String) {
    tracing::warn!(pid = ?proc.pid, "handler broke the protocol: {what}");
    proc.fail_all(&format!("the handler broke the protocol: {what}"));
}

async fn read_frames(proc: Arc<Proc>, stdout: tokio::process::ChildStdout, ready: oneshot::Sender<()>, limits: Limits) {
    let mut ready = Some(ready);
    let mut r = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut r).take(MAX_HEADER as u64 + 1).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return, // EOF: the owner task sees the exit and fails what is held.
            Ok(_) => {}
        }
        if line.len() > MAX_HEADER || line.last() != Some(&b'\n') {
            return protocol_error(&proc, "a header line over 64 KiB, or cut short".into());
        }
        let text = String::from_utf8_lossy(&line);
        let frame: HandlerFrame = match serde_json::from_str(text.trim_end_matches(['\n', '\r'])) {
            Ok(f) => f,
            Err(e) => {
                let shown: String = text.chars().take(120).collect();
                return protocol_error(&proc, format!("{shown:?} is not a JSON frame ({e})"));
            }
        };
        let mut body = Vec::new();
        if let Some(len) = frame.len {
            if len > limits.max_output_bytes {
                return protocol_error(
                    &proc,
                    format!("a {len}-byte frame, over the {}-byte limit", limits.max_output_bytes),
                );
            }
            body.resize(len, 0);
            if r.read_exact(&mut body).await.is_err() {
                return;
            }
        }
        let id = frame.id.unwrap_or_default();
        match frame.kind.as_str() {
            "ready" => {
                proc.takes_cancel.store(frame.cancel, Ordering::SeqCst);
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
            "log" => {
                let mut pending = proc.lock_pending();
                let Some(p) = pending.get_mut(&id) else { continue };
                if p.logs.len() < limits.max_log_lines {
                    let seq = p.logs.len() as i32;
                    p.logs.push(LogLine {
                        attempt: p.attempt,
                        seq,
                        ts_ms: now_ms(),
                        line: frame.line.unwrap_or_default(),
                    });
                }
            }
            "result" | "error" => {
                let Some(p) = proc.lock_pending().remove(&id) else {
                    // An answer for nothing held: a late answer after a timeout is possible
                    // only on a killed handler, so anything else is a bug in the handler.
                    return protocol_error(&proc, format!("an answer for unknown invocation {id:?}"));
                };
                let reply = if frame.kind == "result" {
                    Reply::Result(body)
                } else {
                    Reply::Error(frame.message.unwrap_or_else(|| "(no message)".into()))
                };
                let _ = p.tx.send((reply, p.logs));
            }
            other => return protocol_error(&proc, format!("unknown frame type {other:?}")),
        }
    }
}

async fn read_lines(proc: Arc<Proc>, stderr: impl tokio::io::AsyncRead + Unpin, idle: Arc<AtomicBool>, limits: Limits) {
    // Lines are cut at the log line limit and decoded lossily; reading never stops before EOF,
    // so a handler can never block on a full stderr pipe. `idle` says that all read so far is
    // attributed (nothing left in the reader's buffer).
    let mut r = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        idle.store(r.buffer().is_empty(), Ordering::SeqCst);
        let read = (&mut r).take(limits.max_log_line_bytes as u64).read_until(b'\n', &mut buf).await;
        idle.store(false, Ordering::SeqCst);
        match read {
            Ok(0) | Err(_) => {
                idle.store(true, Ordering::SeqCst);
                return;
            }
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
        let mut pending = proc.lock_pending();
        if pending.len() == 1 {
            if let Some(p) = pending.values_mut().next() {
                if p.logs.len() < limits.max_log_lines {
                    let seq = p.logs.len() as i32;
                    p.logs.push(LogLine { attempt: p.attempt, seq, ts_ms: now_ms(), line });
                }
                continue;
            }
        }
        drop(pending);
        tracing::info!(pid = ?proc.pid, "handler: {line}");
    }
}

/// The handler pools of one worker, per function version.
#[derive(Default)]
pub struct Handlers {
    pools: Mutex<HashMap<(String, i64), Arc<Pool>>>,
}

impl Handlers {
    /// The pool for a version, created on first use. Older versions' pools of the same function
    /// are shut down: their version is no longer the one being invoked.
    pub fn pool(
        &self,
        manifest: &Manifest,
        version: i64,
        dir: PathBuf,
        vars: Vec<(String, String)>,
        limits: Limits,
    ) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let key = (manifest.name.clone(), version);
        if let Some(p) = pools.get(&key) {
            return p.clone();
        }
        let stale: Vec<(String, i64)> =
            pools.keys().filter(|(n, v)| *n == manifest.name && *v < version).cloned().collect();
        for k in stale {
            if let Some(old) = pools.remove(&k) {
                tracing::info!(function = %k.0, version = k.1, "newer version in use; shutting down its handlers");
                old.close();
            }
        }
        let p = Pool::new(manifest.clone(), dir, vars, limits);
        pools.insert(key, p.clone());
        p
    }

    /// The function versions that have warm handlers.
    pub fn versions(&self) -> Vec<(String, i64)> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Shuts one version's handlers down (it is no longer the active version).
    pub fn close_version(&self, function: &str, version: i64) {
        let removed = self.pools.lock().unwrap_or_else(|p| p.into_inner()).remove(&(function.to_string(), version));
        if let Some(p) = removed {
            tracing::info!(function, version, "version no longer active; shutting down its handlers");
            p.close();
        }
    }

    /// Shuts every pool down (the worker is draining).
    pub fn close_all(&self) {
        for (_, p) in self.pools.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            p.close();
        }
    }
}
