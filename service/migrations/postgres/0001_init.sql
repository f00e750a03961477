-- imgctl-service schema, version 1, PostgreSQL dialect (migrations/sqlite/0001_init.sql is the same
-- schema for SQLite: only the generated keys are spelled differently).
-- Times are Unix seconds; binary values are stored hex-encoded (TEXT) so both take them alike.

CREATE TABLE machines (
    id                 TEXT PRIMARY KEY,          -- hex of the EK Name
    ek_public          TEXT NOT NULL,             -- hex TPMT_PUBLIC
    ak_public          TEXT NOT NULL,             -- hex TPMT_PUBLIC
    ak_name            TEXT NOT NULL,             -- hex Name of the AK
    policy             TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'active', 'failed')),
    activation_sha256  TEXT NOT NULL,             -- sha256 of the enrolment credential
    activation_expires BIGINT NOT NULL,
    enrolled_at        BIGINT NOT NULL
);

CREATE TABLE nonces (
    nonce      TEXT PRIMARY KEY,                  -- hex
    machine    TEXT NOT NULL REFERENCES machines (id),
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

CREATE TABLE verdicts (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    machine         TEXT NOT NULL REFERENCES machines (id),
    nonce           TEXT NOT NULL UNIQUE REFERENCES nonces (nonce),
    accepted        BOOLEAN NOT NULL,
    evidence_sha256 TEXT NOT NULL,
    policy          TEXT NOT NULL,
    policy_version  BIGINT NOT NULL,
    log_checkpoint  TEXT,
    findings        TEXT NOT NULL,                -- JSON
    created_at      BIGINT NOT NULL
);

CREATE TABLE releases (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    verdict     BIGINT NOT NULL REFERENCES verdicts (id),
    machine     TEXT NOT NULL REFERENCES machines (id),
    nonce       TEXT NOT NULL REFERENCES nonces (nonce),
    secret      TEXT NOT NULL,
    released_at BIGINT NOT NULL,
    UNIQUE (nonce, secret)
);
