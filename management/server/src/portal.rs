//! The portal: a single page (plain HTML, CSS and JavaScript) that management serves from its
//! own binary. Only the code editor is built: `editor.js` is CodeMirror 6 bundled by
//! `management/server/portal-editor/build.sh` and committed, so building Warren needs no
//! Node.js. `GET /` is the page, `GET /portal/{file}` its assets. The page
//! reads and drives the JSON API like any other client (with the API key the user signs in
//! with, kept in the tab's `sessionStorage`); nothing here reads the store.
//!
//! Assets are revalidated on every load (`Cache-Control: no-cache` with a content `ETag`, so a
//! browser gets a 304 while they are unchanged and the new ones right after an upgrade).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::management::Management;
use crate::reply::ApiError;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset =
    Asset { name: "index.html", content_type: "text/html; charset=utf-8", body: include_bytes!("portal/index.html") };

const ASSETS: &[Asset] = &[
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("portal/app.js") },
    Asset {
        name: "develop.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("portal/develop.js"),
    },
    Asset {
        name: "editor.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("portal/editor.js"),
    },
    Asset { name: "app.css", content_type: "text/css; charset=utf-8", body: include_bytes!("portal/app.css") },
    Asset { name: "icon.svg", content_type: "image/svg+xml", body: include_bytes!("portal/icon.svg") },
];

/// Scripts and styles only from here: the page holds no inline script, and API answers are
/// inserted as text, never as markup.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// `GET /` and `GET /portal/{file}`, open to all (the API behind them asks for keys).
pub fn routes() -> Router<Arc<Management>> {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { serve(&INDEX, &headers) }))
        .route("/portal/{file}", get(asset))
}

async fn asset(file: Result<Path<String>, PathRejection>, headers: HeaderMap) -> Response {
    // A path that is not text (`/portal/%FF`) is a JSON 400 like every other refusal.
    let file = match crate::reply::name_from(file) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => serve(a, &headers),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("the portal has no file {file:?}; open / for the portal"),
        )
        .into_response(),
    }
}

fn serve(a: &Asset, headers: &HeaderMap) -> Response {
    let etag = etag(a.body);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { a.body.into_response() };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if a.name == INDEX.name {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    }
    r
}

/// A strong validator from the content (FNV-1a, 64 bits: the files are few and fixed per build).
fn etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_served() {
        let page = std::str::from_utf8(INDEX.body).unwrap();
        for a in ASSETS {
            assert!(page.contains(&format!("/portal/{}", a.name)), "index.html does not use {}", a.name);
        }
        assert!(!page.contains("<script>"), "no inline script: the CSP forbids it");
    }

    #[test]
    fn the_editor_bundle_is_built_from_its_sources() {
        let bundle = std::str::from_utf8(include_bytes!("portal/editor.js")).unwrap();
        let mut sources = include_bytes!("../portal-editor/editor.mjs").to_vec();
        sources.extend_from_slice(include_bytes!("../portal-editor/package-lock.json"));
        let digest = warren_wire::package::sha256_hex(&sources);
        assert!(
            bundle.lines().take(2).any(|l| l.ends_with(&format!("sha256 {digest}"))),
            "portal/editor.js is older than portal-editor/editor.mjs or its package-lock.json: run \
             management/server/portal-editor/build.sh and commit the bundle"
        );
    }

    #[test]
    fn etag_revalidates() {
        let mut h = HeaderMap::new();
        assert_eq!(serve(&ASSETS[0], &h).status(), StatusCode::OK);
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&etag(ASSETS[0].body)).unwrap());
        let r = serve(&ASSETS[0], &h);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_ne!(etag(ASSETS[0].body), etag(ASSETS[1].body));
    }
}
