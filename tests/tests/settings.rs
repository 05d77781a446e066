//! Settings and secrets: a secret reaches the function and appears in no log line, no API
//! answer and not in the store in clear; the function's environment is clean.

use std::process::Command;

use warren_tests::*;

const KEY: &str = "5f2b9c0e4d7a1e3f8b6c2d9a0e1f3b5c7d9e1f2a3b4c5d6e7f8091a2b3c4d5e6";
const SECRET: &str = "s3cr3t-t0ken-Zq8";

fn sha256_hex(s: &str) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    out.stdin.as_ref().unwrap().write_all(s.as_bytes()).unwrap();
    let o = out.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_setting_reaches_the_function_and_nothing_else() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("p"), unique("sec"));
    let m = Management::start_with(&pg_url(), &["--secret-key", KEY]).await;
    // Proves it has the secret (its hash), tries to leak it to the logs, and shows its env.
    let script = "echo \"token is $API_TOKEN\" >&2\nprintf %s \"$API_TOKEN\" | sha256sum | cut -d' ' -f1\necho \"plain=$PLAIN\"\nenv | sort\n";
    let manifest =
        format!("name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n");
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.sh", script)])).await;
    let _w = start_worker_with(
        &pg_url(),
        &pool,
        2,
        &tmp.path().join("cache"),
        &["--secret-key", KEY],
        &[("WORKER_ONLY_CREDENTIAL", "do-not-pass-on")],
    );
    wait_consumers(&pool, 1).await;

    let cli = |args: &[&str]| {
        let out = m.cli().args(args).output().unwrap();
        assert!(out.status.success(), "warren {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["settings", "set", &name, "PLAIN", "visible-value"]);
    let said = cli(&["settings", "set", &name, "API_TOKEN", SECRET, "--secret"]);
    assert!(!said.contains(SECRET));
    let listed = cli(&["settings", "list", &name]);
    assert!(listed.contains("PLAIN=visible-value") && listed.contains("API_TOKEN=******** (secret)"), "{listed}");

    let r = m.http.post(format!("{}/api/functions/{name}/invoke", m.base)).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(!text.contains(SECRET), "the secret leaked into the invoke answer: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], "succeeded", "{v}");
    let result = v["result"].as_str().unwrap();
    assert!(result.starts_with(&sha256_hex(SECRET)), "the function got the secret: {result}");
    assert!(result.contains("plain=visible-value"));
    assert!(result.contains("WARREN_INVOCATION_ID="), "documented variables are set");
    assert!(!result.contains("WORKER_ONLY_CREDENTIAL"), "the worker's own environment leaked: {result}");
    assert!(!result.contains("--secret-key") && !result.contains(KEY));
    assert!(result.contains("API_TOKEN=[secret]"), "echoed secrets are masked in results too: {result}");
    assert_eq!(v["logs"][0]["line"], "token is [secret]", "{v}");

    for path in [
        format!("/api/invocations/{}", v["id"].as_str().unwrap()),
        format!("/api/invocations/{}/logs", v["id"].as_str().unwrap()),
        format!("/api/functions/{name}/settings"),
        format!("/api/functions/{name}"),
    ] {
        let text = m.http.get(format!("{}{path}", m.base)).send().await.unwrap().text().await.unwrap();
        assert!(!text.contains(SECRET), "{path} leaked the secret");
    }
    let store = warren_store::open(&pg_url()).await.unwrap();
    let stored = store.list_settings(&name).await.unwrap();
    let token = stored.iter().find(|s| s.name == "API_TOKEN").unwrap();
    assert!(token.secret && token.value.starts_with("enc:v1:") && !token.value.contains(SECRET));

    // A management without a key refuses secrets instead of storing them in clear.
    let keyless = Management::start(&pg_url()).await;
    let r = keyless
        .http
        .put(format!("{}/api/functions/{name}/settings/OTHER", keyless.base))
        .json(&serde_json::json!({"value": "x", "secret": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("WARREN_SECRET_KEY"), "{v}");
}
