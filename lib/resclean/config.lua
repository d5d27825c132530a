-- Configuration from the environment, as the ecosystems already name it
-- (the command line every script shares is cli.lua's).
local log = require("resclean.log")

local M = {}

local function env(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

-- The secret parts of a libpq connection string: the password of a URI
-- (everything after the first ":" of the user info, which runs to the last
-- "@"), and each piece of it between "@", ":" and "/" (libpq splits an
-- unencoded "@" differently and may quote a piece as a host name); the
-- value of password= in a conninfo string.
function M.conninfo_secrets(s)
  local out = {}
  if type(s) ~= "string" then return out end
  local userinfo = s:match("^%a[%w+.%-]*://([^%s]*)@")
  if userinfo then
    local pw = userinfo:match("^[^:]*:(.*)$")
    if pw and pw ~= "" then
      out[#out + 1] = pw
      local decoded = pw:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
      if decoded ~= pw then out[#out + 1] = decoded end
      for piece in pw:gmatch("[^@:/]+") do
        if piece ~= pw then out[#out + 1] = piece end
      end
    end
  end
  for v in s:gmatch("[Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]%s*=%s*['\"]?([^%s'\"&]+)") do out[#out + 1] = v end
  return out
end

-- libpq conninfo: DATABASE_URL, else nil (libpq reads PG*). Its secrets
-- are registered with the log, which never prints them.
function M.conninfo()
  local c = env("DATABASE_URL")
  for _, s in ipairs(M.conninfo_secrets(c)) do log.add_secret(s) end
  log.add_secret(env("PGPASSWORD"))
  M.direct_conninfo() -- its secrets too, whether it is used or not
  return c
end

-- RESCLEAN_DIRECT_DATABASE_URL: a libpq conninfo to PostgreSQL itself (or a
-- session pool) for what needs a session of its own, when DATABASE_URL
-- goes through a transaction pool: LISTEN for notified cancels and the
-- singleton's advisory lock (pool.lua). nil when unset. Its secrets are
-- registered with the log.
function M.direct_conninfo()
  local c = env("RESCLEAN_DIRECT_DATABASE_URL")
  for _, s in ipairs(M.conninfo_secrets(c)) do log.add_secret(s) end
  return c
end

-- Options for s3.client from AWS_* variables and the policy.
function M.s3_options(policy)
  local region = env("AWS_REGION") or env("AWS_DEFAULT_REGION") or "us-east-1"
  local endpoint = env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL")
    or ("https://s3.%s.amazonaws.com"):format(region)
  local access, secret = env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")
  log.add_secret(secret)
  log.add_secret(env("AWS_SESSION_TOKEN"))
  if not access or not secret then
    return nil, { kind = "config", message = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set" }
  end
  if not endpoint:match("^https?://[%w%.%-%[%]:]+") then
    return nil, { kind = "config",
                  message = ("endpoint %q: expected http://host[:port] or https://host[:port]"):format(endpoint) }
  end
  return {
    endpoint = endpoint,
    region = region,
    access_key = access,
    secret_key = secret,
    session_token = env("AWS_SESSION_TOKEN"),
    bucket = policy.bucket,
    path_style = env("RESCLEAN_S3_VIRTUAL_HOSTED") == nil,
    ca_file = env("AWS_CA_BUNDLE"),
    timeout = policy.s3_timeout,
    connect_timeout = policy.s3_connect_timeout,
    max_attempts = policy.s3_max_attempts,
    concurrency = policy.concurrency,
  }
end

return M
