//! Logging (README "Install on the PBX host"): `tracing` to stdout for journald, plain text by
//! default or JSON, and optionally a daily-rotated file.
//!
//! Nothing secret is ever passed to a log macro; `config::Secret` prints as
//! `***` in case one is.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Installs the global subscriber. Keep the returned guard alive for the
/// life of the program: dropping it flushes the file writer.
pub fn init(cfg: &LoggingConfig) -> anyhow::Result<Option<WorkerGuard>> {
    // RUST_LOG, when set, wins over the configured level (handy for a one-off debug run).
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .map_err(|e| {
            anyhow::anyhow!("logging.level: expected a tracing filter like \"info\": {e}")
        })?;
    // journald adds its own timestamps and does not render colours.
    let ansi = std::env::var_os("JOURNAL_STREAM").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (file, guard) = match &cfg.directory {
        Some(dir) => {
            let appender = tracing_appender::rolling::daily(dir, "overdue-dialer.log");
            let (writer, guard) = tracing_appender::non_blocking(appender);
            (Some(writer), Some(guard))
        }
        None => (None, None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = match (cfg.format, file) {
        (LogFormat::Text, None) => builder.with_ansi(ansi).try_init(),
        (LogFormat::Text, Some(f)) => builder
            .with_ansi(false)
            .with_writer(std::io::stdout.and(f))
            .try_init(),
        (LogFormat::Json, None) => builder.json().try_init(),
        (LogFormat::Json, Some(f)) => builder
            .json()
            .with_writer(std::io::stdout.and(f))
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(guard)
}
