//! Parsing an event's envelope: the few fields the inbox stores as columns and the projection needs.
//!
//! Snapshot events (`object: "event"`) carry `id`, `type`, integer `created`, `livemode`, `account`
//! (Connect), `api_version`, `request` (an object `{id, idempotency_key}` since API 2017-05-25, a
//! plain `"req_..."` string before) and `data.object` / `data.previous_attributes`. Thin events
//! (`object: "v2.core.event"`) have an ISO-8601 `created` and a `related_object` instead of data;
//! they are stored but never projected. Everything else in the body is left alone: the raw bytes are
//! what the inbox stores and forwards. Event types the program does not know are fine.
//!
//! Pure: bytes in, [`Envelope`] or a reason out.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// What the inbox needs from an event, owned so it can cross to the writer thread.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: String,
    pub event_type: String,
    /// Unix seconds (a thin event's sub-second `created` is truncated).
    pub created: i64,
    pub livemode: Option<bool>,
    pub account: Option<String>,
    pub api_version: Option<String>,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// `object: "v2.core.event"`.
    pub thin: bool,
    /// `data.object.id`, or a thin event's `related_object.id`.
    pub object_id: Option<String>,
    /// `data.object.object` (e.g. `customer`, `checkout.session`), or `related_object.type`.
    pub object_type: Option<String>,
    /// The members of `data.object` listed in [`HEAD_MEMBERS`], parsed (snapshot events only):
    /// what the mirror reads of an event unless it has to settle a same-second tie, which parses
    /// the whole object from its text ([`Envelope::object_text`]). A `data.object` that is not a
    /// JSON object is here whole.
    pub object: Option<Value>,
    /// Where `data.object`'s exact text lies in the body, so it can be stored without re-encoding.
    pub object_span: Option<(usize, usize)>,
    /// `data.previous_attributes`, on `*.updated` events.
    pub previous_attributes: Option<Value>,
    /// The whole of `data.object`, parsed, when the connection thread expects a same-second tie
    /// (`ingest::tie_ahead`), so that the writer need not parse it; `None` otherwise.
    pub whole_object: Option<Arc<Value>>,
}

/// Why a body is not an event we can store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The body is not JSON (or not a JSON object); carries serde's one-line reason.
    NotJson(String),
    /// A required field is missing or has the wrong type: `id`, `type` or `created`.
    Field(&'static str),
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvelopeError::NotJson(why) => write!(f, "body is not a JSON event: {why}"),
            EnvelopeError::Field(name) => write!(f, "event has no valid `{name}`"),
        }
    }
}

#[derive(Deserialize)]
struct Raw<'a> {
    id: Option<Value>,
    object: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<Value>,
    created: Option<Value>,
    livemode: Option<Value>,
    account: Option<Value>,
    api_version: Option<Value>,
    request: Option<Value>,
    #[serde(borrow)]
    data: Option<RawData<'a>>,
    related_object: Option<Value>,
}

#[derive(Deserialize)]
struct RawData<'a> {
    #[serde(borrow)]
    object: Option<&'a RawValue>,
    previous_attributes: Option<Value>,
}

/// The members of `data.object` that [`Envelope::object`] holds: every one the mirror reads
/// outside a same-second tie (the object's identity, its delete stub flag and livemode, what
/// `mirror::lifecycle` ranks, the indexed customer and email). Parsing only these, and skipping
/// the rest of the text without building it, is a quarter of a connection thread's CPU less
/// per event than a whole tree built and freed again (measured at saturation: its allocations
/// and map inserts and drops). A member the mirror reads outside a tie must be listed here.
pub const HEAD_MEMBERS: [&str; 11] = [
    "id",
    "object",
    "deleted",
    "livemode",
    "status",
    "captured",
    "amount_refunded",
    "payment_status",
    "balance_transactions",
    "customer",
    "email",
];

/// `data.object` cut down to [`HEAD_MEMBERS`], read in one pass over its text. A member that
/// appears twice keeps its last value, as a whole parse does.
struct Head(serde_json::Map<String, Value>);

impl<'de> Deserialize<'de> for Head {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Head, D::Error> {
        d.deserialize_map(HeadVisitor)
    }
}

struct HeadVisitor;

impl<'de> serde::de::Visitor<'de> for HeadVisitor {
    type Value = Head;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
        let mut head = serde_json::Map::new();
        while let Some(Key(key)) = map.next_key::<Key>()? {
            if HEAD_MEMBERS.contains(&key.as_ref()) {
                head.insert(key.into_owned(), map.next_value()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(Head(head))
    }
}

/// A member name, borrowed from the body unless it has escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// [`HEAD_MEMBERS`] of a JSON text that serde_json has already accepted as a value; any value
/// other than an object, whole.
fn head_of(text: &str) -> serde_json::Result<Value> {
    if text.starts_with('{') {
        serde_json::from_str::<Head>(text).map(|head| Value::Object(head.0))
    } else {
        serde_json::from_str(text)
    }
}

/// The longest event id we accept; Stripe's are about 30 characters.
const MAX_ID_LEN: usize = 255;

/// Parses an event body.
pub fn parse(body: &[u8]) -> Result<Envelope, EnvelopeError> {
    let raw: Raw =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let id = string(raw.id.as_ref())
        .filter(|s| !s.is_empty() && s.len() <= MAX_ID_LEN)
        .ok_or(EnvelopeError::Field("id"))?;
    let event_type = string(raw.event_type.as_ref())
        .filter(|s| !s.is_empty() && s.len() <= MAX_ID_LEN)
        .ok_or(EnvelopeError::Field("type"))?;
    let thin = raw.object.as_deref() == Some("v2.core.event");
    let created = match raw.created.as_ref() {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) if thin => crate::time::parse_rfc3339(s),
        _ => None,
    }
    .filter(|c| *c >= 0)
    .ok_or(EnvelopeError::Field("created"))?;

    // `request` is {id, idempotency_key} since API 2017-05-25 and a bare "req_..." before.
    let (request_id, idempotency_key) = match &raw.request {
        Some(Value::String(s)) => (Some(s.clone()), None),
        Some(Value::Object(map)) => (string(map.get("id")), string(map.get("idempotency_key"))),
        _ => (None, None),
    };

    let mut env = Envelope {
        id,
        event_type,
        created,
        livemode: raw.livemode.as_ref().and_then(Value::as_bool),
        account: string(raw.account.as_ref()),
        api_version: string(raw.api_version.as_ref()),
        request_id,
        idempotency_key,
        thin,
        object_id: None,
        object_type: None,
        object: None,
        object_span: None,
        previous_attributes: None,
        whole_object: None,
    };

    if thin {
        if let Some(Value::Object(related)) = &raw.related_object {
            env.object_id = string(related.get("id"));
            env.object_type = string(related.get("type"));
        }
        return Ok(env);
    }
    if let Some(data) = raw.data {
        if let Some(object) = data.object {
            let text = object.get();
            // RawValue borrows from `body`, so the pointer difference is the offset of its text.
            let start = text.as_ptr() as usize - body.as_ptr() as usize;
            let value = head_of(text).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
            if let Value::Object(map) = &value {
                env.object_id = string(map.get("id"));
                env.object_type = string(map.get("object"));
            }
            env.object = Some(value);
            env.object_span = Some((start, start + text.len()));
        }
        env.previous_attributes = data.previous_attributes.filter(|v| !v.is_null());
    }
    Ok(env)
}

impl Envelope {
    /// Parses the whole of `data.object` from `body` (the body this envelope was parsed from)
    /// into [`Envelope::whole_object`], unless it is there already or there is none.
    pub fn parse_whole_object(&mut self, body: &[u8]) {
        if self.whole_object.is_some() || self.thin {
            return;
        }
        let whole = self
            .object_text(body)
            .and_then(|t| serde_json::from_str(t).ok());
        self.whole_object = whole.map(Arc::new);
    }

    /// `data.object`'s exact text within `body` (the body this envelope was parsed from).
    pub fn object_text<'b>(&self, body: &'b [u8]) -> Option<&'b str> {
        let (start, end) = self.object_span?;
        std::str::from_utf8(body.get(start..end)?).ok()
    }
}

fn string(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_event_with_request_object() {
        let body = include_bytes!("../../tests/fixtures/event_test_signature.json");
        let env = parse(body).unwrap();
        assert_eq!(env.id, "evt_123");
        assert_eq!(env.event_type, "customer.created");
        assert_eq!(env.created, 1533204620);
        assert_eq!(env.livemode, Some(false));
        assert_eq!(env.account.as_deref(), Some("acct_123"));
        assert_eq!(env.api_version.as_deref(), Some("2017-05-25"));
        assert_eq!(env.request_id.as_deref(), Some("req_123"));
        assert_eq!(env.idempotency_key.as_deref(), Some("idempotency-key-123"));
        assert_eq!(env.object_id.as_deref(), Some("cus_123"));
        assert_eq!(env.object_type.as_deref(), Some("customer"));
        assert!(!env.thin);
        let text = env.object_text(body).unwrap();
        assert!(text.starts_with('{') && text.ends_with('}') && text.contains("test@stripe.com"));
        assert_eq!(env.object.unwrap(), head(text));
    }

    #[test]
    fn pre_2017_request_string_and_previous_attributes() {
        let body =
            br#"{"id":"evt_old","object":"event","type":"customer.updated","created":1490000000,
            "request":"req_abc","data":{"object":{"id":"cus_1","object":"customer","email":"b@x"},
            "previous_attributes":{"email":"a@x"}}}"#;
        let env = parse(body).unwrap();
        assert_eq!(env.request_id.as_deref(), Some("req_abc"));
        assert_eq!(env.idempotency_key, None);
        assert_eq!(
            env.previous_attributes,
            Some(serde_json::json!({"email": "a@x"}))
        );
        assert_eq!(env.livemode, None);
    }

    /// What a whole parse of `text` holds of [`HEAD_MEMBERS`].
    fn head(text: &str) -> Value {
        match serde_json::from_str::<Value>(text).unwrap() {
            Value::Object(mut all) => {
                all.retain(|k, _| HEAD_MEMBERS.contains(&k.as_str()));
                Value::Object(all)
            }
            other => other,
        }
    }

    #[test]
    fn the_object_holds_exactly_the_head_members_of_a_whole_parse() {
        let cases = [
            // Escaped names and values, a repeated member (the last wins), nested values skipped.
            r#"{"id":"ch_1","obj\u0065ct":"charge","status":"pending","metadata":{"status":"x"},"status":"succeeded","captured":true,"amount_refunded":5,"email":"A\u0040x","balance_transactions":[{"id":"txn_1"}],"customer":null,"livemode":false,"deleted":true,"payment_status":"paid","lines":{"data":[1,2,{"id":"il"}]}}"#,
            r#"{}"#,
            r#"["not", "an", "object"]"#,
            r#""text""#,
        ];
        for object in cases {
            let body = format!(
                r#"{{"id":"evt_1","type":"charge.updated","created":1,"data":{{"object":{object}}}}}"#
            );
            let env = parse(body.as_bytes()).unwrap();
            assert_eq!(env.object_text(body.as_bytes()), Some(object));
            assert_eq!(env.object.unwrap(), head(object), "{object}");
        }
        let fixtures: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/event_test_signature.json"
        ))
        .unwrap();
        let body = fixtures.to_string();
        let env = parse(body.as_bytes()).unwrap();
        let text = env.object_text(body.as_bytes()).unwrap();
        assert_eq!(env.object.clone().unwrap(), head(text));
    }

    #[test]
    fn a_number_too_large_for_serde_json_outside_the_head_members_is_stored() {
        // JSON allows it, and the body is kept byte for byte; the mirror reads only the head.
        let body = br#"{"id":"evt_1","type":"charge.updated","created":1,
            "data":{"object":{"id":"ch_1","object":"charge","amount":1e400}}}"#;
        let env = parse(body).unwrap();
        assert_eq!(
            env.object,
            Some(serde_json::json!({"id": "ch_1", "object": "charge"}))
        );
        // One of the head members cannot be read: not an event we can store.
        let body = br#"{"id":"evt_1","type":"charge.updated","created":1,
            "data":{"object":{"id":"ch_1","object":"charge","amount_refunded":1e400}}}"#;
        assert!(parse(body)
            .unwrap_err()
            .to_string()
            .contains("number out of range"));
    }

    #[test]
    fn thin_event() {
        let body = br#"{"id":"evt_test_65R","object":"v2.core.event","type":"v1.billing.meter.error_report_triggered",
            "created":"2025-10-04T15:13:32.232083866Z","livemode":false,
            "related_object":{"id":"mtr_123","type":"billing.meter","url":"/v1/billing/meters/mtr_123"}}"#;
        let env = parse(body).unwrap();
        assert!(env.thin);
        assert_eq!(env.created, 1759590812);
        assert_eq!(env.object_id.as_deref(), Some("mtr_123"));
        assert_eq!(env.object_type.as_deref(), Some("billing.meter"));
        assert_eq!(env.object, None);
    }

    #[test]
    fn unknown_type_and_no_object_are_fine() {
        let env = parse(br#"{"id":"evt_1","type":"made.up","created":1,"data":{}}"#).unwrap();
        assert_eq!(env.event_type, "made.up");
        assert_eq!(env.object_id, None);
        let env = parse(br#"{"id":"evt_2","type":"invoice.upcoming","created":1,"data":{"object":{"object":"invoice"}}}"#).unwrap();
        assert_eq!(env.object_id, None);
        assert_eq!(env.object_type.as_deref(), Some("invoice"));
    }

    #[test]
    fn rejections() {
        for (body, want) in [
            (&b"not json"[..], "not a JSON event"),
            (b"[1,2]", "not a JSON event"),
            (b"{}", "`id`"),
            (br#"{"id":"","type":"a","created":1}"#, "`id`"),
            (br#"{"id":5,"type":"a","created":1}"#, "`id`"),
            (br#"{"id":"evt_1","created":1}"#, "`type`"),
            (br#"{"id":"evt_1","type":"a"}"#, "`created`"),
            (
                br#"{"id":"evt_1","type":"a","created":"2025-10-04T15:13:32Z"}"#,
                "`created`",
            ),
            (br#"{"id":"evt_1","type":"a","created":1.5}"#, "`created`"),
            (br#"{"id":"evt_1","type":"a","created":-1}"#, "`created`"),
            (
                br#"{"id":"evt_1","type":"a","created":1,"data":{"object":{"id":"x"}}"#,
                "not a JSON event",
            ),
        ] {
            let err = parse(body).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{} gave {err}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
