-- The sweep and cancel, end to end: scripts/sweep.lua and scripts/cancel.lua
-- run as separate resclean processes against the harness's PostgreSQL and
-- Ceph RGW. One `it` per acceptance criterion of the sweep issue.
local fx = require("support.fixtures")
local h = require("support.helpers")
local sys = require("resclean.sys")

local conn, client, bucket

local function env(extra)
  return h.script_env(bucket, extra)
end

local function sweep(args, extra_env)
  return h.run_script({ "scripts/sweep.lua", table.unpack(args or { "--once" }) }, env(extra_env))
end

local function cancel(ids, extra_env, flags)
  local argv = { "scripts/cancel.lua", table.unpack(flags or {}) }
  for _, id in ipairs(ids) do argv[#argv + 1] = id end
  return h.run_script(argv, env(extra_env))
end

local function policy_file(text)
  return h.tmpfile(text, "policy.lua")
end

-- Four `sweep --once` processes with the policy text, started at once (killed if still
-- running when the spec ends).
local function four_sweepers(policy)
  local pol = policy_file(policy)
  local procs = {}
  for i = 1, 4 do procs[i] = h.spawn({ "run", "scripts/sweep.lua", "--once", "--policy", pol }, env()) end
  finally(function() for _, p in ipairs(procs) do if p.alive() then p.kill("KILL") end end end)
  return procs
end

local function all_in(set, ids)
  for _, id in ipairs(ids) do
    if not set[id] then return false, id end
  end
  return true
end

local function none_in(set, ids)
  for _, id in ipairs(ids) do
    if set[id] then return false, id end
  end
  return true
end

describe("the sweep", function()
  setup(function() conn = fx.connect() end)
  before_each(function() bucket, client = fx.fresh_bucket(conn, "sweep") end)
  teardown(function() if conn then conn:close() end end)

  it("removes stale pending uploads, row and object, with one log line each", function()
    local with_obj = fx.rows(conn, 6)
    local without = fx.rows(conn, 4, { age_s = 3 * 86400 })
    fx.objects(client, with_obj)
    local r = sweep()
    assert.are.equal(0, r.code, r.stderr)
    for _, id in ipairs(with_obj) do
      local l = r.outcomes[id]
      assert.are.equal("object_deleted", l.outcome)
      assert.are.equal(id, l.key)
      assert.is_true(l.age_s >= 2 * 86400 and l.age_s < 2 * 86400 + 60, "age_s " .. tostring(l.age_s))
      assert.are.equal("info", l.level)
      assert.is_string(l.run_id)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT", l.ts)
    end
    for _, id in ipairs(without) do
      assert.are.equal("record_only", r.outcomes[id].outcome)
      assert.is_true(r.outcomes[id].age_s >= 3 * 86400)
    end
    assert.are.equal(0, fx.count(conn))
    assert.are.equal(0, fx.count_set(fx.existing_objects(client, with_obj)))
  end)

  it("never touches fresh, confirmed, ephemeral, dynamic or referenced resources", function()
    local stale = fx.rows(conn, 5)
    local fresh = fx.rows(conn, 2, { age_s = 3600 })
    local confirmed = fx.rows(conn, 2, { uploaded = true, age_s = 30 * 86400 })
    local ephemeral = fx.rows(conn, 2, { type = "EPHEMERAL_WORD_LIST", content = '{"lines":["a"]}' })
    local dynamic = fx.rows(conn, 1, { type = "DYNAMIC_WORD_LIST", age_s = 10 * 86400 })
    local referenced = fx.rows(conn, 2)
    for _, id in ipairs(referenced) do fx.reference(conn, id) end
    local controls = {}
    for _, l in ipairs({ fresh, confirmed, ephemeral, dynamic, referenced }) do
      for _, id in ipairs(l) do controls[#controls + 1] = id end
    end
    fx.objects(client, controls)
    fx.objects(client, stale)

    local r = sweep()
    assert.are.equal(0, r.code, r.stderr)
    assert.is_true(none_in(fx.existing_rows(conn, stale), stale))
    assert.is_true(all_in(fx.existing_rows(conn, controls), controls))
    assert.is_true(all_in(fx.existing_objects(client, controls), controls))
    for _, id in ipairs(referenced) do
      assert.are.equal("skipped", r.outcomes[id].outcome)
      assert.are.equal("referenced", r.outcomes[id].reason)
    end
    for _, l in ipairs({ fresh, confirmed, ephemeral, dynamic }) do
      for _, id in ipairs(l) do assert.is_nil(r.outcomes[id], "logged a control: " .. id) end
    end
    for _, id in ipairs(stale) do assert.are.equal("object_deleted", r.outcomes[id].outcome) end
  end)

  it("is idempotent: a second run cleans nothing, and dry runs change nothing", function()
    local stale = fx.rows(conn, 5)
    fx.objects(client, { stale[1], stale[2] })

    local d1 = sweep({ "--once", "--dry-run" })
    local d2 = sweep({ "--once", "--dry-run" })
    assert.are.equal(0, d1.code, d1.stderr)
    assert.are.equal(5, fx.count(conn))
    assert.are.equal(2, fx.count_set(fx.existing_objects(client, stale)))
    for _, d in ipairs({ d1, d2 }) do
      assert.are.equal(5, d.summary.total)
      assert.are.equal(2, d.summary.object_deleted)
      assert.are.equal(3, d.summary.record_only)
      for _, l in ipairs(d.by.resource) do assert.is_true(l.dry_run) end
    end

    local r1 = sweep()
    assert.are.equal(5, r1.summary.total)
    local r2 = sweep()
    assert.are.equal(0, r2.code)
    assert.are.equal(0, r2.summary.total)
    assert.is_nil(r2.by.resource)
  end)

  it("shares the work of four concurrent sweepers without waiting: each row cleaned exactly once", function()
    local ids = fx.rows(conn, 3000)
    local with_obj = { table.unpack(ids, 1, 300) }
    fx.objects(client, with_obj)
    -- A 1 ms lock timeout turns any wait on another sweeper's lock into a failure.
    local procs = four_sweepers('return { batch_size = 100, lock_timeout = 0.001 }')
    local seen, total = {}, 0
    for _, p in ipairs(procs) do
      assert.are.equal(0, p.wait(120), p.stderr())
      local _, by = h.parse_log(p.stdout())
      for _, l in ipairs(by.resource or {}) do
        assert.is_nil(seen[l.resource_id], "cleaned twice: " .. l.resource_id)
        -- deleted (not_listed): a key not in verify_list's listing of the small bucket
        assert.is_true(l.outcome == "object_deleted" or l.outcome == "record_only"
          or (l.outcome == "deleted" and l.reason == "not_listed"), l.outcome)
        seen[l.resource_id] = true
        total = total + 1
      end
    end
    assert.are.equal(3000, total)
    assert.are.equal(0, fx.count(conn))
    assert.are.equal(0, fx.count_set(fx.existing_objects(client, with_obj)))
  end)

  it("keeps every resource confirmed before a sweeper locked it, racing four sweepers", function()
    local ids = fx.rows(conn, 2000)
    local with_obj = { table.unpack(ids, 1, 400) }
    fx.objects(client, with_obj)
    local procs = four_sweepers('return { batch_size = 50 }')
    -- The application confirms random stale uploads while the sweepers run.
    local confirmed = {}
    local racer = fx.connect()
    local deadline = sys.monotime() + 120
    local function running()
      for _, p in ipairs(procs) do if p.alive() then return true end end
      return false
    end
    while running() and sys.monotime() < deadline do
      local id = with_obj[math.random(#with_obj)]
      local res = fx.check(racer:query(
        "UPDATE attack_resource_files SET is_uploaded = true, updated_at = now() WHERE id = $1"
        .. " RETURNING id::text AS id", id))
      if res[1] then confirmed[res[1].id] = true end
    end
    racer:close()
    for _, p in ipairs(procs) do assert.is_true(p.wait(30) <= 1, p.stderr()) end
    local list = {}
    for id in pairs(confirmed) do list[#list + 1] = id end
    assert.is_true(#list > 0, "the racer confirmed nothing")
    assert.is_true(all_in(fx.existing_rows(conn, list), list))
    assert.is_true(all_in(fx.existing_objects(client, list), list))
    -- Everything not confirmed is gone.
    assert.are.equal(#list, fx.count(conn))
  end)

  it("keeps the row of an object it cannot delete, reports it failed, cleans the rest, and retries next run", function()
    local ids = fx.rows(conn, 4)
    fx.objects(client, ids)
    local denied = ids[2]
    fx.check(client:put_bucket_policy(([[{"Version":"2012-10-17","Statement":[{"Effect":"Deny",
      "Principal":{"AWS":["*"]},"Action":["s3:DeleteObject"],"Resource":["arn:aws:s3:::%s/%s"]}]}]])
      :format(bucket, denied)))
    local r = sweep()
    assert.are.equal(1, r.code, r.stderr)
    assert.are.equal("failed", r.outcomes[denied].outcome)
    assert.are.equal("AccessDenied", r.outcomes[denied].reason)
    assert.are.equal("warn", r.outcomes[denied].level)
    assert.is_true(fx.existing_rows(conn, { denied })[denied])
    assert.is_true(fx.existing_objects(client, { denied })[denied])
    assert.are.equal(1, fx.count(conn))

    local again = sweep()
    assert.are.equal(1, again.code)
    assert.are.equal("failed", again.outcomes[denied].outcome)

    fx.check(client:delete_bucket_policy())
    local last = sweep()
    assert.are.equal(0, last.code, last.stderr)
    assert.are.equal("object_deleted", last.outcomes[denied].outcome)
    assert.are.equal(0, fx.count(conn))
  end)

  it("sweeps at once and again after the interval, and stops at once on SIGTERM while sleeping", function()
    fx.rows(conn, 3)
    local pol = policy_file('return { interval = 2, jitter = 0 }')
    local p = h.spawn({ "run", "scripts/sweep.lua", "--policy", pol }, env())
    finally(function() if p.alive() then p.kill("KILL") end end)
    local function sweeps()
      local _, by = h.parse_log(p.stdout())
      return by.sweep or {}
    end
    h.wait_for(function() return #sweeps() >= 1 end, 20, "the first cycle")
    local t1 = sys.monotime()
    fx.rows(conn, 2)
    h.wait_for(function() return #sweeps() >= 2 end, 20, "the second cycle")
    local gap = sys.monotime() - t1
    assert.is_true(gap > 1 and gap < 6, "second cycle after " .. gap .. " s")
    local s = sweeps()
    assert.are.equal(3, s[1].total)
    assert.are.equal(2, s[2].total)
    assert.are_not.equal(s[1].run_id, s[2].run_id)
    local t0 = sys.monotime()
    p.kill("TERM")
    assert.are.equal(0, p.wait(5))
    assert.is_true(sys.monotime() - t0 < 1.5)
  end)

  it("finishes the batch in hand on SIGTERM, logs the summary and exits 0", function()
    local ids = fx.rows(conn, 3000)
    fx.objects(client, { table.unpack(ids, 1, 100) })
    local pol = policy_file('return { batch_size = 50 }')
    local p = h.spawn({ "run", "scripts/sweep.lua", "--policy", pol }, env())
    finally(function() if p.alive() then p.kill("KILL") end end)
    h.wait_for(function() return p.stdout():find('"event":"resource"', 1, true) end, 30, "the first batch")
    p.kill("TERM")
    assert.are.equal(0, p.wait(30), p.stderr())
    local _, by = h.parse_log(p.stdout())
    local s = by.sweep[#by.sweep]
    assert.are.equal("SIGTERM", s.stopped)
    assert.is_true(s.total < 3000, "the whole backlog was swept before the signal")
    assert.are.equal(0, s.total % 50, "a batch was cut short: " .. s.total)
    assert.are.equal(3000 - s.total, fx.count(conn))
  end)

  it("applies a policy edit at the next cycle, each cycle on a new database session", function()
    fx.rows(conn, 2, { age_s = 7200 }) -- 2 h old: not stale under the default 24 h
    local path = policy_file('return { interval = 1, jitter = 0 }')
    local p = h.spawn({ "run", "scripts/sweep.lua", "--policy", path }, env())
    finally(function() if p.alive() then p.kill("KILL") end end)
    local function sweeps()
      local _, by = h.parse_log(p.stdout())
      return by.sweep or {}
    end
    h.wait_for(function() return #sweeps() >= 1 end, 20, "the first cycle")
    h.write(path, 'return { interval = 1, jitter = 0, max_age = "1h" }')
    local n = h.wait_for(function()
      for i, s in ipairs(sweeps()) do if s.total == 2 then return i end end
    end, 20, "a cycle with the edited policy")
    p.kill("TERM")
    assert.are.equal(0, p.wait(10))
    local s = sweeps()
    assert.are.equal(0, s[1].total)
    local pids = {}
    for i = 1, n do
      assert.is_nil(pids[s[i].db_pid], "a cycle reused a database session")
      pids[s[i].db_pid] = true
    end
    assert.are.equal(0, fx.count(conn))
  end)

  it("adds up in its summary line: counts by outcome, eligible, duration and rate", function()
    local ids = fx.rows(conn, 12)
    fx.objects(client, { ids[1], ids[2], ids[3] })
    fx.reference(conn, ids[4])
    local r = sweep({ "--once", "--policy", policy_file("return { batch_size = 5 }") })
    local s = r.summary
    assert.are.equal("sweep", s.event)
    assert.are.equal(12, s.eligible)
    assert.are.equal(3, s.object_deleted)
    assert.are.equal(8, s.record_only)
    assert.are.equal(1, s.skipped)
    assert.are.equal(0, s.failed)
    assert.are.equal(12, s.total)
    assert.are.equal(#r.by.resource, s.total)
    assert.is_true(s.duration_ms > 0)
    assert.is_true(math.abs(s.rate - s.total / (s.duration_ms / 1000)) <= 0.1 + s.rate * 0.01)
  end)

  it("sweeps every pending row when the policy has no type column", function()
    local ids = fx.rows(conn, 2, { type = "EPHEMERAL_WORD_LIST" })
    local r = sweep({ "--once", "--policy", policy_file("return { type_column = false }") })
    assert.are.equal(0, r.code, r.stderr)
    for _, id in ipairs(ids) do assert.are.equal("record_only", r.outcomes[id].outcome) end
    assert.are.equal(0, fx.count(conn))
  end)

  it("reports deleted (existence not checked) with verify off", function()
    local ids = fx.rows(conn, 3)
    fx.objects(client, { ids[1] })
    local r = sweep({ "--once", "--policy", policy_file("return { verify = false }") })
    assert.are.equal(0, r.code, r.stderr)
    for _, id in ipairs(ids) do assert.are.equal("deleted", r.outcomes[id].outcome) end
    assert.are.equal(0, fx.count(conn))
    assert.are.equal(0, fx.count_set(fx.existing_objects(client, ids)))
  end)
end)

describe("cancel", function()
  setup(function() conn = fx.connect() end)
  before_each(function() bucket, client = fx.fresh_bucket(conn, "cancel") end)
  teardown(function() if conn then conn:close() end end)

  it("cleans a fresh pending resource at once", function()
    local ids = fx.rows(conn, 2, { age_s = 10 })
    fx.objects(client, { ids[1] })
    local r = cancel(ids)
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("object_deleted", r.outcomes[ids[1]].outcome)
    assert.are.equal("record_only", r.outcomes[ids[2]].outcome)
    assert.are.equal(0, fx.count(conn))
    assert.are.equal(0, fx.count_set(fx.existing_objects(client, ids)))
  end)

  it("refuses a confirmed or non-upload resource and leaves it alone (exit 1)", function()
    local confirmed = fx.rows(conn, 1, { uploaded = true })[1]
    local eph = fx.rows(conn, 1, { type = "EPHEMERAL_RULE_LIST" })[1]
    fx.objects(client, { confirmed })
    local r = cancel({ confirmed, eph })
    assert.are.equal(1, r.code)
    assert.are.equal("refused", r.outcomes[confirmed].outcome)
    assert.are.equal("confirmed", r.outcomes[confirmed].reason)
    assert.are.equal("refused", r.outcomes[eph].outcome)
    assert.are.equal("not_upload", r.outcomes[eph].reason)
    assert.are.equal(2, fx.count(conn))
    assert.is_true(fx.existing_objects(client, { confirmed })[confirmed])
  end)

  it("treats an unknown id as not_found, and cancelling twice as harmless (exit 0)", function()
    local id = fx.rows(conn, 1, { age_s = 5 })[1]
    assert.are.equal(0, cancel({ id }).code)
    local r = cancel({ id, "00000000-0000-4000-8000-000000000000" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("not_found", r.outcomes[id].outcome)
    assert.are.equal("not_found", r.outcomes["00000000-0000-4000-8000-000000000000"].outcome)
  end)

  it("rejects a malformed id as a usage error (exit 2) before touching anything", function()
    local id = fx.rows(conn, 1, { age_s = 5 })[1]
    for _, bad in ipairs({ "not-a-uuid", "'; DROP TABLE attack_resource_files; --", id .. "x" }) do
      local r = cancel({ id, bad })
      assert.are.equal(2, r.code)
      assert.matches("is not a UUID", r.stderr, 1, true)
      assert.is_nil(r.by.resource)
    end
    assert.are.equal(1, fx.count(conn))
  end)

  it("reports a row locked by someone else as skipped after the lock timeout", function()
    local ids = fx.rows(conn, 2, { age_s = 5 })
    local holder = fx.connect()
    do
      local tx <close> = fx.check(holder:begin()) -- luacheck: ignore 211
      fx.check(holder:query("SELECT 1 FROM attack_resource_files WHERE id = $1 FOR UPDATE", ids[1]))
      local t0 = sys.monotime()
      local r = cancel(ids, nil, { "--policy", policy_file("return { lock_timeout = 1 }") })
      local took = sys.monotime() - t0
      assert.are.equal(1, r.code, r.stderr)
      assert.are.equal("skipped", r.outcomes[ids[1]].outcome)
      assert.are.equal("locked", r.outcomes[ids[1]].reason)
      assert.are.equal("record_only", r.outcomes[ids[2]].outcome)
      assert.is_true(took >= 0.9 and took < 10, "took " .. took .. " s")
    end
    holder:close()
    assert.are.equal(1, fx.count(conn))
  end)
end)
