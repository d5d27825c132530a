-- The sweep's view of object storage: a thin adapter over resclean.s3 that
-- answers per key, in the order of the keys given:
--   head_many(keys, n) -> { true | false | err, ... }  (exists?)
--   delete_many(keys)  -> { true | err, ... }
--   check()            -> true | nil, err   (bucket reachable with these credentials)
-- Anything else (fakes in unit specs) with the same three methods will do.
local s3 = require("resclean.s3")

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

function Store:delete_many(keys)
  local res, err = self.client:delete_many(keys)
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

function Store:close() self.client:close() end

return M
