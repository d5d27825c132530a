-- The sweep as a process (resclean run sweep; scripts/sweep.lua parses the
-- flags): one cycle (--once), or a cycle every interval under a supervisor
-- (daemon.lua) until a stop signal; the policy re-read every cycle; the
-- metrics (--metrics-file, --metrics-listen, --metrics-push); and the
-- cancels the application asks for (notify.lua), taken at the start of
-- every cycle and, long-running, when cancel_channel wakes the sweeper.
-- One cycle is sweep.lua's.
local app = require("resclean.app")
local config = require("resclean.config")
local daemon = require("resclean.daemon")
local log = require("resclean.log")
local notify = require("resclean.notify")
local pg = require("resclean.pg")
local schedule = require("resclean.schedule")
local sweep = require("resclean.sweep")
local sys = require("resclean.sys")

local M = {}

-- Supervised (long-running): systemd's notify socket and watchdog, and
-- --metrics-listen. Returns the daemon (nil for --once), or nil and the
-- exit code of the error (reported).
local function supervisor(opts, grace)
  if opts.once then return nil end
  local srv
  if opts["metrics-listen"] then
    local lerr
    srv, lerr = daemon.listen(opts["metrics-listen"])
    if not srv then return nil, app.fail(app.EXIT.usage, lerr) end
  end
  return daemon.new({ server = srv, grace = grace })
end

-- The run's metrics, when a flag asks for them (nil otherwise), checked
-- writable. Returns metrics, or nil and the exit code of the error (reported).
local function open_metrics(opts, d, push_to)
  local metrics
  if opts["metrics-file"] or push_to or (d and d.server) then
    metrics = require("resclean.metrics").new(opts["metrics-file"],
      { on_update = d and d.server and function(text) d:set_metrics(text) end or nil })
    if d then d:set_metrics(metrics:render()) end
    if push_to then push_to.metrics = metrics end
  end
  if metrics then
    local ok, merr = metrics:check()
    if not ok then return nil, app.fail(app.EXIT.usage, merr.message) end
  end
  return metrics
end

-- Cancels from the application: requests taken at each cycle's start and,
-- long-running, when the table's NOTIFY on cancel_channel wakes us. nil
-- when the policy names no requests table, or on a dry run.
local function open_cancels(s)
  local opts, p, metrics = s.opts, s.p, s.metrics
  if not p.cancel_requests_table or opts["dry-run"] then return nil end
  -- LISTEN needs a session: RESCLEAN_DIRECT_DATABASE_URL, or DATABASE_URL unless a transaction pool.
  local listen_conninfo, can_listen
  if not opts.once and p.cancel_channel then
    listen_conninfo, can_listen = require("resclean.pool").listen_conninfo(pg, p.cancel_channel)
  end
  local cancels = notify.new({
    pg = pg, conninfo = config.conninfo(), policy = function() return s.p end,
    listen_conninfo = listen_conninfo,
    channel = can_listen and p.cancel_channel or nil, quiet_missing = opts.once,
    open_store = function(cp) return app.open_store(cp, false) end,
    on_result = function(_, summary)
      app.report(summary)
      if metrics then metrics:record_resources(summary) end
    end,
  })
  cancels:ensure()
  return cancels
end

-- One cycle of the schedule's loop. Returns its exit code (and "stop" when
-- the log could not be written).
local function cycle(s)
  local opts, d, metrics, cancels = s.opts, s.d, s.metrics, s.cancels
  if d then d:cycle_started() end
  -- The policy is re-read every cycle; a broken edit keeps the last good one.
  local fresh, perr = app.load_policy(opts)
  if fresh then
    s.p = fresh
  else
    log.error("policy_invalid", { message = perr.message, detail = "keeping the previous policy" })
  end
  local p = s.p
  if metrics then metrics:policy_valid(fresh ~= nil) end
  if cancels then cancels:cycle_start() end
  local store, code, msg = app.open_store(p, true)
  if not store then
    app.fail(code, msg)
    if metrics then metrics:record_failure(p, code) end
    return code
  end
  local summary
  code, summary = sweep.cycle({
    pg = pg, store = store, policy = p, conninfo = config.conninfo(),
    dry_run = opts["dry-run"], check_plan = require("resclean.plan").check,
    run_id = opts.once and app.run_id or nil,
    cancels_waiting = cancels and function() return cancels:waiting() end or nil,
    between_batches = cancels and function(lane, st) cancels:between_batches(lane, st) end or nil,
    heartbeat = d and function() d:tick(true) end or nil,
  })
  store:close()
  app.report(summary)
  if metrics then metrics:record(summary, code, p) end
  if summary.log_failed then return code, "stop" end
  return code
end

-- The cycles: one with --once, else one every interval until a stop signal.
-- Returns the exit code.
local function cycles(s)
  local opts, d, cancels = s.opts, s.d, s.cancels
  local inner_sleep = cancels and cancels.channel and cancels:sleeper() or nil
  local code = schedule.loop({
    once = opts.once,
    cycle = function() return cycle(s) end,
    delay = function() return schedule.next_delay(s.p.interval, s.p.jitter) end,
    retry_delay = function(n) return schedule.backoff(n, s.p.interval) end,
    on_config_error = function(c)
      log.error("stopping", { exit_code = c,
        message = "configuration error before the first good cycle: fix it and start again" })
    end,
    sleep = d and d:sleeper(inner_sleep or sys.sleep) or inner_sleep,
    on_wait = d and function(wait, c) d:waiting(wait, c) end or nil,
  })
  if d then
    if sys.stopping() then d:stopping() end
    d:close()
  end
  return code
end

-- The sweep, from its parsed flags (cli.parse's opts: once, dry-run,
-- metrics-file, metrics-listen, policy, log-level), the /healthz grace
-- (seconds) and push_to ({url}, for --metrics-push: this run sets its
-- metrics and policy, for M.push). Returns the exit code.
function M.main(opts, grace, push_to)
  local d, code = supervisor(opts, grace)
  if code then return code end
  local metrics
  metrics, code = open_metrics(opts, d, push_to)
  if code then return code end
  local p, err = app.load_policy(opts)
  if not p then
    -- Written even before the first cycle: the exit code and resclean_policy_invalid.
    if metrics then metrics:record_policy_failure(app.EXIT.usage) end
    return app.fail(app.EXIT.usage, err.message)
  end
  if push_to then push_to.policy = p end
  -- The audit trail first: a start line, its write checked, before any claim.
  local ok_log, why = app.start_line("sweep", p, { once = opts.once or nil, dry_run = opts["dry-run"] or nil })
  if not ok_log then return sweep.log_failed(why) end
  local s = { opts = opts, p = p, d = d, metrics = metrics }
  s.cancels = open_cancels(s)
  return cycles(s)
end

-- The end of a --once run with --metrics-push (to: {url, metrics, policy}):
-- its series, with its exit code (a run that failed before its first cycle
-- counts as one cycle with that code). A push that fails is a warning: the
-- run's code stays.
function M.push(to, code)
  local m = to.metrics or require("resclean.metrics").new(nil)
  if m.gauges.exit_code == nil then m:record_failure(to.policy, code) end
  local pushm = require("resclean.push")
  local ok, perr = pushm.send(to.url, m:render())
  if ok then
    log.info("metrics_pushed", { url = log.redact(to.url), exit_code = code })
  else
    log.warn("metrics_push_failed", { message = perr,
      detail = "the run's exit code stands; the next run pushes again" })
  end
end

return M
