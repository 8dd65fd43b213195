//! Which objects the inbox can fetch, and where: the API collection of each object type (its
//! retrieve path, and for the types the mirror holds in full its list), the type of an id by its
//! prefix, and the names `backfill --type` accepts. Pure.

use super::client::{path, Call};
use crate::mirror::queries::TYPED_VIEWS;

/// One fetchable object type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// The object's `object` field: `checkout.session`.
    pub object_type: &'static str,
    /// The collection's path under `/v1/`: `checkout/sessions`.
    pub collection: &'static str,
    /// Id prefixes that name this type (`cus_`); empty when ids are free-form (coupons).
    pub prefixes: &'static [&'static str],
    /// Query parameters the list needs to return every object. `GET /v1/subscriptions` leaves
    /// canceled subscriptions out unless asked for `status=all`.
    pub list_params: &'static [(&'static str, &'static str)],
}

const fn kind(
    object_type: &'static str,
    collection: &'static str,
    prefixes: &'static [&'static str],
) -> Kind {
    Kind {
        object_type,
        collection,
        prefixes,
        list_params: &[],
    }
}

/// Every type the inbox fetches; the first nine (the types with typed views) are also listed by
/// `backfill`. Deleted objects never appear in Stripe's lists.
pub const KINDS: &[Kind] = &[
    kind("product", "products", &["prod_"]),
    kind("price", "prices", &["price_"]),
    kind("customer", "customers", &["cus_"]),
    Kind {
        list_params: &[("status", "all")],
        ..kind("subscription", "subscriptions", &["sub_"])
    },
    kind("invoice", "invoices", &["in_"]),
    kind("payment_intent", "payment_intents", &["pi_"]),
    kind("charge", "charges", &["ch_", "py_"]),
    kind("refund", "refunds", &["re_", "pyr_"]),
    kind("checkout.session", "checkout/sessions", &["cs_"]),
    // Mirrored from events generically; refetched one at a time.
    kind(
        "subscription_schedule",
        "subscription_schedules",
        &["sub_sched_"],
    ),
    kind("subscription_item", "subscription_items", &["si_"]),
    kind("invoiceitem", "invoiceitems", &["ii_"]),
    kind("coupon", "coupons", &[]),
    kind("promotion_code", "promotion_codes", &["promo_"]),
    kind("plan", "plans", &["plan_"]),
    kind("dispute", "disputes", &["dp_", "du_"]),
    kind("payment_method", "payment_methods", &["pm_"]),
    kind("setup_intent", "setup_intents", &["seti_"]),
    kind("credit_note", "credit_notes", &["cn_"]),
    kind("tax_rate", "tax_rates", &["txr_"]),
    kind("quote", "quotes", &["qt_"]),
    kind("payout", "payouts", &["po_"]),
    kind("transfer", "transfers", &["tr_"]),
];

/// The types `backfill` lists, in the order it lists them (catalog first, then who buys, then
/// what they pay): those with a typed view.
pub fn backfilled() -> Vec<&'static Kind> {
    TYPED_VIEWS
        .iter()
        .filter_map(|(object_type, _)| by_type(object_type))
        .collect()
}

/// The kind of an object type (`customer`).
pub fn by_type(object_type: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.object_type == object_type)
}

/// The kind an id's prefix names (the longest matching prefix: `sub_sched_` before `sub_`).
pub fn by_id(id: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .flat_map(|k| k.prefixes.iter().map(move |p| (k, p)))
        .filter(|(_, p)| id.starts_with(**p) && id.len() > p.len())
        .max_by_key(|(_, p)| p.len())
        .map(|(k, _)| k)
}

/// A backfilled type by any of its names: `checkout.session`, `checkout_session`,
/// `checkout_sessions` (the view), `checkout/sessions`.
pub fn parse_backfilled(name: &str) -> Option<&'static Kind> {
    let name = name.trim();
    backfilled().into_iter().find(|k| {
        let view = TYPED_VIEWS
            .iter()
            .find(|(t, _)| *t == k.object_type)
            .map_or("", |(_, v)| *v);
        name == k.object_type
            || name == k.object_type.replace('.', "_")
            || name == view
            || name == k.collection
    })
}

impl Kind {
    /// `GET` path of one object.
    pub fn retrieve_path(&self, id: &str) -> String {
        let mut segments = vec!["v1"];
        segments.extend(self.collection.split('/'));
        segments.push(id);
        path(&segments)
    }

    /// The list call (without paging).
    pub fn list_call(&self) -> Call {
        let mut segments = vec!["v1"];
        segments.extend(self.collection.split('/'));
        let mut call = Call::get(path(&segments));
        for (k, v) in self.list_params {
            call = call.param(k, *v);
        }
        call
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_ids_and_paths() {
        let names: Vec<&str> = backfilled().iter().map(|k| k.object_type).collect();
        assert_eq!(
            names,
            [
                "product",
                "price",
                "customer",
                "subscription",
                "invoice",
                "payment_intent",
                "charge",
                "refund",
                "checkout.session"
            ]
        );
        assert_eq!(
            by_id("sub_sched_1").unwrap().object_type,
            "subscription_schedule"
        );
        assert_eq!(by_id("sub_1").unwrap().object_type, "subscription");
        assert_eq!(by_id("cs_test_a1").unwrap().object_type, "checkout.session");
        assert_eq!(by_id("cus_"), None);
        assert_eq!(by_id("SUMMER25"), None);
        let cs = parse_backfilled("checkout_sessions").unwrap();
        assert_eq!(cs.retrieve_path("cs_1"), "/v1/checkout/sessions/cs_1");
        assert_eq!(
            parse_backfilled("subscription").unwrap().list_call().params,
            [("status".to_owned(), "all".to_owned())]
        );
        assert!(parse_backfilled("coupon").is_none(), "not backfilled");
        assert_eq!(
            by_type("coupon").unwrap().retrieve_path("25 OFF"),
            "/v1/coupons/25%20OFF"
        );
    }
}
