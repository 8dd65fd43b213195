//! Fills a database with realistic events quickly, for measuring `backup`, `restore`, `prune` and
//! ingest on a big file. It stores them through the one store path (`store_event`: mirror and all)
//! on a writer connection of its own in big transactions (holding the database lock, as every
//! writing command must), not over HTTP.
//!
//! ```text
//! cargo run --release --example filldb -- [--events 1000000] [--body-bytes 2000] [--days 400] OUT.db
//! ```
//!
//! Bodies are Stripe's example objects as events, pretty-printed as Stripe sends them and padded
//! with metadata to about `--body-bytes`; every event has its own id, and every four share an object.
//! `received_at` (and each event's `created`) is spread evenly over the last `--days` days, so
//! `prune` has something to do.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use stripe_inbox::ingest::store::{store_event, Effects, Ingest, Source};
use stripe_inbox::{event::envelope, event::testevent, store, time};

const TYPES: [&str; 8] = [
    "payment_intent.succeeded",
    "charge.succeeded",
    "invoice.paid",
    "invoice.finalized",
    "customer.updated",
    "customer.subscription.updated",
    "checkout.session.completed",
    "charge.refunded",
];
/// Same-length placeholders, overwritten per event.
const EVENT_ID: &str = "evt_0000000000000000000000000000";
/// Replaces the part after the object id's prefix (`pi_`, `cus_`, ...).
const OBJECT_PART: &str = "1111111111111111111111111111";
/// The `created` seconds of the template, overwritten per event (ten digits, as every second
/// from 2001 to 2286 has).
const CREATED: i64 = 1_111_111_111;
const ROWS_PER_TRANSACTION: u64 = 50_000;

struct Template {
    body: Vec<u8>,
    id_at: usize,
    /// Where the object id's placeholder is, and the id's prefix.
    object: Option<(usize, String)>,
    /// Where the `created` placeholders are.
    created_at: Vec<usize>,
}

fn template(event_type: &'static str, body_bytes: usize) -> Template {
    let mut event = testevent::build(event_type, CREATED).expect("known type");
    event["id"] = EVENT_ID.into();
    let object = &mut event["data"]["object"];
    let prefix = object["id"]
        .as_str()
        .and_then(|id| id.split_once('_'))
        .map_or("obj", |(p, _)| p)
        .to_string();
    object["id"] = format!("{prefix}_{OBJECT_PART}").into();
    // Big example objects (invoices, sessions) lose their largest fields until the event fits.
    let size = |e: &serde_json::Value| serde_json::to_vec_pretty(e).expect("serializable").len();
    while size(&event) > body_bytes {
        let Some(map) = event["data"]["object"].as_object_mut() else {
            break;
        };
        let largest = map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "id" | "object" | "status" | "metadata"))
            .max_by_key(|(_, v)| v.to_string().len())
            .map(|(k, _)| k.clone());
        match largest {
            Some(key) => map.remove(&key),
            None => break,
        };
    }
    let base = size(&event);
    let object = &mut event["data"]["object"];
    if base < body_bytes && object.is_object() {
        let mut metadata = object["metadata"].clone();
        if !metadata.is_object() {
            metadata = serde_json::json!({});
        }
        metadata["padding"] = "x".repeat((body_bytes - base).saturating_sub(40)).into();
        object["metadata"] = metadata;
    }
    let body = serde_json::to_vec_pretty(&event).expect("serializable");
    let find = |needle: &str| {
        body.windows(needle.len())
            .position(|w| w == needle.as_bytes())
    };
    let id_at = find(EVENT_ID).expect("id placeholder");
    let object = find(OBJECT_PART).map(|at| (at, prefix));
    let placeholder = CREATED.to_string();
    let created_at = (0..body.len())
        .filter(|&i| body[i..].starts_with(placeholder.as_bytes()))
        .collect();
    Template {
        body,
        id_at,
        object,
        created_at,
    }
}

/// `n` as exactly `width` base-62 digits.
fn base62(mut n: u64, width: usize) -> Vec<u8> {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    out
}

fn main() -> ExitCode {
    let mut events: u64 = 1_000_000;
    let mut body_bytes = 2000;
    let mut days: i64 = 400;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse().ok());
        match arg.as_str() {
            "--events" => events = value().unwrap_or(events),
            "--body-bytes" => body_bytes = value().unwrap_or(body_bytes as u64) as usize,
            "--days" => days = value().map_or(days, |d: u64| d as i64),
            "-h" | "--help" => {
                println!("usage: filldb [--events N] [--body-bytes N] [--days N] OUT.db");
                return ExitCode::SUCCESS;
            }
            _ if out.is_none() && !arg.starts_with('-') => out = Some(PathBuf::from(arg)),
            _ => {
                eprintln!("filldb: unexpected argument {arg:?}; try --help");
                return ExitCode::from(2);
            }
        }
    }
    let Some(out) = out else {
        eprintln!("filldb: give OUT.db; try --help");
        return ExitCode::from(2);
    };
    match fill(&out, events, body_bytes, days) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("filldb: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fill(
    out: &std::path::Path,
    events: u64,
    body_bytes: usize,
    days: i64,
) -> stripe_inbox::error::Result<()> {
    let started = Instant::now();
    let _lock = store::Lock::acquire(out)?;
    let conn = store::open_writer(out)?;
    let sql = |e| stripe_inbox::error::Error::sqlite("fill", e);
    let first: u64 = conn
        .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM events", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(sql)? as u64;
    let now_ms = time::now_ms();
    let span_ms = days * 86_400_000;
    let templates: Vec<Template> = TYPES.iter().map(|t| template(t, body_bytes)).collect();
    let mut bytes = 0u64;
    let mut done = 0u64;
    while done < events {
        let tx = conn.unchecked_transaction().map_err(sql)?;
        let end = (done + ROWS_PER_TRANSACTION).min(events);
        for i in done..end {
            let t = &templates[(i / 4 % templates.len() as u64) as usize];
            let mut body = t.body.clone();
            let id = base62(first + i, EVENT_ID.len() - 4);
            body[t.id_at + 4..t.id_at + EVENT_ID.len()].copy_from_slice(&id);
            if let Some((at, _)) = &t.object {
                let part = base62(i / 4, OBJECT_PART.len());
                body[*at..at + part.len()].copy_from_slice(&part);
            }
            let received_at = now_ms - span_ms + (span_ms * i as i64) / events.max(1) as i64;
            let created = (received_at / 1000).to_string();
            for at in &t.created_at {
                body[*at..at + created.len()].copy_from_slice(created.as_bytes());
            }
            bytes += body.len() as u64;
            let ingest = Ingest {
                envelope: envelope::parse(&body).expect("a valid event"),
                body,
                secret_index: Some(0),
                received_at_ms: received_at,
                source: Source::Webhook,
            };
            store_event(&tx, &ingest, &Effects::default())?;
        }
        done = end;
        tx.commit().map_err(sql)?;
        eprint!("\rfilldb: {done} of {events} events");
    }
    drop(conn);
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    eprintln!();
    println!(
        "filled {}: {done} events, {:.0} MB of bodies, file {:.0} MB, in {:.1} s",
        out.display(),
        bytes as f64 / 1e6,
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
