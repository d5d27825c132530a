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
-- The work is in lib/resclean/sweeper.lua; this front parses the flags.
local cli = require("resclean.cli")
local daemon = require("resclean.daemon")
local sweeper = require("resclean.sweeper")

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
  return sweeper.main(opts, grace, push_to)
end

local code = main(...)
if push_to and math.type(code) == "integer" then sweeper.push(push_to, code) end
return code
