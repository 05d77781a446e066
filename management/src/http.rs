//! Serving the API over HTTP/1.1: the accept loop, with its two bounds on what clients can
//! hold.
//!
//! - **Open connections** are capped (`Config::max_connections`). At the cap the loop stops
//!   accepting: new connections wait in the kernel's backlog until one closes, instead of
//!   each taking a file descriptor and a task until the process runs out of either.
//! - **A connection waiting for a request head** is closed after
//!   `Config::header_read_timeout`: one that sends its headers byte by byte (slowloris), and
//!   one left idle between keep-alive requests, give its slot back. The timer runs only while
//!   a head is awaited, never while a request is served (a sync invoke may wait minutes).
//!
//! On shutdown the loop stops accepting, every connection finishes the request it serves and
//! closes, and [`serve`] returns once all have.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::{api, Management};

/// Serves the API on `listener` until `shutdown` resolves, then waits for the open connections
/// to finish what they serve.
pub async fn serve(
    m: Arc<Management>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let max = m.config.max_connections.max(1);
    let header_timeout = m.config.header_read_timeout;
    let router = api::router(m);
    let slots = Arc::new(Semaphore::new(max));
    // Each connection holds a receiver: `stop` tells them to close, and its `closed()` says
    // when the last one has.
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut at_cap_told = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                at_cap_told = false;
                slot
            }
            Err(_) => {
                if !at_cap_told {
                    tracing::warn!(
                        max_connections = max,
                        "at the connection limit: new connections wait until one closes (--max-connections)"
                    );
                    at_cap_told = true;
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    _ = &mut shutdown => break,
                }
            }
        };
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
        // Answers go out at once: without TCP_NODELAY a response written in two segments
        // waits for the client's delayed ACK (up to 40 ms on Linux) behind Nagle's algorithm.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an API connection");
        }
        let service = TowerToHyperService::new(router.clone());
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = http.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let served = tokio::select! {
                served = conn.as_mut() => served,
                // The value only ever changes to `true`.
                _ = stopping.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                // A client that left, a head too slow or malformed: the connection's own end.
                tracing::debug!(error = %e, "API connection ended");
            }
        });
    }
    drop(stopping);
    let _ = stop.send(true);
    stop.closed().await;
    Ok(())
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
