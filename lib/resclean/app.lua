-- What the entry scripts share: flags, policy loading, the storage client,
-- error reporting and exit codes. Failures of configuration exit 2 before
-- anything is touched; unreachable database or storage exit 3.
local config = require("resclean.config")
local errors = require("resclean.errors")
local log = require("resclean.log")
local policy = require("resclean.policy")
local sys = require("resclean.sys")

local M = {}

M.EXIT = errors.EXIT

-- Print a one-line error on stderr and log it; returns code.
function M.fail_on(err, prefix)
  return M.fail(errors.exit_code(err), (prefix or "") .. errors.message(err))
end

function M.fail(code, msg)
  msg = log.redact(msg)
  log.stderr(msg)
  log.emit("error", "error", { message = msg, exit_code = code })
  return code
end


-- Path of the policy file: --policy, else RESCLEAN_POLICY, else defaults.
function M.policy_path(opts)
  local p = opts.policy or os.getenv("RESCLEAN_POLICY")
  if p == "" then return nil end
  return p
end

function M.load_policy(opts)
  local p, err = policy.load(M.policy_path(opts))
  if not p then return nil, err end
  if opts["log-level"] then p.log_level = opts["log-level"] end
  log.set_level(p.log_level)
  return p
end

-- AWS_CA_BUNDLE must be a regular, readable file of PEM certificates (a
-- key file or a folder given by mistake fails every request, forever).
function M.check_ca_bundle(path)
  local kind, kerr = sys.file_kind(path)
  if not kind then return nil, ("AWS_CA_BUNDLE %s cannot be read: %s"):format(path, tostring(kerr)) end
  if kind ~= "file" then
    return nil, ("AWS_CA_BUNDLE %s is a %s, expected a file of PEM certificates"):format(path, kind)
  end
  local f, ferr = io.open(path, "rb")
  if not f then return nil, ("AWS_CA_BUNDLE %s cannot be read: %s"):format(path, tostring(ferr)) end
  local text = f:read(4 * 1024 * 1024) or ""
  f:close()
  if not text:find("-----BEGIN CERTIFICATE-----", 1, true) then
    return nil, ("AWS_CA_BUNDLE %s holds no PEM certificate (expected -----BEGIN CERTIFICATE----- blocks)")
      :format(path)
  end
  return true
end

-- An endpoint whose scheme does not fit its port answers in a way that looks
-- transient: plain HTTP to a TLS port gets an empty reply (or a reset), TLS to
-- a plain port a "wrong version number". Returns what to fix, or nil.
local SCHEME_MISMATCH = {
  { "^http://", "Empty reply from server",
    "an empty reply to plain HTTP: the port of AWS_ENDPOINT_URL_S3 %s serves TLS? write https://" },
  { "^https://", "wrong version number",
    "a TLS handshake answered in plain HTTP: the port of AWS_ENDPOINT_URL_S3 %s serves http://, not https://" },
}
function M.scheme_mismatch(endpoint, err)
  local msg = type(err) == "table" and tostring(err.message or "") or ""
  for _, m in ipairs(SCHEME_MISMATCH) do
    if endpoint:find(m[1]) and msg:find(m[2], 1, true) then return m[3]:format(endpoint) end
  end
  return nil
end

-- A failed bucket check: exit code, message (naming endpoint and bucket) and
-- what to fix (nil when unreachable).
function M.store_check_failure(endpoint, p, err)
  local where = ("storage %s bucket %q: "):format(endpoint, p.bucket)
  local mismatch = M.scheme_mismatch(endpoint, err)
  if mismatch then return M.EXIT.usage, where .. errors.message({ message = err.message, no_hint = true })
    .. " (" .. mismatch .. ")", mismatch end
  -- A reply to the bucket check that is not S3's (an HTML page, a cut
  -- listing) says the storage could not be checked: transient.
  local class, hint = errors.classify(err)
  local code = class == "item" and M.EXIT.unreachable or errors.exit_code(err)
  return code, where .. errors.message(err), code == M.EXIT.usage and (hint or "see the message") or nil
end

-- The storage adapter for a policy, checked reachable. Returns store or
-- nil, code, message.
function M.open_store(p, check)
  local storage = require("resclean.storage")
  local sopts, err = config.s3_options(p)
  if not sopts then return nil, M.EXIT.usage, err.message end
  if sopts.ca_file then
    local ok, why = M.check_ca_bundle(sopts.ca_file)
    if not ok then return nil, M.EXIT.usage, why end
  end
  -- s3.client raises on options it cannot take (an endpoint with a path):
  -- that is a configuration error, exit 2.
  local okc, store, serr = pcall(storage.new, sopts)
  if not okc then return nil, M.EXIT.usage, "storage configuration: " .. log.redact(tostring(store)) end
  if not store then return nil, errors.exit_code(serr), errors.message(serr) end
  if check then
    local ok
    ok, err = store:check()
    if not ok then
      store:close()
      local code, msg = M.store_check_failure(sopts.endpoint, p, err)
      return nil, code, msg
    end
  end
  return store
end

-- The first line of a run that may delete: who, what, with which policy.
-- Its write is checked (flushed): without an audit trail nothing starts.
-- Returns true or false, why.
-- The run id goes on every line of the process (a cycle's own lines carry
-- the cycle's id: with --once, the same one); M.run_id keeps it.
function M.start_line(script, p, fields)
  M.run_id = require("resclean.sweep").run_id()
  log.set_base({ run_id = M.run_id })
  local f = { script = script, pid = sys.pid(), host = sys.hostname(), policy = p.source,
              table = p.table, bucket = p.bucket, version = M.version() }
  for k, v in pairs(fields or {}) do f[k] = v end
  log.info("start", f)
  return log.flush()
end

-- resclean's version, as `resclean version` prints it first.
function M.version()
  return sys.version()
end

-- The cycle's error on stderr (policy errors already name the file).
function M.report(summary)
  if summary.error then log.stderr(log.redact(summary.error)) end
end

return M
