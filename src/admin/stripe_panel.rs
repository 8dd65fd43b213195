//! What the admin shows of the Stripe client: on the dashboard the last reconcile and backfill
//! (when, what they found), the refetch queue and the last API errors ([`dashboard_section`]); on an
//! object's page where its state came from ([`source_fact`]) and a Refetch button
//! ([`refetch_button`], `POST /objects/{id}/refetch`, [`refetch`]), which queues the object for the
//! server's refetch worker. Reads through the pool; the one write goes to the writer.

use std::fmt::Write as _;

use rusqlite::{Connection, OptionalExtension};

use crate::admin::context::{redirect, Admin};
use crate::admin::html::{self, esc, url_encode};
use crate::error::{Error, Result};
use crate::http::Response;
use crate::mirror::fetched::{request_refetch, Reason, RefetchRequest};
use crate::stripe_api::catalog;
use crate::stripe_api::status::{self, ApiError, Run};
use crate::time::{format_utc, now_ms};

/// API errors the dashboard lists.
pub const ERRORS_SHOWN: usize = 5;

/// The dashboard's "Stripe API" section.
pub fn dashboard_section(conn: &Connection, enabled: bool) -> Result<String> {
    let s = status::read(conn, ERRORS_SHOWN)?;
    let mut body = String::from("<h2>Stripe API</h2>");
    if !enabled {
        body.push_str("<p class=\"muted\">Off: no API key. Set the environment variable named by <code>[stripe] api_key_env</code> to a restricted key to turn on reconcile, backfill and refetch.</p>");
    }
    if !enabled && s.backfill.is_none() && s.reconcile.is_none() && s.errors.is_empty() {
        return Ok(body);
    }
    body.push_str("<div class=\"panel\"><dl class=\"kv\">");
    let run = |label: &str, r: &Option<Run>, body: &mut String| {
        let text = match r {
            None => "never".to_owned(),
            Some(r) => {
                let when = match r.finished_at {
                    Some(at) => format!(
                        "{} (took {:.1} s)",
                        html::time_ms(at),
                        (at - r.started_at) as f64 / 1000.0
                    ),
                    None => format!("running since {}", html::time_ms(r.started_at)),
                };
                let class = if r.ok == Some(false) {
                    " class=\"bad\""
                } else {
                    ""
                };
                format!("{when}: <span{class}>{}</span>", esc(&r.summary))
            }
        };
        let _ = write!(body, "<dt>{}</dt><dd>{text}</dd>", esc(label));
    };
    run("last reconcile", &s.reconcile, &mut body);
    run("last backfill", &s.backfill, &mut body);
    if let Some(mark) = s.reconcile_mark {
        let _ = write!(
            body,
            "<dt>events read in full up to</dt><dd>{}</dd>",
            format_utc(mark)
        );
    }
    let _ = write!(
        body,
        "<dt>objects waiting for a refetch</dt><dd>{}</dd></dl></div>",
        s.refetch_queued
    );
    if !s.errors.is_empty() {
        let _ = write!(
            body,
            "<h2>Stripe API errors (last {})</h2><div class=\"scroll\"><table><thead><tr><th>When (UTC)</th><th>Request</th><th>Status</th><th>What Stripe said</th><th class=\"hide-s\">Request id</th></tr></thead><tbody>",
            s.errors.len()
        );
        for ApiError { at, error: e } in &s.errors {
            let kind: Vec<&str> = [&e.error_type, &e.code]
                .into_iter()
                .filter_map(|v| v.as_deref())
                .collect();
            let _ = write!(
                body,
                "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}{}</td><td class=\"mono hide-s\">{}</td></tr>",
                html::time_cell(at.div_euclid(1000)),
                esc(&e.request),
                e.status.map_or_else(|| "no answer".to_owned(), |s| s.to_string()),
                if kind.is_empty() {
                    String::new()
                } else {
                    format!("<span class=\"mono\">{}</span> ", esc(&kind.join("/")))
                },
                esc(&e.message),
                esc(e.request_id.as_deref().unwrap_or("")),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    Ok(body)
}

/// Where an object's state came from, for its page: `event`, or `refetch` / `backfill` with the
/// second the fetch began.
pub fn source_fact(source: &str, k_created: Option<i64>) -> String {
    match (source, k_created) {
        ("event", _) => "event".into(),
        (source, Some(at)) => format!(
            "{} <span class=\"muted\">(fetched from Stripe's API at {})</span>",
            esc(source),
            format_utc(at)
        ),
        (source, None) => esc(source).to_string(),
    }
}

/// The object page's Refetch button (and what a click did), or why there is none.
pub fn refetch_button(id: &str, csrf: &str, enabled: bool, done: Option<&str>) -> String {
    let mut out = String::new();
    if done == Some("refetch") {
        out.push_str("<p class=\"warn\">Queued: the server fetches it from Stripe within a second or two; reload to see it.</p>");
    }
    if enabled {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/objects/{}/refetch\">{}<button class=\"secondary\">Refetch from Stripe</button></form>",
            url_encode(id),
            html::csrf_field(csrf)
        );
    }
    out
}

/// `POST /objects/{id}/refetch` (CSRF already checked): queues the object for the refetch worker.
pub fn refetch(admin: &Admin, id: &str) -> Result<Response> {
    if !admin.refetch {
        return Ok(crate::admin::context::page_response(
            409,
            html::message_page(
                "No Stripe API key",
                "The server has no API key, so it cannot fetch objects from Stripe.",
            ),
        ));
    }
    let conn = admin.pool.get()?;
    let mirrored: Option<(String, Option<String>)> = conn
        .query_row(
            "SELECT type, account FROM objects WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| Error::sqlite("read object", e))?;
    drop(conn);
    let (object_type, account) = match mirrored {
        Some(m) => m,
        None => match catalog::by_id(id) {
            Some(kind) => (kind.object_type.to_owned(), None),
            None => return Ok(crate::admin::context::page_response(
                404,
                html::message_page(
                    "Cannot refetch",
                    "The object is not mirrored, and its id names no type this inbox can fetch.",
                ),
            )),
        },
    };
    let object_id = id.to_owned();
    admin.writer.run(move |conn| {
        let now = now_ms();
        let request = RefetchRequest {
            object_id: &object_id,
            object_type: &object_type,
            account: account.as_deref(),
            reason: Reason::Operator,
            not_before_ms: now,
            now_ms: now,
        };
        request_refetch(conn, &request).map_err(|e| Error::sqlite("queue a refetch", e))
    })?;
    log::info!("admin queued refetch object={id}");
    Ok(
        redirect(&format!("/objects/{}?done=refetch", url_encode(id)))
            .with_log(format!("admin=refetch object={id}")),
    )
}
