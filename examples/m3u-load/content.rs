//! Synthetic media for load runs: HLS masters and media playlists over segments made of
//! 188-byte MPEG-TS packets, a small segment for latency, and a large `.ts` file for direct
//! viewers. Real video is not needed — the proxy never decodes — only the right sizes,
//! names and playlist structure. It writes files and must not serve them (see `origin`).
//!
//! Layout under `--dir`:
//!
//! ```text
//! hls/master.m3u8        VOD master: variants v0 (--bitrate) and v1 (a quarter of it)
//! hls/live.m3u8          "live" master: the same variants without EXT-X-ENDLIST
//! hls/vN/index.m3u8      VOD media playlist (ENDLIST)
//! hls/vN/live.m3u8       live media playlist: same segments, no ENDLIST
//! hls/vN/segNNNNN.ts     --segments segments of --segment-seconds each
//! small.ts               100 packets (18,800 bytes): the latency probe
//! small.m3u8             a one-segment VOD playlist of small.ts
//! big.ts                 --file-mb MB: the direct-stream file
//! ```
//!
//! The live playlist is static: a long window that viewers play from its first segment at
//! real time while re-polling it every target duration, which is the load a live channel
//! puts on a proxy (one playlist and one segment request per viewer per segment duration)
//! without an origin that has to advance a window.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

pub const PACKET: usize = 188;

pub struct GenOptions {
    pub segments: usize,
    pub segment_seconds: f64,
    pub bitrate: u64,
    pub file_mb: u64,
}

/// `count` TS packets on one PID with a running continuity counter; the payload varies so
/// nothing along the way can get away with compressing it.
pub fn ts_packets(count: usize, seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * PACKET);
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    for i in 0..count {
        out.extend_from_slice(&[0x47, 0x01, 0x00, 0x10 | (i as u8 & 0x0f)]);
        for _ in 0..(PACKET - 4) / 4 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            out.extend_from_slice(&state.to_le_bytes());
        }
    }
    out
}

pub fn generate(dir: &Path, opts: &GenOptions) -> Result<()> {
    let hls = dir.join("hls");
    let bitrates = [opts.bitrate, (opts.bitrate / 4).max(8 * PACKET as u64)];
    let target = opts.segment_seconds.ceil() as u64;
    for (v, bitrate) in bitrates.iter().enumerate() {
        let vdir = hls.join(format!("v{v}"));
        std::fs::create_dir_all(&vdir).with_context(|| format!("create {}", vdir.display()))?;
        let bytes_per_segment = (*bitrate as f64 / 8.0 * opts.segment_seconds) as usize;
        let packets = (bytes_per_segment / PACKET).max(1);
        for s in 0..opts.segments {
            let path = vdir.join(format!("seg{s:05}.ts"));
            std::fs::write(&path, ts_packets(packets, (v * 100_000 + s) as u32 + 1))
                .with_context(|| format!("write {}", path.display()))?;
        }
        for (name, endlist) in [("index.m3u8", true), ("live.m3u8", false)] {
            let mut text = String::new();
            let _ = write!(
                text,
                "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n"
            );
            if endlist {
                text.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
            }
            for s in 0..opts.segments {
                let _ = write!(text, "#EXTINF:{:.3},\nseg{s:05}.ts\n", opts.segment_seconds);
            }
            if endlist {
                text.push_str("#EXT-X-ENDLIST\n");
            }
            std::fs::write(vdir.join(name), text)?;
        }
    }
    for (name, media) in [("master.m3u8", "index.m3u8"), ("live.m3u8", "live.m3u8")] {
        let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:3\n");
        for (v, bitrate) in bitrates.iter().enumerate() {
            let _ = write!(
                text,
                "#EXT-X-STREAM-INF:BANDWIDTH={bitrate},CODECS=\"avc1.4d401f,mp4a.40.2\"\nv{v}/{media}\n"
            );
        }
        std::fs::write(hls.join(name), text)?;
    }
    std::fs::write(dir.join("small.ts"), ts_packets(100, 7))?;
    // So the latency probe can go through the proxy's signed segment route.
    std::fs::write(
        dir.join("small.m3u8"),
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.000,\nsmall.ts\n#EXT-X-ENDLIST\n",
    )?;
    // The big file repeats one 1 MiB-ish block: its size is what matters, and writing it
    // must stay quick.
    let block = ts_packets(5577, 11);
    let total = opts.file_mb * 1_000_000 / PACKET as u64 * PACKET as u64;
    let mut big = Vec::with_capacity(total as usize);
    while (big.len() as u64) < total {
        let left = (total - big.len() as u64) as usize;
        big.extend_from_slice(&block[..left.min(block.len())]);
    }
    std::fs::write(dir.join("big.ts"), big)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_sync_aligned() {
        let data = ts_packets(10, 3);
        assert_eq!(data.len(), 10 * PACKET);
        assert!(data.chunks(PACKET).all(|p| p[0] == 0x47));
        assert_eq!(data[PACKET + 3] & 0x0f, 1);
    }
}
