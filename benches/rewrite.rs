//! Micro-benchmarks of the HLS rewriter (`cargo bench --bench rewrite`).
//!
//! The playlists are generated here, shaped like what live origins send; the mapper writes a
//! reference as long as a signed one but does no cryptography, so the figures measure the
//! rewriter itself. The `reference` group measures the references alone (encode, decode) and
//! a rewrite with real ones. Results are recorded in BENCHMARKS.md ("Rewriter
//! micro-benchmarks", "Opaque references: what the encryption costs").

use std::fmt::Write;

use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use m3u_proxy::playlist::{rewrite, UriKind};
use url::Url;

fn main() {
    divan::main();
}

/// A live sliding window of `segments` MPEG-TS segments, with a date every tenth segment.
fn live_playlist(segments: usize) -> String {
    let mut text = String::from(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n#EXT-X-MEDIA-SEQUENCE:1804123\n",
    );
    text.push_str("#EXT-X-KEY:METHOD=AES-128,URI=\"https://keys.example.com/k?id=1\"\n");
    for n in 0..segments {
        if n % 10 == 0 {
            let seconds = n * 6 % 60;
            writeln!(
                text,
                "#EXT-X-PROGRAM-DATE-TIME:2026-11-24T01:00:{seconds:02}.000Z"
            )
            .unwrap();
        }
        writeln!(text, "#EXTINF:6.006,\nmedia_b2000000_{}.ts", 1_804_123 + n).unwrap();
    }
    text
}

/// A master playlist with `variants` variants, four audio renditions and two subtitles.
fn master_playlist(variants: usize) -> String {
    let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for lang in ["en", "fr", "de", "es"] {
        writeln!(
            text,
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",LANGUAGE=\"{lang}\",NAME=\"{lang}\",AUTOSELECT=YES,DEFAULT=NO,CHANNELS=\"2\",URI=\"audio/{lang}/index.m3u8\""
        )
        .unwrap();
    }
    for lang in ["en", "fr"] {
        writeln!(
            text,
            "#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",LANGUAGE=\"{lang}\",NAME=\"{lang}\",AUTOSELECT=YES,URI=\"subs/{lang}/index.m3u8\""
        )
        .unwrap();
    }
    for v in 0..variants {
        let bandwidth = 200_000 + v * 150_000;
        writeln!(
            text,
            "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},AVERAGE-BANDWIDTH={},CODECS=\"avc1.640028,mp4a.40.2\",RESOLUTION=1920x1080,FRAME-RATE=29.970,AUDIO=\"aac\",SUBTITLES=\"subs\"\nvideo/{v}/index.m3u8?token=0123456789abcdef",
            bandwidth * 9 / 10
        )
        .unwrap();
    }
    text
}

/// `live_playlist` cut to about 100 KB at a line boundary.
fn playlist_of_100_kb() -> String {
    let mut text = live_playlist(3000);
    let cut = text[..100 * 1024].rfind('\n').unwrap() + 1;
    text.truncate(cut);
    text
}

/// A reference the size of a signed one (about 100 bytes), keeping the file name.
fn reference(url: &Url, _kind: UriKind) -> String {
    let name = url.path().rsplit('/').next().unwrap_or("");
    let mut out = String::with_capacity(96 + name.len());
    out.push_str("../../r/Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4/");
    out.push_str(name);
    out
}

fn bench_rewrite(bencher: Bencher, text: &str) {
    let base = Url::parse("https://origin.example.com/live/ch1/chunklist.m3u8?token=abc").unwrap();
    bencher
        .counter(BytesCount::new(text.len()))
        .bench(|| rewrite(black_box(text), &base, reference));
}

#[divan::bench]
fn live_5000_segments(bencher: Bencher) {
    bench_rewrite(bencher, &live_playlist(5000));
}

#[divan::bench]
fn master_60_variants(bencher: Bencher) {
    bench_rewrite(bencher, &master_playlist(60));
}

#[divan::bench]
fn media_100_kb(bencher: Bencher) {
    bench_rewrite(bencher, &playlist_of_100_kb());
}

/// What a reference costs: [`Signer`] on a typical IPTV segment URL with credentials in the
/// path and a token in the query, for one viewer.
mod reference {
    use divan::{black_box, Bencher};
    use m3u_proxy::playlist::UriKind;
    use m3u_proxy::proxy_url::{Signer, Target};

    const STREAM: &str = "9f2c4e1a7b3d5f60";

    fn target() -> Target {
        Target {
            url: "https://provider.example.com/live/user123/pass456/1804123.ts?token=0123456789abcdef&expires=1764000000".into(),
            kind: UriKind::Media,
            client_id: Some("living-room-tv".into()),
        }
    }

    #[divan::bench]
    fn encode(bencher: Bencher) {
        let (signer, target) = (Signer::new(b"bench-secret"), target());
        bencher.bench(|| signer.encode(black_box(STREAM), black_box(&target)));
    }

    #[divan::bench]
    fn decode(bencher: Bencher) {
        let signer = Signer::new(b"bench-secret");
        let token = signer.token(STREAM, &target());
        bencher.bench(|| signer.decode(black_box(STREAM), black_box(&token)));
    }

    /// The whole rewrite of a 5,000-segment live window with real references.
    #[divan::bench]
    fn live_5000_segments_signed(bencher: Bencher) {
        let signer = Signer::new(b"bench-secret");
        let text = super::live_playlist(5000);
        let base = url::Url::parse("https://origin.example.com/live/ch1/chunklist.m3u8?token=abc")
            .unwrap();
        bencher
            .counter(divan::counter::BytesCount::new(text.len()))
            .bench(|| {
                m3u_proxy::playlist::rewrite(black_box(&text), &base, |url, kind| {
                    let target = Target {
                        url: url.to_string(),
                        kind,
                        client_id: Some("living-room-tv".into()),
                    };
                    signer.encode(STREAM, &target)
                })
            });
    }
}
