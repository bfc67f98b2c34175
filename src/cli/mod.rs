//! The human side of the `m3u-client` CLI: how answers and failures read on a terminal.
//! [`format`](mod@format) and [`render`] are pure text; [`monitor`] is the refreshing
//! screen. Talking to the server belongs to [`crate::client`], and parsing arguments to the
//! binary: this module decides only what the user sees and which exit code they get.

pub mod format;
pub mod monitor;
pub mod render;

use crate::client::ClientError;

/// Exit codes, so scripts can tell "you asked for something wrong" from "the server is
/// down". 2 is clap's usage error, reused for a malformed `--server` or id.
pub mod exit {
    pub const OK: u8 = 0;
    /// The server refused the request (4xx): unknown id, bad input, missing token.
    pub const REFUSED: u8 = 1;
    pub const USAGE: u8 = 2;
    /// No answer: connection refused, timeout.
    pub const UNREACHABLE: u8 = 3;
    /// The server failed (5xx), or answered something that is not m3u-proxy's API.
    pub const SERVER_ERROR: u8 = 4;
    /// Every exit code, for the README's table (a test compares the two).
    pub const ALL: [u8; 5] = [OK, REFUSED, USAGE, UNREACHABLE, SERVER_ERROR];
}

/// The one line (and at most one hint) a command-line error prints, for both binaries: clap
/// renders a usage block under its error, which the README promises not to print. `None`
/// for `--help` and `--version`, whose output is the point.
pub fn usage_error(err: &clap::Error, program: &str) -> Option<String> {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        return None;
    }
    let text = err.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = match err.kind() {
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => "a command is required",
        _ => first,
    };
    let hint = lines
        .find_map(|l| l.strip_prefix("tip: "))
        .map_or_else(|| format!("try '{program} --help'"), str::to_owned);
    Some(format!("error: {first}\nhint: {hint}"))
}

/// What a command was about, so a 404 can say which thing was not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    Stream(&'a str),
    Client(&'a str),
}

/// A `--header NAME:VALUE` argument. Used as a clap value parser, so a malformed one is a
/// usage error (exit 2) before anything is sent.
pub fn parse_header(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg.split_once(':').ok_or_else(|| {
        format!("expected NAME:VALUE (e.g. 'Referer: http://site/'), got {arg:?}")
    })?;
    let name = name.trim();
    // RFC 9110 token characters; anything else would be rejected by the HTTP stack later.
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(is_token) {
        return Err(format!("invalid header name {name:?}"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// The one line printed on stderr when a command fails.
pub fn error_line(err: &ClientError, subject: Option<Subject<'_>>) -> String {
    match (err, subject) {
        (ClientError::Api { status: 404, .. }, Some(Subject::Stream(id))) => {
            format!("stream not found: {id}")
        }
        (ClientError::Api { status: 404, .. }, Some(Subject::Client(id))) => {
            format!("client not found: {id}")
        }
        (
            ClientError::Api {
                status: 401 | 403,
                detail,
                ..
            },
            _,
        ) => {
            format!(
                "{detail} (HTTP {}); pass --token or set API_TOKEN",
                status_of(err)
            )
        }
        (ClientError::Api { status, detail, .. }, _) if *status >= 500 => {
            format!("server error (HTTP {status}): {detail}")
        }
        _ => err.to_string(),
    }
}

fn status_of(err: &ClientError) -> u16 {
    match err {
        ClientError::Api { status, .. } => *status,
        _ => 0,
    }
}

/// The exit code for a failed command.
pub fn exit_code(err: &ClientError) -> u8 {
    match err {
        ClientError::InvalidServer { .. } | ClientError::InvalidId(_) => exit::USAGE,
        ClientError::Unreachable { .. } => exit::UNREACHABLE,
        ClientError::Api { status, .. } if *status < 500 => exit::REFUSED,
        ClientError::Api { .. } | ClientError::Decode { .. } | ClientError::NotProxy { .. } => {
            exit::SERVER_ERROR
        }
    }
}

/// Model values shared by the unit tests of the rendering modules.
#[cfg(test)]
pub(crate) mod fixtures {
    use chrono::{DateTime, TimeZone, Utc};

    use crate::model::{ProxyStats, Stats, StreamInfo, StreamType};

    pub fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
    }

    pub fn stream(id: &str, bytes: u64) -> StreamInfo {
        StreamInfo {
            stream_id: id.into(),
            stream_type: StreamType::Hls,
            provider: None,
            original_url: "http://origin/live.m3u8".into(),
            current_url: "http://backup/live.m3u8".into(),
            failover_urls: vec!["http://backup/live.m3u8".into()],
            failover_index: 1,
            failover_count: 1,
            user_agent: None,
            header_names: vec!["Referer".into()],
            metadata: None,
            client_count: 2,
            active_connections: 1,
            total_bytes_served: bytes,
            total_segments_served: 7,
            error_count: 3,
            bytes_per_second: 2048.0,
            is_active: true,
            created_at: now() - chrono::Duration::hours(2),
            last_access: now() - chrono::Duration::minutes(3),
            editor: Default::default(),
        }
    }

    pub fn stats(streams: Vec<StreamInfo>) -> Stats {
        Stats {
            proxy: ProxyStats {
                version: "0.1.0".into(),
                started_at: now() - chrono::Duration::hours(1),
                uptime_seconds: 3600,
                total_streams: streams.len(),
                active_streams: streams.len(),
                total_clients: 0,
                active_clients: 0,
                active_connections: 0,
                total_bytes_served: streams.iter().map(|s| s.total_bytes_served).sum(),
                total_segments_served: 0,
                total_errors: 0,
                total_failovers: 0,
                bytes_per_second: 0.0,
            },
            streams,
            clients: Vec::new(),
            providers: Vec::new(),
            instances: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_split_at_the_first_colon() {
        assert_eq!(
            parse_header("Referer: http://site:8080/"),
            Ok(("Referer".into(), "http://site:8080/".into()))
        );
        assert_eq!(
            parse_header("X-Empty:"),
            Ok(("X-Empty".into(), String::new()))
        );
        assert!(parse_header("Referer http://site/").is_err());
        assert!(parse_header(": value").is_err());
        assert!(parse_header("Bad Name: v").is_err());
    }

    fn api(status: u16, detail: &str) -> ClientError {
        ClientError::Api {
            status,
            detail: detail.into(),
            code: "x".into(),
        }
    }

    #[test]
    fn failures_read_as_one_line_with_a_distinct_exit_code() {
        let not_found = api(404, "Stream not found");
        assert_eq!(
            error_line(&not_found, Some(Subject::Stream("abc"))),
            "stream not found: abc"
        );
        assert_eq!(
            error_line(&not_found, Some(Subject::Client("c9"))),
            "client not found: c9"
        );
        assert_eq!(exit_code(&not_found), exit::REFUSED);
        let refused = api(400, "nothing to fail over to");
        assert_eq!(
            error_line(&refused, Some(Subject::Stream("abc"))),
            "nothing to fail over to (HTTP 400)"
        );
        let auth = api(401, "missing API token");
        assert_eq!(
            error_line(&auth, None),
            "missing API token (HTTP 401); pass --token or set API_TOKEN"
        );
        let broken = api(502, "upstream failed");
        assert_eq!(
            error_line(&broken, None),
            "server error (HTTP 502): upstream failed"
        );
        assert_eq!(exit_code(&broken), exit::SERVER_ERROR);
        let foreign = ClientError::NotProxy {
            url: "http://h".into(),
            answer: "HTTP 404 Not Found".into(),
        };
        assert_eq!(
            error_line(&foreign, Some(Subject::Stream("abc"))),
            "http://h does not look like m3u-proxy: it answered HTTP 404 Not Found",
            "not 'stream not found'"
        );
        assert_eq!(exit_code(&foreign), exit::SERVER_ERROR);
        let decode = ClientError::Decode {
            url: "http://h/health".into(),
            reason: "EOF".into(),
        };
        assert_eq!(
            error_line(&decode, None),
            "unexpected answer from http://h/health: EOF"
        );
        assert_eq!(exit_code(&decode), exit::SERVER_ERROR);
    }
}
