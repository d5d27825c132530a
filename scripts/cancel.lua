-- Cancel: clean up the given pending resources now, whatever their age.
--   resclean run cancel [--dry-run] [--policy FILE] [--log-level LEVEL] ID...
-- Confirmed or non-upload resources are refused (exit 1); ids with no row
-- are not_found (success: cancelling twice is harmless).
local app = require("resclean.app")
local config = require("resclean.config")
local log = require("resclean.log")
local pg = require("resclean.pg")
local policy = require("resclean.policy")
local sweep = require("resclean.sweep")

local USAGE = [[
usage: resclean run cancel [--dry-run] [--policy FILE] [--log-level LEVEL] ID...
  --dry-run        log what would be cleaned; change nothing
  --policy FILE    policy file (else RESCLEAN_POLICY, else the defaults)
  --log-level L    debug, info, warn or error (else RESCLEAN_LOG_LEVEL, else info)
  IDs are the resources' ids (UUIDs); a locked row is waited on for at most
  the policy's lock_timeout, then reported skipped (reason "locked").
Exit codes: 0 done (an id with no row is not_found: cancelling twice is
harmless), 1 some refused (confirmed, not an upload type), skipped or failed,
2 configuration to fix, 3 database or storage unreachable.
]]

local function main(...)
  local opts, ids = config.parse_args({ ... }, {
    ["dry-run"] = "flag", policy = "value", ["log-level"] = "value", help = "flag",
  })
  if not opts then return app.usage("cancel", USAGE, ids) end
  if opts.help then
    io.stdout:write(USAGE)
    return 0
  end
  if #ids == 0 then return app.usage("cancel", USAGE, "no ids given") end
  if opts["log-level"] and not log.LEVELS[opts["log-level"]] then
    return app.usage("cancel", USAGE, "--log-level: expected debug, info, warn or error")
  end
  local p, err = app.load_policy(opts)
  if not p then return app.fail(app.EXIT.usage, err.message) end
  for i, id in ipairs(ids) do
    ids[i] = id:lower()
    if not ids[i]:match(policy.UUID_PATTERN) then
      return app.usage("cancel", USAGE, ("argument %d: %q is not a UUID"):format(i, log.redact(id):sub(1, 80)))
    end
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
