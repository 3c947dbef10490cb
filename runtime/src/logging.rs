//! Logs of every Tributary program: `tracing` to stderr, filtered by
//! `RUST_LOG` or else by a default level plus per-program directives.

/// Sets up logging to stderr: `RUST_LOG` when set, else `default` (e.g.
/// `"info"` or `"info,rumqttd=warn"`). A second call does nothing.
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
