-- One classification of errors for every script. An error from the
-- primitives ({kind = "pg" | "s3", code, message, ...}: facts, a SQLSTATE,
-- an HTTP status, the transport's failure) or from Lua
-- (kind "policy", "config", "usage") is one of:
--   config     something the operator must fix (usage, policy, schema,
--              authentication, authorization, a missing bucket, an unusable
--              CA bundle): exit 2, and retrying will not help
--   transient  the database or the storage could not be reached, timed out
--              or answered 5xx: exit 3, retrying may help
--   item       one resource failed (a lock timeout, an oversized or
--              malformed reply, a key missing from a reply): that resource
--              is failed or skipped, the run goes on (exit 1)
-- message(err) is the one line an operator reads: what happened and the
-- setting to fix, the code not repeated, credentials redacted.
local log = require("resclean.log")
local s3_errors = require("resclean.s3_errors")

local M = {}

M.EXIT = { ok = 0, failed = 1, usage = 2, unreachable = 3 }

-- SQLSTATEs (exact, else by class) that configuration must fix.
local PG_CONFIG = {
  ["28P01"] = "check the password in DATABASE_URL (or PGPASSWORD, ~/.pgpass)",
  ["28000"] = "check the user in DATABASE_URL and the server's pg_hba.conf",
  ["3D000"] = "check the database name in DATABASE_URL",
  ["42501"] = "grant the role the privileges in the README (Deploy: least privilege)",
  ["42P01"] = "check the policy's table (and the role's search_path)",
  ["42703"] = "check the policy's column names",
  ["3F000"] = "check the role's search_path",
}
local PG_CONFIG_CLASS = { ["28"] = true, ["3D"] = true, ["3F"] = true, ["42"] = true, ["0A"] = true,
                          ["22"] = true }
local PG_TRANSIENT_CLASS = { ["08"] = true, ["53"] = true, ["58"] = true, ["XX"] = true, ["40"] = true }
local PG_TRANSIENT = { ["57P01"] = true, ["57P02"] = true, ["57P03"] = true, ["57014"] = true }
local PG_ITEM = { ["55P03"] = true } -- lock_timeout: that resource is skipped

-- A standby (or a server gone read-only under us, e.g. a primary demoted by
-- a failover): transient, so a failover in progress heals at the next
-- cycle; a replica configured by mistake never completes a cycle, which the
-- never-succeeded alert reports.
M.STANDBY_HINT = "a standby or a read-only server cannot take resclean's writes: list every host in DATABASE_URL "
  .. "with target_session_attrs=read-write (postgres://host1:5432,host2:5432/db?target_session_attrs="
  .. "read-write) so that libpq connects to the primary, also after a failover"

-- A failed connection has no SQLSTATE from libpq, only the server's (or
-- libpq's) message: the well-known ones, configuration to fix unless the
-- entry says "transient".
local PG_CONNECT_MESSAGES = {
  { "password authentication failed", "28P01" },
  { "no password supplied", "28P01" },
  { "no pg_hba%.conf entry", "28000" },
  { "role \"[^\"]*\" does not exist", "28000" },
  { "database \"[^\"]*\" does not exist", "3D000" },
  { "permission denied for database", "42501" },
  { "not permitted to log in", "28000" },
  { "root certificate file", "sslrootcert" },
  { "certificate verify failed", "sslrootcert" },
  { "does not match host name", "sslrootcert" },
  { "could not read root certificate", "sslrootcert" },
  { "invalid sslmode", "sslmode" },
  { "server does not support SSL, but SSL was required", "ssl_not_offered" },
  { "invalid connection option", "conninfo" },
  { "invalid URI", "conninfo" },
  { "invalid integer value", "conninfo" },
  { "could not translate host name", "host" },
  { "too many connections", "limit", "transient" },
  { "too many clients", "limit", "transient" },
  { "remaining connection slots are reserved", "limit", "transient" },
  -- target_session_attrs=read-write (or primary) found no writable host: every host
  -- listed is a standby, or a failover is in progress.
  { "session is read%-only", "no_primary", "transient" },
  { "server is in hot standby mode", "no_primary", "transient" },
  -- resclean.pg's own message for a connection string libpq cannot parse
  { "^invalid connection string", "conninfo" },
}
-- Too many sessions: transient, but the limit is worth naming.
local PG_LIMIT_HINT = "the server's max_connections or the role's CONNECTION LIMIT is reached: a sweep uses up to "
  .. "three sessions (two for its batches, one listening for cancels)"
local PG_CONNECT_HINT = {
  limit = PG_LIMIT_HINT,
  no_primary = "no host in DATABASE_URL takes writes: a failover is in progress (retried at the next cycle), "
    .. "or every host listed is a standby; the primary must be among them",
  sslrootcert = "point sslrootcert= in DATABASE_URL, or PGSSLROOTCERT, at the CA that signed the server's "
    .. "certificate (a service user has no ~/.postgresql/root.crt)",
  sslmode = "check sslmode in DATABASE_URL",
  ssl_not_offered = "the server offers no TLS while sslmode (DATABASE_URL or PGSSLMODE) requires it: enable ssl "
    .. "on the server, or point DATABASE_URL at a host that offers TLS",
  conninfo = "check DATABASE_URL (postgresql://user:password@host:port/dbname?sslmode=...)",
  host = "check the host in DATABASE_URL",
}

local PG_TRANSIENT_HINT = "is PostgreSQL up and reachable? check the host and port in DATABASE_URL"
-- Transient codes whose cause is not reachability.
local PG_TRANSIENT_HINTS = {
  ["57014"] = "a statement was cancelled: it ran longer than the policy's statement_timeout, or an operator "
    .. "cancelled it; a slow claim wants the partial index (resclean run status)",
}

-- The class of an error, and a hint naming what to check.
local function classify_pg(err)
  local code = tostring(err.code or "")
  if code == "53300" then return "transient", PG_LIMIT_HINT end
  -- 25006 read_only_sql_transaction: a write reached a standby.
  if code == "25006" then return "transient", M.STANDBY_HINT end
  if code == "connection" then
    local msg = tostring(err.message or "")
    for _, m in ipairs(PG_CONNECT_MESSAGES) do
      if msg:find(m[1]) then return m[3] or "config", PG_CONFIG[m[2]] or PG_CONNECT_HINT[m[2]] end
    end
    return "transient", PG_TRANSIENT_HINT
  end
  if PG_ITEM[code] then return "item" end
  if PG_CONFIG[code] then return "config", PG_CONFIG[code] end
  if PG_TRANSIENT[code] or PG_TRANSIENT_CLASS[code:sub(1, 2)] then
    return "transient", PG_TRANSIENT_HINTS[code] or PG_TRANSIENT_HINT
  end
  if PG_CONFIG_CLASS[code:sub(1, 2)] then return "config" end
  -- An error made in Lua (a fake, a script) may say it is worth retrying;
  -- the binding never does (it reports facts).
  if err.retryable then return "transient", PG_TRANSIENT_HINT end
  -- Anything else the database refuses (a constraint, a trigger) will
  -- refuse again: the operator must look.
  return "config"
end

-- The owner of each kind of error the primitives report: PostgreSQL's here,
-- the S3 store's beside its adapter (resclean.s3_errors).
local OWNERS = { pg = classify_pg, s3 = s3_errors.classify }

-- "config", "transient" or "item", and a hint (or nil).
function M.classify(err)
  if type(err) ~= "table" then return "config" end
  if err.class then return err.class, err.hint end
  local owner = OWNERS[err.kind]
  if owner then return owner(err) end
  if err.kind == "transient" or err.kind == "unreachable" then return "transient" end
  return "config" -- policy, config, usage, schema
end

-- Whether trying the same again may succeed: the one answer to it (the
-- primitives report facts, not this). A transient error only: an item
-- error (a lock timeout, 55P03) is that resource's, skipped this run and
-- claimed again by a later one, never retried within it.
function M.retryable(err)
  return (M.classify(err)) == "transient"
end


-- Exit code of a run that ends on err: 2 for config, 3 for transient.
-- An item error that ends a run (every item failed the same way) is 1.
function M.exit_code(err)
  local class = M.classify(err)
  if class == "config" then return M.EXIT.usage end
  if class == "transient" then return M.EXIT.unreachable end
  return M.EXIT.failed
end

-- One line: "code: message (hint)", the code left out when the message
-- already says it; credentials redacted.
function M.message(err)
  if type(err) ~= "table" then return log.redact(tostring(err)) end
  local code, msg = err.code and tostring(err.code), err.message and tostring(err.message) or ""
  msg = msg:gsub("%s+$", ""):gsub("\n%s*", "; ")
  local s = msg
  if code and code ~= "" and not msg:find(code, 1, true) and code ~= "connection" then
    s = msg ~= "" and (code .. ": " .. msg) or code
  end
  if s == "" then s = "unknown error" end
  local _, hint = M.classify(err)
  if hint and not err.no_hint then s = s .. " (" .. hint .. ")" end
  return log.redact(s)
end

-- A new error of our own: kind and class given, message as the operator reads it.
function M.new(class, message, fields)
  local e = { kind = "resclean", class = class, message = message }
  for k, v in pairs(fields or {}) do e[k] = v end
  return e
end

return M
