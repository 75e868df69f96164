-- Several processes over one index: who holds a job or a delivery and until when (epoch
-- seconds of the database's clock), a claim counter that a late commit is checked against,
-- and one row per serving process with its role and last heartbeat.
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until DOUBLE PRECISION;
ALTER TABLE jobs ADD COLUMN claims BIGINT NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN owner TEXT;
ALTER TABLE outbox ADD COLUMN lease_until DOUBLE PRECISION;
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    role TEXT,
    host TEXT,
    pid BIGINT,
    version TEXT,
    started_epoch DOUBLE PRECISION,
    heartbeat_epoch DOUBLE PRECISION,
    state TEXT
);
