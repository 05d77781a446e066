//! `warren up`: the embedded mode serves a synchronous invoke end to end.

use std::process::Command;
use std::time::Duration;

use warren_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_up_serves_sync_invokes_of_the_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _up = Proc::spawn(
        "warren up",
        Command::new(bin("warren"))
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(tmp.path().join("data"))
            .env_remove("WARREN_ADMIN_KEY")
            .current_dir(tmp.path()), // no ./examples here: the built-in samples are used
    );
    let base = format!("http://127.0.0.1:{port}");
    // `warren up` makes an admin key in its data folder; without it the API answers 401.
    let key_file = tmp.path().join("data").join("admin.key");
    let key = eventually(Duration::from_secs(30), "warren up to write its admin key", || {
        let key_file = key_file.clone();
        async move { std::fs::read_to_string(&key_file).ok().filter(|k| !k.trim().is_empty()) }
    })
    .await;
    let key = key.trim().to_string();
    let http = client_with_key(&key);
    eventually(Duration::from_secs(30), "warren up to answer 401 without a key", || {
        let base = base.clone();
        async move {
            let r = reqwest::Client::new().get(format!("{base}/api/functions")).send().await.ok()?;
            (r.status().as_u16() == 401).then_some(())
        }
    })
    .await;
    eventually(Duration::from_secs(30), "warren up to list the samples", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let v: serde_json::Value =
                http.get(format!("{base}/api/functions")).send().await.ok()?.json().await.ok()?;
            (v.as_array()?.len() >= 2).then_some(())
        }
    })
    .await;

    let r = http.post(format!("{base}/api/functions/echo/invoke")).body("ping \u{1F600}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!((v["status"].as_str(), v["result"].as_str()), (Some("succeeded"), Some("ping \u{1F600}")), "{v}");

    let r = http.post(format!("{base}/api/functions/hello/invoke")).body(r#"{"name": "Ada"}"#).send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["result"]["greeting"], "Hello, Ada!", "{v}");
    assert!(v["logs"][0]["line"].as_str().unwrap().starts_with("greeting Ada"), "{v}");

    // The CLI against it: a sync invoke prints the result and exits 0.
    let out = Command::new(bin("warren"))
        .args(["--url", &base, "invoke", "echo", "--data", "from the cli"])
        .env("WARREN_API_KEY", &key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from the cli");
}
