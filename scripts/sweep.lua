-- The sweep: remove stale pending uploads (row and object), every interval.
--   resclean run scripts/sweep.lua [--once] [--dry-run] [--policy FILE]
--                                  [--metrics-file FILE] [--log-level LEVEL]
local app = require("resclean.app")
local config = require("resclean.config")
local log = require("resclean.log")
local pg = require("resclean.pg")
local schedule = require("resclean.schedule")
local sweep = require("resclean.sweep")

local USAGE = [[
usage: resclean run scripts/sweep.lua [--once] [--dry-run] [--policy FILE]
                                      [--metrics-file FILE] [--log-level LEVEL]
  --once           one cycle, then exit (for cron and systemd timers)
  --dry-run        log what would be cleaned (dry_run=true); change nothing
  --policy FILE    policy file (else RESCLEAN_POLICY, else the defaults)
  --metrics-file F Prometheus textfile written after every cycle
  --log-level L    debug, info, warn or error
]]

local function main(...)
  local opts, rest = config.parse_args({ ... }, {
    once = "flag", ["dry-run"] = "flag", policy = "value", ["metrics-file"] = "value",
    ["log-level"] = "value", help = "flag",
  })
  if not opts then return app.usage("sweep.lua", USAGE, rest) end
  if opts.help then
    io.stdout:write(USAGE)
    return 0
  end
  if #rest > 0 then return app.usage("sweep.lua", USAGE, "unexpected argument " .. rest[1]) end
  if opts["log-level"] and not log.LEVELS[opts["log-level"]] then
    return app.usage("sweep.lua", USAGE, "--log-level: expected debug, info, warn or error")
  end

  local p, err = app.load_policy(opts)
  if not p then return app.fail(app.EXIT.usage, err.message) end
  local metrics = opts["metrics-file"] and require("resclean.metrics").new(opts["metrics-file"])
  if metrics then
    local ok, merr = metrics:check()
    if not ok then return app.fail(app.EXIT.usage, merr.message) end
  end

  local function cycle()
    -- The policy is re-read every cycle; a broken edit keeps the last good one.
    local fresh, perr = app.load_policy(opts)
    if fresh then
      p = fresh
    else
      log.error("policy_invalid", { message = perr.message, detail = "keeping the previous policy" })
    end
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
    })
    store:close()
    app.report(summary)
    if metrics then metrics:record(summary, code, p) end
    return code
  end

  return schedule.loop({
    once = opts.once,
    cycle = cycle,
    delay = function() return schedule.next_delay(p.interval, p.jitter) end,
  })
end

return main(...)
