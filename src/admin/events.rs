//! The events pages: `/events` (newest first, filtered, keyset-paginated; the search itself is
//! [`crate::admin::event_search`]), `/events/{id}` (one event: delivery, what the mirror did and why,
//! its forwarding to the app (`admin::deliveries`), the body) and `POST /events/{id}/replay`.

use std::fmt::Write as _;

use rusqlite::{Connection, OptionalExtension};

use crate::admin::auth::Viewer;
use crate::admin::context::{built_in, page, page_response, redirect, Admin};
use crate::admin::event_search::{self, find, input_time, Filter, SCAN_BUDGET};
use crate::admin::form::Form;
use crate::admin::html::{self, esc, url_encode};
use crate::error::{Error, Result};
use crate::http::{Request, Response};
use crate::mirror::queries::{EventRow, EVENT_COLUMNS};
use crate::mirror::Decision;
use crate::time::format_utc;

/// `GET /events`.
pub fn list(admin: &Admin, req: &Request, viewer: &Viewer) -> Result<Response> {
    let started = std::time::Instant::now();
    let form = Form::parse(&req.query);
    let filter = Filter::from_query(&form);
    let conn = admin.pool.get()?;
    let found = find(&conn, &filter, SCAN_BUDGET)?;
    let types = event_search::distinct(&conn, "type")?;
    // An email in the text box: the customers index knows at once whose it is, while the body
    // search below may need several steps to reach older events.
    let customers = match filter.text.as_deref() {
        Some(t) if t.contains('@') && !t.contains(char::is_whitespace) => {
            crate::admin::objects::customers_by_email(&conn, t)?
        }
        _ => Vec::new(),
    };
    drop(conn);

    let mut body = String::from("<h1>Events</h1>");
    filter_form(&mut body, &filter, &types);
    if !customers.is_empty() {
        body.push_str("<p class=\"panel\">This email belongs to ");
        for (i, c) in customers.iter().enumerate() {
            let _ = write!(
                body,
                "{}<a href=\"/objects/{id}\">{}</a> {} (<a href=\"/events?object={id}\">its events</a>)",
                if i > 0 { ", " } else { "" },
                esc(&c.id),
                esc(&c.summary),
                id = url_encode(&c.id)
            );
        }
        body.push_str(": its page lists its subscriptions, invoices and payments.</p>");
    }
    if found.rows.is_empty() {
        html::no_matches(
            &mut body,
            "events",
            found.limited,
            found.scanned as u64,
            "events",
        );
    } else {
        events_table(&mut body, &found.rows, filter.object.is_none());
    }
    body.push_str("<div class=\"pager\">");
    if filter.before.is_some() {
        let _ = write!(
            body,
            "<a href=\"/events?{}\">← Newest</a>",
            esc(&filter.query(None))
        );
    }
    if let Some(next) = found.next {
        let label = if found.limited {
            "Search older events →"
        } else {
            "Older →"
        };
        let _ = write!(
            body,
            "<a href=\"/events?{}\">{label}</a>",
            esc(&filter.query(Some(next)))
        );
    }
    if found.limited {
        let _ = write!(
            body,
            "<span class=\"muted\">Filters that no index answers are tested row by row, at most {} rows or {} ms a page; this page examined {} and stopped at event #{}.</span>",
            html::thousands(SCAN_BUDGET.rows as i64),
            SCAN_BUDGET.time.as_millis(),
            html::thousands(found.scanned as i64),
            found.next.unwrap_or(0)
        );
    }
    body.push_str("</div>");
    built_in(&mut body, started);
    Ok(page(viewer, "events", "Events", &body))
}

fn filter_form(body: &mut String, filter: &Filter, types: &[String]) {
    let val = |v: &Option<String>| v.as_deref().map(|v| esc(v).to_string()).unwrap_or_default();
    let _ = write!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"/events\">\
         <label>Type (* for any part)<input name=\"type\" list=\"types\" value=\"{}\" placeholder=\"invoice.*\"></label>\
         <label>Object id<input name=\"object\" value=\"{}\" placeholder=\"cus_… sub_… pi_…\"></label>\
         <label>Decision<select name=\"decision\"><option value=\"\">any</option>",
        val(&filter.event_type),
        val(&filter.object)
    );
    let mut options: Vec<&str> = vec!["pending"];
    options.extend(Decision::ALL.iter().map(Decision::as_str));
    options.push("tie_resolved:*");
    for d in options {
        let selected = if filter.decision.as_deref() == Some(d) {
            " selected"
        } else {
            ""
        };
        let label = if d == "pending" { "not projected" } else { d };
        let _ = write!(
            body,
            "<option value=\"{}\"{selected}>{}</option>",
            esc(d),
            esc(label)
        );
    }
    let _ = write!(
        body,
        "</select></label>\
         <label>Text in the body<input name=\"q\" value=\"{}\" placeholder=\"an email, a name…\"></label>\
         <label>Arrived from (UTC)<input type=\"datetime-local\" name=\"from\" value=\"{}\"></label>\
         <label>until (UTC)<input type=\"datetime-local\" name=\"to\" value=\"{}\"></label>\
         <button>Filter</button>",
        val(&filter.text),
        filter.from_ms.map(input_time).unwrap_or_default(),
        filter.to_ms.map(input_time).unwrap_or_default(),
    );
    if filter.is_filtered() {
        body.push_str("<a href=\"/events\">Clear filters</a>");
    }
    body.push_str("</form><datalist id=\"types\">");
    for t in types {
        let _ = write!(body, "<option value=\"{}\">", esc(t));
    }
    body.push_str("</datalist>");
}

/// The table of events (shared with the object page's timeline).
pub fn events_table(body: &mut String, rows: &[EventRow], show_object: bool) {
    body.push_str("<div class=\"scroll\"><table><thead><tr><th>Arrived (UTC)</th><th>Type</th>");
    if show_object {
        body.push_str("<th class=\"hide-s\">Object</th>");
    }
    body.push_str("<th>Decision</th><th class=\"hide-s\">Deliveries</th><th class=\"hide-s\">Event</th></tr></thead><tbody>");
    for r in rows {
        let _ = write!(
            body,
            "<tr><td class=\"mono\"><a href=\"/events/{id_url}\">{}</a></td><td><a href=\"/events/{id_url}\">{}</a>",
            html::time_cell(r.received_at.div_euclid(1000)),
            esc(&r.event_type),
            id_url = url_encode(&r.id)
        );
        // On a phone the object moves under the type instead of a column of its own.
        if let (true, Some(o)) = (show_object, &r.object_id) {
            let _ = write!(
                body,
                "<div class=\"show-s mono\"><a href=\"/objects/{}\">{}</a></div>",
                url_encode(o),
                esc(o)
            );
        }
        body.push_str("</td>");
        if show_object {
            match &r.object_id {
                Some(o) => {
                    let _ = write!(
                        body,
                        "<td class=\"id obj hide-s\"><a href=\"/objects/{}\">{}</a></td>",
                        url_encode(o),
                        esc(o)
                    );
                }
                None => body.push_str("<td class=\"muted hide-s\">none</td>"),
            }
        }
        let _ = write!(
            body,
            "<td>{}</td><td class=\"hide-s\">{}</td><td class=\"id hide-s\">{}</td></tr>",
            html::decision_badge(r.decision.as_deref()),
            r.deliveries,
            esc(&r.id)
        );
    }
    body.push_str("</tbody></table></div>");
}

/// Everything the event page shows.
#[derive(Debug, Clone)]
pub struct Detail {
    pub row: EventRow,
    pub livemode: Option<bool>,
    pub account: Option<String>,
    pub api_version: Option<String>,
    pub object_type: Option<String>,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub last_received_at: i64,
    pub secret_index: Option<i64>,
    pub source: String,
    pub thin: bool,
    pub body: Vec<u8>,
}

/// Reads one event.
pub fn detail(conn: &Connection, id: &str) -> Result<Option<Detail>> {
    conn.query_row(
        &format!(
            "SELECT {EVENT_COLUMNS}, livemode, account, api_version, object_type, request_id,
                    idempotency_key, last_received_at, secret_index, source, thin, body
             FROM events WHERE id = ?1"
        ),
        [id],
        |r| {
            Ok(Detail {
                row: EventRow::from_row(r)?,
                livemode: r.get(8)?,
                account: r.get(9)?,
                api_version: r.get(10)?,
                object_type: r.get(11)?,
                request_id: r.get(12)?,
                idempotency_key: r.get(13)?,
                last_received_at: r.get(14)?,
                secret_index: r.get(15)?,
                source: r.get(16)?,
                thin: r.get(17)?,
                body: r.get(18)?,
            })
        },
    )
    .optional()
    .map_err(|e| Error::sqlite("read event", e))
}

/// `GET /events/{id}`.
pub fn show(admin: &Admin, req: &Request, viewer: &Viewer, id: &str) -> Result<Response> {
    let conn = admin.pool.get()?;
    let Some(d) = detail(&conn, id)? else {
        return Ok(page_response(
            404,
            html::message_page("No such event", "No event with this id is stored."),
        ));
    };
    let mirror = match &d.row.object_id {
        Some(object) => crate::mirror::queries::object(&conn, object)?,
        None => None,
    };
    let mut forwarding = String::new();
    crate::admin::deliveries::event_section(
        &mut forwarding,
        &conn,
        &admin.forward,
        &d.row.id,
        &d.row.event_type,
        d.row.decision.as_deref(),
        viewer,
    )?;
    drop(conn);
    let form = Form::parse(&req.query);
    let r = &d.row;

    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>{}</h1><p>{} {}</p>",
        esc(&r.event_type),
        html::decision_badge(r.decision.as_deref()),
        esc(&r.id)
    );
    if form.get("done") == Some("replayed") {
        let _ = write!(
            body,
            "<p class=\"warn\">Replayed. The mirror's decision for this event is now: <strong>{}</strong>.</p>",
            esc(r.decision.as_deref().unwrap_or("not projected"))
        );
    }

    // What the mirror did and why.
    body.push_str("<h2>What the mirror did</h2><div class=\"panel\">");
    let _ = write!(
        body,
        "<p>{} <strong>{}</strong>: {}</p>",
        html::decision_badge(r.decision.as_deref()),
        esc(r.decision.as_deref().unwrap_or("not projected")),
        esc(html::decision_explained(r.decision.as_deref()))
    );
    match (&r.object_id, &mirror) {
        (Some(object), Some(m)) => {
            let holds = m.event_id.as_deref() == Some(r.id.as_str());
            let _ =
                write!(
                body,
                "<p>Its object <a href=\"/objects/{}\">{}</a> holds {} (event time {}{}){}{}.</p>",
                url_encode(object),
                esc(object),
                if holds {
                    "<strong>this event's state</strong>".to_string()
                } else {
                    match &m.event_id {
                        Some(e) => format!(
                            "the state of <a href=\"/events/{}\">{}</a>",
                            url_encode(e),
                            esc(e)
                        ),
                        None => "a state not from an event (refetched)".to_string(),
                    }
                },
                m.k_created.map(format_utc).unwrap_or_else(|| "unknown".into()),
                if r.created < m.k_created.unwrap_or(i64::MIN) {
                    format!(", newer than this event's {}", format_utc(r.created))
                } else {
                    String::new()
                },
                if m.deleted { "; it is deleted (a tombstone)" } else { "" },
                if m.uncertain {
                    "; it is flagged uncertain"
                } else {
                    ""
                },
            );
        }
        (Some(object), None) => {
            let _ = write!(
                body,
                "<p>Its object <span class=\"mono\">{}</span> is not in the mirror.</p>",
                esc(object)
            );
        }
        (None, _) => body.push_str("<p>The event names no object.</p>"),
    }
    let _ = write!(
        body,
        "<div class=\"actions\"><form method=\"post\" action=\"/events/{id}/replay\">{}<button>Replay this event</button></form>",
        html::csrf_field(&viewer.csrf),
        id = url_encode(&r.id)
    );
    if let Some(object) = &r.object_id {
        let _ = write!(
            body,
            "<a href=\"/events?object={}\">Every event about this object</a>",
            url_encode(object)
        );
    }
    body.push_str("</div><p class=\"muted\">Replaying re-applies the stored event to the mirror under the same rules; doing it twice changes nothing more.</p></div>");

    // Delivery.
    let opt = |v: &Option<String>| {
        v.as_deref()
            .map(|v| esc(v).to_string())
            .unwrap_or_else(|| "<span class=\"muted\">none</span>".into())
    };
    let _ = write!(
        body,
        "<h2>Delivery</h2><div class=\"panel\"><dl class=\"kv\">\
         <dt>event created</dt><dd>{}</dd>\
         <dt>first received</dt><dd>{}</dd>\
         <dt>deliveries</dt><dd>{}{}</dd>\
         <dt>signature</dt><dd>{}</dd>\
         <dt>source</dt><dd>{}</dd>\
         <dt>mode</dt><dd>{}</dd>\
         <dt>account</dt><dd>{}</dd>\
         <dt>API version</dt><dd>{}</dd>\
         <dt>object</dt><dd>{} {}</dd>\
         <dt>request</dt><dd>{}</dd>\
         <dt>idempotency key</dt><dd>{}</dd>\
         <dt>arrival number</dt><dd>#{}</dd></dl>\
         <p class=\"muted\">The inbox keeps the body exactly as received and these envelope fields, not the raw HTTP headers.</p></div>",
        format_utc(r.created),
        html::time_ms(r.received_at),
        r.deliveries,
        if r.deliveries > 1 {
            format!(" (last {})", html::time_ms(d.last_received_at))
        } else {
            String::new()
        },
        match d.secret_index {
            Some(i) => format!("verified with signing secret #{}", i + 1),
            None => "not from a webhook".to_string(),
        },
        esc(&d.source),
        match d.livemode {
            Some(true) => "live",
            Some(false) => "test",
            None => "unknown",
        },
        opt(&d.account),
        opt(&d.api_version),
        opt(&r.object_id),
        d.object_type.as_deref().map(|t| format!("({})", esc(t))).unwrap_or_default(),
        opt(&d.request_id),
        opt(&d.idempotency_key),
        r.seq,
    );
    if d.thin {
        body.push_str(
            "<p class=\"muted\">A thin event: it names an object but carries no state.</p>",
        );
    }
    body.push_str(&forwarding);
    let text = String::from_utf8_lossy(&d.body);
    let _ = write!(
        body,
        "<h2>Body ({})</h2><pre class=\"json\">{}</pre>",
        html::bytes(d.body.len() as u64),
        html::json_pretty(&text)
    );
    Ok(page(viewer, "events", &r.id, &body))
}

/// `POST /events/{id}/replay` (CSRF already checked): re-applies the event through the writer.
pub fn replay(admin: &Admin, id: &str) -> Result<Response> {
    let exists = {
        let conn = admin.pool.get()?;
        conn.query_row("SELECT 1 FROM events WHERE id = ?1", [id], |_| Ok(()))
            .optional()
            .map_err(|e| Error::sqlite("find event", e))?
            .is_some()
    };
    if !exists {
        return Ok(page_response(
            404,
            html::message_page("No such event", "No event with this id is stored."),
        ));
    }
    let event_id = id.to_string();
    let decision = admin
        .writer
        .run(move |conn| crate::mirror::replay::replay_event(conn, &event_id))?
        .as_str();
    log::info!("admin replayed event={id} decision={decision}");
    Ok(
        redirect(&format!("/events/{}?done=replayed", url_encode(id)))
            .with_log(format!("admin=replay event={id} decision={decision}")),
    )
}
