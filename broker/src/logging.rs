//! The broker's logs: `tracing` to stderr, as text or one JSON object per line, filtered by
//! `RUST_LOG` when it is set (and valid), else by `log_level` (flag or config file). The
//! filter sits behind a reload handle so SIGHUP can change `log_level` at runtime, except
//! when `RUST_LOG` governs.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::LogFormat;

/// The reload handle of the filter; unset when `RUST_LOG` chose the filter.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the process's subscriber (once; later calls do nothing).
pub(crate) fn init(log_level: &str, format: LogFormat) {
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, true),
        Err(_) => (EnvFilter::new(log_level), false),
    };
    let (filter, handle) = reload::Layer::new(filter);
    // Colour codes only for a person at a terminal, not in log files.
    let text = (format == LogFormat::Text).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let json = (format == LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_ansi(false)
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .try_init()
        .is_ok();
    if installed && !from_env {
        let _ = FILTER.set(handle);
    }
}

/// Replaces the filter with `log_level` (already validated). Returns false, changing
/// nothing, when `RUST_LOG` governs the filter.
pub(crate) fn set_level(log_level: &str) -> bool {
    match FILTER.get() {
        Some(handle) => handle.reload(EnvFilter::new(log_level)).is_ok(),
        None => false,
    }
}
