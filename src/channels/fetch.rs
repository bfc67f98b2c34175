//! Fetching a channel list or a guide from its origin, within a size cap, and judging
//! whether a body is an M3U at all (an HTML page, a binary file and a body without any
//! `#EXTM3U`/`#EXTINF` are not).

use std::path::Path;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use url::Url;

use super::ChannelError;

/// How a fetch talks to the origin.
#[derive(Debug, Clone)]
pub(crate) struct Request<'a> {
    pub url: &'a Url,
    pub user_agent: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// From request sent to response head.
    pub first_byte: Duration,
    /// Longest silence between two body chunks.
    pub read_stall: Duration,
}

async fn send(
    http: &reqwest::Client,
    req: &Request<'_>,
) -> Result<reqwest::Response, ChannelError> {
    let mut headers = req.headers.clone();
    if let Some(ua) = req.user_agent.and_then(|ua| HeaderValue::from_str(ua).ok()) {
        headers.insert(header::USER_AGENT, ua);
    }
    let sent = http.get(req.url.clone()).headers(headers).send();
    let res = tokio::time::timeout(req.first_byte, sent)
        .await
        .map_err(|_| ChannelError::Fetch(format!("no answer from {} in time", req.url)))?
        .map_err(|e| ChannelError::Fetch(format!("{}: {e}", req.url)))?;
    if !res.status().is_success() {
        return Err(ChannelError::Fetch(format!(
            "{} answered {}",
            req.url,
            res.status()
        )));
    }
    Ok(res)
}

/// The body at `req.url`, refused as [`ChannelError::TooLarge`] as soon as it passes `cap`
/// bytes (or declares more), so a huge body costs at most `cap` of memory.
pub(crate) async fn body(
    http: &reqwest::Client,
    req: &Request<'_>,
    cap: u64,
) -> Result<Vec<u8>, ChannelError> {
    let res = send(http, req).await?;
    if res.content_length().is_some_and(|n| n > cap) {
        return Err(ChannelError::TooLarge { limit: cap });
    }
    let mut body = Vec::new();
    let mut chunks = res.bytes_stream();
    loop {
        let chunk = match tokio::time::timeout(req.read_stall, chunks.next()).await {
            Err(_) => return Err(ChannelError::Fetch(format!("{} stalled", req.url))),
            Ok(None) => return Ok(body),
            Ok(Some(Err(e))) => return Err(ChannelError::Fetch(format!("{}: {e}", req.url))),
            Ok(Some(Ok(chunk))) => chunk,
        };
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(ChannelError::TooLarge { limit: cap });
        }
        body.extend_from_slice(&chunk);
    }
}

/// Streams the body at `req.url` into `path` (through a temporary file beside it, renamed
/// at the end, so a failed fetch leaves the previous file whole). Returns whether the body
/// is gzip (by its magic bytes: guides are often served as `.xml.gz` files).
pub(crate) async fn to_file(
    http: &reqwest::Client,
    req: &Request<'_>,
    path: &Path,
    cap: u64,
) -> Result<bool, ChannelError> {
    let res = send(http, req).await?;
    let tmp = path.with_extension("part");
    let io_error = |e: std::io::Error| ChannelError::Fetch(format!("cannot store the guide: {e}"));
    let mut file = tokio::fs::File::create(&tmp).await.map_err(io_error)?;
    let mut chunks = res.bytes_stream();
    let mut written = 0u64;
    let mut head: Vec<u8> = Vec::new();
    let result = loop {
        let chunk = match tokio::time::timeout(req.read_stall, chunks.next()).await {
            Err(_) => break Err(ChannelError::Fetch(format!("{} stalled", req.url))),
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(ChannelError::Fetch(format!("{}: {e}", req.url))),
            Ok(Some(Ok(chunk))) => chunk,
        };
        written += chunk.len() as u64;
        if written > cap {
            break Err(ChannelError::TooLarge { limit: cap });
        }
        if head.len() < 2 {
            head.extend(chunk.iter().take(2 - head.len()));
        }
        if let Err(e) = file.write_all(&chunk).await {
            break Err(io_error(e));
        }
    };
    let result = match result {
        Ok(()) => file.flush().await.map_err(io_error),
        Err(e) => Err(e),
    };
    drop(file);
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tokio::fs::rename(&tmp, path).await.map_err(io_error)?;
    Ok(head == [0x1f, 0x8b])
}

/// The text of a fetched or uploaded list, or why it is not an M3U channel list: binary
/// (a NUL or many control bytes near the start), an HTML page, or neither an `#EXTM3U`
/// header nor any `#EXTINF`. Invalid UTF-8 in an otherwise textual list is replaced.
pub(crate) fn list_text(body: Vec<u8>) -> Result<String, ChannelError> {
    let head = &body[..body.len().min(8192)];
    let controls = head
        .iter()
        .filter(|&&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c))
        .count();
    if head.contains(&0) || controls * 100 > head.len() {
        return Err(ChannelError::NotM3u(
            "the body is binary, not a text channel list".into(),
        ));
    }
    let text = match String::from_utf8(body) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    let start = text.trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
    if start.starts_with('<') {
        return Err(ChannelError::NotM3u(
            "the body is an HTML (or XML) page, not a channel list".into(),
        ));
    }
    let has_header = start
        .get(..7)
        .is_some_and(|h| h.eq_ignore_ascii_case("#EXTM3U"));
    if !has_header && !text.contains("#EXTINF") {
        return Err(ChannelError::NotM3u(
            "the body has no #EXTM3U header and no #EXTINF line".into(),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_bodies() {
        assert!(
            list_text(b"\xef\xbb\xbf#EXTM3U\r\n#EXTINF:-1,A\r\nhttp://a/\r\n".to_vec()).is_ok()
        );
        assert!(list_text(b"#EXTINF:-1,A\nhttp://a/\n".to_vec()).is_ok());
        for bad in [
            &b"  <!DOCTYPE html><html><body>Login</body></html>"[..],
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
            b"PK\x03\x04\x14\x00\x00\x00",
            b"just some text\nhttp://a/\n",
        ] {
            assert!(
                matches!(list_text(bad.to_vec()), Err(ChannelError::NotM3u(_))),
                "{bad:?}"
            );
        }
        let latin1 = b"#EXTM3U\n#EXTINF:-1,Caf\xe9\nhttp://a/\n".to_vec();
        assert!(list_text(latin1).unwrap().contains("Caf\u{fffd}"));
    }
}
