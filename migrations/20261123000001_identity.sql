-- Identity and access. Portable SQL: runs unchanged on SQLite and PostgreSQL
-- (TEXT and BIGINT only, times as Unix seconds, ids made by the application).

CREATE TABLE orgs (
    id          TEXT PRIMARY KEY,   -- LAESTAB, 3-digit LA code, trust UID, or 'operator'
    kind        TEXT NOT NULL,      -- ks2-school, ks3-school, la, mat, operator
    name        TEXT NOT NULL,
    la_code     TEXT,
    trust_uid   TEXT,
    urn         TEXT,
    phase       TEXT,
    school_type TEXT,
    phone       TEXT NOT NULL DEFAULT '',
    email       TEXT NOT NULL DEFAULT '',
    updated_at  BIGINT NOT NULL
);
CREATE INDEX orgs_la ON orgs (la_code);
CREATE INDEX orgs_trust ON orgs (trust_uid);

CREATE TABLE users (
    id                   TEXT PRIMARY KEY,
    email                TEXT NOT NULL UNIQUE,  -- lower case
    name                 TEXT NOT NULL,
    account_kind         TEXT NOT NULL,         -- school, la, mat, ks3, operator
    password_hash        TEXT,                  -- NULL until the invitation is accepted
    password_set_at      BIGINT,
    sessions_valid_after BIGINT NOT NULL DEFAULT 0,
    created_at           BIGINT NOT NULL
);

CREATE TABLE memberships (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    org_id  TEXT NOT NULL REFERENCES orgs (id),
    role    TEXT NOT NULL,
    PRIMARY KEY (user_id, org_id, role)
);
CREATE INDEX memberships_org ON memberships (org_id);

-- Single-use links: invitations and forgotten-password resets. Only a hash is kept.
CREATE TABLE tokens (
    hash       TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT NOT NULL,   -- invite, reset
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

-- The current email MFA code of each user. Only a keyed hash is kept.
CREATE TABLE mfa_codes (
    user_id    TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    sent_at    BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    attempts   BIGINT NOT NULL DEFAULT 0,
    used_at    BIGINT
);

-- Who did what, when, to whom. Rows are only ever added.
CREATE TABLE audit (
    id      TEXT PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT,            -- user email, or 'cli', or NULL for an anonymous visitor
    org_id  TEXT,
    action  TEXT NOT NULL,
    target  TEXT,
    detail  TEXT NOT NULL DEFAULT '',
    ip      TEXT
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_org ON audit (org_id, at);
