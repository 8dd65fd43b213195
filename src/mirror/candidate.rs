//! A tie candidate: one state of an object at a tied second, as one stored event (or the stored
//! row itself) shows it, with what the tie-break rules need to compare it.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

use super::json_span::{data_object_raw, BodySpan};
use super::lifecycle::Rank;
use super::shape::{classify, livemode, Input, Kind, Shape};

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
    Body(&'a [u8]),
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

/// A stored event read once for the ties it may take part in: its body and, when it carries a
/// state of the object, that state parsed. [`Parsed::candidate`] lends it to a tie, so one parse
/// serves every tie of that second (the writer keeps recent ones, `tie_cache.rs`).
pub(super) struct Parsed {
    pub(super) seq: i64,
    pub(super) event_id: String,
    /// The raw body as stored (empty once pruned).
    pub(super) body: Vec<u8>,
    state: Option<EventState>,
}

/// The object's state as one event carries it.
pub(super) struct EventState {
    event_type: String,
    pub(super) data: Arc<Value>,
    prev: Option<Value>,
    kind: Kind,
    /// The object type the event itself names.
    otype: String,
    account: Option<String>,
    livemode: Option<bool>,
}

impl Parsed {
    /// Parses a stored event body for the ties of `object_id`. A body that carries no state of
    /// the object (a thin event, a delete stub, another object, a pruned or unparsable body) is
    /// kept too, as one with no candidate.
    pub(super) fn new(
        seq: i64,
        event_id: String,
        event_type: &str,
        body: Vec<u8>,
        object_id: &str,
    ) -> Parsed {
        let state = EventState::of(event_type, &body, object_id);
        Parsed {
            seq,
            event_id,
            body,
            state,
        }
    }

    /// The event as a tie candidate; `None` when it carries no state of the object. `otype` is
    /// the object type the ranks are taken for; `None` takes the event's own.
    pub(super) fn candidate(&self, otype: Option<&str>) -> Option<Candidate<'_>> {
        let s = self.state.as_ref()?;
        Some(s.candidate(self.seq, &self.event_id, &self.body, otype))
    }

    /// The event being applied, once its tie is decided, to keep for the later events of its
    /// second: made from what the projection parsed of it, not parsed again.
    pub(super) fn applied(input: &Input, state: EventState) -> Parsed {
        Parsed {
            seq: input.seq,
            event_id: input.event_id.to_owned(),
            body: input.body.to_vec(),
            state: Some(state),
        }
    }
}

impl EventState {
    /// The state of the event being applied: `data` is its whole `data.object`.
    pub(super) fn applied(input: &Input, data: Arc<Value>, shape: &Shape) -> EventState {
        EventState {
            event_type: input.event_type.to_owned(),
            prev: input.previous_attributes.filter(|p| p.is_object()).cloned(),
            kind: shape.kind,
            otype: shape.otype.to_owned(),
            account: input.account.map(str::to_owned),
            livemode: livemode(input.livemode, &data),
            data,
        }
    }

    /// The state as a tie candidate of event `seq` (whose stored body is `body`).
    pub(super) fn candidate<'p>(
        &'p self,
        seq: i64,
        event_id: &str,
        body: &'p [u8],
        otype: Option<&str>,
    ) -> Candidate<'p> {
        Candidate {
            event_id: Some(event_id.to_owned()),
            seq,
            kind: self.kind,
            rank: Rank::of(
                otype.unwrap_or(&self.otype),
                &self.event_type,
                self.kind,
                &self.data,
            ),
            data: Cow::Borrowed(&*self.data),
            text: Text::Body(body),
            span: None,
            prev: self.prev.as_ref().map(Cow::Borrowed),
            account: self.account.clone(),
            livemode: self.livemode,
            source: "event".to_owned(),
            fetched: false,
        }
    }

    fn of(event_type: &str, body: &[u8], object_id: &str) -> Option<EventState> {
        let mut envelope: Value = serde_json::from_slice(body).ok()?;
        if envelope.get("object").and_then(Value::as_str) == Some("v2.core.event") {
            return None;
        }
        let data = envelope.pointer_mut("/data/object").map(Value::take)?;
        let shape = classify(event_type, &data)?;
        if shape.id != object_id || shape.stub {
            return None;
        }
        let (kind, otype) = (shape.kind, shape.otype.to_owned());
        let prev = envelope
            .pointer_mut("/data/previous_attributes")
            .map(Value::take)
            .filter(Value::is_object);
        let account = envelope
            .get("account")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let livemode = livemode(envelope.get("livemode").and_then(Value::as_bool), &data);
        Some(EventState {
            event_type: event_type.to_owned(),
            data: Arc::new(data),
            prev,
            kind,
            otype,
            account,
            livemode,
        })
    }
}
