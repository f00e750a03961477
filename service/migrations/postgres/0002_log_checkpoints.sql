-- imgctl-service schema, version 2 (PostgreSQL; migrations/sqlite/0002_log_checkpoints.sql is the same):
-- the last checkpoint of each transparency log a verdict was checked against. Every verdict
-- checks the log's checkpoint against this one (a log that shows another history is a split
-- view) and moves it forward in the verdict's transaction, only from the note it checked.

CREATE TABLE log_checkpoints (
    origin     TEXT PRIMARY KEY,                  -- the log's origin line
    size       BIGINT NOT NULL,
    note       TEXT NOT NULL,                     -- the signed checkpoint note, as served
    updated_at BIGINT NOT NULL
);
