-- The store interface (resclean-lua(7), STORE) as one contract, held against
-- every store: the S3 store (resclean.storage) on the stack's RGW, and the
-- in-process fake (spec/support/fake_store.lua) that unit specs use. The
-- fake's half needs no stack; the S3 half is skipped, saying why, without
-- one (AWS_ENDPOINT_URL_S3 and the credentials unset).
local errors = require("resclean.errors")
local fake_store = require("support.fake_store")

-- A harness per store: store() a store on an empty place, put(store, key)
-- an object in it, broken() one that cannot reach its bucket (config),
-- unreachable() one that cannot reach the storage (transient).
local harnesses = {}

harnesses[#harnesses + 1] = {
  name = "the fake store",
  store = function() return fake_store.new() end,
  put = function(store, key) store:put(key) end,
  broken = function()
    return fake_store.new({}, { check_err = { kind = "fake", class = "config", code = "NoSuchBucket",
                                              message = "no such bucket" } })
  end,
  unreachable = function()
    return fake_store.new({}, { check_err = { kind = "fake", class = "transient", code = "connection",
                                              message = "connection refused" } })
  end,
}

local S3_VARS = { "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY" }
local missing = {}
for _, name in ipairs(S3_VARS) do
  if (os.getenv(name) or "") == "" then missing[#missing + 1] = name end
end
if #missing > 0 then
  print(("\n  store contract: the S3 store's half skipped: %s not set (no stack; make specs runs it)")
    :format(table.concat(missing, ", ")))
else
  local storage = require("resclean.storage")
  local h = require("support.s3_helpers")
  local bucket, client
  harnesses[#harnesses + 1] = {
    name = "the S3 store",
    setup = function()
      bucket = h.unique_bucket("contract")
      client = assert(h.client(bucket))
      assert(client:create_bucket())
    end,
    teardown = function()
      if not client then return end
      local page = client:list({})
      local keys = {}
      for i, e in ipairs(page and page.keys or {}) do keys[i] = e.key end
      if #keys > 0 then client:delete_many(keys) end
      client:delete_bucket()
      client:close()
    end,
    store = function() return assert(storage.new(h.options(bucket))) end,
    put = function(_, key) assert(client:put(key, "x")) end,
    broken = function() return assert(storage.new(h.options(h.unique_bucket("contract-none")))) end,
    unreachable = function()
      return assert(storage.new(h.options(bucket, { endpoint = "http://127.0.0.1:1", max_attempts = 1 })))
    end,
  }
end

-- Each case gets a prefix of its own, so cases do not see each other's keys.
local serial = 0
local function prefix()
  serial = serial + 1
  return ("contract/%d/"):format(serial)
end

for _, hs in ipairs(harnesses) do
  describe("the store contract: " .. hs.name, function()
    local store

    lazy_setup(function()
      if hs.setup then hs.setup() end
    end)
    lazy_teardown(function()
      if hs.teardown then hs.teardown() end
    end)
    before_each(function() store = hs.store() end)
    after_each(function() store:close() end)

    it("head_many: true or false per key, in the order given", function()
      local p = prefix()
      hs.put(store, p .. "a")
      hs.put(store, p .. "c")
      assert.are.same({ true, false, true, false }, store:head_many({ p .. "a", p .. "b", p .. "c", p .. "d" }, 4))
      assert.are.same({}, store:head_many({}, 4))
    end)

    it("head: exists true or false; a missing object is not an error", function()
      local p = prefix()
      hs.put(store, p .. "here")
      assert.is_true(assert(store:head(p .. "here")).exists)
      assert.is_false(assert(store:head(p .. "gone")).exists)
    end)

    it("head and head_many: an empty key is that key's error, of class item", function()
      local ok, err = store:head("")
      assert.is_nil(ok)
      assert.are.equal("item", (store:classify(err)))
      local res = store:head_many({ "" }, 1)
      assert.are.equal("table", type(res[1]))
      assert.are.equal("item", (store:classify(res[1])))
    end)

    it("delete_many: true per key deleted, a missing key too; the objects are gone", function()
      local p = prefix()
      hs.put(store, p .. "a")
      hs.put(store, p .. "b")
      assert.are.same({ true, true, true }, store:delete_many({ p .. "a", p .. "missing", p .. "b" }, 2))
      assert.are.same({ false, false }, store:head_many({ p .. "a", p .. "b" }, 2))
    end)

    it("delete_many: a key refused is that key's error (item), the others deleted", function()
      local p = prefix()
      hs.put(store, p .. "a")
      local res = store:delete_many({ p .. "a", "" }, 2)
      assert.is_true(res[1])
      assert.are.equal("table", type(res[2]))
      assert.are.equal("item", (store:classify(res[2])))
      assert.is_false(store:head_many({ p .. "a" }, 1)[1])
    end)

    it("delete_start, where a store has it: pump, then finish gives what delete_many would", function()
      if not store.delete_start then return end
      local p = prefix()
      hs.put(store, p .. "a")
      hs.put(store, p .. "b")
      local d = store:delete_start({ p .. "a", p .. "b", p .. "missing" }, 2, { quiet = false })
      d:pump()
      assert.are.same({ true, true, true }, d:finish())
      assert.are.same({ false, false }, store:head_many({ p .. "a", p .. "b" }, 2))
    end)

    it("list: one page in key order, truncated with a token, the rest after it", function()
      local p = prefix()
      for _, k in ipairs({ "c", "a", "b" }) do hs.put(store, p .. k) end
      local first = assert(store:list({ prefix = p, max = 2 }))
      assert.are.same({ p .. "a", p .. "b" }, { first.keys[1].key, first.keys[2].key })
      assert.are.equal(2, #first.keys)
      assert.is_true(first.truncated)
      assert.is_string(first.next_continuation)
      local rest = assert(store:list({ prefix = p, continuation = first.next_continuation }))
      assert.are.equal(1, #rest.keys)
      assert.are.equal(p .. "c", rest.keys[1].key)
      assert.is_false(rest.truncated)
      assert.are.same({}, assert(store:list({ prefix = prefix() })).keys)
    end)

    it("check: true for a reachable bucket", function()
      assert.is_true(store:check())
    end)

    it("check and classify: a missing bucket is configuration (exit 2), as resclean.errors says", function()
      local broken = hs.broken()
      local ok, err = broken:check()
      broken:close()
      assert.is_nil(ok)
      assert.are.equal("config", (broken:classify(err)))
      assert.are.equal("config", (errors.classify(err)))
      assert.are.equal(2, errors.exit_code(err))
      assert.is_false(errors.retryable(err))
    end)

    it("check and classify: storage out of reach is transient (exit 3), retryable", function()
      local far = hs.unreachable()
      local ok, err = far:check()
      far:close()
      assert.is_nil(ok)
      assert.are.equal("transient", (far:classify(err)))
      assert.are.equal("transient", (errors.classify(err)))
      assert.are.equal(3, errors.exit_code(err))
      assert.is_true(errors.retryable(err))
    end)

    it("close: twice is fine", function()
      store:close()
    end)
  end)
end
