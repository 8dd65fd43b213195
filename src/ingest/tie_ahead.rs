//! A guess, on the connection thread, that an event is about to meet a same-second tie, so that
//! the whole of its `data.object` is parsed there, beside the writer, rather than on the writer
//! thread that every event waits for (a tie compares whole states; the envelope holds only the
//! object's head members). In a `loadgen --same-second 4` burst that parse was 8% of the writer.
//!
//! The guess: an earlier event about the same object at the same second was seen, and none at a
//! later second (an event older than the object's newest second is stale, not a tie). Only where the parse happens depends on it: the writer parses what was not parsed, so a
//! wrong guess costs one parse on a connection thread and a missed one costs what it did before.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::event::envelope::Envelope;

/// Objects remembered; past this many the memory starts again (a shop sees a few a second).
pub const MAX_OBJECTS: usize = 4096;

/// The newest `created` second seen per object id, across every connection.
#[derive(Debug, Default)]
pub struct TieAhead {
    newest: Mutex<HashMap<String, i64>>,
}

impl TieAhead {
    /// Notes the event's object and second; true when the newest second seen before for the same
    /// object is this event's.
    pub fn expects_tie(&self, env: &Envelope) -> bool {
        let Some(id) = env.object_id.as_deref().filter(|_| !env.thin) else {
            return false;
        };
        let mut newest = self.newest.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(second) = newest.get_mut(id) {
            let seen = *second == env.created;
            *second = (*second).max(env.created);
            return seen;
        }
        if newest.len() >= MAX_OBJECTS {
            newest.clear();
        }
        newest.insert(id.to_owned(), env.created);
        false
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
        // A later second starts afresh; an older one arriving late is stale, no tie.
        assert!(!ahead.expects_tie(&env("cus_1", 101)));
        assert!(!ahead.expects_tie(&env("cus_1", 100)));
        assert!(ahead.expects_tie(&env("cus_1", 101)));
    }

    #[test]
    fn its_memory_is_bounded() {
        let ahead = TieAhead::default();
        for n in 0..MAX_OBJECTS + 5 {
            ahead.expects_tie(&env(&format!("cus_{n}"), 100));
        }
        assert!(ahead.newest.lock().unwrap().len() <= MAX_OBJECTS);
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
