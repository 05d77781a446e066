//! The Windows worker under Wine, beside a Linux management, on this machine's RabbitMQ and
//! PostgreSQL: `warren-worker.exe` (cross-built by `scripts/windows`, which `scripts/test` runs
//! first) takes a batch-file function, a warm handler speaking the protocol with `\r\n`, and a
//! function whose process tree hangs past its timeout (killed whole through its job object); it
//! keeps its package cache on a Windows path, and a stop drains it. A worker killed outright
//! takes its function's tree with it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use warren_tests::*;

/// Where `scripts/windows` leaves the Windows build.
fn windows_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let dir = root.join("target/windows/x86_64-pc-windows-gnu/release");
    assert!(
        dir.join("warren-worker.exe").is_file() && dir.join("bcryptprimitives.dll").is_file(),
        "{} holds no Windows build: run scripts/windows (scripts/test does)",
        dir.display()
    );
    dir
}

const WINE: &str = "/usr/lib/wine/wine64";

/// A Linux path as Wine's drive Z: shows it.
fn windows_path(p: &Path) -> String {
    format!("Z:{}", p.display().to_string().replace('/', "\\"))
}

/// Puts one of the Windows helper programs in a function's folder, with the ProcessPrng shim
/// beside it: a Rust program does not start under Wine 8 without it (see scripts/windows). A
/// package for real Windows needs no such file.
fn with_program(win: &Path, exe: &str, dir: &Path) {
    std::fs::copy(win.join("examples").join(exe), dir.join(exe)).unwrap();
    std::fs::copy(win.join("bcryptprimitives.dll"), dir.join("bcryptprimitives.dll")).unwrap();
}

/// The Linux processes whose command line names `exe` (a Wine process shows its Windows one).
fn processes_named(exe: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(exe) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_worker_runs_functions_kills_hung_trees_and_drains_under_wine() {
    require_services();
    let win = windows_dir();
    let tmp = tempfile::tempdir().unwrap();
    let pool = unique("win");
    let m = Management::start(&pg_url()).await;

    let (batch, warm, hang, orphan) = (unique("wincmd"), unique("winwarm"), unique("winhang"), unique("winorphan"));
    let manifest = format!("name = \"{batch}\"\nruntime = \"process\"\ncommand = [\"./run\"]\npool = \"{pool}\"\n");
    let script = "@echo off\r\necho a log line from %WARREN_FUNCTION% 1>&2\r\necho hello from %WARREN_FUNCTION%\r\n";
    m.publish_dir(&function_dir(tmp.path(), &manifest, &[("run.cmd", script)])).await;

    let manifest = format!(
        "name = \"{warm}\"\nruntime = \"process\"\nmode = \"persistent\"\ncommand = [\"./echo_handler.exe\"]\n\
         pool = \"{pool}\"\ntimeout_secs = 20\n[handler]\nprocesses = 1\nstart_timeout_secs = 60\n"
    );
    let dir = function_dir(tmp.path(), &manifest, &[]);
    with_program(&win, "echo_handler.exe", &dir);
    m.publish_dir(&dir).await;

    let manifest = format!(
        "name = \"{hang}\"\nruntime = \"process\"\ncommand = [\"./tree_helper.exe\", \"spawn\"]\npool = \"{pool}\"\ntimeout_secs = 3\n"
    );
    let dir = function_dir(tmp.path(), &manifest, &[]);
    with_program(&win, "tree_helper.exe", &dir);
    m.publish_dir(&dir).await;

    // The package cache on a Windows path (Wine's Z: drive is this machine's root).
    let cache = tmp.path().join("cache");
    let start = |id: &str| {
        Proc::spawn(
            "warren-worker.exe",
            Command::new(WINE)
                .arg(win.join("warren-worker.exe"))
                .args(["--amqp", &amqp_url(), "--store", &pg_url(), "--pool", &pool, "--concurrency", "2"])
                .args(["--cache-dir", &windows_path(&cache), "--grace-secs", "10", "--id", id])
                .env("WINEPREFIX", win.join("../../wineprefix"))
                .env("WINEDEBUG", "-all"),
        )
    };
    let mut worker = start(&unique("wine-"));
    wait_consumers(&pool, 1).await;

    // A batch file found through PATHEXT, its stdout the result and its stderr a log line.
    let (status, v) = m.invoke(&batch, "sync", b"").await;
    assert_eq!((status, v["status"].as_str()), (200, Some("succeeded")), "{v}");
    assert_eq!(v["result"].as_str().map(str::trim), Some(format!("hello from {batch}").as_str()), "{v}");
    let logs = v["logs"].to_string();
    assert!(logs.contains(&format!("a log line from {batch}")), "{v}");
    assert!(cache.read_dir().unwrap().count() >= 1, "the package was unpacked under the Windows cache path");

    // A warm handler: the same process answers invocation after invocation, in CRLF frames.
    for input in ["ping", "pong"] {
        let (status, v) = m.invoke(&warm, "sync", input.as_bytes()).await;
        assert_eq!((status, v["status"].as_str()), (200, Some("succeeded")), "{v}");
        assert_eq!(v["result"].as_str(), Some(input), "{v}");
        assert!(v["logs"].to_string().contains("echoing 4 bytes"), "{v}");
    }

    // A hung tree: its process and the child it started are both gone after the timeout.
    let (status, v) = m.invoke(&hang, "sync", b"").await;
    assert_eq!((status, v["status"].as_str()), (200, Some("timed_out")), "{v}");
    eventually(Duration::from_secs(15), "the hung function's tree to be gone", || async {
        processes_named("tree_helper.exe").is_empty().then_some(())
    })
    .await;

    // A stop (SIGINT reaches the worker as Ctrl-C): it drains, says it is gone, and exits 0.
    unsafe {
        libc::kill(worker.pid() as i32, libc::SIGINT);
    }
    let exited = eventually(Duration::from_secs(30), "the Windows worker to stop", || {
        let status = worker.child.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    assert!(exited.success(), "the Windows worker exits 0 at a stop: {exited}");
    let (_, workers) = m.get("/api/workers").await;
    let me = workers.as_array().unwrap().iter().find(|w| w["pools"].as_str() == Some(pool.as_str())).cloned();
    assert_eq!(me.as_ref().and_then(|w| w["state"].as_str()), Some("gone"), "{workers}");
    // A worker killed outright: the job object's last handle closes with it, and
    // JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE takes the function's whole tree down too.
    let manifest = format!(
        "name = \"{orphan}\"\nruntime = \"process\"\ncommand = [\"./tree_helper.exe\", \"spawn\"]\npool = \"{pool}\"\ntimeout_secs = 120\n"
    );
    let dir = function_dir(tmp.path(), &manifest, &[]);
    with_program(&win, "tree_helper.exe", &dir);
    m.publish_dir(&dir).await;
    let worker = start(&unique("wine-"));
    wait_consumers(&pool, 1).await;
    let (status, v) = m.invoke(&orphan, "async", b"").await;
    assert_eq!(status, 202, "{v}");
    eventually(Duration::from_secs(30), "the function and its child to run", || async {
        (processes_named("tree_helper.exe").len() >= 2).then_some(())
    })
    .await;
    drop(worker); // SIGKILL
    eventually(Duration::from_secs(15), "the killed worker's function tree to be gone", || async {
        processes_named("tree_helper.exe").is_empty().then_some(())
    })
    .await;

    // Wine's server outlives its last program for a few seconds: stop it with the test.
    let _ =
        Command::new("/usr/lib/wine/wineserver64").arg("-k").env("WINEPREFIX", win.join("../../wineprefix")).status();
}
