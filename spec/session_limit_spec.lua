-- The sweep under a role's CONNECTION LIMIT, on the harness's PostgreSQL and RGW: a
-- long-running sweep holds at most three sessions (its listener, and two for its batches: the
-- second one opened at the start of a cycle, before any batch claims, or not at all), keeps
-- sweeping with fewer, and goes back to two batch sessions by itself once sessions free up.
-- The spec's own queries go through a superuser session on the socket, which the limit does not
-- count; sessions of the sweep are the role's backends (pg_stat_activity.usename).
local fx = require("support.fixtures")
local fs = require("support.faults_support")
local h = require("support.helpers")
local pg = require("resclean.pg")
local sys = require("resclean.sys")

local admin

local function limit(n)
  fx.check(admin:query(("ALTER ROLE resclean CONNECTION LIMIT %d"):format(n)))
end

-- Backends of the role resclean (the sweep's sessions, and any the spec holds).
local function sessions()
  return fx.check(admin:query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = 'resclean'"))[1].n
end

local function policy()
  return fs.policy("return { batch_size = 10, interval = 1, jitter = 0 }")
end

-- Wait until every stale row and object of w is gone, sampling the role's sessions meanwhile;
-- returns the most seen at once.
local function wait_clean(w, what)
  local most = 0
  h.wait_for(function()
    most = math.max(most, sessions())
    local nr, no = fs.stale_left(w)
    return nr == 0 and no == 0
  end, 120, what)
  return most
end

-- A new wave of stale uploads with objects in w's bucket, added to w.stale.
local function wave(w, n)
  local ids = fx.rows(admin, n)
  fx.objects(w.client, ids)
  for _, id in ipairs(ids) do w.stale[#w.stale + 1] = id end
end

-- The cycles a sweep logged: { run_id = {summary =, pipeline_off =} } in order.
local function cycles(lines)
  local list, by = {}, {}
  for _, l in ipairs(lines) do
    if l.run_id and (l.event == "sweep" or l.event == "pipeline_off") then
      if not by[l.run_id] then
        by[l.run_id] = {}
        list[#list + 1] = by[l.run_id]
      end
      if l.event == "sweep" then by[l.run_id].summary = l else by[l.run_id].pipeline_off = true end
    end
  end
  return list
end

describe("under a CONNECTION LIMIT, a long-running sweep", function()
  setup(function()
    local env = fs.stack_env()
    admin = fx.check(pg.connect(("host=%s port=%s user=postgres dbname=resclean")
      :format(env.RESCLEAN_PG_SOCKDIR, env.RESCLEAN_PG_PORT)))
  end)
  teardown(function()
    if admin then
      admin:query("ALTER ROLE resclean CONNECTION LIMIT -1")
      admin:close()
    end
  end)

  -- The sweep, killed and the limit lifted at the end of the test (busted keeps one finally
  -- per test: held, sessions the test holds, are closed there too).
  local function start(w, held)
    local p = h.spawn({ "run", "scripts/sweep.lua", "--policy", policy() }, fs.env(w.bucket))
    finally(function()
      if p.alive() then p.kill("KILL") end
      for _, c in ipairs(held or {}) do c:close() end
      limit(-1)
    end)
    return p
  end

  -- No session of the role left from an earlier spec: the counts below are the sweep's.
  before_each(function()
    h.wait_for(function() return sessions() == 0 end, 30, "the role's earlier sessions to end")
  end)

  local function stop(p)
    p.kill("TERM")
    local code = p.wait(60)
    assert.are.equal(0, code, fs.output(p, "err"))
    return fs.partial_log(fs.output(p))
  end

  it("of 3 uses its two batch sessions and its listener, cycle after cycle, and no more", function()
    limit(3)
    local w = fs.world(admin, { stale = 300, with_objects = 150, tag = "limit3" })
    local p = start(w)
    local most = wait_clean(w, "the first cycle to clean the backlog")
    wave(w, 200)
    most = math.max(most, wait_clean(w, "a later cycle to clean the second wave"))
    local lines = stop(p)
    assert.are.equal(3, most, "the sweep's sessions at most (listener and two batch sessions)")
    local swept = 0
    for _, c in ipairs(cycles(lines)) do
      assert.is_nil(c.pipeline_off, "a cycle went without its second session under a limit of 3")
      if c.summary and (c.summary.total or 0) > 0 then swept = swept + 1 end
      if c.summary then assert.are.equal(0, c.summary.exit_code) end
    end
    assert.is_true(swept >= 2, "fewer than two cycles swept")
    fs.assert_invariants(w, "under a limit of 3")
  end)

  it("of 2 sweeps every cycle on one batch session, and goes back to two once the limit is raised", function()
    limit(2)
    local w = fs.world(admin, { stale = 200, with_objects = 100, tag = "limit2" })
    local p = start(w)
    wait_clean(w, "the first cycle to clean the backlog on one session")
    wave(w, 100)
    wait_clean(w, "a later cycle to clean the second wave on one session")
    local mark = #fs.partial_log(fs.output(p))
    limit(3)
    wave(w, 200)
    wait_clean(w, "a cycle after the limit was raised to clean the third wave")
    local lines = stop(p)
    local before, after = {}, {}
    for i, l in ipairs(lines) do
      if i <= mark then before[#before + 1] = l else after[#after + 1] = l end
    end
    local off = 0
    for _, c in ipairs(cycles(before)) do
      if c.pipeline_off then off = off + 1 end
      if c.summary then assert.are.equal(0, c.summary.exit_code, "a cycle failed under a limit of 2") end
    end
    assert.is_true(off >= 2, "under a limit of 2, no cycle said it went without its second session")
    local two = false
    for _, c in ipairs(cycles(after)) do
      if c.summary and (c.summary.total or 0) > 10 and not c.pipeline_off then two = true end
      if c.summary then assert.are.equal(0, c.summary.exit_code) end
    end
    assert.is_true(two, "no cycle used two batch sessions again after the limit was raised")
    fs.assert_invariants(w, "under a limit of 2")
  end)

  it("that found no session left recovers by itself once sessions free up", function()
    limit(2)
    local w = fs.world(admin, { stale = 100, with_objects = 50, tag = "limit0" })
    -- Someone else holds every session the role may have.
    local url = assert(os.getenv("DATABASE_URL"))
    local held = { fx.check(pg.connect(url)), fx.check(pg.connect(url)) }
    local p = start(w, held)
    -- The plain error goes to stderr just after the summary line (app.report):
    -- wait for both, so a slow machine does not read stderr in between.
    h.wait_for(function()
      for _, c in ipairs(cycles(fs.partial_log(fs.output(p)))) do
        if c.summary and c.summary.exit_code == 3 then
          return fs.output(p, "err"):find("CONNECTION LIMIT", 1, true) ~= nil
        end
      end
    end, 60, "a cycle to fail on the connection limit, with the hint naming CONNECTION LIMIT on stderr")
    assert.matches("CONNECTION LIMIT", fs.output(p, "err"), 1, true)
    local t0 = sys.monotime()
    for _, c in ipairs(held) do c:close() end
    wait_clean(w, "the sweep to clean the backlog once sessions were free")
    assert.is_true(fs.elapsed(t0) < 60)
    stop(p)
    fs.assert_invariants(w, "after the connection limit")
  end)
end)

describe("the sweep's second session", function()
  setup(function()
    local env = fs.stack_env()
    admin = fx.check(pg.connect(("host=%s port=%s user=postgres dbname=resclean")
      :format(env.RESCLEAN_PG_SOCKDIR, env.RESCLEAN_PG_PORT)))
  end)
  teardown(function()
    if admin then
      admin:query("ALTER ROLE resclean RESET log_statement")
      admin:close()
    end
  end)

  it("is opened before the cycle's first claim (the server's statement log shows the order)", function()
    local w = fs.world(admin, { stale = 60, with_objects = 10, tag = "lane-order" })
    local env = fs.stack_env()
    local log_path = env.RESCLEAN_PG_LOG
    local offset = #h.readall(log_path)
    fx.check(admin:query("ALTER ROLE resclean SET log_statement = 'all'"))
    finally(function() admin:query("ALTER ROLE resclean RESET log_statement") end)
    local r = fs.sweep(w.bucket, { "--once", "--policy", policy() })
    admin:query("ALTER ROLE resclean RESET log_statement")
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same({ 0, 0 }, { fs.stale_left(w) })
    -- Lines "TIME [PID] resclean@resclean LOG:  execute <unnamed>: SELECT ... FROM
    -- information_schema.columns ..." are a session being opened (its schema check);
    -- "... LOG:  execute <unnamed>: SELECT ... FOR UPDATE SKIP LOCKED" is the cycle's first claim.
    local opened, claimed = {}, nil
    for line in h.readall(log_path):sub(offset + 1):gmatch("[^\n]+") do
      local pid = line:match("^%S+ %S+ %S+ %[(%d+)%] resclean@resclean ")
      if pid and line:find("FROM information_schema.columns", 1, true) and not claimed then
        opened[#opened + 1] = pid
      elseif pid and line:find("LOG:  execute ", 1, true) and line:find("FOR UPDATE SKIP LOCKED", 1, true)
          and not claimed then
        claimed = pid
      end
    end
    assert.is_truthy(claimed, "no claim in the server's log")
    assert.are.equal(2, #opened, "sessions opened before the first claim")
    assert.are_not.equal(opened[1], opened[2])
  end)
end)
