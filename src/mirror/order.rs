//! The projection's order of the events about one object that share one `created` second, for
//! whoever must replay them in order (forwarding sends them to the shop's app in this order).
//!
//! The order comes from the same rules that pick the second's winner (rule 4: deletes beat every
//! state, then the causal chain, then the one-way lifecycle, then arrival), applied again and again:
//! the winner of the whole set goes last, the winner of what is left goes before it, and so on. So
//! the app sees `created` before `processing` before `succeeded`, a causal chain in its order, a
//! delete last, and, where nothing tells, arrival order; and the state it sees last is the state
//! the mirror holds. Pure: bodies in, an order out.

use super::candidate::Parsed;
use super::shape::Kind;
use super::ties::{group_states, resolve, State};

/// One stored event of the second, as [`order_of_second`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct SecondEvent<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    /// `events.seq`: arrival order.
    pub seq: i64,
    /// The raw body as stored.
    pub body: &'a [u8],
}

/// The events about `object_id` of one second, earliest state first: indexes into `events`.
///
/// Events that carry no state of the object (a thin event, a delete stub, a body that does not
/// parse or was pruned) follow the others, in arrival order; events that carry the same data are
/// one state, a create first and a delete last within it, else in arrival order. The result is a function of the set of events
/// (and their `seq`), not of the order of `events`.
pub fn order_of_second(object_id: &str, events: &[SecondEvent]) -> Vec<usize> {
    let parsed: Vec<Parsed> = events
        .iter()
        .map(|e| {
            Parsed::new(
                e.seq,
                e.event_id.to_owned(),
                e.event_type,
                e.body.to_vec(),
                object_id,
            )
        })
        .collect();
    let mut cands = Vec::with_capacity(events.len());
    let mut of_cand = Vec::with_capacity(events.len());
    let mut stateless = Vec::new();
    for (i, p) in parsed.iter().enumerate() {
        match p.candidate(None) {
            Some(c) => {
                cands.push(c);
                of_cand.push(i);
            }
            None => stateless.push(i),
        }
    }

    // Take the winner out, again and again: it goes last among what is left.
    let mut left: Vec<State> = group_states(&cands);
    let mut from_last: Vec<Vec<usize>> = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let winner = resolve(&cands, &left).winner;
        let state = left.remove(winner);
        // One state's events: a create first and a delete last, else by arrival.
        let mut members = state.members;
        members.sort_by_key(|&c| {
            let kind = match cands[c].kind {
                Kind::Created => 0,
                Kind::Other => 1,
                Kind::Deleted | Kind::Final => 2,
            };
            (kind, events[of_cand[c]].seq, events[of_cand[c]].event_id)
        });
        from_last.push(members.into_iter().map(|c| of_cand[c]).collect());
    }
    stateless.sort_by_key(|&i| (events[i].seq, events[i].event_id));
    from_last
        .into_iter()
        .rev()
        .flatten()
        .chain(stateless)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(
        event_type: &str,
        object: serde_json::Value,
        prev: Option<serde_json::Value>,
    ) -> Vec<u8> {
        let mut data = json!({ "object": object });
        if let Some(p) = prev {
            data["previous_attributes"] = p;
        }
        serde_json::to_vec(&json!({
            "id": "evt_x", "object": "event", "type": event_type, "created": 100, "data": data
        }))
        .unwrap()
    }

    /// Orders `(id, type, body)` given in arrival order, in every arrival order: the result must
    /// be the same each time.
    fn order(list: &[(&str, &str, Vec<u8>)]) -> Vec<String> {
        let mut answers = Vec::new();
        let n = list.len();
        // Every rotation and its reverse stands in for "every arrival order" (seq follows it).
        for rot in 0..n {
            for rev in [false, true] {
                let mut arrival: Vec<usize> = (0..n).map(|i| (i + rot) % n).collect();
                if rev {
                    arrival.reverse();
                }
                let events: Vec<SecondEvent> = arrival
                    .iter()
                    .enumerate()
                    .map(|(seq, &i)| SecondEvent {
                        event_id: list[i].0,
                        event_type: list[i].1,
                        seq: seq as i64 + 1,
                        body: &list[i].2,
                    })
                    .collect();
                let got: Vec<String> = order_of_second("pi_1", &events)
                    .into_iter()
                    .map(|i| events[i].event_id.to_string())
                    .collect();
                answers.push(got);
            }
        }
        // Only a last-arrival tie may depend on arrival; these cases have none.
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
        answers.remove(0)
    }

    #[test]
    fn lifecycle_orders_a_payment_intents_second() {
        let pi =
            |status: &str| json!({ "id": "pi_1", "object": "payment_intent", "status": status });
        let got = order(&[
            (
                "evt_c",
                "payment_intent.succeeded",
                body("payment_intent.succeeded", pi("succeeded"), None),
            ),
            (
                "evt_a",
                "payment_intent.created",
                body(
                    "payment_intent.created",
                    pi("requires_payment_method"),
                    None,
                ),
            ),
            (
                "evt_b",
                "payment_intent.processing",
                body("payment_intent.processing", pi("processing"), None),
            ),
        ]);
        assert_eq!(got, ["evt_a", "evt_b", "evt_c"]);
    }

    #[test]
    fn a_causal_chain_in_its_order_and_a_delete_last() {
        let cus = |name: &str| json!({ "id": "pi_1", "object": "customer", "name": name });
        let got = order(&[
            (
                "evt_3",
                "customer.updated",
                body("customer.updated", cus("C"), Some(json!({ "name": "B" }))),
            ),
            (
                "evt_del",
                "customer.deleted",
                body("customer.deleted", cus("C"), None),
            ),
            (
                "evt_2",
                "customer.updated",
                body("customer.updated", cus("B"), Some(json!({ "name": "A" }))),
            ),
            (
                "evt_1",
                "customer.created",
                body("customer.created", cus("A"), None),
            ),
        ]);
        assert_eq!(got, ["evt_1", "evt_2", "evt_3", "evt_del"]);
    }

    #[test]
    fn nothing_to_tell_them_apart_keeps_arrival_order_and_stateless_events_follow() {
        let cus = |name: &str| json!({ "id": "pi_1", "object": "customer", "name": name });
        let events = [
            (
                "evt_y",
                "customer.updated",
                body("customer.updated", cus("Y"), None),
            ),
            ("evt_pruned", "customer.updated", Vec::new()),
            (
                "evt_x",
                "customer.updated",
                body("customer.updated", cus("X"), None),
            ),
        ];
        let list: Vec<SecondEvent> = events
            .iter()
            .enumerate()
            .map(|(i, (id, t, b))| SecondEvent {
                event_id: id,
                event_type: t,
                seq: i as i64 + 1,
                body: b,
            })
            .collect();
        let got: Vec<&str> = order_of_second("pi_1", &list)
            .into_iter()
            .map(|i| list[i].event_id)
            .collect();
        assert_eq!(got, ["evt_y", "evt_x", "evt_pruned"]);
    }
}
