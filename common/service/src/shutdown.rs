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

/// Resolves when the process is asked to stop: Ctrl-C; SIGTERM on Unix; Ctrl-Break, the console
/// closing or a system shutdown on Windows.
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
        use tokio::signal::windows::{ctrl_break, ctrl_close, ctrl_shutdown};
        // Ctrl-Break (a console's signal to a process group), the console closing (`docker stop`
        // on Windows), a system shutdown. For the last two Windows ends the process once it
        // returns from its handler or a timeout passes; tokio holds the handler meanwhile, so
        // the drain runs first.
        let (brk, close, shutdown) = (ctrl_break(), ctrl_close(), ctrl_shutdown());
        let (Ok(mut brk), Ok(mut close), Ok(mut shutdown)) = (brk, close, shutdown) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = brk.recv() => {}
            _ = close.recv() => {}
            _ = shutdown.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
