//! Triggers end to end (issue 4): batches with fan-in and cancel, output forwarding, timer
//! ticks across two management instances, and an AMQP source queue. Real RabbitMQ, real
//! PostgreSQL, real processes.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_tests::*;

/// Runs the `warren` CLI against a management; returns (success, stdout, stderr).
fn cli(m: &Management, args: &[&str]) -> (bool, String, String) {
    let out = m.cli().args(args).output().expect("run warren");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Publishes a plain version of a function when dropped, so a timer or a source trigger left by
/// a failed test does not keep firing in later runs that share the database.
struct Disarm<'a> {
    m: &'a Management,
    dir: std::path::PathBuf,
}

impl Drop for Disarm<'_> {
    fn drop(&mut self) {
        let _ = cli(self.m, &["publish", &self.dir.display().to_string()]);
    }
}

fn disarm<'a>(m: &'a Management, root: &Path, name: &str, pool: &str) -> Disarm<'a> {
    let dir = function_dir(
        &root.join("disarmed"),
        &format!("name = \"{name}\"\nruntime = \"echo\"\npool = \"{pool}\"\n"),
        &[],
    );
    Disarm { m, dir }
}

/// The batch once it has finished (done or cancelled), within 60 s.
async fn batch_finished(m: &Management, id: &str, what: &str) -> Value {
    eventually(Duration::from_secs(60), what, || async move {
        let (_, b) = m.get(&format!("/api/batches/{id}")).await;
        (!b["finished_ms"].is_null()).then_some(b)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_item_batch_fans_in_once_with_every_result() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let (item, report) = (unique("item"), unique("report"));
    let m = Management::start(&pg_url()).await;
    for name in [&item, &report] {
        let dir = function_dir(tmp.path(), &format!("name = \"{name}\"\nruntime = \"echo\"\npool = \"{pool}\"\n"), &[]);
        m.publish_dir(&dir).await;
    }
    let _w = start_worker(&pg_url(), &pool, 16, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    let n = 10_000;
    let file = tmp.path().join("items.ndjson");
    let lines: String = (0..n).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    std::fs::write(&file, lines).unwrap();
    // Through the CLI, as an operator would: it submits, follows progress, prints a summary.
    let (ok, stdout, stderr) =
        cli(&m, &["batch", "submit", &file.display().to_string(), "--function", &item, "--then", &report]);
    assert!(ok, "warren batch submit failed: {stdout}\n{stderr}");
    assert!(stdout.contains("done") && stdout.contains(&format!("{n} succeeded")), "summary: {stdout}");
    assert!(stderr.contains(&format!("{n}/{n}")), "the progress reached the end: {stderr}");

    let (_, batches) = m.get("/api/batches?limit=1000").await;
    let b = batches["batches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["function"] == item.as_str())
        .expect("the batch is listed")
        .clone();
    assert_eq!(b["total"], n);
    assert_eq!(b["counts"]["succeeded"], n);
    assert_eq!(b["state"], "done");
    let followup = b["followup_invocation"].as_str().expect("a follow-up was invoked").to_string();

    // Exactly one follow-up, final, whose input (echoed) holds the 10,000 results.
    let (_, reports) = m.get(&format!("/api/invocations?function={report}&limit=100")).await;
    assert_eq!(reports.as_array().unwrap().len(), 1, "the follow-up ran once: {reports}");
    let f = m.wait_status(&followup, "succeeded").await;
    let results = f["result"]["results"].as_array().expect("results inline");
    assert_eq!(results.len(), n);
    assert_eq!(f["result"]["counts"]["succeeded"], n);
    let seen: HashSet<i64> = results.iter().map(|r| r["result"]["n"].as_i64().expect("echoed item")).collect();
    assert_eq!(seen.len(), n, "every item's result, once");
    assert!(results.iter().all(|r| r["status"] == "succeeded"));

    // Paging through the results gives the same items.
    let (_, page) = m.get(&format!("/api/batches/{}/results?limit=10000", b["id"].as_str().unwrap())).await;
    assert_eq!(page["items"].as_array().unwrap().len(), n);
}

/// Items whose results are megabytes each: a page of results ends after about 8 MiB
/// whatever its `limit` (a row count alone would let one request read 10,000 results of up to
/// 16 MiB), `next_after` goes on from there, and the fan-in, over its inline limit, refers to
/// the results with the batch's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_of_megabytes_come_in_pages_bounded_by_bytes() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let (big, report) = (unique("big"), unique("report"));
    let m = Management::start(&pg_url()).await;
    let manifest =
        format!("name = \"{big}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n");
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.sh", "head -c 3000000 /dev/zero | tr '\\000' a\n")]))
        .await;
    m.publish_dir(&function_dir(
        tmp.path(),
        &format!("name = \"{report}\"\nruntime = \"echo\"\npool = \"{pool}\"\n"),
        &[],
    ))
    .await;
    let _w = start_worker(&pg_url(), &pool, 4, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    let n = 7;
    let items: Vec<Value> = (0..n).map(|i| json!({"n": i})).collect();
    let r =
        m.http.post(format!("{}/api/batches?function={big}&then={report}", m.base)).json(&items).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let end = batch_finished(&m, &id, "the batch to finish").await;
    assert_eq!(end["counts"]["succeeded"], n, "{end}");

    let (mut seen, mut after, mut pages) = (HashSet::new(), String::new(), 0);
    loop {
        let (status, page) = m.get(&format!("/api/batches/{id}/results?limit=100{after}")).await;
        assert_eq!(status, 200);
        let got = page["items"].as_array().unwrap();
        let bytes: usize = got.iter().map(|i| i["result"].as_str().map_or(0, str::len)).sum();
        assert!(
            bytes < (8 << 20) + 3_000_000,
            "a page holds about 8 MiB at most: {bytes} bytes in {} items",
            got.len()
        );
        if pages == 0 {
            assert_eq!(got.len(), 3, "the first page ends after 8 MiB of results, not at its limit of 100");
        }
        seen.extend(got.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        pages += 1;
        match page["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), n, "every item once, over {pages} pages");

    let followup = end["followup_invocation"].as_str().expect("a follow-up").to_string();
    let f = m.wait_status(&followup, "succeeded").await;
    assert_eq!(
        f["result"]["results_url"],
        format!("/api/batches/{id}/results"),
        "over the inline limit: {}",
        f["result"]
    );
    assert_eq!(f["result"]["counts"], json!({"succeeded": n}));
}

/// A submission runs several chunks at once; a bad line stops it, and every item before the
/// line, in every chunk already on its way, is recorded, published and run: none is left
/// recorded `queued` with no message (which would hold the batch open forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_line_after_several_chunks_keeps_and_runs_every_item_before_it() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let item = unique("item");
    let m = Management::start(&pg_url()).await;
    let dir = function_dir(tmp.path(), &format!("name = \"{item}\"\nruntime = \"echo\"\npool = \"{pool}\"\n"), &[]);
    m.publish_dir(&dir).await;
    let _w = start_worker(&pg_url(), &pool, 16, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    // 3,750 items: seven full chunks and a part one, then the bad line, then items never read.
    let good = 3_750;
    let mut body: String = (0..good).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    body.push_str("{\"n\": oops}\n");
    body.push_str(&(0..100).map(|i| format!("{{\"after\":{i}}}\n")).collect::<String>());
    let r = m
        .http
        .post(format!("{}/api/batches?function={item}", m.base))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("line {} is not a JSON value", good + 1)), "the bad line is named: {e}");
    assert_eq!(e["accepted"], good, "every item before the bad line is kept: {e}");
    let id = e["batch"].as_str().expect("the answer names the batch").to_string();

    let end = batch_finished(&m, &id, "the batch to finish").await;
    assert_eq!(end["state"], "done", "{end}");
    assert_eq!(end["total"], good);
    assert_eq!(end["counts"]["succeeded"], good, "every kept item ran once: {end}");
    let (_, page) = m.get(&format!("/api/batches/{id}/results?limit=10000")).await;
    let seen: HashSet<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"]["n"].as_i64().expect("an item before the bad line"))
        .collect();
    assert_eq!(seen.len(), good as usize, "each item before the bad line, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_runs_no_queued_item_and_says_so() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let (slow, report) = (unique("slow"), unique("report"));
    let m = Management::start(&pg_url()).await;
    let dir = function_dir(
        tmp.path(),
        &format!("name = \"{slow}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n"),
        &[("run.sh", "sleep 0.2; cat\n")],
    );
    m.publish_dir(&dir).await;
    let dir = function_dir(tmp.path(), &format!("name = \"{report}\"\nruntime = \"echo\"\npool = \"{pool}\"\n"), &[]);
    m.publish_dir(&dir).await;
    let _w = start_worker(&pg_url(), &pool, 2, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    let items: Vec<Value> = (0..500).map(|i| json!({ "n": i })).collect();
    let r =
        m.http.post(format!("{}/api/batches?function={slow}&then={report}", m.base)).json(&items).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let b: Value = r.json().await.unwrap();
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["total"], 500);

    let (ok, stdout, stderr) = cli(&m, &["batch", "cancel", &id]);
    assert!(ok, "{stdout}{stderr}");
    let end = batch_finished(&m, &id, "the cancelled batch to settle").await;
    assert_eq!(end["state"], "cancelled");
    let c = |s: &str| end["counts"][s].as_i64().unwrap();
    assert!(c("cancelled") >= 400, "most items were still queued: {end}");
    assert_eq!(c("succeeded") + c("cancelled"), 500, "every item is final: {end}");
    assert!(end["followup_invocation"].is_null(), "no fan-in for a cancelled batch");
    // A cancelled item never ran: no worker, no start.
    let (_, list) = m.get(&format!("/api/invocations?function={slow}&status=cancelled&limit=1000")).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len() as i64, c("cancelled"));
    assert!(list.iter().all(|i| i["started_ms"].is_null() && i["worker"].is_null()), "cancelled items did not run");
    // Bad input is refused with a reason, and keeps what came before it.
    let r = m
        .http
        .post(format!("{}/api/batches?function={slow}", m.base))
        .header("content-type", "application/x-ndjson")
        .body("{\"n\":1}\nnot json\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("line 2 is not a JSON value"), "the reason is kept: {e}");
    assert!(msg.contains("the first 1 items were submitted"), "what was kept is said: {e}");
    assert!(msg.contains("send only the items after them"), "and what to send again: {e}");
    assert_eq!(e["accepted"], 1);
}

/// A tiny HTTP receiver: records each POST body, answers 200.
async fn receiver(listener: tokio::net::TcpListener, got: Arc<Mutex<Vec<Value>>>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else { return };
        let got = got.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let Ok(n) = s.read(&mut chunk).await else { return };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() < end + 4 + len {
                    continue;
                }
                let body = &buf[end + 4..end + 4 + len];
                let mut v = serde_json::from_slice(body).unwrap_or(Value::Null);
                // The token header, when there is one, travels with the body for the checks.
                if let Some(t) = head.lines().find_map(|l| l.strip_prefix("x-token:")) {
                    v["__token"] = Value::String(t.trim().to_string());
                }
                got.lock().unwrap().push(v);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                return;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_forwarded_only_when_the_predicate_holds_and_failed_forwards_can_be_retried() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let (fwd, flaky) = (unique("fwd"), unique("flaky"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(receiver(listener, got.clone()));
    // A port nobody listens on (yet).
    let closed_port = free_port();

    const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let m = Management::start_with(&pg_url(), &["--secret-key", KEY]).await;
    let manifest = format!(
        "name = \"{fwd}\"\nruntime = \"echo\"\npool = \"{pool}\"\n\n[[outputs]]\nkind = \"http\"\nurl = \"{hook}\"\nwhen = \"success\"\npointer = \"/status\"\nequals = \"ok\"\nheaders = {{ X-Token = \"$CRM_TOKEN\" }}\n"
    );
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[])).await;
    let manifest = format!(
        "name = \"{flaky}\"\nruntime = \"echo\"\npool = \"{pool}\"\n\n[[outputs]]\nkind = \"http\"\nurl = \"http://127.0.0.1:{closed_port}/x\"\nmax_attempts = 2\n"
    );
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[])).await;
    // The token the receiver wants is a secret setting, not in the manifest.
    let r = m
        .http
        .put(format!("{}/api/functions/{fwd}/settings/CRM_TOKEN", m.base))
        .json(&json!({"value": "s3cret-token", "secret": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _w = start_worker_with(&pg_url(), &pool, 8, &tmp.path().join("cache"), &["--secret-key", KEY], &[]);
    wait_consumers(&pool, 1).await;

    let mut ok_ids = BTreeSet::new();
    let mut other_ids = Vec::new();
    for i in 0..40 {
        let status = if i % 2 == 0 { "ok" } else { "bad" };
        let (code, v) = m.invoke(&fwd, "sync", json!({"status": status, "n": i}).to_string().as_bytes()).await;
        assert_eq!(code, 200, "{v}");
        if status == "ok" {
            ok_ids.insert(i);
        } else {
            other_ids.push(v["id"].as_str().unwrap().to_string());
        }
    }
    let received = eventually(Duration::from_secs(30), "20 forwards", || {
        let got = got.clone();
        async move {
            let g = got.lock().unwrap().clone();
            (g.len() >= 20).then_some(g)
        }
    })
    .await;
    let ns: BTreeSet<i64> = received.iter().map(|v| v["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, ok_ids.iter().copied().collect(), "exactly the matching results were forwarded");
    assert!(received.iter().all(|v| v["status"] == "ok"));
    assert!(received.iter().all(|v| v["__token"] == "s3cret-token"), "the header carries the unsealed secret");
    // The non-matching ones have no delivery at all (not merely a pending one).
    for id in &other_ids {
        let (_, d) = m.get(&format!("/api/invocations/{id}/deliveries")).await;
        assert_eq!(d["deliveries"].as_array().unwrap().len(), 0, "{d}");
    }
    assert_eq!(got.lock().unwrap().len(), 20, "no duplicate forwards");

    // A receiver that is down: attempts run out, the failure is recorded, a retry delivers.
    let (_, v) = m.invoke(&flaky, "sync", b"{\"x\": 1}").await;
    let id = v["id"].as_str().unwrap().to_string();
    let failed = eventually(Duration::from_secs(30), "the delivery to fail", || {
        let (m, id) = (&m, id.clone());
        async move {
            let (_, d) = m.get(&format!("/api/invocations/{id}")).await;
            (d["deliveries"][0]["status"] == "failed").then_some(d)
        }
    })
    .await;
    assert_eq!(failed["deliveries"][0]["attempts"], 2);
    assert!(failed["deliveries"][0]["last_error"].as_str().unwrap().contains("127.0.0.1"), "{failed}");
    let late = tokio::net::TcpListener::bind(("127.0.0.1", closed_port)).await.unwrap();
    let got2 = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(receiver(late, got2.clone()));
    let (ok, stdout, stderr) = cli(&m, &["deliveries", &id, "--retry"]);
    assert!(ok, "{stdout}{stderr}");
    eventually(Duration::from_secs(30), "the retried delivery", || {
        let (m, id) = (&m, id.clone());
        async move {
            let (_, d) = m.get(&format!("/api/invocations/{id}/deliveries")).await;
            (d["deliveries"][0]["status"] == "delivered").then_some(())
        }
    })
    .await;
    assert_eq!(got2.lock().unwrap().clone(), vec![json!({"x": 1})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_management_instances_fire_each_timer_tick_exactly_once() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let name = unique("tick");
    let a = Management::start(&pg_url()).await;
    let b = Management::start(&pg_url()).await;
    let _off = disarm(&b, tmp.path(), &name, &pool);
    let _w = start_worker(&pg_url(), &pool, 4, &tmp.path().join("cache"));
    let manifest =
        format!("name = \"{name}\"\nruntime = \"echo\"\npool = \"{pool}\"\n\n[timer]\nschedule = \"* * * * * *\"\n");
    a.publish_dir(&function_dir(tmp.path(), &manifest, &[])).await;

    // Both instances take part; then A dies and B alone carries on, with no tick lost.
    eventually(Duration::from_secs(60), "5 ticks", || {
        let (b, name) = (&b, name.clone());
        async move {
            let (_, v) = b.get(&format!("/api/invocations?function={name}&limit=1000")).await;
            (v.as_array().map(|v| v.len()).unwrap_or(0) >= 5).then_some(())
        }
    })
    .await;
    let mut a = a;
    a.proc.terminate(Duration::from_secs(10));
    // Ten seconds of ticks or more in all.
    let list = eventually(Duration::from_secs(60), "12 ticks", || {
        let (a, name) = (&b, name.clone());
        async move {
            let (_, v) = a.get(&format!("/api/invocations?function={name}&limit=1000")).await;
            let v = v.as_array().cloned().unwrap_or_default();
            (v.len() >= 12).then_some(v)
        }
    })
    .await;
    // Both instances list the timer.
    let (_, t) = b.get("/api/timers").await;
    assert!(t["timers"].as_array().unwrap().iter().any(|t| t["function"] == name.as_str()), "{t}");
    drop(_off);
    let mut ticks: Vec<i64> = list.iter().map(|i| i["input"]["tick_ms"].as_i64().expect("tick input")).collect();
    ticks.sort();
    let unique_ticks: BTreeSet<i64> = ticks.iter().copied().collect();
    assert_eq!(unique_ticks.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    for w in ticks.windows(2) {
        assert_eq!(w[1] - w[0], 1000, "a tick is missing between {} and {}: {ticks:?}", w[0], w[1]);
    }
    assert!(ticks.iter().all(|t| t % 1000 == 0), "ticks fall on whole seconds");
    // The ticks ran.
    eventually(Duration::from_secs(30), "the ticks to run", || {
        let (a, name) = (&b, name.clone());
        async move {
            let (_, v) = a.get(&format!("/api/invocations?function={name}&status=succeeded&limit=1000")).await;
            (v.as_array().map(|v| v.len()).unwrap_or(0) >= 12).then_some(())
        }
    })
    .await;
}

/// Publishes `{"order": i}` for i in 0..n to a queue, persistent and confirmed one by one, as
/// another system would.
async fn publish_orders(ch: &lapin::Channel, queue: &str, n: usize) {
    use lapin::options::BasicPublishOptions;
    for i in 0..n {
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            format!("{{\"order\":{i}}}").as_bytes(),
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_source_messages_become_a_thousand_invocations() {
    require_services();
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let (name, hdr) = (unique("orders"), unique("hdr"));
    let queue = format!("test.source.{}", unique("q"));
    let hqueue = format!("test.source.{}", unique("q"));
    // Another system's queue, filled by a plain AMQP client before Warren looks at it.
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    for q in [&queue, &hqueue] {
        ch.queue_declare(q.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default()).await.unwrap();
    }
    let n = 1000;
    publish_orders(&ch, &queue, n).await;
    let mut headers = FieldTable::default();
    headers.insert("x-origin".into(), AMQPValue::LongString(LongString::from("erp")));
    ch.basic_publish(
        "".into(),
        hqueue.as_str().into(),
        BasicPublishOptions::default(),
        b"hi",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let m = Management::start(&pg_url()).await;
    let _off = disarm(&m, tmp.path(), &name, &pool);
    let _off2 = disarm(&m, tmp.path(), &hdr, &pool);
    let _w = start_worker(&pg_url(), &pool, 8, &tmp.path().join("cache"));
    let manifest = format!(
        "name = \"{name}\"\nruntime = \"echo\"\npool = \"{pool}\"\n\n[source]\nqueue = \"{queue}\"\nprefetch = 32\n"
    );
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[])).await;
    let manifest = format!(
        "name = \"{hdr}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n\n[source]\nqueue = \"{hqueue}\"\n"
    );
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.sh", "printf '%s' \"$WARREN_HEADERS\"\n")])).await;

    let list = eventually(Duration::from_secs(90), "1000 invocations from the source", || {
        let (m, name) = (&m, name.clone());
        async move {
            let (_, v) = m.get(&format!("/api/invocations?function={name}&limit=2000")).await;
            let v = v.as_array().cloned().unwrap_or_default();
            let done = v.iter().filter(|i| i["status"] == "succeeded").count();
            (done >= n).then_some(v)
        }
    })
    .await;
    assert_eq!(list.len(), n, "one invocation per message, none failed or duplicated");
    let orders: BTreeSet<i64> = list.iter().map(|i| i["result"]["order"].as_i64().unwrap()).collect();
    assert_eq!(orders.len(), n, "each message once");
    assert_eq!(orders, (0..n as i64).collect());
    // Acked only after Warren took them: the source queue is empty.
    let q = ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
    // Headers reach the function.
    let h = eventually(Duration::from_secs(60), "the header-carrying message", || {
        let (m, hdr) = (&m, hdr.clone());
        async move {
            let (_, v) = m.get(&format!("/api/invocations?function={hdr}&status=succeeded")).await;
            v.as_array().and_then(|v| v.first().cloned())
        }
    })
    .await;
    assert_eq!(h["result"]["x-origin"], "erp", "{h}");
    drop((_off, _off2));
    for q in [&queue, &hqueue] {
        let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
    }
}

/// A management instance stopped (SIGTERM) while it consumes a source finishes the messages it
/// took and takes no more: another instance carries on, and each message becomes exactly one
/// invocation (none is recorded and published, then left unacked to come again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_management_leaves_no_source_message_half_taken() {
    require_services();
    use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::FieldTable;
    use lapin::{Connection, ConnectionProperties};

    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let name = unique("feed");
    let queue = format!("test.source.{}", unique("q"));
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default()).await.unwrap();
    let n = 3000;
    publish_orders(&ch, &queue, n).await;
    let mut a = Management::start(&pg_url()).await;
    let b = Management::start(&pg_url()).await;
    let _off = disarm(&b, tmp.path(), &name, &pool);
    let _w = start_worker(&pg_url(), &pool, 16, &tmp.path().join("cache"));
    let manifest = format!(
        "name = \"{name}\"\nruntime = \"echo\"\npool = \"{pool}\"\n\n[source]\nqueue = \"{queue}\"\nprefetch = 64\n"
    );
    a.publish_dir(&function_dir(tmp.path(), &manifest, &[])).await;
    // Straight from the store: the API lists 1,000 at most.
    let store = warren_store::open(&pg_url()).await.unwrap();
    let count = || {
        let (store, name) = (&store, name.clone());
        async move {
            let filter = warren_store::InvocationFilter { function: Some(name), status: None, limit: 10_000 };
            store.list_invocations(&filter).await.unwrap()
        }
    };
    eventually(Duration::from_secs(60), "a tenth of the messages taken", || async {
        (count().await.len() >= n / 10).then_some(())
    })
    .await;
    let status = a.proc.terminate(Duration::from_secs(20)).expect("management A stops within 20 s");
    assert!(status.success(), "management A exits cleanly: {status:?}");
    let taken = count().await.len();
    assert!(taken < n, "A was stopped while messages were still coming ({taken} of {n} taken)");
    let list = eventually(Duration::from_secs(90), "every message taken", || async {
        let list = count().await;
        let orders: BTreeSet<Vec<u8>> = list.iter().filter_map(|i| i.result.clone()).collect();
        (orders.len() == n).then_some(list)
    })
    .await;
    assert_eq!(list.len(), n, "one invocation per source message, none twice");
    drop(_off);
    let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
}
