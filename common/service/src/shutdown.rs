//! Stopping: the signal every Warren process obeys (Ctrl-C, SIGTERM on Unix, Ctrl-Break on
//! Windows), and the pace of the loops that a stop ends.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Waits `period` between two turns of a loop: `true` to go on, `false` (at once) when `stop`
/// is cancelled, ending the loop.
pub async fn pace(period: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(period) => !stop.is_cancelled(),
        _ = stop.cancelled() => false,
    }
}

/// Resolves when the process is asked to stop: Ctrl-C, SIGTERM on Unix, Ctrl-Break on Windows.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(windows)]
    {
        match tokio::signal::windows::ctrl_break() {
            Ok(mut brk) => {
                tokio::select! {
                    _ = brk.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
