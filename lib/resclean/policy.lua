-- The policy: what is a stale pending upload, where its object lives, and
-- how hard to sweep. Defaults fit the upstream schema (CipherSwarm's
-- attack_resource_files); a policy file (Lua returning a table) overrides
-- any field. Validation is strict: an unknown field or a bad value is an
-- error naming the file, the field and what was expected.
local log = require("resclean.log")
local sys = require("resclean.sys")

local M = {}

-- A UUID as PostgreSQL writes it (lower case), the whole string: the one
-- UUID pattern. To find one written in either case, match s:lower().
local H = "[0-9a-f]"
local UUID = "^" .. H:rep(8) .. "%-" .. H:rep(4) .. "%-" .. H:rep(4) .. "%-" .. H:rep(4) .. "%-" .. H:rep(12) .. "$"
M.UUID_PATTERN = UUID

local function getenv(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

-- A fresh table of the defaults (functions included), environment applied.
function M.defaults()
  return {
    table = "attack_resource_files",
    id_column = "id",
    uploaded_column = "is_uploaded",       -- pending while false
    created_column = "created_at",         -- age, measured by the database clock
    type_column = "resource_type",         -- nil: every row goes through uploads
    upload_types = { "WORD_LIST", "RULE_LIST", "MASK_LIST", "CHARSET" },
    key_columns = { "id" },                -- columns key(row) reads (as text)
    key = function(row) return row.id end, -- object key, upstream: id::text
    key_pattern = UUID,                    -- Lua pattern every key must match
    bucket = getenv("RESCLEAN_BUCKET") or "cipherswarm-resources",
    max_age = 24 * 3600,                   -- seconds pending before stale
    interval = 3600,                       -- seconds between cycles
    jitter = 60,                           -- up to this many seconds added to interval
    batch_size = 1000,                     -- rows claimed (and locked) per transaction
    verify = true,                         -- HEAD objects first for honest outcomes
    verify_list = true,                    -- verify by listing a bucket small next to the backlog
    quiet_deletes = false,                 -- true: Quiet replies, trusting what they leave out
    concurrency = 64,                      -- most S3 requests at once (HEADs adapt from 16 up to this)
    max_deletes_per_run = 0,               -- 0: no limit
    lock_timeout = 5,                      -- seconds; cancel waits this long on a locked row
    statement_timeout = 60,                -- seconds per SQL statement
    s3_timeout = 30,                       -- seconds per S3 request
    s3_connect_timeout = 5,
    s3_max_attempts = 4,                   -- retries for idempotent calls on 5xx/429/network
    singleton = false,                     -- true: one sweeper at a time (advisory lock)
    progress_interval = 10,                -- seconds between progress lines
    url_lifetime = 3600,                   -- presigned URL lifetime (reconcile's grace)
    reconcile_max_delete_fraction = 0.10,  -- reconcile --apply refuses to delete more of the candidates
    -- key_id = function(key) ... end      -- optional inverse of key(): the id of the row whose key is key
    -- Tables that own keys in the bucket (reconcile checks all of them).
    owners = {
      { table = "attack_resource_files", key_column = "id" },
      { table = "upload_resource_files", key_column = "id" },
    },
    cancel_channel = "resclean_cancel",    -- wake-up channel the long-running sweep LISTENs on; false: off
    cancel_requests_table = "resclean_cancel_requests", -- cancels the application asked for; false: off
    log_level = getenv("RESCLEAN_LOG_LEVEL") or "info",
  }
end

-- Durations: seconds as a number, or a string like "90s", "15m", "24h", "7d".
local UNITS = { s = 1, m = 60, h = 3600, d = 86400 }
function M.duration(v)
  if math.type(v) == "integer" or math.type(v) == "float" then return v end
  if type(v) ~= "string" then return nil end
  local n, unit = v:match("^%s*(%d+%.?%d*)%s*([smhd]?)%s*$")
  if not n then return nil end
  return tonumber(n) * UNITS[unit ~= "" and unit or "s"]
end

-- The other way: seconds as people read them, "3d 4h", "5h 12m", "12m 5s",
-- "42s"; "-" for none.
function M.human_age(s)
  if s == nil then return "-" end
  s = math.floor(s)
  if s < 0 then return "0s" end
  local d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
  if d > 0 then return ("%dd %dh"):format(d, h) end
  if h > 0 then return ("%dh %dm"):format(h, m) end
  if m > 0 then return ("%dm %ds"):format(m, s % 60) end
  return ("%ds"):format(s)
end

local IDENT = "^[%a_][%w_]*$"

local function ident(v) return type(v) == "string" and #v <= 63 and v:match(IDENT) ~= nil end

local function string_list(v, item_ok)
  if type(v) ~= "table" or #v == 0 then return false end
  for k, item in pairs(v) do
    if math.type(k) ~= "integer" or not item_ok(item) then return false end
  end
  return true
end

local function dur_range(lo, hi)
  return function(v)
    local d = M.duration(v)
    return d ~= nil and d >= lo and d <= hi, d
  end
end

local function int_range(lo, hi)
  return function(v) return math.type(v) == "integer" and v >= lo and v <= hi end
end

local function is_bool(v) return type(v) == "boolean" end

local function valid_pattern(v)
  return type(v) == "string" and pcall(string.find, "", v)
end

local function bucket_name(v)
  return type(v) == "string" and #v >= 3 and #v <= 63 and v:match("^[a-z0-9][a-z0-9.%-]*[a-z0-9]$") ~= nil
end

local function owners_ok(v)
  if type(v) ~= "table" or #v == 0 then return false end
  for _, o in ipairs(v) do
    if type(o) ~= "table" or not ident(o.table) or not ident(o.key_column) then return false end
  end
  return true
end

-- field -> {check(value) -> ok[, normalised], what was expected}
local LOG_LEVELS = {}
for _, l in ipairs(log.LEVELS) do LOG_LEVELS[l] = true end

local FIELDS = {
  table = { ident, "a table name (letters, digits, _; at most 63 bytes)" },
  id_column = { ident, "a column name" },
  uploaded_column = { ident, "a column name" },
  created_column = { ident, "a column name" },
  type_column = { function(v) return v == false or ident(v) end, "a column name, or false for none" },
  upload_types = { function(v) return string_list(v, function(s) return type(s) == "string" and s ~= "" end) end,
    "a non-empty list of type names" },
  key_columns = { function(v) return string_list(v, ident) end, "a non-empty list of column names" },
  key = { function(v) return type(v) == "function" end, "a function(row) returning the object key" },
  key_pattern = { valid_pattern, "a valid Lua pattern" },
  bucket = { bucket_name, "an S3 bucket name (3-63 of a-z 0-9 . -)" },
  max_age = { dur_range(60, 10 * 365 * 86400), "a duration of at least 60 s (seconds or \"24h\")" },
  interval = { dur_range(1, 365 * 86400), "a duration of at least 1 s" },
  jitter = { dur_range(0, 86400), "a duration from 0 to 1 day" },
  batch_size = { int_range(1, 10000), "an integer from 1 to 10000" },
  verify = { is_bool, "true or false" },
  verify_list = { is_bool, "true or false" },
  quiet_deletes = { is_bool, "true or false" },
  concurrency = { int_range(1, 256), "an integer from 1 to 256" },
  max_deletes_per_run = { int_range(0, math.maxinteger), "an integer >= 0 (0: no limit)" },
  lock_timeout = { dur_range(0.001, 3600), "a duration from 1 ms to 1 h" },
  statement_timeout = { dur_range(0.001, 86400), "a duration from 1 ms to 1 day" },
  s3_timeout = { dur_range(0.1, 3600), "a duration from 0.1 s to 1 h" },
  s3_connect_timeout = { dur_range(0.1, 600), "a duration from 0.1 s to 10 min" },
  s3_max_attempts = { int_range(1, 20), "an integer from 1 to 20" },
  singleton = { is_bool, "true or false" },
  progress_interval = { dur_range(0.1, 86400), "a duration of at least 0.1 s" },
  url_lifetime = { dur_range(1, 7 * 86400), "a duration from 1 s to 7 days (S3's presign limit)" },
  owners = { owners_ok, "a non-empty list of {table=..., key_column=...}" },
  key_id = { function(v) return v == nil or type(v) == "function" end,
    "a function(key) returning the id_column value of the row whose key(row) is key (the inverse of key)" },
  reconcile_max_delete_fraction = { function(v) return math.type(v) ~= nil and v >= 0 and v <= 1 end,
    "a number from 0 to 1 (0.10: at most 10% of the candidates)" },
  cancel_channel = { function(v) return v == false or ident(v) end,
    "a channel name (letters, digits, _; at most 63 bytes), or false for none" },
  cancel_requests_table = { function(v) return v == false or ident(v) end,
    "a table name (letters, digits, _; at most 63 bytes; see examples/cancel-requests.sql), or false for none" },
  log_level = { function(v) return LOG_LEVELS[v] == true end, "one of " .. table.concat(log.LEVELS, ", ") },
}

local function describe(v)
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) == "table" or type(v) == "function" then return "a " .. type(v) end
  return tostring(v)
end

-- The error of a policy that cannot be used: kind "policy", so scripts exit
-- 2. source: the policy file (p.source; nil: the defaults); field: the
-- field at fault, or nil for the file as a whole. Every policy error is
-- made here: "policy FILE: field 'NAME': what is wrong".
function M.error(source, field, msg)
  source = source or "(defaults)"
  return { kind = "policy", field = field, source = source,
           message = ("policy %s: %s%s"):format(source, field and ("field '" .. field .. "': ") or "", msg) }
end

-- Validate a complete policy (defaults merged). Returns the policy with
-- durations as seconds, or nil, err.
function M.validate(p, source)
  source = source or "(defaults)"
  local names = {}
  for k in pairs(p) do names[#names + 1] = k end
  table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(names) do
    if not FIELDS[k] then
      return nil, M.error(source, tostring(k), "unknown field (known: see examples/policy.lua)")
    end
  end
  local out = {}
  for k, spec in pairs(FIELDS) do
    local ok, norm = spec[1](p[k])
    if not ok then
      return nil, M.error(source, k, ("expected %s, got %s"):format(spec[2], describe(p[k])))
    end
    out[k] = norm ~= nil and norm or p[k]
  end
  -- A presigned URL lets its upload start until url_lifetime after the row was made: a
  -- max_age below it deletes uploads still in progress (max_age = 1440 meant as minutes).
  if out.max_age < out.url_lifetime then
    return nil, M.error(source, "max_age", ("%s (%s) is below url_lifetime %s (%s): a pending upload whose "
      .. "presigned URL is still valid would be deleted; make max_age at least url_lifetime (durations are "
      .. "seconds unless written \"24h\", \"90m\")"):format(describe(p.max_age), M.human_age(out.max_age),
      describe(p.url_lifetime), M.human_age(out.url_lifetime)))
  end
  if out.type_column == false then out.type_column = nil end
  out.source = source -- for messages about the policy found later (a missing table)
  if out.max_deletes_per_run == 0 then out.max_deletes_per_run = nil end
  return out
end

-- Merge overrides onto the defaults and validate.
function M.build(overrides, source)
  local p = M.defaults()
  for k, v in pairs(overrides or {}) do p[k] = v end
  return M.validate(p, source)
end

-- What a policy file (and the key() it defines, called every batch) may use: no way
-- out of the process or onto the file system. os keeps getenv, time, clock, date and
-- difftime; require gives resclean.policy only. A name left out raises, naming it.
local SAFE_GLOBALS = { "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
  "rawlen", "rawset", "select", "setmetatable", "getmetatable", "tonumber", "tostring", "type", "xpcall",
  "_VERSION", "string", "table", "math", "utf8", "coroutine" }
local SAFE_OS = { "getenv", "time", "clock", "date", "difftime" }
local DENIED_GLOBALS = { io = true, debug = true, load = true, loadfile = true, dofile = true, print = true,
  collectgarbage = true, package = true }

local function denied(what)
  error(("%s is not available in a policy file (it may use os.getenv, os.time, string, table, math and "
    .. "require(\"resclean.policy\"))"):format(what), 3)
end

local function refuse_table(name)
  return setmetatable({}, { __index = function(_, k) denied(name .. "." .. tostring(k)) end,
                            __newindex = function() denied(name) end })
end

function M.sandbox()
  local env = {}
  for _, k in ipairs(SAFE_GLOBALS) do
    local v = _G[k]
    if type(v) == "table" then -- a copy: a policy cannot change string.format for the whole process
      v = {}
      for name, f in pairs(_G[k]) do v[name] = f end
    end
    env[k] = v
  end
  local os_ = {}
  for _, k in ipairs(SAFE_OS) do os_[k] = os[k] end
  env.os = setmetatable(os_, { __index = function(_, k) denied("os." .. tostring(k)) end })
  env.io, env.debug, env.package = refuse_table("io"), refuse_table("debug"), refuse_table("package")
  env.require = function(name)
    if name == "resclean.policy" then return M end
    denied(("require(%q)"):format(tostring(name)))
  end
  env._G = env
  return setmetatable(env, { __index = function(_, k)
    if DENIED_GLOBALS[k] then denied(tostring(k)) end
    return nil
  end })
end

-- Load a policy file: Lua returning a table, run in M.sandbox() (os.getenv and
-- the string, table and math libraries; no io, os.exit, os.execute or debug).
function M.load(path)
  if path == nil then return M.build({}, "(defaults)") end
  -- A FIFO or a device would block the open (at start and every cycle).
  local kind, kerr = sys.file_kind(path)
  if not kind then return nil, M.error(path, nil, "cannot be read: " .. tostring(kerr)) end
  if kind ~= "file" then
    return nil, M.error(path, nil, ("is a %s, expected a regular file of Lua"):format(kind))
  end
  local chunk, err = loadfile(path, "t", M.sandbox())
  if not chunk then
    local missing = err:match("cannot open") and "cannot be read: " or "has a syntax error: "
    return nil, M.error(path, nil, missing .. err)
  end
  local ok, t = pcall(chunk)
  if not ok then return nil, M.error(path, nil, "raised an error: " .. tostring(t)) end
  if type(t) ~= "table" then
    return nil, M.error(path, nil, "expected the file to return a table, got " .. describe(t))
  end
  return M.build(t, path)
end

-- Check a computed key before it can reach storage. Returns key or nil, why.
function M.check_key(p, key)
  if type(key) ~= "string" then return nil, "key is not a string" end
  if key == "" then return nil, "empty key" end
  if #key > 1024 then return nil, "key longer than 1024 bytes" end
  if key:find("%c") then return nil, "control character in key" end
  if key:find("..", 1, true) then return nil, "'..' in key" end
  if not key:find(p.key_pattern) then return nil, "key does not match key_pattern" end
  return key
end

-- Compute and check the key of a row. Never raises: a failing key()
-- function is a bad key, not a crash in the middle of a batch.
function M.row_key(p, row)
  local ok, key = pcall(p.key, row)
  if not ok then return nil, "key() raised: " .. tostring(key) end
  return M.check_key(p, key)
end

-- Is this type one that goes through the upload flow?
function M.is_upload_type(p, t)
  if not p.type_column then return true end
  for _, u in ipairs(p.upload_types) do
    if u == t then return true end
  end
  return false
end

return M
