-- Cancel: clean up the given pending resources now, whatever their age.
--   resclean run cancel [--dry-run | --notify] [--policy FILE] [--log-level LEVEL] ID...
-- Confirmed or non-upload resources are refused (exit 1); ids with no row
-- are not_found (success: cancelling twice is harmless). With --notify it
-- only sends the ids to the long-running sweepers (NOTIFY on the policy's
-- cancel_channel), which cancel them: no S3 credentials needed here.
local app = require("resclean.app")
local cli = require("resclean.cli")
local config = require("resclean.config")
local log = require("resclean.log")
local pg = require("resclean.pg")
local policy = require("resclean.policy")
local sweep = require("resclean.sweep")

local EPILOG = [[
IDs are the resources' ids (UUIDs); a locked row is waited on for at most the
policy's lock_timeout, then reported skipped (reason "locked"). Exit codes: 0 done
(an id with no row is not_found: cancelling twice is harmless), 1 some refused
(confirmed, not an upload type), skipped or failed, 2 configuration to fix,
3 database or storage unreachable.]]

-- The payloads for ids, one pg_notify each, in one transaction (rolled back
-- by its scope when one fails). Returns true or nil, err.
local function send_notifications(conn, channel, ids)
  local tx <close>, err = conn:begin()
  if not tx then return nil, err end
  for _, payload in ipairs(require("resclean.notify").payloads(ids)) do
    local ok, qerr = conn:query("SELECT pg_notify($1, $2)", channel, payload)
    if not ok then return nil, qerr end
  end
  return tx:commit()
end

-- --notify: one transaction of pg_notify calls (PostgreSQL delivers them at
-- commit); the sweepers listening on the channel cancel the ids.
local function notify_sweepers(p, ids)
  if not p.cancel_channel then
    return app.fail(app.EXIT.usage, ("policy %s: field 'cancel_channel' is false: no sweeper listens for cancels")
      :format(p.source))
  end
  local ok_log, why = app.start_line("cancel", p, { ids = #ids, notify = true })
  if not ok_log then return sweep.log_failed(why) end
  local conn <close>, err = pg.connect(config.conninfo())
  if not conn then return app.fail_on(err, "database: ") end
  local ok, tx_err = send_notifications(conn, p.cancel_channel, ids)
  if not ok then return app.fail_on(tx_err, "database: ") end
  log.info("notify_sent", { channel = p.cancel_channel, ids = #ids,
    message = "sent to the sweepers listening on the channel; each cancel shows in their log (via: notify)" })
  return app.EXIT.ok
end

local function main(...)
  local parser = cli.parser("cancel", "Clean up the given pending resources now, whatever their age.", EPILOG)
  parser:mutex(
    parser:flag("--dry-run", "Log what would be cleaned; change nothing."),
    parser:flag("--notify", "Send the ids to the long-running sweepers (NOTIFY on the policy's cancel_channel) "
      .. "instead of cancelling here: needs only DATABASE_URL, no S3 credentials."))
  parser:argument("id", "Resource ids (UUIDs)."):args("+")
  local opts, code0 = cli.parse(parser, { ... })
  if not opts then return code0 end
  local ids = opts.id
  local p, err = app.load_policy(opts)
  if not p then return app.fail(app.EXIT.usage, err.message) end
  for i, id in ipairs(ids) do
    ids[i] = id:lower()
    if not ids[i]:match(policy.UUID_PATTERN) then
      return cli.usage_error(parser, ("argument %d: %q is not a UUID"):format(i, log.redact(id):sub(1, 80)))
    end
  end
  if opts.notify then
    return notify_sweepers(p, ids)
  end
  local ok_log, why = app.start_line("cancel", p, { ids = #ids, dry_run = opts["dry-run"] or nil })
  if not ok_log then return sweep.log_failed(why) end
  local store, code, msg = app.open_store(p, true)
  if not store then return app.fail(code, msg) end
  local summary
  code, summary = sweep.cancel({
    pg = pg, store = store, policy = p, conninfo = config.conninfo(),
    dry_run = opts["dry-run"], ids = ids, run_id = app.run_id,
  })
  store:close()
  app.report(summary)
  return code
end

return main(...)
