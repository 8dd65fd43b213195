//! Realistic test events, built from Stripe's own example objects (`src/fixtures/stripe_objects.json`,
//! a subset of stripe/openapi's fixtures3.json, MIT). Used by `send-test-event` (the local
//! `stripe trigger`), by the tests and by the load generator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::event::types::object_type_for_event;

/// Stripe's example objects, keyed by object type.
pub const FIXTURES: &str = include_str!("../fixtures/stripe_objects.json");

/// The API version stamped on test events.
pub const API_VERSION: &str = "2025-08-27.basil";

/// Event types `send-test-event` knows how to build, the first being the default.
pub const KNOWN_TYPES: &[&str] = &[
    "payment_intent.succeeded",
    "payment_intent.created",
    "payment_intent.requires_action",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "checkout.session.completed",
    "checkout.session.expired",
    "charge.succeeded",
    "charge.failed",
    "charge.refunded",
    "charge.dispute.created",
    "refund.created",
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.created",
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "product.created",
    "product.updated",
    "price.created",
    "price.updated",
];

/// Stripe's example object of a type, if the fixtures have one.
pub fn fixture(object_type: &str) -> Option<Value> {
    static ALL: OnceLock<Value> = OnceLock::new();
    ALL.get_or_init(|| serde_json::from_str(FIXTURES).unwrap_or(Value::Null))
        .get(object_type)
        .cloned()
}

/// Builds a complete, realistic event of `event_type` created at `created`, with a fresh id.
/// The object keeps its fixture id, so repeated test events update one mirrored object.
pub fn build(event_type: &str, created: i64) -> Option<Value> {
    let mut object = fixture(object_type_for_event(event_type)?)?;
    let mut previous = None;
    let status = match event_type {
        "payment_intent.created" => Some("requires_payment_method"),
        "payment_intent.requires_action" => Some("requires_action"),
        "payment_intent.succeeded" => Some("succeeded"),
        "payment_intent.payment_failed" => Some("requires_payment_method"),
        "payment_intent.canceled" => Some("canceled"),
        "checkout.session.completed" => Some("complete"),
        "checkout.session.expired" => Some("expired"),
        "charge.succeeded" | "charge.refunded" => Some("succeeded"),
        "charge.failed" => Some("failed"),
        "customer.subscription.created" => Some("incomplete"),
        "customer.subscription.updated" => Some("active"),
        "customer.subscription.deleted" => Some("canceled"),
        "invoice.created" => Some("draft"),
        "invoice.finalized" | "invoice.payment_failed" => Some("open"),
        "invoice.paid" => Some("paid"),
        "invoice.voided" => Some("void"),
        _ => None,
    };
    if let (Some(status), Some(map)) = (status, object.as_object_mut()) {
        map.insert("status".into(), json!(status));
    }
    if event_type.ends_with(".updated") {
        // An update changes metadata and says what it was before, as Stripe does.
        if let Some(map) = object.as_object_mut() {
            let before = map.get("metadata").cloned().unwrap_or_else(|| json!({}));
            map.insert(
                "metadata".into(),
                json!({ "send_test_event": created.to_string() }),
            );
            previous = Some(json!({ "metadata": before }));
        }
    }
    let mut data = Map::new();
    data.insert("object".into(), object);
    if let Some(previous) = previous {
        data.insert("previous_attributes".into(), previous);
    }
    Some(json!({
        "id": format!("evt_{}", random_token(24)),
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": data,
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": format!("req_{}", random_token(14)), "idempotency_key": random_uuid() },
        "type": event_type,
    }))
}

/// A token of `len` characters from [0-9A-Za-z], unique within the process and unpredictable enough
/// for test ids (not for secrets).
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(len);
    let mut block = 0u64;
    while out.len() < len {
        for b in seed_bytes(block) {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
        }
        block += 1;
    }
    out
}

fn random_uuid() -> String {
    let b = seed_bytes(u64::MAX);
    let hex: String = b[..16].iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

fn seed_bytes(block: u64) -> [u8; 32] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(nanos.to_le_bytes());
    h.update(n.to_le_bytes());
    h.update(block.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::envelope;

    #[test]
    fn every_known_type_builds_and_parses() {
        for event_type in KNOWN_TYPES {
            let event = build(event_type, 1_700_000_000).unwrap_or_else(|| panic!("{event_type}"));
            let body = serde_json::to_vec(&event).unwrap();
            let env = envelope::parse(&body).unwrap();
            assert_eq!(env.event_type, *event_type);
            assert!(
                env.id.starts_with("evt_") && env.id.len() == 28,
                "{}",
                env.id
            );
            assert_eq!(
                env.object_type.as_deref(),
                object_type_for_event(event_type),
                "{event_type}"
            );
            assert!(env.object_id.is_some(), "{event_type}");
            assert_eq!(
                env.previous_attributes.is_some(),
                event_type.ends_with(".updated")
            );
        }
    }

    #[test]
    fn ids_differ_and_statuses_follow_the_type() {
        let a = build("invoice.paid", 1).unwrap();
        let b = build("invoice.paid", 1).unwrap();
        assert_ne!(a["id"], b["id"]);
        assert_eq!(a["data"]["object"]["status"], "paid");
        assert_eq!(
            build("customer.subscription.deleted", 1).unwrap()["data"]["object"]["status"],
            "canceled"
        );
        assert!(build("made.up", 1).is_none());
    }
}
