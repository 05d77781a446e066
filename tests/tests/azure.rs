//! Azure Functions apps with custom handlers, published unchanged from `tests/azure/` (a Python
//! app on `http.server`, a Node app on `http` with forwarding, an app whose handler never
//! listens, and one Warren must refuse), run by real workers on the real broker and PostgreSQL.

use std::path::PathBuf;
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueuePurgeOptions};
use serde_json::{json, Value};
use warren_tests::*;

fn app(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("azure").join(name)
}

/// Seals the apps' secret settings (connection strings).
const KEY: &str = "7a1c0e6b2f9d4c3a8b5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081920a1b";

/// Management, the app published on a pool of its own through the CLI, and one worker.
async fn publish_app(name: &str) -> (Management, Proc, String, tempfile::TempDir, std::process::Output) {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let m = Management::start_with(&pg_url(), &["--secret-key", KEY]).await;
    let pool = unique("az");
    let out = m.cli().args(["publish", app(name).to_str().unwrap(), "--pool", &pool]).output().unwrap();
    assert!(out.status.success(), "publish {name}: {}", String::from_utf8_lossy(&out.stderr));
    let worker = start_worker_with(&pg_url(), &pool, 4, &tmp.path().join("cache"), &["--secret-key", KEY], &[]);
    wait_consumers(&pool, 1).await;
    (m, worker, pool, tmp, out)
}

/// Whether a process runs (a zombie nobody reaped yet does not).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

async fn function_key(m: &Management, function: &str) -> String {
    let r = m
        .http
        .post(format!("{}/api/keys", m.base))
        .json(&json!({"name": unique("k"), "level": "function", "function": function}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_string()
}

fn set_setting(m: &Management, function: &str, name: &str, value: &str, secret: bool) {
    let mut cmd = m.cli();
    cmd.args(["settings", "set", function, name, value]);
    if secret {
        cmd.arg("--secret");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "settings set: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn a_python_custom_handler_app_serves_http_timers_and_queues_unchanged() {
    let (m, worker, _pool, _tmp, published) = publish_app("py-app").await;
    let said = String::from_utf8_lossy(&published.stdout);
    for f in ["crashy", "hello", "product", "relay", "secret", "tick"] {
        assert!(said.contains(&format!("  {f} version 1")), "publish lists {f}: {said}");
    }
    assert!(String::from_utf8_lossy(&published.stderr).contains("local.settings.json"), "the CLI says the file stays");
    let anyone = reqwest::Client::new();

    // The documented request and `res` answer: status, headers and body, log lines from the
    // handler's Logs and its stdout.
    // An anonymous function takes credentials Warren does not know (an app's own OAuth code).
    let r = anyone.get(format!("{}/api/hello?name=Ada&code=not-a-warren-key", m.base)).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers()["content-security-policy"].to_str().unwrap().starts_with("sandbox"), "answers are sandboxed");
    assert_eq!(r.headers()["x-hello"], "Ada");
    assert_eq!(r.headers()["content-type"], "application/json");
    let id = r.headers()["x-warren-invocation"].to_str().unwrap().to_string();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"greeting": "hello Ada"}));
    let (_, logs) = m.get(&format!("/api/invocations/{id}/logs")).await;
    let lines: Vec<&str> = logs.as_array().unwrap().iter().filter_map(|l| l["line"].as_str()).collect();
    assert!(lines.contains(&"greeting Ada") && lines.contains(&"hello handler saw Ada"), "{lines:?}");
    let r = anyone.post(format!("{}/api/hello", m.base)).body(r#"{"name": "Bob"}"#).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"greeting": "hello Bob"}));
    assert_eq!(anyone.delete(format!("{}/api/hello", m.base)).send().await.unwrap().status(), 405);

    // A route template, `$return`, and the auth levels with both of Azure's key forms.
    let product_key = function_key(&m, "product").await;
    let hello_key = function_key(&m, "hello").await;
    let url = format!("{}/api/products/7", m.base);
    assert_eq!(anyone.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(anyone.get(format!("{url}?code={hello_key}")).send().await.unwrap().status(), 403);
    let r = anyone.get(format!("{url}?x=1&code={product_key}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let by_code = r.headers()["x-warren-invocation"].to_str().unwrap().to_string();
    assert_eq!(r.text().await.unwrap(), "product 7");
    let r = anyone.get(&url).bearer_auth(&m.key).send().await.unwrap();
    let by_bearer = r.headers()["x-warren-invocation"].to_str().unwrap().to_string();
    assert_eq!(r.text().await.unwrap(), "product 7");
    // The function never sees the Warren key it was called with, in its URL, query or headers.
    for id in [by_code, by_bearer] {
        let (_, inv) = m.get(&format!("/api/invocations/{id}")).await;
        let input = inv["input"].to_string();
        assert!(!input.contains(&product_key) && !input.contains(&m.key), "a key reached the function: {input}");
        assert_eq!(inv["input"]["Params"]["id"], "7", "{input}");
    }
    let r = anyone.get(&url).header("x-functions-key", &product_key).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "product 7");
    let secret = format!("{}/api/secret", m.base);
    let secret_key = function_key(&m, "secret").await;
    assert_eq!(anyone.get(&secret).header("x-functions-key", &secret_key).send().await.unwrap().status(), 403);
    let r = anyone.get(&secret).header("x-functions-key", &m.key).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "admin only".to_string()));
    // An unknown path: only an admin learns that it is not there.
    assert_eq!(anyone.get(format!("{}/api/nothing-here", m.base)).send().await.unwrap().status(), 401);
    assert_eq!(m.http.get(format!("{}/api/nothing-here", m.base)).send().await.unwrap().status(), 404);

    // A handler that dies mid-invocation: the invocation fails, the handler is replaced, and
    // the retry policy of its function.json runs it again.
    let token = unique("t");
    let r =
        anyone.post(format!("{}/api/crashy", m.base)).body(json!({"token": token}).to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-warren-invocation"].to_str().unwrap().to_string();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["token"], token.as_str());
    let handler_pid = answer["pid"].as_u64().unwrap();
    let (_, inv) = m.get(&format!("/api/invocations/{id}")).await;
    assert_eq!((inv["status"].as_str(), inv["attempts"].as_i64()), (Some("succeeded"), Some(2)), "{inv}");
    let first = &inv["attempt_history"][0];
    assert!(first["error"].as_str().unwrap_or("").contains("exited"), "the first attempt died with its handler: {inv}");

    // A timer whose schedule is a setting: it waits for it, then fires with the timer info.
    set_setting(&m, "tick", "TICK_SCHEDULE", "*/1 * * * * *", false);
    let ticked = eventually(Duration::from_secs(30), "the timer to fire", || async {
        let (_, list) = m.get("/api/invocations?function=tick&status=succeeded&limit=1").await;
        list.as_array().and_then(|l| l.first().cloned())
    })
    .await;
    let info = &ticked["result"]["ReturnValue"];
    assert_eq!(info["Schedule"]["AdjustForDST"], true, "{ticked}");
    assert!(info["IsPastDue"].is_boolean() && info["ScheduleStatus"]["Next"].is_string(), "{ticked}");
    // The timer list shows the schedule in force; a secret setting's value stays `%NAME%`.
    let tick_timer =
        |list: Value| list["timers"].as_array().unwrap().iter().find(|t| t["function"] == "tick").cloned().unwrap();
    let listed = tick_timer(m.get("/api/timers").await.1);
    assert_eq!(listed["schedule"], "*/1 * * * * *", "{listed}");
    set_setting(&m, "tick", "TICK_SCHEDULE", "*/1 * * * * *", true);
    let listed = tick_timer(m.get("/api/timers").await.1);
    assert_eq!(listed["schedule"], "%TICK_SCHEDULE%", "a secret is not shown: {listed}");
    assert!(listed["next_tick"].is_string(), "the secret schedule is still in force: {listed}");

    // A RabbitMQ trigger feeding a RabbitMQ output, the broker and queue from settings.
    let (input, output) = (unique("az-in"), "azure-relay-out");
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    for q in [input.as_str(), output] {
        ch.queue_declare(q.into(), QueueDeclareOptions::durable(), Default::default()).await.unwrap();
    }
    ch.queue_purge(output.into(), QueuePurgeOptions::default()).await.unwrap();
    set_setting(&m, "relay", "RABBIT", &amqp_url(), true);
    set_setting(&m, "relay", "IN_QUEUE", &input, false);
    ch.basic_publish(
        "".into(),
        input.as_str().into(),
        BasicPublishOptions::default(),
        br#"{"order": 42}"#,
        Default::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let relayed = eventually(Duration::from_secs(30), "the relayed message", || async {
        ch.basic_get(output.into(), BasicGetOptions { no_ack: true }).await.unwrap().map(|m| m.delivery.data.clone())
    })
    .await;
    assert_eq!(serde_json::from_slice::<Value>(&relayed).unwrap(), json!({"relayed": {"order": 42}}));

    // A worker killed outright takes its custom handlers with it.
    assert!(alive(handler_pid), "the handler that answered is running");
    drop(worker);
    eventually(Duration::from_secs(10), "the handler to end with its worker", || async {
        (!alive(handler_pid)).then_some(())
    })
    .await;

    // Each function's trigger, as the CLI lists them.
    let listed = m.cli().arg("functions").output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for trigger in
        ["http GET /api/products/{id}", "timer %TICK_SCHEDULE%", "queue %IN_QUEUE%", "http GET,POST /api/hello"]
    {
        assert!(listed.contains(trigger), "{trigger} in:\n{listed}");
    }
}

#[tokio::test]
async fn a_node_app_gets_its_requests_forwarded_as_they_came() {
    let (m, _worker, _pool, _tmp, _) = publish_app("node-app").await;
    let anyone = reqwest::Client::new();
    let r = anyone.get(format!("{}/api/echo/a/b?x=1", m.base)).header("x-test", "yes").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo"], "node");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"method": "GET", "path": "/api/echo/a/b", "query": {"x": "1"}, "body": "", "test_header": "yes"})
    );
    let r = anyone.put(format!("{}/api/echo/z", m.base)).body("raw body").send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["method"].as_str(), body["body"].as_str()), (Some("PUT"), Some("raw body")));
    // A body under --max-payload-bytes (1 MiB) that is not UTF-8 goes as base64 (4/3 as long):
    // over the limit as the handler would get it, refused saying so.
    let r = anyone.post(format!("{}/api/echo/big", m.base)).body(vec![0xffu8; 900_000]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("900000-byte body as base64"), "{e}");

    let greet = format!("{}/api/greet", m.base);
    assert_eq!(anyone.get(&greet).send().await.unwrap().status(), 401);
    let key = function_key(&m, "greet").await;
    let r = anyone.get(format!("{greet}?code={key}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hi from node");
}

#[tokio::test]
async fn a_handler_that_never_listens_fails_the_invocation_clearly() {
    let (m, _worker, _pool, _tmp, _) = publish_app("py-silent").await;
    let r = reqwest::Client::new().get(format!("{}/api/ping", m.base)).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("did not listen on port") && message.contains("FUNCTIONS_CUSTOMHANDLER_PORT"), "{body}");
}

#[tokio::test]
async fn bindings_without_an_on_premises_counterpart_are_refused_at_publish() {
    require_services();
    let m = Management::start(&pg_url()).await;
    let out = m.cli().args(["publish", app("refused-app").to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    for part in ["thumbnail", "\"myBlob\"", "blobTrigger", "store", "\"doc\"", "cosmosDB"] {
        assert!(said.contains(part), "{part} in: {said}");
    }
    // Nothing of the app was stored, not even its good function.
    let (_, list) = m.get("/api/functions").await;
    assert_eq!(list, json!([]));
}
