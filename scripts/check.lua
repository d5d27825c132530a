-- Check: the preflight. Everything a sweep needs, verified without deleting
-- anything, one line per item (lib/resclean/check.lua).
--   resclean run check [--json] [--metrics-file FILE] [--policy FILE] [--log-level LEVEL]
-- Exit 0 all good (warnings allowed), 2 something to fix (each such line says
-- what and how), 3 the database or the storage unreachable.
local app = require("resclean.app")
local check = require("resclean.check")
local cjson = require("cjson")
local cli = require("resclean.cli")
local config = require("resclean.config")
local log = require("resclean.log")

local EPILOG = [[
Items: policy, max_age, database, primary, pooler, schema, grants, index, keys,
bucket, head, delete, clock, metrics, cancel, sweepers. Nothing is deleted: DeleteObjects
is tried on a random key a HEAD found missing. Exit codes: 0 all good (warn
lines allowed), 2 something to fix (named, with the fix), 3 database or storage
unreachable.]]

local LABEL = { ok = "ok", warn = "warn", fail = "FAIL", unreachable = "DOWN", skip = "skip" }

-- One JSON object, item, status, message and fix first (as a person reads it), the
-- details after in name order.
local FIRST = { "item", "status", "message", "fix" }
local function json_line(it)
  local parts, seen = {}, {}
  for _, k in ipairs(FIRST) do
    seen[k] = true
    if it[k] ~= nil then parts[#parts + 1] = cjson.encode(k) .. ":" .. cjson.encode(it[k]) end
  end
  local rest = {}
  for k in pairs(it) do if not seen[k] then rest[#rest + 1] = k end end
  table.sort(rest)
  for _, k in ipairs(rest) do parts[#parts + 1] = cjson.encode(k) .. ":" .. cjson.encode(it[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function human_line(it)
  local line = ("%-4s  %-8s  %s"):format(LABEL[it.status] or it.status, it.item, it.message)
  if it.fix then line = line .. " -- fix: " .. it.fix end
  return line
end

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
      if opts.json then
        io.stdout:write(json_line(it), "\n")
      else
        io.stdout:write(human_line(it), "\n")
      end
      io.stdout:flush()
    end,
  })
  if not opts.json then
    io.stdout:write(("check: %d ok, %d warn, %d to fix, %d unreachable, %d not checked: exit %d\n"):format(
      counts.ok or 0, counts.warn or 0, counts.fail or 0, counts.unreachable or 0, counts.skip or 0, code))
  end
  return code, items
end

return (main(...))
