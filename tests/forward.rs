//! Forwarding to the shop's app, end to end: a real app on a loopback port (tests/support/
//! forward.rs) that records every request and has each verified by stripe-python's
//! `construct_event`; the inbox in this process or as the real binary. Order per object under
//! shuffled arrival, never two in flight per object, the Medusa 409 race, a 400 dead-lettered and
//! redelivered, an app that is down and comes up, `Retry-After`, SIGTERM mid-attempt, SIGKILL
//! mid-delivery and restart, and the two commands. Settle and backoff values are small so that the
//! whole file takes seconds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stripe_inbox::forward::redeliver::{through, Which};
use stripe_inbox::{store, time};

use crate::support::forward::{
    always_ok, assert_all_verified, attempts, deliveries, event_about, forward_block, inbox,
    order_of, verify, verifying, wait_for_deliveries, Answer, App, APP_SECRET, INSTALL,
};
use crate::support::process::{self, Rng, Server};
use crate::support::{event_id, free_addr, raw, request, TempDir};

const WAIT: Duration = Duration::from_secs(30);

fn now_secs() -> i64 {
    time::now_ms() / 1000
}

/// The decision the mirror stored for each event.
fn decisions(db: &std::path::Path) -> BTreeMap<String, String> {
    let conn = store::open_read_only(db).unwrap();
    let mut stmt = conn.prepare("SELECT id, decision FROM events").unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<BTreeMap<String, String>>>()
        .unwrap();
    rows
}

#[test]
fn forwarded_in_order_per_object_exactly_as_stored_and_signed_for_the_app() {
    let app = App::start(always_ok());
    let inbox = inbox(&forward_block(
        &app.url(),
        "settle_ms = 3000\nmax_in_flight = 4\ntimeout_secs = 5",
    ));
    let base = now_secs() - 60;
    // Three customers updated once a second, and a payment intent's three states in one second
    // (which only the mirror's lifecycle order can sort).
    let mut expected: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for c in 1..=3 {
        let object = format!("cus_Order{c}");
        for s in 0..4 {
            let body = event_about("customer.updated", &object, base + s);
            expected
                .entry(object.clone())
                .or_default()
                .push((event_id(&body), body));
        }
    }
    for t in [
        "payment_intent.created",
        "payment_intent.requires_action",
        "payment_intent.succeeded",
    ] {
        let body = event_about(t, "pi_Order1", base + 10);
        expected
            .entry("pi_Order1".into())
            .or_default()
            .push((event_id(&body), body));
    }
    // Shuffled arrival, all within the settle window.
    let mut all: Vec<Vec<u8>> = expected
        .values()
        .flatten()
        .map(|(_, b)| b.clone())
        .collect();
    let mut rng = Rng::from_env("STRIPE_INBOX_FORWARD_SEED", "forward order");
    for i in (1..all.len()).rev() {
        all.swap(i, rng.range(0, i as u64 + 1) as usize);
    }
    let started = Instant::now();
    for body in &all {
        assert_eq!(inbox.post_signed(body).status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_millis(3000),
        "posting took longer than the settle window; the test proves nothing"
    );
    app.wait_until("every event", WAIT, |seen| seen.len() >= all.len());

    let seen = app.seen();
    assert_eq!(seen.len(), all.len(), "each event exactly once");
    for (object, events) in &expected {
        let want: Vec<String> = events.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(order_of(&seen, object), want, "order of {object}");
    }
    // Exactly what Stripe sent, with the headers the issue lists.
    let decided = decisions(&inbox.db_path());
    let bodies: BTreeMap<&String, &Vec<u8>> =
        expected.values().flatten().map(|(id, b)| (id, b)).collect();
    for s in &seen {
        assert_eq!(&&s.body, bodies.get(&s.event_id).unwrap(), "byte for byte");
        assert_eq!(
            s.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert!(s.header("user-agent").unwrap().starts_with("stripe-inbox/"));
        assert_eq!(s.header("stripe-inbox-attempt"), Some("1"));
        assert_eq!(s.header("idempotency-key"), Some(s.event_id.as_str()));
        assert_eq!(
            s.header("stripe-inbox-decision"),
            decided.get(&s.event_id).map(String::as_str)
        );
        assert!(s.header("stripe-signature").unwrap().starts_with("t="));
    }
    assert!(
        decided.values().any(|d| d == "stale"),
        "shuffled arrival made some events stale, and they were forwarded anyway (stale = forward)"
    );
    assert_all_verified(&seen);
    // The app records a request before it answers; the outcome is committed after.
    wait_for_deliveries(&inbox.db_path(), "every outcome", WAIT, |rows| {
        rows.iter().all(|d| d.state == "done")
    });
    let rows = deliveries(&inbox.db_path());
    assert!(rows
        .iter()
        .all(|d| d.attempts == 1 && d.lease_owner.is_none()));
    assert_eq!(app.max_in_flight_per_object(), 1);
}

#[test]
fn never_two_in_flight_for_one_object_while_others_go_in_parallel() {
    let app = App::start(Arc::new(|_| Answer::ok().after(Duration::from_millis(120))));
    let inbox = inbox(&forward_block(
        &app.url(),
        "settle_ms = 100\nmax_in_flight = 4",
    ));
    let base = now_secs() - 60;
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in 0..5 {
        for c in 1..=3 {
            let object = format!("cus_Busy{c}");
            let body = event_about("customer.updated", &object, base + s);
            want.entry(object).or_default().push(event_id(&body));
            assert_eq!(inbox.post_signed(&body).status, 200);
        }
    }
    app.wait_until("every event", WAIT, |seen| seen.len() >= 15);
    assert_eq!(
        app.max_in_flight_per_object(),
        1,
        "one at a time per object"
    );
    assert!(
        app.max_in_flight() >= 2,
        "objects went one after the other: max {} at once",
        app.max_in_flight()
    );
    let seen = app.seen();
    for (object, ids) in &want {
        assert_eq!(&order_of(&seen, object), ids, "{object}");
    }
    assert_all_verified(&seen);
}

#[test]
fn the_medusa_race_409_is_retried_promptly_and_everything_ends_done() {
    // The shop's handler loses the race with its own checkout code on the first attempt of each
    // payment_intent.succeeded and answers 409.
    let app = App::start(Arc::new(|i| {
        if i.event_type == "payment_intent.succeeded" && i.earlier == 0 {
            Answer::status(409)
        } else {
            Answer::ok()
        }
    }));
    let inbox = inbox(&forward_block(
        &app.url(),
        "settle_ms = 100\nmin_backoff_ms = 200\nmax_backoff_secs = 5",
    ));
    let base = now_secs() - 60;
    let mut succeeded = Vec::new();
    for p in 1..=3 {
        let object = format!("pi_Medusa{p}");
        let created = event_about("payment_intent.created", &object, base);
        let paid = event_about("payment_intent.succeeded", &object, base + 1);
        succeeded.push((object, event_id(&created), event_id(&paid)));
        assert_eq!(inbox.post_signed(&created).status, 200);
        assert_eq!(inbox.post_signed(&paid).status, 200);
    }
    let db = inbox.db_path();
    wait_for_deliveries(&db, "everything done", WAIT, |rows| {
        rows.len() == 6 && rows.iter().all(|d| d.state == "done")
    });
    let seen = app.seen();
    for (object, created, paid) in &succeeded {
        assert_eq!(order_of(&seen, object), [created.clone(), paid.clone()]);
        let tries: Vec<_> = seen.iter().filter(|s| &s.event_id == paid).collect();
        assert_eq!(tries.len(), 2, "{paid}: the 409, then the retry");
        assert_eq!((tries[0].attempt, tries[0].status), (1, 409));
        assert_eq!((tries[1].attempt, tries[1].status), (2, 200));
        let gap = tries[1].started.duration_since(tries[0].ended);
        assert!(
            gap >= Duration::from_millis(150),
            "the backoff was honoured: {gap:?}"
        );
        assert!(
            gap < Duration::from_secs(10),
            "retried promptly, not hours later: {gap:?}"
        );
        let a = attempts(&db, paid);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].1, a[0].2.as_str()), (Some(409), "retry"));
        assert_eq!((a[1].1, a[1].2.as_str()), (Some(200), "done"));
    }
    assert_all_verified(&seen);
}

#[test]
fn a_400_is_dead_at_once_without_blocking_its_object_and_redeliver_brings_it_back() {
    let refuse = Arc::new(AtomicBool::new(true));
    let bad_body = event_about("customer.updated", "cus_Dead1", now_secs() - 60);
    let bad = event_id(&bad_body);
    let (r, b) = (refuse.clone(), bad.clone());
    let app = App::start(Arc::new(move |i| {
        if i.event_id == b && r.load(Ordering::SeqCst) {
            Answer::status(400)
        } else {
            Answer::ok()
        }
    }));
    let inbox = inbox(&forward_block(
        &app.url(),
        "settle_ms = 100\nmin_backoff_ms = 50",
    ));
    let later_body = event_about("customer.updated", "cus_Dead1", now_secs() - 59);
    let later = event_id(&later_body);
    assert_eq!(inbox.post_signed(&bad_body).status, 200);
    assert_eq!(inbox.post_signed(&later_body).status, 200);
    let db = inbox.db_path();
    wait_for_deliveries(&db, "dead, then the next one done", WAIT, |rows| {
        rows.iter().any(|d| d.event_id == bad && d.state == "dead")
            && rows
                .iter()
                .any(|d| d.event_id == later && d.state == "done")
    });
    let rows = deliveries(&db);
    let dead = rows.iter().find(|d| d.event_id == bad).unwrap();
    assert_eq!(
        (dead.attempts, dead.last_status),
        (1, Some(400)),
        "dead after one attempt"
    );
    let a = attempts(&db, &bad);
    assert_eq!((a[0].1, a[0].2.as_str()), (Some(400), "dead"));
    assert!(a[0].3.as_deref().unwrap().starts_with("HTTP 400"), "{a:?}");
    assert_eq!(
        order_of(&app.seen(), "cus_Dead1"),
        [bad.clone(), later.clone()]
    );

    // The app is fixed; redeliver puts it back, and it goes out at once.
    refuse.store(false, Ordering::SeqCst);
    let service = inbox.service.as_ref().unwrap();
    let done = through(
        &service.writer(),
        &service.forward_routes(),
        &Which::Event(bad.clone()),
        None,
    )
    .unwrap();
    assert_eq!(done.requeued, 1);
    wait_for_deliveries(&db, "the redelivered one done", WAIT, |rows| {
        rows.iter()
            .any(|d| d.event_id == bad && d.state == "done" && d.attempts == 2)
    });
    let tries: Vec<_> = app
        .seen()
        .into_iter()
        .filter(|s| s.event_id == bad)
        .collect();
    assert_eq!(
        tries
            .iter()
            .map(|s| (s.attempt, s.status))
            .collect::<Vec<_>>(),
        [(1, 400), (2, 200)]
    );
    assert_all_verified(&app.seen());
}

#[test]
fn an_app_that_is_down_gets_everything_once_it_is_up() {
    let addr = free_addr();
    let url = format!("http://{addr}/stripe/webhook");
    let inbox = inbox(&forward_block(
        &url,
        "settle_ms = 0\nmin_backoff_ms = 50\nmax_backoff_secs = 1\ntimeout_secs = 2",
    ));
    let base = now_secs() - 60;
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in 0..3 {
        for c in 1..=3 {
            let object = format!("cus_Down{c}");
            let body = event_about("customer.updated", &object, base + s);
            want.entry(object).or_default().push(event_id(&body));
            assert_eq!(
                inbox.post_signed(&body).status,
                200,
                "ingest goes on while the app is down"
            );
        }
    }
    let db = inbox.db_path();
    wait_for_deliveries(&db, "retries of the heads", WAIT, |rows| {
        rows.iter().filter(|d| d.attempts >= 2).count() >= 3
    });
    let first = want.values().next().unwrap()[0].clone();
    let a = attempts(&db, &first);
    assert!(
        a.iter().all(|(_, status, outcome, error)| status.is_none()
            && outcome == "retry"
            && error.as_deref() == Some("connection refused")),
        "{a:?}"
    );
    assert!(
        deliveries(&db)
            .iter()
            .all(|d| d.attempts == 0 || want.values().any(|ids| ids[0] == d.event_id)),
        "only the head of each object is tried while it fails"
    );

    // Up it comes, where the inbox sends.
    let app = App::start_on(addr.parse().unwrap(), always_ok());
    app.wait_until("every event", WAIT, |seen| seen.len() >= 9);
    wait_for_deliveries(&db, "all done", WAIT, |rows| {
        rows.iter().all(|d| d.state == "done")
    });
    let seen = app.seen();
    assert_eq!(seen.len(), 9, "each once");
    for (object, ids) in &want {
        assert_eq!(&order_of(&seen, object), ids, "{object}");
    }
    assert_all_verified(&seen);
}

#[test]
fn retry_after_from_the_app_is_honoured() {
    let app = App::start(Arc::new(|i| {
        if i.earlier == 0 {
            Answer {
                status: 503,
                sleep: Duration::ZERO,
                retry_after: Some("1".into()),
            }
        } else {
            Answer::ok()
        }
    }));
    let inbox = inbox(&forward_block(
        &app.url(),
        "settle_ms = 0\nmin_backoff_ms = 20",
    ));
    let body = event_about("invoice.paid", "in_RetryAfter1", now_secs());
    assert_eq!(inbox.post_signed(&body).status, 200);
    app.wait_until("the retry", WAIT, |seen| seen.len() >= 2);
    let seen = app.seen();
    let gap = seen[1].started.duration_since(seen[0].ended);
    assert!(
        gap >= Duration::from_millis(900),
        "Retry-After: 1 waited only {gap:?}"
    );
    assert_eq!((seen[0].status, seen[1].status), (503, 200));
}

#[test]
fn shutdown_lets_the_attempt_under_way_finish_and_stores_its_outcome() {
    let app = App::start(Arc::new(|_| Answer::ok().after(Duration::from_millis(800))));
    let mut inbox = inbox(&forward_block(
        &app.url(),
        "settle_ms = 0\ntimeout_secs = 5",
    ));
    let body = event_about("customer.updated", "cus_Term1", now_secs());
    assert_eq!(inbox.post_signed(&body).status, 200);
    let db = inbox.db_path();
    wait_for_deliveries(&db, "the attempt under way", WAIT, |rows| {
        rows.iter().any(|d| d.state == "in_flight")
    });
    let stopping = Instant::now();
    inbox.stop();
    assert!(
        stopping.elapsed() >= Duration::from_millis(300),
        "shutdown waited for the attempt"
    );
    let rows = deliveries(&db);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].state.as_str(), rows[0].attempts),
        ("done", 1),
        "{rows:?}"
    );
    assert_eq!(rows[0].lease_owner, None, "the lease is released");
    assert_eq!(app.seen().len(), 1);
}

#[test]
fn sigkill_mid_delivery_then_restart_ends_done_and_never_twice_at_once() {
    // Each answer takes 1.5 s; an attempt's lease is timeout (3 s) + 2 s. The server is killed
    // while attempts are under way; those go on in the app, and the restarted server must not send
    // the same object again until their leases ran out.
    let app = App::start(Arc::new(|_| {
        Answer::ok().after(Duration::from_millis(1500))
    }));
    let dir = TempDir::new("forward-kill");
    let block = forward_block(
        &app.url(),
        "settle_ms = 0\ntimeout_secs = 3\nmin_backoff_ms = 50\nmax_in_flight = 4",
    );
    let mut server = Server::start(dir.path(), "", &block);
    let base = now_secs() - 60;
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in 0..2 {
        for c in 1..=3 {
            let object = format!("cus_Kill{c}");
            let body = event_about("customer.updated", &object, base + s);
            want.entry(object).or_default().push(event_id(&body));
            assert_eq!(process::try_post(server.addr, &body), Some(200));
        }
    }
    let deadline = Instant::now() + WAIT;
    while app.in_flight_now() < 2 {
        assert!(Instant::now() < deadline, "no attempts under way");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    let killed_at = Instant::now();
    let mut server = Server::start(dir.path(), "", &block);
    wait_for_deliveries(
        &server.db,
        "every delivery done",
        Duration::from_secs(60),
        |rows| rows.len() == 6 && rows.iter().all(|d| d.state == "done"),
    );
    server.terminate();

    let seen = app.seen();
    for (object, ids) in &want {
        // Never two at once for one object, across the two processes.
        let mut spans: Vec<_> = seen
            .iter()
            .filter(|s| s.object_id.as_deref() == Some(object))
            .map(|s| (s.started, s.ended, s.event_id.clone()))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[1].0 >= w[0].1,
                "{object}: {} began before {} ended",
                w[1].2,
                w[0].2
            );
        }
        assert_eq!(&order_of(&seen, object), ids, "{object}");
    }
    // The attempts cut off by the kill were sent again, as attempt 2, once their leases ran out.
    let again: Vec<_> = seen.iter().filter(|s| s.attempt == 2).collect();
    assert!(!again.is_empty(), "some attempt was under way at the kill");
    for s in &again {
        assert!(s.started.duration_since(killed_at) < Duration::from_secs(30));
        let a = attempts(&server.db, &s.event_id);
        assert_eq!(
            a.iter().map(|a| a.0).collect::<Vec<_>>(),
            [2],
            "attempt 1 left no outcome"
        );
    }
    assert_all_verified(&seen);
}

#[test]
fn the_commands_list_deliveries_and_redeliver_with_the_server_stopped() {
    let refuse = Arc::new(AtomicBool::new(true));
    let r = refuse.clone();
    let app = App::start(Arc::new(move |_| {
        if r.load(Ordering::SeqCst) {
            Answer::status(422)
        } else {
            Answer::ok()
        }
    }));
    let dir = TempDir::new("forward-cli");
    let block = forward_block(&app.url(), "settle_ms = 0");
    let mut server = Server::start(dir.path(), "", &block);
    let body = event_about("checkout.session.completed", "cs_Cli1", now_secs());
    let id = event_id(&body);
    assert_eq!(process::try_post(server.addr, &body), Some(200));
    wait_for_deliveries(&server.db, "dead", WAIT, |rows| {
        rows.iter().any(|d| d.state == "dead")
    });

    // Listing works beside the server.
    let out = server.run(&["deliveries", "--state", "dead"]);
    let text = process::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&id) && text.contains("dead") && text.contains("HTTP 422"),
        "{text}"
    );
    // Redeliver refuses while it serves, and says where to do it instead.
    let out = server.run(&["redeliver", "--dead"]);
    let text = process::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("serving") && text.contains("admin page"),
        "{text}"
    );

    server.terminate();
    let out = server.run(&["redeliver", "--dead"]);
    let text = process::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 dead deliveries back to pending"), "{text}");
    let out = server.run(&["deliveries", "--state", "pending", "--destination", "app"]);
    assert!(process::text(&out).contains(&id), "{}", process::text(&out));
    let out = server.run(&["redeliver", "evt_nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", process::text(&out));
    assert_eq!(
        server
            .run(&["redeliver", &id, "--destination", "nope"])
            .status
            .code(),
        Some(2)
    );

    // The next server sends it, and the app now takes it.
    refuse.store(false, Ordering::SeqCst);
    let mut server = Server::start(dir.path(), "", &block);
    wait_for_deliveries(&server.db, "done", WAIT, |rows| {
        rows.iter().all(|d| d.state == "done" && d.attempts == 2)
    });
    server.terminate();
    assert_eq!(
        app.seen()
            .iter()
            .map(|s| (s.attempt, s.status))
            .collect::<Vec<_>>(),
        [(1, 422), (2, 200)]
    );
}

#[test]
fn stripe_python_accepts_what_is_forwarded_and_nothing_else() {
    if !verifying() {
        eprintln!(
            "\n\n*** SKIPPED stripe_python_accepts_what_is_forwarded_and_nothing_else: ***\n\
             *** stripe-python is not installed. Install it: {INSTALL} ***\n\
             *** (or set STRIPE_INBOX_PYTHON to a python that can import stripe; .ci/run does) ***\n"
        );
        return;
    }
    let app = App::start(always_ok());
    let inbox = inbox(&forward_block(&app.url(), "settle_ms = 0"));
    let body = event_about("invoice.paid", "in_Verify1", now_secs());
    assert_eq!(inbox.post_signed(&body).status, 200);
    app.wait_until("the event", WAIT, |seen| !seen.is_empty());
    let seen = &app.seen()[0];
    assert_eq!(seen.verified, Some(Ok(event_id(&body))));
    // The verifier does check: another secret, or one byte changed, is refused.
    let sig = seen.header("stripe-signature").unwrap();
    assert!(matches!(
        verify(&seen.body, sig, "whsec_other"),
        Some(Err(_))
    ));
    let mut tampered = seen.body.clone();
    let last = tampered.len() - 2;
    tampered[last] = b' ';
    assert!(matches!(verify(&tampered, sig, APP_SECRET), Some(Err(_))));
}

#[test]
fn the_admin_shows_deliveries_and_metrics_and_refuses_a_retry_without_its_csrf_token() {
    let app = App::start(Arc::new(|_| Answer::status(410)));
    let inbox = inbox(&forward_block(&app.url(), "settle_ms = 0"));
    let body = event_about("customer.deleted", "cus_Admin1", now_secs());
    let id = event_id(&body);
    assert_eq!(inbox.post_signed(&body).status, 200);
    wait_for_deliveries(&inbox.db_path(), "dead", WAIT, |rows| {
        rows.iter().any(|d| d.state == "dead")
    });
    let get = |path: &str| raw(inbox.admin, &request("GET", path, b"", &[], true));
    let page = get("/deliveries?state=dead");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(&id) && page.body.contains("HTTP 410"),
        "{}",
        page.body
    );
    let event = get(&format!("/events/{id}"));
    assert!(event.body.contains("<h2>Forwarding</h2>") && event.body.contains("dead"));
    let dashboard = get("/");
    assert!(
        dashboard.body.contains("deliveries dead"),
        "{}",
        dashboard.body
    );
    // Not without the form's CSRF token.
    for path in [
        "/deliveries/retry-dead",
        "/deliveries/1/retry",
        &format!("/events/{id}/forward"),
    ] {
        let refused = raw(
            inbox.admin,
            &request(
                "POST",
                path,
                b"destination=app",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                true,
            ),
        );
        assert_eq!(refused.status, 403, "{path}");
    }
    assert_eq!(
        deliveries(&inbox.db_path())[0].state,
        "dead",
        "nothing was retried"
    );
    // The metrics families, per destination (the sender counts itself out just after the
    // outcome is committed).
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let text = get("/metrics").body;
        if text.contains("stripe_inbox_forward_in_flight{destination=\"app\"} 0") {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    for needle in [
        "stripe_inbox_forward_attempts_total{destination=\"app\",outcome=\"dead\"} 1",
        "stripe_inbox_forward_attempt_seconds_count{destination=\"app\"} 1",
        "stripe_inbox_forward_in_flight{destination=\"app\"} 0",
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
}
