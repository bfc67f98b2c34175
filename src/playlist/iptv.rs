//! PURE: reads IPTV channel lists (extended M3U) into channels with every attribute kept.
//!
//! An IPTV list is `#EXTM3U url-tvg="..."`, then per channel an
//! `#EXTINF:-1 tvg-id="..." group-title="...",Display Name` line, optional directives
//! (`#EXTVLCOPT:`, `#EXTGRP:`, `#KODIPROP:`, comments), and the URL line. Real lists are
//! messy, so reading never fails and never panics: CRLF and lone CR line ends, BOM, blank
//! lines, unquoted or single-quoted values, commas and `=` inside quoted values, a missing
//! `#EXTM3U`, URLs without `#EXTINF` and a dangling `#EXTINF` at the end are all accepted. Directives seen before a
//! URL belong to that URL's channel, whether they come before or after its `#EXTINF` (Kodi
//! lists put `#KODIPROP` first).
//!
//! This module only reads: it must not resolve, fetch or judge URLs, and it keeps values
//! exactly as written (no unescaping, no trimming inside quotes).

use std::ops::Range;

/// A whole channel list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelList {
    /// Attributes of every `#EXTM3U` line (`url-tvg`, `x-tvg-url`, ...), in order.
    pub header_attrs: Vec<(String, String)>,
    /// The channels, in list order; one per URL line.
    pub entries: Vec<Channel>,
}

impl ChannelList {
    /// The first header attribute named `key` (ASCII case-insensitive).
    pub fn header_attr(&self, key: &str) -> Option<&str> {
        find_attr(&self.header_attrs, key)
    }
}

/// One channel: a URL and what the list says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    /// The `#EXTINF` duration in seconds: `-1` for live channels, and when it is missing or
    /// not a number.
    pub duration: f64,
    /// Every `#EXTINF` attribute in order, values exactly as written (quotes removed). A bare
    /// word without `=` is kept with an empty value.
    pub attrs: Vec<(String, String)>,
    /// The display name: everything after the first comma outside quoted values, trimmed.
    pub name: String,
    /// `group-title` when present and non-empty, else the `#EXTGRP` value.
    pub group: Option<String>,
    /// `#EXTVLCOPT:key=value` options in order (a line without `=` gives an empty value).
    pub vlc_opts: Vec<(String, String)>,
    /// Every other directive or comment line of this channel, verbatim and in order,
    /// including `#EXTGRP` (also summarized in `group`) and `#KODIPROP`.
    pub extra_lines: Vec<String>,
    /// The URL line, trimmed; Kodi-style `|User-Agent=...` suffixes are left in place.
    pub url: String,
    /// 1-based line number of the channel's `#EXTINF`, or of its URL when it has none.
    pub line: usize,
}

impl Channel {
    /// The first `#EXTINF` attribute named `key` (ASCII case-insensitive), e.g. `tvg-id`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        find_attr(&self.attrs, key)
    }

    /// The first `#EXTVLCOPT` value named `key` (ASCII case-insensitive), e.g.
    /// `http-user-agent`.
    pub fn vlc_opt(&self, key: &str) -> Option<&str> {
        find_attr(&self.vlc_opts, key)
    }
}

fn find_attr<'a>(attrs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// One `#EXTINF` line, read.
struct Extinf {
    duration: f64,
    attrs: Vec<(String, String)>,
    name: String,
    line: usize,
}

/// What has been read since the last URL line.
#[derive(Default)]
struct Pending {
    /// The latest `#EXTINF`.
    extinf: Option<Extinf>,
    extgrp: Option<String>,
    vlc_opts: Vec<(String, String)>,
    extra_lines: Vec<String>,
}

/// Reads a channel list. Never fails: what cannot be understood is kept verbatim or skipped.
pub fn parse(text: &str) -> ChannelList {
    let mut entries = Vec::new();
    let header_attrs = parse_each(text, |channel| entries.push(channel));
    ChannelList {
        header_attrs,
        entries,
    }
}

/// [`parse`] one channel at a time: `each` gets every channel in list order as soon as its
/// URL line is read, and the header attributes are returned at the end. A caller that
/// keeps only part of each channel never holds the whole list's attributes at once.
pub fn parse_each(text: &str, mut each: impl FnMut(Channel)) -> Vec<(String, String)> {
    let mut list = ChannelList::default();
    let mut pending = Pending::default();
    for (index, (_, raw)) in super::lines(text).enumerate() {
        // A BOM may also start a later line when lists were concatenated.
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        if !line.starts_with('#') {
            each(finish(std::mem::take(&mut pending), line, index + 1));
        } else if let Some(rest) = directive(line, "#EXTM3U") {
            if rest.is_empty() || rest.starts_with(char::is_whitespace) {
                list.header_attrs.extend(parse_attrs(rest, false).0);
            } else {
                pending.extra_lines.push(line.to_owned());
            }
        } else if let Some(rest) = directive(line, "#EXTINF:") {
            // A second #EXTINF before any URL replaces the first, which had no channel.
            pending.extinf = Some(parse_extinf(rest, index + 1));
        } else if let Some(rest) = directive(line, "#EXTVLCOPT:") {
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            pending.vlc_opts.push((key.to_owned(), value.to_owned()));
        } else {
            if let Some(group) = directive(line, "#EXTGRP:") {
                pending.extgrp = Some(group.trim().to_owned());
            }
            pending.extra_lines.push(line.to_owned());
        }
    }
    list.header_attrs
}

fn finish(pending: Pending, url: &str, url_line: usize) -> Channel {
    let Extinf {
        duration,
        attrs,
        name,
        line,
    } = pending.extinf.unwrap_or(Extinf {
        duration: -1.0,
        attrs: Vec::new(),
        name: String::new(),
        line: url_line,
    });
    let group = find_attr(&attrs, "group-title")
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .or(pending.extgrp.filter(|g| !g.is_empty()));
    Channel {
        duration,
        attrs,
        name,
        group,
        vlc_opts: pending.vlc_opts,
        extra_lines: pending.extra_lines,
        url: url.to_owned(),
        line,
    }
}

/// `line` without its directive `name` (ASCII case-insensitive), if it starts with it.
pub(crate) fn directive<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let head = line.get(..name.len())?;
    head.eq_ignore_ascii_case(name).then(|| &line[name.len()..])
}

/// Splits `-1 key="v" ...,Name` into duration, attributes and display name.
fn parse_extinf(rest: &str, line: usize) -> Extinf {
    let number_len = rest
        .find(|c: char| !matches!(c, '0'..='9' | '-' | '+' | '.'))
        .unwrap_or(rest.len());
    let duration = rest[..number_len]
        .parse::<f64>()
        .ok()
        .filter(|d| d.is_finite())
        .unwrap_or(-1.0);
    let (attrs, name) = parse_attrs(&rest[number_len..], true);
    Extinf {
        duration,
        attrs,
        name: name.unwrap_or("").trim().to_owned(),
        line,
    }
}

/// Reads `key="value" key=value 'single' bare` attributes. With `stop_at_comma`, a comma
/// outside a quoted value ends the attributes and the text after it is returned (the
/// `#EXTINF` display name).
fn parse_attrs(text: &str, stop_at_comma: bool) -> (Vec<(String, String)>, Option<&str>) {
    let (spans, name) = attr_spans(text, stop_at_comma);
    let attrs = spans
        .into_iter()
        .map(|a| (text[a.key].to_owned(), text[a.value].to_owned()))
        .collect();
    (attrs, name.map(|start| &text[start..]))
}

/// Where one attribute sits in the text it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttrSpan {
    pub key: Range<usize>,
    /// The value without its quotes (empty, at the end of the key, for a bare word).
    pub value: Range<usize>,
}

/// The attributes of `text` as byte ranges, and where the display name starts (after the
/// comma) when `stop_at_comma` found one. A quote opens a value only right after `=`, so an
/// apostrophe in a bare word is just a character. An unterminated quote runs to the last
/// comma, the most likely start of the name.
pub(crate) fn attr_spans(text: &str, stop_at_comma: bool) -> (Vec<AttrSpan>, Option<usize>) {
    let bytes = text.as_bytes();
    let ends_word = |b: u8| b.is_ascii_whitespace() || (stop_at_comma && b == b',');
    let mut attrs = Vec::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == bytes.len() {
            return (attrs, None);
        }
        if stop_at_comma && bytes[i] == b',' {
            return (attrs, Some(i + 1));
        }
        // All delimiters are ASCII, so every index below is a char boundary.
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && !ends_word(bytes[i]) {
            i += 1;
        }
        let key = key_start..i;
        if bytes.get(i) != Some(&b'=') {
            attrs.push(AttrSpan { key, value: i..i });
            continue;
        }
        i += 1;
        match bytes.get(i) {
            Some(&quote @ (b'"' | b'\'')) => {
                let start = i + 1;
                if let Some(len) = text[start..].find(char::from(quote)) {
                    attrs.push(AttrSpan {
                        key,
                        value: start..start + len,
                    });
                    i = start + len + 1;
                    continue;
                }
                let comma = text[start..].rfind(',').filter(|_| stop_at_comma);
                let (value, name) = match comma {
                    Some(c) => (start..start + c, Some(start + c + 1)),
                    None => (start..text.len(), None),
                };
                attrs.push(AttrSpan { key, value });
                return (attrs, name);
            }
            _ => {
                let start = i;
                while i < bytes.len() && !ends_word(bytes[i]) {
                    i += 1;
                }
                attrs.push(AttrSpan {
                    key,
                    value: start..i,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/iptv/channels.m3u");

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_the_realistic_fixture() {
        let list = parse(FIXTURE);
        assert_eq!(
            list.header_attrs,
            pairs(&[
                (
                    "url-tvg",
                    "http://epg.example/guide.xml.gz,http://epg2.example/g.xml"
                ),
                ("x-tvg-url", "http://epg.example/alt.xml"),
                ("tvg-shift", "0"),
                ("refresh", "3600"),
            ])
        );
        assert_eq!(
            list.header_attr("X-TVG-URL"),
            Some("http://epg.example/alt.xml")
        );
        let urls: Vec<&str> = list.entries.iter().map(|c| c.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://origin.example/live/bbc1/index.m3u8?token=abc%3D",
                "http://origin.example/live/news24.ts",
                "https://cdn.example/film/playlist.m3u8|User-Agent=Kodi",
                "http://vod.example/movies/some%20movie.mp4",
                "http://bare.example/no-extinf.ts",
            ]
        );

        let bbc = &list.entries[0];
        assert_eq!(bbc.duration, -1.0);
        assert_eq!(bbc.name, "BBC One HD");
        assert_eq!(bbc.line, 3);
        assert_eq!(
            bbc.attrs,
            pairs(&[
                ("tvg-id", "bbc.one.uk"),
                ("tvg-name", "BBC One, HD"),
                ("tvg-logo", "http://logos.example/bbc1.png?w=200&h=100"),
                ("group-title", "UK | Entertainment"),
            ])
        );
        assert_eq!(bbc.group.as_deref(), Some("UK | Entertainment"));
        assert_eq!(
            bbc.vlc_opt("http-user-agent"),
            Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64)")
        );
        assert_eq!(
            bbc.vlc_opt("http-referrer"),
            Some("http://portal.example/?a=b")
        );

        let news = &list.entries[1];
        assert_eq!(news.name, "News 24, Live");
        assert_eq!(news.attr("tvg-id"), Some(""));
        assert_eq!(news.attr("tvg-chno"), Some("24"));
        assert_eq!(
            news.attr("catchup-source"),
            Some("http://origin.example/catchup/{utc}-{lutc}.ts")
        );
        assert_eq!(news.group.as_deref(), Some("News"));
        assert_eq!(news.extra_lines, ["#EXTGRP:News"]);

        let film = &list.entries[2];
        assert_eq!(film.group.as_deref(), Some("Movies"));
        assert_eq!(film.attr("tvg-logo"), Some(""));
        assert_eq!(
            film.extra_lines,
            [
                "#KODIPROP:inputstream.adaptive.license_type=clearkey",
                "#KODIPROP:inputstream.adaptive.license_key=https://keys.example/k?id=1",
                "# operator note: moved to new CDN",
            ]
        );
        assert_eq!(film.line, 12, "the #EXTINF line, not the first #KODIPROP");

        let movie = &list.entries[3];
        assert_eq!(movie.duration, 3600.5);
        assert_eq!(movie.name, "Some Movie (2019)");
        assert_eq!(
            movie.attrs,
            pairs(&[("tvg-name", "Unquoted"), ("group-title", "VOD")])
        );

        let bare = &list.entries[4];
        assert_eq!(
            (
                bare.duration,
                bare.name.as_str(),
                bare.attrs.len(),
                bare.group.as_ref()
            ),
            (-1.0, "", 0, None)
        );
        assert_eq!(bare.line, 18);
    }

    #[test]
    fn extinf_edge_cases() {
        let one = |line: &str| {
            let list = parse(&format!("{line}\nhttp://x/\n"));
            assert_eq!(list.entries.len(), 1, "{line}");
            list.entries.into_iter().next().expect("one entry")
        };
        let c = one("#EXTINF:-1,Plain");
        assert_eq!(
            (c.duration, c.name.as_str(), c.attrs.len()),
            (-1.0, "Plain", 0)
        );

        let c = one(r#"#EXTINF:0 tvg-name="a=b, c" tvg-logo='http://l/x.png',Name, with, commas"#);
        assert_eq!(c.duration, 0.0);
        assert_eq!(c.attr("tvg-name"), Some("a=b, c"));
        assert_eq!(c.attr("TVG-LOGO"), Some("http://l/x.png"));
        assert_eq!(c.name, "Name, with, commas");

        let c = one(r#"#extinf:-1 tvg-id="x""#);
        assert_eq!((c.attr("tvg-id"), c.name.as_str()), (Some("x"), ""));

        let c = one(r#"#EXTINF:-1 tvg-name="unterminated, ch,Real Name"#);
        assert_eq!(c.attr("tvg-name"), Some("unterminated, ch"));
        assert_eq!(c.name, "Real Name");

        let c = one("#EXTINF:-1 tvg-name=Joe's group-title=Kids,Joe's Show");
        assert_eq!(c.attr("tvg-name"), Some("Joe's"));
        assert_eq!(c.group.as_deref(), Some("Kids"));
        assert_eq!(c.name, "Joe's Show");

        let c = one("#EXTINF:abc radio,Name");
        assert_eq!(c.duration, -1.0);
        assert_eq!(c.attrs, pairs(&[("abc", ""), ("radio", "")]));

        let c = one(r#"#EXTINF:-1 tvg-id="a"tvg-name="b" ="c",N"#);
        assert_eq!(
            c.attrs,
            pairs(&[("tvg-id", "a"), ("tvg-name", "b"), ("", "c")])
        );

        let list = parse("#EXTINF:-1 group-title=\"\",N\nhttp://x/1\n#EXTGRP:Next\nhttp://x/2");
        assert_eq!(
            list.entries[0].group, None,
            "EXTGRP after a URL belongs to the next one"
        );
        assert_eq!(list.entries[1].group.as_deref(), Some("Next"));
        let c = one("#EXTINF:-1 group-title=\"\",N\n#EXTGRP: Fallback ");
        assert_eq!(c.group.as_deref(), Some("Fallback"));
    }

    #[test]
    fn tolerates_messy_structure() {
        // No #EXTM3U, a dangling #EXTINF replaced by the next one, lone CR-less and CRLF
        // lines, a BOM on a concatenated second header.
        let text = "#EXTINF:-1,Lost\r\n#EXTINF:-1,Kept\r\nhttp://a/1\r\n\
                    \u{feff}#EXTM3U tvg-shift=1\nhttp://a/2\n#EXTINF:-1,Dangling";
        let list = parse(text);
        assert_eq!(list.header_attrs, pairs(&[("tvg-shift", "1")]));
        let names: Vec<(&str, &str, usize)> = list
            .entries
            .iter()
            .map(|c| (c.name.as_str(), c.url.as_str(), c.line))
            .collect();
        assert_eq!(names, [("Kept", "http://a/1", 2), ("", "http://a/2", 5)]);
        assert_eq!(parse(""), ChannelList::default());
        assert_eq!(parse("\u{feff}").entries.len(), 0);
    }

    #[test]
    fn a_lone_cr_ends_a_line() {
        let text = "#EXTM3U url-tvg=\"g.xml\"\r#EXTINF:-1 tvg-id=\"one\",One\rhttp://a/1\r\n  \r#EXTINF:-1,Two\nhttp://a/2\r";
        let list = parse(text);
        assert_eq!(list.header_attrs, pairs(&[("url-tvg", "g.xml")]));
        let names: Vec<(&str, &str, usize)> = list
            .entries
            .iter()
            .map(|c| (c.name.as_str(), c.url.as_str(), c.line))
            .collect();
        assert_eq!(names, [("One", "http://a/1", 2), ("Two", "http://a/2", 5)]);
    }

    proptest! {
        #[test]
        fn never_panics_and_keeps_every_url(text in any::<String>()) {
            let list = parse(&text);
            let urls: Vec<&str> = text
                .split(['\n', '\r'])
                .map(|l| l.trim_start_matches('\u{feff}').trim())
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            let got: Vec<&str> = list.entries.iter().map(|c| c.url.as_str()).collect();
            prop_assert_eq!(got, urls);
        }

        #[test]
        fn never_panics_on_extinf_shaped_input(
            text in r#"(#EXTINF:[-0-9. a-z="',']{0,40}\n[a-z:/ ]{0,10}\n?){0,8}"#
        ) {
            let _ = parse(&text);
        }

        #[test]
        fn written_channels_read_back(
            duration in -1i64..100_000,
            attrs in proptest::collection::vec(("[a-z][a-z-]{0,12}", r#"[^"\r\n]{0,30}"#), 0..6),
            name in r"[^\r\n]{0,40}",
            url in r"https?://[^\s]{1,60}",
        ) {
            let mut line = format!("#EXTINF:{duration}");
            for (k, v) in &attrs {
                line.push_str(&format!(" {k}=\"{v}\""));
            }
            let text = format!("#EXTM3U\r\n{line},{name}\r\n{url}\r\n");
            let list = parse(&text);
            prop_assert_eq!(list.entries.len(), 1);
            let c = &list.entries[0];
            prop_assert_eq!(c.duration, duration as f64);
            prop_assert_eq!(&c.attrs, &attrs);
            prop_assert_eq!(c.name.as_str(), name.trim());
            prop_assert_eq!(c.url.as_str(), url.as_str());
        }
    }
}
