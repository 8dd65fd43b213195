//! The one-way lifecycle ranks (rule 4b): for types whose status only moves forward, which of two
//! same-second states is later. Pure.

use serde_json::Value;

use super::shape::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// The type has no one-way status.
    None,
    Known(i64),
    /// A status this table does not know (a newer Stripe status): unusable for ordering.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Rank {
    /// 0 for `*.created`, 1 otherwise: a `.created` is an object's first state.
    pub(super) class: i64,
    pub(super) status: Status,
    /// One-way counters within a status.
    pub(super) progress: [i64; 2],
    /// 1 for event types that can only follow another event of the same status.
    pub(super) followup: i64,
}

impl Rank {
    pub(super) fn of(otype: &str, event_type: &str, kind: Kind, data: &Value) -> Rank {
        let (status, progress) = lifecycle(otype, data);
        let followup = matches!(
            event_type,
            "checkout.session.async_payment_succeeded" | "checkout.session.async_payment_failed"
        );
        Rank {
            class: i64::from(kind != Kind::Created),
            status,
            progress,
            followup: i64::from(followup),
        }
    }

    pub(super) fn status(&self) -> Option<i64> {
        match self.status {
            Status::Known(r) => Some(r),
            _ => None,
        }
    }

    pub(super) fn key(&self, use_status: bool) -> [i64; 5] {
        match (use_status, self.status) {
            (true, Status::Known(s)) => [
                self.class,
                s,
                self.progress[0],
                self.progress[1],
                self.followup,
            ],
            _ => [self.class, 0, 0, 0, self.followup],
        }
    }
}

/// The one-way status rank and progress counters of a state, per object type.
pub(super) fn lifecycle(otype: &str, data: &Value) -> (Status, [i64; 2]) {
    let status = data.get("status").and_then(Value::as_str).unwrap_or("");
    let int = |key: &str| data.get(key).and_then(Value::as_i64).unwrap_or(0);
    let flag = |key: &str| i64::from(data.get(key).and_then(Value::as_bool) == Some(true));
    let rank = match otype {
        "payment_intent" | "setup_intent" => match status {
            "requires_payment_method" => Some(0),
            "requires_confirmation" => Some(1),
            "requires_action" => Some(2),
            "processing" => Some(3),
            "requires_capture" => Some(4),
            "succeeded" | "canceled" => Some(5),
            _ => None,
        },
        // `uncollectible` can still be paid or voided.
        "invoice" => match status {
            "draft" => Some(0),
            "open" => Some(1),
            "uncollectible" => Some(2),
            "paid" | "void" => Some(3),
            _ => None,
        },
        "charge" => match status {
            "pending" => Some(0),
            "succeeded" | "failed" => Some(1),
            _ => None,
        },
        // A succeeded refund can still fail.
        "refund" => match status {
            "pending" => Some(0),
            "requires_action" => Some(1),
            "succeeded" => Some(2),
            "failed" | "canceled" => Some(3),
            _ => None,
        },
        "checkout.session" => match status {
            "open" => Some(0),
            "complete" | "expired" => Some(1),
            _ => None,
        },
        // An inquiry (warning_*) can escalate to a chargeback before it closes.
        "dispute" => match status {
            "warning_needs_response" => Some(0),
            "warning_under_review" => Some(1),
            "needs_response" => Some(2),
            "under_review" => Some(3),
            "warning_closed" | "won" | "lost" | "prevented" => Some(4),
            _ => None,
        },
        // Only the ends are one-way: active, past_due, unpaid, paused and trialing go back and forth.
        "subscription" => match status {
            "incomplete" => Some(0),
            "trialing" | "active" | "past_due" | "unpaid" | "paused" => Some(1),
            "canceled" | "incomplete_expired" => Some(2),
            _ => None,
        },
        _ => return (Status::None, [0, 0]),
    };
    let progress = match otype {
        "charge" => [flag("captured"), int("amount_refunded")],
        "checkout.session" => {
            let paid = matches!(
                data.get("payment_status").and_then(Value::as_str),
                Some("paid" | "no_payment_required")
            );
            [i64::from(paid), 0]
        }
        "dispute" => {
            let n = data
                .get("balance_transactions")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            [i64::try_from(n).unwrap_or(i64::MAX), 0]
        }
        _ => [0, 0],
    };
    match rank {
        Some(r) => (Status::Known(r), progress),
        None => (Status::Unknown, [0, 0]),
    }
}
