//! How the server logs: the level a user asks for (`LOG_LEVEL`), checked rather than
//! guessed, colour only for a terminal, and plain text or JSON lines for log shippers.
//!
//! Parsing is pure and unit-tested; [`init`] is the one call that installs the subscriber.

use std::io::IsTerminal;

/// The levels `LOG_LEVEL` accepts, quietest first (`warning` is read as `warn`).
pub const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A `LOG_LEVEL` that names no level: refused, since tracing would read a bare unknown word
/// as a target name and log nothing at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown log level {0:?}: use one of off, error, warn, info, debug, trace, \
     or a filter such as m3u_proxy=debug,info"
)]
pub struct UnknownLevel(pub String);

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// For people: one line per event, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The tracing filter for `spec`: a level, or comma-separated directives that are each a
/// level or `target=level`. Case does not matter and `warning` means `warn`.
pub fn filter(spec: &str) -> Result<String, UnknownLevel> {
    let unknown = || UnknownLevel(spec.to_owned());
    let mut out = Vec::new();
    for directive in spec.split(',').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        let (target, level) = match directive.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => (Some(target.trim()), level),
            Some(_) => return Err(unknown()),
            None => (None, directive),
        };
        let level = level.trim().to_ascii_lowercase();
        let level = if level == "warning" { "warn" } else { &level };
        if !LEVELS.contains(&level) {
            return Err(unknown());
        }
        out.push(match target {
            Some(target) => format!("{target}={level}"),
            None => level.to_owned(),
        });
    }
    if out.is_empty() {
        return Err(unknown());
    }
    Ok(out.join(","))
}

/// Whether log text may carry colour codes: only on a terminal, and never when `NO_COLOR`
/// is set to anything (<https://no-color.org>).
pub fn use_colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber, writing to stdout. `filter` comes from [`filter`].
pub fn init(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::new(filter);
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => {
            let colour = use_colour(
                std::io::stdout().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            builder.with_ansi(colour).init();
        }
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_checked_and_warning_means_warn() {
        assert_eq!(filter("info").unwrap(), "info");
        assert_eq!(filter("WARNING").unwrap(), "warn");
        assert_eq!(filter(" Debug ").unwrap(), "debug");
        assert_eq!(
            filter("m3u_proxy=debug, hyper=warning,info").unwrap(),
            "m3u_proxy=debug,hyper=warn,info"
        );
        for bad in [
            "",
            "warnin",
            "verbose",
            "m3u_proxy",
            "=debug",
            "m3u_proxy=loud",
            ",",
        ] {
            let err = filter(bad).unwrap_err();
            assert!(err
                .to_string()
                .contains("off, error, warn, info, debug, trace"));
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }
}
