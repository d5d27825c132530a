-- The sweep: one cycle claims stale pending rows batch after batch until
-- nothing is left, a limit is reached, a stop signal arrived (the batch in
-- hand finishes) or an error ends it. Read top-down:
--   sweeper.lua  the process: cycles on a schedule, supervisor, metrics, cancels
--   sweep.lua    the cycle: session, eligible count, the loop of batches,
--                how the cycle ends (its exit code, chosen here)
--   batch.lua    one batch in one transaction: claim, rows, objects, commit
--   commit_doubt.lua  a COMMIT whose answer was lost: asked, or settled next cycle
--   outcome.lua  a resource's outcome from the storage results (pure)
--   cancel.lua   given ids, through the batch's own steps
--   session.lua  connection, SETs, schema check, SQL, prepared statements
--   run.lua      counts, log lines, summary; an error becomes an exit code
local batch = require("resclean.batch")
local commit_doubt = require("resclean.commit_doubt")
local errors = require("resclean.errors")
local log = require("resclean.log")
local presence = require("resclean.presence")
local runs = require("resclean.run")
local session = require("resclean.session")
local sys = require("resclean.sys")

local M = {}

local batches, pipeline, second_lane, lane_for

-- One sweep cycle. opts: pg (module), store (storage adapter), policy,
-- conninfo, dry_run, run_id, check_plan (hook), between_batches(lane,
-- store) (hook, run with no batch of the cycle in flight, on the cycle's
-- first session {conn, sql}; when cancels_waiting is given, only when it
-- says that cancels wait), heartbeat (hook, before each batch), emit.
-- Returns exit code, summary fields.
function M.cycle(opts)
  local code, summary = session.with(opts, "sweep", function(conn, sql, run)
    return M.sweep_batches(conn, sql, opts.store, run, opts)
  end)
  return code, summary
end

-- The batches of a cycle on an open session; where a cycle ends. Returns
-- exit code, summary fields: the error's code when one ended it, 0 when a
-- signal stopped it or another sweeper holds the singleton lock, else 1
-- when anything failed or was refused, else 0.
function M.sweep_batches(conn, sql, store, run, opts)
  local ended, err = batches(conn, sql, store, run, opts)
  if not ended then return runs.ended_on(err) end
  if ended.stopped or ended.singleton_busy then return errors.EXIT.ok, ended end
  return run:exit_code(), ended
end

-- Returns how the cycle ended (summary fields: stopped, limit_reached,
-- singleton_busy; empty when nothing was left), or nil, err.
function batches(conn, sql, store, run, opts)
  local p = run.policy
  -- Held until the cycle ends (session.singleton: never through a transaction pool).
  local lock <close>, lerr = session.singleton(conn, run, opts)
  if lock == nil then return nil, lerr end
  if lock == false then
    log.info("singleton_busy", { run_id = run.run_id, message = "another sweeper holds the singleton lock" })
    return { singleton_busy = true }
  end
  M.policy_presence(conn, run, opts)
  -- Commits in doubt from an earlier cycle (their answer was lost) first.
  local settled, serr = commit_doubt.settle_in_doubt(conn, run)
  if not settled then return nil, serr end
  local res, err = conn:query(sql.eligible, p.max_age, p.upload_types)
  if not res then return nil, err end
  run.eligible = res[1].n
  run.oldest_age_s = res[1].oldest
  if opts.check_plan then opts.check_plan(conn, sql, run) end
  local pipe = { lanes = { { conn = conn, sql = sql } } }
  second_lane(pipe, run, opts)
  local ended
  ended, err = pipeline(pipe, store, run, opts)
  for i = 2, #pipe.lanes do pipe.lanes[i].conn:close() end
  batch.cycle_warnings(run)
  return ended, err
end

-- Two sweepers of one table must agree on the policy: one that keeps objects in
-- another bucket, or derives other keys, logs record_only for rows whose objects
-- it leaves orphaned; a shorter max_age takes uploads the other still waits for.
-- The cycle's session shows its policy (presence.lua) and looks for others
-- that differ: one warning a cycle, naming both. Never fatal: the sweep is
-- as safe as each policy alone.
function M.policy_presence(conn, run, opts)
  local p = run.policy
  -- A lock needs a session: never one left on a transaction pool's server
  -- connection (pool.lua). Through one, the listener's session (on
  -- RESCLEAN_DIRECT_DATABASE_URL) still shows the policy; the others are
  -- looked for all the same.
  local pooled, err = require("resclean.pool").transaction_pooled(opts.pg, opts.conninfo, conn)
  local ok = pooled == false
  if ok then ok, err = presence.hold_policy(conn, p) elseif pooled then ok = true end
  local others
  if ok then others, err = presence.others(conn, p) end
  if not others then
    run.emit("debug", "presence_failed", { run_id = run.run_id, message = errors.message(err) })
    return
  end
  if #others == 0 then return end
  local first = others[1]
  run.emit("warn", "policy_conflict", { run_id = run.run_id, table = p.table,
    fingerprint = presence.fingerprint(p), other_fingerprint = first.fingerprint, other_pid = first.pid,
    other_role = first.role, differs = table.concat(first.differs, ","), others = #others,
    message = presence.describe(p, others) .. ": run one policy per table (resclean(1), POLICY)" })
end

-- The loop of batches, two at a time: while one batch's objects are being
-- deleted (its transaction open, its rows deleted but not committed), the
-- next is claimed and its rows deleted on a second session, and its
-- deletes sent; then the first is finished (outcomes, commit, log). The
-- storage never waits for the database or the log, and each batch keeps
-- the invariant on its own (its rows commit after its objects are gone).
-- The second session is opened before the first claim (second_lane);
-- without it (not needed, or it could not be opened) batches go one after
-- the other.
function pipeline(pipe, store, run, opts)
  local p = run.policy
  local inflight -- a started batch whose deletes are out
  local function finish_inflight()
    if not inflight then return true end
    local b = inflight
    inflight = nil
    local items, err = batch.finish(b)
    if not items then return nil, err end
    run:progress()
    return true
  end
  -- The cycle ends: what is in flight is finished first (its items logged).
  local function stop(ended, err)
    local ok, ferr = finish_inflight()
    if err then return nil, err end
    if not ok then return nil, ferr end
    return ended
  end
  local function pump()
    if inflight and inflight.pending then inflight.pending:pump() end
  end
  local last
  local limit_left = p.max_deletes_per_run
  while true do
    if opts.heartbeat then opts.heartbeat() end -- the watchdog and /healthz: the loop is alive
    if sys.stopping() then return stop({ stopped = sys.stopping() }) end
    -- No audit trail, no deletes: a log that cannot be written stops the
    -- sweep before the next claim.
    local ok_log, why = log.healthy()
    if not ok_log then return stop(nil, runs.log_unwritable(why)) end
    local n = p.batch_size
    if limit_left then
      if limit_left <= 0 then return stop({ limit_reached = true }) end
      n = math.min(n, limit_left)
    end
    -- Cancels notified meanwhile go now, so a cycle delays them by at most
    -- one batch. They lock rows on a session of their own: no batch of
    -- this cycle may hold locks then.
    if opts.between_batches and (not opts.cancels_waiting or opts.cancels_waiting()) then
      local ok, err = finish_inflight()
      if not ok then return nil, err end
      opts.between_batches(pipe.lanes[1], store)
    end
    local lane = lane_for(pipe, inflight)
    if not lane then
      local ok, err = finish_inflight()
      if not ok then return nil, err end
      lane = pipe.lanes[1]
    end
    local b, err = batch.start(lane.conn, lane.sql, store, run, last, n, pump)
    if not b then return stop(nil, err) end
    if #b.items == 0 then return stop({}) end
    b.lane, b.full = lane, #b.items == n
    last = b.items[#b.items]
    if limit_left then limit_left = limit_left - #b.items end
    -- The batch before ends while this one's deletes are out.
    local ok
    ok, err = finish_inflight()
    inflight = b
    if not ok then return stop(nil, err) end
  end
end

-- The second session, opened at the start of the cycle, before any batch
-- claims, or not at all: opened later it could wait (a pool with no server
-- connection free, a full connection limit) while a batch holds its rows
-- locked. Only when more than one batch is due. A session that cannot be
-- opened (pipeline_off) costs this cycle its overlap, not the next one:
-- every cycle tries again, so a sweep that hit a connection limit goes
-- back to two sessions once others free up.
function second_lane(pipe, run, opts)
  local p = run.policy
  local due = run.eligible or 0
  if p.max_deletes_per_run then due = math.min(due, p.max_deletes_per_run) end
  if due <= p.batch_size then return end
  local conn, sql = session.open(opts.pg, opts.conninfo, p)
  if not conn then
    run.emit("info", "pipeline_off", { run_id = run.run_id, message = "a second database session could not be "
      .. "opened: this cycle's batches go one after the other (the next cycle tries again)",
      detail = errors.message(sql) })
    return
  end
  pipe.lanes[2] = { conn = conn, sql = sql }
end

-- The session the next batch runs on while `inflight` is out: the other
-- one. nil: finish the batch in flight first, then use lane 1 (it came
-- back short, so little is left; or there is no second session).
function lane_for(pipe, inflight)
  if not inflight then return pipe.lanes[1] end
  if not inflight.full or not pipe.lanes[2] then return nil end
  return inflight.lane == pipe.lanes[1] and pipe.lanes[2] or pipe.lanes[1]
end

-- The log cannot be written (before a run): exit 2, the reason on stderr.
-- Returns exit code, summary fields.
function M.log_failed(why)
  return runs.ended_on(runs.log_unwritable(why))
end

return M
