//! Day-2 operations through the API and the CLI: rolling a function back to an earlier version,
//! deleting one (refused while anything of it is open), idempotency keys, pausing and resuming.

use std::time::Duration;

use warren_tests::*;
use warren_transport::amqp::AmqpTransport;
use warren_transport::Transport;

/// Async invokes of `name` (inputs `tag0`, `tag1`, ...) until one is set aside in its hold
/// (those before it may have run: a worker reads a pause within a second). Their ids; the last
/// one is held.
async fn probe_until_held(m: &Management, name: &str, broker: &AmqpTransport, tag: &str) -> Vec<String> {
    let held = warren_wire::topology::held_pool(name);
    let depth = broker.queue_stats(&held).await.map(|s| s.messages).unwrap_or(0);
    let (mut probes, from) = (Vec::new(), std::time::Instant::now());
    loop {
        let (status, v) = m.invoke(name, "async", format!("{tag}{}", probes.len()).as_bytes()).await;
        assert_eq!(status, 202, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        probes.push(id.clone());
        let held_it = eventually(Duration::from_secs(30), "the probe to run or be set aside", || async {
            if broker.queue_stats(&held).await.map(|s| s.messages).unwrap_or(0) > depth {
                return Some(true);
            }
            let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
            (v["status"] == "succeeded").then_some(false)
        })
        .await;
        if held_it {
            println!("probe {} was set aside, {:?} after the first", probes.len(), from.elapsed());
            return probes;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_rolls_back_to_an_earlier_version_and_is_deleted_once_nothing_is_open() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("p"), unique("rb"));
    let m = Management::start(&pg_url()).await;
    let version = |n: u32| {
        let dir = tmp.path().join(format!("v{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest =
            format!("name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n");
        function_dir(&dir, &manifest, &[("run.sh", &format!("printf 'version {n}'\n"))])
    };
    m.publish_dir(&version(1)).await;
    m.publish_dir(&version(2)).await;
    let _w = start_worker(&pg_url(), &pool, 2, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;
    let invoke = || async {
        let r = m.http.post(format!("{}/api/functions/{name}/invoke", m.base)).send().await.unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["status"], "succeeded", "{v}");
        (v["result"].as_str().unwrap().to_string(), v["version"].as_i64().unwrap())
    };
    assert_eq!(invoke().await, ("version 2".to_string(), 2));

    // Rollback with the CLI: the next invoke runs version 1, and the function says so.
    let cli = |args: &[&str]| m.cli().args(args).output().unwrap();
    let out = cli(&["functions", "activate", &name, "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{name}: version 1 is active"));
    assert_eq!(invoke().await, ("version 1".to_string(), 1));
    let (_, f) = m.get(&format!("/api/functions/{name}")).await;
    assert_eq!(f["function"]["active_version"], 1);
    // A version that does not exist: a clear error, and nothing changes.
    let out = cli(&["functions", "activate", &name, "7"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no version 7") && err.contains("404"), "{err}");
    let r = m.http.post(format!("{}/api/functions/{name}/activate", m.base)).body("{\"version\": \"two\"}");
    let r = r.header("content-type", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(invoke().await, ("version 1".to_string(), 1));

    // A draft: stored as version 3 without becoming active; an invoke naming it runs it (and
    // names no idempotency key with it), the others still run version 1; its package reads back.
    let draft = warren_wire::package::pack_dir(&version(3)).unwrap();
    let r = m.http.post(format!("{}/api/functions?activate=false", m.base)).body(draft.clone()).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["version"], 3);
    assert_eq!(invoke().await, ("version 1".to_string(), 1));
    let r = m.http.post(format!("{}/api/functions/{name}/invoke?version=3", m.base)).send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!((v["result"].as_str(), v["version"].as_i64()), (Some("version 3"), Some(3)), "{v}");
    let r = m.http.post(format!("{}/api/functions/{name}/invoke?version=3", m.base)).header("idempotency-key", "k1");
    assert_eq!(r.send().await.unwrap().status(), 400);
    let r = m.http.post(format!("{}/api/functions/{name}/invoke?version=8", m.base)).send().await.unwrap();
    assert_eq!(r.status(), 404, "no version 8");
    let r = m.http.get(format!("{}/api/functions/{name}/versions/3/package", m.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-disposition"], format!("attachment; filename=\"{name}-v3.tar.gz\""));
    assert_eq!(r.bytes().await.unwrap(), draft, "the package as published");
    let r = m.http.get(format!("{}/api/functions/{name}/versions/8/package", m.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let (_, f) = m.get(&format!("/api/functions/{name}")).await;
    assert_eq!(f["function"]["active_version"], 1, "{f}");

    // Delete: refused while an invocation is open (queued on a pool nobody consumes).
    let idle = unique("idle");
    let dir = tmp.path().join("idle");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = format!("name = \"{idle}\"\nruntime = \"echo\"\npool = \"{}\"\n", unique("nobody"));
    m.publish_dir(&function_dir(&dir, &manifest, &[])).await;
    let r = m.http.post(format!("{}/api/functions/{idle}/invoke?mode=async", m.base)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let r = m.http.delete(format!("{}/api/functions/{idle}", m.base)).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("1 open invocation"), "{v}");
    assert_eq!(m.get(&format!("/api/functions/{idle}")).await.0, 200, "a refused delete removes nothing");

    // And while it consumes a source queue, saying which.
    let sourced = unique("src");
    let queue = unique("q");
    let dir = tmp.path().join("sourced");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest =
        format!("name = \"{sourced}\"\nruntime = \"echo\"\npool = \"{pool}\"\n\n[source]\nqueue = \"{queue}\"\n");
    m.publish_dir(&function_dir(&dir, &manifest, &[])).await;
    let out = cli(&["functions", "delete", &sourced]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&queue) && err.contains("409"), "{err}");

    // With every invocation final, the delete goes through; its history stays.
    let (_, listed) = m.get(&format!("/api/invocations?function={name}")).await;
    let first = listed.as_array().unwrap()[0]["id"].as_str().unwrap().to_string();
    let out = cli(&["functions", "delete", &name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(m.get(&format!("/api/functions/{name}")).await.0, 404);
    let r = m.http.post(format!("{}/api/functions/{name}/invoke", m.base)).send().await.unwrap();
    assert_eq!(r.status(), 404, "a deleted function is not invoked");
    let (status, inv) = m.get(&format!("/api/invocations/{first}")).await;
    assert_eq!((status, inv["status"].as_str()), (200, Some("succeeded")), "{inv}");
    let out = cli(&["functions", "delete", &name]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("404"));
    // Published again, it numbers on after its last version (the worker still holds version 1
    // of the deleted function: a reused number would run that).
    let v = m.publish_dir(&version(4)).await;
    assert_eq!(v["version"], 4, "{v}");
    assert_eq!(invoke().await, ("version 4".to_string(), 4));
}

/// `Idempotency-Key`: a repeat with the same key and input gets the first invocation (its id,
/// and its outcome when waiting), through any management instance, and the function runs
/// once; another input under the key is a 409; a malformed key a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_runs_an_invoke_once_across_instances() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("p"), unique("idem"));
    let a = Management::start(&pg_url()).await;
    let b = Management::start(&pg_url()).await;
    // Each run appends a line to a file: the count of lines is the count of runs.
    let runs = tmp.path().join("runs");
    let manifest =
        format!("name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n");
    let script = format!("input=$(cat)\necho \"$input\" >> '{}'\nprintf 'ran %s' \"$input\"\n", runs.display());
    a.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.sh", &script)])).await;
    let _w = start_worker(&pg_url(), &pool, 2, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;
    let invoke = |m: &Management, key: &str, mode: &str, body: &str| {
        let req = m.http.post(format!("{}/api/functions/{name}/invoke?mode={mode}", m.base));
        req.header("Idempotency-Key", key).body(body.to_string()).send()
    };
    let replayed =
        |r: &reqwest::Response| r.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_string());

    // Synchronous: the first runs; the repeat, through the other instance, gets its outcome.
    let key = unique("key-");
    let first = invoke(&a, &key, "sync", "one").await.unwrap();
    assert_eq!((first.status().as_u16(), replayed(&first)), (200, None));
    let first: serde_json::Value = first.json().await.unwrap();
    assert_eq!(first["result"], "ran one", "{first}");
    let again = invoke(&b, &key, "sync", "one").await.unwrap();
    assert_eq!((again.status().as_u16(), replayed(&again).as_deref()), (200, Some("true")));
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!((&again["id"], &again["result"]), (&first["id"], &first["result"]), "{again}");
    // Another input under the same key: refused, saying why.
    let other = invoke(&a, &key, "sync", "two").await.unwrap();
    assert_eq!(other.status(), 409);
    let other: serde_json::Value = other.json().await.unwrap();
    assert!(other["error"]["message"].as_str().unwrap().contains("another input"), "{other}");

    // Asynchronous: the repeat answers the first id; repeats at once, from both instances.
    let key = unique("key-");
    let (x, y, z) = tokio::join!(invoke(&a, &key, "async", "three"), invoke(&b, &key, "async", "three"), async {
        invoke(&a, &key, "async", "three").await
    });
    let mut ids = Vec::new();
    let mut repeats = 0;
    for r in [x.unwrap(), y.unwrap(), z.unwrap()] {
        assert_eq!(r.status(), 202);
        repeats += replayed(&r).is_some() as usize;
        let v: serde_json::Value = r.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "one invocation for one key: {ids:?}");
    assert_eq!(repeats, 2, "two of the three are repeats");
    let id = ids[0].clone();
    eventually(Duration::from_secs(30), "the keyed invocation to end", || async {
        (a.get(&format!("/api/invocations/{id}")).await.1["status"] == "succeeded").then_some(())
    })
    .await;
    // A waiting repeat of an ended async invoke gets its outcome.
    let late = invoke(&b, &key, "sync", "three").await.unwrap();
    assert_eq!(late.status(), 200);
    let late: serde_json::Value = late.json().await.unwrap();
    assert_eq!((late["id"].as_str(), &late["result"]), (Some(id.as_str()), &serde_json::json!("ran three")));

    // Each keyed input ran once, and only the keyed ones ran.
    let ran = std::fs::read_to_string(&runs).unwrap();
    let mut lines: Vec<&str> = ran.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["one", "three"], "each keyed invoke ran once");
    let (_, listed) = a.get(&format!("/api/invocations?function={name}")).await;
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    // A key that is not printable ASCII, or too long: 400, nothing runs.
    for bad in ["", &"k".repeat(256)] {
        let r = invoke(&a, bad, "async", "four").await.unwrap();
        assert_eq!(r.status(), 400, "key {bad:?}");
    }
    // The CLI sends it too.
    let key = unique("key-");
    for _ in 0..2 {
        let out = a.cli().args(["invoke", &name, "--data", "five", "--idempotency-key", &key]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("ran five"));
    }
    let ran = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(ran.lines().filter(|l| *l == "five").count(), 1, "the CLI's repeat did not run again");
}

/// Pause and resume: while a function is paused its invocations are accepted and set aside in
/// its hold, none runs; resumed, every one runs; a pause for a span ends by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_function_holds_its_invocations_until_it_resumes() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("p"), unique("pz"));
    let m = Management::start(&pg_url()).await;
    // Each run appends its input to a file: the file is what ran, in order.
    let runs = tmp.path().join("runs");
    let manifest =
        format!("name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n");
    let script = format!("input=$(cat)\necho \"$input\" >> '{}'\nprintf 'ran %s' \"$input\"\n", runs.display());
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.sh", &script)])).await;
    let _w = start_worker(&pg_url(), &pool, 1, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;
    let ran = || std::fs::read_to_string(&runs).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>();
    let invoke_async = |input: String| {
        let m = &m;
        let name = &name;
        async move {
            let (status, v) = m.invoke(name, "async", input.as_bytes()).await;
            assert_eq!(status, 202, "{v}");
            v["id"].as_str().unwrap().to_string()
        }
    };
    let broker = AmqpTransport::connect(&amqp_url(), "warren-tests").await.unwrap();
    let held = warren_wire::topology::held_pool(&name);
    let held_now = || async { broker.queue_stats(&held).await.map(|s| s.messages).unwrap_or(0) };

    let cli = |args: &[&str]| m.cli().args(args).output().unwrap();
    let out = cli(&["functions", "pause", &name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is paused"));
    let (_, f) = m.get(&format!("/api/functions/{name}")).await;
    assert!(f["function"]["paused_ms"].is_i64(), "{f}");
    let probes = probe_until_held(&m, &name, &broker, "probe").await;
    let before = ran();
    let mut ids = Vec::new();
    for i in 1..=8 {
        ids.push(invoke_async(format!("item{i}")).await);
    }
    eventually(Duration::from_secs(30), "9 invocations set aside", || async { (held_now().await == 9).then_some(()) })
        .await;
    assert_eq!(ran(), before, "nothing ran while paused");
    for id in &ids {
        let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
        assert_eq!(v["status"], "queued", "{v}");
    }

    // Resumed: everything held runs, once.
    let r = m.http.post(format!("{}/api/functions/{name}/resume", m.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = m.http.post(format!("{}/api/functions/{name}/resume", m.base)).send().await.unwrap();
    assert_eq!(r.status(), 409, "not paused any more");
    for id in ids.iter().chain(probes.last()) {
        m.wait_status(id, "succeeded").await;
    }
    let after = ran();
    let mut resumed: Vec<String> = after[before.len()..].to_vec();
    println!("ran after the resume, in this order: {resumed:?}");
    resumed.sort();
    let mut want: Vec<String> = (1..=8).map(|i| format!("item{i}")).collect();
    want.push(format!("probe{}", probes.len() - 1));
    want.sort();
    assert_eq!(resumed, want, "each held invocation ran once");
    eventually(Duration::from_secs(30), "the hold to be empty", || async { (held_now().await == 0).then_some(()) })
        .await;

    // A pause for a span ends by itself, and what it held runs after its end.
    let out = cli(&["functions", "pause", &name, "--for", "3s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, f) = m.get(&format!("/api/functions/{name}")).await;
    let resume_at = f["function"]["resume_at_ms"].as_i64().expect("a resume time");
    let probes = probe_until_held(&m, &name, &broker, "later").await;
    let v = m.wait_status(probes.last().unwrap(), "succeeded").await;
    let started = v["started_ms"].as_i64().unwrap();
    println!("paused until {resume_at}; the held invocation started {} ms after", started - resume_at);
    assert!(started >= resume_at, "held until the pause ended");
    let (_, f) = m.get(&format!("/api/functions/{name}")).await;
    assert!(f["function"]["paused_ms"].is_null(), "resumed by itself: {f}");

    // Clear refusals.
    let r = m.http.post(format!("{}/api/functions/{}/pause", m.base, unique("nope"))).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r =
        m.http.post(format!("{}/api/functions/{name}/pause", m.base)).body("{\"for_secs\": 0}").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = m.http.post(format!("{}/api/functions/{name}/pause", m.base)).body("{\"hours\": 2}").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let (_, f) = m.get(&format!("/api/functions/{name}")).await;
    assert!(f["function"]["paused_ms"].is_null(), "a refused pause changes nothing: {f}");
}

/// Cancel: a running invocation's process tree is killed and it stays `cancelled` (its run's
/// outcome is not stored over it); a queued one is never run; a final one is a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_invocation_never_runs_or_is_stopped_where_it_runs() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let marks = tmp.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let (pool, name) = (unique("p"), unique("cancel"));
    let m = Management::start(&pg_url()).await;
    // Each run leaves its pid and its child's; "quick" answers at once, anything else sleeps.
    let script = format!(
        "input=$(cat)\n[ \"$input\" = quick ] && {{ printf quick; exit 0; }}\nm={}/$WARREN_INVOCATION_ID\n\
         echo $$ > $m.pid\nsleep 60 &\necho $! > $m.child\necho started >&2\nwait\nprintf finished\n",
        marks.display()
    );
    let manifest = format!("name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\ntimeout_secs = 120\n");
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.sh", &script)])).await;
    let _w = start_worker(&pg_url(), &pool, 1, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    // A runs (the only run slot); B waits behind it.
    let (status, a) = m.invoke(&name, "async", b"slow").await;
    assert_eq!(status, 202, "{a}");
    let a = a["id"].as_str().unwrap().to_string();
    let child_file = marks.join(format!("{a}.child"));
    eventually(Duration::from_secs(30), "A to start its child", || async { child_file.exists().then_some(()) }).await;
    let child: i32 = eventually(Duration::from_secs(5), "the child's pid", || async {
        std::fs::read_to_string(&child_file).ok().and_then(|s| s.trim().parse().ok())
    })
    .await;
    let (status, b) = m.invoke(&name, "async", b"slow too").await;
    assert_eq!(status, 202, "{b}");
    let b = b["id"].as_str().unwrap().to_string();

    // B, queued: cancelled, it is never run.
    let r = m.http.post(format!("{}/api/invocations/{b}/cancel", m.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!((v["status"].as_str(), v["workers_told"].as_u64()), (Some("cancelled"), Some(1)), "{v}");
    // A, running: cancelled with the CLI, its process tree is killed.
    let out = m.cli().args(["cancel", &a]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{a} is cancelled (1 workers told)"));
    eventually(Duration::from_secs(10), "A's child process to be killed", || async {
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        (unsafe { libc::kill(child, 0) } != 0).then_some(())
    })
    .await;
    // C, behind both in the queue, runs: B's delivery came before it and did not run.
    let (status, c) = m.invoke(&name, "sync", b"quick").await;
    assert_eq!((status, c["result"].as_str()), (200, Some("quick")), "{c}");
    assert!(!marks.join(format!("{b}.pid")).exists(), "the cancelled queued invocation ran");
    for id in [&a, &b] {
        let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
        assert_eq!(v["status"], "cancelled", "{v}");
        assert_eq!(v["error"], "cancelled before it ended", "{v}");
    }

    // Final ones: 409 saying how they ended; unknown: 404.
    let c = c["id"].as_str().unwrap();
    for (id, how) in [(a.as_str(), "cancelled already"), (c, "succeeded already")] {
        let r = m.http.post(format!("{}/api/invocations/{id}/cancel", m.base)).send().await.unwrap();
        assert_eq!(r.status(), 409);
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains(how), "{v}");
    }
    let r = m.http.post(format!("{}/api/invocations/{}/cancel", m.base, uuid::Uuid::now_v7())).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // A batch cancelled with running=true: its running item is stopped too, the rest never run.
    let r = m.http.post(format!("{}/api/batches?function={name}", m.base)).body("\"one\"\n\"two\"\n\"three\"\n");
    let batch: serde_json::Value = r.send().await.unwrap().json().await.unwrap();
    let batch = batch["id"].as_str().expect("a batch id").to_string();
    let running = eventually(Duration::from_secs(30), "an item of the batch to run", || async {
        let (_, page) = m.get(&format!("/api/batches/{batch}/results")).await;
        let items = page["items"].as_array().or(page.as_array()).cloned().unwrap_or_default();
        let id = items.iter().find(|i| i["status"] == "running")?["id"].as_str()?.to_string();
        let child = std::fs::read_to_string(marks.join(format!("{id}.child"))).ok()?.trim().parse::<i32>().ok()?;
        Some((id, child))
    })
    .await;
    let r = m.http.post(format!("{}/api/batches/{batch}/cancel?running=true", m.base)).send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!((v["state"].as_str(), v["stopped"].as_u64()), (Some("cancelled"), Some(1)), "{v}");
    assert_eq!(v["counts"]["cancelled"], 3, "{v}");
    eventually(Duration::from_secs(10), "the running item's child to be killed", || async {
        // SAFETY: as above.
        (unsafe { libc::kill(running.1, 0) } != 0).then_some(())
    })
    .await;
    let (status, c) = m.invoke(&name, "sync", b"quick").await;
    assert_eq!((status, c["result"].as_str()), (200, Some("quick")), "{c}");
    let ran = std::fs::read_dir(&marks)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("pid".as_ref()))
        .count();
    assert_eq!(ran, 2, "A and the batch's first item ran; nothing else did");
    let (_, inv) = m.get(&format!("/api/invocations/{}", running.0)).await;
    assert_eq!(inv["status"], "cancelled", "{inv}");
}

/// Scheduled invocations: `scheduled` until their time, held by the broker's hop queues (no
/// worker sleeps on them), run at their time, cancellable meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_invocation_runs_at_its_time_and_can_be_cancelled_before() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let marks = tmp.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let (pool, name) = (unique("p"), unique("later"));
    let m = Management::start(&pg_url()).await;
    // Each run leaves a mark named by its invocation, holding when it started (ms).
    let script = format!("date +%s%3N > {}/$WARREN_INVOCATION_ID\ncat\n", marks.display());
    let manifest =
        format!("name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n");
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.sh", &script)])).await;
    let _w = start_worker(&pg_url(), &pool, 2, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;
    let post = |query: String, body: &'static str| {
        let m = &m;
        let name = &name;
        async move {
            let r =
                m.http.post(format!("{}/api/functions/{name}/invoke?{query}", m.base)).body(body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };

    // With the CLI, 3 s from now: scheduled until then, run at its time, not before.
    let out = m.cli().args(["invoke", &name, "--in", "3s", "--data", "later"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
    assert_eq!(v["status"], "scheduled", "{v}");
    let run_at = v["run_at_ms"].as_i64().expect("its time");
    let done = m.wait_status(&id, "succeeded").await;
    assert_eq!(done["result"], "later");
    assert_eq!(done["run_at_ms"], run_at);
    let started: i64 = std::fs::read_to_string(marks.join(&id)).unwrap().trim().parse().unwrap();
    assert!(started >= run_at - warren_wire::topology::SCHEDULE_EARLY_MS, "ran {} ms early", run_at - started);
    println!("ran {} ms after its time", started - run_at);

    // Through the API at a time (RFC 3339), cancelled before it: it never runs; one after it does.
    let at = warren_wire::schedule::rfc3339(warren_wire::time::now_ms() + 1500);
    let (status, x) = post(format!("mode=async&run_at={at}"), "x").await;
    assert_eq!((status, x["status"].as_str()), (202, Some("scheduled")), "{x}");
    let x = x["id"].as_str().unwrap().to_string();
    let r = m.http.post(format!("{}/api/invocations/{x}/cancel", m.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, y) = post("mode=async&delay_ms=2500".into(), "y").await;
    assert_eq!(status, 202, "{y}");
    let y = y["id"].as_str().unwrap().to_string();
    m.wait_status(&y, "succeeded").await;
    assert!(!marks.join(&x).exists(), "the cancelled scheduled invocation ran");
    assert_eq!(m.get(&format!("/api/invocations/{x}")).await.1["status"], "cancelled");

    // Refused: a scheduled sync invoke, both delay_ms and run_at, a time that is not one, too
    // far, before 1970 (the most negative time would overflow a hop's arithmetic).
    let refused = [
        "mode=sync&delay_ms=1000",
        "delay_ms=1&run_at=1",
        "run_at=tomorrow",
        "delay_ms=8640000000",
        "run_at=-1",
        "run_at=-9223372036854775808",
    ];
    for query in refused {
        let (status, v) = post(query.into(), "z").await;
        assert_eq!(status, 400, "{query}: {v}");
    }
}

/// `max_concurrency`: with three workers of eight run slots each, no more than the limit of a
/// function's invocations run at once, ever (as the function itself records its runs), and
/// every one of them still runs: those over the limit wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_across_workers_and_nothing_fails_for_it() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let spans = tmp.path().join("spans");
    let (pool, name) = (unique("p"), unique("limited"));
    let m = Management::start(&pg_url()).await;
    // Each run appends "start end" (ns) to one file: short appends are atomic.
    let script = format!("s=$(date +%s%N)\nsleep 0.3\necho \"$s $(date +%s%N)\" >> {}\ncat\n", spans.display());
    let version = |limit: u32| {
        let dir = tmp.path().join(format!("limit{limit}"));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = format!(
            "name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\nmax_concurrency = {limit}\n"
        );
        function_dir(&dir, &manifest, &[("run.sh", &script)])
    };
    let workers: Vec<_> =
        (0..3).map(|i| start_worker(&pg_url(), &pool, 8, &tmp.path().join(format!("cache{i}")))).collect();
    wait_consumers(&pool, 3).await;

    for (limit, n) in [(2usize, 16usize), (1, 6)] {
        m.publish_dir(&version(limit as u32)).await;
        let _ = std::fs::remove_file(&spans);
        let body: String = (0..n).map(|i| format!("{i}\n")).collect();
        let r = m.http.post(format!("{}/api/functions/{name}/invocations", m.base)).body(body).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let v: serde_json::Value = r.json().await.unwrap();
        for id in v["ids"].as_array().unwrap() {
            m.wait_status(id.as_str().unwrap(), "succeeded").await;
        }
        // The most runs at once, from the runs' own start and end times.
        let mut events: Vec<(i64, i32)> = std::fs::read_to_string(&spans)
            .unwrap()
            .lines()
            .flat_map(|l| {
                let (s, e) = l.split_once(' ').unwrap();
                [(s.parse::<i64>().unwrap(), 1), (e.parse::<i64>().unwrap(), -1)]
            })
            .collect();
        assert_eq!(events.len(), 2 * n, "every invocation ran once");
        events.sort_by_key(|&(t, d)| (t, d)); // an end before a start at the same instant
        let (mut now, mut most) = (0, 0);
        for (_, d) in events {
            now += d;
            most = most.max(now);
        }
        println!("limit {limit}: at most {most} of {n} ran at once on 3 workers x 8 slots");
        assert!(most <= limit as i32, "{most} ran at once over a limit of {limit}");
        assert_eq!(most, limit as i32, "the limit is also reached: they did run side by side");
    }
    drop(workers);
}

/// Per-input idempotency keys on a bulk invoke (`?keyed=true`): a repeated key with its input
/// gets the first invocation's id and runs nothing; a key reused with another input refuses the
/// whole request and takes no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_bulk_invoke_runs_each_key_once() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("p"), unique("keyed"));
    let m = Management::start(&pg_url()).await;
    let manifest = format!("name = \"{name}\"\nruntime = \"echo\"\npool = \"{pool}\"\n");
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[])).await;
    let _w = start_worker(&pg_url(), &pool, 4, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;
    let bulk = |body: &'static str| {
        let m = &m;
        let name = &name;
        async move {
            let r = m.http.post(format!("{}/api/functions/{name}/invocations?keyed=true", m.base)).body(body);
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect()
    };

    let first = "{\"key\": \"k1\", \"input\": 1}\n{\"key\": \"k2\", \"input\": {\"n\": 2}}\n{\"key\": \"k3\", \"input\": \"three\"}\n";
    let (status, v) = bulk(first).await;
    assert_eq!((status, v["accepted"].as_u64(), v["repeated"].as_u64()), (202, Some(3), Some(0)), "{v}");
    let made = ids(&v);
    // The same request again: the same ids, nothing new.
    let (status, v) = bulk(first).await;
    assert_eq!((status, v["repeated"].as_u64()), (202, Some(3)), "{v}");
    assert_eq!(ids(&v), made);
    // A repeat beside a new key: the repeat's first id, in its place.
    let (status, v) = bulk("{\"key\": \"k4\", \"input\": 4}\n{\"key\": \"k1\", \"input\": 1}\n").await;
    assert_eq!((status, v["repeated"].as_u64()), (202, Some(1)), "{v}");
    let again = ids(&v);
    assert_eq!(again[1], made[0]);
    // A key with another input: 409 naming it, and the new key beside it is not taken.
    let (status, v) = bulk("{\"key\": \"k5\", \"input\": 5}\n{\"key\": \"k2\", \"input\": 22}\n").await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("input 2"), "{v}");
    let (status, v) = bulk("{\"key\": \"k5\", \"input\": 55}\n").await;
    assert_eq!((status, v["repeated"].as_u64()), (202, Some(0)), "k5 was freed: {v}");
    // Malformed: a line without a key, a key twice.
    assert_eq!(bulk("{\"input\": 1}\n").await.0, 400);
    assert_eq!(bulk("{\"key\": \"k9\", \"input\": 1}\n{\"key\": \"k9\", \"input\": 1}\n").await.0, 400);

    // With the CLI: a file of keyed lines, twice: the same ids, and nothing runs again.
    let file = tmp.path().join("keyed.ndjson");
    std::fs::write(&file, "{\"key\": \"k1\", \"input\": 1}\n{\"key\": \"k6\", \"input\": 6}\n").unwrap();
    let run = || {
        let out = m.cli().args(["invoke", &name, "--each-line", file.to_str().unwrap(), "--keyed"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect::<Vec<_>>()
    };
    let by_cli = run();
    assert_eq!(by_cli.len(), 2);
    assert_eq!(by_cli[0], made[0], "k1 was taken by the first request");
    assert_eq!(run(), by_cli, "the same ids again");

    // Each key ran once: 6 invocations (k1 to k6), each with its input.
    for id in made.iter().chain(&again).chain(&by_cli) {
        m.wait_status(id, "succeeded").await;
    }
    let (_, list) = m.get(&format!("/api/invocations?function={name}&limit=50")).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 6, "{list:?}");
    let (_, k2) = m.get(&format!("/api/invocations/{}", made[1])).await;
    assert_eq!(k2["result"], serde_json::json!({"n": 2}));
}

/// Per-item idempotency keys on a batch (`?keyed=true`): an item whose key was used with the
/// same input is not recorded again (whether the key came from a batch or a bulk invoke), and a
/// key used with another input stops the submission at that item, keeping those before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_batch_runs_each_key_once() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("p"), unique("kbatch"));
    let m = Management::start(&pg_url()).await;
    let manifest = format!("name = \"{name}\"\nruntime = \"echo\"\npool = \"{pool}\"\n");
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[])).await;
    let _w = start_worker(&pg_url(), &pool, 4, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;
    let submit = |body: &'static str| {
        let m = &m;
        let name = &name;
        async move {
            let r = m.http.post(format!("{}/api/batches?function={name}&keyed=true", m.base)).body(body);
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let item_ids = |batch: String| {
        let m = &m;
        async move {
            eventually(Duration::from_secs(30), "the batch to end", || async {
                let (_, b) = m.get(&format!("/api/batches/{batch}")).await;
                (b["state"] == "done").then_some(())
            })
            .await;
            let (_, page) = m.get(&format!("/api/batches/{batch}/results")).await;
            let items = page["items"].as_array().or(page.as_array()).cloned().unwrap();
            items.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        }
    };

    let (status, b1) = submit("{\"key\": \"k1\", \"input\": 1}\n{\"key\":\"k2\",\"input\": { \"n\" : 2 }}\n{\"key\": \"k3\", \"input\": \"three\"}\n").await;
    assert_eq!((status, b1["total"].as_i64(), b1["repeated"].as_i64()), (201, Some(3), Some(0)), "{b1}");
    let first = item_ids(b1["id"].as_str().unwrap().to_string()).await;

    // Again, with the CLI, as a JSON array beside a new key: only the new one is recorded.
    let file = tmp.path().join("again.json");
    std::fs::write(
        &file,
        r#"[{"key": "k2", "input": {"n": 2}}, {"key": "k3", "input": "three"}, {"key": "k4", "input": 4}]"#,
    )
    .unwrap();
    let out = m
        .cli()
        .args(["--json", "batch", "submit", file.to_str().unwrap(), "--function", &name, "--keyed", "--no-wait"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let b2: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((b2["total"].as_i64(), b2["repeated"].as_i64()), (Some(1), Some(2)), "{b2}");
    let second = item_ids(b2["id"].as_str().unwrap().to_string()).await;

    // A key of a batch item answers a keyed bulk invoke with that item's id.
    let r = m
        .http
        .post(format!("{}/api/functions/{name}/invocations?keyed=true", m.base))
        .body("{\"key\": \"k1\", \"input\": 1}\n");
    let v: serde_json::Value = r.send().await.unwrap().json().await.unwrap();
    assert_eq!(v["repeated"], 1, "{v}");
    assert!(first.contains(&v["ids"][0].as_str().unwrap().to_string()), "{v}");

    // k1 with another input stops the submission at item 2: k5 before it is kept, k6 after it
    // is neither recorded nor taken.
    let (status, v) =
        submit("{\"key\": \"k5\", \"input\": 5}\n{\"key\": \"k1\", \"input\": 111}\n{\"key\": \"k6\", \"input\": 6}\n")
            .await;
    assert_eq!((status, v["accepted"].as_i64(), v["repeated"].as_i64()), (409, Some(1), Some(0)), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("item 2 has the idempotency key \"k1\""), "{v}");
    let third = item_ids(v["batch"].as_str().unwrap().to_string()).await;
    assert_eq!(third.len(), 1);
    let (status, b4) = submit("{\"key\": \"k6\", \"input\": 66}\n").await;
    assert_eq!((status, b4["total"].as_i64(), b4["repeated"].as_i64()), (201, Some(1), Some(0)), "k6 was free: {b4}");
    let fourth = item_ids(b4["id"].as_str().unwrap().to_string()).await;
    // A keyed item without a key: 400 naming it.
    let (status, v) = submit("{\"key\": \"k7\", \"input\": 7}\n{\"input\": 8}\n").await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("line 2 is not {\"key\""), "{v}");

    // A keyed JSON array with a bad second item: 400 naming it, the first one submitted.
    let r = m
        .http
        .post(format!("{}/api/batches?function={name}&keyed=true", m.base))
        .header("content-type", "application/json")
        .body(r#"[{"key": "k8", "input": [8, "eight"]}, {"key": "k9"}]"#);
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 1, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("item 2 is not {\"key\""), "{v}");

    // Each key was recorded once: k1-k8, one invocation each (k7's and k8's, before the bad
    // items, included), and nothing else.
    let (_, list) = m.get(&format!("/api/invocations?function={name}&limit=50")).await;
    let list = list.as_array().unwrap();
    let mut results: Vec<String> = list.iter().map(|i| i["input"].to_string()).collect();
    results.sort();
    let mut want: Vec<String> =
        ["1", "{\"n\":2}", "\"three\"", "4", "5", "66", "7", "[8,\"eight\"]"].map(String::from).to_vec();
    want.sort();
    assert_eq!(results, want, "{list:?}");
    assert_eq!((first.len(), second.len(), fourth.len()), (3, 1, 1));
}
