//! Metrics end to end: a real management and a real worker (with `--metrics-addr`) run some
//! invocations; both `/metrics` pages count them exactly.

use std::time::Duration;

use warren_tests::*;

/// The value of one sample line (`name{labels} value`) of an OpenMetrics text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(url: &str) -> String {
    let r = reqwest::Client::new().get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{url}");
    let kind = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_roles_count_invocations_on_their_metrics_pages() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, echo, broken) = (unique("p"), unique("echo"), unique("broken"));
    let m = Management::start(&pg_url()).await;
    let manifest = format!("name = \"{echo}\"\nruntime = \"echo\"\npool = \"{pool}\"\n");
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[])).await;
    let manifest = format!(
        "name = \"{broken}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n\
         [retry]\nmax_attempts = 2\ninitial_delay_ms = 100\nmax_delay_ms = 100\n"
    );
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.sh", "echo broken >&2\nexit 3\n")])).await;
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let _w = start_worker_with(
        &pg_url(),
        &pool,
        2,
        &tmp.path().join("cache"),
        &["--metrics-addr", &metrics_addr, "--log-format", "json"],
        &[],
    );
    wait_consumers(&pool, 1).await;

    for i in 0..5 {
        let (status, v) = m.invoke(&echo, "sync", format!("n{i}").as_bytes()).await;
        assert_eq!((status, v["status"].as_str()), (200, Some("succeeded")), "{v}");
    }
    let (status, v) = m.invoke(&broken, "async", b"").await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(60), "the broken invocation to be dead", || async {
        let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
        (v["status"] == "dead").then_some(())
    })
    .await;

    // `warren logs --follow` on a final invocation: its lines, and exit 1 because it died.
    let out = m.cli().args(["logs", &id, "--follow"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("[1] broken") && stdout.contains("[2] broken"), "{stdout}");

    let page = scrape(&format!("{}/metrics", m.base)).await;
    assert_eq!(
        sample(&page, &format!("warren_invocations_accepted_total{{function=\"{echo}\"}}")),
        Some(5.0),
        "{page}"
    );
    assert_eq!(sample(&page, &format!("warren_invocations_accepted_total{{function=\"{broken}\"}}")), Some(1.0));
    let invokes_ok =
        "warren_http_requests_total{method=\"POST\",route=\"/api/functions/{name}/invoke\",status=\"200\"}";
    assert!(sample(&page, invokes_ok).unwrap_or(0.0) >= 5.0, "{page}");
    assert_eq!(sample(&page, &format!("warren_queue_depth{{pool=\"{pool}\"}}")), Some(0.0), "{page}");
    assert_eq!(sample(&page, &format!("warren_queue_consumers{{pool=\"{pool}\"}}")), Some(1.0), "{page}");
    assert_eq!(sample(&page, &format!("warren_dead_letters{{pool=\"{pool}\"}}")), Some(1.0), "{page}");
    // Only the asynchronous invoke is recorded by management (the worker records sync ones);
    // all six were published and confirmed.
    assert!(sample(&page, "warren_store_latency_seconds_count{op=\"create_invocation\"}").unwrap_or(0.0) >= 1.0);
    assert!(sample(&page, "warren_broker_publish_seconds_count").unwrap_or(0.0) >= 6.0, "{page}");
    // Each sync invoke was answered by its worker's notice, none by its deadline.
    assert_eq!(sample(&page, "warren_sync_waits_total{ended=\"notice\"}"), Some(5.0), "{page}");
    assert_eq!(sample(&page, "warren_sync_waits_total{ended=\"deadline\"}"), None, "{page}");
    assert_eq!(sample(&page, "warren_completion_notices_total{result=\"woke\"}"), Some(5.0), "{page}");

    let page = scrape(&format!("http://{metrics_addr}/metrics")).await;
    let worker = |series: String| sample(&page, &series);
    assert_eq!(
        worker(format!("warren_worker_invocations_total{{function=\"{echo}\",status=\"succeeded\"}}")),
        Some(5.0),
        "{page}"
    );
    assert_eq!(worker(format!("warren_worker_invocations_total{{function=\"{broken}\",status=\"dead\"}}")), Some(1.0));
    assert_eq!(worker(format!("warren_worker_retries_total{{function=\"{broken}\"}}")), Some(1.0), "{page}");
    assert_eq!(
        worker(format!("warren_worker_dead_letters_total{{pool=\"{pool}\",reason=\"attempts_exhausted\"}}")),
        Some(1.0)
    );
    assert_eq!(worker(format!("warren_worker_invocation_duration_seconds_count{{function=\"{echo}\"}}")), Some(5.0));
    assert_eq!(worker(format!("warren_worker_invocation_duration_seconds_count{{function=\"{broken}\"}}")), Some(2.0));
    assert_eq!(worker("warren_worker_in_flight".into()), Some(0.0), "{page}");
    assert_eq!(worker("warren_worker_completion_notices_total{sent=\"true\"}".into()), Some(5.0), "{page}");
    assert!(worker("warren_store_latency_seconds_count{op=\"complete\"}".into()).unwrap_or(0.0) >= 6.0, "{page}");
}
