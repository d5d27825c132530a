-- An in-process store: the interface resclean.storage implements for S3
-- (head_many, delete_many, delete_start, head, list, check, classify, close;
-- resclean-lua(7), STORE), over a table of objects. For unit specs (no
-- stack), and held to the same contract as the S3 store by
-- spec/store_contract_spec.lua.
--   local store = fake_store.new({ "k1", "k2" }, opts)
-- opts.fail[key]: that key's delete error; opts.fail_all: every key's;
-- opts.check_err: what check() fails with; opts.delete_start = false: no
-- delete_start (the sweep then deletes at once); opts.trace (a list): notes
-- "start N" and "finish N" of each delete_start there.
-- store.objects[key] (true while the object exists), store.deleted (keys in
-- the order deleted), store.starts (delete_start calls) are for assertions.
local M = {}

local Store = {}
Store.__index = Store

-- A key refused before any request, as the S3 store refuses an empty key.
local function refused(op, key)
  return { kind = "fake", class = "item", code = "EmptyKey", op = op, key = key,
           message = "an empty key is refused before any request" }
end

function M.new(keys, opts)
  opts = opts or {}
  local s = setmetatable({ objects = {}, fail = opts.fail or {}, fail_all = opts.fail_all, check_err = opts.check_err,
                           trace = opts.trace, deleted = {}, starts = 0 }, Store)
  for _, k in ipairs(keys or {}) do s.objects[k] = true end
  if opts.delete_start == false then s.delete_start = false end
  return s
end

function Store:put(key) self.objects[key] = true end

function Store:head_many(keys)
  local out = {}
  for i, k in ipairs(keys) do
    if k == "" then out[i] = refused("head", k) else out[i] = self.objects[k] == true end
  end
  return out
end

function Store:head(key)
  if key == "" then return nil, refused("head", key) end
  return { exists = self.objects[key] == true, size = self.objects[key] and 0 or nil }
end

function Store:delete_many(keys)
  local out = {}
  for i, k in ipairs(keys) do
    local e = self.fail_all or self.fail[k]
    if k == "" then
      out[i] = refused("delete_many", k)
    elseif e then
      out[i] = e
    else
      self.objects[k] = nil
      self.deleted[#self.deleted + 1] = k
      out[i] = true
    end
  end
  return out
end

-- The deletes happen at finish(), as a real one's answers are only read there.
function Store:delete_start(keys, concurrency, opts)
  self.starts = self.starts + 1
  local n, store, trace = self.starts, self, self.trace
  if trace then trace[#trace + 1] = "start " .. n end
  local done = false
  return { pump = function() return done end,
           finish = function()
             if trace then trace[#trace + 1] = "finish " .. n end
             done = true
             return store:delete_many(keys, concurrency, opts)
           end }
end

-- One page of the keys in order: opts.prefix, opts.start_after, opts.max
-- (1,000), opts.continuation (the next_continuation of the page before).
function Store:list(opts)
  opts = opts or {}
  local all = {}
  for k in pairs(self.objects) do
    if k:sub(1, #(opts.prefix or "")) == (opts.prefix or "") then all[#all + 1] = k end
  end
  table.sort(all)
  local after = opts.continuation or opts.start_after
  local max = opts.max or 1000
  local page = { keys = {}, prefixes = {}, truncated = false }
  for _, k in ipairs(all) do
    if not after or k > after then
      if #page.keys == max then
        page.truncated = true
        page.next_continuation = page.keys[#page.keys].key
        break
      end
      page.keys[#page.keys + 1] = { key = k, size = 0 }
    end
  end
  return page
end

function Store:check()
  if self.check_err then return nil, self.check_err end
  return true
end

-- Its errors say their class (resclean.errors honours err.class).
function Store.classify(_, err)
  if type(err) ~= "table" then return "config" end
  return err.class or "config", err.hint
end

function Store:close() self.closed = true end

return M
