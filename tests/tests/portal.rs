//! The portal in a real headless browser: Debian's chromium driven by playwright-core
//! (`tests/browser/portal.mjs`), against real `warren-management` and `warren-worker`
//! processes on the real RabbitMQ. The page publishes a package through its file input,
//! invokes the function with a payload and must show the result and the function's log lines;
//! a dead letter is replayed from the page. Screenshots of every page land in
//! `target/portal-screenshots/`.
//!
//! Needs `node`, `tests/browser/node_modules` (`npm ci --prefix tests/browser`) and chromium
//! (`apt-get install chromium`, or `WARREN_TEST_CHROMIUM=/path`): `scripts/test` installs the
//! last two. Without them the test fails, saying what is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use warren_tests::*;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// `target/portal-screenshots`, beside the binaries' profile folders.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>
    let target = exe.ancestors().nth(3).expect("target dir");
    target.join("portal-screenshots")
}

/// The browser, node and playwright-core, or a failure naming what is missing and how to get it.
fn browser_prerequisites() -> PathBuf {
    let root = workspace_root();
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the portal test needs Node.js (`node` on PATH): apt-get install nodejs ({:?})",
        node.err()
    );
    assert!(
        root.join("tests/browser/node_modules/playwright-core/package.json").exists(),
        "the portal test needs playwright-core in tests/browser/node_modules: run `npm ci --prefix tests/browser` \
         (scripts/test does it)"
    );
    let chromium = PathBuf::from(std::env::var("WARREN_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        chromium.exists(),
        "the portal test needs chromium at {}: apt-get install -y chromium (scripts/test does it), or set \
         WARREN_TEST_CHROMIUM",
        chromium.display()
    );
    chromium
}

/// A management and a worker on a SQLite store of their own (the pages list every function and
/// pool, and stay small this way), the worker serving a pool of its own: `(m, worker, pool)`.
async fn mesh_of_its_own(tmp: &Path, tag: &str) -> (Management, Proc, String) {
    let store = format!("sqlite://{}", tmp.join(format!("{tag}.db")).display());
    let pool = unique(tag);
    let m = Management::start(&store).await;
    let worker = start_worker(&store, &pool, 2, &tmp.join("cache"));
    wait_consumers(&pool, 1).await;
    (m, worker, pool)
}

/// Runs `tests/browser/SCRIPT` with `args` after the base URL and the screenshot folder, signed
/// in with the admin key; fails with its output (and where its screenshots are) unless it passed.
async fn run_browser_script(m: &Management, chromium: &Path, script: &str, args: &[&str]) {
    let shots = screenshot_dir();
    let mut cmd = Command::new("node");
    cmd.arg(workspace_root().join("tests/browser").join(script))
        .args([m.base.as_str(), &shots.display().to_string()])
        .args(args)
        .env("WARREN_CHROMIUM", chromium)
        .env("WARREN_API_KEY", &m.key);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "{script} failed ({}); screenshots (*failure.png) in {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status,
        shots.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_publishes_invokes_and_shows_result_and_logs_in_a_browser() {
    require_services();
    let chromium = browser_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let (m, _worker, pool) = mesh_of_its_own(tmp.path(), "portal").await;

    // The package the page publishes: a process function that logs a line and answers JSON.
    let name = unique("portal");
    let dir = function_dir(
        &tmp.path().join("src"),
        &format!("name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\ndescription = \"Echoes its input; logs it.\"\n"),
        &[(
            "run.sh",
            "input=$(cat)\necho \"portal-log: got $input\" >&2\nprintf '{\"echo\": %s, \"from\": \"portal-test\"}' \"$input\"\n",
        )],
    );
    let package = tmp.path().join(format!("{name}.tar.gz"));
    std::fs::write(&package, warren_wire::package::pack_dir(&dir).expect("pack")).unwrap();

    // A dead letter for the page to replay: a function that always fails, two attempts.
    let doomed = unique("doomed");
    let ddir = function_dir(
        &tmp.path().join("src"),
        &format!(
            "name = \"{doomed}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n\
             [retry]\nmax_attempts = 2\ninitial_delay_ms = 100\n"
        ),
        &[("run.sh", "echo 'cannot go on' >&2\nexit 3\n")],
    );
    assert_eq!(m.publish_dir(&ddir).await["version"], 1);
    let (status, accepted) = m.invoke(&doomed, "async", b"{}").await;
    assert_eq!(status, 202, "{accepted}");
    let dead_id = accepted["id"].as_str().expect("an id").to_string();
    eventually(Duration::from_secs(60), "the failing invocation to be dead", || {
        let (m, id) = (&m, &dead_id);
        async move { (m.get(&format!("/api/invocations/{id}")).await.1["status"] == "dead").then_some(()) }
    })
    .await;

    let shots = screenshot_dir();
    let package = package.display().to_string();
    run_browser_script(&m, &chromium, "portal.mjs", &[&package, &name, &dead_id]).await;

    // The function was rolled back to version 1, then deleted from the page; its history stays.
    assert_eq!(m.get(&format!("/api/functions/{name}")).await.0, 404, "deleted from the page");
    // What the page did is in the store: one invocation of the function, from the page's payload.
    let (_, list) = m.get(&format!("/api/invocations?function={name}")).await;
    let list = list.as_array().expect("a list").clone();
    assert_eq!(list.len(), 1, "one invocation, made from the page: {list:?}");
    assert_eq!(list[0]["status"], "succeeded");
    assert_eq!(list[0]["input"], serde_json::json!({"name": "Ada"}));
    // And the replay clicked on the page was a third attempt of the dead invocation.
    let replayed = eventually(Duration::from_secs(60), "the replayed invocation to end", || {
        let (m, id) = (&m, &dead_id);
        async move {
            let v = m.get(&format!("/api/invocations/{id}")).await.1;
            (v["attempts"] == 3 && v["status"] == "dead").then_some(v)
        }
    })
    .await;
    assert_eq!(replayed["attempt_history"].as_array().map(|a| a.len()), Some(3), "{replayed}");
    // The overview's numbers, as the API gives them to the page.
    let (status, stats) = m.get("/api/stats?minutes=15").await;
    assert_eq!(status, 200, "{stats}");
    let count = |st: &str| -> i64 {
        stats["per_minute"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"] == st)
            .map(|p| p["count"].as_i64().unwrap())
            .sum()
    };
    assert_eq!((count("succeeded"), count("dead")), (1, 1), "{stats}");
    assert!(stats["workers_online"].as_u64().unwrap() >= 1, "{stats}");
    let ours = stats["queues"].as_array().unwrap().iter().find(|q| q["pool"] == pool.as_str()).cloned();
    assert_eq!(ours.map(|q| q["consumers"].clone()), Some(serde_json::json!(1)), "{stats}");
    assert_eq!(m.get("/api/stats?minutes=1441").await.0, 400);
    for file in ["1-overview", "2-functions", "3-function-invoked", "4-invocation", "6-workers", "8-dead-letters"] {
        assert!(shots.join(format!("{file}.png")).exists(), "screenshot {file}.png is missing");
    }
}

/// Developing in the portal (`tests/browser/develop.mjs`): a function from every template in
/// every language, then one of them edited, refused at the right manifest line, tested as a
/// draft while callers keep version 1, published; what the page did is then checked here in
/// the store, through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_develops_tests_and_publishes_a_function_in_a_browser() {
    require_services();
    let chromium = browser_prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let (m, _worker, pool) = mesh_of_its_own(tmp.path(), "develop").await;

    let prefix = unique("dev");
    let shots = screenshot_dir();
    run_browser_script(&m, &chromium, "develop.mjs", &[&pool, &prefix]).await;

    // Every template made a function (the batch ones with their follow-up), on the pool given.
    let made = [
        "http-python",
        "http-node",
        "http-shell",
        "timer-python",
        "timer-node",
        "source-python",
        "source-node",
        "batch-python",
        "batch-python-report",
        "batch-node",
        "batch-node-report",
        "azure-python",
    ];
    for suffix in made {
        let name = format!("{prefix}-{suffix}");
        let (status, f) = m.get(&format!("/api/functions/{name}")).await;
        assert_eq!(status, 200, "{name} was not created: {f}");
        let manifest = f["versions"][0]["manifest"].as_str().unwrap_or_default();
        assert!(manifest.contains(&format!("pool = \"{pool}\"")), "{name} is not on {pool}: {manifest}");
    }
    let (_, timer) = m.get(&format!("/api/functions/{prefix}-timer-python")).await;
    assert_eq!(timer["trigger"], "timer 0 0 3 * * *", "{timer}");
    let (_, source) = m.get(&format!("/api/functions/{prefix}-source-node")).await;
    assert_eq!(source["trigger"], format!("queue {prefix}-q-node"), "{source}");
    let (_, app) = m.get(&format!("/api/functions/{prefix}-azure-python")).await;
    assert!(app["trigger"].as_str().unwrap_or_default().starts_with("http "), "{app}");

    // The edited function: the refused save made no version; drafts 2, 3 (a file added and
    // renamed) and 4 (it deleted), version 2 published.
    let name = format!("{prefix}-http-python");
    let (_, f) = m.get(&format!("/api/functions/{name}")).await;
    assert_eq!(f["function"]["active_version"], 2, "{f}");
    let versions: Vec<i64> = f["versions"].as_array().unwrap().iter().map(|v| v["version"].as_i64().unwrap()).collect();
    assert_eq!(versions, [4, 3, 2, 1], "{f}");
    // The draft's test run ran version 2 while version 1 was active; its lines were all kept.
    let (_, list) = m.get(&format!("/api/invocations?function={name}&limit=20")).await;
    let list = list.as_array().unwrap().clone();
    let test_run =
        list.iter().find(|i| i["input"] == serde_json::json!({"name": "Grace"})).expect("the draft's test run");
    assert_eq!(test_run["version"], 2, "{test_run}");
    assert_eq!(test_run["status"], "succeeded", "{test_run}");
    let id = test_run["id"].as_str().unwrap();
    let (_, logs) = m.get(&format!("/api/invocations/{id}/logs")).await;
    let lines: Vec<&str> = logs.as_array().unwrap().iter().map(|l| l["line"].as_str().unwrap()).collect();
    assert_eq!(lines, ["first step", "second step"], "each line once, in order");
    // Three invokes over the API: two of version 1 (before and after the draft), one of 2.
    let mut by_version: Vec<(i64, i64)> = Vec::new();
    for i in list.iter().filter(|i| i["input"] == serde_json::json!({"name": "Ada"})) {
        by_version.push((i["version"].as_i64().unwrap(), i["created_ms"].as_i64().unwrap()));
    }
    by_version.sort_by_key(|v| v.1);
    assert_eq!(by_version.iter().map(|v| v.0).collect::<Vec<_>>(), [1, 1, 2], "{list:?}");
    // The packages the page packed are ordinary ones: version 3 holds the renamed file with
    // its text, version 4 no longer; the package route answers them as they were stored.
    let unpacked = |version: i64| {
        let (m, name, tmp) = (&m, &name, tmp.path());
        async move {
            let url = format!("{}/api/functions/{name}/versions/{version}/package", m.base);
            let r = m.http.get(&url).send().await.expect("get the package");
            assert_eq!(r.status(), 200, "version {version}'s package");
            assert_eq!(r.headers()["content-type"], "application/gzip");
            let bytes = r.bytes().await.unwrap();
            let (_, f) = m.get(&format!("/api/functions/{name}")).await;
            let sha = f["versions"].as_array().unwrap().iter().find(|v| v["version"] == version).unwrap()["sha256"]
                .as_str()
                .unwrap()
                .to_string();
            let dest = tmp.join(format!("v{version}"));
            warren_wire::package::unpack(&bytes, &sha, &dest, &Default::default()).expect("an ordinary package");
            dest
        }
    };
    let v3 = unpacked(3).await;
    assert_eq!(std::fs::read_to_string(v3.join("lib/answer.py")).unwrap(), "ANSWER = 42\n");
    assert!(!v3.join("lib/util.py").exists());
    assert!(std::fs::read_to_string(v3.join("main.py")).unwrap().contains("Howdy"));
    assert!(!unpacked(4).await.join("lib/answer.py").exists());
    let (status, _) = m.get(&format!("/api/functions/{name}/versions/9/package")).await;
    assert_eq!(status, 404);
    for file in [
        "1-new-http",
        "2-editor-http",
        "3-refused-at-line",
        "4-test-running",
        "5-test-done",
        "6-published",
        "8-read-only",
    ] {
        assert!(shots.join(format!("develop-{file}.png")).exists(), "screenshot develop-{file}.png is missing");
    }
}
