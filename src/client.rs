//! A typed HTTP client of the management API, used by the `m3u-client` CLI.
//!
//! Every route of the HTTP contract is one method returning the shared [`crate::model`]
//! types, so the CLI and the server cannot disagree about the JSON. Failures are sorted into
//! what a user can act on: the server is unreachable, the server refused the request (with
//! its `detail`), or the answer was not what the contract promises. This module must not
//! print, format for humans, or retry: those are the caller's choices.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use crate::model::{
    ClientInfo, ClientList, CreatePlaylist, CreateStream, ErrorBody, FailoverDone, Health,
    PlaylistInfo, PlaylistList, ProviderList, Stats, StreamCreated, StreamDeleted, StreamDetail,
    StreamList,
};

/// How long to wait for a TCP connection: a server that is down should be reported quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole exchange; management answers are small, so this only trips on a hung server.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The header carrying the API token.
pub const TOKEN_HEADER: &str = "X-API-Token";

/// Why a call to the API did not produce the expected answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address given by the user is not an http(s) URL.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidServer { url: String, reason: String },
    /// An id that cannot name anything: empty, `.` or `..`, longer than 128 characters, or
    /// with a character no id has (stream ids are hex; client ids are letters, digits and
    /// `. _ - : @`).
    #[error("invalid id {0:?}")]
    InvalidId(String),
    /// No answer at all: connection refused, timed out, or dropped mid-answer.
    #[error("cannot reach m3u-proxy at {url}: {}", root_cause(.source))]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a 4xx or 5xx; `detail` and `code` come from its error body.
    #[error("{detail} (HTTP {status})")]
    Api {
        status: u16,
        detail: String,
        code: String,
    },
    /// The server answered 2xx with JSON that is not the shape the contract promises.
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
    /// The server answered, but not as m3u-proxy does: an error page that is not the API's
    /// JSON error, or a success that is not JSON at all (a web server, another service).
    #[error("{url} does not look like m3u-proxy: it answered {answer}")]
    NotProxy { url: String, answer: String },
}

/// The innermost error of a chain, which is the one that says what happened
/// ("Connection refused") rather than what was being attempted.
fn root_cause(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".to_owned();
    }
    let mut cause: &dyn std::error::Error = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// One route of the management API: its method, path and body live here and nowhere else.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint<'a> {
    CreateStream(&'a CreateStream),
    ListStreams,
    Stream(&'a str),
    DeleteStream(&'a str),
    Failover(&'a str),
    Stats,
    ListClients,
    Client(&'a str),
    Health,
    ListProviders,
    ImportPlaylist(&'a CreatePlaylist),
    ListPlaylists,
    RefreshPlaylist(&'a str),
}

impl Endpoint<'_> {
    pub fn method(&self) -> Method {
        match self {
            Endpoint::CreateStream(_)
            | Endpoint::Failover(_)
            | Endpoint::ImportPlaylist(_)
            | Endpoint::RefreshPlaylist(_) => Method::POST,
            Endpoint::DeleteStream(_) => Method::DELETE,
            _ => Method::GET,
        }
    }

    /// The stream or client id the endpoint is about, if any.
    pub fn id(&self) -> Option<&str> {
        match *self {
            Endpoint::Stream(id)
            | Endpoint::DeleteStream(id)
            | Endpoint::Failover(id)
            | Endpoint::Client(id)
            | Endpoint::RefreshPlaylist(id) => Some(id),
            _ => None,
        }
    }

    /// The path segments under the server's base URL (ids unencoded).
    pub fn segments(&self) -> Vec<&str> {
        match *self {
            Endpoint::CreateStream(_) | Endpoint::ListStreams => vec!["streams"],
            Endpoint::Stream(id) | Endpoint::DeleteStream(id) => vec!["streams", id],
            Endpoint::Failover(id) => vec!["streams", id, "failover"],
            Endpoint::Stats => vec!["stats"],
            Endpoint::ListClients => vec!["clients"],
            Endpoint::Client(id) => vec!["clients", id],
            Endpoint::Health => vec!["health"],
            Endpoint::ListProviders => vec!["providers"],
            Endpoint::ImportPlaylist(_) | Endpoint::ListPlaylists => vec!["playlists"],
            Endpoint::RefreshPlaylist(id) => vec!["playlists", id, "refresh"],
        }
    }
}

/// `POST /streams` answered: the stream, and whether it is new (201) or its URL was
/// already registered and only its settings were updated (200).
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub stream: StreamCreated,
    pub is_new: bool,
}

/// A client of one m3u-proxy server.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// Normalised to end without a slash so paths can be appended under a prefix.
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of the server at `base` (e.g. `http://localhost:8001`, or a reverse-proxy
    /// prefix such as `https://tv.example/proxy`). `token` is sent as `X-API-Token`.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidServer {
            url: base.to_owned(),
            reason: reason.to_owned(),
        };
        let mut url = Url::parse(base).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(invalid("expected an http:// or https:// URL"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("expected no query or fragment"));
        }
        let trimmed = url.path().trim_end_matches('/').to_owned();
        url.set_path(&trimmed);
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("m3u-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(&e.to_string()))?;
        Ok(Self {
            base: url,
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    /// The server's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// An absolute URL for a path the server returned (such as `stream_endpoint`), kept
    /// under the base's prefix; absolute URLs are returned unchanged.
    pub fn absolute(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}/{}", self.base(), path.trim_start_matches('/'))
        }
    }

    /// The URL of an endpoint, each id percent-encoded as one path segment.
    pub fn url_for(&self, endpoint: &Endpoint<'_>) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(endpoint.segments());
        }
        if let Some(id) = endpoint.id() {
            // URL parsing drops `.`/`..` segments (even encoded), which would silently turn
            // `info ..` into `GET /streams`; no id of ours looks like that.
            if !is_valid_id(id) {
                return Err(ClientError::InvalidId(id.to_owned()));
            }
        }
        Ok(url)
    }

    /// The server's JSON answer to `endpoint`, byte for byte as sent (for `--json`).
    /// Non-2xx answers are errors, and the body is checked to be JSON.
    pub async fn raw_json(&self, endpoint: Endpoint<'_>) -> Result<String, ClientError> {
        let (_, status, body) = self.send(endpoint).await?;
        if serde_json::from_str::<serde::de::IgnoredAny>(&body).is_err() {
            return Err(self.not_proxy(status, "a body that is not JSON"));
        }
        Ok(body)
    }

    fn not_proxy(&self, status: StatusCode, what: &str) -> ClientError {
        ClientError::NotProxy {
            url: self.base().to_owned(),
            answer: format!("{} with {what}", status_line(status)),
        }
    }

    /// `POST /streams`.
    pub async fn create_stream(&self, request: &CreateStream) -> Result<Created, ClientError> {
        let (url, status, body) = self.send(Endpoint::CreateStream(request)).await?;
        Ok(Created {
            stream: decode(&url, &body)?,
            is_new: status == StatusCode::CREATED,
        })
    }

    /// `GET /streams`.
    pub async fn list_streams(&self) -> Result<StreamList, ClientError> {
        self.fetch(Endpoint::ListStreams).await
    }

    /// `GET /streams/{id}`.
    pub async fn stream(&self, id: &str) -> Result<StreamDetail, ClientError> {
        self.fetch(Endpoint::Stream(id)).await
    }

    /// `DELETE /streams/{id}`.
    pub async fn delete_stream(&self, id: &str) -> Result<StreamDeleted, ClientError> {
        self.fetch(Endpoint::DeleteStream(id)).await
    }

    /// `POST /streams/{id}/failover`.
    pub async fn failover(&self, id: &str) -> Result<FailoverDone, ClientError> {
        self.fetch(Endpoint::Failover(id)).await
    }

    /// `GET /stats`.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.fetch(Endpoint::Stats).await
    }

    /// `GET /clients`.
    pub async fn clients(&self) -> Result<ClientList, ClientError> {
        self.fetch(Endpoint::ListClients).await
    }

    /// `GET /clients/{id}`.
    pub async fn client(&self, id: &str) -> Result<ClientInfo, ClientError> {
        self.fetch(Endpoint::Client(id)).await
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.fetch(Endpoint::Health).await
    }

    /// `GET /providers`.
    pub async fn providers(&self) -> Result<ProviderList, ClientError> {
        self.fetch(Endpoint::ListProviders).await
    }

    /// `POST /playlists`.
    pub async fn import_playlist(
        &self,
        request: &CreatePlaylist,
    ) -> Result<PlaylistInfo, ClientError> {
        self.fetch(Endpoint::ImportPlaylist(request)).await
    }

    /// `GET /playlists`.
    pub async fn playlists(&self) -> Result<PlaylistList, ClientError> {
        self.fetch(Endpoint::ListPlaylists).await
    }

    /// `POST /playlists/{id}/refresh`.
    pub async fn refresh_playlist(&self, id: &str) -> Result<PlaylistInfo, ClientError> {
        self.fetch(Endpoint::RefreshPlaylist(id)).await
    }

    async fn fetch<T: DeserializeOwned>(&self, endpoint: Endpoint<'_>) -> Result<T, ClientError> {
        let (url, status, body) = self.send(endpoint).await?;
        if serde_json::from_str::<serde::de::IgnoredAny>(&body).is_err() {
            return Err(self.not_proxy(status, "a body that is not JSON"));
        }
        decode(&url, &body)
    }

    /// Sends one request; a 2xx answer comes back as (url, status, body), anything else as
    /// the matching [`ClientError`].
    async fn send(&self, endpoint: Endpoint<'_>) -> Result<(Url, StatusCode, String), ClientError> {
        let url = self.url_for(&endpoint)?;
        let mut request = self.http.request(endpoint.method(), url.clone());
        if let Some(token) = &self.token {
            request = request.header(TOKEN_HEADER, token);
        }
        match endpoint {
            Endpoint::CreateStream(body) => request = request.json(body),
            Endpoint::ImportPlaylist(body) => request = request.json(body),
            _ => {}
        }
        let unreachable = |source| ClientError::Unreachable {
            url: self.base().to_owned(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let body = response.text().await.map_err(unreachable)?;
        if status.is_success() {
            Ok((url, status, body))
        } else {
            Err(api_error(self.base(), status, &body))
        }
    }
}

fn decode<T: DeserializeOwned>(url: &Url, body: &str) -> Result<T, ClientError> {
    serde_json::from_str(body).map_err(|e| ClientError::Decode {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

/// The server's own words when it sent an [`ErrorBody`]. Anything else (nginx's 404 page,
/// another service's answer) is not m3u-proxy talking, and is said so.
fn api_error(base: &str, status: StatusCode, body: &str) -> ClientError {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(ErrorBody { detail, code, .. }) => ClientError::Api {
            status: status.as_u16(),
            detail,
            code,
        },
        Err(_) => ClientError::NotProxy {
            url: base.to_owned(),
            answer: status_line(status),
        },
    }
}

/// `HTTP 404 Not Found`.
fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// Whether `id` can name a stream or a client: 1 to 128 letters, digits and `. _ - : @`
/// (the server's rule for client ids; stream ids are hex), and not `.` or `..`, which URL
/// parsing would drop (turning `info ..` into `GET /streams`).
pub fn is_valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !matches!(id, "." | "..")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> ApiClient {
        ApiClient::new(base, None).unwrap()
    }

    #[test]
    fn urls_are_built_under_the_base_prefix() {
        let c = client("http://127.0.0.1:8001/");
        assert_eq!(
            c.url_for(&Endpoint::Failover("abc")).unwrap().as_str(),
            "http://127.0.0.1:8001/streams/abc/failover"
        );
        let c = client("https://tv.example/proxy/");
        assert_eq!(c.base(), "https://tv.example/proxy");
        assert_eq!(
            c.url_for(&Endpoint::Health).unwrap().as_str(),
            "https://tv.example/proxy/health"
        );
        assert_eq!(
            c.absolute("/hls/x/playlist.m3u8"),
            "https://tv.example/proxy/hls/x/playlist.m3u8"
        );
        assert_eq!(c.absolute("http://a/b"), "http://a/b");
    }

    #[test]
    fn ids_stay_one_segment() {
        let c = client("http://h");
        assert_eq!(
            c.url_for(&Endpoint::Stream("viewer:1@tv"))
                .unwrap()
                .as_str(),
            "http://h/streams/viewer:1@tv"
        );
        let long = "x".repeat(129);
        for bad in [
            "",
            ".",
            "..",
            "not/valid",
            "a?b",
            "a%2Fb",
            "sp ace",
            long.as_str(),
        ] {
            assert!(matches!(
                c.url_for(&Endpoint::DeleteStream(bad)),
                Err(ClientError::InvalidId(id)) if id == bad
            ));
        }
    }

    #[test]
    fn bad_server_urls_are_refused() {
        for bad in ["localhost:8001", "ftp://h", "not a url", "http://h/?x=1"] {
            assert!(
                matches!(
                    ApiClient::new(bad, None),
                    Err(ClientError::InvalidServer { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_bodies_keep_the_servers_detail() {
        let err = api_error(
            "http://h",
            StatusCode::NOT_FOUND,
            r#"{"detail":"stream not found","code":"not_found"}"#,
        );
        assert!(matches!(
            &err,
            ClientError::Api { status: 404, detail, code } if detail == "stream not found" && code == "not_found"
        ));
        let err = api_error("http://h", StatusCode::NOT_FOUND, "<html>nginx</html>");
        assert_eq!(
            err.to_string(),
            "http://h does not look like m3u-proxy: it answered HTTP 404 Not Found"
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = client(&format!("http://{addr}"))
            .health()
            .await
            .unwrap_err();
        let line = err.to_string();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{line}");
        assert!(
            line.starts_with(&format!("cannot reach m3u-proxy at http://{addr}: ")),
            "{line}"
        );
        assert!(line.to_lowercase().contains("refused"), "{line}");
    }
}
