//! Rule 4: same-second ties, decided over every event about the object in that second (read back
//! from `events`), so that the winner is a function of the set of events seen and not of their
//! order: causal chain first, then the one-way lifecycle, then the last arrival (flagged
//! `uncertain`).

use std::sync::Arc;

use rusqlite::Connection;
use serde_json::Value;

use super::candidate::{Candidate, EventState, Parsed, Text, MAX_TIE_EVENTS};
use super::json_span::BodySpan;
use super::lifecycle::Status;
use super::rows::{fetched_candidate, load_group, update, Keys, Row, Stored};
use super::shape::{raw_text, Input, Kind, Shape};
use super::tie_cache;
use super::{Decision, TieRule};

/// Distinct data at the tied second, with the candidates that carry it.
pub(super) struct State {
    pub(super) members: Vec<usize>,
}

pub(super) struct Resolution {
    /// Index into the states.
    pub(super) winner: usize,
    /// `None` when one state, or one delete, was left without a tie-break.
    pub(super) rule: Option<TieRule>,
    /// The winner is a delete's state.
    pub(super) tombstone: bool,
}

pub(super) fn tie(
    conn: &Connection,
    input: &Input,
    object: Arc<Value>,
    shape: &Shape,
    stored: &Stored,
    now_ms: i64,
) -> rusqlite::Result<Decision> {
    let delete_at = (shape.kind == Kind::Deleted).then_some(input.created);
    let state = EventState::applied(input, object, shape);
    let me = Candidate {
        text: Text::Object(raw_text(input, &state.data)),
        span: input.object_span.map(|(start, end)| BodySpan {
            seq: input.seq,
            start,
            len: end - start,
        }),
        ..state.candidate(input.seq, input.event_id, input.body, Some(shape.otype))
    };
    let settled = settle(
        conn,
        Second {
            id: shape.id,
            otype: shape.otype,
            second: input.created,
        },
        stored,
        me,
        delete_at,
        now_ms,
    )?;
    // The later events of this second will want this one: keep it as parsed.
    if !input.body.is_empty() {
        tie_cache::put(&Arc::new(Parsed::applied(input, state)));
    }

    // Explain what happened to this event.
    let won = settled.won;
    Ok(match (shape.kind, settled.rule) {
        (Kind::Deleted, _) => Decision::Tombstoned,
        _ if settled.tombstone && !won => Decision::DeletedIgnored,
        (Kind::Created, _) if !won || settled.same_as_stored => Decision::CreatedIgnored,
        // The event carries the state already mirrored: it can only confirm it.
        _ if won && (settled.tombstone || settled.same_as_stored) => Decision::Unchanged,
        (_, None) => Decision::Unchanged,
        (_, Some(rule)) => Decision::TieResolved(rule),
    })
}

/// The object and second being decided.
#[derive(Clone, Copy)]
pub(super) struct Second<'a> {
    pub(super) id: &'a str,
    pub(super) otype: &'a str,
    pub(super) second: i64,
}

/// How a tied second was settled, seen from the newcomer.
pub(super) struct Settled {
    /// The newcomer's state won.
    pub(super) won: bool,
    /// The newcomer's state is the one the row held before.
    pub(super) same_as_stored: bool,
    /// The rule that decided (`None`: one state, or one delete, was left without a tie-break).
    pub(super) rule: Option<TieRule>,
    /// The winner is a delete's state.
    pub(super) tombstone: bool,
}

/// Decides second `at.second` of object `at.id` over every state known for it: the stored events
/// of that second, the newcomer (the event being applied, or a state just fetched), a fetched
/// state of that second (`fetched`), and the stored row itself when none of those is its source
/// (its event was pruned). Writes the winner when the row changes. `delete_at` is the newcomer's
/// delete second, if it is a delete.
pub(super) fn settle(
    conn: &Connection,
    at: Second,
    stored: &Stored,
    newcomer: Candidate,
    delete_at: Option<i64>,
    now_ms: i64,
) -> rusqlite::Result<Settled> {
    // Gather every state of the object at this second.
    let except = newcomer.event_id.clone().unwrap_or_default();
    let group = load_group(conn, at.id, at.second, &except)?;
    let Some(group) = group else {
        // Too many to compare on every arrival: the newcomer wins, flagged for a refetch.
        log::warn!(
            "project: over {MAX_TIE_EVENTS} events in one second, last arrival wins object_id={} second={}",
            at.id,
            at.second
        );
        let text = newcomer.text();
        let row = row_of(at, &newcomer, &text, true);
        update(conn, at.id, &row, delete_at, now_ms)?;
        return Ok(Settled {
            won: true,
            same_as_stored: false,
            rule: Some(TieRule::LastArrival),
            tombstone: newcomer.kind == Kind::Deleted,
        });
    };
    let mut cands: Vec<Candidate> = Vec::with_capacity(group.len() + 3);
    for parsed in &group {
        match parsed.candidate(Some(at.otype)) {
            Some(c) => cands.push(c),
            None => log::debug!(
                "project: tie skips event event_id={} object_id={}",
                parsed.event_id,
                at.id
            ),
        }
    }
    let newcomer_fetched = newcomer.fetched;
    cands.push(newcomer);
    let me = cands.len() - 1;
    // A fetched state of this second competes too; a newly fetched one replaces it.
    if !newcomer_fetched {
        if let Some(c) = fetched_candidate(conn, at.id, at.second, at.otype)? {
            cands.push(c);
        }
    }
    let stored_found = if stored.is_fetched() {
        cands.iter().any(|c| c.fetched)
    } else {
        stored
            .event_id
            .as_deref()
            .is_some_and(|id| cands.iter().any(|c| c.event_id.as_deref() == Some(id)))
    };
    if !stored_found {
        if let Some(c) = stored.candidate(conn, at.otype)? {
            cands.push(c);
        }
    }

    // Decide.
    let states = group_states(&cands);
    let res = resolve(&cands, &states);
    let winner = &states[res.winner];
    let state_of = |pick: &dyn Fn(usize) -> bool| {
        states
            .iter()
            .position(|s| s.members.iter().any(|&i| pick(i)))
    };
    let my_state = state_of(&|i| i == me);
    let stored_state =
        state_of(&|i| cands[i].event_id == stored.event_id && (i != me || !newcomer_fetched));

    // Record the winner, represented by its smallest event id so the row is order-independent.
    // `group_states` never makes an empty state, so `members[0]` exists.
    let rep = winner.members[1..].iter().map(|&i| &cands[i]).fold(
        &cands[winner.members[0]],
        |best, c| {
            if rep_key(c) < rep_key(best) {
                c
            } else {
                best
            }
        },
    );
    let uncertain = res.rule == Some(TieRule::LastArrival);
    let rep_text = rep.text();
    let changed = *rep_text != *stored.data(conn)?
        || rep.event_id != stored.event_id
        || rep.source != stored.source
        || Some(rep.seq) != stored.k_seq
        || uncertain != stored.uncertain
        || delete_at.is_some();
    if changed {
        let row = row_of(at, rep, &rep_text, uncertain);
        update(conn, at.id, &row, delete_at, now_ms)?;
    }
    log::debug!(
        "project: tie object_id={} second={} states={} rule={:?} winner={:?} source={}",
        at.id,
        at.second,
        states.len(),
        res.rule,
        rep.event_id,
        rep.source
    );
    Ok(Settled {
        won: my_state == Some(res.winner),
        same_as_stored: my_state == stored_state,
        rule: res.rule,
        tombstone: res.tombstone,
    })
}

/// The row that records candidate `c` as the state of `at`.
fn row_of<'r>(at: Second<'r>, c: &'r Candidate, text: &'r str, uncertain: bool) -> Row<'r> {
    Row {
        otype: at.otype,
        account: c.account.as_deref(),
        livemode: c.livemode,
        data: text,
        // A copy made by `text()` (re-encoded data) has no place in a body.
        at: c.body_span().filter(|s| s.len == text.len()),
        k_created: Some(at.second),
        k_rank: c.rank.status(),
        k_seq: Some(c.seq),
        source: &c.source,
        event_id: c.event_id.as_deref(),
        uncertain,
        keys: Keys::of(&c.data),
    }
}

/// Orders the events of one state to pick the one recorded: real events before the stored row's
/// own state, then the smallest id.
pub(super) fn rep_key<'c>(c: &'c Candidate) -> (bool, Option<&'c str>) {
    (c.event_id.is_none(), c.event_id.as_deref())
}

/// Groups candidates with equal data into states.
pub(super) fn group_states(cands: &[Candidate]) -> Vec<State> {
    let mut states: Vec<State> = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        match states
            .iter_mut()
            .find(|s| cands[s.members[0]].data == c.data)
        {
            Some(s) => s.members.push(i),
            None => states.push(State { members: vec![i] }),
        }
    }
    states
}

/// Picks the winning state: deletes (and final states) first, then causal, lifecycle, last arrival.
///
/// The result depends only on the set of candidates (and, for last arrival, their `seq`), never
/// on the order of `cands`.
pub(super) fn resolve(cands: &[Candidate], states: &[State]) -> Resolution {
    let has = |s: &State, kind: Kind| s.members.iter().any(|&i| cands[i].kind == kind);

    // A delete's state beats every other state of its second; so does the final state of an
    // object that lives on after its `*.deleted` (a canceled subscription), which the lifecycle
    // puts last.
    let with = |kind: Kind| -> Vec<usize> {
        (0..states.len())
            .filter(|&s| has(&states[s], kind))
            .collect()
    };
    let mut pool = with(Kind::Deleted);
    let tombstone = !pool.is_empty();
    let mut ended = false;
    if !tombstone {
        pool = with(Kind::Final);
        ended = !pool.is_empty() && pool.len() < states.len();
        if pool.is_empty() {
            pool = (0..states.len()).collect();
        }
    }
    if pool.len() == 1 {
        return Resolution {
            winner: pool[0],
            rule: ended.then_some(TieRule::Lifecycle),
            tombstone,
        };
    }

    // Causal: keep the states in terminal components of the "is followed by" graph.
    let n = pool.len();
    let mut reach = vec![vec![false; n]; n];
    for (x, &sx) in pool.iter().enumerate() {
        let x_data = &cands[states[sx].members[0]].data;
        for (y, &sy) in pool.iter().enumerate() {
            reach[x][y] = x != y
                && states[sy].members.iter().any(|&i| {
                    cands[i]
                        .prev
                        .as_ref()
                        .is_some_and(|p| prev_matches(p, x_data))
                });
        }
    }
    // Transitive closure (Warshall); a second is a handful of states.
    for k in 0..n {
        let via = reach[k].clone();
        for row in reach.iter_mut().filter(|row| row[k]) {
            for (to, &through) in row.iter_mut().zip(&via) {
                *to |= through;
            }
        }
    }
    let terminal: Vec<usize> = (0..n)
        .filter(|&x| (0..n).all(|y| !reach[x][y] || reach[y][x]))
        .map(|x| pool[x])
        .collect();
    if terminal.len() == 1 {
        return Resolution {
            winner: terminal[0],
            rule: Some(TieRule::Causal),
            tombstone,
        };
    }
    let pool = if terminal.is_empty() { pool } else { terminal };

    // Lifecycle: the highest rank, if exactly one state has it.
    let use_status = pool.iter().all(|&s| {
        states[s]
            .members
            .iter()
            .all(|&i| cands[i].rank.status != Status::Unknown)
    });
    let key = |s: usize| {
        states[s]
            .members
            .iter()
            .map(|&i| cands[i].rank.key(use_status))
            .fold([i64::MIN; 5], std::cmp::max)
    };
    let best = pool
        .iter()
        .map(|&s| key(s))
        .fold([i64::MIN; 5], std::cmp::max);
    let top: Vec<usize> = pool.iter().copied().filter(|&s| key(s) == best).collect();
    if let [only] = top[..] {
        return Resolution {
            winner: only,
            rule: Some(TieRule::Lifecycle),
            tombstone,
        };
    }

    // Last arrival, flagged uncertain.
    let arrival = |s: usize| states[s].members.iter().map(|&i| cands[i].arrival()).max();
    // `top` holds at least the state that has the best key.
    let mut winner = top[0];
    for &s in &top[1..] {
        if arrival(s) > arrival(winner) {
            winner = s;
        }
    }
    Resolution {
        winner,
        rule: Some(TieRule::LastArrival),
        tombstone,
    }
}

/// True when every key of `prev` (an event's `previous_attributes`) equals the value in `data`.
///
/// Nested objects are compared key by key, since Stripe sends the changed keys of a hash; arrays
/// and scalars must be equal; a missing key counts as `null`. An empty `prev` proves nothing.
pub(super) fn prev_matches(prev: &Value, data: &Value) -> bool {
    match prev.as_object() {
        Some(p) if !p.is_empty() => sub_matches(prev, data),
        _ => false,
    }
}

pub(super) fn sub_matches(prev: &Value, data: &Value) -> bool {
    match (prev, data) {
        (Value::Object(p), Value::Object(d)) => p
            .iter()
            .all(|(k, v)| sub_matches(v, d.get(k).unwrap_or(&Value::Null))),
        _ => prev == data,
    }
}
