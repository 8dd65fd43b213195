//! Realistic event streams for the projection, built from Stripe's own fixture objects, and the
//! small harness that feeds them through the real store path ([`store_event`]).
//!
//! Test support, compiled only for tests and the `testkit` feature (the integration tests and the
//! benchmarks enable it), never into the release binary. Each stream is a story
//! in the order Stripe produced it (checkout, subscription life, invoice finalisation, customer
//! edits, catalog changes, a dispute), with `previous_attributes` computed from the actual change
//! the way Stripe builds them: old values of the changed top-level keys, changed keys only inside
//! hashes, whole arrays. Several events of one object share a second on purpose. One stream has
//! a conflict that no rule can decide (an event was never delivered).
//!
//! It deliberately holds no assertions: the property and unit tests in `project.rs` do.

use std::collections::BTreeMap;

use rusqlite::Connection;
use serde_json::{json, Map, Value};

use crate::error::Result;
use crate::event::{envelope, testevent};
use crate::ingest::store::{store_event, Effects, Ingest, Outcome, Source};
use crate::mirror::{self, Decision};

/// Base second of every stream (2025-10-09).
pub const T: i64 = 1_760_000_000;
const DAY: i64 = 86_400;

/// One event as Stripe delivers it.
pub struct StreamEvent {
    pub id: String,
    pub event_type: String,
    /// `event.created` (for thin events, the second their ISO timestamp names).
    pub created: i64,
    /// The raw body, pretty-printed like Stripe's.
    pub body: String,
    /// `body`, parsed once.
    pub envelope: Value,
    /// Where `data.object` sits in `body`, found once.
    object_span: Option<(usize, usize)>,
}

/// Events in the order Stripe produced them.
pub struct Stream {
    pub name: &'static str,
    pub events: Vec<StreamEvent>,
    /// Objects whose last second holds a conflict that nothing can decide: they must end up
    /// `uncertain`, whatever the delivery order.
    pub undecidable: Vec<&'static str>,
}

/// Every stream.
pub fn all() -> Vec<Stream> {
    vec![
        checkout(),
        subscription(),
        invoice(),
        customer(),
        catalog(),
        dispute(),
        customer_conflict(),
    ]
}

/// One example object of `object_type` from Stripe's fixtures.
///
/// # Panics
/// When the fixtures have no such object type.
pub fn fixture(object_type: &str) -> Value {
    testevent::fixture(object_type).unwrap_or_else(|| panic!("no fixture object {object_type}"))
}

/// Builds a stream event by event.
pub struct Builder {
    tag: &'static str,
    events: Vec<StreamEvent>,
}

impl Builder {
    pub fn new(tag: &'static str) -> Builder {
        Builder {
            tag,
            events: Vec::new(),
        }
    }

    /// An event carrying `object` as it is now, without `previous_attributes`.
    pub fn emit(&mut self, event_type: &str, created: i64, object: &Value) {
        self.emit_with(event_type, created, object, None);
    }

    /// Changes `object`, then emits it; a `*.updated` event carries the change's
    /// `previous_attributes`. Changing an object without calling this is an event that was
    /// never delivered.
    pub fn change(
        &mut self,
        event_type: &str,
        created: i64,
        object: &mut Value,
        change: impl FnOnce(&mut Value),
    ) {
        let old = object.clone();
        change(object);
        let prev = if event_type.ends_with(".updated") {
            previous_attributes(&old, object)
        } else {
            None
        };
        self.emit_with(event_type, created, object, prev.as_ref());
    }

    /// A thin (v2) event notification about `related_id`.
    pub fn thin(&mut self, event_type: &str, created: i64, related_id: &str) {
        let id = self.next_id();
        let body = serde_json::to_string_pretty(&json!({
            "id": id,
            "object": "v2.core.event",
            "type": event_type,
            "created": "2025-10-09T09:06:40.123456789Z",
            "livemode": false,
            "related_object": {"id": related_id, "type": "billing.meter", "url": "/v1/billing/meters/x"},
        }))
        .unwrap_or_default();
        self.events
            .push(StreamEvent::new(id, event_type, created, body));
    }

    pub fn build(self, name: &'static str, undecidable: Vec<&'static str>) -> Stream {
        Stream {
            name,
            events: self.events,
            undecidable,
        }
    }

    /// An event carrying `object` with the given `previous_attributes`, for events Stripe sends
    /// alongside another one (an `invoice.updated` next to `invoice.finalized`).
    pub fn emit_with(
        &mut self,
        event_type: &str,
        created: i64,
        object: &Value,
        prev: Option<&Value>,
    ) {
        let id = self.next_id();
        // Stripe pretty-prints with two spaces; data.object sits four deep.
        let raw = serde_json::to_string_pretty(object)
            .unwrap_or_default()
            .replace('\n', "\n    ");
        let body = event_body(&id, event_type, created, &raw, prev);
        self.events
            .push(StreamEvent::new(id, event_type, created, body));
    }

    fn next_id(&self) -> String {
        format!("evt_{}_{:02}", self.tag, self.events.len() + 1)
    }
}

impl StreamEvent {
    /// # Panics
    /// When `body` is not JSON.
    pub fn new(id: String, event_type: &str, created: i64, body: String) -> StreamEvent {
        let envelope = serde_json::from_str(&body).expect("stream event bodies are JSON");
        let object_span = mirror::data_object_raw(&body).map(|raw| {
            let start = raw.as_ptr() as usize - body.as_ptr() as usize;
            (start, start + raw.len())
        });
        StreamEvent {
            id,
            event_type: event_type.to_owned(),
            created,
            body,
            envelope,
            object_span,
        }
    }

    /// The exact text of `data.object` in `body`.
    pub fn object_raw(&self) -> Option<&str> {
        self.object_span.and_then(|(s, e)| self.body.get(s..e))
    }
}

/// A snapshot event body around `object_raw`, laid out like Stripe's.
pub fn event_body(
    id: &str,
    event_type: &str,
    created: i64,
    object_raw: &str,
    prev: Option<&Value>,
) -> String {
    let prev = prev.map_or_else(String::new, |p| {
        let text = serde_json::to_string_pretty(p)
            .unwrap_or_default()
            .replace('\n', "\n    ");
        format!(",\n    \"previous_attributes\": {text}")
    });
    format!(
        "{{\n  \"id\": \"{id}\",\n  \"object\": \"event\",\n  \"api_version\": \"2025-09-30.clover\",\n  \
         \"created\": {created},\n  \"data\": {{\n    \"object\": {object_raw}{prev}\n  }},\n  \
         \"livemode\": false,\n  \"pending_webhooks\": 1,\n  \"request\": {{\n    \"id\": null,\n    \
         \"idempotency_key\": null\n  }},\n  \"type\": \"{event_type}\"\n}}\n"
    )
}

/// `previous_attributes` for a change from `old` to `new`, as Stripe builds them: the old value
/// of each changed top-level key, only the changed keys inside hashes (an added key is `null`),
/// whole arrays. `None` when nothing changed.
pub fn previous_attributes(old: &Value, new: &Value) -> Option<Value> {
    let diff = diff_hash(old.as_object()?, new.as_object()?);
    (!diff.is_empty()).then_some(Value::Object(diff))
}

fn diff_hash(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut prev = Map::new();
    for (key, was) in old {
        match (was, new.get(key)) {
            (_, Some(now)) if now == was => {}
            (Value::Object(o), Some(Value::Object(n))) => {
                prev.insert(key.clone(), Value::Object(diff_hash(o, n)));
            }
            _ => {
                prev.insert(key.clone(), was.clone());
            }
        }
    }
    for key in new.keys().filter(|k| !old.contains_key(*k)) {
        prev.insert(key.clone(), Value::Null);
    }
    prev
}

/// Stores one delivery through the real store path ([`store_event`]), as the writer does: a known
/// event id is a duplicate (`None`); otherwise the decision the mirror took.
///
/// # Panics
/// When the event's body is not an event (stream bodies are built here, so that is a bug).
pub fn deliver(
    conn: &Connection,
    event: &StreamEvent,
    received_at_ms: i64,
) -> Result<Option<Decision>> {
    deliver_as(conn, event, received_at_ms, false)
}

/// [`deliver`] with the whole `data.object` already parsed, as the webhook endpoint hands over an
/// event it expects to meet a same-second tie (`ingest::tie_ahead`).
pub fn deliver_whole(
    conn: &Connection,
    event: &StreamEvent,
    received_at_ms: i64,
) -> Result<Option<Decision>> {
    deliver_as(conn, event, received_at_ms, true)
}

fn deliver_as(
    conn: &Connection,
    event: &StreamEvent,
    received_at_ms: i64,
    whole: bool,
) -> Result<Option<Decision>> {
    let body = event.body.as_bytes().to_vec();
    let mut envelope =
        envelope::parse(&body).unwrap_or_else(|e| panic!("stream event {}: {e}", event.id));
    if whole {
        envelope.parse_whole_object(&body);
    }
    let ingest = Ingest {
        envelope,
        body,
        secret_index: None,
        received_at_ms,
        source: Source::Webhook,
    };
    Ok(match store_event(conn, &ingest, &Effects::default())? {
        Outcome::Stored { decision, .. } => Some(decision),
        Outcome::Duplicate { .. } => None,
    })
}

/// The mirror as sorted text: every column that must converge whatever the delivery order
/// (`first_seen`, `updated_at` and `k_seq` record arrival and are left out). One line per
/// object: `id type k= rank= del= unc= ev= [live=1] [acct=] [src=refetch|backfill] data` (newlines
/// in data as `\\n`).
pub fn dump(conn: &Connection) -> rusqlite::Result<String> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, type, k_created, k_rank, deleted, deleted_at, uncertain, event_id, livemode,
                account, data, source
         FROM objects ORDER BY id",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = String::new();
    let opt = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let otype: String = r.get(1)?;
        let deleted: bool = r.get(4)?;
        let deleted_at: Option<i64> = r.get(5)?;
        let del = match (deleted, deleted_at) {
            (true, Some(at)) => format!("1@{at}"),
            (d, _) => i64::from(d).to_string(),
        };
        let uncertain: i64 = r.get(6)?;
        let event_id: Option<String> = r.get(7)?;
        let live = match r.get::<_, Option<bool>>(8)? {
            Some(true) => " live=1",
            _ => "",
        };
        let acct = r
            .get::<_, Option<String>>(9)?
            .map_or_else(String::new, |a| format!(" acct={a}"));
        let source: String = r.get(11)?;
        let src = if source == "event" {
            String::new()
        } else {
            format!(" src={source}")
        };
        // Raw newlines are escaped so that each object stays on one line.
        let data = r.get::<_, String>(10)?.replace('\n', "\\n");
        out.push_str(&format!(
            "{id} {otype} k={} rank={} del={del} unc={uncertain} ev={}{live}{acct}{src} {data}\n",
            opt(r.get(2)?),
            opt(r.get(3)?),
            event_id.as_deref().unwrap_or("-"),
        ));
    }
    Ok(out)
}

/// What a mirror equal to Stripe's API must agree on, per object: its data compared as JSON (the
/// API and webhooks lay the same object out differently), not as text.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiState {
    pub object_type: String,
    pub deleted: bool,
    pub data: Value,
    pub livemode: Option<bool>,
    pub uncertain: bool,
}

/// Every mirrored object's [`ApiState`], by id.
pub fn api_states(conn: &Connection) -> rusqlite::Result<BTreeMap<String, ApiState>> {
    let mut stmt =
        conn.prepare_cached("SELECT id, type, deleted, data, livemode, uncertain FROM objects")?;
    let rows = stmt.query_map([], |r| {
        let data: String = r.get(3)?;
        Ok((
            r.get::<_, String>(0)?,
            ApiState {
                object_type: r.get(1)?,
                deleted: r.get(2)?,
                data: serde_json::from_str(&data).unwrap_or(Value::Null),
                livemode: r.get(4)?,
                uncertain: r.get(5)?,
            },
        ))
    })?;
    rows.collect()
}

// ---------------------------------------------------------------------------------------------
// Streams.

/// A card checkout with 3-D Secure, then a full refund: checkout.session, payment_intent,
/// charge, refund, plus events that carry no object.
pub fn checkout() -> Stream {
    let mut b = Builder::new("co");
    let mut pi = fixture("payment_intent");
    let mut ch = fixture("charge");
    let mut cs = fixture("checkout.session");
    let mut re = fixture("refund");
    let (pi_id, ch_id) = (pi["id"].clone(), ch["id"].clone());
    pi["created"] = json!(T);
    pi["amount"] = json!(1099);
    pi["latest_charge"] = Value::Null;
    pi["next_action"] = Value::Null;
    pi["last_payment_error"] = Value::Null;
    pi["canceled_at"] = Value::Null;
    cs["created"] = json!(T);
    cs["amount_total"] = json!(1099);
    cs["amount_subtotal"] = json!(1099);
    cs["currency"] = json!("usd");
    ch["created"] = json!(T + 25);
    ch["amount"] = json!(1099);
    ch["amount_captured"] = json!(1099);
    ch["captured"] = json!(true);
    ch["payment_intent"] = pi_id.clone();
    ch["balance_transaction"] = Value::Null;
    re["created"] = json!(T + 3600);
    re["amount"] = json!(1099);
    re["charge"] = ch_id.clone();
    re["payment_intent"] = pi_id.clone();
    re["status"] = json!("pending");

    // The session's PaymentIntent is created and confirmed with 3-D Secure in the same second.
    b.emit("payment_intent.created", T, &pi);
    b.change("payment_intent.requires_action", T, &mut pi, |o| {
        o["status"] = json!("requires_action");
        o["next_action"] = json!({"type": "use_stripe_sdk"});
    });
    // 3-D Secure passes: the PI, its charge and the session complete together.
    b.change("payment_intent.succeeded", T + 25, &mut pi, |o| {
        o["status"] = json!("succeeded");
        o["amount_received"] = json!(1099);
        o["latest_charge"] = ch_id.clone();
        o["next_action"] = Value::Null;
    });
    b.emit("charge.succeeded", T + 25, &ch);
    b.change("charge.updated", T + 25, &mut ch, |o| {
        o["balance_transaction"] = json!("txn_1PgaxNB7WZ01zgkWEV3TLf40");
    });
    b.change("checkout.session.completed", T + 26, &mut cs, |o| {
        o["status"] = json!("complete");
        o["payment_status"] = json!("paid");
        o["customer"] = json!("cus_QXg1o8vcGmoR32");
        o["customer_details"]["email"] = json!("jenny@example.com");
    });
    // An hour later the shop refunds in full.
    b.change("charge.refunded", T + 3600, &mut ch, |o| {
        o["amount_refunded"] = json!(1099);
        o["refunded"] = json!(true);
    });
    b.emit("refund.created", T + 3600, &re);
    b.change("refund.updated", T + 3600, &mut re, |o| {
        o["status"] = json!("succeeded");
    });
    b.emit("charge.refund.updated", T + 3600, &re);
    b.change("charge.updated", T + 3600, &mut ch, |o| {
        o["metadata"] = json!({"refund_note": "customer request"});
    });
    // Events that carry no object to mirror.
    b.emit_with(
        "balance.available",
        T + 3601,
        &json!({"object": "balance", "available": [{"amount": 0, "currency": "usd"}], "livemode": false}),
        None,
    );
    b.thin(
        "v1.billing.meter.error_report_triggered",
        T + 3601,
        "mtr_123",
    );
    b.build("checkout", vec![])
}

/// A subscription created incomplete and paid in the same second, renewed, past due (with a
/// same-second metadata edit), then canceled (`customer.subscription.deleted`).
pub fn subscription() -> Stream {
    let mut b = Builder::new("sub");
    let mut sub = fixture("subscription");
    sub["created"] = json!(T);
    sub["start_date"] = json!(T);
    sub["billing_cycle_anchor"] = json!(T);
    sub["status"] = json!("incomplete");
    sub["cancel_at_period_end"] = json!(false);
    for key in [
        "cancel_at",
        "canceled_at",
        "ended_at",
        "trial_start",
        "trial_end",
    ] {
        sub[key] = Value::Null;
    }
    sub["latest_invoice"] = json!("in_1Pgc6tB7WZ01zgkWu9fdqL6I");
    set_period(&mut sub, T, T + 30 * DAY);

    b.emit("customer.subscription.created", T, &sub);
    b.change("customer.subscription.updated", T, &mut sub, |o| {
        o["status"] = json!("active");
    });
    // Renewal: the period moves on the subscription item (newer API versions).
    b.change(
        "customer.subscription.updated",
        T + 30 * DAY,
        &mut sub,
        |o| {
            set_period(o, T + 30 * DAY, T + 60 * DAY);
            o["latest_invoice"] = json!("in_1Pgc6tB7WZ01zgkWu9fdqL6J");
        },
    );
    // The renewal payment fails; the app tags the subscription in the same second.
    b.change(
        "customer.subscription.updated",
        T + 30 * DAY + 3600,
        &mut sub,
        |o| {
            o["status"] = json!("past_due");
        },
    );
    b.change(
        "customer.subscription.updated",
        T + 30 * DAY + 3600,
        &mut sub,
        |o| {
            o["metadata"] = json!({"dunning": "1"});
        },
    );
    // Dunning ends in cancellation: an update and the delete carry the same final state.
    b.change(
        "customer.subscription.updated",
        T + 40 * DAY,
        &mut sub,
        |o| {
            o["status"] = json!("canceled");
            o["canceled_at"] = json!(T + 40 * DAY);
            o["ended_at"] = json!(T + 40 * DAY);
        },
    );
    b.emit("customer.subscription.deleted", T + 40 * DAY, &sub);
    b.build("subscription", vec![])
}

/// Two invoices. One is created, edited, finalised and paid all in one second with the
/// `invoice.updated` events Stripe sends alongside (causal); the other has only
/// created / finalized / paid / payment_succeeded (lifecycle), finalised and paid together.
pub fn invoice() -> Stream {
    let mut b = Builder::new("inv");
    let mut inv = fixture("invoice");
    inv["created"] = json!(T);
    inv["status"] = json!("draft");
    inv["number"] = Value::Null;
    inv["hosted_invoice_url"] = Value::Null;
    inv["amount_paid"] = json!(0);
    inv["amount_remaining"] = json!(1000);
    let mut inv2 = inv.clone();
    inv2["id"] = json!("in_1Pgc6tB7WZ01zgkWu9fdqL6J");
    inv2["created"] = json!(T + 30 * DAY);
    inv2["billing_reason"] = json!("subscription_cycle");

    // A preview carries no id.
    let mut upcoming = inv.clone();
    if let Some(o) = upcoming.as_object_mut() {
        o.remove("id");
    }
    b.emit("invoice.upcoming", T - 3600, &upcoming);

    b.emit("invoice.created", T, &inv);
    b.change("invoice.updated", T, &mut inv, |o| {
        o["description"] = json!("Thanks for your order");
    });
    b.change("invoice.finalized", T, &mut inv, |o| {
        o["status"] = json!("open");
        o["number"] = json!("7FE1103-0001");
        o["hosted_invoice_url"] = json!("https://invoice.stripe.com/i/acct_1/test_1");
    });
    // Stripe's `invoice.updated` for the same change, with the previous values.
    let open = inv.clone();
    b.emit_with(
        "invoice.updated",
        T,
        &open,
        previous_attributes(&draft_of(&open), &open).as_ref(),
    );
    let before_paid = inv.clone();
    b.change("invoice.paid", T, &mut inv, |o| {
        o["status"] = json!("paid");
        o["amount_paid"] = json!(1000);
        o["amount_remaining"] = json!(0);
        o["attempted"] = json!(true);
        o["attempt_count"] = json!(1);
    });
    b.emit("invoice.payment_succeeded", T, &inv);
    b.emit_with(
        "invoice.updated",
        T,
        &inv,
        previous_attributes(&before_paid, &inv).as_ref(),
    );

    b.emit("invoice.created", T + 30 * DAY, &inv2);
    b.change("invoice.finalized", T + 30 * DAY + 3600, &mut inv2, |o| {
        o["status"] = json!("open");
        o["number"] = json!("7FE1103-0002");
    });
    b.change("invoice.paid", T + 30 * DAY + 3600, &mut inv2, |o| {
        o["status"] = json!("paid");
        o["amount_paid"] = json!(1000);
        o["amount_remaining"] = json!(0);
    });
    b.emit("invoice.payment_succeeded", T + 30 * DAY + 3600, &inv2);
    b.build("invoice", vec![])
}

/// A customer created and edited three times in its first second (one field twice), edited
/// twice more in a later second alongside a discount, then deleted.
pub fn customer() -> Stream {
    let mut b = Builder::new("cus");
    let mut cus = fixture("customer");
    let id = cus["id"].clone();
    cus["created"] = json!(T);
    cus["discount"] = Value::Null;

    b.emit("customer.created", T, &cus);
    b.change("customer.updated", T, &mut cus, |o| {
        o["name"] = json!("Jenny Rosen");
    });
    b.change("customer.updated", T, &mut cus, |o| {
        o["name"] = json!("Jenny R.");
    });
    b.change("customer.updated", T, &mut cus, |o| {
        o["email"] = json!("jenny@example.com");
    });
    b.change("customer.updated", T + 60, &mut cus, |o| {
        o["metadata"] = json!({"plan": "pro"});
    });
    b.change("customer.updated", T + 60, &mut cus, |o| {
        o["invoice_settings"]["default_payment_method"] = json!("pm_1Pgc75B7WZ01zgkWlHVgdEGJ");
    });
    let discount = json!({
        "id": "di_1Pgc7AB7WZ01zgkW0cbgW7Xs", "object": "discount", "customer": id,
        "coupon": {"id": "Z4OV52SU", "object": "coupon", "percent_off": 25.5},
        "start": T + 60, "end": null, "subscription": null,
    });
    b.emit("customer.discount.created", T + 60, &discount);
    b.emit("customer.deleted", T + 600, &cus);
    b.build("customer", vec![])
}

/// A product and its prices change over time; a coupon and a payment method are mirrored
/// generically.
pub fn catalog() -> Stream {
    let mut b = Builder::new("cat");
    let mut prod = fixture("product");
    let mut price = fixture("price");
    let mut coupon = fixture("coupon");
    let mut pm = fixture("payment_method");
    prod["created"] = json!(T);
    prod["updated"] = json!(T);
    price["created"] = json!(T);
    let mut price2 = price.clone();
    price2["id"] = json!("price_1PgafmB7WZ01zgkW02Hf9z6c");
    price2["created"] = json!(T + 20);
    price2["unit_amount"] = json!(2500);
    price2["unit_amount_decimal"] = json!("2500");
    coupon["created"] = json!(T);
    pm["created"] = json!(T);
    pm["customer"] = Value::Null;

    b.emit("product.created", T, &prod);
    b.emit("price.created", T, &price);
    b.emit("coupon.created", T, &coupon);
    b.change("product.updated", T + 10, &mut prod, |o| {
        o["name"] = json!("T-shirt (organic)");
        o["updated"] = json!(T + 10);
    });
    b.change("coupon.updated", T + 10, &mut coupon, |o| {
        o["name"] = json!("Autumn 25.5% off");
    });
    // A price change: the new price, the old one archived, the product pointed at the new one,
    // then tagged, all in one second.
    b.emit("price.created", T + 20, &price2);
    b.change("price.updated", T + 20, &mut price, |o| {
        o["active"] = json!(false);
    });
    b.change("product.updated", T + 20, &mut prod, |o| {
        o["default_price"] = price2["id"].clone();
        o["updated"] = json!(T + 20);
    });
    b.change("product.updated", T + 20, &mut prod, |o| {
        o["metadata"] = json!({"season": "fall"});
    });
    b.change("payment_method.attached", T + 30, &mut pm, |o| {
        o["customer"] = json!("cus_QXg1o8vcGmoR32");
    });
    b.change("payment_method.updated", T + 30, &mut pm, |o| {
        o["billing_details"]["name"] = json!("Jenny Rosen");
    });
    b.change("payment_method.detached", T + 90, &mut pm, |o| {
        o["customer"] = Value::Null;
    });
    b.emit("coupon.deleted", T + 100, &coupon);
    b.build("catalog", vec![])
}

/// A chargeback: created and funds withdrawn in the same second, evidence submitted, lost.
pub fn dispute() -> Stream {
    let mut b = Builder::new("dp");
    let mut dp = fixture("dispute");
    dp["created"] = json!(T);
    dp["status"] = json!("needs_response");
    dp["balance_transactions"] = json!([]);
    b.emit("charge.dispute.created", T, &dp);
    b.change("charge.dispute.funds_withdrawn", T, &mut dp, |o| {
        o["balance_transactions"] = json!([{"id": "txn_1Pgc72B7WZ01zgkWvf0o1yHT", "object": "balance_transaction", "amount": -1000}]);
    });
    b.change("charge.dispute.updated", T + DAY, &mut dp, |o| {
        o["status"] = json!("under_review");
        o["evidence"]["uncategorized_text"] = json!("Delivered, signed for.");
    });
    b.change("charge.dispute.closed", T + 20 * DAY, &mut dp, |o| {
        o["status"] = json!("lost");
    });
    b.build("dispute", vec![])
}

/// Two `customer.updated` in one second whose `previous_attributes` do not chain, because the
/// event between them was never delivered: the mirror cannot know which is newer.
pub fn customer_conflict() -> Stream {
    let mut b = Builder::new("unk");
    let mut cus = fixture("customer");
    cus["id"] = json!("cus_conflict");
    cus["created"] = json!(T);
    b.emit("customer.created", T, &cus);
    b.change("customer.updated", T + 10, &mut cus, |o| {
        o["name"] = json!("A");
    });
    // Lost: name "A" → "B".
    cus["name"] = json!("B");
    b.change("customer.updated", T + 10, &mut cus, |o| {
        o["name"] = json!("C");
    });
    b.build("customer_conflict", vec!["cus_conflict"])
}

/// Sets a subscription's period on its first item, where newer API versions keep it.
fn set_period(sub: &mut Value, start: i64, end: i64) {
    if let Some(item) = sub.pointer_mut("/items/data/0") {
        item["current_period_start"] = json!(start);
        item["current_period_end"] = json!(end);
    }
}

/// The draft an open invoice was finalised from.
fn draft_of(open: &Value) -> Value {
    let mut draft = open.clone();
    draft["status"] = json!("draft");
    draft["number"] = Value::Null;
    draft["hosted_invoice_url"] = Value::Null;
    draft
}
