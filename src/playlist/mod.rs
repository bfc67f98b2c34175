//! PURE: the lossless line-based HLS playlist rewriter, the IPTV M3U reader and its writer
//! (the proxied channel list and the HDHomeRun lineup).
//!
//! No I/O, no async, no HTTP-framework types: text in, text out.

mod attributes;
pub mod hls;
pub mod iptv;
pub mod iptv_write;

pub use hls::{looks_like_playlist, rewrite, PlaylistInfo, PlaylistKind, Rewrite};

/// What an upstream URI points at, decided by its position and tag, never by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UriKind {
    /// A playlist (variant, rendition, I-frame, rendition report).
    Playlist,
    /// Media bytes: segments, init sections, parts, preload hints.
    Media,
    /// A decryption key.
    Key,
}

/// The lines of a playlist, each with the byte offset where it starts, without their
/// terminators.
///
/// LF and CRLF end a line (RFC 8216 §4.1); a lone CR does too, since some writers use it in
/// places and players accept it: a tag behind a lone CR would otherwise hide inside the line
/// before it. The terminators are not returned, so a caller that copies the text between
/// the bytes it changes keeps the playlist's own mix of line ends.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= bytes.len() {
            return None;
        }
        let start = pos;
        let rest = &bytes[start..];
        let (len, terminator) = match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            None => (rest.len(), 0),
            Some(end) if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') => (end, 2),
            Some(end) => (end, 1),
        };
        pos = start + len + terminator;
        // CR and LF are ASCII, so both ends fall on character boundaries.
        Some((start, &text[start..start + len]))
    })
}

#[cfg(test)]
mod tests;
