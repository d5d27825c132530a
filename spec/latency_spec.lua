-- Latency hiding in the storage adapter (lib/resclean/storage.lua): how many HEADs go at once
-- adapts (doubles while that raises the rate, holds when the server is the limit, halves on
-- push-back), DeleteObjects parts halve on push-back, and a bucket small next to the backlog
-- is listed instead of HEAD by HEAD. The adaptation against the scripted fake server
-- (spec/support/fake_s3.py: a server slow per request, or one that serialises them); the
-- listing end to end on the real PostgreSQL and RGW, where outcomes must stay as honest as
-- with HEADs.
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local s3h = require("support.s3_helpers")
local storage = require("resclean.storage")

local fake

local function store(extra) return assert(fake.store(extra)) end

local function keys(n, prefix)
  local t = {}
  for i = 1, n do t[i] = (prefix or "k") .. i end
  return t
end

local function listing(list, truncated)
  local parts = { '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
    .. 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>fake</Name>' }
  for _, k in ipairs(list) do parts[#parts + 1] = "<Contents><Key>" .. k .. "</Key><Size>1</Size></Contents>" end
  parts[#parts + 1] = ("<KeyCount>%d</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>%s</IsTruncated>%s"
    .. "</ListBucketResult>"):format(#list, truncated and "true" or "false",
    truncated and "<NextContinuationToken>more</NextContinuationToken>" or "")
  return { status = 200, body = table.concat(parts), headers = { ["Content-Type"] = "application/xml" } }
end

describe("latency hiding", function()
  setup(function() fake = s3h.fake_server() end)
  teardown(function() if fake then fake.stop() end end)
  before_each(function()
    fake.config({})
    fake.clear()
  end)

  describe("HEADs in flight", function()
    it("double while that raises the rate (a slow link), up to the policy's concurrency", function()
      fake.config({ head = { status = 404, delay = 0.05 } })
      local st = store()
      local levels = {}
      for i = 1, 3 do
        local res = st:head_many(keys(200), 64)
        assert.are.equal(false, res[1])
        levels[i] = st.adapt.cur
      end
      st:close()
      assert.are.same({ 32, 64, 64 }, levels)
    end)

    it("hold the last level that helped when more in flight does not raise the rate (the server is the limit)",
      function()
        fake.config({ head = { status = 404, serial = 0.004 } })
        local st = store()
        local levels = {}
        for i = 1, 3 do
          st:head_many(keys(128), 64)
          levels[i] = st.adapt.cur
        end
        st:close()
        -- 16 -> 32 (first measurement), no gain at 32 -> back to 16, and it stays there.
        assert.are.same({ 32, 16, 16 }, levels)
      end)

    it("halve when the server pushes back (503 SlowDown), then grow again by small steps", function()
      fake.config({ head = { status = 503, body = "<Error><Code>SlowDown</Code></Error>" } })
      local st = store({ max_attempts = 2 })
      local res = st:head_many(keys(64), 64)
      assert.are.equal(503, res[1].status) -- a HEAD's 503 has no body: ServiceUnavailable
      assert.are.equal(8, st.adapt.cur)
      fake.config({ head = { status = 404 } })
      st:head_many(keys(64), 64)
      assert.are.equal(8 + storage.STEP, st.adapt.cur)
      st:close()
    end)

    it("never exceed the concurrency asked for", function()
      fake.config({ head = { status = 404, delay = 0.02 } })
      local st = store()
      for _ = 1, 4 do st:head_many(keys(100), 24) end
      assert.is_true(st.adapt.cur <= 24, "level " .. st.adapt.cur)
      st:close()
    end)
  end)

  it("halves the DeleteObjects parts after keys refused with SlowDown, and adds one back per good round", function()
    local ks = keys(800)
    fake.config({ delete_objects = { status = 200, delete_result = { errors = { k1 = "SlowDown" }, times = 1 } } })
    local st = store()
    storage.KEY_BACKOFF = 0.01
    local res = st:delete_many(ks, 64)
    storage.KEY_BACKOFF = 0.2
    assert.are.equal(true, res[1])
    -- The parts of the next calls: {number of requests, keys in each}.
    local function parts()
      fake.clear()
      st:delete_many(ks, 64)
      local n, per = 0, nil
      for _, r in ipairs(fake.log()) do
        if r.kind == "delete_objects" then
          n, per = n + 1, per or #r.keys
          assert.are.equal(per, #r.keys)
        end
      end
      return { n, per }
    end
    fake.config({})
    -- 8 parts of 100 at first; the refused key halved them to 4 (its retry, one key, tells
    -- nothing), so the next round runs as 4 parts of 200, the one after as 5 of 160.
    assert.are.same({ 4, 200 }, parts())
    assert.are.same({ 5, 160 }, parts())
    st:close()
  end)

  describe("verify by listing", function()
    it("lists a bucket small next to the keys still to check, answers from it, and HEADs nothing", function()
      fake.config({ list = listing({ "k2", "k4", "other" }), head = { status = 200 } })
      local st = store()
      local ks = keys(5)
      local res = st:head_many(ks, 16, { expected = 1000 })
      -- Absent from the listing is "unlisted", not false: an object may land after it.
      assert.are.same({ "unlisted", true, "unlisted", true, "unlisted" }, res)
      -- A later batch of the same cycle: the same listing, minus what was deleted.
      st:delete_many({ "k2" }, 16)
      res = st:head_many({ "k2", "k4" }, 16, { expected = 995 })
      assert.are.same({ "unlisted", true }, res)
      st:close()
      assert.are.equal(1, fake.count("list"))
      assert.are.equal(0, fake.count("head"))
    end)

    it("gives up listing a bucket larger than the keys justify, for good, and HEADs instead", function()
      fake.config({ list = listing(keys(1000, "x"), true), head = { status = 404 } })
      local st = store()
      local res = st:head_many(keys(3), 16, { expected = 600 })
      assert.are.same({ false, false, false }, res)
      -- 600 keys to check justify 600 / 250 = 2 pages: the third is never asked for.
      assert.are.equal(2, fake.count("list"))
      assert.are.equal(3, fake.count("head"))
      st:head_many(keys(3), 16, { expected = 600 })
      assert.are.equal(2, fake.count("list"))
      st:close()
    end)

    it("never lists without `expected` (a HEAD that must be fresh), nor for fewer keys than LIST_MIN_KEYS", function()
      fake.config({ list = listing({ "k1" }), head = { status = 404 } })
      local st = store()
      st:head_many(keys(3), 16)
      st:head_many(keys(3), 16, { expected = storage.LIST_MIN_KEYS - 1 })
      st:close()
      assert.are.equal(0, fake.count("list"))
      assert.are.equal(6, fake.count("head"))
    end)

    it("falls back to HEADs when the listing fails", function()
      fake.config({ list = { status = 500, body = "<Error><Code>InternalError</Code></Error>" },
                    head = { status = 200 } })
      local st = store({ max_attempts = 1 })
      local res = st:head_many(keys(2), 16, { expected = 1000 })
      assert.are.same({ true, true }, res)
      assert.are.equal(2, fake.count("head"))
      -- and does not try again in this cycle
      st:head_many(keys(2), 16, { expected = 998 })
      st:close()
      assert.are.equal(1, fake.count("list"))
    end)
  end)

  describe("in a sweep on the real stack", function()
    local conn
    setup(function() conn = fx.connect() end)
    teardown(function() if conn then conn:close() end end)

    it("lists the small bucket once: object_deleted for listed keys, deleted (not_listed) for the rest",
      function()
        local w = fs.world(conn, { stale = 600, with_objects = 150, tag = "listing" })
        local pol = fs.policy("return { batch_size = 200 }")
        local r = fs.run({ "scripts/sweep.lua", "--once", "--policy", pol, "--log-level", "debug" }, fs.env(w.bucket))
        assert.are.equal(0, r.code, r.stderr)
        assert.are.equal(1, #(r.by.verify_by_list or {}), "expected one listing for the cycle")
        assert.is_nil(r.by.verify_by_head)
        local with = {}
        for _, id in ipairs(w.with_objects) do with[id] = true end
        for _, id in ipairs(w.stale) do
          local l = r.outcomes[id]
          assert.is_table(l, "no line for " .. id)
          assert.are.same(with[id] and { "object_deleted" } or { "deleted", "not_listed" }, { l.outcome, l.reason }, id)
        end
        fs.assert_invariants(w, "after the sweep")
        w.client:close()
      end)

    it("HEADs key by key with verify_list = false: object_deleted and record_only", function()
      local w = fs.world(conn, { stale = 600, with_objects = 150, tag = "nolisting" })
      local pol = fs.policy("return { batch_size = 200, verify_list = false }")
      local r = fs.run({ "scripts/sweep.lua", "--once", "--policy", pol, "--log-level", "debug" }, fs.env(w.bucket))
      assert.are.equal(0, r.code, r.stderr)
      assert.is_nil(r.by.verify_by_list)
      local with = {}
      for _, id in ipairs(w.with_objects) do with[id] = true end
      for _, id in ipairs(w.stale) do
        assert.are.equal(with[id] and "object_deleted" or "record_only", r.outcomes[id].outcome, id)
      end
      fs.assert_invariants(w, "after the sweep")
      w.client:close()
    end)
  end)
end)
