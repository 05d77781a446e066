//! Retries, dead letters and replay, poison messages, graceful shutdown: on the real broker,
//! the real PostgreSQL and real worker processes.

use std::time::Duration;

use bytes::Bytes;
use warren_store::BatchState;
use warren_tests::*;
use warren_transport::amqp::AmqpTransport;
use warren_transport::Transport;
use warren_wire::message::{InvocationMessage, PROTOCOL_VERSION};

/// A script that fails until the file named by its input exists... counted in another file.
const FLAKY: &str = r#"read state
n=$(cat "$state.count" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$state.count"
echo "attempt $n" >&2
if [ -e "$state.ok" ] || [ "$n" -ge 3 ]; then echo "ok after $n"; exit 0; fi
echo "not yet" >&2
exit 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_by_the_broker_and_each_is_visible() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("p"), unique("flaky"));
    let m = Management::start(&pg_url()).await;
    let manifest = format!(
        "name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n\
         [retry]\nmax_attempts = 5\ninitial_delay_ms = 200\nmax_delay_ms = 400\n"
    );
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.sh", FLAKY)])).await;
    let _w = start_worker(&pg_url(), &pool, 2, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    let state = tmp.path().join("state");
    let (status, v) = m.invoke(&name, "async", state.display().to_string().as_bytes()).await;
    assert_eq!(status, 202, "{v}");
    let v = m.wait_status(v["id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(v["attempts"], 3);
    assert_eq!(v["result"], "ok after 3\n");
    let history: Vec<(i64, &str)> = v["attempt_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["attempt"].as_i64().unwrap(), a["status"].as_str().unwrap()))
        .collect();
    assert_eq!(history, vec![(1, "failed"), (2, "failed"), (3, "succeeded")]);
    assert!(v["attempt_history"][0]["error"].as_str().unwrap().contains("not yet"), "{v}");
    let lines: Vec<(i64, &str)> = v["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["attempt"].as_i64().unwrap(), l["line"].as_str().unwrap()))
        .collect();
    assert_eq!(lines[0], (1, "attempt 1"));
    assert_eq!(lines.last().unwrap(), &(3, "attempt 3"));
    assert_eq!(std::fs::read_to_string(tmp.path().join("state.count")).unwrap().trim(), "3", "ran exactly three times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_invocations_die_into_the_dead_letter_queue_and_replay_as_a_new_attempt() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("p"), unique("doomed"));
    let m = Management::start(&pg_url()).await;
    // Version 1 always fails; version 2, published later, is the fix.
    let script = "echo 'still broken' >&2\nexit 4\n";
    let manifest = format!(
        "name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n\
         [retry]\nmax_attempts = 2\ninitial_delay_ms = 100\nmax_delay_ms = 100\n"
    );
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.sh", script)])).await;
    let _w = start_worker(&pg_url(), &pool, 2, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    let (_, v) = m.invoke(&name, "async", b"").await;
    let id = v["id"].as_str().unwrap().to_string();
    let v = m.wait_status(&id, "dead").await;
    assert_eq!(v["attempts"], 2);
    assert!(v["error"].as_str().unwrap().starts_with("gave up after 2 attempts"), "{v}");

    let (_, dead) = m.get(&format!("/api/dead-letters?pool={pool}")).await;
    assert_eq!(dead["counts"][&pool], 1, "{dead}");
    assert_eq!(dead["items"][0]["id"], id.as_str());
    assert!(dead["items"][0]["reason"].as_str().unwrap().contains("still broken"), "{dead}");
    // Listing leaves it in place.
    let (_, again) = m.get(&format!("/api/dead-letters?pool={pool}")).await;
    assert_eq!(again["counts"][&pool], 1);

    // A replay cut short: recorded in the store (attempt 3, `queued`) by an instance that
    // stopped before publishing it, so the dead letter is still in its queue. Replaying again
    // finishes it instead of skipping it ("not dead any more") and leaving it queued for ever.
    let store = warren_store::open(&pg_url()).await.unwrap();
    assert_eq!(store.replay(id.parse().unwrap()).await.unwrap(), Some(3));
    assert_eq!(m.get(&format!("/api/invocations/{id}")).await.1["status"], "queued");

    // Publish the fix, replay through the CLI: same invocation, third attempt, new version.
    let fixed_dir = tmp.path().join("fixed");
    std::fs::create_dir_all(&fixed_dir).unwrap();
    assert_eq!(m.publish_dir(&function_dir(&fixed_dir, &manifest, &[("run.sh", "echo fixed\n")])).await["version"], 2);
    let out = m.cli().args(["--url", &m.base, "dead", "replay", &id, "--pool", &pool]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 1"), "{}", String::from_utf8_lossy(&out.stdout));
    let v = m.wait_status(&id, "succeeded").await;
    assert_eq!(
        (v["attempts"].as_i64(), v["version"].as_i64(), v["result"].as_str()),
        (Some(3), Some(2), Some("fixed\n"))
    );
    let t = AmqpTransport::connect(&amqp_url(), "replay-test").await.unwrap();
    assert_eq!(t.dead_count(&pool).await.unwrap(), 0, "the replayed message left the dead-letter queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_a_reason_and_the_worker_carries_on() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("p"), unique("echo"));
    let m = Management::start(&pg_url()).await;
    m.publish_dir(&function_dir(
        tmp.path(),
        &format!("name = \"{name}\"\nruntime = \"echo\"\npool = \"{pool}\"\n"),
        &[],
    ))
    .await;
    let _w = start_worker(&pg_url(), &pool, 2, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    let t = AmqpTransport::connect(&amqp_url(), "poison-test").await.unwrap();
    let good = InvocationMessage {
        v: PROTOCOL_VERSION,
        id: uuid::Uuid::now_v7(),
        function: name.clone(),
        version: 1,
        attempt: 1,
        payload: Bytes::from_static(b"x"),
        notify: None,
        created_ms: warren_wire::time::now_ms(),
        headers: Vec::new(),
        fresh: false,
        unrecorded: false,
        not_before_ms: None,
    };
    let encoded = good.encode();
    let future = InvocationMessage { v: PROTOCOL_VERSION + 1, id: uuid::Uuid::now_v7(), ..good.clone() }.encode();
    let missing = InvocationMessage { id: uuid::Uuid::now_v7(), function: unique("ghost"), ..good.clone() };
    let poison: Vec<Vec<u8>> =
        vec![b"\x00\x01garbage".to_vec(), encoded[..encoded.len() / 2].to_vec(), future, missing.encode(), Vec::new()];
    for p in &poison {
        t.publish(&pool, Bytes::from(p.clone())).await.unwrap();
    }
    eventually(Duration::from_secs(30), "5 dead letters", || async {
        (t.dead_count(&pool).await.ok()? == 5).then_some(())
    })
    .await;
    let (_, dead) = m.get(&format!("/api/dead-letters?pool={pool}")).await;
    let reasons: Vec<String> =
        dead["items"].as_array().unwrap().iter().map(|d| d["reason"].as_str().unwrap().to_string()).collect();
    assert_eq!(reasons.len(), 5);
    assert!(reasons.iter().filter(|r| r.contains("not a valid Warren invocation")).count() == 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("newer than this worker")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("does not exist")), "{reasons:?}");
    // The message is dead-lettered (confirmed) before the invocation is recorded `dead`.
    let ghost = m.wait_status(&missing.id.to_string(), "dead").await;
    assert!(ghost["error"].as_str().unwrap_or_default().contains("does not exist"), "{ghost}");

    let (status, v) = m.invoke(&name, "sync", b"after the poison").await;
    assert_eq!((status, v["result"].as_str()), (200, Some("after the poison")));
}

/// Publishes a process function, on a pool of its own, that sleeps `secs` and prints
/// "finished"; returns (pool, name).
async fn publish_slow(m: &Management, dir: &std::path::Path, secs: u32) -> (String, String) {
    let (pool, name) = (unique("p"), unique("slow"));
    let manifest =
        format!("name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n");
    m.publish_dir(&function_dir(dir, &manifest, &[("run.sh", &format!("sleep {secs}\necho finished\n"))])).await;
    (pool, name)
}

/// With concurrency 1 the worker holds 4 messages (prefetch = 4 x concurrency) but runs one:
/// at SIGTERM it cancels its consumer and returns the other three unstarted at once (ready in
/// the queue for other workers while its run goes on), then finishes that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_returns_the_messages_it_had_not_started() {
    use warren_transport::Transport;
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let m = Management::start(&pg_url()).await;
    // Long enough that the first run is still going when SIGTERM comes and the queue is read,
    // on a busy machine too (with 1 s, a run that ended first let the second start).
    let (pool, name) = publish_slow(&m, tmp.path(), 5).await;
    let mut w = start_worker(&pg_url(), &pool, 1, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (_, v) = m.invoke(&name, "async", b"").await;
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    m.wait_status(&ids[0], "running").await;
    let broker = AmqpTransport::connect(&amqp_url(), "warren-tests").await.expect("amqp");
    unsafe {
        libc::kill(w.pid() as i32, libc::SIGTERM);
    }
    // Without the cancel, the three returned ones came straight back to the stopping worker's
    // channel (it had room) and stayed there, unready, until it exited.
    eventually(Duration::from_secs(4), "the three unstarted messages ready in the queue", || {
        let broker = &broker;
        let pool = &pool;
        async move { broker.queue_stats(pool).await.ok().filter(|s| s.messages == 3).map(|_| ()) }
    })
    .await;
    assert!(w.child.try_wait().unwrap().is_none(), "the worker is still finishing its run when they are back");
    let status = w.terminate(Duration::from_secs(20)).expect("the worker exits within its grace period");
    assert!(status.success(), "exit status {status:?}");
    let (_, first) = m.get(&format!("/api/invocations/{}", ids[0])).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    for id in &ids[1..] {
        let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
        assert_eq!((v["status"].as_str(), v["started_ms"].as_i64()), (Some("queued"), None), "not started: {v}");
    }
    // Returned, not lost: the next worker runs each of them once.
    let _w2 = start_worker(&pg_url(), &pool, 4, &tmp.path().join("cache2"));
    for id in &ids[1..] {
        let v = m.wait_status(id, "succeeded").await;
        assert_eq!(v["attempts"], 1, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_invocations_finish_then_the_worker_leaves() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let m = Management::start(&pg_url()).await;
    let (pool, name) = publish_slow(&m, tmp.path(), 2).await;
    let mut w = start_worker(&pg_url(), &pool, 2, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    let (_, v) = m.invoke(&name, "async", b"").await;
    let id = v["id"].as_str().unwrap().to_string();
    m.wait_status(&id, "running").await;
    let status = w.terminate(Duration::from_secs(20)).expect("the worker exits within its grace period");
    assert!(status.success(), "exit status {status:?}");
    let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
    assert_eq!((v["status"].as_str(), v["result"].as_str()), (Some("succeeded"), Some("finished\n")), "{v}");
    let (_, workers) = m.get("/api/workers").await;
    let me = workers.as_array().unwrap().iter().find(|x| x["pools"] == pool.as_str()).expect("worker registered");
    assert_eq!(me["state"], "gone");
}

/// A management instance renews its lease while it runs, and at a clean stop (SIGTERM) hands
/// it back as lapsed with everything settled, so that no other instance settles its last
/// records "not queued" (the killed case is in the fault suite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_management_stopped_cleanly_hands_its_lease_back() {
    require_services();
    let url = pg_url();
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let lease = || async {
        // Empty until a management instance made the table.
        let rows: Vec<(String, i64, i64, i64)> =
            sqlx::query_as("SELECT id, seen_ms, settled_ms, lease_ms FROM warren_instances")
                .fetch_all(&db)
                .await
                .unwrap_or_default();
        rows
    };
    // Other tests may share this database (outside nextest): this instance's lease is the new one.
    let before: std::collections::HashSet<String> = lease().await.into_iter().map(|(id, ..)| id).collect();
    let mut m = Management::start(&url).await;
    let (id, seen, _, lease_ms) = eventually(Duration::from_secs(10), "management's lease", || async {
        lease().await.into_iter().find(|(id, _, settled, _)| !before.contains(id) && *settled < i64::MAX)
    })
    .await;
    assert_eq!(lease_ms, 60_000, "the default lease");
    // Renewed about every second.
    eventually(Duration::from_secs(10), "the lease renewed", || async {
        lease().await.into_iter().find(|(i, s, ..)| *i == id && *s > seen).map(|_| ())
    })
    .await;
    let status = m.proc.terminate(Duration::from_secs(30)).expect("management stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    let rows = lease().await;
    let (_, _, settled, lease_ms) = rows.iter().find(|(i, ..)| *i == id).expect("the lease row is kept until settled");
    assert_eq!((*settled, *lease_ms), (i64::MAX, 0), "handed back: lapsed at once, everything settled");
}

/// Clients cannot hold the API open without bound: past `--max-connections` a new connection
/// waits (in the kernel's backlog) until one closes (an idle one is closed for it), and a client that owes bytes and sends none
/// for `--client-timeout-secs` (a head that never ends, a body cut short, an idle keep-alive
/// connection) loses its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_capped_and_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    require_services();
    let m = Management::start_with(&pg_url(), &["--max-connections", "1", "--client-timeout-secs", "1"]).await;
    let addr = m.base.trim_start_matches("http://").to_string();
    // One slot: the readiness check's pooled connection holds it until it has idled 1 s; then
    // the kernel hands the waiting connections over in the order they came.
    let mut slow_head = TcpStream::connect(&addr).await.unwrap();
    slow_head.write_all(b"GET /healthz HTTP/1.1\r\nHost: warren\r\n").await.unwrap(); // no blank line: never complete
    let mut slow_body = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/functions/none/invoke HTTP/1.1\r\nHost: warren\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n",
        m.key
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    slow_body.write_all(b"{\"only\": \"part of it").await.unwrap();
    let idle = TcpStream::connect(&addr).await.unwrap();
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third.write_all(b"GET /healthz HTTP/1.1\r\nHost: warren\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), third.read_to_end(&mut answer))
        .await
        .expect("the third connection is served once the ones before it are closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "the third connection is served: {answer:?}");
    // With one slot the third was accepted only after the others were closed, so on loopback
    // their ends are already here: read without waiting.
    for (what, s) in [("the slow head", &slow_head), ("the body cut short", &slow_body), ("the idle connection", &idle)]
    {
        let mut got = Vec::new();
        let closed = loop {
            let mut buf = [0u8; 512];
            match s.try_read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true, // reset: closed too
            }
        };
        let got = String::from_utf8_lossy(&got);
        assert!(closed, "{what} was closed (client timeout) before the third connection got its slot: {got:?}");
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 408") || got.starts_with("HTTP/1.1 400"),
            "{what} is closed unanswered, or with a 4xx: {got:?}"
        );
    }
    // The API still serves.
    assert_eq!(m.get("/healthz").await.0, 200);
}

/// Bulk invokes that trickle their bodies (a byte every 300 ms: never idle for the client
/// timeout) hold the four bulk turns only for twice the client timeout: meanwhile another bulk
/// invoke waits the client timeout for a turn and is answered 503; then each trickler is
/// answered 408, and the next bulk invoke gets a turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_invokes_sending_their_bodies_a_byte_at_a_time_give_their_turns_back() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    require_services();
    let m = Management::start_with(&pg_url(), &["--client-timeout-secs", "1"]).await;
    let addr = m.base.trim_start_matches("http://").to_string();
    let name = unique("none");
    let head = format!(
        "POST /api/functions/{name}/invocations HTTP/1.1\r\nHost: warren\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 1000\r\n\r\n",
        m.key
    );
    // Management reads and runs four bulk invokes at once (`invoke::MAX_BULK_IN_FLIGHT`).
    let tricklers: Vec<_> = (0..4)
        .map(|_| {
            let (addr, head) = (addr.clone(), head.clone());
            tokio::spawn(async move {
                let mut s = TcpStream::connect(&addr).await.unwrap();
                s.write_all(head.as_bytes()).await.unwrap();
                let started = std::time::Instant::now();
                let mut got = Vec::new();
                // Up to 30 s: far beyond the 2 s the body may take once it has its turn.
                while started.elapsed() < Duration::from_secs(30) {
                    if s.write_all(b" ").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let mut buf = [0u8; 1024];
                    match s.try_read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                (String::from_utf8_lossy(&got).into_owned(), started.elapsed())
            })
        })
        .collect();
    let bulk = || async {
        let r = m.http.post(format!("{}/api/functions/{name}/invocations", m.base)).body("{}\n").send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    // The tricklers' turns are taken as soon as their heads are in; until then a bulk invoke
    // may still get one (and a 404: the function does not exist).
    let waited = eventually(Duration::from_secs(20), "a bulk invoke refused while the turns are held", || async {
        match bulk().await {
            (503, body) => Some(body),
            (404, _) => None,
            other => panic!("a bulk invoke while the tricklers hold the turns: {other:?}"),
        }
    })
    .await;
    assert!(waited.contains("bulk invokes were being read or run"), "{waited}");
    for t in tricklers {
        let (answer, after) = t.await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "a trickled body is refused after twice the client timeout: {answer:?} after {after:?}"
        );
        assert!(answer.contains("did not arrive within 2 s"), "{answer}");
    }
    // A connection of its own: the pooled one may be closed by the 1 s client timeout just now.
    let fresh = reqwest::Client::new();
    let r = fresh
        .post(format!("{}/api/functions/{name}/invocations", m.base))
        .bearer_auth(&m.key)
        .body("{}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the turns are free again: {}", r.text().await.unwrap());
}

/// A client's pool of keep-alive connections at `--max-connections` does not stall a new
/// connection until the idle ones time out: at the cap, the connections idle between requests
/// are closed, and the one serving a request is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_make_room_at_the_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    require_services();
    // The client timeout is far longer than the test's wait, so only the cap's reclaim frees a slot.
    let m = Management::start_with(&pg_url(), &["--max-connections", "2", "--client-timeout-secs", "600"]).await;
    let addr = m.base.trim_start_matches("http://").to_string();
    /// One keep-alive response read whole (its Content-Length), the connection left open.
    async fn response(s: &mut TcpStream) -> String {
        let mut got = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a whole response: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    return text;
                }
            }
        }
    }
    // Two connections take both slots: one in the middle of a request (its body half sent),
    // then one answered and left idle.
    let mut busy = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/functions/none/invoke HTTP/1.1\r\nHost: warren\r\nAuthorization: Bearer {}\r\nContent-Length: 10\r\n\r\n",
        m.key
    );
    busy.write_all(head.as_bytes()).await.unwrap();
    busy.write_all(b"{\"a\":").await.unwrap();
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: warren\r\n\r\n").await.unwrap();
    assert!(response(&mut idle).await.starts_with("HTTP/1.1 200"));
    // (The readiness check's pooled connection, idle too, may hold a slot: it is closed the same way.)
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third.write_all(b"GET /healthz HTTP/1.1\r\nHost: warren\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), third.read_to_end(&mut answer))
        .await
        .expect("a new connection at the cap is served once an idle one is closed, not after the client timeout")
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer));
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(60), idle.read(&mut buf))
        .await
        .expect("the idle connection was closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle connection is closed without an answer: {:?}", String::from_utf8_lossy(&buf[..n]));
    // The connection in the middle of a request was left alone: the rest of its body gets its answer.
    busy.write_all(b"\"b\"} ").await.unwrap();
    let answer = response(&mut busy).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "the busy connection's request is answered: {answer:?}");
    assert!(!answer.to_ascii_lowercase().contains("connection: close"), "and its keep-alive is untouched: {answer:?}");
    busy.write_all(b"GET /healthz HTTP/1.1\r\nHost: warren\r\n\r\n").await.unwrap();
    assert!(response(&mut busy).await.starts_with("HTTP/1.1 200"), "the busy connection serves its next request");
}

/// A management instance paused (SIGSTOP) for longer than its lease while it reads a batch:
/// another instance seals the batch with the items recorded so far. Resumed, the paused one
/// must not add items to the sealed batch: its submission stops with a 503, and the batch keeps
/// exactly the items the other sealed it with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_management_paused_past_its_lease_adds_nothing_to_a_batch_sealed_meanwhile() {
    require_services();
    // Fenced half a lease (2 s) after its last renewal: room for a slow one on a busy machine.
    const LEASE: &[&str] = &["--instance-lease-secs", "4"];
    let tmp = tempfile::tempdir().unwrap();
    let url = pg_url();
    let (pool, item) = (unique("p"), unique("item"));
    let a = Management::start_with(&url, LEASE).await;
    // No worker: the items stay queued; only the batch's records matter here.
    a.publish_dir(&function_dir(
        tmp.path(),
        &format!("name = \"{item}\"\nruntime = \"echo\"\npool = \"{pool}\"\n"),
        &[],
    ))
    .await;
    let _b = Management::start_with(&url, LEASE).await;
    let store = warren_store::open(&url).await.unwrap();

    let (lines, rx) = tokio::sync::mpsc::channel::<String>(4);
    let body =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|s| (Ok::<_, std::io::Error>(s), rx)) },
        );
    let request = {
        let (http, url) = (a.http.clone(), format!("{}/api/batches?function={item}", a.base));
        tokio::spawn(async move {
            let r = http
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .expect("an answer");
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap_or_default())
        })
    };
    let items = |from: usize, n: usize| (from..from + n).map(|i| format!("{{\"n\":{i}}}\n")).collect::<String>();
    // One chunk (500 items) recorded, 100 more read.
    lines.send(items(0, 600)).await.unwrap();
    let batch = eventually(Duration::from_secs(30), "the first chunk recorded", || {
        let (store, item) = (&store, item.clone());
        async move {
            let b = store.list_batches(100).await.ok()?.into_iter().find(|b| b.function == item)?;
            (b.counts.values().sum::<i64>() >= 500).then_some(b.id)
        }
    })
    .await;

    let pid = a.proc.pid() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // Its lease lapses; the other instance seals the batch with what was recorded.
    let sealed = eventually(Duration::from_secs(30), "the other instance to seal the batch", || async {
        store.get_batch(batch).await.ok().flatten().filter(|b| b.state != BatchState::Submitting)
    })
    .await;
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let recorded: i64 = sealed.counts.values().sum();
    assert_eq!(recorded, 500, "sealed with the one chunk recorded: {sealed:?}");

    // Resumed: the rest of the body comes, enough for more chunks.
    lines.send(items(600, 1_400)).await.unwrap();
    drop(lines);
    let (status, answer) = request.await.unwrap();
    assert_eq!(status, 503, "the submission stops: {answer}");
    assert!(answer["error"]["message"].as_str().unwrap_or_default().contains("lease"), "{answer}");
    let b = store.get_batch(batch).await.unwrap().unwrap();
    assert_eq!(
        (b.counts.values().sum::<i64>(), b.total),
        (500, 500),
        "no item joined the batch after it was sealed: {b:?}"
    );
}

/// Management holds a descriptor per connection: started with a low soft limit of open files
/// (1,024 is common), it raises it to the hard limit, so `--max-connections` is not cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_raises_its_open_file_limit_to_the_hard_one() {
    require_services();
    let hard: u64 =
        String::from_utf8(std::process::Command::new("sh").args(["-c", "ulimit -Hn"]).output().unwrap().stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap_or(u64::MAX); // "unlimited"
    assert!(hard > 256, "this check needs a hard open-file limit above 256 (ulimit -Hn is {hard})");
    let port = free_port();
    let mut cmd = std::process::Command::new("sh");
    // The shell lowers only the soft limit, then becomes management (same pid).
    cmd.args(["-c", "ulimit -Sn 256 && exec \"$0\" \"$@\""])
        .arg(bin("warren-management"))
        .args(["--amqp", &amqp_url(), "--store", &pg_url(), "--insecure-no-auth"])
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    let p = Proc::spawn("warren-management", &mut cmd);
    let url = format!("http://127.0.0.1:{port}/healthz");
    eventually(Duration::from_secs(30), "management to answer /healthz", || async {
        reqwest::get(&url).await.ok().filter(|r| r.status().is_success()).map(|_| ())
    })
    .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    let soft = line.split_whitespace().nth(3).unwrap();
    let expected = if hard == u64::MAX { "unlimited".to_string() } else { hard.to_string() };
    assert_eq!(soft, expected, "the soft limit raised from 256 to the hard one: {line}");
}
