-- Every download and every view of pupil data: who, what, when. Append-only and unindexed, so
-- results morning's thousands of rows a second cost one append each; investigations scan it
-- (a year of a national release is a few million rows). Administrative events stay in audit.
CREATE TABLE access_log (
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    org_id  TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL
);
