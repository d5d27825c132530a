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
local app = require("resclean.app")
local cli = require("resclean.cli")
local config = require("resclean.config")
local errors = require("resclean.errors")
local log = require("resclean.log")
local pg = require("resclean.pg")
local policy = require("resclean.policy")
local presence = require("resclean.presence")
local sweep = require("resclean.sweep")

local EPILOG = [[
IDs are the resources' ids (UUIDs); a locked row is waited on for at most the
policy's lock_timeout, then reported skipped (reason "locked"). Exit codes: 0 done
(an id with no row is not_found: cancelling twice is harmless), 1 some refused
(confirmed, not an upload type), skipped or failed (with --notify: no sweeper
listens; the request is stored, the next cycle of a sweep takes it, a --once
sweep only at its next run), 2 configuration to fix (with --notify: a role
without the grant to write cancel requests), 3 database or storage unreachable.]]

local PER_REQUEST = 1000 -- ids a request row holds at most (the table's CHECK)

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
  for i = 1, #ids, PER_REQUEST do
    local chunk = table.move(ids, i, math.min(i + PER_REQUEST - 1, #ids), 1, {})
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

-- --notify: write cancel requests; the table's trigger wakes the sweepers.
local function request_cancel(p, ids, reason, request_id)
  local t = p.cancel_requests_table
  if not t then
    return app.fail(app.EXIT.usage, ("policy %s: field 'cancel_requests_table' is false: no sweeper takes cancel "
      .. "requests"):format(p.source))
  end
  local ok_log, why = app.start_line("cancel", p, { ids = #ids, notify = true })
  if not ok_log then return sweep.log_failed(why) end
  local conn <close>, err = pg.connect(config.conninfo())
  if not conn then return app.fail_on(err, "database: ") end
  local role, rows = write_requests(conn, t, ids, reason, request_id)
  if not role then
    err = rows
    if err.code == "42501" then
      local who = conn:query("SELECT current_user::text AS role")
      who = who and who[1] and who[1].role or "<role>"
      return app.fail(app.EXIT.usage, ("database: role %s may not write cancel requests into %s: the operator "
        .. "grants it with %s"):format(who, t, grant_hint(t, who)))
    elseif err.code == "42P01" then
      return app.fail(app.EXIT.usage, ("database: table %q does not exist (or is not on the role's search_path): "
        .. "create it with examples/cancel-requests.sql, or check the policy's cancel_requests_table"):format(t))
    end
    return app.fail_on(err, "database: ")
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
    return app.EXIT.failed
  end
  log.info("cancel_requested", { table = t, requests = rows, ids = #ids, requested_by = role, request_reason = reason,
    request_id = request_id, listeners = n,
    listeners_unknown = not listeners and errors.message(lerr) or nil,
    message = "stored: the listening sweepers take it now, every sweep at the start of "
      .. "its next cycle at the latest; each cancel shows in their log (via: request, requested_by)" })
  return app.EXIT.ok
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
  code, summary = sweep.cancel({
    pg = pg, store = store, policy = p, conninfo = config.conninfo(),
    dry_run = opts["dry-run"], ids = ids, run_id = app.run_id, reason = reason, request_id = request_id,
  })
  store:close()
  app.report(summary)
  return code
end

return main(...)
