-- Reviews of marking (ARA 8.4): a school's application, and one row per pupil and paper with
-- the reason given and, once the operator decides, the outcome.
CREATE TABLE review_applications (
    id           TEXT PRIMARY KEY,
    laestab      TEXT NOT NULL REFERENCES orgs (id),
    kind         TEXT NOT NULL,
    release_id   TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    submitted_at BIGINT NOT NULL,
    -- One per check-your-answers page: a repeated submit finds the application it made.
    submit_token TEXT NOT NULL UNIQUE,
    status       TEXT NOT NULL
);
CREATE INDEX review_applications_school ON review_applications (laestab);

CREATE TABLE review_items (
    application_id TEXT NOT NULL REFERENCES review_applications (id),
    upn            TEXT NOT NULL,
    paper          TEXT NOT NULL,
    reason         TEXT NOT NULL,
    raw_before     BIGINT,
    result_before  TEXT NOT NULL,
    -- 'unchanged' or 'changed'; NULL until decided.
    outcome        TEXT,
    -- JSON object: item label -> new mark, for the items whose mark changed.
    new_marks      TEXT,
    raw_after      BIGINT,
    result_after   TEXT,
    -- 1 free of charge, 0 chargeable.
    free           BIGINT,
    decided_by     TEXT,
    decided_at     BIGINT,
    PRIMARY KEY (application_id, upn, paper)
);
