//! The writer's memory of the stored events it parsed for recent same-second ties, so that a
//! burst of events about one object in one second parses each stored event once rather than once
//! for every later event of that second (with four events to a second that is three parses
//! instead of six, and no re-reading of their bodies; `examples/loadgen.rs --same-second 4`).
//!
//! The stored row's own state text is taken from it too when the row's event is kept
//! ([`body_text`]), instead of being read back from that event's body.
//!
//! It is only a cache: a miss reads the event from `events`, as every tie did before it, and what
//! a tie decides does not depend on it. An entry is used only for the event it was read from:
//! same `seq`, same id, same body length (an event's body never changes but to be pruned, to zero
//! bytes). It is emptied whenever the writer rolls work back ([`rollbacks`]), since a row read
//! inside undone work may be gone and its `seq` given to another event.
//!
//! It lives on the writer thread, which owns the one connection that writes: on every other
//! thread (the bulk fills, tests that project on a connection of their own) there is none and a
//! tie reads every time. It holds at most [`MAX_ENTRIES`] events and [`MAX_BODY_BYTES`] of
//! bodies, the oldest going first; nothing is kept unless a tie happens.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;

use super::candidate::Parsed;
use crate::store::writer::rollbacks;

/// Events kept: enough for every connection's burst to find its second's earlier events.
pub const MAX_ENTRIES: usize = 256;
/// Body bytes kept (the parsed states take about as much again, and a few times more).
pub const MAX_BODY_BYTES: usize = 1 << 20;

thread_local! {
    static CACHE: RefCell<TieCache> = RefCell::new(TieCache::default());
}

/// The cached parse of event `seq`, if it is the one of this id and body length.
pub(super) fn get(seq: i64, event_id: &str, body_len: usize) -> Option<Arc<Parsed>> {
    let epoch = rollbacks()?;
    CACHE.with(|c| c.borrow_mut().at(epoch).get(seq, event_id, body_len))
}

/// The text at `start..start + len` of the body of event `seq`, if the cache holds that event
/// under this id: the stored row's state, which lies in the body of the event it came from, without
/// reading it back from `events`. Retention never prunes a body an object's state lies in, so the
/// cached body is the stored one; a span that does not fit it, or is not UTF-8, is a miss.
pub(super) fn body_text(seq: i64, event_id: &str, start: usize, len: usize) -> Option<String> {
    let epoch = rollbacks()?;
    CACHE.with(|c| {
        c.borrow_mut()
            .at(epoch)
            .body_text(seq, event_id, start, len)
    })
}

/// Keeps a parse, on the writer thread.
pub(super) fn put(parsed: &Arc<Parsed>) {
    if let Some(epoch) = rollbacks() {
        CACHE.with(|c| c.borrow_mut().at(epoch).put(Arc::clone(parsed)));
    }
}

#[derive(Default)]
struct TieCache {
    /// The writer's rollback count the entries were read under.
    epoch: u64,
    by_seq: HashMap<i64, Arc<Parsed>>,
    /// Insertion order, oldest first.
    order: VecDeque<i64>,
    body_bytes: usize,
    free: Freer,
}

impl TieCache {
    /// The cache, emptied first if work was rolled back since its entries were read.
    fn at(&mut self, epoch: u64) -> &mut TieCache {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.order.clear();
            self.body_bytes = 0;
            for (_, old) in self.by_seq.drain() {
                self.free.push(old);
            }
        }
        self
    }

    fn get(&self, seq: i64, event_id: &str, body_len: usize) -> Option<Arc<Parsed>> {
        self.by_seq
            .get(&seq)
            .filter(|p| p.event_id == event_id && p.body.len() == body_len)
            .cloned()
    }

    fn body_text(&self, seq: i64, event_id: &str, start: usize, len: usize) -> Option<String> {
        let parsed = self.by_seq.get(&seq).filter(|p| p.event_id == event_id)?;
        let bytes = parsed.body.get(start..start.checked_add(len)?)?;
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }

    fn put(&mut self, parsed: Arc<Parsed>) {
        let len = parsed.body.len();
        if len > MAX_BODY_BYTES {
            return;
        }
        if let Some(old) = self.by_seq.remove(&parsed.seq) {
            self.body_bytes -= old.body.len();
            self.order.retain(|&s| s != old.seq);
            self.free.push(old);
        }
        while self.order.len() >= MAX_ENTRIES || self.body_bytes + len > MAX_BODY_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.by_seq.remove(&oldest) {
                self.body_bytes -= old.body.len();
                self.free.push(old);
            }
        }
        self.order.push_back(parsed.seq);
        self.body_bytes += len;
        self.by_seq.insert(parsed.seq, parsed);
    }
}

/// Entries let go are freed on a thread of their own, `tie-cache-free`, started at the first
/// batch: a parsed state is a tree of small allocations, and freeing them was 6.7% of the
/// writer's time in a same-second burst (`loadgen --same-second 4`), on the thread that every
/// event waits for. They go in batches, so that the freeing thread wakes once per
/// [`FREE_BATCH`] entries. Where that thread cannot be started, they are freed here.
#[derive(Default)]
struct Freer {
    batch: Vec<Arc<Parsed>>,
    to: Option<Sender<Vec<Arc<Parsed>>>>,
    unavailable: bool,
}

const FREE_BATCH: usize = 32;

impl Freer {
    fn push(&mut self, old: Arc<Parsed>) {
        self.batch.push(old);
        if self.batch.len() < FREE_BATCH {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if self.to.is_none() && !self.unavailable {
            let (tx, rx) = mpsc::channel::<Vec<Arc<Parsed>>>();
            match std::thread::Builder::new()
                .name("tie-cache-free".into())
                .spawn(move || rx.into_iter().for_each(drop))
            {
                Ok(_) => self.to = Some(tx),
                Err(e) => {
                    log::warn!("tie cache frees on the writer thread: {e}");
                    self.unavailable = true;
                }
            }
        }
        if let Some(to) = &self.to {
            // If the thread is gone, the batch comes back in the error and is freed here.
            let _ = to.send(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(seq: i64, id: &str, body: &[u8]) -> Arc<Parsed> {
        Arc::new(Parsed::new(
            seq,
            id.to_owned(),
            "customer.updated",
            body.to_vec(),
            "cus_1",
        ))
    }

    #[test]
    fn an_entry_serves_only_its_own_event() {
        let mut cache = TieCache::default();
        let body = br#"{"type":"customer.updated","data":{"object":{"id":"cus_1","name":"A"}}}"#;
        cache.put(parsed(7, "evt_a", body));
        let hit = cache.get(7, "evt_a", body.len()).expect("its own event");
        assert_eq!(hit.candidate(None).expect("a state").data["name"], "A");
        // Another event given the same seq after a rollback, the same event pruned, another seq.
        assert!(cache.get(7, "evt_b", body.len()).is_none());
        assert!(cache.get(7, "evt_a", 0).is_none());
        assert!(cache.get(8, "evt_a", body.len()).is_none());
    }

    #[test]
    fn a_span_of_a_body_is_read_only_from_its_own_event() {
        let mut cache = TieCache::default();
        let body = "{\"data\":{\"object\":{\"id\":\"cus_1\",\"name\":\"Zoë\"}}}".as_bytes();
        cache.put(parsed(7, "evt_a", body));
        let start = body.iter().position(|&b| b == b'{').unwrap() + 9;
        let span = &body[start..body.len() - 2];
        let text = cache.body_text(7, "evt_a", start, span.len());
        assert_eq!(text.as_deref().map(str::as_bytes), Some(span));
        assert!(cache.body_text(7, "evt_b", start, span.len()).is_none());
        assert!(cache.body_text(8, "evt_a", start, span.len()).is_none());
        assert!(cache.body_text(7, "evt_a", start, body.len()).is_none());
        assert!(cache.body_text(7, "evt_a", usize::MAX, 2).is_none());
        // Half of the two-byte 'ë' is no text.
        let e = body.windows(2).position(|w| w == "ë".as_bytes()).unwrap();
        assert!(cache.body_text(7, "evt_a", e, 1).is_none());
    }

    #[test]
    fn it_keeps_the_newest_within_its_bounds() {
        let mut cache = TieCache::default();
        for seq in 0..(MAX_ENTRIES as i64 + 10) {
            cache.put(parsed(seq, &format!("evt_{seq}"), b"{}"));
        }
        assert_eq!(cache.by_seq.len(), MAX_ENTRIES);
        assert!(cache.get(9, "evt_9", 2).is_none());
        assert!(cache.get(10, "evt_10", 2).is_some());

        let big = vec![b' '; MAX_BODY_BYTES / 2 + 1];
        cache.put(parsed(1000, "evt_big1", &big));
        cache.put(parsed(1001, "evt_big2", &big));
        assert!(cache.body_bytes <= MAX_BODY_BYTES);
        assert!(cache.get(1000, "evt_big1", big.len()).is_none());
        assert!(cache.get(1001, "evt_big2", big.len()).is_some());

        // Putting an event again replaces it rather than counting it twice.
        cache.put(parsed(1001, "evt_big2", &big));
        assert_eq!(
            cache.body_bytes,
            cache.by_seq.values().map(|p| p.body.len()).sum::<usize>()
        );
    }

    #[test]
    fn a_rollback_empties_it() {
        let mut cache = TieCache::default();
        cache.at(3).put(parsed(1, "evt_a", b"{}"));
        assert!(cache.at(3).get(1, "evt_a", 2).is_some());
        assert!(cache.at(4).get(1, "evt_a", 2).is_none());
        assert_eq!(cache.body_bytes, 0);
    }

    #[test]
    fn entries_let_go_are_freed_in_batches_elsewhere() {
        let mut free = Freer::default();
        let first = parsed(0, "evt_0", b"{}");
        let watch = Arc::downgrade(&first);
        free.push(first);
        for seq in 1..FREE_BATCH as i64 - 1 {
            free.push(parsed(seq, "evt", b"{}"));
        }
        // Not yet a batch: still held.
        assert!(watch.upgrade().is_some());
        free.push(parsed(99, "evt", b"{}"));
        assert!(free.batch.is_empty() && free.to.is_some());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while watch.upgrade().is_some() {
            assert!(std::time::Instant::now() < deadline, "never freed");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn only_the_writer_thread_keeps_anything() {
        // A test thread is not the writer thread.
        let p = parsed(1, "evt_a", b"{}");
        put(&p);
        assert!(get(1, "evt_a", 2).is_none());
    }
}
