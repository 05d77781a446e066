//! The API router in process, on a real SQLite store and the in-process transport: the OpenAPI
//! document matches the routes, and random requests never panic it or get a 5xx other than 503.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use serde_json::Value;
use tower::ServiceExt;
use warren_management::api::{OPENAPI, ROUTES};
use warren_management::keys::AuthMode;
use warren_management::{Config, Management};
use warren_transport::memory::MemoryTransport;

const ADMIN_KEY: &str = "router-test-admin-key-0123456789";

/// A router over a fresh SQLite file (kept alive by the returned folder), with one published
/// echo function `echo`. Sync invokes wait 50 ms at most: no worker runs here.
async fn app() -> (axum::Router, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let store = warren_store::open(&format!("sqlite://{}", tmp.path().join("w.db").display())).await.unwrap();
    let transport = Arc::new(MemoryTransport::new(1000));
    let config = Config {
        auth: AuthMode::with_admin_key(&ADMIN_KEY.into()).unwrap(),
        default_sync_timeout: Duration::from_millis(50),
        max_sync_timeout: Duration::from_millis(100),
        ..Config::default()
    };
    let m = Management::start(store, transport, config).await.unwrap();
    let dir = tmp.path().join("echo");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("function.toml"), "name = \"echo\"\nruntime = \"echo\"\n").unwrap();
    m.catalog.publish(&warren_wire::package::pack_dir(&dir).unwrap(), None, true).await.unwrap();
    (warren_management::api::router(m), tmp)
}

fn documented_routes() -> BTreeSet<(String, String)> {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    assert!(doc["openapi"].as_str().unwrap_or_default().starts_with("3."), "an OpenAPI 3 document");
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        // The Azure Functions apps' route space is the router's fallback, not a route.
        if item["x-warren-fallback"] == Value::Bool(true) {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

/// The routes `router()` registers, read from its source: every `.route("PATH", ...)` before the
/// fallback, and the method functions named in it (over one line or several).
fn registered_routes() -> BTreeSet<(String, String)> {
    let src = include_str!("../src/api.rs");
    let body = &src[src.find("pub fn router(").expect("router()")..];
    let body = &body[..body.find(".fallback(").expect("router() sets a fallback after its routes")];
    // The routes merged in from crate::triggers_api.
    let triggers = include_str!("../src/triggers_api.rs");
    let triggers = &triggers[triggers.find("pub fn routes(").expect("triggers_api::routes()")..];
    let triggers = &triggers[..triggers.find("\n}\n").expect("end of routes()")];
    let body = format!("{body}{triggers}");
    let mut out = BTreeSet::new();
    for call in body.split(".route(\"").skip(1) {
        let (path, args) = call.split_once('"').unwrap();
        for method in ["get", "post", "put", "delete", "patch"] {
            let called = args.match_indices(&format!("{method}(")).any(|(i, _)| {
                i == 0 || !args.as_bytes()[i - 1].is_ascii_alphanumeric() && args.as_bytes()[i - 1] != b'_'
            });
            if called {
                out.insert((method.to_uppercase(), path.to_string()));
            }
        }
    }
    out
}

#[test]
fn openapi_describes_exactly_the_routes() {
    let listed: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(listed.len(), ROUTES.len(), "ROUTES has no duplicates");
    assert_eq!(registered_routes(), listed, "api::ROUTES must list what router() registers");
    assert_eq!(documented_routes(), listed, "openapi.json must describe exactly api::ROUTES");
}

#[test]
fn azure_apps_may_not_take_warrens_own_api_paths() {
    // An app route starting with one of these would never be reached: publish refuses them.
    for (_, path) in ROUTES {
        let Some(rest) = path.strip_prefix("/api/") else { continue };
        let first = rest.split('/').next().unwrap();
        assert!(warren_wire::azure::RESERVED_ROUTES.contains(&first), "{first} (of {path}) is in RESERVED_ROUTES");
    }
}

/// `method uri` with the admin key and no body: the status and the body.
async fn as_admin(app: &axum::Router, method: &str, uri: &str) -> (u16, axum::body::Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .body(Body::empty())
        .unwrap();
    let r = app.clone().oneshot(req).await.unwrap();
    let status = r.status().as_u16();
    (status, axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap())
}

#[tokio::test]
async fn every_listed_route_is_served() {
    let (app, _tmp) = app().await;
    for (method, path) in ROUTES {
        let uri = path
            .replace("{name}", "echo")
            .replace("{key}", "K")
            .replace("{id}", "0190d1a4-0000-7000-8000-000000000000");
        let (status, body) = as_admin(&app, method, &uri).await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            status != 405 && status != 503 && !text.contains("no such endpoint"),
            "{method} {uri} is listed but not served: {status} {text}"
        );
    }
}

/// A path segment that is not UTF-8 once decoded is refused with the JSON error shape too,
/// on the portal's files as on the API.
#[tokio::test]
async fn a_path_that_is_not_text_is_a_json_400() {
    let (app, _tmp) = app().await;
    for uri in ["/portal/%FF", "/api/functions/%FF"] {
        let (status, body) = as_admin(&app, "GET", uri).await;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(status, 400, "{uri}: {}", String::from_utf8_lossy(&body));
        assert!(v["error"]["code"].is_string(), "{uri}: {}", String::from_utf8_lossy(&body));
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("api".to_string()),
        Just("functions".to_string()),
        Just("echo".to_string()),
        Just("invoke".to_string()),
        Just("invocations".to_string()),
        Just("logs".to_string()),
        Just("settings".to_string()),
        Just("keys".to_string()),
        Just("workers".to_string()),
        Just("dead-letters".to_string()),
        Just("replay".to_string()),
        Just("healthz".to_string()),
        Just("metrics".to_string()),
        Just("openapi.json".to_string()),
        Just("portal".to_string()),
        Just("0190d1a4-0000-7000-8000-000000000000".to_string()),
        "[a-zA-Z0-9._~%-]{0,12}",
    ]
}

fn request() -> impl Strategy<Value = (String, String, Vec<u8>, u8, String)> {
    let method = prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("PUT"),
        Just("DELETE"),
        Just("PATCH"),
        Just("HEAD"),
        Just("OPTIONS")
    ]
    .prop_map(str::to_string);
    let query = prop_oneof![
        Just(String::new()),
        Just("?mode=async".to_string()),
        Just("?mode=sync&timeout_ms=1".to_string()),
        Just("?limit=99999999999999999999".to_string()),
        Just("?status=nope&function=%ff".to_string()),
        "\\?[a-z_=&%0-9]{0,20}",
    ];
    let path = (prop::collection::vec(segment(), 0..6), query).prop_map(|(s, q)| format!("/{}{q}", s.join("/")));
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        Just(br#"{"name": "k", "level": "function", "function": "echo"}"#.to_vec()),
        Just(br#"{"name": "", "level": "admin", "function": 7}"#.to_vec()),
        Just(br#"{"ids": ["x"], "all": true, "limit": -1}"#.to_vec()),
        Just(br#"{"value": "v", "secret": true}"#.to_vec()),
    ];
    // 0: no key, 1: the admin key, 2: a random bearer, 3: a random x-warren-key, 4: junk header.
    (method, path, body, 0u8..5, "[ -~]{0,40}")
}

/// One runtime and one app for every case: the store's pool and the notice listener live on it.
static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
static APP: tokio::sync::OnceCell<(axum::Router, tempfile::TempDir)> = tokio::sync::OnceCell::const_new();

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_requests_never_panic_nor_fail_inside(req in request()) {
        let rt = RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
        });
        rt.block_on(async move {
            let (method, path, body, auth, junk) = req;
            let mut builder = Request::builder().method(method.as_str()).uri(&path);
            builder = match auth {
                1 => builder.header("authorization", format!("Bearer {ADMIN_KEY}")),
                2 => builder.header("authorization", format!("Bearer {junk}")),
                3 => builder.header("x-warren-key", junk.as_str()),
                4 => builder.header("authorization", junk.as_str()),
                _ => builder,
            };
            let Ok(request) = builder.body(Body::from(body)) else { return Ok(()) };
            let router = APP.get_or_init(app).await.0.clone();
            let response = router.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            prop_assert!(status < 500 || status == 503, "{method} {path} answered {status}");
            if status >= 400 && method != "HEAD" {
                let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
                let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                prop_assert!(v["error"]["code"].is_string(), "{method} {path}: {status} without the JSON error shape");
            }
            Ok(())
        })?;
    }
}
