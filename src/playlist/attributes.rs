//! Scanner for HLS attribute lists (RFC 8216 §4.2): `NAME=value,NAME="quoted, value",...`.
//!
//! It reports where each attribute's value sits so the rewriter can splice exactly one value
//! and leave every other byte alone. It never allocates, unescapes or normalises, and it must
//! not panic on malformed input: whatever it cannot read is simply not reported.

use std::ops::Range;

/// One `NAME=value` pair of an attribute list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attribute<'a> {
    /// The attribute name as written (names are case-sensitive in HLS: `uri=` is not `URI=`).
    pub name: &'a str,
    /// Byte range of the value inside the scanned list, without the quotes of a quoted
    /// string and without the surrounding blanks of an unquoted value.
    pub value: Range<usize>,
    /// Whether the value was a quoted string.
    pub quoted: bool,
}

/// Iterates the attributes of `list` (the text after `#EXT-X-TAG:`), in order.
///
/// Names are taken whole, from one attribute boundary (start or comma) to the `=`, so
/// `X-ASSET-URI=` never matches a search for `URI`. Commas inside quoted strings belong to
/// the value. An unterminated quoted string ends the scan: nothing after it can be trusted.
pub(crate) fn attributes(list: &str) -> Attributes<'_> {
    Attributes { list, pos: 0 }
}

/// Iterator returned by [`attributes`].
#[derive(Debug, Clone)]
pub(crate) struct Attributes<'a> {
    list: &'a str,
    pos: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;

    fn next(&mut self) -> Option<Attribute<'a>> {
        // Every index this loop stops at is an ASCII delimiter or the end, so slicing
        // `self.list` there is always on a char boundary.
        let bytes = self.list.as_bytes();
        let len = bytes.len();
        loop {
            let mut pos = skip_blanks(bytes, self.pos);
            if pos >= len {
                self.pos = len;
                return None;
            }
            let name_start = pos;
            while pos < len && bytes[pos] != b'=' && bytes[pos] != b',' {
                pos += 1;
            }
            if pos >= len {
                // Trailing text without `=`: not an attribute.
                self.pos = len;
                return None;
            }
            if bytes[pos] == b',' {
                // `,junk,` without a value: skip it and keep reading.
                self.pos = pos + 1;
                continue;
            }
            let name = self.list[name_start..pos].trim_end_matches([' ', '\t']);
            pos = skip_blanks(bytes, pos + 1);

            if pos < len && bytes[pos] == b'"' {
                let open = pos + 1;
                let Some(close) = bytes[open..].iter().position(|&b| b == b'"') else {
                    self.pos = len;
                    return None;
                };
                let close = open + close;
                // Anything between the closing quote and the next comma is malformed
                // filler; it stays in the text and is skipped here.
                self.pos = next_comma(bytes, close + 1).map_or(len, |comma| comma + 1);
                return Some(Attribute {
                    name,
                    value: open..close,
                    quoted: true,
                });
            }

            let end = next_comma(bytes, pos).unwrap_or(len);
            self.pos = (end + 1).min(len);
            let value_len = self.list[pos..end].trim_end_matches([' ', '\t']).len();
            return Some(Attribute {
                name,
                value: pos..pos + value_len,
                quoted: false,
            });
        }
    }
}

fn skip_blanks(bytes: &[u8], mut pos: usize) -> usize {
    while pos < bytes.len() && (bytes[pos] == b' ' || bytes[pos] == b'\t') {
        pos += 1;
    }
    pos
}

fn next_comma(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .iter()
        .position(|&b| b == b',')
        .map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(list: &str) -> Vec<(&str, &str, bool)> {
        attributes(list)
            .map(|a| (a.name, &list[a.value], a.quoted))
            .collect()
    }

    #[test]
    fn quoted_commas_belong_to_the_value() {
        assert_eq!(
            scan(r#"BANDWIDTH=1280000,CODECS="avc1.4d401f,mp4a.40.2",URI="a,b.m3u8""#),
            vec![
                ("BANDWIDTH", "1280000", false),
                ("CODECS", "avc1.4d401f,mp4a.40.2", true),
                ("URI", "a,b.m3u8", true),
            ]
        );
    }

    #[test]
    fn names_are_whole_attribute_names() {
        let found = scan(r#"ID="ad",X-ASSET-URI="x.m3u8",X-URI="y",URI2="z""#);
        let names: Vec<_> = found.iter().map(|a| a.0).collect();
        assert_eq!(names, ["ID", "X-ASSET-URI", "X-URI", "URI2"]);
    }

    #[test]
    fn blanks_around_names_and_values_are_tolerated() {
        assert_eq!(
            scan(r#"METHOD=AES-128, URI = "k.key" ,IV=0x1 "#),
            vec![
                ("METHOD", "AES-128", false),
                ("URI", "k.key", true),
                ("IV", "0x1", false),
            ]
        );
    }

    #[test]
    fn unterminated_quote_ends_the_scan() {
        assert_eq!(
            scan(r#"METHOD=AES-128,URI="k.key,IV=0x1"#),
            vec![("METHOD", "AES-128", false)]
        );
    }

    #[test]
    fn junk_is_skipped_without_panicking() {
        assert_eq!(scan(""), vec![]);
        assert_eq!(scan(",,,"), vec![]);
        assert_eq!(scan("NOVALUE"), vec![]);
        assert_eq!(scan("A=,B"), vec![("A", "", false)]);
        assert_eq!(
            scan(r#"junk,URI="x"trailing,Z=1"#),
            vec![("URI", "x", true), ("Z", "1", false)]
        );
        assert_eq!(scan("=\""), vec![]);
        assert_eq!(scan("é=ü,\"=\""), vec![("é", "ü", false)]);
    }
}
