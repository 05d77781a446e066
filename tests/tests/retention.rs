//! Retention's cleanup end to end: 200,000 old rows removed by management in chunks while
//! invocations keep succeeding, a function's own `[retention]` over the defaults, and what the
//! cleanup did shown by the API, the CLI and the metrics.

use std::time::{Duration, Instant};

use sqlx::Connection;
use warren_tests::*;

const OLD_ROWS: i64 = 200_000;
const DAY: i64 = 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_removes_200k_old_rows_while_invocations_keep_succeeding() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name, other) = (unique("p"), unique("ret"), unique("ret-own"));
    let m =
        Management::start_with(&pg_url(), &["--cleanup-every-secs", "1", "--retain-versions-quiet-secs", "1"]).await;
    let manifest = format!("name = \"{name}\"\nruntime = \"echo\"\npool = \"{pool}\"\n");
    m.publish_dir(&function_dir(&tmp.path().join("a"), &manifest, &[])).await;
    // Its own retention: succeeded kept 1 day (not the default 7), 2 versions.
    for v in 1..=4 {
        let manifest = format!(
            "name = \"{other}\"\nruntime = \"echo\"\npool = \"{pool}\"\ndescription = \"v{v}\"\n\n[retention]\nsucceeded = \"1d\"\nversions = 2\n"
        );
        m.publish_dir(&function_dir(&tmp.path().join(format!("b{v}")), &manifest, &[])).await;
    }
    let _w = start_worker(&pg_url(), &pool, 4, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    // The same invokes with nothing to clean, for comparison.
    let quantiles = |mut l: Vec<Duration>| {
        l.sort();
        let at = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
        (at(0.5), at(0.99), l[l.len() - 1])
    };
    let mut quiet = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let (status, v) = m.invoke(&name, "sync", b"before").await;
        quiet.push(t.elapsed());
        assert_eq!(status, 200, "{v}");
    }
    let quiet = quantiles(quiet);

    // Rows of another time, written as the store writes them: 200,000 succeeded 100 days ago,
    // each with a log line; failed ones 100 days ago (past the default 30 days) and 10 days
    // ago (within it); queued ones 100 days ago (never final: they stay); and for the function
    // with its own retention, succeeded ones 2 days ago (past its 1 day, within the default 7).
    let mut db = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
    let now = warren_wire::time::now_ms();
    let insert = |function: &str, status: &str, n: i64, ago_ms: i64, marker: &str| {
        format!(
            "INSERT INTO warren_invocations (id, function, version, status, attempts, payload, result, worker, created_ms, started_ms, finished_ms)
             SELECT gen_random_uuid()::text, '{function}', 1, '{status}', 1, '\\x00'::bytea, '\\x6f6b'::bytea, '{marker}',
               {t} + g, {t} + g, CASE WHEN '{status}' = 'queued' THEN NULL ELSE {t} + g + 5 END
             FROM generate_series(1, {n}) g",
            t = now - ago_ms
        )
    };
    // One transaction: the cleanup (every second) sees all of it or none.
    let seeded = Instant::now();
    let mut tx = db.begin().await.unwrap();
    for sql in [
        insert(&name, "succeeded", OLD_ROWS, 100 * DAY, "old"),
        insert(&name, "failed", 50, 100 * DAY, "old"),
        insert(&name, "dead", 50, 10 * DAY, "kept"),
        insert(&name, "queued", 20, 100 * DAY, "kept"),
        insert(&other, "succeeded", 30, 2 * DAY, "old"),
        "INSERT INTO warren_logs (invocation, attempt, seq, ts_ms, line)
         SELECT id, 1, 0, created_ms, 'a line of long ago' FROM warren_invocations WHERE worker = 'old'"
            .to_string(),
    ] {
        sqlx::query(&sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let count = |marker: &'static str| {
        let url = pg_url();
        async move {
            let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
            let n: i64 =
                sqlx::query_scalar(&format!("SELECT COUNT(*) FROM warren_invocations WHERE worker = '{marker}'"))
                    .fetch_one(&mut db)
                    .await
                    .unwrap();
            n
        }
    };
    println!("seeded {} old rows (and their log lines) in {:?}", count("old").await, seeded.elapsed());

    // Invocations through the API while the cleanup runs: every one must succeed.
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut during = 0;
    loop {
        let t = Instant::now();
        let (status, v) = m.invoke(&name, "sync", b"still here").await;
        latencies.push(t.elapsed());
        assert_eq!((status, v["status"].as_str()), (200, Some("succeeded")), "{v}");
        let left = count("old").await;
        if left == 0 {
            break;
        }
        during += 1;
        assert!(started.elapsed() < Duration::from_secs(300), "{left} old rows are still there after 5 minutes");
    }
    let took = started.elapsed();
    let n = latencies.len();
    let busy = quantiles(latencies);
    println!(
        "cleanup of {OLD_ROWS} rows and their log lines took about {took:?}; sync invokes (p50 / p99 / max): \
         {n} during it, all succeeded: {busy:?}; 200 before it: {quiet:?}"
    );
    assert!(during > 0, "the invokes ran while the cleanup did");

    // What stays: not final, or within its span; and the logs of what went are gone.
    assert_eq!(count("kept").await, 70);
    let orphans: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM warren_logs l WHERE NOT EXISTS (SELECT 1 FROM warren_invocations i WHERE i.id = l.invocation)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(orphans, 0, "no log line outlives its invocation");
    let (_, listed) = m.get(&format!("/api/invocations?function={name}&limit=1")).await;
    assert_eq!(listed[0]["status"], "succeeded", "today's invocations stay: {listed}");
    // The function's own policy: 2 versions kept, shown as such.
    let (_, f) = m.get(&format!("/api/functions/{other}")).await;
    let versions: Vec<i64> = f["versions"].as_array().unwrap().iter().map(|v| v["version"].as_i64().unwrap()).collect();
    assert_eq!(versions, [4, 3], "{f}");
    assert_eq!(f["retention"], serde_json::json!({"succeeded": "1d", "failed": "30d", "versions": 2}));

    // The API, the CLI and the metrics say what was removed.
    let report = eventually(Duration::from_secs(30), "a report of the cleanup", || async {
        let (_, v) = m.get("/api/retention").await;
        let removed = v["cleanup"]["last"]["invocations"].as_u64().unwrap_or(0);
        (removed == 0 && v["functions"].as_array().is_some_and(|f| f.len() == 2)).then_some(v)
    })
    .await;
    assert_eq!(report["defaults"], serde_json::json!({"succeeded": "7d", "failed": "30d", "versions": 10}));
    assert_eq!(report["cleanup"]["every_secs"], 1);
    let metrics = m.http.get(format!("{}/metrics", m.base)).send().await.unwrap().text().await.unwrap();
    let removed = |kind: &str| -> u64 {
        let prefix = format!("warren_retention_removed_total{{kind=\"{kind}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map(|n| n.parse().unwrap()).unwrap_or(0)
    };
    assert_eq!(removed("invocations"), OLD_ROWS as u64 + 50 + 30, "{metrics}");
    assert_eq!(removed("log_lines"), OLD_ROWS as u64 + 50 + 30);
    assert_eq!(removed("versions"), 2);
    let out = m.cli().args(["retention"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("defaults: succeeded 7d, failed 30d, 10 versions"), "{text}");
    assert!(text.lines().any(|l| l.starts_with(&other) && l.contains("1d") && l.contains("30d")), "{text}");
    let out = m.cli().args(["--json", "retention"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["defaults"]["versions"], 10);
}
