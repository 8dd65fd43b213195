//! What an event says about its object, before any state is compared: the projection's
//! [`Input`], built from an envelope; how the event type relates to the object's life ([`Kind`]);
//! and the object's id and type ([`Shape`], [`classify`]). Pure.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

use crate::event::envelope::Envelope;
use crate::event::types::object_type_for_event;

/// One new event, as the writer thread hands it over.
pub struct Input<'a> {
    pub event_id: &'a str,
    /// For example `customer.subscription.updated`.
    pub event_type: &'a str,
    /// `event.created`, unix seconds.
    pub created: i64,
    /// Arrival order of this event in the events table (strictly increasing).
    pub seq: i64,
    pub account: Option<&'a str>,
    pub livemode: Option<bool>,
    /// `object == "v2.core.event"`: never projected.
    pub thin: bool,
    /// `event.data.object`, parsed: whole, or (from an envelope) only its
    /// [`HEAD_MEMBERS`](crate::event::envelope::HEAD_MEMBERS), when `object_head` says so.
    pub object: Option<&'a Value>,
    /// `object` holds only the head members: a tie, which compares whole states, parses the
    /// object from `object_raw` (`whole_object`).
    pub object_head: bool,
    /// The exact JSON text of `event.data.object` (stored in `objects.data`); when `None`, the
    /// parsed object is serialised again ([`super::data_object_raw`] finds it in a body).
    pub object_raw: Option<&'a str>,
    /// Where `object_raw` lies in the event's stored body (byte offsets), so that the mirror can
    /// refer to it there instead of copying it; `None` when it is not known.
    pub object_span: Option<(usize, usize)>,
    pub previous_attributes: Option<&'a Value>,
    /// The raw body as it is stored (empty when the caller has none).
    pub body: &'a [u8],
    /// The whole `data.object`, already parsed by the connection thread because a tie was
    /// likely ([`Envelope::whole_object`]); a tie uses it instead of parsing `object_raw`.
    pub whole: Option<&'a Arc<Value>>,
}

/// Builds the projection's input for an event: its envelope, its raw body and its arrival `seq`.
pub fn input<'a>(env: &'a Envelope, body: &'a [u8], seq: i64) -> Input<'a> {
    Input {
        event_id: &env.id,
        event_type: &env.event_type,
        created: env.created,
        seq,
        account: env.account.as_deref(),
        livemode: env.livemode,
        thin: env.thin,
        object: env.object.as_ref(),
        object_head: true,
        object_raw: env.object_text(body),
        object_span: env.object_text(body).and(env.object_span),
        previous_attributes: env.previous_attributes.as_ref(),
        body,
        whole: env.whole_object.as_ref(),
    }
}

/// `*.deleted` event types whose object is *not* gone from Stripe's API afterwards (rule 2).
///
/// Every `*.deleted` type in Stripe's event list was checked against "does a GET of the object
/// still return it?": `customer`, `customer.discount`, `customer.source`, `customer.tax_id`,
/// `invoice` (a draft), `invoiceitem`, `product`, `price`, `plan`, `coupon`, `person`,
/// `account.external_account`, `test_helpers.test_clock` (and the legacy `sku`, `recipient`) are
/// gone: the GET answers `deleted: true` or 404. Only a canceled subscription lives on: `retrieve`
/// returns it with `status: canceled`. A type Stripe adds later counts as gone until listed here.
pub(super) const LIVES_ON_AFTER_DELETE: &[&str] = &["customer.subscription.deleted"];

/// How an event type relates to its object's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Created,
    /// The object is gone from Stripe: a sticky tombstone.
    Deleted,
    /// The end of the object's life, but it is still retrievable (a canceled subscription): its
    /// state wins its second like a delete, without the tombstone.
    Final,
    Other,
}

impl Kind {
    pub(super) fn of(event_type: &str) -> Kind {
        if event_type.ends_with(".created") {
            Kind::Created
        } else if LIVES_ON_AFTER_DELETE.contains(&event_type) {
            Kind::Final
        } else if event_type.ends_with(".deleted") {
            Kind::Deleted
        } else {
            Kind::Other
        }
    }
}

/// What an event says about its object, before any state is compared.
pub(super) struct Shape<'v> {
    pub(super) id: &'v str,
    pub(super) otype: &'v str,
    pub(super) kind: Kind,
    /// `deleted: true`: a stub without state, accepted on delete events only.
    pub(super) stub: bool,
}

pub(super) fn classify<'v>(event_type: &'v str, object: &'v Value) -> Option<Shape<'v>> {
    let obj = object.as_object()?;
    let id = obj.get("id")?.as_str().filter(|id| !id.is_empty())?;
    let otype = match obj.get("object").and_then(Value::as_str) {
        Some(t) => t,
        None => object_type_for_event(event_type)?,
    };
    let kind = Kind::of(event_type);
    let stub = obj.get("deleted").and_then(Value::as_bool) == Some(true);
    if stub && kind != Kind::Deleted {
        return None;
    }
    Some(Shape {
        id,
        otype,
        kind,
        stub,
    })
}

/// The whole of `object` (the input's parsed `data.object`), owned for the tie cache: the one
/// the connection thread parsed ([`Input::whole`]), else parsed again from its text when the
/// input holds only its head members.
pub(super) fn whole_object(input: &Input, object: &Value) -> Arc<Value> {
    if let Some(whole) = input.whole {
        return Arc::clone(whole);
    }
    let parsed = input
        .object_raw
        .filter(|_| input.object_head)
        .and_then(|raw| serde_json::from_str(raw).ok());
    Arc::new(parsed.unwrap_or_else(|| object.clone()))
}

pub(super) fn raw_text<'a>(input: &Input<'a>, object: &Value) -> Cow<'a, str> {
    match input.object_raw {
        Some(raw) => Cow::Borrowed(raw),
        None => Cow::Owned(object.to_string()),
    }
}

pub(super) fn livemode(event: Option<bool>, object: &Value) -> Option<bool> {
    event.or_else(|| object.get("livemode").and_then(Value::as_bool))
}
