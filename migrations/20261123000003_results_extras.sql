-- Late results: which schools have been told about which release (one row each, so every
-- node of a cluster tries and exactly one sends).
CREATE TABLE release_notices (
    release_id TEXT NOT NULL,
    org_id     TEXT NOT NULL,
    sent_at    BIGINT NOT NULL,
    PRIMARY KEY (release_id, org_id)
);

-- Organisation API tokens: read-only, results only, revocable. Only a hash is kept.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    hash         TEXT NOT NULL UNIQUE,
    org_id       TEXT NOT NULL REFERENCES orgs (id),
    name         TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX api_tokens_org ON api_tokens (org_id);
