//! The shutdown signal the daemons wait for: Ctrl-C, or SIGTERM on Unix
//! (what systemd sends).

/// Resolves on Ctrl-C or SIGTERM (Ctrl-C only where SIGTERM cannot be
/// watched).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
