-- One batch, in one transaction: claim stale pending rows (FOR UPDATE SKIP
-- LOCKED), delete their rows under a savepoint (a foreign key fails there,
-- before anything irreversible), then their objects; put back the rows of
-- objects that stayed; commit; log one line per resource. Per batch one
-- claim, one row delete, parallel HEADs and DeleteObjects; per item only
-- decisions and a log line.
--
-- Invariant: a row is deleted only in a transaction that commits after its
-- object's delete succeeded. A crash leaves the row and the object, or the
-- row without its object; never an object without its row.
--
-- The steps share a context ctx = { conn, tx, sql, store, run } and return
-- value, err (err an error table); none picks an exit code (run.ended_on
-- does, where a cycle or a cancel ends).
local commit_doubt = require("resclean.commit_doubt")
local errors = require("resclean.errors")
local log = require("resclean.log")
local outcome = require("resclean.outcome")
local policy_mod = require("resclean.policy")
local runs = require("resclean.run")
local sys = require("resclean.sys")

local M = {}

local claim, keys_of, delete_rows, delete_part, named_item, storage_start, decide, restore, line_bytes

local function to_ms(seconds) return math.floor(seconds * 1000 + 0.5) end
local function nothing() end

-- A transaction's end without commit (rolls back; never raises).
local function close_tx(tx)
  local mt = getmetatable(tx)
  if mt and mt.__close then mt.__close(tx) end
end

-- The first half of a batch: claim up to n rows after `last`, delete their
-- rows (uncommitted, under savepoint "rows"), HEAD their keys (verify) and
-- send their objects' deletes, without waiting for them. pump (optional)
-- is called between the steps: it moves another batch's deletes on.
-- Returns the started batch b (b.items: the claimed items; none when
-- nothing was left, then already committed), to be ended by M.finish(b);
-- or nil, err (rolled back, its items logged).
function M.start(conn, sql, store, run, last, n, pump)
  local t0 = sys.monotime()
  -- No audit trail, no claim: a log write failed (in the batch before, or
  -- in this turn's lines) stops the sweep here.
  local ok_log, why = log.healthy()
  if not ok_log then return nil, runs.log_unwritable(why) end
  local tx, err = conn:begin()
  if not tx then return nil, err end
  -- stale: every row is older than max_age (cancel's are not)
  local b = { conn = conn, tx = tx, sql = sql, store = store, run = run, stale = true, phase = {}, t0 = t0,
              pump = pump or nothing }
  local ok
  ok, err = conn:query("SET CONSTRAINTS ALL IMMEDIATE")
  local items
  if ok then items, err = claim(b, last, n) end
  if not items then
    close_tx(tx)
    return nil, err
  end
  b.items = items
  b.phase.claim_s = sys.monotime() - t0
  b.pump()
  if #items == 0 then
    ok, err = tx:commit()
    if not ok then return nil, err end
    return b
  end
  ok, err = M.begin_settle(b, items)
  if not ok then return nil, err end
  return b
end

-- The second half: wait for the objects' deletes, decide each outcome, put
-- back the rows of objects that stayed, commit, log. Returns b.items, or
-- nil, err when the cycle must end (the items are logged).
function M.finish(b)
  local run = b.run
  if #b.items == 0 then return b.items end
  local done, err = M.end_settle(b)
  if not done then return nil, err end
  local t3 = sys.monotime()
  run:log_decided(done)
  -- Where a batch's time goes, for tuning batch_size and concurrency.
  local ph = b.phase
  run.emit("debug", "batch", { run_id = run.run_id, claimed = #b.items, processed = #done,
                               duration_ms = to_ms(sys.monotime() - b.t0), claim_ms = to_ms(ph.claim_s),
                               rows_ms = ph.rows_s and to_ms(ph.rows_s), head_ms = ph.head_s and to_ms(ph.head_s),
                               delete_ms = ph.delete_s and to_ms(ph.delete_s), commit_ms = to_ms(ph.commit_s),
                               log_ms = to_ms(sys.monotime() - t3), wait_ms = ph.wait_s and to_ms(ph.wait_s) })
  err = M.stop_error(done)
  if err then return nil, err end
  return b.items
end

-- Process items in ctx.tx, then commit (a dry run rolls back). Returns the
-- items whose rows were deleted, outcomes decided (item.outcome, .reason)
-- and not yet logged; or nil, err with every item that did not make it
-- logged as failed.
function M.settle(ctx, items)
  ctx.phase = ctx.phase or {}
  ctx.pump = ctx.pump or nothing
  local ok, err = M.begin_settle(ctx, items)
  if not ok then return nil, err end
  return M.end_settle(ctx)
end

-- Bad keys skipped, rows deleted, HEADs, objects' deletes sent. Returns
-- true, or nil, err (the transaction rolled back, the items logged failed).
function M.begin_settle(ctx, items)
  local todo, kerr = keys_of(ctx, items)
  if not todo then
    close_tx(ctx.tx)
    return nil, kerr
  end
  local t0 = sys.monotime()
  local deleted, err = delete_rows(ctx, todo)
  if not deleted then return M.abort(ctx, items, err) end
  ctx.phase.rows_s = sys.monotime() - t0
  ctx.pump()
  ctx.all, ctx.deleted = items, deleted
  storage_start(ctx, deleted)
  return true
end

-- Objects' deletes answered: outcomes, rows put back, commit. Returns the
-- items whose rows were deleted (decided, not logged), or nil, err.
function M.end_settle(ctx)
  local run, tx = ctx.run, ctx.tx
  local kept, failed = decide(ctx, ctx.deleted)
  if failed > 0 then
    local ok, err = restore(ctx, kept)
    if not ok then return M.abort(ctx, ctx.all, err) end
  end
  local done = ctx.deleted
  local t = sys.monotime()
  if run.dry_run then
    tx:rollback()
  else
    -- No deletion without its line: the room for the lines is taken (a
    -- full disk fails here) and the log checked right before the commit;
    -- a log that failed rolls the batch back, in flight or not (its rows
    -- stay; objects already deleted make them record_only next run).
    local ok_log, why = log.reserve(line_bytes(run, done))
    if not ok_log then
      close_tx(tx)
      return nil, runs.log_unwritable(why)
    end
    local ok, err = tx:commit()
    if not ok then
      if commit_doubt.answer_lost(err) then
        commit_doubt.resolve(ctx, done, err)
      else
        for _, it in ipairs(done) do it.outcome, it.reason = "failed", "commit" end
        run:log_decided(done)
      end
      return nil, err
    end
  end
  ctx.phase.commit_s = sys.monotime() - t
  return done
end

-- Bytes the resource lines of items take, generously: one line encoded as
-- it will be, the others from its length and their own id's and key's.
function line_bytes(run, items)
  if #items == 0 then return 0 end
  local function len(it) return #tostring(it.id) + #tostring(it.key or "") end
  local first = items[1]
  local fixed = #log.encode("info", "resource", { run_id = run.run_id, resource_id = first.id, key = first.key,
    age_s = 9999999999, outcome = "object_deleted", reason = "InternalErrorInternalError" }) - len(first)
  local n = 4096
  for _, it in ipairs(items) do n = n + fixed + 2 * len(it) + 16 end
  return n
end

-- Database trouble mid-batch: the transaction rolls back; objects already
-- deleted leave rows behind (the next run's record_only). Every item not
-- yet logged is logged failed. Returns nil, err. No deletes are out then:
-- the rows fail before they are sent, the put-back after they answered.
function M.abort(ctx, items, err)
  close_tx(ctx.tx)
  for _, it in ipairs(items) do
    if not it.logged then ctx.run:outcome(it, "failed", "database") end
  end
  return nil, err
end

-- After a settled batch: the error that ends the cycle when every object
-- delete failed alike for a reason outside the items (storage unreachable:
-- exit 3; credentials refused: exit 2), else nil.
function M.stop_error(done)
  local cause = outcome.batch_stop(done)
  if not cause then return nil end
  local class = errors.classify(cause)
  local what = class == "transient" and "storage unreachable: " or "storage refused: "
  return errors.new(class, what .. errors.message(cause), { cause = cause })
end

function claim(ctx, last, n)
  local run = ctx.run
  local p = run.policy
  local res, err
  if last then
    res, err = ctx.conn:exec_prepared("resclean_claim_next", p.max_age, p.upload_types, n, last._created, last.id)
  else
    res, err = ctx.conn:exec_prepared("resclean_claim_first", p.max_age, p.upload_types, n)
  end
  if not res then return nil, err end
  local items = {}
  for i, row in ipairs(res) do
    items[i] = { id = row.id, age_s = row.age_s, row = row, _created = row._created }
  end
  run.claimed = (run.claimed or 0) + #items
  return items
end

-- A batch of at least this many rows (or all of a smaller batch_size) in
-- which key() fits none is a policy error: a typo in key(), not odd rows.
M.KEY_GUARD_MIN = 5

-- The items whose key(row) gives a key (it.key set); the rest skipped
-- (bad_key, counted in run.bad_keys for the cycle's warning). Returns the
-- items, or nil, err (a policy error, nothing logged) when key() fits none
-- of a batch of KEY_GUARD_MIN rows or more.
function keys_of(ctx, claimed)
  local run = ctx.run
  local p = run.policy
  local items, bad = {}, {}
  for _, it in ipairs(claimed) do
    local key, why = policy_mod.row_key(p, it.row)
    if key then
      it.key = key
      items[#items + 1] = it
    else
      bad[#bad + 1] = { it = it, why = why }
    end
  end
  if #items == 0 and #bad >= math.min(M.KEY_GUARD_MIN, p.batch_size) then
    return nil, errors.new("config", ("policy %s: key() fits none of the %d rows of a batch (row %s: %s): fix key() "
      .. "(it reads key_columns %s) or key_pattern; nothing was deleted (resclean run check tries key() on "
      .. "pending rows)"):format(p.source or "(defaults)", #bad, bad[1].it.id, bad[1].why,
      table.concat(p.key_columns, ", ")), { field = "key", resource_id = bad[1].it.id })
  end
  for _, b in ipairs(bad) do
    run:outcome(b.it, "skipped", outcome.KEPT.bad_key)
    log.debug("bad_key", { run_id = run.run_id, resource_id = b.it.id, detail = b.why })
    run.bad_keys = run.bad_keys or { n = 0, id = b.it.id, why = b.why }
    run.bad_keys.n = run.bad_keys.n + 1
  end
  return items
end

-- The cycle's warnings, one line each (a cycle logs them once, at its end):
-- rows key() did not fit (kept, bad_key), and HEADs refused for permission
-- (outcomes deleted, reason head_refused: unverified).
function M.cycle_warnings(run)
  local p = run.policy
  local b = run.bad_keys
  if b then
    run.emit("warn", "bad_keys", { run_id = run.run_id, count = b.n, resource_id = b.id, detail = b.why,
      message = ("key() fits %d row%s of this cycle (row %s: %s): kept (skipped, bad_key); fix those rows, or key() "
        .. "and key_pattern in the policy"):format(b.n, b.n > 1 and "s" or "", b.id, b.why) })
  end
  local h = run.head_refused
  if h then
    run.emit("warn", "head_refused", { run_id = run.run_id, count = h.n, key = h.key, code = h.code,
      message = ("HEAD refused (%s) for %d object%s of this cycle: their outcomes are unverified (deleted, "
        .. "reason head_refused); allow s3:GetObject on arn:aws:s3:::%s/*, or set verify = false in the policy "
        .. "to send no HEAD"):format(tostring(h.code), h.n, h.n > 1 and "s" or "", p.bucket) })
  end
end

-- How many referenced rows of one set are taken from the error's detail
-- before halving instead: each retry deletes the whole rest again, so with
-- many referenced rows halving is cheaper.
local NAMED_RETRIES = 4

-- Delete the rows of items under savepoint "rows". Referenced rows are
-- skipped: those the foreign keys found at open() point at are left out
-- beforehand (a failed DELETE costs as much as one that succeeds), the
-- rest come out of the 23503 handling (delete_part). Returns the items
-- whose rows are deleted (inside the transaction), or nil, err.
function delete_rows(ctx, items)
  if #items == 0 then return items end
  local run = ctx.run
  local todo = items
  if ctx.sql.referenced then
    local ids = {}
    for i, it in ipairs(items) do ids[i] = it.id end
    local res, err = ctx.conn:exec_prepared("resclean_referenced", ids)
    if not res then return nil, err end
    if #res > 0 then
      local refd = {}
      for _, r in ipairs(res) do refd[r.id] = true end
      todo = {}
      for _, it in ipairs(items) do
        if refd[it.id] then run:outcome(it, "skipped", outcome.KEPT.referenced) else todo[#todo + 1] = it end
      end
    end
  end
  local out = {}
  local ok, err = delete_part(ctx, table.move(todo, 1, #todo, 1, {}), out, "rows", NAMED_RETRIES)
  if not ok then return nil, err end
  return out
end

-- Delete the rows of items (a list) under savepoint `sp`, appending the
-- deleted ones to out. On a foreign-key violation (23503) the referenced
-- rows are found and skipped: the one the error names is dropped and the
-- rest retried, else the set is halved, each half under its own savepoint.
-- One referenced row in a batch of n costs one retry, not n single deletes.
-- Returns true or nil, err.
function delete_part(ctx, items, out, sp, named_left)
  local tx, run = ctx.tx, ctx.run
  local ok, err = tx:savepoint(sp)
  if not ok then return nil, err end
  while true do
    local ids = {}
    for i, it in ipairs(items) do ids[i] = it.id end
    local res
    res, err = ctx.conn:exec_prepared("resclean_delete", ids)
    if res then
      local gone = {}
      for _, r in ipairs(res) do gone[r.id] = true end
      for _, it in ipairs(items) do
        if gone[it.id] then out[#out + 1] = it else run:outcome(it, "skipped", outcome.KEPT.row_vanished) end
      end
      break
    end
    if err.code ~= "23503" then return nil, err end
    local fk = err
    ok, err = tx:rollback_to(sp)
    if not ok then return nil, err end
    local i = #items == 1 and 1 or (named_left > 0 and named_item(fk, items))
    if i then
      run:outcome(items[i], "skipped", outcome.KEPT.referenced)
      table.remove(items, i)
      named_left = named_left - 1
      if #items == 0 then break end
    else
      local half = #items // 2
      ok, err = delete_part(ctx, table.move(items, 1, half, 1, {}), out, "part", named_left)
      if not ok then return nil, err end
      ok, err = delete_part(ctx, table.move(items, half + 1, #items, 1, {}), out, "part", named_left)
      if not ok then return nil, err end
      break
    end
  end
  -- "rows" stays: storage failures roll back to it.
  if sp ~= "rows" then return tx:release(sp) end
  return true
end

-- The item a foreign-key error names: PostgreSQL's detail quotes the key
-- ("Key (id)=(...) is still referenced ..."). Only a value equal to one of
-- our own ids counts, so a translated or missing detail just means "halve".
function named_item(err, items)
  local detail = err.detail
  if type(detail) ~= "string" then return nil end
  local pos = {}
  for i, it in ipairs(items) do pos[it.id] = i end
  for v in detail:gmatch("%(([^()]*)%)") do
    if pos[v] then return pos[v] end
  end
  return nil
end

-- The storage half, begun: items' rows are deleted (uncommitted) under
-- savepoint "rows". HEAD the keys (verify), then send the objects' deletes
-- (not on a dry run) without waiting: ctx.pending, ended by decide().
-- A store without delete_start (a fake) deletes here, at once.
function storage_start(ctx, items)
  local run, store = ctx.run, ctx.store
  local p = run.policy
  local keys = {}
  for i, it in ipairs(items) do keys[i] = it.key end
  ctx.keys = keys
  local t0 = sys.monotime()
  if p.verify and #keys > 0 then
    -- A small bucket may be listed instead (storage.lua): only for stale
    -- keys, whose upload URLs expired. A key the listing lacks is logged
    -- deleted (not_listed), never record_only: an object may land after.
    local opts
    if ctx.stale and p.verify_list ~= false and p.max_age >= (p.url_lifetime or math.huge) then
      opts = { expected = math.max((run.eligible or 0) - (run.claimed or 0) + #keys, #keys) }
    end
    ctx.exists = store:head_many(keys, p.concurrency, opts)
    ctx.pump()
  end
  local t1 = sys.monotime()
  ctx.phase.head_s = t1 - t0
  ctx.delete_t0 = t1
  if run.dry_run or #keys == 0 then
    local results = {}
    for i = 1, #keys do results[i] = true end
    ctx.results = results
  else
    -- Verbose replies (storage.lua): a key counts as deleted only when
    -- listed as deleted; quiet_deletes = true: unless listed as an error.
    local dopts = { quiet = p.quiet_deletes == true }
    if store.delete_start then
      ctx.pending = store:delete_start(keys, p.concurrency, dopts)
    else
      ctx.results = store:delete_many(keys, p.concurrency, dopts)
    end
  end
end

-- The storage half, ended: wait for the deletes, decide each item's
-- outcome. Returns the items whose objects are gone and the number that
-- failed.
function decide(ctx, items)
  local results = ctx.results
  if ctx.pending then
    local t = sys.monotime()
    results = ctx.pending:finish()
    ctx.pending = nil
    ctx.phase.wait_s = sys.monotime() - t
  end
  ctx.phase.delete_s = sys.monotime() - ctx.delete_t0
  local exists = ctx.exists
  local kept, failed = {}, 0
  local decide_one = outcome.decide
  for i, it in ipairs(items) do
    local r = results[i]
    it.outcome, it.reason = decide_one(exists and exists[i], r)
    if it.reason == "head_refused" then
      local run = ctx.run
      run.head_refused = run.head_refused or { n = 0, key = it.key, code = exists[i].code or exists[i].status }
      run.head_refused.n = run.head_refused.n + 1
    end
    if r == true then
      kept[#kept + 1] = it
    else
      failed = failed + 1
      it.err = r
    end
  end
  return kept, failed
end

-- Some objects stayed: put every row back (roll back to "rows") and delete
-- again only the rows whose objects are gone. Returns true or nil, err.
function restore(ctx, kept)
  local ok, err = ctx.tx:rollback_to("rows")
  if not ok then return nil, err end
  if #kept == 0 then return true end
  local ids = {}
  for i, it in ipairs(kept) do ids[i] = it.id end
  local res
  res, err = ctx.conn:exec_prepared("resclean_delete", ids)
  if not res then return nil, err end
  return true
end

return M
