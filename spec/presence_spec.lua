-- Sweepers that show themselves (lib/resclean/presence.lua), on the real PostgreSQL and RGW:
--   * cancel --notify with no sweeper listening stores the request and says so, exit 1
--     (a --once deployment takes it only at its next run); with one listening, exit 0;
--     check's cancel item says whether one listens;
--   * two sweepers of one table with different policies (another bucket) both warn, naming
--     both, and check reports it; two with the same policy do not.
local cjson = require("cjson")
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")
local presence = require("resclean.presence")

local REQUESTS = "resclean_cancel_requests"

local events = fs.events

local function check_items(bucket, argv)
  local args = { "run", "scripts/check.lua", "--json" }
  for _, a in ipairs(argv or {}) do args[#args + 1] = a end
  local r = h.run(args, fs.env(bucket))
  r.items = {}
  for line in r.stdout:gmatch("[^\n]+") do
    local it = cjson.decode(line)
    r.items[it.item] = it
  end
  return r
end

-- Sessions of sweepers left by an earlier spec are gone (each spec kills its own).
local function no_listener(conn)
  h.wait_for(function() return #fx.check(presence.listeners(conn, REQUESTS)) == 0 end, 30,
    "no sweeper left listening from an earlier spec")
end

local function spawn_sweeper(bucket, policy_text)
  local p = h.spawn({ "run", "scripts/sweep.lua", "--policy", fs.policy(policy_text) }, fs.env(bucket))
  h.wait_for(function() return #events(p, "listening") > 0 and #events(p, "sweep") > 0 end, 30,
    "the sweeper to listen and finish its first cycle")
  return p
end

local function stop(p)
  if p and p.alive() then
    p.kill("TERM")
    p.wait(30)
  end
end

describe("cancel --notify and the listening sweeper", function()
  local conn, bucket, client, p

  before_each(function()
    conn = fx.connect()
    bucket, client = fx.fresh_bucket(conn, "presence")
    no_listener(conn)
  end)

  after_each(function()
    stop(p)
    p = nil
    if client then client:close() end
    if conn then conn:close() end
  end)

  it("with no sweeper listening: stores the request, warns that the next cycle takes it, exit 1", function()
    local id = fx.rows(conn, 1, { age_s = 60 })[1]
    fx.objects(client, { id })
    local r = h.run_script({ "scripts/cancel.lua", "--notify", id },
      fs.env(bucket, { AWS_ACCESS_KEY_ID = false, AWS_SECRET_ACCESS_KEY = false }))
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    local w = r.by.cancel_requested and r.by.cancel_requested[1]
    assert.is_table(w, r.stdout)
    assert.are.equal("warn", w.level)
    assert.are.equal(0, w.listeners)
    assert.matches("no sweeper listens", w.message, 1, true)
    assert.matches("--once", w.message, 1, true)
    assert.matches("next run", w.message, 1, true)
    -- The request stays stored; a --once sweep takes it at its start.
    assert.are.equal(1, fx.check(conn:query("SELECT count(*)::int AS n FROM " .. REQUESTS))[1].n)
    local s = fs.sweep(bucket, { "--once" })
    assert.are.equal(0, s.code, s.stderr)
    assert.are.equal("object_deleted", s.outcomes[id] and s.outcomes[id].outcome, s.stdout)
    assert.are.equal(0, fx.check(conn:query("SELECT count(*)::int AS n FROM " .. REQUESTS))[1].n)
    -- check's cancel item says none listens.
    local c = check_items(bucket)
    assert.are.equal(0, c.items.cancel.listeners, c.stdout)
    assert.matches("no sweeper listening", c.items.cancel.message, 1, true)
  end)

  it("with a long-running sweeper listening: exit 0, and check's cancel item counts it", function()
    p = spawn_sweeper(bucket, "return { interval = 3600, jitter = 0 }")
    local id = fx.rows(conn, 1, { age_s = 60 })[1]
    local r = h.run_script({ "scripts/cancel.lua", "--notify", id },
      fs.env(bucket, { AWS_ACCESS_KEY_ID = false, AWS_SECRET_ACCESS_KEY = false }))
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.are.equal(1, r.by.cancel_requested[1].listeners)
    h.wait_for(function()
      for _, l in ipairs(events(p, "resource")) do if l.resource_id == id then return true end end
    end, 10, "the listening sweeper to take the request")
    local c = check_items(bucket)
    assert.are.equal(1, c.items.cancel.listeners, c.stdout)
    assert.matches("1 sweeper session listening now", c.items.cancel.message, 1, true)
    -- Its listener goes with it: none is left once it stopped.
    stop(p)
    no_listener(conn)
  end)
end)

describe("two sweepers of one table", function()
  local conn, bucket, other, a, b

  before_each(function()
    conn = fx.connect()
    local client
    bucket, client = fx.fresh_bucket(conn, "presence-a")
    client:close()
    other = fx.unique_bucket("presence-b")
    fx.bucket(other):close()
    no_listener(conn)
  end)

  after_each(function()
    stop(a)
    stop(b)
    a, b = nil, nil
    if conn then conn:close() end
  end)

  -- The policy_conflict lines of a sweeper so far.
  local function conflicts(p) return events(p, "policy_conflict") end

  it("with different policies (another bucket): both warn, naming both, and check reports it", function()
    -- Short cycles, so each sees the other within a few of them.
    a = spawn_sweeper(bucket, "return { interval = 1, jitter = 0 }")
    b = spawn_sweeper(bucket, ("return { interval = 1, jitter = 0, bucket = %q }"):format(other))
    local wa = h.wait_for(function() return conflicts(a)[1] end, 30, "sweeper A's policy_conflict warning")
    local wb = h.wait_for(function() return conflicts(b)[1] end, 30, "sweeper B's policy_conflict warning")
    for _, pair in ipairs({ { wa, a, b, bucket }, { wb, b, a, other } }) do
      local w, own, theirs, own_bucket = pair[1], pair[2], pair[3], pair[4]
      assert.are.equal("warn", w.level)
      assert.are.equal("attack_resource_files", w.table)
      assert.are.equal("bucket", w.differs)
      -- Names the other (its pid is one of its sessions' backends; its fingerprint) and this one.
      assert.matches("another sweeper works table attack_resource_files with a different policy", w.message, 1, true)
      assert.matches("another bucket", w.message, 1, true)
      assert.matches("bucket " .. own_bucket, w.message, 1, true)
      assert.matches(w.other_fingerprint, w.message, 1, true)
      assert.matches(w.fingerprint, w.message, 1, true)
      assert.are_not.equal(w.fingerprint, w.other_fingerprint)
      assert.is_number(w.other_pid)
      -- One warning a cycle at most.
      local cycles = #events(own, "sweep")
      assert.is_true(#conflicts(own) <= cycles + 1, ("%d warnings in %d cycles"):format(#conflicts(own), cycles))
      assert.is_truthy(theirs.alive())
    end
    assert.are.equal(wa.fingerprint, wb.other_fingerprint)
    assert.are.equal(wb.fingerprint, wa.other_fingerprint)
    -- check, with A's policy (the default bucket env): to fix, naming the other.
    local c = check_items(bucket)
    assert.are.equal(2, c.code, c.stdout .. c.stderr)
    assert.are.equal("fail", c.items.sweepers.status, c.stdout)
    assert.matches("another bucket", c.items.sweepers.message, 1, true)
    assert.matches("run one policy per table", c.items.sweepers.fix, 1, true)
    -- With B's policy gone, check is quiet again.
    stop(b)
    h.wait_for(function() return check_items(bucket).items.sweepers.status == "ok" end, 30,
      "check to see only sweepers with its own policy")
  end)

  it("with the same policy: no warning, and check says so", function()
    a = spawn_sweeper(bucket, "return { interval = 1, jitter = 0 }")
    b = spawn_sweeper(bucket, "return { interval = 1, jitter = 0 }")
    -- A few cycles each, overlapping.
    h.wait_for(function() return #events(a, "sweep") >= 3 and #events(b, "sweep") >= 3 end, 30, "three cycles each")
    assert.are.same({}, conflicts(a))
    assert.are.same({}, conflicts(b))
    local c = check_items(bucket)
    assert.are.equal("ok", c.items.sweepers.status, c.stdout)
    -- Another max_age alone is a warning (a rolling change of it), not a failure.
    c = check_items(bucket, { "--policy", fs.policy('return { max_age = "2d" }') })
    assert.are.equal("warn", c.items.sweepers.status, c.stdout)
    assert.matches("another max_age (its 1d 0h)", c.items.sweepers.message, 1, true)
  end)
end)

describe("presence fingerprints", function()
  local policy = require("resclean.policy")
  local function build(t) return assert(policy.build(t, "spec")) end

  it("agree for equal policies and tell bucket, key, max_age and upload_types apart", function()
    local base = presence.fingerprint(build({}))
    assert.are.equal(base, presence.fingerprint(build({ interval = 60, batch_size = 10 })))
    assert.are.equal(base, presence.fingerprint(build({ key = function(row) return row.id end })))
    assert.are_not.equal(base, presence.fingerprint(build({ bucket = "another-bucket" })))
    assert.are_not.equal(base, presence.fingerprint(build({ key = function(row) return "x/" .. row.id end,
      key_pattern = ".*" })))
    assert.are_not.equal(base, presence.fingerprint(build({ max_age = "2d" })))
    assert.are_not.equal(base, presence.fingerprint(build({ upload_types = { "WORD_LIST" } })))
    assert.matches("^%x%x%x%x%x%x%x%x$", base)
  end)
end)
