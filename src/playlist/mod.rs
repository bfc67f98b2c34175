//! PURE: the lossless line-based HLS playlist rewriter and the IPTV M3U reader.
//!
//! No I/O, no async, no HTTP-framework types: text in, text out.

mod attributes;
pub mod hls;
pub mod iptv;

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

#[cfg(test)]
mod tests;
