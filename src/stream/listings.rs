//! The variants each of a stream's URLs listed, so a playlist reference issued under one
//! URL finds its equivalent under another after a switch.

use std::sync::Mutex;

use url::Url;

use crate::playlist::PlaylistInfo;

/// What the playlist at each of a stream's URLs listed when last fetched, by URL: a
/// re-post may put another URL at an index, and a player may still hold references of
/// the old one. A short list (at most 16), empty and unallocated until a
/// playlist is fetched: most streams of a channel list never are.
#[derive(Debug, Default)]
pub struct Listings {
    by_url: Mutex<Vec<(Url, Listing)>>,
}

/// Listings kept per stream: its URLs and a few it had before a re-post.
const MAX_LISTINGS: usize = 16;

/// The playlists a stream URL's playlist lists, one list per tag in playlist order: enough
/// to find the equivalent of a variant under another URL. Positions are compared within a
/// tag only, so an I-frame playlist never stands in for a variant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Listing {
    /// The stream's switch generation when this was fetched.
    pub generation: u64,
    /// Playlist URLs by tag: `EXT-X-STREAM-INF`, `EXT-X-I-FRAME-STREAM-INF`,
    /// `EXT-X-IMAGE-STREAM-INF`, `EXT-X-MEDIA`; all empty for a media playlist.
    pub by_tag: [Vec<String>; 4],
}

impl Listing {
    pub fn new(generation: u64, info: &PlaylistInfo) -> Self {
        Self {
            generation,
            by_tag: [
                info.variants.clone(),
                info.i_frames.clone(),
                info.images.clone(),
                info.renditions.clone(),
            ],
        }
    }

    /// A media playlist: the URL itself is the only "variant".
    fn is_media(&self) -> bool {
        self.by_tag.iter().all(Vec::is_empty)
    }

    fn contains(&self, target: &str) -> bool {
        self.by_tag.iter().flatten().any(|u| u == target)
    }

    /// The variants (`EXT-X-STREAM-INF`).
    fn variants(&self) -> &[String] {
        &self.by_tag[0]
    }
}

/// Where a playlist reference points under the stream's current URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Equivalent {
    /// Fetch the referenced URL itself.
    Same,
    /// Fetch this playlist listed by the current URL instead.
    Listed(String),
    /// The current URL is itself a media playlist: fetch it.
    StreamUrl,
}

impl Listings {
    /// Remembers what the playlist at the stream URL `url` lists.
    pub fn remember(&self, url: &Url, listing: Listing) {
        let mut listings = self.by_url.lock().expect("listings lock");
        if let Some(known) = listings.iter_mut().find(|(u, _)| u == url) {
            known.1 = listing;
            return;
        }
        if listings.len() >= MAX_LISTINGS {
            let oldest = listings
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, l))| l.generation)
                .map(|(i, _)| i);
            if let Some(oldest) = oldest {
                listings.swap_remove(oldest);
            }
        }
        listings.push((url.clone(), listing));
    }

    /// The listing of `url` if it was fetched in `generation`.
    pub fn listing(&self, url: &Url, generation: u64) -> Option<Listing> {
        self.by_url
            .lock()
            .expect("listings lock")
            .iter()
            .find(|(u, l)| u == url && l.generation == generation)
            .map(|(_, l)| l.clone())
    }

    /// The listing that showed `target`, unless it is the current URL's. `None` when
    /// `target` belongs to the current URL or to no known listing (a nested playlist
    /// deeper down, or one from before a restart): it is fetched as it is.
    pub fn listed_elsewhere(&self, target: &str, current: &Url) -> Option<Listing> {
        let listings = self.by_url.lock().expect("listings lock");
        if listings
            .iter()
            .any(|(u, l)| u == current && l.contains(target))
        {
            return None;
        }
        listings
            .iter()
            .map(|(_, l)| l)
            .find(|l| l.contains(target))
            .cloned()
    }
}

/// The equivalent under `new` of `target`, a playlist that `old` listed: the one at the
/// same position among the playlists of the same tag, or the last one when `new` lists
/// fewer.
pub fn equivalent(old: &Listing, new: &Listing, target: &str) -> Equivalent {
    if new.is_media() {
        return Equivalent::StreamUrl;
    }
    let pick = |from: &[String], to: &[String]| {
        let at = from.iter().position(|u| u == target)?;
        to.get(at.min(to.len().checked_sub(1)?)).cloned()
    };
    old.by_tag
        .iter()
        .zip(&new.by_tag)
        .find_map(|(from, to)| pick(from, to))
        // A playlist with no counterpart of its tag: the first variant still plays.
        .or_else(|| new.variants().first().cloned())
        .map_or(Equivalent::Same, Equivalent::Listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn listing(variants: &[&str], renditions: &[&str]) -> Listing {
        with_i_frames(variants, &[], renditions)
    }

    fn with_i_frames(variants: &[&str], i_frames: &[&str], renditions: &[&str]) -> Listing {
        Listing {
            generation: 0,
            by_tag: [
                strings(variants),
                strings(i_frames),
                vec![],
                strings(renditions),
            ],
        }
    }

    #[test]
    fn i_frame_playlists_map_among_i_frame_playlists_only() {
        // Two variants and two I-frame playlists before; three variants and one I-frame
        // playlist after. By position in one mixed list, a/if-lo (3rd) would become the
        // variant b/hi; each maps within its own tag.
        let old = with_i_frames(&["a/lo", "a/hi"], &["a/if-lo", "a/if-hi"], &[]);
        let new = with_i_frames(&["b/lo", "b/mid", "b/hi"], &["b/if"], &[]);
        let eq = |t| equivalent(&old, &new, t);
        assert_eq!(eq("a/lo"), Equivalent::Listed("b/lo".into()));
        assert_eq!(eq("a/hi"), Equivalent::Listed("b/mid".into()));
        assert_eq!(eq("a/if-lo"), Equivalent::Listed("b/if".into()));
        assert_eq!(eq("a/if-hi"), Equivalent::Listed("b/if".into()));
        // No I-frame playlist after the switch: the first variant still plays.
        let bare = with_i_frames(&["c/lo"], &[], &[]);
        assert_eq!(
            equivalent(&old, &bare, "a/if-lo"),
            Equivalent::Listed("c/lo".into())
        );
    }

    #[test]
    fn variants_map_by_position_and_clamp_to_the_last() {
        let old = listing(&["a/lo", "a/mid", "a/hi"], &["a/en"]);
        let new = listing(&["b/lo", "b/hi"], &["b/en"]);
        let eq = |t| equivalent(&old, &new, t);
        assert_eq!(eq("a/lo"), Equivalent::Listed("b/lo".into()));
        assert_eq!(eq("a/mid"), Equivalent::Listed("b/hi".into()));
        assert_eq!(eq("a/hi"), Equivalent::Listed("b/hi".into()));
        assert_eq!(eq("a/en"), Equivalent::Listed("b/en".into()));
        let bare = listing(&["b/only"], &[]);
        assert_eq!(
            equivalent(&old, &bare, "a/en"),
            Equivalent::Listed("b/only".into())
        );
        assert_eq!(
            equivalent(&old, &listing(&[], &[]), "a/hi"),
            Equivalent::StreamUrl
        );
    }

    #[test]
    fn a_reference_of_the_current_url_or_of_none_is_fetched_as_is() {
        let (a, b, c) = (
            Url::parse("http://a/m.m3u8").unwrap(),
            Url::parse("http://b/m.m3u8").unwrap(),
            Url::parse("http://c/m.m3u8").unwrap(),
        );
        let book = Listings::default();
        book.remember(&a, listing(&["a/lo"], &[]));
        book.remember(&b, listing(&["b/lo"], &[]));
        assert_eq!(book.listed_elsewhere("a/lo", &a), None);
        assert_eq!(
            book.listed_elsewhere("a/lo", &b),
            Some(listing(&["a/lo"], &[]))
        );
        assert_eq!(book.listed_elsewhere("a/deeper", &b), None);
        assert!(book.listing(&b, 0).is_some());
        assert!(book.listing(&b, 1).is_none(), "stale after a switch");
        // A re-post put c where b was: b's variants are still known to be b's.
        book.remember(&c, listing(&["c/lo"], &[]));
        assert_eq!(
            book.listed_elsewhere("b/lo", &c),
            Some(listing(&["b/lo"], &[]))
        );
    }

    #[test]
    fn listings_are_bounded_and_the_oldest_go_first() {
        let book = Listings::default();
        for i in 0..MAX_LISTINGS as u64 + 4 {
            let url = Url::parse(&format!("http://o{i}/m.m3u8")).unwrap();
            let mut l = listing(&[&format!("o{i}/lo")], &[]);
            l.generation = i;
            book.remember(&url, l);
        }
        assert_eq!(book.by_url.lock().unwrap().len(), MAX_LISTINGS);
        let first = Url::parse("http://o0/m.m3u8").unwrap();
        assert!(book.listing(&first, 0).is_none());
    }
}
