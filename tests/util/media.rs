//! Real media for end-to-end tests: HLS and plain files made by ffmpeg once per test run,
//! and the two players (ffprobe, `ffmpeg -f null`) that judge what comes through the proxy.
//!
//! Fixtures are tiny (a few seconds of `testsrc` and `sine` at low resolution, ultrafast x264)
//! so generating all of them costs a few seconds of one core. This module only makes files and
//! runs players; serving them is `origin`'s job, and it never reaches beyond loopback.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::process::Command;

use super::origin::Origin;

/// Length of every clip, in seconds (segments are one second each).
pub const CLIP_SECONDS: f64 = 4.0;
/// Length of the source of the live sliding window, in one-second segments.
pub const LIVE_SEGMENTS: usize = 8;
/// Segments listed at once in the live playlist.
pub const LIVE_WINDOW: usize = 3;
/// URL prefix under which [`serve`] publishes the fixtures.
pub const PREFIX: &str = "/media";

/// A header every player request carries. The origin must never see it: if it does, a
/// player went around the proxy (an URI the rewriter left pointing at the origin).
pub const PLAYER_MARK: &str = "x-e2e-player";

/// The AES-128 key, served at this root-relative path (the playlist names it so).
pub const KEY_PATH: &str = "/keys/aes.key";
const KEY: [u8; 16] = *b"m3u-proxy-e2ekey";

/// The generated tree:
/// `abr/master.m3u8` (variants `high/`, `mid/`, `low/`, audio rendition `audio/`),
/// `fmp4/index.m3u8` (+ `init.mp4`, `.m4s`), `aes/index.m3u8`, `byterange/index.m3u8`
/// (one `index.ts`), `live/seg*.ts` (+ its VOD `index.m3u8`), `direct/clip.ts`, `direct/clip.mp4`.
pub struct Media {
    pub dir: PathBuf,
}

impl Media {
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    pub fn read(&self, relative: &str) -> Vec<u8> {
        std::fs::read(self.path(relative)).expect("read fixture")
    }
}

/// The skip rule: true when ffmpeg and ffprobe are here. Without them, CI (env `CI` set)
/// fails loudly, since it must run these tests; a developer's machine skips with a warning.
pub fn require_ffmpeg() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    let found = *FOUND.get_or_init(|| {
        ["ffmpeg", "ffprobe"].iter().all(|tool| {
            std::process::Command::new(tool)
                .arg("-version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
    });
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "ffmpeg/ffprobe not found, and CI is set: the end-to-end suite must run in CI"
        );
        // Straight to the process's stderr: the test harness captures `eprintln!`.
        let _ = std::io::stderr().write_all(
            b"\n*** SKIPPED: ffmpeg not found (install ffmpeg to run the end-to-end suite) ***\n",
        );
    }
    found
}

/// The fixtures, generated on first use. Call [`require_ffmpeg`] first.
pub fn media() -> &'static Media {
    static MEDIA: OnceLock<Media> = OnceLock::new();
    MEDIA.get_or_init(generate)
}

/// Publishes the fixtures at [`PREFIX`] and the AES key at [`KEY_PATH`].
pub fn serve(origin: &Origin) {
    origin.serve_dir(PREFIX, &media().dir);
    origin.put(KEY_PATH, &KEY[..], "application/octet-stream");
}

fn generate() -> Media {
    // Under target/, so nothing piles up in /tmp; one directory per run of the test binary.
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-media");
    remove_stale_runs(&root);
    let dir = root.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["abr", "fmp4", "aes", "byterange", "live", "direct"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create fixture dir");
    }
    let clip = source(CLIP_SECONDS, "160x90");
    let hls_vod = ["-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod"];

    // Three variants with video only, and one audio rendition they all share.
    let mut abr = source(CLIP_SECONDS, "320x180");
    abr.extend(args(&[
        "-filter_complex",
        "[0:v]split=3[high][m][l];[m]scale=256:144[mid];[l]scale=160:90[low]",
        "-map",
        "[high]",
        "-map",
        "[mid]",
        "-map",
        "[low]",
        "-map",
        "1:a",
    ]));
    abr.extend(encoder());
    abr.extend(args(&hls_vod));
    abr.extend(args(&[
        "-master_pl_name",
        "master.m3u8",
        "-var_stream_map",
        "v:0,agroup:aud,name:high v:1,agroup:aud,name:mid v:2,agroup:aud,name:low \
         a:0,agroup:aud,default:yes,language:en,name:audio",
        "-hls_segment_filename",
        "abr/%v/seg%d.ts",
        "abr/%v/index.m3u8",
    ]));
    ffmpeg(&dir, abr);

    let mut fmp4 = clip.clone();
    fmp4.extend(encoder());
    fmp4.extend(args(&hls_vod));
    fmp4.extend(args(&[
        "-hls_segment_type",
        "fmp4",
        "-hls_fmp4_init_filename",
        "init.mp4",
        "-hls_segment_filename",
        "fmp4/seg%d.m4s",
        "fmp4/index.m3u8",
    ]));
    ffmpeg(&dir, fmp4);

    std::fs::write(dir.join("aes/key.bin"), KEY).expect("write key");
    let key_info = format!("{KEY_PATH}\n{}\n", dir.join("aes/key.bin").display());
    std::fs::write(dir.join("aes/key_info"), key_info).expect("write key info");
    let mut aes = clip.clone();
    aes.extend(encoder());
    aes.extend(args(&hls_vod));
    aes.extend(args(&[
        "-hls_key_info_file",
        "aes/key_info",
        "-hls_segment_filename",
        "aes/seg%d.ts",
        "aes/index.m3u8",
    ]));
    ffmpeg(&dir, aes);

    let mut byterange = clip.clone();
    byterange.extend(encoder());
    byterange.extend(args(&hls_vod));
    byterange.extend(args(&["-hls_flags", "single_file", "byterange/index.m3u8"]));
    ffmpeg(&dir, byterange);

    let mut live = source(LIVE_SEGMENTS as f64, "160x90");
    live.extend(encoder());
    live.extend(args(&hls_vod));
    live.extend(args(&[
        "-hls_segment_filename",
        "live/seg%d.ts",
        "live/index.m3u8",
    ]));
    ffmpeg(&dir, live);

    for file in ["direct/clip.ts", "direct/clip.mp4"] {
        let mut direct = clip.clone();
        direct.extend(encoder());
        direct.push(file.to_owned());
        ffmpeg(&dir, direct);
    }
    Media { dir }
}

/// Removes fixture trees of earlier runs (older than ten minutes, so a run in parallel
/// keeps its own).
fn remove_stale_runs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(600));
        if old {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|arg| arg.to_string()).collect()
}

/// Test pattern and a tone, `seconds` long.
fn source(seconds: f64, size: &str) -> Vec<String> {
    vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("testsrc=size={size}:rate=25:duration={seconds}"),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("sine=frequency=440:sample_rate=44100:duration={seconds}"),
    ]
}

/// A keyframe every second so `-hls_time 1` cuts one-second segments.
fn encoder() -> Vec<String> {
    args(&[
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "25",
        "-keyint_min",
        "25",
        "-sc_threshold",
        "0",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
    ])
}

fn ffmpeg(dir: &Path, arguments: Vec<String>) {
    let output = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-v", "error"])
        .args(&arguments)
        .current_dir(dir)
        .output()
        .expect("run ffmpeg");
    assert!(
        output.status.success(),
        "ffmpeg {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What ffprobe reports for a URL.
#[derive(Debug)]
pub struct Probe {
    pub duration: f64,
    /// `(codec_type, width)` per stream, in ffprobe's order.
    pub streams: Vec<(String, Option<u64>)>,
}

impl Probe {
    pub fn count(&self, codec_type: &str) -> usize {
        self.streams
            .iter()
            .filter(|(kind, _)| kind == codec_type)
            .count()
    }
}

/// How much `ffmpeg -f null` decoded from a URL.
#[derive(Debug)]
pub struct Decoded {
    pub seconds: f64,
    pub frames: u64,
}

/// Runs a player to completion: exit 0 and nothing at all on stderr at `-v error`, or the
/// test fails with what it said. A generous timeout turns a hung proxy into a failure.
async fn player(program: &str, arguments: &[&str]) -> String {
    let mut command = Command::new(program);
    command
        .args(["-hide_banner", "-v", "error"])
        // Reading HTTP: give up after 10 s without data instead of waiting forever.
        .args(["-rw_timeout", "10000000"])
        .args(["-headers", &format!("{PLAYER_MARK}: 1\r\n")])
        .args(arguments)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {arguments:?} still running after 90 s"))
        .expect("run player");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "{program} {arguments:?}: {}\n{stderr}",
        output.status
    );
    String::from_utf8(output.stdout).expect("player output is UTF-8")
}

pub async fn ffprobe(url: &str) -> Probe {
    let json = player(
        "ffprobe",
        &[
            "-of",
            "json",
            "-show_entries",
            "format=duration:stream=codec_type,width",
            url,
        ],
    )
    .await;
    let report: Value = serde_json::from_str(&json).expect("ffprobe JSON");
    let duration = report["format"]["duration"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {report}"));
    let streams = report["streams"]
        .as_array()
        .expect("ffprobe streams")
        .iter()
        .map(|stream| {
            let kind = stream["codec_type"].as_str().unwrap_or("").to_owned();
            (kind, stream["width"].as_u64())
        })
        .collect();
    Probe { duration, streams }
}

/// Decodes every stream of `url` (`-map 0`, so each variant and rendition of a master is
/// fetched) and stops at the first error (`-xerror`).
pub async fn decode(url: &str) -> Decoded {
    decode_with(url, &[]).await
}

/// Like [`decode`], but only the first `seconds` of media: for live streams that may not end.
pub async fn decode_first(url: &str, seconds: f64) -> Decoded {
    decode_with(url, &["-t", &seconds.to_string()]).await
}

/// Like [`decode_first`], for a player that joins a live channel mid-stream: until its
/// first keyframe the decoder meets frames that refer to pictures it never saw, which a
/// player shrugs off, so only fatal errors fail the test (`-v fatal`, no `-xerror`).
pub async fn decode_joining(url: &str, seconds: f64) -> Decoded {
    decode_args(url, &["-v", "fatal"], &["-t", &seconds.to_string()]).await
}

async fn decode_with(url: &str, output_options: &[&str]) -> Decoded {
    decode_args(url, &["-xerror"], output_options).await
}

async fn decode_args(url: &str, input_options: &[&str], output_options: &[&str]) -> Decoded {
    let mut arguments = input_options.to_vec();
    arguments.extend_from_slice(&["-i", url, "-map", "0"]);
    arguments.extend_from_slice(output_options);
    arguments.extend_from_slice(&["-f", "null", "-", "-progress", "pipe:1"]);
    let progress = player("ffmpeg", &arguments).await;
    let last = |key: &str| -> u64 {
        progress
            .lines()
            .rev()
            .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .find_map(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in ffmpeg progress:\n{progress}"))
    };
    Decoded {
        seconds: last("out_time_us") as f64 / 1e6,
        frames: last("frame"),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Serves `live/` as a live stream at `path`: a window of [`LIVE_WINDOW`] segments that
/// advances one segment per target duration, without `EXT-X-ENDLIST` until the source runs
/// out. `path` must sit in `PREFIX/live/` so the relative segment URIs resolve. The task
/// ends with the test's runtime.
pub fn live_window(origin: &Origin, path: &str) -> tokio::task::JoinHandle<()> {
    assert!(path.starts_with(&format!("{PREFIX}/live/")), "{path}");
    let vod = String::from_utf8(media().read("live/index.m3u8")).expect("UTF-8 playlist");
    let segments = vod_segments(&vod);
    assert_eq!(segments.len(), LIVE_SEGMENTS, "{vod}");
    let window = move |first: usize, end: bool| {
        let mut playlist = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:{first}\n"
        );
        for (extinf, uri) in &segments[first..first + LIVE_WINDOW] {
            playlist.push_str(&format!("{extinf}\n{uri}\n"));
        }
        if end {
            playlist.push_str("#EXT-X-ENDLIST\n");
        }
        playlist
    };
    let origin = origin.clone();
    let path = path.to_owned();
    let publish = move |text: String| origin.put(&path, text, "application/vnd.apple.mpegurl");
    publish(window(0, false));
    tokio::spawn(async move {
        let last = LIVE_SEGMENTS - LIVE_WINDOW;
        for first in 1..=last {
            tokio::time::sleep(Duration::from_secs(1)).await;
            publish(window(first, first == last));
        }
    })
}

/// `(#EXTINF line, URI)` pairs of a simple VOD media playlist.
fn vod_segments(playlist: &str) -> Vec<(String, String)> {
    let mut lines = playlist.lines();
    let mut segments = Vec::new();
    while let Some(line) = lines.next() {
        if line.starts_with("#EXTINF") {
            let uri = lines.next().expect("URI after EXTINF");
            segments.push((line.to_owned(), uri.to_owned()));
        }
    }
    segments
}
