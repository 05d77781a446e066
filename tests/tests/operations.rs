//! Day-2 operations through the API and the CLI: rolling a function back to an earlier version,
//! and deleting one, refused while anything of it is open.

use warren_tests::*;

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
    let v = m.publish_dir(&version(3)).await;
    assert_eq!(v["version"], 3, "{v}");
    assert_eq!(invoke().await, ("version 3".to_string(), 3));
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
    eventually(std::time::Duration::from_secs(30), "the keyed invocation to end", || async {
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
