//! Issue 16: `/openapi.json` describes every route the router serves (and nothing it does
//! not), and the dashboard and `/docs` are served from the binary, relative to where they
//! sit, without the token, with nothing from another host.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::util::Proxy;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every `(path, method)` that a `.route("...", ...)` call in `src/api/` registers, read from
/// the source so that a new route cannot be forgotten here.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let mut rest = source.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            if !rest.trim_start().starts_with('"') {
                continue;
            }
            // The call's text, up to its closing parenthesis.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap();
            let call = rest[..end].trim_start();
            let route = call[1..].split('"').next().unwrap().to_string();
            let handlers = &call[route.len() + 2..];
            for method in METHODS {
                let bare = format!("{method}(");
                let called = handlers
                    .match_indices(&bare)
                    .any(|(i, _)| i == 0 || !handlers.as_bytes()[i - 1].is_ascii_alphanumeric());
                if called {
                    found.insert((route.clone(), method.to_string()));
                }
            }
        }
    }
    found
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                ops.insert((path.clone(), method.to_string()));
            }
        }
    }
    ops
}

#[tokio::test]
async fn openapi_is_3_1_with_the_error_shape() {
    let proxy = Proxy::start_with(|c| c.api_token = Some("t0ken".into())).await;
    // Public like /health: the document holds no secret.
    let res = proxy.get("/openapi.json").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["detail", "code"]));
    // A management route: its body, its answer, its errors and the token.
    let create = &doc["paths"]["/streams"]["post"];
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreateStream"
    );
    assert_eq!(
        create["responses"]["422"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    assert!(create["responses"]["401"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["api_token"]["name"],
        "X-API-Token"
    );
    // A playback route needs no token.
    assert_eq!(
        doc["paths"]["/stream/{id}"]["get"]["security"],
        serde_json::json!([{}])
    );
    proxy.stop().await;
}

#[tokio::test]
async fn every_route_is_documented() {
    let proxy = Proxy::start().await;
    let doc = proxy.get_json("/openapi.json").await;
    let served = routes_in_source();
    assert!(served.len() > 20, "the source scan found {served:?}");
    let documented = documented(&doc);
    let missing: Vec<_> = served.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json (add #[utoipa::path] and list the handler in src/api/openapi.rs): {missing:?}"
    );
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(extra.is_empty(), "documented but not routed: {extra:?}");
    proxy.stop().await;
}

/// The other direction, by asking the live router: each documented operation is answered by
/// its route (not the "no such route" fallback, not 405).
#[tokio::test]
async fn every_documented_operation_is_served() {
    let proxy = Proxy::start().await;
    let doc = proxy.get_json("/openapi.json").await;
    for (path, method) in documented(&doc) {
        let concrete = path
            .split('/')
            .map(|part| if part.starts_with('{') { "x" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let res = proxy
            .http
            .request(method.clone(), proxy.url(&concrete))
            .send()
            .await
            .unwrap();
        let status = res.status();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if status == StatusCode::NOT_FOUND {
            let body: Value = res.json().await.unwrap();
            assert_ne!(body["detail"], "no such route", "{method} {path}");
        }
    }
    proxy.stop().await;
}

#[tokio::test]
async fn dashboard_is_served_relative_to_where_it_sits() {
    let proxy = Proxy::start_with(|c| c.api_token = Some("t0ken".into())).await;
    for (path, base) in [
        ("/", "./"),
        ("/ui/", "../"),
        ("/m3u-proxy/", "./"),
        ("/m3u-proxy/ui/", "../"),
        ("/docs", "./"),
    ] {
        // No token needed: the page holds no secret and asks for the token itself.
        let res = proxy.get(path).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let h = res.headers();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
        let html = res.text().await.unwrap();
        assert!(
            html.contains(&format!("<base href=\"{base}\">")),
            "{path}: {html}"
        );
    }
    // The prefix without its slash: relative URLs would resolve against `/`.
    let res = proxy
        .http
        .get(proxy.url("/m3u-proxy"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(res.headers()["location"], "m3u-proxy/");

    let js = proxy.get("/ui/app.js").await;
    assert_eq!(js.status(), StatusCode::OK);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let css = proxy.get("/m3u-proxy/ui/style.css").await;
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    let missing = proxy.get("/ui/nope.js").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.json::<Value>().await.unwrap()["code"], "not_found");
    // Management routes still need the token.
    assert_eq!(proxy.get("/stats").await.status(), StatusCode::UNAUTHORIZED);
    proxy.stop().await;
}

/// Everything the page loads is in `ui/`, under 300 KB together, and names no other host:
/// the only absolute URLs are placeholders and examples shown as text.
#[test]
fn dashboard_is_small_and_self_contained() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/ui");
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        total += text.len();
        for (at, _) in text.match_indices("://") {
            let around = &text[at.saturating_sub(40)..(at + 40).min(text.len())];
            assert!(
                around.contains("placeholder=\"https://origin.example/"),
                "{}: an absolute URL: {around}",
                path.display()
            );
        }
    }
    assert!(total < 300_000, "the dashboard weighs {total} bytes");
}

/// Found by schemathesis: JSON Schema counts `5.0` as an integer, and a form's empty
/// `stream_id` meant "no stream matches" instead of "any stream".
#[tokio::test]
async fn webhooks_take_whole_numbers_and_an_empty_stream_id_as_none() {
    let proxy = Proxy::start().await;
    let res = proxy
        .http
        .post(proxy.url("/webhooks"))
        .json(&serde_json::json!({
            "url": "http://127.0.0.1:9/hook",
            "timeout_secs": 5.0,
            "max_retries": 2.0,
            "stream_id": "",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let hook: Value = res.json().await.unwrap();
    assert_eq!(hook["timeout_secs"], 5);
    assert_eq!(hook["max_retries"], 2);
    assert_eq!(hook["stream_id"], Value::Null);
    for bad in [
        serde_json::json!(5.5),
        serde_json::json!(-1),
        serde_json::json!("5"),
    ] {
        let res = proxy
            .http
            .post(proxy.url("/webhooks"))
            .json(&serde_json::json!({"url": "http://127.0.0.1:9/other", "timeout_secs": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(res.json::<Value>().await.unwrap()["code"], "invalid_body");
    }
    proxy.stop().await;
}
