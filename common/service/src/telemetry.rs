//! Logs: how every Warren binary installs its `tracing` subscriber (libraries only emit).

/// How the binaries write their logs (on stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the current spans (`invocation` ...).
    Json,
}

impl LogFormat {
    /// `WARREN_LOG_FORMAT=json` asks for JSON; anything else, text.
    pub fn from_env() -> LogFormat {
        match std::env::var("WARREN_LOG_FORMAT") {
            Ok(v) if v.eq_ignore_ascii_case("json") => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }
}

/// Installs the log subscriber on stderr: `RUST_LOG` filters (default `info`, with sqlx and
/// lapin at `warn`), in the given format. A second call changes nothing.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}
