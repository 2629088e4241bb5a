-- The activity engine (My Activity) and the first activities: pupil registration, the
-- attendance register, the headteacher's declaration and teacher assessment. Portable SQL.

-- One row per activity and organisation that has started it: its draft (JSON of the form so
-- far), whether it is submitted and when, and the operator's decision where one is needed.
CREATE TABLE activity_status (
    cycle         BIGINT NOT NULL,
    activity      TEXT NOT NULL,
    org_id        TEXT NOT NULL,
    status        TEXT NOT NULL,             -- draft, submitted, accepted, rejected
    draft         TEXT NOT NULL DEFAULT '{}',
    updated_by    TEXT NOT NULL,
    updated_at    BIGINT NOT NULL,
    submitted_by  TEXT,
    submitted_org TEXT,                      -- the organisation that submitted (an LA for a school)
    submitted_at  BIGINT,
    decision      TEXT,
    decided_at    BIGINT,
    PRIMARY KEY (cycle, activity, org_id)
);

-- The audit trail of completed activities: printable copies of what was submitted, and the
-- emails and letters produced. Rows are only ever added.
CREATE TABLE activity_documents (
    id         TEXT PRIMARY KEY,
    cycle      BIGINT NOT NULL,
    activity   TEXT NOT NULL,
    org_id     TEXT NOT NULL,
    kind       TEXT NOT NULL,                -- form, email, letter
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,                -- HTML fragment (form, letter) or plain text (email)
    search     TEXT NOT NULL DEFAULT '',     -- lower-case pupil names and UPNs in it
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX activity_documents_org ON activity_documents (org_id, cycle);

-- The operator's exceptions for one activity and one organisation: a reopening (until a time)
-- or a recorded gate (such as a test order placed), each with its reason.
CREATE TABLE activity_exceptions (
    cycle    BIGINT NOT NULL,
    activity TEXT NOT NULL,
    org_id   TEXT NOT NULL,
    what     TEXT NOT NULL,                  -- reopen, or gate:<name>
    until_at BIGINT,
    reason   TEXT NOT NULL,
    by_email TEXT NOT NULL,
    at       BIGINT NOT NULL,
    PRIMARY KEY (cycle, activity, org_id, what)
);

-- Pupil registration: every pupil a school has registered (pre-filled from the census).
CREATE TABLE reg_pupils (
    cycle       BIGINT NOT NULL,
    laestab     TEXT NOT NULL,
    upn         TEXT NOT NULL,
    surname     TEXT NOT NULL,
    forename    TEXT NOT NULL,
    dob         TEXT NOT NULL,
    gender      TEXT NOT NULL,
    reading_reg TEXT NOT NULL,
    gps_reg     TEXT NOT NULL,
    maths_reg   TEXT NOT NULL,
    source      TEXT NOT NULL,               -- census, added, upload
    late        BIGINT NOT NULL DEFAULT 0,   -- 1: added after the registration deadline
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (cycle, laestab, upn)
);

-- The attendance register: only pupils who did not sit a paper normally.
CREATE TABLE attendance_codes (
    cycle   BIGINT NOT NULL,
    laestab TEXT NOT NULL,
    upn     TEXT NOT NULL,
    paper   TEXT NOT NULL,
    code    TEXT NOT NULL,                   -- A, U, J
    PRIMARY KEY (cycle, laestab, upn, paper)
);

-- Teacher assessment per pupil, and which schools have their LA submit it.
CREATE TABLE ta_codes (
    cycle      BIGINT NOT NULL,
    laestab    TEXT NOT NULL,
    upn        TEXT NOT NULL,
    writing    TEXT NOT NULL,
    science    TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (cycle, laestab, upn)
);

CREATE TABLE ta_by_la (
    cycle   BIGINT NOT NULL,
    laestab TEXT NOT NULL,
    la_code TEXT NOT NULL,
    set_by  TEXT NOT NULL,
    set_at  BIGINT NOT NULL,
    PRIMARY KEY (cycle, laestab)
);

-- Error reports of refused uploads, to download (kept for a day).
CREATE TABLE upload_reports (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
