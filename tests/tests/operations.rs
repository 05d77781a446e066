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
