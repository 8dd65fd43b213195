//! A tie candidate: one state of an object at a tied second, as one stored event (or the stored
//! row itself) shows it, with what the tie-break rules need to compare it.

use std::borrow::Cow;

use serde_json::Value;

use super::json_span::{data_object_raw, BodySpan};
use super::lifecycle::Rank;
use super::shape::{classify, livemode, Kind};

/// Beyond this many other events about one object in one second, a tie is not compared but
/// goes to the last arrival (flagged `uncertain`): it bounds the work one event can cause.
pub(super) const MAX_TIE_EVENTS: usize = 100;

/// One state of the object at the tied second, as one event (or the stored row) shows it.
pub(super) struct Candidate<'a> {
    /// `None`: a fetched state, or the stored row's state when its event is not in `events`.
    pub(super) event_id: Option<String>,
    pub(super) seq: i64,
    pub(super) kind: Kind,
    pub(super) rank: Rank,
    pub(super) data: Cow<'a, Value>,
    pub(super) text: Text<'a>,
    /// Where `text` lies in an event body, for a `Text::Object` (the event being applied, or the
    /// stored row's state); a `Text::Body` candidate finds its own span.
    pub(super) span: Option<BodySpan>,
    pub(super) prev: Option<Cow<'a, Value>>,
    pub(super) account: Option<String>,
    pub(super) livemode: Option<bool>,
    pub(super) source: String,
    /// A state fetched from Stripe's API (rule 5), not an event's.
    pub(super) fetched: bool,
}

/// Where a candidate's exact object text comes from: a stored event's body is only scanned for
/// it when that candidate wins.
pub(super) enum Text<'a> {
    Object(Cow<'a, str>),
    Body(Vec<u8>),
}

impl Candidate<'_> {
    /// Where the candidate stands in arrival order, for the last-arrival rule: an event by its
    /// `seq`; a fetched state by `MAX(events.seq)` when it was fetched, after the event of that seq.
    pub(super) fn arrival(&self) -> (i64, bool) {
        (self.seq, self.fetched)
    }

    /// Where the candidate's text lies in an event body, if it is an event's `data.object`.
    pub(super) fn body_span(&self) -> Option<BodySpan> {
        if self.fetched || self.event_id.is_none() {
            return self.span.filter(|_| !self.fetched);
        }
        match &self.text {
            Text::Object(_) => self.span,
            Text::Body(body) => {
                let text = std::str::from_utf8(body).ok().and_then(data_object_raw)?;
                BodySpan::of_slice(self.seq, body, text)
            }
        }
    }

    pub(super) fn text(&self) -> Cow<'_, str> {
        match &self.text {
            Text::Object(text) => Cow::Borrowed(text),
            Text::Body(body) => match std::str::from_utf8(body).ok().and_then(data_object_raw) {
                Some(text) => Cow::Borrowed(text),
                None => Cow::Owned(self.data.to_string()),
            },
        }
    }
}

/// Reads a stored event body as a tie candidate; `None` when it carries no state of the object.
/// `otype` is the object type the ranks are taken for; `None` takes the event's own.
pub(super) fn candidate_from_body(
    seq: i64,
    event_id: &str,
    event_type: &str,
    body: Vec<u8>,
    object_id: &str,
    otype: Option<&str>,
) -> Option<Candidate<'static>> {
    let mut envelope: Value = serde_json::from_slice(&body).ok()?;
    if envelope.get("object").and_then(Value::as_str) == Some("v2.core.event") {
        return None;
    }
    let data = envelope.pointer_mut("/data/object").map(Value::take)?;
    let shape = classify(event_type, &data)?;
    if shape.id != object_id || shape.stub {
        return None;
    }
    let kind = shape.kind;
    let prev = envelope
        .pointer_mut("/data/previous_attributes")
        .map(Value::take)
        .filter(Value::is_object);
    let account = envelope
        .get("account")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let live = livemode(envelope.get("livemode").and_then(Value::as_bool), &data);
    Some(Candidate {
        event_id: Some(event_id.to_owned()),
        seq,
        kind,
        rank: Rank::of(otype.unwrap_or(shape.otype), event_type, kind, &data),
        data: Cow::Owned(data),
        text: Text::Body(body),
        span: None,
        prev: prev.map(Cow::Owned),
        account,
        livemode: live,
        source: "event".to_owned(),
        fetched: false,
    })
}
