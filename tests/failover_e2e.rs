//! Failover with a real player: ffmpeg decodes a live stream through the proxy while the
//! primary origin dies. For live TS the longest stretch without a newly decoded frame and
//! the time from the primary's death to the backup's first byte are measured and asserted;
//! for HLS, ffmpeg must not report a single error.
//!
//! Needs ffmpeg on the PATH; [`media::require_ffmpeg`] is the skip rule (a loud `SKIPPED`
//! line on the terminal, a failure when `CI` is set). `FAILOVER_E2E_RUNS=N` repeats
//! the live TS measurement N times and prints the median (the figure in the benchmarks);
//! `FAILOVER_E2E_RETRIES=N` overrides the same-URL retries for it.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::util::media;
use crate::util::origin::{Origin, TS_PACKET};
use crate::util::temp_dir::TempDir;
use crate::util::{poll_for, Proxy};

/// Runs ffmpeg to completion with `args`, panicking with its stderr on failure.
async fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .await
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Test pattern and a tone, MPEG-2 video with a keyframe every half second and MP2 audio:
/// codecs every ffmpeg build has.
const SOURCE: [&str; 14] = [
    "-f",
    "lavfi",
    "-i",
    "testsrc=size=320x240:rate=25",
    "-f",
    "lavfi",
    "-i",
    "sine=frequency=440:sample_rate=48000",
    "-c:v",
    "mpeg2video",
    "-g",
    "12",
    "-c:a",
    "mp2",
];

/// `seconds` of live-looking MPEG-TS.
async fn encode_ts(dir: &Path, seconds: u32) -> Bytes {
    let out = dir.join("channel.ts");
    let t = seconds.to_string();
    let mut args: Vec<&str> = SOURCE.to_vec();
    args.extend(["-t", &t, "-b:v", "800k", "-f", "mpegts"]);
    args.push(out.to_str().unwrap());
    ffmpeg(&args).await;
    Bytes::from(std::fs::read(out).unwrap())
}

/// A live MPEG-TS channel served at its own bitrate from a shared `epoch`, so two servers
/// of one channel send the same bytes at the same moment, like two CDNs of one broadcast.
struct PacedTs {
    addr: std::net::SocketAddr,
    killed: CancellationToken,
    first_write: Arc<Mutex<Option<Instant>>>,
}

impl PacedTs {
    async fn start(file: Bytes, seconds: u32, epoch: Instant) -> PacedTs {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let killed = CancellationToken::new();
        let first_write = Arc::new(Mutex::new(None));
        let bytes_per_sec = file.len() as f64 / f64::from(seconds);
        let (token, first) = (killed.clone(), first_write.clone());
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    _ = token.cancelled() => return, // drops the listener: refused from now
                };
                let (file, token, first) = (file.clone(), token.clone(), first.clone());
                tokio::spawn(async move {
                    let mut head = [0u8; 4096];
                    let _ = tcp.read(&mut head).await;
                    let ok =
                        b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n";
                    if tcp.write_all(ok).await.is_err() {
                        return;
                    }
                    let due = || {
                        let at = epoch.elapsed().as_secs_f64() * bytes_per_sec;
                        at as usize / TS_PACKET * TS_PACKET
                    };
                    // Start a second behind the live edge, as a CDN's burst would.
                    let mut sent =
                        due().saturating_sub(bytes_per_sec as usize / TS_PACKET * TS_PACKET);
                    let mut tick = tokio::time::interval(Duration::from_millis(20));
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = token.cancelled() => return, // a crash: the socket drops
                        }
                        let now = due();
                        while sent < now {
                            let at = sent % file.len();
                            let n = (now - sent).min(file.len() - at);
                            if tcp.write_all(&file[at..at + n]).await.is_err() {
                                return;
                            }
                            first.lock().unwrap().get_or_insert_with(Instant::now);
                            sent += n;
                        }
                    }
                });
            }
        });
        PacedTs {
            addr,
            killed,
            first_write,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn kill(&self) {
        self.killed.cancel();
    }

    fn first_write(&self) -> Option<Instant> {
        *self.first_write.lock().unwrap()
    }
}

/// ffmpeg decoding `url` to nowhere, reporting decoded frames as it goes.
struct Player {
    child: Child,
    /// (when, frames decoded so far), every 100 ms.
    progress: Arc<Mutex<Vec<(Instant, u64)>>>,
    stderr: Arc<Mutex<String>>,
}

impl Player {
    fn start(url: &str) -> Player {
        let mut child = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "warning"])
            .args(["-progress", "pipe:1", "-stats_period", "0.1"])
            .args(["-i", url, "-f", "null", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start ffmpeg");
        let progress = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let p = progress.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(n) = line.strip_prefix("frame=") {
                    let frames = n.trim().parse().unwrap_or(0);
                    p.lock().unwrap().push((Instant::now(), frames));
                }
            }
        });
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        let e = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                let mut all = e.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        Player {
            child,
            progress,
            stderr,
        }
    }

    fn frames(&self) -> u64 {
        self.progress.lock().unwrap().last().map_or(0, |p| p.1)
    }

    async fn wait_for_frames(&self, frames: u64, within: Duration) {
        let decoded = poll_for(within, || {
            let enough = self.frames() >= frames;
            async move { enough.then_some(()) }
        })
        .await;
        assert!(
            decoded.is_some(),
            "ffmpeg decoded {} frames, wanted {frames}; stderr:\n{}",
            self.frames(),
            self.stderr()
        );
    }

    /// The longest time without a newly decoded frame after `since`.
    fn longest_gap_after(&self, since: Instant) -> Duration {
        let progress = self.progress.lock().unwrap();
        let mut last_advance = since;
        let mut last_frames = progress
            .iter()
            .take_while(|(t, _)| *t <= since)
            .last()
            .map_or(0, |p| p.1);
        let mut longest = Duration::ZERO;
        for (t, frames) in progress.iter().filter(|(t, _)| *t > since) {
            if *frames > last_frames {
                longest = longest.max(t.duration_since(last_advance));
                last_advance = *t;
                last_frames = *frames;
            }
        }
        let tail = progress.last().map_or(since, |p| p.0);
        longest.max(tail.saturating_duration_since(last_advance))
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    async fn stop(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.stderr()
    }
}

/// One live TS failover: (gap in decoded frames, primary death to backup's first byte).
async fn live_ts_failover_once(file: &Bytes, seconds: u32) -> (Duration, Duration) {
    let epoch = Instant::now();
    let a = PacedTs::start(file.clone(), seconds, epoch).await;
    let b = PacedTs::start(file.clone(), seconds, epoch).await;
    // Default failover settings (the figure a user gets), unless FAILOVER_E2E_RETRIES says.
    let retries = std::env::var("FAILOVER_E2E_RETRIES")
        .ok()
        .and_then(|v| v.parse().ok());
    let proxy = Proxy::start_with(|c| {
        if let Some(r) = retries {
            c.failover.retries = r;
        }
    })
    .await;
    let (id, _) = proxy
        .register(&a.url("/live.ts"), &[b.url("/live.ts")])
        .await;
    let player = Player::start(&proxy.url(&format!("/stream/{id}")));
    player.wait_for_frames(75, Duration::from_secs(20)).await;

    a.kill();
    let killed = Instant::now();
    let frames_at_kill = player.frames();
    // Decoding goes on: 75 more frames (3 s of video) through the backup.
    player
        .wait_for_frames(frames_at_kill + 75, Duration::from_secs(20))
        .await;
    let gap = player.longest_gap_after(killed);
    player.stop().await;

    let first_backup_byte = b
        .first_write()
        .expect("the backup was asked for the channel")
        .duration_since(killed);
    let info = proxy.get_json(&format!("/streams/{id}")).await;
    assert_eq!(info["stream"]["current_url"], b.url("/live.ts"));
    assert_eq!(info["stream"]["failover_count"], 1);
    (gap, first_backup_byte)
}

#[tokio::test]
async fn ffmpeg_keeps_decoding_live_ts_when_the_primary_dies() {
    if !media::require_ffmpeg() {
        return;
    }
    let dir = TempDir::new("failover-e2e-ts");
    let seconds = 60;
    let file = encode_ts(dir.path(), seconds).await;
    let runs: usize = std::env::var("FAILOVER_E2E_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut gaps = Vec::new();
    let mut first_bytes = Vec::new();
    for run in 0..runs {
        let (gap, first_byte) = live_ts_failover_once(&file, seconds).await;
        eprintln!(
            "live TS failover run {}: longest gap in decoded frames {:?}, primary death to backup's first byte {:?}",
            run + 1,
            gap,
            first_byte
        );
        assert!(gap < Duration::from_secs(3), "decoding gap {gap:?}");
        gaps.push(gap);
        first_bytes.push(first_byte);
    }
    gaps.sort();
    first_bytes.sort();
    eprintln!(
        "live TS failover over {runs} runs: median gap {:?}, median death-to-first-byte {:?} (min {:?}, max {:?})",
        gaps[runs / 2],
        first_bytes[runs / 2],
        first_bytes[0],
        first_bytes[runs - 1]
    );
}

/// Encodes `seconds` into one-second HLS segments; returns their names and durations.
async fn encode_hls(dir: &Path, seconds: u32) -> Vec<(String, f64)> {
    let t = seconds.to_string();
    let pattern = dir.join("seg%03d.ts");
    let list = dir.join("all.m3u8");
    let mut args: Vec<&str> = SOURCE.to_vec();
    args.extend(["-t", &t, "-b:v", "600k", "-f", "hls", "-hls_time", "1"]);
    args.extend(["-hls_list_size", "0", "-hls_segment_filename"]);
    args.push(pattern.to_str().unwrap());
    args.push(list.to_str().unwrap());
    ffmpeg(&args).await;
    let text = std::fs::read_to_string(list).unwrap();
    let mut segments = Vec::new();
    let mut duration = 0.0;
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("#EXTINF:") {
            duration = d.trim_end_matches(',').parse().unwrap();
        } else if !line.starts_with('#') && !line.is_empty() {
            segments.push((line.to_string(), duration));
        }
    }
    segments
}

/// The live window at `elapsed`: the last five segments that have "happened".
fn live_window(segments: &[(String, f64)], elapsed: f64) -> String {
    let mut end = 0.0;
    // Three segments are there from the start, so a player can begin at once.
    let available = segments
        .iter()
        .take_while(|(_, d)| {
            end += d;
            end <= elapsed + 3.0
        })
        .count()
        .max(3);
    let first = available.saturating_sub(5);
    let mut text = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{first}\n"
    );
    for (name, d) in &segments[first..available] {
        text.push_str(&format!("#EXTINF:{d:.3},\n{name}\n"));
    }
    text
}

#[tokio::test]
async fn ffmpeg_plays_hls_through_a_primary_death_without_an_error() {
    if !media::require_ffmpeg() {
        return;
    }
    let dir = TempDir::new("failover-e2e-hls");
    let segments = encode_hls(dir.path(), 40).await;
    let a = Arc::new(Origin::start().await);
    let b = Arc::new(Origin::start().await);
    for o in [&a, &b] {
        o.serve_dir("/ch", dir.path());
    }
    let started = Instant::now();
    let (pa, pb, segs) = (a.clone(), b.clone(), segments.clone());
    let updater = tokio::spawn(async move {
        loop {
            let text = live_window(&segs, started.elapsed().as_secs_f64());
            for o in [&pa, &pb] {
                o.put(
                    "/ch/live.m3u8",
                    text.clone(),
                    "application/vnd.apple.mpegurl",
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let proxy = Proxy::start().await;
    let (status, created) = proxy
        .post_stream(
            json!({"url": a.url("/ch/live.m3u8"), "failover_urls": [b.url("/ch/live.m3u8")]}),
        )
        .await;
    assert!(status.is_success());
    let id = created["stream_id"].as_str().unwrap().to_string();
    let player = Player::start(&proxy.url(&format!("/hls/{id}/playlist.m3u8")));
    player.wait_for_frames(75, Duration::from_secs(20)).await;

    a.kill().await;
    let killed = Instant::now();
    let frames_at_kill = player.frames();
    player
        .wait_for_frames(frames_at_kill + 150, Duration::from_secs(30))
        .await;
    let gap = player.longest_gap_after(killed);
    let stderr = player.stop().await;
    updater.abort();

    eprintln!("HLS failover: longest gap in decoded frames {gap:?}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("fail")
        })
        .collect();
    assert!(errors.is_empty(), "the player reported: {errors:#?}");
    assert!(gap < Duration::from_secs(3), "decoding gap {gap:?}");
    let info = proxy.get_json(&format!("/streams/{id}")).await;
    assert_eq!(info["stream"]["current_url"], b.url("/ch/live.m3u8"));
    assert_eq!(info["stream"]["failover_count"], 1);
}
