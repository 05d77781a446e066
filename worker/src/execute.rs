//! How an attempt runs: the built-in echo, a warm handler of the version, or a process of its
//! own; and, for a run not claimed first, its `running` mark once it lasts.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use warren_store::{Claim, NewInvocation, Status};
use warren_wire::invocation::LogLine;
use warren_wire::manifest::{Mode, Runtime};
use warren_wire::message::InvocationMessage;

use crate::azure;
use crate::handler::Call;
use crate::process::{self, RunOutput};
use crate::settings::Settings;
use crate::versions::Loaded;
use crate::worker::Worker;

/// How long an invocation run without a claim may take before it is marked `running` in the
/// store.
const RUNNING_MARK_AFTER: Duration = Duration::from_millis(250);

/// A run's log lines are stored while it runs once it has run this long (after its
/// `running` mark, so that its record exists)...
const LIVE_AFTER: Duration = Duration::from_secs(1);
/// ...at most this often...
const LIVE_EVERY: Duration = Duration::from_millis(500);
/// ...and at most this many lines wait between two writes (more are read from the outcome).
const LIVE_LINES: usize = 256;

impl Worker {
    pub(crate) async fn execute(
        &self,
        loaded: &Loaded,
        msg: &InvocationMessage,
        attempt: i32,
        settings: &Settings,
    ) -> RunOutput {
        // Everything but echo runs from the unpacked package, as this invocation.
        let (dir, id) = match (loaded.manifest.runtime, loaded.dir.as_deref()) {
            (Runtime::Echo, _) => {
                return RunOutput {
                    status: Status::Succeeded,
                    result: Some(msg.payload.to_vec()),
                    error: None,
                    logs: Vec::new(),
                }
            }
            (_, Some(dir)) => (dir, msg.id.to_string()),
            (_, None) => unreachable!("process and app functions are unpacked"),
        };
        let env = process::InvocationEnv {
            id: &id,
            function: &msg.function,
            version: msg.version,
            attempt: msg.attempt,
            headers: &msg.headers,
        };
        let timeout = Duration::from_secs(loaded.manifest.timeout_secs);
        let warm = || {
            self.handlers.pool(&loaded.manifest, msg.version, dir.to_path_buf(), settings.vars.clone(), self.cfg.limits)
        };
        // A cancel of this invocation while it runs here stops it: a process run's tree is
        // killed; a warm handler's call has its grace period to end (told by a cancel frame),
        // then the handler is killed. Its outcome is not stored over the cancel.
        let tracked = self.cancels.track(msg.id);
        let cancel = Some(&tracked.token);
        match (loaded.manifest.runtime, loaded.manifest.azure.as_ref()) {
            (Runtime::Azure, Some(az)) => {
                let out = warm().call(&env, Call::Http(azure::request(az, msg)), timeout, attempt, cancel).await;
                azure::outcome(az, out, attempt, self.cfg.limits.max_log_lines)
            }
            (Runtime::Azure, None) => RunOutput {
                status: Status::Failed,
                result: None,
                error: Some("runtime \"azure\" without its [azure] section".into()),
                logs: Vec::new(),
            },
            _ if loaded.manifest.mode == Mode::Persistent => {
                warm().invoke(&env, &msg.payload, timeout, attempt, cancel).await
            }
            _ => {
                let (tx, rx) = mpsc::channel(LIVE_LINES);
                let run = process::run(
                    &loaded.manifest.command,
                    dir,
                    &msg.payload,
                    timeout,
                    &env,
                    &settings.vars,
                    attempt,
                    &self.cfg.limits,
                    process::Watch { live: Some(tx), cancel: Some(tracked.token.clone()) },
                );
                tokio::select! {
                    biased;
                    out = run => out,
                    never = self.store_lines_while_running(msg.id, rx, settings) => match never {},
                }
            }
        }
    }

    /// Stores the log lines of a run that lasts, as they come (at most every
    /// [`LIVE_EVERY`], from [`LIVE_AFTER`] on), so that they can be followed before the
    /// outcome: short runs, most of them, store their lines with their outcome only. Never
    /// ends by itself: it is dropped when the run ends (its outcome brings every line).
    async fn store_lines_while_running(
        &self,
        id: uuid::Uuid,
        mut rx: mpsc::Receiver<LogLine>,
        settings: &Settings,
    ) -> std::convert::Infallible {
        let first = tokio::time::Instant::now() + LIVE_AFTER;
        let mut lines = Vec::new();
        loop {
            match rx.recv().await {
                Some(l) => lines.push(l),
                None => return std::future::pending().await,
            }
            tokio::time::sleep_until(first).await;
            // What came meanwhile: at most the channel's room.
            while let Ok(l) = rx.try_recv() {
                lines.push(l);
            }
            // Secret setting values never reach the store, as with the outcome's lines.
            if !settings.secrets.is_empty() {
                for l in &mut lines {
                    l.line = settings.redact(&l.line);
                }
            }
            if let Err(e) = self.store.append_logs(id, &lines).await {
                tracing::debug!(error = %e, "cannot store log lines of a running invocation now; they come with its outcome");
            }
            lines.clear();
            tokio::time::sleep(LIVE_EVERY).await;
        }
    }

    /// Runs an invocation that was not claimed; if it is still running after
    /// [`RUNNING_MARK_AFTER`], marks it `running` in the store (a claim, made while the run goes
    /// on) so that listings show what is running. Short runs, most of them, go from `queued` to
    /// their outcome in one write.
    pub(crate) async fn run_marked_if_long(
        &self,
        run: impl Future<Output = RunOutput>,
        inv: &Arc<NewInvocation>,
        attempt: i32,
    ) -> RunOutput {
        let mut run = std::pin::pin!(run);
        tokio::select! {
            biased;
            out = &mut run => out,
            _ = tokio::time::sleep(RUNNING_MARK_AFTER) => {
                let mark = async {
                    match self.claim(inv, attempt).await {
                        Ok(Claim::Run) => {}
                        Ok(other) => tracing::info!(
                            verdict = ?other,
                            "this invocation moved on while it ran (another copy?); its outcome will be stored only if it is still open"
                        ),
                        Err(e) => tracing::debug!(error = %e, "cannot mark the invocation running; its outcome is stored all the same"),
                    }
                };
                tokio::join!(run, mark).0
            }
        }
    }
}
