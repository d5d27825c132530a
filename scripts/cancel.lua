-- Cancel: clean up the given pending resources now, whatever their age.
--   resclean run cancel [--dry-run | --notify] [--reason TEXT] [--request-id TEXT]
--                       [--policy FILE] [--log-level LEVEL] ID...
-- Confirmed or non-upload resources are refused (exit 1); ids with no row
-- are not_found (success: cancelling twice is harmless). It runs under the
-- caller's own database authority (DELETE on the table); its lines name
-- the role (requested_by). With --notify it cancels nothing here: it writes
-- a cancel request (the policy's cancel_requests_table, whose INSERT grant
-- is the right to cancel; examples/cancel-requests.sql), which the
-- listening sweepers take at once and every sweep at the start of its next
-- cycle: no S3 credentials, no DELETE on the resource table needed.
-- The work is in lib/resclean/cancel.lua; this front parses the flags.
local app = require("resclean.app")
local cancel = require("resclean.cancel")
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
(confirmed, not an upload type), skipped or failed (with --notify: no sweeper
listens; the request is stored, the next cycle of a sweep takes it, a --once
sweep only at its next run), 2 configuration to fix (with --notify: a role
without the grant to write cancel requests), 3 database or storage unreachable.]]

-- --notify: write cancel requests; the table's trigger wakes the sweepers.
local function request_cancel(p, ids, reason, request_id)
  local t = p.cancel_requests_table
  if not t then
    return app.fail(app.EXIT.usage, ("policy %s: field 'cancel_requests_table' is false: no sweeper takes cancel "
      .. "requests"):format(p.source))
  end
  local ok_log, why = app.start_line("cancel", p, { ids = #ids, notify = true })
  if not ok_log then return sweep.log_failed(why) end
  local code, fcode, msg = cancel.request({ pg = pg, conninfo = config.conninfo(), table = t, ids = ids,
                                            reason = reason, request_id = request_id })
  if not code then return app.fail(fcode, msg) end
  return code
end

local function main(...)
  local parser = cli.parser("cancel", "Clean up the given pending resources now, whatever their age.", EPILOG)
  parser:mutex(
    parser:flag("--dry-run", "Log what would be cleaned; change nothing."),
    parser:flag("--notify", "Write a cancel request for the sweepers (the policy's cancel_requests_table) "
      .. "instead of cancelling here: needs only DATABASE_URL and the grant to write requests, no S3 credentials."))
  parser:option("--reason", "Why (at most 200 characters): on the log lines of the cancel."):argname("TEXT")
  parser:option("--request-id", "Your reference (at most 100 characters): on the log lines of the cancel.")
    :argname("TEXT")
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
  local reason, request_id = opts.reason, opts["request-id"]
  if reason and #reason > 200 then return cli.usage_error(parser, "--reason: at most 200 characters") end
  if request_id and #request_id > 100 then return cli.usage_error(parser, "--request-id: at most 100 characters") end
  if opts.notify then
    return request_cancel(p, ids, reason, request_id)
  end
  local ok_log, why = app.start_line("cancel", p, { ids = #ids, dry_run = opts["dry-run"] or nil })
  if not ok_log then return sweep.log_failed(why) end
  local store, code, msg = app.open_store(p, true)
  if not store then return app.fail(code, msg) end
  local summary
  code, summary = cancel.run({
    pg = pg, store = store, policy = p, conninfo = config.conninfo(),
    dry_run = opts["dry-run"], ids = ids, run_id = app.run_id, reason = reason, request_id = request_id,
  })
  store:close()
  app.report(summary)
  return code
end

return main(...)
