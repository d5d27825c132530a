-- The sweep's view of object storage: a thin adapter over resclean.s3 that
-- answers per key, in the order of the keys given:
--   head_many(keys, n)   -> { true | false | err, ... }  (exists? n at once)
--   delete_many(keys, n) -> { true | err, ... }          (up to n requests at once)
--   check()              -> true | nil, err   (bucket reachable with these credentials)
-- Anything else (fakes in unit specs) with the same three methods will do.
local log = require("resclean.log")
local s3 = require("resclean.s3")
local sys = require("resclean.sys")

local Store = {}
Store.__index = Store

local M = {}

function M.new(opts)
  local client, err = s3.client(opts)
  if not client then return nil, err end
  return setmetatable({ client = client, bucket = opts.bucket }, Store)
end

function Store:check()
  local res, err = self.client:list({ max = 1 })
  if not res then return nil, err end
  return true
end

function Store:head_many(keys, concurrency)
  local res = self.client:head_many(keys, { concurrency = concurrency })
  local out = {}
  for i = 1, #keys do
    local r = res[i]
    if type(r) ~= "table" then
      out[i] = { kind = "s3", code = "no_result", message = "no HEAD result for key" }
    elseif r.err then
      out[i] = r.err
    else
      out[i] = r.exists == true
    end
  end
  return out
end

-- A server works through one DeleteObjects request key by key; a batch's
-- keys go out as up to this many requests at once (of at least
-- MIN_PER_REQUEST keys, at most S3's 1,000), never more than `concurrency`
-- so that a stalled server costs one round of timeouts. On the test RGW,
-- 1,000 keys as 8 x 125 in parallel went 10-15% faster than as one request.
local DELETE_REQUESTS = 8
local MIN_PER_REQUEST = 100

-- A DeleteObjects reply can refuse some keys alone with a throttling or
-- server-side code while deleting the rest (S3 answers 200 and lists those
-- keys as <Error>). Only those keys go again, within the same call, after
-- a backoff with equal jitter (base, 2 base, 4 base ... each between half
-- and all of it, at most KEY_BACKOFF_MAX), at most KEY_RETRIES more times;
-- a stop signal ends the waiting. A key that still fails is reported with
-- its last error: the sweep keeps its row for the next run.
M.KEY_RETRY_CODES = { InternalError = true, SlowDown = true, ServiceUnavailable = true, OperationAborted = true }
M.KEY_RETRIES = 4
M.KEY_BACKOFF = 0.2 -- seconds
M.KEY_BACKOFF_MAX = 5

-- A key's own error in a reply that succeeded (status 2xx): request-level
-- failures (5xx, 429, no answer) were already retried by the transport.
local function retry_key(err)
  if type(err) ~= "table" or not M.KEY_RETRY_CODES[err.code] then return false end
  local st = tonumber(err.status)
  return st ~= nil and st >= 200 and st < 300
end

-- One DeleteObjects round for keys: a result per key (true or an error).
function Store:delete_round(keys, concurrency)
  local parts = math.min(DELETE_REQUESTS, concurrency or DELETE_REQUESTS)
  local per = math.min(1000, math.max(MIN_PER_REQUEST, -(-#keys // parts)))
  local res, err = self.client:delete_many(keys, { batch = per, concurrency = concurrency })
  local out = {}
  for i = 1, #keys do
    if not res then
      out[i] = err
    else
      local r = res[i]
      if r == true or (type(r) == "table" and r.deleted) then
        out[i] = true
      elseif type(r) == "table" and r.err then
        out[i] = r.err
      else
        out[i] = { kind = "s3", code = "no_result", message = "key missing from the DeleteObjects reply" }
      end
    end
  end
  return out
end

-- Verbose replies, not Quiet: a key counts as deleted only when the reply
-- says so. (Quiet would save about 25 ms of CPU per 1,000 keys, but a
-- well-formed reply that leaves a key out would then delete its row.)
function Store:delete_many(keys, concurrency)
  local out = self:delete_round(keys, concurrency)
  local wait = M.KEY_BACKOFF
  for attempt = 1, M.KEY_RETRIES do
    local again, at = {}, {}
    for i = 1, #keys do
      if retry_key(out[i]) then
        again[#again + 1] = keys[i]
        at[#at + 1] = i
      end
    end
    if #again == 0 then break end
    local pause = math.min(wait, M.KEY_BACKOFF_MAX)
    pause = pause / 2 + math.random() * pause / 2
    log.debug("delete_retry", { keys = #again, code = out[at[1]].code, attempt = attempt,
                                wait_ms = math.floor(pause * 1000 + 0.5) })
    self.key_retries = (self.key_retries or 0) + #again
    if not sys.sleep(pause) or sys.stopping() then break end
    local res = self:delete_round(again, concurrency)
    for j, i in ipairs(at) do out[i] = res[j] end
    wait = wait * 2
  end
  return out
end

function Store:close() self.client:close() end

return M
