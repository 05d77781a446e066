//! Warm (persistent) handlers: the reference Python and Node.js handlers of `examples/` under a
//! real worker, a handler killed mid-invocation, and cancels of warm calls.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use warren_store::{InvocationFilter, Status};
use warren_tests::*;

/// Copies an example function under a fresh name and pool.
fn example_as(example: &str, root: &Path, name: &str, pool: &str) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(example);
    let dst = root.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let manifest = std::fs::read_to_string(dst.join("function.toml")).unwrap();
    let manifest: String = manifest
        .lines()
        .map(|l| {
            if l.starts_with("name = ") {
                format!("name = \"{name}\"")
            } else if l.starts_with("pool = ") {
                format!("pool = \"{pool}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dst.join("function.toml"), manifest).unwrap();
    dst
}

async fn serve_many(example: &str, n: usize, max_processes: usize) {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("p"), unique("warm"));
    let m = Management::start(&pg_url()).await;
    m.publish_dir(&example_as(example, tmp.path(), &name, &pool)).await;
    let _w = start_worker(&pg_url(), &pool, 8, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    let mut expected: HashMap<String, usize> = HashMap::new();
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..n {
        let (http, url) = (m.http.clone(), format!("{}/api/functions/{name}/invoke?mode=async", m.base));
        let words = i % 7;
        let text = vec!["w"; words].join(" ");
        pending.spawn(async move {
            let r = http.post(url).body(format!("{{\"text\": \"{text}\"}}")).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 202);
            let v: serde_json::Value = r.json().await.unwrap();
            (v["id"].as_str().unwrap().to_string(), words)
        });
        if pending.len() >= 32 {
            let (id, w) = pending.join_next().await.unwrap().unwrap();
            expected.insert(id, w);
        }
    }
    while let Some(r) = pending.join_next().await {
        let (id, w) = r.unwrap();
        expected.insert(id, w);
    }
    let store = warren_store::open(&pg_url()).await.unwrap();
    let filter = InvocationFilter { function: Some(name.clone()), status: None, limit: 10_000 };
    let all = eventually(Duration::from_secs(180), &format!("{n} invocations of {example} to finish"), || async {
        let all = store.list_invocations(&filter).await.ok()?;
        (all.iter().filter(|i| i.status.is_final()).count() == n).then_some(all)
    })
    .await;
    let mut pids = HashSet::new();
    for inv in &all {
        assert_eq!(inv.status, Status::Succeeded, "{}: {:?}", inv.id, inv.error);
        let v: serde_json::Value = serde_json::from_slice(inv.result.as_deref().unwrap()).unwrap();
        assert_eq!(v["words"].as_u64().unwrap() as usize, expected[&inv.id.to_string()], "{}", inv.id);
        pids.insert(v["pid"].as_u64().unwrap());
    }
    println!("{example}: {n} invocations served by {} handler processes", pids.len());
    assert!(pids.len() <= max_processes, "warm handlers are reused: {} processes for {n} invocations", pids.len());
    let logs = store.get_logs(all[0].id).await.unwrap();
    assert!(logs.iter().any(|l| l.line.starts_with("counting")), "{logs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_handler_serves_two_thousand_invocations_warm() {
    serve_many("warm-python", 2000, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_handler_serves_two_thousand_invocations_warm() {
    serve_many("warm-node", 2000, 2).await;
}

fn children_running(parent: u32, needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid: u32 =
            stat.rsplit(')').next().and_then(|s| s.split_whitespace().nth(1)).and_then(|p| p.parse().ok()).unwrap_or(0);
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == parent && String::from_utf8_lossy(&cmd).contains(needle) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_killed_mid_invocation_is_replaced_and_its_invocation_recorded_failed() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("p"), unique("warm"));
    let m = Management::start(&pg_url()).await;
    m.publish_dir(&example_as("warm-python", tmp.path(), &name, &pool)).await;
    let w = start_worker(&pg_url(), &pool, 4, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    // Warm it up: one handler answers.
    let (_, v) = m.invoke(&name, "sync", br#"{"text": "a b"}"#).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    let (_, slow) = m.invoke(&name, "async", br#"{"sleep_ms": 30000}"#).await;
    let id = slow["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(20), "the slow invocation to run", || async {
        let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
        (v["status"] == "running").then_some(())
    })
    .await;
    let handlers = children_running(w.pid(), "handler.py");
    assert!(!handlers.is_empty(), "warm handlers run under the worker");
    for pid in &handlers {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let v = eventually(Duration::from_secs(20), "the killed invocation to be recorded", || async {
        let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
        (v["status"] == "failed").then_some(v)
    })
    .await;
    assert!(v["error"].as_str().unwrap().contains("handler process exited"), "{v}");

    let (_, after) = m.invoke(&name, "sync", br#"{"text": "one two three"}"#).await;
    assert_eq!((after["status"].as_str(), after["result"]["words"].as_u64()), (Some("succeeded"), Some(3)), "{after}");
    let new_pid = after["result"]["pid"].as_i64().unwrap() as i32;
    assert!(!handlers.contains(&new_pid), "a fresh handler took over");
}

/// Rewrites lines of a copied example: each `(from, to)` replaces the line starting `from`.
fn edit_lines(file: &Path, edits: &[(&str, &str)]) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut edited = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| match edits.iter().find(|(from, _)| l.starts_with(from)) {
            Some((_, to)) => {
                edited += 1;
                to.to_string()
            }
            None => l.to_string(),
        })
        .collect();
    assert_eq!(edited, edits.len(), "every edit of {} found its line", file.display());
    std::fs::write(file, out.join("\n") + "\n").unwrap();
}

/// Cancel of a warm handler's call: a handler that takes cancel frames (both reference
/// handlers) ends the call and lives on; one that does not is killed after the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_warm_call_is_ended_by_its_handler_or_the_handler_is_killed() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let m = Management::start(&pg_url()).await;
    // One handler each, with a timeout far beyond the test: only the cancel can end a call.
    let one_handler = [("processes = ", "processes = 1"), ("timeout_secs = ", "timeout_secs = 300")];
    let (py, node, deaf) = (unique("cpy"), unique("cnode"), unique("cdeaf"));
    for (example, name) in [("warm-python", &py), ("warm-node", &node)] {
        let dir = example_as(example, tmp.path(), name, &pool);
        edit_lines(&dir.join("function.toml"), &one_handler);
        m.publish_dir(&dir).await;
    }
    // The Python handler as one written before cancel frames: it never says it takes them.
    let dir = example_as("warm-python", tmp.path(), &deaf, &pool);
    edit_lines(
        &dir.join("function.toml"),
        &[one_handler[0], one_handler[1], ("recycle_after", "cancel_grace_secs = 1")],
    );
    edit_lines(&dir.join("handler.py"), &[("send({\"type\": \"ready\"", "send({\"type\": \"ready\"})")]);
    m.publish_dir(&dir).await;
    let w = start_worker(&pg_url(), &pool, 4, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    let pid_of = |v: &serde_json::Value| v["result"]["pid"].as_i64().unwrap_or_else(|| panic!("a pid: {v}"));
    let running_call = |name: String| {
        let m = &m;
        async move {
            let (_, v) = m.invoke(&name, "async", br#"{"sleep_ms": 600000}"#).await;
            let id = v["id"].as_str().unwrap().to_string();
            eventually(Duration::from_secs(20), "the long call to run", || async {
                let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
                (v["status"] == "running").then_some(())
            })
            .await;
            let out = m.cli().args(["cancel", &id]).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            id
        }
    };
    for name in [&py, &node] {
        let (_, first) = m.invoke(name, "sync", br#"{"text": "warm up"}"#).await;
        let pid = pid_of(&first);
        let id = running_call(name.clone()).await;
        // The single handler is free again only once it has answered the cancelled call.
        let (_, after) = m.invoke(name, "sync", br#"{"text": "one two three"}"#).await;
        assert_eq!(
            (after["status"].as_str(), after["result"]["words"].as_u64()),
            (Some("succeeded"), Some(3)),
            "{after}"
        );
        assert_eq!(pid_of(&after), pid, "{name}: the handler ended the cancelled call and lives on");
        let (_, v) = m.get(&format!("/api/invocations/{id}")).await;
        assert_eq!(v["status"], "cancelled", "{v}");
    }

    let (_, first) = m.invoke(&deaf, "sync", br#"{"text": "warm up"}"#).await;
    let deaf_pid = pid_of(&first) as i32;
    assert!(children_running(w.pid(), "handler.py").contains(&deaf_pid));
    running_call(deaf.clone()).await;
    eventually(Duration::from_secs(20), "the handler deaf to cancels to be killed", || async {
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        (unsafe { libc::kill(deaf_pid, 0) } != 0).then_some(())
    })
    .await;
    let (_, after) = m.invoke(&deaf, "sync", br#"{"text": "one two"}"#).await;
    assert_eq!(after["result"]["words"].as_u64(), Some(2), "{after}");
    assert_ne!(pid_of(&after) as i32, deaf_pid, "a fresh handler took over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_and_log_volume_over_the_limits_fail_clearly() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("p");
    let (big, chatty) = (unique("big"), unique("chatty"));
    let m = Management::start(&pg_url()).await;
    let mk = |name: &str, script: &str| {
        let manifest =
            format!("name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n");
        function_dir(tmp.path(), &manifest, &[("run.sh", script)])
    };
    m.publish_dir(&mk(&big, "head -c 3000000 /dev/zero\n")).await;
    m.publish_dir(&mk(&chatty, "for i in $(seq 1 50); do echo \"line $i\" >&2; done\necho done\n")).await;
    let _w = start_worker_with(
        &pg_url(),
        &pool,
        2,
        &tmp.path().join("cache"),
        &["--max-output-bytes", "1000000", "--max-log-lines", "10"],
        &[],
    );
    wait_consumers(&pool, 1).await;

    let (_, v) = m.invoke(&big, "sync", b"").await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("over the limit of 1000000 bytes"), "{v}");

    let (_, v) = m.invoke(&chatty, "sync", b"").await;
    assert_eq!(v["status"], "succeeded", "{v}");
    let logs = v["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 11, "10 lines and a note: {v}");
    assert!(logs[10]["line"].as_str().unwrap().contains("40 more log lines dropped"), "{v}");
}

/// What a function writes to stderr is stored whatever it is: a NUL character (which
/// PostgreSQL's text refuses) becomes U+FFFD, and a 200 MB line without a newline is cut at
/// the line limit (8 KiB) as it is read, so the worker never holds it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_and_endless_lines_in_a_log_are_stored_cut_and_cleaned() {
    require_services();
    let tmp = tempfile::tempdir().unwrap();
    let (pool, name) = (unique("p"), unique("odd"));
    let m = Management::start(&pg_url()).await;
    let script = "printf 'before\\000after\\n' >&2\n\
                  head -c 200000000 /dev/zero | tr '\\000' x >&2\n\
                  printf '\\nlast\\n' >&2\n\
                  echo ok\n";
    let manifest =
        format!("name = \"{name}\"\nruntime = \"process\"\ncommand = [\"sh\", \"run.sh\"]\npool = \"{pool}\"\n");
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.sh", script)])).await;
    let w = start_worker(&pg_url(), &pool, 1, &tmp.path().join("cache"));
    wait_consumers(&pool, 1).await;

    let (status, v) = m.invoke(&name, "sync", b"").await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("succeeded")),
        "{}",
        &v.to_string()[..v.to_string().len().min(2000)]
    );
    let lines: Vec<&str> = v["logs"].as_array().unwrap().iter().map(|l| l["line"].as_str().unwrap()).collect();
    assert_eq!(lines.len(), 3, "{:?}", lines.iter().map(|l| &l[..l.len().min(80)]).collect::<Vec<_>>());
    assert_eq!(lines[0], "before\u{FFFD}after");
    assert!(lines[1].starts_with("xxxx") && lines[1].ends_with(" [line truncated]"), "{}", &lines[1][..80]);
    assert!(lines[1].len() <= (8 << 10) + " [line truncated]".len(), "cut at 8 KiB: {} bytes", lines[1].len());
    assert_eq!(lines[2], "last");
    // The worker's peak memory: the 200 MB line was never in it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    assert!(peak_kib < 150 << 10, "the worker's peak resident memory is {peak_kib} KiB");
}
