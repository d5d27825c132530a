-- Back-pressure from S3, against the scripted fake server (spec/support/fake_s3.py): a
-- real server throttles only under real overload. Per-key InternalError and SlowDown in a
-- DeleteObjects reply are retried within the call for those keys only, with backoff and
-- jitter; a key that still fails is failed and its row kept (the sweep runs on the real
-- PostgreSQL).
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local s3h = require("support.s3_helpers")
local storage = require("resclean.storage")

local fake

local function store(extra) return assert(fake.store(extra)) end

-- The DeleteObjects requests the fake received: list of {keys = set, n = count, t = time,
-- quiet = Quiet asked}.
local function delete_requests()
  local out = {}
  for _, r in ipairs(fake.log()) do
    if r.kind == "delete_objects" then
      local set = {}
      for _, k in ipairs(r.keys or {}) do set[k] = true end
      out[#out + 1] = { keys = set, n = #(r.keys or {}), t = r.t, quiet = r.quiet }
    end
  end
  return out
end

-- How many DeleteObjects requests carried key.
local function carried(reqs, key)
  local n = 0
  for _, r in ipairs(reqs) do if r.keys[key] then n = n + 1 end end
  return n
end

describe("back-pressure", function()
  local saved = {}
  setup(function()
    fake = s3h.fake_server()
    for _, k in ipairs({ "KEY_BACKOFF", "KEY_RETRIES" }) do saved[k] = storage[k] end
  end)
  teardown(function()
    if fake then fake.stop() end
  end)
  before_each(function()
    for k, v in pairs(saved) do storage[k] = v end
    storage.KEY_BACKOFF = 0.05
    fake.config({})
    fake.clear()
  end)

  describe("per key in a DeleteObjects reply", function()
    local keys = { "k1", "k2", "k3", "k4", "k5", "k6" }

    -- The sweep sends its deletes with delete_start and ends them with
    -- finish(): the same retries as delete_many.
    local calls = {
      delete_many = function(st) return st:delete_many(keys, 4) end,
      delete_start = function(st)
        local d = st:delete_start(keys, 4)
        d:pump()
        local res = d:finish()
        -- Its client went back to the store for the next delete_start.
        assert.are.same({ true }, st:delete_start({ "k7" }, 4):finish())
        return res
      end,
    }
    for _, how in ipairs({ "delete_many", "delete_start" }) do
      it("retries only the keys refused with InternalError or SlowDown, with a growing backoff, in the same call ("
        .. how .. ")", function()
        fake.config({ delete_objects = { status = 200,
          delete_result = { errors = { k2 = "InternalError", k5 = "SlowDown" }, times = 2 } } })
        local st = store()
        local res = calls[how](st)
        st:close()
        for i, k in ipairs(keys) do assert.are.equal(true, res[i], k .. ": " .. tostring(res[i])) end
        local reqs = delete_requests()
        assert.are.equal(how == "delete_start" and 4 or 3, #reqs)
        assert.are.equal(6, reqs[1].n)
        for i = 2, 3 do
          assert.are.equal(2, reqs[i].n, "retry " .. (i - 1) .. " sent other keys")
          assert.is_true(reqs[i].keys.k2 and reqs[i].keys.k5)
        end
        -- Equal jitter: each wait is between half and all of 0.05 s, then of 0.1 s.
        assert.is_true(reqs[2].t - reqs[1].t >= 0.025, "first retry after " .. (reqs[2].t - reqs[1].t))
        assert.is_true(reqs[3].t - reqs[2].t >= 0.05, "second retry after " .. (reqs[3].t - reqs[2].t))
      end)
    end

    it("gives a key that keeps failing its last error after KEY_RETRIES more attempts, the others deleted once",
      function()
        storage.KEY_RETRIES = 3
        fake.config({ delete_objects = { status = 200, delete_result = { errors = { k3 = "SlowDown" } } } })
        local st = store()
        local res = st:delete_many(keys, 4)
        st:close()
        assert.is_table(res[3])
        assert.are.equal("SlowDown", res[3].code)
        assert.are.equal("item", require("resclean.errors").classify(res[3]))
        local reqs = delete_requests()
        assert.are.equal(1 + 3, carried(reqs, "k3"))
        for i, k in ipairs(keys) do
          if k ~= "k3" then
            assert.are.equal(true, res[i], k)
            assert.are.equal(1, carried(reqs, k), k .. " was sent again")
          end
        end
      end)

    it("does not retry a key refused for its own reason (AccessDenied, NoSuchBucket per key)", function()
      fake.config({ delete_objects = { status = 200,
        delete_result = { errors = { k1 = "AccessDenied", k2 = "NoSuchBucket" } } } })
      local st = store()
      local res = st:delete_many(keys, 4)
      st:close()
      assert.are.equal("AccessDenied", res[1].code)
      assert.are.equal("NoSuchBucket", res[2].code)
      assert.are.equal(1, #delete_requests())
    end)

    it("leaves a refused request (503 for all of it) to the transport's retries, not once more per key", function()
      fake.config({ delete_objects = { status = 503,
        body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>" } })
      local st = store({ max_attempts = 2 })
      local res = st:delete_many(keys, 4)
      st:close()
      for i = 1, #keys do
        assert.are.equal("SlowDown", res[i].code)
        assert.are.equal("transient", require("resclean.errors").classify(res[i]))
      end
      assert.are.equal(2, #delete_requests())
    end)
  end)

  describe("Retry-After", function()
    local function client(extra) return assert(fake.client(extra)) end
    -- Seconds between the first two requests the fake received.
    local function gap()
      local log = fake.log()
      assert.is_true(#log >= 2, "no retry was sent")
      return log[2].t - log[1].t
    end

    for _, status in ipairs({ 503, 429 }) do
      it("is honoured on a " .. status .. ": the retry waits the seconds the server asked for", function()
        fake.script({ { status = status, headers = { ["Retry-After"] = "1" },
                        body = "<Error><Code>SlowDown</Code></Error>" }, { status = 404 } })
        local c = client()
        local res = assert(c:head("k"))
        c:close()
        assert.is_false(res.exists)
        local g = gap()
        -- Without it the backoff would be 5-10 ms (retry_base_seconds 0.01).
        assert.is_true(g >= 0.95, ("retried after %.3f s"):format(g))
        assert.is_true(g < 3, ("retried after %.3f s"):format(g))
      end)
    end

    it("is honoured as an HTTP date too", function()
      local when = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 2)
      fake.script({ { status = 503, headers = { ["Retry-After"] = when } }, { status = 404 } })
      local c = client()
      assert(c:head("k"))
      c:close()
      assert.is_true(gap() >= 0.9, ("retried after %.3f s"):format(gap()))
    end)

    it("gives up at once, transient, when the wait asked for is beyond retry_max_seconds", function()
      fake.script({ { status = 503, headers = { ["Retry-After"] = "120" } }, { status = 404 } })
      local c = client({ retry_max_seconds = 2 })
      local t0 = require("resclean.sys").monotime()
      local res, err = c:head("k")
      local took = require("resclean.sys").monotime() - t0
      c:close()
      assert.is_nil(res)
      assert.are.equal(503, err.status)
      assert.are.equal("transient", require("resclean.errors").classify(err))
      assert.are.equal(1, #fake.log())
      assert.is_true(took < 1.5, ("took %.3f s"):format(took))
    end)

    it("applies to a DeleteObjects refused with 503 SlowDown as a whole", function()
      fake.script({ { status = 503, headers = { ["Retry-After"] = "1" },
                      body = "<Error><Code>SlowDown</Code></Error>" }, { status = 200, echo = true } })
      local st = store()
      local res = st:delete_many({ "a", "b" }, 4)
      st:close()
      assert.are.same({ true, true }, res)
      assert.is_true(gap() >= 0.95, ("retried after %.3f s"):format(gap()))
    end)
  end)

  describe("in a sweep (real PostgreSQL, the fake S3)", function()
    local conn
    setup(function() conn = fx.connect() end)
    teardown(function() if conn then conn:close() end end)

    local function sweep(policy)
      local argv = { "scripts/sweep.lua", "--once" }
      if policy then
        argv[#argv + 1] = "--policy"
        argv[#argv + 1] = fs.policy(policy)
      end
      return fs.run(argv, fs.env("fake-bucket", { AWS_ENDPOINT_URL_S3 = fake.endpoint }))
    end

    it("asks for Quiet replies with quiet_deletes = true: a key listed as an error keeps its row, the rest are deleted",
      function()
      fx.reset(conn)
      local ids = fx.rows(conn, 4)
      fake.config({ delete_objects = { status = 200, delete_result = { errors = { [ids[2]] = "AccessDenied" } } } })
      local r = sweep("return { quiet_deletes = true }")
      assert.are.equal(1, r.code, r.stderr)
      local reqs = delete_requests()
      assert.are.equal(1, #reqs)
      assert.is_true(reqs[1].quiet)
      assert.are.same({ "failed", "AccessDenied" }, { r.outcomes[ids[2]].outcome, r.outcomes[ids[2]].reason })
      local rows = fx.existing_rows(conn, ids)
      assert.is_true(rows[ids[2]])
      for _, i in ipairs({ 1, 3, 4 }) do
        assert.are.equal("record_only", r.outcomes[ids[i]].outcome)
        assert.is_nil(rows[ids[i]])
      end
    end)

    it("asks for verbose replies by default: a key the reply leaves out (an Error stripped) keeps its row (NotInReply)",
      function()
      fx.reset(conn)
      local ids = fx.rows(conn, 3)
      fake.config({ delete_objects = { status = 200, delete_result = { omit = { ids[3] } } } })
      local r = sweep()
      assert.are.equal(1, r.code, r.stderr)
      local reqs = delete_requests()
      assert.are.equal(1, #reqs)
      assert.is_false(reqs[1].quiet)
      assert.are.same({ "failed", "NotInReply" }, { r.outcomes[ids[3]].outcome, r.outcomes[ids[3]].reason })
      assert.is_true(fx.existing_rows(conn, ids)[ids[3]])
      assert.are.equal("record_only", r.outcomes[ids[1]].outcome)
    end)

    it("keeps the row of a key that is still refused after the retries and deletes the rest (exit 1)", function()
      fx.reset(conn)
      local ids = fx.rows(conn, 5)
      fake.config({ delete_objects = { status = 200, delete_result = { errors = { [ids[3]] = "SlowDown" } } } })
      local r = sweep()
      assert.are.equal(1, r.code, r.stderr)
      assert.are.equal("failed", r.outcomes[ids[3]].outcome)
      assert.are.equal("SlowDown", r.outcomes[ids[3]].reason)
      local rows = fx.existing_rows(conn, ids)
      assert.is_true(rows[ids[3]], "the row of the refused key is gone")
      for i, id in ipairs(ids) do
        if i ~= 3 then
          assert.are.equal("record_only", r.outcomes[id].outcome)
          assert.is_nil(rows[id], "row " .. id .. " is still there")
        end
      end
      assert.are.equal(1 + storage.KEY_RETRIES, carried(delete_requests(), ids[3]))
    end)

    it("ends with every row deleted and exit 0 when the refused keys go through on a retry", function()
      fx.reset(conn)
      local ids = fx.rows(conn, 5)
      fake.config({ delete_objects = { status = 200,
        delete_result = { errors = { [ids[1]] = "InternalError", [ids[4]] = "SlowDown" }, times = 1 } } })
      local r = sweep()
      assert.are.equal(0, r.code, r.stderr)
      for _, id in ipairs(ids) do assert.are.equal("record_only", r.outcomes[id].outcome) end
      assert.are.equal(0, fx.count(conn))
      local reqs = delete_requests()
      assert.are.equal(2, #reqs)
      assert.are.equal(2, reqs[2].n)
    end)
  end)
end)
