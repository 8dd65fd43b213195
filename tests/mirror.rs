//! The mirror end to end: real signed deliveries in shuffled order with duplicates give the mirror
//! that in-order projection gives; `replay --rebuild` reproduces it; `object` explains it; the read
//! API serves it.

use std::process::Command;

use stripe_inbox::testkit::streams::{self as streams, Stream};
use stripe_inbox::{event::signature, store, time};

use crate::support::{self, TestApp, SECRET};

const BIN: &str = env!("CARGO_BIN_EXE_stripe-inbox");

/// The mirror that in-order delivery of every stream gives, projected in memory.
fn in_order(all: &[Stream]) -> String {
    let conn = store::open_memory().unwrap();
    let mut seq = 0;
    for stream in all {
        for event in &stream.events {
            seq += 1;
            streams::deliver(&conn, event, seq * 1000).unwrap();
        }
    }
    streams::dump(&conn).unwrap()
}

/// A small seeded shuffle (xorshift), so a failure names its seed.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        items.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

fn post_signed(app: &TestApp, body: &[u8]) -> u16 {
    // Stripe signs at delivery time, not at event creation: the event's `created` is old.
    let sig = signature::sign(body, SECRET, time::now_ms() / 1000);
    app.post(body, &[("Stripe-Signature", &sig)]).status
}

#[test]
fn shuffled_deliveries_with_duplicates_converge_over_http() {
    let all = streams::all();
    let expected = in_order(&all);
    for seed in [1u64, 7, 42] {
        let app = TestApp::start();
        let mut deliveries: Vec<&streams::StreamEvent> =
            all.iter().flat_map(|s| &s.events).collect();
        // Every third event is delivered twice.
        let dups: Vec<_> = deliveries.iter().step_by(3).copied().collect();
        deliveries.extend(dups);
        shuffle(&mut deliveries, seed);
        for event in &deliveries {
            assert_eq!(
                post_signed(&app, event.body.as_bytes()),
                200,
                "seed {seed}: {}",
                event.id
            );
        }
        let conn = store::open_read_only(&app.db_path()).unwrap();
        let got = streams::dump(&conn).unwrap();
        assert_eq!(
            got, expected,
            "seed {seed}: the mirror differs from in-order delivery"
        );
        let undecided: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM events WHERE decision IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(undecided, 0, "every event records its decision");
    }
}

#[test]
fn replay_rebuild_gives_the_same_mirror_and_object_explains_it() {
    let mut app = TestApp::start();
    let all = streams::all();
    let mut deliveries: Vec<&streams::StreamEvent> = all.iter().flat_map(|s| &s.events).collect();
    shuffle(&mut deliveries, 99);
    for event in &deliveries {
        assert_eq!(post_signed(&app, event.body.as_bytes()), 200);
    }
    let decisions = |db: &std::path::Path| -> Vec<(String, String)> {
        let conn = store::open_read_only(db).unwrap();
        let mut stmt = conn
            .prepare("SELECT id, decision FROM events ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let before = streams::dump(&store::open_read_only(&app.db_path()).unwrap()).unwrap();
    let decisions_before = decisions(&app.db_path());
    let config = app.config.file.clone();

    // The rebuild needs the database to itself.
    let out = Command::new(BIN)
        .args(["replay", "--rebuild", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "refused while serving");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already served"));
    app.stop();

    let out = Command::new(BIN)
        .args(["replay", "--rebuild", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("from {} events", deliveries.len())),
        "{printed}"
    );
    let after = streams::dump(&store::open_read_only(&app.db_path()).unwrap()).unwrap();
    assert_eq!(after, before, "rebuild reproduces the mirror");
    assert_eq!(
        decisions(&app.db_path()),
        decisions_before,
        "and every decision"
    );

    // `object` prints the state and the history with decisions, marking the event that holds it.
    let conn = store::open_read_only(&app.db_path()).unwrap();
    let (id, holder): (String, String) = conn
        .query_row(
            "SELECT id, event_id FROM objects WHERE type = 'subscription' LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let out = Command::new(BIN)
        .args(["object", &id, "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.starts_with(&format!("{id} (subscription)")),
        "{printed}"
    );
    assert!(
        printed.contains("customer.subscription.created"),
        "{printed}"
    );
    assert!(
        printed.contains(holder.as_str()) && printed.contains("<- mirror"),
        "{printed}"
    );
    let out = Command::new(BIN)
        .args(["object", "cus_nope", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn read_api_needs_its_token_and_filters() {
    let token_var = "STRIPE_INBOX_TEST_API_TOKEN_IT";
    std::env::set_var(token_var, "tok_secret_123");
    let dir = support::TempDir::new("api");
    let text = support::config_text(dir.path(), "127.0.0.1:0", "127.0.0.1:0", "")
        + &format!("\n[api]\ntoken_env = \"{token_var}\"\n");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let config = stripe_inbox::config::Config::load(&path).unwrap();
    let service = stripe_inbox::service::Service::start(&config).unwrap();
    let (addr, admin) = (service.webhook_addr(), service.admin_addr());
    for stream in [
        streams::subscription(),
        streams::customer(),
        streams::checkout(),
    ] {
        for event in &stream.events {
            let sig = signature::sign(event.body.as_bytes(), SECRET, time::now_ms() / 1000);
            let reply = support::post(
                addr,
                "/webhooks/stripe",
                event.body.as_bytes(),
                &[("Stripe-Signature", &sig)],
            );
            assert_eq!(reply.status, 200);
        }
    }
    let get = |path: &str, token: Option<&str>| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        support::raw(
            admin,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
    };
    assert_eq!(get("/api/objects", None).status, 401);
    assert_eq!(get("/api/objects", Some("wrong")).status, 401);
    let conn = store::open_read_only(&config.database.path).unwrap();
    let (sub, customer, status): (String, String, String) = conn
        .query_row(
            "SELECT id, customer, status FROM subscriptions LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();

    let one = get(&format!("/api/objects/{sub}"), Some("tok_secret_123"));
    assert_eq!(one.status, 200, "{one:?}");
    let v: serde_json::Value = serde_json::from_str(&one.body).unwrap();
    assert_eq!(v["type"], "subscription");
    assert_eq!(v["data"]["status"], status.as_str());
    assert_eq!(
        get("/api/objects/sub_missing", Some("tok_secret_123")).status,
        404
    );

    let list = get(
        &format!("/api/objects?type=subscription&customer={customer}"),
        Some("tok_secret_123"),
    );
    let v: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(v["object"], "list");
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == sub.as_str()),
        "{v}"
    );
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["type"] == "subscription"));

    // Pagination: limit=1 then starting_after walks every object once.
    let total: i64 = conn
        .query_row("SELECT COUNT(*) FROM objects", [], |r| r.get(0))
        .unwrap();
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let q = if after.is_empty() {
            "/api/objects?limit=2".to_string()
        } else {
            format!("/api/objects?limit=2&starting_after={after}")
        };
        let v: serde_json::Value =
            serde_json::from_str(&get(&q, Some("tok_secret_123")).body).unwrap();
        for o in v["data"].as_array().unwrap() {
            seen.push(o["id"].as_str().unwrap().to_string());
        }
        if !v["has_more"].as_bool().unwrap() {
            break;
        }
        after = seen.last().unwrap().clone();
    }
    assert_eq!(seen.len() as i64, total);

    // metadata[...] filters, and bad parameters are 400.
    let meta: Option<(String, String, String)> = conn
        .query_row(
            "SELECT o.id, m.key, m.value FROM objects o, json_each(o.data, '$.metadata') m WHERE m.type = 'text' LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok();
    if let Some((id, key, value)) = meta {
        let v: serde_json::Value = serde_json::from_str(
            &get(
                &format!("/api/objects?metadata%5B{key}%5D={value}"),
                Some("tok_secret_123"),
            )
            .body,
        )
        .unwrap();
        assert!(
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["id"] == id.as_str()),
            "{v}"
        );
    }
    assert_eq!(
        get("/api/objects?limit=500", Some("tok_secret_123")).status,
        400
    );
    assert_eq!(
        get("/api/objects?colour=red", Some("tok_secret_123")).status,
        400
    );
    service.shutdown();
    std::env::remove_var(token_var);
}

#[test]
fn read_api_is_off_without_a_token() {
    let app = TestApp::start();
    let reply = support::raw(app.admin, b"GET /api/objects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\nConnection: close\r\n\r\n");
    assert_eq!(reply.status, 404);
    assert!(reply.body.contains("read API is off"));
}

#[test]
fn check_compares_the_mirror_with_a_rebuild() {
    let mut app = TestApp::start();
    for event in &streams::invoice().events {
        assert_eq!(post_signed(&app, event.body.as_bytes()), 200);
    }
    let config = app.config.file.clone();
    let check = || {
        Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };

    let out = check();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not compared"),
        "while serving it only reads"
    );
    // Damage the mirror behind the rules' back, through the writer.
    let writer = app.service.as_ref().unwrap().writer();
    writer
        .run(|conn| {
            conn.execute(
                "UPDATE object_rows SET data = '{}', body_seq = NULL WHERE type = 'invoice'",
                [],
            )
            .map(|_| ())
            .map_err(|e| stripe_inbox::error::Error::sqlite("damage", e))
        })
        .unwrap();
    app.stop();

    let out = check();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(printed.contains("differ from a rebuild"), "{printed}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("replay --rebuild"));
    assert_eq!(
        check().status.code(),
        Some(1),
        "check reports; it changes nothing"
    );

    let rebuilt = Command::new(BIN)
        .args(["replay", "--rebuild", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(rebuilt.status.success());
    let out = check();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("the same as a rebuild"), "{printed}");
}
