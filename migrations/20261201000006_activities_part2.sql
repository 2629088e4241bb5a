-- Activities, part 2: evidence files, messages with the operator, published materials, and the
-- operator's changes to the cycle's windows. Portable SQL.

-- Files uploaded with an activity (evidence for access arrangements); bytes in the object store.
CREATE TABLE activity_files (
    id         TEXT PRIMARY KEY,
    cycle      BIGINT NOT NULL,
    activity   TEXT NOT NULL,
    org_id     TEXT NOT NULL,
    name       TEXT NOT NULL,
    size       BIGINT NOT NULL,
    object_key TEXT NOT NULL,
    by_email   TEXT NOT NULL,
    at         BIGINT NOT NULL
);

-- 'Message us': threads between a school and the operator. Rows are only ever added.
CREATE TABLE activity_messages (
    id            TEXT PRIMARY KEY,
    cycle         BIGINT NOT NULL,
    activity      TEXT NOT NULL,
    org_id        TEXT NOT NULL,
    thread_id     TEXT NOT NULL,
    subject       TEXT NOT NULL,
    body          TEXT NOT NULL,
    author        TEXT NOT NULL,
    from_operator BIGINT NOT NULL,
    at            BIGINT NOT NULL
);
CREATE INDEX activity_messages_thread ON activity_messages (thread_id, at);
CREATE INDEX activity_messages_org ON activity_messages (org_id, at);

-- Files the operator publishes for an activity's audience (test materials, training).
CREATE TABLE activity_materials (
    id         TEXT PRIMARY KEY,
    cycle      BIGINT NOT NULL,
    activity   TEXT NOT NULL,
    title      TEXT NOT NULL,
    name       TEXT NOT NULL,
    size       BIGINT NOT NULL,
    object_key TEXT NOT NULL,
    by_email   TEXT NOT NULL,
    at         BIGINT NOT NULL
);

-- The operator's changes to an audience's window, over the cycle file (no restart needed).
CREATE TABLE activity_windows (
    cycle      BIGINT NOT NULL,
    activity   TEXT NOT NULL,
    audience   BIGINT NOT NULL,
    opens      BIGINT NOT NULL,
    closes     BIGINT NOT NULL,
    late_until BIGINT,
    by_email   TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (cycle, activity, audience)
);
