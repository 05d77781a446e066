//! The spine end to end: `warren-management` and `warren-worker` processes on the real
//! RabbitMQ and PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use warren_store::Status;
use warren_tests::*;
use warren_transport::amqp::AmqpTransport;
use warren_transport::Transport;
use warren_wire::message::{CompletionNotice, InvocationMessage, PROTOCOL_VERSION};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_invocations_spread_over_three_workers_each_stored_once() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let name = unique("echo");
    let m = Management::start(&pg_url()).await;
    let dir = function_dir(tmp.path(), &format!("name = \"{name}\"\nruntime = \"echo\"\npool = \"{pool}\"\n"), &[]);
    assert_eq!(m.publish_dir(&dir).await["version"], 1);
    let workers: Vec<Proc> =
        (0..3).map(|i| start_worker(&pg_url(), &pool, 4, &tmp.path().join(format!("c{i}")))).collect();
    wait_consumers(&pool, 3).await;

    // 1,000 async invokes, 16 in flight at a time.
    let n = 1000;
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut pending = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < n || !pending.is_empty() {
        while next < n && pending.len() < 16 {
            let (http, base, name) = (m.http.clone(), m.base.clone(), name.clone());
            let input = format!("{{\"n\": {next}}}");
            next += 1;
            pending.spawn(async move {
                let r = http
                    .post(format!("{base}/api/functions/{name}/invoke?mode=async"))
                    .body(input.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
                let v: serde_json::Value = r.json().await.unwrap();
                (v["id"].as_str().unwrap().to_string(), input)
            });
        }
        if let Some(r) = pending.join_next().await {
            let (id, input) = r.unwrap();
            assert!(ids.insert(id, input).is_none(), "ids are unique");
        }
    }

    let store = warren_store::open(&pg_url()).await.unwrap();
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    let mut not_final = ids.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut finished = HashMap::new();
    while not_final > 0 {
        assert!(std::time::Instant::now() < deadline, "{not_final} invocations still not final after 120 s");
        for id in ids.keys() {
            if finished.contains_key(id) {
                continue;
            }
            let inv = store.get_invocation(id.parse().unwrap()).await.unwrap().expect("invocation recorded");
            if inv.status.is_final() {
                finished.insert(id.clone(), inv);
            }
        }
        not_final = ids.len() - finished.len();
        if not_final > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (id, inv) in &finished {
        assert_eq!(inv.status, Status::Succeeded, "{id}");
        assert_eq!(inv.result.as_deref(), Some(ids[id].as_bytes()), "{id}: echo returns its input");
        assert_eq!(inv.attempts, 1);
        *by_worker.entry(inv.worker.clone().unwrap()).or_default() += 1;
    }
    println!("published {n}, completed {}, per worker {by_worker:?}", finished.len());
    assert_eq!(by_worker.len(), 3, "all three workers took part: {by_worker:?}");
    for (w, count) in &by_worker {
        assert!(*count >= n / 10, "worker {w} ran only {count} of {n}");
    }
    // Every message was acked (acks are coalesced per channel): with the workers gone, nothing
    // unacked comes back to the queue.
    drop(workers);
    let t = AmqpTransport::connect(&amqp_url(), "ack-check").await.unwrap();
    eventually(Duration::from_secs(30), "the workers' consumers to be gone", || async {
        (t.queue_stats(&pool).await.ok()?.consumers == 0).then_some(())
    })
    .await;
    assert_eq!(t.queue_stats(&pool).await.unwrap().messages, 0, "messages left unacked came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_hanging_functions_are_recorded_and_the_worker_carries_on() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let (fail, hang, echo) = (unique("fail"), unique("hang"), unique("echo"));
    let m = Management::start(&pg_url()).await;
    let fail_dir = function_dir(
        tmp.path(),
        &format!("name = \"{fail}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n"),
        &[("run.sh", "echo 'first complaint' >&2\necho 'second complaint' >&2\necho partial\nexit 2\n")],
    );
    // The script starts a child (sleep) and waits: the kill must take the whole tree.
    let hang_dir = function_dir(
        tmp.path(),
        &format!("name = \"{hang}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\ntimeout_secs = 1\npool = \"{pool}\"\n"),
        &[("run.sh", "read pidfile\nsleep 300 &\necho $! > \"$pidfile\"\necho 'waiting forever' >&2\nwait\n")],
    );
    let echo_dir =
        function_dir(tmp.path(), &format!("name = \"{echo}\"\nruntime = \"echo\"\npool = \"{pool}\"\n"), &[]);
    for d in [&fail_dir, &hang_dir, &echo_dir] {
        m.publish_dir(d).await;
    }
    let mut worker = start_worker(&pg_url(), &pool, 2, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    let (status, v) = m.invoke(&fail, "sync", b"").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "failed");
    assert!(v["error"].as_str().unwrap().contains("exited with code 2"), "{v}");
    let lines: Vec<&str> = v["logs"].as_array().unwrap().iter().map(|l| l["line"].as_str().unwrap()).collect();
    assert_eq!(lines, vec!["first complaint", "second complaint"]);

    let pidfile = tmp.path().join("sleep.pid");
    let started = std::time::Instant::now();
    let (status, v) = m.invoke(&hang, "sync", pidfile.display().to_string().as_bytes()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "timed_out", "{v}");
    assert!(started.elapsed() < Duration::from_secs(20), "the timeout of 1 s was not enforced");
    assert_eq!(v["logs"][0]["line"], "waiting forever");
    let sleep_pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // The grandchild was killed with its group: kill(pid, 0) finds no such process (or a
    // zombie already reparented and reaped).
    eventually(Duration::from_secs(5), "the function's child process to be gone", || async move {
        let gone = unsafe { libc::kill(sleep_pid, 0) } != 0
            || std::fs::read_to_string(format!("/proc/{sleep_pid}/stat")).map(|s| s.contains(") Z")).unwrap_or(true);
        gone.then_some(())
    })
    .await;

    assert!(worker.is_running(), "the worker survived both");
    let (status, v) = m.invoke(&echo, "sync", b"still here").await;
    assert_eq!((status, v["status"].as_str(), v["result"].as_str()), (200, Some("succeeded"), Some("still here")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_whose_outcome_is_stored_does_not_run_again() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let name = unique("count");
    let m = Management::start(&pg_url()).await;
    let dir = function_dir(
        tmp.path(),
        &format!("name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n"),
        &[("run.sh", "read counter\necho run >> \"$counter\"\necho done\n")],
    );
    m.publish_dir(&dir).await;
    let _worker = start_worker(&pg_url(), &pool, 2, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    let counter = tmp.path().join("runs.txt");
    let input = format!("{}\n", counter.display());
    let (status, v) = m.invoke(&name, "sync", input.as_bytes()).await;
    assert_eq!((status, v["status"].as_str()), (200, Some("succeeded")), "{v}");
    assert_eq!(std::fs::read_to_string(&counter).unwrap().lines().count(), 1);

    // The same invocation's message arrives again (as after a lost ack), asking for a notice
    // so we know when the worker has dealt with it.
    let t = AmqpTransport::connect(&amqp_url(), "redelivery-test").await.unwrap();
    let me = unique("t");
    let mut notices = t.open_notices(&me).await.unwrap();
    let again = InvocationMessage {
        v: PROTOCOL_VERSION,
        id: v["id"].as_str().unwrap().parse().unwrap(),
        function: name.clone(),
        version: 1,
        attempt: 1,
        payload: Bytes::from(input.clone()),
        notify: Some(warren_wire::topology::notice_queue(&me)),
        created_ms: warren_wire::time::now_ms(),
        headers: Vec::new(),
        fresh: false,
        unrecorded: false,
        not_before_ms: None,
    };
    t.publish(&pool, again.encode().into()).await.unwrap();
    let notice =
        tokio::time::timeout(Duration::from_secs(30), notices.next()).await.expect("a notice").unwrap().unwrap();
    assert_eq!(CompletionNotice::decode(&notice.body).unwrap().id, again.id);
    assert_eq!(std::fs::read_to_string(&counter).unwrap().lines().count(), 1, "the function ran again");
    let (_, after) = m.get(&format!("/api/invocations/{}", again.id)).await;
    assert_eq!((after["status"].as_str(), after["attempts"].as_i64()), (Some("succeeded"), Some(1)));
    assert_eq!(t.queue_stats(&pool).await.unwrap().messages, 0, "the duplicate was acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_escaping_its_folder_is_refused_at_publish() {
    require_services();
    let m = Management::start(&pg_url()).await;
    let name = unique("evil");
    let manifest = format!("name = \"{name}\"\nruntime = \"echo\"\n");
    let pkg = crafted_tar_gz(&[
        ("function.toml", manifest.as_bytes(), tar::EntryType::Regular, ""),
        ("../x", b"pwned", tar::EntryType::Regular, ""),
    ]);
    let (status, v) = m.publish_bytes(pkg).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_request");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("\"../x\"") && msg.contains("outside the package folder"), "{msg}");
    let (status, _) = m.get(&format!("/api/functions/{name}")).await;
    assert_eq!(status, 404, "nothing was stored");

    // And the other ways a body can be wrong get clear errors too.
    let (status, v) = m.publish_bytes(b"definitely not a tarball".to_vec()).await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("tar.gz"), "{v}");
    let (status, v) = m.invoke(&unique("missing"), "sync", b"").await;
    assert_eq!(status, 404);
    assert!(v["error"]["message"].as_str().unwrap().contains("publish it first"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_batch_pool_does_not_hold_up_the_interactive_pool() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (batch, interactive) = (unique("b"), unique("i"));
    let (slow, quick) = (unique("slow"), unique("quick"));
    let m = Management::start(&pg_url()).await;
    let slow_manifest =
        format!("name = \"{slow}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{batch}\"\n");
    m.publish_dir(&function_dir(tmp.path(), &slow_manifest, &[("run.sh", "sleep 1\necho done\n")])).await;
    m.publish_dir(&function_dir(
        tmp.path(),
        &format!("name = \"{quick}\"\nruntime = \"echo\"\npool = \"{interactive}\"\n"),
        &[],
    ))
    .await;
    // One worker, two pools, each with its own slots.
    let pools = format!("{interactive}:2,{batch}:2");
    let _w = start_worker_with(&pg_url(), &pools, 1, &tmp.path().join("cache"), &[], &[]);
    wait_consumers(&batch, 1).await;
    wait_consumers(&interactive, 1).await;

    // A batch of 20 one-second jobs (ten seconds of work for the batch pool's two slots),
    // submitted through the batch API.
    let items: Vec<serde_json::Value> = (0..20).map(|i| serde_json::json!({ "n": i })).collect();
    let r = m.http.post(format!("{}/api/batches?function={slow}", m.base)).json(&items).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let batch_id = r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let (status, v) = m.invoke(&quick, "sync", b"now").await;
    assert_eq!((status, v["result"].as_str()), (200, Some("now")), "{v}");
    // The interactive answer came while most of the batch still waited its turn: it was not
    // delayed by more than one slow job's run time.
    let (_, b) = m.get(&format!("/api/batches/{batch_id}")).await;
    let waiting = b["counts"]["queued"].as_i64().unwrap();
    assert!(waiting >= 10, "only {waiting} of 20 batch jobs were still queued: the interactive pool waited for them");
}

/// A sync answer is built from the worker's notice (the outcome it stored) instead of being
/// read back from the store: it must be exactly what the store holds. Also: a run longer than
/// the worker's marking delay shows as `running` while it runs (it was not claimed first), and
/// a fresh message whose record is missing (lost in a database crash) gets one with its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_answers_match_the_stored_records_and_unclaimed_runs_are_recorded() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let (talk, fail, slow, echo) = (unique("talk"), unique("fail"), unique("slow"), unique("echo"));
    let m = Management::start(&pg_url()).await;
    let process = |name: &str, script: &str| {
        function_dir(
            tmp.path(),
            &format!("name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n"),
            &[("run.sh", script)],
        )
    };
    m.publish_dir(&process(&talk, "echo 'line one' >&2\necho 'line two' >&2\ncat\n")).await;
    m.publish_dir(&process(&fail, "echo 'about to fail' >&2\nexit 3\n")).await;
    m.publish_dir(&process(&slow, "sleep 1.5\necho done\n")).await;
    m.publish_dir(&function_dir(
        tmp.path(),
        &format!("name = \"{echo}\"\nruntime = \"echo\"\npool = \"{pool}\"\n"),
        &[],
    ))
    .await;
    let _worker = start_worker(&pg_url(), &pool, 2, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    for (name, input, status) in
        [(&talk, &b"{\"x\": 1}"[..], "succeeded"), (&fail, b"", "failed"), (&echo, b"\x00\xffbin", "succeeded")]
    {
        let (code, answer) = m.invoke(name, "sync", input).await;
        assert_eq!((code, answer["status"].as_str()), (200, Some(status)), "{answer}");
        let (_, stored) = m.get(&format!("/api/invocations/{}", answer["id"].as_str().unwrap())).await;
        assert_eq!(answer, stored, "the sync answer of {name} is the stored record");
        assert_eq!(stored["attempt_history"].as_array().unwrap().len(), 1, "{stored}");
        assert!(stored["started_ms"].as_i64().is_some(), "{stored}");
    }
    let (_, talked) = m.invoke(&talk, "sync", b"hi").await;
    let lines: Vec<&str> = talked["logs"].as_array().unwrap().iter().map(|l| l["line"].as_str().unwrap()).collect();
    assert_eq!(lines, ["line one", "line two"]);

    // A slow run: queued, then marked running while it runs, then its outcome.
    let (code, accepted) = m.invoke(&slow, "async", b"").await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    let running = eventually(Duration::from_secs(20), "the slow run to show as running", || {
        let (m, id) = (&m, id.clone());
        async move {
            let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
            (v["status"] == "running" || v["status"] == "succeeded").then_some(v)
        }
    })
    .await;
    assert_eq!(running["status"], "running", "seen while it ran: {running}");
    assert!(running["worker"].as_str().is_some(), "{running}");
    let done = eventually(Duration::from_secs(20), "the slow run to end", || {
        let (m, id) = (&m, id.clone());
        async move {
            let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
            (v["status"] == "succeeded").then_some(v)
        }
    })
    .await;
    assert!(done["duration_ms"].as_i64().unwrap() >= 1400, "{done}");

    // A fresh message of an invocation nobody recorded: the worker records it with its outcome.
    let t = AmqpTransport::connect(&amqp_url(), "unrecorded-test").await.unwrap();
    let me = unique("t");
    let mut notices = t.open_notices(&me).await.unwrap();
    let stray = InvocationMessage {
        v: PROTOCOL_VERSION,
        id: uuid::Uuid::now_v7(),
        function: echo.clone(),
        version: 1,
        attempt: 1,
        payload: Bytes::from_static(b"nobody recorded me"),
        notify: Some(warren_wire::topology::notice_queue(&me)),
        created_ms: warren_wire::time::now_ms(),
        headers: Vec::new(),
        fresh: true,
        unrecorded: false,
        not_before_ms: None,
    };
    t.publish(&pool, stray.encode().into()).await.unwrap();
    let notice =
        tokio::time::timeout(Duration::from_secs(30), notices.next()).await.expect("a notice").unwrap().unwrap();
    let notice = CompletionNotice::decode(&notice.body).unwrap();
    assert_eq!(notice.id, stray.id);
    assert_eq!(notice.outcome.map(|o| o.status), Some(Status::Succeeded));
    let (code, got) = m.get(&format!("/api/invocations/{}", stray.id)).await;
    assert_eq!(
        (code, got["status"].as_str(), got["result"].as_str()),
        (200, Some("succeeded"), Some("nobody recorded me"))
    );
    assert_eq!(got["input"].as_str(), Some("nobody recorded me"), "{got}");
}

/// A bulk invoke: one request of N inputs becomes N independent invocations, each recorded at
/// once, run and stored once; a bad line refuses the whole request and records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_invoke_makes_one_invocation_per_input_and_refuses_a_bad_body_whole() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("p"), unique("echo"));
    let m = Management::start(&pg_url()).await;
    let dir = function_dir(tmp.path(), &format!("name = \"{name}\"\nruntime = \"echo\"\npool = \"{pool}\"\n"), &[]);
    m.publish_dir(&dir).await;
    let url = format!("{}/api/functions/{name}/invocations", m.base);
    let post = |body: String| {
        let (http, url) = (m.http.clone(), url.clone());
        async move {
            let r = http.post(url).header("content-type", "application/x-ndjson").body(body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.expect("a JSON answer"))
        }
    };

    // Refused whole, naming the line: nothing is recorded.
    let (status, e) = post("{\"n\":1}\n\n{\"n\": oops}\n{\"n\":3}\n".into()).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("line 3 is not a JSON value"), "{e}");
    let (status, e) = post("\n \n".into()).await;
    assert_eq!(status, 400, "an empty body is refused: {e}");
    let (status, e) = post("{\"big\":true}\n".repeat(1_500_000)).await;
    assert_eq!(status, 413, "a body over 16 MiB is refused: {e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("over the limit"), "{e}");
    let (status, e) = post("1\n".repeat(10_001)).await;
    assert_eq!(status, 413, "more than 10,000 inputs are refused: {e}");
    // Other JSON bodies are bounded at 1 MiB: over it, a 413 that says so (not a 400).
    let big = format!("{{\"value\": \"{}\", \"secret\": false}}", "x".repeat(2 << 20));
    let r = m
        .http
        .put(format!("{}/api/functions/{name}/settings/BIG", m.base))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "a setting over 1 MiB");
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "too_large", "{e}");
    let (_, listed) = m.get(&format!("/api/invocations?function={name}&limit=10")).await;
    assert_eq!(listed.as_array().unwrap().len(), 0, "a refused request records nothing: {listed}");

    // Recorded (and so readable) before any worker runs them; more than one insert's rows.
    // The body is over 64 KiB, so it is checked off the async threads.
    let n = 900;
    let pad = "x".repeat(100);
    let body: String = (0..n).map(|i| format!("{{\"n\":{i},\"pad\":\"{pad}\"}}\r\n")).collect();
    assert!(body.len() > 64 << 10);
    let (status, a) = post(body).await;
    assert_eq!(status, 202, "{a}");
    assert_eq!(a["accepted"], n);
    let ids: Vec<String> = a["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), n, "one id per input");
    let (_, first) = m.get(&format!("/api/invocations/{}", ids[0])).await;
    assert_eq!(first["status"], "queued", "readable at once: {first}");

    let _w = start_worker(&pg_url(), &pool, 16, &tmp.path().join("cache"));
    let all = eventually(Duration::from_secs(60), "every bulk invocation to succeed", || {
        let (m, name) = (&m, name.clone());
        async move {
            let (_, v) = m.get(&format!("/api/invocations?function={name}&status=succeeded&limit=1000")).await;
            let v = v.as_array().unwrap().clone();
            (v.len() >= n).then_some(v)
        }
    })
    .await;
    assert_eq!(all.len(), n, "no input ran twice into a second record");
    assert!(all.iter().all(|i| i["attempts"] == 1), "each ran once");
    // Each id answered holds its own input's result, in input order.
    for (i, id) in ids.iter().enumerate().step_by(97) {
        let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
        assert_eq!(v["result"]["n"], i, "{v}");
    }

    // The CLI: one invocation per line of a file, the ids on stdout in file order.
    let file = tmp.path().join("events.ndjson");
    std::fs::write(&file, "{\"e\":1}\n\n{\"e\":2}\n{\"e\":3}").unwrap();
    let out = m.cli().args(["invoke", &name, "--each-line", &file.display().to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect();
    assert_eq!(printed.len(), 3, "one id per non-blank line: {printed:?}");
    for (e, id) in printed.iter().enumerate() {
        let v = eventually(Duration::from_secs(30), "the line's invocation to succeed", || {
            let (m, id) = (&m, id.clone());
            async move {
                let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
                (v["status"] == "succeeded").then_some(v)
            }
        })
        .await;
        assert_eq!(v["result"]["e"], e + 1, "{v}");
    }
    std::fs::write(&file, "{\"e\":1}\nnot json\n").unwrap();
    let out = m.cli().args(["invoke", &name, "--each-line", &file.display().to_string()]).output().unwrap();
    assert!(!out.status.success(), "a bad line fails the command");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lines 1 to the end") && err.contains("line 2 is not a JSON value"), "{err}");
}

/// A sync invoke whose wait ends before any worker takes it is answered 202 and recorded
/// `queued` here with its input, and the worker that comes later runs it once on that input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_invoke_that_outwaits_its_timeout_is_recorded_with_its_input_and_runs_later() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, echo) = (unique("p"), unique("echo"));
    let m = Management::start(&pg_url()).await;
    m.publish_dir(&function_dir(
        tmp.path(),
        &format!("name = \"{echo}\"\nruntime = \"echo\"\npool = \"{pool}\"\n"),
        &[],
    ))
    .await;
    // No worker yet: the wait (200 ms) ends first.
    let r = m
        .http
        .post(format!("{}/api/functions/{echo}/invoke?mode=sync&timeout_ms=200", m.base))
        .body(r#"{"kept": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let accepted: serde_json::Value = r.json().await.unwrap();
    let id = accepted["id"].as_str().expect("the answer names the invocation").to_string();
    let (_, queued) = m.get(&format!("/api/invocations/{id}")).await;
    assert_eq!(
        (queued["status"].as_str(), &queued["input"]),
        (Some("queued"), &serde_json::json!({"kept": true})),
        "{queued}"
    );

    let _worker = start_worker(&pg_url(), &pool, 2, &tmp.path().join("cache"));
    let done = m.wait_status(&id, "succeeded").await;
    assert_eq!((&done["result"], done["attempts"].as_i64()), (&serde_json::json!({"kept": true}), Some(1)), "{done}");
}
