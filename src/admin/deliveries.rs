//! The forwarding pages: `/deliveries` (by destination and state, newest first, keyset-paginated,
//! with each destination's counts), the "Forwarding" section of an event's page (its deliveries
//! with every attempt), the dashboard's forwarding cards, and the POST actions: retry one delivery
//! (`/deliveries/{id}/retry`), retry every dead one (`/deliveries/retry-dead`), and send one event
//! to a destination (`/events/{id}/forward`: again, or for the first time to a destination added
//! after it arrived). The queries are `forward::views`; the writes are `forward::queue` run through
//! the writer; then the destination's dispatcher is woken so that the retry goes at once.

use std::fmt::Write as _;

use rusqlite::Connection;

use crate::admin::auth::Viewer;
use crate::admin::context::{built_in, page, page_response, redirect, Admin};
use crate::admin::form::Form;
use crate::admin::html::{self, esc, url_encode};
use crate::error::{Error, Result};
use crate::forward::queue::State;
use crate::forward::redeliver::{through, Which};
use crate::forward::views::{self, Attempt, Counts, Filter, Row};
use crate::forward::Routes;
use crate::http::{Request, Response};
use crate::mirror::Decision;
use crate::time::now_ms;

/// Rows a page.
const PAGE: usize = 50;

/// The CSS class of a state's badge (the decision badges' colours).
fn badge(state: &str) -> String {
    let class = match State::parse(state) {
        Some(State::Done) => "o-applied",
        Some(State::Pending) => "o-pending",
        Some(State::InFlight) => "o-tie",
        Some(State::Dead) => "o-deleted",
        None => "o-ignored",
    };
    format!("<span class=\"badge {class}\">{}</span>", esc(state))
}

/// `GET /deliveries`.
pub fn list(admin: &Admin, req: &Request, viewer: &Viewer) -> Result<Response> {
    let started = std::time::Instant::now();
    let form = Form::parse(&req.query);
    let filter = Filter {
        destination: form
            .get("destination")
            .filter(|d| !d.is_empty())
            .map(str::to_string),
        state: form.get("state").and_then(State::parse),
        before: form.get("before").and_then(|b| b.parse().ok()),
    };
    let conn = admin.pool.get()?;
    let names: Vec<&str> = admin.forward.list.iter().map(|r| r.name.as_str()).collect();
    let counts = views::counts(&conn, &names)?;
    let (rows, more) = views::list(&conn, &views::narrow(&filter, &counts), PAGE)?;
    drop(conn);
    let now = now_ms();

    let mut body = String::from("<h1>Deliveries</h1>");
    match (form.get("done"), form.get("n")) {
        (Some("retried"), Some(n)) => {
            let _ = write!(
                body,
                "<p class=\"warn\">{} deliveries put back to pending; they go out now, in order per object.</p>",
                esc(n)
            );
        }
        (Some("retried"), None) => body.push_str(
            "<p class=\"warn\">Put back to pending; it goes out now, after anything older about its object.</p>",
        ),
        _ => {}
    }
    if counts.is_empty() {
        body.push_str("<p class=\"muted\">No destination is configured: add a <code>[[forward]]</code> block to the config to forward events to your app.</p>");
    } else {
        counts_table(&mut body, &counts, &admin.forward, now);
    }
    body.push_str("<h2>Newest first</h2>");
    filter_form(&mut body, &filter, &counts);
    let dead_here: i64 = counts
        .iter()
        .filter(|c| {
            filter
                .destination
                .as_ref()
                .is_none_or(|d| *d == c.destination)
        })
        .map(|c| c.dead)
        .sum();
    if dead_here > 0 {
        let _ = write!(
            body,
            "<div class=\"actions\"><form method=\"post\" action=\"/deliveries/retry-dead\">{}{}<button>Retry {}{}</button></form></div>",
            html::csrf_field(&viewer.csrf),
            filter
                .destination
                .as_ref()
                .map(|d| format!("<input type=\"hidden\" name=\"destination\" value=\"{}\">", esc(d)))
                .unwrap_or_default(),
            if dead_here == 1 {
                "the dead delivery".to_string()
            } else {
                format!("all {} dead deliveries", html::thousands(dead_here))
            },
            filter
                .destination
                .as_ref()
                .map(|d| format!(" to {}", esc(d)))
                .unwrap_or_default(),
        );
    }
    if rows.is_empty() {
        html::no_matches(&mut body, "deliveries", false, 0, "");
    } else {
        table(&mut body, &rows, viewer, now);
    }
    body.push_str("<div class=\"pager\">");
    let query = |before: Option<i64>| {
        let mut q = Vec::new();
        if let Some(d) = &filter.destination {
            q.push(format!("destination={}", url_encode(d)));
        }
        if let Some(s) = filter.state {
            q.push(format!("state={}", s.as_str()));
        }
        if let Some(b) = before {
            q.push(format!("before={b}"));
        }
        q.join("&")
    };
    if filter.before.is_some() {
        let _ = write!(
            body,
            "<a href=\"/deliveries?{}\">← Newest</a>",
            esc(&query(None))
        );
    }
    if let (true, Some(last)) = (more, rows.last()) {
        let _ = write!(
            body,
            "<a href=\"/deliveries?{}\">Older →</a>",
            esc(&query(Some(last.id)))
        );
    }
    body.push_str("</div><p class=\"muted\">Each object's deliveries leave one at a time, in the order of the events; a delivery waiting for its retry holds back the later ones of its object.</p>");
    built_in(&mut body, started);
    Ok(page(viewer, "deliveries", "Deliveries", &body))
}

fn counts_table(body: &mut String, counts: &[Counts], routes: &Routes, now: i64) {
    body.push_str("<h2>By destination</h2><div class=\"scroll\"><table><thead><tr><th>Destination</th><th>Pending</th><th>In flight</th><th>Dead</th><th>Oldest waiting</th></tr></thead><tbody>");
    for c in counts {
        let name = url_encode(&c.destination);
        let _ = write!(
            body,
            "<tr><td><a href=\"/deliveries?destination={name}\">{}</a>{}</td>\
             <td><a href=\"/deliveries?destination={name}&amp;state=pending\">{}</a></td>\
             <td><a href=\"/deliveries?destination={name}&amp;state=in_flight\">{}</a></td>\
             <td><a href=\"/deliveries?destination={name}&amp;state=dead\">{}</a></td><td>{}</td></tr>",
            esc(&c.destination),
            if routes.get(&c.destination).is_none() {
                " <span class=\"muted\">(no longer configured)</span>"
            } else {
                ""
            },
            html::thousands(c.pending),
            html::thousands(c.in_flight),
            html::thousands(c.dead),
            c.oldest_waiting_ms
                .map(|t| format!("{} ago", html::age((now - t) / 1000)))
                .unwrap_or_else(|| "<span class=\"muted\">none</span>".into()),
        );
    }
    body.push_str("</tbody></table></div>");
}

fn filter_form(body: &mut String, filter: &Filter, counts: &[Counts]) {
    body.push_str("<form class=\"filters\" method=\"get\" action=\"/deliveries\"><label>Destination<select name=\"destination\"><option value=\"\">any</option>");
    for c in counts {
        let selected = if filter.destination.as_deref() == Some(c.destination.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<option value=\"{}\"{selected}>{}</option>",
            esc(&c.destination),
            esc(&c.destination)
        );
    }
    body.push_str(
        "</select></label><label>State<select name=\"state\"><option value=\"\">any</option>",
    );
    for s in State::ALL {
        let selected = if filter.state == Some(s) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<option value=\"{}\"{selected}>{}</option>",
            s.as_str(),
            s.as_str()
        );
    }
    body.push_str("</select></label><button>Filter</button>");
    if filter.destination.is_some() || filter.state.is_some() {
        body.push_str("<a href=\"/deliveries\">Clear filters</a>");
    }
    body.push_str("</form>");
}

fn table(body: &mut String, rows: &[Row], viewer: &Viewer, now: i64) {
    body.push_str("<div class=\"scroll\"><table><thead><tr><th>Arrived (UTC)</th><th>Event</th><th class=\"hide-s\">Object</th><th>Destination</th><th>State</th><th>Attempts</th><th class=\"hide-s\">Last answer</th><th class=\"hide-s\">Next / done</th><th></th></tr></thead><tbody>");
    for r in rows {
        let event = url_encode(&r.event_id);
        let _ = write!(
            body,
            "<tr><td class=\"mono\"><a href=\"/events/{event}\">{}</a></td><td><a href=\"/events/{event}\">{}</a><div class=\"mono muted\">{}</div></td><td class=\"id obj hide-s\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"hide-s\">{}</td><td class=\"hide-s\">{}</td><td>",
            html::time_cell(r.created_at.div_euclid(1000)),
            esc(r.event_type.as_deref().unwrap_or("(event gone)")),
            esc(&r.event_id),
            match &r.object_id {
                Some(o) => format!("<a href=\"/objects/{}\">{}</a>", url_encode(o), esc(o)),
                None => "<span class=\"muted\">none</span>".into(),
            },
            esc(&r.destination),
            badge(&r.state),
            r.attempts,
            last_answer(r.last_status, r.last_error.as_deref()),
            next_or_done(r, now),
        );
        if matches!(State::parse(&r.state), Some(State::Done | State::Dead)) {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/deliveries/{}/retry\">{}<button>Retry</button></form>",
                r.id,
                html::csrf_field(&viewer.csrf)
            );
        }
        body.push_str("</td></tr>");
    }
    body.push_str("</tbody></table></div>");
}

fn last_answer(status: Option<i64>, error: Option<&str>) -> String {
    match (status, error) {
        (None, None) => "<span class=\"muted\">none yet</span>".into(),
        (Some(s), None) => s.to_string(),
        (_, Some(e)) => format!("<span class=\"mono\">{}</span>", esc(e)),
    }
}

fn next_or_done(r: &Row, now: i64) -> String {
    match State::parse(&r.state) {
        Some(State::Done) => match r.delivered_at {
            Some(t) => format!("done {}", html::time_ms(t)),
            None => "done".into(),
        },
        Some(State::Dead) => "dead-lettered".into(),
        Some(State::InFlight) if r.next_attempt_at > now => "sending now".into(),
        Some(State::InFlight) => "lease expired: due again".into(),
        _ if r.next_attempt_at > now => {
            format!("in {}", html::age((r.next_attempt_at - now + 999) / 1000))
        }
        _ => "due (after anything older about its object)".into(),
    }
}

/// The "Forwarding" section of an event's page: every delivery with every attempt, a Retry button,
/// and for each configured destination without a row, why (and a button to send it anyway).
pub fn event_section(
    body: &mut String,
    conn: &Connection,
    routes: &Routes,
    event_id: &str,
    event_type: &str,
    decision: Option<&str>,
    viewer: &Viewer,
) -> Result<()> {
    let deliveries = views::for_event(conn, event_id)?;
    if deliveries.is_empty() && routes.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    body.push_str("<h2>Forwarding</h2><div class=\"panel\">");
    for (r, attempts) in &deliveries {
        let _ = write!(
            body,
            "<h3>{} {}</h3><div class=\"actions\"><span>{} attempt{}; {}.</span>{}</div>",
            esc(&r.destination),
            badge(&r.state),
            r.attempts,
            if r.attempts == 1 { "" } else { "s" },
            next_or_done(r, now),
            if matches!(State::parse(&r.state), Some(State::Done | State::Dead)) {
                format!(
                    "<form class=\"inline\" method=\"post\" action=\"/deliveries/{}/retry\">{}<button>Retry</button></form>",
                    r.id,
                    html::csrf_field(&viewer.csrf)
                )
            } else {
                String::new()
            }
        );
        attempts_table(body, attempts, r.attempts);
    }
    for route in &routes.list {
        if deliveries.iter().any(|(r, _)| r.destination == route.name) {
            continue;
        }
        let why = if !route.wants(event_type, Decision::Applied) {
            "its <code>events</code> patterns do not take this type"
        } else if decision.and_then(Decision::parse) == Some(Decision::Stale)
            && !route.wants(event_type, Decision::Stale)
        {
            "the mirror judged it stale and the destination has <code>stale = \"skip\"</code>"
        } else {
            "the event arrived before this destination was configured"
        };
        let _ = write!(
            body,
            "<div class=\"actions\"><span>Not forwarded to <strong>{}</strong>: {why}.</span><form class=\"inline\" method=\"post\" action=\"/events/{}/forward\">{}<input type=\"hidden\" name=\"destination\" value=\"{}\"><button>Send it to {} now</button></form></div>",
            esc(&route.name),
            url_encode(event_id),
            html::csrf_field(&viewer.csrf),
            esc(&route.name),
            esc(&route.name),
        );
    }
    body.push_str("<p class=\"muted\">The app gets the body exactly as Stripe sent it, signed with the destination's secret (<code>Stripe-Signature</code>), with <code>Stripe-Inbox-Attempt</code>, <code>Stripe-Inbox-Decision</code> and <code>Idempotency-Key</code> (the event id).</p></div>");
    Ok(())
}

fn attempts_table(body: &mut String, attempts: &[Attempt], begun: i64) {
    if attempts.is_empty() && begun == 0 {
        return;
    }
    body.push_str("<div class=\"scroll\"><table><thead><tr><th>#</th><th>Sent (UTC)</th><th>Took</th><th>Status</th><th>Outcome</th><th>Error</th></tr></thead><tbody>");
    let mut next = 1;
    for a in attempts {
        // An attempt begun but never recorded: its process died (the lease ran out).
        while next < a.attempt {
            let _ = write!(
                body,
                "<tr><td>{next}</td><td colspan=\"5\" class=\"muted\">no outcome recorded: the process stopped during the attempt, and its lease ran out</td></tr>"
            );
            next += 1;
        }
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"mono\">{}</td><td>{} ms</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            a.attempt,
            html::time_ms(a.started_at),
            a.latency_ms,
            a.status.map_or("-".to_string(), |s| s.to_string()),
            esc(&a.outcome),
            esc(a.error.as_deref().unwrap_or("")),
        );
        next = a.attempt + 1;
    }
    body.push_str("</tbody></table></div>");
}

/// The dashboard's forwarding cards (none when nothing is configured and nothing was forwarded).
pub fn cards(
    conn: &Connection,
    routes: &Routes,
    now: i64,
) -> Result<Vec<(String, String, &'static str)>> {
    let names: Vec<&str> = routes.list.iter().map(|r| r.name.as_str()).collect();
    let counts = views::counts(conn, &names)?;
    if counts.is_empty() {
        return Ok(Vec::new());
    }
    let sum = |f: fn(&Counts) -> i64| counts.iter().map(f).sum::<i64>();
    let oldest = counts.iter().filter_map(|c| c.oldest_waiting_ms).min();
    Ok(vec![
        (
            html::thousands(sum(|c| c.pending)),
            "deliveries pending".into(),
            "/deliveries?state=pending",
        ),
        (
            html::thousands(sum(|c| c.in_flight)),
            "deliveries in flight".into(),
            "/deliveries?state=in_flight",
        ),
        (
            html::thousands(sum(|c| c.dead)),
            "deliveries dead".into(),
            "/deliveries?state=dead",
        ),
        (
            oldest
                .map(|t| html::age((now - t) / 1000))
                .unwrap_or_else(|| "none".into()),
            "oldest delivery waiting".into(),
            "/deliveries",
        ),
    ])
}

/// `POST /deliveries/{id}/retry` (CSRF already checked).
pub fn retry_one(admin: &Admin, id: &str) -> Result<Response> {
    let Ok(id) = id.parse::<i64>() else {
        return Ok(not_found());
    };
    let done = through(&admin.writer, &admin.forward, &Which::Delivery(id), None)?;
    if done.requeued == 0 {
        return Ok(page_response(
            409,
            html::message_page(
                "Not retried",
                "This delivery is not done or dead (it is already waiting or under way), or it does not exist.",
            ),
        ));
    }
    log::info!("admin retried delivery={id}");
    Ok(redirect("/deliveries?done=retried").with_log(format!("admin=retry delivery={id}")))
}

/// `POST /deliveries/retry-dead` (CSRF already checked): every dead delivery, of the form's
/// `destination` or of all, back to pending, a batch per writer task.
pub fn retry_dead(admin: &Admin, form: &Form) -> Result<Response> {
    let destination = form
        .get("destination")
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    let total = through(
        &admin.writer,
        &admin.forward,
        &Which::Dead,
        destination.as_deref(),
    )?
    .requeued;
    log::info!(
        "admin retried dead deliveries n={total} destination={}",
        destination.as_deref().unwrap_or("*")
    );
    let mut target = format!("/deliveries?done=retried&n={total}");
    if let Some(d) = &destination {
        let _ = write!(target, "&destination={}", url_encode(d));
    }
    Ok(redirect(&target).with_log(format!("admin=retry_dead n={total}")))
}

/// `POST /events/{id}/forward` (CSRF already checked): sends the event to the form's
/// `destination` again, or for the first time.
pub fn forward_event(admin: &Admin, event_id: &str, form: &Form) -> Result<Response> {
    let Some(destination) = form.get("destination").filter(|d| !d.is_empty()) else {
        return Ok(not_found());
    };
    let which = Which::Event(event_id.to_string());
    match through(&admin.writer, &admin.forward, &which, Some(destination)) {
        Ok(_) => {}
        Err(Error::NotFound { .. }) => return Ok(not_found()),
        Err(e) => return Err(e),
    }
    log::info!("admin forwarded event={event_id} destination={destination}");
    Ok(
        redirect(&format!("/events/{}", url_encode(event_id))).with_log(format!(
            "admin=forward event={event_id} destination={destination}"
        )),
    )
}

fn not_found() -> Response {
    page_response(
        404,
        html::message_page("Not found", "There is no such delivery or destination."),
    )
}
