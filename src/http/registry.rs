//! The table of open connections: how many each client address holds, which are idle (waiting
//! for a request) and since when, and which idle one to close when room is needed.
//!
//! # Rules
//! - A connection counts under its client's [`limit_key`](super::peers::limit_key) from accept to
//!   close; a trusted proxy's connection counts under no address while it waits between requests
//!   and under the client that `X-Forwarded-For` names while it carries that client's request
//!   (one proxy connection carries many clients' requests in turn).
//! - At `max_connections_per_addr`, an address's own longest-idle connection is closed to make
//!   room for its new one; if none of its connections is idle, the new one is refused.
//! - At `max_connections`, the longest-idle connection of any address is closed to make room; only
//!   when none is idle is the new one refused.
//! - A connection that has written its last answer and only lingers to let the client read it
//!   counts as idle: closing it early loses nothing.
//!
//! Closing is a flag the connection's thread looks at every poll (250 ms), not a second file
//! descriptor per connection: the slot is free at once, the thread ends within a poll.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// The open connections of one listener.
pub(super) struct Registry {
    max: usize,
    per_addr: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next: u64,
    conns: HashMap<u64, Entry>,
    counts: HashMap<IpAddr, usize>,
}

struct Entry {
    /// The address it counts under; `None` for a trusted proxy's connection between requests.
    key: Option<IpAddr>,
    /// Since when it has been waiting for a request; `None` while one is being served.
    idle_since: Option<Instant>,
    closed: Arc<AtomicBool>,
}

/// A connection's place in the table.
pub(super) struct Ticket {
    pub(super) id: u64,
    closed: Arc<AtomicBool>,
}

impl Ticket {
    /// Whether the registry closed this connection to make room for another.
    pub(super) fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Registry {
    pub(super) fn new(max: usize, per_addr: usize) -> Registry {
        Registry {
            max,
            per_addr,
            table: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection counted under `key`, closing idle ones to make room; or says which
    /// limit refuses it.
    pub(super) fn admit(&self, key: Option<IpAddr>, now: Instant) -> Result<Ticket, &'static str> {
        let mut t = self.table();
        if let Some(key) = key {
            if t.count(key) >= self.per_addr {
                match t.longest_idle(|e| e.key == Some(key)) {
                    Some(id) => t.close(id),
                    None => return Err("max_connections_per_addr"),
                }
            }
        }
        if t.conns.len() >= self.max {
            match t.longest_idle(|_| true) {
                Some(id) => t.close(id),
                None => return Err("max_connections"),
            }
        }
        t.next += 1;
        let id = t.next;
        let closed = Arc::new(AtomicBool::new(false));
        if let Some(key) = key {
            *t.counts.entry(key).or_default() += 1;
        }
        t.conns.insert(
            id,
            Entry {
                key,
                idle_since: Some(now),
                closed: Arc::clone(&closed),
            },
        );
        Ok(Ticket { id, closed })
    }

    /// A request has begun: the connection is no longer idle. False when it was closed to make
    /// room meanwhile.
    pub(super) fn busy(&self, ticket: &Ticket) -> bool {
        match self.table().conns.get_mut(&ticket.id) {
            Some(entry) => {
                entry.idle_since = None;
                true
            }
            None => false,
        }
    }

    /// A trusted proxy's connection carries a request of the client `key`: count it there.
    /// False when that client is at its limit (or the connection was closed meanwhile).
    pub(super) fn attribute(&self, ticket: &Ticket, key: IpAddr) -> bool {
        let mut t = self.table();
        let current = match t.conns.get(&ticket.id) {
            Some(entry) => entry.key,
            None => return false,
        };
        if current == Some(key) {
            return true;
        }
        if t.count(key) >= self.per_addr {
            return false;
        }
        t.uncount(current);
        *t.counts.entry(key).or_default() += 1;
        if let Some(entry) = t.conns.get_mut(&ticket.id) {
            entry.key = Some(key);
        }
        true
    }

    /// The connection waits for its next request; a proxy's connection stops counting under the
    /// client it just served (`detach`).
    pub(super) fn idle(&self, ticket: &Ticket, now: Instant, detach: bool) {
        let mut t = self.table();
        let Some(entry) = t.conns.get_mut(&ticket.id) else {
            return;
        };
        entry.idle_since = Some(now);
        if detach {
            let key = entry.key.take();
            t.uncount(key);
        }
    }

    /// The connection has ended.
    pub(super) fn remove(&self, ticket: &Ticket) {
        let mut t = self.table();
        if let Some(entry) = t.conns.remove(&ticket.id) {
            t.uncount(entry.key);
        }
    }

    /// Connections admitted and not yet ended or closed.
    pub(super) fn len(&self) -> usize {
        self.table().conns.len()
    }

    /// How many connections count under `key`.
    #[cfg(test)]
    pub(super) fn count(&self, key: IpAddr) -> usize {
        self.table().count(key)
    }
}

impl Table {
    fn count(&self, key: IpAddr) -> usize {
        self.counts.get(&key).copied().unwrap_or(0)
    }

    fn uncount(&mut self, key: Option<IpAddr>) {
        let Some(key) = key else { return };
        if let Some(n) = self.counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&key);
            }
        }
    }

    fn longest_idle(&self, which: impl Fn(&Entry) -> bool) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, e)| which(e))
            .filter_map(|(id, e)| e.idle_since.map(|since| (since, *id)))
            .min()
            .map(|(_, id)| id)
    }

    fn close(&mut self, id: u64) {
        if let Some(entry) = self.conns.remove(&id) {
            entry.closed.store(true, Ordering::SeqCst);
            self.uncount(entry.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn room_is_made_from_the_longest_idle() {
        let reg = Registry::new(3, 2);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let a1 = reg.admit(Some(a), at(0)).unwrap();
        let a2 = reg.admit(Some(a), at(1)).unwrap();
        // A third from `a` closes a's own longest-idle one.
        let a3 = reg.admit(Some(a), at(2)).unwrap();
        assert!(a1.closed() && !a2.closed());
        assert_eq!(reg.count(a), 2);
        assert!(!reg.busy(&a1), "a closed connection is not served");
        // Both of a's are busy: a's next is refused, others still come in.
        assert!(reg.busy(&a2) && reg.busy(&a3));
        assert_eq!(
            reg.admit(Some(a), at(3)).err(),
            Some("max_connections_per_addr")
        );
        let b1 = reg.admit(Some(b), at(4)).unwrap();
        // Full (3): c's comes in by closing the longest idle, b1 (a's are busy).
        let c1 = reg.admit(Some(c), at(5)).unwrap();
        assert!(b1.closed());
        assert_eq!(reg.len(), 3);
        // All busy: refused.
        assert!(reg.busy(&c1));
        assert_eq!(reg.admit(Some(b), at(6)).err(), Some("max_connections"));
        // An idle one again: the oldest idle goes (a3 idle since 8, a2 since 7).
        reg.idle(&a3, at(8), false);
        reg.idle(&a2, at(7), false);
        let b2 = reg.admit(Some(b), at(9)).unwrap();
        assert!(a2.closed() && !a3.closed());
        reg.remove(&b2);
        reg.remove(&a2);
        assert_eq!((reg.len(), reg.count(a), reg.count(b)), (2, 1, 0));
    }

    #[test]
    fn proxied_connections_count_under_the_client_they_carry() {
        let reg = Registry::new(10, 1);
        let now = Instant::now();
        let (x, y): (IpAddr, IpAddr) = (
            "198.51.100.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        );
        let p1 = reg.admit(None, now).unwrap();
        let p2 = reg.admit(None, now).unwrap();
        assert!(reg.busy(&p1) && reg.busy(&p2));
        assert!(reg.attribute(&p1, x));
        assert!(!reg.attribute(&p2, x), "x is at its limit of 1");
        assert!(reg.attribute(&p2, y));
        reg.idle(&p1, now, true);
        assert_eq!(
            reg.count(x),
            0,
            "an idle proxy connection counts under no client"
        );
        assert!(reg.attribute(&p2, y), "the same client again");
        reg.idle(&p2, now, true);
        assert!(reg.attribute(&p2, x));
        assert_eq!((reg.count(x), reg.count(y)), (1, 0));
    }
}
