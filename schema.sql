-- stripe-inbox schema: an append-only ledger of numbered steps.
--
-- Each step starts with a line "-- step N: summary" and runs once, in one transaction, on the
-- writer connection; PRAGMA user_version records the last step applied. Never edit a step that has
-- shipped: fix forward with a new one. No step ever drops `events`, the ground truth.

-- step 1: the events ledger
CREATE TABLE events (
    id               TEXT PRIMARY KEY,            -- evt_...
    seq              INTEGER NOT NULL UNIQUE,     -- arrival order, assigned by the writer
    type             TEXT NOT NULL,               -- e.g. invoice.paid; unknown types are stored too
    created          INTEGER NOT NULL,            -- event.created, unix seconds
    livemode         INTEGER,                     -- 1, 0, or NULL when the event has none
    account          TEXT,                        -- the Connect account, NULL otherwise
    api_version      TEXT,
    object_id        TEXT,                        -- data.object.id (thin events: related_object.id)
    object_type      TEXT,                        -- data.object.object, e.g. checkout.session
    request_id       TEXT,
    idempotency_key  TEXT,
    thin             INTEGER NOT NULL DEFAULT 0,  -- 1 for v2.core.event notifications
    body             BLOB NOT NULL,               -- the raw bytes exactly as received
    received_at      INTEGER NOT NULL,            -- unix ms of the first delivery
    last_received_at INTEGER NOT NULL,            -- unix ms of the latest delivery
    deliveries       INTEGER NOT NULL DEFAULT 1,  -- how many times it was delivered
    secret_index     INTEGER,                     -- which configured secret matched
    source           TEXT NOT NULL DEFAULT 'webhook',
    decision         TEXT                         -- what the mirror did with it
);
CREATE INDEX events_object ON events (object_id, created);
