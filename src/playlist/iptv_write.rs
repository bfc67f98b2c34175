//! PURE: writes an IPTV channel list back out with the proxy's URLs, and the HDHomeRun
//! lineup of its channels.
//!
//! The M3U is written from the source text, not from the parsed [`ChannelList`](super::iptv::ChannelList): every
//! `#EXTM3U`, `#EXTINF` and other tag or comment line comes out exactly as the source gave
//! it (attribute order, quoting, spacing), and only the URL line of each channel is
//! replaced. The `#EXTM3U` line's `url-tvg` / `x-tvg-url` values are pointed at the guide
//! given (added as `url-tvg` when the line has neither). Lines end with LF whatever the
//! source used, a BOM is not written, and blank lines are left out. A channel the caller
//! leaves out (filtered, or refused at import) goes with the tag lines before its URL.
//!
//! This module only writes text: it must not resolve, fetch or judge URLs.

use super::iptv::{attr_spans, directive, Channel};

/// Writes the channels of `source` (the text [`super::iptv::parse`] read into entries)
/// to `out`: the tag lines before each URL line, then `url_for(index)`, where `index` is
/// the channel's place in [`ChannelList::entries`](super::iptv::ChannelList::entries). A channel for which it gives `None` is
/// left out, tag lines and all. With `header`, the source's `#EXTM3U` lines are written
/// (with `guide` set on them); without, they are left out, for a caller that writes one
/// header over several lists. Tag lines after the last URL are kept.
pub fn write_channels(
    out: &mut String,
    source: &str,
    header: bool,
    guide: Option<&str>,
    mut url_for: impl FnMut(usize) -> Option<String>,
) {
    // The lines since the last URL line, each with whether it is an `#EXTM3U` header
    // (written even when its channel is left out).
    let mut block: Vec<(&str, bool)> = Vec::new();
    let mut index = 0;
    let write_line = |out: &mut String, line: &str, is_header: bool| {
        if is_header {
            out.push_str(&with_guide(line, guide));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    };
    for (_, raw) in super::lines(source) {
        let line = raw.trim_start_matches('\u{feff}');
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if !trimmed.starts_with('#') {
            let url = url_for(index);
            index += 1;
            for (l, is_header) in block.drain(..) {
                if url.is_some() || is_header {
                    write_line(out, l, is_header);
                }
            }
            if let Some(url) = url {
                out.push_str(&url);
                out.push('\n');
            }
            continue;
        }
        let is_header = is_extm3u(trimmed);
        if header || !is_header {
            block.push((line, is_header));
        }
    }
    for (l, is_header) in block {
        write_line(out, l, is_header);
    }
}

/// Whether `line` is an `#EXTM3U` header (not some `#EXTM3Ux` tag).
fn is_extm3u(line: &str) -> bool {
    directive(line, "#EXTM3U")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
}

/// The header line `line` with every `url-tvg` and `x-tvg-url` value replaced by `guide`
/// (quotes kept as they were), or ` url-tvg="guide"` appended when it has neither. With no
/// guide, the line as it is.
pub fn with_guide(line: &str, guide: Option<&str>) -> String {
    let Some(guide) = guide else {
        return line.to_owned();
    };
    let Some(start) = line.find('#').map(|i| i + "#EXTM3U".len()) else {
        return line.to_owned();
    };
    let Some(attrs) = line.get(start..) else {
        return line.to_owned();
    };
    let (spans, _) = attr_spans(attrs, false);
    let mut out = String::with_capacity(line.len() + guide.len());
    let mut copied = 0;
    for span in spans {
        let key = &attrs[span.key.clone()];
        if key.eq_ignore_ascii_case("url-tvg") || key.eq_ignore_ascii_case("x-tvg-url") {
            out.push_str(&line[copied..start + span.value.start]);
            out.push_str(guide);
            copied = start + span.value.end;
        }
    }
    if copied == 0 {
        let mut out = line.trim_end().to_owned();
        out.push_str(&format!(" url-tvg=\"{guide}\""));
        return out;
    }
    out.push_str(&line[copied..]);
    out
}

/// Whether `channel` passes the output filters: its group is one of `groups` (when any are
/// given) and its display name or `tvg-name` contains `query` (ASCII case-insensitive,
/// when given).
pub fn selected(channel: &Channel, groups: &[String], query: Option<&str>) -> bool {
    let in_group = groups.is_empty()
        || channel
            .group
            .as_deref()
            .is_some_and(|g| groups.iter().any(|want| want == g));
    let matches = query.filter(|q| !q.is_empty()).is_none_or(|q| {
        let q = q.to_ascii_lowercase();
        [Some(channel.name.as_str()), channel.attr("tvg-name")]
            .into_iter()
            .flatten()
            .any(|text| text.to_ascii_lowercase().contains(&q))
    });
    in_group && matches
}

/// The channel number a player shows: `tvg-chno` (or `channel-number`) when the list gives
/// one, else `fallback`.
pub fn guide_number(channel: &Channel, fallback: usize) -> String {
    ["tvg-chno", "channel-number", "channel-id"]
        .iter()
        .find_map(|k| channel.attr(k).map(str::trim).filter(|v| !v.is_empty()))
        .map_or_else(|| fallback.to_string(), str::to_owned)
}

/// The name a tuner shows: the display name, else `tvg-name`, else the number.
pub fn guide_name(channel: &Channel) -> &str {
    [Some(channel.name.as_str()), channel.attr("tvg-name")]
        .into_iter()
        .flatten()
        .find(|n| !n.trim().is_empty())
        .unwrap_or("")
}

/// One channel of an HDHomeRun `lineup.json`, in the names Plex, Jellyfin and Emby read.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LineupEntry {
    #[serde(rename = "GuideNumber")]
    pub guide_number: String,
    #[serde(rename = "GuideName")]
    pub guide_name: String,
    #[serde(rename = "URL")]
    pub url: String,
}

/// The lineup of the `channels` of a list that `url_for` gives a URL, numbered from `first`
/// where the list gives no number; returns the next free number too.
pub fn lineup<C: std::borrow::Borrow<Channel>>(
    channels: impl IntoIterator<Item = C>,
    first: usize,
    mut url_for: impl FnMut(usize) -> Option<String>,
) -> (Vec<LineupEntry>, usize) {
    let mut next = first;
    let mut out = Vec::new();
    for (index, channel) in channels.into_iter().enumerate() {
        let channel = channel.borrow();
        let Some(url) = url_for(index) else { continue };
        out.push(LineupEntry {
            guide_number: guide_number(channel, next),
            guide_name: guide_name(channel).to_owned(),
            url,
        });
        next += 1;
    }
    (out, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playlist::iptv::parse;
    use proptest::prelude::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/iptv/channels.m3u");

    fn write(source: &str, guide: Option<&str>, keep: impl Fn(usize) -> bool) -> String {
        let mut out = String::new();
        write_channels(&mut out, source, true, guide, |i| {
            keep(i).then(|| format!("http://proxy/{i}"))
        });
        out
    }

    /// The source's non-blank lines, without BOM, as a player would read them.
    fn source_lines(text: &str) -> Vec<String> {
        crate::playlist::lines(text)
            .map(|(_, l)| l.trim_start_matches('\u{feff}').to_owned())
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    #[test]
    fn keeps_every_line_but_the_urls() {
        let out = write(FIXTURE, None, |_| true);
        let want: Vec<String> = {
            let mut i = 0;
            source_lines(FIXTURE)
                .into_iter()
                .map(|l| {
                    if l.trim().starts_with('#') {
                        l
                    } else {
                        i += 1;
                        format!("http://proxy/{}", i - 1)
                    }
                })
                .collect()
        };
        let got: Vec<&str> = out.lines().collect();
        assert_eq!(got, want);
        assert!(!out.contains('\r') && !out.starts_with('\u{feff}'));
    }

    #[test]
    fn the_guide_replaces_both_header_urls_with_their_quoting() {
        let out = write(FIXTURE, Some("http://p/playlists/a/epg.xml"), |_| true);
        assert_eq!(
            out.lines().next(),
            Some(
                "#EXTM3U url-tvg=\"http://p/playlists/a/epg.xml\" \
                 x-tvg-url=http://p/playlists/a/epg.xml tvg-shift=0 refresh=\"3600\""
            )
        );
        assert_eq!(
            with_guide("#EXTM3U", Some("http://g/")),
            "#EXTM3U url-tvg=\"http://g/\""
        );
        assert_eq!(with_guide("#EXTM3U x=1", None), "#EXTM3U x=1");
    }

    #[test]
    fn a_left_out_channel_takes_its_tag_lines_along() {
        let out = write(FIXTURE, None, |i| i != 2);
        assert!(!out.contains("KODIPROP") && !out.contains("Film Channel"));
        assert!(out.contains("BBC One HD") && out.contains("http://proxy/3"));
        assert!(out.starts_with("#EXTM3U"), "the header stays");
        let mut bare = String::new();
        write_channels(&mut bare, FIXTURE, false, None, |i| Some(i.to_string()));
        assert!(!bare.contains("#EXTM3U"));
    }

    #[test]
    fn filters_by_group_and_query() {
        let list = parse(FIXTURE);
        let groups = vec!["News".to_string(), "Movies".to_string()];
        let picked: Vec<&str> = list
            .entries
            .iter()
            .filter(|c| selected(c, &groups, None))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(picked, ["News 24, Live", "Film Channel"]);
        let picked: Vec<&str> = list
            .entries
            .iter()
            .filter(|c| selected(c, &[], Some("bbc ONE")))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(picked, ["BBC One HD"]);
    }

    #[test]
    fn lineup_numbers_from_the_list_else_in_order() {
        let list = parse(FIXTURE);
        let (lineup, next) = lineup(&list.entries, 100, |i| Some(format!("u{i}")));
        let numbers: Vec<(&str, &str)> = lineup
            .iter()
            .map(|e| (e.guide_number.as_str(), e.guide_name.as_str()))
            .collect();
        assert_eq!(
            numbers,
            [
                ("100", "BBC One HD"),
                ("24", "News 24, Live"),
                ("102", "Film Channel"),
                ("103", "Some Movie (2019)"),
                ("104", "")
            ]
        );
        assert_eq!(next, 105);
        assert_eq!(
            serde_json::to_value(&lineup[0]).unwrap(),
            serde_json::json!({"GuideNumber": "100", "GuideName": "BBC One HD", "URL": "u0"})
        );
    }

    proptest! {
        #[test]
        fn output_reads_back_as_the_same_channels(text in any::<String>()) {
            let list = parse(&text);
            let mut out = String::new();
            write_channels(&mut out, &text, true, None, |i| Some(format!("http://p/{i}")));
            let again = parse(&out);
            prop_assert_eq!(again.entries.len(), list.entries.len());
            for (a, b) in list.entries.iter().zip(&again.entries) {
                prop_assert_eq!(&a.attrs, &b.attrs);
                prop_assert_eq!(&a.name, &b.name);
                prop_assert_eq!(&a.vlc_opts, &b.vlc_opts);
                prop_assert_eq!(&a.extra_lines, &b.extra_lines);
            }
            prop_assert_eq!(again.header_attrs, list.header_attrs);
        }

        #[test]
        fn extinf_lines_pass_byte_for_byte(
            lines in proptest::collection::vec(r#"#EXTINF:-1( [a-z-]{1,8}=("[^"\r\n]{0,12}"|'[^'\r\n]{0,12}'|[^ ,\r\n]{0,8}))*,[^\r\n]{0,20}"#, 1..8),
            guide in proptest::option::of("http://g/[a-z]{1,8}"),
        ) {
            let mut text = String::from("\u{feff}#EXTM3U url-tvg='x'\r\n");
            for (i, l) in lines.iter().enumerate() {
                text.push_str(&format!("{l}\r\nhttp://o/{i}\r\n"));
            }
            let mut out = String::new();
            write_channels(&mut out, &text, true, guide.as_deref(), |i| Some(format!("u{i}")));
            let got: Vec<&str> = out.lines().collect();
            prop_assert_eq!(got.len(), 1 + 2 * lines.len());
            for (i, l) in lines.iter().enumerate() {
                prop_assert_eq!(got[1 + 2 * i], l.as_str());
                prop_assert_eq!(got[2 + 2 * i], format!("u{i}"));
            }
            let header = format!("#EXTM3U url-tvg='{}'", guide.as_deref().unwrap_or("x"));
            prop_assert_eq!(got[0], header.as_str());
        }
    }
}
