-- Status: the backlog of pending uploads, read-only.
--   resclean run status [--json] [--policy FILE] [--log-level LEVEL]
-- Pending resources by type and age (database clock), how many the sweep
-- would take now, the oldest, and whether the sweep's claim query can use an
-- index (with the CREATE INDEX statement to run when it cannot).
-- Exit 0; 2 on what configuration must fix (a bad policy, a table or column
-- it names missing, a wrong password); 3 when the database cannot be reached.
-- The work is in lib/resclean/status.lua; this front parses the flags.
local app = require("resclean.app")
local cli = require("resclean.cli")
local config = require("resclean.config")
local log = require("resclean.log")
local pg = require("resclean.pg")
local status = require("resclean.status")

local EPILOG = [[
Reads the database only (DATABASE_URL, else libpq's PG* variables); errors go to
stderr. Exit codes: 0 ok, 2 configuration to fix, 3 database unreachable.]]

local function main(...)
  local parser = cli.parser("status", "The backlog of pending uploads, read-only.", EPILOG)
  parser:flag("--json", "One JSON object on stdout instead of the report.")
  local opts, code0 = cli.parse(parser, { ... })
  if not opts then return code0 end
  -- stdout holds the report: log lines (errors) go to stderr.
  log.set_output(io.stderr)
  local p, err = app.load_policy(opts)
  if not p then return app.fail(app.EXIT.usage, err.message) end
  local report
  report, err = status.read(pg, config.conninfo(), p)
  if not report then return app.fail_on(err, "database: ") end
  io.stdout:write(status.render(report, opts.json))
  return 0
end

return main(...)
