//! The mirror: turns each new event into the local mirror of the Stripe object it carries
//! (`objects`), so that the mirror ends up the same whatever order Stripe delivers events in.
//!
//! This module owns the decision for one event and the SQL that records it. It runs inside the
//! writer's open transaction: it never opens a connection, never commits and does no other I/O.
//! It knows nothing of HTTP, signatures or forwarding.
//!
//! # The rules
//! Each mirrored object holds the state of the *winning* event about it. The winner is decided by
//! an ordering key whose first part is `event.created` (one-second resolution), stored as
//! `objects.k_created`:
//! 1. **Newer second wins** (rule 3 of design.md). An event whose second is older than the
//!    stored one is `stale`.
//! 2. **`*.created` never overwrites** (rule 1): in a tie it ranks below every other event, so it
//!    only fills a missing row (`created_ignored` otherwise). The one exception keeps the mirror
//!    order-independent: a `.created` that is *newer* than every other event about its object
//!    does win; Stripe never sends that.
//! 3. **Deletes are tombstones** (rule 2), decided by the event type (`*.deleted`), never by a
//!    `deleted` field, where the object is gone from Stripe's API (its GET answers `deleted: true`
//!    or 404; `shape::LIVES_ON_AFTER_DELETE` lists the one `*.deleted` type that is not such a
//!    delete, `customer.subscription.deleted`, and says how every other was checked). The
//!    `deleted` flag is sticky: once any delete event has been seen, the row stays deleted whatever
//!    arrives later, so nothing resurrects it. At its own second a delete beats every other state,
//!    so nothing *equal* changes the tombstone's data either, and an older event is ignored
//!    (`deleted_ignored`). A strictly newer event still updates the data (the row stays deleted).
//!    A delete *stub* (`{"id", "object", "deleted": true}`) carries no state: it only sets the flag,
//!    and if it is the first thing seen it leaves a placeholder row (`k_created` NULL) that any real
//!    state replaces. A **canceled subscription** (`customer.subscription.deleted`) is not gone:
//!    Stripe's `retrieve` still returns it with `status: canceled`, so its row keeps `deleted = 0`
//!    and holds that final state, which at its own second beats every other state like a delete
//!    (`tie_resolved:lifecycle`); an older event is `stale`; a newer one updates it (Stripe lets you
//!    edit a canceled subscription's metadata).
//! 4. **Ties** (same second, different data) are decided over *every* event about the object in
//!    that second, read back from the `events` table, not just the stored one and the new one.
//!    Comparing only two states is not transitive: with `name: A→B→C` in one second, delivered
//!    C, A, B, the pair (C, A) has no causal link, A would win by arrival, and B would then follow
//!    A. Deciding over the whole second makes the winner a function of the *set* of events seen,
//!    and so independent of their order. Identical data is one state (no conflict). In order:
//!    - a. **causal**: state Y *follows* X when one of Y's events has `previous_attributes` whose
//!      every key equals X's value (nested objects compared key by key, as Stripe sends partial
//!      hashes). The candidates are the states with no proven successor (precisely: the terminal
//!      strongly connected components of that graph, so a revert `A→B→A`, where each state
//!      "follows" the other, proves nothing). One candidate left decides.
//!    - b. **lifecycle**: a rank `(not .created, status, progress, follow-up event)` where status
//!      comes from a one-way table per type (payment_intent, setup_intent, invoice, charge, refund,
//!      checkout.session, dispute, and subscription only where one-way: `incomplete` first,
//!      `canceled`/`incomplete_expired` last) and progress from one-way counters (a charge's
//!      `captured` and `amount_refunded`, a checkout's `payment_status`, a dispute's number of
//!      balance transactions). An unknown status makes the status part unusable for that tie.
//!      Known limit: a payment_intent (or setup_intent) whose attempt fails goes back to
//!      `requires_payment_method`; if that happens in the same second as the step before it and
//!      no `previous_attributes` tell, the older state wins.
//!    - c. **last arrival** (highest `events.seq`) wins and the row is flagged `uncertain = 1`;
//!      when an API key is configured the caller refetches it. The flag clears as soon as a newer
//!      event or a causal/lifecycle decision replaces the state.
//!
//!    Which event of the winning state is recorded (`event_id`) is the smallest event id, so the
//!    whole row is a function of the event set, not of delivery order. Two shortcuts keep the
//!    work per event small: an event carrying exactly the mirrored text joins that state without
//!    reading the second again (it can only strengthen it), and beyond 100 events about one object
//!    in one second the last arrival wins, flagged `uncertain`.
//! 5. **Nothing to mirror**: thin events (`v2.core.event`), objects without a string `id`
//!    (`invoice.upcoming`, `balance.available`) and `deleted: true` stubs on non-delete events
//!    give `no_object` and write nothing. An object with an `id` of a type this module has no
//!    table for (coupon, payment_method, ...) is mirrored generically.
//!
//! 6. **Fetched state** (design.md rule 5, [`fetched`]): what Stripe's API returned for an object
//!    (`refetch`: one GET; `backfill`: a list page) is stamped with the second the fetch began
//!    (`k_created`, `event_id` NULL, `source` `refetch` or `backfill`): every event of an older
//!    second is then stale, every event of a newer second wins, and an event of the same second
//!    meets the fetched state as one more candidate of that second with no `previous_attributes`,
//!    placed in arrival order after every event stored before the fetch (it wins when it
//!    causally follows it, else by lifecycle, else by arrival with `uncertain` set, and the
//!    object is fetched again in a later second). A fetch that finds the object gone (`deleted:
//!    true`, or 404 `resource_missing`) sets the sticky tombstone like a delete stub does. Every
//!    fetch is recorded in `fetched`, ground truth beside `events`, which a rebuild re-applies.
//!
//! # Decisions (`events.decision`)
//! `applied`, `created_ignored`, `stale`, `unchanged` (same second, the state already mirrored),
//! `tie_resolved:causal`, `tie_resolved:lifecycle`, `tie_resolved:last_arrival` (the rule that
//! decided the second; the event may have won or lost, `objects.event_id` says which),
//! `tombstoned` (a `*.deleted` of an object gone from Stripe), `deleted_ignored` (lost to a
//! tombstone), `no_object`.
//!
//! # Ordering key
//! `(k_created, tie-break)`: `k_created` is the event's second; the tie-break is not a stored
//! number but the decision above, re-run over the events of that second. `k_rank` (status rank of
//! the stored data) and `k_seq` (arrival of the recorded event) are stored to explain a row.
//! [`order_of_second`] gives the whole order of one object's second under these same rules (the
//! winner last), for whoever replays events in order: forwarding sends them to the app so.
//! A fetched state (rule 6) has `k_created` = the second its fetch began and `k_seq` =
//! `MAX(events.seq)` when it was fetched.
//!
//! # Contract with the caller
//! `apply` is called once per new event id, in the transaction that stores the event. Ties read
//! `events(seq, id, type, created, object_id, body)` for the same `object_id` and `created`
//! (index `events_object`); the event being applied may already be in that table or not.
//! When the stored state's event is no longer there (retention), the stored row itself competes.
//! A fetched state of the tied second is read from `fetched` and competes too.
//! [`fetched::apply_fetched`] is called once per fetch, in the writer transaction that records it;
//! [`fetched::request_refetch`] queues a fetch (`refetch_jobs`), coalesced per object.

mod candidate;
pub mod decision;
pub mod fetched;
mod json_span;
mod lifecycle;
pub mod order;
pub mod project;
pub mod queries;
pub mod replay;
mod rows;
mod shape;
mod tie_cache;
mod ties;

#[cfg(test)]
mod tests;

pub use decision::{Decision, Outcome, TieRule};
pub use json_span::data_object_raw;
pub use order::{order_of_second, SecondEvent};
pub use project::apply;
pub use shape::{input, Input};
