//! A guess, on the connection thread, that an event is about to meet a same-second tie, so that
//! the whole of its `data.object` is parsed there, beside the writer, rather than on the writer
//! thread that every event waits for (a tie compares whole states; the envelope holds only the
//! object's head members). In a `loadgen --same-second 4` burst that parse was 8% of the writer.
//!
//! The guess: the last event seen about the same object was at the same second. Only where the
//! parse happens depends on it: the writer parses what was not parsed, so a wrong guess costs one
//! parse on a connection thread and a missed one costs what it did before.
//!
//! It is a table of [`SLOTS`] atomic words, one per object id hash: no lock and no allocation on
//! the path every event takes (a locked map of ids cost 3-15% of the saturation figure).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::event::envelope::Envelope;

/// Slots in the table; two objects whose ids share a slot only make guesses wrong.
pub const SLOTS: usize = 4096;

/// Per slot: the high 32 bits of the id's hash, then the low 32 bits of the event's second.
#[derive(Debug)]
pub struct TieAhead {
    slots: Box<[AtomicU64]>,
}

impl Default for TieAhead {
    fn default() -> TieAhead {
        TieAhead {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl TieAhead {
    /// Notes the event's object and second; true when the last event seen about the same object
    /// was at this event's second.
    pub fn expects_tie(&self, env: &Envelope) -> bool {
        let Some(id) = env.object_id.as_deref().filter(|_| !env.thin) else {
            return false;
        };
        let mut hasher = DefaultHasher::new();
        id.hash(&mut hasher);
        let hash = hasher.finish();
        // Nothing here needs more than the low 32 bits of a unix second to tell seconds apart.
        let word = (hash & 0xffff_ffff_0000_0000) | (env.created as u64 & 0xffff_ffff);
        let slot = &self.slots[(hash as usize) % SLOTS];
        slot.swap(word, Ordering::Relaxed) == word
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::envelope::parse;

    fn env(id: &str, created: i64) -> Envelope {
        let body = format!(
            r#"{{"id":"evt_{id}_{created}","object":"event","type":"customer.updated","created":{created},"data":{{"object":{{"id":"{id}","object":"customer","name":"A"}}}}}}"#
        );
        parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn the_second_event_of_an_object_in_one_second_expects_a_tie() {
        let ahead = TieAhead::default();
        assert!(!ahead.expects_tie(&env("cus_1", 100)));
        assert!(ahead.expects_tie(&env("cus_1", 100)));
        assert!(!ahead.expects_tie(&env("cus_2", 100)));
        assert!(ahead.expects_tie(&env("cus_1", 100)));
        // Another second starts afresh.
        assert!(!ahead.expects_tie(&env("cus_1", 101)));
        assert!(ahead.expects_tie(&env("cus_1", 101)));
        assert!(!ahead.expects_tie(&env("cus_1", 100)));
    }

    #[test]
    fn a_thin_event_or_one_without_an_object_expects_nothing() {
        let ahead = TieAhead::default();
        let mut e = env("cus_1", 100);
        e.object_id = None;
        assert!(!ahead.expects_tie(&e));
        assert!(!ahead.expects_tie(&e));
        let mut t = env("cus_1", 100);
        t.thin = true;
        assert!(!ahead.expects_tie(&t));
        assert!(!ahead.expects_tie(&t));
    }

    #[test]
    fn the_whole_object_is_parsed_for_an_expected_tie() {
        let body = br#"{"id":"evt_1","object":"event","type":"customer.updated","created":5,"data":{"object":{"id":"cus_1","object":"customer","name":"A","address":{"city":"Paris"}}}}"#;
        let mut e = parse(body).unwrap();
        assert!(
            e.object.as_ref().unwrap().get("address").is_none(),
            "head only"
        );
        e.parse_whole_object(body);
        let whole = e.whole_object.as_deref().expect("parsed");
        assert_eq!(whole["address"]["city"], "Paris");
        assert_eq!(whole["name"], "A");
    }
}
