-- Structured logging: one JSON object a line on stdout, fixed field names.
-- Every line has ts (RFC 3339 UTC, milliseconds), level and event; callers
-- add fields. Nothing secret is ever passed here; redact() is the last
-- line of defence for strings that may embed credentials.
local cjson = require("cjson")
local sys = require("resclean.sys")

local M = {}

local LEVELS = { debug = 10, info = 20, warn = 30, error = 40 }
M.LEVELS = LEVELS

local threshold = LEVELS[(sys.getenv("RESCLEAN_LOG_LEVEL") or "info"):lower()] or LEVELS.info
local out = io.stdout
local base = {}
local held = 0 -- hold() depth: while > 0, emit() leaves flushing to release()

cjson.encode_invalid_numbers(true)
cjson.encode_sparse_array(true)

function M.set_level(name)
  local l = LEVELS[name]
  if not l then error(("unknown log level %q (expected debug, info, warn or error)"):format(tostring(name)), 2) end
  threshold = l
end

function M.enabled(level) return LEVELS[level] >= threshold end

-- Fields added to every line (run_id, for instance).
function M.set_base(fields) base = fields or {} end

function M.set_output(file) out = file end

local ts_secs, ts_prefix -- os.date once a second, not once a line
function M.timestamp(t)
  t = t or sys.time()
  local secs = math.floor(t)
  if secs ~= ts_secs then ts_secs, ts_prefix = secs, os.date("!%Y-%m-%dT%H:%M:%S", secs) end
  return ts_prefix .. (".%03dZ"):format(math.floor((t - secs) * 1000))
end

-- Remove credentials that might ride along in messages: URL passwords,
-- presigned signatures and credentials, password=... in conninfo strings.
function M.redact(s)
  if type(s) ~= "string" then return s end
  -- Every pattern below needs an "=" or an "@": most strings (ids, keys,
  -- outcomes) have neither and cost one scan instead of six.
  if not s:find("[=@]") then return s end
  s = s:gsub("(%w+://[^:/@%s]*:)[^@%s]*@", "%1***@")
  s = s:gsub("([Xx]%-[Aa]mz%-[Ss]ignature=)[%x]+", "%1***")
  s = s:gsub("([Ss]ignature=)[%x]+", "%1***")
  s = s:gsub("([Xx]%-[Aa]mz%-[Cc]redential=)[^&%s]+", "%1***")
  s = s:gsub("([Xx]%-[Aa]mz%-[Ss]ecurity%-[Tt]oken=)[^&%s]+", "%1***")
  s = s:gsub("(password%s*=%s*)%S+", "%1***")
  return s
end

function M.emit(level, event, fields)
  if LEVELS[level] < threshold then return end
  local rec = { ts = M.timestamp(), level = level, event = event }
  for k, v in pairs(base) do rec[k] = v end
  for k, v in pairs(fields or {}) do
    if type(v) == "string" then v = M.redact(v) end
    rec[k] = v
  end
  out:write(cjson.encode(rec), "\n")
  if held == 0 then out:flush() end
end

-- Between hold() and release(), lines go out when the buffer fills and at
-- release(), not one write each: a batch's resource lines in a few writes.
function M.hold() held = held + 1 end

function M.release()
  held = math.max(held - 1, 0)
  if held == 0 then out:flush() end
end

function M.debug(event, fields) M.emit("debug", event, fields) end
function M.info(event, fields) M.emit("info", event, fields) end
function M.warn(event, fields) M.emit("warn", event, fields) end
function M.error(event, fields) M.emit("error", event, fields) end

return M
