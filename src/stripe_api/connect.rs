//! `connect`: creates the webhook endpoint in Stripe that points at this inbox: the one write the
//! inbox makes in Stripe, and so the one that must be safe to retry.
//!
//! In steps:
//! 1. Check the URL (`https://`, or `http://` with a warning: Stripe takes those in test mode) and
//!    the event types (those the mirror needs and the destinations forward, [`enabled_events`],
//!    or the caller's).
//! 2. List the existing endpoints (`GET /v1/webhook_endpoints`).
//! 3. Decide: an unanswered earlier request for this URL with the same parameters, less than 24 h
//!    old (Stripe keeps idempotency keys at least that long), is sent again with its stored key, so
//!    that Stripe replays its answer, signing secret included, if it had created the endpoint.
//!    Otherwise an endpoint already there for this URL is a refusal: a second one would deliver
//!    every event twice. Otherwise a new key is chosen and stored (through the writer) before the
//!    first attempt.
//! 4. `POST /v1/webhook_endpoints` with that key; the client retries with the same key.
//! 5. Record the outcome. A 2xx records the endpoint's id (not the secret: it goes to the operator
//!    and into the config, never into the database). An error answer from Stripe records that
//!    error, so the next run is a new logical request with a new key. No answer at all leaves the
//!    request open: running `connect` again re-sends the same key.

use std::time::Instant;

use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{new_idempotency_key, Call, STRIPE_VERSION};
use super::StripeApi;
use crate::error::{Error, Result};
use crate::event::types::matches;
use crate::ops::Progress;
use crate::store;
use crate::time::now_ms;

/// How long Stripe surely keeps an idempotency key.
const KEY_LIFETIME_MS: i64 = 24 * 3600 * 1000;

/// The event types the mirror needs: every event about the types with a typed view (and disputes,
/// which it mirrors with a lifecycle), as Stripe's event list names them.
pub const MIRROR_EVENTS: &[&str] = &[
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "invoice.created",
    "invoice.updated",
    "invoice.deleted",
    "invoice.finalized",
    "invoice.finalization_failed",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "invoice.marked_uncollectible",
    "invoice.overdue",
    "invoice.sent",
    "invoice.voided",
    "invoice.will_be_due",
    "payment_intent.created",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "payment_intent.amount_capturable_updated",
    "payment_intent.partially_funded",
    "charge.succeeded",
    "charge.failed",
    "charge.pending",
    "charge.captured",
    "charge.expired",
    "charge.updated",
    "charge.refunded",
    "charge.refund.updated",
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
    "refund.created",
    "refund.updated",
    "refund.failed",
    "checkout.session.completed",
    "checkout.session.expired",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "product.created",
    "product.updated",
    "product.deleted",
    "price.created",
    "price.updated",
    "price.deleted",
];

/// Other event types Stripe sends, which a destination's pattern may ask for (Stripe's API takes
/// exact names or `*`, so patterns are expanded against this list and [`MIRROR_EVENTS`]).
pub const OTHER_EVENTS: &[&str] = &[
    "customer.discount.created",
    "customer.discount.updated",
    "customer.discount.deleted",
    "customer.source.created",
    "customer.source.updated",
    "customer.source.deleted",
    "customer.source.expiring",
    "customer.tax_id.created",
    "customer.tax_id.updated",
    "customer.tax_id.deleted",
    "subscription_schedule.aborted",
    "subscription_schedule.canceled",
    "subscription_schedule.completed",
    "subscription_schedule.created",
    "subscription_schedule.expiring",
    "subscription_schedule.released",
    "subscription_schedule.updated",
    "invoice.upcoming",
    "invoice_payment.paid",
    "invoiceitem.created",
    "invoiceitem.deleted",
    "plan.created",
    "plan.updated",
    "plan.deleted",
    "coupon.created",
    "coupon.updated",
    "coupon.deleted",
    "promotion_code.created",
    "promotion_code.updated",
    "credit_note.created",
    "credit_note.updated",
    "credit_note.voided",
];

/// The event types the endpoint is subscribed to: what the mirror needs, plus every known type a
/// destination's pattern matches (`*` alone subscribes to everything). This is the hook
/// forwarding fills through [`StripeApi::destination_patterns`].
pub fn enabled_events(destination_patterns: &[String]) -> Vec<String> {
    if destination_patterns.iter().any(|p| p.trim() == "*") {
        return vec!["*".to_owned()];
    }
    let mut all: Vec<String> = MIRROR_EVENTS.iter().map(|t| (*t).to_owned()).collect();
    for t in MIRROR_EVENTS.iter().chain(OTHER_EVENTS) {
        if destination_patterns.iter().any(|p| matches(p.trim(), t)) && !all.iter().any(|a| a == t)
        {
            all.push((*t).to_owned());
        }
    }
    all
}

/// What `connect` did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectReport {
    pub endpoint_id: String,
    pub url: String,
    /// The signing secret (`whsec_...`): Stripe shows it once.
    pub secret: String,
    pub events: Vec<String>,
    pub api_version: String,
    /// The answer was Stripe's replay of an earlier attempt whose answer was lost.
    pub replayed: bool,
    /// Times the request was sent in this run.
    pub attempts: u32,
    /// `[webhook] secrets_env`: where the secret goes.
    pub secrets_env: String,
    /// Said to the operator before anything else (an `http://` URL).
    pub warnings: Vec<String>,
    pub seconds: f64,
}

/// A stored request (`connect_requests`).
struct Stored {
    key: String,
    params: String,
    created_at: i64,
    outcome: Option<String>,
}

/// Creates the endpoint (see the module doc).
pub fn run(
    api: &StripeApi,
    url: &str,
    events: Option<Vec<String>>,
    progress: &mut dyn Progress,
) -> Result<ConnectReport> {
    let started = Instant::now();
    // 1. The URL and the events.
    let mut report = ConnectReport {
        url: url.to_owned(),
        api_version: STRIPE_VERSION.to_owned(),
        secrets_env: api.secrets_env.clone(),
        ..ConnectReport::default()
    };
    check_url(url, &mut report.warnings)?;
    let events = match events {
        Some(list) if !list.is_empty() => list,
        _ => enabled_events(&api.destination_patterns),
    };
    for e in &events {
        let ok = e == "*"
            || (!e.is_empty()
                && e.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_'
                }));
        if !ok {
            return Err(Error::usage(
                format!("--events: {e:?} is not an event type (like invoice.paid) or *"),
                "stripe-inbox connect --help",
            ));
        }
    }
    report.events = events.clone();
    let mut form: Vec<(String, String)> = vec![
        ("url".into(), url.to_owned()),
        ("api_version".into(), STRIPE_VERSION.to_owned()),
        ("description".into(), "stripe-inbox".into()),
    ];
    for (i, e) in events.iter().enumerate() {
        form.push((format!("enabled_events[{i}]"), e.clone()));
    }
    let params = form
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");

    // 2. What is there already.
    progress.note("listing webhook endpoints");
    let existing = existing_endpoints(api, url)?;
    let stored = read_stored(api, url)?;

    // 3. Decide which key, if any.
    let now = now_ms();
    let resend = stored.filter(|s| {
        s.outcome.is_none() && s.params == params && now - s.created_at < KEY_LIFETIME_MS
    });
    let key = match resend {
        Some(s) => {
            log::info!("stripe: connect: sending the unanswered request for {url} again, same key");
            s.key
        }
        None => {
            if let Some(ids) = (!existing.is_empty()).then(|| existing.join(", ")) {
                return Err(Error::refused(
                    format!("a webhook endpoint for {url} exists already in Stripe: {ids}"),
                    "use its signing secret (Stripe's Dashboard, Developers → Webhooks, the endpoint, \"Reveal\"), or delete it there and run connect again",
                ));
            }
            let key = new_idempotency_key()?;
            let (u, k, p) = (url.to_owned(), key.clone(), params.clone());
            api.writer.run(move |conn| {
                conn.execute(
                    "INSERT INTO connect_requests (url, idempotency_key, params, created_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (url) DO UPDATE SET idempotency_key = excluded.idempotency_key,
                         params = excluded.params, created_at = excluded.created_at,
                         endpoint_id = NULL, outcome = NULL",
                    rusqlite::params![u, k, p, now],
                )
                .map_err(|e| Error::sqlite("store the connect request's idempotency key", e))?;
                Ok(())
            })?;
            key
        }
    };

    // 4. The request.
    progress.note("creating the webhook endpoint");
    let mut call = Call::post("/v1/webhook_endpoints", form);
    call.idempotency_key = Some(key);
    let answer = match api.client.send(&call) {
        Ok(answer) => answer,
        Err(Error::Stripe(e)) => {
            // 5. An answer from Stripe is final for this key; no answer leaves it open.
            if e.status.is_some() {
                record(api, url, None, Some(e.to_string()))?;
            }
            return Err(Error::Stripe(e));
        }
        Err(e) => return Err(e),
    };
    let endpoint: Value = serde_json::from_str(&answer.body).map_err(|e| Error::Json {
        what: "read the created webhook endpoint".into(),
        err: e,
    })?;
    let field = |name: &str| {
        endpoint
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (Some(id), Some(secret)) = (field("id"), field("secret")) else {
        record(
            api,
            url,
            None,
            Some("the answer had no id or secret".into()),
        )?;
        return Err(Error::Json {
            what: "read the created webhook endpoint".into(),
            err: serde::de::Error::custom("no id or no secret in the answer"),
        });
    };
    if answer.replayed && !existing.is_empty() && !existing.contains(&id) {
        record(
            api,
            url,
            None,
            Some(format!("replayed {id}, which no longer exists")),
        )?;
        return Err(Error::refused(
            format!("Stripe replayed the earlier answer, endpoint {id}, which no longer exists (it was deleted), while {} exists for {url}", existing.join(", ")),
            "use the existing endpoint's signing secret from Stripe's Dashboard, or delete it and run connect again",
        ));
    }
    record(api, url, Some(id.clone()), Some("created".into()))?;
    report.endpoint_id = id;
    report.secret = secret;
    report.replayed = answer.replayed;
    report.attempts = answer.attempts;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn check_url(url: &str, warnings: &mut Vec<String>) -> Result<()> {
    let usage = |why: &str| {
        Error::usage(
            format!("--url {url:?}: {why}"),
            "stripe-inbox connect --url https://shop.example/webhooks/stripe",
        )
    };
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let Some(rest) = url.strip_prefix("http://") {
        warnings.push(format!(
            "{url} is not https: Stripe delivers to http:// only in test mode, and live-mode endpoints need HTTPS with a valid certificate"
        ));
        rest
    } else {
        return Err(usage("expected an https:// URL"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || url.chars().any(char::is_whitespace) {
        return Err(usage("expected https://host/path"));
    }
    Ok(())
}

/// The ids of the endpoints whose URL is `url`.
fn existing_endpoints(api: &StripeApi, url: &str) -> Result<Vec<String>> {
    let call = Call::get("/v1/webhook_endpoints");
    let mut after: Option<String> = None;
    let mut found = Vec::new();
    loop {
        let page = api.client.list(&call, after.as_deref())?;
        for raw in &page.data {
            let e: Value = serde_json::from_str(raw.get()).map_err(|e| Error::Json {
                what: "read a listed webhook endpoint".into(),
                err: e,
            })?;
            let id = e.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
            if e.get("url").and_then(Value::as_str) == Some(url) {
                found.push(id.clone());
            }
            after = Some(id);
        }
        if !page.has_more || page.data.is_empty() {
            return Ok(found);
        }
    }
}

fn read_stored(api: &StripeApi, url: &str) -> Result<Option<Stored>> {
    let reader = store::open_read_only(&api.database)?;
    reader
        .query_row(
            "SELECT idempotency_key, params, created_at, outcome FROM connect_requests
             WHERE url = ?1",
            [url],
            |r| {
                Ok(Stored {
                    key: r.get(0)?,
                    params: r.get(1)?,
                    created_at: r.get(2)?,
                    outcome: r.get(3)?,
                })
            },
        )
        .optional()
        .map_err(|e| Error::sqlite("read the stored connect request", e))
}

fn record(
    api: &StripeApi,
    url: &str,
    endpoint_id: Option<String>,
    outcome: Option<String>,
) -> Result<()> {
    let url = url.to_owned();
    api.writer.run(move |conn| {
        conn.execute(
            "UPDATE connect_requests SET endpoint_id = ?2, outcome = ?3 WHERE url = ?1",
            rusqlite::params![url, endpoint_id, outcome],
        )
        .map_err(|e| Error::sqlite("record the connect outcome", e))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_from_the_mirror_and_the_destinations() {
        let base = enabled_events(&[]);
        assert_eq!(base.len(), MIRROR_EVENTS.len());
        assert!(base.contains(&"customer.subscription.deleted".to_owned()));
        let more = enabled_events(&["coupon.*".into(), "invoice.*".into()]);
        assert!(more.contains(&"coupon.deleted".to_owned()));
        assert!(more.contains(&"invoice.upcoming".to_owned()));
        assert_eq!(more.iter().filter(|e| *e == "invoice.paid").count(), 1);
        assert_eq!(enabled_events(&["*".into()]), ["*"]);
        let mut warnings = Vec::new();
        check_url("https://shop.example/webhooks/stripe", &mut warnings).unwrap();
        assert!(warnings.is_empty());
        check_url("http://127.0.0.1:8080/webhooks/stripe", &mut warnings).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(check_url("ftp://x", &mut warnings).is_err());
        assert!(check_url("https:///x", &mut warnings).is_err());
    }
}
