//! The store conformance suite: the same checks against every backend.
//! SQLite and PostgreSQL always; SQL Server when `WARREN_TEST_MSSQL_URL` is set (the test is
//! marked ignored otherwise, and reported as such, never as passed).

use std::sync::Arc;

use uuid::Uuid;
use warren_store::{
    ApiKey, BatchState, Claim, DeliveryStatus, InvocationFilter, KeyLevel, LogLine, MinuteCount, NewBatch, NewDelivery,
    NewInvocation, Outcome, Purged, Setting, Settled, Status, Store, StoreError, WorkerInfo, WorkerState,
};
use warren_tests::{pg_url, require_services, unique};
use warren_wire::manifest::Manifest;
use warren_wire::time::now_ms;

fn manifest(name: &str) -> (Manifest, String) {
    let text = format!("name = \"{name}\"\nruntime = \"echo\"\n");
    (Manifest::parse(&text).unwrap(), text)
}

fn new_inv(function: &str, version: i64) -> NewInvocation {
    NewInvocation {
        id: Uuid::now_v7(),
        function: function.into(),
        version,
        payload: b"\x00in\xff".to_vec(),
        created_ms: now_ms(),
    }
}

fn outcome(status: Status, worker: &str, logs: usize) -> Outcome {
    Outcome {
        status,
        attempt: 1,
        result: Some(format!("result-of-{worker}").into_bytes()),
        error: (status != Status::Succeeded).then(|| "it broke".to_string()),
        worker: worker.into(),
        started_ms: None,
        version: None,
        finished_ms: now_ms(),
        logs: (0..logs)
            .map(|i| LogLine { attempt: 1, seq: i as i32, ts_ms: now_ms(), line: format!("line {i} é") })
            .collect(),
        deliveries: Vec::new(),
        record: None,
    }
}

/// API keys: stored by hash, found by hash, listed, revoked once.
async fn keys_conform(store: &dyn Store) {
    let hash = format!("{:064x}", Uuid::new_v4().as_u128());
    let key = ApiKey {
        id: Uuid::now_v7(),
        name: unique("key"),
        level: KeyLevel::Function,
        function: Some(unique("fn")),
        hash: hash.clone(),
        created_ms: now_ms(),
        revoked_ms: None,
    };
    store.create_key(&key).await.unwrap();
    assert_eq!(store.find_key_by_hash(&hash).await.unwrap().as_ref(), Some(&key));
    assert!(store.find_key_by_hash(&format!("{:064x}", 7)).await.unwrap().is_none());
    let twin = ApiKey { id: Uuid::now_v7(), ..key.clone() };
    assert!(matches!(store.create_key(&twin).await, Err(StoreError::Conflict(_))), "a hash is unique");
    let admin = ApiKey {
        id: Uuid::now_v7(),
        level: KeyLevel::Admin,
        function: None,
        hash: format!("{:064x}", Uuid::new_v4().as_u128()),
        ..key.clone()
    };
    store.create_key(&admin).await.unwrap();
    let listed = store.list_keys().await.unwrap();
    let mine: Vec<_> = listed.iter().filter(|k| k.id == key.id || k.id == admin.id).collect();
    assert_eq!(mine, vec![&key, &admin]);
    let at = now_ms();
    assert!(store.revoke_key(key.id, at).await.unwrap());
    assert!(!store.revoke_key(key.id, at + 1).await.unwrap(), "revoked once");
    assert!(!store.revoke_key(Uuid::now_v7(), at).await.unwrap(), "no such key");
    assert_eq!(store.find_key_by_hash(&hash).await.unwrap().unwrap().revoked_ms, Some(at));
}

/// Rollback and removal: an existing version activated in one statement; a function deleted
/// with its versions, settings and ticks only when nothing of it (nor a batch fanning in to it)
/// is open, its finished invocations kept.
async fn rollback_and_removal(store: &dyn Store) {
    let (m, text) = manifest(&unique("rb"));
    let name = m.name.clone();
    store.publish_version(&m, &text, b"one", "sha-1").await.unwrap();
    store.publish_version(&m, &text, b"two", "sha-2").await.unwrap();
    assert!(store.activate_version(&name, 1).await.unwrap());
    assert_eq!(store.get_function(&name).await.unwrap().unwrap().active_version, 1);
    assert!(!store.activate_version(&name, 9).await.unwrap(), "no version 9");
    assert!(!store.activate_version(&unique("nope"), 1).await.unwrap(), "no such function");
    assert_eq!(store.get_function(&name).await.unwrap().unwrap().active_version, 1);
    // A publish after a rollback numbers on from the newest version.
    assert_eq!(store.publish_version(&m, &text, b"three", "sha-3").await.unwrap().version, 3);

    let inv = new_inv(&name, 3);
    store.create_invocation(&inv).await.unwrap();
    let refused = |e: StoreError, what: &str| match e {
        StoreError::Conflict(m) => assert!(m.contains(what), "{m:?} should say {what:?}"),
        other => panic!("a delete with {what} should be a conflict: {other:?}"),
    };
    refused(store.delete_function(&name).await.unwrap_err(), "1 open invocation");
    assert_eq!(store.claim(&inv, 1, "w", now_ms()).await.unwrap(), Claim::Run);
    refused(store.delete_function(&name).await.unwrap_err(), "1 open invocation");
    assert!(store.complete(inv.id, &outcome(Status::Succeeded, "w", 1)).await.unwrap());
    // A batch of another function fanning in to this one keeps it too.
    let (other, other_text) = manifest(&unique("rb-items"));
    store.publish_version(&other, &other_text, b"pkg", "sha").await.unwrap();
    let batch = Uuid::now_v7();
    let nb = NewBatch {
        id: batch,
        function: other.name.clone(),
        version: 1,
        then: Some(name.clone()),
        created_ms: now_ms(),
    };
    store.create_batch(&nb).await.unwrap();
    refused(store.delete_function(&name).await.unwrap_err(), "1 open batch");
    store.seal_batch(batch, 0, None).await.unwrap();
    refused(store.delete_function(&name).await.unwrap_err(), "1 open batch");
    store.end_batch(batch, BatchState::Done, now_ms()).await.unwrap();
    assert!(store.get_function(&name).await.unwrap().is_some(), "a refused delete removes nothing");

    let setting = Setting { name: "TOKEN".into(), value: "v".into(), secret: false, updated_ms: now_ms() };
    store.set_setting(&name, &setting).await.unwrap();
    let keyed = Uuid::now_v7();
    assert_eq!(store.take_idempotency_key(&name, "k", "sha", keyed, now_ms(), 0).await.unwrap(), None);
    let ticked = new_inv(&name, 3);
    assert!(store.fire_tick(&name, 60_000, &ticked).await.unwrap());
    refused(store.delete_function(&name).await.unwrap_err(), "1 open invocation");
    assert!(store.complete(ticked.id, &outcome(Status::Failed, "w", 0)).await.unwrap());
    assert!(store.delete_function(&name).await.unwrap());
    assert!(store.get_function(&name).await.unwrap().is_none());
    assert!(store.list_versions(&name).await.unwrap().is_empty());
    assert!(store.get_package(&name, 1).await.unwrap().is_none());
    assert!(store.list_settings(&name).await.unwrap().is_empty());
    assert_eq!(store.last_tick(&name).await.unwrap(), None);
    let key_again = store.take_idempotency_key(&name, "k", "sha", Uuid::now_v7(), now_ms(), 0).await.unwrap();
    assert_eq!(key_again, None, "its idempotency keys went with it");
    assert_eq!(store.get_invocation(inv.id).await.unwrap().unwrap().status, Status::Succeeded, "history stays");
    assert!(!store.delete_function(&name).await.unwrap(), "deleted once");
    assert!(!store.list_functions().await.unwrap().iter().any(|f| f.name == name), "not listed once deleted");
    assert!(!store.activate_version(&name, 3).await.unwrap(), "nothing to activate once deleted");
    assert!(store.get_function(&other.name).await.unwrap().is_some(), "other functions stay");
    // Published again, the name numbers on after its last version: (function, version) never
    // names two packages.
    let again = store.publish_version(&m, &text, b"four", "sha-4").await.unwrap();
    assert_eq!(again.version, 4);
    let f = store.get_function(&name).await.unwrap().expect("published again");
    assert_eq!(f.active_version, 4);
    assert!(f.created_ms >= again.created_ms, "first published anew");
    assert_eq!(store.list_versions(&name).await.unwrap().len(), 1);
}

/// Drafts and lines of running work: a version stored without activation leaves the active
/// one (unless there is none: a new or deleted function's draft is what it runs); log lines
/// stored while a run goes on are read at once and kept once when its outcome brings them all.
async fn drafts_and_live_lines(store: &dyn Store) {
    let (m, text) = manifest(&unique("draft"));
    let name = m.name.clone();
    let first = store.store_version(&m, &text, b"one", "sha-1", false).await.unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(store.get_function(&name).await.unwrap().unwrap().active_version, 1, "a new function's draft runs");
    let draft = store.store_version(&m, &text, b"two", "sha-2", false).await.unwrap();
    assert_eq!(draft.version, 2);
    assert_eq!(store.get_function(&name).await.unwrap().unwrap().active_version, 1, "a draft leaves the active one");
    assert_eq!(store.get_package(&name, 2).await.unwrap().as_deref(), Some(&b"two"[..]));
    assert!(store.activate_version(&name, 2).await.unwrap());
    assert_eq!(store.store_version(&m, &text, b"three", "sha-3", true).await.unwrap().version, 3);
    assert_eq!(store.get_function(&name).await.unwrap().unwrap().active_version, 3);
    assert!(store.delete_function(&name).await.unwrap());
    assert_eq!(store.store_version(&m, &text, b"four", "sha-4", false).await.unwrap().version, 4);
    assert_eq!(store.get_function(&name).await.unwrap().unwrap().active_version, 4, "a deleted function's draft runs");

    let inv = new_inv(&name, 4);
    store.create_invocation(&inv).await.unwrap();
    assert_eq!(store.claim(&inv, 1, "w", now_ms()).await.unwrap(), Claim::Run);
    let done = outcome(Status::Succeeded, "w", 3);
    store.append_logs(inv.id, &done.logs[..2]).await.unwrap();
    store.append_logs(inv.id, &done.logs[1..2]).await.unwrap();
    let so_far: Vec<String> = store.get_logs(inv.id).await.unwrap().into_iter().map(|l| l.line).collect();
    assert_eq!(so_far, ["line 0 é", "line 1 é"], "read while it runs, each once");
    assert!(store.complete(inv.id, &done).await.unwrap());
    let all: Vec<(i32, String)> = store.get_logs(inv.id).await.unwrap().into_iter().map(|l| (l.seq, l.line)).collect();
    assert_eq!(
        all,
        [(0, "line 0 é".into()), (1, "line 1 é".into()), (2, "line 2 é".into())],
        "the outcome's lines, once"
    );

    // Cancel: queued or running ones only; a run's outcome is not stored over it.
    let (queued, running) = (new_inv(&name, 4), new_inv(&name, 4));
    store.create_invocation(&queued).await.unwrap();
    store.create_invocation(&running).await.unwrap();
    assert_eq!(store.claim(&running, 1, "w", now_ms()).await.unwrap(), Claim::Run);
    for inv in [&queued, &running] {
        assert_eq!(store.cancel_invocation(inv.id, now_ms()).await.unwrap(), Some(true));
        let got = store.get_invocation(inv.id).await.unwrap().unwrap();
        assert_eq!(got.status, Status::Cancelled);
        assert!(got.finished_ms.is_some());
    }
    assert!(
        !store.complete(running.id, &outcome(Status::Succeeded, "w", 1)).await.unwrap(),
        "no outcome over a cancel"
    );
    assert_eq!(store.get_invocation(running.id).await.unwrap().unwrap().status, Status::Cancelled);
    assert_eq!(store.claim(&queued, 1, "w", now_ms()).await.unwrap(), Claim::AlreadyFinal(Status::Cancelled));
    assert_eq!(store.cancel_invocation(running.id, now_ms()).await.unwrap(), Some(false), "final already");
    assert_eq!(store.cancel_invocation(inv.id, now_ms()).await.unwrap(), Some(false), "succeeded already");
    assert_eq!(store.cancel_invocation(Uuid::now_v7(), now_ms()).await.unwrap(), None);

    // Scheduled: queued with its time, in one transaction; others have none.
    let later = new_inv(&name, 4);
    store.create_scheduled(&later, 4_000_000_000_000).await.unwrap();
    let got = store.get_invocation(later.id).await.unwrap().unwrap();
    assert_eq!((got.status, got.run_at_ms), (Status::Queued, Some(4_000_000_000_000)));
    assert!(matches!(store.create_scheduled(&later, 1).await, Err(StoreError::Conflict(_))), "one record per id");
    assert_eq!(store.get_invocation(later.id).await.unwrap().unwrap().run_at_ms, Some(4_000_000_000_000));
    assert_eq!(store.get_invocation(inv.id).await.unwrap().unwrap().run_at_ms, None);
    let filter = InvocationFilter { function: Some(name.clone()), status: None, limit: 50 };
    let listed = store.list_invocations(&filter).await.unwrap();
    assert_eq!(listed.iter().find(|i| i.id == later.id).and_then(|i| i.run_at_ms), Some(4_000_000_000_000));
    assert_eq!(store.cancel_invocation(later.id, now_ms()).await.unwrap(), Some(true));

    // Run turns: at most `limit` held at once; held again by its holder; given back; a lapsed
    // one taken over.
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (now, until) = (now_ms(), now_ms() + 60_000);
    assert!(store.take_turn(&name, 2, a, now, until).await.unwrap());
    assert!(store.take_turn(&name, 2, b, now, until).await.unwrap());
    assert!(!store.take_turn(&name, 2, c, now, until).await.unwrap(), "both turns are taken");
    assert!(store.take_turn(&name, 2, a, now, until).await.unwrap(), "its holder holds it still");
    assert!(store.take_turn(&unique("other"), 2, c, now, until).await.unwrap(), "turns are per function");
    store.give_turn(&name, a).await.unwrap();
    assert!(store.take_turn(&name, 2, c, now, until).await.unwrap(), "a turn given back is free");
    assert!(!store.take_turn(&name, 2, a, now, until).await.unwrap());
    assert!(store.take_turn(&name, 2, a, until + 1, until + 60_000).await.unwrap(), "a lapsed turn is free again");
}

/// Retention: only final work past its time goes, in chunks, with its children; versions beyond
/// the newest that nothing uses; old ticks but the newest; duties held by one holder at a time.
async fn retention(store: &dyn Store) {
    const DAY: i64 = 86_400_000;
    let (m, text) = manifest(&unique("ret"));
    let name = m.name.clone();
    for v in 1..=4 {
        store.publish_version(&m, &text, format!("pkg{v}").as_bytes(), "sha").await.unwrap();
    }
    assert!(store.activate_version(&name, 2).await.unwrap());
    let old = now_ms() - 10 * DAY;
    // An invocation that ended `at`, with `logs` log lines.
    let ended = |version: i64, status: Status, at: i64, logs: usize| {
        let mut inv = new_inv(&name, version);
        inv.created_ms = at - 1000;
        let mut o = outcome(status, "w", logs);
        o.finished_ms = at;
        (inv, o)
    };
    let record = |inv: NewInvocation, o: Outcome| async move {
        store.create_invocation(&inv).await.unwrap();
        assert_eq!(store.claim(&inv, 1, "w", inv.created_ms).await.unwrap(), Claim::Run);
        assert!(store.complete(inv.id, &o).await.unwrap());
        inv.id
    };

    // Versions: 3 goes; 1 is used by a queued invocation, 2 is active, 4 is the newest.
    let queued_v1 = new_inv(&name, 1);
    store.create_invocation(&NewInvocation { created_ms: old, ..queued_v1.clone() }).await.unwrap();
    let activated = store.get_function(&name).await.unwrap().unwrap().updated_ms;
    assert_eq!(store.purge_versions(&name, 1, activated).await.unwrap(), 0, "none just after an activation");
    assert_eq!(store.purge_versions(&name, 1, now_ms() + 1).await.unwrap(), 1);
    let versions = |vs: Vec<warren_store::FunctionVersion>| vs.iter().map(|v| v.version).collect::<Vec<_>>();
    assert_eq!(versions(store.list_versions(&name).await.unwrap()), [4, 2, 1], "in use, active, newest");
    assert_eq!(store.purge_versions(&name, 0, now_ms() + 1).await.unwrap(), 0, "keep 0 keeps all");

    // Invocations past their time go with their logs and attempts; the rest stay.
    let mut gone = Vec::new();
    for i in 0..5 {
        let (inv, o) = ended(2, Status::Succeeded, old + i, if i == 0 { 3 } else { 0 });
        gone.push(record(inv, o).await);
    }
    let (inv, o) = ended(2, Status::Succeeded, now_ms(), 1);
    let recent = record(inv, o).await;
    let (inv, o) = ended(2, Status::Failed, old, 1);
    let failed_old = record(inv, o).await;
    let (inv, o) = ended(2, Status::TimedOut, old, 0);
    let timed_out_old = record(inv, o).await;
    let (inv, mut o) = ended(2, Status::Succeeded, old, 0);
    o.deliveries = vec![NewDelivery { output: 0, target: "http x".into() }];
    let delivering = record(inv, o).await;
    let (inv, o) = ended(2, Status::Dead, old, 0);
    let replayed = record(inv, o).await;
    assert!(store.replay(replayed).await.unwrap().is_some());
    let (other, other_text) = manifest(&unique("ret-other"));
    store.publish_version(&other, &other_text, b"p", "sha").await.unwrap();
    let mut foreign = new_inv(&other.name, 1);
    foreign.created_ms = old - 1000;
    let mut fo = outcome(Status::Succeeded, "w", 0);
    fo.finished_ms = old;
    let foreign = record(foreign, fo).await;

    let cutoff = now_ms() - 7 * DAY;
    let mut removed = Purged::default();
    loop {
        let p = store.purge_invocations(&name, true, cutoff, 2).await.unwrap();
        assert!(p.invocations <= 2, "a chunk holds at most the limit: {p:?}");
        if p.is_empty() {
            break;
        }
        removed += p;
    }
    assert_eq!((removed.invocations, removed.log_lines, removed.batches), (5, 3, 0));
    for id in &gone {
        assert!(store.get_invocation(*id).await.unwrap().is_none());
        assert!(store.get_logs(*id).await.unwrap().is_empty());
        assert!(store.list_attempts(*id).await.unwrap().is_empty());
    }
    for id in [recent, failed_old, timed_out_old, delivering, replayed, foreign, queued_v1.id] {
        assert!(store.get_invocation(id).await.unwrap().is_some(), "{id} must stay");
    }
    let p = store.purge_invocations(&name, false, cutoff, 100).await.unwrap();
    assert_eq!((p.invocations, p.log_lines), (2, 1), "the failed and the timed out one");
    assert!(store.get_invocation(failed_old).await.unwrap().is_none());
    assert!(store.get_invocation(timed_out_old).await.unwrap().is_none());
    assert_eq!(store.get_invocation(replayed).await.unwrap().unwrap().status, Status::Queued, "not final: stays");
    assert_eq!(store.get_invocation(queued_v1.id).await.unwrap().unwrap().status, Status::Queued);
    assert!(store.purge_invocations(&name, true, now_ms() + DAY, 100).await.unwrap().invocations >= 1);
    assert!(store.get_invocation(delivering).await.unwrap().is_some(), "a pending delivery keeps it");
    store.record_delivery(delivering, 0, DeliveryStatus::Delivered, 1, None, 0).await.unwrap();
    assert_eq!(store.purge_invocations(&name, true, cutoff, 100).await.unwrap().invocations, 1);
    assert!(store.list_deliveries(delivering).await.unwrap().is_empty(), "its deliveries went with it");
    // The queued one ends: version 1 is no longer used.
    assert!(store.claim(&queued_v1, 1, "w", now_ms()).await.is_ok());
    assert!(store.complete(queued_v1.id, &outcome(Status::Succeeded, "w", 0)).await.unwrap());
    assert_eq!(store.purge_versions(&name, 1, now_ms() + 1).await.unwrap(), 1);
    assert_eq!(versions(store.list_versions(&name).await.unwrap()), [4, 2]);

    // Batches: an ended one goes item by item, then itself; an open one is not touched.
    let ended_batch = Uuid::now_v7();
    let nb = NewBatch { id: ended_batch, function: name.clone(), version: 2, then: None, created_ms: old - 5000 };
    store.create_batch(&nb).await.unwrap();
    let items: Vec<NewInvocation> = (0..3).map(|_| new_inv(&name, 2)).collect();
    store.add_batch_items(ended_batch, &items).await.unwrap();
    store.seal_batch(ended_batch, 3, None).await.unwrap();
    let open_batch = Uuid::now_v7();
    store.create_batch(&NewBatch { id: open_batch, ..nb.clone() }).await.unwrap();
    let open_items: Vec<NewInvocation> = (0..2).map(|_| new_inv(&name, 2)).collect();
    store.add_batch_items(open_batch, &open_items).await.unwrap();
    store.seal_batch(open_batch, 2, None).await.unwrap();
    for inv in items.iter().chain(&open_items) {
        assert_eq!(store.claim(inv, 1, "w", old).await.unwrap(), Claim::Run);
        let mut o = outcome(Status::Succeeded, "w", 1);
        o.finished_ms = old;
        assert!(store.complete(inv.id, &o).await.unwrap());
    }
    store.end_batch(ended_batch, BatchState::Done, old).await.unwrap();
    let first = store.purge_batches(&name, cutoff, 2).await.unwrap();
    assert_eq!((first.invocations, first.log_lines, first.batches), (2, 2, 0));
    let second = store.purge_batches(&name, cutoff, 2).await.unwrap();
    assert_eq!((second.invocations, second.batches), (1, 1));
    assert!(store.purge_batches(&name, cutoff, 2).await.unwrap().is_empty());
    assert!(store.get_batch(ended_batch).await.unwrap().is_none());
    let still = store.get_batch(open_batch).await.unwrap().expect("the open batch stays");
    assert_eq!(still.counts["succeeded"], 2);
    for inv in &open_items {
        assert!(store.get_invocation(inv.id).await.unwrap().is_some());
    }
    assert!(store.get_invocation(items[0].id).await.unwrap().is_none());

    // Ticks: old ones go, never the newest.
    let t0 = 1_600_000_000_000;
    for k in 0..3 {
        assert!(store.fire_tick(&name, t0 + k * 1000, &new_inv(&name, 2)).await.unwrap());
    }
    assert_eq!(store.purge_ticks(&name, now_ms(), 1).await.unwrap(), 1);
    assert_eq!(store.purge_ticks(&name, now_ms(), 10).await.unwrap(), 1);
    assert_eq!(store.purge_ticks(&name, now_ms(), 10).await.unwrap(), 0);
    assert_eq!(store.last_tick(&name).await.unwrap(), Some(t0 + 2000));

    // Subjects: every function, a deleted one without a manifest.
    let (gone_fn, gone_text) = manifest(&unique("ret-deleted"));
    store.publish_version(&gone_fn, &gone_text, b"p", "sha").await.unwrap();
    assert!(store.delete_function(&gone_fn.name).await.unwrap());
    let subjects = store.retention_subjects().await.unwrap();
    assert!(subjects.contains(&(name.clone(), Some(text.clone()))));
    assert!(subjects.contains(&(gone_fn.name.clone(), None)));

    // Duties: one holder at a time; a lapsed lease is taken over; only the holder reports.
    let duty = unique("duty");
    assert!(store.take_duty(&duty, "a", 60_000).await.unwrap());
    assert!(!store.take_duty(&duty, "b", 60_000).await.unwrap());
    assert!(store.take_duty(&duty, "a", 0).await.unwrap(), "the holder renews");
    let mut tries = 0;
    while !store.take_duty(&duty, "b", 60_000).await.unwrap() {
        tries += 1;
        assert!(tries < 1000, "a lapsed duty is taken over");
        tokio::task::yield_now().await;
    }
    assert!(!store.take_duty(&duty, "a", 60_000).await.unwrap());
    store.report_duty(&duty, "b", "{\"n\":1}", 42).await.unwrap();
    store.report_duty(&duty, "a", "{\"n\":2}", 43).await.unwrap();
    let d = store.get_duty(&duty).await.unwrap().unwrap();
    assert_eq!((d.holder.as_str(), d.report.as_deref(), d.report_ms), ("b", Some("{\"n\":1}"), Some(42)));
    assert!(store.get_duty(&unique("no-duty")).await.unwrap().is_none());
}

/// Pauses: a paused function is listed as held and says so; a resume keeps the hold until a
/// drain ends it, and only a drain of the same resume; a due resume only once due.
async fn pauses(store: &dyn Store) {
    let (m, text) = manifest(&unique("pz"));
    let name = m.name.clone();
    store.publish_version(&m, &text, b"p", "sha").await.unwrap();
    let held = |holds: Vec<warren_store::Hold>| holds.into_iter().find(|h| h.function == name);
    assert_eq!(held(store.holds().await.unwrap()), None);
    assert!(!store.pause_function(&unique("nope"), 1000, None).await.unwrap());
    assert!(!store.resume_function(&name, 1000, false).await.unwrap(), "not paused");
    assert!(store.pause_function(&name, 1000, Some(5000)).await.unwrap());
    let f = store.get_function(&name).await.unwrap().unwrap();
    assert_eq!((f.paused_ms, f.resume_at_ms), (Some(1000), Some(5000)));
    // Paused again: the start stays, the end moves.
    assert!(store.pause_function(&name, 2000, Some(9000)).await.unwrap());
    let h = held(store.holds().await.unwrap()).expect("held");
    assert_eq!((h.paused_ms, h.resume_at_ms, h.since_ms), (Some(1000), Some(9000), 1000));
    assert!(!store.drained(&name, 1000).await.unwrap(), "a paused function's hold stays");
    assert!(!store.resume_function(&name, 8999, true).await.unwrap(), "not due yet");
    assert!(store.resume_function(&name, 9000, true).await.unwrap(), "due");
    let f = store.get_function(&name).await.unwrap().unwrap();
    assert_eq!((f.paused_ms, f.resume_at_ms), (None, None));
    let h = held(store.holds().await.unwrap()).expect("still held until drained");
    assert_eq!((h.paused_ms, h.since_ms), (None, 9000));
    // A pause and resume in between: the older drain does not end the newer hold.
    assert!(store.pause_function(&name, 10_000, None).await.unwrap());
    assert!(store.resume_function(&name, 11_000, false).await.unwrap());
    assert!(!store.drained(&name, 9000).await.unwrap());
    // Something set aside after the resume: the hold starts again from then.
    store.mark_held(&name, 11_500).await.unwrap();
    assert!(!store.drained(&name, 11_000).await.unwrap());
    assert_eq!(held(store.holds().await.unwrap()).map(|h| (h.paused_ms, h.since_ms)), Some((None, 11_500)));
    assert!(store.drained(&name, 11_500).await.unwrap());
    assert_eq!(held(store.holds().await.unwrap()), None);
    store.mark_held(&name, 11_600).await.unwrap();
    assert_eq!(held(store.holds().await.unwrap()).map(|h| h.since_ms), Some(11_600), "a hold reopened");
    assert!(store.drained(&name, 11_600).await.unwrap());
    assert!(store.list_functions().await.unwrap().iter().any(|f| f.name == name && f.paused_ms.is_none()));
    // Deleted while paused, then published again: it starts unpaused.
    assert!(store.pause_function(&name, 12_000, None).await.unwrap());
    assert!(store.delete_function(&name).await.unwrap());
    assert_eq!(held(store.holds().await.unwrap()), None);
    store.publish_version(&m, &text, b"p2", "sha").await.unwrap();
    assert_eq!(store.get_function(&name).await.unwrap().unwrap().paused_ms, None);
}

/// Idempotency keys: taken once per function; a repeat gets the first invocation and its
/// body's digest; past the window, or once freed, the key is taken anew.
async fn idempotency_keys(store: &dyn Store) {
    let (f, g) = (unique("idem"), unique("idem"));
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let now = now_ms();
    let window = now - 60_000;
    assert_eq!(store.take_idempotency_key(&f, "k1", "sha-a", a, now, window).await.unwrap(), None);
    let repeat = store.take_idempotency_key(&f, "k1", "sha-b", b, now, window).await.unwrap();
    assert_eq!(repeat, Some((a, "sha-a".to_string())), "the first invocation, with its body's digest");
    assert_eq!(store.take_idempotency_key(&g, "k1", "sha-b", b, now, window).await.unwrap(), None, "per function");
    // Freed only by the invocation it names.
    store.forget_idempotency_key(&f, "k1", b).await.unwrap();
    assert_eq!(store.take_idempotency_key(&f, "k1", "sha-c", c, now, window).await.unwrap().map(|r| r.0), Some(a));
    store.forget_idempotency_key(&f, "k1", a).await.unwrap();
    assert_eq!(store.take_idempotency_key(&f, "k1", "sha-c", c, now, window).await.unwrap(), None);
    // Past the window it names nothing any more.
    let later = now + 120_000;
    assert_eq!(store.take_idempotency_key(&f, "k1", "sha-a", a, later, later - 60_000).await.unwrap(), None);
    assert_eq!(
        store.take_idempotency_key(&f, "k1", "sha-x", b, later, later - 60_000).await.unwrap(),
        Some((a, "sha-a".to_string()))
    );
    // Expired keys are removed in chunks; keys within the window stay.
    let h = unique("idem");
    for (k, at) in [("old-1", now - 90_000), ("old-2", now - 80_000), ("new", now)] {
        assert_eq!(store.take_idempotency_key(&h, k, "sha", Uuid::now_v7(), at, at - 60_000).await.unwrap(), None);
    }
    let mut removed = 0;
    while let n @ 1.. = store.expire_idempotency_keys(now - 60_000, 1).await.unwrap() {
        assert_eq!(n, 1, "one per chunk");
        removed += n;
    }
    assert!(removed >= 2, "both old keys removed ({removed})");
    let kept = store.take_idempotency_key(&h, "new", "sha-other", Uuid::now_v7(), now, now - 60_000).await.unwrap();
    assert!(kept.is_some(), "a key within its window stays");
    let old = store.take_idempotency_key(&h, "old-1", "sha-other", Uuid::now_v7(), now, now - 60_000).await.unwrap();
    assert_eq!(old, None, "an expired key is gone");
    // Concurrent takers of one key: exactly one gets it.
    let key = unique("race");
    let ids: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    let takes = ids.iter().map(|id| store.take_idempotency_key(&f, &key, "sha", *id, now, window));
    let results = futures_util::future::join_all(takes).await;
    let winners: Vec<Uuid> =
        ids.iter().zip(&results).filter(|(_, r)| r.as_ref().unwrap().is_none()).map(|(id, _)| *id).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(results.iter().all(|r| r.as_ref().unwrap().as_ref().is_none_or(|(id, _)| *id == winners[0])));
}

async fn conformance(store: Arc<dyn Store>) {
    keys_conform(&*store).await;
    idempotency_keys(&*store).await;
    rollback_and_removal(&*store).await;
    drafts_and_live_lines(&*store).await;
    retention(&*store).await;
    pauses(&*store).await;
    // Versions: immutable, numbered from 1, the newest active, atomically.
    let name = unique("fn");
    let (m, text) = manifest(&name);
    let v1 = store.publish_version(&m, &text, b"package-one", "sha-one").await.unwrap();
    let v2 = store.publish_version(&m, &text, b"package-two", "sha-two").await.unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    let f = store.get_function(&name).await.unwrap().expect("function exists");
    assert_eq!(f.active_version, 2);
    assert_eq!(store.get_package(&name, 1).await.unwrap().as_deref(), Some(&b"package-one"[..]));
    assert_eq!(store.get_version(&name, 2).await.unwrap().unwrap().sha256, "sha-two");
    assert_eq!(store.get_version(&name, 2).await.unwrap().unwrap().manifest, text);
    assert!(store.get_version(&name, 3).await.unwrap().is_none());
    assert!(store.get_function(&unique("nope")).await.unwrap().is_none());
    let versions: Vec<i64> = store.list_versions(&name).await.unwrap().iter().map(|v| v.version).collect();
    assert_eq!(versions, vec![2, 1]);
    assert!(store.list_functions().await.unwrap().iter().any(|f| f.name == name));

    // Concurrent publishers of one function get distinct versions.
    let racer = unique("race");
    let (rm, rtext) = manifest(&racer);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (s, rm, rtext) = (store.clone(), rm.clone(), rtext.clone());
        tasks.push(tokio::spawn(async move {
            s.publish_version(&rm, &rtext, b"p", &format!("sha{i}")).await.unwrap().version
        }));
    }
    let mut got: Vec<i64> = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    got.sort();
    assert_eq!(got, vec![1, 2, 3, 4]);
    assert_eq!(store.get_function(&racer).await.unwrap().unwrap().active_version, 4);

    // An invocation: queued, claimed, completed once with its logs.
    let inv = new_inv(&name, 2);
    store.create_invocation(&inv).await.unwrap();
    assert!(store.create_invocation(&inv).await.is_err(), "the same id twice must be refused");
    let got = store.get_invocation(inv.id).await.unwrap().unwrap();
    assert_eq!((got.status, got.attempts, got.payload.clone()), (Status::Queued, 0, inv.payload.clone()));
    assert_eq!(store.claim(&inv, 1, "w1", now_ms()).await.unwrap(), Claim::Run);
    let got = store.get_invocation(inv.id).await.unwrap().unwrap();
    assert_eq!((got.status, got.worker.as_deref(), got.attempts), (Status::Running, Some("w1"), 1));
    assert!(got.started_ms.is_some());

    // 450 lines: more than one multi-row insert on every backend.
    assert!(store.complete(inv.id, &outcome(Status::Succeeded, "w1", 450)).await.unwrap());
    assert!(!store.complete(inv.id, &outcome(Status::Failed, "w2", 3)).await.unwrap(), "second outcome must lose");
    let got = store.get_invocation(inv.id).await.unwrap().unwrap();
    assert_eq!(got.status, Status::Succeeded);
    assert_eq!(got.result.as_deref(), Some(&b"result-of-w1"[..]));
    assert_eq!(got.worker.as_deref(), Some("w1"));
    assert!(got.error.is_none());
    assert!(got.finished_ms.is_some());
    let logs = store.get_logs(inv.id).await.unwrap();
    assert_eq!(logs.len(), 450, "only the winner's lines are stored");
    assert!(logs.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(logs[7].line, "line 7 é");
    let attempts = store.list_attempts(inv.id).await.unwrap();
    let summary: Vec<(i32, Status, &str)> = attempts.iter().map(|a| (a.attempt, a.status, a.worker.as_str())).collect();
    assert_eq!(summary, vec![(1, Status::Succeeded, "w1")], "the final attempt is listed once");
    assert_eq!(attempts[0].finished_ms, got.finished_ms.unwrap());

    // An invocation run without a claim first (the worker's fast path): the outcome brings its
    // start time and the version that ran.
    let unclaimed = new_inv(&name, 1);
    store.create_invocation(&unclaimed).await.unwrap();
    assert!(store.list_attempts(unclaimed.id).await.unwrap().is_empty(), "a queued invocation has no attempt yet");
    let started = now_ms() - 5;
    let ran = Outcome { started_ms: Some(started), version: Some(2), ..outcome(Status::Succeeded, "w4", 1) };
    assert!(store.complete(unclaimed.id, &ran).await.unwrap());
    let got = store.get_invocation(unclaimed.id).await.unwrap().unwrap();
    assert_eq!((got.status, got.started_ms, got.version, got.attempts), (Status::Succeeded, Some(started), 2, 1));
    assert_eq!(store.list_attempts(unclaimed.id).await.unwrap().len(), 1);

    // Recorded failed without running ("not queued": its publish was not confirmed; attempts
    // 0), yet its message got through after all: the real run's outcome replaces that record,
    // through `complete` and `complete_many` alike, and a redelivery's claim runs it. Once it
    // has a real outcome it is final like any other, and a late "not queued" loses.
    let (lm, ltext) = manifest(&unique("lost"));
    store.publish_version(&lm, &ltext, b"pkg", "sha").await.unwrap();
    let lost = new_inv(&lm.name, 1);
    store.create_invocation(&lost).await.unwrap();
    let not_queued = |why: &str| Outcome::unrun(Status::Failed, 0, format!("not queued: {why}"));
    assert!(store.complete(lost.id, &not_queued("no confirm")).await.unwrap());
    assert_eq!(store.get_invocation(lost.id).await.unwrap().unwrap().status, Status::Failed);
    assert!(store.complete(lost.id, &outcome(Status::Succeeded, "w5", 0)).await.unwrap(), "the run's outcome wins");
    let got = store.get_invocation(lost.id).await.unwrap().unwrap();
    assert_eq!((got.status, got.attempts, got.worker.as_deref()), (Status::Succeeded, 1, Some("w5")));
    assert!(!store.complete(lost.id, &not_queued("late")).await.unwrap(), "a late 'not queued' loses");
    let lost2 = new_inv(&lm.name, 1);
    store.create_invocation(&lost2).await.unwrap();
    assert!(store.complete(lost2.id, &not_queued("no confirm")).await.unwrap());
    assert_eq!(store.claim(&lost2, 1, "w6", now_ms()).await.unwrap(), Claim::Run, "a redelivery of it runs");
    assert_eq!(store.complete_many(&[(lost2.id, outcome(Status::Succeeded, "w6", 0))]).await.unwrap(), vec![true]);
    assert_eq!(store.get_invocation(lost2.id).await.unwrap().unwrap().status, Status::Succeeded);
    // A real failure (attempts 1) is final: nothing replaces it.
    let really = new_inv(&lm.name, 1);
    store.create_invocation(&really).await.unwrap();
    assert!(store.complete(really.id, &outcome(Status::Failed, "w7", 0)).await.unwrap());
    assert!(!store.complete(really.id, &outcome(Status::Succeeded, "w8", 0)).await.unwrap());
    assert_eq!(store.claim(&really, 2, "w8", now_ms()).await.unwrap(), Claim::AlreadyFinal(Status::Failed));

    // A redelivery of a final invocation is recognised.
    assert_eq!(store.claim(&inv, 2, "w3", now_ms()).await.unwrap(), Claim::AlreadyFinal(Status::Succeeded));
    assert_eq!(store.get_invocation(inv.id).await.unwrap().unwrap().attempts, 1);

    // A message whose record was never created gets one when claimed.
    let stray = new_inv(&name, 1);
    assert_eq!(store.claim(&stray, 1, "w1", now_ms()).await.unwrap(), Claim::Run);
    assert_eq!(store.get_invocation(stray.id).await.unwrap().unwrap().status, Status::Running);

    // Racing completions: exactly one wins.
    let raced = new_inv(&name, 1);
    store.create_invocation(&raced).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = store.clone();
        let id = raced.id;
        tasks.push(tokio::spawn(async move {
            s.complete(id, &outcome(if i % 2 == 0 { Status::Succeeded } else { Status::TimedOut }, &format!("w{i}"), 2))
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += t.await.unwrap() as usize;
    }
    assert_eq!(winners, 1);
    assert_eq!(store.get_logs(raced.id).await.unwrap().len(), 2);
    let final_status = store.get_invocation(raced.id).await.unwrap().unwrap().status;
    assert!(matches!(final_status, Status::Succeeded | Status::TimedOut));

    // Binary-safe payloads and missing results.
    let failed = new_inv(&name, 1);
    store.create_invocation(&failed).await.unwrap();
    let mut o = outcome(Status::Failed, "w1", 0);
    o.result = None;
    assert!(store.complete(failed.id, &o).await.unwrap());
    let got = store.get_invocation(failed.id).await.unwrap().unwrap();
    assert_eq!((got.status, got.result, got.error.as_deref()), (Status::Failed, None, Some("it broke")));
    assert!(store.get_invocation(Uuid::now_v7()).await.unwrap().is_none());

    // Retries: a failed attempt is recorded and the next one scheduled; a stale copy of the
    // failed attempt is then superseded; the last attempt ends it dead; a replay revives it.
    let retried = new_inv(&name, 1);
    store.create_invocation(&retried).await.unwrap();
    assert_eq!(store.claim(&retried, 1, "w1", now_ms()).await.unwrap(), Claim::Run);
    let mut first = outcome(Status::Failed, "w1", 2);
    first.error = Some("first failure".into());
    assert!(store.retry_later(retried.id, &first).await.unwrap());
    let got = store.get_invocation(retried.id).await.unwrap().unwrap();
    assert_eq!((got.status, got.attempts, got.result.clone()), (Status::Queued, 2, None));
    assert_eq!(store.claim(&retried, 1, "w9", now_ms()).await.unwrap(), Claim::Superseded);
    assert!(!store.retry_later(retried.id, &first).await.unwrap(), "the same attempt cannot fail twice");
    assert_eq!(store.claim(&retried, 2, "w2", now_ms()).await.unwrap(), Claim::Run);
    let mut second = outcome(Status::Dead, "w2", 1);
    second.attempt = 2;
    second.logs[0].attempt = 2;
    second.error = Some("gave up".into());
    assert!(!store.complete(retried.id, &Outcome { attempt: 1, ..second.clone() }).await.unwrap(), "stale attempt");
    assert!(store.complete(retried.id, &second).await.unwrap());
    let attempts = store.list_attempts(retried.id).await.unwrap();
    let summary: Vec<(i32, Status, Option<&str>)> =
        attempts.iter().map(|a| (a.attempt, a.status, a.error.as_deref())).collect();
    assert_eq!(summary, vec![(1, Status::Failed, Some("first failure")), (2, Status::Dead, Some("gave up"))]);
    let logs = store.get_logs(retried.id).await.unwrap();
    assert_eq!(logs.iter().map(|l| l.attempt).collect::<Vec<_>>(), vec![1, 1, 2]);
    assert_eq!(store.replay(retried.id).await.unwrap(), Some(3));
    assert_eq!(store.replay(retried.id).await.unwrap(), None, "not dead any more");
    let got = store.get_invocation(retried.id).await.unwrap().unwrap();
    assert_eq!((got.status, got.attempts), (Status::Queued, 3));
    assert_eq!(store.claim(&retried, 3, "w3", now_ms()).await.unwrap(), Claim::Run);
    let after_replay: Vec<(i32, Status)> =
        store.list_attempts(retried.id).await.unwrap().iter().map(|a| (a.attempt, a.status)).collect();
    assert_eq!(after_replay, vec![(1, Status::Failed), (2, Status::Dead)], "a replay keeps the dead attempt's record");
    assert!(store.complete(retried.id, &Outcome { attempt: 3, ..outcome(Status::Succeeded, "w3", 0) }).await.unwrap());
    let after_third: Vec<(i32, Status)> =
        store.list_attempts(retried.id).await.unwrap().iter().map(|a| (a.attempt, a.status)).collect();
    assert_eq!(after_third, vec![(1, Status::Failed), (2, Status::Dead), (3, Status::Succeeded)]);
    assert_eq!(store.replay(Uuid::now_v7()).await.unwrap(), None);

    // Listing, newest first, filtered.
    let all = store
        .list_invocations(&InvocationFilter { function: Some(name.clone()), status: None, limit: 100 })
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| (w[0].created_ms, w[0].id) >= (w[1].created_ms, w[1].id)));
    let failed_only = store
        .list_invocations(&InvocationFilter { function: Some(name.clone()), status: Some(Status::Failed), limit: 100 })
        .await
        .unwrap();
    assert_eq!(failed_only.iter().map(|i| i.id).collect::<Vec<_>>(), vec![failed.id]);
    let limited = store.list_invocations(&InvocationFilter { function: None, status: None, limit: 2 }).await.unwrap();
    assert_eq!(limited.len(), 2);

    // Settings: upsert, list by name, delete.
    let sname = unique("fn");
    let s = |name: &str, value: &str, secret: bool| Setting {
        name: name.into(),
        value: value.into(),
        secret,
        updated_ms: now_ms(),
    };
    store.set_setting(&sname, &s("B_KEY", "one", false)).await.unwrap();
    store.set_setting(&sname, &s("A_KEY", "enc:v1:00", true)).await.unwrap();
    store.set_setting(&sname, &s("B_KEY", "two", false)).await.unwrap();
    let listed = store.list_settings(&sname).await.unwrap();
    let summary: Vec<(&str, &str, bool)> =
        listed.iter().map(|x| (x.name.as_str(), x.value.as_str(), x.secret)).collect();
    assert_eq!(summary, vec![("A_KEY", "enc:v1:00", true), ("B_KEY", "two", false)]);
    assert!(store.delete_setting(&sname, "A_KEY").await.unwrap());
    assert!(!store.delete_setting(&sname, "A_KEY").await.unwrap());
    assert_eq!(store.list_settings(&sname).await.unwrap().len(), 1);
    assert!(store.list_settings(&unique("none")).await.unwrap().is_empty());

    // Workers: heartbeats upsert.
    let wid = unique("worker");
    let mut w = WorkerInfo {
        id: wid.clone(),
        host: "h".into(),
        pools: "default,batch".into(),
        concurrency: 8,
        in_flight: 0,
        version: "0.1.0".into(),
        started_ms: now_ms(),
        last_seen_ms: now_ms(),
        state: WorkerState::Running,
    };
    store.heartbeat(&w).await.unwrap();
    w.in_flight = 5;
    w.state = WorkerState::Draining;
    store.heartbeat(&w).await.unwrap();
    let listed: Vec<WorkerInfo> = store.list_workers().await.unwrap().into_iter().filter(|x| x.id == wid).collect();
    assert_eq!(listed, vec![w]);

    // Counts per minute of creation and current status, in [since, until). A random minute of
    // 1970-1979, so that other runs sharing the database count nothing in it.
    let base = (1 + (Uuid::new_v4().as_u128() % 5_000_000) as i64) * 60_000;
    let at = |created_ms: i64| NewInvocation { created_ms, ..new_inv(&name, 1) };
    for (offset, status) in [
        (1_000, Some(Status::Succeeded)),
        (2_000, Some(Status::Succeeded)),
        (59_999, None),
        (60_000, Some(Status::Failed)),
        (-1, Some(Status::Succeeded)),
        (180_000, None),
    ] {
        let inv = at(base + offset);
        store.create_invocation(&inv).await.unwrap();
        if let Some(st) = status {
            assert_eq!(store.claim(&inv, 1, "wm", now_ms()).await.unwrap(), Claim::Run);
            assert!(store.complete(inv.id, &outcome(st, "wm", 0)).await.unwrap());
        }
    }
    let counts = store.count_per_minute(base, base + 180_000).await.unwrap();
    let mc = |minute_ms: i64, status: Status, count: i64| MinuteCount { minute_ms, status, count };
    assert_eq!(
        counts,
        vec![mc(base, Status::Queued, 1), mc(base, Status::Succeeded, 2), mc(base + 60_000, Status::Failed, 1)]
    );
    assert!(store.count_per_minute(base + 120_000, base + 180_000).await.unwrap().is_empty());

    batches_ticks_and_deliveries(&*store).await;
    group_commit(&*store).await;
    leases(&*store).await;
}

/// Lists lapsed leases until all of `ids` are among them (a lease of 0 ms runs out once the
/// store's clock has moved on by a millisecond).
async fn eventually_lapsed(store: &dyn Store, ids: &[&str]) -> Vec<(String, i64)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let lapsed = store.lapsed_instances().await.unwrap();
        if ids.iter().all(|id| lapsed.iter().any(|(i, _)| i == id)) {
            return lapsed;
        }
        assert!(std::time::Instant::now() < deadline, "leases of 0 ms not lapsed after 5 s: {lapsed:?}");
        tokio::task::yield_now().await;
    }
}

/// A lapsed management instance's lease: what it recorded `queued` from its settled mark on
/// and never saw claimed becomes failed "not queued", its `submitting` batch runs with the
/// items recorded; its older records, claimed ones and other instances' are untouched.
async fn leases(store: &dyn Store) {
    let (m, text) = manifest(&unique("lease"));
    store.publish_version(&m, &text, b"pkg", "sha").await.unwrap();
    let (gone, alive) = (unique("gone"), unique("alive"));
    let t0 = now_ms();
    store.set_origin(&gone);
    // Before its mark: published and confirmed, perhaps waiting in a long queue.
    let old = NewInvocation { created_ms: t0 - 10_000, ..new_inv(&m.name, 1) };
    store.create_invocation(&old).await.unwrap();
    let (open, open2, claimed) = (new_inv(&m.name, 1), new_inv(&m.name, 1), new_inv(&m.name, 1));
    store.create_invocation(&open).await.unwrap();
    assert!(store.create_invocations(&[open2.clone(), claimed.clone()]).await.into_iter().all(|r| r.unwrap()));
    assert_eq!(store.claim(&claimed, 1, "w-lease", now_ms()).await.unwrap(), Claim::Run);
    let batch = Uuid::now_v7();
    let nb = NewBatch { id: batch, function: m.name.clone(), version: 1, then: None, created_ms: t0 };
    store.create_batch(&nb).await.unwrap();
    let items: Vec<NewInvocation> = (0..3).map(|_| new_inv(&m.name, 1)).collect();
    store.add_batch_items(batch, &items).await.unwrap();
    store.set_origin(&alive);
    let theirs = new_inv(&m.name, 1);
    store.create_invocation(&theirs).await.unwrap();
    let back = unique("back");
    store.set_origin(&back);
    let backs = new_inv(&m.name, 1);
    store.create_invocation(&backs).await.unwrap();

    // Each lease has its own length, counted by the store's clock: 0 ms runs out at once, an
    // hour does not.
    store.instance_alive(&gone, t0 - 5_000, 3_600_000).await.unwrap();
    store.instance_alive(&gone, t0 - 5_000, 0).await.unwrap();
    store.instance_alive(&alive, t0, 3_600_000).await.unwrap();
    store.instance_alive(&back, t0, 0).await.unwrap();
    let lapsed = eventually_lapsed(store, &[&gone, &back]).await;
    assert!(lapsed.contains(&(gone.clone(), t0 - 5_000)), "{lapsed:?}");
    assert!(!lapsed.iter().any(|(i, _)| *i == alive), "a lease within its own length is not lapsed: {lapsed:?}");
    let why = Settled { invocation: "not queued: gone".into(), batch: "the submission stopped: gone".into() };
    // Renewed after it was listed: nothing of it is settled.
    store.instance_alive(&back, t0, 3_600_000).await.unwrap();
    assert_eq!(store.settle_lapsed(&back, t0 - 120_000, now_ms(), &why).await.unwrap(), (0, 0));
    assert_eq!(store.get_invocation(backs.id).await.unwrap().unwrap().status, Status::Queued);
    assert_eq!(store.settle_lapsed(&gone, t0 - 5_000, now_ms(), &why).await.unwrap(), (5, 1));
    for inv in [&open, &open2].into_iter().chain(&items) {
        let r = store.get_invocation(inv.id).await.unwrap().unwrap();
        assert_eq!((r.status, r.attempts, r.error.as_deref()), (Status::Failed, 0, Some("not queued: gone")));
        assert!(r.finished_ms.is_some());
    }
    let status = |id| async move { store.get_invocation(id).await.unwrap().unwrap().status };
    assert_eq!(status(old.id).await, Status::Queued, "recorded before the mark: untouched");
    assert_eq!(status(claimed.id).await, Status::Running, "claimed: a worker has it");
    assert_eq!(status(theirs.id).await, Status::Queued, "another instance's: untouched");
    let b = store.get_batch(batch).await.unwrap().unwrap();
    assert_eq!((b.state.as_str(), b.total, b.error.as_deref()), ("running", 3, Some("the submission stopped: gone")));
    assert!(!store.lapsed_instances().await.unwrap().iter().any(|(i, _)| *i == gone), "lease dropped");
    assert_eq!(store.settle_lapsed(&gone, t0 - 5_000, now_ms(), &why).await.unwrap(), (0, 0), "settled once");
    // The message of a settled one got through after all: its run's outcome replaces the
    // record, fresh (no claim) or claimed first (a batch item, a redelivery).
    assert!(store.complete(open.id, &outcome(Status::Succeeded, "w-lease", 0)).await.unwrap());
    assert_eq!(status(open.id).await, Status::Succeeded);
    assert_eq!(store.claim(&items[0], 1, "w-lease", now_ms()).await.unwrap(), Claim::Run);
    assert!(store.complete(items[0].id, &outcome(Status::Succeeded, "w-lease", 0)).await.unwrap());
    assert_eq!(status(items[0].id).await, Status::Succeeded);
}

/// `complete_many` keeps `complete`'s rules for each entry: first final record wins.
async fn group_commit(store: &dyn Store) {
    let (m, text) = manifest(&unique("group"));
    store.publish_version(&m, &text, b"pkg", "sha").await.unwrap();
    let invs: Vec<NewInvocation> = (0..5).map(|_| new_inv(&m.name, 1)).collect();
    for inv in &invs {
        store.create_invocation(inv).await.unwrap();
        assert_eq!(store.claim(inv, 1, "w", now_ms()).await.unwrap(), Claim::Run);
    }
    // invs[0] is final already; invs[4] appears twice; invs[3] has log lines.
    assert!(store.complete(invs[0].id, &outcome(Status::Failed, "early", 0)).await.unwrap());
    let items = vec![
        (invs[0].id, outcome(Status::Succeeded, "g", 0)),
        (invs[1].id, outcome(Status::Succeeded, "g", 0)),
        (invs[2].id, outcome(Status::TimedOut, "g", 0)),
        (invs[3].id, outcome(Status::Succeeded, "g", 3)),
        (invs[4].id, outcome(Status::Succeeded, "g", 0)),
        (invs[4].id, outcome(Status::Failed, "g2", 0)),
    ];
    let won = store.complete_many(&items).await.unwrap();
    assert_eq!(won[..4], [false, true, true, true]);
    assert!(won[4] ^ won[5], "exactly one of two outcomes of one invocation is kept: {won:?}");
    let get = |i: usize| store.get_invocation(invs[i].id);
    assert_eq!(get(0).await.unwrap().unwrap().status, Status::Failed, "the first final record stays");
    assert_eq!(get(1).await.unwrap().unwrap().result, Some(b"result-of-g".to_vec()));
    assert_eq!(get(2).await.unwrap().unwrap().status, Status::TimedOut);
    assert_eq!(store.get_logs(invs[3].id).await.unwrap().len(), 3);
    assert_eq!(store.list_attempts(invs[1].id).await.unwrap().len(), 1);
    assert_eq!(store.list_attempts(invs[4].id).await.unwrap().len(), 1);

    // Many records at once: an id that exists already is refused alone, and left as it was.
    let fresh: Vec<NewInvocation> = (0..3).map(|_| new_inv(&m.name, 1)).collect();
    let mut batch = fresh.clone();
    batch.insert(1, NewInvocation { payload: b"other".to_vec(), ..invs[1].clone() });
    batch.push(NewInvocation { payload: b"twice".to_vec(), ..fresh[0].clone() });
    let answers: Vec<bool> = store.create_invocations(&batch).await.into_iter().map(|a| a.unwrap()).collect();
    assert_eq!(answers, [true, false, true, true, false], "an id given twice is recorded once");
    assert_eq!(get(1).await.unwrap().unwrap().status, Status::Succeeded, "an existing record is not touched");
    for inv in &fresh {
        let got = store.get_invocation(inv.id).await.unwrap().unwrap();
        assert_eq!((got.status, got.payload.as_slice()), (Status::Queued, inv.payload.as_slice()));
    }
    // Many claims at once keep `claim`'s verdicts: queued runs, final is final, an older attempt
    // than the scheduled one is stale, a record that does not exist is created, and a second
    // copy of one invocation in the same call is not another `Run` for a stale attempt.
    assert!(store.retry_later(fresh[2].id, &outcome(Status::Failed, "w", 0)).await.unwrap());
    let unknown = new_inv(&m.name, 1);
    let claims = [(&fresh[0], 1), (&invs[1], 1), (&fresh[2], 1), (&unknown, 1), (&fresh[1], 2), (&fresh[1], 1)];
    let verdicts = store.claim_many(&claims, "w2", now_ms()).await.unwrap();
    assert_eq!(
        verdicts,
        [
            Claim::Run,
            Claim::AlreadyFinal(Status::Succeeded),
            Claim::Superseded,
            Claim::Run,
            Claim::Run,
            Claim::Superseded
        ]
    );
    let f0 = store.get_invocation(fresh[0].id).await.unwrap().unwrap();
    assert_eq!((f0.status, f0.worker.as_deref()), (Status::Running, Some("w2")));
    assert_eq!(store.get_invocation(unknown.id).await.unwrap().unwrap().status, Status::Running);
    assert_eq!(store.get_invocation(fresh[1].id).await.unwrap().unwrap().attempts, 2);

    // Outcomes that bring their record (synchronous invokes are not recorded before they run):
    // a missing record is made with the outcome; an open one is completed as usual; a final one
    // wins over it; one by one and grouped alike.
    let brings = |inv: &NewInvocation, status: Status, logs: usize| Outcome {
        record: Some(Arc::new(inv.clone())),
        started_ms: Some(now_ms() - 3),
        version: Some(1),
        ..outcome(status, "r", logs)
    };
    let unrecorded: Vec<NewInvocation> = (0..4).map(|_| new_inv(&m.name, 1)).collect();
    let queued = new_inv(&m.name, 1);
    store.create_invocation(&queued).await.unwrap();
    assert!(store.complete(unrecorded[0].id, &brings(&unrecorded[0], Status::Succeeded, 0)).await.unwrap());
    assert!(store.complete(unrecorded[1].id, &brings(&unrecorded[1], Status::Failed, 2)).await.unwrap());
    assert!(!store.complete(unrecorded[0].id, &brings(&unrecorded[0], Status::Failed, 0)).await.unwrap(), "once");
    let many = vec![
        (unrecorded[2].id, brings(&unrecorded[2], Status::Succeeded, 0)),
        (queued.id, brings(&queued, Status::TimedOut, 0)),
        (invs[1].id, brings(&invs[1], Status::Failed, 0)),
        (unrecorded[3].id, brings(&unrecorded[3], Status::Succeeded, 1)),
    ];
    assert_eq!(store.complete_many(&many).await.unwrap(), [true, true, false, true]);
    for (inv, status, logs) in [
        (&unrecorded[0], Status::Succeeded, 0),
        (&unrecorded[1], Status::Failed, 2),
        (&unrecorded[2], Status::Succeeded, 0),
        (&queued, Status::TimedOut, 0),
        (&unrecorded[3], Status::Succeeded, 1),
    ] {
        let got = store.get_invocation(inv.id).await.unwrap().expect("recorded with its outcome");
        assert_eq!((got.status, got.attempts, got.worker.as_deref()), (status, 1, Some("r")), "{}", inv.id);
        assert_eq!((got.payload.as_slice(), got.created_ms), (inv.payload.as_slice(), inv.created_ms));
        assert!(got.started_ms.is_some() && got.finished_ms.is_some());
        assert_eq!(store.get_logs(inv.id).await.unwrap().len(), logs);
        assert_eq!(store.list_attempts(inv.id).await.unwrap().len(), 1);
    }
    assert_eq!(store.get_invocation(invs[1].id).await.unwrap().unwrap().status, Status::Succeeded, "final stays");
    // A failed attempt of an unrecorded invocation that is retried is recorded too.
    let retried = new_inv(&m.name, 1);
    assert!(store.retry_later(retried.id, &brings(&retried, Status::Failed, 0)).await.unwrap());
    let got = store.get_invocation(retried.id).await.unwrap().unwrap();
    assert_eq!((got.status, got.attempts), (Status::Queued, 2));
    assert_eq!(store.list_attempts(retried.id).await.unwrap().len(), 1);
}

/// Batches, timer ticks and output deliveries: the exactly-once rules of issue 4.
async fn batches_ticks_and_deliveries(store: &dyn Store) {
    let (m, text) = manifest(&unique("batch"));
    store.publish_version(&m, &text, b"pkg", "sha").await.unwrap();
    let id = Uuid::now_v7();
    let nb = NewBatch { id, function: m.name.clone(), version: 1, then: Some("report".into()), created_ms: now_ms() };
    store.create_batch(&nb).await.unwrap();
    let items: Vec<NewInvocation> = (0..450).map(|_| new_inv(&m.name, 1)).collect();
    store.add_batch_items(id, &items).await.unwrap();
    assert_eq!(store.get_batch(id).await.unwrap().unwrap().state, BatchState::Submitting);
    assert!(!store.open_batches().await.unwrap().iter().any(|b| b.id == id), "not open while submitting");
    store.seal_batch(id, 450, None).await.unwrap();
    let b = store.get_batch(id).await.unwrap().unwrap();
    assert_eq!((b.total, b.state.as_str(), b.counts["queued"], b.counts["cancelled"]), (450, "running", 450, 0));
    assert_eq!(store.batch_unfinished(id).await.unwrap(), 450);
    assert!(store.batch_has_unfinished(id).await.unwrap());
    for inv in &items[..449] {
        assert_eq!(store.claim(inv, 1, "w", now_ms()).await.unwrap(), Claim::Run);
        assert!(store.complete(inv.id, &outcome(Status::Succeeded, "w", 0)).await.unwrap());
    }
    assert_eq!(store.batch_unfinished(id).await.unwrap(), 1);
    assert!(store.batch_has_unfinished(id).await.unwrap(), "one item left is still unfinished");
    // Results page in id order.
    let first = store.batch_results(id, None, 300, u64::MAX).await.unwrap();
    let rest = store.batch_results(id, Some(first.last().unwrap().id), 300, u64::MAX).await.unwrap();
    assert_eq!(first.len() + rest.len(), 450);
    let mut ids: Vec<_> = first.iter().chain(&rest).map(|r| r.id).collect();
    let sorted = {
        let mut s = ids.clone();
        s.sort();
        s
    };
    assert_eq!(ids, sorted);
    ids.dedup();
    assert_eq!(ids.len(), 450);
    // A page ends before the result that would go past the byte budget (each is
    // "result-of-w", 11 bytes): 30 bytes take three; the first item always comes.
    let budget = store.batch_results(id, None, 300, 30).await.unwrap();
    assert_eq!(budget.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..3].to_vec());
    assert_eq!(store.batch_results(id, None, 300, 1).await.unwrap().len(), 1, "the first item always comes");
    // Cancel: the one queued item is cancelled, never claimable.
    assert_eq!(store.cancel_batch(id, now_ms()).await.unwrap(), Some(1));
    assert_eq!(store.claim(&items[449], 1, "w", now_ms()).await.unwrap(), Claim::AlreadyFinal(Status::Cancelled));
    assert!(store.list_attempts(items[449].id).await.unwrap().is_empty(), "a cancelled item never ran");
    assert_eq!(store.batch_unfinished(id).await.unwrap(), 0);
    assert!(!store.batch_has_unfinished(id).await.unwrap());
    assert!(store.open_batches().await.unwrap().iter().any(|b| b.id == id && b.state == BatchState::Cancelled));
    store.end_batch(id, BatchState::Cancelled, now_ms()).await.unwrap();
    assert!(!store.open_batches().await.unwrap().iter().any(|b| b.id == id));
    assert!(matches!(store.cancel_batch(Uuid::now_v7(), now_ms()).await, Ok(None)));

    // Fan-in: of two instances, one wins.
    let id2 = Uuid::now_v7();
    store.create_batch(&NewBatch { id: id2, ..nb.clone() }).await.unwrap();
    store.seal_batch(id2, 0, None).await.unwrap();
    let f1 = new_inv(&m.name, 1);
    let f2 = new_inv(&m.name, 1);
    assert!(store.begin_fanin(id2, &f1).await.unwrap());
    assert!(!store.begin_fanin(id2, &f2).await.unwrap());
    let b2 = store.get_batch(id2).await.unwrap().unwrap();
    assert_eq!((b2.state.as_str(), b2.followup_invocation), ("finishing", Some(f1.id)));
    assert_eq!(store.get_invocation(f1.id).await.unwrap().unwrap().status, Status::Queued);
    assert!(store.get_invocation(f2.id).await.unwrap().is_none());
    assert!(matches!(store.cancel_batch(id2, now_ms()).await, Err(StoreError::Conflict(_))));

    // Ticks: each fires once.
    let tick = 1_700_000_000_000 + (now_ms() % 1_000_000) * 1000;
    let t1 = new_inv(&m.name, 1);
    assert!(store.fire_tick(&m.name, tick, &t1).await.unwrap());
    assert!(!store.fire_tick(&m.name, tick, &new_inv(&m.name, 1)).await.unwrap());
    assert!(store.fire_tick(&m.name, tick + 1000, &new_inv(&m.name, 1)).await.unwrap());
    assert_eq!(store.last_tick(&m.name).await.unwrap(), Some(tick + 1000));
    assert_eq!(store.last_tick("never-ticked").await.unwrap(), None);
    assert!(store.get_invocation(t1.id).await.unwrap().is_some());

    // Deliveries: stored with the final outcome, leased once, recorded, retried.
    let inv = new_inv(&m.name, 1);
    store.create_invocation(&inv).await.unwrap();
    let mut o = outcome(Status::Succeeded, "w", 2);
    o.deliveries =
        vec![NewDelivery { output: 0, target: "http x".into() }, NewDelivery { output: 1, target: "amqp y".into() }];
    assert!(store.complete(inv.id, &o).await.unwrap());
    let listed = store.list_deliveries(inv.id).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| (d.output, d.status.as_str())).collect::<Vec<_>>(),
        [(0, "pending"), (1, "pending")]
    );
    let far = now_ms() + 10_000_000;
    let taken: Vec<_> = store
        .take_deliveries(far, 60_000, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.invocation == inv.id)
        .collect();
    assert_eq!(taken.len(), 2);
    let again = store.take_deliveries(far, 60_000, 1000).await.unwrap();
    assert!(!again.iter().any(|d| d.invocation == inv.id), "leased deliveries are not taken twice");
    store.record_delivery(inv.id, 0, DeliveryStatus::Delivered, 1, None, far).await.unwrap();
    store.record_delivery(inv.id, 1, DeliveryStatus::Failed, 3, Some("refused"), far).await.unwrap();
    assert_eq!(store.retry_deliveries(inv.id, now_ms()).await.unwrap(), 1);
    let after = store.list_deliveries(inv.id).await.unwrap();
    assert_eq!((after[0].status.as_str(), after[1].status.as_str(), after[1].attempts), ("delivered", "pending", 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    conformance(warren_store::open(&url).await.unwrap()).await;
    // Reopening migrates nothing twice and keeps the data.
    let again = warren_store::open(&url).await.unwrap();
    assert!(!again.list_functions().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conforms() {
    require_services();
    conformance(warren_store::open(&pg_url()).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_opens_migrate_once() {
    require_services();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async { warren_store::open(&pg_url()).await.map(|_| ()) }));
    }
    for t in tasks {
        t.await.unwrap().expect("concurrent open must succeed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a SQL Server: set WARREN_TEST_MSSQL_URL=mssql://sa:PASSWORD@HOST:1433/DB (scripts/test then runs it)"]
async fn mssql_conforms() {
    let url =
        std::env::var("WARREN_TEST_MSSQL_URL").expect("WARREN_TEST_MSSQL_URL must name a SQL Server for this test");
    conformance(warren_store::open(&url).await.unwrap()).await;
}

/// TLS to PostgreSQL: `sslmode=require` encrypts (the server sees an SSL connection from us),
/// and `verify-full` refuses a certificate no trusted authority signed (the local server's is
/// self-signed), so the setting is really applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls() {
    require_services();
    let app = unique("warren_tls_");
    let sep = if pg_url().contains('?') { '&' } else { '?' };
    let store = warren_store::open(&format!("{}{sep}sslmode=require&application_name={app}", pg_url()))
        .await
        .expect("sslmode=require connects (the server must have ssl = on)");
    store.list_functions().await.unwrap();
    let out = std::process::Command::new("psql")
        .arg(pg_url())
        .args(["-Atc", &format!(
            "SELECT bool_and(s.ssl) AND count(*) > 0 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '{app}'"
        )])
        .output()
        .expect("psql is needed to look at the server's side of the connection");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t", "the store's connections are encrypted");
    drop(store);
    let refused = warren_store::open(&format!("{}{sep}sslmode=verify-full", pg_url())).await;
    let e = refused.err().expect("an untrusted certificate is refused under verify-full").to_string();
    assert!(e.contains("cannot open"), "{e}");
}
