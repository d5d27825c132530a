-- Check: the preflight. Everything a sweep needs, verified without deleting
-- anything, one line per item (lib/resclean/check.lua).
--   resclean run check [--json] [--metrics-file FILE] [--policy FILE] [--log-level LEVEL]
-- Exit 0 all good (warnings allowed), 2 something to fix (each such line says
-- what and how), 3 the database or the storage unreachable.
local app = require("resclean.app")
local check = require("resclean.check")
local cli = require("resclean.cli")
local config = require("resclean.config")
local log = require("resclean.log")

local EPILOG = [[
Items: policy, max_age, database, primary, pooler, schema, grants, index, keys,
bucket, head, delete, clock, metrics, cancel, sweepers. Nothing is deleted: DeleteObjects
is tried on a random key a HEAD found missing. Exit codes: 0 all good (warn
lines allowed), 2 something to fix (named, with the fix), 3 database or storage
unreachable.]]

local function main(...)
  local parser = cli.parser("check", "Check everything a sweep needs, deleting nothing.", EPILOG)
  parser:flag("--json", "One JSON object per item on stdout instead of the report.")
  parser:option("--metrics-file", "Check that the sweep's metrics file can be written."):argname("FILE")
  local opts, code0 = cli.parse(parser, { ... })
  if not opts then return code0 end
  -- stdout holds the report: log lines go to stderr.
  log.set_output(io.stderr)
  local counts = {}
  local items, code = check.run({
    load_policy = function() return app.load_policy(opts) end,
    pg = require("resclean.pg"),
    conninfo = config.conninfo(),
    direct_conninfo = config.direct_conninfo(),
    open_store = function(p) return app.open_store(p, false) end,
    metrics_file = opts["metrics-file"],
    emit = function(it)
      counts[it.status] = (counts[it.status] or 0) + 1
      io.stdout:write(opts.json and check.json_line(it) or check.human_line(it), "\n")
      io.stdout:flush()
    end,
  })
  if not opts.json then
    io.stdout:write(check.summary_line(counts, code), "\n")
  end
  return code, items
end

return (main(...))
