-- Operator mistakes and hostile surroundings, on the real PostgreSQL and RGW: a sweeper that
-- cannot work says so and stops (exit 2) instead of running idle; one that cannot write its
-- audit trail deletes nothing; signals end a run with its summary; secrets and keys come out
-- as they should.
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")
local sys = require("resclean.sys")

local conn

-- Lines of a process's output.
local function lines_of(text)
  local out = {}
  for l in text:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

local proc_result = fs.proc_result

describe("operator safety", function()
  setup(function() conn = fx.connect() end)
  teardown(function() if conn then conn:close() end end)

  describe("the long-running sweep (no --once)", function()
    it("exits 2 within seconds when the policy names a table that does not exist", function()
      local w = fs.world(conn, { stale = 5, with_objects = 2, tag = "lr-notable" })
      local pol = fs.policy('return { table = "no_such_table", interval = 1, jitter = 0 }')
      local t0 = sys.monotime()
      local p = h.spawn({ "run", "scripts/sweep.lua", "--policy", pol }, fs.env(w.bucket))
      finally(function() if p.alive() then p.kill("KILL") end end)
      local code = p.wait(15)
      assert.are.equal(2, code, fs.output(p, "err"))
      assert.is_true(sys.monotime() - t0 < 15)
      local err = fs.output(p, "err")
      assert.matches("no_such_table", err, 1, true)
      assert.matches("'table'", err, 1, true)
      assert.are.equal(5, (fs.stale_left(w)))
    end)

    it("exits 2 within seconds on a wrong database password", function()
      local w = fs.world(conn, { stale = 3, with_objects = 1, tag = "lr-password" })
      local url = os.getenv("DATABASE_URL"):gsub("://([^:]+):[^@]*@", "://%1:not-the-password@")
      local p = h.spawn({ "run", "scripts/sweep.lua" }, fs.env(w.bucket, { DATABASE_URL = url }))
      finally(function() if p.alive() then p.kill("KILL") end end)
      assert.are.equal(2, p.wait(15), fs.output(p, "err"))
      assert.matches("password authentication failed", fs.output(p, "err"), 1, true)
      assert.is_nil(fs.output(p):find("not-the-password", 1, true))
      assert.is_nil(fs.output(p, "err"):find("not-the-password", 1, true))
      assert.are.equal(3, (fs.stale_left(w)))
    end)

    it("keeps retrying while the database is unreachable, and stops at once with exit 0 on SIGTERM", function()
      local w = fs.world(conn, { stale = 2, with_objects = 1, tag = "lr-down" })
      local p = h.spawn({ "run", "scripts/sweep.lua" },
        fs.env(w.bucket, { DATABASE_URL = "postgresql://resclean@127.0.0.1:1/resclean" }))
      finally(function() if p.alive() then p.kill("KILL") end end)
      -- The first retry comes after about 5 s (backoff), not after the hour's interval.
      h.wait_for(function()
        local n = 0
        for _, l in ipairs(lines_of(fs.output(p))) do
          if l:find('"event":"sweep"', 1, true) then n = n + 1 end
        end
        return n >= 2
      end, 20, "a second attempt while the database is down")
      assert.is_true(p.alive(), "the sweeper gave up on a transient error")
      local t0 = sys.monotime()
      p.kill("TERM")
      assert.are.equal(0, p.wait(10))
      assert.is_true(sys.monotime() - t0 < 5)
      for _, l in ipairs(lines_of(fs.output(p))) do
        if l:find('"event":"sweep"', 1, true) then assert.matches('"exit_code":3', fs.output(p), 1, true) end
      end
    end)
  end)

  it("refuses an upload type the enum does not know (exit 2, naming it and the known labels), touching nothing",
    function()
      local w = fs.world(conn, { stale = 4, with_objects = 2, tag = "enum-typo" })
      local r = fs.sweep(w.bucket, { "--once", "--policy", fs.policy('return { upload_types = { "WORDLIST" } }') })
      assert.are.equal(2, r.code, r.stderr)
      assert.matches('"WORDLIST"', r.stderr, 1, true)
      assert.matches("WORD_LIST", r.stderr, 1, true)
      assert.matches("upload_types[1]", r.stderr, 1, true)
      assert.is_nil(r.by.resource)
      assert.are.equal(4, (fs.stale_left(w)))
      -- A known label with no rows at all is fine.
      local ok = fs.sweep(w.bucket, { "--once", "--policy", fs.policy('return { upload_types = { "CHARSET" } }') })
      assert.are.equal(0, ok.code, ok.stderr)
      assert.are.equal(0, ok.summary.total)
      fs.assert_invariants(w, "after an upload type typo")
    end)

  it("ends a sweep on SIGHUP like SIGTERM: the batch in hand finishes, a summary, exit 0, no row without proof",
    function()
      local w = fs.world(conn, { stale = 1500, with_objects = 300, tag = "sighup" })
      local pol = fs.policy("return { batch_size = 50 }")
      local p = h.spawn({ "run", "scripts/sweep.lua", "--once", "--policy", pol }, fs.env(w.bucket))
      finally(function() if p.alive() then p.kill("KILL") end end)
      h.wait_for(function() return fs.logged(p) >= 1 end, 60, "the first cleaned resource")
      p.kill("HUP")
      local r = proc_result(p, p.wait(30))
      assert.are.equal(0, r.code, r.stderr)
      assert.is_table(r.summary, "no summary line")
      assert.are.equal("SIGHUP", r.summary.stopped)
      assert.is_true(r.summary.total < 1500, "the whole backlog was done before SIGHUP arrived")
      fs.assert_invariants(w, "after SIGHUP")
      fs.assert_log_honest(w, r, "after SIGHUP")
      fs.assert_final_run_cleans(w, "after SIGHUP")
    end)

  -- A sweep --once with stdout redirected by the shell (">&-", ">/dev/full"): exit code, stderr.
  local function sweep_with_stdout(bucket, redirect)
    local parts = {}
    for k, v in pairs(fs.env(bucket)) do parts[#parts + 1] = v == false and ("-u " .. k) or (k .. "=" .. h.q(v)) end
    table.sort(parts)
    local dir = h.tmpdir()
    local cmd = ("env %s %s run scripts/sweep.lua --once </dev/null %s 2>%s"):format(table.concat(parts, " "),
      h.q(h.bin()), redirect, h.q(dir .. "/err"))
    local _, _, code = os.execute(cmd)
    return code, h.readall(dir .. "/err")
  end

  it("deletes nothing without its audit trail: stdout closed exits 2 before the first claim", function()
    local w = fs.world(conn, { stale = 6, with_objects = 3, tag = "no-stdout" })
    local code, err = sweep_with_stdout(w.bucket, ">&-")
    assert.are.equal(2, code, err)
    assert.matches("log", err, 1, true)
    assert.matches("standard output is closed", err, 1, true)
    assert.are.equal(6, (fs.stale_left(w)))
    fs.assert_invariants(w, "with stdout closed")
  end)

  it("deletes nothing when the log cannot be written (stdout on a full disk, /dev/full): exit 2", function()
    local w = fs.world(conn, { stale = 4, with_objects = 2, tag = "full-stdout" })
    local code, err = sweep_with_stdout(w.bucket, ">/dev/full")
    assert.are.equal(2, code, err)
    assert.matches("the log cannot be written", err, 1, true)
    assert.are.equal(4, (fs.stale_left(w)))
  end)

  it("refuses a policy path that is a FIFO at once (exit 2), never blocking on it", function()
    local dir = h.tmpdir()
    local fifo = dir .. "/policy.lua"
    assert(os.execute("mkfifo " .. h.q(fifo)))
    local t0 = sys.monotime()
    local r = h.run({ "run", "scripts/sweep.lua", "--once", "--policy", fifo }, h.script_env("nobucket"))
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("fifo", r.stderr, 1, true)
    assert.matches(fifo, r.stderr, 1, true)
    assert.is_true(sys.monotime() - t0 < 10)
  end)

  it("never prints any part of a database password that holds an @, encoded or not, from any script", function()
    local w = fs.world(conn, { stale = 3, with_objects = 1, tag = "at-password" })
    local port, db = os.getenv("DATABASE_URL"):match(":(%d+)/([^/?]+)")
    -- libpq splits a raw @ at the first one (host "Zebra9@127.0.0.1"); encoded, it is a wrong password.
    local raw = ("postgresql://resclean:Tr0ub4dor@Zebra9@127.0.0.1:%s/%s"):format(port, db)
    local encoded = ("postgresql://resclean:Tr0ub4dor%%40Zebra9@127.0.0.1:%s/%s"):format(port, db)
    local scripts = { { "scripts/sweep.lua", "--once" }, { "scripts/cancel.lua", w.stale[1] },
                      { "scripts/status.lua" }, { "scripts/reconcile.lua" } }
    for _, url in ipairs({ raw, encoded }) do
      for _, argv in ipairs(scripts) do
        local r = h.run({ "run", table.unpack(argv) }, fs.env(w.bucket, { DATABASE_URL = url,
          RESCLEAN_LOG_LEVEL = "debug", PGPASSWORD = false }))
        assert.is_true(r.code == 2 or r.code == 3, r.stderr)
        local all = r.stdout .. r.stderr
        for _, secret in ipairs({ "Tr0ub4dor", "Zebra9" }) do
          assert.is_nil(all:find(secret, 1, true), ("%s with %s printed %q"):format(argv[1],
            url == raw and "a raw @" or "an encoded @", secret))
        end
      end
    end
    fs.assert_invariants(w, "after the @ password runs")
  end)

  it("logs a key that looks like a credential exactly, since that exact key was deleted", function()
    local w = fs.world(conn, { stale = 2, with_objects = 0, tag = "key-exact" })
    local pol = fs.policy([[return { key = function(r) return "wl/password=" .. r.id end,
                                     key_pattern = "^wl/password=%x+%-" }]])
    for _, id in ipairs(w.stale) do fx.check(w.client:put("wl/password=" .. id, "x")) end
    local r = fs.sweep(w.bucket, { "--once", "--policy", pol })
    assert.are.equal(0, r.code, r.stderr)
    for _, id in ipairs(w.stale) do
      assert.are.equal("object_deleted", r.outcomes[id].outcome)
      assert.are.equal("wl/password=" .. id, r.outcomes[id].key)
    end
  end)

  it("writes every log line as ts, level, event, then run_id, with paths unescaped", function()
    local w = fs.world(conn, { stale = 3, with_objects = 2, tag = "log-order" })
    local r = fs.sweep(w.bucket, { "--once", "--metrics-file", h.tmpdir() .. "/m.prom" })
    assert.are.equal(0, r.code, r.stderr)
    local lines = lines_of(r.stdout)
    assert.is_true(#lines >= 5)
    for _, l in ipairs(lines) do
      assert.matches('^{"ts":"%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z","level":"%a+","event":"[%a_]+","run_id":"', l)
      assert.is_nil(l:find("\\/", 1, true), l)
    end
  end)
end)
