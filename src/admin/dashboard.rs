//! The dashboard (`/`): is the inbox receiving, what did the mirror do with it, is anything odd.
//!
//! Every figure comes from an index range or from memory, never from a scan of the whole table:
//! counts over the last hour and day and the 48-hour chart read the `events_received` index
//! (arrival time, decision), the total is the newest `seq`, uncertain objects come from a partial
//! index, signature failures and the writer's figures are counters kept since start; the
//! forwarding cards (pending, in flight, dead, oldest waiting) are ranges of `deliveries_state`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use rusqlite::{params, Connection, OptionalExtension};

use crate::admin::auth::Viewer;
use crate::admin::context::{self, built_in, Admin};
use crate::admin::html::{self, esc, Bar};
use crate::admin::stripe_panel;
use crate::error::{Error, Result};
use crate::http::Response;
use crate::mirror::{Decision, Outcome};
use crate::store;
use crate::time::now_ms;

/// Past this age of the newest event the dashboard warns that nothing is arriving.
pub const QUIET_WARNING_SECS: i64 = 12 * 3600;
/// Hours in the chart.
pub const CHART_HOURS: i64 = 48;

/// What the dashboard shows, read in one go (so it can be tested apart from the HTML).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub now_ms: i64,
    /// (id, type, received_at ms) of the newest event.
    pub newest: Option<(String, String, i64)>,
    /// The newest `seq`: how many events were ever stored.
    pub total: i64,
    pub last_hour: i64,
    pub last_day: i64,
    pub pending: i64,
    pub bars: Vec<Bar>,
    pub uncertain: i64,
    /// A few uncertain objects: (id, type).
    pub uncertain_sample: Vec<(String, String)>,
    pub objects_table: bool,
}

/// Reads the figures the dashboard shows.
pub fn summary(conn: &Connection, now_ms: i64) -> Result<Summary> {
    let q = |what: &'static str| move |e| Error::sqlite(format!("dashboard: {what}"), e);
    let mut s = Summary {
        now_ms,
        ..Summary::default()
    };
    s.newest = conn
        .query_row(
            "SELECT id, type, received_at, seq FROM events ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                s.total = r.get(3)?;
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            },
        )
        .optional()
        .map_err(q("newest event"))?;
    let count_since = |since: i64| -> Result<i64> {
        conn.query_row(
            "SELECT COUNT(*) FROM events WHERE received_at >= ?1",
            [since],
            |r| r.get(0),
        )
        .map_err(q("count recent events"))
    };
    s.last_hour = count_since(now_ms - 3_600_000)?;
    s.last_day = count_since(now_ms - 86_400_000)?;
    s.pending = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM events WHERE decision IS NULL)
                  + (SELECT COUNT(*) FROM events WHERE decision = ?1)",
            [Decision::ProjectionFailed.as_str()],
            |r| r.get(0),
        )
        .map_err(q("count unprojected events"))?;

    // The chart: one bar per hour, the current hour last.
    let this_hour = now_ms.div_euclid(3_600_000);
    let first_hour = this_hour - (CHART_HOURS - 1);
    s.bars = (first_hour..=this_hour)
        .map(|h| Bar {
            hour: h * 3600,
            counts: [0; 6],
        })
        .collect();
    let mut stmt = conn
        .prepare_cached(
            "SELECT received_at / 3600000 AS hour, decision, COUNT(*) FROM events
             WHERE received_at >= ?1 GROUP BY hour, decision",
        )
        .map_err(q("chart"))?;
    let rows = stmt
        .query_map([first_hour * 3_600_000], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(q("chart"))?;
    for row in rows {
        let (hour, decision, n) = row.map_err(q("chart"))?;
        let outcome = Outcome::of(decision.as_deref());
        let slot = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        if let Some(bar) = s.bars.get_mut((hour - first_hour).max(0) as usize) {
            bar.counts[slot] += n.max(0) as u64;
        }
    }

    // Objects the mirror is not sure about (a same-second tie fell to arrival order).
    s.objects_table = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'objects'",
            [],
            |_| Ok(()),
        )
        .optional()
        .map_err(q("objects table"))?
        .is_some();
    if s.objects_table {
        s.uncertain = conn
            .query_row(
                "SELECT COUNT(*) FROM objects WHERE uncertain = 1",
                [],
                |r| r.get(0),
            )
            .map_err(q("count uncertain objects"))?;
        let mut stmt = conn
            .prepare_cached("SELECT id, type FROM objects WHERE uncertain = 1 LIMIT 10")
            .map_err(q("uncertain objects"))?;
        s.uncertain_sample = stmt
            .query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(q("uncertain objects"))?
            .collect::<rusqlite::Result<_>>()
            .map_err(q("uncertain objects"))?;
    }
    Ok(s)
}

/// `GET /`.
pub fn page(admin: &Admin, viewer: &Viewer) -> Result<Response> {
    let started = std::time::Instant::now();
    let conn = admin.pool.get()?;
    let s = summary(&conn, now_ms())?;
    let (page_count, page_size, free): (i64, i64, i64) = conn
        .query_row(
            "SELECT (SELECT page_count FROM pragma_page_count()), \
             (SELECT page_size FROM pragma_page_size()), \
             (SELECT freelist_count FROM pragma_freelist_count())",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(|e| Error::sqlite("dashboard: page counts", e))?;
    let forwarding = crate::admin::deliveries::cards(&conn, &admin.forward, s.now_ms)?;
    let stripe = stripe_panel::dashboard_section(&conn, admin.refetch)?;
    drop(conn);

    let c = &admin.counters;
    let stats = admin.writer.stats();
    let mut body = String::new();
    body.push_str("<h1>Dashboard</h1>");
    if !viewer.logged_in {
        body.push_str("<p class=\"warn\">No admin password is set: anyone who can reach this loopback address can use this page. Set one with the environment variable named by <code>[admin] password_env</code>.</p>");
    }

    // Is anything arriving?
    match &s.newest {
        None => body.push_str("<p class=\"warn\">No event has arrived yet. Point a Stripe webhook endpoint (or <code>stripe listen --forward-to</code>) at this server's webhook path, or try <code>stripe-inbox send-test-event</code>.</p>"),
        Some((id, event_type, at)) => {
            let age = (s.now_ms - at) / 1000;
            let class = if age > QUIET_WARNING_SECS { "warn" } else { "muted" };
            let hint = if age > QUIET_WARNING_SECS {
                " Nothing has arrived for a long time: is the webhook endpoint still enabled in Stripe's dashboard, and does it point here?"
            } else {
                ""
            };
            let _ = write!(
                body,
                "<p class=\"{class}\">Newest event: <a href=\"/events/{}\">{}</a> ({}), received {} ago.{hint}</p>",
                html::url_encode(id),
                esc(id),
                esc(event_type),
                html::age(age)
            );
        }
    }

    let (database, wal) = store::file_sizes(&admin.database);
    let mut cards: Vec<(String, String, &str)> = vec![
        (
            html::thousands(s.last_hour),
            "events in the last hour".into(),
            "/events",
        ),
        (
            html::thousands(s.last_day),
            "events in the last 24 h".into(),
            "/events",
        ),
        (
            html::thousands(s.total),
            "events stored in all".into(),
            "/events",
        ),
        (
            html::thousands(c.signature_failed.load(Ordering::Relaxed) as i64),
            "signature failures since start".into(),
            "",
        ),
        (
            html::thousands(s.uncertain),
            "uncertain objects".into(),
            "/objects?uncertain=1",
        ),
        (
            html::thousands(s.pending),
            "events not projected (or failed)".into(),
            "/events?decision=pending",
        ),
        (
            html::bytes(database + wal),
            format!(
                "database ({} free, WAL {})",
                html::bytes((free * page_size).max(0) as u64),
                html::bytes(wal)
            ),
            "",
        ),
        (
            stats.queued.load(Ordering::Relaxed).to_string(),
            "writer queue".into(),
            "",
        ),
    ];
    cards.extend(forwarding);
    body.push_str("<div class=\"cards\">");
    for (value, label, href) in &cards {
        if href.is_empty() {
            let _ = write!(
                body,
                "<div class=\"card\"><div class=\"v\">{}</div><div class=\"l\">{}</div></div>",
                esc(value),
                esc(label)
            );
        } else {
            let _ = write!(
                body,
                "<a class=\"card\" href=\"{href}\"><div class=\"v\">{}</div><div class=\"l\">{}</div></a>",
                esc(value),
                esc(label)
            );
        }
    }
    body.push_str("</div>");

    let _ = write!(
        body,
        "<h2>Events per hour, last {CHART_HOURS} h (UTC), by what the mirror did</h2><div class=\"panel\">{}</div>",
        html::chart_svg(&s.bars)
    );

    if s.uncertain > 0 {
        body.push_str("<h2>Uncertain objects</h2><p class=\"muted\">Two events about each of these came in the same second with different data, and nothing showed their order: the last arrival won. Check them against Stripe's dashboard.</p><ul>");
        for (id, kind) in &s.uncertain_sample {
            let _ = write!(
                body,
                "<li><a href=\"/objects/{}\">{}</a> <span class=\"muted\">{}</span></li>",
                html::url_encode(id),
                esc(id),
                esc(kind)
            );
        }
        body.push_str("</ul>");
    }

    body.push_str(&stripe);

    // Since start, from memory.
    let commits = stats.commits.load(Ordering::Relaxed);
    let avg_commit_ms = if commits > 0 {
        stats.commit_micros.load(Ordering::Relaxed) as f64 / commits as f64 / 1000.0
    } else {
        0.0
    };
    let _ = write!(
        body,
        "<h2>Since this server started</h2><div class=\"panel\"><dl class=\"kv\">\
         <dt>stored</dt><dd>{}</dd><dt>repeated deliveries</dt><dd>{}</dd>\
         <dt>signature failures</dt><dd>{}</dd><dt>refused bodies</dt><dd>{}</dd>\
         <dt>answered 503 (writer busy or failing)</dt><dd>{}</dd>\
         <dt>commits</dt><dd>{} (average {avg_commit_ms:.2} ms, longest {:.1} ms)</dd>\
         <dt>database pages</dt><dd>{} pages of {} bytes</dd></dl></div>",
        html::thousands(c.stored.load(Ordering::Relaxed) as i64),
        html::thousands(c.duplicate.load(Ordering::Relaxed) as i64),
        html::thousands(c.signature_failed.load(Ordering::Relaxed) as i64),
        html::thousands(c.bad_request.load(Ordering::Relaxed) as i64),
        html::thousands(c.unavailable.load(Ordering::Relaxed) as i64),
        html::thousands(commits as i64),
        stats.commit_micros_max.load(Ordering::Relaxed) as f64 / 1000.0,
        html::thousands(page_count),
        page_size,
    );
    built_in(&mut body, started);
    Ok(context::page(viewer, "dashboard", "Dashboard", &body))
}
