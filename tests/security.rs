//! Issue 13, end to end: the listeners against a hostile client. Each case the issue found is a
//! test here, with the bytes that broke it; the attacks come from 127.0.0.2 and the genuine
//! sender from 127.0.0.3, on a service with small limits so that nothing takes long.

use std::time::{Duration, Instant};

use stripe_inbox::time;

use crate::support::security::{
    call_from, genuine_events, serve, signed, start, Attack, Kind, API_TOKEN,
};
use crate::support::{event, event_id, raw, request, Reply, TempDir};

const ATTACKER: &str = "127.0.0.2";
const GENUINE: &str = "127.0.0.3";

/// Small limits: 24 connections, 6 per address, so that the attacks reach them quickly.
const SMALL_WEBHOOK: &str = "max_connections = 24\nmax_connections_per_addr = 6";
/// Connections the attacker keeps trying to hold: the whole webhook listener, six times the
/// admin's room for one address.
const ATTACKERS: usize = 24;

/// Issue 13, case 1, on the webhook listener: idle connections re-opened when closed, a request
/// trickled a byte at a time, and a client that pipelines requests and reads slowly, each from
/// one address with as many connections as the whole listener holds: a genuine event from another address gets
/// its 200 within a second all along.
#[test]
fn genuine_events_get_through_while_one_address_attacks_the_webhook() {
    let app = start(SMALL_WEBHOOK, "password_env = \"\"");
    for kind in [Kind::Idle, Kind::Trickle, Kind::SlowReader] {
        let attack = Attack::start(ATTACKER, app.addr, kind, ATTACKERS, "/webhooks/stripe");
        std::thread::sleep(Duration::from_millis(300));
        let slowest = genuine_events(GENUINE, app.addr, 8);
        let opened = attack.opened.load(std::sync::atomic::Ordering::SeqCst);
        drop(attack);
        println!(
            "{kind:?}: {opened} attacking connections opened; slowest genuine answer {slowest:?}"
        );
        assert!(
            opened >= ATTACKERS as u64,
            "{kind:?}: the attack did not run ({opened})"
        );
    }
    assert_eq!(app.event_count(), 24);
}

/// Issue 13, case 1, on the admin listener and the read API: the same attacks on the admin
/// listener (64 connections in all, here 4 per address) leave `/healthz` and the read API
/// answering another address within a second.
#[test]
fn the_admin_and_read_api_stay_reachable_while_one_address_attacks() {
    let app = start("", "password_env = \"\"\nmax_connections_per_addr = 4");
    let api = request(
        "GET",
        "/api/objects?limit=1",
        b"",
        &[("Authorization", &format!("Bearer {API_TOKEN}"))],
        true,
    );
    let health = request("GET", "/healthz", b"", &[], true);
    for kind in [Kind::Idle, Kind::Trickle, Kind::SlowReader] {
        let attack = Attack::start(ATTACKER, app.admin, kind, ATTACKERS, "/healthz");
        std::thread::sleep(Duration::from_millis(300));
        for i in 0..6 {
            for (what, bytes) in [("/healthz", &health), ("/api/objects", &api)] {
                let started = Instant::now();
                let reply = call_from(GENUINE, app.admin, bytes);
                let took = started.elapsed();
                assert_eq!(reply.status, 200, "{kind:?} {what} {i}: {reply:?}");
                assert!(
                    took < Duration::from_secs(1),
                    "{kind:?} {what} {i}: {took:?}"
                );
            }
        }
        drop(attack);
    }
}

/// Issue 13, case 2: without a password, a reverse proxy publishing the admin (nginx's bare
/// `proxy_pass http://127.0.0.1:8081;` sends `Host: 127.0.0.1:8081` and no proxy header) got the
/// events page, and so did requests with only `Via`, `X-Forwarded-Proto`, `X-Client-IP`,
/// `True-Client-IP` or `CF-Connecting-IP`. Now no request gets a page without the one-time
/// link's session; `/healthz`, `/metrics` and the webhook do not care.
#[test]
fn without_a_password_the_admin_is_closed_but_for_the_login_link() {
    let dir = TempDir::new("security-link");
    let serve = serve(&dir, "password_env = \"\"");
    let ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36";
    let heads = [
        format!("GET /events HTTP/1.0\r\nHost: 127.0.0.1:8081\r\nUser-Agent: {ua}\r\n\r\n"),
        "GET /events HTTP/1.1\r\nHost: localhost\r\nVia: 1.1 nginx\r\nConnection: close\r\n\r\n".into(),
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n".into(),
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Client-IP: 1.2.3.4\r\nConnection: close\r\n\r\n".into(),
        "GET /objects HTTP/1.1\r\nHost: localhost\r\nTrue-Client-IP: 1.2.3.4\r\nConnection: close\r\n\r\n".into(),
        "GET / HTTP/1.1\r\nHost: localhost\r\nCF-Connecting-IP: 1.2.3.4\r\nConnection: close\r\n\r\n".into(),
    ];
    for head in &heads {
        let reply = raw(serve.admin, head.as_bytes());
        assert_eq!(reply.status, 303, "{head:?}: {reply:?}");
        assert_eq!(
            reply.header("location").as_deref(),
            Some("/login"),
            "{head:?}"
        );
        assert!(!reply.body.contains("<table"), "{head:?}");
    }
    for path in ["/healthz", "/metrics"] {
        let reply = raw(serve.admin, &request("GET", path, b"", &[], true));
        assert_eq!(reply.status, 200, "{path}");
    }
    let body = event("customer.created");
    assert_eq!(
        raw(serve.addr, &signed(&body)).status,
        200,
        "webhooks never depend on the admin"
    );
    let login = raw(serve.admin, &request("GET", "/login", b"", &[], true));
    assert!(login.body.contains("one-time login link"), "{login:?}");

    // The link is in the log, once.
    let log = serve.log();
    let at = log.find("/login?token=").expect("the login link is logged");
    let token: String = log[at + "/login?token=".len()..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    assert_eq!(token.len(), 64);
    assert!(
        log[..at].contains(&format!("http://{}", serve.admin)),
        "{log}"
    );
    let wrong = raw(
        serve.admin,
        &request(
            "GET",
            &format!("/login?token={}", "0".repeat(64)),
            b"",
            &[],
            true,
        ),
    );
    assert_eq!(wrong.status, 403);
    let link = format!("/login?token={token}");
    let ok = raw(serve.admin, &request("GET", &link, b"", &[], true));
    assert_eq!(ok.status, 303, "{ok:?}");
    assert_eq!(
        ok.header("location").as_deref(),
        Some("/"),
        "redirected to a URL without the token"
    );
    let cookie = ok.header("set-cookie").unwrap();
    let pair = cookie.split(';').next().unwrap().to_string();
    let page = raw(
        serve.admin,
        &request("GET", "/events", b"", &[("Cookie", &pair)], true),
    );
    assert_eq!(page.status, 200, "{page:?}");
    let again = raw(serve.admin, &request("GET", &link, b"", &[], true));
    assert_eq!(again.status, 403, "the link works once");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        serve.log().matches(&token).count(),
        1,
        "the token is never logged again"
    );
}

/// Logs in from `src` (optionally through a proxy naming `forwarded`); the status.
fn login(addr: std::net::SocketAddr, src: &str, forwarded: Option<&str>, password: &str) -> u16 {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(f) = forwarded {
        headers.push(("X-Forwarded-For", f));
    }
    let form = call_from(src, addr, &request("GET", "/login", b"", &headers, true));
    let set = form.header("set-cookie").unwrap();
    let cookie = set.split(';').next().unwrap().to_string();
    let at = form.body.find("name=\"csrf_token\" value=\"").unwrap() + 25;
    let token = &form.body[at..at + 64];
    let body = format!(
        "csrf_token={token}&password={}",
        stripe_inbox::admin::html::url_encode(password)
    );
    headers.push(("Cookie", &cookie));
    headers.push(("Content-Type", "application/x-www-form-urlencoded"));
    call_from(
        src,
        addr,
        &request("POST", "/login", body.as_bytes(), &headers, true),
    )
    .status
}

/// Issue 13, case 3: five wrong logins each from eight addresses drained a shared bucket, and
/// the right password from a fresh address got 429; behind a proxy everyone shared one address.
/// Now each address waits on its own, and behind a trusted proxy each client is its own address.
#[test]
fn wrong_logins_elsewhere_never_lock_the_owner_out() {
    crate::support::set_admin_password_env();
    let admin = format!(
        "password_env = \"{}\"\ntrusted_proxies = [\"127.0.0.1\"]",
        crate::support::ADMIN_PASSWORD_ENV
    );
    let app = start("", &admin);
    let right = crate::support::ADMIN_PASSWORD;
    for i in 2..10 {
        let src = format!("127.0.0.{i}");
        for _ in 0..5 {
            assert_eq!(login(app.admin, &src, None, "guess"), 401, "{src}");
        }
        assert_eq!(login(app.admin, &src, None, right), 429, "{src} waits now");
    }
    assert_eq!(
        login(app.admin, "127.0.0.10", None, right),
        303,
        "a fresh address logs in"
    );
    // Behind the trusted proxy (127.0.0.1), each client named by X-Forwarded-For is counted alone.
    for client in ["198.51.100.1", "198.51.100.2"] {
        for _ in 0..5 {
            assert_eq!(login(app.admin, "127.0.0.1", Some(client), "guess"), 401);
        }
        assert_eq!(login(app.admin, "127.0.0.1", Some(client), right), 429);
    }
    assert_eq!(
        login(app.admin, "127.0.0.1", Some("198.51.100.3"), right),
        303
    );
    // From a peer that is not a trusted proxy, X-Forwarded-For is ignored: a new name each time
    // does not buy new attempts.
    for i in 0..5 {
        let fake = format!("203.0.113.{i}");
        assert_eq!(login(app.admin, "127.0.0.11", Some(&fake), "guess"), 401);
    }
    assert_eq!(
        login(app.admin, "127.0.0.11", Some("203.0.113.99"), right),
        429
    );
}

/// Issue 13, case 4 end to end: the chunk-extension smuggle (`2;\nxx\r\n7f\r\n...`) carried a
/// second, signed event that was stored. Now it is 400 and nothing is written; an absolute-form
/// target is served; an over-long request line is 414.
#[test]
fn a_smuggled_event_is_refused_and_absolute_form_is_served() {
    let app = start("", "password_env = \"\"");
    let inner = event("invoice.paid");
    let sig =
        stripe_inbox::event::signature::sign(&inner, crate::support::SECRET, time::now_ms() / 1000);
    let smuggled = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: {sig}\r\nContent-Length: {}\r\n\r\n{}",
        inner.len(),
        String::from_utf8_lossy(&inner)
    );
    let bytes = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;\nxx\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len() + 2
    );
    let reply = raw(app.addr, bytes.as_bytes());
    assert_eq!(reply.status, 400, "{reply:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(app.event_count(), 0, "the smuggled event was stored");

    let body = event("customer.created");
    let sig =
        stripe_inbox::event::signature::sign(&body, crate::support::SECRET, time::now_ms() / 1000);
    let absolute = request(
        "POST",
        "http://x/webhooks/stripe",
        &body,
        &[("Stripe-Signature", &sig)],
        true,
    );
    let reply = raw(app.addr, &absolute);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(app.event_count(), 1);
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(10_000));
    assert_eq!(raw(app.addr, long.as_bytes()).status, 414);
    assert_eq!(raw(app.admin, long.as_bytes()).status, 414);
}

/// Issue 13, case 5: a signed thin event whose `created` is `2025-10-04T15:13:32+0é00` panicked
/// the parser (500); so did the admin's `from=` and `to=`. Now it is a 400 and a page.
#[test]
fn a_created_that_splits_a_character_is_a_400_not_a_panic() {
    let app = start("", "password_env = \"\"\nopen_on_loopback = true");
    let thin = serde_json::json!({
        "id": "evt_test_thin_e_acute", "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "created": "2025-10-04T15:13:32+0é00", "livemode": false,
        "related_object": {"id": "mtr_1", "type": "billing.meter", "url": "/v1/billing/meters/mtr_1"},
    });
    let body = serde_json::to_vec(&thin).unwrap();
    let reply = raw(app.addr, &signed(&body));
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(reply.body.contains("created"), "{reply:?}");
    assert_eq!(app.event_count(), 0);
    for query in [
        "from=2025-10-04T15:13:32%2B0%C3%A900",
        "to=2025-10-04T15:13:32%2B0%C3%A900",
        "from=2025-10-04T15:13:32%2B%C3%A9:00&to=2025-10-04T15:13:3%C3%A9",
        "from=9223372036854775807",
    ] {
        let reply = raw(
            app.admin,
            &request("GET", &format!("/events?{query}"), b"", &[], true),
        );
        assert_eq!(reply.status, 200, "{query}: {reply:?}");
    }
    // The same event with a well-formed time is stored.
    let mut good = thin.clone();
    good["created"] = "2025-10-04T17:13:32+02:00".into();
    let body = serde_json::to_vec(&good).unwrap();
    assert_eq!(raw(app.addr, &signed(&body)).status, 200);
    assert_eq!(event_id(&body), "evt_test_thin_e_acute");
}

/// Issue 13, case 6, for the read API: `metadata[\]=x` was a 500, `bearer` in lower case was
/// refused, and answers carried neither `nosniff` nor `no-store`.
#[test]
fn the_read_api_checks_keys_takes_any_case_and_is_never_cached() {
    let app = start("", "password_env = \"\"");
    let get = |path: &str, auth: &str| -> Reply {
        raw(
            app.admin,
            &request("GET", path, b"", &[("Authorization", auth)], true),
        )
    };
    let bearer = format!("Bearer {API_TOKEN}");
    for (path, auth, status) in [
        ("/api/objects?metadata[\\]=x", bearer.clone(), 400),
        ("/api/objects?metadata%5B%5C%5D=x", bearer.clone(), 400),
        ("/api/objects?metadata[cart_id]=c_1", bearer.clone(), 200),
        ("/api/objects", format!("bearer {API_TOKEN}"), 200),
        ("/api/objects", format!("BEARER {API_TOKEN}"), 200),
        ("/api/objects", "Bearer wrong".into(), 401),
        ("/api/objects/cus_missing", bearer.clone(), 404),
    ] {
        let reply = get(path, &auth);
        assert_eq!(reply.status, status, "{path} {auth:?}: {reply:?}");
        assert_eq!(
            reply.header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(
            reply.header("cache-control").as_deref(),
            Some("no-store"),
            "{path}"
        );
    }
}
