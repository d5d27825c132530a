-- Reconcile: objects in the bucket that no row owns, and confirmed rows
-- whose object is missing. The work is in lib/resclean/reconcile.lua; this
-- front parses the flags.
--   resclean run reconcile [--apply] [--max-delete N] [--json] [--older-than DURATION]
--                          [--page-size N] [--policy FILE] [--log-level LEVEL]
--
-- Without --apply the plan is printed and nothing is deleted. With it, the
-- whole listing is planned first and nothing at all is deleted when a row
-- of a table that is not an owner names an orphan, when the owner of a key
-- cannot be proven, or when the plan deletes more than the policy's
-- reconcile_max_delete_fraction of the objects listed (--max-delete N
-- allows up to N instead).
--
-- Exit 0; 1 when some deletes failed; 2 on usage, policy, a missing owner
-- table or column, or a refused plan; 3 when the database or the storage
-- cannot be reached.
local app = require("resclean.app")
local config = require("resclean.config")
local log = require("resclean.log")
local policy_mod = require("resclean.policy")
local reconcile = require("resclean.reconcile")

local USAGE = [[
usage: resclean run reconcile [--apply] [--max-delete N] [--json] [--older-than DURATION]
                              [--page-size N] [--policy FILE] [--log-level LEVEL]
  --apply            delete the orphans (default: print the plan, delete nothing).
                     The whole listing is planned first; nothing is deleted when a
                     row of a table that is not among the policy's owners names an
                     orphan, when the owner of a key cannot be proven (set key_id),
                     or when the plan exceeds the mass-delete limit
  --max-delete N     allow --apply to delete up to N objects (default limit: the
                     policy's reconcile_max_delete_fraction, 0.10, of the objects listed)
  --json             JSON log lines on stdout (one per orphan and missing object,
                     then a "reconcile" summary) instead of the report; without it
                     the report is on stdout and the JSON log lines on stderr
  --older-than D     only objects last modified more than D ago (seconds or "90s",
                     "15m", "25h", "7d"; database clock). Default: max_age plus
                     url_lifetime; never less than url_lifetime
  --page-size N      keys listed (and checked, and deleted) at a time, 1-1000
                     (default 1000)
  --policy FILE      policy file (else RESCLEAN_POLICY, else the defaults)
  --log-level L      debug, info, warn or error
  --help             this text
]]

local function usage(msg) return app.usage("reconcile", USAGE, msg) end

local function main(...)
  local opts, rest = config.parse_args({ ... }, {
    apply = "flag", json = "flag", ["older-than"] = "value", ["page-size"] = "value", policy = "value",
    ["log-level"] = "value", ["max-delete"] = "value", help = "flag",
  })
  if not opts then return usage(rest) end
  if opts.help then
    io.stdout:write(USAGE)
    return 0
  end
  if #rest > 0 then return usage("unexpected argument " .. rest[1]) end
  if opts["log-level"] and not log.LEVELS[opts["log-level"]] then
    return usage("--log-level: expected debug, info, warn or error")
  end
  local max_delete
  if opts["max-delete"] then
    max_delete = math.tointeger(tonumber(opts["max-delete"]))
    if not max_delete or max_delete < 0 or not opts["max-delete"]:match("^%s*%d+%s*$") then
      return usage("--max-delete: expected a count of objects, an integer >= 0")
    end
  end
  local page_size = reconcile.PAGE
  if opts["page-size"] then
    page_size = math.tointeger(tonumber(opts["page-size"]))
    if not page_size or page_size < 1 or page_size > reconcile.PAGE then
      return usage("--page-size: expected an integer from 1 to 1000")
    end
  end
  if not opts.json then log.set_output(io.stderr) end
  local p, err = app.load_policy(opts)
  if not p then return app.fail(app.EXIT.usage, err.message) end
  local older = p.max_age + p.url_lifetime
  if opts["older-than"] then
    older = policy_mod.duration(opts["older-than"])
    if not older or older < p.url_lifetime then
      return usage(("--older-than: expected a duration of at least the policy's url_lifetime (%ss): a younger "
        .. "object may still gain its row"):format(p.url_lifetime))
    end
  end
  return reconcile.main(p, { apply = opts.apply, json = opts.json, older_than = older, page_size = page_size,
                             max_delete = max_delete }, app.fail)
end

return main(...)
