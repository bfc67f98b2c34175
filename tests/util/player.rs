//! A minimal HLS player for tests: opens a stream's playlist through the proxy, follows the
//! first variant, and fetches every media URI, counting the bytes it received. It resolves
//! references the way a real player does (RFC 3986 against the playlist's URL) and sends
//! only what a player sends: its user agent and, when named, `?client_id=`.

use reqwest::StatusCode;

use super::Proxy;

/// One viewer: a user agent and, optionally, a `client_id` in the playlist URL.
pub struct Player {
    pub http: reqwest::Client,
    pub client_id: Option<String>,
    /// Extra request headers (e.g. `X-Forwarded-For` from a reverse proxy).
    pub headers: Vec<(&'static str, String)>,
}

/// What a viewer received.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Played {
    /// Body bytes of every response: playlists and media.
    pub bytes: u64,
    /// Media requests answered with 200.
    pub segments: u64,
}

/// The URI lines of a playlist (not tags, not blanks).
pub fn uri_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

impl Player {
    /// A player that sends `user_agent` (reqwest sends none by default, like some TVs).
    pub fn new(user_agent: Option<&str>, client_id: Option<&str>) -> Player {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ua) = user_agent {
            b = b.user_agent(ua.to_string());
        }
        Player {
            http: b.build().expect("player client"),
            client_id: client_id.map(str::to_string),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Player {
        self.headers.push((name, value.to_string()));
        self
    }

    /// The stream's playlist URL as this player opens it.
    pub fn playlist_url(&self, proxy: &Proxy, stream_id: &str) -> String {
        match &self.client_id {
            Some(c) => proxy.url(&format!("/hls/{stream_id}/playlist.m3u8?client_id={c}")),
            None => proxy.url(&format!("/hls/{stream_id}/playlist.m3u8")),
        }
    }

    pub async fn get(&self, url: &str) -> reqwest::Response {
        let mut req = self.http.get(url);
        for (k, v) in &self.headers {
            req = req.header(*k, v);
        }
        req.send().await.expect("player request")
    }

    /// GET `url` to the end; returns the body.
    pub async fn fetch(&self, url: &str) -> bytes::Bytes {
        let res = self.get(url).await;
        assert_eq!(res.status(), StatusCode::OK, "{url}");
        res.bytes().await.expect("whole body")
    }

    /// Master playlist, then the first variant's media playlist: `(bytes, media URLs)`.
    pub async fn open(&self, proxy: &Proxy, stream_id: &str) -> (u64, Vec<String>) {
        let master_url = self.playlist_url(proxy, stream_id);
        let master = self.fetch(&master_url).await;
        let mut bytes = master.len() as u64;
        let master_text = String::from_utf8(master.to_vec()).unwrap();
        let variant = uri_lines(&master_text)
            .into_iter()
            .next()
            .expect("a variant");
        let media_url = url::Url::parse(&master_url)
            .unwrap()
            .join(&variant)
            .unwrap();
        let media = self.fetch(media_url.as_str()).await;
        bytes += media.len() as u64;
        let media_text = String::from_utf8(media.to_vec()).unwrap();
        let uris = uri_lines(&media_text)
            .iter()
            .map(|u| media_url.join(u).unwrap().to_string())
            .collect();
        (bytes, uris)
    }

    /// Plays the whole stream once: playlists, then every segment.
    pub async fn play(&self, proxy: &Proxy, stream_id: &str) -> Played {
        let (bytes, segments) = self.open(proxy, stream_id).await;
        let mut played = Played { bytes, segments: 0 };
        for url in segments {
            played.bytes += self.fetch(&url).await.len() as u64;
            played.segments += 1;
        }
        played
    }
}
