//! API keys end to end: a real `warren-management` started with an admin key, a real worker,
//! and requests with no key, a wrong key, function keys, and revoked keys.

use std::process::Command;

use serde_json::{json, Value};
use warren_tests::*;

async fn answer(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn invoke_with(http: &reqwest::Client, m: &Management, name: &str, input: &str) -> (u16, Value) {
    let url = format!("{}/api/functions/{name}/invoke?timeout_ms=30000", m.base);
    answer(http.post(url).body(input.to_string()).send().await.unwrap()).await
}

async fn get_with(http: &reqwest::Client, m: &Management, path: &str) -> (u16, Value) {
    answer(http.get(format!("{}{path}", m.base)).send().await.unwrap()).await
}

fn assert_error(answer: &(u16, Value), status: u16, message_part: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let code = answer.1["error"]["code"].as_str().unwrap_or_default();
    assert_eq!(code, if status == 401 { "unauthorized" } else { "forbidden" }, "{}", answer.1);
    let message = answer.1["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(message_part), "{message:?} should mention {message_part:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_decide_who_may_do_what() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let m = Management::start(&pg_url()).await;
    let names: Vec<String> = ["fa", "fb", "anon", "adm"].iter().map(|p| unique(p)).collect();
    let (fa, fb, anon, adm) = (&names[0], &names[1], &names[2], &names[3]);
    for (name, auth) in [(fa, None), (fb, Some("function")), (anon, Some("anonymous")), (adm, Some("admin"))] {
        let auth = auth.map(|a| format!("auth = \"{a}\"\n")).unwrap_or_default();
        let manifest = format!("name = \"{name}\"\nruntime = \"echo\"\npool = \"{pool}\"\n{auth}");
        assert_eq!(m.publish_dir(&function_dir(tmp.path(), &manifest, &[])).await["version"], 1);
    }
    let _worker = start_worker(&pg_url(), &pool, 4, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;
    let nobody = reqwest::Client::new();

    // Open endpoints need no key.
    for path in ["/healthz", "/metrics", "/api/openapi.json"] {
        assert_eq!(get_with(&nobody, &m, path).await.0, 200, "{path}");
    }
    assert_eq!(get_with(&nobody, &m, "/portal/none.js").await.0, 404, "portal files are open (this one is missing)");

    // No key: 401 everywhere else, with a message that says how to send one.
    assert_error(&get_with(&nobody, &m, "/api/functions").await, 401, "Authorization: Bearer");
    assert_error(&get_with(&nobody, &m, "/api/keys").await, 401, "admin key");
    assert_error(&get_with(&nobody, &m, "/api/no/such/route").await, 401, "admin key");
    assert_error(&invoke_with(&nobody, &m, fa, "x").await, 401, "WARREN_API_KEY");
    // A key nobody made: 401 too.
    assert_error(&get_with(&client_with_key("wrn_nope"), &m, "/api/functions").await, 401, "not known");

    // An anonymous function: invoked and read with no key at all.
    let (status, v) = invoke_with(&nobody, &m, anon, "hi").await;
    assert_eq!((status, v["result"].as_str()), (200, Some("hi")), "{v}");
    let anon_id = v["id"].as_str().unwrap().to_string();
    assert_eq!(get_with(&nobody, &m, &format!("/api/invocations/{anon_id}")).await.0, 200);
    assert_eq!(get_with(&nobody, &m, &format!("/api/invocations/{anon_id}/logs")).await.0, 200);

    // A function key for fb, made by the admin; its secret shows once.
    let (status, created) = answer(
        m.http
            .post(format!("{}/api/keys", m.base))
            .json(&json!({"name": "app-b", "level": "function", "function": fb}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let fb_key = created["key"].as_str().unwrap().to_string();
    let fb_key_id = created["id"].as_str().unwrap().to_string();
    assert!(fb_key.len() >= 64, "{fb_key}");
    let (status, listed) = get_with(&m.http, &m, "/api/keys").await;
    assert_eq!(status, 200);
    let text = listed.to_string();
    assert!(text.contains(&fb_key_id) && !text.contains(&fb_key), "the list never shows a key: {text}");
    assert!(!text.contains("hash"), "nor its hash: {text}");
    let mine = listed.as_array().unwrap().iter().find(|k| k["id"] == fb_key_id.as_str()).unwrap();
    assert_eq!((mine["level"].as_str(), mine["function"].as_str()), (Some("function"), Some(fb.as_str())));

    // The function key: its function yes, the rest no (403, saying why).
    let with_fb = client_with_key(&fb_key);
    let (status, v) = invoke_with(&with_fb, &m, fb, "for b").await;
    assert_eq!((status, v["result"].as_str()), (200, Some("for b")), "{v}");
    let fb_id = v["id"].as_str().unwrap().to_string();
    assert_eq!(get_with(&with_fb, &m, &format!("/api/invocations/{fb_id}")).await.0, 200);
    assert_error(&invoke_with(&with_fb, &m, fa, "x").await, 403, "this key is for function");
    assert_error(&invoke_with(&with_fb, &m, adm, "x").await, 403, "admin key");
    assert_error(&get_with(&with_fb, &m, "/api/functions").await, 403, "admin key");
    // Trying a version other than the active one (a draft) and reading packages: admin only.
    let pinned =
        with_fb.post(format!("{}/api/functions/{fb}/invoke?version=1", m.base)).body("x").send().await.unwrap();
    assert_error(&answer(pinned).await, 403, "admin key");
    assert_error(&get_with(&with_fb, &m, &format!("/api/functions/{fb}/versions/1/package")).await, 403, "admin key");
    let pinned = m.http.post(format!("{}/api/functions/{fb}/invoke?version=1", m.base)).body("x").send().await.unwrap();
    let (status, v) = answer(pinned).await;
    assert_eq!((status, v["version"].as_i64()), (200, Some(1)), "{v}");
    assert_error(&get_with(&with_fb, &m, "/api/keys").await, 403, "admin key");
    let (_, v) = invoke_with(&m.http, &m, fa, "by admin").await;
    let fa_id = v["id"].as_str().unwrap().to_string();
    assert_error(&get_with(&with_fb, &m, &format!("/api/invocations/{fa_id}")).await, 403, "this key is for function");
    assert_error(&get_with(&nobody, &m, &format!("/api/invocations/{fa_id}/logs")).await, 401, "key");
    // The x-warren-key header works as well as a bearer token.
    let r = nobody
        .post(format!("{}/api/functions/{fb}/invoke", m.base))
        .header("x-warren-key", &fb_key)
        .body("via header")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The admin key does everything, admin-level functions included.
    assert_eq!(invoke_with(&m.http, &m, adm, "x").await.0, 200);

    // A valid key is read from the store once, then cached: 20 more invokes with it cost no
    // key lookup. An unknown key is looked up every time (never cached).
    let lookups = || async {
        let (_, text) = get_with(&nobody, &m, "/metrics").await;
        let text = text.as_str().unwrap_or_default().to_string();
        text.lines()
            .find(|l| l.starts_with("warren_store_latency_seconds_count{op=\"find_key_by_hash\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = lookups().await;
    for i in 0..20 {
        assert_eq!(invoke_with(&with_fb, &m, fb, &format!("cached {i}")).await.0, 200);
    }
    // At most one re-read, should the 5 s the cache keeps a key end during the 20 (one lookup
    // per request would be 20).
    let after = lookups().await;
    assert!(after <= before + 1, "a cached key costs no store read: {} lookups for 20 requests", after - before);
    let nope = client_with_key("wrn_still_nope");
    for _ in 0..3 {
        assert_error(&get_with(&nope, &m, "/api/functions").await, 401, "not known");
    }
    assert_eq!(lookups().await, after + 3, "an unknown key is looked up each time");

    // An admin key made through the API is an admin key.
    let (_, admin2) = answer(
        m.http
            .post(format!("{}/api/keys", m.base))
            .json(&json!({"name": "ops", "level": "admin"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(get_with(&client_with_key(admin2["key"].as_str().unwrap()), &m, "/api/functions").await.0, 200);
    // Bad key requests say what to send.
    let (status, v) = answer(
        m.http
            .post(format!("{}/api/keys", m.base))
            .json(&json!({"name": "x", "level": "function"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{v}");

    // Revoked: refused from then on; revoking twice is a 404.
    let r = m.http.delete(format!("{}/api/keys/{fb_key_id}", m.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_error(&invoke_with(&with_fb, &m, fb, "x").await, 401, "revoked");
    let r = m.http.delete(format!("{}/api/keys/{fb_key_id}", m.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let (_, listed) = get_with(&m.http, &m, "/api/keys").await;
    let mine = listed.as_array().unwrap().iter().find(|k| k["id"] == fb_key_id.as_str()).unwrap();
    assert!(mine["revoked_ms"].as_i64().is_some(), "{mine}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_its_key_from_flags_env_or_config_file() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let m = Management::start(&pg_url()).await;

    // Keys through the CLI: created (printed once), listed without the secret.
    let out = m.cli().args(["keys", "create", "cli-made", "--level", "admin"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let made = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(made.starts_with("wrn_"), "{made}");
    let out = m.cli().args(["keys", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("cli-made") && !listed.contains(&made), "{listed}");
    let out = m.cli().args(["--json", "keys", "list"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert!(v.as_array().unwrap().iter().any(|k| k["name"] == "cli-made"));

    // From a config file alone (no flags, no environment).
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, format!("url = \"{}\"\nkey = \"{made}\"\n", m.base)).unwrap();
    let bare = || {
        let mut c = Command::new(bin("warren"));
        c.env_remove("WARREN_URL").env_remove("WARREN_API_KEY").env_remove("WARREN_CONFIG");
        c
    };
    let out = bare().args(["--config"]).arg(&config).arg("functions").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A flag beats the file: a wrong key is refused with a message that says what to do.
    let out = bare().args(["--key", "wrn_wrong", "--config"]).arg(&config).arg("functions").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not known") && err.contains("401"), "{err}");
    // No key at all: 401, and the message names the ways to give one.
    let out = bare().args(["--url", &m.base, "functions"]).env("HOME", tmp.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("WARREN_API_KEY"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_refuses_to_start_without_an_admin_key() {
    require_services();
    let out = Command::new(bin("warren-management"))
        .args(["--amqp", &amqp_url(), "--store", &pg_url(), "--listen", "127.0.0.1:0"])
        .env_remove("WARREN_ADMIN_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-key") && err.contains("--insecure-no-auth"), "{err}");

    // --insecure-no-auth: everything open.
    let m = Management::start_with(&pg_url(), &["--insecure-no-auth"]).await;
    let r = reqwest::Client::new().get(format!("{}/api/functions", m.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
