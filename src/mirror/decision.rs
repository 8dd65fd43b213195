//! What the mirror did with one event: [`Decision`], stored in `events.decision`, and the coarser
//! [`Outcome`] groups the admin's chart and badges show. One enum, used wherever a decision is
//! stored, shown, filtered or counted; SQL and HTML use [`Decision::as_str`] and
//! [`Decision::parse`], never a spelling of their own.

/// What `apply` did with one event; `as_str` is stored in `events.decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The event's state is now mirrored: first state seen, or newer than the stored one.
    Applied,
    /// A `*.created` event about an object already mirrored: it does not overwrite.
    CreatedIgnored,
    /// Older than the stored state.
    Stale,
    /// Same second and same data as the stored state: it can only confirm it.
    Unchanged,
    /// Same second, different data: the named rule decided. The event may have won or lost;
    /// `objects.event_id` names the event the mirror holds.
    TieResolved(TieRule),
    /// A `*.deleted` event: the row is now a tombstone (and holds this event's state if it is
    /// the newest).
    Tombstoned,
    /// Older than, or as old as, a tombstone: ignored.
    DeletedIgnored,
    /// Nothing to mirror: thin event, no object or no `id`, odd object.
    NoObject,
    /// The projection hit an error when the event arrived (logged); the event is stored, the
    /// mirror was left as it was. `replay` re-applies it once the cause is fixed.
    ProjectionFailed,
}

/// The tie-break rule that decided a same-second conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TieRule {
    /// `previous_attributes` showed which state follows which.
    Causal,
    /// A one-way status (or the event type) showed which state is later.
    Lifecycle,
    /// Nothing showed the order: the last arrival won and the row is flagged `uncertain`.
    LastArrival,
}

impl Decision {
    /// Every decision, in the order the admin's filter menu lists them.
    pub const ALL: [Decision; 11] = [
        Decision::Applied,
        Decision::CreatedIgnored,
        Decision::Stale,
        Decision::Unchanged,
        Decision::TieResolved(TieRule::Causal),
        Decision::TieResolved(TieRule::Lifecycle),
        Decision::TieResolved(TieRule::LastArrival),
        Decision::Tombstoned,
        Decision::DeletedIgnored,
        Decision::NoObject,
        Decision::ProjectionFailed,
    ];

    /// The exact text stored in `events.decision`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Applied => "applied",
            Decision::CreatedIgnored => "created_ignored",
            Decision::Stale => "stale",
            Decision::Unchanged => "unchanged",
            Decision::TieResolved(TieRule::Causal) => "tie_resolved:causal",
            Decision::TieResolved(TieRule::Lifecycle) => "tie_resolved:lifecycle",
            Decision::TieResolved(TieRule::LastArrival) => "tie_resolved:last_arrival",
            Decision::Tombstoned => "tombstoned",
            Decision::DeletedIgnored => "deleted_ignored",
            Decision::NoObject => "no_object",
            Decision::ProjectionFailed => "projection_failed",
        }
    }

    /// The decision stored as `text`, if this build knows it.
    pub fn parse(text: &str) -> Option<Decision> {
        Decision::ALL.into_iter().find(|d| d.as_str() == text)
    }

    /// The group the admin shows this decision in.
    pub fn outcome(&self) -> Outcome {
        match self {
            Decision::Applied => Outcome::Applied,
            Decision::TieResolved(_) => Outcome::Tie,
            Decision::CreatedIgnored
            | Decision::Stale
            | Decision::Unchanged
            | Decision::DeletedIgnored => Outcome::Ignored,
            Decision::Tombstoned => Outcome::Deleted,
            Decision::NoObject => Outcome::NoObject,
            Decision::ProjectionFailed => Outcome::Pending,
        }
    }
}

/// The groups of decisions the dashboard's chart stacks and the badges colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Applied,
    Tie,
    Ignored,
    Deleted,
    NoObject,
    /// Not projected: no decision yet, or `projection_failed`.
    Pending,
}

impl Outcome {
    /// Every group, in stacking order.
    pub const ALL: [Outcome; 6] = [
        Outcome::Applied,
        Outcome::Tie,
        Outcome::Ignored,
        Outcome::Deleted,
        Outcome::NoObject,
        Outcome::Pending,
    ];

    /// The group of a stored decision: `None` (not projected yet) is pending, and a decision this
    /// build does not know counts as ignored.
    pub fn of(decision: Option<&str>) -> Outcome {
        match decision {
            None => Outcome::Pending,
            Some(text) => Decision::parse(text).map_or(Outcome::Ignored, |d| d.outcome()),
        }
    }

    /// A short name, used as a CSS class suffix (`o-applied`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Tie => "tie",
            Outcome::Ignored => "ignored",
            Outcome::Deleted => "deleted",
            Outcome::NoObject => "no_object",
            Outcome::Pending => "pending",
        }
    }

    /// The words the chart's legend uses.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Tie => "tie resolved",
            Outcome::Ignored => "older, ignored",
            Outcome::Deleted => "deleted",
            Outcome::NoObject => "nothing to mirror",
            Outcome::Pending => "not projected",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_strings() {
        let all = [
            (Decision::Applied, "applied"),
            (Decision::CreatedIgnored, "created_ignored"),
            (Decision::Stale, "stale"),
            (Decision::Unchanged, "unchanged"),
            (
                Decision::TieResolved(TieRule::Causal),
                "tie_resolved:causal",
            ),
            (
                Decision::TieResolved(TieRule::Lifecycle),
                "tie_resolved:lifecycle",
            ),
            (
                Decision::TieResolved(TieRule::LastArrival),
                "tie_resolved:last_arrival",
            ),
            (Decision::Tombstoned, "tombstoned"),
            (Decision::DeletedIgnored, "deleted_ignored"),
            (Decision::NoObject, "no_object"),
            (Decision::ProjectionFailed, "projection_failed"),
        ];
        for (decision, text) in all {
            assert_eq!(decision.as_str(), text);
            assert_eq!(Decision::parse(text), Some(decision), "{text} parses back");
        }
        assert_eq!(all.len(), Decision::ALL.len(), "ALL lists every decision");
        assert_eq!(Decision::parse("tie_resolved"), None);
    }

    #[test]
    fn outcome_groups() {
        assert_eq!(Outcome::of(None), Outcome::Pending);
        assert_eq!(Outcome::of(Some("projection_failed")), Outcome::Pending);
        assert_eq!(Outcome::of(Some("tie_resolved:causal")), Outcome::Tie);
        assert_eq!(Outcome::of(Some("stale")), Outcome::Ignored);
        assert_eq!(Outcome::of(Some("tombstoned")), Outcome::Deleted);
        assert_eq!(Outcome::of(Some("something.new")), Outcome::Ignored);
    }
}
