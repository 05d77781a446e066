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

/// Starts `warren up` on a data folder; its base URL and admin key once it answers.
async fn up(data: &std::path::Path, port: u16) -> (Proc, String, reqwest::Client) {
    let p = Proc::spawn(
        "warren up",
        Command::new(bin("warren"))
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data)
            .env_remove("WARREN_ADMIN_KEY")
            .current_dir(data.parent().unwrap()),
    );
    let base = format!("http://127.0.0.1:{port}");
    let key_file = data.join("admin.key");
    let key = eventually(Duration::from_secs(30), "warren up to write its admin key", || {
        let key_file = key_file.clone();
        async move { std::fs::read_to_string(&key_file).ok().filter(|k| !k.trim().is_empty()) }
    })
    .await;
    let http = client_with_key(key.trim());
    eventually(Duration::from_secs(30), "warren up to answer", || {
        let (http, base) = (http.clone(), base.clone());
        async move { http.get(format!("{base}/api/functions")).send().await.ok().filter(|r| r.status().is_success()) }
    })
    .await;
    (p, base, http)
}

/// The embedded queue is in memory: what a killed `warren up` held queued or running is
/// recorded failed ("lost") at the next start, not left `queued`/`running` for ever; and a
/// second `warren up` on the same data folder is refused while the first runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_warren_up_records_what_its_memory_queue_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (mut first, base, http) = up(&data, free_port()).await;
    let dir = function_dir(
        tmp.path(),
        "name = \"slow\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\ntimeout_secs = 120\n",
        &[("run.sh", "sleep 60\n")],
    );
    let pkg = warren_wire::package::pack_dir(&dir).unwrap();
    let r = http.post(format!("{base}/api/functions")).body(pkg).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let mut ids = Vec::new();
    for i in 0..12 {
        let r = http.post(format!("{base}/api/functions/slow/invoke?mode=async")).body(format!("{i}")).send().await;
        let v: serde_json::Value = r.unwrap().json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    // Some run (the workers' slots), the rest wait in the in-memory queue.
    eventually(Duration::from_secs(30), "some invocations running", || {
        let (http, base, id) = (http.clone(), base.clone(), ids[0].clone());
        async move {
            let v: serde_json::Value =
                http.get(format!("{base}/api/invocations/{id}")).send().await.ok()?.json().await.ok()?;
            (v["status"] == "running").then_some(())
        }
    })
    .await;

    let second = Command::new(bin("warren"))
        .args(["up", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"])
        .arg(&data)
        .env_remove("WARREN_ADMIN_KEY")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!second.status.success(), "a second warren up on the same data folder must be refused");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another `warren up` is using the data folder"), "{err}");

    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let (_again, base, http) = up(&data, free_port()).await;
    for id in &ids {
        let v: serde_json::Value =
            http.get(format!("{base}/api/invocations/{id}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(v["status"], "failed", "{v}");
        assert!(v["error"].as_str().unwrap_or("").starts_with("lost: the embedded Warren"), "{v}");
    }
}
