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

/// Deliveries returned to the queue (nacked) while later ones on the same channel are acked
/// and coalesced into multiple acks: every returned one comes back, none is acked by a multiple
/// ack that overtook its nack, and the channel is never closed for an unknown delivery tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_deliveries_come_back_while_later_ones_are_acked() {
    require_services();
    const N: usize = 3_000;
    let pool = unique("nack");
    let t = std::sync::Arc::new(AmqpTransport::connect(&amqp_url(), "nack-test").await.unwrap());
    t.declare_pool(&pool).await.unwrap();
    for i in 0..N {
        t.publish(&pool, format!("{i}").into_bytes().into()).await.unwrap();
    }
    let mut consumer = t.consume(&pool, 64).await.unwrap();
    let (acked, returned) = (
        std::sync::Arc::new(std::sync::Mutex::new(vec![0u32; N])),
        std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    );
    let mut tasks = tokio::task::JoinSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Every message once, and every seventh a second time after it was returned.
    let expected = N + N.div_ceil(7);
    for _ in 0..expected {
        assert!(Instant::now() < deadline, "not every message was delivered within 120 s");
        let next = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
        let d = match next {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => panic!("the consumer failed: {e}"),
            Ok(None) => panic!("the channel closed (an ack or nack the broker did not know?)"),
            Err(_) => {
                let missing: Vec<usize> = (0..N).filter(|&i| acked.lock().unwrap()[i] == 0).collect();
                let left = t.queue_stats(&pool).await.unwrap().messages;
                panic!(
                    "no delivery for 10 s with {} messages never acked ({missing:?}); the queue holds {left}",
                    missing.len()
                );
            }
        };
        let i: usize = std::str::from_utf8(&d.body).unwrap().parse().unwrap();
        let (acked, returned) = (acked.clone(), returned.clone());
        // Each task settles its delivery a little later, so that settlements interleave: every
        // seventh message is returned once, the rest are acked.
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_micros((i as u64 * 7919) % 3000)).await;
            if i.is_multiple_of(7) && !d.redelivered {
                returned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                d.requeue().await.unwrap();
            } else {
                d.ack().await.unwrap();
                acked.lock().unwrap()[i] += 1;
            }
        });
        while let Some(r) = tasks.try_join_next() {
            r.unwrap();
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    consumer.flush_acks().await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.iter().all(|&n| n > 0), "a message never acked: {:?}", acked.iter().position(|&n| n == 0));
    assert!(acked.iter().all(|&n| n == 1), "a message acked twice: {:?}", acked.iter().position(|&n| n > 1));
    assert_eq!(
        returned.load(std::sync::atomic::Ordering::Relaxed),
        N.div_ceil(7),
        "every seventh message is returned once"
    );
    // Nothing left behind: no delivery more than expected, and the queue empty once acked.
    let extra = tokio::time::timeout(Duration::from_secs(1), consumer.next()).await;
    assert!(extra.is_err(), "a delivery more than expected (a message returned twice?)");
    eventually(Duration::from_secs(10), "the queue to be empty", || async {
        (t.queue_stats(&pool).await.ok()?.messages == 0).then_some(())
    })
    .await;
}
