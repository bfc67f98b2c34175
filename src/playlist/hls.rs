//! The lossless HLS playlist rewriter: every http(s) URI of a master or media playlist is
//! resolved against the upstream URL and replaced by whatever the caller's mapper returns.
//!
//! It works line by line in a single pass and splices only URI bytes into the output, so
//! blank lines, comments, unknown tags, attribute order, number formatting, CRLF and a BOM
//! come out exactly as they went in (an object model such as m3u8-rs drops or moves tags).
//! It must not do I/O, decide anything by file extension, or touch a byte that is not a URI.
//!
//! # What is rewritten, and as what
//!
//! A URI's [`UriKind`] comes from where it stands, never from how it is spelled:
//!
//! | where | kind | why |
//! | --- | --- | --- |
//! | URI line after `EXT-X-STREAM-INF` | Playlist | a variant, even when it is `index?id=7` |
//! | any other URI line | Media | a segment (or an IPTV channel) |
//! | `EXT-X-MEDIA`, `EXT-X-I-FRAME-STREAM-INF`, `EXT-X-RENDITION-REPORT` `URI` | Playlist | renditions, trick play, LL-HLS reports |
//! | `EXT-X-IMAGE-STREAM-INF` `URI` | Playlist | Roku's image (thumbnail) playlists |
//! | `EXT-X-MAP`, `EXT-X-PART`, `EXT-X-PRELOAD-HINT` `URI` | Media | init sections, parts, hinted parts or maps |
//! | `EXT-X-KEY`, `EXT-X-SESSION-KEY` `URI` | Key | decryption keys |
//! | `EXT-X-SESSION-DATA` `URI` | Media | a JSON document the player fetches as is |
//! | `EXT-X-CONTENT-STEERING` `SERVER-URI` | Media | see below |
//! | `EXT-X-DATERANGE` `X-ASSET-URI` | Playlist | an interstitial's asset is a multivariant playlist |
//! | `EXT-X-DATERANGE` `X-ASSET-LIST` | Media | a JSON list of assets, fetched as is |
//!
//! The steering manifest behind `SERVER-URI` is reloaded like a playlist, but it is JSON: a
//! Playlist reference would make the proxy parse and rewrite it as HLS and reject it as "not
//! a playlist", so it goes out as Media, served byte for byte. The pathways it selects name
//! variants of this master, which are already rewritten.
//!
//! Only the attributes above are touched; an unknown tag or attribute with a URL in it (for
//! example an ad server's `X-COM-EXAMPLE-URL`) is left alone, because its meaning is unknown.
//! The `URI` attribute is normally a quoted string; an unquoted value is rewritten too, since
//! players accept it and leaving it relative would send the player around the proxy.
//!
//! URIs that do not resolve, empty URIs, and URIs whose resolved scheme is not http or https
//! (`data:`, `skd:`, ...) are left byte for byte. So is a URI whose `{$variable}` reference
//! (`EXT-X-DEFINE`) cannot be substituted here: `NAME`/`VALUE` and `QUERYPARAM` (read from
//! the upstream URL) are substituted before resolving, but `IMPORT` needs the master
//! playlist, which this pure function does not have.

use std::borrow::Cow;
use std::ops::Range;

use url::Url;

use super::attributes::attributes;
use super::{lines, UriKind};

/// The result of [`rewrite`]: the text to send to the player and what the playlist said.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    /// The rewritten playlist.
    pub text: String,
    /// Facts read on the way, for caching and failover.
    pub info: PlaylistInfo,
}

/// Whether a playlist lists variants (master, a.k.a. multivariant) or segments (media).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PlaylistKind {
    /// Has `EXT-X-STREAM-INF`, `EXT-X-I-FRAME-STREAM-INF`, `EXT-X-IMAGE-STREAM-INF` or
    /// `EXT-X-MEDIA`: tags that only a master playlist may carry.
    Master,
    /// Anything else, including an IPTV channel list.
    #[default]
    Media,
}

/// What the rewriter learned about a playlist.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlaylistInfo {
    /// Master or media.
    pub kind: PlaylistKind,
    /// `EXT-X-TARGETDURATION` in seconds (first occurrence; decimals tolerated). A live
    /// playlist should be refreshed about this often.
    pub target_duration: Option<f64>,
    /// `EXT-X-MEDIA-SEQUENCE` (first occurrence): tells a refreshed window from a stale one.
    pub media_sequence: Option<u64>,
    /// `EXT-X-ENDLIST` is present: the playlist will not change any more.
    pub ended: bool,
    /// URI lines that are media (segments), whether or not they were rewritten.
    pub segments: usize,
    /// Absolute http(s) URLs of the variant playlists (`EXT-X-STREAM-INF`), in playlist
    /// order.
    pub variants: Vec<String>,
    /// The same for the I-frame playlists (`EXT-X-I-FRAME-STREAM-INF`).
    pub i_frames: Vec<String>,
    /// The same for the image playlists (`EXT-X-IMAGE-STREAM-INF`).
    pub images: Vec<String>,
    /// Absolute http(s) URLs of the `EXT-X-MEDIA` renditions, in playlist order.
    pub renditions: Vec<String>,
}

/// Rewrites every http(s) URI (URI lines and the quoted URI attributes listed in the module
/// docs) by resolving it against `base` (the final upstream URL after redirects, RFC 3986)
/// and replacing it with `map(&absolute_url, kind)`. All other bytes are unchanged.
///
/// The mapper's output is inserted verbatim, so it must not contain a line break (or a `"`,
/// inside a quoted attribute); surrounding blanks of a URI are kept. `map` is called once
/// per rewritten URI, in playlist order.
pub fn rewrite(text: &str, base: &Url, map: impl FnMut(&Url, UriKind) -> String) -> Rewrite {
    let mut rewriter = Rewriter {
        text,
        base,
        map,
        // A signed reference is several times longer than the relative URI it replaces, and
        // URIs are about half of a media playlist: three times the input avoids regrowing
        // for typical playlists. Pages that are never written are never touched.
        out: String::with_capacity(text.len().saturating_mul(3)),
        copied: 0,
        after_stream_inf: false,
        master: false,
        variables: Vec::new(),
        info: PlaylistInfo::default(),
    };
    for (start, line) in lines(text) {
        rewriter.line(start, line);
    }
    rewriter.finish()
}

/// True when the text is an HLS playlist: `#EXTM3U` is its first tag. Blank lines, spaces,
/// byte-order marks and comments (`#` lines that are not `#EXT` tags) may come before it,
/// as some origins write them and players accept them. Used to detect origins that answer
/// 200 with HTML or garbage, which must still be refused.
pub fn looks_like_playlist(text: &str) -> bool {
    for (_, line) in lines(text) {
        let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        if line.is_empty() || (line.starts_with('#') && !line.starts_with("#EXT")) {
            continue;
        }
        return line.starts_with("#EXTM3U");
    }
    false
}

/// Blanks around a line or a URI: C0 controls and space, as the URL standard strips them,
/// and the byte-order mark, which starts many playlists (and some spliced-in lines) and
/// must neither hide a tag nor become part of a URI.
fn is_blank(c: char) -> bool {
    c <= ' ' || c == '\u{feff}'
}

/// What a tag's URI attribute feeds into [`PlaylistInfo`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listed {
    Variant,
    IFrame,
    Image,
    Rendition,
    Nowhere,
}

/// The URI-bearing attributes of a tag: (attribute name, kind, where it is listed).
fn uri_attributes(tag: &str) -> &'static [(&'static str, UriKind, Listed)] {
    use Listed::*;
    use UriKind::*;
    match tag {
        "EXT-X-MEDIA" => &[("URI", Playlist, Rendition)],
        "EXT-X-I-FRAME-STREAM-INF" => &[("URI", Playlist, IFrame)],
        "EXT-X-IMAGE-STREAM-INF" => &[("URI", Playlist, Image)],
        "EXT-X-RENDITION-REPORT" => &[("URI", Playlist, Nowhere)],
        "EXT-X-MAP" | "EXT-X-PART" | "EXT-X-PRELOAD-HINT" | "EXT-X-SESSION-DATA" => {
            &[("URI", Media, Nowhere)]
        }
        "EXT-X-KEY" | "EXT-X-SESSION-KEY" => &[("URI", Key, Nowhere)],
        "EXT-X-CONTENT-STEERING" => &[("SERVER-URI", Media, Nowhere)],
        "EXT-X-DATERANGE" => &[
            ("X-ASSET-URI", Playlist, Nowhere),
            ("X-ASSET-LIST", Media, Nowhere),
        ],
        _ => &[],
    }
}

struct Rewriter<'a, F> {
    text: &'a str,
    base: &'a Url,
    map: F,
    out: String,
    /// Everything of `text` before this offset is already in `out`; unchanged stretches
    /// are copied in one piece when the next URI is spliced.
    copied: usize,
    /// An `EXT-X-STREAM-INF` is waiting for its URI line.
    after_stream_inf: bool,
    master: bool,
    /// `EXT-X-DEFINE` variables seen so far, in order (playlists define a handful).
    variables: Vec<(&'a str, Cow<'a, str>)>,
    info: PlaylistInfo,
}

impl<'a, F: FnMut(&Url, UriKind) -> String> Rewriter<'a, F> {
    /// Handles the line `line`, which starts at byte `start` of the text.
    fn line(&mut self, start: usize, line: &'a str) {
        let trimmed = line.trim_start_matches(is_blank);
        let start = start + (line.len() - trimmed.len());
        let trimmed = trimmed.trim_end_matches(is_blank);
        if trimmed.is_empty() {
            return;
        }
        if let Some(tag) = trimmed.strip_prefix('#') {
            // Comments (`# ...`) fall through the tag match as unknown names.
            self.tag(start + 1, tag);
            return;
        }
        let (kind, listed) = if std::mem::take(&mut self.after_stream_inf) {
            (UriKind::Playlist, Listed::Variant)
        } else {
            self.info.segments += 1;
            (UriKind::Media, Listed::Nowhere)
        };
        self.uri(start..start + trimmed.len(), kind, listed);
    }

    /// Handles a tag (`tag` is the line after `#`, starting at byte `start` of the text).
    fn tag(&mut self, start: usize, tag: &'a str) {
        let (name, list) = match tag.split_once(':') {
            Some((name, list)) => (name, Some(list)),
            None => (tag, None),
        };
        let list_start = start + name.len() + 1;
        match name {
            "EXT-X-STREAM-INF" => {
                self.master = true;
                self.after_stream_inf = true;
            }
            "EXT-X-MEDIA" | "EXT-X-I-FRAME-STREAM-INF" | "EXT-X-IMAGE-STREAM-INF" => {
                self.master = true;
            }
            "EXT-X-TARGETDURATION" => {
                let value = list.and_then(|v| v.trim().parse::<f64>().ok());
                let value = value.filter(|v| v.is_finite() && *v >= 0.0);
                self.info.target_duration = self.info.target_duration.or(value);
            }
            "EXT-X-MEDIA-SEQUENCE" => {
                let value = list.and_then(|v| v.trim().parse::<u64>().ok());
                self.info.media_sequence = self.info.media_sequence.or(value);
            }
            "EXT-X-ENDLIST" => self.info.ended = true,
            "EXT-X-DEFINE" => {
                if let Some(list) = list {
                    self.define(list);
                }
            }
            _ => {}
        }
        let wanted = uri_attributes(name);
        let Some(list) = list.filter(|_| !wanted.is_empty()) else {
            return;
        };
        for attribute in attributes(list) {
            let Some(&(_, kind, listed)) = wanted.iter().find(|w| w.0 == attribute.name) else {
                continue;
            };
            let value = &list[attribute.value.clone()];
            let inner = value.trim_start_matches(is_blank);
            let from = list_start + attribute.value.start + (value.len() - inner.len());
            let inner = inner.trim_end_matches(is_blank);
            self.uri(from..from + inner.len(), kind, listed);
        }
    }

    /// Records an `EXT-X-DEFINE` so later `{$name}` references can be substituted.
    fn define(&mut self, list: &'a str) {
        let (mut name, mut value, mut query_param) = (None, None, None);
        for attribute in attributes(list) {
            let text = &list[attribute.value];
            match attribute.name {
                "NAME" => name = Some(text),
                "VALUE" => value = Some(text),
                "QUERYPARAM" => query_param = Some(text),
                _ => {}
            }
        }
        if let (Some(name), Some(value)) = (name, value) {
            self.variables.push((name, Cow::Borrowed(value)));
        } else if let Some(param) = query_param {
            let found = self.base.query_pairs().find(|(key, _)| key == param);
            if let Some((_, value)) = found {
                self.variables.push((param, Cow::Owned(value.into_owned())));
            }
        }
    }

    /// Resolves the URI at `span` of the text and, when it is http(s), splices in the
    /// mapper's reference.
    fn uri(&mut self, span: Range<usize>, kind: UriKind, listed: Listed) {
        let text = self.text;
        let Some(url) = self.resolve(&text[span.clone()]) else {
            return;
        };
        let reference = (self.map)(&url, kind);
        self.out.push_str(&text[self.copied..span.start]);
        self.out.push_str(&reference);
        self.copied = span.end;
        match listed {
            Listed::Variant => self.info.variants.push(url.into()),
            Listed::IFrame => self.info.i_frames.push(url.into()),
            Listed::Image => self.info.images.push(url.into()),
            Listed::Rendition => self.info.renditions.push(url.into()),
            Listed::Nowhere => {}
        }
    }

    fn resolve(&self, uri: &str) -> Option<Url> {
        if uri.is_empty() {
            // A same-document reference: nothing to fetch through the proxy.
            return None;
        }
        let uri = substitute(uri, &self.variables)?;
        let url = self.base.join(&uri).ok()?;
        matches!(url.scheme(), "http" | "https").then_some(url)
    }

    fn finish(mut self) -> Rewrite {
        self.out.push_str(&self.text[self.copied..]);
        self.info.kind = if self.master {
            PlaylistKind::Master
        } else {
            PlaylistKind::Media
        };
        Rewrite {
            text: self.out,
            info: self.info,
        }
    }
}

/// Replaces `{$name}` references by defined values; `None` when one is not defined (the
/// URI then stays as written, for the player to substitute).
fn substitute<'u>(uri: &'u str, variables: &[(&str, Cow<'_, str>)]) -> Option<Cow<'u, str>> {
    // `contains(char)` is a memchr; most URIs have no `{` at all.
    if !uri.contains('{') || !uri.contains("{$") {
        return Some(Cow::Borrowed(uri));
    }
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(open) = rest.find("{$") {
        let after = &rest[open + 2..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(after.len());
        if name_len == 0 || !after[name_len..].starts_with('}') {
            // Not a variable reference (RFC 8216bis §4.3): keep the text literally.
            out.push_str(&rest[..open + 2]);
            rest = after;
            continue;
        }
        let name = &after[..name_len];
        let (_, value) = variables.iter().rev().find(|(n, _)| *n == name)?;
        out.push_str(&rest[..open]);
        out.push_str(value);
        rest = &after[name_len + 1..];
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}
