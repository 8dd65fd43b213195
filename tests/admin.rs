//! The admin listener end to end: who may see what, CSRF on every POST, escaping of hostile
//! values, the events and objects pages, replay and rebuild, `/metrics` and `/healthz`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use stripe_inbox::admin::event_search::{self, Filter};
use stripe_inbox::config::Config;
use stripe_inbox::service::Service;
use stripe_inbox::{store, time};

use crate::support::{
    self, event, event_id, raw, request, Reply, TempDir, TestApp, ADMIN_PASSWORD,
};

/// A browser-like client: keeps cookies, sends forms.
struct Client {
    addr: SocketAddr,
    cookies: BTreeMap<String, String>,
    host: String,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            cookies: BTreeMap::new(),
            host: "localhost".into(),
        }
    }

    fn send(&mut self, method: &str, path: &str, body: &[u8], extra: &[(&str, &str)]) -> Reply {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if !cookie.is_empty() {
            headers.push(("Cookie", &cookie));
        }
        headers.extend_from_slice(extra);
        let mut bytes = request(method, path, body, &headers, true);
        // `request` writes `Host: localhost`; tests of the Host rule replace it.
        if self.host != "localhost" {
            let text = String::from_utf8(bytes).unwrap();
            bytes = text
                .replacen("Host: localhost", &format!("Host: {}", self.host), 1)
                .into_bytes();
        }
        let reply = raw(self.addr, &bytes);
        for line in reply.head.lines() {
            if let Some(v) = line
                .split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
                .map(|(_, v)| v.trim())
            {
                let pair = v.split(';').next().unwrap();
                let (name, value) = pair.split_once('=').unwrap();
                if value.is_empty() || v.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_string(), value.to_string());
                }
            }
        }
        reply
    }

    fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, b"", &[])
    }

    fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", stripe_inbox::admin::html::url_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.send(
            "POST",
            path,
            body.as_bytes(),
            &[("Content-Type", "application/x-www-form-urlencoded")],
        )
    }

    /// Logs in through the form.
    fn login(&mut self, password: &str) -> Reply {
        let form = self.get("/login");
        assert_eq!(form.status, 200, "{form:?}");
        let token = csrf(&form.body);
        self.post("/login", &[("csrf_token", &token), ("password", password)])
    }
}

/// The CSRF token in a page's forms.
fn csrf(html: &str) -> String {
    let at = html
        .find("name=\"csrf_token\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in {html}"));
    let rest = &html[at + "name=\"csrf_token\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

fn location(reply: &Reply) -> String {
    reply.header("location").unwrap_or_default()
}

/// Posts a signed event body and returns its id.
fn ingest(app: &TestApp, body: &[u8]) -> String {
    let reply = app.post_signed(body);
    assert_eq!(reply.status, 200, "{reply:?}");
    event_id(body)
}

#[test]
fn anonymous_access_is_refused_when_a_password_is_set() {
    let app = TestApp::start_with_admin_password();
    let id = ingest(&app, &event("customer.created"));
    let mut anon = Client::new(app.admin);
    // (method, path, status, Location for a redirect)
    for (method, path, status, to) in [
        ("GET", "/", 303, "/login"),
        ("GET", "/events", 303, "/login"),
        ("GET", &format!("/events/{id}"), 303, "/login"),
        ("GET", "/events?q=cus", 303, "/login"),
        ("GET", "/objects", 303, "/login"),
        ("GET", "/objects/cus_QXg1o8vcGmoR32", 303, "/login"),
        ("POST", &format!("/events/{id}/replay"), 403, ""),
        ("POST", "/objects/cus_QXg1o8vcGmoR32/rebuild", 403, ""),
        ("POST", "/logout", 403, ""),
        ("GET", "/healthz", 200, ""),
        ("GET", "/metrics", 200, ""),
        ("GET", "/admin.css", 200, ""),
        ("GET", "/login", 200, ""),
        ("DELETE", "/login", 405, ""),
    ] {
        let reply = anon.send(method, path, b"", &[]);
        assert_eq!(reply.status, status, "{method} {path}: {reply:?}");
        assert_eq!(location(&reply), to, "{method} {path}");
        if status == 303 || status == 403 {
            assert!(
                !reply.body.contains(&id),
                "{method} {path} leaked the event id"
            );
        }
    }
    // The login form has the password field and a CSRF token, and sets the CSRF cookie.
    let form = Client::new(app.admin).get("/login");
    assert!(form.body.contains("name=\"password\""));
    assert!(!csrf(&form.body).is_empty());
    let cookie = form.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
}

#[test]
fn login_csrf_session_and_logout() {
    let app = TestApp::start_with_admin_password();
    let mut c = Client::new(app.admin);

    // A wrong password: 401, no session.
    let wrong = c.login("not it");
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong password"));
    assert_eq!(c.get("/").status, 303);

    // The right password with a wrong or missing token: refused before the password is looked at.
    c.get("/login");
    for token in ["", "0000", &"a".repeat(64)] {
        let reply = c.post(
            "/login",
            &[("csrf_token", token), ("password", ADMIN_PASSWORD)],
        );
        assert_eq!(reply.status, 403, "token {token:?}");
    }
    // A token from another client's cookie does not work either.
    let mut other = Client::new(app.admin);
    let theirs = csrf(&other.get("/login").body);
    let reply = c.post(
        "/login",
        &[("csrf_token", &theirs), ("password", ADMIN_PASSWORD)],
    );
    assert_eq!(reply.status, 403);

    // The right password: a session cookie, then the pages.
    let ok = c.login(ADMIN_PASSWORD);
    assert_eq!(ok.status, 303, "{ok:?}");
    assert_eq!(location(&ok), "/");
    let session = ok.header("set-cookie").unwrap();
    assert!(session.starts_with("stripe_inbox_session="), "{session}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(session.contains(attr), "{session} lacks {attr}");
    }
    assert!(
        !session.contains("Secure"),
        "cookie_secure is off by default"
    );
    let page = c.get("/");
    assert_eq!(page.status, 200, "{page:?}");
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(page.header("cache-control").as_deref(), Some("no-store"));
    assert!(page.body.contains("Log out"));

    // Logout needs the token too; then the session is gone.
    assert_eq!(c.post("/logout", &[("csrf_token", "x")]).status, 403);
    assert_eq!(c.get("/").status, 200);
    let token = csrf(&c.get("/").body);
    let out = c.post("/logout", &[("csrf_token", &token)]);
    assert_eq!(out.status, 303);
    assert_eq!(location(&out), "/login");
    assert_eq!(c.get("/").status, 303);
}

#[test]
fn login_is_rate_limited() {
    let app = TestApp::start_with_admin_password();
    let mut c = Client::new(app.admin);
    for _ in 0..5 {
        assert_eq!(c.login("guess").status, 401);
    }
    let limited = c.login(ADMIN_PASSWORD);
    assert_eq!(
        limited.status, 429,
        "even the right password waits: {limited:?}"
    );
    assert!(limited.header("retry-after").is_some());
}

#[test]
fn open_mode_answers_loopback_names_only_and_still_needs_csrf() {
    let app = TestApp::start();
    let id = ingest(&app, &event("invoice.paid"));
    let mut c = Client::new(app.admin);
    let page = c.get("/");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("No admin password is set"));
    assert!(!page.body.contains("Log out"));
    assert_eq!(location(&c.get("/login")), "/");

    // Replay without the token is refused; with it, done.
    assert_eq!(c.post(&format!("/events/{id}/replay"), &[]).status, 403);
    let token = csrf(&c.get(&format!("/events/{id}")).body);
    let wrong = c.post(&format!("/events/{id}/replay"), &[("csrf_token", "nope")]);
    assert_eq!(wrong.status, 403);
    let cross = c.send(
        "POST",
        &format!("/events/{id}/replay"),
        format!("csrf_token={token}").as_bytes(),
        &[("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(
        cross.status, 403,
        "another site's POST is refused even with the token"
    );
    let ok = c.post(&format!("/events/{id}/replay"), &[("csrf_token", &token)]);
    assert_eq!(ok.status, 303, "{ok:?}");

    // Another Host name (DNS rebinding): refused. (No proxy-header heuristic any more: the
    // config keeps open mode away from proxies; tests/security.rs.)
    let mut rebound = Client::new(app.admin);
    rebound.host = "attacker.example:8081".into();
    let reply = rebound.get("/");
    assert_eq!(reply.status, 403);
    assert!(!reply.body.contains(&id));
    // Health and metrics stay reachable for monitoring.
    assert_eq!(rebound.get("/healthz").status, 200);
}

#[test]
fn no_password_off_loopback_refuses_to_start() {
    let dir = TempDir::new("adminbind");
    let text = support::config_text_admin(
        dir.path(),
        "127.0.0.1:0",
        "0.0.0.0:0",
        "",
        "password_env = \"\"",
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let err = Service::start(&config)
        .err()
        .expect("must refuse")
        .to_string();
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(
        !dir.path().join("inbox.db").exists(),
        "refused before opening the database"
    );
}

/// A customer whose name, metadata and event type carry markup.
fn hostile_events() -> Vec<Vec<u8>> {
    let now = time::now_ms() / 1000;
    let xss = "<script>alert(1)</script>";
    let customer = serde_json::json!({
        "id": "cus_XSStest0001", "object": "customer", "email": "mallory@example.com",
        "name": format!("Mallory {xss}"), "created": now,
        "metadata": { format!("k{xss}"): format!("v\"><img src=x onerror=alert(2)>") },
    });
    let created = serde_json::json!({
        "id": "evt_XSStest0001", "object": "event", "type": "customer.created", "created": now,
        "livemode": false, "data": { "object": customer },
    });
    let odd_type = serde_json::json!({
        "id": "evt_XSStest0002", "object": "event", "type": format!("x.\"><svg onload=alert(3)>{xss}"),
        "created": now, "livemode": false,
        "data": { "object": { "id": "xx_XSStest0002", "object": "thing" } },
    });
    vec![
        serde_json::to_vec(&created).unwrap(),
        serde_json::to_vec(&odd_type).unwrap(),
    ]
}

#[test]
fn hostile_values_are_escaped_on_every_page() {
    let app = TestApp::start();
    for body in hostile_events() {
        ingest(&app, &body);
    }
    let mut c = Client::new(app.admin);
    for path in [
        "/",
        "/events",
        "/events/evt_XSStest0001",
        "/events/evt_XSStest0002",
        "/events?q=%3Cscript%3E",
        "/events?type=%3Cscript%3E*",
        "/objects",
        "/objects/cus_XSStest0001",
        "/objects?q=alert",
        "/objects?q=k%3Cscript%3Ealert(1)%3C%2Fscript%3E%3Dx",
        "/objects/xx_XSStest0002",
    ] {
        let page = c.get(path);
        assert!(page.status == 200, "{path}: {}", page.status);
        for raw_markup in ["<script", "<img", "<svg onload", "onerror=alert(2)>"] {
            assert!(
                !page.body.contains(raw_markup),
                "{path} contains {raw_markup}"
            );
        }
    }
    let object = c.get("/objects/cus_XSStest0001").body;
    assert!(
        object.contains("Mallory &lt;script&gt;alert(1)&lt;/script&gt;"),
        "{object}"
    );
    assert!(object.contains("k&lt;script&gt;"));
    let event = c.get("/events/evt_XSStest0002").body;
    assert!(
        event.contains("x.&quot;&gt;&lt;svg onload=alert(3)&gt;"),
        "{event}"
    );
}

#[test]
fn events_list_filters_and_pages_without_gaps() {
    let app = TestApp::start();
    let mut ids = Vec::new();
    let types = [
        "invoice.paid",
        "invoice.created",
        "customer.updated",
        "charge.succeeded",
    ];
    for i in 0..130 {
        ids.push(ingest(&app, &event(types[i % types.len()])));
    }
    let mut c = Client::new(app.admin);
    let rows = |html: &str| -> Vec<String> {
        html.split("<td class=\"id hide-s\">")
            .skip(1)
            .map(|s| s[..s.find('<').unwrap()].to_string())
            .collect()
    };
    // Walk every page: newest first, each event once.
    let mut seen = Vec::new();
    let mut path = "/events".to_string();
    loop {
        let page = c.get(&path);
        assert_eq!(page.status, 200);
        let got = rows(&page.body);
        assert!(got.len() <= event_search::PAGE);
        seen.extend(got);
        match page
            .body
            .split("<a href=\"/events?")
            .find(|s| s.contains(">Older"))
        {
            Some(link) => {
                path = format!("/events?{}", &link[..link.find('"').unwrap()]).replace("&amp;", "&")
            }
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    // A pattern over types, a decision, the body text, an object.
    let invoices = rows(&c.get("/events?type=invoice.*").body);
    assert_eq!(invoices.len(), event_search::PAGE);
    let invoice_ids: Vec<&String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 < 2)
        .map(|(_, id)| id)
        .rev()
        .collect();
    assert_eq!(
        invoices.iter().collect::<Vec<_>>(),
        invoice_ids[..event_search::PAGE].to_vec()
    );
    let one = &ids[77];
    assert_eq!(
        rows(&c.get(&format!("/events?q={one}")).body),
        vec![one.clone()]
    );
    let by_object = rows(&c.get("/events?object=cus_QXg1o8vcGmoR32").body);
    assert_eq!(by_object.len(), 130 / 4);
    let nothing = c.get("/events?type=nothing.*");
    assert!(nothing.body.contains("No events match"));
    let future = c.get("/events?from=2999-01-01T00:00");
    assert!(future.body.contains("No events match"));
    let all_day = rows(
        &c.get(&format!(
            "/events?from={}",
            &time::format_utc(time::now_ms() / 1000 - 3600)[..16].replace(' ', "T")
        ))
        .body,
    );
    assert_eq!(all_day.len(), event_search::PAGE);
}

#[test]
fn bounded_search_continues_where_it_stopped() {
    let app = TestApp::start();
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(ingest(&app, &event("payment_intent.succeeded")));
    }
    let conn = store::open_read_only(&app.db_path()).unwrap();
    // The oldest event's id, with a budget of 10 rows a page (a walk takes at least a page's
    // worth, 50): the first page finds nothing among the newest 50 and says where it stopped,
    // the second continues from there and finds it.
    let target = ids[0].clone();
    let mut filter = Filter {
        text: Some(target.clone()),
        ..Filter::default()
    };
    let rows10 = event_search::Budget {
        rows: 10,
        time: std::time::Duration::from_secs(60),
    };
    let first = event_search::find(&conn, &filter, rows10).unwrap();
    assert!(first.rows.is_empty());
    assert!(first.limited, "an empty page that stopped early says so");
    assert_eq!(first.scanned, event_search::PAGE);
    filter.before = first.next;
    let found = event_search::find(&conn, &filter, rows10).unwrap();
    assert_eq!(found.rows.len(), 1);
    assert_eq!(found.rows[0].id, target);
    assert_eq!(found.next, None);
}

#[test]
fn replay_and_rebuild_are_idempotent() {
    let app = TestApp::start_with_admin_password();
    let created = event("customer.created");
    let created_id = ingest(&app, &created);
    let updated_id = ingest(&app, &event("customer.updated"));
    let object = "cus_QXg1o8vcGmoR32";
    let mut c = Client::new(app.admin);
    assert_eq!(c.login(ADMIN_PASSWORD).status, 303);

    // Find the event by its object, open it.
    let list = c.get(&format!("/events?object={object}"));
    assert!(list.body.contains(&created_id) && list.body.contains(&updated_id));
    let page = c.get(&format!("/events/{created_id}"));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("What the mirror did"));
    let token = csrf(&page.body);

    let mirror = || -> (String, Option<String>, i64) {
        let conn = store::open_read_only(&app.db_path()).unwrap();
        conn.query_row(
            "SELECT data, event_id, updated_at FROM objects WHERE id = ?1",
            [object],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    };
    let decision = |id: &str| -> Option<String> {
        let conn = store::open_read_only(&app.db_path()).unwrap();
        conn.query_row("SELECT decision FROM events WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let before = mirror();
    assert_eq!(decision(&created_id).as_deref(), Some("applied"));

    // Wrong token: nothing happens.
    let refused = c.post(
        &format!("/events/{created_id}/replay"),
        &[("csrf_token", "bad")],
    );
    assert_eq!(refused.status, 403);

    // Replay twice: the mirrored state does not move, and the second replay records the same
    // decision as the first. (The first may differ from the live one: the create arrived first
    // and was applied, while replayed now, after the update, it is created_ignored.)
    let mut replayed_decision = None;
    for _ in 0..2 {
        let done = c.post(
            &format!("/events/{created_id}/replay"),
            &[("csrf_token", &token)],
        );
        assert_eq!(done.status, 303, "{done:?}");
        assert_eq!(
            location(&done),
            format!("/events/{created_id}?done=replayed")
        );
        let shown = c.get(&location(&done));
        assert!(shown.body.contains("Replayed."), "{}", shown.body);
        let now = decision(&created_id);
        assert!(now.is_some());
        if let Some(first) = &replayed_decision {
            assert_eq!(&now, first);
        }
        replayed_decision = Some(now);
        let after = mirror();
        assert_eq!((&after.0, &after.1), (&before.0, &before.1));
    }
    let missing = c.post("/events/evt_nope/replay", &[("csrf_token", &token)]);
    assert_eq!(missing.status, 404);

    // Rebuild the object from its events: the same state again.
    let obj = c.get(&format!("/objects/{object}"));
    assert_eq!(obj.status, 200);
    assert!(obj.body.contains(&created_id) && obj.body.contains(&updated_id));
    assert!(obj.body.contains("Timeline (2 events)"));
    for _ in 0..2 {
        let done = c.post(
            &format!("/objects/{object}/rebuild"),
            &[("csrf_token", &token)],
        );
        assert_eq!(done.status, 303, "{done:?}");
        assert!(location(&done).contains("done=rebuilt&n=2"));
        let after = mirror();
        assert_eq!((&after.0, &after.1), (&before.0, &before.1));
    }
}

#[test]
fn objects_browse_and_search() {
    let app = TestApp::start();
    for body in hostile_events() {
        ingest(&app, &body);
    }
    ingest(&app, &event("invoice.paid"));
    ingest(&app, &event("customer.subscription.updated"));
    let mut c = Client::new(app.admin);
    // An exact id goes to its page; an email finds the customer; metadata key=value; text.
    let exact = c.get("/objects?q=cus_XSStest0001");
    assert_eq!(location(&exact), "/objects/cus_XSStest0001");
    for (q, expect) in [
        ("MALLORY%40example.com", "cus_XSStest0001"),
        ("send_test_event%3D", ""),
        ("Mallory", "cus_XSStest0001"),
    ] {
        let page = c.get(&format!("/objects?q={q}"));
        assert_eq!(page.status, 200, "{q}");
        if !expect.is_empty() {
            assert!(page.body.contains(expect), "{q}: {}", page.body);
        }
    }
    // An email in the events search names its customer at once (through the index).
    let events = c.get("/events?q=mallory%40EXAMPLE.com");
    assert!(
        events.body.contains("This email belongs to"),
        "{}",
        events.body
    );
    assert!(events.body.contains("/events?object=cus_XSStest0001"));
    let subs = c.get("/objects?type=subscription");
    assert!(subs.body.contains("sub_"), "{}", subs.body);
    assert!(!subs.body.contains("cus_XSStest0001"));
    let missing = c.get("/objects/cus_none");
    assert_eq!(missing.status, 404);
}

#[test]
fn metrics_and_health() {
    let app = TestApp::start();
    for _ in 0..3 {
        ingest(&app, &event("charge.succeeded"));
    }
    app.post(b"{}", &[("Stripe-Signature", "t=1,v1=00")]);
    let mut c = Client::new(app.admin);
    let m = c.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    for line in [
        "stripe_inbox_webhook_requests_total{outcome=\"stored\"} 3",
        "stripe_inbox_signature_failures_total 1",
        "stripe_inbox_writer_queue_depth 0",
        "stripe_inbox_writer_batch_size_bucket{le=\"+Inf\"} ",
        "stripe_inbox_writer_commit_seconds_bucket{le=\"0.001\"} ",
        "stripe_inbox_writer_commit_seconds_count ",
    ] {
        assert!(m.body.contains(line), "missing {line} in\n{}", m.body);
    }
    let commits: u64 = m
        .body
        .lines()
        .find_map(|l| l.strip_prefix("stripe_inbox_writer_commit_seconds_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(commits >= 1);
    let h = c.get("/healthz");
    assert_eq!(h.status, 200);
    assert!(h.body.contains("\"database\":\"ok\""));
    assert_eq!(c.send("POST", "/metrics", b"", &[]).status, 405);
}
