-- Cancel: clean up given pending resources now, through the batch's own
-- steps, with no age condition. Each id is locked on its own (the lock
-- timeout bounds the wait): a locked row is skipped, confirmed and
-- non-upload rows are refused, missing ones are already done. Exit 1 when
-- anything was left (skipped, refused or failed): the cancel did not do
-- what was asked. Also the turn that takes the requests an application
-- wrote (M.requests).
local batch = require("resclean.batch")
local log = require("resclean.log")
local policy_mod = require("resclean.policy")
local runs = require("resclean.run")
local session = require("resclean.session")

local M = {}

local cancel_ids, lock_all, lock_one, take, attribute, request_lines

-- opts: pg, store, policy, conninfo, dry_run, run_id, ids, reason,
-- request_id. It runs under the caller's own database authority (DELETE on
-- the table); its lines name that role (requested_by, the session's
-- current_user) and the reason and request id given (request_reason,
-- request_id; "reason" on a resource line is its outcome's). Returns exit code,
-- summary fields.
function M.run(opts)
  local who = {}
  local emit = opts.emit or log.emit
  local o = setmetatable({ emit = function(level, event, f)
    if event == "resource" then
      f.requested_by, f.request_reason, f.request_id = who.role, opts.reason, opts.request_id
    end
    emit(level, event, f)
  end }, { __index = opts })
  local code, summary = session.with(o, "cancel", function(conn, sql, run)
    run.eligible = #opts.ids
    local res, err = conn:query("SELECT current_user::text AS role")
    if not res then return runs.ended_on(err) end
    who.role = res[1].role
    local code, extra = M.ids(conn, sql, opts.store, run, opts.ids)
    extra = extra or {}
    extra.requested_by, extra.request_reason, extra.request_id = who.role, opts.reason, opts.request_id
    return code, extra
  end)
  return code, summary
end

-- Cancel ids on an open session; where a cancel ends. Returns exit code,
-- summary fields.
function M.ids(conn, sql, store, run, ids)
  local ok, err = cancel_ids(conn, sql, store, run, ids)
  if not ok then return runs.ended_on(err) end
  if run.counts.skipped > 0 then return runs.EXIT.failed end
  return run:exit_code()
end

-- Lock, check and settle the ids in one transaction. Returns true, or
-- nil, err (with what was decided logged).
function cancel_ids(conn, sql, store, run, ids)
  local tx <close>, err = conn:begin()
  if not tx then return nil, err end
  local ok
  ok, err = conn:query("SET CONSTRAINTS ALL IMMEDIATE")
  if not ok then return nil, err end
  local ctx = { conn = conn, tx = tx, sql = sql, store = store, run = run }
  local todo
  todo, err = lock_all(ctx, ids)
  if not todo then return nil, err end
  local ok_log, why = log.healthy()
  if not ok_log then return nil, runs.log_unwritable(why) end
  local done
  done, err = batch.settle(ctx, todo)
  if not done then return nil, err end
  run:log_decided(done)
  err = batch.stop_error(done)
  if err then return nil, err end
  return true
end

-- ------------------------------------------------------------ requests
-- The cancels an application asked for are rows of the policy's
-- cancel_requests_table (examples/cancel-requests.sql): writing one is a
-- grant, and a trigger stamps each with the role that wrote it. A turn
-- takes pending requests (FOR UPDATE SKIP LOCKED, so sweepers share them),
-- at most max_ids ids but always one whole request, and in one transaction
-- deletes them, locks and settles their ids, and commits: a crash or an
-- error rolls the requests back with the rest, and a later turn re-does
-- them (a cancel is idempotent). Work and log are bounded by requests, not
-- ids: ids with no row and ids asked twice are counted on their request's
-- line (with a few samples), not logged one by one; resource lines (ids
-- with a row) name the request, the role that wrote it, its reason and
-- request id.

M.MAX_REQUESTS = 1000 -- requests looked at in a turn
M.REQUEST_LINES = 20  -- requests logged one line each in a turn; the rest summed on the turn's line
M.SAMPLES = 3         -- ids with no row named on a request's line

-- One turn on an open session. opts: table (the requests table), max_ids.
-- Returns info {requests, more} (more: requests were left for the next
-- turn), or nil, err (the transaction rolled back: every request stays),
-- or nil, err, true (committed, the requests taken, but the storage failed
-- them all alike: their resource lines say failed).
function M.requests(conn, sql, store, run, opts)
  local tx <close>, err = conn:begin()
  if not tx then return nil, err end
  local ok
  ok, err = conn:query("SET CONSTRAINTS ALL IMMEDIATE")
  if not ok then return nil, err end
  local reqs, more
  reqs, more, err = take(conn, opts)
  if not reqs then return nil, err end
  if #reqs == 0 then return { requests = 0 } end
  local by_id, order = attribute(reqs)
  run.emit = (function(emit)
    return function(level, event, f)
      local r = event == "resource" and by_id[f.resource_id]
      if r then
        f.request, f.requested_by, f.request_reason, f.request_id = r.id, r.requested_by, r.reason, r.request_id
        r.outcomes[f.outcome] = (r.outcomes[f.outcome] or 0) + 1
      end
      emit(level, event, f)
    end
  end)(run.emit)
  run.eligible = #order
  -- Which ids have a row: one query for the lot, so unknown ids cost nothing more.
  local p = run.policy
  local q = function(s) return conn:quote_ident(s) end
  local found
  found, err = conn:query(("SELECT %s::text AS id FROM %s WHERE %s = ANY($1)"):format(q(p.id_column), q(p.table),
    q(p.id_column)), order)
  if not found then return nil, err end
  local exists = {}
  for _, r in ipairs(found) do exists[r.id] = true end
  local ctx = { conn = conn, tx = tx, sql = sql, store = store, run = run }
  local todo = {}
  for _, id in ipairs(order) do
    local r = by_id[id]
    if exists[id] then
      local item
      item, err = lock_one(ctx, id)
      if item then
        todo[#todo + 1] = item
      elseif err then
        return nil, err
      end
    else
      r.not_found = r.not_found + 1
      if #r.samples < M.SAMPLES then r.samples[#r.samples + 1] = id end
      run.counts.not_found = run.counts.not_found + 1
      run.done = run.done + 1
    end
  end
  local ok_log, why = log.healthy()
  if not ok_log then return nil, runs.log_unwritable(why) end
  if #todo > 0 then
    local done
    done, err = batch.settle(ctx, todo)
    if not done then return nil, err end
    run:log_decided(done)
    request_lines(run, reqs)
    -- Committed: the requests are taken, their failed ids logged as such.
    err = batch.stop_error(done)
    if err then return nil, err, true end
  else
    ok, err = tx:commit()
    if not ok then return nil, err end
    request_lines(run, reqs)
  end
  return { requests = #reqs, more = more }
end

-- Lock the oldest pending requests, choose those of this turn, delete them
-- (uncommitted) and return them in order, with whether some were left.
-- Returns reqs, more or nil, nil, err.
function take(conn, opts)
  local t = conn:quote_ident(opts.table)
  local heads, err = conn:query(("SELECT id, cardinality(resource_ids)::int AS n FROM %s ORDER BY id LIMIT $1 "
    .. "FOR UPDATE SKIP LOCKED"):format(t), M.MAX_REQUESTS)
  if not heads then return nil, nil, err end
  if #heads == 0 then return {}, false end
  local pick, total = {}, 0
  for _, h in ipairs(heads) do
    if #pick > 0 and total + h.n > opts.max_ids then break end
    pick[#pick + 1] = h.id
    total = total + h.n
  end
  local reqs
  reqs, err = conn:query(("DELETE FROM %s WHERE id = ANY($1::int8[]) RETURNING id, "
    .. "array_to_string(resource_ids, ',') AS ids, requested_by::text AS requested_by, reason, request_id, "
    .. "extract(epoch FROM now() - requested_at)::float8 AS waited_s"):format(t), pick)
  if not reqs then return nil, nil, err end
  table.sort(reqs, function(a, b) return a.id < b.id end)
  return reqs, #pick < #heads or #heads == M.MAX_REQUESTS
end

-- Each id once, attributed to the first request naming it; the others
-- count it as a duplicate. Returns by_id (id -> request), order (ids).
function attribute(reqs)
  local by_id, order = {}, {}
  for _, r in ipairs(reqs) do
    r.n, r.duplicates, r.not_found, r.samples, r.outcomes = 0, 0, 0, {}, {}
    for id in r.ids:gmatch("[^,]+") do
      r.n = r.n + 1
      if by_id[id] then
        r.duplicates = r.duplicates + 1
      else
        by_id[id] = r
        order[#order + 1] = id
      end
    end
  end
  return by_id, order
end

-- One line per request (the first REQUEST_LINES of the turn): who asked,
-- why, how many ids, and what became of them.
function request_lines(run, reqs)
  log.hold()
  for i = 1, math.min(#reqs, M.REQUEST_LINES) do
    local r = reqs[i]
    local f = { run_id = run.run_id, request = r.id, requested_by = r.requested_by, request_reason = r.reason,
      request_id = r.request_id, waited_s = math.floor(r.waited_s * 10 + 0.5) / 10, ids = r.n,
      duplicates = r.duplicates, not_found = r.not_found,
      not_found_ids = #r.samples > 0 and table.concat(r.samples, " ") or nil }
    for outcome, n in pairs(r.outcomes) do f[outcome] = (f[outcome] or 0) + n end
    run.emit("info", "cancel_request", f)
  end
  log.release()
end

-- Lock each id once; those to clean up are returned, the rest logged.
-- Returns items, or nil, err.
function lock_all(ctx, ids)
  local todo, seen = {}, {}
  for _, id in ipairs(ids) do
    if not seen[id] then
      seen[id] = true
      local item, err = lock_one(ctx, id)
      if item then
        todo[#todo + 1] = item
      elseif err then
        return nil, err
      end
    end
  end
  return todo
end

-- Lock one id. Returns the item to clean up, false when its outcome is
-- decided and logged (locked, invalid, missing, confirmed, not an upload),
-- or nil, err.
function lock_one(ctx, id)
  local tx, run = ctx.tx, ctx.run
  local ok, err = tx:savepoint("lock")
  if not ok then return nil, err end
  local res
  res, err = ctx.conn:query(ctx.sql.lock_one, id)
  if not res then
    if err.code == "55P03" then
      tx:rollback_to("lock")
      run:outcome({ id = id }, "skipped", "locked")
    elseif err.code == "22P02" then
      tx:rollback_to("lock")
      run:outcome({ id = id }, "not_found", "invalid_id")
    else
      return nil, err
    end
    return false
  end
  tx:release("lock")
  if #res == 0 then
    run:outcome({ id = id }, "not_found")
    return false
  end
  local row = res[1]
  local item = { id = row.id, age_s = row.age_s, row = row }
  if row._uploaded then
    run:outcome(item, "refused", "confirmed")
  elseif not policy_mod.is_upload_type(run.policy, row._type) then
    run:outcome(item, "refused", "not_upload")
  else
    return item
  end
  return false
end

return M
