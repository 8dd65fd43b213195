//! Rule 5: state fetched from Stripe's API (`refetch`, `backfill`), and the queue of objects to
//! fetch again (`refetch_jobs`).
//!
//! A fetch is stamped with the second it began (`k_created`), because the state Stripe returns
//! includes every change made before that moment: it wins over every event created before that
//! second and loses to every event created after it. An event of the same second may be older or
//! newer than the fetch, so the fetched state meets the events of that second as one more tie
//! candidate (no `previous_attributes`, placed in arrival order after every event stored before
//! it): it loses to an event that causally follows it, else the lifecycle decides, else the last
//! arrival wins with the row flagged `uncertain` (and fetched again, in a later second).
//!
//! A fetch that finds the object gone (`deleted: true`, or 404 `resource_missing`) marks it deleted
//! like a delete event of that second does: sticky, holding the last state known.
//!
//! Every fetch is recorded in `fetched` (the newest one that returned the object, and the newest
//! one that found it gone), which is ground truth beside `events`: [`reapply`] lets a rebuild
//! give the same mirror as the live writes did. Like the rest of the mirror this runs inside the
//! writer's transaction and does no other I/O.

use std::borrow::Cow;

use rusqlite::{params, Connection};
use serde_json::Value;

use super::candidate::{Candidate, Text};
use super::lifecycle::Rank;
use super::rows::{insert, load, mark_deleted, update, Keys, Row};
use super::shape::Kind;
use super::ties::{settle, Second};
use super::TieRule;

/// Which command fetched a state (`objects.source`, `fetched.via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// One GET of the object (`refetch`, an uncertain object, the admin's button).
    Refetch,
    /// A page of a list endpoint (`backfill`).
    Backfill,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Refetch => "refetch",
            Via::Backfill => "backfill",
        }
    }

    pub fn parse(text: &str) -> Option<Via> {
        [Via::Refetch, Via::Backfill]
            .into_iter()
            .find(|v| v.as_str() == text)
    }
}

/// What a fetch returned.
#[derive(Debug, Clone, Copy)]
pub enum Found<'a> {
    /// The object: its exact JSON text, and parsed.
    Object { raw: &'a str, object: &'a Value },
    /// `deleted: true`, or 404 `resource_missing`.
    Gone,
}

/// One fetched object, on its way into the mirror.
#[derive(Debug, Clone, Copy)]
pub struct Fetched<'a> {
    pub object_id: &'a str,
    /// The object's type (`customer`); from the object itself when it was returned.
    pub object_type: &'a str,
    /// The Connect account it was fetched on (`Stripe-Account`), `None` for the platform.
    pub account: Option<&'a str>,
    /// Test or live mode of the API key it was fetched with, for objects without a `livemode` of
    /// their own (refunds, subscription items); an object's own field wins.
    pub livemode: Option<bool>,
    /// Unix ms when the fetch began.
    pub began_ms: i64,
    pub via: Via,
    pub found: Found<'a>,
}

/// What applying a fetch did to the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The object was not mirrored; now it is.
    New,
    /// The fetched state replaced an older one.
    Replaced,
    /// An event newer than the fetch holds the object: the fetch changed nothing.
    Stale,
    /// An event of the same second competed; the rule that decided.
    Tie(TieRule),
    /// The object is gone from Stripe: the row is (now) deleted.
    Gone,
    /// A newer fetch of the object was already recorded.
    Superseded,
}

/// What [`apply_fetched`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// The mirrored data (compared as JSON) or the deleted flag differ from before.
    pub changed: bool,
    /// The row is flagged `uncertain` afterwards (a same-second tie fell to the last arrival).
    pub uncertain: bool,
}

/// Records a fetch in `fetched` and applies it to `objects` by rule 5.
pub fn apply_fetched(conn: &Connection, f: &Fetched, now_ms: i64) -> rusqlite::Result<Applied> {
    let before = snapshot(conn, f.object_id)?;
    let after_seq: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")?
        .query_row([], |r| r.get(0))?;
    let recorded = record(conn, f, after_seq)?;
    if !recorded {
        return Ok(Applied {
            outcome: Outcome::Superseded,
            changed: false,
            uncertain: before.as_ref().is_some_and(|b| b.uncertain),
        });
    }
    let outcome = project(conn, f, after_seq, now_ms)?;
    let after = snapshot(conn, f.object_id)?;
    let same = match (&before, &after) {
        (Some(b), Some(a)) => b.data == a.data && b.deleted == a.deleted,
        (None, None) => true,
        _ => false,
    };
    Ok(Applied {
        outcome,
        changed: !same,
        uncertain: after.as_ref().is_some_and(|a| a.uncertain),
    })
}

/// The row as [`apply_fetched`] compares it.
struct Snapshot {
    data: Value,
    deleted: bool,
    uncertain: bool,
}

fn snapshot(conn: &Connection, id: &str) -> rusqlite::Result<Option<Snapshot>> {
    let Some(s) = load(conn, id)? else {
        return Ok(None);
    };
    Ok(Some(Snapshot {
        data: serde_json::from_str(s.data(conn)?).unwrap_or(Value::Null),
        deleted: s.deleted,
        uncertain: s.uncertain,
    }))
}

/// Stores the fetch in `fetched` unless a newer one of the same kind (returned / gone) is there;
/// says whether it did.
fn record(conn: &Connection, f: &Fetched, after_seq: i64) -> rusqlite::Result<bool> {
    let n = match f.found {
        Found::Object { raw, .. } => conn
            .prepare_cached(
                "INSERT INTO fetched (object_id, type, account, livemode, began_ms, after_seq, via, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (object_id) DO UPDATE SET type = excluded.type,
                     account = excluded.account, livemode = excluded.livemode,
                     began_ms = excluded.began_ms, after_seq = excluded.after_seq,
                     via = excluded.via, data = excluded.data
                 WHERE fetched.began_ms IS NULL OR fetched.began_ms <= excluded.began_ms",
            )?
            .execute(params![
                f.object_id,
                f.object_type,
                f.account,
                f.livemode,
                f.began_ms,
                after_seq,
                f.via.as_str(),
                raw
            ])?,
        Found::Gone => conn
            .prepare_cached(
                "INSERT INTO fetched (object_id, type, account, livemode, gone_ms, gone_via)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (object_id) DO UPDATE SET gone_ms = excluded.gone_ms,
                     gone_via = excluded.gone_via
                 WHERE fetched.gone_ms IS NULL OR fetched.gone_ms <= excluded.gone_ms",
            )?
            .execute(params![
                f.object_id,
                f.object_type,
                f.account,
                f.livemode,
                f.began_ms,
                f.via.as_str()
            ])?,
    };
    Ok(n > 0)
}

/// The object's own `livemode`, else the mode of the key it was fetched with.
fn livemode(object: &Value, key_mode: Option<bool>) -> Option<bool> {
    object.get("livemode").and_then(Value::as_bool).or(key_mode)
}

/// Applies a recorded fetch to `objects` (also when a rebuild re-applies it).
fn project(
    conn: &Connection,
    f: &Fetched,
    after_seq: i64,
    now_ms: i64,
) -> rusqlite::Result<Outcome> {
    let second = f.began_ms.div_euclid(1000);
    let stored = load(conn, f.object_id)?;
    let (raw, object) = match f.found {
        Found::Object { raw, object } => (raw, object),
        Found::Gone => {
            // Like a delete stub: the flag, or a placeholder that any real state replaces.
            match &stored {
                Some(s) => mark_deleted(conn, f.object_id, s, second, now_ms)?,
                None => {
                    let stub = serde_json::json!({
                        "id": f.object_id, "object": f.object_type, "deleted": true
                    })
                    .to_string();
                    let row = Row {
                        otype: f.object_type,
                        account: f.account,
                        livemode: f.livemode,
                        data: &stub,
                        at: None,
                        k_created: None,
                        k_rank: None,
                        k_seq: None,
                        source: f.via.as_str(),
                        event_id: None,
                        uncertain: false,
                        keys: Keys::default(),
                    };
                    insert(conn, f.object_id, &row, Some(second), now_ms)?;
                }
            }
            return Ok(Outcome::Gone);
        }
    };
    let otype = object
        .get("object")
        .and_then(Value::as_str)
        .unwrap_or(f.object_type);
    let rank = Rank::of(otype, "", Kind::Other, object);
    let livemode = livemode(object, f.livemode);
    let row = Row {
        otype,
        account: f.account,
        livemode,
        data: raw,
        at: None,
        k_created: Some(second),
        k_rank: rank.status(),
        k_seq: Some(after_seq),
        source: f.via.as_str(),
        event_id: None,
        uncertain: false,
        keys: Keys::of(object),
    };
    let Some(stored) = stored else {
        insert(conn, f.object_id, &row, None, now_ms)?;
        return Ok(Outcome::New);
    };
    match stored.k_created {
        Some(k) if k > second => Ok(Outcome::Stale),
        Some(k) if k == second => {
            let me = Candidate {
                event_id: None,
                seq: after_seq,
                kind: Kind::Other,
                rank,
                data: Cow::Borrowed(object),
                text: Text::Object(Cow::Borrowed(raw)),
                span: None,
                prev: None,
                account: f.account.map(str::to_owned),
                livemode,
                source: f.via.as_str().to_owned(),
                fetched: true,
            };
            let at = Second {
                id: f.object_id,
                otype,
                second,
            };
            let settled = settle(conn, at, &stored, me, None, now_ms)?;
            // No rule needed: one state of that second (a fetch of the same second replaced).
            Ok(settled.rule.map_or(Outcome::Replaced, Outcome::Tie))
        }
        // Older, or a placeholder left by a delete stub.
        _ => {
            update(conn, f.object_id, &row, None, now_ms)?;
            Ok(Outcome::Replaced)
        }
    }
}

/// Re-applies the recorded fetches (of one object, or of all) to `objects`, after a rebuild has
/// re-applied the events; returns how many. Since ties are decided over the set of states of a
/// second, and a fetch's place in arrival order is stored with it, the result is what the live
/// writes gave.
pub fn reapply(conn: &Connection, object_id: Option<&str>, now_ms: i64) -> rusqlite::Result<u64> {
    type FetchRow = (
        String,
        String,
        Option<String>,
        Option<bool>,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
    );
    let rows: Vec<FetchRow> = {
        let mut stmt = conn.prepare_cached(
            "SELECT object_id, type, account, livemode, began_ms, after_seq, via, data, gone_ms,
                    gone_via
             FROM fetched WHERE ?1 IS NULL OR object_id = ?1 ORDER BY object_id",
        )?;
        let rows = stmt.query_map([object_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut n = 0;
    for (id, otype, account, livemode, began, after_seq, via, data, gone_ms, gone_via) in &rows {
        let fetch = |began_ms: i64, via: Via| Fetched {
            object_id: id,
            object_type: otype,
            account: account.as_deref(),
            livemode: *livemode,
            began_ms,
            via,
            found: Found::Gone,
        };
        if let (Some(began), Some(seq), Some(via), Some(text)) = (began, after_seq, via, data) {
            if let (Ok(object), Some(via)) = (serde_json::from_str::<Value>(text), Via::parse(via))
            {
                let f = Fetched {
                    found: Found::Object {
                        raw: text,
                        object: &object,
                    },
                    ..fetch(*began, via)
                };
                project(conn, &f, *seq, now_ms)?;
                n += 1;
            }
        }
        if let (Some(gone), Some(via)) = (gone_ms, gone_via.as_deref().and_then(Via::parse)) {
            project(conn, &fetch(*gone, via), 0, now_ms)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Why an object is to be fetched again (`refetch_jobs.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A same-second tie fell to the last arrival.
    Uncertain,
    /// Someone asked (`stripe-inbox refetch`, the admin's button).
    Operator,
    /// A full backfill did not list it: is it gone?
    Sweep,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Uncertain => "uncertain",
            Reason::Operator => "operator",
            Reason::Sweep => "sweep",
        }
    }
}

/// A request to fetch an object again.
#[derive(Debug, Clone, Copy)]
pub struct RefetchRequest<'a> {
    pub object_id: &'a str,
    pub object_type: &'a str,
    pub account: Option<&'a str>,
    pub reason: Reason,
    /// Unix ms before which it is not fetched.
    pub not_before_ms: i64,
    pub now_ms: i64,
}

/// Queues a refetch. Requests for one object coalesce into one job (one GET): the latest reason,
/// the latest `not_before`; a request made while the fetch is in flight makes it run once more.
pub fn request_refetch(conn: &Connection, r: &RefetchRequest) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO refetch_jobs (object_id, type, account, reason, requested_at, not_before)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (object_id) DO UPDATE SET type = excluded.type,
             account = coalesce(excluded.account, account), reason = excluded.reason,
             requested_at = max(requested_at, excluded.requested_at),
             not_before = max(not_before, excluded.not_before), requests = requests + 1",
    )?
    .execute(params![
        r.object_id,
        r.object_type,
        r.account,
        r.reason.as_str(),
        r.now_ms,
        r.not_before_ms
    ])?;
    Ok(())
}
