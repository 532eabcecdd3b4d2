-- agentrun schema, version 1 (PostgreSQL / Supabase).
-- Applied by `agentrun migrate` (agentrun.store.postgres.PostgresStore.migrate) inside one
-- transaction; the version is then recorded in schema_migrations.

-- Conversation threads. last_seq is the per-thread message counter: add_message locks the
-- thread row, takes last_seq + 1 and stores it back in the same transaction, so seq is
-- strictly increasing within a thread even under concurrent writers.
CREATE TABLE threads (
    id          text        PRIMARY KEY,
    namespace   text        NOT NULL,
    metadata    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    last_seq    bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX threads_namespace_idx ON threads (namespace);

-- One row per AgentRun; id is the resource's metadata.uid. status only ever moves forward
-- (agentrun.phases.may_transition, enforced by the WHERE clause of every transition).
CREATE TABLE agent_runs (
    id               text        PRIMARY KEY,
    namespace        text        NOT NULL,
    name             text        NOT NULL,
    thread_id        text        NOT NULL,
    status           text        NOT NULL
        CONSTRAINT agent_runs_status_check
        CHECK (status IN ('Pending', 'Queued', 'Running', 'Stopping', 'Succeeded', 'Failed', 'Stopped')),
    reason           text,
    error            text,
    result           text,
    attempt          integer     NOT NULL DEFAULT 1
        CONSTRAINT agent_runs_attempt_check CHECK (attempt >= 1),
    worker_instance  text,
    usage            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    metadata         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    queued_at        timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_runs_namespace_status_idx ON agent_runs (namespace, status);
CREATE INDEX agent_runs_thread_id_idx ON agent_runs (thread_id);
CREATE INDEX agent_runs_created_at_idx ON agent_runs (created_at);

-- Messages of a thread, ordered by seq. run_id is not a foreign key: a thread's history
-- outlives the run rows that wrote it.
CREATE TABLE messages (
    id          text        PRIMARY KEY,
    thread_id   text        NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    run_id      text,
    seq         bigint      NOT NULL,
    role        text        NOT NULL,
    content     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_thread_seq_key UNIQUE (thread_id, seq)
);
CREATE INDEX messages_run_id_idx ON messages (run_id);
