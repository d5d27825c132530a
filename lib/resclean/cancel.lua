-- Cancel: clean up given pending resources now, through the batch's own
-- steps, with no age condition. Each id is locked on its own (the lock
-- timeout bounds the wait): a locked row is skipped, confirmed and
-- non-upload rows are refused, missing ones are already done. Exit 1 when
-- anything was left (skipped, refused or failed): the cancel did not do
-- what was asked. Also the cancel requests: written for the sweepers
-- (M.request, cancel --notify), and the turn that takes them (M.requests).
local batch = require("resclean.batch")
local errors = require("resclean.errors")
local log = require("resclean.log")
local outcome_mod = require("resclean.outcome")
local policy_mod = require("resclean.policy")
local presence = require("resclean.presence")
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

-- ------------------------------------------------------------ asking
-- cancel --notify: the ids go into the policy's cancel_requests_table, for
-- the sweepers to take (M.requests; the table's trigger wakes those that
-- listen). Writing a row is the right to cancel: no S3 credentials, no
-- DELETE on the resource table needed.

M.PER_REQUEST = 1000 -- ids a request row holds at most (the table's CHECK)

-- The grant a role lacks to write requests into table t.
local function grant_hint(t, role)
  return ("GRANT INSERT (resource_ids, reason, request_id) ON %s TO %s; GRANT USAGE ON SEQUENCE %s_id_seq TO %s "
    .. "(see examples/cancel-requests.sql)"):format(t, role, t, role)
end

-- The requests for ids (PER_REQUEST ids each) in one transaction, rolled
-- back by its scope when one fails. Returns the role that wrote them and
-- the number of rows, or nil, err.
local function write_requests(conn, t, ids, reason, request_id)
  local tx <close>, err = conn:begin()
  if not tx then return nil, err end
  local rows = 0
  for i = 1, #ids, M.PER_REQUEST do
    local chunk = table.move(ids, i, math.min(i + M.PER_REQUEST - 1, #ids), 1, {})
    local ok, qerr = conn:query(("INSERT INTO %s (resource_ids, reason, request_id) VALUES ($1::uuid[], $2, $3)")
      :format(conn:quote_ident(t)), chunk, reason, request_id)
    if not ok then return nil, qerr end
    rows = rows + 1
  end
  local res
  res, err = conn:query("SELECT current_user::text AS role")
  if not res then return nil, err end
  local ok
  ok, err = tx:commit()
  if not ok then return nil, err end
  return res[1].role, rows
end

-- Write the cancel requests for opts.ids into opts.table (opts: pg,
-- conninfo, table, ids, reason, request_id) and say whether a sweeper
-- listens. Returns the exit code (0 stored and a sweeper listens, 1 stored
-- but none listens), or nil, exit code, message (the error to report).
function M.request(opts)
  local t, ids, reason, request_id = opts.table, opts.ids, opts.reason, opts.request_id
  local conn <close>, err = opts.pg.connect(opts.conninfo)
  if not conn then return nil, errors.exit_code(err), "database: " .. errors.message(err) end
  local role, rows = write_requests(conn, t, ids, reason, request_id)
  if not role then
    err = rows
    if err.code == "42501" then
      local who = conn:query("SELECT current_user::text AS role")
      who = who and who[1] and who[1].role or "<role>"
      return nil, runs.EXIT.usage, ("database: role %s may not write cancel requests into %s: the operator "
        .. "grants it with %s"):format(who, t, grant_hint(t, who))
    elseif err.code == "42P01" then
      return nil, runs.EXIT.usage, ("database: table %q does not exist (or is not on the role's search_path): "
        .. "create it with examples/cancel-requests.sql, or check the policy's cancel_requests_table"):format(t)
    end
    return nil, errors.exit_code(err), "database: " .. errors.message(err)
  end
  -- Is a sweeper listening? Its listener holds a lock every role sees (presence.lua).
  local listeners, lerr = presence.listeners(conn, t)
  local n = listeners and #listeners or nil
  if n == 0 then
    log.warn("cancel_requested", { table = t, requests = rows, ids = #ids, requested_by = role,
      request_reason = reason, request_id = request_id, listeners = 0,
      message = ("stored, but no sweeper listens for the requests in %s on this database: the next cycle of a "
        .. "sweep takes it; a --once sweep (systemd timer, cron, Kubernetes CronJob) only at its next run. "
        .. "For cancels within a second, run the long-running sweep (without --once)"):format(t) })
    return runs.EXIT.failed
  end
  log.info("cancel_requested", { table = t, requests = rows, ids = #ids, requested_by = role, request_reason = reason,
    request_id = request_id, listeners = n,
    listeners_unknown = not listeners and errors.message(lerr) or nil,
    message = "stored: the listening sweepers take it now, every sweep at the start of "
      .. "its next cycle at the latest; each cancel shows in their log (via: request, requested_by)" })
  return runs.EXIT.ok
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
      run:outcome({ id = id }, "skipped", outcome_mod.KEPT.locked)
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
