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

-- step 2: the mirror: objects with their ordering key and tombstones, typed views
-- One row per Stripe object id: the state of the event that won under the projection rules.
-- Derived state: `replay --rebuild` may empty it and re-project it from `events`.
CREATE TABLE objects (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,                 -- data.object.object: customer, subscription, checkout.session ...
    account     TEXT,                          -- Connect account of the event, NULL for the platform
    livemode    INTEGER CHECK (livemode IN (0, 1)),
    data        TEXT NOT NULL,                 -- exact JSON text of the winning event's data.object
    -- Ordering key. k_created: event.created second of the state (NULL only for a placeholder left by
    -- a delete stub, which any state replaces; for source = 'refetch', the second the fetch began).
    -- Ties within a second are re-decided from `events`; k_rank (one-way status rank of data, NULL
    -- where the type has none) and k_seq (events.seq of event_id) explain the row.
    k_created   INTEGER,
    k_rank      INTEGER,
    k_seq       INTEGER,
    source      TEXT NOT NULL DEFAULT 'event' CHECK (source IN ('event', 'refetch')),
    event_id    TEXT,                          -- event that wrote data (smallest id among equal states)
    deleted     INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),  -- sticky: a *.deleted event was seen
    deleted_at  INTEGER,                       -- newest *.deleted event.created second
    uncertain   INTEGER NOT NULL DEFAULT 0 CHECK (uncertain IN (0, 1)), -- a same-second tie fell to last arrival
    first_seen  INTEGER NOT NULL,              -- unix ms
    updated_at  INTEGER NOT NULL               -- unix ms
);
CREATE INDEX objects_type ON objects (type);
CREATE INDEX objects_customer ON objects (json_extract(data, '$.customer'));
CREATE INDEX objects_uncertain ON objects (uncertain) WHERE uncertain = 1;

-- Same-second ties read the other events about the object from the ledger through
-- events_object (object_id, created), created with the events table.

-- Typed views. Every view ends with the same bookkeeping columns; metadata is JSON text;
-- booleans are 0/1; times are unix seconds. `deleted` on subscriptions means Stripe sent
-- customer.subscription.deleted (status canceled).
CREATE VIEW customers AS
SELECT id,
       json_extract(data, '$.email') AS email,
       json_extract(data, '$.name') AS name,
       json_extract(data, '$.phone') AS phone,
       json_extract(data, '$.description') AS description,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.balance') AS balance,
       json_extract(data, '$.delinquent') AS delinquent,
       json_extract(data, '$.invoice_settings.default_payment_method') AS default_payment_method,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'customer';

CREATE VIEW subscriptions AS
SELECT id,
       json_extract(data, '$.customer') AS customer,
       json_extract(data, '$.status') AS status,
       coalesce(json_extract(data, '$.current_period_start'),
                json_extract(data, '$.items.data[0].current_period_start')) AS current_period_start,
       coalesce(json_extract(data, '$.current_period_end'),
                json_extract(data, '$.items.data[0].current_period_end')) AS current_period_end,
       json_extract(data, '$.cancel_at_period_end') AS cancel_at_period_end,
       json_extract(data, '$.cancel_at') AS cancel_at,
       json_extract(data, '$.canceled_at') AS canceled_at,
       json_extract(data, '$.ended_at') AS ended_at,
       json_extract(data, '$.trial_end') AS trial_end,
       json_extract(data, '$.items.data[0].price.id') AS price,
       json_extract(data, '$.items.data[0].price.product') AS product,
       json_extract(data, '$.items.data[0].quantity') AS quantity,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.latest_invoice') AS latest_invoice,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'subscription';

CREATE VIEW invoices AS
SELECT id,
       json_extract(data, '$.customer') AS customer,
       coalesce(json_extract(data, '$.subscription'),
                json_extract(data, '$.parent.subscription_details.subscription')) AS subscription,
       json_extract(data, '$.status') AS status,
       json_extract(data, '$.number') AS number,
       json_extract(data, '$.amount_due') AS amount_due,
       json_extract(data, '$.amount_paid') AS amount_paid,
       json_extract(data, '$.amount_remaining') AS amount_remaining,
       json_extract(data, '$.total') AS total,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.customer_email') AS customer_email,
       json_extract(data, '$.hosted_invoice_url') AS hosted_invoice_url,
       json_extract(data, '$.period_start') AS period_start,
       json_extract(data, '$.period_end') AS period_end,
       json_extract(data, '$.due_date') AS due_date,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'invoice';

CREATE VIEW payment_intents AS
SELECT id,
       json_extract(data, '$.customer') AS customer,
       json_extract(data, '$.status') AS status,
       json_extract(data, '$.amount') AS amount,
       json_extract(data, '$.amount_received') AS amount_received,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.latest_charge') AS latest_charge,
       json_extract(data, '$.description') AS description,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'payment_intent';

CREATE VIEW charges AS
SELECT id,
       json_extract(data, '$.customer') AS customer,
       json_extract(data, '$.payment_intent') AS payment_intent,
       json_extract(data, '$.status') AS status,
       json_extract(data, '$.amount') AS amount,
       json_extract(data, '$.amount_captured') AS amount_captured,
       json_extract(data, '$.amount_refunded') AS amount_refunded,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.paid') AS paid,
       json_extract(data, '$.captured') AS captured,
       json_extract(data, '$.refunded') AS refunded,
       json_extract(data, '$.disputed') AS disputed,
       json_extract(data, '$.billing_details.email') AS email,
       json_extract(data, '$.receipt_url') AS receipt_url,
       json_extract(data, '$.failure_code') AS failure_code,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'charge';

CREATE VIEW refunds AS
SELECT id,
       json_extract(data, '$.charge') AS charge,
       json_extract(data, '$.payment_intent') AS payment_intent,
       json_extract(data, '$.status') AS status,
       json_extract(data, '$.amount') AS amount,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.reason') AS reason,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'refund';

CREATE VIEW checkout_sessions AS
SELECT id,
       json_extract(data, '$.customer') AS customer,
       coalesce(json_extract(data, '$.customer_details.email'),
                json_extract(data, '$.customer_email')) AS email,
       json_extract(data, '$.status') AS status,
       json_extract(data, '$.payment_status') AS payment_status,
       json_extract(data, '$.mode') AS mode,
       json_extract(data, '$.amount_subtotal') AS amount_subtotal,
       json_extract(data, '$.amount_total') AS amount_total,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.payment_intent') AS payment_intent,
       json_extract(data, '$.subscription') AS subscription,
       json_extract(data, '$.invoice') AS invoice,
       json_extract(data, '$.client_reference_id') AS client_reference_id,
       json_extract(data, '$.expires_at') AS expires_at,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'checkout.session';

CREATE VIEW products AS
SELECT id,
       json_extract(data, '$.name') AS name,
       json_extract(data, '$.active') AS active,
       json_extract(data, '$.description') AS description,
       json_extract(data, '$.default_price') AS default_price,
       json_extract(data, '$.type') AS product_type,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       json_extract(data, '$.updated') AS updated,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'product';

CREATE VIEW prices AS
SELECT id,
       json_extract(data, '$.product') AS product,
       json_extract(data, '$.active') AS active,
       json_extract(data, '$.unit_amount') AS unit_amount,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.type') AS price_type,
       json_extract(data, '$.recurring.interval') AS interval,
       json_extract(data, '$.recurring.interval_count') AS interval_count,
       json_extract(data, '$.lookup_key') AS lookup_key,
       json_extract(data, '$.nickname') AS nickname,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'price';

-- step 3: indexes for the admin pages
-- The events list walks type and decision newest first, and the dashboard counts by arrival time
-- and decision: each is an index range instead of a scan of the ledger. Customers are found by
-- email in any case. (Their cost on ingest is measured in README.md, "The admin page".)
CREATE INDEX events_type_seq ON events (type, seq);
CREATE INDEX events_decision_seq ON events (decision, seq);
CREATE INDEX events_received ON events (received_at, decision);
CREATE INDEX objects_email ON objects (lower(json_extract(data, '$.email'))) WHERE type = 'customer';

-- step 4: forwarding to the shop's app: deliveries, their lanes and leases, every attempt
-- One row per (event, destination), made in the transaction that stores the event. A lane is what
-- leaves one at a time and in order: the event's object, or the event itself when it names none.
-- Within a lane rows leave in (k_created, k_tie, k_seq) order; `head` marks the lane's first
-- pending or in-flight row, the only one a sender may claim. A claim sets the lease and moves
-- next_attempt_at to the lease's expiry, so "due" is next_attempt_at <= now for a pending row and
-- for one whose process died alike (src/forward/queue.rs, lease.rs).
CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY,
    event_id         TEXT NOT NULL,               -- events.id
    destination      TEXT NOT NULL,               -- the [[forward]] name
    object_id        TEXT,                        -- the event's object; NULL when it names none
    lane             TEXT NOT NULL,               -- object_id, or event_id when there is none
    k_created        INTEGER NOT NULL,            -- event.created, unix seconds
    k_tie            INTEGER NOT NULL DEFAULT 0,  -- the mirror's order within that second
    k_seq            INTEGER NOT NULL,            -- events.seq: arrival
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'in_flight', 'done', 'dead')),
    head             INTEGER NOT NULL DEFAULT 0 CHECK (head IN (0, 1)),
    attempts         INTEGER NOT NULL DEFAULT 0,  -- attempts begun (counted when claimed)
    created_at       INTEGER NOT NULL,            -- unix ms: when the event arrived
    retry_from       INTEGER NOT NULL,            -- unix ms the retry budget counts from
    next_attempt_at  INTEGER NOT NULL,            -- unix ms: settle, retry, or lease expiry
    last_status      INTEGER,                     -- HTTP status of the last attempt (NULL: none)
    last_error       TEXT,                        -- short reason of the last failure
    lease_owner      TEXT,                        -- process and sender holding it in flight
    lease_expires_at INTEGER,                     -- unix ms
    delivered_at     INTEGER,                     -- unix ms the app's 2xx was committed
    -- One row per (event, destination), keyed by the event's arrival number rather than its id:
    -- it only grows, so this index is appended to instead of written at a random page per event.
    UNIQUE (k_seq, destination)
);
-- A lane's waiting rows in order (the head, the tie order, a live lease in the lane).
CREATE INDEX deliveries_lane ON deliveries (destination, lane, k_created, k_tie, k_seq)
    WHERE state IN ('pending', 'in_flight');
-- The heads by due time: a claim is a range of this, however large the table.
CREATE INDEX deliveries_due ON deliveries (destination, next_attempt_at) WHERE head = 1;
-- The admin's list (by state and destination, newest first) and the dashboard's counts.
CREATE INDEX deliveries_state ON deliveries (state, destination, id);

CREATE TABLE delivery_attempts (
    delivery_id INTEGER NOT NULL,                 -- deliveries.id
    attempt     INTEGER NOT NULL,                 -- 1, 2, ...
    started_at  INTEGER NOT NULL,                 -- unix ms
    latency_ms  INTEGER NOT NULL,
    status      INTEGER,                          -- HTTP status; NULL when there was no answer
    outcome     TEXT NOT NULL CHECK (outcome IN ('done', 'retry', 'dead')),
    error       TEXT,                             -- short reason (never a secret)
    PRIMARY KEY (delivery_id, attempt)
) WITHOUT ROWID;

-- step 5: the Stripe API client: fetched states, the refetch queue, cursors, connect, API runs
-- Where an object's state came from gains 'backfill' (listed by `stripe-inbox backfill`) beside
-- 'event' and 'refetch' (one GET of the object). SQLite cannot change a CHECK constraint, so
-- `objects` is rebuilt the way SQLite documents it (create, copy with the rowids, drop, rename);
-- legacy_alter_table keeps the rename from touching the typed views, which name the table and so
-- point at the new one. The indexes go with the old table and are made again.
-- In the same copy `customer.subscription.deleted` stops being a delete (design.md rule 2): Stripe
-- keeps a canceled subscription retrievable, so the row holds its final `canceled` state with
-- deleted = 0 (the typed view `subscriptions` keeps its `deleted` column, now always 0). Stripe's
-- API cannot delete a subscription, so every deleted subscription row came from that event. The
-- event still wins its second as before (mirror/mod.rs), so this copy equals a rebuild and no
-- `replay --rebuild` is needed; `check` compares the mirror with a rebuild all the same. The
-- decisions recorded for earlier customer.subscription.deleted events keep reading `tombstoned`
-- (what was done when they arrived) until a rebuild records them again.
PRAGMA legacy_alter_table = ON;
CREATE TABLE objects_new (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    account     TEXT,
    livemode    INTEGER CHECK (livemode IN (0, 1)),
    data        TEXT NOT NULL,                 -- exact JSON text of the winning event's data.object, or of the fetched object
    -- k_created: event.created second, or the second the fetch began (source refetch/backfill).
    k_created   INTEGER,
    k_rank      INTEGER,
    k_seq       INTEGER,                       -- events.seq of event_id; for a fetched state, MAX(events.seq) when it was fetched
    source      TEXT NOT NULL DEFAULT 'event' CHECK (source IN ('event', 'refetch', 'backfill')),
    event_id    TEXT,                          -- NULL for a fetched state
    deleted     INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),  -- sticky: gone from Stripe (a delete event, or a GET said so)
    deleted_at  INTEGER,                       -- newest second a delete was seen
    uncertain   INTEGER NOT NULL DEFAULT 0 CHECK (uncertain IN (0, 1)),
    first_seen  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
INSERT INTO objects_new (rowid, id, type, account, livemode, data, k_created, k_rank, k_seq, source,
                         event_id, deleted, deleted_at, uncertain, first_seen, updated_at)
SELECT rowid, id, type, account, livemode, data, k_created, k_rank, k_seq, source, event_id,
       CASE WHEN type = 'subscription' THEN 0 ELSE deleted END,
       CASE WHEN type = 'subscription' THEN NULL ELSE deleted_at END,
       uncertain, first_seen, updated_at
FROM objects;
DROP TABLE objects;
ALTER TABLE objects_new RENAME TO objects;
PRAGMA legacy_alter_table = OFF;
CREATE INDEX objects_type ON objects (type);
CREATE INDEX objects_customer ON objects (json_extract(data, '$.customer'));
CREATE INDEX objects_uncertain ON objects (uncertain) WHERE uncertain = 1;
CREATE INDEX objects_email ON objects (lower(json_extract(data, '$.email'))) WHERE type = 'customer';

-- What Stripe's API returned for an object (design.md rule 5): ground truth beside `events`, so that
-- `replay --rebuild` and `check` re-apply it. One row per object with the newest fetch that returned
-- it and the newest fetch that found it gone; an older fetch can never win over a newer one.
CREATE TABLE fetched (
    object_id   TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    account     TEXT,                          -- the Connect account it was fetched on (Stripe-Account)
    livemode    INTEGER CHECK (livemode IN (0, 1)),
    began_ms    INTEGER,                       -- unix ms the newest fetch that returned it began
    after_seq   INTEGER,                       -- MAX(events.seq) then: its place in arrival order
    via         TEXT CHECK (via IN ('refetch', 'backfill')),
    data        TEXT,                          -- the object's JSON as returned (NULL: never returned)
    gone_ms     INTEGER,                       -- unix ms the newest fetch that found it gone began
    gone_via    TEXT CHECK (gone_via IN ('refetch', 'backfill'))
);

-- Objects to GET again. One row per object: a burst of requests for one object is one fetch, and a
-- lease (owner, expiry) keeps a second fetch from starting while one is in flight.
CREATE TABLE refetch_jobs (
    object_id    TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    account      TEXT,
    reason       TEXT NOT NULL,                -- uncertain | operator | sweep
    requested_at INTEGER NOT NULL,             -- unix ms of the newest request
    not_before   INTEGER NOT NULL,             -- unix ms; after an uncertain second, the next second
    lease_owner  TEXT,
    lease_until  INTEGER,                      -- unix ms; an expired lease may be taken over
    requests     INTEGER NOT NULL DEFAULT 1,   -- requests coalesced into this job
    claimed      INTEGER,                      -- `requests` when the lease was taken: one more runs it again
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX refetch_jobs_due ON refetch_jobs (not_before);

-- Where the Stripe client stands: `backfill:<type>` (a pass under way: the last id listed, when the
-- pass began, its counts so far) and `reconcile` (the high-water mark: /v1/events was read in full up
-- to `mark`, unix seconds).
CREATE TABLE stripe_cursors (
    name        TEXT PRIMARY KEY,
    position    TEXT,                          -- backfill: the starting_after id (NULL: from the start)
    mark        INTEGER,                       -- backfill: unix ms the pass began; reconcile: unix seconds
    counts      TEXT,                          -- backfill: the pass's counts so far, JSON
    done        INTEGER NOT NULL DEFAULT 0 CHECK (done IN (0, 1)),
    updated_at  INTEGER NOT NULL
);

-- `stripe-inbox connect`: the one write the inbox makes in Stripe. The idempotency key is stored
-- here before the first attempt, so a request whose answer was lost is sent again with the same key
-- (and Stripe replays the answer, signing secret included) instead of creating a second endpoint.
CREATE TABLE connect_requests (
    url             TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL,
    params          TEXT NOT NULL,             -- the form sent: a changed request gets a new key
    created_at      INTEGER NOT NULL,          -- unix ms; Stripe forgets keys after 24 h
    endpoint_id     TEXT,                      -- we_..., once Stripe answered 2xx
    outcome         TEXT                       -- NULL while no answer is known; 'created', or Stripe's error
);

-- The last backfill and reconcile (for the dashboard), and the last API errors (at most 100).
CREATE TABLE stripe_runs (
    kind        TEXT PRIMARY KEY,              -- backfill | reconcile
    started_at  INTEGER NOT NULL,              -- unix ms
    finished_at INTEGER,
    ok          INTEGER CHECK (ok IN (0, 1)),
    summary     TEXT NOT NULL                  -- one line: what it found, or why it failed
);
CREATE TABLE stripe_errors (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,              -- unix ms
    request     TEXT NOT NULL,                 -- GET /v1/customers/cus_...
    status      INTEGER,                       -- NULL: no answer (connection failed, timed out)
    type        TEXT,
    code        TEXT,
    message     TEXT NOT NULL,
    request_id  TEXT
);

-- step 6: the mirror refers to its state's text in the event body instead of copying it
-- The state an object holds is almost always `data.object` of one stored event, byte for byte, so
-- `object_rows` keeps where that text lies (`body_seq`: the event's seq; `data_start`, `data_len`:
-- the byte span in its body) instead of a second copy: about 40% less written per event and on
-- disk. `data` is kept inline only for what has no event body (a state fetched from Stripe's API,
-- and rows from before this step). `objects` becomes a view with the same columns as before (and
-- the object's `rowid`), so every query of it (the typed views, the read API, sqlite3 users) is
-- unchanged; the projection writes `object_rows`. Retention already keeps the body of the event an
-- object's state comes from. `customer` and `email` (lowercased) become real columns, filled from
-- the object when its state is written, so their indexes no longer parse JSON on every write.
-- Derived state: this copies the rows with their rowids; `replay --rebuild` would give the same.
DROP VIEW customers;
DROP VIEW subscriptions;
DROP VIEW invoices;
DROP VIEW payment_intents;
DROP VIEW charges;
DROP VIEW refunds;
DROP VIEW checkout_sessions;
DROP VIEW products;
DROP VIEW prices;
CREATE TABLE object_rows (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,                 -- data.object.object: customer, subscription, checkout.session ...
    account     TEXT,                          -- Connect account, NULL for the platform
    livemode    INTEGER CHECK (livemode IN (0, 1)),
    data        TEXT,                          -- the state's JSON inline; NULL when body_seq says where it is
    body_seq    INTEGER,                       -- events.seq whose body holds the state's exact text
    data_start  INTEGER,                       -- its byte offset in that body
    data_len    INTEGER,                       -- its length in bytes
    customer    TEXT,                          -- the state's `customer` (an id), for objects_customer
    email       TEXT,                          -- the state's `email`, lowercased, for objects_email
    k_created   INTEGER,                       -- event.created second, or the second a fetch began
    k_rank      INTEGER,
    k_seq       INTEGER,                       -- events.seq of event_id; for a fetched state, MAX(events.seq) when fetched
    source      TEXT NOT NULL DEFAULT 'event' CHECK (source IN ('event', 'refetch', 'backfill')),
    event_id    TEXT,                          -- the event whose state is held; NULL for a fetched state
    deleted     INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    deleted_at  INTEGER,
    uncertain   INTEGER NOT NULL DEFAULT 0 CHECK (uncertain IN (0, 1)),
    first_seen  INTEGER NOT NULL,              -- unix ms
    updated_at  INTEGER NOT NULL,              -- unix ms
    CHECK (data IS NOT NULL OR (body_seq IS NOT NULL AND data_start >= 0 AND data_len > 0))
);
INSERT INTO object_rows (rowid, id, type, account, livemode, data, customer, email, k_created,
                         k_rank, k_seq, source, event_id, deleted, deleted_at, uncertain,
                         first_seen, updated_at)
SELECT rowid, id, type, account, livemode, data,
       CASE json_type(data, '$.customer') WHEN 'text' THEN json_extract(data, '$.customer') END,
       CASE json_type(data, '$.email') WHEN 'text' THEN lower(json_extract(data, '$.email')) END,
       k_created, k_rank, k_seq, source, event_id, deleted, deleted_at, uncertain, first_seen,
       updated_at
FROM objects;
DROP TABLE objects;
CREATE INDEX objects_type ON object_rows (type);
CREATE INDEX objects_customer ON object_rows (customer) WHERE customer IS NOT NULL;
CREATE INDEX objects_uncertain ON object_rows (uncertain) WHERE uncertain = 1;
CREATE INDEX objects_email ON object_rows (email) WHERE email IS NOT NULL;
CREATE VIEW objects AS
SELECT o.rowid AS rowid, o.id, o.type, o.account, o.livemode,
       coalesce(o.data, CAST(substr(e.body, o.data_start + 1, o.data_len) AS TEXT)) AS data,
       o.k_created, o.k_rank, o.k_seq, o.source, o.event_id, o.deleted, o.deleted_at,
       o.uncertain, o.first_seen, o.updated_at, o.customer, o.email
FROM object_rows o LEFT JOIN events e ON e.seq = o.body_seq;

CREATE VIEW customers AS
SELECT id,
       json_extract(data, '$.email') AS email,
       json_extract(data, '$.name') AS name,
       json_extract(data, '$.phone') AS phone,
       json_extract(data, '$.description') AS description,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.balance') AS balance,
       json_extract(data, '$.delinquent') AS delinquent,
       json_extract(data, '$.invoice_settings.default_payment_method') AS default_payment_method,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'customer';

CREATE VIEW subscriptions AS
SELECT id,
       customer AS customer,
       json_extract(data, '$.status') AS status,
       coalesce(json_extract(data, '$.current_period_start'),
                json_extract(data, '$.items.data[0].current_period_start')) AS current_period_start,
       coalesce(json_extract(data, '$.current_period_end'),
                json_extract(data, '$.items.data[0].current_period_end')) AS current_period_end,
       json_extract(data, '$.cancel_at_period_end') AS cancel_at_period_end,
       json_extract(data, '$.cancel_at') AS cancel_at,
       json_extract(data, '$.canceled_at') AS canceled_at,
       json_extract(data, '$.ended_at') AS ended_at,
       json_extract(data, '$.trial_end') AS trial_end,
       json_extract(data, '$.items.data[0].price.id') AS price,
       json_extract(data, '$.items.data[0].price.product') AS product,
       json_extract(data, '$.items.data[0].quantity') AS quantity,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.latest_invoice') AS latest_invoice,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'subscription';

CREATE VIEW invoices AS
SELECT id,
       customer AS customer,
       coalesce(json_extract(data, '$.subscription'),
                json_extract(data, '$.parent.subscription_details.subscription')) AS subscription,
       json_extract(data, '$.status') AS status,
       json_extract(data, '$.number') AS number,
       json_extract(data, '$.amount_due') AS amount_due,
       json_extract(data, '$.amount_paid') AS amount_paid,
       json_extract(data, '$.amount_remaining') AS amount_remaining,
       json_extract(data, '$.total') AS total,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.customer_email') AS customer_email,
       json_extract(data, '$.hosted_invoice_url') AS hosted_invoice_url,
       json_extract(data, '$.period_start') AS period_start,
       json_extract(data, '$.period_end') AS period_end,
       json_extract(data, '$.due_date') AS due_date,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'invoice';

CREATE VIEW payment_intents AS
SELECT id,
       customer AS customer,
       json_extract(data, '$.status') AS status,
       json_extract(data, '$.amount') AS amount,
       json_extract(data, '$.amount_received') AS amount_received,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.latest_charge') AS latest_charge,
       json_extract(data, '$.description') AS description,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'payment_intent';

CREATE VIEW charges AS
SELECT id,
       customer AS customer,
       json_extract(data, '$.payment_intent') AS payment_intent,
       json_extract(data, '$.status') AS status,
       json_extract(data, '$.amount') AS amount,
       json_extract(data, '$.amount_captured') AS amount_captured,
       json_extract(data, '$.amount_refunded') AS amount_refunded,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.paid') AS paid,
       json_extract(data, '$.captured') AS captured,
       json_extract(data, '$.refunded') AS refunded,
       json_extract(data, '$.disputed') AS disputed,
       json_extract(data, '$.billing_details.email') AS email,
       json_extract(data, '$.receipt_url') AS receipt_url,
       json_extract(data, '$.failure_code') AS failure_code,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'charge';

CREATE VIEW refunds AS
SELECT id,
       json_extract(data, '$.charge') AS charge,
       json_extract(data, '$.payment_intent') AS payment_intent,
       json_extract(data, '$.status') AS status,
       json_extract(data, '$.amount') AS amount,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.reason') AS reason,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'refund';

CREATE VIEW checkout_sessions AS
SELECT id,
       customer AS customer,
       coalesce(json_extract(data, '$.customer_details.email'),
                json_extract(data, '$.customer_email')) AS email,
       json_extract(data, '$.status') AS status,
       json_extract(data, '$.payment_status') AS payment_status,
       json_extract(data, '$.mode') AS mode,
       json_extract(data, '$.amount_subtotal') AS amount_subtotal,
       json_extract(data, '$.amount_total') AS amount_total,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.payment_intent') AS payment_intent,
       json_extract(data, '$.subscription') AS subscription,
       json_extract(data, '$.invoice') AS invoice,
       json_extract(data, '$.client_reference_id') AS client_reference_id,
       json_extract(data, '$.expires_at') AS expires_at,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'checkout.session';

CREATE VIEW products AS
SELECT id,
       json_extract(data, '$.name') AS name,
       json_extract(data, '$.active') AS active,
       json_extract(data, '$.description') AS description,
       json_extract(data, '$.default_price') AS default_price,
       json_extract(data, '$.type') AS product_type,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       json_extract(data, '$.updated') AS updated,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'product';

CREATE VIEW prices AS
SELECT id,
       json_extract(data, '$.product') AS product,
       json_extract(data, '$.active') AS active,
       json_extract(data, '$.unit_amount') AS unit_amount,
       json_extract(data, '$.currency') AS currency,
       json_extract(data, '$.type') AS price_type,
       json_extract(data, '$.recurring.interval') AS interval,
       json_extract(data, '$.recurring.interval_count') AS interval_count,
       json_extract(data, '$.lookup_key') AS lookup_key,
       json_extract(data, '$.nickname') AS nickname,
       json_extract(data, '$.metadata') AS metadata,
       json_extract(data, '$.created') AS created,
       livemode, deleted, uncertain, account, event_id, updated_at
FROM objects WHERE type = 'price';
