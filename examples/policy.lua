-- A resclean policy: copy, edit, and point RESCLEAN_POLICY (or --policy) at
-- it. It is re-read at the start of every cycle, so edits apply without a
-- restart; an edit that does not validate is logged and the previous policy
-- is kept. Every field is optional: what is left out keeps its default,
-- shown here. Durations are seconds or strings such as "90s", "15m", "24h", "7d".
-- The file (and key()) runs without io, os.exit, os.execute or debug; it has
-- os.getenv, os.time, string, table, math and require("resclean.policy").
-- `resclean run check --policy FILE` tries it against the database and bucket.
return {
  -- Where pending uploads live.
  table = "attack_resource_files",
  id_column = "id",
  uploaded_column = "is_uploaded",   -- a row is pending while this is false
  created_column = "created_at",     -- age is now() - this, by the database clock
  type_column = "resource_type",     -- false: every row goes through uploads

  -- Only these types are uploaded through presigned URLs. Ephemeral and
  -- dynamic lists keep their content in the row and are never stale.
  upload_types = { "WORD_LIST", "RULE_LIST", "MASK_LIST", "CHARSET" },

  -- The object key of a row: key() receives the row with key_columns as text.
  key_columns = { "id" },
  key = function(row) return row.id end,
  -- Every computed key must match this Lua pattern (default: a lower-case
  -- UUID); keys that do not, or that hold "..", control characters or more
  -- than 1024 bytes, are skipped (reason "bad_key") and never sent to storage.
  key_pattern = require("resclean.policy").UUID_PATTERN,

  bucket = os.getenv("RESCLEAN_BUCKET") or "cipherswarm-resources",

  -- When a pending upload is stale (never below url_lifetime: an upload may
  -- still be in progress), and how often to look.
  max_age = "24h",
  interval = "1h",
  jitter = "60s",                    -- random extra wait, so replicas spread out

  -- How hard to sweep.
  batch_size = 1000,                 -- rows claimed and locked per transaction (1-10000)
  verify = true,                     -- HEAD each object first: outcomes say whether it existed
  verify_list = true,                -- a bucket small next to the backlog is listed instead (false: HEADs)
  quiet_deletes = false,             -- S3 lists every key deleted (true: only failures; see resclean(1))
  concurrency = 64,                  -- most HEAD requests at once: starts at 16, grows while that helps
  max_deletes_per_run = 0,           -- 0: no limit

  -- Timeouts.
  lock_timeout = "5s",               -- cancel waits this long for a row locked by someone else
  statement_timeout = "60s",
  s3_timeout = "30s",
  s3_connect_timeout = "5s",
  s3_max_attempts = 4,               -- retries (with backoff) on 5xx, 429 and network errors

  -- true: take a PostgreSQL advisory lock per cycle, so only one of several
  -- replicas sweeps at a time (without it they share the work through SKIP LOCKED).
  singleton = false,

  progress_interval = "10s",         -- a progress log line this often during long sweeps
  url_lifetime = "1h",               -- presigned PUT lifetime (reconcile waits this long too)

  -- Every table that owns keys in the bucket (reconcile checks all of them).
  -- The policy's own table owns a key when some row's key(row) equals it;
  -- another owner when its key_column holds the key or a UUID written in it.
  -- Reconcile never deletes an object that a row of any table it can read
  -- names (in a uuid or text column): when a table that is not listed here
  -- names one, it refuses (exit 2) and says which entry to add.
  owners = {
    { table = "attack_resource_files", key_column = "id" },
    { table = "upload_resource_files", key_column = "id" },
  },

  -- Reconcile finds the row that may own an object key through the UUIDs in
  -- the key. When key() writes no UUID of the row (say "x/" .. id without
  -- dashes) it cannot, and refuses (exit 2) until key_id is set: the inverse
  -- of key(), returning the id_column value of the row whose key(row) is key
  -- (checked once: key_id(key(row)) must be the row's id). Not needed for
  -- the default key or for keys such as "wl/" .. row.id.
  -- key_id = function(key) return key:match("^wl/(.+)$") end,

  -- reconcile --apply deletes nothing when its plan would delete more than
  -- this fraction of the candidates (listed keys matching key_pattern, old
  -- enough): a mass delete is a wrong policy more often than a real backlog;
  -- --max-delete N allows up to N instead.
  reconcile_max_delete_fraction = 0.10,

  -- Cancels from the application: it INSERTs a row into this table (the
  -- grant to do so is the right to cancel; examples/cancel-requests.sql
  -- creates it, examples/cancel-endpoint.py writes one). Every sweep takes
  -- pending requests at the start of a cycle; the long-running one also
  -- LISTENs on cancel_channel, where the table's trigger wakes it (a
  -- NOTIFY's payload is ignored: anyone may send one). false: off.
  cancel_requests_table = "resclean_cancel_requests",
  cancel_channel = "resclean_cancel",

  log_level = "info",                -- debug, info, warn or error
}
