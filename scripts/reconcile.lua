-- Reconcile: objects in the bucket that no row owns, and confirmed rows
-- whose object is missing. The work is in lib/resclean/reconcile.lua; this
-- front parses the flags (reconcile.main loads the policy and checks
-- --older-than against it).
--   resclean run reconcile [--apply] [--max-delete N] [--json] [--older-than DURATION]
--                          [--page-size N] [--policy FILE] [--log-level LEVEL]
--
-- Without --apply the plan is printed and nothing is deleted. With it, the
-- whole listing is planned first and nothing at all is deleted when a row
-- of a table that is not an owner names an orphan, when the owner of a key
-- cannot be proven, when row-level security hides rows from the role, or
-- when the plan deletes more than the policy's reconcile_max_delete_fraction
-- of the candidates (--max-delete N allows up to N instead).
--
-- Exit 0; 1 when some deletes failed; 2 on usage, policy, a missing owner
-- table or column, or a refused plan; 3 when the database or the storage
-- cannot be reached, or the listing would never end.
local cli = require("resclean.cli")
local log = require("resclean.log")
local reconcile = require("resclean.reconcile")

local EPILOG = [[
Without --apply the plan is printed and nothing is deleted. With it, the whole
listing is planned first, and nothing at all is deleted when a row of a table
that is not among the policy's owners names an orphan, when the owner of a key
cannot be proven (set key_id), when row-level security hides rows of a table
from the role, or when the plan exceeds the mass-delete limit.
Exit codes: 0 ok, 1 some deletes failed, 2 usage, policy, a missing owner table
or column, or a refused plan, 3 database or storage unreachable, or a listing
that would never end.]]

local function main(...)
  local parser = cli.parser("reconcile", "Objects no row owns, and confirmed rows whose object is missing.",
    EPILOG)
  parser:flag("--apply", "Delete the orphans (default: print the plan, delete nothing).")
  parser:option("--max-delete", "Allow --apply to delete up to N objects (default limit: the policy's "
    .. "reconcile_max_delete_fraction, 0.10, of the candidates: keys matching key_pattern, old enough)."):argname("N")
  parser:flag("--json", "JSON log lines on stdout (one per orphan and missing object, then a summary) "
    .. "instead of the report; without it the JSON log lines go to stderr.")
  parser:option("--older-than", "Only objects last modified more than D ago (\"90s\", \"15m\", \"25h\", "
    .. "\"7d\"; database clock). Default: max_age plus url_lifetime; never less than url_lifetime.")
    :argname("D")
  parser:option("--page-size", "Keys listed (and checked, and deleted) at a time, 1-1000 (default 1000)."):argname("N")
  local opts, code0 = cli.parse(parser, { ... })
  if not opts then return code0 end
  local function usage(msg) return cli.usage_error(parser, msg) end
  local max_delete
  if opts["max-delete"] then
    max_delete = cli.integer(opts["max-delete"], 0, math.maxinteger)
    if not max_delete then return usage("--max-delete: expected a count of objects, an integer >= 0") end
  end
  local page_size = reconcile.PAGE
  if opts["page-size"] then
    page_size = cli.integer(opts["page-size"], 1, reconcile.PAGE)
    if not page_size then return usage("--page-size: expected an integer from 1 to 1000") end
  end
  if not opts.json then log.set_output(io.stderr) end
  opts.page_size, opts.max_delete = page_size, max_delete
  return reconcile.main(opts, usage)
end

return main(...)
