-- Faults around the sweep, on the real stack: radosgw killed or frozen, the database
-- session terminated, resclean itself SIGKILLed, a row lock held by the application, the
-- host clock far off. Each checks the invariants the README lists ("How it stays safe")
-- against the real servers (no object without its row; confirmed, fresh, non-upload and referenced
-- resources untouched) and that a normal run afterwards finishes the work.
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")
local sys = require("resclean.sys")

local conn

local seed = tonumber(os.getenv("RESCLEAN_SEED") or "") or os.time()
math.randomseed(seed)

local proc_result = fs.proc_result

describe("under faults, the sweep", function()
  setup(function() conn = fx.connect() end)
  teardown(function() if conn then conn:close() end end)

  it("deletes no row whose object survives when radosgw is killed mid-sweep, and completes after a restart", function()
    local w = fs.world(conn, { stale = 1000, with_objects = 200, tag = "rgw-kill" })
    local pol = fs.policy("return { batch_size = 50, s3_timeout = 2, s3_connect_timeout = 1, s3_max_attempts = 3 }")
    local p = h.spawn({ "run", "scripts/sweep.lua", "--once", "--policy", pol }, fs.env(w.bucket))
    local restarted = false
    finally(function()
      if p.alive() then p.kill("KILL") end
      if not restarted then pcall(fs.restart_rgw) end
    end)
    h.wait_for(function() return fs.logged(p) >= 1 end, 60, "the first cleaned resource")
    fs.signal(fs.rgw_pid(), "KILL")
    local t0 = sys.monotime()
    local code = p.wait(60)
    local took = fs.elapsed(t0)
    fs.restart_rgw()
    restarted = true

    local r = proc_result(p, code)
    assert.are.equal(3, r.code, r.stderr)
    assert.matches("storage unreachable", r.stderr, 1, true)
    assert.is_true(took < 30, ("gave up %.1f s after radosgw died"):format(took))
    assert.is_true(r.summary.failed > 0, "no resource reported failed")
    assert.is_true(r.summary.total < 1000, "the whole backlog was done before radosgw died")
    fs.assert_invariants(w, "after radosgw was killed")
    fs.assert_log_honest(w, r, "after radosgw was killed")
    fs.assert_final_run_cleans(w, "after radosgw restarted")
  end)

  it("gives up within its S3 timeouts when radosgw freezes mid-sweep (SIGSTOP), and completes once it thaws", function()
    local w = fs.world(conn, { stale = 600, with_objects = 100, tag = "rgw-stop" })
    local timeout, attempts = 1, 2
    local pol = fs.policy(("return { batch_size = 100, concurrency = 4, s3_timeout = %d, s3_connect_timeout = 1,"
      .. " s3_max_attempts = %d }"):format(timeout, attempts))
    -- A frozen server costs at most one round of timed-out attempts per storage phase
    -- (HEAD, then DeleteObjects) of the batch in hand; 10 s for start-up on a busy machine.
    local bound = 2 * 2 * timeout * attempts + 10
    local p = h.spawn({ "run", "scripts/sweep.lua", "--once", "--policy", pol }, fs.env(w.bucket))
    local rgw = fs.rgw_pid()
    local frozen = false
    finally(function()
      if frozen then fs.signal(rgw, "CONT") end
      if p.alive() then p.kill("KILL") end
    end)
    h.wait_for(function() return fs.logged(p) >= 1 end, 60, "the first cleaned resource")
    fs.signal(rgw, "STOP")
    frozen = true
    local t0 = sys.monotime()
    local ended = pcall(h.wait_for, function() return not p.alive() end, bound)
    local took = fs.elapsed(t0)
    fs.signal(rgw, "CONT")
    frozen = false
    assert.is_true(ended, ("still running %.0f s after radosgw froze, with s3_timeout = %d s and s3_max_attempts = %d")
      :format(took, timeout, attempts))

    local r = proc_result(p, p.wait(5))
    assert.are.equal(3, r.code, r.stderr)
    assert.matches("timeout", r.stderr, 1, true)
    fs.assert_invariants(w, "after radosgw froze")
    fs.assert_log_honest(w, r, "after radosgw froze")
    fs.assert_final_run_cleans(w, "after radosgw thawed")
  end)

  -- A session whose rows are deleted (uncommitted) while the batch's storage phase runs.
  local MID_BATCH = "state = 'idle in transaction' AND query ILIKE '%DELETE FROM%'"

  -- Spawn a sweep (argv after the binary), wait until its session is MID_BATCH and terminate
  -- that session. Returns the process, the pid of the terminated session and the set of
  -- the sweeper's session pids at that moment (the cycle's two batch sessions: either may be
  -- the one caught mid-batch).
  local function terminate_mid_batch(argv, env)
    local p = h.spawn(argv, env)
    finally(function() if p.alive() then p.kill("KILL") end end)
    local victim = h.wait_for(function()
      local b = fs.sweeper_backends(conn, MID_BATCH)
      return b[1] and b[1].pid
    end, 60, "the sweeper's session in the middle of a batch")
    local sessions = {}
    for _, b in ipairs(fs.sweeper_backends(conn)) do sessions[b.pid] = true end
    fx.check(conn:query("SELECT pg_terminate_backend($1)", victim))
    return p, victim, sessions
  end

  it("rolls the batch back and exits 3 when its database session is terminated mid-batch (--once)", function()
    local w = fs.world(conn, { stale = 2000, with_objects = 100, tag = "pg-term" })
    local pol = fs.policy("return { batch_size = 200 }")
    local p = terminate_mid_batch({ "run", "scripts/sweep.lua", "--once", "--policy", pol }, fs.env(w.bucket))
    local r = proc_result(p, p.wait(60))
    assert.are.equal(3, r.code, r.stderr)
    assert.is_string(r.summary.error)
    assert.is_true(r.summary.total < 2000, "the whole backlog was done before the session ended")
    fs.assert_invariants(w, "after the session was terminated")
    fs.assert_log_honest(w, r, "after the session was terminated")
    -- Nothing of the interrupted batch was committed: every row not logged as cleaned is there.
    local rows = fs.rows(w)
    local cleaned = 0
    for _, l in ipairs(r.by.resource or {}) do
      if l.outcome == "object_deleted" or l.outcome == "record_only" or l.outcome == "deleted" then
        cleaned = cleaned + 1
      end
    end
    local left = 0
    for _, id in ipairs(w.stale) do if rows[id] then left = left + 1 end end
    assert.are.equal(2000 - cleaned, left)
    fs.assert_final_run_cleans(w, "after the session was terminated")
  end)

  it("tries again at the next cycle when its database session is terminated, in the long-running loop", function()
    local w = fs.world(conn, { stale = 2000, with_objects = 100, tag = "pg-loop" })
    local pol = fs.policy("return { batch_size = 200, interval = 1, jitter = 0 }")
    local p, victim, sessions = terminate_mid_batch({ "run", "scripts/sweep.lua", "--policy", pol },
      fs.env(w.bucket))
    local function sweeps()
      local out = {}
      for _, l in ipairs(fs.partial_log(fs.output(p))) do
        if l.event == "sweep" then out[#out + 1] = l end
      end
      return out
    end
    h.wait_for(function()
      local s = sweeps()
      return #s >= 2 and not s[#s].error and select(1, fs.stale_left(w)) == 0
    end, 90, "a later cycle that finishes the backlog")
    assert.is_true(p.alive(), "the loop ended after the database error")
    p.kill("TERM")
    assert.are.equal(0, p.wait(30), p.stderr())
    local s = sweeps()
    assert.is_string(s[1].error, "the first cycle did not report the lost session")
    -- The cycle that reported it is the one that was running: its session was the victim or
    -- the victim's partner (the second batch session), both alive when the victim was chosen.
    assert.is_true(sessions[s[1].db_pid], "the first cycle's session was not running when the victim was chosen")
    assert.is_nil(sessions[s[#s].db_pid], "the last cycle did not open new sessions")
    assert.are_not.equal(victim, s[#s].db_pid)
    fs.assert_all_clean(w, "after the loop recovered")
  end)

  it("keeps the invariants when resclean is SIGKILLed at 20 random moments, and a final run cleans up", function()
    -- A backlog that outlasts the 1.2 s the kills are spread over.
    local w = fs.world(conn, { stale = 6000, with_objects = 300, tag = "kill9" })
    local pol = fs.policy("return { batch_size = 10 }")
    local live, progress, before = 0, 0, #w.stale
    for i = 1, 20 do
      local p = h.spawn({ "run", "scripts/sweep.lua", "--once", "--policy", pol }, fs.env(w.bucket))
      -- The fault itself: a random moment in the life of the run.
      local delay = math.random() * 1.2
      sys.sleep(delay)
      if p.alive() then live = live + 1 end
      p.kill("KILL")
      p.wait(30)
      fs.assert_invariants(w, ("after kill %d (%.2f s into the run, seed %d)"):format(i, delay, seed))
      local left = fs.stale_left(w)
      if left < before then progress = progress + 1 end
      before = left
    end
    assert.is_true(live >= 10, ("only %d of 20 kills hit a running sweep (seed %d)"):format(live, seed))
    assert.is_true(progress >= 3, ("only %d of 20 killed runs got any work done (seed %d)"):format(progress, seed))
    fs.assert_final_run_cleans(w, "after 20 kills")
  end)

  it("skips a stale row another transaction holds locked without waiting; cancel waits at most lock_timeout", function()
    local w = fs.world(conn, { stale = 20, with_objects = 10, tag = "locked" })
    local locked = w.with_objects[1]
    local holder = fx.connect()
    finally(function() holder:close() end)
    do
      local tx <close> = fx.check(holder:begin()) -- luacheck: ignore 211
      fx.check(holder:query("SELECT 1 FROM attack_resource_files WHERE id = $1 FOR UPDATE", locked))
      local t0 = sys.monotime()
      local r = fs.sweep(w.bucket, { "--once", "--policy", fs.policy("return { lock_timeout = 20 }") })
      local took = fs.elapsed(t0)
      assert.are.equal(0, r.code, r.stderr)
      assert.is_true(took < 10, ("the sweep took %.1f s: it waited for the lock"):format(took))
      assert.is_nil(r.outcomes[locked])
      assert.are.equal(19, r.summary.object_deleted + r.summary.record_only)
      local rows, objects = fs.assert_invariants(w, "with a row locked")
      assert.is_true(rows[locked] and objects[locked], "the locked resource was touched")
      assert.are.equal(1, fs.stale_left(w))

      t0 = sys.monotime()
      local c = fs.run({ "scripts/cancel.lua", "--policy", fs.policy("return { lock_timeout = 2 }"), locked },
        fs.env(w.bucket))
      took = fs.elapsed(t0)
      assert.are.equal(1, c.code, c.stderr)
      assert.are.equal("skipped", c.outcomes[locked].outcome)
      assert.are.equal("locked", c.outcomes[locked].reason)
      assert.is_true(took >= 1.9 and took < 12, ("cancel took %.1f s with lock_timeout = 2 s"):format(took))
      rows, objects = fs.assert_invariants(w, "after cancel on a locked row")
      assert.is_true(rows[locked] and objects[locked], "cancel touched the locked resource")
    end
    fs.assert_final_run_cleans(w, "after the lock was released")
  end)

  describe("with the host clock far off", function()
    it("touches nothing when S3 refuses its skewed signatures (30 days ahead)", function()
      local w = fs.world(conn, { stale = 10, with_objects = 5, tag = "clock" })
      local r = fs.run({ "scripts/sweep.lua", "--once" }, fs.env(w.bucket), { "faketime", "+30 days" })
      assert.are.equal(2, r.code, r.stderr) -- the clock is the operator's to fix
      assert.matches("RequestTimeTooSkewed", r.stderr, 1, true)
      assert.matches("clock", r.stderr:gsub("RequestTimeTooSkewed", ""), 1, true)
      assert.are.equal(10, (fs.stale_left(w)))
      fs.assert_invariants(w, "after a run with the clock 30 days ahead")
      assert.is_nil(r.by.resource)
    end)

    for _, shift in ipairs({ "+30 days", "-30 days" }) do
      it("picks exactly the rows stale by the database clock, with the host clock " .. shift, function()
        fx.reset(conn)
        local stale = fx.rows(conn, 5)                        -- 2 days old
        local fresh = fx.rows(conn, 5, { age_s = 3600 })      -- 1 hour old
        local r = fs.run({ fs.here .. "/faults_clock_sweep.lua" }, fs.env("clock-probe"), { "faketime", shift })
        assert.are.equal(0, r.code, r.stderr)
        local probe = r.by.clock_probe[1]
        local off = probe.host_time - os.time()
        assert.is_true(math.abs(math.abs(off) - 30 * 86400) < 3600, "faketime did not shift the clock: " .. off)
        local picked = {}
        for _, k in ipairs(probe.keys) do picked[k] = true end
        for _, id in ipairs(stale) do assert.is_true(picked[id], "a stale row was not picked: " .. id) end
        for _, id in ipairs(fresh) do assert.is_nil(picked[id], "a fresh row was picked: " .. id) end
        for _, id in ipairs(stale) do
          assert.is_true(r.outcomes[id].age_s >= 2 * 86400 and r.outcomes[id].age_s < 2 * 86400 + 600)
        end
        assert.are.equal(5, fx.count(conn))
      end)
    end
  end)
end)
