//! Admin page benchmark: fills a database with realistic events, serves it, and times every page.
//!
//! ```text
//! cargo run --release --example adminbench -- [--events 1000000] [--db PATH] [--runs 5]
//!     [--ingest-cost 100000]
//! ```
//!
//! The fill writes directly through the writer connection (`store::open_writer`) in transactions of
//! 20,000 events, the way the writer stores them (project, then insert with the decision), not over
//! HTTP, so a million events take about a minute. The history is a shop's: customers sign up
//! through Checkout, subscribe, get invoiced and pay, some renew, some fail a payment, some
//! cancel, over 60 days; deliveries arrive up to a few seconds late (so some arrive out of order),
//! 2% are delivered twice, and a few events carry no object. With `--db` an existing file is
//! reused when it already holds events.
//!
//! Then it starts the service on the file (admin open on loopback) and GETs each page once cold
//! and `--runs` times warm over keep-alive, printing the median and worst time per page.
//!
//! `--ingest-cost N` instead measures what the admin's indexes (schema step 3) and, for
//! comparison, an FTS5 index of the bodies cost the writer: N events stored in transactions of
//! 512 (the writer's batch under load) with `synchronous=FULL`, on a fresh file each time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use serde_json::{json, Value};

use stripe_inbox::config::Config;
use stripe_inbox::ingest::store::{store_event, Effects, Ingest, Source};
use stripe_inbox::service::Service;
use stripe_inbox::{event::envelope, event::testevent, store};

const USAGE: &str = "usage: adminbench [--events N] [--db PATH] [--runs N] [--ingest-cost N]";
const SPAN_DAYS: i64 = 60;

fn main() {
    let mut events = 1_000_000u64;
    let mut db_path: Option<PathBuf> = None;
    let mut runs = 5usize;
    let mut ingest_cost: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| die(USAGE));
        match arg.as_str() {
            "--events" => events = value().parse().unwrap_or_else(|_| die(USAGE)),
            "--db" => db_path = Some(PathBuf::from(value())),
            "--runs" => runs = value().parse().unwrap_or_else(|_| die(USAGE)),
            "--ingest-cost" => ingest_cost = Some(value().parse().unwrap_or_else(|_| die(USAGE))),
            _ => die(USAGE),
        }
    }
    let dir = std::env::temp_dir().join(format!("adminbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(n) = ingest_cost {
        measure_ingest_cost(&dir, n);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let keep = db_path.is_some();
    let path = db_path.unwrap_or_else(|| dir.join("bench.db"));
    let existing = path.exists() && count(&path) > 0;
    if existing {
        println!("using {} ({} events)", path.display(), count(&path));
    } else {
        let started = Instant::now();
        let stored = fill(&path, events);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "filled {} events in {secs:.1} s ({:.0} events/s), file {:.0} MiB",
            stored,
            stored as f64 / secs,
            std::fs::metadata(&path).map_or(0, |m| m.len()) as f64 / (1 << 20) as f64
        );
    }
    time_pages(&dir, &path, runs);
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn die(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2)
}

fn count(path: &Path) -> i64 {
    store::open_read_only(path)
        .and_then(|c| {
            c.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
                .map_err(|e| stripe_inbox::error::Error::sqlite("count", e))
        })
        .unwrap_or(0)
}

/// A small deterministic random source (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn base62(mut n: u64, width: usize) -> String {
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = A[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out).unwrap()
}

/// One planned event: when it arrives, whose it is, what it is.
#[derive(Clone, Copy)]
struct Plan {
    arrive_ms: i64,
    created: i64,
    customer: u32,
    kind: Kind,
    cycle: u8,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    CustomerCreated,
    CustomerUpdated,
    CheckoutCompleted,
    SubCreated,
    SubActive,
    SubDeleted,
    InvoiceCreated,
    InvoiceFinalized,
    InvoicePaid,
    InvoiceFailed,
    PiCreated,
    PiSucceeded,
    ChargeSucceeded,
    Balance,
}

const NAMES: &[&str] = &[
    "Ada Lovelace",
    "Grace Hopper",
    "Alan Turing",
    "Katherine Johnson",
    "Linus Torvalds",
    "Margaret Hamilton",
    "Dennis Ritchie",
    "Barbara Liskov",
    "Ken Thompson",
    "Frances Allen",
    "José Núñez",
    "Zoë Müller",
    "Søren Kierkegaard",
    "Chloé Dubois",
    "Łukasz Nowak",
];

/// Plans the events of one customer from `t0` (unix seconds).
fn plan_customer(rng: &mut Rng, c: u32, t0: i64, now: i64, out: &mut Vec<Plan>) {
    let at = |created: i64, kind: Kind, cycle: u8, rng: &mut Rng, out: &mut Vec<Plan>| {
        if created > now {
            return;
        }
        // Delivered 0.1 to 3 s after it happened.
        let arrive_ms = created * 1000 + 100 + rng.below(2900) as i64;
        out.push(Plan {
            arrive_ms,
            created,
            customer: c,
            kind,
            cycle,
        });
    };
    at(t0, Kind::CustomerCreated, 0, rng, out);
    at(t0 + 40, Kind::CheckoutCompleted, 0, rng, out);
    at(t0 + 41, Kind::SubCreated, 0, rng, out);
    if rng.chance(20) {
        // Activated in the second it was created: a tie that previous_attributes settles.
        at(t0 + 41, Kind::SubActive, 0, rng, out);
    }
    let renewals = if rng.chance(50) { 2 } else { 1 };
    for cycle in 0..renewals {
        let t = t0 + 41 + cycle as i64 * 30 * 86_400;
        at(t, Kind::InvoiceCreated, cycle, rng, out);
        at(t + 1, Kind::InvoiceFinalized, cycle, rng, out);
        at(t + 1, Kind::PiCreated, cycle, rng, out);
        if rng.chance(6) {
            at(t + 2, Kind::InvoiceFailed, cycle, rng, out);
            at(t + 3 * 86_400, Kind::PiSucceeded, cycle, rng, out);
            at(t + 3 * 86_400, Kind::ChargeSucceeded, cycle, rng, out);
            at(t + 3 * 86_400 + 1, Kind::InvoicePaid, cycle, rng, out);
        } else {
            at(t + 2, Kind::PiSucceeded, cycle, rng, out);
            at(t + 2, Kind::ChargeSucceeded, cycle, rng, out);
            // Paid in the second it was finalized now and then: a tie the status order settles.
            let paid_at = if rng.chance(30) { t + 1 } else { t + 2 };
            at(paid_at, Kind::InvoicePaid, cycle, rng, out);
        }
        at(t + 3, Kind::SubActive, cycle, rng, out);
    }
    if rng.chance(30) {
        at(
            t0 + 3600 + rng.below(20 * 86_400) as i64,
            Kind::CustomerUpdated,
            0,
            rng,
            out,
        );
    }
    if rng.chance(8) {
        at(
            t0 + 86_400 * (5 + rng.below(50) as i64),
            Kind::SubDeleted,
            0,
            rng,
            out,
        );
    }
    if rng.chance(3) {
        at(t0 + 120, Kind::Balance, 0, rng, out);
    }
}

/// Builds the body of a planned event.
struct Bodies {
    fixtures: HashMap<&'static str, Value>,
    n: u64,
}

impl Bodies {
    fn new() -> Bodies {
        let mut fixtures = HashMap::new();
        for t in [
            "customer",
            "checkout.session",
            "subscription",
            "invoice",
            "payment_intent",
            "charge",
        ] {
            fixtures.insert(t, testevent::fixture(t).expect("fixture"));
        }
        Bodies { fixtures, n: 0 }
    }

    fn build(&mut self, p: &Plan) -> Vec<u8> {
        self.n += 1;
        let c = p.customer as u64;
        let cus = format!("cus_{}", base62(c, 14));
        let suffix = format!("{}{}", base62(c, 10), p.cycle);
        let email = format!("customer{c}@example.com");
        let name = NAMES[(c % NAMES.len() as u64) as usize];
        let plan_name = if c.is_multiple_of(3) { "pro" } else { "basic" };
        let amount = if plan_name == "pro" { 4900 } else { 1900 };
        let (event_type, object_type, status): (&str, &str, Option<&str>) = match p.kind {
            Kind::CustomerCreated => ("customer.created", "customer", None),
            Kind::CustomerUpdated => ("customer.updated", "customer", None),
            Kind::CheckoutCompleted => (
                "checkout.session.completed",
                "checkout.session",
                Some("complete"),
            ),
            Kind::SubCreated => (
                "customer.subscription.created",
                "subscription",
                Some("incomplete"),
            ),
            Kind::SubActive => (
                "customer.subscription.updated",
                "subscription",
                Some("active"),
            ),
            Kind::SubDeleted => (
                "customer.subscription.deleted",
                "subscription",
                Some("canceled"),
            ),
            Kind::InvoiceCreated => ("invoice.created", "invoice", Some("draft")),
            Kind::InvoiceFinalized => ("invoice.finalized", "invoice", Some("open")),
            Kind::InvoicePaid => ("invoice.paid", "invoice", Some("paid")),
            Kind::InvoiceFailed => ("invoice.payment_failed", "invoice", Some("open")),
            Kind::PiCreated => (
                "payment_intent.created",
                "payment_intent",
                Some("requires_payment_method"),
            ),
            Kind::PiSucceeded => (
                "payment_intent.succeeded",
                "payment_intent",
                Some("succeeded"),
            ),
            Kind::ChargeSucceeded => ("charge.succeeded", "charge", Some("succeeded")),
            Kind::Balance => ("balance.available", "", None),
        };
        let sub = format!("sub_{}", base62(c, 14));
        let object = if object_type.is_empty() {
            json!({ "object": "balance", "available": [{ "amount": amount, "currency": "eur" }] })
        } else {
            let mut o = self.fixtures[object_type].clone();
            let m = o.as_object_mut().unwrap();
            let id = match object_type {
                "customer" => cus.clone(),
                "checkout.session" => format!("cs_live_{}", base62(c, 24)),
                "subscription" => sub.clone(),
                "invoice" => format!("in_{suffix}"),
                "payment_intent" => format!("pi_{suffix}"),
                _ => format!("ch_{suffix}"),
            };
            m.insert("id".into(), json!(id));
            m.insert("created".into(), json!(p.created));
            m.insert("livemode".into(), json!(true));
            if let Some(s) = status {
                m.insert("status".into(), json!(s));
            }
            if object_type == "customer" {
                m.insert("email".into(), json!(email));
                m.insert("name".into(), json!(name));
                m.insert(
                    "metadata".into(),
                    json!({ "user_id": format!("u{c}"), "plan": plan_name }),
                );
            } else {
                m.insert("customer".into(), json!(cus));
                m.insert("metadata".into(), json!({ "user_id": format!("u{c}") }));
            }
            match object_type {
                "checkout.session" => {
                    m.insert(
                        "customer_details".into(),
                        json!({ "email": email, "name": name }),
                    );
                    m.insert("subscription".into(), json!(sub));
                    m.insert("amount_total".into(), json!(amount));
                    m.insert("payment_status".into(), json!("paid"));
                }
                "invoice" => {
                    m.insert("customer_email".into(), json!(email));
                    m.insert("subscription".into(), json!(sub));
                    m.insert("amount_due".into(), json!(amount));
                    let paid = if status == Some("paid") { amount } else { 0 };
                    m.insert("amount_paid".into(), json!(paid));
                }
                "payment_intent" => {
                    m.insert("amount".into(), json!(amount));
                    m.insert("invoice".into(), json!(format!("in_{suffix}")));
                }
                "charge" => {
                    m.insert("amount".into(), json!(amount));
                    m.insert("payment_intent".into(), json!(format!("pi_{suffix}")));
                    m.insert(
                        "billing_details".into(),
                        json!({ "email": email, "name": name }),
                    );
                }
                _ => {}
            }
            o
        };
        let mut data = json!({ "object": object });
        if matches!(p.kind, Kind::CustomerUpdated | Kind::SubActive) {
            data["previous_attributes"] = match p.kind {
                Kind::SubActive => json!({ "status": "incomplete" }),
                _ => json!({ "metadata": { "plan": "basic" } }),
            };
        }
        let event = json!({
            "id": format!("evt_1{}{}", base62(self.n, 8), base62(c.wrapping_mul(2_654_435_761), 14)),
            "object": "event",
            "api_version": testevent::API_VERSION,
            "created": p.created,
            "data": data,
            "livemode": true,
            "pending_webhooks": 1,
            "request": { "id": format!("req_{}", base62(self.n, 14)), "idempotency_key": null },
            "type": event_type,
        });
        serde_json::to_vec(&event).unwrap()
    }
}

/// Fills `path` with about `target` events and their mirror, as the writer builds it; returns how
/// many.
fn fill(path: &Path, target: u64) -> u64 {
    let conn = store::open_writer(path).expect("open database");
    conn.execute_batch("PRAGMA synchronous=OFF;").unwrap();
    let now = stripe_inbox::time::now_ms() / 1000;
    let start = now - SPAN_DAYS * 86_400;
    // Customers sign up evenly over the span; later ones have fewer events so far. Plan once to
    // learn the average, then again with enough customers for the target.
    let plan = |customers: u64| {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut plans = Vec::with_capacity(target as usize + 100_000);
        for c in 0..customers {
            let t0 = start + (c as i64 * SPAN_DAYS * 86_400) / customers as i64;
            plan_customer(&mut rng, c as u32, t0, now, &mut plans);
        }
        plans
    };
    let trial = (target / 14).max(1);
    let per_customer = plan(trial).len() as f64 / trial as f64;
    let mut plans = plan((target as f64 / per_customer * 1.01) as u64 + 1);
    plans.sort_by_key(|p| p.arrive_ms);
    plans.truncate(target as usize);

    // Bodies are built on a second thread while this one projects and inserts.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, i64, i64)>(4096);
    let builder = std::thread::spawn(move || {
        let mut bodies = Bodies::new();
        let mut rng = Rng(7);
        for p in &plans {
            let deliveries = if rng.chance(2) { 2 } else { 1 };
            if tx.send((bodies.build(p), p.arrive_ms, deliveries)).is_err() {
                break;
            }
        }
    });
    let mut stored = 0u64;
    let mut batch = conn.unchecked_transaction().unwrap();
    for (body, arrive_ms, deliveries) in rx {
        store(&batch, &body, arrive_ms, deliveries);
        stored += 1;
        if stored.is_multiple_of(20_000) {
            batch.commit().unwrap();
            batch = conn.unchecked_transaction().unwrap();
            if stored.is_multiple_of(200_000) {
                eprintln!("  {stored} events");
            }
        }
    }
    batch.commit().unwrap();
    builder.join().unwrap();
    stored
}

/// Stores one event through the one store path, as the writer does; a second delivery a minute
/// later when `deliveries` is 2.
fn store(conn: &Connection, body: &[u8], arrive_ms: i64, deliveries: i64) {
    let mut ingest = Ingest {
        envelope: envelope::parse(body).expect("valid event"),
        body: body.to_vec(),
        secret_index: Some(0),
        received_at_ms: arrive_ms,
        source: Source::Webhook,
    };
    store_event(conn, &ingest, &Effects::default()).expect("store event");
    for _ in 1..deliveries {
        ingest.received_at_ms += 60_000;
        store_event(conn, &ingest, &Effects::default()).expect("count a delivery");
    }
}

/// Starts the service on `path` and times each page.
fn time_pages(dir: &Path, path: &Path, runs: usize) {
    let config_path = dir.join("bench.toml");
    std::fs::write(
        &config_path,
        format!(
            "[database]\npath = \"{}\"\n[webhook]\nlisten = \"127.0.0.1:0\"\nsecrets = [\"whsec_bench\"]\nsecrets_env = \"\"\n[admin]\nlisten = \"127.0.0.1:0\"\npassword_env = \"\"\nopen_on_loopback = true\n",
            path.display()
        ),
    )
    .unwrap();
    let config = Config::load(&config_path).unwrap();
    let service = Service::start(&config).expect("start service");
    let base = format!("http://{}", service.admin_addr());

    // Pick what to look at from the data.
    let conn = store::open_read_only(path).unwrap();
    let q = |sql: &str| -> String {
        conn.query_row(sql, [], |r| r.get::<_, String>(0))
            .unwrap_or_default()
    };
    let total: i64 = conn
        .query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))
        .unwrap();
    let customer = q(
        "SELECT object_id FROM events WHERE type = 'customer.updated' ORDER BY seq DESC LIMIT 1",
    );
    let subscription = q("SELECT object_id FROM events WHERE type = 'customer.subscription.deleted' ORDER BY seq DESC LIMIT 1");
    let event = q("SELECT id FROM events WHERE type = 'invoice.paid' ORDER BY seq DESC LIMIT 1");
    let email: String = conn
        .query_row(
            "SELECT json_extract(data, '$.email') FROM objects WHERE id = ?1",
            [&customer],
            |r| r.get(0),
        )
        .unwrap_or_default();
    let old_email = "customer1000@example.com";
    drop(conn);
    let week_ago = stripe_inbox::time::format_utc(stripe_inbox::time::now_ms() / 1000 - 7 * 86_400);
    let day = &week_ago[..10];
    let pages: Vec<(String, String)> = vec![
        ("dashboard".into(), "/".into()),
        ("events, newest".into(), "/events".into()),
        (
            "events, deep page".into(),
            format!("/events?before={}", total / 2),
        ),
        ("events, type".into(), "/events?type=invoice.paid".into()),
        (
            "events, type pattern".into(),
            "/events?type=customer.subscription.*".into(),
        ),
        (
            "events, decision".into(),
            "/events?decision=tie_resolved:*".into(),
        ),
        (
            "events, decision stale".into(),
            "/events?decision=stale".into(),
        ),
        (
            "events, object".into(),
            format!("/events?object={customer}"),
        ),
        (
            "events, one day".into(),
            format!("/events?from={day}T00:00&to={day}T23:59"),
        ),
        (
            "events, body text (recent)".into(),
            format!("/events?q={}", email.replace('@', "%40")),
        ),
        (
            "events, body text (old, 1 step)".into(),
            format!("/events?q={}", old_email.replace('@', "%40")),
        ),
        ("event page".into(), format!("/events/{event}")),
        ("objects, newest".into(), "/objects".into()),
        ("objects, type".into(), "/objects?type=subscription".into()),
        ("objects, uncertain".into(), "/objects?uncertain=1".into()),
        (
            "objects, email".into(),
            format!("/objects?q={}", email.replace('@', "%40")),
        ),
        (
            "objects, metadata".into(),
            "/objects?q=user_id%3Du1000".into(),
        ),
        ("objects, text".into(), "/objects?q=Hopper".into()),
        (
            "object page, customer".into(),
            format!("/objects/{customer}"),
        ),
        (
            "object page, subscription".into(),
            format!("/objects/{subscription}"),
        ),
        ("metrics".into(), "/metrics".into()),
        ("healthz".into(), "/healthz".into()),
    ];
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    println!(
        "\n{:<34} {:>9} {:>9} {:>9} {:>8}  status",
        "page", "cold ms", "median", "worst", "KiB"
    );
    for (name, page) in &pages {
        let url = format!("{base}{page}");
        let mut times = Vec::new();
        let mut status = 0;
        let mut size = 0;
        let mut last = String::new();
        for _ in 0..=runs {
            let started = Instant::now();
            let mut response = agent.get(&url).call().expect("GET");
            let body = response.body_mut().read_to_vec().unwrap_or_default();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            status = response.status().as_u16();
            size = body.len();
            last = String::from_utf8_lossy(&body).into_owned();
        }
        let cold = times[0];
        let mut warm = times[1..].to_vec();
        warm.sort_by(|a, b| a.partial_cmp(b).unwrap());
        // A search that stopped at its budget says how many rows it examined.
        let examined = last
            .split_once("examined ")
            .map(|(_, rest)| {
                rest.split(|c: char| c != ',' && !c.is_ascii_digit())
                    .next()
                    .unwrap_or("")
            })
            .map(|n| format!("  examined {n} rows"))
            .unwrap_or_default();
        println!(
            "{name:<34} {cold:>9.1} {:>9.1} {:>9.1} {:>8.1}  {status}{examined}",
            warm[warm.len() / 2],
            warm[warm.len() - 1],
            size as f64 / 1024.0
        );
    }
    service.shutdown();
}

/// Events/s the writer's storage path reaches with and without each of the admin's indexes, and
/// with an FTS5 index of the bodies, on fresh files; four interleaved rounds, reported as the best
/// and the median, so that a busy neighbour on the machine shows up as disagreement.
fn measure_ingest_cost(dir: &Path, n: u64) {
    const ALL: [&str; 4] = [
        "events_type_seq",
        "events_decision_seq",
        "events_received",
        "objects_email",
    ];
    let drop_all_but = |keep: &[&str]| -> String {
        ALL.iter()
            .filter(|i| !keep.contains(i))
            .map(|i| format!("DROP INDEX {i};"))
            .collect()
    };
    let variants: Vec<(String, String)> = vec![
        ("no step 3 index".into(), drop_all_but(&[])),
        (
            "+ events_type_seq".into(),
            drop_all_but(&["events_type_seq"]),
        ),
        (
            "+ events_decision_seq".into(),
            drop_all_but(&["events_decision_seq"]),
        ),
        (
            "+ events_received".into(),
            drop_all_but(&["events_received"]),
        ),
        ("+ objects_email".into(), drop_all_but(&["objects_email"])),
        ("all of step 3".into(), String::new()),
        (
            "all of step 3 + FTS5 on bodies".into(),
            "CREATE VIRTUAL TABLE events_fts USING fts5(body, content='', detail=none);".into(),
        ),
    ];
    // The same events for every variant.
    let now = stripe_inbox::time::now_ms() / 1000;
    let mut rng = Rng(42);
    let mut plans = Vec::new();
    let customers = n / 12 + 1;
    for c in 0..customers {
        plan_customer(
            &mut rng,
            c as u32,
            now - 59 * 86_400 + c as i64 * 30,
            now,
            &mut plans,
        );
    }
    plans.sort_by_key(|p| p.arrive_ms);
    plans.truncate(n as usize);
    let mut bodies = Bodies::new();
    let built: Vec<(Vec<u8>, i64)> = plans
        .iter()
        .map(|p| (bodies.build(p), p.arrive_ms))
        .collect();
    println!(
        "storing {} events per variant (project + insert, 512 per transaction, synchronous=FULL):",
        built.len()
    );
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _round in 0..4 {
        for (v, (_, sql)) in variants.iter().enumerate() {
            let path = dir.join(format!("ingest-{v}.db"));
            let _ = std::fs::remove_file(&path);
            let conn = store::open_writer(&path).unwrap();
            conn.execute_batch(sql).unwrap();
            let fts = sql.contains("fts5");
            let started = Instant::now();
            for (i, chunk) in built.chunks(512).enumerate() {
                let tx = conn.unchecked_transaction().unwrap();
                for (j, (body, at)) in chunk.iter().enumerate() {
                    let seq = (i * 512 + j + 1) as i64;
                    store(&tx, body, *at, 1);
                    if fts {
                        tx.prepare_cached("INSERT INTO events_fts (rowid, body) VALUES (?1, ?2)")
                            .and_then(|mut s| {
                                s.execute(params![seq, String::from_utf8_lossy(body)])
                            })
                            .unwrap();
                    }
                }
                tx.commit().unwrap();
            }
            results[v].push(started.elapsed().as_secs_f64() * 1e6 / built.len() as f64);
            drop(conn);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
    }
    let stats = |r: &[f64]| {
        let mut r = r.to_vec();
        r.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (r[0], (r[r.len() / 2 - 1] + r[r.len() / 2]) / 2.0)
    };
    let (base_best, base_median) = stats(&results[0]);
    for ((name, _), r) in variants.iter().zip(&results) {
        let (best, median) = stats(r);
        println!(
            "  {name:<32} best {best:>6.1} µs/event ({:>6.0}/s) {:+4.0}%   median {median:>6.1} µs {:+4.0}%",
            1e6 / best,
            (best / base_best - 1.0) * 100.0,
            (median / base_median - 1.0) * 100.0
        );
    }
}
