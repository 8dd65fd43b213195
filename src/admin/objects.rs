//! The mirror's pages: `/objects` (browse by type, search by id, email, metadata or text),
//! `/objects/{id}` (the current state, where it came from, the events that touched it and what
//! each did, related objects) and `POST /objects/{id}/rebuild` (the Refetch button and its route
//! are in `stripe_panel`).
//!
//! Lookups by id, by type, by customer (`objects_customer`), uncertain objects
//! (`objects_uncertain`) and customers by email (`objects_email`) are index ranges. A metadata
//! `key=value` or a free-text search has no index to use: it tests the newest objects row by row,
//! within [`SCAN_BUDGET`] (rows and time) a page, and the page says so and links onward.

use std::fmt::Write as _;

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection};

use crate::admin::auth::Viewer;
use crate::admin::context::{built_in, page, page_response, redirect, Admin};
use crate::admin::event_search::Budget;
use crate::admin::form::Form;
use crate::admin::html::{self, esc, url_encode};
use crate::admin::stripe_panel;
use crate::error::{Error, Result};
use crate::http::{Request, Response};
use crate::mirror::queries::{self, Order};
use crate::time::format_utc;

/// Rows per page.
pub const PAGE: usize = 50;
/// How much row-by-row testing one search page may do (the events list's budget).
pub const SCAN_BUDGET: Budget = crate::admin::event_search::SCAN_BUDGET;
/// The most events the timeline of one object shows.
pub const TIMELINE_LIMIT: usize = 500;

/// One row of the list.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub rowid: i64,
    pub id: String,
    pub object_type: String,
    /// Name or email, status, amount: whatever the object has, as short text.
    pub summary: String,
    pub updated_at: i64,
    pub deleted: bool,
    pub uncertain: bool,
}

/// What the list shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub object_type: Option<String>,
    pub search: Option<String>,
    pub uncertain: bool,
    /// Keyset cursor: rowids below this.
    pub before: Option<i64>,
}

/// A page of objects.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub items: Vec<Item>,
    pub next: Option<i64>,
    /// A row-by-row search stopped at its budget.
    pub limited: bool,
    pub scanned: usize,
    /// How the search was understood, for the page.
    pub how: &'static str,
}

/// The columns every list query selects (one short summary computed in SQL).
const ITEM_COLUMNS: &str = "rowid, id, type, trim(
        coalesce(json_extract(data, '$.name') || ' ', '') ||
        coalesce(coalesce(json_extract(data, '$.email'), json_extract(data, '$.customer_email'),
                 json_extract(data, '$.customer_details.email'),
                 json_extract(data, '$.billing_details.email')) || ' ', '') ||
        coalesce(json_extract(data, '$.status') || ' ', '') ||
        coalesce(coalesce(json_extract(data, '$.amount'), json_extract(data, '$.amount_total'),
                 json_extract(data, '$.amount_due'), json_extract(data, '$.unit_amount'))
                 || ' ' || upper(coalesce(json_extract(data, '$.currency'), '')), '')),
        updated_at, deleted, uncertain";

fn item(r: &rusqlite::Row) -> rusqlite::Result<Item> {
    Ok(Item {
        rowid: r.get(0)?,
        id: r.get(1)?,
        object_type: r.get(2)?,
        summary: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
        updated_at: r.get(4)?,
        deleted: r.get(5)?,
        uncertain: r.get(6)?,
    })
}

/// Finds a page of objects, newest first (by when the mirror first saw them).
pub fn find(conn: &Connection, q: &Query, budget: Budget) -> Result<Found> {
    let err = |e| Error::sqlite("list objects", e);
    let before = q.before.unwrap_or(i64::MAX);
    let mut conds: Vec<String> = vec!["rowid < ?".into()];
    let mut values: Vec<Value> = vec![Value::Integer(before)];
    if let Some(t) = &q.object_type {
        conds.push("type = ?".into());
        values.push(Value::Text(t.clone()));
    }
    if q.uncertain {
        conds.push("uncertain = 1".into());
    }
    // A search that an index answers, or a test for each row.
    let mut row_test: Option<(String, Vec<Value>)> = None;
    let mut how = "newest first";
    if let Some(s) = &q.search {
        if s.contains('@') && !s.contains(char::is_whitespace) {
            how =
                "customers with this email (exact, any case), then objects whose JSON contains it";
            let mut found = Found {
                items: customers_by_email(conn, s)?,
                ..Found::default()
            };
            // Guest checkouts, charges and invoices carry an email too: search their JSON.
            let rest = scan(
                conn,
                &conds,
                &values,
                "instr(lower(data), lower(?)) > 0",
                vec![Value::Text(s.clone())],
                budget,
            )?;
            let seen: Vec<String> = found.items.iter().map(|i| i.id.clone()).collect();
            found
                .items
                .extend(rest.items.into_iter().filter(|i| !seen.contains(&i.id)));
            found.next = rest.next;
            found.limited = rest.limited;
            found.scanned = rest.scanned;
            found.how = how;
            return Ok(found);
        } else if let Some((key, value)) = s.split_once('=') {
            how = "objects whose metadata has this key and value";
            row_test = Some((
                "EXISTS (SELECT 1 FROM json_each(data, '$.metadata') WHERE key = ? AND value = ?)"
                    .into(),
                vec![
                    Value::Text(key.trim().to_string()),
                    Value::Text(value.trim().to_string()),
                ],
            ));
        } else {
            how = "objects whose JSON contains this text (any case)";
            row_test = Some((
                "instr(lower(data), lower(?)) > 0".into(),
                vec![Value::Text(s.clone())],
            ));
        }
    }
    if let Some((test, test_values)) = row_test {
        let mut found = scan(conn, &conds, &values, &test, test_values, budget)?;
        found.how = how;
        return Ok(found);
    }
    let sql = format!(
        "SELECT {ITEM_COLUMNS} FROM objects WHERE {} ORDER BY rowid DESC LIMIT {}",
        conds.join(" AND "),
        PAGE + 1
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(err)?;
    let mut items: Vec<Item> = stmt
        .query_map(params_from_iter(values), item)
        .map_err(err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(err)?;
    let next = if items.len() > PAGE {
        items.truncate(PAGE);
        items.last().map(|i| i.rowid)
    } else {
        None
    };
    Ok(Found {
        scanned: items.len(),
        items,
        next,
        limited: false,
        how,
    })
}

/// Tests rows newest first against `test`, within `budget`.
fn scan(
    conn: &Connection,
    conds: &[String],
    values: &[Value],
    test: &str,
    test_values: Vec<Value>,
    budget: Budget,
) -> Result<Found> {
    let deadline = std::time::Instant::now() + budget.time;
    let err = |e| Error::sqlite("search objects", e);
    let sql = format!(
        "SELECT rowid, ({test}) FROM objects WHERE {} ORDER BY rowid DESC",
        conds.join(" AND ")
    );
    let mut all = test_values;
    all.extend(values.iter().cloned());
    let mut stmt = conn.prepare_cached(&sql).map_err(err)?;
    let mut rows = stmt.query(params_from_iter(all)).map_err(err)?;
    let mut hits = Vec::new();
    let mut scanned = 0;
    let mut stopped_at = None;
    while let Some(row) = rows.next().map_err(err)? {
        scanned += 1;
        let rowid: i64 = row.get(0).map_err(err)?;
        if row.get::<_, Option<bool>>(1).map_err(err)?.unwrap_or(false) {
            hits.push(rowid);
            if hits.len() > PAGE {
                break;
            }
        }
        let out_of_time =
            scanned >= PAGE && scanned % 64 == 0 && std::time::Instant::now() >= deadline;
        if scanned >= budget.rows || out_of_time {
            stopped_at = Some(rowid);
            break;
        }
    }
    let (next, limited) = if hits.len() > PAGE {
        hits.truncate(PAGE);
        (hits.last().copied(), false)
    } else {
        (stopped_at, stopped_at.is_some())
    };
    let items = items_by_rowid(conn, &hits)?;
    Ok(Found {
        items,
        next,
        limited,
        scanned,
        how: "",
    })
}

fn items_by_rowid(conn: &Connection, rowids: &[i64]) -> Result<Vec<Item>> {
    if rowids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {ITEM_COLUMNS} FROM objects WHERE rowid IN ({}) ORDER BY rowid DESC",
        vec!["?"; rowids.len()].join(", ")
    );
    let mut stmt = conn
        .prepare(&sql)
        .map_err(|e| Error::sqlite("read objects", e))?;
    let rows = stmt
        .query_map(params_from_iter(rowids), item)
        .map_err(|e| Error::sqlite("read objects", e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| Error::sqlite("read objects", e))
}

/// Customers whose email is `email` (any case), through the `objects_email` index.
pub fn customers_by_email(conn: &Connection, email: &str) -> Result<Vec<Item>> {
    let sql = format!(
        "SELECT {ITEM_COLUMNS} FROM objects
         WHERE email = lower(?1) AND type = 'customer'
         LIMIT {PAGE}"
    );
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(|e| Error::sqlite("find customers by email", e))?;
    let items = stmt
        .query_map([email], item)
        .map_err(|e| Error::sqlite("find customers by email", e))?
        .collect::<rusqlite::Result<_>>()
        .map_err(|e| Error::sqlite("find customers by email", e))?;
    Ok(items)
}

/// The object types in the mirror, by skipping through the `objects_type` index.
pub fn types(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn
        .prepare_cached(
            "WITH RECURSIVE v(x) AS (
                 SELECT MIN(type) FROM objects
                 UNION ALL
                 SELECT (SELECT MIN(type) FROM objects WHERE type > v.x) FROM v WHERE v.x IS NOT NULL
             )
             SELECT x FROM v WHERE x IS NOT NULL LIMIT 500",
        )
        .map_err(|e| Error::sqlite("list object types", e))?;
    let rows = stmt
        .query_map([], |r| r.get(0))
        .map_err(|e| Error::sqlite("list object types", e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| Error::sqlite("list object types", e))
}

/// `GET /objects`.
pub fn list(admin: &Admin, req: &Request, viewer: &Viewer) -> Result<Response> {
    let started = std::time::Instant::now();
    let form = Form::parse(&req.query);
    let query = Query {
        object_type: form.get("type").map(String::from),
        search: form.get("q").map(String::from),
        uncertain: form.get("uncertain") == Some("1"),
        before: form.get("before").and_then(|v| v.parse().ok()),
    };
    let conn = admin.pool.get()?;
    // An exact id goes straight to its page.
    if let Some(s) = &query.search {
        if query.before.is_none() && queries::object(&conn, s)?.is_some() {
            return Ok(redirect(&format!("/objects/{}", url_encode(s))));
        }
    }
    let found = find(&conn, &query, SCAN_BUDGET)?;
    let types = types(&conn)?;
    drop(conn);

    let mut body = String::from("<h1>Objects</h1>");
    let _ = write!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"/objects\">\
         <label>Search<input name=\"q\" value=\"{}\" placeholder=\"cus_… or an email or key=value\"></label>\
         <label>Type<select name=\"type\"><option value=\"\">any</option>",
        esc(query.search.as_deref().unwrap_or(""))
    );
    for t in &types {
        let selected = if query.object_type.as_deref() == Some(t.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<option value=\"{v}\"{selected}>{v}</option>",
            v = esc(t)
        );
    }
    let _ = write!(
        body,
        "</select></label><label>Only uncertain<select name=\"uncertain\"><option value=\"\">no</option><option value=\"1\"{}>yes</option></select></label><button>Search</button></form>",
        if query.uncertain { " selected" } else { "" }
    );
    if query.search.is_some() {
        let _ = write!(body, "<p class=\"muted\">Showing {}.</p>", esc(found.how));
    }
    if found.items.is_empty() {
        html::no_matches(
            &mut body,
            "objects",
            found.limited,
            found.scanned as u64,
            "",
        );
    } else {
        body.push_str("<div class=\"scroll\"><table><thead><tr><th>Object</th><th>Type</th><th>Summary</th><th class=\"hide-s\">Updated (UTC)</th></tr></thead><tbody>");
        for i in &found.items {
            let _ = write!(
                body,
                "<tr><td class=\"id\"><a href=\"/objects/{}\">{}</a></td><td>{}</td><td>{}{}{}</td><td class=\"mono hide-s\">{}</td></tr>",
                url_encode(&i.id),
                esc(&i.id),
                esc(&i.object_type),
                esc(&i.summary),
                if i.deleted { " <span class=\"badge o-deleted\">deleted</span>" } else { "" },
                if i.uncertain { " <span class=\"badge flag\">uncertain</span>" } else { "" },
                html::time_cell(i.updated_at.div_euclid(1000)),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    body.push_str("<div class=\"pager\">");
    let link = |before: Option<i64>| {
        let mut parts = Vec::new();
        if let Some(t) = &query.object_type {
            parts.push(format!("type={}", url_encode(t)));
        }
        if let Some(s) = &query.search {
            parts.push(format!("q={}", url_encode(s)));
        }
        if query.uncertain {
            parts.push("uncertain=1".into());
        }
        if let Some(b) = before {
            parts.push(format!("before={b}"));
        }
        format!("/objects?{}", parts.join("&"))
    };
    if query.before.is_some() {
        let _ = write!(body, "<a href=\"{}\">← Newest</a>", esc(&link(None)));
    }
    if let Some(next) = found.next {
        let _ = write!(
            body,
            "<a href=\"{}\">{}</a>",
            esc(&link(Some(next))),
            if found.limited {
                "Search older objects →"
            } else {
                "Older →"
            }
        );
    }
    if found.limited {
        let _ = write!(
            body,
            "<span class=\"muted\">This search has no index: it tests objects newest first, at most {} or {} ms a page; this page examined {}.</span>",
            html::thousands(SCAN_BUDGET.rows as i64),
            SCAN_BUDGET.time.as_millis(),
            html::thousands(found.scanned as i64)
        );
    }
    body.push_str("</div>");
    built_in(&mut body, started);
    Ok(page(viewer, "objects", "Objects", &body))
}

/// `GET /objects/{id}`.
pub fn show(admin: &Admin, req: &Request, viewer: &Viewer, id: &str) -> Result<Response> {
    let conn = admin.pool.get()?;
    let full = queries::object(&conn, id)?;
    let timeline = queries::history(&conn, id, Order::NewestFirst, TIMELINE_LIMIT)?;
    let related = match &full {
        Some(f) if f.object_type == "customer" => related(&conn, id)?,
        _ => Vec::new(),
    };
    drop(conn);
    if full.is_none() && timeline.is_empty() {
        return Ok(page_response(
            404,
            html::message_page(
                "Not in the mirror",
                "No mirrored object and no stored event has this id.",
            ),
        ));
    }
    let form = Form::parse(&req.query);
    let mut body = String::new();
    let _ = write!(body, "<h1>{}</h1>", esc(id));
    if form.get("done") == Some("rebuilt") {
        let _ = write!(
            body,
            "<p class=\"warn\">Rebuilt from {} stored event(s).</p>",
            esc(form.get("n").unwrap_or("?"))
        );
    }
    match &full {
        Some(f) => {
            let data: serde_json::Value = serde_json::from_str(&f.data).unwrap_or_default();
            let text = |path: &[&str]| -> Option<String> {
                let mut v = &data;
                for p in path {
                    v = v.get(p)?;
                }
                match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                }
            };
            let _ = write!(
                body,
                "<p><strong>{}</strong> {}{}</p>",
                esc(&f.object_type),
                if f.deleted {
                    "<span class=\"badge o-deleted\">deleted</span> "
                } else {
                    ""
                },
                if f.uncertain {
                    "<span class=\"badge flag\">uncertain</span>"
                } else {
                    ""
                }
            );
            if f.uncertain {
                body.push_str("<p class=\"warn\">Two events about this object came in the same second with different data and nothing showed their order: the last arrival won. Compare with Stripe's dashboard.</p>");
            }
            body.push_str("<div class=\"panel\"><dl class=\"kv\">");
            let mut fact = |label: &str, value: String| {
                let _ = write!(body, "<dt>{}</dt><dd>{value}</dd>", esc(label));
            };
            for (label, path) in [
                ("status", &["status"][..]),
                ("name", &["name"]),
                ("email", &["email"]),
                ("customer email", &["customer_email"]),
                ("checkout email", &["customer_details", "email"]),
                ("billing email", &["billing_details", "email"]),
                ("description", &["description"]),
                ("amount", &["amount"]),
                ("amount due", &["amount_due"]),
                ("amount paid", &["amount_paid"]),
                ("amount total", &["amount_total"]),
                ("currency", &["currency"]),
            ] {
                if let Some(v) = text(path) {
                    fact(label, esc(&v).to_string());
                }
            }
            for (label, key) in [
                ("customer", "customer"),
                ("subscription", "subscription"),
                ("invoice", "invoice"),
                ("payment intent", "payment_intent"),
                ("latest charge", "latest_charge"),
                ("charge", "charge"),
            ] {
                if let Some(v) = text(&[key]) {
                    let shown = match html::id_link(&v) {
                        Some(href) => format!("<a href=\"{}\">{}</a>", esc(&href), esc(&v)),
                        None => esc(&v).to_string(),
                    };
                    fact(label, shown);
                }
            }
            if let Some(serde_json::Value::Object(meta)) = data.get("metadata") {
                if !meta.is_empty() {
                    let mut shown = String::new();
                    for (k, v) in meta {
                        let v = v.as_str().map(String::from).unwrap_or_else(|| v.to_string());
                        let _ = write!(shown, "<span class=\"mono\">{}</span> = {}<br>", esc(k), esc(&v));
                    }
                    fact("metadata", shown);
                }
            }
            fact(
                "mode",
                match f.livemode {
                    Some(true) => "live",
                    Some(false) => "test",
                    None => "unknown",
                }
                .into(),
            );
            if let Some(a) = &f.account {
                fact("account", esc(a).to_string());
            }
            fact(
                "source",
                stripe_panel::source_fact(&f.source, f.k_created),
            );
            if let Some(e) = &f.event_id {
                fact(
                    "state from",
                    format!(
                        "<a href=\"/events/{}\">{}</a> (event time {})",
                        url_encode(e),
                        esc(e),
                        f.k_created.map(format_utc).unwrap_or_default()
                    ),
                );
            }
            if let Some(at) = f.deleted_at {
                fact("deleted at", format_utc(at));
            }
            fact("first seen", html::time_ms(f.first_seen));
            fact("updated", html::time_ms(f.updated_at));
            body.push_str("</dl></div>");
        }
        None => body.push_str(
            "<p class=\"warn\">Events name this object but the mirror holds no state for it (nothing to mirror, or it needs a rebuild).</p>",
        ),
    }
    let _ = write!(
        body,
        "<div class=\"actions\"><form method=\"post\" action=\"/objects/{id_url}/rebuild\">{}<button>Rebuild from its events</button></form>\
         {}<a href=\"/events?object={id_url}\">Search its events</a></div>\
         <p class=\"muted\">Rebuilding forgets the mirrored state and re-applies every stored event about the object, oldest first, then what was last fetched of it from Stripe's API.</p>",
        html::csrf_field(&viewer.csrf),
        stripe_panel::refetch_button(id, &viewer.csrf, admin.refetch, form.get("done")),
        id_url = url_encode(id)
    );

    // The timeline.
    let _ = write!(
        body,
        "<h2>Timeline ({} event{})</h2>",
        timeline.len(),
        if timeline.len() == 1 { "" } else { "s" }
    );
    if timeline.len() >= TIMELINE_LIMIT {
        let _ = write!(
            body,
            "<p class=\"muted\">Showing the newest {TIMELINE_LIMIT}; <a href=\"/events?object={}\">search them all</a>.</p>",
            url_encode(id)
        );
    }
    let held = full.as_ref().and_then(|f| f.event_id.clone());
    body.push_str("<div class=\"scroll\"><table><thead><tr><th>Event time (UTC)</th><th>Type</th><th>Decision</th><th class=\"hide-s\">Arrived</th><th class=\"hide-s\">Deliveries</th><th></th></tr></thead><tbody>");
    for e in &timeline {
        let holds = held.as_deref() == Some(e.id.as_str());
        let _ = write!(
            body,
            "<tr{}><td class=\"mono\"><a href=\"/events/{id_url}\">{}</a>{}</td><td>{}</td><td>{}</td><td class=\"mono hide-s\">{}</td><td class=\"hide-s\">{}</td>\
             <td><form method=\"post\" action=\"/events/{id_url}/replay\" class=\"inline\">{}<button class=\"secondary\">Replay</button></form></td></tr>",
            if holds { " class=\"held\"" } else { "" },
            html::time_cell(e.created),
            if holds { " <span class=\"badge o-applied\">held</span>" } else { "" },
            esc(&e.event_type),
            html::decision_badge(e.decision.as_deref()),
            html::time_cell(e.received_at.div_euclid(1000)),
            e.deliveries,
            html::csrf_field(&viewer.csrf),
            id_url = url_encode(&e.id),
        );
    }
    body.push_str("</tbody></table></div>");

    if !related.is_empty() {
        body.push_str("<h2>This customer's objects</h2><div class=\"scroll\"><table><thead><tr><th>Object</th><th>Type</th><th>Summary</th></tr></thead><tbody>");
        for i in &related {
            let _ = write!(
                body,
                "<tr><td class=\"id\"><a href=\"/objects/{}\">{}</a></td><td>{}</td><td>{}</td></tr>",
                url_encode(&i.id),
                esc(&i.id),
                esc(&i.object_type),
                esc(&i.summary)
            );
        }
        body.push_str("</tbody></table></div>");
    }
    if let Some(f) = &full {
        let _ = write!(
            body,
            "<h2>Current state</h2><pre class=\"json\">{}</pre>",
            html::json_pretty(&f.data)
        );
    }
    Ok(page(viewer, "objects", id, &body))
}

/// A customer's subscriptions, invoices, payments... through the `objects_customer` index.
fn related(conn: &Connection, customer: &str) -> Result<Vec<Item>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS} FROM objects WHERE customer = ?1
             ORDER BY rowid DESC LIMIT 100"
        ))
        .map_err(|e| Error::sqlite("read related objects", e))?;
    let rows = stmt
        .query_map(params![customer], item)
        .map_err(|e| Error::sqlite("read related objects", e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| Error::sqlite("read related objects", e))
}

/// `POST /objects/{id}/rebuild` (CSRF already checked): re-derives the object through the writer.
pub fn rebuild(admin: &Admin, id: &str) -> Result<Response> {
    let object_id = id.to_string();
    let n = admin
        .writer
        .run(move |conn| crate::mirror::replay::rebuild_object(conn, &object_id))?;
    log::info!("admin rebuilt object={id} events={n}");
    Ok(
        redirect(&format!("/objects/{}?done=rebuilt&n={n}", url_encode(id)))
            .with_log(format!("admin=rebuild object={id} events={n}")),
    )
}
