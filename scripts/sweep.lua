-- The sweep: remove stale pending uploads (row and object), every interval.
--   resclean run sweep [--once] [--dry-run] [--policy FILE]
--                      [--metrics-file FILE] [--log-level LEVEL]
--
-- Long-running (without --once): a configuration error found before the
-- first good cycle (a missing table, a wrong password or secret, a missing
-- bucket) exits 2 at once, so systemd (RestartPreventExitStatus=2) and
-- Kubernetes show it instead of a sweeper that runs and never sweeps.
-- Transient trouble (unreachable, timeouts, 5xx) is retried, sooner at
-- first and backing off to the interval while it lasts. SIGTERM, SIGINT
-- and SIGHUP finish the batch in hand, log the summary and exit 0.
-- Cancels the application asked for (rows of the policy's
-- cancel_requests_table, examples/cancel-requests.sql) are taken at the
-- start of every cycle; without --once it also LISTENs on cancel_channel
-- for the table's wake-up and takes them within a second, between cycles
-- and between the batches of a cycle (lib/resclean/notify.lua).
local app = require("resclean.app")
local cli = require("resclean.cli")
local config = require("resclean.config")
local log = require("resclean.log")
local notify = require("resclean.notify")
local pg = require("resclean.pg")
local schedule = require("resclean.schedule")
local sweep = require("resclean.sweep")

local EPILOG = [[
Without --once it runs a cycle at once, then one every interval (policy) until
SIGTERM, SIGINT or SIGHUP. Every cycle first takes the cancel requests applications
wrote (policy cancel_requests_table); without --once they are also taken within a
second, woken on cancel_channel. Exit codes: 0 ok, 1 some resources failed or were refused,
2 configuration to fix (usage, policy, schema, credentials, bucket),
3 database or storage unreachable.]]

local function main(...)
  local parser = cli.parser("sweep", "Remove stale pending uploads: the row and its object.", EPILOG)
  parser:flag("--once", "One cycle, then exit with its code (for cron and systemd timers).")
  parser:flag("--dry-run", "Log what would be cleaned (dry_run: true); change nothing.")
  parser:option("--metrics-file", "Prometheus textfile written after every cycle."):argname("FILE")
  local opts, code0 = cli.parse(parser, { ... })
  if not opts then return code0 end

  local metrics = opts["metrics-file"] and require("resclean.metrics").new(opts["metrics-file"])
  if metrics then
    local ok, merr = metrics:check()
    if not ok then return app.fail(app.EXIT.usage, merr.message) end
  end
  local p, err = app.load_policy(opts)
  if not p then
    -- Written even before the first cycle: the exit code and resclean_policy_invalid.
    if metrics then metrics:record_policy_failure(app.EXIT.usage) end
    return app.fail(app.EXIT.usage, err.message)
  end
  -- The audit trail first: a start line, its write checked, before any claim.
  local ok_log, why = app.start_line("sweep", p, { once = opts.once or nil, dry_run = opts["dry-run"] or nil })
  if not ok_log then return sweep.log_failed(why) end

  -- Cancels from the application: requests taken at each cycle's start and,
  -- long-running, when the table's NOTIFY on cancel_channel wakes us.
  local cancels
  if p.cancel_requests_table and not opts["dry-run"] then
    -- LISTEN needs a session: RESCLEAN_DIRECT_DATABASE_URL, or DATABASE_URL unless a transaction pool.
    local listen_conninfo, can_listen
    if not opts.once and p.cancel_channel then
      listen_conninfo, can_listen = require("resclean.pool").listen_conninfo(pg, p.cancel_channel)
    end
    cancels = notify.new({
      pg = pg, conninfo = config.conninfo(), policy = function() return p end,
      listen_conninfo = listen_conninfo,
      channel = can_listen and p.cancel_channel or nil, quiet_missing = opts.once,
      open_store = function(cp) return app.open_store(cp, false) end,
      on_result = function(_, summary)
        app.report(summary)
        if metrics then metrics:record_resources(summary) end
      end,
    })
    cancels:ensure()
  end

  local function cycle()
    -- The policy is re-read every cycle; a broken edit keeps the last good one.
    local fresh, perr = app.load_policy(opts)
    if fresh then
      p = fresh
    else
      log.error("policy_invalid", { message = perr.message, detail = "keeping the previous policy" })
    end
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
    })
    store:close()
    app.report(summary)
    if metrics then metrics:record(summary, code, p) end
    if summary.log_failed then return code, "stop" end
    return code
  end

  return schedule.loop({
    once = opts.once,
    cycle = cycle,
    delay = function() return schedule.next_delay(p.interval, p.jitter) end,
    retry_delay = function(n) return schedule.backoff(n, p.interval) end,
    on_config_error = function(code)
      log.error("stopping", { exit_code = code,
        message = "configuration error before the first good cycle: fix it and start again" })
    end,
    sleep = cancels and cancels.channel and cancels:sleeper() or nil,
  })
end

return main(...)
