//! How fast do `backfill` and `reconcile` apply what Stripe's API returns? Serves `--objects`
//! customers (Stripe's example customer, 100 a page) and as many `customer.updated` events from a
//! minimal local stand-in for the API, then runs a backfill and a reconcile through the real client
//! and writer on a fresh database, and prints objects (events) per second and the requests.
//!
//! ```text
//! cargo run --release --example stripebench -- [--objects 20000] [--rate 1000]
//! ```
//!
//! `--rate` is `[stripe] requests_per_sec`; Stripe's own limits (100/s live, 25/s in test mode)
//! bound a real backfill at 2,500 to 10,000 objects a second of listing, before the writer.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use stripe_inbox::config::Config;
use stripe_inbox::ingest::store::Effects;
use stripe_inbox::periodic::Stop;
use stripe_inbox::store::writer::{Writer, WriterConfig};
use stripe_inbox::stripe_api::reconcile::{self, Window};
use stripe_inbox::stripe_api::{backfill, catalog, StripeApi};
use stripe_inbox::testkit::TempDir;
use stripe_inbox::{event::testevent, store, time};

fn main() {
    let mut objects = 20_000usize;
    let mut rate = 1000u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--objects" => objects = args.next().and_then(|v| v.parse().ok()).unwrap_or(objects),
            "--rate" => rate = args.next().and_then(|v| v.parse().ok()).unwrap_or(rate),
            other => panic!("unknown argument {other}"),
        }
    }
    let now = time::now_ms() / 1000;
    let base = testevent::fixture("customer").unwrap();
    let customers: Vec<(String, String)> = (0..objects)
        .map(|i| {
            let mut c = base.clone();
            c["id"] = json!(format!("cus_bench{i:07}"));
            c["email"] = json!(format!("customer{i}@example.com"));
            (
                c["id"].as_str().unwrap().to_owned(),
                serde_json::to_string_pretty(&c).unwrap(),
            )
        })
        .collect();
    let events: Vec<(String, String)> = (0..objects)
        .map(|i| {
            let mut e =
                testevent::build("customer.updated", now - 3600 + (i % 3600) as i64).unwrap();
            e["data"]["object"]["id"] = json!(format!("cus_bench{i:07}"));
            (
                e["id"].as_str().unwrap().to_owned(),
                serde_json::to_string_pretty(&e).unwrap(),
            )
        })
        .rev()
        .collect();
    let addr = serve(Arc::new((customers, events)));

    let dir = TempDir::new("stripebench");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\npath = \"bench.db\"\n[webhook]\nsecrets = [\"whsec_bench\"]\n[stripe]\napi_key_env = \"STRIPEBENCH_KEY\"\napi_base = \"http://{addr}\"\nrequests_per_sec = {rate}\n"
        ),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let writer = Writer::start(
        store::open_writer(&config.database.path).unwrap(),
        WriterConfig {
            queue_capacity: 64,
            max_batch: 64,
        },
    )
    .unwrap();
    let api = StripeApi::new(
        &config,
        "sk_test_bench".into(),
        writer.handle(),
        Arc::new(Effects::default()),
    );

    let started = Instant::now();
    let kinds = [catalog::by_type("customer").unwrap()];
    let report = backfill::run(&api, &kinds, false, &mut (), &Stop::default()).unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "backfill: {} customers in {secs:.2} s = {:.0} objects/s ({} requests)",
        report.types[0].fetched,
        report.types[0].fetched as f64 / secs,
        report.requests
    );
    let started = Instant::now();
    let again = backfill::run(&api, &kinds, false, &mut (), &Stop::default()).unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "backfill again (all unchanged: {}): {secs:.2} s = {:.0} objects/s",
        again.types[0].unchanged,
        again.types[0].fetched as f64 / secs
    );
    let started = Instant::now();
    let report = reconcile::run(
        &api,
        Window::Since(now - 7200),
        time::now_ms(),
        &mut (),
        &Stop::default(),
    )
    .unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "reconcile: {} events listed, {} stored in {secs:.2} s = {:.0} events/s ({} pages)",
        report.listed,
        report.stored,
        report.listed as f64 / secs,
        report.pages
    );
    drop(api);
    writer.stop();
}

/// A stand-in for Stripe's API that answers the two lists, 100 a page.
/// What the stand-in lists: (id, JSON text), newest first.
type Listed = Vec<(String, String)>;

fn serve(data: Arc<(Listed, Listed)>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let data = data.clone();
            std::thread::spawn(move || answer(conn, &data));
        }
    });
    addr
}

fn answer(mut conn: TcpStream, data: &(Listed, Listed)) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let target = head.split(' ').nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let after = query
        .split('&')
        .find_map(|p| p.strip_prefix("starting_after="))
        .map(str::to_owned);
    let all = if path == "/v1/events" {
        &data.1
    } else {
        &data.0
    };
    let start = match after {
        Some(after) => all
            .iter()
            .position(|(id, _)| *id == after)
            .map_or(0, |i| i + 1),
        None => 0,
    };
    let page: Vec<&str> = all
        .iter()
        .skip(start)
        .take(100)
        .map(|(_, o)| o.as_str())
        .collect();
    let has_more = start + page.len() < all.len();
    let body = format!(
        "{{\"object\": \"list\", \"data\": [{}], \"has_more\": {has_more}, \"url\": \"{path}\"}}",
        page.join(",")
    );
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
