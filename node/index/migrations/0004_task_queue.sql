-- The analysis queue over PostgreSQL is procrastinate (migration 3): each queued job names
-- the procrastinate job that carries it, so a task that is no longer the job's does nothing.
ALTER TABLE jobs ADD COLUMN task_id BIGINT;
