//! The webhook endpoint end to end: what is stored, what is refused, and what survives shutdown.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use stripe_inbox::error::Error;
use stripe_inbox::{event::signature, store, time};

use crate::support::{self, event, event_id, TestApp, SECRET};

#[test]
fn valid_events_are_stored_byte_for_byte() {
    let app = TestApp::start();
    for event_type in [
        "payment_intent.succeeded",
        "customer.subscription.updated",
        "made.up.type",
    ] {
        let body = if event_type == "made.up.type" {
            format!(r#"{{"id":"evt_unknown_1","object":"event","type":"{event_type}","created":1700000000,"data":{{"object":{{"id":"xyz_1","object":"xyz"}}}}}}"#).into_bytes()
        } else {
            event(event_type)
        };
        let reply = app.post_signed(&body);
        assert_eq!(reply.status, 200, "{event_type}: {reply:?}");
        assert!(reply.body.contains("\"received\":true"));
        let conn = store::open_read_only(&app.db_path()).unwrap();
        let (stored, kind, deliveries, secret_index, object_id): (
            Vec<u8>,
            String,
            i64,
            i64,
            Option<String>,
        ) = conn
            .query_row(
                "SELECT body, type, deliveries, secret_index, object_id FROM events WHERE id = ?1",
                [event_id(&body)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(stored, body, "the raw bytes are stored exactly");
        assert_eq!(kind, event_type);
        assert_eq!((deliveries, secret_index), (1, 0));
        assert!(object_id.is_some());
    }
    assert_eq!(app.event_count(), 3);
}

#[test]
fn thin_event_is_stored() {
    let app = TestApp::start();
    let body = br#"{"id":"evt_thin_1","object":"v2.core.event","type":"v1.billing.meter.error_report_triggered","created":"2025-10-04T15:13:32.232083866Z","livemode":false,"related_object":{"id":"mtr_1","type":"billing.meter","url":"/v1/billing/meters/mtr_1"}}"#;
    assert_eq!(app.post_signed(body).status, 200);
    let conn = store::open_read_only(&app.db_path()).unwrap();
    let (thin, created): (bool, i64) = conn
        .query_row(
            "SELECT thin, created FROM events WHERE id = 'evt_thin_1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(thin);
    assert_eq!(created, 1759590812);
}

#[test]
fn fifty_concurrent_deliveries_make_one_row() {
    let app = TestApp::start();
    let body = Arc::new(event("invoice.paid"));
    let barrier = Arc::new(Barrier::new(16));
    let addr = app.addr;
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let (body, barrier) = (body.clone(), barrier.clone());
            std::thread::spawn(move || {
                // 50 deliveries over 16 clients: the first two send 4, the rest 3.
                let n = if i < 2 { 4 } else { 3 };
                barrier.wait();
                (0..n)
                    .map(|_| {
                        let sig = signature::sign(&body, SECRET, time::now_ms() / 1000);
                        support::post(
                            addr,
                            "/webhooks/stripe",
                            &body,
                            &[("Stripe-Signature", &sig)],
                        )
                        .status
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(statuses.len(), 50);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let conn = store::open_read_only(&app.db_path()).unwrap();
    let (rows, deliveries): (i64, i64) = conn
        .query_row("SELECT COUNT(*), SUM(deliveries) FROM events", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((rows, deliveries), (1, 50));
}

#[test]
#[allow(clippy::type_complexity)] // One scenario table, read row by row.
fn refusals_write_nothing() {
    let app = TestApp::start();
    let body = event("charge.succeeded");
    let now = time::now_ms() / 1000;
    let good = signature::sign(&body, SECRET, now);
    let good_v1 = good.split_once(",v1=").unwrap().1.to_string();
    let not_json = b"this is not json".to_vec();
    let no_id = br#"{"object":"event","type":"charge.succeeded","created":1}"#.to_vec();
    let no_type = br#"{"id":"evt_x","created":1}"#.to_vec();
    let no_created = br#"{"id":"evt_x","type":"charge.succeeded"}"#.to_vec();
    let huge = vec![b' '; 1024 * 1024 + 1];
    let signed = |b: &[u8]| signature::sign(b, SECRET, now);
    let cases: Vec<(&str, &str, &str, Vec<u8>, Vec<(&str, String)>, u16, &str)> = vec![
        (
            "no signature",
            "POST",
            "/webhooks/stripe",
            body.clone(),
            vec![],
            400,
            "no Stripe-Signature header",
        ),
        (
            "malformed",
            "POST",
            "/webhooks/stripe",
            body.clone(),
            vec![("Stripe-Signature", "bad_header".into())],
            400,
            "unable to extract",
        ),
        (
            "only v0",
            "POST",
            "/webhooks/stripe",
            body.clone(),
            vec![("Stripe-Signature", format!("t={now},v0={good_v1}"))],
            400,
            "expected scheme v1",
        ),
        (
            "wrong secret",
            "POST",
            "/webhooks/stripe",
            body.clone(),
            vec![(
                "Stripe-Signature",
                signature::sign(&body, "whsec_other", now),
            )],
            400,
            "no signatures found matching",
        ),
        (
            "tampered body",
            "POST",
            "/webhooks/stripe",
            [&body[..], b" "].concat(),
            vec![("Stripe-Signature", good.clone())],
            400,
            "no signatures found matching",
        ),
        (
            "too old",
            "POST",
            "/webhooks/stripe",
            body.clone(),
            vec![(
                "Stripe-Signature",
                signature::sign(&body, SECRET, now - 400),
            )],
            400,
            "tolerance",
        ),
        (
            "from the future",
            "POST",
            "/webhooks/stripe",
            body.clone(),
            vec![(
                "Stripe-Signature",
                signature::sign(&body, SECRET, now + 400),
            )],
            400,
            "in the future",
        ),
        (
            "two headers",
            "POST",
            "/webhooks/stripe",
            body.clone(),
            vec![
                ("Stripe-Signature", good.clone()),
                ("Stripe-Signature", good.clone()),
            ],
            400,
            "signature",
        ),
        (
            "not json",
            "POST",
            "/webhooks/stripe",
            not_json.clone(),
            vec![("Stripe-Signature", signed(&not_json))],
            400,
            "not a JSON event",
        ),
        (
            "no id",
            "POST",
            "/webhooks/stripe",
            no_id.clone(),
            vec![("Stripe-Signature", signed(&no_id))],
            400,
            "`id`",
        ),
        (
            "no type",
            "POST",
            "/webhooks/stripe",
            no_type.clone(),
            vec![("Stripe-Signature", signed(&no_type))],
            400,
            "`type`",
        ),
        (
            "no created",
            "POST",
            "/webhooks/stripe",
            no_created.clone(),
            vec![("Stripe-Signature", signed(&no_created))],
            400,
            "`created`",
        ),
        (
            "too big",
            "POST",
            "/webhooks/stripe",
            huge.clone(),
            vec![("Stripe-Signature", signed(&huge))],
            413,
            "",
        ),
        (
            "wrong method",
            "GET",
            "/webhooks/stripe",
            vec![],
            vec![],
            405,
            "method not allowed",
        ),
        (
            "unknown path",
            "POST",
            "/webhooks/stripe/extra",
            body.clone(),
            vec![("Stripe-Signature", good.clone())],
            404,
            "not found",
        ),
    ];
    for (name, method, path, body, headers, status, needle) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = support::raw(
            app.addr,
            &support::request(method, path, &body, &headers, true),
        );
        assert_eq!(reply.status, status, "{name}: {reply:?}");
        assert!(
            reply.body.contains(needle),
            "{name}: body {:?} lacks {needle:?}",
            reply.body
        );
        if status == 405 {
            assert_eq!(reply.header("allow").as_deref(), Some("POST"), "{name}");
        }
        assert_eq!(app.event_count(), 0, "{name} wrote a row");
    }
    // The same body, correctly signed, is then accepted: the refusals were about the request.
    assert_eq!(app.post_signed(&body).status, 200);
    assert_eq!(app.event_count(), 1);
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    let app = TestApp::start_with("queue_capacity = 1\nmax_batch = 1");
    let writer = app.service.as_ref().unwrap().writer();
    // Park the writer inside a task until released.
    let (release, parked) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let parker = std::thread::spawn(move || {
        writer
            .run(move |_conn| {
                started_tx.send(()).unwrap();
                parked.recv().unwrap();
                Ok(())
            })
            .unwrap();
    });
    started.recv().unwrap();
    // One request fills the queue and waits; the next finds it full.
    let first_body = event("customer.created");
    let addr = app.addr;
    let first = std::thread::spawn(move || {
        let sig = signature::sign(&first_body, SECRET, time::now_ms() / 1000);
        support::post(
            addr,
            "/webhooks/stripe",
            &first_body,
            &[("Stripe-Signature", &sig)],
        )
        .status
    });
    // Wait until that request is the one in the queue: otherwise a request below could take the
    // slot first and wait for the parked writer (the test then timed out about 1 run in 3).
    let stats_writer = app.service.as_ref().unwrap().writer();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stats_writer
        .stats()
        .queued
        .load(std::sync::atomic::Ordering::Relaxed)
        < 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first request never queued"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut refused = None;
    while std::time::Instant::now() < deadline {
        let reply = app.post_signed(&event("customer.updated"));
        if reply.status == 503 {
            refused = Some(reply);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let refused = refused.expect("a full queue must answer 503");
    assert_eq!(refused.header("retry-after").as_deref(), Some("5"));
    release.send(()).unwrap();
    parker.join().unwrap();
    assert_eq!(first.join().unwrap(), 200);
    assert_eq!(app.event_count(), 1, "only the accepted event is stored");
}

#[test]
fn database_error_answers_503_and_recovers() {
    let app = TestApp::start();
    let writer = app.service.as_ref().unwrap().writer();
    // A temporary trigger on the writer's connection makes every insert fail, as a broken disk would.
    let fail = "CREATE TEMP TRIGGER fail_insert BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;";
    writer
        .run(move |conn| {
            conn.execute_batch(fail)
                .map_err(|e| Error::sqlite("add trigger", e))
        })
        .unwrap();
    let body = event("invoice.finalized");
    let reply = app.post_signed(&body);
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.header("retry-after").is_some());
    writer
        .run(|conn| {
            conn.execute_batch("DROP TRIGGER temp.fail_insert")
                .map_err(|e| Error::sqlite("drop trigger", e))
        })
        .unwrap();
    assert_eq!(app.event_count(), 0);
    // Stripe's retry of the same event now succeeds.
    assert_eq!(app.post_signed(&body).status, 200);
    assert_eq!(app.event_count(), 1);
}

#[test]
fn a_failing_projection_still_stores_the_event() {
    let app = TestApp::start();
    let writer = app.service.as_ref().unwrap().writer();
    let fail = "CREATE TEMP TRIGGER fail_project BEFORE INSERT ON object_rows BEGIN SELECT RAISE(ABORT, 'bug'); END;";
    writer
        .run(move |conn| {
            conn.execute_batch(fail)
                .map_err(|e| Error::sqlite("add trigger", e))
        })
        .unwrap();
    let body = event("customer.created");
    assert_eq!(
        app.post_signed(&body).status,
        200,
        "the event is ground truth: stored anyway"
    );
    let id = event_id(&body);
    let conn = store::open_read_only(&app.db_path()).unwrap();
    let (decision, object_id): (String, String) = conn
        .query_row(
            "SELECT decision, object_id FROM events WHERE id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(decision, "projection_failed");
    assert_eq!(
        writer
            .stats()
            .reruns
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the unguarded run failed, and the guarded rerun stored it"
    );
    let objects: i64 = conn
        .query_row("SELECT COUNT(*) FROM objects", [], |r| r.get(0))
        .unwrap();
    assert_eq!(objects, 0, "nothing half-written to the mirror");

    // Once the fault is gone, rebuilding the object from its events repairs the mirror.
    writer
        .run(|conn| {
            conn.execute_batch("DROP TRIGGER temp.fail_project")
                .map_err(|e| Error::sqlite("drop", e))
        })
        .unwrap();
    let oid = object_id.clone();
    writer
        .run(move |conn| {
            stripe_inbox::mirror::replay::rebuild_object(conn, &oid).map(|n| assert_eq!(n, 1))
        })
        .unwrap();
    let (decision,): (String,) = conn
        .query_row("SELECT decision FROM events WHERE id = ?1", [&id], |r| {
            Ok((r.get(0)?,))
        })
        .unwrap();
    assert_eq!(decision, "applied");
    let objects: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM objects WHERE id = ?1",
            [&object_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(objects, 1);
}
