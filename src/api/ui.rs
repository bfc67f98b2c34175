//! The dashboard: `GET /` and `GET /ui/`, and its files under `/ui/{file}`. Plain HTML,
//! CSS and JavaScript modules from the repository's `ui/` folder, embedded in the binary
//! (no build step, no CDN). The page reads the same API as `m3u-client monitor` and holds
//! no secret: with `API_TOKEN` set it asks for the token and keeps it in session storage.
//!
//! Every URL in the page is relative to `<base href>`, which this module sets to where the
//! page sits (`./` at `/`, `../` at `/ui/`), so the page works under `ROOT_PATH` and behind
//! a reverse proxy that adds a prefix of its own.

use axum::extract::{OriginalUri, Path};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;

use super::AppState;

const INDEX_HTML: &str = include_str!("../../ui/index.html");
pub(super) const DOCS_HTML: &str = include_str!("../../ui/docs.html");

/// The dashboard's files: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/api.js"),
    ),
    (
        "docs.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/docs.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
];

/// Nothing but this server: scripts, styles, images and connections stay on the origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'self'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`, `GET /ui/`, `GET /ui/{file}`; outside the token check.
pub fn ui_router() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/ui/", get(dashboard_ui))
        .route("/ui/{file}", get(asset))
}

#[utoipa::path(get, path = "/", tag = "ui", security(()),
    responses((status = 200, description = "The dashboard", content_type = "text/html", body = String),
        (status = 308, description = "`ROOT_PATH` without its slash: to the same with one")))]
pub(super) async fn dashboard(OriginalUri(uri): OriginalUri) -> Response {
    // `/m3u-proxy` serves the page at `/` after the prefix is taken off, but relative URLs
    // would resolve against `/`: send the browser to `m3u-proxy/` first.
    let path = uri.path();
    if !path.ends_with('/') {
        let last = path.rsplit('/').next().unwrap_or_default();
        return (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, format!("{last}/"))],
        )
            .into_response();
    }
    page(INDEX_HTML, "./")
}

#[utoipa::path(get, path = "/ui/", tag = "ui", security(()),
    responses((status = 200, description = "The dashboard", content_type = "text/html", body = String)))]
pub(super) async fn dashboard_ui() -> Response {
    page(INDEX_HTML, "../")
}

#[utoipa::path(get, path = "/ui/{file}", tag = "ui", security(()),
    params(("file" = String, Path, description = "A file of the dashboard (`app.js`, `style.css`, ...)")),
    responses((status = 200, description = "The file", content_type = "text/plain", body = String),
        (status = 404, description = "No such file (`not_found`)", body = crate::model::ErrorBody)))]
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::not_found("not_found", format!("no such file: {file}")).into_response(),
    }
}

/// An HTML page with its `<base href>` set to `base`, the way back to the root.
pub(super) fn page(html: &'static str, base: &str) -> Response {
    let body = html.replacen("<base href=\"./\">", &format!("<base href=\"{base}\">"), 1);
    let mut res = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}
