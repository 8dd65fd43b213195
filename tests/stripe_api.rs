//! The Stripe API client against a local stub of Stripe's API (`support::stripe_stub`): paging,
//! retries and idempotency keys exactly as the official libraries do them, rate limiting, resumable
//! backfills, reconcile through the one store path, refetching uncertain objects, connect, the
//! hand-off from the CLI to a running server, and the mirror equal to what the API returns.
//! Backoff waits are 1 ms here (`[stripe]`'s `backoff_unit`, not a key of the file).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stripe_inbox::config::Config;
use stripe_inbox::error::Error;
use stripe_inbox::ingest::store::{store_event, Effects, Ingest, Source};
use stripe_inbox::periodic::Stop;
use stripe_inbox::service::Service;
use stripe_inbox::store::writer::{Writer, WriterConfig};
use stripe_inbox::store::{self, Lock};
use stripe_inbox::stripe_api::backfill;
use stripe_inbox::stripe_api::catalog;
use stripe_inbox::stripe_api::client::STRIPE_VERSION;
use stripe_inbox::stripe_api::connect;
use stripe_inbox::stripe_api::reconcile::{self, Window};
use stripe_inbox::stripe_api::refetch;
use stripe_inbox::stripe_api::StripeApi;
use stripe_inbox::testkit::streams;
use stripe_inbox::{event::envelope, time};

use crate::support::stripe_stub::{customers, Account, Fault, Recorded, Stub};
use crate::support::{self, config_text, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_stripe-inbox");
const KEY: &str = "sk_test_stub0123456789abcdef";

/// A temp dir with a config whose `[stripe]` points at `stub`, and the key in a variable of its
/// own.
struct Setup {
    _dir: TempDir,
    config: Config,
    key_env: String,
}

fn setup(stub: &Stub, stripe_extra: &str) -> Setup {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = TempDir::new("stripe");
    let key_env = format!("STRIPE_INBOX_IT_KEY_{}", N.fetch_add(1, Ordering::Relaxed));
    std::env::set_var(&key_env, KEY);
    let rate = if stripe_extra.contains("requests_per_sec") {
        ""
    } else {
        "requests_per_sec = 1000\n"
    };
    let text = format!(
        "{}\n[stripe]\napi_key_env = \"{key_env}\"\napi_base = \"{}\"\n{rate}reconcile_every = \"off\"\n{stripe_extra}\n",
        config_text(dir.path(), "127.0.0.1:0", "127.0.0.1:0", ""),
        stub.base()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let mut config = Config::load(&path).unwrap();
    config.stripe.backoff_unit = Duration::from_millis(1);
    Setup {
        _dir: dir,
        config,
        key_env,
    }
}

/// The Stripe work on a writer of its own (no server).
struct Alone {
    api: StripeApi,
    writer: Option<Writer>,
}

impl Alone {
    fn start(s: &Setup) -> Alone {
        let writer = Writer::start(
            store::open_writer(&s.config.database.path).unwrap(),
            WriterConfig {
                queue_capacity: 64,
                max_batch: 64,
            },
        )
        .unwrap();
        let api = StripeApi::new(
            &s.config,
            KEY.into(),
            writer.handle(),
            Arc::new(Effects {
                refetch_uncertain: true,
                ..Effects::default()
            }),
        );
        Alone {
            api,
            writer: Some(writer),
        }
    }

    fn backfill(
        &self,
        types: &[&str],
        restart: bool,
    ) -> stripe_inbox::error::Result<backfill::BackfillReport> {
        let kinds: Vec<_> = types.iter().map(|t| catalog::by_type(t).unwrap()).collect();
        backfill::run(&self.api, &kinds, restart, &mut (), &Stop::default())
    }
}

impl Drop for Alone {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            w.stop();
        }
    }
}

/// Every request carries the key, the pinned version and our User-Agent; only POSTs carry an
/// idempotency key.
fn assert_headers(requests: &[Recorded]) {
    assert!(!requests.is_empty());
    for r in requests {
        assert_eq!(
            r.header("Authorization"),
            Some(format!("Bearer {KEY}").as_str()),
            "{r:?}"
        );
        assert_eq!(r.header("Stripe-Version"), Some(STRIPE_VERSION), "{r:?}");
        assert!(
            r.header("User-Agent")
                .is_some_and(|ua| ua.starts_with("stripe-inbox/")),
            "{r:?}"
        );
        match r.method.as_str() {
            "GET" => assert_eq!(
                r.header("Idempotency-Key"),
                None,
                "a GET carries no key: {r:?}"
            ),
            _ => assert!(r.header("Idempotency-Key").is_some(), "{r:?}"),
        }
    }
}

fn count(db: &std::path::Path, sql: &str) -> i64 {
    store::open_read_only(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

fn one_customer(id: &str, name: &str) -> Value {
    let mut c = stripe_inbox::event::testevent::fixture("customer").unwrap();
    c["id"] = json!(id);
    c["name"] = json!(name);
    c
}

#[test]
fn list_paging_walks_every_page_and_gets_carry_no_key() {
    let stub = Stub::start(Account {
        objects: BTreeMap::from([("customers".into(), customers(7, 1_700_000_000))]),
        page_size: 3,
        ..Account::default()
    });
    let s = setup(&stub, "");
    let alone = Alone::start(&s);
    let report = alone.backfill(&["customer"], false).unwrap();
    let t = &report.types[0];
    assert_eq!(
        (t.fetched, t.changed, t.pages, t.complete),
        (7, 7, 3, true),
        "{t:?}"
    );
    let lists: Vec<Recorded> = stub
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/customers")
        .collect();
    let afters: Vec<Option<&str>> = lists.iter().map(|r| r.param("starting_after")).collect();
    assert_eq!(afters, [None, Some("cus_stub0002"), Some("cus_stub0005")]);
    assert!(lists.iter().all(|r| r.param("limit") == Some("100")));
    assert_headers(&stub.requests());
    let db = &s.config.database.path;
    assert_eq!(count(db, "SELECT COUNT(*) FROM customers"), 7);
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM objects WHERE source = 'backfill' AND event_id IS NULL"
        ),
        7
    );
    // Again: nothing changed, nothing swept.
    let again = alone.backfill(&["customer"], false).unwrap();
    let t = &again.types[0];
    assert_eq!(
        (t.fetched, t.changed, t.unchanged, t.swept),
        (7, 0, 7, 0),
        "{t:?}"
    );
}

#[test]
fn a_dropped_connection_is_retried_with_the_same_key_and_creates_one_endpoint() {
    let stub = Stub::start(Account::default());
    // The first POST is executed, but its answer never arrives.
    stub.hook(|r, _| {
        (r.method == "POST").then_some(()).and_then(|()| {
            static ONCE: AtomicUsize = AtomicUsize::new(0);
            (ONCE.fetch_add(1, Ordering::Relaxed) == 0).then_some(Fault::DropAfterWork)
        })
    });
    let s = setup(&stub, "");
    let alone = Alone::start(&s);
    let url = "https://shop.example/webhooks/stripe";
    let report = connect::run(&alone.api, url, None, &mut ()).unwrap();
    let posts: Vec<Recorded> = stub
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 2, "retried once");
    assert_eq!(
        posts[0].header("Idempotency-Key"),
        posts[1].header("Idempotency-Key"),
        "with the same key"
    );
    assert_eq!(stub.with_account(|a| a.endpoints.len()), 1, "one endpoint");
    assert!(report.replayed, "the retry got Stripe's saved answer");
    assert_eq!(report.secret, "whsec_stub_secret_1", "secret included");
    assert_eq!(report.events.len(), connect::MIRROR_EVENTS.len());
    let form = support::stripe_stub::form(&posts[0].body);
    assert!(form.contains(&("api_version".into(), STRIPE_VERSION.into())));
    assert!(form.contains(&("enabled_events[0]".into(), "customer.created".into())));
    assert_headers(&stub.requests());
    // The key was stored, and the endpoint recorded (without its secret).
    let conn = store::open_read_only(&s.config.database.path).unwrap();
    let (key, endpoint, outcome): (String, String, String) = conn
        .query_row(
            "SELECT idempotency_key, endpoint_id, outcome FROM connect_requests",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(Some(key.as_str()), posts[0].header("Idempotency-Key"));
    assert_eq!(
        (endpoint.as_str(), outcome.as_str()),
        ("we_stub1", "created")
    );
    // A second endpoint for the same URL is refused, after listing.
    let err = connect::run(&alone.api, url, None, &mut ()).unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert!(err.to_string().contains("we_stub1"), "{err}");
    assert_eq!(stub.with_account(|a| a.endpoints.len()), 1);
}

#[test]
fn a_lost_answer_is_sent_again_with_the_stored_key_by_the_next_run() {
    let stub = Stub::start(Account::default());
    // Every POST is executed and its answer lost: the run gives up after its retries.
    stub.hook(|r, _| (r.method == "POST").then_some(Fault::DropAfterWork));
    let s = setup(&stub, "max_network_retries = 1");
    let url = "http://127.0.0.1:9/webhooks/stripe";
    let key = {
        let alone = Alone::start(&s);
        let err =
            connect::run(&alone.api, url, Some(vec!["invoice.paid".into()]), &mut ()).unwrap_err();
        match &err {
            Error::Stripe(e) => assert_eq!(e.status, None, "{err}"),
            other => panic!("{other}"),
        }
        let conn = store::open_read_only(&s.config.database.path).unwrap();
        let (key, outcome): (String, Option<String>) = conn
            .query_row(
                "SELECT idempotency_key, outcome FROM connect_requests",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(outcome, None, "no answer: the request stays open");
        key
    };
    assert_eq!(
        stub.requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count(),
        2
    );
    // Stripe did create it; the next run lists it, but sends the open request again instead of
    // refusing, and gets the secret from the replay.
    stub.heal();
    let alone = Alone::start(&s);
    let report = connect::run(&alone.api, url, Some(vec!["invoice.paid".into()]), &mut ()).unwrap();
    let posts: Vec<Recorded> = stub
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 3);
    assert!(posts
        .iter()
        .all(|p| p.header("Idempotency-Key") == Some(key.as_str())));
    assert_eq!(
        stub.with_account(|a| a.endpoints.len()),
        1,
        "still one endpoint"
    );
    assert!(report.replayed);
    assert_eq!(report.secret, "whsec_stub_secret_1");
    assert_eq!(
        report.warnings.len(),
        1,
        "http:// is accepted with a warning"
    );
}

#[test]
fn retries_follow_the_official_libraries() {
    let stub = Stub::start(Account {
        objects: BTreeMap::from([(
            "customers".into(),
            vec![
                one_customer("cus_a", "A"),
                one_customer("cus_b", "B"),
                one_customer("cus_c", "C"),
                one_customer("cus_d", "D"),
                one_customer("cus_e", "E"),
            ],
        )]),
        ..Account::default()
    });
    // Per object, what the first GET meets.
    stub.hook(|r, _| {
        static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let mut seen = SEEN.lock().unwrap();
        let first = !seen.contains(&r.path);
        seen.push(r.path.clone());
        let id = r.path.rsplit('/').next().unwrap_or("");
        match (id, first) {
            // A 500 is retried.
            ("cus_a", true) => Some(Fault::error(500, "api_error", "", &[])),
            // A 400 is not.
            ("cus_b", _) => Some(Fault::error(
                400,
                "invalid_request_error",
                "parameter_invalid",
                &[],
            )),
            // Stripe-Should-Retry: false stops even a 500.
            ("cus_c", _) => Some(Fault::error(
                500,
                "api_error",
                "",
                &[("Stripe-Should-Retry", "false")],
            )),
            // 429 lock_timeout is retried (and is not rate limiting).
            ("cus_d", true) => Some(Fault::error(
                429,
                "invalid_request_error",
                "lock_timeout",
                &[],
            )),
            // Stripe-Should-Retry: true makes even a 400 worth another try.
            ("cus_e", true) => Some(Fault::error(
                400,
                "invalid_request_error",
                "x",
                &[("Stripe-Should-Retry", "true")],
            )),
            _ => None,
        }
    });
    let s = setup(&stub, "");
    let alone = Alone::start(&s);
    let customer = catalog::by_type("customer").unwrap();
    let gets = |id: &str| {
        stub.requests()
            .iter()
            .filter(|r| r.path == format!("/v1/customers/{id}"))
            .count()
    };
    for id in ["cus_a", "cus_d", "cus_e"] {
        refetch::fetch_one(
            &alone.api,
            id,
            customer,
            None,
            stripe_inbox::mirror::fetched::Via::Refetch,
        )
        .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(gets(id), 2, "{id}: retried once");
    }
    for id in ["cus_b", "cus_c"] {
        let err = refetch::fetch_one(
            &alone.api,
            id,
            customer,
            None,
            stripe_inbox::mirror::fetched::Via::Refetch,
        )
        .unwrap_err();
        assert_eq!(gets(id), 1, "{id}: not retried");
        let Error::Stripe(e) = &err else {
            panic!("{err}")
        };
        assert!(
            e.request_id
                .as_deref()
                .is_some_and(|r| r.starts_with("req_stub")),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("invalid_request_error") || text.contains("api_error"),
            "{text}"
        );
        assert!(
            text.contains("stub says") && text.contains("req_stub"),
            "{text}"
        );
        assert!(!text.contains(KEY), "never the key: {text}");
    }
    assert_eq!(
        alone.api.client.limiter().slowdowns,
        0,
        "lock_timeout is no rate limit"
    );
    assert_headers(&stub.requests());
    // The failures are on record for the dashboard.
    assert_eq!(
        count(
            &s.config.database.path,
            "SELECT COUNT(*) FROM stripe_errors"
        ),
        2
    );
    assert_eq!(
        count(
            &s.config.database.path,
            "SELECT COUNT(*) FROM objects WHERE source = 'refetch'"
        ),
        3
    );
}

#[test]
fn a_key_in_an_error_message_is_masked_and_redirects_are_not_followed() {
    // Another server that must never be asked anything.
    let elsewhere = Stub::start(Account::default());
    let stub = Stub::start(Account::default());
    let target = format!("{}/v1/customers/cus_x", elsewhere.base());
    stub.hook(move |r, _| match r.path.as_str() {
        "/v1/customers/cus_r" => Some(Fault::Answer {
            status: 302,
            headers: vec![("Location".into(), target.clone())],
            body: "{}".into(),
        }),
        _ => Some(Fault::Answer {
            status: 401,
            headers: Vec::new(),
            body: json!({"error": {"type": "invalid_request_error",
                "message": format!("Invalid API Key provided: {KEY}")}})
            .to_string(),
        }),
    });
    let s = setup(&stub, "");
    let alone = Alone::start(&s);
    let customer = catalog::by_type("customer").unwrap();
    let err = refetch::fetch_one(
        &alone.api,
        "cus_r",
        customer,
        None,
        stripe_inbox::mirror::fetched::Via::Refetch,
    )
    .unwrap_err();
    assert!(err.to_string().contains("302"), "{err}");
    assert!(
        elsewhere.requests().is_empty(),
        "the redirect was not followed"
    );
    let err = refetch::fetch_one(
        &alone.api,
        "cus_k",
        customer,
        None,
        stripe_inbox::mirror::fetched::Via::Refetch,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        !text.contains(KEY) && text.contains("sk_test_...cdef"),
        "{text}"
    );
    let stored: String = store::open_read_only(&s.config.database.path)
        .unwrap()
        .query_row("SELECT group_concat(message) FROM stripe_errors", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(!stored.contains(KEY), "{stored}");
}

#[test]
fn a_long_backfill_that_meets_429s_slows_down_and_finishes() {
    let stub = Stub::start(Account {
        objects: BTreeMap::from([("customers".into(), customers(240, 1_700_000_000))]),
        page_size: 10,
        ..Account::default()
    });
    // Every third list request is rate-limited.
    stub.hook(|r, _| {
        static N: AtomicUsize = AtomicUsize::new(0);
        (r.path == "/v1/customers" && N.fetch_add(1, Ordering::Relaxed) % 3 == 1)
            .then(|| Fault::error(429, "invalid_request_error", "rate_limit", &[]))
    });
    // No network retries at all: rate limiting has a budget of its own.
    let s = setup(&stub, "max_network_retries = 0\nrequests_per_sec = 200");
    let alone = Alone::start(&s);
    let report = alone.backfill(&["customer"], false).unwrap();
    let t = &report.types[0];
    assert_eq!((t.fetched, t.pages, t.complete), (240, 24, true), "{t:?}");
    assert!(report.rate_limited >= 11, "{report:?}");
    assert_eq!(report.requests, 24 + report.rate_limited, "{report:?}");
    let limiter = alone.api.client.limiter();
    assert!(
        limiter.slowdowns >= 11 && limiter.lowest < 200.0,
        "{limiter:?}"
    );
    assert!(report.slowest_rate < 200.0);
    // After each 429 the next request waited at least the limiter's pause (a unit, 1 ms here).
    let lists: Vec<Recorded> = stub
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/customers")
        .collect();
    for pair in lists.windows(2).skip(1).step_by(3) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_millis(1),
            "{:?}",
            pair[1].at - pair[0].at
        );
    }
    assert_eq!(
        count(&s.config.database.path, "SELECT COUNT(*) FROM customers"),
        240
    );
}

#[test]
fn an_interrupted_backfill_resumes_and_restart_starts_over() {
    let stub = Stub::start(Account {
        objects: BTreeMap::from([("customers".into(), customers(9, 1_700_000_000))]),
        page_size: 3,
        ..Account::default()
    });
    // The third page fails for good.
    stub.hook(|r, _| {
        (r.path == "/v1/customers" && r.param("starting_after") == Some("cus_stub0005"))
            .then(|| Fault::error(400, "invalid_request_error", "parameter_invalid", &[]))
    });
    let s = setup(&stub, "");
    let alone = Alone::start(&s);
    assert!(alone.backfill(&["customer"], false).is_err());
    let db = &s.config.database.path;
    assert_eq!(count(db, "SELECT COUNT(*) FROM customers"), 6);
    stub.heal();
    let before = stub.requests().len();
    let report = alone.backfill(&["customer"], false).unwrap();
    let t = &report.types[0];
    assert!(t.resumed && t.complete, "{t:?}");
    assert_eq!(
        (t.fetched, t.pages),
        (9, 1),
        "counts carry over; one page fetched: {t:?}"
    );
    let resumed = &stub.requests()[before];
    assert_eq!(resumed.param("starting_after"), Some("cus_stub0005"));
    assert_eq!(count(db, "SELECT COUNT(*) FROM customers"), 9);
    // --restart starts from the first page.
    let before = stub.requests().len();
    let report = alone.backfill(&["customer"], true).unwrap();
    assert_eq!((report.types[0].pages, report.types[0].resumed), (3, false));
    assert_eq!(stub.requests()[before].param("starting_after"), None);
    // A pass interrupted at an id Stripe no longer knows (deleted meanwhile) starts the type over.
    stub.hook(|r, _| {
        (r.path == "/v1/customers" && r.param("starting_after") == Some("cus_stub0002"))
            .then(|| Fault::error(500, "api_error", "", &[("Stripe-Should-Retry", "false")]))
    });
    assert!(alone.backfill(&["customer"], true).is_err());
    stub.heal();
    stub.with_account(|a| {
        a.objects
            .get_mut("customers")
            .unwrap()
            .retain(|c| c["id"] != "cus_stub0002")
    });
    let report = alone.backfill(&["customer"], false).unwrap();
    let t = &report.types[0];
    assert!(t.resumed && t.restarted && t.complete, "{t:?}");
    assert_eq!(t.fetched, 8);
    // The sweep found the customer the list no longer has: its GET says it is deleted.
    assert_eq!((t.swept, t.gone), (1, 1), "{t:?}");
    assert_eq!(
        count(
            db,
            "SELECT deleted FROM customers WHERE id = 'cus_stub0002'"
        ),
        1
    );
}

#[test]
fn reconcile_stores_what_the_webhook_never_brought() {
    let t0 = streams::T;
    let all = streams::all();
    // /v1/events lists snapshot events (not thin ones), newest first.
    let events: Vec<&streams::StreamEvent> = all
        .iter()
        .flat_map(|s| &s.events)
        .filter(|e| e.envelope["object"] == "event")
        .collect();
    let mut by_time = events.clone();
    by_time.sort_by_key(|e| std::cmp::Reverse(e.created));
    let listed: Vec<Value> = by_time.iter().map(|e| e.envelope.clone()).collect();
    let stub = Stub::start(Account {
        events: listed,
        page_size: 7,
        ..Account::default()
    });
    let s = setup(&stub, "");
    let db = s.config.database.path.clone();
    // A third of the events came by webhook.
    {
        let conn = store::open_writer(&db).unwrap();
        for (i, e) in events.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
            streams::deliver(&conn, e, i as i64).unwrap();
        }
    }
    let delivered = count(&db, "SELECT COUNT(*) FROM events");
    let alone = Alone::start(&s);
    // The window is at most 30 days back from the clock: events older than that are not asked for.
    let clock = (t0 + 45 * 86_400) * 1000;
    let report = reconcile::run(
        &alone.api,
        Window::Since(t0 - 3600),
        clock,
        &mut (),
        &Stop::default(),
    )
    .unwrap();
    let first = &stub.requests()[0];
    let oldest_asked: i64 = first
        .param("created[gte]")
        .unwrap_or_else(|| panic!("{first:?}"))
        .parse()
        .unwrap();
    assert_eq!(oldest_asked, clock / 1000 - 30 * 86_400);
    let window: Vec<_> = events
        .iter()
        .filter(|e| e.created >= oldest_asked)
        .collect();
    assert_eq!(report.listed, window.len() as u64, "{report:?}");
    let missing = window
        .iter()
        .filter(|e| events.iter().position(|x| x.id == e.id).unwrap() % 3 != 0)
        .count();
    assert!(missing > 0);
    assert_eq!(report.stored, missing as u64, "{report:?}");
    assert!(
        report.complete && report.mark == Some(clock / 1000),
        "{report:?}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM events WHERE source = 'reconcile'"
        ),
        missing as i64
    );
    assert_eq!(
        count(&db, "SELECT MAX(deliveries) FROM events"),
        1,
        "known ids are not redeliveries"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM events WHERE decision IS NULL"),
        0,
        "projected"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM events"),
        delivered + missing as i64
    );
    let mark = clock / 1000;
    // With the whole history within 30 days, reconcile gives the in-order mirror.
    let clock = (t0 + 20 * 86_400) * 1000;
    reconcile::run(
        &alone.api,
        Window::Since(t0 - 3600),
        clock,
        &mut (),
        &Stop::default(),
    )
    .unwrap();
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM events"),
        events.len() as i64
    );
    let got = store::open_read_only(&db).unwrap();
    let want = store::open_memory().unwrap();
    for (seq, e) in (1..).zip(&events) {
        streams::deliver(&want, e, seq * 1000).unwrap();
    }
    // The same rows; the data as JSON (the API pretty-prints it differently from a webhook).
    let heads = |dump: String| -> Vec<String> {
        dump.lines()
            .map(|l| l[..l.find(" {").unwrap_or(l.len())].to_owned())
            .collect()
    };
    assert_eq!(
        heads(streams::dump(&got).unwrap()),
        heads(streams::dump(&want).unwrap())
    );
    assert_eq!(
        streams::api_states(&got).unwrap(),
        streams::api_states(&want).unwrap()
    );
    assert_headers(&stub.requests());
    // The schedule's window: from the mark, minus the overlap.
    let before = stub.requests().len();
    let report = reconcile::run(
        &alone.api,
        Window::Auto,
        (mark + 60) * 1000,
        &mut (),
        &Stop::default(),
    )
    .unwrap();
    assert_eq!(
        report.since,
        Some(mark - reconcile::OVERLAP_SECS),
        "{report:?}"
    );
    assert_eq!(
        stub.requests()[before].param("created[gte]"),
        Some((mark - reconcile::OVERLAP_SECS).to_string().as_str())
    );
}

#[test]
fn missing_events_then_a_backfill_from_the_stub_give_the_in_order_mirror() {
    // Stripe's side knows the full history: the state in-order delivery gives.
    let all = streams::all();
    let truth_conn = store::open_memory().unwrap();
    for (seq, e) in (1..).zip(all.iter().flat_map(|s| &s.events)) {
        streams::deliver(&truth_conn, e, seq * 1000).unwrap();
    }
    let truth = streams::api_states(&truth_conn).unwrap();
    let mut objects: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut gone = Vec::new();
    for (id, state) in &truth {
        let Some(kind) = catalog::by_type(&state.object_type) else {
            continue;
        };
        if state.deleted {
            gone.push(id.clone());
        } else {
            objects
                .entry(kind.collection.to_owned())
                .or_default()
                .push(state.data.clone());
        }
    }
    for seed in [3u64, 11] {
        let stub = Stub::start(Account {
            objects: objects.clone(),
            gone: gone.clone(),
            page_size: 2,
            ..Account::default()
        });
        let s = setup(&stub, "");
        let db = s.config.database.path.clone();
        // Some events were delivered, in a shuffled order.
        let mut events: Vec<&streams::StreamEvent> = all.iter().flat_map(|s| &s.events).collect();
        let mut rng = support::process::Rng::new(seed);
        for i in (1..events.len()).rev() {
            events.swap(i, rng.range(0, i as u64 + 1) as usize);
        }
        let (delivered, late): (Vec<&streams::StreamEvent>, Vec<&streams::StreamEvent>) =
            events.iter().copied().partition(|_| rng.range(0, 10) >= 4);
        {
            let conn = store::open_writer(&db).unwrap();
            for (n, e) in (1..).zip(&delivered) {
                streams::deliver(&conn, e, n).unwrap();
            }
        }
        let alone = Alone::start(&s);
        let types: Vec<&str> = catalog::backfilled()
            .iter()
            .map(|k| k.object_type)
            .collect();
        let report = alone.backfill(&types, false).unwrap();
        assert!(report.types.iter().all(|t| t.complete), "{report:?}");
        // Canceled subscriptions are listed only with status=all.
        assert!(stub
            .requests()
            .iter()
            .any(|r| r.path == "/v1/subscriptions" && r.param("status") == Some("all")));
        // The late events arrive after the backfill, in any order: they are older, so stale.
        {
            let writer = alone.writer.as_ref().unwrap().handle();
            let bodies: Vec<Vec<u8>> = late.iter().map(|e| e.body.as_bytes().to_vec()).collect();
            writer
                .run(move |conn| {
                    for body in bodies {
                        let ingest = Ingest {
                            envelope: envelope::parse(&body).unwrap(),
                            body,
                            secret_index: None,
                            received_at_ms: time::now_ms(),
                            source: Source::Webhook,
                        };
                        store_event(conn, &ingest, &Effects::default())?;
                    }
                    Ok(())
                })
                .unwrap();
        }
        let got = streams::api_states(&store::open_read_only(&db).unwrap()).unwrap();
        for (id, want) in &truth {
            let fetched = catalog::backfilled()
                .iter()
                .any(|k| k.object_type == want.object_type)
                && !want.deleted;
            let g = got
                .get(id)
                .unwrap_or_else(|| panic!("seed {seed}: {id} missing"));
            assert_eq!(g.object_type, want.object_type, "seed {seed}: {id}");
            assert_eq!(g.deleted, want.deleted, "seed {seed}: {id} deleted");
            if !want.deleted {
                assert_eq!(g.data, want.data, "seed {seed}: {id} data");
            }
            assert_eq!(
                g.uncertain,
                want.uncertain && !fetched,
                "seed {seed}: {id} uncertain"
            );
        }
        assert_headers(&stub.requests());
    }
}

/// A service in this process whose `[stripe]` points at `stub`.
fn serve(s: &Setup) -> Service {
    Service::start(&s.config).unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_refetches_an_uncertain_object_once_for_a_burst() {
    let id = "cus_burst";
    let stub = Stub::start(Account {
        objects: BTreeMap::from([("customers".into(), vec![one_customer(id, "Final")])]),
        ..Account::default()
    });
    let s = setup(&stub, "");
    let service = serve(&s);
    let addr = service.webhook_addr();
    // Four edits in one second with nothing to order them: each is decided by arrival. The second
    // is in the future, so the refetch (due after it) cannot start before the burst is in.
    let second = time::now_ms() / 1000 + 2;
    for name in ["A", "B", "C", "D"] {
        let mut event = stripe_inbox::event::testevent::build("customer.updated", second).unwrap();
        event["data"]["object"] = one_customer(id, name);
        event["data"]["previous_attributes"] = json!({"name": "Z"});
        let body = serde_json::to_vec(&event).unwrap();
        let sig =
            stripe_inbox::event::signature::sign(&body, support::SECRET, time::now_ms() / 1000);
        let reply = support::post(
            addr,
            "/webhooks/stripe",
            &body,
            &[("Stripe-Signature", &sig)],
        );
        assert_eq!(reply.status, 200);
    }
    let db = s.config.database.path.clone();
    assert_eq!(
        count(&db, "SELECT uncertain FROM objects WHERE id = 'cus_burst'"),
        1
    );
    assert_eq!(
        count(&db, "SELECT requests FROM refetch_jobs"),
        3,
        "three ties, one job"
    );
    wait_until("the refetch", || {
        count(
            &db,
            "SELECT COUNT(*) FROM objects WHERE id = 'cus_burst' AND source = 'refetch'",
        ) == 1
            && count(&db, "SELECT COUNT(*) FROM refetch_jobs") == 0
    });
    let gets = stub
        .requests()
        .iter()
        .filter(|r| r.path == format!("/v1/customers/{id}"))
        .count();
    assert_eq!(gets, 1, "one GET for the burst");
    let (uncertain, name): (i64, String) = store::open_read_only(&db)
        .unwrap()
        .query_row(
            "SELECT uncertain, name FROM customers WHERE id = 'cus_burst'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (uncertain, name.as_str()),
        (0, "Final"),
        "certain now, as Stripe has it"
    );
    service.shutdown();
}

/// GET (or POST a form) on the admin listener, with the cookie (open mode binds its CSRF token
/// to one); the cookie it sets, if any, replaces `cookie`.
fn admin(
    addr: std::net::SocketAddr,
    cookie: &mut String,
    method: &str,
    path: &str,
    form: &str,
) -> support::Reply {
    let header = [("Cookie", cookie.as_str())];
    let headers: &[(&str, &str)] = if cookie.is_empty() { &[] } else { &header };
    let reply = support::raw(
        addr,
        &support::request(method, path, form.as_bytes(), headers, true),
    );
    if let Some(set) = reply.header("Set-Cookie") {
        *cookie = set.split(';').next().unwrap_or("").to_owned();
    }
    reply
}

fn csrf(html: &str) -> String {
    let at = html
        .find("name=\"csrf_token\" value=\"")
        .expect("a csrf field");
    let rest = &html[at + "name=\"csrf_token\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[test]
fn the_admin_shows_the_source_a_refetch_button_and_the_last_runs() {
    let stub = Stub::start(Account {
        objects: BTreeMap::from([("customers".into(), customers(3, 1_700_000_000))]),
        ..Account::default()
    });
    stub.hook(|r, _| {
        (r.path == "/v1/customers/cus_missing")
            .then(|| Fault::error(403, "invalid_request_error", "secret_key_required", &[]))
    });
    let s = setup(&stub, "");
    let service = serve(&s);
    let a = service.admin_addr();
    let mut jar = String::new();
    let report = {
        let api = service.stripe().unwrap();
        let kinds = [catalog::by_type("customer").unwrap()];
        backfill::run(api, &kinds, false, &mut (), &Stop::default()).unwrap()
    };
    assert_eq!(report.types[0].fetched, 3);
    let page = admin(a, &mut jar, "GET", "/objects/cus_stub0001", "");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<dt>source</dt><dd>backfill"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("/objects/cus_stub0001/refetch"),
        "a Refetch button"
    );
    // The button: CSRF first.
    assert_eq!(
        admin(
            a,
            &mut jar,
            "POST",
            "/objects/cus_stub0001/refetch",
            "csrf_token=nope"
        )
        .status,
        403
    );
    let token = csrf(&page.body);
    let done = admin(
        a,
        &mut jar,
        "POST",
        "/objects/cus_stub0001/refetch",
        &format!("csrf_token={token}"),
    );
    assert_eq!(done.status, 303, "{}", done.body);
    let db = s.config.database.path.clone();
    wait_until("the refetch", || {
        count(
            &db,
            "SELECT COUNT(*) FROM objects WHERE id = 'cus_stub0001' AND source = 'refetch'",
        ) == 1
    });
    let page = admin(a, &mut jar, "GET", "/objects/cus_stub0001", "");
    assert!(
        page.body.contains("<dt>source</dt><dd>refetch"),
        "{}",
        page.body
    );
    // The dashboard: the last backfill, and an API error.
    let _ = admin(
        a,
        &mut jar,
        "POST",
        "/objects/cus_missing/refetch",
        &format!("csrf_token={token}"),
    );
    wait_until("the failed refetch", || {
        count(&db, "SELECT COUNT(*) FROM stripe_errors") > 0
    });
    let dash = admin(a, &mut jar, "GET", "/", "");
    assert!(dash.body.contains("last backfill"), "{}", dash.body);
    assert!(dash.body.contains("3 fetched"), "{}", dash.body);
    assert!(dash.body.contains("secret_key_required"), "{}", dash.body);
    service.shutdown();
}

#[test]
fn commands_hand_their_work_to_a_running_server() {
    let stub = Stub::start(Account {
        objects: BTreeMap::from([("customers".into(), customers(12, 1_700_000_000))]),
        page_size: 5,
        ..Account::default()
    });
    let s = setup(&stub, "");
    let service = serve(&s);
    let db = s.config.database.path.clone();
    let control = db.with_file_name("inbox.db.control");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&control).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only the service's user reads the token");
    }
    // The command runs without the key: the server's is used.
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&s.config.file)
            .env("RUST_LOG", "warn")
            .env_remove(&s.key_env)
            .output()
            .unwrap()
    };
    assert!(Lock::held(&db).is_some(), "the server holds the database");
    let out = run(&["backfill", "--type", "customer"]);
    let text = support::process::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("handing the work to the running server"),
        "{text}"
    );
    assert!(text.contains("12 fetched"), "{text}");
    assert!(
        Lock::held(&db).is_some(),
        "and still does: the command never opened it to write"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM objects WHERE source = 'backfill'"
        ),
        12
    );
    // A refetch, and a refusal from the server arrive the same way.
    let out = run(&["refetch", "cus_stub0003"]);
    assert!(out.status.success(), "{}", support::process::text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cus_stub0003 customer: replaced"));
    let out = run(&["connect", "--url", "https://shop.example/hook"]);
    assert!(out.status.success(), "{}", support::process::text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("whsec_stub_secret_1"));
    let out = run(&["connect", "--url", "https://shop.example/hook"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists already"),
        "{}",
        support::process::text(&out)
    );
    // The endpoint wants its token.
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&control).unwrap()).unwrap();
    let url = file["url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    let wrong = support::raw(
        url,
        &support::request(
            "POST",
            "/control/work",
            b"{}",
            &[("Authorization", "Bearer nope")],
            true,
        ),
    );
    assert_eq!(wrong.status, 401);
    let none = support::raw(
        url,
        &support::request("GET", "/control/jobs/1", b"", &[], true),
    );
    assert_eq!(none.status, 401);
    service.shutdown();
    assert!(!control.exists(), "removed at shutdown");
    // With no server the command does the work itself, under the lock.
    let out = Command::new(BIN)
        .args(["backfill", "--config"])
        .arg(&s.config.file)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = support::process::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("handing"), "{text}");
    assert!(
        text.contains("customer") && text.contains("12 unchanged"),
        "{text}"
    );
}

#[test]
fn serve_says_once_that_the_stripe_client_is_off() {
    let dir = TempDir::new("stripe-off");
    let (webhook, admin) = (support::free_addr(), support::free_addr());
    let config = dir.path().join("config.toml");
    std::fs::write(&config, config_text(dir.path(), &webhook, &admin, "")).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("STRIPE_API_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = admin.parse().unwrap();
    let db = dir.path().join("inbox.db");
    wait_until("serve", || {
        std::net::TcpStream::connect(addr).is_ok() && db.with_file_name("inbox.db.control").exists()
    });
    // The control endpoint says why it cannot help.
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(db.with_file_name("inbox.db.control")).unwrap(),
    )
    .unwrap();
    let token = file["token"].as_str().unwrap();
    let body = br#"{"work":"refetch","ids":["cus_1"]}"#;
    let reply = support::raw(
        addr,
        &support::request(
            "POST",
            "/control/work",
            body,
            &[("Authorization", &format!("Bearer {token}"))],
            true,
        ),
    );
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body.contains("no Stripe API key"));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("stripe API off").count(), 1, "{log}");
    assert!(log.contains("STRIPE_API_KEY"), "{log}");
}

#[test]
fn serve_reconciles_at_start_up_and_backfills_on_its_schedule() {
    // Stripe has three events the inbox never got, newer than the one it has, and two customers.
    let now = time::now_ms() / 1000;
    let event = |n: usize, created: i64| {
        let mut e = stripe_inbox::event::testevent::build("customer.updated", created).unwrap();
        e["id"] = json!(format!("evt_missed{n}"));
        e["data"]["object"] = one_customer(&format!("cus_missed{n}"), "Missed");
        e
    };
    let stub = Stub::start(Account {
        events: (1..=3)
            .rev()
            .map(|n| event(n, now - 600 + n as i64))
            .collect(),
        objects: BTreeMap::from([("customers".into(), customers(2, now - 7200))]),
        ..Account::default()
    });
    let s = setup(&stub, "");
    let db = s.config.database.path.clone();
    {
        let conn = store::open_writer(&db).unwrap();
        let body = serde_json::to_vec(&event(0, now - 3600)).unwrap();
        let ingest = Ingest {
            envelope: envelope::parse(&body).unwrap(),
            body,
            secret_index: Some(0),
            received_at_ms: time::now_ms(),
            source: Source::Webhook,
        };
        store_event(&conn, &ingest, &Effects::default()).unwrap();
    }
    let mut config = s.config.clone();
    config.stripe.reconcile_every = "1h".into();
    config.stripe.resync_every = "24h".into();
    let service = Service::start(&config).unwrap();
    wait_until("the start-up reconcile and the first backfill", || {
        count(
            &db,
            "SELECT COUNT(*) FROM events WHERE source = 'reconcile'",
        ) == 3
            && count(
                &db,
                "SELECT COUNT(*) FROM objects WHERE source = 'backfill'",
            ) == 2
    });
    service.shutdown();
    // The reconcile covered the time since the newest stored event, with the overlap.
    let asked: i64 = stub
        .requests()
        .iter()
        .find(|r| r.path == "/v1/events")
        .and_then(|r| r.param("created[gte]").map(|v| v.parse().unwrap()))
        .unwrap();
    assert_eq!(asked, now - 3600 - reconcile::OVERLAP_SECS);
    let summary: String = store::open_read_only(&db)
        .unwrap()
        .query_row(
            "SELECT summary FROM stripe_runs WHERE kind = 'reconcile'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(summary.contains("3 missing and now stored"), "{summary}");
    // A restart within the day does not backfill again.
    let before = stub
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/customers")
        .count();
    let service = Service::start(&config).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    service.shutdown();
    let after = stub
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/customers")
        .count();
    assert_eq!(before, after, "the last backfill is less than 24h old");
}
