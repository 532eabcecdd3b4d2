-- agentrun schema, version 1 (SQLite, the embedded default for local use).
-- Applied by agentrun.store.sqlite.SqliteStore.migrate inside one BEGIN IMMEDIATE
-- transaction; the version is then recorded in schema_migrations.
-- Timestamps are ISO 8601 text in UTC with microseconds (they sort as text); JSON is text.
-- Keep this file in step with migrations/postgres/0001_init.sql.

CREATE TABLE threads (
    id          TEXT    PRIMARY KEY,
    namespace   TEXT    NOT NULL,
    metadata    TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    last_seq    INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);
CREATE INDEX threads_namespace_idx ON threads (namespace);

CREATE TABLE agent_runs (
    id               TEXT    PRIMARY KEY,
    namespace        TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    thread_id        TEXT    NOT NULL,
    status           TEXT    NOT NULL
        CONSTRAINT agent_runs_status_check
        CHECK (status IN ('Pending', 'Queued', 'Running', 'Stopping', 'Succeeded', 'Failed', 'Stopped')),
    reason           TEXT,
    error            TEXT,
    result           TEXT,
    attempt          INTEGER NOT NULL DEFAULT 1
        CONSTRAINT agent_runs_attempt_check CHECK (attempt >= 1),
    worker_instance  TEXT,
    usage            TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(usage)),
    metadata         TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    created_at       TEXT    NOT NULL,
    queued_at        TEXT,
    started_at       TEXT,
    finished_at      TEXT,
    updated_at       TEXT    NOT NULL
);
CREATE INDEX agent_runs_namespace_status_idx ON agent_runs (namespace, status);
CREATE INDEX agent_runs_thread_id_idx ON agent_runs (thread_id);
CREATE INDEX agent_runs_created_at_idx ON agent_runs (created_at);

CREATE TABLE messages (
    id          TEXT    PRIMARY KEY,
    thread_id   TEXT    NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    run_id      TEXT,
    seq         INTEGER NOT NULL,
    role        TEXT    NOT NULL,
    content     TEXT    NOT NULL CHECK (json_valid(content)),
    created_at  TEXT    NOT NULL,
    CONSTRAINT messages_thread_seq_key UNIQUE (thread_id, seq)
);
CREATE INDEX messages_run_id_idx ON messages (run_id);
