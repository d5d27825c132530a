-- What the entry scripts share: flags, policy loading, the storage client,
-- error reporting and exit codes. Failures of configuration exit 2 before
-- anything is touched; unreachable database or storage exit 3.
local config = require("resclean.config")
local log = require("resclean.log")
local policy = require("resclean.policy")
local sweep = require("resclean.sweep")

local M = {}

M.EXIT = sweep.EXIT

-- Print a one-line error on stderr and log it; returns code.
function M.fail(code, msg)
  msg = log.redact(msg)
  io.stderr:write("resclean: ", msg, "\n")
  log.emit("error", "error", { message = msg, exit_code = code })
  return code
end

function M.usage(script, usage, msg)
  io.stderr:write("resclean: ", script, ": ", msg, "\n", usage)
  return M.EXIT.usage
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

-- The storage adapter for a policy, checked reachable. Returns store or
-- nil, code, message.
function M.open_store(p, check)
  local storage = require("resclean.storage")
  local sopts, err = config.s3_options(p)
  if not sopts then return nil, M.EXIT.usage, err.message end
  if sopts.ca_file then
    local f, ferr = io.open(sopts.ca_file, "r")
    if not f then return nil, M.EXIT.usage, "AWS_CA_BUNDLE cannot be read: " .. tostring(ferr) end
    f:close()
  end
  -- s3.client raises on options it cannot take (an endpoint with a path):
  -- that is a configuration error, exit 2.
  local okc, store, serr = pcall(storage.new, sopts)
  if not okc then return nil, M.EXIT.usage, "storage configuration: " .. log.redact(tostring(store)) end
  if not store then return nil, M.EXIT.usage, sweep.errmsg(serr) end
  if check then
    local ok
    ok, err = store:check()
    if not ok then
      store:close()
      return nil, M.EXIT.unreachable,
        ("storage %s bucket %q: %s"):format(sopts.endpoint, p.bucket, sweep.errmsg(err))
    end
  end
  return store
end

-- The cycle's error on stderr (policy errors already name the file).
function M.report(summary)
  if summary.error then io.stderr:write("resclean: ", log.redact(summary.error), "\n") end
end

return M
