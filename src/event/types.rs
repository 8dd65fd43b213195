//! Stripe's event type names: which object type an event type is about, and the `*` patterns
//! that select event types (the admin's filters, `export --type`, forwarding's `events`). Pure.

/// The object type an event type is about, for objects that lack an `object` field:
/// `customer.subscription.updated` → `subscription`, `charge.dispute.closed` → `dispute`.
/// Thin event names (`v1.…`, `v2.…`) and names without an action give `None`.
pub fn object_type_for_event(event_type: &str) -> Option<&str> {
    let (prefix, action) = event_type.rsplit_once('.')?;
    if prefix.is_empty()
        || action.is_empty()
        || prefix.starts_with("v1.")
        || prefix.starts_with("v2.")
    {
        return None;
    }
    Some(match prefix {
        "customer.subscription" => "subscription",
        "customer.discount" => "discount",
        "customer.source" => "source",
        "customer.tax_id" => "tax_id",
        "charge.dispute" => "dispute",
        "charge.refund" => "refund",
        other => other,
    })
}

/// Whether event type `s` matches `pattern`: `*` matches any run of characters; everything else
/// matches itself.
pub fn matches(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || !s[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        for (p, s, ok) in [
            ("invoice.*", "invoice.paid", true),
            ("invoice.*", "invoice_item.created", false),
            ("*.deleted", "customer.subscription.deleted", true),
            ("*", "anything", true),
            ("customer.*.deleted", "customer.subscription.deleted", true),
            ("customer.*.deleted", "customer.deleted", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(matches(p, s), ok, "{p} {s}");
        }
    }

    #[test]
    fn object_types_from_event_types() {
        let cases = [
            ("customer.subscription.updated", Some("subscription")),
            ("charge.dispute.funds_withdrawn", Some("dispute")),
            ("charge.refund.updated", Some("refund")),
            (
                "checkout.session.async_payment_succeeded",
                Some("checkout.session"),
            ),
            ("invoice.payment_succeeded", Some("invoice")),
            ("customer.tax_id.created", Some("tax_id")),
            ("v1.billing.meter.error_report_triggered", None),
            ("ping", None),
        ];
        for (event_type, want) in cases {
            assert_eq!(object_type_for_event(event_type), want, "{event_type}");
        }
    }
}
