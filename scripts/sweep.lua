-- The sweep: remove stale pending uploads (row and object), every interval.
--   resclean run sweep [--once] [--dry-run] [--policy FILE]
--                      [--metrics-file FILE] [--log-level LEVEL]
--                      [--metrics-listen ADDR:PORT [--healthz-grace SECONDS]]
--                      [--metrics-push URL]
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
local daemon = require("resclean.daemon")
local log = require("resclean.log")
local notify = require("resclean.notify")
local pg = require("resclean.pg")
local schedule = require("resclean.schedule")
local sweep = require("resclean.sweep")
local sys = require("resclean.sys")

local EPILOG = [[
Without --once it runs a cycle at once, then one every interval (policy) until
SIGTERM, SIGINT or SIGHUP. Every cycle first takes the cancel requests applications
wrote (policy cancel_requests_table); without --once they are also taken within a
second, woken on cancel_channel. Exit codes: 0 ok, 1 some resources failed or were refused,
2 configuration to fix (usage, policy, schema, credentials, bucket),
3 database or storage unreachable.]]

-- --metrics-push: what the end of the run pushes (set as soon as the flag is read).
local push_to

local function main(...)
  local parser = cli.parser("sweep", "Remove stale pending uploads: the row and its object.", EPILOG)
  parser:flag("--once", "One cycle, then exit with its code (for cron and systemd timers).")
  parser:flag("--dry-run", "Log what would be cleaned (dry_run: true); change nothing.")
  parser:option("--metrics-file", "Prometheus textfile written after every cycle."):argname("FILE")
  parser:option("--metrics-listen", "Long-running: serve GET /metrics and /healthz on ADDR:PORT "
    .. "(loopback unless an address is given)."):argname("ADDR:PORT")
  parser:option("--healthz-grace", ("How long a batch or a wait may overrun before /healthz answers 503 "
    .. "(default %d)."):format(daemon.DEFAULT_GRACE)):argname("SECONDS")
  parser:option("--metrics-push", "With --once: push the run's series to a Prometheus Pushgateway at URL "
    .. "when it ends, whatever its exit code."):argname("URL")
  local opts, code0 = cli.parse(parser, { ... })
  if not opts then return code0 end
  if opts["metrics-push"] then
    if not opts.once then
      return cli.usage_error(parser, "--metrics-push is for --once runs; the long-running sweep serves "
        .. "--metrics-listen ADDR:PORT for Prometheus to scrape")
    end
    local url, uerr = require("resclean.push").url(opts["metrics-push"])
    if not url then return cli.usage_error(parser, uerr) end
    push_to = { url = url }
  end
  if opts["metrics-listen"] and opts.once then
    return cli.usage_error(parser, "--metrics-listen serves the long-running sweep; a --once run pushes "
      .. "with --metrics-push URL (or writes --metrics-file)")
  end
  local grace = daemon.DEFAULT_GRACE
  if opts["healthz-grace"] then
    grace = cli.integer(opts["healthz-grace"], 1, 86400)
    if not grace then
      return cli.usage_error(parser, ("--healthz-grace %q: expected whole seconds from 1 to 86400")
        :format(opts["healthz-grace"]))
    end
  end

  -- Supervised (long-running): systemd's notify socket and watchdog, and --metrics-listen.
  local d
  if not opts.once then
    local srv
    if opts["metrics-listen"] then
      local lerr
      srv, lerr = daemon.listen(opts["metrics-listen"])
      if not srv then return app.fail(app.EXIT.usage, lerr) end
    end
    d = daemon.new({ server = srv, grace = grace })
  end
  local metrics
  if opts["metrics-file"] or push_to or (d and d.server) then
    metrics = require("resclean.metrics").new(opts["metrics-file"],
      { on_update = d and d.server and function(text) d:set_metrics(text) end or nil })
    if d then d:set_metrics(metrics:render()) end
    if push_to then push_to.metrics = metrics end
  end
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
  if push_to then push_to.policy = p end
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
    if d then d:cycle_started() end
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
      heartbeat = d and function() d:tick(true) end or nil,
    })
    store:close()
    app.report(summary)
    if metrics then metrics:record(summary, code, p) end
    if summary.log_failed then return code, "stop" end
    return code
  end

  local inner_sleep = cancels and cancels.channel and cancels:sleeper() or nil
  local code = schedule.loop({
    once = opts.once,
    cycle = cycle,
    delay = function() return schedule.next_delay(p.interval, p.jitter) end,
    retry_delay = function(n) return schedule.backoff(n, p.interval) end,
    on_config_error = function(code)
      log.error("stopping", { exit_code = code,
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

-- The end of a --once run with --metrics-push: its series, with its exit
-- code (a run that failed before its first cycle counts as one cycle with
-- that code). A push that fails is a warning: the run's code stays.
local function push(code)
  local m = push_to.metrics or require("resclean.metrics").new(nil)
  if m.gauges.exit_code == nil then m:record_failure(push_to.policy, code) end
  local pushm = require("resclean.push")
  local ok, perr = pushm.send(push_to.url, m:render())
  if ok then
    log.info("metrics_pushed", { url = log.redact(push_to.url), exit_code = code })
  else
    log.warn("metrics_push_failed", { message = perr,
      detail = "the run's exit code stands; the next run pushes again" })
  end
end

local code = main(...)
if push_to and math.type(code) == "integer" then push(code) end
return code
