//! Tests of the HLS rewriter: unit tests of each rule, snapshots over the fixtures in
//! `tests/fixtures/playlists/`, and property tests of losslessness on generated and
//! arbitrary input.

use proptest::prelude::*;
use url::Url;

use super::{looks_like_playlist, rewrite, PlaylistInfo, PlaylistKind, Rewrite, UriKind};

const BASE: &str = "https://origin.example.com/live/ch1/index.m3u8?token=s3cr%20et";

fn base() -> Url {
    Url::parse(BASE).unwrap()
}

/// A readable mapper for examples and snapshots.
fn tagged(url: &Url, kind: UriKind) -> String {
    format!("<{kind:?} {url}>")
}

fn rewrite_tagged(text: &str) -> Rewrite {
    rewrite(text, &base(), tagged)
}

// ---------------------------------------------------------------------------------------
// An injective mapper: marker + kind + hex of the URL, so every output can be inverted.

const OPEN: char = '⟦';
const CLOSE: char = '⟧';

fn marker(url: &Url, kind: UriKind) -> String {
    let kind = match kind {
        UriKind::Playlist => 'P',
        UriKind::Media => 'M',
        UriKind::Key => 'K',
    };
    let hex: String = url.as_str().bytes().map(|b| format!("{b:02x}")).collect();
    format!("{OPEN}{kind}{hex}{CLOSE}")
}

/// Inverts [`marker`]: the URL and kind it encodes.
fn unmark(token: &str) -> (Url, UriKind) {
    let kind = match token.as_bytes()[0] {
        b'P' => UriKind::Playlist,
        b'M' => UriKind::Media,
        b'K' => UriKind::Key,
        other => panic!("bad kind {other}"),
    };
    let hex = &token[1..];
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    (
        Url::parse(&String::from_utf8(bytes).unwrap()).unwrap(),
        kind,
    )
}

/// Splits an output line into its literal pieces and the decoded markers between them.
fn split_markers(line: &str) -> (Vec<&str>, Vec<(Url, UriKind)>) {
    let mut pieces = Vec::new();
    let mut marks = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find(OPEN) {
        pieces.push(&rest[..open]);
        let after = &rest[open + OPEN.len_utf8()..];
        let close = after.find(CLOSE).expect("marker closes");
        marks.push(unmark(&after[..close]));
        rest = &after[close + CLOSE.len_utf8()..];
    }
    pieces.push(rest);
    (pieces, marks)
}

/// The invariants that hold for any input, rewritten with [`marker`]: same number of lines;
/// lines without a reference are byte-identical; in the others, the bytes around the
/// references appear in the input line in the same order, and every reference decodes to
/// an absolute http(s) URL.
fn assert_lossless(input: &str, output: &str) -> Result<(), TestCaseError> {
    let input_lines: Vec<&str> = input.split('\n').collect();
    let output_lines: Vec<&str> = output.split('\n').collect();
    prop_assert_eq!(input_lines.len(), output_lines.len(), "line count");
    for (input_line, output_line) in input_lines.iter().zip(&output_lines) {
        let (pieces, marks) = split_markers(output_line);
        if marks.is_empty() {
            prop_assert_eq!(input_line, output_line);
            continue;
        }
        let first = pieces[0];
        let last = pieces[pieces.len() - 1];
        prop_assert!(
            input_line.starts_with(first),
            "{input_line:?} vs {output_line:?}"
        );
        prop_assert!(
            input_line.ends_with(last),
            "{input_line:?} vs {output_line:?}"
        );
        let mut at = first.len();
        for piece in &pieces[1..pieces.len() - 1] {
            let found = input_line[at..].find(piece);
            prop_assert!(found.is_some(), "{input_line:?} vs {output_line:?}");
            at += found.unwrap_or(0) + piece.len();
        }
        prop_assert!(at <= input_line.len() - last.len());
        for (url, _) in &marks {
            prop_assert!(matches!(url.scheme(), "http" | "https"));
        }
    }
    Ok(())
}

fn kinds(text: &str) -> Vec<(String, UriKind)> {
    let mut seen = Vec::new();
    rewrite(text, &base(), |url, kind| {
        seen.push((url.to_string(), kind));
        String::from("x")
    });
    seen
}

// ---------------------------------------------------------------------------------------
// Unit tests: one rule each.

#[test]
fn media_playlist_segments_are_spliced_and_nothing_else_changes() {
    let text = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.000,\nseg1.ts\n#EXTINF:10.000,\nseg2.ts\n#EXT-X-ENDLIST\n";
    let out = rewrite(text, &base(), |url, _| {
        format!("../r/{}", url.path_segments().unwrap().next_back().unwrap())
    });
    assert_eq!(
        out.text,
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.000,\n../r/seg1.ts\n#EXTINF:10.000,\n../r/seg2.ts\n#EXT-X-ENDLIST\n"
    );
}

#[test]
fn the_line_after_stream_inf_is_a_playlist_whatever_its_name() {
    let text = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nindex?id=7\n#EXT-X-STREAM-INF:BANDWIDTH=2\n# comment between\n\nvideo.ts\nplain.ts\n";
    assert_eq!(
        kinds(text),
        vec![
            (
                "https://origin.example.com/live/ch1/index?id=7".into(),
                UriKind::Playlist
            ),
            (
                "https://origin.example.com/live/ch1/video.ts".into(),
                UriKind::Playlist
            ),
            (
                "https://origin.example.com/live/ch1/plain.ts".into(),
                UriKind::Media
            ),
        ]
    );
}

#[test]
fn every_uri_tag_gets_its_kind() {
    let text = r#"#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",URI="media.m3u8"
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI="iframe"
#EXT-X-IMAGE-STREAM-INF:BANDWIDTH=1,URI="images.m3u8"
#EXT-X-RENDITION-REPORT:URI="report",LAST-MSN=1
#EXT-X-MAP:URI="init"
#EXT-X-PART:DURATION=1,URI="part"
#EXT-X-PRELOAD-HINT:TYPE=PART,URI="hint"
#EXT-X-KEY:METHOD=AES-128,URI="key"
#EXT-X-SESSION-KEY:METHOD=AES-128,URI="session-key"
#EXT-X-SESSION-DATA:DATA-ID="d",URI="data.json"
#EXT-X-CONTENT-STEERING:SERVER-URI="steer"
#EXT-X-DATERANGE:ID="i",X-ASSET-URI="asset",X-ASSET-LIST="list"
#EXT-X-UNKNOWN:URI="unknown"
#EXT-X-STREAM-INF:URI="not-an-attribute-here"
variant
segment
"#;
    let got: Vec<(String, UriKind)> = kinds(text)
        .into_iter()
        .map(|(url, kind)| (url.rsplit('/').next().unwrap().to_string(), kind))
        .collect();
    let expected = [
        ("media.m3u8", UriKind::Playlist),
        ("iframe", UriKind::Playlist),
        ("images.m3u8", UriKind::Playlist),
        ("report", UriKind::Playlist),
        ("init", UriKind::Media),
        ("part", UriKind::Media),
        ("hint", UriKind::Media),
        ("key", UriKind::Key),
        ("session-key", UriKind::Key),
        ("data.json", UriKind::Media),
        ("steer", UriKind::Media),
        ("asset", UriKind::Playlist),
        ("list", UriKind::Media),
        ("variant", UriKind::Playlist),
        ("segment", UriKind::Media),
    ];
    let expected: Vec<(String, UriKind)> =
        expected.iter().map(|(n, k)| (n.to_string(), *k)).collect();
    assert_eq!(got, expected);
}

#[test]
fn attributes_match_only_at_boundaries_and_quoted_commas_are_respected() {
    let text = concat!(
        "#EXT-X-KEY:METHOD=AES-128,X-URI=\"x.key\",URI2=\"y.key\",URI=\"k.key\"\n",
        "#EXT-X-MEDIA:NAME=\"a,URI=evil.m3u8\",URI=\"real.m3u8\"\n",
        "#EXT-X-DATERANGE:ID=\"d\",URI=\"not-for-daterange\",X-ASSET-URI-X=\"no\",X-ASSET-URI=\"yes\"\n",
    );
    let out = rewrite_tagged(text);
    assert_eq!(
        out.text,
        concat!(
            "#EXT-X-KEY:METHOD=AES-128,X-URI=\"x.key\",URI2=\"y.key\",URI=\"<Key https://origin.example.com/live/ch1/k.key>\"\n",
            "#EXT-X-MEDIA:NAME=\"a,URI=evil.m3u8\",URI=\"<Playlist https://origin.example.com/live/ch1/real.m3u8>\"\n",
            "#EXT-X-DATERANGE:ID=\"d\",URI=\"not-for-daterange\",X-ASSET-URI-X=\"no\",X-ASSET-URI=\"<Playlist https://origin.example.com/live/ch1/yes>\"\n",
        )
    );
}

#[test]
fn non_http_schemes_empty_and_broken_uris_stay_byte_for_byte() {
    let text = concat!(
        "#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"skd://fps.example.com/1\",KEYFORMAT=\"com.apple.streamingkeydelivery\"\n",
        "#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"data:text/plain;base64,AAAA\"\n",
        "#EXT-X-KEY:METHOD=AES-128,URI=\"\"\n",
        "#EXT-X-KEY:METHOD=AES-128,URI=\"unterminated.key\n",
        "#EXT-X-KEY:METHOD=AES-128,uri=\"lower-case-name.key\"\n",
        "#EXT-X-MAP:URI=\"http://[::1/init.mp4\"\n",
        "ftp://files.example.com/seg.ts\n",
        "rtmp://live.example.com/app/stream\n",
        "mailto:someone@example.com\n",
    );
    let mut calls = 0;
    let out = rewrite(text, &base(), |_, _| {
        calls += 1;
        String::new()
    });
    assert_eq!(out.text, text);
    assert_eq!(calls, 0);
    assert_eq!(
        out.info.segments, 3,
        "non-http URI lines are still segments"
    );
}

#[test]
fn unquoted_uri_values_are_rewritten_too() {
    let out = rewrite_tagged("#EXT-X-KEY:METHOD=AES-128,URI=k.key ,IV=0x1\n");
    assert_eq!(
        out.text,
        "#EXT-X-KEY:METHOD=AES-128,URI=<Key https://origin.example.com/live/ch1/k.key> ,IV=0x1\n"
    );
}

#[test]
fn blanks_around_uris_and_line_ends_are_kept() {
    let text = "\u{feff}#EXTM3U\r\n  seg1.ts \t\r\n\tseg2.ts\rseg3.ts\n#EXT-X-MAP:URI=\" init.mp4 \"\r\nlast.ts";
    let out = rewrite(text, &base(), |url, _| {
        url.path().rsplit('/').next().unwrap().to_uppercase()
    });
    assert_eq!(
        out.text,
        "\u{feff}#EXTM3U\r\n  SEG1.TS \t\r\n\tSEG2.TS\rSEG3.TS\n#EXT-X-MAP:URI=\" INIT.MP4 \"\r\nLAST.TS"
    );
}

#[test]
fn a_byte_order_mark_never_hides_a_tag() {
    let text = "\u{feff}#EXTM3U\n\u{feff}#EXT-X-KEY:METHOD=AES-128,URI=\"k\"\n\u{feff}#EXT-X-ENDLIST\n\u{feff}seg.ts\n";
    let out = rewrite(text, &base(), |_, kind| format!("{kind:?}"));
    assert_eq!(
        out.text,
        "\u{feff}#EXTM3U\n\u{feff}#EXT-X-KEY:METHOD=AES-128,URI=\"Key\"\n\u{feff}#EXT-X-ENDLIST\n\u{feff}Media\n"
    );
    assert!(out.info.ended);
}

#[test]
fn blank_and_comment_lines_are_not_uris() {
    let text = "#EXTM3U\n\n   \n\t\r\n# just a comment\n  # indented comment\n#EXTINF:1,\nseg.ts\n";
    let out = rewrite_tagged(text);
    assert_eq!(out.info.segments, 1);
    assert_eq!(
        out.text,
        "#EXTM3U\n\n   \n\t\r\n# just a comment\n  # indented comment\n#EXTINF:1,\n<Media https://origin.example.com/live/ch1/seg.ts>\n"
    );
}

#[test]
fn uris_resolve_per_rfc_3986_against_the_final_url() {
    let cases = [
        ("seg.ts", "https://origin.example.com/live/ch1/seg.ts"),
        ("./a/../b.ts", "https://origin.example.com/live/ch1/b.ts"),
        ("../up.ts", "https://origin.example.com/live/up.ts"),
        ("/root.ts?q=1", "https://origin.example.com/root.ts?q=1"),
        ("//edge.example.net/x.ts", "https://edge.example.net/x.ts"),
        (
            "http://other.example.com:8080/y.ts#frag",
            "http://other.example.com:8080/y.ts#frag",
        ),
        (
            "?only=query",
            "https://origin.example.com/live/ch1/index.m3u8?only=query",
        ),
        (
            "s%2Fa b.ts?x=%2F",
            "https://origin.example.com/live/ch1/s%2Fa%20b.ts?x=%2F",
        ),
    ];
    for (uri, expected) in cases {
        let got = kinds(&format!("{uri}\n"));
        assert_eq!(got, vec![(expected.to_string(), UriKind::Media)], "{uri}");
    }
    // A fragment-only reference can only appear in an attribute (a line would be a comment).
    assert_eq!(
        kinds("#EXT-X-MAP:URI=\"#init\"\n")[0].0,
        "https://origin.example.com/live/ch1/index.m3u8?token=s3cr%20et#init"
    );
}

/// RFC 3986 §5.4 reference resolution examples, as URI lines (`#s` as an attribute, since
/// a line starting with `#` is a comment). `g:h` is another scheme, so it is left alone.
#[test]
fn rfc_3986_resolution_examples() {
    let base = Url::parse("http://a/b/c/d;p?q").unwrap();
    let cases = [
        ("g:h", None),
        ("g", Some("http://a/b/c/g")),
        ("./g", Some("http://a/b/c/g")),
        ("g/", Some("http://a/b/c/g/")),
        ("/g", Some("http://a/g")),
        ("//g", Some("http://g/")),
        ("?y", Some("http://a/b/c/d;p?y")),
        ("g?y", Some("http://a/b/c/g?y")),
        ("g#s", Some("http://a/b/c/g#s")),
        ("g?y#s", Some("http://a/b/c/g?y#s")),
        (";x", Some("http://a/b/c/;x")),
        ("g;x?y#s", Some("http://a/b/c/g;x?y#s")),
        (".", Some("http://a/b/c/")),
        ("..", Some("http://a/b/")),
        ("../g", Some("http://a/b/g")),
        ("../../g", Some("http://a/g")),
        ("../../../g", Some("http://a/g")),
        ("/./g", Some("http://a/g")),
        ("g.", Some("http://a/b/c/g.")),
        ("..g", Some("http://a/b/c/..g")),
        ("./../g", Some("http://a/b/g")),
        ("./g/.", Some("http://a/b/c/g/")),
        ("g/../h", Some("http://a/b/c/h")),
        ("g;x=1/../y", Some("http://a/b/c/y")),
        ("g?y/./x", Some("http://a/b/c/g?y/./x")),
        ("g#s/../x", Some("http://a/b/c/g#s/../x")),
    ];
    for (uri, expected) in cases {
        let mut seen = None;
        let out = rewrite(&format!("{uri}\n"), &base, |url, _| {
            seen = Some(url.to_string());
            "R".into()
        });
        assert_eq!(seen.as_deref(), expected, "{uri}");
        let written = if expected.is_some() {
            "R\n".to_string()
        } else {
            format!("{uri}\n")
        };
        assert_eq!(out.text, written, "{uri}");
    }
    let mut seen = Vec::new();
    rewrite("#EXT-X-MAP:URI=\"#s\"\n", &base, |url, _| {
        seen.push(url.to_string());
        "R".into()
    });
    assert_eq!(seen, ["http://a/b/c/d;p?q#s"]);
}

#[test]
fn pre_and_post_redirect_bases_give_different_urls() {
    let text = "#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"key\"\n#EXTINF:1,\nseg.ts\n";
    let before = Url::parse("http://entry.example.com/play/ch1.m3u8").unwrap();
    let after = Url::parse("https://edge7.cdn.example.net/hls/ch1/live.m3u8?s=1").unwrap();
    let urls = |base: &Url| {
        let mut seen = Vec::new();
        rewrite(text, base, |url, _| {
            seen.push(url.to_string());
            String::new()
        });
        seen
    };
    assert_eq!(
        urls(&before),
        [
            "http://entry.example.com/play/key",
            "http://entry.example.com/play/seg.ts"
        ]
    );
    assert_eq!(
        urls(&after),
        [
            "https://edge7.cdn.example.net/hls/ch1/key",
            "https://edge7.cdn.example.net/hls/ch1/seg.ts"
        ]
    );
}

#[test]
fn variables_are_substituted_when_defined_here() {
    let base = Url::parse("https://o.example.com/a/index.m3u8?token=t%201&x=2").unwrap();
    let text = concat!(
        "#EXT-X-DEFINE:NAME=\"host\",VALUE=\"https://cdn.example.com\"\n",
        "#EXT-X-DEFINE:QUERYPARAM=\"token\"\n",
        "#EXT-X-DEFINE:IMPORT=\"imported\"\n",
        "#EXT-X-MAP:URI=\"{$host}/init.mp4\"\n",
        "{$host}/seg.ts?token={$token}\n",
        "{$imported}/seg.ts\n",
        "{$host/literal.ts\n",
    );
    let mut seen = Vec::new();
    let out = rewrite(text, &base, |url, _| {
        seen.push(url.to_string());
        "R".into()
    });
    assert_eq!(
        seen,
        [
            "https://cdn.example.com/init.mp4",
            "https://cdn.example.com/seg.ts?token=t%201",
            "https://o.example.com/a/%7B$host/literal.ts",
        ]
    );
    assert!(out.text.contains("\n{$imported}/seg.ts\n"));
}

#[test]
fn playlist_info_is_collected() {
    let media = "#EXTM3U\n#EXT-X-TARGETDURATION:6.5\n#EXT-X-MEDIA-SEQUENCE: 42 \n#EXTINF:6,\na.ts\n#EXTINF:6,\nb.ts\n#EXT-X-TARGETDURATION:9\n#EXT-X-ENDLIST\n";
    assert_eq!(
        rewrite_tagged(media).info,
        PlaylistInfo {
            kind: PlaylistKind::Media,
            target_duration: Some(6.5),
            media_sequence: Some(42),
            ended: true,
            segments: 2,
            variants: vec![],
            i_frames: vec![],
            images: vec![],
            renditions: vec![],
        }
    );
    let master = "#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"x\",URI=\"a/en.m3u8\"\n#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID=\"cc\",NAME=\"cc\",INSTREAM-ID=\"CC1\"\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv1\n#EXT-X-STREAM-INF:BANDWIDTH=2\nskd://not-http\n#EXT-X-I-FRAME-STREAM-INF:URI=\"if.m3u8\"\n";
    assert_eq!(
        rewrite_tagged(master).info,
        PlaylistInfo {
            kind: PlaylistKind::Master,
            target_duration: None,
            media_sequence: None,
            ended: false,
            segments: 0,
            variants: vec!["https://origin.example.com/live/ch1/v1".into()],
            i_frames: vec!["https://origin.example.com/live/ch1/if.m3u8".into()],
            images: vec![],
            renditions: vec!["https://origin.example.com/live/ch1/a/en.m3u8".into()],
        }
    );
    let junk = "#EXT-X-TARGETDURATION:NaN\n#EXT-X-TARGETDURATION:inf\n#EXT-X-MEDIA-SEQUENCE:-1\n#EXT-X-TARGETDURATION\n";
    let info = rewrite_tagged(junk).info;
    assert_eq!((info.target_duration, info.media_sequence), (None, None));
}

#[test]
fn mapper_output_is_inserted_verbatim() {
    let out = rewrite("a.ts\n", &base(), |_, _| "../../x/ÿ?%zz&\t#".into());
    assert_eq!(out.text, "../../x/ÿ?%zz&\t#\n");
}

#[test]
fn playlist_sniffing() {
    assert!(looks_like_playlist("#EXTM3U\n#EXTINF:1,\na.ts\n"));
    assert!(looks_like_playlist("\u{feff}#EXTM3U\r\n"));
    assert!(looks_like_playlist("\n\n  \t#EXTM3U"));
    assert!(looks_like_playlist("\u{feff}\r\n#EXTM3U x-tvg-url=\"a\""));
    assert!(!looks_like_playlist(""));
    assert!(!looks_like_playlist("<!DOCTYPE html><html>#EXTM3U</html>"));
    assert!(!looks_like_playlist("{\"error\":\"not found\"}"));
    assert!(!looks_like_playlist("#EXTINF:1,\na.ts\n"));
    assert!(!looks_like_playlist("\u{0}\u{1}garbage"));
    assert!(!looks_like_playlist("\u{0}#EXTM3U"));
}

#[test]
fn extm3u_after_comments_blank_lines_and_a_bom_is_a_playlist() {
    assert!(looks_like_playlist(
        "# generated by packager 4.2\n#EXTM3U\n"
    ));
    assert!(looks_like_playlist(
        "\u{feff}\n  \t\r\n# comment\r#  another\r\n\n  #EXTM3U\n#EXTINF:1,\na.ts"
    ));
    assert!(looks_like_playlist("#\n#EXTM3U"));
    assert!(looks_like_playlist("# comment\n\u{feff}#EXTM3U"));
    // The first tag decides: HTML, JSON, text, or another tag first is not a playlist.
    assert!(!looks_like_playlist(
        "# comment\n<!DOCTYPE html>\n#EXTM3U\n"
    ));
    assert!(!looks_like_playlist(
        "\n\n<html><body>#EXTM3U</body></html>"
    ));
    assert!(!looks_like_playlist(
        "# comment\n#EXT-X-VERSION:3\n#EXTM3U\n"
    ));
    assert!(!looks_like_playlist("EXTM3U\n"));
    assert!(!looks_like_playlist("# only comments\n# and more\n"));
    assert!(!looks_like_playlist("  \r\n\t\r"));
}

#[test]
fn a_tag_behind_a_lone_cr_is_rewritten_and_its_leading_bytes_kept() {
    let text = "#EXTM3U\n    \r#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"s\",NAME=\"en\",URI=\"subs/en.m3u8\"\n\
                #EXT-X-STREAM-INF:BANDWIDTH=1,SUBTITLES=\"s\"\rv.m3u8\r\n#EXT-X-ENDLIST";
    let out = rewrite(text, &base(), |_, kind| format!("R{kind:?}"));
    assert_eq!(
        out.text,
        "#EXTM3U\n    \r#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"s\",NAME=\"en\",URI=\"RPlaylist\"\n\
         #EXT-X-STREAM-INF:BANDWIDTH=1,SUBTITLES=\"s\"\rRPlaylist\r\n#EXT-X-ENDLIST"
    );
    assert_eq!(out.info.kind, PlaylistKind::Master);
    assert_eq!(
        out.info.renditions,
        ["https://origin.example.com/live/ch1/subs/en.m3u8"]
    );
    assert_eq!(
        out.info.variants,
        ["https://origin.example.com/live/ch1/v.m3u8"]
    );
    assert!(out.info.ended);
}

#[test]
fn off_spec_fixtures_keep_every_byte_but_their_uris() {
    // Mapping every URI back to its own spelling gives the input byte for byte; mapping
    // to a constant changes exactly the URIs, each of which is seen.
    for (name, uris) in [("leading_comments", 3), ("mixed_line_ends", 7)] {
        let text = FIXTURES.iter().find(|f| f.0 == name).unwrap().1;
        assert!(looks_like_playlist(text), "{name}");
        let mut seen = Vec::new();
        let out = rewrite(text, &base(), |url, _| {
            seen.push(url.to_string());
            "R".into()
        });
        assert_eq!(seen.len(), uris, "{name}");
        let mut expected = text.to_string();
        for url in &seen {
            let written = url.rsplit_once("/ch1/").map_or(url.as_str(), |(_, p)| p);
            let at = expected
                .find(written)
                .unwrap_or_else(|| panic!("{name}: {written}"));
            expected.replace_range(at..at + written.len(), "R");
        }
        assert_eq!(out.text, expected, "{name}");
    }
}

#[test]
fn rewriting_is_deterministic() {
    for (name, text, _) in FIXTURES {
        let first = rewrite(text, &base(), marker);
        let second = rewrite(text, &base(), marker);
        assert_eq!(first, second, "{name}");
    }
}

#[test]
fn fixtures_are_rewritten_losslessly() {
    for (name, text, base) in FIXTURES {
        let base = Url::parse(base).unwrap();
        let out = rewrite(text, &base, marker);
        assert_lossless(text, &out.text).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------
// Large inputs: no panic, and linear enough to finish quickly even in a debug build.

#[test]
fn a_ten_megabyte_playlist() {
    let mut text = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n");
    let mut n = 0;
    while text.len() < 10 * 1024 * 1024 {
        text.push_str(&format!(
            "#EXT-X-PROGRAM-DATE-TIME:2026-11-24T01:00:00.000Z\n#EXTINF:2.000,\nsegment_{n:08}.ts\n"
        ));
        n += 1;
    }
    let out = rewrite(&text, &base(), |_, _| "s".into());
    assert_eq!(out.info.segments, n);
    assert_eq!(out.text.lines().count(), text.lines().count());
    assert_eq!(
        out.text.len(),
        text.len() - n * "segment_00000000.ts".len() + n
    );
}

#[test]
fn one_megabyte_lines() {
    let mega = "a".repeat(1024 * 1024);
    let cases = [
        format!("{mega}.ts\n"),
        format!("#EXT-X-KEY:METHOD=AES-128,URI=\"{mega}.key\"\n"),
        format!("#EXT-X-KEY:METHOD=AES-128,URI=\"{mega}"),
        format!("#EXT-X-MEDIA:{}", ",".repeat(1024 * 1024)),
        format!("#EXT-X-MEDIA:{}", "A=1,".repeat(256 * 1024)),
        format!("#EXT-X-MEDIA:{}", "\"".repeat(1024 * 1024)),
        format!("#EXTINF:{mega}"),
        "{$".repeat(512 * 1024),
    ];
    for text in &cases {
        let out = rewrite(text, &base(), marker);
        assert_lossless(text, &out.text).unwrap();
    }
    assert!(rewrite(&cases[0], &base(), marker).text.starts_with(OPEN));
    assert!(rewrite(&cases[1], &base(), marker).text.contains(OPEN));
    assert!(!rewrite(&cases[2], &base(), marker).text.contains(OPEN));
}

// ---------------------------------------------------------------------------------------
// Snapshots over the fixture set.

const FIXTURES: &[(&str, &str, &str)] = &[
    (
        "master_alternates",
        include_str!("../../tests/fixtures/playlists/master_alternates.m3u8"),
        "https://origin.example.com/vod/movie/master.m3u8",
    ),
    (
        "fmp4_map",
        include_str!("../../tests/fixtures/playlists/fmp4_map.m3u8"),
        "https://origin.example.com/vod/movie/v5/prog_index.m3u8",
    ),
    (
        "encrypted_keys",
        include_str!("../../tests/fixtures/playlists/encrypted_keys.m3u8"),
        "https://origin.example.com/live/secure/index.m3u8?auth=abc",
    ),
    (
        "byterange",
        include_str!("../../tests/fixtures/playlists/byterange.m3u8"),
        "http://origin.example.com/vod/single/main.m3u8",
    ),
    (
        "ll_hls",
        include_str!("../../tests/fixtures/playlists/ll_hls.m3u8"),
        "https://ll.example.com/2M/waitForMSN.php?_HLS_msn=273&_HLS_part=2&_HLS_skip=YES",
    ),
    (
        "discontinuity_scte35",
        include_str!("../../tests/fixtures/playlists/discontinuity_scte35.m3u8"),
        "https://origin.example.com/live/news/index.m3u8",
    ),
    (
        "session_data_keys",
        include_str!("../../tests/fixtures/playlists/session_data_keys.m3u8"),
        "https://origin.example.com/vod/album/master.m3u8",
    ),
    (
        "content_steering",
        include_str!("../../tests/fixtures/playlists/content_steering.m3u8"),
        "https://steer.example.com/video/00012/master.m3u8",
    ),
    (
        "interstitials",
        include_str!("../../tests/fixtures/playlists/interstitials.m3u8"),
        "https://origin.example.com/vod/show/prog_index.m3u8",
    ),
    (
        "live_window",
        include_str!("../../tests/fixtures/playlists/live_window.m3u8"),
        "http://wowza.example.com:1935/live/smil:ch1.smil/chunklist_b2000000.m3u8",
    ),
    (
        "crlf_bom",
        include_str!("../../tests/fixtures/playlists/crlf_bom.m3u8"),
        "https://origin.example.com/live/ch2/index.m3u8",
    ),
    (
        "loose_layout",
        include_str!("../../tests/fixtures/playlists/loose_layout.m3u8"),
        "https://origin.example.com/hand/made.m3u8",
    ),
    (
        "uri_forms",
        include_str!("../../tests/fixtures/playlists/uri_forms.m3u8"),
        BASE,
    ),
    (
        "leading_comments",
        include_str!("../../tests/fixtures/playlists/leading_comments.m3u8"),
        BASE,
    ),
    (
        "mixed_line_ends",
        include_str!("../../tests/fixtures/playlists/mixed_line_ends.m3u8"),
        BASE,
    ),
    (
        "iptv_channels",
        include_str!("../../tests/fixtures/playlists/iptv_channels.m3u"),
        "http://iptv.example.com:8080/get.php?username=user&password=pass&type=m3u_plus",
    ),
];

/// The rewritten text with invisible bytes made visible, then the collected info.
fn render(text: &str, base: &str) -> String {
    let out = rewrite(text, &Url::parse(base).unwrap(), tagged);
    let shown = out.text.replace('\u{feff}', "⟨BOM⟩").replace('\r', "␍");
    let end = if out.text.ends_with('\n') {
        ""
    } else {
        "⟨no newline at end⟩\n"
    };
    format!("base: {base}\n\n{shown}{end}\n{:#?}\n", out.info)
}

#[test]
fn fixture_snapshots() {
    for (name, text, base) in FIXTURES {
        insta::assert_snapshot!(*name, render(text, base));
    }
}

#[test]
fn redirect_snapshots() {
    let text = include_str!("../../tests/fixtures/playlists/master_alternates.m3u8");
    insta::assert_snapshot!(
        "redirect_before",
        render(text, "http://entry.example.com/channels/movie.m3u8")
    );
    insta::assert_snapshot!(
        "redirect_after",
        render(
            text,
            "https://edge-3.cdn.example.net/vod/movie/hd/master.m3u8?exp=1&sig=Zm9v"
        )
    );
}

#[test]
fn fixture_bytes_survive_where_no_uri_is() {
    // Exact bytes, independent of how snapshots treat line ends.
    let crlf = FIXTURES.iter().find(|f| f.0 == "crlf_bom").unwrap().1;
    let out = rewrite(crlf, &base(), |url, _| {
        url.path().rsplit('/').next().unwrap().to_string()
    });
    assert_eq!(out.text, crlf);
    assert!(out.text.starts_with("\u{feff}#EXTM3U\r\n"));
    assert!(out.text.ends_with("\r\nseg9.ts"));
    let out = rewrite(crlf, &base(), |_, _| "R".into());
    assert_eq!(
        out.text,
        "\u{feff}#EXTM3U\r\n#EXT-X-VERSION:3\r\n#EXT-X-TARGETDURATION:10\r\n#EXT-X-MEDIA-SEQUENCE:7\r\n#EXT-X-KEY:METHOD=AES-128,URI=\"R\"\r\n#EXTINF:10,\r\nR\r\n\r\n#EXTINF:10,\r\nR\r\n#EXTINF:10,\r\nR"
    );
}

// ---------------------------------------------------------------------------------------
// Property tests.

/// URIs of every form a playlist may hold (never starting with `#` or a blank, never
/// holding a quote or a line break).
fn any_uri() -> impl Strategy<Value = String> {
    let segment = "[A-Za-z0-9._~%,;=-]{1,10}";
    let path = proptest::collection::vec(segment, 1..4).prop_map(|s| s.join("/"));
    let host = "[a-z]{1,8}\\.example\\.(com|net)(:[0-9]{2,4})?";
    let query = proptest::option::of("[a-zA-Z0-9=&%,/]{0,10}")
        .prop_map(|q| q.map(|q| format!("?{q}")).unwrap_or_default());
    let fragment = proptest::option::of("[a-z0-9]{0,5}")
        .prop_map(|f| f.map(|f| format!("#{f}")).unwrap_or_default());
    let prefix = prop_oneof![
        Just(String::new()),
        Just("./".to_string()),
        Just("../".to_string()),
        Just("/".to_string()),
        host.prop_map(|h| format!("//{h}/")),
        (prop_oneof!["http", "https", "HTTP", "Https"], host)
            .prop_map(|(s, h)| format!("{s}://{h}/")),
    ];
    let structured =
        (prefix, path, query, fragment).prop_map(|(p, path, q, f)| format!("{p}{path}{q}{f}"));
    let odd = prop_oneof![
        Just("data:text/plain;base64,QUJD".to_string()),
        Just("skd://fps.example.com/key/1".to_string()),
        Just("ftp://files.example.com/a.ts".to_string()),
        Just("http://[::1/broken".to_string()),
        Just("http://".to_string()),
        Just("?q=1".to_string()),
        Just("seg:colon".to_string()),
        "[a-zé€😀\\\\ ]{1,8}".prop_filter("no outer blanks", |s| s.trim() == s),
        "[!-~&&[^\"#{]][ -~&&[^\"{]]{0,15}".prop_filter("no outer blanks", |s| s.trim() == s),
    ];
    prop_oneof![4 => structured, 1 => odd]
}

/// What a generated line holds: plain bytes, or bytes around one URI of a known kind.
#[derive(Debug, Clone)]
struct GenLine {
    before: String,
    uri: Option<(String, UriKind, Collect)>,
    after: String,
    master: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Collect {
    Segment,
    Variant,
    IFrame,
    Image,
    Rendition,
    Nothing,
}

fn plain(text: impl Into<String>) -> GenLine {
    GenLine {
        before: text.into(),
        uri: None,
        after: String::new(),
        master: false,
    }
}

/// Lines that hold no URI for the rewriter.
fn any_plain_line() -> impl Strategy<Value = GenLine> {
    prop_oneof![
        Just(plain("")),
        Just(plain("   \t")),
        Just(plain("#EXTM3U")),
        Just(plain("#EXT-X-ENDLIST")),
        Just(plain("#EXT-X-DISCONTINUITY")),
        Just(plain("#EXT-X-KEY:METHOD=NONE")),
        Just(plain("#EXT-X-KEY:METHOD=AES-128,uri=\"lower.key\"")),
        Just(plain("#EXT-X-UNKNOWN:URI=\"https://example.com/u.m3u8\"")),
        Just(plain("#EXT-X-DATERANGE:ID=\"x\",URI=\"not-here.m3u8\"")),
        Just(plain(
            "#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,INSTREAM-ID=\"CC1\""
        )),
        "#EXTINF:[0-9]{1,2}\\.[0-9]{3},[ -~]{0,12}".prop_map(plain),
        "# [ -~]{0,20}".prop_map(plain),
        "#EXT-X-Z[A-Z]{0,8}:[ -~]{0,20}".prop_map(plain),
    ]
    .prop_map(|mut line| {
        line.master = line.before.starts_with("#EXT-X-MEDIA:");
        line
    })
}

/// Tags with a URI attribute, as (tag, attribute, kind, where it is collected).
const URI_TAGS: &[(&str, &str, UriKind, Collect)] = &[
    ("EXT-X-MEDIA", "URI", UriKind::Playlist, Collect::Rendition),
    (
        "EXT-X-I-FRAME-STREAM-INF",
        "URI",
        UriKind::Playlist,
        Collect::IFrame,
    ),
    (
        "EXT-X-IMAGE-STREAM-INF",
        "URI",
        UriKind::Playlist,
        Collect::Image,
    ),
    (
        "EXT-X-RENDITION-REPORT",
        "URI",
        UriKind::Playlist,
        Collect::Nothing,
    ),
    ("EXT-X-MAP", "URI", UriKind::Media, Collect::Nothing),
    ("EXT-X-PART", "URI", UriKind::Media, Collect::Nothing),
    (
        "EXT-X-PRELOAD-HINT",
        "URI",
        UriKind::Media,
        Collect::Nothing,
    ),
    ("EXT-X-KEY", "URI", UriKind::Key, Collect::Nothing),
    ("EXT-X-SESSION-KEY", "URI", UriKind::Key, Collect::Nothing),
    (
        "EXT-X-SESSION-DATA",
        "URI",
        UriKind::Media,
        Collect::Nothing,
    ),
    (
        "EXT-X-CONTENT-STEERING",
        "SERVER-URI",
        UriKind::Media,
        Collect::Nothing,
    ),
    (
        "EXT-X-DATERANGE",
        "X-ASSET-URI",
        UriKind::Playlist,
        Collect::Nothing,
    ),
    (
        "EXT-X-DATERANGE",
        "X-ASSET-LIST",
        UriKind::Media,
        Collect::Nothing,
    ),
];

/// Attributes that must never be taken for a tag's URI.
const DECOYS: &[&str] = &[
    "BANDWIDTH=1280000",
    "CODECS=\"avc1.4d401f,mp4a.40.2\"",
    "NAME=\"x,URI=y.m3u8\"",
    "X-URI=\"https://decoy.example.com/a\"",
    "URI-X=\"z\"",
    "XURI=\"z\"",
    "IV=0x0A",
    " KEYFORMAT=\"identity\"",
];

fn any_uri_tag_line() -> impl Strategy<Value = GenLine> {
    let decoys = || proptest::collection::vec(proptest::sample::select(DECOYS), 0..3);
    let uri = prop_oneof![9 => any_uri(), 1 => Just(String::new())];
    (
        proptest::sample::select(URI_TAGS),
        decoys(),
        uri,
        decoys(),
        any::<bool>(),
    )
        .prop_map(|((tag, attr, kind, collect), before, uri, after, spaced)| {
            let mut head = format!("#{tag}:");
            for d in before {
                head.push_str(d);
                head.push(',');
            }
            head.push_str(attr);
            head.push_str(if spaced { " = \"" } else { "=\"" });
            let mut tail = String::from("\"");
            for d in after {
                tail.push(',');
                tail.push_str(d);
            }
            GenLine {
                before: head,
                uri: Some((uri, kind, collect)),
                after: tail,
                master: matches!(
                    tag,
                    "EXT-X-MEDIA" | "EXT-X-I-FRAME-STREAM-INF" | "EXT-X-IMAGE-STREAM-INF"
                ),
            }
        })
}

fn any_uri_line(kind: UriKind, collect: Collect) -> impl Strategy<Value = GenLine> {
    ("[ \t]{0,2}", any_uri(), "[ \t]{0,2}").prop_map(move |(before, uri, after)| GenLine {
        before,
        uri: Some((uri, kind, collect)),
        after,
        master: false,
    })
}

/// A variant: `EXT-X-STREAM-INF`, maybe a plain line, then the URI line.
fn any_variant() -> impl Strategy<Value = Vec<GenLine>> {
    (
        proptest::option::of(any_plain_line()),
        any_uri_line(UriKind::Playlist, Collect::Variant),
    )
        .prop_map(|(between, uri)| {
            let mut stream_inf =
                plain("#EXT-X-STREAM-INF:BANDWIDTH=1,CODECS=\"avc1,mp4a\",URI=\"no\"");
            stream_inf.master = true;
            let mut lines = vec![stream_inf];
            lines.extend(between);
            lines.push(uri);
            lines
        })
}

fn any_base() -> impl Strategy<Value = Url> {
    proptest::sample::select(
        &[
            BASE,
            "http://a.example.com/",
            "https://deep.example.net:8443/a/b/c/d/e/master.m3u8",
            "http://127.0.0.1:8080/live/index.m3u8?x=1&y=%2F",
            "https://xn--caf-dma.example.com/dir/",
        ][..],
    )
    .prop_map(|b| Url::parse(b).unwrap())
}

/// A generated playlist: its lines, their terminators, a BOM, a final newline or not.
/// A line break: LF, CRLF or a lone CR, mixed in one playlist as some writers do.
fn any_line_end() -> impl Strategy<Value = &'static str> {
    prop_oneof![3 => Just("\n"), 2 => Just("\r\n"), 1 => Just("\r")]
}

fn any_generated() -> impl Strategy<Value = (Vec<GenLine>, Vec<&'static str>, bool, bool)> {
    let group = prop_oneof![
        3 => any_plain_line().prop_map(|l| vec![l]),
        3 => any_uri_line(UriKind::Media, Collect::Segment).prop_map(|l| vec![l]),
        3 => any_uri_tag_line().prop_map(|l| vec![l]),
        1 => any_variant(),
    ];
    proptest::collection::vec(group, 0..40)
        .prop_map(|groups| groups.into_iter().flatten().collect::<Vec<_>>())
        .prop_flat_map(|lines| {
            let n = lines.len();
            (
                Just(lines),
                proptest::collection::vec(any_line_end(), n),
                any::<bool>(),
                any::<bool>(),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Generated playlists come out exactly as a model of the rules predicts: same bytes
    /// around each URI, the mapper's output in its place, the mapper called with exactly
    /// the resolved URL and kind, and the info counted right.
    #[test]
    fn generated_playlists_match_the_model(
        (lines, ends, bom, final_newline) in any_generated(),
        base in any_base(),
    ) {
        let mut input = String::new();
        let mut expected = String::new();
        let mut expected_calls = Vec::new();
        let mut info = PlaylistInfo::default();
        if bom {
            input.push('\u{feff}');
            expected.push('\u{feff}');
        }
        for (i, line) in lines.iter().enumerate() {
            input.push_str(&line.before);
            expected.push_str(&line.before);
            if line.master {
                info.kind = PlaylistKind::Master;
            }
            if line.before == "#EXT-X-ENDLIST" {
                info.ended = true;
            }
            if let Some((uri, kind, collect)) = &line.uri {
                input.push_str(uri);
                if *collect == Collect::Segment {
                    info.segments += 1;
                }
                let resolved = base
                    .join(uri)
                    .ok()
                    .filter(|u| !uri.is_empty() && matches!(u.scheme(), "http" | "https"));
                match resolved {
                    Some(url) => {
                        expected.push_str(&marker(&url, *kind));
                        match collect {
                            Collect::Variant => info.variants.push(url.to_string()),
                            Collect::IFrame => info.i_frames.push(url.to_string()),
                            Collect::Image => info.images.push(url.to_string()),
                            Collect::Rendition => info.renditions.push(url.to_string()),
                            _ => {}
                        }
                        expected_calls.push((url, *kind));
                    }
                    None => expected.push_str(uri),
                }
            }
            input.push_str(&line.after);
            expected.push_str(&line.after);
            if i + 1 < lines.len() || final_newline {
                input.push_str(ends[i]);
                expected.push_str(ends[i]);
            }
        }

        let mut calls = Vec::new();
        let out = rewrite(&input, &base, |url, kind| {
            calls.push((url.clone(), kind));
            marker(url, kind)
        });
        prop_assert_eq!(&out.text, &expected);
        prop_assert_eq!(&calls, &expected_calls);
        prop_assert_eq!(&out.info, &info);
        assert_lossless(&input, &out.text)?;

        // Inverting the references gives back exactly the URLs the mapper was given.
        let decoded: Vec<(Url, UriKind)> = out
            .text
            .split('\n')
            .flat_map(|line| split_markers(line).1)
            .collect();
        prop_assert_eq!(decoded, expected_calls);
        prop_assert_eq!(rewrite(&input, &base, marker), out);
    }

    /// Random bytes: no panic, lossless, deterministic.
    #[test]
    fn random_bytes_are_handled(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let text = String::from_utf8_lossy(&bytes);
        let out = rewrite(&text, &base(), marker);
        assert_lossless(&text, &out.text)?;
        prop_assert_eq!(rewrite(&text, &base(), marker), out);
        let _ = looks_like_playlist(&text);
    }

    /// Playlist-flavoured noise reaches the tag and attribute paths more often than random
    /// bytes: unterminated quotes, stray commas and equals, CR and LF anywhere.
    #[test]
    fn playlist_noise_is_handled(
        parts in proptest::collection::vec(prop_oneof![
            Just("#EXT-X-KEY:"), Just("#EXT-X-MEDIA:"), Just("#EXT-X-STREAM-INF:"),
            Just("#EXT-X-DATERANGE:"), Just("#EXT-X-DEFINE:"), Just("URI="), Just("X-ASSET-URI="),
            Just("NAME="), Just("VALUE="), Just("\""), Just(","), Just("="), Just(" "), Just("\r"),
            Just("\n"), Just("\r\n"), Just("a.ts"), Just("http://h.example.com/"), Just("//"),
            Just("../"), Just("{$"), Just("}"), Just("#"), Just("data:"), Just("\u{feff}"), Just("é"),
        ], 0..80),
        base in any_base(),
    ) {
        let text: String = parts.concat();
        let out = rewrite(&text, &base, marker);
        assert_lossless(&text, &out.text)?;
        prop_assert_eq!(rewrite(&text, &base, marker), out);
    }

    /// Any fixture cut anywhere (truncated tags, unterminated quotes) is still handled.
    #[test]
    fn truncated_fixtures_are_handled(index in 0..FIXTURES.len(), cut in 0.0..1.0f64) {
        let (_, text, base) = FIXTURES[index];
        let mut end = (text.len() as f64 * cut) as usize;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text = &text[..end];
        let out = rewrite(text, &Url::parse(base).unwrap(), marker);
        assert_lossless(text, &out.text)?;
    }
}

/// What may come before `#EXTM3U` in a playlist players accept: blank lines, blanks, BOMs
/// and comments, each ended by any line break.
fn any_preamble() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just(String::new()),
        Just("  \t ".to_string()),
        Just("\u{feff}".to_string()),
        Just("#".to_string()),
        "# [ -~]{0,24}",
        "#[ A-DF-Za-z0-9][ -~]{0,12}",
    ];
    proptest::collection::vec((line, any_line_end()), 0..6).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(line, end)| format!("{line}{end}"))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A preamble before `#EXTM3U` neither hides the playlist nor changes a byte: the
    /// output is the preamble followed by exactly what the playlist alone gives.
    #[test]
    fn a_preamble_is_kept_and_the_rest_rewritten_as_without_it(
        preamble in any_preamble(),
        bom in any::<bool>(),
        end in any_line_end(),
        (lines, ends, _, _) in any_generated(),
    ) {
        let mut body = format!("#EXTM3U{end}");
        for (line, end) in lines.iter().zip(&ends) {
            body.push_str(&line.before);
            if let Some((uri, _, _)) = &line.uri {
                body.push_str(uri);
            }
            body.push_str(&line.after);
            body.push_str(end);
        }
        let head = if bom { format!("\u{feff}{preamble}") } else { preamble };
        let text = format!("{head}{body}");
        prop_assert!(looks_like_playlist(&text));
        let alone = rewrite(&body, &base(), marker);
        let out = rewrite(&text, &base(), marker);
        prop_assert_eq!(out.text, format!("{head}{}", alone.text));
        prop_assert_eq!(out.info, alone.info);
    }

    /// Anything but a comment or a blank before `#EXTM3U` (an HTML page, JSON, text,
    /// another tag) is not a playlist, whatever follows.
    #[test]
    fn a_first_line_that_is_not_a_comment_is_refused(
        preamble in any_preamble(),
        first in prop_oneof![
            Just("<!DOCTYPE html>".to_string()),
            Just("<html><head><title>Login</title></head>".to_string()),
            Just("{\"error\":\"forbidden\"}".to_string()),
            Just("#EXTINF:10,".to_string()),
            Just("#EXT-X-VERSION:3".to_string()),
            "[!-\"$-~][ -~]{0,20}",
        ],
        end in any_line_end(),
    ) {
        let text = format!("{preamble}{first}{end}#EXTM3U\n#EXTINF:1,\na.ts\n");
        prop_assert!(!looks_like_playlist(&text), "{:?}", text);
    }
}
