//! The broker as operators give it: several nodes in `--amqp`, and a queue type that must be
//! the same for every role (`--queue-type`). Quorum queues losing a node are in the fault suite.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use warren_tests::*;
use warren_transport::amqp::{first_node, AmqpTransport};
use warren_transport::Transport;

/// Runs `cmd` until it exits (at most 60 s); its exit code and stderr.
fn exit_and_stderr(cmd: &mut Command) -> (Option<i32>, String) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} was still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code(), err)
}

#[tokio::test]
async fn a_role_started_with_the_other_queue_type_stops_saying_how_to_move() {
    require_services();
    let pool = unique("qt");
    let t = AmqpTransport::connect(&amqp_url(), "queue-type-test").await.unwrap();
    t.declare_pool(&pool).await.unwrap();
    t.declare_pool("default").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();

    let (code, err) = exit_and_stderr(Command::new(bin("warren-worker")).args([
        "--amqp",
        &amqp_url(),
        "--queue-type",
        "quorum",
        "--store",
        &pg_url(),
        "--pool",
        &pool,
        "--cache-dir",
        &tmp.path().display().to_string(),
    ]));
    assert_eq!(code, Some(1), "{err}");
    let queue = format!("queue warren.pool.{pool} already exists");
    assert!(err.contains(&queue) && err.contains("--queue-type") && err.contains("Changing the queue type"), "{err}");

    // Management checks the pools in use at its start (the default pool at least).
    let port = free_port().to_string();
    let (code, err) = exit_and_stderr(Command::new(bin("warren-management")).args([
        "--amqp",
        &amqp_url(),
        "--queue-type",
        "quorum",
        "--store",
        &pg_url(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--insecure-no-auth",
    ]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("queue warren.pool.default already exists") && err.contains("--queue-type"), "{err}");

    // The same queues, declared with the type they have, are fine.
    assert_eq!(t.queue_stats(&pool).await.unwrap().messages, 0);
}

#[tokio::test]
async fn a_node_that_does_not_answer_is_passed_over_for_the_next() {
    require_services();
    // Nothing listens on port 1: the worker tries it first (its name hashes to node 0), then
    // the real broker.
    let dead = "amqp://guest:guest@127.0.0.1:1/%2f";
    let nodes = format!("{dead},{}", amqp_url());
    let id = std::iter::repeat_with(|| unique("nodes-")).find(|id| first_node(id, 2) == 0).unwrap();
    let pool = unique("nodes");
    let tmp = tempfile::tempdir().unwrap();
    let _worker = start_worker_with(&pg_url(), &pool, 2, tmp.path(), &["--amqp", &nodes, "--id", &id], &[]);
    wait_consumers(&pool, 1).await;

    // And a list that is not one is refused before anything starts.
    let (code, err) = exit_and_stderr(Command::new(bin("warren-worker")).args([
        "--amqp",
        &format!("{},http://example.com", amqp_url()),
        "--store",
        &pg_url(),
    ]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("http://example.com is not an AMQP URL"), "{err}");
}
