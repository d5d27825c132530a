-- The sweep: claim stale pending rows in batches (FOR UPDATE SKIP LOCKED),
-- delete rows first under a savepoint (foreign keys fail before anything
-- irreversible), then objects, then commit. Per batch one claim, one row
-- delete, parallel HEADs and DeleteObjects; per item only decisions and a
-- log line.
--
-- Invariant: a row is deleted only in a transaction that commits after its
-- object's delete succeeded. A crash leaves the row and the object, or the
-- row without its object; never an object without its row.
local errors = require("resclean.errors")
local log = require("resclean.log")
local policy_mod = require("resclean.policy")
local sys = require("resclean.sys")

local M = {}

M.OUTCOMES = { "object_deleted", "record_only", "deleted", "failed", "skipped", "not_found", "refused" }

M.EXIT = errors.EXIT

-- "could not reach the database or the storage": worth retrying.
local function is_unreachable(err)
  return type(err) == "table" and errors.classify(err) == "transient"
end
M.is_unreachable = is_unreachable

local errmsg = errors.message
M.errmsg = errmsg

-- The exit code and summary extras of a cycle that ends on err.
local function stop_on(err)
  return errors.exit_code(err), { error = errmsg(err) }
end

local function to_ms(seconds) return math.floor(seconds * 1000 + 0.5) end

-- SQL built once per cycle from the policy; identifiers quoted.
local function build_sql(conn, p)
  local q = function(s) return conn:quote_ident(s) end
  local t, id, created = q(p.table), q(p.id_column), q(p.created_column)
  local cols = { ("%s::text AS id"):format(id), ("%s::text AS _created"):format(created),
    ("extract(epoch FROM now() - %s)::float8 AS age_s"):format(created) }
  for _, c in ipairs(p.key_columns) do
    if c ~= "id" then cols[#cols + 1] = ("%s::text AS %s"):format(q(c), q(c)) end
  end
  if p.type_column then cols[#cols + 1] = ("%s::text AS _type"):format(q(p.type_column)) end
  local select = "SELECT " .. table.concat(cols, ", ") .. " FROM " .. t
  local stale = ("NOT %s AND %s < now() - make_interval(secs => $1::float8)"):format(q(p.uploaded_column), created)
  if p.type_column then
    stale = stale .. (" AND %s::text = ANY($2::text[])"):format(q(p.type_column))
  else
    -- $2 is still bound (the same parameters for every statement): give it a type.
    stale = stale .. " AND $2::text[] IS NOT NULL"
  end
  -- Qualified: a bare "id" in ORDER BY would name the id::text output
  -- column, sorting by text while the keyset below compares uuids.
  local order = (" ORDER BY %s.%s, %s.%s LIMIT $3::int"):format(t, created, t, id)
  local after = (" AND (%s.%s, %s.%s) > ($4, $5)"):format(t, created, t, id)
  local s = {
    eligible = ("SELECT count(*)::int8 AS n, max(extract(epoch FROM now() - %s))::float8 AS oldest FROM %s WHERE %s")
      :format(created, t, stale),
    claim_first = select .. " WHERE " .. stale .. order,
    claim_next = select .. " WHERE " .. stale .. after .. order,
    delete = ("DELETE FROM %s WHERE %s = ANY($1) RETURNING %s::text AS id"):format(t, id, id),
    lock_ids = select .. (" WHERE %s = $1 FOR UPDATE"):format(id),
    uploaded = ("%s AS _uploaded"):format(q(p.uploaded_column)),
  }
  s.lock_one = ("SELECT %s, %s FROM %s WHERE %s = $1 FOR UPDATE"):format(
    table.concat(cols, ", "), s.uploaded, t, id)
  return s
end
M.build_sql = build_sql

-- Check that the policy's table and columns exist, so a typo is a clear
-- configuration error (exit 2) before anything is touched.
function M.check_schema(conn, p)
  local res, err = conn:query(
    "SELECT column_name::text AS c, data_type::text AS t FROM information_schema.columns "
    .. "WHERE table_schema = ANY(current_schemas(false)) AND table_name = $1", p.table)
  if not res then return nil, err end
  local function bad(field, msg)
    return nil, { kind = "policy", field = field,
                  message = ("policy %s: field '%s': %s"):format(p.source or "(defaults)", field, msg) }
  end
  if #res == 0 then return bad("table", ("table %q does not exist"):format(p.table)) end
  local have = {}
  for _, r in ipairs(res) do have[r.c] = r.t end
  local need = { id_column = p.id_column, uploaded_column = p.uploaded_column,
                 created_column = p.created_column, type_column = p.type_column }
  for i, c in ipairs(p.key_columns) do need["key_columns[" .. i .. "]"] = c end
  local fields = {}
  for field in pairs(need) do fields[#fields + 1] = field end
  table.sort(fields)
  for _, field in ipairs(fields) do
    local col = need[field]
    if not have[col] then
      return bad(field, ("column %q does not exist in table %q"):format(col, p.table))
    end
  end
  -- The claim reads NOT uploaded_column and now() - created_column: other types fail there,
  -- mid-run, as an SQL error that would look like an unreachable database.
  if have[p.uploaded_column] ~= "boolean" then
    return bad("uploaded_column", ("column %q is %s, expected boolean"):format(p.uploaded_column,
      have[p.uploaded_column]))
  end
  local t = have[p.created_column]
  if t ~= "timestamp with time zone" and t ~= "timestamp without time zone" and t ~= "date" then
    return bad("created_column", ("column %q is %s, expected a timestamp"):format(p.created_column, t))
  end
  if p.type_column then
    local ok, uerr = M.check_upload_types(conn, p, bad)
    if not ok then return nil, uerr end
  end
  return true
end

-- When the type column is an enum, every upload type must be one of its
-- labels: a typo ("WORDLIST") would otherwise match nothing, every cycle,
-- and switch the sweeper off without a word. A label with no rows is fine.
function M.check_upload_types(conn, p, bad)
  local res, err = conn:query([[
    SELECT e.enumlabel::text AS label FROM pg_attribute a JOIN pg_enum e ON e.enumtypid = a.atttypid
    WHERE a.attrelid = to_regclass($1) AND a.attname = $2 ORDER BY e.enumsortorder]],
    conn:quote_ident(p.table), p.type_column)
  if not res then return nil, err end
  if #res == 0 then return true end -- not an enum: any text may match
  local known, labels = {}, {}
  for i, r in ipairs(res) do
    known[r.label] = true
    labels[i] = r.label
  end
  for i, u in ipairs(p.upload_types) do
    if not known[u] then
      return bad(("upload_types[%d]"):format(i), ("%q is not a label of the enum of column %q (known: %s)")
        :format(u, p.type_column, table.concat(labels, ", ")))
    end
  end
  return true
end

-- Exit code when the session cannot be opened: 2 for what configuration can fix (the policy
-- names what is not there, DATABASE_URL cannot be parsed, the password is wrong), else 3.
local open_failure_code = errors.exit_code

-- A run: counts by outcome, the log context, limits.
local Run = {}
Run.__index = Run

function M.new_run(opts)
  local r = setmetatable({
    policy = opts.policy,
    dry_run = opts.dry_run or false,
    run_id = opts.run_id or M.run_id(),
    counts = {},
    done = 0,
    eligible = 0,
    started = sys.monotime(),
    last_progress = sys.monotime(),
    phase = {},  -- seconds spent per phase of the current batch
    emit = opts.emit or log.emit,
  }, Run)
  for _, o in ipairs(M.OUTCOMES) do r.counts[o] = 0 end
  return r
end

function M.run_id()
  local t = sys.time()
  return ("%s-%d-%06x"):format(os.date("!%Y%m%dT%H%M%S", math.floor(t)), sys.pid(),
    math.floor((t % 1) * 0xffffff))
end

local LEVEL = { failed = "warn", refused = "warn" }

-- One log line per resource.
function Run:outcome(item, outcome, reason)
  item.logged = true
  self.counts[outcome] = self.counts[outcome] + 1
  if outcome == "skipped" and reason then -- kept on purpose, by reason (metrics)
    self.skipped_reasons = self.skipped_reasons or {}
    self.skipped_reasons[reason] = (self.skipped_reasons[reason] or 0) + 1
  end
  self.done = self.done + 1
  self.emit(LEVEL[outcome] or "info", "resource", {
    run_id = self.run_id, resource_id = item.id, key = item.key,
    age_s = item.age_s and math.floor(item.age_s) or nil,
    outcome = outcome, reason = reason, dry_run = self.dry_run or nil,
  })
end

function Run:progress(force)
  local now = sys.monotime()
  if not force and now - self.last_progress < self.policy.progress_interval then return end
  self.last_progress = now
  local elapsed = now - self.started
  local rate = elapsed > 0 and self.done / elapsed or 0
  local left = math.max(self.eligible - self.done, 0)
  self.emit("info", "progress", {
    run_id = self.run_id, done = self.done, eligible = self.eligible,
    rate = math.floor(rate * 10 + 0.5) / 10, eta_s = rate > 0 and math.ceil(left / rate) or nil,
    dry_run = self.dry_run or nil,
  })
end

function Run:summary(event, extra)
  local ms = math.floor((sys.monotime() - self.started) * 1000 + 0.5)
  local f = { run_id = self.run_id, eligible = self.eligible, duration_ms = ms,
              rate = ms > 0 and math.floor(self.done / ms * 1000 * 10 + 0.5) / 10 or 0,
              total = self.done, dry_run = self.dry_run or nil, db_pid = self.db_pid,
              oldest_age_s = self.oldest_age_s and math.floor(self.oldest_age_s) or nil,
              skipped_reasons = self.skipped_reasons }
  for k, v in pairs(self.counts) do f[k] = v end
  for k, v in pairs(extra or {}) do f[k] = v end
  self.emit(f.error and "error" or "info", event, f)
  return f
end

-- Exit code from the counts: 1 when anything failed or was refused.
function Run:exit_code()
  if self.counts.failed > 0 or self.counts.refused > 0 then return M.EXIT.failed end
  return M.EXIT.ok
end

-- How many referenced rows of one set are taken from the error's detail
-- before halving instead: each retry deletes the whole rest again, so with
-- many referenced rows halving is cheaper.
local NAMED_RETRIES = 4

-- The item a foreign-key error names: PostgreSQL's detail quotes the key
-- ("Key (id)=(...) is still referenced ..."). Only a value equal to one of
-- our own ids counts, so a translated or missing detail just means "halve".
local function named_item(err, items)
  local detail = err.detail
  if type(detail) ~= "string" then return nil end
  local pos = {}
  for i, it in ipairs(items) do pos[it.id] = i end
  for v in detail:gmatch("%(([^()]*)%)") do
    if pos[v] then return pos[v] end
  end
  return nil
end

-- Delete the rows of items (a list) under savepoint `sp`, appending the
-- deleted ones to out. On a foreign-key violation (23503) the referenced
-- rows are found and skipped: the one the error names is dropped and the
-- rest retried, else the set is halved, each half under its own savepoint.
-- One referenced row in a batch of n costs one retry, not n single deletes.
-- Returns true or nil, err.
local function delete_part(tx, conn, items, run, out, sp, named_left)
  local ok, err = tx:savepoint(sp)
  if not ok then return nil, err end
  while true do
    local ids = {}
    for i, it in ipairs(items) do ids[i] = it.id end
    local res
    res, err = conn:exec_prepared("resclean_delete", ids)
    if res then
      local gone = {}
      for _, r in ipairs(res) do gone[r.id] = true end
      for _, it in ipairs(items) do
        if gone[it.id] then out[#out + 1] = it else run:outcome(it, "skipped", "row_vanished") end
      end
      -- "rows" stays: storage failures roll back to it.
      if sp ~= "rows" then return tx:release(sp) end
      return true
    end
    if err.code ~= "23503" then return nil, err end
    local fk = err
    ok, err = tx:rollback_to(sp)
    if not ok then return nil, err end
    local i = #items == 1 and 1 or (named_left > 0 and named_item(fk, items))
    if i then
      run:outcome(items[i], "skipped", "referenced")
      table.remove(items, i)
      named_left = named_left - 1
      if #items == 0 then break end
    else
      local half = #items // 2
      ok, err = delete_part(tx, conn, table.move(items, 1, half, 1, {}), run, out, "part", named_left)
      if not ok then return nil, err end
      ok, err = delete_part(tx, conn, table.move(items, half + 1, #items, 1, {}), run, out, "part", named_left)
      if not ok then return nil, err end
      break
    end
  end
  if sp ~= "rows" then return tx:release(sp) end
  return true
end

-- Delete the rows of `items` under savepoint "rows". Referenced rows are
-- skipped: those the foreign keys found at open() point at are left out
-- beforehand (a failed DELETE costs as much as one that succeeds), the
-- rest come out of the 23503 handling. Returns the items whose rows are
-- deleted (inside the transaction), or nil, err.
local function delete_rows(tx, conn, sql, items, run)
  if #items == 0 then return items end
  local todo = items
  if sql.referenced then
    local ids = {}
    for i, it in ipairs(items) do ids[i] = it.id end
    local res, err = conn:exec_prepared("resclean_referenced", ids)
    if not res then return nil, err end
    if #res > 0 then
      local refd = {}
      for _, r in ipairs(res) do refd[r.id] = true end
      todo = {}
      for _, it in ipairs(items) do
        if refd[it.id] then run:outcome(it, "skipped", "referenced") else todo[#todo + 1] = it end
      end
    end
  end
  local out = {}
  local ok, err = delete_part(tx, conn, table.move(todo, 1, #todo, 1, {}), run, out, "rows", NAMED_RETRIES)
  if not ok then return nil, err end
  return out
end

-- The storage half of a batch. Items' rows are deleted (uncommitted) under
-- savepoint "rows". Returns the items to keep deleted, with outcomes
-- decided, and the error that should stop the cycle (or nil).
local function storage_phase(store, run, items)
  local p = run.policy
  local keys = {}
  for i, it in ipairs(items) do keys[i] = it.key end
  local exists
  local t0 = sys.monotime()
  if p.verify and #keys > 0 then
    exists = store:head_many(keys, p.concurrency)
  end
  local t1 = sys.monotime()
  local results
  if run.dry_run or #keys == 0 then
    results = {}
    for i = 1, #keys do results[i] = true end
  else
    results = store:delete_many(keys, p.concurrency)
  end
  run.phase.head_s, run.phase.delete_s = t1 - t0, sys.monotime() - t1
  local ok_items, failed = {}, 0
  local by_class = { config = 0, transient = 0 }
  local stop_err
  for i, it in ipairs(items) do
    local r = results[i]
    if r == true then
      local e = exists and exists[i]
      if e == nil or type(e) == "table" then
        it.outcome = "deleted"
      else
        it.outcome = e and "object_deleted" or "record_only"
      end
      ok_items[#ok_items + 1] = it
    else
      failed = failed + 1
      local class = errors.classify(r)
      if by_class[class] then
        by_class[class] = by_class[class] + 1
        stop_err = stop_err or r
      end
      it.outcome, it.reason = "failed", type(r) == "table" and (r.code or r.kind) or tostring(r)
      it.err = r
    end
  end
  -- Every item failed for one reason that is not the item's own (storage
  -- unreachable, credentials refused): the cycle stops on it.
  local stop = #items > 0 and (by_class.config == #items or by_class.transient == #items) and stop_err or nil
  return ok_items, failed, stop
end

-- Log the decided items and count them.
local function log_items(run, items)
  log.hold()
  for _, it in ipairs(items) do run:outcome(it, it.outcome, it.reason) end
  log.release()
end

-- Process claimed items within tx: bad keys skipped, rows deleted,
-- objects deleted, failures restored. Returns the items whose rows are
-- deleted and the storage error that should stop the cycle (or nil); or
-- nil, err. The caller commits (or rolls back on dry run).
function M.process(conn, tx, sql, store, run, claimed)
  local p = run.policy
  local items = {}
  for _, it in ipairs(claimed) do
    local key, why = policy_mod.row_key(p, it.row)
    if key then
      it.key = key
      items[#items + 1] = it
    else
      run:outcome(it, "skipped", "bad_key")
      log.debug("bad_key", { run_id = run.run_id, resource_id = it.id, detail = why })
    end
  end
  local t0 = sys.monotime()
  local deleted, err = delete_rows(tx, conn, sql, items, run)
  if not deleted then return nil, err end
  run.phase.rows_s = sys.monotime() - t0
  local ok_items, failed, storage_stop = storage_phase(store, run, deleted)
  if failed > 0 then
    -- Put back the rows whose objects are still there.
    local ok
    ok, err = tx:rollback_to("rows")
    if not ok then return nil, err end
    if #ok_items > 0 then
      local ids = {}
      for i, it in ipairs(ok_items) do ids[i] = it.id end
      local res
      res, err = conn:exec_prepared("resclean_delete", ids)
      if not res then return nil, err end
    end
  end
  return deleted, storage_stop
end

-- Process the items in tx, then commit (a dry run rolls back). Returns
-- done, storage_stop (an error that ends the cycle, or nil); or nil, exit
-- code, summary extras, with the items that did not make it logged as failed.
local function settle(conn, tx, sql, store, run, items)
  local done, err = M.process(conn, tx, sql, store, run, items)
  local storage_stop = done and err
  if not done then
    -- Database trouble mid-batch: the transaction rolls back (tx closes);
    -- objects already deleted leave rows behind: the next run's record_only.
    for _, it in ipairs(items) do
      if not it.logged then run:outcome(it, "failed", "database") end
    end
    return nil, stop_on(err)
  end
  local t = sys.monotime()
  if run.dry_run then
    tx:rollback()
  else
    local ok
    ok, err = tx:commit()
    if not ok then
      for _, it in ipairs(done) do it.outcome, it.reason = "failed", "commit" end
      log_items(run, done)
      return nil, stop_on(err)
    end
  end
  run.phase.commit_s = sys.monotime() - t
  return done, storage_stop
end

local function claim(conn, p, run, last, limit)
  local types = p.upload_types
  local res, err
  if last then
    res, err = conn:exec_prepared("resclean_claim_next", p.max_age, types, limit, last._created, last.id)
  else
    res, err = conn:exec_prepared("resclean_claim_first", p.max_age, types, limit)
  end
  if not res then return nil, err end
  local items = {}
  for i, row in ipairs(res) do
    items[i] = { id = row.id, age_s = row.age_s, row = row, _created = row._created }
  end
  run.claimed = (run.claimed or 0) + #items
  return items
end

-- A query for the ids among $1 that a row elsewhere still references, from
-- the single-column foreign keys onto the policy's id column that block a
-- delete (NO ACTION, RESTRICT): one hashed scan of each referencing table
-- per batch instead of a failing DELETE. nil when there are none, or they
-- cannot be read; keys it does not cover still end in 23503 and are found
-- there. Our FOR UPDATE lock keeps new references out until we commit
-- (inserting one needs a KEY SHARE lock on the row).
function M.referenced_sql(conn, p)
  local res = conn:query([[
    SELECT c.conrelid::regclass::text AS tbl, a.attname::text AS col
    FROM pg_constraint c
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
    JOIN pg_attribute r ON r.attrelid = c.confrelid AND r.attnum = c.confkey[1]
    WHERE c.contype = 'f' AND c.confrelid = to_regclass($1) AND cardinality(c.conkey) = 1
      AND r.attname = $2 AND c.confdeltype IN ('a', 'r')
    ORDER BY 1, 2]], conn:quote_ident(p.table), p.id_column)
  if not res or #res == 0 then return nil end
  local t, id = conn:quote_ident(p.table), conn:quote_ident(p.id_column)
  local refs = {}
  for i, r in ipairs(res) do
    -- regclass prints the table quoted (and qualified) as needed.
    refs[i] = ("%s.%s IN (SELECT %s FROM %s)"):format(t, id, conn:quote_ident(r.col), r.tbl)
  end
  return ("SELECT %s.%s::text AS id FROM %s WHERE %s.%s = ANY($1) AND (%s)"):format(t, id, t, t, id,
    table.concat(refs, " OR "))
end

-- Open the cycle's session: fresh connection, timeouts, schema check,
-- prepared claims. Returns conn, sql or nil, err.
function M.open(pg, conninfo, p)
  local conn, err = pg.connect(conninfo)
  if not conn then return nil, err end
  local sets = {
    ("SET statement_timeout = %d"):format(math.ceil(p.statement_timeout * 1000)),
    ("SET lock_timeout = %d"):format(math.ceil(p.lock_timeout * 1000)),
    "SET idle_in_transaction_session_timeout = 0",
  }
  for _, s in ipairs(sets) do
    local ok, e = conn:query(s)
    if not ok then
      conn:close()
      return nil, e
    end
  end
  local ok, e = M.check_schema(conn, p)
  if not ok then
    conn:close()
    return nil, e
  end
  local sql = build_sql(conn, p)
  -- Prepared once per session: the claim and the delete run every batch.
  for name, text in pairs({ resclean_claim_first = sql.claim_first .. " FOR UPDATE SKIP LOCKED",
                            resclean_claim_next = sql.claim_next .. " FOR UPDATE SKIP LOCKED",
                            resclean_delete = sql.delete }) do
    ok, e = conn:prepare(name, text)
    if not ok then
      conn:close()
      return nil, e
    end
  end
  -- The referenced pre-check is an optimisation: tried once here, outside
  -- any transaction (a failure inside one would abort it), else left out.
  local ref = M.referenced_sql(conn, p)
  if ref and conn:prepare("resclean_referenced", ref) and conn:exec_prepared("resclean_referenced", {}) then
    sql.referenced = ref
  end
  return conn, sql
end

-- Run body(conn, sql, run) on a fresh session of its own, closed after;
-- returns exit code, summary line (event), run.
local function with_session(opts, event, body)
  local run = M.new_run(opts)
  local conn, sql = M.open(opts.pg, opts.conninfo, opts.policy)
  if not conn then
    local code = open_failure_code(sql)
    return code, run:summary(event, { error = errmsg(sql), exit_code = code }), run
  end
  run.db_pid = conn:backend_pid()
  local code, extra = body(conn, sql, run)
  conn:close()
  extra = extra or {}
  extra.exit_code = code
  return code, run:summary(event, extra), run
end

-- One sweep cycle. opts: pg (module), store (storage adapter), policy,
-- conninfo, dry_run, run_id. Returns exit code, summary fields.
function M.cycle(opts)
  local code, summary = with_session(opts, "sweep", function(conn, sql, run)
    return M.sweep_batches(conn, sql, opts.store, run, opts)
  end)
  return code, summary
end

function M.sweep_batches(conn, sql, store, run, opts)
  local p = run.policy
  if p.singleton then
    local res, err = conn:query("SELECT pg_try_advisory_lock(hashtext('resclean:' || $1)::int8) AS got", p.table)
    if not res then return stop_on(err) end
    if not res[1].got then
      log.info("singleton_busy", { run_id = run.run_id, message = "another sweeper holds the singleton lock" })
      return M.EXIT.ok, { singleton_busy = true }
    end
  end
  local res, err = conn:query(sql.eligible, p.max_age, p.upload_types)
  if not res then return stop_on(err) end
  run.eligible = res[1].n
  run.oldest_age_s = res[1].oldest
  if opts.check_plan then opts.check_plan(conn, sql, run) end

  local last
  local limit_left = p.max_deletes_per_run
  while true do
    if sys.stopping() then
      return M.EXIT.ok, { stopped = sys.stopping() }
    end
    -- No audit trail, no deletes: a log that cannot be written stops the
    -- sweep before the next claim.
    local ok_log, why = log.healthy()
    if not ok_log then return M.log_failed(why) end
    local n = p.batch_size
    if limit_left then
      if limit_left <= 0 then return run:exit_code(), { limit_reached = true } end
      n = math.min(n, limit_left)
    end
    local code, items = M.one_batch(conn, sql, store, run, last, n)
    if code then return code, items end
    if not items then break end
    last = items.last
    if limit_left then limit_left = limit_left - items.n end
    run:progress()
  end
  return run:exit_code()
end

-- Every item of a batch failed for the same reason outside the item
-- (storage unreachable, credentials refused): the cycle ends on it.
function M.storage_stopped(err)
  local code = errors.exit_code(err)
  local what = code == M.EXIT.unreachable and "storage unreachable: " or "storage refused: "
  return code, { error = what .. errmsg(err) }
end

-- The log cannot be written: exit 2, the reason on stderr (where the log
-- itself cannot go).
function M.log_failed(why)
  local msg = ("the log cannot be written (%s): stopping before deleting anything further"):format(tostring(why))
  io.stderr:write("resclean: ", msg, "\n")
  return M.EXIT.usage, { error = msg, log_failed = true }
end

-- Claim and process one batch in its own transaction. Returns nil, items
-- ({last, n}) to go on, nil, nil when nothing was left, or an exit code
-- and summary extras to stop the cycle.
function M.one_batch(conn, sql, store, run, last, n)
  local t0 = sys.monotime()
  run.phase = {}
  local tx <close>, err = conn:begin()
  if not tx then return stop_on(err) end
  local ok
  ok, err = conn:query("SET CONSTRAINTS ALL IMMEDIATE")
  if not ok then return stop_on(err) end
  local items
  items, err = claim(conn, run.policy, run, last, n)
  if not items then return stop_on(err) end
  local t1 = sys.monotime()
  if #items == 0 then
    tx:commit()
    return nil, nil
  end
  local done, storage_stop, extra = settle(conn, tx, sql, store, run, items)
  if not done then return storage_stop, extra end
  local t3 = sys.monotime()
  log_items(run, done)
  -- Where a batch's time goes, for tuning batch_size and concurrency.
  local ph = run.phase
  run.emit("debug", "batch", { run_id = run.run_id, claimed = #items, processed = #done,
                               duration_ms = to_ms(sys.monotime() - t0), claim_ms = to_ms(t1 - t0),
                               rows_ms = ph.rows_s and to_ms(ph.rows_s), head_ms = ph.head_s and to_ms(ph.head_s),
                               delete_ms = ph.delete_s and to_ms(ph.delete_s), commit_ms = to_ms(run.phase.commit_s),
                               log_ms = to_ms(sys.monotime() - t3) })
  if storage_stop then return M.storage_stopped(storage_stop) end
  return nil, { last = items[#items], n = #items }
end

-- Cancel: given ids, no age condition. Each id is locked on its own (the
-- lock timeout bounds the wait); confirmed and non-upload rows are refused,
-- missing ones are already done.
function M.cancel(opts)
  local code, summary = with_session(opts, "cancel", function(conn, sql, run)
    run.eligible = #opts.ids
    return M.cancel_ids(conn, sql, opts.store, run, opts.ids)
  end)
  return code, summary
end

function M.cancel_ids(conn, sql, store, run, ids)
  local p = run.policy
  local tx <close>, err = conn:begin()
  if not tx then return stop_on(err) end
  local ok
  ok, err = conn:query("SET CONSTRAINTS ALL IMMEDIATE")
  if not ok then return stop_on(err) end
  local todo, seen = {}, {}
  for _, id in ipairs(ids) do
    if not seen[id] then
      seen[id] = true
      ok, err = tx:savepoint("lock")
      if not ok then return stop_on(err) end
      local res
      res, err = conn:query(sql.lock_one, id)
      if not res then
        if err.code == "55P03" then
          tx:rollback_to("lock")
          run:outcome({ id = id }, "skipped", "locked")
        elseif err.code == "22P02" then
          tx:rollback_to("lock")
          run:outcome({ id = id }, "not_found", "invalid_id")
        else
          return stop_on(err)
        end
      elseif #res == 0 then
        tx:release("lock")
        run:outcome({ id = id }, "not_found")
      else
        tx:release("lock")
        local row = res[1]
        local item = { id = row.id, age_s = row.age_s, row = row }
        if row._uploaded then
          run:outcome(item, "refused", "confirmed")
        elseif not policy_mod.is_upload_type(p, row._type) then
          run:outcome(item, "refused", "not_upload")
        else
          todo[#todo + 1] = item
        end
      end
    end
  end
  local ok_log, why = log.healthy()
  if not ok_log then return M.log_failed(why) end
  local done, storage_stop, extra = settle(conn, tx, sql, store, run, todo)
  if not done then return storage_stop, extra end
  log_items(run, done)
  if storage_stop then return M.storage_stopped(storage_stop) end
  -- A cancel that left a resource (locked) did not do what was asked.
  if run.counts.skipped > 0 then return M.EXIT.failed end
  return run:exit_code()
end

return M
