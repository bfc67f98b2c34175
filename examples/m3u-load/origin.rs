//! The built-in origin for machines without nginx: a static file server over a directory
//! loaded into memory at start (so it serves from RAM, like nginx from a warm page cache),
//! with GET, HEAD, single-range `Range` requests (206/416) and the media content types. It
//! listens on 127.0.0.1 only and must not be used to serve anything but generated content:
//! files are read once at start and never re-read.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;

use crate::content::PACKET;

type Files = HashMap<String, Bytes>;

pub async fn serve(dir: &Path, port: u16) -> Result<()> {
    let mut files = Files::new();
    load(dir, dir, &mut files)?;
    let total: usize = files.values().map(Bytes::len).sum();
    let app = Router::new()
        .fallback(handle)
        .with_state(Arc::new(files.clone()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("bind 127.0.0.1:{port}"))?;
    eprintln!(
        "m3u-load origin: {} files ({:.1} MB) from {} on http://{}",
        files.len(),
        total as f64 / 1e6,
        dir.display(),
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}

fn load(root: &Path, dir: &Path, files: &mut Files) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            load(root, &path, files)?;
        } else {
            let rel = path
                .strip_prefix(root)?
                .to_string_lossy()
                .replace('\\', "/");
            files.insert(format!("/{rel}"), Bytes::from(std::fs::read(&path)?));
        }
    }
    Ok(())
}

/// `GET /live.ts?bitrate=BPS`: an endless MPEG-TS stream paced at BPS (default 4 Mbit/s)
/// without Content-Length, like an IPTV channel; each request is its own connection to the
/// "encoder", so a proxy that shares one upstream among viewers shows it here.
async fn live_ts(uri: &Uri) -> Response {
    let bitrate: u64 = uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("bitrate=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000_000);
    let block = Bytes::from(crate::content::ts_packets(LIVE_BLOCK_PACKETS, 17));
    // Ten chunks a second, each a whole number of packets.
    let packets_per_tick = ((bitrate / 8 / 10) as usize / PACKET).max(1);
    let chunk = packets_per_tick * PACKET;
    let tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let stream = futures_util::stream::unfold((0usize, tick), move |(offset, mut tick)| {
        let block = block.clone();
        async move {
            tick.tick().await;
            let start = offset % block.len();
            let end = (start + chunk).min(block.len());
            let bytes = block.slice(start..end);
            Some((
                Ok::<_, std::convert::Infallible>(bytes),
                (end % block.len(), tick),
            ))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "video/mp2t")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

/// The live stream's repeating payload: about 1 MB of packets.
const LIVE_BLOCK_PACKETS: usize = 5577;

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

async fn handle(
    State(files): State<Arc<Files>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if uri.path() == "/live.ts" {
        return live_ts(&uri).await;
    }
    let Some(data) = files.get(uri.path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = data.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, body, content_range) = match range {
        None => (StatusCode::OK, data.clone(), None),
        Some(Some((start, end))) => (
            StatusCode::PARTIAL_CONTENT,
            data.slice(start as usize..=end as usize),
            Some(format!("bytes {start}-{end}/{len}")),
        ),
        Some(None) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type(uri.path()))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, body.len());
    if let Some(cr) = content_range {
        response = response.header(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&cr).expect("ascii"),
        );
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    };
    response.body(body).expect("valid response")
}

/// One `bytes=` range resolved against `len` as inclusive (start, end); `None` when it
/// cannot be satisfied. Multi-range requests get their first range (players send one).
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?.split(',').next()?.trim();
    let (start, end) = spec.split_once('-')?;
    let (start, end) = if start.is_empty() {
        let suffix: u64 = end.parse().ok()?;
        (len.checked_sub(suffix.min(len))?, len.checked_sub(1)?)
    } else {
        let start: u64 = start.parse().ok()?;
        let end = if end.is_empty() {
            len.checked_sub(1)?
        } else {
            end.parse::<u64>().ok()?.min(len.checked_sub(1)?)
        };
        (start, end)
    };
    (start <= end && end < len).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-0", 10), Some((0, 0)));
        assert_eq!(parse_range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(parse_range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(parse_range("bytes=8-100", 10), Some((8, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=4-2", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
    }
}
