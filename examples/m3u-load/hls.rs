//! Real-time HLS viewers. Each viewer is one task on one keep-alive connection, like a
//! simple player: it fetches the master, picks a variant, fetches the media playlist, then
//! fetches each segment when its buffer ahead of the playhead drops to `--buffer` seconds
//! (default: one target duration, i.e. the next segment is fetched while the current one
//! plays), and re-polls a live playlist every target duration. A stall is a segment that
//! arrived after the playhead needed it; the playhead then waits for it, as a player's
//! does. Only what a player needs from a playlist is read (EXTINF, TARGETDURATION,
//! MEDIA-SEQUENCE, ENDLIST, STREAM-INF): keys, maps and parts are out of scope.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};
use url::Url;

use crate::http::{Conn, Origin};
use crate::load::fetch;
use crate::stats::{micros, Kind, Stats};

/// A media playlist, kept as its text plus the positions of its segment URIs so that
/// re-polling thousands of times a second allocates little.
pub struct MediaPlaylist {
    text: String,
    segments: Vec<(Range<usize>, f64)>,
    pub media_sequence: u64,
    pub target_duration: f64,
    pub endlist: bool,
}

impl MediaPlaylist {
    pub fn parse(text: String) -> MediaPlaylist {
        let mut segments = Vec::new();
        let mut media_sequence = 0;
        let mut target_duration = 0.0;
        let mut endlist = false;
        let mut duration = None;
        let mut offset = 0;
        for raw in text.split_inclusive('\n') {
            let start = offset;
            offset += raw.len();
            let line = raw.trim_end();
            if let Some(v) = line.strip_prefix("#EXTINF:") {
                duration = v.split(',').next().and_then(|d| d.trim().parse().ok());
            } else if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
                target_duration = v.trim().parse().unwrap_or(0.0);
            } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
                media_sequence = v.trim().parse().unwrap_or(0);
            } else if line == "#EXT-X-ENDLIST" {
                endlist = true;
            } else if !line.is_empty() && !line.starts_with('#') {
                if let Some(d) = duration.take() {
                    segments.push((start..start + line.len(), d));
                }
            }
        }
        MediaPlaylist {
            text,
            segments,
            media_sequence,
            target_duration,
            endlist,
        }
    }

    /// The URI and duration of the segment with media sequence number `seq`.
    pub fn segment(&self, seq: u64) -> Option<(&str, f64)> {
        let index = usize::try_from(seq.checked_sub(self.media_sequence)?).ok()?;
        let (range, duration) = self.segments.get(index)?;
        Some((&self.text[range.clone()], *duration))
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

/// The URI of variant `index` when `text` is a master playlist.
pub fn variant_uri(text: &str, index: usize) -> Option<&str> {
    let mut after_stream_inf = false;
    let mut variants = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("#EXT-X-STREAM-INF") {
            after_stream_inf = true;
        } else if after_stream_inf && !line.is_empty() && !line.starts_with('#') {
            variants.push(line);
            after_stream_inf = false;
        }
    }
    variants
        .get(index.min(variants.len().saturating_sub(1)))
        .copied()
}

pub struct ViewerOptions {
    pub variant: usize,
    /// Seconds of media ahead of the playhead below which the next segment is fetched;
    /// `None` means one target duration.
    pub buffer: Option<f64>,
}

/// Fetches `url` as a playlist; for a master, follows variant `index` to its media
/// playlist. Returns the media playlist's URL and contents.
pub async fn open(
    conn: &mut Conn,
    url: &Url,
    variant: usize,
    stats: &mut Stats,
) -> Option<(Url, MediaPlaylist)> {
    let mut body = Vec::new();
    fetch(conn, url, Kind::Playlist, Some(&mut body), stats).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let media_url = match variant_uri(&text, variant) {
        Some(uri) => match url.join(uri) {
            Ok(u) => u,
            Err(e) => {
                stats.error(Kind::Playlist, format!("bad variant URI {uri:?}: {e}"));
                return None;
            }
        },
        None => return Some((url.clone(), MediaPlaylist::parse(text))),
    };
    body.clear();
    fetch(conn, &media_url, Kind::Playlist, Some(&mut body), stats).await?;
    let playlist = MediaPlaylist::parse(String::from_utf8_lossy(&body).into_owned());
    if playlist.is_empty() {
        stats.error(Kind::Playlist, format!("no segments in {media_url}"));
        return None;
    }
    Some((media_url, playlist))
}

/// `url` with `client_id=m3u-load-<n>` added: without it every viewer on 127.0.0.1 with
/// the same user agent would be one client to the proxy. Static origins ignore it.
pub fn with_client_id(url: &Url, n: u64) -> Url {
    let mut url = url.clone();
    url.query_pairs_mut()
        .append_pair("client_id", &format!("m3u-load-{n}"));
    url
}

/// Viewer number `viewer_index`, from `start_at` to `deadline`.
pub async fn viewer(
    viewer_index: u64,
    origin: Origin,
    master: Arc<Url>,
    opts: Arc<ViewerOptions>,
    start_at: Instant,
    deadline: Instant,
) -> Stats {
    let mut stats = Stats::default();
    sleep_until(start_at).await;
    let started = Instant::now();
    // Small buffer: thousands of viewers each hold one, and real-time reads are light.
    let mut conn = Conn::new(origin, 16 * 1024);
    let master = with_client_id(&master, viewer_index);
    let retry = Duration::from_millis(500);
    let (media_url, mut playlist) = loop {
        if let Some(opened) = open(&mut conn, &master, opts.variant, &mut stats).await {
            break opened;
        }
        if Instant::now() + retry >= deadline {
            return stats;
        }
        sleep_until(Instant::now() + retry).await;
    };
    let target = Duration::from_secs_f64(playlist.target_duration.max(1.0));
    let ahead = Duration::from_secs_f64(opts.buffer.unwrap_or(target.as_secs_f64()));
    let mut last_poll = Instant::now();
    let mut next_seq = playlist.media_sequence;
    // When the playhead will have consumed everything downloaded; None before playback.
    let mut runs_dry: Option<Instant> = None;
    let mut first_segment = true;
    let mut body = Vec::new();

    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // Fell out of a sliding window: jump to its oldest segment.
        next_seq = next_seq.max(playlist.media_sequence);
        let segment = playlist.segment(next_seq);
        if segment.is_none() && playlist.endlist {
            // The end of a VOD: a new playback session from the start.
            next_seq = playlist.media_sequence;
            runs_dry = None;
            continue;
        }
        let poll_at = (!playlist.endlist).then(|| last_poll + target);
        let fetch_at =
            segment.map(|_| runs_dry.map_or(now, |t| t.checked_sub(ahead).unwrap_or(now)));
        let wake = [poll_at, fetch_at, Some(deadline)]
            .into_iter()
            .flatten()
            .min()
            .expect("deadline is always there");
        if wake > now {
            sleep_until(wake).await;
        }
        if wake >= deadline {
            break;
        }
        if poll_at == Some(wake) {
            body.clear();
            if fetch(
                &mut conn,
                &media_url,
                Kind::Playlist,
                Some(&mut body),
                &mut stats,
            )
            .await
            .is_some()
            {
                let fresh = MediaPlaylist::parse(String::from_utf8_lossy(&body).into_owned());
                if !fresh.is_empty() {
                    playlist = fresh;
                }
            }
            last_poll = Instant::now();
            continue;
        }
        let (uri, duration) = segment.expect("fetch_at is set only with a segment");
        let url = match media_url.join(uri) {
            Ok(url) => url,
            Err(e) => {
                stats.error(Kind::Segment, format!("bad segment URI {uri:?}: {e}"));
                next_seq += 1;
                continue;
            }
        };
        if fetch(&mut conn, &url, Kind::Segment, None, &mut stats)
            .await
            .is_none()
        {
            // A player retries a failed segment; do so without hammering.
            sleep_until((Instant::now() + Duration::from_millis(250)).min(deadline)).await;
            continue;
        }
        let arrived = Instant::now();
        let duration = Duration::from_secs_f64(duration);
        runs_dry = Some(match runs_dry {
            None => {
                if first_segment {
                    stats.startup_us.push(micros(arrived - started));
                    first_segment = false;
                }
                arrived + duration
            }
            Some(dry) if arrived > dry => {
                stats.stalls += 1;
                stats.stall_time += arrived - dry;
                arrived + duration
            }
            Some(dry) => dry + duration,
        });
        next_seq += 1;
    }
    // Still waiting for a segment when the run ended: the playhead had already stopped.
    if let Some(dry) = runs_dry {
        if dry < deadline {
            stats.stalls += 1;
            stats.stall_time += deadline - dry;
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_playlist_by_sequence() {
        let text = "#EXTM3U\r\n#EXT-X-TARGETDURATION:2\r\n#EXT-X-MEDIA-SEQUENCE:7\r\n\
                    #EXTINF:2.0,\r\na.ts\r\n#EXTINF:1.5,\r\nb.ts\r\n"
            .to_string();
        let p = MediaPlaylist::parse(text);
        assert_eq!(p.target_duration, 2.0);
        assert!(!p.endlist);
        assert_eq!(p.segment(6), None);
        assert_eq!(p.segment(7), Some(("a.ts", 2.0)));
        assert_eq!(p.segment(8), Some(("b.ts", 1.5)));
        assert_eq!(p.segment(9), None);
    }

    #[test]
    fn variant_of_a_master() {
        let master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv0/a.m3u8\n\
                      #EXT-X-STREAM-INF:BANDWIDTH=2\nv1/a.m3u8\n";
        assert_eq!(variant_uri(master, 1), Some("v1/a.m3u8"));
        assert_eq!(variant_uri(master, 9), Some("v1/a.m3u8"));
        assert_eq!(variant_uri("#EXTM3U\n#EXTINF:2,\na.ts\n", 0), None);
    }
}
