//! What one stream is, as plain data with methods: its [`StreamSettings`], the
//! [`UrlCursor`] that says which of its URLs is in use (and how often and how recently it
//! changed), and the [`Listings`] of variants each URL's playlist showed.
//!
//! Nothing here emits events, counts, logs or talks to origins: the registry composes
//! these types into its stream entry and announces what they report; the failover policy
//! and the playback paths read and move them.

mod cursor;
mod listings;
mod settings;

pub use cursor::{Switched, UrlCursor, SWITCH_WINDOW};
pub use listings::{equivalent, Equivalent, Listing, Listings};
pub use settings::{
    upstream_url, BadUpstreamUrl, Metadata, StreamOptions, StreamSettings,
    FORBIDDEN_UPSTREAM_HEADERS,
};
