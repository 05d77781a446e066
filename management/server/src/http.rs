//! Serving the API over HTTP/1.1: the accept loop, with its two bounds on what clients can
//! hold.
//!
//! - **Open connections** are capped (`Config::max_connections`). A connection accepted at the
//!   cap waits for a slot, and meanwhile the connections idle between keep-alive requests for
//!   `RECLAIM_IDLE` or more are closed (a client's pool can hold hundreds, which would
//!   otherwise keep their slots until `client_timeout` ends them); the connections after it
//!   wait in the kernel's backlog, instead of each taking a file descriptor and a task until
//!   the process runs out of either.
//! - **A client that owes bytes and sends none** for `Config::client_timeout` loses its
//!   connection: one that sends its headers byte by byte (slowloris), one left idle between
//!   keep-alive requests, and one that stops in the middle of a request body (the body read
//!   fails, [`IdleBody`]). The time counts only while the server waits for the client: never
//!   while a request is answered (a sync invoke may wait minutes), nor while a handler is not
//!   reading the body (a batch waiting for room for its next chunk).
//!
//! On shutdown the loop closes the listener (new connections are refused, to be retried
//! elsewhere), every connection finishes the request it serves and closes, and [`serve`]
//! returns once all have.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::api;
use crate::management::Management;

/// Serves the API on `listener` until `shutdown` resolves, then waits for the open connections
/// to finish what they serve.
pub async fn serve(
    m: Arc<Management>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let max = m.config.max_connections.max(1);
    match raise_open_files_limit() {
        // Room for the store's and the broker's connections, the package files and the rest.
        Some(limit) if (max as u64).saturating_add(128) > limit => tracing::warn!(
            max_connections = max,
            open_files_limit = limit,
            "--max-connections is near this process's open-file limit: accepting may fail before the cap \
             (raise the hard limit, `ulimit -Hn`, or lower --max-connections)"
        ),
        _ => {}
    }
    let client_timeout = m.config.client_timeout;
    let router = api::router(m).layer(axum::middleware::map_request(move |req: Request| async move {
        req.map(|body| Body::new(IdleBody::new(body, client_timeout)))
    }));
    let slots = Arc::new(Semaphore::new(max));
    // Each connection holds a receiver: `stop` tells them to close, and its `closed()` says
    // when the last one has.
    let (stop, stopping) = watch::channel(false);
    // Bumped at the cap: every connection idle for `RECLAIM_IDLE` or more then closes.
    let reclaim = watch::Sender::new(0u64);
    let epoch = std::time::Instant::now();
    tokio::pin!(shutdown);
    let mut at_cap_told = false;
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                at_cap_told = false;
                slot
            }
            Err(_) => {
                if !at_cap_told {
                    tracing::warn!(
                        max_connections = max,
                        "at the connection limit: closing idle keep-alive connections; new connections wait until one closes (--max-connections)"
                    );
                    at_cap_told = true;
                }
                // This connection waits for a slot (the next ones in the kernel's backlog);
                // connections that turn idle meanwhile are closed too.
                let waited = loop {
                    reclaim.send_modify(|n| *n += 1);
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => break Some(slot.expect("the semaphore is never closed")),
                        _ = tokio::time::sleep(RECLAIM_EVERY) => {}
                        _ = &mut shutdown => break None,
                    }
                };
                match waited {
                    Some(slot) => slot,
                    None => break,
                }
            }
        };
        // Answers go out at once: without TCP_NODELAY a response written in two segments
        // waits for the client's delayed ACK (up to 40 ms on Linux) behind Nagle's algorithm.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an API connection");
        }
        let activity = Arc::new(Activity::new(epoch));
        let service = {
            let (router, activity) = (router.clone(), activity.clone());
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let answering = Answering::new(&activity);
                let call = router.clone().oneshot(req.map(Body::new));
                async move {
                    let response = call.await;
                    drop(answering);
                    response
                }
            })
        };
        let mut stopping = stopping.clone();
        let mut reclaimed = reclaim.subscribe();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(client_timeout);
            let conn = http.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let served = loop {
                tokio::select! {
                    // The connection first: a request already in its socket is read (and
                    // counted) before a reclaim could find the connection idle.
                    biased;
                    served = conn.as_mut() => break served,
                    // The value only ever changes to `true`.
                    _ = stopping.changed() => {
                        conn.as_mut().graceful_shutdown();
                        break conn.await;
                    }
                    // Closed between requests (a request that is being answered finishes
                    // first): the client opens another when it needs one.
                    Ok(()) = reclaimed.changed() => {
                        if activity.idle_for() >= RECLAIM_IDLE {
                            conn.as_mut().graceful_shutdown();
                            break conn.await;
                        }
                    }
                }
            };
            if let Err(e) = served {
                // A client that left, a head too slow or malformed: the connection's own end.
                tracing::debug!(error = %e, "API connection ended");
            }
        });
    }
    // Refuse new connections at once (a client retries elsewhere) rather than leave them in
    // the backlog, unanswered, while the open ones finish.
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    stop.closed().await;
    Ok(())
}

/// How often a connection waiting at the cap asks again for idle connections to close.
const RECLAIM_EVERY: Duration = Duration::from_millis(100);

/// How long a connection must have been idle to be closed for one waiting at the cap: one
/// its client is still reusing is left to it (closing it could cross a request already on
/// its way, and the client would only open another).
const RECLAIM_IDLE: Duration = Duration::from_millis(200);

/// What a connection is doing: the requests being answered on it, and since when (ms from
/// `epoch`) it has answered none.
struct Activity {
    epoch: std::time::Instant,
    busy: AtomicUsize,
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new(epoch: std::time::Instant) -> Activity {
        Activity { epoch, busy: AtomicUsize::new(0), idle_since_ms: AtomicU64::new(Activity::ms(epoch)) }
    }

    fn ms(epoch: std::time::Instant) -> u64 {
        epoch.elapsed().as_millis() as u64
    }

    /// How long the connection has been idle between requests (zero while one is answered).
    fn idle_for(&self) -> Duration {
        if self.busy.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = self.idle_since_ms.load(Ordering::Acquire);
        Duration::from_millis(Activity::ms(self.epoch).saturating_sub(since))
    }
}

/// A request being answered on a connection, counted while it lasts.
struct Answering(Arc<Activity>);

impl Answering {
    fn new(activity: &Arc<Activity>) -> Answering {
        activity.busy.fetch_add(1, Ordering::AcqRel);
        Answering(activity.clone())
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(Activity::ms(self.0.epoch), Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Raises this process's soft limit of open files to its hard limit (as a server that holds
/// a descriptor per connection should: the soft limit is often 1,024, the hard one far more;
/// tokio polls with epoll/kqueue, so high descriptors cost nothing). Returns the soft limit
/// now in force, if it can be read.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every Unix
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some(raised.rlim_cur as u64);
        }
        tracing::debug!(soft = limit.rlim_cur as u64, hard = limit.rlim_max as u64, "cannot raise the open-file limit");
    }
    Some(limit.rlim_cur as u64)
}

/// Windows has no such per-process limit to raise.
#[cfg(not(unix))]
pub fn raise_open_files_limit() -> Option<u64> {
    None
}

/// After a failed accept: a connection the client dropped before it was taken is nothing; out
/// of file descriptors (or any other failure) waits a moment so the loop does not spin, and
/// says so.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(e.kind(), ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted) {
        return;
    }
    tracing::warn!(
        error = %e,
        "cannot accept an API connection (out of file descriptors? raise `ulimit -n` or lower --max-connections); retrying in 100 ms"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A request body that fails once its client has sent nothing for `idle` while it is being
/// read: the clock runs from the first read that finds nothing to the next frame, so a
/// handler that reads slowly (or not yet) costs the client nothing.
pub struct IdleBody<B> {
    inner: B,
    idle: Duration,
    /// Made at the first read that has to wait (most bodies are whole at the first read).
    timer: Option<Pin<Box<Sleep>>>,
    /// A read is waiting for the client (the timer is set).
    waiting: bool,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleBody { inner, idle, timer: None, waiting: false }
    }
}

impl<B> http_body::Body for IdleBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = Instant::now() + this.idle;
                    match &mut this.timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let timer = this.timer.as_mut().expect("set while a read waits");
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                        "the client sent nothing of the request body for {} s",
                        this.idle.as_secs()
                    )
                    .into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
