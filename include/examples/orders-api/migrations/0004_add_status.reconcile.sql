-- Run by the environment's reconcile step when a later step of the same release failed (or a
-- rollback returned to a version that cannot use this schema): idempotent, data only.
UPDATE orders SET status = 'unknown' WHERE status IS NULL;
