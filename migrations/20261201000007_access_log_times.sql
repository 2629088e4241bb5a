-- Identical access records (the same second, person, organisation, action and target) are
-- kept as one row with how many times it happened: nothing is lost (the records could not be
-- told apart), and a client asking for one file thousands of times a second costs one row.
ALTER TABLE access_log ADD COLUMN times BIGINT NOT NULL DEFAULT 1;
