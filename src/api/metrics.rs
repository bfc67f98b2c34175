//! `GET /metrics`: the registry's counters, request counts and upstream latency in the
//! Prometheus text format, rendered at scrape time from the same atomics `/stats` reads.
//! Per-stream label sets come from the live registry, so a deleted stream's series are
//! gone at the next scrape instead of lingering forever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::connections::{Connections, Refusal, Timeout, TooLarge};
use crate::metrics::{MetricKind, PromText, CONTENT_TYPE};
use crate::registry::Counters;
use crate::upstream::Fetch;

use super::AppState;

/// The most streams given their own label set. Each costs seven series; beyond this a
/// scrape would grow without bound with the number of registered channels.
pub const MAX_STREAM_SERIES: usize = 1000;

/// Requests answered, by route template and status class. Route templates are a fixed
/// set, so the label space is bounded whatever the URLs requested.
#[derive(Debug, Default)]
pub struct RequestCounts {
    by_route: RwLock<HashMap<(String, &'static str), AtomicU64>>,
}

impl RequestCounts {
    fn add(&self, route: &str, class: &'static str) {
        if let Some(c) = self
            .by_route
            .read()
            .expect("request counts lock")
            .get(&(route.to_string(), class))
        {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.by_route
            .write()
            .expect("request counts lock")
            .entry((route.to_string(), class))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<(String, &'static str, u64)> {
        let mut v: Vec<_> = self
            .by_route
            .read()
            .expect("request counts lock")
            .iter()
            .map(|((r, c), n)| (r.clone(), *c, n.load(Ordering::Relaxed)))
            .collect();
        v.sort();
        v
    }
}

/// Counts every request by its route template and status class.
pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| route_label(p.as_str()))
        .unwrap_or_else(|| "unmatched".to_string());
    let res = next.run(req).await;
    let class = match res.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    state.requests.add(&route, class);
    res
}

/// Player connections: open against the limit, refused, closed by the timeouts, and
/// requests refused for their size.
fn connection_series(page: &mut PromText, c: &Connections) {
    page.gauge(
        "m3u_proxy_open_connections",
        "Player TCP connections open now, idle keep-alive ones included.",
        &[],
        c.open(),
    )
    .gauge(
        "m3u_proxy_max_connections",
        "MAX_CONNECTIONS in effect: beyond it new connections get 503.",
        &[],
        c.max() as u64,
    );
    for why in Refusal::ALL {
        page.counter(
            "m3u_proxy_connections_refused_total",
            "New connections (or requests through a trusted proxy) refused by a limit.",
            &[("reason", why.label())],
            c.refused(why),
        );
    }
    for which in Timeout::ALL {
        page.counter(
            "m3u_proxy_connections_timed_out_total",
            "Connections closed because the client sent no request, no body or nothing at all in time.",
            &[("timeout", which.label())],
            c.timed_out(which),
        );
    }
    for what in TooLarge::ALL {
        page.counter(
            "m3u_proxy_requests_too_large_total",
            "Requests refused before any handler for a body, head or URL over its limit.",
            &[("limit", what.label())],
            c.too_large(what),
        );
    }
}

/// A route template as a label value, with `:id` for `{id}`: braces are legal in label
/// values, but simple scrapers that cut a sample at the first `}` would drop the line.
fn route_label(template: &str) -> String {
    template.replace('{', ":").replace('}', "")
}

#[utoipa::path(get, path = "/metrics", tag = "stats",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain; version=0.0.4", body = String), (status = 401, description = "The API token is missing (`missing_token`)", body = crate::model::ErrorBody),
        (status = 403, description = "The API token is wrong (`invalid_token`)", body = crate::model::ErrorBody)))]
pub async fn render(State(state): State<AppState>) -> Response {
    let r = &state.registry;
    let mut page = PromText::new();
    page.gauge(
        "m3u_proxy_uptime_seconds",
        "Seconds since the proxy started.",
        &[],
        r.clock.uptime_seconds(),
    );
    for (route, class, n) in state.requests.snapshot() {
        page.counter(
            "m3u_proxy_requests_total",
            "HTTP requests answered, by route template and status class.",
            &[("route", &route), ("status", class)],
            n,
        );
    }
    let t = &r.totals;
    let (active_streams, active_clients) = r.active_counts();
    page.counter(
        "m3u_proxy_bytes_served_total",
        "Bytes written to players.",
        &[],
        Counters::get(&t.bytes),
    )
    .counter(
        "m3u_proxy_segments_served_total",
        "Media requests (segments, parts, init sections) served.",
        &[],
        Counters::get(&t.segments),
    )
    .counter(
        "m3u_proxy_upstream_errors_total",
        "Upstream failures seen by viewers' requests.",
        &[],
        Counters::get(&t.errors),
    )
    .counter(
        "m3u_proxy_failovers_total",
        "Switches to another upstream URL.",
        &[],
        Counters::get(&t.failovers),
    )
    .gauge(
        "m3u_proxy_active_connections",
        "Player connections open now.",
        &[],
        Counters::get(&t.active_connections),
    )
    .gauge(
        "m3u_proxy_streams",
        "Registered streams.",
        &[],
        r.stream_count(),
    )
    .gauge(
        "m3u_proxy_clients",
        "Tracked clients.",
        &[],
        r.client_count(),
    )
    .counter(
        "m3u_proxy_clients_untracked_total",
        "Viewers served without a client entry because MAX_CLIENTS or MAX_CLIENTS_PER_STREAM was reached.",
        &[],
        r.untracked_clients(),
    )
    .gauge(
        "m3u_proxy_active_streams",
        "Streams with an open connection or a viewer request within CLIENT_TIMEOUT.",
        &[],
        active_streams,
    )
    .gauge(
        "m3u_proxy_active_clients",
        "Clients with an open connection or a request within CLIENT_TIMEOUT.",
        &[],
        active_clients,
    )
    .counter(
        "m3u_proxy_events_total",
        "Events emitted on the event bus.",
        &[],
        r.events.last_id(),
    );
    if let Some(presence) = &state.presence {
        fleet_series(&mut page, &presence.view());
    }
    let cache = &state.cache;
    page.counter(
        "m3u_proxy_cache_hits_total",
        "Segment and playlist requests answered from a shared upstream fetch.",
        &[],
        cache.hits(),
    )
    .counter(
        "m3u_proxy_cache_misses_total",
        "Segment and playlist requests that fetched upstream for the shared cache.",
        &[],
        cache.misses(),
    )
    .gauge(
        "m3u_proxy_cache_bytes",
        "Bytes of segments held in the shared cache (fills under way included).",
        &[],
        cache.bytes(),
    )
    .gauge(
        "m3u_proxy_cache_entries",
        "Segment entries and playlist slots held in the shared cache.",
        &[],
        cache.entries(),
    );
    let fanout = &state.live.fanout;
    page.gauge(
        "m3u_proxy_live_upstreams",
        "Shared live TS upstream connections open now (one per watched live stream).",
        &[],
        fanout.live_upstreams(),
    )
    .counter(
        "m3u_proxy_live_joins_total",
        "Live TS viewers who joined a running shared upstream instead of opening one.",
        &[],
        fanout.joins(),
    );
    for (action, n) in [("dropped", fanout.dropped()), ("skipped", fanout.skipped())] {
        page.counter(
            "m3u_proxy_live_slow_viewers_total",
            "Live TS viewers who fell behind the shared buffer, by what was done to them.",
            &[("action", action)],
            n,
        );
    }
    connection_series(&mut page, &state.connections);
    page.histogram(
        "m3u_proxy_store_flush_seconds",
        "Time each store commit took (a management write or a counter flush).",
        &[("backend", state.store.backend())],
        &state.store.flush_seconds(),
    );
    page.counter(
        "m3u_proxy_store_flush_failures_total",
        "Store commits that failed (their changes are kept for the next commit).",
        &[("backend", state.store.backend())],
        state.store.flush_failures(),
    );
    provider_series(&mut page, &state.upstream.providers().infos().await);
    for fetch in Fetch::MEASURED {
        if let Some(h) = state.upstream.latency(fetch) {
            page.histogram(
                "m3u_proxy_upstream_latency_seconds",
                "Time from upstream request to response headers.",
                &[("kind", fetch.as_str())],
                &h.snapshot(),
            );
        }
    }
    for name in [
        "m3u_proxy_stream_bytes_served_total",
        "m3u_proxy_stream_segments_served_total",
        "m3u_proxy_stream_errors_total",
        "m3u_proxy_stream_failovers_total",
    ] {
        page.family(
            name,
            "Per stream; see the proxy-wide family.",
            MetricKind::Counter,
        );
    }
    for name in [
        "m3u_proxy_stream_active_connections",
        "m3u_proxy_stream_clients",
        "m3u_proxy_stream_failover_index",
    ] {
        page.family(
            name,
            "Per stream; see the proxy-wide family.",
            MetricKind::Gauge,
        );
    }
    let mut streams = r.streams();
    let omitted = streams.len().saturating_sub(MAX_STREAM_SERIES);
    if omitted > 0 {
        // Active streams first; the sort is stable, so the rest keep registration order
        // and the chosen set does not churn from one scrape to the next.
        streams.sort_by_key(|s| !r.stream_is_active(s));
        streams.truncate(MAX_STREAM_SERIES);
    }
    page.gauge(
        "m3u_proxy_stream_series_omitted",
        "Streams left out of the per-stream families by the cardinality cap; the proxy-wide families count them.",
        &[],
        omitted,
    );
    for s in streams {
        let c = &s.counters;
        let labels = [("stream_id", s.id.as_str())];
        page.counter(
            "m3u_proxy_stream_bytes_served_total",
            "",
            &labels,
            Counters::get(&c.bytes),
        )
        .counter(
            "m3u_proxy_stream_segments_served_total",
            "",
            &labels,
            Counters::get(&c.segments),
        )
        .counter(
            "m3u_proxy_stream_errors_total",
            "",
            &labels,
            Counters::get(&c.errors),
        )
        .counter(
            "m3u_proxy_stream_failovers_total",
            "",
            &labels,
            Counters::get(&c.failovers),
        )
        .gauge(
            "m3u_proxy_stream_active_connections",
            "",
            &labels,
            Counters::get(&c.active_connections),
        )
        .gauge("m3u_proxy_stream_clients", "", &labels, s.client_count())
        .gauge(
            "m3u_proxy_stream_failover_index",
            "",
            &labels,
            s.current_index(),
        );
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], page.finish()).into_response()
}

/// The slots, limit and refusals of each provider.
fn provider_series(page: &mut PromText, providers: &[crate::model::ProviderInfo]) {
    type Series = (
        &'static str,
        &'static str,
        MetricKind,
        fn(&crate::model::ProviderInfo) -> u64,
    );
    let series: [Series; 4] = [
        (
            "m3u_proxy_provider_connections",
            "Upstream connections (slots) held now per provider; an HLS stream being watched holds one.",
            MetricKind::Gauge,
            |p| p.active_connections,
        ),
        (
            "m3u_proxy_provider_max_connections",
            "The connection limit of each provider.",
            MetricKind::Gauge,
            |p| u64::from(p.max_connections),
        ),
        (
            "m3u_proxy_provider_rejections_total",
            "Connections refused because every slot of the provider was taken.",
            MetricKind::Counter,
            |p| p.rejections,
        ),
        (
            "m3u_proxy_provider_replacements_total",
            "Streams stopped to make room on a full provider (replace_oldest).",
            MetricKind::Counter,
            |p| p.replacements,
        ),
    ];
    for (name, help, kind, value) in series {
        page.family(name, help, kind);
        for p in providers {
            let labels = [("provider", p.name.as_str())];
            match kind {
                MetricKind::Counter => page.counter(name, help, &labels, value(p)),
                _ => page.gauge(name, help, &labels, value(p)),
            };
        }
    }
}

/// In a fleet: the fleet-wide totals (stored counters plus this instance's unflushed
/// increments; viewers and connections of every live instance) and each live instance's
/// share. The families above stay this instance's, so a Prometheus scraping every
/// instance can still sum them.
fn fleet_series(page: &mut PromText, view: &crate::fleet::presence::View<'_>) {
    let [bytes, segments, errors, failovers] = view.totals();
    let instances = view.instances();
    page.gauge(
        "m3u_proxy_fleet_instances",
        "Live instances of the fleet (a heartbeat within 15 s), this one included.",
        &[],
        instances.len(),
    )
    .counter(
        "m3u_proxy_fleet_bytes_served_total",
        "Bytes written to players by the whole fleet.",
        &[],
        bytes,
    )
    .counter(
        "m3u_proxy_fleet_segments_served_total",
        "Media requests served by the whole fleet.",
        &[],
        segments,
    )
    .counter(
        "m3u_proxy_fleet_upstream_errors_total",
        "Upstream failures seen by the whole fleet.",
        &[],
        errors,
    )
    .counter(
        "m3u_proxy_fleet_failovers_total",
        "Switches to another upstream URL in the whole fleet.",
        &[],
        failovers,
    )
    .gauge(
        "m3u_proxy_fleet_active_connections",
        "Player connections open now on every live instance.",
        &[],
        view.connections(),
    );
    for i in &instances {
        let labels = [("instance", i.id.as_str())];
        page.gauge(
            "m3u_proxy_fleet_instance_clients",
            "Tracked clients of each live instance.",
            &labels,
            i.clients,
        )
        .gauge(
            "m3u_proxy_fleet_instance_connections",
            "Player connections of each live instance.",
            &labels,
            i.connections,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::route_label;

    #[test]
    fn route_labels_carry_no_braces() {
        assert_eq!(
            route_label("/hls/{id}/{token}/{file}"),
            "/hls/:id/:token/:file"
        );
        assert_eq!(route_label("/stats"), "/stats");
    }
}
