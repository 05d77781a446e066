//! The fault suite: batches of 5,000 invocations of a few-millisecond function, with a real
//! fault injected while they run (or, for bulk invokes, while they are being sent), then a
//! check of the store: exactly one final record per invocation, every result right, none
//! missing. Each scenario prints its counts.
//!
//! These tests stop RabbitMQ and restart PostgreSQL, so `scripts/test` runs them on their own,
//! one at a time, after the rest of the suite.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;
use warren_store::{BatchState, InvocationFilter, Status, Store};
use warren_tests::*;
use warren_transport::amqp::{first_node, AmqpTransport};
use warren_transport::{QueueType, Transport};

const N: usize = 5_000;

struct Scenario {
    tmp: tempfile::TempDir,
    pool: String,
    name: String,
    m: Management,
    store: Arc<dyn Store>,
    runs: std::path::PathBuf,
}

impl Scenario {
    async fn new() -> Scenario {
        Self::new_with(&[]).await
    }

    /// With extra arguments for management.
    async fn new_with(management_args: &[&str]) -> Scenario {
        require_services();
        let tmp = tempfile::tempdir().unwrap();
        let (pool, name) = (unique("f"), unique("cat"));
        let runs = tmp.path().join("runs.log");
        // Echoes its input after ~10 ms of "work"; notes each execution (O_APPEND lines are
        // atomic) to count re-runs.
        let script = format!("cat\nsleep 0.01\necho \"$WARREN_INVOCATION_ID\" >> '{}'\n", runs.display());
        let manifest = format!(
            "name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\ntimeout_secs = 60\npool = \"{pool}\"\n"
        );
        let m = Management::start_with(&pg_url(), management_args).await;
        m.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.sh", &script)])).await;
        let store = warren_store::open(&pg_url()).await.unwrap();
        Scenario { tmp, pool, name, m, store, runs }
    }

    fn worker(&self, i: usize) -> Proc {
        start_worker(&pg_url(), &self.pool, 4, &self.tmp.path().join(format!("cache{i}")))
    }

    /// Publishes N async invocations through the API (32 requests in flight).
    async fn publish(&self) -> HashMap<Uuid, String> {
        let mut ids = HashMap::new();
        let mut pending = tokio::task::JoinSet::new();
        let mut next = 0;
        while next < N || !pending.is_empty() {
            while next < N && pending.len() < 32 {
                let (http, url) =
                    (self.m.http.clone(), format!("{}/api/functions/{}/invoke?mode=async", self.m.base, self.name));
                let input = format!("item-{next}");
                next += 1;
                pending.spawn(async move {
                    let r = http.post(url).body(input.clone()).send().await.expect("invoke");
                    assert_eq!(r.status().as_u16(), 202);
                    let v: serde_json::Value = r.json().await.unwrap();
                    (v["id"].as_str().unwrap().parse::<Uuid>().unwrap(), input)
                });
            }
            if let Some(r) = pending.join_next().await {
                let (id, input) = r.unwrap();
                ids.insert(id, input);
            }
        }
        assert_eq!(ids.len(), N);
        ids
    }

    /// Final invocations of this scenario's function; `None` while the store is unreachable.
    async fn finals(&self) -> Option<HashMap<Uuid, warren_store::Invocation>> {
        let filter = InvocationFilter { function: Some(self.name.clone()), status: None, limit: 10_000 };
        let all = self.store.list_invocations(&filter).await.ok()?;
        Some(all.into_iter().filter(|i| i.status.is_final()).map(|i| (i.id, i)).collect())
    }

    async fn completed(&self) -> usize {
        self.finals().await.map(|f| f.len()).unwrap_or(0)
    }

    /// Waits for every invocation to be final (calling `tick` meanwhile), then checks the
    /// store and prints the counts.
    async fn finish(&self, label: &str, ids: &HashMap<Uuid, String>, mut tick: impl FnMut(usize)) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let done = self.completed().await;
            if done >= ids.len() {
                break;
            }
            assert!(Instant::now() < deadline, "{label}: only {done} of {} final after 300 s", ids.len());
            tick(done);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let filter = InvocationFilter { function: Some(self.name.clone()), status: None, limit: 10_000 };
        let records = self.store.list_invocations(&filter).await.unwrap();
        let distinct: HashSet<Uuid> = records.iter().map(|r| r.id).collect();
        let by_id: HashMap<Uuid, &warren_store::Invocation> = records.iter().map(|r| (r.id, r)).collect();
        let missing = ids.keys().filter(|id| !by_id.contains_key(id)).count();
        let wrong = ids
            .iter()
            .filter(|(id, input)| {
                by_id
                    .get(id)
                    .map(|r| r.status != Status::Succeeded || r.result.as_deref() != Some(input.as_bytes()))
                    .unwrap_or(false)
            })
            .count();
        let retried = records.iter().filter(|r| r.attempts > 1).count();
        let dead = records.iter().filter(|r| r.status == Status::Dead).count();
        let runs = std::fs::read_to_string(&self.runs).unwrap_or_default();
        let executions = runs.lines().count();
        println!(
            "{label}: published {}, completed {}, retried {retried}, dead {dead}, duplicates found {} \
             (records {}, distinct {}), function executions {executions} ({} re-runs after the fault), missing {missing}, wrong {wrong}",
            ids.len(),
            records.iter().filter(|r| r.status.is_final()).count(),
            records.len() - distinct.len(),
            records.len(),
            distinct.len(),
            executions.saturating_sub(distinct.len()),
        );
        assert_eq!(records.len(), ids.len(), "{label}: one record per invocation, no more");
        assert_eq!(distinct.len(), records.len(), "{label}: no duplicate records");
        assert_eq!(missing, 0, "{label}: invocations missing");
        assert_eq!(wrong, 0, "{label}: invocations not succeeded with their own input as result");
        assert_eq!(dead, 0, "{label}: nothing should have died");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_every_two_seconds_lose_nothing() {
    let s = Scenario::new().await;
    // The batch is queued first, so that the faults hit it while it runs.
    let ids = s.publish().await;
    let mut workers: Vec<Proc> = (0..3).map(|i| s.worker(i)).collect();
    wait_consumers(&s.pool, 3).await;
    let mut last_kill = Instant::now();
    let mut kills = 0;
    let mut victim = 0;
    s.finish("SIGKILL every 2 s", &ids, |_| {
        if last_kill.elapsed() >= Duration::from_secs(2) {
            // SIGKILL (Child::kill), then a fresh worker in its place.
            let _ = workers[victim].child.kill();
            let _ = workers[victim].child.wait();
            workers[victim] = s.worker(victim);
            victim = (victim + 1) % workers.len();
            kills += 1;
            last_kill = Instant::now();
        }
    })
    .await;
    println!("workers killed: {kills}");
    assert!(kills >= 2, "the run ended before the fault could be injected twice ({kills} kills)");
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl is needed for this test");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_run_loses_nothing() {
    let s = Scenario::new().await;
    let ids = s.publish().await;
    let _workers: Vec<Proc> = (0..3).map(|i| s.worker(i)).collect();
    wait_consumers(&s.pool, 3).await;
    // Let the workers get going, then take the broker away under them.
    eventually(Duration::from_secs(60), "some progress", || async { (s.completed().await >= 300).then_some(()) }).await;
    let before = s.completed().await;
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    println!("broker stopped after {before} of {N} completed");
    assert!(before < N, "the run ended before the broker stopped");
    s.finish("RabbitMQ stop_app/start_app", &ids, |_| {}).await;
    // Management is back in business too: a sync invoke goes through.
    let (status, v) = s.m.invoke(&s.name, "sync", b"after the restart").await;
    assert_eq!((status, v["result"].as_str()), (200, Some("after the restart")), "{v}");
}

fn pg_restart() {
    let versions = std::fs::read_dir("/etc/postgresql").expect("this test restarts the local PostgreSQL cluster");
    for v in versions {
        let v = v.unwrap().file_name().to_string_lossy().to_string();
        let out = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &v, "main", "restart"])
            .output()
            .expect("pg_ctlcluster");
        assert!(out.status.success(), "pg_ctlcluster restart: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_mid_run_loses_nothing() {
    let s = Scenario::new().await;
    let ids = s.publish().await;
    let _workers: Vec<Proc> = (0..3).map(|i| s.worker(i)).collect();
    wait_consumers(&s.pool, 3).await;
    eventually(Duration::from_secs(60), "some progress", || async { (s.completed().await >= 300).then_some(()) }).await;
    let before = s.completed().await;
    pg_restart();
    println!("PostgreSQL restarted after {before} of {N} completed");
    assert!(before < N, "the run ended before the database restarted");
    s.finish("PostgreSQL restart", &ids, |_| {}).await;
    let (status, _) = s.m.get("/api/functions").await;
    assert_eq!(status, 200, "management reads again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_garbage_messages_are_dead_lettered_and_real_work_completes() {
    let s = Scenario::new().await;
    let _workers: Vec<Proc> = (0..3).map(|i| s.worker(i)).collect();
    wait_consumers(&s.pool, 3).await;
    let t = Arc::new(AmqpTransport::connect(&amqp_url(), "garbage-test").await.unwrap());
    let valid = warren_wire::message::InvocationMessage {
        v: warren_wire::message::PROTOCOL_VERSION,
        id: Uuid::now_v7(),
        function: s.name.clone(),
        version: 1,
        attempt: 1,
        payload: Bytes::from_static(b"payload"),
        notify: None,
        created_ms: warren_wire::time::now_ms(),
        headers: Vec::new(),
        fresh: false,
        unrecorded: false,
        not_before_ms: None,
    }
    .encode();
    // Garbage goes in while the real invocations are published.
    let garbage = {
        let (t, pool) = (t.clone(), s.pool.clone());
        tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64;
            let mut rnd = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for i in 0..10_000u64 {
                let body: Vec<u8> = match i % 3 {
                    0 => (0..(rnd() % 200)).map(|_| rnd() as u8).collect(),
                    1 => valid[..(rnd() as usize % (valid.len() - 1))].to_vec(),
                    _ => {
                        let mut m = warren_wire::message::InvocationMessage::decode(&valid).unwrap();
                        m.v = warren_wire::message::PROTOCOL_VERSION + 1 + (rnd() % 100) as u16;
                        m.encode()
                    }
                };
                t.publish(&pool, Bytes::from(body)).await.unwrap();
            }
        })
    };
    let ids = s.publish().await;
    garbage.await.unwrap();
    s.finish("10,000 garbage messages", &ids, |_| {}).await;
    eventually(Duration::from_secs(60), "10,000 dead letters", || async {
        (t.dead_count(&s.pool).await.ok()? >= 10_000).then_some(())
    })
    .await;
    let dead = t.take_dead(&s.pool, 20_000).await.unwrap();
    let with_reason = dead.iter().filter(|d| d.reason.as_deref().map(|r| !r.is_empty()).unwrap_or(false)).count();
    let newer = dead.iter().filter(|d| d.reason.as_deref().unwrap_or("").contains("newer than this worker")).count();
    println!("dead letters: {} ({with_reason} with a reason, {newer} from a newer protocol)", dead.len());
    assert_eq!(dead.len(), 10_000);
    assert_eq!(with_reason, 10_000);
    assert!(newer >= 3_000, "{newer}");
    for d in dead {
        d.ack().await.unwrap();
    }
}

/// Bulk invokes (`POST /api/functions/{name}/invocations`) sent one after another while the
/// broker is stopped and started: every input answered queued runs and is stored exactly once
/// with its own result; an input answered not queued is recorded failed (or not at all), so
/// nothing is left `queued` with no message and nothing appears that was not answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_invokes_across_a_broker_restart_lose_nothing() {
    let s = Scenario::new().await;
    let _workers: Vec<Proc> = (0..3).map(|i| s.worker(i)).collect();
    wait_consumers(&s.pool, 3).await;
    const PER_REQUEST: usize = 10;
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender = {
        let (http, url, answered) =
            (s.m.http.clone(), format!("{}/api/functions/{}/invocations", s.m.base, s.name), answered.clone());
        tokio::spawn(async move {
            let (mut queued, mut not_queued, mut refused) = (HashMap::new(), HashSet::new(), 0usize);
            for r in 0..N / PER_REQUEST {
                let inputs: Vec<String> =
                    (0..PER_REQUEST).map(|k| format!("\"item-{}\"", r * PER_REQUEST + k)).collect();
                let resp = http
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(inputs.join("\n"))
                    .send()
                    .await
                    .expect("the bulk request reaches management");
                let status = resp.status().as_u16();
                let v: serde_json::Value = resp.json().await.expect("a JSON answer");
                let ids: Vec<Uuid> = v["ids"]
                    .as_array()
                    .map(|a| a.iter().map(|i| i.as_str().unwrap().parse().unwrap()).collect())
                    .unwrap_or_default();
                match status {
                    // All queued, in input order.
                    202 => {
                        assert_eq!(ids.len(), PER_REQUEST, "{v}");
                        queued.extend(ids.into_iter().zip(inputs));
                    }
                    // Some or none queued; the rest listed. Inputs are matched to ids through
                    // the store afterwards (by result), so keep the ids only.
                    503 => {
                        for n in v["not_queued"].as_array().into_iter().flatten() {
                            not_queued.insert(n["id"].as_str().unwrap().parse::<Uuid>().unwrap());
                        }
                        if v["not_queued"].is_null() {
                            refused += PER_REQUEST;
                        }
                        for id in ids {
                            queued.insert(id, String::new());
                        }
                    }
                    other => panic!("bulk invoke answered {other}: {v}"),
                }
                answered.fetch_add(PER_REQUEST, std::sync::atomic::Ordering::Relaxed);
            }
            (queued, not_queued, refused)
        })
    };
    eventually(Duration::from_secs(60), "some inputs answered", || {
        let answered = answered.clone();
        async move { (answered.load(std::sync::atomic::Ordering::Relaxed) >= 500).then_some(()) }
    })
    .await;
    rabbitmqctl(&["stop_app"]);
    let at_stop = answered.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    let (mut queued, not_queued, refused) = sender.await.expect("the sender");
    println!(
        "broker stopped after {at_stop} of {N} inputs answered; queued {}, not queued {}, refused whole {refused}",
        queued.len(),
        not_queued.len()
    );
    assert!(at_stop < N, "every request was answered before the broker stopped");
    assert_eq!(queued.len() + not_queued.len() + refused, N, "every input is answered one way or the other");

    // Every queued input becomes final; an id queued by a partial 503 gets its input from its
    // record (the payload), so that its result can be checked like the others.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = s.finals().await.map(|f| queued.keys().filter(|id| f.contains_key(id)).count()).unwrap_or(0);
        if done == queued.len() {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {} queued inputs final after 300 s", queued.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let filter = InvocationFilter { function: Some(s.name.clone()), status: None, limit: 10_000 };
    let records = s.store.list_invocations(&filter).await.unwrap();
    for r in &records {
        if let Some(input) = queued.get_mut(&r.id) {
            if input.is_empty() {
                *input = String::from_utf8(r.payload.clone()).unwrap();
            }
        }
    }
    let runs = std::fs::read_to_string(&s.runs).unwrap_or_default();
    let ran: HashSet<Uuid> = runs.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let mut stray = 0;
    for r in &records {
        assert!(r.status.is_final(), "no record is left {}: {}", r.status, r.id);
        if let Some(input) = queued.get(&r.id) {
            assert_eq!(r.status, Status::Succeeded, "a queued input succeeds: {}", r.id);
            assert_eq!(r.result.as_deref(), Some(input.as_bytes()), "with its own result: {}", r.id);
        } else if not_queued.contains(&r.id) {
            // Recorded failed, unless its message got through after all (the confirm was lost
            // with the connection, not the message): then its run's outcome replaced that record.
            if r.status != Status::Failed {
                stray += 1;
            }
        } else {
            panic!("a record nobody was answered about: {} ({})", r.id, r.status);
        }
    }
    let not_queued_ran = not_queued.iter().filter(|id| ran.contains(id)).count();
    println!("records {}, not-queued inputs that ran anyway {not_queued_ran}, not failed {stray}", records.len());
    let distinct: HashSet<Uuid> = records.iter().map(|r| r.id).collect();
    assert_eq!(distinct.len(), records.len(), "no duplicate records");
    assert!(queued.keys().all(|id| distinct.contains(id)), "every queued input has its record");
}

/// Management is killed (SIGKILL) while async invokes and a streamed batch come in; another
/// instance starts. Every invocation answered 202 runs and succeeds; none is left `queued` with
/// no message (the new instance settles the dead one's unpublished records "not queued" once its
/// lease lapses, and their runs replace them where the message got through after all); the batch
/// it was reading does not stay `submitting` forever but runs the items recorded, and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_management_leaves_nothing_queued_forever() {
    // Fenced half a lease (2 s) after its last renewal: room for a slow one under this load.
    const LEASE: &[&str] = &["--instance-lease-secs", "4"];
    let mut s = Scenario::new_with(LEASE).await;
    // Batch items: a fast echo function on the same pool.
    let items_fn = unique("items");
    let dir =
        function_dir(s.tmp.path(), &format!("name = \"{items_fn}\"\nruntime = \"echo\"\npool = \"{}\"\n", s.pool), &[]);
    s.m.publish_dir(&dir).await;
    let _workers: Vec<Proc> = (0..2).map(|i| s.worker(i)).collect();
    wait_consumers(&s.pool, 2).await;

    // Async invokes, 64 in flight, until management goes away.
    let answered = Arc::new(std::sync::Mutex::new(HashMap::<Uuid, String>::new()));
    let invoker = {
        let (http, url, answered) =
            (s.m.http.clone(), format!("{}/api/functions/{}/invoke?mode=async", s.m.base, s.name), answered.clone());
        tokio::spawn(async move {
            let mut pending = tokio::task::JoinSet::new();
            let (mut next, mut failed) = (0usize, false);
            while !failed || !pending.is_empty() {
                while !failed && pending.len() < 64 && next < N {
                    let (http, url, input) = (http.clone(), url.clone(), format!("item-{next}"));
                    next += 1;
                    pending.spawn(async move {
                        let r = http.post(url).body(input.clone()).send().await.ok()?;
                        if r.status().as_u16() != 202 {
                            return None;
                        }
                        let v: serde_json::Value = r.json().await.ok()?;
                        Some((v["id"].as_str()?.parse::<Uuid>().ok()?, input))
                    });
                }
                match pending.join_next().await {
                    Some(Ok(Some((id, input)))) => {
                        answered.lock().unwrap().insert(id, input);
                    }
                    Some(_) => failed = true,
                    None if next >= N => break,
                    None => {}
                }
            }
        })
    };
    // A batch streamed at about 10,000 items/s, far longer than management lives.
    let batch_request = {
        let (http, url) = (s.m.http.clone(), format!("{}/api/batches?function={items_fn}", s.m.base));
        tokio::spawn(async move {
            let body = futures_util::stream::unfold(0usize, |n| async move {
                if n >= 200_000 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                let chunk: String = (n..n + 100).map(|i| format!("{{\"n\":{i}}}\n")).collect();
                Some((Ok::<_, std::io::Error>(chunk), n + 100))
            });
            let r = http
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await;
            r.map(|r| r.status().as_u16()).ok()
        })
    };
    // Kill once both are well under way.
    let batch = eventually(Duration::from_secs(60), "batch items recorded and invokes answered", || {
        let (store, answered, items_fn) = (s.store.clone(), answered.clone(), items_fn.clone());
        async move {
            let b = store.list_batches(100).await.ok()?.into_iter().find(|b| b.function == items_fn)?;
            let recorded: i64 = b.counts.values().sum();
            (recorded >= 1_000 && answered.lock().unwrap().len() >= 300).then_some(b.id)
        }
    })
    .await;
    s.m.proc.child.kill().expect("SIGKILL management");
    let _ = s.m.proc.child.wait();
    let _ = invoker.await;
    assert_ne!(batch_request.await.unwrap(), Some(201), "the batch was cut off by the kill");
    let answered = answered.lock().unwrap().clone();
    let b = s.store.get_batch(batch).await.unwrap().unwrap();
    println!(
        "management killed with {} invokes answered 202 and the batch {} with {} items recorded",
        answered.len(),
        b.state,
        b.counts.values().sum::<i64>()
    );
    assert_eq!(b.state, BatchState::Submitting, "killed while it was reading the batch");

    // Another instance: it settles the first one's lease once that lapses.
    let _m2 = Management::start_with(&pg_url(), LEASE).await;
    let transport = AmqpTransport::connect(&amqp_url(), "fault-test").await.unwrap();
    let filter = InvocationFilter { function: Some(s.name.clone()), status: None, limit: 10_000 };
    let settled = |r: &warren_store::Invocation| {
        r.status == Status::Failed && r.attempts == 0 && r.error.as_deref().unwrap_or("").starts_with("not queued")
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let (records, b) = loop {
        let records = s.store.list_invocations(&filter).await.unwrap();
        let b = s.store.get_batch(batch).await.unwrap().unwrap();
        let open_items = b.counts.get("queued").copied().unwrap_or(0) + b.counts.get("running").copied().unwrap_or(0);
        let queue = transport.queue_stats(&s.pool).await.map(|q| q.messages).unwrap_or(u64::MAX);
        let unfinished = records.iter().filter(|r| !r.status.is_final()).count();
        // A settled record whose message is still on its way (held by a worker, invisible to
        // the queue's count) is final too, until its run replaces it: wait for every 202.
        let answered_done =
            records.iter().filter(|r| answered.contains_key(&r.id) && r.status == Status::Succeeded).count();
        if unfinished == 0
            && answered_done == answered.len()
            && b.state == BatchState::Done
            && open_items == 0
            && queue == 0
        {
            break (records, b);
        }
        assert!(
            Instant::now() < deadline,
            "after 180 s: {unfinished} invocations not final (e.g. {:?}), {answered_done} of {} answered ones \
             succeeded, batch {} with {open_items} items open, {queue} messages queued",
            records.iter().find(|r| !r.status.is_final()).map(|r| (r.id, r.status)),
            answered.len(),
            b.state
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut not_queued = 0;
    for r in &records {
        match answered.get(&r.id) {
            Some(input) => {
                assert_eq!(r.status, Status::Succeeded, "an invoke answered 202 succeeds: {}", r.id);
                assert_eq!(r.result.as_deref(), Some(input.as_bytes()), "with its own result: {}", r.id);
            }
            // Never answered: it ran (its message got through before the kill), or it is
            // recorded "not queued".
            None if r.status == Status::Succeeded => {}
            None => {
                assert!(settled(r), "an unanswered invocation is run or settled not queued: {r:?}");
                not_queued += 1;
            }
        }
    }
    let distinct: HashSet<Uuid> = records.iter().map(|r| r.id).collect();
    assert_eq!(distinct.len(), records.len(), "no duplicate records");
    assert!(answered.keys().all(|id| distinct.contains(id)), "every answered invoke has its record");
    let total: i64 = b.counts.values().sum();
    let (succeeded, failed) = (b.counts["succeeded"], b.counts["failed"]);
    println!(
        "after the second instance: {} invocations ({} answered), {not_queued} settled not queued; batch {} with \
         total {} ({succeeded} succeeded, {failed} settled not queued), error: {:?}",
        records.len(),
        answered.len(),
        b.state,
        b.total,
        b.error
    );
    assert_eq!(b.total, total, "the batch's total is the items recorded");
    assert_eq!(succeeded + failed, total, "every item ran or was settled not queued: {:?}", b.counts);
    assert!(b.error.as_deref().unwrap_or("").contains("stopped"), "the batch says why it ended early: {:?}", b.error);
}

/// Runs `scripts/cluster` (the three-node RabbitMQ cluster `scripts/test` starts); its output.
fn cluster(args: &[&str]) -> String {
    try_cluster(args).unwrap_or_else(|e| {
        panic!("scripts/cluster {args:?} failed (scripts/test starts the cluster; by hand: scripts/cluster start): {e}")
    })
}

/// [`cluster`] for questions asked while the cluster changes (a node going, a leader being
/// elected), where a failed answer is asked again: its output, or its error output.
fn try_cluster(args: &[&str]) -> Result<String, String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster");
    let out = Command::new(&script).args(args).output().expect("scripts/cluster runs");
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

/// [`try_cluster`] off the runtime's threads, for the polls that run beside the load (the
/// `leader` question may take seconds while a queue elects, and the invoker and the progress
/// sampler share those threads).
async fn ask_cluster(args: &[&str]) -> Result<String, String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || try_cluster(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("scripts/cluster is asked")
}

/// The cluster's URLs, after checking that its three nodes run.
fn require_cluster() -> String {
    let running = cluster(&["status"]);
    assert_eq!(running.split_whitespace().count(), 3, "three RabbitMQ nodes should run: {running}");
    cluster(&["urls"])
}

/// How a node is taken away in [`quorum_failover`].
#[derive(Clone, Copy, Debug)]
enum NodeLoss {
    /// `rabbitmqctl stop_app`, later `start_app`.
    StopApp,
    /// `kill -9` of its Erlang VM, later a boot on its data.
    Kill,
}

/// 5,000 invocations on quorum queues of the three-node cluster (3,000 async invokes and a
/// batch of 2,000), a tenth failing every attempt (dead-lettered after 3) and a tenth failing
/// their first attempt only (retried through a retry queue), while the node leading the pool's
/// queue is lost and comes back. Every invoke answered 202 and every batch item ends once, as
/// its input says; the dead letters are all in the dead-letter queue.
async fn quorum_failover(loss: NodeLoss) {
    require_services();
    let urls = require_cluster();
    let label = format!("quorum queues, leader {loss:?}");
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("ha"), unique("ha"));
    // Input `item-N` (or the JSON string "item-N" of a batch item): N % 10 == 0 fails every
    // attempt, N % 10 == 1 fails its first; the rest echo their input after ~10 ms.
    let script = "input=$(cat)\nn=$(printf '%s' \"$input\" | tr -dc 0-9)\nsleep 0.01\n\
                  if [ $((n % 10)) -eq 0 ]; then echo \"always fails\" >&2; exit 1; fi\n\
                  if [ $((n % 10)) -eq 1 ] && [ \"$WARREN_ATTEMPT\" = 1 ]; then echo \"first attempt fails\" >&2; exit 1; fi\n\
                  printf '%s' \"$input\"\n";
    let manifest = format!(
        "name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\ntimeout_secs = 60\npool = \"{pool}\"\n\
         [retry]\nmax_attempts = 3\ninitial_delay_ms = 200\nmax_delay_ms = 400\njitter = 0.0\n"
    );
    let ha: &[&str] = &["--amqp", &urls, "--queue-type", "quorum"];
    let m = Management::start_with(&pg_url(), ha).await;
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.sh", script)])).await;
    let store = warren_store::open(&pg_url()).await.unwrap();
    let _workers: Vec<Proc> = (0..3)
        .map(|i| start_worker_with(&pg_url(), &pool, 4, &tmp.path().join(format!("cache{i}")), ha, &[]))
        .collect();
    let urls_list: Vec<String> = urls.split(',').map(String::from).collect();
    let t =
        AmqpTransport::connect_to(&urls_list, "fault-test", QueueType::Quorum, Duration::from_secs(30)).await.unwrap();
    eventually(Duration::from_secs(60), "3 consumers on the pool", || async {
        t.queue_stats(&pool).await.ok().filter(|s| s.consumers >= 3).map(|_| ())
    })
    .await;

    // The node that leads the pool's queue, and one more worker, named so that it connects to
    // that node first: at least one role must move to another node mid-run. Started before
    // the load, so that the run cannot end while it starts.
    let queue = warren_wire::topology::pool_queue(&pool);
    let leader = cluster(&["leader", &queue]);
    let node: usize = leader.parse().unwrap();
    let id =
        std::iter::repeat_with(|| unique("ha-worker-")).find(|id| first_node(id, urls_list.len()) == node - 1).unwrap();
    let extra: Vec<&str> = ha.iter().copied().chain(["--id", id.as_str()]).collect();
    let _moved = start_worker_with(&pg_url(), &pool, 4, &tmp.path().join("cache-moved"), &extra, &[]);
    // The connections the node has when it is lost: asked now, so that no question to the
    // cluster (seconds for rabbitmqctl on a busy machine) stands between the load and the fault.
    let on_leader = eventually(Duration::from_secs(60), "the fourth worker on the leader's node", || async {
        ask_cluster(&["clients", &leader]).await.ok().filter(|c| c.contains(&id))
    })
    .await;

    // Async invokes, 32 in flight; an answer other than 202 is kept as such.
    const INVOKES: usize = 3_000;
    const ITEMS: usize = 2_000;
    let answered = Arc::new(std::sync::Mutex::new((HashMap::<Uuid, String>::new(), 0usize)));
    let invoker = {
        let (http, url, answered) =
            (m.http.clone(), format!("{}/api/functions/{name}/invoke?mode=async", m.base), answered.clone());
        tokio::spawn(async move {
            let mut pending = tokio::task::JoinSet::new();
            let mut next = 0;
            while next < INVOKES || !pending.is_empty() {
                while next < INVOKES && pending.len() < 32 {
                    let (http, url, input) = (http.clone(), url.clone(), format!("item-{next}"));
                    next += 1;
                    pending.spawn(async move {
                        let r = http.post(url).body(input.clone()).send().await.expect("management answers");
                        if r.status().as_u16() != 202 {
                            return None;
                        }
                        let v: serde_json::Value = r.json().await.unwrap();
                        Some((v["id"].as_str().unwrap().parse::<Uuid>().unwrap(), input))
                    });
                }
                if let Some(r) = pending.join_next().await {
                    let mut a = answered.lock().unwrap();
                    match r.unwrap() {
                        Some((id, input)) => drop(a.0.insert(id, input)),
                        None => a.1 += 1,
                    }
                }
            }
        })
    };
    // The batch, as NDJSON in chunks of 100 every 20 ms: it is still arriving at the fault.
    let batch_request = {
        let (http, url) = (m.http.clone(), format!("{}/api/batches?function={name}", m.base));
        tokio::spawn(async move {
            let body = futures_util::stream::unfold(INVOKES, |n| async move {
                if n >= INVOKES + ITEMS {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                let chunk: String = (n..n + 100).map(|i| format!("\"item-{i}\"\n")).collect();
                Some((Ok::<_, std::io::Error>(chunk), n + 100))
            });
            let r = http
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .expect("the batch reaches management");
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        })
    };
    let filter = InvocationFilter { function: Some(name.clone()), status: None, limit: 10_000 };
    let finals = || async {
        let all = store.list_invocations(&filter).await.unwrap_or_default();
        all.iter().filter(|i| i.status.is_final()).count()
    };
    eventually(Duration::from_secs(60), "some progress", || async { (finals().await >= 500).then_some(()) }).await;
    // Take the pool queue's leader away while invokes and the batch still come in; meanwhile
    // a sampler notes when the count of final records changes.
    let before = finals().await;
    assert!(before < INVOKES + ITEMS, "{label}: the run ended before the fault");
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (store, filter, sampling) = (store.clone(), filter.clone(), sampling.clone());
        tokio::spawn(async move {
            // The longest time without a new final record while some were still to come.
            let (mut last, mut since, mut stall) = (0, Instant::now(), Duration::ZERO);
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let all = store.list_invocations(&filter).await.unwrap_or_default();
                let now = all.iter().filter(|i| i.status.is_final()).count();
                if now != last || now >= INVOKES + ITEMS {
                    stall = stall.max(since.elapsed());
                    (last, since) = (now, Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stall.max(since.elapsed())
        })
    };
    let lost_at = Instant::now();
    let lose = match loss {
        NodeLoss::StopApp => "stop-app",
        NodeLoss::Kill => "kill",
    };
    if let Err(e) = ask_cluster(&[lose, &leader]).await {
        panic!("{label}: scripts/cluster {lose} {leader} failed: {e}");
    }
    // Which node leads next, as the cluster reports it while the node is away (informative
    // only: rabbitmqctl takes seconds on a busy machine, and the nodes may name no leader, or
    // the lost one, for a while).
    let asking = {
        let (queue, leader) = (queue.clone(), leader.clone());
        tokio::spawn(async move {
            loop {
                if let Some(l) = ask_cluster(&["leader", &queue]).await.ok().filter(|l| *l != leader) {
                    return (l, lost_at.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // The node stays away 10 s, then comes back.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(lost_at.elapsed())).await;
    let clients = on_leader.lines().count();
    let seen = match asking.is_finished() {
        true => asking.await.map(|(l, after)| format!("node {l} leads, seen {} ms later", after.as_millis())).unwrap(),
        false => {
            asking.abort();
            "no other leader reported yet".to_string()
        }
    };
    println!("{label}: node {leader} ({clients} connections) lost after {before} final; {seen}");
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let stall = sampler.await.unwrap();
    let back = match loss {
        NodeLoss::StopApp => "start-app",
        NodeLoss::Kill => "boot",
    };
    if let Err(e) = ask_cluster(&[back, &leader]).await {
        panic!("{label}: scripts/cluster {back} {leader} failed: {e}");
    }
    invoker.await.unwrap();
    let (batch_status, batch) = batch_request.await.unwrap();
    let (answered, refused) = answered.lock().unwrap().clone();
    println!(
        "{label}: node {leader} back; longest stretch without a final record while it was away: {} ms; \
         invokes answered 202: {}, refused: {refused}; batch answered {batch_status}",
        stall.as_millis(),
        answered.len()
    );
    assert_eq!(batch_status, 201, "the batch is accepted whole: {batch}");
    let batch_id: Uuid = batch["id"].as_str().unwrap().parse().unwrap();

    // Everything final, the batch done (within the test's time, so that a stall is described).
    let deadline = Instant::now() + Duration::from_secs(150);
    let records = loop {
        let records = store.list_invocations(&filter).await.unwrap_or_default();
        let b = store.get_batch(batch_id).await.ok().flatten();
        let done =
            records.iter().all(|r| r.status.is_final()) && b.map(|b| b.state == BatchState::Done).unwrap_or(false);
        if done && records.len() >= answered.len() + ITEMS {
            break records;
        }
        if Instant::now() >= deadline {
            // What is stuck, and where the broker holds messages.
            let mut open: HashMap<String, usize> = HashMap::new();
            for r in records.iter().filter(|r| !r.status.is_final()) {
                *open.entry(format!("{} after {} attempts", r.status, r.attempts)).or_default() += 1;
            }
            let queues = cluster(&[
                "ctl",
                "1",
                "-q",
                "list_queues",
                "name",
                "type",
                "messages",
                "messages_ready",
                "messages_unacknowledged",
            ]);
            let queues: Vec<&str> = queues.lines().filter(|l| l.contains(&pool)).collect();
            panic!(
                "{label}: after 150 s, {} of {} records final; open: {open:?}; batch: {:?}; queues: {queues:#?}",
                records.iter().filter(|r| r.status.is_final()).count(),
                records.len(),
                store.get_batch(batch_id).await.ok().flatten().map(|b| (b.state, b.counts)),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let distinct: HashSet<Uuid> = records.iter().map(|r| r.id).collect();
    let (mut succeeded, mut dead, mut retried, mut not_queued) = (0, 0, 0, 0);
    let mut dead_ids = HashSet::new();
    for r in &records {
        let input = String::from_utf8(r.payload.clone()).unwrap();
        let n: usize = input.chars().filter(char::is_ascii_digit).collect::<String>().parse().unwrap();
        if let Some(sent) = answered.get(&r.id) {
            assert_eq!(sent, &input, "{label}: an answered invoke keeps its own input");
        } else if r.status == Status::Failed && r.error.as_deref().unwrap_or("").starts_with("not queued") {
            // An invoke refused (not 202) during the failover, recorded as not queued.
            not_queued += 1;
            continue;
        } else {
            assert!(n >= INVOKES || refused > 0, "{label}: a record nobody was answered about: {r:?}");
        }
        if n.is_multiple_of(10) {
            assert_eq!(r.status, Status::Dead, "{label}: item-{n} fails every attempt: {r:?}");
            assert_eq!(r.attempts, 3, "{label}: item-{n} is tried 3 times: {r:?}");
            dead += 1;
            dead_ids.insert(r.id);
        } else {
            assert_eq!(r.status, Status::Succeeded, "{label}: item-{n} succeeds: {r:?}");
            assert_eq!(r.result.as_deref(), Some(input.as_bytes()), "{label}: item-{n} has its own result");
            if n % 10 == 1 {
                assert!(r.attempts >= 2, "{label}: item-{n} failed its first attempt: {r:?}");
                retried += 1;
            }
            succeeded += 1;
        }
    }
    let dead_letters = t.dead_count(&pool).await.unwrap();
    // Quorum queues dead-letter at least once: a node lost between a dead-lettering and its
    // settlement may leave a second copy. Every dead invocation must have one, and nothing else.
    let (_, listed) = m.get(&format!("/api/dead-letters?pool={pool}&limit=1000")).await;
    let lettered: HashSet<Uuid> =
        listed["items"].as_array().unwrap().iter().filter_map(|d| d["id"].as_str()?.parse().ok()).collect();
    println!(
        "{label}: records {} (distinct {}), succeeded {succeeded} ({retried} after a retry), dead {dead}, \
         not queued {not_queued}, dead letters in the queue {dead_letters} ({} invocations)",
        records.len(),
        distinct.len(),
        lettered.len()
    );
    assert_eq!(distinct.len(), records.len(), "{label}: no duplicate records");
    assert!(answered.keys().all(|id| distinct.contains(id)), "{label}: every invoke answered 202 has its record");
    let items = records.iter().filter(|r| !answered.contains_key(&r.id)).count() - not_queued;
    assert!(items >= ITEMS, "{label}: every batch item has its record ({items})");
    assert_eq!(
        lettered, dead_ids,
        "{label}: every dead invocation's message, and only theirs, is in the dead-letter queue"
    );
    assert!(dead_letters >= dead as u64, "{label}: {dead_letters} dead letters for {dead} dead invocations");
    let b = store.get_batch(batch_id).await.unwrap().unwrap();
    assert_eq!(b.total, ITEMS as i64, "{label}: the batch holds all its items: {:?}", b.counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_leader_stopped_mid_run_loses_nothing() {
    quorum_failover(NodeLoss::StopApp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_leader_killed_mid_run_loses_nothing() {
    quorum_failover(NodeLoss::Kill).await;
}
