-- One classification of errors for every script. An error from the
-- primitives ({kind = "pg" | "s3", code, message, retryable}) or from Lua
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

local S3_CONFIG = {
  InvalidAccessKeyId = "check AWS_ACCESS_KEY_ID",
  SignatureDoesNotMatch = "check AWS_SECRET_ACCESS_KEY (and AWS_REGION)",
  AccessDenied = "the credentials lack a permission on the bucket: see the README's bucket policy",
  AllAccessDisabled = "the bucket has all access disabled",
  NoSuchBucket = "check RESCLEAN_BUCKET or the policy's bucket",
  InvalidBucketName = "check RESCLEAN_BUCKET or the policy's bucket",
  AuthorizationHeaderMalformed = "check AWS_REGION",
  PermanentRedirect = "check AWS_REGION and AWS_ENDPOINT_URL_S3",
  InvalidToken = "check AWS_SESSION_TOKEN",
  ExpiredToken = "renew AWS_SESSION_TOKEN",
  InvalidAccessKey = "check AWS_ACCESS_KEY_ID",
  RequestTimeTooSkewed = "the host clock is off: fix its time (NTP)",
  tls = "check AWS_CA_BUNDLE and the endpoint's certificate",
  curl = "check AWS_ENDPOINT_URL_S3",
}
local S3_ITEM = { ReplyTooLarge = true, MalformedReply = true, NotInReply = true, no_result = true,
                  OutOfMemory = true, EmptyKey = true, NoSuchKey = true }
-- Codes S3 documents as worth retrying (a fault, overload, throttling, a
-- request the server gave up on), whatever the status that carried them;
-- with the transport's own: no answer at all.
local S3_TRANSIENT = { InternalError = true, ServiceUnavailable = true, SlowDown = true, RequestTimeout = true,
                       OperationAborted = true, Throttling = true, ThrottlingException = true,
                       RequestLimitExceeded = true, TooManyRequests = true, connection = true, timeout = true,
                       dns = true }
local S3_TRANSIENT_HINT = "is the S3 endpoint up and reachable? check AWS_ENDPOINT_URL_S3"
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
    -- A connection string libpq cannot parse is not retryable.
    if err.retryable == false then return "config", PG_CONNECT_HINT.conninfo end
    return "transient", PG_TRANSIENT_HINT
  end
  if PG_ITEM[code] then return "item" end
  if PG_CONFIG[code] then return "config", PG_CONFIG[code] end
  if PG_TRANSIENT[code] or PG_TRANSIENT_CLASS[code:sub(1, 2)] then
    return "transient", PG_TRANSIENT_HINTS[code] or PG_TRANSIENT_HINT
  end
  if PG_CONFIG_CLASS[code:sub(1, 2)] then return "config" end
  if err.retryable then return "transient", PG_TRANSIENT_HINT end
  -- Anything else the database refuses (a constraint, a trigger) will
  -- refuse again: the operator must look.
  return "config"
end

local function classify_s3(err)
  local code = tostring(err.code or "")
  -- A per-key error inside a reply that succeeded (DeleteObjects' <Error>
  -- for one key) concerns that key, not the credentials or the bucket.
  local st = tonumber(err.status)
  if st and st >= 200 and st < 300 then return "item" end
  if S3_CONFIG[code] then return "config", S3_CONFIG[code] end
  if S3_ITEM[code] then return "item" end
  if S3_TRANSIENT[code] then return "transient", S3_TRANSIENT_HINT end
  -- A code we do not know: by the status that carried it, when there was
  -- one; a missing status alone does not make an error transient.
  if st and st > 0 then
    if st >= 500 or st == 429 then return "transient", S3_TRANSIENT_HINT end
    if st == 401 or st == 403 then return "config", S3_CONFIG.AccessDenied end
    return "item"
  end
  if err.retryable then return "transient", S3_TRANSIENT_HINT end
  return "item"
end

-- "config", "transient" or "item", and a hint (or nil).
function M.classify(err)
  if type(err) ~= "table" then return "config" end
  if err.class then return err.class, err.hint end
  if err.kind == "pg" then return classify_pg(err) end
  if err.kind == "s3" then return classify_s3(err) end
  if err.kind == "transient" or err.kind == "unreachable" then return "transient" end
  return "config" -- policy, config, usage, schema
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
