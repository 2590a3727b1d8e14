//! Logging set-up: `RUST_LOG`-style filters, pretty or JSON lines on stderr.
//!
//! Colour codes only when stderr is a terminal, so files and pipes get plain text. A log line
//! that cannot be written (stderr closed, e.g. `cassini serve 2>&1 | head -1`) is dropped
//! silently: a broker must not stop because its log pipe closed.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter of a tool: `RUST_LOG` when set and valid, `default_level` otherwise.
pub(crate) fn tool_filter(default_level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level))
}

/// The filter of `serve`: `level` (`log.level`), with the Raft engine's own logs at warn unless
/// `level` names `openraft` (it logs every vote at info; Cassini logs what an operator needs).
pub(crate) fn serve_filter(level: &str) -> EnvFilter {
    if level.contains("openraft") {
        EnvFilter::new(level)
    } else {
        EnvFilter::new(format!("{level},openraft=warn"))
    }
}

/// Installs the global subscriber with `filter`.
pub(crate) fn init(format: LogFormat, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(err) = result {
        crate::report(format_args!("warning: logging not initialised: {err}"));
    }
}

#[cfg(test)]
mod serve_filter_tests {
    use super::serve_filter;

    #[test]
    fn the_raft_engine_logs_at_warn_unless_the_filter_names_it() {
        let quiet = serve_filter("info").to_string();
        assert!(quiet.contains("openraft=warn"), "{quiet}");
        let asked = serve_filter("info,openraft=debug").to_string();
        assert!(!asked.contains("openraft=warn"), "{asked}");
    }
}
