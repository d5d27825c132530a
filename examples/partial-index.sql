-- The partial index that serves resclean's claim query:
--   ... WHERE NOT is_uploaded AND created_at < now() - max_age ... ORDER BY created_at LIMIT n
-- Without it every batch scans the whole table (`resclean run status` says which, and prints
-- this statement for the policy's table and columns). It holds only pending rows, so it stays
-- small however large the table grows.
--
-- CONCURRENTLY builds it without blocking the application's writes. It cannot run inside a
-- transaction block: run the file on its own, e.g.
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f examples/partial-index.sql
-- If the build is interrupted it leaves an INVALID index behind; drop it and run this again:
--   DROP INDEX CONCURRENTLY attack_resource_files_pending_created_idx;
CREATE INDEX CONCURRENTLY IF NOT EXISTS attack_resource_files_pending_created_idx
    ON attack_resource_files (created_at) WHERE NOT is_uploaded;
