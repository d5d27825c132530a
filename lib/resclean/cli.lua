-- The command line every operator script shares, on Debian's lua-argparse:
-- generated help, choices checked, and one shape of usage error.
--
--   local cli = require("resclean.cli")
--   local parser = cli.parser("sweep", "Remove stale pending uploads.", EPILOG)
--   parser:flag("--once", "One cycle, then exit.")
--   local args, code = cli.parse(parser, { ... })
--   if not args then return code end   -- 0 after --help, 2 after a usage error
--
-- Every parser has --help, --policy FILE and --log-level LEVEL. Option names
-- come back as written ("dry-run", "log-level"), as the scripts use them.
local argparse = require("argparse")
local log = require("resclean.log")

local M = {}


function M.parser(name, description, epilog)
  local p = argparse("resclean run " .. name, description, epilog)
  p:add_help(false)
  p:help_max_width(100)
  p:flag("-h --help", "Show this help and exit.")
  p:option("--policy", "Policy file (else RESCLEAN_POLICY, else the built-in defaults)."):argname("FILE")
  p:option("--log-level", "Log level (else the policy's log_level, else RESCLEAN_LOG_LEVEL, else info).")
    :argname("LEVEL")
    :choices(log.LEVELS)
  p._resclean_name = name
  return p
end

-- "usage: ..." as Unix tools print it (argparse says "Usage:").
local function lower_usage(text) return (text:gsub("^Usage:", "usage:")) end
function M.help(p) return lower_usage(p:get_help()) end
function M.usage(p) return lower_usage(p:get_usage()) end

-- A usage error: one line naming the script and the problem, then the usage,
-- on stderr. Returns 2.
function M.usage_error(p, msg)
  io.stderr:write("resclean: ", p._resclean_name, ": ", msg, "\n", M.usage(p), "\n")
  return 2
end

-- Parse argv. Returns the options (keys as the flags are written), or nil
-- and the exit code: 0 after --help (printed on stdout), 2 after a usage
-- error. --help wins over everything else on the line.
function M.parse(p, argv)
  for _, a in ipairs(argv) do
    if a == "--" then break end
    if a == "-h" or a == "--help" then
      io.stdout:write(M.help(p), "\n")
      return nil, 0
    end
  end
  local ok, res = p:pparse(argv)
  if not ok then return nil, M.usage_error(p, res) end
  local out = {}
  for k, v in pairs(res) do out[(k:gsub("_", "-"))] = v end
  return out
end

-- A whole number from a flag's text, within lo..hi, or nil.
function M.integer(text, lo, hi)
  if type(text) ~= "string" or not text:match("^%s*%d+%s*$") then return nil end
  local n = math.tointeger(tonumber(text))
  if not n or n < lo or n > hi then return nil end
  return n
end

return M
