//! The admin page in a real headless Chromium, driven over the W3C WebDriver protocol (spoken
//! with `ureq` + `serde_json` to a `chromedriver` started on a free loopback port): log in, find an
//! event by its object id, open it, replay it and see the result; find a dead delivery to the
//! shop's app, retry it and see it done; check the layout on a laptop and a phone, that the
//! stylesheet applies under the CSP, and that no page scrolls sideways.
//!
//! Skips, saying so loudly, only when `chromium` or `chromedriver` is not installed (`.ci/run`
//! installs both). With `STRIPE_INBOX_SCREENSHOTS=DIR` it saves its screenshots there (that is
//! how `docs/admin-dashboard.png` is made).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{self, forward, TempDir, TestApp, ADMIN_PASSWORD, ADMIN_PASSWORD_ENV};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `chromium` and `chromedriver`, if installed.
fn find_browser() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        for name in names {
            for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
                let candidate = dir.join(name);
                if candidate.is_file() {
                    return Some(candidate);
                }
            }
        }
        None
    };
    // Debian's /usr/bin/chromium is a wrapper script; chromedriver wants the real binary.
    let chromium = ["/usr/lib/chromium/chromium"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| find(&["chromium", "chromium-browser", "google-chrome"]))?;
    let driver = find(&["chromedriver"])?;
    Some((chromium, driver))
}

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    _profile: TempDir,
}

impl Browser {
    fn start(chromium: &Path, driver: &Path) -> Browser {
        let port = support::free_addr().rsplit_once(':').unwrap().1.to_string();
        let mut child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        // It prints a line once it listens; then /status answers.
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
        let base = format!("http://127.0.0.1:{port}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = agent
                .get(format!("{base}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = TempDir::new("chromium-profile");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": chromium, "args": args },
            }}
        });
        let mut browser = Browser {
            driver: child,
            base,
            session: String::new(),
            agent,
            _profile: profile,
        };
        let created = browser.call("POST", "/session", Some(caps));
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        browser
    }

    /// One WebDriver command; returns its `value`, panics on a WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let response = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert!(status < 300, "{method} {path}: {status} {value}");
        value["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap().to_string()
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css);
        self.call(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn click(&self, css: &str) {
        let el = self.find(css);
        self.call("POST", &format!("/element/{el}/click"), Some(json!({})));
    }

    /// Clicks something that navigates, and waits until the new page's URL satisfies `arrived`
    /// and it has loaded (a click may return before the navigation it starts has committed).
    fn click_to(&self, css: &str, arrived: impl Fn(&str) -> bool) {
        let before = self.url();
        self.click(css);
        self.wait_until(&format!("navigation from {before} by {css}"), || {
            let url = self.url();
            arrived(&url) && self.script("return document.readyState") == "complete"
        });
    }

    fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn text(&self, css: &str) -> String {
        let el = self.find(css);
        self.call("GET", &format!("/element/{el}/text"), None)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    fn window(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// A PNG of the viewport, or of the whole page when `full` (by growing the window to it).
    fn screenshot(&self, path: &Path, width: u32, full: bool) {
        if full {
            let height = self
                .script("return document.documentElement.scrollHeight")
                .as_u64()
                .unwrap_or(900) as u32;
            self.window(width, (height + 140).min(4000));
        }
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = self.agent.delete(&url).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn admin_in_a_real_browser() {
    let Some((chromium, driver)) = find_browser() else {
        eprintln!(
            "\n\n*** SKIPPED admin_in_a_real_browser: chromium and/or chromedriver are not installed ***\n\
             *** install them: apt-get install -y chromium chromium-driver (.ci/run does)       ***\n"
        );
        return;
    };
    // A shop's last two days, then the service with a password on top of it, forwarding to a
    // shop's app that refuses (400) until it is fixed.
    support::set_admin_password_env();
    let dir = TempDir::new("browser");
    support::prefill(&dir.path().join("inbox.db"), 2500, 120, 48);
    let refuse = Arc::new(AtomicBool::new(true));
    let r = refuse.clone();
    let shop = forward::App::start(Arc::new(move |_| {
        forward::Answer::status(if r.load(Ordering::SeqCst) { 400 } else { 200 })
    }));
    let app = TestApp::start_in(
        dir,
        "",
        &format!(
            "password_env = \"{ADMIN_PASSWORD_ENV}\"\n\n{}",
            forward::forward_block(&shop.url(), "settle_ms = 0")
        ),
    );
    let fresh = support::event("invoice.paid");
    let fresh_id = support::event_id(&fresh);
    assert_eq!(app.post_signed(&fresh).status, 200);
    forward::wait_for_deliveries(&app.db_path(), "dead", Duration::from_secs(20), |rows| {
        rows.iter().any(|d| d.state == "dead")
    });
    let object = "in_1Pgc6tB7WZ01zgkWu9fdqL6I";

    let shots = std::env::var_os("STRIPE_INBOX_SCREENSHOTS").map(PathBuf::from);
    let scratch = TempDir::new("shots");
    let shot_dir = shots
        .clone()
        .unwrap_or_else(|| scratch.path().to_path_buf());
    let base = format!("http://127.0.0.1:{}", app.admin.port());
    let b = Browser::start(&chromium, &driver);
    b.window(1280, 900);

    // Anonymous: sent to the login form. A wrong password first, then the right one.
    b.goto(&format!("{base}/"));
    assert!(b.url().ends_with("/login"), "{}", b.url());
    b.type_into("input[name=password]", "wrong");
    b.click("form button");
    b.wait_until("the wrong-password message", || {
        b.script("return document.querySelector('p.warn') !== null") == true
    });
    assert!(b.text("p.warn").contains("Wrong password"));
    b.type_into("input[name=password]", ADMIN_PASSWORD);
    b.click_to("form button", |u| u == format!("{base}/"));
    assert_eq!(b.text("h1"), "Dashboard");
    // The stylesheet applied under the CSP (header colour), and the chart is drawn.
    let header =
        b.script("return getComputedStyle(document.querySelector('header.top')).backgroundColor");
    assert_eq!(header, "rgb(17, 24, 39)", "admin.css did not apply");
    let bars = b.script("return document.querySelectorAll('svg.chart rect[class^=o-]').length");
    assert!(bars.as_u64().unwrap() > 40, "chart bars: {bars}");
    b.screenshot(&shot_dir.join("admin-dashboard.png"), 1280, true);

    // Find the event by its object id through the filter form, open it.
    b.window(1280, 900);
    b.click_to("header nav a[href='/events']", |u| u.ends_with("/events"));
    b.screenshot(&shot_dir.join("admin-events.png"), 1280, false);
    b.type_into("input[name=object]", object);
    b.click_to("form.filters button", |u| {
        u.contains(&format!("object={object}"))
    });
    let rows = b.script("return document.querySelectorAll('tbody tr').length");
    assert_eq!(rows, 1, "only the one event about this object");
    b.click_to(&format!("a[href='/events/{fresh_id}']"), |u| {
        u.ends_with(&format!("/events/{fresh_id}"))
    });
    assert_eq!(b.text("h1"), "invoice.paid");
    b.screenshot(&shot_dir.join("admin-event.png"), 1280, false);

    // Replay it and see the result.
    b.click_to("form[action$='/replay'] button", |u| {
        u.ends_with("?done=replayed")
    });
    let result = b.text("main p.warn");
    assert!(result.starts_with("Replayed."), "{result}");
    assert!(
        result.contains("applied")
            || result.contains("tie_resolved")
            || result.contains("unchanged"),
        "{result}"
    );

    // Deliveries: find the dead one, fix the app, retry it, see it done.
    b.click_to("header nav a[href='/deliveries']", |u| {
        u.ends_with("/deliveries")
    });
    assert_eq!(b.text("h1"), "Deliveries");
    b.click_to("a[href='/deliveries?destination=app&state=dead']", |u| {
        u.contains("state=dead")
    });
    let rows = b.script("return document.querySelectorAll('tbody tr').length");
    assert_eq!(
        rows, 2,
        "the destination's counts and its one dead delivery"
    );
    assert!(b.text("main").contains(&fresh_id));
    assert!(b.text("main").contains("HTTP 400"));
    b.screenshot(&shot_dir.join("admin-deliveries.png"), 1280, false);
    refuse.store(false, Ordering::SeqCst);
    b.click_to("form[action$='/retry'] button", |u| {
        u.contains("done=retried")
    });
    assert!(b.text("main p.warn").contains("Put back to pending"));
    b.wait_until("the delivery done on the event page", || {
        b.goto(&format!("{base}/events/{fresh_id}"));
        b.script("return (document.querySelector('h3 .badge') || {}).textContent") == "done"
    });
    b.screenshot(&shot_dir.join("admin-event-forwarding.png"), 1280, true);
    b.window(1280, 900);
    let section = b.text("main");
    assert!(section.contains("Forwarding"), "{section}");
    assert!(
        section.contains("400") && section.contains("dead"),
        "attempt 1 is listed: {section}"
    );
    assert_eq!(
        shop.seen().iter().map(|s| s.status).collect::<Vec<_>>(),
        [400, 200]
    );

    // The object page with its timeline.
    b.goto(&format!("{base}/objects/{object}"));
    assert!(b.text("h2").starts_with("Timeline"));
    b.screenshot(&shot_dir.join("admin-object.png"), 1280, false);

    // A phone: nothing scrolls sideways but the tables' own boxes.
    b.window(390, 844);
    for page in [
        "/",
        "/events",
        &format!("/events/{fresh_id}"),
        "/objects",
        &format!("/objects/{object}"),
        "/deliveries",
    ] {
        b.goto(&format!("{base}{page}"));
        let fits = b.script(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth",
        );
        assert_eq!(fits, true, "{page} scrolls sideways on a phone");
    }
    b.goto(&format!("{base}/"));
    b.screenshot(&shot_dir.join("admin-dashboard-phone.png"), 390, false);
    b.goto(&format!("{base}/events"));
    b.screenshot(&shot_dir.join("admin-events-phone.png"), 390, false);
    b.goto(&format!("{base}/objects/{object}"));
    b.screenshot(&shot_dir.join("admin-object-phone.png"), 390, true);

    // Logging out ends the session.
    b.window(1280, 900);
    b.click_to("form.logout button", |u| u.ends_with("/login"));
    b.goto(&format!("{base}/events"));
    assert!(b.url().ends_with("/login"));
    for name in [
        "admin-dashboard.png",
        "admin-event.png",
        "admin-dashboard-phone.png",
    ] {
        assert!(
            std::fs::metadata(shot_dir.join(name)).unwrap().len() > 10_000,
            "{name}"
        );
    }
}
